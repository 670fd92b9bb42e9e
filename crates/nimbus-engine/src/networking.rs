//! Private networks and elastic IPs: project records that instances attach to.
//!
//! Attaching an instance to a private network writes the network's lease and the instance's
//! `private_networks` in one transaction (the instance by compare-and-swap). Elastic IP addresses come
//! from the operator's pool (`EngineConfig::elastic_ip_cidr`) through the store's address allocator, so two
//! projects never hold the same one.
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
use uuid::Uuid;

use crate::network::Network;
use crate::{store_err, Context, Engine, Result};

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
        let mut n: PrivateNetwork = self.record(PRIVATE_NETWORK, ctx, id).await?;
        let attached = self.attached_instances(ctx, id).await?;
        n.live_leases(|i| attached.contains(&i));
        Ok(n)
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
            created_at: nimbus_core::now(),
        };
        self.put(self.network_record(ctx, &n)).await?;
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
        let _serial = self.resource_writes.lock().await;
        let mut n = self.live_network(ctx, id).await?;
        if let Some(name) = spec.name {
            nimbus_core::instance::validate_name("name", &name)?;
            n.name = name;
        }
        if let Some(d) = spec.description {
            n.description = d;
        }
        if let Some(l) = spec.labels {
            n.labels = l;
        }
        if let Some(range) = spec.range {
            n.check_range(range)?;
            if range.is_none() && n.leases.iter().any(|l| l.ip.is_some()) {
                return Err(DomainError::invalid("start_ip", "instances hold addresses of the current range"));
            }
            n.range = range;
        }
        self.put(self.network_record(ctx, &n)).await?;
        Ok(n)
    }

    pub async fn delete_private_network(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        let _serial = self.resource_writes.lock().await;
        self.live_network(ctx, id).await?;
        self.refuse_if_referenced(
            ctx,
            |i| i.state != InstanceState::Destroyed && i.private_networks.contains(&id),
            "private network",
            id,
        )
        .await?;
        self.delete(PRIVATE_NETWORK, id).await
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
        ctx.require(Role::Member)?;
        let _serial = self.resource_writes.lock().await;
        let mut network = self.live_network(ctx, id).await?;
        let already = network.lease_of(instance_id).is_some();
        if move_only && !already {
            return Err(DomainError::invalid("instance", format!("instance {instance_id} is not attached")));
        }
        if !move_only && already {
            return Err(DomainError::Conflict(format!("instance {instance_id} is already attached")));
        }
        if move_only && ip.is_none() {
            return Err(DomainError::invalid("ip", "give the new address"));
        }
        let leased = network.choose_ip(instance_id, ip)?;
        network.leases.retain(|l| l.instance_id != instance_id);
        network.leases.push(Lease { instance_id, ip: leased, mac_address: Lease::mac_for(instance_id, id) });
        let record = self.network_record(ctx, &network);
        let instance = self
            .edit_instance_with(ctx, instance_id, None, |current| {
                refuse_destroying(current, "attach-private-network")?;
                let mut next = current.clone();
                if !next.private_networks.contains(&id) {
                    next.private_networks.push(id);
                }
                next.generation += 1;
                next.updated_at = nimbus_core::now();
                Ok((next, vec![Write::PutRecord(record.clone())]))
            })
            .await?;
        Ok((network, instance))
    }

    pub async fn detach_private_network(&self, ctx: &Context, id: Uuid, instance_id: Uuid) -> Result<Instance> {
        ctx.require(Role::Member)?;
        let _serial = self.resource_writes.lock().await;
        let mut network = self.live_network(ctx, id).await?;
        if network.lease_of(instance_id).is_none() {
            return Err(DomainError::invalid("instance", format!("instance {instance_id} is not attached")));
        }
        network.leases.retain(|l| l.instance_id != instance_id);
        let record = self.network_record(ctx, &network);
        self.edit_instance_with(ctx, instance_id, None, |current| {
            let mut next = current.clone();
            next.private_networks.retain(|n| *n != id);
            next.generation += 1;
            next.updated_at = nimbus_core::now();
            Ok((next, vec![Write::PutRecord(record.clone())]))
        })
        .await
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
        ctx.require(Role::Member)?;
        let pool = Network::parse(&self.config.elastic_ip_cidr)?;
        let id = nimbus_core::new_id();
        let host =
            self.store.allocate_address(ELASTIC_IP_POOL, pool.first_host(), pool.last_host(), id).await.map_err(
                |e| match e {
                    StoreError::QuotaExceeded(_) => DomainError::Conflict("the elastic IP pool is exhausted".into()),
                    other => store_err(other),
                },
            )?;
        let eip = ElasticIp {
            id,
            project_id: ctx.project.id,
            ip: pool.address(host).parse().map_err(|_| DomainError::Internal("pool address".into()))?,
            description: description.into(),
            labels,
            instances: Vec::new(),
            created_at: nimbus_core::now(),
        };
        if let Err(e) = self.put(self.elastic_ip_record(ctx, &eip)).await {
            // The allocator's row is keyed by the elastic IP's id: give the address back.
            let mut undo = WriteSet::new();
            undo.push(Write::ReleaseAddresses { instance_id: id });
            let _ = self.store.apply(undo).await;
            return Err(e);
        }
        Ok(eip)
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
        let _serial = self.resource_writes.lock().await;
        let mut eip = self.elastic_ip(ctx, id).await?;
        if let Some(d) = description {
            eip.description = d;
        }
        if let Some(l) = labels {
            eip.labels = l;
        }
        self.put(self.elastic_ip_record(ctx, &eip)).await?;
        Ok(eip)
    }

    /// Deletes an elastic IP no instance holds, and returns its address to the pool.
    pub async fn delete_elastic_ip(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        let _serial = self.resource_writes.lock().await;
        let eip = self.elastic_ip(ctx, id).await?;
        if let Some(i) = eip.instances.first() {
            return Err(DomainError::Conflict(format!("elastic IP {id} is attached to instance {i}")));
        }
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: ELASTIC_IP.into(), id });
        set.push(Write::ReleaseAddresses { instance_id: id });
        self.store.apply(set).await.map_err(store_err)
    }

    pub async fn attach_elastic_ip(&self, ctx: &Context, id: Uuid, instance_id: Uuid) -> Result<ElasticIp> {
        ctx.require(Role::Member)?;
        let _serial = self.resource_writes.lock().await;
        let mut eip = self.elastic_ip(ctx, id).await?;
        refuse_destroying(&self.instance(ctx, instance_id).await?, "attach-elastic-ip")?;
        if eip.instances.contains(&instance_id) {
            return Err(DomainError::Conflict(format!("elastic IP {} is already attached to {instance_id}", eip.ip)));
        }
        eip.instances.push(instance_id);
        self.put(self.elastic_ip_record(ctx, &eip)).await?;
        Ok(eip)
    }

    pub async fn detach_elastic_ip(&self, ctx: &Context, id: Uuid, instance_id: Uuid) -> Result<ElasticIp> {
        ctx.require(Role::Member)?;
        let _serial = self.resource_writes.lock().await;
        let mut eip = self.elastic_ip(ctx, id).await?;
        if !eip.instances.contains(&instance_id) {
            return Err(DomainError::invalid("instance", format!("elastic IP {} is not attached to it", eip.ip)));
        }
        eip.instances.retain(|i| *i != instance_id);
        self.put(self.elastic_ip_record(ctx, &eip)).await?;
        Ok(eip)
    }
}
