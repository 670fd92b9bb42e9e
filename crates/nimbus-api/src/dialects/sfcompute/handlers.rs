//! The SF Compute instance endpoints: parse SF's request shapes, call the engine's instance services and
//! render SF's responses. Rules (atomic batches, merge patch of tags, scheduled shutdown) live in the engine.

use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::labels::{json_type, Labels, Requirement, Selector};
use nimbus_core::DomainError;
use nimbus_engine::{page_token, ActionRequest, Context, CreateInstance, InstanceFilter, InstancePatch};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::errors::{SfError, SfResult};
use super::ids;
use super::views::{self, BatchList, PagedList, Scope, EXTENSION};
use crate::AppState;

/// The most entries one batch PATCH takes (SF publishes no number; this one is Nimbus's).
pub const MAX_BATCH: usize = 100;
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;
/// SF's instance list cursors look like `nodec_…`; behind the prefix is the engine's page token.
const CURSOR_PREFIX: &str = "nodec_";
const MAX_TAGS: usize = 50;
const PRIORITY_LEVELS: &[&str] = &["yield", "normal", "preferred", "critical"];

crate::dialects::common::key_caller!(SfCaller, SfError, "Bearer");

impl crate::dialects::common::CredentialErrors for SfError {
    fn missing_credentials() -> SfError {
        SfError::unauthenticated("missing credentials: send 'Authorization: Bearer <token>'")
    }
    fn invalid_credentials() -> SfError {
        DomainError::Unauthenticated("invalid API key".into()).into()
    }
}

/// A JSON body whose errors come back in SF's envelope.
pub struct SfJson(pub Value);

impl FromRequest<AppState> for SfJson {
    type Rejection = SfError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = crate::extract::body_bytes(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(SfJson)
            .map_err(|e| SfError::new(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
    }
}

/// The fields of an SF instance patch (the singleton PATCH body, or one batch entry without its `id`).
#[derive(Debug, Default)]
struct SfPatch {
    name: Option<String>,
    /// SF's PATCH replaces the whole map; `null` clears it.
    tags: Option<Labels>,
    expected_shutdown_at: Option<Option<OffsetDateTime>>,
    priority_level: Option<String>,
    priority: Option<i64>,
}

fn validate_name(field: &str, v: &Value) -> SfResult<String> {
    let name = v.as_str().ok_or_else(|| SfError::invalid(field, format!("expected a string, got {}", json_type(v))))?;
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(SfError::invalid(field, format!("{name:?} does not match [a-zA-Z0-9][a-zA-Z0-9._-]{{0,254}}")));
    }
    Ok(name.to_string())
}

/// SF's tag limits: at most 50, keys `^[^_,= ][^,= ]{0,127}$`, values `^[^,=]{0,256}$`. `null` values are
/// the merge patch's deletions and are not tags themselves.
fn validate_tags(field: &str, v: &Value) -> SfResult<()> {
    let obj = match v {
        Value::Null => return Ok(()),
        Value::Object(obj) => obj,
        other => return Err(SfError::invalid(field, format!("expected an object, got {}", json_type(other)))),
    };
    if obj.values().filter(|v| !v.is_null()).count() > MAX_TAGS {
        return Err(SfError::invalid(field, format!("at most {MAX_TAGS} tags")));
    }
    for (k, v) in obj {
        let key_ok = (1..=128).contains(&k.chars().count())
            && !k.starts_with('_')
            && !k.contains([',', '=', ' '])
            && !k.starts_with(' ');
        if !key_ok {
            return Err(SfError::invalid(
                format!("{field}.{k}"),
                "tag keys are 1 to 128 characters, do not start with '_' and contain no ',', '=' or space",
            ));
        }
        match v {
            Value::Null => {}
            Value::String(s) if s.chars().count() <= 256 && !s.contains([',', '=']) => {}
            Value::String(_) => {
                return Err(SfError::invalid(
                    format!("{field}.{k}"),
                    "tag values are at most 256 characters and contain no ',' or '='",
                ))
            }
            other => {
                return Err(SfError::invalid(
                    format!("{field}.{k}"),
                    format!("expected a string or null, got {}", json_type(other)),
                ))
            }
        }
    }
    Ok(())
}

fn unix_seconds(field: &str, v: &Value) -> SfResult<Option<OffsetDateTime>> {
    if v.is_null() {
        return Ok(None);
    }
    let secs = v
        .as_i64()
        .ok_or_else(|| SfError::invalid(field, format!("expected integer Unix seconds, got {}", json_type(v))))?;
    OffsetDateTime::from_unix_timestamp(secs)
        .map(Some)
        .map_err(|_| SfError::invalid(field, format!("{secs} is out of range")))
}

fn parse_patch(obj: &Map<String, Value>, allow_id: bool) -> SfResult<SfPatch> {
    let mut p = SfPatch::default();
    for (key, v) in obj {
        match key.as_str() {
            "id" if allow_id => {}
            "name" => p.name = Some(validate_name("name", v)?),
            "tags" => p.tags = Some(tags_of(v)?),
            "expected_shutdown_at" => p.expected_shutdown_at = Some(unix_seconds("expected_shutdown_at", v)?),
            "priority_level" => {
                let level = v.as_str().filter(|l| PRIORITY_LEVELS.contains(l)).ok_or_else(|| {
                    SfError::invalid("priority_level", format!("must be one of {}", PRIORITY_LEVELS.join(", ")))
                })?;
                p.priority_level = Some(level.to_string());
            }
            "priority" => {
                p.priority = Some(v.as_i64().ok_or_else(|| SfError::invalid("priority", "expected an integer"))?)
            }
            other => {
                return Err(SfError::invalid(
                    other,
                    "unknown field; an instance patch takes name, tags, expected_shutdown_at, priority_level, priority",
                ))
            }
        }
    }
    Ok(p)
}

/// The tags a body gives: validated, `null` (and a tag whose value is `null`) meaning none.
fn tags_of(v: &Value) -> SfResult<Labels> {
    validate_tags("tags", v)?;
    Ok(match v {
        Value::Object(tags) => {
            tags.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect()
        }
        _ => Labels::new(),
    })
}

/// The engine's patch: tags replace the labels, priorities are merged into this dialect's extension map.
fn to_engine_patch(p: SfPatch) -> InstancePatch {
    let mut patch = InstancePatch {
        name: p.name,
        replace_labels: p.tags,
        expected_shutdown_at: p.expected_shutdown_at,
        ..Default::default()
    };
    let mut ext = Map::new();
    priorities(p.priority_level, p.priority, &mut ext);
    if !ext.is_empty() {
        patch.extensions.insert(EXTENSION.into(), Value::Object(ext));
    }
    patch
}

/// Priorities live in this dialect's extension map.
fn priorities(level: Option<String>, priority: Option<i64>, ext: &mut Map<String, Value>) {
    if let Some(level) = level {
        ext.insert("priority_level".into(), Value::String(level));
    }
    if let Some(priority) = priority {
        ext.insert("priority".into(), Value::from(priority));
    }
}

/// `PATCH /v2/instances`: every entry or none (422), entries of one id applied in order (the last one's
/// fields win), one response item per unique id in first-seen order. The engine's batch update is the one
/// transaction that makes it so.
pub async fn batch_update(
    State(app): State<AppState>,
    SfCaller(ctx): SfCaller,
    SfJson(body): SfJson,
) -> SfResult<Json<BatchList>> {
    let engine = &app.engine;
    let data = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| SfError::invalid("data", "required: an array of instance patches"))?;
    if data.len() > MAX_BATCH {
        return Err(SfError::invalid("data", format!("at most {MAX_BATCH} entries per batch")).in_batch());
    }
    let mut entries = Vec::with_capacity(data.len());
    for (n, entry) in data.iter().enumerate() {
        let at = format!("data[{n}]");
        let parsed = async {
            let obj = entry
                .as_object()
                .ok_or_else(|| SfError::invalid("data", format!("expected an object, got {}", json_type(entry))))?;
            let id = obj.get("id").and_then(Value::as_str).ok_or_else(|| SfError::invalid("id", "required"))?;
            let patch = parse_patch(obj, true)?;
            let current = ids::instance(engine, &ctx, id).await.map_err(|e| {
                if e.status == StatusCode::NOT_FOUND {
                    SfError::invalid("id", format!("no instance {id}"))
                } else {
                    e
                }
            })?;
            Ok::<_, SfError>((current.id, to_engine_patch(patch)))
        }
        .await
        .map_err(|e| if e.status == StatusCode::BAD_REQUEST { e.within(&at).in_batch() } else { e.in_batch() })?;
        entries.push(parsed);
    }
    let updated = engine.batch_update(&ctx, entries).await.map_err(|e| SfError::from(e).in_batch())?;
    let scope = Scope::of(engine, &ctx).await?;
    Ok(Json(BatchList { object: "list", data: scope.render_all(engine, &updated, true).await? }))
}

/// One instance as SF shows it, its user data included.
async fn shown(engine: &nimbus_engine::Engine, ctx: &Context, i: &Instance) -> SfResult<Response> {
    let scope = Scope::of(engine, ctx).await?;
    Ok(Json(scope.render(engine, i, true).await?).into_response())
}

/// `PATCH /v2/instances/{id}`: omitted fields stay as they are.
pub async fn update(
    State(app): State<AppState>,
    SfCaller(ctx): SfCaller,
    Path(id): Path<String>,
    SfJson(body): SfJson,
) -> SfResult<Response> {
    let engine = &app.engine;
    let obj = body.as_object().ok_or_else(|| SfError::invalid("body", "expected a JSON object"))?;
    let patch = parse_patch(obj, false)?;
    let current = ids::instance(engine, &ctx, &id).await?;
    let updated = engine.update_instance(&ctx, current.id, to_engine_patch(patch), None).await?;
    shown(engine, &ctx, &updated).await
}

/// `GET /v2/instances/{id}`: a deleted instance is shown `terminated` while its record is kept.
pub async fn get(State(app): State<AppState>, SfCaller(ctx): SfCaller, Path(id): Path<String>) -> SfResult<Response> {
    shown(&app.engine, &ctx, &ids::instance_or_destroyed(&app.engine, &ctx, &id).await?).await
}

/// `GET /v2/instances`: `limit` (1..200, default 50), `starting_after` (a previous `cursor`), `workspace`,
/// `tag=key=value`, `tag_key`, `include=cloud_init_user_data`, and the repeatable filters `id`, `status`,
/// `pool` (or `capacity`), `instance_sku`, with `created_after`/`created_before` (Unix seconds), and
/// `ending_before` (a previous `cursor`) for the page before it. The filters are the engine's, applied while
/// it pages.
pub async fn list(
    State(app): State<AppState>,
    SfCaller(ctx): SfCaller,
    RawQuery(query): RawQuery,
) -> SfResult<Json<PagedList>> {
    let engine = &app.engine;
    let scope = Scope::of(engine, &ctx).await?;
    let mut limit = DEFAULT_LIMIT;
    let mut page = None;
    let mut with_user_data = false;
    let mut selector = Vec::new();
    let mut filter = InstanceFilter::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| SfError::invalid("limit", format!("must be an integer from 1 to {MAX_LIMIT}")))?
            }
            "starting_after" | "ending_before" => {
                let token = value
                    .strip_prefix(CURSOR_PREFIX)
                    .filter(|t| page_token::decode(t).is_ok())
                    .ok_or_else(|| SfError::invalid(key.as_ref(), "not a cursor this server issued"))?;
                let slot = if key == "starting_after" { &mut page } else { &mut filter.before_token };
                *slot = Some(token.to_string());
            }
            "include" => with_user_data |= value.split(',').any(|v| v == "cloud_init_user_data"),
            "workspace" => {
                // The caller sees one workspace; naming any other finds nothing to list.
                let own = ids::resolve(engine, ids::WORKSPACE, &value).await?;
                let who = engine.whoami(&ctx).await?;
                if own != Some(who.project.id) && value != who.project.name {
                    return Err(SfError::not_found(format!("workspace {value} not found")));
                }
            }
            "tag" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| SfError::invalid("tag", "expected key=value (URL-encoded as key%3Dvalue)"))?;
                selector.push(Requirement::Equals(k.to_string(), v.to_string()));
            }
            "tag_key" => selector.push(Requirement::Exists(value.to_string())),
            "id" => {
                // An id that names no instance of the caller's matches none (never `nil`).
                let id = ids::instance(engine, &ctx, &value).await.map(|i| i.id).unwrap_or(uuid::Uuid::nil());
                filter.ids.push(id);
            }
            "status" => {
                let known = [views::AWAITING_ALLOCATION, views::RUNNING, views::TERMINATED, views::FAILED];
                if !known.contains(&value.as_ref()) {
                    return Err(SfError::invalid("status", format!("must be one of {}", known.join(", "))));
                }
                filter.states.extend(InstanceState::ALL.into_iter().filter(|s| views::status(*s) == value));
            }
            // The one zone this server runs is the only pool there is: it filters nothing out.
            "pool" | "capacity"
                if ![&scope.pool.id, &scope.capacity.id, &scope.pool.name].contains(&&value.to_string()) =>
            {
                return Err(SfError::not_found(format!("{key} {value} not found")));
            }
            "instance_sku" => {
                let name = match ids::resolve(engine, ids::INSTANCE_SKU, &value).await? {
                    Some(id) => engine.instance_type(&id.to_string()).await.map(|t| t.name).unwrap_or_default(),
                    None => value.to_string(),
                };
                filter.instance_types.push(name);
            }
            "created_after" | "created_before" => {
                let secs = value
                    .parse::<i64>()
                    .map_err(|_| SfError::invalid(key.as_ref(), "expected integer Unix seconds"))?;
                let at = unix_seconds(&key, &Value::from(secs))?;
                *(if key == "created_after" { &mut filter.created_after } else { &mut filter.created_before }) = at;
            }
            _ => {}
        }
    }
    let backwards = filter.before_token.is_some();
    if backwards && page.is_some() {
        return Err(SfError::invalid("ending_before", "give starting_after or ending_before, not both"));
    }
    let result = engine
        .list_instances(
            &ctx,
            InstanceFilter {
                labels: (!selector.is_empty()).then_some(Selector(selector)),
                limit: Some(limit),
                page_token: page,
                // SF lists deleted instances, `terminated`, while their records are kept.
                with_destroyed: true,
                ..filter
            },
        )
        .await?;
    // The cursor names the last item shown (the first, paging backwards with `ending_before`), so a client
    // may hold on to it whether or not more follow, and goes on in the same direction.
    let edge = if backwards { result.items.first() } else { result.items.last() };
    let cursor = edge.map(|i| format!("{CURSOR_PREFIX}{}", page_token::encode(i.id)));
    Ok(Json(PagedList {
        object: "list",
        cursor,
        has_more: result.next_page_token.is_some(),
        data: scope.render_all(engine, &result.items, with_user_data).await?,
    }))
}

/// `POST /v2/instances`: `pool` (or `capacity`), `image` and `instance_sku` by SF id (or Nimbus name), plus
/// `name`, `cloud_init_user_data`, `tags`, `priority_level`, `expected_shutdown_at`. Answers 201 with the
/// instance as recorded; it boots in the background.
pub async fn create(State(app): State<AppState>, SfCaller(ctx): SfCaller, SfJson(body): SfJson) -> SfResult<Response> {
    let engine = &app.engine;
    let obj = body.as_object().ok_or_else(|| SfError::invalid("body", "expected a JSON object"))?;
    let scope = Scope::of(engine, &ctx).await?;
    let text = |field: &str| -> SfResult<Option<String>> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(SfError::invalid(field, format!("expected a string, got {}", json_type(other)))),
        }
    };
    let mut req = CreateInstance { auto_start: true, ..Default::default() };
    let mut ext = Map::new();
    for (key, v) in obj {
        match key.as_str() {
            "pool" | "capacity" => {
                let given = text(key)?.unwrap_or_default();
                let ours = [&scope.pool.id, &scope.capacity.id, &scope.pool.name];
                // The one zone this server runs is the only pool there is.
                if !ours.contains(&&given) {
                    return Err(SfError::not_found(format!("{key} {given} not found")));
                }
            }
            // By SF id, or else by Nimbus name.
            "image" | "instance_sku" => {
                let given = text(key)?.unwrap_or_default();
                let (kind, slot) = if key == "image" {
                    (ids::IMAGE, &mut req.template)
                } else {
                    (ids::INSTANCE_SKU, &mut req.instance_type)
                };
                *slot = ids::resolve(engine, kind, &given).await?.map_or(given, |id| id.to_string());
            }
            "name" => req.name = validate_name("name", v)?,
            "cloud_init_user_data" => req.user_data = text("cloud_init_user_data")?,
            "tags" => req.labels = tags_of(v)?,
            "expected_shutdown_at" => req.expected_shutdown_at = unix_seconds("expected_shutdown_at", v)?,
            "priority_level" | "priority" => {
                let p = parse_patch(&Map::from_iter([(key.clone(), v.clone())]), false)?;
                priorities(p.priority_level, p.priority, &mut ext);
            }
            // Accepted for compatibility; Nimbus's network decides addresses and firewalls.
            "enable_public_ipv4" | "firewall" | "_preview_enable_infiniband" => {}
            other => return Err(SfError::invalid(other, "unknown field")),
        }
    }
    for required in ["image", "instance_sku"] {
        if !obj.contains_key(required) {
            return Err(SfError::invalid(required, "required"));
        }
    }
    if !obj.contains_key("pool") && !obj.contains_key("capacity") {
        return Err(SfError::invalid("pool", "required"));
    }
    // The instance's SF id is made now so that an unnamed instance can be named after it, and stored by the
    // engine in the same transaction as the instance.
    let alias = ids::generate(ids::INSTANCE);
    if req.name.is_empty() {
        req.name = alias.clone();
    }
    if !ext.is_empty() {
        req.extensions.insert(EXTENSION.into(), Value::Object(ext));
    }
    req.aliases.push((ids::INSTANCE.into(), alias));
    let (_, instance) = engine.create_instance(&ctx, req).await.map_err(|e| match e {
        // The engine names the native fields; SF calls them otherwise.
        DomainError::Invalid { field, message } => DomainError::Invalid {
            field: match field.as_str() {
                "template" => "image".into(),
                "instance_type" => "instance_sku".into(),
                "user_data" => "cloud_init_user_data".into(),
                "labels" => "tags".into(),
                _ => field,
            },
            message,
        },
        other => other,
    })?;
    Ok((StatusCode::CREATED, Json(scope.render(engine, &instance, true).await?)).into_response())
}

/// How long a terminate or delete waits for an operation already running on the instance (a create, a
/// terminate's stop) to end: SF's API has no "busy" answer.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `POST /v2/instances/{id}/terminate`: SF's terminate ends the VM and keeps the record, `terminated`, until
/// `DELETE` removes it. In Nimbus it is a stop (the disk is kept until the delete). Already terminated: 404.
pub async fn terminate(
    State(app): State<AppState>,
    SfCaller(ctx): SfCaller,
    Path(id): Path<String>,
) -> SfResult<Response> {
    let engine = &app.engine;
    let instance = ids::instance(engine, &ctx, &id).await?;
    if views::status(instance.state) == views::TERMINATED {
        return Err(SfError::not_found(format!("instance {id} not found or already terminated")));
    }
    engine.act_when_free(&ctx, instance.id, ActionRequest::Stop, BUSY_WAIT).await?;
    shown(engine, &ctx, &engine.instance(&ctx, instance.id).await?).await
}

/// `DELETE /v2/instances/{id}`: only a terminated (or failed) instance is deleted; any other is 409, as SF
/// answers, and nothing happens to it.
pub async fn delete(
    State(app): State<AppState>,
    SfCaller(ctx): SfCaller,
    Path(id): Path<String>,
) -> SfResult<StatusCode> {
    let engine = &app.engine;
    let instance = ids::instance(engine, &ctx, &id).await?;
    if !matches!(views::status(instance.state), views::TERMINATED | views::FAILED) {
        return Err(SfError::new(StatusCode::CONFLICT, "Instance must be terminated before deletion"));
    }
    engine.act_when_free(&ctx, instance.id, ActionRequest::Delete, BUSY_WAIT).await?;
    Ok(StatusCode::NO_CONTENT)
}
