//! The application layer. Every API — native or dialect — calls these services and nothing else; only the
//! engine talks to the store and the driver.
//!
//! Flow of a mutating call: a service validates it against the domain rules, then records the desired
//! state, the operation and the events in one store transaction, and wakes the workers. A worker runs the
//! operation's driver steps and records the outcome. After a crash, unfinished operations are resumed
//! (every driver step is idempotent) or end `interrupted`, and the reconciler re-aligns records with what
//! the host really runs.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::operation::Actor;
use nimbus_core::tenancy::{ApiKey, Project, Role};
use nimbus_core::DomainError;
use nimbus_driver::Driver;
use nimbus_store::{Store, StoreError};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

pub mod accounts;
pub mod auth;
pub mod catalog;
pub mod console;
pub mod instances;
pub mod network;
pub mod networking;
pub mod operations;
mod reconciler;
pub mod resources;
mod worker;

pub use accounts::{AccountPatch, NewAccount};
pub use auth::{BootstrapOutcome, WhoAmI};
pub use console::{ConsoleTicket, CONSOLE_TICKET_LIFETIME};
pub use instances::{ActionRequest, CreateInstance, InstanceFilter, InstancePatch};
pub use networking::PrivateNetworkSpec;

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

/// Who is calling, established by the API layer's authentication.
#[derive(Debug, Clone)]
pub struct Context {
    pub key: ApiKey,
    pub project: Project,
    pub actor: Actor,
}

impl Context {
    pub fn role(&self) -> Role {
        self.key.role
    }

    /// Refuses the call unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<()> {
        if self.key.role >= role {
            Ok(())
        } else {
            Err(DomainError::Forbidden(format!(
                "API key {} has role {}, this needs {}",
                self.key.key_id,
                self.key.role.as_str(),
                role.as_str()
            )))
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub zone: String,
    /// The instance network: addresses are handed out from it; the driver puts the gateway on its bridge.
    pub network_cidr: String,
    /// The pool elastic IPs are allocated from. It must not overlap `network_cidr`. Nimbus keeps the
    /// bookkeeping (which project holds which address, attached to which instances) and routes nothing:
    /// the default is TEST-NET-2 (RFC 5737), which is never routed, so nobody mistakes it for reachable.
    pub elastic_ip_cidr: String,
    /// How long a stop waits for the guest to power off before forcing it.
    pub stop_grace: Duration,
    /// Operations run at once.
    pub workers: usize,
    /// How often the reconciler compares records with the host.
    pub reconcile_every: Duration,
    /// An interrupted operation is resumed at most this many times before it ends `interrupted`.
    pub max_attempts: u32,
    /// How long a console ticket may be used to open a connection (an open one outlives it).
    pub console_ticket_lifetime: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            zone: "local".into(),
            network_cidr: "10.213.0.0/24".into(),
            elastic_ip_cidr: "198.51.100.0/24".into(),
            stop_grace: Duration::from_secs(30),
            workers: 16,
            reconcile_every: Duration::from_secs(5),
            max_attempts: 3,
            console_ticket_lifetime: console::CONSOLE_TICKET_LIFETIME,
        }
    }
}

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub operations_started: AtomicU64,
    pub operations_succeeded: AtomicU64,
    pub operations_failed: AtomicU64,
    pub operations_resumed: AtomicU64,
}

pub struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) config: EngineConfig,
    pub(crate) queue: mpsc::UnboundedSender<Uuid>,
    /// Woken on every stored change: operation waiters and event streams.
    pub(crate) changed: Notify,
    /// Serializes read-modify-write of project resource records (security group rules, private network
    /// leases, elastic IP attachments): records have no compare-and-swap, and one process owns the store.
    pub(crate) resource_writes: tokio::sync::Mutex<()>,
    pub metrics: EngineMetrics,
}

impl Engine {
    /// Builds the engine, seeds the catalog, recovers unfinished operations and starts the workers and the
    /// reconciler. Must be called inside a tokio runtime.
    pub async fn start(store: Arc<dyn Store>, driver: Arc<dyn Driver>, config: EngineConfig) -> Result<Arc<Engine>> {
        network::check_elastic_ip_pool(&config.network_cidr, &config.elastic_ip_cidr)?;
        let (queue, rx) = mpsc::unbounded_channel();
        let engine = Arc::new(Engine {
            store,
            driver,
            config,
            queue,
            changed: Notify::new(),
            resource_writes: tokio::sync::Mutex::new(()),
            metrics: EngineMetrics::default(),
        });
        engine.seed_catalog().await?;
        engine.recover().await?;
        worker::spawn(engine.clone(), rx);
        reconciler::spawn(engine.clone());
        Ok(engine)
    }

    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    pub async fn host_info(&self) -> nimbus_driver::HostInfo {
        self.driver.host_info().await
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Waits until something changes in the store, or `timeout` passes.
    pub async fn changed(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }
}

/// Store failures as the domain sees them. A lost compare-and-swap that survives the retries is a conflict
/// the caller may retry.
pub(crate) fn store_err(e: StoreError) -> DomainError {
    match e {
        StoreError::Conflict(what) => DomainError::Conflict(format!("{what} changed concurrently; retry")),
        StoreError::AlreadyExists(what) => DomainError::Conflict(format!("{what} already exists")),
        StoreError::QuotaExceeded(why) => DomainError::QuotaExceeded(why),
        StoreError::NotFound(what) => DomainError::NotFound { kind: "resource", id: what },
        StoreError::Backend(msg) => DomainError::Internal(msg),
    }
}

/// Opaque page tokens: the last id of the previous page, so any server can serve the next one.
pub mod page_token {
    use base64::Engine as _;
    use uuid::Uuid;

    pub fn encode(last: Uuid) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.as_bytes())
    }

    pub fn decode(token: &str) -> crate::Result<Uuid> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| Uuid::from_slice(&b).ok())
            .ok_or_else(|| nimbus_core::DomainError::invalid("page_token", "not a token this server issued"))
    }
}

/// A page of results and the token for the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}
