//! The reconciler: keeps records aligned with what the host really runs, deals with host instances no
//! record knows, and begins scheduled shutdowns. Every server runs it; their writes are compare-and-swaps,
//! so two passes racing on one instance cannot disagree for long.
//!
//! A host instance no record knows is destroyed only when the store's own history says it was Nimbus's and
//! is gone (an operation targeted it, and its record has been removed since: leftovers of a deletion).
//! One the store has never heard of is never touched: it is reported (a `unknown_host_instance` record,
//! shown by `GET /v1/host`) until it goes away or an admin removes it on purpose. That is what a store
//! restored from a backup finds — the instances created after the backup, still running real workloads —
//! and what a second cloud sharing the host by mistake would look like; destroying them would lose what
//! nothing else remembers.

use std::collections::HashSet;
use std::sync::Arc;

use nimbus_core::instance::InstanceState;
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_driver::ActualState;
use nimbus_store::{InstanceQuery, OperationQuery, Record, Write, WriteSet};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::instances::instance_event;
use crate::{store_err, Context, Engine, Result};

pub(crate) fn spawn(engine: Arc<Engine>) {
    let handle = engine.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(engine.config.reconcile_every).await;
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
    /// Aligns records with the host: a VM that stopped or vanished behind Nimbus's back is shown as such,
    /// host leftovers that belong to no instance are removed, and due scheduled shutdowns begin.
    pub(crate) async fn reconcile(&self) -> Result<()> {
        // Host first, records second: an instance created in between is then already in the records.
        let on_host: HashSet<_> = self
            .driver
            .instances()
            .await
            .map_err(|e| nimbus_core::DomainError::Internal(e.to_string()))?
            .into_iter()
            .collect();
        let instances = self.store.list_instances(&InstanceQuery::default()).await.map_err(store_err)?;
        let known: HashSet<_> = instances.iter().map(|i| i.id).collect();
        for orphan in on_host.difference(&known) {
            self.unknown_host_instance(*orphan).await;
        }
        // Reports of instances that have gone from the host, or that a record knows now, are dropped.
        for report in self.store.list_records(UNKNOWN_HOST_INSTANCE, None).await.map_err(store_err)? {
            if !on_host.contains(&report.id) || known.contains(&report.id) {
                let mut set = WriteSet::new();
                set.push(Write::DeleteRecord {
                    kind: UNKNOWN_HOST_INSTANCE.into(),
                    id: report.id,
                    expected_generation: Some(report.generation),
                });
                let _ = self.store.apply(set).await;
            }
        }
        let now = nimbus_core::now();
        for instance in instances {
            if instance.lock_operation_id.is_some() {
                continue;
            }
            if instance.state == InstanceState::Running && instance.expected_shutdown_at.is_some_and(|at| at <= now) {
                if let Err(e) = self.scheduled_stop(&instance).await {
                    tracing::warn!(instance = %instance.id, error = %e, "could not begin scheduled shutdown");
                }
                continue;
            }
            let actual = match self.driver.inspect(instance.id).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(instance = %instance.id, error = %e, "could not inspect instance");
                    continue;
                }
            };
            let observed = match (instance.state, actual) {
                (InstanceState::Running, ActualState::Stopped) => InstanceState::Stopped,
                (InstanceState::Stopped, ActualState::Running) => InstanceState::Running,
                (InstanceState::Running | InstanceState::Stopped, ActualState::Missing) => InstanceState::Error,
                (InstanceState::Error, ActualState::Running) => InstanceState::Running,
                (InstanceState::Error, ActualState::Stopped) => InstanceState::Stopped,
                (InstanceState::Running | InstanceState::Error, ActualState::Paused) => InstanceState::Suspended,
                (InstanceState::Suspended, ActualState::Running) => InstanceState::Running,
                (InstanceState::Suspended, ActualState::Stopped) => InstanceState::Stopped,
                (InstanceState::Suspended, ActualState::Missing) => InstanceState::Error,
                _ => continue,
            };
            tracing::info!(instance = %instance.id, recorded = %instance.state, observed = %observed, "instance changed outside Nimbus");
            let mut next = instance.clone();
            next.state = observed;
            next.generation += 1;
            next.updated_at = now;
            let mut set = WriteSet::new();
            set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(instance.generation) });
            set.push(instance_event(&nimbus_core::operation::Actor::system(), "instance.updated", &next));
            // Losing to a concurrent writer (another server's reconciler, say) is fine: the next pass looks
            // again.
            let _ = self.store.apply(set).await;
        }
        Ok(())
    }

    /// A host instance no record knows: leftovers of a deletion when the store's history names it (removed),
    /// otherwise reported and left alone.
    async fn unknown_host_instance(&self, id: Uuid) {
        let query = OperationQuery { target_id: Some(id), limit: 1, ..Default::default() };
        match self.store.list_operations(&query).await {
            Ok(ops) if !ops.is_empty() => {
                tracing::warn!(instance = %id, "removing host leftovers of a deleted instance");
                if let Err(e) = self.driver.destroy(id).await {
                    tracing::warn!(instance = %id, error = %e, "could not remove leftovers");
                }
            }
            Ok(_) => {
                if matches!(self.store.get_record(UNKNOWN_HOST_INSTANCE, id).await, Ok(Some(_))) {
                    return;
                }
                tracing::warn!(
                    instance = %id,
                    "the host runs an instance no record knows (created after the backup this store was restored \
                     from?); left alone and reported by GET /v1/host"
                );
                let host_state = self.driver.inspect(id).await.ok();
                let report = UnknownHostInstance { id, host_state, found_at: nimbus_core::now() };
                let mut set = WriteSet::new();
                set.push(Write::InsertRecord(Record::new(UNKNOWN_HOST_INSTANCE, id, None, &id.to_string(), &report)));
                // Another server may report it first.
                let _ = self.store.apply(set).await;
            }
            Err(e) => tracing::warn!(instance = %id, error = %e, "could not read the history of a host instance"),
        }
    }

    /// Host instances no record knows and the store has no history of, oldest report first.
    pub async fn unknown_host_instances(&self) -> Result<Vec<UnknownHostInstance>> {
        let records = self.store.list_records(UNKNOWN_HOST_INSTANCE, None).await.map_err(store_err)?;
        let mut reports: Vec<UnknownHostInstance> =
            records.iter().map(|r| r.decode()).collect::<Result<_, _>>().map_err(store_err)?;
        reports.sort_by_key(|r| r.found_at);
        Ok(reports)
    }

    /// Removes, on an admin's say-so, a reported host instance that no record knows: its processes and
    /// files are destroyed. `NotFound` unless it is reported; `Conflict` if a record knows it meanwhile.
    pub async fn remove_unknown_host_instance(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Admin)?;
        let Some(report) = self.store.get_record(UNKNOWN_HOST_INSTANCE, id).await.map_err(store_err)? else {
            return Err(DomainError::not_found("unknown host instance", id));
        };
        if self.store.get_instance(id).await.map_err(store_err)?.is_some() {
            return Err(DomainError::Conflict(format!("instance {id} has a record now; delete it through the API")));
        }
        self.driver
            .destroy(id)
            .await
            .map_err(|e| DomainError::Internal(format!("destroying {id} on the host: {e}")))?;
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord {
            kind: UNKNOWN_HOST_INSTANCE.into(),
            id,
            expected_generation: Some(report.generation),
        });
        let _ = self.store.apply(set).await;
        tracing::warn!(instance = %id, key = %ctx.key.key_id, "removed an unknown host instance on an admin's request");
        Ok(())
    }
}

/// The kind of the records that report host instances no record knows.
pub(crate) const UNKNOWN_HOST_INSTANCE: &str = "unknown_host_instance";

/// A host instance that no record knows and that the store has no history of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnknownHostInstance {
    pub id: Uuid,
    /// What the host showed when it was found.
    pub host_state: Option<ActualState>,
    #[serde(with = "time::serde::rfc3339")]
    pub found_at: time::OffsetDateTime,
}
