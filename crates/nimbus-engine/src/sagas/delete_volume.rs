//! `delete_volume`: removes a detached volume and its data.
//!
//! Plan (`Engine::delete_volume`): the volume `deleting` (refused while attached). Step: `remove` the disk
//! (idempotent). Success removes the record, which frees its quota. Failure: `error`, to be deleted again.

use async_trait::async_trait;
use nimbus_core::volume::{Volume, VolumeState};
use nimbus_driver::DriverResult;
use serde_json::Value;

use super::volume::{VolumeCx, VolumeSaga};
use super::NoParams;

pub(crate) struct DeleteVolume;

#[async_trait]
impl VolumeSaga for DeleteVolume {
    type Params = NoParams;

    fn steps(_: &Self::Params) -> Vec<&'static str> {
        vec!["remove"]
    }

    async fn run(cx: &VolumeCx<'_>, _: &NoParams, _: &'static str) -> DriverResult<Value> {
        cx.driver().delete_volume(cx.volume.id).await?;
        Ok(Value::Null)
    }

    fn succeeded(_: &NoParams, _: &mut Volume) -> bool {
        false
    }

    async fn failed(_: &VolumeCx<'_>, _: &NoParams, next: &mut Volume) {
        next.state = VolumeState::Error;
    }
}
