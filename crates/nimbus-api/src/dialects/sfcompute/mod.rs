//! The SF Compute dialect: `/preview/v2/instances` (and `/v2/instances`) with Bearer auth, SF's ids, instance
//! object and error envelope, over the engine's instance services. Notes: shared/dialects/sfcompute.md.

use axum::routing::get;
use axum::Router;

use crate::AppState;

pub mod errors;
pub mod handlers;
pub mod ids;
pub mod views;

pub fn router(_state: AppState) -> Router<AppState> {
    let mut router = Router::new();
    // SF's public URL has `/preview`; its docs name the same routes without it.
    for base in ["/preview/v2/instances", "/v2/instances"] {
        router = router
            .route(base, get(handlers::list).post(handlers::create).patch(handlers::batch_update))
            .route(&format!("{base}/{{id}}"), get(handlers::get).patch(handlers::update));
    }
    router
}
