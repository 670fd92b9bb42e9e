//! The native API's OpenAPI document, generated from the handlers' annotations. A copy is checked in as
//! `docs/openapi.json`; a test fails when the two drift (regenerate with `nimbus openapi > docs/openapi.json`).
//!
//! Besides each handler's own responses, [`StandardResponses`] documents what every operation can answer
//! by construction (401 without credentials, 404 for an id in the path, 400 for a bad query or body, 403
//! for a role that may not write, 503 when the store cannot serve, the `Idempotency-Key` header and its
//! answers on POSTs), and [`Links`] declares which operation's answer feeds which other's parameters, so
//! that generated clients and stateful fuzzers can follow them. `scripts/fuzz-api.sh` runs schemathesis
//! against the document served by a real server and fails on any answer it does not describe.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::native::{access, addresses, audit, catalog, groups, hosts, instances, operations, views, volumes};

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

/// The answers every operation can give by construction, added where its own annotation does not
/// already describe them (a handler's own description of a status wins).
struct StandardResponses;

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses.responses.entry(status.to_string()).or_insert_with(|| error_response(description));
}

fn has_query(op: &Operation) -> bool {
    op.parameters.iter().flatten().any(|p: &Parameter| p.parameter_in == ParameterIn::Query)
}

impl Modify for StandardResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let methods = [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ];
            for (method, op) in methods {
                let Some(op) = op else { continue };
                add(op, "401", "Missing or invalid credentials");
                add(
                    op,
                    "503",
                    "The store cannot serve now (its disk is full or read-only, or it cannot be reached); nothing \
                     was changed: retry after `Retry-After` seconds",
                );
                if path.contains('{') {
                    add(op, "404", "No such resource in the caller's project");
                }
                let body = op.request_body.as_ref().is_some_and(|b: &RequestBody| !b.content.is_empty());
                if has_query(op) || body || method == "post" {
                    add(op, "400", "The request is malformed or a field is invalid; the message names it");
                }
                if body || method == "post" {
                    add(op, "413", "The body is larger than 1 MiB");
                    add(op, "415", "The body is not JSON");
                }
                if method != "get" {
                    add(op, "403", "The API key's role may not do this");
                }
                if method == "post" {
                    let key = ParameterBuilder::new()
                        .name("Idempotency-Key")
                        .parameter_in(ParameterIn::Header)
                        .required(Required::False)
                        .description(Some(
                            "Makes retries safe: the first request with this key (per API key) applies at most \
                             once, and repeats are answered with its answer (1 to 255 characters)",
                        ))
                        .schema(Some(
                            utoipa::openapi::ObjectBuilder::new()
                                .schema_type(utoipa::openapi::Type::String)
                                .min_length(Some(1))
                                .max_length(Some(255)),
                        ))
                        .build();
                    op.parameters.get_or_insert_with(Vec::new).push(key);
                    add(
                        op,
                        "409",
                        "A conflict: the resource's state, or a request with this Idempotency-Key still running",
                    );
                    add(op, "422", "This Idempotency-Key was used with a different request");
                }
            }
        }
    }
}

/// Which answer feeds which operation: (path, method, status) of the answer, and the links from it, each
/// `(name, operationId, [(parameter, runtime expression)])`.
struct Links;

type LinkSpec = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

const LINKS: &[(&str, &str, &str, &[LinkSpec])] = &[
    (
        "/v1/instances",
        "post",
        "202",
        &[
            ("GetOperation", "get_operation", &[("id", "$response.body#/id")]),
            ("GetInstance", "get_instance", &[("id", "$response.body#/target/id")]),
            ("ActOnInstance", "instance_action", &[("id", "$response.body#/target/id")]),
            ("UpdateInstance", "update_instance", &[("id", "$response.body#/target/id")]),
            ("DeleteInstance", "delete_instance", &[("id", "$response.body#/target/id")]),
            ("ListOperationsOfInstance", "list_operations", &[("target", "$response.body#/target/id")]),
        ],
    ),
    (
        "/v1/instances",
        "get",
        "200",
        &[
            ("GetFirstInstance", "get_instance", &[("id", "$response.body#/items/0/id")]),
            ("ActOnFirstInstance", "instance_action", &[("id", "$response.body#/items/0/id")]),
            ("GetFirstInstancePassword", "get_instance_password", &[("id", "$response.body#/items/0/id")]),
            ("GetFirstInstanceConsole", "get_instance_console", &[("id", "$response.body#/items/0/id")]),
            ("GetFirstInstanceMetrics", "get_instance_metrics", &[("id", "$response.body#/items/0/id")]),
            ("TicketForFirstInstance", "create_console_ticket", &[("id", "$response.body#/items/0/id")]),
        ],
    ),
    (
        "/v1/instances/{id}",
        "get",
        "200",
        &[
            ("ActOnInstance", "instance_action", &[("id", "$response.body#/id")]),
            ("UpdateInstance", "update_instance", &[("id", "$response.body#/id")]),
            ("DeleteInstance", "delete_instance", &[("id", "$response.body#/id")]),
            ("GetPassword", "get_instance_password", &[("id", "$response.body#/id")]),
            ("GetConsole", "get_instance_console", &[("id", "$response.body#/id")]),
            ("GetMetrics", "get_instance_metrics", &[("id", "$response.body#/id")]),
            ("CreateConsoleTicket", "create_console_ticket", &[("id", "$response.body#/id")]),
            ("ListSnapshotsOfInstance", "list_snapshots", &[("instance_id", "$response.body#/id")]),
        ],
    ),
    (
        "/v1/instances/{id}/{action}",
        "post",
        "202",
        &[("GetOperation", "get_operation", &[("id", "$response.body#/id")])],
    ),
    ("/v1/instances/{id}", "delete", "202", &[("GetOperation", "get_operation", &[("id", "$response.body#/id")])]),
    (
        "/v1/operations",
        "get",
        "200",
        &[("GetFirstOperation", "get_operation", &[("id", "$response.body#/items/0/id")])],
    ),
    (
        "/v1/snapshots",
        "get",
        "200",
        &[
            ("GetFirstSnapshot", "get_snapshot", &[("id", "$response.body#/items/0/id")]),
            ("DeleteFirstSnapshot", "delete_snapshot", &[("id", "$response.body#/items/0/id")]),
        ],
    ),
    (
        "/v1/ssh-keys",
        "post",
        "201",
        &[
            ("GetSshKey", "get_ssh_key", &[("id", "$response.body#/id")]),
            ("DeleteSshKey", "delete_ssh_key", &[("id", "$response.body#/id")]),
        ],
    ),
    (
        "/v1/templates",
        "post",
        "201",
        &[
            ("GetTemplate", "get_template", &[("id", "$response.body#/id")]),
            ("DeleteTemplate", "delete_template", &[("id", "$response.body#/id")]),
        ],
    ),
    (
        "/v1/security-groups",
        "post",
        "201",
        &[
            ("GetSecurityGroup", "get_security_group", &[("id", "$response.body#/id")]),
            ("DeleteSecurityGroup", "delete_security_group", &[("id", "$response.body#/id")]),
        ],
    ),
    (
        "/v1/anti-affinity-groups",
        "post",
        "201",
        &[
            ("GetAntiAffinityGroup", "get_anti_affinity_group", &[("id", "$response.body#/id")]),
            ("DeleteAntiAffinityGroup", "delete_anti_affinity_group", &[("id", "$response.body#/id")]),
        ],
    ),
    (
        "/v1/projects",
        "post",
        "201",
        &[
            ("GetProject", "get_project", &[("id", "$response.body#/id")]),
            ("SetQuota", "set_quota", &[("id", "$response.body#/id")]),
        ],
    ),
    ("/v1/api-keys", "post", "201", &[("DeleteApiKey", "delete_api_key", &[("key_id", "$response.body#/key_id")])]),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, method, status, links) in LINKS {
            let item = openapi.paths.paths.get_mut(*path).unwrap_or_else(|| panic!("no path {path}"));
            let op = match *method {
                "get" => item.get.as_mut(),
                "post" => item.post.as_mut(),
                "delete" => item.delete.as_mut(),
                _ => None,
            };
            let op = op.unwrap_or_else(|| panic!("no {method} {path}"));
            let Some(RefOr::T(response)) = op.responses.responses.get_mut(*status) else {
                panic!("no {status} answer of {method} {path}")
            };
            for (name, operation_id, params) in *links {
                let link = params
                    .iter()
                    .fold(LinkBuilder::new().operation_id(*operation_id), |l, (p, v)| l.parameter(*p, *v))
                    .build();
                response.links.insert(name.to_string(), RefOr::T(link));
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Nimbus", description = "The native API of a Nimbus compute cloud. Every mutating lifecycle call returns an operation to wait on.", license(name = "Apache-2.0")),
    modifiers(&BearerAuth, &StandardResponses, &Links),
    security(("bearer" = [])),
    paths(
        instances::create, instances::list, instances::get, instances::update, instances::batch_update,
        instances::delete, instances::action, instances::password, instances::console, instances::console_ticket,
        instances::metrics, instances::guest,
        operations::get, operations::list, operations::events,
        access::whoami, access::ping, access::create_api_key, access::list_api_keys, access::delete_api_key,
        access::create_project, access::list_projects, access::get_project, access::set_quota,
        audit::list,
        access::create_ssh_key, access::list_ssh_keys, access::get_ssh_key, access::delete_ssh_key,
        addresses::create, addresses::list, addresses::get, addresses::delete,
        catalog::zones, catalog::host, catalog::remove_unknown_instance, catalog::instance_types, catalog::templates, catalog::template,
        catalog::register_template, catalog::delete_template,
        groups::list_snapshots, groups::get_snapshot, groups::delete_snapshot, groups::promote_snapshot,
        groups::export_snapshot,
        groups::create_security_group, groups::list_security_groups, groups::get_security_group, groups::delete_security_group,
        groups::create_anti_affinity_group, groups::list_anti_affinity_groups, groups::get_anti_affinity_group,
        groups::delete_anti_affinity_group,
        hosts::list, hosts::get, hosts::action, hosts::create_token, hosts::list_tokens, hosts::revoke_token,
        volumes::create, volumes::list, volumes::get, volumes::update, volumes::delete, volumes::action,
        volumes::create_snapshot, volumes::list_snapshots, volumes::get_snapshot, volumes::update_snapshot,
        volumes::delete_snapshot,
    ),
    components(schemas(
        views::ErrorBody, views::ErrorDetail,
        instances::ScaleParams, instances::ResizeDiskParams, instances::CreateSnapshotParams,
        instances::RevertSnapshotParams, instances::ResetParams,
        volumes::AttachVolumeParams, volumes::ResizeVolumeParams, volumes::RevertVolumeParams,
    )),
)]
pub struct ApiDoc;

/// The document as served and as checked in: pretty JSON with a trailing newline.
pub fn document_json() -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    spell_links(&mut doc);
    let mut s = serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

/// utoipa 5 writes a link's fields in snake case (`operation_id`); OpenAPI spells them in camel case
/// (`operationId`), and clients that follow links look for those.
fn spell_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else { return };
    let responses = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
        .flat_map(|r| r.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else { continue };
        for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
            for (snake, camel) in
                [("operation_id", "operationId"), ("operation_ref", "operationRef"), ("request_body", "requestBody")]
            {
                if let Some(v) = link.remove(snake) {
                    link.insert(camel.to_string(), v);
                }
            }
        }
    }
}

pub async fn serve() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document_json()).into_response()
}
