//! The resources instances refer to: snapshots, SSH keys, security and anti-affinity groups, passwords.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    Snapshotting,
    Ready,
    Error,
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: Uuid,
    pub project_id: Uuid,
    pub instance_id: Uuid,
    pub name: String,
    pub state: SnapshotState,
    pub size_gb: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshKey {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: Uuid,
    /// `ingress` or `egress`.
    pub flow_direction: String,
    pub protocol: String,
    pub start_port: Option<u16>,
    pub end_port: Option<u16>,
    pub network: Option<String>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub description: String,
    pub rules: Vec<SecurityGroupRule>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AntiAffinityGroup {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A generated instance password, revealable until it expires (at most 24 hours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancePassword {
    pub instance_id: Uuid,
    pub password: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

pub const PASSWORD_LIFETIME: time::Duration = time::Duration::hours(24);
