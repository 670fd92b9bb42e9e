//! The instance: a virtual machine's desired and observed state as the control plane records it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::labels::Labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Creating,
    Starting,
    Running,
    Stopping,
    Stopped,
    Rebooting,
    Resizing,
    Snapshotting,
    Reverting,
    Migrating,
    Error,
    Destroying,
    Destroyed,
    /// Paused in memory by a suspend: the VM keeps its RAM and process but runs no code until resumed.
    Suspended,
    /// Its host stopped answering: what runs there is not known until the host is back (see `state_reason`).
    Unknown,
}

impl InstanceState {
    pub const ALL: [InstanceState; 15] = [
        Self::Creating,
        Self::Starting,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Rebooting,
        Self::Resizing,
        Self::Snapshotting,
        Self::Reverting,
        Self::Migrating,
        Self::Error,
        Self::Destroying,
        Self::Destroyed,
        Self::Suspended,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Rebooting => "rebooting",
            Self::Resizing => "resizing",
            Self::Snapshotting => "snapshotting",
            Self::Reverting => "reverting",
            Self::Migrating => "migrating",
            Self::Error => "error",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
            Self::Suspended => "suspended",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// States that only exist while an operation is working on the instance.
    pub fn is_transitional(self) -> bool {
        !matches!(self, Self::Running | Self::Stopped | Self::Error | Self::Destroyed | Self::Suspended | Self::Unknown)
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The volume an instance boots from (its root disk), and whether it goes when the instance is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootVolume {
    pub id: Uuid,
    pub delete_on_termination: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub hostname: String,
    pub description: String,
    pub zone: String,
    pub instance_type: String,
    pub template_id: Uuid,
    pub template: String,
    pub state: InstanceState,
    /// Why it is in its state when that is not the result of an action (`host-unreachable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// While `unknown`: the state it had when its host stopped answering (what an evacuation restores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_state: Option<InstanceState>,
    /// User labels; read-only system labels live in `system_labels` and are never changed by a patch.
    pub labels: Labels,
    pub system_labels: Labels,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    /// The codename of its GPU model (`titanv`) when its type has GPUs; `None` otherwise.
    #[serde(default)]
    pub gpu_model: Option<String>,
    pub disk_size_gb: u64,
    /// Base64, as every seed carries it.
    pub user_data: Option<String>,
    pub ssh_keys: Vec<String>,
    pub security_groups: Vec<Uuid>,
    pub anti_affinity_groups: Vec<Uuid>,
    pub private_networks: Vec<Uuid>,
    pub ip_addresses: Vec<String>,
    pub mac_address: String,
    pub protected: bool,
    pub tpm_enabled: bool,
    pub secure_boot: bool,
    /// It runs the host's rescue system, not its own (a rescue start put it there), until it stops: reboots
    /// and restarts by the control plane boot the rescue system again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rescue: bool,
    /// The hourly price its owner set for the instance (a marketplace's ask price); `None`: the instance
    /// type's list price applies.
    #[serde(default)]
    pub price_hourly: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expected_shutdown_at: Option<OffsetDateTime>,
    /// The host that runs it (placement); `None` until placed.
    pub host: Option<String>,
    /// The operation that currently holds this instance's lock.
    pub lock_operation_id: Option<Uuid>,
    /// The operation that created it, kept so that no one has to search the operations for it (`None` on
    /// records written before it was kept).
    #[serde(default)]
    pub create_operation_id: Option<Uuid>,
    /// Bumped on every write: compare-and-swap updates and ETags.
    pub generation: i64,
    /// A stable small integer id, unique among instances, assigned by the store when the instance is first
    /// inserted (0 before that): for dialects whose providers show one (ONET's `legacy_id`).
    #[serde(default)]
    pub numeric_id: i64,
    /// Provider-specific fields that have no home in the core model, one map per dialect.
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// The volume it boots from, when its root disk is a volume rather than a disk of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_volume: Option<BootVolume>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Instance {
    /// The disk it holds itself, as quotas and host room count it: none when it boots from a volume (which
    /// counts as a volume).
    pub fn own_disk_gb(&self) -> u64 {
        if self.boot_volume.is_some() {
            0
        } else {
            self.disk_size_gb
        }
    }

    /// Ends the rescue boot once the VM is off: a rescue lasts until the instance stops (or fails, or goes);
    /// a reboot, a suspend or its host going quiet keep it. Called wherever the state is written from an
    /// outcome or from what the host reports.
    pub fn end_rescue_if_off(&mut self) {
        if matches!(self.state, InstanceState::Stopped | InstanceState::Error | InstanceState::Destroyed) {
            self.rescue = false;
        }
    }

    /// The field `key` of `dialect`'s extension map.
    pub fn extension(&self, dialect: &str, key: &str) -> Option<&serde_json::Value> {
        self.extensions.get(dialect).and_then(|e| e.get(key))
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.generation)
    }

    /// A stable MAC for the instance's first NIC: QEMU's locally administered prefix + 3 bytes of the id.
    pub fn mac_for(id: Uuid) -> String {
        let b = id.as_bytes();
        // v7 ids start with the timestamp; the random tail makes a better spread.
        format!("52:54:00:{:02x}:{:02x}:{:02x}", b[13], b[14], b[15])
    }
}

/// Longest name any dialect allows (Exoscale, ONET, SF Compute: 255).
pub const MAX_NAME_LEN: usize = 255;

/// Which names an instance may take. Providers differ, and the API a name comes through says which rule
/// holds; hostnames stay RFC 1123 whatever the name (derived from it when not given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NameRule {
    /// Nimbus's own, which the native API, Exoscale, SF Compute and Gcore names fit: see [`validate_name`].
    #[default]
    Strict,
    /// Any text of 1 to [`MAX_NAME_LEN`] characters but NUL (ONET's and SharedCloud's Django `CharField`):
    /// spaces and any script included.
    AnyText,
}

/// Validates an instance name under `rule`.
pub fn validate_name_by(rule: NameRule, field: &str, name: &str) -> crate::Result<()> {
    match rule {
        NameRule::Strict => validate_name(field, name),
        NameRule::AnyText => {
            let len = name.chars().count();
            if len == 0 || len > MAX_NAME_LEN {
                return Err(crate::DomainError::invalid(field, format!("must be 1 to {MAX_NAME_LEN} characters long")));
            }
            if name.contains('\0') {
                return Err(crate::DomainError::invalid(field, "must not contain NUL characters"));
            }
            Ok(())
        }
    }
}

/// Validates a resource name: letters, digits, '-', '.', '_', starting with a letter or digit.
pub fn validate_name(field: &str, name: &str) -> crate::Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(crate::DomainError::invalid(field, format!("must be 1 to {MAX_NAME_LEN} characters long")));
    }
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    let first = name.chars().next().unwrap();
    if !ok_chars || !first.is_ascii_alphanumeric() {
        return Err(crate::DomainError::invalid(
            field,
            format!("{name:?} must start with a letter or digit and contain only letters, digits, '-', '.' and '_'"),
        ));
    }
    Ok(())
}

/// Validates a hostname (RFC 1123): dot-separated labels of letters, digits and '-', each 1 to 63 long and
/// not starting or ending with '-', 253 characters at most.
pub fn validate_hostname(field: &str, hostname: &str) -> crate::Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if hostname.len() <= 253 && hostname.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(crate::DomainError::invalid(
            field,
            format!("{hostname:?} is not a valid hostname: dot-separated labels of letters, digits and '-'"),
        ))
    }
}

/// The hostname an instance gets when none is given: its name made into a valid hostname.
pub fn hostname_from_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let labels: Vec<String> = mapped
        .split('.')
        .map(|l| l.chars().take(63).collect::<String>().trim_matches('-').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let mut host = labels.join(".");
    host.truncate(253);
    let host = host.trim_end_matches(['.', '-']).to_string();
    if host.is_empty() {
        "instance".into()
    } else {
        host
    }
}

/// Shortest and longest initial password an instance takes.
pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 72;

/// Validates a password given for an instance: 8 to 72 printable ASCII characters without spaces (it travels
/// to the guest in its seed and must survive every shell and config file on the way).
pub fn validate_password(field: &str, password: &str) -> crate::Result<()> {
    let len_ok = (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len());
    if len_ok && password.chars().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(crate::DomainError::invalid(
            field,
            format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} printable ASCII characters without spaces"),
        ))
    }
}

/// Validates a price set on an instance: a finite amount, not negative.
pub fn validate_price(field: &str, price: f64) -> crate::Result<()> {
    if price.is_finite() && price >= 0.0 {
        Ok(())
    } else {
        Err(crate::DomainError::invalid(field, format!("{price} is not a price: a number of at least 0")))
    }
}

/// The largest user-data Nimbus accepts, decoded (Exoscale's documented limit).
pub const MAX_USER_DATA_BYTES: usize = 32 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_printable_ascii_of_a_sane_length() {
        assert!(validate_password("password", "Secret-pass-42").is_ok());
        for bad in ["short", "has a space 1", "tab\there-x", "caf\u{e9}-latte-x", &"x".repeat(MAX_PASSWORD_LEN + 1)] {
            assert!(validate_password("password", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_dns_friendly() {
        assert!(validate_name("name", "web-1").is_ok());
        assert!(validate_name("name", "").is_err());
        assert!(validate_name("name", "-web").is_err());
        assert!(validate_name("name", "a b").is_err());
        assert!(validate_name("name", &"a".repeat(255)).is_ok());
        assert!(validate_name("name", &"a".repeat(256)).is_err());
        assert!(validate_name_by(NameRule::AnyText, "name", "Mon serveur de prod").is_ok());
        assert!(validate_name_by(NameRule::AnyText, "name", &"é".repeat(255)).is_ok());
        assert!(validate_name_by(NameRule::AnyText, "name", &"é".repeat(256)).is_err());
        assert!(validate_name_by(NameRule::AnyText, "name", "").is_err());
        assert!(validate_name_by(NameRule::AnyText, "name", "a\0b").is_err());
        assert_eq!(hostname_from_name("Mon serveur de prod"), "mon-serveur-de-prod");
        assert!(validate_hostname("hostname", "web-1").is_ok());
        assert!(validate_hostname("hostname", "web_1").is_err());
        assert!(validate_hostname("hostname", &"a".repeat(64)).is_err());
        assert!(validate_hostname("hostname", "web-1.example.com").is_ok());
        assert!(validate_hostname("hostname", "web..com").is_err());
        assert_eq!(hostname_from_name("Web_1.prod"), "web-1.prod");
        assert_eq!(hostname_from_name(&"x".repeat(300)).len(), 63);
        assert_eq!(hostname_from_name("__"), "instance");
    }

    #[test]
    fn states_round_trip_their_names() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::parse(s.as_str()), Some(s));
        }
    }
}
