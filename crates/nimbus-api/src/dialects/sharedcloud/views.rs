//! What SharedCloud returns: its instance, GPU and user objects, with numeric `type` and `status` and
//! `DD-MM-YYYY HH:MM:SS` times (UTC). Pure rendering of what the engine recorded.

use nimbus_core::catalog::InstanceType;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::tenancy::Account;
use serde_json::{json, Value};
use time::macros::format_description;
use time::OffsetDateTime;

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

/// A GPU model is a GPU instance type.
pub fn is_gpu(t: &InstanceType) -> bool {
    t.gpus > 0
}

pub fn max_num_parallel_jobs(i: &Instance) -> i64 {
    i.extensions
        .get(EXT)
        .and_then(|e| e.get("max_num_parallel_jobs"))
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_MAX_NUM_PARALLEL_JOBS)
}

/// An instance. `itype` is its instance type from the catalog (`None` only if the catalog lost it).
pub fn instance(i: &Instance, itype: Option<&InstanceType>, now: OffsetDateTime) -> Value {
    let gpu = itype.filter(|t| is_gpu(t));
    json!({
        "uuid": i.id,
        "name": i.name,
        "type": if gpu.is_some() { GPU } else { CPU },
        "gpu": gpu.map(|t| t.id),
        "gpu_name": gpu.map_or("n/a".to_string(), |t| t.name.clone()),
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

/// A GPU model: a GPU instance type of the catalog.
pub fn gpu(t: &InstanceType, zone: &str) -> Value {
    json!({
        "uuid": t.id,
        "name": t.name,
        "codename": t.name,
        // The catalog does not know the cores of its GPUs.
        "cuda_cores": Value::Null,
        "is_available": t.authorized && t.zones.iter().any(|z| z == zone),
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
