//! The figures of many hosts, measured (not asserted): run by `bench/hosts.sh`, which prints them for
//! docs/BENCHMARKS.md. Ignored by `cargo test`.
//!
//! Same topology as `many_hosts.rs`: PostgreSQL and two control-plane servers in a fabric namespace, agents
//! on the sim driver each in a host namespace of its own.
//! - placement throughput: N creates (16 at a time through both servers) until every operation succeeded,
//!   with one agent, then with three;
//! - the time from a SIGKILL of an agent to its instances showing `unknown`, with the default host timeout;
//! - an agent's own resident memory and CPU while idle with 50 instances on its host.

mod topology;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use topology::{until, Fabric};

const KEY: &str = "NIMbench";
const SECRET: &str = "hosts-bench-secret-0123456789";

fn nimbus() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nimbus"))
}

struct Cloud {
    fabric: Fabric,
    http: reqwest::Client,
    bases: Vec<String>,
    dir: tempfile::TempDir,
    tokens: Vec<String>,
}

impl Cloud {
    async fn call(&self, n: usize, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method, format!("{}{path}", self.bases[n % self.bases.len()])).bearer_auth(SECRET);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn start(mut fabric: Fabric, host_timeout_secs: u64) -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let database = fabric.start_postgres();
        let mut bases = Vec::new();
        for n in 0..2 {
            let port = 18800 + n;
            let child = std::process::Command::new(nimbus())
                .args(["server", "--no-local-agent", "--driver", "sim", "--listen"])
                .arg(format!("{}:{port}", Fabric::server_address()))
                .args(["--database", &database, "--network-cidr", "10.208.0.0/16"])
                .env("NIMBUS_SEAL_KEYS", SEAL_KEYS)
                .args(["--host-timeout-secs", &host_timeout_secs.to_string(), "--reconcile-secs", "1"])
                .arg("--data-dir")
                .arg(dir.path().join(format!("server-{n}")))
                .env("NIMBUS_BOOTSTRAP_KEY", KEY)
                .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
                .env("NIMBUS_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            fabric.adopt(&format!("server-{n}"), child);
            let base = format!("http://{}:{port}", Fabric::server_address());
            let http = reqwest::Client::new();
            until("a server", Duration::from_secs(30), || {
                let (http, base) = (http.clone(), base.clone());
                async move { http.get(format!("{base}/healthz")).send().await.ok().map(|_| ()) }
            })
            .await;
            bases.push(base);
        }
        let mut cloud = Cloud { fabric, http: reqwest::Client::new(), bases, dir, tokens: Vec::new() };
        let project = cloud.call(0, reqwest::Method::GET, "/v1/whoami", None).await.1["project"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        cloud
            .call(
                0,
                reqwest::Method::PUT,
                &format!("/v1/projects/{project}/quota"),
                Some(json!({"instances": 100000, "vcpus": 1000000, "memory_mib": 1u64 << 42, "disk_gb": 1u64 << 32})),
            )
            .await;
        for i in 0..cloud.fabric.hosts.len() {
            let t = cloud
                .call(i, reqwest::Method::POST, "/v1/host-tokens", Some(json!({"host": format!("h{}", i + 1)})))
                .await
                .1;
            cloud.tokens.push(t["token"].as_str().unwrap().to_string());
        }
        cloud
    }

    fn start_agent(&mut self, i: usize) -> u32 {
        let child = self
            .fabric
            .in_host(i, nimbus())
            .args(["agent", "--driver", "sim", "--name", &format!("h{}", i + 1), "--token", &self.tokens[i]])
            .arg("--server")
            .arg(format!("http://{}:{}", Fabric::server_address(), 18800 + (i % 2)))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("agent-{i}")))
            .env("NIMBUS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.fabric.adopt(&format!("agent-{i}"), child);
        pid
    }

    async fn ready_hosts(&self, n: usize) {
        until("ready hosts", Duration::from_secs(30), || async {
            let hosts = self.call(0, reqwest::Method::GET, "/v1/hosts", None).await.1;
            let ready = hosts["items"].as_array()?.iter().filter(|h| h["state"] == "ready").count();
            (ready == n).then_some(())
        })
        .await;
    }

    /// Creates `n` instances, 16 at a time through both servers; seconds until all succeeded.
    async fn create(&self, prefix: &str, n: usize) -> f64 {
        let started = Instant::now();
        let mut ops = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
            let creates = chunk.iter().map(|&i| async move {
                let body =
                    json!({"name": format!("{prefix}{i}"), "instance_type": "standard.micro", "template": "busybox"});
                self.call(i, reqwest::Method::POST, "/v1/instances", Some(body)).await
            });
            for (status, op) in futures_util::future::join_all(creates).await {
                assert_eq!(status, 202, "{op}");
                ops.push(op["id"].as_str().unwrap().to_string());
            }
        }
        for op in &ops {
            loop {
                let v = self.call(0, reqwest::Method::GET, &format!("/v1/operations/{op}?wait=30"), None).await.1;
                if v["state"] == "success" {
                    break;
                }
                assert!(v["state"] == "pending" || v["state"] == "running", "{v}");
            }
        }
        started.elapsed().as_secs_f64()
    }
}

fn proc_figures(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (rss_kib, ticks)
}

#[test]
#[ignore = "a benchmark: bench/hosts.sh runs it"]
fn hosts_figures() {
    let n: usize = std::env::var("CREATES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let mut lines = Vec::new();
    for agents in [1usize, 3] {
        let fabric = Fabric::new(agents);
        let secs = fabric.run_inside(move |f| async move {
            let mut cloud = Cloud::start(f, 10).await;
            for i in 0..agents {
                cloud.start_agent(i);
            }
            cloud.ready_hosts(agents).await;
            cloud.create("warm", 16).await;
            cloud.create("i", n).await
        });
        lines.push(format!(
            "| placement: {n} creates until all succeeded, {agents} agent(s) | {secs:.1} s ({:.0} creates/s) |",
            n as f64 / secs
        ));
    }
    let fabric = Fabric::new(1);
    let (detect, rss_kib, cpu_pct) = fabric.run_inside(|f| async move {
        let mut cloud = Cloud::start(f, 10).await;
        // `ip netns exec` execs the agent: the child's pid is the agent's.
        let pid = cloud.start_agent(0);
        cloud.ready_hosts(1).await;
        cloud.create("idle", 50).await;
        // Idle: let the first reports settle, then 30 s of nothing but heartbeats and reports.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (_, t0) = proc_figures(pid);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (rss, t1) = proc_figures(pid);
        let hz = 100.0;
        let cpu = (t1 - t0) as f64 / hz / 30.0 * 100.0;
        cloud.fabric.kill9("agent-0");
        let lost = Instant::now();
        until("instances unknown", Duration::from_secs(60), || async {
            let all = cloud.call(0, reqwest::Method::GET, "/v1/instances?limit=100", None).await.1;
            let items = all["items"].as_array()?;
            items.iter().all(|i| i["state"] == "unknown").then_some(())
        })
        .await;
        (lost.elapsed().as_secs_f64(), rss, cpu)
    });
    lines.push(format!("| time from kill -9 of an agent to its instances shown `unknown` (host timeout 10 s, reconcile every 1 s) | {detect:.1} s |"));
    lines.push(format!(
        "| agent resident memory, idle with 50 instances (sim driver) | {:.1} MiB |",
        rss_kib as f64 / 1024.0
    ));
    lines.push(format!("| agent CPU, idle with 50 instances, over 30 s | {cpu_pct:.2} % of a core |"));
    println!("\n| measurement | value |\n|---|---|");
    for l in lines {
        println!("{l}");
    }
}

/// The seal key ring the test's servers share (servers on one database must): a public test key.
const SEAL_KEYS: &str = "test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
