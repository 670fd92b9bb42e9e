//! Private networks and elastic IPs: project records that instances attach to.
//!
//! Attaching an instance to a private network writes the network's lease and the instance's
//! `private_networks` in one transaction, both by compare-and-swap, so two servers attaching at once can
//! neither lose a lease nor hand one address out twice. Elastic IP addresses come from the operator's pool
//! (`EngineConfig::elastic_ip_cidr`) through the store's address allocator, claimed in the transaction that
//! records the elastic IP, so two projects never hold the same one and a refused create holds none.
//!
//! Both are bookkeeping only for now: the driver gives instances no second NIC for a private network and
//! no NAT for an elastic IP. What an API shows is what was recorded, not what the host carries.

use std::net::Ipv4Addr;

use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::labels::Labels;
use nimbus_core::networking::{AddressRange, ElasticIp, Lease, PrivateNetwork};
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::{Record, StoreError, Write, WriteSet};

use crate::instances::{backoff, instance_event, merge_extensions, CAS_RETRIES};
use uuid::Uuid;

use crate::network::Network;
use crate::{store_err, Context, Engine, Result};

/// JSON merge patches of dialects' extension maps, by dialect.
pub type Extensions = std::collections::BTreeMap<String, serde_json::Value>;

pub(crate) const PRIVATE_NETWORK: &str = "private_network";
pub(crate) const ELASTIC_IP: &str = "elastic_ip";
/// The store's address-allocator network of the elastic IP pool.
const ELASTIC_IP_POOL: &str = "elastic-ip-pool";

/// What a private network is created with, or changed to (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct PrivateNetworkSpec {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<Labels>,
    /// `Some(None)`: no managed range.
    pub range: Option<Option<AddressRange>>,
}

/// Which address an attach leases.
#[derive(Debug, Clone, Copy)]
enum LeaseOf {
    /// This one, or (`None`) the lowest free one.
    Address(Option<Ipv4Addr>),
    /// The one this reservation holds.
    Reservation(Uuid),
}

fn refuse_destroying(i: &Instance, action: &str) -> Result<()> {
    if matches!(i.state, InstanceState::Destroying | InstanceState::Destroyed) {
        return Err(DomainError::InvalidState {
            action: action.into(),
            state: i.state,
            hint: "the instance is being destroyed".into(),
        });
    }
    Ok(())
}

impl Engine {
    fn network_record(&self, ctx: &Context, n: &PrivateNetwork) -> Record {
        Record::new(PRIVATE_NETWORK, n.id, Some(ctx.project.id), &n.name, n)
    }

    /// Whether an instance of the project still exists and lists `network_id`.
    async fn attached_instances(&self, ctx: &Context, network_id: Uuid) -> Result<Vec<Uuid>> {
        let query = nimbus_store::InstanceQuery { project_id: Some(ctx.project.id), ..Default::default() };
        let instances = self.store.list_instances(&query).await.map_err(store_err)?;
        Ok(instances
            .into_iter()
            .filter(|i| i.state != InstanceState::Destroyed && i.private_networks.contains(&network_id))
            .map(|i| i.id)
            .collect())
    }

    /// The network with its stale leases (of instances since destroyed) left out.
    async fn live_network(&self, ctx: &Context, id: Uuid) -> Result<PrivateNetwork> {
        Ok(self.live_network_record(ctx, id).await?.0)
    }

    /// [`Engine::live_network`] and the record it was read from (for a compare-and-swap).
    pub(crate) async fn live_network_record(&self, ctx: &Context, id: Uuid) -> Result<(PrivateNetwork, Record)> {
        let (mut n, record) = self
            .record_of::<PrivateNetwork>(PRIVATE_NETWORK, id)
            .await?
            .filter(|(_, r)| r.project_id == Some(ctx.project.id))
            .ok_or_else(|| DomainError::not_found("private network", id))?;
        let attached = self.attached_instances(ctx, id).await?;
        n.live_leases(|i| attached.contains(&i));
        Ok((n, record))
    }

    pub async fn create_private_network(&self, ctx: &Context, spec: PrivateNetworkSpec) -> Result<PrivateNetwork> {
        ctx.require(Role::Member)?;
        let name = spec.name.ok_or_else(|| DomainError::invalid("name", "a private network needs a name"))?;
        nimbus_core::instance::validate_name("name", &name)?;
        let n = PrivateNetwork {
            id: nimbus_core::new_id(),
            project_id: ctx.project.id,
            name,
            description: spec.description.unwrap_or_default(),
            labels: spec.labels.unwrap_or_default(),
            range: spec.range.flatten(),
            leases: Vec::new(),
            held: Vec::new(),
            created_at: nimbus_core::now(),
        };
        self.insert(self.network_record(ctx, &n), vec![]).await?;
        Ok(n)
    }

    pub async fn list_private_networks(&self, ctx: &Context) -> Result<Vec<PrivateNetwork>> {
        let mut all: Vec<PrivateNetwork> = self.records(PRIVATE_NETWORK, ctx).await?;
        let query = nimbus_store::InstanceQuery { project_id: Some(ctx.project.id), ..Default::default() };
        let instances = self.store.list_instances(&query).await.map_err(store_err)?;
        for n in &mut all {
            let id = n.id;
            n.live_leases(|i| {
                instances
                    .iter()
                    .any(|x| x.id == i && x.state != InstanceState::Destroyed && x.private_networks.contains(&id))
            });
        }
        Ok(all)
    }

    pub async fn private_network(&self, ctx: &Context, id: Uuid) -> Result<PrivateNetwork> {
        self.live_network(ctx, id).await
    }

    /// Changes name, description, labels or range; a new range must still hold every current lease.
    pub async fn update_private_network(
        &self,
        ctx: &Context,
        id: Uuid,
        spec: PrivateNetworkSpec,
    ) -> Result<PrivateNetwork> {
        ctx.require(Role::Member)?;
        if let Some(name) = &spec.name {
            nimbus_core::instance::validate_name("name", name)?;
        }
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (mut n, record) = self.live_network_record(ctx, id).await?;
            if let Some(name) = &spec.name {
                n.name = name.clone();
            }
            if let Some(d) = &spec.description {
                n.description = d.clone();
            }
            if let Some(l) = &spec.labels {
                n.labels = l.clone();
            }
            if let Some(range) = spec.range {
                n.check_range(range)?;
                if range.is_none() && n.leases.iter().any(|l| l.ip.is_some()) {
                    return Err(DomainError::invalid("start_ip", "instances hold addresses of the current range"));
                }
                n.range = range;
            }
            let mut set = WriteSet::new();
            set.push(Write::UpdateRecord { record: record.next(&n.name, &n), expected_generation: record.generation });
            match self.store.apply(set).await {
                Ok(()) => return Ok(n),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(busy("private network", id))
    }

    pub async fn delete_private_network(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            // The version read before the check: an attach that commits meanwhile changes it, and the
            // delete below then loses and checks again.
            let (network, record) = self.live_network_record(ctx, id).await?;
            if let Some(held) = network.held.first() {
                return Err(DomainError::Conflict(format!(
                    "reserved address {} ({}) holds an address of private network {id}: delete it first",
                    held.reservation_id, held.ip
                )));
            }
            self.refuse_if_referenced(
                ctx,
                |i| i.state != InstanceState::Destroyed && i.private_networks.contains(&id),
                "private network",
                id,
            )
            .await?;
            let mut set = WriteSet::new();
            set.push(Write::DeleteRecord {
                kind: PRIVATE_NETWORK.into(),
                id,
                expected_generation: Some(record.generation),
            });
            match self.store.apply(set).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(busy("private network", id))
    }

    /// Attaches an instance, leasing `ip` (it must be inside the network's range and free) or the lowest
    /// free address. With `move_only`, the instance must already be attached and only its address changes.
    pub async fn attach_private_network(
        &self,
        ctx: &Context,
        id: Uuid,
        instance_id: Uuid,
        ip: Option<Ipv4Addr>,
        move_only: bool,
    ) -> Result<(PrivateNetwork, Instance)> {
        self.attach_private_network_with(ctx, id, instance_id, ip, move_only, &Extensions::new()).await
    }

    /// [`Engine::attach_private_network`] that also merges `extensions` (JSON merge patches of dialects'
    /// extension maps: what a provider records about the attachment, such as its interface's name) into the
    /// instance, in the same write.
    pub async fn attach_private_network_with(
        &self,
        ctx: &Context,
        id: Uuid,
        instance_id: Uuid,
        ip: Option<Ipv4Addr>,
        move_only: bool,
        extensions: &Extensions,
    ) -> Result<(PrivateNetwork, Instance)> {
        if move_only && ip.is_none() {
            return Err(DomainError::invalid("ip", "give the new address"));
        }
        self.attach_to_network(ctx, id, instance_id, LeaseOf::Address(ip), move_only, extensions).await
    }

    /// Attaches an instance to the private network of reservation `reservation_id` with the reservation's
    /// address (Gcore's `reserved_fixed_ip` interface), naming the instance in the reservation in the same
    /// write: a compare-and-swap, so two instances racing for one reservation cannot both have it.
    pub async fn attach_reserved_address(
        &self,
        ctx: &Context,
        reservation_id: Uuid,
        instance_id: Uuid,
        extensions: &Extensions,
    ) -> Result<(PrivateNetwork, Instance)> {
        // Its network, which never changes; whether it is free is judged in the attach's compare-and-swap.
        let r: nimbus_core::networking::ReservedAddress =
            self.record(crate::reserved_addresses::RESERVED_ADDRESS, ctx, reservation_id).await?;
        let Some(network) = r.network_id else {
            return Err(DomainError::invalid(
                "port_id",
                format!("reserved address {} is of the instance network, which an instance gets at its create", r.ip),
            ));
        };
        self.attach_to_network(ctx, network, instance_id, LeaseOf::Reservation(reservation_id), false, extensions).await
    }

    async fn attach_to_network(
        &self,
        ctx: &Context,
        id: Uuid,
        instance_id: Uuid,
        lease_of: LeaseOf,
        move_only: bool,
        extensions: &Extensions,
    ) -> Result<(PrivateNetwork, Instance)> {
        ctx.require(Role::Member)?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (mut network, record) = self.live_network_record(ctx, id).await?;
            let already = network.lease_of(instance_id).is_some();
            if move_only && !already {
                return Err(DomainError::invalid("instance", format!("instance {instance_id} is not attached")));
            }
            if !move_only && already {
                return Err(DomainError::Conflict(format!("instance {instance_id} is already attached")));
            }
            let mut set = WriteSet::new();
            match lease_of {
                LeaseOf::Address(ip) => {
                    let leased = network.choose_ip(instance_id, ip)?;
                    network.leases.retain(|l| l.instance_id != instance_id);
                    network.leases.push(Lease {
                        instance_id,
                        ip: leased,
                        mac_address: Lease::mac_for(instance_id, id),
                    });
                }
                LeaseOf::Reservation(reservation_id) => {
                    let (mut r, r_record) = self.take_reserved_address(ctx, reservation_id).await?;
                    network.lease_held(reservation_id, instance_id)?;
                    r.instance_id = Some(instance_id);
                    r.updated_at = nimbus_core::now();
                    set.push(Write::UpdateRecord {
                        record: r_record.next(&r.name, &r),
                        expected_generation: r_record.generation,
                    });
                }
            }
            let current = self.instance(ctx, instance_id).await?;
            refuse_destroying(&current, "attach-private-network")?;
            let mut next = current.clone();
            if !next.private_networks.contains(&id) {
                next.private_networks.push(id);
            }
            merge_extensions(&mut next, extensions);
            next.generation += 1;
            next.updated_at = nimbus_core::now();
            set.push(Write::UpdateRecord {
                record: record.next(&network.name, &network),
                expected_generation: record.generation,
            });
            set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
            set.push(instance_event(&ctx.actor, "instance.updated", &next));
            match self.store.apply(set).await {
                Ok(()) => return Ok((network, next)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(busy("private network", id))
    }

    pub async fn detach_private_network(&self, ctx: &Context, id: Uuid, instance_id: Uuid) -> Result<Instance> {
        self.detach_private_network_with(ctx, id, instance_id, &Extensions::new()).await
    }

    /// [`Engine::detach_private_network`] that also merges `extensions` into the instance in the same write
    /// (forgetting what a provider recorded about the attachment).
    pub async fn detach_private_network_with(
        &self,
        ctx: &Context,
        id: Uuid,
        instance_id: Uuid,
        extensions: &Extensions,
    ) -> Result<Instance> {
        ctx.require(Role::Member)?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (mut network, record) = self.live_network_record(ctx, id).await?;
            if network.lease_of(instance_id).is_none() {
                return Err(DomainError::invalid("instance", format!("instance {instance_id} is not attached")));
            }
            network.leases.retain(|l| l.instance_id != instance_id);
            let current = self.instance(ctx, instance_id).await?;
            let mut next = current.clone();
            next.private_networks.retain(|n| *n != id);
            merge_extensions(&mut next, extensions);
            next.generation += 1;
            next.updated_at = nimbus_core::now();
            let mut set = WriteSet::new();
            set.push(Write::UpdateRecord {
                record: record.next(&network.name, &network),
                expected_generation: record.generation,
            });
            set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
            set.push(instance_event(&ctx.actor, "instance.updated", &next));
            match self.store.apply(set).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(busy("private network", id))
    }

    // Elastic IPs.

    fn elastic_ip_record(&self, ctx: &Context, e: &ElasticIp) -> Record {
        Record::new(ELASTIC_IP, e.id, Some(ctx.project.id), &e.ip.to_string(), e)
    }

    /// The prefix length of the pool, for an elastic IP's `cidr`.
    pub fn elastic_ip_prefix(&self) -> u8 {
        Network::parse(&self.config.elastic_ip_cidr).map(|n| n.prefix).unwrap_or(32)
    }

    /// Allocates the lowest free address of the pool to the project.
    pub async fn create_elastic_ip(&self, ctx: &Context, description: &str, labels: Labels) -> Result<ElasticIp> {
        self.create_elastic_ip_on(ctx, description, labels, None).await
    }

    /// Like [`Engine::create_elastic_ip`], attached to `instance` in the same write when one is given (the
    /// providers whose floating IPs are made on a port).
    pub async fn create_elastic_ip_on(
        &self,
        ctx: &Context,
        description: &str,
        labels: Labels,
        instance: Option<Uuid>,
    ) -> Result<ElasticIp> {
        ctx.require(Role::Member)?;
        if let Some(i) = instance {
            refuse_destroying(&self.instance(ctx, i).await?, "attach-elastic-ip")?;
        }
        let pool = Network::parse(&self.config.elastic_ip_cidr)?;
        let id = nimbus_core::new_id();
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let free = self
                .store
                .free_addresses(ELASTIC_IP_POOL, pool.first_host(), pool.last_host(), 16)
                .await
                .map_err(store_err)?;
            let Some(&host) = free.get(if attempt == 0 { 0 } else { attempt % free.len().max(1) }) else {
                return Err(DomainError::Conflict("the elastic IP pool is exhausted".into()));
            };
            let eip = ElasticIp {
                id,
                project_id: ctx.project.id,
                ip: pool.address(host).parse().map_err(|_| DomainError::Internal("pool address".into()))?,
                description: description.into(),
                labels: labels.clone(),
                instances: instance.into_iter().collect(),
                created_at: nimbus_core::now(),
                reverse_dns: None,
            };
            let mut set = WriteSet::new();
            set.push(Write::ClaimAddress { network: ELASTIC_IP_POOL.into(), host, owner: id });
            set.push(Write::InsertRecord(self.elastic_ip_record(ctx, &eip)));
            match self.store.apply(set).await {
                Ok(()) => return Ok(eip),
                // Another allocation took the address first: take another.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict("the elastic IP pool is busy; retry".into()))
    }

    pub async fn list_elastic_ips(&self, ctx: &Context) -> Result<Vec<ElasticIp>> {
        self.records(ELASTIC_IP, ctx).await
    }

    /// The elastic IP with attachments to instances since destroyed left out.
    pub async fn elastic_ip(&self, ctx: &Context, id: Uuid) -> Result<ElasticIp> {
        let mut eip: ElasticIp = self.record(ELASTIC_IP, ctx, id).await?;
        let mut live = Vec::new();
        for i in eip.instances {
            if self.instance(ctx, i).await.is_ok_and(|x| x.state != InstanceState::Destroyed) {
                live.push(i);
            }
        }
        eip.instances = live;
        Ok(eip)
    }

    pub async fn update_elastic_ip(
        &self,
        ctx: &Context,
        id: Uuid,
        description: Option<String>,
        labels: Option<Labels>,
    ) -> Result<ElasticIp> {
        ctx.require(Role::Member)?;
        self.edit_elastic_ip(ctx, id, |eip| {
            if let Some(d) = &description {
                eip.description = d.clone();
            }
            if let Some(l) = &labels {
                eip.labels = l.clone();
            }
            Ok(())
        })
        .await
    }

    /// Sets (or with `None` removes) the PTR name of an elastic IP; removing one it does not have is `NotFound`.
    pub async fn set_elastic_ip_reverse_dns(&self, ctx: &Context, id: Uuid, name: Option<String>) -> Result<ElasticIp> {
        ctx.require(Role::Member)?;
        self.edit_elastic_ip(ctx, id, |eip| {
            if name.is_none() && eip.reverse_dns.is_none() {
                return Err(DomainError::not_found("reverse DNS record", id));
            }
            eip.reverse_dns = name.clone();
            Ok(())
        })
        .await
    }

    /// Read-modify-write of an elastic IP, its attachments to instances since destroyed left out first.
    async fn edit_elastic_ip(
        &self,
        ctx: &Context,
        id: Uuid,
        change: impl Fn(&mut ElasticIp) -> Result<()>,
    ) -> Result<ElasticIp> {
        let live = self.live_instances(ctx).await?;
        let (eip, ()) = self
            .edit_record(ELASTIC_IP, ctx, id, |eip: &mut ElasticIp| {
                eip.instances.retain(|i| live.contains(i));
                change(eip)?;
                Ok((eip.ip.to_string(), vec![], ()))
            })
            .await?;
        Ok(eip)
    }

    /// Ids of the project's instances that are not destroyed.
    async fn live_instances(&self, ctx: &Context) -> Result<Vec<Uuid>> {
        let query = nimbus_store::InstanceQuery { project_id: Some(ctx.project.id), ..Default::default() };
        let instances = self.store.list_instances(&query).await.map_err(store_err)?;
        Ok(instances.into_iter().filter(|i| i.state != InstanceState::Destroyed).map(|i| i.id).collect())
    }

    /// Deletes an elastic IP no instance holds, and returns its address to the pool.
    pub async fn delete_elastic_ip(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        let live = self.live_instances(ctx).await?;
        self.delete_record_if::<ElasticIp>(ELASTIC_IP, ctx, id, |eip| {
            if let Some(i) = eip.instances.iter().find(|i| live.contains(i)) {
                return Err(DomainError::Conflict(format!("elastic IP {id} is attached to instance {i}")));
            }
            Ok(vec![Write::ReleaseAddresses { owner: id }])
        })
        .await
    }

    pub async fn attach_elastic_ip(&self, ctx: &Context, id: Uuid, instance_id: Uuid) -> Result<ElasticIp> {
        ctx.require(Role::Member)?;
        refuse_destroying(&self.instance(ctx, instance_id).await?, "attach-elastic-ip")?;
        self.edit_elastic_ip(ctx, id, |eip| {
            if eip.instances.contains(&instance_id) {
                return Err(DomainError::Conflict(format!(
                    "elastic IP {} is already attached to {instance_id}",
                    eip.ip
                )));
            }
            eip.instances.push(instance_id);
            Ok(())
        })
        .await
    }

    /// Puts the elastic IP on `to` alone, off whatever held it, or on nothing: for the providers whose
    /// floating IPs sit on one port at a time. Already so is no error.
    pub async fn move_elastic_ip(&self, ctx: &Context, id: Uuid, to: Option<Uuid>) -> Result<ElasticIp> {
        ctx.require(Role::Member)?;
        if let Some(i) = to {
            refuse_destroying(&self.instance(ctx, i).await?, "attach-elastic-ip")?;
        }
        self.edit_elastic_ip(ctx, id, |eip| {
            eip.instances = to.into_iter().collect();
            Ok(())
        })
        .await
    }

    pub async fn detach_elastic_ip(&self, ctx: &Context, id: Uuid, instance_id: Uuid) -> Result<ElasticIp> {
        ctx.require(Role::Member)?;
        self.edit_elastic_ip(ctx, id, |eip| {
            if !eip.instances.contains(&instance_id) {
                return Err(DomainError::invalid("instance", format!("elastic IP {} is not attached to it", eip.ip)));
            }
            eip.instances.retain(|i| *i != instance_id);
            Ok(())
        })
        .await
    }
}

fn busy(what: &str, id: Uuid) -> DomainError {
    DomainError::Conflict(format!("{what} {id} is being changed by many writers at once; retry"))
}
