//! Operation workers: claim operations from the store under a lease and run them through their kind's saga.
//!
//! Any server's workers may run any operation. A worker claims the oldest one that nobody holds (never
//! claimed, or whose holder's lease expired because that server died), marks it running and counts the
//! attempt, renews its lease while the saga runs, and records the outcome under it. A worker that loses its
//! lease (it stalled and another server took the operation over) stops at once: its writes would be refused
//! anyway. Idle workers sleep until they are handed the turn to claim, or a short poll comes round for
//! leases that expire silently.
//!
//! The turn to claim: a commit that recorded claimable work (an operation, a lease given back; heard through
//! LISTEN/NOTIFY from other servers on PostgreSQL) wakes one idle worker, not all of them, and other commits
//! (a step's progress, an outcome) wake none. A worker whose claim left more to claim hands the turn on to
//! two more; one that found nothing keeps it. So a burst of operations wakes workers as fast as claims
//! succeed, doubling each round, and a lone operation costs one claim: woken all at once, or by every
//! commit, idle workers ran claims (writes, in the writer's transaction) that found nothing, which cost
//! creations most of their throughput.
//!
//! A request's own server runs the operation it records when one of its places is free ([`Engine::lease_here`]):
//! the request's transaction holds it under this server's lease, and a task runs it once committed. That
//! spares the claim's commit and the wake-up of a worker (a create's latency). A server runs at most
//! `EngineConfig::workers` operations at once, claimed or its own: each takes a place first.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::operation::{Operation, OperationState};
use nimbus_store::{Write, WriteSet};

use crate::instances::operation_event;
use crate::sagas::{self, Abandon};
use crate::{store_err, Engine, Result};

/// Starts `EngineConfig::workers` workers. Each claims an operation, runs it to its end and claims the
/// next; idle, it sleeps until something changes. They are independent loops rather than one loop handing
/// out claims, so that their claims and writes arrive together and share commits (the store's group
/// commit) instead of queueing one commit behind another.
pub(crate) fn spawn(engine: Arc<Engine>) {
    for _ in 0..engine.config.workers.max(1) {
        let worker = engine.clone();
        let task = tokio::spawn(async move { worker.work().await });
        engine.track(task.abort_handle());
    }
    // Every commit that recorded claimable work hands the turn to claim to one idle worker (or to the next
    // one to be idle). Other commits (a step's progress, an outcome) wake nobody: a claim after each of
    // them found nothing most times, a write for nothing.
    let watcher = engine.clone();
    let task = tokio::spawn(async move {
        let mut changes = watcher.store.new_work();
        while changes.changed().await.is_ok() {
            watcher.kick.notify_one();
        }
    });
    engine.track(task.abort_handle());
}

impl Engine {
    async fn work(self: Arc<Self>) {
        let mut halted = self.halted();
        loop {
            // A place first: requests running their own operations take places too (see `lease_here`).
            let place = tokio::select! {
                place = self.places.clone().acquire_owned() => place.expect("the places are never closed"),
                _ = halted.changed() => return,
            };
            // Every claim holds the lease under a name of its own, so that a worker of this very server that
            // stalled past its lease cannot write over the one that took the operation over.
            let owner = self.lease_owner();
            match self.store.claim_and_start(&owner, self.config.lease, starting(owner.clone())).await {
                Ok(Some(claim)) => {
                    if claim.more {
                        // Two more workers try (a stored turn if none is idle yet), so a burst fans out.
                        self.kick.notify_one();
                        self.kick.notify_one();
                    }
                    self.run_claimed(claim.operation, &owner).await;
                    drop(place);
                }
                Ok(None) => {
                    drop(place);
                    tokio::select! {
                        _ = self.kick.notified() => {}
                        _ = tokio::time::sleep(self.config.poll_every) => {}
                        _ = halted.changed() => return,
                    }
                }
                Err(e) => {
                    drop(place);
                    tracing::warn!(error = %e, "could not claim an operation");
                    tokio::time::sleep(self.config.poll_every).await;
                }
            }
            if *halted.borrow() {
                return;
            }
        }
    }

    fn lease_owner(&self) -> String {
        format!("{}/{}", self.worker_id, uuid::Uuid::new_v4().simple())
    }

    /// Makes the operation that `set` records (`op`, also returned to the caller) this server's to run, when
    /// one of its places is free: the set then also holds it under a lease of this server's, running, its
    /// first attempt counted, and once the set is committed [`Engine::run_here`] runs it at once. No claim, no
    /// worker woken, one commit fewer: a request's own server is the natural one to run it. When this
    /// server dies before the end, the lease expires and any server's worker claims it as usual.
    pub(crate) fn lease_here(&self, op: &mut Operation, set: &mut WriteSet) -> Option<RunHere> {
        let place = self.places.clone().try_acquire_owned().ok()?;
        let recorded = set.writes.iter_mut().find_map(|w| match w {
            Write::InsertOperation(recorded) if recorded.id == op.id => Some(recorded),
            _ => None,
        })?;
        // Recorded as a claim would have marked it: running, its first attempt counted.
        op.state = OperationState::Running;
        op.attempts += 1;
        *recorded = op.clone();
        let owner = self.lease_owner();
        set.push(Write::LeaseOperation { id: op.id, lease_owner: owner.clone(), lease: self.config.lease });
        set.push(operation_event("operation.updated", op));
        Some(RunHere { op: op.clone(), owner, place })
    }

    /// Runs, in a task of its own, the operation [`Engine::lease_here`] made this server's, now that it is
    /// recorded.
    pub(crate) fn run_here(&self, here: RunHere) {
        let Some(engine) = self.me.get().and_then(|me| me.upgrade()) else { return };
        let RunHere { op, owner, place } = here;
        let runner = engine.clone();
        let task = tokio::spawn(async move {
            runner.run_claimed(op, &owner).await;
            drop(place);
        });
        engine.track(task.abort_handle());
    }
}

/// An operation this server runs itself: see [`Engine::lease_here`].
pub(crate) struct RunHere {
    op: Operation,
    owner: String,
    place: tokio::sync::OwnedSemaphorePermit,
}

impl Engine {
    /// Runs one claimed operation, already marked running (see [`starting`]), to its end, or until this
    /// server stops holding it.
    async fn run_claimed(self: &Arc<Self>, op: Operation, owner: &str) {
        let id = op.id;
        if op.attempts > 1 {
            tracing::info!(operation = %op.id, kind = %op.kind, attempt = op.attempts, "resuming an interrupted operation");
            self.metrics.operations_resumed.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.operations_started.fetch_add(1, Ordering::Relaxed);
        let (lost_tx, lost) = tokio::sync::oneshot::channel::<()>();
        let renewer = {
            let engine = self.clone();
            let owner = owner.to_string();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(engine.config.lease / 3).await;
                    match engine.store.renew_lease(id, &owner, engine.config.lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = lost_tx.send(());
                            return;
                        }
                        Err(e) => tracing::warn!(operation = %id, error = %e, "could not renew a lease"),
                    }
                }
            })
        };
        let mut halted = self.halted();
        let outcome = tokio::select! {
            outcome = sagas::execute(self, owner, op) => Some(outcome),
            _ = lost => Some(Err(Abandon::LeaseLost)),
            // The server is going away: stop dead, exactly as a kill would; another holder resumes.
            _ = halted.changed() => None,
        };
        renewer.abort();
        match outcome {
            None | Some(Ok(())) | Some(Err(Abandon::Crashed)) => {}
            Some(Err(Abandon::LeaseLost)) => {
                tracing::warn!(operation = %id, "another server took this operation over; stopping")
            }
            Some(Err(Abandon::Store(e))) => {
                tracing::error!(operation = %id, error = %e, "operation could not be recorded; it will be retried");
                let _ = self.store.release_lease(id, owner).await;
            }
        }
    }

    /// Counts an operation's outcome on `/metrics`.
    pub(crate) fn count_outcome(&self, op: &Operation) {
        let counter = if op.state == OperationState::Success {
            &self.metrics.operations_succeeded
        } else {
            tracing::warn!(operation = %op.id, kind = %op.kind, message = op.message.as_deref().unwrap_or(""), "operation failed");
            &self.metrics.operations_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives back, at start, the leases an earlier run of this server held when it died (a server keeps its
    /// id across restarts), so its operations resume now instead of after the leases expire.
    pub(crate) async fn release_own_leases(&self) -> Result<()> {
        let released = self.store.release_leases_of(&self.worker_id).await.map_err(store_err)?;
        if released > 0 {
            tracing::info!(operations = released, "took back the operations an earlier run of this server held");
        }
        Ok(())
    }
}

/// What a worker records on claiming an operation, in the claim's own transaction: the operation running,
/// its attempt counted, under the lease `owner` now holds.
fn starting(owner: String) -> nimbus_store::StartClaimed {
    Box::new(move |mut op: Operation| {
        op.state = OperationState::Running;
        op.attempts += 1;
        op.updated_at = nimbus_core::now();
        let mut set = WriteSet::new();
        set.push(Write::UpdateOperation { operation: op.clone(), lease_owner: owner });
        set.push(operation_event("operation.updated", &op));
        (op, set)
    })
}

/// How often idle workers look for operations whose lease expired without any write to wake them.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
