//! The crash loop: what an operator would try before trusting Nimbus with real work. Concurrent clients
//! send a random workload of mutating calls — the native API with `Idempotency-Key`s, and the SF Compute,
//! ONET, Gcore and (signed) Exoscale dialects — retrying as real clients do, while the server is killed
//! with SIGKILL at random moments (some during its start-up) and started again. Then, from the API, the
//! store and the host:
//!
//! - **lost**: every acknowledged write is there (the instance created, the label set, the operation
//!   recorded and ended, the instance deleted by a delete that succeeded);
//! - **duplicated**: nothing was applied twice (no two instances of one create, no two operations of one
//!   call, whatever the retries);
//! - **stuck**: no operation, instance or snapshot is left in a transitional state or locked;
//! - **disagreeing**: every record agrees with the host (power state, disk size, snapshots);
//! - **leaked**: no address, idempotency hold or host instance belongs to nothing;
//! - and the store passes its integrity check.
//!
//! Each client owns the instances it creates and calls one at a time, so it knows exactly what each of
//! them must look like at the end. A native call is retried blindly with its `Idempotency-Key`; a dialect
//! call that creates an operation, whose API has no such key, is retried only once the client has found
//! (in the store, by the request ids it sent) that its earlier attempt did not land, as a careful client
//! of such an API checks before trying again.
//!
//! Sizes: `NIMBUS_CRASH_LOOP_KILLS` (30), `NIMBUS_CRASH_LOOP_CALLS` (300), `NIMBUS_CRASH_LOOP_CLIENTS` (8),
//! `NIMBUS_CRASH_LOOP_SEED` (random; printed). The run goes on until both the kills and the calls are
//! done. `bench/crash_loop.sh` runs the long one. The PostgreSQL run needs `NIMBUS_TEST_DATABASE_URL`;
//! the real-VM run (a short one) needs root and QEMU, and skips, saying so, without them.

mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use nimbus_store::{OperationQuery, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

struct Knobs {
    kills: u64,
    calls: u64,
    clients: u64,
    seed: u64,
    /// The most instances a client keeps at once.
    max_live: usize,
}

impl Knobs {
    fn from_env(kills: u64, calls: u64, clients: u64) -> Knobs {
        let var = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        Knobs {
            kills: var("NIMBUS_CRASH_LOOP_KILLS", kills),
            calls: var("NIMBUS_CRASH_LOOP_CALLS", calls),
            clients: var("NIMBUS_CRASH_LOOP_CLIENTS", clients),
            seed: var("NIMBUS_CRASH_LOOP_SEED", rand::thread_rng().gen()),
            max_live: 6,
        }
    }
}

/// Delays that let kills land in the middle of operations, and failures (armed again by every start) that
/// send operations down their failure paths.
const SIM_FAULTS: &[&str] = &[
    "--sim-delay",
    "create=150",
    "--sim-delay",
    "start=300",
    "--sim-delay",
    "stop=200",
    "--sim-delay",
    "reboot=200",
    "--sim-delay",
    "snapshot=400",
    "--sim-delay",
    "resize_disk=400",
    "--sim-delay",
    "destroy=100",
    "--sim-delay",
    "create_volume=150",
    "--sim-delay",
    "attach_volume=300",
    "--sim-delay",
    "detach_volume=300",
    "--sim-delay",
    "delete_volume=100",
    "--sim-fail",
    "attach_volume=1",
    "--sim-fail",
    "start=1",
    "--sim-fail",
    "snapshot=1",
    "--sim-fail",
    "resize_disk=1",
];

const SERVER_ARGS: &[&str] = &["--lease-secs", "3", "--reconcile-secs", "1", "--stop-grace-secs", "1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = SERVER_ARGS.iter().chain(SIM_FAULTS).copied().collect();
    let setup = Setup::sim(dir.path(), Database::Sqlite, &args);
    let host = setup.host();
    run(&setup, Knobs::from_env(30, 300, 8), "sim", &host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_on_postgres() {
    let Some(db) = Database::postgres().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = SERVER_ARGS.iter().chain(SIM_FAULTS).copied().collect();
    let setup = Setup::sim(dir.path(), db, &args);
    let host = setup.host();
    run(&setup, Knobs::from_env(30, 300, 8), "sim", &host).await;
}

/// The short run on real VMs (QEMU under TCG here): fewer kills, calls and instances, the same checks,
/// and no QEMU process of the data dir that no running instance accounts for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_on_real_vms() {
    if !can_run_vms("crash_loop_on_real_vms") {
        return;
    }
    let cloud = VmCloud::new(3, &["--lease-secs", "5", "--reconcile-secs", "1", "--stop-grace-secs", "2"]);
    let host = cloud.host().await;
    let knobs = Knobs { max_live: 2, ..Knobs::from_env(6, 40, 2) };
    run(&cloud.setup, knobs, "qemu", &host).await;
    let store = cloud.setup.store().await;
    let running: Vec<String> = store
        .list_instances(&Default::default())
        .await
        .unwrap()
        .iter()
        .filter(|i| i.state == nimbus_core::instance::InstanceState::Running)
        .map(|i| i.id.to_string())
        .collect();
    let pids = qemu_pids(&cloud.setup.data_dir.display().to_string());
    assert_eq!(pids.len(), running.len(), "one QEMU per running instance, none else: {pids:?} for {running:?}");
    for id in &running {
        assert_eq!(qemu_pids(id).len(), 1, "instance {id}");
    }
}

/// What the clients learned, for the end.
#[derive(Default)]
struct Ledger {
    acked: u64,
    refused: u64,
    /// Refusals by status and error code, with one answer each, to see what the workload ran into.
    refused_by: BTreeMap<String, (u64, String)>,
    gave_up: Vec<String>,
    server_errors: Vec<String>,
    /// Operations acknowledged to a client: they must exist and have ended.
    ops: Vec<(String, Uuid)>,
    /// What each client's instances must look like at the end.
    instances: Vec<Owned>,
    /// SSH keys acknowledged as created, by name.
    ssh_keys: Vec<String>,
    /// Volumes acknowledged as created, with the operation of an acknowledged delete.
    volumes: Vec<(Uuid, Option<Uuid>)>,
}

#[derive(Debug, Clone)]
struct Owned {
    id: Uuid,
    name: String,
    /// `None` once a label write's outcome could not be known.
    labels: Option<BTreeMap<String, String>>,
    /// The operation of an acknowledged delete.
    deleted_by: Option<Uuid>,
    sf_id: Option<String>,
    instance_type: String,
}

struct Shared {
    client: Client,
    store: Arc<dyn Store>,
    /// The database, when PostgreSQL: see [`Shared::landed`].
    postgres_url: Option<String>,
    ledger: Mutex<Ledger>,
    calls: AtomicU64,
    attempts: AtomicU64,
    /// Set once the kills are done: clients stop after the calls are done too.
    kills_done: AtomicBool,
    target_calls: u64,
    gcore_base: String,
    onet_base: String,
    type_ids: HashMap<String, String>,
}

enum Outcome {
    /// 2xx.
    Acked(Answer),
    /// A definitive refusal (4xx): nothing was written.
    Refused(Answer),
    /// No definitive answer within the time a client would wait.
    GaveUp,
}

/// How a call may be retried after an attempt that got no answer.
#[derive(Clone, Copy, PartialEq)]
enum Retry {
    /// Idempotent: sent again as is (native POSTs carry an `Idempotency-Key`; label writes set values).
    Blind,
    /// Creates an operation and has no idempotency key: sent again only if no operation of an earlier
    /// attempt landed; if one did, that is the answer.
    CheckFirst,
}

impl Shared {
    /// One logical call: attempts until a definitive answer, each with its own request id `{call}-a{n}`.
    async fn call(
        &self,
        call: &str,
        method: Method,
        path: &str,
        auth: Auth,
        body: Option<Value>,
        retry: Retry,
    ) -> Outcome {
        let started = Instant::now();
        for attempt in 0.. {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let mut headers = vec![("x-request-id", format!("{call}-a{attempt}"))];
            if matches!(auth, Auth::Bearer) && method == Method::POST {
                headers.push(("idempotency-key", call.to_string()));
            }
            match self.client.send(method.clone(), path, auth, body.as_ref(), &headers).await {
                Ok(a) if a.status >= 500 => {
                    self.ledger.lock().unwrap().server_errors.push(format!("{method} {path}: {} {}", a.status, a.body));
                }
                Ok(a) if a.status == 409 && a.headers.contains_key("retry-after") => {}
                Ok(a) if a.ok() => return Outcome::Acked(a),
                Ok(a) => return Outcome::Refused(a),
                Err(_) if retry == Retry::CheckFirst => {
                    if let Some(op) = self.landed(call).await {
                        return Outcome::Acked(Answer {
                            status: 200,
                            body: json!({"operation": op.id, "target": op.target.id}),
                            headers: Default::default(),
                        });
                    }
                }
                Err(_) => {}
            }
            if started.elapsed() > Duration::from_secs(180) {
                return Outcome::GaveUp;
            }
            tokio::time::sleep(Duration::from_millis(100 + 50 * attempt.min(10))).await;
        }
        unreachable!()
    }

    /// The operation an earlier attempt of `call` recorded, if any. Asked only after an attempt got no
    /// answer, that is after the server died, and (on PostgreSQL) once the transactions it had under way
    /// ended: a COMMIT the dead server sent may still be landing, and no attempt of it can land after that.
    async fn landed(&self, call: &str) -> Option<nimbus_core::operation::Operation> {
        if let Some(url) = &self.postgres_url {
            transactions_begun_before_now_ended(url).await;
        }
        let prefix = format!("{call}-a");
        for _ in 0..100 {
            match self.store.list_operations(&OperationQuery::default()).await {
                Ok(ops) => {
                    return ops
                        .into_iter()
                        .find(|o| o.actor.request_id.as_deref().is_some_and(|r| r.starts_with(&prefix)))
                }
                // The store is busy with a restarting server; ask again.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("the store could not be read");
    }

    fn more(&self) -> bool {
        !self.kills_done.load(Ordering::SeqCst) || self.calls.load(Ordering::SeqCst) < self.target_calls
    }
}

async fn run(setup: &Setup, knobs: Knobs, driver: &str, host: &dyn nimbus_driver::Driver) {
    let store_name = setup.database.name();
    println!(
        "crash loop on {store_name}/{driver}: seed {} (NIMBUS_CRASH_LOOP_SEED), {} kills, {} calls, {} clients",
        knobs.seed, knobs.kills, knobs.calls, knobs.clients
    );
    let mut server = setup.start().await;
    let client = Client::new(&server.base);
    // Room for every client's instances, whatever the default quota.
    let who = client.get("/v1/whoami").await;
    let project = who["project"]["id"].as_str().unwrap().to_string();
    let quota = json!({"instances": 10000, "vcpus": 100000, "memory_mib": 100000000, "disk_gb": 10000000});
    let a = client.native(Method::PUT, &format!("/v1/projects/{project}/quota"), Some(quota)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let zone = client.get("/v1/zones").await["items"][0]["numeric_id"].clone();
    let types: HashMap<String, String> = client.get("/v1/instance-types").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["id"].as_str().unwrap().to_string()))
        .collect();
    let shared = Arc::new(Shared {
        client: client.clone(),
        store: setup.store().await,
        postgres_url: matches!(setup.database, Database::Postgres { .. }).then(|| setup.url()),
        ledger: Mutex::new(Ledger::default()),
        calls: AtomicU64::new(0),
        attempts: AtomicU64::new(0),
        kills_done: AtomicBool::new(false),
        target_calls: knobs.calls,
        gcore_base: format!("{}/{}", who["project"]["numeric_id"], zone),
        onet_base: format!(
            "/v1/organizations/{}/projects/{}/compute/instances",
            who["organization"]["id"].as_str().unwrap(),
            project
        ),
        type_ids: types,
    });

    let clients: Vec<_> = (0..knobs.clients)
        .map(|n| {
            let shared = shared.clone();
            let seed = knobs.seed.wrapping_add(n + 1);
            let max_live = knobs.max_live;
            tokio::spawn(async move { client_loop(shared, n, seed, max_live).await })
        })
        .collect();

    // The killer: kills spread over the calls, each at a random moment after its share of them.
    let mut rng = StdRng::seed_from_u64(knobs.seed);
    let (mut kills, mut during_start) = (0u64, 0u64);
    let started = Instant::now();
    let share = (knobs.calls / knobs.kills.max(1)).max(1);
    while kills < knobs.kills {
        let due = (kills + 1) * share - rng.gen_range(0..share.div_ceil(2));
        let waited = Instant::now();
        while shared.calls.load(Ordering::SeqCst) < due && waited.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        server.kill9();
        kills += 1;
        server = setup.spawn();
        if kills < knobs.kills && rng.gen_bool(0.2) {
            // Killed again while starting: opening the store, migrating, resuming, binding.
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
            server.kill9();
            kills += 1;
            during_start += 1;
            server = setup.spawn();
        }
        if let Err(e) = server.ready(Duration::from_secs(60)).await {
            panic!("restart {kills} failed: {e}");
        }
    }
    shared.kills_done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let load_secs = started.elapsed().as_secs_f64();

    // At rest: every operation ends, the reconciler has had its passes.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let unfinished =
            shared.store.list_operations(&OperationQuery { unfinished: true, ..Default::default() }).await.unwrap();
        if unfinished.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "operations never ended: {unfinished:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let ledger = std::mem::take(&mut *shared.ledger.lock().unwrap());
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    let mut stuck = Vec::new();
    // Every acknowledged operation is recorded and has ended.
    for (call, op) in &ledger.ops {
        let a = client.native(Method::GET, &format!("/v1/operations/{op}"), None).await;
        if a.status != 200 {
            lost.push(format!("{call}: operation {op} acknowledged, then {}", a.status));
        } else if matches!(a.body["state"].as_str(), Some("pending" | "running")) {
            stuck.push(format!("{call}: operation {op} {}", a.body["state"]));
        }
    }
    // Every instance is as its owner left it.
    for i in &ledger.instances {
        let a = client.native(Method::GET, &format!("/v1/instances/{}", i.id), None).await;
        let deleted = match i.deleted_by {
            Some(op) => client.get(&format!("/v1/operations/{op}")).await["state"] == "success",
            None => false,
        };
        match (a.status, deleted) {
            (404, true) => {}
            (200, true) => lost.push(format!("instance {} ({}): deleted, still there", i.id, i.name)),
            (404, false) => lost.push(format!("instance {} ({}): acknowledged, gone", i.id, i.name)),
            (200, false) => {
                if let Some(labels) = &i.labels {
                    let got: BTreeMap<String, String> = serde_json::from_value(a.body["labels"].clone()).unwrap();
                    if &got != labels {
                        lost.push(format!("instance {} ({}): labels {got:?}, expected {labels:?}", i.id, i.name));
                    }
                }
            }
            (status, _) => lost.push(format!("instance {}: GET answered {status}", i.id)),
        }
    }
    let keys: HashSet<String> = client.get("/v1/ssh-keys").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    for k in &ledger.ssh_keys {
        if !keys.contains(k) {
            lost.push(format!("ssh key {k}: acknowledged, gone"));
        }
    }
    // Every acknowledged volume is there, unless a delete of it succeeded.
    for (v, deleted_by) in &ledger.volumes {
        let a = client.native(Method::GET, &format!("/v1/volumes/{v}"), None).await;
        let deleted = match deleted_by {
            Some(op) => client.get(&format!("/v1/operations/{op}")).await["state"] == "success",
            None => false,
        };
        match (a.status, deleted) {
            (404, true) | (200, false) => {}
            (200, true) => lost.push(format!("volume {v}: deleted, still there")),
            (status, _) => lost.push(format!("volume {v}: acknowledged, then GET answered {status}")),
        }
    }
    // Nothing twice: one instance per name (every create names its own), one operation per call.
    let mut names: HashMap<String, usize> = HashMap::new();
    for i in client.all("/v1/instances").await {
        *names.entry(i["name"].as_str().unwrap().to_string()).or_default() += 1;
    }
    duplicated.extend(names.iter().filter(|(_, n)| **n > 1).map(|(name, n)| format!("{n} instances named {name}")));
    let mut per_call: HashMap<String, Vec<Uuid>> = HashMap::new();
    for op in shared.store.list_operations(&OperationQuery::default()).await.unwrap() {
        if let Some(call) = op.actor.request_id.as_deref().and_then(call_of) {
            per_call.entry(call.to_string()).or_default().push(op.id);
        }
    }
    duplicated
        .extend(per_call.iter().filter(|(_, ops)| ops.len() > 1).map(|(c, ops)| format!("{c}: operations {ops:?}")));

    // A clean stop leaves nothing held; then the store and the host, compared.
    server.stop(Duration::from_secs(60));
    let audit = audit(shared.store.as_ref(), host).await;
    stuck.extend(audit.stuck.iter().cloned());

    let calls = shared.calls.load(Ordering::SeqCst);
    let line = format!(
        "crash loop ({store_name}, {driver}): {kills} kills ({during_start} during start-up), {calls} calls \
         ({} attempts, {} clients, {load_secs:.0}s), {} acknowledged writes, {} refused, lost {}, duplicated {}, \
         stuck {}, leaked {}, disagreeing {}, integrity problems {}, 5xx {}, unanswered {}; seed {}",
        shared.attempts.load(Ordering::SeqCst),
        knobs.clients,
        ledger.acked,
        ledger.refused,
        lost.len(),
        duplicated.len(),
        stuck.len(),
        audit.leaked.len(),
        audit.disagreeing.len(),
        audit.integrity.len(),
        ledger.server_errors.len(),
        ledger.gave_up.len(),
        knobs.seed
    );
    report(&line);
    for (what, (n, sample)) in &ledger.refused_by {
        println!("refused {n}x {what}, e.g. {sample:.300}");
    }
    let findings: Vec<&String> = lost
        .iter()
        .chain(&duplicated)
        .chain(&stuck)
        .chain(&audit.leaked)
        .chain(&audit.disagreeing)
        .chain(&audit.integrity)
        .chain(&ledger.server_errors)
        .chain(&ledger.gave_up)
        .collect();
    assert!(
        findings.is_empty(),
        "{line}\n{}\n(server log: {})",
        findings.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        setup.log_path().display()
    );
    assert!(kills >= knobs.kills && calls >= knobs.calls);
}

/// The call a request id `c{client}k{call}-a{attempt}` (or `c{client}k{call}v{step}-a{attempt}`) was sent
/// for; `None` for other requests.
fn call_of(request_id: &str) -> Option<&str> {
    let (call, attempt) = request_id.rsplit_once("-a")?;
    let (client, n) = call.strip_prefix('c')?.split_once('k')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // A volume cycle's steps are calls of their own: `c{client}k{call}v{step}`.
    let n_ok = match n.split_once('v') {
        Some((n, step)) => digits(n) && digits(step),
        None => digits(n),
    };
    (digits(client) && n_ok && digits(attempt)).then_some(call)
}

/// What a client does next with one of its instances.
#[derive(Debug, Clone, Copy)]
enum Act {
    NativeLabels,
    SfTags,
    ExoscaleLabels,
    NativeAction(&'static str),
    ExoscaleAction(&'static str),
    Snapshot,
    ResizeDisk,
    OnetResize,
    NativeDelete,
    GcoreDelete,
    /// A volume made, attached to the instance, detached (through Gcore or Exoscale or natively) and
    /// deleted, each step its own call.
    Volume,
}

const ACTS: &[(Act, u32)] = &[
    (Act::NativeLabels, 14),
    (Act::SfTags, 8),
    (Act::ExoscaleLabels, 6),
    (Act::NativeAction("start"), 9),
    (Act::NativeAction("stop"), 9),
    (Act::NativeAction("reboot"), 4),
    (Act::ExoscaleAction("start"), 3),
    (Act::ExoscaleAction("stop"), 3),
    (Act::Snapshot, 9),
    (Act::ResizeDisk, 7),
    (Act::OnetResize, 4),
    (Act::NativeDelete, 4),
    (Act::GcoreDelete, 2),
    (Act::Volume, 6),
];

async fn client_loop(shared: Arc<Shared>, n: u64, seed: u64, max_live: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mine: Vec<Owned> = Vec::new();
    let total: u32 = ACTS.iter().map(|(_, w)| w).sum();
    while shared.more() {
        let k = shared.calls.fetch_add(1, Ordering::SeqCst);
        let call = format!("c{n}k{k}");
        let live: Vec<usize> = (0..mine.len()).filter(|i| mine[*i].deleted_by.is_none()).collect();
        if live.len() < max_live.min(2) || (live.len() < max_live && rng.gen_bool(0.12)) {
            if let Some(owned) = create(&shared, &call, rng.gen_bool(0.3), rng.gen_bool(0.8)).await {
                mine.push(owned);
                wait_for_call(&shared, &call, &mut rng).await;
            }
            continue;
        }
        if rng.gen_bool(0.02) {
            let name = format!("key-{call}");
            let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl crash@loop";
            let body = json!({"name": name, "public_key": key});
            let outcome =
                shared.call(&call, Method::POST, "/v1/ssh-keys", Auth::Bearer, Some(body), Retry::Blind).await;
            if settle(&shared, &call, outcome, NO_OP).is_some() {
                shared.ledger.lock().unwrap().ssh_keys.push(name);
            }
            continue;
        }
        let i = live[rng.gen_range(0..live.len())];
        let mut pick = rng.gen_range(0..total);
        let act = ACTS
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap()
            .0;
        act_on(&shared, &call, &mut mine[i], act, &mut rng).await;
    }
    shared.ledger.lock().unwrap().instances.extend(mine);
}

/// Where an answer names the operation it began: a native or Exoscale operation's `id`, a Gcore task,
/// an ONET task; `/operation` is where a call resolved after a lost answer keeps it.
const NATIVE_OP: &[&str] = &["/operation", "/id"];
const GCORE_OP: &[&str] = &["/operation", "/tasks/0"];
const NO_OP: &[&str] = &[];

/// Books an outcome in the ledger, with the operation the answer names at `op_at`; the answer when
/// acknowledged.
fn settle(shared: &Shared, call: &str, outcome: Outcome, op_at: &[&str]) -> Option<Answer> {
    let mut ledger = shared.ledger.lock().unwrap();
    match outcome {
        Outcome::Acked(a) => {
            ledger.acked += 1;
            let op = op_at.iter().find_map(|p| a.str(p)).and_then(|o| Uuid::parse_str(&o).ok());
            if let Some(op) = op {
                ledger.ops.push((call.to_string(), op));
            }
            Some(a)
        }
        Outcome::Refused(a) => {
            ledger.refused += 1;
            let code = a.str("/error/code").unwrap_or_default();
            let entry = ledger.refused_by.entry(format!("{} {code}", a.status)).or_insert((0, a.body.to_string()));
            entry.0 += 1;
            None
        }
        Outcome::GaveUp => {
            ledger.gave_up.push(format!("{call}: no definitive answer"));
            None
        }
    }
}

/// Waits until every transaction other sessions of the database at `url` had begun by now has ended
/// (committed or rolled back): the dead server's backend finishes a COMMIT it had received.
async fn transactions_begun_before_now_ended(url: &str) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else { return };
    let Ok(now) =
        sqlx::query_scalar::<_, f64>("SELECT extract(epoch FROM clock_timestamp())::float8").fetch_one(&mut conn).await
    else {
        return;
    };
    for _ in 0..100 {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND datname = current_database() AND xact_start IS NOT NULL
               AND extract(epoch FROM xact_start)::float8 < $1",
        )
        .bind(now)
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0);
        if open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create(shared: &Shared, call: &str, through_gcore: bool, auto_start: bool) -> Option<Owned> {
    let name = format!("i-{call}");
    let labels = BTreeMap::from([("owner".to_string(), call.to_string())]);
    let instance_type = "standard.small".to_string();
    let outcome = if through_gcore {
        let body = json!({"name": name, "flavor": instance_type, "interfaces": [{"type": "external"}],
            "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}], "tags": labels});
        let path = format!("/cloud/v2/instances/{}", shared.gcore_base);
        shared.call(call, Method::POST, &path, Auth::Gcore, Some(body), Retry::CheckFirst).await
    } else {
        let body = json!({"name": name, "instance_type": instance_type, "template": "busybox", "labels": labels,
            "auto_start": auto_start});
        shared.call(call, Method::POST, "/v1/instances", Auth::Bearer, Some(body), Retry::Blind).await
    };
    let a = settle(shared, call, outcome, if through_gcore { GCORE_OP } else { NATIVE_OP })?;
    let op = a.str("/operation").or_else(|| a.str("/tasks/0")).or_else(|| a.str("/id"))?;
    let id = match a.str("/target").or_else(|| a.str("/target/id")) {
        Some(id) => id,
        None => shared.client.get(&format!("/v1/operations/{op}")).await["target"]["id"].as_str()?.to_string(),
    };
    Some(Owned { id: id.parse().ok()?, name, labels: Some(labels), deleted_by: None, sf_id: None, instance_type })
}

async fn act_on(shared: &Shared, call: &str, i: &mut Owned, act: Act, rng: &mut StdRng) {
    act_once(shared, call, i, act, rng).await;
    wait_for_call(shared, call, rng).await;
}

/// Most clients wait for what they began before their next call; some do not.
async fn wait_for_call(shared: &Shared, call: &str, rng: &mut StdRng) {
    let began = shared.ledger.lock().unwrap().ops.iter().rev().find(|(c, _)| c == call).map(|(_, op)| *op);
    if let (Some(op), true) = (began, rng.gen_bool(0.7)) {
        let _ = shared.client.native(Method::GET, &format!("/v1/operations/{op}?wait=10"), None).await;
    }
}

async fn act_once(shared: &Shared, call: &str, i: &mut Owned, act: Act, rng: &mut StdRng) {
    let id = i.id;
    match act {
        Act::NativeLabels | Act::SfTags | Act::ExoscaleLabels => {
            let (key, value) = (format!("k{}", rng.gen_range(0..4)), format!("v{}", rng.gen_range(0..1000)));
            let (method, path, auth, body, replaces) = match act {
                Act::NativeLabels => (
                    Method::PATCH,
                    format!("/v1/instances/{id}"),
                    Auth::Bearer,
                    json!({"labels": {&key: &value}}),
                    false,
                ),
                Act::SfTags => {
                    let Some(sf) = sf_id(shared, i).await else { return };
                    // SF Compute's PATCH replaces the tags whole.
                    let mut all = i.labels.clone().unwrap_or_default();
                    all.insert(key.clone(), value.clone());
                    (Method::PATCH, format!("/preview/v2/instances/{sf}"), Auth::Bearer, json!({"tags": all}), true)
                }
                _ => {
                    // Exoscale replaces the labels whole.
                    let mut all = i.labels.clone().unwrap_or_default();
                    all.insert(key.clone(), value.clone());
                    (Method::PUT, format!("/v2/instance/{id}"), Auth::Exoscale, json!({"labels": all}), true)
                }
            };
            let outcome = shared.call(call, method, &path, auth, Some(body.clone()), Retry::Blind).await;
            let acked = matches!(outcome, Outcome::Acked(_));
            let gave_up = matches!(outcome, Outcome::GaveUp);
            settle(shared, call, outcome, NO_OP);
            match (&mut i.labels, acked, gave_up) {
                (Some(labels), true, _) if replaces => {
                    let given = body.get("labels").or_else(|| body.get("tags")).cloned().unwrap_or_default();
                    *labels = serde_json::from_value(given).unwrap();
                }
                (Some(labels), true, _) => {
                    labels.insert(key, value);
                }
                (_, _, true) => i.labels = None,
                _ => {}
            }
        }
        Act::NativeAction(action) => {
            let path = format!("/v1/instances/{id}/{action}");
            settle(
                shared,
                call,
                shared.call(call, Method::POST, &path, Auth::Bearer, None, Retry::Blind).await,
                NATIVE_OP,
            );
        }
        Act::ExoscaleAction(action) => {
            let path = format!("/v2/instance/{id}:{action}");
            let outcome =
                shared.call(call, Method::PUT, &path, Auth::Exoscale, Some(json!({})), Retry::CheckFirst).await;
            settle(shared, call, outcome, NATIVE_OP);
        }
        Act::Snapshot => {
            let path = format!("/v1/instances/{id}/create-snapshot");
            let body = json!({"name": format!("s-{call}")});
            let outcome = shared.call(call, Method::POST, &path, Auth::Bearer, Some(body), Retry::Blind).await;
            settle(shared, call, outcome, NATIVE_OP);
        }
        Act::ResizeDisk => {
            let now = shared.client.get(&format!("/v1/instances/{id}")).await["disk_size_gb"].as_u64().unwrap_or(10);
            let path = format!("/v1/instances/{id}/resize-disk");
            let body = json!({"disk_size_gb": now + rng.gen_range(1..4)});
            let outcome = shared.call(call, Method::POST, &path, Auth::Bearer, Some(body), Retry::Blind).await;
            settle(shared, call, outcome, NATIVE_OP);
        }
        Act::OnetResize => {
            let to = if i.instance_type == "standard.small" { "standard.medium" } else { "standard.small" };
            let path = format!("{}/{id}/resize", shared.onet_base);
            let body = json!({"size_id": shared.type_ids[to]});
            let outcome = shared.call(call, Method::POST, &path, Auth::Bearer, Some(body), Retry::CheckFirst).await;
            if settle(shared, call, outcome, NATIVE_OP).is_some() {
                i.instance_type = to.to_string();
            }
        }
        Act::Volume => volume_cycle(shared, call, id, rng).await,
        Act::NativeDelete | Act::GcoreDelete => {
            let outcome = if matches!(act, Act::NativeDelete) {
                let path = format!("/v1/instances/{id}");
                shared.call(call, Method::DELETE, &path, Auth::Bearer, None, Retry::CheckFirst).await
            } else {
                let path = format!("/cloud/v1/instances/{}/{id}", shared.gcore_base);
                shared.call(call, Method::DELETE, &path, Auth::Gcore, None, Retry::CheckFirst).await
            };
            let op_at = if matches!(act, Act::NativeDelete) { NATIVE_OP } else { GCORE_OP };
            if let Some(a) = settle(shared, call, outcome, op_at) {
                let op = op_at.iter().find_map(|p| a.str(p));
                i.deleted_by = op.and_then(|o| o.parse().ok());
            }
        }
    }
}

/// A volume's life on one instance, each step a call of its own (`{call}v{n}`) that the client waits for,
/// as a user running a script would.
async fn volume_cycle(shared: &Shared, call: &str, instance: Uuid, rng: &mut StdRng) {
    let body = json!({"name": format!("v-{call}"), "size_gb": 1});
    let step = |n: u32| format!("{call}v{n}");
    let outcome = shared.call(&step(0), Method::POST, "/v1/volumes", Auth::Bearer, Some(body), Retry::Blind).await;
    let Some(a) = settle(shared, &step(0), outcome, NATIVE_OP) else { return };
    let Some(op) = a.str("/operation").or_else(|| a.str("/id")) else { return };
    let done = shared.client.get(&format!("/v1/operations/{op}?wait=30")).await;
    let Some(volume) = done["target"]["id"].as_str().and_then(|v| v.parse::<Uuid>().ok()) else { return };
    let slot = {
        let mut ledger = shared.ledger.lock().unwrap();
        ledger.volumes.push((volume, None));
        ledger.volumes.len() - 1
    };
    let wait = |a: &Answer, at: &[&str]| at.iter().find_map(|p| a.str(p));
    let attach = json!({"instance_id": instance});
    let path = format!("/v1/volumes/{volume}/attach");
    let outcome = shared.call(&step(1), Method::POST, &path, Auth::Bearer, Some(attach), Retry::Blind).await;
    if let Some(a) = settle(shared, &step(1), outcome, NATIVE_OP) {
        if let Some(op) = wait(&a, NATIVE_OP) {
            shared.client.get(&format!("/v1/operations/{op}?wait=30")).await;
        }
    }
    let (outcome, op_at) = match rng.gen_range(0..3) {
        0 => {
            let path = format!("/cloud/v2/volumes/{}/{volume}/detach", shared.gcore_base);
            let body = json!({"instance_id": instance});
            (shared.call(&step(2), Method::POST, &path, Auth::Gcore, Some(body), Retry::CheckFirst).await, GCORE_OP)
        }
        1 => {
            let path = format!("/v2/block-storage/{volume}:detach");
            (
                shared.call(&step(2), Method::PUT, &path, Auth::Exoscale, Some(json!({})), Retry::CheckFirst).await,
                NATIVE_OP,
            )
        }
        _ => {
            let path = format!("/v1/volumes/{volume}/detach");
            (shared.call(&step(2), Method::POST, &path, Auth::Bearer, None, Retry::Blind).await, NATIVE_OP)
        }
    };
    if let Some(a) = settle(shared, &step(2), outcome, op_at) {
        if let Some(op) = wait(&a, op_at) {
            shared.client.get(&format!("/v1/operations/{op}?wait=30")).await;
        }
    }
    let path = format!("/v1/volumes/{volume}");
    let outcome = shared.call(&step(3), Method::DELETE, &path, Auth::Bearer, None, Retry::CheckFirst).await;
    if let Some(a) = settle(shared, &step(3), outcome, NATIVE_OP) {
        let op = wait(&a, NATIVE_OP).and_then(|o| o.parse().ok());
        shared.ledger.lock().unwrap().volumes[slot].1 = op;
    }
}

/// The SF id of one of a client's instances, looked up once.
async fn sf_id(shared: &Shared, i: &mut Owned) -> Option<String> {
    if i.sf_id.is_none() {
        let a = shared.client.native(Method::GET, "/preview/v2/instances?limit=200", None).await;
        let mut cursor = None::<String>;
        let mut page = a;
        loop {
            if let Some(found) = page.body["data"].as_array().and_then(|d| d.iter().find(|x| x["name"] == i.name)) {
                i.sf_id = found["id"].as_str().map(str::to_string);
                break;
            }
            cursor = page.body["cursor"].as_str().map(str::to_string).filter(|c| Some(c) != cursor.as_ref());
            let Some(c) = &cursor else { break };
            page = shared
                .client
                .native(Method::GET, &format!("/preview/v2/instances?limit=200&starting_after={c}"), None)
                .await;
        }
    }
    i.sf_id.clone()
}
