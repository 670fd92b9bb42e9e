//! `/v1/hosts` and `/v1/host-tokens`: the hosts of the cloud, for operators.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::host::{HostState, HostToken, HostView};
use nimbus_engine::hosts::EvacuationMode;
use nimbus_engine::HostAdminState;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::instances::parse_uuid;
use super::views::{ErrorBody, OperationView};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, OptionalJsonBody};
use crate::AppState;

/// What a host offers, or what its instances take of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourcesView {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// GPUs by model codename.
    pub gpus: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HostItem {
    pub id: Uuid,
    pub name: String,
    pub zone: String,
    /// ready, unreachable (missed heartbeats), disabled, draining
    pub state: String,
    /// What the operator set: ready, disabled or draining.
    pub admin_state: String,
    pub reachable: bool,
    pub capacity: ResourcesView,
    /// What its instances take (every instance placed there but a destroyed one).
    pub allocation: ResourcesView,
    pub instances: u64,
    /// Draining and carrying no instance any more.
    pub drained: bool,
    pub accelerator: String,
    pub driver: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay_address: Option<String>,
    pub agent_version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&HostView> for HostItem {
    fn from(v: &HostView) -> HostItem {
        let h = &v.host;
        HostItem {
            id: h.id,
            name: h.name.clone(),
            zone: h.zone.clone(),
            state: v.state().as_str().into(),
            admin_state: h.admin_state.as_str().into(),
            reachable: v.reachable,
            capacity: ResourcesView {
                vcpus: h.capacity.vcpus,
                memory_mib: h.capacity.memory_mib,
                disk_gb: h.capacity.disk_gb,
                gpus: h.capacity.gpus.clone(),
            },
            allocation: ResourcesView {
                vcpus: v.allocation.vcpus,
                memory_mib: v.allocation.memory_mib,
                disk_gb: v.allocation.disk_gb,
                gpus: v.allocation.gpus.clone(),
            },
            instances: v.allocation.instances,
            drained: h.admin_state == HostState::Draining && v.allocation.instances == 0,
            accelerator: h.accelerator.clone(),
            driver: h.driver.clone(),
            underlay_address: h.underlay_address.clone(),
            agent_version: h.agent_version.clone(),
            registered_at: h.registered_at,
            updated_at: h.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HostList {
    pub items: Vec<HostItem>,
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = HostList),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<HostList>> {
    let hosts = app.engine.list_hosts(&ctx).await?;
    Ok(Json(HostList { items: hosts.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path)),
    responses((status = 200, body = HostItem), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<HostItem>> {
    Ok(Json((&app.engine.host(&ctx, &name).await?).into()))
}

/// What an evacuation does with each instance of the lost host: `recreate` it on another host from its
/// template (its disk's contents are lost), or leave it `stop`ped where it was.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvacuateParams {
    /// recreate (the default) or stop, for every instance not named in `instances`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Per instance id: recreate or stop.
    #[serde(default)]
    pub instances: BTreeMap<Uuid, String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EvacuationView {
    /// One operation per instance of the host that is being moved.
    pub items: Vec<OperationView>,
    /// The instances left where they are, with why (no other host can take them, or busy).
    pub left: Vec<LeftInstance>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeftInstance {
    pub instance_id: Uuid,
    pub reason: String,
}

fn mode(s: &str) -> Result<EvacuationMode, ApiError> {
    match s {
        "recreate" => Ok(EvacuationMode::Recreate),
        "stop" => Ok(EvacuationMode::Stop),
        other => Err(ApiError::bad_request(format!("invalid mode: {other:?} is neither recreate nor stop"))),
    }
}

#[utoipa::path(post, path = "/v1/hosts/{name}/{action}", tag = "hosts",
    params(("name" = String, Path), ("action" = String, Path, description = "enable, disable, drain or evacuate")),
    request_body(content = EvacuateParams, description = "evacuate only"),
    responses((status = 200, body = HostItem, description = "enable, disable, drain"),
        (status = 202, body = EvacuationView, description = "evacuate"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn action(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path((name, action)): Path<(String, String)>,
    OptionalJsonBody(body): OptionalJsonBody<EvacuateParams>,
) -> ApiResult<Response> {
    let state = match action.as_str() {
        "enable" => HostAdminState::Ready,
        "disable" => HostAdminState::Disabled,
        "drain" => HostAdminState::Draining,
        "evacuate" => {
            let p = body.unwrap_or_default();
            let default = mode(p.mode.as_deref().unwrap_or("recreate"))?;
            let mut choices = BTreeMap::new();
            for (id, m) in &p.instances {
                choices.insert(*id, mode(m)?);
            }
            let done = app.engine.evacuate_host(&ctx, &name, default, &choices).await?;
            let view = EvacuationView {
                items: done.operations.iter().map(Into::into).collect(),
                left: done.left.into_iter().map(|(instance_id, reason)| LeftInstance { instance_id, reason }).collect(),
            };
            return Ok((StatusCode::ACCEPTED, Json(view)).into_response());
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no host action {other:?}; use enable, disable, drain or evacuate"),
            ))
        }
    };
    let host = app.engine.set_host_state(&ctx, &name, state).await?;
    Ok(Json(HostItem::from(&host)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHostTokenParams {
    /// The name the host's agent registers under (`nimbus agent --name`).
    pub host: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HostTokenView {
    pub id: Uuid,
    pub host: String,
    /// The agent's credential (`nimbus agent --token`): shown once, at creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&HostToken> for HostTokenView {
    fn from(t: &HostToken) -> HostTokenView {
        HostTokenView { id: t.id, host: t.host_name.clone(), token: None, created_at: t.created_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HostTokenList {
    pub items: Vec<HostTokenView>,
}

#[utoipa::path(post, path = "/v1/host-tokens", tag = "hosts", request_body = CreateHostTokenParams,
    responses((status = 201, body = HostTokenView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_token(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateHostTokenParams>,
) -> ApiResult<(StatusCode, Json<HostTokenView>)> {
    let (token, secret) = app.engine.create_host_token(&ctx, &p.host).await?;
    Ok((StatusCode::CREATED, Json(HostTokenView { token: Some(secret), ..(&token).into() })))
}

#[utoipa::path(get, path = "/v1/host-tokens", tag = "hosts",
    responses((status = 200, body = HostTokenList), (status = 403, body = ErrorBody)))]
pub async fn list_tokens(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<HostTokenList>> {
    let tokens = app.engine.list_host_tokens(&ctx).await?;
    Ok(Json(HostTokenList { items: tokens.iter().map(Into::into).collect() }))
}

#[utoipa::path(delete, path = "/v1/host-tokens/{id}", tag = "hosts", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.engine.revoke_host_token(&ctx, parse_uuid("host token", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
