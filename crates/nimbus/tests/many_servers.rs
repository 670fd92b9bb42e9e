//! Two `nimbus server` processes on one PostgreSQL database are one cloud: driven alternately by concurrent
//! writers they lose no update, overrun no quota and hand out no address twice; and when one is killed with
//! SIGKILL in the middle of operations, the other takes them over when their leases expire and finishes
//! them, the records matching the (simulated, shared) host.
//!
//! Needs a PostgreSQL server: `NIMBUS_TEST_DATABASE_URL` (the README's test command starts a throwaway one).
//! Without it the test says so and passes, unless `NIMBUS_REQUIRE_POSTGRES=1`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use nimbus_driver::{Driver, SimConfig, SimDriver};
use serde_json::{json, Value};
use sha2::Sha256;

const KEY: &str = "NIMmany";
const SECRET: &str = "many-servers-secret-0123456789";

/// A `nimbus server` child process, killed with SIGKILL when dropped.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(database: &str, data_dir: &Path, host_dir: &Path, extra: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(["server", "--driver", "sim", "--listen", &format!("127.0.0.1:{port}"), "--lease-secs", "3"])
            .args(["--database", database])
            .env("NIMBUS_SEAL_KEYS", SEAL_KEYS)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--sim-state-dir")
            .arg(host_dir)
            .args(extra)
            .env("NIMBUS_BOOTSTRAP_KEY", KEY)
            .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nimbus server starts");
        let server = Server { child, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.http.get(format!("{}/healthz", server.base)).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "server did not come up (see {})",
                data_dir.with_extension("log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(SECRET);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, response.json().await.unwrap_or(Value::Null), headers)
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None, &[]).await.1
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self.call(reqwest::Method::POST, path, Some(body), &[]).await;
        (s, v)
    }

    /// An Exoscale v2 call, signed with EXO2-HMAC-SHA256 as egoscale signs it.
    async fn exoscale(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let body = body.to_string();
        let expires = (time::OffsetDateTime::now_utc().unix_timestamp() + 600).to_string();
        let message = format!("{method} {path}\n{body}\n\n\n{expires}");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(message.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(
                "authorization",
                format!("EXO2-HMAC-SHA256 credential={KEY},expires={expires},signature={signature}"),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn wait(&self, op: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.get(&format!("/v1/operations/{op}?wait=5")).await;
            if v["state"] != "pending" && v["state"] != "running" {
                return v;
            }
            assert!(Instant::now() < deadline, "operation never ended: {v}");
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn create(server: &Server, name: &str) -> (u16, Value) {
    server.post("/v1/instances", json!({"name": name, "instance_type": "standard.micro", "template": "busybox"})).await
}

/// Both servers, each request going to the next one in turn.
struct Pair {
    servers: [Arc<Server>; 2],
}

impl Pair {
    fn pick(&self, n: usize) -> Arc<Server> {
        self.servers[n % 2].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_lose_nothing_and_take_over_a_killed_ones_operations() {
    let Some((database, _db)) = nimbus_store::testing::fresh_postgres_database().await else {
        assert!(
            !nimbus_store::testing::postgres_required(),
            "NIMBUS_REQUIRE_POSTGRES=1 but no NIMBUS_TEST_DATABASE_URL"
        );
        eprintln!("skipped: set NIMBUS_TEST_DATABASE_URL to a PostgreSQL server to run the many-servers test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    let a = Arc::new(Server::start(&database, &dir.path().join("a"), &host, &[]).await);
    let b = Arc::new(Server::start(&database, &dir.path().join("b"), &host, &[]).await);
    let pair = Arc::new(Pair { servers: [a.clone(), b.clone()] });

    // A few instances to write on, made through both.
    let mut ids = Vec::new();
    for n in 0..4 {
        let (status, op) = create(&pair.pick(n), &format!("base-{n}")).await;
        assert_eq!(status, 202, "{op}");
        let done = pair.pick(n + 1).wait(op["id"].as_str().unwrap()).await;
        assert_eq!(done["state"], "success", "{done}");
        ids.push(done["target"]["id"].as_str().unwrap().to_string());
    }

    // Labels with If-Match: 16 writers add one label each to one instance, re-reading on 412.
    let target = ids[0].clone();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let pair = pair.clone();
            let target = target.clone();
            tokio::spawn(async move {
                for attempt in 0.. {
                    let server = pair.pick(w + attempt);
                    let (_, _, headers) =
                        server.call(reqwest::Method::GET, &format!("/v1/instances/{target}"), None, &[]).await;
                    let etag = headers["etag"].to_str().unwrap().to_string();
                    let (status, body, _) = server
                        .call(
                            reqwest::Method::PATCH,
                            &format!("/v1/instances/{target}"),
                            Some(json!({"labels": {format!("w{w}"): "1"}})),
                            &[("if-match", etag)],
                        )
                        .await;
                    match status {
                        200 => return,
                        412 => continue,
                        other => panic!("PATCH answered {other}: {body}"),
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let labels = a.get(&format!("/v1/instances/{target}")).await["labels"].clone();
    for w in 0..16 {
        assert_eq!(labels[format!("w{w}")], "1", "label of writer {w} lost: {labels}");
    }

    // Batch PATCH: 12 concurrent batches over the same three instances, each adding its own label to all.
    let batches: Vec<_> = (0..12)
        .map(|w| {
            let pair = pair.clone();
            let ids = ids[1..4].to_vec();
            tokio::spawn(async move {
                let items: Vec<Value> =
                    ids.iter().map(|id| json!({"id": id, "labels": {format!("b{w}"): "1"}})).collect();
                let (status, body, _) = pair
                    .pick(w)
                    .call(reqwest::Method::PATCH, "/v1/instances", Some(json!({ "items": items })), &[])
                    .await;
                (status, body)
            })
        })
        .collect();
    let mut applied = Vec::new();
    for (w, batch) in batches.into_iter().enumerate() {
        let (status, body) = batch.await.unwrap();
        // All or nothing: a batch either applied to all three, or was refused whole (409: retry).
        assert!(status == 200 || status == 409, "batch {w}: {status} {body}");
        if status == 200 {
            applied.push(w);
        }
    }
    assert!(!applied.is_empty());
    for id in &ids[1..4] {
        let labels = b.get(&format!("/v1/instances/{id}")).await["labels"].clone();
        for w in 0..12 {
            let has = labels.get(format!("b{w}")).is_some();
            assert_eq!(has, applied.contains(&w), "instance {id}, batch {w}: {labels}");
        }
    }

    // Security group rules: 10 rules added at once through both servers (Exoscale's API) all stay.
    let (status, group) = a.exoscale(reqwest::Method::POST, "/v2/security-group", json!({"name": "web"})).await;
    assert_eq!(status, 200, "{group}");
    let group_id = group["reference"]["id"].as_str().unwrap().to_string();
    let rules: Vec<_> = (0..10u16)
        .map(|n| {
            let pair = pair.clone();
            let group_id = group_id.clone();
            tokio::spawn(async move {
                let rule = json!({"flow-direction": "ingress", "protocol": "tcp", "start-port": 8000 + n,
                                  "end-port": 8000 + n, "network": "0.0.0.0/0"});
                pair.pick(n as usize)
                    .exoscale(reqwest::Method::POST, &format!("/v2/security-group/{group_id}/rules"), rule)
                    .await
            })
        })
        .collect();
    for r in rules {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let group = b.exoscale(reqwest::Method::GET, &format!("/v2/security-group/{group_id}"), json!(null)).await.1;
    assert_eq!(group["rules"].as_array().map(Vec::len), Some(10), "{group}");

    // A private network: four instances attached at once through both servers, four distinct leases.
    let (status, net) = a
        .exoscale(
            reqwest::Method::POST,
            "/v2/private-network",
            json!({"name": "back", "start-ip": "172.30.0.10", "end-ip": "172.30.0.20", "netmask": "255.255.255.0"}),
        )
        .await;
    assert_eq!(status, 200, "{net}");
    let net_id = net["reference"]["id"].as_str().unwrap().to_string();
    let attaches: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let (pair, net_id, id) = (pair.clone(), net_id.clone(), id.clone());
            tokio::spawn(async move {
                pair.pick(n)
                    .exoscale(
                        reqwest::Method::PUT,
                        &format!("/v2/private-network/{net_id}:attach"),
                        json!({"instance": {"id": id}}),
                    )
                    .await
            })
        })
        .collect();
    for at in attaches {
        let (status, body) = at.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let net = a.exoscale(reqwest::Method::GET, &format!("/v2/private-network/{net_id}"), json!(null)).await.1;
    let leases = net["leases"].as_array().cloned().unwrap_or_default();
    let mut ips: Vec<&str> = leases.iter().filter_map(|l| l["ip"].as_str()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!((leases.len(), ips.len()), (4, 4), "{net}");

    // Creates under a tight quota, in a project of their own: 20 at once through both servers, 5 fit.
    let (status, project) = a.post("/v1/projects", json!({"name": "tight"})).await;
    assert_eq!(status, 201, "{project}");
    let project_id = project["id"].as_str().unwrap().to_string();
    let (status, quota, _) = a
        .call(
            reqwest::Method::PUT,
            &format!("/v1/projects/{project_id}/quota"),
            Some(json!({"instances": 5, "vcpus": 100, "memory_mib": 1048576, "disk_gb": 100000})),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{quota}");
    let (status, key) =
        a.post("/v1/api-keys", json!({"name": "tight", "role": "member", "project_id": project_id})).await;
    assert_eq!(status, 201, "{key}");
    let tight_secret = key["secret"].as_str().unwrap().to_string();
    let creates: Vec<_> = (0..20)
        .map(|n| {
            let pair = pair.clone();
            let secret = tight_secret.clone();
            tokio::spawn(async move {
                let server = pair.pick(n);
                let r = server
                    .http
                    .post(format!("{}/v1/instances", server.base))
                    .bearer_auth(secret)
                    .json(&json!({"name": format!("q{n}"), "instance_type": "standard.micro", "template": "busybox"}))
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in creates {
        statuses.push(c.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 5, "exactly the quota's 5 creates land: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 202 || *s == 403 || *s == 409 || *s == 422), "{statuses:?}");

    // Every address on the instance network is held once.
    let mut addresses = Vec::new();
    for (secret, n) in [(SECRET.to_string(), 4), (tight_secret.clone(), 5)] {
        let r: Value = a
            .http
            .get(format!("{}/v1/instances?limit=100", a.base))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = r["items"].as_array().unwrap();
        assert_eq!(items.len(), n, "{r}");
        addresses.extend(items.iter().map(|i| i["ip_addresses"][0].as_str().unwrap().to_string()));
    }
    let count = addresses.len();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), count, "an address was handed out twice: {addresses:?}");

    // Take-over: a server restarted with slow boots makes instances and is killed while booting them; the
    // other server finishes them once the leases expire.
    drop(pair);
    let b = Arc::try_unwrap(b).ok().expect("one owner");
    let a = Arc::try_unwrap(a).ok().expect("one owner");
    a.kill9();
    b.kill9();
    let slow = Server::start(&database, &dir.path().join("a"), &host, &["--sim-delay", "start=4000"]).await;
    let mut ops = Vec::new();
    for n in 0..4 {
        let (status, op) = create(&slow, &format!("taken-over-{n}")).await;
        assert_eq!(status, 202, "{op}");
        ops.push(op["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for op in &ops {
        loop {
            let v = slow.get(&format!("/v1/operations/{op}")).await;
            if v["state"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "never ran: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let survivor = Server::start(&database, &dir.path().join("b"), &host, &[]).await;
    slow.kill9();
    let killed_at = Instant::now();
    for op in &ops {
        let done = survivor.wait(op).await;
        assert_eq!(done["state"], "success", "{done}");
        assert_eq!(done["attempts"], 2, "begun by the killed server, finished by the other: {done}");
    }
    eprintln!("the survivor finished the killed server's operations {:?} after the kill", killed_at.elapsed());
    // The records agree with the host.
    let sim = SimDriver::new(SimConfig { state_dir: Some(host.clone()), ..Default::default() });
    let all: Value = survivor.get("/v1/instances?limit=100").await;
    for i in all["items"].as_array().unwrap() {
        let id = uuid::Uuid::parse_str(i["id"].as_str().unwrap()).unwrap();
        let actual = sim.inspect(id).await.unwrap();
        assert_eq!(
            (i["state"].as_str().unwrap(), format!("{actual:?}")),
            ("running", "Running".to_string()),
            "instance {id}: {i}"
        );
        assert_eq!(i["operation_id"], Value::Null, "{i}");
    }
}

/// The seal key ring the test's servers share (servers on one database must): a public test key.
const SEAL_KEYS: &str = "test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
