//! What Gcore returns: the Instance of the seed (every key present, `null` where Nimbus has no value), its
//! flavor, addresses and tags, the Task of background work, flavors, images and network interfaces. Pure
//! rendering of what the engine recorded; ids of sub-objects Nimbus keeps no record of (root volume, port,
//! network, subnet) are derived from their owner's id so they are stable.
//!
//! Private networks (the core's, bookkeeping only: the VM gets no second NIC for them) show as Gcore
//! networks with at most one subnet, their address range; an instance's leases show as its extra
//! interfaces and addresses.

use std::net::Ipv4Addr;

use nimbus_core::catalog::{InstanceType, Template, Visibility, Zone};
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::labels::Labels;
use nimbus_core::networking::{Lease, PrivateNetwork};
use nimbus_core::operation::{Operation, OperationState};
use nimbus_core::resources::{AntiAffinityGroup, SecurityGroup, SecurityGroupRule};
use nimbus_core::state_machine::Action;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// The extension map key of this dialect on an instance.
pub const EXT: &str = "gcore";
/// The one network every Nimbus instance is on, as Gcore names networks.
pub const NETWORK_NAME: &str = "nimbus";

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Where the request is addressed: the project and region of the path.
pub struct Scope<'a> {
    pub project_id: i64,
    pub zone: &'a Zone,
    pub network_cidr: &'a str,
}

impl Scope<'_> {
    pub fn region_name(&self) -> String {
        if self.zone.description.is_empty() {
            self.zone.name.clone()
        } else {
            self.zone.description.clone()
        }
    }

    pub fn network_id(&self) -> Uuid {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.network.{}", self.zone.name).as_bytes())
    }

    pub fn subnet_id(&self) -> Uuid {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.subnet.{}", self.zone.name).as_bytes())
    }
}

/// A stable id for a sub-object that Nimbus only knows as part of its owner.
pub fn derived_id(owner: Uuid, what: &str) -> Uuid {
    Uuid::new_v5(&owner, what.as_bytes())
}

/// The id of the instance's NIC on the instance network: the reserved fixed IP's it was created with, or one
/// derived from the instance's.
pub fn port_id(i: &Instance) -> Uuid {
    ext_str(i, "port_id").and_then(|p| Uuid::parse_str(p).ok()).unwrap_or_else(|| derived_id(i.id, "port.0"))
}

fn ram_text(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

fn vcpus_text(n: u32) -> String {
    format!("{n} vCPU{}", if n == 1 { "" } else { "s" })
}

/// The flavor as an instance shows it; the instance's own figures when its type left the catalog.
fn instance_flavor(i: &Instance) -> Value {
    json!({
        "flavor_id": i.instance_type,
        "flavor_name": i.instance_type,
        "vcpus": i.vcpus,
        "ram": i.memory_mib,
        "architecture": "x86_64",
        "os_type": "linux",
        "hardware_description": {"vcpus": vcpus_text(i.vcpus), "ram": ram_text(i.memory_mib)},
    })
}

/// A flavor of `GET /cloud/v1/flavors`.
pub fn flavor(t: &InstanceType, include_prices: bool) -> Value {
    let mut hardware = Map::new();
    hardware.insert("vcpus".into(), json!(vcpus_text(t.vcpus)));
    hardware.insert("ram".into(), json!(ram_text(t.memory_mib)));
    if t.gpus > 0 {
        hardware.insert("gpu".into(), json!(format!("{} GPU", t.gpus)));
    }
    let mut v = json!({
        "flavor_id": t.name,
        "flavor_name": t.name,
        "vcpus": t.vcpus,
        "ram": t.memory_mib,
        "architecture": "x86_64",
        "os_type": "linux",
        "disabled": !t.authorized,
        "hardware_description": hardware,
    });
    if include_prices {
        v["currency_code"] = json!("USD");
        v["price_per_hour"] = json!(t.price_hourly);
        v["price_per_month"] = json!(t.price_monthly);
        v["price_status"] = json!("show");
    }
    v
}

/// An image of `GET /cloud/v1/images`.
pub fn image(t: &Template, scope: &Scope) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "architecture": "x86_64",
        "os_type": if t.os_name.to_ascii_lowercase().contains("windows") { "windows" } else { "linux" },
        "os_distro": t.os_name,
        "os_version": t.os_version,
        "min_disk": t.min_disk_gb,
        "min_ram": t.min_memory_mib,
        "disk_format": "qcow2",
        "is_baremetal": false,
        "status": "active",
        "visibility": match t.visibility { Visibility::Public => "public", Visibility::Private => "private" },
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.created_at),
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
        "size": t.size_bytes,
        "ssh_key": if t.ssh_key_enabled { "allow" } else { "deny" },
        "hw_firmware_type": match t.boot_mode { nimbus_core::catalog::BootMode::Uefi => "uefi", _ => "bios" },
        "hw_machine_type": "q35",
        "display_order": null,
        "creator_task_id": null,
        "task_id": null,
        "tags_v2": [],
    })
}

/// Gcore's `status`, `vm_state` and `task_state` of an instance, from its state and the operation holding
/// its lock (the Nova convention of the notes, §12). `hard_reboot` marks a reboot that resets the VM.
pub fn status(
    i: &Instance,
    lock: Option<&Operation>,
    hard_reboot: bool,
) -> (&'static str, &'static str, Option<&'static str>) {
    let kind = lock.map(|op| op.kind);
    let before = lock.and_then(|op| op.state_before);
    let at_rest = |s: Option<InstanceState>| match s {
        Some(InstanceState::Stopped) => ("SHUTOFF", "stopped"),
        Some(InstanceState::Suspended) => ("SUSPENDED", "suspended"),
        Some(InstanceState::Error) => ("ERROR", "error"),
        _ => ("ACTIVE", "active"),
    };
    match i.state {
        InstanceState::Creating | InstanceState::Starting if kind == Some(Action::Create) => {
            ("BUILD", "building", Some("spawning"))
        }
        InstanceState::Creating => ("REBUILD", at_rest(before).1, Some("rebuild_spawning")),
        InstanceState::Starting => ("SHUTOFF", "stopped", Some("powering-on")),
        InstanceState::Running => match kind {
            Some(Action::Suspend) => ("ACTIVE", "active", Some("suspending")),
            Some(Action::ResetPassword) => ("PASSWORD", "active", None),
            Some(Action::CreateSnapshot) => ("ACTIVE", "active", Some("image_snapshot")),
            // Nova's rescued instance: running its rescue system.
            None if i.rescue => ("RESCUE", "rescued", None),
            _ => ("ACTIVE", "active", None),
        },
        InstanceState::Stopping => ("ACTIVE", "active", Some("powering-off")),
        InstanceState::Stopped => match kind {
            Some(Action::CreateSnapshot) => ("SHUTOFF", "stopped", Some("image_snapshot")),
            Some(Action::EnableTpm) => ("SHUTOFF", "stopped", Some("updating")),
            _ => ("SHUTOFF", "stopped", None),
        },
        InstanceState::Rebooting if hard_reboot => ("HARD_REBOOT", "active", Some("rebooting_hard")),
        InstanceState::Rebooting => ("REBOOT", "active", Some("rebooting")),
        InstanceState::Resizing => ("RESIZE", at_rest(before).1, Some("resize_prep")),
        InstanceState::Snapshotting => {
            let (s, v) = at_rest(before);
            (s, v, Some("image_snapshot"))
        }
        InstanceState::Reverting => ("REBUILD", "stopped", Some("rebuilding")),
        InstanceState::Migrating => ("MIGRATING", "active", Some("migrating")),
        InstanceState::Error => ("ERROR", "error", None),
        // Nova shows UNKNOWN while the compute host is down, keeping the vm_state it had.
        InstanceState::Unknown => ("UNKNOWN", at_rest(before).1, None),
        InstanceState::Destroying => {
            let (s, v) = at_rest(before);
            (s, v, Some("deleting"))
        }
        InstanceState::Destroyed => ("DELETED", "deleted", None),
        InstanceState::Suspended => match kind {
            Some(Action::Resume) => ("SUSPENDED", "suspended", Some("resuming")),
            _ => ("SUSPENDED", "suspended", None),
        },
    }
}

/// Whether `lock`, the operation holding the instance, is a hard reboot (a reset of the VM).
pub fn hard_reboot(lock: Option<&Operation>) -> bool {
    lock.is_some_and(nimbus_engine::is_hard_reboot)
}

/// The Gcore statuses that stand for each Nimbus state, for the list's `status` filter: what `status()`
/// shows for an instance in that state.
pub fn states_for_status(gcore_status: &str) -> &'static [InstanceState] {
    use InstanceState::*;
    match gcore_status {
        "ACTIVE" => &[Running, Stopping, Snapshotting, Destroying],
        "BUILD" => &[Creating, Starting],
        "SHUTOFF" => &[Stopped, Starting, Snapshotting, Destroying],
        "REBOOT" | "HARD_REBOOT" => &[Rebooting],
        "RESIZE" => &[Resizing],
        "REBUILD" => &[Creating, Reverting],
        "MIGRATING" => &[Migrating],
        "RESCUE" => &[Running],
        "ERROR" => &[Error, Destroying],
        "SUSPENDED" => &[Suspended, Destroying],
        "DELETED" => &[Destroyed],
        _ => &[],
    }
}

/// Every tag: the read-only system labels, then the user's.
pub fn tags(i: &Instance) -> Vec<Value> {
    let system = i.system_labels.iter().map(|(k, v)| json!({"key": k, "value": v, "read_only": true}));
    let user = i
        .labels
        .iter()
        .filter(|(k, _)| !i.system_labels.contains_key(*k))
        .map(|(k, v)| json!({"key": k, "value": v, "read_only": false}));
    system.chain(user).collect()
}

fn ext_str<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.extension(EXT, key).and_then(Value::as_str)
}

/// Whether the instance's first interface was asked as `external` (the default for instances created
/// through other APIs, whose one interface is the instance network).
fn external(i: &Instance) -> bool {
    ext_str(i, "interface_type").is_none_or(|t| t == "external")
}

/// What rendering an instance needs beyond the record.
pub struct InstanceContext<'a> {
    pub scope: &'a Scope<'a>,
    /// The operation holding the instance's lock, if any.
    pub lock: Option<&'a Operation>,
    pub creator_task_id: Option<Uuid>,
    pub security_group_names: Vec<String>,
    /// The private networks the instance is attached to, with its lease on each.
    pub private: Vec<(&'a GcoreNetwork, &'a Lease)>,
    /// The volumes attached to it, beside its boot volume (its own disk).
    pub volumes: Vec<Uuid>,
}

pub fn instance(i: &Instance, c: &InstanceContext) -> Value {
    let scope = c.scope;
    let (status, vm_state, task_state) = status(i, c.lock, hard_reboot(c.lock));
    let interface_name = ext_str(i, "interface_name");
    let addresses: Vec<Value> = i
        .ip_addresses
        .iter()
        .map(|a| {
            json!({
                "type": "fixed",
                "addr": a,
                "interface_name": interface_name,
                "subnet_id": scope.subnet_id(),
                "subnet_name": format!("{NETWORK_NAME}-subnet"),
            })
        })
        .collect();
    let mut address_map = Map::new();
    if !addresses.is_empty() {
        address_map.insert(NETWORK_NAME.into(), Value::Array(addresses));
    }
    let mut fixed: Vec<Value> = i
        .ip_addresses
        .iter()
        .map(|a| json!({"external": external(i), "ip_address": a, "subnet_id": scope.subnet_id()}))
        .collect();
    // Private networks: recorded leases, not addresses a NIC of the VM carries.
    for (g, lease) in &c.private {
        let (Some(ip), Some(subnet)) = (lease.ip, &g.subnet) else { continue };
        let entry = address_map.entry(g.net.name.clone()).or_insert_with(|| json!([]));
        if let Value::Array(list) = entry {
            list.push(json!({
                "type": "fixed",
                "addr": ip.to_string(),
                "interface_name": private_interface_name(i, g.net.id),
                "subnet_id": subnet.id,
                "subnet_name": subnet.name,
            }));
        }
        fixed.push(json!({"external": false, "ip_address": ip.to_string(), "subnet_id": subnet.id}));
    }
    json!({
        "id": i.id,
        "name": i.name,
        "status": status,
        "vm_state": vm_state,
        "task_state": task_state,
        "task_id": i.lock_operation_id,
        "creator_task_id": c.creator_task_id,
        "created_at": rfc3339(i.created_at),
        "project_id": scope.project_id,
        "region_id": scope.zone.numeric_id,
        "region": scope.region_name(),
        "flavor": instance_flavor(i),
        "addresses": address_map,
        "fixed_ip_assignments": fixed,
        // The boot volume first: a volume of its own, or the instance's own disk (which goes with it).
        "volumes": std::iter::once(match i.boot_volume {
            Some(b) => json!({"id": b.id, "delete_on_termination": b.delete_on_termination}),
            None => json!({"id": derived_id(i.id, "volume.root"), "delete_on_termination": true}),
        })
        .chain(
            c.volumes
                .iter()
                .filter(|id| i.boot_volume.is_none_or(|b| b.id != **id))
                .map(|id| json!({"id": id, "delete_on_termination": false})),
        )
        .collect::<Vec<_>>(),
        "security_groups": c.security_group_names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        "tags": tags(i),
        "ssh_key_name": i.ssh_keys.first(),
        "instance_description": (!i.description.is_empty()).then_some(&i.description),
        "instance_isolation": null,
        "blackhole_ports": [],
        "ddos_profile": null,
    })
}

fn subnet(scope: &Scope) -> Value {
    let net = nimbus_engine::network::Network::parse(scope.network_cidr).ok();
    json!({
        "id": scope.subnet_id(),
        "name": format!("{NETWORK_NAME}-subnet"),
        "cidr": scope.network_cidr,
        "network_id": scope.network_id(),
        "available_ips": null,
        "total_ips": null,
        "created_at": rfc3339(OffsetDateTime::UNIX_EPOCH),
        "updated_at": rfc3339(OffsetDateTime::UNIX_EPOCH),
        "creator_task_id": null,
        "task_id": null,
        "dns_nameservers": [],
        "enable_dhcp": false,
        "gateway_ip": net.map(|n| n.gateway()),
        "has_router": false,
        "host_routes": [],
        "ip_version": 4,
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
        "tags": [],
    })
}

/// The instance network (the one every instance's real NIC is on) as a Gcore network; `details` puts whole
/// subnets in `subnets` (an interface's `network_details`), else their ids (the Network model).
pub fn instance_network(scope: &Scope, external: bool, details: bool) -> Value {
    json!({
        "id": scope.network_id(),
        "name": NETWORK_NAME,
        "external": external,
        "shared": true,
        "default": true,
        "mtu": 1500,
        "port_security_enabled": true,
        "project_id": null,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
        "segmentation_id": null,
        "subnets": if details { json!([subnet(scope)]) } else { json!([scope.subnet_id()]) },
        "tags": [],
        "type": "vlan",
        "created_at": rfc3339(OffsetDateTime::UNIX_EPOCH),
        "updated_at": rfc3339(OffsetDateTime::UNIX_EPOCH),
        "creator_task_id": null,
        "task_id": null,
    })
}

/// The instance network's one subnet (`GET /cloud/v1/subnets/...?owned_by=any`).
pub fn instance_subnet(scope: &Scope) -> Value {
    subnet(scope)
}

/// The instance's one real network interface (`GET .../interfaces`).
pub fn interface(i: &Instance, scope: &Scope) -> Value {
    json!({
        "port_id": port_id(i),
        "network_id": scope.network_id(),
        "mac_address": i.mac_address,
        "port_security_enabled": true,
        "interface_name": ext_str(i, "interface_name"),
        "ip_assignments": i.ip_addresses.iter()
            .map(|a| json!({"ip_address": a, "subnet_id": scope.subnet_id()}))
            .collect::<Vec<_>>(),
        "allowed_address_pairs": [],
        "floatingip_details": [],
        "network_details": instance_network(scope, external(i), true),
    })
}

// Private networks.

/// The one subnet of a private network: its address range, with what Gcore alone knows of it (name,
/// gateway) from the dialect's record.
#[derive(Debug, Clone)]
pub struct SubnetInfo {
    pub id: Uuid,
    pub name: String,
    /// The subnet holding the range: `<network address>/<prefix>`.
    pub cidr: String,
    pub gateway: Option<Ipv4Addr>,
    pub created_at: OffsetDateTime,
    pub creator_task_id: Option<Uuid>,
}

/// A core private network as a Gcore network: one subnet at most (its range).
#[derive(Debug, Clone)]
pub struct GcoreNetwork {
    pub net: PrivateNetwork,
    pub subnet: Option<SubnetInfo>,
}

/// The id of a private network's one subnet: derived from the network's, so it is stable.
pub fn private_subnet_id(network_id: Uuid) -> Uuid {
    derived_id(network_id, "subnet")
}

/// The port of an instance on a private network.
pub fn private_port_id(instance_id: Uuid, network_id: Uuid) -> Uuid {
    derived_id(instance_id, &format!("port.{network_id}"))
}

/// The port an instance's lease on a private network shows: the reserved fixed IP's when the lease has a
/// reservation's address (only the instance attached with the reservation can), else its own.
pub fn lease_port_id(instance_id: Uuid, g: &GcoreNetwork, lease: &Lease) -> Uuid {
    g.net
        .held
        .iter()
        .find(|h| Some(h.ip) == lease.ip)
        .map_or_else(|| private_port_id(instance_id, g.net.id), |h| h.reservation_id)
}

/// The name the Gcore user gave an instance's interface on a private network.
pub(super) fn private_interface_name(i: &Instance, network_id: Uuid) -> Option<&str> {
    i.extension(EXT, "interface_names").and_then(|n| n.get(network_id.to_string())).and_then(Value::as_str)
}

fn user_tags(labels: &Labels) -> Vec<Value> {
    labels.iter().map(|(k, v)| json!({"key": k, "value": v, "read_only": false})).collect()
}

/// A private network's subnet (the Subnet model).
pub fn private_subnet(g: &GcoreNetwork, s: &SubnetInfo, scope: &Scope) -> Value {
    let total = g.net.range.map(|r| u64::from(u32::from(r.end) - u32::from(r.start)) + 1);
    // Leased or reserved (a reservation's address leased to its instance counts once).
    let held = g.net.held.iter().map(|h| h.ip);
    let used =
        g.net.leases.iter().filter_map(|l| l.ip).chain(held).collect::<std::collections::BTreeSet<_>>().len() as u64;
    json!({
        "id": s.id,
        "name": s.name,
        "cidr": s.cidr,
        "network_id": g.net.id,
        "available_ips": total.map(|t| t.saturating_sub(used)),
        "total_ips": total,
        "created_at": rfc3339(s.created_at),
        "updated_at": rfc3339(s.created_at),
        "creator_task_id": s.creator_task_id,
        "task_id": null,
        "dns_nameservers": [],
        // Nothing serves DHCP on a private network: the VM has no NIC there (bookkeeping only).
        "enable_dhcp": false,
        "gateway_ip": s.gateway.map(|g| g.to_string()),
        "has_router": false,
        "host_routes": [],
        "ip_version": 4,
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
        "tags": [],
    })
}

/// A private network (the Network model, or with `details` the NetworkDetails of an interface).
pub fn private_network(g: &GcoreNetwork, scope: &Scope, details: bool) -> Value {
    let subnets: Vec<Value> =
        g.subnet.iter().map(|s| if details { private_subnet(g, s, scope) } else { json!(s.id) }).collect();
    json!({
        "id": g.net.id,
        "name": g.net.name,
        "external": false,
        "shared": false,
        "default": false,
        "mtu": 1500,
        // Security groups are enforced on the instance's real NIC only.
        "port_security_enabled": false,
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
        "segmentation_id": null,
        "subnets": subnets,
        "tags": user_tags(&g.net.labels),
        "type": "vxlan",
        "created_at": rfc3339(g.net.created_at),
        "updated_at": rfc3339(g.net.created_at),
        "creator_task_id": null,
        "task_id": null,
    })
}

/// An instance's interface on a private network: its recorded lease (no NIC of the VM carries it).
pub fn private_interface(i: &Instance, g: &GcoreNetwork, lease: &Lease, scope: &Scope) -> Value {
    let assignments: Vec<Value> = match (lease.ip, &g.subnet) {
        (Some(ip), Some(s)) => vec![json!({"ip_address": ip.to_string(), "subnet_id": s.id})],
        _ => vec![],
    };
    json!({
        "port_id": lease_port_id(i.id, g, lease),
        "network_id": g.net.id,
        "mac_address": lease.mac_address,
        "port_security_enabled": false,
        "interface_name": private_interface_name(i, g.net.id),
        "ip_assignments": assignments,
        "allowed_address_pairs": [],
        "floatingip_details": [],
        "network_details": private_network(g, scope, true),
    })
}

/// The task of a change the core makes at request time (networks, subnets, interfaces): kept as a
/// dialect record, always FINISHED, naming what it made in `created_resources`.
pub fn receipt_task(id: Uuid, task_type: &str, kind: &str, ids: &[Uuid], scope: &Scope) -> Value {
    let now = rfc3339(nimbus_core::now());
    let task = json!({
        "id": id,
        "state": "FINISHED",
        "task_type": task_type,
        "user_id": 0,
        "created_on": now,
        "updated_on": now,
        "finished_on": now,
        "error": null,
        "created_resources": created_resources(kind, ids),
        "request_id": crate::error::current_request_id(),
        "data": null,
    });
    task_with_scope(task, scope)
}

pub fn task_type(op: &Operation, hard_reboot: bool) -> String {
    let joins = op.params["join"].as_array().is_some_and(|j| !j.is_empty());
    task_type_of(op.kind, hard_reboot, joins)
}

/// The operation kinds whose tasks can be of `task_type`, and whether every task of them is: then the kinds
/// alone choose the tasks of that type.
pub fn kinds_of_task_type(task_type: &str) -> (Vec<Action>, bool) {
    let variants = |a: Action| [(false, false), (true, false), (false, true)].map(|(h, j)| task_type_of(a, h, j));
    let kinds: Vec<Action> =
        Action::ALL.into_iter().filter(|a| variants(*a).contains(&task_type.to_string())).collect();
    let exact = kinds.iter().all(|a| variants(*a).iter().all(|t| t == task_type));
    (kinds, exact)
}

/// The Gcore task type of an operation of `kind`: a reboot that resets the VM, and a server group change
/// that joins one, have their own.
fn task_type_of(kind: Action, hard_reboot: bool, joins: bool) -> String {
    match kind {
        Action::Create => "create_vm".into(),
        Action::Delete => "delete_vm".into(),
        Action::Start => "start_vm".into(),
        Action::Stop | Action::ScheduledStop => "stop_vm".into(),
        Action::Reboot if hard_reboot => "hard_reboot_vm".into(),
        Action::Reboot => "reboot_vm".into(),
        Action::Suspend => "suspend_vm".into(),
        Action::Resume => "resume_vm".into(),
        Action::Scale | Action::ScaleWithRestart => "resize_vm".into(),
        Action::Reset => "rebuild_vm".into(),
        Action::ChangeAntiAffinityGroups if joins => "put_into_servergroup".into(),
        Action::ChangeAntiAffinityGroups => "remove_from_servergroup".into(),
        Action::ResizeVolume => "extend_volume".into(),
        // create_volume, attach_volume, detach_volume, delete_volume: Gcore's names already.
        other if other.is_volume() => other.as_str().into(),
        other => format!("{}_vm", other.as_str()),
    }
}

/// A stable positive int for the API key that started a task (Gcore's `user_id`); 0 for Nimbus itself.
fn user_id(op: &Operation) -> i64 {
    op.actor.key_id.as_deref().map_or(0, |k| {
        // FNV-1a: stable across processes and versions, unlike the std hasher.
        let h = k.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        (h & 0x7fff_ffff) as i64
    })
}

/// `created_resources`: every kind Gcore names, empty where nothing of it was made.
fn created_resources(kind: &str, ids: &[Uuid]) -> Value {
    let mut resources = Map::new();
    for k in [
        "floatingips",
        "instances",
        "networks",
        "ports",
        "routers",
        "security_groups",
        "servergroups",
        "subnets",
        "volumes",
    ] {
        resources.insert(k.into(), json!([]));
    }
    resources.insert(kind.into(), json!(ids));
    Value::Object(resources)
}

/// The Task fields that Nimbus has no value for, and where it ran.
fn task_with_scope(mut task: Value, scope: &Scope) -> Value {
    let fields = json!({
        "project_id": scope.project_id,
        "region_id": scope.zone.numeric_id,
        "client_id": null,
        "user_client_id": null,
        "detailed_state": null,
        "acknowledged_at": null,
        "acknowledged_by": null,
        "job_id": null,
        "schedule_id": null,
        "lifecycle_policy_id": null,
    });
    if let (Some(t), Value::Object(f)) = (task.as_object_mut(), fields) {
        t.extend(f);
    }
    task
}

/// The state of the task an operation is.
fn task_state(state: OperationState) -> &'static str {
    match state {
        OperationState::Pending => "NEW",
        OperationState::Running => "RUNNING",
        OperationState::Success => "FINISHED",
        OperationState::Failure | OperationState::Timeout | OperationState::Cancelled => "ERROR",
    }
}

/// The operation states a task state stands for (none for a state Gcore does not have).
pub fn operation_states(task_state: &str) -> &'static [OperationState] {
    match task_state {
        "NEW" => &[OperationState::Pending],
        "RUNNING" => &[OperationState::Running],
        "FINISHED" => &[OperationState::Success],
        "ERROR" => &[OperationState::Failure, OperationState::Timeout, OperationState::Cancelled],
        _ => &[],
    }
}

/// An operation as Gcore's Task.
pub fn task(op: &Operation, scope: &Scope, hard_reboot: bool) -> Value {
    let state = task_state(op.state);
    let mut resources = created_resources("instances", &[]);
    if op.kind == Action::Create {
        resources = created_resources("instances", &[op.target.id]);
        // The boot volume (the instance's own disk, or a volume it made, not one that existed), and the
        // volumes the create made (`boot_volume`, `new_boot_volume` and `new_volumes` of its parameters).
        let boot = op.params.get("boot_volume").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
        let mut made = match (boot, op.params.get("new_boot_volume").and_then(Value::as_bool)) {
            (None, _) => vec![derived_id(op.target.id, "volume.root")],
            (Some(id), Some(true)) => vec![id],
            (Some(_), _) => Vec::new(),
        };
        made.extend(
            op.params
                .get("new_volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok())),
        );
        resources["volumes"] = json!(made);
    }
    if op.kind == Action::CreateVolume {
        resources = created_resources("volumes", &[op.target.id]);
    }
    let failed = state == "ERROR";
    let task = json!({
        "id": op.id,
        "state": state,
        "task_type": task_type(op, hard_reboot),
        "user_id": user_id(op),
        "created_on": rfc3339(op.created_at),
        "updated_on": rfc3339(op.updated_at),
        "finished_on": op.state.is_final().then(|| rfc3339(op.updated_at)),
        "error": if failed { Some(op.message.clone().unwrap_or_else(|| "Task failed".into())) } else { None },
        "created_resources": resources,
        "request_id": op.actor.request_id,
        "data": op.params,
    });
    task_with_scope(task, scope)
}

/// A rule of a security group. The core keeps no rule times or revisions: the group's creation stands in.
pub fn security_group_rule(g: &SecurityGroup, r: &SecurityGroupRule) -> Value {
    json!({
        "id": r.id,
        "created_at": rfc3339(g.created_at),
        "updated_at": rfc3339(g.created_at),
        "description": (!r.description.is_empty()).then_some(&r.description),
        "direction": r.flow_direction,
        "ethertype": "IPv4",
        "port_range_min": r.start_port,
        "port_range_max": r.end_port,
        "protocol": (r.protocol != ANY_PROTOCOL).then_some(&r.protocol),
        "remote_group_id": null,
        "remote_ip_prefix": r.network,
        "revision_number": 0,
        "security_group_id": g.id,
    })
}

/// The core's name for "every protocol" (Gcore leaves `protocol` null).
pub const ANY_PROTOCOL: &str = "all";

/// A security group of `/cloud/v1/securitygroups`.
pub fn security_group(g: &SecurityGroup, scope: &Scope) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "created_at": rfc3339(g.created_at),
        "updated_at": rfc3339(g.created_at),
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
        "revision_number": 0,
        "security_group_rules": g.rules.iter().map(|r| security_group_rule(g, r)).collect::<Vec<_>>(),
        "tags_v2": [],
    })
}

/// A server group (Gcore's placement group) is an anti-affinity group, with the instances in it.
pub fn server_group(g: &AntiAffinityGroup, members: &[&Instance], scope: &Scope) -> Value {
    json!({
        "servergroup_id": g.id,
        "name": g.name,
        "policy": "anti-affinity",
        "instances": members
            .iter()
            .map(|i| json!({"instance_id": i.id, "instance_name": i.name}))
            .collect::<Vec<_>>(),
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
    })
}

/// The task of a security group's creation: the group is made at once, so its task is the group itself,
/// with the group's id, always FINISHED.
pub fn security_group_task(g: &SecurityGroup, scope: &Scope) -> Value {
    let created = rfc3339(g.created_at);
    let task = json!({
        "id": g.id,
        "state": "FINISHED",
        "task_type": "create_security_group",
        "user_id": 0,
        "created_on": created,
        "updated_on": created,
        "finished_on": created,
        "error": null,
        "created_resources": created_resources("security_groups", &[g.id]),
        "request_id": null,
        "data": null,
    });
    task_with_scope(task, scope)
}
