//! What a client lists to fill a create body: images, instance SKUs, pools (and their older name,
//! capacities), workspaces, and who the caller is. Each item carries the SF id the instance object embeds
//! and a create accepts, in SF's list envelope (one page: these catalogs are small).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::errors::SfResult;
use super::handlers::SfCaller;
use super::ids;
use super::views::Scope;
use crate::AppState;

fn list(data: Vec<Value>) -> Json<Value> {
    Json(json!({ "object": "list", "data": data, "has_more": false, "cursor": null }))
}

/// `GET /v2/images`: the templates the caller may boot.
pub async fn images(State(app): State<AppState>, SfCaller(ctx): SfCaller) -> SfResult<Json<Value>> {
    let mut data = Vec::new();
    for t in app.engine.list_templates(&ctx).await? {
        data.push(json!({
            "object": "image",
            "id": ids::alias_of(&app.engine, ids::IMAGE, t.id).await?,
            "name": t.name,
            "description": t.description,
            "created_at": t.created_at.unix_timestamp(),
        }));
    }
    Ok(list(data))
}

/// `GET /v2/instance_skus`: the instance types; `alias` is the name an instance's `instance_sku` shows.
pub async fn instance_skus(State(app): State<AppState>, SfCaller(_ctx): SfCaller) -> SfResult<Json<Value>> {
    let mut data = Vec::new();
    for t in app.engine.list_instance_types().await? {
        data.push(json!({
            "object": "instance_sku",
            "id": ids::alias_of(&app.engine, ids::INSTANCE_SKU, t.id).await?,
            "alias": t.name,
            "name": t.name,
            "vcpus": t.vcpus,
            "memory_mib": t.memory_mib,
            "gpus": t.gpus,
        }));
    }
    Ok(list(data))
}

/// `GET /v2/pools`: the one pool there is, this server's zone.
pub async fn pools(State(app): State<AppState>, SfCaller(ctx): SfCaller) -> SfResult<Json<Value>> {
    let scope = Scope::of(&app.engine, &ctx).await?;
    Ok(list(vec![json!({ "object": "pool", "id": scope.pool.id, "name": scope.pool.name })]))
}

/// `GET /v2/capacities`: the pool under its older name (schema B).
pub async fn capacities(State(app): State<AppState>, SfCaller(ctx): SfCaller) -> SfResult<Json<Value>> {
    let scope = Scope::of(&app.engine, &ctx).await?;
    Ok(list(vec![json!({ "object": "capacity", "id": scope.capacity.id, "name": scope.capacity.name })]))
}

/// `GET /v2/workspaces`: the caller's project, the one workspace a key sees.
pub async fn workspaces(State(app): State<AppState>, SfCaller(ctx): SfCaller) -> SfResult<Json<Value>> {
    let scope = Scope::of(&app.engine, &ctx).await?;
    Ok(list(vec![workspace(&scope)]))
}

fn workspace(scope: &Scope) -> Value {
    json!({ "object": "workspace", "id": scope.workspace_id, "name": scope.workspace, "owner": scope.owner })
}

/// `GET /v2/me`: the caller's account (the organization) and workspace.
pub async fn me(State(app): State<AppState>, SfCaller(ctx): SfCaller) -> SfResult<Json<Value>> {
    let scope = Scope::of(&app.engine, &ctx).await?;
    Ok(Json(json!({ "object": "account", "name": scope.owner, "workspace": workspace(&scope) })))
}
