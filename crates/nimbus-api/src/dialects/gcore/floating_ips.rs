//! Floating IPs (`/cloud/v1/floatingips/{project_id}/{region_id}`): the core's elastic IPs, the same records
//! Exoscale's elastic IPs are, from the operator's pool and bookkeeping only (nothing is routed to them). A
//! Gcore floating IP sits on one port, an instance's: assigned, its instance is the elastic IP's one
//! instance. Create and delete answer a FINISHED task, as the networks' changes do.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use nimbus_core::instance::Instance;
use nimbus_core::networking::ElasticIp;
use nimbus_engine::InstanceWindow;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::common::{body_object, found, page, query_pairs, BodyMap, InRegion, Region, RegionItem};
use super::create::create_tags;
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::instances::Renderer;
use super::networks::receipt;
use super::views::{self, rfc3339, Scope};
use crate::AppState;

/// A floating IP as Gcore shows it; `instance` is what it is assigned to.
fn floating_ip(e: &ElasticIp, instance: Option<&Instance>, scope: &Scope) -> Value {
    let tags: Vec<Value> = e.labels.iter().map(|(k, v)| json!({"key": k, "value": v, "read_only": false})).collect();
    json!({
        "id": e.id,
        "created_at": rfc3339(e.created_at),
        "updated_at": rfc3339(e.created_at),
        "creator_task_id": null,
        "task_id": null,
        "floating_ip_address": e.ip.to_string(),
        "fixed_ip_address": instance.and_then(|i| i.ip_addresses.first()),
        "port_id": instance.map(views::port_id),
        "router_id": null,
        "status": if instance.is_some() { "ACTIVE" } else { "DOWN" },
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
        "tags": tags,
    })
}

/// The instance a floating IP is assigned to (the first, should another API have attached it to more).
async fn assigned(app: &AppState, r: &Region, e: &ElasticIp) -> GcoreResult<Option<Instance>> {
    match e.instances.first() {
        Some(id) => Ok(app.engine.instance(&r.ctx, *id).await.ok()),
        None => Ok(None),
    }
}

async fn find_floating_ip(app: &AppState, r: &Region, id: &str) -> GcoreResult<ElasticIp> {
    found("Floating IP", id, |id| app.engine.elastic_ip(&r.ctx, id)).await
}

/// The instance whose port `port_id` names (a port's id is derived from its instance's, so it is looked for).
pub(super) async fn instance_of_port(app: &AppState, r: &Region, port_id: &str) -> GcoreResult<Instance> {
    let port = Uuid::parse_str(port_id).ok();
    let first = InstanceWindow { limit: Some(1), ..Default::default() };
    let found = app.engine.instance_window_where(&r.ctx, &first, |i| Some(views::port_id(i)) == port).await?;
    found.items.into_iter().next().ok_or_else(|| GcoreError::not_found(format!("Port {port_id} could not be found")))
}

/// `port_id` (required or not) and `fixed_ip_address`, which must be the port's own address when given.
fn port_fields(map: &Map<String, Value>, errors: &mut FieldErrors) -> (Option<String>, Option<String>) {
    let text = |key: &str, errors: &mut FieldErrors| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add(key, "Input should be a valid string");
            None
        }
    };
    (text("port_id", errors), text("fixed_ip_address", errors))
}

fn check_fixed_ip(instance: &Instance, fixed: Option<&str>) -> GcoreResult<()> {
    match fixed {
        Some(ip) if !instance.ip_addresses.iter().any(|a| a == ip) => {
            Err(GcoreError::field("fixed_ip_address", format!("{ip} is not an address of the port")))
        }
        _ => Ok(()),
    }
}

pub async fn list(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let renderer = Renderer::new(&app, &r).await?;
    let mut all = Vec::new();
    for e in app.engine.list_elastic_ips(&r.ctx).await? {
        let instance = assigned(&app, &r, &e).await?;
        let mut v = floating_ip(&e, instance.as_ref(), &r.scope());
        let shown = match &instance {
            Some(i) => renderer.render(i).await?,
            None => Value::Null,
        };
        v["instance"] = shown;
        v["loadbalancer"] = Value::Null;
        all.push(v);
    }
    page(all, &query_pairs(&uri))
}

pub async fn get(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let e = find_floating_ip(&app, &r, &id).await?;
    let instance = assigned(&app, &r, &e).await?;
    Ok(Json(floating_ip(&e, instance.as_ref(), &r.scope())))
}

/// Takes an address from the pool, assigned at once to `port_id` when given.
pub async fn create(
    State(app): State<AppState>,
    InRegion(r): InRegion,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    let (port, fixed) = port_fields(&map, &mut errors);
    let labels = create_tags(map.get("tags"), &mut errors);
    errors.check()?;
    // The port is checked before anything is made, so a bad one leaves no address behind.
    let instance = match &port {
        Some(p) => Some(instance_of_port(&app, &r, p).await?),
        None => None,
    };
    if let Some(i) = &instance {
        check_fixed_ip(i, fixed.as_deref())?;
    }
    let e = app.engine.create_elastic_ip_on(&r.ctx, "", labels, instance.map(|i| i.id)).await?;
    receipt(&app, &r, "create_fip", "floatingips", &[e.id]).await
}

/// Returns the address to the pool; refused while it is assigned.
pub async fn delete(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let e = find_floating_ip(&app, &r, &id).await?;
    app.engine.delete_elastic_ip(&r.ctx, e.id).await?;
    receipt(&app, &r, "delete_fip", "floatingips", &[]).await
}

/// `assign`: onto an instance's port, moving it from the instance it was on.
pub async fn assign(
    State(app): State<AppState>,
    RegionItem(r, id): RegionItem,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    let e = find_floating_ip(&app, &r, &id).await?;
    let map = body_object(&body)?;
    let mut errors = FieldErrors::default();
    let (port, fixed) = port_fields(&map, &mut errors);
    if !map.contains_key("port_id") {
        errors.add("port_id", "Field required");
    }
    errors.check()?;
    let instance = instance_of_port(&app, &r, port.as_deref().unwrap_or_default()).await?;
    check_fixed_ip(&instance, fixed.as_deref())?;
    let e = app.engine.move_elastic_ip(&r.ctx, e.id, Some(instance.id)).await?;
    Ok(Json(floating_ip(&e, Some(&instance), &r.scope())))
}

/// `unassign`: from whatever it is on; unassigned already is no error.
pub async fn unassign(State(app): State<AppState>, RegionItem(r, id): RegionItem) -> GcoreResult<Json<Value>> {
    let e = find_floating_ip(&app, &r, &id).await?;
    let e = app.engine.move_elastic_ip(&r.ctx, e.id, None).await?;
    Ok(Json(floating_ip(&e, None, &r.scope())))
}
