//! `POST /cloud/v2/instances`: Gcore's create body (interfaces, a boot volume from an image and other
//! volumes, `new-volume` or `existing-volume`, that the engine makes or takes and attaches before the first
//! boot; tags, groups, name templates) translated into the engine's `CreateInstance`, then the private networks its
//! interfaces name attached (bookkeeping only: the instance's one real NIC is on the instance network).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use nimbus_core::labels::Labels;
use nimbus_core::networking::ReservedAddress;
use nimbus_engine::{BootVolumeRequest, CreateInstance, InstancePatch, InstanceVolume};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::common::{body_object, tasks, InRegion};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::instances::check_tag_text;
use super::interfaces::refuse_port_options;
use super::networks::gcore_networks;
use super::views::{GcoreNetwork, Scope, EXT};
use crate::AppState;

/// A create's `tags` (instances, networks): a plain map of user tags.
pub(super) fn create_tags(v: Option<&Value>, errors: &mut FieldErrors) -> Labels {
    let mut tags = Labels::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                check_tag_text("key", k, errors);
                match v.as_str() {
                    Some(s) => {
                        check_tag_text("value", s, errors);
                        tags.insert(k.clone(), s.to_string());
                    }
                    None => errors.add("tags", format!("The value of tag {k:?} must be a string")),
                }
            }
        }
        Some(_) => errors.add("tags", "Input should be a valid dictionary"),
    }
    tags
}

fn uuid_of(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| Uuid::parse_str(s).ok())
}

/// `[{"id": uuid}]` security group references.
fn group_refs(field: &str, v: Option<&Value>, errors: &mut FieldErrors) -> Vec<Uuid> {
    match v {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|g| match g.get("id").and_then(uuid_of) {
                Some(id) => Some(id),
                None => {
                    errors.add(field, "Each security group is {\"id\": <uuid>}");
                    None
                }
            })
            .collect(),
        Some(_) => {
            errors.add(field, "Input should be a valid list");
            vec![]
        }
    }
}

/// What the create's `interfaces` ask for: the instance's one real NIC on the instance network (its type
/// and name; `external` when no interface names that network: the instance has the NIC all the same),
/// the security groups given per interface (Nimbus groups apply to the whole instance), and the private
/// networks to attach, each with its static address if one was asked. A `reserved_fixed_ip` interface is
/// the NIC on the instance network with the address of the reservation its `port_id` names, or, when the
/// reservation is of a private network, that network attached with the reservation's address.
#[derive(Default)]
struct Interfaces {
    kind: Option<String>,
    name: Option<String>,
    reserved: Option<Uuid>,
    groups: Vec<Uuid>,
    private: Vec<(Uuid, Option<Ipv4Addr>, Option<String>)>,
    /// `(reservation, its private network, interface name)`.
    private_reserved: Vec<(Uuid, Uuid, Option<String>)>,
}

impl Interfaces {
    fn names_network(&self, network: Uuid) -> bool {
        self.private.iter().any(|(id, _, _)| *id == network)
            || self.private_reserved.iter().any(|(_, id, _)| *id == network)
    }
}

/// `reservations`: the project's reserved fixed IPs, when an interface names one.
fn parse_interfaces(
    v: Option<&Value>,
    scope: &Scope,
    nets: &[GcoreNetwork],
    reservations: &[ReservedAddress],
    errors: &mut FieldErrors,
) -> Interfaces {
    let mut out = Interfaces::default();
    let items = match v {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            errors.add("interfaces", "List should have at least 1 item after validation");
            return out;
        }
        None => {
            errors.add("interfaces", "Field required");
            return out;
        }
        Some(_) => {
            errors.add("interfaces", "Input should be a valid list");
            return out;
        }
    };
    for (n, item) in items.iter().enumerate() {
        let field = |k: &str| format!("interfaces.{n}.{k}");
        let Some(map) = item.as_object() else {
            errors.add(&format!("interfaces.{n}"), "Input should be a valid dictionary");
            continue;
        };
        let kind = map.get("type").and_then(Value::as_str).unwrap_or("");
        let id_of = |key: &str, errors: &mut FieldErrors| match map.get(key) {
            Some(v) => match uuid_of(v) {
                Some(id) => Some(id),
                None => {
                    errors.add(&field(key), "Input should be a valid UUID");
                    None
                }
            },
            None => {
                errors.add(&field(key), "Field required");
                None
            }
        };
        let name = map.get("interface_name").and_then(Value::as_str).map(str::to_string);
        // `None`: the instance network; `Some`: a private network of the project.
        let target: Result<Option<&GcoreNetwork>, ()> = match kind {
            "external" => Ok(None),
            "subnet" => match (id_of("network_id", errors), id_of("subnet_id", errors)) {
                (Some(net), Some(sub)) if net == scope.network_id() && sub == scope.subnet_id() => Ok(None),
                (Some(net), Some(sub)) => match nets.iter().find(|g| g.net.id == net) {
                    Some(g) if g.subnet.as_ref().is_some_and(|s| s.id == sub) => Ok(Some(g)),
                    Some(_) => {
                        errors.add(&field("subnet_id"), format!("Subnet {sub} is not a subnet of network {net}"));
                        Err(())
                    }
                    None => {
                        errors.add(&field("network_id"), format!("Network {net} could not be found"));
                        Err(())
                    }
                },
                _ => Err(()),
            },
            "any_subnet" => match id_of("network_id", errors) {
                Some(net) if net == scope.network_id() => Ok(None),
                Some(net) => match nets.iter().find(|g| g.net.id == net) {
                    Some(g) if g.subnet.is_some() => Ok(Some(g)),
                    Some(_) => {
                        errors
                            .add(&field("network_id"), format!("Network {net} has no subnet to take an address from"));
                        Err(())
                    }
                    None => {
                        errors.add(&field("network_id"), format!("Network {net} could not be found"));
                        Err(())
                    }
                },
                None => Err(()),
            },
            "reserved_fixed_ip" => match id_of("port_id", errors) {
                Some(port) => match reservations.iter().find(|r| r.id == port) {
                    Some(r) if r.is_vip => {
                        let why =
                            format!("Reserved fixed IP {port} is a VIP: connect the instance's port to it instead");
                        errors.add(&field("port_id"), why);
                        Err(())
                    }
                    Some(r) if r.network_id.is_some() => {
                        let network = r.network_id.unwrap_or_default();
                        // Checked now so that no instance is made for an attach bound to fail.
                        if let Some(holder) = r.instance_id {
                            errors.add(
                                &field("port_id"),
                                format!("Reserved fixed IP {port} is in use by instance {holder}"),
                            );
                        }
                        if out.names_network(network) {
                            errors.add(&field("port_id"), format!("Network {network} is named twice"));
                        }
                        out.private_reserved.push((port, network, name.clone()));
                        Err(())
                    }
                    // The instance network's, or unknown (the engine's create says so).
                    _ => {
                        out.reserved = Some(port);
                        Ok(None)
                    }
                },
                None => Err(()),
            },
            other => {
                errors.add(
                    &field("type"),
                    format!(
                        "Input tag {other:?} does not match any of 'external', 'subnet', 'any_subnet', \
                         'reserved_fixed_ip'"
                    ),
                );
                Err(())
            }
        };
        if map.get("floating_ip").is_some_and(|f| !f.is_null()) {
            errors.add(&field("floating_ip"), "Floating IPs are not available in Nimbus");
        }
        refuse_port_options(map, &format!("interfaces.{n}."), errors);
        out.groups.extend(group_refs(&field("security_groups"), map.get("security_groups"), errors));
        // `ip_address` is `any_subnet`'s: a static address on a private network.
        let ip = match map.get("ip_address") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                Some(ip) if kind == "any_subnet" => Some(ip),
                Some(_) => {
                    errors.add(&field("ip_address"), "Only an any_subnet interface takes an ip_address");
                    None
                }
                None => {
                    errors.add(&field("ip_address"), "Input should be a valid IPv4 address");
                    None
                }
            },
        };
        match target {
            Err(()) => {}
            Ok(None) => {
                if ip.is_some() {
                    errors.add(&field("ip_address"), "Nimbus allocates the instance network's addresses itself");
                }
                if out.kind.is_some() {
                    errors.add(&field("type"), "A Nimbus instance has one interface on the instance network");
                }
                out.kind = Some(kind.to_string());
                out.name = name;
            }
            Ok(Some(g)) => {
                if out.names_network(g.net.id) {
                    errors.add(&field("network_id"), format!("Network {} is named twice", g.net.id));
                }
                // Checked now so that a refused address leaves no instance behind (the attach after the
                // create checks again, under the engine's lock).
                if let Err(e) = g.net.choose_ip(Uuid::nil(), ip) {
                    let message = match e {
                        nimbus_core::DomainError::Invalid { message, .. } => message,
                        other => other.to_string(),
                    };
                    errors.add(&field("ip_address"), message);
                }
                out.private.push((g.net.id, ip, name));
            }
        }
    }
    out
}

/// What the create's `volumes` ask for: the boot volume (its image and size, made as the instance's own
/// disk, or as a volume that outlives it when `delete_on_termination` is false; or an existing volume with
/// `boot_index` 0), and the other volumes, each with its index in the body (for the engine's refusals).
#[derive(Default)]
struct Volumes {
    image: Option<String>,
    size: Option<u64>,
    /// The boot volume, when it is a volume rather than the instance's own disk.
    boot: Option<BootVolumeRequest>,
    /// `(index in the body, the volume)`; a new volume's name is filled in once the instance's is known.
    others: Vec<(usize, OtherVolume)>,
}

enum OtherVolume {
    Existing(Uuid),
    New { name: Option<String>, size: u64, tags: Labels },
}

fn parse_volumes(v: Option<&Value>, errors: &mut FieldErrors) -> Volumes {
    let mut out = Volumes::default();
    let items = match v {
        Some(Value::Array(items)) if !items.is_empty() => items,
        None => {
            errors.add("volumes", "Field required");
            return out;
        }
        _ => {
            errors.add("volumes", "List should have at least 1 item after validation");
            return out;
        }
    };
    let mut boot_seen = false;
    for (n, item) in items.iter().enumerate() {
        let field = |k: &str| format!("volumes.{n}.{k}");
        let Some(map) = item.as_object() else {
            errors.add(&format!("volumes.{n}"), "Input should be a valid dictionary");
            continue;
        };
        let size = match map.get("size") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().filter(|&s| s > 0) {
                Some(s) => Some(s),
                None => {
                    errors.add(&field("size"), "Input should be a positive integer");
                    None
                }
            },
        };
        let boot_index = map.get("boot_index").and_then(Value::as_i64);
        if let Some(t) = map.get("type_name").and_then(Value::as_str).filter(|t| *t != "standard") {
            errors.add(&field("type_name"), format!("Nimbus has one volume type, 'standard', not {t:?}"));
        }
        if map.get("attachment_tag").is_some_and(|t| !t.is_null()) {
            errors.add(&field("attachment_tag"), "Attachment tags are not available in Nimbus");
        }
        let source = map.get("source").and_then(Value::as_str);
        let delete_on_termination = map.get("delete_on_termination").and_then(Value::as_bool);
        let name = match map.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.add(&field("name"), "Input should be a valid string");
                None
            }
        };
        let boots = source == Some("image") || (source == Some("existing-volume") && boot_index == Some(0));
        // The boot volume may go with its instance; no other volume does.
        if !boots && delete_on_termination == Some(true) {
            errors.add(
                &field("delete_on_termination"),
                "Nimbus keeps volumes when their instance is deleted: name them in the delete's `volumes` instead",
            );
        }
        match source {
            Some("image") => {
                if boot_seen {
                    errors.add(&field("source"), "Nimbus instances boot from one image volume");
                }
                boot_seen = true;
                if boot_index.is_some_and(|b| b != 0) {
                    errors.add(&field("boot_index"), "The image volume is the boot volume (boot_index 0)");
                }
                out.size = size;
                if delete_on_termination == Some(false) {
                    // Kept when the instance goes: a volume of its own, bootable again.
                    out.boot = Some(BootVolumeRequest { existing: None, name, delete_on_termination: false });
                }
                match map.get("image_id").and_then(Value::as_str) {
                    Some(image) => out.image = Some(image.to_string()),
                    None => errors.add(&field("image_id"), "Field required"),
                }
            }
            Some("new-volume") => {
                let Some(size) = size else {
                    if map.get("size").is_none_or(|v| v.is_null()) {
                        errors.add(&field("size"), "Field required");
                    }
                    continue;
                };
                let mut tag_errors = FieldErrors::default();
                let tags = create_tags(map.get("tags"), &mut tag_errors);
                if !tag_errors.is_empty() {
                    errors.add(&field("tags"), "Tags are a map of strings");
                }
                out.others.push((n, OtherVolume::New { name, size, tags }));
            }
            Some("existing-volume") => match map.get("volume_id").map(uuid_of) {
                Some(Some(id)) if boot_index == Some(0) => {
                    if boot_seen {
                        errors.add(&field("boot_index"), "Nimbus instances boot from one volume");
                    }
                    boot_seen = true;
                    let delete_on_termination = delete_on_termination.unwrap_or(false);
                    out.boot = Some(BootVolumeRequest { existing: Some(id), name: None, delete_on_termination });
                }
                Some(Some(id)) => out.others.push((n, OtherVolume::Existing(id))),
                Some(None) => errors.add(&field("volume_id"), "Input should be a valid UUID"),
                None => errors.add(&field("volume_id"), "Field required"),
            },
            Some(other @ ("snapshot" | "apptemplate")) => {
                errors.add(&field("source"), format!("Volumes from {other:?} are not available in Nimbus"))
            }
            Some(other) => errors.add(
                &field("source"),
                format!(
                    "Input tag {other:?} does not match any of 'image', 'new-volume', 'existing-volume', 'snapshot', \
                     'apptemplate'"
                ),
            ),
            None => errors.add(&field("source"), "Field required"),
        }
        if !boots && boot_index == Some(0) {
            errors.add(
                &field("boot_index"),
                "Nimbus instances boot from an image or an existing volume; new volumes take a negative or no \
                 boot_index",
            );
        }
    }
    if !boot_seen {
        errors.add("volumes", "A boot volume (source 'image', or an 'existing-volume' with boot_index 0) is required");
    }
    out
}

/// An engine refusal that names `volumes.<k>` (the k-th volume beside the boot one) named as in the body.
fn volume_field_in_body(e: nimbus_core::DomainError, others: &[(usize, OtherVolume)]) -> nimbus_core::DomainError {
    match e {
        nimbus_core::DomainError::Invalid { field, message } => {
            let renamed = field
                .strip_prefix("volumes.")
                .and_then(|rest| rest.split_once('.').or(Some((rest, ""))))
                .and_then(|(k, tail)| {
                    let body = others.get(k.parse::<usize>().ok()?)?.0;
                    Some(if tail.is_empty() { format!("volumes.{body}") } else { format!("volumes.{body}.{tail}") })
                })
                .map(|f| f.replace(".size_gb", ".size").replace(".labels", ".tags"));
            nimbus_core::DomainError::Invalid { field: renamed.unwrap_or(field), message }
        }
        other => other,
    }
}

/// `name_template`'s placeholders filled from the instance's address.
fn fill_name_template(template: &str, address: &str) -> String {
    let octets: Vec<&str> = address.split('.').collect();
    let last = |n: usize| octets[octets.len().saturating_sub(n)..].join("-");
    template.replace("{ip_octets}", &last(4)).replace("{two_ip_octets}", &last(2)).replace("{one_ip_octet}", &last(1))
}

pub async fn create(State(app): State<AppState>, InRegion(r): InRegion, body: Bytes) -> GcoreResult<Json<Value>> {
    let map = body_object(&body)?;
    let mut errors = FieldErrors::default();
    let flavor = match map.get("flavor") {
        Some(Value::String(f)) => Some(f.clone()),
        Some(_) => {
            errors.add("flavor", "Input should be a valid string");
            None
        }
        None => {
            errors.add("flavor", "Field required");
            None
        }
    };
    let scope = r.scope();
    let nets = gcore_networks(&app, &r.ctx).await?;
    // The reservations the interfaces name (an unknown one is the engine create's to refuse).
    let named: Vec<Uuid> = map
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| i.get("type").and_then(Value::as_str) == Some("reserved_fixed_ip"))
        .filter_map(|i| i.get("port_id").and_then(uuid_of))
        .collect();
    let mut reservations = Vec::new();
    for id in named {
        match app.engine.reserved_address(&r.ctx, id).await {
            Ok(found) => reservations.push(found),
            Err(nimbus_core::DomainError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let interfaces = parse_interfaces(map.get("interfaces"), &scope, &nets, &reservations, &mut errors);
    let mut groups = interfaces.groups.clone();
    let volumes = parse_volumes(map.get("volumes"), &mut errors);
    let (image, size) = (volumes.image.clone(), volumes.size);
    let legacy_groups = group_refs("security_groups", map.get("security_groups"), &mut errors);
    if !legacy_groups.is_empty() && !groups.is_empty() {
        errors.add("security_groups", "Give security groups either per interface or for the instance, not both");
    }
    groups.extend(legacy_groups);
    let tags = create_tags(map.get("tags"), &mut errors);
    let string = |key: &str, errors: &mut FieldErrors| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add(key, "Input should be a valid string");
            None
        }
    };
    let name = string("name", &mut errors);
    let name_template = string("name_template", &mut errors);
    let ssh_key = string("ssh_key_name", &mut errors);
    let user_data = string("user_data", &mut errors);
    // The password is the template's default user's: a username, if given, must be that user.
    let password = string("password", &mut errors);
    if let (Some(user), Some(image)) = (string("username", &mut errors), &image) {
        if let Ok(t) = app.engine.template(&r.ctx, image).await {
            if t.default_user != user {
                errors.add("username", format!("Image {} has one user, {:?}", t.name, t.default_user));
            }
        }
    }
    let servergroup = string("servergroup_id", &mut errors);
    let servergroup = servergroup.and_then(|s| match Uuid::parse_str(&s) {
        Ok(id) => Some(id),
        Err(_) => {
            errors.add("servergroup_id", "Input should be a valid UUID");
            None
        }
    });
    if let Some(f) = &flavor {
        if app.engine.instance_type(f).await.is_err() {
            errors.add("flavor", format!("Flavor {f} could not be found"));
        }
    }
    errors.check()?;
    let Some(flavor) = flavor else { unreachable!("required fields were checked") };
    // A template's placeholders need the address, which the create reserves: a placeholder-free name first.
    let final_name = name.clone().or_else(|| name_template.clone());
    let first_name = match (&name, &name_template) {
        (Some(n), _) => n.clone(),
        (None, Some(t)) => fill_name_template(t, "0.0.0.0"),
        (None, None) => format!("instance-{}", &Uuid::new_v4().simple().to_string()[..8]),
    };
    let mut ext = Map::new();
    ext.insert("interface_type".into(), json!(interfaces.kind.as_deref().unwrap_or("external")));
    if let Some(n) = &interfaces.name {
        ext.insert("interface_name".into(), json!(n));
    }
    // The reservation is the port: the instance's NIC shows its id.
    if let Some(port) = interfaces.reserved {
        ext.insert("port_id".into(), json!(port));
    }
    let names: Map<String, Value> = interfaces
        .private
        .iter()
        .map(|(id, _, name)| (id, name))
        .chain(interfaces.private_reserved.iter().map(|(_, id, name)| (id, name)))
        .filter_map(|(id, name)| name.as_ref().map(|n| (id.to_string(), json!(n))))
        .collect();
    if !names.is_empty() {
        ext.insert("interface_names".into(), Value::Object(names));
    }
    let mut extensions = BTreeMap::new();
    extensions.insert(EXT.to_string(), Value::Object(ext));
    let engine_volumes = volumes
        .others
        .iter()
        .map(|(n, v)| match v {
            OtherVolume::Existing(id) => InstanceVolume::Existing(*id),
            OtherVolume::New { name, size, tags } => InstanceVolume::New {
                name: name.clone().unwrap_or_else(|| format!("{first_name}-volume-{n}")),
                size_gb: *size,
                labels: tags.clone(),
            },
        })
        .collect();
    let (op, instance) = app
        .engine
        .create_instance(
            &r.ctx,
            CreateInstance {
                name: first_name.clone(),
                instance_type: flavor,
                // None when booting from an existing volume, which brings its own.
                template: image.unwrap_or_default(),
                disk_size_gb: size,
                labels: tags,
                user_data,
                ssh_keys: ssh_key.into_iter().collect(),
                security_groups: groups,
                anti_affinity_groups: servergroup.into_iter().collect(),
                auto_start: true,
                password,
                extensions,
                volumes: engine_volumes,
                boot_volume: volumes.boot.clone(),
                reserved_address: interfaces.reserved,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match e {
            nimbus_core::DomainError::Invalid { field, .. } if field == "reserved_address" => GcoreError::not_found(
                format!("Reserved fixed IP {} could not be found", interfaces.reserved.unwrap_or_default()),
            ),
            e => volume_field_in_body(e, &volumes.others).into(),
        })?;
    // Private networks are attached once the instance exists (bookkeeping only: no second NIC). The
    // addresses were checked above; one taken in between fails here, after the create was accepted.
    let attach_failed = |network: Uuid| {
        move |e: nimbus_core::DomainError| {
            let mut e = GcoreError::from(e);
            e.message =
                format!("Instance {} was created, but attaching network {network} failed: {}", instance.id, e.message);
            e
        }
    };
    for (network, ip, _) in &interfaces.private {
        app.engine
            .attach_private_network(&r.ctx, *network, instance.id, *ip, false)
            .await
            .map_err(attach_failed(*network))?;
    }
    for (reservation, network, _) in &interfaces.private_reserved {
        app.engine
            .attach_reserved_address(&r.ctx, *reservation, instance.id, &Default::default())
            .await
            .map_err(attach_failed(*network))?;
    }
    if name.is_none() {
        if let (Some(template), Some(address)) = (&final_name, instance.ip_addresses.first()) {
            let filled = fill_name_template(template, address);
            if filled != first_name {
                let patch = InstancePatch { name: Some(filled), ..Default::default() };
                app.engine.update_instance(&r.ctx, instance.id, patch, None).await?;
            }
        }
    }
    Ok(tasks(&[&op]))
}
