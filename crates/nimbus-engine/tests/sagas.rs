//! Every operation kind, with its worker killed before and after each of its steps (and just before its
//! outcome is recorded), converges to the same end state as a run that was never interrupted, with nothing
//! leaked: no address, snapshot, lock, lease or unfinished operation that belongs to nothing. In the spirit
//! of omicron's `actions_succeed_idempotently`.
//!
//! A "kill" is the engine's crash hook: the worker stops dead at that point, writes nothing more and keeps
//! its lease, exactly as a killed server would. The lease then expires and a worker claims the operation
//! again, resuming where its recorded progress says. A second test kills it at the same point every time,
//! until the operation is given up: that must leave as consistent a state as an ordinary failure.
//!
//! Runs on SQLite, or on PostgreSQL when `NIMBUS_TEST_DATABASE_URL` is set.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::instance::InstanceState;
use nimbus_core::operation::{Actor, Operation, OperationState};
use nimbus_core::state_machine::Action;
use nimbus_driver::{Driver, SimConfig, SimDriver};
use nimbus_engine::instances::InstancePatch;
use nimbus_engine::{ActionRequest, Context, CrashPoint, CrashWhen, CreateInstance, Engine, EngineConfig};
use nimbus_store::testing::TestStore;
use nimbus_store::OperationQuery;
use uuid::Uuid;

const SECRET: &str = "saga-test-secret-0123456789";

/// Which crash points fire: `once` fires at the first matching point and disarms; `always` never disarms.
#[derive(Default)]
struct Plan {
    armed: bool,
    target: Option<(Action, usize, CrashWhen)>,
    always: bool,
    fired: u32,
    /// Every point the armed operation passed, for enumerating steps.
    seen: Vec<CrashPoint>,
}

struct Cloud {
    engine: Arc<Engine>,
    sim: Arc<SimDriver>,
    store: TestStore,
    ctx: Context,
    plan: Arc<Mutex<Plan>>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.engine.halt();
    }
}

async fn cloud() -> Cloud {
    let store = nimbus_store::testing::test_store().await;
    let sim = Arc::new(SimDriver::new(SimConfig::default()));
    let plan = Arc::new(Mutex::new(Plan::default()));
    let hook_plan = plan.clone();
    let config = EngineConfig {
        lease: Duration::from_millis(300),
        poll_every: Duration::from_millis(20),
        reconcile_every: Duration::from_millis(100),
        stop_grace: Duration::from_millis(10),
        crash_hook: Some(Arc::new(move |point: &CrashPoint| {
            let mut plan = hook_plan.lock().unwrap();
            if !plan.armed {
                return false;
            }
            plan.seen.push(*point);
            if plan.target == Some((point.kind, point.step, point.when)) {
                plan.fired += 1;
                if !plan.always {
                    plan.target = None;
                }
                return true;
            }
            false
        })),
        ..EngineConfig::default()
    };
    let engine = Engine::start(store.store.clone(), sim.clone(), config).await.unwrap();
    engine.bootstrap(Some(("NIMsaga".into(), SECRET.into()))).await.unwrap();
    let ctx = engine.authenticate_secret(SECRET, Actor::default()).await.unwrap();
    Cloud { engine, sim, store, ctx, plan }
}

impl Cloud {
    async fn wait(&self, op: Uuid) -> Operation {
        let op = self.engine.wait_operation(&self.ctx, op, Duration::from_secs(60)).await.unwrap();
        assert!(op.state.is_final(), "operation {} did not end: {op:?}", op.id);
        op
    }

    async fn create(&self, name: &str, auto_start: bool) -> Operation {
        let req = CreateInstance {
            name: name.into(),
            instance_type: "standard.small".into(),
            template: "busybox".into(),
            auto_start,
            ..Default::default()
        };
        self.engine.create_instance(&self.ctx, req).await.unwrap().0
    }

    /// A new instance in the state a scenario starts from.
    async fn instance_in(&self, name: &str, setup: Setup) -> Uuid {
        let op = self.create(name, !matches!(setup, Setup::Stopped | Setup::StoppedWithSnapshot)).await;
        let id = op.target.id;
        assert_eq!(self.wait(op.id).await.state, OperationState::Success);
        match setup {
            Setup::None | Setup::Running | Setup::Stopped => {}
            Setup::Suspended => self.act_ok(id, ActionRequest::Suspend).await,
            Setup::StoppedWithSnapshot => {
                self.act_ok(id, ActionRequest::CreateSnapshot { name: Some(format!("{name}-snap")) }).await
            }
        }
        id
    }

    async fn act_ok(&self, id: Uuid, req: ActionRequest) {
        let op = self.engine.act(&self.ctx, id, req).await.unwrap();
        assert_eq!(self.wait(op.id).await.state, OperationState::Success);
    }

    fn arm(&self, target: Option<(Action, usize, CrashWhen)>, always: bool) {
        let mut plan = self.plan.lock().unwrap();
        *plan = Plan { armed: true, target, always, fired: 0, seen: Vec::new() };
    }

    fn disarm(&self) -> Plan {
        let mut plan = self.plan.lock().unwrap();
        std::mem::take(&mut *plan)
    }

    async fn snapshot_id(&self, instance: Uuid) -> Uuid {
        self.engine.list_snapshots(&self.ctx, Some(instance)).await.unwrap()[0].id
    }

    /// Runs the scenario's action and returns its operation once it has ended.
    async fn run(&self, scenario: &Scenario, id: Uuid, name: &str) -> Operation {
        let op = match scenario.act {
            Act::Create { auto_start } => self.create(name, auto_start).await,
            Act::Request(ref make) => {
                let req = match make {
                    Req::Plain(r) => r.clone(),
                    Req::RevertToFirstSnapshot => {
                        ActionRequest::RevertSnapshot { snapshot_id: self.snapshot_id(id).await }
                    }
                    Req::DeleteFirstSnapshot => {
                        ActionRequest::DeleteSnapshot { snapshot_id: self.snapshot_id(id).await }
                    }
                    Req::PromoteFirstSnapshot => ActionRequest::PromoteSnapshot {
                        snapshot_id: self.snapshot_id(id).await,
                        template: nimbus_engine::PromoteRequest {
                            name: format!("{name}-golden"),
                            ..Default::default()
                        },
                    },
                };
                self.engine.act(&self.ctx, id, req).await.unwrap()
            }
            Act::ShutdownTimeComes => {
                let patch = InstancePatch {
                    expected_shutdown_at: Some(Some(nimbus_core::now() - time::Duration::seconds(1))),
                    ..Default::default()
                };
                self.engine.update_instance(&self.ctx, id, patch, None).await.unwrap();
                // The reconciler begins it at its next pass.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let ops = self.engine.list_operations(&self.ctx, Some(id), 100, None).await.unwrap();
                    if let Some(op) = ops.items.into_iter().find(|o| o.kind == Action::ScheduledStop) {
                        break op;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "no scheduled stop began");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.wait(op.id).await
    }

    /// What a user or an operator would notice of the instance and everything around it, with ids of
    /// things made during the run (snapshots) left out so that two runs compare.
    async fn observe(&self, op: &Operation) -> Observed {
        let id = op.target.id;
        let record = self.engine.instance(&self.ctx, id).await.ok();
        let host_state = self.sim.inspect(id).await.unwrap();
        let host_disk = self.sim.disk_size_gb(id).await.ok();
        let mut host_snapshots = self.sim.snapshots(id).await.unwrap_or_default();
        host_snapshots.sort();
        let snapshots = self.engine.list_snapshots(&self.ctx, Some(id)).await.unwrap();
        let mut snapshot_ids: Vec<Uuid> = snapshots.iter().map(|s| s.id).collect();
        snapshot_ids.sort();
        Observed {
            op_state: op.state,
            op_reason: op.reason.map(|r| format!("{r:?}")),
            state: record.as_ref().map(|i| i.state),
            locked: record.as_ref().is_some_and(|i| i.lock_operation_id.is_some()),
            instance_type: record.as_ref().map(|i| i.instance_type.clone()),
            disk_size_gb: record.as_ref().map(|i| i.disk_size_gb),
            tpm: record.as_ref().map(|i| i.tpm_enabled),
            anti_affinity_groups: record.as_ref().map(|i| i.anti_affinity_groups.len()),
            host_state: format!("{host_state:?}"),
            host_disk,
            snapshot_states: snapshots.iter().map(|s| format!("{:?}", s.state)).collect(),
            // Every snapshot record has its snapshot on the host and the other way round.
            snapshots_agree: snapshot_ids == host_snapshots,
            password: self.engine.reveal_password(&self.ctx, id).await.is_ok(),
            promoted: self.promoted(op).await,
        }
    }

    /// Whether the operation made a template that has both its record and its files on the host.
    async fn promoted(&self, op: &Operation) -> bool {
        let Some(id) = op.result.as_ref().and_then(|r| r["template_id"].as_str()) else { return false };
        let recorded = self.engine.template(&self.ctx, id).await.is_ok();
        let on_host = self.sim.template_files().iter().any(|t| t.to_string() == id);
        recorded && on_host
    }

    /// Nothing left behind anywhere in the store: every address is held by an instance that exists, every
    /// instance holds one, no instance is locked, no operation is unfinished.
    async fn assert_nothing_leaked(&self, case: &str) {
        let unfinished =
            self.store.list_operations(&OperationQuery { unfinished: true, ..Default::default() }).await.unwrap();
        assert!(unfinished.is_empty(), "{case}: unfinished operations {unfinished:?}");
        let instances = self.engine.all_instances(&self.ctx).await.unwrap();
        let mut holders: Vec<Uuid> = self.store.list_addresses(None).await.unwrap().iter().map(|a| a.owner).collect();
        holders.sort();
        let mut live: Vec<Uuid> = instances.iter().map(|i| i.id).collect();
        live.sort();
        assert_eq!(holders, live, "{case}: addresses held by something other than the instances");
        for i in &instances {
            assert_eq!(i.lock_operation_id, None, "{case}: instance {} left locked", i.id);
            assert!(!i.state.is_transitional(), "{case}: instance {} left {}", i.id, i.state);
        }
        let on_host = self.sim.instances().await.unwrap();
        for id in on_host {
            assert!(live.contains(&id), "{case}: the host keeps instance {id}, which no record knows");
        }
        // Every imported or promoted template's files belong to a template record, and the other way round.
        let templates = self.engine.list_templates(&self.ctx).await.unwrap();
        for id in self.sim.template_files() {
            assert!(templates.iter().any(|t| t.id == id), "{case}: the host keeps template files {id} of no record");
        }
        for t in templates.iter().filter(|t| t.project_id.is_some()) {
            assert!(self.sim.template_files().contains(&t.id), "{case}: template {} has no files", t.name);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Observed {
    op_state: OperationState,
    op_reason: Option<String>,
    state: Option<InstanceState>,
    locked: bool,
    instance_type: Option<String>,
    disk_size_gb: Option<u64>,
    tpm: Option<bool>,
    anti_affinity_groups: Option<usize>,
    host_state: String,
    host_disk: Option<u64>,
    snapshot_states: Vec<String>,
    snapshots_agree: bool,
    password: bool,
    promoted: bool,
}

#[derive(Debug, Clone, Copy)]
enum Setup {
    /// The scenario creates the instance itself.
    None,
    Running,
    Stopped,
    Suspended,
    StoppedWithSnapshot,
}

#[derive(Debug, Clone)]
enum Req {
    Plain(ActionRequest),
    RevertToFirstSnapshot,
    DeleteFirstSnapshot,
    /// Promotes the first snapshot to a template named after the instance.
    PromoteFirstSnapshot,
}

#[derive(Debug, Clone)]
enum Act {
    Create {
        auto_start: bool,
    },
    Request(Req),
    /// The instance's `expected_shutdown_at` passes and Nimbus stops it itself.
    ShutdownTimeComes,
}

#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    kind: Action,
    setup: Setup,
    act: Act,
}

fn scenarios(group: Uuid) -> Vec<Scenario> {
    use ActionRequest as A;
    let plain = |r: ActionRequest| Act::Request(Req::Plain(r));
    vec![
        Scenario { name: "create", kind: Action::Create, setup: Setup::None, act: Act::Create { auto_start: true } },
        Scenario {
            name: "create-stopped",
            kind: Action::Create,
            setup: Setup::None,
            act: Act::Create { auto_start: false },
        },
        Scenario { name: "start", kind: Action::Start, setup: Setup::Stopped, act: plain(A::Start) },
        Scenario { name: "stop", kind: Action::Stop, setup: Setup::Running, act: plain(A::Stop) },
        Scenario {
            name: "scheduled-stop",
            kind: Action::ScheduledStop,
            setup: Setup::Running,
            act: Act::ShutdownTimeComes,
        },
        Scenario { name: "power-off", kind: Action::Stop, setup: Setup::Running, act: plain(A::PowerOff) },
        Scenario { name: "reboot", kind: Action::Reboot, setup: Setup::Running, act: plain(A::Reboot) },
        Scenario { name: "soft-reboot", kind: Action::Reboot, setup: Setup::Running, act: plain(A::SoftReboot) },
        Scenario {
            name: "reset-running",
            kind: Action::Reset,
            setup: Setup::Running,
            act: plain(A::Reset { template: None, disk_size_gb: Some(20) }),
        },
        Scenario {
            name: "reset-stopped",
            kind: Action::Reset,
            setup: Setup::Stopped,
            act: plain(A::Reset { template: None, disk_size_gb: None }),
        },
        Scenario {
            name: "scale",
            kind: Action::Scale,
            setup: Setup::Stopped,
            act: plain(A::Scale { instance_type: "standard.medium".into() }),
        },
        Scenario {
            name: "scale-with-restart",
            kind: Action::ScaleWithRestart,
            setup: Setup::Running,
            act: plain(A::ScaleTo {
                instance_type: "standard.medium".into(),
                gpu_model: None,
                across_families: false,
                restart_if_running: true,
            }),
        },
        Scenario {
            name: "resize-disk",
            kind: Action::ResizeDisk,
            setup: Setup::Stopped,
            act: plain(A::ResizeDisk { disk_size_gb: 30 }),
        },
        Scenario {
            name: "create-snapshot",
            kind: Action::CreateSnapshot,
            setup: Setup::Running,
            act: plain(A::CreateSnapshot { name: Some("s1".into()) }),
        },
        Scenario {
            name: "revert-snapshot",
            kind: Action::RevertSnapshot,
            setup: Setup::StoppedWithSnapshot,
            act: Act::Request(Req::RevertToFirstSnapshot),
        },
        Scenario {
            name: "delete-snapshot",
            kind: Action::DeleteSnapshot,
            setup: Setup::StoppedWithSnapshot,
            act: Act::Request(Req::DeleteFirstSnapshot),
        },
        Scenario {
            name: "promote-snapshot",
            kind: Action::PromoteSnapshot,
            setup: Setup::StoppedWithSnapshot,
            act: Act::Request(Req::PromoteFirstSnapshot),
        },
        Scenario {
            name: "reset-password",
            kind: Action::ResetPassword,
            setup: Setup::Running,
            act: plain(A::ResetPassword),
        },
        Scenario { name: "enable-tpm", kind: Action::EnableTpm, setup: Setup::Stopped, act: plain(A::EnableTpm) },
        Scenario { name: "suspend", kind: Action::Suspend, setup: Setup::Running, act: plain(A::Suspend) },
        Scenario { name: "resume", kind: Action::Resume, setup: Setup::Suspended, act: plain(A::Resume) },
        Scenario { name: "delete", kind: Action::Delete, setup: Setup::Running, act: plain(A::Delete) },
        Scenario {
            name: "anti-affinity",
            kind: Action::ChangeAntiAffinityGroups,
            setup: Setup::Running,
            act: plain(A::ChangeAntiAffinityGroups { join: vec![group], leave: vec![] }),
        },
    ]
}

/// Every kind the engine has is covered by a scenario.
#[test]
fn every_operation_kind_has_a_scenario() {
    let covered: Vec<Action> = scenarios(Uuid::nil()).iter().map(|s| s.kind).collect();
    for kind in [
        Action::Create,
        Action::Start,
        Action::Stop,
        Action::ScheduledStop,
        Action::Reboot,
        Action::Reset,
        Action::Scale,
        Action::ScaleWithRestart,
        Action::ResizeDisk,
        Action::CreateSnapshot,
        Action::RevertSnapshot,
        Action::DeleteSnapshot,
        Action::ResetPassword,
        Action::EnableTpm,
        Action::Suspend,
        Action::Resume,
        Action::Delete,
        Action::ChangeAntiAffinityGroups,
        Action::PromoteSnapshot,
    ] {
        assert!(covered.contains(&kind), "no saga scenario for {kind}");
    }
    // Action::ImportTemplate targets no instance: `an_import_converges_...` below covers it.
}

/// The crash points an uninterrupted run of the scenario passes, in order.
async fn reference(c: &Cloud, s: &Scenario, n: usize) -> (Observed, Vec<(usize, CrashWhen)>) {
    let name = format!("{}-ref-{n}", s.name);
    let id = match s.setup {
        Setup::None => Uuid::nil(),
        setup => c.instance_in(&name, setup).await,
    };
    c.arm(None, false);
    let op = c.run(s, id, &name).await;
    let plan = c.disarm();
    let points = plan.seen.iter().filter(|p| p.operation == op.id).map(|p| (p.step, p.when)).collect::<Vec<_>>();
    (c.observe(&op).await, points)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_converges_after_a_crash_before_and_after_each_step() {
    let c = cloud().await;
    let group = c.engine.create_anti_affinity_group(&c.ctx, "spread", "").await.unwrap().id;
    let mut report = BTreeMap::new();
    for s in scenarios(group) {
        let (expected, points) = reference(&c, &s, 0).await;
        assert_eq!(expected.op_state, OperationState::Success, "{}: the uninterrupted run failed", s.name);
        assert!(!points.is_empty(), "{}: no crash point was passed", s.name);
        for (n, &(step, when)) in points.iter().enumerate() {
            let case = format!("{} crashed {when:?} step {step}", s.name);
            let name = format!("{}-c{n}", s.name);
            let id = match s.setup {
                Setup::None => Uuid::nil(),
                setup => c.instance_in(&name, setup).await,
            };
            c.arm(Some((s.kind, step, when)), false);
            let op = c.run(&s, id, &name).await;
            let plan = c.disarm();
            assert_eq!(plan.fired, 1, "{case}: the crash point was not reached");
            assert!(op.attempts >= 2, "{case}: the operation was not resumed ({} attempts)", op.attempts);
            let got = c.observe(&op).await;
            assert_eq!(got, expected, "{case}: converged elsewhere than an uninterrupted run");
            c.assert_nothing_leaked(&case).await;
        }
        report.insert(s.name, points.len());
    }
    eprintln!("crash points visited per scenario: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_killed_every_time_is_given_up_and_leaves_nothing_behind() {
    let c = cloud().await;
    let group = c.engine.create_anti_affinity_group(&c.ctx, "spread", "").await.unwrap().id;
    for s in scenarios(group) {
        let (_, points) = reference(&c, &s, 0).await;
        // The first point and the last (just before the outcome): nothing begun, and everything done.
        let mut chosen = vec![points[0]];
        if points.len() > 1 {
            chosen.push(*points.last().unwrap());
        }
        for (n, (step, when)) in chosen.into_iter().enumerate() {
            let case = format!("{} killed every time {when:?} step {step}", s.name);
            let name = format!("{}-k{n}", s.name);
            let id = match s.setup {
                Setup::None => Uuid::nil(),
                setup => c.instance_in(&name, setup).await,
            };
            c.arm(Some((s.kind, step, when)), true);
            let op = c.run(&s, id, &name).await;
            c.disarm();
            assert_eq!(op.state, OperationState::Failure, "{case}: {op:?}");
            assert_eq!(op.reason, Some(nimbus_core::operation::Reason::Interrupted), "{case}");
            let got = c.observe(&op).await;
            assert!(!got.locked, "{case}: the instance stays locked");
            if let Some(state) = got.state {
                // The record says what the host shows, and the disk the host has.
                let host_says = match got.host_state.as_str() {
                    "Running" => InstanceState::Running,
                    "Stopped" => InstanceState::Stopped,
                    "Paused" => InstanceState::Suspended,
                    _ => InstanceState::Error,
                };
                assert_eq!(state, host_says, "{case}: the record disagrees with the host");
                if let Some(disk) = got.host_disk {
                    assert_eq!(got.disk_size_gb, Some(disk), "{case}: the record's disk is not the host's");
                }
            }
            assert!(
                got.snapshot_states.iter().all(|s| s == "Ready"),
                "{case}: a snapshot is left {:?}",
                got.snapshot_states
            );
            assert!(got.snapshots_agree, "{case}: snapshot records and the host's snapshots disagree");
            c.assert_nothing_leaked(&case).await;
        }
    }
}

impl Cloud {
    async fn import(&self, name: &str, source: &str, checksum: Option<&str>) -> Operation {
        let req = nimbus_engine::ImportTemplate {
            name: name.into(),
            source: source.into(),
            checksum: checksum.map(String::from),
            default_user: Some("debian".into()),
            ..Default::default()
        };
        let op = self.engine.import_template(&self.ctx, req).await.unwrap();
        self.wait(op.id).await
    }
}

/// The import of a template (a kind whose target is a template, not an instance) killed before and after
/// its step, and just before its outcome: it converges to the template an uninterrupted import makes, and
/// killed every time it is given up leaving neither a record nor files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_converges_after_a_crash_at_every_point_and_a_refused_one_leaves_nothing() {
    let c = cloud().await;
    c.arm(None, false);
    let op = c.import("ref", "http://127.0.0.1:9/image.qcow2", None).await;
    let plan = c.disarm();
    assert_eq!(op.state, OperationState::Success, "{op:?}");
    let points: Vec<(usize, CrashWhen)> =
        plan.seen.iter().filter(|p| p.operation == op.id).map(|p| (p.step, p.when)).collect();
    assert_eq!(points.len(), 3, "before and after the step, and before the outcome: {points:?}");
    for (n, &(step, when)) in points.iter().enumerate() {
        let case = format!("import crashed {when:?} step {step}");
        c.arm(Some((Action::ImportTemplate, step, when)), false);
        let name = format!("img-{n}");
        let op = c.import(&name, "/srv/image.qcow2", Some(nimbus_driver::sim::SIM_CHECKSUM)).await;
        let plan = c.disarm();
        assert_eq!(plan.fired, 1, "{case}: the crash point was not reached");
        assert!(op.attempts >= 2, "{case}: not resumed");
        assert_eq!(op.state, OperationState::Success, "{case}: {op:?}");
        let t = c.engine.template(&c.ctx, &name).await.unwrap();
        assert_eq!(op.result.as_ref().unwrap()["template_id"], t.id.to_string(), "{case}");
        assert_eq!(t.default_user, "debian", "{case}");
        c.assert_nothing_leaked(&case).await;
    }
    for (n, (step, when)) in [points[0], points[2]].into_iter().enumerate() {
        let case = format!("import killed every time {when:?} step {step}");
        c.arm(Some((Action::ImportTemplate, step, when)), true);
        let name = format!("killed-{n}");
        let op = c.import(&name, "/srv/image.qcow2", None).await;
        c.disarm();
        assert_eq!(op.state, OperationState::Failure, "{case}: {op:?}");
        assert_eq!(op.reason, Some(nimbus_core::operation::Reason::Interrupted), "{case}");
        assert!(c.engine.template(&c.ctx, &name).await.is_err(), "{case}: a given-up import left a template");
        c.assert_nothing_leaked(&case).await;
    }
    // Refused by the host: a file that is not a disk image, a checksum that does not match.
    let bad = c.import("bad", "/srv/corrupt.qcow2", None).await;
    assert_eq!(bad.state, OperationState::Failure);
    assert!(bad.message.as_deref().unwrap_or("").contains("not a disk image"), "{bad:?}");
    let sum = format!("sha256:{}", "1".repeat(64));
    let mismatch = c.import("mismatch", "/srv/image.qcow2", Some(&sum)).await;
    assert!(mismatch.message.as_deref().unwrap_or("").contains("checksum mismatch"), "{mismatch:?}");
    for name in ["bad", "mismatch"] {
        assert!(c.engine.template(&c.ctx, name).await.is_err(), "a refused import left template {name}");
    }
    c.assert_nothing_leaked("refused imports").await;
    // A name already taken is refused before anything begins.
    let req = nimbus_engine::ImportTemplate { name: "ref".into(), source: "/srv/x.qcow2".into(), ..Default::default() };
    assert!(matches!(c.engine.import_template(&c.ctx, req).await, Err(nimbus_core::DomainError::Conflict(_))));
}
