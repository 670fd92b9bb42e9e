//! Django REST Framework's error bodies, which ONET and SharedCloud both answer with: `{"detail": "..."}` for
//! request-wide errors and `{"<field>": ["message", ...]}` (`non_field_errors` for the body as a whole) for
//! validation errors, all of a body's at once. What differs between the two is a [`DrfDialect`]: the token
//! scheme, the words of a refused token, the names of fields, and how a refusal by the rules is worded.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_core::DomainError;
use serde_json::{json, Value};

/// Declares a DRF provider's marker type `$dialect` (to implement [`DrfDialect`] on) and its error, result
/// and `FieldErrors` types.
macro_rules! drf_provider {
    ($dialect:ident, $error:ident, $result:ident) => {
        #[doc = concat!("What ", stringify!($dialect), " says where DRF's providers differ.")]
        pub struct $dialect;

        pub type $error = crate::dialects::common::drf::DrfError<$dialect>;
        pub type $result<T> = Result<T, $error>;
        pub type FieldErrors = crate::dialects::common::drf::FieldErrors<$dialect>;
    };
}
pub(crate) use drf_provider;

/// What one DRF provider says its own way.
pub trait DrfDialect: Sized {
    /// The scheme named in a 401's `WWW-Authenticate` (without it DRF would have answered 403).
    const AUTH_SCHEME: &'static str;
    /// The `detail` of a 401 for a token no key has.
    const INVALID_TOKEN: &'static str;
    /// The provider's name of a field the engine names (the engine speaks the native model).
    fn field_name(engine_field: &str) -> String;
    /// A request that the instance's state or the rules refuse: neither provider documents a 409, so a 400.
    fn refusal(message: String) -> DrfError<Self>;
    /// A missing resource of `kind` (the engine's word).
    fn not_found(_kind: &str) -> DrfError<Self> {
        DrfError::not_found()
    }
}

/// An error already in the provider's shape.
pub struct DrfError<D> {
    pub status: StatusCode,
    pub body: Value,
    /// Seconds until a throttled request may be made again, sent as `Retry-After` (as DRF does).
    pub retry_after: Option<u64>,
    dialect: PhantomData<D>,
}

impl<D> std::fmt::Debug for DrfError<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrfError").field("status", &self.status).field("body", &self.body).finish()
    }
}

impl<D> DrfError<D> {
    pub fn new(status: StatusCode, body: Value) -> DrfError<D> {
        DrfError { status, body, retry_after: None, dialect: PhantomData }
    }

    pub fn detail(status: StatusCode, detail: impl Into<String>) -> DrfError<D> {
        DrfError::new(status, json!({ "detail": detail.into() }))
    }

    pub fn not_found() -> DrfError<D> {
        DrfError::detail(StatusCode::NOT_FOUND, "Not found.")
    }

    pub fn missing_credentials() -> DrfError<D> {
        DrfError::detail(StatusCode::UNAUTHORIZED, "Authentication credentials were not provided.")
    }

    /// One field's validation error.
    pub fn field(field: &str, message: impl Into<String>) -> DrfError<D> {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        errors.into_error()
    }

    pub fn non_field(message: impl Into<String>) -> DrfError<D> {
        DrfError::field("non_field_errors", message)
    }
}

impl<D: DrfDialect> DrfError<D> {
    pub fn invalid_token() -> DrfError<D> {
        DrfError::detail(StatusCode::UNAUTHORIZED, D::INVALID_TOKEN)
    }
}

/// Validation errors collected over a whole body, as DRF reports them all at once.
pub struct FieldErrors<D>(BTreeMap<String, Vec<String>>, PhantomData<D>);

impl<D> Default for FieldErrors<D> {
    fn default() -> Self {
        FieldErrors(BTreeMap::new(), PhantomData)
    }
}

impl<D> FieldErrors<D> {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.entry(field.to_string()).or_default().push(message.into());
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_error(self) -> DrfError<D> {
        DrfError::new(StatusCode::BAD_REQUEST, json!(self.0))
    }

    /// `Err` when anything was collected, so that nothing is written after a failed validation.
    pub fn check(self) -> Result<(), DrfError<D>> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

impl<D: DrfDialect> From<DomainError> for DrfError<D> {
    fn from(e: DomainError) -> DrfError<D> {
        match e {
            DomainError::Invalid { field, message } => DrfError::field(&D::field_name(&field), message),
            DomainError::NotFound { kind, .. } => D::not_found(kind),
            DomainError::Unauthenticated(_) => DrfError::invalid_token(),
            DomainError::RateLimited { retry_after_secs, .. } => DrfError {
                retry_after: Some(retry_after_secs),
                ..DrfError::detail(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("Request was throttled. Expected available in {retry_after_secs} seconds."),
                )
            },
            DomainError::Forbidden(m) | DomainError::QuotaExceeded(m) => DrfError::detail(StatusCode::FORBIDDEN, m),
            e @ (DomainError::InvalidState { .. }
            | DomainError::Busy { .. }
            | DomainError::Conflict(_)
            | DomainError::Unsupported(_)
            | DomainError::PreconditionFailed { .. }) => D::refusal(e.to_string()),
            DomainError::NoCapacity(m) => DrfError::detail(StatusCode::SERVICE_UNAVAILABLE, m),
            DomainError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                DrfError::detail(StatusCode::INTERNAL_SERVER_ERROR, "A server error occurred.")
            }
            DomainError::Unavailable(m) => {
                tracing::error!(error = %m, "unavailable");
                DrfError::detail(StatusCode::SERVICE_UNAVAILABLE, format!("Service temporarily unavailable: {m}"))
            }
        }
    }
}

impl<D: DrfDialect> IntoResponse for DrfError<D> {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(D::AUTH_SCHEME));
        }
        response
    }
}

impl<D: DrfDialect> super::CredentialErrors for DrfError<D> {
    fn missing_credentials() -> DrfError<D> {
        DrfError::missing_credentials()
    }
    fn invalid_credentials() -> DrfError<D> {
        DrfError::invalid_token()
    }
}

/// DRF's answer to a method a route does not take (each route's fallback).
pub async fn method_not_allowed<D>(method: axum::http::Method) -> DrfError<D> {
    DrfError::detail(StatusCode::METHOD_NOT_ALLOWED, format!("Method \"{method}\" not allowed."))
}

/// DRF's answer to a path no route takes.
pub async fn unknown_route<D>() -> DrfError<D> {
    DrfError::not_found()
}
