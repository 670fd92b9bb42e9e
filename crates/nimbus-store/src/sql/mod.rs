//! The store in portable SQL over sqlx's `Any` driver: one body of queries for SQLite (the embedded
//! default) and PostgreSQL (any number of servers on one database).
//!
//! Invariants:
//! - Every write runs in a transaction from [`SqlStore::write`]: `BEGIN IMMEDIATE` on SQLite, so writers
//!   are serialized across processes; READ COMMITTED on PostgreSQL, where every precondition is either a
//!   compare-and-swap in the statement's `WHERE` (which PostgreSQL re-checks against the newest row
//!   version after waiting for a concurrent writer) or a row lock taken before the read it guards.
//! - After a write commits, [`notify::Changes`] moves, here and (PostgreSQL) in every other server.
//! - SQL uses numbered placeholders (`$1`, `$2`, ...), which PostgreSQL and sqlx's SQLite driver both bind
//!   by number; ids are TEXT, numbers BIGINT/INTEGER and documents JSON in TEXT on both backends.
//! - On a SQLite file the group committer's batches run on a connection of its own through rusqlite
//!   ([`lite`]): same SQL, same error classes; [`statement`] runs a statement wherever the caller is.
//! - What differs between the backends lives in [`backend`] (connections, clocks, locks, errors),
//!   [`migrations`] (DDL) and [`notify`] (hearing other servers' writes).

mod audit;
mod backend;
mod group_commit;
mod hosts;
pub mod integrity;
mod lite;
mod migrations;
mod notify;
mod read_cache;
mod sealing;
mod statement;
mod writes;

use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::catalog::Zone;
use nimbus_core::event::Event;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::Operation;
use nimbus_core::tenancy::{ApiKey, Organization, Project, Quota, Usage};
use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use self::backend::{is_unique_violation, Backend};
pub(crate) use self::statement::{column, column_at, query, Conn, Row, Statement};
use crate::*;

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECONDS: i64 = 24 * 3600;

/// Connections to a PostgreSQL server per store: enough for a server's concurrent requests and workers,
/// few enough that several servers fit in the default `max_connections` (100).
const POSTGRES_POOL_SIZE: u32 = 10;

/// Connections to a SQLite file: one writes at a time, the others read beside it (WAL).
const SQLITE_POOL_SIZE: u32 = 8;

/// The one implementation of [`Store`], for `sqlite:` and `postgres://` URLs.
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// SQLite only. `BEGIN IMMEDIATE` is what makes write transactions correct, across processes too;
    /// this mutex only spares them SQLite's busy handler, which waits for the write lock by sleeping and
    /// polling, when the competing writer is in this very process. Never held on PostgreSQL, whose
    /// writers wait on row locks instead.
    sqlite_writer: Option<std::sync::Arc<Mutex<()>>>,
    changes: notify::Changes,
    /// Where [`Store::apply`] and the lease writes go: batched with whatever else is waiting into one
    /// transaction, one commit (one fsync) for all of them.
    group: group_commit::GroupCommit,
    /// SQLite only: see [`read_cache`].
    read_cache: Option<std::sync::Arc<read_cache::ReadCache>>,
    /// A SQLite file only: where point reads run in place ([`lite::Readers`]).
    readers: Option<lite::Readers>,
    /// Seals secrets at rest (`crate::seal`); without, they are written in clear (tests, tools).
    seal: Option<std::sync::Arc<SealKeys>>,
}

/// One value bound to a numbered placeholder.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    Null,
}

impl From<&str> for Arg {
    fn from(s: &str) -> Arg {
        Arg::Text(s.to_string())
    }
}
impl From<String> for Arg {
    fn from(s: String) -> Arg {
        Arg::Text(s)
    }
}
impl From<&String> for Arg {
    fn from(s: &String) -> Arg {
        Arg::Text(s.clone())
    }
}
impl From<i64> for Arg {
    fn from(n: i64) -> Arg {
        Arg::Int(n)
    }
}
impl From<u32> for Arg {
    fn from(n: u32) -> Arg {
        Arg::Int(n.into())
    }
}
impl From<u64> for Arg {
    /// Sizes and counts: a number past `i64::MAX` cannot be stored, and none is ever that large.
    fn from(n: u64) -> Arg {
        Arg::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<Uuid> for Arg {
    fn from(id: Uuid) -> Arg {
        Arg::Text(id.to_string())
    }
}
impl From<Option<Uuid>> for Arg {
    fn from(id: Option<Uuid>) -> Arg {
        id.map_or(Arg::Null, Arg::from)
    }
}
impl From<Option<&String>> for Arg {
    fn from(s: Option<&String>) -> Arg {
        s.map_or(Arg::Null, Arg::from)
    }
}

/// `vec![Arg::from(a), Arg::from(b), ...]`, the values for `$1`, `$2`, ...
macro_rules! args {
    ($($arg:expr),* $(,)?) => { vec![$($crate::sql::Arg::from($arg)),*] };
}
pub(crate) use args;

/// Dynamic SQL whose conditions are added one by one, each beside the value it binds. Placeholders are
/// numbered here because sqlx's `QueryBuilder<Any>` emits `?`, which PostgreSQL rejects.
pub(crate) struct Filtered {
    sql: String,
    args: Vec<Arg>,
}

impl Filtered {
    /// `select` must end in a `WHERE` clause that conditions can be `AND`ed to (`WHERE 1=1` will do).
    pub(crate) fn new(select: &str) -> Filtered {
        Filtered { sql: select.to_string(), args: Vec::new() }
    }

    /// Appends ` AND {condition}$N`, `$N` being `value`'s placeholder: `and("project_id = ", id)`.
    pub(crate) fn and(&mut self, condition: &str, value: impl Into<Arg>) -> &mut Filtered {
        self.args.push(value.into());
        self.sql.push_str(&format!(" AND {condition}${}", self.args.len()));
        self
    }

    /// Appends ` AND {condition}` where `condition` holds `{}` for `value`'s placeholder.
    pub(crate) fn and_where(&mut self, condition: &str, value: impl Into<Arg>) -> &mut Filtered {
        self.args.push(value.into());
        self.sql.push_str(&format!(" AND {}", condition.replace("{}", &format!("${}", self.args.len()))));
        self
    }

    /// Appends ` AND {condition}` where `condition` holds `{0}`, `{1}`, ... for `values`' placeholders (each
    /// may stand more than once) and `{*}` for all of them, comma-separated.
    pub(crate) fn and_with(&mut self, condition: &str, values: Vec<Arg>) -> &mut Filtered {
        let mut condition = condition.to_string();
        let mut all = Vec::new();
        for (n, v) in values.into_iter().enumerate() {
            self.args.push(v);
            let placeholder = format!("${}", self.args.len());
            condition = condition.replace(&format!("{{{n}}}"), &placeholder);
            all.push(placeholder);
        }
        self.sql.push_str(&format!(" AND {}", condition.replace("{*}", &all.join(", "))));
        self
    }

    /// Appends SQL that binds nothing.
    pub(crate) fn push(&mut self, sql: &str) -> &mut Filtered {
        self.sql.push_str(sql);
        self
    }

    /// Appends ` LIMIT $N` unless `limit` is 0 (all).
    pub(crate) fn limit(&mut self, limit: u32) -> &mut Filtered {
        if limit > 0 {
            self.args.push(limit.into());
            self.sql.push_str(&format!(" LIMIT ${}", self.args.len()));
        }
        self
    }

    /// Appends ` LIMIT $N OFFSET $M`: at most `limit` (0: all) after skipping `offset`.
    pub(crate) fn window(&mut self, limit: u32, offset: u32) -> &mut Filtered {
        if offset == 0 {
            return self.limit(limit);
        }
        // SQLite takes an OFFSET only after a LIMIT.
        let limit = if limit == 0 { i64::MAX } else { i64::from(limit) };
        self.args.push(limit.into());
        self.args.push(offset.into());
        self.sql.push_str(&format!(" LIMIT ${} OFFSET ${}", self.args.len() - 1, self.args.len()));
        self
    }

    /// Appends ` AND {column} IN ($N, ...)`; no values: nothing matches.
    pub(crate) fn any_of(&mut self, column: &str, values: impl Iterator<Item = Arg>) -> &mut Filtered {
        let mut placeholders = Vec::new();
        for v in values {
            self.args.push(v);
            placeholders.push(format!("${}", self.args.len()));
        }
        if placeholders.is_empty() {
            self.sql.push_str(" AND 1=0");
        } else {
            self.sql.push_str(&format!(" AND {column} IN ({})", placeholders.join(", ")));
        }
        self
    }

    pub(crate) fn query(&self) -> Statement<'_> {
        query(&self.sql, self.args.clone())
    }
}

pub(crate) fn decode<T: for<'de> serde::Deserialize<'de>>(what: &str, body: &str) -> StoreResult<T> {
    serde_json::from_str(body).map_err(|e| StoreError::Backend(format!("corrupt {what}: {e}")))
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain types serialize")
}

pub(crate) fn parse_uuid(s: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Backend(format!("corrupt id {s:?}: {e}")))
}

fn body_of<T: for<'de> serde::Deserialize<'de>>(what: &str, row: &Row) -> StoreResult<T> {
    decode(what, &column::<String>(row, "body")?)
}

pub(crate) fn project_from_row(row: &Row) -> StoreResult<Project> {
    let mut p: Project = body_of("project", row)?;
    p.numeric_id = column(row, "numeric_id")?;
    Ok(p)
}

fn record_from_row(seal: Option<&SealKeys>, kind: &str, row: &Row) -> StoreResult<Record> {
    let id = parse_uuid(&column::<String>(row, "id")?)?;
    let mut body: serde_json::Value = decode(kind, &column::<String>(row, "body")?)?;
    if let serde_json::Value::String(sealed) = &body {
        if SealKeys::is_sealed(sealed) {
            body = decode(kind, &crate::seal::open_with(seal, &record_place(kind, id), sealed)?)?;
        }
    }
    Ok(Record {
        kind: kind.to_string(),
        id,
        project_id: column::<Option<String>>(row, "project_id")?.map(|s| parse_uuid(&s)).transpose()?,
        name: column(row, "name")?,
        body,
        generation: column(row, "generation")?,
    })
}

/// Record kinds whose whole document is a secret, sealed at rest: instances' generated passwords.
pub const SEALED_RECORD_KINDS: &[&str] = &["password"];

/// What a sealed value is bound to (see `crate::seal`): the row it is stored in.
fn record_place(kind: &str, id: Uuid) -> String {
    format!("record:{kind}:{id}")
}
fn api_key_place(key_id: &str) -> String {
    format!("api_key:{key_id}")
}
fn idempotency_place(s: &IdempotencyScope) -> String {
    format!("idempotency:{}:{}:{}", s.project_id, s.api_key_id, s.key)
}

fn event_from_row(row: &Row) -> StoreResult<Event> {
    let mut e: Event = body_of("event", row)?;
    e.seq = column(row, "seq")?;
    Ok(e)
}

fn host_of(n: i64) -> StoreResult<u32> {
    u32::try_from(n).map_err(|_| StoreError::Backend(format!("corrupt host number {n}")))
}

/// An open write transaction; see [`SqlStore::write`]. End it with [`SqlStore::finish`].
///
/// The transaction is begun, committed and rolled back with plain statements on a pooled connection, so
/// that this code, not the driver's bookkeeping, decides what happens to the connection after a failure: a
/// connection whose transaction did not end cleanly (a COMMIT refused by a full disk, a future dropped in
/// the middle) is closed rather than handed to the next writer with a transaction still open on it.
pub(crate) struct WriteTx {
    held: Held,
    /// Set once COMMIT or ROLLBACK went through.
    ended: bool,
    // Declared after `held`, so that it is released only once the connection is back (or closed).
    _sqlite_writer: Option<OwnedMutexGuard<()>>,
}

/// The connection a write transaction runs on.
enum Held {
    Pooled(PoolConnection<Any>),
    /// The group committer's own SQLite connection ([`lite`]), put back in `home` when the transaction
    /// ended and closed (rolling back whatever is open) when it did not.
    Lite {
        conn: Option<rusqlite::Connection>,
        home: LiteHome,
    },
}

/// Where the group committer's own SQLite connection waits between batches (`None` until opened, and after
/// a batch that did not end cleanly closed it).
pub(crate) type LiteHome = std::sync::Arc<std::sync::Mutex<Option<rusqlite::Connection>>>;

impl WriteTx {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match &mut self.held {
            Held::Pooled(conn) => Conn::Sqlx(conn),
            Held::Lite { conn, .. } => Conn::Lite(conn.as_mut().expect("held until the transaction drops")),
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        match &mut self.held {
            Held::Pooled(conn) if !self.ended => conn.close_on_drop(),
            Held::Pooled(_) => {}
            Held::Lite { conn, home } if self.ended => {
                *home.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = conn.take();
            }
            Held::Lite { .. } => {}
        }
    }
}

/// Begins a write transaction on a connection of `pool` (see [`Backend::begin_write`]), holding
/// `sqlite_writer` (SQLite) until it ends.
pub(crate) async fn begin_write(
    pool: &AnyPool,
    backend: Backend,
    sqlite_writer: Option<&std::sync::Arc<Mutex<()>>>,
) -> StoreResult<WriteTx> {
    let guard = match sqlite_writer {
        Some(m) => Some(m.clone().lock_owned().await),
        None => None,
    };
    let mut conn = pool.acquire().await.map_err(|e| backend.error("connecting", e))?;
    if let Err(e) = query(backend.begin_write(), vec![]).execute(&mut *conn).await {
        // No transaction was begun: the connection is as it was.
        return Err(backend.error("beginning a write", e));
    }
    Ok(WriteTx { held: Held::Pooled(conn), ended: false, _sqlite_writer: guard })
}

/// [`begin_write`] on the group committer's own SQLite connection (opening `path` when `home` has none),
/// holding `sqlite_writer` until it ends. Blocks: run it on the committer's blocking thread only.
pub(crate) async fn begin_lite_write(
    path: &std::path::Path,
    home: &LiteHome,
    sqlite_writer: &std::sync::Arc<Mutex<()>>,
) -> StoreResult<WriteTx> {
    let guard = sqlite_writer.clone().lock_owned().await;
    let backend = Backend::Sqlite;
    let parked = home.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let mut conn = match parked {
        Some(conn) => conn,
        None => lite::open(path).map_err(|e| backend.error("connecting", e))?,
    };
    if let Err(e) = query(backend.begin_write(), vec![]).execute(&mut conn).await {
        *home.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
        return Err(backend.error("beginning a write", e));
    }
    Ok(WriteTx { held: Held::Lite { conn: Some(conn), home: home.clone() }, ended: false, _sqlite_writer: Some(guard) })
}

impl SqlStore {
    /// Opens the database `url` names (`sqlite://PATH`, created if missing; `sqlite::memory:`; or
    /// `postgres://...`, which must exist) and brings its schema up to date.
    pub async fn open(url: &str) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let options = backend::connect_options(backend, url)?;
        let pool_options = match backend {
            Backend::Sqlite => {
                let in_memory = backend::sqlite_in_memory(url);
                AnyPoolOptions::new()
                    // An in-memory database lives and dies with its connection: exactly one, kept forever.
                    .max_connections(if in_memory { 1 } else { SQLITE_POOL_SIZE })
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    // A connection to a local file does not go stale, and the check before every
                    // acquire is one more hand-off to the connection's thread per query: half the cost
                    // of an indexed read.
                    .test_before_acquire(false)
                    .after_connect(move |conn, _| Box::pin(set_pragmas(conn, in_memory)))
            }
            Backend::Postgres => AnyPoolOptions::new().max_connections(POSTGRES_POOL_SIZE),
        };
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to the {} database: {e}", backend.name())))?;
        migrations::migrate(&pool, backend).await?;
        let changes = match backend {
            Backend::Sqlite => notify::Changes::local(),
            Backend::Postgres => notify::Changes::listening(url).await?,
        };
        let sqlite_writer = (backend == Backend::Sqlite).then(|| std::sync::Arc::new(Mutex::new(())));
        let read_cache = (backend == Backend::Sqlite).then(|| std::sync::Arc::new(read_cache::ReadCache::default()));
        let file = backend::sqlite_file(backend, url)?;
        let readers = file.as_deref().map(lite::Readers::new);
        let group = group_commit::GroupCommit::start(
            pool.clone(),
            backend,
            file,
            sqlite_writer.clone(),
            changes.bumper(),
            read_cache.clone(),
        );
        Ok(SqlStore { pool, backend, sqlite_writer, changes, group, read_cache, readers, seal: None })
    }

    /// Seals secrets with `keys` from now on; reads open what they sealed. Call [`SqlStore::reseal`] next,
    /// so that what was written in clear, or sealed by a retired key, is sealed with the current one.
    pub fn with_seal_keys(mut self, keys: SealKeys) -> SqlStore {
        self.seal = Some(std::sync::Arc::new(keys));
        self
    }

    /// A private in-memory SQLite database.
    pub async fn open_in_memory() -> StoreResult<SqlStore> {
        SqlStore::open("sqlite::memory:").await
    }

    /// Where a read of one row (or of a few, by key) runs: see [`statement::PointRead`].
    fn point_read(&self) -> statement::PointRead<'_> {
        statement::PointRead { pool: &self.pool, in_place: self.readers.as_ref() }
    }

    fn fail(&self, doing: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        let doing = doing.to_string();
        move |e| self.backend.error(&doing, e)
    }

    /// Begins a write transaction (see [`Backend::begin_write`]).
    pub(crate) async fn write(&self) -> StoreResult<WriteTx> {
        begin_write(&self.pool, self.backend, self.sqlite_writer.as_ref()).await
    }

    /// Commits `w` when `result` is a success and tells waiters; otherwise rolls it back, now rather than
    /// whenever the connection is next used, so that the next writer does not wait behind it.
    pub(crate) async fn finish<T>(&self, w: WriteTx, result: StoreResult<T>) -> StoreResult<T> {
        self.end(w, result, true).await
    }

    /// [`SqlStore::finish`], telling waiters only when `changed`: a write that found nothing to do (a claim
    /// with nothing to claim) must not wake them, or idle workers would wake each other forever.
    async fn end<T>(&self, w: WriteTx, result: StoreResult<T>, changed: bool) -> StoreResult<T> {
        // Writes outside write sets are not classified: cached reads all go.
        self.end_touching(w, result, changed, &read_cache::Touched::Everything).await
    }

    /// Sends `COMMIT`; what the transaction touched is not answered from the read cache until it is
    /// answered (see `ReadCache::committing`).
    async fn commit(&self, w: &mut WriteTx, touched: &read_cache::Touched) -> Result<(), sqlx::Error> {
        let _committing = self.read_cache.as_ref().map(|c| c.committing(touched.clone()));
        query("COMMIT", vec![]).execute(w.conn()).await.map(|_| ())
    }

    /// [`SqlStore::end`] for a write that touched only what `touched` says of what reads are cached.
    pub(crate) async fn end_touching<T>(
        &self,
        mut w: WriteTx,
        result: StoreResult<T>,
        changed: bool,
        touched: &read_cache::Touched,
    ) -> StoreResult<T> {
        match result {
            Ok(value) => match self.commit(&mut w, touched).await {
                Ok(_) => {
                    w.ended = true;
                    if changed {
                        self.changes.bump();
                    }
                    Ok(value)
                }
                Err(e) => {
                    // SQLite may or may not have rolled back already (a full disk, an I/O error); either
                    // way the connection is closed when `w` drops, never reused with a transaction open.
                    let _ = query("ROLLBACK", vec![]).execute(w.conn()).await;
                    Err(self.backend.error("committing", e))
                }
            },
            Err(e) => {
                match query("ROLLBACK", vec![]).execute(w.conn()).await {
                    Ok(_) => w.ended = true,
                    Err(rollback) => tracing::warn!(error = %rollback, "rolling back a failed write"),
                }
                Err(e)
            }
        }
    }

    /// One statement in a transaction of its own.
    async fn write_one(&self, doing: &str, sql: &str, args: Vec<Arg>) -> StoreResult<u64> {
        let mut w = self.write().await?;
        let result = async {
            let n = query(sql, args).execute(w.conn()).await.map(|r| r.rows_affected()).map_err(self.fail(doing))?;
            self.mark_applied(&mut w.conn(), || serde_json::json!({})).await?;
            Ok(n)
        }
        .await;
        let changed = matches!(result, Ok(n) if n > 0);
        self.end(w, result, changed).await
    }

    /// The one JSON document `sql` (`SELECT body ... WHERE key = $1`) finds for `key`, if any.
    async fn document<T: for<'de> serde::Deserialize<'de>>(
        &self,
        what: &str,
        sql: &str,
        key: impl Into<Arg>,
    ) -> StoreResult<Option<T>> {
        let row = query(sql, vec![key.into()]).fetch_optional(self.point_read()).await.map_err(self.fail(what))?;
        row.map(|r| body_of(what, &r)).transpose()
    }

    async fn read_records(&self, kind: &str, project_id: Option<Uuid>) -> StoreResult<Vec<Record>> {
        let mut sql = Filtered::new("SELECT id, project_id, name, body, generation FROM records WHERE 1=1");
        sql.and("kind = ", kind);
        if let Some(p) = project_id {
            sql.and("(project_id IS NULL OR project_id = ", p).push(")");
        }
        sql.push(" ORDER BY id");
        let rows = sql.query().fetch_all(&self.pool).await.map_err(self.fail("listing records"))?;
        rows.iter().map(|r| record_from_row(self.seal.as_deref(), kind, r)).collect()
    }

    /// `select` with the conditions of `q` that choose instances (not those that page them).
    fn instances_matching(&self, select: &str, q: &InstanceQuery) -> Filtered {
        let mut sql = Filtered::new(select);
        if let Some(p) = q.project_id {
            sql.and("project_id = ", p);
        }
        if let Some(h) = &q.host {
            sql.and("host = ", h);
        }
        if let Some(id) = q.id {
            sql.and("id = ", id);
        }
        match q.state {
            Some(state) => {
                sql.and("state = ", state.as_str());
            }
            None if !q.with_destroyed && !q.states.contains(&InstanceState::Destroyed) => {
                sql.push(" AND state <> 'destroyed'");
            }
            None => {}
        }
        if !q.states.is_empty() {
            sql.any_of("state", q.states.iter().map(|s| Arg::from(s.as_str())));
        }
        if let Some(n) = &q.name {
            sql.and("name = ", n);
        }
        if let Some(part) = &q.name_contains {
            sql.and_where(&self.backend.contains_text("name"), part);
        }
        if q.unplaced {
            sql.push(" AND host IS NULL");
        }
        if q.shutdown_scheduled {
            sql.push(&format!(" AND {}", self.backend.shutdown_scheduled()));
        }
        for (key, value) in &q.labels {
            sql.and_where("id IN (SELECT instance_id FROM instance_labels WHERE key = {}", key);
            if let Some(p) = q.project_id {
                sql.and("project_id = ", p);
            }
            if let Some(v) = value {
                sql.and("value = ", v);
            }
            sql.push(")");
        }
        if let Some(part) = &q.id_contains {
            sql.and_where(&self.backend.contains_text("id"), part);
        }
        // The instance type has no column: read from the document, which every instance row carries.
        let instance_type = match self.backend {
            Backend::Sqlite => "json_extract(body, '$.instance_type')",
            Backend::Postgres => "(CAST(body AS jsonb) ->> 'instance_type')",
        };
        if !q.instance_types.is_empty() {
            sql.any_of(instance_type, q.instance_types.iter().map(|t| Arg::from(t.as_str())));
        }
        let starts = |negated: &str| match self.backend {
            Backend::Sqlite => format!("{negated}(instr({instance_type}, {{}}) = 1)"),
            Backend::Postgres => format!("{negated}(strpos({instance_type}, {{}}) = 1)"),
        };
        if let Some(prefix) = &q.instance_type_prefix {
            sql.and_where(&starts(""), prefix);
        }
        if let Some(prefix) = &q.instance_type_not_prefix {
            sql.and_where(&starts("NOT "), prefix);
        }
        // Addresses, tags, groups and the time of the last change are read from the document too.
        let b = self.backend;
        if let Some(part) = &q.ip_contains {
            let items = b.json_items("ip_addresses", false);
            sql.and_where(&format!("EXISTS (SELECT 1 FROM {items} WHERE {})", b.contains_text("value")), part);
        }
        let (system, user) = (b.json_items("system_labels", true), b.json_items("labels", true));
        for (key, value) in &q.tags_equal {
            // A tag's value: the system label's, else the user label's.
            let tag = format!(
                "COALESCE((SELECT value FROM {system} WHERE key = {{0}}), (SELECT value FROM {user} WHERE key = {{0}}))"
            );
            sql.and_with(&format!("{tag} = {{1}}"), vec![key.into(), value.into()]);
        }
        if !q.tag_values.is_empty() {
            let values = q.tag_values.iter().map(Arg::from).collect();
            let condition = format!(
                "(EXISTS (SELECT 1 FROM {system} WHERE value IN ({{*}})) OR EXISTS (SELECT 1 FROM {user} \
                 WHERE value IN ({{*}}) AND key NOT IN (SELECT key FROM {system})))"
            );
            sql.and_with(&condition, values);
        }
        if let Some(group) = q.not_in_security_group {
            let items = b.json_items("security_groups", false);
            sql.and_where(&format!("NOT EXISTS (SELECT 1 FROM {items} WHERE value = {{}})"), group);
        }
        if let Some(t) = q.updated_since {
            sql.and_where(&b.time_compare("updated_at", ">="), rfc3339(t));
        }
        if let Some(t) = q.updated_until {
            sql.and_where(&b.time_compare("updated_at", "<="), rfc3339(t));
        }
        sql
    }

    async fn project_row(&self, sql: &str, key: Arg) -> StoreResult<Option<Project>> {
        let row = query(sql, vec![key]).fetch_optional(&self.pool).await.map_err(self.fail("reading a project"))?;
        row.as_ref().map(project_from_row).transpose()
    }
}

/// `select` with the conditions of `q` that choose operations (not those that page them).
fn operations_matching(backend: Backend, select: &str, q: &OperationQuery) -> Filtered {
    let mut sql = Filtered::new(select);
    if let Some(p) = q.project_id {
        sql.and("project_id = ", p);
    }
    if let Some(t) = q.target_id {
        sql.and("target_id = ", t);
    }
    if q.unfinished {
        sql.push(" AND state IN ('pending', 'running')");
    }
    if !q.states.is_empty() {
        sql.any_of("state", q.states.iter().map(|s| Arg::from(s.as_str())));
    }
    if !q.kinds.is_empty() {
        // The kind has no column: read from the document, which every operation row carries.
        let kind = match backend {
            Backend::Sqlite => "json_extract(body, '$.kind')",
            Backend::Postgres => "(CAST(body AS jsonb) ->> 'kind')",
        };
        sql.any_of(kind, q.kinds.iter().map(|k| Arg::from(k.as_str())));
    }
    if let Some(t) = q.created_since {
        sql.and_where(&backend.time_compare("created_at", ">="), rfc3339(t));
    }
    if let Some(t) = q.created_until {
        sql.and_where(&backend.time_compare("created_at", "<="), rfc3339(t));
    }
    sql
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

async fn set_pragmas(conn: &mut AnyConnection, in_memory: bool) -> Result<(), sqlx::Error> {
    for pragma in backend::sqlite_pragmas(in_memory) {
        sqlx::query(pragma).execute(&mut *conn).await?;
    }
    Ok(())
}

/// What a project's live instances use, as seen by `conn` (inside a write set: including its writes): its
/// row of the counters the instance triggers keep (see migration 7), not a sum over its instances.
pub(crate) async fn usage_in(conn: &mut Conn<'_>, backend: Backend, project_id: Uuid) -> StoreResult<Usage> {
    let row = query(
        "SELECT instances, vcpus, memory_mib, disk_gb FROM usage_totals WHERE scope = 'project' AND owner = $1",
        args![project_id],
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| backend.error("reading usage", e))?;
    let count = |name: &str| -> StoreResult<u64> {
        let Some(row) = &row else { return Ok(0) };
        let n: i64 = column(row, name)?;
        u64::try_from(n).map_err(|_| StoreError::Backend(format!("corrupt usage {name} = {n}")))
    };
    let volumes = query(backend.volume_gb_of_project(), args![project_id])
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| backend.error("counting volume usage", e))?;
    let volume_gb: i64 = column(&volumes, "volume_gb")?;
    Ok(Usage {
        instances: count("instances")?,
        vcpus: count("vcpus")?,
        memory_mib: count("memory_mib")?,
        disk_gb: count("disk_gb")?,
        volume_gb: u64::try_from(volume_gb)
            .map_err(|_| StoreError::Backend(format!("corrupt volume usage {volume_gb}")))?,
    })
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        self.backend.name()
    }

    async fn put_organization(&self, org: &Organization) -> StoreResult<()> {
        self.write_one(
            "storing an organization",
            "INSERT INTO organizations (id, body) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            args![org.id, encode(org)],
        )
        .await
        .map(|_| ())
    }

    async fn get_organization(&self, id: Uuid) -> StoreResult<Option<Organization>> {
        self.document("organization", "SELECT body FROM organizations WHERE id = $1", id).await
    }

    async fn create_project(&self, project: &Project) -> StoreResult<Project> {
        let mut w = self.write().await?;
        let result = async {
            // Holds the organization while its project is added, so that a concurrent DeleteOrganization
            // (which locks it too, on PostgreSQL) sees the project or comes first.
            let lock = format!("SELECT id FROM organizations WHERE id = $1{}", self.backend.for_share());
            query(&lock, args![project.organization_id])
                .fetch_optional(w.conn())
                .await
                .map_err(self.fail("locking the organization"))?;
            let row = query(
                "INSERT INTO projects (id, organization_id, body) VALUES ($1, $2, $3) RETURNING numeric_id",
                args![project.id, project.organization_id, encode(project)],
            )
            .fetch_one(w.conn())
            .await
            .map_err(|e| match e {
                e if is_unique_violation(&e) => StoreError::AlreadyExists(format!("project {}", project.id)),
                e => self.backend.error("creating a project", e),
            })?;
            self.mark_applied(&mut w.conn(), || serde_json::json!({ "project": project.id })).await?;
            Ok(Project { numeric_id: column(&row, "numeric_id")?, ..project.clone() })
        }
        .await;
        self.finish(w, result).await
    }

    async fn get_project(&self, id: Uuid) -> StoreResult<Option<Project>> {
        self.project_row("SELECT numeric_id, body FROM projects WHERE id = $1", id.into()).await
    }

    async fn get_project_by_numeric_id(&self, numeric_id: i64) -> StoreResult<Option<Project>> {
        self.project_row("SELECT numeric_id, body FROM projects WHERE numeric_id = $1", numeric_id.into()).await
    }

    async fn list_projects(&self, organization_id: Uuid) -> StoreResult<Vec<Project>> {
        let rows = query(
            "SELECT numeric_id, body FROM projects WHERE organization_id = $1 ORDER BY numeric_id",
            args![organization_id],
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("listing projects"))?;
        rows.iter().map(project_from_row).collect()
    }

    async fn set_quota(&self, project_id: Uuid, quota: Quota) -> StoreResult<()> {
        let mut w = self.write().await?;
        let result = async {
            let select = format!("SELECT numeric_id, body FROM projects WHERE id = $1{}", self.backend.for_update());
            let row = query(&select, args![project_id])
                .fetch_optional(w.conn())
                .await
                .map_err(self.fail("reading a project"))?
                .ok_or_else(|| StoreError::NotFound(format!("project {project_id}")))?;
            let project = Project { quota, ..project_from_row(&row)? };
            query("UPDATE projects SET body = $1 WHERE id = $2", args![encode(&project), project_id])
                .execute(w.conn())
                .await
                .map_err(self.fail("setting a quota"))?;
            self.mark_applied(&mut w.conn(), || serde_json::json!({ "project": project_id })).await
        }
        .await;
        self.finish(w, result).await
    }

    async fn usage(&self, project_id: Uuid) -> StoreResult<Usage> {
        let mut conn = self.pool.acquire().await.map_err(self.fail("connecting"))?;
        usage_in(&mut Conn::Sqlx(&mut conn), self.backend, project_id).await
    }

    async fn count_api_keys(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await
            .map_err(self.fail("counting API keys"))?;
        u64::try_from(n).map_err(|_| StoreError::Backend(format!("corrupt count {n}")))
    }

    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let mut w = self.write().await?;
        let result = async {
            writes::insert_api_key(&mut w.conn(), self.backend, &self.sealed_key(key)).await?;
            self.mark_applied(&mut w.conn(), || serde_json::json!({ "api_key": key.key_id })).await
        }
        .await;
        self.finish(w, result).await
    }

    async fn get_api_key(&self, key_id: &str) -> StoreResult<Option<ApiKey>> {
        let key = self.document("API key", "SELECT body FROM api_keys WHERE key_id = $1", key_id).await?;
        key.map(|k| self.opened_key(k)).transpose()
    }

    async fn get_api_key_by_secret_hash(&self, sha256_hex: &str) -> StoreResult<Option<ApiKey>> {
        let key = self.document("API key", "SELECT body FROM api_keys WHERE secret_sha256 = $1", sha256_hex).await?;
        key.map(|k| self.opened_key(k)).transpose()
    }

    async fn list_api_keys(&self, project_id: Uuid) -> StoreResult<Vec<ApiKey>> {
        let rows = query("SELECT body FROM api_keys WHERE project_id = $1 ORDER BY key_id", args![project_id])
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("listing API keys"))?;
        rows.iter().map(|r| self.opened_key(body_of("API key", r)?)).collect()
    }

    async fn delete_api_key(&self, key_id: &str) -> StoreResult<bool> {
        let mut w = self.write().await?;
        let result = async {
            let deleted = query("DELETE FROM api_keys WHERE key_id = $1", args![key_id])
                .execute(w.conn())
                .await
                .map_err(self.fail("deleting an API key"))?
                .rows_affected();
            if let (true, Some(notify)) = (deleted > 0, self.backend.notify_revocation()) {
                query(notify, vec![]).execute(w.conn()).await.map_err(self.fail("notifying"))?;
            }
            self.mark_applied(&mut w.conn(), || serde_json::json!({})).await?;
            Ok(deleted > 0)
        }
        .await;
        let deleted = matches!(result, Ok(true));
        let deleted = self.end(w, result, deleted).await?;
        if deleted {
            self.changes.bump_revocations();
        }
        Ok(deleted)
    }

    async fn put_zone(&self, zone: &Zone) -> StoreResult<()> {
        self.write_one(
            "storing a zone",
            "INSERT INTO zones (name, body) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            args![&zone.name, encode(zone)],
        )
        .await
        .map(|_| ())
    }

    async fn list_zones(&self) -> StoreResult<Vec<Zone>> {
        let rows = query("SELECT body FROM zones ORDER BY name", vec![])
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("listing zones"))?;
        rows.iter().map(|r| body_of("zone", r)).collect()
    }

    async fn get_record(&self, kind: &str, id: Uuid) -> StoreResult<Option<Record>> {
        let cache = self.read_cache.as_deref().filter(|_| !SEALED_RECORD_KINDS.contains(&kind));
        if let Some(hit) = cache.and_then(|c| c.record(kind, id)) {
            return Ok(hit);
        }
        let stamp = cache.map(|c| c.stamp());
        let row = query(
            "SELECT id, project_id, name, body, generation FROM records WHERE kind = $1 AND id = $2",
            args![kind, id],
        )
        .fetch_optional(self.point_read())
        .await
        .map_err(self.fail("reading a record"))?;
        let found = row.map(|r| record_from_row(self.seal.as_deref(), kind, &r)).transpose()?;
        if let (Some(c), Some(stamp)) = (cache, stamp) {
            c.keep_record(stamp, kind, id, &found);
        }
        Ok(found)
    }

    async fn list_records(&self, kind: &str, project_id: Option<Uuid>) -> StoreResult<Vec<Record>> {
        // Secrets are not kept opened in memory longer than their reader needs them.
        let cache = self.read_cache.as_deref().filter(|_| !SEALED_RECORD_KINDS.contains(&kind));
        if let Some(hit) = cache.and_then(|c| c.records(kind, project_id)) {
            return Ok(hit);
        }
        let stamp = cache.map(|c| c.stamp());
        let found = self.read_records(kind, project_id).await?;
        if let (Some(c), Some(stamp)) = (cache, stamp) {
            c.keep_records(stamp, kind, project_id, &found);
        }
        Ok(found)
    }

    async fn get_instance(&self, id: Uuid) -> StoreResult<Option<Instance>> {
        if let Some(hit) = self.read_cache.as_ref().and_then(|c| c.instance(id)) {
            return Ok(hit);
        }
        let stamp = self.read_cache.as_ref().map(|c| c.stamp());
        // A destroyed instance's record is kept only to be shown by the dialects whose provider shows
        // deleted instances for a while; for everything else it is gone.
        let found =
            self.document("instance", "SELECT body FROM instances WHERE id = $1 AND state <> 'destroyed'", id).await?;
        if let (Some(c), Some(stamp)) = (&self.read_cache, stamp) {
            c.keep_instance(stamp, id, &found);
        }
        Ok(found)
    }

    async fn list_instances(&self, q: &InstanceQuery) -> StoreResult<Vec<Instance>> {
        let mut sql = self.instances_matching("SELECT body FROM instances WHERE 1=1", q);
        if let Some(a) = q.after {
            sql.and("id > ", a);
        }
        let order = match (q.before, q.order) {
            (Some(b), _) => {
                sql.and("id < ", b);
                " ORDER BY id DESC"
            }
            (None, InstanceOrder::Oldest) => " ORDER BY id",
            (None, InstanceOrder::Newest) => " ORDER BY id DESC",
            (None, InstanceOrder::NameAscending) => " ORDER BY name, id",
            (None, InstanceOrder::NameDescending) => " ORDER BY name DESC, id",
            (None, InstanceOrder::StateAscending) => " ORDER BY state, id",
            (None, InstanceOrder::StateDescending) => " ORDER BY state DESC, id",
        };
        sql.push(order).window(q.limit, q.offset);
        let rows = sql.query().fetch_all(&self.pool).await.map_err(self.fail("instance"))?;
        rows.iter().map(|r| body_of("instance", r)).collect()
    }

    async fn count_instances(&self, q: &InstanceQuery) -> StoreResult<u64> {
        let sql = self.instances_matching("SELECT COUNT(*) AS n FROM instances WHERE 1=1", q);
        let row = sql.query().fetch_one(&self.pool).await.map_err(self.fail("counting instances"))?;
        Ok(u64::try_from(column::<i64>(&row, "n")?).unwrap_or(0))
    }

    async fn get_operation(&self, id: Uuid) -> StoreResult<Option<Operation>> {
        self.document("operation", "SELECT body FROM operations WHERE id = $1", id).await
    }

    async fn list_operations(&self, q: &OperationQuery) -> StoreResult<Vec<Operation>> {
        let mut sql = operations_matching(self.backend, "SELECT body FROM operations WHERE 1=1", q);
        if let Some(a) = q.after {
            sql.and("id > ", a);
        }
        sql.push(if q.newest_first { " ORDER BY id DESC" } else { " ORDER BY id" }).window(q.limit, q.offset);
        let rows = sql.query().fetch_all(&self.pool).await.map_err(self.fail("operation"))?;
        rows.iter().map(|r| body_of("operation", r)).collect()
    }

    async fn count_operations(&self, q: &OperationQuery) -> StoreResult<u64> {
        let sql = operations_matching(self.backend, "SELECT COUNT(*) AS n FROM operations WHERE 1=1", q);
        let row = sql.query().fetch_one(&self.pool).await.map_err(self.fail("counting operations"))?;
        Ok(u64::try_from(column::<i64>(&row, "n")?).unwrap_or(0))
    }

    async fn apply(&self, set: WriteSet) -> StoreResult<()> {
        // What the job needs of the caller's task (its idempotency hold) is taken now: the job runs on the
        // committer's.
        let hold = crate::current_hold();
        let applied = hold.as_ref().map(|_| crate::applied_result(&set));
        let revoked = writes::revokes(&set);
        // An operation recorded without a holder is work for any idle worker; one leased in the same set
        // is run by the server recording it.
        let work = set.writes.iter().any(|w| match w {
            Write::InsertOperation(op) => {
                !set.writes.iter().any(|l| matches!(l, Write::LeaseOperation { id, .. } if *id == op.id))
            }
            _ => false,
        });
        let touched = read_cache::Touched::of(&set);
        let sealed = match self.sealed_set(&set) {
            std::borrow::Cow::Owned(sealed) => Some(sealed),
            std::borrow::Cow::Borrowed(_) => None,
        };
        let set = sealed.unwrap_or(set);
        let backend = self.backend;
        self.group
            .run(Box::new(move |mut conn| {
                Box::pin(async move {
                    let conn = &mut conn;
                    writes::apply_changes(conn, backend, &set).await?;
                    mark_applied_for(conn, backend, hold.as_ref(), || applied.unwrap_or_default()).await?;
                    let events = events_of(set);
                    Ok(group_commit::Done { value: Box::new(()), changed: true, revoked, work, touched, events })
                })
            }))
            .await
    }

    async fn claim_operation(&self, owner: &str, lease: Duration) -> StoreResult<Option<Operation>> {
        let claimed = self.claim_and_start(owner, lease, Box::new(|op| (op, WriteSet::new()))).await?;
        Ok(claimed.map(|c| c.operation))
    }

    async fn claim_and_start(&self, owner: &str, lease: Duration, start: StartClaimed) -> StoreResult<Option<Claimed>> {
        let now = self.backend.now_ms();
        let claimable = format!(
            "SELECT id FROM operations
             WHERE state IN ('pending', 'running') AND (lease_owner IS NULL OR lease_expires < {now})
             ORDER BY id LIMIT 1"
        );
        let sql = format!(
            "UPDATE operations SET lease_owner = $1, lease_expires = {now} + $2
             WHERE id = ({claimable}{})
             RETURNING body",
            self.backend.skip_locked()
        );
        let (backend, owner, lease) = (self.backend, owner.to_string(), lease_ms(lease));
        self.group
            .run(Box::new(move |mut conn| {
                Box::pin(async move {
                    let conn = &mut conn;
                    let row = query(&sql, args![&owner, lease])
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(|e| backend.error("claiming an operation", e))?;
                    let claimed = row.map(|r| body_of::<Operation>("operation", &r)).transpose()?;
                    // A claim that found nothing must not wake waiters, or idle workers would wake each
                    // other forever.
                    let Some(claimed) = claimed else { return Ok(group_commit::Done::new(None::<Claimed>, false)) };
                    let more = query(&claimable, vec![])
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(|e| backend.error("looking for more operations", e))?
                        .is_some();
                    let (operation, set) = start(claimed);
                    writes::apply_changes(conn, backend, &set).await?;
                    let mut done = group_commit::Done::new(Some(Claimed { operation, more }), true);
                    done.touched = read_cache::Touched::of(&set);
                    done.events = events_of(set);
                    Ok(done)
                })
            }))
            .await
    }

    async fn renew_lease(&self, id: Uuid, owner: &str, lease: Duration) -> StoreResult<bool> {
        // A renewal changes nothing anyone waits for, so it does not move `changes()` (workers renew every
        // few seconds; waking every waiter each time would be noise).
        let sql = format!(
            "UPDATE operations SET lease_expires = {} + $1
             WHERE id = $2 AND lease_owner = $3 AND state IN ('pending', 'running')",
            self.backend.now_ms()
        );
        let (backend, owner, lease) = (self.backend, owner.to_string(), lease_ms(lease));
        self.group
            .run(Box::new(move |mut conn| {
                Box::pin(async move {
                    let conn = &mut conn;
                    let renewed = query(&sql, args![lease, id, &owner])
                        .execute(conn)
                        .await
                        .map_err(|e| backend.error("renewing a lease", e))?
                        .rows_affected()
                        > 0;
                    Ok(group_commit::Done::new(renewed, false))
                })
            }))
            .await
    }

    async fn release_lease(&self, id: Uuid, owner: &str) -> StoreResult<()> {
        let (backend, owner) = (self.backend, owner.to_string());
        self.group
            .run(Box::new(move |mut conn| {
                Box::pin(async move {
                    let conn = &mut conn;
                    let released = query(
                        "UPDATE operations SET lease_owner = NULL, lease_expires = NULL WHERE id = $1 AND lease_owner = $2",
                        args![id, &owner],
                    )
                    .execute(conn)
                    .await
                    .map_err(|e| backend.error("releasing a lease", e))?
                    .rows_affected();
                    // Another server's idle worker may claim it at once.
                    let mut done = group_commit::Done::new((), released > 0);
                    done.work = released > 0;
                    Ok(done)
                })
            }))
            .await
    }

    async fn release_leases_of(&self, server: &str) -> StoreResult<u64> {
        let mut w = self.write().await?;
        let result = async {
            // `/` is not a LIKE wildcard; the prefix itself is matched exactly, so no other server's name that
            // merely starts like this one's is caught (`a` does not release `ab/...`).
            let released: u64 = query(
                "UPDATE operations SET lease_owner = NULL, lease_expires = NULL
                 WHERE state IN ('pending', 'running') AND (lease_owner = $1 OR substr(lease_owner, 1, CAST($2 AS INTEGER)) = $3)",
                args![server, (server.len() + 1) as i64, format!("{server}/")],
            )
            .execute(w.conn())
            .await
            .map_err(self.fail("releasing a server's leases"))?
            .rows_affected();
            if let (true, Some(notify)) = (released > 0, self.backend.notify_work()) {
                query(notify, vec![]).execute(w.conn()).await.map_err(self.fail("notifying"))?;
            }
            Ok(released)
        }
        .await;
        let released = matches!(result, Ok(n) if n > 0);
        let released = self.end(w, result, released).await?;
        if released > 0 {
            self.changes.bump_work();
        }
        Ok(released)
    }

    async fn events_after(&self, project_id: Option<Uuid>, after_seq: i64, limit: u32) -> StoreResult<Vec<Event>> {
        // Here 0 means none, not all (as `LIMIT 0`): a caller asking for nothing gets nothing.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut sql = Filtered::new("SELECT seq, body FROM events WHERE 1=1");
        if let Some(p) = project_id {
            sql.and("project_id = ", p);
        }
        sql.and("seq > ", after_seq).push(" ORDER BY seq").limit(limit);
        let rows = sql.query().fetch_all(&self.pool).await.map_err(self.fail("reading events"))?;
        rows.iter().map(event_from_row).collect()
    }

    async fn latest_event_seq(&self, project_id: Option<Uuid>) -> StoreResult<i64> {
        let mut sql = Filtered::new("SELECT COALESCE(MAX(seq), 0) AS seq FROM events WHERE 1=1");
        if let Some(p) = project_id {
            sql.and("project_id = ", p);
        }
        let row = sql.query().fetch_one(self.point_read()).await.map_err(self.fail("reading the latest event"))?;
        column(&row, "seq")
    }

    async fn get_host(&self, name: &str) -> StoreResult<Option<StoredHost>> {
        let sql = format!("{} WHERE name = $1", hosts::select(self.backend));
        let row = query(&sql, args![name]).fetch_optional(&self.pool).await.map_err(self.fail("reading a host"))?;
        row.as_ref().map(hosts::host_from_row).transpose()
    }

    async fn list_hosts(&self) -> StoreResult<Vec<StoredHost>> {
        let sql = format!("{} ORDER BY name", hosts::select(self.backend));
        let rows = query(&sql, vec![]).fetch_all(&self.pool).await.map_err(self.fail("listing hosts"))?;
        rows.iter().map(hosts::host_from_row).collect()
    }

    async fn hosts_with_allocations(&self, with_gpus: bool) -> StoreResult<Vec<(StoredHost, Allocation)>> {
        hosts::with_allocations(self.point_read(), self.backend, with_gpus).await
    }

    async fn renew_host(&self, name: &str, lease: Duration) -> StoreResult<bool> {
        let sql = format!("UPDATE hosts SET heartbeat_expires = {} + $1 WHERE name = $2", self.backend.now_ms());
        let mut w = self.write().await?;
        let result = query(&sql, args![lease_ms(lease), name])
            .execute(w.conn())
            .await
            .map_err(self.fail("renewing a host's heartbeat"))
            .map(|r| r.rows_affected() > 0);
        // Like lease renewals: nothing anyone waits for changed.
        self.end(w, result, false).await
    }

    async fn host_allocations(&self) -> StoreResult<std::collections::BTreeMap<String, nimbus_core::host::Allocation>> {
        let mut conn = self.pool.acquire().await.map_err(self.fail("connecting"))?;
        hosts::allocations(&mut Conn::Sqlx(&mut conn), self.backend).await
    }

    async fn group_members_hosts(&self, groups: &[Uuid]) -> StoreResult<Vec<(String, Uuid)>> {
        let mut out = Vec::new();
        for g in groups {
            let rows = query(
                "SELECT host, id FROM instances WHERE host IS NOT NULL AND state <> 'destroyed' AND anti_affinity LIKE $1",
                args![format!("%{g} %")],
            )
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("finding anti-affinity members"))?;
            for r in &rows {
                out.push((column(r, "host")?, parse_uuid(&column::<String>(r, "id")?)?));
            }
        }
        Ok(out)
    }

    async fn list_records_named(&self, kind: &str, name: &str) -> StoreResult<Vec<Record>> {
        let rows = query(
            "SELECT id, project_id, name, body, generation FROM records WHERE kind = $1 AND name = $2 ORDER BY id",
            args![kind, name],
        )
        .fetch_all(self.point_read())
        .await
        .map_err(self.fail("listing records"))?;
        rows.iter().map(|r| record_from_row(self.seal.as_deref(), kind, r)).collect()
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.revocations()
    }

    fn new_work(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.work()
    }

    async fn resolve_alias(&self, kind: &str, alias: &str) -> StoreResult<Option<Uuid>> {
        let row = query("SELECT id FROM aliases WHERE kind = $1 AND alias = $2", args![kind, alias])
            .fetch_optional(&self.pool)
            .await
            .map_err(self.fail("resolving an alias"))?;
        row.map(|r| parse_uuid(&column::<String>(&r, "id")?)).transpose()
    }

    async fn alias_of(&self, kind: &str, id: Uuid) -> StoreResult<Option<String>> {
        let row = query("SELECT alias FROM aliases WHERE kind = $1 AND id = $2", args![kind, id])
            .fetch_optional(&self.pool)
            .await
            .map_err(self.fail("reading an alias"))?;
        row.map(|r| column(&r, "alias")).transpose()
    }

    async fn free_addresses(&self, network: &str, first: u32, last: u32, limit: u32) -> StoreResult<Vec<u32>> {
        if limit == 0 || first > last {
            return Ok(Vec::new());
        }
        // Free numbers come in runs, each starting at `first` or just above a held number, and ending just
        // below the next held one (or at `last`). The lowest `limit` free numbers lie in the first `limit`
        // runs: the database finds those runs (at most `limit` rows, each end found through the primary
        // key), and they are counted out here.
        let rows = query(
            "SELECT s.host AS start,
                    COALESCE((SELECT MIN(a.host) FROM addresses a WHERE a.network = $1 AND a.host > s.host), $3 + 1)
                        - 1 AS stop
             FROM (
                 SELECT $2 AS host
                 UNION SELECT host + 1 FROM addresses WHERE network = $1 AND host >= $2 AND host < $3
             ) s
             WHERE NOT EXISTS (SELECT 1 FROM addresses a WHERE a.network = $1 AND a.host = s.host)
             ORDER BY s.host LIMIT $4",
            args![network, first, last, limit],
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("finding free addresses"))?;
        let mut free = Vec::new();
        for row in &rows {
            let (start, stop) = (host_of(column(row, "start")?)?, host_of(column(row, "stop")?)?);
            free.extend((start..=stop.min(last)).take(limit as usize - free.len()));
        }
        Ok(free)
    }

    async fn list_addresses(&self, network: Option<&str>) -> StoreResult<Vec<AddressHold>> {
        let mut sql = Filtered::new("SELECT network, host, owner FROM addresses WHERE 1=1");
        if let Some(n) = network {
            sql.and("network = ", n);
        }
        sql.push(" ORDER BY network, host");
        let rows = sql.query().fetch_all(&self.pool).await.map_err(self.fail("listing addresses"))?;
        rows.iter()
            .map(|r| {
                Ok(AddressHold {
                    network: column(r, "network")?,
                    host: host_of(column(r, "host")?)?,
                    owner: parse_uuid(&column::<String>(r, "owner")?)?,
                })
            })
            .collect()
    }

    async fn idempotency_claim(
        &self,
        scope: &IdempotencyScope,
        request_hash: &str,
        server: &str,
        lease: Duration,
    ) -> StoreResult<IdempotencyClaim> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let hold = IdempotencyHold {
            scope: scope.clone(),
            server: server.to_string(),
            holder: Uuid::new_v4().simple().to_string(),
        };
        let mut w = self.write().await?;
        let result = async {
            query("DELETE FROM idempotency WHERE created_at < $1", args![now - IDEMPOTENCY_TTL_SECONDS])
                .execute(w.conn())
                .await
                .map_err(self.fail("expiring idempotency keys"))?;
            // A key stored before keys had an API key answers for every key of its project until it expires.
            if !scope.api_key_id.is_empty() {
                let legacy = IdempotencyScope { api_key_id: String::new(), ..scope.clone() };
                if let Some(row) = self.idempotency_row(&mut w.conn(), &legacy).await? {
                    return self.judge_claim(&mut w.conn(), row, request_hash, &hold, lease).await;
                }
            }
            // ON CONFLICT DO NOTHING: of two servers claiming one new key at once, one inserts and the
            // other (on PostgreSQL, after waiting for it) finds its row below.
            let inserted = query(
                &format!(
                    "INSERT INTO idempotency (project_id, api_key_id, key, request_hash, holder_server, holder,
                                              lease_expires, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, {} + $7, $8)
                     ON CONFLICT (project_id, api_key_id, key) DO NOTHING",
                    self.backend.now_ms()
                ),
                args![
                    scope.project_id,
                    &scope.api_key_id,
                    &scope.key,
                    request_hash,
                    server,
                    &hold.holder,
                    lease_ms(lease),
                    now
                ],
            )
            .execute(w.conn())
            .await
            .map_err(self.fail("claiming an idempotency key"))?
            .rows_affected();
            if inserted > 0 {
                return Ok(IdempotencyClaim::New(hold.clone()));
            }
            let row = self
                .idempotency_row(&mut w.conn(), scope)
                .await?
                .ok_or_else(|| StoreError::Conflict(format!("idempotency key {} vanished while claimed", scope.key)))?;
            self.judge_claim(&mut w.conn(), row, request_hash, &hold, lease).await
        }
        .await;
        let taken = matches!(result, Ok(IdempotencyClaim::New(_)));
        self.end(w, result, taken).await
    }

    async fn idempotency_renew(&self, hold: &IdempotencyHold, lease: Duration) -> StoreResult<bool> {
        let s = &hold.scope;
        let sql = format!(
            "UPDATE idempotency SET lease_expires = {} + $1
             WHERE project_id = $2 AND api_key_id = $3 AND key = $4 AND holder = $5 AND status IS NULL",
            self.backend.now_ms()
        );
        let mut w = self.write().await?;
        let result = query(&sql, args![lease_ms(lease), s.project_id, &s.api_key_id, &s.key, &hold.holder])
            .execute(w.conn())
            .await
            .map_err(self.fail("renewing an idempotency key"))
            .map(|r| r.rows_affected() > 0);
        self.end(w, result, false).await
    }

    async fn idempotency_finish(&self, hold: &IdempotencyHold, status: u16, body: &str) -> StoreResult<()> {
        let s = &hold.scope;
        self.write_one(
            "finishing an idempotency key",
            "UPDATE idempotency SET status = $1, body = $2, holder = NULL, holder_server = NULL, lease_expires = NULL
             WHERE project_id = $3 AND api_key_id = $4 AND key = $5 AND holder = $6",
            args![
                i64::from(status),
                self.sealed(&idempotency_place(s), body),
                s.project_id,
                &s.api_key_id,
                &s.key,
                &hold.holder
            ],
        )
        .await
        .map(|_| ())
    }

    async fn idempotency_release(&self, hold: &IdempotencyHold) -> StoreResult<()> {
        let s = &hold.scope;
        let mut w = self.write().await?;
        let result = async {
            let key = args![s.project_id, &s.api_key_id, &s.key, &hold.holder];
            query(
                "DELETE FROM idempotency
                 WHERE project_id = $1 AND api_key_id = $2 AND key = $3 AND holder = $4
                   AND result IS NULL AND status IS NULL",
                key.clone(),
            )
            .execute(w.conn())
            .await
            .map_err(self.fail("releasing an idempotency key"))?;
            // Applied: it stays, answerable from what its request made, held by nobody.
            query(
                "UPDATE idempotency SET holder = NULL, holder_server = NULL, lease_expires = NULL
                 WHERE project_id = $1 AND api_key_id = $2 AND key = $3 AND holder = $4",
                key,
            )
            .execute(w.conn())
            .await
            .map_err(self.fail("releasing an idempotency key"))?;
            Ok(())
        }
        .await;
        self.finish(w, result).await
    }

    async fn idempotency_sweep(&self, server: Option<&str>) -> StoreResult<u64> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut w = self.write().await?;
        let result = async {
            let expired = query("DELETE FROM idempotency WHERE created_at < $1", args![now - IDEMPOTENCY_TTL_SECONDS])
                .execute(w.conn())
                .await
                .map_err(self.fail("expiring idempotency keys"))?
                .rows_affected();
            let sql = format!(
                "DELETE FROM idempotency
                 WHERE holder IS NOT NULL AND result IS NULL AND status IS NULL
                   AND (lease_expires < {} OR holder_server = $1)",
                self.backend.now_ms()
            );
            let dropped = query(&sql, args![server.unwrap_or("")])
                .execute(w.conn())
                .await
                .map_err(self.fail("sweeping idempotency keys"))?
                .rows_affected();
            // Applied keys of a server that is gone keep their answer; their hold means nothing any more.
            if let Some(server) = server {
                query(
                    "UPDATE idempotency SET holder = NULL, holder_server = NULL, lease_expires = NULL
                     WHERE holder_server = $1",
                    args![server],
                )
                .execute(w.conn())
                .await
                .map_err(self.fail("sweeping idempotency keys"))?;
            }
            Ok((expired, dropped))
        }
        .await;
        let changed = matches!(result, Ok((e, d)) if e + d > 0);
        self.end(w, result, changed).await.map(|(_, dropped)| dropped)
    }

    async fn check_integrity(&self) -> StoreResult<IntegrityReport> {
        self.integrity().await
    }

    async fn append_audit(&self, entries: &[nimbus_core::audit::AuditEntry]) -> StoreResult<()> {
        self.append_audit_entries(entries).await
    }

    async fn list_audit(&self, q: &nimbus_core::audit::AuditQuery) -> StoreResult<Vec<nimbus_core::audit::AuditEntry>> {
        self.audit_entries(q).await
    }

    async fn prune_audit(&self, before: time::OffsetDateTime) -> StoreResult<u64> {
        self.prune_audit_entries(before).await
    }

    async fn idempotency_audit(&self) -> StoreResult<IdempotencyAudit> {
        let sql = format!(
            "SELECT
               CAST(COALESCE(SUM(CASE WHEN status IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS answered,
               CAST(COALESCE(SUM(CASE WHEN status IS NULL AND result IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT)
                 AS applied,
               CAST(COALESCE(SUM(CASE WHEN status IS NULL AND result IS NULL AND holder IS NOT NULL
                                       AND lease_expires >= {now} THEN 1 ELSE 0 END), 0) AS BIGINT) AS held,
               CAST(COALESCE(SUM(CASE WHEN status IS NULL AND result IS NULL AND holder IS NOT NULL
                                       AND lease_expires < {now} THEN 1 ELSE 0 END), 0) AS BIGINT) AS abandoned,
               CAST(COALESCE(SUM(CASE WHEN status IS NULL AND result IS NULL AND holder IS NULL
                                 THEN 1 ELSE 0 END), 0) AS BIGINT) AS unknown
             FROM idempotency",
            now = self.backend.now_ms()
        );
        let row = query(&sql, vec![]).fetch_one(&self.pool).await.map_err(self.fail("auditing idempotency keys"))?;
        let n = |name: &str| -> StoreResult<u64> {
            let v: i64 = column(&row, name)?;
            u64::try_from(v).map_err(|_| StoreError::Backend(format!("corrupt count {name} = {v}")))
        };
        Ok(IdempotencyAudit {
            answered: n("answered")?,
            applied: n("applied")?,
            held: n("held")?,
            abandoned: n("abandoned")?,
            unknown: n("unknown")?,
        })
    }
}

/// A stored idempotency key, as a claim judges it.
struct IdempotencyRow {
    scope: IdempotencyScope,
    request_hash: String,
    holder: Option<String>,
    expired: bool,
    result: Option<String>,
    status: Option<i64>,
    body: Option<String>,
}

impl SqlStore {
    async fn idempotency_row(
        &self,
        conn: &mut Conn<'_>,
        scope: &IdempotencyScope,
    ) -> StoreResult<Option<IdempotencyRow>> {
        let sql = format!(
            "SELECT request_hash, holder, CASE WHEN lease_expires < {} THEN 1 ELSE 0 END AS expired,
                    result, status, body
             FROM idempotency WHERE project_id = $1 AND api_key_id = $2 AND key = $3{}",
            self.backend.now_ms(),
            self.backend.for_update()
        );
        let row = query(&sql, args![scope.project_id, &scope.api_key_id, &scope.key])
            .fetch_optional(conn)
            .await
            .map_err(self.fail("reading an idempotency key"))?;
        row.map(|row| {
            Ok(IdempotencyRow {
                scope: scope.clone(),
                request_hash: column(&row, "request_hash")?,
                holder: column(&row, "holder")?,
                expired: column::<i64>(&row, "expired")? == 1,
                result: column(&row, "result")?,
                status: column(&row, "status")?,
                body: column::<Option<String>>(&row, "body")?
                    .map(|body| crate::seal::open_with(self.seal.as_deref(), &idempotency_place(scope), &body))
                    .transpose()?,
            })
        })
        .transpose()
    }

    /// What a claim finds in an existing key; takes it over for `hold` when its holder died before
    /// committing anything.
    async fn judge_claim(
        &self,
        conn: &mut Conn<'_>,
        row: IdempotencyRow,
        request_hash: &str,
        hold: &IdempotencyHold,
        lease: Duration,
    ) -> StoreResult<IdempotencyClaim> {
        if row.request_hash != request_hash {
            return Ok(IdempotencyClaim::Mismatch);
        }
        if let (Some(status), Some(body)) = (row.status, row.body) {
            let status =
                u16::try_from(status).map_err(|_| StoreError::Backend(format!("corrupt stored status {status}")))?;
            return Ok(IdempotencyClaim::Replay { status, body });
        }
        if let Some(result) = row.result {
            return Ok(IdempotencyClaim::Applied { result: decode("idempotency result", &result)? });
        }
        let Some(old) = row.holder.filter(|_| row.expired) else {
            return Ok(IdempotencyClaim::InProgress);
        };
        // The holder's lease ran out and it applied nothing: it died (or stalled, and its late writes will be
        // refused). Compare-and-swap on the old holder, so that of two retries only one takes over.
        let s = &row.scope;
        let sql = format!(
            "UPDATE idempotency SET holder = $1, holder_server = $2, lease_expires = {} + $3
             WHERE project_id = $4 AND api_key_id = $5 AND key = $6 AND holder = $7
               AND result IS NULL AND status IS NULL",
            self.backend.now_ms()
        );
        let taken =
            query(&sql, args![&hold.holder, &hold.server, lease_ms(lease), s.project_id, &s.api_key_id, &s.key, &old])
                .execute(conn)
                .await
                .map_err(self.fail("taking over an idempotency key"))?
                .rows_affected();
        if taken == 0 {
            return Err(StoreError::Conflict(format!("idempotency key {} changed while claimed", s.key)));
        }
        Ok(IdempotencyClaim::New(IdempotencyHold { scope: s.clone(), ..hold.clone() }))
    }

    /// Inside a write transaction run while a request holds an idempotency key ([`crate::holding`]):
    /// records that the key's request applied `result` (the first result stays), or fails with
    /// `Superseded` when the hold was taken over, so that the transaction rolls back. Outside a hold,
    /// nothing.
    pub(crate) async fn mark_applied(
        &self,
        conn: &mut Conn<'_>,
        result: impl FnOnce() -> serde_json::Value,
    ) -> StoreResult<()> {
        mark_applied_for(conn, self.backend, crate::current_hold().as_ref(), result).await
    }
}

/// Records, inside the write, what the idempotent request holding `hold` applied (its answer is recorded
/// after the commit); `Superseded` when a retry took the key over meanwhile. Nothing without a hold.
pub(crate) async fn mark_applied_for(
    conn: &mut Conn<'_>,
    backend: Backend,
    hold: Option<&IdempotencyHold>,
    result: impl FnOnce() -> serde_json::Value,
) -> StoreResult<()> {
    let Some(hold) = hold else { return Ok(()) };
    let s = &hold.scope;
    let marked = query(
        "UPDATE idempotency SET result = COALESCE(result, $1)
         WHERE project_id = $2 AND api_key_id = $3 AND key = $4 AND holder = $5 AND status IS NULL",
        args![result().to_string(), s.project_id, &s.api_key_id, &s.key, &hold.holder],
    )
    .execute(conn)
    .await
    .map_err(|e| backend.error("recording what an idempotent request applied", e))?
    .rows_affected();
    if marked == 0 {
        return Err(StoreError::Superseded(format!(
            "the request with Idempotency-Key {:?} was taken over by a retry",
            s.key
        )));
    }
    Ok(())
}

/// The events a write set appends, which its batch appends after every set's other writes.
fn events_of(set: WriteSet) -> Vec<Event> {
    set.writes
        .into_iter()
        .filter_map(|w| match w {
            Write::AppendEvent(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// A lease as milliseconds, saturating (a lease of centuries is as good as forever).
fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::SqlStore;

    /// The settings a crash or a power cut would test: WAL, every commit synced, a writer waiting (not
    /// failing) behind another process's, foreign keys enforced.
    #[tokio::test]
    async fn a_sqlite_file_is_opened_durable_and_patient() {
        let test = crate::testing::sqlite_test_store().await;
        let store = SqlStore::open(&test.url).await.unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        for (pragma, expected) in
            [("journal_mode", "wal"), ("synchronous", "2"), ("busy_timeout", "10000"), ("foreign_keys", "1")]
        {
            let row = sqlx::query(&format!("PRAGMA {pragma}")).fetch_one(&mut *conn).await.unwrap();
            let value = row.try_get::<String, _>(0).or_else(|_| row.try_get::<i64, _>(0).map(|n| n.to_string()));
            assert_eq!(value.unwrap(), expected, "PRAGMA {pragma}");
        }
    }

    /// Another process holding SQLite's write lock past the busy timeout: the writer is told to retry
    /// (`Conflict`), not that the store broke (`Backend`), and succeeds once the lock is gone.
    #[tokio::test]
    async fn a_sqlite_writer_locked_out_by_another_process_is_told_to_retry() {
        use sqlx::{Connection, Executor};

        use crate::{StoreError, Write, WriteSet};
        let test = crate::testing::sqlite_test_store().await;
        let path = test.url.trim_start_matches("sqlite://").to_string();
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await.unwrap();
        other.execute("BEGIN IMMEDIATE").await.unwrap();
        let set = || {
            let mut set = WriteSet::new();
            set.push(Write::PutAlias { kind: "k".into(), alias: "a".into(), id: uuid::Uuid::new_v4() });
            set
        };
        let started = std::time::Instant::now();
        let err = test.apply(set()).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert!(started.elapsed() >= std::time::Duration::from_secs(9), "it waited for the busy timeout first");
        other.execute("ROLLBACK").await.unwrap();
        test.apply(set()).await.unwrap();
    }
}
