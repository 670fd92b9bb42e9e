//! `nimbus server`: wires the store, the driver, the engine and the HTTP API together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use nimbus_engine::{BootstrapOutcome, Engine, EngineConfig, LocalHost};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to serve the API on.
    #[arg(long, env = "NIMBUS_LISTEN", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Where the database, instance disks and logs live.
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = "nimbus-data")]
    data_dir: PathBuf,
    /// Database URL: `sqlite://PATH` (default: SQLite inside the data dir, for one server) or
    /// `postgres://USER@HOST:PORT/DB` (any number of servers, each with its own data dir, share it).
    #[arg(long, env = "NIMBUS_DATABASE")]
    database: Option<String>,
    /// Seconds an operation stays with this server without renewal: after a crash, how long before
    /// another server on the same database takes its operations over.
    #[arg(long, default_value_t = 15)]
    lease_secs: u64,
    /// How many operations this server runs at once (each waits on its host and on the database).
    #[arg(long, default_value_t = nimbus_engine::EngineConfig::default().workers)]
    workers: usize,
    /// Name of the zone this server serves; repeat it to give the zone more names (the first is the one
    /// hosts register with, the others are names clients may ask for: the `exo` CLI wants `ch-dk-2`).
    #[arg(long = "zone", default_values_t = vec!["local".to_string()])]
    zones: Vec<String>,
    /// How long a deleted instance stays listed as `terminated` by the dialects whose provider shows deleted
    /// instances (ONET, SF Compute) and under the native `?state=destroyed`: a number with `s`, `m`, `h` or
    /// `d` (`0`: removed with the deletion).
    #[arg(long, default_value = "24h", value_parser = parse_retention)]
    deleted_retention: Duration,
    /// How long the audit log (GET /v1/audit) keeps an entry: a number with `s`, `m`, `h` or `d`.
    #[arg(long, default_value = "90d", value_parser = parse_retention)]
    audit_retention: Duration,
    /// The instance network (lives inside Nimbus's own network namespace with the qemu driver).
    #[arg(long, default_value = "10.213.0.0/24")]
    network_cidr: String,
    /// The pool elastic IPs are allocated from; must not overlap --network-cidr. Bookkeeping only: Nimbus
    /// routes nothing to these addresses (the default is TEST-NET-2, never routed).
    #[arg(long, default_value = "198.51.100.0/24")]
    elastic_ip_cidr: String,
    /// The IPv6 prefix (/64 or shorter) instances take addresses from where a dialect enables IPv6
    /// (Exoscale's `public-ip-assignment: dual`). Bookkeeping only (the default is the documentation
    /// prefix, never routed).
    #[arg(long, default_value = "2001:db8::/64")]
    ipv6_prefix: String,
    /// Seconds a stop waits for the guest to power off before forcing it.
    #[arg(long, default_value_t = 30)]
    stop_grace_secs: u64,
    /// Seconds between reconciler passes.
    #[arg(long, default_value_t = 5)]
    reconcile_secs: u64,
    #[command(flatten)]
    host: crate::host::DriverArgs,
    /// Run no embedded agent: this server is a control plane only, and every instance lives on a host
    /// whose `nimbus agent` registered (see `nimbus host token create`).
    #[arg(long)]
    no_local_agent: bool,
    /// The name this server's own host registers under (default: the machine's hostname; servers on one
    /// machine share it and stand for one host).
    #[arg(long, env = "NIMBUS_HOST_NAME")]
    host_name: Option<String>,
    /// How many vCPUs a host may promise per CPU it has.
    #[arg(long, default_value_t = 16.0)]
    cpu_overcommit: f64,
    /// How much memory a host may promise per MiB it has.
    #[arg(long, default_value_t = 1.5)]
    memory_overcommit: f64,
    /// The base URL agents reach this server at, for the interactive consoles they bring back to it
    /// (default: `http://` and --listen, `https://` with --tls-cert).
    #[arg(long, env = "NIMBUS_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Seconds without a heartbeat before a host is unreachable and its instances `unknown`.
    #[arg(long, default_value_t = 10)]
    host_timeout_secs: u64,
    /// The base URL clients reach the API at (console URLs, Exoscale's zone endpoints and page links are
    /// built from it, never from a request's Host header). Default: `http://` and --listen (the machine's
    /// name when --listen is a wildcard address).
    #[arg(long, env = "NIMBUS_PUBLIC_URL")]
    public_url: Option<String>,
    /// Let anyone register an account (SharedCloud's register endpoint); each gets an organization of its
    /// own with the default quotas. Off by default: accounts are made by operators.
    #[arg(long)]
    allow_registration: bool,
    /// Sign-ins and registrations allowed per minute from one address (then 429).
    #[arg(long, default_value_t = 20)]
    sign_ins_per_address_per_minute: u32,
    /// Sign-ins allowed per minute at one account (then 429).
    #[arg(long, default_value_t = 10)]
    sign_ins_per_account_per_minute: u32,
    /// Serve `/metrics` without a key on this address too (for Prometheus on the operator's network); on
    /// the API's address it needs an operator key.
    #[arg(long, env = "NIMBUS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds a client has to send a request's headers; a connection that takes longer is closed.
    #[arg(long, default_value_t = 10)]
    header_timeout_secs: u64,
    /// Seconds a client has to send a request's body; a body that takes longer is answered 408.
    #[arg(long, default_value_t = 30)]
    body_timeout_secs: u64,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "NIMBUS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "NIMBUS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections held at once; more wait in the kernel's backlog until one closes.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// The key ring that seals secrets at rest (API key secrets, instance passwords, stored answers):
    /// lines `ID BASE64KEY`, the first one sealing (make one with `nimbus seal-key new`). Default: the data
    /// dir's `seal.key`, created on first start with SQLite; with PostgreSQL every server needs the same
    /// ring, so it must be given (or NIMBUS_SEAL_KEYS, the ring's text itself).
    #[arg(long, env = "NIMBUS_SEAL_KEY_FILE")]
    seal_key_file: Option<PathBuf>,
}

pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    // The data dir holds the database (secrets, password hashes) and the instances' disks: this server's
    // alone. Everything it creates there is the owner's only.
    // SAFETY: umask only changes the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&args.data_dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            // A read-only data dir cannot be changed; the database's own check says what that means.
            if let Err(e) = std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o700)) {
                tracing::warn!(dir = %args.data_dir.display(), error = %e, "could not make the data dir the server's own (0700)");
            }
        }
    }
    let data_dir = args.data_dir.canonicalize()?;
    // One server per data dir: its id (below) names the leases it holds, and two processes sharing it would
    // take each other's operations. The lock goes with the process, however it ends.
    let lock_path = data_dir.join("server.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}: the data dir must be writable", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!("another nimbus server uses {}; give each server its own --data-dir", data_dir.display())
    })?;
    let url = args.database.clone().unwrap_or_else(|| format!("sqlite://{}/nimbus.db", data_dir.display()));
    if !(url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        anyhow::bail!("unsupported database URL {url:?}: use sqlite://PATH or postgres://...");
    }
    let keys = seal_keys(&args, &data_dir, args.database.is_none())?;
    let store = nimbus_store::SqlStore::open(&url)
        .await
        .with_context(|| format!("opening {}", redact(&url)))?
        .with_seal_keys(keys);
    let resealed = store.reseal().await.context("sealing the secrets at rest with the current seal key")?;
    if resealed > 0 {
        tracing::info!(resealed, "sealed secrets with the current seal key");
    }
    let store: std::sync::Arc<dyn nimbus_store::Store> = std::sync::Arc::new(store);
    let (driver, qemu) = if args.no_local_agent {
        (None, None)
    } else {
        let (d, q) = crate::host::build_driver(&args.host, &data_dir, &args.network_cidr).await?;
        (Some(d), q)
    };
    let config = EngineConfig {
        zone: args.zones[0].clone(),
        zone_aliases: args.zones[1..].to_vec(),
        deleted_retention: args.deleted_retention,
        audit_retention: args.audit_retention,
        network_cidr: args.network_cidr.clone(),
        elastic_ip_cidr: args.elastic_ip_cidr.clone(),
        ipv6_prefix: args.ipv6_prefix.clone(),
        stop_grace: Duration::from_secs(args.stop_grace_secs),
        reconcile_every: Duration::from_secs(args.reconcile_secs.max(1)),
        worker_id: server_id(&data_dir)?,
        lease: Duration::from_secs(args.lease_secs.max(3)),
        workers: args.workers.max(1),
        host_name: args.host_name.clone().unwrap_or_else(nimbus_engine::default_host_name),
        overcommit: nimbus_core::host::Overcommit { cpu: args.cpu_overcommit, memory: args.memory_overcommit },
        host_lease: Duration::from_secs(args.host_timeout_secs.max(2)),
        advertise_url: Some(args.advertise_url.clone().unwrap_or_else(|| {
            let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", args.listen)
        })),
        public_url: Some(public_url(&args)?),
        allow_registration: args.allow_registration,
        attempt_limits: nimbus_engine::throttle::AttemptLimits {
            per_source_per_minute: args.sign_ins_per_address_per_minute,
            per_account_per_minute: args.sign_ins_per_account_per_minute,
        },
        ..Default::default()
    };
    nimbus_engine::network::Network::parse(&config.network_cidr).map_err(|e| anyhow::anyhow!("--network-cidr: {e}"))?;
    let local = driver.map(|driver| LocalHost { name: config.host_name.clone(), driver });
    let engine =
        Engine::start_with(store, local, config).await.map_err(|e| anyhow::anyhow!("starting the engine: {e}"))?;

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

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::listen::tls_acceptor(cert, key)?),
        _ => None,
    };
    let mut state = nimbus_api::AppState::new(engine.clone());
    state.body_timeout = Duration::from_secs(args.body_timeout_secs.max(1));
    if let Some(address) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding --metrics-listen {address}"))?;
        tracing::info!(listen = %address, "serving /metrics");
        let metrics = nimbus_api::metrics_router(state.clone());
        tokio::spawn(async move { axum::serve(listener, metrics).with_graceful_shutdown(shutdown_signal()).await });
    }
    let app = nimbus_api::router(state);
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, driver = engine.driver_name(), data_dir = %data_dir.display(), "nimbus server ready");
    let limits = crate::listen::Limits {
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        max_connections: args.max_connections,
    };
    crate::listen::serve(listener, app, tls, limits, shutdown_signal(), Duration::from_secs(10)).await;
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

/// The base URL clients reach this server at: `--public-url`, or one made of --listen.
fn public_url(args: &ServerArgs) -> anyhow::Result<String> {
    if let Some(url) = &args.public_url {
        let uri: axum::http::Uri = url.parse().with_context(|| format!("--public-url {url:?}"))?;
        anyhow::ensure!(
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some(),
            "--public-url {url:?}: give an http(s) URL with a host, e.g. https://cloud.example.com"
        );
        return Ok(url.trim_end_matches('/').to_string());
    }
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    Ok(if args.listen.ip().is_unspecified() {
        format!("{scheme}://{}:{}", nimbus_engine::default_host_name(), args.listen.port())
    } else {
        format!("{scheme}://{}", args.listen)
    })
}

/// The seal key ring: NIMBUS_SEAL_KEYS, else --seal-key-file, else the data dir's `seal.key` (made on first
/// start when the store is the data dir's own SQLite file: no other server needs it).
fn seal_keys(args: &ServerArgs, data_dir: &std::path::Path, own_store: bool) -> anyhow::Result<nimbus_store::SealKeys> {
    if let Ok(text) = std::env::var("NIMBUS_SEAL_KEYS") {
        if !text.trim().is_empty() {
            return nimbus_store::SealKeys::parse(&text).context("NIMBUS_SEAL_KEYS");
        }
    }
    let path = args.seal_key_file.clone().unwrap_or_else(|| data_dir.join("seal.key"));
    if args.seal_key_file.is_none() && !path.exists() {
        anyhow::ensure!(
            own_store,
            "with a shared database every server needs the same seal key ring: make one with `nimbus seal-key \
             new > FILE` (mode 0600), give it to each server with --seal-key-file FILE, and back it up apart from \
             the database"
        );
        let line = nimbus_store::SealKeys::new_key_line(&crate::admin::new_seal_key_id());
        // The umask (077) makes it the server's own.
        std::fs::write(&path, format!("{}\n{line}\n", crate::admin::SEAL_KEY_FILE_HEADER))
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(file = %path.display(), "made a seal key: back it up apart from the database");
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading the seal key ring {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777), "the seal key ring is readable by others: chmod 600 it");
        }
    }
    nimbus_store::SealKeys::parse(&text).with_context(|| format!("reading the seal key ring {}", path.display()))
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

/// `90s`, `30m`, `24h`, `7d`, or plain seconds.
fn parse_retention(given: &str) -> Result<Duration, String> {
    let (number, unit) =
        given.trim().split_at(given.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(given.trim().len()));
    let n: u64 = number.parse().map_err(|_| format!("{given:?} is not a duration such as 24h, 30m or 90s"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{given:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_read_as_the_help_says() {
        assert_eq!(parse_retention("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_retention("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_retention("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_retention("0"), Ok(Duration::ZERO));
        assert!(parse_retention("1w").is_err() && parse_retention("h").is_err() && parse_retention("").is_err());
    }
}
