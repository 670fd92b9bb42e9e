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
use nimbus_store::{SqliteStore, Store};

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
    /// Database URL; default: SQLite inside the data dir.
    #[arg(long, env = "NIMBUS_DATABASE")]
    database: Option<String>,
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
    /// qemu driver: where templates live (one directory each, as `guest/build.sh` makes them).
    /// Default: `<data-dir>/templates`.
    #[arg(long, env = "NIMBUS_TEMPLATE_DIR")]
    template_dir: Option<PathBuf>,
    /// sim driver: delay of every action, in milliseconds.
    #[arg(long, default_value_t = 0)]
    sim_delay_ms: u64,
    /// sim driver: delay of one action, ACTION=MILLISECONDS (repeatable), e.g. start=3000.
    #[arg(long = "sim-delay", value_name = "ACTION=MS")]
    sim_delays: Vec<String>,
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
                state_file: Some(args.data_dir.join("sim-host.json")),
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
            let templates = args.template_dir.clone().unwrap_or_else(|| data_dir.join("templates"));
            let mut config = QemuConfig::new(data_dir.join("qemu"), templates);
            config.accel = args.accel.parse().map_err(anyhow::Error::msg)?;
            config.netns = args.netns.clone();
            config.bridge_cidr = format!("{}/{}", network.gateway(), network.prefix);
            let driver = Arc::new(QemuDriver::new(config).await.map_err(|e| anyhow::anyhow!("qemu driver: {e}"))?);
            if driver.templates().await.map(|t| t.is_empty()).unwrap_or(true) {
                tracing::warn!(
                    "no template found; build the stock one with guest/build.sh <data-dir>/templates/busybox"
                );
            }
            Ok((driver.clone(), Some(driver)))
        }
    }
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let url = args.database.clone().unwrap_or_else(|| format!("sqlite://{}/nimbus.db", data_dir.display()));
    if !url.starts_with("sqlite:") {
        anyhow::bail!("unsupported database URL {url:?}: this build has the SQLite store (sqlite://PATH)");
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.with_context(|| format!("opening {url}"))?);
    let (driver, qemu) = build_driver(&args, &data_dir).await?;
    let config = EngineConfig {
        zone: args.zone.clone(),
        network_cidr: args.network_cidr.clone(),
        elastic_ip_cidr: args.elastic_ip_cidr.clone(),
        stop_grace: Duration::from_secs(args.stop_grace_secs),
        reconcile_every: Duration::from_secs(args.reconcile_secs.max(1)),
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
    if let Some(qemu) = qemu {
        // VMs keep running across a control-plane restart; only an empty namespace is removed.
        if let Err(e) = qemu.shutdown().await {
            tracing::warn!(error = %e, "qemu driver shutdown");
        }
    }
    tracing::info!("nimbus server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
}
