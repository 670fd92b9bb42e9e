//! Authentication for the native API: `Authorization: Bearer <secret>`, or the web console's session
//! cookie (`ui::session`, which also checks its CSRF header on changes).

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use nimbus_core::operation::Actor;
use nimbus_core::DomainError;
use nimbus_engine::Context;

use crate::error::{current_request_id, ApiError};
use crate::AppState;

/// Who sent the request, as the audit log records it.
pub fn actor_of(parts: &Parts) -> Actor {
    let source = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|ci| ci.0.ip().to_string());
    Actor { key_id: None, request_id: Some(current_request_id()), source }
}

/// The secret of `Authorization: <scheme> <secret>`, for any scheme a dialect names.
pub fn credential<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, secret) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| secret.trim()).filter(|s| !s.is_empty())
}

/// An authenticated caller of the native API.
pub struct Caller(pub Context);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if credential(&parts.headers, "Bearer").is_none() {
            if let Some(session) = crate::ui::session::cookie(&parts.headers, crate::ui::session::SESSION_COOKIE) {
                return Ok(Caller(crate::ui::session::authenticate(parts, state, session).await?));
            }
        }
        let secret = credential(&parts.headers, "Bearer").ok_or_else(|| {
            ApiError::from(DomainError::Unauthenticated(
                "missing credentials: send 'Authorization: Bearer <secret>'".into(),
            ))
        })?;
        let ctx = state.engine.authenticate_secret(secret, actor_of(parts)).await?;
        Ok(Caller(ctx))
    }
}

/// A caller of the console stream: an API key as a bearer token, or a console ticket (`?ticket=`) that
/// the handler redeems for the instance of its path, for clients that cannot send headers.
pub enum ConsoleCaller {
    Key(Box<Context>),
    Ticket { token: String, actor: Actor },
}

impl FromRequestParts<AppState> for ConsoleCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "ticket") {
            Some((_, token)) => Ok(ConsoleCaller::Ticket { token: token.into_owned(), actor: actor_of(parts) }),
            None => Ok(ConsoleCaller::Key(Box::new(Caller::from_request_parts(parts, state).await?.0))),
        }
    }
}

/// The address a request came from (the peer of its connection), for limits on unauthenticated attempts.
/// `None` when the server was not given connection info (in-process tests). A proxy in front makes every
/// request come from the proxy: limits then apply to it as a whole.
pub struct SourceAddress(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for SourceAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SourceAddress(parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|ci| ci.0.ip().to_string())))
    }
}
