//! Real `nimbus server` processes for the reliability tests (`crash_loop.rs`, `recovery.rs`, `backup.rs`,
//! `faults.rs`): start one on a data dir and a store (SQLite in the data dir, or a fresh PostgreSQL
//! database), kill it with SIGKILL or stop it with SIGTERM, start it again on the same port; call it as the
//! native API, SF Compute, ONET, Gcore and (signed) Exoscale clients do; and look at what it left behind
//! from the outside: the store, opened by this process, and the host, through the driver's own view of it.
//!
//! Each test binary includes this with `mod harness;`. Whatever a test starts is stopped when its handle is
//! dropped, also when an assertion fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

pub const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
pub const KEY: &str = "NIMreliability";
pub const SECRET: &str = "reliability-secret-0123456789";

/// Where a test's store lives.
pub enum Database {
    /// `nimbus.db` in the data dir (the server's default).
    Sqlite,
    /// A fresh PostgreSQL database, dropped with this.
    Postgres { url: String, _db: nimbus_store::testing::PostgresDatabase },
}

impl Database {
    /// PostgreSQL when the test environment names a server; `None` (after saying so) otherwise, unless it
    /// is required.
    pub async fn postgres() -> Option<Database> {
        let (url, db) = nimbus_store::testing::fresh_postgres_database().await?;
        Some(Database::Postgres { url, _db: db })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Database::Sqlite => "sqlite",
            Database::Postgres { .. } => "postgres",
        }
    }
}

/// What a server is started with, every time.
pub struct Setup {
    pub data_dir: PathBuf,
    pub database: Database,
    /// The sim driver's host (`--sim-state-dir`); `None` for the qemu driver.
    pub host_dir: Option<PathBuf>,
    pub args: Vec<String>,
    pub port: u16,
    /// The server's log, appended to by every start.
    pub log: PathBuf,
}

impl Setup {
    pub fn sim(root: &Path, database: Database, args: &[&str]) -> Setup {
        Setup {
            data_dir: root.join("data"),
            database,
            host_dir: Some(root.join("host")),
            args: args.iter().map(|a| a.to_string()).collect(),
            port: free_port(),
            log: root.join("server.log"),
        }
    }

    pub fn url(&self) -> String {
        match &self.database {
            Database::Sqlite => format!("sqlite://{}/nimbus.db", self.data_dir.display()),
            Database::Postgres { url, .. } => url.clone(),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Starts a server (without waiting for it).
    pub fn spawn(&self) -> Server {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        // Another build may stand in (an older one, to see a test fail where a defect was).
        let bin = std::env::var("NIMBUS_TEST_SERVER_BIN").unwrap_or_else(|_| BIN.to_string());
        let mut cmd = Command::new(&bin);
        cmd.args(["server", "--listen", &format!("127.0.0.1:{}", self.port)]).arg("--data-dir").arg(&self.data_dir);
        if let Database::Postgres { url, .. } = &self.database {
            cmd.args(["--database", url]).env("NIMBUS_SEAL_KEYS", TEST_SEAL_KEYS);
        }
        match &self.host_dir {
            // A build from before the sim host lived in a directory keeps it in memory.
            Some(host) if knows_sim_state_dir(&bin) => {
                cmd.args(["--driver", "sim", "--sim-state-dir"]).arg(host);
            }
            Some(_) => {
                cmd.args(["--driver", "sim"]);
            }
            None => {
                cmd.args(["--driver", "qemu"]);
            }
        }
        let child = cmd
            .args(&self.args)
            .env_remove("NIMBUS_DRIVER")
            .env_remove("NIMBUS_DATABASE")
            .env("NIMBUS_BOOTSTRAP_KEY", KEY)
            .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nimbus server starts");
        Server { child: Some(child), base: format!("http://127.0.0.1:{}", self.port), log: self.log_path() }
    }

    /// Starts a server and waits until it answers.
    pub async fn start(&self) -> Server {
        let mut server = self.spawn();
        server.ready(Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e}"));
        server
    }

    /// The store, opened by the test process beside (or after) the server.
    pub async fn store(&self) -> Arc<dyn nimbus_store::Store> {
        nimbus_store::open(&self.url()).await.unwrap_or_else(|e| panic!("opening the store {}: {e}", self.url()))
    }

    /// The sim host, seen through a driver of its own.
    pub fn host(&self) -> nimbus_driver::SimDriver {
        let dir = self.host_dir.clone().expect("a sim setup");
        nimbus_driver::SimDriver::new(nimbus_driver::SimConfig { state_dir: Some(dir), ..Default::default() })
    }
}

fn knows_sim_state_dir(bin: &str) -> bool {
    static KNOWS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWS.get_or_init(|| {
        let help = Command::new(bin).args(["server", "--help"]).output().expect("the server binary runs");
        String::from_utf8_lossy(&help.stdout).contains("--sim-state-dir")
    })
}

/// The seal key ring every server of a test shares (servers on one database must share one); a test key,
/// public, never a real deployment's.
pub const TEST_SEAL_KEYS: &str = "test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `nimbus server` process, killed with SIGKILL when dropped.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    log: PathBuf,
}

impl Server {
    /// Waits until the server answers `/healthz`; an error if it exits or takes longer than `within`.
    pub async fn ready(&mut self, within: Duration) -> Result<(), String> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if http.get(format!("{}/healthz", self.base)).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("the server exited: {status}; its log:\n{}", self.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!("the server did not come up; its log:\n{}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: nothing of the server's shutdown runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the clean stop; panics if it takes longer than `within` or fails.
    pub fn stop(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: signalling our own child, whose pid we hold and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "the server's clean stop failed: {status}\n{}", self.log_tail());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not stop within {within:?} of SIGTERM\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP exchange's outcome: an answer, or no answer (the server died, or refused the connection).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    pub fn str(&self, pointer: &str) -> Option<String> {
        self.body.pointer(pointer).and_then(Value::as_str).map(str::to_string)
    }
}

/// A client of a server at a fixed address (which survives restarts), speaking every API the tests use.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

/// How a request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth {
    Bearer,
    /// Gcore's `Authorization: APIKey <secret>`.
    Gcore,
    /// Exoscale's EXO2-HMAC-SHA256 signature over the request.
    Exoscale,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_string(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        }
    }

    /// One attempt. `Err` when no answer came (connection refused or cut).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Auth,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Answer, String> {
        let text = body.map(Value::to_string);
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        req = match auth {
            Auth::Bearer => req.bearer_auth(SECRET),
            Auth::Gcore => req.header("authorization", format!("APIKey {SECRET}")),
            Auth::Exoscale => {
                let expires = (time::OffsetDateTime::now_utc().unix_timestamp() + 600).to_string();
                let message = format!("{method} {path}\n{}\n\n\n{expires}", text.as_deref().unwrap_or(""));
                let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(message.as_bytes());
                let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                req.header(
                    "authorization",
                    format!("EXO2-HMAC-SHA256 credential={KEY},expires={expires},signature={signature}"),
                )
            }
        };
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(t) = text {
            req = req.header("content-type", "application/json").body(t);
        }
        let response = req.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        Ok(Answer { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }

    /// A native call that must answer (retried while the server is down, for up to a minute).
    pub async fn native(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.send(method.clone(), path, Auth::Bearer, body.as_ref(), &[]).await {
                Ok(a) => return a,
                Err(e) if Instant::now() > deadline => panic!("{method} {path}: no answer: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        let a = self.native(reqwest::Method::GET, path, None).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.body
    }

    /// Waits for an operation to end and returns it.
    pub async fn wait(&self, op: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.get(&format!("/v1/operations/{op}?wait=5")).await;
            if !matches!(v["state"].as_str(), Some("pending" | "running")) {
                return v;
            }
            assert!(Instant::now() < deadline, "operation {op} never ended: {v}");
        }
    }

    /// Every item of a paged native list.
    pub async fn all(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page = match &token {
                Some(t) => self.get(&format!("{path}{sep}limit=1000&page_token={t}")).await,
                None => self.get(&format!("{path}{sep}limit=1000")).await,
            };
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return items,
            }
        }
    }
}

/// Whether what the record shows of an instance's power state is what the host reports.
pub fn power_agrees(state: &str, host: nimbus_driver::ActualState) -> bool {
    use nimbus_driver::ActualState::*;
    matches!((state, host), ("running", Running) | ("stopped", Stopped) | ("suspended", Paused) | ("error", Missing))
}

/// What the store and the host say after a run, compared: every finding is a line of `problems`, by kind.
#[derive(Debug, Default)]
pub struct Audit {
    /// Operations, instances or snapshots left in a transitional state, or instances left locked.
    pub stuck: Vec<String>,
    /// Addresses, idempotency holds, or host instances that belong to nothing.
    pub leaked: Vec<String>,
    /// Records that disagree with the host: power state, disk size, snapshots.
    pub disagreeing: Vec<String>,
    /// Problems the store's own integrity check found.
    pub integrity: Vec<String>,
    pub instances: usize,
}

impl Audit {
    pub fn clean(&self) -> bool {
        self.stuck.is_empty() && self.leaked.is_empty() && self.disagreeing.is_empty() && self.integrity.is_empty()
    }
}

/// Audits the store against the host (any driver), with no server running or with one at rest.
pub async fn audit(store: &dyn nimbus_store::Store, host: &dyn nimbus_driver::Driver) -> Audit {
    use nimbus_store::{InstanceQuery, OperationQuery};
    let mut audit = Audit::default();
    let unfinished = store.list_operations(&OperationQuery { unfinished: true, ..Default::default() }).await.unwrap();
    for op in &unfinished {
        audit.stuck.push(format!("operation {} ({}) still {}", op.id, op.kind, op.state.as_str()));
    }
    let instances = store.list_instances(&InstanceQuery::default()).await.unwrap();
    audit.instances = instances.len();
    let mut live = std::collections::HashSet::new();
    for i in &instances {
        live.insert(i.id);
        if i.lock_operation_id.is_some() {
            audit.stuck.push(format!("instance {} locked by {:?}", i.id, i.lock_operation_id));
        }
        if i.state.is_transitional() {
            audit.stuck.push(format!("instance {} left {}", i.id, i.state));
        }
        let actual = host.inspect(i.id).await.unwrap();
        if !power_agrees(i.state.as_str(), actual) {
            audit.disagreeing.push(format!("instance {}: record {}, host {actual:?}", i.id, i.state));
        }
        if actual != nimbus_driver::ActualState::Missing {
            if let Ok(disk) = host.disk_size_gb(i.id).await {
                if disk != i.disk_size_gb {
                    audit
                        .disagreeing
                        .push(format!("instance {}: record {} GB, host disk {disk} GB", i.id, i.disk_size_gb));
                }
            }
        }
    }
    let snapshots = store.list_records("snapshot", None).await.unwrap();
    let mut recorded: std::collections::HashMap<uuid::Uuid, Vec<uuid::Uuid>> = Default::default();
    for s in &snapshots {
        let state = s.body["state"].as_str().unwrap_or("");
        if state != "ready" {
            audit.stuck.push(format!("snapshot {} left {state}", s.id));
        }
        let instance: uuid::Uuid = s.body["instance_id"].as_str().and_then(|i| i.parse().ok()).unwrap();
        recorded.entry(instance).or_default().push(s.id);
        if !live.contains(&instance) {
            audit.leaked.push(format!("snapshot {} of instance {instance}, which is gone", s.id));
        }
    }
    for i in &instances {
        let mut on_host = host.snapshots(i.id).await.unwrap_or_default();
        let mut mine = recorded.remove(&i.id).unwrap_or_default();
        on_host.sort();
        mine.sort();
        if on_host != mine {
            audit.disagreeing.push(format!("instance {}: snapshots recorded {mine:?}, on the host {on_host:?}", i.id));
        }
    }
    let elastic: std::collections::HashSet<_> =
        store.list_records("elastic_ip", None).await.unwrap().iter().map(|r| r.id).collect();
    for a in store.list_addresses(None).await.unwrap() {
        if !live.contains(&a.owner) && !elastic.contains(&a.owner) {
            audit.leaked.push(format!("address {} of {} held by {}, which is gone", a.host, a.network, a.owner));
        }
    }
    for i in &instances {
        let held = store.list_addresses(None).await.unwrap().iter().filter(|a| a.owner == i.id).count();
        if held != 1 {
            audit.leaked.push(format!("instance {} holds {held} addresses", i.id));
        }
    }
    for id in host.instances().await.unwrap() {
        if !live.contains(&id) {
            audit.leaked.push(format!("the host keeps instance {id}, which no record knows"));
        }
    }
    // Volumes: none locked or between two states, each (but a failed one) with its disk on the host at
    // its size, attached only to a live instance; no disk on the host that no volume accounts for.
    let volumes = store.list_records("volume", None).await.unwrap();
    for v in &volumes {
        let state = v.body["state"].as_str().unwrap_or("");
        if !v.body["lock_operation_id"].is_null() {
            audit.stuck.push(format!("volume {} locked by {}", v.id, v.body["lock_operation_id"]));
        }
        if matches!(state, "creating" | "attaching" | "detaching" | "deleting") {
            audit.stuck.push(format!("volume {} left {state}", v.id));
        }
        if let Some(i) = v.body["instance_id"].as_str().and_then(|i| i.parse::<uuid::Uuid>().ok()) {
            if !live.contains(&i) {
                audit.leaked.push(format!("volume {} attached to instance {i}, which is gone", v.id));
            }
        }
        if state != "error" {
            match host.volume_size_gb(v.id).await {
                Ok(size) if Some(size) == v.body["size_gb"].as_u64() => {}
                other => {
                    audit.disagreeing.push(format!("volume {}: record {} GB, host {other:?}", v.id, v.body["size_gb"]))
                }
            }
        }
    }
    for id in host.volumes().await.unwrap() {
        if !volumes.iter().any(|v| v.id == id) {
            audit.leaked.push(format!("the host keeps volume {id}, which no record knows"));
        }
    }
    let holds = store.idempotency_audit().await.unwrap();
    if holds.held + holds.abandoned + holds.unknown > 0 {
        audit.leaked.push(format!("idempotency keys held by no running request: {holds:?}"));
    }
    let report = store.check_integrity().await.unwrap();
    audit.integrity = report.problems;
    audit
}

/// Appends a result line to the reliability summary the CI script prints at the end of its run.
pub fn report(line: &str) {
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-summary.txt");
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Whether this test process runs as root (tmpfs mounts, network namespaces).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Real VMs need QEMU and root (Nimbus's network namespace); says why when they cannot run.
pub fn can_run_vms(test: &str) -> bool {
    if !have("qemu-system-x86_64") || !have("qemu-img") {
        println!("SKIPPED {test}: QEMU is not installed (scripts/install-deps.sh installs it)");
        return false;
    }
    if !is_root() {
        println!("SKIPPED {test}: not root (Nimbus's network namespace needs CAP_NET_ADMIN)");
        return false;
    }
    true
}

/// The busybox template, built once by guest/build.sh into a directory keyed by guest/'s files and the
/// installed kernels (the same cache `vms.rs` uses, so a run builds it once). Returns the template dir.
pub fn templates() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_templates).clone()
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

fn build_templates() -> PathBuf {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest").canonicalize().unwrap();
    let mut key = 0xcbf2_9ce4_8422_2325u64;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&guest).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.is_file()) {
        fnv(&mut key, f.file_name().unwrap().as_encoded_bytes());
        fnv(&mut key, &std::fs::read(f).unwrap());
    }
    for dir in ["/boot", "/lib/modules"] {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        fnv(&mut key, names.join("\n").as_bytes());
    }
    let root = std::env::temp_dir().join(format!("nimbus-vms-templates-{key:016x}"));
    if root.join("busybox/template.json").is_file() {
        return root;
    }
    // Built aside and renamed into place, so that a concurrent test process never sees half a template.
    let scratch = root.join(format!(".build-{}", std::process::id()));
    let status = Command::new("sh").arg(guest.join("build.sh")).arg(scratch.join("busybox")).status().unwrap();
    assert!(status.success(), "guest/build.sh failed (are guest/packages.txt's packages installed?)");
    let _ = std::fs::rename(scratch.join("busybox"), root.join("busybox"));
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(root.join("busybox/template.json").is_file(), "no template in {}", root.display());
    root
}

/// Live QEMU processes whose command line mentions `needle` (an instance id, a data dir).
pub fn qemu_pids(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')));
        let program = cmdline.split('\0').next().unwrap_or_default();
        let is_qemu = program.rsplit('/').next().unwrap_or_default().starts_with("qemu-system");
        if alive && is_qemu && cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// A server on real VMs: its own data dir (short: QEMU's sockets live there), network namespace and
/// instance network. Dropping it kills the server, every QEMU of the data dir, and the namespace.
pub struct VmCloud {
    pub setup: Setup,
    pub netns: String,
    _dir: tempfile::TempDir,
}

impl VmCloud {
    /// `n` picks the instance network 10.213.<200+n>.0/24 and names the namespace.
    pub fn new(n: u8, extra: &[&str]) -> VmCloud {
        let dir = tempfile::Builder::new().prefix("nr-").tempdir_in("/tmp").unwrap();
        let netns = format!("nrt{}-{n}", std::process::id());
        let mut args: Vec<String> = vec![
            "--template-dir".into(),
            templates().display().to_string(),
            "--netns".into(),
            netns.clone(),
            "--network-cidr".into(),
            format!("10.213.{}.0/24", 200 + u16::from(n)),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let setup = Setup {
            data_dir: dir.path().join("d"),
            database: Database::Sqlite,
            host_dir: None,
            args,
            port: free_port(),
            log: dir.path().join("server.log"),
        };
        VmCloud { setup, netns, _dir: dir }
    }

    /// The host as the qemu driver sees it, read by a driver of this process (no network of its own).
    pub async fn host(&self) -> nimbus_driver::QemuDriver {
        let mut config = nimbus_driver::QemuConfig::new(self.setup.data_dir.join("qemu"), templates());
        config.network = false;
        nimbus_driver::QemuDriver::new(config).await.unwrap()
    }
}

impl Drop for VmCloud {
    fn drop(&mut self) {
        for pid in qemu_pids(&self.setup.data_dir.display().to_string()) {
            // SAFETY: a QEMU process of this test's own data dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
    }
}
