//! Hosts: the machines instances run on, each with a `nimbus agent` (or the server's embedded one), their
//! capacity, and the placement rule that picks one for an instance.
//!
//! Placement is a pure function of the candidate hosts and what they already carry: it is run again inside
//! the store transaction that records the choice (the store re-checks the chosen host's room under a lock),
//! so two servers placing at once cannot overfill a host or put two members of an anti-affinity group on one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{DomainError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Heartbeating and taking new instances.
    Ready,
    /// Missed its heartbeats: its instances show `unknown` until it is back.
    Unreachable,
    /// Takes no new instances (an operator's choice); what runs there keeps running.
    Disabled,
    /// Takes no new instances, and the operator is moving or deleting what runs there.
    Draining,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ready => "ready",
            HostState::Unreachable => "unreachable",
            HostState::Disabled => "disabled",
            HostState::Draining => "draining",
        }
    }
}

/// What a host offers to instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// GPUs by model codename.
    #[serde(default)]
    pub gpus: BTreeMap<String, u64>,
}

/// What a host's instances take of it (every instance placed there but a destroyed one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub instances: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    #[serde(default)]
    pub gpus: BTreeMap<String, u64>,
}

/// A host as registered by its agent and managed by operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub id: Uuid,
    /// Unique; what operators and host tokens name it by.
    pub name: String,
    pub zone: String,
    /// What the operator set (`ready`, `disabled`, `draining`); whether it is reachable is the store's
    /// heartbeat lease, shown by [`HostView`].
    pub admin_state: HostState,
    pub capacity: Capacity,
    /// `kvm`, `tcg`, or `none` (sim driver).
    pub accelerator: String,
    pub driver: String,
    /// The address other hosts reach it at for the instance overlay network (VXLAN), if it has one.
    #[serde(default)]
    pub underlay_address: Option<String>,
    /// Whether its driver can attach a virtual TPM.
    #[serde(default)]
    pub tpm: bool,
    pub agent_version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A host as operators see it: what it is, whether it answers, and what it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub host: Host,
    /// Whether its heartbeat lease is current.
    pub reachable: bool,
    pub allocation: Allocation,
}

impl HostView {
    /// `unreachable` when it stopped heartbeating, whatever the operator set; else what the operator set.
    pub fn state(&self) -> HostState {
        if !self.reachable {
            HostState::Unreachable
        } else {
            self.host.admin_state
        }
    }
}

/// What an instance needs of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// (model, count) when the instance has GPUs.
    pub gpus: Option<(String, u64)>,
}

/// How much a host may promise beyond what it has: vCPUs are time-shared and guests seldom touch all their
/// memory, so both may be promised more than once (OpenStack Nova's defaults: 16 and 1.5); disks are not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overcommit {
    pub cpu: f64,
    pub memory: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit { cpu: 16.0, memory: 1.5 }
    }
}

/// The most a host may carry: its capacity with the overcommit applied.
pub fn limits(capacity: &Capacity, overcommit: Overcommit) -> Capacity {
    Capacity {
        vcpus: (capacity.vcpus as f64 * overcommit.cpu).floor() as u64,
        memory_mib: (capacity.memory_mib as f64 * overcommit.memory).floor() as u64,
        ..capacity.clone()
    }
}

/// Why a host cannot take an instance, in the words the refused user reads; `None` when it can.
pub fn refusal(limit: &Capacity, used: &Allocation, demand: &Demand) -> Option<String> {
    let checks = [
        ("vCPUs", used.vcpus + demand.vcpus, limit.vcpus),
        ("MiB of memory", used.memory_mib + demand.memory_mib, limit.memory_mib),
        ("GB of disk", used.disk_gb + demand.disk_gb, limit.disk_gb),
    ];
    if let Some((what, wanted, limit)) = checks.into_iter().find(|(_, wanted, limit)| wanted > limit) {
        return Some(format!("it would carry {wanted} {what}, its limit is {limit}"));
    }
    if let Some((model, count)) = &demand.gpus {
        let has = limit.gpus.get(model).copied().unwrap_or(0);
        let taken = used.gpus.get(model).copied().unwrap_or(0);
        if taken + count > has {
            return Some(format!("it has {} free {model} GPU(s), {count} needed", has.saturating_sub(taken)));
        }
    }
    None
}

/// A candidate for placement.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub view: &'a HostView,
    /// Whether a member of one of the instance's anti-affinity groups is on it already.
    pub holds_group_member: bool,
}

/// Picks the host for an instance among `candidates` (of its zone): a reachable, `ready` host with room,
/// never one holding a member of its anti-affinity groups (a hard rule), spreading instances by taking the
/// least loaded (by the largest share of its vCPU, memory or disk limit in use). A refusal says why no host
/// qualifies, naming the group when anti-affinity is what excluded the last ones.
pub fn place(
    candidates: &[Candidate<'_>],
    demand: &Demand,
    overcommit: Overcommit,
    groups: &[String],
) -> Result<String> {
    let mut best: Option<(f64, &str)> = None;
    let mut excluded_by_group = 0;
    let mut full = Vec::new();
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.view.state() == HostState::Ready).collect();
    for c in &ready {
        let limit = limits(&c.view.host.capacity, overcommit);
        if let Some(why) = refusal(&limit, &c.view.allocation, demand) {
            full.push(format!("{}: {why}", c.view.host.name));
            continue;
        }
        if c.holds_group_member {
            excluded_by_group += 1;
            continue;
        }
        let share = |used: u64, limit: u64| if limit == 0 { 1.0 } else { used as f64 / limit as f64 };
        let load = share(c.view.allocation.vcpus, limit.vcpus)
            .max(share(c.view.allocation.memory_mib, limit.memory_mib))
            .max(share(c.view.allocation.disk_gb, limit.disk_gb));
        // Ties go to the name, so placement is deterministic.
        if best.is_none_or(|(l, n)| load < l || (load == l && c.view.host.name.as_str() < n)) {
            best = Some((load, c.view.host.name.as_str()));
        }
    }
    if let Some((_, name)) = best {
        return Ok(name.to_string());
    }
    if ready.is_empty() {
        return Err(DomainError::NoCapacity("no host is ready to take instances in this zone".into()));
    }
    if excluded_by_group > 0 {
        return Err(DomainError::NoCapacity(format!(
            "no host qualifies: every host with room already runs a member of anti-affinity group {}",
            groups.join(", ")
        )));
    }
    Err(DomainError::NoCapacity(format!("no host has room for the instance ({})", full.join("; "))))
}

/// The credential a host's agent authenticates with: minted by an operator for one host name, revocable.
/// Only the secret's hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostToken {
    pub id: Uuid,
    pub host_name: String,
    pub secret_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, vcpus: u64, used_vcpus: u64) -> HostView {
        HostView {
            host: Host {
                id: Uuid::new_v4(),
                name: name.into(),
                zone: "z".into(),
                admin_state: HostState::Ready,
                capacity: Capacity { vcpus, memory_mib: 1 << 20, disk_gb: 1 << 20, gpus: BTreeMap::new() },
                accelerator: "none".into(),
                driver: "sim".into(),
                underlay_address: None,
                tpm: false,
                agent_version: "t".into(),
                registered_at: crate::now(),
                updated_at: crate::now(),
            },
            reachable: true,
            allocation: Allocation { vcpus: used_vcpus, ..Default::default() },
        }
    }

    fn demand(vcpus: u64) -> Demand {
        Demand { vcpus, memory_mib: 512, disk_gb: 10, gpus: None }
    }

    #[test]
    fn the_least_loaded_host_with_room_wins() {
        let (a, b) = (view("a", 8, 6), view("b", 8, 2));
        let c = [Candidate { view: &a, holds_group_member: false }, Candidate { view: &b, holds_group_member: false }];
        assert_eq!(place(&c, &demand(1), Overcommit { cpu: 1.0, memory: 1.0 }, &[]).unwrap(), "b");
    }

    #[test]
    fn overcommit_stretches_vcpus_only() {
        let a = view("a", 2, 7);
        let c = [Candidate { view: &a, holds_group_member: false }];
        let four = Overcommit { cpu: 4.0, memory: 1.0 };
        assert!(place(&c, &demand(1), four, &[]).is_ok());
        assert!(place(&c, &demand(2), four, &[]).is_err(), "9 vCPUs on a 2x4 host");
        assert!(place(&c, &demand(1), Overcommit { cpu: 1.0, memory: 1.0 }, &[]).is_err());
    }

    #[test]
    fn anti_affinity_is_a_hard_rule_that_names_the_group() {
        let (a, b) = (view("a", 8, 0), view("b", 8, 0));
        let c = [Candidate { view: &a, holds_group_member: true }, Candidate { view: &b, holds_group_member: true }];
        let err = place(&c, &demand(1), Overcommit::default(), &["web".into()]).unwrap_err().to_string();
        assert!(err.contains("anti-affinity group web"), "{err}");
    }

    #[test]
    fn unreachable_disabled_and_draining_hosts_take_nothing() {
        let mut a = view("a", 8, 0);
        a.reachable = false;
        let mut b = view("b", 8, 0);
        b.host.admin_state = HostState::Disabled;
        let mut d = view("d", 8, 0);
        d.host.admin_state = HostState::Draining;
        let c: Vec<Candidate> =
            [&a, &b, &d].into_iter().map(|v| Candidate { view: v, holds_group_member: false }).collect();
        assert!(place(&c, &demand(1), Overcommit::default(), &[]).is_err());
    }

    #[test]
    fn gpus_are_counted_by_model() {
        let mut a = view("a", 8, 0);
        a.host.capacity.gpus.insert("titanv".into(), 2);
        a.allocation.gpus.insert("titanv".into(), 1);
        let c = [Candidate { view: &a, holds_group_member: false }];
        let one = Demand { gpus: Some(("titanv".into(), 1)), ..demand(1) };
        let two = Demand { gpus: Some(("titanv".into(), 2)), ..demand(1) };
        let other = Demand { gpus: Some(("a100".into(), 1)), ..demand(1) };
        assert!(place(&c, &one, Overcommit::default(), &[]).is_ok());
        assert!(place(&c, &two, Overcommit::default(), &[]).is_err());
        assert!(place(&c, &other, Overcommit::default(), &[]).is_err());
    }
}
