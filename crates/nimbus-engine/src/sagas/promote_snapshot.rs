//! `promote_snapshot`: makes a template of one of the instance's snapshots.
//!
//! Plan: checks the snapshot (the caller's, ready) and the new template's name, under the instance's lock
//! (so the snapshot cannot be deleted or the instance destroyed while its disk is copied). Step: `promote` on
//! the host, which writes a standalone copy of the snapshot's disk into the template dir, booting the way
//! the snapshot's template boots. Success inserts the template record (the caller's project's, or public
//! for an admin who asked); the template outlives the snapshot and the instance. Failure (or an operation
//! given up after crashes) removes whatever the host made.

use async_trait::async_trait;
use nimbus_core::catalog::{Template, Visibility};
use nimbus_core::instance::{validate_name, Instance};
use nimbus_core::operation::Operation;
use nimbus_core::resources::SnapshotState;
use nimbus_core::tenancy::Role;
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use nimbus_store::{Record, Write};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{Planned, Saga, StepCx, Succeeded};
use crate::catalog::TEMPLATE;
use crate::{Context, Engine, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub snapshot_id: Uuid,
    pub template_id: Uuid,
    pub name: String,
    pub description: String,
    /// `None`: the snapshot's template's default user.
    pub default_user: Option<String>,
    /// Public (every project sees it) or the caller's project's.
    pub project_id: Option<Uuid>,
}

pub(crate) struct PromoteSnapshot;

#[async_trait]
impl Saga for PromoteSnapshot {
    type Params = Params;

    fn steps(_: &Params, _: &Operation) -> Vec<&'static str> {
        vec!["promote"]
    }

    async fn run(cx: &StepCx<'_>, p: &Params, _: &'static str) -> DriverResult<Value> {
        let t: Template = cx.driver().promote_snapshot(cx.instance.id, p.snapshot_id, p.template_id, &p.name).await?;
        Ok(serde_json::to_value(t).expect("templates serialize"))
    }

    async fn undo(cx: &StepCx<'_>, p: &Params, _: &'static str) -> DriverResult<()> {
        cx.driver().remove_template(p.template_id).await
    }

    async fn succeeded(cx: &StepCx<'_>, p: &Params, _: &mut Instance, outputs: &[Value]) -> Result<Succeeded> {
        let made: Template = outputs
            .first()
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| DomainError::Internal("the promote step left no template".into()))?;
        let t = Template {
            id: p.template_id,
            project_id: p.project_id,
            name: p.name.clone(),
            description: if p.description.is_empty() { made.description.clone() } else { p.description.clone() },
            default_user: p.default_user.clone().unwrap_or(made.default_user.clone()),
            visibility: if p.project_id.is_none() { Visibility::Public } else { Visibility::Private },
            // Its files are on the host of the snapshot's instance.
            host: cx.instance.host.clone(),
            created_at: nimbus_core::now(),
            ..made
        };
        let record = Record::new(TEMPLATE, t.id, t.project_id, &t.name, &t);
        Ok(Succeeded {
            writes: vec![Write::InsertRecord(record)],
            result: Some(json!({ "template_id": t.id, "snapshot_id": p.snapshot_id })),
        })
    }

    async fn failed(cx: &StepCx<'_>, p: &Params, _: &mut Instance, _: u32) -> Result<Vec<Write>> {
        // The step may have finished on the host without being recorded: remove what it may have made.
        if let Err(e) = cx.driver().remove_template(p.template_id).await {
            tracing::warn!(template = %p.template_id, error = %e, "could not remove a failed promotion's files");
        }
        Ok(Vec::new())
    }
}

/// What a promotion asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromoteRequest {
    pub name: String,
    pub description: String,
    pub default_user: Option<String>,
    /// Every project sees it; needs an admin key.
    pub public: bool,
}

pub(crate) async fn plan(
    engine: &Engine,
    ctx: &Context,
    current: &Instance,
    snapshot_id: Uuid,
    req: &PromoteRequest,
) -> Result<Planned> {
    ctx.require(if req.public { Role::Operator } else { Role::Member })?;
    let snapshot = engine.snapshot_of(ctx, current, snapshot_id).await?;
    if snapshot.state != SnapshotState::Ready {
        return Err(DomainError::Conflict(format!("snapshot {snapshot_id} is not ready")));
    }
    validate_name("name", &req.name)?;
    engine.refuse_taken_template_name(ctx, &req.name).await?;
    let params = Params {
        snapshot_id,
        template_id: nimbus_core::new_id(),
        name: req.name.clone(),
        description: req.description.clone(),
        default_user: req.default_user.clone(),
        project_id: if req.public { None } else { Some(ctx.project.id) },
    };
    Ok(Planned::of::<PromoteSnapshot>(&params))
}
