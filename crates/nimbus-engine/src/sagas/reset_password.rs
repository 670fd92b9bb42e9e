//! `reset_password`: a new password for the template's default user, revealable for a day and delivered to
//! the guest with its seed at the next boot. No step on the host; the password is made and stored with the
//! outcome, so a worker that takes over makes a fresh one rather than revealing a half-stored one.

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::resources::{InstancePassword, PASSWORD_LIFETIME};
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::{NoParams, Planned, Saga, StepCx, Succeeded};
use crate::resources::PASSWORD;
use crate::{Engine, Result};

pub(crate) struct ResetPassword;

#[async_trait]
impl Saga for ResetPassword {
    type Params = NoParams;

    fn steps(_: &NoParams, _: &Operation) -> Vec<&'static str> {
        Vec::new()
    }

    async fn run(_: &StepCx<'_>, _: &NoParams, _: &'static str) -> DriverResult<Value> {
        Ok(Value::Null)
    }

    async fn succeeded(cx: &StepCx<'_>, _: &NoParams, _: &mut Instance, _: &[Value]) -> Result<Succeeded> {
        let i = cx.instance;
        let password = InstancePassword {
            instance_id: i.id,
            password: crate::auth::new_password(),
            expires_at: nimbus_core::now() + PASSWORD_LIFETIME,
        };
        let write = cx.engine.replace_record(PASSWORD, i.id, Some(i.project_id), "password", &password).await?;
        Ok(Succeeded { writes: vec![write], result: None })
    }
}

pub(crate) async fn plan(engine: &Engine, current: &Instance) -> Result<Planned> {
    let template = engine.template_by_id(current.template_id).await?;
    if !template.password_enabled {
        return Err(DomainError::Conflict(format!("template {} does not support passwords", template.name)));
    }
    Ok(Planned::of::<ResetPassword>(&NoParams {}))
}
