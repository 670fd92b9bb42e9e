//! `create_volume`: makes a new volume's empty disk on its host.
//!
//! Plan (`Engine::create_volume`): the record, `creating`, quota-checked in the request's transaction.
//! Step: `make` (idempotent: an existing disk is kept). Success: `available`. Failure: the disk, if the
//! step made one, is removed and the volume shows `error` until it is deleted.

use async_trait::async_trait;
use nimbus_core::volume::{Volume, VolumeState};
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::volume::{VolumeCx, VolumeSaga};
use super::NoParams;
use crate::volumes::spec_of;

pub(crate) struct CreateVolume;

#[async_trait]
impl VolumeSaga for CreateVolume {
    type Params = NoParams;

    fn steps() -> &'static [&'static str] {
        &["make"]
    }

    async fn run(cx: &VolumeCx<'_>, _: &NoParams, _: &'static str) -> DriverResult<Value> {
        cx.driver().create_volume(&spec_of(cx.volume)).await?;
        Ok(Value::Null)
    }

    async fn undo(cx: &VolumeCx<'_>, _: &NoParams, _: &'static str) -> DriverResult<()> {
        cx.driver().delete_volume(cx.volume.id).await
    }

    fn succeeded(_: &NoParams, next: &mut Volume) -> bool {
        next.state = VolumeState::Available;
        true
    }

    async fn failed(cx: &VolumeCx<'_>, _: &NoParams, next: &mut Volume) {
        // Given up after crashes, the step may have made the disk without it being recorded.
        if let Err(e) = cx.driver().delete_volume(cx.volume.id).await {
            tracing::warn!(volume = %cx.volume.id, error = %e, "could not remove a failed volume's disk");
        }
        next.state = VolumeState::Error;
    }
}
