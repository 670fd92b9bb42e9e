//! The conformance suite every store backend passes. Each case takes a fresh, empty store.
//!
//! A backend runs it with `nimbus_store::conformance_tests!(async { Some(make_a_store().await) });` inside
//! a test module, which expands to one `#[tokio::test]` per case. The expression yields an `Option` of
//! something that dereferences to an `Arc<dyn Store>` (a [`crate::testing::TestStore`]); `None` skips the
//! case (a backend that is not configured here). The cases that race many tasks against each other take the
//! `Arc` itself.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::event::Event;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::{Actor, Operation, OperationState, Target};
use nimbus_core::state_machine::Action;
use nimbus_core::tenancy::{ApiKey, Organization, Project, Quota, Role};
use uuid::Uuid;

use crate::*;

async fn project(store: &dyn Store, quota: Quota) -> Project {
    let org = Organization { id: Uuid::new_v4(), name: "org".into(), created_at: nimbus_core::now() };
    store.put_organization(&org).await.unwrap();
    let p = Project {
        id: Uuid::new_v4(),
        numeric_id: 0,
        organization_id: org.id,
        name: "p".into(),
        quota,
        created_at: nimbus_core::now(),
    };
    store.create_project(&p).await.unwrap()
}

pub(crate) fn instance(project_id: Uuid, name: &str, vcpus: u32) -> Instance {
    let now = nimbus_core::now();
    let id = nimbus_core::new_id();
    Instance {
        id,
        project_id,
        name: name.into(),
        hostname: name.into(),
        description: String::new(),
        zone: "local".into(),
        instance_type: "standard.small".into(),
        template_id: Uuid::new_v4(),
        template: "busybox".into(),
        state: InstanceState::Creating,
        state_reason: None,
        last_known_state: None,
        labels: Default::default(),
        system_labels: Default::default(),
        vcpus,
        memory_mib: 1024,
        gpus: 0,
        gpu_model: None,
        disk_size_gb: 10,
        user_data: None,
        ssh_keys: vec![],
        security_groups: vec![],
        anti_affinity_groups: vec![],
        private_networks: vec![],
        ip_addresses: vec![],
        mac_address: Instance::mac_for(id),
        protected: false,
        tpm_enabled: false,
        secure_boot: false,
        rescue: false,
        price_hourly: None,
        expected_shutdown_at: None,
        host: None,
        lock_operation_id: None,
        create_operation_id: None,
        generation: 1,
        numeric_id: 0,
        extensions: Default::default(),
        boot_volume: None,
        created_at: now,
        updated_at: now,
    }
}

fn insert(i: &Instance) -> WriteSet {
    let mut set = WriteSet::new();
    set.push(Write::PutInstance { instance: i.clone(), expected_generation: None });
    set
}

fn operation(project_id: Uuid) -> Operation {
    Operation::new(project_id, Action::Start, Target::instance(Uuid::new_v4()), None, Actor::system())
}

async fn insert_operation(store: &dyn Store, op: &Operation) {
    let mut set = WriteSet::new();
    set.push(Write::InsertOperation(op.clone()));
    store.apply(set).await.unwrap();
}

/// `op` in `state`, written by the worker `owner`.
fn update_operation(op: &Operation, state: OperationState, owner: &str) -> WriteSet {
    let mut set = WriteSet::new();
    set.push(Write::UpdateOperation { operation: Operation { state, ..op.clone() }, lease_owner: owner.into() });
    set
}

fn claim_address(network: &str, host: u32, owner: Uuid) -> WriteSet {
    let mut set = WriteSet::new();
    set.push(Write::ClaimAddress { network: network.into(), host, owner });
    set
}

/// A lease no test outlives.
const LONG: Duration = Duration::from_secs(600);

fn event(project_id: Uuid, kind: &str) -> Event {
    Event {
        seq: 0,
        project_id,
        kind: kind.into(),
        target_id: Uuid::new_v4(),
        actor: Actor::system(),
        data: serde_json::json!({}),
        time: nimbus_core::now(),
    }
}

pub async fn projects_get_distinct_stable_numeric_ids(store: &dyn Store) {
    let a = project(store, Quota::default()).await;
    let b = project(store, Quota::default()).await;
    assert!(a.numeric_id > 0 && b.numeric_id > 0 && a.numeric_id != b.numeric_id);
    assert_eq!(store.get_project(a.id).await.unwrap().unwrap().numeric_id, a.numeric_id);
    assert_eq!(store.get_project_by_numeric_id(b.numeric_id).await.unwrap().unwrap().id, b.id);
}

pub async fn a_stale_generation_loses_and_writes_nothing(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let mut i = instance(p.id, "a", 1);
    store.apply(insert(&i)).await.unwrap();
    i.name = "b".into();
    i.generation = 2;
    let mut set = WriteSet::new();
    set.push(Write::PutInstance { instance: i.clone(), expected_generation: Some(1) });
    store.apply(set).await.unwrap();
    // A second writer still believing generation 1 must lose.
    let mut stale = i.clone();
    stale.name = "c".into();
    let mut set = WriteSet::new();
    set.push(Write::PutInstance { instance: stale, expected_generation: Some(1) });
    assert!(matches!(store.apply(set).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_instance(i.id).await.unwrap().unwrap().name, "b");
}

pub async fn a_failing_write_rolls_back_the_whole_set(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let a = instance(p.id, "a", 1);
    let b = instance(p.id, "b", 1);
    store.apply(insert(&a)).await.unwrap();
    let mut set = WriteSet::new();
    set.push(Write::PutInstance { instance: b.clone(), expected_generation: None });
    set.push(Write::AppendEvent(event(p.id, "instance.created")));
    set.push(Write::PutInstance { instance: a.clone(), expected_generation: Some(99) });
    assert!(store.apply(set).await.is_err());
    assert!(store.get_instance(b.id).await.unwrap().is_none(), "b must be rolled back");
    assert!(store.events_after(Some(p.id), 0, 10).await.unwrap().is_empty(), "event must be rolled back");
}

/// Sets applied at once (which the store may commit in one transaction) stand or fall alone: the one that
/// loses its compare-and-swap writes nothing, its event included, and every other one is kept with its
/// event, each event numbered once.
pub async fn sets_applied_together_stand_or_fall_alone(store: Arc<dyn Store>) {
    let p = project(&*store, Quota::default()).await;
    let kept = instance(p.id, "kept", 1);
    store.apply(insert(&kept)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let mut loser = None;
    for n in 0..40 {
        let store = store.clone();
        let mut set = WriteSet::new();
        let i = instance(p.id, &format!("i{n}"), 1);
        set.push(Write::PutInstance { instance: i.clone(), expected_generation: None });
        set.push(Write::AppendEvent(Event { target_id: i.id, ..event(p.id, "instance.created") }));
        if n == 20 {
            set.push(Write::PutInstance { instance: kept.clone(), expected_generation: Some(99) });
            loser = Some(i.id);
        }
        tasks.spawn(async move { (i.id, store.apply(set).await) });
    }
    let mut winners = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        let (id, result) = done.unwrap();
        if Some(id) == loser {
            assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
        } else {
            result.unwrap();
            winners.insert(id);
        }
    }
    let loser = loser.unwrap();
    assert!(store.get_instance(loser).await.unwrap().is_none(), "the losing set's instance must not be written");
    for id in &winners {
        assert!(store.get_instance(*id).await.unwrap().is_some());
    }
    let events = store.events_after(Some(p.id), 0, 100).await.unwrap();
    let targets: BTreeSet<Uuid> = events.iter().map(|e| e.target_id).collect();
    assert_eq!(events.len(), 39, "one event per winning set, none of the loser's");
    assert_eq!(targets, winners);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
}

/// Listing by labels reads the label index, which follows every insert, label change and deletion.
pub async fn instances_are_listed_by_label_through_the_index(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let other = project(store, Quota::default()).await;
    let labelled = |project_id, name: &str, labels: &[(&str, &str)]| {
        let mut i = instance(project_id, name, 1);
        i.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        i
    };
    let web = labelled(p.id, "web", &[("role", "web"), ("tier", "1")]);
    let db = labelled(p.id, "db", &[("role", "db")]);
    let bare = labelled(p.id, "bare", &[]);
    let elsewhere = labelled(other.id, "web", &[("role", "web")]);
    for i in [&web, &db, &bare, &elsewhere] {
        store.apply(insert(i)).await.unwrap();
    }
    let names = |labels: Vec<(&str, Option<&str>)>| {
        let q = InstanceQuery {
            project_id: Some(p.id),
            labels: labels.into_iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect(),
            ..Default::default()
        };
        async move { store.list_instances(&q).await.unwrap().into_iter().map(|i| i.name).collect::<Vec<_>>() }
    };
    assert_eq!(names(vec![("role", Some("web"))]).await, ["web"]);
    assert_eq!(names(vec![("role", None)]).await, ["web", "db"]);
    assert_eq!(names(vec![("role", Some("web")), ("tier", Some("2"))]).await, Vec::<String>::new());
    // A label change moves the instance in the index; a state change alone leaves it.
    let mut moved = db.clone();
    moved.labels.insert("role".into(), "web".into());
    moved.generation = 2;
    let mut set = WriteSet::new();
    set.push(Write::PutInstance { instance: moved.clone(), expected_generation: Some(1) });
    store.apply(set).await.unwrap();
    assert_eq!(names(vec![("role", Some("web"))]).await, ["web", "db"]);
    assert_eq!(names(vec![("role", Some("db"))]).await, Vec::<String>::new());
    let mut set = WriteSet::new();
    set.push(Write::DeleteInstance { id: web.id, expected_generation: 1 });
    store.apply(set).await.unwrap();
    assert_eq!(names(vec![("role", None)]).await, ["db"]);
}

/// The reconciler's narrow reads: instances with a scheduled shutdown, and instances on no host.
pub async fn scheduled_and_unplaced_instances_are_read_alone(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let mut due = instance(p.id, "due", 1);
    due.expected_shutdown_at = Some(nimbus_core::now());
    let mut placed = instance(p.id, "placed", 1);
    placed.host = Some("h1".into());
    let plain = instance(p.id, "plain", 1);
    for i in [&due, &placed, &plain] {
        store.apply(insert(i)).await.unwrap();
    }
    let names = |q: InstanceQuery| async move {
        store.list_instances(&q).await.unwrap().into_iter().map(|i| i.name).collect::<Vec<_>>()
    };
    let scheduled = InstanceQuery { project_id: Some(p.id), shutdown_scheduled: true, ..Default::default() };
    assert_eq!(names(scheduled).await, ["due"]);
    let unplaced = InstanceQuery { project_id: Some(p.id), unplaced: true, ..Default::default() };
    assert_eq!(names(unplaced).await, ["due", "plain"]);
}

pub async fn quota_is_enforced_inside_the_transaction(store: &dyn Store) {
    let quota = Quota { instances: 2, vcpus: 3, ..Quota::default() };
    let p = project(store, quota).await;
    store.apply(insert(&instance(p.id, "a", 2))).await.unwrap();
    let over_cpu = instance(p.id, "b", 2);
    let mut set = insert(&over_cpu);
    set.enforce_quota_of = Some(p.id);
    let err = store.apply(set).await.unwrap_err();
    assert!(matches!(&err, StoreError::QuotaExceeded(m) if m.contains("vcpus")), "{err:?}");
    assert!(store.get_instance(over_cpu.id).await.unwrap().is_none());
    let mut set = insert(&instance(p.id, "c", 1));
    set.enforce_quota_of = Some(p.id);
    store.apply(set).await.unwrap();
    assert_eq!(store.usage(p.id).await.unwrap().instances, 2);
}

/// The usage counters the triggers keep agree with what the instances hold after every kind of change:
/// inserts, resizes, a host move, `destroying` (leaves the quota, still holds the host), `destroyed`
/// (leaves both), and deletion.
pub async fn usage_counters_follow_every_instance_change(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let (h1, h2) = (format!("h1-{}", p.id), format!("h2-{}", p.id));
    let host_of = |host: &str| {
        let host = host.to_string();
        async move { store.host_allocations().await.unwrap().remove(&host).unwrap_or_default() }
    };
    let put = |i: &Instance| {
        let mut next = i.clone();
        next.generation += 1;
        let mut set = WriteSet::new();
        set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(i.generation) });
        async move {
            store.apply(set).await.unwrap();
            next
        }
    };
    let mut a = Instance { host: Some(h1.clone()), ..instance(p.id, "a", 2) };
    let mut b = Instance { host: Some(h1.clone()), ..instance(p.id, "b", 1) };
    let unplaced = instance(p.id, "c", 4);
    for i in [&a, &b, &unplaced] {
        store.apply(insert(i)).await.unwrap();
    }
    let usage = store.usage(p.id).await.unwrap();
    assert_eq!((usage.instances, usage.vcpus, usage.memory_mib, usage.disk_gb), (3, 7, 3072, 30));
    let on_h1 = host_of(&h1).await;
    assert_eq!((on_h1.instances, on_h1.vcpus, on_h1.memory_mib), (2, 3, 2048), "the unplaced one takes no host");

    // A resize and a move between hosts.
    a.vcpus = 8;
    a.disk_size_gb = 50;
    a = put(&a).await;
    b.host = Some(h2.clone());
    b = put(&b).await;
    let usage = store.usage(p.id).await.unwrap();
    assert_eq!((usage.instances, usage.vcpus, usage.disk_gb), (3, 13, 70));
    assert_eq!((host_of(&h1).await.instances, host_of(&h1).await.vcpus, host_of(&h1).await.disk_gb), (1, 8, 50));
    assert_eq!((host_of(&h2).await.instances, host_of(&h2).await.vcpus), (1, 1));

    // Being destroyed frees the quota at once; the host's room only once it is destroyed.
    a.state = InstanceState::Destroying;
    a = put(&a).await;
    assert_eq!(store.usage(p.id).await.unwrap().vcpus, 5);
    assert_eq!(host_of(&h1).await.vcpus, 8, "a destroying instance still holds its host");
    a.state = InstanceState::Destroyed;
    a = put(&a).await;
    assert_eq!(host_of(&h1).await.instances, 0);
    assert!(!store.host_allocations().await.unwrap().contains_key(&h1), "an empty host carries nothing");

    // Deleting rows: a destroyed one changes nothing, a live one gives back what it held.
    for i in [&a, &b] {
        let mut set = WriteSet::new();
        set.push(Write::DeleteInstance { id: i.id, expected_generation: i.generation });
        store.apply(set).await.unwrap();
    }
    let usage = store.usage(p.id).await.unwrap();
    assert_eq!((usage.instances, usage.vcpus, usage.memory_mib, usage.disk_gb), (1, 4, 1024, 10));
    assert_eq!(host_of(&h2).await.instances, 0);
}

pub async fn instances_are_numbered_once_and_never_reuse_a_number(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let (a, b) = (instance(p.id, "a", 1), instance(p.id, "b", 1));
    store.apply(insert(&a)).await.unwrap();
    store.apply(insert(&b)).await.unwrap();
    let (na, nb) = (
        store.get_instance(a.id).await.unwrap().unwrap().numeric_id,
        store.get_instance(b.id).await.unwrap().unwrap().numeric_id,
    );
    assert!(na > 0 && nb > 0 && na != nb, "{na} {nb}");
    // An update keeps the number it was read with.
    let mut renamed = store.get_instance(a.id).await.unwrap().unwrap();
    renamed.name = "a2".into();
    renamed.generation = 2;
    let mut set = WriteSet::new();
    set.push(Write::PutInstance { instance: renamed, expected_generation: Some(1) });
    store.apply(set).await.unwrap();
    assert_eq!(store.get_instance(a.id).await.unwrap().unwrap().numeric_id, na);
    // The newest instance's number is not handed out again once it is deleted.
    let mut set = WriteSet::new();
    set.push(Write::DeleteInstance { id: b.id, expected_generation: 1 });
    store.apply(set).await.unwrap();
    let c = instance(p.id, "c", 1);
    store.apply(insert(&c)).await.unwrap();
    assert!(store.get_instance(c.id).await.unwrap().unwrap().numeric_id > nb);
}

pub async fn instances_page_by_id_within_a_project(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let other = project(store, Quota::default()).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let i = instance(p.id, &format!("i{n}"), 1);
        ids.push(i.id);
        store.apply(insert(&i)).await.unwrap();
    }
    store.apply(insert(&instance(other.id, "x", 1))).await.unwrap();
    let q = InstanceQuery { project_id: Some(p.id), limit: 2, ..Default::default() };
    let first = store.list_instances(&q).await.unwrap();
    assert_eq!(first.iter().map(|i| i.id).collect::<Vec<_>>(), ids[..2]);
    let q2 = InstanceQuery { after: Some(first[1].id), ..q.clone() };
    let second = store.list_instances(&q2).await.unwrap();
    assert_eq!(second.iter().map(|i| i.id).collect::<Vec<_>>(), ids[2..4]);
    // Backwards: the nearest smaller ids first.
    let back = InstanceQuery { before: Some(ids[3]), ..q.clone() };
    assert_eq!(store.list_instances(&back).await.unwrap().iter().map(|i| i.id).collect::<Vec<_>>(), [ids[2], ids[1]]);
    let by_name = InstanceQuery { project_id: Some(p.id), name: Some("i3".into()), ..Default::default() };
    assert_eq!(store.list_instances(&by_name).await.unwrap()[0].id, ids[3]);
    let by_state = InstanceQuery { project_id: Some(p.id), state: Some(InstanceState::Running), ..Default::default() };
    assert!(store.list_instances(&by_state).await.unwrap().is_empty());
}

/// Numbered pages (the providers that page by offset): states, a part of the name, an order with ties in id
/// order, an offset, and the count of all that match whatever the page.
pub async fn instances_page_by_offset_in_any_order_with_a_count(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let mut ids = Vec::new();
    for (n, (name, state)) in [
        ("web-b", InstanceState::Running),
        ("db", InstanceState::Stopped),
        ("web-a", InstanceState::Running),
        ("web-b", InstanceState::Stopped),
        ("gone-web", InstanceState::Destroyed),
    ]
    .into_iter()
    .enumerate()
    {
        let mut i = instance(p.id, name, 1);
        i.state = state;
        // Distinct, increasing ids even within one millisecond.
        assert!(ids.last().is_none_or(|last| *last < i.id), "ids are time-ordered ({n})");
        ids.push(i.id);
        store.apply(insert(&i)).await.unwrap();
    }
    let ids_of = |v: Vec<Instance>| v.iter().map(|i| i.id).collect::<Vec<_>>();
    let all = InstanceQuery { project_id: Some(p.id), ..Default::default() };
    assert_eq!(store.count_instances(&all).await.unwrap(), 4, "destroyed records are not counted unless asked");
    let newest = InstanceQuery { order: InstanceOrder::Newest, ..all.clone() };
    assert_eq!(ids_of(store.list_instances(&newest).await.unwrap()), [ids[3], ids[2], ids[1], ids[0]]);
    let by_name = InstanceQuery { order: InstanceOrder::NameAscending, ..all.clone() };
    assert_eq!(ids_of(store.list_instances(&by_name).await.unwrap()), [ids[1], ids[2], ids[0], ids[3]]);
    let by_name_desc = InstanceQuery { order: InstanceOrder::NameDescending, limit: 2, offset: 1, ..all.clone() };
    assert_eq!(ids_of(store.list_instances(&by_name_desc).await.unwrap()), [ids[3], ids[2]], "ties in id order");
    let by_state = InstanceQuery { order: InstanceOrder::StateDescending, ..all.clone() };
    assert_eq!(ids_of(store.list_instances(&by_state).await.unwrap()), [ids[1], ids[3], ids[0], ids[2]]);
    let webs = InstanceQuery { name_contains: Some("web".into()), offset: 1, ..all.clone() };
    assert_eq!(ids_of(store.list_instances(&webs).await.unwrap()), [ids[2], ids[3]], "an offset without a limit");
    assert_eq!(store.count_instances(&webs).await.unwrap(), 3, "the count ignores the page");
    let case = InstanceQuery { name_contains: Some("WEB".into()), ..all.clone() };
    assert_eq!(store.count_instances(&case).await.unwrap(), 0, "case counts");
    let running_webs = InstanceQuery {
        states: vec![InstanceState::Running, InstanceState::Destroyed],
        name_contains: Some("web".into()),
        ..all.clone()
    };
    assert_eq!(ids_of(store.list_instances(&running_webs).await.unwrap()), [ids[0], ids[2], ids[4]]);
    assert_eq!(store.count_instances(&running_webs).await.unwrap(), 3);
    let none = InstanceQuery { offset: 9, limit: 2, ..all.clone() };
    assert!(store.list_instances(&none).await.unwrap().is_empty());
    let one_id = ids[2].to_string();
    let by_id = InstanceQuery { id_contains: Some(one_id[24..].to_string()), ..all.clone() };
    assert_eq!(ids_of(store.list_instances(&by_id).await.unwrap()), [ids[2]], "a part of the id");
    let small = InstanceQuery { instance_types: vec!["standard.small".into(), "x".into()], ..all.clone() };
    assert_eq!(store.count_instances(&small).await.unwrap(), 4, "by instance type");
    let standard = InstanceQuery { instance_type_prefix: Some("standard.".into()), ..all.clone() };
    assert_eq!(store.count_instances(&standard).await.unwrap(), 4, "by the type's prefix");
    let not_standard = InstanceQuery { instance_type_not_prefix: Some("standard.".into()), ..all.clone() };
    assert_eq!(store.count_instances(&not_standard).await.unwrap(), 0, "by a prefix the type lacks");
    let gpu = InstanceQuery { instance_type_prefix: Some("gpu".into()), ..all.clone() };
    assert_eq!(store.count_instances(&gpu).await.unwrap(), 0);
}

/// What a provider's list filters by besides names and types, chosen in the store: a part of an address,
/// tags (a system label over a user label of the same key), a security group left out, the time of the last
/// change; and operations by the time they were made.
pub async fn instances_and_operations_filter_by_addresses_tags_groups_and_times(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let (group, t0) = (Uuid::new_v4(), nimbus_core::now() - time::Duration::hours(3));
    let mut made = Vec::new();
    for n in 0..3i64 {
        let mut i = instance(p.id, &format!("i{n}"), 1);
        i.ip_addresses = vec![format!("10.0.0.{}", 10 + n)];
        i.updated_at = t0 + time::Duration::hours(n);
        i.labels.insert("env".into(), if n == 0 { "prod".into() } else { "dev".into() });
        made.push(i);
    }
    made[1].system_labels.insert("env".into(), "prod".into());
    made[2].labels.insert("team".into(), "blue".into());
    made[2].security_groups = vec![group];
    for i in &made {
        store.apply(insert(i)).await.unwrap();
    }
    let ids = |q: InstanceQuery| async move {
        store.list_instances(&q).await.unwrap().iter().map(|i| i.id).collect::<Vec<_>>()
    };
    let all = InstanceQuery { project_id: Some(p.id), ..Default::default() };
    let [a, b, c] = [made[0].id, made[1].id, made[2].id];
    assert_eq!(
        ids(InstanceQuery { ip_contains: Some("0.0.11".into()), ..all.clone() }).await,
        [b],
        "a part of an address"
    );
    assert_eq!(ids(InstanceQuery { ip_contains: Some("10.0.0.".into()), ..all.clone() }).await, [a, b, c]);
    let prod = InstanceQuery { tags_equal: vec![("env".into(), "prod".into())], ..all.clone() };
    assert_eq!(ids(prod).await, [a, b], "the system label over the user label");
    let both =
        InstanceQuery { tags_equal: vec![("env".into(), "dev".into()), ("team".into(), "blue".into())], ..all.clone() };
    assert_eq!(ids(both).await, [c], "every pair");
    let dev = InstanceQuery { tag_values: vec!["dev".into(), "nothing".into()], ..all.clone() };
    assert_eq!(ids(dev).await, [c], "a user value under a system label of its key is no tag");
    assert_eq!(ids(InstanceQuery { tag_values: vec!["blue".into()], ..all.clone() }).await, [c]);
    assert_eq!(ids(InstanceQuery { not_in_security_group: Some(group), ..all.clone() }).await, [a, b]);
    let since = InstanceQuery { updated_since: Some(t0 + time::Duration::minutes(30)), ..all.clone() };
    assert_eq!(ids(since).await, [b, c], "changed since");
    let until = InstanceQuery { updated_until: Some(made[1].updated_at), ..all.clone() };
    assert_eq!(ids(until).await, [a, b], "changed until, the bound included");
    assert_eq!(
        store.count_instances(&InstanceQuery { tag_values: vec!["prod".into()], ..all.clone() }).await.unwrap(),
        2
    );

    let mut ops = Vec::new();
    for n in 0..3i64 {
        let mut op = operation(p.id);
        op.created_at = t0 + time::Duration::hours(n);
        insert_operation(store, &op).await;
        ops.push(op.id);
    }
    let all = OperationQuery { project_id: Some(p.id), ..Default::default() };
    let window = OperationQuery {
        created_since: Some(t0 + time::Duration::minutes(30)),
        created_until: Some(t0 + time::Duration::hours(2)),
        ..all
    };
    let found: Vec<Uuid> = store.list_operations(&window).await.unwrap().iter().map(|o| o.id).collect();
    assert_eq!(found, [ops[1], ops[2]], "made between, the bounds included");
    assert_eq!(store.count_operations(&window).await.unwrap(), 2);
}

/// A deleted instance's record kept `destroyed` (for the dialects that show deleted instances a while) is
/// invisible to `get_instance`, default listings and usage; it is listed when asked for, and its project's
/// deletion takes it along.
pub async fn destroyed_records_are_kept_out_of_sight_until_asked_for(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let live = instance(p.id, "live", 1);
    let mut gone = instance(p.id, "gone", 2);
    gone.state = InstanceState::Destroyed;
    store.apply(insert(&live)).await.unwrap();
    store.apply(insert(&gone)).await.unwrap();
    assert!(store.get_instance(gone.id).await.unwrap().is_none());
    let all = InstanceQuery { project_id: Some(p.id), ..Default::default() };
    assert_eq!(store.list_instances(&all).await.unwrap().iter().map(|i| i.id).collect::<Vec<_>>(), [live.id]);
    let with = InstanceQuery { with_destroyed: true, ..all.clone() };
    assert_eq!(store.list_instances(&with).await.unwrap().len(), 2);
    let asked = InstanceQuery { state: Some(InstanceState::Destroyed), ..all.clone() };
    assert_eq!(store.list_instances(&asked).await.unwrap()[0].id, gone.id);
    let one = InstanceQuery { id: Some(gone.id), with_destroyed: true, ..all.clone() };
    assert_eq!(store.list_instances(&one).await.unwrap()[0].id, gone.id);
    let usage = store.usage(p.id).await.unwrap();
    assert_eq!((usage.instances, usage.vcpus), (1, 1));
    // A project whose only instance is a destroyed record can be deleted, and takes the record along.
    let mut set = WriteSet::new();
    set.push(Write::DeleteInstance { id: live.id, expected_generation: live.generation });
    store.apply(set).await.unwrap();
    let mut set = WriteSet::new();
    set.push(Write::DeleteProject { id: p.id });
    store.apply(set).await.unwrap();
    assert!(store.list_instances(&with).await.unwrap().is_empty());
}

pub async fn events_are_sequenced_and_scoped(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let other = project(store, Quota::default()).await;
    for kind in ["a", "b", "c"] {
        let mut set = WriteSet::new();
        set.push(Write::AppendEvent(event(p.id, kind)));
        set.push(Write::AppendEvent(event(other.id, kind)));
        store.apply(set).await.unwrap();
    }
    let mine = store.events_after(Some(p.id), 0, 100).await.unwrap();
    assert_eq!(mine.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq));
    let rest = store.events_after(Some(p.id), mine[0].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(store.events_after(None, 0, 100).await.unwrap().len(), 6);
}

fn scope(project_id: Uuid, api_key_id: &str, key: &str) -> IdempotencyScope {
    IdempotencyScope { project_id, api_key_id: api_key_id.into(), key: key.into() }
}

async fn claim(store: &dyn Store, s: &IdempotencyScope, hash: &str, lease: Duration) -> IdempotencyClaim {
    store.idempotency_claim(s, hash, "server-a", lease).await.unwrap()
}

async fn claim_new(store: &dyn Store, s: &IdempotencyScope, hash: &str, lease: Duration) -> IdempotencyHold {
    match claim(store, s, hash, lease).await {
        IdempotencyClaim::New(hold) => hold,
        other => panic!("expected a new claim of {}, got {other:?}", s.key),
    }
}

/// A write set that makes one record, as a request would.
fn a_record(project_id: Uuid) -> (Uuid, WriteSet) {
    let id = Uuid::new_v4();
    let mut set = WriteSet::new();
    set.push(Write::InsertRecord(Record::new("thing", id, Some(project_id), "t", &serde_json::json!({}))));
    (id, set)
}

pub async fn idempotency_keys_replay_reject_and_release(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let k = scope(p.id, "KEY1", "k");
    let hold = claim_new(store, &k, "h1", LONG).await;
    assert_eq!(claim(store, &k, "h1", LONG).await, IdempotencyClaim::InProgress, "held by a live request");
    store.idempotency_finish(&hold, 202, "{}").await.unwrap();
    assert_eq!(claim(store, &k, "h1", LONG).await, IdempotencyClaim::Replay { status: 202, body: "{}".into() });
    assert_eq!(claim(store, &k, "h2", LONG).await, IdempotencyClaim::Mismatch);
    let other = scope(p.id, "KEY1", "other");
    let hold = claim_new(store, &other, "h", LONG).await;
    store.idempotency_release(&hold).await.unwrap();
    claim_new(store, &other, "h", LONG).await;
}

pub async fn an_idempotency_key_belongs_to_its_api_key(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let mine = claim_new(store, &scope(p.id, "KEY1", "k"), "h", LONG).await;
    store.idempotency_finish(&mine, 201, "mine").await.unwrap();
    // Another key of the same project, same key and request: its own, never the first key's response.
    let theirs = claim_new(store, &scope(p.id, "KEY2", "k"), "h", LONG).await;
    store.idempotency_finish(&theirs, 201, "theirs").await.unwrap();
    assert_eq!(
        claim(store, &scope(p.id, "KEY1", "k"), "h", LONG).await,
        IdempotencyClaim::Replay { status: 201, body: "mine".into() }
    );
    assert_eq!(
        claim(store, &scope(p.id, "KEY2", "k"), "h", LONG).await,
        IdempotencyClaim::Replay { status: 201, body: "theirs".into() }
    );
}

/// A request that died before committing anything: once its lease runs out a retry takes the key over and
/// runs; a late write of the first one is refused whole.
pub async fn a_dead_holder_that_applied_nothing_is_taken_over_and_its_late_write_refused(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let k = scope(p.id, "KEY1", "k");
    let first = claim_new(store, &k, "h", Duration::from_millis(200)).await;
    assert_eq!(claim(store, &k, "h", LONG).await, IdempotencyClaim::InProgress);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = claim_new(store, &k, "h", LONG).await;
    assert_ne!(first.holder, second.holder);

    let (late, set) = a_record(p.id);
    let err = holding(first.clone(), store.apply(set)).await.unwrap_err();
    assert!(matches!(err, StoreError::Superseded(_)), "{err:?}");
    assert!(store.get_record("thing", late).await.unwrap().is_none(), "the late write rolled back whole");
    assert!(!store.idempotency_renew(&first, LONG).await.unwrap(), "the first hold is gone");

    let (made, set) = a_record(p.id);
    holding(second.clone(), store.apply(set)).await.unwrap();
    assert!(store.get_record("thing", made).await.unwrap().is_some());
    // The first one's finish, however late, answers nothing.
    store.idempotency_finish(&first, 500, "late").await.unwrap();
    assert_eq!(
        claim(store, &k, "h", LONG).await,
        IdempotencyClaim::Applied { result: serde_json::json!({"record": {"kind": "thing", "id": made}}) }
    );
}

/// A request that committed and then died before its response was stored: its key is answered from what
/// it made, at once and forever, and is never run again, whatever happens to its hold.
pub async fn a_request_that_applied_is_answered_from_what_it_made(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let k = scope(p.id, "KEY1", "k");
    let hold = claim_new(store, &k, "h", Duration::from_millis(200)).await;
    let (made, set) = a_record(p.id);
    holding(hold.clone(), store.apply(set)).await.unwrap();
    let (second, set) = a_record(p.id);
    holding(hold.clone(), store.apply(set)).await.unwrap();
    let applied = IdempotencyClaim::Applied { result: serde_json::json!({"record": {"kind": "thing", "id": made}}) };
    assert_eq!(claim(store, &k, "h", LONG).await, applied, "answered while its request still runs");
    assert!(store.get_record("thing", second).await.unwrap().is_some(), "a request may commit more than once");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(claim(store, &k, "h", LONG).await, applied, "its lease expired: still never run again");
    store.idempotency_sweep(None).await.unwrap();
    store.idempotency_sweep(Some("server-a")).await.unwrap();
    store.idempotency_release(&hold).await.unwrap();
    assert_eq!(claim(store, &k, "h", LONG).await, applied, "a sweep or a release keeps what applied");
    assert_eq!(claim(store, &k, "other", LONG).await, IdempotencyClaim::Mismatch);
    let audit = store.idempotency_audit().await.unwrap();
    assert_eq!((audit.applied, audit.held, audit.abandoned), (1, 0, 0), "{audit:?}");
}

/// Writes outside a hold, or of a hold over another key, mark nothing.
pub async fn only_the_holding_request_marks_its_key(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let k = scope(p.id, "KEY1", "k");
    let hold = claim_new(store, &k, "h", LONG).await;
    let (_, set) = a_record(p.id);
    store.apply(set).await.unwrap();
    assert_eq!(claim(store, &k, "h", LONG).await, IdempotencyClaim::InProgress, "a write outside the hold");
    store.idempotency_release(&hold).await.unwrap();
    claim_new(store, &k, "h", LONG).await;
}

/// A server that restarts after a crash, or stops cleanly, drops its own holds that applied nothing; a
/// sweep also drops anyone's expired ones, and leaves live ones alone.
pub async fn a_sweep_drops_holds_that_can_no_longer_apply(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let (dead, live, expired) = (scope(p.id, "K", "dead"), scope(p.id, "K", "live"), scope(p.id, "K", "expired"));
    store.idempotency_claim(&dead, "h", "server-a", LONG).await.unwrap();
    store.idempotency_claim(&live, "h", "server-b", LONG).await.unwrap();
    store.idempotency_claim(&expired, "h", "server-b", Duration::from_millis(100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit = store.idempotency_audit().await.unwrap();
    assert_eq!((audit.held, audit.abandoned), (2, 1), "{audit:?}");
    assert_eq!(store.idempotency_sweep(Some("server-a")).await.unwrap(), 2, "server-a's, and the expired one");
    let audit = store.idempotency_audit().await.unwrap();
    assert_eq!((audit.held, audit.abandoned), (1, 0), "{audit:?}");
    claim_new(store, &dead, "h", LONG).await;
    claim_new(store, &expired, "h", LONG).await;
    assert_eq!(claim(store, &live, "h", LONG).await, IdempotencyClaim::InProgress);
}

/// A store written through its own API passes its integrity check; a row that references nothing is found.
pub async fn the_integrity_check_passes_a_sound_store_and_finds_a_dangling_address(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let mut set = WriteSet::new();
    let i = instance(p.id, "web", 1);
    set.push(Write::PutInstance { instance: i.clone(), expected_generation: None });
    set.push(Write::ClaimAddress { network: "net".into(), host: 2, owner: i.id });
    // A reserved address holds one of the instance network's addresses as an instance does.
    let reservation = Uuid::new_v4();
    set.push(Write::InsertRecord(Record::new(
        "reserved_address",
        reservation,
        Some(p.id),
        "r",
        &serde_json::json!({}),
    )));
    set.push(Write::ClaimAddress { network: "net".into(), host: 4, owner: reservation });
    store.apply(set).await.unwrap();
    let report = store.check_integrity().await.unwrap();
    assert_eq!(report.problems, Vec::<String>::new(), "{report:?}");
    assert!(report.checked.len() >= 2, "a physical and a logical half: {report:?}");
    let nobody = Uuid::new_v4();
    let mut set = WriteSet::new();
    set.push(Write::ClaimAddress { network: "net".into(), host: 3, owner: nobody });
    store.apply(set).await.unwrap();
    let report = store.check_integrity().await.unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(report.problems[0].contains(&nobody.to_string()), "{report:?}");
}

pub async fn aliases_are_unique_both_ways(store: &dyn Store) {
    let id = Uuid::new_v4();
    let mut set = WriteSet::new();
    set.push(Write::PutAlias { kind: "sfc.instance".into(), alias: "inst_abc".into(), id });
    store.apply(set).await.unwrap();
    assert_eq!(store.resolve_alias("sfc.instance", "inst_abc").await.unwrap(), Some(id));
    assert_eq!(store.alias_of("sfc.instance", id).await.unwrap().as_deref(), Some("inst_abc"));
    let mut dup = WriteSet::new();
    dup.push(Write::PutAlias { kind: "sfc.instance".into(), alias: "inst_abc".into(), id: Uuid::new_v4() });
    assert!(store.apply(dup).await.is_err());
    // A deleted alias is free again, for another id.
    let mut free = WriteSet::new();
    free.push(Write::DeleteAlias { kind: "sfc.instance".into(), alias: "inst_abc".into() });
    store.apply(free).await.unwrap();
    assert_eq!(store.resolve_alias("sfc.instance", "inst_abc").await.unwrap(), None);
    let other = Uuid::new_v4();
    let mut again = WriteSet::new();
    again.push(Write::PutAlias { kind: "sfc.instance".into(), alias: "inst_abc".into(), id: other });
    store.apply(again).await.unwrap();
    assert_eq!(store.resolve_alias("sfc.instance", "inst_abc").await.unwrap(), Some(other));
}

pub async fn addresses_are_lowest_free_and_released(store: &dyn Store) {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(store.free_addresses("net", 2, 4, 1).await.unwrap(), [2]);
    store.apply(claim_address("net", 2, a)).await.unwrap();
    assert_eq!(store.free_addresses("net", 2, 4, 1).await.unwrap(), [3]);
    store.apply(claim_address("net", 3, b)).await.unwrap();
    assert!(
        matches!(store.apply(claim_address("net", 2, c)).await, Err(StoreError::Conflict(_))),
        "a held address cannot be claimed again"
    );
    assert_eq!(
        store.list_addresses(Some("net")).await.unwrap()[0],
        AddressHold { network: "net".into(), host: 2, owner: a }
    );
    let mut set = WriteSet::new();
    set.push(Write::ReleaseAddresses { owner: a });
    store.apply(set).await.unwrap();
    assert_eq!(store.free_addresses("net", 2, 4, 5).await.unwrap(), [2, 4]);
    store.apply(claim_address("net", 2, c)).await.unwrap();
    store.apply(claim_address("net", 4, Uuid::new_v4())).await.unwrap();
    assert!(store.free_addresses("net", 2, 4, 5).await.unwrap().is_empty(), "the range is full");
}

pub async fn api_keys_are_found_by_secret_hash(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let key = ApiKey {
        key_id: "NIMabc".into(),
        name: "k".into(),
        project_id: p.id,
        role: Role::Member,
        secret: "s".into(),
        secret_sha256: "hash".into(),
        created_at: nimbus_core::now(),
    };
    store.put_api_key(&key).await.unwrap();
    assert_eq!(store.get_api_key_by_secret_hash("hash").await.unwrap(), Some(key.clone()));
    assert_eq!(store.list_api_keys(p.id).await.unwrap(), vec![key]);
    assert!(store.delete_api_key("NIMabc").await.unwrap());
    assert_eq!(store.get_api_key("NIMabc").await.unwrap(), None);
}

pub async fn public_records_are_seen_by_every_project(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let other = project(store, Quota::default()).await;
    let mut set = WriteSet::new();
    set.push(Write::InsertRecord(Record::new("template", Uuid::new_v4(), None, "public", &1)));
    set.push(Write::InsertRecord(Record::new("template", Uuid::new_v4(), Some(p.id), "mine", &2)));
    store.apply(set).await.unwrap();
    let names = |rs: Vec<Record>| rs.into_iter().map(|r| r.name).collect::<BTreeSet<_>>();
    assert_eq!(
        names(store.list_records("template", Some(p.id)).await.unwrap()),
        ["mine", "public"].map(String::from).into()
    );
    assert_eq!(
        names(store.list_records("template", Some(other.id)).await.unwrap()),
        ["public"].map(String::from).into()
    );
}

pub async fn an_empty_project_and_then_its_organization_can_be_deleted(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let key = ApiKey {
        key_id: "NIMgone".into(),
        name: "login".into(),
        project_id: p.id,
        role: Role::Admin,
        secret: "s".into(),
        secret_sha256: "gone-hash".into(),
        created_at: nimbus_core::now(),
    };
    let mut set = WriteSet::new();
    set.push(Write::PutApiKey(key.clone()));
    set.push(Write::InsertRecord(Record::new("ssh_key", Uuid::new_v4(), Some(p.id), "mine", &1)));
    store.apply(set).await.unwrap();
    let i = instance(p.id, "web", 1);
    store.apply(insert(&i)).await.unwrap();
    // An organization with a project, a project with an instance: refused, and nothing of the set is done.
    for write in [Write::DeleteOrganization { id: p.organization_id }, Write::DeleteProject { id: p.id }] {
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: "ssh_key".into(), id: Uuid::new_v4(), expected_generation: None });
        set.push(write);
        assert!(matches!(store.apply(set).await, Err(StoreError::Conflict(_))));
    }
    assert!(store.get_project(p.id).await.unwrap().is_some());
    assert_eq!(store.get_api_key("NIMgone").await.unwrap(), Some(key));

    let mut set = WriteSet::new();
    set.push(Write::DeleteInstance { id: i.id, expected_generation: i.generation });
    set.push(Write::DeleteProject { id: p.id });
    set.push(Write::DeleteOrganization { id: p.organization_id });
    store.apply(set).await.unwrap();
    assert_eq!(store.get_project(p.id).await.unwrap(), None);
    assert_eq!(store.get_organization(p.organization_id).await.unwrap(), None);
    assert_eq!(store.get_api_key_by_secret_hash("gone-hash").await.unwrap(), None, "its keys went with it");
    assert!(store.list_records("ssh_key", Some(p.id)).await.unwrap().is_empty(), "and its records");
    let mut again = WriteSet::new();
    again.push(Write::DeleteProject { id: p.id });
    assert!(matches!(store.apply(again).await, Err(StoreError::NotFound(_))));
}

/// A claim and what its claimer records on taking the operation commit together, or neither does.
pub async fn a_claim_and_its_start_commit_together(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let op = operation(p.id);
    insert_operation(store, &op).await;
    // The start's writes fail (a record expected at a generation it is not at): the claim is undone too.
    let failing: StartClaimed = Box::new(|op: Operation| {
        let mut set = update_operation(&op, OperationState::Running, "w1");
        set.push(Write::UpdateRecord {
            record: Record::new("x", Uuid::new_v4(), None, "x", &1),
            expected_generation: 7,
        });
        (op, set)
    });
    assert!(store.claim_and_start("w1", LONG, failing).await.is_err());
    let started: StartClaimed = Box::new(|op: Operation| {
        let mut set = update_operation(&op, OperationState::Running, "w2");
        set.push(Write::AppendEvent(Event { target_id: op.id, ..event(op.project_id, "operation.updated") }));
        (Operation { state: OperationState::Running, ..op }, set)
    });
    let claimed = store.claim_and_start("w2", LONG, started).await.unwrap().expect("free again after the failed start");
    assert!(!claimed.more, "nothing else was left to claim");
    let claimed = claimed.operation;
    assert_eq!((claimed.id, claimed.state), (op.id, OperationState::Running));
    assert_eq!(store.get_operation(op.id).await.unwrap().unwrap().state, OperationState::Running);
    assert_eq!(store.events_after(Some(p.id), 0, 10).await.unwrap().len(), 1);
    assert!(store.claim_operation("w3", LONG).await.unwrap().is_none(), "held by w2");
}

pub async fn an_expected_alias_guards_the_whole_set(store: &dyn Store) {
    let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut set = WriteSet::new();
    set.push(Write::PutAlias { kind: "account.username".into(), alias: "alice".into(), id });
    store.apply(set).await.unwrap();
    let guarded = |expected: Uuid, record: Uuid| {
        let mut set = WriteSet::new();
        set.push(Write::ExpectAlias { kind: "account.username".into(), alias: "alice".into(), id: expected });
        set.push(Write::InsertRecord(Record::new("account", record, None, "alice", &1)));
        set
    };
    let (kept, refused) = (Uuid::new_v4(), Uuid::new_v4());
    store.apply(guarded(id, kept)).await.unwrap();
    assert!(matches!(store.apply(guarded(other, refused)).await, Err(StoreError::Conflict(_))));
    assert!(store.get_record("account", kept).await.unwrap().is_some());
    assert!(store.get_record("account", refused).await.unwrap().is_none(), "nothing of a refused set is written");
    let mut free = WriteSet::new();
    free.push(Write::DeleteAlias { kind: "account.username".into(), alias: "alice".into() });
    store.apply(free).await.unwrap();
    assert!(matches!(store.apply(guarded(id, refused)).await, Err(StoreError::Conflict(_))), "a freed alias");
}

pub async fn records_are_inserted_once_and_changed_by_generation(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let first = Record::new("ssh_key", Uuid::new_v4(), Some(p.id), "laptop", &"ssh-ed25519 A");
    let mut set = WriteSet::new();
    set.push(Write::InsertRecord(first.clone()));
    store.apply(set.clone()).await.unwrap();
    assert_eq!(store.get_record("ssh_key", first.id).await.unwrap(), Some(first.clone()), "stored at generation 1");
    assert!(matches!(store.apply(set).await, Err(StoreError::AlreadyExists(_))), "an id is inserted once");

    let second = first.next("desktop", &"ssh-ed25519 B");
    let mut set = WriteSet::new();
    set.push(Write::UpdateRecord { record: second.clone(), expected_generation: 1 });
    store.apply(set).await.unwrap();
    assert_eq!(store.get_record("ssh_key", first.id).await.unwrap(), Some(second.clone()));
    assert_eq!(second.generation, 2);

    // A writer that read generation 1 before that update loses, and writes nothing.
    let stale = first.next("stale", &"ssh-ed25519 C");
    let mut set = WriteSet::new();
    set.push(Write::UpdateRecord { record: stale, expected_generation: 1 });
    assert!(matches!(store.apply(set).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_record("ssh_key", first.id).await.unwrap().unwrap().name, "desktop");

    let delete = |expected_generation| {
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: "ssh_key".into(), id: first.id, expected_generation });
        set
    };
    assert!(matches!(store.apply(delete(Some(1))).await, Err(StoreError::Conflict(_))), "a stale delete loses");
    assert!(store.get_record("ssh_key", first.id).await.unwrap().is_some(), "and deletes nothing");
    store.apply(delete(Some(2))).await.unwrap();
    assert_eq!(store.get_record("ssh_key", first.id).await.unwrap(), None);
    assert!(
        matches!(store.apply(delete(Some(2))).await, Err(StoreError::Conflict(_))),
        "a conditional delete of nothing"
    );
    store.apply(delete(None)).await.expect("an unconditional delete of nothing is no error");

    let other = Record::new("ssh_key", Uuid::new_v4(), Some(p.id), "other", &1);
    let mut set = WriteSet::new();
    set.push(Write::InsertRecord(other.clone()));
    store.apply(set).await.unwrap();
    let mut set = WriteSet::new();
    set.push(Write::DeleteRecord { kind: "ssh_key".into(), id: other.id, expected_generation: None });
    store.apply(set).await.unwrap();
    assert_eq!(store.get_record("ssh_key", other.id).await.unwrap(), None, "whatever its version");
}

pub async fn operations_are_claimed_oldest_first_and_by_one_worker(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let mut ops = vec![operation(p.id), operation(p.id), operation(p.id)];
    for op in &ops {
        insert_operation(store, op).await;
    }
    let mut again = WriteSet::new();
    again.push(Write::InsertOperation(ops[0].clone()));
    assert!(matches!(store.apply(again).await, Err(StoreError::AlreadyExists(_))));
    ops.sort_by_key(|o| o.id);
    for (worker, op) in ["a", "b", "c"].into_iter().zip(&ops) {
        let claimed = store.claim_operation(worker, LONG).await.unwrap().expect("an unclaimed operation");
        assert_eq!(claimed, *op, "the oldest unclaimed one, as stored");
    }
    assert_eq!(store.claim_operation("d", LONG).await.unwrap(), None, "every one is leased");
}

pub async fn an_expired_lease_passes_to_another_worker(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let op = operation(p.id);
    insert_operation(store, &op).await;
    assert_eq!(store.claim_operation("a", Duration::from_millis(1500)).await.unwrap().map(|o| o.id), Some(op.id));
    assert_eq!(store.claim_operation("b", LONG).await.unwrap(), None, "not while a's lease runs");
    assert!(!store.renew_lease(op.id, "b", LONG).await.unwrap(), "b holds nothing to renew");

    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(store.claim_operation("b", LONG).await.unwrap().map(|o| o.id), Some(op.id), "a's lease expired");
    assert!(!store.renew_lease(op.id, "a", LONG).await.unwrap(), "a lost it");
    // a, late, still believes it runs the operation: its update loses and writes nothing.
    assert!(matches!(
        store.apply(update_operation(&op, OperationState::Failure, "a")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_operation(op.id).await.unwrap().unwrap().state, OperationState::Pending);
    store.apply(update_operation(&op, OperationState::Running, "b")).await.unwrap();
    assert_eq!(store.get_operation(op.id).await.unwrap().unwrap().state, OperationState::Running);
}

pub async fn a_renewed_lease_holds_and_a_released_one_is_free_at_once(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let op = operation(p.id);
    insert_operation(store, &op).await;
    store.claim_operation("a", Duration::from_millis(1000)).await.unwrap().unwrap();
    assert!(store.renew_lease(op.id, "a", LONG).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(store.claim_operation("b", LONG).await.unwrap(), None, "the renewed lease still runs");
    store.release_lease(op.id, "b").await.expect("releasing what one does not hold is no error");
    assert_eq!(store.claim_operation("b", LONG).await.unwrap(), None, "and frees nothing");
    store.release_lease(op.id, "a").await.unwrap();
    assert_eq!(store.claim_operation("b", LONG).await.unwrap().map(|o| o.id), Some(op.id), "free at once");
}

pub async fn a_finished_operation_is_never_claimed_again(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let op = operation(p.id);
    insert_operation(store, &op).await;
    store.claim_operation("a", Duration::from_millis(300)).await.unwrap().unwrap();
    store.apply(update_operation(&op, OperationState::Success, "a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.claim_operation("b", LONG).await.unwrap(), None, "not even after its lease ran out");
    assert!(!store.renew_lease(op.id, "a", LONG).await.unwrap(), "the operation ended");
    assert!(
        matches!(store.apply(update_operation(&op, OperationState::Failure, "a")).await, Err(StoreError::Conflict(_))),
        "its lease was dropped with it"
    );
    assert_eq!(store.get_operation(op.id).await.unwrap().unwrap().state, OperationState::Success);
    let unfinished = OperationQuery { unfinished: true, ..Default::default() };
    assert!(store.list_operations(&unfinished).await.unwrap().is_empty());
}

/// An operation recorded with its lease in one set (its server runs it itself) is nobody else's until the
/// lease runs out, wakes no idle worker, and cannot be leased twice.
pub async fn an_operation_leased_as_it_is_recorded_is_claimed_only_when_its_lease_runs_out(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let op = operation(p.id);
    let mut work = store.new_work();
    work.borrow_and_update();
    let mut set = WriteSet::new();
    set.push(Write::InsertOperation(op.clone()));
    set.push(Write::LeaseOperation { id: op.id, lease_owner: "here".into(), lease: Duration::from_millis(300) });
    store.apply(set).await.unwrap();
    assert!(!work.has_changed().unwrap(), "no idle worker is woken for it");
    assert_eq!(store.claim_operation("b", LONG).await.unwrap(), None, "held by the server that recorded it");
    assert!(store.renew_lease(op.id, "here", Duration::from_millis(300)).await.unwrap());
    let mut again = WriteSet::new();
    again.push(Write::LeaseOperation { id: op.id, lease_owner: "other".into(), lease: LONG });
    assert!(matches!(store.apply(again).await, Err(StoreError::Conflict(_))), "held already");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claimed = store.claim_operation("b", LONG).await.unwrap().expect("its lease ran out");
    assert_eq!(claimed.id, op.id);
    // A plain record is work.
    insert_operation(store, &operation(p.id)).await;
    assert!(work.has_changed().unwrap(), "an unheld operation wakes a worker");
}

/// Numbered pages of operations: states, newest first, an offset, and the count of all that match.
pub async fn operations_page_by_offset_newest_first_with_a_count(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let mut ids = Vec::new();
    for state in [OperationState::Success, OperationState::Failure, OperationState::Pending, OperationState::Success] {
        let mut op = operation(p.id);
        op.state = state;
        if state == OperationState::Failure {
            op.kind = Action::Reboot;
        }
        insert_operation(store, &op).await;
        ids.push(op.id);
    }
    insert_operation(store, &operation(project(store, Quota::default()).await.id)).await;
    let ids_of = |v: Vec<Operation>| v.iter().map(|o| o.id).collect::<Vec<_>>();
    let all = OperationQuery { project_id: Some(p.id), ..Default::default() };
    assert_eq!(store.count_operations(&all).await.unwrap(), 4);
    let newest = OperationQuery { newest_first: true, offset: 1, limit: 2, ..all.clone() };
    assert_eq!(ids_of(store.list_operations(&newest).await.unwrap()), [ids[2], ids[1]]);
    let done = OperationQuery { states: vec![OperationState::Success, OperationState::Failure], ..all.clone() };
    assert_eq!(ids_of(store.list_operations(&done).await.unwrap()), [ids[0], ids[1], ids[3]]);
    assert_eq!(store.count_operations(&OperationQuery { offset: 2, limit: 1, ..done.clone() }).await.unwrap(), 3);
    let skipped = OperationQuery { offset: 2, ..done };
    assert_eq!(ids_of(store.list_operations(&skipped).await.unwrap()), [ids[3]], "an offset without a limit");
    let reboots = OperationQuery { kinds: vec![Action::Reboot, Action::Reset], ..all.clone() };
    assert_eq!(ids_of(store.list_operations(&reboots).await.unwrap()), [ids[1]], "by kind");
    assert_eq!(store.count_operations(&OperationQuery { kinds: vec![Action::Start], ..all }).await.unwrap(), 3);
}

pub async fn racing_workers_never_share_an_operation(store: Arc<dyn Store>) {
    let p = project(&*store, Quota::default()).await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        let op = operation(p.id);
        insert_operation(&*store, &op).await;
        ids.push(op.id);
    }
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(op) = store.claim_operation(&format!("worker-{w}"), LONG).await.unwrap() {
                    mine.push(op.id);
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for w in workers {
        claimed.extend(w.await.unwrap());
    }
    claimed.sort();
    ids.sort();
    assert_eq!(claimed, ids, "each operation claimed exactly once");
}

pub async fn concurrent_creates_never_overrun_the_quota(store: Arc<dyn Store>) {
    let p = project(&*store, Quota { instances: 5, ..Quota::default() }).await;
    let creates: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut set = insert(&instance(p.id, &format!("i{n}"), 1));
                set.enforce_quota_of = Some(p.id);
                store.apply(set).await
            })
        })
        .collect();
    let mut created = 0;
    for c in creates {
        match c.await.unwrap() {
            Ok(()) => created += 1,
            Err(StoreError::QuotaExceeded(_)) => {}
            Err(e) => panic!("a create failed otherwise than on the quota: {e:?}"),
        }
    }
    assert_eq!(created, 5);
    assert_eq!(store.usage(p.id).await.unwrap().instances, 5);
    let q = InstanceQuery { project_id: Some(p.id), ..Default::default() };
    assert_eq!(store.list_instances(&q).await.unwrap().len(), 5);
}

fn host(name: &str, vcpus: u64) -> nimbus_core::host::Host {
    use nimbus_core::host::{Capacity, Host, HostState};
    Host {
        id: Uuid::new_v4(),
        name: name.into(),
        zone: "z".into(),
        admin_state: HostState::Ready,
        capacity: Capacity { vcpus, memory_mib: 1 << 20, disk_gb: 1 << 20, gpus: Default::default() },
        accelerator: "none".into(),
        driver: "sim".into(),
        underlay_address: None,
        tpm: false,
        agent_version: "test".into(),
        registered_at: nimbus_core::now(),
        updated_at: nimbus_core::now(),
    }
}

fn register(h: &nimbus_core::host::Host) -> WriteSet {
    let mut set = WriteSet::new();
    set.push(Write::PutHost { host: h.clone(), generation: 1, expected_generation: None });
    set
}

/// An instance placed on `host`, with the placement check on `limit_vcpus`.
fn placed(project_id: Uuid, name: &str, host: &str, limit_vcpus: u64, groups: &[Uuid]) -> WriteSet {
    let mut i = instance(project_id, name, 1);
    i.host = Some(host.into());
    i.anti_affinity_groups = groups.to_vec();
    let mut set = insert(&i);
    set.placement = Some(Placement {
        host: host.into(),
        limit: nimbus_core::host::Capacity {
            vcpus: limit_vcpus,
            memory_mib: 1 << 30,
            disk_gb: 1 << 30,
            gpus: Default::default(),
        },
        instance_id: i.id,
        anti_affinity_groups: groups.to_vec(),
    });
    set
}

pub async fn a_restarted_server_takes_back_every_lease_its_claims_held(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let (a, b, c) = (operation(p.id), operation(p.id), operation(p.id));
    for op in [&a, &b, &c] {
        insert_operation(store, op).await;
    }
    let lease = Duration::from_secs(60);
    assert!(store.claim_operation("srv/1", lease).await.unwrap().is_some());
    assert!(store.claim_operation("srv/2", lease).await.unwrap().is_some());
    assert!(store.claim_operation("srv2/1", lease).await.unwrap().is_some(), "another server's");
    assert!(store.claim_operation("x", lease).await.unwrap().is_none(), "all held");
    assert_eq!(store.release_leases_of("srv").await.unwrap(), 2, "its two claims, not srv2's");
    let first = store.claim_operation("x", lease).await.unwrap().unwrap();
    let second = store.claim_operation("x", lease).await.unwrap().unwrap();
    assert_ne!(first.id, second.id);
    assert!(store.claim_operation("x", lease).await.unwrap().is_none());
}

pub async fn hosts_register_heartbeat_and_change_by_generation(store: &dyn Store) {
    let h = host("h1", 8);
    store.apply(register(&h)).await.unwrap();
    assert!(matches!(store.apply(register(&h)).await, Err(StoreError::AlreadyExists(_))), "one host per name");
    let got = store.get_host("h1").await.unwrap().unwrap();
    assert_eq!((got.generation, got.reachable), (1, false), "not reachable before its first heartbeat");
    assert!(store.renew_host("h1", Duration::from_secs(30)).await.unwrap());
    assert!(store.get_host("h1").await.unwrap().unwrap().reachable);
    assert!(!store.renew_host("nope", Duration::from_secs(30)).await.unwrap());
    // A short lease runs out by the database's clock.
    store.renew_host("h1", Duration::from_millis(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!store.get_host("h1").await.unwrap().unwrap().reachable);
    // Changes are compare-and-swaps on the generation.
    let mut changed = h.clone();
    changed.admin_state = nimbus_core::host::HostState::Disabled;
    let mut set = WriteSet::new();
    set.push(Write::PutHost { host: changed.clone(), generation: 2, expected_generation: Some(1) });
    store.apply(set).await.unwrap();
    let mut stale = WriteSet::new();
    stale.push(Write::PutHost { host: h.clone(), generation: 2, expected_generation: Some(1) });
    assert!(matches!(store.apply(stale).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_host("h1").await.unwrap().unwrap().host.admin_state, changed.admin_state);
    assert_eq!(store.list_hosts().await.unwrap().len(), 1);
}

pub async fn hosts_carry_what_is_placed_on_them(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    store.apply(register(&host("a", 8))).await.unwrap();
    store.apply(register(&host("b", 8))).await.unwrap();
    let group = Uuid::new_v4();
    store.apply(placed(p.id, "x", "a", 8, &[group])).await.unwrap();
    store.apply(placed(p.id, "y", "a", 8, &[])).await.unwrap();
    store.apply(placed(p.id, "z", "b", 8, &[group])).await.unwrap();
    let alloc = store.host_allocations().await.unwrap();
    assert_eq!((alloc["a"].instances, alloc["a"].vcpus), (2, 2));
    assert_eq!(alloc["b"].instances, 1);
    // What placement reads in one go says the same, host by host, by name.
    let placing: Vec<(String, u64, u64)> = store
        .hosts_with_allocations(true)
        .await
        .unwrap()
        .into_iter()
        .map(|(h, a)| (h.host.name, a.instances, a.vcpus))
        .collect();
    assert_eq!(placing, [("a".to_string(), 2, 2), ("b".to_string(), 1, 1)]);
    let mut members: Vec<String> =
        store.group_members_hosts(&[group]).await.unwrap().into_iter().map(|(h, _)| h).collect();
    members.sort();
    assert_eq!(members, ["a", "b"]);
    let on_a = InstanceQuery { host: Some("a".into()), ..Default::default() };
    assert_eq!(store.list_instances(&on_a).await.unwrap().len(), 2);
    // A second member of the group on a host that holds one is refused, and nothing of it is written.
    let refused = placed(p.id, "w", "a", 8, &[group]);
    assert!(matches!(store.apply(refused).await, Err(StoreError::NoRoom(m)) if m.contains(&group.to_string())));
    assert_eq!(store.host_allocations().await.unwrap()["a"].instances, 2);
}

pub async fn placement_reads_gpus_only_when_asked(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    let mut gpu_host = host("g", 8);
    gpu_host.capacity.gpus.insert("a100".into(), 4);
    store.apply(register(&gpu_host)).await.unwrap();
    store.apply(register(&host("plain", 8))).await.unwrap();
    let mut trainer = instance(p.id, "trainer", 1);
    (trainer.host, trainer.gpus, trainer.gpu_model) = (Some("g".into()), 3, Some("a100".into()));
    store.apply(insert(&trainer)).await.unwrap();
    let gpus_of = |hosts: Vec<(StoredHost, nimbus_core::host::Allocation)>| -> Vec<(String, u64, Option<u64>)> {
        hosts.into_iter().map(|(h, a)| (h.host.name, a.instances, a.gpus.get("a100").copied())).collect()
    };
    assert_eq!(
        gpus_of(store.hosts_with_allocations(true).await.unwrap()),
        [("g".to_string(), 1, Some(3)), ("plain".to_string(), 0, None)],
        "a GPU demand sees the GPUs taken"
    );
    assert_eq!(
        gpus_of(store.hosts_with_allocations(false).await.unwrap()),
        [("g".to_string(), 1, None), ("plain".to_string(), 0, None)],
        "any other demand is placed on the rest alone"
    );
}

pub async fn concurrent_placements_never_overfill_a_host(store: Arc<dyn Store>) {
    let p = project(&*store, Quota::default()).await;
    store.apply(register(&host("small", 5))).await.unwrap();
    let places: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.apply(placed(p.id, &format!("i{n}"), "small", 5, &[])).await })
        })
        .collect();
    let mut placed_ok = 0;
    for c in places {
        match c.await.unwrap() {
            Ok(()) => placed_ok += 1,
            Err(StoreError::NoRoom(_)) => {}
            Err(e) => panic!("a placement failed otherwise than on room: {e:?}"),
        }
    }
    assert_eq!(placed_ok, 5);
    assert_eq!(store.host_allocations().await.unwrap()["small"].vcpus, 5);
}

pub async fn concurrent_placements_keep_a_group_apart(store: Arc<dyn Store>) {
    let p = project(&*store, Quota::default()).await;
    store.apply(register(&host("h", 100))).await.unwrap();
    let group = Uuid::new_v4();
    let places: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.apply(placed(p.id, &format!("m{n}"), "h", 100, &[group])).await })
        })
        .collect();
    let mut ok = 0;
    for c in places {
        if c.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1, "one member of the group per host");
}

pub async fn records_are_listed_by_name(store: &dyn Store) {
    let mut set = WriteSet::new();
    for (name, n) in [("host-a", 1), ("host-b", 2), ("host-a", 3)] {
        set.push(Write::InsertRecord(Record::new("host_call", Uuid::now_v7(), None, name, &n)));
    }
    store.apply(set).await.unwrap();
    let a = store.list_records_named("host_call", "host-a").await.unwrap();
    assert_eq!(a.iter().map(|r| r.body.as_i64().unwrap()).collect::<Vec<_>>(), [1, 3]);
    assert!(store.list_records_named("host_call", "host-c").await.unwrap().is_empty());
}

pub async fn racing_address_claims_never_share_a_host(store: Arc<dyn Store>) {
    let claimers: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = Uuid::new_v4();
                // As a create does: read the lowest free ones, claim the first, on losing read again.
                for _ in 0..100 {
                    let free = store.free_addresses("net", 10, 100, 4).await.unwrap();
                    match store.apply(claim_address("net", free[0], owner)).await {
                        Ok(()) => return (free[0], owner),
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => panic!("claiming {}: {e:?}", free[0]),
                    }
                }
                panic!("no address after 100 tries");
            })
        })
        .collect();
    let mut held = Vec::new();
    for c in claimers {
        held.push(c.await.unwrap());
    }
    held.sort();
    let hosts: Vec<u32> = held.iter().map(|(h, _)| *h).collect();
    assert_eq!(hosts, (10..20).collect::<Vec<_>>(), "distinct, and the lowest");
    let listed = store.list_addresses(Some("net")).await.unwrap();
    assert_eq!(listed.iter().map(|a| (a.host, a.owner)).collect::<Vec<_>>(), held);
    for (host, owner) in [held[2], held[5]] {
        let mut set = WriteSet::new();
        set.push(Write::ReleaseAddresses { owner });
        store.apply(set).await.unwrap();
        assert!(store.list_addresses(None).await.unwrap().iter().all(|a| a.host != host));
    }
    assert_eq!(store.free_addresses("net", 10, 100, 3).await.unwrap(), [12, 15, 20], "released ones first");
}

pub async fn free_addresses_skip_held_ones_lowest_first(store: &dyn Store) {
    for host in [2, 3, 5, 9] {
        store.apply(claim_address("net", host, Uuid::new_v4())).await.unwrap();
    }
    store.apply(claim_address("other", 4, Uuid::new_v4())).await.unwrap();
    assert_eq!(store.free_addresses("net", 2, 10, 10).await.unwrap(), [4, 6, 7, 8, 10]);
    assert_eq!(store.free_addresses("net", 2, 10, 2).await.unwrap(), [4, 6], "at most the limit");
    assert_eq!(store.free_addresses("net", 6, 8, 10).await.unwrap(), [6, 7, 8], "within the range");
    assert_eq!(store.free_addresses("net", 1, 12, 3).await.unwrap(), [1, 4, 6]);
    assert!(store.free_addresses("net", 2, 3, 5).await.unwrap().is_empty(), "a full range");
    assert_eq!(
        store.free_addresses("net", 2, 12, u32::MAX).await.unwrap(),
        [4, 6, 7, 8, 10, 11, 12],
        "no more than exist"
    );
    assert_eq!(store.free_addresses("wide", 1, u32::MAX, 3).await.unwrap(), [1, 2, 3], "a wide, empty range");
    assert_eq!(store.free_addresses("other", 1, 5, 10).await.unwrap(), [1, 2, 3, 5], "networks are apart");
    assert!(matches!(store.apply(claim_address("other", 4, Uuid::new_v4())).await, Err(StoreError::Conflict(_))));
}

pub async fn every_held_address_is_listed_with_its_owner(store: &dyn Store) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut set = WriteSet::new();
    set.push(Write::ClaimAddress { network: "net-b".into(), host: 7, owner: a });
    set.push(Write::ClaimAddress { network: "net-a".into(), host: 9, owner: a });
    set.push(Write::ClaimAddress { network: "net-a".into(), host: 3, owner: b });
    store.apply(set).await.unwrap();
    let hold = |network: &str, host, owner| AddressHold { network: network.into(), host, owner };
    assert_eq!(
        store.list_addresses(None).await.unwrap(),
        [hold("net-a", 3, b), hold("net-a", 9, a), hold("net-b", 7, a)]
    );
    assert_eq!(store.list_addresses(Some("net-b")).await.unwrap(), [hold("net-b", 7, a)]);
    let mut set = WriteSet::new();
    set.push(Write::ReleaseAddresses { owner: a });
    store.apply(set).await.unwrap();
    assert_eq!(store.list_addresses(None).await.unwrap(), [hold("net-a", 3, b)], "a's, in every network, are gone");
}

pub async fn changes_move_after_a_committed_write_set(store: &dyn Store) {
    let mut changes = store.changes();
    changes.borrow_and_update();
    let mut set = WriteSet::new();
    set.push(Write::PutAlias { kind: "k".into(), alias: "a".into(), id: Uuid::new_v4() });
    store.apply(set).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("the counter moved within a second")
        .unwrap();
}

pub async fn a_polling_reader_sees_every_event_once_in_order(store: Arc<dyn Store>) {
    let p = project(&*store, Quota::default()).await;
    let appended = Arc::new(AtomicBool::new(false));
    let poller = {
        let (store, appended) = (store.clone(), appended.clone());
        tokio::spawn(async move {
            let (mut last, mut seen) = (0, Vec::new());
            loop {
                // Read whether the appenders were done before reading: then an empty read is the end.
                let done = appended.load(Ordering::SeqCst);
                let batch = store.events_after(None, last, 7).await.unwrap();
                for e in &batch {
                    assert!(e.seq > last, "sequence went from {last} back to {}", e.seq);
                    last = e.seq;
                    seen.push(e.seq);
                }
                if batch.is_empty() {
                    if done {
                        return seen;
                    }
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let appenders: Vec<_> = (0..4)
        .map(|a| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..25 {
                    let mut set = WriteSet::new();
                    set.push(Write::AppendEvent(event(p.id, &format!("{a}.{n}.1"))));
                    set.push(Write::AppendEvent(event(p.id, &format!("{a}.{n}.2"))));
                    store.apply(set).await.unwrap();
                }
            })
        })
        .collect();
    for a in appenders {
        a.await.unwrap();
    }
    appended.store(true, Ordering::SeqCst);
    let seen = poller.await.unwrap();
    let all: Vec<i64> = store.events_after(None, 0, 1000).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(all.len(), 200);
    assert_eq!(seen, all, "the poller missed none");
}

pub async fn the_latest_event_seq_is_the_newest_in_scope(store: &dyn Store) {
    assert_eq!(store.latest_event_seq(None).await.unwrap(), 0, "no event yet");
    let (p, other, quiet) = (
        project(store, Quota::default()).await,
        project(store, Quota::default()).await,
        project(store, Quota::default()).await,
    );
    for project_id in [p.id, other.id, p.id, other.id, p.id] {
        let mut set = WriteSet::new();
        set.push(Write::AppendEvent(event(project_id, "x")));
        store.apply(set).await.unwrap();
    }
    let newest = |id: Option<Uuid>| async move { store.events_after(id, 0, 100).await.unwrap().last().unwrap().seq };
    assert_eq!(store.latest_event_seq(None).await.unwrap(), newest(None).await);
    assert_eq!(store.latest_event_seq(Some(p.id)).await.unwrap(), newest(Some(p.id)).await);
    assert_eq!(store.latest_event_seq(Some(other.id)).await.unwrap(), newest(Some(other.id)).await);
    assert!(newest(Some(other.id)).await < newest(None).await);
    assert_eq!(store.latest_event_seq(Some(quiet.id)).await.unwrap(), 0);
}

/// The audit log keeps entries in order, filtered by organization, time, key and resource (a path segment,
/// matched literally), pages by sequence number and forgets entries past their retention.
pub async fn the_audit_log_is_filtered_paged_and_pruned(store: &dyn Store) {
    use nimbus_core::audit::{AuditEntry, AuditQuery};
    let (org, other) = (Uuid::new_v4(), Uuid::new_v4());
    let t0 = nimbus_core::now() - time::Duration::days(10);
    let entry = |minutes: i64, org: Option<Uuid>, key: &str, path: &str| AuditEntry {
        seq: 0,
        at: t0 + time::Duration::minutes(minutes),
        organization_id: org,
        project_id: None,
        key_id: Some(key.to_string()),
        role: None,
        source: Some("127.0.0.1".into()),
        request_id: format!("r{minutes}"),
        method: "POST".into(),
        path: path.into(),
        status: 202,
    };
    let id = Uuid::new_v4();
    store
        .append_audit(&[
            entry(0, Some(org), "NIMa", &format!("/v1/instances/{id}/stop")),
            entry(1, Some(other), "NIMb", "/v1/instances"),
            entry(2, Some(org), "NIMa", "/v1/instances/a_b"),
            entry(3, None, "NIMx", "/v1/instances/a%b"),
            entry(60 * 24 * 9, Some(org), "NIMc", &format!("/v1/instances/{id}")),
        ])
        .await
        .unwrap();
    let list = |q: AuditQuery| async move {
        store.list_audit(&q).await.unwrap().into_iter().map(|e| e.request_id).collect::<Vec<_>>()
    };
    assert_eq!(list(AuditQuery::default()).await, ["r0", "r1", "r2", "r3", "r12960"]);
    assert_eq!(list(AuditQuery { organization_id: Some(org), ..Default::default() }).await, ["r0", "r2", "r12960"]);
    assert_eq!(list(AuditQuery { key_id: Some("NIMb".into()), ..Default::default() }).await, ["r1"]);
    let resource = |r: &str| AuditQuery { resource: Some(r.into()), ..Default::default() };
    assert_eq!(list(resource(&id.to_string())).await, ["r0", "r12960"]);
    assert_eq!(list(resource("a_b")).await, ["r2"], "'_' is no wildcard");
    assert_eq!(list(resource("a%b")).await, ["r3"], "'%' is no wildcard");
    let window = AuditQuery {
        since: Some(t0 + time::Duration::minutes(1)),
        until: Some(t0 + time::Duration::minutes(3)),
        ..Default::default()
    };
    assert_eq!(list(window).await, ["r1", "r2"]);
    let all = store.list_audit(&AuditQuery::default()).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "numbered in order");
    let page = AuditQuery { after_seq: Some(all[1].seq), limit: 2, ..Default::default() };
    assert_eq!(list(page).await, ["r2", "r3"]);
    assert_eq!(store.prune_audit(t0 + time::Duration::days(1)).await.unwrap(), 4);
    assert_eq!(list(AuditQuery::default()).await, ["r12960"]);
}

/// Revocations move, once committed, when a key or a project (with its keys) is deleted, and not for other
/// writes: what caches of authenticated keys listen to.
pub async fn revocations_move_when_keys_or_projects_go(store: &dyn Store) {
    let mut revocations = store.revocations();
    revocations.borrow_and_update();
    let p = project(store, Quota::default()).await;
    let key = ApiKey {
        key_id: "NIMgone".into(),
        name: "k".into(),
        project_id: p.id,
        role: Role::Member,
        secret: "s".into(),
        secret_sha256: "gone-hash".into(),
        created_at: nimbus_core::now(),
    };
    store.put_api_key(&key).await.unwrap();
    let mut set = WriteSet::new();
    set.push(Write::InsertRecord(Record::new("template", Uuid::new_v4(), None, "t", &1)));
    store.apply(set).await.unwrap();
    assert!(!revocations.has_changed().unwrap(), "no revocation in creating things");
    assert!(!store.delete_api_key("NIMnone").await.unwrap());
    assert!(!revocations.has_changed().unwrap(), "no revocation in deleting nothing");
    assert!(store.delete_api_key("NIMgone").await.unwrap());
    assert!(revocations.has_changed().unwrap(), "a deleted key");
    revocations.borrow_and_update();
    let mut set = WriteSet::new();
    set.push(Write::DeleteProject { id: p.id });
    store.apply(set).await.unwrap();
    assert!(revocations.has_changed().unwrap(), "a deleted project");
}

/// Expands to one test per conformance case, each on a fresh store made by `$make` (see the module's
/// documentation).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            projects_get_distinct_stable_numeric_ids,
            instances_are_listed_by_label_through_the_index,
            scheduled_and_unplaced_instances_are_read_alone,
            a_claim_and_its_start_commit_together,
            an_operation_leased_as_it_is_recorded_is_claimed_only_when_its_lease_runs_out,
            a_stale_generation_loses_and_writes_nothing,
            a_failing_write_rolls_back_the_whole_set,
            quota_is_enforced_inside_the_transaction,
            usage_counters_follow_every_instance_change,
            instances_page_by_id_within_a_project,
            instances_page_by_offset_in_any_order_with_a_count,
            operations_page_by_offset_newest_first_with_a_count,
            instances_and_operations_filter_by_addresses_tags_groups_and_times,
            destroyed_records_are_kept_out_of_sight_until_asked_for,
            instances_are_numbered_once_and_never_reuse_a_number,
            a_restarted_server_takes_back_every_lease_its_claims_held,
            hosts_register_heartbeat_and_change_by_generation,
            hosts_carry_what_is_placed_on_them,
            placement_reads_gpus_only_when_asked,
            records_are_listed_by_name,
            events_are_sequenced_and_scoped,
            idempotency_keys_replay_reject_and_release,
            an_idempotency_key_belongs_to_its_api_key,
            a_dead_holder_that_applied_nothing_is_taken_over_and_its_late_write_refused,
            a_request_that_applied_is_answered_from_what_it_made,
            only_the_holding_request_marks_its_key,
            a_sweep_drops_holds_that_can_no_longer_apply,
            the_integrity_check_passes_a_sound_store_and_finds_a_dangling_address,
            aliases_are_unique_both_ways,
            addresses_are_lowest_free_and_released,
            api_keys_are_found_by_secret_hash,
            public_records_are_seen_by_every_project,
            an_empty_project_and_then_its_organization_can_be_deleted,
            an_expected_alias_guards_the_whole_set,
            records_are_inserted_once_and_changed_by_generation,
            operations_are_claimed_oldest_first_and_by_one_worker,
            an_expired_lease_passes_to_another_worker,
            a_renewed_lease_holds_and_a_released_one_is_free_at_once,
            a_finished_operation_is_never_claimed_again,
            free_addresses_skip_held_ones_lowest_first,
            every_held_address_is_listed_with_its_owner,
            changes_move_after_a_committed_write_set,
            the_latest_event_seq_is_the_newest_in_scope,
            the_audit_log_is_filtered_paged_and_pruned,
            revocations_move_when_keys_or_projects_go,
        );
        $crate::conformance_tests!(@shared $make;
            sets_applied_together_stand_or_fall_alone,
            racing_workers_never_share_an_operation,
            concurrent_creates_never_overrun_the_quota,
            racing_address_claims_never_share_a_host,
            a_polling_reader_sees_every_event_once_in_order,
            concurrent_placements_never_overfill_a_host,
            concurrent_placements_keep_a_group_apart,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = $make.await else { return };
                $crate::conformance::$case(&**store).await;
            }
        )*
    };
    (@shared $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = $make.await else { return };
                $crate::conformance::$case(::std::sync::Arc::clone(&*store)).await;
            }
        )*
    };
}

#[cfg(test)]
mod sqlite_conformance {
    use std::sync::Arc;

    use crate::testing::sqlite_test_store;
    use crate::{SqlStore, Store};

    crate::conformance_tests!(async { Some(sqlite_test_store().await) });

    #[tokio::test]
    async fn a_file_database_keeps_its_data_when_reopened() {
        let test = sqlite_test_store().await;
        let p = super::project(&**test, Default::default()).await;
        let i = super::instance(p.id, "kept", 1);
        test.apply(super::insert(&i)).await.unwrap();
        let reopened = SqlStore::open(&test.url).await.unwrap();
        assert_eq!(reopened.get_instance(i.id).await.unwrap().unwrap().name, "kept");
        assert_eq!(reopened.get_project(p.id).await.unwrap().unwrap().numeric_id, p.numeric_id);
    }

    #[tokio::test]
    async fn an_in_memory_store_keeps_its_data_on_its_one_connection() {
        let store = SqlStore::open_in_memory().await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        let p = super::project(&store, Default::default()).await;
        let i = super::instance(p.id, "here", 1);
        store.apply(super::insert(&i)).await.unwrap();
        // Reads and writes interleaving from many tasks share the one connection without losing it.
        let store: Arc<dyn Store> = Arc::new(store);
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.get_instance(i.id).await.unwrap().map(|i| i.name) })
            })
            .collect();
        for r in readers {
            assert_eq!(r.await.unwrap().as_deref(), Some("here"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_opening_one_new_file_at_once_both_work() {
        let test = sqlite_test_store().await;
        let dir = std::path::Path::new(test.url.trim_start_matches("sqlite://")).parent().unwrap().to_owned();
        let url = format!("sqlite://{}", dir.join("second.db").display());
        let (a, b) = tokio::join!(SqlStore::open(&url), SqlStore::open(&url));
        let (a, b) = (a.unwrap(), b.unwrap());
        let p = super::project(&a, Default::default()).await;
        assert_eq!(b.get_project(p.id).await.unwrap().unwrap().numeric_id, p.numeric_id);
    }
}

#[cfg(test)]
mod postgres_conformance {
    use std::time::Duration;

    use crate::testing::{fresh_postgres_database, postgres_test_store};
    use crate::{SqlStore, Store, Write, WriteSet};

    crate::conformance_tests!(postgres_test_store());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_on_one_database_see_each_others_writes_at_once() {
        let Some((url, _database)) = fresh_postgres_database().await else { return };
        // Opening at once also races their migrations: both must come up.
        let (a, b) = tokio::join!(SqlStore::open(&url), SqlStore::open(&url));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.backend(), "postgres");
        for (writer, reader) in [(&a, &b), (&b, &a)] {
            let mut changes = reader.changes();
            changes.borrow_and_update();
            let record = crate::Record::new("template", uuid::Uuid::new_v4(), None, "shared", &1);
            let mut set = WriteSet::new();
            set.push(Write::InsertRecord(record.clone()));
            writer.apply(set).await.unwrap();
            tokio::time::timeout(Duration::from_secs(1), changes.changed())
                .await
                .expect("the other server heard of the write within a second")
                .unwrap();
            assert_eq!(reader.get_record("template", record.id).await.unwrap(), Some(record));
        }
    }

    /// A key deleted through one server moves the other's revocations (its key cache forgets everything).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_deleted_on_one_server_is_revoked_on_the_other() {
        let Some((url, _database)) = fresh_postgres_database().await else { return };
        let (a, b) = (SqlStore::open(&url).await.unwrap(), SqlStore::open(&url).await.unwrap());
        let key = nimbus_core::tenancy::ApiKey {
            key_id: "NIMshared".into(),
            name: "k".into(),
            project_id: uuid::Uuid::new_v4(),
            role: nimbus_core::tenancy::Role::Member,
            secret: "s".into(),
            secret_sha256: "shared-hash".into(),
            created_at: nimbus_core::now(),
        };
        a.put_api_key(&key).await.unwrap();
        let mut revocations = b.revocations();
        revocations.borrow_and_update();
        assert!(a.delete_api_key("NIMshared").await.unwrap());
        tokio::time::timeout(Duration::from_secs(1), revocations.changed())
            .await
            .expect("the other server heard of the revocation within a second")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_store_leaves_no_connection_behind() {
        use sqlx::{Connection, Row};
        let Some((url, database)) = fresh_postgres_database().await else { return };
        let sessions = |db: String| async move {
            let mut admin = sqlx::PgConnection::connect(&url_of_server()).await.unwrap();
            let row = sqlx::query("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(db)
                .fetch_one(&mut admin)
                .await
                .unwrap();
            row.get::<i64, _>(0)
        };
        let store = SqlStore::open(&url).await.unwrap();
        store.latest_event_seq(None).await.unwrap();
        assert!(sessions(database.name().to_string()).await >= 2, "the pool and the change listener");
        drop(store);
        // The listener task and the pool's connections go with the store, not with the process.
        for _ in 0..50 {
            if sessions(database.name().to_string()).await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("connections outlived their store by 5 s");
    }

    fn url_of_server() -> String {
        std::env::var(crate::testing::DATABASE_URL_VAR).unwrap()
    }
}
