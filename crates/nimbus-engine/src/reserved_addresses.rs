//! Reserved addresses: addresses of the instance network a project holds apart from its instances (Gcore's
//! reserved fixed IPs), so that it knows an instance's address before making it, and keeps it across the
//! instances it makes with it.
//!
//! The address is held in the store's allocator under the reservation's id, exactly as an instance holds
//! its own under its id: no other create is offered it, and an instance's delete (which gives back what the
//! instance holds) leaves it. A create given the reservation takes its address instead of a free one and
//! names itself in the reservation, by a compare-and-swap on the reservation's record in the create's own
//! transaction, so two creates racing for one reservation cannot both have it. A destroyed instance holds
//! it no more: nothing has to clear the name when the instance goes.

use std::net::Ipv4Addr;

use nimbus_core::instance::InstanceState;
use nimbus_core::networking::ReservedAddress;
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::{Record, StoreError, Write, WriteSet};
use uuid::Uuid;

use crate::instances::{backoff, CAS_RETRIES};
use crate::network::Network;
use crate::{store_err, Context, Engine, Result};

pub(crate) const RESERVED_ADDRESS: &str = "reserved_address";

impl Engine {
    /// Reserves `ip` of the instance network, or (`None`) the next free one as a create would be offered.
    pub async fn create_reserved_address(
        &self,
        ctx: &Context,
        name: Option<String>,
        ip: Option<Ipv4Addr>,
    ) -> Result<ReservedAddress> {
        ctx.require(Role::Member)?;
        if let Some(name) = &name {
            nimbus_core::instance::validate_name("name", name)?;
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
            let now = nimbus_core::now();
            let reserved = ReservedAddress {
                id,
                project_id: ctx.project.id,
                name: name.clone().unwrap_or_else(|| format!("reserved-{ip}")),
                ip,
                instance_id: None,
                created_at: now,
                updated_at: now,
            };
            let mut set = WriteSet::new();
            set.push(Write::ClaimAddress { network: self.config.network_cidr.clone(), host, owner: id });
            set.push(Write::InsertRecord(Record::new(
                RESERVED_ADDRESS,
                id,
                Some(ctx.project.id),
                &reserved.name,
                &reserved,
            )));
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

    /// The project's reservations, each naming the instance that holds it, if one still does.
    pub async fn list_reserved_addresses(&self, ctx: &Context) -> Result<Vec<ReservedAddress>> {
        let mut all: Vec<ReservedAddress> = self.records(RESERVED_ADDRESS, ctx).await?;
        for r in &mut all {
            r.instance_id = self.live_holder(ctx, r).await?;
        }
        all.sort_by_key(|r| (r.created_at, r.id));
        Ok(all)
    }

    pub async fn reserved_address(&self, ctx: &Context, id: Uuid) -> Result<ReservedAddress> {
        let mut r: ReservedAddress = self.record(RESERVED_ADDRESS, ctx, id).await?;
        r.instance_id = self.live_holder(ctx, &r).await?;
        Ok(r)
    }

    /// Gives the address back to the network; refused while an instance holds it.
    pub async fn delete_reserved_address(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Member)?;
        let read: ReservedAddress = self.record(RESERVED_ADDRESS, ctx, id).await?;
        let holder = self.live_holder(ctx, &read).await?;
        self.delete_record_if::<ReservedAddress>(RESERVED_ADDRESS, ctx, id, |r| {
            // Whether its instance is alive was judged for the instance named when it was read: named another
            // since (a create took it meanwhile), it is judged again by the caller, not deleted under it.
            if r.instance_id != read.instance_id {
                return Err(DomainError::Conflict(format!("reserved address {} was just taken; retry", r.ip)));
            }
            if let Some(i) = holder {
                return Err(DomainError::Conflict(format!(
                    "reserved address {} is held by instance {i}: delete the instance first",
                    r.ip
                )));
            }
            Ok(vec![Write::ReleaseAddresses { owner: id }])
        })
        .await
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
        Ok((r, record))
    }

    async fn live_holder(&self, ctx: &Context, r: &ReservedAddress) -> Result<Option<Uuid>> {
        let Some(i) = r.instance_id else { return Ok(None) };
        match self.instance(ctx, i).await {
            Ok(instance) if instance.state != InstanceState::Destroyed => Ok(Some(i)),
            Ok(_) | Err(DomainError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
