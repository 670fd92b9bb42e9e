//! SharedCloud's error bodies, which are Django REST Framework's: `{"detail": "..."}` for request-wide
//! errors, `{"<field>": ["message", ...]}` and `{"non_field_errors": [...]}` for validation errors.

use std::collections::BTreeMap;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_core::DomainError;
use serde_json::{json, Value};

/// An error already in SharedCloud's shape.
#[derive(Debug, Clone)]
pub struct ScError {
    pub status: StatusCode,
    pub body: Value,
    /// Seconds until a throttled request may be made again, sent as `Retry-After` (as DRF does).
    pub retry_after: Option<u64>,
}

pub type ScResult<T> = Result<T, ScError>;

impl ScError {
    pub fn detail(status: StatusCode, detail: impl Into<String>) -> ScError {
        ScError { status, body: json!({ "detail": detail.into() }), retry_after: None }
    }

    pub fn not_found() -> ScError {
        ScError::detail(StatusCode::NOT_FOUND, "Not found.")
    }

    pub fn missing_credentials() -> ScError {
        ScError::detail(StatusCode::UNAUTHORIZED, "Authentication credentials were not provided.")
    }

    pub fn invalid_token() -> ScError {
        ScError::detail(StatusCode::UNAUTHORIZED, "Invalid token.")
    }

    pub fn field(field: &str, message: impl Into<String>) -> ScError {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        errors.into_error()
    }

    pub fn non_field(message: impl Into<String>) -> ScError {
        ScError::field("non_field_errors", message)
    }
}

/// Validation errors collected over a whole body, as DRF reports them all at once.
#[derive(Debug, Default)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.entry(field.to_string()).or_default().push(message.into());
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_error(self) -> ScError {
        ScError { status: StatusCode::BAD_REQUEST, body: json!(self.0), retry_after: None }
    }

    /// `Err` when anything was collected, so that nothing is written after a failed validation.
    pub fn check(self) -> ScResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

/// The SharedCloud name of a field the engine names (the engine speaks the native model).
fn sc_field(engine_field: &str) -> &str {
    match engine_field {
        "price_hourly" => "ask_price",
        "instance_type" | "gpu_model" => "gpu",
        other => other,
    }
}

impl From<DomainError> for ScError {
    fn from(e: DomainError) -> ScError {
        match e {
            DomainError::Invalid { field, message } => ScError::field(sc_field(&field), message),
            DomainError::NotFound { .. } => ScError::not_found(),
            DomainError::Unauthenticated(_) => ScError::invalid_token(),
            // DRF's throttling answer.
            DomainError::RateLimited { retry_after_secs, .. } => ScError {
                retry_after: Some(retry_after_secs),
                ..ScError::detail(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("Request was throttled. Expected available in {retry_after_secs} seconds."),
                )
            },
            DomainError::Forbidden(m) | DomainError::QuotaExceeded(m) => ScError::detail(StatusCode::FORBIDDEN, m),
            // SharedCloud documents no 409: what the instance's state or rules refuse is a bad request.
            e @ (DomainError::InvalidState { .. }
            | DomainError::Busy { .. }
            | DomainError::Conflict(_)
            | DomainError::Unsupported(_)
            | DomainError::PreconditionFailed { .. }) => ScError::non_field(e.to_string()),
            DomainError::NoCapacity(m) => ScError::detail(StatusCode::SERVICE_UNAVAILABLE, m),
            DomainError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ScError::detail(StatusCode::INTERNAL_SERVER_ERROR, "A server error occurred.")
            }
            DomainError::Unavailable(m) => {
                tracing::error!(error = %m, "unavailable");
                ScError::detail(StatusCode::SERVICE_UNAVAILABLE, format!("Service temporarily unavailable: {m}"))
            }
        }
    }
}

impl IntoResponse for ScError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // DRF's TokenAuthentication names its scheme; without it DRF would have answered 403.
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Token"));
        }
        response
    }
}

/// DRF's answer to a method a route does not take.
pub async fn method_not_allowed(method: axum::http::Method) -> ScError {
    ScError::detail(StatusCode::METHOD_NOT_ALLOWED, format!("Method \"{method}\" not allowed."))
}

/// DRF's answer to a path no route takes.
pub async fn unknown_route() -> ScError {
    ScError::not_found()
}
