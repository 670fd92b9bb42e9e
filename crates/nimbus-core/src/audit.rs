//! The audit log: who did what, from where, with which key and request id. One entry per request that
//! changes something (any method but GET, HEAD and OPTIONS) and per request refused for its credentials
//! or its role (401, 403), whatever API family it came through.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::tenancy::Role;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the log, given by the store: entries are listed in this order.
    #[serde(default)]
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Whose: the authenticated key's organization and project. `None` for a request no key authenticated
    /// (a refused credential, a sign-in): only operators see those.
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    /// The key that made the request (its public id) and its role then.
    pub key_id: Option<String>,
    pub role: Option<Role>,
    /// The client's address, as the server's socket saw it.
    pub source: Option<String>,
    pub request_id: String,
    pub method: String,
    /// The path asked for, without its query string.
    pub path: String,
    pub status: u16,
}

/// Which entries to list: all of them are ANDed.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this organization's entries (an organization admin's view); `None`: everyone's.
    pub organization_id: Option<Uuid>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Only requests made with this key.
    pub key_id: Option<String>,
    /// Only requests whose path names this resource (an id or a name as it appears in the path).
    pub resource: Option<String>,
    /// Keyset pagination: only entries after this one.
    pub after_seq: Option<i64>,
    /// At most this many.
    pub limit: u32,
}
