//! HTTP. Handlers parse requests, call the engine's services and render responses; they hold no business
//! logic and never touch the store or the driver.
//!
//! - `native/`: the native `/v1` API (JSON, snake_case), described by the OpenAPI document in `openapi.rs`.
//! - `dialects/<provider>/`: wire-compatible APIs of other clouds over the same services.
//! - `error.rs`, `extract.rs`, `auth.rs`: the native error shape, strict JSON bodies, bearer authentication.
//! - `middleware.rs`: request ids, metrics, idempotency keys.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use nimbus_engine::Engine;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub mod auth;
pub mod dialects;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod native;
pub mod openapi;
pub mod relay;

pub use error::ApiError;

/// Largest request body accepted anywhere (user-data is at most 32 KiB once decoded).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: Arc<middleware::HttpMetrics>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> AppState {
        AppState { engine, metrics: Arc::new(middleware::HttpMetrics::new()) }
    }
}

/// The whole HTTP surface of a Nimbus server.
pub fn router(state: AppState) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .merge(native::router(state.clone()))
        .merge(dialects::router(state.clone()))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(middleware::render_metrics))
        .route("/openapi.json", get(openapi::serve))
        .fallback(dialects::unknown_route)
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
