//! Exoscale's error body, `{"message": "..."}`, with the status codes its clients tell apart: 400 for a
//! bad request or a refusal of the instance's state or rules, 403 for any authentication failure (the
//! Python SDK maps exactly 403 to `ExoscaleAPIAuthException`), 404 for unknown ids and routes, 409 while
//! another operation holds the instance, 500 for Nimbus's own faults.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_core::DomainError;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ExoError {
    pub status: StatusCode,
    pub message: String,
}

pub type ExoResult<T> = Result<T, ExoError>;

impl ExoError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ExoError {
        ExoError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> ExoError {
        ExoError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ExoError {
        ExoError::new(StatusCode::FORBIDDEN, message)
    }
    /// `what` is the resource's name as Exoscale words it ("Instance", "Snapshot"...).
    pub fn not_found(what: &str) -> ExoError {
        ExoError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

fn capitalized(kind: &str) -> String {
    let mut c = kind.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Turns engine field names (the native model's) into Exoscale's.
fn exo_field(field: &str) -> String {
    match field {
        "instance_type" => "instance-type".into(),
        "disk_size_gb" => "disk-size".into(),
        "user_data" => "user-data".into(),
        "ssh_keys" => "ssh-keys".into(),
        "security_groups" => "security-groups".into(),
        "anti_affinity_groups" => "anti-affinity-groups".into(),
        "snapshot_id" => "id".into(),
        "public_key" => "public-key".into(),
        other => other.replace('_', "-"),
    }
}

impl From<DomainError> for ExoError {
    fn from(e: DomainError) -> ExoError {
        match e {
            DomainError::Invalid { field, message } => {
                ExoError::bad_request(format!("Invalid parameter {}: {message}", exo_field(&field)))
            }
            DomainError::NotFound { kind, .. } => ExoError::not_found(&capitalized(kind)),
            // A refusal of the state machine or of the resource's rules is a bad request in Exoscale's API
            // ("Only running instances can be stopped."); a lost race or a held lock is a conflict.
            DomainError::InvalidState { .. } | DomainError::Unsupported(_) => ExoError::bad_request(capital(&e)),
            DomainError::Conflict(m) if m.contains("concurrently") || m.contains("many writers") => {
                ExoError::new(StatusCode::CONFLICT, capital_str(&m))
            }
            DomainError::Conflict(m) if m.contains("already exists") => {
                ExoError::new(StatusCode::CONFLICT, capital_str(&m))
            }
            DomainError::Conflict(m) => ExoError::bad_request(capital_str(&m)),
            DomainError::Busy { .. } | DomainError::PreconditionFailed { .. } => {
                ExoError::new(StatusCode::CONFLICT, capital(&e))
            }
            DomainError::Forbidden(m) | DomainError::QuotaExceeded(m) => ExoError::forbidden(capital_str(&m)),
            DomainError::Unauthenticated(_) => ExoError::forbidden("Invalid request signature"),
            DomainError::RateLimited { message, .. } => ExoError::new(StatusCode::TOO_MANY_REQUESTS, message),
            DomainError::NoCapacity(m) => ExoError::new(StatusCode::SERVICE_UNAVAILABLE, capital_str(&m)),
            DomainError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ExoError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
            }
            DomainError::Unavailable(m) => {
                tracing::error!(error = %m, "unavailable");
                ExoError::new(StatusCode::SERVICE_UNAVAILABLE, format!("Service unavailable: {m}"))
            }
        }
    }
}

fn capital(e: &DomainError) -> String {
    capital_str(&e.to_string())
}

fn capital_str(m: &str) -> String {
    capitalized(m)
}

impl IntoResponse for ExoError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "message": self.message }))).into_response()
    }
}

/// The answer to a method a known path does not take.
pub async fn method_not_allowed(method: axum::http::Method) -> ExoError {
    ExoError::new(StatusCode::METHOD_NOT_ALLOWED, format!("Method {method} not allowed"))
}

/// The answer to any other path under `/v2`.
pub async fn unknown_route() -> ExoError {
    ExoError::new(StatusCode::NOT_FOUND, "Not found")
}
