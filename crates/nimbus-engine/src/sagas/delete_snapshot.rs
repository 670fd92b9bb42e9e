//! `delete_snapshot`: removes a snapshot from the host, then its record. It changes the instance's disk
//! chain, so it runs under the instance's lock like any other operation on it. A failure (or an operation
//! given up after crashes) keeps the record only if the host still has the snapshot.

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_driver::DriverResult;
use nimbus_store::Write;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Planned, Saga, StepCx, Succeeded};
use crate::resources::SNAPSHOT;
use crate::{Context, Engine, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub snapshot_id: Uuid,
}

pub(crate) struct DeleteSnapshot;

#[async_trait]
impl Saga for DeleteSnapshot {
    type Params = Params;

    fn steps(_: &Params, _: &Operation) -> Vec<&'static str> {
        vec!["delete"]
    }

    async fn run(cx: &StepCx<'_>, p: &Params, _: &'static str) -> DriverResult<Value> {
        cx.driver().delete_snapshot(cx.instance.id, p.snapshot_id).await?;
        Ok(Value::Null)
    }

    async fn succeeded(_: &StepCx<'_>, p: &Params, _: &mut Instance, _: &[Value]) -> Result<Succeeded> {
        Ok(Succeeded {
            writes: vec![Write::DeleteRecord { kind: SNAPSHOT.into(), id: p.snapshot_id, expected_generation: None }],
            result: None,
        })
    }

    async fn failed(cx: &StepCx<'_>, _: &Params, _: &mut Instance, _: u32) -> Result<Vec<Write>> {
        cx.engine.forget_snapshots_gone_from_host(cx.instance).await
    }
}

pub(crate) async fn plan(engine: &Engine, ctx: &Context, current: &Instance, snapshot_id: Uuid) -> Result<Planned> {
    engine.snapshot_of(ctx, current, snapshot_id).await?;
    Ok(Planned::of::<DeleteSnapshot>(&Params { snapshot_id }))
}
