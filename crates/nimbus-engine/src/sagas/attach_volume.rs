//! `attach_volume`: gives a volume to an instance, moving it to the instance's host first when another
//! host keeps it.
//!
//! Plan (`Engine::attach_volume`): same project and zone; the volume `attaching` and naming the instance,
//! the instance locked (its state unchanged). A volume kept by another host moves, since it is detached:
//! unless it has snapshots (they stay with the host that keeps them) or holds a template's disk (a boot
//! volume, an overlay on its host's template).
//!
//! Steps: `move` (only across hosts: the volume's file read piece by piece from its host and written on the
//! instance's, where it appears whole at the last piece; run again, it starts over, the source untouched),
//! `plug` — hot-plugged into a running guest (the disk appears without a reboot); for a stopped one, nothing
//! runs until its next boot, whose spec lists the volume — and `release-source` (only across hosts: the
//! old host's file removed; one that cannot be reached keeps a leftover, logged). Success: `in-use`, on the
//! instance's host. Failure: unplugged again, `available`, attached to nothing; the copy on the instance's
//! host is removed while the source still has the volume, and otherwise kept as the volume (its host
//! becomes the instance's).

use async_trait::async_trait;
use nimbus_core::volume::{Volume, VolumeState};
use nimbus_driver::{copy_volume, Driver, DriverError, DriverResult};
use serde_json::Value;
use uuid::Uuid;

use super::volume::{OnInstance, VolumeCx, VolumeSaga};
use crate::volumes::spec_of;

pub(crate) struct AttachVolume;

impl AttachVolume {
    /// The drivers of the hosts a moving volume leaves and reaches.
    fn hosts(cx: &VolumeCx<'_>, p: &OnInstance) -> Option<(std::sync::Arc<dyn Driver>, std::sync::Arc<dyn Driver>)> {
        p.move_from.as_deref().map(|from| (cx.engine.host_driver(from), cx.driver()))
    }

    /// Whether the source host still has the volume (`None`: it could not be asked).
    async fn source_has(cx: &VolumeCx<'_>, from: &dyn Driver) -> Option<bool> {
        from.volumes().await.ok().map(|ids| ids.contains(&cx.volume.id))
    }
}

#[async_trait]
impl VolumeSaga for AttachVolume {
    type Params = OnInstance;

    fn instance(p: &OnInstance) -> Option<Uuid> {
        p.instance_id
    }

    fn steps(p: &OnInstance) -> Vec<&'static str> {
        if p.move_from.is_some() {
            vec!["move", "plug", "release-source"]
        } else {
            vec!["plug"]
        }
    }

    async fn run(cx: &VolumeCx<'_>, p: &OnInstance, step: &'static str) -> DriverResult<Value> {
        let id = p.instance_id.ok_or_else(|| DriverError::Invalid("an attach names its instance".into()))?;
        if cx.instance.is_none() {
            return Err(DriverError::NotFound(id));
        }
        match (step, Self::hosts(cx, p)) {
            ("move", Some((from, to))) => {
                let bytes = copy_volume(from.as_ref(), to.as_ref(), cx.volume.id).await?;
                tracing::info!(volume = %cx.volume.id, from = ?p.move_from, to = ?p.move_to, bytes, "volume moved");
                Ok(serde_json::json!({ "bytes": bytes }))
            }
            ("release-source", Some((from, _))) => {
                if let Err(e) = from.delete_volume(cx.volume.id).await {
                    tracing::warn!(volume = %cx.volume.id, host = ?p.move_from, error = %e, "a moved volume's old file is left behind");
                }
                Ok(Value::Null)
            }
            _ => {
                cx.driver().attach_volume(id, &spec_of(cx.volume)).await?;
                Ok(Value::Null)
            }
        }
    }

    async fn undo(cx: &VolumeCx<'_>, p: &OnInstance, step: &'static str) -> DriverResult<()> {
        match (step, p.instance_id, Self::hosts(cx, p)) {
            ("plug", Some(id), _) => cx.driver().detach_volume(id, cx.volume.id).await,
            // The copy goes only while the source is known to have the volume still.
            ("move", _, Some((from, to))) if Self::source_has(cx, from.as_ref()).await == Some(true) => {
                to.delete_volume(cx.volume.id).await
            }
            _ => Ok(()),
        }
    }

    fn succeeded(p: &OnInstance, next: &mut Volume) -> bool {
        next.state = VolumeState::InUse;
        if let Some(to) = &p.move_to {
            next.host = Some(to.clone());
        }
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
        if let (Some((from, to)), Some(host)) = (Self::hosts(cx, p), &p.move_to) {
            match Self::source_has(cx, from.as_ref()).await {
                // The source stands: a copy the move made (also one a crash left unrecorded) goes.
                Some(true) => {
                    if let Err(e) = to.delete_volume(cx.volume.id).await {
                        tracing::warn!(volume = %cx.volume.id, host = %host, error = %e, "a failed move's copy is left behind");
                    }
                }
                // Gone from its old host (released before the end was recorded): the volume is its copy now.
                Some(false) if to.volumes().await.is_ok_and(|ids| ids.contains(&cx.volume.id)) => {
                    next.host = Some(host.clone());
                }
                _ => {}
            }
        }
        next.state = VolumeState::Available;
        next.instance_id = None;
    }
}
