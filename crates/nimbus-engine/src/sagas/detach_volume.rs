//! `detach_volume`: takes a volume back from its instance.
//!
//! Plan (`Engine::detach_volume`): the volume `detaching`, its instance (when it still exists) locked.
//! Step: `unplug` — hot-unplugged from a running guest (the disk disappears; its data stays in the volume).
//! Success: `available`, attached to nothing. Failure: `error`, still naming the instance, so that a detach
//! can be asked again.

use async_trait::async_trait;
use nimbus_core::volume::{Volume, VolumeState};
use nimbus_driver::DriverResult;
use serde_json::Value;
use uuid::Uuid;

use super::volume::{OnInstance, VolumeCx, VolumeSaga};

pub(crate) struct DetachVolume;

#[async_trait]
impl VolumeSaga for DetachVolume {
    type Params = OnInstance;

    fn instance(p: &OnInstance) -> Option<Uuid> {
        p.instance_id
    }

    fn steps(_: &Self::Params) -> Vec<&'static str> {
        vec!["unplug"]
    }

    async fn run(cx: &VolumeCx<'_>, p: &OnInstance, _: &'static str) -> DriverResult<Value> {
        // An instance deleted meanwhile has nothing plugged.
        if let (Some(id), Some(_)) = (p.instance_id, cx.instance) {
            cx.driver().detach_volume(id, cx.volume.id).await?;
        }
        Ok(Value::Null)
    }

    fn succeeded(_: &OnInstance, next: &mut Volume) -> bool {
        next.state = VolumeState::Available;
        next.instance_id = None;
        true
    }

    async fn failed(_: &VolumeCx<'_>, _: &OnInstance, next: &mut Volume) {
        next.state = VolumeState::Error;
    }
}
