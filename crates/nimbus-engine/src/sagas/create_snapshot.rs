//! `create_snapshot`: a snapshot of the instance's disk.
//!
//! Plan: the snapshot's record, `snapshotting`, in the request's transaction. Step: `snapshot` on the host,
//! which reports its size. Success makes the record `ready` with that size. Failure (or an operation given
//! up after crashes) removes both the record and whatever the host made of the snapshot, so no snapshot is
//! left `snapshotting` and none is left on the host without a record.

use async_trait::async_trait;
use nimbus_core::instance::{validate_name, Instance};
use nimbus_core::operation::Operation;
use nimbus_core::resources::{Snapshot, SnapshotState};
use nimbus_driver::DriverResult;
use nimbus_store::{Record, Write};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{Planned, Saga, StepCx, Succeeded};
use crate::resources::SNAPSHOT;
use crate::Result;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub snapshot_id: Uuid,
}

pub(crate) struct CreateSnapshot;

#[async_trait]
impl Saga for CreateSnapshot {
    type Params = Params;

    fn steps(_: &Params, _: &Operation) -> Vec<&'static str> {
        vec!["snapshot"]
    }

    async fn run(cx: &StepCx<'_>, p: &Params, _: &'static str) -> DriverResult<Value> {
        let bytes = cx.driver().snapshot(cx.instance.id, p.snapshot_id).await?;
        Ok(json!({ "bytes": bytes }))
    }

    async fn undo(cx: &StepCx<'_>, p: &Params, _: &'static str) -> DriverResult<()> {
        cx.driver().delete_snapshot(cx.instance.id, p.snapshot_id).await
    }

    async fn succeeded(cx: &StepCx<'_>, p: &Params, _: &mut Instance, outputs: &[Value]) -> Result<Succeeded> {
        let mut writes = Vec::new();
        if let Some((mut snapshot, record)) = cx.engine.record_of::<Snapshot>(SNAPSHOT, p.snapshot_id).await? {
            let bytes = outputs.first().and_then(|o| o["bytes"].as_u64()).unwrap_or(0);
            snapshot.state = SnapshotState::Ready;
            snapshot.size_gb = bytes.div_ceil(1 << 30).max(1);
            snapshot.size_bytes = bytes;
            writes.push(Write::UpdateRecord {
                record: record.next(&snapshot.name, &snapshot),
                expected_generation: record.generation,
            });
        }
        Ok(Succeeded { writes, result: Some(json!({ "snapshot_id": p.snapshot_id })) })
    }

    async fn failed(cx: &StepCx<'_>, p: &Params, _: &mut Instance, _: u32) -> Result<Vec<Write>> {
        // The step may have finished on the host without being recorded (a crash in between): remove what
        // it may have made. Idempotent, and the undo above already did it when the step was recorded.
        if let Err(e) = cx.driver().delete_snapshot(cx.instance.id, p.snapshot_id).await {
            tracing::warn!(snapshot = %p.snapshot_id, error = %e, "could not remove a failed snapshot from the host");
        }
        Ok(vec![Write::DeleteRecord { kind: SNAPSHOT.into(), id: p.snapshot_id, expected_generation: None }])
    }
}

pub(crate) fn plan(current: &Instance, name: Option<&str>) -> Result<Planned> {
    let snapshot = Snapshot {
        id: nimbus_core::new_id(),
        project_id: current.project_id,
        instance_id: current.id,
        name: name
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}-{}", current.name, nimbus_core::now().unix_timestamp())),
        state: SnapshotState::Snapshotting,
        size_gb: current.disk_size_gb,
        size_bytes: 0,
        created_at: nimbus_core::now(),
    };
    validate_name("name", &snapshot.name)?;
    let record = Record::new(SNAPSHOT, snapshot.id, Some(snapshot.project_id), &snapshot.name, &snapshot);
    Ok(Planned::of::<CreateSnapshot>(&Params { snapshot_id: snapshot.id })
        .with_writes(vec![Write::InsertRecord(record)]))
}
