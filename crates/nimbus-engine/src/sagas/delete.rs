//! `delete`: destroys the instance on the host, removes the disks of the volumes the request names with it
//! (Gcore's `volumes`), then, in the outcome's transaction, releases what only it held (its address, its
//! password, its snapshots' records; its other volumes, detached and kept; the reserved addresses the
//! request names, deleted, its other reservation kept) and leaves its record `destroyed`
//! for `EngineConfig::deleted_retention` (the runner's landing of a delete; removed at once with no
//! retention).
//!
//! Plan: the volumes to delete must be attached to the instance (`in-use`, or `error` after a failed
//! change) and not busy; they are locked by the operation and shown `deleting` in the request's
//! transaction. Steps: `destroy`, then `remove-volumes` (each disk removed, idempotent). Success removes
//! their records. Failure: each one the host still has a disk of is unlocked, back to `in-use` if the
//! instance was not destroyed and to `error` (still naming the instance, which is deleted again) if it was;
//! one whose disk is gone loses its record.

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::{Actor, Operation};
use nimbus_core::volume::{Volume, VolumeState};
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use nimbus_store::{Record, Write};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Saga, StepCx, Succeeded};
use crate::resources::PASSWORD;
use crate::volumes::{volume_event, VOLUME};
use crate::{Context, Engine, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Params {
    /// Volumes attached to the instance that are deleted with it (locked by the operation).
    #[serde(default)]
    pub volumes: Vec<Uuid>,
    /// Reserved addresses the instance holds that are deleted with it (Gcore's `reserved_fixed_ips`); its
    /// others stay reserved.
    #[serde(default)]
    pub reserved_addresses: Vec<Uuid>,
}

pub(crate) struct Delete;

#[async_trait]
impl Saga for Delete {
    type Params = Params;

    fn steps(p: &Params, _: &Operation) -> Vec<&'static str> {
        if p.volumes.is_empty() {
            vec!["destroy"]
        } else {
            vec!["destroy", "remove-volumes"]
        }
    }

    async fn run(cx: &StepCx<'_>, p: &Params, step: &'static str) -> DriverResult<Value> {
        match step {
            "remove-volumes" => {
                // The destroy unplugged them; a missing disk is no error.
                for id in &p.volumes {
                    cx.driver().delete_volume(*id).await?;
                }
            }
            _ => cx.driver().destroy(cx.instance.id).await?,
        }
        Ok(Value::Null)
    }

    async fn succeeded(cx: &StepCx<'_>, p: &Params, _: &mut Instance, _: &[Value]) -> Result<Succeeded> {
        let id = cx.instance.id;
        let mut writes = vec![
            Write::ReleaseAddresses { owner: id },
            Write::DeleteRecord { kind: PASSWORD.into(), id, expected_generation: None },
        ];
        writes.extend(cx.engine.forget_snapshots_of(cx.instance).await?);
        // Their addresses go back to their networks with the records (the instance held them through them).
        writes.extend(cx.engine.reservations_going(&p.reserved_addresses).await?);
        writes.extend(cx.engine.release_volumes_of(cx.instance, &p.volumes).await?);
        for (v, record) in locked_volumes(cx, &p.volumes).await? {
            writes.push(Write::DeleteRecord {
                kind: VOLUME.into(),
                id: v.id,
                expected_generation: Some(record.generation),
            });
            writes.push(volume_event(&Actor::system(), "volume.deleted", &v));
        }
        Ok(Succeeded { writes, result: None })
    }

    async fn failed(cx: &StepCx<'_>, p: &Params, _: &mut Instance, steps_done: u32) -> Result<Vec<Write>> {
        let mut writes = Vec::new();
        let on_host = match cx.driver().volumes().await {
            Ok(ids) => Some(ids),
            Err(e) => {
                tracing::warn!(instance = %cx.instance.id, error = %e, "could not list the host's volumes");
                None
            }
        };
        for (mut v, record) in locked_volumes(cx, &p.volumes).await? {
            if on_host.as_ref().is_some_and(|ids| !ids.contains(&v.id)) {
                writes.push(Write::DeleteRecord {
                    kind: VOLUME.into(),
                    id: v.id,
                    expected_generation: Some(record.generation),
                });
                writes.push(volume_event(&Actor::system(), "volume.deleted", &v));
                continue;
            }
            v.lock_operation_id = None;
            v.state = if steps_done == 0 { VolumeState::InUse } else { VolumeState::Error };
            v.updated_at = nimbus_core::now();
            writes
                .push(Write::UpdateRecord { record: record.next(&v.name, &v), expected_generation: record.generation });
            writes.push(volume_event(&Actor::system(), "volume.updated", &v));
        }
        Ok(writes)
    }
}

/// The records of `ids` still locked by the operation holding the instance (the delete).
async fn locked_volumes(cx: &StepCx<'_>, ids: &[Uuid]) -> Result<Vec<(Volume, Record)>> {
    let mut out = Vec::new();
    for id in ids {
        if let Some((v, r)) = cx.engine.record_of::<Volume>(VOLUME, *id).await? {
            if v.lock_operation_id.is_some() && v.lock_operation_id == cx.instance.lock_operation_id {
                out.push((v, r));
            }
        }
    }
    Ok(out)
}

/// The volumes a delete of `instance` removes with it: those `named`, and its boot volume unless it is kept
/// (and unless it is gone already, when the create that was to make it failed).
pub(crate) async fn volumes_going_with(engine: &Engine, instance: &Instance, named: &[Uuid]) -> Result<Vec<Uuid>> {
    let mut ids = named.to_vec();
    if let Some(boot) = instance.boot_volume.filter(|b| b.delete_on_termination && !ids.contains(&b.id)) {
        let attached = engine.record_of::<Volume>(VOLUME, boot.id).await?;
        if attached.is_some_and(|(v, _)| v.instance_id == Some(instance.id)) {
            ids.push(boot.id);
        }
    }
    Ok(ids)
}

/// The writes that lock the volumes a delete removes with `instance`, for operation `op`: each must be
/// attached to it and settled. A compare-and-swap on each version read.
pub(crate) async fn lock_volumes(
    engine: &Engine,
    ctx: &Context,
    instance: &Instance,
    ids: &[Uuid],
    op: &Operation,
) -> Result<Vec<Write>> {
    let mut writes = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        if ids[..n].contains(id) {
            return Err(DomainError::invalid("volumes", format!("volume {id} is named twice")));
        }
        let Some((mut v, record)) = engine.record_of::<Volume>(VOLUME, *id).await? else {
            return Err(DomainError::not_found("volume", *id));
        };
        if v.project_id != ctx.project.id {
            return Err(DomainError::not_found("volume", *id));
        }
        if v.instance_id != Some(instance.id) {
            return Err(DomainError::Conflict(format!(
                "volume {id} is not attached to instance {}: only its own volumes are deleted with an instance",
                instance.id
            )));
        }
        if let Some(holder) = v.lock_operation_id {
            return Err(DomainError::Conflict(format!("volume {id} is busy with operation {holder}")));
        }
        if !matches!(v.state, VolumeState::InUse | VolumeState::Error) {
            return Err(DomainError::Conflict(format!("cannot delete volume {id} in state {}", v.state)));
        }
        engine.refuse_volume_with_snapshots(&v).await?;
        v.state = VolumeState::Deleting;
        v.lock_operation_id = Some(op.id);
        v.updated_at = op.created_at;
        writes.push(Write::UpdateRecord { record: record.next(&v.name, &v), expected_generation: record.generation });
        writes.push(volume_event(&ctx.actor, "volume.updated", &v));
    }
    Ok(writes)
}

/// The reserved addresses a delete asked to remove with the instance: each must be one the instance holds.
pub(crate) async fn reserved_addresses_going_with(
    engine: &Engine,
    ctx: &Context,
    instance: &Instance,
    asked: &[Uuid],
) -> Result<Vec<Uuid>> {
    for id in asked {
        let r = engine.reserved_address(ctx, *id).await.map_err(|e| match e {
            DomainError::NotFound { .. } => {
                DomainError::invalid("reserved_addresses", format!("no reserved address {id}"))
            }
            e => e,
        })?;
        if r.instance_id != Some(instance.id) {
            return Err(DomainError::invalid(
                "reserved_addresses",
                format!("reserved address {} is not held by instance {}", r.ip, instance.id),
            ));
        }
    }
    let mut ids = asked.to_vec();
    ids.sort();
    ids.dedup();
    Ok(ids)
}
