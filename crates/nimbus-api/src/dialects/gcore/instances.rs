//! Instances: list (Gcore's filters and offset pages), get, PATCH (name and a merge patch of the user
//! tags), delete; and the renderer every instance answer goes through.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::Operation;
use nimbus_core::state_machine::Action;
use nimbus_engine::{ActionRequest, InstanceOrder, InstancePatch, InstanceWindow, NumberedPage};
use serde_json::{json, Value};
use uuid::Uuid;

use super::common::{
    body_object, parse_time, query_all, query_one, query_pairs, query_usize, tasks, InRegion, OneInstance, Region,
};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::views::{self, InstanceContext};
use crate::AppState;

pub(super) const MAX_TAG_LEN: usize = 255;

/// Renders instances, reading what they share (the lock holders, security group names) once.
pub(super) struct Renderer<'a> {
    app: &'a AppState,
    region: &'a Region,
    pub(super) group_names: BTreeMap<Uuid, String>,
    networks: Vec<views::GcoreNetwork>,
    /// The project's volumes by the instance they are attached to.
    volumes: BTreeMap<Uuid, Vec<Uuid>>,
}

impl<'a> Renderer<'a> {
    pub(super) async fn new(app: &'a AppState, region: &'a Region) -> GcoreResult<Renderer<'a>> {
        let groups = app.engine.list_security_groups(&region.ctx).await?;
        let networks = super::networks::gcore_networks(app, &region.ctx).await?;
        let mut volumes: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for v in app.engine.list_volumes(&region.ctx).await? {
            if let Some(i) = v.instance_id {
                volumes.entry(i).or_default().push(v.id);
            }
        }
        Ok(Renderer {
            app,
            region,
            group_names: groups.into_iter().map(|g| (g.id, g.name)).collect(),
            networks,
            volumes,
        })
    }

    /// A Gcore page: the count of the whole listing and the window's instances.
    async fn page(&self, found: NumberedPage<Instance>) -> GcoreResult<Json<Value>> {
        let mut results = Vec::with_capacity(found.items.len());
        for i in &found.items {
            results.push(self.render(i).await?);
        }
        Ok(Json(json!({ "count": found.count, "results": results })))
    }

    pub(super) async fn render(&self, i: &Instance) -> GcoreResult<Value> {
        let ctx = &self.region.ctx;
        let lock = match i.lock_operation_id {
            Some(op) => self.app.engine.operation(ctx, op).await.ok(),
            None => None,
        };
        let creator_task_id = match i.create_operation_id {
            Some(op) => Some(op),
            // Records from before the core kept it: the instance's first operation is the one that created
            // it (operation ids are time-ordered).
            None => {
                let first = self.app.engine.list_operations(ctx, Some(i.id), 1, None).await?;
                first.items.first().filter(|op| op.kind == Action::Create).map(|op| op.id)
            }
        };
        let scope = self.region.scope();
        let c = InstanceContext {
            scope: &scope,
            lock: lock.as_ref(),
            creator_task_id,
            security_group_names: i.security_groups.iter().filter_map(|g| self.group_names.get(g).cloned()).collect(),
            private: self
                .networks
                .iter()
                .filter(|g| i.private_networks.contains(&g.net.id))
                .filter_map(|g| g.net.lease_of(i.id).map(|l| (g, l)))
                .collect(),
            volumes: self.volumes.get(&i.id).cloned().unwrap_or_default(),
        };
        Ok(views::instance(i, &c))
    }
}

// Instances

pub async fn list(State(app): State<AppState>, InRegion(r): InRegion, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let limit = query_usize(&q, "limit")?.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
    let offset = query_usize(&q, "offset")?.unwrap_or(0) as u64;
    // A tag's value is text: a pair asking for another value matches no instance.
    let tags_equal: Option<Vec<(String, String)>> = match query_one(&q, "tag_key_value") {
        None => Some(Vec::new()),
        Some(v) => match serde_json::from_str::<Value>(v) {
            Ok(Value::Object(m)) => m.into_iter().map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))).collect(),
            _ => return Err(GcoreError::field("tag_key_value", "Must be a JSON object of tag keys and values")),
        },
    };
    let statuses = query_all(&q, "status");
    let time = |key| query_one(&q, key).map(|v| parse_time(key, v)).transpose();
    let renderer = Renderer::new(&app, &r).await?;
    let exclude_group = query_one(&q, "exclude_secgroup")
        .and_then(|n| renderer.group_names.iter().find(|(_, name)| name.as_str() == n).map(|(id, _)| *id));
    let order = match query_one(&q, "order_by").unwrap_or("created.asc") {
        "created.asc" => InstanceOrder::Oldest,
        "created.desc" => InstanceOrder::Newest,
        "name.asc" => InstanceOrder::NameAscending,
        "name.desc" => InstanceOrder::NameDescending,
        "status.asc" => InstanceOrder::StateAscending,
        "status.desc" => InstanceOrder::StateDescending,
        other => return Err(GcoreError::field("order_by", format!("Unknown ordering {other:?}"))),
    };
    let Some(tags_equal) = tags_equal else {
        return renderer.page(NumberedPage { count: 0, items: Vec::new() }).await;
    };
    // The store chooses by all but the statuses, and orders; it narrows statuses to the states that can show
    // them. Deleted instances are gone for Gcore, as its GET says (404), even where their records are kept.
    let window = InstanceWindow {
        states: statuses
            .iter()
            .flat_map(|s| views::states_for_status(s))
            .copied()
            .filter(|s| *s != InstanceState::Destroyed)
            .collect(),
        name_contains: query_one(&q, "name").map(str::to_string),
        id_contains: query_one(&q, "uuid").map(str::to_string),
        instance_type: query_one(&q, "flavor_id").map(str::to_string),
        instance_type_prefix: query_one(&q, "flavor_prefix").map(str::to_string),
        instance_type_not_prefix: query_one(&q, "exclude_flavor_prefix").map(str::to_string),
        ip_contains: query_one(&q, "ip").map(str::to_string),
        tags_equal,
        tag_values: query_all(&q, "tag_value").into_iter().map(str::to_string).collect(),
        not_in_security_group: exclude_group,
        updated_since: time("changes_since")?,
        updated_until: time("changes_before")?,
        order,
        offset,
        limit,
        ..Default::default()
    };
    if statuses.is_empty() {
        // Nothing but what the store chooses by: one window and the count, from the store.
        return renderer.page(app.engine.instance_window(&r.ctx, &window).await?).await;
    }
    // One state can show as several statuses (a deleting instance keeps the one it had), told apart by the
    // operation holding its lock: the project's unfinished operations, read once.
    let locks: BTreeMap<Uuid, Operation> =
        app.engine.unfinished_operations(&r.ctx).await?.into_iter().map(|op| (op.id, op)).collect();
    let shows_asked_status = |i: &Instance| {
        let lock = i.lock_operation_id.and_then(|id| locks.get(&id));
        statuses.contains(&views::status(i, lock, views::hard_reboot(lock)).0)
    };
    let found = app.engine.instance_window_where(&r.ctx, &window, shows_asked_status).await?;
    renderer.page(found).await
}

pub async fn get(State(app): State<AppState>, OneInstance(r, instance): OneInstance) -> GcoreResult<Json<Value>> {
    Ok(Json(Renderer::new(&app, &r).await?.render(&instance).await?))
}

/// A tag key or value as Gcore allows it: 1 to 255 characters, no whitespace and no '='.
pub(super) fn check_tag_text(what: &str, s: &str, errors: &mut FieldErrors) {
    if s.is_empty() || s.chars().count() > MAX_TAG_LEN || s.chars().any(|c| c.is_whitespace() || c == '=') {
        errors.add(
            "tags",
            format!("Tag {what} {s:?} must be 1 to {MAX_TAG_LEN} characters without spaces, tabs, newlines or '='"),
        );
    }
}

/// PATCH: the name and a JSON merge patch (RFC 7386) of the user tags. Read-only tags are "always
/// preserved" (the seed): a key of one in the patch is left out of it, not refused, so a client that sends
/// back every tag it read still succeeds.
pub async fn update(
    State(app): State<AppState>,
    OneInstance(r, current): OneInstance,
    body: Bytes,
) -> GcoreResult<Json<Value>> {
    // A PATCH that changes nothing never reaches the engine's own check: the caller must be allowed to
    // change the instance all the same (a read-only key's empty PATCH was answered 200).
    r.ctx.require(nimbus_core::tenancy::Role::Member)?;
    let map = body_object(&body)?;
    let mut errors = FieldErrors::default();
    let mut patch = InstancePatch::default();
    match map.get("name") {
        None => {}
        Some(Value::String(n)) => patch.name = Some(n.clone()).filter(|n| *n != current.name),
        Some(_) => errors.add("name", "Input should be a valid string"),
    }
    match map.get("tags") {
        None => {}
        Some(Value::Null) => patch.labels = Some(Value::Null),
        Some(Value::Object(m)) => {
            let user_tags: serde_json::Map<String, Value> = m
                .iter()
                .filter(|(k, _)| !current.system_labels.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in &user_tags {
                match v {
                    Value::Null => {}
                    Value::String(s) => {
                        check_tag_text("key", k, &mut errors);
                        check_tag_text("value", s, &mut errors);
                    }
                    _ => errors.add("tags", format!("The value of tag {k:?} must be a string or null")),
                }
            }
            if !user_tags.is_empty() {
                patch.labels = Some(Value::Object(user_tags));
            }
        }
        Some(_) => errors.add("tags", "Input should be a valid dictionary or null"),
    }
    errors.check()?;
    let updated = if patch.name.is_none() && patch.labels.is_none() {
        current
    } else {
        app.engine.update_instance(&r.ctx, current.id, patch, None).await?
    };
    Ok(Json(Renderer::new(&app, &r).await?.render(&updated).await?))
}

/// `?volumes=id,id`: volumes attached to the instance deleted with it (the engine checks they are its own);
/// the others are detached and kept.
pub async fn delete(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    // Comma-separated ids, in one value or several.
    let ids = |key: &str| -> GcoreResult<Vec<Uuid>> {
        let parts = query_all(&q, key).into_iter().flat_map(|v| v.split(',')).filter(|p| !p.trim().is_empty());
        parts
            .map(|part| {
                Uuid::parse_str(part.trim())
                    .map_err(|_| GcoreError::field(key, format!("{part:?} is not a valid UUID")))
            })
            .collect()
    };
    let (volumes, reserved_addresses) = (ids("volumes")?, ids("reserved_fixed_ips")?);
    let req = if volumes.is_empty() && reserved_addresses.is_empty() {
        ActionRequest::Delete
    } else {
        ActionRequest::DeleteWith { volumes, reserved_addresses }
    };
    let op = app.engine.act(&r.ctx, instance.id, req).await.map_err(|e| match e {
        nimbus_core::DomainError::Invalid { field, message } if field == "reserved_addresses" => {
            GcoreError::field("reserved_fixed_ips", message)
        }
        e => e.into(),
    })?;
    Ok(tasks(&[&op]))
}
