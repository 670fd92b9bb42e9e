//! `/v1/whoami`, `/v1/api-keys`, `/v1/projects`, `/v1/ssh-keys`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nimbus_core::tenancy::{Quota, Role};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::instances::parse_uuid;
use super::views::*;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::AppState;

#[utoipa::path(get, path = "/v1/whoami", tag = "access", responses((status = 200, body = WhoAmIView), (status = 401, body = ErrorBody)))]
pub async fn whoami(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<WhoAmIView>> {
    let w = app.engine.whoami(&ctx).await?;
    Ok(Json(WhoAmIView {
        key_id: w.key_id,
        role: w.role.as_str().into(),
        project: ProjectRef { id: w.project.id, numeric_id: w.project.numeric_id, name: w.project.name },
        organization: OrganizationRef { id: w.organization.id, name: w.organization.name },
        zone: (&w.zone).into(),
    }))
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct PingView {
    pub ok: bool,
}

/// Checks the credentials and nothing else: the cheapest authenticated call, for scripts and benchmarks.
#[utoipa::path(get, path = "/v1/ping", tag = "access", responses((status = 200, body = PingView), (status = 401, body = ErrorBody)))]
pub async fn ping(Caller(_): Caller) -> Json<PingView> {
    Json(PingView { ok: true })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyParams {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 255, example = "web-1")]
    pub name: String,
    /// admin, member or read-only
    #[schema(pattern = "^(admin|member|read-only)$", example = "member")]
    pub role: String,
    /// Defaults to the caller's project; must be in the caller's organization.
    pub project_id: Option<Uuid>,
}

#[utoipa::path(post, path = "/v1/api-keys", tag = "access", request_body = CreateApiKeyParams,
    responses((status = 201, body = ApiKeyView, description = "The only response that shows the secret"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such project in the caller's organization")))]
pub async fn create_api_key(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateApiKeyParams>,
) -> ApiResult<(StatusCode, Json<ApiKeyView>)> {
    let role = Role::parse(&p.role).ok_or_else(|| {
        ApiError::bad_request(format!("invalid role: {:?} is not admin, member or read-only", p.role))
    })?;
    let key = app.engine.create_api_key(&ctx, &p.name, role, p.project_id).await?;
    let mut view = ApiKeyView::without_secret(&key);
    view.secret = Some(key.secret);
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/api-keys", tag = "access", responses((status = 200, body = ApiKeyList)))]
pub async fn list_api_keys(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<ApiKeyList>> {
    let keys = app.engine.list_api_keys(&ctx).await?;
    Ok(Json(ApiKeyList { items: keys.iter().map(ApiKeyView::without_secret).collect() }))
}

#[utoipa::path(delete, path = "/v1/api-keys/{key_id}", tag = "access", params(("key_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A key cannot delete itself")))]
pub async fn delete_api_key(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(key_id): Path<String>,
) -> ApiResult<StatusCode> {
    app.engine.delete_api_key(&ctx, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectParams {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 255, example = "web-1")]
    pub name: String,
}

#[utoipa::path(post, path = "/v1/projects", tag = "access", request_body = CreateProjectParams,
    responses((status = 201, body = ProjectView), (status = 403, body = ErrorBody)))]
pub async fn create_project(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateProjectParams>,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    let project = app.engine.create_project(&ctx, &p.name).await?;
    Ok((StatusCode::CREATED, Json((&project).into())))
}

#[utoipa::path(get, path = "/v1/projects", tag = "access", responses((status = 200, body = ProjectList)))]
pub async fn list_projects(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<ProjectList>> {
    let projects = app.engine.list_projects(&ctx).await?;
    Ok(Json(ProjectList { items: projects.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/projects/{id}", tag = "access", params(("id" = Uuid, Path)),
    responses((status = 200, body = ProjectView, description = "With the project's usage against its quota"), (status = 404, body = ErrorBody)))]
pub async fn get_project(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ProjectView>> {
    let id = parse_uuid("project", &id)?;
    let project = app.engine.get_project(&ctx, id).await?;
    let mut view = ProjectView::from(&project);
    view.usage = Some(app.engine.project_usage(&ctx, id).await?.into());
    Ok(Json(view))
}

#[utoipa::path(put, path = "/v1/projects/{id}/quota", tag = "access", params(("id" = Uuid, Path)), request_body = QuotaView,
    responses((status = 200, body = ProjectView), (status = 403, body = ErrorBody)))]
pub async fn set_quota(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    JsonBody(q): JsonBody<QuotaView>,
) -> ApiResult<Json<ProjectView>> {
    let quota = Quota {
        instances: q.instances,
        vcpus: q.vcpus,
        memory_mib: q.memory_mib,
        disk_gb: q.disk_gb,
        volume_gb: q.volume_gb,
    };
    let project = app.engine.set_quota(&ctx, parse_uuid("project", &id)?, quota).await?;
    Ok(Json((&project).into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSshKeyParams {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 255, example = "web-1")]
    pub name: String,
    /// An OpenSSH public key line.
    #[schema(example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop")]
    pub public_key: String,
}

#[utoipa::path(post, path = "/v1/ssh-keys", tag = "access", request_body = CreateSshKeyParams,
    responses((status = 201, body = SshKeyView), (status = 400, body = ErrorBody)))]
pub async fn create_ssh_key(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateSshKeyParams>,
) -> ApiResult<(StatusCode, Json<SshKeyView>)> {
    let key = app.engine.create_ssh_key(&ctx, &p.name, &p.public_key).await?;
    Ok((StatusCode::CREATED, Json((&key).into())))
}

#[utoipa::path(get, path = "/v1/ssh-keys", tag = "access", responses((status = 200, body = SshKeyList)))]
pub async fn list_ssh_keys(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<SshKeyList>> {
    let keys = app.engine.list_ssh_keys(&ctx).await?;
    Ok(Json(SshKeyList { items: keys.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/ssh-keys/{id}", tag = "access", params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = SshKeyView), (status = 404, body = ErrorBody)))]
pub async fn get_ssh_key(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SshKeyView>> {
    Ok(Json((&app.engine.ssh_key(&ctx, &id).await?).into()))
}

#[utoipa::path(delete, path = "/v1/ssh-keys/{id}", tag = "access", params(("id" = String, Path, description = "id or name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_ssh_key(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.engine.delete_ssh_key(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
