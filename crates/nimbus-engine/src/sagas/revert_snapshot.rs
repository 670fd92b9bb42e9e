//! `revert_snapshot`: brings a stopped instance's disk back to a snapshot. One step on the host.

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::resources::SnapshotState;
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Planned, Saga, StepCx};
use crate::{Context, Engine, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub snapshot_id: Uuid,
}

pub(crate) struct RevertSnapshot;

#[async_trait]
impl Saga for RevertSnapshot {
    type Params = Params;

    fn steps(_: &Params, _: &Operation) -> Vec<&'static str> {
        vec!["revert"]
    }

    async fn run(cx: &StepCx<'_>, p: &Params, _: &'static str) -> DriverResult<Value> {
        cx.driver().revert(cx.instance.id, p.snapshot_id).await?;
        Ok(Value::Null)
    }
}

pub(crate) async fn plan(engine: &Engine, ctx: &Context, current: &Instance, snapshot_id: Uuid) -> Result<Planned> {
    let snapshot = engine.snapshot_of(ctx, current, snapshot_id).await?;
    if snapshot.state != SnapshotState::Ready {
        return Err(DomainError::Conflict(format!("snapshot {snapshot_id} is not ready")));
    }
    Ok(Planned::of::<RevertSnapshot>(&Params { snapshot_id }))
}
