//! `/v1/volumes`: block storage that outlives instances. Thin: parse, call the engine, render.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::labels::Labels;
use nimbus_core::operation::Operation;
use nimbus_core::volume::{Volume, VolumeSnapshot};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::instances::{accepted, optional, parse_uuid, required, ActionQuery};
use super::views::{ErrorBody, OperationView};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, OptionalJsonBody, QueryParams};
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub project_id: Uuid,
    pub zone: String,
    pub size_gb: u64,
    /// creating, available, attaching, in-use, detaching, deleting, error
    pub state: String,
    /// The instance it is attached to (also while attaching and detaching).
    pub instance_id: Option<Uuid>,
    /// The disk's serial as the guest sees it: `/dev/disk/by-id/virtio-<serial>`.
    pub serial: String,
    pub labels: Labels,
    /// The operation holding the volume's lock, if one is running.
    pub operation_id: Option<Uuid>,
    /// The template whose disk it holds: an instance can boot from it (`boot_volume.volume_id` on create).
    pub template_id: Option<Uuid>,
    /// It is the boot disk of the instance it is attached to.
    pub boot: bool,
    /// The host that keeps its disk: shown to operators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&Volume> for VolumeView {
    fn from(v: &Volume) -> Self {
        VolumeView {
            id: v.id,
            name: v.name.clone(),
            description: v.description.clone(),
            project_id: v.project_id,
            zone: v.zone.clone(),
            size_gb: v.size_gb,
            state: v.state.as_str().into(),
            instance_id: v.instance_id,
            serial: v.serial.clone(),
            labels: v.labels.clone(),
            operation_id: v.lock_operation_id,
            template_id: v.template_id,
            boot: v.boot,
            host: None,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

impl VolumeView {
    /// The view a caller gets: the host only for operators, who run the hosts.
    pub fn for_caller(ctx: &nimbus_engine::Context, v: &Volume) -> VolumeView {
        let mut view = VolumeView::from(v);
        if ctx.role() == nimbus_core::tenancy::Role::Operator {
            view.host = v.host.clone();
        }
        view
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeList {
    pub items: Vec<VolumeView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeParams {
    pub name: String,
    /// Required for an empty volume; from a snapshot or a template, at least its size (default: that size).
    #[serde(default)]
    pub size_gb: u64,
    #[serde(default)]
    pub description: String,
    /// Default: the server's zone.
    pub zone: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    /// An instance to attach the new volume to, in the same operation.
    pub instance_id: Option<Uuid>,
    /// A ready volume snapshot of the project whose data the new volume starts with.
    pub snapshot_id: Option<Uuid>,
    /// A template (name or id) whose disk the new volume starts with: a volume an instance boots from
    /// (`boot_volume: {volume_id}` of an instance create). Default size: the template's smallest disk.
    pub template: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolumeParams {
    pub instance_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolumeParams {
    /// The new size; a volume only grows (attached too).
    pub size_gb: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Records the volume and the operation that makes its disk; the operation's target is the volume.
#[utoipa::path(post, path = "/v1/volumes", operation_id = "create_volume", tag = "volumes", request_body = CreateVolumeParams,
    responses((status = 202, body = OperationView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody,
        description = "quota exceeded")))]
pub async fn create(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateVolumeParams>,
) -> ApiResult<Response> {
    let req = nimbus_engine::CreateVolume {
        name: p.name,
        description: p.description,
        size_gb: p.size_gb,
        zone: p.zone,
        labels: p.labels,
        attach_to: p.instance_id,
        from_snapshot: p.snapshot_id,
        from_template: p.template,
    };
    let (op, _) = app.engine.create_volume(&ctx, req).await?;
    Ok(accepted(&op))
}

#[utoipa::path(get, path = "/v1/volumes", operation_id = "list_volumes", tag = "volumes", responses((status = 200, body = VolumeList)))]
pub async fn list(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<VolumeList>> {
    let volumes = app.engine.list_volumes(&ctx).await?;
    Ok(Json(VolumeList { items: volumes.iter().map(|v| VolumeView::for_caller(&ctx, v)).collect() }))
}

#[utoipa::path(get, path = "/v1/volumes/{id}", operation_id = "get_volume", tag = "volumes", params(("id" = Uuid, Path)),
    responses((status = 200, body = VolumeView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(VolumeView::for_caller(&ctx, &app.engine.volume(&ctx, parse_uuid("volume", &id)?).await?)))
}

/// Merge patch of `name`, `description` and `labels` (a null label deletes it).
#[utoipa::path(patch, path = "/v1/volumes/{id}", operation_id = "update_volume", tag = "volumes", params(("id" = Uuid, Path)),
    request_body(content = Object, description = "JSON merge patch of name, description, labels",
        content_type = "application/merge-patch+json"),
    responses((status = 200, body = VolumeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Json<VolumeView>> {
    let id = parse_uuid("volume", &id)?;
    let fields = body.as_object().ok_or_else(|| ApiError::bad_request("a merge patch is a JSON object"))?;
    let mut patch = nimbus_engine::VolumePatch::default();
    for (k, v) in fields {
        let text = || {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request(format!("invalid {k}: must be a string")))
        };
        match k.as_str() {
            "name" => patch.name = Some(text()?),
            "description" => patch.description = Some(text()?),
            "labels" => patch.labels = Some(v.clone()),
            other => {
                return Err(ApiError::bad_request(format!("invalid {other}: not a field a volume patch may change")))
            }
        }
    }
    Ok(Json(VolumeView::for_caller(&ctx, &app.engine.update_volume(&ctx, id, patch).await?)))
}

/// Deletes a detached volume and its data (409 while attached).
#[utoipa::path(delete, path = "/v1/volumes/{id}", operation_id = "delete_volume", tag = "volumes", params(("id" = Uuid, Path)),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(app): State<AppState>, Caller(ctx): Caller, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(accepted(&app.engine.delete_volume(&ctx, parse_uuid("volume", &id)?).await?))
}

/// `attach {instance_id}` (hot-plugged into a running instance), `detach`, `resize {size_gb}` (grow it; an
/// attached one grows under its running guest), `revert {snapshot_id}` (put a snapshot's data back; 409
/// while attached).
#[utoipa::path(post, path = "/v1/volumes/{id}/{action}", operation_id = "volume_action", tag = "volumes",
    params(("id" = Uuid, Path), ("action" = String, Path, description = "attach | detach | resize | revert"), ActionQuery),
    request_body(content = Object, description = "attach: AttachVolumeParams; resize: ResizeVolumeParams; revert: RevertVolumeParams; detach: none"),
    responses((status = 202, body = OperationView), (status = 200, body = OperationView, description = "ended within ?wait"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn action(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path((id, action)): Path<(String, String)>,
    QueryParams(q): QueryParams<ActionQuery>,
    OptionalJsonBody(body): OptionalJsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let id = parse_uuid("volume", &id)?;
    let op = match action.as_str() {
        "attach" => {
            let p = required::<AttachVolumeParams>("attach", body)?;
            app.engine.attach_volume(&ctx, id, p.instance_id).await?
        }
        "detach" => {
            optional::<NoParams>(body)?;
            app.engine.detach_volume(&ctx, id).await?
        }
        "resize" => {
            let p = required::<ResizeVolumeParams>("resize", body)?;
            app.engine.resize_volume(&ctx, id, p.size_gb).await?
        }
        "revert" => {
            let p = required::<RevertVolumeParams>("revert", body)?;
            app.engine.revert_volume(&ctx, id, p.snapshot_id).await?
        }
        other => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no volume action {other:?}")));
        }
    };
    answer(&app, &ctx, op, q).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeSnapshotView {
    pub id: Uuid,
    pub volume_id: Uuid,
    pub name: String,
    /// The volume's size when the snapshot was taken.
    pub size_gb: u64,
    /// creating, ready, deleting, error
    pub state: String,
    pub labels: Labels,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&VolumeSnapshot> for VolumeSnapshotView {
    fn from(s: &VolumeSnapshot) -> Self {
        VolumeSnapshotView {
            id: s.id,
            volume_id: s.volume_id,
            name: s.name.clone(),
            size_gb: s.size_gb,
            state: s.state.as_str().into(),
            labels: s.labels.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeSnapshotList {
    pub items: Vec<VolumeSnapshotView>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeSnapshotParams {
    /// Default: the volume's name and the time.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertVolumeParams {
    /// One of the volume's snapshots, `ready`.
    pub snapshot_id: Uuid,
}

/// A snapshot of the volume, when it is one of this volume's.
async fn snapshot_of(
    app: &AppState,
    ctx: &nimbus_engine::Context,
    id: &str,
    snapshot: &str,
) -> ApiResult<VolumeSnapshot> {
    let (volume_id, snapshot_id) = (parse_uuid("volume", id)?, parse_uuid("volume snapshot", snapshot)?);
    let s = app.engine.volume_snapshot(ctx, snapshot_id).await?;
    if s.volume_id != volume_id {
        return Err(nimbus_core::DomainError::not_found("volume snapshot", snapshot_id).into());
    }
    Ok(s)
}

/// Takes a snapshot of the volume's data, detached or attached (a running guest is paused for the copy);
/// the operation's target is the volume, its `snapshot_id` parameter the new snapshot.
#[utoipa::path(post, path = "/v1/volumes/{id}/snapshots", operation_id = "create_volume_snapshot", tag = "volumes",
    params(("id" = Uuid, Path), ActionQuery), request_body = CreateVolumeSnapshotParams,
    responses((status = 202, body = OperationView), (status = 200, body = OperationView, description = "ended within ?wait"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_snapshot(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<ActionQuery>,
    OptionalJsonBody(body): OptionalJsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let id = parse_uuid("volume", &id)?;
    let p = optional::<CreateVolumeSnapshotParams>(body)?;
    let req = nimbus_engine::CreateVolumeSnapshot { name: p.name, labels: p.labels };
    let (op, _) = app.engine.create_volume_snapshot(&ctx, id, req).await?;
    answer(&app, &ctx, op, q).await
}

#[utoipa::path(get, path = "/v1/volumes/{id}/snapshots", operation_id = "list_volume_snapshots", tag = "volumes",
    params(("id" = Uuid, Path)), responses((status = 200, body = VolumeSnapshotList), (status = 404, body = ErrorBody)))]
pub async fn list_snapshots(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<VolumeSnapshotList>> {
    let volume = app.engine.volume(&ctx, parse_uuid("volume", &id)?).await?;
    let snapshots = app.engine.list_volume_snapshots(&ctx, Some(volume.id)).await?;
    Ok(Json(VolumeSnapshotList { items: snapshots.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/volumes/{id}/snapshots/{snapshot_id}", operation_id = "get_volume_snapshot", tag = "volumes",
    params(("id" = Uuid, Path), ("snapshot_id" = Uuid, Path)),
    responses((status = 200, body = VolumeSnapshotView), (status = 404, body = ErrorBody)))]
pub async fn get_snapshot(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path((id, snapshot)): Path<(String, String)>,
) -> ApiResult<Json<VolumeSnapshotView>> {
    Ok(Json((&snapshot_of(&app, &ctx, &id, &snapshot).await?).into()))
}

/// Merge patch of `name` and `labels`.
#[utoipa::path(patch, path = "/v1/volumes/{id}/snapshots/{snapshot_id}", operation_id = "update_volume_snapshot", tag = "volumes",
    params(("id" = Uuid, Path), ("snapshot_id" = Uuid, Path)),
    request_body(content = Object, description = "JSON merge patch of name, labels", content_type = "application/merge-patch+json"),
    responses((status = 200, body = VolumeSnapshotView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_snapshot(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path((id, snapshot)): Path<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Json<VolumeSnapshotView>> {
    let s = snapshot_of(&app, &ctx, &id, &snapshot).await?;
    let fields = body.as_object().ok_or_else(|| ApiError::bad_request("a merge patch is a JSON object"))?;
    let mut patch = nimbus_engine::VolumeSnapshotPatch::default();
    for (k, v) in fields {
        match k.as_str() {
            "name" => {
                patch.name = Some(
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| ApiError::bad_request("invalid name: must be a string"))?,
                )
            }
            "labels" => patch.labels = Some(v.clone()),
            other => {
                return Err(ApiError::bad_request(format!("invalid {other}: not a field a snapshot patch may change")))
            }
        }
    }
    Ok(Json((&app.engine.update_volume_snapshot(&ctx, s.id, patch).await?).into()))
}

/// Removes the snapshot.
#[utoipa::path(delete, path = "/v1/volumes/{id}/snapshots/{snapshot_id}", operation_id = "delete_volume_snapshot", tag = "volumes",
    params(("id" = Uuid, Path), ("snapshot_id" = Uuid, Path)),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_snapshot(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path((id, snapshot)): Path<(String, String)>,
) -> ApiResult<Response> {
    let s = snapshot_of(&app, &ctx, &id, &snapshot).await?;
    Ok(accepted(&app.engine.delete_volume_snapshot(&ctx, s.id).await?))
}

async fn answer(app: &AppState, ctx: &nimbus_engine::Context, op: Operation, q: ActionQuery) -> ApiResult<Response> {
    if let Some(wait) = q.wait {
        let done = app.engine.wait_operation(ctx, op.id, Duration::from_secs(wait)).await?;
        let status = if done.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
        return Ok((status, Json(OperationView::from(&done))).into_response());
    }
    Ok(accepted(&op))
}
