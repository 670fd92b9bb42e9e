//! Operations: the durable record of every mutating lifecycle action.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::state_machine::Action;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Pending,
    Running,
    Success,
    Failure,
    Timeout,
    Cancelled,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Running, Self::Success, Self::Failure, Self::Timeout, Self::Cancelled]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// Why an operation failed, in the vocabulary every dialect can map (Exoscale's reasons are the superset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Incorrect,
    Unknown,
    Unavailable,
    Forbidden,
    Busy,
    Fault,
    Partial,
    NotFound,
    Interrupted,
    Unsupported,
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Uuid,
}

/// Who asked for a change: kept with operations and events, which double as the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub key_id: Option<String>,
    pub request_id: Option<String>,
    pub source: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor { key_id: None, request_id: None, source: Some("nimbus".into()) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: Uuid,
    pub project_id: Uuid,
    pub kind: Action,
    pub state: OperationState,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub target: Target,
    /// The action's arguments (new type, disk size, snapshot id...), as the engine needs them to resume.
    pub params: serde_json::Value,
    /// What the action produced (a snapshot id, for example).
    pub result: Option<serde_json::Value>,
    /// Instance state before the action began: where `Landing::Previous` returns to.
    pub state_before: Option<crate::instance::InstanceState>,
    /// How many times a worker began it (more than one after a crash).
    pub attempts: u32,
    pub actor: Actor,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}
