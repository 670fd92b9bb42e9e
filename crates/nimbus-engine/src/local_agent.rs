//! The agent embedded in a single-node server: it registers the server's own host and heartbeats with a
//! report of what runs there, exactly as a remote `nimbus agent` does through the API (the same engine
//! calls, `register_host` and `host_heartbeat`), except that driver calls for its host go to its driver
//! directly instead of through the store's call queue.

use std::sync::Arc;

use nimbus_core::host::Capacity;
use nimbus_core::DomainError;
use nimbus_driver::Driver;

use crate::hosts::{AgentRegistration, HostReport};
use crate::{Engine, Result};

/// What a host's driver says of the host, as its agent registers it.
pub async fn registration(
    driver: &dyn Driver,
    zone: &str,
    underlay_address: Option<String>,
) -> Result<AgentRegistration> {
    let info = driver.host_info().await;
    let templates = driver.templates().await.map_err(|e| DomainError::Internal(e.to_string()))?;
    Ok(AgentRegistration {
        zone: zone.to_string(),
        capacity: Capacity {
            vcpus: info.vcpus.into(),
            memory_mib: info.memory_mib,
            disk_gb: info.disk_gb,
            gpus: info.gpus,
        },
        accelerator: info.accelerator,
        driver: info.driver,
        underlay_address,
        tpm: driver.supports_tpm(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        templates,
    })
}

/// What the host's driver has, instance by instance. An instance the driver cannot inspect right now is
/// left out of this report (and so not judged missing) rather than failing the heartbeat.
pub async fn report(driver: &dyn Driver) -> Result<HostReport> {
    let began = std::time::Instant::now();
    let ids = driver.instances().await.map_err(|e| DomainError::Internal(e.to_string()))?;
    let mut instances = Vec::with_capacity(ids.len());
    for id in ids {
        match driver.inspect(id).await {
            Ok(state) => instances.push((id, state)),
            Err(e) => tracing::warn!(instance = %id, error = %e, "could not inspect instance"),
        }
    }
    Ok(HostReport { instances, took_ms: began.elapsed().as_millis() as u64 })
}

/// How long an agent waits after a report that took `took` before the next: `every`, or longer when the
/// report itself is slow, so that reporting takes at most a tenth of the agent's time however many VMs the
/// host carries (a report reads every VM of the host, and the control plane every instance placed there).
pub fn report_pause(every: std::time::Duration, took: std::time::Duration) -> std::time::Duration {
    every.max(took * 9)
}

pub(crate) fn spawn(engine: Arc<Engine>) {
    let owner = engine.clone();
    let renewals = {
        let engine = engine.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(engine.config.heartbeat_every).await;
                if let Some(local) = &engine.local {
                    if let Err(e) = engine.host_heartbeat(&local.name, None).await {
                        tracing::warn!(error = %e, "the embedded agent's heartbeat failed");
                    }
                }
            }
        })
    };
    let reports = tokio::spawn(async move {
        // The first report right away, here rather than before the server is ready: with many instances
        // it takes seconds, and nothing waits for it (workers leave instances they lock alone either way).
        let mut pause = std::time::Duration::ZERO;
        loop {
            tokio::time::sleep(pause).await;
            let began = std::time::Instant::now();
            if let Err(e) = engine.local_heartbeat().await {
                tracing::warn!(error = %e, "the embedded agent's report failed");
            }
            pause = report_pause(engine.config.report_every, began.elapsed());
        }
    });
    owner.track(renewals.abort_handle());
    owner.track(reports.abort_handle());
}

impl Engine {
    pub(crate) async fn register_local_host(&self) -> Result<()> {
        let Some(local) = &self.local else { return Ok(()) };
        let reg = registration(&*local.driver, &self.config.zone, None).await?;
        self.register_host(&local.name, reg).await?;
        Ok(())
    }

    /// One report of the embedded agent: what the server's own host runs (with a heartbeat).
    pub(crate) async fn local_heartbeat(&self) -> Result<()> {
        let Some(local) = &self.local else { return Ok(()) };
        let report = report(&*local.driver).await?;
        match self.host_heartbeat(&local.name, Some(report.clone())).await {
            // Removed meanwhile (a restore of an older store, say): register again.
            Err(DomainError::NotFound { .. }) => {
                self.register_local_host().await?;
                self.host_heartbeat(&local.name, Some(report)).await
            }
            other => other,
        }
    }
}
