//! The signed caller of an Exoscale request, and the request's body and signed query parameters.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::{header, StatusCode};
use nimbus_core::DomainError;
use nimbus_engine::Context;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::errors::{ExoError, ExoResult};
use super::signature::{self, SignatureError};
use crate::auth::actor_of;
use crate::AppState;

/// A request whose EXO2-HMAC-SHA256 signature checked out: who sent it, the raw body it signed and the
/// query parameters it signed (the only ones a handler may act on).
pub struct Signed {
    pub ctx: Context,
    /// The path's last parameter, decoded (the resource's id, with `:action` where the route has one); empty
    /// on a route without parameters.
    pub segment: String,
    pub body: Bytes,
    pub query: BTreeMap<String, String>,
}

fn refused(e: SignatureError) -> ExoError {
    ExoError::forbidden(e.message())
}

impl FromRequest<AppState> for Signed {
    type Rejection = ExoError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, state).await.ok();
        let segment = params.and_then(|p| p.iter().last().map(|(_, v)| v.to_string())).unwrap_or_default();
        let header = signature::parse_header(parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
            .map_err(refused)?;
        let body = axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await.map_err(|_| {
            ExoError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body larger than {} bytes", crate::MAX_BODY_BYTES),
            )
        })?;
        let (values, query) = signature::signed_query(parts.uri.query(), &header.signed_query_args);
        let message = signature::message(parts.method.as_str(), parts.uri.path(), &body, &values, header.expires);
        let now = nimbus_core::now().unix_timestamp();
        // Expiry first: it says nothing about keys. An unknown key and a wrong signature look the same.
        if header.expires < now {
            return Err(refused(SignatureError::Expired));
        }
        let key = match state.engine.api_key_for_signature(&header.credential).await {
            Ok(key) => key,
            Err(DomainError::Unauthenticated(_)) => return Err(refused(SignatureError::Invalid)),
            Err(e) => return Err(e.into()),
        };
        signature::verify(&header, &key.secret, &message, now).map_err(refused)?;
        let ctx = state.engine.context_for_key(key, actor_of(&parts)).await?;
        Ok(Signed { ctx, segment, body, query })
    }
}

impl Signed {
    /// The path's resource id; a malformed one is `what` not found.
    pub fn id(&self, what: &str) -> ExoResult<uuid::Uuid> {
        super::handlers::parse_id(what, &self.segment)
    }

    /// The path's resource id and the `:action` after it, if there is one.
    pub fn id_and_action(&self, what: &str) -> ExoResult<(uuid::Uuid, Option<&str>)> {
        let (id, action) = match self.segment.split_once(':') {
            Some((id, action)) => (id, Some(action)),
            None => (self.segment.as_str(), None),
        };
        Ok((super::handlers::parse_id(what, id)?, action))
    }

    /// The body as `T`. A missing or blank body is `{}`: the Python SDK sends none for `start_instance(id=…)`
    /// although the spec marks the body required.
    pub fn json<T: DeserializeOwned>(&self) -> ExoResult<T> {
        let bytes: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &self.body };
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ExoError::bad_request(format!("Invalid request body: malformed JSON: {e}")))?;
        if !value.is_object() {
            return Err(ExoError::bad_request("Invalid request body: expected a JSON object"));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                ExoError::bad_request(format!("Invalid request body: {inner}"))
            } else {
                ExoError::bad_request(format!("Invalid parameter {path}: {inner}"))
            }
        })
    }
}
