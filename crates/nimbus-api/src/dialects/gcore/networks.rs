//! Gcore networks and subnets (`/cloud/v1/networks`, `/cloud/v1/subnets`) on the core's private networks.
//!
//! A Gcore network is a core private network; its one subnet (Nimbus keeps one per network) is the
//! network's address range: the CIDR's hosts without the gateway. What only Gcore knows of a subnet (its
//! name, gateway) is a dialect record keyed by the network. The core makes these changes at request time,
//! so create and delete answer a task that is already FINISHED (a dialect record `GET /cloud/v1/tasks`
//! finds).
//!
//! Bookkeeping only, as in the core: an instance attached to a private network gets a recorded lease and
//! MAC, not a second NIC; no DHCP, DNS, routes or routers exist on these networks, so asking for them is
//! refused. The instance network (every instance's one real NIC) shows as the shared external network
//! `nimbus` when the list asks `owned_by=any`; it cannot be changed.

use std::net::Ipv4Addr;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use nimbus_core::networking::AddressRange;
use nimbus_engine::{Context, PrivateNetworkSpec};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::common::{optional_str, page, query_all, query_one, query_pairs, BodyMap, InRegion, Region, RegionItem};
use super::create::create_tags;
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::views::{self, GcoreNetwork, Scope, SubnetInfo, EXT};
use crate::AppState;

/// The dialect record kinds: a subnet's Gcore-only fields (by network id), a finished task.
const SUBNET: &str = "subnet";
const TASK: &str = "task";

/// Stores a FINISHED task for a change already made, and answers `{"tasks": [id]}`.
pub(super) async fn receipt(
    app: &AppState,
    r: &Region,
    task_type: &str,
    kind: &str,
    ids: &[Uuid],
) -> GcoreResult<Json<Value>> {
    let id = nimbus_core::new_id();
    let task = views::receipt_task(id, task_type, kind, ids, &r.scope());
    app.engine.put_dialect_record(&r.ctx, EXT, TASK, id, &task).await?;
    Ok(Json(json!({ "tasks": [id] })))
}

/// A finished task recorded by [`receipt`].
pub(super) async fn receipt_task(app: &AppState, ctx: &Context, id: Uuid) -> GcoreResult<Option<Value>> {
    Ok(app.engine.dialect_record(ctx, EXT, TASK, id).await?)
}

/// `<network address>/<prefix>` of the subnet holding a range.
fn cidr_of(range: &AddressRange) -> String {
    let mask = u32::from(range.netmask);
    format!("{}/{}", Ipv4Addr::from(u32::from(range.start) & mask), mask.leading_ones())
}

/// Every private network of the project as Gcore sees it.
pub(super) async fn gcore_networks(app: &AppState, ctx: &Context) -> GcoreResult<Vec<GcoreNetwork>> {
    let mut all = Vec::new();
    for net in app.engine.list_private_networks(ctx).await? {
        let subnet = match net.range {
            None => None,
            Some(range) => {
                let cidr = cidr_of(&range);
                let record = app.engine.dialect_record(ctx, EXT, SUBNET, net.id).await?;
                // A record made for another range (since changed through another API) no longer applies.
                let record = record.filter(|r| r["cidr"].as_str() == Some(cidr.as_str()));
                let field = |k: &str| record.as_ref().and_then(|r| r[k].as_str()).map(str::to_string);
                Some(SubnetInfo {
                    id: views::private_subnet_id(net.id),
                    name: field("name").unwrap_or_else(|| net.name.clone()),
                    gateway: field("gateway_ip").and_then(|g| g.parse().ok()),
                    created_at: field("created_at")
                        .and_then(|t| OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok())
                        .unwrap_or(net.created_at),
                    creator_task_id: field("creator_task_id").and_then(|t| Uuid::parse_str(&t).ok()),
                    cidr,
                })
            }
        };
        all.push(GcoreNetwork { net, subnet });
    }
    Ok(all)
}

/// The private network of the path (another project's, or no UUID, is not found).
async fn find_network(app: &AppState, r: &Region, id: &str) -> GcoreResult<GcoreNetwork> {
    let not_found = || GcoreError::not_found(format!("Network {id} could not be found"));
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    gcore_networks(app, &r.ctx).await?.into_iter().find(|g| g.net.id == uuid).ok_or_else(not_found)
}

/// The private network whose subnet is `id`.
pub(super) fn by_subnet(all: &[GcoreNetwork], id: Uuid) -> Option<&GcoreNetwork> {
    all.iter().find(|g| g.subnet.as_ref().is_some_and(|s| s.id == id))
}

fn instance_network_is_fixed(scope: &Scope, id: &str) -> Option<GcoreError> {
    let fixed = id == scope.network_id().to_string() || id == scope.subnet_id().to_string();
    fixed.then(|| GcoreError::bad_request("The instance network and its subnet belong to Nimbus and cannot be changed"))
}

fn required_str<'a>(map: &'a Map<String, Value>, key: &str, errors: &mut FieldErrors) -> Option<&'a str> {
    let v = optional_str(map, key, errors);
    if v.is_none() && !map.contains_key(key) {
        errors.add(key, "Field required");
    }
    v
}

/// Refuses `key` when it is given as anything but what Nimbus does anyway (`allowed`).
fn only(map: &Map<String, Value>, key: &str, allowed: &[Value], why: &str, errors: &mut FieldErrors) {
    if map.get(key).is_some_and(|v| !allowed.contains(v)) {
        errors.add(key, why);
    }
}

// Networks.

pub async fn list_networks(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let scope = r.scope();
    let name = query_one(&q, "name");
    let external = query_one(&q, "external").map(|v| v.eq_ignore_ascii_case("true"));
    let tag_keys = query_all(&q, "tag_key");
    let tag_key_value: Option<Map<String, Value>> = query_one(&q, "tag_key_value")
        .map(|v| match serde_json::from_str::<Value>(v) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(GcoreError::field("tag_key_value", "Must be a JSON object of tag keys and values")),
        })
        .transpose()?;
    let mut nets = gcore_networks(&app, &r.ctx).await?;
    match query_one(&q, "order_by").unwrap_or("created_at.desc") {
        "created_at.asc" => nets.sort_by_key(|g| (g.net.created_at, g.net.id)),
        "name.asc" => nets.sort_by(|a, b| a.net.name.cmp(&b.net.name)),
        "name.desc" => nets.sort_by(|a, b| b.net.name.cmp(&a.net.name)),
        _ => nets.sort_by_key(|g| std::cmp::Reverse((g.net.created_at, g.net.id))),
    }
    let mut all: Vec<Value> = nets
        .iter()
        .filter(|g| name.is_none_or(|n| g.net.name == n) && external != Some(true))
        .filter(|g| tag_keys.iter().all(|k| g.net.labels.contains_key(*k)))
        .filter(|g| {
            tag_key_value.as_ref().is_none_or(|m| {
                m.iter().all(|(k, v)| g.net.labels.get(k).is_some_and(|t| Some(t.as_str()) == v.as_str()))
            })
        })
        .map(|g| views::private_network(g, &scope, false))
        .collect();
    // The instance network is the provider's, shared with every project: listed when asked for.
    let untagged = tag_keys.is_empty() && tag_key_value.is_none();
    if query_one(&q, "owned_by") == Some("any")
        && name.is_none_or(|n| n == views::NETWORK_NAME)
        && untagged
        && external != Some(false)
    {
        all.push(views::instance_network(&scope, true, false));
    }
    page(all, &q)
}

pub async fn get_network(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let scope = r.scope();
    if id == scope.network_id().to_string() {
        return Ok(Json(views::instance_network(&scope, true, false)));
    }
    let g = find_network(&app, &r, &id).await?;
    Ok(Json(views::private_network(&g, &scope, false)))
}

/// Makes a private network with no subnet yet. No router is made: Nimbus has none.
pub async fn create_network(
    State(app): State<AppState>,
    InRegion(r): InRegion,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    let name = required_str(&map, "name", &mut errors);
    only(
        &map,
        "create_router",
        &[json!(false)],
        "Nimbus has no routers: give create_router false or leave it out",
        &mut errors,
    );
    only(&map, "type", &[json!("vxlan")], "Nimbus private networks are of type vxlan", &mut errors);
    let labels = create_tags(map.get("tags"), &mut errors);
    errors.check()?;
    let spec = PrivateNetworkSpec { name: name.map(str::to_string), labels: Some(labels), ..Default::default() };
    let net = app.engine.create_private_network(&r.ctx, spec).await?;
    receipt(&app, &r, "create_network", "networks", &[net.id]).await
}

/// Deletes a private network (and so its subnet); refused while an instance is attached.
pub async fn delete_network(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    if let Some(e) = instance_network_is_fixed(&r.scope(), &id) {
        return Err(e);
    }
    let g = find_network(&app, &r, &id).await?;
    app.engine.delete_private_network(&r.ctx, g.net.id).await?;
    receipt(&app, &r, "delete_network", "networks", &[]).await
}

// Subnets.

pub async fn list_subnets(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let scope = r.scope();
    let network_id = query_one(&q, "network_id");
    let nets = gcore_networks(&app, &r.ctx).await?;
    let mut all: Vec<Value> = nets
        .iter()
        .filter(|g| network_id.is_none_or(|n| g.net.id.to_string() == n))
        .filter_map(|g| g.subnet.as_ref().map(|s| views::private_subnet(g, s, &scope)))
        .collect();
    // Subnets carry no tags in Nimbus: a tag filter matches none.
    if query_one(&q, "tag_key").is_some() || query_one(&q, "tag_key_value").is_some() {
        all.clear();
    } else if query_one(&q, "owned_by") == Some("any") && network_id.is_none_or(|n| n == scope.network_id().to_string())
    {
        all.push(views::instance_subnet(&scope));
    }
    page(all, &q)
}

pub async fn get_subnet(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let scope = r.scope();
    if id == scope.subnet_id().to_string() {
        return Ok(Json(views::instance_subnet(&scope)));
    }
    let not_found = || GcoreError::not_found(format!("Subnet {id} could not be found"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let nets = gcore_networks(&app, &r.ctx).await?;
    let g = by_subnet(&nets, uuid).ok_or_else(not_found)?;
    let s = g.subnet.as_ref().ok_or_else(not_found)?;
    Ok(Json(views::private_subnet(g, s, &scope)))
}

/// The network's range from a subnet's CIDR and gateway: every host of the CIDR but the gateway, which
/// must be the first or the last host (a range is contiguous), or absent (`gateway_ip: null`). Gcore's
/// default gateway, when the body names none, is the first host.
fn range_of(cidr: &str, gateway: Option<&Value>, errors: &mut FieldErrors) -> Option<(AddressRange, Option<Ipv4Addr>)> {
    let bad =
        |errors: &mut FieldErrors| errors.add("cidr", format!("{cidr:?} is not an IPv4 network like 10.0.0.0/24"));
    let Some((addr, prefix)) = cidr.split_once('/') else {
        bad(errors);
        return None;
    };
    let (Ok(addr), Ok(prefix)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u32>()) else {
        bad(errors);
        return None;
    };
    if !(8..=30).contains(&prefix) {
        errors.add("cidr", "Nimbus subnets are from /8 to /30");
        return None;
    }
    let mask = u32::MAX << (32 - prefix);
    let network = u32::from(addr);
    if network & !mask != 0 {
        errors.add(
            "cidr",
            format!("{cidr} has host bits set; the network is {}/{prefix}", Ipv4Addr::from(network & mask)),
        );
        return None;
    }
    let (first, last) = (network + 1, (network | !mask) - 1);
    let gateway = match gateway {
        None => Some(Ipv4Addr::from(first)),
        Some(Value::Null) => None,
        Some(Value::String(g)) => match g.parse::<Ipv4Addr>() {
            Ok(g) if u32::from(g) == first || u32::from(g) == last => Some(g),
            Ok(_) => {
                errors.add("gateway_ip", "The gateway must be the first or the last host of the subnet, or null");
                return None;
            }
            Err(_) => {
                errors.add("gateway_ip", "Input should be a valid IPv4 address");
                return None;
            }
        },
        Some(_) => {
            errors.add("gateway_ip", "Input should be a valid IPv4 address or null");
            return None;
        }
    };
    let (start, end) = match gateway.map(u32::from) {
        Some(g) if g == first => (first + 1, last),
        Some(_) => (first, last - 1),
        None => (first, last),
    };
    if start > end {
        errors.add("cidr", "No address is left for instances beside the gateway");
        return None;
    }
    match AddressRange::new(start.into(), end.into(), mask.into()) {
        Ok(range) => Some((range, gateway)),
        Err(e) => {
            errors.add("cidr", e.to_string());
            None
        }
    }
}

/// Gives a private network its one subnet: the network's range becomes the CIDR's hosts.
pub async fn create_subnet(
    State(app): State<AppState>,
    InRegion(r): InRegion,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    let name = required_str(&map, "name", &mut errors);
    let cidr = required_str(&map, "cidr", &mut errors);
    let network_id = required_str(&map, "network_id", &mut errors);
    let no_nic = "Nimbus private networks are bookkeeping only (no second NIC in the VM): nothing serves";
    only(&map, "enable_dhcp", &[json!(false)], &format!("{no_nic} DHCP; give false or leave it out"), &mut errors);
    only(&map, "dns_nameservers", &[Value::Null, json!([])], &format!("{no_nic} DNS"), &mut errors);
    only(&map, "host_routes", &[Value::Null, json!([])], &format!("{no_nic} routes"), &mut errors);
    only(&map, "ip_version", &[json!(4)], "Nimbus private networks are IPv4", &mut errors);
    only(&map, "connect_to_network_router", &[json!(false)], "Nimbus has no routers", &mut errors);
    only(&map, "router_id_to_connect", &[Value::Null], "Nimbus has no routers", &mut errors);
    only(&map, "tags", &[Value::Null, json!({})], "Subnets carry no tags in Nimbus", &mut errors);
    let range = cidr.and_then(|c| range_of(c, map.get("gateway_ip"), &mut errors));
    errors.check()?;
    let (Some(name), Some(cidr), Some(network_id), Some((range, gateway))) = (name, cidr, network_id, range) else {
        unreachable!("required fields were checked")
    };
    if let Some(e) = instance_network_is_fixed(&r.scope(), network_id) {
        return Err(e);
    }
    let g = find_network(&app, &r, network_id).await?;
    if let Some(s) = &g.subnet {
        return Err(GcoreError::field(
            "network_id",
            format!("Nimbus private networks have one subnet, and network {} has {} ({})", g.net.id, s.id, s.cidr),
        ));
    }
    let subnet_id = views::private_subnet_id(g.net.id);
    let task = nimbus_core::new_id();
    let record = json!({
        "name": name,
        "cidr": cidr,
        "gateway_ip": gateway.map(|g| g.to_string()),
        "created_at": views::rfc3339(nimbus_core::now()),
        "creator_task_id": task,
    });
    let spec = PrivateNetworkSpec { range: Some(Some(range)), ..Default::default() };
    app.engine.update_private_network(&r.ctx, g.net.id, spec).await?;
    app.engine.put_dialect_record(&r.ctx, EXT, SUBNET, g.net.id, &record).await?;
    let done = views::receipt_task(task, "create_subnet", "subnets", &[subnet_id], &r.scope());
    app.engine.put_dialect_record(&r.ctx, EXT, TASK, task, &done).await?;
    Ok(Json(json!({ "tasks": [task] })))
}

/// Takes a private network's subnet away: refused while an instance holds one of its addresses.
pub async fn delete_subnet(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    if let Some(e) = instance_network_is_fixed(&r.scope(), &id) {
        return Err(e);
    }
    let not_found = || GcoreError::not_found(format!("Subnet {id} could not be found"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let nets = gcore_networks(&app, &r.ctx).await?;
    let g = by_subnet(&nets, uuid).ok_or_else(not_found)?;
    if let Some(lease) = g.net.leases.iter().find(|l| l.ip.is_some()) {
        return Err(GcoreError::bad_request(format!(
            "Subnet {id} has an address leased to instance {}: detach its interface first",
            lease.instance_id
        )));
    }
    let spec = PrivateNetworkSpec { range: Some(None), ..Default::default() };
    app.engine.update_private_network(&r.ctx, g.net.id, spec).await?;
    receipt(&app, &r, "delete_subnet", "subnets", &[]).await
}
