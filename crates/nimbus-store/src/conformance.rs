//! The conformance suite every store backend passes. Each case takes a fresh, empty store.
//!
//! A backend runs it with `nimbus_store::conformance_tests!(async { MyStore::open(...).await.unwrap() });`
//! inside a test module, which expands to one `#[tokio::test]` per case.

use nimbus_core::event::Event;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::Actor;
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

fn instance(project_id: Uuid, name: &str, vcpus: u32) -> Instance {
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
        price_hourly: None,
        expected_shutdown_at: None,
        host: None,
        lock_operation_id: None,
        create_operation_id: None,
        generation: 1,
        extensions: Default::default(),
        created_at: now,
        updated_at: now,
    }
}

fn insert(i: &Instance) -> WriteSet {
    let mut set = WriteSet::new();
    set.push(Write::PutInstance { instance: i.clone(), expected_generation: None });
    set
}

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
    let by_name = InstanceQuery { project_id: Some(p.id), name: Some("i3".into()), ..Default::default() };
    assert_eq!(store.list_instances(&by_name).await.unwrap()[0].id, ids[3]);
    let by_state = InstanceQuery { project_id: Some(p.id), state: Some(InstanceState::Running), ..Default::default() };
    assert!(store.list_instances(&by_state).await.unwrap().is_empty());
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

pub async fn idempotency_keys_replay_reject_and_release(store: &dyn Store) {
    let p = project(store, Quota::default()).await;
    assert_eq!(store.idempotency_claim(p.id, "k", "h1").await.unwrap(), IdempotencyClaim::New);
    assert_eq!(store.idempotency_claim(p.id, "k", "h1").await.unwrap(), IdempotencyClaim::InProgress);
    store.idempotency_finish(p.id, "k", 202, "{}").await.unwrap();
    assert_eq!(
        store.idempotency_claim(p.id, "k", "h1").await.unwrap(),
        IdempotencyClaim::Replay { status: 202, body: "{}".into() }
    );
    assert_eq!(store.idempotency_claim(p.id, "k", "h2").await.unwrap(), IdempotencyClaim::Mismatch);
    assert_eq!(store.idempotency_claim(p.id, "other", "h").await.unwrap(), IdempotencyClaim::New);
    store.idempotency_release(p.id, "other").await.unwrap();
    assert_eq!(store.idempotency_claim(p.id, "other", "h").await.unwrap(), IdempotencyClaim::New);
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
    assert_eq!(store.allocate_address("net", 2, 4, a).await.unwrap(), 2);
    assert_eq!(store.allocate_address("net", 2, 4, b).await.unwrap(), 3);
    assert_eq!(store.allocate_address("net", 2, 4, a).await.unwrap(), 2, "same instance, same address");
    let mut set = WriteSet::new();
    set.push(Write::ReleaseAddresses { instance_id: a });
    store.apply(set).await.unwrap();
    assert_eq!(store.allocate_address("net", 2, 4, c).await.unwrap(), 2);
    assert_eq!(store.allocate_address("net", 2, 4, Uuid::new_v4()).await.unwrap(), 4);
    assert!(store.allocate_address("net", 2, 4, Uuid::new_v4()).await.is_err(), "the range is full");
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
    set.push(Write::PutRecord(Record::new("template", Uuid::new_v4(), None, "public", &1)));
    set.push(Write::PutRecord(Record::new("template", Uuid::new_v4(), Some(p.id), "mine", &2)));
    store.apply(set).await.unwrap();
    let names = |rs: Vec<Record>| rs.into_iter().map(|r| r.name).collect::<std::collections::BTreeSet<_>>();
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
    set.push(Write::PutRecord(Record::new("ssh_key", Uuid::new_v4(), Some(p.id), "mine", &1)));
    store.apply(set).await.unwrap();
    let i = instance(p.id, "web", 1);
    store.apply(insert(&i)).await.unwrap();
    // An organization with a project, a project with an instance: refused, and nothing of the set is done.
    for write in [Write::DeleteOrganization { id: p.organization_id }, Write::DeleteProject { id: p.id }] {
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: "ssh_key".into(), id: Uuid::new_v4() });
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

pub async fn an_expected_alias_guards_the_whole_set(store: &dyn Store) {
    let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut set = WriteSet::new();
    set.push(Write::PutAlias { kind: "account.username".into(), alias: "alice".into(), id });
    store.apply(set).await.unwrap();
    let guarded = |expected: Uuid, record: Uuid| {
        let mut set = WriteSet::new();
        set.push(Write::ExpectAlias { kind: "account.username".into(), alias: "alice".into(), id: expected });
        set.push(Write::PutRecord(Record::new("account", record, None, "alice", &1)));
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

/// Expands to one test per conformance case, each on a fresh store made by `$make`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            projects_get_distinct_stable_numeric_ids,
            a_stale_generation_loses_and_writes_nothing,
            a_failing_write_rolls_back_the_whole_set,
            quota_is_enforced_inside_the_transaction,
            instances_page_by_id_within_a_project,
            events_are_sequenced_and_scoped,
            idempotency_keys_replay_reject_and_release,
            aliases_are_unique_both_ways,
            addresses_are_lowest_free_and_released,
            api_keys_are_found_by_secret_hash,
            public_records_are_seen_by_every_project,
            an_empty_project_and_then_its_organization_can_be_deleted,
            an_expected_alias_guards_the_whole_set,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::$case(&store).await;
            }
        )*
    };
}

#[cfg(test)]
mod sqlite_conformance {
    crate::conformance_tests!(async { crate::SqliteStore::open_in_memory().await.unwrap() });

    #[tokio::test]
    async fn a_file_database_keeps_its_data_when_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/nimbus.db", dir.path().display());
        let store = crate::SqliteStore::open(&url).await.unwrap();
        let p = super::project(&store, Default::default()).await;
        let i = super::instance(p.id, "kept", 1);
        crate::Store::apply(&store, super::insert(&i)).await.unwrap();
        drop(store);
        let store = crate::SqliteStore::open(&url).await.unwrap();
        assert_eq!(crate::Store::get_instance(&store, i.id).await.unwrap().unwrap().name, "kept");
        assert_eq!(crate::Store::get_project(&store, p.id).await.unwrap().unwrap().numeric_id, p.numeric_id);
    }
}
