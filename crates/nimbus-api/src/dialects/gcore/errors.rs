//! Gcore's error body: `{"exception_class", "message", "request_id"}`, plus `invalid_fields` on validation
//! errors. Status codes follow the notes: 400 for bad input and refused rules, 401, 403, 404, and 409 only
//! where retrying may succeed (the SDK retries 409), every other refusal carrying `x-should-retry: false`.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_core::DomainError;
use serde_json::json;

use crate::error::current_request_id;

#[derive(Debug, Clone)]
pub struct GcoreError {
    pub status: StatusCode,
    pub class: &'static str,
    pub message: String,
    pub invalid_fields: Option<BTreeMap<String, Vec<String>>>,
    /// Whether the SDK may retry (it retries 409 and 5xx unless told otherwise).
    pub retry: bool,
}

pub type GcoreResult<T> = Result<T, GcoreError>;

impl GcoreError {
    pub fn new(status: StatusCode, class: &'static str, message: impl Into<String>) -> GcoreError {
        GcoreError { status, class, message: message.into(), invalid_fields: None, retry: false }
    }

    /// The same, one the SDK may retry.
    fn retryable(self) -> GcoreError {
        GcoreError { retry: true, ..self }
    }

    pub fn not_found(message: impl Into<String>) -> GcoreError {
        GcoreError::new(StatusCode::NOT_FOUND, "NotFoundError", message)
    }

    pub fn bad_request(message: impl Into<String>) -> GcoreError {
        GcoreError::new(StatusCode::BAD_REQUEST, "BadRequestError", message)
    }

    /// One field's validation error.
    pub fn field(field: &str, message: impl Into<String>) -> GcoreError {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        errors.into_error()
    }

    pub fn missing_credentials() -> GcoreError {
        GcoreError::new(StatusCode::UNAUTHORIZED, "NotAuthenticated", "Authentication credentials were not provided.")
    }

    pub fn invalid_key() -> GcoreError {
        GcoreError::new(StatusCode::UNAUTHORIZED, "AuthenticationFailed", "Invalid API key.")
    }
}

/// Validation errors collected over a whole body, reported together.
#[derive(Debug, Default)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.entry(field.to_string()).or_default().push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_error(self) -> GcoreError {
        let message = self.0.iter().map(|(f, m)| format!("{f}: {}", m.join(" "))).collect::<Vec<_>>().join("; ");
        GcoreError {
            status: StatusCode::BAD_REQUEST,
            class: "ValidationError",
            message: format!("Validation error: {message}"),
            invalid_fields: Some(self.0),
            retry: false,
        }
    }

    /// `Err` when anything was collected, so that nothing is written after a failed validation.
    pub fn check(self) -> GcoreResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

/// The Gcore name of a field the engine names (the engine speaks the native model).
fn gcore_field(engine_field: &str) -> String {
    let (head, rest) = engine_field.split_once('.').map_or((engine_field, None), |(h, r)| (h, Some(r)));
    let head = match head {
        "instance_type" => "flavor",
        "template" => "volumes",
        "disk_size_gb" => "volumes",
        "labels" => "tags",
        "ssh_keys" => "ssh_key_name",
        "anti_affinity_groups" => "servergroup_id",
        other => other,
    };
    rest.map_or(head.to_string(), |r| format!("{head}.{r}"))
}

fn capitalized(kind: &str) -> String {
    let mut c = kind.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

impl From<DomainError> for GcoreError {
    fn from(e: DomainError) -> GcoreError {
        match e {
            DomainError::Invalid { field, message } => GcoreError::field(&gcore_field(&field), message),
            DomainError::NotFound { kind, id } => {
                GcoreError::not_found(format!("{} {id} could not be found", capitalized(kind)))
            }
            DomainError::Unauthenticated(_) => GcoreError::invalid_key(),
            DomainError::RateLimited { message, .. } => {
                GcoreError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
            }
            DomainError::Forbidden(m) => GcoreError::new(StatusCode::FORBIDDEN, "ForbiddenError", m),
            DomainError::QuotaExceeded(m) => {
                GcoreError::new(StatusCode::BAD_REQUEST, "QuotaLimitExceed", format!("Quota exceeded: {m}"))
            }
            // Locked by another task: the one refusal that a retry may get past.
            DomainError::Busy { instance, operation } => GcoreError::new(
                StatusCode::CONFLICT,
                "ResourceLockedError",
                format!("Instance {instance} is locked by task {operation}"),
            )
            .retryable(),
            DomainError::Conflict(m) if m.contains("concurrently") || m.contains("many writers") => {
                GcoreError::new(StatusCode::CONFLICT, "ConflictError", m).retryable()
            }
            // Nova answers 409 to an action in the wrong state; no retry can change that.
            e @ DomainError::InvalidState { .. } => {
                GcoreError::new(StatusCode::CONFLICT, "InstanceInvalidStateError", e.to_string())
            }
            e @ (DomainError::Conflict(_) | DomainError::Unsupported(_) | DomainError::PreconditionFailed { .. }) => {
                GcoreError::bad_request(e.to_string())
            }
            // Nova's word for it: no compute host qualifies.
            DomainError::NoCapacity(m) => {
                GcoreError::new(StatusCode::SERVICE_UNAVAILABLE, "NoValidHost", format!("No valid host was found. {m}"))
                    .retryable()
            }
            DomainError::Unavailable(m) => {
                tracing::error!(error = %m, "unavailable");
                let message = format!("Service unavailable: {m}");
                GcoreError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message).retryable()
            }
            DomainError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                GcoreError::new(status, "InternalServerError", "Internal server error").retryable()
            }
        }
    }
}

impl IntoResponse for GcoreError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "exception_class": self.class,
            "message": self.message,
            "request_id": current_request_id(),
        });
        if let Some(fields) = self.invalid_fields {
            body["invalid_fields"] = json!(fields);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if !self.retry {
            response.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

/// The answer to a method a route does not take.
pub async fn method_not_allowed() -> GcoreError {
    GcoreError::new(StatusCode::METHOD_NOT_ALLOWED, "HTTPError", "Method Not Allowed")
}

/// The answer to a path no route takes.
pub async fn unknown_route(uri: axum::http::Uri) -> GcoreError {
    GcoreError::not_found(format!("The requested URL {} was not found on the server", uri.path()))
}
