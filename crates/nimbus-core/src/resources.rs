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
    /// What the snapshot takes on the host, in bytes (its own file: the clusters the instance had written).
    #[serde(default)]
    pub size_bytes: u64,
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: Uuid,
    /// `ingress` or `egress`.
    pub flow_direction: String,
    pub protocol: String,
    pub start_port: Option<u16>,
    pub end_port: Option<u16>,
    pub network: Option<String>,
    pub description: String,
    /// Traffic from (or to) the members of this group, instead of a `network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<Uuid>,
    /// ICMP type and code for `icmp`/`icmpv6` rules; -1 is any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<i16>,
}

/// Protocols a rule may match.
pub const RULE_PROTOCOLS: &[&str] = &["tcp", "udp", "icmp", "icmpv6", "ah", "esp", "gre", "ipip", "all"];

impl SecurityGroupRule {
    /// A rule is one direction, one known protocol, ports only for TCP and UDP (a range inside
    /// 1..=65535), ICMP details only for ICMP, and at most one source: a CIDR network or a security group
    /// (neither means any source).
    pub fn validate(&self) -> crate::Result<()> {
        use crate::DomainError;
        if !matches!(self.flow_direction.as_str(), "ingress" | "egress") {
            return Err(DomainError::invalid("flow_direction", "must be ingress or egress"));
        }
        if !RULE_PROTOCOLS.contains(&self.protocol.as_str()) {
            return Err(DomainError::invalid("protocol", format!("must be one of {}", RULE_PROTOCOLS.join(", "))));
        }
        let ports = matches!(self.protocol.as_str(), "tcp" | "udp");
        match (self.start_port, self.end_port) {
            (None, None) => {}
            (Some(s), Some(e)) if ports && s >= 1 && s <= e => {}
            (Some(_), Some(_)) if ports => {
                return Err(DomainError::invalid("end_port", "the port range must be 1..=65535, start first"))
            }
            (Some(_), None) | (None, Some(_)) if ports => {
                return Err(DomainError::invalid("end_port", "give both start_port and end_port"))
            }
            _ => return Err(DomainError::invalid("start_port", "only tcp and udp rules have ports")),
        }
        let icmp = matches!(self.protocol.as_str(), "icmp" | "icmpv6");
        for (field, v) in [("icmp.type", self.icmp_type), ("icmp.code", self.icmp_code)] {
            match v {
                Some(_) if !icmp => return Err(DomainError::invalid(field, "only icmp rules have ICMP details")),
                Some(v) if !(-1..=254).contains(&v) => {
                    return Err(DomainError::invalid(field, "must be between -1 (any) and 254"))
                }
                _ => {}
            }
        }
        match (&self.network, self.security_group) {
            (Some(_), Some(_)) => {
                Err(DomainError::invalid("network", "give either a network or a security group, not both"))
            }
            (Some(n), None) if !valid_cidr(n) => {
                Err(DomainError::invalid("network", format!("{n:?} is not a CIDR network like 10.0.0.0/8")))
            }
            _ => Ok(()),
        }
    }
}

fn valid_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else { return false };
    match (addr.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(p)) => p <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(p)) => p <= 128,
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(protocol: &str) -> SecurityGroupRule {
        SecurityGroupRule {
            flow_direction: "ingress".into(),
            protocol: protocol.into(),
            network: Some("0.0.0.0/0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn rules_name_one_direction_protocol_and_source() {
        assert!(rule("tcp").validate().is_ok());
        assert!(SecurityGroupRule { start_port: Some(22), end_port: Some(22), ..rule("tcp") }.validate().is_ok());
        assert!(SecurityGroupRule { start_port: Some(80), end_port: Some(22), ..rule("tcp") }.validate().is_err());
        assert!(SecurityGroupRule { start_port: Some(22), end_port: Some(22), ..rule("icmp") }.validate().is_err());
        assert!(SecurityGroupRule { icmp_type: Some(8), icmp_code: Some(0), ..rule("icmp") }.validate().is_ok());
        assert!(SecurityGroupRule { icmp_type: Some(8), ..rule("tcp") }.validate().is_err());
        assert!(rule("smtp").validate().is_err());
        assert!(SecurityGroupRule { flow_direction: "in".into(), ..rule("tcp") }.validate().is_err());
        assert!(SecurityGroupRule { network: Some("10.0.0.0/33".into()), ..rule("tcp") }.validate().is_err());
        let any_source = SecurityGroupRule { network: None, ..rule("tcp") };
        assert!(any_source.validate().is_ok());
        let both = SecurityGroupRule { security_group: Some(Uuid::from_u128(1)), ..rule("tcp") };
        assert!(both.validate().is_err());
        let by_group = SecurityGroupRule { network: None, security_group: Some(Uuid::from_u128(1)), ..rule("all") };
        assert!(by_group.validate().is_ok());
    }
}
