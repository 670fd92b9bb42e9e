//! `reset`: reinstalls the instance from its template (or a new one), wiping the disk, and boots it again
//! if it was running.
//!
//! Plan: the record takes the template and disk size at once (quota-checked). Steps: `shutdown`,
//! `reinstall`, and `boot` when the instance was running. The instance's snapshots are files of their own
//! on the host and outlive the reinstall: they stay, and can be reverted to afterwards. Failure before the
//! reinstall puts the old template back on the record; in every failure the record takes the disk size the
//! host's disk has, and forgets snapshots the host no longer has.

use async_trait::async_trait;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::Operation;
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use nimbus_store::Write;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Planned, Saga, StepCx};
use crate::instances::validate_disk;
use crate::{Context, Engine, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub from_template: Uuid,
    pub from_disk: u64,
    pub template: Uuid,
    pub disk_size_gb: u64,
}

pub(crate) struct Reset;

#[async_trait]
impl Saga for Reset {
    type Params = Params;

    fn steps(_: &Params, op: &Operation) -> Vec<&'static str> {
        if op.state_before == Some(InstanceState::Running) {
            vec!["shutdown", "reinstall", "boot"]
        } else {
            vec!["shutdown", "reinstall"]
        }
    }

    async fn run(cx: &StepCx<'_>, _: &Params, step: &'static str) -> DriverResult<Value> {
        let engine = cx.engine;
        match step {
            "shutdown" => cx.driver().stop(cx.instance.id, engine.config.stop_grace).await?,
            "reinstall" => cx.driver().reinstall(&own_system(cx).await?).await?,
            _ => cx.driver().start(&own_system(cx).await?).await?,
        }
        Ok(Value::Null)
    }

    async fn succeeded(_: &StepCx<'_>, _: &Params, next: &mut Instance, _: &[Value]) -> Result<super::Succeeded> {
        next.rescue = false;
        Ok(super::Succeeded::default())
    }

    async fn failed(cx: &StepCx<'_>, p: &Params, next: &mut Instance, steps_done: u32) -> Result<Vec<Write>> {
        let reinstalled = steps_done >= 2;
        if !reinstalled {
            if let Ok(template) = cx.engine.template_by_id(p.from_template).await {
                next.template_id = template.id;
                next.template = template.name;
            }
        }
        next.disk_size_gb = match cx.driver().disk_size_gb(cx.instance.id).await {
            Ok(size) => size,
            Err(_) if reinstalled => p.disk_size_gb,
            Err(_) => p.from_disk,
        };
        let mut writes = cx.engine.forget_snapshots_gone_from_host(cx.instance).await?;
        writes.extend(cx.engine.boot_volume_follows(next).await?);
        Ok(writes)
    }
}

/// A reset boots the fresh system, never the rescue one a rescued instance ran.
async fn own_system(cx: &StepCx<'_>) -> DriverResult<nimbus_driver::InstanceSpec> {
    Ok(nimbus_driver::InstanceSpec { rescue: false, ..cx.engine.spec_for_driver(cx.instance).await? })
}

pub(crate) async fn plan(
    engine: &Engine,
    ctx: &Context,
    current: &Instance,
    next: &mut Instance,
    template: Option<&str>,
    disk_size_gb: Option<u64>,
) -> Result<Planned> {
    let template = match template {
        Some(t) => {
            engine.template(ctx, t).await.map_err(|_| DomainError::invalid("template", format!("no template {t:?}")))?
        }
        None => engine.template_by_id(current.template_id).await?,
    };
    let disk = disk_size_gb.unwrap_or(current.disk_size_gb);
    validate_disk("disk_size_gb", disk, template.min_disk_gb)?;
    let params = Params {
        from_template: current.template_id,
        from_disk: current.disk_size_gb,
        template: template.id,
        disk_size_gb: disk,
    };
    next.template_id = template.id;
    next.template = template.name;
    next.disk_size_gb = disk;
    Ok(Planned::of::<Reset>(&params).with_quota())
}
