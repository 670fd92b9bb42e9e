//! The change counter behind [`crate::Store::changes`]: a `watch` channel whose value moves after every
//! committed write of this process and, on PostgreSQL, after every `pg_notify` on [`CHANNEL`] by any
//! process on the same database.
//!
//! The counter says only "something may have changed": waiters re-read what they wait for. So a
//! notification may be spurious or doubled (this process hears its own), but never lost for long: when the
//! listening connection drops, the counter moves anyway, since anything could have happened meanwhile.
//! A second counter, [`Changes::revocations`], moves only when credentials may have been revoked (an API key,
//! a project or an organization deleted): here at once after the commit, elsewhere when the notification
//! carrying [`REVOKE`] arrives. Caches of authenticated keys drop everything when it moves.
//! A third, [`Changes::work`], moves only when an operation may have become claimable (one was recorded,
//! or a lease given back): here after the commit, elsewhere when the notification carrying [`WORK`]
//! arrives. Idle workers wait on it alone: woken by every commit, each found nothing to claim most times,
//! a write transaction for nothing.
//!
//! The listener task lives no longer than the store: dropping [`Changes`] aborts it, and it holds only a
//! weak reference to the counter.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::{StoreError, StoreResult};

/// The channel every server LISTENs on and every write set NOTIFYs.
pub(crate) const CHANNEL: &str = "nimbus_changes";

/// The payload of the notification a revocation sends.
pub(crate) const REVOKE: &str = "revoke";

/// The payload of the notification a write that recorded claimable work sends.
pub(crate) const WORK: &str = "work";

/// How long the listener waits before connecting again after the server refused it.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub(crate) struct Changes {
    counter: Arc<watch::Sender<u64>>,
    revocations: Arc<watch::Sender<u64>>,
    work: Arc<watch::Sender<u64>>,
    listener: Option<tokio::task::AbortHandle>,
}

impl Changes {
    /// Moved by this process's writes only: SQLite's case, where a second process on the same file (which
    /// `BEGIN IMMEDIATE` keeps correct) is noticed only when waiters re-read on their own timeouts.
    pub(crate) fn local() -> Changes {
        Changes {
            counter: Arc::new(watch::channel(0).0),
            revocations: Arc::new(watch::channel(0).0),
            work: Arc::new(watch::channel(0).0),
            listener: None,
        }
    }

    /// Also moved by every other process writing to the PostgreSQL database at `url`. Listening starts
    /// before this returns, so a write committed by another process after `open` is never missed.
    pub(crate) async fn listening(url: &str) -> StoreResult<Changes> {
        let counter = Arc::new(watch::channel(0).0);
        let revocations = Arc::new(watch::channel(0).0);
        let work = Arc::new(watch::channel(0).0);
        let mut listener = PgListener::connect(url)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting the change listener: {e}")))?;
        listener.listen(CHANNEL).await.map_err(|e| StoreError::Backend(format!("listening on {CHANNEL}: {e}")))?;
        let heard = Heard {
            counter: Arc::downgrade(&counter),
            revocations: Arc::downgrade(&revocations),
            work: Arc::downgrade(&work),
        };
        let task = tokio::spawn(listen(listener, heard));
        Ok(Changes { counter, revocations, work, listener: Some(task.abort_handle()) })
    }

    /// What moves the counters from elsewhere (the group committer), without the listener.
    pub(crate) fn bumper(&self) -> Bumper {
        Bumper { counter: self.counter.clone(), revocations: self.revocations.clone(), work: self.work.clone() }
    }

    pub(crate) fn bump(&self) {
        bump(&self.counter);
    }

    /// Tells idle workers (after a commit that recorded claimable work).
    pub(crate) fn bump_work(&self) {
        bump(&self.work);
    }

    pub(crate) fn work(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.counter.subscribe()
    }

    pub(crate) fn bump_revocations(&self) {
        bump(&self.revocations);
    }

    pub(crate) fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }
}

/// A handle on [`Changes`]' counters, moved after commits made away from the store's own methods.
#[derive(Clone)]
pub(crate) struct Bumper {
    counter: Arc<watch::Sender<u64>>,
    revocations: Arc<watch::Sender<u64>>,
    work: Arc<watch::Sender<u64>>,
}

impl Bumper {
    pub(crate) fn bump(&self) {
        bump(&self.counter);
    }

    pub(crate) fn bump_revocations(&self) {
        bump(&self.revocations);
    }

    pub(crate) fn bump_work(&self) {
        bump(&self.work);
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        if let Some(task) = &self.listener {
            task.abort();
        }
    }
}

fn bump(counter: &watch::Sender<u64>) {
    // send_modify, not send: it updates the value even while nobody is subscribed.
    counter.send_modify(|n| *n = n.wrapping_add(1));
}

/// The counters the listener moves, held weakly so that it ends with the store.
struct Heard {
    counter: Weak<watch::Sender<u64>>,
    revocations: Weak<watch::Sender<u64>>,
    work: Weak<watch::Sender<u64>>,
}

async fn listen(mut listener: PgListener, heard: Heard) {
    loop {
        let message = listener.try_recv().await;
        let (Some(counter), Some(revocations), Some(work)) =
            (heard.counter.upgrade(), heard.revocations.upgrade(), heard.work.upgrade())
        else {
            return;
        };
        match message {
            Ok(Some(first)) => {
                // One bump for a burst: drain what is already buffered.
                let (mut revoked, mut new_work) = (first.payload() == REVOKE, first.payload() == WORK);
                while let Some(next) = listener.next_buffered() {
                    revoked |= next.payload() == REVOKE;
                    new_work |= next.payload() == WORK;
                }
                if revoked {
                    bump(&revocations);
                }
                if new_work {
                    bump(&work);
                }
            }
            // The connection dropped and was made again: notifications in between are lost, so wake
            // everyone to re-read, and forget every cached credential.
            Ok(None) => {
                tracing::warn!("change listener reconnected");
                bump(&revocations);
                bump(&work);
            }
            Err(e) => {
                tracing::warn!(error = %e, "change listener lost its connection; retrying");
                bump(&counter);
                bump(&revocations);
                bump(&work);
                drop((counter, revocations, work));
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        }
        bump(&counter);
    }
}
