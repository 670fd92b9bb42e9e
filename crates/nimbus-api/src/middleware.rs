//! Cross-cutting HTTP concerns: the request id every log line and error carries, Prometheus metrics, and
//! `Idempotency-Key` replay for POSTs.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nimbus_core::audit::AuditEntry;
use nimbus_engine::audit::{record_caller, AuditCaller};
use nimbus_store::{IdempotencyClaim, IdempotencyHold};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::auth::{actor_of, credential};
use crate::error::{ApiError, REQUEST_ID};
use crate::AppState;

pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("nimbus_http_requests_total", "HTTP requests served"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("nimbus_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["method", "route"],
        )
        .expect("valid metric");
        registry.register(Box::new(requests.clone())).expect("registers once");
        registry.register(Box::new(latency.clone())).expect("registers once");
        HttpMetrics { registry, requests, latency }
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets the request id for errors and logs, and counts and times the request.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let span = tracing::info_span!("request", id = %request_id, %method, %route);
    // `instrument`, not `span.enter()`: an entered guard held across an await leaves the span entered on
    // whichever thread the task moves to, which corrupts tracing's registry (and panicked a worker).
    let audited = AuditedRequest::of(&req);
    let (response, caller) = REQUEST_ID.scope(request_id.clone(), record_caller(next.run(req).instrument(span))).await;
    audited.finish(&state, request_id, response.status(), caller);
    let elapsed = started.elapsed();
    state.metrics.requests.with_label_values(&[&method, &route, response.status().as_str()]).inc();
    state.metrics.latency.with_label_values(&[&method, &route]).observe(elapsed.as_secs_f64());
    tracing::debug!(status = response.status().as_u16(), elapsed_ms = elapsed.as_secs_f64() * 1000.0, "served");
    response
}

/// What the audit log keeps of a request (see `nimbus_engine::audit`): every request that may change
/// something, and every one refused for its credentials or its role. Agents' own traffic (heartbeats,
/// call replies: several a second per host) is kept only when refused.
struct AuditedRequest {
    method: axum::http::Method,
    path: String,
    source: Option<String>,
}

impl AuditedRequest {
    fn of(req: &Request) -> AuditedRequest {
        AuditedRequest {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            source: req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|ci| ci.0.ip().to_string()),
        }
    }

    fn finish(self, state: &AppState, request_id: String, status: StatusCode, caller: Option<AuditCaller>) {
        let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
        let changing = !matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !(refused || changing && !self.path.starts_with("/v1/agent/")) {
            return;
        }
        state.engine.audit(AuditEntry {
            seq: 0,
            at: nimbus_core::now(),
            organization_id: caller.as_ref().map(|c| c.organization_id),
            project_id: caller.as_ref().map(|c| c.project_id),
            key_id: caller.as_ref().map(|c| c.key_id.clone()),
            role: caller.as_ref().map(|c| c.role),
            source: self.source,
            request_id,
            method: self.method.to_string(),
            path: self.path,
            status: status.as_u16(),
        });
    }
}

/// `/metrics` on the API's address: for operators only (it tells the load and the failures of every
/// tenant). Prometheus without a key scrapes `--metrics-listen` instead.
pub async fn metrics_for_operators(state: State<AppState>, crate::auth::Caller(ctx): crate::auth::Caller) -> Response {
    if let Err(e) = ctx.require(nimbus_core::tenancy::Role::Operator) {
        return ApiError::from(e).into_response();
    }
    render_metrics(state).await
}

/// Handlers build absolute URLs (console URLs, Exoscale's zone endpoints, DRF page links) from the request's
/// Host and `X-Forwarded-Proto`, which the client chooses. With a configured public URL every request carries
/// that URL's host and scheme instead, before any handler sees it, so no answer points where a client said.
pub async fn public_url(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(url) = state.engine.config().public_url.as_deref() {
        if let Ok(uri) = url.parse::<axum::http::Uri>() {
            let headers = req.headers_mut();
            if let Some(host) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                headers.insert(axum::http::header::HOST, host);
            }
            let proto = if uri.scheme_str() == Some("https") { "https" } else { "http" };
            headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
        }
    }
    next.run(req).await
}

pub async fn render_metrics(State(state): State<AppState>) -> Response {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&state.metrics.registry.gather(), &mut out);
    let m = &state.engine.metrics;
    let engine = [
        ("nimbus_operations_started_total", "Operations a worker began", m.operations_started.load(Ordering::Relaxed)),
        (
            "nimbus_operations_succeeded_total",
            "Operations that ended in success",
            m.operations_succeeded.load(Ordering::Relaxed),
        ),
        (
            "nimbus_operations_failed_total",
            "Operations that ended in failure or timeout",
            m.operations_failed.load(Ordering::Relaxed),
        ),
        (
            "nimbus_operations_resumed_total",
            "Operations resumed after a restart",
            m.operations_resumed.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in engine {
        out.extend_from_slice(format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n").as_bytes());
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `Idempotency-Key` on a POST: a key belongs to the API key that sends it, and its request applies at most
/// once, across crashes and servers. The first request holds the key while it runs (renewing the hold's
/// lease) and whatever it commits records, in the same transaction, that the key's request applied and what
/// it made; its response is stored after. A repeat gets the stored response; if the first request applied
/// but its response was lost (its server died in between), one rebuilt from what it made
/// ([`crate::native::replay`]); if the first request died before applying anything, the repeat takes the
/// key over once the hold's lease has run out (at once when that server restarted) and runs. The same key
/// with another request is refused (422), and so is a repeat while the first still runs (409, retry).
pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (Some(key), true) = (key, req.method() == Method::POST) else {
        return next.run(req).await;
    };
    // A console ticket is a single-use secret the store keeps only a hash of: a lost answer cannot be
    // given again, and minting another is harmless. Every such request mints one.
    if req.uri().path().ends_with("/console/ticket") {
        return next.run(req).await;
    }
    // A host's admin state is set, not added to, so a repeat changes nothing; an evacuation's repeat finds
    // the host's instances already moving (or moved) and moves none twice. Both answer the host as it is.
    if req.uri().path().starts_with("/v1/hosts/") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    // Unauthenticated requests go on and fail in the handler with the usual 401.
    let Some(secret) = credential(&parts.headers, "Bearer") else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let Ok(ctx) = state.engine.authenticate_secret(secret, actor_of(&parts)).await else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let bytes = match axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body too large")
                .into_response()
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(parts.uri.path());
    hasher.update(&bytes);
    let hash = hex::encode(hasher.finalize());
    let mut response = match state.engine.idempotency_claim(&ctx, &key, &hash).await {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(IdempotencyClaim::New(hold)) => {
            return run_holding(&state, hold, Request::from_parts(parts, Body::from(bytes)), next).await
        }
        Ok(IdempotencyClaim::Replay { status, body }) => {
            let mut response = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
            response
                .headers_mut()
                .insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Ok(IdempotencyClaim::Applied { result }) => crate::native::replay::applied(&state, &ctx, &parts, &result).await,
        Ok(IdempotencyClaim::InProgress) => {
            let mut response = ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "a request with this Idempotency-Key is still being processed; retry later",
            )
            .into_response();
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Ok(IdempotencyClaim::Mismatch) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            )
            .into_response()
        }
    };
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// Runs the request holding its key, renewing the hold while it runs, and stores its answer.
async fn run_holding(state: &AppState, hold: IdempotencyHold, req: Request, next: Next) -> Response {
    let engine = &state.engine;
    // If the request is dropped before it answers (the client went away, so the server drops its handler
    // mid-way), the hold is given back now rather than when its lease runs out; what it applied stays.
    let mut unanswered = GiveBackOnDrop(Some((engine.clone(), hold.clone())));
    let run = engine.holding(hold.clone(), next.run(req));
    tokio::pin!(run);
    let mut renew = tokio::time::interval(engine.idempotency_renew_every());
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    let response = loop {
        tokio::select! {
            response = &mut run => break response,
            _ = renew.tick() => {
                if let Err(e) = engine.idempotency_renew(&hold).await {
                    tracing::warn!(error = %e, "could not renew an idempotency key's hold");
                }
            }
        }
    };
    let (rparts, rbody) = response.into_parts();
    let rbytes: Bytes = axum::body::to_bytes(rbody, usize::MAX).await.unwrap_or_default();
    // Server errors are not remembered: the retry the key exists for should get a real try (unless the
    // request applied, which the release keeps).
    let stored = if rparts.status.is_server_error() {
        engine.idempotency_release(&hold).await
    } else {
        engine.idempotency_finish(&hold, rparts.status.as_u16(), &String::from_utf8_lossy(&rbytes)).await
    };
    unanswered.0 = None;
    if let Err(e) = stored {
        // The hold stays; its lease runs out and what the request applied answers a retry.
        tracing::warn!(error = %e, "could not record an idempotency key's answer");
    }
    Response::from_parts(rparts, Body::from(rbytes))
}

struct GiveBackOnDrop(Option<(std::sync::Arc<nimbus_engine::Engine>, IdempotencyHold)>);

impl Drop for GiveBackOnDrop {
    fn drop(&mut self) {
        if let (Some((engine, hold)), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                if let Err(e) = engine.idempotency_release(&hold).await {
                    tracing::warn!(error = %e, "could not give an idempotency key back");
                }
            });
        }
    }
}
