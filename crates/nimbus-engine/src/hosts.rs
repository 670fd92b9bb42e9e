//! Hosts: agents registering and heartbeating (remote ones through the API, the server's own embedded one
//! directly), what they report of their VMs, the calls they pull, host tokens, operators' management of
//! hosts, and what happens when a host stops answering.
//!
//! A host answers while its heartbeat lease (renewed by every heartbeat, judged by the database's clock)
//! is current. When it runs out, any server's reconciler shows the host's instances `unknown` with the
//! reason `host-unreachable`; nothing is recreated elsewhere unless an operator evacuates the host. When
//! the agent heartbeats again, its report of what really runs there re-aligns the records: running VMs are
//! adopted as they are, never rebooted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use nimbus_core::host::{Capacity, Host, HostState, HostToken, HostView};
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::Actor;
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
pub use nimbus_driver::call::{DriverCall, DriverReply};
use nimbus_driver::{ActualState, TemplateRegistration};
use nimbus_store::{InstanceQuery, Record, StoreError, Write, WriteSet};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::auth::{random_token, sha256_hex};
use crate::fleet::{ConsoleSession, HostCallRecord, CONSOLE_SESSION, HOST_CALL};
use crate::instances::{backoff, instance_event, CAS_RETRIES};
use crate::{store_err, Context, Engine, Result};

pub(crate) const HOST_TOKEN: &str = "host_token";
/// Alias kind that finds a host token by its secret's hash.
const HOST_TOKEN_HASH: &str = "host_token.sha256";
/// The zone's overlay segment is this plus the zone's number.
const OVERLAY_VNI_BASE: u32 = 10_000;

/// The reason an instance of a host that stopped answering shows.
pub const HOST_UNREACHABLE: &str = "host-unreachable";

/// What an agent says about its host when it registers (and again whenever it restarts).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRegistration {
    pub zone: String,
    pub capacity: Capacity,
    pub accelerator: String,
    pub driver: String,
    #[serde(default)]
    pub underlay_address: Option<String>,
    #[serde(default)]
    pub tpm: bool,
    pub agent_version: String,
    /// The templates its driver offers out of the box.
    #[serde(default)]
    pub templates: Vec<TemplateRegistration>,
}

/// What a host's agent sees on its host at a heartbeat: every VM it has something of, with its state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostReport {
    pub instances: Vec<(Uuid, ActualState)>,
    /// How long the agent took to look at its VMs: what it saw of a VM may be that old when it arrives.
    #[serde(default)]
    pub took_ms: u64,
}

/// How far the clocks of the servers that write records may be apart, at most, for the report's
/// staleness check (`apply_host_report`).
const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(1);

/// How many of a host's instances a report reads and judges at a time.
const REPORT_PAGE: u32 = 500;

/// A call waiting for an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingCall {
    pub id: Uuid,
    pub call: DriverCall,
}

/// A console an agent is asked to bring to a server: connect to `{server_url}/v1/agent/console/{id}` and
/// carry the instance's serial console over it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingConsole {
    pub id: Uuid,
    pub instance_id: Uuid,
    pub server_url: String,
}

/// What waits for a host's agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostWork {
    pub calls: Vec<PendingCall>,
    pub consoles: Vec<PendingConsole>,
}

/// What an evacuation does with an instance of the lost host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvacuationMode {
    /// Recreated on another host from its template; its disk's contents are lost.
    Recreate,
    /// Left where it is, shown stopped.
    Stop,
}

/// What an evacuation began, and what it left where it was (with why).
#[derive(Debug, Clone)]
pub struct Evacuation {
    pub operations: Vec<nimbus_core::operation::Operation>,
    pub left: Vec<(Uuid, String)>,
}

/// What an operator may set a host to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAdminState {
    Ready,
    Disabled,
    Draining,
}

impl Engine {
    // Host tokens.

    /// Mints a credential for the agent of host `host_name` (which need not be registered yet). The secret
    /// is returned this once; the store keeps its hash.
    pub async fn create_host_token(&self, ctx: &Context, host_name: &str) -> Result<(HostToken, String)> {
        ctx.require(Role::Operator)?;
        validate_host_name(host_name)?;
        let secret = format!("nht_{}", random_token(32));
        let token = HostToken {
            id: Uuid::new_v4(),
            host_name: host_name.to_string(),
            secret_sha256: sha256_hex(&secret),
            created_at: nimbus_core::now(),
        };
        let mut set = WriteSet::new();
        set.push(Write::InsertRecord(Record::new(HOST_TOKEN, token.id, None, host_name, &token)));
        set.push(Write::PutAlias { kind: HOST_TOKEN_HASH.into(), alias: token.secret_sha256.clone(), id: token.id });
        self.store.apply(set).await.map_err(store_err)?;
        Ok((token, secret))
    }

    pub async fn list_host_tokens(&self, ctx: &Context) -> Result<Vec<HostToken>> {
        ctx.require(Role::Operator)?;
        let records = self.store.list_records(HOST_TOKEN, None).await.map_err(store_err)?;
        records.iter().map(|r| r.decode().map_err(store_err)).collect()
    }

    /// Revokes a host token: its agent's next call is refused.
    pub async fn revoke_host_token(&self, ctx: &Context, id: Uuid) -> Result<()> {
        ctx.require(Role::Operator)?;
        let (token, _) = self
            .record_of::<HostToken>(HOST_TOKEN, id)
            .await?
            .ok_or_else(|| DomainError::not_found("host token", id))?;
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: HOST_TOKEN.into(), id, expected_generation: None });
        set.push(Write::DeleteAlias { kind: HOST_TOKEN_HASH.into(), alias: token.secret_sha256 });
        self.store.apply(set).await.map_err(store_err)
    }

    /// The host a token's secret acts for; an unknown or revoked token is refused.
    pub async fn authenticate_host(&self, secret: &str) -> Result<String> {
        let refused = || DomainError::Unauthenticated("invalid or revoked host token".into());
        let hash = sha256_hex(secret);
        let id = self.store.resolve_alias(HOST_TOKEN_HASH, &hash).await.map_err(store_err)?.ok_or_else(refused)?;
        let (token, _) = self.record_of::<HostToken>(HOST_TOKEN, id).await?.ok_or_else(refused)?;
        if !bool::from(token.secret_sha256.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(refused());
        }
        Ok(token.host_name)
    }

    // What agents do.

    /// Registers the host (or updates what its agent reports of it: capacity, accelerator, addresses),
    /// keeping what operators set (disabled, draining). Its templates join the catalog.
    pub async fn register_host(&self, name: &str, reg: AgentRegistration) -> Result<Host> {
        validate_host_name(name)?;
        if reg.zone != self.config.zone {
            return Err(DomainError::invalid(
                "zone",
                format!("this control plane serves zone {}, not {}", self.config.zone, reg.zone),
            ));
        }
        for t in &reg.templates {
            self.seed_template(t).await?;
        }
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let now = nimbus_core::now();
            let existing = self.store.get_host(name).await.map_err(store_err)?;
            // What the agent reports replaces what it reported before; what operators set stays.
            let reported = Host {
                id: existing.as_ref().map_or_else(Uuid::new_v4, |s| s.host.id),
                name: name.to_string(),
                zone: reg.zone.clone(),
                admin_state: existing.as_ref().map_or(HostState::Ready, |s| s.host.admin_state),
                capacity: reg.capacity.clone(),
                accelerator: reg.accelerator.clone(),
                driver: reg.driver.clone(),
                underlay_address: reg.underlay_address.clone(),
                tpm: reg.tpm,
                agent_version: reg.agent_version.clone(),
                registered_at: existing.as_ref().map_or(now, |s| s.host.registered_at),
                updated_at: now,
            };
            let (host, generation, expected) = match &existing {
                Some(stored) => (reported, stored.generation + 1, Some(stored.generation)),
                None => (reported, 1, None),
            };
            let mut set = WriteSet::new();
            set.push(Write::PutHost { host: host.clone(), generation, expected_generation: expected });
            match self.store.apply(set).await {
                Ok(()) => {
                    self.store.renew_host(name, self.config.host_lease).await.map_err(store_err)?;
                    tracing::info!(host = name, "host registered");
                    return Ok(host);
                }
                Err(StoreError::Conflict(_) | StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("host {name} is being registered by many agents at once")))
    }

    /// A heartbeat: renews the host's lease and, when it carries one, re-aligns the records of its instances
    /// with its report. Agents heartbeat often and report less often: a report of many VMs takes time to
    /// make and to apply, and must never hold up the renewal that keeps the host reachable.
    pub async fn host_heartbeat(&self, name: &str, report: Option<HostReport>) -> Result<()> {
        if !self.store.renew_host(name, self.config.host_lease).await.map_err(store_err)? {
            return Err(DomainError::not_found("host", format!("{name} (register it first)")));
        }
        match report {
            Some(report) => self.apply_host_report(name, report).await,
            None => Ok(()),
        }
    }

    /// The calls and consoles waiting for the host's agent, after waiting up to `wait` for one to come.
    pub async fn host_work(&self, name: &str, wait: Duration) -> Result<HostWork> {
        let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(60));
        let mut changes = self.changes();
        loop {
            let mut work = HostWork::default();
            for r in self.store.list_records_named(HOST_CALL, name).await.map_err(store_err)? {
                let call: HostCallRecord = r.decode().map_err(store_err)?;
                if call.reply.is_none() {
                    work.calls.push(PendingCall { id: r.id, call: call.call });
                }
            }
            for r in self.store.list_records_named(CONSOLE_SESSION, name).await.map_err(store_err)? {
                let s: ConsoleSession = r.decode().map_err(store_err)?;
                work.consoles.push(PendingConsole { id: r.id, instance_id: s.instance_id, server_url: s.server_url });
            }
            let now = tokio::time::Instant::now();
            if !work.calls.is_empty() || !work.consoles.is_empty() || now >= deadline {
                return Ok(work);
            }
            Engine::wait_for_change(&mut changes, deadline - now).await;
        }
    }

    /// An agent's reply to one of its host's calls. A call already answered, or given up by its caller, is
    /// left alone.
    pub async fn host_reply(&self, name: &str, id: Uuid, reply: DriverReply) -> Result<()> {
        let Some((mut call, record)) = self.record_of::<HostCallRecord>(HOST_CALL, id).await? else { return Ok(()) };
        if record.name != name {
            return Err(DomainError::Forbidden(format!("call {id} is not for host {name}")));
        }
        if call.reply.is_some() {
            return Ok(());
        }
        call.reply = Some(reply);
        let mut set = WriteSet::new();
        set.push(Write::UpdateRecord { record: record.next(name, &call), expected_generation: record.generation });
        match self.store.apply(set).await {
            Ok(()) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Aligns the records of the host's instances with what its agent reports: a VM that stopped or
    /// vanished behind Nimbus's back is shown as such, an `unknown` one gets its state back, and a VM that
    /// no instance placed on this host owns is removed when the store's history knows it (deleted or
    /// evacuated meanwhile) and reported otherwise (see `reconciler.rs`).
    pub(crate) async fn apply_host_report(&self, name: &str, report: HostReport) -> Result<()> {
        let actual: HashMap<Uuid, ActualState> = report.instances.iter().copied().collect();
        let now = nimbus_core::now();
        // What the agent saw of a VM is as old as its report: a record changed since (an operation that ended
        // while the report was under way) is newer than what the report says of it, and is left for the
        // next report to judge.
        let seen_since = now - std::time::Duration::from_millis(report.took_ms) - CLOCK_SKEW;
        // Read and judged a page at a time: a host of 100,000 instances is not one read decoded in one go,
        // which held a runtime thread for the better part of a second and every request queued behind it.
        let mut known = HashSet::new();
        let mut query = InstanceQuery { host: Some(name.to_string()), limit: REPORT_PAGE, ..Default::default() };
        loop {
            let page = self.store.list_instances(&query).await.map_err(store_err)?;
            for instance in &page {
                known.insert(instance.id);
                self.align_with_report(instance, &actual, seen_since, now).await;
            }
            match page.last() {
                Some(last) if page.len() == REPORT_PAGE as usize => query.after = Some(last.id),
                _ => break,
            }
        }
        if self.local.as_ref().is_some_and(|l| l.name == name) {
            // Instances from before hosts existed live on the server's own host.
            let unplaced = InstanceQuery { unplaced: true, ..Default::default() };
            for instance in self.store.list_instances(&unplaced).await.map_err(store_err)? {
                known.insert(instance.id);
                self.align_with_report(&instance, &actual, seen_since, now).await;
            }
        }
        for id in actual.keys().filter(|id| !known.contains(id)) {
            // A record may have just been written: only a VM that no record of this host owns is removed.
            let owner = self.store.get_instance(*id).await.map_err(store_err)?;
            if owner.as_ref().is_some_and(|i| i.host.as_deref().is_none_or(|h| h == name)) {
                continue;
            }
            self.host_instance_without_record(name, *id, actual[id]).await;
        }
        self.forget_unknown_host_instances(name, &actual.keys().copied().collect()).await
    }

    /// Shows `instance` as its host's report saw it, when that differs from its record and nothing changed
    /// the record since the report (`seen_since`) or is changing it (an operation holds it).
    async fn align_with_report(
        &self,
        instance: &Instance,
        actual: &HashMap<Uuid, ActualState>,
        seen_since: time::OffsetDateTime,
        now: time::OffsetDateTime,
    ) {
        if instance.lock_operation_id.is_some() || instance.updated_at > seen_since {
            return;
        }
        let seen = actual.get(&instance.id).copied().unwrap_or(ActualState::Missing);
        let Some(observed) = observed(instance.state, seen) else { return };
        tracing::info!(instance = %instance.id, recorded = %instance.state, observed = %observed, "instance changed outside Nimbus");
        let mut next = instance.clone();
        next.state = observed;
        next.state_reason = None;
        next.last_known_state = None;
        next.end_rescue_if_off();
        next.generation += 1;
        next.updated_at = now;
        let mut set = WriteSet::new();
        set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(instance.generation) });
        set.push(instance_event(&Actor::system(), "instance.updated", &next));
        // Losing to a concurrent writer is fine: the next report looks again.
        let _ = self.store.apply(set).await;
    }

    /// Shows the instances of every host that stopped answering as `unknown`, `host-unreachable` (an
    /// instance busy with an operation is left to that operation, whose driver calls now fail the same way).
    pub(crate) async fn sweep_unreachable_hosts(&self) -> Result<()> {
        for stored in self.store.list_hosts().await.map_err(store_err)? {
            if stored.reachable {
                continue;
            }
            let query = InstanceQuery { host: Some(stored.host.name.clone()), ..Default::default() };
            for instance in self.store.list_instances(&query).await.map_err(store_err)? {
                if instance.lock_operation_id.is_some()
                    || matches!(instance.state, InstanceState::Unknown | InstanceState::Destroyed)
                {
                    continue;
                }
                tracing::warn!(instance = %instance.id, host = %stored.host.name, "host unreachable: instance state unknown");
                let mut next = instance.clone();
                next.last_known_state = Some(instance.state);
                next.state = InstanceState::Unknown;
                next.state_reason = Some(HOST_UNREACHABLE.into());
                next.generation += 1;
                next.updated_at = nimbus_core::now();
                let mut set = WriteSet::new();
                set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(instance.generation) });
                set.push(instance_event(&Actor::system(), "instance.updated", &next));
                let _ = self.store.apply(set).await;
            }
        }
        Ok(())
    }

    // What operators do.

    /// Every host, with whether it answers and what it carries.
    pub async fn list_hosts(&self, ctx: &Context) -> Result<Vec<HostView>> {
        ctx.require(Role::Operator)?;
        self.host_views().await
    }

    pub(crate) async fn host_views(&self) -> Result<Vec<HostView>> {
        let allocations = self.store.host_allocations().await.map_err(store_err)?;
        let hosts = self.store.list_hosts().await.map_err(store_err)?;
        Ok(hosts
            .into_iter()
            .map(|h| {
                let allocation = allocations.get(&h.host.name).cloned().unwrap_or_default();
                HostView { host: h.host, reachable: h.reachable, allocation }
            })
            .collect())
    }

    pub async fn host(&self, ctx: &Context, name: &str) -> Result<HostView> {
        ctx.require(Role::Operator)?;
        self.host_views()
            .await?
            .into_iter()
            .find(|h| h.host.name == name)
            .ok_or_else(|| DomainError::not_found("host", name))
    }

    /// Enables, disables or drains a host. A disabled or draining host takes no new instances; a draining
    /// one shows how many it still carries, and is drained once the operator has moved or deleted them.
    pub async fn set_host_state(&self, ctx: &Context, name: &str, state: HostAdminState) -> Result<HostView> {
        ctx.require(Role::Operator)?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let stored = self
                .store
                .get_host(name)
                .await
                .map_err(store_err)?
                .ok_or_else(|| DomainError::not_found("host", name))?;
            let mut host = stored.host.clone();
            host.admin_state = match state {
                HostAdminState::Ready => HostState::Ready,
                HostAdminState::Disabled => HostState::Disabled,
                HostAdminState::Draining => HostState::Draining,
            };
            host.updated_at = nimbus_core::now();
            let mut set = WriteSet::new();
            set.push(Write::PutHost {
                host,
                generation: stored.generation + 1,
                expected_generation: Some(stored.generation),
            });
            match self.store.apply(set).await {
                Ok(()) => return self.host(ctx, name).await,
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("host {name} is being changed by many writers at once; retry")))
    }

    /// Moves the instances of a host that stopped answering, each as `choices` says (else `default`): one
    /// `evacuate` operation per instance, begun now. An instance no other host can take (full, or excluded
    /// by its anti-affinity group), or busy with an operation (which fails soon, its host not answering), is
    /// left where it is and listed with why; evacuate again once that changes.
    pub async fn evacuate_host(
        &self,
        ctx: &Context,
        name: &str,
        default: EvacuationMode,
        choices: &BTreeMap<Uuid, EvacuationMode>,
    ) -> Result<Evacuation> {
        use nimbus_core::state_machine::{transition, Action};
        ctx.require(Role::Operator)?;
        let stored =
            self.store.get_host(name).await.map_err(store_err)?.ok_or_else(|| DomainError::not_found("host", name))?;
        if stored.reachable {
            return Err(DomainError::Conflict(format!(
                "host {name} answers: drain it, and move or delete its instances instead of evacuating it"
            )));
        }
        // Its instances show `unknown` before anything is decided about them.
        self.sweep_unreachable_hosts().await?;
        let query = InstanceQuery { host: Some(name.to_string()), ..Default::default() };
        let mut ops = Vec::new();
        let mut left = Vec::new();
        for first in self.store.list_instances(&query).await.map_err(store_err)? {
            let mode = choices.get(&first.id).copied().unwrap_or(default);
            let mut begun = None;
            let mut why = "busy with another operation".to_string();
            for attempt in 0..CAS_RETRIES {
                if attempt > 0 {
                    backoff(attempt).await;
                }
                let Some(current) = self.store.get_instance(first.id).await.map_err(store_err)? else { break };
                if current.lock_operation_id.is_some() || current.host.as_deref() != Some(name) {
                    break;
                }
                let t = transition(Action::Evacuate, current.state)?;
                let mut next = current.clone();
                let was_running = current.last_known_state == Some(InstanceState::Running);
                let mut planned;
                let params = match mode {
                    EvacuationMode::Recreate => {
                        // A volume's disk is a file on the lost host: recreated elsewhere, the instance would
                        // boot without its root disk or find its volumes missing.
                        let kept = self.volumes_of_instance(&current).await?;
                        if let Some(v) = kept.iter().find(|v| v.host.as_deref() == Some(name)) {
                            let what = if v.boot { "boots from volume" } else { "has volume" };
                            why = format!(
                                "it {what} {}, whose disk is on host {name}: it cannot be recreated elsewhere \
                                 without it; evacuate it with stop, or wait for the host to come back",
                                v.id
                            );
                            break;
                        }
                        let placement = match self.place(&next).await {
                            Ok(p) => p,
                            Err(e) => {
                                why = e.to_string();
                                break;
                            }
                        };
                        next.host = Some(placement.host.clone());
                        let p = crate::sagas::evacuate::Params {
                            from_host: current.host.clone(),
                            to_host: Some(placement.host.clone()),
                            was_running,
                        };
                        planned = crate::sagas::Planned::of::<crate::sagas::evacuate::Evacuate>(&p);
                        planned.placement = Some(placement);
                        p
                    }
                    EvacuationMode::Stop => {
                        let p = crate::sagas::evacuate::Params {
                            from_host: current.host.clone(),
                            to_host: None,
                            was_running,
                        };
                        planned = crate::sagas::Planned::of::<crate::sagas::evacuate::Evacuate>(&p);
                        p
                    }
                };
                let (mut op, set) =
                    crate::instances::begin_operation(&current, next, t.during, Action::Evacuate, planned, &ctx.actor);
                if params.to_host.is_some() {
                    op.message =
                        Some("recreating from the template on another host: the disk's contents are lost".into());
                }
                let mut set = set;
                for w in &mut set.writes {
                    if let Write::InsertOperation(o) = w {
                        o.message = op.message.clone();
                    }
                }
                match self.store.apply(set).await {
                    Ok(()) => {
                        begun = Some(op);
                        break;
                    }
                    Err(StoreError::Conflict(_) | StoreError::NoRoom(_)) => continue,
                    Err(e) => return Err(store_err(e)),
                }
            }
            match begun {
                Some(op) => ops.push(op),
                None => {
                    tracing::warn!(instance = %first.id, host = name, reason = %why, "not evacuated");
                    left.push((first.id, why));
                }
            }
        }
        Ok(Evacuation { operations: ops, left })
    }

    /// What host `name`'s side of the zone's overlay network must be, when it has an underlay address:
    /// the zone's other hosts that have one, and every instance placed on them (its MAC, its host).
    pub async fn overlay_for(&self, name: &str) -> Result<Option<nimbus_driver::overlay::OverlaySpec>> {
        let hosts = self.store.list_hosts().await.map_err(store_err)?;
        let Some(local) = hosts.iter().find(|h| h.host.name == name).and_then(|h| h.host.underlay_address.clone())
        else {
            return Ok(None);
        };
        let peers: BTreeMap<String, String> = hosts
            .iter()
            .filter(|h| h.host.name != name && h.host.zone == self.config.zone)
            .filter_map(|h| Some((h.host.name.clone(), h.host.underlay_address.clone()?)))
            .collect();
        let mut neighbors = Vec::new();
        for (host, address) in &peers {
            let query = InstanceQuery { host: Some(host.clone()), ..Default::default() };
            for i in self.store.list_instances(&query).await.map_err(store_err)? {
                neighbors.push((i.mac_address.clone(), address.clone()));
            }
        }
        let zone = self.zone().await?;
        Ok(Some(nimbus_driver::overlay::OverlaySpec {
            vni: OVERLAY_VNI_BASE + zone.numeric_id as u32,
            port: 4789,
            local,
            peers: peers.into_values().collect(),
            neighbors,
        }))
    }

    /// The names of the hosts instances may be placed on, with their views, for placement: one read of the
    /// store on every create (their GPU allocations only `with_gpus`, for a demand that has some).
    pub(crate) async fn placement_candidates(&self, with_gpus: bool) -> Result<BTreeMap<String, HostView>> {
        Ok(self
            .store
            .hosts_with_allocations(with_gpus)
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|(h, _)| h.host.zone == self.config.zone)
            .map(|(h, allocation)| (h.host.name.clone(), HostView { host: h.host, reachable: h.reachable, allocation }))
            .collect())
    }
}

/// The state an unlocked instance should show given what its host reports, when it differs.
fn observed(recorded: InstanceState, actual: ActualState) -> Option<InstanceState> {
    use ActualState as A;
    use InstanceState as S;
    Some(match (recorded, actual) {
        (S::Running, A::Stopped) => S::Stopped,
        (S::Stopped, A::Running) => S::Running,
        (S::Running | S::Stopped, A::Missing) => S::Error,
        (S::Error, A::Running) => S::Running,
        (S::Error, A::Stopped) => S::Stopped,
        (S::Running | S::Error, A::Paused) => S::Suspended,
        (S::Suspended, A::Running) => S::Running,
        (S::Suspended, A::Stopped) => S::Stopped,
        (S::Suspended, A::Missing) => S::Error,
        (S::Unknown, A::Running) => S::Running,
        (S::Unknown, A::Stopped) => S::Stopped,
        (S::Unknown, A::Paused) => S::Suspended,
        (S::Unknown, A::Missing) => S::Error,
        _ => return None,
    })
}

/// Host names: what an operator types, and what a host token names.
fn validate_host_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !ok {
        return Err(DomainError::invalid("name", "a host name is 1 to 63 letters, digits, '-', '.' or '_'"));
    }
    Ok(())
}
