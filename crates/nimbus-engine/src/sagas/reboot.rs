//! `reboot`: restarts a running instance's guest. Success lands it `running` again.

use async_trait::async_trait;
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::{NoParams, Saga, StepCx};

pub(crate) struct Reboot;

#[async_trait]
impl Saga for Reboot {
    type Params = NoParams;

    fn steps(_: &NoParams, _: &nimbus_core::operation::Operation) -> Vec<&'static str> {
        vec!["reboot"]
    }

    async fn run(cx: &StepCx<'_>, _: &NoParams, _step: &'static str) -> DriverResult<Value> {
        cx.driver().reboot(&cx.engine.spec_for_driver(cx.instance).await?).await?;
        Ok(Value::Null)
    }
}
