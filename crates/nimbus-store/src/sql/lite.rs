//! The group committer's own SQLite connection, driven in-thread with rusqlite.
//!
//! Why a second way into SQLite beside sqlx's: sqlx runs each SQLite connection on a thread of its own and
//! hands every statement to it and its answer back, two thread switches per statement. A batch of the
//! group committer is dozens of statements (a create alone is about twenty), and on this project's
//! benchmark those hand-offs were most of a create's CPU time. The committer instead runs a whole batch on
//! one blocking thread (`super::group_commit`), each statement a plain call on this connection: one hand-off
//! per batch. Point reads (an instance, a record, records by name, an operation, placement's hosts, the
//! newest event) run in place on the caller's thread on connections of their own ([`Readers`]). Everything
//! else (lists, migrations, the writes that are not batched) stays on sqlx.
//!
//! The SQL is the store's one body of SQL: `$N` placeholders are bound by their number, as sqlx's SQLite
//! driver does, and errors come back as `sqlx::Error::Database` with SQLite's extended result code, so that
//! [`super::backend::Backend::error`] classifies them exactly as it classifies sqlx's.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags};
use sqlx::error::{DatabaseError, ErrorKind};

use super::Arg;

/// Statements kept prepared: every statement a batch runs is one of a few dozen texts.
const STATEMENT_CACHE: usize = 256;

/// Opens `path` with the pragmas every SQLite connection of the store has.
pub(crate) fn open(path: &Path) -> Result<Connection, sqlx::Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    for pragma in super::backend::sqlite_pragmas(false) {
        execute(&mut conn, pragma, &[])?;
    }
    // Every job of a batch runs under a savepoint, so SQLite copies each page a job changes that an earlier
    // job of the batch had changed into a statement journal first. By default that journal spills to a
    // temporary file past 64 KiB, and on the benchmark those were two `pwrite`s per page, more than the
    // WAL's own: two thirds of the committer's writes to the kernel. In memory it is a copy, emptied as each
    // job's savepoint is released; nothing in it is needed after a crash (recovery ignores the frames of a
    // batch that never committed).
    execute(&mut conn, "PRAGMA temp_store = MEMORY", &[])?;
    Ok(conn)
}

/// Idle read connections to one SQLite file, each used in place on the thread of the read that takes it.
///
/// Why in place, on a runtime thread: a read by primary key of a page SQLite or the kernel has cached takes
/// a few microseconds, less than the two thread hand-offs of sqlx's driver (one to its connection's thread
/// and one back), which were most of what a create's point reads cost. A read that would wait (the file
/// busy or locked: WAL recovery, a checkpoint's exclusive moment) does not: its connection has no busy
/// timeout, and the caller runs it on sqlx instead, which may wait off the runtime's threads. Lists, whose
/// cost grows with what they read, never run here.
pub(crate) struct Readers {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<Connection>>,
}

/// Idle connections kept: one per thread that reads at once is enough, and a 2-core server has few.
const IDLE_READERS: usize = 8;

impl Readers {
    pub(crate) fn new(path: &Path) -> Readers {
        Readers { path: path.to_path_buf(), idle: std::sync::Mutex::new(Vec::new()) }
    }

    /// The rows of the read `sql`, read in place; `None` when it could not run without waiting (or a
    /// connection could not be opened): the caller reads elsewhere.
    pub(crate) fn fetch_all(&self, sql: &str, args: &[Arg]) -> Option<Result<Vec<LiteRow>, sqlx::Error>> {
        let taken = self.idle.lock().expect("idle readers").pop();
        let mut conn = match taken {
            Some(conn) => conn,
            None => match open_reader(&self.path) {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "opening a read connection; reading through the pool");
                    return None;
                }
            },
        };
        let found = fetch_all(&mut conn, sql, args);
        let would_wait = matches!(&found, Err(sqlx::Error::Database(e))
            if e.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)));
        // A connection whose statement failed is not trusted again; one that only met a lock is.
        if found.is_ok() || would_wait {
            let mut idle = self.idle.lock().expect("idle readers");
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
        }
        (!would_wait).then_some(found)
    }
}

/// A connection for [`Readers`]: reads only, never waits for a lock.
fn open_reader(path: &Path) -> Result<Connection, sqlx::Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The store's writers set WAL on the file; these connections only read, and must not wait.
    execute(&mut conn, "PRAGMA query_only = ON", &[])?;
    conn.busy_timeout(std::time::Duration::ZERO).map_err(error)?;
    Ok(conn)
}

/// A row read on this connection: its columns' names and values.
#[derive(Debug, Clone)]
pub(crate) struct LiteRow {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl LiteRow {
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.names.iter().position(|n| n == name).map(|i| &self.values[i])
    }

    pub(crate) fn get_at(&self, index: usize) -> Option<&Value> {
        self.values.get(index)
    }
}

/// Runs `sql` to its end; the rows it changed (0 for a statement that changes none: a read, a `BEGIN`).
pub(crate) fn execute(conn: &mut Connection, sql: &str, args: &[Arg]) -> Result<u64, sqlx::Error> {
    let mut statement = prepared(conn, sql, args)?;
    let writes = !statement.readonly();
    let mut rows = statement.raw_query();
    while rows.next().map_err(error)?.is_some() {}
    drop(rows);
    drop(statement);
    Ok(if writes { conn.changes() } else { 0 })
}

/// Runs `sql` and collects the rows it returns.
pub(crate) fn fetch_all(conn: &mut Connection, sql: &str, args: &[Arg]) -> Result<Vec<LiteRow>, sqlx::Error> {
    let mut statement = prepared(conn, sql, args)?;
    let names: Arc<[String]> = statement.column_names().into_iter().map(str::to_string).collect();
    let width = names.len();
    let mut rows = statement.raw_query();
    let mut found = Vec::new();
    while let Some(row) = rows.next().map_err(error)? {
        let values = (0..width).map(|i| row.get_ref(i).map(ValueRef::into)).collect::<Result<_, _>>();
        found.push(LiteRow { names: names.clone(), values: values.map_err(error)? });
    }
    Ok(found)
}

/// `sql` prepared (from the cache) with `args` bound: `$N` (or `?N`) takes the Nth argument wherever it
/// appears, a bare `?` the next one.
fn prepared<'c>(
    conn: &'c mut Connection,
    sql: &str,
    args: &[Arg],
) -> Result<rusqlite::CachedStatement<'c>, sqlx::Error> {
    let mut statement = conn.prepare_cached(sql).map_err(error)?;
    let mut next = 0;
    for index in 1..=statement.parameter_count() {
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix(['$', '?']))
            .and_then(|n| n.parse::<usize>().ok());
        let number = number.unwrap_or_else(|| {
            next += 1;
            next
        });
        let arg = number
            .checked_sub(1)
            .and_then(|i| args.get(i))
            .ok_or_else(|| sqlx::Error::Protocol(format!("no argument for placeholder {number} of {sql:?}")))?;
        let bound = match arg {
            Arg::Text(s) => statement.raw_bind_parameter(index, s.as_str()),
            Arg::Int(n) => statement.raw_bind_parameter(index, n),
            Arg::Null => statement.raw_bind_parameter(index, rusqlite::types::Null),
        };
        bound.map_err(error)?;
    }
    Ok(statement)
}

/// A rusqlite error as sqlx reports SQLite's: a database error carrying the extended result code.
pub(crate) fn error(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => sqlx::Error::Database(Box::new(LiteError {
            code: failure.extended_code,
            message: message.unwrap_or_else(|| failure.to_string()),
        })),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

#[derive(Debug)]
struct LiteError {
    code: i32,
    message: String,
}

impl std::fmt::Display for LiteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for LiteError {}

impl DatabaseError for LiteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        // SQLite's extended constraint codes (https://www.sqlite.org/rescode.html).
        match self.code {
            2067 | 1555 => ErrorKind::UniqueViolation,
            787 => ErrorKind::ForeignKeyViolation,
            1299 => ErrorKind::NotNullViolation,
            275 => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_placeholders_take_their_own_argument_wherever_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("t.db")).unwrap();
        execute(&mut conn, "CREATE TABLE t (a TEXT, b INTEGER)", &[]).unwrap();
        let inserted =
            execute(&mut conn, "INSERT INTO t (b, a) VALUES ($2, $1), ($2, $1)", &[Arg::from("x"), Arg::Int(7)])
                .unwrap();
        assert_eq!(inserted, 2);
        let rows =
            fetch_all(&mut conn, "SELECT a, b FROM t WHERE b = $1 AND a = $2", &[Arg::Int(7), "x".into()]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get("a"), Some(&Value::Text("x".into())));
        assert_eq!(rows[0].get_at(1), Some(&Value::Integer(7)));
        // A read changes nothing, whatever the statement before it changed.
        assert_eq!(execute(&mut conn, "SELECT a FROM t", &[]).unwrap(), 0);
    }

    /// A read in place sees what another connection committed the moment it lands, and one that would have
    /// to wait for a lock does not wait: it answers `None` and its caller reads elsewhere.
    #[test]
    fn reads_in_place_see_the_last_commit_and_never_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut writer = open(&path).unwrap();
        execute(&mut writer, "CREATE TABLE t (a TEXT)", &[]).unwrap();
        let readers = Readers::new(&path);
        let count = |readers: &Readers| {
            readers.fetch_all("SELECT COUNT(*) FROM t", &[]).map(|rows| rows.unwrap()[0].get_at(0).cloned().unwrap())
        };
        assert_eq!(count(&readers), Some(Value::Integer(0)));
        execute(&mut writer, "INSERT INTO t (a) VALUES ('x')", &[]).unwrap();
        assert_eq!(count(&readers), Some(Value::Integer(1)), "the idle connection reused sees the new row");
        // They only read.
        let refused = readers.fetch_all("INSERT INTO t (a) VALUES ('y')", &[]).unwrap().unwrap_err();
        assert!(refused.to_string().contains("readonly") || refused.to_string().contains("query_only"), "{refused}");
        // Without WAL a writer's exclusive lock keeps readers out: the read gives up at once.
        execute(&mut writer, "PRAGMA journal_mode = DELETE", &[]).unwrap();
        let readers = Readers::new(&path);
        execute(&mut writer, "BEGIN EXCLUSIVE", &[]).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(count(&readers), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "it did not wait for the lock");
        execute(&mut writer, "COMMIT", &[]).unwrap();
        assert_eq!(count(&readers), Some(Value::Integer(1)), "the connection that met the lock is used again");
    }

    /// The committer's connection is as durable as the pool's, and keeps the journal of its jobs'
    /// savepoints in memory: a job rolled back to its savepoint after changing far more than the 64 KiB a
    /// journal keeps in memory by default leaves the earlier job's rows exactly as they were.
    #[test]
    fn the_committers_savepoints_are_journaled_in_memory_and_still_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("t.db")).unwrap();
        let pragma = |conn: &mut Connection, name: &str| {
            fetch_all(conn, &format!("PRAGMA {name}"), &[]).unwrap()[0].get_at(0).cloned()
        };
        assert_eq!(pragma(&mut conn, "journal_mode"), Some(Value::Text("wal".into())));
        assert_eq!(pragma(&mut conn, "synchronous"), Some(Value::Integer(2)), "FULL");
        assert_eq!(pragma(&mut conn, "temp_store"), Some(Value::Integer(2)), "MEMORY");
        execute(&mut conn, "CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT)", &[]).unwrap();
        execute(&mut conn, "BEGIN IMMEDIATE", &[]).unwrap();
        let fill = "WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < 200) \
                    INSERT INTO t (n, body) SELECT n + $1, printf('%.2000c', 'x') FROM k";
        execute(&mut conn, "SAVEPOINT first_job", &[]).unwrap();
        execute(&mut conn, fill, &[Arg::Int(0)]).unwrap();
        execute(&mut conn, "RELEASE first_job", &[]).unwrap();
        execute(&mut conn, "SAVEPOINT second_job", &[]).unwrap();
        execute(&mut conn, fill, &[Arg::Int(1000)]).unwrap();
        execute(&mut conn, "UPDATE t SET body = 'changed' WHERE n <= 200", &[]).unwrap();
        execute(&mut conn, "ROLLBACK TO second_job", &[]).unwrap();
        execute(&mut conn, "RELEASE second_job", &[]).unwrap();
        execute(&mut conn, "COMMIT", &[]).unwrap();
        let rows = fetch_all(&mut conn, "SELECT COUNT(*), MAX(n), SUM(body = 'changed') FROM t", &[]).unwrap();
        assert_eq!(rows[0].get_at(0), Some(&Value::Integer(200)));
        assert_eq!(rows[0].get_at(1), Some(&Value::Integer(200)));
        assert_eq!(rows[0].get_at(2), Some(&Value::Integer(0)));
    }

    #[test]
    fn a_unique_violation_is_reported_as_sqlx_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("t.db")).unwrap();
        execute(&mut conn, "CREATE TABLE t (a TEXT PRIMARY KEY)", &[]).unwrap();
        execute(&mut conn, "INSERT INTO t (a) VALUES ($1)", &["x".into()]).unwrap();
        let e = execute(&mut conn, "INSERT INTO t (a) VALUES ($1)", &["x".into()]).unwrap_err();
        assert!(super::super::backend::is_unique_violation(&e), "{e}");
        let missing = execute(&mut conn, "INSERT INTO t (a) VALUES ($2)", &["x".into()]).unwrap_err();
        assert!(missing.to_string().contains("no argument for placeholder 2"), "{missing}");
    }
}
