//! The runner of the volume kinds (`create_volume`, `attach_volume`, `detach_volume`, `resize_volume`,
//! `delete_volume`): the volume twin of the instance runner in `mod.rs`, with the same rules — claimed under
//! a lease by any server's worker, a step's completion durable before the next begins, the crash hook
//! honoured at every step boundary, undos newest first after a failure, given up through the failure path
//! after too many interrupted attempts.
//!
//! The operation holds the volume's lock (and, for attach and detach, the instance's) from the request's
//! transaction until its outcome, which releases both in one transaction with the volume's landing state
//! (or its removal) and the operation's end. An outcome only changes records whose lock is still this
//! operation's.

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::{Failure, Operation, OperationState, Reason};
use nimbus_core::volume::Volume;
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use nimbus_store::{Record, StoreError, Write, WriteSet};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{failure_of, Abandon, CrashPoint, CrashWhen};
use crate::instances::{instance_event, operation_event};
use crate::volumes::{volume_event, VOLUME};
use crate::{store_err, Engine, Result};

/// The parameters of the kinds done to a volume on an instance (attach, detach).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct OnInstance {
    /// `None` for a detach from an instance that no longer exists.
    pub instance_id: Option<Uuid>,
    /// An attach to an instance of another host: the host that keeps the volume, whose file moves...
    #[serde(default)]
    pub move_from: Option<String>,
    /// ...to the instance's host.
    #[serde(default)]
    pub move_to: Option<String>,
}

/// The parameters of the kinds done to one of a volume's snapshots (create, revert to, delete).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OfSnapshot {
    pub snapshot_id: Uuid,
    /// The instance the volume is attached to, whose lock the operation holds (a snapshot's copy only).
    #[serde(default)]
    pub instance_id: Option<Uuid>,
}

/// What a step sees: the engine, the volume and its instance (for attach and detach) as just read.
pub(crate) struct VolumeCx<'a> {
    pub engine: &'a Engine,
    pub volume: &'a Volume,
    pub instance: Option<&'a Instance>,
}

impl VolumeCx<'_> {
    /// The driver of the host that keeps the volume (its instance runs there too).
    pub fn driver(&self) -> std::sync::Arc<dyn nimbus_driver::Driver> {
        match self.instance {
            Some(i) if i.host.is_some() => self.engine.driver_of(i),
            _ => self.engine.volume_driver(self.volume),
        }
    }
}

#[async_trait]
pub(crate) trait VolumeSaga: Send + Sync + 'static {
    type Params: Serialize + DeserializeOwned + Send + Sync;

    /// The instance whose lock the operation holds, if any.
    fn instance(_p: &Self::Params) -> Option<Uuid> {
        None
    }

    fn steps(p: &Self::Params) -> Vec<&'static str>;

    /// Runs one step on the host; idempotent.
    async fn run(cx: &VolumeCx<'_>, p: &Self::Params, step: &'static str) -> DriverResult<Value>;

    /// Takes back a completed step after a later one failed; idempotent.
    async fn undo(_cx: &VolumeCx<'_>, _p: &Self::Params, _step: &'static str) -> DriverResult<()> {
        Ok(())
    }

    /// The volume after a success (its lock already released); `false`: its record is removed.
    fn succeeded(p: &Self::Params, next: &mut Volume) -> bool;

    /// The volume after a failure, once the undos ran: what the host really has.
    async fn failed(cx: &VolumeCx<'_>, p: &Self::Params, next: &mut Volume);

    /// The writes of other records that land with the outcome, in its transaction (a volume snapshot's):
    /// `ok` says whether the operation succeeded.
    async fn land(_engine: &Engine, _op: &Operation, _p: &Self::Params, _ok: bool) -> Result<Vec<Write>, Abandon> {
        Ok(Vec::new())
    }
}

/// The steps of a volume operation (for tests that visit every step).
pub(crate) fn step_names<K: VolumeSaga>(op: &Operation) -> Result<Vec<&'static str>> {
    let p: K::Params = serde_json::from_value(op.params.clone())
        .map_err(|e| DomainError::Internal(format!("operation {} has unreadable parameters: {e}", op.id)))?;
    Ok(K::steps(&p))
}

/// Runs a claimed volume operation of kind `K` to its end.
pub(crate) async fn run<K: VolumeSaga>(engine: &Engine, lease_owner: &str, op: Operation) -> Result<(), Abandon> {
    VolumeRunner::<K> { engine, lease_owner, op, _kind: std::marker::PhantomData }.run().await
}

struct VolumeRunner<'a, K: VolumeSaga> {
    engine: &'a Engine,
    lease_owner: &'a str,
    op: Operation,
    _kind: std::marker::PhantomData<K>,
}

impl<K: VolumeSaga> VolumeRunner<'_, K> {
    fn crash_here(&self, step: usize, when: CrashWhen) -> bool {
        let point = CrashPoint { kind: self.op.kind, operation: self.op.id, step, when };
        self.engine.config.crash_hook.as_ref().is_some_and(|hook| hook(&point))
    }

    async fn volume(&self) -> Result<Option<(Volume, Record)>, Abandon> {
        Ok(self.engine.record_of::<Volume>(VOLUME, self.op.target.id).await?)
    }

    async fn instance(&self, p: &K::Params) -> Result<Option<Instance>, Abandon> {
        match K::instance(p) {
            Some(id) => Ok(self.engine.store.get_instance(id).await.map_err(store_err)?),
            None => Ok(None),
        }
    }

    async fn still_held(&self) -> Result<bool, Abandon> {
        Ok(self
            .engine
            .store
            .renew_lease(self.op.id, self.lease_owner, self.engine.config.lease)
            .await
            .map_err(store_err)?)
    }

    /// Makes the operation's progress durable, under the lease.
    async fn record_progress(&mut self) -> Result<(), Abandon> {
        self.op.updated_at = nimbus_core::now();
        let mut set = WriteSet::new();
        set.push(Write::UpdateOperation { operation: self.op.clone(), lease_owner: self.lease_owner.to_string() });
        set.push(operation_event("operation.updated", &self.op));
        match self.engine.store.apply(set).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(_)) => Err(Abandon::LeaseLost),
            Err(e) => Err(Abandon::Store(store_err(e))),
        }
    }

    async fn run(mut self) -> Result<(), Abandon> {
        let p: K::Params = match serde_json::from_value(self.op.params.clone()) {
            Ok(p) => p,
            Err(e) => {
                let failure = Failure {
                    state: OperationState::Failure,
                    reason: Reason::Fault,
                    message: format!("operation {} has unreadable parameters: {e}", self.op.id),
                };
                return self.finish(None, Err(failure)).await;
            }
        };
        let steps = K::steps(&p);
        self.op.progress.steps_total = steps.len() as u32;
        if self.op.attempts > self.engine.config.max_attempts && self.op.progress.unwinding.is_none() {
            tracing::warn!(operation = %self.op.id, kind = %self.op.kind, attempts = self.op.attempts, "giving up on an operation interrupted too often");
            self.op.progress.unwinding = Some(Failure {
                state: OperationState::Failure,
                reason: Reason::Interrupted,
                message: format!("interrupted {} times (server restarts or lost leases)", self.op.attempts - 1),
            });
        }
        let mut unrecorded = false;
        while self.op.progress.unwinding.is_none() && (self.op.progress.steps_done as usize) < steps.len() {
            let index = self.op.progress.steps_done as usize;
            let step = steps[index];
            if unrecorded {
                self.op.progress.step = Some(step.to_string());
                self.record_progress().await?;
                unrecorded = false;
            }
            if self.crash_here(index, CrashWhen::Before) {
                return Err(Abandon::Crashed);
            }
            let Some((volume, _)) = self.volume().await? else { break };
            let instance = self.instance(&p).await?;
            let cx = VolumeCx { engine: self.engine, volume: &volume, instance: instance.as_ref() };
            match K::run(&cx, &p, step).await {
                Ok(output) => {
                    if self.crash_here(index, CrashWhen::After) {
                        return Err(Abandon::Crashed);
                    }
                    self.op.progress.outputs.truncate(index);
                    self.op.progress.outputs.push(output);
                    self.op.progress.steps_done += 1;
                    self.op.progress.step = Some(step.to_string());
                    unrecorded = true;
                }
                Err(e) => {
                    tracing::warn!(operation = %self.op.id, kind = %self.op.kind, step, error = %e, "volume step failed");
                    self.op.progress.step = Some(step.to_string());
                    self.op.progress.unwinding = Some(failure_of(&e));
                    // Durable before any undo, so that a worker taking over unwinds instead of going on.
                    self.record_progress().await?;
                }
            }
        }
        match self.op.progress.unwinding.clone() {
            None => {
                if self.crash_here(steps.len(), CrashWhen::Before) {
                    return Err(Abandon::Crashed);
                }
                self.finish(Some(&p), Ok(())).await
            }
            Some(failure) => {
                if let Some((volume, _)) = self.volume().await? {
                    let instance = self.instance(&p).await?;
                    let cx = VolumeCx { engine: self.engine, volume: &volume, instance: instance.as_ref() };
                    for index in (0..self.op.progress.steps_done as usize).rev() {
                        if let Err(e) = K::undo(&cx, &p, steps[index]).await {
                            tracing::warn!(operation = %self.op.id, step = steps[index], error = %e, "undo failed");
                        }
                    }
                }
                self.finish(Some(&p), Err(failure)).await
            }
        }
    }

    /// Records the outcome: the volume's landing (or removal) and the instance, both unlocked, and the
    /// operation's end, in one transaction. Without parameters, only the locks are released.
    async fn finish(&mut self, p: Option<&K::Params>, outcome: Result<(), Failure>) -> Result<(), Abandon> {
        for attempt in 0..crate::instances::CAS_RETRIES {
            if attempt > 0 {
                crate::instances::backoff(attempt).await;
            }
            let mut set = WriteSet::new();
            let instance = match p {
                Some(p) => self.instance(p).await?,
                None => None,
            };
            if let Some((current, record)) =
                self.volume().await?.filter(|(v, _)| v.lock_operation_id == Some(self.op.id))
            {
                let mut next = current.clone();
                next.lock_operation_id = None;
                next.updated_at = nimbus_core::now();
                let keep = match (p, &outcome) {
                    (Some(p), Ok(())) => K::succeeded(p, &mut next),
                    (Some(p), Err(_)) => {
                        let cx = VolumeCx { engine: self.engine, volume: &current, instance: instance.as_ref() };
                        K::failed(&cx, p, &mut next).await;
                        true
                    }
                    (None, _) => {
                        next.state = nimbus_core::volume::VolumeState::Error;
                        true
                    }
                };
                if keep {
                    set.push(Write::UpdateRecord {
                        record: record.next(&next.name, &next),
                        expected_generation: record.generation,
                    });
                    set.push(volume_event(&self.op.actor, "volume.updated", &next));
                } else {
                    set.push(Write::DeleteRecord {
                        kind: VOLUME.into(),
                        id: current.id,
                        expected_generation: Some(record.generation),
                    });
                    set.push(volume_event(&self.op.actor, "volume.deleted", &next));
                }
            }
            if let Some(p) = p {
                set.writes.extend(K::land(self.engine, &self.op, p, outcome.is_ok()).await?);
            }
            if let Some(i) = instance.filter(|i| i.lock_operation_id == Some(self.op.id)) {
                let mut next = i.clone();
                next.lock_operation_id = None;
                next.generation += 1;
                next.updated_at = nimbus_core::now();
                set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(i.generation) });
                set.push(instance_event(&self.op.actor, "instance.updated", &next));
            }
            self.op.progress.unwinding = None;
            match &outcome {
                Ok(()) => {
                    self.op.state = OperationState::Success;
                    self.op.reason = None;
                }
                Err(f) => {
                    self.op.state = f.state;
                    self.op.reason = Some(f.reason);
                    self.op.message = Some(f.message.clone());
                }
            }
            self.op.updated_at = nimbus_core::now();
            set.push(Write::UpdateOperation { operation: self.op.clone(), lease_owner: self.lease_owner.to_string() });
            set.push(operation_event("operation.updated", &self.op));
            match self.engine.store.apply(set).await {
                Ok(()) => {
                    self.engine.count_outcome(&self.op);
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => {
                    if !self.still_held().await? {
                        return Err(Abandon::LeaseLost);
                    }
                }
                Err(e) => return Err(Abandon::Store(store_err(e))),
            }
        }
        Err(Abandon::Store(DomainError::Internal(format!("could not record the outcome of operation {}", self.op.id))))
    }
}
