//! The errors of the domain. Each variant is something a user did or met; the API layers map them onto
//! status codes and each dialect's own error shape.

use crate::instance::InstanceState;

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The request itself is wrong: a field is missing, malformed or out of range.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// No such resource in the caller's project (also what another project's resource looks like).
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The action is not allowed in the instance's current state.
    #[error("cannot {action} instance in state {state}: {hint}")]
    InvalidState { action: String, state: InstanceState, hint: String },
    /// Another operation holds the instance's lock.
    #[error("instance {instance} is busy with operation {operation}")]
    Busy { instance: String, operation: String },
    /// The rules of the resource forbid the change (deletion protection, shrink, other family...).
    #[error("{0}")]
    Conflict(String),
    /// The caller's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The project's quota would be exceeded.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// `If-Match` named a version that is no longer current.
    #[error("the resource has changed since version {expected}; fetch it again")]
    PreconditionFailed { expected: String },
    /// No host can take it now (every host is full, unreachable, disabled, or excluded by an
    /// anti-affinity group): the message says which.
    #[error("no capacity: {0}")]
    NoCapacity(String),
    /// This deployment cannot do it (a driver without TPM support, for example).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Too many attempts (sign-ins, registrations) from one address or at one account: try again after
    /// `retry_after_secs`.
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: u64 },
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Something broke inside Nimbus; not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// Nimbus cannot do it now for a reason outside it that should pass (the database's disk is full or
    /// read-only, the database is unreachable): nothing was changed; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid { field: field.into(), message: message.into() }
    }
    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        DomainError::NotFound { kind, id: id.to_string() }
    }
}
