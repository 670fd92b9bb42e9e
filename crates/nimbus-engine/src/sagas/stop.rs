//! `stop` (and `scheduled_stop`, the same stop begun by Nimbus when an instance's `expected_shutdown_at`
//! comes): a graceful power-down, forced after the grace period; or, asked as a power-off, forced at once
//! (the providers' hard stop). Success lands the instance `stopped`.

use std::time::Duration;

use async_trait::async_trait;
use nimbus_driver::DriverResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Saga, StepCx};

/// Operations written before the power-off existed are `{}`: graceful ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Params {
    /// Pull the plug instead of asking the guest first.
    #[serde(default)]
    pub force: bool,
}

/// Whether `op` is a stop that cut the power at once rather than asking the guest first: what providers that
/// tell the two apart show as a hard power-off.
pub fn is_power_off(op: &nimbus_core::operation::Operation) -> bool {
    op.kind == nimbus_core::state_machine::Action::Stop && op.params.get("force").and_then(Value::as_bool) == Some(true)
}

pub(crate) struct Stop;

#[async_trait]
impl Saga for Stop {
    type Params = Params;

    fn steps(_: &Params, _: &nimbus_core::operation::Operation) -> Vec<&'static str> {
        vec!["shutdown"]
    }

    async fn run(cx: &StepCx<'_>, p: &Params, _step: &'static str) -> DriverResult<Value> {
        let grace = if p.force { Duration::ZERO } else { cx.engine.config.stop_grace };
        cx.driver().stop(cx.instance.id, grace).await?;
        Ok(Value::Null)
    }
}
