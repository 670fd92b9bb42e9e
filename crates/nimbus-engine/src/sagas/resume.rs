//! `resume`: lets a suspended VM run again where it stopped. Success lands the instance `running`.

use async_trait::async_trait;
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::{NoParams, Saga, StepCx};

pub(crate) struct Resume;

#[async_trait]
impl Saga for Resume {
    type Params = NoParams;

    fn steps(_: &NoParams, _: &nimbus_core::operation::Operation) -> Vec<&'static str> {
        vec!["unpause"]
    }

    async fn run(cx: &StepCx<'_>, _: &NoParams, _step: &'static str) -> DriverResult<Value> {
        cx.driver().resume(cx.instance.id).await?;
        Ok(Value::Null)
    }
}
