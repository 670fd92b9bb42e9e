//! `create`: a new instance, from the request to a booted VM.
//!
//! Plan (one transaction): the instance record, placed on a host (whose room the store re-checks in the same
//! transaction), with its address of the instance network (claimed in the same transaction, so a refused or
//! crashed create holds none), its initial password, its dialect ids, the operation and the events, all
//! checked against the project's quota. Steps: `provision` (disk and seed on
//! the host) and, unless the caller asked for a stopped instance, `boot`. A failure leaves the instance as the
//! host shows it (usually `error`), for its owner to delete; its address goes with it.

use async_trait::async_trait;
use nimbus_core::instance::{validate_name_by, Instance, InstanceState};
use nimbus_core::labels::{self, Labels};
use nimbus_core::operation::{Operation, Target};
use nimbus_core::resources::{InstancePassword, PASSWORD_LIFETIME};
use nimbus_core::state_machine::Action;
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use nimbus_store::{Record, Write, WriteSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Planned, Saga, StepCx, Succeeded};
use crate::instances::{decode_user_data, instance_event, operation_event, validate_disk, CreateInstance};
use crate::resources::PASSWORD;
use crate::{store_err, Context, Engine, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    /// `false`: the instance is left stopped once provisioned.
    pub auto_start: bool,
}

pub(crate) struct Create;

#[async_trait]
impl Saga for Create {
    type Params = Params;

    fn steps(p: &Params, _: &Operation) -> Vec<&'static str> {
        if p.auto_start {
            vec!["provision", "boot"]
        } else {
            vec!["provision"]
        }
    }

    fn shows(step: &'static str) -> Option<InstanceState> {
        (step == "boot").then_some(InstanceState::Starting)
    }

    async fn run(cx: &StepCx<'_>, _: &Params, step: &'static str) -> DriverResult<Value> {
        super::build_on_host(cx, step).await
    }

    async fn succeeded(_: &StepCx<'_>, p: &Params, next: &mut Instance, _: &[Value]) -> Result<Succeeded> {
        if !p.auto_start {
            next.state = InstanceState::Stopped;
        }
        Ok(Succeeded::default())
    }
}

/// The checked request, the instance it makes, and the request's transaction, with host number `host` of
/// the instance network claimed for it.
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
    let template = engine.template(ctx, &req.template).await.map_err(|_| {
        DomainError::invalid("template", format!("no template {:?}; see GET /v1/templates", req.template))
    })?;
    let gpu_model = engine.choose_gpu_model(&itype, req.gpu_model.as_deref(), None).await?;
    let disk = req.disk_size_gb.unwrap_or(itype.default_disk_gb.max(template.min_disk_gb));
    validate_disk("disk_size_gb", disk, itype.min_disk_gb.max(template.min_disk_gb))?;
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
    let mut op = Operation::new(ctx.project.id, Action::Create, Target::instance(id), None, ctx.actor.clone());
    let planned = Planned::of::<Create>(&Params { auto_start: req.auto_start });
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
        price_hourly: req.price_hourly,
        expected_shutdown_at: req.expected_shutdown_at,
        host: None,
        lock_operation_id: Some(op.id),
        create_operation_id: Some(op.id),
        generation: 1,
        numeric_id: 0,
        extensions: req.extensions.clone(),
        created_at: now,
        updated_at: now,
    };
    // Placed in this very transaction: the store re-checks the host's room when it commits.
    let placement = engine.place(&instance).await?;
    if req.tpm_enabled {
        engine.check_tpm_support(Some(&placement.host)).await?;
    }
    instance.host = Some(placement.host.clone());
    let mut set = WriteSet::new();
    set.placement = Some(placement);
    set.push(Write::PutInstance { instance: instance.clone(), expected_generation: None });
    set.push(Write::ClaimAddress { network: engine.config.network_cidr.clone(), host, owner: id });
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
    for (kind, alias) in &req.aliases {
        set.push(Write::PutAlias { kind: kind.clone(), alias: alias.clone(), id });
    }
    set.push(instance_event(&ctx.actor, "instance.created", &instance));
    set.push(operation_event("operation.created", &op));
    set.enforce_quota_of = Some(ctx.project.id);
    Ok((instance, op, set))
}

/// The host number of the instance network to offer a new instance. Addresses are handed out next-fit, as
/// DHCP servers and clouds do: each create looks from where the last one of this server stopped, so a
/// deleted instance's address is not handed to the next instance at once (nothing aimed at the old one
/// reaches the new one), and finding an address costs the same with 100,000 held as with ten, instead of a
/// scan of every held one. Concurrent creates start from distinct numbers. Once the network's end is
/// reached the search wraps to its lowest free numbers (a random one of the lowest few on a retry, so that
/// racing creates spread out). The cursor is only a hint: the store's unique hold decides, and a create
/// that lost an address to another server retries past it.
pub(crate) async fn address_candidate(engine: &Engine, attempt: usize) -> Result<u32> {
    use std::sync::atomic::Ordering::Relaxed;
    let net = crate::network::Network::parse(&engine.config.network_cidr)?;
    let (first, last) = (net.first_host(), net.last_host());
    let free = |from: u32, limit: u32| async move {
        engine.store.free_addresses(&engine.config.network_cidr, from, last, limit).await.map_err(store_err)
    };
    let start = engine.address_cursor.fetch_add(1, Relaxed).max(first);
    if start <= last {
        if let Some(&host) = free(start, 1).await?.first() {
            engine.address_cursor.fetch_max(host + 1, Relaxed);
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
    // Wrapped: go on from here (a store() racing a concurrent fetch_max is harmless, the cursor is a hint).
    engine.address_cursor.store(host + 1, Relaxed);
    Ok(host)
}
