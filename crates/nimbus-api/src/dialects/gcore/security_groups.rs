//! Gcore's security groups (`/cloud/v1/securitygroups`, create and update under `/cloud/v2/security_groups`)
//! on the core's security groups, so a Gcore user never needs the native API for them.
//!
//! The core changes a group at once. Create answers a task, as Gcore does: the task is the group itself (the
//! same id, always FINISHED, naming the group in `created_resources`). Update answers an empty task list,
//! which is Gcore's answer when nothing is left to do in the background. Groups carry no tags in Nimbus:
//! tags that would set one are refused.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use nimbus_core::resources::{SecurityGroup, SecurityGroupRule};
use serde_json::{json, Value};

use super::common::{
    body_object, found, optional_str, page, query_one, query_pairs, BodyMap, InRegion, Region, RegionItem,
};
use super::errors::{FieldErrors, GcoreResult};
use super::views::{self, ANY_PROTOCOL};
use crate::AppState;

/// The group of the path.
async fn find_group(app: &AppState, r: &Region, id: &str) -> GcoreResult<SecurityGroup> {
    found("Security group", id, |id| app.engine.security_group(&r.ctx, id)).await
}

/// Gcore's rules (`direction`, `protocol`, `port_range_min`/`max`, `remote_ip_prefix`, `description`) as the
/// core's. Nimbus networks are IPv4 and rules name networks, not other groups.
fn parse_rules(v: &Value, errors: &mut FieldErrors) -> Vec<SecurityGroupRule> {
    let Some(items) = v.as_array() else {
        errors.add("rules", "Input should be a valid list");
        return vec![];
    };
    let mut rules = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let field = |k: &str| format!("rules.{n}.{k}");
        let direction = match item.get("direction").and_then(Value::as_str) {
            Some(d @ ("ingress" | "egress")) => d.to_string(),
            _ => {
                errors.add(&field("direction"), "Input should be 'egress' or 'ingress'");
                continue;
            }
        };
        if item.get("ethertype").and_then(Value::as_str).is_some_and(|e| e != "IPv4") {
            errors.add(&field("ethertype"), "Nimbus networks are IPv4");
        }
        if item.get("remote_group_id").is_some_and(|g| !g.is_null()) {
            errors.add(&field("remote_group_id"), "Rules name networks (remote_ip_prefix), not other groups");
        }
        let port = |k: &str, errors: &mut FieldErrors| match item.get(k) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) {
                Some(p) => Some(p),
                None => {
                    errors.add(&field(k), "Input should be a port between 1 and 65535");
                    None
                }
            },
        };
        let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_string);
        rules.push(SecurityGroupRule {
            id: nimbus_core::new_id(),
            flow_direction: direction,
            protocol: text("protocol").unwrap_or_else(|| ANY_PROTOCOL.into()),
            start_port: port("port_range_min", errors),
            end_port: port("port_range_max", errors),
            network: text("remote_ip_prefix"),
            description: text("description").unwrap_or_default(),
            security_group: None,
            icmp_type: None,
            icmp_code: None,
        });
    }
    rules
}

/// Gcore's default template when a create names no rules: everything in and out.
fn default_rules() -> Vec<SecurityGroupRule> {
    ["ingress", "egress"]
        .into_iter()
        .map(|d| SecurityGroupRule {
            id: nimbus_core::new_id(),
            flow_direction: d.into(),
            protocol: ANY_PROTOCOL.into(),
            start_port: None,
            end_port: None,
            network: None,
            description: String::new(),
            security_group: None,
            icmp_type: None,
            icmp_code: None,
        })
        .collect()
}

/// Tags that would set a value are refused (groups have none); `null`, `{}` and deletions change nothing.
fn refuse_tags(v: Option<&Value>, errors: &mut FieldErrors) {
    if let Some(Value::Object(m)) = v {
        if m.values().any(|v| !v.is_null()) {
            errors.add("tags", "Security groups carry no tags in Nimbus");
        }
    }
}

pub async fn list(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let name = query_one(&q, "name");
    // No group has tags: a tag filter matches none.
    let tag_filter = query_one(&q, "tag_key").is_some() || query_one(&q, "tag_key_value").is_some();
    let scope = r.scope();
    let all = app
        .engine
        .list_security_groups(&r.ctx)
        .await?
        .iter()
        .filter(|g| name.is_none_or(|n| g.name == n) && !tag_filter)
        .map(|g| views::security_group(g, &scope))
        .collect();
    page(all, &q)
}

pub async fn get(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let group = find_group(&app, &r, &id).await?;
    Ok(Json(views::security_group(&group, &r.scope())))
}

pub async fn create(
    State(app): State<AppState>,
    InRegion(r): InRegion,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    let name = optional_str(&map, "name", &mut errors);
    if name.is_none() {
        errors.add("name", "Field required");
    }
    let description = optional_str(&map, "description", &mut errors).unwrap_or_default();
    let rules = match map.get("rules") {
        None => default_rules(),
        Some(v) => parse_rules(v, &mut errors),
    };
    refuse_tags(map.get("tags"), &mut errors);
    errors.check()?;
    let name = name.unwrap_or_default();
    let group = app.engine.create_security_group(&r.ctx, name, description, rules).await?;
    Ok(Json(json!({ "tasks": [group.id] })))
}

pub async fn update(
    State(app): State<AppState>,
    RegionItem(r, id): RegionItem,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    let group = find_group(&app, &r, &id).await?;
    let map = body_object(&body)?;
    let mut errors = FieldErrors::default();
    let name = optional_str(&map, "name", &mut errors);
    let description = optional_str(&map, "description", &mut errors);
    // The rules given are the whole new set; a rule that was there already keeps its id.
    let rules = map.get("rules").filter(|v| !v.is_null()).map(|v| {
        let mut rules = parse_rules(v, &mut errors);
        for rule in &mut rules {
            let same = |o: &&SecurityGroupRule| SecurityGroupRule { id: o.id, ..rule.clone() } == **o;
            if let Some(old) = group.rules.iter().find(same) {
                rule.id = old.id;
            }
        }
        rules
    });
    refuse_tags(map.get("tags"), &mut errors);
    errors.check()?;
    app.engine.update_security_group(&r.ctx, group.id, name, description, rules).await?;
    Ok(Json(json!({ "tasks": [] })))
}

pub async fn delete(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<StatusCode> {
    let group = find_group(&app, &r, &id).await?;
    app.engine.delete_security_group(&r.ctx, group.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
