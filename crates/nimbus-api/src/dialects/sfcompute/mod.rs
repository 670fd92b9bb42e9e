//! The SF Compute dialect: `/preview/v2/instances` (and `/v2/instances`) with Bearer auth, SF's ids, instance
//! object and error envelope, over the engine's instance services. Notes: shared/dialects/sfcompute.md.

use axum::routing::{get, post};

use crate::routes::Routes;
use crate::AppState;

pub mod catalog;
pub mod errors;
pub mod handlers;
pub mod ids;
pub mod views;

/// SF's collections under `/v2` (also served under `/preview/v2`); every other `/v2` path is Exoscale's.
const COLLECTIONS: &[&str] = &["instances", "images", "instance_skus", "pools", "capacities", "workspaces", "me"];

/// Whether a path is under this dialect's prefix.
pub fn owns(path: &str) -> bool {
    if path.starts_with("/preview/") {
        return true;
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return false };
    let collection = rest.split('/').next().unwrap_or("");
    COLLECTIONS.contains(&collection)
}

pub fn router(_state: AppState) -> Routes {
    use errors::method_not_allowed as other;
    let mut router = Routes::new();
    // SF's public URL has `/preview`; its docs name the same routes without it.
    for base in ["/preview/v2", "/v2"] {
        router = router
            .route(
                &format!("{base}/instances"),
                get(handlers::list).post(handlers::create).patch(handlers::batch_update).fallback(other),
            )
            .route(
                &format!("{base}/instances/{{id}}"),
                get(handlers::get).patch(handlers::update).delete(handlers::delete).fallback(other),
            )
            .route(&format!("{base}/instances/{{id}}/terminate"), post(handlers::terminate).fallback(other))
            .route(&format!("{base}/images"), get(catalog::images).fallback(other))
            .route(&format!("{base}/instance_skus"), get(catalog::instance_skus).fallback(other))
            .route(&format!("{base}/pools"), get(catalog::pools).fallback(other))
            .route(&format!("{base}/capacities"), get(catalog::capacities).fallback(other))
            .route(&format!("{base}/workspaces"), get(catalog::workspaces).fallback(other))
            .route(&format!("{base}/me"), get(catalog::me).fallback(other));
    }
    router
}
