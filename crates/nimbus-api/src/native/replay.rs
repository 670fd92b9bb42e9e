//! The answer to a repeated `Idempotency-Key` whose first request applied but whose response was never
//! stored (its server died, or the store failed, between the commit and the answer): rebuilt from what the
//! request made, as the store recorded it in the request's own transaction (`nimbus_store::applied_result`),
//! with the status the route answers. The request is never run again.
//!
//! Every POST route of the native API that the idempotency middleware covers makes one of these, and its
//! rebuilt answer has the shape of the original (`crates/nimbus-api/tests/api/idempotency.rs` checks each
//! route): an operation (`202`, or with `?wait=` what an action with a wait answers), an instance (`200`,
//! add/remove-protection), an API key with its secret, a project, an SSH key, a template, a security
//! group or an anti-affinity group (`201`). An operation is shown as it is now, not as it was then.

use std::time::Duration;

use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_engine::Context;
use serde_json::Value;
use uuid::Uuid;

use super::instances::{accepted, with_etag};
use super::views::*;
use crate::error::ApiError;
use crate::AppState;

/// The rebuilt answer; an error if what the request made is gone since (deleted) or cannot be shown.
pub async fn applied(state: &AppState, ctx: &Context, parts: &Parts, result: &Value) -> Response {
    match rebuild(state, ctx, parts, result).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn id_in(result: &Value, field: &str) -> Result<Uuid, ApiError> {
    result
        .pointer(field)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| cannot_rebuild(result))
}

fn cannot_rebuild(result: &Value) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotent_request_applied",
        format!("the request with this Idempotency-Key was applied, but its answer cannot be rebuilt ({result})"),
    )
}

async fn rebuild(state: &AppState, ctx: &Context, parts: &Parts, result: &Value) -> Result<Response, ApiError> {
    let engine = &state.engine;
    let created = |body: Response| {
        let (mut p, b) = body.into_parts();
        p.status = StatusCode::CREATED;
        Response::from_parts(p, b)
    };
    if result.get("operation").is_some() {
        let id = id_in(result, "/operation")?;
        let wait = parts.uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "wait").and_then(|(_, v)| v.parse::<u64>().ok())
        });
        return Ok(match wait {
            // As an action asked to wait answers: the operation once it ended, or as it is when the wait ran out.
            Some(wait) => {
                let op = engine.wait_operation(ctx, id, Duration::from_secs(wait)).await?;
                let status = if op.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
                (status, Json(OperationView::from(&op))).into_response()
            }
            None => accepted(&engine.operation(ctx, id).await?),
        });
    }
    if result.get("instance").is_some() {
        let instance = engine.instance(ctx, id_in(result, "/instance")?).await?;
        return Ok(with_etag(InstanceView::for_caller(ctx, &instance), instance.etag()));
    }
    if let Some(key_id) = result.get("api_key").and_then(Value::as_str) {
        let key = engine.api_key(ctx, key_id).await?;
        let mut view = ApiKeyView::without_secret(&key);
        view.secret = Some(key.secret);
        return Ok((StatusCode::CREATED, Json(view)).into_response());
    }
    if result.get("project").is_some() {
        let project = engine.get_project(ctx, id_in(result, "/project")?).await?;
        return Ok((StatusCode::CREATED, Json(ProjectView::from(&project))).into_response());
    }
    let id = id_in(result, "/record/id")?;
    let view = match result.pointer("/record/kind").and_then(Value::as_str) {
        Some("ssh_key") => Json(SshKeyView::from(&engine.ssh_key(ctx, &id.to_string()).await?)).into_response(),
        Some("reserved_address") => {
            Json(super::addresses::ReservedAddressView::from(&engine.reserved_address(ctx, id).await?)).into_response()
        }
        Some("template") => Json(TemplateView::from(&engine.template(ctx, &id.to_string()).await?)).into_response(),
        Some("security_group") => Json(SecurityGroupView::from(&engine.security_group(ctx, id).await?)).into_response(),
        Some("anti_affinity_group") => {
            Json(AntiAffinityGroupView::from(&engine.anti_affinity_group(ctx, id).await?)).into_response()
        }
        // Its secret was shown once and is kept only as a hash: the token exists, its answer is gone.
        Some("host_token") => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotent_request_applied",
                format!(
                    "host token {id} was created by the request with this Idempotency-Key, but its secret is shown \
                     only once: revoke it (DELETE /v1/host-tokens/{id}) and create another"
                ),
            ))
        }
        _ => return Err(cannot_rebuild(result)),
    };
    Ok(created(view))
}
