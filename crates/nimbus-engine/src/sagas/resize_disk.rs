//! `resize_disk`: grows a stopped instance's disk.
//!
//! Plan: the record takes the new size at once (quota-checked in the request's transaction). Step: `grow`
//! on the host. A failure, or an operation given up after crashes, leaves the record with the size the
//! host's disk really has, so record and disk never disagree. A boot volume's record takes the size too.

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::DomainError;
use nimbus_driver::DriverResult;
use nimbus_store::Write;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Planned, Saga, StepCx};
use crate::instances::validate_disk;
use crate::Result;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    /// The size before, in GB.
    pub from: u64,
    pub to: u64,
}

pub(crate) struct ResizeDisk;

#[async_trait]
impl Saga for ResizeDisk {
    type Params = Params;

    fn steps(_: &Params, _: &Operation) -> Vec<&'static str> {
        vec!["grow"]
    }

    async fn run(cx: &StepCx<'_>, p: &Params, _: &'static str) -> DriverResult<Value> {
        cx.driver().resize_disk(cx.instance.id, p.to).await?;
        Ok(Value::Null)
    }

    async fn failed(cx: &StepCx<'_>, p: &Params, next: &mut Instance, _: u32) -> Result<Vec<Write>> {
        // The host's disk is the truth: an interrupted grow may or may not have happened.
        next.disk_size_gb = match cx.driver().disk_size_gb(cx.instance.id).await {
            Ok(size) => size,
            Err(_) => p.from,
        };
        cx.engine.boot_volume_follows(next).await
    }
}

pub(crate) fn plan(current: &Instance, next: &mut Instance, disk_size_gb: u64) -> Result<Planned> {
    if disk_size_gb <= current.disk_size_gb {
        return Err(DomainError::Conflict(format!(
            "a disk can only grow: it has {} GB, {} GB was asked",
            current.disk_size_gb, disk_size_gb
        )));
    }
    validate_disk("disk_size_gb", disk_size_gb, 1)?;
    next.disk_size_gb = disk_size_gb;
    Ok(Planned::of::<ResizeDisk>(&Params { from: current.disk_size_gb, to: disk_size_gb }).with_quota())
}
