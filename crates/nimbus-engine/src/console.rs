//! Console tickets: a short-lived, single-use credential that opens one instance's interactive console
//! without the API secret, so that a URL handed to a browser or another cloud's CLI works on its own.
//!
//! A ticket is `<record id>.<random secret>`. The store keeps a record per ticket with the secret's
//! SHA-256 (never the secret), the instance, the key that minted it and the expiry, so tickets survive a
//! restart, work on any server, and cannot be forged without the secret. Redeeming one deletes the version
//! of its record that was checked (single use: of two redemptions racing on two servers, one deletes it and
//! the other finds it gone) and re-reads the minting key, so a key deleted or demoted meanwhile is honoured.
//! Expired records are swept when the project mints its next ticket.

use nimbus_core::instance::InstanceState;
use nimbus_core::operation::Actor;
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::{Record, Write, WriteSet};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::{random_token, sha256_hex};
use crate::{store_err, Context, Engine, Result};

pub(crate) const CONSOLE_TICKET: &str = "console_ticket";

/// How long a new ticket may be used to open a connection, unless `EngineConfig` says otherwise. An open
/// connection outlives it.
pub const CONSOLE_TICKET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// A minted ticket: `token` goes into the console stream's `?ticket=` and is shown only once.
#[derive(Debug, Clone)]
pub struct ConsoleTicket {
    pub token: String,
    pub instance_id: Uuid,
    pub expires_at: OffsetDateTime,
}

/// What the store keeps of a ticket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TicketRecord {
    instance_id: Uuid,
    key_id: String,
    secret_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

fn unauthenticated(why: &str) -> DomainError {
    DomainError::Unauthenticated(format!("{why} console ticket: ask for a new one"))
}

impl Engine {
    /// Mints a ticket that opens the console of the caller's running instance `id` for the next
    /// `EngineConfig::console_ticket_lifetime` (60 s by default), once.
    pub async fn console_ticket(&self, ctx: &Context, id: Uuid) -> Result<ConsoleTicket> {
        ctx.require(Role::Member)?;
        let instance = self.instance(ctx, id).await?;
        if instance.state != InstanceState::Running {
            return Err(DomainError::InvalidState {
                action: "console".into(),
                state: instance.state,
                hint: "the interactive console needs the instance running".into(),
            });
        }
        let ticket_id = Uuid::new_v4();
        let secret = random_token(32);
        let now = nimbus_core::now();
        let record = TicketRecord {
            instance_id: instance.id,
            key_id: ctx.key.key_id.clone(),
            secret_sha256: sha256_hex(&secret),
            expires_at: now + self.config.console_ticket_lifetime,
        };
        let mut set = WriteSet::new();
        for old in self.store.list_records(CONSOLE_TICKET, Some(ctx.project.id)).await.map_err(store_err)? {
            if old.decode::<TicketRecord>().map(|t| t.expires_at <= now).unwrap_or(true) {
                set.push(Write::DeleteRecord {
                    kind: CONSOLE_TICKET.into(),
                    id: old.id,
                    expected_generation: Some(old.generation),
                });
            }
        }
        set.push(Write::InsertRecord(Record::new(CONSOLE_TICKET, ticket_id, Some(ctx.project.id), "", &record)));
        self.store.apply(set).await.map_err(store_err)?;
        Ok(ConsoleTicket {
            token: format!("{}.{secret}", ticket_id.simple()),
            instance_id: instance.id,
            expires_at: record.expires_at,
        })
    }

    /// Spends a ticket on the console of instance `id` and returns the context of the key that minted it.
    /// A malformed, unknown, wrong or expired ticket is `Unauthenticated`; a ticket of another instance is
    /// `Forbidden` and stays unspent. The caller then opens the console with the context as usual.
    pub async fn redeem_console_ticket(&self, token: &str, id: Uuid, actor: Actor) -> Result<Context> {
        let (ticket_id, secret) = token.split_once('.').ok_or_else(|| unauthenticated("invalid"))?;
        let ticket_id = Uuid::try_parse(ticket_id).map_err(|_| unauthenticated("invalid"))?;
        let (ticket, record) = self
            .record_of::<TicketRecord>(CONSOLE_TICKET, ticket_id)
            .await?
            .ok_or_else(|| unauthenticated("invalid"))?;
        if !bool::from(ticket.secret_sha256.as_bytes().ct_eq(sha256_hex(secret).as_bytes())) {
            return Err(unauthenticated("invalid"));
        }
        // Spends exactly the version checked above; a redemption that lost the race finds it gone.
        let spend = || async {
            let mut set = WriteSet::new();
            set.push(Write::DeleteRecord {
                kind: CONSOLE_TICKET.into(),
                id: ticket_id,
                expected_generation: Some(record.generation),
            });
            match self.store.apply(set).await {
                Ok(()) => Ok(()),
                Err(nimbus_store::StoreError::Conflict(_)) => Err(unauthenticated("invalid")),
                Err(e) => Err(store_err(e)),
            }
        };
        if ticket.expires_at <= OffsetDateTime::now_utc() {
            spend().await?;
            return Err(unauthenticated("expired"));
        }
        if ticket.instance_id != id {
            return Err(DomainError::Forbidden(format!(
                "this console ticket opens instance {}, not {id}",
                ticket.instance_id
            )));
        }
        spend().await?;
        let key = self.store.get_api_key(&ticket.key_id).await.map_err(store_err)?.ok_or_else(|| {
            DomainError::Unauthenticated("the API key that minted this console ticket was deleted".into())
        })?;
        self.context_for_key(key, actor).await
    }
}
