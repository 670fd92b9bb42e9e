//! The native API's error shape: `{"error": {"code", "message", "request_id"}}` with the matching status.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_core::DomainError;
use serde_json::json;

tokio::task_local! {
    /// The id of the request being served, so that any error can name it.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds until a refused attempt may be made again (429), sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

/// The status and code of each domain error; dialects use it too and only reshape the body.
pub fn classify(e: &DomainError) -> (StatusCode, &'static str) {
    match e {
        DomainError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        DomainError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        DomainError::InvalidState { .. } => (StatusCode::CONFLICT, "invalid_state"),
        DomainError::Busy { .. } => (StatusCode::CONFLICT, "busy"),
        DomainError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        DomainError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        DomainError::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota_exceeded"),
        DomainError::PreconditionFailed { .. } => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
        DomainError::Unsupported(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported"),
        DomainError::NoCapacity(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_capacity"),
        DomainError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        DomainError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        DomainError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        DomainError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> ApiError {
        let (status, code) = classify(&e);
        if status.is_server_error() {
            tracing::error!(error = %e, "internal error");
        }
        let retry_after = match &e {
            DomainError::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            _ => None,
        };
        ApiError { status, code, message: e.to_string(), retry_after }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": { "code": self.code, "message": self.message, "request_id": current_request_id() } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

pub async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {}", uri.path()))
}

pub type ApiResult<T> = Result<T, ApiError>;
