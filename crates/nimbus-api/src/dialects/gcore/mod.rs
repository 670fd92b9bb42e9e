//! The Gcore Cloud dialect (seed 003): instances under `/cloud/v1/instances/{project_id}/{region_id}` (create
//! and actions under `/cloud/v2/...`), flavors, images and tasks, `Authorization: APIKey <secret>`, Gcore's
//! error body. The integer project id is the key's project's `numeric_id`, the region id the zone's.
//! Notes: `shared/dialects/gcore.md`; the real `gcore` Python SDK is the test client.

use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

pub mod errors;
pub mod handlers;
pub mod views;

const V1: &str = "/cloud/v1/instances/{project_id}/{region_id}";

pub fn router(_state: AppState) -> Router<AppState> {
    use errors::method_not_allowed as other;
    use handlers as h;
    let one = |p: &str| format!("{V1}/{{instance_id}}{p}");
    Router::new()
        .route("/cloud/v2/instances/{project_id}/{region_id}", post(h::create).fallback(other))
        .route("/cloud/v2/instances/{project_id}/{region_id}/{instance_id}/action", post(h::action).fallback(other))
        .route(V1, get(h::list).fallback(other))
        .route(&one(""), get(h::get).patch(h::update).delete(h::delete).fallback(other))
        .route(&one("/changeflavor"), post(h::resize).fallback(other))
        .route(&one("/addsecuritygroup"), post(h::add_security_group).fallback(other))
        .route(&one("/delsecuritygroup"), post(h::del_security_group).fallback(other))
        .route(&one("/interfaces"), get(h::interfaces).fallback(other))
        .route(&one("/metrics"), post(h::metrics).fallback(other))
        .route(&one("/get_console"), get(h::console).fallback(other))
        .route("/cloud/v1/flavors/{project_id}/{region_id}", get(h::flavors).fallback(other))
        .route("/cloud/v1/images/{project_id}/{region_id}", get(h::images).fallback(other))
        .route("/cloud/v1/images/{project_id}/{region_id}/{image_id}", get(h::image).fallback(other))
        .route("/cloud/v1/tasks", get(h::tasks_list).fallback(other))
        .route("/cloud/v1/tasks/{task_id}", get(h::task).fallback(other))
}
