//! Every volume operation kind, with its worker killed before and after each of its steps (and just before
//! its outcome is recorded), converges to the end state of an uninterrupted run with nothing leaked: no
//! lock on the volume or its instance, no disk without a record, no attachment the records do not show.
//! Killed at the same point every time, it is given up and leaves records that agree with the host. The
//! volume twin of `sagas.rs`.
//!
//! Runs on SQLite, or on PostgreSQL when `NIMBUS_TEST_DATABASE_URL` is set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::instance::InstanceState;
use nimbus_core::operation::{Actor, Operation, OperationState, Reason};
use nimbus_core::state_machine::Action;
use nimbus_core::volume::{VolumeSnapshotState, VolumeState};
use nimbus_driver::{Driver, SimConfig, SimDriver};
use nimbus_engine::hosts::EvacuationMode;
use nimbus_engine::{
    BootVolumeRequest, Context, CrashPoint, CrashWhen, CreateInstance, CreateVolume, CreateVolumeSnapshot, Engine,
    EngineConfig, InstanceVolume,
};
use nimbus_store::testing::TestStore;
use uuid::Uuid;

const SECRET: &str = "volume-saga-test-secret-0123";

#[derive(Default)]
struct Plan {
    armed: bool,
    target: Option<(Action, usize, CrashWhen)>,
    always: bool,
    fired: u32,
    seen: Vec<CrashPoint>,
}

struct Cloud {
    engine: Arc<Engine>,
    sim: Arc<SimDriver>,
    _store: TestStore,
    ctx: Context,
    plan: Arc<Mutex<Plan>>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.engine.halt();
    }
}

async fn cloud() -> Cloud {
    cloud_with(|_| {}).await
}

/// A cloud whose engine's configuration `tweak` changes.
async fn cloud_with(tweak: impl FnOnce(&mut EngineConfig)) -> Cloud {
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
    let mut config = config;
    tweak(&mut config);
    let engine = Engine::start(store.store.clone(), sim.clone(), config).await.unwrap();
    engine.bootstrap(Some(("NIMvolsaga".into(), SECRET.into()))).await.unwrap();
    let ctx = engine.authenticate_secret(SECRET, Actor::default()).await.unwrap();
    Cloud { engine, sim, _store: store, ctx, plan }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Create,
    /// And attached to a running instance in the same operation.
    CreateAttached,
    Attach,
    Detach,
    Resize,
    Delete,
    /// Of a volume attached to a running instance.
    Snapshot,
    /// Of a detached volume, to its snapshot.
    Revert,
    DeleteSnapshot,
    /// A new volume from a snapshot of another one.
    CreateFromSnapshot,
}

impl Kind {
    fn action(self) -> Action {
        match self {
            Kind::Create | Kind::CreateAttached | Kind::CreateFromSnapshot => Action::CreateVolume,
            Kind::Attach => Action::AttachVolume,
            Kind::Detach => Action::DetachVolume,
            Kind::Resize => Action::ResizeVolume,
            Kind::Delete => Action::DeleteVolume,
            Kind::Snapshot => Action::CreateVolumeSnapshot,
            Kind::Revert => Action::RevertVolume,
            Kind::DeleteSnapshot => Action::DeleteVolumeSnapshot,
        }
    }
}

/// What a run ends with, as a user and the host see it.
#[derive(Debug, PartialEq)]
struct Observed {
    op_state: OperationState,
    /// `None`: the volume's record is gone.
    volume_state: Option<VolumeState>,
    attached_in_record: bool,
    size_gb: Option<u64>,
    /// The host's disk: exists, and plugged into an instance.
    host_disk: bool,
    attached_on_host: bool,
    /// The volume's snapshots' states in the records, and how many copies its host keeps.
    snapshot_states: Vec<VolumeSnapshotState>,
    host_snapshots: usize,
    /// Whether the host's disk was reverted to a snapshot.
    reverted_on_host: bool,
}

impl Cloud {
    async fn wait(&self, op: Uuid) -> Operation {
        let op = self.engine.wait_operation(&self.ctx, op, Duration::from_secs(60)).await.unwrap();
        assert!(op.state.is_final(), "operation {} did not end: {op:?}", op.id);
        op
    }

    fn arm(&self, target: Option<(Action, usize, CrashWhen)>, always: bool) {
        *self.plan.lock().unwrap() = Plan { armed: true, target, always, fired: 0, seen: Vec::new() };
    }

    fn disarm(&self) -> Plan {
        std::mem::take(&mut *self.plan.lock().unwrap())
    }

    async fn instance(&self, name: &str) -> Uuid {
        let req = CreateInstance {
            name: name.into(),
            instance_type: "standard.small".into(),
            template: "busybox".into(),
            auto_start: true,
            ..Default::default()
        };
        let op = self.engine.create_instance(&self.ctx, req).await.unwrap().0;
        assert_eq!(self.wait(op.id).await.state, OperationState::Success);
        op.target.id
    }

    async fn volume(&self, name: &str) -> Uuid {
        let req = CreateVolume { name: name.into(), size_gb: 1, ..Default::default() };
        let (op, v) = self.engine.create_volume(&self.ctx, req).await.unwrap();
        assert_eq!(self.wait(op.id).await.state, OperationState::Success);
        v.id
    }

    /// The volume (and instance) a kind starts from; the create makes its own.
    async fn setup(&self, kind: Kind, name: &str) -> (Option<Uuid>, Uuid) {
        let instance = self.instance(&format!("{name}-vm")).await;
        if matches!(kind, Kind::Create | Kind::CreateAttached) {
            return (None, instance);
        }
        let v = self.volume(name).await;
        if matches!(kind, Kind::Detach | Kind::Snapshot) {
            let op = self.engine.attach_volume(&self.ctx, v, instance).await.unwrap();
            assert_eq!(self.wait(op.id).await.state, OperationState::Success);
        }
        if matches!(kind, Kind::Revert | Kind::DeleteSnapshot | Kind::CreateFromSnapshot) {
            let req = CreateVolumeSnapshot { name: format!("{name}-snap"), ..Default::default() };
            let op = self.engine.create_volume_snapshot(&self.ctx, v, req).await.unwrap().0;
            assert_eq!(self.wait(op.id).await.state, OperationState::Success);
        }
        (Some(v), instance)
    }

    async fn run(&self, kind: Kind, volume: Option<Uuid>, instance: Uuid, name: &str) -> (Operation, Uuid) {
        let op = match (kind, volume) {
            (Kind::Create, _) => {
                let req = CreateVolume { name: name.into(), size_gb: 1, ..Default::default() };
                self.engine.create_volume(&self.ctx, req).await.unwrap().0
            }
            (Kind::CreateAttached, _) => {
                let req =
                    CreateVolume { name: name.into(), size_gb: 1, attach_to: Some(instance), ..Default::default() };
                self.engine.create_volume(&self.ctx, req).await.unwrap().0
            }
            (Kind::Attach, Some(v)) => self.engine.attach_volume(&self.ctx, v, instance).await.unwrap(),
            (Kind::Detach, Some(v)) => self.engine.detach_volume(&self.ctx, v).await.unwrap(),
            (Kind::Resize, Some(v)) => self.engine.resize_volume(&self.ctx, v, 3).await.unwrap(),
            (Kind::Delete, Some(v)) => self.engine.delete_volume(&self.ctx, v).await.unwrap(),
            (Kind::Snapshot, Some(v)) => {
                let req = CreateVolumeSnapshot { name: format!("{name}-snap"), ..Default::default() };
                self.engine.create_volume_snapshot(&self.ctx, v, req).await.unwrap().0
            }
            (Kind::Revert, Some(v)) => {
                self.engine.revert_volume(&self.ctx, v, self.snapshot_of(v).await).await.unwrap()
            }
            (Kind::CreateFromSnapshot, Some(v)) => {
                let from_snapshot = Some(self.snapshot_of(v).await);
                let req =
                    CreateVolume { name: format!("{name}-copy"), size_gb: 2, from_snapshot, ..Default::default() };
                self.engine.create_volume(&self.ctx, req).await.unwrap().0
            }
            (Kind::DeleteSnapshot, Some(v)) => {
                self.engine.delete_volume_snapshot(&self.ctx, self.snapshot_of(v).await).await.unwrap()
            }
            _ => unreachable!(),
        };
        let target = op.target.id;
        (self.wait(op.id).await, target)
    }

    async fn snapshot_of(&self, volume: Uuid) -> Uuid {
        self.engine.list_volume_snapshots(&self.ctx, Some(volume)).await.unwrap()[0].id
    }

    async fn observe(&self, op: &Operation, volume: Uuid) -> Observed {
        let record = self.engine.volume(&self.ctx, volume).await.ok();
        let disk = self.sim.volume(volume);
        let mut snapshot_states: Vec<_> =
            self.engine.list_volume_snapshots(&self.ctx, Some(volume)).await.unwrap().iter().map(|s| s.state).collect();
        snapshot_states.sort_by_key(|s| s.as_str());
        Observed {
            op_state: op.state,
            volume_state: record.as_ref().map(|v| v.state),
            attached_in_record: record.as_ref().is_some_and(|v| v.instance_id.is_some()),
            size_gb: record.as_ref().map(|v| v.size_gb),
            host_disk: disk.is_some(),
            attached_on_host: disk.as_ref().is_some_and(|d| d.attached_to.is_some()),
            snapshot_states,
            host_snapshots: disk.as_ref().map_or(0, |d| d.snapshots.len()),
            reverted_on_host: disk.is_some_and(|d| d.reverted_to.is_some()),
        }
    }

    /// No lock held by an ended operation, no disk without a record, no record of an attachment the host
    /// does not have.
    async fn assert_nothing_leaked(&self, case: &str, instance: Uuid) {
        let i = self.engine.instance(&self.ctx, instance).await.unwrap();
        assert_eq!(i.lock_operation_id, None, "{case}: the instance stays locked");
        let volumes = self.engine.list_volumes(&self.ctx).await.unwrap();
        for v in &volumes {
            assert_eq!(v.lock_operation_id, None, "{case}: volume {} stays locked", v.id);
            if v.state != VolumeState::Error {
                let disk = self.sim.volume(v.id);
                assert!(disk.is_some(), "{case}: volume {} has no disk", v.id);
                assert_eq!(disk.unwrap().attached_to, v.instance_id, "{case}: host and record disagree on {}", v.id);
            }
        }
        for id in self.sim.volumes().await.unwrap() {
            assert!(volumes.iter().any(|v| v.id == id), "{case}: disk {id} belongs to no volume");
        }
        // No copy without a snapshot record, no ready snapshot without its copy.
        let snapshots = self.engine.list_volume_snapshots(&self.ctx, None).await.unwrap();
        for v in &volumes {
            for id in self.sim.volume_snapshots(v.id).await.unwrap() {
                assert!(snapshots.iter().any(|s| s.id == id), "{case}: copy {id} belongs to no snapshot");
            }
        }
        for s in &snapshots {
            assert!(
                !matches!(s.state, VolumeSnapshotState::Creating | VolumeSnapshotState::Deleting),
                "{case}: snapshot {} left {}",
                s.id,
                s.state
            );
            if s.state == VolumeSnapshotState::Ready {
                let copies = self.sim.volume_snapshots(s.volume_id).await.unwrap();
                assert!(copies.contains(&s.id), "{case}: snapshot {} has no copy on the host", s.id);
            }
        }
    }
}

const KINDS: [Kind; 10] = [
    Kind::Create,
    Kind::CreateAttached,
    Kind::Attach,
    Kind::Detach,
    Kind::Resize,
    Kind::Delete,
    Kind::Snapshot,
    Kind::Revert,
    Kind::DeleteSnapshot,
    Kind::CreateFromSnapshot,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_volume_kind_converges_after_a_crash_before_and_after_each_step() {
    let c = cloud().await;
    for kind in KINDS {
        let name = format!("{kind:?}-ref").to_lowercase();
        let (volume, instance) = c.setup(kind, &name).await;
        c.arm(None, false);
        let (op, target) = c.run(kind, volume, instance, &name).await;
        let plan = c.disarm();
        let expected = c.observe(&op, target).await;
        assert_eq!(expected.op_state, OperationState::Success, "{kind:?}: the uninterrupted run failed: {op:?}");
        let points: Vec<_> = plan.seen.iter().filter(|p| p.operation == op.id).map(|p| (p.step, p.when)).collect();
        assert!(points.len() >= 3, "{kind:?}: before and after its step, and before the outcome: {points:?}");
        for (n, &(step, when)) in points.iter().enumerate() {
            let case = format!("{kind:?} crashed {when:?} step {step}");
            let name = format!("{kind:?}-c{n}").to_lowercase();
            let (volume, instance) = c.setup(kind, &name).await;
            c.arm(Some((kind.action(), step, when)), false);
            let (op, target) = c.run(kind, volume, instance, &name).await;
            let plan = c.disarm();
            assert_eq!(plan.fired, 1, "{case}: the crash point was not reached");
            assert!(op.attempts >= 2, "{case}: the operation was not resumed ({} attempts)", op.attempts);
            assert_eq!(c.observe(&op, target).await, expected, "{case}: converged elsewhere");
            c.assert_nothing_leaked(&case, instance).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_operation_killed_every_time_is_given_up_and_leaves_nothing_behind() {
    let c = cloud().await;
    for kind in KINDS {
        // Before its step (nothing begun), and before its outcome (everything done on the host).
        for (n, (step, when)) in [(0, CrashWhen::Before), (1, CrashWhen::Before)].into_iter().enumerate() {
            let case = format!("{kind:?} killed every time {when:?} step {step}");
            let name = format!("{kind:?}-k{n}").to_lowercase();
            let (volume, instance) = c.setup(kind, &name).await;
            c.arm(Some((kind.action(), step, when)), true);
            let (op, target) = c.run(kind, volume, instance, &name).await;
            c.disarm();
            assert_eq!((op.state, op.reason), (OperationState::Failure, Some(Reason::Interrupted)), "{case}: {op:?}");
            let got = c.observe(&op, target).await;
            assert!(
                !matches!(
                    got.volume_state,
                    Some(
                        VolumeState::Creating | VolumeState::Attaching | VolumeState::Detaching | VolumeState::Deleting
                    )
                ),
                "{case}: left {:?}",
                got.volume_state
            );
            c.assert_nothing_leaked(&case, instance).await;
        }
    }
}

/// An instance created with an existing volume and a new one: what a user and the host see at the end.
#[derive(Debug, PartialEq)]
struct CreatedWith {
    op_state: OperationState,
    /// The existing volume's state, whether its record and the host attach it to the instance.
    existing: (Option<VolumeState>, bool, bool),
    /// The new volume's state (`None`: no record), and whether the host has its disk.
    new: (Option<VolumeState>, bool),
}

impl Cloud {
    async fn create_with_volumes(&self, name: &str) -> (Operation, Uuid, Uuid) {
        let existing = self.volume(&format!("{name}-old")).await;
        let req = CreateInstance {
            name: name.into(),
            instance_type: "standard.small".into(),
            template: "busybox".into(),
            auto_start: true,
            volumes: vec![
                InstanceVolume::Existing(existing),
                InstanceVolume::New { name: format!("{name}-new"), size_gb: 2, labels: Default::default() },
            ],
            ..Default::default()
        };
        let op = self.engine.create_instance(&self.ctx, req).await.unwrap().0;
        (self.wait(op.id).await, op.target.id, existing)
    }

    async fn created_with(&self, op: &Operation, instance: Uuid, existing: Uuid, name: &str) -> CreatedWith {
        let volumes = self.engine.list_volumes(&self.ctx).await.unwrap();
        let old = volumes.iter().find(|v| v.id == existing);
        let new = volumes.iter().find(|v| v.name == format!("{name}-new"));
        let old_disk = self.sim.volume(existing);
        CreatedWith {
            op_state: op.state,
            existing: (
                old.map(|v| v.state),
                old.is_some_and(|v| v.instance_id == Some(instance)),
                old_disk.is_some_and(|d| d.attached_to == Some(instance)),
            ),
            new: (new.map(|v| v.state), new.is_some_and(|v| self.sim.volume(v.id).is_some())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_created_with_volumes_converges_after_a_crash_before_and_after_each_step() {
    let c = cloud().await;
    c.arm(None, false);
    let (op, instance, existing) = c.create_with_volumes("cv-ref").await;
    let plan = c.disarm();
    let expected = c.created_with(&op, instance, existing, "cv-ref").await;
    assert_eq!(
        expected,
        CreatedWith {
            op_state: OperationState::Success,
            existing: (Some(VolumeState::InUse), true, true),
            new: (Some(VolumeState::InUse), true),
        }
    );
    let steps = nimbus_engine::sagas::step_names(&op).unwrap();
    assert_eq!(steps, ["provision", "make-volumes", "attach-volumes", "boot"]);
    // The running guest was booted with both volumes.
    let i = c.engine.instance(&c.ctx, instance).await.unwrap();
    assert_eq!(i.state, nimbus_core::instance::InstanceState::Running);
    let points: Vec<_> = plan.seen.iter().filter(|p| p.operation == op.id).map(|p| (p.step, p.when)).collect();
    assert_eq!(points.len(), 9, "before and after each of 4 steps, and before the outcome: {points:?}");
    for (n, &(step, when)) in points.iter().enumerate() {
        let case = format!("create with volumes crashed {when:?} step {step}");
        let name = format!("cv-c{n}");
        c.arm(Some((Action::Create, step, when)), false);
        let (op, instance, existing) = c.create_with_volumes(&name).await;
        let plan = c.disarm();
        assert_eq!(plan.fired, 1, "{case}: the crash point was not reached");
        assert!(op.attempts >= 2, "{case}: the operation was not resumed ({} attempts)", op.attempts);
        assert_eq!(c.created_with(&op, instance, existing, &name).await, expected, "{case}: converged elsewhere");
        c.assert_nothing_leaked(&case, instance).await;
    }
    // Killed every time: given up, the existing volume is back `available` and the new one is gone.
    for (step, when) in [(1, CrashWhen::Before), (2, CrashWhen::After), (4, CrashWhen::Before)] {
        let case = format!("create with volumes killed every time {when:?} step {step}");
        let name = format!("cv-k{step}");
        c.arm(Some((Action::Create, step, when)), true);
        let (op, instance, existing) = c.create_with_volumes(&name).await;
        c.disarm();
        assert_eq!((op.state, op.reason), (OperationState::Failure, Some(Reason::Interrupted)), "{case}: {op:?}");
        assert_eq!(
            c.created_with(&op, instance, existing, &name).await,
            CreatedWith {
                op_state: OperationState::Failure,
                existing: (Some(VolumeState::Available), false, false),
                new: (None, false),
            },
            "{case}"
        );
        c.assert_nothing_leaked(&case, instance).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_deleted_with_one_of_its_volumes_converges_after_a_crash_before_and_after_each_step() {
    let c = cloud().await;
    // Each case: an instance with two volumes, deleted with the first; the second survives, detached.
    let setup = |name: String| {
        let c = &c;
        async move {
            let instance = c.instance(&format!("{name}-vm")).await;
            let (gone, kept) = (c.volume(&format!("{name}-gone")).await, c.volume(&format!("{name}-kept")).await);
            for v in [gone, kept] {
                let op = c.engine.attach_volume(&c.ctx, v, instance).await.unwrap();
                assert_eq!(c.wait(op.id).await.state, OperationState::Success);
            }
            (instance, gone, kept)
        }
    };
    let delete = |instance: Uuid, gone: Uuid| {
        let c = &c;
        async move {
            let req = nimbus_engine::ActionRequest::DeleteWith { volumes: vec![gone], reserved_addresses: vec![] };
            let op = c.engine.act(&c.ctx, instance, req).await.unwrap();
            c.wait(op.id).await
        }
    };
    // What is left: the deleted volume's record and disk, the kept one's state, attachment and disk.
    let left = |gone: Uuid, kept: Uuid| {
        let c = &c;
        async move {
            let g = c.engine.volume(&c.ctx, gone).await.ok();
            let k = c.engine.volume(&c.ctx, kept).await.unwrap();
            let kd = c.sim.volume(kept);
            assert_eq!(k.lock_operation_id, None);
            (
                g.map(|v| (v.state, v.lock_operation_id.is_some())),
                c.sim.volume(gone).is_some(),
                (k.state, k.instance_id.is_some(), kd.is_some(), kd.and_then(|d| d.attached_to).is_some()),
            )
        }
    };
    let (instance, gone, kept) = setup("dv-ref".into()).await;
    c.arm(None, false);
    let op = delete(instance, gone).await;
    let plan = c.disarm();
    assert_eq!(op.state, OperationState::Success, "{op:?}");
    assert_eq!(nimbus_engine::sagas::step_names(&op).unwrap(), ["destroy", "remove-volumes"]);
    let expected = (None, false, (VolumeState::Available, false, true, false));
    assert_eq!(left(gone, kept).await, expected);
    let points: Vec<_> = plan.seen.iter().filter(|p| p.operation == op.id).map(|p| (p.step, p.when)).collect();
    assert_eq!(points.len(), 5, "{points:?}");
    for (n, &(step, when)) in points.iter().enumerate() {
        let case = format!("delete with volumes crashed {when:?} step {step}");
        let (instance, gone, kept) = setup(format!("dv-c{n}")).await;
        c.arm(Some((Action::Delete, step, when)), false);
        let op = delete(instance, gone).await;
        let plan = c.disarm();
        assert_eq!(plan.fired, 1, "{case}: the crash point was not reached");
        assert_eq!(op.state, OperationState::Success, "{case}: {op:?}");
        assert_eq!(left(gone, kept).await, expected, "{case}: converged elsewhere");
        assert!(c.engine.instance(&c.ctx, instance).await.is_err(), "{case}: the instance is still there");
    }
    // Killed every time before its destroy: given up with nothing done, both volumes still attached.
    let (instance, gone, kept) = setup("dv-k".into()).await;
    c.arm(Some((Action::Delete, 0, CrashWhen::Before)), true);
    let op = delete(instance, gone).await;
    c.disarm();
    assert_eq!((op.state, op.reason), (OperationState::Failure, Some(Reason::Interrupted)), "{op:?}");
    let g = c.engine.volume(&c.ctx, gone).await.unwrap();
    assert_eq!((g.state, g.instance_id, g.lock_operation_id), (VolumeState::InUse, Some(instance), None));
    let k = c.engine.volume(&c.ctx, kept).await.unwrap();
    assert_eq!((k.state, k.instance_id), (VolumeState::InUse, Some(instance)));
    c.assert_nothing_leaked("delete with volumes killed every time", instance).await;
}

impl Cloud {
    async fn create_booting_from(&self, name: &str, boot: BootVolumeRequest, template: &str) -> (Operation, Uuid) {
        let req = CreateInstance {
            name: name.into(),
            instance_type: "standard.small".into(),
            template: template.into(),
            auto_start: true,
            boot_volume: Some(boot),
            ..Default::default()
        };
        let op = self.engine.create_instance(&self.ctx, req).await.unwrap().0;
        (self.wait(op.id).await, op.target.id)
    }

    async fn delete_instance(&self, id: Uuid) -> Operation {
        let op = self.engine.act(&self.ctx, id, nimbus_engine::ActionRequest::Delete).await.unwrap();
        self.wait(op.id).await
    }
}

fn new_boot_volume(delete_on_termination: bool) -> BootVolumeRequest {
    BootVolumeRequest { existing: None, name: None, delete_on_termination }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_volume_outlives_its_instance_and_boots_the_next_one() {
    let c = cloud().await;
    let (op, first) = c.create_booting_from("first", new_boot_volume(false), "busybox").await;
    assert_eq!(op.state, OperationState::Success, "{op:?}");
    let i = c.engine.instance(&c.ctx, first).await.unwrap();
    let boot = i.boot_volume.expect("it boots from a volume").id;
    let v = c.engine.volume(&c.ctx, boot).await.unwrap();
    assert_eq!(
        (v.name.as_str(), v.state, v.boot, v.instance_id),
        ("first-boot", VolumeState::InUse, true, Some(first))
    );
    assert_eq!((v.template_id, v.size_gb), (Some(i.template_id), i.disk_size_gb));
    assert_eq!(c.sim.volume(boot).unwrap().attached_to, Some(first), "the host's disk is the instance's root disk");

    // It stays with its instance: no detach, no resize of its own; the instance's resize-disk grows it.
    let e = c.engine.detach_volume(&c.ctx, boot).await.unwrap_err().to_string();
    assert!(e.contains("boot disk of instance"), "{e}");
    assert!(c.engine.resize_volume(&c.ctx, boot, 50).await.is_err());
    let stop = c.engine.act(&c.ctx, first, nimbus_engine::ActionRequest::Stop).await.unwrap();
    c.wait(stop.id).await;
    let grow = nimbus_engine::ActionRequest::ResizeDisk { disk_size_gb: i.disk_size_gb + 5 };
    let op = c.engine.act(&c.ctx, first, grow).await.unwrap();
    assert_eq!(c.wait(op.id).await.state, OperationState::Success);
    assert_eq!(c.engine.volume(&c.ctx, boot).await.unwrap().size_gb, i.disk_size_gb + 5);

    // Deleted, the instance leaves its boot volume available, still bootable.
    assert_eq!(c.delete_instance(first).await.state, OperationState::Success);
    let v = c.engine.volume(&c.ctx, boot).await.unwrap();
    assert_eq!((v.state, v.boot, v.instance_id), (VolumeState::Available, false, None));
    assert!(c.sim.volume(boot).is_some_and(|d| d.attached_to.is_none()), "the disk is kept, unplugged");

    // The next instance boots from it, with its template and size, and takes it with it when deleted.
    let existing = BootVolumeRequest { existing: Some(boot), name: None, delete_on_termination: true };
    let (op, second) = c.create_booting_from("second", existing.clone(), "").await;
    assert_eq!(op.state, OperationState::Success, "{op:?}");
    let j = c.engine.instance(&c.ctx, second).await.unwrap();
    assert_eq!((j.template.as_str(), j.disk_size_gb), ("busybox", i.disk_size_gb + 5));
    assert_eq!(c.engine.volume(&c.ctx, boot).await.unwrap().instance_id, Some(second));
    // No two instances boot from one volume; a data volume boots nothing.
    let req = CreateInstance {
        name: "third".into(),
        instance_type: "standard.small".into(),
        boot_volume: Some(existing.clone()),
        ..Default::default()
    };
    assert!(c.engine.create_instance(&c.ctx, req).await.is_err(), "the volume is in use");
    let data = c.volume("data").await;
    let req = CreateInstance {
        name: "fourth".into(),
        instance_type: "standard.small".into(),
        boot_volume: Some(BootVolumeRequest { existing: Some(data), ..existing }),
        ..Default::default()
    };
    let e = c.engine.create_instance(&c.ctx, req).await.unwrap_err().to_string();
    assert!(e.contains("nothing to boot"), "{e}");
    assert_eq!(c.delete_instance(second).await.state, OperationState::Success);
    assert!(c.engine.volume(&c.ctx, boot).await.is_err(), "deleted with its instance");
    assert!(c.sim.volume(boot).is_none(), "and its disk with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_booting_from_a_new_volume_converges_after_a_crash_and_leaves_nothing_when_given_up() {
    let c = cloud().await;
    let observe = |op: Operation, instance: Uuid| {
        let c = &c;
        async move {
            let i = c.engine.instance(&c.ctx, instance).await.unwrap();
            let boot = i.boot_volume.unwrap().id;
            let v = c.engine.volume(&c.ctx, boot).await.ok();
            (op.state, v.map(|v| (v.state, v.boot, v.instance_id == Some(instance))), c.sim.volume(boot).is_some())
        }
    };
    c.arm(None, false);
    let (op, instance) = c.create_booting_from("bv-ref", new_boot_volume(true), "busybox").await;
    let plan = c.disarm();
    let expected = observe(op.clone(), instance).await;
    assert_eq!(expected, (OperationState::Success, Some((VolumeState::InUse, true, true)), true));
    assert_eq!(nimbus_engine::sagas::step_names(&op).unwrap(), ["provision", "boot"]);
    let points: Vec<_> = plan.seen.iter().filter(|p| p.operation == op.id).map(|p| (p.step, p.when)).collect();
    assert_eq!(points.len(), 5, "before and after each of 2 steps, and before the outcome: {points:?}");
    for (n, &(step, when)) in points.iter().enumerate() {
        let case = format!("boot volume create crashed {when:?} step {step}");
        c.arm(Some((Action::Create, step, when)), false);
        let (op, instance) = c.create_booting_from(&format!("bv-c{n}"), new_boot_volume(true), "busybox").await;
        assert_eq!(c.disarm().fired, 1, "{case}: the crash point was not reached");
        assert_eq!(observe(op, instance).await, expected, "{case}");
        c.assert_nothing_leaked(&case, instance).await;
    }
    // Killed every time at provision (which makes the disk): given up, no volume record and no disk.
    for when in [CrashWhen::Before, CrashWhen::After] {
        let case = format!("boot volume create killed every time {when:?} provision");
        c.arm(Some((Action::Create, 1, when)), true);
        let (op, instance) = c.create_booting_from(&format!("bv-k{when:?}"), new_boot_volume(true), "busybox").await;
        c.disarm();
        assert_eq!(observe(op, instance).await, (OperationState::Failure, None, false), "{case}");
        c.assert_nothing_leaked(&case, instance).await;
        // Its owner deletes the failed instance, whose boot volume is gone already.
        assert_eq!(c.delete_instance(instance).await.state, OperationState::Success, "{case}");
    }
}

/// A second simulated host, "far", served in this process the way an agent serves one: registered, kept
/// alive, and answering the calls the control plane queues for it with its own sim driver.
async fn far_host(c: &Cloud) -> (Arc<SimDriver>, tokio::task::JoinHandle<()>) {
    use nimbus_core::host::Capacity;
    let sim = Arc::new(SimDriver::new(SimConfig::default()));
    let reg = nimbus_engine::AgentRegistration {
        zone: "local".into(),
        capacity: Capacity { vcpus: 64, memory_mib: 1 << 20, disk_gb: 1 << 20, gpus: Default::default() },
        accelerator: "none".into(),
        driver: "sim".into(),
        underlay_address: None,
        tpm: false,
        agent_version: "test".into(),
        templates: Vec::new(),
    };
    c.engine.register_host("far", reg).await.unwrap();
    let (engine, driver) = (c.engine.clone(), sim.clone());
    let agent = tokio::spawn(async move {
        loop {
            let _ = engine.host_heartbeat("far", None).await;
            let Ok(work) = engine.host_work("far", Duration::from_millis(200)).await else { continue };
            for call in work.calls {
                let reply = nimbus_driver::call::dispatch(driver.as_ref(), call.call).await;
                let _ = engine.host_reply("far", call.id, reply).await;
            }
        }
    });
    (sim, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_moving_to_another_host_converges_after_a_crash_and_leaves_no_copy_when_given_up() {
    let c = cloud().await;
    let (far, agent) = far_host(&c).await;
    // An instance on each host (placement spreads them).
    let mut on = std::collections::BTreeMap::new();
    for n in 0..6 {
        let id = c.instance(&format!("vm{n}")).await;
        let host = c.engine.instance(&c.ctx, id).await.unwrap().host.unwrap();
        on.entry(host).or_insert(id);
    }
    assert_eq!(on.len(), 2, "an instance on each host: {on:?}");
    let sim_of = |host: &str| if host == "far" { far.clone() } else { c.sim.clone() };
    let volume = c.volume("traveller").await;
    // Attached to the instance of the host that does not keep it: it moves there, whatever crashes.
    let attach_elsewhere = |armed: Option<(usize, CrashWhen, bool)>| {
        let (c, on, sim_of) = (&c, &on, &sim_of);
        async move {
            let from = c.engine.volume(&c.ctx, volume).await.unwrap().host.unwrap();
            let (to, instance) = on.iter().find(|(h, _)| **h != from).map(|(h, i)| (h.clone(), *i)).unwrap();
            if let Some((step, when, always)) = armed {
                c.arm(Some((Action::AttachVolume, step, when)), always);
            }
            let op = c.engine.attach_volume(&c.ctx, volume, instance).await.unwrap();
            let op = c.wait(op.id).await;
            let plan = c.disarm();
            let v = c.engine.volume(&c.ctx, volume).await.unwrap();
            let (src, dst) = (sim_of(&from).volume(volume), sim_of(&to).volume(volume));
            (op, plan, v, from, to, src, dst, instance)
        }
    };
    let (op, _, v, _, to, src, dst, instance) = attach_elsewhere(None).await;
    assert_eq!(op.state, OperationState::Success, "{op:?}");
    assert_eq!(nimbus_engine::sagas::step_names(&op).unwrap(), ["move", "plug", "release-source"]);
    assert_eq!((v.state, v.host.as_deref(), v.instance_id), (VolumeState::InUse, Some(to.as_str()), Some(instance)));
    assert!(src.is_none() && dst.is_some_and(|d| d.attached_to == Some(instance)), "moved, plugged, released");
    let detach = || {
        let c = &c;
        async move {
            let op = c.engine.detach_volume(&c.ctx, volume).await.unwrap();
            assert_eq!(c.wait(op.id).await.state, OperationState::Success);
        }
    };
    detach().await;

    // Killed once before or after each step: resumed, it ends as the run above did.
    for step in 0..3 {
        for when in [CrashWhen::Before, CrashWhen::After] {
            let case = format!("a move crashed {when:?} step {step}");
            let (op, plan, v, _, to, src, dst, instance) = attach_elsewhere(Some((step, when, false))).await;
            assert_eq!(plan.fired, 1, "{case}: the crash point was not reached");
            assert_eq!(op.state, OperationState::Success, "{case}: {op:?}");
            assert_eq!((v.host.as_deref(), v.lock_operation_id), (Some(to.as_str()), None), "{case}");
            assert!(src.is_none(), "{case}: the old host keeps a copy");
            assert!(dst.is_some_and(|d| d.attached_to == Some(instance)), "{case}: not plugged where it went");
            detach().await;
        }
    }
    // Killed every time right after the copy: given up, the volume stays where it was and the copy goes.
    let (op, _, v, from, to, src, dst, _) = attach_elsewhere(Some((0, CrashWhen::After, true))).await;
    assert_eq!((op.state, op.reason), (OperationState::Failure, Some(Reason::Interrupted)), "{op:?}");
    assert_eq!((v.state, v.host.as_deref(), v.instance_id), (VolumeState::Available, Some(from.as_str()), None));
    assert!(src.is_some(), "the volume is still on its host");
    assert!(dst.is_none(), "host {to} keeps a copy of a move that was given up");
    agent.abort();
}

/// Evacuating a lost host recreates elsewhere only the instances whose disks are not on it: one booting
/// from a volume kept by the lost host is left where it is, saying why, and `stop` still applies to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_booting_from_a_volume_of_a_lost_host_is_not_recreated_elsewhere() {
    let c = cloud_with(|config| {
        config.host_lease = Duration::from_millis(800);
        config.heartbeat_every = Duration::from_millis(100);
    })
    .await;
    let (_far, agent) = far_host(&c).await;
    // Instances on both hosts, with and without a boot volume (placement spreads them).
    let mut plain_on_far = None;
    let mut booting_on_far = None;
    for n in 0..8 {
        let boot_volume =
            (n % 2 == 1).then_some(BootVolumeRequest { existing: None, name: None, delete_on_termination: false });
        let req = CreateInstance {
            name: format!("vm{n}"),
            instance_type: "standard.small".into(),
            template: "busybox".into(),
            auto_start: true,
            boot_volume: boot_volume.clone(),
            ..Default::default()
        };
        let op = c.engine.create_instance(&c.ctx, req).await.unwrap().0;
        assert_eq!(c.wait(op.id).await.state, OperationState::Success);
        let i = c.engine.instance(&c.ctx, op.target.id).await.unwrap();
        if i.host.as_deref() == Some("far") {
            match boot_volume {
                Some(_) => booting_on_far = booting_on_far.or(Some(i.id)),
                None => plain_on_far = plain_on_far.or(Some(i.id)),
            }
        }
    }
    let (Some(plain), Some(booting)) = (plain_on_far, booting_on_far) else {
        panic!("placement put no instance of each kind on the far host");
    };
    // The far host's agent dies; once its lease runs out, the host is lost.
    agent.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ev = loop {
        match c.engine.evacuate_host(&c.ctx, "far", EvacuationMode::Recreate, &Default::default()).await {
            Ok(ev) => break ev,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "the far host never became unreachable: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let left: Vec<_> = ev.left.iter().filter(|(id, _)| *id == booting).collect();
    assert_eq!(left.len(), 1, "{ev:?}");
    assert!(left[0].1.contains("boots from volume") && left[0].1.contains("far"), "{}", left[0].1);
    assert!(ev.operations.iter().any(|op| op.target.id == plain), "the plain instance is recreated: {ev:?}");
    assert!(ev.operations.iter().all(|op| op.target.id != booting), "{ev:?}");
    for op in &ev.operations {
        assert_eq!(c.wait(op.id).await.state, OperationState::Success, "{op:?}");
    }
    assert_eq!(c.engine.instance(&c.ctx, booting).await.unwrap().host.as_deref(), Some("far"), "left where it is");
    // `stop` leaves it where it is, stopped, for the host to come back.
    let choices = [(booting, EvacuationMode::Stop)].into_iter().collect();
    let ev = c.engine.evacuate_host(&c.ctx, "far", EvacuationMode::Recreate, &choices).await.unwrap();
    assert!(ev.operations.iter().any(|op| op.target.id == booting), "{ev:?}");
    for op in &ev.operations {
        assert_eq!(c.wait(op.id).await.state, OperationState::Success, "{op:?}");
    }
    assert_eq!(c.engine.instance(&c.ctx, booting).await.unwrap().state, InstanceState::Stopped);
}
