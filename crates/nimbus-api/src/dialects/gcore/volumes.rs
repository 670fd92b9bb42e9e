//! Gcore's volumes (`/cloud/v1/volumes`, attach and detach under `/cloud/v2/volumes`) on the core's volumes.
//!
//! Every change that touches the host is a core operation, which is Gcore's task: create, delete, attach,
//! detach and extend answer `{"tasks": [...]}`. Statuses are the core's (`creating`, `available`,
//! `attaching`, `in-use`, `detaching`, `deleting`, `error`), which are Gcore's words too. Tags are the
//! volume's labels. Volumes are made empty (`source: new-volume`) or from an image's disk (`source: image`,
//! a volume an instance then boots from with `existing-volume` and `boot_index` 0); snapshots as sources
//! are refused with a field error rather than half done.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::Uri;
use axum::Json;
use nimbus_core::instance::Instance;
use nimbus_core::volume::Volume;
use nimbus_engine::{CreateVolume, VolumePatch};
use serde_json::{json, Map, Value};

use super::common::{
    found, page, query_bool, query_one, query_pairs, required_str, tasks, BodyMap, InRegion, Region, RegionItem,
};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::views::{rfc3339, Scope};
use crate::AppState;

/// A volume as Gcore's Volume model has it; `instance` is the one it is attached to, if any.
pub fn volume_view(v: &Volume, instance: Option<&Instance>, scope: &Scope) -> Value {
    let attachments: Vec<Value> = v
        .instance_id
        .map(|id| {
            json!({
                "attachment_id": v.id,
                "volume_id": v.id,
                "server_id": id,
                "instance_name": instance.map(|i| i.name.clone()),
                "flavor_id": instance.map(|i| i.instance_type.clone()),
                "attached_at": rfc3339(v.updated_at),
                "device": null,
            })
        })
        .into_iter()
        .collect();
    json!({
        "id": v.id,
        "name": v.name,
        "bootable": v.template_id.is_some(),
        "is_root_volume": v.boot,
        "created_at": rfc3339(v.created_at),
        "updated_at": rfc3339(v.updated_at),
        "project_id": scope.project_id,
        "region": scope.region_name(),
        "region_id": scope.zone.numeric_id,
        "size": v.size_gb,
        "status": v.state.as_str(),
        "tags": v.labels.iter().map(|(k, val)| json!({"key": k, "value": val, "read_only": false})).collect::<Vec<_>>(),
        "volume_type": "standard",
        "attachments": attachments,
        "creator_task_id": null,
        "task_id": v.lock_operation_id,
        "snapshot_ids": [],
        "limiter_stats": null,
        "volume_image_metadata": match v.template_id {
            Some(t) => json!({"image_id": t}),
            None => json!({}),
        },
    })
}

/// A request under `/{project_id}/{region_id}/{volume_id}`: its region, and the volume of the project it
/// names (any other id is not found, before the body is read).
pub(super) struct OneVolume(Region, Volume);

impl FromRequestParts<AppState> for OneVolume {
    type Rejection = GcoreError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let RegionItem(r, id) = RegionItem::from_request_parts(parts, state).await?;
        let v = found("Volume", &id, |id| state.engine.volume(&r.ctx, id)).await?;
        Ok(OneVolume(r, v))
    }
}

async fn view(app: &AppState, r: &Region, v: &Volume) -> GcoreResult<Value> {
    let instance = match v.instance_id {
        Some(id) => app.engine.instance(&r.ctx, id).await.ok(),
        None => None,
    };
    Ok(volume_view(v, instance.as_ref(), &r.scope()))
}

/// `tags` of a create: string values only.
fn labels_of(v: Option<&Value>, errors: &mut FieldErrors) -> nimbus_core::labels::Labels {
    let mut labels = nimbus_core::labels::Labels::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, val) in m {
                match val {
                    Value::String(s) => {
                        labels.insert(k.clone(), s.clone());
                    }
                    _ => errors.add("tags", format!("The value of tag {k:?} must be a string")),
                }
            }
        }
        Some(_) => errors.add("tags", "Input should be a valid dictionary"),
    }
    labels
}

fn size_of(map: &Map<String, Value>, errors: &mut FieldErrors) -> u64 {
    match map.get("size") {
        Some(v) => v.as_u64().filter(|s| *s > 0).unwrap_or_else(|| {
            errors.add("size", "Input should be a positive integer");
            0
        }),
        None => {
            errors.add("size", "Field required");
            0
        }
    }
}

pub async fn create(
    State(app): State<AppState>,
    InRegion(r): InRegion,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    // `image`: the image's disk, a volume an instance boots from (an `existing-volume` with `boot_index` 0).
    let image = match map.get("source").and_then(Value::as_str) {
        Some("new-volume") => None,
        Some("image") => match required_str(&map, "image_id") {
            Ok(id) => Some(id.to_string()),
            Err(e) => {
                errors.add("image_id", e.message);
                None
            }
        },
        Some("snapshot") => {
            errors.add(
                "source",
                "Nimbus has no Gcore volume snapshots to make a volume from: use 'new-volume' or 'image'",
            );
            None
        }
        Some(_) => {
            errors.add("source", "Input should be 'image', 'snapshot' or 'new-volume'");
            None
        }
        None => {
            errors.add("source", "Field required");
            None
        }
    };
    let name = match required_str(&map, "name") {
        Ok(n) => n.to_string(),
        Err(_) => {
            errors.add("name", "Field required");
            String::new()
        }
    };
    // An image's volume may leave its size out: the image's smallest disk.
    let size = if image.is_some() && !map.contains_key("size") { 0 } else { size_of(&map, &mut errors) };
    let labels = labels_of(map.get("tags"), &mut errors);
    let attach_to = match map.get("instance_id_to_attach_to") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()) {
            Some(id) => Some(id),
            None => {
                errors.add("instance_id_to_attach_to", "Input should be a valid UUID");
                None
            }
        },
    };
    if let Some(t) = map.get("type_name").and_then(Value::as_str).filter(|t| *t != "standard") {
        errors.add("type_name", format!("Nimbus has one volume type, 'standard', not {t:?}"));
    }
    errors.check()?;
    // Made and attached in one operation of the engine's.
    let req = CreateVolume { name, size_gb: size, labels, attach_to, from_template: image, ..Default::default() };
    let (op, _) = app.engine.create_volume(&r.ctx, req).await.map_err(|e| match e {
        nimbus_core::DomainError::Invalid { field, message } if field == "from_template" => {
            GcoreError::not_found(message.replace("see GET /v1/templates", "see the image list"))
        }
        nimbus_core::DomainError::Invalid { field, message } if field == "size_gb" => {
            GcoreError::field("size", message)
        }
        e => e.into(),
    })?;
    Ok(tasks(&[&op]))
}

pub async fn list(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let instance_id = query_one(&q, "instance_id");
    let has_attachments = query_one(&q, "has_attachments").map(|_| query_bool(&q, "has_attachments"));
    let name_part = query_one(&q, "name_part");
    let id_part = query_one(&q, "id_part");
    let bootable_only = query_bool(&q, "bootable");
    let tag = query_one(&q, "tag_key_value").and_then(|kv| serde_json::from_str::<Map<String, Value>>(kv).ok());
    let mut all = Vec::new();
    for v in app.engine.list_volumes(&r.ctx).await? {
        let keep = instance_id.is_none_or(|i| v.instance_id.is_some_and(|id| id.to_string() == i))
            && has_attachments.is_none_or(|h| h == v.instance_id.is_some())
            && name_part.is_none_or(|n| v.name.contains(n))
            && id_part.is_none_or(|p| v.id.to_string().contains(p))
            && (!bootable_only || v.template_id.is_some())
            && tag
                .as_ref()
                .is_none_or(|t| t.iter().all(|(k, val)| v.labels.get(k).map(String::as_str) == val.as_str()));
        if keep {
            all.push(view(&app, &r, &v).await?);
        }
    }
    page(all, &q)
}

pub async fn get(State(app): State<AppState>, OneVolume(r, v): OneVolume) -> GcoreResult<Json<Value>> {
    Ok(Json(view(&app, &r, &v).await?))
}

/// `name`, and `tags` as a merge (a null value deletes a tag).
pub async fn update(
    State(app): State<AppState>,
    OneVolume(r, current): OneVolume,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    let mut patch = VolumePatch::default();
    match map.get("name") {
        None => {}
        Some(Value::String(n)) => patch.name = Some(n.clone()),
        Some(_) => errors.add("name", "Input should be a valid string"),
    }
    match map.get("tags") {
        None | Some(Value::Null) => {}
        Some(t @ Value::Object(_)) => patch.labels = Some(t.clone()),
        Some(_) => errors.add("tags", "Input should be a valid dictionary or null"),
    }
    errors.check()?;
    let v = app.engine.update_volume(&r.ctx, current.id, patch).await?;
    Ok(Json(view(&app, &r, &v).await?))
}

pub async fn delete(State(app): State<AppState>, OneVolume(r, v): OneVolume) -> GcoreResult<Json<Value>> {
    let op = app.engine.delete_volume(&r.ctx, v.id).await?;
    Ok(tasks(&[&op]))
}

pub async fn attach(
    State(app): State<AppState>,
    OneVolume(r, v): OneVolume,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let instance = required_str(&map, "instance_id")?;
    let instance = found("Instance", instance, |iid| app.engine.instance(&r.ctx, iid)).await?;
    let op = app.engine.attach_volume(&r.ctx, v.id, instance.id).await?;
    Ok(tasks(&[&op]))
}

/// Gcore names the instance to detach from; it must be the one the volume is attached to.
pub async fn detach(
    State(app): State<AppState>,
    OneVolume(r, v): OneVolume,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let instance = required_str(&map, "instance_id")?;
    if v.instance_id.map(|i| i.to_string()).as_deref() != Some(instance) {
        return Err(GcoreError::bad_request(format!("Volume {} is not attached to instance {instance}", v.id)));
    }
    let op = app.engine.detach_volume(&r.ctx, v.id).await?;
    Ok(tasks(&[&op]))
}

/// `extend {size}`: grows a volume, attached or not.
pub async fn extend(
    State(app): State<AppState>,
    OneVolume(r, v): OneVolume,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    let size = size_of(&map, &mut errors);
    errors.check()?;
    let op = app.engine.resize_volume(&r.ctx, v.id, size).await?;
    Ok(tasks(&[&op]))
}
