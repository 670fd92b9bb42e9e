//! Cross-cutting HTTP concerns: the request id every log line and error carries, Prometheus metrics, and
//! `Idempotency-Key` replay for POSTs.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nimbus_store::IdempotencyClaim;
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
    let response = REQUEST_ID.scope(request_id, next.run(req).instrument(span)).await;
    let elapsed = started.elapsed();
    state.metrics.requests.with_label_values(&[&method, &route, response.status().as_str()]).inc();
    state.metrics.latency.with_label_values(&[&method, &route]).observe(elapsed.as_secs_f64());
    tracing::debug!(status = response.status().as_u16(), elapsed_ms = elapsed.as_secs_f64() * 1000.0, "served");
    response
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

/// `Idempotency-Key` on a POST: the first response for a key and body is stored and replayed for repeats;
/// the same key with another body is refused, and so is a repeat while the first is still running.
pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (Some(key), true) = (key, req.method() == Method::POST) else {
        return next.run(req).await;
    };
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
    match state.engine.idempotency_claim(&ctx, &key, &hash).await {
        Err(e) => ApiError::from(e).into_response(),
        Ok(IdempotencyClaim::Replay { status, body }) => {
            let mut response = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
            let headers = response.headers_mut();
            headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Ok(IdempotencyClaim::InProgress) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "a request with this Idempotency-Key is still being processed; retry later",
        )
        .into_response(),
        Ok(IdempotencyClaim::Mismatch) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )
        .into_response(),
        Ok(IdempotencyClaim::New) => {
            let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
            let (rparts, rbody) = response.into_parts();
            let rbytes: Bytes = axum::body::to_bytes(rbody, usize::MAX).await.unwrap_or_default();
            // Server errors are not remembered: the retry the key exists for should get a real try.
            let stored = if rparts.status.is_server_error() {
                state.engine.idempotency_release(&ctx, &key).await
            } else {
                state
                    .engine
                    .idempotency_finish(&ctx, &key, rparts.status.as_u16(), &String::from_utf8_lossy(&rbytes))
                    .await
            };
            if let Err(e) = stored {
                tracing::warn!(error = %e, "could not record idempotency key");
            }
            Response::from_parts(rparts, Body::from(rbytes))
        }
    }
}
