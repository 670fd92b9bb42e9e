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

use crate::{SqlStore, Store};

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
