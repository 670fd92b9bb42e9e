//! `create_volume_snapshot`: keeps a copy of a volume's data as one of its snapshots.
//!
//! Plan (`Engine::create_volume_snapshot`): the snapshot's record, `creating`, with the volume's size; the
//! volume locked (its state unchanged), and, when it is attached, its instance too, so that it is neither
//! stopped nor deleted under the copy. Step: `copy` (idempotent: an existing copy is kept; a running guest is
//! paused for it). Success: the snapshot `ready`. Failure: the copy, if made, removed, and the snapshot
//! `error` until it is deleted.

use async_trait::async_trait;
use nimbus_core::volume::{Volume, VolumeSnapshotState};
use nimbus_driver::DriverResult;
use nimbus_store::Write;
use serde_json::Value;

use super::volume::{OfSnapshot, VolumeCx, VolumeSaga};
use super::Abandon;
use crate::Engine;

pub(crate) struct CreateVolumeSnapshot;

#[async_trait]
impl VolumeSaga for CreateVolumeSnapshot {
    type Params = OfSnapshot;

    fn instance(p: &OfSnapshot) -> Option<uuid::Uuid> {
        p.instance_id
    }

    fn steps(_: &Self::Params) -> Vec<&'static str> {
        vec!["copy"]
    }

    async fn run(cx: &VolumeCx<'_>, p: &OfSnapshot, _: &'static str) -> DriverResult<Value> {
        cx.driver().snapshot_volume(cx.volume.id, p.snapshot_id, cx.instance.map(|i| i.id)).await?;
        Ok(Value::Null)
    }

    async fn undo(cx: &VolumeCx<'_>, p: &OfSnapshot, _: &'static str) -> DriverResult<()> {
        cx.driver().delete_volume_snapshot(cx.volume.id, p.snapshot_id).await
    }

    fn succeeded(_: &OfSnapshot, _: &mut Volume) -> bool {
        true
    }

    async fn failed(cx: &VolumeCx<'_>, p: &OfSnapshot, _: &mut Volume) {
        // Given up after crashes, the step may have made the copy without it being recorded.
        if let Err(e) = cx.driver().delete_volume_snapshot(cx.volume.id, p.snapshot_id).await {
            tracing::warn!(volume = %cx.volume.id, error = %e, "could not remove a failed snapshot's copy");
        }
    }

    async fn land(
        engine: &Engine,
        op: &nimbus_core::operation::Operation,
        p: &OfSnapshot,
        ok: bool,
    ) -> Result<Vec<Write>, Abandon> {
        let state = if ok { VolumeSnapshotState::Ready } else { VolumeSnapshotState::Error };
        crate::volume_snapshots::land_snapshot(engine, op, p.snapshot_id, Some(state)).await
    }
}
