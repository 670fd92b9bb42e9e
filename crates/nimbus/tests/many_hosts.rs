//! Many hosts, on one machine: PostgreSQL and two API servers (control plane only) in a "fabric" network
//! namespace, three `nimbus agent`s each in a namespace of its own standing for a host (sim driver), joined
//! to the fabric by veth pairs. Checks what an operator of many hosts relies on:
//! - 1,000 instances created through both servers land within the hosts' capacity, spread across them;
//! - a detached volume attached to an instance of another host moves there, and again to a third;
//! - an anti-affinity group of 3 gets 3 hosts, and a 4th member is refused with the group named;
//! - a host whose agent is killed with SIGKILL shows its instances `unknown` within the heartbeat bound,
//!   and `running` again, not rebooted, once the agent is back;
//! - a host that stays down is evacuated: its instances are recreated on the other hosts.
//!
//! Needs root (network namespaces) and PostgreSQL's binaries (scripts/install-deps.sh); skips saying so
//! otherwise, unless NIMBUS_REQUIRE_POSTGRES=1.

mod topology;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use topology::{until, Fabric};

const KEY: &str = "NIMhosts";
const SECRET: &str = "many-hosts-secret-0123456789";
/// Each host's CPUs; with no overcommit, what 1,000 single-vCPU instances and an evacuation need.
const HOST_VCPUS: u64 = 700;
/// Seconds without a heartbeat before a host is unreachable.
const HOST_TIMEOUT_SECS: u64 = 6;

struct Api {
    http: reqwest::Client,
    bases: Vec<String>,
}

impl Api {
    async fn call(&self, n: usize, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method, format!("{}{path}", self.bases[n % self.bases.len()])).bearer_auth(SECRET);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("the API answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> Value {
        self.call(0, reqwest::Method::GET, path, None).await.1
    }
    async fn post(&self, n: usize, path: &str, body: Value) -> (u16, Value) {
        self.call(n, reqwest::Method::POST, path, Some(body)).await
    }
    async fn instances(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let path = match &token {
                Some(t) => format!("/v1/instances?limit=1000&page_token={t}"),
                None => "/v1/instances?limit=1000".to_string(),
            };
            let page = self.get(&path).await;
            all.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return all,
            }
        }
    }
    async fn wait(&self, op: &str) -> Value {
        loop {
            let v = self.get(&format!("/v1/operations/{op}?wait=30")).await;
            if v["state"] != "pending" && v["state"] != "running" {
                return v;
            }
        }
    }
}

fn nimbus() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nimbus"))
}

fn can_run(test: &str) -> bool {
    let have_pg = Path::new("/usr/lib/postgresql/15/bin/initdb").exists();
    if topology::is_root() && have_pg {
        return true;
    }
    assert!(
        std::env::var("NIMBUS_REQUIRE_POSTGRES").as_deref() != Ok("1"),
        "{test} must run here (root, PostgreSQL 15 installed)"
    );
    println!("SKIPPED {test}: needs root and PostgreSQL 15 (scripts/install-deps.sh)");
    false
}

#[test]
fn many_hosts_place_within_capacity_survive_a_lost_agent_and_evacuate() {
    if !can_run("many_hosts") {
        return;
    }
    let fabric = Fabric::new(3);
    fabric.run_inside(|mut f| async move {
        let dir = tempfile::tempdir().unwrap();
        let database = f.start_postgres();
        // Two control-plane servers on the fabric, sharing the database.
        let mut bases = Vec::new();
        for n in 0..2 {
            let port = 18700 + n;
            let data = dir.path().join(format!("server-{n}"));
            let log = std::fs::File::create(dir.path().join(format!("server-{n}.log"))).unwrap();
            let child = std::process::Command::new(nimbus())
                .args(["server", "--no-local-agent", "--driver", "sim", "--listen"])
                .arg(format!("{}:{port}", Fabric::server_address()))
                .args(["--database", &database, "--cpu-overcommit", "1", "--memory-overcommit", "1"])
                .env("NIMBUS_SEAL_KEYS", SEAL_KEYS)
                .args(["--network-cidr", "10.210.0.0/20"])
                .args(["--host-timeout-secs", &HOST_TIMEOUT_SECS.to_string(), "--reconcile-secs", "1"])
                .arg("--data-dir")
                .arg(&data)
                .env("NIMBUS_BOOTSTRAP_KEY", KEY)
                .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            f.adopt(&format!("server-{n}"), child);
            let base = format!("http://{}:{port}", Fabric::server_address());
            let http = reqwest::Client::new();
            until("a server to come up", Duration::from_secs(30), || {
                let (http, base) = (http.clone(), base.clone());
                async move { http.get(format!("{base}/healthz")).send().await.ok().map(|_| ()) }
            })
            .await;
            bases.push(base);
        }
        let api = Api { http: reqwest::Client::new(), bases };
        let project = api.get("/v1/whoami").await["project"]["id"].as_str().unwrap().to_string();
        let (s, q) = api
            .call(0, reqwest::Method::PUT, &format!("/v1/projects/{project}/quota"),
                Some(json!({"instances": 100000, "vcpus": 100000, "memory_mib": 1u64 << 40, "disk_gb": 1u64 << 30})))
            .await;
        assert_eq!(s, 200, "{q}");

        // Three agents, each in its own namespace, reaching the servers across the fabric.
        let mut tokens = Vec::new();
        for i in 0..3 {
            let (s, t) = api.post(i, "/v1/host-tokens", json!({"host": format!("h{}", i + 1)})).await;
            assert_eq!(s, 201, "{t}");
            tokens.push(t["token"].as_str().unwrap().to_string());
        }
        let start_agent = |f: &mut Fabric, i: usize| {
            let log = std::fs::File::options()
                .create(true)
                .append(true)
                .open(dir.path().join(format!("agent-{i}.log")))
                .unwrap();
            let child = f
                .in_host(i, nimbus())
                .args(["agent", "--driver", "sim", "--name", &format!("h{}", i + 1), "--token", &tokens[i]])
                .arg("--server")
                .arg(format!("http://{}:{}", Fabric::server_address(), 18700 + (i % 2)))
                .arg("--data-dir")
                .arg(dir.path().join(format!("agent-{i}")))
                .args(["--sim-vcpus", &HOST_VCPUS.to_string(), "--sim-memory-mib", &(HOST_VCPUS * 1024).to_string()])
                .arg("--underlay-address")
                .arg(Fabric::host_address(i))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            f.adopt(&format!("agent-{i}"), child);
        };
        for i in 0..3 {
            start_agent(&mut f, i);
        }
        until("three ready hosts", Duration::from_secs(30), || async {
            let hosts = api.get("/v1/hosts").await;
            let ready = hosts["items"].as_array()?.iter().filter(|h| h["state"] == "ready").count();
            (ready == 3).then_some(())
        })
        .await;

        // 1,000 instances, through both servers, 16 at a time.
        let started = Instant::now();
        let mut ops = Vec::new();
        for chunk in (0..1000usize).collect::<Vec<_>>().chunks(16) {
            let creates = chunk.iter().map(|&n| {
                let api = &api;
                async move {
                    let body = json!({"name": format!("i{n}"), "instance_type": "standard.micro", "template": "busybox"});
                    api.post(n, "/v1/instances", body).await
                }
            });
            for (status, op) in futures_util::future::join_all(creates).await {
                assert_eq!(status, 202, "{op}");
                ops.push(op["id"].as_str().unwrap().to_string());
            }
        }
        for op in &ops {
            let done = api.wait(op).await;
            assert_eq!(done["state"], "success", "{done}");
        }
        eprintln!("1,000 creates through two servers onto three hosts: {:?}", started.elapsed());
        let hosts = api.get("/v1/hosts").await;
        let mut spread = BTreeMap::new();
        for h in hosts["items"].as_array().unwrap() {
            let used = h["allocation"]["vcpus"].as_u64().unwrap();
            assert!(used <= h["capacity"]["vcpus"].as_u64().unwrap(), "over capacity: {h}");
            spread.insert(h["name"].as_str().unwrap().to_string(), h["instances"].as_u64().unwrap());
        }
        assert_eq!(spread.values().sum::<u64>(), 1000, "{spread:?}");
        assert!(spread.values().all(|&n| n >= 250), "spread across the hosts: {spread:?}");

        // The interactive console of an instance on another host, through a server: its agent brings it.
        {
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            use tokio_tungstenite::tungstenite::Message;
            let all = api.instances().await;
            let remote = all.iter().find(|i| i["host"] == "h3").unwrap()["id"].as_str().unwrap().to_string();
            let url = format!("{}/v1/instances/{remote}/console/stream", api.bases[1]).replacen("http", "ws", 1);
            let mut request = url.as_str().into_client_request().unwrap();
            request.headers_mut().insert("authorization", format!("Bearer {SECRET}").parse().unwrap());
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("the console opens");
            socket.send(Message::Text("hello from the test".into())).await.unwrap();
            let mut seen = String::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !seen.contains("hello from the test") {
                assert!(Instant::now() < deadline, "no echo through the console: {seen:?}");
                match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
                    Ok(Some(Ok(Message::Text(t)))) => seen.push_str(&t),
                    _ => {}
                }
            }
            assert!(seen.contains("READY"), "the guest's serial log came first: {seen:?}");
        }

        // A detached volume follows the instance it is attached to, to that instance's host, and again.
        {
            let (s, op) = api.post(0, "/v1/volumes", json!({"name": "traveller", "size_gb": 1})).await;
            assert_eq!(s, 202, "{op}");
            let made = api.wait(op["id"].as_str().unwrap()).await;
            assert_eq!(made["state"], "success", "{made}");
            let volume = made["target"]["id"].as_str().unwrap().to_string();
            let mut host = api.get(&format!("/v1/volumes/{volume}")).await["host"].as_str().unwrap().to_string();
            let all = api.instances().await;
            for round in 0..2 {
                let target = all.iter().find(|i| i["host"] != host.as_str()).unwrap();
                let (to, instance) = (target["host"].as_str().unwrap(), target["id"].as_str().unwrap());
                let path = format!("/v1/volumes/{volume}/attach");
                let (s, op) = api.post(round, &path, json!({"instance_id": instance})).await;
                assert_eq!(s, 202, "{op}");
                let done = api.wait(op["id"].as_str().unwrap()).await;
                assert_eq!(done["state"], "success", "round {round}: {done}");
                let v = api.get(&format!("/v1/volumes/{volume}")).await;
                assert_eq!((v["state"].as_str(), v["host"].as_str()), (Some("in-use"), Some(to)), "{v}");
                let from = host.trim_start_matches('h').parse::<usize>().unwrap() - 1;
                let left = files_naming(&dir.path().join(format!("agent-{from}")), &volume);
                assert!(left.is_empty(), "the old host keeps nothing of it: {left:?}");
                let (s, op) = api.post(round, &format!("/v1/volumes/{volume}/detach"), json!({})).await;
                assert_eq!(s, 202, "{op}");
                assert_eq!(api.wait(op["id"].as_str().unwrap()).await["state"], "success");
                host = to.to_string();
            }
            let (s, op) = api.call(0, reqwest::Method::DELETE, &format!("/v1/volumes/{volume}"), None).await;
            assert_eq!(s, 202, "{op}");
            assert_eq!(api.wait(op["id"].as_str().unwrap()).await["state"], "success");
        }

        // Anti-affinity: three members on three hosts, a fourth refused with the group's name.
        let (s, g) = api.post(0, "/v1/anti-affinity-groups", json!({"name": "spread-me"})).await;
        assert_eq!(s, 201, "{g}");
        let group = g["id"].as_str().unwrap().to_string();
        let mut member_hosts = Vec::new();
        for n in 0..3 {
            let body = json!({"name": format!("m{n}"), "instance_type": "standard.micro", "template": "busybox",
                              "anti_affinity_groups": [group]});
            let (s, op) = api.post(n, "/v1/instances", body).await;
            assert_eq!(s, 202, "{op}");
            let done = api.wait(op["id"].as_str().unwrap()).await;
            let i = api.get(&format!("/v1/instances/{}", done["target"]["id"].as_str().unwrap())).await;
            member_hosts.push(i["host"].as_str().unwrap().to_string());
        }
        member_hosts.sort();
        member_hosts.dedup();
        assert_eq!(member_hosts.len(), 3, "{member_hosts:?}");
        let body = json!({"name": "m3", "instance_type": "standard.micro", "template": "busybox", "anti_affinity_groups": [group]});
        let (s, refused) = api.post(1, "/v1/instances", body).await;
        assert_eq!(s, 503, "{refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains("spread-me"), "{refused}");

        // A lost agent: its instances turn unknown within the bound, and running again when it is back.
        let on_h1 = |all: &[Value]| all.iter().filter(|i| i["host"] == "h1").count();
        let before = api.instances().await;
        let count_h1 = on_h1(&before);
        f.kill9("agent-0");
        let lost_at = Instant::now();
        until("h1's instances to show unknown", Duration::from_secs(HOST_TIMEOUT_SECS + 20), || async {
            let all = api.instances().await;
            let unknown = all.iter().filter(|i| i["host"] == "h1" && i["state"] == "unknown").count();
            (unknown == count_h1).then_some(())
        })
        .await;
        let detected = lost_at.elapsed();
        eprintln!("a killed agent's {count_h1} instances showed unknown after {detected:?}");
        // The heartbeat bound plus a reconcile pass, with room for a loaded 2-core machine: how fast it is
        // on a quiet one is bench/hosts.sh's to measure.
        assert!(detected < Duration::from_secs(2 * HOST_TIMEOUT_SECS + 10), "detection took {detected:?}");
        let hosts = api.get("/v1/hosts/h1").await;
        assert_eq!(hosts["state"], "unreachable", "{hosts}");
        start_agent(&mut f, 0);
        until("h1's instances to run again", Duration::from_secs(30), || async {
            let all = api.instances().await;
            let running = all.iter().filter(|i| i["host"] == "h1" && i["state"] == "running").count();
            (running == count_h1).then_some(())
        })
        .await;

        // A host that stays down is evacuated: its instances are recreated on the others.
        let count_h2 = api.instances().await.iter().filter(|i| i["host"] == "h2").count();
        f.kill9("agent-1");
        until("h2 to be unreachable", Duration::from_secs(HOST_TIMEOUT_SECS + 20), || async {
            (api.get("/v1/hosts/h2").await["state"] == "unreachable").then_some(())
        })
        .await;
        let (s, ev) = api.post(0, "/v1/hosts/h2/evacuate", json!({})).await;
        assert_eq!(s, 202, "{ev}");
        let evacuations = ev["items"].as_array().unwrap().clone();
        // The group's member on h2 has nowhere to go: the other hosts hold a member each.
        let left = ev["left"].as_array().unwrap().clone();
        assert_eq!(left.len(), 1, "{ev}");
        assert!(left[0]["reason"].as_str().unwrap().contains("spread-me"), "{ev}");
        assert_eq!(evacuations.len(), count_h2 - 1, "one operation per other instance of the lost host");
        for op in &evacuations {
            let done = api.wait(op["id"].as_str().unwrap()).await;
            assert_eq!(done["state"], "success", "{done}");
        }
        // Deleting the one left behind works although its host is down: its leftovers go when it is back.
        let stuck = left[0]["instance_id"].as_str().unwrap();
        let (s, del) = api.call(0, reqwest::Method::DELETE, &format!("/v1/instances/{stuck}"), None).await;
        assert_eq!(s, 202, "{del}");
        assert_eq!(api.wait(del["id"].as_str().unwrap()).await["state"], "success");
        let all = api.instances().await;
        assert_eq!(all.iter().filter(|i| i["host"] == "h2").count(), 0, "nothing left on the lost host");
        assert!(all.iter().all(|i| i["state"] == "running"), "every instance runs somewhere");
        assert_eq!(all.len(), 1002);
        drop(f);
    });
}

/// The files under `dir` whose names mention `id`.
fn files_naming(dir: &Path, id: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_naming(&path, id));
        } else if entry.file_name().to_string_lossy().contains(id) {
            out.push(path);
        }
    }
    out
}

/// The seal key ring the test's servers share (servers on one database must): a public test key.
const SEAL_KEYS: &str = "test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
