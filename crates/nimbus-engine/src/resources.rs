//! Resources that instances refer to: snapshots, SSH keys, security groups and anti-affinity groups.

use base64::Engine as _;
use nimbus_core::operation::Operation;
use nimbus_core::resources::{AntiAffinityGroup, SecurityGroup, SecurityGroupRule, Snapshot, SshKey};
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::{Record, Write, WriteSet};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::instances::ActionRequest;
use crate::{store_err, Context, Engine, Result};

pub(crate) const SNAPSHOT: &str = "snapshot";
pub(crate) const PASSWORD: &str = "password";
pub(crate) const SSH_KEY: &str = "ssh_key";
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
    pub(crate) async fn records<T: for<'de> serde::Deserialize<'de>>(
        &self,
        kind: &str,
        ctx: &Context,
    ) -> Result<Vec<T>> {
        let records = self.store.list_records(kind, Some(ctx.project.id)).await.map_err(store_err)?;
        records.iter().filter(|r| r.project_id == Some(ctx.project.id)).map(|r| r.decode().map_err(store_err)).collect()
    }

    pub(crate) async fn record<T: for<'de> serde::Deserialize<'de>>(
        &self,
        kind: &'static str,
        ctx: &Context,
        id: Uuid,
    ) -> Result<T> {
        let record = self.store.get_record(kind, id).await.map_err(store_err)?;
        record
            .filter(|r| r.project_id == Some(ctx.project.id))
            .ok_or_else(|| DomainError::not_found(kind_name(kind), id))?
            .decode()
            .map_err(store_err)
    }

    pub(crate) async fn put(&self, record: Record) -> Result<()> {
        let mut set = WriteSet::new();
        set.push(Write::PutRecord(record));
        self.store.apply(set).await.map_err(store_err)
    }

    pub(crate) async fn delete(&self, kind: &str, id: Uuid) -> Result<()> {
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: kind.into(), id });
        self.store.apply(set).await.map_err(store_err)
    }

    // Snapshots.

    pub async fn list_snapshots(&self, ctx: &Context, instance_id: Option<Uuid>) -> Result<Vec<Snapshot>> {
        let all: Vec<Snapshot> = self.records(SNAPSHOT, ctx).await?;
        Ok(all.into_iter().filter(|s| instance_id.is_none_or(|i| s.instance_id == i)).collect())
    }

    pub async fn snapshot(&self, ctx: &Context, id: Uuid) -> Result<Snapshot> {
        self.record(SNAPSHOT, ctx, id).await
    }

    /// Deleting a snapshot changes the instance's disk chain, so it runs as an operation under its lock.
    pub async fn delete_snapshot(&self, ctx: &Context, id: Uuid) -> Result<Operation> {
        let snapshot = self.snapshot(ctx, id).await?;
        self.act(ctx, snapshot.instance_id, ActionRequest::DeleteSnapshot { snapshot_id: id }).await
    }

    // SSH keys.

    pub async fn create_ssh_key(&self, ctx: &Context, name: &str, public_key: &str) -> Result<SshKey> {
        ctx.require(Role::Member)?;
        nimbus_core::instance::validate_name("name", name)?;
        let fingerprint = ssh_fingerprint(public_key)?;
        let existing: Vec<SshKey> = self.records(SSH_KEY, ctx).await?;
        if existing.iter().any(|k| k.name == name) {
            return Err(DomainError::Conflict(format!("an SSH key named {name:?} already exists")));
        }
        let key = SshKey {
            id: nimbus_core::new_id(),
            project_id: ctx.project.id,
            name: name.into(),
            public_key: public_key.trim().into(),
            fingerprint,
            created_at: nimbus_core::now(),
        };
        self.put(Record::new(SSH_KEY, key.id, Some(ctx.project.id), name, &key)).await?;
        Ok(key)
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
        self.delete(SSH_KEY, key.id).await
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
        self.put(Record::new(SECURITY_GROUP, group.id, Some(ctx.project.id), name, &group)).await?;
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
        let mut group = self.security_group(ctx, id).await?;
        if let Some(name) = name {
            nimbus_core::instance::validate_name("name", name)?;
            group.name = name.into();
        }
        if let Some(description) = description {
            group.description = description.into();
        }
        if let Some(rules) = rules {
            validate_rules(&rules)?;
            group.rules = rules;
        }
        self.put(Record::new(SECURITY_GROUP, group.id, Some(ctx.project.id), &group.name, &group)).await?;
        Ok(group)
    }

    pub async fn delete_security_group(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        self.security_group(ctx, id).await?;
        self.refuse_if_referenced(ctx, |i| i.security_groups.contains(&id), "security group", id).await?;
        self.delete(SECURITY_GROUP, id).await
    }

    /// Adds a rule to a group; the rule gets a new id, which the returned group shows.
    pub async fn add_security_group_rule(
        &self,
        ctx: &Context,
        group_id: Uuid,
        mut rule: SecurityGroupRule,
    ) -> Result<(SecurityGroup, Uuid)> {
        ctx.require(Role::Member)?;
        rule.validate()?;
        if let Some(source) = rule.security_group {
            self.security_group(ctx, source).await.map_err(|_| {
                DomainError::invalid("security_group", format!("no security group {source} in this project"))
            })?;
        }
        let _serial = self.resource_writes.lock().await;
        let mut group = self.security_group(ctx, group_id).await?;
        let same =
            |r: &SecurityGroupRule| SecurityGroupRule { id: Uuid::nil(), description: String::new(), ..r.clone() };
        if group.rules.iter().any(|r| same(r) == same(&rule)) {
            return Err(DomainError::Conflict("the security group already has this rule".into()));
        }
        rule.id = nimbus_core::new_id();
        let id = rule.id;
        group.rules.push(rule);
        self.put(Record::new(SECURITY_GROUP, group.id, Some(ctx.project.id), &group.name, &group)).await?;
        Ok((group, id))
    }

    pub async fn delete_security_group_rule(&self, ctx: &Context, group_id: Uuid, rule_id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        let _serial = self.resource_writes.lock().await;
        let mut group = self.security_group(ctx, group_id).await?;
        let before = group.rules.len();
        group.rules.retain(|r| r.id != rule_id);
        if group.rules.len() == before {
            return Err(DomainError::not_found("security group rule", rule_id));
        }
        self.put(Record::new(SECURITY_GROUP, group.id, Some(ctx.project.id), &group.name, &group)).await
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
        self.put(Record::new(ANTI_AFFINITY_GROUP, group.id, Some(ctx.project.id), name, &group)).await?;
        Ok(group)
    }

    pub async fn list_anti_affinity_groups(&self, ctx: &Context) -> Result<Vec<AntiAffinityGroup>> {
        self.records(ANTI_AFFINITY_GROUP, ctx).await
    }

    pub async fn anti_affinity_group(&self, ctx: &Context, id: Uuid) -> Result<AntiAffinityGroup> {
        self.record(ANTI_AFFINITY_GROUP, ctx, id).await
    }

    pub async fn delete_anti_affinity_group(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        self.anti_affinity_group(ctx, id).await?;
        self.refuse_if_referenced(ctx, |i| i.anti_affinity_groups.contains(&id), "anti-affinity group", id).await?;
        self.delete(ANTI_AFFINITY_GROUP, id).await
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
        self.put(Record::new(&kind, id, Some(ctx.project.id), &id.to_string(), value)).await
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

fn kind_name(kind: &'static str) -> &'static str {
    match kind {
        SNAPSHOT => "snapshot",
        SSH_KEY => "ssh key",
        SECURITY_GROUP => "security group",
        ANTI_AFFINITY_GROUP => "anti-affinity group",
        crate::networking::PRIVATE_NETWORK => "private network",
        crate::networking::ELASTIC_IP => "elastic IP",
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
