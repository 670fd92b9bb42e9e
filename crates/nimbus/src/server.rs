//! `nimbus server`: wires the store, the driver, the engine and the HTTP API together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use nimbus_driver::{Driver, QemuConfig, QemuDriver, SimConfig, SimDriver};
use nimbus_engine::{BootstrapOutcome, Engine, EngineConfig};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DriverKind {
    /// Real VMs: one QEMU process per instance.
    Qemu,
    /// Simulated host in memory, for tests and scale runs.
    Sim,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to serve the API on.
    #[arg(long, env = "NIMBUS_LISTEN", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Where the database, instance disks and logs live.
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = "nimbus-data")]
    data_dir: PathBuf,
    #[arg(long, env = "NIMBUS_DRIVER", value_enum, default_value = "qemu")]
    driver: DriverKind,
    /// Database URL: `sqlite://PATH` (default: SQLite inside the data dir, for one server) or
    /// `postgres://USER@HOST:PORT/DB` (any number of servers, each with its own data dir, share it).
    #[arg(long, env = "NIMBUS_DATABASE")]
    database: Option<String>,
    /// Seconds an operation stays with this server without renewal: after a crash, how long before
    /// another server on the same database takes its operations over.
    #[arg(long, default_value_t = 15)]
    lease_secs: u64,
    /// Name of the zone this server serves.
    #[arg(long, default_value = "local")]
    zone: String,
    /// The instance network (lives inside Nimbus's own network namespace with the qemu driver).
    #[arg(long, default_value = "10.213.0.0/24")]
    network_cidr: String,
    /// The pool elastic IPs are allocated from; must not overlap --network-cidr. Bookkeeping only: Nimbus
    /// routes nothing to these addresses (the default is TEST-NET-2, never routed).
    #[arg(long, default_value = "198.51.100.0/24")]
    elastic_ip_cidr: String,
    /// Seconds a stop waits for the guest to power off before forcing it.
    #[arg(long, default_value_t = 30)]
    stop_grace_secs: u64,
    /// Seconds between reconciler passes.
    #[arg(long, default_value_t = 5)]
    reconcile_secs: u64,
    /// qemu driver: accelerator (auto probes KVM and falls back to TCG).
    #[arg(long, env = "NIMBUS_ACCEL", default_value = "auto")]
    accel: String,
    /// qemu driver: the network namespace Nimbus creates for instance networks.
    #[arg(long, env = "NIMBUS_NETNS", default_value = "nimbus")]
    netns: String,
    /// qemu driver: where templates live (one directory each), shared by the servers of this host. Default:
    /// /var/lib/nimbus/templates (as root), outside any data dir. When it holds no template at start, the
    /// server builds the stock `busybox` one there.
    #[arg(long, env = "NIMBUS_TEMPLATE_DIR")]
    template_dir: Option<PathBuf>,
    /// sim driver: delay of every action, in milliseconds.
    #[arg(long, default_value_t = 0)]
    sim_delay_ms: u64,
    /// sim driver: delay of one action, ACTION=MILLISECONDS (repeatable), e.g. start=3000.
    #[arg(long = "sim-delay", value_name = "ACTION=MS")]
    sim_delays: Vec<String>,
    /// sim driver: where the simulated host keeps its VMs (default `<data-dir>/sim-host`). Servers that
    /// stand for one host share it, as they would share a real host's disks.
    #[arg(long)]
    sim_state_dir: Option<PathBuf>,
    /// sim driver: fail the next N calls of ACTION, ACTION=N (repeatable), e.g. start=1.
    #[arg(long = "sim-fail", value_name = "ACTION=N")]
    sim_failures: Vec<String>,
}

pub fn run(args: ServerArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The driver, and the qemu driver again when it is one, for its clean-shutdown duties.
async fn build_driver(
    args: &ServerArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn Driver>, Option<Arc<QemuDriver>>)> {
    match args.driver {
        DriverKind::Sim => {
            let mut config = SimConfig {
                delay: Duration::from_millis(args.sim_delay_ms),
                state_dir: Some(args.sim_state_dir.clone().unwrap_or_else(|| data_dir.join("sim-host"))),
                ..Default::default()
            };
            for (action, ms) in SimConfig::parse_pairs(&args.sim_delays).map_err(anyhow::Error::msg)? {
                config.action_delays.insert(action, Duration::from_millis(ms));
            }
            for (action, n) in SimConfig::parse_pairs(&args.sim_failures).map_err(anyhow::Error::msg)? {
                config.failures.insert(action, n as u32);
            }
            tracing::warn!("running the sim driver: instances are simulated, no VM boots");
            Ok((Arc::new(SimDriver::new(config)), None))
        }
        DriverKind::Qemu => {
            let network = nimbus_engine::network::Network::parse(&args.network_cidr)
                .map_err(|e| anyhow::anyhow!("--network-cidr: {e}"))?;
            let templates = args.template_dir.clone().unwrap_or_else(crate::guest::default_template_dir);
            if !crate::guest::has_templates(&templates) {
                // A new cloud is never one without images.
                tracing::info!(dir = %templates.display(), "no template found; building the stock busybox template");
                let dir = templates.clone();
                match tokio::task::spawn_blocking(move || crate::guest::build("busybox", &dir, None)).await? {
                    Ok(()) => tracing::info!("built the busybox template"),
                    Err(e) => tracing::error!("cannot build the busybox template (see guest/packages.txt): {e}"),
                }
            }
            let mut config = QemuConfig::new(data_dir.join("qemu"), templates);
            config.accel = args.accel.parse().map_err(anyhow::Error::msg)?;
            config.netns = args.netns.clone();
            config.bridge_cidr = format!("{}/{}", network.gateway(), network.prefix);
            let driver = Arc::new(QemuDriver::new(config).await.map_err(|e| anyhow::anyhow!("qemu driver: {e}"))?);
            if driver.templates().await.map(|t| t.is_empty()).unwrap_or(true) {
                tracing::warn!("no template found; build one with `nimbus template build busybox`");
            }
            Ok((driver.clone(), Some(driver)))
        }
    }
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    // One server per data dir: its id (below) names the leases it holds, and two processes sharing it would
    // take each other's operations. The lock goes with the process, however it ends.
    let lock = std::fs::File::create(data_dir.join("server.lock"))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!("another nimbus server uses {}; give each server its own --data-dir", data_dir.display())
    })?;
    let url = args.database.clone().unwrap_or_else(|| format!("sqlite://{}/nimbus.db", data_dir.display()));
    if !(url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        anyhow::bail!("unsupported database URL {url:?}: use sqlite://PATH or postgres://...");
    }
    let store = nimbus_store::open(&url).await.with_context(|| format!("opening {}", redact(&url)))?;
    let (driver, qemu) = build_driver(&args, &data_dir).await?;
    let config = EngineConfig {
        zone: args.zone.clone(),
        network_cidr: args.network_cidr.clone(),
        elastic_ip_cidr: args.elastic_ip_cidr.clone(),
        stop_grace: Duration::from_secs(args.stop_grace_secs),
        reconcile_every: Duration::from_secs(args.reconcile_secs.max(1)),
        worker_id: server_id(&data_dir)?,
        lease: Duration::from_secs(args.lease_secs.max(3)),
        ..Default::default()
    };
    nimbus_engine::network::Network::parse(&config.network_cidr).map_err(|e| anyhow::anyhow!("--network-cidr: {e}"))?;
    let engine = Engine::start(store, driver, config).await.map_err(|e| anyhow::anyhow!("starting the engine: {e}"))?;

    let bootstrap_key = match (std::env::var("NIMBUS_BOOTSTRAP_KEY"), std::env::var("NIMBUS_BOOTSTRAP_SECRET")) {
        (Ok(k), Ok(s)) if !k.is_empty() && !s.is_empty() => Some((k, s)),
        _ => None,
    };
    match engine.bootstrap(bootstrap_key).await.map_err(|e| anyhow::anyhow!("bootstrap: {e}"))? {
        BootstrapOutcome::AlreadyBootstrapped => {}
        BootstrapOutcome::FromEnvironment { key_id } => {
            tracing::info!(%key_id, "created the first admin key from NIMBUS_BOOTSTRAP_KEY/NIMBUS_BOOTSTRAP_SECRET")
        }
        BootstrapOutcome::Generated { key_id, secret } => {
            // Printed once, to stdout, so that it can be captured; it is never shown again.
            println!("Created the first admin API key. Save the secret now: it will not be shown again.");
            println!("  NIMBUS_KEY={key_id}");
            println!("  NIMBUS_TOKEN={secret}");
        }
    }

    let app = nimbus_api::router(nimbus_api::AppState::new(engine.clone()));
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, driver = engine.driver_name(), data_dir = %data_dir.display(), "nimbus server ready");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Operations under way are left where they are, their leases given back: this server resumes them
    // when it starts again, or another server on the same database does now.
    engine.shutdown().await;
    drop(lock);
    if let Some(qemu) = qemu {
        // VMs keep running across a control-plane restart; only an empty namespace is removed.
        if let Err(e) = qemu.shutdown().await {
            tracing::warn!(error = %e, "qemu driver shutdown");
        }
    }
    tracing::info!("nimbus server stopped");
    Ok(())
}

/// This server's lasting name as a holder of operation leases, kept in its data dir so that a restart
/// resumes its own operations at once.
fn server_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("server-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_string());
        }
    }
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let id = format!("{}-{}", host.trim(), uuid::Uuid::new_v4().simple());
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
}
