//! ONET's compute instance endpoints: list, retrieve, create, replace (PUT) and partial update (PATCH) of
//! the modifiable properties, resize, delete, and the task of background work. Each one authenticates,
//! checks the path's tenancy, translates the request into engine calls and renders ONET's objects.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::catalog::{InstanceType, Template, Zone};
use nimbus_core::instance::{Instance, InstanceState, NameRule};
use nimbus_core::labels::Labels;
use nimbus_core::DomainError;
use nimbus_engine::{ActionRequest, Context, CreateInstance, InstancePatch, InstanceWindow};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::errors::{FieldErrors, OnetError, OnetResult};
use super::views::{self, BILLING_CYCLES, DEFAULT_BILLING_CYCLE, EXT, LEGACY_ID};
use crate::AppState;

/// DRF's page size when the client names none, and the largest it may ask for.
const DEFAULT_PAGE_SIZE: u32 = 20;
const MAX_PAGE_SIZE: u32 = 100;
const MAX_NAME: usize = 255;
const MAX_HOSTNAME: usize = 255;
const MAX_OS_NAME: usize = 100;

crate::dialects::common::key_caller!(OnetCaller, OnetError, "Bearer");

/// The caller of a request under `/v1/organizations/{organization_id}/projects/{project_id}/...` and the
/// path's other parameters. The path's organization and project must be the key's: any other looks like
/// nothing at all.
pub struct InProject {
    ctx: Context,
    params: Vec<(String, String)>,
}

impl FromRequestParts<AppState> for InProject {
    type Rejection = OnetError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let OnetCaller(ctx) = OnetCaller::from_request_parts(parts, state).await?;
        let raw = RawPathParams::from_request_parts(parts, state).await.map_err(|_| OnetError::not_found())?;
        let params: Vec<(String, String)> = raw.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let same = |key: &str, actual: Uuid| {
            params.iter().any(|(k, v)| k == key && Uuid::parse_str(v).is_ok_and(|g| g == actual))
        };
        if !same("organization_id", ctx.project.organization_id) || !same("project_id", ctx.project.id) {
            return Err(OnetError::not_found());
        }
        Ok(InProject { ctx, params })
    }
}

impl InProject {
    fn param(&self, key: &str) -> &str {
        self.params.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v)
    }

    /// The path's `{id}`, an instance's.
    fn instance_id(&self) -> OnetResult<Uuid> {
        Uuid::parse_str(self.param("id")).map_err(|_| super::errors::no_instance())
    }

    /// The path's `key`, a task's or session's id.
    fn other_id(&self, key: &str) -> OnetResult<Uuid> {
        Uuid::parse_str(self.param(key)).map_err(|_| OnetError::not_found())
    }
}

/// A task answered as accepted (202): it runs in the background.
fn accepted(app: &AppState, op: &nimbus_core::operation::Operation, name: &str) -> Response {
    (StatusCode::ACCEPTED, Json(views::task(op, Some(name), app.engine.config().max_attempts))).into_response()
}

/// What rendering needs from the catalog, read once per request.
struct Renderer {
    organization_id: Uuid,
    zone: Zone,
    cidr: String,
    types: Vec<InstanceType>,
    templates: Vec<Template>,
    driver: &'static str,
}

impl Renderer {
    async fn new(app: &AppState, ctx: &Context) -> OnetResult<Renderer> {
        Ok(Renderer {
            organization_id: ctx.project.organization_id,
            zone: app.engine.zone().await?,
            cidr: app.engine.config().network_cidr.clone(),
            types: app.engine.list_instance_types().await?,
            templates: app.engine.list_templates(ctx).await?,
            driver: app.engine.driver_name(),
        })
    }

    async fn render(&self, app: &AppState, ctx: &Context, i: &Instance) -> OnetResult<Value> {
        // An older Nimbus stored a random one; otherwise the instance's store-assigned number.
        let legacy = app.engine.alias_or(LEGACY_ID, i.id, || i.numeric_id.to_string()).await?;
        // Figures are best effort: an instance the host does not run (yet) simply has none.
        let metrics = if i.host.is_some() || i.state != InstanceState::Creating {
            app.engine.instance_metrics(ctx, i.id).await.ok()
        } else {
            None
        };
        let uptime_secs = match i.state {
            InstanceState::Running => app.engine.last_booted_at(ctx, i.id).await?,
            _ => None,
        }
        .map_or(0, |t| (nimbus_core::now() - t).whole_seconds().max(0));
        let c = views::Context {
            organization_id: self.organization_id,
            zone: &self.zone,
            network_cidr: &self.cidr,
            size: self.types.iter().find(|t| t.name == i.instance_type),
            template: self.templates.iter().find(|t| t.id == i.template_id),
            legacy_id: legacy.parse().unwrap_or(0),
            metrics,
            uptime_secs,
            driver: self.driver,
            now: nimbus_core::now(),
        };
        Ok(views::instance(i, &c))
    }
}

/// DRF's absolute URL of another page: the request's URL with `page` replaced (dropped for page 1).
fn page_url(headers: &HeaderMap, uri: &Uri, page: u64) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    let mut query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if page > 1 {
        query.push(("page".into(), page.to_string()));
    }
    let mut url = format!("{scheme}://{host}{}", uri.path());
    if !query.is_empty() {
        url.push('?');
        url.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish());
    }
    url
}

pub async fn list(
    State(app): State<AppState>,
    InProject { ctx, .. }: InProject,
    headers: HeaderMap,
    uri: Uri,
) -> OnetResult<Json<Value>> {
    let params: BTreeMap<String, String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // DRF falls back to the default page size on a bad one and clamps a large one.
    let page_size = params
        .get("page_size")
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .map_or(DEFAULT_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE));
    let invalid_page = || OnetError::detail(StatusCode::NOT_FOUND, "Invalid page.");
    // `None`: the last page, known once the count is.
    let asked = match params.get("page").map(String::as_str) {
        None => Some(1),
        Some("last") => None,
        Some(s) => Some(s.parse::<u64>().ok().filter(|&p| p >= 1).ok_or_else(invalid_page)?),
    };
    // ONET keeps deleted instances, `terminated`, for a while: listed too.
    let window = |page: u64| InstanceWindow {
        with_destroyed: true,
        offset: (page - 1).saturating_mul(page_size.into()),
        limit: Some(page_size),
        ..Default::default()
    };
    let mut found = app.engine.instance_window(&ctx, &window(asked.unwrap_or(1))).await?;
    let pages = found.count.div_ceil(page_size.into()).max(1);
    let page = match asked {
        Some(page) => page,
        None if pages > 1 => {
            found = app.engine.instance_window(&ctx, &window(pages)).await?;
            pages
        }
        None => 1,
    };
    if page > pages {
        return Err(invalid_page());
    }
    let renderer = Renderer::new(&app, &ctx).await?;
    let mut results = Vec::new();
    for i in &found.items {
        results.push(renderer.render(&app, &ctx, i).await?);
    }
    Ok(Json(json!({
        "count": found.count,
        "next": (page < pages).then(|| page_url(&headers, &uri, page + 1)),
        "previous": (page > 1).then(|| page_url(&headers, &uri, page - 1)),
        "results": results,
    })))
}

pub async fn get(State(app): State<AppState>, p: InProject) -> OnetResult<Json<Value>> {
    let instance = app.engine.instance_or_destroyed(&p.ctx, p.instance_id()?).await?;
    let renderer = Renderer::new(&app, &p.ctx).await?;
    Ok(Json(renderer.render(&app, &p.ctx, &instance).await?))
}

/// A request body's fields as ONET names them, each validated the way DRF's serializer does.
#[derive(Debug, Default)]
struct Input {
    name: Option<String>,
    hostname: Option<String>,
    os_name: Option<String>,
    description: Option<String>,
    size_id: Option<Uuid>,
    location_id: Option<Uuid>,
    image_id: Option<Uuid>,
    /// `Some(None)`: sent as null.
    vpc_id: Option<Option<Uuid>>,
    billing_cycle: Option<String>,
    /// The labels `tags` stands for: a map of strings is the labels, anything else empties them.
    tags: Option<Labels>,
    /// `tags` that are not a map of strings, kept verbatim; `Some(Null)` when they are (nothing verbatim).
    verbatim_tags: Option<Value>,
}

/// Reads the JSON body the way DRF's parser does: 415 for another media type, 400 for malformed JSON or a
/// body that is not an object.
fn body_object(headers: &HeaderMap, body: &Bytes) -> OnetResult<Map<String, Value>> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") && !ct.contains("+json") {
            return Err(OnetError::detail(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Unsupported media type \"{ct}\" in request."),
            ));
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| OnetError::detail(StatusCode::BAD_REQUEST, format!("JSON parse error - {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(OnetError::non_field(format!(
            "Invalid data. Expected a dictionary, but got {}.",
            match other {
                Value::Array(_) => "list",
                Value::String(_) => "str",
                Value::Bool(_) => "bool",
                Value::Number(_) => "int",
                _ => "NoneType",
            }
        ))),
    }
}

fn string_field(map: &Map<String, Value>, key: &str, max: usize, errors: &mut FieldErrors) -> Option<String> {
    match map.get(key)? {
        Value::Null => errors.add(key, "This field may not be null."),
        Value::String(s) if s.trim().is_empty() => errors.add(key, "This field may not be blank."),
        Value::String(s) if s.chars().count() > max => {
            errors.add(key, format!("Ensure this field has no more than {max} characters."))
        }
        Value::String(s) => return Some(s.clone()),
        _ => errors.add(key, "Not a valid string."),
    }
    None
}

fn uuid_field(map: &Map<String, Value>, key: &str, errors: &mut FieldErrors) -> Option<Option<Uuid>> {
    match map.get(key)? {
        Value::Null => Some(None),
        Value::String(s) => match Uuid::parse_str(s) {
            Ok(u) => Some(Some(u)),
            Err(_) => {
                errors.add(key, "Must be a valid UUID.");
                None
            }
        },
        _ => {
            errors.add(key, "Must be a valid UUID.");
            None
        }
    }
}

/// A hardware relation: it may not be null when sent.
fn hardware_field(map: &Map<String, Value>, key: &str, errors: &mut FieldErrors) -> Option<Uuid> {
    match uuid_field(map, key, errors) {
        Some(None) => {
            errors.add(key, "This field may not be null.");
            None
        }
        given => given.flatten(),
    }
}

fn parse_input(map: &Map<String, Value>) -> (Input, FieldErrors) {
    let mut e = FieldErrors::default();
    let mut input = Input {
        name: string_field(map, "name", MAX_NAME, &mut e),
        hostname: string_field(map, "hostname", MAX_HOSTNAME, &mut e),
        os_name: string_field(map, "os_name", MAX_OS_NAME, &mut e),
        description: match map.get("description") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(_) => {
                e.add("description", "Not a valid string.");
                None
            }
        },
        vpc_id: uuid_field(map, "vpc_id", &mut e),
        ..Default::default()
    };
    for (key, slot) in
        [("size_id", &mut input.size_id), ("location_id", &mut input.location_id), ("image_id", &mut input.image_id)]
    {
        *slot = hardware_field(map, key, &mut e);
    }
    if let Some(v) = map.get("billing_cycle") {
        let given = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if BILLING_CYCLES.contains(&given.as_str()) {
            input.billing_cycle = Some(given);
        } else {
            e.add("billing_cycle", format!("\"{given}\" is not a valid choice."));
        }
    }
    // ONET types `tags` as any JSON (`<unknown>`): whatever the client sends is kept and returned as given.
    if let Some(v) = map.get("tags") {
        let strings: Option<Labels> = match v {
            Value::Null => Some(Labels::new()),
            Value::Object(obj) => obj.iter().map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect(),
            _ => None,
        };
        match strings {
            Some(labels) => {
                input.tags = Some(labels);
                input.verbatim_tags = Some(Value::Null);
            }
            None => {
                input.tags = Some(Labels::new());
                input.verbatim_tags = Some(v.clone());
            }
        }
    }
    (input, e)
}

fn does_not_exist(id: Uuid) -> String {
    format!("Invalid pk \"{id}\" - object does not exist.")
}

/// The instance's ONET extension map with `input`'s billing cycle, OS name and verbatim tags applied, as a
/// merge patch of the current one (a key it drops is `null`).
fn extension(current: Option<&Value>, input: &Input) -> Value {
    let mut ext = current.and_then(Value::as_object).cloned().unwrap_or_default();
    match &input.verbatim_tags {
        None => {}
        Some(Value::Null) if ext.contains_key("tags") => {
            ext.insert("tags".into(), Value::Null);
        }
        Some(Value::Null) => {}
        // Wrapped in a one-element array: the engine merges extension maps as JSON merge patches, which
        // replace an array whole but would merge an object into the old one and drop its nulls.
        Some(v) => {
            ext.insert("tags".into(), json!([v]));
        }
    }
    if let Some(cycle) = &input.billing_cycle {
        ext.insert("billing_cycle".into(), json!(cycle));
    }
    if let Some(os) = &input.os_name {
        ext.insert("os_name".into(), json!(os));
    }
    Value::Object(ext)
}

pub async fn create(
    State(app): State<AppState>,
    InProject { ctx, .. }: InProject,
    headers: HeaderMap,
    body: Bytes,
) -> OnetResult<Response> {
    let map = body_object(&headers, &body)?;
    let (mut input, mut errors) = parse_input(&map);
    for key in ["name", "size_id", "image_id"] {
        if !map.contains_key(key) {
            errors.add(key, "This field is required.");
        }
    }
    let renderer = Renderer::new(&app, &ctx).await?;
    let size = input.size_id.and_then(|id| {
        let found = renderer.types.iter().find(|t| t.id == id);
        if found.is_none() {
            errors.add("size_id", does_not_exist(id));
        }
        found
    });
    let image = match input.image_id {
        Some(id) => match app.engine.template(&ctx, &id.to_string()).await {
            Ok(t) => Some(t),
            Err(_) => {
                errors.add("image_id", does_not_exist(id));
                None
            }
        },
        None => None,
    };
    // One location and one VPC exist: naming them is allowed, naming another is naming nothing.
    if let Some(id) = input.location_id.filter(|&id| id != views::location_id(&renderer.zone)) {
        errors.add("location_id", does_not_exist(id));
    }
    if let Some(Some(id)) = input.vpc_id.filter(|v| *v != Some(views::vpc_id(&renderer.zone))) {
        errors.add("vpc_id", does_not_exist(id));
    }
    errors.check()?;
    let (Some(size), Some(image), Some(name)) = (size, image, input.name.take()) else {
        unreachable!("required fields were checked");
    };
    input.billing_cycle.get_or_insert_with(|| DEFAULT_BILLING_CYCLE.to_string());
    let mut extensions = BTreeMap::new();
    extensions.insert(EXT.to_string(), extension(None, &input));
    let (_, instance) = app
        .engine
        .create_instance(
            &ctx,
            CreateInstance {
                name,
                hostname: input.hostname.clone(),
                description: input.description.clone().unwrap_or_default(),
                instance_type: size.name.clone(),
                template: image.id.to_string(),
                labels: input.tags.clone().unwrap_or_default(),
                auto_start: true,
                // ONET's "Instance name" is any text up to 255 characters.
                name_rule: NameRule::AnyText,
                extensions,
                ..Default::default()
            },
        )
        .await?;
    let view = renderer.render(&app, &ctx, &instance).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// PUT and PATCH: DRF's full and partial update take the same fields here, and PUT too leaves absent
/// fields as they are.
pub async fn update_instance(
    State(app): State<AppState>,
    p: InProject,
    headers: HeaderMap,
    body: Bytes,
) -> OnetResult<Json<Value>> {
    let (ctx, id) = (&p.ctx, p.instance_id()?);
    let map = body_object(&headers, &body)?;
    let renderer = Renderer::new(&app, ctx).await?;
    // Planned on a read and applied only if the instance is still at that version (the engine re-plans
    // otherwise), so a concurrent writer's change is never overwritten.
    let updated = app
        .engine
        .update_instance_with(ctx, id, |current| {
            let (input, mut errors) = parse_input(&map);
            // Clients echo the object back: the same hardware is fine, another is refused, never applied.
            let resize = "Hardware configuration changes require the resize endpoint (POST .../resize).";
            let current_size = renderer.types.iter().find(|t| t.name == current.instance_type).map(|t| t.id);
            if input.size_id.is_some_and(|s| Some(s) != current_size) {
                errors.add("size_id", resize);
            }
            if input.image_id.is_some_and(|i| i != current.template_id) {
                errors.add("image_id", "The image cannot be changed here; reinstalling is a separate operation.");
            }
            if input.location_id.is_some_and(|l| l != views::location_id(&renderer.zone)) {
                errors.add("location_id", "An instance cannot move to another location.");
            }
            if input.vpc_id.is_some_and(|v| v != Some(views::vpc_id(&renderer.zone))) {
                errors.add("vpc_id", "An instance cannot move to another VPC.");
            }
            errors.check()?;
            let mut patch = InstancePatch {
                name: input.name.clone().filter(|n| *n != current.name),
                name_rule: NameRule::AnyText,
                hostname: input.hostname.clone().filter(|h| *h != current.hostname),
                description: input.description.clone().filter(|d| *d != current.description),
                replace_labels: input.tags.clone().filter(|t| *t != current.labels),
                ..Default::default()
            };
            if input.billing_cycle.is_some() || input.os_name.is_some() || input.verbatim_tags.is_some() {
                let ext = extension(current.extensions.get(EXT), &input);
                if current.extensions.get(EXT) != Some(&ext) {
                    patch.extensions.insert(EXT.to_string(), ext);
                }
            }
            let nothing = patch.name.is_none()
                && patch.hostname.is_none()
                && patch.description.is_none()
                && patch.replace_labels.is_none()
                && patch.extensions.is_empty();
            Ok::<_, OnetError>((!nothing).then_some(patch))
        })
        .await?;
    Ok(Json(renderer.render(&app, ctx, &updated).await?))
}

pub async fn resize(
    State(app): State<AppState>,
    p: InProject,
    headers: HeaderMap,
    body: Bytes,
) -> OnetResult<Response> {
    let (ctx, id) = (&p.ctx, p.instance_id()?);
    let map = body_object(&headers, &body)?;
    let instance = app.engine.instance(ctx, id).await?;
    let mut errors = FieldErrors::default();
    let size_id = hardware_field(&map, "size_id", &mut errors);
    if !map.contains_key("size_id") {
        errors.add("size_id", "This field is required.");
    }
    errors.check()?;
    let size_id = size_id.expect("checked");
    let types = app.engine.list_instance_types().await?;
    let size =
        types.iter().find(|t| t.id == size_id).ok_or_else(|| OnetError::field("size_id", does_not_exist(size_id)))?;
    let op =
        app.engine.act(ctx, id, ActionRequest::Scale { instance_type: size.name.clone() }).await.map_err(
            |e| match e {
                // The engine's refusals of the target size (another family, the same size) are about size_id.
                DomainError::Conflict(m) if !m.contains("concurrently") => OnetError::field("size_id", m),
                DomainError::InvalidState { state, .. } => OnetError::detail(
                    StatusCode::BAD_REQUEST,
                    format!("The instance must be stopped to be resized; it is {state}."),
                ),
                other => other.into(),
            },
        )?;
    Ok(accepted(&app, &op, &instance.name))
}

pub async fn delete(State(app): State<AppState>, p: InProject) -> OnetResult<StatusCode> {
    app.engine.act(&p.ctx, p.instance_id()?, ActionRequest::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn task(State(app): State<AppState>, p: InProject, uri: Uri) -> OnetResult<Json<Value>> {
    let (ctx, id) = (&p.ctx, p.other_id("id")?);
    // `?wait=SECONDS` blocks until the task ends, as the native operations do.
    let wait = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "wait")
        .and_then(|(_, v)| v.parse::<u64>().ok());
    let op = match wait {
        Some(secs) => app.engine.wait_operation(ctx, id, Duration::from_secs(secs)).await?,
        None => app.engine.operation(ctx, id).await?,
    };
    let name = app.engine.instance(ctx, op.target.id).await.ok().map(|i| i.name);
    Ok(Json(views::task(&op, name.as_deref(), app.engine.config().max_attempts)))
}

/// `POST .../instances/{id}/{start|stop|shutdown|reboot|reset}`: ONET's power actions, each answered with its
/// task (202), pollable like every task. As in the VPS panels ONET's task names come from, `shutdown` asks
/// the guest to power off (forced after a grace period) and `stop` cuts the power at once; `reboot` asks the
/// guest to reboot and `reset` resets the VM.
pub async fn power(State(app): State<AppState>, p: InProject) -> OnetResult<Response> {
    let (ctx, id) = (&p.ctx, p.instance_id()?);
    let (request, verb) = match p.param("action") {
        "start" => (ActionRequest::Start, "started"),
        "shutdown" => (ActionRequest::Stop, "shut down"),
        "stop" => (ActionRequest::PowerOff, "stopped"),
        "reboot" => (ActionRequest::SoftReboot, "rebooted"),
        "reset" => (ActionRequest::Reboot, "reset"),
        _ => return Err(OnetError::not_found()),
    };
    let instance = app.engine.instance(ctx, id).await?;
    let op = app.engine.act(ctx, id, request).await.map_err(|e| match e {
        DomainError::InvalidState { state, .. } => {
            OnetError::detail(StatusCode::BAD_REQUEST, format!("The instance cannot be {verb} while it is {state}."))
        }
        other => other.into(),
    })?;
    Ok(accepted(&app, &op, &instance.name))
}

/// `POST .../instances/{id}/console`: a console session of a running instance, whose `url` opens its serial
/// console (the native console websocket with a single-use ticket: no API token needed, valid for a minute
/// to connect). The session's id is the ticket, so `GET .../console/{session_id}` shows it again.
pub async fn open_console(State(app): State<AppState>, p: InProject, headers: HeaderMap) -> OnetResult<Response> {
    let ticket = app.engine.console_ticket(&p.ctx, p.instance_id()?).await.map_err(|e| match e {
        DomainError::InvalidState { state, .. } => OnetError::detail(
            StatusCode::BAD_REQUEST,
            format!("The console is available while the instance runs; it is {state}."),
        ),
        other => other.into(),
    })?;
    let url = crate::native::instances::console_url(&headers, &ticket).url;
    let session = views::console_session(&ticket.token, ticket.instance_id, &url, Some(ticket.expires_at));
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

/// `GET .../instances/{id}/console/{session_id}`: the session again (its ticket is checked when the URL is
/// opened, not here).
pub async fn console(State(app): State<AppState>, p: InProject, headers: HeaderMap) -> OnetResult<Json<Value>> {
    let instance = app.engine.instance(&p.ctx, p.instance_id()?).await?;
    let session = p.param("session_id");
    // Only URL-safe characters go into the URL, as in the tokens the engine makes.
    if !session.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(OnetError::not_found());
    }
    let url = crate::native::instances::console_url_of(&headers, instance.id, session).url;
    Ok(Json(views::console_session(session, instance.id, &url, None)))
}

/// `GET .../instances/{id}/tasks/{task_id}`: a task of that instance.
pub async fn instance_task(State(app): State<AppState>, p: InProject) -> OnetResult<Json<Value>> {
    let instance = app.engine.instance(&p.ctx, p.instance_id()?).await?;
    let op = app.engine.operation(&p.ctx, p.other_id("task_id")?).await?;
    if op.target.id != instance.id {
        return Err(OnetError::not_found());
    }
    Ok(Json(views::task(&op, Some(&instance.name), app.engine.config().max_attempts)))
}

/// One DRF page holding a whole (small) catalog.
fn catalog_page(results: Vec<Value>) -> Json<Value> {
    Json(json!({ "count": results.len(), "next": null, "previous": null, "results": results }))
}

/// `GET /v1/compute/sizes` (and under the project's path): the sizes a create's `size_id` names, in the
/// shape the instance object embeds.
pub async fn sizes(State(app): State<AppState>, OnetCaller(_ctx): OnetCaller) -> OnetResult<Json<Value>> {
    Ok(catalog_page(app.engine.list_instance_types().await?.iter().map(views::size).collect()))
}

/// `GET /v1/compute/locations`: the one location, this server's zone.
pub async fn locations(State(app): State<AppState>, OnetCaller(_ctx): OnetCaller) -> OnetResult<Json<Value>> {
    Ok(catalog_page(vec![views::location(&app.engine.zone().await?)]))
}

/// `GET /v1/compute/images`: the images the caller may install.
pub async fn images(State(app): State<AppState>, OnetCaller(ctx): OnetCaller) -> OnetResult<Json<Value>> {
    let org = ctx.project.organization_id;
    Ok(catalog_page(app.engine.list_templates(&ctx).await?.iter().map(|t| views::image(t, org)).collect()))
}

/// The catalogs under the project's path: the same, once the path's tenancy is the key's.
pub async fn project_catalog(State(app): State<AppState>, p: InProject) -> OnetResult<Json<Value>> {
    let caller = OnetCaller(p.ctx.clone());
    match p.param("catalog") {
        "sizes" => sizes(State(app), caller).await,
        "locations" => locations(State(app), caller).await,
        "images" => images(State(app), caller).await,
        _ => Err(OnetError::not_found()),
    }
}
