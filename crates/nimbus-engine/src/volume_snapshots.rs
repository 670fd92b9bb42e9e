//! Volume snapshots: copies of a volume's data kept beside it on its host (see
//! `nimbus_core::volume::VolumeSnapshot`).
//!
//! Making one, reverting the volume to one and removing one are operations on the volume: each holds the
//! volume's lock from the request's transaction to its outcome, so they never overlap each other, an attach
//! or a deletion of the volume. The snapshot's record is written in the request's transaction (`creating`,
//! `deleting`) and lands with the operation's outcome (`sagas/create_volume_snapshot.rs`,
//! `sagas/revert_volume.rs`, `sagas/delete_volume_snapshot.rs`). A volume is deleted only once it has no
//! snapshots left.

use nimbus_core::labels::{self, Labels};
use nimbus_core::operation::{Actor, Operation, Target};
use nimbus_core::state_machine::Action;
use nimbus_core::tenancy::Role;
use nimbus_core::volume::{self, Volume, VolumeAction, VolumeSnapshot, VolumeSnapshotState};
use nimbus_core::DomainError;
use nimbus_store::{Record, StoreError, Write, WriteSet};
use uuid::Uuid;

use crate::instances::{backoff, event, instance_event, CAS_RETRIES};
use crate::sagas::volume::OfSnapshot;
use crate::sagas::Abandon;
use crate::volumes::VOLUME;
use crate::{store_err, Context, Engine, Result};

/// The records' kind.
pub const VOLUME_SNAPSHOT: &str = "volume_snapshot";

/// A request for a new snapshot of a volume.
#[derive(Debug, Clone, Default)]
pub struct CreateVolumeSnapshot {
    /// Empty: the volume's name and the time.
    pub name: String,
    pub labels: Labels,
}

/// A change of what a snapshot is called and labelled.
#[derive(Debug, Clone, Default)]
pub struct VolumeSnapshotPatch {
    pub name: Option<String>,
    /// JSON merge patch of the labels.
    pub labels: Option<serde_json::Value>,
    /// Replaces the labels whole.
    pub replace_labels: Option<Labels>,
}

pub(crate) fn snapshot_event(actor: &Actor, kind: &str, s: &VolumeSnapshot) -> Write {
    Write::AppendEvent(event(actor, s.project_id, kind, s.id, serde_json::to_value(s).expect("serializes")))
}

/// The writes that land a snapshot with its operation's outcome: its next state, or its removal (`None`).
/// A compare-and-swap on the version read, so a concurrent rename makes the outcome retry.
pub(crate) async fn land_snapshot(
    engine: &Engine,
    op: &Operation,
    snapshot_id: Uuid,
    state: Option<VolumeSnapshotState>,
) -> Result<Vec<Write>, Abandon> {
    let Some((mut s, record)) = engine.record_of::<VolumeSnapshot>(VOLUME_SNAPSHOT, snapshot_id).await? else {
        return Ok(Vec::new());
    };
    s.updated_at = nimbus_core::now();
    Ok(match state {
        Some(state) => {
            s.state = state;
            vec![
                Write::UpdateRecord { record: record.next(&s.name, &s), expected_generation: record.generation },
                snapshot_event(&op.actor, "volume_snapshot.updated", &s),
            ]
        }
        None => vec![
            Write::DeleteRecord {
                kind: VOLUME_SNAPSHOT.into(),
                id: s.id,
                expected_generation: Some(record.generation),
            },
            snapshot_event(&op.actor, "volume_snapshot.deleted", &s),
        ],
    })
}

impl Engine {
    /// The caller's project's volume snapshots, oldest first; `of`: only one volume's.
    pub async fn list_volume_snapshots(&self, ctx: &Context, of: Option<Uuid>) -> Result<Vec<VolumeSnapshot>> {
        let all: Vec<VolumeSnapshot> = self.records(VOLUME_SNAPSHOT, ctx).await?;
        Ok(all.into_iter().filter(|s| of.is_none_or(|v| s.volume_id == v)).collect())
    }

    pub async fn volume_snapshot(&self, ctx: &Context, id: Uuid) -> Result<VolumeSnapshot> {
        self.record(VOLUME_SNAPSHOT, ctx, id).await
    }

    /// Renames or relabels a snapshot (nothing on the host).
    pub async fn update_volume_snapshot(
        &self,
        ctx: &Context,
        id: Uuid,
        patch: VolumeSnapshotPatch,
    ) -> Result<VolumeSnapshot> {
        ctx.require(Role::Member)?;
        if let Some(name) = &patch.name {
            validate_snapshot_name(name)?;
        }
        let actor = ctx.actor.clone();
        let (s, ()) = self
            .edit_record(VOLUME_SNAPSHOT, ctx, id, |s: &mut VolumeSnapshot| {
                if let Some(name) = &patch.name {
                    s.name = name.clone();
                }
                labels::apply_update(&mut s.labels, patch.replace_labels.as_ref(), patch.labels.as_ref())?;
                s.updated_at = nimbus_core::now();
                Ok((s.name.clone(), vec![snapshot_event(&actor, "volume_snapshot.updated", s)], ()))
            })
            .await?;
        Ok(s)
    }

    /// Takes a snapshot of a volume, detached or attached (a running guest is paused for the copy).
    pub async fn create_volume_snapshot(
        &self,
        ctx: &Context,
        volume_id: Uuid,
        req: CreateVolumeSnapshot,
    ) -> Result<(Operation, VolumeSnapshot)> {
        ctx.require(Role::Member)?;
        if !req.name.is_empty() {
            validate_snapshot_name(&req.name)?;
        }
        labels::validate_labels("labels", &req.labels)?;
        let (op, snapshot) = self.snapshot_action(ctx, volume_id, VolumeAction::Snapshot, None, Some(req)).await?;
        Ok((op, snapshot.expect("a new snapshot")))
    }

    /// Puts a snapshot's data back into its volume, which must be detached.
    pub async fn revert_volume(&self, ctx: &Context, volume_id: Uuid, snapshot_id: Uuid) -> Result<Operation> {
        ctx.require(Role::Member)?;
        Ok(self.snapshot_action(ctx, volume_id, VolumeAction::Revert, Some(snapshot_id), None).await?.0)
    }

    /// Removes one of a volume's snapshots.
    pub async fn delete_volume_snapshot(&self, ctx: &Context, snapshot_id: Uuid) -> Result<Operation> {
        ctx.require(Role::Member)?;
        let s = self.volume_snapshot(ctx, snapshot_id).await?;
        Ok(self.snapshot_action(ctx, s.volume_id, VolumeAction::DeleteSnapshot, Some(snapshot_id), None).await?.0)
    }

    /// Whether a volume may be deleted: only once it has no snapshots left.
    pub(crate) async fn refuse_volume_with_snapshots(&self, v: &Volume) -> Result<()> {
        let records = self.store.list_records(VOLUME_SNAPSHOT, Some(v.project_id)).await.map_err(store_err)?;
        for r in records.iter().filter(|r| r.project_id == Some(v.project_id)) {
            let s: VolumeSnapshot = r.decode().map_err(store_err)?;
            if s.volume_id == v.id {
                return Err(DomainError::Conflict(format!(
                    "volume {} has snapshots (such as {}): delete them first",
                    v.id, s.id
                )));
            }
        }
        Ok(())
    }

    /// Checks the rules, takes the volume's lock (and its instance's, for the copy of an attached volume),
    /// writes the snapshot's record and the operation, in one transaction; re-planned on a lost race.
    async fn snapshot_action(
        &self,
        ctx: &Context,
        volume_id: Uuid,
        action: VolumeAction,
        snapshot_id: Option<Uuid>,
        create: Option<CreateVolumeSnapshot>,
    ) -> Result<(Operation, Option<VolumeSnapshot>)> {
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let Some((current, record)) = self.record_of::<Volume>(VOLUME, volume_id).await? else {
                return Err(DomainError::not_found("volume", volume_id));
            };
            if current.project_id != ctx.project.id {
                return Err(DomainError::not_found("volume", volume_id));
            }
            let existing = match snapshot_id {
                Some(sid) => {
                    let found = self.record_of::<VolumeSnapshot>(VOLUME_SNAPSHOT, sid).await?;
                    let Some((s, r)) = found.filter(|(s, _)| s.project_id == ctx.project.id) else {
                        return Err(DomainError::not_found("volume snapshot", sid));
                    };
                    volume::snapshot_usable(action, &current, &s)?;
                    Some((s, r))
                }
                None => None,
            };
            let during = volume::volume_transition(action, &current)?;
            let kind = match action {
                VolumeAction::Snapshot => Action::CreateVolumeSnapshot,
                VolumeAction::Revert => Action::RevertVolume,
                _ => Action::DeleteVolumeSnapshot,
            };
            // Only the copy reads the disk an instance may be writing: it holds the instance still.
            let instance = match (action, current.instance_id) {
                (VolumeAction::Snapshot, Some(iid)) => self.store.get_instance(iid).await.map_err(store_err)?,
                _ => None,
            };
            let mut op = Operation::new(
                ctx.project.id,
                kind,
                Target { kind: "volume".into(), id: volume_id },
                instance.as_ref().map(|i| i.state),
                ctx.actor.clone(),
            );
            let mut set = WriteSet::new();
            if let Some(i) = &instance {
                if let Some(holder) = i.lock_operation_id {
                    return Err(DomainError::Busy { instance: i.id.to_string(), operation: holder.to_string() });
                }
                volume::instance_takes_volumes(i.state)?;
                let mut locked = i.clone();
                locked.lock_operation_id = Some(op.id);
                locked.generation += 1;
                locked.updated_at = op.created_at;
                set.push(Write::PutInstance { instance: locked.clone(), expected_generation: Some(i.generation) });
                set.push(instance_event(&ctx.actor, "instance.updated", &locked));
            }
            let mut made = None;
            let sid = match (&create, existing) {
                (Some(req), _) => {
                    let id = nimbus_core::new_id();
                    let name = if req.name.is_empty() {
                        format!("{}-{}", current.name, op.created_at.unix_timestamp())
                    } else {
                        req.name.clone()
                    };
                    let s = VolumeSnapshot {
                        id,
                        project_id: ctx.project.id,
                        volume_id,
                        name,
                        size_gb: current.size_gb,
                        state: VolumeSnapshotState::Creating,
                        labels: req.labels.clone(),
                        created_at: op.created_at,
                        updated_at: op.created_at,
                    };
                    set.push(Write::InsertRecord(Record::new(VOLUME_SNAPSHOT, id, Some(ctx.project.id), &s.name, &s)));
                    set.push(snapshot_event(&ctx.actor, "volume_snapshot.created", &s));
                    made = Some(s);
                    // Shown on the operation from the start: the snapshot a client waits for.
                    op.result = Some(serde_json::json!({ "snapshot_id": id }));
                    id
                }
                (None, Some((mut s, r))) => {
                    if action == VolumeAction::DeleteSnapshot {
                        s.state = VolumeSnapshotState::Deleting;
                        s.updated_at = op.created_at;
                        set.push(snapshot_event(&ctx.actor, "volume_snapshot.updated", &s));
                    }
                    // Also a revert's: the snapshot is still the version checked.
                    set.push(Write::UpdateRecord { record: r.next(&s.name, &s), expected_generation: r.generation });
                    s.id
                }
                (None, None) => return Err(DomainError::invalid("snapshot_id", "required")),
            };
            op.params =
                serde_json::to_value(OfSnapshot { snapshot_id: sid, instance_id: instance.as_ref().map(|i| i.id) })
                    .expect("parameters serialize");
            crate::volumes::lock_for(&mut set, &ctx.actor, &record, current.clone(), during, &op);
            match self.store.apply(set).await {
                Ok(()) => {
                    return Ok((op, made));
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("volume {volume_id} changed concurrently; retry")))
    }
}

fn validate_snapshot_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 255 {
        return Err(DomainError::invalid("name", "1 to 255 characters"));
    }
    Ok(())
}
