//! Where each instance's driver steps run: on the server's own host through its embedded agent's driver,
//! directly; on any other host through its agent, which pulls the calls queued for it from the store.
//!
//! A remote call is a record (`host_call`, named after the host) holding a [`DriverCall`]; the host's agent
//! lists its host's calls (through any API server), runs each with its driver and writes the reply into the
//! record; the caller, waiting on the store's change counter, reads the reply and removes the record. Calls
//! are idempotent like every driver step, so an agent that restarts and runs a call again, or a caller that
//! is replaced by another server and queues the call again, converge. A host whose heartbeat lease ran out
//! answers nothing: its calls fail at once as `Unreachable`, except `destroy`, which succeeds (the record
//! goes; what the host keeps is removed as a leftover when it comes back).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::catalog::Template;
use nimbus_core::instance::Instance;
use nimbus_driver::call::{decode, DriverCall, DriverReply};
use nimbus_driver::{
    ActualState, ConsoleStream, Driver, DriverError, DriverResult, GuestInterface, HostInfo, InstanceMetrics,
    InstanceSpec, TemplateImport, TemplateRegistration,
};
use nimbus_store::{Record, Store, StoreError, Write, WriteSet};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Engine;

pub(crate) const HOST_CALL: &str = "host_call";
/// A request for a host's agent to carry an instance's interactive console to this server.
pub(crate) const CONSOLE_SESSION: &str = "console_session";

/// The consoles this server is waiting for a host's agent to bring (by session id). A console is a live
/// connection between one user and one agent through this server, so the wait is this server's alone.
pub(crate) type ConsoleWaiters =
    Arc<std::sync::Mutex<std::collections::HashMap<Uuid, tokio::sync::oneshot::Sender<ConsoleStream>>>>;

/// What the store keeps of a console session: the instance, and the server the agent must connect to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleSession {
    pub instance_id: Uuid,
    /// The base URL of the server waiting for it (`/v1/agent/console/{session}` there).
    pub server_url: String,
}

/// The server's own host: its name and the driver its embedded agent runs.
#[derive(Clone)]
pub struct LocalHost {
    pub name: String,
    pub driver: Arc<dyn Driver>,
}

/// What the store keeps of a call to a host's agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostCallRecord {
    pub call: DriverCall,
    /// Set by the agent when it has run the call.
    #[serde(default)]
    pub reply: Option<DriverReply>,
}

impl Engine {
    /// The driver of the host `host` (the local one directly, any other through its agent).
    pub(crate) fn host_driver(&self, host: &str) -> Arc<dyn Driver> {
        match &self.local {
            Some(local) if local.name == host => local.driver.clone(),
            _ => Arc::new(self.remote(host)),
        }
    }

    fn remote(&self, host: &str) -> RemoteDriver {
        RemoteDriver {
            store: self.store.clone(),
            host: host.to_string(),
            timeout: self.config.host_call_timeout,
            console_waiters: self.console_waiters.clone(),
            server_url: self.config.advertise_url.clone(),
        }
    }

    /// Hands the console stream an agent brought for session `id` to the request waiting for it on this
    /// server. `NotFound` when nothing waits here (it timed out, or the agent connected to another server).
    pub fn attach_console(&self, host: &str, id: Uuid, stream: ConsoleStream) -> crate::Result<()> {
        let waiter = self.console_waiters.lock().expect("console waiters").remove(&id);
        match waiter {
            Some(tx) => tx.send(stream).map_err(|_| nimbus_core::DomainError::not_found("console session", id)),
            None => {
                tracing::warn!(host, session = %id, "an agent brought a console nobody waits for here");
                Err(nimbus_core::DomainError::not_found("console session", id))
            }
        }
    }

    /// The driver of the host an instance is placed on. An instance placed before hosts existed lives on
    /// the server's own host.
    pub(crate) fn driver_of(&self, instance: &Instance) -> Arc<dyn Driver> {
        match (&instance.host, &self.local) {
            (Some(h), _) => self.host_driver(h),
            (None, Some(local)) => local.driver.clone(),
            (None, None) => Arc::new(self.remote("")),
        }
    }
}

/// A host's driver reached through its agent (see the module's documentation).
struct RemoteDriver {
    store: Arc<dyn Store>,
    host: String,
    timeout: Duration,
    console_waiters: ConsoleWaiters,
    /// Where this server is reached by agents: consoles come back there.
    server_url: Option<String>,
}

fn store_failure(e: StoreError) -> DriverError {
    DriverError::Failed(format!("the store failed while calling a host: {e}"))
}

impl RemoteDriver {
    fn unreachable(&self) -> DriverError {
        if self.host.is_empty() {
            return DriverError::Unreachable("the instance is placed on no host".into());
        }
        DriverError::Unreachable(format!("host {} does not answer (its agent missed its heartbeats)", self.host))
    }

    async fn reachable(&self) -> DriverResult<bool> {
        Ok(self.store.get_host(&self.host).await.map_err(store_failure)?.is_some_and(|h| h.reachable))
    }

    /// Queues `call` for the host's agent and waits for its reply.
    async fn call(&self, call: DriverCall) -> DriverReply {
        if !self.reachable().await? {
            return Err(self.unreachable());
        }
        let id = nimbus_core::new_id();
        let record = Record::new(HOST_CALL, id, None, &self.host, &HostCallRecord { call, reply: None });
        let mut set = WriteSet::new();
        set.push(Write::InsertRecord(record));
        let mut changes = self.store.changes();
        changes.borrow_and_update();
        self.store.apply(set).await.map_err(store_failure)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last_check = tokio::time::Instant::now();
        let outcome = loop {
            if let Some(r) = self.store.get_record(HOST_CALL, id).await.map_err(store_failure)? {
                let body: HostCallRecord = r.decode().map_err(store_failure)?;
                if let Some(reply) = body.reply {
                    break reply;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break Err(DriverError::Timeout(format!(
                    "host {} did not answer within {:?}",
                    self.host, self.timeout
                )));
            }
            // The host may die while the call waits: look every few seconds.
            if now.duration_since(last_check) > Duration::from_secs(2) {
                last_check = now;
                if !self.reachable().await? {
                    break Err(self.unreachable());
                }
            }
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_secs(1)), changes.changed()).await;
            changes.borrow_and_update();
        };
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: HOST_CALL.into(), id, expected_generation: None });
        if let Err(e) = self.store.apply(set).await {
            tracing::warn!(call = %id, error = %e, "could not remove an answered host call");
        }
        outcome
    }
}

#[async_trait]
impl Driver for RemoteDriver {
    fn name(&self) -> &'static str {
        "remote"
    }

    async fn host_info(&self) -> HostInfo {
        match self.call(DriverCall::HostInfo).await.and_then(|v| decode(Ok(v))) {
            Ok(info) => info,
            Err(_) => HostInfo {
                name: self.host.clone(),
                driver: "unknown".into(),
                accelerator: "unknown".into(),
                vcpus: 0,
                memory_mib: 0,
                disk_gb: 0,
                gpus: Default::default(),
            },
        }
    }

    async fn templates(&self) -> DriverResult<Vec<TemplateRegistration>> {
        decode(self.call(DriverCall::Templates).await)
    }

    async fn create(&self, spec: &InstanceSpec) -> DriverResult<()> {
        decode(self.call(DriverCall::Create { spec: spec.clone() }).await)
    }

    async fn start(&self, spec: &InstanceSpec) -> DriverResult<()> {
        decode(self.call(DriverCall::Start { spec: spec.clone() }).await)
    }

    async fn stop(&self, id: Uuid, grace: Duration) -> DriverResult<()> {
        decode(self.call(DriverCall::Stop { id, grace_ms: grace.as_millis() as u64 }).await)
    }

    async fn reboot(&self, spec: &InstanceSpec) -> DriverResult<()> {
        decode(self.call(DriverCall::Reboot { spec: spec.clone() }).await)
    }

    async fn reinstall(&self, spec: &InstanceSpec) -> DriverResult<()> {
        decode(self.call(DriverCall::Reinstall { spec: spec.clone() }).await)
    }

    async fn resize_disk(&self, id: Uuid, size_gb: u64) -> DriverResult<()> {
        decode(self.call(DriverCall::ResizeDisk { id, size_gb }).await)
    }

    async fn disk_size_gb(&self, id: Uuid) -> DriverResult<u64> {
        decode(self.call(DriverCall::DiskSizeGb { id }).await)
    }

    async fn snapshots(&self, id: Uuid) -> DriverResult<Vec<Uuid>> {
        decode(self.call(DriverCall::Snapshots { id }).await)
    }

    async fn snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<u64> {
        decode(self.call(DriverCall::Snapshot { id, snapshot_id }).await)
    }

    async fn revert(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::Revert { id, snapshot_id }).await)
    }

    async fn delete_snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::DeleteSnapshot { id, snapshot_id }).await)
    }

    async fn destroy(&self, id: Uuid) -> DriverResult<()> {
        match self.call(DriverCall::Destroy { id }).await {
            // Deleting an instance of a lost host succeeds: its leftovers go when the host comes back.
            Err(DriverError::Unreachable(_)) => Ok(()),
            other => decode(other),
        }
    }

    async fn inspect(&self, id: Uuid) -> DriverResult<ActualState> {
        decode(self.call(DriverCall::Inspect { id }).await)
    }

    async fn instances(&self) -> DriverResult<Vec<Uuid>> {
        decode(self.call(DriverCall::Instances).await)
    }

    async fn console(&self, id: Uuid) -> DriverResult<String> {
        decode(self.call(DriverCall::Console { id }).await)
    }

    async fn metrics(&self, id: Uuid) -> DriverResult<InstanceMetrics> {
        decode(self.call(DriverCall::Metrics { id }).await)
    }

    async fn guest_interfaces(&self, id: Uuid) -> DriverResult<Vec<GuestInterface>> {
        decode(self.call(DriverCall::GuestInterfaces { id }).await)
    }

    async fn import_template(&self, request: &TemplateImport) -> DriverResult<Template> {
        decode(self.call(DriverCall::ImportTemplate { request: request.clone() }).await)
    }

    async fn promote_snapshot(
        &self,
        id: Uuid,
        snapshot_id: Uuid,
        template_id: Uuid,
        name: &str,
    ) -> DriverResult<Template> {
        decode(self.call(DriverCall::PromoteSnapshot { id, snapshot_id, template_id, name: name.into() }).await)
    }

    async fn remove_template(&self, template_id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::RemoveTemplate { template_id }).await)
    }

    async fn create_volume(&self, volume: &nimbus_driver::VolumeSpec) -> DriverResult<()> {
        decode(self.call(DriverCall::CreateVolume { volume: volume.clone() }).await)
    }

    async fn create_volume_from_snapshot(
        &self,
        volume: &nimbus_driver::VolumeSpec,
        source: Uuid,
        snapshot_id: Uuid,
    ) -> DriverResult<()> {
        decode(self.call(DriverCall::CreateVolumeFromSnapshot { volume: volume.clone(), source, snapshot_id }).await)
    }

    async fn create_volume_from_template(
        &self,
        volume: &nimbus_driver::VolumeSpec,
        template: &nimbus_core::catalog::Template,
    ) -> DriverResult<()> {
        let call = DriverCall::CreateVolumeFromTemplate { volume: volume.clone(), template: template.clone() };
        decode(self.call(call).await)
    }

    async fn delete_volume(&self, volume_id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::DeleteVolume { volume_id }).await)
    }

    async fn resize_volume(&self, volume_id: Uuid, size_gb: u64, attached_to: Option<Uuid>) -> DriverResult<()> {
        decode(self.call(DriverCall::ResizeVolume { volume_id, size_gb, attached_to }).await)
    }

    async fn volume_size_gb(&self, volume_id: Uuid) -> DriverResult<u64> {
        decode(self.call(DriverCall::VolumeSizeGb { volume_id }).await)
    }

    async fn attach_volume(&self, id: Uuid, volume: &nimbus_driver::VolumeSpec) -> DriverResult<()> {
        decode(self.call(DriverCall::AttachVolume { id, volume: volume.clone() }).await)
    }

    async fn detach_volume(&self, id: Uuid, volume_id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::DetachVolume { id, volume_id }).await)
    }

    async fn volumes(&self) -> DriverResult<Vec<Uuid>> {
        decode(self.call(DriverCall::Volumes).await)
    }

    async fn snapshot_volume(&self, volume_id: Uuid, snapshot_id: Uuid, attached_to: Option<Uuid>) -> DriverResult<()> {
        decode(self.call(DriverCall::SnapshotVolume { volume_id, snapshot_id, attached_to }).await)
    }

    async fn revert_volume(&self, volume_id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::RevertVolume { volume_id, snapshot_id }).await)
    }

    async fn delete_volume_snapshot(&self, volume_id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::DeleteVolumeSnapshot { volume_id, snapshot_id }).await)
    }

    async fn volume_snapshots(&self, volume_id: Uuid) -> DriverResult<Vec<Uuid>> {
        decode(self.call(DriverCall::VolumeSnapshots { volume_id }).await)
    }

    async fn read_volume(&self, volume_id: Uuid, offset: u64, len: u64) -> DriverResult<nimbus_driver::VolumeChunk> {
        decode(self.call(DriverCall::ReadVolume { volume_id, offset, len }).await)
    }

    async fn write_volume(&self, volume_id: Uuid, chunk: &nimbus_driver::VolumeChunk) -> DriverResult<()> {
        decode(self.call(DriverCall::WriteVolume { volume_id, chunk: chunk.clone() }).await)
    }

    // Byte streams to an instance's ports, and files for download, do not cross the agent's link yet (only
    // the serial console does).
    async fn connect(&self, _id: Uuid, _address: &str, _port: u16) -> DriverResult<ConsoleStream> {
        Err(DriverError::Unsupported(format!(
            "tunnels to instances of host {} (reached through its agent) are not supported yet; use the console",
            self.host
        )))
    }

    async fn export_snapshot(&self, _id: Uuid, _snapshot_id: Uuid) -> DriverResult<String> {
        Err(DriverError::Unsupported(format!(
            "snapshots of instances of host {} (reached through its agent) cannot be exported yet; promote it instead",
            self.host
        )))
    }

    async fn suspend(&self, id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::Suspend { id }).await)
    }

    async fn resume(&self, id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::Resume { id }).await)
    }

    fn supports_tpm(&self) -> bool {
        false
    }

    async fn enable_tpm(&self, id: Uuid) -> DriverResult<()> {
        decode(self.call(DriverCall::EnableTpm { id }).await)
    }

    /// Asks the host's agent to bring the console to this server: a session record the agent lists with its
    /// calls, and a wait here for the agent's connection (`Engine::attach_console`).
    async fn console_stream(&self, id: Uuid) -> DriverResult<ConsoleStream> {
        let Some(server_url) = self.server_url.clone() else {
            return Err(DriverError::Unsupported(
                "this server has no address agents reach it at (--advertise-url), so it cannot carry consoles".into(),
            ));
        };
        if !self.reachable().await? {
            return Err(self.unreachable());
        }
        let session = Uuid::new_v4();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.console_waiters.lock().expect("console waiters").insert(session, tx);
        let record =
            Record::new(CONSOLE_SESSION, session, None, &self.host, &ConsoleSession { instance_id: id, server_url });
        let mut set = WriteSet::new();
        set.push(Write::InsertRecord(record));
        let outcome = match self.store.apply(set).await {
            Ok(()) => match tokio::time::timeout(Duration::from_secs(15), rx).await {
                Ok(Ok(stream)) => Ok(stream),
                _ => Err(DriverError::Timeout(format!("host {} did not bring the console", self.host))),
            },
            Err(e) => Err(store_failure(e)),
        };
        self.console_waiters.lock().expect("console waiters").remove(&session);
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: CONSOLE_SESSION.into(), id: session, expected_generation: None });
        let _ = self.store.apply(set).await;
        outcome
    }
}
