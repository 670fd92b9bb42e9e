//! `/v1/snapshots`, `/v1/security-groups`, `/v1/anti-affinity-groups`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use nimbus_core::resources::SecurityGroupRule;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::instances::{accepted, parse_uuid};
use super::views::*;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{JsonBody, QueryParams};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListSnapshotsQuery {
    pub instance_id: Option<Uuid>,
}

#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", params(ListSnapshotsQuery), responses((status = 200, body = SnapshotList)))]
pub async fn list_snapshots(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    QueryParams(q): QueryParams<ListSnapshotsQuery>,
) -> ApiResult<Json<SnapshotList>> {
    let snapshots = app.engine.list_snapshots(&ctx, q.instance_id).await?;
    Ok(Json(SnapshotList { items: snapshots.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/snapshots/{id}", tag = "snapshots", params(("id" = Uuid, Path)),
    responses((status = 200, body = SnapshotView), (status = 404, body = ErrorBody)))]
pub async fn get_snapshot(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SnapshotView>> {
    Ok(Json((&app.engine.snapshot(&ctx, parse_uuid("snapshot", &id)?).await?).into()))
}

#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "snapshots", params(("id" = Uuid, Path)),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody)))]
pub async fn delete_snapshot(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let op = app.engine.delete_snapshot(&ctx, parse_uuid("snapshot", &id)?).await?;
    Ok(accepted(&op))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteSnapshotParams {
    /// The new template's name.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The user cloud-init gives SSH keys to; default: the snapshot's template's.
    pub default_user: Option<String>,
    /// Every project sees it (needs an admin key); default: the caller's project only.
    #[serde(default)]
    pub public: bool,
}

/// Makes a template of the snapshot: a standalone copy of its disk that boots like the template the
/// snapshot's instance was made from. The operation's result names the template.
#[utoipa::path(post, path = "/v1/snapshots/{id}/promote", tag = "snapshots", params(("id" = Uuid, Path)),
    request_body = PromoteSnapshotParams,
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn promote_snapshot(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    JsonBody(p): JsonBody<PromoteSnapshotParams>,
) -> ApiResult<Response> {
    let request = nimbus_engine::PromoteRequest {
        name: p.name,
        description: p.description,
        default_user: p.default_user,
        public: p.public,
    };
    let op = app.engine.promote_snapshot(&ctx, parse_uuid("snapshot", &id)?, request).await?;
    Ok(accepted(&op))
}

/// The snapshot as a standalone qcow2 image (its template's disk and its own data, flattened).
#[utoipa::path(get, path = "/v1/snapshots/{id}/export", tag = "snapshots", params(("id" = Uuid, Path)),
    responses((status = 200, description = "the qcow2 image", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody)))]
pub async fn export_snapshot(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    use axum::response::IntoResponse;
    use tokio::io::AsyncReadExt;
    let id = parse_uuid("snapshot", &id)?;
    let (path, size) = app.engine.export_snapshot(&ctx, id).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| nimbus_core::DomainError::Internal(format!("{}: {e}", path.display())))?;
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let disposition = format!("attachment; filename=\"snapshot-{id}.qcow2\"");
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (axum::http::header::CONTENT_LENGTH, size.to_string()),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleParams {
    /// ingress or egress
    pub flow_direction: String,
    pub protocol: String,
    pub start_port: Option<u16>,
    pub end_port: Option<u16>,
    pub network: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecurityGroupParams {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 255, example = "web-1")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rules: Vec<RuleParams>,
}

#[utoipa::path(post, path = "/v1/security-groups", tag = "groups", request_body = CreateSecurityGroupParams,
    responses((status = 201, body = SecurityGroupView), (status = 400, body = ErrorBody)))]
pub async fn create_security_group(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateSecurityGroupParams>,
) -> ApiResult<(StatusCode, Json<SecurityGroupView>)> {
    let rules = p
        .rules
        .into_iter()
        .map(|r| SecurityGroupRule {
            id: nimbus_core::new_id(),
            flow_direction: r.flow_direction,
            protocol: r.protocol,
            start_port: r.start_port,
            end_port: r.end_port,
            network: r.network,
            description: r.description,
            ..Default::default()
        })
        .collect();
    let group = app.engine.create_security_group(&ctx, &p.name, &p.description, rules).await?;
    Ok((StatusCode::CREATED, Json((&group).into())))
}

#[utoipa::path(get, path = "/v1/security-groups", tag = "groups", responses((status = 200, body = SecurityGroupList)))]
pub async fn list_security_groups(
    State(app): State<AppState>,
    Caller(ctx): Caller,
) -> ApiResult<Json<SecurityGroupList>> {
    let groups = app.engine.list_security_groups(&ctx).await?;
    Ok(Json(SecurityGroupList { items: groups.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/security-groups/{id}", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 200, body = SecurityGroupView), (status = 404, body = ErrorBody)))]
pub async fn get_security_group(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SecurityGroupView>> {
    Ok(Json((&app.engine.security_group(&ctx, parse_uuid("security group", &id)?).await?).into()))
}

#[utoipa::path(delete, path = "/v1/security-groups/{id}", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn delete_security_group(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.engine.delete_security_group(&ctx, parse_uuid("security group", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAntiAffinityGroupParams {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 255, example = "web-1")]
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[utoipa::path(post, path = "/v1/anti-affinity-groups", tag = "groups", request_body = CreateAntiAffinityGroupParams,
    responses((status = 201, body = AntiAffinityGroupView), (status = 400, body = ErrorBody)))]
pub async fn create_anti_affinity_group(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateAntiAffinityGroupParams>,
) -> ApiResult<(StatusCode, Json<AntiAffinityGroupView>)> {
    let group = app.engine.create_anti_affinity_group(&ctx, &p.name, &p.description).await?;
    Ok((StatusCode::CREATED, Json((&group).into())))
}

#[utoipa::path(get, path = "/v1/anti-affinity-groups", tag = "groups", responses((status = 200, body = AntiAffinityGroupList)))]
pub async fn list_anti_affinity_groups(
    State(app): State<AppState>,
    Caller(ctx): Caller,
) -> ApiResult<Json<AntiAffinityGroupList>> {
    let groups = app.engine.list_anti_affinity_groups(&ctx).await?;
    Ok(Json(AntiAffinityGroupList { items: groups.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/anti-affinity-groups/{id}", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 200, body = AntiAffinityGroupView), (status = 404, body = ErrorBody)))]
pub async fn get_anti_affinity_group(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AntiAffinityGroupView>> {
    Ok(Json((&app.engine.anti_affinity_group(&ctx, parse_uuid("anti-affinity group", &id)?).await?).into()))
}

#[utoipa::path(delete, path = "/v1/anti-affinity-groups/{id}", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn delete_anti_affinity_group(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.engine.delete_anti_affinity_group(&ctx, parse_uuid("anti-affinity group", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
