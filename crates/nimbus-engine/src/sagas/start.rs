//! `start`: boots a stopped instance. One step on the host; success lands it `running`.

use async_trait::async_trait;
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::{NoParams, Saga, StepCx};

pub(crate) struct Start;

#[async_trait]
impl Saga for Start {
    type Params = NoParams;

    fn steps(_: &NoParams, _: &nimbus_core::operation::Operation) -> Vec<&'static str> {
        vec!["boot"]
    }

    async fn run(cx: &StepCx<'_>, _: &NoParams, _step: &'static str) -> DriverResult<Value> {
        cx.driver().start(&cx.engine.spec_for_driver(cx.instance).await?).await?;
        Ok(Value::Null)
    }
}
