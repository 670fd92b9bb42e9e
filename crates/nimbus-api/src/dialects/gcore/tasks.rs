//! Tasks are the engine's operations, seen through Gcore's Task model.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::Json;
use nimbus_core::catalog::Zone;
use nimbus_core::operation::Operation;
use nimbus_core::DomainError;
use nimbus_engine::{Context, NumberedPage, OperationWindow};
use serde_json::{json, Value};
use uuid::Uuid;

use super::common::{parse_time, query_all, query_one, query_pairs, query_usize, GcoreCaller};
use super::errors::{GcoreError, GcoreResult};
use super::views::{self, Scope};
use crate::AppState;

/// The task list's page when the client names none, and the largest it may ask for.
const DEFAULT_TASK_PAGE: usize = 10;
const MAX_TASK_PAGE: usize = 1000;

// Tasks: global, not under a project and region; the key's project and this server's zone are theirs.

fn task_view(app: &AppState, ctx: &Context, zone: &Zone, op: &Operation) -> Value {
    let cidr = app.engine.config().network_cidr.clone();
    let scope = Scope { project_id: ctx.project.numeric_id, zone, network_cidr: &cidr };
    views::task(op, &scope, views::hard_reboot(Some(op)))
}

pub async fn get(
    State(app): State<AppState>,
    GcoreCaller(ctx): GcoreCaller,
    Path(id): Path<String>,
) -> GcoreResult<Json<Value>> {
    let not_found = || GcoreError::not_found(format!("Task {id} could not be found"));
    let op_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let zone = app.engine.zone().await?;
    match app.engine.operation(&ctx, op_id).await {
        Ok(op) => Ok(Json(task_view(&app, &ctx, &zone, &op))),
        // A security group is made at once; its create task is the group (see `security_groups`).
        Err(DomainError::NotFound { .. }) => match app.engine.security_group(&ctx, op_id).await {
            Ok(group) => {
                let cidr = app.engine.config().network_cidr.clone();
                let scope = Scope { project_id: ctx.project.numeric_id, zone: &zone, network_cidr: &cidr };
                Ok(Json(views::security_group_task(&group, &scope)))
            }
            // Networks, subnets and interfaces are changed at once too; their tasks are dialect records.
            Err(_) => super::networks::receipt_task(&app, &ctx, op_id).await?.map(Json).ok_or_else(not_found),
        },
        Err(other) => Err(other.into()),
    }
}

pub async fn list(State(app): State<AppState>, GcoreCaller(ctx): GcoreCaller, uri: Uri) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    let zone = app.engine.zone().await?;
    let limit = query_usize(&q, "limit")?.unwrap_or(DEFAULT_TASK_PAGE);
    if limit > MAX_TASK_PAGE {
        return Err(GcoreError::field("limit", format!("Input should be less than or equal to {MAX_TASK_PAGE}")));
    }
    let offset = query_usize(&q, "offset")?.unwrap_or(0);
    let projects = query_all(&q, "project_id");
    let regions = query_all(&q, "region_id");
    let states = query_all(&q, "state");
    let task_type = query_one(&q, "task_type");
    let from = query_one(&q, "from_timestamp").map(|v| parse_time("from_timestamp", v)).transpose()?;
    let to = query_one(&q, "to_timestamp").map(|v| parse_time("to_timestamp", v)).transpose()?;
    // Another project or region holds no task of this key.
    let elsewhere = (!projects.is_empty() && !projects.contains(&ctx.project.numeric_id.to_string().as_str()))
        || (!regions.is_empty() && !regions.contains(&zone.numeric_id.to_string().as_str()));
    if elsewhere {
        return Ok(Json(json!({ "count": 0, "results": [] })));
    }
    // A task's state is its operation's, and its type is its kind's (a few kinds' tasks are of two types):
    // the store chooses by both, the times, and orders; only those types are told apart while reading.
    let (kinds, exact_kinds) = task_type.map_or((Vec::new(), true), views::kinds_of_task_type);
    let window = OperationWindow {
        states: states.iter().flat_map(|s| views::operation_states(s)).copied().collect(),
        kinds,
        created_since: from,
        created_until: to,
        newest_first: matches!(query_one(&q, "order_by").or(query_one(&q, "sorting")), Some("desc")),
        offset: offset as u64,
        limit: Some(u32::try_from(limit).unwrap_or(u32::MAX)),
    };
    let unknown = (!states.is_empty() && window.states.is_empty()) || (task_type.is_some() && window.kinds.is_empty());
    let found = if unknown {
        NumberedPage { count: 0, items: Vec::new() }
    } else if exact_kinds {
        app.engine.operation_window(&ctx, &window).await?
    } else {
        let keep = |op: &Operation| task_type.is_none_or(|t| views::task_type(op, views::hard_reboot(Some(op))) == t);
        app.engine.operation_window_where(&ctx, &window, keep).await?
    };
    let results: Vec<Value> = found.items.iter().map(|op| task_view(&app, &ctx, &zone, op)).collect();
    Ok(Json(json!({ "count": found.count, "results": results })))
}
