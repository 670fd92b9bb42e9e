//! The instance network's address plan: `.1` is the gateway on the driver's bridge, instances get the rest.

use std::net::Ipv4Addr;

use nimbus_core::DomainError;

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub base: u32,
    pub prefix: u8,
}

impl Network {
    pub fn parse(cidr: &str) -> Result<Network> {
        let bad = || DomainError::invalid("network_cidr", format!("{cidr:?} is not an IPv4 CIDR like 10.213.0.0/24"));
        let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Network { base: u32::from(addr) & mask, prefix })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    pub fn gateway(&self) -> String {
        Ipv4Addr::from(self.base + 1).to_string()
    }

    /// Host numbers handed to instances: after the gateway, before broadcast.
    pub fn first_host(&self) -> u32 {
        2
    }

    pub fn last_host(&self) -> u32 {
        self.size() - 2
    }

    pub fn address(&self, host: u32) -> String {
        Ipv4Addr::from(self.base + host).to_string()
    }

    /// The host number of `ip` if it is one instances get (not the network, gateway or broadcast address).
    pub fn host_of(&self, ip: Ipv4Addr) -> Option<u32> {
        let host = u32::from(ip).checked_sub(self.base)?;
        (self.first_host()..=self.last_host()).contains(&host).then_some(host)
    }

    fn last(&self) -> u32 {
        self.base + (self.size() - 1)
    }

    pub fn overlaps(&self, other: &Network) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

/// The elastic IP pool is a network of its own: an address in it must never be one an instance gets.
pub fn check_elastic_ip_pool(instance_cidr: &str, pool_cidr: &str) -> Result<()> {
    let pool = Network::parse(pool_cidr)
        .map_err(|_| DomainError::invalid("elastic_ip_cidr", format!("{pool_cidr:?} is not an IPv4 CIDR")))?;
    if Network::parse(instance_cidr)?.overlaps(&pool) {
        return Err(DomainError::invalid(
            "elastic_ip_cidr",
            format!("{pool_cidr} overlaps the instance network {instance_cidr}"),
        ));
    }
    Ok(())
}

/// An IPv6 prefix of at most 64 bits (`2001:db8::/64`), from which instances take addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Prefix {
    network: std::net::Ipv6Addr,
}

impl Ipv6Prefix {
    pub fn parse(cidr: &str) -> Result<Ipv6Prefix> {
        let invalid =
            || DomainError::invalid("ipv6_prefix", format!("{cidr:?} is not an IPv6 prefix of /64 or shorter"));
        let (addr, len) = cidr.split_once('/').ok_or_else(invalid)?;
        let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| invalid())?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 64).ok_or_else(invalid)?;
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
        Ok(Ipv6Prefix { network: (u128::from(addr) & mask).into() })
    }

    /// The address of an instance: the prefix, and the last 64 bits of its id (random in a UUIDv7) as the
    /// interface id. Derived, not allocated: the same instance always gets the same address, and two
    /// instances meet on one with a chance of one in 2^64 per pair at worst.
    pub fn address_of(&self, instance: uuid::Uuid) -> std::net::Ipv6Addr {
        let interface = instance.as_u128() & u128::from(u64::MAX);
        (u128::from(self.network) | interface).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_takes_the_prefix_and_its_ids_last_64_bits() {
        let prefix = Ipv6Prefix::parse("2001:db8:1:2:ffff::/64").unwrap();
        let id = uuid::Uuid::parse_str("01930000-0000-7000-8123-456789abcdef").unwrap();
        assert_eq!(prefix.address_of(id).to_string(), "2001:db8:1:2:8123:4567:89ab:cdef");
        assert!(Ipv6Prefix::parse("2001:db8::/80").is_err());
        assert!(Ipv6Prefix::parse("198.51.100.0/24").is_err());
        assert!(Ipv6Prefix::parse("2001:db8::").is_err());
    }

    #[test]
    fn a_slash_24_gives_253_instance_addresses_after_the_gateway() {
        let n = Network::parse("10.213.0.0/24").unwrap();
        assert_eq!(n.gateway(), "10.213.0.1");
        assert_eq!(n.address(n.first_host()), "10.213.0.2");
        assert_eq!(n.address(n.last_host()), "10.213.0.254");
        assert!(Network::parse("10.213.0.0").is_err());
        assert!(Network::parse("nope/24").is_err());
    }

    #[test]
    fn the_elastic_ip_pool_never_overlaps_the_instance_network() {
        assert!(check_elastic_ip_pool("10.213.0.0/24", "198.51.100.0/24").is_ok());
        assert!(check_elastic_ip_pool("10.213.0.0/24", "10.213.0.128/25").is_err());
        assert!(check_elastic_ip_pool("10.213.0.0/24", "10.0.0.0/8").is_err());
        assert!(check_elastic_ip_pool("10.213.0.0/24", "10.213.1.0/24").is_ok());
    }
}
