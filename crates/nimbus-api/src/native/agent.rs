//! `/v1/agent/...`: what a host's `nimbus agent` calls, with its host token (`Authorization: Bearer nht_…`).
//! A token acts for its one host: every call here is about the host the token names, never another.
//!
//! - `GET /v1/agent/config`: the zone and instance network the agent's driver needs.
//! - `POST /v1/agent/register`: the host's capacity, accelerator, driver, overlay address and templates.
//! - `POST /v1/agent/heartbeat`: renews the host's lease, with a report of every VM it has and its state.
//! - `GET /v1/agent/calls?wait=SECONDS`: the driver calls waiting for the host (a long poll).
//! - `POST /v1/agent/calls/{id}`: the reply to one.
//! - `GET /v1/agent/overlay`: the host's side of the zone's overlay network (peers, remote instances).
//! - `GET /v1/agent/console/{session}` (websocket): an interactive console the agent was asked (in the
//!   calls' answer) to bring to this server, for a user's request waiting here.
//!
//! These are the agent's protocol, not part of the API documented for clients (`/openapi.json`).

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use nimbus_core::DomainError;
use nimbus_engine::hosts::DriverReply;
use nimbus_engine::{AgentRegistration, HostReport, HostWork};
use serde::{Deserialize, Serialize};

use super::instances::parse_uuid;
use crate::auth::credential;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
use crate::AppState;

/// The host a request's host token acts for.
pub struct HostCaller(pub String);

impl FromRequestParts<AppState> for HostCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let secret = credential(&parts.headers, "Bearer").ok_or_else(|| {
            ApiError::from(DomainError::Unauthenticated(
                "missing host token: send 'Authorization: Bearer <token>'".into(),
            ))
        })?;
        Ok(HostCaller(state.engine.authenticate_host(secret).await?))
    }
}

/// What an agent needs before it builds its driver: the zone it serves and the instance network.
#[derive(Debug, Serialize)]
pub struct AgentConfig {
    pub host: String,
    pub zone: String,
    pub network_cidr: String,
    pub heartbeat_every_ms: u64,
    pub report_every_ms: u64,
}

pub async fn config(State(app): State<AppState>, HostCaller(host): HostCaller) -> Json<AgentConfig> {
    let c = app.engine.config();
    Json(AgentConfig {
        host,
        zone: c.zone.clone(),
        network_cidr: c.network_cidr.clone(),
        heartbeat_every_ms: c.heartbeat_every.as_millis() as u64,
        report_every_ms: c.report_every.as_millis() as u64,
    })
}

#[derive(Debug, Serialize)]
pub struct Registered {
    pub host: String,
    /// How often the control plane expects a heartbeat.
    pub heartbeat_every_ms: u64,
    /// How often it expects a report of what runs on the host.
    pub report_every_ms: u64,
}

pub async fn register(
    State(app): State<AppState>,
    HostCaller(host): HostCaller,
    JsonBody(reg): JsonBody<AgentRegistration>,
) -> ApiResult<Json<Registered>> {
    let registered = app.engine.register_host(&host, reg).await?;
    Ok(Json(Registered {
        host: registered.name,
        heartbeat_every_ms: app.engine.config().heartbeat_every.as_millis() as u64,
        report_every_ms: app.engine.config().report_every.as_millis() as u64,
    }))
}

/// The host's side of the zone's overlay network (204 when the host has no underlay address).
pub async fn overlay(State(app): State<AppState>, HostCaller(host): HostCaller) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    Ok(match app.engine.overlay_for(&host).await? {
        Some(spec) => Json(spec).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// A heartbeat, with a report of what runs on the host now and then.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub report: Option<HostReport>,
}

pub async fn heartbeat(
    State(app): State<AppState>,
    HostCaller(host): HostCaller,
    JsonBody(beat): JsonBody<Heartbeat>,
) -> ApiResult<StatusCode> {
    app.engine.host_heartbeat(&host, beat.report).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsQuery {
    /// Seconds to wait for a call when there is none yet (at most 60).
    #[serde(default)]
    pub wait: Option<u64>,
}

pub async fn calls(
    State(app): State<AppState>,
    HostCaller(host): HostCaller,
    QueryParams(q): QueryParams<CallsQuery>,
) -> ApiResult<Json<HostWork>> {
    Ok(Json(app.engine.host_work(&host, Duration::from_secs(q.wait.unwrap_or(0))).await?))
}

/// The agent's end of an interactive console it was asked to bring here: its websocket becomes the
/// console stream the user's request on this server is waiting for.
pub async fn console(
    State(app): State<AppState>,
    HostCaller(host): HostCaller,
    Path(id): Path<String>,
    ws: axum::extract::WebSocketUpgrade,
) -> ApiResult<axum::response::Response> {
    let id = parse_uuid("console session", &id)?;
    Ok(ws.on_upgrade(move |socket| async move {
        // The agent's websocket, seen by the user's request as a byte stream.
        let (ours, theirs) = tokio::io::duplex(16 * 1024);
        if app.engine.attach_console(&host, id, Box::new(ours)).is_ok() {
            crate::relay::relay(socket, theirs).await;
        }
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyBody {
    pub reply: DriverReply,
}

pub async fn reply(
    State(app): State<AppState>,
    HostCaller(host): HostCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReplyBody>,
) -> ApiResult<StatusCode> {
    app.engine.host_reply(&host, parse_uuid("call", &id)?, body.reply).await?;
    Ok(StatusCode::NO_CONTENT)
}
