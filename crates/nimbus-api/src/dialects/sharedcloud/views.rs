//! What SharedCloud returns: its instance, GPU and user objects, with numeric `type` and `status` and
//! `DD-MM-YYYY HH:MM:SS` times (UTC). Pure rendering of what the engine recorded.

use nimbus_core::catalog::{GpuModel, InstanceType};
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::tenancy::Account;
use serde_json::{json, Value};
use time::macros::format_description;
use time::OffsetDateTime;
use uuid::Uuid;

/// The extension map key of this dialect on an instance.
pub const EXT: &str = "sharedcloud";

/// `type`: what kind of work the instance takes.
pub const CPU: i64 = 1;
pub const GPU: i64 = 2;
/// `status`: 1 until the instance runs, 2 while it does.
pub const NOT_AVAILABLE: i64 = 1;
pub const AVAILABLE: i64 = 2;
pub const DEFAULT_MAX_NUM_PARALLEL_JOBS: i64 = 1;

/// `%d-%m-%Y %H:%M:%S`, the CLI's `DATETIME_FORMAT`, in UTC.
pub fn time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(format_description!("[day]-[month]-[year] [hour]:[minute]:[second]")).unwrap_or_default()
}

/// The alias kind of SharedCloud's GPU uuids.
pub const GPU_ALIAS: &str = "sharedcloud.gpu";

/// SharedCloud's public uuid of its Titan V, which its CLI's tests use.
const TITAN_V: Uuid = uuid::uuid!("caf0daeb-ba23-4499-b4f9-8b4965714366");

/// The uuid SharedCloud gives a GPU model (unless an older Nimbus stored one as its alias): the public one where it is
/// known, otherwise one derived from the codename under the Titan V's, the same on every server.
pub fn new_gpu_uuid(model: &GpuModel) -> Uuid {
    match model.codename.as_str() {
        "titanv" => TITAN_V,
        other => Uuid::new_v5(&TITAN_V, format!("sharedcloud.gpu.{other}").as_bytes()),
    }
}

/// A GPU model with its SharedCloud uuid.
pub struct Gpu<'a> {
    pub model: &'a GpuModel,
    pub uuid: Uuid,
}

/// SharedCloud's names of GPU models start with a space (" Nvidia Titan V 12GB", as its API lists them
/// and its CLI's tests expect them).
fn gpu_name(model: &GpuModel) -> String {
    format!(" {}", model.name)
}

pub fn max_num_parallel_jobs(i: &Instance) -> i64 {
    i.extension(EXT, "max_num_parallel_jobs").and_then(Value::as_i64).unwrap_or(DEFAULT_MAX_NUM_PARALLEL_JOBS)
}

/// An instance. `itype` is its instance type from the catalog (`None` only if the catalog lost it), `gpus`
/// the GPU models, among which its own.
pub fn instance(i: &Instance, itype: Option<&InstanceType>, gpus: &[Gpu], now: OffsetDateTime) -> Value {
    let gpu = gpus.iter().find(|g| i.gpus > 0 && i.gpu_model.as_deref() == Some(g.model.codename.as_str()));
    json!({
        "uuid": i.id,
        "name": i.name,
        "type": if i.gpus > 0 { GPU } else { CPU },
        "gpu": gpu.map(|g| g.uuid),
        "gpu_name": gpu.map_or("n/a".to_string(), |g| gpu_name(g.model)),
        "status": if i.state == InstanceState::Running { AVAILABLE } else { NOT_AVAILABLE },
        "ask_price": i.price_hourly.or(itype.map(|t| t.price_hourly)).unwrap_or(0.0),
        "max_num_parallel_jobs": max_num_parallel_jobs(i),
        // Nimbus runs no SharedCloud jobs: nothing is ever assigned or running.
        "num_running_jobs": 0,
        "num_assigned_jobs": 0,
        "downloaded_images": [],
        "created_at": time(i.created_at),
        "updated_at": time(i.updated_at),
        // No SharedCloud agent ever connects to a Nimbus instance.
        "last_connection": Value::Null,
        "current_server_time": time(now),
    })
}

/// A GPU model of the catalog; `available` when instances with it can be made here.
pub fn gpu(g: &Gpu, available: bool) -> Value {
    json!({
        "uuid": g.uuid,
        "name": gpu_name(g.model),
        "codename": g.model.codename,
        "cuda_cores": g.model.cuda_cores,
        "is_available": available,
    })
}

pub fn user(a: &Account, now: OffsetDateTime) -> Value {
    json!({
        "uuid": a.id,
        "email": a.email,
        "username": a.username,
        // Nimbus keeps no SharedCloud balance.
        "balance": 0.0,
        "date_joined": time(a.created_at),
        "last_login": a.last_login_at.map(time),
        "current_server_time": time(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_day_first_without_zone() {
        let t = time::macros::datetime!(2018-10-05 16:29:06 UTC);
        assert_eq!(time(t), "05-10-2018 16:29:06");
        let paris = time::macros::datetime!(2018-10-05 18:29:06 +02:00);
        assert_eq!(time(paris), "05-10-2018 16:29:06");
    }
}
