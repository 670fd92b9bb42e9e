//! Exoscale's block storage (`/v2/block-storage`, `/v2/block-storage-snapshot`) on the core's volumes, as
//! `exo compute block-storage` and the Terraform provider send it: create, list, show, update (name and
//! labels, the whole map), `:attach {instance}`, `:detach`, `:resize-volume {size}`, delete.
//!
//! States are Exoscale's words for the core's: `available` is `detached`, `in-use` is `attached`. A resize
//! answers the volume once the core's operation has ended (Exoscale's resize is not an operation).
//! Snapshots (`/v2/block-storage-snapshot`: list, show, update name and labels, delete, and
//! `POST /v2/block-storage/{id}:create-snapshot`) are the core's volume snapshots: `ready` is `created`,
//! `deleting` is `destroying`. Exoscale's API has no revert of a volume (egoscale v3 offers none; a new
//! volume from a snapshot is its way), so the core's revert is not offered here. A create naming
//! `block-storage-snapshot` makes the volume as a copy of that snapshot (the engine's `from_snapshot`).

use axum::extract::State;
use axum::Json;
use nimbus_core::labels::Labels;
use nimbus_core::volume::{Volume, VolumeSnapshot, VolumeSnapshotState, VolumeState};
use nimbus_engine::{CreateVolume, CreateVolumeSnapshot, VolumePatch, VolumeSnapshotPatch};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Signed;
use super::errors::{ExoError, ExoResult};
use super::handlers::{receipt, Ref};
use super::views;
use crate::AppState;

const VOLUME: &str = "Block storage volume";
const SNAPSHOT: &str = "Block storage snapshot";

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

/// A volume snapshot as Exoscale's `block-storage-snapshot`.
pub fn snapshot_view(s: &VolumeSnapshot) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "size": s.size_gb,
        "volume-size": s.size_gb,
        "state": match s.state {
            VolumeSnapshotState::Creating => "creating",
            VolumeSnapshotState::Ready => "created",
            VolumeSnapshotState::Deleting => "destroying",
            VolumeSnapshotState::Error => "error",
        },
        "labels": s.labels,
        "created-at": views::rfc3339(s.created_at),
        "block-storage-volume": { "id": s.volume_id },
    })
}

/// A volume as Exoscale's `block-storage-volume`, with its snapshots' references.
pub fn volume_view_with(v: &Volume, snapshots: &[VolumeSnapshot]) -> Value {
    let mut out = volume_view(v);
    out["block-storage-snapshots"] =
        snapshots.iter().filter(|s| s.volume_id == v.id).map(|s| json!({ "id": s.id })).collect::<Vec<_>>().into();
    out
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

/// A volume's or a snapshot's update, and a snapshot's create.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct NameAndLabels {
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
    let snapshots = app.engine.list_volume_snapshots(&signed.ctx, None).await?;
    let views: Vec<Value> = volumes.iter().map(|v| volume_view_with(v, &snapshots)).collect();
    Ok(Json(json!({ "block-storage-volumes": views })))
}

pub async fn create(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let body: CreateBody = signed.json()?;
    let name = body.name.ok_or_else(|| ExoError::bad_request("Invalid parameter name: required"))?;
    // From a snapshot, the size is optional (the snapshot's); an empty volume needs one.
    let from_snapshot = match &body.block_storage_snapshot {
        Some(r) => Some(r.required_id("block-storage-snapshot")?),
        None => None,
    };
    let size = match (body.size, from_snapshot) {
        (Some(s), _) => s,
        (None, Some(_)) => 0,
        (None, None) => return Err(ExoError::bad_request("Invalid parameter size: required")),
    };
    let req = CreateVolume {
        name,
        size_gb: size,
        labels: body.labels.unwrap_or_default(),
        from_snapshot,
        ..Default::default()
    };
    let (op, _) = app.engine.create_volume(&signed.ctx, req).await?;
    Ok(Json(views::operation(&op)))
}

pub async fn get(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(VOLUME)?;
    let v = app.engine.volume(&signed.ctx, id).await?;
    let snapshots = app.engine.list_volume_snapshots(&signed.ctx, Some(id)).await?;
    Ok(Json(volume_view_with(&v, &snapshots)))
}

pub async fn delete(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(VOLUME)?;
    let op = app.engine.delete_volume(&signed.ctx, id).await?;
    Ok(Json(views::operation(&op)))
}

/// `PUT /v2/block-storage/{id}` (update) and `PUT /v2/block-storage/{id}:{action}`.
pub async fn put_segment(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let (id, action) = signed.id_and_action(VOLUME)?;
    let op = match action {
        None => {
            let body: NameAndLabels = signed.json()?;
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

/// `POST /v2/block-storage/{id}:create-snapshot`: an operation whose reference is the new snapshot.
pub async fn post_segment(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    match signed.id_and_action(VOLUME)? {
        (_, None) => Err(ExoError::not_found("Action")),
        (id, Some("create-snapshot")) => {
            let body: NameAndLabels = signed.json()?;
            let req =
                CreateVolumeSnapshot { name: body.name.unwrap_or_default(), labels: body.labels.unwrap_or_default() };
            let (op, _) = app.engine.create_volume_snapshot(&signed.ctx, id, req).await?;
            Ok(Json(views::operation(&op)))
        }
        (id, Some(other)) => {
            app.engine.volume(&signed.ctx, id).await?;
            Err(ExoError::not_found(&format!("Action {other}")))
        }
    }
}

pub async fn list_snapshots(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let snapshots = app.engine.list_volume_snapshots(&signed.ctx, None).await?;
    Ok(Json(json!({ "block-storage-snapshots": snapshots.iter().map(snapshot_view).collect::<Vec<_>>() })))
}

pub async fn get_snapshot(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(SNAPSHOT)?;
    Ok(Json(snapshot_view(&app.engine.volume_snapshot(&signed.ctx, id).await?)))
}

/// `PUT /v2/block-storage-snapshot/{id}`: name and labels (the whole map), done at once.
pub async fn update_snapshot(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(SNAPSHOT)?;
    let body: NameAndLabels = signed.json()?;
    let patch = VolumeSnapshotPatch { name: body.name, replace_labels: body.labels, ..Default::default() };
    let s = app.engine.update_volume_snapshot(&signed.ctx, id, patch).await?;
    let reference = json!({
        "id": s.id,
        "link": format!("/v2/block-storage-snapshot/{}", s.id),
        "command": "get-block-storage-snapshot",
    });
    receipt(&app, &signed.ctx, reference).await
}

pub async fn delete_snapshot(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(SNAPSHOT)?;
    let op = app.engine.delete_volume_snapshot(&signed.ctx, id).await?;
    Ok(Json(views::operation(&op)))
}
