//! `start`: boots a stopped instance. One step on the host; success lands it `running`. A rescue start boots
//! the host's rescue system instead of the instance's own (`InstanceSpec::rescue`), until it stops
//! (`Instance::rescue`).

use async_trait::async_trait;
use nimbus_driver::DriverResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Saga, StepCx};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Params {
    #[serde(default)]
    pub rescue: bool,
}

pub(crate) struct Start;

#[async_trait]
impl Saga for Start {
    type Params = Params;

    fn steps(_: &Params, _: &nimbus_core::operation::Operation) -> Vec<&'static str> {
        vec!["boot"]
    }

    async fn run(cx: &StepCx<'_>, p: &Params, _step: &'static str) -> DriverResult<Value> {
        let spec = nimbus_driver::InstanceSpec { rescue: p.rescue, ..cx.engine.spec_for_driver(cx.instance).await? };
        cx.driver().start(&spec).await?;
        Ok(Value::Null)
    }

    async fn succeeded(
        _: &StepCx<'_>,
        p: &Params,
        next: &mut nimbus_core::instance::Instance,
        _: &[Value],
    ) -> crate::Result<super::Succeeded> {
        next.rescue = p.rescue;
        Ok(super::Succeeded::default())
    }
}
