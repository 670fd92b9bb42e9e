//! `reboot`: restarts a running instance's guest. Success lands it `running` again.
//!
//! A reboot is a reset of the VM (the providers' hard reboot) unless asked soft: then the guest is asked to
//! power off, forced after the stop grace period, and booted again, as an ACPI reboot from outside does.

use async_trait::async_trait;
use nimbus_core::operation::Operation;
use nimbus_core::state_machine::Action;
use nimbus_driver::DriverResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Saga, StepCx};

/// Operations written before the soft reboot existed are `{}`: resets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Params {
    #[serde(default)]
    pub soft: bool,
}

/// Whether `op` is a reboot done as a reset of the VM, not asked of the guest: what providers that tell the
/// two apart show as a hard reboot.
pub fn is_hard_reboot(op: &Operation) -> bool {
    op.kind == Action::Reboot && !op.params.get("soft").and_then(Value::as_bool).unwrap_or(false)
}

pub(crate) struct Reboot;

#[async_trait]
impl Saga for Reboot {
    type Params = Params;

    fn steps(p: &Params, _: &Operation) -> Vec<&'static str> {
        if p.soft {
            vec!["shutdown", "boot"]
        } else {
            vec!["reboot"]
        }
    }

    async fn run(cx: &StepCx<'_>, _: &Params, step: &'static str) -> DriverResult<Value> {
        match step {
            "shutdown" => cx.driver().stop(cx.instance.id, cx.engine.config.stop_grace).await?,
            "boot" => cx.driver().start(&cx.engine.spec_for_driver(cx.instance).await?).await?,
            _ => cx.driver().reboot(&cx.engine.spec_for_driver(cx.instance).await?).await?,
        }
        Ok(Value::Null)
    }
}
