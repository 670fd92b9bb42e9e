//! Operation kinds as sagas: one module per kind, each holding the whole life of its operation.
//!
//! A kind has
//! - **typed parameters** (a serde struct stored with the operation, with a version so that an operation
//!   written by an older Nimbus is still understood);
//! - **a plan** (`plan` in its module), made in the request: the desired-state change of the instance and the
//!   other writes of the request's transaction, checked against the domain rules;
//! - **steps**, run by whichever server's worker holds the operation's lease. Each step is idempotent: a
//!   worker that takes over after a crash runs the step under way again and converges. After each step but
//!   the last the worker records its progress and what the step produced, so the next holder resumes there;
//! - **an undo** where a completed step must be taken back when a later one fails;
//! - what **success** and **failure** leave behind (the instance's landing state, records, released
//!   addresses), written in one transaction with the operation's outcome and the release of the instance's
//!   lock.
//!
//! [`execute`] runs a claimed operation through its kind's [`Saga`]: forward through the steps, or, once a
//! step failed (or the operation was interrupted too often), backward through the undos, and then the
//! outcome. An operation given up after too many interrupted attempts takes the same failure path as one
//! whose step failed, undo included, so nothing it began is left behind.

use std::sync::Arc;

use async_trait::async_trait;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::{Failure, Operation, OperationState, Reason};
use nimbus_core::state_machine::{landing, Action};
use nimbus_core::DomainError;
use nimbus_driver::{ActualState, DriverError, DriverResult};
use nimbus_store::{StoreError, Write, WriteSet};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::instances::{instance_event, operation_event};
use crate::{store_err, Engine, Result};

pub(crate) mod anti_affinity;
pub(crate) mod attach_volume;
pub(crate) mod create;
pub(crate) mod create_snapshot;
pub(crate) mod create_volume;
pub(crate) mod create_volume_snapshot;
pub(crate) mod delete;
pub(crate) mod delete_snapshot;
pub(crate) mod delete_volume;
pub(crate) mod delete_volume_snapshot;
pub(crate) mod detach_volume;
pub(crate) mod enable_tpm;
pub(crate) mod evacuate;
pub(crate) mod import_template;
pub(crate) mod promote_snapshot;
pub(crate) mod reboot;
pub(crate) mod reset;
pub(crate) mod reset_password;
pub(crate) mod resize_disk;
pub(crate) mod resize_volume;
pub(crate) mod resume;
pub(crate) mod revert_snapshot;
pub(crate) mod revert_volume;
pub(crate) mod scale;
pub(crate) mod start;
pub(crate) mod stop;
pub(crate) mod suspend;
pub(crate) mod volume;

/// What a step sees: the engine and the instance as it was just read.
pub(crate) struct StepCx<'a> {
    pub engine: &'a Engine,
    pub instance: &'a Instance,
}

impl StepCx<'_> {
    /// The driver of the instance's host: its own when the server runs the host, its agent's otherwise.
    pub fn driver(&self) -> std::sync::Arc<dyn nimbus_driver::Driver> {
        self.engine.driver_of(self.instance)
    }
}

/// The parameters of a kind that needs nothing but its instance.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub(crate) struct NoParams {}

/// What a success leaves besides the instance's new version.
#[derive(Debug, Default)]
pub(crate) struct Succeeded {
    /// Other writes of the outcome's transaction (a snapshot record made ready, a password stored...).
    pub writes: Vec<Write>,
    /// What the operation produced, shown on it (a snapshot id...).
    pub result: Option<Value>,
}

#[async_trait]
pub(crate) trait Saga: Send + Sync + 'static {
    /// The typed parameters, stored with the operation.
    type Params: Serialize + DeserializeOwned + Send + Sync;

    /// The version of `Params` new operations are written with.
    const PARAMS_VERSION: u32 = 1;

    /// Reads parameters written in an older version's shape. There is none yet for any kind: operations
    /// written before versions existed are version 1.
    fn upgrade(version: u32, _raw: Value) -> Result<Self::Params> {
        Err(DomainError::Internal(format!(
            "operation parameters of version {version} are not understood by this Nimbus (it writes version {})",
            Self::PARAMS_VERSION
        )))
    }

    /// The steps, in order, by name. They may depend on the parameters and on where the operation began (a
    /// reset boots the instance again only if it was running).
    fn steps(p: &Self::Params, op: &Operation) -> Vec<&'static str>;

    /// The state the instance shows while `step` runs, when it differs from what the operation showed so far
    /// (a create shows `starting` once it boots). Written with the progress of the steps before it.
    fn shows(_step: &'static str) -> Option<InstanceState> {
        None
    }

    /// Runs one step on the host. Idempotent: run again after a crash, it converges. Its output is kept with
    /// the operation's progress and handed to [`Saga::succeeded`].
    async fn run(cx: &StepCx<'_>, p: &Self::Params, step: &'static str) -> DriverResult<Value>;

    /// Takes back a completed step after a later one failed. Idempotent. Most steps need none: the failure
    /// records what the host really shows instead.
    async fn undo(_cx: &StepCx<'_>, _p: &Self::Params, _step: &'static str) -> DriverResult<()> {
        Ok(())
    }

    /// The outcome of a success: `next` already has its landing state (from the state machine) and its lock
    /// released; the kind adds what changed (`tpm_enabled`...) and other writes. `outputs` holds each step's
    /// output, in order. For a kind whose instance is gone afterwards, `next` is the last view of it.
    async fn succeeded(
        _cx: &StepCx<'_>,
        _p: &Self::Params,
        _next: &mut Instance,
        _outputs: &[Value],
    ) -> Result<Succeeded> {
        Ok(Succeeded::default())
    }

    /// The outcome of a failure, after the undos: `next` already shows the state the host reports and has
    /// its lock released; the kind takes back desired changes that did not happen and adds other writes.
    /// `steps_done` tells how far the operation came.
    async fn failed(_cx: &StepCx<'_>, _p: &Self::Params, _next: &mut Instance, _steps_done: u32) -> Result<Vec<Write>> {
        Ok(Vec::new())
    }
}

/// The steps that build an instance on its host from its template (`provision`) and boot it (`boot`), for
/// the kinds that make an instance anew (create, evacuate).
pub(crate) async fn build_on_host(cx: &StepCx<'_>, step: &'static str) -> DriverResult<Value> {
    let spec = cx.engine.spec_for_driver(cx.instance).await?;
    match step {
        "provision" => cx.driver().create(&spec).await?,
        _ => cx.driver().start(&spec).await?,
    }
    Ok(Value::Null)
}

/// A plan's contribution to the request's transaction.
#[derive(Debug)]
pub(crate) struct Planned {
    pub params: Value,
    pub params_version: u32,
    /// Other writes of the request's transaction (a snapshot's record...).
    pub writes: Vec<Write>,
    /// Whether the instance's new size must fit the project's quota.
    pub quota: bool,
    /// The check that the instance's new size still fits its host.
    pub placement: Option<nimbus_store::Placement>,
}

impl Planned {
    pub fn of<K: Saga>(params: &K::Params) -> Planned {
        Planned {
            params: serde_json::to_value(params).expect("operation parameters serialize"),
            params_version: K::PARAMS_VERSION,
            writes: Vec::new(),
            quota: false,
            placement: None,
        }
    }
    /// The plan of a kind whose parameters are [`NoParams`].
    pub fn nothing() -> Planned {
        Planned { params: serde_json::json!({}), params_version: 1, writes: Vec::new(), quota: false, placement: None }
    }
    pub fn with_quota(mut self) -> Planned {
        self.quota = true;
        self
    }
    pub fn with_writes(mut self, writes: Vec<Write>) -> Planned {
        self.writes = writes;
        self
    }
}

/// The typed parameters of an operation of kind `K`.
pub(crate) fn params<K: Saga>(op: &Operation) -> Result<K::Params> {
    if op.params_version == K::PARAMS_VERSION {
        serde_json::from_value(op.params.clone())
            .map_err(|e| DomainError::Internal(format!("operation {} has unreadable parameters: {e}", op.id)))
    } else {
        K::upgrade(op.params_version, op.params.clone())
    }
}

/// Where a test may make a worker stop dead, as if its server had been killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CrashPoint {
    pub kind: Action,
    pub operation: Uuid,
    /// The step's position in the kind's steps; one past the last: just before the success is recorded.
    pub step: usize,
    pub when: CrashWhen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashWhen {
    /// Before the step begins on the host (the steps before it recorded as done).
    Before,
    /// After the step finished on the host, before anything about it is recorded.
    After,
}

/// Decides, at each crash point, whether the worker dies there (tests only; `None` in production).
pub type CrashHook = Arc<dyn Fn(&CrashPoint) -> bool + Send + Sync>;

/// Why a worker stopped running an operation without recording its end.
#[derive(Debug)]
pub(crate) enum Abandon {
    /// A test's crash point fired: nothing more is written, the lease is left to expire.
    Crashed,
    /// Another worker holds the operation now (this one's lease expired).
    LeaseLost,
    /// The store failed; the lease expires and another attempt follows.
    Store(DomainError),
}

impl From<DomainError> for Abandon {
    fn from(e: DomainError) -> Self {
        Abandon::Store(e)
    }
}

/// What a driver failure means for the operation.
pub(crate) fn failure_of(e: &DriverError) -> Failure {
    let (state, reason) = match e {
        DriverError::NotFound(_) => (OperationState::Failure, Reason::NotFound),
        DriverError::Unsupported(_) => (OperationState::Failure, Reason::Unsupported),
        DriverError::Invalid(_) => (OperationState::Failure, Reason::Incorrect),
        DriverError::Timeout(_) => (OperationState::Timeout, Reason::Unavailable),
        DriverError::Failed(_) => (OperationState::Failure, Reason::Fault),
        DriverError::Unreachable(_) => (OperationState::Failure, Reason::Unavailable),
    };
    Failure { state, reason, message: e.to_string() }
}

/// The instance state that matches what the host reports.
pub(crate) fn observed_state(actual: DriverResult<ActualState>) -> InstanceState {
    match actual {
        Ok(ActualState::Running) => InstanceState::Running,
        Ok(ActualState::Stopped) => InstanceState::Stopped,
        Ok(ActualState::Paused) => InstanceState::Suspended,
        // Nothing is known of a VM whose host does not answer: it may well still run there.
        Err(DriverError::Unreachable(_)) => InstanceState::Unknown,
        Ok(ActualState::Missing) | Err(_) => InstanceState::Error,
    }
}

/// Runs a claimed operation (already marked running under `lease_owner`) to its end through its kind.
pub(crate) async fn execute(engine: &Engine, lease_owner: &str, op: Operation) -> Result<(), Abandon> {
    match op.kind {
        Action::Create => Runner::<create::Create>::new(engine, lease_owner, op).run().await,
        Action::Start => Runner::<start::Start>::new(engine, lease_owner, op).run().await,
        Action::Stop | Action::ScheduledStop => Runner::<stop::Stop>::new(engine, lease_owner, op).run().await,
        Action::Reboot => Runner::<reboot::Reboot>::new(engine, lease_owner, op).run().await,
        Action::Reset => Runner::<reset::Reset>::new(engine, lease_owner, op).run().await,
        Action::Scale => Runner::<scale::Scale>::new(engine, lease_owner, op).run().await,
        Action::ScaleWithRestart => Runner::<scale::ScaleWithRestart>::new(engine, lease_owner, op).run().await,
        Action::ResizeDisk => Runner::<resize_disk::ResizeDisk>::new(engine, lease_owner, op).run().await,
        Action::CreateSnapshot => Runner::<create_snapshot::CreateSnapshot>::new(engine, lease_owner, op).run().await,
        Action::RevertSnapshot => Runner::<revert_snapshot::RevertSnapshot>::new(engine, lease_owner, op).run().await,
        Action::DeleteSnapshot => Runner::<delete_snapshot::DeleteSnapshot>::new(engine, lease_owner, op).run().await,
        Action::ResetPassword => Runner::<reset_password::ResetPassword>::new(engine, lease_owner, op).run().await,
        Action::EnableTpm => Runner::<enable_tpm::EnableTpm>::new(engine, lease_owner, op).run().await,
        Action::Suspend => Runner::<suspend::Suspend>::new(engine, lease_owner, op).run().await,
        Action::Resume => Runner::<resume::Resume>::new(engine, lease_owner, op).run().await,
        Action::Delete => Runner::<delete::Delete>::new(engine, lease_owner, op).run().await,
        Action::ChangeAntiAffinityGroups => {
            Runner::<anti_affinity::ChangeAntiAffinityGroups>::new(engine, lease_owner, op).run().await
        }
        Action::Evacuate => Runner::<evacuate::Evacuate>::new(engine, lease_owner, op).run().await,
        Action::PromoteSnapshot => {
            Runner::<promote_snapshot::PromoteSnapshot>::new(engine, lease_owner, op).run().await
        }
        // Not on an instance: its own runner.
        Action::ImportTemplate => import_template::run(engine, lease_owner, op).await,
        // On a volume: the volume runner.
        Action::CreateVolume => volume::run::<create_volume::CreateVolume>(engine, lease_owner, op).await,
        Action::AttachVolume => volume::run::<attach_volume::AttachVolume>(engine, lease_owner, op).await,
        Action::DetachVolume => volume::run::<detach_volume::DetachVolume>(engine, lease_owner, op).await,
        Action::ResizeVolume => volume::run::<resize_volume::ResizeVolume>(engine, lease_owner, op).await,
        Action::DeleteVolume => volume::run::<delete_volume::DeleteVolume>(engine, lease_owner, op).await,
        Action::CreateVolumeSnapshot => {
            volume::run::<create_volume_snapshot::CreateVolumeSnapshot>(engine, lease_owner, op).await
        }
        Action::RevertVolume => volume::run::<revert_volume::RevertVolume>(engine, lease_owner, op).await,
        Action::DeleteVolumeSnapshot => {
            volume::run::<delete_volume_snapshot::DeleteVolumeSnapshot>(engine, lease_owner, op).await
        }
    }
}

/// The steps of an operation, as its kind plans them (for tests that visit every step).
pub fn step_names(op: &Operation) -> Result<Vec<&'static str>> {
    fn of<K: Saga>(op: &Operation) -> Result<Vec<&'static str>> {
        Ok(K::steps(&params::<K>(op)?, op))
    }
    match op.kind {
        Action::Create => of::<create::Create>(op),
        Action::Start => of::<start::Start>(op),
        Action::Stop | Action::ScheduledStop => of::<stop::Stop>(op),
        Action::Reboot => of::<reboot::Reboot>(op),
        Action::Reset => of::<reset::Reset>(op),
        Action::Scale => of::<scale::Scale>(op),
        Action::ScaleWithRestart => of::<scale::ScaleWithRestart>(op),
        Action::ResizeDisk => of::<resize_disk::ResizeDisk>(op),
        Action::CreateSnapshot => of::<create_snapshot::CreateSnapshot>(op),
        Action::RevertSnapshot => of::<revert_snapshot::RevertSnapshot>(op),
        Action::DeleteSnapshot => of::<delete_snapshot::DeleteSnapshot>(op),
        Action::ResetPassword => of::<reset_password::ResetPassword>(op),
        Action::EnableTpm => of::<enable_tpm::EnableTpm>(op),
        Action::Suspend => of::<suspend::Suspend>(op),
        Action::Resume => of::<resume::Resume>(op),
        Action::Delete => of::<delete::Delete>(op),
        Action::ChangeAntiAffinityGroups => of::<anti_affinity::ChangeAntiAffinityGroups>(op),
        Action::Evacuate => of::<evacuate::Evacuate>(op),
        Action::PromoteSnapshot => of::<promote_snapshot::PromoteSnapshot>(op),
        Action::ImportTemplate => Ok(import_template::step_names()),
        Action::CreateVolume => volume::step_names::<create_volume::CreateVolume>(op),
        Action::AttachVolume => volume::step_names::<attach_volume::AttachVolume>(op),
        Action::DetachVolume => volume::step_names::<detach_volume::DetachVolume>(op),
        Action::ResizeVolume => volume::step_names::<resize_volume::ResizeVolume>(op),
        Action::DeleteVolume => volume::step_names::<delete_volume::DeleteVolume>(op),
        Action::CreateVolumeSnapshot => volume::step_names::<create_volume_snapshot::CreateVolumeSnapshot>(op),
        Action::RevertVolume => volume::step_names::<revert_volume::RevertVolume>(op),
        Action::DeleteVolumeSnapshot => volume::step_names::<delete_volume_snapshot::DeleteVolumeSnapshot>(op),
    }
}

/// Runs one operation of kind `K`: its remaining steps, or its undos, then its outcome.
struct Runner<'a, K: Saga> {
    engine: &'a Engine,
    lease_owner: &'a str,
    op: Operation,
    _kind: std::marker::PhantomData<K>,
}

impl<'a, K: Saga> Runner<'a, K> {
    fn new(engine: &'a Engine, lease_owner: &'a str, op: Operation) -> Self {
        Runner { engine, lease_owner, op, _kind: std::marker::PhantomData }
    }

    fn crash_here(&self, step: usize, when: CrashWhen) -> bool {
        let point = CrashPoint { kind: self.op.kind, operation: self.op.id, step, when };
        self.engine.config.crash_hook.as_ref().is_some_and(|hook| hook(&point))
    }

    async fn instance(&self) -> Result<Option<Instance>, Abandon> {
        Ok(self.engine.store.get_instance(self.op.target.id).await.map_err(store_err)?)
    }

    /// Writes the operation (its progress) under the lease, with an `operation.updated` event, and, when a
    /// step is about to show a state of its own, the instance showing it, in one transaction.
    async fn record_progress(&mut self, shown: Option<InstanceState>) -> Result<(), Abandon> {
        for attempt in 0..crate::instances::CAS_RETRIES {
            if attempt > 0 {
                crate::instances::backoff(attempt).await;
            }
            self.op.updated_at = nimbus_core::now();
            let mut set = WriteSet::new();
            if let Some(state) = shown {
                if let Some(current) = self.instance().await?.filter(|i| self.holds_lock(i) && i.state != state) {
                    let mut next = current.clone();
                    next.state = state;
                    next.generation += 1;
                    next.updated_at = self.op.updated_at;
                    set.push(Write::PutInstance {
                        instance: next.clone(),
                        expected_generation: Some(current.generation),
                    });
                    set.push(instance_event(&self.op.actor, "instance.updated", &next));
                }
            }
            set.push(Write::UpdateOperation { operation: self.op.clone(), lease_owner: self.lease_owner.to_string() });
            set.push(operation_event("operation.updated", &self.op));
            match self.engine.store.apply(set).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => {
                    if !self.still_held().await? {
                        return Err(Abandon::LeaseLost);
                    }
                }
                Err(e) => return Err(Abandon::Store(store_err(e))),
            }
        }
        Err(Abandon::Store(DomainError::Internal(format!("could not record the progress of operation {}", self.op.id))))
    }

    /// Whether this worker still holds the operation's lease (renewing it).
    async fn still_held(&self) -> Result<bool, Abandon> {
        Ok(self
            .engine
            .store
            .renew_lease(self.op.id, self.lease_owner, self.engine.config.lease)
            .await
            .map_err(store_err)?)
    }

    async fn run(mut self) -> Result<(), Abandon> {
        let p = match params::<K>(&self.op) {
            Ok(p) => p,
            Err(e) => {
                // Nothing can be run or undone without the parameters: end it, saying why.
                self.op.progress.unwinding =
                    Some(Failure { state: OperationState::Failure, reason: Reason::Fault, message: e.to_string() });
                return self.fail_without_steps().await;
            }
        };
        let steps = K::steps(&p, &self.op);
        self.op.progress.steps_total = steps.len() as u32;
        if self.op.attempts > self.engine.config.max_attempts && self.op.progress.unwinding.is_none() {
            tracing::warn!(operation = %self.op.id, kind = %self.op.kind, attempts = self.op.attempts, "giving up on an operation interrupted too often");
            self.op.progress.unwinding = Some(Failure {
                state: OperationState::Failure,
                reason: Reason::Interrupted,
                message: format!("interrupted {} times (server restarts or lost leases)", self.op.attempts - 1),
            });
        }

        // Forward, from where the last holder stopped. A step's completion is made durable before the next
        // step begins (with the state that step shows, in one transaction), or with the outcome after the
        // last one: a worker taking over never runs a step whose predecessor is not recorded as done. On a
        // driver whose calls end at once there is nothing to save by it: the steps run back to back, and
        // one taking over repeats them all (each is idempotent).
        let mut unrecorded = false;
        let mut instance = None;
        while self.op.progress.unwinding.is_none() && (self.op.progress.steps_done as usize) < steps.len() {
            let index = self.op.progress.steps_done as usize;
            let step = steps[index];
            let shown = K::shows(step);
            let instant = instance.as_ref().is_some_and(|i| self.engine.driver_of(i).instant());
            if (unrecorded || shown.is_some()) && !instant {
                self.op.progress.step = Some(step.to_string());
                self.record_progress(shown).await?;
                unrecorded = false;
            }
            if self.crash_here(index, CrashWhen::Before) {
                return Err(Abandon::Crashed);
            }
            let Some(current) = self.instance().await? else { break };
            let instance = instance.insert(current);
            let outcome = K::run(&StepCx { engine: self.engine, instance }, &p, step).await;
            match outcome {
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
                    tracing::warn!(operation = %self.op.id, kind = %self.op.kind, step, error = %e, "operation step failed");
                    self.op.progress.step = Some(step.to_string());
                    self.op.progress.unwinding = Some(failure_of(&e));
                    // Durable before any undo, so that a worker taking over unwinds instead of going on.
                    self.record_progress(None).await?;
                }
            }
        }

        match self.op.progress.unwinding.clone() {
            None => {
                // The last point before the success is recorded (for a kind without steps, the only one).
                if self.crash_here(steps.len(), CrashWhen::Before) {
                    return Err(Abandon::Crashed);
                }
                self.succeed(&p).await
            }
            Some(failure) => {
                // Backward: undo the completed steps, newest first. An undo that fails is logged and the
                // failure path goes on: what the host really shows is recorded below.
                if let Some(instance) = self.instance().await? {
                    let cx = StepCx { engine: self.engine, instance: &instance };
                    for index in (0..self.op.progress.steps_done as usize).rev() {
                        if let Err(e) = K::undo(&cx, &p, steps[index]).await {
                            tracing::warn!(operation = %self.op.id, step = steps[index], error = %e, "undo failed");
                        }
                    }
                }
                self.fail(&p, failure).await
            }
        }
    }

    /// Records the success: the operation, the instance's landing state (or its removal) with its lock
    /// released, and the kind's other writes, in one transaction.
    async fn succeed(&mut self, p: &K::Params) -> Result<(), Abandon> {
        for attempt in 0..crate::instances::CAS_RETRIES {
            if attempt > 0 {
                crate::instances::backoff(attempt).await;
            }
            let mut set = WriteSet::new();
            let current = self.instance().await?;
            let mut result = None;
            if let Some(current) = current.as_ref().filter(|i| self.holds_lock(i)) {
                let cx = StepCx { engine: self.engine, instance: current };
                let before = self.op.state_before.unwrap_or(InstanceState::Stopped);
                let mut next = current.clone();
                next.lock_operation_id = None;
                let landed = landing(self.op.kind, before);
                if let Some(state) = landed {
                    next.state = state;
                }
                let done = K::succeeded(&cx, p, &mut next, &self.op.progress.outputs).await?;
                next.end_rescue_if_off();
                result = done.result;
                match landed {
                    Some(_) => {
                        next.generation += 1;
                        next.updated_at = nimbus_core::now();
                        set.push(Write::PutInstance {
                            instance: next.clone(),
                            expected_generation: Some(current.generation),
                        });
                        set.push(instance_event(&self.op.actor, "instance.updated", &next));
                    }
                    None => {
                        next.state = InstanceState::Destroyed;
                        if self.engine.config.deleted_retention.is_zero() {
                            set.push(Write::DeleteInstance { id: current.id, expected_generation: current.generation });
                        } else {
                            // Kept for the retention as a record of what was deleted, and when: it holds no
                            // host, address or lock (the outcome's writes release the addresses).
                            next.host = None;
                            next.ip_addresses.clear();
                            next.generation += 1;
                            next.updated_at = nimbus_core::now();
                            set.push(Write::PutInstance {
                                instance: next.clone(),
                                expected_generation: Some(current.generation),
                            });
                        }
                        set.push(instance_event(&self.op.actor, "instance.deleted", &next));
                    }
                }
                set.writes.extend(done.writes);
            } else if current.is_none() && self.op.kind != Action::Delete {
                return self
                    .fail_without_steps_because(Failure {
                        state: OperationState::Failure,
                        reason: Reason::NotFound,
                        message: format!("instance {} no longer exists", self.op.target.id),
                    })
                    .await;
            }
            self.op.state = OperationState::Success;
            self.op.reason = None;
            self.op.result = result;
            if self.finish(set).await? {
                return Ok(());
            }
        }
        Err(Abandon::Store(DomainError::Internal(format!("could not record the outcome of operation {}", self.op.id))))
    }

    /// Records the failure: the instance as the host shows it, desired changes taken back, lock released.
    async fn fail(&mut self, p: &K::Params, failure: Failure) -> Result<(), Abandon> {
        self.record_failure(Some(p), failure).await
    }

    /// Ends an operation that cannot run its kind's failure handling (unreadable parameters, a vanished
    /// instance): the instance, if any, shows what the host reports and is unlocked.
    async fn fail_without_steps(&mut self) -> Result<(), Abandon> {
        let failure = self.op.progress.unwinding.clone().expect("set by the caller");
        self.fail_without_steps_because(failure).await
    }

    async fn fail_without_steps_because(&mut self, failure: Failure) -> Result<(), Abandon> {
        self.record_failure(None, failure).await
    }

    /// Records a failure: the instance as the host shows it, unlocked, and (with the parameters) the kind's
    /// failure handling (desired changes taken back, other writes), in one transaction with the outcome.
    async fn record_failure(&mut self, p: Option<&K::Params>, failure: Failure) -> Result<(), Abandon> {
        for attempt in 0..crate::instances::CAS_RETRIES {
            if attempt > 0 {
                crate::instances::backoff(attempt).await;
            }
            let mut set = WriteSet::new();
            if let Some(current) = self.instance().await?.filter(|i| self.holds_lock(i)) {
                let mut next = current.clone();
                next.state = observed_state(self.engine.driver_of(&current).inspect(current.id).await);
                next.lock_operation_id = None;
                let writes = match p {
                    Some(p) => {
                        let cx = StepCx { engine: self.engine, instance: &current };
                        K::failed(&cx, p, &mut next, self.op.progress.steps_done).await?
                    }
                    None => Vec::new(),
                };
                next.end_rescue_if_off();
                next.generation += 1;
                next.updated_at = nimbus_core::now();
                set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
                set.push(instance_event(&self.op.actor, "instance.updated", &next));
                set.writes.extend(writes);
            }
            self.op.state = failure.state;
            self.op.reason = Some(failure.reason);
            self.op.message = Some(failure.message.clone());
            if self.finish(set).await? {
                return Ok(());
            }
        }
        Err(Abandon::Store(DomainError::Internal(format!("could not record the outcome of operation {}", self.op.id))))
    }

    /// Whether this operation holds the instance's lock (only then may its outcome change the instance).
    fn holds_lock(&self, instance: &Instance) -> bool {
        let holds = instance.lock_operation_id == Some(self.op.id);
        if !holds {
            tracing::warn!(operation = %self.op.id, instance = %instance.id, "the instance's lock is not this operation's");
        }
        holds
    }

    /// Commits the outcome in `set` with the operation. `Ok(false)`: a concurrent writer changed the instance
    /// first, so the caller reads again and retries.
    async fn finish(&mut self, mut set: WriteSet) -> Result<bool, Abandon> {
        self.op.progress.unwinding = None;
        self.op.updated_at = nimbus_core::now();
        set.push(Write::UpdateOperation { operation: self.op.clone(), lease_owner: self.lease_owner.to_string() });
        set.push(operation_event("operation.updated", &self.op));
        match self.engine.store.apply(set).await {
            Ok(()) => {
                self.engine.count_outcome(&self.op);
                Ok(true)
            }
            // Either the instance changed (a label edit: read again) or the lease is gone.
            Err(StoreError::Conflict(_)) => {
                if self.still_held().await? {
                    Ok(false)
                } else {
                    Err(Abandon::LeaseLost)
                }
            }
            Err(e) => Err(Abandon::Store(store_err(e))),
        }
    }
}
