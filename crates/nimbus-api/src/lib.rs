//! HTTP. Handlers parse requests, call the engine's services and render responses; they hold no business
//! logic and never touch the store or the driver.
//!
//! - `native/`: the native `/v1` API (JSON, snake_case), described by the OpenAPI document in `openapi.rs`.
//! - `dialects/<provider>/`: wire-compatible APIs of other clouds over the same services.
//! - `error.rs`, `extract.rs`, `auth.rs`: the native error shape, strict JSON bodies, bearer authentication.
//! - `middleware.rs`: request ids, metrics, idempotency keys.
//! - `ui/`: the web console under `/ui/` (its files are in `crates/nimbus-api/ui/`).

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use nimbus_engine::Engine;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;

pub mod auth;
pub mod dialects;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod native;
pub mod openapi;
pub mod relay;
pub mod routes;
pub mod ui;

pub use error::ApiError;

/// Largest request body accepted anywhere (user-data is at most 32 KiB once decoded).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: Arc<middleware::HttpMetrics>,
    /// How long a client has to send a request's body once its headers came: a body that never finishes
    /// is answered 408 instead of holding the connection.
    pub body_timeout: std::time::Duration,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> AppState {
        AppState {
            engine,
            metrics: Arc::new(middleware::HttpMetrics::new()),
            body_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// `/metrics` alone, unauthenticated, for a Prometheus scraping a separate address (`--metrics-listen`)
/// that only the operator's network reaches.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(middleware::render_metrics)).with_state(state)
}

/// Every route of every API family, unwrapped: what [`router`] serves, and the list of its paths.
pub fn routes(state: AppState) -> routes::Routes {
    routes::Routes::new()
        .merge(native::router(state.clone()))
        .merge(dialects::router(state))
        .merge(ui::router())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(middleware::metrics_for_operators))
        .route("/openapi.json", get(openapi::serve))
}

/// The whole HTTP surface of a Nimbus server.
pub fn router(state: AppState) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    routes(state.clone())
        .into_router()
        .fallback(dialects::unknown_route)
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::track))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::public_url))
        // Answers are data, never to be sniffed into something a browser runs, nor kept by a shared cache
        // (they carry secrets and per-key views). A handler that means otherwise sets its own.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(state.body_timeout))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
