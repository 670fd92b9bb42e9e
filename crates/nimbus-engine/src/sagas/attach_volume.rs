//! `attach_volume`: gives a volume to an instance on its host.
//!
//! Plan (`Engine::attach_volume`): same project, zone and host; the volume `attaching` and naming the
//! instance, the instance locked (its state unchanged). Step: `plug` — hot-plugged into a running guest (the
//! disk appears without a reboot); for a stopped one, nothing runs until its next boot, whose spec lists the
//! volume. Success: `in-use`. Failure: unplugged again, `available`, attached to nothing.

use async_trait::async_trait;
use nimbus_core::volume::{Volume, VolumeState};
use nimbus_driver::{DriverError, DriverResult};
use serde_json::Value;
use uuid::Uuid;

use super::volume::{OnInstance, VolumeCx, VolumeSaga};
use crate::volumes::spec_of;

pub(crate) struct AttachVolume;

#[async_trait]
impl VolumeSaga for AttachVolume {
    type Params = OnInstance;

    fn instance(p: &OnInstance) -> Option<Uuid> {
        p.instance_id
    }

    fn steps() -> &'static [&'static str] {
        &["plug"]
    }

    async fn run(cx: &VolumeCx<'_>, p: &OnInstance, _: &'static str) -> DriverResult<Value> {
        let id = p.instance_id.ok_or_else(|| DriverError::Invalid("an attach names its instance".into()))?;
        if cx.instance.is_none() {
            return Err(DriverError::NotFound(id));
        }
        cx.driver().attach_volume(id, &spec_of(cx.volume)).await?;
        Ok(Value::Null)
    }

    async fn undo(cx: &VolumeCx<'_>, p: &OnInstance, _: &'static str) -> DriverResult<()> {
        match p.instance_id {
            Some(id) => cx.driver().detach_volume(id, cx.volume.id).await,
            None => Ok(()),
        }
    }

    fn succeeded(_: &OnInstance, next: &mut Volume) -> bool {
        next.state = VolumeState::InUse;
        true
    }

    async fn failed(cx: &VolumeCx<'_>, p: &OnInstance, next: &mut Volume) {
        // Given up after crashes, the plug may have happened unrecorded: take it back.
        if let Some(id) = p.instance_id {
            if let Err(e) = cx.driver().detach_volume(id, cx.volume.id).await {
                tracing::warn!(volume = %cx.volume.id, error = %e, "could not unplug a failed attach");
                next.state = VolumeState::Error;
                return;
            }
        }
        next.state = VolumeState::Available;
        next.instance_id = None;
    }
}
