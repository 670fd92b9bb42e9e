//! `delete_volume_snapshot`: removes one of a volume's snapshots.
//!
//! Plan (`Engine::delete_volume_snapshot`): the snapshot `deleting`, the volume locked (its state
//! unchanged), so that no revert reads the copy being removed. Step: `remove` (idempotent). Success removes
//! the snapshot's record. Failure: the snapshot `error`, to be deleted again.

use async_trait::async_trait;
use nimbus_core::volume::{Volume, VolumeSnapshotState};
use nimbus_driver::DriverResult;
use nimbus_store::Write;
use serde_json::Value;

use super::volume::{OfSnapshot, VolumeCx, VolumeSaga};
use super::Abandon;
use crate::Engine;

pub(crate) struct DeleteVolumeSnapshot;

#[async_trait]
impl VolumeSaga for DeleteVolumeSnapshot {
    type Params = OfSnapshot;

    fn steps(_: &Self::Params) -> Vec<&'static str> {
        vec!["remove"]
    }

    async fn run(cx: &VolumeCx<'_>, p: &OfSnapshot, _: &'static str) -> DriverResult<Value> {
        cx.driver().delete_volume_snapshot(cx.volume.id, p.snapshot_id).await?;
        Ok(Value::Null)
    }

    fn succeeded(_: &OfSnapshot, _: &mut Volume) -> bool {
        true
    }

    async fn failed(_: &VolumeCx<'_>, _: &OfSnapshot, _: &mut Volume) {}

    async fn land(
        engine: &Engine,
        op: &nimbus_core::operation::Operation,
        p: &OfSnapshot,
        ok: bool,
    ) -> Result<Vec<Write>, Abandon> {
        let state = if ok { None } else { Some(VolumeSnapshotState::Error) };
        crate::volume_snapshots::land_snapshot(engine, op, p.snapshot_id, state).await
    }
}
