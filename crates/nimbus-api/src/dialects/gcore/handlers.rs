//! Gcore's instance endpoints and tasks. Each one authenticates (`Authorization: APIKey <secret>`), checks
//! that the path's integer project and region ids are the key's project and this server's zone, translates
//! the request into engine calls and renders Gcore's objects. Background work answers `{"tasks": [id]}`
//! at once; the task is the engine's operation.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::Json;
use nimbus_core::catalog::Zone;
use nimbus_core::instance::Instance;
use nimbus_core::labels::Labels;
use nimbus_core::operation::{Operation, OperationState};
use nimbus_core::state_machine::Action;
use nimbus_core::DomainError;
use nimbus_engine::{ActionRequest, Context, CreateInstance, InstanceFilter, InstancePatch};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::views::{self, InstanceContext, Scope, EXT};
use crate::auth::{actor_of, credential};
use crate::AppState;

const MAX_TAG_LEN: usize = 255;
/// The task list's page when the client names none, and the largest it may ask for.
const DEFAULT_TASK_PAGE: usize = 10;
const MAX_TASK_PAGE: usize = 1000;

/// A caller authenticated by `Authorization: APIKey <secret>` (the scheme in any case).
pub struct GcoreCaller(pub Context);

impl FromRequestParts<AppState> for GcoreCaller {
    type Rejection = GcoreError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let secret = credential(&parts.headers, "APIKey").ok_or_else(GcoreError::missing_credentials)?;
        match state.engine.authenticate_secret(secret, actor_of(parts)).await {
            Ok(ctx) => Ok(GcoreCaller(ctx)),
            Err(DomainError::Unauthenticated(_)) => Err(GcoreError::invalid_key()),
            Err(e) => Err(e.into()),
        }
    }
}

/// What every request under a project and region needs: the caller, and the zone the region stands for.
struct Region {
    ctx: Context,
    zone: Zone,
    cidr: String,
}

impl Region {
    fn scope(&self) -> Scope<'_> {
        Scope { project_id: self.ctx.project.numeric_id, zone: &self.zone, network_cidr: &self.cidr }
    }
}

/// The path's project and region must be the key's project and this server's zone; any other looks like
/// nothing at all.
async fn region(app: &AppState, ctx: Context, project_id: &str, region_id: &str) -> GcoreResult<Region> {
    if project_id.parse::<i64>().ok() != Some(ctx.project.numeric_id) {
        return Err(GcoreError::not_found(format!("Project {project_id} could not be found")));
    }
    let zone = app.engine.zone().await?;
    if region_id.parse::<i64>().ok() != Some(zone.numeric_id) {
        return Err(GcoreError::not_found(format!("Region {region_id} could not be found")));
    }
    Ok(Region { ctx, zone, cidr: app.engine.config().network_cidr.clone() })
}

fn instance_id(id: &str) -> GcoreResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| GcoreError::instance_not_found(id))
}

/// The instance of the path; an id that is no instance of the project is not found.
async fn find(app: &AppState, r: &Region, id: &str) -> GcoreResult<Instance> {
    app.engine.instance(&r.ctx, instance_id(id)?).await.map_err(|e| match e {
        DomainError::NotFound { .. } => GcoreError::instance_not_found(id),
        other => other.into(),
    })
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn query_all<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

fn query_usize(pairs: &[(String, String)], key: &str) -> GcoreResult<Option<usize>> {
    query_one(pairs, key)
        .map(|v| v.parse::<usize>().map_err(|_| GcoreError::field(key, "Input should be a valid integer")))
        .transpose()
}

fn query_bool(pairs: &[(String, String)], key: &str) -> bool {
    query_one(pairs, key).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The JSON body as an object (an empty body is an empty object).
fn body_object(body: &Bytes) -> GcoreResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GcoreError::field("body", "Input should be a valid dictionary")),
        Err(e) => Err(GcoreError::field("body", format!("Invalid JSON: {e}"))),
    }
}

/// Renders instances, reading what they share (the lock holders, security group names) once.
struct Renderer<'a> {
    app: &'a AppState,
    region: &'a Region,
    group_names: BTreeMap<Uuid, String>,
}

impl<'a> Renderer<'a> {
    async fn new(app: &'a AppState, region: &'a Region) -> GcoreResult<Renderer<'a>> {
        let groups = app.engine.list_security_groups(&region.ctx).await?;
        Ok(Renderer { app, region, group_names: groups.into_iter().map(|g| (g.id, g.name)).collect() })
    }

    async fn render(&self, i: &Instance) -> GcoreResult<Value> {
        let ctx = &self.region.ctx;
        let lock = match i.lock_operation_id {
            Some(op) => self.app.engine.operation(ctx, op).await.ok(),
            None => None,
        };
        // The instance's first operation is the one that created it (operation ids are time-ordered).
        let first = self.app.engine.list_operations(ctx, Some(i.id), 1, None).await?;
        let creator_task_id = first.items.first().filter(|op| op.kind == Action::Create).map(|op| op.id);
        let scope = self.region.scope();
        let c = InstanceContext {
            scope: &scope,
            lock: lock.as_ref(),
            creator_task_id,
            security_group_names: i.security_groups.iter().filter_map(|g| self.group_names.get(g).cloned()).collect(),
        };
        Ok(views::instance(i, &c))
    }
}

fn tasks(ops: &[&Operation]) -> Json<Value> {
    Json(json!({ "tasks": ops.iter().map(|op| op.id).collect::<Vec<_>>() }))
}

// Instances

/// Every instance of the project, oldest first (the engine pages by id, which is time-ordered).
async fn all_instances(app: &AppState, ctx: &Context) -> GcoreResult<Vec<Instance>> {
    let mut all = Vec::new();
    let mut page_token = None;
    loop {
        let page = app
            .engine
            .list_instances(ctx, InstanceFilter { limit: Some(1000), page_token, ..Default::default() })
            .await?;
        all.extend(page.items);
        match page.next_page_token {
            Some(t) => page_token = Some(t),
            None => return Ok(all),
        }
    }
}

fn all_tags(i: &Instance) -> Labels {
    let mut tags = i.labels.clone();
    tags.extend(i.system_labels.clone());
    tags
}

fn parse_time(key: &str, v: &str) -> GcoreResult<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| GcoreError::field(key, "Input should be a valid datetime"))
}

pub async fn list(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id)): Path<(String, String)>,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let q = query_pairs(&uri);
    let limit = query_usize(&q, "limit")?;
    let offset = query_usize(&q, "offset")?.unwrap_or(0);
    let tag_key_value: Option<Map<String, Value>> = query_one(&q, "tag_key_value")
        .map(|v| match serde_json::from_str::<Value>(v) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(GcoreError::field("tag_key_value", "Must be a JSON object of tag keys and values")),
        })
        .transpose()?;
    let tag_values = query_all(&q, "tag_value");
    let statuses = query_all(&q, "status");
    let since = query_one(&q, "changes_since").map(|v| parse_time("changes_since", v)).transpose()?;
    let before = query_one(&q, "changes_before").map(|v| parse_time("changes_before", v)).transpose()?;
    let name = query_one(&q, "name");
    let uuid = query_one(&q, "uuid");
    let ip = query_one(&q, "ip");
    let flavor_id = query_one(&q, "flavor_id");
    let flavor_prefix = query_one(&q, "flavor_prefix");
    let exclude_flavor_prefix = query_one(&q, "exclude_flavor_prefix");
    let renderer = Renderer::new(&app, &r).await?;
    let exclude_group: Option<Uuid> = query_one(&q, "exclude_secgroup")
        .and_then(|n| renderer.group_names.iter().find(|(_, name)| name.as_str() == n).map(|(id, _)| *id));

    let mut matching: Vec<Instance> = all_instances(&app, &r.ctx)
        .await?
        .into_iter()
        .filter(|i| name.is_none_or(|n| i.name.contains(n)))
        .filter(|i| uuid.is_none_or(|u| i.id.to_string().contains(u)))
        .filter(|i| ip.is_none_or(|a| i.ip_addresses.iter().any(|x| x.contains(a))))
        .filter(|i| flavor_id.is_none_or(|f| i.instance_type == f))
        .filter(|i| flavor_prefix.is_none_or(|f| i.instance_type.starts_with(f)))
        .filter(|i| exclude_flavor_prefix.is_none_or(|f| !i.instance_type.starts_with(f)))
        .filter(|i| exclude_group.is_none_or(|g| !i.security_groups.contains(&g)))
        .filter(|i| statuses.is_empty() || statuses.iter().any(|s| views::states_for_status(s).contains(&i.state)))
        .filter(|i| since.is_none_or(|t| i.updated_at >= t))
        .filter(|i| before.is_none_or(|t| i.updated_at <= t))
        .filter(|i| {
            let tags = all_tags(i);
            let pairs_match = tag_key_value
                .as_ref()
                .is_none_or(|m| m.iter().all(|(k, v)| tags.get(k).is_some_and(|t| Some(t.as_str()) == v.as_str())));
            pairs_match && (tag_values.is_empty() || tags.values().any(|v| tag_values.contains(&v.as_str())))
        })
        .collect();
    match query_one(&q, "order_by").unwrap_or("created.asc") {
        "created.asc" => {}
        "created.desc" => matching.reverse(),
        "name.asc" => matching.sort_by(|a, b| a.name.cmp(&b.name)),
        "name.desc" => matching.sort_by(|a, b| b.name.cmp(&a.name)),
        "status.asc" => matching.sort_by_key(|i| i.state.as_str()),
        "status.desc" => matching.sort_by(|a, b| b.state.as_str().cmp(a.state.as_str())),
        other => return Err(GcoreError::field("order_by", format!("Unknown ordering {other:?}"))),
    }
    let window = |n: usize| (offset, limit.unwrap_or(usize::MAX).min(n.saturating_sub(offset)));
    if statuses.is_empty() {
        let (skip, take) = window(matching.len());
        let mut results = Vec::new();
        for i in matching.iter().skip(skip).take(take) {
            results.push(renderer.render(i).await?);
        }
        return Ok(Json(json!({ "count": matching.len(), "results": results })));
    }
    // One state can show as several statuses (a deleting instance keeps the one it had): the candidates
    // are rendered and filtered on what they show.
    let mut shown = Vec::new();
    for i in &matching {
        let v = renderer.render(i).await?;
        if statuses.contains(&v["status"].as_str().unwrap_or("")) {
            shown.push(v);
        }
    }
    let (skip, take) = window(shown.len());
    let count = shown.len();
    let results: Vec<Value> = shown.into_iter().skip(skip).take(take).collect();
    Ok(Json(json!({ "count": count, "results": results })))
}

pub async fn get(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    Ok(Json(Renderer::new(&app, &r).await?.render(&instance).await?))
}

/// A tag key or value as Gcore allows it: 1 to 255 characters, no whitespace and no '='.
fn check_tag_text(what: &str, s: &str, errors: &mut FieldErrors) {
    if s.is_empty() || s.chars().count() > MAX_TAG_LEN || s.chars().any(|c| c.is_whitespace() || c == '=') {
        errors.add(
            "tags",
            format!("Tag {what} {s:?} must be 1 to {MAX_TAG_LEN} characters without spaces, tabs, newlines or '='"),
        );
    }
}

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

pub async fn create(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id)): Path<(String, String)>,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
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

/// PATCH: the name and a JSON merge patch (RFC 7386) of the user tags; read-only tags cannot be touched.
pub async fn update(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let current = find(&app, &r, &id).await?;
    let map = body_object(&body)?;
    let mut errors = FieldErrors::default();
    let mut patch = InstancePatch::default();
    match map.get("name") {
        None => {}
        Some(Value::String(n)) => patch.name = Some(n.clone()).filter(|n| *n != current.name),
        Some(_) => errors.add("name", "Input should be a valid string"),
    }
    match map.get("tags") {
        None => {}
        Some(Value::Null) => patch.labels = Some(Value::Null),
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if current.system_labels.contains_key(k) {
                    errors.add("tags", format!("Tag {k:?} is read-only"));
                    continue;
                }
                match v {
                    Value::Null => {}
                    Value::String(s) => {
                        check_tag_text("key", k, &mut errors);
                        check_tag_text("value", s, &mut errors);
                    }
                    _ => errors.add("tags", format!("The value of tag {k:?} must be a string or null")),
                }
            }
            if !m.is_empty() {
                patch.labels = Some(Value::Object(m.clone()));
            }
        }
        Some(_) => errors.add("tags", "Input should be a valid dictionary or null"),
    }
    errors.check()?;
    let updated = if patch.name.is_none() && patch.labels.is_none() {
        current
    } else {
        app.engine.update_instance(&r.ctx, current.id, patch, None).await?
    };
    Ok(Json(Renderer::new(&app, &r).await?.render(&updated).await?))
}

pub async fn delete(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    let op = app.engine.act(&r.ctx, instance.id, ActionRequest::Delete).await?;
    Ok(tasks(&[&op]))
}

/// `POST /cloud/v2/.../action`: start, stop, reboot, reboot_hard, suspend, resume.
pub async fn action(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    let map = body_object(&body)?;
    let name = match map.get("action") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(GcoreError::field("action", "Input should be a valid string")),
        None => return Err(GcoreError::field("action", "Field required")),
    };
    let request = match name {
        "start" => ActionRequest::Start,
        "stop" => ActionRequest::Stop,
        // Nimbus has one reboot, a reset of the VM; Gcore's soft and hard reboot both are it.
        "reboot" | "reboot_hard" => ActionRequest::Reboot,
        "suspend" => ActionRequest::Suspend,
        "resume" => ActionRequest::Resume,
        other => {
            return Err(GcoreError::field(
                "action",
                format!(
                    "Input tag {other:?} does not match any of 'start', 'stop', 'reboot', 'reboot_hard', \
                     'suspend', 'resume'"
                ),
            ))
        }
    };
    let op = app.engine.act(&r.ctx, instance.id, request).await?;
    if name == "reboot_hard" {
        // Remembered so that the instance shows HARD_REBOOT and the task is a hard reboot.
        let mut ext = BTreeMap::new();
        ext.insert(EXT.to_string(), json!({ "hard_reboot_task": op.id }));
        let patch = InstancePatch { extensions: ext, ..Default::default() };
        app.engine.update_instance(&r.ctx, instance.id, patch, None).await?;
    }
    Ok(tasks(&[&op]))
}

/// `changeflavor`: Nimbus scales within a flavor's family, with the instance stopped.
pub async fn resize(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    let map = body_object(&body)?;
    let flavor = match map.get("flavor_id") {
        Some(Value::String(f)) => f.clone(),
        Some(_) => return Err(GcoreError::field("flavor_id", "Input should be a valid string")),
        None => return Err(GcoreError::field("flavor_id", "Field required")),
    };
    let op = app.engine.act(&r.ctx, instance.id, ActionRequest::Scale { instance_type: flavor }).await.map_err(
        |e| match e {
            DomainError::Invalid { message, .. } => GcoreError::field("flavor_id", message),
            DomainError::Conflict(m) if !m.contains("concurrently") => GcoreError::field("flavor_id", m),
            other => other.into(),
        },
    )?;
    Ok(tasks(&[&op]))
}

/// The security group names of `addsecuritygroup`/`delsecuritygroup`, resolved to the project's groups.
async fn named_groups(app: &AppState, r: &Region, instance: &Instance, body: &Bytes) -> GcoreResult<Vec<Uuid>> {
    let map = body_object(body)?;
    let mut names: Vec<String> = Vec::new();
    let mut errors = FieldErrors::default();
    match map.get("name") {
        None | Some(Value::Null) => {}
        Some(Value::String(n)) => names.push(n.clone()),
        Some(_) => errors.add("name", "Input should be a valid string"),
    }
    match map.get("ports_security_group_names") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ports)) => {
            let port = views::port_id(instance).to_string();
            for (n, p) in ports.iter().enumerate() {
                match p.get("port_id") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(id)) if *id == port => {}
                    Some(_) => errors.add(
                        &format!("ports_security_group_names.{n}.port_id"),
                        format!("The instance's one port is {port}"),
                    ),
                }
                match p.get("security_group_names").and_then(Value::as_array) {
                    Some(list) => names.extend(list.iter().filter_map(Value::as_str).map(str::to_string)),
                    None => {
                        errors.add(&format!("ports_security_group_names.{n}.security_group_names"), "Field required")
                    }
                }
            }
        }
        Some(_) => errors.add("ports_security_group_names", "Input should be a valid list"),
    }
    if names.is_empty() {
        errors.add("name", "Give a security group name or ports_security_group_names");
    }
    errors.check()?;
    let groups = app.engine.list_security_groups(&r.ctx).await?;
    names
        .iter()
        .map(|n| {
            groups
                .iter()
                .find(|g| &g.name == n)
                .map(|g| g.id)
                .ok_or_else(|| GcoreError::not_found(format!("Security group {n} could not be found")))
        })
        .collect()
}

pub async fn add_security_group(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
    body: Bytes,
) -> GcoreResult<StatusCode> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    let groups = named_groups(&app, &r, &instance, &body).await?;
    app.engine.change_security_groups(&r.ctx, instance.id, &groups, &[]).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn del_security_group(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
    body: Bytes,
) -> GcoreResult<StatusCode> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    let groups = named_groups(&app, &r, &instance, &body).await?;
    app.engine.change_security_groups(&r.ctx, instance.id, &[], &groups).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn interfaces(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    let q = query_pairs(&uri);
    let all = [views::interface(&instance, &r.scope())];
    let offset = query_usize(&q, "offset")?.unwrap_or(0);
    let limit = query_usize(&q, "limit")?.unwrap_or(usize::MAX);
    let results: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    Ok(Json(json!({ "count": all.len(), "results": results })))
}

/// Seconds since the running instance last (re)booted: the end of its latest successful boot operation.
async fn uptime_secs(app: &AppState, ctx: &Context, i: &Instance) -> GcoreResult<f64> {
    let mut booted = None;
    let mut token = None;
    loop {
        let page = app.engine.list_operations(ctx, Some(i.id), 1000, token.as_deref()).await?;
        for op in &page.items {
            let boots = matches!(op.kind, Action::Create | Action::Start | Action::Reboot | Action::Reset);
            if boots && op.state == OperationState::Success {
                booted = Some(op.updated_at);
            }
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    Ok(booted.map_or(0.0, |t| (nimbus_core::now() - t).as_seconds_f64().max(0.0)))
}

/// `POST .../metrics`: the host measures totals, not series, so the answer is one sample at the present:
/// CPU and memory use, and the average network rates since the last boot.
pub async fn metrics(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
    uri: Uri,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    let map = body_object(&body)?;
    let mut errors = FieldErrors::default();
    if !map.get("time_interval").is_some_and(Value::is_u64) {
        errors.add("time_interval", "Field required: a positive integer");
    }
    if !matches!(map.get("time_unit").and_then(Value::as_str), Some("hour" | "day")) {
        errors.add("time_unit", "Input should be 'hour' or 'day'");
    }
    errors.check()?;
    let q = query_pairs(&uri);
    let m = app.engine.instance_metrics(&r.ctx, instance.id).await.unwrap_or_default();
    let up = uptime_secs(&app, &r.ctx, &instance).await?;
    let rate = |total: u64| if up > 0.0 { total as f64 / up } else { 0.0 };
    let cpu = if up > 0.0 { m.cpu_time_ns as f64 / (up * 1e9 * instance.vcpus.max(1) as f64) * 100.0 } else { 0.0 };
    let memory = m.memory_rss_bytes as f64 / (instance.memory_mib.max(1) as f64 * 1024.0 * 1024.0) * 100.0;
    let sample = json!({
        "time": views::rfc3339(nimbus_core::now()),
        "cpu_util": cpu.min(100.0),
        "memory_util": memory.min(100.0),
        // Gcore's network "Bps" are bits per second.
        "network_Bps_ingress": rate(m.net_rx_bytes) * 8.0,
        "network_Bps_egress": rate(m.net_tx_bytes) * 8.0,
        "network_pps_ingress": null,
        "network_pps_egress": null,
        "disks": [],
    });
    let offset = query_usize(&q, "offset")?.unwrap_or(0);
    let results: Vec<Value> =
        std::iter::once(sample).skip(offset).take(query_usize(&q, "limit")?.unwrap_or(1)).collect();
    Ok(Json(json!({ "count": 1, "results": results })))
}

/// `get_console`: the serial console, as the native API's interactive stream.
pub async fn console(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let instance = find(&app, &r, &id).await?;
    let q = query_pairs(&uri);
    match query_one(&q, "console_type") {
        None | Some("serial") => {}
        Some(other) => {
            return Err(GcoreError::bad_request(format!("Console type {other:?} is not available; use serial")))
        }
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let secure = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()) == Some("https");
    let url = format!("{}://{host}/v1/instances/{}/console/stream", if secure { "wss" } else { "ws" }, instance.id);
    Ok(Json(json!({ "remote_console": { "protocol": "serial", "type": "serial", "url": url } })))
}

// Catalog

fn page(all: Vec<Value>, q: &[(String, String)]) -> GcoreResult<Json<Value>> {
    let offset = query_usize(q, "offset")?.unwrap_or(0);
    let limit = query_usize(q, "limit")?.unwrap_or(usize::MAX);
    let count = all.len();
    let results: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    Ok(Json(json!({ "count": count, "results": results })))
}

pub async fn flavors(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id)): Path<(String, String)>,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let q = query_pairs(&uri);
    let prices = query_bool(&q, "include_prices");
    let show_disabled = query_bool(&q, "disabled");
    let all = app
        .engine
        .list_instance_types()
        .await?
        .iter()
        .filter(|t| t.zones.contains(&r.zone.name))
        .filter(|t| t.authorized || show_disabled)
        .map(|t| views::flavor(t, prices))
        .collect();
    page(all, &q)
}

pub async fn images(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id)): Path<(String, String)>,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let q = query_pairs(&uri);
    let scope = r.scope();
    let name = query_one(&q, "name");
    let distro = query_one(&q, "os_distro");
    let version = query_one(&q, "os_version");
    let visibility = query_one(&q, "visibility");
    let private = query_bool(&q, "private");
    let all = app
        .engine
        .list_templates(&r.ctx)
        .await?
        .iter()
        .map(|t| views::image(t, &scope))
        .filter(|v| name.is_none_or(|n| v["name"].as_str().is_some_and(|x| x.contains(n))))
        .filter(|v| distro.is_none_or(|d| v["os_distro"] == d))
        .filter(|v| version.is_none_or(|d| v["os_version"] == d))
        .filter(|v| visibility.is_none_or(|d| v["visibility"] == d))
        .filter(|v| !private || v["visibility"] == "private")
        .collect();
    page(all, &q)
}

pub async fn image(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path((project_id, region_id, id)): Path<(String, String, String)>,
) -> GcoreResult<Json<Value>> {
    let r = region(&app, ctx, &project_id, &region_id).await?;
    let template = app
        .engine
        .template(&r.ctx, &id)
        .await
        .map_err(|_| GcoreError::not_found(format!("Image {id} could not be found")))?;
    Ok(Json(views::image(&template, &r.scope())))
}

// Tasks: global, not under a project and region; the key's project and this server's zone are theirs.

async fn task_view(app: &AppState, ctx: &Context, zone: &Zone, op: &Operation) -> Value {
    let hard_reboot = op.kind == Action::Reboot
        && app.engine.instance(ctx, op.target.id).await.ok().is_some_and(|i| {
            i.extensions.get(EXT).and_then(|e| e.get("hard_reboot_task")).and_then(Value::as_str)
                == Some(op.id.to_string().as_str())
        });
    let cidr = app.engine.config().network_cidr.clone();
    let scope = Scope { project_id: ctx.project.numeric_id, zone, network_cidr: &cidr };
    views::task(op, &scope, hard_reboot)
}

pub async fn task(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path(id): Path<String>,
) -> GcoreResult<Json<Value>> {
    let not_found = || GcoreError::not_found(format!("Task {id} could not be found"));
    let op_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let op = app.engine.operation(&ctx, op_id).await.map_err(|e| match e {
        DomainError::NotFound { .. } => not_found(),
        other => other.into(),
    })?;
    let zone = app.engine.zone().await?;
    Ok(Json(task_view(&app, &ctx, &zone, &op).await))
}

pub async fn tasks_list(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let zone = app.engine.zone().await?;
    let limit = query_usize(&q, "limit")?.unwrap_or(DEFAULT_TASK_PAGE);
    if limit > MAX_TASK_PAGE {
        return Err(GcoreError::field("limit", format!("Input should be less than or equal to {MAX_TASK_PAGE}")));
    }
    let offset = query_usize(&q, "offset")?.unwrap_or(0);
    let projects = query_all(&q, "project_id");
    let regions = query_all(&q, "region_id");
    let states = query_all(&q, "state");
    let task_type = query_one(&q, "task_type");
    let from = query_one(&q, "from_timestamp").map(|v| parse_time("from_timestamp", v)).transpose()?;
    let to = query_one(&q, "to_timestamp").map(|v| parse_time("to_timestamp", v)).transpose()?;
    // Another project or region holds no task of this key.
    let elsewhere = (!projects.is_empty() && !projects.contains(&ctx.project.numeric_id.to_string().as_str()))
        || (!regions.is_empty() && !regions.contains(&zone.numeric_id.to_string().as_str()));
    let mut ops = Vec::new();
    let mut token = None;
    if !elsewhere {
        loop {
            let page = app.engine.list_operations(&ctx, None, 1000, token.as_deref()).await?;
            ops.extend(page.items);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
    }
    let mut views = Vec::new();
    for op in ops
        .iter()
        .filter(|op| from.is_none_or(|t| op.created_at >= t))
        .filter(|op| to.is_none_or(|t| op.created_at <= t))
    {
        let v = task_view(&app, &ctx, &zone, op).await;
        if (states.is_empty() || states.contains(&v["state"].as_str().unwrap_or("")))
            && task_type.is_none_or(|t| v["task_type"] == t)
        {
            views.push(v);
        }
    }
    let descending = matches!(query_one(&q, "order_by").or(query_one(&q, "sorting")), Some("desc"));
    if descending {
        views.reverse();
    }
    let count = views.len();
    let results: Vec<Value> = views.into_iter().skip(offset).take(limit).collect();
    Ok(Json(json!({ "count": count, "results": results })))
}
