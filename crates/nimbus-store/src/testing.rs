//! Stores for tests, in this crate and in the others. [`test_store`] gives a fresh, empty store: on
//! PostgreSQL when `NIMBUS_TEST_DATABASE_URL` names a server (a database of its own, created for it and
//! dropped after it), on SQLite in a temporary directory otherwise. Whatever a store needs lives exactly as
//! long as its [`TestStore`].
//!
//! Helpers here panic on failure: they run only in tests, where a panic is the report.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use uuid::Uuid;

use std::time::Duration;

use nimbus_core::catalog::Zone;
use nimbus_core::event::Event;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::tenancy::{ApiKey, Organization, Project, Quota, Usage};

use crate::{
    AddressHold, IdempotencyAudit, IdempotencyClaim, IdempotencyHold, IdempotencyScope, InstanceQuery, OperationQuery,
    Record, SqlStore, Store, StoreError, StoreResult, StoredHost, WriteSet,
};
use nimbus_core::host::Allocation;

/// A PostgreSQL server URL (`postgres://postgres@127.0.0.1:5433/postgres`): tests make their databases on it.
pub const DATABASE_URL_VAR: &str = "NIMBUS_TEST_DATABASE_URL";
/// `1`: PostgreSQL tests fail instead of skipping when [`DATABASE_URL_VAR`] is unset (for CI).
pub const REQUIRE_POSTGRES_VAR: &str = "NIMBUS_REQUIRE_POSTGRES";

/// A store for one test, and what it needs kept alive.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    /// The URL it was opened with, for a second store (or process) on the same database.
    pub url: String,
    // Dropped after `store` (fields drop in order): what holds the data outlives the store's connections.
    _directory: Option<TempDir>,
    _database: Option<PostgresDatabase>,
}

impl Deref for TestStore {
    type Target = Arc<dyn Store>;
    fn deref(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// PostgreSQL when [`DATABASE_URL_VAR`] is set, SQLite otherwise.
pub async fn test_store() -> TestStore {
    match postgres_server_url() {
        Some(_) => postgres_test_store().await.expect("the server URL is set"),
        None => sqlite_test_store().await,
    }
}

/// A SQLite file in a directory of its own, removed after.
pub async fn sqlite_test_store() -> TestStore {
    let dir = TempDir::new();
    let url = format!("sqlite://{}", dir.path().join("nimbus.db").display());
    let store = SqlStore::open(&url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
    TestStore { store: Arc::new(store), url, _directory: Some(dir), _database: None }
}

/// A store on a fresh PostgreSQL database, or `None` (after saying so) when no server is configured; panics
/// instead when [`postgres_required`].
pub async fn postgres_test_store() -> Option<TestStore> {
    let (url, database) = fresh_postgres_database().await?;
    let store = SqlStore::open(&url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
    Some(TestStore { store: Arc::new(store), url, _directory: None, _database: Some(database) })
}

/// Whether PostgreSQL tests must run (`NIMBUS_REQUIRE_POSTGRES=1`) rather than skip.
pub fn postgres_required() -> bool {
    std::env::var(REQUIRE_POSTGRES_VAR).is_ok_and(|v| v == "1")
}

fn postgres_server_url() -> Option<String> {
    std::env::var(DATABASE_URL_VAR).ok().filter(|u| !u.is_empty())
}

/// A new, empty database on the configured server: its URL, and a guard that drops it. `None` when no
/// server is configured (the test then passes as skipped, saying so), unless [`postgres_required`].
/// For tests that start several stores or processes on one database.
pub async fn fresh_postgres_database() -> Option<(String, PostgresDatabase)> {
    let Some(server_url) = postgres_server_url() else {
        assert!(!postgres_required(), "{REQUIRE_POSTGRES_VAR}=1 but {DATABASE_URL_VAR} is not set");
        eprintln!("skipped: set {DATABASE_URL_VAR} to a PostgreSQL server URL to run the PostgreSQL tests");
        return None;
    };
    let name = format!("nimbus_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server_url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {DATABASE_URL_VAR} {server_url}: {e}"));
    admin.execute(&*format!("CREATE DATABASE \"{name}\"")).await.unwrap_or_else(|e| panic!("creating {name}: {e}"));
    let _ = admin.close().await;
    let url = with_database(&server_url, &name);
    Some((url, PostgresDatabase { server_url, name }))
}

/// A database made by [`fresh_postgres_database`]; dropping this drops it, connections and all.
pub struct PostgresDatabase {
    server_url: String,
    name: String,
}

impl PostgresDatabase {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which must not be blocked on from within; a thread with a
        // runtime of its own may be waited for.
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server_url).await.map_err(|e| e.to_string())?;
                // FORCE: the dropped store's pool may not have closed its connections yet.
                admin
                    .execute(&*format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// `server_url` naming database `name` instead of its own: the path replaced, the query kept.
fn with_database(server_url: &str, name: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (server_url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

/// A store that fails chosen calls, in front of a real one: for tests of what callers do when the store
/// fails between two writes (a full disk, a lost connection), which no real fault hits on cue.
/// `fail_next("idempotency_finish", 1)` makes the next such call fail with a `Backend` error, writing
/// nothing; every other call goes to the inner store.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: std::sync::Mutex<std::collections::HashMap<&'static str, u32>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> FaultyStore {
        FaultyStore { inner, faults: Default::default() }
    }

    /// Fails the next `times` calls of the method named `method`.
    pub fn fail_next(&self, method: &'static str, times: u32) {
        self.faults.lock().expect("faults").insert(method, times);
    }

    fn check(&self, method: &'static str) -> StoreResult<()> {
        let mut faults = self.faults.lock().expect("faults");
        match faults.get_mut(method) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(StoreError::Backend(format!("injected failure of {method}")))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn put_organization(&self, org: &Organization) -> StoreResult<()> {
        self.check("put_organization")?;
        self.inner.put_organization(org).await
    }
    async fn get_organization(&self, id: Uuid) -> StoreResult<Option<Organization>> {
        self.inner.get_organization(id).await
    }
    async fn create_project(&self, project: &Project) -> StoreResult<Project> {
        self.check("create_project")?;
        self.inner.create_project(project).await
    }
    async fn get_project(&self, id: Uuid) -> StoreResult<Option<Project>> {
        self.inner.get_project(id).await
    }
    async fn get_project_by_numeric_id(&self, numeric_id: i64) -> StoreResult<Option<Project>> {
        self.inner.get_project_by_numeric_id(numeric_id).await
    }
    async fn list_projects(&self, organization_id: Uuid) -> StoreResult<Vec<Project>> {
        self.inner.list_projects(organization_id).await
    }
    async fn set_quota(&self, project_id: Uuid, quota: Quota) -> StoreResult<()> {
        self.check("set_quota")?;
        self.inner.set_quota(project_id, quota).await
    }
    async fn usage(&self, project_id: Uuid) -> StoreResult<Usage> {
        self.inner.usage(project_id).await
    }
    async fn count_api_keys(&self) -> StoreResult<u64> {
        self.inner.count_api_keys().await
    }
    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        self.check("put_api_key")?;
        self.inner.put_api_key(key).await
    }
    async fn get_api_key(&self, key_id: &str) -> StoreResult<Option<ApiKey>> {
        self.inner.get_api_key(key_id).await
    }
    async fn get_api_key_by_secret_hash(&self, sha256_hex: &str) -> StoreResult<Option<ApiKey>> {
        self.inner.get_api_key_by_secret_hash(sha256_hex).await
    }
    async fn list_api_keys(&self, project_id: Uuid) -> StoreResult<Vec<ApiKey>> {
        self.inner.list_api_keys(project_id).await
    }
    async fn delete_api_key(&self, key_id: &str) -> StoreResult<bool> {
        self.check("delete_api_key")?;
        self.inner.delete_api_key(key_id).await
    }
    async fn put_zone(&self, zone: &Zone) -> StoreResult<()> {
        self.check("put_zone")?;
        self.inner.put_zone(zone).await
    }
    async fn list_zones(&self) -> StoreResult<Vec<Zone>> {
        self.inner.list_zones().await
    }
    async fn get_record(&self, kind: &str, id: Uuid) -> StoreResult<Option<Record>> {
        self.inner.get_record(kind, id).await
    }
    async fn list_records(&self, kind: &str, project_id: Option<Uuid>) -> StoreResult<Vec<Record>> {
        self.inner.list_records(kind, project_id).await
    }
    async fn get_instance(&self, id: Uuid) -> StoreResult<Option<Instance>> {
        self.inner.get_instance(id).await
    }
    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<Vec<Instance>> {
        self.inner.list_instances(query).await
    }
    async fn count_instances(&self, query: &InstanceQuery) -> StoreResult<u64> {
        self.inner.count_instances(query).await
    }
    async fn get_operation(&self, id: Uuid) -> StoreResult<Option<Operation>> {
        self.inner.get_operation(id).await
    }
    async fn list_operations(&self, query: &OperationQuery) -> StoreResult<Vec<Operation>> {
        self.inner.list_operations(query).await
    }
    async fn count_operations(&self, query: &OperationQuery) -> StoreResult<u64> {
        self.inner.count_operations(query).await
    }
    async fn apply(&self, set: WriteSet) -> StoreResult<()> {
        self.check("apply")?;
        self.inner.apply(set).await
    }
    async fn claim_operation(&self, owner: &str, lease: Duration) -> StoreResult<Option<Operation>> {
        self.check("claim_operation")?;
        self.inner.claim_operation(owner, lease).await
    }
    async fn claim_and_start(
        &self,
        owner: &str,
        lease: Duration,
        start: crate::StartClaimed,
    ) -> StoreResult<Option<crate::Claimed>> {
        self.check("claim_operation")?;
        self.inner.claim_and_start(owner, lease, start).await
    }
    async fn renew_lease(&self, id: Uuid, owner: &str, lease: Duration) -> StoreResult<bool> {
        self.check("renew_lease")?;
        self.inner.renew_lease(id, owner, lease).await
    }
    async fn release_lease(&self, id: Uuid, owner: &str) -> StoreResult<()> {
        self.check("release_lease")?;
        self.inner.release_lease(id, owner).await
    }
    async fn release_leases_of(&self, server: &str) -> StoreResult<u64> {
        self.check("release_leases_of")?;
        self.inner.release_leases_of(server).await
    }
    async fn get_host(&self, name: &str) -> StoreResult<Option<StoredHost>> {
        self.inner.get_host(name).await
    }
    async fn list_hosts(&self) -> StoreResult<Vec<StoredHost>> {
        self.inner.list_hosts().await
    }
    async fn renew_host(&self, name: &str, lease: Duration) -> StoreResult<bool> {
        self.check("renew_host")?;
        self.inner.renew_host(name, lease).await
    }
    async fn host_allocations(&self) -> StoreResult<std::collections::BTreeMap<String, Allocation>> {
        self.inner.host_allocations().await
    }
    async fn hosts_with_allocations(&self, with_gpus: bool) -> StoreResult<Vec<(StoredHost, Allocation)>> {
        self.inner.hosts_with_allocations(with_gpus).await
    }
    async fn group_members_hosts(&self, groups: &[Uuid]) -> StoreResult<Vec<(String, Uuid)>> {
        self.inner.group_members_hosts(groups).await
    }
    async fn list_records_named(&self, kind: &str, name: &str) -> StoreResult<Vec<Record>> {
        self.inner.list_records_named(kind, name).await
    }
    async fn events_after(&self, project_id: Option<Uuid>, after_seq: i64, limit: u32) -> StoreResult<Vec<Event>> {
        self.inner.events_after(project_id, after_seq, limit).await
    }
    async fn latest_event_seq(&self, project_id: Option<Uuid>) -> StoreResult<i64> {
        self.inner.latest_event_seq(project_id).await
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes()
    }

    fn new_work(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.new_work()
    }
    fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.revocations()
    }
    async fn resolve_alias(&self, kind: &str, alias: &str) -> StoreResult<Option<Uuid>> {
        self.inner.resolve_alias(kind, alias).await
    }
    async fn alias_of(&self, kind: &str, id: Uuid) -> StoreResult<Option<String>> {
        self.inner.alias_of(kind, id).await
    }
    async fn free_addresses(&self, network: &str, first: u32, last: u32, limit: u32) -> StoreResult<Vec<u32>> {
        self.inner.free_addresses(network, first, last, limit).await
    }
    async fn list_addresses(&self, network: Option<&str>) -> StoreResult<Vec<AddressHold>> {
        self.inner.list_addresses(network).await
    }
    async fn idempotency_claim(
        &self,
        scope: &IdempotencyScope,
        request_hash: &str,
        server: &str,
        lease: Duration,
    ) -> StoreResult<IdempotencyClaim> {
        self.check("idempotency_claim")?;
        self.inner.idempotency_claim(scope, request_hash, server, lease).await
    }
    async fn idempotency_renew(&self, hold: &IdempotencyHold, lease: Duration) -> StoreResult<bool> {
        self.check("idempotency_renew")?;
        self.inner.idempotency_renew(hold, lease).await
    }
    async fn idempotency_finish(&self, hold: &IdempotencyHold, status: u16, body: &str) -> StoreResult<()> {
        self.check("idempotency_finish")?;
        self.inner.idempotency_finish(hold, status, body).await
    }
    async fn idempotency_release(&self, hold: &IdempotencyHold) -> StoreResult<()> {
        self.check("idempotency_release")?;
        self.inner.idempotency_release(hold).await
    }
    async fn idempotency_sweep(&self, server: Option<&str>) -> StoreResult<u64> {
        self.check("idempotency_sweep")?;
        self.inner.idempotency_sweep(server).await
    }
    async fn idempotency_audit(&self) -> StoreResult<IdempotencyAudit> {
        self.inner.idempotency_audit().await
    }
    async fn check_integrity(&self) -> StoreResult<crate::IntegrityReport> {
        self.inner.check_integrity().await
    }
    async fn append_audit(&self, entries: &[nimbus_core::audit::AuditEntry]) -> StoreResult<()> {
        self.inner.append_audit(entries).await
    }
    async fn list_audit(&self, q: &nimbus_core::audit::AuditQuery) -> StoreResult<Vec<nimbus_core::audit::AuditEntry>> {
        self.inner.list_audit(q).await
    }
    async fn prune_audit(&self, before: time::OffsetDateTime) -> StoreResult<u64> {
        self.inner.prune_audit(before).await
    }
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("nimbus-store-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn a_server_url_names_the_new_database_and_keeps_its_options() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5433/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5433/t1"
        );
        assert_eq!(with_database("postgres://u:p@h/db?sslmode=disable", "t2"), "postgres://u:p@h/t2?sslmode=disable");
        assert_eq!(with_database("postgres://h:5432", "t3"), "postgres://h:5432/t3");
    }
}
