//! Organizations, projects, their quotas and the API keys that act inside them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: Uuid,
    /// Stable small integer id (Gcore's `project_id`); assigned by the store.
    pub numeric_id: i64,
    pub organization_id: Uuid,
    pub name: String,
    pub quota: Quota,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Upper bounds on what a project's live instances may add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub instances: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// The total size of the project's volumes (quotas stored before volumes existed get the default).
    #[serde(default = "default_volume_gb")]
    pub volume_gb: u64,
}

/// The volume quota of a project whose quota was set before volumes existed.
pub fn default_volume_gb() -> u64 {
    64 * 1024
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            instances: 256,
            vcpus: 1024,
            memory_mib: 4 * 1024 * 1024,
            disk_gb: 64 * 1024,
            volume_gb: default_volume_gb(),
        }
    }
}

/// What a project's live instances use, counted against its quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub instances: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// The total size of the project's volumes, whatever their state.
    #[serde(default)]
    pub volume_gb: u64,
}

impl Quota {
    /// Names the first limit that `usage` exceeds.
    pub fn exceeded_by(&self, usage: &Usage) -> Option<String> {
        let checks = [
            ("instances", usage.instances, self.instances),
            ("vcpus", usage.vcpus, self.vcpus),
            ("memory_mib", usage.memory_mib, self.memory_mib),
            ("disk_gb", usage.disk_gb, self.disk_gb),
            ("volume_gb", usage.volume_gb, self.volume_gb),
        ];
        checks
            .into_iter()
            .find(|(_, used, limit)| used > limit)
            .map(|(what, used, limit)| format!("{what} would be {used}, the project's limit is {limit}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ReadOnly,
    Member,
    /// Manages its own project: its keys (up to its own role), its instances and resources.
    Admin,
    /// Manages its organization: its projects and their keys. Quotas are the operator's.
    OrgAdmin,
    /// Above every organization: runs the cloud (hosts, host tokens). The bootstrap key is one.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::OrgAdmin => "org-admin",
            Role::Operator => "operator",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read-only" | "read_only" | "readonly" => Some(Role::ReadOnly),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "org-admin" | "org_admin" => Some(Role::OrgAdmin),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The public half (`NIM…`), shown in lists and audit records.
    pub key_id: String,
    pub name: String,
    pub project_id: Uuid,
    pub role: Role,
    /// The secret half. Kept because HMAC-signing dialects (Exoscale) need it to verify signatures;
    /// bearer lookups go through `secret_sha256`. Never rendered by any API after creation.
    pub secret: String,
    pub secret_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A person who signs in with a username and password (the dialects whose clients register and log in,
/// SharedCloud's). Registering gives the account an organization and project of its own; logging in hands
/// out an API key of that project, so everything after the login is an ordinary API-key call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    /// A PHC string (Argon2id, salted); the password itself is never stored.
    pub password_hash: String,
    pub organization_id: Uuid,
    pub project_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_login_at: Option<OffsetDateTime>,
}
