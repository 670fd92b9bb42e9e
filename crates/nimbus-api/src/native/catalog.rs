//! `/v1/zones`, `/v1/instance-types`, `/v1/templates`, `/v1/host`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nimbus_engine::catalog::NewTemplate;
use serde::Deserialize;
use utoipa::ToSchema;

use super::views::*;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::AppState;

#[utoipa::path(get, path = "/v1/zones", operation_id = "list_zones", tag = "catalog", responses((status = 200, body = ZoneList)))]
pub async fn zones(State(app): State<AppState>, Caller(_): Caller) -> ApiResult<Json<ZoneList>> {
    let zones = app.engine.list_zones().await?;
    Ok(Json(ZoneList { items: zones.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/host", operation_id = "get_host", tag = "catalog", responses((status = 200, body = HostView)))]
pub async fn host(State(app): State<AppState>, Caller(_): Caller) -> ApiResult<Json<HostView>> {
    let h = app.engine.host_info().await;
    let unknown = app.engine.unknown_host_instances().await?;
    Ok(Json(HostView {
        name: h.name,
        driver: h.driver,
        accelerator: h.accelerator,
        vcpus: h.vcpus,
        memory_mib: h.memory_mib,
        disk_gb: h.disk_gb,
        unknown_instances: unknown
            .into_iter()
            .map(|u| UnknownHostInstanceView {
                id: u.id,
                host_state: u.host_state.map(|s| {
                    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
                }),
                found_at: u.found_at,
            })
            .collect(),
    }))
}

/// Destroys, on purpose, an instance the host runs that no record knows (see `GET /v1/host`): its
/// processes and files are gone for good. Admin only.
#[utoipa::path(delete, path = "/v1/host/unknown-instances/{id}", operation_id = "remove_unknown_host_instance", tag = "catalog", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_unknown_instance(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = super::instances::parse_uuid("unknown host instance", &id)?;
    app.engine.remove_unknown_host_instance(&ctx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/instance-types", operation_id = "list_instance_types", tag = "catalog", responses((status = 200, body = InstanceTypeList)))]
pub async fn instance_types(State(app): State<AppState>, Caller(_): Caller) -> ApiResult<Json<InstanceTypeList>> {
    let types = app.engine.list_instance_types().await?;
    Ok(Json(InstanceTypeList { items: types.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/templates", operation_id = "list_templates", tag = "catalog", responses((status = 200, body = TemplateList)))]
pub async fn templates(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<TemplateList>> {
    let templates = app.engine.list_templates(&ctx).await?;
    Ok(Json(TemplateList { items: templates.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/templates/{id}", operation_id = "get_template", tag = "catalog", params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = TemplateView), (status = 404, body = ErrorBody)))]
pub async fn template(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TemplateView>> {
    Ok(Json((&app.engine.template(&ctx, &id).await?).into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterTemplateParams {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 255, example = "web-1")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub os_name: String,
    #[serde(default)]
    pub os_version: String,
    /// Registers a directory of the server's host holding a template as `guest/` builds them (admins).
    pub source: Option<String>,
    /// Imports a disk image (qcow2 or raw) downloaded from this http(s) URL: answers 202 with the operation.
    pub url: Option<String>,
    /// Imports a disk image (qcow2 or raw) copied from this absolute path on the server's host: 202.
    pub path: Option<String>,
    /// Of an imported image: `bios` (default) or `uefi`.
    pub boot_mode: Option<String>,
    pub min_disk_gb: Option<u64>,
    #[serde(default)]
    pub password_enabled: bool,
    #[serde(default)]
    pub ssh_key_enabled: bool,
    pub default_user: Option<String>,
    /// Public templates (every project sees them) need an admin key.
    #[serde(default)]
    pub public: bool,
    pub checksum: Option<String>,
}

/// Imports a disk image as a template (`url` or `path`: 202 and an operation, whose result names the
/// template once the image is in and checked), or registers a template directory (`source`: 201).
#[utoipa::path(post, path = "/v1/templates", tag = "catalog", request_body = RegisterTemplateParams,
    responses((status = 201, body = TemplateView), (status = 202, body = OperationView), (status = 400, body = ErrorBody)))]
pub async fn register_template(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<RegisterTemplateParams>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    if let Some(source) = p.url.clone().or(p.path.clone()) {
        if p.url.is_some() && p.path.is_some() || p.source.is_some() {
            return Err(nimbus_core::DomainError::invalid("url", "give one of url, path or source").into());
        }
        let uefi = match p.boot_mode.as_deref() {
            None | Some("bios") | Some("legacy") => false,
            Some("uefi") => true,
            Some(other) => {
                return Err(nimbus_core::DomainError::invalid("boot_mode", format!("{other:?}: bios or uefi")).into())
            }
        };
        let op = app
            .engine
            .import_template(
                &ctx,
                nimbus_engine::ImportTemplate {
                    name: p.name,
                    description: p.description,
                    source,
                    checksum: p.checksum,
                    uefi,
                    default_user: p.default_user,
                    os_name: p.os_name,
                    os_version: p.os_version,
                    public: p.public,
                },
            )
            .await?;
        return Ok(super::instances::accepted(&op));
    }
    let Some(source) = p.source else {
        return Err(
            nimbus_core::DomainError::invalid("url", "give the image's url or path (or a template source)").into()
        );
    };
    let t = app
        .engine
        .register_template(
            &ctx,
            NewTemplate {
                name: p.name,
                description: p.description,
                os_name: p.os_name,
                os_version: p.os_version,
                source,
                min_disk_gb: p.min_disk_gb,
                password_enabled: p.password_enabled,
                ssh_key_enabled: p.ssh_key_enabled,
                default_user: p.default_user,
                public: p.public,
                checksum: p.checksum,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(TemplateView::from(&t))).into_response())
}

#[utoipa::path(delete, path = "/v1/templates/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_template(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.engine.delete_template(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
