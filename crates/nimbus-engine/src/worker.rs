//! Operation workers: run an operation's driver steps and record the outcome.
//!
//! An operation is marked running (its attempt counted) before any driver step; the outcome, the instance's
//! landing state and the release of its lock are written in one transaction. A crash in between leaves the
//! operation running, and recovery runs the same idempotent steps again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::{Operation, OperationState, Reason};
use nimbus_core::resources::{InstancePassword, Snapshot, SnapshotState, PASSWORD_LIFETIME};
use nimbus_core::state_machine::{landing, Action};
use nimbus_core::DomainError;
use nimbus_driver::{ActualState, DriverError, InstanceSpec};
use nimbus_store::{Record, StoreError, Write, WriteSet};
use rand::Rng;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

use crate::instances::{instance_event, operation_event};
use crate::resources::{PASSWORD, SNAPSHOT};
use crate::{store_err, Engine, Result};

pub(crate) fn spawn(engine: Arc<Engine>, mut queue: mpsc::UnboundedReceiver<Uuid>) {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(engine.config.workers.max(1)));
        while let Some(id) = queue.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let engine = engine.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.run_operation(id).await {
                    tracing::error!(operation = %id, error = %e, "operation could not be recorded");
                }
                drop(slot);
            });
        }
    });
}

/// What a driver step failure means for the operation.
fn failure_of(e: &DriverError) -> (OperationState, Reason) {
    match e {
        DriverError::NotFound(_) => (OperationState::Failure, Reason::NotFound),
        DriverError::Unsupported(_) => (OperationState::Failure, Reason::Unsupported),
        DriverError::Invalid(_) => (OperationState::Failure, Reason::Incorrect),
        DriverError::Timeout(_) => (OperationState::Timeout, Reason::Unavailable),
        DriverError::Failed(_) => (OperationState::Failure, Reason::Fault),
    }
}

pub(crate) fn new_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

fn param_uuid(op: &Operation, key: &str) -> Result<Uuid> {
    op.params
        .get(key)
        .and_then(|v| v.as_str())
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| DomainError::Internal(format!("operation {} lacks {key}", op.id)))
}

/// The outcome of an operation's driver steps.
enum Outcome {
    Done { result: Option<serde_json::Value>, writes: Vec<Write> },
    Failed { state: OperationState, reason: Reason, message: String },
}

impl Engine {
    pub(crate) fn enqueue(&self, op: Uuid) {
        let _ = self.queue.send(op);
        self.wake();
    }

    async fn run_operation(&self, id: Uuid) -> Result<()> {
        let Some(mut op) = self.store.get_operation(id).await.map_err(store_err)? else { return Ok(()) };
        if op.state.is_final() {
            return Ok(());
        }
        op.state = OperationState::Running;
        op.attempts += 1;
        op.updated_at = nimbus_core::now();
        let mut set = WriteSet::new();
        set.push(Write::PutOperation(op.clone()));
        set.push(operation_event("operation.updated", &op));
        self.store.apply(set).await.map_err(store_err)?;
        self.metrics.operations_started.fetch_add(1, Ordering::Relaxed);
        self.wake();

        let outcome = match self.run_steps(&op).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed { state: OperationState::Failure, reason: Reason::Fault, message: e.to_string() },
        };
        self.finish(op, outcome).await
    }

    async fn run_steps(&self, op: &Operation) -> Result<Outcome> {
        let Some(instance) = self.store.get_instance(op.target.id).await.map_err(store_err)? else {
            return Ok(Outcome::Failed {
                state: OperationState::Failure,
                reason: Reason::NotFound,
                message: format!("instance {} no longer exists", op.target.id),
            });
        };
        let result = self.drive(op, instance).await;
        Ok(match result {
            Ok(done) => done,
            Err(e) => {
                let (state, reason) = failure_of(&e);
                Outcome::Failed { state, reason, message: e.to_string() }
            }
        })
    }

    /// The driver steps of each kind of operation. Every step is idempotent, so running this again after a
    /// crash converges.
    async fn drive(&self, op: &Operation, mut instance: Instance) -> Result<Outcome, DriverError> {
        let internal = |e: DomainError| DriverError::Failed(e.to_string());
        let grace = self.config.stop_grace;
        let id = instance.id;
        let mut result = None;
        let mut writes = Vec::new();
        match op.kind {
            Action::Create => {
                instance = self.assign_address(instance).await.map_err(internal)?;
                let spec = self.spec(&instance).await.map_err(internal)?;
                self.driver.create(&spec).await?;
                if op.params.get("auto_start").and_then(|v| v.as_bool()).unwrap_or(true) {
                    self.show_state(id, InstanceState::Starting).await.map_err(internal)?;
                    self.driver.start(&spec).await?;
                }
            }
            Action::Start => self.driver.start(&self.spec(&instance).await.map_err(internal)?).await?,
            Action::Stop | Action::ScheduledStop => self.driver.stop(id, grace).await?,
            Action::Reboot => self.driver.reboot(&self.spec(&instance).await.map_err(internal)?).await?,
            Action::Reset => {
                let spec = self.spec(&instance).await.map_err(internal)?;
                self.driver.stop(id, grace).await?;
                self.driver.reinstall(&spec).await?;
                // The old disk's snapshots went with it.
                for s in self
                    .store
                    .list_records(SNAPSHOT, Some(instance.project_id))
                    .await
                    .map_err(|e| internal(store_err(e)))?
                {
                    if s.decode::<Snapshot>().map(|s| s.instance_id == id).unwrap_or(false) {
                        writes.push(Write::DeleteRecord { kind: SNAPSHOT.into(), id: s.id });
                    }
                }
                if op.state_before == Some(InstanceState::Running) {
                    self.driver.start(&spec).await?;
                }
            }
            // The new size applies at the next boot, which reads vCPUs and memory from the record.
            Action::Scale => {}
            // The record has the new size already: a running instance is stopped and booted with it. Both
            // steps are idempotent, so a resumed operation stops (again) and starts; a stopped one has
            // nothing to do on the host.
            Action::ScaleWithRestart => {
                if op.state_before == Some(InstanceState::Running) {
                    let spec = self.spec(&instance).await.map_err(internal)?;
                    self.driver.stop(id, grace).await?;
                    self.driver.start(&spec).await?;
                }
            }
            Action::ResizeDisk => self.driver.resize_disk(id, instance.disk_size_gb).await?,
            Action::CreateSnapshot => {
                let snapshot_id = param_uuid(op, "snapshot_id").map_err(internal)?;
                let bytes = self.driver.snapshot(id, snapshot_id).await?;
                if let Some(record) =
                    self.store.get_record(SNAPSHOT, snapshot_id).await.map_err(|e| internal(store_err(e)))?
                {
                    let mut snapshot: Snapshot = record.decode().map_err(|e| internal(store_err(e)))?;
                    snapshot.state = SnapshotState::Ready;
                    snapshot.size_gb = bytes.div_ceil(1 << 30).max(1);
                    writes.push(Write::PutRecord(Record::new(
                        SNAPSHOT,
                        snapshot.id,
                        Some(snapshot.project_id),
                        &snapshot.name,
                        &snapshot,
                    )));
                }
                result = Some(json!({ "snapshot_id": snapshot_id }));
            }
            Action::RevertSnapshot => {
                self.driver.revert(id, param_uuid(op, "snapshot_id").map_err(internal)?).await?;
            }
            Action::DeleteSnapshot => {
                let snapshot_id = param_uuid(op, "snapshot_id").map_err(internal)?;
                self.driver.delete_snapshot(id, snapshot_id).await?;
                writes.push(Write::DeleteRecord { kind: SNAPSHOT.into(), id: snapshot_id });
            }
            Action::ResetPassword => {
                // Delivered to the guest with the rest of its seed at the next boot.
                let password = InstancePassword {
                    instance_id: id,
                    password: new_password(),
                    expires_at: nimbus_core::now() + PASSWORD_LIFETIME,
                };
                writes.push(Write::PutRecord(Record::new(
                    PASSWORD,
                    id,
                    Some(instance.project_id),
                    "password",
                    &password,
                )));
            }
            Action::EnableTpm => self.driver.enable_tpm(id).await?,
            Action::Suspend => self.driver.suspend(id).await?,
            Action::Resume => self.driver.resume(id).await?,
            Action::Delete => self.driver.destroy(id).await?,
            // The record changed with the operation; placement reads it at the next start.
            Action::ChangeAntiAffinityGroups => {}
        }
        Ok(Outcome::Done { result, writes })
    }

    /// Records the outcome: operation state, the instance's landing state, the lock released, all at once.
    async fn finish(&self, mut op: Operation, outcome: Outcome) -> Result<()> {
        for attempt in 0..64 {
            if attempt > 0 {
                crate::instances::backoff(attempt).await;
            }
            let now = nimbus_core::now();
            let current = self.store.get_instance(op.target.id).await.map_err(store_err)?;
            let mut set = WriteSet::new();
            match &outcome {
                Outcome::Done { result, writes } => {
                    op.state = OperationState::Success;
                    op.result = result.clone();
                    op.reason = None;
                    if let Some(current) = &current {
                        let before = op.state_before.unwrap_or(InstanceState::Stopped);
                        match landing(op.kind, before) {
                            Some(state) => {
                                let mut next = current.clone();
                                next.state = if op.kind == Action::Create
                                    && op.params.get("auto_start").and_then(|v| v.as_bool()) == Some(false)
                                {
                                    InstanceState::Stopped
                                } else {
                                    state
                                };
                                if op.kind == Action::EnableTpm {
                                    next.tpm_enabled = true;
                                }
                                next.lock_operation_id = None;
                                next.generation += 1;
                                next.updated_at = now;
                                set.push(Write::PutInstance {
                                    instance: next.clone(),
                                    expected_generation: Some(current.generation),
                                });
                                set.push(instance_event(&op.actor, "instance.updated", &next));
                            }
                            None => {
                                set.push(Write::DeleteInstance {
                                    id: current.id,
                                    expected_generation: current.generation,
                                });
                                set.push(Write::ReleaseAddresses { instance_id: current.id });
                                set.push(Write::DeleteRecord { kind: PASSWORD.into(), id: current.id });
                                for s in self
                                    .store
                                    .list_records(SNAPSHOT, Some(current.project_id))
                                    .await
                                    .map_err(store_err)?
                                {
                                    if s.decode::<Snapshot>().map(|s| s.instance_id == current.id).unwrap_or(false) {
                                        set.push(Write::DeleteRecord { kind: SNAPSHOT.into(), id: s.id });
                                    }
                                }
                                let mut gone = current.clone();
                                gone.state = InstanceState::Destroyed;
                                set.push(instance_event(&op.actor, "instance.deleted", &gone));
                            }
                        }
                    }
                    for w in writes {
                        set.push(w.clone());
                    }
                }
                Outcome::Failed { state, reason, message } => {
                    op.state = *state;
                    op.reason = Some(*reason);
                    op.message = Some(message.clone());
                    if let Some(current) = &current {
                        let next = self.after_failure(&op, current).await;
                        set.push(Write::PutInstance {
                            instance: next.clone(),
                            expected_generation: Some(current.generation),
                        });
                        set.push(instance_event(&op.actor, "instance.updated", &next));
                        if op.kind == Action::CreateSnapshot {
                            if let Ok(snapshot_id) = param_uuid(&op, "snapshot_id") {
                                set.push(Write::DeleteRecord { kind: SNAPSHOT.into(), id: snapshot_id });
                            }
                        }
                    }
                }
            }
            op.updated_at = now;
            set.push(Write::PutOperation(op.clone()));
            set.push(operation_event("operation.updated", &op));
            match self.store.apply(set).await {
                Ok(()) => {
                    let counter = if op.state == OperationState::Success {
                        &self.metrics.operations_succeeded
                    } else {
                        tracing::warn!(operation = %op.id, kind = %op.kind, message = op.message.as_deref().unwrap_or(""), "operation failed");
                        &self.metrics.operations_failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.wake();
                    return Ok(());
                }
                // A label edit raced with us: read again and re-apply the outcome.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Internal(format!("could not record the outcome of operation {}", op.id)))
    }

    /// The instance after a failed operation: its state is what the host really shows, desired changes that
    /// did not happen are taken back, and the lock is released.
    async fn after_failure(&self, op: &Operation, current: &Instance) -> Instance {
        let mut next = current.clone();
        next.state = match self.driver.inspect(current.id).await {
            Ok(ActualState::Running) => InstanceState::Running,
            Ok(ActualState::Stopped) => InstanceState::Stopped,
            Ok(ActualState::Paused) => InstanceState::Suspended,
            Ok(ActualState::Missing) | Err(_) => InstanceState::Error,
        };
        let p = &op.params;
        match op.kind {
            Action::Scale | Action::ScaleWithRestart => {
                if let Some(from) = p.get("from").and_then(|v| v.as_str()) {
                    if let Ok(t) = self.instance_type(from).await {
                        next.instance_type = t.name;
                        next.vcpus = t.vcpus;
                        next.memory_mib = t.memory_mib;
                        next.gpus = t.gpus;
                        next.system_labels.insert("nimbus.instance-type.family".into(), t.family);
                    }
                }
                if let Some(model) = p.get("from_gpu_model") {
                    next.gpu_model = model.as_str().map(str::to_string);
                }
            }
            Action::ResizeDisk => {
                if let Some(from) = p.get("from").and_then(|v| v.as_u64()) {
                    next.disk_size_gb = from;
                }
            }
            Action::Reset => {
                if let (Some(t), Some(d)) =
                    (p.get("from_template").and_then(|v| v.as_str()), p.get("from_disk").and_then(|v| v.as_u64()))
                {
                    if let Ok(template) = self.template_by_id(Uuid::parse_str(t).unwrap_or_default()).await {
                        next.template_id = template.id;
                        next.template = template.name;
                    }
                    next.disk_size_gb = d;
                }
            }
            _ => {}
        }
        next.lock_operation_id = None;
        next.generation += 1;
        next.updated_at = nimbus_core::now();
        next
    }

    /// Shows a state while the operation goes on (creating -> starting), keeping every other field.
    async fn show_state(&self, id: Uuid, state: InstanceState) -> Result<()> {
        self.mutate_instance(id, |i| i.state = state).await.map(|_| ())
    }

    /// Read-modify-write of an instance by a worker, retried when another writer got there first.
    async fn mutate_instance(&self, id: Uuid, change: impl Fn(&mut Instance)) -> Result<Instance> {
        for attempt in 0..64 {
            if attempt > 0 {
                crate::instances::backoff(attempt).await;
            }
            let current = self
                .store
                .get_instance(id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| DomainError::not_found("instance", id))?;
            let mut next = current.clone();
            change(&mut next);
            next.generation += 1;
            next.updated_at = nimbus_core::now();
            let mut set = WriteSet::new();
            set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
            set.push(instance_event(&nimbus_core::operation::Actor::system(), "instance.updated", &next));
            match self.store.apply(set).await {
                Ok(()) => {
                    self.wake();
                    return Ok(next);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Internal(format!("instance {id} kept changing under the worker")))
    }

    /// Gives the instance an address of the instance network (the same one again after a crash).
    async fn assign_address(&self, instance: Instance) -> Result<Instance> {
        let net = crate::network::Network::parse(&self.config.network_cidr)?;
        let host = self
            .store
            .allocate_address(&self.config.network_cidr, net.first_host(), net.last_host(), instance.id)
            .await
            .map_err(store_err)?;
        let address = net.address(host);
        if instance.ip_addresses.first() == Some(&address) {
            return Ok(instance);
        }
        self.mutate_instance(instance.id, |i| i.ip_addresses = vec![address.clone()]).await
    }

    /// What the driver needs to build and boot this instance, the same for every API.
    pub(crate) async fn spec(&self, instance: &Instance) -> Result<InstanceSpec> {
        use base64::Engine as _;
        let template = self.template_by_id(instance.template_id).await?;
        let user_data = instance
            .user_data
            .as_deref()
            .map(|b64| base64::engine::general_purpose::STANDARD.decode(b64))
            .transpose()
            .map_err(|e| DomainError::Internal(format!("stored user-data is not base64: {e}")))?;
        let password = self
            .store
            .get_record(PASSWORD, instance.id)
            .await
            .map_err(store_err)?
            .and_then(|r| r.decode::<InstancePassword>().ok())
            .map(|p| p.password);
        let net = crate::network::Network::parse(&self.config.network_cidr)?;
        Ok(InstanceSpec {
            id: instance.id,
            name: instance.name.clone(),
            hostname: instance.hostname.clone(),
            vcpus: instance.vcpus,
            memory_mib: instance.memory_mib,
            disk_size_gb: instance.disk_size_gb,
            template,
            user_data,
            ssh_keys: self.public_keys(instance.project_id, &instance.ssh_keys).await?,
            password,
            mac_address: instance.mac_address.clone(),
            ip_address: instance.ip_addresses.first().map(|a| format!("{a}/{}", net.prefix)),
            gateway: Some(net.gateway()),
            tpm: instance.tpm_enabled,
        })
    }
}
