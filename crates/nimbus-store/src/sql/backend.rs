//! What differs between SQLite and PostgreSQL outside the schema, in one place: how a URL becomes
//! connection options, how a connection is set up, how a write transaction begins, the database's clock,
//! row locks, and which errors mean "someone else got there first, retry".
//!
//! Everything else in [`super`] is portable SQL that both backends run unchanged.

use std::str::FromStr;

use sqlx::any::AnyConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;

use crate::{StoreError, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn of_url(url: &str) -> StoreResult<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Backend(format!("unsupported database URL {url:?}: expected sqlite: or postgres://")))
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Milliseconds since the Unix epoch by the database's clock. Leases are judged by it, never by a
    /// server's own clock, so servers whose clocks disagree still agree on who holds what.
    pub(crate) fn now_ms(self) -> &'static str {
        match self {
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// A table of the document's array `field`'s items (as text in column `value`), or of its object's
    /// entries (`key`, `value`), for a subquery of a row's document.
    pub(crate) fn json_items(self, field: &str, object: bool) -> String {
        match (self, object) {
            (Backend::Sqlite, _) => format!("json_each(body, '$.{field}')"),
            (Backend::Postgres, false) => {
                format!("jsonb_array_elements_text(CAST(body AS jsonb) -> '{field}') AS a(value)")
            }
            (Backend::Postgres, true) => format!("jsonb_each_text(CAST(body AS jsonb) -> '{field}') AS e(key, value)"),
        }
    }

    /// The condition that the document's RFC 3339 time `field` is `op` (`>=`, `<=`) the time `{}` (RFC 3339
    /// text): compared as times, since their texts differ in their fractions of a second.
    pub(crate) fn time_compare(self, field: &str, op: &str) -> String {
        match self {
            Backend::Sqlite => format!("julianday(json_extract(body, '$.{field}')) {op} julianday({{}})"),
            Backend::Postgres => {
                format!("CAST(CAST(body AS jsonb) ->> '{field}' AS timestamptz) {op} CAST(CAST({{}} AS TEXT) AS timestamptz)")
            }
        }
    }

    /// The condition that `column` contains the text of the placeholder `{}` as it is (SQLite's `LIKE`
    /// ignores ASCII case and PostgreSQL's does not, so neither is used).
    pub(crate) fn contains_text(self, column: &'static str) -> String {
        match self {
            Backend::Sqlite => format!("instr({column}, {{}}) > 0"),
            Backend::Postgres => format!("strpos({column}, {{}}) > 0"),
        }
    }

    /// The statement that takes the next instance number (one row, one column): a sequence on PostgreSQL,
    /// which concurrent creates do not queue on; a counter row on SQLite, whose writers are serialized anyway.
    pub(crate) fn next_instance_number(self) -> &'static str {
        match self {
            Backend::Sqlite => "UPDATE counters SET value = value + 1 WHERE name = 'instance' RETURNING value",
            Backend::Postgres => "SELECT nextval(pg_get_serial_sequence('instances', 'numeric_id'))",
        }
    }

    /// The condition that an instance row has a scheduled shutdown, written exactly as the partial index
    /// `instances_with_shutdown` is (see the migrations), so that the index serves it.
    pub(crate) fn shutdown_scheduled(self) -> &'static str {
        match self {
            Backend::Sqlite => "json_extract(body, '$.expected_shutdown_at') IS NOT NULL",
            Backend::Postgres => "(CAST(body AS jsonb) ->> 'expected_shutdown_at') IS NOT NULL",
        }
    }

    /// Appended to a `SELECT` whose rows the transaction relies on until it commits. SQLite has no row
    /// locks and needs none: its write transactions (`BEGIN IMMEDIATE`) exclude every other writer.
    /// The total size of a project's volumes (`$1`), read from their documents: volumes are records, and
    /// each backend reads a number out of a JSON text its own way.
    pub(crate) fn volume_gb_of_project(self) -> &'static str {
        match self {
            Backend::Sqlite => {
                "SELECT CAST(COALESCE(SUM(json_extract(body, '$.size_gb')), 0) AS BIGINT) AS volume_gb
                 FROM records WHERE kind = 'volume' AND project_id = $1"
            }
            Backend::Postgres => {
                "SELECT CAST(COALESCE(SUM(CAST(CAST(body AS jsonb) ->> 'size_gb' AS BIGINT)), 0) AS BIGINT) AS volume_gb
                 FROM records WHERE kind = 'volume' AND project_id = $1"
            }
        }
    }

    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Like [`Backend::for_update`], for a row that must only not vanish: updates of its other columns
    /// (a host's heartbeat, a project's quota) go on meanwhile.
    pub(crate) fn for_key_share(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR KEY SHARE",
        }
    }

    /// Like [`Backend::for_update`], for a row that must only not change or vanish (a precondition).
    pub(crate) fn for_share(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR SHARE",
        }
    }

    /// Appended to the claim's inner `SELECT`: concurrent claimers pass over each other's rows instead of
    /// queueing behind them.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// How a write transaction begins. SQLite: `IMMEDIATE` takes the database's write lock at once, so
    /// writers queue at the start (in this process and in any other) instead of failing with
    /// `SQLITE_BUSY` when a read lock cannot be upgraded halfway through. PostgreSQL: READ COMMITTED,
    /// stated rather than left to the server's default, because the preconditions in [`super`] are written
    /// for it (compare-and-swap in `WHERE`, row locks before reads that matter).
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED",
        }
    }

    /// Whether `e` says only that a concurrent transaction got in the way: `SQLITE_BUSY`/`SQLITE_LOCKED`
    /// (after the busy timeout), PostgreSQL's serialization failure (40001) or deadlock (40P01). The
    /// caller sees [`StoreError::Conflict`] and retries.
    pub(crate) fn is_retryable(self, e: &sqlx::Error) -> bool {
        let sqlx::Error::Database(db) = e else { return false };
        let Some(code) = db.code() else { return false };
        match self {
            // sqlx reports SQLite's extended result code; its low byte is the primary code.
            Backend::Sqlite => code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
            Backend::Postgres => matches!(&*code, "40001" | "40P01"),
        }
    }

    /// Whether `e` says the database cannot take writes (or be reached) for now, for a reason outside
    /// Nimbus: SQLite's disk full, read-only, I/O error or cannot-open; PostgreSQL's insufficient resources
    /// (disk full, out of memory, too many connections), read-only transaction, shutting down or not
    /// accepting connections yet, and lost connections; the pool finding no connection.
    pub(crate) fn is_unavailable(self, e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            sqlx::Error::Database(db) => {
                let Some(code) = db.code() else { return false };
                match self {
                    Backend::Sqlite => code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 8 | 10 | 13 | 14)),
                    Backend::Postgres => {
                        code.starts_with("53")
                            || code.starts_with("08")
                            || matches!(&*code, "25006" | "57P01" | "57P03")
                    }
                }
            }
            _ => false,
        }
    }

    /// A database error as the trait reports it: `Conflict` when retrying at once may succeed,
    /// `Unavailable` when retrying later may, `Backend` otherwise, naming what was being done.
    pub(crate) fn error(self, doing: &str, e: sqlx::Error) -> StoreError {
        if self.is_retryable(&e) {
            StoreError::Conflict(format!("{doing}: {e}"))
        } else if self.is_unavailable(&e) {
            StoreError::Unavailable(format!("{doing}: {e}"))
        } else {
            StoreError::Backend(format!("{doing}: {e}"))
        }
    }

    /// Run inside every write set, so that other servers' [`super::notify`] listeners wake once it commits
    /// (PostgreSQL delivers a notification at commit, and drops it on rollback). SQLite has no one to tell.
    pub(crate) fn notify_others(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("SELECT pg_notify('nimbus_changes', '')"),
        }
    }

    /// Run instead of [`Backend::notify_others`] inside a write that recorded claimable work (an operation,
    /// a lease given back), so that other servers' idle workers claim it (see [`super::notify::WORK`]).
    pub(crate) fn notify_work(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("SELECT pg_notify('nimbus_changes', 'work')"),
        }
    }

    /// Run inside a write that revokes credentials (deletes an API key, a project, an organization), so
    /// that other servers drop what they cached (see [`super::notify::REVOKE`]).
    pub(crate) fn notify_revocation(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("SELECT pg_notify('nimbus_changes', 'revoke')"),
        }
    }

    /// Run before a write set appends its events, holding until commit: PostgreSQL hands out sequence
    /// numbers at insert, not at commit, so two concurrent sets could commit seq 8 before seq 7, and a
    /// reader that saw 8 would never look back for 7. Appending last, under one transaction-scoped lock
    /// (0x6e69_6d62_7573_0002: "nimbus", 2), makes sequence order commit order, while the lock is held
    /// only for the appends and the commit. SQLite's writers are serialized already.
    pub(crate) fn serialize_event_appends(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("SELECT pg_advisory_xact_lock(7956010486371385346)"),
        }
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Whether a SQLite URL names an in-memory database, which lives as long as its one connection.
pub(crate) fn sqlite_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// The file a SQLite `url` names (`None` for an in-memory database or a PostgreSQL URL).
pub(crate) fn sqlite_file(backend: Backend, url: &str) -> StoreResult<Option<std::path::PathBuf>> {
    if backend != Backend::Sqlite || sqlite_in_memory(url) {
        return Ok(None);
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("invalid database URL {url:?}: {e}")))?;
    Ok(Some(options.get_filename().to_owned()))
}

/// Connection options for `url`. A SQLite file is created when missing (`mode=rwc`); the connection's
/// pragmas are set by [`sqlite_pragmas`] after connecting, since the Any driver only carries a URL.
pub(crate) fn connect_options(backend: Backend, url: &str) -> StoreResult<AnyConnectOptions> {
    let invalid = |e: sqlx::Error| StoreError::Backend(format!("invalid database URL {url:?}: {e}"));
    match backend {
        Backend::Sqlite if sqlite_in_memory(url) => AnyConnectOptions::from_str(url).map_err(invalid),
        Backend::Sqlite => {
            let file = SqliteConnectOptions::from_str(url).map_err(invalid)?.create_if_missing(true);
            AnyConnectOptions::from_url(&file.to_url_lossy()).map_err(invalid)
        }
        Backend::Postgres => AnyConnectOptions::from_str(url).map_err(invalid),
    }
}

/// Run on every new SQLite connection. `busy_timeout` comes first so that switching to WAL waits for a
/// concurrent opener instead of failing; FULL sync makes a committed operation survive a power cut, not
/// only a crash; WAL lets readers run beside the one writer (an in-memory database has no file to log to).
pub(crate) fn sqlite_pragmas(in_memory: bool) -> [&'static str; 4] {
    [
        "PRAGMA busy_timeout = 10000",
        if in_memory { "PRAGMA journal_mode = MEMORY" } else { "PRAGMA journal_mode = WAL" },
        "PRAGMA synchronous = FULL",
        "PRAGMA foreign_keys = ON",
    ]
}
