//! `delete`: destroys the instance on the host, then, in the outcome's transaction, releases what only it
//! held (its address, its password, its snapshots' records; its volumes, detached and kept) and leaves its record `destroyed` for
//! `EngineConfig::deleted_retention` (the runner's landing of a delete; removed at once with no retention).

use async_trait::async_trait;
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_driver::DriverResult;
use nimbus_store::Write;
use serde_json::Value;

use super::{NoParams, Saga, StepCx, Succeeded};
use crate::resources::PASSWORD;
use crate::Result;

pub(crate) struct Delete;

#[async_trait]
impl Saga for Delete {
    type Params = NoParams;

    fn steps(_: &NoParams, _: &Operation) -> Vec<&'static str> {
        vec!["destroy"]
    }

    async fn run(cx: &StepCx<'_>, _: &NoParams, _: &'static str) -> DriverResult<Value> {
        cx.driver().destroy(cx.instance.id).await?;
        Ok(Value::Null)
    }

    async fn succeeded(cx: &StepCx<'_>, _: &NoParams, _: &mut Instance, _: &[Value]) -> Result<Succeeded> {
        let id = cx.instance.id;
        let mut writes = vec![
            Write::ReleaseAddresses { owner: id },
            Write::DeleteRecord { kind: PASSWORD.into(), id, expected_generation: None },
        ];
        writes.extend(cx.engine.forget_snapshots_of(cx.instance).await?);
        writes.extend(cx.engine.release_volumes_of(cx.instance).await?);
        Ok(Succeeded { writes, result: None })
    }
}
