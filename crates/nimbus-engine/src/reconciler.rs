//! The reconciler every server runs: it shows the instances of hosts that stopped answering as `unknown`
//! and begins the shutdowns whose time has come. Comparing records with what really runs is done by each
//! host's heartbeat report (`hosts.rs`), which calls [`Engine::host_instance_without_record`] for every VM
//! a host runs that no record places there. Writes are compare-and-swaps, so several servers' passes
//! racing on one instance cannot disagree for long.
//!
//! A host VM no record places on its host is destroyed only when the store's own history says it was
//! Nimbus's and is gone or elsewhere (an operation targeted it, and its record has been removed or moved to
//! another host since: leftovers of a deletion or an evacuation). One the store has never heard of is never
//! touched: it is reported (an `unknown_host_instance` record, shown by `GET /v1/host`) until it goes away
//! or an operator removes it on purpose. That is what a store restored from a backup finds — the instances
//! created after the backup, still running real workloads — and what a second cloud sharing the host by
//! mistake would look like; destroying them would lose what nothing else remembers.

use std::collections::HashSet;
use std::sync::Arc;

use nimbus_core::instance::InstanceState;
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_driver::ActualState;
use nimbus_store::{InstanceQuery, OperationQuery, Record, Write, WriteSet};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{store_err, Context, Engine, Result};

pub(crate) fn spawn(engine: Arc<Engine>) {
    let handle = engine.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(engine.config.reconcile_every).await;
            if let Err(e) = engine.seed_templates().await {
                tracing::warn!(error = %e, "could not register the driver's templates");
            }
            if let Err(e) = engine.reconcile().await {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
            // Idempotency holds of requests whose server died hold nothing up once their leases expire
            // (a retry takes them over); swept here so that none lingers unretried.
            if let Err(e) = engine.store.idempotency_sweep(None).await {
                tracing::warn!(error = %e, "could not sweep idempotency keys");
            }
        }
    });
    handle.track(task.abort_handle());
}

impl Engine {
    /// One pass: unreachable hosts' instances shown `unknown`, due scheduled shutdowns begun, deleted
    /// instances' records past their retention removed.
    pub(crate) async fn reconcile(&self) -> Result<()> {
        self.sweep_unreachable_hosts().await?;
        // Late purges only keep records longer: never a reason to skip the rest of the pass.
        if let Err(e) = self.purge_destroyed().await {
            tracing::warn!(error = %e, "could not remove deleted instances' records past their retention");
        }
        let now = nimbus_core::now();
        let scheduled = InstanceQuery { shutdown_scheduled: true, ..Default::default() };
        for instance in self.store.list_instances(&scheduled).await.map_err(store_err)? {
            if instance.lock_operation_id.is_none()
                && instance.state == InstanceState::Running
                && instance.expected_shutdown_at.is_some_and(|at| at <= now)
            {
                if let Err(e) = self.scheduled_stop(&instance).await {
                    tracing::warn!(instance = %instance.id, error = %e, "could not begin scheduled shutdown");
                }
            }
        }
        Ok(())
    }

    /// Removes the records of instances deleted longer ago than the retention. Each removal expects the
    /// record's generation, so servers sweeping at once remove each record once.
    async fn purge_destroyed(&self) -> Result<()> {
        let query = InstanceQuery { state: Some(InstanceState::Destroyed), ..Default::default() };
        let cutoff = nimbus_core::now() - self.config.deleted_retention;
        let mut set = nimbus_store::WriteSet::new();
        for record in self.store.list_instances(&query).await.map_err(store_err)? {
            if record.updated_at <= cutoff {
                set.push(nimbus_store::Write::DeleteInstance { id: record.id, expected_generation: record.generation });
            }
        }
        if set.writes.is_empty() {
            return Ok(());
        }
        match self.store.apply(set).await {
            // Another server purged (some of) them first: the next pass finds what is left.
            Ok(()) | Err(nimbus_store::StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    /// A VM that host `host` runs and no record places there: leftovers when the store's history names
    /// it (removed), otherwise reported and left alone.
    pub(crate) async fn host_instance_without_record(&self, host: &str, id: Uuid, seen: ActualState) {
        let query = OperationQuery { target_id: Some(id), limit: 1, ..Default::default() };
        match self.store.list_operations(&query).await {
            Ok(ops) if !ops.is_empty() => {
                tracing::warn!(instance = %id, host, "removing host leftovers of an instance no record places here");
                if let Err(e) = self.host_driver(host).destroy(id).await {
                    tracing::warn!(instance = %id, error = %e, "could not remove leftovers");
                }
            }
            Ok(_) => {
                if matches!(self.store.get_record(UNKNOWN_HOST_INSTANCE, id).await, Ok(Some(_))) {
                    return;
                }
                tracing::warn!(
                    instance = %id,
                    host,
                    "the host runs an instance no record knows (created after the backup this store was restored \
                     from?); left alone and reported by GET /v1/host"
                );
                let report = UnknownHostInstance {
                    id,
                    host: host.to_string(),
                    host_state: Some(seen),
                    found_at: nimbus_core::now(),
                };
                let mut set = WriteSet::new();
                set.push(Write::InsertRecord(Record::new(UNKNOWN_HOST_INSTANCE, id, None, host, &report)));
                // Another server may report it first.
                let _ = self.store.apply(set).await;
            }
            Err(e) => tracing::warn!(instance = %id, error = %e, "could not read the history of a host instance"),
        }
    }

    /// Drops the reports of host `host`'s unknown instances that are gone from it, or that a record knows
    /// now.
    pub(crate) async fn forget_unknown_host_instances(&self, host: &str, on_host: &HashSet<Uuid>) -> Result<()> {
        for report in self.store.list_records_named(UNKNOWN_HOST_INSTANCE, host).await.map_err(store_err)? {
            let known = self.store.get_instance(report.id).await.map_err(store_err)?.is_some();
            if !on_host.contains(&report.id) || known {
                let mut set = WriteSet::new();
                set.push(Write::DeleteRecord {
                    kind: UNKNOWN_HOST_INSTANCE.into(),
                    id: report.id,
                    expected_generation: Some(report.generation),
                });
                let _ = self.store.apply(set).await;
            }
        }
        Ok(())
    }

    /// Host instances no record knows and the store has no history of, oldest report first.
    pub async fn unknown_host_instances(&self) -> Result<Vec<UnknownHostInstance>> {
        let records = self.store.list_records(UNKNOWN_HOST_INSTANCE, None).await.map_err(store_err)?;
        let mut reports: Vec<UnknownHostInstance> =
            records.iter().map(|r| r.decode()).collect::<Result<_, _>>().map_err(store_err)?;
        reports.sort_by_key(|r| r.found_at);
        Ok(reports)
    }

    /// Removes, on an operator's say-so, a reported host instance that no record knows: its processes and
    /// files are destroyed. `NotFound` unless it is reported; `Conflict` if a record knows it meanwhile.
    pub async fn remove_unknown_host_instance(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Operator)?;
        let Some(record) = self.store.get_record(UNKNOWN_HOST_INSTANCE, id).await.map_err(store_err)? else {
            return Err(DomainError::not_found("unknown host instance", id));
        };
        let report: UnknownHostInstance = record.decode().map_err(store_err)?;
        if self.store.get_instance(id).await.map_err(store_err)?.is_some() {
            return Err(DomainError::Conflict(format!("instance {id} has a record now; delete it through the API")));
        }
        self.host_driver(&report.host)
            .destroy(id)
            .await
            .map_err(|e| DomainError::Internal(format!("destroying {id} on host {}: {e}", report.host)))?;
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord {
            kind: UNKNOWN_HOST_INSTANCE.into(),
            id,
            expected_generation: Some(record.generation),
        });
        let _ = self.store.apply(set).await;
        tracing::warn!(instance = %id, host = %report.host, key = %ctx.key.key_id, "removed an unknown host instance on an operator's request");
        Ok(())
    }
}

/// The kind of the records that report host instances no record knows; a record's name is its host's.
pub(crate) const UNKNOWN_HOST_INSTANCE: &str = "unknown_host_instance";

/// A host instance that no record knows and that the store has no history of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnknownHostInstance {
    pub id: Uuid,
    /// The host that runs it.
    #[serde(default)]
    pub host: String,
    /// What the host showed when it was found.
    pub host_state: Option<ActualState>,
    #[serde(with = "time::serde::rfc3339")]
    pub found_at: time::OffsetDateTime,
}
