//! The instance service: create, read, list, update, batch update, and every lifecycle action.
//!
//! A mutating call is planned against a fresh read of the instance and applied with compare-and-swap on its
//! generation; when another writer got there first the plan is made again on the new state, so concurrent
//! writers never lose an update and never slip past a rule.

use std::collections::BTreeMap;

use base64::Engine as _;
use nimbus_core::event::Event;
use nimbus_core::instance::{validate_name_by, Instance, InstanceState, NameRule, MAX_USER_DATA_BYTES};
use nimbus_core::labels::{self, Labels, Requirement, Selector};
use nimbus_core::operation::{Actor, Operation, Target};
use nimbus_core::resources::InstancePassword;
use nimbus_core::state_machine::{transition, Action};
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::{InstanceQuery, StoreError, Write, WriteSet};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::resources::PASSWORD;
use crate::sagas::{self, Planned};
use crate::{page_token, store_err, Context, Engine, Page, Result};

/// How often a plan is made again after losing a compare-and-swap before the caller sees a conflict.
pub(crate) const CAS_RETRIES: usize = 64;

/// A short random pause after a lost compare-and-swap, so that writers racing for one instance spread out
/// instead of colliding again in lockstep.
pub(crate) async fn backoff(attempt: usize) {
    use rand::Rng;
    let ceiling_ms = 1 + (attempt as u64).min(20);
    let pause = rand::thread_rng().gen_range(0..=ceiling_ms * 1000);
    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
}

#[derive(Debug, Clone, Default)]
pub struct CreateInstance {
    pub name: String,
    pub hostname: Option<String>,
    pub description: String,
    pub instance_type: String,
    /// Codename or id of the GPU model, for a type with GPUs (`None`: the catalog's default model).
    pub gpu_model: Option<String>,
    pub template: String,
    pub disk_size_gb: Option<u64>,
    pub labels: Labels,
    /// Base64-encoded, as every API carries it.
    pub user_data: Option<String>,
    /// Names or ids of the project's registered SSH keys.
    pub ssh_keys: Vec<String>,
    pub security_groups: Vec<Uuid>,
    pub anti_affinity_groups: Vec<Uuid>,
    pub auto_start: bool,
    pub tpm_enabled: bool,
    pub secure_boot: bool,
    pub protected: bool,
    pub expected_shutdown_at: Option<OffsetDateTime>,
    /// The hourly price the owner asks for the instance; `None`: its type's list price.
    pub price_hourly: Option<f64>,
    /// Dialect-specific fields, one map per dialect.
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// The initial password of a password-enabled template's default user, kept like reset-password's
    /// (revealable for a day) and delivered to the guest with its seed.
    pub password: Option<String>,
    /// Dialect ids to record beside the canonical one, as (kind, alias), in the same transaction.
    pub aliases: Vec<(String, String)>,
    /// Which names the API the request came through allows.
    pub name_rule: NameRule,
    /// Volumes given to the instance beside its disk, attached before its first boot (see
    /// `sagas::create`).
    pub volumes: Vec<InstanceVolume>,
    /// The volume it boots from instead of a disk of its own (see `sagas::create`).
    pub boot_volume: Option<BootVolumeRequest>,
    /// A reservation of the project whose address the instance gets instead of a free one (see
    /// `reserved_addresses`).
    pub reserved_address: Option<Uuid>,
}

/// The volume an instance is created to boot from: its root disk, which outlives it unless
/// `delete_on_termination`.
#[derive(Debug, Clone, PartialEq)]
pub struct BootVolumeRequest {
    /// An `available` volume of the project made from a template (by an earlier boot volume, or a clone
    /// of one's snapshot); the instance gets its template and size. `None`: a new volume made from the
    /// request's template, of the instance's disk size.
    pub existing: Option<Uuid>,
    /// The new volume's name (`None`: the instance's name and `-boot`).
    pub name: Option<String>,
    pub delete_on_termination: bool,
}

/// A volume an instance is created with.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceVolume {
    /// An `available` volume of the project, in the instance's zone (and on its host, where it has one).
    Existing(Uuid),
    /// A new, empty volume, made on the instance's host.
    New { name: String, size_gb: u64, labels: Labels },
}

/// A partial update. `labels` is a JSON merge patch (RFC 7386); `Some(Value::Null)` clears every label.
#[derive(Debug, Clone, Default)]
pub struct InstancePatch {
    pub name: Option<String>,
    /// Which names the API the request came through allows.
    pub name_rule: NameRule,
    pub description: Option<String>,
    /// The labels become exactly this map (before `labels` is merged, when both are given). The providers
    /// whose updates replace the map (Exoscale, SF Compute, ONET) say so, instead of turning the instance's
    /// labels as they read them into a merge patch that a concurrent write would make stale.
    pub replace_labels: Option<Labels>,
    pub labels: Option<serde_json::Value>,
    /// Takes effect in the guest at its next boot.
    pub hostname: Option<String>,
    /// `Some(None)` clears the scheduled shutdown.
    pub expected_shutdown_at: Option<Option<OffsetDateTime>>,
    /// `Some(None)` goes back to the instance type's list price.
    pub price_hourly: Option<Option<f64>>,
    /// JSON merge patches of the named dialects' extension maps (a `null` removes a key).
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// New user-data (base64); the guest reads it at its next boot.
    pub user_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ActionRequest {
    Start,
    /// A start into the host's rescue system instead of the instance's own (for this boot only).
    StartRescue,
    /// A graceful stop: the guest is asked to power off, and forced after the grace period.
    Stop,
    /// A stop that pulls the plug at once.
    PowerOff,
    /// A reset of the VM.
    Reboot,
    /// A reboot asked of the guest: powered off gracefully and booted again.
    SoftReboot,
    /// Reinstalls from the template (a new one if given), wiping the disk.
    Reset {
        template: Option<String>,
        disk_size_gb: Option<u64>,
    },
    Scale {
        instance_type: String,
    },
    /// A scale on the caller's terms: into another family too (a CPU instance becoming a GPU one) when
    /// `across_families`, and onto `gpu_model` (`None`: the instance keeps its model, or gets the
    /// catalog's default). `Scale` is this with neither; both are allowed only where the state machine
    /// allows a scale. With `restart_if_running` a running instance is scaled too: stopped gracefully,
    /// given its new size and started again (`Action::ScaleWithRestart`); a stopped one stays stopped.
    ScaleTo {
        instance_type: String,
        gpu_model: Option<String>,
        across_families: bool,
        restart_if_running: bool,
    },
    ResizeDisk {
        disk_size_gb: u64,
    },
    CreateSnapshot {
        name: Option<String>,
    },
    RevertSnapshot {
        snapshot_id: Uuid,
    },
    DeleteSnapshot {
        snapshot_id: Uuid,
    },
    /// Makes a template of the snapshot.
    PromoteSnapshot {
        snapshot_id: Uuid,
        template: crate::sagas::promote_snapshot::PromoteRequest,
    },
    ResetPassword,
    EnableTpm,
    Suspend,
    Resume,
    Delete,
    /// Deletes the instance and, with it, these volumes attached to it (the others are detached and kept)
    /// and these reserved addresses it holds (the others go back to their reservations).
    DeleteWith {
        volumes: Vec<Uuid>,
        reserved_addresses: Vec<Uuid>,
    },
    /// Anti-affinity groups to join and to leave.
    ChangeAntiAffinityGroups {
        join: Vec<Uuid>,
        leave: Vec<Uuid>,
    },
}

impl ActionRequest {
    pub fn action(&self) -> Action {
        match self {
            ActionRequest::Start | ActionRequest::StartRescue => Action::Start,
            ActionRequest::Stop | ActionRequest::PowerOff => Action::Stop,
            ActionRequest::Reboot | ActionRequest::SoftReboot => Action::Reboot,
            ActionRequest::Reset { .. } => Action::Reset,
            ActionRequest::ScaleTo { restart_if_running: true, .. } => Action::ScaleWithRestart,
            ActionRequest::Scale { .. } | ActionRequest::ScaleTo { .. } => Action::Scale,
            ActionRequest::ResizeDisk { .. } => Action::ResizeDisk,
            ActionRequest::CreateSnapshot { .. } => Action::CreateSnapshot,
            ActionRequest::RevertSnapshot { .. } => Action::RevertSnapshot,
            ActionRequest::DeleteSnapshot { .. } => Action::DeleteSnapshot,
            ActionRequest::PromoteSnapshot { .. } => Action::PromoteSnapshot,
            ActionRequest::ResetPassword => Action::ResetPassword,
            ActionRequest::EnableTpm => Action::EnableTpm,
            ActionRequest::Suspend => Action::Suspend,
            ActionRequest::Resume => Action::Resume,
            ActionRequest::Delete | ActionRequest::DeleteWith { .. } => Action::Delete,
            ActionRequest::ChangeAntiAffinityGroups { .. } => Action::ChangeAntiAffinityGroups,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub labels: Option<Selector>,
    pub state: Option<InstanceState>,
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
    /// Any of these instances (empty: any).
    pub ids: Vec<Uuid>,
    /// In any of these states (empty: any).
    pub states: Vec<InstanceState>,
    /// Of any of these instance types, by name (empty: any).
    pub instance_types: Vec<String>,
    /// Created at or after, and strictly before.
    pub created_after: Option<OffsetDateTime>,
    pub created_before: Option<OffsetDateTime>,
    /// With no `state`, also the deleted instances whose records are still kept (see
    /// `EngineConfig::deleted_retention`): for the providers that list them.
    pub with_destroyed: bool,
    /// Pages backwards instead: the page just before the instance this token names (from a page's
    /// `next_page_token` or from `page_token::encode`), in the usual order; its `next_page_token` then leads
    /// to the page before it.
    pub before_token: Option<String>,
}

impl InstanceFilter {
    /// The selector's requirements the store's label index serves (a label present, with a value or not);
    /// the others (`!=`, absent) are checked by [`InstanceFilter::admits`] on what it reads.
    fn indexed_labels(&self) -> Vec<(String, Option<String>)> {
        let Some(selector) = &self.labels else { return Vec::new() };
        selector
            .0
            .iter()
            .filter_map(|r| match r {
                Requirement::Equals(k, v) => Some((k.clone(), Some(v.clone()))),
                Requirement::Exists(k) => Some((k.clone(), None)),
                Requirement::NotEquals(..) | Requirement::NotExists(_) => None,
            })
            .collect()
    }

    /// The conditions the store does not apply itself (it applies the state, the states, the name and the
    /// indexed labels; the selector is checked whole again here, which costs little).
    fn admits(&self, i: &Instance) -> bool {
        self.labels.as_ref().is_none_or(|s| s.matches(&i.labels))
            && (self.ids.is_empty() || self.ids.contains(&i.id))
            && (self.instance_types.is_empty() || self.instance_types.contains(&i.instance_type))
            && self.created_after.is_none_or(|t| i.created_at >= t)
            && self.created_before.is_none_or(|t| i.created_at < t)
    }
}

pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;
/// The largest disk an instance may have, whatever API asks (dialects state their own range within it).
pub const MAX_DISK_GB: u64 = 16 * 1024;

pub(crate) fn event(
    ctx_actor: &nimbus_core::operation::Actor,
    project_id: Uuid,
    kind: &str,
    target_id: Uuid,
    data: serde_json::Value,
) -> Event {
    Event { seq: 0, project_id, kind: kind.into(), target_id, actor: ctx_actor.clone(), data, time: nimbus_core::now() }
}

pub(crate) fn instance_event(actor: &nimbus_core::operation::Actor, kind: &str, i: &Instance) -> Write {
    Write::AppendEvent(event(actor, i.project_id, kind, i.id, serde_json::to_value(i).expect("serializes")))
}

pub(crate) fn operation_event(kind: &str, op: &Operation) -> Write {
    Write::AppendEvent(event(&op.actor, op.project_id, kind, op.id, serde_json::to_value(op).expect("serializes")))
}

pub(crate) fn decode_user_data(b64: &str) -> Result<Vec<u8>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| DomainError::invalid("user_data", format!("must be base64: {e}")))?;
    if bytes.len() > MAX_USER_DATA_BYTES {
        return Err(DomainError::invalid(
            "user_data",
            format!("is {} bytes once decoded, the limit is {MAX_USER_DATA_BYTES}", bytes.len()),
        ));
    }
    Ok(bytes)
}

pub(crate) fn validate_disk(field: &str, size: u64, min: u64) -> Result<()> {
    if size < min {
        return Err(DomainError::invalid(field, format!("{size} GB is below the minimum of {min} GB")));
    }
    if size > MAX_DISK_GB {
        return Err(DomainError::invalid(field, format!("{size} GB is above the maximum of {MAX_DISK_GB} GB")));
    }
    Ok(())
}

impl Engine {
    /// The caller's instance; another project's looks exactly like a missing one.
    pub async fn instance(&self, ctx: &Context, id: Uuid) -> Result<Instance> {
        self.store
            .get_instance(id)
            .await
            .map_err(store_err)?
            .filter(|i| i.project_id == ctx.project.id)
            .ok_or_else(|| DomainError::not_found("instance", id))
    }

    /// The instance, or the record of a deleted one still kept (`destroyed`): for the providers that show
    /// deleted instances for a while.
    pub async fn instance_or_destroyed(&self, ctx: &Context, id: Uuid) -> Result<Instance> {
        let query = InstanceQuery {
            project_id: Some(ctx.project.id),
            id: Some(id),
            with_destroyed: true,
            limit: 1,
            ..Default::default()
        };
        let found = self.store.list_instances(&query).await.map_err(store_err)?;
        found.into_iter().next().ok_or_else(|| DomainError::not_found("instance", id))
    }

    /// Records a new instance and the operation that creates it on the host, in one transaction with its
    /// address, password and quota check (see `sagas::create`).
    pub async fn create_instance(&self, ctx: &Context, req: CreateInstance) -> Result<(Operation, Instance)> {
        let mut refused = None;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let address = match req.reserved_address {
                Some(_) => 0, // the plan takes the reservation's
                None => sagas::create::address_candidate(self, attempt).await?,
            };
            let (instance, mut op, mut set) = sagas::create::plan(self, ctx, &req, address).await?;
            let here = self.lease_here(&mut op, &mut set);
            match self.store.apply(set).await {
                Ok(()) => {
                    if let Some(here) = here {
                        self.run_here(here);
                    }
                    return Ok((op, instance));
                }
                // Another create claimed the address first: take another.
                Err(StoreError::Conflict(_)) => continue,
                // Another placement filled the host first: place again on fresh figures.
                Err(StoreError::NoRoom(why)) if attempt < crate::placement::PLACEMENT_RETRIES => {
                    refused = Some(why);
                    continue;
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        if let Some(why) = refused {
            return Err(crate::placement::no_room(why));
        }
        Err(DomainError::Conflict("the instance network is busy with other creates; retry".into()))
    }

    /// Every instance of the caller's project, oldest first, for dialects that filter or page themselves.
    pub async fn all_instances(&self, ctx: &Context) -> Result<Vec<Instance>> {
        self.all_instances_with(ctx, false).await
    }

    /// Every instance and the kept records of deleted ones (see `EngineConfig::deleted_retention`).
    pub async fn all_instances_and_destroyed(&self, ctx: &Context) -> Result<Vec<Instance>> {
        self.all_instances_with(ctx, true).await
    }

    async fn all_instances_with(&self, ctx: &Context, with_destroyed: bool) -> Result<Vec<Instance>> {
        self.all_instances_where(ctx, InstanceFilter { with_destroyed, ..Default::default() }).await
    }

    /// Every instance `filter` admits (its limit and page tokens aside), read page by page, in id order:
    /// for the providers whose lists are not paged.
    pub async fn all_instances_where(&self, ctx: &Context, filter: InstanceFilter) -> Result<Vec<Instance>> {
        let mut all = Vec::new();
        let mut page_token = None;
        loop {
            let filter = InstanceFilter { limit: Some(MAX_PAGE), page_token, before_token: None, ..filter.clone() };
            let page = self.list_instances(ctx, filter).await?;
            all.extend(page.items);
            match page.next_page_token {
                Some(t) => page_token = Some(t),
                None => return Ok(all),
            }
        }
    }

    pub async fn list_instances(&self, ctx: &Context, filter: InstanceFilter) -> Result<Page<Instance>> {
        let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(DomainError::invalid("limit", format!("must be between 1 and {MAX_PAGE}")));
        }
        let backwards = filter.before_token.is_some();
        let token = if backwards { &filter.before_token } else { &filter.page_token };
        let mut cursor = token.as_deref().map(page_token::decode).transpose()?;
        let mut items = Vec::new();
        // Label selectors and the other conditions the store does not take are applied here, so a page is
        // filled from as many store pages as it takes.
        loop {
            let batch = self
                .store
                .list_instances(&InstanceQuery {
                    project_id: Some(ctx.project.id),
                    state: filter.state,
                    states: filter.states.clone(),
                    with_destroyed: filter.with_destroyed,
                    name: filter.name.clone(),
                    labels: filter.indexed_labels(),
                    after: if backwards { None } else { cursor },
                    before: if backwards { cursor } else { None },
                    limit: limit + 1,
                    ..Default::default()
                })
                .await
                .map_err(store_err)?;
            let exhausted = batch.len() <= limit as usize;
            for i in batch {
                cursor = Some(i.id);
                if filter.admits(&i) {
                    items.push(i);
                    if items.len() > limit as usize {
                        break;
                    }
                }
            }
            if items.len() > limit as usize || exhausted {
                break;
            }
        }
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|i| page_token::encode(i.id))
        } else {
            None
        };
        // Read nearest first; shown in the usual order. The token then leads further back.
        if backwards {
            items.reverse();
        }
        Ok(Page { items, next_page_token })
    }

    /// Applies a partial update. With `if_match`, the instance must still be at that generation.
    pub async fn update_instance(
        &self,
        ctx: &Context,
        id: Uuid,
        patch: InstancePatch,
        if_match: Option<i64>,
    ) -> Result<Instance> {
        ctx.require(Role::Member)?;
        self.edit_instance(ctx, id, if_match, |current| apply_patch(current, &patch)).await
    }

    /// Deletion protection is a flag, not a background action: it answers at once.
    pub async fn set_protection(&self, ctx: &Context, id: Uuid, protected: bool) -> Result<Instance> {
        ctx.require(Role::Member)?;
        self.edit_instance(ctx, id, None, |current| {
            if current.state == InstanceState::Destroying {
                return Err(DomainError::InvalidState {
                    action: if protected { "add-protection" } else { "remove-protection" }.into(),
                    state: current.state,
                    hint: "the instance is being destroyed".into(),
                });
            }
            let mut next = current.clone();
            next.protected = protected;
            next.generation += 1;
            next.updated_at = nimbus_core::now();
            Ok(next)
        })
        .await
    }

    /// Attaches and detaches security groups in one change. Attaching a group already attached, or
    /// detaching one that is not, changes nothing; every group attached must exist in the project.
    pub async fn change_security_groups(
        &self,
        ctx: &Context,
        id: Uuid,
        attach: &[Uuid],
        detach: &[Uuid],
    ) -> Result<Instance> {
        ctx.require(Role::Member)?;
        self.check_group_refs(ctx, attach, &[]).await?;
        self.edit_instance(ctx, id, None, |current| {
            if current.state == InstanceState::Destroying {
                return Err(DomainError::InvalidState {
                    action: "change-security-groups".into(),
                    state: current.state,
                    hint: "the instance is being destroyed".into(),
                });
            }
            let mut next = current.clone();
            next.security_groups.retain(|g| !detach.contains(g));
            for g in attach {
                if !next.security_groups.contains(g) {
                    next.security_groups.push(*g);
                }
            }
            next.generation += 1;
            next.updated_at = nimbus_core::now();
            Ok(next)
        })
        .await
    }

    /// Read-modify-write of one instance for a caller: `change` makes the next version from the current one,
    /// or refuses. A lost compare-and-swap reads again and re-applies, unless the caller pinned a version
    /// with `if_match`, who then learns that the version is gone.
    async fn edit_instance(
        &self,
        ctx: &Context,
        id: Uuid,
        if_match: Option<i64>,
        change: impl Fn(&Instance) -> Result<Instance>,
    ) -> Result<Instance> {
        self.edit_instance_with(ctx, id, if_match, |current| Ok((change(current)?, Vec::new()))).await
    }

    /// [`Engine::edit_instance`] whose change also makes other writes (a record the instance refers to),
    /// committed in the same transaction as the instance.
    pub(crate) async fn edit_instance_with(
        &self,
        ctx: &Context,
        id: Uuid,
        if_match: Option<i64>,
        change: impl Fn(&Instance) -> Result<(Instance, Vec<Write>)>,
    ) -> Result<Instance> {
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let current = self.instance(ctx, id).await?;
            if let Some(expected) = if_match {
                if expected != current.generation {
                    return Err(DomainError::PreconditionFailed { expected: format!("\"{expected}\"") });
                }
            }
            let (next, writes) = change(&current)?;
            let mut set = WriteSet::new();
            set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
            set.writes.extend(writes);
            set.push(instance_event(&ctx.actor, "instance.updated", &next));
            match self.store.apply(set).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict(_)) if if_match.is_none() => continue,
                Err(StoreError::Conflict(_)) => {
                    return Err(DomainError::PreconditionFailed { expected: format!("\"{}\"", current.generation) })
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("instance {id} is being changed by many writers at once; retry")))
    }

    /// Read-modify-write of one instance: `plan` sees the instance as it is and says what to change (`None`:
    /// nothing), and the change is applied only if the instance is still at that version; when a concurrent
    /// writer got there first, `plan` runs again on the fresh instance. For changes that depend on what the
    /// instance holds (a provider refusing to change hardware it echoes back, a field that must exist).
    pub async fn update_instance_with<E: From<DomainError>>(
        &self,
        ctx: &Context,
        id: Uuid,
        plan: impl Fn(&Instance) -> std::result::Result<Option<InstancePatch>, E>,
    ) -> std::result::Result<Instance, E> {
        ctx.require(Role::Member)?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let current = self.instance(ctx, id).await?;
            let Some(patch) = plan(&current)? else { return Ok(current) };
            match self.update_instance(ctx, id, patch, Some(current.generation)).await {
                Ok(updated) => return Ok(updated),
                Err(DomainError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DomainError::Conflict(format!("instance {id} is being changed by many writers at once; retry")).into())
    }

    /// Updates several instances at once: all or nothing. When an id appears more than once its entries are
    /// applied in order, each over the one before (a later entry's field wins; fields it leaves out keep
    /// what the earlier ones set); the result lists each instance once, in the order of first appearance.
    pub async fn batch_update(&self, ctx: &Context, entries: Vec<(Uuid, InstancePatch)>) -> Result<Vec<Instance>> {
        ctx.require(Role::Member)?;
        let mut order: Vec<Uuid> = Vec::new();
        let mut patches: BTreeMap<Uuid, Vec<InstancePatch>> = BTreeMap::new();
        for (id, patch) in entries {
            if !patches.contains_key(&id) {
                order.push(id);
            }
            patches.entry(id).or_default().push(patch);
        }
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let mut set = WriteSet::new();
            let mut updated = Vec::new();
            for id in &order {
                let current = self.instance(ctx, *id).await?;
                let mut next = current.clone();
                for patch in &patches[id] {
                    next = apply_patch(&next, patch).map_err(|e| prefix_error(e, &format!("instance {id}")))?;
                }
                // One version step for the batch, whatever number of entries the instance had.
                next.generation = current.generation + 1;
                set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
                set.push(instance_event(&ctx.actor, "instance.updated", &next));
                updated.push(next);
            }
            match self.store.apply(set).await {
                Ok(()) => return Ok(updated),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict("the instances are being changed by many writers at once; retry".into()))
    }

    /// Begins a lifecycle action: checks the rules, takes the instance's lock, records the operation.
    pub async fn act(&self, ctx: &Context, id: Uuid, req: ActionRequest) -> Result<Operation> {
        ctx.require(Role::Member)?;
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let current = self.instance(ctx, id).await?;
            let (mut op, mut set) = self.plan_action(ctx, &current, &req).await?;
            let here = self.lease_here(&mut op, &mut set);
            match self.store.apply(set).await {
                Ok(()) => {
                    if let Some(here) = here {
                        self.run_here(here);
                    }
                    return Ok(op);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(StoreError::NoRoom(why)) => return Err(DomainError::NoCapacity(why)),
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("instance {id} changed concurrently; retry")))
    }

    /// Like [`Engine::act`], but when another operation holds the instance's lock, waits up to `wait` for it
    /// to end and tries again: for callers whose API has no "busy" answer (a client that deletes what it
    /// has just created, say).
    pub async fn act_when_free(
        &self,
        ctx: &Context,
        id: Uuid,
        req: ActionRequest,
        wait: std::time::Duration,
    ) -> Result<Operation> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.act(ctx, id, req.clone()).await {
                Err(DomainError::Busy { operation, .. }) if tokio::time::Instant::now() < deadline => {
                    let holder = Uuid::parse_str(&operation)
                        .map_err(|_| DomainError::Internal(format!("lock held by {operation:?}")))?;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    self.wait_operation(ctx, holder, left).await?;
                }
                other => return other,
            }
        }
    }

    /// Gives the instance new hardware (`scale`, a `Scale` or `ScaleTo`, begun once the instance's lock is
    /// free and waited for), then applies `patch` unless it changes nothing: for the providers whose one
    /// update call does both and answers when done. Each step waits up to `wait`; `on_scale_error` turns a
    /// refused scale into the provider's answer (it names the field that asked for it).
    pub async fn scale_then_update<E: From<DomainError>>(
        &self,
        ctx: &Context,
        id: Uuid,
        scale: Option<ActionRequest>,
        patch: InstancePatch,
        wait: std::time::Duration,
        on_scale_error: impl FnOnce(DomainError) -> E,
    ) -> std::result::Result<Instance, E> {
        ctx.require(Role::Member)?;
        if let Some(scale) = scale {
            let op = self.act_when_free(ctx, id, scale, wait).await.map_err(on_scale_error)?;
            self.wait_operation(ctx, op.id, wait).await?;
        }
        let InstancePatch { name, description, replace_labels, labels, hostname, user_data, .. } = &patch;
        let nothing = name.is_none()
            && description.is_none()
            && replace_labels.is_none()
            && labels.is_none()
            && hostname.is_none()
            && user_data.is_none()
            && patch.expected_shutdown_at.is_none()
            && patch.price_hourly.is_none()
            && patch.extensions.is_empty();
        if nothing {
            return Ok(self.instance(ctx, id).await?);
        }
        Ok(self.update_instance(ctx, id, patch, None).await?)
    }

    /// Makes the instance run (`running`) or stop, unless it already does or is on its way there: for the
    /// providers whose start and stop change nothing when asked twice. Waits for the lock like
    /// [`Engine::act_when_free`]; `None` when nothing needed doing.
    pub async fn power_to(
        &self,
        ctx: &Context,
        id: Uuid,
        running: bool,
        wait: std::time::Duration,
    ) -> Result<Option<Operation>> {
        let current = self.instance(ctx, id).await?;
        let already = if running {
            matches!(current.state, InstanceState::Running | InstanceState::Starting)
        } else {
            matches!(current.state, InstanceState::Stopped | InstanceState::Stopping)
        };
        if already {
            return Ok(None);
        }
        let req = if running { ActionRequest::Start } else { ActionRequest::Stop };
        self.act_when_free(ctx, id, req, wait).await.map(Some)
    }

    async fn plan_action(
        &self,
        ctx: &Context,
        current: &Instance,
        req: &ActionRequest,
    ) -> Result<(Operation, WriteSet)> {
        let action = req.action();
        if let Some(holder) = current.lock_operation_id {
            return Err(DomainError::Busy { instance: current.id.to_string(), operation: holder.to_string() });
        }
        if action == Action::Delete && current.protected {
            return Err(DomainError::Conflict(format!(
                "instance {} is protected against deletion; remove the protection first",
                current.id
            )));
        }
        let t = transition(action, current.state)?;
        let mut next = current.clone();
        let planned = match req {
            ActionRequest::Scale { instance_type } => {
                let p = sagas::scale::plan(self, current, &mut next, instance_type, None, false).await?;
                sagas::scale::planned::<sagas::scale::Scale>(&p)
            }
            ActionRequest::ScaleTo { instance_type, gpu_model, across_families, restart_if_running } => {
                let p =
                    sagas::scale::plan(self, current, &mut next, instance_type, gpu_model.as_deref(), *across_families)
                        .await?;
                if *restart_if_running {
                    sagas::scale::planned::<sagas::scale::ScaleWithRestart>(&p)
                } else {
                    sagas::scale::planned::<sagas::scale::Scale>(&p)
                }
            }
            ActionRequest::ResizeDisk { disk_size_gb } => sagas::resize_disk::plan(current, &mut next, *disk_size_gb)?,
            ActionRequest::Reset { template, disk_size_gb } => {
                sagas::reset::plan(self, ctx, current, &mut next, template.as_deref(), *disk_size_gb).await?
            }
            ActionRequest::CreateSnapshot { name } => sagas::create_snapshot::plan(current, name.as_deref())?,
            ActionRequest::RevertSnapshot { snapshot_id } => {
                sagas::revert_snapshot::plan(self, ctx, current, *snapshot_id).await?
            }
            ActionRequest::DeleteSnapshot { snapshot_id } => {
                sagas::delete_snapshot::plan(self, ctx, current, *snapshot_id).await?
            }
            ActionRequest::PromoteSnapshot { snapshot_id, template } => {
                sagas::promote_snapshot::plan(self, ctx, current, *snapshot_id, template).await?
            }
            ActionRequest::ResetPassword => sagas::reset_password::plan(self, current).await?,
            ActionRequest::EnableTpm => sagas::enable_tpm::plan(self, current).await?,
            ActionRequest::ChangeAntiAffinityGroups { join, leave } => {
                sagas::anti_affinity::plan(self, ctx, &mut next, join, leave).await?
            }
            ActionRequest::PowerOff => Planned::of::<sagas::stop::Stop>(&sagas::stop::Params { force: true }),
            ActionRequest::StartRescue => Planned::of::<sagas::start::Start>(&sagas::start::Params { rescue: true }),
            ActionRequest::SoftReboot => Planned::of::<sagas::reboot::Reboot>(&sagas::reboot::Params { soft: true }),
            ActionRequest::Start
            | ActionRequest::Stop
            | ActionRequest::Reboot
            | ActionRequest::Suspend
            | ActionRequest::Resume
            | ActionRequest::Delete
            | ActionRequest::DeleteWith { .. } => Planned::nothing(),
        };
        // The volumes that go with a deleted instance: those named, and its boot volume unless kept.
        let (deleted_volumes, reserved_addresses) = match req {
            ActionRequest::Delete => (sagas::delete::volumes_going_with(self, current, &[]).await?, Vec::new()),
            ActionRequest::DeleteWith { volumes, reserved_addresses } => (
                sagas::delete::volumes_going_with(self, current, volumes).await?,
                sagas::delete::reserved_addresses_going_with(self, ctx, current, reserved_addresses).await?,
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let planned = if deleted_volumes.is_empty() && reserved_addresses.is_empty() {
            planned
        } else {
            Planned::of::<sagas::delete::Delete>(&sagas::delete::Params {
                volumes: deleted_volumes.clone(),
                reserved_addresses,
            })
        };
        // A new size must still fit the host the instance's disk is on.
        let planned = match req {
            ActionRequest::Scale { .. } | ActionRequest::ScaleTo { .. } | ActionRequest::ResizeDisk { .. } => {
                Planned { placement: self.placement_in_place(&next).await?, ..planned }
            }
            _ => planned,
        };
        // A boot volume's record follows the disk it is: its size and template.
        let boot_volume = match req {
            ActionRequest::ResizeDisk { .. } | ActionRequest::Reset { .. } => self.boot_volume_follows(&next).await?,
            _ => Vec::new(),
        };
        let (op, mut set) = begin_operation(current, next, t.during, action, planned, &ctx.actor);
        set.writes.extend(boot_volume);
        if !deleted_volumes.is_empty() {
            // Locked by the operation, so they need its id.
            set.writes.extend(sagas::delete::lock_volumes(self, ctx, current, &deleted_volumes, &op).await?);
        }
        Ok((op, set))
    }

    /// The GPU model of an instance of `itype`: the one `asked` for, else the one it `keep`s, else the
    /// catalog's default; none for a type without GPUs, which refuses one asked for.
    pub(crate) async fn choose_gpu_model(
        &self,
        itype: &nimbus_core::catalog::InstanceType,
        asked: Option<&str>,
        keep: Option<&str>,
    ) -> Result<Option<String>> {
        if itype.gpus == 0 {
            return match asked {
                Some(m) => {
                    Err(DomainError::invalid("gpu_model", format!("{} has no GPUs, so no GPU model {m:?}", itype.name)))
                }
                None => Ok(None),
            };
        }
        if let Some(m) = asked {
            let model = self
                .gpu_model(m)
                .await
                .map_err(|_| DomainError::invalid("gpu_model", format!("no GPU model {m:?}")))?;
            return Ok(Some(model.codename));
        }
        if let Some(m) = keep {
            return Ok(Some(m.to_string()));
        }
        let models = self.list_gpu_models().await?;
        Ok(models.first().map(|m| m.codename.clone()))
    }

    /// Starts a stop that Nimbus itself decided (an instance's `expected_shutdown_at` has come).
    pub(crate) async fn scheduled_stop(&self, instance: &Instance) -> Result<()> {
        let t = transition(Action::ScheduledStop, instance.state)?;
        let mut next = instance.clone();
        next.expected_shutdown_at = None;
        let planned = Planned::nothing();
        let (mut op, mut set) =
            begin_operation(instance, next, t.during, Action::ScheduledStop, planned, &Actor::system());
        op.message = Some("expected_shutdown_at reached".into());
        for w in &mut set.writes {
            if let Write::InsertOperation(o) = w {
                o.message = op.message.clone();
            }
        }
        self.store.apply(set).await.map_err(store_err)?;
        Ok(())
    }

    /// The password set by the last reset-password, while it has not expired.
    pub async fn reveal_password(&self, ctx: &Context, id: Uuid) -> Result<InstancePassword> {
        ctx.require(Role::Member)?;
        let instance = self.instance(ctx, id).await?;
        let template = self.template_by_id(instance.template_id).await?;
        if !template.password_enabled {
            return Err(DomainError::Conflict(format!("template {} does not support passwords", template.name)));
        }
        let record = self.store.get_record(PASSWORD, instance.id).await.map_err(store_err)?;
        let password: Option<InstancePassword> = record.map(|r| r.decode()).transpose().map_err(store_err)?;
        password.filter(|p| p.expires_at > OffsetDateTime::now_utc()).ok_or_else(|| DomainError::NotFound {
            kind: "password",
            id: format!("of instance {id} (none set, or older than 24 hours)"),
        })
    }

    pub async fn console(&self, ctx: &Context, id: Uuid) -> Result<String> {
        let instance = self.instance(ctx, id).await?;
        match self.driver_of(&instance).console(instance.id).await {
            Ok(log) => Ok(log),
            Err(nimbus_driver::DriverError::NotFound(_)) => Ok(String::new()),
            Err(e) => Err(DomainError::Internal(e.to_string())),
        }
    }

    pub async fn console_stream(&self, ctx: &Context, id: Uuid) -> Result<nimbus_driver::ConsoleStream> {
        ctx.require(Role::Member)?;
        let instance = self.instance(ctx, id).await?;
        if instance.state != InstanceState::Running {
            return Err(DomainError::InvalidState {
                action: "console".into(),
                state: instance.state,
                hint: "the interactive console needs the instance running".into(),
            });
        }
        self.driver_of(&instance).console_stream(instance.id).await.map_err(|e| match e {
            nimbus_driver::DriverError::Unsupported(m) => DomainError::Unsupported(m),
            other => DomainError::Internal(other.to_string()),
        })
    }

    /// The guest's own view of its network interfaces (its guest agent's answer).
    pub async fn guest_interfaces(&self, ctx: &Context, id: Uuid) -> Result<Vec<nimbus_driver::GuestInterface>> {
        let instance = self.instance(ctx, id).await?;
        self.driver_of(&instance).guest_interfaces(instance.id).await.map_err(crate::driver_err)
    }

    /// A TCP connection to a port of a running instance, from inside the instance network: what
    /// `nimbus instance ssh` and `port-forward` tunnel through.
    pub async fn connect(&self, ctx: &Context, id: Uuid, port: u16) -> Result<nimbus_driver::ConsoleStream> {
        ctx.require(Role::Member)?;
        let instance = self.instance(ctx, id).await?;
        if instance.state != InstanceState::Running {
            return Err(DomainError::InvalidState {
                action: "connect".into(),
                state: instance.state,
                hint: "a tunnel needs the instance running".into(),
            });
        }
        let address = instance
            .ip_addresses
            .first()
            .ok_or_else(|| DomainError::Conflict(format!("instance {id} has no address")))?;
        self.driver_of(&instance).connect(instance.id, address, port).await.map_err(crate::driver_err)
    }

    pub async fn instance_metrics(&self, ctx: &Context, id: Uuid) -> Result<nimbus_driver::InstanceMetrics> {
        let instance = self.instance(ctx, id).await?;
        self.driver_of(&instance).metrics(instance.id).await.map_err(|e| DomainError::Internal(e.to_string()))
    }

    pub(crate) async fn template_by_id(&self, id: Uuid) -> Result<nimbus_core::catalog::Template> {
        let record = self.store.get_record(crate::catalog::TEMPLATE, id).await.map_err(store_err)?;
        record.map(|r| r.decode()).transpose().map_err(store_err)?.ok_or_else(|| {
            DomainError::Conflict(format!(
                "the instance's template {id} has been deleted; reset it with another template"
            ))
        })
    }
}

/// The request's transaction of a lifecycle action: the instance's next version (showing `during`, locked by
/// the new operation), the operation with its kind's parameters, the plan's other writes, and the events.
pub(crate) fn begin_operation(
    current: &Instance,
    mut next: Instance,
    during: InstanceState,
    action: Action,
    planned: Planned,
    actor: &Actor,
) -> (Operation, WriteSet) {
    let mut op =
        Operation::new(current.project_id, action, Target::instance(current.id), Some(current.state), actor.clone());
    op.params = planned.params;
    op.params_version = planned.params_version;
    next.state = during;
    next.lock_operation_id = Some(op.id);
    next.generation += 1;
    next.updated_at = op.created_at;
    let mut set = WriteSet::new();
    set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
    set.push(Write::InsertOperation(op.clone()));
    set.writes.extend(planned.writes);
    set.push(instance_event(actor, "instance.updated", &next));
    set.push(operation_event("operation.created", &op));
    if planned.quota {
        set.enforce_quota_of = Some(current.project_id);
    }
    set.placement = planned.placement;
    (op, set)
}

fn prefix_error(e: DomainError, what: &str) -> DomainError {
    match e {
        DomainError::Invalid { field, message } => DomainError::Invalid { field: format!("{what}: {field}"), message },
        other => other,
    }
}

/// The instance after `patch`, with its generation bumped; read-only fields stay as they are.
fn apply_patch(current: &Instance, patch: &InstancePatch) -> Result<Instance> {
    if current.state == InstanceState::Destroying {
        return Err(DomainError::InvalidState {
            action: "update".into(),
            state: current.state,
            hint: "the instance is being destroyed".into(),
        });
    }
    let mut next = current.clone();
    if let Some(name) = &patch.name {
        validate_name_by(patch.name_rule, "name", name)?;
        next.name = name.clone();
    }
    if let Some(hostname) = &patch.hostname {
        nimbus_core::instance::validate_hostname("hostname", hostname)?;
        next.hostname = hostname.clone();
    }
    if let Some(description) = &patch.description {
        if description.len() > 255 {
            return Err(DomainError::invalid("description", "at most 255 characters"));
        }
        next.description = description.clone();
    }
    labels::apply_update(&mut next.labels, patch.replace_labels.as_ref(), patch.labels.as_ref())?;
    if let Some(at) = patch.expected_shutdown_at {
        next.expected_shutdown_at = at;
    }
    if let Some(price) = patch.price_hourly {
        if let Some(p) = price {
            nimbus_core::instance::validate_price("price_hourly", p)?;
        }
        next.price_hourly = price;
    }
    if let Some(ud) = &patch.user_data {
        decode_user_data(ud)?;
        next.user_data = Some(ud.trim().to_string());
    }
    merge_extensions(&mut next, &patch.extensions);
    next.generation += 1;
    next.updated_at = nimbus_core::now();
    Ok(next)
}

/// Applies JSON merge patches of the named dialects' extension maps (a `null` removes a key).
pub(crate) fn merge_extensions(next: &mut Instance, extensions: &BTreeMap<String, serde_json::Value>) {
    for (dialect, value) in extensions {
        let slot = next.extensions.entry(dialect.clone()).or_insert(serde_json::Value::Null);
        labels::json_merge_patch(slot, value);
    }
}
