//! `create`: a new instance, from the request to a booted VM.
//!
//! Plan (one transaction): the instance record, placed on a host (whose room the store re-checks in the same
//! transaction), with its address of the instance network (claimed in the same transaction, so a refused or
//! crashed create holds none; or a reservation's, which the transaction names the instance in), its initial password, its dialect ids, the operation and the events, all
//! checked against the project's quota. The volumes the request names are taken in the same transaction:
//! an existing one must be `available`, of the project and its zone (the instance is placed on the host that
//! keeps it), and is locked by the operation, `attaching`, naming the instance; a new one is recorded
//! `creating`, on the instance's host, locked the same way (its size counts against the quota at once).
//! Steps: `provision` (disk and seed on the host), `make-volumes` (the new volumes' empty disks, when there
//! are any), `attach-volumes` (every volume given to the instance, when there are any) and, unless the caller
//! asked for a stopped instance, `boot`, whose spec lists the volumes the operation holds. Success: the
//! volumes `in-use`, unlocked. A failure leaves the instance as the host shows it (usually `error`), for its
//! owner to delete, its address going with it; its volumes are unplugged, the existing ones left
//! `available` and attached to nothing, the new ones removed (disk and record).
//!
//! Boot volume: an instance may boot from a volume instead of a disk of its own (`boot_volume`). A new one
//! is recorded `creating` like the other new volumes, with the template it is made from, and its disk is
//! made from that template by `provision`; an existing one (made from a template earlier) gives the
//! instance its template and size. Either is taken by the plan's transaction like the other volumes,
//! marked `boot`, and handled like them at the outcome. The instance's own disk then counts nothing (the
//! volume counts as a volume).

use async_trait::async_trait;
use nimbus_core::instance::{validate_name_by, Instance, InstanceState};
use nimbus_core::labels::{self, Labels};
use nimbus_core::operation::{Operation, Target};
use nimbus_core::resources::{InstancePassword, PASSWORD_LIFETIME};
use nimbus_core::state_machine::Action;
use nimbus_core::tenancy::Role;
use nimbus_core::volume::{self, Volume, VolumeAction, VolumeState};
use nimbus_core::DomainError;
use nimbus_driver::{DriverError, DriverResult};
use nimbus_store::{Record, Write, WriteSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Planned, Saga, StepCx, Succeeded};
use crate::instances::{
    decode_user_data, instance_event, operation_event, validate_disk, CreateInstance, InstanceVolume,
};
use crate::resources::PASSWORD;
use crate::volumes::{spec_of, volume_event, VOLUME};
use crate::{store_err, Context, Engine, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    /// `false`: the instance is left stopped once provisioned.
    pub auto_start: bool,
    /// Every volume the instance is created with, in the order asked; each locked by the operation.
    #[serde(default)]
    pub volumes: Vec<Uuid>,
    /// Those of `volumes` the operation makes (new and empty); the others existed.
    #[serde(default)]
    pub new_volumes: Vec<Uuid>,
    /// The volume it boots from, locked by the operation like `volumes` (not one of them: it is not
    /// plugged in beside the root disk, it is the root disk).
    #[serde(default)]
    pub boot_volume: Option<Uuid>,
    /// Whether the operation makes `boot_volume` (from the template, at `provision`).
    #[serde(default)]
    pub new_boot_volume: bool,
}

impl Params {
    /// Every volume the operation holds.
    fn held(&self) -> Vec<Uuid> {
        self.volumes.iter().copied().chain(self.boot_volume).collect()
    }

    /// Whether the operation makes volume `id`.
    fn makes(&self, id: Uuid) -> bool {
        self.new_volumes.contains(&id) || (self.new_boot_volume && self.boot_volume == Some(id))
    }
}

pub(crate) struct Create;

#[async_trait]
impl Saga for Create {
    type Params = Params;

    fn steps(p: &Params, _: &Operation) -> Vec<&'static str> {
        let mut steps = vec!["provision"];
        if !p.new_volumes.is_empty() {
            steps.push("make-volumes");
        }
        if !p.volumes.is_empty() {
            steps.push("attach-volumes");
        }
        if p.auto_start {
            steps.push("boot");
        }
        steps
    }

    fn shows(step: &'static str) -> Option<InstanceState> {
        (step == "boot").then_some(InstanceState::Starting)
    }

    async fn run(cx: &StepCx<'_>, p: &Params, step: &'static str) -> DriverResult<Value> {
        match step {
            // Idempotent: an existing disk is kept, a plugged volume stays plugged.
            "make-volumes" => {
                for v in held_volumes(cx, &p.new_volumes).await? {
                    cx.driver().create_volume(&spec_of(&v)).await?;
                }
                Ok(Value::Null)
            }
            "attach-volumes" => {
                for v in held_volumes(cx, &p.volumes).await? {
                    cx.driver().attach_volume(cx.instance.id, &spec_of(&v)).await?;
                }
                Ok(Value::Null)
            }
            _ => super::build_on_host(cx, step).await,
        }
    }

    async fn undo(cx: &StepCx<'_>, p: &Params, step: &'static str) -> DriverResult<()> {
        match step {
            "attach-volumes" => {
                for id in &p.volumes {
                    cx.driver().detach_volume(cx.instance.id, *id).await?;
                }
            }
            "make-volumes" => {
                for id in &p.new_volumes {
                    cx.driver().delete_volume(*id).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn succeeded(cx: &StepCx<'_>, p: &Params, next: &mut Instance, _: &[Value]) -> Result<Succeeded> {
        if !p.auto_start {
            next.state = InstanceState::Stopped;
        }
        let mut writes = Vec::new();
        for (mut v, record) in volumes_locked_by(cx, &p.held()).await? {
            v.state = VolumeState::InUse;
            v.lock_operation_id = None;
            v.updated_at = nimbus_core::now();
            writes
                .push(Write::UpdateRecord { record: record.next(&v.name, &v), expected_generation: record.generation });
            writes.push(volume_event(&nimbus_core::operation::Actor::system(), "volume.updated", &v));
        }
        Ok(Succeeded { writes, result: None })
    }

    async fn failed(cx: &StepCx<'_>, p: &Params, _: &mut Instance, _: u32) -> Result<Vec<Write>> {
        // Given up after crashes, a step may have plugged or made a volume unrecorded: take every one back
        // (each call idempotent) before the records say so.
        let mut writes = Vec::new();
        let system = nimbus_core::operation::Actor::system();
        for (mut v, record) in volumes_locked_by(cx, &p.held()).await? {
            let unplugged = cx.driver().detach_volume(cx.instance.id, v.id).await;
            if let Err(e) = &unplugged {
                tracing::warn!(volume = %v.id, instance = %cx.instance.id, error = %e, "could not unplug a volume of a failed create");
            }
            v.lock_operation_id = None;
            v.updated_at = nimbus_core::now();
            if p.makes(v.id) {
                match unplugged.and(cx.driver().delete_volume(v.id).await) {
                    Ok(()) => {
                        writes.push(Write::DeleteRecord {
                            kind: VOLUME.into(),
                            id: v.id,
                            expected_generation: Some(record.generation),
                        });
                        writes.push(volume_event(&system, "volume.deleted", &v));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(volume = %v.id, error = %e, "could not remove a failed create's new volume");
                        v.state = VolumeState::Error;
                        v.instance_id = None;
                        v.boot = false;
                    }
                }
            } else if unplugged.is_ok() {
                v.state = VolumeState::Available;
                v.instance_id = None;
                v.boot = false;
            } else {
                // Still plugged, as far as anyone knows: a detach puts it right.
                v.state = VolumeState::Error;
            }
            writes
                .push(Write::UpdateRecord { record: record.next(&v.name, &v), expected_generation: record.generation });
            writes.push(volume_event(&system, "volume.updated", &v));
        }
        Ok(writes)
    }
}

/// The records of `ids` still locked by the operation holding the instance (the create).
async fn volumes_locked_by(cx: &StepCx<'_>, ids: &[Uuid]) -> Result<Vec<(Volume, Record)>> {
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

/// The volumes a step works on, as recorded: every one must still be held by the create.
async fn held_volumes(cx: &StepCx<'_>, ids: &[Uuid]) -> DriverResult<Vec<Volume>> {
    let held = volumes_locked_by(cx, ids).await.map_err(|e| DriverError::Failed(e.to_string()))?;
    if held.len() != ids.len() {
        let missing = ids.iter().find(|id| !held.iter().any(|(v, _)| v.id == **id)).copied().unwrap_or_default();
        return Err(DriverError::NotFound(missing));
    }
    Ok(held.into_iter().map(|(v, _)| v).collect())
}

/// The volumes of a create request, checked: the existing ones read (with the host that keeps them, where
/// the instance must be placed) and the new ones validated.
struct PlannedVolumes {
    existing: Vec<(Volume, Record)>,
    new: Vec<(String, u64, Labels)>,
    host: Option<String>,
    /// The existing volume to boot from.
    boot: Option<(Volume, Record)>,
}

impl PlannedVolumes {
    /// Existing volume `id`, checked for an instance of `zone`: the project's, attachable, of the zone, and
    /// kept by the host the others are (which the instance is then placed on).
    async fn take_existing(
        &mut self,
        engine: &Engine,
        ctx: &Context,
        id: Uuid,
        zone: &str,
    ) -> Result<(Volume, Record)> {
        let Some((v, record)) = engine.record_of::<Volume>(VOLUME, id).await? else {
            return Err(DomainError::not_found("volume", id));
        };
        if v.project_id != ctx.project.id {
            return Err(DomainError::not_found("volume", id));
        }
        volume::volume_transition(VolumeAction::Attach, &v)?;
        if v.zone != zone {
            return Err(DomainError::Conflict(format!(
                "volume {id} is in zone {}, the instance would be in zone {zone}: a volume attaches only to \
                 instances of its own zone",
                v.zone
            )));
        }
        if let Some(h) = &v.host {
            match &self.host {
                Some(other) if other != h => {
                    return Err(DomainError::Conflict(format!(
                        "volume {id} is kept by host {h}, another of the volumes by host {other}: an instance \
                         is created with volumes of one host only (attach the others once it runs: an attach moves a \
                         detached volume to the instance's host)"
                    )))
                }
                _ => self.host = Some(h.clone()),
            }
        }
        Ok((v, record))
    }
}

async fn check_volumes(
    engine: &Engine,
    ctx: &Context,
    asked: &[InstanceVolume],
    boot: Option<Uuid>,
    zone: &str,
) -> Result<PlannedVolumes> {
    let mut out = PlannedVolumes { existing: Vec::new(), new: Vec::new(), host: None, boot: None };
    if let Some(id) = boot {
        let (v, record) = out.take_existing(engine, ctx, id, zone).await?;
        if v.template_id.is_none() {
            return Err(DomainError::invalid(
                "boot_volume.id",
                format!("volume {id} was not made from a template: there is nothing to boot on it"),
            ));
        }
        out.boot = Some((v, record));
    }
    for (n, item) in asked.iter().enumerate() {
        match item {
            InstanceVolume::Existing(id) => {
                let taken = out.existing.iter().chain(&out.boot).any(|(v, _)| v.id == *id);
                if taken {
                    return Err(DomainError::invalid(format!("volumes.{n}"), format!("volume {id} is named twice")));
                }
                let existing = out.take_existing(engine, ctx, *id, zone).await?;
                out.existing.push(existing);
            }
            InstanceVolume::New { name, size_gb, labels: l } => {
                nimbus_core::instance::validate_name(&format!("volumes.{n}.name"), name)?;
                volume::validate_size(&format!("volumes.{n}.size_gb"), *size_gb)?;
                labels::validate_labels(&format!("volumes.{n}.labels"), l)?;
                out.new.push((name.clone(), *size_gb, l.clone()));
            }
        }
    }
    Ok(out)
}

/// The checked request, the instance it makes, and the request's transaction, with host number `host` of
/// the instance network claimed for it (unless it asked for a reservation, whose address it gets).
pub(crate) async fn plan(
    engine: &Engine,
    ctx: &Context,
    req: &CreateInstance,
    host: u32,
) -> Result<(Instance, Operation, WriteSet)> {
    ctx.require(Role::Member)?;
    validate_name_by(req.name_rule, "name", &req.name)?;
    let hostname = req.hostname.clone().unwrap_or_else(|| nimbus_core::instance::hostname_from_name(&req.name));
    nimbus_core::instance::validate_hostname("hostname", &hostname)?;
    labels::validate_labels("labels", &req.labels)?;
    let itype = engine.instance_type(&req.instance_type).await.map_err(|_| {
        DomainError::invalid(
            "instance_type",
            format!("no instance type {:?}; see GET /v1/instance-types", req.instance_type),
        )
    })?;
    let zone = &engine.config.zone;
    if !itype.authorized || !itype.zones.contains(zone) {
        return Err(DomainError::invalid("instance_type", format!("{} is not offered in zone {zone}", itype.name)));
    }
    let volumes =
        check_volumes(engine, ctx, &req.volumes, req.boot_volume.as_ref().and_then(|b| b.existing), zone).await?;
    let template = match &volumes.boot {
        // Booting from an existing volume: its template, its size.
        Some((v, _)) => {
            let template = engine.template_by_id(v.template_id.unwrap_or_default()).await.map_err(|_| {
                DomainError::Conflict(format!("volume {}'s template is gone: it cannot be booted", v.id))
            })?;
            if !req.template.is_empty() && req.template != template.name && req.template != template.id.to_string() {
                return Err(DomainError::invalid(
                    "template",
                    format!("volume {} boots template {}: give that one or none", v.id, template.name),
                ));
            }
            if req.disk_size_gb.is_some_and(|d| d != v.size_gb) {
                return Err(DomainError::invalid(
                    "disk_size_gb",
                    format!("an instance booting from volume {} has its size, {} GB", v.id, v.size_gb),
                ));
            }
            template
        }
        None => engine.template(ctx, &req.template).await.map_err(|_| {
            DomainError::invalid("template", format!("no template {:?}; see GET /v1/templates", req.template))
        })?,
    };
    let gpu_model = engine.choose_gpu_model(&itype, req.gpu_model.as_deref(), None).await?;
    let disk = match &volumes.boot {
        Some((v, _)) => v.size_gb,
        None => req.disk_size_gb.unwrap_or(itype.default_disk_gb.max(template.min_disk_gb)),
    };
    validate_disk("disk_size_gb", disk, itype.min_disk_gb.max(template.min_disk_gb))?;
    let boot_name = match &req.boot_volume {
        Some(b) if b.existing.is_none() => {
            let name = b.name.clone().unwrap_or_else(|| format!("{}-boot", req.name));
            nimbus_core::instance::validate_name("boot_volume.name", &name)?;
            Some(name)
        }
        _ => None,
    };
    if let Some(ud) = &req.user_data {
        decode_user_data(ud)?;
    }
    if let Some(price) = req.price_hourly {
        nimbus_core::instance::validate_price("price_hourly", price)?;
    }
    if let Some(password) = &req.password {
        nimbus_core::instance::validate_password("password", password)?;
        if !template.password_enabled {
            return Err(DomainError::invalid(
                "password",
                format!("template {} does not support passwords", template.name),
            ));
        }
    }
    let ssh_keys = engine.resolve_ssh_key_names(ctx, &req.ssh_keys).await?;
    if !ssh_keys.is_empty() && !template.ssh_key_enabled {
        return Err(DomainError::invalid("ssh_keys", format!("template {} does not take SSH keys", template.name)));
    }
    engine.check_group_refs(ctx, &req.security_groups, &req.anti_affinity_groups).await?;

    let now = nimbus_core::now();
    let id = nimbus_core::new_id();
    let net = crate::network::Network::parse(&engine.config.network_cidr)?;
    let reserved = match req.reserved_address {
        Some(r) => Some(engine.take_reserved_address(ctx, r).await?),
        None => None,
    };
    let host = match &reserved {
        Some((r, _)) if r.network_id.is_some() => {
            return Err(DomainError::invalid(
                "reserved_address",
                format!("reserved address {} is of a private network: attach the instance with it once made", r.ip),
            ))
        }
        Some((r, _)) => net.host_of(r.ip).ok_or_else(|| {
            DomainError::Conflict(format!(
                "reserved address {} is not in the instance network {} any more",
                r.ip, engine.config.network_cidr
            ))
        })?,
        None => host,
    };
    let mut op = Operation::new(ctx.project.id, Action::Create, Target::instance(id), None, ctx.actor.clone());
    let new_ids: Vec<Uuid> = volumes.new.iter().map(|_| nimbus_core::new_id()).collect();
    // In the order asked: existing and new as the request interleaved them.
    let mut all_ids = Vec::new();
    let (mut e, mut n) = (volumes.existing.iter(), new_ids.iter());
    for item in &req.volumes {
        match item {
            InstanceVolume::Existing(_) => all_ids.extend(e.next().map(|(v, _)| v.id)),
            InstanceVolume::New { .. } => all_ids.extend(n.next().copied()),
        }
    }
    let boot_id = match (&volumes.boot, &boot_name) {
        (Some((v, _)), _) => Some(v.id),
        (None, Some(_)) => Some(nimbus_core::new_id()),
        (None, None) => None,
    };
    let planned = Planned::of::<Create>(&Params {
        auto_start: req.auto_start,
        volumes: all_ids,
        new_volumes: new_ids.clone(),
        boot_volume: boot_id,
        new_boot_volume: boot_name.is_some(),
    });
    op.params = planned.params;
    op.params_version = planned.params_version;
    let mut system_labels = Labels::new();
    system_labels.insert("nimbus.zone".into(), zone.clone());
    system_labels.insert("nimbus.instance-type.family".into(), itype.family.clone());
    let mut instance = Instance {
        id,
        project_id: ctx.project.id,
        name: req.name.clone(),
        hostname,
        description: req.description.clone(),
        zone: zone.clone(),
        instance_type: itype.name.clone(),
        template_id: template.id,
        template: template.name.clone(),
        state: InstanceState::Creating,
        state_reason: None,
        last_known_state: None,
        labels: req.labels.clone(),
        system_labels,
        vcpus: itype.vcpus,
        memory_mib: itype.memory_mib,
        gpus: itype.gpus,
        gpu_model,
        disk_size_gb: disk,
        user_data: req.user_data.clone().map(|s| s.trim().to_string()),
        ssh_keys,
        security_groups: req.security_groups.clone(),
        anti_affinity_groups: req.anti_affinity_groups.clone(),
        private_networks: vec![],
        ip_addresses: vec![net.address(host)],
        mac_address: Instance::mac_for(id),
        protected: req.protected,
        tpm_enabled: req.tpm_enabled,
        secure_boot: req.secure_boot,
        rescue: false,
        price_hourly: req.price_hourly,
        expected_shutdown_at: req.expected_shutdown_at,
        host: None,
        lock_operation_id: Some(op.id),
        create_operation_id: Some(op.id),
        generation: 1,
        numeric_id: 0,
        extensions: req.extensions.clone(),
        boot_volume: boot_id.map(|id| nimbus_core::instance::BootVolume {
            id,
            delete_on_termination: req.boot_volume.as_ref().is_some_and(|b| b.delete_on_termination),
        }),
        created_at: now,
        updated_at: now,
    };
    // Placed in this very transaction: the store re-checks the host's room when it commits.
    let placement = engine.place_with(&instance, volumes.host.as_deref()).await?;
    if req.tpm_enabled {
        engine.check_tpm_support(Some(&placement.host)).await?;
    }
    instance.host = Some(placement.host.clone());
    let mut set = WriteSet::new();
    set.placement = Some(placement);
    set.push(Write::PutInstance { instance: instance.clone(), expected_generation: None });
    match reserved {
        // The reservation keeps holding the address; the instance is named in it, if it is still free.
        Some((mut r, record)) => {
            r.instance_id = Some(id);
            r.updated_at = now;
            set.push(Write::UpdateRecord { record: record.next(&r.name, &r), expected_generation: record.generation });
        }
        None => {
            set.push(Write::ClaimAddress { network: engine.config.network_cidr.clone(), host, owner: id });
        }
    }
    set.push(Write::InsertOperation(op.clone()));
    // A password-enabled template's default user gets the caller's password, or a generated one, at
    // creation, revealable for a day like reset-password's (validated above: only such templates take one).
    if template.password_enabled {
        let password = InstancePassword {
            instance_id: id,
            password: req.password.clone().unwrap_or_else(crate::auth::new_password),
            expires_at: now + PASSWORD_LIFETIME,
        };
        set.push(Write::InsertRecord(Record::new(PASSWORD, id, Some(ctx.project.id), "password", &password)));
    }
    let boot_existing = volumes.boot.map(|(mut v, record)| {
        v.boot = true;
        (v, record)
    });
    for (mut v, record) in volumes.existing.into_iter().chain(boot_existing) {
        v.state = VolumeState::Attaching;
        v.instance_id = Some(id);
        v.lock_operation_id = Some(op.id);
        v.updated_at = now;
        // A compare-and-swap on the version read: a volume taken meanwhile makes the create plan again.
        set.push(Write::UpdateRecord { record: record.next(&v.name, &v), expected_generation: record.generation });
        set.push(volume_event(&ctx.actor, "volume.updated", &v));
    }
    let new_boot = boot_name.map(|name| ((name, disk, Labels::new()), boot_id.unwrap_or_default(), true));
    let new_data = volumes.new.into_iter().zip(new_ids).map(|(asked, vid)| (asked, vid, false));
    for ((name, size_gb, labels), vid, boot) in new_data.chain(new_boot) {
        let v = Volume {
            id: vid,
            project_id: ctx.project.id,
            name,
            description: String::new(),
            zone: zone.clone(),
            size_gb,
            state: VolumeState::Creating,
            instance_id: Some(id),
            host: instance.host.clone(),
            serial: Volume::serial_for(vid),
            labels,
            lock_operation_id: Some(op.id),
            template_id: boot.then_some(template.id),
            boot,
            created_at: now,
            updated_at: now,
        };
        set.push(Write::InsertRecord(Record::new(VOLUME, vid, Some(ctx.project.id), &v.name, &v)));
        set.push(volume_event(&ctx.actor, "volume.created", &v));
    }
    for (kind, alias) in &req.aliases {
        set.push(Write::PutAlias { kind: kind.clone(), alias: alias.clone(), id });
    }
    set.push(instance_event(&ctx.actor, "instance.created", &instance));
    set.push(operation_event("operation.created", &op));
    set.enforce_quota_of = Some(ctx.project.id);
    Ok((instance, op, set))
}

/// How many free addresses one read of the store finds ahead of the cursor: the next creates of this server
/// take them without reading again.
const READ_AHEAD: u32 = 32;

/// This server's next-fit cursor on the instance network and the free addresses it read ahead of it.
#[derive(Debug, Default)]
pub(crate) struct AddressOffers {
    cursor: u32,
    ahead: std::collections::VecDeque<u32>,
}

/// The host number of the instance network to offer a new instance. Addresses are handed out next-fit, as
/// DHCP servers and clouds do: each create looks from where the last one of this server stopped, so a
/// deleted instance's address is not handed to the next instance at once (nothing aimed at the old one
/// reaches the new one), and finding an address costs the same with 100,000 held as with ten, instead of a
/// scan of every held one. One read finds [`READ_AHEAD`] free ones, offered to this server's next creates
/// in turn. Once the network's end is reached the search wraps to its lowest free numbers (a random one of
/// the lowest few on a retry, so that racing creates spread out). All of it is only a hint: the store's
/// unique hold decides, and a create that lost an address (to another server, or to a reservation) retries
/// past it, forgetting what was read ahead with it.
pub(crate) async fn address_candidate(engine: &Engine, attempt: usize) -> Result<u32> {
    let net = crate::network::Network::parse(&engine.config.network_cidr)?;
    let (first, last) = (net.first_host(), net.last_host());
    let free = |from: u32, limit: u32| async move {
        engine.store.free_addresses(&engine.config.network_cidr, from, last, limit).await.map_err(store_err)
    };
    // Held across the read: a create waiting here takes from what the one before it read.
    let mut offers = engine.address_offers.lock().await;
    if attempt > 0 {
        offers.ahead.clear();
    }
    if let Some(host) = offers.ahead.pop_front() {
        return Ok(host);
    }
    let start = offers.cursor.max(first);
    if start <= last {
        let found = free(start, READ_AHEAD).await?;
        if let Some((&host, rest)) = found.split_first() {
            offers.ahead.extend(rest);
            offers.cursor = found.last().map_or(host, |h| *h) + 1;
            return Ok(host);
        }
    }
    let lowest = free(first, 16).await?;
    let Some(&host) = lowest.first() else {
        return Err(DomainError::Conflict(format!("no free address left in {}", engine.config.network_cidr)));
    };
    let host = if attempt == 0 {
        host
    } else {
        use rand::Rng;
        lowest[rand::thread_rng().gen_range(0..lowest.len())]
    };
    // Wrapped: go on from here.
    offers.cursor = host + 1;
    Ok(host)
}
