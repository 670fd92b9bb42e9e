//! The Gcore Cloud dialect (seed 003): instances under `/cloud/v1/instances/{project_id}/{region_id}` (create
//! and actions under `/cloud/v2/...`), flavors, images, tasks, security groups and server groups, networks
//! and subnets (the core's private networks, bookkeeping only) and instance interfaces on them, floating IPs
//! (the core's elastic IPs), reserved fixed IPs (the core's reserved addresses of the instance network),
//! `Authorization: APIKey <secret>`, Gcore's error body. The integer project id is the key's project's
//! `numeric_id`, the region id the zone's. One file per area; `common.rs` has what they all share.
//! Notes: `shared/dialects/gcore.md`; the real `gcore` Python SDK is the test client.

use axum::routing::{get, patch, post};

use crate::routes::Routes;
use crate::AppState;

mod account;
mod actions;
mod catalog;
mod common;
mod create;
pub mod errors;
mod floating_ips;
mod instances;
mod interfaces;
mod metrics;
mod networks;
mod reserved_fixed_ips;
mod security_groups;
mod server_groups;
mod tasks;
pub mod views;
mod volumes;

const V1: &str = "/cloud/v1/instances/{project_id}/{region_id}";
const SG_V1: &str = "/cloud/v1/securitygroups/{project_id}/{region_id}";
const SG_V2: &str = "/cloud/v2/security_groups/{project_id}/{region_id}";
const SERVER_GROUPS: &str = "/cloud/v1/servergroups/{project_id}/{region_id}";
const NETWORKS: &str = "/cloud/v1/networks/{project_id}/{region_id}";
const SUBNETS: &str = "/cloud/v1/subnets/{project_id}/{region_id}";
const FLOATING_IPS: &str = "/cloud/v1/floatingips/{project_id}/{region_id}";
const RESERVED_FIXED_IPS: &str = "/cloud/v1/reserved_fixed_ips/{project_id}/{region_id}";

/// Whether a path is under this dialect's prefix.
pub fn owns(path: &str) -> bool {
    path.starts_with("/cloud/")
}

pub fn router(_state: AppState) -> Routes {
    use errors::method_not_allowed as other;
    let one = |p: &str| format!("{V1}/{{instance_id}}{p}");
    Routes::new()
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
        .route(&one("/attach_interface"), post(interfaces::attach).fallback(other))
        .route(&one("/detach_interface"), post(interfaces::detach).fallback(other))
        .route(NETWORKS, get(networks::list_networks).post(networks::create_network).fallback(other))
        .route(
            &format!("{NETWORKS}/{{network_id}}"),
            get(networks::get_network).delete(networks::delete_network).fallback(other),
        )
        .route(SUBNETS, get(networks::list_subnets).post(networks::create_subnet).fallback(other))
        .route(
            &format!("{SUBNETS}/{{subnet_id}}"),
            get(networks::get_subnet).delete(networks::delete_subnet).fallback(other),
        )
        .route(FLOATING_IPS, get(floating_ips::list).post(floating_ips::create).fallback(other))
        .route(
            &format!("{FLOATING_IPS}/{{floating_ip_id}}"),
            get(floating_ips::get).delete(floating_ips::delete).fallback(other),
        )
        .route(&format!("{FLOATING_IPS}/{{floating_ip_id}}/assign"), post(floating_ips::assign).fallback(other))
        .route(&format!("{FLOATING_IPS}/{{floating_ip_id}}/unassign"), post(floating_ips::unassign).fallback(other))
        .route(RESERVED_FIXED_IPS, get(reserved_fixed_ips::list).post(reserved_fixed_ips::create).fallback(other))
        .route(
            &format!("{RESERVED_FIXED_IPS}/{{port_id}}"),
            get(reserved_fixed_ips::get)
                .patch(reserved_fixed_ips::update)
                .delete(reserved_fixed_ips::delete)
                .fallback(other),
        )
        .route(
            &format!("{RESERVED_FIXED_IPS}/{{port_id}}/connected_devices"),
            get(reserved_fixed_ips::connected)
                .put(reserved_fixed_ips::connect)
                .patch(reserved_fixed_ips::connect)
                .fallback(other),
        )
        .route(
            &format!("{RESERVED_FIXED_IPS}/{{port_id}}/available_devices"),
            get(reserved_fixed_ips::available).fallback(other),
        )
        .route(&one("/metrics"), post(metrics::metrics).fallback(other))
        .route(&one("/get_console"), get(metrics::console).fallback(other))
        .route("/cloud/v1/flavors/{project_id}/{region_id}", get(catalog::flavors).fallback(other))
        .route("/cloud/v1/images/{project_id}/{region_id}", get(catalog::images).fallback(other))
        .route("/cloud/v1/images/{project_id}/{region_id}/{image_id}", get(catalog::image).fallback(other))
        .route(&one("/put_into_servergroup"), post(server_groups::put_into).fallback(other))
        .route(&one("/remove_from_servergroup"), post(server_groups::remove_from).fallback(other))
        .route(SG_V1, get(security_groups::list).fallback(other))
        .route(
            &format!("{SG_V1}/{{group_id}}"),
            get(security_groups::get).delete(security_groups::delete).fallback(other),
        )
        .route(SG_V2, post(security_groups::create).fallback(other))
        .route(&format!("{SG_V2}/{{group_id}}"), patch(security_groups::update).fallback(other))
        .route(SERVER_GROUPS, get(server_groups::list).post(server_groups::create).fallback(other))
        .route(
            &format!("{SERVER_GROUPS}/{{group_id}}"),
            get(server_groups::get).delete(server_groups::delete).fallback(other),
        )
        .route(
            "/cloud/v1/ssh_keys/{project_id}",
            get(account::list_ssh_keys).post(account::create_ssh_key).fallback(other),
        )
        .route(
            "/cloud/v1/ssh_keys/{project_id}/{ssh_key_id}",
            get(account::get_ssh_key).delete(account::delete_ssh_key).fallback(other),
        )
        .route("/cloud/v1/projects", get(account::list_projects).fallback(other))
        .route("/cloud/v1/projects/{project_id}", get(account::get_project).fallback(other))
        .route("/cloud/v1/regions", get(account::list_regions).fallback(other))
        .route("/cloud/v1/regions/{region_id}", get(account::get_region).fallback(other))
        .route("/cloud/v1/volumes/{project_id}/{region_id}", get(volumes::list).post(volumes::create).fallback(other))
        .route(
            "/cloud/v1/volumes/{project_id}/{region_id}/{volume_id}",
            get(volumes::get).patch(volumes::update).delete(volumes::delete).fallback(other),
        )
        .route("/cloud/v2/volumes/{project_id}/{region_id}/{volume_id}/attach", post(volumes::attach).fallback(other))
        .route("/cloud/v2/volumes/{project_id}/{region_id}/{volume_id}/detach", post(volumes::detach).fallback(other))
        .route("/cloud/v1/volumes/{project_id}/{region_id}/{volume_id}/extend", post(volumes::extend).fallback(other))
        .route("/cloud/v1/tasks", get(tasks::list).fallback(other))
        .route("/cloud/v1/tasks/{task_id}", get(tasks::get).fallback(other))
}
