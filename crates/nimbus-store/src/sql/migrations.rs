//! The schema of each backend: a list of migrations per backend, applied in order when a store opens and
//! recorded in `schema_version`. The lists are append-only: a shipped migration is never edited, because
//! databases out there were made by it; a change is a new migration that upgrades them in place.
//!
//! Opening is safe when several processes open one database at once: on PostgreSQL the whole run holds a
//! session advisory lock; on SQLite each step is a `BEGIN IMMEDIATE` transaction that re-reads the version
//! inside it. A database whose version is newer than this build knows is refused rather than misread.

use sqlx::AnyConnection;
use sqlx::{AnyPool, Connection};

use super::backend::Backend;
use crate::{StoreError, StoreResult};

/// SQLite's schema. Migration 1 is the schema of the single-server store, kept as it shipped.
const SQLITE: &[&str] = &[
    r#"
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
"#,
    r#"
-- Records are compare-and-swapped on a generation; a record written before counts as its first version.
ALTER TABLE records ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
-- Operations are leased to one worker at a time: lease_expires is in milliseconds since the epoch by the
-- database's clock. Rows from before are unleased, so their unfinished operations are claimable at once.
ALTER TABLE operations ADD COLUMN lease_owner TEXT;
ALTER TABLE operations ADD COLUMN lease_expires INTEGER;
-- The claim looks only at unfinished operations, oldest first: a small partial index, however long the
-- history of finished ones grows.
CREATE INDEX operations_unfinished ON operations (id) WHERE state IN ('pending', 'running');
CREATE INDEX operations_by_target ON operations (target_id, id);
-- An address is held by an instance or by an elastic IP: any owner.
ALTER TABLE addresses RENAME COLUMN instance_id TO owner;
CREATE INDEX addresses_by_owner ON addresses (owner);
CREATE INDEX events_by_project ON events (project_id, seq);
CREATE INDEX projects_by_organization ON projects (organization_id, numeric_id);
CREATE INDEX api_keys_by_project ON api_keys (project_id, key_id);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
-- Instances get a stable small integer id (ONET's legacy_id): existing ones their rowid, in the column and
-- in the document; new ones the next value of a counter that never goes back, so a number is never reused.
ALTER TABLE instances ADD COLUMN numeric_id INTEGER;
UPDATE instances SET numeric_id = rowid, body = json_set(body, '$.numeric_id', rowid);
CREATE UNIQUE INDEX instances_by_number ON instances (numeric_id);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters (name, value) SELECT 'instance', COALESCE(MAX(numeric_id), 0) FROM instances;
-- An SSH key's name is unique in its project as an alias (the engine's `ssh_key.name`), so that two servers
-- cannot both take one; keys registered before get theirs.
INSERT OR IGNORE INTO aliases (kind, alias, id)
    SELECT 'ssh_key.name', project_id || '/' || name, id FROM records WHERE kind = 'ssh_key' AND project_id IS NOT NULL;
"#,
    r#"
-- Hosts: registered by their agents, managed by operators. Whether a host answers is its heartbeat lease,
-- judged by the database's clock like operation leases.
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    generation INTEGER NOT NULL,
    heartbeat_expires INTEGER,
    body TEXT NOT NULL
);
-- Placement sums what each host carries and keeps anti-affinity group members apart, inside the
-- placing transaction: the columns it reads.
ALTER TABLE instances ADD COLUMN host TEXT;
ALTER TABLE instances ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN gpu_model TEXT;
-- The instance's anti-affinity group ids, each followed by a space.
ALTER TABLE instances ADD COLUMN anti_affinity TEXT NOT NULL DEFAULT '';
UPDATE instances SET
    host = json_extract(body, '$.host'),
    gpus = COALESCE(json_extract(body, '$.gpus'), 0),
    gpu_model = json_extract(body, '$.gpu_model'),
    anti_affinity = COALESCE((SELECT group_concat(value || ' ', '') FROM json_each(body, '$.anti_affinity_groups')), '');
CREATE INDEX instances_by_host ON instances (host);
-- Calls waiting for a host's agent are records named after the host.
CREATE INDEX records_by_name ON records (kind, name);
-- The first key is the operator's (above every organization): the bootstrap key of an existing cloud.
UPDATE api_keys SET body = json_set(body, '$.role', 'operator')
    WHERE key_id = (SELECT key_id FROM api_keys WHERE json_extract(body, '$.name') = 'bootstrap'
                    ORDER BY json_extract(body, '$.created_at') LIMIT 1);
"#,
    IDEMPOTENCY_HOLDS_SQLITE,
    r#"
-- The audit log (GET /v1/audit): one row per changing or refused request, read by organization and time.
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    organization_id TEXT,
    key_id TEXT,
    path TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX audit_by_organization ON audit (organization_id, seq);
CREATE INDEX audit_by_time ON audit (at_ms);
"#,
    r#"
-- Label selectors served by an index (version 6): one row per label of an instance, kept by triggers on
-- the instances table so no write path can forget it. The update trigger fires only when the labels
-- changed, so state changes (most updates) cost nothing more.
CREATE TABLE instance_labels (
    instance_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (instance_id, key)
);
CREATE INDEX instance_labels_by_value ON instance_labels (project_id, key, value, instance_id);
INSERT INTO instance_labels (instance_id, project_id, key, value)
    SELECT i.id, i.project_id, l.key, l.value FROM instances i, json_each(i.body, '$.labels') l;
CREATE TRIGGER instance_labels_on_insert AFTER INSERT ON instances BEGIN
    INSERT INTO instance_labels (instance_id, project_id, key, value)
        SELECT new.id, new.project_id, key, value FROM json_each(new.body, '$.labels');
END;
CREATE TRIGGER instance_labels_on_update AFTER UPDATE OF body ON instances
    WHEN json_extract(old.body, '$.labels') IS NOT json_extract(new.body, '$.labels') BEGIN
    DELETE FROM instance_labels WHERE instance_id = old.id;
    INSERT INTO instance_labels (instance_id, project_id, key, value)
        SELECT new.id, new.project_id, key, value FROM json_each(new.body, '$.labels');
END;
CREATE TRIGGER instance_labels_on_delete AFTER DELETE ON instances BEGIN
    DELETE FROM instance_labels WHERE instance_id = old.id;
END;
-- The reconciler's scheduled shutdowns, read without reading every instance (Backend::shutdown_scheduled).
CREATE INDEX instances_with_shutdown ON instances (id) WHERE json_extract(body, '$.expected_shutdown_at') IS NOT NULL;
"#,
    r#"
-- What instances use, kept in counters by triggers (version 7), so that a create's quota and room checks
-- read two rows instead of summing every instance of the project and of the host. Two scopes, as the
-- sums they replace counted: a project's quota counts instances not being destroyed; a host's room counts
-- placed instances until they are destroyed (a destroying one still holds its disk and memory).
CREATE TABLE usage_totals (
    scope TEXT NOT NULL,
    owner TEXT NOT NULL,
    instances INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    disk_gb INTEGER NOT NULL,
    PRIMARY KEY (scope, owner)
);
INSERT INTO usage_totals (scope, owner, instances, vcpus, memory_mib, disk_gb)
    SELECT 'project', project_id, COUNT(*), SUM(vcpus), SUM(memory_mib), SUM(disk_gb) FROM instances
    WHERE state NOT IN ('destroying', 'destroyed') GROUP BY project_id;
INSERT INTO usage_totals (scope, owner, instances, vcpus, memory_mib, disk_gb)
    SELECT 'host', host, COUNT(*), SUM(vcpus), SUM(memory_mib), SUM(disk_gb) FROM instances
    WHERE host IS NOT NULL AND state <> 'destroyed' GROUP BY host;
CREATE TRIGGER usage_on_insert AFTER INSERT ON instances BEGIN
    INSERT INTO usage_totals (scope, owner, instances, vcpus, memory_mib, disk_gb)
        SELECT 'project', new.project_id, 1, new.vcpus, new.memory_mib, new.disk_gb
            WHERE new.state NOT IN ('destroying', 'destroyed')
        UNION ALL
        SELECT 'host', new.host, 1, new.vcpus, new.memory_mib, new.disk_gb
            WHERE new.host IS NOT NULL AND new.state <> 'destroyed'
        ON CONFLICT (scope, owner) DO UPDATE SET instances = instances + excluded.instances,
            vcpus = vcpus + excluded.vcpus, memory_mib = memory_mib + excluded.memory_mib,
            disk_gb = disk_gb + excluded.disk_gb;
END;
CREATE TRIGGER usage_on_delete AFTER DELETE ON instances BEGIN
    UPDATE usage_totals SET instances = instances - 1, vcpus = vcpus - old.vcpus,
        memory_mib = memory_mib - old.memory_mib, disk_gb = disk_gb - old.disk_gb
        WHERE (scope = 'project' AND owner = old.project_id AND old.state NOT IN ('destroying', 'destroyed'))
           OR (scope = 'host' AND owner = old.host AND old.state <> 'destroyed');
END;
-- Most updates change neither state, host nor size: the trigger does not fire for them.
CREATE TRIGGER usage_on_update AFTER UPDATE ON instances
    WHEN old.state IS NOT new.state OR old.host IS NOT new.host OR old.project_id IS NOT new.project_id
      OR old.vcpus IS NOT new.vcpus OR old.memory_mib IS NOT new.memory_mib OR old.disk_gb IS NOT new.disk_gb
BEGIN
    UPDATE usage_totals SET instances = instances - 1, vcpus = vcpus - old.vcpus,
        memory_mib = memory_mib - old.memory_mib, disk_gb = disk_gb - old.disk_gb
        WHERE (scope = 'project' AND owner = old.project_id AND old.state NOT IN ('destroying', 'destroyed'))
           OR (scope = 'host' AND owner = old.host AND old.state <> 'destroyed');
    INSERT INTO usage_totals (scope, owner, instances, vcpus, memory_mib, disk_gb)
        SELECT 'project', new.project_id, 1, new.vcpus, new.memory_mib, new.disk_gb
            WHERE new.state NOT IN ('destroying', 'destroyed')
        UNION ALL
        SELECT 'host', new.host, 1, new.vcpus, new.memory_mib, new.disk_gb
            WHERE new.host IS NOT NULL AND new.state <> 'destroyed'
        ON CONFLICT (scope, owner) DO UPDATE SET instances = instances + excluded.instances,
            vcpus = vcpus + excluded.vcpus, memory_mib = memory_mib + excluded.memory_mib,
            disk_gb = disk_gb + excluded.disk_gb;
END;
-- GPUs stay summed from the rows, through an index holding only the instances that have some.
CREATE INDEX instances_with_gpus ON instances (host, gpu_model) WHERE gpus > 0;
-- The reconciler's purge of kept deleted records and `?state=` lists read one state, not every instance.
CREATE INDEX instances_by_state ON instances (state, id);
"#,
];

/// SQLite 4 (PostgreSQL 3): idempotency keys belong to the API key that sent them, and a request holds its
/// key under a lease, recording in its own transaction what it applied (see `IdempotencyHold`). SQLite
/// cannot change a primary key in place, so the table is rebuilt. Keys stored before keep an empty
/// `api_key_id` (they answer for every key of their project, as they did, until they expire within a day);
/// an unanswered one cannot tell whether its request committed, so it stays refused as in progress until
/// then, its `lease_expires` set to its expiry.
const IDEMPOTENCY_HOLDS_SQLITE: &str = r#"
CREATE TABLE idempotency_keys (
    project_id TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    holder_server TEXT,
    holder TEXT,
    lease_expires INTEGER,
    result TEXT,
    status INTEGER,
    body TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, api_key_id, key)
);
INSERT INTO idempotency_keys (project_id, api_key_id, key, request_hash, lease_expires, status, body, created_at)
    SELECT project_id, '', key, request_hash, (created_at + 86400) * 1000, status, body, created_at FROM idempotency;
DROP TABLE idempotency;
ALTER TABLE idempotency_keys RENAME TO idempotency;
CREATE INDEX idempotency_by_age ON idempotency (created_at);
CREATE INDEX idempotency_by_server ON idempotency (holder_server) WHERE holder_server IS NOT NULL;
"#;

/// PostgreSQL's schema: the same tables and columns as SQLite's latest, in PostgreSQL's types. Keys are
/// `COLLATE "C"` so that they sort bytewise, as on SQLite, whatever the database's locale: keyset pagination
/// (`id > $after ORDER BY id`) and every listing order must not depend on the server's collation.
const POSTGRES: &[&str] = &[
    r#"
CREATE TABLE organizations (id TEXT COLLATE "C" PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE projects (
    numeric_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id TEXT COLLATE "C" NOT NULL UNIQUE,
    organization_id TEXT COLLATE "C" NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX projects_by_organization ON projects (organization_id, numeric_id);
CREATE TABLE api_keys (
    key_id TEXT COLLATE "C" PRIMARY KEY,
    project_id TEXT COLLATE "C" NOT NULL,
    secret_sha256 TEXT COLLATE "C" NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE INDEX api_keys_by_project ON api_keys (project_id, key_id);
CREATE TABLE zones (name TEXT COLLATE "C" PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE records (
    kind TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    project_id TEXT COLLATE "C",
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    generation BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (kind, id)
);
CREATE INDEX records_by_project ON records (kind, project_id);
CREATE TABLE instances (
    id TEXT COLLATE "C" PRIMARY KEY,
    project_id TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    generation BIGINT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_gb BIGINT NOT NULL,
    body TEXT NOT NULL,
    numeric_id BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE
);
CREATE INDEX instances_by_project ON instances (project_id, id);
CREATE TABLE operations (
    id TEXT COLLATE "C" PRIMARY KEY,
    project_id TEXT COLLATE "C" NOT NULL,
    target_id TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    body TEXT NOT NULL,
    lease_owner TEXT COLLATE "C",
    lease_expires BIGINT
);
CREATE INDEX operations_by_project ON operations (project_id, id);
CREATE INDEX operations_by_target ON operations (target_id, id);
CREATE INDEX operations_unfinished ON operations (id) WHERE state IN ('pending', 'running');
CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id TEXT COLLATE "C" NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_by_project ON events (project_id, seq);
CREATE TABLE aliases (
    kind TEXT COLLATE "C" NOT NULL,
    alias TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (kind, alias),
    UNIQUE (kind, id)
);
CREATE TABLE addresses (
    network TEXT COLLATE "C" NOT NULL,
    host BIGINT NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (network, host)
);
CREATE INDEX addresses_by_owner ON addresses (owner);
CREATE TABLE idempotency (
    project_id TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    request_hash TEXT NOT NULL,
    status BIGINT,
    body TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
"#,
    r#"
CREATE TABLE hosts (
    name TEXT COLLATE "C" PRIMARY KEY,
    id TEXT COLLATE "C" NOT NULL UNIQUE,
    generation BIGINT NOT NULL,
    heartbeat_expires BIGINT,
    body TEXT NOT NULL
);
ALTER TABLE instances ADD COLUMN host TEXT COLLATE "C";
ALTER TABLE instances ADD COLUMN gpus BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN gpu_model TEXT COLLATE "C";
ALTER TABLE instances ADD COLUMN anti_affinity TEXT NOT NULL DEFAULT '';
UPDATE instances SET
    host = body::jsonb ->> 'host',
    gpus = COALESCE((body::jsonb ->> 'gpus')::BIGINT, 0),
    gpu_model = body::jsonb ->> 'gpu_model',
    anti_affinity = COALESCE((SELECT string_agg(g || ' ', '') FROM jsonb_array_elements_text(body::jsonb -> 'anti_affinity_groups') AS g), '');
CREATE INDEX instances_by_host ON instances (host);
CREATE INDEX records_by_name ON records (kind, name);
UPDATE api_keys SET body = jsonb_set(body::jsonb, '{role}', '"operator"')::text
    WHERE key_id = (SELECT key_id FROM api_keys WHERE body::jsonb ->> 'name' = 'bootstrap'
                    ORDER BY body::jsonb ->> 'created_at' LIMIT 1);
"#,
    r#"
-- As SQLite's version 4: idempotency keys per API key, held by one request under a lease.
ALTER TABLE idempotency ADD COLUMN api_key_id TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE idempotency ADD COLUMN holder_server TEXT COLLATE "C";
ALTER TABLE idempotency ADD COLUMN holder TEXT COLLATE "C";
ALTER TABLE idempotency ADD COLUMN lease_expires BIGINT;
ALTER TABLE idempotency ADD COLUMN result TEXT;
UPDATE idempotency SET lease_expires = (created_at + 86400) * 1000;
ALTER TABLE idempotency DROP CONSTRAINT idempotency_pkey;
ALTER TABLE idempotency ADD PRIMARY KEY (project_id, api_key_id, key);
CREATE INDEX idempotency_by_server ON idempotency (holder_server) WHERE holder_server IS NOT NULL;
"#,
    r#"
-- As SQLite's version 5: the audit log.
CREATE TABLE audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    organization_id TEXT COLLATE "C",
    key_id TEXT COLLATE "C",
    path TEXT COLLATE "C" NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX audit_by_organization ON audit (organization_id, seq);
CREATE INDEX audit_by_time ON audit (at_ms);
"#,
    r#"
-- As SQLite's version 6: label selectors served by an index, kept by triggers.
CREATE TABLE instance_labels (
    instance_id TEXT COLLATE "C" NOT NULL,
    project_id TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (instance_id, key)
);
CREATE INDEX instance_labels_by_value ON instance_labels (project_id, key, value, instance_id);
CREATE FUNCTION nimbus_labels_of(body TEXT) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(CAST(body AS jsonb) -> 'labels') = 'object'
                THEN CAST(body AS jsonb) -> 'labels' ELSE '{}'::jsonb END
$$;
INSERT INTO instance_labels (instance_id, project_id, key, value)
    SELECT i.id, i.project_id, l.key, l.value FROM instances i, jsonb_each_text(nimbus_labels_of(i.body)) l;
CREATE FUNCTION nimbus_instance_labels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM instance_labels WHERE instance_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO instance_labels (instance_id, project_id, key, value)
            SELECT NEW.id, NEW.project_id, l.key, l.value FROM jsonb_each_text(nimbus_labels_of(NEW.body)) l;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER instance_labels_on_insert AFTER INSERT ON instances
    FOR EACH ROW EXECUTE FUNCTION nimbus_instance_labels();
CREATE TRIGGER instance_labels_on_update AFTER UPDATE OF body ON instances
    FOR EACH ROW WHEN (nimbus_labels_of(OLD.body) IS DISTINCT FROM nimbus_labels_of(NEW.body))
    EXECUTE FUNCTION nimbus_instance_labels();
CREATE TRIGGER instance_labels_on_delete AFTER DELETE ON instances
    FOR EACH ROW EXECUTE FUNCTION nimbus_instance_labels();
CREATE INDEX instances_with_shutdown ON instances (id)
    WHERE (CAST(body AS jsonb) ->> 'expected_shutdown_at') IS NOT NULL;
"#,
    r#"
-- As SQLite's version 7: what instances use, kept in counters by triggers.
CREATE TABLE usage_totals (
    scope TEXT COLLATE "C" NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    instances BIGINT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_gb BIGINT NOT NULL,
    PRIMARY KEY (scope, owner)
);
INSERT INTO usage_totals (scope, owner, instances, vcpus, memory_mib, disk_gb)
    SELECT 'project', project_id, COUNT(*), SUM(vcpus), SUM(memory_mib), SUM(disk_gb) FROM instances
    WHERE state NOT IN ('destroying', 'destroyed') GROUP BY project_id;
INSERT INTO usage_totals (scope, owner, instances, vcpus, memory_mib, disk_gb)
    SELECT 'host', host, COUNT(*), SUM(vcpus), SUM(memory_mib), SUM(disk_gb) FROM instances
    WHERE host IS NOT NULL AND state <> 'destroyed' GROUP BY host;
CREATE FUNCTION nimbus_usage_add(p_scope TEXT, p_owner TEXT, sign BIGINT, p_vcpus BIGINT, p_memory_mib BIGINT,
                                 p_disk_gb BIGINT) RETURNS void LANGUAGE sql AS $$
    INSERT INTO usage_totals AS u (scope, owner, instances, vcpus, memory_mib, disk_gb)
        VALUES (p_scope, p_owner, sign, sign * p_vcpus, sign * p_memory_mib, sign * p_disk_gb)
        ON CONFLICT (scope, owner) DO UPDATE SET instances = u.instances + excluded.instances,
            vcpus = u.vcpus + excluded.vcpus, memory_mib = u.memory_mib + excluded.memory_mib,
            disk_gb = u.disk_gb + excluded.disk_gb
$$;
CREATE FUNCTION nimbus_instance_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        IF OLD.state NOT IN ('destroying', 'destroyed') THEN
            PERFORM nimbus_usage_add('project', OLD.project_id, -1, OLD.vcpus, OLD.memory_mib, OLD.disk_gb);
        END IF;
        IF OLD.host IS NOT NULL AND OLD.state <> 'destroyed' THEN
            PERFORM nimbus_usage_add('host', OLD.host, -1, OLD.vcpus, OLD.memory_mib, OLD.disk_gb);
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF NEW.state NOT IN ('destroying', 'destroyed') THEN
            PERFORM nimbus_usage_add('project', NEW.project_id, 1, NEW.vcpus, NEW.memory_mib, NEW.disk_gb);
        END IF;
        IF NEW.host IS NOT NULL AND NEW.state <> 'destroyed' THEN
            PERFORM nimbus_usage_add('host', NEW.host, 1, NEW.vcpus, NEW.memory_mib, NEW.disk_gb);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER usage_on_insert AFTER INSERT ON instances FOR EACH ROW EXECUTE FUNCTION nimbus_instance_usage();
CREATE TRIGGER usage_on_delete AFTER DELETE ON instances FOR EACH ROW EXECUTE FUNCTION nimbus_instance_usage();
CREATE TRIGGER usage_on_update AFTER UPDATE ON instances FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.host IS DISTINCT FROM NEW.host
          OR OLD.project_id IS DISTINCT FROM NEW.project_id OR OLD.vcpus IS DISTINCT FROM NEW.vcpus
          OR OLD.memory_mib IS DISTINCT FROM NEW.memory_mib OR OLD.disk_gb IS DISTINCT FROM NEW.disk_gb)
    EXECUTE FUNCTION nimbus_instance_usage();
CREATE INDEX instances_with_gpus ON instances (host, gpu_model) WHERE gpus > 0;
CREATE INDEX instances_by_state ON instances (state, id);
"#,
];

/// The session advisory lock held on PostgreSQL while migrating ("nimbus", 1): a second server opening
/// the same database waits instead of racing to create the same tables.
const MIGRATION_LOCK: i64 = 0x6e69_6d62_7573_0001;

pub(crate) fn migrations(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }
}

/// Brings the database's schema up to date.
pub(crate) async fn migrate(pool: &AnyPool, backend: Backend) -> StoreResult<()> {
    let fail = |doing: &str, e: sqlx::Error| StoreError::Backend(format!("migrating the schema: {doing}: {e}"));
    let mut conn = pool.acquire().await.map_err(|e| fail("connecting", e))?;
    if backend == Backend::Sqlite {
        return run(&mut conn, backend).await;
    }
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(|e| fail("taking the migration lock", e))?;
    let result = run(&mut conn, backend).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await;
    if unlocked.is_err() {
        // A session lock lives as long as its connection: closing it is the sure way to free it.
        let _ = conn.detach().close().await;
    }
    result
}

async fn run(conn: &mut AnyConnection, backend: Backend) -> StoreResult<()> {
    let fail = |doing: String, e: sqlx::Error| StoreError::Backend(format!("migrating the schema: {doing}: {e}"));
    let migrations = migrations(backend);
    loop {
        let mut tx = conn.begin_with(backend.begin_write()).await.map_err(|e| fail("beginning".into(), e))?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(|e| fail("creating schema_version".into(), e))?;
        let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| fail("reading schema_version".into(), e))?;
        let current =
            usize::try_from(current).map_err(|_| StoreError::Backend(format!("corrupt schema_version {current}")))?;
        if current > migrations.len() {
            return Err(StoreError::Backend(format!(
                "the database's schema is version {current}, newer than this build knows ({}): upgrade nimbus",
                migrations.len()
            )));
        }
        if current == migrations.len() {
            return tx.commit().await.map_err(|e| fail("committing".into(), e));
        }
        let version = current + 1;
        sqlx::raw_sql(migrations[current])
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(format!("applying version {version}"), e))?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(version as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(format!("recording version {version}"), e))?;
        tx.commit().await.map_err(|e| fail(format!("committing version {version}"), e))?;
        tracing::info!(backend = backend.name(), version, "store schema migrated");
    }
}

#[cfg(test)]
mod tests {
    use nimbus_core::instance::Instance;
    use nimbus_core::operation::OperationState;
    use serde_json::json;
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    use uuid::Uuid;

    use super::SQLITE;
    use crate::{AddressHold, SqlStore, Store, Write, WriteSet};

    /// FNV-1a: a fingerprint that, unlike std's hashers, never changes between Rust releases.
    fn fingerprint(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }

    #[test]
    fn sqlite_migration_1_is_the_one_that_shipped() {
        // Databases out there were made by it: editing it would leave them different from new ones.
        assert_eq!(
            (SQLITE[0].len(), fingerprint(SQLITE[0])),
            (1940, 0x82b55c79cc54138d),
            "a shipped migration was edited"
        );
    }

    #[test]
    fn shipped_migrations_are_the_ones_that_shipped() {
        // SQLite 2 and PostgreSQL 1 shipped with the many-servers store: databases out there were made by them.
        assert_eq!((SQLITE[1].len(), fingerprint(SQLITE[1])), (2175, 0x72a07044dc96073e), "SQLite 2 was edited");
        assert_eq!(
            (super::POSTGRES[0].len(), fingerprint(super::POSTGRES[0])),
            (2861, 0x50376c3fc2f232ed),
            "PostgreSQL 1 was edited"
        );
    }

    #[tokio::test]
    async fn a_version_1_sqlite_database_is_upgraded_in_place_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.db");
        let (org, project, operation, record, holder) =
            (Uuid::new_v4(), Uuid::new_v4(), Uuid::now_v7(), Uuid::new_v4(), Uuid::new_v4());
        let now = "2026-01-02T03:04:05Z";
        let project_body = json!({"id": project, "numeric_id": 0, "organization_id": org, "name": "p",
            "quota": {"instances": 4, "vcpus": 8, "memory_mib": 8192, "disk_gb": 100}, "created_at": now});
        let old_web = crate::conformance::instance(project, "old-web", 1);
        let instance = old_web.id;
        let operation_body = json!({"id": operation, "project_id": project, "kind": "start", "state": "pending",
            "reason": null, "message": null, "target": {"type": "instance", "id": instance}, "params": {},
            "result": null, "state_before": null, "attempts": 0, "actor": {"key_id": null, "request_id": null,
            "source": "nimbus"}, "created_at": now, "updated_at": now});

        // A database as version 1 of the store left it, rows written with the SQL it used.
        let mut old = SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
        sqlx::raw_sql(SQLITE[0]).execute(&mut old).await.unwrap();
        let rows: [(&str, Vec<String>); 7] = [
            ("CREATE TABLE schema_version (version INTEGER NOT NULL)", vec![]),
            ("INSERT INTO schema_version (version) VALUES (1)", vec![]),
            (
                "INSERT INTO projects (id, organization_id, body) VALUES (?, ?, ?)",
                vec![project.to_string(), org.to_string(), project_body.to_string()],
            ),
            (
                "INSERT INTO instances (id, project_id, name, state, generation, vcpus, memory_mib, disk_gb, body)
                 VALUES (?, ?, 'old-web', 'creating', 1, 1, 1024, 10, ?)",
                vec![instance.to_string(), project.to_string(), serde_json::to_string(&old_web).unwrap()],
            ),
            (
                "INSERT INTO operations (id, project_id, target_id, state, body) VALUES (?, ?, ?, 'pending', ?)",
                vec![operation.to_string(), project.to_string(), instance.to_string(), operation_body.to_string()],
            ),
            (
                "INSERT INTO records (kind, id, project_id, name, body) VALUES ('template', ?, NULL, 'debian', ?)",
                vec![record.to_string(), json!({"image": "debian-12"}).to_string()],
            ),
            ("INSERT INTO addresses (network, host, instance_id) VALUES ('net', 5, ?)", vec![holder.to_string()]),
        ];
        for (sql, binds) in rows {
            binds.into_iter().fold(sqlx::query(sql), |q, b| q.bind(b)).execute(&mut old).await.unwrap();
        }
        old.close().await.unwrap();

        let store = SqlStore::open(&format!("sqlite://{}", path.display())).await.unwrap();
        let version: i64 =
            sqlx::query_scalar("SELECT MAX(version) FROM schema_version").fetch_one(&store.pool).await.unwrap();
        assert_eq!(version as usize, SQLITE.len(), "migrated to the latest version");

        assert_eq!(store.get_project(project).await.unwrap().unwrap().quota.instances, 4);
        let migrated = store.get_instance(instance).await.unwrap().unwrap();
        assert!(migrated.numeric_id > 0, "an old instance is numbered by the migration");
        assert_eq!(migrated, Instance { numeric_id: migrated.numeric_id, ..old_web });
        assert_eq!(store.usage(project).await.unwrap().instances, 1);
        let r = store.get_record("template", record).await.unwrap().unwrap();
        assert_eq!((&r.body, r.generation), (&json!({"image": "debian-12"}), 1), "old records are generation 1");
        assert_eq!(
            store.list_addresses(None).await.unwrap(),
            [AddressHold { network: "net".into(), host: 5, owner: holder }]
        );
        assert_eq!(store.free_addresses("net", 5, 6, 2).await.unwrap(), [6], "the old hold still counts");

        // What was pending before the upgrade is unleased: the first worker picks it up.
        let op = store.claim_operation("w", std::time::Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!((op.id, op.state), (operation, OperationState::Pending));
        // And old records take compare-and-swap updates from generation 1.
        let mut set = WriteSet::new();
        set.push(Write::UpdateRecord {
            record: r.next("debian", &json!({"image": "debian-13"})),
            expected_generation: 1,
        });
        store.apply(set).await.unwrap();
        assert_eq!(store.get_record("template", record).await.unwrap().unwrap().generation, 2);
    }

    /// A database as version 2 (the many-servers store) left it, with idempotency keys answered and
    /// unanswered, opened by this build: every row is kept, an answered key still replays (for any API key
    /// of its project, as it did), an unanswered one stays refused as in progress (nothing tells whether its
    /// request committed) until it expires, and new keys are per API key.
    #[tokio::test]
    async fn a_version_2_sqlite_database_is_upgraded_in_place_keeping_its_rows() {
        use crate::{IdempotencyClaim, IdempotencyScope};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.db");
        let (org, project) = (Uuid::new_v4(), Uuid::new_v4());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let project_body = json!({"id": project, "numeric_id": 0, "organization_id": org, "name": "p",
            "quota": {"instances": 4, "vcpus": 8, "memory_mib": 8192, "disk_gb": 100},
            "created_at": "2026-01-02T03:04:05Z"});
        let web = Instance { numeric_id: 7, ..crate::conformance::instance(project, "web", 1) };
        let mut old = SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
        sqlx::raw_sql("CREATE TABLE schema_version (version INTEGER NOT NULL)").execute(&mut old).await.unwrap();
        for (n, migration) in SQLITE[..2].iter().enumerate() {
            sqlx::raw_sql(migration).execute(&mut old).await.unwrap();
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind(n as i64 + 1)
                .execute(&mut old)
                .await
                .unwrap();
        }
        let rows: [(&str, Vec<String>); 5] = [
            (
                "INSERT INTO projects (id, organization_id, body) VALUES (?, ?, ?)",
                vec![project.to_string(), org.to_string(), project_body.to_string()],
            ),
            (
                "INSERT INTO instances (id, project_id, name, state, generation, vcpus, memory_mib, disk_gb, body,
                 numeric_id) VALUES (?, ?, 'web', 'creating', 1, 1, 1024, 10, ?, 7)",
                vec![web.id.to_string(), project.to_string(), serde_json::to_string(&web).unwrap()],
            ),
            ("UPDATE counters SET value = 7 WHERE name = 'instance'", vec![]),
            (
                "INSERT INTO idempotency (project_id, key, request_hash, status, body, created_at)
                 VALUES (?, 'answered', 'h', 202, '{\"id\":1}', ?)",
                vec![project.to_string(), now.to_string()],
            ),
            (
                "INSERT INTO idempotency (project_id, key, request_hash, status, body, created_at)
                 VALUES (?, 'cut', 'h', NULL, NULL, ?)",
                vec![project.to_string(), now.to_string()],
            ),
        ];
        for (sql, binds) in rows {
            binds.into_iter().fold(sqlx::query(sql), |q, b| q.bind(b)).execute(&mut old).await.unwrap();
        }
        old.close().await.unwrap();

        let store = SqlStore::open(&format!("sqlite://{}", path.display())).await.unwrap();
        let version: i64 =
            sqlx::query_scalar("SELECT MAX(version) FROM schema_version").fetch_one(&store.pool).await.unwrap();
        assert_eq!(version as usize, SQLITE.len(), "migrated to the latest version");
        assert_eq!(store.get_instance(web.id).await.unwrap().unwrap().numeric_id, 7);
        let next = crate::conformance::instance(project, "next", 1);
        let mut set = WriteSet::new();
        set.push(Write::PutInstance { instance: next.clone(), expected_generation: None });
        store.apply(set).await.unwrap();
        assert_eq!(store.get_instance(next.id).await.unwrap().unwrap().numeric_id, 8, "numbers go on");

        let lease = std::time::Duration::from_secs(60);
        let scope = |key: &str| IdempotencyScope { project_id: project, api_key_id: "NIMany".into(), key: key.into() };
        assert_eq!(
            store.idempotency_claim(&scope("answered"), "h", "s", lease).await.unwrap(),
            IdempotencyClaim::Replay { status: 202, body: "{\"id\":1}".into() }
        );
        assert_eq!(
            store.idempotency_claim(&scope("cut"), "h", "s", lease).await.unwrap(),
            IdempotencyClaim::InProgress
        );
        store.idempotency_sweep(Some("s")).await.unwrap();
        assert_eq!(
            store.idempotency_claim(&scope("cut"), "h", "s", lease).await.unwrap(),
            IdempotencyClaim::InProgress,
            "no sweep takes an old unanswered key for dead"
        );
        assert_eq!(store.idempotency_audit().await.unwrap().unknown, 1);
        assert!(matches!(
            store.idempotency_claim(&scope("fresh"), "h", "s", lease).await.unwrap(),
            IdempotencyClaim::New(_)
        ));
    }

    /// A PostgreSQL database as version 1 left it, with an answered and an unanswered idempotency key,
    /// brought up to date (skipped without `NIMBUS_TEST_DATABASE_URL`).
    #[tokio::test]
    async fn a_version_1_postgres_database_is_upgraded_in_place_keeping_its_rows() {
        use sqlx::PgConnection;

        use crate::{IdempotencyClaim, IdempotencyScope};
        let Some((url, _db)) = crate::testing::fresh_postgres_database().await else { return };
        let project = Uuid::new_v4();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut old = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(super::POSTGRES[0]).execute(&mut old).await.unwrap();
        sqlx::raw_sql("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);")
            .execute(&mut old)
            .await
            .unwrap();
        for (key, status, body) in [("answered", Some(201i64), Some("{}")), ("cut", None, None)] {
            sqlx::query(
                "INSERT INTO idempotency (project_id, key, request_hash, status, body, created_at)
                 VALUES ($1, $2, 'h', $3, $4, $5)",
            )
            .bind(project.to_string())
            .bind(key)
            .bind(status)
            .bind(body)
            .bind(now)
            .execute(&mut old)
            .await
            .unwrap();
        }
        old.close().await.unwrap();

        let store = SqlStore::open(&url).await.unwrap();
        let version: i32 =
            sqlx::query_scalar("SELECT MAX(version) FROM schema_version").fetch_one(&store.pool).await.unwrap();
        assert_eq!(version as usize, super::POSTGRES.len());
        let lease = std::time::Duration::from_secs(60);
        let scope = |key: &str| IdempotencyScope { project_id: project, api_key_id: "NIMk".into(), key: key.into() };
        assert_eq!(
            store.idempotency_claim(&scope("answered"), "h", "s", lease).await.unwrap(),
            IdempotencyClaim::Replay { status: 201, body: "{}".into() }
        );
        assert_eq!(
            store.idempotency_claim(&scope("cut"), "h", "s", lease).await.unwrap(),
            IdempotencyClaim::InProgress
        );
        assert!(matches!(
            store.idempotency_claim(&scope("fresh"), "h", "s", lease).await.unwrap(),
            IdempotencyClaim::New(_)
        ));
    }
}
