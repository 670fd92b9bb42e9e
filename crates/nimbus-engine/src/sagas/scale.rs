//! `scale` and `scale_with_restart`: a new instance type (vCPUs, memory, GPUs).
//!
//! Plan: the record takes the new size at once (so the quota is checked on it in the request's
//! transaction); the parameters keep the old type for the failure to put back. A plain scale needs the
//! instance stopped and has no step on the host: the new size applies at the next boot, which reads it from
//! the record. A scale with restart takes a running instance too: `shutdown` and `boot` with the new size,
//! landing in the power state it began in; a stopped one has nothing to do on the host.

use async_trait::async_trait;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::Operation;
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use nimbus_store::Write;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Planned, Saga, StepCx};
use crate::{Engine, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    /// The instance type before, restored if the scale fails.
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub from_gpu_model: Option<String>,
    #[serde(default)]
    pub gpu_model: Option<String>,
}

pub(crate) struct Scale;
pub(crate) struct ScaleWithRestart;

#[async_trait]
impl Saga for Scale {
    type Params = Params;

    fn steps(_: &Params, _: &Operation) -> Vec<&'static str> {
        Vec::new()
    }

    async fn run(_: &StepCx<'_>, _: &Params, _: &'static str) -> DriverResult<Value> {
        Ok(Value::Null)
    }

    async fn failed(cx: &StepCx<'_>, p: &Params, next: &mut Instance, _: u32) -> Result<Vec<Write>> {
        restore(cx.engine, p, next).await;
        Ok(Vec::new())
    }
}

#[async_trait]
impl Saga for ScaleWithRestart {
    type Params = Params;

    fn steps(_: &Params, op: &Operation) -> Vec<&'static str> {
        if op.state_before == Some(InstanceState::Running) {
            vec!["shutdown", "boot"]
        } else {
            Vec::new()
        }
    }

    async fn run(cx: &StepCx<'_>, _: &Params, step: &'static str) -> DriverResult<Value> {
        match step {
            "shutdown" => cx.driver().stop(cx.instance.id, cx.engine.config.stop_grace).await?,
            _ => cx.driver().start(&cx.engine.spec_for_driver(cx.instance).await?).await?,
        }
        Ok(Value::Null)
    }

    async fn failed(cx: &StepCx<'_>, p: &Params, next: &mut Instance, _: u32) -> Result<Vec<Write>> {
        restore(cx.engine, p, next).await;
        Ok(Vec::new())
    }
}

/// Puts the instance type the instance had back on the record.
async fn restore(engine: &Engine, p: &Params, next: &mut Instance) {
    if let Ok(t) = engine.instance_type(&p.from).await {
        next.instance_type = t.name;
        next.vcpus = t.vcpus;
        next.memory_mib = t.memory_mib;
        next.gpus = t.gpus;
        next.system_labels.insert("nimbus.instance-type.family".into(), t.family);
    }
    next.gpu_model = p.from_gpu_model.clone();
}

/// The hardware of a scale: `next` gets the new type's size and GPU model (and family label). Within the
/// family unless `across_families`.
pub(crate) async fn plan(
    engine: &Engine,
    current: &Instance,
    next: &mut Instance,
    instance_type: &str,
    gpu_model: Option<&str>,
    across_families: bool,
) -> Result<Params> {
    let to = engine
        .instance_type(instance_type)
        .await
        .map_err(|_| DomainError::invalid("instance_type", format!("no instance type {instance_type:?}")))?;
    let from = engine.instance_type(&current.instance_type).await?;
    if to.family != from.family && !across_families {
        return Err(DomainError::Conflict(format!(
            "scale stays within the family: {} is {}, {} is {}",
            from.name, from.family, to.name, to.family
        )));
    }
    let model = engine.choose_gpu_model(&to, gpu_model, current.gpu_model.as_deref()).await?;
    if to.name == from.name && model == current.gpu_model {
        return Err(DomainError::Conflict(format!("the instance already is of type {}", to.name)));
    }
    next.instance_type = to.name.clone();
    next.vcpus = to.vcpus;
    next.memory_mib = to.memory_mib;
    next.gpus = to.gpus;
    next.gpu_model = model.clone();
    next.system_labels.insert("nimbus.instance-type.family".into(), to.family.clone());
    Ok(Params { from: from.name, to: to.name, from_gpu_model: current.gpu_model.clone(), gpu_model: model })
}

/// The plan of either kind, quota-checked.
pub(crate) fn planned<K: Saga<Params = Params>>(p: &Params) -> Planned {
    Planned::of::<K>(p).with_quota()
}
