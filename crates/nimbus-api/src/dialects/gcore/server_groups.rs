//! Gcore's server groups (the SDK's placement groups, `/cloud/v1/servergroups`) on the core's anti-affinity
//! groups, and `put_into_servergroup`/`remove_from_servergroup` on an instance, which are the engine's
//! anti-affinity group change (an operation, so Gcore's task). Nimbus places by anti-affinity only: the
//! `affinity` and `soft-anti-affinity` policies are refused. Like Nova, an instance is in one group at most.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use nimbus_core::resources::AntiAffinityGroup;
use nimbus_engine::ActionRequest;
use serde_json::{json, Value};

use super::common::{
    body_object, found, page, query_pairs, required_str, tasks, BodyMap, InRegion, OneInstance, Region, RegionItem,
};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::views;
use crate::AppState;

const POLICY: &str = "anti-affinity";

async fn find_group(app: &AppState, r: &Region, id: &str) -> GcoreResult<AntiAffinityGroup> {
    found("Server group", id, |id| app.engine.anti_affinity_group(&r.ctx, id)).await
}

/// The groups rendered with their members.
async fn render(app: &AppState, r: &Region, groups: Vec<AntiAffinityGroup>) -> GcoreResult<Vec<Value>> {
    let scope = r.scope();
    let with_members = app.engine.anti_affinity_members(&r.ctx, groups).await?;
    Ok(with_members
        .iter()
        .map(|(g, members)| views::server_group(g, &members.iter().collect::<Vec<_>>(), &scope))
        .collect())
}

pub async fn list(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let groups = app.engine.list_anti_affinity_groups(&r.ctx).await?;
    page(render(&app, &r, groups).await?, &query_pairs(&uri))
}

pub async fn get(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let group = find_group(&app, &r, &id).await?;
    Ok(Json(render(&app, &r, vec![group]).await?.remove(0)))
}

pub async fn create(
    State(app): State<AppState>,
    InRegion(r): InRegion,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    let name = required_str(&map, "name").map_err(|e| errors.add("name", e.message)).ok();
    match map.get("policy").and_then(Value::as_str) {
        Some(POLICY) => {}
        Some(other) => errors.add("policy", format!("Nimbus places by anti-affinity only, not {other:?}")),
        None => errors.add("policy", "Field required"),
    }
    errors.check()?;
    let group = app.engine.create_anti_affinity_group(&r.ctx, name.unwrap_or_default(), "").await?;
    Ok(Json(views::server_group(&group, &[], &r.scope())))
}

/// Deleting a group is immediate: no task is left to run.
pub async fn delete(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let group = find_group(&app, &r, &id).await?;
    app.engine.delete_anti_affinity_group(&r.ctx, group.id).await?;
    Ok(Json(json!({ "tasks": [] })))
}

pub async fn put_into(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    let map = body_object(&body)?;
    let group = find_group(&app, &r, required_str(&map, "servergroup_id")?).await?;
    if let Some(other) = instance.anti_affinity_groups.iter().find(|g| **g != group.id) {
        return Err(GcoreError::field("servergroup_id", format!("The instance is in server group {other} already")));
    }
    let request = ActionRequest::ChangeAntiAffinityGroups { join: vec![group.id], leave: vec![] };
    let op = app.engine.act(&r.ctx, instance.id, request).await?;
    Ok(tasks(&[&op]))
}

pub async fn remove_from(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
) -> GcoreResult<Json<Value>> {
    if instance.anti_affinity_groups.is_empty() {
        return Err(GcoreError::bad_request(format!("Instance {} is in no server group", instance.id)));
    }
    let request = ActionRequest::ChangeAntiAffinityGroups { join: vec![], leave: instance.anti_affinity_groups };
    let op = app.engine.act(&r.ctx, instance.id, request).await?;
    Ok(tasks(&[&op]))
}
