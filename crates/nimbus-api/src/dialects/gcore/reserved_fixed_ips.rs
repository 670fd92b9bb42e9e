//! Reserved fixed IPs (`/cloud/v1/reserved_fixed_ips/{project_id}/{region_id}`): the core's reserved
//! addresses, of the instance network (the one network whose addresses Nimbus hands out itself, which Gcore
//! clients see as the external network) or of a private network's subnet. A reservation is a port: an
//! instance created with an interface `{"type": "reserved_fixed_ip", "port_id": ...}` gets its address and
//! shows its id as that interface's port (a private network's reservation is attached once the instance
//! exists, or later by `attach_interface`), and the address stays reserved when the instance goes (unless
//! its delete names it in `reserved_fixed_ips`) or is detached. Create and delete answer a FINISHED task,
//! as the networks' changes do. A VIP (`is_vip`, at its create or by a PATCH while no instance holds it)
//! is held by no instance: instances on its network are connected to it (`connected_devices`, from the
//! candidates of `available_devices`), and their ports then allow its address (`allowed_address_pairs`),
//! for keepalived and the like to move it between them. An instance's own port is reserved after the fact
//! by `type: port`: the reservation is that port (same id), and its address stays when the instance goes.

use std::net::Ipv4Addr;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use nimbus_core::networking::ReservedAddress;
use nimbus_engine::InstanceWindow;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::common::{found, optional_str, page, query_one, query_pairs, BodyMap, InRegion, Region, RegionItem};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::floating_ips::instance_of_port;
use super::networks::{by_subnet, gcore_networks, receipt};
use super::views::{self, rfc3339, GcoreNetwork, Scope};
use crate::AppState;

/// A reservation as Gcore shows it; `nets`: the project's private networks, one of which a private
/// reservation's is.
fn reserved_fixed_ip(r: &ReservedAddress, nets: &[GcoreNetwork], scope: &Scope) -> Value {
    let private = r.network_id.and_then(|n| nets.iter().find(|g| g.net.id == n));
    let (network_id, subnet_id, network) = match private {
        Some(g) => (g.net.id, g.subnet.as_ref().map(|s| s.id), views::private_network(g, scope, true)),
        None => (scope.network_id(), Some(scope.subnet_id()), views::instance_network(scope, true, false)),
    };
    let (attachments, status) = match r.instance_id {
        Some(i) => (json!([{"resource_id": i, "resource_type": "instance"}]), "attached"),
        None => (json!([]), "available"),
    };
    json!({
        "port_id": r.id,
        "name": r.name,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
        "creator_task_id": null,
        "task_id": null,
        "fixed_ip_address": r.ip.to_string(),
        "fixed_ipv6_address": null,
        "subnet_id": subnet_id,
        "subnet_v6_id": null,
        "network_id": network_id,
        "network": network,
        "is_external": private.is_none(),
        "is_vip": r.is_vip,
        "allowed_address_pairs": [],
        "attachments": attachments,
        "reservation": {
            "resource_id": r.instance_id,
            "resource_type": r.instance_id.map(|_| "instance"),
            "status": status,
        },
        "status": if r.instance_id.is_some() { "ACTIVE" } else { "DOWN" },
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
    })
}

async fn find(app: &AppState, r: &Region, id: &str) -> GcoreResult<ReservedAddress> {
    found("Reserved fixed IP", id, |id| app.engine.reserved_address(&r.ctx, id)).await
}

/// Where a create asks for its address: `network` the private network (`None`: the instance network), `ip`
/// that address (`type: ip_address`) or the next free one; or `port`, an instance's port (`type: port`).
#[derive(Default)]
struct Asked {
    network: Option<Uuid>,
    ip: Option<Ipv4Addr>,
    port: Option<String>,
}

fn asked_address(map: &Map<String, Value>, scope: &Scope, nets: &[GcoreNetwork], errors: &mut FieldErrors) -> Asked {
    let kind = optional_str(map, "type", errors);
    // The network a type names: the instance network, or a private one with a subnet to take from.
    let network_of = |key: &str, errors: &mut FieldErrors| -> Option<Uuid> {
        let id = match optional_str(map, key, errors) {
            None => {
                errors.add(key, "Field required");
                return None;
            }
            Some(id) => id,
        };
        let Ok(uuid) = Uuid::parse_str(id) else {
            errors.add(key, "Input should be a valid UUID");
            return None;
        };
        if key == "subnet_id" {
            if uuid == scope.subnet_id() {
                return None;
            }
            match by_subnet(nets, uuid) {
                Some(g) => return Some(g.net.id),
                None => errors.add(key, format!("Subnet {id} could not be found")),
            }
            return None;
        }
        if uuid == scope.network_id() {
            return None;
        }
        match nets.iter().find(|g| g.net.id == uuid) {
            Some(g) if g.subnet.is_some() => Some(uuid),
            Some(_) => {
                errors.add(key, format!("Network {id} has no subnet to take an address from"));
                None
            }
            None => {
                errors.add(key, format!("Network {id} could not be found"));
                None
            }
        }
    };
    match kind {
        Some("external") => Asked::default(),
        Some("subnet") => Asked { network: network_of("subnet_id", errors), ..Asked::default() },
        Some("any_subnet") => Asked { network: network_of("network_id", errors), ..Asked::default() },
        Some("ip_address") => {
            let network = network_of("network_id", errors);
            let ip = match optional_str(map, "ip_address", errors).map(str::parse::<Ipv4Addr>) {
                Some(Ok(ip)) => Some(ip),
                Some(Err(_)) => {
                    errors.add("ip_address", "Input should be a valid IPv4 address");
                    None
                }
                None => {
                    errors.add("ip_address", "Field required");
                    None
                }
            };
            Asked { network, ip, ..Asked::default() }
        }
        Some("port") => {
            let port = optional_str(map, "port_id", errors).map(str::to_string);
            if port.is_none() {
                errors.add("port_id", "Field required");
            }
            Asked { port, ..Asked::default() }
        }
        Some(other) => {
            errors.add(
                "type",
                format!(
                    "Input tag {other:?} does not match any of 'external', 'subnet', 'any_subnet', \
                     'ip_address', 'port'"
                ),
            );
            Asked::default()
        }
        None => {
            errors.add("type", "Field required");
            Asked::default()
        }
    }
}

/// `is_vip` (absent: `None`); IPv6 is not Nimbus's.
fn vip_and_ipv4(map: &Map<String, Value>, errors: &mut FieldErrors) -> Option<bool> {
    let is_vip = match map.get("is_vip") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            errors.add("is_vip", "Input should be a valid boolean");
            None
        }
    };
    match map.get("ip_family") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "ipv4" => {}
        Some(Value::String(f)) if f == "ipv6" || f == "dual" => {
            errors.add("ip_family", "Nimbus reserves IPv4 addresses only")
        }
        Some(_) => errors.add("ip_family", "Input should be 'dual', 'ipv4' or 'ipv6'"),
    }
    is_vip
}

pub async fn create(
    State(app): State<AppState>,
    InRegion(r): InRegion,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let scope = r.scope();
    let mut errors = FieldErrors::default();
    let nets = gcore_networks(&app, &r.ctx).await?;
    let asked = asked_address(&map, &scope, &nets, &mut errors);
    let is_vip = vip_and_ipv4(&map, &mut errors).unwrap_or(false);
    if is_vip && asked.port.is_some() {
        errors.add("is_vip", "An instance's port is not a VIP: a VIP is held by no instance");
    }
    errors.check()?;
    if let Some(port) = asked.port {
        let instance = instance_of_port(&app, &r, &port).await?;
        let reserved = app.engine.reserve_instance_address(&r.ctx, views::port_id(&instance), instance.id).await?;
        return receipt(&app, &r, "create_reserved_fixed_ip", "ports", &[reserved.id]).await;
    }
    let reserved = app.engine.create_reserved_address(&r.ctx, None, asked.network, asked.ip, is_vip).await?;
    receipt(&app, &r, "create_reserved_fixed_ip", "ports", &[reserved.id]).await
}

pub async fn list(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let yes = |key: &str| query_one(&q, key) == Some("true");
    let device = query_one(&q, "device_id");
    let ip = query_one(&q, "ip_address");
    let mut all: Vec<ReservedAddress> = app
        .engine
        .list_reserved_addresses(&r.ctx)
        .await?
        .into_iter()
        .filter(|a| !yes("available_only") || a.instance_id.is_none())
        .filter(|a| device.is_none_or(|d| a.instance_id.is_some_and(|i| i.to_string() == d)))
        // Gcore matches a regular expression; a part of the address is what clients give.
        .filter(|a| ip.is_none_or(|ip| a.ip.to_string().contains(ip)))
        // The instance network's are external, private networks' internal.
        .filter(|a| !yes("internal_only") || a.network_id.is_some())
        .filter(|a| !yes("external_only") || a.network_id.is_none())
        .filter(|a| !yes("vip_only") || a.is_vip)
        .collect();
    let order = query_one(&q, "order_by").unwrap_or("created_at.asc");
    let (key, direction) = order.split_once('.').unwrap_or((order, "asc"));
    match key {
        "created_at" => all.sort_by_key(|a| (a.created_at, a.id)),
        "updated_at" => all.sort_by_key(|a| (a.updated_at, a.id)),
        "fixed_ip_address" => all.sort_by_key(|a| a.ip),
        "name" => all.sort_by(|a, b| a.name.cmp(&b.name)),
        "status" => all.sort_by_key(|a| a.instance_id.is_none()),
        _ => return Err(GcoreError::field("order_by", format!("Unknown ordering {order:?}"))),
    }
    if direction == "desc" {
        all.reverse();
    } else if direction != "asc" {
        return Err(GcoreError::field("order_by", format!("Unknown ordering {order:?}")));
    }
    let scope = r.scope();
    let nets = networks_of(&app, &r, &all).await?;
    page(all.iter().map(|a| reserved_fixed_ip(a, &nets, &scope)).collect(), &q)
}

/// The project's private networks when one of `reservations` is of one (what their views show).
async fn networks_of(app: &AppState, r: &Region, reservations: &[ReservedAddress]) -> GcoreResult<Vec<GcoreNetwork>> {
    match reservations.iter().any(|a| a.network_id.is_some()) {
        true => gcore_networks(app, &r.ctx).await,
        false => Ok(Vec::new()),
    }
}

pub async fn get(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let reserved = find(&app, &r, &id).await?;
    let nets = networks_of(&app, &r, std::slice::from_ref(&reserved)).await?;
    Ok(Json(reserved_fixed_ip(&reserved, &nets, &r.scope())))
}

/// `{"is_vip": bool}`: a VIP, or an address for one instance again.
pub async fn update(
    State(app): State<AppState>,
    RegionItem(r, id): RegionItem,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let reserved = find(&app, &r, &id).await?;
    let mut errors = FieldErrors::default();
    let is_vip = vip_and_ipv4(&map, &mut errors);
    if is_vip.is_none() {
        errors.add("is_vip", "Field required");
    }
    errors.check()?;
    let reserved = app.engine.set_reserved_address_vip(&r.ctx, reserved.id, is_vip.unwrap_or_default()).await?;
    let nets = networks_of(&app, &r, std::slice::from_ref(&reserved)).await?;
    Ok(Json(reserved_fixed_ip(&reserved, &nets, &r.scope())))
}

/// An instance's port on a VIP's network, as the VIP endpoints show it.
struct Port {
    id: Uuid,
    instance: nimbus_core::instance::Instance,
    ip: Option<String>,
}

/// The network of a VIP's ports as they show it: the network, its subnet's id and the subnet.
struct PortNetwork {
    network: Value,
    subnet_id: Option<Uuid>,
    subnet: Value,
}

/// The ports on the network of `vip` (every instance's one NIC on the instance network, or the leases of a
/// private network), and that network.
async fn ports_on_network(app: &AppState, r: &Region, vip: &ReservedAddress) -> GcoreResult<(Vec<Port>, PortNetwork)> {
    let scope = r.scope();
    let all = InstanceWindow::default();
    let Some(network) = vip.network_id else {
        let instances = app.engine.instance_window_where(&r.ctx, &all, |_| true).await?.items;
        let ports = instances
            .into_iter()
            .map(|i| Port { id: views::port_id(&i), ip: i.ip_addresses.first().cloned(), instance: i })
            .collect();
        let on = PortNetwork {
            network: views::instance_network(&scope, true, false),
            subnet_id: Some(scope.subnet_id()),
            subnet: views::instance_subnet(&scope),
        };
        return Ok((ports, on));
    };
    let nets = gcore_networks(app, &r.ctx).await?;
    let Some(g) = nets.iter().find(|g| g.net.id == network) else {
        return Err(GcoreError::not_found(format!("Network {network} could not be found")));
    };
    let on_network = |i: &nimbus_core::instance::Instance| i.private_networks.contains(&network);
    let instances = app.engine.instance_window_where(&r.ctx, &all, on_network).await?.items;
    let ports = instances
        .into_iter()
        .filter_map(|i| {
            let lease = g.net.lease_of(i.id)?;
            let id = views::lease_port_id(i.id, g, lease);
            Some(Port { id, ip: lease.ip.map(|ip| ip.to_string()), instance: i })
        })
        .collect();
    let on = PortNetwork {
        network: views::private_network(g, &scope, false),
        subnet_id: g.subnet.as_ref().map(|s| s.id),
        subnet: g.subnet.as_ref().map(|s| views::private_subnet(g, s, &scope)).unwrap_or(Value::Null),
    };
    Ok((ports, on))
}

/// The ports of `ports` whose instances `keep` keeps, as Gcore's connected or candidate ports.
fn port_list(ports: &[Port], keep: impl Fn(Uuid) -> bool, on: &PortNetwork) -> Value {
    let results: Vec<Value> = ports
        .iter()
        .filter(|p| keep(p.instance.id))
        .map(|p| {
            let assignments: Vec<Value> =
                p.ip.iter()
                    .map(|ip| json!({"ip_address": ip, "subnet_id": on.subnet_id, "subnet": on.subnet}))
                    .collect();
            json!({
                "port_id": p.id,
                "instance_id": p.instance.id,
                "instance_name": p.instance.name,
                "ip_assignments": assignments,
                "network": on.network,
            })
        })
        .collect();
    json!({"count": results.len(), "results": results})
}

async fn vip(app: &AppState, r: &Region, id: &str) -> GcoreResult<ReservedAddress> {
    let reserved = find(app, r, id).await?;
    if !reserved.is_vip {
        return Err(GcoreError::bad_request(format!("Reserved fixed IP {id} is not a VIP")));
    }
    Ok(reserved)
}

/// `GET .../{port_id}/connected_devices`: the ports sharing the VIP.
pub async fn connected(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let vip = vip(&app, &r, &id).await?;
    let (ports, on) = ports_on_network(&app, &r, &vip).await?;
    Ok(Json(port_list(&ports, |i| vip.connected.contains(&i), &on)))
}

/// `GET .../{port_id}/available_devices`: the ports that could share it (on its network, not sharing it yet).
pub async fn available(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let vip = vip(&app, &r, &id).await?;
    let (ports, on) = ports_on_network(&app, &r, &vip).await?;
    Ok(Json(port_list(&ports, |i| !vip.connected.contains(&i), &on)))
}

/// `PUT` (these ports and no others) or `PATCH` (these too) `.../{port_id}/connected_devices {"port_ids"}`.
pub async fn connect(
    State(app): State<AppState>,
    method: axum::http::Method,
    RegionItem(r, id): RegionItem,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let vip = vip(&app, &r, &id).await?;
    let not_ids = || GcoreError::field("port_ids", "Input should be a valid list of port ids");
    let asked: Vec<&str> = match map.get("port_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => ids.iter().map(Value::as_str).collect::<Option<_>>().ok_or_else(not_ids)?,
        Some(_) => return Err(not_ids()),
    };
    let (ports, on) = ports_on_network(&app, &r, &vip).await?;
    let mut instances = Vec::new();
    for port in asked {
        match ports.iter().find(|p| p.id.to_string() == port) {
            Some(p) => instances.push(p.instance.id),
            None => return Err(GcoreError::not_found(format!("Port {port} could not be found on the VIP's network"))),
        }
    }
    let replace = method == axum::http::Method::PUT;
    let vip = app.engine.connect_vip(&r.ctx, vip.id, instances, replace).await?;
    Ok(Json(port_list(&ports, |i| vip.connected.contains(&i), &on)))
}

/// Gives the address back; refused while an instance holds it.
pub async fn delete(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let reserved = find(&app, &r, &id).await?;
    app.engine.delete_reserved_address(&r.ctx, reserved.id).await?;
    receipt(&app, &r, "delete_reserved_fixed_ip", "ports", &[]).await
}
