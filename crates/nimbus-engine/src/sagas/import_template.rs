//! `import_template`: takes a disk image (a file on the server's host, or an http(s) URL) in as a template.
//!
//! The first kind whose target is not an instance: its operation targets the template it makes, and no
//! instance is locked or shown in a state. It runs like every saga (claimed under a lease by any server's
//! worker, its progress durable, the crash hook honoured, given up after too many interrupted attempts) by
//! [`run`], the instance-free twin of the runner in `mod.rs`.
//!
//! Plan: the name must be free among the templates the caller sees; the operation records the parameters.
//! Step: `import` on the host (download or copy, checksum, checks of the image, manifest), idempotent per
//! template id. Success inserts the template record with what the host measured (format, size, checksum),
//! so no template is listed before its files are complete. Failure removes whatever the host kept.

use nimbus_core::catalog::{BootMode, Template, Visibility};
use nimbus_core::operation::{Failure, Operation, OperationState, Reason, Target};
use nimbus_core::state_machine::Action;
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_driver::TemplateImport;
use nimbus_store::{StoreError, Write, WriteSet};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{failure_of, Abandon, CrashPoint, CrashWhen};
use crate::catalog::TEMPLATE;
use crate::instances::operation_event;
use crate::{store_err, Context, Engine, Result};

const STEPS: &[&str] = &["import"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub template_id: Uuid,
    pub name: String,
    pub description: String,
    pub source: String,
    pub checksum: Option<String>,
    pub boot_mode: BootMode,
    pub default_user: String,
    pub os_name: String,
    pub os_version: String,
    /// `None`: public (an admin asked).
    pub project_id: Option<Uuid>,
    /// The host that imports it and keeps its files: the server's own when it has one (a path names its
    /// files), else a ready host chosen when the import was asked for. `None` in imports recorded before
    /// hosts: the server's own.
    #[serde(default)]
    pub host: Option<String>,
}

/// A request to import an image as a template.
#[derive(Debug, Clone, Default)]
pub struct ImportTemplate {
    pub name: String,
    pub description: String,
    /// An http(s) URL, or an absolute path on the server's host.
    pub source: String,
    /// `sha256:<hex>`.
    pub checksum: Option<String>,
    /// `true`: the image boots with UEFI (else BIOS).
    pub uefi: bool,
    /// The user cloud-init gives the SSH keys to (`debian`, `ubuntu`...).
    pub default_user: Option<String>,
    pub os_name: String,
    pub os_version: String,
    pub public: bool,
}

impl Engine {
    /// Records the import operation; a worker of any server carries it out.
    pub async fn import_template(&self, ctx: &Context, req: ImportTemplate) -> Result<Operation> {
        ctx.require(if req.public { Role::Operator } else { Role::Member })?;
        nimbus_core::instance::validate_name("name", &req.name)?;
        let source = req.source.trim();
        let is_url = source.starts_with("http://") || source.starts_with("https://");
        if !is_url && !source.starts_with('/') {
            return Err(DomainError::invalid(
                "source",
                "give an http(s) URL or an absolute path of a file on the server's host",
            ));
        }
        if !is_url {
            // A path reads the host's own files (a block device is a raw disk too): the operator's call.
            ctx.require(Role::Operator).map_err(|_| {
                DomainError::Forbidden("importing a file of the server's host needs an operator key; give a URL".into())
            })?;
        }
        if let Some(c) = &req.checksum {
            let hex = c.strip_prefix("sha256:").unwrap_or(c);
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(DomainError::invalid("checksum", "must be sha256:<64 hex digits>"));
            }
        }
        self.refuse_taken_template_name(ctx, &req.name).await?;
        let host = self.import_host(is_url).await?;
        let template_id = nimbus_core::new_id();
        let params = Params {
            template_id,
            name: req.name,
            description: req.description,
            source: source.to_string(),
            checksum: req.checksum,
            boot_mode: if req.uefi { BootMode::Uefi } else { BootMode::Legacy },
            default_user: req.default_user.unwrap_or_else(|| "root".into()),
            os_name: req.os_name,
            os_version: req.os_version,
            project_id: if req.public { None } else { Some(ctx.project.id) },
            host: Some(host),
        };
        let target = Target { kind: "template".into(), id: template_id };
        let mut op = Operation::new(ctx.project.id, Action::ImportTemplate, target, None, ctx.actor.clone());
        op.params = serde_json::to_value(&params).expect("parameters serialize");
        let mut set = WriteSet::new();
        set.push(Write::InsertOperation(op.clone()));
        set.push(operation_event("operation.created", &op));
        self.store.apply(set).await.map_err(store_err)?;
        Ok(op)
    }

    /// The host an import runs on: the server's own, else (for a URL) the first ready host that answers.
    async fn import_host(&self, is_url: bool) -> Result<String> {
        if let Some(local) = &self.local {
            return Ok(local.name.clone());
        }
        if !is_url {
            return Err(DomainError::invalid(
                "source",
                "this server runs no host of its own (--no-local-agent): give an http(s) URL, which a host downloads",
            ));
        }
        self.placement_candidates(false)
            .await?
            .into_values()
            .find(|v| v.reachable && v.host.admin_state == nimbus_core::host::HostState::Ready)
            .map(|v| v.host.name)
            .ok_or_else(|| DomainError::NoCapacity("no ready host answers to import the image".into()))
    }

    /// The driver of the host an import runs on.
    fn import_driver(&self, p: &Params) -> std::sync::Arc<dyn nimbus_driver::Driver> {
        match (&p.host, &self.local) {
            (Some(h), _) => self.host_driver(h),
            (None, Some(local)) => local.driver.clone(),
            (None, None) => self.host_driver(""),
        }
    }

    /// Refuses a template name the caller already sees (their own or a public one).
    pub(crate) async fn refuse_taken_template_name(&self, ctx: &Context, name: &str) -> Result<()> {
        if self.list_templates(ctx).await?.iter().any(|t| t.name == name) {
            return Err(DomainError::Conflict(format!("a template named {name:?} already exists")));
        }
        Ok(())
    }
}

pub(crate) fn step_names() -> Vec<&'static str> {
    STEPS.to_vec()
}

/// Runs a claimed import: its step, or its undo, then its outcome.
pub(crate) async fn run(engine: &Engine, lease_owner: &str, mut op: Operation) -> Result<(), Abandon> {
    let p: Params = match serde_json::from_value(op.params.clone()) {
        Ok(p) => p,
        Err(e) => {
            let failure = Failure {
                state: OperationState::Failure,
                reason: Reason::Fault,
                message: format!("operation {} has unreadable parameters: {e}", op.id),
            };
            return finish(engine, lease_owner, &mut op, Err(failure), WriteSet::new()).await;
        }
    };
    op.progress.steps_total = STEPS.len() as u32;
    if op.attempts > engine.config.max_attempts && op.progress.unwinding.is_none() {
        op.progress.unwinding = Some(Failure {
            state: OperationState::Failure,
            reason: Reason::Interrupted,
            message: format!("interrupted {} times (server restarts or lost leases)", op.attempts - 1),
        });
    }
    let crash = |step: usize, when: CrashWhen, op: &Operation| {
        let point = CrashPoint { kind: op.kind, operation: op.id, step, when };
        engine.config.crash_hook.as_ref().is_some_and(|hook| hook(&point))
    };
    let request = TemplateImport {
        template_id: p.template_id,
        name: p.name.clone(),
        source: p.source.clone(),
        checksum: p.checksum.clone(),
        boot_mode: p.boot_mode,
        default_user: p.default_user.clone(),
    };
    if op.progress.unwinding.is_none() && op.progress.steps_done == 0 {
        if crash(0, CrashWhen::Before, &op) {
            return Err(Abandon::Crashed);
        }
        match engine.import_driver(&p).import_template(&request).await {
            Ok(t) => {
                if crash(0, CrashWhen::After, &op) {
                    return Err(Abandon::Crashed);
                }
                op.progress.outputs = vec![serde_json::to_value(t).expect("templates serialize")];
                op.progress.steps_done = 1;
                op.progress.step = Some(STEPS[0].into());
            }
            Err(e) => {
                tracing::warn!(operation = %op.id, error = %e, "template import failed");
                op.progress.step = Some(STEPS[0].into());
                op.progress.unwinding = Some(failure_of(&e));
            }
        }
    }
    match op.progress.unwinding.clone() {
        None => {
            if crash(STEPS.len(), CrashWhen::Before, &op) {
                return Err(Abandon::Crashed);
            }
            let made: Template = op
                .progress
                .outputs
                .first()
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
                .ok_or_else(|| Abandon::Store(DomainError::Internal("the import step left no template".into())))?;
            let t = Template {
                id: p.template_id,
                project_id: p.project_id,
                name: p.name.clone(),
                description: if p.description.is_empty() { made.description.clone() } else { p.description.clone() },
                os_name: p.os_name.clone(),
                os_version: p.os_version.clone(),
                visibility: if p.project_id.is_none() { Visibility::Public } else { Visibility::Private },
                default_user: p.default_user.clone(),
                host: p.host.clone().or_else(|| engine.local.as_ref().map(|l| l.name.clone())),
                created_at: nimbus_core::now(),
                ..made
            };
            let mut set = WriteSet::new();
            // A retry after a lost lease may find the record already in: replace it rather than fail.
            let write =
                engine.replace_record(TEMPLATE, t.id, t.project_id, &t.name, &t).await.map_err(Abandon::Store)?;
            set.push(write);
            op.result = Some(json!({ "template_id": t.id }));
            finish(engine, lease_owner, &mut op, Ok(()), set).await
        }
        Some(failure) => {
            // Nothing of a failed import stays on the host (the step may have finished unrecorded).
            if let Err(e) = engine.import_driver(&p).remove_template(p.template_id).await {
                tracing::warn!(template = %p.template_id, error = %e, "could not remove a failed import's files");
            }
            finish(engine, lease_owner, &mut op, Err(failure), WriteSet::new()).await
        }
    }
}

/// Records the outcome with `set`, under the lease.
async fn finish(
    engine: &Engine,
    lease_owner: &str,
    op: &mut Operation,
    outcome: std::result::Result<(), Failure>,
    set: WriteSet,
) -> Result<(), Abandon> {
    op.progress.unwinding = None;
    match outcome {
        Ok(()) => {
            op.state = OperationState::Success;
            op.reason = None;
        }
        Err(f) => {
            op.state = f.state;
            op.reason = Some(f.reason);
            op.message = Some(f.message);
        }
    }
    for attempt in 0..crate::instances::CAS_RETRIES {
        if attempt > 0 {
            crate::instances::backoff(attempt).await;
        }
        op.updated_at = nimbus_core::now();
        let mut writes = set.clone();
        writes.push(Write::UpdateOperation { operation: op.clone(), lease_owner: lease_owner.to_string() });
        writes.push(operation_event("operation.updated", op));
        match engine.store.apply(writes).await {
            Ok(()) => {
                engine.count_outcome(op);
                return Ok(());
            }
            Err(StoreError::Conflict(_)) => {
                let held =
                    engine.store.renew_lease(op.id, lease_owner, engine.config.lease).await.map_err(store_err)?;
                if !held {
                    return Err(Abandon::LeaseLost);
                }
            }
            Err(e) => return Err(Abandon::Store(store_err(e))),
        }
    }
    Err(Abandon::Store(DomainError::Internal(format!("could not record the outcome of operation {}", op.id))))
}
