//! Crash safety of the real server process: kill -9 in the middle of an operation, start again, and nothing
//! recorded is lost; the interrupted operation is resumed, or ends `interrupted` once it keeps being cut.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SECRET: &str = "crash-test-secret-123";

/// A `nimbus server` child process, killed with SIGKILL when dropped.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(["server", "--driver", "sim", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("NIMBUS_BOOTSTRAP_KEY", "NIMcrash")
            .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nimbus server starts");
        let server = Server { child, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.http.get(format!("{}/healthz", server.base)).send().await.is_err() {
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
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
        self.call(reqwest::Method::GET, path, None).await.1
    }

    /// Polls an operation until `pred` holds.
    async fn until(&self, op: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.get(&format!("/v1/operations/{op}")).await;
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "operation never got {what}: {v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
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

async fn create(server: &Server, name: &str, auto_start: bool) -> String {
    let body = json!({"name": name, "instance_type": "standard.small", "template": "busybox",
        "auto_start": auto_start, "labels": {"keep": "me"}});
    let (status, op) = server.call(reqwest::Method::POST, "/v1/instances", Some(body)).await;
    assert_eq!(status, 202, "{op}");
    op["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_kill_during_an_operation_loses_nothing_and_the_operation_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sim-delay", "start=3000"]).await;
    let cold_op = create(&server, "cold", false).await;
    let cold = server.until(&cold_op, "success", |v| v["state"] == "success").await["target"]["id"].clone();
    let op = create(&server, "warm", true).await;
    let running = server.until(&op, "running", |v| v["state"] == "running").await;
    assert_eq!(running["attempts"], 1);
    let warm = running["target"]["id"].as_str().unwrap().to_string();
    server.kill9();

    let server = Server::start(dir.path(), &[]).await;
    let done = server.until(&op, "an end", |v| v["state"] != "running" && v["state"] != "pending").await;
    assert_eq!(done["state"], "success", "resumed to success: {done}");
    assert_eq!(done["attempts"], 2, "one attempt before the kill, one after");
    let warm_now = server.get(&format!("/v1/instances/{warm}")).await;
    assert_eq!(warm_now["state"], "running", "{warm_now}");
    assert_eq!(warm_now["labels"]["keep"], "me");
    assert_eq!(warm_now["operation_id"], json!(null), "the lock was released");
    let cold_now = server.get(&format!("/v1/instances/{}", cold.as_str().unwrap())).await;
    assert_eq!(cold_now["state"], "stopped", "{cold_now}");
    let metrics = server.http.get(format!("{}/metrics", server.base)).bearer_auth(SECRET).send().await;
    let metrics = metrics.unwrap().text().await.unwrap();
    assert!(metrics.contains("nimbus_operations_resumed_total 1"), "{metrics}");
    // The new server works as before.
    let (status, stop) = server.call(reqwest::Method::POST, &format!("/v1/instances/{warm}/stop"), None).await;
    assert_eq!(status, 202);
    server.until(stop["id"].as_str().unwrap(), "success", |v| v["state"] == "success").await;
}

#[tokio::test]
async fn an_operation_cut_by_every_restart_ends_interrupted_with_the_real_state() {
    let dir = tempfile::tempdir().unwrap();
    let slow = ["--sim-delay", "start=60000"];
    let mut server = Server::start(dir.path(), &slow).await;
    let op = create(&server, "doomed", true).await;
    for attempt in 1..=3 {
        server.until(&op, &format!("attempt {attempt}"), |v| v["state"] == "running" && v["attempts"] == attempt).await;
        server.kill9();
        server = Server::start(dir.path(), &slow).await;
    }
    let done = server.until(&op, "an end", |v| v["state"] == "failure").await;
    assert_eq!(done["reason"], "interrupted", "{done}");
    let instance = server.get(&format!("/v1/instances/{}", done["target"]["id"].as_str().unwrap())).await;
    assert_eq!(instance["state"], "stopped", "created on the host but never started: {instance}");
    assert_eq!(instance["operation_id"], json!(null));
}

#[tokio::test]
async fn a_gcore_changeflavor_of_a_running_instance_cut_mid_way_resumes_and_ends_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sim-delay", "stop=3000"]).await;
    let op = create(&server, "grows", true).await;
    let id = server.until(&op, "success", |v| v["state"] == "success").await["target"]["id"].clone();
    let who = server.get("/v1/whoami").await;
    let zone = &server.get("/v1/zones").await["items"][0]["numeric_id"];
    let path = format!(
        "{}/cloud/v1/instances/{}/{zone}/{}/changeflavor",
        server.base,
        who["project"]["numeric_id"],
        id.as_str().unwrap()
    );
    let r = server
        .http
        .post(path)
        .header("authorization", format!("APIKey {SECRET}"))
        .json(&json!({"flavor_id": "cpu.small"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let task = r.json::<Value>().await.unwrap()["tasks"][0].as_str().unwrap().to_string();
    server.until(&task, "running", |v| v["state"] == "running").await;
    server.kill9();

    let server = Server::start(dir.path(), &[]).await;
    let done = server.until(&task, "an end", |v| v["state"] != "running" && v["state"] != "pending").await;
    assert_eq!((done["state"].as_str(), done["attempts"].as_u64()), (Some("success"), Some(2)), "{done}");
    let now = server.get(&format!("/v1/instances/{}", id.as_str().unwrap())).await;
    assert_eq!(
        (now["state"].as_str(), now["instance_type"].as_str(), now["vcpus"].as_u64(), &now["operation_id"]),
        (Some("running"), Some("cpu.small"), Some(4), &Value::Null),
        "{now}"
    );
}
