//! The embedded store: SQLite in WAL mode inside the data directory.
//!
//! One process owns the file. Writes are serialized by an in-process mutex as well as by SQLite itself, so a
//! transaction never meets `SQLITE_BUSY` halfway and the quota check at its end sees every earlier write.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::catalog::Zone;
use nimbus_core::event::Event;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::tenancy::{ApiKey, Organization, Project, Quota, Usage};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::*;

/// Schema versions, applied in order on start. Append; never edit a shipped one.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE organizations (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE projects (
    numeric_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    organization_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE zones (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE records (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    project_id TEXT,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX records_by_project ON records (kind, project_id);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    disk_gb INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX instances_by_project ON instances (project_id, id);
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX operations_by_project ON operations (project_id, id);
CREATE INDEX operations_by_state ON operations (state);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE aliases (
    kind TEXT NOT NULL,
    alias TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (kind, alias),
    UNIQUE (kind, id)
);
CREATE TABLE addresses (
    network TEXT NOT NULL,
    host INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    PRIMARY KEY (network, host)
);
CREATE TABLE idempotency (
    project_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER,
    body TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, key)
);
"#];

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECONDS: i64 = 24 * 3600;

pub struct SqliteStore {
    pool: SqlitePool,
    write_lock: Mutex<()>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode<T: for<'de> serde::Deserialize<'de>>(body: &str) -> StoreResult<T> {
    serde_json::from_str(body).map_err(|e| StoreError::Backend(format!("corrupt row: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain types serialize")
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite:///path/nimbus.db` or `sqlite::memory:`)
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        let memory = url.contains(":memory:");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(backend)?
            .create_if_missing(true)
            .journal_mode(if memory { SqliteJournalMode::Memory } else { SqliteJournalMode::Wal })
            // FULL: a committed operation survives a power cut, not only a process kill.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if memory { 1 } else { 8 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(backend)?;
        let store = SqliteStore { pool, write_lock: Mutex::new(()) };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn open_in_memory() -> StoreResult<SqliteStore> {
        SqliteStore::open("sqlite::memory:").await
    }

    async fn migrate(&self) -> StoreResult<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(backend)?;
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            tracing::info!(version = i + 1, "store schema migrated");
        }
        Ok(())
    }

    async fn usage_in<'e, E: sqlx::SqliteExecutor<'e>>(exec: E, project_id: Uuid) -> StoreResult<Usage> {
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(vcpus),0), COALESCE(SUM(memory_mib),0), COALESCE(SUM(disk_gb),0)
             FROM instances WHERE project_id = ? AND state NOT IN ('destroying', 'destroyed')",
        )
        .bind(project_id.to_string())
        .fetch_one(exec)
        .await
        .map_err(backend)?;
        Ok(Usage {
            instances: row.get::<i64, _>(0) as u64,
            vcpus: row.get::<i64, _>(1) as u64,
            memory_mib: row.get::<i64, _>(2) as u64,
            disk_gb: row.get::<i64, _>(3) as u64,
        })
    }
}

impl SqliteStore {
    /// The one JSON document that `sql` (a `SELECT body ... WHERE key = ?`) finds for `key`, if any.
    async fn document<T: for<'de> serde::Deserialize<'de>>(
        &self,
        sql: &str,
        key: impl ToString,
    ) -> StoreResult<Option<T>> {
        let body: Option<String> =
            sqlx::query_scalar(sql).bind(key.to_string()).fetch_optional(&self.pool).await.map_err(backend)?;
        body.map(|b| decode(&b)).transpose()
    }

    /// The JSON documents a `SELECT body ... WHERE ...` finds, in id order, at most `limit` (0: all).
    async fn documents<T: for<'de> serde::Deserialize<'de>>(
        &self,
        mut sql: QueryBuilder<'_, Sqlite>,
        limit: u32,
    ) -> StoreResult<Vec<T>> {
        let limit = if limit == 0 { i64::MAX } else { limit as i64 };
        sql.push(" ORDER BY id LIMIT ").push_bind(limit);
        let rows: Vec<String> = sql.build_query_scalar().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(|b| decode(b)).collect()
    }
}

fn project_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Project> {
    let mut p: Project = decode(row.get::<&str, _>("body"))?;
    p.numeric_id = row.get("numeric_id");
    Ok(p)
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_organization(&self, org: &Organization) -> StoreResult<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query(
            "INSERT INTO organizations (id, body) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
        )
        .bind(org.id.to_string())
        .bind(encode(org))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_organization(&self, id: Uuid) -> StoreResult<Option<Organization>> {
        self.document("SELECT body FROM organizations WHERE id = ?", id).await
    }

    async fn create_project(&self, project: &Project) -> StoreResult<Project> {
        let _w = self.write_lock.lock().await;
        let result = sqlx::query("INSERT INTO projects (id, organization_id, body) VALUES (?, ?, ?)")
            .bind(project.id.to_string())
            .bind(project.organization_id.to_string())
            .bind(encode(project))
            .execute(&self.pool)
            .await;
        match result {
            Ok(done) => Ok(Project { numeric_id: done.last_insert_rowid(), ..project.clone() }),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists(format!("project {}", project.id))),
            Err(e) => Err(backend(e)),
        }
    }

    async fn get_project(&self, id: Uuid) -> StoreResult<Option<Project>> {
        let row = sqlx::query("SELECT numeric_id, body FROM projects WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn get_project_by_numeric_id(&self, numeric_id: i64) -> StoreResult<Option<Project>> {
        let row = sqlx::query("SELECT numeric_id, body FROM projects WHERE numeric_id = ?")
            .bind(numeric_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn list_projects(&self, organization_id: Uuid) -> StoreResult<Vec<Project>> {
        let rows = sqlx::query("SELECT numeric_id, body FROM projects WHERE organization_id = ? ORDER BY numeric_id")
            .bind(organization_id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(project_from_row).collect()
    }

    async fn set_quota(&self, project_id: Uuid, quota: Quota) -> StoreResult<()> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let row = sqlx::query("SELECT numeric_id, body FROM projects WHERE id = ?")
            .bind(project_id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or_else(|| StoreError::NotFound(format!("project {project_id}")))?;
        let mut project = project_from_row(&row)?;
        project.quota = quota;
        sqlx::query("UPDATE projects SET body = ? WHERE id = ?")
            .bind(encode(&project))
            .bind(project_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn usage(&self, project_id: Uuid) -> StoreResult<Usage> {
        Self::usage_in(&self.pool, project_id).await
    }

    async fn count_api_keys(&self) -> StoreResult<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM api_keys").fetch_one(&self.pool).await.map_err(backend)?;
        Ok(n as u64)
    }

    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let _w = self.write_lock.lock().await;
        let result = sqlx::query("INSERT INTO api_keys (key_id, project_id, secret_sha256, body) VALUES (?, ?, ?, ?)")
            .bind(&key.key_id)
            .bind(key.project_id.to_string())
            .bind(&key.secret_sha256)
            .bind(encode(key))
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists(format!("api key {}", key.key_id))),
            Err(e) => Err(backend(e)),
        }
    }

    async fn get_api_key(&self, key_id: &str) -> StoreResult<Option<ApiKey>> {
        self.document("SELECT body FROM api_keys WHERE key_id = ?", key_id).await
    }

    async fn get_api_key_by_secret_hash(&self, sha256_hex: &str) -> StoreResult<Option<ApiKey>> {
        self.document("SELECT body FROM api_keys WHERE secret_sha256 = ?", sha256_hex).await
    }

    async fn list_api_keys(&self, project_id: Uuid) -> StoreResult<Vec<ApiKey>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT body FROM api_keys WHERE project_id = ? ORDER BY key_id")
            .bind(project_id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(|b| decode(b)).collect()
    }

    async fn delete_api_key(&self, key_id: &str) -> StoreResult<bool> {
        let _w = self.write_lock.lock().await;
        let done = sqlx::query("DELETE FROM api_keys WHERE key_id = ?")
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_zone(&self, zone: &Zone) -> StoreResult<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query(
            "INSERT INTO zones (name, body) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET body = excluded.body",
        )
        .bind(&zone.name)
        .bind(encode(zone))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn list_zones(&self) -> StoreResult<Vec<Zone>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT body FROM zones ORDER BY name").fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(|b| decode(b)).collect()
    }

    async fn get_record(&self, kind: &str, id: Uuid) -> StoreResult<Option<Record>> {
        let row = sqlx::query("SELECT project_id, name, body FROM records WHERE kind = ? AND id = ?")
            .bind(kind)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| record_from_row(kind, id, &r)).transpose()
    }

    async fn list_records(&self, kind: &str, project_id: Option<Uuid>) -> StoreResult<Vec<Record>> {
        let rows = match project_id {
            Some(p) => {
                sqlx::query(
                    "SELECT id, project_id, name, body FROM records
                 WHERE kind = ? AND (project_id = ? OR project_id IS NULL) ORDER BY id",
                )
                .bind(kind)
                .bind(p.to_string())
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query("SELECT id, project_id, name, body FROM records WHERE kind = ? ORDER BY id")
                    .bind(kind)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let id = parse_uuid(r.get("id"))?;
                record_from_row(kind, id, r)
            })
            .collect()
    }

    async fn get_instance(&self, id: Uuid) -> StoreResult<Option<Instance>> {
        self.document("SELECT body FROM instances WHERE id = ?", id).await
    }

    async fn list_instances(&self, q: &InstanceQuery) -> StoreResult<Vec<Instance>> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT body FROM instances WHERE 1=1");
        if let Some(p) = q.project_id {
            sql.push(" AND project_id = ").push_bind(p.to_string());
        }
        if let Some(state) = q.state {
            sql.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(n) = &q.name {
            sql.push(" AND name = ").push_bind(n.clone());
        }
        if let Some(a) = q.after {
            sql.push(" AND id > ").push_bind(a.to_string());
        }
        self.documents(sql, q.limit).await
    }

    async fn get_operation(&self, id: Uuid) -> StoreResult<Option<Operation>> {
        self.document("SELECT body FROM operations WHERE id = ?", id).await
    }

    async fn list_operations(&self, q: &OperationQuery) -> StoreResult<Vec<Operation>> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT body FROM operations WHERE 1=1");
        if let Some(p) = q.project_id {
            sql.push(" AND project_id = ").push_bind(p.to_string());
        }
        if let Some(t) = q.target_id {
            sql.push(" AND target_id = ").push_bind(t.to_string());
        }
        if q.unfinished {
            sql.push(" AND state IN ('pending', 'running')");
        }
        if let Some(a) = q.after {
            sql.push(" AND id > ").push_bind(a.to_string());
        }
        self.documents(sql, q.limit).await
    }

    async fn apply(&self, set: WriteSet) -> StoreResult<()> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for write in &set.writes {
            apply_one(&mut tx, write).await?;
        }
        if let Some(project_id) = set.enforce_quota_of {
            let quota = sqlx::query("SELECT numeric_id, body FROM projects WHERE id = ?")
                .bind(project_id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .map(|r| project_from_row(&r))
                .transpose()?
                .ok_or_else(|| StoreError::NotFound(format!("project {project_id}")))?
                .quota;
            let usage = Self::usage_in(&mut *tx, project_id).await?;
            if let Some(why) = quota.exceeded_by(&usage) {
                // Dropping `tx` rolls every write back.
                return Err(StoreError::QuotaExceeded(why));
            }
        }
        tx.commit().await.map_err(backend)
    }

    async fn events_after(&self, project_id: Option<Uuid>, after_seq: i64, limit: u32) -> StoreResult<Vec<Event>> {
        let rows = match project_id {
            Some(p) => {
                sqlx::query("SELECT seq, body FROM events WHERE project_id = ? AND seq > ? ORDER BY seq LIMIT ?")
                    .bind(p.to_string())
                    .bind(after_seq)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
                    .bind(after_seq)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let mut e: Event = decode(r.get::<&str, _>("body"))?;
                e.seq = r.get("seq");
                Ok(e)
            })
            .collect()
    }

    async fn resolve_alias(&self, kind: &str, alias: &str) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM aliases WHERE kind = ? AND alias = ?")
            .bind(kind)
            .bind(alias)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        id.map(|s| parse_uuid(&s)).transpose()
    }

    async fn alias_of(&self, kind: &str, id: Uuid) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT alias FROM aliases WHERE kind = ? AND id = ?")
            .bind(kind)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn allocate_address(&self, network: &str, first: u32, last: u32, instance_id: Uuid) -> StoreResult<u32> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let held: Option<i64> = sqlx::query_scalar("SELECT host FROM addresses WHERE network = ? AND instance_id = ?")
            .bind(network)
            .bind(instance_id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if let Some(h) = held {
            return Ok(h as u32);
        }
        let used: Vec<i64> = sqlx::query_scalar("SELECT host FROM addresses WHERE network = ? ORDER BY host")
            .bind(network)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let used: std::collections::HashSet<u32> = used.into_iter().map(|h| h as u32).collect();
        let host = (first..=last)
            .find(|h| !used.contains(h))
            .ok_or_else(|| StoreError::QuotaExceeded(format!("no free address left in {network}")))?;
        sqlx::query("INSERT INTO addresses (network, host, instance_id) VALUES (?, ?, ?)")
            .bind(network)
            .bind(host as i64)
            .bind(instance_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(host)
    }

    async fn idempotency_claim(
        &self,
        project_id: Uuid,
        key: &str,
        request_hash: &str,
    ) -> StoreResult<IdempotencyClaim> {
        let _w = self.write_lock.lock().await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("DELETE FROM idempotency WHERE created_at < ?")
            .bind(now - IDEMPOTENCY_TTL_SECONDS)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let row = sqlx::query("SELECT request_hash, status, body FROM idempotency WHERE project_id = ? AND key = ?")
            .bind(project_id.to_string())
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let claim = match row {
            Some(r) if r.get::<&str, _>("request_hash") != request_hash => IdempotencyClaim::Mismatch,
            Some(r) => match (r.get::<Option<i64>, _>("status"), r.get::<Option<String>, _>("body")) {
                (Some(status), Some(body)) => IdempotencyClaim::Replay { status: status as u16, body },
                _ => IdempotencyClaim::InProgress,
            },
            None => {
                sqlx::query("INSERT INTO idempotency (project_id, key, request_hash, created_at) VALUES (?, ?, ?, ?)")
                    .bind(project_id.to_string())
                    .bind(key)
                    .bind(request_hash)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                IdempotencyClaim::New
            }
        };
        tx.commit().await.map_err(backend)?;
        Ok(claim)
    }

    async fn idempotency_finish(&self, project_id: Uuid, key: &str, status: u16, body: &str) -> StoreResult<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query("UPDATE idempotency SET status = ?, body = ? WHERE project_id = ? AND key = ?")
            .bind(status as i64)
            .bind(body)
            .bind(project_id.to_string())
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn idempotency_release(&self, project_id: Uuid, key: &str) -> StoreResult<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query("DELETE FROM idempotency WHERE project_id = ? AND key = ? AND status IS NULL")
            .bind(project_id.to_string())
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

fn parse_uuid(s: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Backend(format!("corrupt id {s:?}: {e}")))
}

fn record_from_row(kind: &str, id: Uuid, r: &sqlx::sqlite::SqliteRow) -> StoreResult<Record> {
    Ok(Record {
        kind: kind.to_string(),
        id,
        project_id: r.get::<Option<String>, _>("project_id").map(|s| parse_uuid(&s)).transpose()?,
        name: r.get("name"),
        body: decode(r.get::<&str, _>("body"))?,
    })
}

async fn apply_one(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, write: &Write) -> StoreResult<()> {
    match write {
        Write::PutInstance { instance: i, expected_generation: None } => {
            let result = sqlx::query(
                "INSERT INTO instances (id, project_id, name, state, generation, vcpus, memory_mib, disk_gb, body)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(i.id.to_string())
            .bind(i.project_id.to_string())
            .bind(&i.name)
            .bind(i.state.as_str())
            .bind(i.generation)
            .bind(i.vcpus as i64)
            .bind(i.memory_mib as i64)
            .bind(i.disk_size_gb as i64)
            .bind(encode(i))
            .execute(&mut **tx)
            .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists(format!("instance {}", i.id))),
                Err(e) => Err(backend(e)),
            }
        }
        Write::PutInstance { instance: i, expected_generation: Some(expected) } => {
            let done = sqlx::query(
                "UPDATE instances SET name = ?, state = ?, generation = ?, vcpus = ?, memory_mib = ?, disk_gb = ?,
                 body = ? WHERE id = ? AND generation = ?",
            )
            .bind(&i.name)
            .bind(i.state.as_str())
            .bind(i.generation)
            .bind(i.vcpus as i64)
            .bind(i.memory_mib as i64)
            .bind(i.disk_size_gb as i64)
            .bind(encode(i))
            .bind(i.id.to_string())
            .bind(expected)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("instance {}", i.id)));
            }
            Ok(())
        }
        Write::DeleteInstance { id, expected_generation } => {
            let done = sqlx::query("DELETE FROM instances WHERE id = ? AND generation = ?")
                .bind(id.to_string())
                .bind(expected_generation)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("instance {id}")));
            }
            Ok(())
        }
        Write::PutOperation(op) => {
            sqlx::query(
                "INSERT INTO operations (id, project_id, target_id, state, body) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, body = excluded.body",
            )
            .bind(op.id.to_string())
            .bind(op.project_id.to_string())
            .bind(op.target.id.to_string())
            .bind(op.state.as_str())
            .bind(encode(op))
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
            Ok(())
        }
        Write::PutRecord(r) => {
            sqlx::query(
                "INSERT INTO records (kind, id, project_id, name, body) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (kind, id) DO UPDATE SET project_id = excluded.project_id, name = excluded.name,
                 body = excluded.body",
            )
            .bind(&r.kind)
            .bind(r.id.to_string())
            .bind(r.project_id.map(|p| p.to_string()))
            .bind(&r.name)
            .bind(r.body.to_string())
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
            Ok(())
        }
        Write::DeleteRecord { kind, id } => {
            sqlx::query("DELETE FROM records WHERE kind = ? AND id = ?")
                .bind(kind)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            Ok(())
        }
        Write::AppendEvent(e) => {
            sqlx::query("INSERT INTO events (project_id, body) VALUES (?, ?)")
                .bind(e.project_id.to_string())
                .bind(encode(e))
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            Ok(())
        }
        Write::PutAlias { kind, alias, id } => {
            let result = sqlx::query("INSERT INTO aliases (kind, alias, id) VALUES (?, ?, ?)")
                .bind(kind)
                .bind(alias)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists(format!("{kind} alias {alias}"))),
                Err(e) => Err(backend(e)),
            }
        }
        Write::DeleteAlias { kind, alias } => {
            sqlx::query("DELETE FROM aliases WHERE kind = ? AND alias = ?")
                .bind(kind)
                .bind(alias)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            Ok(())
        }
        Write::ReleaseAddresses { instance_id } => {
            sqlx::query("DELETE FROM addresses WHERE instance_id = ?")
                .bind(instance_id.to_string())
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            Ok(())
        }
        Write::ExpectAlias { kind, alias, id } => {
            let held: Option<String> = sqlx::query_scalar("SELECT id FROM aliases WHERE kind = ? AND alias = ?")
                .bind(kind)
                .bind(alias)
                .fetch_optional(&mut **tx)
                .await
                .map_err(backend)?;
            if held.as_deref() != Some(id.to_string().as_str()) {
                return Err(StoreError::Conflict(format!("{kind} alias {alias} no longer names {id}")));
            }
            Ok(())
        }
        Write::PutApiKey(key) => {
            let result =
                sqlx::query("INSERT INTO api_keys (key_id, project_id, secret_sha256, body) VALUES (?, ?, ?, ?)")
                    .bind(&key.key_id)
                    .bind(key.project_id.to_string())
                    .bind(&key.secret_sha256)
                    .bind(encode(key))
                    .execute(&mut **tx)
                    .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists(format!("api key {}", key.key_id))),
                Err(e) => Err(backend(e)),
            }
        }
        Write::DeleteProject { id } => {
            let id = id.to_string();
            let instances: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE project_id = ?")
                .bind(&id)
                .fetch_one(&mut **tx)
                .await
                .map_err(backend)?;
            if instances > 0 {
                return Err(StoreError::Conflict(format!("project {id} still has {instances} instance(s)")));
            }
            for sql in [
                "DELETE FROM api_keys WHERE project_id = ?",
                "DELETE FROM records WHERE project_id = ?",
                "DELETE FROM idempotency WHERE project_id = ?",
            ] {
                sqlx::query(sql).bind(&id).execute(&mut **tx).await.map_err(backend)?;
            }
            let done =
                sqlx::query("DELETE FROM projects WHERE id = ?").bind(&id).execute(&mut **tx).await.map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("project {id}")));
            }
            Ok(())
        }
        Write::DeleteOrganization { id } => {
            let id = id.to_string();
            let projects: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE organization_id = ?")
                .bind(&id)
                .fetch_one(&mut **tx)
                .await
                .map_err(backend)?;
            if projects > 0 {
                return Err(StoreError::Conflict(format!("organization {id} still has {projects} project(s)")));
            }
            let done = sqlx::query("DELETE FROM organizations WHERE id = ?")
                .bind(&id)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("organization {id}")));
            }
            Ok(())
        }
    }
}
