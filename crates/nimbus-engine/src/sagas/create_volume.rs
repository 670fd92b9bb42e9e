//! `create_volume`: makes a new volume's disk on its host, empty, a copy of a volume snapshot (Exoscale's
//! `block-storage-snapshot`; the snapshot's volume locked by the operation meanwhile, released with the
//! outcome) or from a template's disk (Gcore's `source: image`: a volume an instance boots from), and plugs it into an instance when the request named one (Gcore's `instance_id_to_attach_to`).
//!
//! Plan (`Engine::create_volume`): the record, `creating`, quota-checked in the request's transaction; with
//! an instance to attach to, the record names it and the instance is locked (its state unchanged), after
//! the checks an attach makes (project, zone, state). Steps: `make` (idempotent: an existing disk is kept),
//! then `plug` (nothing without an instance; hot-plugged into a running guest, listed for a stopped one's
//! next boot). Success: `available`, or `in-use`. Failure: unplugged, the disk removed if the step made one,
//! and the volume shows `error`, attached to nothing, until it is deleted.

use async_trait::async_trait;
use nimbus_core::volume::{Volume, VolumeState};
use nimbus_driver::DriverResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use nimbus_core::operation::Operation;
use nimbus_store::Write;

use super::volume::{VolumeCx, VolumeSaga};
use super::Abandon;
use crate::volumes::{spec_of, volume_event, VOLUME};
use crate::Engine;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Params {
    /// The instance the new volume is attached to, whose lock the operation holds.
    #[serde(default)]
    pub attach_to: Option<Uuid>,
    /// The snapshot the new volume is a copy of; its volume's lock is the operation's until the outcome.
    #[serde(default)]
    pub from_snapshot: Option<FromSnapshot>,
    /// The template whose disk the new volume starts with (a volume to boot from).
    #[serde(default)]
    pub from_template: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FromSnapshot {
    pub volume_id: Uuid,
    pub snapshot_id: Uuid,
}

pub(crate) struct CreateVolume;

#[async_trait]
impl VolumeSaga for CreateVolume {
    type Params = Params;

    fn instance(p: &Params) -> Option<Uuid> {
        p.attach_to
    }

    fn steps(_: &Self::Params) -> Vec<&'static str> {
        vec!["make", "plug"]
    }

    async fn run(cx: &VolumeCx<'_>, p: &Params, step: &'static str) -> DriverResult<Value> {
        match (step, p.attach_to) {
            ("make", _) => match (&p.from_snapshot, p.from_template) {
                (Some(f), _) => {
                    cx.driver().create_volume_from_snapshot(&spec_of(cx.volume), f.volume_id, f.snapshot_id).await?
                }
                (None, Some(t)) => {
                    let template = cx
                        .engine
                        .template_by_id(t)
                        .await
                        .map_err(|_| nimbus_driver::DriverError::Invalid(format!("template {t} is gone")))?;
                    cx.driver().create_volume_from_template(&spec_of(cx.volume), &template).await?
                }
                (None, None) => cx.driver().create_volume(&spec_of(cx.volume)).await?,
            },
            (_, Some(id)) => {
                if cx.instance.is_none() {
                    return Err(nimbus_driver::DriverError::NotFound(id));
                }
                cx.driver().attach_volume(id, &spec_of(cx.volume)).await?
            }
            (_, None) => {}
        }
        Ok(Value::Null)
    }

    async fn undo(cx: &VolumeCx<'_>, p: &Params, step: &'static str) -> DriverResult<()> {
        match (step, p.attach_to) {
            ("make", _) => cx.driver().delete_volume(cx.volume.id).await,
            (_, Some(id)) => cx.driver().detach_volume(id, cx.volume.id).await,
            (_, None) => Ok(()),
        }
    }

    fn succeeded(p: &Params, next: &mut Volume) -> bool {
        next.state = if p.attach_to.is_some() { VolumeState::InUse } else { VolumeState::Available };
        true
    }

    /// Releases the snapshot's volume, locked for the copy.
    async fn land(engine: &Engine, op: &Operation, p: &Params, _ok: bool) -> Result<Vec<Write>, Abandon> {
        let Some(f) = &p.from_snapshot else { return Ok(Vec::new()) };
        let Some((mut from, record)) = engine.record_of::<Volume>(VOLUME, f.volume_id).await? else {
            return Ok(Vec::new());
        };
        if from.lock_operation_id != Some(op.id) {
            return Ok(Vec::new());
        }
        from.lock_operation_id = None;
        from.updated_at = nimbus_core::now();
        Ok(vec![
            Write::UpdateRecord { record: record.next(&from.name, &from), expected_generation: record.generation },
            volume_event(&op.actor, "volume.updated", &from),
        ])
    }

    async fn failed(cx: &VolumeCx<'_>, p: &Params, next: &mut Volume) {
        // Given up after crashes, the steps may have made the disk, or plugged it, without it being recorded.
        if let Some(id) = p.attach_to {
            if let Err(e) = cx.driver().detach_volume(id, cx.volume.id).await {
                tracing::warn!(volume = %cx.volume.id, error = %e, "could not unplug a failed volume");
            }
        }
        if let Err(e) = cx.driver().delete_volume(cx.volume.id).await {
            tracing::warn!(volume = %cx.volume.id, error = %e, "could not remove a failed volume's disk");
        }
        next.state = VolumeState::Error;
        next.instance_id = None;
    }
}
