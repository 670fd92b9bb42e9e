//! The Exoscale v2 dialect (seed 004): compute instances and what they reference under `/v2/...`
//! (singular resource names: `/v2/instance`, `/v2/operation/{id}`), EXO2-HMAC-SHA256 request signatures,
//! kebab-case bodies, operations for every change, `{"message"}` errors. Notes:
//! `shared/dialects/exoscale.md`; the official OpenAPI document ships in the `exoscale` PyPI package.
//!
//! Exoscale puts actions in the last path segment (`/v2/instance/{id}:start`), which a router cannot split,
//! so those routes capture the whole segment and the handlers split it at the first `:`.

use axum::routing::{delete, get, post};

use crate::routes::Routes;
use crate::AppState;

pub mod auth;
pub mod block_storage;
pub mod errors;
pub mod handlers;
pub mod networks;
pub mod resources;
pub mod signature;
pub mod views;

use errors::method_not_allowed as mna;
use handlers as h;
use networks as n;
use resources as r;

/// Whether a path is under this dialect's prefix (SF Compute's `/v2/...` paths are taken first, by
/// [`super::unknown_route`]).
pub fn owns(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

pub fn router(_state: AppState) -> Routes {
    Routes::new()
        .route("/v2/zone", get(h::list_zones).fallback(mna))
        .route("/v2/operation/{id}", get(h::get_operation).fallback(mna))
        .route("/v2/instance", get(h::list).post(h::create).fallback(mna))
        .route(
            "/v2/instance/{segment}",
            get(h::get_segment).put(h::put_segment).post(h::post_segment).delete(h::delete).fallback(mna),
        )
        .route("/v2/instance/{id}/{field}", delete(h::reset_field).fallback(mna))
        .route("/v2/console/{id}", get(h::console_url).fallback(mna))
        .route(
            "/v2/reverse-dns/instance/{id}",
            get(h::get_reverse_dns).post(h::set_reverse_dns).delete(h::delete_reverse_dns).fallback(mna),
        )
        .route(
            "/v2/reverse-dns/elastic-ip/{id}",
            get(n::get_elastic_ip_reverse_dns)
                .post(n::set_elastic_ip_reverse_dns)
                .delete(n::delete_elastic_ip_reverse_dns)
                .fallback(mna),
        )
        .route("/v2/deploy-target", get(r::list_deploy_targets).fallback(mna))
        .route("/v2/deploy-target/{id}", get(r::get_deploy_target).fallback(mna))
        .route("/v2/instance-type", get(r::list_instance_types).fallback(mna))
        .route("/v2/instance-type/{id}", get(r::get_instance_type).fallback(mna))
        .route("/v2/template", get(r::list_templates).fallback(mna))
        .route("/v2/template/{id}", get(r::get_template).fallback(mna))
        .route("/v2/snapshot", get(r::list_snapshots).fallback(mna))
        .route(
            "/v2/snapshot/{id}",
            get(r::get_snapshot).post(r::post_snapshot_segment).delete(r::delete_snapshot).fallback(mna),
        )
        .route("/v2/block-storage", get(block_storage::list).post(block_storage::create).fallback(mna))
        .route(
            "/v2/block-storage/{segment}",
            get(block_storage::get)
                .put(block_storage::put_segment)
                .post(block_storage::post_segment)
                .delete(block_storage::delete)
                .fallback(mna),
        )
        .route("/v2/block-storage-snapshot", get(block_storage::list_snapshots).fallback(mna))
        .route(
            "/v2/block-storage-snapshot/{id}",
            get(block_storage::get_snapshot)
                .put(block_storage::update_snapshot)
                .delete(block_storage::delete_snapshot)
                .fallback(mna),
        )
        .route("/v2/ssh-key", get(r::list_ssh_keys).post(r::register_ssh_key).fallback(mna))
        .route("/v2/ssh-key/{name}", get(r::get_ssh_key).delete(r::delete_ssh_key).fallback(mna))
        .route("/v2/security-group", get(r::list_security_groups).post(r::create_security_group).fallback(mna))
        .route(
            "/v2/security-group/{id}",
            get(r::get_security_group)
                .put(r::put_security_group_segment)
                .delete(r::delete_security_group)
                .fallback(mna),
        )
        .route("/v2/security-group/{id}/rules", post(r::add_security_group_rule).fallback(mna))
        .route("/v2/security-group/{id}/rules/{rule_id}", delete(r::delete_security_group_rule).fallback(mna))
        .route("/v2/private-network", get(n::list_private_networks).post(n::create_private_network).fallback(mna))
        .route(
            "/v2/private-network/{segment}",
            get(n::get_private_network).put(n::put_private_network).delete(n::delete_private_network).fallback(mna),
        )
        .route("/v2/elastic-ip", get(n::list_elastic_ips).post(n::create_elastic_ip).fallback(mna))
        .route(
            "/v2/elastic-ip/{segment}",
            get(n::get_elastic_ip).put(n::put_elastic_ip).delete(n::delete_elastic_ip).fallback(mna),
        )
        .route(
            "/v2/anti-affinity-group",
            get(r::list_anti_affinity_groups).post(r::create_anti_affinity_group).fallback(mna),
        )
        .route(
            "/v2/anti-affinity-group/{id}",
            get(r::get_anti_affinity_group).delete(r::delete_anti_affinity_group).fallback(mna),
        )
}
