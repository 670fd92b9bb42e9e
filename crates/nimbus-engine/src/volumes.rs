//! Volumes: block devices of a project that outlive instances (see `nimbus_core::volume`).
//!
//! Every change that touches the host is an operation, recorded with the volume's next version (locked by
//! the operation) in one transaction, like an instance's lifecycle actions; its kind's saga
//! (`sagas/create_volume.rs` ... `sagas/delete_volume.rs`) runs it. Attach and detach also take the
//! instance's lock for their run, so the instance is neither stopped nor deleted under them, and its state
//! does not change. A volume's size counts against the project's `volume_gb` quota from the moment it is
//! asked for (the store checks it in the request's transaction) until its record is removed.

use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::labels::{self, Labels};
use nimbus_core::operation::{Operation, Target};
use nimbus_core::state_machine::Action;
use nimbus_core::tenancy::Role;
use nimbus_core::volume::{self, Volume, VolumeAction, VolumeState};
use nimbus_core::DomainError;
use nimbus_driver::VolumeSpec;
use nimbus_store::{Record, StoreError, Write, WriteSet};
use serde_json::json;
use uuid::Uuid;

use crate::instances::{backoff, event, instance_event, operation_event, CAS_RETRIES};
use crate::sagas;
use crate::{store_err, Context, Engine, Result};

/// The records' kind.
pub const VOLUME: &str = "volume";

/// What a create that lost a race for its instance's lock says to its retry loop.
const RACED: &str = "raced";

/// A request for a new volume.
#[derive(Debug, Clone, Default)]
pub struct CreateVolume {
    pub name: String,
    pub description: String,
    pub size_gb: u64,
    /// `None`: the server's zone.
    pub zone: Option<String>,
    pub labels: Labels,
    /// An instance of the project to attach the new volume to, in the same operation (its zone is the
    /// volume's, its host the volume's host).
    pub attach_to: Option<Uuid>,
    /// A `ready` snapshot of a volume of the project whose data the new volume starts with (made on the
    /// host that keeps the snapshot; `size_gb` 0: the snapshot's size, never less).
    pub from_snapshot: Option<Uuid>,
    /// A template (name or id) whose disk the new volume starts with, so that an instance can boot from it
    /// (`size_gb` 0: the template's smallest disk, never less).
    pub from_template: Option<String>,
}

/// A change of what a volume is called and labelled (nothing on the host).
#[derive(Debug, Clone, Default)]
pub struct VolumePatch {
    pub name: Option<String>,
    pub description: Option<String>,
    /// JSON merge patch of the labels.
    pub labels: Option<serde_json::Value>,
    /// Replaces the labels whole (the providers that send every label each time).
    pub replace_labels: Option<Labels>,
}

pub(crate) fn volume_event(actor: &nimbus_core::operation::Actor, kind: &str, v: &Volume) -> Write {
    Write::AppendEvent(event(actor, v.project_id, kind, v.id, serde_json::to_value(v).expect("serializes")))
}

pub(crate) fn spec_of(v: &Volume) -> VolumeSpec {
    VolumeSpec { id: v.id, size_gb: v.size_gb, serial: v.serial.clone() }
}

impl Engine {
    /// Records a new volume (`creating`) and the operation that makes its disk on a host of its zone.
    pub async fn create_volume(&self, ctx: &Context, req: CreateVolume) -> Result<(Operation, Volume)> {
        ctx.require(Role::Member)?;
        nimbus_core::instance::validate_name("name", &req.name)?;
        if req.description.len() > 255 {
            return Err(DomainError::invalid("description", "at most 255 characters"));
        }
        if req.from_snapshot.is_some() && req.from_template.is_some() {
            return Err(DomainError::invalid(
                "from_template",
                "a volume starts from a snapshot or a template, not both",
            ));
        }
        if (req.from_snapshot.is_none() && req.from_template.is_none()) || req.size_gb != 0 {
            volume::validate_size("size_gb", req.size_gb)?;
        }
        labels::validate_labels("labels", &req.labels)?;
        let zone = self.volume_zone(req.zone.as_deref()).await?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            match self.try_create_volume(ctx, &req, &zone).await {
                Err(DomainError::Conflict(m)) if m == RACED => continue,
                other => return other,
            }
        }
        Err(DomainError::Conflict("the instance changed concurrently; retry".into()))
    }

    async fn try_create_volume(&self, ctx: &Context, req: &CreateVolume, zone: &str) -> Result<(Operation, Volume)> {
        let instance = match req.attach_to {
            Some(iid) => {
                let i = self.instance(ctx, iid).await?;
                if let Some(holder) = i.lock_operation_id {
                    return Err(DomainError::Busy { instance: i.id.to_string(), operation: holder.to_string() });
                }
                volume::instance_takes_volumes(i.state)?;
                if i.zone != zone {
                    return Err(DomainError::Conflict(format!(
                        "instance {} is in zone {}, the volume would be in zone {zone}: a volume attaches only to \
                         instances of its own zone",
                        i.id, i.zone
                    )));
                }
                Some(i)
            }
            None => None,
        };
        // A copy of a snapshot is made where the snapshot is kept: the host of its volume, which the
        // operation locks meanwhile (so the snapshot is neither deleted nor reverted to under the copy).
        let source = match req.from_snapshot {
            Some(sid) => {
                let s = self.volume_snapshot(ctx, sid).await?;
                if s.state != nimbus_core::volume::VolumeSnapshotState::Ready {
                    return Err(DomainError::Conflict(format!("snapshot {sid} is {}, not ready", s.state)));
                }
                let Some((from, record)) = self.record_of::<Volume>(VOLUME, s.volume_id).await? else {
                    return Err(DomainError::not_found("volume", s.volume_id));
                };
                if let Some(op) = from.lock_operation_id {
                    return Err(DomainError::Conflict(format!(
                        "volume {} of snapshot {sid} is busy with operation {op}; retry when it is done",
                        from.id
                    )));
                }
                if from.zone != zone {
                    return Err(DomainError::invalid(
                        "zone",
                        format!("snapshot {sid} is in zone {}: a volume is made from it in that zone", from.zone),
                    ));
                }
                if req.size_gb != 0 && req.size_gb < s.size_gb {
                    return Err(DomainError::invalid("size_gb", format!("at least the snapshot's {} GB", s.size_gb)));
                }
                Some((s, from, record))
            }
            None => None,
        };
        let template = match &req.from_template {
            Some(t) => {
                let t = self.template(ctx, t).await.map_err(|_| {
                    DomainError::invalid("from_template", format!("no template {t:?}; see GET /v1/templates"))
                })?;
                if req.size_gb != 0 && req.size_gb < t.min_disk_gb {
                    return Err(DomainError::invalid(
                        "size_gb",
                        format!("at least template {}'s {} GB", t.name, t.min_disk_gb),
                    ));
                }
                Some(t)
            }
            None => None,
        };
        let size_gb = match (&source, &template) {
            (Some((s, _, _)), _) if req.size_gb == 0 => s.size_gb,
            (_, Some(t)) if req.size_gb == 0 => t.min_disk_gb.max(1),
            _ => req.size_gb,
        };
        let host = match (
            instance.as_ref().and_then(|i| i.host.clone()),
            source.as_ref().and_then(|(_, f, _)| f.host.clone()),
        ) {
            (Some(ih), Some(sh)) if ih != sh => {
                return Err(DomainError::Conflict(format!(
                    "the snapshot is kept by host {sh}, the instance runs on host {ih}: create the volume \
                     without an instance, then attach it (an attach moves a detached volume to the instance's host)"
                )))
            }
            (Some(h), _) | (None, Some(h)) => h,
            (None, None) => self.volume_host(zone).await?,
        };
        let id = nimbus_core::new_id();
        let mut op = Operation::new(
            ctx.project.id,
            Action::CreateVolume,
            Target { kind: "volume".into(), id },
            instance.as_ref().map(|i| i.state),
            ctx.actor.clone(),
        );
        op.params = serde_json::to_value(sagas::create_volume::Params {
            attach_to: req.attach_to,
            from_snapshot: source
                .as_ref()
                .map(|(s, from, _)| sagas::create_volume::FromSnapshot { volume_id: from.id, snapshot_id: s.id }),
            from_template: template.as_ref().map(|t| t.id),
        })
        .expect("parameters serialize");
        let now = op.created_at;
        let v = Volume {
            id,
            project_id: ctx.project.id,
            name: req.name.clone(),
            description: req.description.clone(),
            zone: zone.to_string(),
            size_gb,
            state: VolumeState::Creating,
            instance_id: req.attach_to,
            host: Some(host),
            serial: Volume::serial_for(id),
            labels: req.labels.clone(),
            lock_operation_id: Some(op.id),
            // A copy of a boot volume's data boots the same way; a template's disk boots as the template.
            template_id: template.as_ref().map(|t| t.id).or(source.as_ref().and_then(|(_, from, _)| from.template_id)),
            boot: false,
            created_at: now,
            updated_at: now,
        };
        let mut set = WriteSet::new();
        set.push(Write::InsertRecord(Record::new(VOLUME, id, Some(ctx.project.id), &v.name, &v)));
        set.push(Write::InsertOperation(op.clone()));
        set.push(volume_event(&ctx.actor, "volume.created", &v));
        if let Some((_, from, record)) = &source {
            let mut locked = from.clone();
            locked.lock_operation_id = Some(op.id);
            locked.updated_at = now;
            set.push(Write::UpdateRecord {
                record: record.next(&locked.name, &locked),
                expected_generation: record.generation,
            });
            set.push(volume_event(&ctx.actor, "volume.updated", &locked));
        }
        set.push(operation_event("operation.created", &op));
        set.enforce_quota_of = Some(ctx.project.id);
        if let Some(i) = &instance {
            // The instance keeps its state; only its lock says a volume change is under way.
            let mut locked = i.clone();
            locked.lock_operation_id = Some(op.id);
            locked.generation += 1;
            locked.updated_at = now;
            set.push(Write::PutInstance { instance: locked.clone(), expected_generation: Some(i.generation) });
            set.push(instance_event(&ctx.actor, "instance.updated", &locked));
        }
        match self.store.apply(set).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) if instance.is_some() || source.is_some() => {
                return Err(DomainError::Conflict(RACED.into()))
            }
            Err(e) => return Err(store_err(e)),
        }
        Ok((op, v))
    }

    /// The zone a volume asked for lives in: the server's (by its name or an alias) or another zone the
    /// store knows.
    async fn volume_zone(&self, asked: Option<&str>) -> Result<String> {
        let Some(asked) = asked.filter(|z| !z.is_empty()) else { return Ok(self.config.zone.clone()) };
        if asked == self.config.zone || self.config.zone_aliases.iter().any(|a| a == asked) {
            return Ok(self.config.zone.clone());
        }
        let zones = self.list_zones().await?;
        zones
            .into_iter()
            .find(|z| z.name == asked)
            .map(|z| z.name)
            .ok_or_else(|| DomainError::invalid("zone", format!("no zone {asked:?}")))
    }

    /// The host a new volume of `zone` is made on: the server's own when it is in that zone, else the first
    /// ready host of the zone that answers.
    async fn volume_host(&self, zone: &str) -> Result<String> {
        if let Some(local) = &self.local {
            if zone == self.config.zone {
                return Ok(local.name.clone());
            }
        }
        self.host_views()
            .await?
            .into_iter()
            .find(|v| v.host.zone == zone && v.reachable && v.host.admin_state == nimbus_core::host::HostState::Ready)
            .map(|v| v.host.name)
            .ok_or_else(|| DomainError::NoCapacity(format!("no ready host in zone {zone} to keep the volume")))
    }

    /// The driver of the host that keeps the volume.
    pub(crate) fn volume_driver(&self, v: &Volume) -> std::sync::Arc<dyn nimbus_driver::Driver> {
        match (&v.host, &self.local) {
            (Some(h), _) => self.host_driver(h),
            (None, Some(local)) => local.driver.clone(),
            (None, None) => self.host_driver(""),
        }
    }

    /// The caller's project's volumes, oldest first.
    pub async fn list_volumes(&self, ctx: &Context) -> Result<Vec<Volume>> {
        self.records(VOLUME, ctx).await
    }

    pub async fn volume(&self, ctx: &Context, id: Uuid) -> Result<Volume> {
        self.record(VOLUME, ctx, id).await
    }

    /// The volumes attached to an instance (attaching and detaching ones included).
    pub async fn volumes_of_instance(&self, instance: &Instance) -> Result<Vec<Volume>> {
        let records = self.store.list_records(VOLUME, Some(instance.project_id)).await.map_err(store_err)?;
        let mut out = Vec::new();
        for r in records.iter().filter(|r| r.project_id == Some(instance.project_id)) {
            let v: Volume = r.decode().map_err(store_err)?;
            if v.instance_id == Some(instance.id) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Renames, describes or relabels a volume.
    pub async fn update_volume(&self, ctx: &Context, id: Uuid, patch: VolumePatch) -> Result<Volume> {
        ctx.require(Role::Member)?;
        if let Some(name) = &patch.name {
            nimbus_core::instance::validate_name("name", name)?;
        }
        if patch.description.as_ref().is_some_and(|d| d.len() > 255) {
            return Err(DomainError::invalid("description", "at most 255 characters"));
        }
        let actor = ctx.actor.clone();
        let (v, ()) = self
            .edit_record(VOLUME, ctx, id, |v: &mut Volume| {
                if v.state == VolumeState::Deleting {
                    return Err(DomainError::Conflict(format!("volume {id} is being deleted")));
                }
                if let Some(name) = &patch.name {
                    v.name = name.clone();
                }
                if let Some(d) = &patch.description {
                    v.description = d.clone();
                }
                labels::apply_update(&mut v.labels, patch.replace_labels.as_ref(), patch.labels.as_ref())?;
                v.updated_at = nimbus_core::now();
                Ok((v.name.clone(), vec![volume_event(&actor, "volume.updated", v)], ()))
            })
            .await?;
        Ok(v)
    }

    /// Attaches a volume to an instance of the same project, zone and host: hot-plugged when the instance
    /// runs, on its next boot otherwise.
    pub async fn attach_volume(&self, ctx: &Context, id: Uuid, instance_id: Uuid) -> Result<Operation> {
        ctx.require(Role::Member)?;
        self.volume_action(ctx, id, VolumeAction::Attach, Some(instance_id), None).await
    }

    /// Detaches a volume from its instance (hot-unplugged when the instance runs); its data stays.
    pub async fn detach_volume(&self, ctx: &Context, id: Uuid) -> Result<Operation> {
        ctx.require(Role::Member)?;
        self.volume_action(ctx, id, VolumeAction::Detach, None, None).await
    }

    /// Grows a volume; an attached one grows under its instance (a running guest sees the new size).
    pub async fn resize_volume(&self, ctx: &Context, id: Uuid, size_gb: u64) -> Result<Operation> {
        ctx.require(Role::Member)?;
        self.volume_action(ctx, id, VolumeAction::Resize, None, Some(size_gb)).await
    }

    /// Deletes a detached volume and its data.
    pub async fn delete_volume(&self, ctx: &Context, id: Uuid) -> Result<Operation> {
        ctx.require(Role::Member)?;
        self.volume_action(ctx, id, VolumeAction::Delete, None, None).await
    }

    /// Whether detached volume `v`, kept by host `from`, may move to host `to` (where the instance it is
    /// being attached to runs): its file moves, so what lives beside it on `from` must not stay behind.
    async fn check_volume_moves(&self, v: &Volume, from: &str, to: &str) -> Result<()> {
        if v.template_id.is_some() {
            // Its file is an overlay on the template's disk of `from`.
            return Err(DomainError::Conflict(format!(
                "volume {} holds a template's disk kept by host {from}: a boot volume does not move to host {to} \
                 (where the instance runs) yet",
                v.id
            )));
        }
        self.refuse_volume_with_snapshots(v).await.map_err(|e| {
            DomainError::Conflict(format!("{e}: they stay on host {from}, and the volume would move to host {to}"))
        })
    }

    /// Checks the rules, takes the volume's lock (and the instance's, for attach and detach) and records
    /// the operation, in one transaction; re-planned on fresh records when a concurrent writer wins.
    async fn volume_action(
        &self,
        ctx: &Context,
        id: Uuid,
        action: VolumeAction,
        attach_to: Option<Uuid>,
        size_gb: Option<u64>,
    ) -> Result<Operation> {
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let Some((current, record)) = self.record_of::<Volume>(VOLUME, id).await? else {
                return Err(DomainError::not_found("volume", id));
            };
            if current.project_id != ctx.project.id {
                return Err(DomainError::not_found("volume", id));
            }
            let during = volume::volume_transition(action, &current)?;
            if action == VolumeAction::Delete {
                // A snapshot is made under the volume's lock, so this holds until the write below.
                self.refuse_volume_with_snapshots(&current).await?;
            }
            let instance = match (action, attach_to, current.instance_id) {
                (VolumeAction::Attach, Some(iid), _) => Some(self.instance(ctx, iid).await?),
                // The instance may be gone (deleted while the volume's detach failed): nothing to unplug.
                // An attached volume grows under its instance, which is held still meanwhile.
                (VolumeAction::Detach | VolumeAction::Resize, _, Some(iid)) => {
                    self.store.get_instance(iid).await.map_err(store_err)?
                }
                _ => None,
            };
            let kind = match action {
                VolumeAction::Attach => Action::AttachVolume,
                VolumeAction::Detach => Action::DetachVolume,
                VolumeAction::Resize => Action::ResizeVolume,
                VolumeAction::Delete => Action::DeleteVolume,
                _ => return Err(DomainError::Internal(format!("{} is a snapshot action", action.as_str()))),
            };
            let mut op = Operation::new(
                ctx.project.id,
                kind,
                Target { kind: "volume".into(), id },
                instance.as_ref().map(|i| i.state),
                ctx.actor.clone(),
            );
            let mut next = current.clone();
            let mut set = WriteSet::new();
            // (from, to): the hosts a detached volume moves between to reach the instance it is attached to.
            let mut moves: Option<(String, String)> = None;
            if let Some(i) = &instance {
                if let Some(holder) = i.lock_operation_id {
                    return Err(DomainError::Busy { instance: i.id.to_string(), operation: holder.to_string() });
                }
                match action {
                    VolumeAction::Attach => {
                        volume::instance_takes_volumes(i.state)?;
                        if i.zone != current.zone {
                            return Err(DomainError::Conflict(format!(
                                "volume {id} is in zone {}, instance {} in zone {}: a volume attaches only to \
                                 instances of its own zone",
                                current.zone, i.id, i.zone
                            )));
                        }
                        if let (Some(vh), Some(ih)) = (&current.host, &i.host) {
                            if vh != ih {
                                self.check_volume_moves(&current, vh, ih).await?;
                                moves = Some((vh.clone(), ih.clone()));
                            }
                        }
                        next.instance_id = Some(i.id);
                    }
                    VolumeAction::Resize => volume::instance_takes_volumes(i.state)?,
                    _ => {
                        if !matches!(i.state, InstanceState::Running | InstanceState::Stopped | InstanceState::Error) {
                            return Err(DomainError::InvalidState {
                                action: "detach-volume".into(),
                                state: i.state,
                                hint: "volumes are detached from running, stopped or failed instances".into(),
                            });
                        }
                    }
                }
                // The instance keeps its state; only its lock says a volume change is under way.
                let mut locked = i.clone();
                locked.lock_operation_id = Some(op.id);
                locked.generation += 1;
                locked.updated_at = op.created_at;
                set.push(Write::PutInstance { instance: locked.clone(), expected_generation: Some(i.generation) });
                set.push(instance_event(&ctx.actor, "instance.updated", &locked));
            }
            let params = match action {
                VolumeAction::Attach | VolumeAction::Detach => serde_json::to_value(sagas::volume::OnInstance {
                    instance_id: instance.as_ref().map(|i| i.id),
                    move_from: moves.as_ref().map(|(from, _)| from.clone()),
                    move_to: moves.as_ref().map(|(_, to)| to.clone()),
                }),
                VolumeAction::Resize => {
                    let to = size_gb.unwrap_or_default();
                    if to <= current.size_gb {
                        return Err(DomainError::Conflict(format!(
                            "a volume can only grow: it has {} GB, {to} GB was asked",
                            current.size_gb
                        )));
                    }
                    volume::validate_size("size_gb", to)?;
                    next.size_gb = to;
                    set.enforce_quota_of = Some(ctx.project.id);
                    serde_json::to_value(sagas::resize_volume::Params {
                        from: current.size_gb,
                        to,
                        instance_id: instance.as_ref().map(|i| i.id),
                    })
                }
                _ => Ok(json!({})),
            }
            .expect("parameters serialize");
            op.params = params;
            lock_for(&mut set, &ctx.actor, &record, next, during, &op);
            match self.store.apply(set).await {
                Ok(()) => {
                    return Ok(op);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("volume {id} changed concurrently; retry")))
    }
}

impl Engine {
    /// The writes that leave an instance's volumes `available` and attached to nothing, for the outcome of
    /// its deletion (the host's destroy unplugged them; their data stays). Each is a compare-and-swap on the
    /// version read, so the outcome's transaction fails and is retried on a race.
    /// Those in `except` (deleted with it) are left to the caller.
    /// The writes that make `instance`'s boot volume record show the disk the instance has (its size and
    /// template), when it boots from one; none else, or when the record already does.
    pub(crate) async fn boot_volume_follows(&self, instance: &Instance) -> Result<Vec<Write>> {
        let Some(boot) = instance.boot_volume else { return Ok(Vec::new()) };
        let Some((mut v, record)) = self.record_of::<Volume>(VOLUME, boot.id).await? else { return Ok(Vec::new()) };
        if v.instance_id != Some(instance.id)
            || (v.size_gb == instance.disk_size_gb && v.template_id == Some(instance.template_id))
        {
            return Ok(Vec::new());
        }
        v.size_gb = instance.disk_size_gb;
        v.template_id = Some(instance.template_id);
        v.updated_at = nimbus_core::now();
        Ok(vec![
            Write::UpdateRecord { record: record.next(&v.name, &v), expected_generation: record.generation },
            volume_event(&nimbus_core::operation::Actor::system(), "volume.updated", &v),
        ])
    }

    pub(crate) async fn release_volumes_of(&self, instance: &Instance, except: &[Uuid]) -> Result<Vec<Write>> {
        let records = self.store.list_records(VOLUME, Some(instance.project_id)).await.map_err(store_err)?;
        let mut writes = Vec::new();
        for r in records.iter().filter(|r| r.project_id == Some(instance.project_id)) {
            let mut v: Volume = r.decode().map_err(store_err)?;
            if v.instance_id != Some(instance.id) || except.contains(&v.id) {
                continue;
            }
            v.instance_id = None;
            v.boot = false;
            if matches!(v.state, VolumeState::InUse | VolumeState::Attaching | VolumeState::Detaching) {
                v.state = VolumeState::Available;
            }
            v.updated_at = nimbus_core::now();
            writes.push(Write::UpdateRecord { record: r.next(&v.name, &v), expected_generation: r.generation });
            writes.push(volume_event(&nimbus_core::operation::Actor::system(), "volume.updated", &v));
        }
        Ok(writes)
    }
}

/// Writes into `set` the volume `next` (read as `record`) showing `during` under the lock of operation `op`,
/// which the set records: what every operation on a volume begins with.
pub(crate) fn lock_for(
    set: &mut WriteSet,
    actor: &nimbus_core::operation::Actor,
    record: &Record,
    mut next: Volume,
    during: VolumeState,
    op: &Operation,
) {
    next.state = during;
    next.lock_operation_id = Some(op.id);
    next.updated_at = op.created_at;
    set.push(Write::UpdateRecord { record: record.next(&next.name, &next), expected_generation: record.generation });
    set.push(Write::InsertOperation(op.clone()));
    set.push(volume_event(actor, "volume.updated", &next));
    set.push(operation_event("operation.created", op));
}
