//! The reconciler: keeps records aligned with what the host really runs, removes host leftovers no record
//! knows, and begins scheduled shutdowns. Every server runs it; their writes are compare-and-swaps, so two
//! passes racing on one instance cannot disagree for long.

use std::collections::HashSet;
use std::sync::Arc;

use nimbus_core::instance::InstanceState;
use nimbus_driver::ActualState;
use nimbus_store::{InstanceQuery, Write, WriteSet};

use crate::instances::instance_event;
use crate::{store_err, Engine, Result};

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
            tracing::warn!(instance = %orphan, "removing host leftovers of an instance that no record knows");
            if let Err(e) = self.driver.destroy(*orphan).await {
                tracing::warn!(instance = %orphan, error = %e, "could not remove leftovers");
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
}
