//! Placement: which host an instance runs on. The choice (`nimbus_core::host::place`: a ready host of the
//! zone with room, spread, anti-affinity a hard rule) is made on the store's current figures, and the store
//! checks it again inside the transaction that records it (`WriteSet::placement`): when another server's
//! placement got there first the transaction is refused and the caller places again on fresh figures.

use nimbus_core::host::{self, Candidate, Demand};
use nimbus_core::instance::Instance;
use nimbus_core::resources::AntiAffinityGroup;
use nimbus_core::DomainError;
use nimbus_store::Placement;

use crate::resources::ANTI_AFFINITY_GROUP;
use crate::{store_err, Engine, Result};

/// How often a placement refused inside its transaction is made again before the caller is told.
pub(crate) const PLACEMENT_RETRIES: usize = 16;

pub(crate) fn demand_of(i: &Instance) -> Demand {
    Demand {
        vcpus: i.vcpus.into(),
        memory_mib: i.memory_mib,
        disk_gb: i.own_disk_gb(),
        gpus: match (&i.gpu_model, i.gpus) {
            (Some(model), n) if n > 0 => Some((model.clone(), n.into())),
            _ => None,
        },
    }
}

impl Engine {
    /// Chooses a host for `instance` (its size, its anti-affinity groups) and the check that goes with the
    /// transaction that records it.
    pub(crate) async fn place(&self, instance: &Instance) -> Result<Placement> {
        self.place_with(instance, None).await
    }

    /// [`Engine::place`] on `required_host` only, when given (the host that keeps volumes the instance is
    /// created with: a volume does not move between hosts yet).
    pub(crate) async fn place_with(&self, instance: &Instance, required_host: Option<&str>) -> Result<Placement> {
        let demand = demand_of(instance);
        let mut candidates = self.placement_candidates(demand.gpus.is_some()).await?;
        if let Some(host) = required_host {
            candidates.retain(|name, _| name == host);
            if candidates.is_empty() {
                return Err(DomainError::NoCapacity(format!(
                    "its volumes are kept on host {host}, which cannot take instances now"
                )));
            }
        }
        if let Some(host) = self.template_host(instance).await? {
            // Its template's files are on one host only.
            candidates.retain(|name, _| *name == host);
            if candidates.is_empty() {
                return Err(no_room(format!("its template is kept on host {host} only, which is not in this zone")));
            }
        }
        let members = self.store.group_members_hosts(&instance.anti_affinity_groups).await.map_err(store_err)?;
        let taken: Vec<&str> =
            members.iter().filter(|(_, id)| *id != instance.id).map(|(host, _)| host.as_str()).collect();
        let list: Vec<Candidate> = candidates
            .values()
            .map(|view| Candidate { view, holds_group_member: taken.contains(&view.host.name.as_str()) })
            .collect();
        let groups = self.group_names(instance).await;
        let name = host::place(&list, &demand, self.config.overcommit, &groups)?;
        Ok(self.placement_on(&candidates[&name].host, instance))
    }

    /// The check that `instance`, as it will be, still fits `host` (a scale of an instance that stays where
    /// its disk is).
    pub(crate) fn placement_on(&self, host: &host::Host, instance: &Instance) -> Placement {
        Placement {
            host: host.name.clone(),
            limit: host::limits(&host.capacity, self.config.overcommit),
            instance_id: instance.id,
            anti_affinity_groups: instance.anti_affinity_groups.clone(),
        }
    }

    /// The check that a resized instance still fits the host it is on.
    pub(crate) async fn placement_in_place(&self, instance: &Instance) -> Result<Option<Placement>> {
        let Some(name) = &instance.host else { return Ok(None) };
        let stored = self.store.get_host(name).await.map_err(store_err)?;
        Ok(stored.map(|h| self.placement_on(&h.host, instance)))
    }

    /// The host that keeps the instance's template, when only one does (imported or promoted there).
    async fn template_host(&self, instance: &Instance) -> Result<Option<String>> {
        let t =
            self.record_of::<nimbus_core::catalog::Template>(crate::catalog::TEMPLATE, instance.template_id).await?;
        Ok(t.and_then(|(t, _)| t.host))
    }

    /// The names of the instance's anti-affinity groups, for a refusal that names them.
    async fn group_names(&self, instance: &Instance) -> Vec<String> {
        let mut names = Vec::new();
        for id in &instance.anti_affinity_groups {
            let name = match self.record_of::<AntiAffinityGroup>(ANTI_AFFINITY_GROUP, *id).await {
                Ok(Some((g, _))) => g.name,
                _ => id.to_string(),
            };
            names.push(name);
        }
        names
    }
}

/// A refusal inside the placing transaction, for the caller's last retry.
pub(crate) fn no_room(why: String) -> DomainError {
    DomainError::NoCapacity(format!("every host placement was taken by others meanwhile ({why}); retry"))
}

impl Engine {
    /// Refuses a TPM on a host whose driver cannot attach one.
    pub(crate) async fn check_tpm_support(&self, host: Option<&str>) -> Result<()> {
        let supported = match (host, &self.local) {
            (Some(h), Some(local)) if h == local.name => local.driver.supports_tpm(),
            (None, Some(local)) => local.driver.supports_tpm(),
            (Some(h), _) => self.store.get_host(h).await.map_err(store_err)?.is_some_and(|s| s.host.tpm),
            (None, None) => false,
        };
        if !supported {
            return Err(DomainError::Unsupported(format!(
                "host {} cannot attach a TPM",
                host.unwrap_or("of the instance")
            )));
        }
        Ok(())
    }
}
