//! The ONET Solutions dialect (seed 002): compute instances under
//! `/v1/organizations/{organization_id}/projects/{project_id}/compute/...`, Bearer auth, DRF-shaped errors.
//! Notes: `shared/dialects/onet.md`.

use axum::routing::{get, post};

use crate::dialects::common::drf;
use crate::routes::Routes;
use crate::AppState;

pub mod errors;
pub mod handlers;
pub mod views;

const BASE: &str = "/v1/organizations/{organization_id}/projects/{project_id}/compute";

/// Whether a path is under this dialect's prefix (the native API has no `/v1/organizations`).
pub fn owns(path: &str) -> bool {
    path.starts_with("/v1/organizations/") || path.starts_with("/v1/compute/")
}

pub fn router(_state: AppState) -> Routes {
    let mut router = Routes::new();
    // ONET documents its paths without a trailing slash; DRF clients often send one. Both are served.
    for slash in ["", "/"] {
        let nope = drf::method_not_allowed::<errors::Onet>;
        router = router
            .route(&format!("{BASE}/instances{slash}"), get(handlers::list).post(handlers::create).fallback(nope))
            .route(
                &format!("{BASE}/instances/{{id}}{slash}"),
                get(handlers::get)
                    .put(handlers::update_instance)
                    .patch(handlers::update_instance)
                    .delete(handlers::delete)
                    .fallback(nope),
            )
            .route(&format!("{BASE}/instances/{{id}}/resize{slash}"), post(handlers::resize).fallback(nope))
            .route(&format!("{BASE}/instances/{{id}}/console{slash}"), post(handlers::open_console).fallback(nope))
            .route(
                &format!("{BASE}/instances/{{id}}/console/{{session_id}}{slash}"),
                get(handlers::console).fallback(nope),
            )
            .route(&format!("{BASE}/instances/{{id}}/{{action}}{slash}"), post(handlers::power).fallback(nope))
            .route(
                &format!("{BASE}/instances/{{id}}/tasks/{{task_id}}{slash}"),
                get(handlers::instance_task).fallback(nope),
            )
            .route(&format!("{BASE}/tasks/{{id}}{slash}"), get(handlers::task).fallback(nope))
            .route(&format!("{BASE}/{{catalog}}{slash}"), get(handlers::project_catalog).fallback(nope))
            .route(&format!("/v1/compute/sizes{slash}"), get(handlers::sizes).fallback(nope))
            .route(&format!("/v1/compute/locations{slash}"), get(handlers::locations).fallback(nope))
            .route(&format!("/v1/compute/images{slash}"), get(handlers::images).fallback(nope));
    }
    router
}
