//! Group commit: the writes that arrive while a transaction commits wait, then commit together in the next
//! one, so that many requests' and workers' writes share one commit (one fsync on SQLite with
//! `synchronous=FULL`, one WAL flush on PostgreSQL).
//!
//! Each write is a [`Job`] run by one committer task per store, in a transaction holding all the jobs that
//! were waiting when it began (up to [`MAX_BATCH`]). Every job runs under a savepoint of its own: a job that
//! fails (a lost compare-and-swap, a quota refusal) is rolled back to its savepoint and answered with its
//! error, and the others go on. After the last job, the batch notifies other servers once and appends every
//! successful job's events (in job order, under the event-order lock: [`super::writes::finish_batch`]), then
//! commits. A job's caller is answered only after that commit: an `Ok` still means "on disk". If the commit
//! fails, every job of the batch fails with its error and nothing of it was written.
//!
//! Why a task of our own and not the caller's future: a caller dropped halfway (a client gone, a worker
//! halted) must not abandon the other callers' writes sharing its transaction. Why not a crate: the batching
//! is a dozen lines around this store's own transaction handling (savepoints, event order, notifications).
//!
//! The committer serializes this server's batched writes on one connection. On SQLite that costs nothing
//! (one writer at a time anyway); on PostgreSQL it trades concurrency inside one server for fewer commits,
//! and keeps two transactions of one server from deadlocking each other on rows both batches touch.

use std::any::Any;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use nimbus_core::event::Event;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::backend::Backend;
use super::notify::Bumper;
use super::read_cache::{ReadCache, Touched};
use super::{begin_lite_write, begin_write, query, writes, Conn, LiteHome, WriteTx};
use crate::{StoreError, StoreResult};

/// The most jobs one transaction carries: enough to amortize a commit, few enough that the writer lock is
/// not held for long (a job is a few statements).
const MAX_BATCH: usize = 256;

/// What a job's work gives back to the batch.
pub(crate) struct Done {
    /// The caller's answer, taken back by [`GroupCommit::run`] as the type it asked for.
    pub value: Box<dyn Any + Send>,
    /// Whether it changed anything (waiters are woken and other servers told only then).
    pub changed: bool,
    /// Whether it revoked credentials.
    pub revoked: bool,
    /// Whether it made an operation claimable (idle workers are woken only then).
    pub work: bool,
    /// What cached reads it made stale.
    pub touched: Touched,
    /// Events to append once the batch's writes are all done.
    pub events: Vec<Event>,
}

impl Done {
    /// A job's answer `value`, having changed something when `changed` (then, unless the job says more
    /// precisely, any cached read may be stale).
    pub fn new<T: Send + 'static>(value: T, changed: bool) -> Done {
        let touched = if changed { Touched::Everything } else { Touched::nothing() };
        Done { value: Box::new(value), changed, revoked: false, work: false, touched, events: Vec::new() }
    }
}

/// A job's answer, as its caller will take it back.
type Answer = StoreResult<Box<dyn Any + Send>>;

pub(crate) type JobFuture<'c> = Pin<Box<dyn Future<Output = StoreResult<Done>> + Send + 'c>>;

/// One write: statements run on the batch's connection, inside the batch's transaction.
pub(crate) type Job = Box<dyn for<'c> FnOnce(Conn<'c>) -> JobFuture<'c> + Send>;

struct Waiting {
    job: Job,
    answer: oneshot::Sender<Answer>,
}

/// The handle the store sends jobs through; the committer ends when it is dropped.
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl GroupCommit {
    /// Starts the committer. With `sqlite_file`, batches run on a blocking thread on the committer's own
    /// connection to it ([`super::lite`]); otherwise on a connection of `pool`.
    pub(crate) fn start(
        pool: AnyPool,
        backend: Backend,
        sqlite_file: Option<PathBuf>,
        sqlite_writer: Option<Arc<Mutex<()>>>,
        bumper: Bumper,
        read_cache: Option<Arc<ReadCache>>,
    ) -> GroupCommit {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Waiting>();
        let lite = sqlite_file.map(|path| (path, LiteHome::default()));
        tokio::spawn(async move {
            let committer = Arc::new(Committer { pool, backend, lite, sqlite_writer, bumper, read_cache });
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                if committer.lite.is_some() {
                    // Each statement is a plain call on this thread, the whole batch one hand-off. A batch
                    // that panics answers nobody: its callers see the committer gone, the next batch runs.
                    let (committer, runtime) = (committer.clone(), tokio::runtime::Handle::current());
                    let _ = tokio::task::spawn_blocking(move || runtime.block_on(committer.commit(batch))).await;
                } else {
                    committer.commit(batch).await;
                }
            }
        });
        GroupCommit { queue }
    }

    /// Runs `job` in the next batch and answers once that batch committed (or failed).
    pub(crate) async fn run<T: Send + 'static>(&self, job: Job) -> StoreResult<T> {
        let (answer, answered) = oneshot::channel();
        let gone = || StoreError::Unavailable("the store's committer has stopped".into());
        self.queue.send(Waiting { job, answer }).map_err(|_| gone())?;
        let value = answered.await.map_err(|_| gone())??;
        Ok(*value.downcast::<T>().expect("a job answers with the type its caller asked for"))
    }
}

struct Committer {
    pool: AnyPool,
    backend: Backend,
    /// SQLite on a file: the file, and where the committer's own connection to it waits between batches.
    lite: Option<(PathBuf, LiteHome)>,
    sqlite_writer: Option<Arc<Mutex<()>>>,
    bumper: Bumper,
    read_cache: Option<Arc<ReadCache>>,
}

/// A batch's outcome so far: each job's answer, in order, and what the successful ones need at the end.
struct Outcome {
    answers: Vec<(oneshot::Sender<Answer>, Answer)>,
    changed: bool,
    revoked: bool,
    work: bool,
    touched: Touched,
    events: Vec<Event>,
}

impl Committer {
    async fn commit(&self, batch: Vec<Waiting>) {
        let begun = match (&self.lite, &self.sqlite_writer) {
            (Some((path, home)), Some(writer)) => begin_lite_write(path, home, writer).await,
            _ => begin_write(&self.pool, self.backend, self.sqlite_writer.as_ref()).await,
        };
        let mut tx = match begun {
            Ok(tx) => tx,
            Err(e) => return fail_all(batch.into_iter().map(|w| w.answer), &e),
        };
        // One job alone needs no savepoint: its failure rolls the whole transaction back.
        let alone = batch.len() == 1;
        let mut outcome = Outcome {
            answers: Vec::new(),
            changed: false,
            revoked: false,
            work: false,
            touched: Touched::nothing(),
            events: Vec::new(),
        };
        let mut pending = batch.into_iter();
        while let Some(Waiting { job, answer }) = pending.next() {
            match self.run_one(&mut tx, job, alone).await {
                Ok(Ok(done)) => {
                    outcome.changed |= done.changed;
                    outcome.revoked |= done.revoked;
                    outcome.work |= done.work;
                    outcome.touched.add(done.touched);
                    outcome.events.extend(done.events);
                    outcome.answers.push((answer, Ok(done.value)));
                }
                Ok(Err(refused)) if !alone => outcome.answers.push((answer, Err(refused))),
                // The job alone failed, or the transaction itself broke: nothing of the batch is kept.
                Ok(Err(e)) | Err(e) => {
                    self.rollback(&mut tx).await;
                    let committed = outcome.answers.into_iter().map(|(a, _)| a);
                    return fail_all(committed.chain(std::iter::once(answer)).chain(pending.map(|w| w.answer)), &e);
                }
            }
        }
        let notice = writes::Notice { changed: outcome.changed, revoked: outcome.revoked, work: outcome.work };
        // From before the COMMIT until before anyone is answered or woken: nobody is answered from the cache
        // what the batch wrote, though another read may already show the commit.
        let committing = self.read_cache.as_ref().map(|c| c.committing(outcome.touched.clone()));
        let finished = self.finish(&mut tx, notice, &outcome.events).await;
        drop(committing);
        if let Err(e) = finished {
            self.rollback(&mut tx).await;
            return fail_all(outcome.answers.into_iter().map(|(a, _)| a), &e);
        }
        if outcome.changed {
            self.bumper.bump();
        }
        if outcome.revoked {
            self.bumper.bump_revocations();
        }
        if outcome.work {
            self.bumper.bump_work();
        }
        for (answer, result) in outcome.answers {
            // A caller that went away no longer needs its answer; its write stands.
            let _ = answer.send(result);
        }
    }

    /// Runs one job. `Ok(Err)`: the job refused and (unless alone) was rolled back to its savepoint;
    /// `Err`: the transaction is unusable.
    async fn run_one(&self, tx: &mut WriteTx, job: Job, alone: bool) -> StoreResult<StoreResult<Done>> {
        if alone {
            return Ok(job(tx.conn()).await);
        }
        self.exec(tx, "SAVEPOINT nimbus_job").await?;
        let result = job(tx.conn()).await;
        if result.is_err() {
            self.exec(tx, "ROLLBACK TO SAVEPOINT nimbus_job").await?;
        }
        self.exec(tx, "RELEASE SAVEPOINT nimbus_job").await?;
        Ok(result)
    }

    async fn finish(&self, tx: &mut WriteTx, notice: writes::Notice, events: &[Event]) -> StoreResult<()> {
        writes::finish_batch(&mut tx.conn(), self.backend, notice, events).await?;
        match query("COMMIT", vec![]).execute(tx.conn()).await {
            Ok(_) => {
                tx.ended = true;
                Ok(())
            }
            Err(e) => Err(self.backend.error("committing", e)),
        }
    }

    async fn exec(&self, tx: &mut WriteTx, sql: &str) -> StoreResult<()> {
        query(sql, vec![]).execute(tx.conn()).await.map(|_| ()).map_err(|e| self.backend.error(sql, e))
    }

    /// Rolls the transaction back now (so that the next writer does not wait behind it); when that fails,
    /// the connection is closed as `tx` drops, never reused with a transaction open.
    async fn rollback(&self, tx: &mut WriteTx) {
        match query("ROLLBACK", vec![]).execute(tx.conn()).await {
            Ok(_) => tx.ended = true,
            Err(e) => tracing::warn!(error = %e, "rolling back a failed batch"),
        }
    }
}

fn fail_all(answers: impl Iterator<Item = oneshot::Sender<Answer>>, error: &StoreError) {
    for answer in answers {
        let _ = answer.send(Err(error.clone()));
    }
}
