//! `revert_volume`: puts one of a volume's snapshots' data back into the volume.
//!
//! Plan (`Engine::revert_volume`): refused while the volume is attached (no guest may see its disk change
//! under it); the volume locked, `available` throughout. Step: `restore` — a copy of the snapshot renamed
//! over the volume's disk, grown back to the volume's size if it grew since (idempotent: running it again
//! restores the same data). Success and failure both leave the volume `available`: the rename is atomic, so
//! the disk holds either its old data or the snapshot's, and its size never changes.

use async_trait::async_trait;
use nimbus_core::volume::Volume;
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::volume::{OfSnapshot, VolumeCx, VolumeSaga};

pub(crate) struct RevertVolume;

#[async_trait]
impl VolumeSaga for RevertVolume {
    type Params = OfSnapshot;

    fn steps(_: &Self::Params) -> Vec<&'static str> {
        vec!["restore"]
    }

    async fn run(cx: &VolumeCx<'_>, p: &OfSnapshot, _: &'static str) -> DriverResult<Value> {
        cx.driver().revert_volume(cx.volume.id, p.snapshot_id).await?;
        Ok(Value::Null)
    }

    fn succeeded(_: &OfSnapshot, _: &mut Volume) -> bool {
        true
    }

    async fn failed(_: &VolumeCx<'_>, _: &OfSnapshot, _: &mut Volume) {}
}
