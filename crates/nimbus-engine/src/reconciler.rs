//! The reconciler every server runs: it shows the instances of hosts that stopped answering as `unknown`
//! and begins the shutdowns whose time has come. Comparing records with what really runs is done by each
//! host's heartbeat report (`hosts.rs`). Its writes are compare-and-swaps, so several servers' passes
//! racing on one instance cannot disagree for long.

use std::sync::Arc;

use nimbus_core::instance::InstanceState;
use nimbus_store::InstanceQuery;

use crate::{store_err, Engine, Result};

pub(crate) fn spawn(engine: Arc<Engine>) {
    let handle = engine.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(engine.config.reconcile_every).await;
            if let Err(e) = engine.reconcile().await {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
        }
    });
    handle.track(task.abort_handle());
}

impl Engine {
    /// One pass: unreachable hosts' instances shown `unknown`, due scheduled shutdowns begun.
    pub(crate) async fn reconcile(&self) -> Result<()> {
        self.sweep_unreachable_hosts().await?;
        let now = nimbus_core::now();
        for instance in self.store.list_instances(&InstanceQuery::default()).await.map_err(store_err)? {
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
}
