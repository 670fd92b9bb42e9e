//! `nimbus agent`: the process on each compute host. It talks only to the API servers (never to the
//! database), with a host token an operator minted for its host's name (`nimbus host token create NAME`):
//! it registers the host (capacity, accelerator, driver, templates), heartbeats with a report of every VM
//! the host has, and runs the driver calls the control plane queues for its host, replying to each.
//!
//! It keeps nothing that matters in memory: the VMs are the driver's (QEMU processes adopted from their
//! pidfiles, or the sim host's state directory), the calls are in the store until replied to. Killed and
//! started again, it re-registers, reports what runs, and picks up the calls still waiting; every driver
//! call is idempotent, so running one twice converges.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use nimbus_driver::call::{dispatch, DriverCall};
use nimbus_driver::Driver;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The control plane's URL (any of its API servers).
    #[arg(long, env = "NIMBUS_SERVER")]
    server: String,
    /// The host token minted for this host (`nimbus host token create NAME`).
    #[arg(long, env = "NIMBUS_HOST_TOKEN", hide_env_values = true)]
    token: String,
    /// The host's name: the one its token was minted for.
    #[arg(long)]
    name: String,
    /// Where instance disks, logs and the driver's state live.
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = "nimbus-agent-data")]
    data_dir: PathBuf,
    /// The address other hosts reach this one at for the instance overlay network (VXLAN).
    #[arg(long)]
    underlay_address: Option<String>,
    /// Driver calls run at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Trust this PEM CA certificate for an https:// --server (a server run with --tls-cert).
    #[arg(long, env = "NIMBUS_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(flatten)]
    host: crate::host::DriverArgs,
}

/// The agent's side of the control plane's `/v1/agent/...`.
struct ControlPlane {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The CA the server's certificate is checked against (https:// and wss://).
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct AgentConfig {
    zone: String,
    network_cidr: String,
    heartbeat_every_ms: u64,
    report_every_ms: u64,
}

#[derive(Debug, Deserialize)]
struct HostWork {
    calls: Vec<PendingCall>,
    #[serde(default)]
    consoles: Vec<PendingConsole>,
}

#[derive(Debug, Deserialize)]
struct PendingCall {
    id: Uuid,
    call: DriverCall,
}

#[derive(Debug, Deserialize)]
struct PendingConsole {
    id: Uuid,
    instance_id: Uuid,
    server_url: String,
}

impl ControlPlane {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("calling {}{path}", self.base))?;
        let status = resp.status();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        if status == StatusCode::UNAUTHORIZED {
            anyhow::bail!("the control plane refused this host's token (revoked?): {body}");
        }
        Ok((status, body))
    }

    async fn expect_ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, body) = self.send(method, path, body).await?;
        if !status.is_success() {
            anyhow::bail!("{path} answered {status}: {body}");
        }
        Ok(body)
    }
}

pub async fn serve(args: AgentArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(90));
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("--ca-file {}: not a PEM certificate", path.display()))?;
        http = http.add_root_certificate(ca);
    }
    let cp = Arc::new(ControlPlane {
        http: http.build()?,
        base: args.server.trim_end_matches('/').to_string(),
        token: args.token.clone(),
        ca_file: args.ca_file.clone(),
    });
    // The zone and instance network come from the control plane: every host's bridge serves the same one.
    let config: AgentConfig = serde_json::from_value(
        retry("reading the agent configuration", || cp.expect_ok(reqwest::Method::GET, "/v1/agent/config", None))
            .await?,
    )?;
    let (driver, _qemu) = crate::host::build_driver(&args.host, &data_dir, &config.network_cidr).await?;
    let register = || async {
        let mut reg = nimbus_engine::local_agent::registration(&*driver, &config.zone, args.underlay_address.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        reg.capacity.gpus.extend(args.host.gpus()?);
        cp.expect_ok(reqwest::Method::POST, "/v1/agent/register", Some(serde_json::to_value(&reg)?)).await
    };
    retry("registering the host", register).await?;
    tracing::info!(host = %args.name, server = %args.server, driver = driver.name(), "host registered; taking calls");

    let heartbeat_every = Duration::from_millis(config.heartbeat_every_ms.max(200));
    let report_every = Duration::from_millis(config.report_every_ms.max(200));
    // Heartbeats keep the host reachable and must never wait for a report, which takes longer to make: the
    // reports go on a loop of their own.
    let reports = {
        let (cp, driver) = (cp.clone(), driver.clone());
        tokio::spawn(async move {
            loop {
                let began = std::time::Instant::now();
                if let Err(e) = heartbeat(&cp, Some(&*driver)).await {
                    tracing::warn!(error = %e, "report failed");
                }
                let took = began.elapsed();
                if let Err(e) = join_overlay(&cp, &*driver).await {
                    tracing::warn!(error = %e, "could not bring the overlay network up to date");
                }
                tokio::time::sleep(nimbus_engine::local_agent::report_pause(report_every, took)).await;
            }
        })
    };
    let heartbeats = {
        let (cp, name) = (cp.clone(), args.name.clone());
        tokio::spawn(async move {
            loop {
                match heartbeat(&cp, None).await {
                    Ok(StatusCode::NOT_FOUND) => {
                        // The control plane forgot the host (a restored store): the next loop registers it.
                        tracing::warn!(host = %name, "the control plane does not know this host; register again");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
                tokio::time::sleep(heartbeat_every).await;
            }
        })
    };
    let calls = {
        let (cp, driver) = (cp.clone(), driver.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
        tokio::spawn(async move { take_calls(cp, driver, slots).await })
    };
    let _reports = AbortOnDrop(reports);
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("stopping; the host's VMs keep running"),
        r = heartbeats => { r?; anyhow::bail!("the control plane lost this host: restart the agent to register it again") }
        r = calls => r??,
    }
    Ok(())
}

/// Brings the host's side of the zone's overlay network up to date (nothing when it has no underlay).
async fn join_overlay(cp: &ControlPlane, driver: &dyn Driver) -> anyhow::Result<()> {
    let (status, body) = cp.send(reqwest::Method::GET, "/v1/agent/overlay", None).await?;
    if status == StatusCode::NO_CONTENT || !status.is_success() {
        return Ok(());
    }
    let spec: nimbus_driver::overlay::OverlaySpec = serde_json::from_value(body)?;
    driver.join_overlay(&spec).await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One heartbeat, with a report of what runs on the host when `driver` is given; the status the control
/// plane answered.
async fn heartbeat(cp: &ControlPlane, driver: Option<&dyn Driver>) -> anyhow::Result<StatusCode> {
    let report = match driver {
        Some(d) => Some(nimbus_engine::local_agent::report(d).await.map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let (status, body) =
        cp.send(reqwest::Method::POST, "/v1/agent/heartbeat", Some(json!({ "report": report }))).await?;
    if !status.is_success() && status != StatusCode::NOT_FOUND {
        anyhow::bail!("heartbeat answered {status}: {body}");
    }
    Ok(status)
}

/// Long-polls the calls queued for the host and runs each once at a time, replying when done.
async fn take_calls(
    cp: Arc<ControlPlane>,
    driver: Arc<dyn Driver>,
    slots: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    // Calls under way: the long poll lists a call until it is replied to.
    let running: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    loop {
        let work = match cp.send(reqwest::Method::GET, "/v1/agent/calls?wait=20", None).await {
            Ok((status, body)) if status.is_success() => serde_json::from_value::<HostWork>(body)?,
            Ok((status, body)) => {
                tracing::warn!(%status, %body, "could not list calls");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) if e.to_string().contains("refused this host's token") => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "could not reach the control plane");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut fresh = 0;
        for console in work.consoles {
            if !running.lock().expect("call set").insert(console.id) {
                continue;
            }
            fresh += 1;
            let (cp, driver, running) = (cp.clone(), driver.clone(), running.clone());
            tokio::spawn(async move {
                let id = console.id;
                if let Err(e) = bring_console(&cp, &*driver, console).await {
                    tracing::warn!(session = %id, error = %e, "could not bring a console");
                }
                running.lock().expect("call set").remove(&id);
            });
        }
        for PendingCall { id, call } in work.calls {
            if !running.lock().expect("call set").insert(id) {
                continue;
            }
            fresh += 1;
            let (cp, driver, running) = (cp.clone(), driver.clone(), running.clone());
            let slot = slots.clone().acquire_owned().await?;
            tokio::spawn(async move {
                let reply = dispatch(&*driver, call).await;
                let body = json!({ "reply": reply });
                for attempt in 0..10u64 {
                    match cp.send(reqwest::Method::POST, &format!("/v1/agent/calls/{id}"), Some(body.clone())).await {
                        Ok((status, _)) if status.is_success() => break,
                        Ok((status, b)) => tracing::warn!(call = %id, %status, %b, "reply refused"),
                        Err(e) => tracing::warn!(call = %id, error = %e, "could not reply"),
                    }
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
                running.lock().expect("call set").remove(&id);
                drop(slot);
            });
        }
        if fresh == 0 {
            // Only calls already under way came back: wait a little before asking again.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Carries an instance's serial console to the server that asked for it, over a websocket to
/// `{server_url}/v1/agent/console/{session}`, until either end closes.
async fn bring_console(cp: &ControlPlane, driver: &dyn Driver, console: PendingConsole) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let stream = driver.console_stream(console.instance_id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = format!("{}/v1/agent/console/{}", console.server_url.trim_end_matches('/'), console.id)
        .replacen("http", "ws", 1);
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {}", cp.token).parse()?);
    let socket = crate::websocket::connect(request, cp.ca_file.as_deref())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let (mut to_server, mut from_server) = socket.split();
    let (mut serial_read, mut serial_write) = tokio::io::split(stream);
    let outbound = async {
        let mut buf = vec![0u8; 4096];
        while let Ok(n @ 1..) = serial_read.read(&mut buf).await {
            if to_server.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                break;
            }
        }
    };
    let inbound = async {
        while let Some(Ok(msg)) = from_server.next().await {
            let bytes = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if serial_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::select! { _ = outbound => {}, _ = inbound => {} }
    Ok(())
}

/// Retries a call to the control plane until it answers (it may be starting, or restarting).
async fn retry<F, Fut>(what: &str, f: F) -> anyhow::Result<Value>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.to_string().contains("refused this host's token") => return Err(e),
            Err(e) if attempt >= 30 => return Err(e.context(format!("{what}: giving up"))),
            Err(e) => tracing::warn!(error = %e, "{what}; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
}
