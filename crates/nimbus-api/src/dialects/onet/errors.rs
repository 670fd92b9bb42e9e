//! ONET's error bodies, which are Django REST Framework's: `{"detail": "..."}` for request-wide errors and
//! `{"<field>": ["message", ...]}` for validation errors, with 400/401/403/404 as the overview documents.

use std::collections::BTreeMap;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_core::DomainError;
use serde_json::{json, Value};

/// An error already in ONET's shape.
#[derive(Debug, Clone)]
pub struct OnetError {
    pub status: StatusCode,
    pub body: Value,
}

pub type OnetResult<T> = Result<T, OnetError>;

impl OnetError {
    pub fn detail(status: StatusCode, detail: impl Into<String>) -> OnetError {
        OnetError { status, body: json!({ "detail": detail.into() }) }
    }

    /// DRF's `NotFound` for a detail route (DRF >= 3.15 words it after the model).
    pub fn no_instance() -> OnetError {
        OnetError::detail(StatusCode::NOT_FOUND, "No Instance matches the given query.")
    }

    pub fn not_found() -> OnetError {
        OnetError::detail(StatusCode::NOT_FOUND, "Not found.")
    }

    pub fn missing_credentials() -> OnetError {
        OnetError::detail(StatusCode::UNAUTHORIZED, "Authentication credentials were not provided.")
    }

    pub fn invalid_token() -> OnetError {
        OnetError::detail(StatusCode::UNAUTHORIZED, "Given token not valid for any token type")
    }

    /// One field's validation error.
    pub fn field(field: &str, message: impl Into<String>) -> OnetError {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        errors.into_error()
    }
}

/// Validation errors collected over a whole body, as DRF reports them all at once.
#[derive(Debug, Default)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.entry(field.to_string()).or_default().push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_error(self) -> OnetError {
        OnetError { status: StatusCode::BAD_REQUEST, body: json!(self.0) }
    }

    /// `Err` when anything was collected, so that nothing is written after a failed validation.
    pub fn check(self) -> OnetResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

/// The ONET name of a field the engine names (the engine speaks the native model).
fn onet_field(engine_field: &str) -> String {
    let (head, rest) = match engine_field.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (engine_field, None),
    };
    let head = match head {
        "instance_type" => "size_id",
        "template" => "image_id",
        "labels" => "tags",
        other => other,
    };
    match rest {
        Some(r) => format!("{head}.{r}"),
        None => head.to_string(),
    }
}

impl From<DomainError> for OnetError {
    fn from(e: DomainError) -> OnetError {
        match e {
            DomainError::Invalid { field, message } => OnetError::field(&onet_field(&field), message),
            DomainError::NotFound { kind: "instance", .. } => OnetError::no_instance(),
            DomainError::NotFound { .. } => OnetError::not_found(),
            DomainError::Unauthenticated(_) => OnetError::invalid_token(),
            DomainError::RateLimited { retry_after_secs, .. } => OnetError::detail(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Request was throttled. Expected available in {retry_after_secs} seconds."),
            ),
            DomainError::Forbidden(m) | DomainError::QuotaExceeded(m) => OnetError::detail(StatusCode::FORBIDDEN, m),
            // ONET documents no 409: a request the instance's state or rules refuse is a bad request.
            e @ (DomainError::InvalidState { .. }
            | DomainError::Busy { .. }
            | DomainError::Conflict(_)
            | DomainError::Unsupported(_)
            | DomainError::PreconditionFailed { .. }) => OnetError::detail(StatusCode::BAD_REQUEST, e.to_string()),
            DomainError::NoCapacity(m) => OnetError::detail(StatusCode::SERVICE_UNAVAILABLE, m),
            DomainError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                OnetError::detail(StatusCode::INTERNAL_SERVER_ERROR, "A server error occurred.")
            }
            DomainError::Unavailable(m) => {
                tracing::error!(error = %m, "unavailable");
                OnetError::detail(StatusCode::SERVICE_UNAVAILABLE, format!("Service temporarily unavailable: {m}"))
            }
        }
    }
}

impl IntoResponse for OnetError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// DRF's answer to a method a route does not take.
pub async fn method_not_allowed(method: axum::http::Method) -> OnetError {
    OnetError::detail(StatusCode::METHOD_NOT_ALLOWED, format!("Method \"{method}\" not allowed."))
}

/// DRF's answer to a path no route takes.
pub async fn unknown_route() -> OnetError {
    OnetError::not_found()
}
