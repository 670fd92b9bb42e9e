//! `change_anti_affinity_groups`: joins and leaves anti-affinity groups. The record changes in the request's
//! transaction and placement honours it from the next start: no step on the host.

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_driver::DriverResult;
use nimbus_store::Write;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Planned, Saga, StepCx};
use crate::{Context, Engine, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub join: Vec<Uuid>,
    pub leave: Vec<Uuid>,
}

pub(crate) struct ChangeAntiAffinityGroups;

#[async_trait]
impl Saga for ChangeAntiAffinityGroups {
    type Params = Params;

    fn steps(_: &Params, _: &Operation) -> Vec<&'static str> {
        Vec::new()
    }

    async fn run(_: &StepCx<'_>, _: &Params, _: &'static str) -> DriverResult<Value> {
        Ok(Value::Null)
    }

    /// Only an operation given up can fail: the groups go back to what they were.
    async fn failed(_: &StepCx<'_>, p: &Params, next: &mut Instance, _: u32) -> Result<Vec<Write>> {
        next.anti_affinity_groups.retain(|g| !p.join.contains(g));
        for g in &p.leave {
            if !next.anti_affinity_groups.contains(g) {
                next.anti_affinity_groups.push(*g);
            }
        }
        Ok(Vec::new())
    }
}

pub(crate) async fn plan(
    engine: &Engine,
    ctx: &Context,
    next: &mut Instance,
    join: &[Uuid],
    leave: &[Uuid],
) -> Result<Planned> {
    engine.check_group_refs(ctx, &[], join).await?;
    next.anti_affinity_groups.retain(|g| !leave.contains(g));
    for g in join {
        if !next.anti_affinity_groups.contains(g) {
            next.anti_affinity_groups.push(*g);
        }
    }
    Ok(Planned::of::<ChangeAntiAffinityGroups>(&Params { join: join.to_vec(), leave: leave.to_vec() }))
}
