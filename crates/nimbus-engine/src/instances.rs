//! The instance service: create, read, list, update, batch update, and every lifecycle action.
//!
//! A mutating call is planned against a fresh read of the instance and applied with compare-and-swap on its
//! generation; when another writer got there first the plan is made again on the new state, so concurrent
//! writers never lose an update and never slip past a rule.

use std::collections::BTreeMap;

use base64::Engine as _;
use nimbus_core::event::Event;
use nimbus_core::instance::{validate_name, Instance, InstanceState, MAX_USER_DATA_BYTES};
use nimbus_core::labels::{self, Labels, Selector};
use nimbus_core::operation::{Operation, OperationState, Target};
use nimbus_core::resources::{InstancePassword, Snapshot, SnapshotState, PASSWORD_LIFETIME};
use nimbus_core::state_machine::{transition, Action};
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_store::{InstanceQuery, Record, StoreError, Write, WriteSet};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::resources::{PASSWORD, SNAPSHOT};
use crate::{page_token, store_err, Context, Engine, Page, Result};

/// How often a plan is made again after losing a compare-and-swap before the caller sees a conflict.
const CAS_RETRIES: usize = 64;

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
}

/// A partial update. `labels` is a JSON merge patch (RFC 7386); `Some(Value::Null)` clears every label.
#[derive(Debug, Clone, Default)]
pub struct InstancePatch {
    pub name: Option<String>,
    pub description: Option<String>,
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
    Stop,
    Reboot,
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
    ResetPassword,
    EnableTpm,
    Suspend,
    Resume,
    Delete,
    /// Anti-affinity groups to join and to leave.
    ChangeAntiAffinityGroups {
        join: Vec<Uuid>,
        leave: Vec<Uuid>,
    },
}

impl ActionRequest {
    pub fn action(&self) -> Action {
        match self {
            ActionRequest::Start => Action::Start,
            ActionRequest::Stop => Action::Stop,
            ActionRequest::Reboot => Action::Reboot,
            ActionRequest::Reset { .. } => Action::Reset,
            ActionRequest::ScaleTo { restart_if_running: true, .. } => Action::ScaleWithRestart,
            ActionRequest::Scale { .. } | ActionRequest::ScaleTo { .. } => Action::Scale,
            ActionRequest::ResizeDisk { .. } => Action::ResizeDisk,
            ActionRequest::CreateSnapshot { .. } => Action::CreateSnapshot,
            ActionRequest::RevertSnapshot { .. } => Action::RevertSnapshot,
            ActionRequest::DeleteSnapshot { .. } => Action::DeleteSnapshot,
            ActionRequest::ResetPassword => Action::ResetPassword,
            ActionRequest::EnableTpm => Action::EnableTpm,
            ActionRequest::Suspend => Action::Suspend,
            ActionRequest::Resume => Action::Resume,
            ActionRequest::Delete => Action::Delete,
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
}

pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;
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

fn decode_user_data(b64: &str) -> Result<Vec<u8>> {
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

fn validate_disk(field: &str, size: u64, min: u64) -> Result<()> {
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

    pub async fn create_instance(&self, ctx: &Context, req: CreateInstance) -> Result<(Operation, Instance)> {
        ctx.require(Role::Member)?;
        validate_name("name", &req.name)?;
        let hostname = req.hostname.clone().unwrap_or_else(|| nimbus_core::instance::hostname_from_name(&req.name));
        nimbus_core::instance::validate_hostname("hostname", &hostname)?;
        labels::validate_labels("labels", &req.labels)?;
        let itype = self.instance_type(&req.instance_type).await.map_err(|_| {
            DomainError::invalid(
                "instance_type",
                format!("no instance type {:?}; see GET /v1/instance-types", req.instance_type),
            )
        })?;
        if !itype.authorized || !itype.zones.contains(&self.config.zone) {
            return Err(DomainError::invalid(
                "instance_type",
                format!("{} is not offered in zone {}", itype.name, self.config.zone),
            ));
        }
        let template = self.template(ctx, &req.template).await.map_err(|_| {
            DomainError::invalid("template", format!("no template {:?}; see GET /v1/templates", req.template))
        })?;
        let gpu_model = self.choose_gpu_model(&itype, req.gpu_model.as_deref(), None).await?;
        let disk = req.disk_size_gb.unwrap_or(itype.default_disk_gb.max(template.min_disk_gb));
        validate_disk("disk_size_gb", disk, itype.min_disk_gb.max(template.min_disk_gb))?;
        if let Some(ud) = &req.user_data {
            decode_user_data(ud)?;
        }
        if let Some(price) = req.price_hourly {
            nimbus_core::instance::validate_price("price_hourly", price)?;
        }
        if let Some(password) = &req.password {
            nimbus_core::instance::validate_password("password", password)?;
            if !template.password_enabled {
                return Err(DomainError::invalid(
                    "password",
                    format!("template {} does not support passwords", template.name),
                ));
            }
        }
        let ssh_keys = self.resolve_ssh_key_names(ctx, &req.ssh_keys).await?;
        if !ssh_keys.is_empty() && !template.ssh_key_enabled {
            return Err(DomainError::invalid("ssh_keys", format!("template {} does not take SSH keys", template.name)));
        }
        self.check_group_refs(ctx, &req.security_groups, &req.anti_affinity_groups).await?;
        if req.tpm_enabled && !self.driver_supports_tpm().await {
            return Err(DomainError::Unsupported(format!(
                "the {} driver cannot attach a TPM here",
                self.driver.name()
            )));
        }

        let now = nimbus_core::now();
        let id = nimbus_core::new_id();
        let op_id = nimbus_core::new_id();
        let mut system_labels = Labels::new();
        system_labels.insert("nimbus.zone".into(), self.config.zone.clone());
        system_labels.insert("nimbus.instance-type.family".into(), itype.family.clone());
        let instance = Instance {
            id,
            project_id: ctx.project.id,
            name: req.name.clone(),
            hostname,
            description: req.description.clone(),
            zone: self.config.zone.clone(),
            instance_type: itype.name.clone(),
            template_id: template.id,
            template: template.name.clone(),
            state: InstanceState::Creating,
            labels: req.labels.clone(),
            system_labels,
            vcpus: itype.vcpus,
            memory_mib: itype.memory_mib,
            gpus: itype.gpus,
            gpu_model,
            disk_size_gb: disk,
            user_data: req.user_data.clone().map(|s| s.trim().to_string()),
            ssh_keys,
            security_groups: req.security_groups.clone(),
            anti_affinity_groups: req.anti_affinity_groups.clone(),
            private_networks: vec![],
            ip_addresses: vec![self.reserve_address(id).await?],
            mac_address: Instance::mac_for(id),
            protected: req.protected,
            tpm_enabled: req.tpm_enabled,
            secure_boot: req.secure_boot,
            price_hourly: req.price_hourly,
            expected_shutdown_at: req.expected_shutdown_at,
            host: None,
            lock_operation_id: Some(op_id),
            create_operation_id: Some(op_id),
            generation: 1,
            extensions: req.extensions.clone(),
            created_at: now,
            updated_at: now,
        };
        let op = Operation {
            id: op_id,
            project_id: ctx.project.id,
            kind: Action::Create,
            state: OperationState::Pending,
            reason: None,
            message: None,
            target: Target { kind: "instance".into(), id },
            params: json!({ "auto_start": req.auto_start }),
            result: None,
            state_before: None,
            attempts: 0,
            actor: ctx.actor.clone(),
            created_at: now,
            updated_at: now,
        };
        let mut set = WriteSet::new();
        set.push(Write::PutInstance { instance: instance.clone(), expected_generation: None });
        set.push(Write::PutOperation(op.clone()));
        // A password-enabled template's default user gets the caller's password, or a generated one, at
        // creation, revealable for a day like reset-password's (validated above: only such templates take one).
        if template.password_enabled {
            let password = InstancePassword {
                instance_id: id,
                password: req.password.clone().unwrap_or_else(crate::worker::new_password),
                expires_at: now + PASSWORD_LIFETIME,
            };
            set.push(Write::PutRecord(Record::new(PASSWORD, id, Some(ctx.project.id), "password", &password)));
        }
        for (kind, alias) in &req.aliases {
            set.push(Write::PutAlias { kind: kind.clone(), alias: alias.clone(), id });
        }
        set.push(instance_event(&ctx.actor, "instance.created", &instance));
        set.push(operation_event("operation.created", &op));
        set.enforce_quota_of = Some(ctx.project.id);
        if let Err(e) = self.store.apply(set).await {
            let mut release = WriteSet::new();
            release.push(Write::ReleaseAddresses { instance_id: id });
            if let Err(e) = self.store.apply(release).await {
                tracing::warn!(instance = %id, error = %e, "could not release the address of a refused create");
            }
            return Err(store_err(e));
        }
        self.enqueue(op.id);
        Ok((op, instance))
    }

    /// Takes an address of the instance network for a new instance, before anything else is written: a full
    /// network refuses the create at once instead of failing it later in a worker.
    async fn reserve_address(&self, id: Uuid) -> Result<String> {
        let net = crate::network::Network::parse(&self.config.network_cidr)?;
        let host = self
            .store
            .allocate_address(&self.config.network_cidr, net.first_host(), net.last_host(), id)
            .await
            .map_err(|e| match e {
                StoreError::QuotaExceeded(why) => DomainError::Conflict(why),
                other => store_err(other),
            })?;
        Ok(net.address(host))
    }

    /// Every instance of the caller's project, oldest first, for dialects that filter or page themselves.
    pub async fn all_instances(&self, ctx: &Context) -> Result<Vec<Instance>> {
        let mut all = Vec::new();
        let mut page_token = None;
        loop {
            let filter = InstanceFilter { limit: Some(MAX_PAGE), page_token, ..Default::default() };
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
        let mut after = filter.page_token.as_deref().map(page_token::decode).transpose()?;
        let mut items = Vec::new();
        // Label selectors are applied here, so a page is filled from as many store pages as it takes.
        loop {
            let batch = self
                .store
                .list_instances(&InstanceQuery {
                    project_id: Some(ctx.project.id),
                    state: filter.state,
                    name: filter.name.clone(),
                    after,
                    limit: limit + 1,
                })
                .await
                .map_err(store_err)?;
            let exhausted = batch.len() <= limit as usize;
            for i in batch {
                after = Some(i.id);
                if filter.labels.as_ref().is_none_or(|s| s.matches(&i.labels)) {
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
                Ok(()) => {
                    self.wake();
                    return Ok(next);
                }
                Err(StoreError::Conflict(_)) if if_match.is_none() => continue,
                Err(StoreError::Conflict(_)) => {
                    return Err(DomainError::PreconditionFailed { expected: format!("\"{}\"", current.generation) })
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("instance {id} is being changed by many writers at once; retry")))
    }

    /// Updates several instances at once: all or nothing. When an id appears more than once its last entry
    /// wins; the result lists each instance once, in the order of first appearance.
    pub async fn batch_update(&self, ctx: &Context, entries: Vec<(Uuid, InstancePatch)>) -> Result<Vec<Instance>> {
        ctx.require(Role::Member)?;
        let mut order: Vec<Uuid> = Vec::new();
        let mut latest: BTreeMap<Uuid, InstancePatch> = BTreeMap::new();
        for (id, patch) in entries {
            if !latest.contains_key(&id) {
                order.push(id);
            }
            latest.insert(id, patch);
        }
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let mut set = WriteSet::new();
            let mut updated = Vec::new();
            for id in &order {
                let current = self.instance(ctx, *id).await?;
                let next =
                    apply_patch(&current, &latest[id]).map_err(|e| prefix_error(e, &format!("instance {id}")))?;
                set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
                set.push(instance_event(&ctx.actor, "instance.updated", &next));
                updated.push(next);
            }
            match self.store.apply(set).await {
                Ok(()) => {
                    self.wake();
                    return Ok(updated);
                }
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
            let (op, set) = self.plan_action(ctx, &current, &req).await?;
            match self.store.apply(set).await {
                Ok(()) => {
                    self.enqueue(op.id);
                    return Ok(op);
                }
                Err(StoreError::Conflict(_)) => continue,
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
        let mut params = json!({});
        let mut extra = Vec::new();
        let mut quota = false;
        match req {
            ActionRequest::Scale { instance_type } => {
                params = self.plan_scale(current, &mut next, instance_type, None, false).await?;
                quota = true;
            }
            ActionRequest::ScaleTo { instance_type, gpu_model, across_families, .. } => {
                params =
                    self.plan_scale(current, &mut next, instance_type, gpu_model.as_deref(), *across_families).await?;
                quota = true;
            }
            ActionRequest::ResizeDisk { disk_size_gb } => {
                if *disk_size_gb <= current.disk_size_gb {
                    return Err(DomainError::Conflict(format!(
                        "a disk can only grow: it has {} GB, {} GB was asked",
                        current.disk_size_gb, disk_size_gb
                    )));
                }
                validate_disk("disk_size_gb", *disk_size_gb, 1)?;
                params = json!({ "from": current.disk_size_gb, "to": disk_size_gb });
                next.disk_size_gb = *disk_size_gb;
                quota = true;
            }
            ActionRequest::Reset { template, disk_size_gb } => {
                let template = match template {
                    Some(t) => self
                        .template(ctx, t)
                        .await
                        .map_err(|_| DomainError::invalid("template", format!("no template {t:?}")))?,
                    None => self.template_by_id(current.template_id).await?,
                };
                let disk = disk_size_gb.unwrap_or(current.disk_size_gb);
                validate_disk("disk_size_gb", disk, template.min_disk_gb)?;
                params = json!({ "from_template": current.template_id, "from_disk": current.disk_size_gb, "template": template.id, "disk_size_gb": disk });
                next.template_id = template.id;
                next.template = template.name;
                next.disk_size_gb = disk;
                quota = true;
            }
            ActionRequest::CreateSnapshot { name } => {
                let snapshot = Snapshot {
                    id: nimbus_core::new_id(),
                    project_id: current.project_id,
                    instance_id: current.id,
                    name: name
                        .clone()
                        .unwrap_or_else(|| format!("{}-{}", current.name, nimbus_core::now().unix_timestamp())),
                    state: SnapshotState::Snapshotting,
                    size_gb: current.disk_size_gb,
                    created_at: nimbus_core::now(),
                };
                validate_name("name", &snapshot.name)?;
                params = json!({ "snapshot_id": snapshot.id });
                extra.push(Write::PutRecord(Record::new(
                    SNAPSHOT,
                    snapshot.id,
                    Some(snapshot.project_id),
                    &snapshot.name,
                    &snapshot,
                )));
            }
            ActionRequest::RevertSnapshot { snapshot_id } => {
                let snapshot = self.snapshot(ctx, *snapshot_id).await?;
                if snapshot.instance_id != current.id {
                    return Err(DomainError::invalid(
                        "snapshot_id",
                        format!("snapshot {snapshot_id} is not of instance {}", current.id),
                    ));
                }
                if snapshot.state != SnapshotState::Ready {
                    return Err(DomainError::Conflict(format!("snapshot {snapshot_id} is not ready")));
                }
                params = json!({ "snapshot_id": snapshot_id });
            }
            ActionRequest::DeleteSnapshot { snapshot_id } => {
                let snapshot = self.snapshot(ctx, *snapshot_id).await?;
                if snapshot.instance_id != current.id {
                    return Err(DomainError::invalid(
                        "snapshot_id",
                        format!("snapshot {snapshot_id} is not of instance {}", current.id),
                    ));
                }
                params = json!({ "snapshot_id": snapshot_id });
            }
            ActionRequest::ResetPassword => {
                let template = self.template_by_id(current.template_id).await?;
                if !template.password_enabled {
                    return Err(DomainError::Conflict(format!(
                        "template {} does not support passwords",
                        template.name
                    )));
                }
            }
            ActionRequest::EnableTpm => {
                if current.tpm_enabled {
                    return Err(DomainError::Conflict("the TPM is already enabled".into()));
                }
                if !self.driver_supports_tpm().await {
                    return Err(DomainError::Unsupported(format!(
                        "the {} driver cannot attach a TPM here",
                        self.driver.name()
                    )));
                }
            }
            ActionRequest::ChangeAntiAffinityGroups { join, leave } => {
                self.check_group_refs(ctx, &[], join).await?;
                next.anti_affinity_groups.retain(|g| !leave.contains(g));
                for g in join {
                    if !next.anti_affinity_groups.contains(g) {
                        next.anti_affinity_groups.push(*g);
                    }
                }
                params = json!({ "join": join, "leave": leave });
            }
            ActionRequest::Start
            | ActionRequest::Stop
            | ActionRequest::Reboot
            | ActionRequest::Suspend
            | ActionRequest::Resume
            | ActionRequest::Delete => {}
        }
        let now = nimbus_core::now();
        let op = Operation {
            id: nimbus_core::new_id(),
            project_id: current.project_id,
            kind: action,
            state: OperationState::Pending,
            reason: None,
            message: None,
            target: Target { kind: "instance".into(), id: current.id },
            params,
            result: None,
            state_before: Some(current.state),
            attempts: 0,
            actor: ctx.actor.clone(),
            created_at: now,
            updated_at: now,
        };
        next.state = t.during;
        next.lock_operation_id = Some(op.id);
        next.generation += 1;
        next.updated_at = now;
        let mut set = WriteSet::new();
        set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(current.generation) });
        set.push(Write::PutOperation(op.clone()));
        for w in extra {
            set.push(w);
        }
        set.push(instance_event(&ctx.actor, "instance.updated", &next));
        set.push(operation_event("operation.created", &op));
        if quota {
            set.enforce_quota_of = Some(current.project_id);
        }
        Ok((op, set))
    }

    /// The hardware of a scale: `next` gets the new type's size and GPU model (and family label); the
    /// operation's params keep what it had, for the worker to put back if the scale fails. Within the
    /// family unless `across_families`.
    async fn plan_scale(
        &self,
        current: &Instance,
        next: &mut Instance,
        instance_type: &str,
        gpu_model: Option<&str>,
        across_families: bool,
    ) -> Result<serde_json::Value> {
        let to = self
            .instance_type(instance_type)
            .await
            .map_err(|_| DomainError::invalid("instance_type", format!("no instance type {instance_type:?}")))?;
        let from = self.instance_type(&current.instance_type).await?;
        if to.family != from.family && !across_families {
            return Err(DomainError::Conflict(format!(
                "scale stays within the family: {} is {}, {} is {}",
                from.name, from.family, to.name, to.family
            )));
        }
        let model = self.choose_gpu_model(&to, gpu_model, current.gpu_model.as_deref()).await?;
        if to.name == from.name && model == current.gpu_model {
            return Err(DomainError::Conflict(format!("the instance already is of type {}", to.name)));
        }
        next.instance_type = to.name.clone();
        next.vcpus = to.vcpus;
        next.memory_mib = to.memory_mib;
        next.gpus = to.gpus;
        next.gpu_model = model.clone();
        next.system_labels.insert("nimbus.instance-type.family".into(), to.family.clone());
        Ok(json!({ "from": from.name, "to": to.name, "from_gpu_model": current.gpu_model, "gpu_model": model }))
    }

    /// The GPU model of an instance of `itype`: the one `asked` for, else the one it `keep`s, else the
    /// catalog's default; none for a type without GPUs, which refuses one asked for.
    async fn choose_gpu_model(
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
        let now = nimbus_core::now();
        let op = Operation {
            id: nimbus_core::new_id(),
            project_id: instance.project_id,
            kind: Action::ScheduledStop,
            state: OperationState::Pending,
            reason: None,
            message: Some("expected_shutdown_at reached".into()),
            target: Target { kind: "instance".into(), id: instance.id },
            params: json!({}),
            result: None,
            state_before: Some(instance.state),
            attempts: 0,
            actor: nimbus_core::operation::Actor::system(),
            created_at: now,
            updated_at: now,
        };
        let mut next = instance.clone();
        next.state = t.during;
        next.lock_operation_id = Some(op.id);
        next.expected_shutdown_at = None;
        next.generation += 1;
        next.updated_at = now;
        let mut set = WriteSet::new();
        set.push(Write::PutInstance { instance: next.clone(), expected_generation: Some(instance.generation) });
        set.push(Write::PutOperation(op.clone()));
        set.push(instance_event(&op.actor, "instance.updated", &next));
        set.push(operation_event("operation.created", &op));
        self.store.apply(set).await.map_err(store_err)?;
        self.enqueue(op.id);
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
        match self.driver.console(instance.id).await {
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
        self.driver.console_stream(instance.id).await.map_err(|e| match e {
            nimbus_driver::DriverError::Unsupported(m) => DomainError::Unsupported(m),
            other => DomainError::Internal(other.to_string()),
        })
    }

    pub async fn instance_metrics(&self, ctx: &Context, id: Uuid) -> Result<nimbus_driver::InstanceMetrics> {
        let instance = self.instance(ctx, id).await?;
        self.driver.metrics(instance.id).await.map_err(|e| DomainError::Internal(e.to_string()))
    }

    async fn driver_supports_tpm(&self) -> bool {
        self.driver.supports_tpm()
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
        validate_name("name", name)?;
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
    if let Some(labels_patch) = &patch.labels {
        labels::merge_patch("labels", &mut next.labels, labels_patch)?;
    }
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
    for (dialect, value) in &patch.extensions {
        let slot = next.extensions.entry(dialect.clone()).or_insert(serde_json::Value::Null);
        labels::json_merge_patch(slot, value);
    }
    next.generation += 1;
    next.updated_at = nimbus_core::now();
    Ok(next)
}
