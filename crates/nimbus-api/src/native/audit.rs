//! `/v1/audit`: the audit log, for organization admins (their organization's) and operators (everyone's).

use axum::extract::State;
use axum::Json;
use nimbus_core::audit::{AuditEntry, AuditQuery};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::QueryParams;
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditListQuery {
    /// Only entries at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<OffsetDateTime>,
    /// Only entries before this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<OffsetDateTime>,
    /// Only requests made with this API key (its public id).
    pub key_id: Option<String>,
    /// Only requests whose path names this resource (an instance's id, a key's id...).
    pub resource: Option<String>,
    /// At most this many (1 to 1000; default 100).
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

/// One request as the audit log keeps it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// Its place in the log.
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The authenticated key's organization and project; absent when no key authenticated the request.
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub key_id: Option<String>,
    /// The key's role when it made the request.
    pub role: Option<String>,
    /// The client's address.
    pub source: Option<String>,
    pub request_id: String,
    pub method: String,
    pub path: String,
    /// The HTTP status it was answered with.
    pub status: u16,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        AuditEntryView {
            seq: e.seq,
            at: e.at,
            organization_id: e.organization_id,
            project_id: e.project_id,
            key_id: e.key_id,
            role: e.role.map(|r| r.as_str().to_string()),
            source: e.source,
            request_id: e.request_id,
            method: e.method,
            path: e.path,
            status: e.status,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntryView>,
    pub next_page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", operation_id = "list_audit", tag = "access", params(AuditListQuery),
    description = "Who did what, from where, with which key and request id: every request that changes something and every request refused for its credentials or role, oldest first. Organization admins see their organization's entries; operators everyone's, including requests no key authenticated. Entries are kept for the server's --audit-retention.",
    responses((status = 200, body = AuditList), (status = 403, body = crate::native::views::ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    QueryParams(q): QueryParams<AuditListQuery>,
) -> ApiResult<Json<AuditList>> {
    let query = AuditQuery {
        since: q.since,
        until: q.until,
        key_id: q.key_id,
        resource: q.resource,
        limit: q.limit.unwrap_or(100),
        ..Default::default()
    };
    let page = app.engine.list_audit(&ctx, query, q.page_token.as_deref()).await?;
    Ok(Json(AuditList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}
