//! `/v1/instances`: create, list, get, update, batch update, delete, actions, password, console.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::instance::InstanceState;
use nimbus_core::labels::Selector;
use nimbus_core::DomainError;
use nimbus_engine::{ActionRequest, BootVolumeRequest, CreateInstance, InstanceFilter, InstancePatch, InstanceVolume};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::views::*;
use crate::auth::{Caller, ConsoleCaller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_json, JsonBody, OptionalJsonBody, QueryParams};
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceParams {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 255, example = "web-1")]
    pub name: String,
    /// Name (`standard.small`) or id.
    #[schema(example = "standard.small")]
    pub instance_type: String,
    /// Codename of the GPU model (`titanv`) of a type with GPUs; the default model when absent.
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// Name (`busybox`) or id. May be left out when booting from an existing volume, whose template it is.
    #[schema(example = "busybox")]
    #[serde(default)]
    pub template: String,
    pub disk_size_gb: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub description: Option<String>,
    pub hostname: Option<String>,
    /// Base64; a `#!` script or `#cloud-config`.
    pub user_data: Option<String>,
    /// Names or ids of registered SSH keys.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<Uuid>,
    #[serde(default)]
    pub anti_affinity_groups: Vec<Uuid>,
    /// Start once created (default true).
    pub auto_start: Option<bool>,
    #[serde(default)]
    pub tpm_enabled: bool,
    #[serde(default)]
    pub secure_boot: bool,
    #[serde(default)]
    pub protected: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expected_shutdown_at: Option<OffsetDateTime>,
    /// Volumes given to the instance beside its disk, attached before its first boot: existing ones
    /// (`available`, of the project and zone) and new, empty ones.
    #[serde(default)]
    pub volumes: Vec<InstanceVolumeParams>,
    /// Boot from a volume instead of a disk of the instance's own: `{}` makes a new one from the template,
    /// of the instance's disk size; `{"volume_id"}` boots an existing volume made from a template (the
    /// instance takes its template and size). The volume outlives the instance unless
    /// `delete_on_termination`.
    pub boot_volume: Option<BootVolumeParams>,
    /// A reserved address of the project (`/v1/reserved-addresses`) the instance gets instead of a free one;
    /// it goes back to the reservation when the instance is deleted.
    pub reserved_address_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootVolumeParams {
    /// An existing volume, `available`, made from a template.
    pub volume_id: Option<Uuid>,
    /// A new volume's name (default: `<instance>-boot`).
    pub name: Option<String>,
    /// Delete the volume with the instance (default: keep it).
    #[serde(default)]
    pub delete_on_termination: bool,
}

/// A volume of a new instance: `{"volume_id"}` for an existing one, `{"size_gb", "name"?, "labels"?}` for a
/// new one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceVolumeParams {
    /// An existing volume, `available`.
    pub volume_id: Option<Uuid>,
    /// The size of a new volume.
    pub size_gb: Option<u64>,
    /// A new volume's name (default: `<instance>-volume-<n>`).
    pub name: Option<String>,
    /// A new volume's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl InstanceVolumeParams {
    fn into_engine(self, n: usize, instance: &str) -> Result<InstanceVolume, ApiError> {
        match (self.volume_id, self.size_gb) {
            (Some(id), None) if self.name.is_none() && self.labels.is_empty() => Ok(InstanceVolume::Existing(id)),
            (None, Some(size_gb)) => Ok(InstanceVolume::New {
                name: self.name.unwrap_or_else(|| format!("{instance}-volume-{n}")),
                size_gb,
                labels: self.labels,
            }),
            _ => Err(ApiError::from(nimbus_core::DomainError::invalid(
                format!("volumes.{n}"),
                "give either volume_id (an existing volume) or size_gb with an optional name and labels (a new one)",
            ))),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListInstancesQuery {
    /// Label selector: `env=prod,tier!=web,team,!legacy`.
    pub labels: Option<String>,
    pub state: Option<String>,
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActionQuery {
    /// Block up to this many seconds for the operation to end before answering.
    pub wait: Option<u64>,
}

/// The fields a merge patch may carry; anything else is refused.
const PATCHABLE: &[&str] = &["name", "hostname", "description", "labels", "expected_shutdown_at"];

/// Turns a JSON merge patch (RFC 7386) into an instance patch, naming the first field it cannot take.
pub fn patch_from_json(value: &serde_json::Value) -> Result<InstancePatch, ApiError> {
    let obj = value.as_object().ok_or_else(|| ApiError::bad_request("a merge patch must be a JSON object"))?;
    let mut patch = InstancePatch::default();
    for (key, v) in obj {
        match key.as_str() {
            "name" => patch.name = Some(string_field("name", v)?),
            "hostname" => patch.hostname = Some(string_field("hostname", v)?),
            "description" => {
                patch.description = Some(if v.is_null() { String::new() } else { string_field("description", v)? })
            }
            "labels" => patch.labels = Some(v.clone()),
            "expected_shutdown_at" => {
                patch.expected_shutdown_at = Some(if v.is_null() {
                    None
                } else {
                    let s = string_field("expected_shutdown_at", v)?;
                    Some(OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).map_err(|e| {
                        ApiError::bad_request(format!("invalid expected_shutdown_at: {e} (expected RFC 3339)"))
                    })?)
                })
            }
            "id" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "field {other:?} cannot be patched; patchable fields: {}",
                    PATCHABLE.join(", ")
                )))
            }
        }
    }
    Ok(patch)
}

fn string_field(field: &str, v: &serde_json::Value) -> Result<String, ApiError> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        ApiError::bad_request(format!("invalid {field}: expected a string, got {}", nimbus_core::labels::json_type(v)))
    })
}

pub fn parse_uuid(kind: &'static str, s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::from(DomainError::not_found(kind, s)))
}

pub(crate) fn with_etag(view: InstanceView, etag: String) -> Response {
    let mut response = Json(view).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// Accepted operations answer 202 with the operation and its URL in `Location`.
pub fn accepted(op: &nimbus_core::operation::Operation) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(OperationView::from(op))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/v1/operations/{}", op.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

#[utoipa::path(post, path = "/v1/instances", operation_id = "create_instance", tag = "instances", request_body = CreateInstanceParams,
    responses((status = 202, body = OperationView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateInstanceParams>,
) -> ApiResult<Response> {
    let volumes =
        p.volumes.into_iter().enumerate().map(|(n, v)| v.into_engine(n, &p.name)).collect::<Result<Vec<_>, _>>()?;
    if p.boot_volume.as_ref().is_some_and(|b| b.volume_id.is_some() && b.name.is_some()) {
        return Err(nimbus_core::DomainError::invalid("boot_volume.name", "only a new boot volume is named").into());
    }
    let boot_volume = p.boot_volume.map(|b| BootVolumeRequest {
        existing: b.volume_id,
        name: b.name,
        delete_on_termination: b.delete_on_termination,
    });
    let (op, _) = app
        .engine
        .create_instance(
            &ctx,
            CreateInstance {
                name: p.name,
                hostname: p.hostname,
                description: p.description.unwrap_or_default(),
                instance_type: p.instance_type,
                gpu_model: p.gpu_model,
                template: p.template,
                disk_size_gb: p.disk_size_gb,
                labels: p.labels,
                user_data: p.user_data,
                ssh_keys: p.ssh_keys,
                security_groups: p.security_groups,
                anti_affinity_groups: p.anti_affinity_groups,
                auto_start: p.auto_start.unwrap_or(true),
                tpm_enabled: p.tpm_enabled,
                secure_boot: p.secure_boot,
                protected: p.protected,
                expected_shutdown_at: p.expected_shutdown_at,
                volumes,
                boot_volume,
                reserved_address: p.reserved_address_id,
                ..Default::default()
            },
        )
        .await?;
    Ok(accepted(&op))
}

#[utoipa::path(get, path = "/v1/instances", operation_id = "list_instances", tag = "instances", params(ListInstancesQuery),
    responses((status = 200, body = InstanceList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    QueryParams(q): QueryParams<ListInstancesQuery>,
) -> ApiResult<Json<InstanceList>> {
    let state = q
        .state
        .as_deref()
        .map(|s| {
            InstanceState::parse(s).ok_or_else(|| ApiError::bad_request(format!("invalid state: unknown state {s:?}")))
        })
        .transpose()?;
    let labels = q.labels.as_deref().map(Selector::parse).transpose()?;
    let page = app
        .engine
        .list_instances(
            &ctx,
            InstanceFilter {
                labels,
                state,
                name: q.name,
                limit: q.limit,
                page_token: q.page_token,
                ..Default::default()
            },
        )
        .await?;
    // One read of the project's volumes for the whole page.
    let volumes = app.engine.list_volumes(&ctx).await?;
    let attached = |id: Uuid| volumes.iter().filter(|v| v.instance_id == Some(id)).map(|v| v.id).collect();
    Ok(Json(InstanceList {
        items: page
            .items
            .iter()
            .map(|i| InstanceView { volumes: Some(attached(i.id)), ..InstanceView::for_caller(&ctx, i) })
            .collect(),
        next_page_token: page.next_page_token,
    }))
}

#[utoipa::path(get, path = "/v1/instances/{id}", operation_id = "get_instance", tag = "instances", params(("id" = Uuid, Path)),
    responses((status = 200, body = InstanceView, headers(("etag" = String))), (status = 404, body = ErrorBody)))]
pub async fn get(State(app): State<AppState>, Caller(ctx): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let instance = app.engine.instance(&ctx, parse_uuid("instance", &id)?).await?;
    let volumes = app.engine.volumes_of_instance(&instance).await?.iter().map(|v| v.id).collect();
    let view = InstanceView { volumes: Some(volumes), ..InstanceView::for_caller(&ctx, &instance) };
    Ok(with_etag(view, instance.etag()))
}

/// `If-Match: "7"` (or `W/"7"`, or `*` for any version).
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    let tag = s.trim_start_matches("W/").trim_matches('"');
    tag.parse::<i64>().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            format!("If-Match {s} is not an ETag of this server"),
        )
    })
}

#[utoipa::path(patch, path = "/v1/instances/{id}", operation_id = "update_instance", tag = "instances", params(("id" = Uuid, Path)),
    request_body(content = Object, description = "JSON merge patch of name, hostname, description, labels, expected_shutdown_at",
        content_type = "application/merge-patch+json"),
    responses((status = 200, body = InstanceView), (status = 400, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let id = parse_uuid("instance", &id)?;
    let expected = if_match(&headers)?;
    let patch = patch_from_json(&body)?;
    let instance = app.engine.update_instance(&ctx, id, patch, expected).await?;
    Ok(with_etag(InstanceView::for_caller(&ctx, &instance), instance.etag()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchUpdateParams {
    /// Each entry: `{"id": ..., name?, description?, labels?, expected_shutdown_at?}`. The entries of an id
    /// given more than once apply in order, each over the one before.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

#[utoipa::path(patch, path = "/v1/instances", operation_id = "update_instances", tag = "instances", request_body = BatchUpdateParams,
    responses((status = 200, body = InstanceList), (status = 422, body = ErrorBody)))]
pub async fn batch_update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<BatchUpdateParams>,
) -> ApiResult<Json<InstanceList>> {
    let unprocessable = |e: ApiError| ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, ..e };
    let mut entries = Vec::with_capacity(p.items.len());
    for (n, item) in p.items.iter().enumerate() {
        let id = item
            .get("id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ApiError::bad_request(format!("invalid items[{n}].id: missing or not a string")))?;
        let id = Uuid::parse_str(id).map_err(|_| unprocessable(DomainError::not_found("instance", id).into()))?;
        let patch =
            patch_from_json(item).map_err(|e| ApiError { message: format!("items[{n}]: {}", e.message), ..e })?;
        entries.push((id, patch));
    }
    let updated = app.engine.batch_update(&ctx, entries).await.map_err(|e| {
        let e = ApiError::from(e);
        if e.status.is_client_error() && e.status != StatusCode::UNAUTHORIZED && e.status != StatusCode::FORBIDDEN {
            ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("{}; no instance was changed", e.message),
                ..e
            }
        } else {
            e
        }
    })?;
    Ok(Json(InstanceList {
        items: updated.iter().map(|i| InstanceView::for_caller(&ctx, i)).collect(),
        next_page_token: None,
    }))
}

#[utoipa::path(delete, path = "/v1/instances/{id}", operation_id = "delete_instance", tag = "instances", params(("id" = Uuid, Path)),
    responses((status = 202, body = OperationView), (status = 409, body = ErrorBody)))]
pub async fn delete(State(app): State<AppState>, Caller(ctx): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let op = app.engine.act(&ctx, parse_uuid("instance", &id)?, ActionRequest::Delete).await?;
    Ok(accepted(&op))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleParams {
    pub instance_type: String,
    /// Codename of the GPU model to move onto; the instance keeps its own (or gets the default) when absent.
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// A scale stays within the instance type's family unless this is true.
    #[serde(default)]
    pub across_families: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeDiskParams {
    pub disk_size_gb: u64,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotParams {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertSnapshotParams {
    pub snapshot_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ResetParams {
    pub template: Option<String>,
    pub disk_size_gb: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EmptyParams {}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    /// Boot the host's rescue system instead of the instance's own until it stops (`rescue` shows it; reboots
    /// boot it again, the next start its own system): the busybox kernel
    /// and initramfs with the instance's address, keys and password, its disks attached but not mounted.
    pub rescue: Option<bool>,
}

pub(crate) fn required<T: for<'de> Deserialize<'de>>(
    action: &str,
    body: Option<serde_json::Value>,
) -> Result<T, ApiError> {
    let body = body.ok_or_else(|| ApiError::bad_request(format!("{action} needs a JSON body")))?;
    parse_json(body.to_string().as_bytes())
}

pub(crate) fn optional<T: for<'de> Deserialize<'de> + Default>(body: Option<serde_json::Value>) -> Result<T, ApiError> {
    match body {
        None => Ok(T::default()),
        Some(b) => parse_json(b.to_string().as_bytes()),
    }
}

#[utoipa::path(post, path = "/v1/instances/{id}/{action}", operation_id = "instance_action", tag = "instances",
    params(("id" = Uuid, Path), ("action" = String, Path, description = "start | stop | reboot | reset | scale | resize-disk | create-snapshot | revert-snapshot | reset-password | add-protection | remove-protection | enable-tpm | suspend | resume"), ActionQuery),
    request_body(content = Object, description = "start: {rescue?}; scale: {instance_type}; resize-disk: {disk_size_gb}; create-snapshot: {name?}; revert-snapshot: {snapshot_id}; reset: {template?, disk_size_gb?}; others: none"),
    responses((status = 202, body = OperationView), (status = 200, body = InstanceView, description = "add-protection, remove-protection"),
        (status = 409, body = ErrorBody)))]
pub async fn action(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path((id, action)): Path<(String, String)>,
    QueryParams(q): QueryParams<ActionQuery>,
    OptionalJsonBody(body): OptionalJsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let id = parse_uuid("instance", &id)?;
    let request = match action.as_str() {
        "start" => match optional::<StartParams>(body)?.rescue {
            Some(true) => ActionRequest::StartRescue,
            _ => ActionRequest::Start,
        },
        "stop" => ActionRequest::Stop,
        "reboot" => ActionRequest::Reboot,
        "reset" => {
            let p: ResetParams = optional(body)?;
            ActionRequest::Reset { template: p.template, disk_size_gb: p.disk_size_gb }
        }
        "scale" => {
            let p = required::<ScaleParams>("scale", body)?;
            if p.gpu_model.is_none() && !p.across_families {
                ActionRequest::Scale { instance_type: p.instance_type }
            } else {
                ActionRequest::ScaleTo {
                    instance_type: p.instance_type,
                    gpu_model: p.gpu_model,
                    across_families: p.across_families,
                    restart_if_running: false,
                }
            }
        }
        "resize-disk" => {
            ActionRequest::ResizeDisk { disk_size_gb: required::<ResizeDiskParams>("resize-disk", body)?.disk_size_gb }
        }
        "create-snapshot" => ActionRequest::CreateSnapshot { name: optional::<CreateSnapshotParams>(body)?.name },
        "revert-snapshot" => ActionRequest::RevertSnapshot {
            snapshot_id: required::<RevertSnapshotParams>("revert-snapshot", body)?.snapshot_id,
        },
        "reset-password" => ActionRequest::ResetPassword,
        "enable-tpm" => ActionRequest::EnableTpm,
        "suspend" => ActionRequest::Suspend,
        "resume" => ActionRequest::Resume,
        "add-protection" | "remove-protection" => {
            optional::<EmptyParams>(body)?;
            let instance = app.engine.set_protection(&ctx, id, action == "add-protection").await?;
            return Ok(with_etag(InstanceView::for_caller(&ctx, &instance), instance.etag()));
        }
        other => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no instance action {other:?}")));
        }
    };
    let op = app.engine.act(&ctx, id, request).await?;
    if let Some(wait) = q.wait {
        let done = app.engine.wait_operation(&ctx, op.id, Duration::from_secs(wait)).await?;
        let status = if done.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
        return Ok((status, Json(OperationView::from(&done))).into_response());
    }
    Ok(accepted(&op))
}

#[utoipa::path(get, path = "/v1/instances/{id}/password", operation_id = "get_instance_password", tag = "instances", params(("id" = Uuid, Path)),
    responses((status = 200, body = PasswordView), (status = 404, body = ErrorBody)))]
pub async fn password(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PasswordView>> {
    let p = app.engine.reveal_password(&ctx, parse_uuid("instance", &id)?).await?;
    Ok(Json(PasswordView { password: p.password, expires_at: p.expires_at }))
}

#[utoipa::path(get, path = "/v1/instances/{id}/console", operation_id = "get_instance_console", tag = "instances", params(("id" = Uuid, Path)),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 404, body = ErrorBody)))]
pub async fn console(State(app): State<AppState>, Caller(ctx): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let log = app.engine.console(&ctx, parse_uuid("instance", &id)?).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}

#[utoipa::path(get, path = "/v1/instances/{id}/metrics", operation_id = "get_instance_metrics", tag = "instances", params(("id" = Uuid, Path)),
    responses((status = 200, body = InstanceMetricsView), (status = 404, body = ErrorBody)))]
pub async fn metrics(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceMetricsView>> {
    let m = app.engine.instance_metrics(&ctx, parse_uuid("instance", &id)?).await?;
    Ok(Json(InstanceMetricsView {
        cpu_time_ns: m.cpu_time_ns,
        memory_rss_bytes: m.memory_rss_bytes,
        disk_used_bytes: m.disk_used_bytes,
        net_rx_bytes: m.net_rx_bytes,
        net_tx_bytes: m.net_tx_bytes,
    }))
}

/// Where a console ticket is used: this server's console stream of the instance, with the ticket as its
/// query, so the URL works without any header. Dialects hand out the same URL.
pub struct ConsoleUrl {
    /// `ws://` or `wss://` (behind a proxy that sets `X-Forwarded-Proto: https`), host, path and query.
    pub url: String,
    pub host: String,
    /// Path and query.
    pub path: String,
}

pub fn console_url(headers: &HeaderMap, ticket: &nimbus_engine::ConsoleTicket) -> ConsoleUrl {
    console_url_of(headers, ticket.instance_id, &ticket.token)
}

/// The console URL of a ticket's `token` for `instance`.
pub fn console_url_of(headers: &HeaderMap, instance: Uuid, token: &str) -> ConsoleUrl {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let scheme = match headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()) {
        Some("https") => "wss",
        _ => "ws",
    };
    // The token is made of URL-safe characters only (hex, '.', base64url).
    let path = format!("/v1/instances/{instance}/console/stream?ticket={token}");
    ConsoleUrl { url: format!("{scheme}://{host}{path}"), host, path }
}

/// A single-use ticket to the interactive console of a running instance, valid for 60 seconds to connect:
/// `url` opens the websocket without the API secret (for browsers and other clouds' clients).
#[utoipa::path(post, path = "/v1/instances/{id}/console/ticket", operation_id = "create_console_ticket", tag = "instances", params(("id" = Uuid, Path)),
    responses((status = 201, body = ConsoleTicketView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn console_ticket(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let ticket = app.engine.console_ticket(&ctx, parse_uuid("instance", &id)?).await?;
    let url = console_url(&headers, &ticket);
    let view = ConsoleTicketView { url: url.url, ticket: ticket.token, expires_at: ticket.expires_at };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The interactive serial console over a websocket: binary frames both ways. Authorised by a bearer API
/// key, or by `?ticket=` from `POST .../console/ticket` (single use, this instance only).
pub async fn console_stream(
    State(app): State<AppState>,
    caller: ConsoleCaller,
    Path(id): Path<String>,
    ws: axum::extract::WebSocketUpgrade,
) -> ApiResult<Response> {
    let id = parse_uuid("instance", &id)?;
    let ctx = match caller {
        ConsoleCaller::Key(ctx) => *ctx,
        ConsoleCaller::Ticket { token, actor } => app.engine.redeem_console_ticket(&token, id, actor).await?,
    };
    let stream = app.engine.console_stream(&ctx, id).await?;
    let engine = app.engine.clone();
    Ok(ws.on_upgrade(
        move |socket| async move { crate::relay::relay_until(socket, stream, engine.key_revoked(&ctx)).await },
    ))
}

/// A TCP tunnel to a port of a running instance, over a websocket (binary frames both ways), made from
/// inside the instance network: `nimbus instance ssh` and `port-forward` use it, so the caller needs no
/// route to the instance network, only an API key.
pub async fn tunnel(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path((id, port)): Path<(String, String)>,
    ws: axum::extract::WebSocketUpgrade,
) -> ApiResult<Response> {
    let id = parse_uuid("instance", &id)?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| nimbus_core::DomainError::invalid("port", "must be a TCP port, 1 to 65535"))?;
    let stream = app.engine.connect(&ctx, id, port).await?;
    let engine = app.engine.clone();
    Ok(ws.on_upgrade(
        move |socket| async move { crate::relay::relay_until(socket, stream, engine.key_revoked(&ctx)).await },
    ))
}

/// The guest's own view of its network interfaces, from its guest agent (qemu-guest-agent).
#[utoipa::path(get, path = "/v1/instances/{id}/guest", tag = "instances", params(("id" = Uuid, Path)),
    responses((status = 200, body = GuestView), (status = 404, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn guest(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<GuestView>> {
    let interfaces = app.engine.guest_interfaces(&ctx, parse_uuid("instance", &id)?).await?;
    Ok(Json(GuestView {
        interfaces: interfaces
            .into_iter()
            .map(|i| GuestInterfaceView { name: i.name, mac_address: i.mac_address, addresses: i.addresses })
            .collect(),
    }))
}
