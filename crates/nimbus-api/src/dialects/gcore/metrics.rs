//! `POST .../metrics` and `GET .../get_console`: what the host measures of an instance, and its console.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::Json;
use serde_json::{json, Value};

use super::common::{query_one, query_pairs, query_usize, BodyMap, OneInstance};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::views;
use crate::AppState;

/// `POST .../metrics`: the host measures totals, not series, so the answer is one sample at the present:
/// CPU and memory use, and the average network rates since the last boot.
pub async fn metrics(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    uri: Uri,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    if !map.get("time_interval").is_some_and(Value::is_u64) {
        errors.add("time_interval", "Field required: a positive integer");
    }
    if !matches!(map.get("time_unit").and_then(Value::as_str), Some("hour" | "day")) {
        errors.add("time_unit", "Input should be 'hour' or 'day'");
    }
    errors.check()?;
    let q = query_pairs(&uri);
    let m = app.engine.instance_metrics(&r.ctx, instance.id).await.unwrap_or_default();
    let booted = app.engine.last_booted_at(&r.ctx, instance.id).await?;
    let up = booted.map_or(0.0, |t| (nimbus_core::now() - t).as_seconds_f64().max(0.0));
    let rate = |total: u64| if up > 0.0 { total as f64 / up } else { 0.0 };
    let cpu = if up > 0.0 { m.cpu_time_ns as f64 / (up * 1e9 * instance.vcpus.max(1) as f64) * 100.0 } else { 0.0 };
    let memory = m.memory_rss_bytes as f64 / (instance.memory_mib.max(1) as f64 * 1024.0 * 1024.0) * 100.0;
    let sample = json!({
        "time": views::rfc3339(nimbus_core::now()),
        "cpu_util": cpu.min(100.0),
        "memory_util": memory.min(100.0),
        // Gcore's network "Bps" are bits per second.
        "network_Bps_ingress": rate(m.net_rx_bytes) * 8.0,
        "network_Bps_egress": rate(m.net_tx_bytes) * 8.0,
        "network_pps_ingress": null,
        "network_pps_egress": null,
        "disks": [],
    });
    let offset = query_usize(&q, "offset")?.unwrap_or(0);
    let results: Vec<Value> =
        std::iter::once(sample).skip(offset).take(query_usize(&q, "limit")?.unwrap_or(1)).collect();
    Ok(Json(json!({ "count": 1, "results": results })))
}

/// `get_console`: the serial console, as a single-use URL to the native interactive stream that needs no
/// API secret (it expires 60 seconds after it is made, like the provider's console links).
pub async fn console(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    headers: HeaderMap,
    uri: Uri,
) -> GcoreResult<Json<Value>> {
    let q = query_pairs(&uri);
    match query_one(&q, "console_type") {
        None | Some("serial") => {}
        Some(other) => {
            return Err(GcoreError::bad_request(format!("Console type {other:?} is not available; use serial")))
        }
    }
    let ticket = app.engine.console_ticket(&r.ctx, instance.id).await?;
    let url = crate::native::instances::console_url(&headers, &ticket).url;
    Ok(Json(json!({ "remote_console": { "protocol": "serial", "type": "serial", "url": url } })))
}
