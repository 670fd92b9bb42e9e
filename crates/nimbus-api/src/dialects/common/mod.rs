//! What several dialects share, so that each states only what is its provider's own.
//!
//! - [`caller`]: the caller of a request that sends `Authorization: <scheme> <secret>` with a Nimbus API key's
//!   secret (ONET and SF Compute `Bearer`, Gcore `APIKey`, SharedCloud `Token`), each failure in the
//!   dialect's own words ([`CredentialErrors`]). Exoscale signs requests instead (`exoscale/signature.rs`).
//! - [`drf`]: Django REST Framework's error bodies, ONET's and SharedCloud's.

pub mod drf;

use axum::http::request::Parts;
use nimbus_core::DomainError;
use nimbus_engine::Context;

use crate::auth::{actor_of, credential};
use crate::AppState;

/// Declares `$name(pub Context)`, the extractor of the caller of a request authenticated by
/// `Authorization: $scheme <secret>` (the scheme in any case), refused with `$error`'s [`CredentialErrors`].
macro_rules! key_caller {
    ($name:ident, $error:ty, $scheme:literal) => {
        #[doc = concat!("A caller authenticated by `Authorization: ", $scheme, " <secret>`.")]
        pub struct $name(pub nimbus_engine::Context);

        impl axum::extract::FromRequestParts<crate::AppState> for $name {
            type Rejection = $error;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                state: &crate::AppState,
            ) -> Result<Self, Self::Rejection> {
                crate::dialects::common::caller(parts, state, $scheme).await.map($name)
            }
        }
    };
}
pub(crate) use key_caller;

/// How a dialect answers a request without credentials and one whose credentials no key has.
pub trait CredentialErrors: From<DomainError> {
    fn missing_credentials() -> Self;
    fn invalid_credentials() -> Self;
}

/// The caller of a request authenticated by `Authorization: <scheme> <secret>` (the scheme in any case).
pub async fn caller<E: CredentialErrors>(parts: &Parts, state: &AppState, scheme: &str) -> Result<Context, E> {
    let secret = credential(&parts.headers, scheme).ok_or_else(E::missing_credentials)?;
    match state.engine.authenticate_secret(secret, actor_of(parts)).await {
        Ok(ctx) => Ok(ctx),
        Err(DomainError::Unauthenticated(_)) => Err(E::invalid_credentials()),
        Err(e) => Err(e.into()),
    }
}
