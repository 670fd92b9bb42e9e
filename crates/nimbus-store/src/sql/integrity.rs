//! The store's integrity check, and SQLite backups and restores.
//!
//! The check has two halves. Physical: SQLite's `integrity_check` and `foreign_key_check`; on PostgreSQL,
//! `amcheck`'s `bt_index_check` of every B-tree index of the schema (its index structure against its
//! invariants), when the extension can be had (it ships with PostgreSQL; creating it needs a superuser, so
//! without one the physical half says it was skipped). Logical, on both: every column a query filters on
//! agrees with the JSON document beside it, every instance's lock names an operation that exists, and
//! every held address belongs to an instance, an elastic IP or a reserved address that exists.
//!
//! A backup is `VACUUM INTO`: one read transaction, so a consistent copy of the database as of one commit,
//! taken beside a serving server (readers and the writer do not block each other in WAL mode). A restore
//! checks the file like the store's own check does, then puts a copy in place of the data dir's database
//! with what belonged to the processes that were running when it was taken dropped: operation leases
//! (their holders are gone; the operations resume at once) and idempotency holds that applied nothing
//! (their requests' effects are not in the copy; a retry must run).

use std::path::Path;
use std::str::FromStr;

use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use super::backend::Backend;
use super::{column, column_at, decode, parse_uuid, query, SqlStore};
use crate::{IntegrityReport, StoreError, StoreResult};

impl SqlStore {
    pub(crate) async fn integrity(&self) -> StoreResult<IntegrityReport> {
        let mut report = IntegrityReport::default();
        match self.backend {
            Backend::Sqlite => {
                let rows = query("PRAGMA integrity_check", vec![])
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("checking integrity"))?;
                for row in rows {
                    let line: String = column_at(&row, 0)?;
                    if line != "ok" {
                        report.problems.push(format!("integrity_check: {line}"));
                    }
                }
                let rows = query("PRAGMA foreign_key_check", vec![])
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("checking foreign keys"))?;
                report.problems.extend(rows.iter().map(|_| "foreign_key_check: a dangling reference".to_string()));
                report.checked.push("sqlite integrity_check and foreign_key_check".into());
            }
            Backend::Postgres => {
                let available =
                    query("CREATE EXTENSION IF NOT EXISTS amcheck", vec![]).execute(&self.pool).await.is_ok();
                if available {
                    let rows = query(
                        "SELECT CAST(c.relname AS TEXT) AS name FROM pg_index i
                         JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE am.amname = 'btree' AND n.nspname = current_schema() ORDER BY c.relname",
                        vec![],
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing indexes"))?;
                    for row in &rows {
                        let name: String = column(row, "name")?;
                        let sql = format!("SELECT bt_index_check('{}'::regclass, true)", name.replace('\'', "''"));
                        if let Err(e) = query(&sql, vec![]).execute(&self.pool).await {
                            report.problems.push(format!("index {name}: {e}"));
                        }
                    }
                    report.checked.push(format!("amcheck bt_index_check of {} B-tree indexes", rows.len()));
                } else {
                    report
                        .checked
                        .push("no amcheck (creating the extension needs a superuser): indexes unchecked".into());
                }
            }
        }
        self.logical_integrity(&mut report).await?;
        Ok(report)
    }

    async fn logical_integrity(&self, report: &mut IntegrityReport) -> StoreResult<()> {
        let rows = query("SELECT id, project_id, name, state, generation, body FROM instances", vec![])
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("reading instances"))?;
        let mut instances = std::collections::HashSet::new();
        let mut locks = Vec::new();
        for row in &rows {
            let id: String = column(row, "id")?;
            let i: Instance = decode("instance", &column::<String>(row, "body")?)?;
            instances.insert(i.id);
            let columns = (
                id,
                column::<String>(row, "project_id")?,
                column::<String>(row, "name")?,
                column::<String>(row, "state")?,
                column::<i64>(row, "generation")?,
            );
            let body = (
                i.id.to_string(),
                i.project_id.to_string(),
                i.name.clone(),
                i.state.as_str().to_string(),
                i.generation,
            );
            if columns != body {
                report
                    .problems
                    .push(format!("instance {}: columns {columns:?} disagree with its document {body:?}", i.id));
            }
            if let Some(op) = i.lock_operation_id {
                locks.push((i.id, op));
            }
        }
        for (instance, op) in locks {
            let found = query("SELECT body FROM operations WHERE id = $1", super::args![op])
                .fetch_optional(&self.pool)
                .await
                .map_err(self.fail("reading an operation"))?;
            if found.is_none() {
                report.problems.push(format!("instance {instance} is locked by operation {op}, which does not exist"));
            }
        }
        let operations = query("SELECT id, state, body FROM operations", vec![])
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("reading operations"))?;
        for row in &operations {
            let op: Operation = decode("operation", &column::<String>(row, "body")?)?;
            let state: String = column(row, "state")?;
            if state != op.state.as_str() || column::<String>(row, "id")? != op.id.to_string() {
                report.problems.push(format!("operation {}: columns disagree with its document", op.id));
            }
        }
        // Elastic IPs hold their pool's addresses, reservations addresses of the instance network.
        let elastic_ips = query("SELECT id FROM records WHERE kind IN ('elastic_ip', 'reserved_address')", vec![])
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("reading elastic IPs and reserved addresses"))?
            .iter()
            .map(|r| parse_uuid(&column::<String>(r, "id")?))
            .collect::<StoreResult<std::collections::HashSet<_>>>()?;
        let addresses = query("SELECT network, host, owner FROM addresses", vec![])
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("reading addresses"))?;
        for row in &addresses {
            let owner = parse_uuid(&column::<String>(row, "owner")?)?;
            if !instances.contains(&owner) && !elastic_ips.contains(&owner) {
                let (network, host): (String, i64) = (column(row, "network")?, column(row, "host")?);
                report.problems.push(format!("address {host} of {network} is held by {owner}, which does not exist"));
            }
        }
        report.checked.push(format!(
            "{} instances and {} operations against their documents, locks, {} address holders",
            instances.len(),
            operations.len(),
            addresses.len()
        ));
        Ok(())
    }
}

async fn open_file(path: &Path, create: bool) -> StoreResult<SqliteConnection> {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .busy_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))
}

/// Writes a consistent copy of the SQLite database at `database` to `dest` (which must not exist), while
/// other processes keep reading and writing it; synced to disk before it returns.
pub async fn backup_sqlite(database: &Path, dest: &Path) -> StoreResult<()> {
    if !database.is_file() {
        return Err(StoreError::NotFound(format!("database {}", database.display())));
    }
    if dest.exists() {
        return Err(StoreError::AlreadyExists(format!("{}", dest.display())));
    }
    let mut conn = open_file(database, false).await?;
    let dest_str = dest.to_str().ok_or_else(|| StoreError::Backend(format!("{} is not UTF-8", dest.display())))?;
    let done = sqlx::query("VACUUM INTO $1").bind(dest_str).execute(&mut conn).await;
    let _ = conn.close().await;
    if let Err(e) = done {
        let _ = std::fs::remove_file(dest);
        return Err(StoreError::Backend(format!("backing up {}: {e}", database.display())));
    }
    sync(dest)
}

fn sync(file: &Path) -> StoreResult<()> {
    let fail = |e: std::io::Error| StoreError::Backend(format!("syncing {}: {e}", file.display()));
    std::fs::File::open(file).and_then(|f| f.sync_all()).map_err(fail)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    Ok(())
}

/// What a restore found in the backup it put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub schema_version: u32,
    pub instances: u64,
    pub operations_resumed: u64,
}

/// Puts the backup `file` in place as the SQLite database `database`, after checking it: a Nimbus database
/// of a schema this build knows (an older one is upgraded when a server next opens it), passing the
/// integrity check. What `database` held before is kept beside it as `<name>.before-restore-<unix time>`
/// (with its WAL), never deleted. No server may be using `database` meanwhile (the caller holds its data
/// dir's lock).
pub async fn restore_sqlite(file: &Path, database: &Path) -> StoreResult<Restored> {
    if !file.is_file() {
        return Err(StoreError::NotFound(format!("backup {}", file.display())));
    }
    let dir = database.parent().ok_or_else(|| StoreError::Backend("a database path needs a directory".into()))?;
    let name = database.file_name().and_then(|n| n.to_str()).unwrap_or("nimbus.db").to_string();
    let scratch = dir.join(format!(".{name}.restoring"));
    let _ = std::fs::remove_file(&scratch);
    std::fs::copy(file, &scratch)
        .map_err(|e| StoreError::Backend(format!("copying {} to {}: {e}", file.display(), scratch.display())))?;
    let prepared = prepare(&scratch).await;
    let restored = match prepared {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&scratch);
            return Err(e);
        }
    };
    sync(&scratch)?;
    if database.exists() {
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        for suffix in ["", "-wal", "-shm"] {
            let old = dir.join(format!("{name}{suffix}"));
            if old.exists() {
                let aside = dir.join(format!("{name}.before-restore-{stamp}{suffix}"));
                std::fs::rename(&old, &aside)
                    .map_err(|e| StoreError::Backend(format!("moving {} aside: {e}", old.display())))?;
            }
        }
    }
    std::fs::rename(&scratch, database)
        .map_err(|e| StoreError::Backend(format!("putting the backup in place as {}: {e}", database.display())))?;
    sync(database)?;
    Ok(restored)
}

/// Checks a copy of a backup and drops what belonged to the processes running when it was taken.
async fn prepare(copy: &Path) -> StoreResult<Restored> {
    let mut conn = open_file(copy, false).await?;
    let result = async {
        let fail = |doing: &'static str| move |e: sqlx::Error| StoreError::Backend(format!("{doing}: {e}"));
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(format!("not a Nimbus database (no schema version): {e}")))?;
        let version = version.unwrap_or(0);
        let known = super::migrations::migrations(Backend::Sqlite).len() as i64;
        if version < 1 || version > known {
            return Err(StoreError::Backend(format!(
                "the backup's schema is version {version}; this build knows versions 1 to {known}"
            )));
        }
        let lines: Vec<String> =
            sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&mut conn).await.map_err(fail("checking it"))?;
        if lines != ["ok"] {
            return Err(StoreError::Backend(format!("the backup is damaged: {}", lines.join("; "))));
        }
        let mut tx = conn.begin().await.map_err(fail("beginning"))?;
        // Versions before 2 had no leases.
        let resumed = if version >= 2 {
            sqlx::query("UPDATE operations SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner IS NOT NULL")
                .execute(&mut *tx)
                .await
                .map_err(fail("dropping leases"))?
                .rows_affected()
        } else {
            0
        };
        if version >= 3 {
            sqlx::query("DELETE FROM idempotency WHERE holder IS NOT NULL AND result IS NULL AND status IS NULL")
                .execute(&mut *tx)
                .await
                .map_err(fail("dropping idempotency holds"))?;
            sqlx::query("UPDATE idempotency SET holder = NULL, holder_server = NULL, lease_expires = NULL")
                .execute(&mut *tx)
                .await
                .map_err(fail("dropping idempotency holds"))?;
        }
        tx.commit().await.map_err(fail("committing"))?;
        let instances: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances")
            .fetch_one(&mut conn)
            .await
            .map_err(fail("counting"))?;
        Ok(Restored { schema_version: version as u32, instances: instances as u64, operations_resumed: resumed })
    }
    .await;
    let _ = conn.close().await;
    result
}

/// Whether `url` names a SQLite file, and which.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") || super::backend::sqlite_in_memory(url) {
        return None;
    }
    SqliteConnectOptions::from_str(url).ok().map(|o| o.get_filename().to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Store, Write, WriteSet};

    async fn store_at(path: &Path) -> Arc<SqlStore> {
        Arc::new(SqlStore::open(&format!("sqlite://{}", path.display())).await.unwrap())
    }

    fn alias(n: usize) -> WriteSet {
        let mut set = WriteSet::new();
        set.push(Write::PutAlias { kind: "k".into(), alias: format!("a{n}"), id: uuid::Uuid::new_v4() });
        set
    }

    /// A backup taken while a writer commits without pause holds a prefix of its commits, and every commit
    /// made before the backup began; the restored database passes its check and opens.
    #[tokio::test]
    async fn a_backup_taken_under_writes_is_consistent_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("nimbus.db");
        let store = store_at(&db).await;
        for n in 0..50 {
            store.apply(alias(n)).await.unwrap();
        }
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 50..400 {
                    store.apply(alias(n)).await.unwrap();
                }
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let backup = dir.path().join("backup.db");
        backup_sqlite(&db, &backup).await.unwrap();
        writer.await.unwrap();
        assert!(backup_sqlite(&db, &backup).await.is_err(), "an existing file is never overwritten");

        let target = tempfile::tempdir().unwrap();
        let restored_db = target.path().join("nimbus.db");
        std::fs::write(&restored_db, b"what was there before").unwrap();
        let restored = restore_sqlite(&backup, &restored_db).await.unwrap();
        assert_eq!(restored.schema_version as usize, super::super::migrations::migrations(Backend::Sqlite).len());
        let aside: Vec<_> = std::fs::read_dir(target.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("nimbus.db.before-restore-"))
            .collect();
        assert_eq!(aside.len(), 1, "what the data dir held is kept aside");
        let copy = store_at(&restored_db).await;
        assert!(copy.check_integrity().await.unwrap().problems.is_empty());
        let mut present = Vec::new();
        for n in 0..400 {
            present.push(copy.resolve_alias("k", &format!("a{n}")).await.unwrap().is_some());
        }
        let kept = present.iter().take_while(|p| **p).count();
        assert!(kept >= 50, "every write made before the backup is in it ({kept})");
        assert!(present[kept..].iter().all(|p| !p), "a prefix of the commits, nothing after a gap");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_sound_nimbus_database_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("nimbus.db");
        std::fs::write(&db, b"the live database").unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        assert!(restore_sqlite(&junk, &db).await.is_err());
        let other = dir.path().join("other.db");
        let mut conn = open_file(&other, true).await.unwrap();
        sqlx::query("CREATE TABLE t (x)").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let err = restore_sqlite(&other, &db).await.unwrap_err();
        assert!(err.to_string().contains("not a Nimbus database"), "{err}");
        assert_eq!(std::fs::read(&db).unwrap(), b"the live database", "untouched");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "no scratch file left");
    }
}
