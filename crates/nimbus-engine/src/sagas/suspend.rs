//! `suspend`: pauses a running VM in memory. Success lands the instance `suspended`.

use async_trait::async_trait;
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::{NoParams, Saga, StepCx};

pub(crate) struct Suspend;

#[async_trait]
impl Saga for Suspend {
    type Params = NoParams;

    fn steps(_: &NoParams, _: &nimbus_core::operation::Operation) -> Vec<&'static str> {
        vec!["pause"]
    }

    async fn run(cx: &StepCx<'_>, _: &NoParams, _step: &'static str) -> DriverResult<Value> {
        cx.driver().suspend(cx.instance.id).await?;
        Ok(Value::Null)
    }
}
