//! `evacuate`: an operator moves an instance off a host that stopped answering.
//!
//! Nothing is recreated silently over a disk that lives on a lost host: only this operation, begun by an
//! operator for a host that is unreachable, does it. `recreate` places the instance on another host in the
//! request's transaction (like a create) and builds it there from its template: `provision`, then `boot`
//! if it was running when its host went away; its disk's contents and snapshots stay behind on the lost
//! host, and the operation's message says so. `stop` leaves it where it is, shown `stopped`, for its owner
//! to delete or for the host to come back. What the lost host still has when it returns is removed as a
//! leftover, since no record places it there any more.

use async_trait::async_trait;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::Operation;
use nimbus_driver::DriverResult;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Saga, StepCx, Succeeded};
use crate::Result;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub from_host: Option<String>,
    /// `None`: left stopped where it was.
    pub to_host: Option<String>,
    /// Whether it was running when its host went away (it boots again after a recreate).
    pub was_running: bool,
}

pub(crate) struct Evacuate;

#[async_trait]
impl Saga for Evacuate {
    type Params = Params;

    fn steps(p: &Params, _: &Operation) -> Vec<&'static str> {
        match (&p.to_host, p.was_running) {
            (None, _) => Vec::new(),
            (Some(_), true) => vec!["provision", "boot"],
            (Some(_), false) => vec!["provision"],
        }
    }

    fn shows(step: &'static str) -> Option<InstanceState> {
        (step == "boot").then_some(InstanceState::Starting)
    }

    async fn run(cx: &StepCx<'_>, _: &Params, step: &'static str) -> DriverResult<Value> {
        super::build_on_host(cx, step).await
    }

    async fn succeeded(cx: &StepCx<'_>, p: &Params, next: &mut Instance, _: &[Value]) -> Result<Succeeded> {
        next.last_known_state = None;
        let result = match &p.to_host {
            Some(to) => {
                next.state = if p.was_running { InstanceState::Running } else { InstanceState::Stopped };
                next.state_reason = None;
                json!({ "host": to, "message": format!(
                    "recreated on another host from template {}; the disk's contents on the lost host are lost",
                    next.template
                ) })
            }
            None => {
                next.state = InstanceState::Stopped;
                next.state_reason = Some("host-lost".into());
                json!({ "message": "left stopped on its lost host: nothing was recreated" })
            }
        };
        // The snapshots of the old disk stayed on the lost host.
        let writes = if p.to_host.is_some() { cx.engine.forget_snapshots_of(cx.instance).await? } else { Vec::new() };
        Ok(Succeeded { writes, result: Some(result) })
    }

    async fn failed(_: &StepCx<'_>, _: &Params, next: &mut Instance, _: u32) -> Result<Vec<nimbus_store::Write>> {
        // Wherever it is now, its state is what that host reports (set by the runner).
        next.state_reason = None;
        Ok(Vec::new())
    }
}
