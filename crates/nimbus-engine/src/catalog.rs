//! The catalog: zones, instance types and templates.

use nimbus_core::catalog::{
    default_gpu_models, default_instance_types, BootMode, GpuModel, InstanceType, Template, Visibility, Zone,
};
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::Record;
use serde::Deserialize;
use uuid::Uuid;

use crate::{store_err, Context, Engine, Result};

pub(crate) const INSTANCE_TYPE: &str = "instance_type";
pub(crate) const TEMPLATE: &str = "template";
pub(crate) const GPU_MODEL: &str = "gpu_model";

/// A template to register; `project_id` is set by the engine.
#[derive(Debug, Clone, Deserialize)]
pub struct NewTemplate {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub os_name: String,
    #[serde(default)]
    pub os_version: String,
    pub source: String,
    #[serde(default)]
    pub min_disk_gb: Option<u64>,
    #[serde(default)]
    pub password_enabled: bool,
    #[serde(default)]
    pub ssh_key_enabled: bool,
    #[serde(default)]
    pub default_user: Option<String>,
    /// Public templates are seen by every project; only admins may register them.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub checksum: Option<String>,
}

impl Engine {
    pub(crate) async fn seed_catalog(&self) -> Result<()> {
        let zone = Zone { name: self.config.zone.clone(), numeric_id: 1, description: "This host".into() };
        self.store.put_zone(&zone).await.map_err(store_err)?;
        for t in default_instance_types(&zone.name) {
            self.seed(INSTANCE_TYPE, t.id, &t.name, &t).await?;
        }
        for m in default_gpu_models() {
            self.seed(GPU_MODEL, m.id, &m.codename, &m).await?;
        }
        // Templates that hosts' drivers offer join the catalog when their agents register.
        Ok(())
    }

    /// Makes a template a host's driver offers part of the public catalog.
    pub(crate) async fn seed_template(&self, t: &Template) -> Result<()> {
        // Keep the creation time of a template registered before (by this host or another).
        let existing = self.record_of::<Template>(TEMPLATE, t.id).await?;
        let t = Template { created_at: existing.map_or(t.created_at, |(old, _)| old.created_at), ..t.clone() };
        self.seed(TEMPLATE, t.id, &t.name, &t).await
    }

    /// Makes a public catalog record say `value`, writing only when it says something else (every server
    /// seeds the catalog at start; a record already right is left alone).
    async fn seed<T: serde::Serialize>(&self, kind: &str, id: Uuid, name: &str, value: &T) -> Result<()> {
        let wanted = serde_json::to_value(value).expect("catalog entries serialize");
        match self.store.get_record(kind, id).await.map_err(store_err)? {
            Some(r) if r.body == wanted && r.name == name && r.project_id.is_none() => Ok(()),
            _ => self.put_record(kind, id, None, name, value).await,
        }
    }

    pub async fn zone(&self) -> Result<Zone> {
        let zones = self.store.list_zones().await.map_err(store_err)?;
        zones
            .into_iter()
            .find(|z| z.name == self.config.zone)
            .ok_or_else(|| DomainError::Internal("zone missing".into()))
    }

    pub async fn list_zones(&self) -> Result<Vec<Zone>> {
        self.store.list_zones().await.map_err(store_err)
    }

    pub async fn list_instance_types(&self) -> Result<Vec<InstanceType>> {
        let records = self.store.list_records(INSTANCE_TYPE, None).await.map_err(store_err)?;
        let mut types =
            records.iter().map(|r| r.decode()).collect::<Result<Vec<InstanceType>, _>>().map_err(store_err)?;
        types.sort_by(|a, b| (&a.family, a.vcpus, a.memory_mib).cmp(&(&b.family, b.vcpus, b.memory_mib)));
        Ok(types)
    }

    /// Finds an instance type by name (`standard.small`) or id: its one record, read by its key (every
    /// create looks its type up; decoding the whole catalog for it was a tenth of a create's CPU).
    pub async fn instance_type(&self, name_or_id: &str) -> Result<InstanceType> {
        let by_id = match Uuid::parse_str(name_or_id) {
            Ok(id) => self.store.get_record(INSTANCE_TYPE, id).await.map_err(store_err)?,
            Err(_) => None,
        };
        let record = match by_id {
            Some(r) => Some(r),
            None => {
                self.store.list_records_named(INSTANCE_TYPE, name_or_id).await.map_err(store_err)?.into_iter().next()
            }
        };
        let found: Option<InstanceType> = record.map(|r| r.decode()).transpose().map_err(store_err)?;
        found.ok_or_else(|| DomainError::not_found("instance type", name_or_id))
    }

    /// The GPU models, most CUDA cores first; the first is the default of a GPU instance that names none.
    pub async fn list_gpu_models(&self) -> Result<Vec<GpuModel>> {
        let records = self.store.list_records(GPU_MODEL, None).await.map_err(store_err)?;
        let mut models = records.iter().map(|r| r.decode()).collect::<Result<Vec<GpuModel>, _>>().map_err(store_err)?;
        models.sort_by(|a, b| b.cuda_cores.cmp(&a.cuda_cores).then_with(|| a.codename.cmp(&b.codename)));
        Ok(models)
    }

    /// Finds a GPU model by codename (`titanv`) or id.
    pub async fn gpu_model(&self, codename_or_id: &str) -> Result<GpuModel> {
        let models = self.list_gpu_models().await?;
        models
            .into_iter()
            .find(|m| m.codename == codename_or_id || m.id.to_string() == codename_or_id)
            .ok_or_else(|| DomainError::not_found("GPU model", codename_or_id))
    }

    pub async fn list_templates(&self, ctx: &Context) -> Result<Vec<Template>> {
        let records = self.store.list_records(TEMPLATE, Some(ctx.project.id)).await.map_err(store_err)?;
        let mut templates =
            records.iter().map(|r| r.decode()).collect::<Result<Vec<Template>, _>>().map_err(store_err)?;
        templates.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(templates)
    }

    /// Finds a template visible to the caller by name or id; the caller's own shadow a public one.
    pub async fn template(&self, ctx: &Context, name_or_id: &str) -> Result<Template> {
        let templates = self.list_templates(ctx).await?;
        let mut matching: Vec<Template> =
            templates.into_iter().filter(|t| t.name == name_or_id || t.id.to_string() == name_or_id).collect();
        matching.sort_by_key(|t| t.project_id.is_none());
        matching.into_iter().next().ok_or_else(|| DomainError::not_found("template", name_or_id))
    }

    pub async fn register_template(&self, ctx: &Context, new: NewTemplate) -> Result<Template> {
        ctx.require(if new.public { Role::Operator } else { Role::Member })?;
        nimbus_core::instance::validate_name("name", &new.name)?;
        if new.source.trim().is_empty() {
            return Err(DomainError::invalid("source", "must name the template's files (a directory or URL)"));
        }
        let t = Template {
            id: Uuid::new_v4(),
            project_id: if new.public { None } else { Some(ctx.project.id) },
            name: new.name,
            description: new.description,
            os_name: new.os_name,
            os_version: new.os_version,
            boot_mode: BootMode::Kernel,
            min_disk_gb: new.min_disk_gb.unwrap_or(1),
            min_memory_mib: 128,
            password_enabled: new.password_enabled,
            ssh_key_enabled: new.ssh_key_enabled,
            default_user: new.default_user.unwrap_or_else(|| "root".into()),
            visibility: if new.public { Visibility::Public } else { Visibility::Private },
            source: new.source,
            checksum: new.checksum,
            size_bytes: 0,
            host: None,
            created_at: nimbus_core::now(),
        };
        self.insert(Record::new(TEMPLATE, t.id, t.project_id, &t.name, &t), vec![]).await?;
        Ok(t)
    }

    /// Deletes a template's record; an imported or promoted template's files go too, unless an instance
    /// still boots from them (their disks are overlays over the template's disk).
    pub async fn delete_template(&self, ctx: &Context, name_or_id: &str) -> Result<()> {
        let t = self.template(ctx, name_or_id).await?;
        ctx.require(if t.project_id.is_none() { Role::Operator } else { Role::Member })?;
        self.delete(TEMPLATE, t.id).await?;
        let instances = self.store.list_instances(&nimbus_store::InstanceQuery::default()).await.map_err(store_err)?;
        // A boot volume made from it is an overlay on its disk too, whatever instance it boots.
        let mut volumes = self.store.list_records(crate::volumes::VOLUME, None).await.map_err(store_err)?.into_iter();
        let volume_uses =
            volumes.any(|r| r.decode::<nimbus_core::volume::Volume>().is_ok_and(|v| v.template_id == Some(t.id)));
        if !volume_uses && !instances.iter().any(|i| i.template_id == t.id) {
            // Its files are on the host that imported or promoted it: every host is asked (it is idempotent);
            // a host that does not answer keeps them until an operator removes them.
            for host in self.store.list_hosts().await.map_err(store_err)? {
                if let Err(e) = self.host_driver(&host.host.name).remove_template(t.id).await {
                    tracing::warn!(template = %t.id, host = %host.host.name, error = %e, "could not remove a deleted template's files");
                }
            }
        }
        Ok(())
    }

    /// Registers the templates the server's own host offers (a template built while the server runs is seen
    /// at the next reconciler pass), writing only what changed. Other hosts' come with their agents.
    pub(crate) async fn seed_templates(&self) -> Result<()> {
        let Some(local) = &self.local else { return Ok(()) };
        for t in local.driver.templates().await.map_err(|e| DomainError::Internal(e.to_string()))? {
            self.seed_template(&t).await?;
        }
        Ok(())
    }
}

impl Engine {
    /// The dialect id of a resource (`inst_…` for an instance, say): the one stored beside the canonical id
    /// (by a create, or by an older Nimbus), else the one `derive` computes from the canonical id. Reading
    /// never stores one, so every server answers the same without writing.
    pub async fn alias_or(&self, kind: &str, id: Uuid, derive: impl FnOnce() -> String) -> Result<String> {
        Ok(self.store.alias_of(kind, id).await.map_err(store_err)?.unwrap_or_else(derive))
    }

    /// The canonical id behind a stored dialect id, if there is one.
    pub async fn resolve_alias(&self, kind: &str, alias: &str) -> Result<Option<Uuid>> {
        self.store.resolve_alias(kind, alias).await.map_err(store_err)
    }
}
