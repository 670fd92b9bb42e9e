//! Resources that instances refer to: snapshots, SSH keys, security groups and anti-affinity groups.

use base64::Engine as _;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::resources::{AntiAffinityGroup, SecurityGroup, SecurityGroupRule, Snapshot, SshKey};
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::{Record, Write};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::instances::ActionRequest;
use crate::{store_err, Context, Engine, Result};

pub(crate) const SNAPSHOT: &str = "snapshot";
pub(crate) const PASSWORD: &str = "password";
pub(crate) const SSH_KEY: &str = "ssh_key";
/// Alias kind of SSH key names, unique per project.
const SSH_KEY_NAME: &str = "ssh_key.name";
pub(crate) const SECURITY_GROUP: &str = "security_group";
pub(crate) const ANTI_AFFINITY_GROUP: &str = "anti_affinity_group";

/// The OpenSSH-style fingerprint (`SHA256:…`) of a public key line (`ssh-ed25519 AAAA… comment`).
pub fn ssh_fingerprint(public_key: &str) -> Result<String> {
    let mut parts = public_key.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(DomainError::invalid("public_key", "expected an OpenSSH public key: '<type> <base64> [comment]'"));
    };
    if !kind.starts_with("ssh-") && !kind.starts_with("ecdsa-") && !kind.starts_with("sk-") {
        return Err(DomainError::invalid("public_key", format!("unknown key type {kind:?}")));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| DomainError::invalid("public_key", "the key's body is not base64"))?;
    let digest = Sha256::digest(&bytes);
    Ok(format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)))
}

impl Engine {
    // Snapshots.

    pub async fn list_snapshots(&self, ctx: &Context, instance_id: Option<Uuid>) -> Result<Vec<Snapshot>> {
        let all: Vec<Snapshot> = self.records(SNAPSHOT, ctx).await?;
        Ok(all.into_iter().filter(|s| instance_id.is_none_or(|i| s.instance_id == i)).collect())
    }

    pub async fn snapshot(&self, ctx: &Context, id: Uuid) -> Result<Snapshot> {
        self.record(SNAPSHOT, ctx, id).await
    }

    /// The caller's snapshot `id`, which must be of `instance`.
    pub(crate) async fn snapshot_of(&self, ctx: &Context, instance: &Instance, id: Uuid) -> Result<Snapshot> {
        let snapshot = self.snapshot(ctx, id).await?;
        if snapshot.instance_id != instance.id {
            return Err(DomainError::invalid(
                "snapshot_id",
                format!("snapshot {id} is not of instance {}", instance.id),
            ));
        }
        Ok(snapshot)
    }

    /// The writes that remove the records of the instance's snapshots that the host no longer has (an
    /// interrupted reinstall took them), so records and host agree.
    pub(crate) async fn forget_snapshots_gone_from_host(&self, instance: &Instance) -> Result<Vec<Write>> {
        let Ok(on_host) = self.driver_of(instance).snapshots(instance.id).await else { return Ok(Vec::new()) };
        let records = self.store.list_records(SNAPSHOT, Some(instance.project_id)).await.map_err(store_err)?;
        Ok(records
            .into_iter()
            .filter(|r| r.decode::<Snapshot>().map(|s| s.instance_id == instance.id).unwrap_or(false))
            .filter(|r| !on_host.contains(&r.id))
            .map(|r| Write::DeleteRecord { kind: SNAPSHOT.into(), id: r.id, expected_generation: Some(r.generation) })
            .collect())
    }

    /// The writes that remove the records of the instance's snapshots (whose files went with its disk).
    pub(crate) async fn forget_snapshots_of(&self, instance: &Instance) -> Result<Vec<Write>> {
        let records = self.store.list_records(SNAPSHOT, Some(instance.project_id)).await.map_err(store_err)?;
        Ok(records
            .into_iter()
            .filter(|r| r.decode::<Snapshot>().map(|s| s.instance_id == instance.id).unwrap_or(false))
            .map(|r| Write::DeleteRecord { kind: SNAPSHOT.into(), id: r.id, expected_generation: None })
            .collect())
    }

    /// Deleting a snapshot changes the instance's disk chain, so it runs as an operation under its lock.
    pub async fn delete_snapshot(&self, ctx: &Context, id: Uuid) -> Result<Operation> {
        let snapshot = self.snapshot(ctx, id).await?;
        self.act(ctx, snapshot.instance_id, ActionRequest::DeleteSnapshot { snapshot_id: id }).await
    }

    /// Makes a template of a snapshot: an operation on its instance (see `sagas::promote_snapshot`).
    pub async fn promote_snapshot(
        &self,
        ctx: &Context,
        id: Uuid,
        template: crate::sagas::promote_snapshot::PromoteRequest,
    ) -> Result<Operation> {
        let snapshot = self.snapshot(ctx, id).await?;
        self.act(ctx, snapshot.instance_id, ActionRequest::PromoteSnapshot { snapshot_id: id, template }).await
    }

    /// A standalone qcow2 of the snapshot on the server's host, to download: its path and size.
    pub async fn export_snapshot(&self, ctx: &Context, id: Uuid) -> Result<(std::path::PathBuf, u64)> {
        let snapshot = self.snapshot(ctx, id).await?;
        if snapshot.state != nimbus_core::resources::SnapshotState::Ready {
            return Err(DomainError::Conflict(format!("snapshot {id} is not ready")));
        }
        let instance = self.store.get_instance(snapshot.instance_id).await.map_err(store_err)?;
        let instance = instance.ok_or_else(|| DomainError::not_found("instance", snapshot.instance_id))?;
        let path =
            self.driver_of(&instance).export_snapshot(snapshot.instance_id, id).await.map_err(crate::driver_err)?;
        let path = std::path::PathBuf::from(path);
        let size = tokio::fs::metadata(&path).await.map_err(|e| DomainError::Internal(e.to_string()))?.len();
        Ok((path, size))
    }

    // SSH keys.

    pub async fn create_ssh_key(&self, ctx: &Context, name: &str, public_key: &str) -> Result<SshKey> {
        ctx.require(Role::Member)?;
        nimbus_core::instance::validate_name("name", name)?;
        let fingerprint = ssh_fingerprint(public_key)?;
        let key = SshKey {
            id: nimbus_core::new_id(),
            project_id: ctx.project.id,
            name: name.into(),
            public_key: public_key.trim().into(),
            fingerprint,
            created_at: nimbus_core::now(),
        };
        // The name is unique in the project: held as an alias, so two servers cannot both take it.
        let name_alias = Write::PutAlias { kind: SSH_KEY_NAME.into(), alias: ssh_key_alias(ctx, name), id: key.id };
        match self.insert(Record::new(SSH_KEY, key.id, Some(ctx.project.id), name, &key), vec![name_alias]).await {
            Err(DomainError::Conflict(_)) => {
                Err(DomainError::Conflict(format!("an SSH key named {name:?} already exists")))
            }
            other => other.map(|()| key),
        }
    }

    pub async fn list_ssh_keys(&self, ctx: &Context) -> Result<Vec<SshKey>> {
        self.records(SSH_KEY, ctx).await
    }

    /// Finds a key by name or id.
    pub async fn ssh_key(&self, ctx: &Context, name_or_id: &str) -> Result<SshKey> {
        let keys = self.list_ssh_keys(ctx).await?;
        keys.into_iter()
            .find(|k| k.name == name_or_id || k.id.to_string() == name_or_id)
            .ok_or_else(|| DomainError::not_found("ssh key", name_or_id))
    }

    pub async fn delete_ssh_key(&self, ctx: &Context, name_or_id: &str) -> Result<()> {
        ctx.require(Role::Member)?;
        let key = self.ssh_key(ctx, name_or_id).await?;
        self.delete_record_if::<SshKey>(SSH_KEY, ctx, key.id, |k| {
            Ok(vec![Write::DeleteAlias { kind: SSH_KEY_NAME.into(), alias: ssh_key_alias(ctx, &k.name) }])
        })
        .await
    }

    /// Resolves names or ids of registered keys to their names, refusing unknown ones.
    pub(crate) async fn resolve_ssh_key_names(&self, ctx: &Context, refs: &[String]) -> Result<Vec<String>> {
        let keys = self.list_ssh_keys(ctx).await?;
        refs.iter()
            .map(|r| {
                keys.iter()
                    .find(|k| &k.name == r || &k.id.to_string() == r)
                    .map(|k| k.name.clone())
                    .ok_or_else(|| DomainError::invalid("ssh_keys", format!("no SSH key {r:?} in this project")))
            })
            .collect()
    }

    /// The public keys of an instance's named keys that still exist.
    pub(crate) async fn public_keys(&self, project_id: Uuid, names: &[String]) -> Result<Vec<String>> {
        let records = self.store.list_records(SSH_KEY, Some(project_id)).await.map_err(store_err)?;
        let keys: Vec<SshKey> = records.iter().map(|r| r.decode()).collect::<Result<_, _>>().map_err(store_err)?;
        Ok(keys.into_iter().filter(|k| names.contains(&k.name)).map(|k| k.public_key).collect())
    }

    // Security groups and anti-affinity groups: records instances refer to.

    pub async fn create_security_group(
        &self,
        ctx: &Context,
        name: &str,
        description: &str,
        rules: Vec<SecurityGroupRule>,
    ) -> Result<SecurityGroup> {
        ctx.require(Role::Member)?;
        nimbus_core::instance::validate_name("name", name)?;
        validate_rules(&rules)?;
        let group = SecurityGroup {
            id: nimbus_core::new_id(),
            project_id: ctx.project.id,
            name: name.into(),
            description: description.into(),
            rules,
            created_at: nimbus_core::now(),
        };
        self.insert(Record::new(SECURITY_GROUP, group.id, Some(ctx.project.id), name, &group), vec![]).await?;
        Ok(group)
    }

    pub async fn list_security_groups(&self, ctx: &Context) -> Result<Vec<SecurityGroup>> {
        self.records(SECURITY_GROUP, ctx).await
    }

    pub async fn security_group(&self, ctx: &Context, id: Uuid) -> Result<SecurityGroup> {
        self.record(SECURITY_GROUP, ctx, id).await
    }

    /// Renames a group, rewrites its description, or replaces its rules (what is `None` stays).
    pub async fn update_security_group(
        &self,
        ctx: &Context,
        id: Uuid,
        name: Option<&str>,
        description: Option<&str>,
        rules: Option<Vec<SecurityGroupRule>>,
    ) -> Result<SecurityGroup> {
        ctx.require(Role::Member)?;
        if let Some(name) = name {
            nimbus_core::instance::validate_name("name", name)?;
        }
        if let Some(rules) = &rules {
            validate_rules(rules)?;
        }
        let (group, ()) = self
            .edit_record(SECURITY_GROUP, ctx, id, |group: &mut SecurityGroup| {
                if let Some(name) = name {
                    group.name = name.into();
                }
                if let Some(description) = description {
                    group.description = description.into();
                }
                if let Some(rules) = &rules {
                    group.rules = rules.clone();
                }
                Ok((group.name.clone(), vec![], ()))
            })
            .await?;
        Ok(group)
    }

    pub async fn delete_security_group(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        self.security_group(ctx, id).await?;
        self.refuse_if_referenced(ctx, |i| i.security_groups.contains(&id), "security group", id).await?;
        self.delete_record_if::<SecurityGroup>(SECURITY_GROUP, ctx, id, |_| Ok(vec![])).await
    }

    /// Adds a rule to a group; the rule gets a new id, which the returned group shows.
    pub async fn add_security_group_rule(
        &self,
        ctx: &Context,
        group_id: Uuid,
        rule: SecurityGroupRule,
    ) -> Result<(SecurityGroup, Uuid)> {
        ctx.require(Role::Member)?;
        rule.validate()?;
        if let Some(source) = rule.security_group {
            self.security_group(ctx, source).await.map_err(|_| {
                DomainError::invalid("security_group", format!("no security group {source} in this project"))
            })?;
        }
        let same =
            |r: &SecurityGroupRule| SecurityGroupRule { id: Uuid::nil(), description: String::new(), ..r.clone() };
        let (group, id) = self
            .edit_record(SECURITY_GROUP, ctx, group_id, |group: &mut SecurityGroup| {
                if group.rules.iter().any(|r| same(r) == same(&rule)) {
                    return Err(DomainError::Conflict("the security group already has this rule".into()));
                }
                let mut rule = rule.clone();
                rule.id = nimbus_core::new_id();
                let id = rule.id;
                group.rules.push(rule);
                Ok((group.name.clone(), vec![], id))
            })
            .await?;
        Ok((group, id))
    }

    pub async fn delete_security_group_rule(&self, ctx: &Context, group_id: Uuid, rule_id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        self.edit_record(SECURITY_GROUP, ctx, group_id, |group: &mut SecurityGroup| {
            let before = group.rules.len();
            group.rules.retain(|r| r.id != rule_id);
            if group.rules.len() == before {
                return Err(DomainError::not_found("security group rule", rule_id));
            }
            Ok((group.name.clone(), vec![], ()))
        })
        .await
        .map(|_| ())
    }

    pub async fn create_anti_affinity_group(
        &self,
        ctx: &Context,
        name: &str,
        description: &str,
    ) -> Result<AntiAffinityGroup> {
        ctx.require(Role::Member)?;
        nimbus_core::instance::validate_name("name", name)?;
        let group = AntiAffinityGroup {
            id: nimbus_core::new_id(),
            project_id: ctx.project.id,
            name: name.into(),
            description: description.into(),
            created_at: nimbus_core::now(),
        };
        self.insert(Record::new(ANTI_AFFINITY_GROUP, group.id, Some(ctx.project.id), name, &group), vec![]).await?;
        Ok(group)
    }

    pub async fn list_anti_affinity_groups(&self, ctx: &Context) -> Result<Vec<AntiAffinityGroup>> {
        self.records(ANTI_AFFINITY_GROUP, ctx).await
    }

    /// The anti-affinity groups given, each with the caller's instances in it, read once for all of them.
    pub async fn anti_affinity_members(
        &self,
        ctx: &Context,
        groups: Vec<AntiAffinityGroup>,
    ) -> Result<Vec<(AntiAffinityGroup, Vec<Instance>)>> {
        let query = nimbus_store::InstanceQuery { project_id: Some(ctx.project.id), ..Default::default() };
        let instances = self.store.list_instances(&query).await.map_err(store_err)?;
        Ok(groups
            .into_iter()
            .map(|g| {
                let members = instances.iter().filter(|i| i.anti_affinity_groups.contains(&g.id)).cloned().collect();
                (g, members)
            })
            .collect())
    }

    pub async fn anti_affinity_group(&self, ctx: &Context, id: Uuid) -> Result<AntiAffinityGroup> {
        self.record(ANTI_AFFINITY_GROUP, ctx, id).await
    }

    pub async fn delete_anti_affinity_group(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        self.anti_affinity_group(ctx, id).await?;
        self.refuse_if_referenced(ctx, |i| i.anti_affinity_groups.contains(&id), "anti-affinity group", id).await?;
        self.delete_record_if::<AntiAffinityGroup>(ANTI_AFFINITY_GROUP, ctx, id, |_| Ok(vec![])).await
    }

    // Dialect records: documents a dialect keeps about its own provider-only objects (Exoscale's operation
    // receipts, say), scoped by project. The core never reads them.

    fn dialect_kind(dialect: &str, kind: &str) -> String {
        format!("dialect.{dialect}.{kind}")
    }

    /// Stores (or replaces) a dialect's document. The caller has already been allowed the change the
    /// document records, so no role is checked here.
    pub async fn put_dialect_record(
        &self,
        ctx: &Context,
        dialect: &str,
        kind: &str,
        id: Uuid,
        value: &serde_json::Value,
    ) -> Result<()> {
        let kind = Self::dialect_kind(dialect, kind);
        self.put_record(&kind, id, Some(ctx.project.id), &id.to_string(), value).await
    }

    /// A dialect's document of the caller's project, if there is one.
    pub async fn dialect_record(
        &self,
        ctx: &Context,
        dialect: &str,
        kind: &str,
        id: Uuid,
    ) -> Result<Option<serde_json::Value>> {
        let record = self.store.get_record(&Self::dialect_kind(dialect, kind), id).await.map_err(store_err)?;
        Ok(record.filter(|r| r.project_id == Some(ctx.project.id)).map(|r| r.body))
    }

    pub(crate) async fn check_group_refs(&self, ctx: &Context, sgs: &[Uuid], aags: &[Uuid]) -> Result<()> {
        for id in sgs {
            self.security_group(ctx, *id).await.map_err(|_| {
                DomainError::invalid("security_groups", format!("no security group {id} in this project"))
            })?;
        }
        for id in aags {
            self.anti_affinity_group(ctx, *id).await.map_err(|_| {
                DomainError::invalid("anti_affinity_groups", format!("no anti-affinity group {id} in this project"))
            })?;
        }
        Ok(())
    }

    pub(crate) async fn refuse_if_referenced(
        &self,
        ctx: &Context,
        uses: impl Fn(&nimbus_core::instance::Instance) -> bool,
        what: &str,
        id: Uuid,
    ) -> Result<()> {
        let query = nimbus_store::InstanceQuery { project_id: Some(ctx.project.id), ..Default::default() };
        let instances = self.store.list_instances(&query).await.map_err(store_err)?;
        if let Some(i) = instances.iter().find(|i| uses(i)) {
            return Err(DomainError::Conflict(format!("{what} {id} is used by instance {}", i.id)));
        }
        Ok(())
    }
}

fn validate_rules(rules: &[SecurityGroupRule]) -> Result<()> {
    rules.iter().try_for_each(SecurityGroupRule::validate)
}

/// The alias that holds an SSH key's name within its project.
fn ssh_key_alias(ctx: &Context, name: &str) -> String {
    format!("{}/{name}", ctx.project.id)
}

pub(crate) fn kind_name(kind: &'static str) -> &'static str {
    match kind {
        SNAPSHOT => "snapshot",
        SSH_KEY => "ssh key",
        SECURITY_GROUP => "security group",
        ANTI_AFFINITY_GROUP => "anti-affinity group",
        crate::networking::PRIVATE_NETWORK => "private network",
        crate::networking::ELASTIC_IP => "elastic IP",
        crate::reserved_addresses::RESERVED_ADDRESS => "reserved address",
        crate::volumes::VOLUME => "volume",
        crate::volume_snapshots::VOLUME_SNAPSHOT => "volume snapshot",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_match_openssh() {
        // OpenSSH prints "SHA256:" and the unpadded base64 of the digest: 43 characters.
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";
        assert_eq!(super::ssh_fingerprint(key).unwrap().len(), "SHA256:".len() + 43);
        assert!(super::ssh_fingerprint("not a key").is_err());
    }
}
