//! The application layer. Every API — native or dialect — calls these services and nothing else; only the
//! engine talks to the store and the driver.
//!
//! Flow of a mutating call: a service validates it against the domain rules, then records the desired
//! state, the operation and the events in one store transaction. Any server's worker claims the operation
//! under a lease and runs its kind's saga (`sagas/`), step by idempotent step, and records the outcome.
//! After a crash, the operation's lease expires and another worker (or the restarted server) resumes it
//! where its progress says, or unwinds it once it has been interrupted too often; the reconciler re-aligns
//! records with what the host really runs.
//!
//! Nothing here keeps state another server needs: records, leases, console tickets, idempotency keys and
//! event cursors all live in the store, and every write is a compare-and-swap on a generation. Servers
//! pointed at one PostgreSQL database are interchangeable.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::operation::Actor;
use nimbus_core::tenancy::{ApiKey, Project, Role};
use nimbus_core::DomainError;
use nimbus_driver::Driver;
use nimbus_store::{Store, StoreError};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod console;
pub mod event_stream;
pub mod fleet;
mod host;
pub mod hosts;
pub mod instances;
mod key_cache;
pub mod listings;
pub mod local_agent;
pub mod network;
pub mod networking;
pub mod operations;
mod placement;
mod reconciler;
mod records;
pub mod reserved_addresses;
pub mod resources;
pub mod sagas;
pub mod throttle;
pub mod volume_snapshots;
pub mod volumes;
pub mod web_sessions;
mod worker;

pub use accounts::{AccountPatch, NewAccount};
pub use auth::{BootstrapOutcome, WhoAmI};
pub use console::{ConsoleTicket, CONSOLE_TICKET_LIFETIME};
pub use fleet::LocalHost;
pub use hosts::{AgentRegistration, HostAdminState, HostReport, HostWork, PendingCall, PendingConsole};
pub use instances::{
    ActionRequest, BootVolumeRequest, CreateInstance, InstanceFilter, InstancePatch, InstanceVolume, MAX_DISK_GB,
};
pub use listings::{InstanceOrder, InstanceWindow, NumberedPage, OperationWindow};
pub use networking::{Extensions, PrivateNetworkSpec};
pub use reconciler::UnknownHostInstance;
pub use sagas::import_template::ImportTemplate;
pub use sagas::promote_snapshot::PromoteRequest;
pub use sagas::reboot::is_hard_reboot;
pub use sagas::stop::is_power_off;
pub use sagas::{CrashHook, CrashPoint, CrashWhen};
// The store's and the driver's types the API layer names, so that it depends on the engine alone.
pub use nimbus_driver::InstanceMetrics;
pub use nimbus_store::{IdempotencyClaim, IdempotencyHold};
pub use volume_snapshots::{CreateVolumeSnapshot, VolumeSnapshotPatch};
pub use volumes::{CreateVolume, VolumePatch};

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

#[derive(Clone)]
pub struct EngineConfig {
    pub zone: String,
    /// Further names the operator gives this server's zone. Nimbus has one zone per control plane, but some
    /// clients insist on a name of their own provider's (the `exo` CLI switches to `ch-dk-2` for its
    /// instance-type commands whatever zone it was given), so a dialect that lists zones lists these too.
    pub zone_aliases: Vec<String>,
    /// How long a deleted instance's record is kept, `destroyed` (its `updated_at` the deletion time), for the
    /// providers that show deleted instances for a while (ONET, SF Compute: `terminated`) and the native
    /// API's `?state=destroyed`; zero removes it with the deletion. It holds no address, quota or host.
    pub deleted_retention: Duration,
    /// The instance network: addresses are handed out from it; the driver puts the gateway on its bridge.
    pub network_cidr: String,
    /// The pool elastic IPs are allocated from. It must not overlap `network_cidr`. Nimbus keeps the
    /// bookkeeping (which project holds which address, attached to which instances) and routes nothing:
    /// the default is TEST-NET-2 (RFC 5737), which is never routed, so nobody mistakes it for reachable.
    pub elastic_ip_cidr: String,
    /// The prefix instances take IPv6 addresses from where a provider enables IPv6 (Exoscale's
    /// `public-ip-assignment: dual`). Bookkeeping only, like elastic IPs: the default is the documentation
    /// prefix (RFC 3849), never routed.
    pub ipv6_prefix: String,
    /// How long a stop waits for the guest to power off before forcing it.
    pub stop_grace: Duration,
    /// Operations run at once. Each spends most of its time waiting (on its host, on commits), so this bounds
    /// how many a burst has in flight rather than CPU: at 16, a burst of creates on the sim driver
    /// completed at about half the rate the server accepted them, the rest queuing for claims.
    pub workers: usize,
    /// How often the reconciler compares records with the host.
    pub reconcile_every: Duration,
    /// An interrupted operation is resumed at most this many times before it ends `interrupted`.
    pub max_attempts: u32,
    /// How long a console ticket may be used to open a connection (an open one outlives it).
    pub console_ticket_lifetime: Duration,
    /// This server's name as the holder of operation leases. Keep it across restarts of one server (the
    /// `nimbus server` keeps it in its data dir), so that a restart resumes its operations at once; give
    /// every server its own.
    pub worker_id: String,
    /// How long a claimed operation stays this server's without renewal: after a crash, the time before
    /// another server takes its operations over. Renewed every third of it.
    pub lease: Duration,
    /// How often idle workers look for expired leases.
    pub poll_every: Duration,
    /// Tests only: makes workers die at chosen points of a saga, as if the server had been killed.
    pub crash_hook: Option<CrashHook>,
    /// The name the server's own host registers under when it runs an embedded agent (two servers on one
    /// machine share it: they stand for one host).
    pub host_name: String,
    /// How far hosts may be promised beyond what they have.
    pub overcommit: nimbus_core::host::Overcommit,
    /// A host that has not heartbeat for this long is unreachable.
    pub host_lease: Duration,
    /// How often an agent heartbeats.
    pub heartbeat_every: Duration,
    /// How often an agent reports what runs on its host (with a heartbeat).
    pub report_every: Duration,
    /// How long a driver call waits for a remote host's agent before it fails.
    pub host_call_timeout: Duration,
    /// The base URL agents reach this server at (they bring interactive consoles back to it).
    pub advertise_url: Option<String>,
    /// The base URL clients reach this server at (`--public-url`): absolute URLs in answers are built from
    /// it, never from the Host header a client chose. `None` (in-process tests): the request's Host.
    pub public_url: Option<String>,
    /// Whether anyone may register an account (SharedCloud's `POST /api/v1/auth/register`); an operator's
    /// choice (`--allow-registration`), off by default.
    pub allow_registration: bool,
    /// Sign-ins and registrations allowed per minute from one address and at one account.
    pub attempt_limits: throttle::AttemptLimits,
    /// How long audit entries are kept.
    pub audit_retention: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            zone: "local".into(),
            zone_aliases: Vec::new(),
            deleted_retention: Duration::from_secs(24 * 3600),
            network_cidr: "10.213.0.0/24".into(),
            elastic_ip_cidr: "198.51.100.0/24".into(),
            ipv6_prefix: "2001:db8::/64".into(),
            stop_grace: Duration::from_secs(30),
            workers: 64,
            reconcile_every: Duration::from_secs(5),
            max_attempts: 3,
            console_ticket_lifetime: console::CONSOLE_TICKET_LIFETIME,
            worker_id: format!("nimbus-{}", uuid::Uuid::new_v4().simple()),
            lease: Duration::from_secs(15),
            poll_every: worker::DEFAULT_POLL,
            crash_hook: None,
            host_name: default_host_name(),
            overcommit: nimbus_core::host::Overcommit::default(),
            host_lease: Duration::from_secs(10),
            heartbeat_every: Duration::from_secs(2),
            report_every: Duration::from_secs(5),
            host_call_timeout: Duration::from_secs(600),
            advertise_url: None,
            public_url: None,
            allow_registration: false,
            attempt_limits: throttle::AttemptLimits::default(),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// The machine's host name, the default name of the server's own host.
pub fn default_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into())
}

impl std::fmt::Debug for CrashHookSlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(<crash hook>)" } else { "None" })
    }
}

/// Shows the crash hook in `EngineConfig`'s debug output without requiring `Debug` of a closure.
struct CrashHookSlot<'a>(&'a Option<CrashHook>);

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub operations_started: AtomicU64,
    pub operations_succeeded: AtomicU64,
    pub operations_failed: AtomicU64,
    pub operations_resumed: AtomicU64,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("zone", &self.zone)
            .field("network_cidr", &self.network_cidr)
            .field("elastic_ip_cidr", &self.elastic_ip_cidr)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .field("stop_grace", &self.stop_grace)
            .field("workers", &self.workers)
            .field("reconcile_every", &self.reconcile_every)
            .field("max_attempts", &self.max_attempts)
            .field("worker_id", &self.worker_id)
            .field("host_name", &self.host_name)
            .field("overcommit", &self.overcommit)
            .field("lease", &self.lease)
            .field("crash_hook", &CrashHookSlot(&self.crash_hook))
            .finish()
    }
}

pub struct Engine {
    pub(crate) store: Arc<dyn Store>,
    /// The server's own host, when it runs an embedded agent (single-node mode); `None` for a control plane
    /// whose instances all live on remote agents' hosts.
    pub(crate) local: Option<LocalHost>,
    pub(crate) config: EngineConfig,
    /// The lease holder's name of this server's workers (`EngineConfig::worker_id`).
    pub(crate) worker_id: String,
    /// Hands the turn to claim to one of this server's idle workers (see `worker.rs`).
    pub(crate) kick: Notify,
    /// How many operations this server may run at once (`EngineConfig::workers`): a worker takes a place
    /// before it claims, a request that runs its own operation (see `worker.rs`) takes one before recording it.
    pub(crate) places: Arc<tokio::sync::Semaphore>,
    /// This engine, for the tasks its requests start (set once built).
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<Engine>>,
    /// Set when the engine halts: its background tasks stop.
    halt: watch::Sender<bool>,
    /// Consoles this server waits for agents to bring (see `fleet.rs`).
    pub(crate) console_waiters: fleet::ConsoleWaiters,
    /// The engine's background tasks, aborted by [`Engine::halt`].
    tasks: Mutex<Vec<AbortHandle>>,
    pub metrics: EngineMetrics,
    /// Sign-in and registration limits (see `throttle.rs`).
    pub(crate) throttle: throttle::Throttle,
    /// This server's audit writer (see `audit.rs`).
    pub(crate) audit: audit::AuditLog,
    /// API keys authenticated lately (see `key_cache.rs`).
    pub(crate) keys: key_cache::KeyCache,
    /// Every new event, read once by this server's hub (see `event_stream.rs`).
    pub(crate) events: tokio::sync::broadcast::Sender<Arc<nimbus_core::event::Event>>,
    /// Where this server looks for the next free instance address, and the free ones it read ahead (see
    /// `sagas::create::address_candidate`): hints, never reservations; the store's unique hold decides.
    pub(crate) address_offers: tokio::sync::Mutex<sagas::create::AddressOffers>,
}

impl Engine {
    /// A server whose own host runs `driver` under `config.host_name`: the single-node cloud.
    pub async fn start(store: Arc<dyn Store>, driver: Arc<dyn Driver>, config: EngineConfig) -> Result<Arc<Engine>> {
        let local = LocalHost { name: config.host_name.clone(), driver };
        Engine::start_with(store, Some(local), config).await
    }

    /// Builds the engine, seeds the catalog, takes back the leases an earlier run of this server held,
    /// registers its own host (when it has one; its first report follows in the background) and starts the workers,
    /// the reconciler and the embedded agent. Must be called inside a tokio runtime.
    pub async fn start_with(
        store: Arc<dyn Store>,
        local: Option<LocalHost>,
        config: EngineConfig,
    ) -> Result<Arc<Engine>> {
        network::check_elastic_ip_pool(&config.network_cidr, &config.elastic_ip_cidr)?;
        network::Ipv6Prefix::parse(&config.ipv6_prefix)?;
        let throttle = throttle::Throttle::new(config.attempt_limits);
        let audit_retention = config.audit_retention;
        let engine = Arc::new(Engine {
            store: store.clone(),
            local,
            worker_id: config.worker_id.clone(),
            kick: Notify::new(),
            places: Arc::new(tokio::sync::Semaphore::new(config.workers.max(1))),
            me: std::sync::OnceLock::new(),
            config,
            halt: watch::Sender::new(false),
            console_waiters: Default::default(),
            tasks: Mutex::new(Vec::new()),
            metrics: EngineMetrics::default(),
            throttle,
            audit: audit::AuditLog::start(store.clone(), audit_retention),
            keys: key_cache::KeyCache::new(store.revocations()),
            events: event_stream::channel(),
            address_offers: Default::default(),
        });
        let _ = engine.me.set(Arc::downgrade(&engine));
        engine.seed_catalog().await?;
        engine.release_own_leases().await?;
        // The requests of an earlier run of this server are gone: their idempotency holds that applied
        // nothing are forgotten now, so retries run at once instead of after the holds' leases.
        engine.store.idempotency_sweep(Some(&engine.worker_id)).await.map_err(store_err)?;
        if let Some(local) = &engine.local {
            engine.register_local_host().await?;
            // Reachable at once; what runs there is reported by the embedded agent's first report.
            engine.host_heartbeat(&local.name, None).await?;
        }
        worker::spawn(engine.clone());
        reconciler::spawn(engine.clone());
        event_stream::spawn_hub(&engine);
        if engine.local.is_some() {
            local_agent::spawn(engine.clone());
        }
        Ok(engine)
    }

    /// Stops the engine's workers and reconciler where they are, as a kill would: operations under way keep
    /// their leases and are resumed by whoever holds them next. For a clean stop, call
    /// [`Engine::shutdown`] instead.
    pub fn halt(&self) {
        self.halt.send_replace(true);
        for task in self.tasks.lock().expect("task list").drain(..) {
            task.abort();
        }
    }

    /// Stops the workers and gives their leases back, so that another server (or this one, restarted)
    /// resumes the operations under way at once.
    pub async fn shutdown(&self) {
        self.audit.flush().await;
        self.halt();
        if let Err(e) = self.release_own_leases().await {
            tracing::warn!(error = %e, "could not give leases back at shutdown");
        }
        // Called once the API has stopped serving: no request holds an idempotency key any more.
        if let Err(e) = self.store.idempotency_sweep(Some(&self.worker_id)).await {
            tracing::warn!(error = %e, "could not give idempotency keys back at shutdown");
        }
    }

    pub(crate) fn halted(&self) -> watch::Receiver<bool> {
        self.halt.subscribe()
    }

    pub(crate) fn track(&self, task: AbortHandle) {
        let mut tasks = self.tasks.lock().expect("task list");
        // Operations run by requests' own tasks end by the thousand: the list keeps only the live ones.
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// The driver of the server's own host (`none` for a control plane without one).
    pub fn driver_name(&self) -> &'static str {
        self.local.as_ref().map_or("none", |l| l.driver.name())
    }

    /// What the server's own host is, or, for a control plane without one, a host of nothing.
    pub async fn host_info(&self) -> nimbus_driver::HostInfo {
        match &self.local {
            Some(l) => l.driver.host_info().await,
            None => nimbus_driver::HostInfo {
                name: "none".into(),
                driver: "none".into(),
                accelerator: "none".into(),
                vcpus: 0,
                memory_mib: 0,
                disk_gb: 0,
                gpus: Default::default(),
            },
        }
    }

    /// The IPv6 address an instance shows where its provider enables IPv6 (see `EngineConfig::ipv6_prefix`).
    pub fn ipv6_address(&self, instance: uuid::Uuid) -> std::net::Ipv6Addr {
        // Checked when the engine started.
        let prefix = network::Ipv6Prefix::parse(&self.config.ipv6_prefix).expect("the IPv6 prefix was checked");
        prefix.address_of(instance)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A watch on the store's changes, by any server, already marked seen: read what you need, then wait
    /// on it with [`Engine::wait_for_change`], and no change made after the read is missed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        let mut rx = self.store.changes();
        rx.borrow_and_update();
        rx
    }

    /// Waits until something changed since `changes` was last marked seen, or `timeout` passes; marks it
    /// seen again.
    pub async fn wait_for_change(changes: &mut watch::Receiver<u64>, timeout: Duration) {
        if tokio::time::timeout(timeout, changes.changed()).await.is_err() {
            return;
        }
        changes.borrow_and_update();
    }
}

/// Store failures as the domain sees them. A lost compare-and-swap that survives the retries is a conflict
/// the caller may retry.
pub(crate) fn store_err(e: StoreError) -> DomainError {
    match e {
        StoreError::Conflict(what) => DomainError::Conflict(format!("{what} changed concurrently; retry")),
        StoreError::AlreadyExists(what) => DomainError::Conflict(format!("{what} already exists")),
        StoreError::QuotaExceeded(why) => DomainError::QuotaExceeded(why),
        StoreError::NoRoom(why) => placement::no_room(why),
        StoreError::NotFound(what) => DomainError::NotFound { kind: "resource", id: what },
        StoreError::Backend(msg) => DomainError::Internal(msg),
        StoreError::Unavailable(why) => DomainError::Unavailable(format!("the database: {why}")),
        StoreError::Superseded(why) => DomainError::Conflict(format!("{why}; its answer is the retry's")),
    }
}

/// A driver failure met by a request (not an operation): what the user can do about it.
pub(crate) fn driver_err(e: nimbus_driver::DriverError) -> DomainError {
    use nimbus_driver::DriverError as D;
    match e {
        D::NotFound(id) => DomainError::NotFound { kind: "instance", id: id.to_string() },
        D::Unsupported(m) => DomainError::Unsupported(m),
        D::Invalid(m) => DomainError::Conflict(m),
        D::Unreachable(m) => DomainError::Unavailable(m),
        D::Timeout(m) | D::Failed(m) => DomainError::Internal(m),
    }
}

/// Opaque page tokens: a version, then the last id of the previous page (listings page in id order), so any
/// server can serve the next page and a later Nimbus can change what a token carries without misreading an
/// older one.
pub mod page_token {
    use base64::Engine as _;
    use uuid::Uuid;

    /// What tokens of this version carry: the last id of the previous page.
    const VERSION: u8 = 1;

    pub fn encode(last: Uuid) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(last.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(token: &str) -> crate::Result<Uuid> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok();
        let id = match bytes.as_deref() {
            Some([VERSION, id @ ..]) if id.len() == 16 => Uuid::from_slice(id).ok(),
            // Tokens handed out before tokens had a version: the bare id (16 bytes, never 17).
            Some(id) if id.len() == 16 => Uuid::from_slice(id).ok(),
            _ => None,
        };
        id.ok_or_else(|| nimbus_core::DomainError::invalid("page_token", "not a token this server issued"))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tokens_carry_their_version_and_older_bare_ids_still_read() {
            let id = Uuid::now_v7();
            assert_eq!(decode(&encode(id)).unwrap(), id);
            let bare = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes());
            assert_eq!(decode(&bare).unwrap(), id);
            let future =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([[2u8].as_slice(), id.as_bytes()].concat());
            assert!(decode(&future).is_err() && decode("not a token").is_err());
        }
    }
}

/// A page of results and the token for the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}
