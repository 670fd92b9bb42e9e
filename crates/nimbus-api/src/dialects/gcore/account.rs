//! What a Gcore client looks up before it creates anything: its projects (`/cloud/v1/projects`), the regions
//! (`/cloud/v1/regions`) and the project's SSH keys (`/cloud/v1/ssh_keys/{project_id}`), which a create's
//! `ssh_key_name` names. A key sees one project, its own; the one region is this server's zone. SSH keys are
//! the core's, shared with every dialect: always shared in the project, and Nimbus generates no key pair,
//! so a create gives `public_key`.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::Json;
use nimbus_core::catalog::Zone;
use nimbus_core::resources::SshKey;
use nimbus_engine::Context;
use serde_json::{json, Value};

use super::common::{page, query_pairs, required_str, BodyMap, GcoreCaller};
use super::errors::{GcoreError, GcoreResult};
use super::views::rfc3339;
use crate::AppState;

/// A request under `/{project_id}`: the caller authenticated first, then the path's project checked
/// against its key's (any other looks like nothing at all).
pub(super) struct InProject(Context);

impl FromRequestParts<AppState> for InProject {
    type Rejection = GcoreError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let GcoreCaller(ctx) = GcoreCaller::from_request_parts(parts, state).await?;
        let project = parts.uri.path().trim_start_matches("/cloud/v1/").split('/').nth(1).unwrap_or("");
        if project.parse::<i64>().ok() != Some(ctx.project.numeric_id) {
            return Err(GcoreError::not_found(format!("Project {project} could not be found")));
        }
        Ok(InProject(ctx))
    }
}

fn ssh_key(k: &SshKey, project_id: i64) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "public_key": k.public_key,
        "fingerprint": k.fingerprint,
        "created_at": rfc3339(k.created_at),
        "project_id": project_id,
        "shared_in_project": true,
        "state": "ACTIVE",
    })
}

/// The key of the path, by id (Gcore's) or name.
async fn key_of(app: &AppState, ctx: &Context, id: &str) -> GcoreResult<SshKey> {
    app.engine.ssh_key(ctx, id).await.map_err(|e| match e {
        nimbus_core::DomainError::NotFound { .. } => GcoreError::not_found(format!("SSH key {id} could not be found")),
        other => other.into(),
    })
}

pub async fn list_ssh_keys(
    State(app): State<AppState>,
    InProject(ctx): InProject,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let project = ctx.project.numeric_id;
    let keys = app.engine.list_ssh_keys(&ctx).await?;
    page(keys.iter().map(|k| ssh_key(k, project)).collect(), &q)
}

pub async fn get_ssh_key(
    State(app): State<AppState>,
    InProject(ctx): InProject,
    Path((_, id)): Path<(String, String)>,
) -> GcoreResult<Json<Value>> {
    Ok(Json(ssh_key(&key_of(&app, &ctx, &id).await?, ctx.project.numeric_id)))
}

/// `POST /cloud/v1/ssh_keys/{project_id}`: `{name, public_key, shared_in_project?}`; the SDK reads the
/// answer as `SSHKeyCreated`, with no `private_key` since the client gave the public one.
pub async fn create_ssh_key(
    State(app): State<AppState>,
    InProject(ctx): InProject,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let name = required_str(&map, "name")?;
    let public_key = match map.get("public_key") {
        Some(Value::String(k)) => k,
        Some(_) => return Err(GcoreError::field("public_key", "Input should be a valid string")),
        None => return Err(GcoreError::field("public_key", "Field required: Nimbus does not generate key pairs")),
    };
    if map.get("shared_in_project").is_some_and(|s| s != &Value::Bool(true)) {
        return Err(GcoreError::field("shared_in_project", "Keys are always shared in their project here"));
    }
    let key = app.engine.create_ssh_key(&ctx, name, public_key).await?;
    let mut created = ssh_key(&key, ctx.project.numeric_id);
    created["private_key"] = Value::Null;
    Ok(Json(created))
}

/// `DELETE /cloud/v1/ssh_keys/{project_id}/{id}`: no body, as the SDK expects.
pub async fn delete_ssh_key(
    State(app): State<AppState>,
    InProject(ctx): InProject,
    Path((_, id)): Path<(String, String)>,
) -> GcoreResult<StatusCode> {
    let key = key_of(&app, &ctx, &id).await?;
    app.engine.delete_ssh_key(&ctx, &key.id.to_string()).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn project(ctx: &Context) -> Value {
    let p = &ctx.project;
    json!({
        "id": p.numeric_id,
        "client_id": p.numeric_id,
        "name": p.name,
        "description": null,
        "created_at": rfc3339(p.created_at),
        "deleted_at": null,
        "is_default": true,
        "state": "ACTIVE",
        "task_id": null,
    })
}

/// `GET /cloud/v1/projects`: the key's project, the only one it sees.
pub async fn list_projects(GcoreCaller(ctx): GcoreCaller, uri: Uri) -> GcoreResult<Json<Value>> {
    page(vec![project(&ctx)], &query_pairs(&uri))
}

pub async fn get_project(GcoreCaller(ctx): GcoreCaller, Path(id): Path<String>) -> GcoreResult<Json<Value>> {
    if id.parse::<i64>().ok() != Some(ctx.project.numeric_id) {
        return Err(GcoreError::not_found(format!("Project {id} could not be found")));
    }
    Ok(Json(project(&ctx)))
}

fn region(zone: &Zone) -> Value {
    let name = if zone.description.is_empty() { zone.name.clone() } else { zone.description.clone() };
    json!({
        "id": zone.numeric_id,
        "display_name": name,
        "slug": zone.name,
        "keystone_name": zone.name,
        "keystone_id": zone.numeric_id,
        "access_level": "core",
        "country": "",
        "created_at": rfc3339(time::OffsetDateTime::UNIX_EPOCH),
        "created_on": rfc3339(time::OffsetDateTime::UNIX_EPOCH),
        "endpoint_type": "public",
        "external_network_id": null,
        "has_ai": false,
        "has_ai_gpu": false,
        "has_baremetal": false,
        "has_basic_vm": true,
        "has_dbaas": false,
        "has_ddos": false,
        "has_k8s": false,
        "has_kvm": true,
        "has_sfs": false,
        "state": "ACTIVE",
        "task_id": null,
        "vlan_physical_network": "",
        "zone": null,
        "available_volume_types": null,
        "coordinates": null,
        "file_share_types": null,
        "metrics_database_id": null,
        "ddos_endpoint_id": null,
    })
}

/// `GET /cloud/v1/regions`: this server's zone, the one region.
pub async fn list_regions(State(app): State<AppState>, _caller: GcoreCaller, uri: Uri) -> GcoreResult<Json<Value>> {
    page(vec![region(&app.engine.zone().await?)], &query_pairs(&uri))
}

pub async fn get_region(
    State(app): State<AppState>,
    _caller: GcoreCaller,
    Path(id): Path<String>,
) -> GcoreResult<Json<Value>> {
    let zone = app.engine.zone().await?;
    if id.parse::<i64>().ok() != Some(zone.numeric_id) {
        return Err(GcoreError::not_found(format!("Region {id} could not be found")));
    }
    Ok(Json(region(&zone)))
}
