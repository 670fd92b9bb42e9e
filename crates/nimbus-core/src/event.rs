//! Events: every change to an operation or instance, in order. Streamed to clients and kept as the audit log.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::operation::Actor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by the store, strictly increasing; 0 until stored.
    pub seq: i64,
    pub project_id: Uuid,
    /// `operation.created`, `operation.updated`, `instance.created`, `instance.updated`, `instance.deleted`, ...
    pub kind: String,
    pub target_id: Uuid,
    pub actor: Actor,
    /// The resource as it was after the change.
    pub data: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}
