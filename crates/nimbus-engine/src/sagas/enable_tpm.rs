//! `enable_tpm`: attaches a virtual TPM to a stopped instance. One step on the host; success records it.

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::{NoParams, Planned, Saga, StepCx, Succeeded};
use crate::{Engine, Result};

pub(crate) struct EnableTpm;

#[async_trait]
impl Saga for EnableTpm {
    type Params = NoParams;

    fn steps(_: &NoParams, _: &Operation) -> Vec<&'static str> {
        vec!["attach_tpm"]
    }

    async fn run(cx: &StepCx<'_>, _: &NoParams, _: &'static str) -> DriverResult<Value> {
        cx.driver().enable_tpm(cx.instance.id).await?;
        Ok(Value::Null)
    }

    async fn succeeded(_: &StepCx<'_>, _: &NoParams, next: &mut Instance, _: &[Value]) -> Result<Succeeded> {
        next.tpm_enabled = true;
        Ok(Succeeded::default())
    }
}

pub(crate) async fn plan(engine: &Engine, current: &Instance) -> Result<Planned> {
    if current.tpm_enabled {
        return Err(DomainError::Conflict("the TPM is already enabled".into()));
    }
    engine.check_tpm_support(current.host.as_deref()).await?;
    Ok(Planned::of::<EnableTpm>(&NoParams {}))
}
