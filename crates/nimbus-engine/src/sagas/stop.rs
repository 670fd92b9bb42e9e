//! `stop` (and `scheduled_stop`, the same stop begun by Nimbus when an instance's `expected_shutdown_at`
//! comes): a graceful power-down, forced after the grace period. Success lands the instance `stopped`.

use async_trait::async_trait;
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::{NoParams, Saga, StepCx};

pub(crate) struct Stop;

#[async_trait]
impl Saga for Stop {
    type Params = NoParams;

    fn steps(_: &NoParams, _: &nimbus_core::operation::Operation) -> Vec<&'static str> {
        vec!["shutdown"]
    }

    async fn run(cx: &StepCx<'_>, _: &NoParams, _step: &'static str) -> DriverResult<Value> {
        cx.driver().stop(cx.instance.id, cx.engine.config.stop_grace).await?;
        Ok(Value::Null)
    }
}
