//! The native API's OpenAPI document, generated from the handlers' annotations. A copy is checked in as
//! `docs/openapi.json`; a test fails when the two drift (regenerate with `nimbus openapi > docs/openapi.json`).

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::native::{access, catalog, groups, instances, operations, views};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("The API key's secret")).build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Nimbus", description = "The native API of a Nimbus compute cloud. Every mutating lifecycle call returns an operation to wait on.", license(name = "Apache-2.0")),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        instances::create, instances::list, instances::get, instances::update, instances::batch_update,
        instances::delete, instances::action, instances::password, instances::console, instances::console_ticket,
        instances::metrics, instances::guest,
        operations::get, operations::list, operations::events,
        access::whoami, access::ping, access::create_api_key, access::list_api_keys, access::delete_api_key,
        access::create_project, access::list_projects, access::get_project, access::set_quota,
        access::create_ssh_key, access::list_ssh_keys, access::get_ssh_key, access::delete_ssh_key,
        catalog::zones, catalog::host, catalog::instance_types, catalog::templates, catalog::template,
        catalog::register_template, catalog::delete_template,
        groups::list_snapshots, groups::get_snapshot, groups::delete_snapshot, groups::promote_snapshot,
        groups::export_snapshot,
        groups::create_security_group, groups::list_security_groups, groups::get_security_group, groups::delete_security_group,
        groups::create_anti_affinity_group, groups::list_anti_affinity_groups, groups::get_anti_affinity_group,
        groups::delete_anti_affinity_group,
    ),
    components(schemas(
        views::ErrorBody, views::ErrorDetail,
        instances::ScaleParams, instances::ResizeDiskParams, instances::CreateSnapshotParams,
        instances::RevertSnapshotParams, instances::ResetParams,
    )),
)]
pub struct ApiDoc;

/// The document as served and as checked in: pretty JSON with a trailing newline.
pub fn document_json() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

pub async fn serve() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document_json()).into_response()
}
