//! The native API, `/v1`. Paths and field names are fixed by DESIGN.md's native API sketch.

use axum::routing::{get, post};

use crate::routes::Routes;
use crate::AppState;

pub mod access;
pub mod addresses;
pub mod agent;
pub mod audit;
pub mod catalog;
pub mod groups;
pub mod hosts;
pub mod instances;
pub mod operations;
pub mod replay;
pub mod views;
pub mod volumes;

pub fn router(state: AppState) -> Routes {
    Routes::new()
        .route("/v1/instances", post(instances::create).get(instances::list).patch(instances::batch_update))
        .route("/v1/instances/{id}", get(instances::get).patch(instances::update).delete(instances::delete))
        .route("/v1/instances/{id}/password", get(instances::password))
        .route("/v1/instances/{id}/console", get(instances::console))
        .route("/v1/instances/{id}/console/stream", get(instances::console_stream))
        .route("/v1/instances/{id}/console/ticket", post(instances::console_ticket))
        .route("/v1/instances/{id}/metrics", get(instances::metrics))
        .route("/v1/instances/{id}/guest", get(instances::guest))
        .route("/v1/instances/{id}/tunnel/{port}", get(instances::tunnel))
        .route("/v1/instances/{id}/{action}", post(instances::action))
        .route("/v1/operations", get(operations::list))
        .route("/v1/operations/{id}", get(operations::get))
        .route("/v1/events", get(operations::events))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/{name}", get(hosts::get))
        .route("/v1/hosts/{name}/{action}", post(hosts::action))
        .route("/v1/host-tokens", get(hosts::list_tokens).post(hosts::create_token))
        .route("/v1/host-tokens/{id}", axum::routing::delete(hosts::revoke_token))
        .route("/v1/agent/config", get(agent::config))
        .route("/v1/agent/register", post(agent::register))
        .route("/v1/agent/heartbeat", post(agent::heartbeat))
        .route("/v1/agent/calls", get(agent::calls))
        .route("/v1/agent/calls/{id}", post(agent::reply))
        .route("/v1/agent/console/{id}", get(agent::console))
        .route("/v1/agent/overlay", get(agent::overlay))
        .route("/v1/whoami", get(access::whoami))
        .route("/v1/audit", get(audit::list))
        .route("/v1/ping", get(access::ping))
        .route("/v1/api-keys", get(access::list_api_keys).post(access::create_api_key))
        .route("/v1/api-keys/{key_id}", axum::routing::delete(access::delete_api_key))
        .route("/v1/projects", get(access::list_projects).post(access::create_project))
        .route("/v1/projects/{id}", get(access::get_project))
        .route("/v1/projects/{id}/quota", axum::routing::put(access::set_quota))
        .route("/v1/reserved-addresses", get(addresses::list).post(addresses::create))
        .route("/v1/reserved-addresses/{id}", get(addresses::get).delete(addresses::delete))
        .route("/v1/ssh-keys", get(access::list_ssh_keys).post(access::create_ssh_key))
        .route("/v1/ssh-keys/{id}", get(access::get_ssh_key).delete(access::delete_ssh_key))
        .route("/v1/zones", get(catalog::zones))
        .route("/v1/host", get(catalog::host))
        .route("/v1/host/unknown-instances/{id}", axum::routing::delete(catalog::remove_unknown_instance))
        .route("/v1/instance-types", get(catalog::instance_types))
        .route("/v1/templates", get(catalog::templates).post(catalog::register_template))
        .route("/v1/templates/{id}", get(catalog::template).delete(catalog::delete_template))
        .route("/v1/volumes", post(volumes::create).get(volumes::list))
        .route("/v1/volumes/{id}", get(volumes::get).patch(volumes::update).delete(volumes::delete))
        .route("/v1/volumes/{id}/{action}", post(volumes::action))
        .route("/v1/volumes/{id}/snapshots", post(volumes::create_snapshot).get(volumes::list_snapshots))
        .route(
            "/v1/volumes/{id}/snapshots/{snapshot_id}",
            get(volumes::get_snapshot).patch(volumes::update_snapshot).delete(volumes::delete_snapshot),
        )
        .route("/v1/snapshots", get(groups::list_snapshots))
        .route("/v1/snapshots/{id}", get(groups::get_snapshot).delete(groups::delete_snapshot))
        .route("/v1/snapshots/{id}/promote", post(groups::promote_snapshot))
        .route("/v1/snapshots/{id}/export", get(groups::export_snapshot))
        .route("/v1/security-groups", get(groups::list_security_groups).post(groups::create_security_group))
        .route("/v1/security-groups/{id}", get(groups::get_security_group).delete(groups::delete_security_group))
        .route(
            "/v1/anti-affinity-groups",
            get(groups::list_anti_affinity_groups).post(groups::create_anti_affinity_group),
        )
        .route(
            "/v1/anti-affinity-groups/{id}",
            get(groups::get_anti_affinity_group).delete(groups::delete_anti_affinity_group),
        )
        .wrap(|router| {
            router
                .method_not_allowed_fallback(method_not_allowed)
                .layer(axum::middleware::from_fn_with_state(state, crate::middleware::idempotency))
        })
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> crate::ApiError {
    crate::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
