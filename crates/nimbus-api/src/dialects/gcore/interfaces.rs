//! The instance's network interfaces: its one real NIC, on the zone's instance network, and one interface
//! per private network it is attached to. The latter are the core's leases: bookkeeping only, the VM gets
//! no second NIC, so nothing in the guest carries the address they show.
//!
//! `attach_interface` (types `subnet` and `any_subnet` on a private network, and `reserved_fixed_ip` with
//! a private network's reservation) and `detach_interface` are the engine's private-network attach and
//! detach, done at request time and answered with a FINISHED task. An `external` interface, or a second one on the instance network, has no counterpart: the
//! instance has exactly one NIC, made with it.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use nimbus_engine::Extensions;
use serde_json::{json, Value};
use uuid::Uuid;

use super::common::{optional_str, page, query_pairs, required_str, BodyMap, OneInstance};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::networks::{by_subnet, gcore_networks, receipt};
use super::views::{self, EXT};
use crate::AppState;

pub async fn list(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let scope = r.scope();
    // The VIPs the instance shares, by network (`None`: the instance network): its port there allows them.
    let vips: Vec<_> = app.engine.list_reserved_addresses(&r.ctx).await?;
    let vips = vips.iter().filter(|v| v.is_vip && v.connected.contains(&instance.id));
    let pairs = |network: Option<Uuid>| -> Value {
        let on = vips.clone().filter(|v| v.network_id == network);
        on.map(|v| json!({"ip_address": v.ip.to_string(), "mac_address": null})).collect()
    };
    let mut nic = views::interface(&instance, &scope);
    nic["allowed_address_pairs"] = pairs(None);
    let mut all = vec![nic];
    for g in gcore_networks(&app, &r.ctx).await? {
        if let Some(lease) = g.net.lease_of(instance.id).filter(|_| instance.private_networks.contains(&g.net.id)) {
            let mut nic = views::private_interface(&instance, &g, lease, &scope);
            nic["allowed_address_pairs"] = pairs(Some(g.net.id));
            all.push(nic);
        }
    }
    page(all, &query_pairs(&uri))
}

/// What an instance records about its interface on a private network: the name the user gave it (`None`:
/// none, forgotten), written with the attachment.
fn interface_name(network_id: Uuid, name: Option<&str>) -> Extensions {
    Extensions::from([(EXT.to_string(), json!({"interface_names": {network_id.to_string(): name}}))])
}

/// Fields of an interface Nimbus has no counterpart for, refused unless empty.
pub(super) fn refuse_port_options(item: &serde_json::Map<String, Value>, prefix: &str, errors: &mut FieldErrors) {
    let set = |k: &str| item.get(k).is_some_and(|v| !v.is_null() && v != &json!([]));
    if set("ddos_profile") {
        errors.add(&format!("{prefix}ddos_profile"), "DDoS protection is not available in Nimbus");
    }
    if set("port_group") {
        errors.add(&format!("{prefix}port_group"), "Trunk ports are not available in Nimbus");
    }
    if item.get("ip_family").and_then(Value::as_str).is_some_and(|f| f != "ipv4") {
        errors.add(&format!("{prefix}ip_family"), "Nimbus networks are IPv4");
    }
}

pub async fn attach(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    refuse_port_options(&map, "", &mut errors);
    if map.get("security_groups").is_some_and(|v| !v.is_null() && v != &json!([])) {
        errors.add("security_groups", "Nimbus security groups apply to the instance (addsecuritygroup), not a port");
    }
    let name = optional_str(&map, "interface_name", &mut errors);
    let scope = r.scope();
    let one_nic = "A Nimbus instance has one NIC, on the instance network, made with it; other interfaces are \
                   private networks (type subnet or any_subnet)";
    let nets = gcore_networks(&app, &r.ctx).await?;
    let kind = map.get("type").and_then(Value::as_str).unwrap_or("external");
    let target = match kind {
        "external" => {
            errors.add("type", one_nic);
            None
        }
        "subnet" => match required_str(&map, "subnet_id") {
            Ok(id) if id == scope.subnet_id().to_string() => {
                errors.add("subnet_id", one_nic);
                None
            }
            Ok(id) => match Uuid::parse_str(id).ok().and_then(|u| by_subnet(&nets, u)) {
                Some(g) => Some(g),
                None => return Err(GcoreError::not_found(format!("Subnet {id} could not be found"))),
            },
            Err(e) => return Err(e),
        },
        "any_subnet" => match required_str(&map, "network_id") {
            Ok(id) if id == scope.network_id().to_string() => {
                errors.add("network_id", one_nic);
                None
            }
            Ok(id) => match nets.iter().find(|g| g.net.id.to_string() == id) {
                Some(g) if g.subnet.is_none() => {
                    errors.add("network_id", format!("Network {id} has no subnet to take an address from"));
                    None
                }
                Some(g) => Some(g),
                None => return Err(GcoreError::not_found(format!("Network {id} could not be found"))),
            },
            Err(e) => return Err(e),
        },
        "reserved_fixed_ip" => {
            let port = required_str(&map, "port_id")?;
            let not_found = || GcoreError::not_found(format!("Reserved fixed IP {port} could not be found"));
            let id = Uuid::parse_str(port).map_err(|_| not_found())?;
            let reserved = app.engine.reserved_address(&r.ctx, id).await.map_err(|_| not_found())?;
            match reserved.network_id.and_then(|n| nets.iter().find(|g| g.net.id == n)) {
                Some(g) => {
                    errors.check()?;
                    let named = name.map(|n| interface_name(g.net.id, Some(n))).unwrap_or_default();
                    app.engine.attach_reserved_address(&r.ctx, id, instance.id, &named).await?;
                    return receipt(&app, &r, "attach_interface", "ports", &[id]).await;
                }
                None => {
                    errors.add(
                        "port_id",
                        "This reserved fixed IP is of the instance network, the address of an instance's one NIC: \
                         create the instance with it",
                    );
                    None
                }
            }
        }
        other => {
            errors.add(
                "type",
                format!(
                    "Input tag {other:?} does not match any of 'external', 'subnet', 'any_subnet', 'reserved_fixed_ip'"
                ),
            );
            None
        }
    };
    errors.check()?;
    let Some(g) = target else { unreachable!("a missing target was reported") };
    let named = name.map(|n| interface_name(g.net.id, Some(n))).unwrap_or_default();
    app.engine.attach_private_network_with(&r.ctx, g.net.id, instance.id, None, false, &named).await?;
    receipt(&app, &r, "attach_interface", "ports", &[views::private_port_id(instance.id, g.net.id)]).await
}

/// Detaches the instance from the private network of `port_id`; `ip_address` must be the port's.
pub async fn detach(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    let port = required_str(&map, "port_id").map_err(|e| errors.add("port_id", e.message)).ok();
    let ip = required_str(&map, "ip_address").map_err(|e| errors.add("ip_address", e.message)).ok();
    errors.check()?;
    let (Some(port), Some(ip)) = (port, ip) else { unreachable!("required fields were checked") };
    if port == views::port_id(&instance).to_string() {
        return Err(GcoreError::bad_request(
            "This is the instance's one NIC, on the instance network: it lives and dies with the instance",
        ));
    }
    let nets = gcore_networks(&app, &r.ctx).await?;
    let attached = nets.iter().find_map(|g| {
        let lease = g.net.lease_of(instance.id)?;
        (views::lease_port_id(instance.id, g, lease).to_string() == port).then_some((g, lease))
    });
    let Some((g, lease)) = attached else {
        return Err(GcoreError::not_found(format!("Port {port} of instance {} could not be found", instance.id)));
    };
    if let Some(held) = lease.ip.filter(|held| held.to_string() != ip) {
        return Err(GcoreError::field("ip_address", format!("Port {port} holds {held}, not {ip}")));
    }
    let named = views::private_interface_name(&instance, g.net.id).map(|_| interface_name(g.net.id, None));
    app.engine.detach_private_network_with(&r.ctx, g.net.id, instance.id, &named.unwrap_or_default()).await?;
    receipt(&app, &r, "detach_interface", "ports", &[]).await
}
