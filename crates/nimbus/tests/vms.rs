//! Instances are real VMs: the real `nimbus server` binary with its default qemu driver, driven only through
//! the HTTP API, boots the stock busybox template under whatever accelerator the host has (TCG in CI) and
//! everything the API claims is checked against the host: the guest's console, its address inside Nimbus's
//! network namespace, the QEMU processes in /proc, the taps and the files in the data dir.
//!
//! Skips, saying so, only when qemu-system-x86_64 is missing or the tests do not run as root (the network
//! namespace needs CAP_NET_ADMIN). Each test runs its own server with its own data dir, network namespace and
//! instance network, so tests (and other test processes) never share a VM, a tap or an address; at most two
//! VMs run at once and boots take turns, which keeps the file to about a minute on 2 cores. A guard kills
//! whatever a test started, also when an assertion fails.

mod harness;
mod sdk;

use harness::qemu_pids;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{Mutex, Semaphore};

const SECRET: &str = "vms-test-secret-0123456789";
/// A busy 2-core host boots a TCG guest in seconds; the driver's own boot watchdog fires at 60 s.
const OPERATION_DEADLINE: Duration = Duration::from_secs(150);

/// Boots take turns: parallel TCG boots on 2 cores only slow each other down.
static BOOT: Mutex<()> = Mutex::const_new(());
/// A test holds one permit per VM it runs, for as long as it runs.
static VMS: Semaphore = Semaphore::const_new(2);

fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

fn can_run_vms(test: &str) -> bool {
    if !have("qemu-system-x86_64") {
        println!("SKIPPED {test}: qemu-system-x86_64 is not installed (guest/install-deps.sh installs it)");
        return false;
    }
    if !is_root() {
        println!("SKIPPED {test}: not root (Nimbus's network namespace needs CAP_NET_ADMIN)");
        return false;
    }
    true
}

/// FNV-1a: a stable hash for the template cache key (std's hasher may change between Rust releases).
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

/// A stock template, built once by its script in guest/ and reused by every test and every later run until
/// its inputs change (the script and, for busybox, the installed kernels). Kept under the target dir's
/// tmp/, never committed. Returns the template's own directory (`.../<name>`).
fn stock_template(name: &'static str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(&'static str, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = built.iter().find(|(n, _)| *n == name) {
        return dir.clone();
    }
    let dir = build_stock_template(name);
    built.push((name, dir.clone()));
    dir
}

fn build_stock_template(name: &str) -> PathBuf {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest").canonicalize().unwrap();
    let script = if name == "busybox" { "build.sh" } else { "build-debian.sh" };
    let mut key = 0xcbf2_9ce4_8422_2325u64;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&guest).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.is_file()) {
        // The debian image depends on its own script only; busybox on the rest of guest/ and the kernels.
        let mine =
            f.file_name().unwrap() == script || (name == "busybox" && f.file_name().unwrap() != "build-debian.sh");
        if mine {
            fnv(&mut key, f.file_name().unwrap().as_encoded_bytes());
            fnv(&mut key, &std::fs::read(f).unwrap());
        }
    }
    if name == "busybox" {
        for dir in ["/boot", "/lib/modules"] {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            names.sort();
            fnv(&mut key, names.join("\n").as_bytes());
        }
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nimbus-templates");
    let root = cache.join(format!("{name}-{key:016x}"));
    if root.join(name).join("template.json").is_file() {
        return root.join(name);
    }
    // Built aside and renamed into place, so that a concurrent test process never sees half a template.
    let scratch = root.join(format!(".build-{}", std::process::id()));
    let t = Instant::now();
    let status = Command::new("sh")
        .arg(guest.join(script))
        .arg(scratch.join(name))
        .env("NIMBUS_ROOTFS_CACHE", cache.join("rootfs"))
        .status()
        .unwrap();
    assert!(status.success(), "guest/{script} failed (are guest/packages.txt's packages installed?)");
    let _ = std::fs::rename(scratch.join(name), root.join(name));
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(root.join(name).join("template.json").is_file(), "no template in {}", root.display());
    println!("{name} template built in {:.1}s into {}", t.elapsed().as_secs_f64(), root.display());
    root.join(name)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// The QEMU process of an instance; there must be exactly one.
fn qemu_of(id: &str) -> i32 {
    let pids = qemu_pids(id);
    assert_eq!(pids.len(), 1, "expected one qemu for instance {id}, found {pids:?}");
    pids[0]
}

fn cmdline(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// Start time of a process in clock ticks since boot: with the pid, it names one process for good.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(19)?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One user's Nimbus: a server on a fresh data dir, with its own network namespace and instance network.
/// Dropping it kills the server and every QEMU of the data dir and deletes the namespace, whatever happened.
struct Cloud {
    data: tempfile::TempDir,
    netns: String,
    cidr: String,
    server: Option<Child>,
    base: String,
    http: reqwest::Client,
}

impl Cloud {
    /// `n` picks the instance network 10.213.<100+n>.0/24 and names the namespace.
    async fn start(n: u8) -> Cloud {
        Cloud::start_with(n, &["busybox"]).await
    }

    /// A cloud offering these stock templates.
    async fn start_with(n: u8, stock: &'static [&'static str]) -> Cloud {
        // Short: QEMU's unix sockets live under the data dir and their paths are limited to 108 bytes.
        let data = tempfile::Builder::new().prefix("nv-").tempdir_in("/tmp").unwrap();
        let templates = data.path().join("templates");
        std::fs::create_dir_all(&templates).unwrap();
        for name in stock {
            std::os::unix::fs::symlink(stock_template(name), templates.join(name)).unwrap();
        }
        let mut cloud = Cloud {
            data,
            netns: format!("nvt{}-{n}", std::process::id()),
            cidr: format!("10.213.{}.0/24", 100 + u16::from(n)),
            server: None,
            base: String::new(),
            http: reqwest::Client::new(),
        };
        cloud.start_server().await;
        cloud
    }

    fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.data_dir().join("qemu/instances").join(id)
    }

    async fn start_server(&mut self) {
        let port = free_port();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir().join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--template-dir")
            .arg(self.data_dir().join("templates"))
            .args(["--netns", &self.netns, "--network-cidr", &self.cidr])
            .env_remove("NIMBUS_DRIVER")
            .env_remove("NIMBUS_DATABASE")
            .env("NIMBUS_BOOTSTRAP_KEY", "NIMvms")
            .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nimbus server starts");
        self.server = Some(child);
        self.base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.http.get(format!("{}/healthz", self.base)).send().await.is_err() {
            let exited = self.server.as_mut().unwrap().try_wait().unwrap();
            assert!(exited.is_none(), "the server exited: {exited:?}");
            assert!(Instant::now() < deadline, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9: no shutdown code of the server runs.
    fn kill_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(SECRET);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Waits for an operation to end and insists that it succeeded.
    async fn succeeds(&self, op: &Value) -> Value {
        let v = self.ends(op, OPERATION_DEADLINE).await;
        assert_eq!(v["state"], "success", "operation failed: {v}");
        v
    }

    /// Waits for an operation to end, however it ends.
    async fn ends(&self, op: &Value, within: Duration) -> Value {
        let id = op["id"].as_str().unwrap_or_else(|| panic!("not an operation: {op}"));
        let deadline = Instant::now() + within;
        loop {
            let v = self.get(&format!("/v1/operations/{id}?wait=30")).await;
            match v["state"].as_str() {
                Some("pending" | "running") => assert!(Instant::now() < deadline, "operation still running: {v}"),
                _ => return v,
            }
        }
    }

    /// The real `nimbus` client, pointed at this cloud, with its own config and known_hosts.
    fn cli(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nimbus"));
        cmd.env("NIMBUS_URL", &self.base)
            .env("NIMBUS_TOKEN", SECRET)
            .env("NIMBUS_CONFIG", self.data_dir().join("cli.yaml"))
            .env("XDG_CONFIG_HOME", self.data_dir().join("xdg"))
            .stdin(Stdio::null());
        cmd
    }

    /// POSTs an action (or a create) that answers 202 with an operation, and waits for its success.
    async fn act(&self, path: &str, body: Value) -> Value {
        let (status, op) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 202, "POST {path}: {op}");
        self.succeeds(&op).await
    }

    /// Same, for actions that boot a guest: they take turns with the other tests' boots.
    async fn boot(&self, path: &str, body: Value) -> Value {
        let _turn = BOOT.lock().await;
        self.act(path, body).await
    }

    /// Creates and boots an instance of the smallest type; returns its id once it is running.
    async fn create(&self, name: &str, user_data: &str) -> String {
        self.create_from(name, "busybox", user_data).await
    }

    async fn create_from(&self, name: &str, template: &str, user_data: &str) -> String {
        let body = json!({"name": name, "instance_type": "standard.micro", "template": template,
            "user_data": base64(user_data.as_bytes())});
        let op = self.boot("/v1/instances", body).await;
        op["target"]["id"].as_str().unwrap().to_string()
    }

    async fn instance(&self, id: &str) -> Value {
        self.get(&format!("/v1/instances/{id}")).await
    }

    async fn console(&self, id: &str) -> String {
        let response =
            self.http.get(format!("{}/v1/instances/{id}/console", self.base)).bearer_auth(SECRET).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.unwrap()
    }

    /// What the console printed after its first `from` bytes, once it shows `needle` (user-data runs after
    /// the guest reports ready, so its output may come a moment after the operation ended).
    async fn console_after(&self, id: &str, from: usize, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let new = self.console(id).await.get(from..).unwrap_or_default().to_string();
            if new.contains(needle) {
                return new;
            }
            assert!(Instant::now() < deadline, "the console never showed {needle:?}; since the action it has:\n{new}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn address(instance: &Value) -> String {
        instance["ip_addresses"][0].as_str().unwrap_or_else(|| panic!("no address: {instance}")).to_string()
    }

    /// Pings inside the test's own namespace only: no packet ever leaves it.
    fn pings(&self, address: &str, attempts: usize) -> bool {
        (0..attempts).any(|_| {
            Command::new("ip")
                .args(["netns", "exec", &self.netns, "ping", "-c", "1", "-W", "1", address])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }

    /// The taps in the test's namespace (the names are the driver's business; the count is the user's).
    fn taps(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-n", &self.netns, "-o", "link", "show"]).output().unwrap();
        assert!(out.status.success(), "ip -n {} link: {}", self.netns, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_string())
            .filter(|name| name.starts_with("tap-"))
            .collect()
    }

    /// Deletes an instance and checks that the host forgets it: no process, no tap, no file. `taps_left`:
    /// the taps of the other instances still running.
    async fn delete_leaves_nothing(&self, id: &str, taps_left: usize) {
        let (status, op) = self.call(reqwest::Method::DELETE, &format!("/v1/instances/{id}"), None).await;
        assert_eq!(status, 202, "{op}");
        self.succeeds(&op).await;
        let (status, _) = self.call(reqwest::Method::GET, &format!("/v1/instances/{id}"), None).await;
        assert_eq!(status, 404, "a deleted instance is gone from the API");
        assert_eq!(qemu_pids(id), Vec::<i32>::new(), "no qemu after delete");
        assert_eq!(self.taps().len(), taps_left, "no tap after delete: {:?}", self.taps());
        assert!(!self.instance_dir(id).exists(), "no files after delete");
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.kill_server();
        let needle = self.data_dir().display().to_string();
        for pid in qemu_pids(&needle) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !qemu_pids(&needle).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The namespace is this test's alone (never the shared `nimbus`), so no one else's VM lives in it.
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.data_dir().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the server log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The value of `UD| key=value` in console text (the guest prefixes user-data output with `UD| `). The
/// marker may follow getty's `login:` prompt on the same line: both write to ttyS0 at boot.
fn ud_value(console: &str, key: &str) -> u64 {
    let prefix = format!("UD| {key}=");
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').split_once(&prefix).map(|(_, v)| v))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in the console:\n{console}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_a_real_vm_from_create_to_delete() {
    if !can_run_vms("an_instance_is_a_real_vm_from_create_to_delete") {
        return;
    }
    let _vm = VMS.acquire().await.unwrap();
    let cloud = Cloud::start(1).await;
    let id = cloud.create("web", "#!/bin/sh\necho \"hello from $(hostname)\"\n").await;

    // The API says running only once the guest said READY; the user-data ran inside the guest.
    let vm = cloud.instance(&id).await;
    assert_eq!(vm["state"], "running", "{vm}");
    let console = cloud.console_after(&id, 0, "USERDATA rc=").await;
    assert!(console.contains("READY"), "{console}");
    assert!(console.contains("UD| hello from web"), "{console}");
    assert!(console.contains("USERDATA rc=0"), "{console}");

    // One QEMU process, sized by the instance type (standard.micro: 1 vCPU, 512 MiB).
    let args = cmdline(qemu_of(&id));
    assert!(args.windows(2).any(|w| w == ["-m", "512"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["-smp", "1"]), "{args:?}");

    // The guest has the address the API shows, inside Nimbus's namespace, on its tap.
    let address = Cloud::address(&vm);
    assert!(address.starts_with("10.213.101."), "{address}");
    assert!(console.contains(&format!("NET eth0 {address}/24")), "{console}");
    assert_eq!(cloud.taps().len(), 1, "one tap for the one VM");
    assert!(cloud.pings(&address, 10), "{address} does not answer in netns {}", cloud.netns);

    // Figures come from the process itself.
    let metrics = cloud.get(&format!("/v1/instances/{id}/metrics")).await;
    assert!(metrics["cpu_time_ns"].as_u64().unwrap() > 0, "{metrics}");
    assert!(metrics["memory_rss_bytes"].as_u64().unwrap() > 64 << 20, "{metrics}");
    assert!(metrics["net_rx_bytes"].as_u64().unwrap() > 0, "the guest received our ping: {metrics}");

    // Stop powers the guest off and leaves no process and no tap behind.
    let before = cloud.console(&id).await.len();
    cloud.act(&format!("/v1/instances/{id}/stop"), json!({})).await;
    assert_eq!(cloud.instance(&id).await["state"], "stopped");
    assert_eq!(qemu_pids(&id), Vec::<i32>::new(), "no qemu after stop");
    assert_eq!(cloud.taps(), Vec::<String>::new(), "no tap after stop");
    let shutdown = cloud.console_after(&id, before, "POWEROFF").await;
    assert!(shutdown.contains("SHUTDOWN requested"), "a graceful ACPI power-down: {shutdown}");
    assert!(!cloud.pings(&address, 1));

    // Started again, it is the same machine at the same address.
    let before = cloud.console(&id).await.len();
    cloud.boot(&format!("/v1/instances/{id}/start"), json!({})).await;
    assert_eq!(cloud.instance(&id).await["state"], "running");
    cloud.console_after(&id, before, "UD| hello from web").await;
    qemu_of(&id);
    assert!(cloud.pings(&address, 10));

    // Deleting a running instance kills its VM and removes everything the host had for it.
    cloud.delete_leaves_nothing(&id, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_grow_snapshots_outlive_a_reset_and_become_templates() {
    if !can_run_vms("disks_grow_snapshots_outlive_a_reset_and_become_templates") {
        return;
    }
    let _vms = VMS.acquire_many(2).await.unwrap();
    let cloud = Cloud::start(2).await;
    // At every boot the guest reports its disk and counts its boots on the persistent data disk.
    let script = "#!/bin/sh
echo disk_bytes=$(( $(cat /sys/block/vda/size) * 512 ))
echo fs_kb=$(df -k /mnt/data | awk 'NR==2{print $2}')
echo boot >> /mnt/data/boots
sync
echo boots=$(wc -l < /mnt/data/boots)
";
    let id = cloud.create("db", script).await;
    let vm = cloud.instance(&id).await;
    let size_gb = vm["disk_size_gb"].as_u64().unwrap();
    let first = cloud.console_after(&id, 0, "USERDATA rc=").await;
    assert_eq!(ud_value(&first, "disk_bytes"), size_gb << 30, "{first}");
    assert_eq!(ud_value(&first, "boots"), 1, "{first}");
    let first_fs_kb = ud_value(&first, "fs_kb");

    // A stopped instance's disk grows; the guest sees the new size, and its filesystem follows, at next boot.
    cloud.act(&format!("/v1/instances/{id}/stop"), json!({})).await;
    let grown = size_gb + 2;
    cloud.act(&format!("/v1/instances/{id}/resize-disk"), json!({"disk_size_gb": grown})).await;
    assert_eq!(cloud.instance(&id).await["disk_size_gb"], grown);
    let (status, refused) = cloud
        .call(reqwest::Method::POST, &format!("/v1/instances/{id}/resize-disk"), Some(json!({"disk_size_gb": size_gb})))
        .await;
    assert!((400..500).contains(&status), "disks never shrink: {status} {refused}");

    // A snapshot of the disk after one boot...
    let op = cloud.act(&format!("/v1/instances/{id}/create-snapshot"), json!({"name": "after-first-boot"})).await;
    let snapshot = op["result"]["snapshot_id"].as_str().unwrap().to_string();
    let snapshots = cloud.get(&format!("/v1/snapshots?instance_id={id}")).await;
    assert_eq!(snapshots["items"][0]["id"], snapshot.as_str(), "{snapshots}");
    assert_eq!(snapshots["items"][0]["state"], "ready", "{snapshots}");

    // ...then the second boot changes the disk (and sees the bigger one)...
    let before = cloud.console(&id).await.len();
    cloud.boot(&format!("/v1/instances/{id}/start"), json!({})).await;
    let second = cloud.console_after(&id, before, "USERDATA rc=").await;
    assert_eq!(ud_value(&second, "disk_bytes"), grown << 30, "{second}");
    assert!(ud_value(&second, "fs_kb") > first_fs_kb + (1 << 20), "the filesystem grew: {second}");
    assert_eq!(ud_value(&second, "boots"), 2, "{second}");

    // ...and reverting forgets that change: the third boot is the second one the disk remembers.
    cloud.act(&format!("/v1/instances/{id}/stop"), json!({})).await;
    cloud.act(&format!("/v1/instances/{id}/revert-snapshot"), json!({"snapshot_id": snapshot})).await;
    let before = cloud.console(&id).await.len();
    cloud.boot(&format!("/v1/instances/{id}/start"), json!({})).await;
    let third = cloud.console_after(&id, before, "USERDATA rc=").await;
    assert_eq!(ud_value(&third, "boots"), 2, "the boot after the snapshot is gone: {third}");
    assert_eq!(ud_value(&third, "disk_bytes"), grown << 30, "a revert never shrinks the disk: {third}");

    // Reset reinstalls the template: a fresh disk that never booted. The snapshot is a file of its own: it
    // stays, with its real size.
    let before = cloud.console(&id).await.len();
    cloud.boot(&format!("/v1/instances/{id}/reset"), json!({})).await;
    assert_eq!(cloud.instance(&id).await["state"], "running", "a running instance runs again after reset");
    let fresh = cloud.console_after(&id, before, "USERDATA rc=").await;
    assert_eq!(ud_value(&fresh, "boots"), 1, "{fresh}");
    let snapshots = cloud.get(&format!("/v1/snapshots?instance_id={id}")).await;
    assert_eq!(snapshots["items"][0]["id"], snapshot.as_str(), "reset keeps the snapshots: {snapshots}");
    let size = snapshots["items"][0]["size_bytes"].as_u64().unwrap();
    let file = cloud.data_dir().join(format!("qemu/snapshots/{id}/{snapshot}.qcow2"));
    assert!(size > 0 && size < 1 << 30, "the snapshot holds the written data only: {size} bytes");
    assert_eq!(size, std::fs::metadata(&file).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap());

    // Revert works after the reset: the disk written before the snapshot is back.
    cloud.act(&format!("/v1/instances/{id}/stop"), json!({})).await;
    cloud.act(&format!("/v1/instances/{id}/revert-snapshot"), json!({"snapshot_id": snapshot})).await;
    let before = cloud.console(&id).await.len();
    cloud.boot(&format!("/v1/instances/{id}/start"), json!({})).await;
    let reverted = cloud.console_after(&id, before, "USERDATA rc=").await;
    assert_eq!(ud_value(&reverted, "boots"), 2, "the snapshot's disk is back after the reset: {reverted}");

    // Promoted, the snapshot is a template; a new instance of it has the snapshot's disk.
    let op = cloud.act(&format!("/v1/snapshots/{snapshot}/promote"), json!({"name": "db-golden"})).await;
    let template_id = op["result"]["template_id"].as_str().unwrap().to_string();
    let template = cloud.get(&format!("/v1/templates/{template_id}")).await;
    assert_eq!(template["name"], "db-golden", "{template}");
    let copy = cloud.create_from("db-copy", "db-golden", script).await;
    let copied = cloud.console_after(&copy, 0, "USERDATA rc=").await;
    assert_eq!(ud_value(&copied, "boots"), 2, "the promoted disk carries the snapshot's file: {copied}");

    // Exported, the snapshot is one standalone qcow2 file.
    let response = cloud
        .http
        .get(format!("{}/v1/snapshots/{snapshot}/export", cloud.base))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(&bytes[..4], b"QFI\xfb", "a qcow2 image");
    let exported = cloud.data_dir().join("exported.qcow2");
    std::fs::write(&exported, &bytes).unwrap();
    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&exported).output().unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "an export depends on no other file: {info}");

    // Deleting the instance deletes its snapshots; the promoted template and its instance live on.
    cloud.delete_leaves_nothing(&id, 1).await;
    let snapshots = cloud.get("/v1/snapshots").await;
    assert_eq!(snapshots["items"], json!([]), "{snapshots}");
    assert!(!file.exists(), "the snapshot's file went with its instance");
    cloud.get(&format!("/v1/templates/{template_id}")).await;
    assert_eq!(cloud.instance(&copy).await["state"], "running");
    cloud.delete_leaves_nothing(&copy, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_restarted_and_adopts_the_running_vms() {
    if !can_run_vms("a_killed_server_is_restarted_and_adopts_the_running_vms") {
        return;
    }
    let _vms = VMS.acquire_many(2).await.unwrap();
    let mut cloud = Cloud::start(3).await;
    // Two instances created within seconds of each other run side by side, each on its own tap and address.
    let mut vms = Vec::new();
    for name in ["left", "right"] {
        let id = cloud.create(name, &format!("#!/bin/sh\necho {name} is up\n")).await;
        let address = Cloud::address(&cloud.instance(&id).await);
        let pid = qemu_of(&id);
        vms.push((id, address, pid, start_time(pid)));
    }
    assert_eq!(cloud.taps().len(), 2, "{:?}", cloud.taps());
    assert_ne!(vms[0].1, vms[1].1);
    for (_, address, _, _) in &vms {
        assert!(cloud.pings(address, 10), "{address} does not answer");
    }

    // kill -9 of the control plane does not touch the VMs: they run in sessions of their own.
    cloud.kill_server();
    for (_, address, _, _) in &vms {
        assert!(cloud.pings(address, 10), "{address} answers while no server runs");
    }

    // The new server finds the same QEMU processes (same pid, same start time) and shows them running.
    cloud.start_server().await;
    for (id, address, pid, started) in &vms {
        let vm = cloud.instance(id).await;
        assert_eq!(vm["state"], "running", "{vm}");
        assert_eq!(qemu_of(id), *pid, "the VM was adopted, not restarted");
        assert_eq!(start_time(*pid), *started);
        assert!(cloud.pings(address, 10));
    }
    // A reconciler pass later (every 5 s by default), they still run the same processes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (id, _, pid, _) in &vms {
        assert_eq!(cloud.instance(id).await["state"], "running");
        assert_eq!(qemu_of(id), *pid);
    }
    assert!(cloud.console(&vms[0].0).await.contains("UD| left is up"), "the console survived the restart");

    // The new server controls the adopted VMs: stop ends that one process and leaves the other alone.
    let (left, _, _, _) = &vms[0];
    let (right, right_address, right_pid, _) = &vms[1];
    cloud.act(&format!("/v1/instances/{left}/stop"), json!({})).await;
    assert_eq!(cloud.instance(left).await["state"], "stopped");
    assert_eq!(qemu_pids(left), Vec::<i32>::new(), "no qemu after stop");
    assert_eq!(cloud.taps().len(), 1, "only the stopped VM's tap went: {:?}", cloud.taps());
    assert_eq!(qemu_of(right), *right_pid);
    assert!(cloud.pings(right_address, 10));

    cloud.delete_leaves_nothing(left, 1).await;
    cloud.delete_leaves_nothing(right, 0).await;
}

/// The user-data of a guest that waits for the disk with `serial` to appear, then runs `then` with `$d` its
/// device name; markers go straight to the console (the user-data's own output shows only once it ends).
fn volume_script(serial: &str, then: &str) -> String {
    format!(
        "#!/bin/sh\nS={serial}\n\
         f() {{ for b in /sys/block/vd*; do [ \"$(cat $b/serial 2>/dev/null)\" = \"$S\" ] && {{ echo ${{b##*/}}; return 0; }}; done; return 1; }}\n\
         until d=$(f); do sleep 0.2; done\n\
         echo \"VOLUME-APPEARED $d\" > /dev/console\n{then}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_moves_between_running_vms_with_its_data_and_no_reboot() {
    if !can_run_vms("a_volume_moves_between_running_vms_with_its_data_and_no_reboot") {
        return;
    }
    let _vm = VMS.acquire().await.unwrap();
    let cloud = Cloud::start(8).await;
    let op = cloud.act("/v1/volumes", json!({"name": "data", "size_gb": 1})).await;
    let volume = op["target"]["id"].as_str().unwrap().to_string();
    let serial = cloud.get(&format!("/v1/volumes/{volume}")).await["serial"].as_str().unwrap().to_string();
    assert!(cloud.data_dir().join(format!("qemu/volumes/{volume}.qcow2")).exists(), "its qcow2 is on the host");

    // The writer writes a line to the raw disk once it appears, then says when it is gone again.
    let writer = cloud
        .create(
            "writer",
            &volume_script(
                &serial,
                "echo nimbus-volume-data-42 | dd of=/dev/$d bs=512 conv=sync,fsync 2>/dev/null\nsync\n\
                 echo VOLUME-WRITTEN > /dev/console\n\
                 while f >/dev/null; do sleep 0.2; done\necho VOLUME-GONE > /dev/console",
            ),
        )
        .await;
    let reader = cloud
        .create(
            "reader",
            &volume_script(
                &serial,
                "echo \"VOLUME-READ $(dd if=/dev/$d bs=512 count=1 2>/dev/null | tr -d '\\000')\" > /dev/console",
            ),
        )
        .await;
    let (writer_pid, reader_pid) = (qemu_of(&writer), qemu_of(&reader));

    // Hot-plugged into the running writer: the guest sees it appear and writes to it.
    cloud.act(&format!("/v1/volumes/{volume}/attach"), json!({"instance_id": writer})).await;
    let seen = cloud.console_after(&writer, 0, "VOLUME-WRITTEN").await;
    assert!(seen.contains("VOLUME-APPEARED vd"), "{seen}");
    assert_eq!(cloud.instance(&writer).await["volumes"], json!([volume]));

    // Hot-unplugged: the guest sees it go.
    cloud.act(&format!("/v1/volumes/{volume}/detach"), json!({})).await;
    cloud.console_after(&writer, 0, "VOLUME-GONE").await;

    // Onto the running reader, which reads what the writer wrote.
    cloud.act(&format!("/v1/volumes/{volume}/attach"), json!({"instance_id": reader})).await;
    let read = cloud.console_after(&reader, 0, "VOLUME-READ").await;
    assert!(read.contains("VOLUME-READ nimbus-volume-data-42"), "{read}");

    // Neither guest rebooted: the same QEMU processes, each booted once.
    assert_eq!((qemu_of(&writer), qemu_of(&reader)), (writer_pid, reader_pid));
    for id in [&writer, &reader] {
        assert_eq!(cloud.console(id).await.matches("BOOTED").count(), 1, "{id} booted more than once");
    }

    // Refused while attached; the reader's deletion leaves the volume available, then it goes.
    let (status, body) = cloud.call(reqwest::Method::DELETE, &format!("/v1/volumes/{volume}"), None).await;
    assert_eq!(status, 409, "{body}");
    cloud.delete_leaves_nothing(&reader, 1).await;
    assert_eq!(cloud.get(&format!("/v1/volumes/{volume}")).await["state"], "available");
    cloud.delete_leaves_nothing(&writer, 0).await;
    let (status, op) = cloud.call(reqwest::Method::DELETE, &format!("/v1/volumes/{volume}"), None).await;
    assert_eq!(status, 202, "{op}");
    cloud.succeeds(&op).await;
    assert!(!cloud.data_dir().join(format!("qemu/volumes/{volume}.qcow2")).exists(), "no file left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_boots_from_a_volume_that_outlives_it_and_boots_the_next_one() {
    if !can_run_vms("an_instance_boots_from_a_volume_that_outlives_it_and_boots_the_next_one") {
        return;
    }
    let _vm = VMS.acquire().await.unwrap();
    let cloud = Cloud::start(6).await;
    // Every boot counts itself on the guest's persistent disk, which is the volume's.
    let script = base64(
        b"#!/bin/sh\necho disk_bytes=$(( $(cat /sys/block/vda/size) * 512 ))\necho boot >> /mnt/data/boots\nsync\n\
          echo boots=$(wc -l < /mnt/data/boots)\n",
    );
    let body = json!({"name": "first", "instance_type": "standard.micro", "template": "busybox", "user_data": script,
        "boot_volume": {"name": "root"}});
    let first = cloud.boot("/v1/instances", body).await["target"]["id"].as_str().unwrap().to_string();
    let volume = cloud.instance(&first).await["boot_volume"]["volume_id"].as_str().unwrap().to_string();
    assert_eq!(ud_value(&cloud.console_after(&first, 0, "USERDATA rc=").await, "boots"), 1);
    let file = cloud.data_dir().join(format!("qemu/volumes/{volume}.qcow2"));
    let disk = std::fs::read_link(cloud.instance_dir(&first).join("disk.qcow2")).unwrap();
    assert_eq!(disk, file, "the instance's disk is the volume's file");
    // The instance's resize-disk grows the volume.
    cloud.act(&format!("/v1/instances/{first}/stop"), json!({})).await;
    let size_gb = cloud.instance(&first).await["disk_size_gb"].as_u64().unwrap() + 1;
    cloud.act(&format!("/v1/instances/{first}/resize-disk"), json!({"disk_size_gb": size_gb})).await;
    assert_eq!(cloud.get(&format!("/v1/volumes/{volume}")).await["size_gb"], size_gb);

    // Deleted, the instance leaves nothing of its own; the volume stays, with what the guest wrote.
    cloud.delete_leaves_nothing(&first, 0).await;
    assert!(file.exists(), "the boot volume outlives its instance");
    assert_eq!(cloud.get(&format!("/v1/volumes/{volume}")).await["state"], "available");

    // The next instance boots from it (its template and size come with it) and finds the first one's boots.
    let body = json!({"name": "second", "instance_type": "standard.micro", "user_data": script,
        "boot_volume": {"volume_id": volume, "delete_on_termination": true}});
    let second = cloud.boot("/v1/instances", body).await["target"]["id"].as_str().unwrap().to_string();
    let booted = cloud.console_after(&second, 0, "USERDATA rc=").await;
    assert_eq!((ud_value(&booted, "boots"), ud_value(&booted, "disk_bytes")), (2, size_gb << 30), "{booted}");
    cloud.delete_leaves_nothing(&second, 0).await;
    let (status, _) = cloud.call(reqwest::Method::GET, &format!("/v1/volumes/{volume}"), None).await;
    assert_eq!(status, 404, "deleted with the instance that asked so");
    assert!(!file.exists(), "and its file");
}

/// A busybox template another Nimbus built (its manifest names another build script and init) is rebuilt
/// when the server starts, so that its guests do what this server asks of them (the rescue boot, the
/// agent); the disk file instances are overlays of stays, and a rebuilt template is left alone next time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busybox_template_built_by_another_nimbus_is_rebuilt_at_start_and_its_disk_kept() {
    if !can_run_vms("a_busybox_template_built_by_another_nimbus_is_rebuilt_at_start_and_its_disk_kept") {
        return;
    }
    let data = tempfile::Builder::new().prefix("nv-").tempdir_in("/tmp").unwrap();
    let busybox = data.path().join("templates/busybox");
    std::fs::create_dir_all(busybox.parent().unwrap()).unwrap();
    let copied = Command::new("cp").arg("-a").arg(stock_template("busybox")).arg(&busybox).status().unwrap();
    assert!(copied.success());
    let manifest =
        || -> Value { serde_json::from_slice(&std::fs::read(busybox.join("template.json")).unwrap()).unwrap() };
    let current = manifest()["recipe"].as_str().expect("guest/build.sh records its recipe").to_string();
    let mut older = manifest();
    older["recipe"] = json!("sha256:0000");
    older["disk"] = json!("disk-older.qcow2");
    std::fs::copy(busybox.join(manifest()["disk"].as_str().unwrap()), busybox.join("disk-older.qcow2")).unwrap();
    std::fs::write(busybox.join("template.json"), older.to_string()).unwrap();

    let mut cloud = Cloud {
        data,
        netns: format!("nvt{}-12", std::process::id()),
        cidr: "10.213.112.0/24".into(),
        server: None,
        base: String::new(),
        http: reqwest::Client::new(),
    };
    cloud.start_server().await;
    assert_eq!(manifest()["recipe"], current.as_str(), "rebuilt from this Nimbus's build script and init");
    assert!(busybox.join("disk-older.qcow2").is_file(), "the disk instances may be overlays of is kept");
    let templates = cloud.get("/v1/templates").await;
    assert!(templates["items"].as_array().unwrap().iter().any(|t| t["name"] == "busybox"), "{templates}");
    let log = || std::fs::read_to_string(cloud.data_dir().join("server.log")).unwrap();
    assert!(log().contains("building the stock busybox template"), "{}", log());

    // Now what this server builds: the next start leaves it alone.
    let built = std::fs::metadata(busybox.join("template.json")).unwrap().modified().unwrap();
    cloud.kill_server();
    cloud.start_server().await;
    assert_eq!(std::fs::metadata(busybox.join("template.json")).unwrap().modified().unwrap(), built);
}

/// A rescue start boots the host's rescue system with the instance's disk attached and left alone: its
/// address answers, nothing is mounted, no user-data runs; the next plain start boots the instance's own
/// system, which finds its disk as it left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescue_start_boots_the_rescue_system_and_leaves_the_disk_alone() {
    if !can_run_vms("a_rescue_start_boots_the_rescue_system_and_leaves_the_disk_alone") {
        return;
    }
    let _vm = VMS.acquire().await.unwrap();
    let cloud = Cloud::start(9).await;
    // Every boot of the instance's own system counts itself on its disk.
    let script = base64(b"#!/bin/sh\necho boot >> /mnt/data/boots\nsync\necho boots=$(wc -l < /mnt/data/boots)\n");
    let body =
        json!({"name": "rescuable", "instance_type": "standard.micro", "template": "busybox", "user_data": script});
    let id = cloud.boot("/v1/instances", body).await["target"]["id"].as_str().unwrap().to_string();
    assert_eq!(ud_value(&cloud.console_after(&id, 0, "USERDATA rc=").await, "boots"), 1);
    let address = Cloud::address(&cloud.instance(&id).await);

    cloud.act(&format!("/v1/instances/{id}/stop"), json!({})).await;
    let from = cloud.console(&id).await.len();
    cloud.boot(&format!("/v1/instances/{id}/start"), json!({"rescue": true})).await;
    let rescued = cloud.console_after(&id, from, "READY").await;
    assert!(rescued.contains("RESCUE disks: vda"), "the rescue system, with the disk: {rescued}");
    assert!(!rescued.contains("DISK /dev/"), "the disk is not mounted: {rescued}");
    assert!(cloud.pings(&address, 10), "the rescue system has the instance's address");
    assert_eq!(cloud.instance(&id).await["rescue"], true, "the instance says it runs its rescue system");
    // User-data runs in the background after READY: give it the time it takes on a normal boot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!cloud.console(&id).await[from..].contains("USERDATA"), "no user-data in rescue");

    cloud.act(&format!("/v1/instances/{id}/stop"), json!({})).await;
    let from = cloud.console(&id).await.len();
    cloud.boot(&format!("/v1/instances/{id}/start"), json!({})).await;
    let own = cloud.console_after(&id, from, "USERDATA rc=").await;
    assert!(!own.contains("RESCUE"), "{own}");
    assert_eq!(ud_value(&own, "boots"), 2, "its own system again, its disk as it was: {own}");
    assert_eq!(cloud.instance(&id).await["rescue"], false);
    cloud.delete_leaves_nothing(&id, 0).await;
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
}

/// An http server on the loopback serving one directory, killed when dropped.
struct HttpServer(Child);

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_imported_from_a_file_and_a_url_and_bad_ones_are_refused() {
    if !can_run_vms("images_are_imported_from_a_file_and_a_url_and_bad_ones_are_refused") {
        return;
    }
    let _vm = VMS.acquire().await.unwrap();
    let cloud = Cloud::start(4).await;
    // The test's own bootable image: syslinux, Debian's kernel and the busybox guest on an MBR disk.
    let images = cloud.data_dir().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let image = images.join("bb.qcow2");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/bootable-busybox.sh");
    let status = Command::new("sh").arg(script).arg(stock_template("busybox")).arg(&image).status().unwrap();
    assert!(status.success(), "could not make the test image");
    let sum = sha256_of(&image);

    // From a file on the server's host, with its checksum.
    let body = json!({"name": "mine", "path": image, "checksum": sum, "default_user": "root"});
    let op = cloud.act("/v1/templates", body).await;
    let mine = cloud.get(&format!("/v1/templates/{}", op["result"]["template_id"].as_str().unwrap())).await;
    assert_eq!((mine["name"].as_str(), mine["checksum"].as_str()), (Some("mine"), Some(sum.as_str())), "{mine}");

    // From an http URL served on the loopback, through the CLI.
    let port = free_port();
    let _http = HttpServer(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(&images)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the http server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{port}/bb.qcow2");
    let out =
        cloud.cli().args(["template", "import", "mine-url", &url, "--checksum", &sum, "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "nimbus template import: {}", String::from_utf8_lossy(&out.stderr));
    let imported: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(imported["name"], "mine-url", "{imported}");

    // Refused, leaving nothing behind: a file that is not a disk image, and a checksum that does not match.
    let corrupt = images.join("corrupt.qcow2");
    std::fs::write(&corrupt, "this is not a disk image\n".repeat(4096)).unwrap();
    let (status, op) =
        cloud.call(reqwest::Method::POST, "/v1/templates", Some(json!({"name": "bad", "path": corrupt}))).await;
    assert_eq!(status, 202, "{op}");
    let failed = cloud.ends(&op, OPERATION_DEADLINE).await;
    assert_eq!(failed["state"], "failure", "{failed}");
    assert!(failed["message"].as_str().unwrap_or("").contains("not a disk image"), "{failed}");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let body = json!({"name": "mismatch", "url": url, "checksum": wrong});
    let (_, op) = cloud.call(reqwest::Method::POST, "/v1/templates", Some(body)).await;
    let failed = cloud.ends(&op, OPERATION_DEADLINE).await;
    assert_eq!(failed["state"], "failure", "{failed}");
    assert!(failed["message"].as_str().unwrap_or("").contains("checksum mismatch"), "{failed}");
    let names: Vec<String> = cloud.get("/v1/templates").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["busybox", "mine", "mine-url"]);
    let kept = std::fs::read_dir(cloud.data_dir().join("templates/.imported")).unwrap().count();
    assert_eq!(kept, 2, "only the two good images are kept");

    // An instance boots from the imported image (SeaBIOS, the image's own boot loader) and reads its
    // user-data from the NoCloud seed.
    let id = cloud.create_from("imp", "mine-url", "#!/bin/sh\necho imported-$(hostname)\n").await;
    let console = cloud.console_after(&id, 0, "USERDATA rc=").await;
    let args = cmdline(qemu_of(&id));
    assert!(!args.iter().any(|a| a == "-kernel"), "booted by the firmware from the image: {args:?}");
    assert!(console.contains("SEED nocloud"), "the guest read the NoCloud seed: {console}");
    assert!(console.contains("UD| imported-imp"), "hostname and user-data from the seed: {console}");
    cloud.delete_leaves_nothing(&id, 0).await;
}

/// How long the debian-12 guest may take to boot under TCG on a busy 2-core host (cloud-init is Python).
const DEBIAN_DEADLINE: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_12_applies_cloud_config_takes_ssh_logins_and_powers_off_cleanly() {
    if !can_run_vms("debian_12_applies_cloud_config_takes_ssh_logins_and_powers_off_cleanly") {
        return;
    }
    let _vm = VMS.acquire().await.unwrap();
    let cloud = Cloud::start_with(5, &["busybox", "debian-12"]).await;
    let key = cloud.data_dir().join("id_ed25519");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f"]).arg(&key).status();
    assert!(made.unwrap().success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let (status, body) = cloud
        .call(reqwest::Method::POST, "/v1/ssh-keys", Some(json!({"name": "ci", "public_key": public.trim()})))
        .await;
    assert_eq!(status, 201, "{body}");

    // Upstream cloud-config, unchanged from what any cloud takes.
    let user_data = "#cloud-config
write_files:
  - path: /etc/nimbus-ci
    content: written-by-cloud-init
runcmd:
  - [sh, -c, 'echo ran-on-$(hostname) > /var/tmp/runcmd-out']
";
    let body = json!({"name": "deb", "instance_type": "standard.micro", "template": "debian-12", "disk_size_gb": 5,
        "ssh_keys": ["ci"], "user_data": base64(user_data.as_bytes())});
    let started = Instant::now();
    let op = {
        let _turn = BOOT.lock().await;
        let (status, op) = cloud.call(reqwest::Method::POST, "/v1/instances", Some(body)).await;
        assert_eq!(status, 202, "{op}");
        cloud.ends(&op, DEBIAN_DEADLINE).await
    };
    assert_eq!(op["state"], "success", "{op}");
    println!(
        "debian-12: create to running (cloud-init applied users and keys) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let id = op["target"]["id"].as_str().unwrap().to_string();
    let vm = cloud.instance(&id).await;
    let address = Cloud::address(&vm);

    // `nimbus instance ssh` logs in as the template's default user with the key given at create; runcmd
    // runs in cloud-init's last stage, so it may take a moment after the login works.
    let ssh = |command: &str| {
        cloud.cli().args(["instance", "ssh", "deb", "-i"]).arg(&key).args(["--", command]).output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let seen = loop {
        let out = ssh("whoami; cat /etc/nimbus-ci; echo; cat /var/tmp/runcmd-out");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.contains("ran-on-deb") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no login with cloud-init's results: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    println!("debian-12: create to runcmd done, seen over ssh, in {:.1}s", started.elapsed().as_secs_f64());
    assert!(seen.starts_with("debian\n"), "the template's default user: {seen}");
    assert!(seen.contains("written-by-cloud-init"), "write_files: {seen}");

    // The disk is the instance's size and the guest grew its root filesystem to it (the image's is 2 GiB).
    let out = ssh("lsblk -bdno SIZE /dev/vda; df -B1 --output=size / | tail -1");
    let sizes: Vec<u64> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(sizes.first(), Some(&(5u64 << 30)), "{sizes:?}");
    assert!(sizes.get(1).is_some_and(|fs| *fs > 4 << 30), "the root filesystem was grown: {sizes:?}");

    // The guest agent reports the address Nimbus gave.
    let guest = cloud.get(&format!("/v1/instances/{id}/guest")).await;
    let addresses: Vec<&str> = guest["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["addresses"].as_array().unwrap().iter().filter_map(|a| a.as_str()))
        .collect();
    assert!(addresses.contains(&format!("{address}/24").as_str()), "{guest}");

    // A clean stop: the guest's systemd powers it off on the ACPI button, nothing is forced.
    let before = cloud.console(&id).await.len();
    cloud.act(&format!("/v1/instances/{id}/stop"), json!({})).await;
    assert_eq!(cloud.instance(&id).await["state"], "stopped");
    let shutdown = cloud.console_after(&id, before, "reboot: Power down").await;
    assert!(shutdown.contains("System Power Off") || shutdown.contains("Power-Off"), "{shutdown}");
    let log = std::fs::read_to_string(cloud.data_dir().join("server.log")).unwrap_or_default();
    assert!(!log.contains("forcing"), "the power-down was forced: {log}");
    cloud.delete_leaves_nothing(&id, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_12_boots_uefi_with_secure_boot_and_a_tpm() {
    if !can_run_vms("debian_12_boots_uefi_with_secure_boot_and_a_tpm") {
        return;
    }
    let _vm = VMS.acquire().await.unwrap();
    let cloud = Cloud::start_with(6, &["debian-12"]).await;
    let key = cloud.data_dir().join("id_ed25519");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f"]).arg(&key).status();
    assert!(made.unwrap().success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let (status, body) = cloud
        .call(reqwest::Method::POST, "/v1/ssh-keys", Some(json!({"name": "ci", "public_key": public.trim()})))
        .await;
    assert_eq!(status, 201, "{body}");
    let body = json!({"name": "sb", "instance_type": "standard.micro", "template": "debian-12", "ssh_keys": ["ci"],
        "tpm_enabled": true, "secure_boot": true});
    let op = {
        let _turn = BOOT.lock().await;
        let (status, op) = cloud.call(reqwest::Method::POST, "/v1/instances", Some(body)).await;
        assert_eq!(status, 202, "{op}");
        cloud.ends(&op, DEBIAN_DEADLINE).await
    };
    assert_eq!(op["state"], "success", "{op}");
    let id = op["target"]["id"].as_str().unwrap().to_string();
    // OVMF with Microsoft's keys enrolled ran Debian's signed shim, GRUB and kernel.
    let console = cloud.console_after(&id, 0, "NIMBUS-READY").await;
    assert!(console.contains("Secure boot enabled"), "{console}");
    let args = cmdline(qemu_of(&id)).join(" ");
    assert!(args.contains("OVMF_CODE_4M.secboot.fd") && args.contains("tpm-crb"), "{args}");
    // The guest sees a TPM 2.0 (swtpm's), and swtpm's state is the instance's.
    let out = cloud
        .cli()
        .args(["instance", "ssh", "sb", "-i"])
        .arg(&key)
        .args(["--", "cat /sys/class/tpm/tpm0/tpm_version_major; mokutil --sb-state 2>/dev/null || true"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with('2'), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(cloud.instance_dir(&id).join("tpm").read_dir().unwrap().next().is_some(), "swtpm keeps its state");

    // A guest that ignores the ACPI power button is asked through its guest agent, and powers off cleanly.
    let out = cloud
        .cli()
        .args(["instance", "ssh", "sb", "-i"])
        .arg(&key)
        .args([
            "--",
            "sudo mkdir -p /etc/systemd/logind.conf.d && printf '[Login]\\nHandlePowerKey=ignore\\n' \
            | sudo tee /etc/systemd/logind.conf.d/ignore.conf && sudo systemctl restart systemd-logind",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = cloud.console(&id).await.len();
    cloud.act(&format!("/v1/instances/{id}/stop"), json!({})).await;
    cloud.console_after(&id, before, "reboot: Power down").await;
    let log = std::fs::read_to_string(cloud.data_dir().join("server.log")).unwrap_or_default();
    assert!(log.contains("asking its agent"), "the guest agent was not asked: {log}");
    assert!(!log.contains("forcing"), "the power-down was forced: {log}");
    cloud.delete_leaves_nothing(&id, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_no_template_builds_the_stock_busybox_one() {
    if !can_run_vms("a_server_with_no_template_builds_the_stock_busybox_one") {
        return;
    }
    let cloud = Cloud::start_with(7, &[]).await;
    let templates = cloud.get("/v1/templates").await;
    assert_eq!(templates["items"][0]["name"], "busybox", "{templates}");
    assert!(cloud.data_dir().join("templates/busybox/template.json").is_file());
}

#[path = "topology/mod.rs"]
mod topology;

/// What the two-hosts test leaves on the machine beyond its fabric: the QEMUs of its agents' data dirs and
/// the instance namespaces their drivers made. Removed when dropped, also when an assertion fails.
struct HostLeftovers {
    data_dirs: Vec<String>,
    namespaces: Vec<String>,
}

impl Drop for HostLeftovers {
    fn drop(&mut self) {
        for needle in &self.data_dirs {
            for pid in qemu_pids(needle) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Two hosts, each a network namespace with its own `nimbus agent` running the qemu driver, and a control
/// plane on the fabric between them: two busybox VMs kept apart by an anti-affinity group land on different
/// hosts, and one reaches the other across the hosts' VXLAN overlay (its user-data pings the other's address
/// and says so on its console). The agent of a host is then killed with SIGKILL: its VM keeps running (same
/// QEMU process), shows `unknown` while the host is silent, and `running` again, not rebooted, once the agent
/// is back and adopts it.
#[test]
fn vms_on_two_hosts_reach_each_other_across_the_overlay_and_survive_their_agent() {
    if !can_run_vms("vms_on_two_hosts_reach_each_other_across_the_overlay_and_survive_their_agent") {
        return;
    }
    let template = stock_template("busybox");
    let template_dir = template.parent().unwrap().to_path_buf();
    let fabric = topology::Fabric::new(2);
    fabric.run_inside(move |mut f| async move {
        let _vms = VMS.acquire_many(2).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let agent_data = |i: usize| dir.path().join(format!("agent-{i}"));
        let tag = f.tag.clone();
        let netns = |i: usize| format!("nbt-vm{}-{tag}", i + 1);
        let _leftovers = HostLeftovers {
            data_dirs: (0..2).map(|i| agent_data(i).display().to_string()).collect(),
            namespaces: (0..2).map(netns).collect(),
        };
        let port = 18790;
        let base = format!("http://{}:{port}", topology::Fabric::server_address());
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let server = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(["server", "--no-local-agent", "--driver", "sim", "--listen"])
            .arg(format!("{}:{port}", topology::Fabric::server_address()))
            .args(["--network-cidr", "10.212.0.0/24", "--host-timeout-secs", "6", "--reconcile-secs", "1"])
            .arg("--data-dir")
            .arg(dir.path().join("server"))
            .env("NIMBUS_BOOTSTRAP_KEY", "NIMtwohosts")
            .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        f.adopt("server", server);
        let http = reqwest::Client::new();
        let call = |method: reqwest::Method, path: String, body: Option<Value>| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let mut req = http.request(method, format!("{base}{path}")).bearer_auth(SECRET);
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let r = req.send().await.expect("the API answers");
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        topology::until("the server to come up", Duration::from_secs(30), || {
            let (http, base) = (http.clone(), base.clone());
            async move { http.get(format!("{base}/healthz")).send().await.ok().map(|_| ()) }
        })
        .await;

        let mut tokens = Vec::new();
        for i in 0..2 {
            let (s, t) = call(reqwest::Method::POST, "/v1/host-tokens".into(), Some(json!({"host": format!("h{}", i + 1)})))
                .await;
            assert_eq!(s, 201, "{t}");
            tokens.push(t["token"].as_str().unwrap().to_string());
        }
        let start_agent = |f: &mut topology::Fabric, i: usize| {
            let log =
                std::fs::File::options().create(true).append(true).open(dir.path().join(format!("agent-{i}.log"))).unwrap();
            let child = f
                .in_host(i, Path::new(env!("CARGO_BIN_EXE_nimbus")))
                .args(["agent", "--driver", "qemu", "--name", &format!("h{}", i + 1), "--token", &tokens[i]])
                .arg("--server")
                .arg(&base)
                .arg("--data-dir")
                .arg(agent_data(i))
                .args(["--netns", &netns(i)])
                .arg("--template-dir")
                .arg(&template_dir)
                .arg("--underlay-address")
                .arg(topology::Fabric::host_address(i))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            f.adopt(&format!("agent-{i}"), child);
        };
        for i in 0..2 {
            start_agent(&mut f, i);
        }
        let host_state = |name: &'static str| {
            async move {
                let (_, hosts) = call(reqwest::Method::GET, "/v1/hosts".into(), None).await;
                hosts["items"].as_array()?.iter().find(|h| h["name"] == name).map(|h| h["state"].clone())
            }
        };
        topology::until("two ready hosts", Duration::from_secs(60), || async {
            (host_state("h1").await? == "ready" && host_state("h2").await? == "ready").then_some(())
        })
        .await;

        let (s, group) =
            call(reqwest::Method::POST, "/v1/anti-affinity-groups".into(), Some(json!({"name": "apart"}))).await;
        assert_eq!(s, 201, "{group}");
        let create = |name: &'static str, user_data: String| {
            let group = group["id"].clone();
            async move {
                let _boot = BOOT.lock().await;
                let body = json!({"name": name, "instance_type": "standard.micro", "template": "busybox",
                    "anti_affinity_groups": [group], "user_data": base64(user_data.as_bytes())});
                let (s, op) = call(reqwest::Method::POST, "/v1/instances?wait=150".into(), Some(body)).await;
                assert!(s == 200 || s == 202, "{op}");
                let id = op["target"]["id"].as_str().unwrap().to_string();
                let deadline = Instant::now() + OPERATION_DEADLINE;
                loop {
                    let (_, op) = call(reqwest::Method::GET, format!("/v1/operations/{}?wait=30", op["id"].as_str().unwrap()), None).await;
                    if op["state"] == "success" {
                        break;
                    }
                    assert!(op["state"] == "pending" || op["state"] == "running", "{name}: {op}");
                    assert!(Instant::now() < deadline, "{name} never booted: {op}");
                }
                call(reqwest::Method::GET, format!("/v1/instances/{id}"), None).await.1
            }
        };
        let b = create("b", "#!/bin/sh\necho b is up\n".into()).await;
        let b_address = b["ip_addresses"][0].as_str().unwrap().to_string();
        let script = format!(
            "#!/bin/sh\nfor i in $(seq 90); do\n  if ping -c 1 -W 1 {b_address} >/dev/null 2>&1; then echo reached={b_address}; exit 0; fi\n  sleep 1\ndone\necho reached=none\nexit 1\n"
        );
        let a = create("a", script).await;
        assert_eq!(b["state"], "running", "{b}");
        assert_ne!(a["host"], b["host"], "the anti-affinity group keeps them apart: {a} {b}");
        let a_id = a["id"].as_str().unwrap().to_string();
        let console = |id: String| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http.get(format!("{base}/v1/instances/{id}/console")).bearer_auth(SECRET).send().await.unwrap();
                r.text().await.unwrap()
            }
        };
        let reached = topology::until("a's user-data to finish pinging b", Duration::from_secs(150), || {
            let console = console(a_id.clone());
            async move { console.await.lines().find(|l| l.contains("UD| reached=")).map(str::to_string) }
        })
        .await;
        assert!(reached.ends_with(&format!("reached={b_address}")), "a never reached b across the overlay: {reached}");

        // The agent of a's host goes, as `kill -9` would: the VM does not.
        let a_host: usize = if a["host"] == "h1" { 0 } else { 1 };
        let pid = qemu_of(&a_id);
        let started = start_time(pid);
        f.kill9(&format!("agent-{a_host}"));
        let instance_state = |id: String| {
            async move { call(reqwest::Method::GET, format!("/v1/instances/{id}"), None).await.1["state"].clone() }
        };
        topology::until("a to show unknown while its host is silent", Duration::from_secs(30), || {
            let state = instance_state(a_id.clone());
            async move { (state.await == "unknown").then_some(()) }
        })
        .await;
        assert_eq!(qemu_of(&a_id), pid, "the VM runs on without its agent");

        start_agent(&mut f, a_host);
        topology::until("a to be running again once its agent is back", Duration::from_secs(60), || {
            let state = instance_state(a_id.clone());
            async move { (state.await == "running").then_some(()) }
        })
        .await;
        assert_eq!(qemu_of(&a_id), pid, "adopted, not restarted");
        assert_eq!(start_time(pid), started);
        let boots = console(a_id.clone()).await.matches("READY").count();
        assert_eq!(boots, 1, "the guest booted once");

        for id in [a_id.clone(), b["id"].as_str().unwrap().to_string()] {
            let (s, op) = call(reqwest::Method::DELETE, format!("/v1/instances/{id}?wait=60"), None).await;
            assert!(s == 200 || s == 202, "{op}");
        }
    });
}
/// The web console's terminal on a real VM: Debian's headless Chromium (driven by Playwright,
/// `tests/sdk/ui/vm_console.py`) logs in at the guest's getty through the page and reads a command's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_types_into_a_vm_console_in_the_web_console() {
    if !can_run_vms("a_user_types_into_a_vm_console_in_the_web_console") {
        return;
    }
    assert!(Path::new("/usr/bin/chromium").exists(), "no /usr/bin/chromium — run scripts/install-sdks.sh");
    let python = sdk::venv_dir("ui").join("bin/python");
    assert!(python.exists(), "no {} — run scripts/install-sdks.sh", python.display());
    let _vm = VMS.acquire().await.unwrap();
    let cloud = Cloud::start(4).await;
    // The user logs in as root with the password Nimbus set, as the API reveals it.
    let id = cloud.create("console", "#!/bin/sh\necho ready for a login\n").await;
    let password = cloud.get(&format!("/v1/instances/{id}/password")).await["password"].as_str().unwrap().to_string();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    let out = tokio::task::spawn_blocking({
        let (base, id) = (cloud.base.clone(), id.clone());
        move || {
            Command::new(python)
                .arg(sdk::scripts_dir().join("ui/vm_console.py"))
                .env("NIMBUS_URL", base)
                .env("NIMBUS_SECRET", SECRET)
                .env("INSTANCE_ID", id)
                .env("INSTANCE_PASSWORD", password)
                .env("NIMBUS_SCREENSHOTS", screenshots)
                .stdin(Stdio::null())
                .output()
                .expect("run python")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the browser did not get the VM's answer:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    cloud.delete_leaves_nothing(&id, 0).await;
}
