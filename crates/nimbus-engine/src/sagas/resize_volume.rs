//! `resize_volume`: grows a volume, detached or attached.
//!
//! Plan (`Engine::resize_volume`): the record takes the new size at once, quota-checked in the request's
//! transaction; an attached volume's instance is locked meanwhile (its state unchanged). Step: `grow` — the
//! file, or, under a running instance, the disk the guest has (QMP `block_resize`). Failure: the record takes the size the host's disk really has, so record and
//! disk never disagree.

use async_trait::async_trait;
use nimbus_core::volume::Volume;
use nimbus_driver::DriverResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::volume::{VolumeCx, VolumeSaga};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub from: u64,
    pub to: u64,
    /// The instance the volume is attached to, whose lock the operation holds.
    #[serde(default)]
    pub instance_id: Option<uuid::Uuid>,
}

pub(crate) struct ResizeVolume;

#[async_trait]
impl VolumeSaga for ResizeVolume {
    type Params = Params;

    fn instance(p: &Params) -> Option<uuid::Uuid> {
        p.instance_id
    }

    fn steps(_: &Self::Params) -> Vec<&'static str> {
        vec!["grow"]
    }

    async fn run(cx: &VolumeCx<'_>, p: &Params, _: &'static str) -> DriverResult<Value> {
        cx.driver().resize_volume(cx.volume.id, p.to, cx.instance.map(|i| i.id)).await?;
        Ok(Value::Null)
    }

    fn succeeded(p: &Params, next: &mut Volume) -> bool {
        next.size_gb = p.to;
        true
    }

    async fn failed(cx: &VolumeCx<'_>, p: &Params, next: &mut Volume) {
        next.size_gb = cx.driver().volume_size_gb(cx.volume.id).await.unwrap_or(p.from);
    }
}
