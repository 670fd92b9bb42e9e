//! Reserved fixed IPs (`/cloud/v1/reserved_fixed_ips/{project_id}/{region_id}`): the core's reserved
//! addresses, on the instance network (the one network whose addresses Nimbus hands out itself, which Gcore
//! clients see as the external network). A reservation is a port: an instance created with an interface
//! `{"type": "reserved_fixed_ip", "port_id": ...}` gets its address and shows its id as its NIC's port, and
//! the address stays reserved when the instance goes (unless its delete names it in `reserved_fixed_ips`).
//! Create and delete answer a FINISHED task, as the networks' changes do. Private networks' addresses, ports
//! reserved after the fact (`type: port`) and VIPs are refused with the reason.

use std::net::Ipv4Addr;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use nimbus_core::networking::ReservedAddress;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::common::{found, optional_str, page, query_one, query_pairs, BodyMap, InRegion, Region, RegionItem};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::networks::receipt;
use super::views::{self, rfc3339, Scope};
use crate::AppState;

/// A reservation as Gcore shows it.
fn reserved_fixed_ip(r: &ReservedAddress, scope: &Scope) -> Value {
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
        "subnet_id": scope.subnet_id(),
        "subnet_v6_id": null,
        "network_id": scope.network_id(),
        "network": views::instance_network(scope, true, false),
        "is_external": true,
        "is_vip": false,
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

const INSTANCE_NETWORK_ONLY: &str =
    "Nimbus reserves addresses of the instance network only (type external, or its network and subnet)";

/// Which address a create asks for: `None` the next free one, `Some` that one (`type: ip_address`).
fn asked_address(map: &Map<String, Value>, scope: &Scope, errors: &mut FieldErrors) -> Option<Ipv4Addr> {
    let kind = optional_str(map, "type", errors);
    // The ids a type names must be the instance network's (or subnet's).
    let must_be = |key: &str, ours: Uuid, errors: &mut FieldErrors| match optional_str(map, key, errors) {
        None => errors.add(key, "Field required"),
        Some(id) if Uuid::parse_str(id) == Ok(ours) => {}
        Some(_) => errors.add(key, INSTANCE_NETWORK_ONLY),
    };
    match kind {
        Some("external") => None,
        Some("subnet") => {
            must_be("subnet_id", scope.subnet_id(), errors);
            None
        }
        Some("any_subnet") => {
            must_be("network_id", scope.network_id(), errors);
            None
        }
        Some("ip_address") => {
            must_be("network_id", scope.network_id(), errors);
            match optional_str(map, "ip_address", errors).map(str::parse::<Ipv4Addr>) {
                Some(Ok(ip)) => Some(ip),
                Some(Err(_)) => {
                    errors.add("ip_address", "Input should be a valid IPv4 address");
                    None
                }
                None => {
                    errors.add("ip_address", "Field required");
                    None
                }
            }
        }
        Some("port") => {
            errors.add("type", "Reserving the address of an existing port is not available in Nimbus");
            None
        }
        Some(other) => {
            errors.add(
                "type",
                format!(
                    "Input tag {other:?} does not match any of 'external', 'subnet', 'any_subnet', \
                     'ip_address', 'port'"
                ),
            );
            None
        }
        None => {
            errors.add("type", "Field required");
            None
        }
    }
}

/// VIPs (addresses shared by several ports) and IPv6 are not Nimbus's.
fn refuse_vip_and_ipv6(map: &Map<String, Value>, errors: &mut FieldErrors) {
    match map.get("is_vip") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => errors.add("is_vip", "VIPs are not available in Nimbus"),
        Some(_) => errors.add("is_vip", "Input should be a valid boolean"),
    }
    match map.get("ip_family") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "ipv4" => {}
        Some(Value::String(f)) if f == "ipv6" || f == "dual" => {
            errors.add("ip_family", "Nimbus reserves IPv4 addresses only")
        }
        Some(_) => errors.add("ip_family", "Input should be 'dual', 'ipv4' or 'ipv6'"),
    }
}

pub async fn create(
    State(app): State<AppState>,
    InRegion(r): InRegion,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let scope = r.scope();
    let mut errors = FieldErrors::default();
    let ip = asked_address(&map, &scope, &mut errors);
    refuse_vip_and_ipv6(&map, &mut errors);
    errors.check()?;
    let reserved = app.engine.create_reserved_address(&r.ctx, None, ip).await?;
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
        // Every reservation is of the instance network (external), none is a VIP.
        .filter(|_| !yes("internal_only") && !yes("vip_only"))
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
    page(all.iter().map(|a| reserved_fixed_ip(a, &scope)).collect(), &q)
}

pub async fn get(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let reserved = find(&app, &r, &id).await?;
    Ok(Json(reserved_fixed_ip(&reserved, &r.scope())))
}

/// `{"is_vip": bool}`: only `false` is Nimbus's, so the reservation is shown as it is.
pub async fn update(
    State(app): State<AppState>,
    RegionItem(r, id): RegionItem,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    // A change, though Nimbus's only answer to one is the reservation as it is.
    r.ctx.require(nimbus_core::tenancy::Role::Member)?;
    let reserved = find(&app, &r, &id).await?;
    let mut errors = FieldErrors::default();
    if !map.contains_key("is_vip") {
        errors.add("is_vip", "Field required");
    }
    refuse_vip_and_ipv6(&map, &mut errors);
    errors.check()?;
    Ok(Json(reserved_fixed_ip(&reserved, &r.scope())))
}

/// Gives the address back; refused while an instance holds it.
pub async fn delete(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let reserved = find(&app, &r, &id).await?;
    app.engine.delete_reserved_address(&r.ctx, reserved.id).await?;
    receipt(&app, &r, "delete_reserved_fixed_ip", "ports", &[]).await
}
