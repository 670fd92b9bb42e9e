//! The audit log (`GET /v1/audit`): who did what, from where, with which key and request id.
//!
//! The HTTP layer runs each request inside [`record_caller`], which notes the key that authenticated it
//! (every authentication, whatever the API family, ends in `Engine::context_for`), and then hands the
//! entry to [`Engine::audit`]. Entries are written by one background writer per server, many to a
//! transaction, so that auditing adds no commit of its own to a request; the price is that a server
//! killed with `kill -9` loses the entries of its last moments (those not yet written, at most a batch).
//! A clean stop writes them all ([`Engine::shutdown`]).

use std::sync::Mutex;
use std::time::Duration;

use nimbus_core::audit::{AuditEntry, AuditQuery};
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::Store;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{store_err, Context, Engine, Result};

/// Entries written per transaction at most.
const BATCH: usize = 512;
/// How often entries past the retention are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Who a request authenticated as, for its audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCaller {
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub key_id: String,
    pub role: Role,
}

tokio::task_local! {
    static CALLER: Mutex<Option<AuditCaller>>;
}

/// Runs a request's `handling`, and returns what it answered with the caller it authenticated as, if any.
pub async fn record_caller<F: std::future::Future>(handling: F) -> (F::Output, Option<AuditCaller>) {
    CALLER
        .scope(Mutex::new(None), async {
            let out = handling.await;
            let caller = CALLER.with(|slot| slot.lock().expect("audit caller").take());
            (out, caller)
        })
        .await
}

/// Notes the request's caller (outside a request, nothing).
pub(crate) fn note_caller(ctx: &Context) {
    let _ = CALLER.try_with(|slot| {
        *slot.lock().expect("audit caller") = Some(AuditCaller {
            organization_id: ctx.project.organization_id,
            project_id: ctx.project.id,
            key_id: ctx.key.key_id.clone(),
            role: ctx.key.role,
        })
    });
}

enum Message {
    Entry(Box<AuditEntry>),
    Flush(oneshot::Sender<()>),
}

/// The sending end of this server's audit writer.
pub(crate) struct AuditLog {
    tx: mpsc::UnboundedSender<Message>,
}

impl AuditLog {
    /// Starts the writer of `store`, keeping entries for `retention`.
    pub(crate) fn start(store: std::sync::Arc<dyn Store>, retention: Duration) -> AuditLog {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            let mut last_prune: Option<std::time::Instant> = None;
            while let Some(first) = rx.recv().await {
                let mut entries = Vec::new();
                let mut flushed = Vec::new();
                let mut next = Some(first);
                while let Some(message) = next {
                    match message {
                        Message::Entry(e) => entries.push(*e),
                        Message::Flush(done) => flushed.push(done),
                    }
                    next = if entries.len() < BATCH { rx.try_recv().ok() } else { None };
                }
                // A store that cannot take the batch now (disk full, database away) is tried again: the
                // entries are kept in order until it can.
                let mut delay = Duration::from_millis(100);
                while let Err(e) = store.append_audit(&entries).await {
                    tracing::warn!(error = %e, entries = entries.len(), "could not write the audit log; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                for done in flushed {
                    let _ = done.send(());
                }
                if last_prune.is_none_or(|at| at.elapsed() > PRUNE_EVERY) {
                    last_prune = Some(std::time::Instant::now());
                    let before = nimbus_core::now() - retention;
                    match store.prune_audit(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(pruned = n, "forgot audit entries past their retention"),
                        Err(e) => tracing::warn!(error = %e, "could not prune the audit log"),
                    }
                }
            }
        });
        AuditLog { tx }
    }

    fn send(&self, message: Message) {
        // The writer ends only with the runtime.
        let _ = self.tx.send(message);
    }

    /// Waits until every entry handed over before is written.
    pub(crate) async fn flush(&self) {
        let (done, written) = oneshot::channel();
        self.send(Message::Flush(done));
        let _ = written.await;
    }
}

/// One page of the audit log.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub next_page_token: Option<String>,
}

impl Engine {
    /// Hands an entry to the audit writer; returns at once.
    pub fn audit(&self, entry: AuditEntry) {
        self.audit.send(Message::Entry(Box::new(entry)));
    }

    /// The audit log as the caller may read it: an organization admin its organization's entries, an
    /// operator everyone's (and those of requests no key authenticated). Oldest first.
    pub async fn list_audit(
        &self,
        ctx: &Context,
        mut query: AuditQuery,
        page_token: Option<&str>,
    ) -> Result<AuditPage> {
        ctx.require(Role::OrgAdmin)?;
        if ctx.role() < Role::Operator {
            query.organization_id = Some(ctx.project.organization_id);
        }
        if let Some(token) = page_token {
            let seq = token
                .parse::<i64>()
                .map_err(|_| DomainError::invalid("page_token", "not a page token of the audit log"))?;
            query.after_seq = Some(seq);
        }
        query.limit = query.limit.clamp(1, 1000);
        // This server's own entries so far are in the log before it is read.
        self.audit.flush().await;
        let items = self.store.list_audit(&query).await.map_err(store_err)?;
        let next_page_token =
            (items.len() == query.limit as usize).then(|| items.last().map(|e| e.seq.to_string())).flatten();
        Ok(AuditPage { items, next_page_token })
    }
}
