//! `POST /cloud/v2/instances`: Gcore's create body (one interface, one boot volume from an image, tags,
//! groups, name templates) translated into the engine's `CreateInstance`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use nimbus_core::labels::Labels;
use nimbus_engine::{CreateInstance, InstancePatch};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::common::{body_object, tasks, InRegion};
use super::errors::{FieldErrors, GcoreResult};
use super::instances::check_tag_text;
use super::views::{Scope, EXT};
use crate::AppState;

/// Create's `tags`: a plain map of user tags.
fn create_tags(v: Option<&Value>, errors: &mut FieldErrors) -> Labels {
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

/// The one interface a Nimbus instance has, as asked; returns its type, name and security groups.
fn parse_interfaces(v: Option<&Value>, scope: &Scope, errors: &mut FieldErrors) -> (String, Option<String>, Vec<Uuid>) {
    let mut out = ("external".to_string(), None, vec![]);
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
    if items.len() > 1 {
        errors.add("interfaces", "Nimbus instances have one network interface");
    }
    let first = &items[0];
    let kind = first.get("type").and_then(Value::as_str).unwrap_or("");
    let network_ok = |key: &str, expected: Uuid, errors: &mut FieldErrors| match first.get(key) {
        Some(v) if uuid_of(v) == Some(expected) => {}
        Some(_) => errors.add(&format!("interfaces.0.{key}"), format!("Unknown {key}; this region has {expected}")),
        None => errors.add(&format!("interfaces.0.{key}"), "Field required"),
    };
    match kind {
        "external" => {}
        "subnet" => {
            network_ok("network_id", scope.network_id(), errors);
            network_ok("subnet_id", scope.subnet_id(), errors);
        }
        "any_subnet" => network_ok("network_id", scope.network_id(), errors),
        "reserved_fixed_ip" => errors.add("interfaces.0.type", "Reserved fixed IPs are not available in Nimbus"),
        other => errors.add(
            "interfaces.0.type",
            format!(
                "Input tag {other:?} does not match any of 'external', 'subnet', 'any_subnet', 'reserved_fixed_ip'"
            ),
        ),
    }
    if first.get("floating_ip").is_some_and(|f| !f.is_null()) {
        errors.add("interfaces.0.floating_ip", "Floating IPs are not available in Nimbus");
    }
    out.0 = kind.to_string();
    out.1 = first.get("interface_name").and_then(Value::as_str).map(str::to_string);
    out.2 = group_refs("interfaces.0.security_groups", first.get("security_groups"), errors);
    out
}

/// The boot volume: its image and size.
fn parse_volumes(v: Option<&Value>, errors: &mut FieldErrors) -> (Option<String>, Option<u64>) {
    let items = match v {
        Some(Value::Array(items)) if !items.is_empty() => items,
        None => {
            errors.add("volumes", "Field required");
            return (None, None);
        }
        _ => {
            errors.add("volumes", "List should have at least 1 item after validation");
            return (None, None);
        }
    };
    if items.len() > 1 {
        errors.add("volumes", "Nimbus instances have one disk: give only the boot volume");
    }
    let boot = &items[0];
    let size = match boot.get("size") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|&s| s > 0) {
            Some(s) => Some(s),
            None => {
                errors.add("volumes.0.size", "Input should be a positive integer");
                None
            }
        },
    };
    match boot.get("source").and_then(Value::as_str) {
        Some("image") => {}
        Some(other) => {
            errors.add("volumes.0.source", format!("Volumes from {other:?} are not available; use source \"image\""));
            return (None, size);
        }
        None => {
            errors.add("volumes.0.source", "Field required");
            return (None, size);
        }
    }
    if boot.get("boot_index").and_then(Value::as_i64).is_some_and(|b| b != 0) {
        errors.add("volumes.0.boot_index", "The one volume is the boot volume (boot_index 0)");
    }
    match boot.get("image_id").and_then(Value::as_str) {
        Some(image) => (Some(image.to_string()), size),
        None => {
            errors.add("volumes.0.image_id", "Field required");
            (None, size)
        }
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
    let (interface_type, interface_name, mut groups) = parse_interfaces(map.get("interfaces"), &scope, &mut errors);
    let (image, size) = parse_volumes(map.get("volumes"), &mut errors);
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
    let (Some(flavor), Some(image)) = (flavor, image) else { unreachable!("required fields were checked") };
    // A template's placeholders need the address, which the create reserves: a placeholder-free name first.
    let final_name = name.clone().or_else(|| name_template.clone());
    let first_name = match (&name, &name_template) {
        (Some(n), _) => n.clone(),
        (None, Some(t)) => fill_name_template(t, "0.0.0.0"),
        (None, None) => format!("instance-{}", &Uuid::new_v4().simple().to_string()[..8]),
    };
    let mut ext = Map::new();
    ext.insert("interface_type".into(), json!(interface_type));
    if let Some(n) = &interface_name {
        ext.insert("interface_name".into(), json!(n));
    }
    let mut extensions = BTreeMap::new();
    extensions.insert(EXT.to_string(), Value::Object(ext));
    let (op, instance) = app
        .engine
        .create_instance(
            &r.ctx,
            CreateInstance {
                name: first_name.clone(),
                instance_type: flavor,
                template: image,
                disk_size_gb: size,
                labels: tags,
                user_data,
                ssh_keys: ssh_key.into_iter().collect(),
                security_groups: groups,
                anti_affinity_groups: servergroup.into_iter().collect(),
                auto_start: true,
                password,
                extensions,
                ..Default::default()
            },
        )
        .await?;
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
