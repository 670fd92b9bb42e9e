//! What the SF Compute dialect returns: the `InstanceResponse` of the seed and the list envelopes, rendered
//! from Nimbus's instance record.

use std::collections::{BTreeMap, HashMap};

use nimbus_core::instance::{Instance, InstanceState};
use nimbus_engine::{Context, Engine};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::errors::SfResult;
use super::ids;

/// The key of this dialect's map in `Instance::extensions`.
pub const EXTENSION: &str = "sfcompute";

#[derive(Debug, Clone, Serialize)]
pub struct Ref {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkuRef {
    pub object: &'static str,
    pub id: String,
    pub alias: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceResponse {
    pub id: String,
    pub resource_path: String,
    pub owner: String,
    pub workspace: String,
    pub workspace_id: String,
    pub name: String,
    pub object: &'static str,
    pub status: String,
    pub capacity: Ref,
    pub pool: Ref,
    pub created_at: i64,
    pub updated_at: i64,
    pub image: Ref,
    pub cloud_init_user_data_used: bool,
    pub instance_sku: SkuRef,
    pub deployment: Option<Ref>,
    /// Left out of list responses unless `include=cloud_init_user_data` asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init_user_data: Option<Option<String>>,
    pub tags: BTreeMap<String, String>,
    pub expected_shutdown_at: Option<i64>,
    pub priority_level: String,
    /// Schema B's integer priority, shown once a client has set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct BatchList {
    pub object: &'static str,
    pub data: Vec<InstanceResponse>,
}

#[derive(Debug, Serialize)]
pub struct PagedList {
    pub object: &'static str,
    pub cursor: Option<String>,
    pub has_more: bool,
    pub data: Vec<InstanceResponse>,
}

/// What every instance of one request shares: the caller's account and workspace, the zone as capacity and
/// pool, and the instance types by name. Read once per request.
pub struct Scope {
    pub owner: String,
    pub workspace: String,
    pub workspace_id: String,
    pub capacity: Ref,
    pub pool: Ref,
    sku_ids: HashMap<String, Uuid>,
}

impl Scope {
    pub async fn of(engine: &Engine, ctx: &Context) -> SfResult<Scope> {
        let who = engine.whoami(ctx).await?;
        let zone = who.zone.name.clone();
        let zone_id = ids::zone_uuid(&zone);
        let sku_ids = engine.list_instance_types().await?.into_iter().map(|t| (t.name, t.id)).collect();
        Ok(Scope {
            owner: who.organization.name,
            workspace: who.project.name,
            workspace_id: ids::alias_of(engine, ids::WORKSPACE, who.project.id).await?,
            capacity: Ref { id: ids::alias_of(engine, ids::CAPACITY, zone_id).await?, name: zone.clone() },
            pool: Ref { id: ids::alias_of(engine, ids::POOL, zone_id).await?, name: zone },
            sku_ids,
        })
    }

    /// Renders one instance; `with_user_data` decides whether `cloud_init_user_data` is present at all.
    pub async fn render(&self, engine: &Engine, i: &Instance, with_user_data: bool) -> SfResult<InstanceResponse> {
        // Types are seeded with ids derived from their names; the same derivation covers a type that has
        // since left the catalog.
        let sku_uuid = self.sku_ids.get(&i.instance_type).copied().unwrap_or_else(|| {
            Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.instance-type.{}", i.instance_type).as_bytes())
        });
        let ext = i.extensions.get(EXTENSION);
        let deployment = ext
            .and_then(|e| e.get("deployment"))
            .and_then(|d| serde_json::from_value::<DeploymentExt>(d.clone()).ok())
            .map(|d| Ref { id: d.id, name: d.name });
        Ok(InstanceResponse {
            id: ids::alias_of(engine, ids::INSTANCE, i.id).await?,
            resource_path: format!("sfc:instance:{}:{}:{}", self.owner, self.workspace, i.name),
            owner: self.owner.clone(),
            workspace: self.workspace.clone(),
            workspace_id: self.workspace_id.clone(),
            name: i.name.clone(),
            object: "instance",
            status: status(i.state).to_string(),
            capacity: self.capacity.clone(),
            pool: self.pool.clone(),
            created_at: i.created_at.unix_timestamp(),
            updated_at: i.updated_at.unix_timestamp(),
            image: Ref { id: ids::alias_of(engine, ids::IMAGE, i.template_id).await?, name: i.template.clone() },
            cloud_init_user_data_used: i.user_data.is_some(),
            instance_sku: SkuRef {
                object: "instance_sku",
                id: ids::alias_of(engine, ids::INSTANCE_SKU, sku_uuid).await?,
                alias: i.instance_type.clone(),
            },
            deployment,
            cloud_init_user_data: with_user_data.then(|| i.user_data.clone()),
            tags: i.labels.clone(),
            expected_shutdown_at: i.expected_shutdown_at.map(OffsetDateTime::unix_timestamp),
            priority_level: ext
                .and_then(|e| e.get("priority_level"))
                .and_then(|p| p.as_str())
                .unwrap_or("normal")
                .to_string(),
            priority: ext.and_then(|e| e.get("priority")).and_then(|p| p.as_i64()),
        })
    }

    pub async fn render_all(
        &self,
        engine: &Engine,
        instances: &[Instance],
        with_user_data: bool,
    ) -> SfResult<Vec<InstanceResponse>> {
        let mut out = Vec::with_capacity(instances.len());
        for i in instances {
            out.push(self.render(engine, i, with_user_data).await?);
        }
        Ok(out)
    }
}

/// A deployment recorded in the extension map (Nimbus has no deployments of its own).
#[derive(serde::Deserialize)]
struct DeploymentExt {
    id: String,
    name: String,
}

pub const AWAITING_ALLOCATION: &str = "awaiting_allocation";
pub const RUNNING: &str = "running";
pub const TERMINATED: &str = "terminated";
pub const FAILED: &str = "failed";

/// SF's status of an instance: only SF's four values. SF has no stopped instance: one that no longer runs
/// (stopped by its terminate or its `expected_shutdown_at`, or through another API) is `terminated` until it
/// is deleted; one that runs or is busy with something it comes back from is `running`; a host that stopped
/// answering or an error is `failed`.
pub fn status(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Creating | InstanceState::Starting => AWAITING_ALLOCATION,
        InstanceState::Running
        | InstanceState::Rebooting
        | InstanceState::Snapshotting
        | InstanceState::Migrating
        | InstanceState::Suspended => RUNNING,
        InstanceState::Stopping
        | InstanceState::Stopped
        | InstanceState::Resizing
        | InstanceState::Reverting
        | InstanceState::Destroying
        | InstanceState::Destroyed => TERMINATED,
        InstanceState::Error | InstanceState::Unknown => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_one_of_sfs_four_statuses() {
        for s in InstanceState::ALL {
            assert!([AWAITING_ALLOCATION, RUNNING, TERMINATED, FAILED].contains(&status(s)), "{s}");
        }
    }
}
