//! Reserved addresses: addresses a project holds apart from its instances (Gcore's reserved fixed IPs), so
//! that it knows an instance's address before making it, and keeps it across the instances it makes with
//! it. Of the instance network, or of one of the project's private networks.
//!
//! The address is held in the store's allocator under the reservation's id, exactly as an instance holds
//! its own under its id: no other create is offered it, and an instance's delete (which gives back what the
//! instance holds) leaves it. A create given the reservation takes its address instead of a free one and
//! names itself in the reservation, by a compare-and-swap on the reservation's record in the create's own
//! transaction, so two creates racing for one reservation cannot both have it. A destroyed instance holds
//! it no more: nothing has to clear the name when the instance goes.
//!
//! On a private network the address is held in the network's record (`PrivateNetwork::held`), written
//! with the reservation's in one transaction; an instance attached with the reservation leases it
//! (`Engine::attach_reserved_address`), and holds it until it is detached or destroyed.

use std::net::Ipv4Addr;

use nimbus_core::instance::InstanceState;
use nimbus_core::networking::{PrivateNetwork, ReservedAddress};
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::{Record, StoreError, Write, WriteSet};
use uuid::Uuid;

use crate::instances::{backoff, CAS_RETRIES};
use crate::network::Network;
use crate::{store_err, Context, Engine, Result};

pub(crate) const RESERVED_ADDRESS: &str = "reserved_address";

/// A new reservation of `ip` and the write that records it.
fn new_reservation(
    ctx: &Context,
    id: Uuid,
    name: Option<&str>,
    ip: Ipv4Addr,
    network_id: Option<Uuid>,
    is_vip: bool,
    holder: Option<Uuid>,
) -> (ReservedAddress, Write) {
    let now = nimbus_core::now();
    let reserved = ReservedAddress {
        id,
        project_id: ctx.project.id,
        name: name.map_or_else(|| format!("reserved-{ip}"), str::to_string),
        ip,
        network_id,
        instance_id: holder,
        is_vip,
        connected: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    let insert =
        Write::InsertRecord(Record::new(RESERVED_ADDRESS, id, Some(ctx.project.id), &reserved.name, &reserved));
    (reserved, insert)
}

impl Engine {
    /// Reserves `ip` of the instance network, or (`None`) the next free one as a create would be offered;
    /// with `network`, of that private network's range instead; a VIP when `is_vip`.
    pub async fn create_reserved_address(
        &self,
        ctx: &Context,
        name: Option<String>,
        network: Option<Uuid>,
        ip: Option<Ipv4Addr>,
        is_vip: bool,
    ) -> Result<ReservedAddress> {
        ctx.require(Role::Member)?;
        if let Some(name) = &name {
            nimbus_core::instance::validate_name("name", name)?;
        }
        if let Some(network) = network {
            return self.reserve_private_address(ctx, name, network, ip, is_vip).await;
        }
        let net = Network::parse(&self.config.network_cidr)?;
        let asked = match ip {
            Some(ip) => Some(net.host_of(ip).ok_or_else(|| {
                DomainError::invalid(
                    "ip_address",
                    format!("{ip} is not an address instances get in {}", self.config.network_cidr),
                )
            })?),
            None => None,
        };
        let id = nimbus_core::new_id();
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let host = match asked {
                Some(host) => host,
                None => crate::sagas::create::address_candidate(self, attempt).await?,
            };
            let ip = net.address(host).parse().map_err(|_| DomainError::Internal("network address".into()))?;
            let (reserved, insert) = new_reservation(ctx, id, name.as_deref(), ip, None, is_vip, None);
            let mut set = WriteSet::new();
            set.push(Write::ClaimAddress { network: self.config.network_cidr.clone(), host, owner: id });
            set.push(insert);
            match self.store.apply(set).await {
                Ok(()) => return Ok(reserved),
                Err(StoreError::Conflict(_)) if asked.is_some() => {
                    return Err(DomainError::Conflict(format!("{ip} is already in use")));
                }
                // Another create or reservation took the address first: take another.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict("the instance network is busy; retry".into()))
    }

    /// Reserves the address instance `instance_id` has on the instance network (Gcore's reservation of an
    /// existing port), as reservation `id`: in one transaction the reservation takes the address over from
    /// the instance and names it, so that the address stays reserved when the instance goes, as if the
    /// instance had been created with it. `Conflict` when a reservation holds the address already (the
    /// instance was created with one, or its port was reserved before). An instance deleted meanwhile gave
    /// its address back: the reservation then holds it for nobody, or finds it taken and is refused.
    pub async fn reserve_instance_address(
        &self,
        ctx: &Context,
        id: Uuid,
        instance_id: Uuid,
    ) -> Result<ReservedAddress> {
        ctx.require(Role::Member)?;
        let net = Network::parse(&self.config.network_cidr)?;
        let instance = self.instance(ctx, instance_id).await?;
        let address = instance.ip_addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok());
        let Some((ip, host)) = address.and_then(|ip| Some((ip, net.host_of(ip)?))) else {
            return Err(DomainError::Conflict(format!(
                "instance {instance_id} has no address of the instance network"
            )));
        };
        let (reserved, insert) = new_reservation(ctx, id, None, ip, None, false, Some(instance_id));
        let mut set = WriteSet::new();
        // The instance holds only this address in the allocator (the others it has are its networks').
        set.push(Write::ReleaseAddresses { owner: instance_id });
        set.push(Write::ClaimAddress { network: self.config.network_cidr.clone(), host, owner: id });
        set.push(insert);
        match self.store.apply(set).await {
            Ok(()) => Ok(reserved),
            Err(StoreError::Conflict(_) | StoreError::AlreadyExists(_)) => {
                Err(DomainError::Conflict(format!("{ip} of instance {instance_id} is reserved already")))
            }
            Err(e) => Err(store_err(e)),
        }
    }

    async fn reserve_private_address(
        &self,
        ctx: &Context,
        name: Option<String>,
        network_id: Uuid,
        ip: Option<Ipv4Addr>,
        is_vip: bool,
    ) -> Result<ReservedAddress> {
        let id = nimbus_core::new_id();
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (mut network, network_record) = self.live_network_record(ctx, network_id).await?;
            let ip = network.hold(id, ip)?;
            let (reserved, insert) = new_reservation(ctx, id, name.as_deref(), ip, Some(network_id), is_vip, None);
            let mut set = WriteSet::new();
            set.push(Write::UpdateRecord {
                record: network_record.next(&network.name, &network),
                expected_generation: network_record.generation,
            });
            set.push(insert);
            match self.store.apply(set).await {
                Ok(()) => return Ok(reserved),
                // An attach or another reservation changed the network first: judge again.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("private network {network_id} is busy; retry")))
    }

    /// The project's reservations, each naming the instance that holds it, if one still does (and a VIP
    /// the instances still on its network).
    pub async fn list_reserved_addresses(&self, ctx: &Context) -> Result<Vec<ReservedAddress>> {
        let mut all: Vec<ReservedAddress> = self.records(RESERVED_ADDRESS, ctx).await?;
        for r in &mut all {
            r.instance_id = self.live_holder(ctx, r).await?;
            r.connected = self.live_connected(ctx, r).await?;
        }
        all.sort_by_key(|r| (r.created_at, r.id));
        Ok(all)
    }

    pub async fn reserved_address(&self, ctx: &Context, id: Uuid) -> Result<ReservedAddress> {
        let mut r: ReservedAddress = self.record(RESERVED_ADDRESS, ctx, id).await?;
        r.instance_id = self.live_holder(ctx, &r).await?;
        r.connected = self.live_connected(ctx, &r).await?;
        Ok(r)
    }

    /// Makes the reservation a VIP (shared by the instances connected to it) or an address for one
    /// instance again: an address an instance holds cannot become a VIP, nor a VIP with instances connected
    /// stop being one.
    pub async fn set_reserved_address_vip(&self, ctx: &Context, id: Uuid, is_vip: bool) -> Result<ReservedAddress> {
        self.change_reserved_address(ctx, id, |r| {
            if r.is_vip == is_vip {
                return Ok(());
            }
            if let Some(i) = r.instance_id {
                return Err(DomainError::Conflict(format!(
                    "reserved address {} is held by instance {i}: a VIP is held by none",
                    r.ip
                )));
            }
            if !r.connected.is_empty() {
                return Err(DomainError::Conflict(format!(
                    "VIP {} is shared by {} instance(s): disconnect them first",
                    r.ip,
                    r.connected.len()
                )));
            }
            r.is_vip = is_vip;
            Ok(())
        })
        .await
    }

    /// Connects instances to a VIP (`replace`: these and no others), each of them on the VIP's network.
    pub async fn connect_vip(
        &self,
        ctx: &Context,
        id: Uuid,
        instances: Vec<Uuid>,
        replace: bool,
    ) -> Result<ReservedAddress> {
        // Its network never changes: the instances are judged once, before the compare-and-swap.
        let read: ReservedAddress = self.record(RESERVED_ADDRESS, ctx, id).await?;
        for i in &instances {
            if !self.on_network_of(ctx, &read, *i).await? {
                return Err(DomainError::invalid(
                    "port_ids",
                    format!("instance {i} has no port on the network of VIP {}", read.ip),
                ));
            }
        }
        self.change_reserved_address(ctx, id, |r| {
            if !r.is_vip {
                return Err(DomainError::invalid("port_ids", format!("reserved address {} is not a VIP", r.ip)));
            }
            if replace {
                r.connected.clear();
            }
            for i in &instances {
                if !r.connected.contains(i) {
                    r.connected.push(*i);
                }
            }
            Ok(())
        })
        .await
    }

    /// Reads the reservation (as its readers see it), lets `change` change it, and writes it back by
    /// compare-and-swap, again on a race.
    async fn change_reserved_address(
        &self,
        ctx: &Context,
        id: Uuid,
        change: impl Fn(&mut ReservedAddress) -> Result<()>,
    ) -> Result<ReservedAddress> {
        ctx.require(Role::Member)?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (mut r, record) = self.owned_record::<ReservedAddress>(RESERVED_ADDRESS, ctx, id).await?;
            r.instance_id = self.live_holder(ctx, &r).await?;
            r.connected = self.live_connected(ctx, &r).await?;
            change(&mut r)?;
            r.updated_at = nimbus_core::now();
            let mut set = WriteSet::new();
            set.push(Write::UpdateRecord { record: record.next(&r.name, &r), expected_generation: record.generation });
            match self.store.apply(set).await {
                Ok(()) => return Ok(r),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("reserved address {id} is being changed by many writers at once; retry")))
    }

    /// Whether instance `i` (of the caller's project, not destroyed) has a port on the network of `r`.
    async fn on_network_of(&self, ctx: &Context, r: &ReservedAddress, i: Uuid) -> Result<bool> {
        let instance = match self.instance(ctx, i).await {
            Ok(instance) if instance.state != InstanceState::Destroyed => instance,
            Ok(_) | Err(DomainError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(r.network_id.is_none_or(|n| instance.private_networks.contains(&n)))
    }

    /// A VIP's connected instances that are still on its network.
    async fn live_connected(&self, ctx: &Context, r: &ReservedAddress) -> Result<Vec<Uuid>> {
        let mut live = Vec::new();
        for i in &r.connected {
            if self.on_network_of(ctx, r, *i).await? {
                live.push(*i);
            }
        }
        Ok(live)
    }

    /// Gives the address back to the network; refused while an instance holds it.
    pub async fn delete_reserved_address(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            // The version read is the one deleted: a create or attach naming an instance in it meanwhile
            // makes the delete lose, and the next round judges that instance.
            let (r, record) = self.owned_record::<ReservedAddress>(RESERVED_ADDRESS, ctx, id).await?;
            if let Some(i) = self.live_holder(ctx, &r).await? {
                return Err(DomainError::Conflict(format!(
                    "reserved address {} is held by instance {i}: {} first",
                    r.ip,
                    if r.network_id.is_some() { "detach it" } else { "delete the instance" }
                )));
            }
            let mut set = WriteSet::new();
            set.push(Write::DeleteRecord {
                kind: RESERVED_ADDRESS.into(),
                id,
                expected_generation: Some(record.generation),
            });
            match r.network_id {
                None => {
                    set.push(Write::ReleaseAddresses { owner: id });
                }
                Some(network_id) => {
                    let (mut network, network_record) = self.live_network_record(ctx, network_id).await?;
                    network.held.retain(|h| h.reservation_id != id);
                    set.push(Write::UpdateRecord {
                        record: network_record.next(&network.name, &network),
                        expected_generation: network_record.generation,
                    });
                }
            }
            match self.store.apply(set).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("reserved address {id} is being changed by many writers at once; retry")))
    }

    /// The writes that delete reservations `ids` with the instance holding them (an instance delete naming
    /// them): their records, and their addresses given back to their networks (the instance network's
    /// allocator, or the private network's record by compare-and-swap on the version read here).
    pub(crate) async fn reservations_going(&self, ids: &[Uuid]) -> Result<Vec<Write>> {
        let mut writes = Vec::new();
        let mut networks: std::collections::BTreeMap<Uuid, Vec<Uuid>> = Default::default();
        for id in ids {
            writes.push(Write::DeleteRecord { kind: RESERVED_ADDRESS.into(), id: *id, expected_generation: None });
            match self.record_of::<ReservedAddress>(RESERVED_ADDRESS, *id).await?.and_then(|(r, _)| r.network_id) {
                Some(network) => networks.entry(network).or_default().push(*id),
                None => writes.push(Write::ReleaseAddresses { owner: *id }),
            }
        }
        for (network, going) in networks {
            let found = self.record_of::<PrivateNetwork>(crate::networking::PRIVATE_NETWORK, network).await?;
            if let Some((mut n, record)) = found {
                n.held.retain(|h| !going.contains(&h.reservation_id));
                writes.push(Write::UpdateRecord {
                    record: record.next(&n.name, &n),
                    expected_generation: record.generation,
                });
            }
        }
        Ok(writes)
    }

    /// For a create: the reservation, free, and its record, which the create's transaction rewrites naming
    /// the new instance (a compare-and-swap on this version).
    pub(crate) async fn take_reserved_address(&self, ctx: &Context, id: Uuid) -> Result<(ReservedAddress, Record)> {
        let (r, record) = self
            .record_of::<ReservedAddress>(RESERVED_ADDRESS, id)
            .await?
            .filter(|(_, rec)| rec.project_id == Some(ctx.project.id))
            .ok_or_else(|| DomainError::invalid("reserved_address", format!("no reserved address {id}")))?;
        if let Some(i) = self.live_holder(ctx, &r).await? {
            return Err(DomainError::Conflict(format!("reserved address {} is held by instance {i}", r.ip)));
        }
        if r.is_vip {
            return Err(DomainError::Conflict(format!(
                "reserved address {} is a VIP, held by no instance: connect instances to it instead",
                r.ip
            )));
        }
        Ok((r, record))
    }

    /// The instance named in the reservation, while it is not destroyed (and, on a private network, still
    /// leases the reservation's address there).
    async fn live_holder(&self, ctx: &Context, r: &ReservedAddress) -> Result<Option<Uuid>> {
        let Some(i) = r.instance_id else { return Ok(None) };
        if let Some(network) = r.network_id {
            let leased = self.private_network(ctx, network).await?.lease_of(i).and_then(|l| l.ip);
            return Ok((leased == Some(r.ip)).then_some(i));
        }
        match self.instance(ctx, i).await {
            Ok(instance) if instance.state != InstanceState::Destroyed => Ok(Some(i)),
            Ok(_) | Err(DomainError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
