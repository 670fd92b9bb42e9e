//! [`crate::Store::apply`]: the writes of one [`WriteSet`] inside the caller's write transaction.
//!
//! Order inside the transaction, and why:
//! 1. With `enforce_quota_of`, the project's row is locked first (PostgreSQL), so sets checking the same
//!    project's quota run one after another and each one's check sees every earlier commit.
//! 2. The writes, in the order given, except event appends. Every update is a compare-and-swap in its
//!    `WHERE` clause; zero rows touched means someone else won (`Conflict`).
//! 3. The quota check, on the set's result.
//! 4. Other servers are notified (delivered at commit).
//! 5. Event appends last, under [`Backend::serialize_event_appends`], so that sequence order is commit order
//!    while the lock that ensures it is held only for the appends and the commit.
//!
//! Steps 1 to 3 run per set ([`apply_changes`]), 4 and 5 once per transaction ([`finish_batch`]): the group
//! committer (`super::group_commit`) puts several sets in one transaction, each under a savepoint of its own.
//! Any error returns at once; the caller rolls the set (or everything) back.

use nimbus_core::event::Event;
use nimbus_core::operation::Operation;
use nimbus_core::tenancy::ApiKey;
use uuid::Uuid;

use super::backend::{is_unique_violation, Backend};
use super::{args, column, encode, project_from_row, query, usage_in, Arg, Conn};
use crate::{Placement, StoreError, StoreResult, Write, WriteSet};

/// Steps 1 to 3 for one set: everything but the notification and the event appends, which
/// [`finish_batch`] does once for all the sets committed together.
///
/// The checks of quota and host room lock the usage counters they read (PostgreSQL; SQLite has one writer),
/// which the instance triggers update anyway, in the order every instance write takes them (the project's,
/// then the host's): so concurrent transactions queue on them instead of deadlocking, and the project and
/// host rows themselves are only kept from vanishing, never held against a host's heartbeat.
pub(super) async fn apply_changes(conn: &mut Conn<'_>, backend: Backend, set: &WriteSet) -> StoreResult<()> {
    let quota = match set.enforce_quota_of {
        Some(project_id) => {
            lock_usage(conn, backend, "project", &project_id.to_string()).await?;
            let select = format!("SELECT numeric_id, body FROM projects WHERE id = $1{}", backend.for_key_share());
            let row = query(&select, args![project_id])
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| backend.error("reading the project", e))?
                .ok_or_else(|| StoreError::NotFound(format!("project {project_id}")))?;
            Some((project_id, project_from_row(&row)?.quota))
        }
        None => None,
    };
    if let Some(p) = &set.placement {
        let select = format!("SELECT name FROM hosts WHERE name = $1{}", backend.for_key_share());
        query(&select, args![&p.host])
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend.error("reading the host", e))?
            .ok_or_else(|| StoreError::NoRoom(format!("host {} is gone", p.host)))?;
        lock_usage(conn, backend, "host", &p.host).await?;
    }
    // An operation leased in the set that records it is inserted leased: one statement, not two.
    let leased_at_insert = |id: Uuid| {
        set.writes.iter().find_map(|w| match w {
            Write::LeaseOperation { id: leased, lease_owner, lease } if *leased == id => Some((lease_owner, *lease)),
            _ => None,
        })
    };
    for write in set.writes.iter().filter(|w| !matches!(w, Write::AppendEvent(_))) {
        match write {
            Write::InsertOperation(op) => insert_operation(conn, backend, op, leased_at_insert(op.id)).await?,
            Write::LeaseOperation { id, .. }
                if set.writes.iter().any(|w| matches!(w, Write::InsertOperation(op) if op.id == *id)) => {}
            _ => apply_one(conn, backend, write).await?,
        }
    }
    if let Some(p) = &set.placement {
        // Only an instance with GPUs can take a host past its GPUs (an instance the set does not write, kept
        // where it is, is checked in full).
        let placed = set.writes.iter().find_map(|w| match w {
            Write::PutInstance { instance, .. } if instance.id == p.instance_id => Some(instance.gpus),
            _ => None,
        });
        check_placement(conn, backend, p, placed.is_none_or(|gpus| gpus > 0)).await?;
    }
    if let Some((project_id, quota)) = quota {
        let usage = usage_in(conn, backend, project_id).await?;
        if let Some(why) = quota.exceeded_by(&usage) {
            return Err(StoreError::QuotaExceeded(why));
        }
    }
    Ok(())
}

/// What a transaction's sets did that others must be told of.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Notice {
    /// Anything at all.
    pub changed: bool,
    /// Credentials revoked.
    pub revoked: bool,
    /// An operation made claimable.
    pub work: bool,
}

/// How many events one statement appends: a statement is a hand-off to SQLite's connection thread, the
/// cost that dominates a busy server, and two values each stay far below either database's limit.
const EVENTS_PER_INSERT: usize = 64;

/// Steps 4 and 5 for the sets of one transaction, in their order: other servers are told (when anything
/// changed, that credentials went when any set revoked some, and that there is work to claim when any set
/// recorded some), then every set's events are appended, in order, a few dozen per statement.
pub(super) async fn finish_batch(
    conn: &mut Conn<'_>,
    backend: Backend,
    notice: Notice,
    events: &[Event],
) -> StoreResult<()> {
    // A `work` notification moves other servers' change counters too, so it stands for the plain one.
    let notify = if notice.work { backend.notify_work() } else { backend.notify_others() };
    if let (true, Some(notify)) = (notice.changed, notify) {
        query(notify, vec![]).execute(&mut *conn).await.map_err(|e| backend.error("notifying", e))?;
    }
    if let (true, Some(notify)) = (notice.revoked, backend.notify_revocation()) {
        query(notify, vec![]).execute(&mut *conn).await.map_err(|e| backend.error("notifying", e))?;
    }
    if events.is_empty() {
        return Ok(());
    }
    if let Some(lock) = backend.serialize_event_appends() {
        query(lock, vec![]).execute(&mut *conn).await.map_err(|e| backend.error("ordering events", e))?;
    }
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        // Rows of one INSERT take their sequence numbers in the order listed, on both databases.
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
        let sql = format!("INSERT INTO events (project_id, body) VALUES {}", rows.join(", "));
        let values = chunk.iter().flat_map(|e| args![e.project_id, encode(e)]).collect();
        query(&sql, values).execute(&mut *conn).await.map_err(|err| backend.error("appending events", err))?;
    }
    Ok(())
}

/// Runs one statement and returns how many rows it touched; `on_unique` names what already exists when it
/// breaks a unique index.
async fn run(
    conn: &mut Conn<'_>,
    backend: Backend,
    doing: &str,
    sql: &str,
    args: Vec<Arg>,
    on_unique: impl FnOnce() -> StoreError,
) -> StoreResult<u64> {
    match query(sql, args).execute(conn).await {
        Ok(done) => Ok(done.rows_affected()),
        Err(e) if is_unique_violation(&e) => Err(on_unique()),
        Err(e) => Err(backend.error(doing, e)),
    }
}

/// `run` for a statement that breaks no unique index.
async fn exec(conn: &mut Conn<'_>, backend: Backend, doing: &str, sql: &str, args: Vec<Arg>) -> StoreResult<u64> {
    query(sql, args).execute(conn).await.map(|done| done.rows_affected()).map_err(|e| backend.error(doing, e))
}

/// `Conflict` unless a compare-and-swap touched a row.
fn swapped(touched: u64, what: impl FnOnce() -> String) -> StoreResult<()> {
    if touched == 0 {
        return Err(StoreError::Conflict(what()));
    }
    Ok(())
}

/// Whether `set` takes credentials away: a project's deletion takes its keys with it.
pub(super) fn revokes(set: &WriteSet) -> bool {
    set.writes.iter().any(|w| matches!(w, Write::DeleteProject { .. } | Write::DeleteOrganization { .. }))
}

pub(super) async fn insert_api_key(conn: &mut Conn<'_>, backend: Backend, key: &ApiKey) -> StoreResult<()> {
    run(
        conn,
        backend,
        "storing an API key",
        "INSERT INTO api_keys (key_id, project_id, secret_sha256, body) VALUES ($1, $2, $3, $4)",
        args![&key.key_id, key.project_id, &key.secret_sha256, encode(key)],
        || StoreError::AlreadyExists(format!("api key {}", key.key_id)),
    )
    .await
    .map(|_| ())
}

fn lease_ms(lease: std::time::Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Inserts an operation, leased to `leased`'s owner for its duration when given.
async fn insert_operation(
    conn: &mut Conn<'_>,
    backend: Backend,
    op: &Operation,
    leased: Option<(&String, std::time::Duration)>,
) -> StoreResult<()> {
    let exists = || StoreError::AlreadyExists(format!("operation {}", op.id));
    let args = args![op.id, op.project_id, op.target.id, op.state.as_str(), encode(op)];
    match leased {
        None => {
            let sql = "INSERT INTO operations (id, project_id, target_id, state, body) VALUES ($1, $2, $3, $4, $5)";
            run(conn, backend, "inserting an operation", sql, args, exists).await?;
        }
        Some((owner, lease)) => {
            let sql = format!(
                "INSERT INTO operations (id, project_id, target_id, state, body, lease_owner, lease_expires)
                 VALUES ($1, $2, $3, $4, $5, $6, {} + $7)",
                backend.now_ms()
            );
            let mut args = args;
            args.extend(args![owner, lease_ms(lease)]);
            run(conn, backend, "inserting a leased operation", &sql, args, exists).await?;
        }
    }
    Ok(())
}

async fn apply_one(conn: &mut Conn<'_>, backend: Backend, write: &Write) -> StoreResult<()> {
    match write {
        Write::PutInstance { instance, expected_generation: None } => {
            let number = query(backend.next_instance_number(), vec![])
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| backend.error("numbering an instance", e))?;
            let mut i = instance.clone();
            i.numeric_id = super::column_at::<i64>(&number, 0)?;
            run(
                conn,
                backend,
                "inserting an instance",
                "INSERT INTO instances (id, project_id, name, state, generation, vcpus, memory_mib, disk_gb, body,
                 numeric_id, host, gpus, gpu_model, anti_affinity)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                args![
                    i.id,
                    i.project_id,
                    &i.name,
                    i.state.as_str(),
                    i.generation,
                    i.vcpus,
                    i.memory_mib,
                    i.own_disk_gb(),
                    encode(&i),
                    i.numeric_id,
                    i.host.as_ref(),
                    i.gpus,
                    i.gpu_model.as_ref(),
                    anti_affinity_column(&i)
                ],
                || StoreError::AlreadyExists(format!("instance {}", i.id)),
            )
            .await?;
        }
        Write::PutInstance { instance: i, expected_generation: Some(expected) } => {
            let touched = exec(
                conn,
                backend,
                "updating an instance",
                "UPDATE instances SET name = $1, state = $2, generation = $3, vcpus = $4, memory_mib = $5,
                 disk_gb = $6, body = $7, host = $10, gpus = $11, gpu_model = $12, anti_affinity = $13
                 WHERE id = $8 AND generation = $9",
                args![
                    &i.name,
                    i.state.as_str(),
                    i.generation,
                    i.vcpus,
                    i.memory_mib,
                    i.own_disk_gb(),
                    encode(i),
                    i.id,
                    *expected,
                    i.host.as_ref(),
                    i.gpus,
                    i.gpu_model.as_ref(),
                    anti_affinity_column(i)
                ],
            )
            .await?;
            swapped(touched, || format!("instance {} (not at generation {expected})", i.id))?;
        }
        Write::DeleteInstance { id, expected_generation } => {
            let touched = exec(
                conn,
                backend,
                "deleting an instance",
                "DELETE FROM instances WHERE id = $1 AND generation = $2",
                args![*id, *expected_generation],
            )
            .await?;
            swapped(touched, || format!("instance {id} (not at generation {expected_generation})"))?;
        }
        Write::LeaseOperation { id, lease_owner, lease } => {
            let sql = format!(
                "UPDATE operations SET lease_owner = $1, lease_expires = {} + $2 WHERE id = $3 AND lease_owner IS NULL",
                backend.now_ms()
            );
            let touched =
                run(conn, backend, "leasing an operation", &sql, args![lease_owner, lease_ms(*lease), *id], || {
                    StoreError::AlreadyExists(format!("operation {id}"))
                })
                .await?;
            swapped(touched, || format!("operation {id} (held already)"))?;
        }
        Write::InsertOperation(op) => insert_operation(conn, backend, op, None).await?,
        Write::UpdateOperation { operation: op, lease_owner } => {
            update_operation(conn, backend, op, lease_owner).await?
        }
        Write::InsertRecord(r) => {
            run(
                conn,
                backend,
                "inserting a record",
                "INSERT INTO records (kind, id, project_id, name, body, generation) VALUES ($1, $2, $3, $4, $5, $6)",
                args![&r.kind, r.id, r.project_id, &r.name, r.body.to_string(), r.generation],
                || StoreError::AlreadyExists(format!("{} {}", r.kind, r.id)),
            )
            .await?;
        }
        Write::UpdateRecord { record: r, expected_generation } => {
            let touched = exec(
                conn,
                backend,
                "updating a record",
                "UPDATE records SET project_id = $1, name = $2, body = $3, generation = $4
                 WHERE kind = $5 AND id = $6 AND generation = $7",
                args![r.project_id, &r.name, r.body.to_string(), r.generation, &r.kind, r.id, *expected_generation],
            )
            .await?;
            swapped(touched, || format!("{} {} (not at generation {expected_generation})", r.kind, r.id))?;
        }
        Write::DeleteRecord { kind, id, expected_generation: None } => {
            exec(
                conn,
                backend,
                "deleting a record",
                "DELETE FROM records WHERE kind = $1 AND id = $2",
                args![kind, *id],
            )
            .await?;
        }
        Write::DeleteRecord { kind, id, expected_generation: Some(expected) } => {
            let touched = exec(
                conn,
                backend,
                "deleting a record",
                "DELETE FROM records WHERE kind = $1 AND id = $2 AND generation = $3",
                args![kind, *id, *expected],
            )
            .await?;
            swapped(touched, || format!("{kind} {id} (not at generation {expected})"))?;
        }
        // Appended by `apply`, after every other write.
        Write::AppendEvent(_) => {}
        Write::PutAlias { kind, alias, id } => {
            run(
                conn,
                backend,
                "storing an alias",
                "INSERT INTO aliases (kind, alias, id) VALUES ($1, $2, $3)",
                args![kind, alias, *id],
                || StoreError::AlreadyExists(format!("{kind} alias {alias} (or an alias of {id})")),
            )
            .await?;
        }
        Write::DeleteAlias { kind, alias } => {
            exec(
                conn,
                backend,
                "deleting an alias",
                "DELETE FROM aliases WHERE kind = $1 AND alias = $2",
                args![kind, alias],
            )
            .await?;
        }
        Write::ExpectAlias { kind, alias, id } => {
            // FOR SHARE (PostgreSQL): the alias cannot be deleted or moved until this set commits.
            let select = format!("SELECT id FROM aliases WHERE kind = $1 AND alias = $2{}", backend.for_share());
            let held = query(&select, args![kind, alias])
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| backend.error("reading an alias", e))?
                .map(|row| column::<String>(&row, "id"))
                .transpose()?;
            if held.as_deref() != Some(id.to_string().as_str()) {
                return Err(StoreError::Conflict(format!("{kind} alias {alias} no longer names {id}")));
            }
        }
        Write::ClaimAddress { network, host, owner } => {
            run(
                conn,
                backend,
                "claiming an address",
                "INSERT INTO addresses (network, host, owner) VALUES ($1, $2, $3)",
                args![network, *host, *owner],
                || StoreError::Conflict(format!("address {host} of {network} is taken")),
            )
            .await?;
        }
        Write::ReleaseAddresses { owner } => {
            exec(conn, backend, "releasing addresses", "DELETE FROM addresses WHERE owner = $1", args![*owner]).await?;
        }
        Write::PutApiKey(key) => insert_api_key(conn, backend, key).await?,
        Write::DeleteProject { id } => delete_project(conn, backend, *id).await?,
        Write::DeleteOrganization { id } => delete_organization(conn, backend, *id).await?,
        Write::PutHost { host, generation, expected_generation: None } => {
            run(
                conn,
                backend,
                "registering a host",
                "INSERT INTO hosts (name, id, generation, body) VALUES ($1, $2, $3, $4)",
                args![&host.name, host.id, *generation, encode(host)],
                || StoreError::AlreadyExists(format!("host {}", host.name)),
            )
            .await?;
        }
        Write::PutHost { host, generation, expected_generation: Some(expected) } => {
            let touched = exec(
                conn,
                backend,
                "updating a host",
                "UPDATE hosts SET generation = $1, body = $2 WHERE name = $3 AND generation = $4",
                args![*generation, encode(host), &host.name, *expected],
            )
            .await?;
            swapped(touched, || format!("host {} (not at generation {expected})", host.name))?;
        }
    }
    Ok(())
}

/// The `anti_affinity` column: each group id followed by a space, so that `LIKE '%<id> %'` finds members.
fn anti_affinity_column(i: &nimbus_core::instance::Instance) -> String {
    i.anti_affinity_groups.iter().map(|g| format!("{g} ")).collect()
}

/// Locks the usage counters of `owner` in `scope` (PostgreSQL), made first when there are none yet so that
/// there is a row to lock.
async fn lock_usage(conn: &mut Conn<'_>, backend: Backend, scope: &str, owner: &str) -> StoreResult<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    query(
        "INSERT INTO usage_totals (scope, owner, instances, vcpus, memory_mib, disk_gb) VALUES ($1, $2, 0, 0, 0, 0)
         ON CONFLICT (scope, owner) DO NOTHING",
        args![scope, owner],
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| backend.error("making usage counters", e))?;
    let lock = format!("SELECT instances FROM usage_totals WHERE scope = $1 AND owner = $2{}", backend.for_update());
    query(&lock, args![scope, owner])
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend.error("locking usage", e))?;
    Ok(())
}

/// Checks [`WriteSet::placement`] on the set's result: the host's usage counters are locked (PostgreSQL)
/// before this, at the start of the set.
async fn check_placement(conn: &mut Conn<'_>, backend: Backend, p: &Placement, gpus: bool) -> StoreResult<()> {
    let used = super::hosts::allocation_of(conn, backend, &p.host, gpus).await?;
    let demand = nimbus_core::host::Demand { vcpus: 0, memory_mib: 0, disk_gb: 0, gpus: None };
    if let Some(why) = nimbus_core::host::refusal(&p.limit, &used, &demand) {
        return Err(StoreError::NoRoom(format!("host {}: {why}", p.host)));
    }
    for group in &p.anti_affinity_groups {
        let row = query(
            "SELECT COUNT(*) AS n FROM instances WHERE host = $1 AND id <> $2 AND state <> 'destroyed'
             AND anti_affinity LIKE $3",
            args![&p.host, p.instance_id, format!("%{group} %")],
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| backend.error("checking anti-affinity", e))?;
        if column::<i64>(&row, "n")? > 0 {
            return Err(StoreError::NoRoom(format!(
                "host {} already runs a member of anti-affinity group {group}",
                p.host
            )));
        }
    }
    Ok(())
}

async fn update_operation(conn: &mut Conn<'_>, backend: Backend, op: &Operation, lease_owner: &str) -> StoreResult<()> {
    // A final operation is never claimed again, so its lease means nothing any more: drop it.
    let sql = if op.state.is_final() {
        "UPDATE operations SET state = $1, body = $2, lease_owner = NULL, lease_expires = NULL
         WHERE id = $3 AND lease_owner = $4"
    } else {
        "UPDATE operations SET state = $1, body = $2 WHERE id = $3 AND lease_owner = $4"
    };
    let touched =
        exec(conn, backend, "updating an operation", sql, args![op.state.as_str(), encode(op), op.id, lease_owner])
            .await?;
    swapped(touched, || format!("operation {} (not leased to {lease_owner})", op.id))
}

/// Locks the row `select` (`... WHERE id = $1`) finds, `NotFound` when there is none.
async fn lock_row(conn: &mut Conn<'_>, backend: Backend, what: &str, select: &str, id: Uuid) -> StoreResult<()> {
    let sql = format!("{select}{}", backend.for_update());
    query(&sql, args![id])
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend.error(&format!("locking {what} {id}"), e))?
        .ok_or_else(|| StoreError::NotFound(format!("{what} {id}")))
        .map(|_| ())
}

async fn count(conn: &mut Conn<'_>, backend: Backend, sql: &str, id: Uuid) -> StoreResult<i64> {
    let row = query(sql, args![id]).fetch_one(&mut *conn).await.map_err(|e| backend.error("counting", e))?;
    column(&row, "n")
}

async fn delete_project(conn: &mut Conn<'_>, backend: Backend, id: Uuid) -> StoreResult<()> {
    // Locked first: an instance create checks its project's quota under the same lock, so it either
    // commits before this count or finds the project gone.
    lock_row(conn, backend, "project", "SELECT id FROM projects WHERE id = $1", id).await?;
    let sql = "SELECT COUNT(*) AS n FROM instances WHERE project_id = $1 AND state <> 'destroyed'";
    let instances = count(conn, backend, sql, id).await?;
    if instances > 0 {
        return Err(StoreError::Conflict(format!("project {id} still has {instances} instance(s)")));
    }
    for sql in [
        // Destroyed instances' records, kept for a while after their deletion, go with their project.
        "DELETE FROM instances WHERE project_id = $1",
        "DELETE FROM api_keys WHERE project_id = $1",
        "DELETE FROM records WHERE project_id = $1",
        "DELETE FROM idempotency WHERE project_id = $1",
        "DELETE FROM projects WHERE id = $1",
    ] {
        exec(conn, backend, "deleting a project", sql, args![id]).await?;
    }
    Ok(())
}

async fn delete_organization(conn: &mut Conn<'_>, backend: Backend, id: Uuid) -> StoreResult<()> {
    // Locked first: `create_project` holds the organization's row while adding a project to it.
    lock_row(conn, backend, "organization", "SELECT id FROM organizations WHERE id = $1", id).await?;
    let projects = count(conn, backend, "SELECT COUNT(*) AS n FROM projects WHERE organization_id = $1", id).await?;
    if projects > 0 {
        return Err(StoreError::Conflict(format!("organization {id} still has {projects} project(s)")));
    }
    exec(conn, backend, "deleting an organization", "DELETE FROM organizations WHERE id = $1", args![id]).await?;
    Ok(())
}
