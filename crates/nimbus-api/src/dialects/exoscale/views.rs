//! What Exoscale returns, in the official OpenAPI document's shapes (kebab-case, memory and template sizes
//! in bytes, disk and snapshot sizes in GiB, RFC 3339 times to the second, the spec's enums only). Pure
//! rendering of what the engine recorded.

use nimbus_core::catalog::{BootMode, InstanceType, Template, Visibility};
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::networking::{ElasticIp, PrivateNetwork};
use nimbus_core::operation::{Operation, OperationState, Reason};
use nimbus_core::resources::{AntiAffinityGroup, SecurityGroup, SecurityGroupRule, Snapshot, SnapshotState, SshKey};
use nimbus_core::state_machine::Action;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// The extension map key of this dialect on an instance.
pub const EXT: &str = "exoscale";

pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(0).unwrap_or(t).format(&Rfc3339).unwrap_or_default()
}

const MIB: u64 = 1 << 20;

pub fn instance_type(t: &InstanceType, zones: &[String]) -> Value {
    let mut v = json!({
        "id": t.id,
        "family": t.family,
        "size": t.size,
        "cpus": t.vcpus,
        "memory": t.memory_mib * MIB,
        "authorized": t.authorized,
        "zones": zones,
    });
    // The spec makes `gpus` strictly positive: a type without GPUs has none to state.
    if t.gpus > 0 {
        v["gpus"] = json!(t.gpus);
    }
    v
}

pub fn template(t: &Template, zones: &[String]) -> Value {
    let mut v = json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "version": t.os_version,
        "default-user": t.default_user,
        "password-enabled": t.password_enabled,
        "ssh-key-enabled": t.ssh_key_enabled,
        // Nimbus's direct kernel boot is a legacy (BIOS-era) boot as far as a client can tell.
        "boot-mode": match t.boot_mode { BootMode::Uefi => "uefi", BootMode::Legacy | BootMode::Kernel => "legacy" },
        "visibility": match t.visibility { Visibility::Public => "public", Visibility::Private => "private" },
        "zones": zones,
        "created-at": rfc3339(t.created_at),
        "application-consistent-snapshot-enabled": false,
    });
    if !t.os_name.is_empty() {
        v["family"] = json!(t.os_name.to_ascii_lowercase());
    }
    if t.size_bytes > 0 {
        v["size"] = json!(t.size_bytes);
    }
    if let Some(c) = &t.checksum {
        v["checksum"] = json!(c);
    }
    if t.default_user.is_empty() {
        v.as_object_mut().unwrap().remove("default-user");
    }
    if t.description.is_empty() {
        v.as_object_mut().unwrap().remove("description");
    }
    v
}

/// The Exoscale state of an instance. `before` is the state an operation started from, for the
/// transitional states Exoscale has no word for (a snapshot shows the power state it was taken in).
pub fn instance_state(state: InstanceState, before: Option<InstanceState>) -> &'static str {
    match state {
        InstanceState::Creating | InstanceState::Starting => "starting",
        InstanceState::Running | InstanceState::Rebooting => "running",
        InstanceState::Stopping => "stopping",
        InstanceState::Stopped | InstanceState::Resizing | InstanceState::Reverting => "stopped",
        // Exoscale has no paused state; a VM suspended through another dialect runs no code, so "stopped"
        // is the truest of its words (start is refused until it is resumed).
        InstanceState::Suspended => "stopped",
        InstanceState::Snapshotting => match before {
            Some(InstanceState::Stopped) => "stopped",
            _ => "running",
        },
        InstanceState::Migrating => "migrating",
        // Exoscale has no word for a VM whose host stopped answering: it is in no state the client can act on.
        InstanceState::Error | InstanceState::Unknown => "error",
        InstanceState::Destroying => "destroying",
        InstanceState::Destroyed => "destroyed",
    }
}

/// A string field of the instance's Exoscale extension map.
pub fn ext_str<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.extension(EXT, key).and_then(Value::as_str)
}

pub fn ext_bool(i: &Instance, key: &str) -> bool {
    i.extension(EXT, key).and_then(Value::as_bool).unwrap_or(false)
}

/// What rendering an instance needs beyond its record.
pub struct InstanceContext<'a> {
    pub zones: &'a [String],
    pub instance_type: Option<&'a InstanceType>,
    pub template: Option<&'a Template>,
    pub ssh_keys: &'a [SshKey],
    pub security_groups: &'a [SecurityGroup],
    pub snapshots: Vec<Uuid>,
    pub private_networks: Vec<(Uuid, String)>,
    pub elastic_ips: Vec<Uuid>,
    pub state_before: Option<InstanceState>,
    /// The address the instance shows when its assignment is `dual`.
    pub ipv6_address: std::net::Ipv6Addr,
}

fn public_ip(i: &Instance) -> Option<&String> {
    if ext_str(i, "public-ip-assignment") == Some("none") {
        return None;
    }
    i.ip_addresses.iter().find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
}

/// The fields get-instance and list-instances share.
fn instance_common(i: &Instance, c: &InstanceContext) -> Map<String, Value> {
    let keys: Vec<Value> = i
        .ssh_keys
        .iter()
        .map(|name| match c.ssh_keys.iter().find(|k| &k.name == name) {
            Some(k) => json!({"name": k.name, "fingerprint": k.fingerprint}),
            None => json!({"name": name}),
        })
        .collect();
    let mut v = json!({
        "id": i.id,
        "name": i.name,
        "state": instance_state(i.state, c.state_before),
        "created-at": rfc3339(i.created_at),
        "labels": i.labels,
        "mac-address": i.mac_address,
        "public-ip-assignment": ext_str(i, "public-ip-assignment").unwrap_or("inet4"),
        "ssh-keys": keys,
        "private-networks": c.private_networks.iter()
            .map(|(id, mac)| json!({"id": id, "mac-address": mac})).collect::<Vec<_>>(),
    });
    let m = v.as_object_mut().unwrap();
    if let Some(first) = keys.first() {
        m.insert("ssh-key".into(), first.clone());
    }
    if let Some(t) = c.instance_type {
        m.insert("instance-type".into(), instance_type(t, c.zones));
    }
    if let Some(t) = c.template {
        m.insert("template".into(), template(t, c.zones));
    }
    if let Some(ip) = public_ip(i) {
        m.insert("public-ip".into(), json!(ip));
    }
    if ext_str(i, "public-ip-assignment") == Some("dual") {
        m.insert("ipv6-address".into(), json!(c.ipv6_address.to_string()));
    }
    v.as_object().cloned().unwrap_or_default()
}

/// get-instance: the `instance` schema.
pub fn instance(i: &Instance, c: &InstanceContext) -> Value {
    let mut m = instance_common(i, c);
    let refs = |ids: &[Uuid]| ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>();
    m.insert("disk-size".into(), json!(i.disk_size_gb));
    m.insert("security-groups".into(), json!(refs(&i.security_groups)));
    m.insert("anti-affinity-groups".into(), json!(refs(&i.anti_affinity_groups)));
    m.insert("elastic-ips".into(), json!(refs(&c.elastic_ips)));
    m.insert("snapshots".into(), json!(refs(&c.snapshots)));
    // Always present: `exo compute instance show` dereferences both without a nil check.
    m.insert("secureboot-enabled".into(), json!(i.secure_boot));
    m.insert("tpm-enabled".into(), json!(i.tpm_enabled));
    m.insert(
        "application-consistent-snapshot-enabled".into(),
        json!(ext_bool(i, "application-consistent-snapshot-enabled")),
    );
    m.insert("disk-encrypted".into(), json!(false));
    if let Some(ud) = &i.user_data {
        m.insert("user-data".into(), json!(ud));
    }
    Value::Object(m)
}

/// A list-instances item: the summary, with full security group objects.
pub fn instance_summary(i: &Instance, c: &InstanceContext) -> Value {
    let mut m = instance_common(i, c);
    let groups: Vec<Value> = i
        .security_groups
        .iter()
        .map(|id| match c.security_groups.iter().find(|g| g.id == *id) {
            Some(g) => security_group(g, c.security_groups),
            None => json!({"id": id}),
        })
        .collect();
    m.insert("security-groups".into(), json!(groups));
    Value::Object(m)
}

pub fn reason(r: Reason) -> &'static str {
    match r {
        Reason::Incorrect => "incorrect",
        Reason::Unknown => "unknown",
        Reason::Unavailable => "unavailable",
        Reason::Forbidden => "forbidden",
        Reason::Busy => "busy",
        Reason::Fault => "fault",
        Reason::Partial => "partial",
        Reason::NotFound => "not-found",
        Reason::Interrupted => "interrupted",
        Reason::Unsupported => "unsupported",
        Reason::Conflict => "conflict",
    }
}

/// The `reference` of an operation: what its result is found under.
pub fn reference(kind: &str, id: impl std::fmt::Display, link_key: &str) -> Value {
    json!({ "id": id.to_string(), "link": format!("/v2/{kind}/{link_key}"), "command": format!("get-{kind}") })
}

/// An engine operation as Exoscale's: four states only, a reason on every failure (the Python waiter
/// reads it unconditionally), and a reference to the resource the operation made or changed.
pub fn operation(op: &Operation) -> Value {
    let (state, reason_) = match op.state {
        OperationState::Pending | OperationState::Running => ("pending", None),
        OperationState::Success => ("success", None),
        OperationState::Failure => ("failure", Some(op.reason.map_or("unknown", reason))),
        OperationState::Timeout => ("timeout", Some(op.reason.map_or("unavailable", reason))),
        OperationState::Cancelled => ("failure", Some("interrupted")),
    };
    let snapshot = op.params.get("snapshot_id").and_then(Value::as_str);
    let template = op.params.get("template_id").and_then(Value::as_str);
    let reference_ = match (op.kind, snapshot) {
        (Action::PromoteSnapshot, _) if template.is_some() => {
            let t = template.unwrap_or_default();
            reference("template", t, t)
        }
        (Action::CreateSnapshot | Action::DeleteSnapshot, Some(s)) => reference("snapshot", s, s),
        (Action::CreateVolumeSnapshot | Action::DeleteVolumeSnapshot, Some(s)) => json!({
            "id": s,
            "link": format!("/v2/block-storage-snapshot/{s}"),
            "command": "get-block-storage-snapshot",
        }),
        (kind, _) if kind.is_volume() => {
            let id = op.target.id;
            json!({ "id": id, "link": format!("/v2/block-storage/{id}"), "command": "get-block-storage-volume" })
        }
        _ => reference("instance", op.target.id, &op.target.id.to_string()),
    };
    let mut v = json!({ "id": op.id, "state": state, "reference": reference_ });
    if let Some(r) = reason_ {
        v["reason"] = json!(r);
    }
    if let Some(m) = &op.message {
        if !m.is_empty() {
            v["message"] = json!(m);
        }
    }
    v
}

/// A change done at request time, reported as the operation Exoscale answers with.
pub fn receipt(id: Uuid, reference_: Value) -> Value {
    json!({ "id": id, "state": "success", "reference": reference_ })
}

/// A snapshot; its `instance` is a reference until the caller puts the rendered instance there.
pub fn snapshot(s: &Snapshot) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "created-at": rfc3339(s.created_at),
        "state": match s.state {
            SnapshotState::Snapshotting => "snapshotting",
            SnapshotState::Ready => "ready",
            SnapshotState::Error => "error",
            SnapshotState::Deleting => "deleting",
        },
        // Exoscale states a snapshot's size as the volume's, never below its 10 GiB minimum; the
        // driver reports the bytes really kept, rounded up to GiB.
        "size": s.size_gb.clamp(10, 51200),
        "application-consistent": false,
        "instance": {"id": s.instance_id},
    })
}

pub fn ssh_key(k: &SshKey) -> Value {
    json!({ "name": k.name, "fingerprint": k.fingerprint })
}

/// A security group with its rules (the spec marks `rules` write-only, but Exoscale returns them and the
/// clients read them: `exo compute security-group show`, Terraform).
pub fn security_group(g: &SecurityGroup, groups: &[SecurityGroup]) -> Value {
    let mut v = json!({
        "id": g.id,
        "name": g.name,
        "external-sources": [],
        "rules": g.rules.iter().map(|r| security_group_rule(r, groups)).collect::<Vec<_>>(),
    });
    if !g.description.is_empty() {
        v["description"] = json!(g.description);
    }
    v
}

pub fn security_group_rule(r: &SecurityGroupRule, groups: &[SecurityGroup]) -> Value {
    let mut v = json!({ "id": r.id, "flow-direction": r.flow_direction, "protocol": r.protocol });
    if let (Some(s), Some(e)) = (r.start_port, r.end_port) {
        v["start-port"] = json!(s);
        v["end-port"] = json!(e);
    }
    if let Some(n) = &r.network {
        v["network"] = json!(n);
    }
    if let Some(id) = r.security_group {
        v["security-group"] = match groups.iter().find(|g| g.id == id) {
            Some(g) => json!({ "id": id, "name": g.name }),
            None => json!({ "id": id }),
        };
    }
    if matches!(r.protocol.as_str(), "icmp" | "icmpv6") {
        v["icmp"] = json!({ "type": r.icmp_type.unwrap_or(-1), "code": r.icmp_code.unwrap_or(-1) });
    }
    if !r.description.is_empty() {
        v["description"] = json!(r.description);
    }
    v
}

pub fn private_network(n: &PrivateNetwork) -> Value {
    let leases: Vec<Value> = n
        .leases
        .iter()
        .map(|l| match l.ip {
            Some(ip) => json!({ "instance-id": l.instance_id, "ip": ip.to_string() }),
            None => json!({ "instance-id": l.instance_id }),
        })
        .collect();
    let mut v = json!({ "id": n.id, "name": n.name, "labels": n.labels, "leases": leases });
    if let Some(r) = n.range {
        v["start-ip"] = json!(r.start.to_string());
        v["end-ip"] = json!(r.end.to_string());
        v["netmask"] = json!(r.netmask.to_string());
    }
    if !n.description.is_empty() {
        v["description"] = json!(n.description);
    }
    v
}

pub fn elastic_ip(e: &ElasticIp) -> Value {
    let mut v = json!({
        "id": e.id,
        "ip": e.ip.to_string(),
        "addressfamily": "inet4",
        "cidr": format!("{}/32", e.ip),
        "labels": e.labels,
    });
    if !e.description.is_empty() {
        v["description"] = json!(e.description);
    }
    v
}

pub fn anti_affinity_group(g: &AntiAffinityGroup, members: &[Uuid]) -> Value {
    let mut v = json!({
        "id": g.id,
        "name": g.name,
        "instances": members.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
    });
    if !g.description.is_empty() {
        v["description"] = json!(g.description);
    }
    v
}

pub fn zone(name: &str, api_endpoint: &str) -> Value {
    json!({ "name": name, "api-endpoint": api_endpoint })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_specs_states_are_rendered() {
        let spec = [
            "destroyed",
            "destroying",
            "error",
            "expunging",
            "migrating",
            "running",
            "starting",
            "stopped",
            "stopping",
        ];
        for s in InstanceState::ALL {
            for before in [None, Some(InstanceState::Stopped), Some(InstanceState::Running)] {
                assert!(spec.contains(&instance_state(s, before)), "{s}");
            }
        }
        assert_eq!(instance_state(InstanceState::Snapshotting, Some(InstanceState::Stopped)), "stopped");
    }
}
