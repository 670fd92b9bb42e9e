//! SF Compute's error envelope: `{"error": {"type", "message", "details"?}}`, with the type named by the status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_core::DomainError;
use serde_json::json;

/// One entry of `details`: which field, a short machine code and a sentence.
#[derive(Debug, Clone)]
pub struct Detail {
    pub field: Option<String>,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct SfError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<Detail>,
}

pub type SfResult<T> = Result<T, SfError>;

impl SfError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> SfError {
        SfError { status, message: message.into(), details: Vec::new() }
    }

    /// A 400 naming the offending field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> SfError {
        let field = field.into();
        let message = message.into();
        SfError {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid {field}: {message}"),
            details: vec![Detail { field: Some(field), code: "invalid", message }],
        }
    }

    pub fn not_found(what: impl Into<String>) -> SfError {
        SfError::new(StatusCode::NOT_FOUND, what)
    }

    pub fn unauthenticated(message: impl Into<String>) -> SfError {
        SfError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// The same failure as a batch entry's: SF answers 422 for anything an entry did wrong, and nothing was
    /// written. Authentication, permission and server failures keep their own status.
    pub fn in_batch(self) -> SfError {
        match self.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => self,
            s if s.is_server_error() => self,
            _ => SfError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("{}; no instance was changed", self.message),
                details: if self.details.is_empty() {
                    vec![Detail { field: None, code: "unprocessable", message: self.message.clone() }]
                } else {
                    self.details
                },
            },
        }
    }

    /// Prefixes the fields of the details (`data[2].` for a batch entry).
    pub fn within(mut self, prefix: &str) -> SfError {
        for d in &mut self.details {
            d.field = Some(match &d.field {
                Some(f) => format!("{prefix}.{f}"),
                None => prefix.to_string(),
            });
        }
        if self.details.is_empty() {
            self.details.push(Detail {
                field: Some(prefix.to_string()),
                code: "invalid",
                message: self.message.clone(),
            });
        }
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

/// SF's documented error type for each status it uses.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "payment_required",
        403 => "forbidden",
        404 => "not_found",
        // SF documents no 405: a method a path does not take is a request error.
        405 => "invalid_request_error",
        409 => "conflict",
        413 => "invalid_request_error",
        422 => "unprocessable_entity",
        501 => "not_implemented",
        503 => "service_unavailable",
        _ => "api_error",
    }
}

impl From<DomainError> for SfError {
    fn from(e: DomainError) -> SfError {
        // The status comes from the one shared classification; only statuses SF does not document are folded
        // into the nearest one it does.
        let (status, _) = crate::error::classify(&e);
        let status = match &e {
            DomainError::PreconditionFailed { .. } => StatusCode::CONFLICT,
            DomainError::QuotaExceeded(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DomainError::Unsupported(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => status,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "internal error");
        }
        let details = match &e {
            DomainError::Invalid { field, message } => {
                vec![Detail { field: Some(field.clone()), code: "invalid", message: message.clone() }]
            }
            _ => Vec::new(),
        };
        SfError { status, message: e.to_string(), details }
    }
}

impl From<crate::ApiError> for SfError {
    fn from(e: crate::ApiError) -> SfError {
        SfError::new(e.status, e.message)
    }
}

impl IntoResponse for SfError {
    fn into_response(self) -> Response {
        let mut error = json!({ "type": error_type(self.status), "message": self.message });
        // SF documents `details` only on 400, 409 and 422.
        if matches!(self.status.as_u16(), 400 | 409 | 422) {
            let details: Vec<_> = self
                .details
                .iter()
                .map(|d| json!({ "field": d.field, "code": d.code, "message": d.message }))
                .collect();
            error["details"] = json!(details);
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The answer to a method a route does not take.
pub async fn method_not_allowed(method: axum::http::Method) -> SfError {
    SfError::new(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} is not allowed on this path"))
}

/// The answer to a path no route takes.
pub async fn unknown_route(uri: axum::http::Uri) -> SfError {
    SfError::not_found(format!("no route {}", uri.path()))
}
