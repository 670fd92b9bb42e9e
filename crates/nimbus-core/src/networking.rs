//! Private networks and elastic IPs: project resources that instances attach to.
//!
//! A private network optionally manages an IPv4 range (`start..=end` inside one `netmask` subnet) from
//! which each attached instance leases one address, automatically or as a static choice. An elastic IP is
//! an address from a pool the operator owns, attached to any number of the project's instances.
//!
//! Invariants kept here: a range lies inside one subnet and excludes its network and broadcast addresses;
//! a lease's address is inside the range and no two leases of a network share one.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::labels::Labels;
use crate::{DomainError, Result};

/// The addresses a managed private network hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRange {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

impl AddressRange {
    pub fn new(start: Ipv4Addr, end: Ipv4Addr, netmask: Ipv4Addr) -> Result<AddressRange> {
        let mask = u32::from(netmask);
        if mask.leading_ones() + mask.trailing_zeros() != 32 || mask.leading_ones() < 8 || mask.leading_ones() > 30 {
            return Err(DomainError::invalid("netmask", format!("{netmask} is not a netmask from /8 to /30")));
        }
        let (s, e) = (u32::from(start), u32::from(end));
        if s > e {
            return Err(DomainError::invalid("end_ip", format!("{end} comes before the start address {start}")));
        }
        if s & mask != e & mask {
            return Err(DomainError::invalid("end_ip", format!("{start} and {end} are not in one {netmask} subnet")));
        }
        let network = s & mask;
        let broadcast = network | !mask;
        if s == network || e == broadcast {
            return Err(DomainError::invalid(
                "start_ip",
                "the range may not include the subnet's network or broadcast address",
            ));
        }
        Ok(AddressRange { start, end, netmask })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    /// The lowest address of the range that `used` does not hold.
    pub fn first_free(&self, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        (u32::from(self.start)..=u32::from(self.end)).map(Ipv4Addr::from).find(|ip| !used.contains(ip))
    }
}

/// One instance's attachment to a private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub instance_id: Uuid,
    /// `None` on a network that manages no range.
    pub ip: Option<Ipv4Addr>,
    pub mac_address: String,
}

impl Lease {
    /// The MAC of an instance's interface on a network: stable, and distinct from the instance's own
    /// (`52:54:00:…`) and from its interfaces on other networks.
    pub fn mac_for(instance_id: Uuid, network_id: Uuid) -> String {
        let (i, n) = (instance_id.as_bytes(), network_id.as_bytes());
        format!("52:54:01:{:02x}:{:02x}:{:02x}", i[13] ^ n[13], i[14] ^ n[14], i[15] ^ n[15])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivateNetwork {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub description: String,
    pub labels: Labels,
    /// `None`: an unmanaged network, whose instances configure their addresses themselves.
    pub range: Option<AddressRange>,
    /// The instances attached. The instance's `private_networks` lists the network in the same
    /// transaction; a lease whose instance is gone is stale and ignored (see [`PrivateNetwork::live_leases`]).
    pub leases: Vec<Lease>,
    /// Addresses of its range that reservations hold ([`ReservedAddress`] on this network): leased only to
    /// the instance made or attached with the reservation. Written with the reservation's record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldAddress>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An address of a private network's range that a reservation holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAddress {
    pub reservation_id: Uuid,
    pub ip: Ipv4Addr,
}

impl PrivateNetwork {
    /// Keeps only the leases of instances for which `attached` holds (they exist and list this network).
    pub fn live_leases(&mut self, attached: impl Fn(Uuid) -> bool) {
        self.leases.retain(|l| attached(l.instance_id));
    }

    pub fn lease_of(&self, instance_id: Uuid) -> Option<&Lease> {
        self.leases.iter().find(|l| l.instance_id == instance_id)
    }

    /// The address an instance gets: `wanted` if it is in the range and free (leases of `instance_id`
    /// itself excepted; addresses reservations hold are not free), else the lowest free one. A network
    /// without a range gives none and takes none.
    pub fn choose_ip(&self, instance_id: Uuid, wanted: Option<Ipv4Addr>) -> Result<Option<Ipv4Addr>> {
        let Some(range) = self.range else {
            return match wanted {
                Some(_) => Err(DomainError::invalid("ip", "this private network manages no addresses")),
                None => Ok(None),
            };
        };
        let used: Vec<Ipv4Addr> = self
            .leases
            .iter()
            .filter(|l| l.instance_id != instance_id)
            .filter_map(|l| l.ip)
            .chain(self.held.iter().map(|h| h.ip))
            .collect();
        match wanted {
            Some(ip) if !range.contains(ip) => Err(DomainError::invalid(
                "ip",
                format!("{ip} is outside the network's range {}-{}", range.start, range.end),
            )),
            Some(ip) if self.held.iter().any(|h| h.ip == ip) => {
                Err(DomainError::Conflict(format!("{ip} is held by a reservation of this network")))
            }
            Some(ip) if used.contains(&ip) => {
                Err(DomainError::Conflict(format!("{ip} is already leased to another instance of this network")))
            }
            Some(ip) => Ok(Some(ip)),
            None => range
                .first_free(&used)
                .map(Some)
                .ok_or_else(|| DomainError::Conflict("no free address left in the private network".into())),
        }
    }

    /// Holds `wanted` (or the lowest free address) for reservation `reservation_id`: free as
    /// [`PrivateNetwork::choose_ip`] judges it. A network that manages no range has nothing to reserve.
    pub fn hold(&mut self, reservation_id: Uuid, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        if self.range.is_none() {
            return Err(DomainError::invalid("network_id", "this private network manages no addresses to reserve"));
        }
        let ip = self.choose_ip(Uuid::nil(), wanted)?.expect("a network with a range gives an address");
        self.held.push(HeldAddress { reservation_id, ip });
        Ok(ip)
    }

    /// Leases reservation `reservation_id`'s address to `instance_id` (its lease, if any, replaced).
    pub fn lease_held(&mut self, reservation_id: Uuid, instance_id: Uuid) -> Result<Ipv4Addr> {
        let held = self.held.iter().find(|h| h.reservation_id == reservation_id).copied().ok_or_else(|| {
            DomainError::Internal(format!("reservation {reservation_id} holds no address of network {}", self.id))
        })?;
        if let Some(other) = self.leases.iter().find(|l| l.ip == Some(held.ip) && l.instance_id != instance_id) {
            return Err(DomainError::Conflict(format!("{} is leased to instance {}", held.ip, other.instance_id)));
        }
        self.leases.retain(|l| l.instance_id != instance_id);
        self.leases.push(Lease { instance_id, ip: Some(held.ip), mac_address: Lease::mac_for(instance_id, self.id) });
        Ok(held.ip)
    }

    /// Refuses a new range that would leave a current lease or a reserved address outside it.
    pub fn check_range(&self, range: Option<AddressRange>) -> Result<()> {
        for lease in &self.leases {
            if let (Some(ip), Some(r)) = (lease.ip, range) {
                if !r.contains(ip) {
                    return Err(DomainError::invalid(
                        "start_ip",
                        format!("instance {} holds {ip}, outside the new range", lease.instance_id),
                    ));
                }
            }
        }
        for held in &self.held {
            if !range.is_some_and(|r| r.contains(held.ip)) {
                return Err(DomainError::invalid(
                    "start_ip",
                    format!("reservation {} holds {}, outside the new range", held.reservation_id, held.ip),
                ));
            }
        }
        Ok(())
    }
}

/// An address of the operator's elastic IP pool held by a project. Nimbus records which instances it is
/// attached to; whether traffic to it reaches them is up to the network the operator builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElasticIp {
    pub id: Uuid,
    pub project_id: Uuid,
    pub ip: Ipv4Addr,
    pub description: String,
    pub labels: Labels,
    pub instances: Vec<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The PTR name of the address (Exoscale's reverse DNS of an elastic IP); bookkeeping, like the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_dns: Option<String>,
}

/// An address a project holds apart from any instance (Gcore's reserved fixed IP), of the instance network
/// or of one of its private networks' ranges: no create or attach is given it unless it asks for it, and
/// the instance made with it gives it back to the reservation, not to the network, when it is deleted (or,
/// on a private network, detached). One instance at a time holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservedAddress {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The private network whose address it is; `None`: the instance network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<Uuid>,
    /// The instance created with it, while that instance is not destroyed.
    pub instance_id: Option<Uuid>,
    /// A virtual IP (Gcore's VIP): held by no instance, shared by the instances of `connected` on its
    /// network (their ports allow the address, for keepalived and the like to move it between them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_vip: bool,
    /// A VIP's instances, as connected (those since gone or detached from its network are left out when
    /// it is read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connected: Vec<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn range(s: &str, e: &str, m: &str) -> Result<AddressRange> {
        AddressRange::new(ip(s), ip(e), ip(m))
    }

    /// A network managing `start`..=`end` of a /24, with no leases.
    fn network(start: &str, end: &str) -> PrivateNetwork {
        PrivateNetwork {
            id: Uuid::from_u128(9),
            project_id: Uuid::from_u128(8),
            name: "n".into(),
            description: String::new(),
            labels: Labels::new(),
            range: Some(range(start, end, "255.255.255.0").unwrap()),
            leases: Vec::new(),
            held: Vec::new(),
            created_at: crate::now(),
        }
    }

    #[test]
    fn a_range_lies_inside_one_subnet_without_its_network_and_broadcast() {
        assert!(range("10.0.0.10", "10.0.0.20", "255.255.255.0").is_ok());
        assert!(range("10.0.0.20", "10.0.0.10", "255.255.255.0").is_err(), "reversed");
        assert!(range("10.0.0.10", "10.0.1.20", "255.255.255.0").is_err(), "two subnets");
        assert!(range("10.0.0.0", "10.0.0.20", "255.255.255.0").is_err(), "network address");
        assert!(range("10.0.0.10", "10.0.0.255", "255.255.255.0").is_err(), "broadcast");
        assert!(range("10.0.0.10", "10.0.0.20", "255.0.255.0").is_err(), "not contiguous");
    }

    #[test]
    fn leases_are_unique_inside_the_range() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let mut n = network("10.0.0.10", "10.0.0.11");
        assert_eq!(n.choose_ip(a, None).unwrap(), Some(ip("10.0.0.10")));
        n.leases.push(Lease { instance_id: a, ip: Some(ip("10.0.0.10")), mac_address: Lease::mac_for(a, n.id) });
        assert!(matches!(n.choose_ip(b, Some(ip("10.0.0.10"))), Err(DomainError::Conflict(_))));
        assert!(matches!(n.choose_ip(b, Some(ip("10.0.0.12"))), Err(DomainError::Invalid { .. })));
        // An instance may keep (or move within) its own lease.
        assert_eq!(n.choose_ip(a, Some(ip("10.0.0.10"))).unwrap(), Some(ip("10.0.0.10")));
        assert_eq!(n.choose_ip(b, None).unwrap(), Some(ip("10.0.0.11")));
        n.leases.push(Lease { instance_id: b, ip: Some(ip("10.0.0.11")), mac_address: Lease::mac_for(b, n.id) });
        assert!(matches!(n.choose_ip(Uuid::from_u128(3), None), Err(DomainError::Conflict(_))));
        assert!(n.check_range(Some(range("10.0.0.11", "10.0.0.20", "255.255.255.0").unwrap())).is_err());
        n.live_leases(|i| i == b);
        assert_eq!(n.leases.len(), 1);
        assert_ne!(Lease::mac_for(a, n.id), Lease::mac_for(b, n.id));
        n.range = None;
        assert!(n.choose_ip(a, Some(ip("10.0.0.10"))).is_err());
    }

    #[test]
    fn a_held_address_is_leased_only_through_its_reservation() {
        let (a, b, r) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(7));
        let mut n = network("10.0.0.10", "10.0.0.12");
        assert_eq!(n.hold(r, None).unwrap(), ip("10.0.0.10"));
        assert!(matches!(n.hold(Uuid::from_u128(6), Some(ip("10.0.0.10"))), Err(DomainError::Conflict(_))));
        assert!(matches!(n.choose_ip(a, Some(ip("10.0.0.10"))), Err(DomainError::Conflict(_))), "not free");
        assert_eq!(n.choose_ip(a, None).unwrap(), Some(ip("10.0.0.11")), "skipped");
        assert_eq!(n.lease_held(r, b).unwrap(), ip("10.0.0.10"));
        assert_eq!(n.lease_of(b).and_then(|l| l.ip), Some(ip("10.0.0.10")));
        assert!(matches!(n.lease_held(r, a), Err(DomainError::Conflict(_))), "one instance at a time");
        assert!(n.check_range(Some(range("10.0.0.11", "10.0.0.12", "255.255.255.0").unwrap())).is_err());
        n.leases.clear();
        assert!(n.check_range(Some(range("10.0.0.11", "10.0.0.12", "255.255.255.0").unwrap())).is_err(), "held");
        assert!(n.check_range(None).is_err());
        n.range = None;
        assert!(n.hold(Uuid::from_u128(5), None).is_err(), "nothing to reserve without a range");
    }
}
