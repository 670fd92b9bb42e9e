//! SharedCloud's instance endpoints (list, retrieve, create, PUT, PATCH, delete, start, stop) and its GPU
//! list. Each one authenticates the `Token`, reads the form-encoded or JSON body, checks it the way the
//! SharedCloud API does, and turns it into engine calls on the caller's project.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::catalog::GpuModel;
use nimbus_core::instance::{validate_name_by, Instance, InstanceState, NameRule};
use nimbus_core::DomainError;
use nimbus_engine::{ActionRequest, Context, CreateInstance, InstanceOrder, InstancePatch, InstanceWindow};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::errors::{FieldErrors, ScError, ScResult};
use super::views::{self, Gpu, CPU, EXT, GPU};
use crate::AppState;

/// The instance type of a CPU instance (SharedCloud names no size; this is Nimbus's smallest general one
/// that always exists).
pub const CPU_INSTANCE_TYPE: &str = "standard.small";
/// The instance type of a GPU instance, with one GPU of the model the user picks.
pub const GPU_INSTANCE_TYPE: &str = "gpu.small";
/// The template SharedCloud instances boot (the stock one); the first visible template if it is missing.
pub const TEMPLATE: &str = "busybox";
/// The smallest ask price SharedCloud accepts.
pub const MIN_ASK_PRICE: f64 = 0.001;
const MAX_NAME: usize = 255;
/// How long a call waits for the instance's running operation: SharedCloud answers at once, and its client
/// deletes or changes what it has just created.
const SETTLE: Duration = Duration::from_secs(60);

crate::dialects::common::key_caller!(ScCaller, ScError, "Token");

/// Reads a body the way DRF's default parsers do: form-encoded (what `sharedcloud-cli` sends) or JSON,
/// into one object. Form values are strings; a repeated key keeps its last value.
pub fn body_object(headers: &HeaderMap, body: &Bytes) -> ScResult<Map<String, Value>> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let form = || {
        form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect::<Map<String, Value>>()
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    if ct.starts_with("application/x-www-form-urlencoded") {
        return Ok(form());
    }
    if !ct.is_empty() && !ct.starts_with("application/json") && !ct.contains("+json") {
        return Err(ScError::detail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported media type \"{ct}\" in request."),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ScError::non_field("Invalid data. Expected a dictionary.")),
        // No content type at all: a form body is the likelier one.
        Err(_) if ct.is_empty() => Ok(form()),
        Err(e) => Err(ScError::detail(StatusCode::BAD_REQUEST, format!("JSON parse error - {e}"))),
    }
}

/// A number sent as a JSON number or as a string (every form value is one).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// The writable fields of an instance as sent; read-only ones (`uuid`, `status`, counters...) are ignored,
/// as DRF does, because the CLI echoes `uuid` back in its PATCH.
#[derive(Debug, Default)]
struct Input {
    name: Option<String>,
    ask_price: Option<f64>,
    kind: Option<i64>,
    max_num_parallel_jobs: Option<i64>,
    /// `Some(None)`: sent empty or null.
    gpu: Option<Option<Uuid>>,
}

fn parse_input(map: &Map<String, Value>, e: &mut FieldErrors) -> Input {
    let mut input = Input::default();
    match map.get("name") {
        None => {}
        Some(Value::Null) => e.add("name", "This field may not be null."),
        Some(Value::String(s)) if s.trim().is_empty() => e.add("name", "This field may not be blank."),
        Some(Value::String(s)) if s.chars().count() > MAX_NAME => {
            e.add("name", format!("Ensure this field has no more than {MAX_NAME} characters."))
        }
        Some(Value::String(s)) => input.name = Some(s.clone()),
        Some(_) => e.add("name", "Not a valid string."),
    }
    if let Some(v) = map.get("ask_price") {
        match number(v) {
            Some(p) if p < MIN_ASK_PRICE => {
                e.add("ask_price", format!("\"ask_price\" cannot be smaller than ${MIN_ASK_PRICE}"))
            }
            Some(p) => input.ask_price = Some(p),
            None => e.add("ask_price", "A valid number is required."),
        }
    }
    if let Some(v) = map.get("type") {
        let kind = match v {
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "cpu" => Some(CPU),
                "2" | "gpu" => Some(GPU),
                _ => None,
            },
            other => integer(other).filter(|k| [CPU, GPU].contains(k)),
        };
        match kind {
            Some(k) => input.kind = Some(k),
            None => e.add(
                "type",
                format!("\"{}\" is not a valid choice.", v.as_str().map_or(v.to_string(), str::to_string)),
            ),
        }
    }
    if let Some(v) = map.get("max_num_parallel_jobs") {
        match integer(v) {
            Some(n) if n < 1 => e.add("max_num_parallel_jobs", "Ensure this value is greater than or equal to 1."),
            Some(n) => input.max_num_parallel_jobs = Some(n),
            None => e.add("max_num_parallel_jobs", "A valid integer is required."),
        }
    }
    match map.get("gpu") {
        None => {}
        Some(Value::Null) => input.gpu = Some(None),
        Some(Value::String(s)) if s.trim().is_empty() => input.gpu = Some(None),
        Some(Value::String(s)) => match Uuid::parse_str(s.trim()) {
            Ok(u) => input.gpu = Some(Some(u)),
            Err(_) => e.add("gpu", format!("\u{201c}{s}\u{201d} is not a valid UUID.")),
        },
        Some(_) => e.add("gpu", "Must be a valid UUID."),
    }
    input
}

/// What an instance becomes: its instance type, GPU model and `max_num_parallel_jobs`.
struct Plan {
    instance_type: String,
    gpu_model: Option<String>,
    max_num_parallel_jobs: i64,
}

/// SharedCloud's rules between `type`, `gpu` and `max_num_parallel_jobs`, checked against the instance as
/// it is (`None` on create). A GPU instance takes one job at a time and names its GPU; a CPU one names none.
fn plan(gpus: &[Gpu], current: Option<&Instance>, input: &Input) -> ScResult<Plan> {
    let mut e = FieldErrors::default();
    let current_is_gpu = current.is_some_and(|i| i.gpus > 0);
    let current_max = current.map_or(views::DEFAULT_MAX_NUM_PARALLEL_JOBS, views::max_num_parallel_jobs);
    let kind = input.kind.unwrap_or(if current_is_gpu { GPU } else { CPU });
    let instance_type;
    let mut gpu_model = None;
    if kind == GPU {
        match input.gpu {
            Some(Some(uuid)) => match gpus.iter().find(|g| g.uuid == uuid) {
                Some(g) => gpu_model = Some(g.model.codename.clone()),
                None => e.add("gpu", format!("Invalid pk \"{uuid}\" - object does not exist.")),
            },
            // Already a GPU instance and not told otherwise: it keeps its GPU.
            None if current_is_gpu => gpu_model = current.and_then(|i| i.gpu_model.clone()),
            _ => {}
        }
        if gpu_model.is_none() && !e.has("gpu") {
            e.add("gpu", "\"gpu\" needs to be provided if the instance is type GPU");
        }
        // A GPU instance keeps whatever GPU type it has (one made through the native API may be larger).
        instance_type = match current {
            Some(i) if current_is_gpu => i.instance_type.clone(),
            _ => GPU_INSTANCE_TYPE.to_string(),
        };
        match input.max_num_parallel_jobs {
            Some(n) if n != 1 => e.add(
                "max_num_parallel_jobs",
                "\"max_num_parallel_jobs\" is invalid. All GPU instances can only process one job at a time",
            ),
            None if current_max != 1 => e.add(
                "max_num_parallel_jobs",
                format!("current set value ({current_max}) is invalid for a GPU instance. Please set it to 1"),
            ),
            _ => {}
        }
    } else {
        if matches!(input.gpu, Some(Some(_))) {
            e.add("gpu", "\"gpu\" is unnecessary because the instance is not, or not gonna be type GPU anymore");
        }
        // A CPU instance keeps whatever CPU type it has (one made through the native API may be larger).
        instance_type = match current {
            Some(i) if !current_is_gpu => i.instance_type.clone(),
            _ => CPU_INSTANCE_TYPE.to_string(),
        };
    }
    e.check()?;
    Ok(Plan { instance_type, gpu_model, max_num_parallel_jobs: input.max_num_parallel_jobs.unwrap_or(current_max) })
}

/// The catalog's GPU models with their SharedCloud uuids (stored by an older Nimbus, else derived).
async fn gpu_models(app: &AppState) -> ScResult<Vec<GpuModel>> {
    Ok(app.engine.list_gpu_models().await?)
}

async fn gpu_uuids<'a>(app: &AppState, models: &'a [GpuModel]) -> ScResult<Vec<Gpu<'a>>> {
    let mut gpus = Vec::with_capacity(models.len());
    for model in models {
        let alias = app.engine.alias_or(views::GPU_ALIAS, model.id, || views::new_gpu_uuid(model).to_string()).await?;
        let uuid = Uuid::parse_str(&alias)
            .map_err(|_| ScError::from(DomainError::Internal(format!("GPU alias {alias:?}"))))?;
        gpus.push(Gpu { model, uuid });
    }
    Ok(gpus)
}

fn instance_id(uuid: &str) -> ScResult<Uuid> {
    Uuid::parse_str(uuid).map_err(|_| ScError::not_found())
}

/// The caller's instance; one being deleted is already gone for SharedCloud, whose deletes are immediate.
async fn live_instance(app: &AppState, ctx: &Context, id: Uuid) -> ScResult<Instance> {
    let i = app.engine.instance(ctx, id).await?;
    if matches!(i.state, InstanceState::Destroying | InstanceState::Destroyed) {
        return Err(ScError::not_found());
    }
    Ok(i)
}

async fn render(app: &AppState, i: &Instance) -> ScResult<Value> {
    let types = app.engine.list_instance_types().await?;
    let models = gpu_models(app).await?;
    let gpus = gpu_uuids(app, &models).await?;
    Ok(views::instance(i, types.iter().find(|t| t.name == i.instance_type), &gpus, nimbus_core::now()))
}

pub async fn list(State(app): State<AppState>, ScCaller(ctx): ScCaller) -> ScResult<Json<Value>> {
    let types = app.engine.list_instance_types().await?;
    let models = gpu_models(&app).await?;
    let gpus = gpu_uuids(&app, &models).await?;
    // Newest first, the whole list: SharedCloud's is not paged.
    let window = InstanceWindow { order: InstanceOrder::Newest, ..Default::default() };
    let all = app.engine.instance_window(&ctx, &window).await?.items;
    let now = nimbus_core::now();
    let items: Vec<Value> = all
        .iter()
        .filter(|i| !matches!(i.state, InstanceState::Destroying | InstanceState::Destroyed))
        .map(|i| views::instance(i, types.iter().find(|t| t.name == i.instance_type), &gpus, now))
        .collect();
    Ok(Json(Value::Array(items)))
}

pub async fn get(
    State(app): State<AppState>,
    ScCaller(ctx): ScCaller,
    Path(uuid): Path<String>,
) -> ScResult<Json<Value>> {
    let i = live_instance(&app, &ctx, instance_id(&uuid)?).await?;
    Ok(Json(render(&app, &i).await?))
}

/// The template SharedCloud instances boot.
async fn template(app: &AppState, ctx: &Context) -> ScResult<String> {
    if let Ok(t) = app.engine.template(ctx, TEMPLATE).await {
        return Ok(t.id.to_string());
    }
    let templates = app.engine.list_templates(ctx).await?;
    templates
        .first()
        .map(|t| t.id.to_string())
        .ok_or_else(|| ScError::non_field("This cloud has no template to boot instances from."))
}

fn require(map: &Map<String, Value>, keys: &[&str], e: &mut FieldErrors) {
    for key in keys {
        if !map.contains_key(*key) {
            e.add(key, "This field is required.");
        }
    }
}

/// Creates the instance stopped (`status` 1, NOT_AVAILABLE: SharedCloud instances start when their owner
/// starts them) and answers once Nimbus has made it, so that the client may change or delete it at once.
pub async fn create(
    State(app): State<AppState>,
    ScCaller(ctx): ScCaller,
    headers: HeaderMap,
    body: Bytes,
) -> ScResult<Response> {
    let map = body_object(&headers, &body)?;
    let mut errors = FieldErrors::default();
    require(&map, &["name", "ask_price"], &mut errors);
    let input = parse_input(&map, &mut errors);
    // Each field's own errors come before the rules between fields, as DRF validates them.
    errors.check()?;
    let models = gpu_models(&app).await?;
    let plan = plan(&gpu_uuids(&app, &models).await?, None, &input)?;
    let mut extensions = BTreeMap::new();
    extensions.insert(EXT.to_string(), json!({ "max_num_parallel_jobs": plan.max_num_parallel_jobs }));
    let (op, instance) = app
        .engine
        .create_instance(
            &ctx,
            CreateInstance {
                name: input.name.clone().expect("required"),
                instance_type: plan.instance_type.clone(),
                gpu_model: plan.gpu_model.clone(),
                template: template(&app, &ctx).await?,
                price_hourly: input.ask_price,
                auto_start: false,
                // SharedCloud's names are any text (a Django CharField).
                name_rule: NameRule::AnyText,
                extensions,
                ..Default::default()
            },
        )
        .await?;
    app.engine.wait_operation(&ctx, op.id, SETTLE).await?;
    let instance = app.engine.instance(&ctx, instance.id).await.unwrap_or(instance);
    Ok((StatusCode::CREATED, Json(render(&app, &instance).await?)).into_response())
}

/// PUT (a full update, `name` and `ask_price` required) and PATCH (any subset of the fields): the fields
/// checked as SharedCloud does, then one engine call that changes what differs.
pub async fn update(
    State(app): State<AppState>,
    ScCaller(ctx): ScCaller,
    Path(uuid): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> ScResult<Json<Value>> {
    let required: &[&str] = if method == Method::PUT { &["name", "ask_price"] } else { &[] };
    // A change that turns out to change nothing never reaches the engine's own check: the caller must
    // be allowed to change the instance all the same (a read-only key's empty PATCH was answered 200).
    ctx.require(nimbus_core::tenancy::Role::Member)?;
    let id = instance_id(&uuid)?;
    let current = live_instance(&app, &ctx, id).await?;
    let map = body_object(&headers, &body)?;
    let mut errors = FieldErrors::default();
    require(&map, required, &mut errors);
    let input = parse_input(&map, &mut errors);
    if let Some(name) = &input.name {
        if let Err(DomainError::Invalid { message, .. }) = validate_name_by(NameRule::AnyText, "name", name) {
            errors.add("name", message);
        }
    }
    errors.check()?;
    let models = gpu_models(&app).await?;
    let plan = plan(&gpu_uuids(&app, &models).await?, Some(&current), &input)?;
    // New hardware (a GPU model, or CPU for GPU and back) is a scale, across families since SharedCloud
    // asks for it, which Nimbus does only while the instance is stopped (SharedCloud's NOT_AVAILABLE).
    let rehardware = plan.instance_type != current.instance_type || plan.gpu_model != current.gpu_model;
    let scale = rehardware.then(|| ActionRequest::ScaleTo {
        instance_type: plan.instance_type.clone(),
        gpu_model: plan.gpu_model.clone(),
        across_families: true,
        restart_if_running: false,
    });
    let field = if input.kind.is_some_and(|k| (current.gpus > 0) != (k == GPU)) { "type" } else { "gpu" };
    let mut patch = InstancePatch {
        name: input.name.clone().filter(|n| *n != current.name),
        name_rule: NameRule::AnyText,
        price_hourly: input.ask_price.filter(|p| Some(*p) != current.price_hourly).map(Some),
        ..Default::default()
    };
    if plan.max_num_parallel_jobs != views::max_num_parallel_jobs(&current) {
        patch.extensions.insert(EXT.into(), json!({ "max_num_parallel_jobs": plan.max_num_parallel_jobs }));
    }
    let updated = app
        .engine
        .scale_then_update(&ctx, id, scale, patch, SETTLE, |e| match e {
            DomainError::InvalidState { hint, .. } => {
                ScError::field(field, format!("{hint}: stop the instance first (it is AVAILABLE)"))
            }
            DomainError::Conflict(m) if !m.contains("concurrently") => ScError::field(field, m),
            other => other.into(),
        })
        .await?;
    Ok(Json(render(&app, &updated).await?))
}

/// 204 once Nimbus is deleting it; from then on the instance is gone for SharedCloud.
pub async fn delete(
    State(app): State<AppState>,
    ScCaller(ctx): ScCaller,
    Path(uuid): Path<String>,
) -> ScResult<StatusCode> {
    let id = instance_id(&uuid)?;
    live_instance(&app, &ctx, id).await?;
    app.engine.act_when_free(&ctx, id, ActionRequest::Delete, SETTLE).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `start` (`RUN`) and `stop` (what `sharedcloud instance start` calls): the instance runs, `status` 2, or
/// stops, `status` 1. Asking for the state it is already in (or heading to) changes nothing.
pub async fn run_state<const RUN: bool>(
    State(app): State<AppState>,
    ScCaller(ctx): ScCaller,
    Path(uuid): Path<String>,
) -> ScResult<Json<Value>> {
    let id = instance_id(&uuid)?;
    live_instance(&app, &ctx, id).await?;
    app.engine.power_to(&ctx, id, RUN, SETTLE).await?;
    let i = app.engine.instance(&ctx, id).await?;
    Ok(Json(render(&app, &i).await?))
}

/// The GPU models of the catalog, most CUDA cores first; available when the GPU instance type that
/// SharedCloud instances get is offered here.
pub async fn gpus(State(app): State<AppState>, ScCaller(_ctx): ScCaller) -> ScResult<Json<Value>> {
    let zone = app.engine.config().zone.clone();
    let types = app.engine.list_instance_types().await?;
    let available = types.iter().any(|t| t.name == GPU_INSTANCE_TYPE && t.authorized && t.zones.contains(&zone));
    let models = gpu_models(&app).await?;
    let gpus = gpu_uuids(&app, &models).await?;
    Ok(Json(Value::Array(gpus.iter().map(|g| views::gpu(g, available)).collect())))
}
