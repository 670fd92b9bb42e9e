//! A small data center on one machine, for tests: a "fabric" network namespace with a bridge, and hosts,
//! each a network namespace of its own joined to the fabric by a veth pair with an address on the fabric's
//! network. Every address lives inside namespaces this harness creates, and everything it made (namespaces,
//! the processes it started, a PostgreSQL cluster) goes when it is dropped, also when an assertion fails.
//!
//! The test's own HTTP client and the API servers run inside the fabric namespace: the harness runs the test
//! body on a thread that has entered it (`setns`), and processes spawned from that thread are born there.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fabric's network; hosts get .11, .12, ...; the fabric's bridge, where the servers listen, .1.
pub const FABRIC_NET: &str = "10.251.0";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// The namespaces of one topology; removed on drop.
pub struct Fabric {
    pub tag: String,
    pub fabric: String,
    pub hosts: Vec<String>,
    children: Vec<(String, Child)>,
    pg_dir: Option<PathBuf>,
}

impl Fabric {
    /// A fabric with `n` hosts. Names carry a random tag so that concurrent tests never share one.
    pub fn new(n: usize) -> Fabric {
        let tag = format!("{:04x}", rand_u16());
        let fabric = format!("nbt-fab-{tag}");
        let mut f =
            Fabric { tag: tag.clone(), fabric: fabric.clone(), hosts: Vec::new(), children: Vec::new(), pg_dir: None };
        ip(&["netns", "add", &fabric]);
        ip(&["-n", &fabric, "link", "set", "lo", "up"]);
        ip(&["-n", &fabric, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &fabric, "addr", "add", &format!("{FABRIC_NET}.1/24"), "dev", "br0"]);
        ip(&["-n", &fabric, "link", "set", "br0", "up"]);
        for i in 0..n {
            let host = format!("nbt-h{}-{tag}", i + 1);
            ip(&["netns", "add", &host]);
            f.hosts.push(host.clone());
            ip(&["-n", &host, "link", "set", "lo", "up"]);
            // The pair is made inside the host's namespace, its far end moved into the fabric's.
            let (near, far) = ("up0".to_string(), format!("h{}{tag}", i + 1));
            ip(&["-n", &host, "link", "add", &near, "type", "veth", "peer", "name", &far]);
            ip(&["-n", &host, "link", "set", &far, "netns", &fabric]);
            ip(&["-n", &host, "addr", "add", &format!("{}/24", Fabric::host_address(i)), "dev", &near]);
            ip(&["-n", &host, "link", "set", &near, "up"]);
            ip(&["-n", &fabric, "link", "set", &far, "master", "br0"]);
            ip(&["-n", &fabric, "link", "set", &far, "up"]);
        }
        f
    }

    /// Host `i`'s address on the fabric.
    pub fn host_address(i: usize) -> String {
        format!("{FABRIC_NET}.{}", 11 + i)
    }

    /// The fabric address the API servers listen on.
    pub fn server_address() -> String {
        format!("{FABRIC_NET}.1")
    }

    /// Runs `body` (which takes the fabric, and drops it when done) on a thread that has entered the
    /// fabric's namespace: its sockets, and the processes it spawns, live there.
    pub fn run_inside<T, F, Fut>(self, body: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Fabric) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let path = format!("/run/netns/{}", self.fabric);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the fabric namespace exists");
            // SAFETY: setns on this thread only, with a valid namespace fd it keeps open during the call.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "entering {path}: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(body(self))
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Starts a PostgreSQL cluster inside the fabric (on its loopback), for its servers; returns its URL.
    pub fn start_postgres(&mut self) -> String {
        let dir = tempfile::Builder::new().prefix("nbt-pg-").tempdir().unwrap().keep();
        let port = 20000 + u32::from(rand_u16()) % 20000;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.fabric])
            .arg(&script)
            .args(["start"])
            .arg(&dir)
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres.sh: {}", String::from_utf8_lossy(&out.stderr));
        self.pg_dir = Some(dir);
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string()
    }

    /// Spawns a process (from the fabric thread, it is born in the fabric); killed with SIGKILL on drop.
    pub fn adopt(&mut self, name: &str, child: Child) {
        self.children.push((name.to_string(), child));
    }

    /// Kills a process this fabric started, as `kill -9` would.
    pub fn kill9(&mut self, name: &str) {
        if let Some(pos) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A command that runs inside host `i`'s namespace.
    pub fn in_host(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i]]).arg(program).stdin(Stdio::null());
        c
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.pg_dir {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
            let _ = Command::new(script).arg("stop").arg(dir).output();
        }
        for ns in self.hosts.iter().chain(std::iter::once(&self.fabric)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).unwrap();
    u16::from_le_bytes(b)
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `within`.
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
