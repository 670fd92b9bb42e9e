//! Hosts: their documents, their heartbeat leases (judged by the database's clock, like operation leases),
//! and what the instances placed on them take of them.

use std::collections::BTreeMap;

use nimbus_core::host::{Allocation, Host};

use super::backend::Backend;
use super::{args, column, decode, query, Conn, Row};
use crate::{StoreError, StoreResult, StoredHost};

/// The columns [`host_from_row`] reads, with `reachable` computed by the database's clock.
pub(super) fn select(backend: Backend) -> String {
    format!(
        "SELECT body, generation, CASE WHEN heartbeat_expires IS NOT NULL AND heartbeat_expires > {} THEN 1 ELSE 0 END
         AS reachable FROM hosts",
        backend.now_ms()
    )
}

pub(super) fn host_from_row(row: &Row) -> StoreResult<StoredHost> {
    Ok(StoredHost {
        host: decode::<Host>("host", &column::<String>(row, "body")?)?,
        generation: column(row, "generation")?,
        reachable: column::<i64>(row, "reachable")? != 0,
    })
}

fn count(row: &Row, name: &str) -> StoreResult<u64> {
    let n: i64 = column(row, name)?;
    u64::try_from(n).map_err(|_| StoreError::Backend(format!("corrupt allocation {name} = {n}")))
}

/// A row's counts of what placed instances take (GPUs are summed apart).
fn counted(row: &Row) -> StoreResult<Allocation> {
    Ok(Allocation {
        instances: count(row, "instances")?,
        vcpus: count(row, "vcpus")?,
        memory_mib: count(row, "memory_mib")?,
        disk_gb: count(row, "disk_gb")?,
        gpus: BTreeMap::new(),
    })
}

/// The `SELECT` of what placed instances take of each host, from the counters the instance triggers keep
/// (see migration 7); a host that carries nothing has no row or a row of zeros.
fn sums(filter: &str) -> String {
    format!(
        "SELECT owner AS grp, instances, vcpus, memory_mib, disk_gb FROM usage_totals
         WHERE scope = 'host' AND instances > 0 {filter}"
    )
}

/// GPUs are summed from the instances that have some (an index holds only those; CAST: PostgreSQL sums
/// BIGINTs into NUMERIC, which the Any driver cannot carry). Destroyed instances take nothing.
fn gpu_sums(filter: &str) -> String {
    format!(
        "SELECT host, gpu_model, CAST(COALESCE(SUM(gpus), 0) AS BIGINT) AS gpus FROM instances
         WHERE host IS NOT NULL AND state <> 'destroyed' AND gpus > 0 AND gpu_model IS NOT NULL {filter}
         GROUP BY host, gpu_model"
    )
}

/// What each host carries, as `conn` sees it.
pub(super) async fn allocations(conn: &mut Conn<'_>, backend: Backend) -> StoreResult<BTreeMap<String, Allocation>> {
    let rows = query(&sums(""), vec![])
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| backend.error("summing host allocations", e))?;
    let mut out = BTreeMap::new();
    for r in &rows {
        out.insert(column::<String>(r, "grp")?, counted(r)?);
    }
    let gpus =
        query(&gpu_sums(""), vec![]).fetch_all(&mut *conn).await.map_err(|e| backend.error("summing host GPUs", e))?;
    for r in &gpus {
        let host: String = column(r, "host")?;
        out.entry(host).or_default().gpus.insert(column(r, "gpu_model")?, count(r, "gpus")?);
    }
    Ok(out)
}

/// Every host with what it carries, in one statement (the host's row of the usage counters joined to it),
/// and its GPUs in a second only `with_gpus` and when some host has GPUs.
pub(super) async fn with_allocations(
    on: super::statement::PointRead<'_>,
    backend: Backend,
    with_gpus: bool,
) -> StoreResult<Vec<(StoredHost, Allocation)>> {
    let sql = format!(
        "SELECT h.body, h.generation, h.reachable, COALESCE(u.instances, 0) AS instances,
                COALESCE(u.vcpus, 0) AS vcpus, COALESCE(u.memory_mib, 0) AS memory_mib,
                COALESCE(u.disk_gb, 0) AS disk_gb
         FROM ({}) h LEFT JOIN usage_totals u ON u.scope = 'host' AND u.owner = h.name
         ORDER BY h.name",
        select(backend).replace("SELECT body,", "SELECT name, body,")
    );
    let rows = query(&sql, vec![]).fetch_all(on).await.map_err(|e| backend.error("listing hosts", e))?;
    let mut hosts = Vec::with_capacity(rows.len());
    for r in &rows {
        hosts.push((host_from_row(r)?, counted(r)?));
    }
    if with_gpus && hosts.iter().any(|(h, _)| !h.host.capacity.gpus.is_empty()) {
        let gpus =
            query(&gpu_sums(""), vec![]).fetch_all(on).await.map_err(|e| backend.error("summing host GPUs", e))?;
        for r in &gpus {
            let host: String = column(r, "host")?;
            if let Some((_, a)) = hosts.iter_mut().find(|(h, _)| h.host.name == host) {
                a.gpus.insert(column(r, "gpu_model")?, count(r, "gpus")?);
            }
        }
    }
    Ok(hosts)
}

/// What one host carries, as `conn` sees it (inside a write set: including its writes); its GPUs only when
/// `gpus` (left empty otherwise).
pub(super) async fn allocation_of(
    conn: &mut Conn<'_>,
    backend: Backend,
    host: &str,
    gpus: bool,
) -> StoreResult<Allocation> {
    let row = query(&sums("AND owner = $1"), args![host])
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend.error("summing the host's allocation", e))?;
    let mut a = match row {
        Some(r) => counted(&r)?,
        None => Allocation::default(),
    };
    if !gpus {
        return Ok(a);
    }
    let gpus = query(&gpu_sums("AND host = $1"), args![host])
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| backend.error("summing the host's GPUs", e))?;
    for r in &gpus {
        a.gpus.insert(column(r, "gpu_model")?, count(r, "gpus")?);
    }
    Ok(a)
}
