//! The SharedCloud dialect (seed 001): instances under `/api/v1/instances/`, plus what its real client,
//! `sharedcloud-cli`, needs around them: account registration, change and deletion (`/api/v1/users/`), token
//! login (`/api/v1/api-token-auth/`) and the GPU models (`/api/v1/gpus/`). `Authorization: Token <secret>`,
//! Django REST Framework's error bodies, form-encoded or JSON requests. Notes:
//! `shared/dialects/sharedcloud.md`.
//!
//! A SharedCloud instance is a Nimbus instance of the caller's project: its `type` is whether its instance
//! type has GPUs, its `gpu` is its GPU model (SharedCloud's uuid for a model is a stored alias), its
//! `ask_price` is the instance's price, its `status` says whether it runs; `max_num_parallel_jobs` lives in
//! the instance's `sharedcloud` extension map.

use axum::routing::{get, patch, post};

use crate::dialects::common::drf;
use crate::routes::Routes;
use crate::AppState;

pub mod accounts;
pub mod errors;
pub mod handlers;
pub mod views;

const BASE: &str = "/api/v1";

/// Whether a path is under this dialect's prefix.
pub fn owns(path: &str) -> bool {
    path == BASE || path.starts_with("/api/")
}

pub fn router(_state: AppState) -> Routes {
    let mut router = Routes::new();
    // DRF's router makes every path end with a slash; the slash-less form is served too.
    for slash in ["", "/"] {
        let nope = drf::method_not_allowed::<errors::SharedCloud>;
        router = router
            .route(&format!("{BASE}/instances{slash}"), get(handlers::list).post(handlers::create).fallback(nope))
            .route(
                &format!("{BASE}/instances/{{uuid}}{slash}"),
                get(handlers::get)
                    .put(handlers::update)
                    .patch(handlers::update)
                    .delete(handlers::delete)
                    .fallback(nope),
            )
            .route(
                &format!("{BASE}/instances/{{uuid}}/start{slash}"),
                patch(handlers::run_state::<true>).fallback(nope),
            )
            .route(
                &format!("{BASE}/instances/{{uuid}}/stop{slash}"),
                patch(handlers::run_state::<false>).fallback(nope),
            )
            .route(&format!("{BASE}/gpus{slash}"), get(handlers::gpus).fallback(nope))
            .route(&format!("{BASE}/users{slash}"), get(accounts::list).post(accounts::register).fallback(nope))
            .route(
                &format!("{BASE}/users/account{slash}"),
                patch(accounts::update).put(accounts::update).delete(accounts::delete).fallback(nope),
            )
            .route(&format!("{BASE}/api-token-auth{slash}"), post(accounts::log_in).fallback(nope));
    }
    router
}
