//! Exoscale's block storage (`/v2/block-storage`, `/v2/block-storage-snapshot`) on the core's volumes, as
//! `exo compute block-storage` and the Terraform provider send it: create, list, show, update (name and
//! labels, the whole map), `:attach {instance}`, `:detach`, `:resize-volume {size}`, delete.
//!
//! States are Exoscale's words for the core's: `available` is `detached`, `in-use` is `attached`. A resize
//! answers the volume once the core's operation has ended (Exoscale's resize is not an operation). Volume snapshots are not in the core yet: their list is empty,
//! and creating one is refused.

use axum::extract::{Path, State};
use axum::Json;
use nimbus_core::labels::Labels;
use nimbus_core::volume::{Volume, VolumeState};
use nimbus_engine::{CreateVolume, VolumePatch};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Signed;
use super::errors::{ExoError, ExoResult};
use super::handlers::{parse_id, receipt, Ref};
use super::views;
use crate::AppState;

/// How long a resize is waited for before the volume is answered as it is (still growing).
const RESIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn state(s: VolumeState) -> &'static str {
    match s {
        VolumeState::Creating => "creating",
        VolumeState::Available => "detached",
        VolumeState::Attaching => "attaching",
        VolumeState::InUse => "attached",
        VolumeState::Detaching => "detaching",
        VolumeState::Deleting => "deleting",
        VolumeState::Error => "error",
    }
}

/// A volume as Exoscale's `block-storage-volume`.
pub fn volume_view(v: &Volume) -> Value {
    let mut out = json!({
        "id": v.id,
        "name": v.name,
        "size": v.size_gb,
        "state": state(v.state),
        "labels": v.labels,
        "blocksize": 4096,
        "block-storage-snapshots": [],
        "encrypted": false,
        "created-at": views::rfc3339(v.created_at),
    });
    if let Some(i) = v.instance_id {
        out["instance"] = json!({ "id": i });
    }
    out
}

fn reference(id: uuid::Uuid) -> Value {
    json!({ "id": id, "link": format!("/v2/block-storage/{id}"), "command": "get-block-storage-volume" })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct CreateBody {
    name: Option<String>,
    size: Option<u64>,
    #[serde(default)]
    labels: Option<Labels>,
    block_storage_snapshot: Option<Ref>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UpdateBody {
    name: Option<String>,
    /// Replaces the whole map; `null` (egoscale sends it on every update) leaves it unchanged.
    labels: Option<Labels>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct AttachBody {
    instance: Ref,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ResizeBody {
    size: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

pub async fn list(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let volumes = app.engine.list_volumes(&signed.ctx).await?;
    Ok(Json(json!({ "block-storage-volumes": volumes.iter().map(volume_view).collect::<Vec<_>>() })))
}

pub async fn create(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let body: CreateBody = signed.json()?;
    if body.block_storage_snapshot.is_some() {
        return Err(ExoError::bad_request(
            "Invalid parameter block-storage-snapshot: volumes are made empty in Nimbus",
        ));
    }
    let name = body.name.ok_or_else(|| ExoError::bad_request("Invalid parameter name: required"))?;
    let size = body.size.ok_or_else(|| ExoError::bad_request("Invalid parameter size: required"))?;
    let req = CreateVolume { name, size_gb: size, labels: body.labels.unwrap_or_default(), ..Default::default() };
    let (op, _) = app.engine.create_volume(&signed.ctx, req).await?;
    Ok(Json(views::operation(&op)))
}

pub async fn get(State(app): State<AppState>, Path(id): Path<String>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = parse_id("Block storage volume", &id)?;
    Ok(Json(volume_view(&app.engine.volume(&signed.ctx, id).await?)))
}

pub async fn delete(State(app): State<AppState>, Path(id): Path<String>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = parse_id("Block storage volume", &id)?;
    let op = app.engine.delete_volume(&signed.ctx, id).await?;
    Ok(Json(views::operation(&op)))
}

/// `PUT /v2/block-storage/{id}` (update) and `PUT /v2/block-storage/{id}:{action}`.
pub async fn put_segment(
    State(app): State<AppState>,
    Path(segment): Path<String>,
    signed: Signed,
) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let (id, action) = match segment.split_once(':') {
        Some((id, action)) => (id, Some(action)),
        None => (segment.as_str(), None),
    };
    let id = parse_id("Block storage volume", id)?;
    let op = match action {
        None => {
            let body: UpdateBody = signed.json()?;
            let patch = VolumePatch { name: body.name, replace_labels: body.labels, ..Default::default() };
            let v = app.engine.update_volume(ctx, id, patch).await?;
            return receipt(&app, ctx, reference(v.id)).await;
        }
        Some("attach") => {
            let body: AttachBody = signed.json()?;
            let instance = body.instance.required_id("instance")?;
            app.engine.attach_volume(ctx, id, instance).await?
        }
        Some("detach") => {
            signed.json::<Empty>()?;
            app.engine.detach_volume(ctx, id).await?
        }
        Some("resize-volume") => {
            let body: ResizeBody = signed.json()?;
            let op = app.engine.resize_volume(ctx, id, body.size).await?;
            // Exoscale's resize answers once done: the volume, not an operation to wait on.
            let done = app.engine.wait_operation(ctx, op.id, RESIZE_WAIT).await?;
            if done.state != nimbus_core::operation::OperationState::Success && done.is_final() {
                return Err(ExoError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    done.message.unwrap_or_else(|| "The volume could not be resized".into()),
                ));
            }
            return Ok(Json(volume_view(&app.engine.volume(ctx, id).await?)));
        }
        Some(other) => return Err(ExoError::not_found(&format!("Action {other}"))),
    };
    Ok(Json(views::operation(&op)))
}

/// `POST /v2/block-storage/{id}:create-snapshot`: not in the core yet.
pub async fn post_segment(
    State(app): State<AppState>,
    Path(segment): Path<String>,
    signed: Signed,
) -> ExoResult<Json<Value>> {
    let (id, action) = segment.split_once(':').ok_or_else(|| ExoError::not_found("Action"))?;
    let id = parse_id("Block storage volume", id)?;
    app.engine.volume(&signed.ctx, id).await?;
    match action {
        "create-snapshot" => Err(ExoError::bad_request("Block storage snapshots are not available in Nimbus yet")),
        other => Err(ExoError::not_found(&format!("Action {other}"))),
    }
}

pub async fn list_snapshots(_signed: Signed) -> ExoResult<Json<Value>> {
    Ok(Json(json!({ "block-storage-snapshots": [] })))
}

pub async fn get_snapshot(Path(_id): Path<String>, _signed: Signed) -> ExoResult<Json<Value>> {
    Err(ExoError::not_found("Block storage snapshot"))
}
