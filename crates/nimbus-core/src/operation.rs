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

fn first_version() -> u32 {
    1
}

/// The durable progress of an operation's steps (its saga): how many are done, what each produced, and,
/// once one has failed, the failure being unwound.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps completed, in order.
    pub steps_done: u32,
    /// Steps the operation has in all (0 until a worker first plans them).
    pub steps_total: u32,
    /// The name of the step under way (or the last one done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What each completed step produced, by position (a snapshot's size, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<serde_json::Value>,
    /// Set when a step failed (or the operation was given up): the completed steps are being undone, and
    /// the operation then ends with this failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwinding: Option<Failure>,
}

/// How an operation failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub state: OperationState,
    pub reason: Reason,
    pub message: String,
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
    /// The action's arguments (new type, disk size, snapshot id...), as the engine needs them to resume: the
    /// typed parameters of the operation's kind, serialized, in the shape of `params_version`.
    pub params: serde_json::Value,
    /// The version of the shape of `params` (operations written before versions existed read as 1).
    #[serde(default = "first_version")]
    pub params_version: u32,
    /// What the action produced (a snapshot id, for example).
    pub result: Option<serde_json::Value>,
    /// Instance state before the action began: where `Landing::Previous` returns to.
    pub state_before: Option<crate::instance::InstanceState>,
    /// How many times a worker began it (more than one after a crash).
    pub attempts: u32,
    /// How far its steps have come; kept durable so that a worker taking it over resumes there.
    #[serde(default)]
    pub progress: Progress,
    pub actor: Actor,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Operation {
    /// A new pending operation of `kind` on `target`, asked for by `actor`; its parameters are set by the
    /// engine's plan of that kind.
    pub fn new(
        project_id: Uuid,
        kind: Action,
        target: Target,
        state_before: Option<crate::instance::InstanceState>,
        actor: Actor,
    ) -> Operation {
        let now = crate::now();
        Operation {
            id: crate::new_id(),
            project_id,
            kind,
            state: OperationState::Pending,
            reason: None,
            message: None,
            target,
            params: serde_json::json!({}),
            params_version: 1,
            result: None,
            state_before,
            attempts: 0,
            progress: Progress::default(),
            actor,
            created_at: now,
            updated_at: now,
        }
    }

    /// Whether the operation has ended (successfully or not).
    pub fn is_final(&self) -> bool {
        self.state.is_final()
    }
}

impl Target {
    pub fn instance(id: Uuid) -> Target {
        Target { kind: "instance".into(), id }
    }
}
