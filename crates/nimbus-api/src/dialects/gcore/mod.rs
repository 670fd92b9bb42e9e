//! The Gcore Cloud dialect (seed 003): instances under `/cloud/v1/instances/{project_id}/{region_id}` (create
//! and actions under `/cloud/v2/...`), flavors, images and tasks, `Authorization: APIKey <secret>`, Gcore's
//! error body. The integer project id is the key's project's `numeric_id`, the region id the zone's.
//! Notes: `shared/dialects/gcore.md`; the real `gcore` Python SDK is the test client.

use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

mod actions;
mod catalog;
mod common;
mod create;
pub mod errors;
mod instances;
mod interfaces;
mod metrics;
mod tasks;
pub mod views;

const V1: &str = "/cloud/v1/instances/{project_id}/{region_id}";

pub fn router(_state: AppState) -> Router<AppState> {
    use errors::method_not_allowed as other;
    let one = |p: &str| format!("{V1}/{{instance_id}}{p}");
    Router::new()
        .route("/cloud/v2/instances/{project_id}/{region_id}", post(create::create).fallback(other))
        .route(V1, get(instances::list).fallback(other))
        .route(&one(""), get(instances::get).patch(instances::update).delete(instances::delete).fallback(other))
        .route(
            "/cloud/v2/instances/{project_id}/{region_id}/{instance_id}/action",
            post(actions::action).fallback(other),
        )
        .route(&one("/changeflavor"), post(actions::resize).fallback(other))
        .route(&one("/addsecuritygroup"), post(actions::add_security_group).fallback(other))
        .route(&one("/delsecuritygroup"), post(actions::del_security_group).fallback(other))
        .route(&one("/interfaces"), get(interfaces::list).fallback(other))
        .route(&one("/metrics"), post(metrics::metrics).fallback(other))
        .route(&one("/get_console"), get(metrics::console).fallback(other))
        .route("/cloud/v1/flavors/{project_id}/{region_id}", get(catalog::flavors).fallback(other))
        .route("/cloud/v1/images/{project_id}/{region_id}", get(catalog::images).fallback(other))
        .route("/cloud/v1/images/{project_id}/{region_id}/{image_id}", get(catalog::image).fallback(other))
        .route("/cloud/v1/tasks", get(tasks::list).fallback(other))
        .route("/cloud/v1/tasks/{task_id}", get(tasks::get).fallback(other))
}
