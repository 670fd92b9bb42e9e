//! Web console sessions: what a browser holds instead of an API secret once someone has signed in.
//!
//! A session is `<record id>.<random secret>`, handed to the browser in an HttpOnly cookie, plus a CSRF
//! token the page sends back in a header with every change. The store keeps one record per session with the
//! SHA-256 of both (never the values), the API key it stands for and its expiry, so a session works on any
//! server sharing the database and survives restarts, and nothing of it lives in one process's memory.
//! Every use re-reads the key: deleting the key ends every session opened with it. Signing out deletes the
//! record; expired records are swept when the project opens its next session.

use std::time::Duration;

use nimbus_core::operation::Actor;
use nimbus_core::DomainError;
use nimbus_store::{Record, Write, WriteSet};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::{random_token, sha256_hex};
use crate::{store_err, Context, Engine, Result};

pub(crate) const WEB_SESSION: &str = "web_session";

/// How long a session lasts after sign-in: a working day, after which the browser signs in again.
pub const WEB_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A session just opened: both values are shown to the browser once and never stored.
#[derive(Debug, Clone)]
pub struct WebSession {
    pub token: String,
    pub csrf_token: String,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    key_id: String,
    secret_sha256: String,
    csrf_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

fn signed_out(why: &str) -> DomainError {
    DomainError::Unauthenticated(format!("{why}: sign in again"))
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Which requests must prove they come from the console's own page.
pub enum CsrfCheck<'a> {
    /// Reads: the SameSite cookie alone is enough.
    NotNeeded,
    /// Changes: the token the page sent in its header (absent when it sent none).
    Given(Option<&'a str>),
}

impl Engine {
    /// Opens a session for the caller's API key.
    pub async fn open_web_session(&self, ctx: &Context) -> Result<WebSession> {
        let id = Uuid::new_v4();
        let secret = random_token(32);
        let csrf_token = random_token(32);
        let now = nimbus_core::now();
        let record = SessionRecord {
            key_id: ctx.key.key_id.clone(),
            secret_sha256: sha256_hex(&secret),
            csrf_sha256: sha256_hex(&csrf_token),
            expires_at: now + WEB_SESSION_LIFETIME,
        };
        let mut set = WriteSet::new();
        for old in self.store.list_records(WEB_SESSION, Some(ctx.project.id)).await.map_err(store_err)? {
            if old.decode::<SessionRecord>().map(|s| s.expires_at <= now).unwrap_or(true) {
                set.push(Write::DeleteRecord { kind: WEB_SESSION.into(), id: old.id, expected_generation: None });
            }
        }
        set.push(Write::InsertRecord(Record::new(WEB_SESSION, id, Some(ctx.project.id), "", &record)));
        self.store.apply(set).await.map_err(store_err)?;
        Ok(WebSession { token: format!("{}.{secret}", id.simple()), csrf_token, expires_at: record.expires_at })
    }

    /// The context of the key a session stands for, if the session is live, its key still exists and, for
    /// a change, the CSRF token matches the session's.
    pub async fn authenticate_web_session(&self, token: &str, csrf: CsrfCheck<'_>, actor: Actor) -> Result<Context> {
        let (id, secret) = token.split_once('.').ok_or_else(|| signed_out("invalid session"))?;
        let id = Uuid::try_parse(id).map_err(|_| signed_out("invalid session"))?;
        let (session, _) = self
            .record_of::<SessionRecord>(WEB_SESSION, id)
            .await?
            .ok_or_else(|| signed_out("this session has ended"))?;
        if !same(&session.secret_sha256, &sha256_hex(secret)) {
            return Err(signed_out("invalid session"));
        }
        if session.expires_at <= OffsetDateTime::now_utc() {
            return Err(signed_out("this session has expired"));
        }
        if let CsrfCheck::Given(given) = csrf {
            let matches = given.is_some_and(|g| same(&session.csrf_sha256, &sha256_hex(g)));
            if !matches {
                return Err(DomainError::Forbidden(
                    "missing or wrong X-CSRF-Token header: changes from the web console must carry the token \
                     it was given at sign-in"
                        .into(),
                ));
            }
        }
        let key = self
            .store
            .get_api_key(&session.key_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| signed_out("the API key of this session was deleted"))?;
        self.context_for_key(key, actor).await
    }

    /// Ends a session (an unknown or malformed one is already ended).
    pub async fn close_web_session(&self, token: &str) -> Result<()> {
        let Some(id) = token.split_once('.').and_then(|(id, _)| Uuid::try_parse(id).ok()) else { return Ok(()) };
        let Some((session, _)) = self.record_of::<SessionRecord>(WEB_SESSION, id).await? else { return Ok(()) };
        // Only the holder of the secret may end it, so a guessed id cannot sign someone else out.
        if !same(&session.secret_sha256, &sha256_hex(token.split_once('.').map_or("", |(_, s)| s))) {
            return Ok(());
        }
        self.delete(WEB_SESSION, id).await
    }
}
