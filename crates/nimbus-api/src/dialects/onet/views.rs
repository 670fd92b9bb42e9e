//! What ONET returns: the full Instance object of the seed, its nested size, location, VPC, image, IP
//! addresses, volumes and state sync, and the task object of background work. Pure rendering of what the
//! engine recorded; ids of sub-objects Nimbus has no record for are derived from their owner's id.

use nimbus_core::catalog::{InstanceType, Template, Visibility, Zone};
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::{Operation, OperationState};
use nimbus_core::state_machine::Action;
use nimbus_engine::InstanceMetrics;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// The extension map key of this dialect on an instance.
pub const EXT: &str = "onet";
/// Alias kind of the integer `legacy_id`.
pub const LEGACY_ID: &str = "onet.legacy_id";

pub const BILLING_CYCLES: &[&str] =
    &["free", "one_time", "hourly", "monthly", "quarterly", "semi_annually", "annually", "biennially", "triennially"];
pub const DEFAULT_BILLING_CYCLE: &str = "hourly";
/// The cycles a size can be bought by, with their length in months (hourly has none).
const RECURRING: &[(&str, u32)] = &[
    ("hourly", 0),
    ("monthly", 1),
    ("quarterly", 3),
    ("semi_annually", 6),
    ("annually", 12),
    ("biennially", 24),
    ("triennially", 36),
];

/// The catalog has no creation times; its entries are rendered as existing since the Unix epoch.
const CATALOG_TIME: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    // DRF renders microseconds; nanoseconds would be valid RFC 3339 but longer than any ONET client expects.
    let t = t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// A DRF `DecimalField(decimal_places=2)` as ONET renders it: a string, `^-?\d{0,13}(?:\.\d{0,2})?$`.
pub fn decimal(x: f64) -> String {
    let s = format!("{:.2}", if x.is_finite() { x } else { 0.0 });
    if s == "-0.00" {
        "0.00".into()
    } else {
        s
    }
}

/// A stable id for a sub-object (volume, IP address...) that Nimbus only knows as part of its owner.
pub fn derived_id(owner: Uuid, what: &str) -> Uuid {
    Uuid::new_v5(&owner, what.as_bytes())
}

pub fn location_id(zone: &Zone) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.zone.{}", zone.name).as_bytes())
}

pub fn vpc_id(zone: &Zone) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.network.{}", zone.name).as_bytes())
}

/// The ONET billing status of an instance in a Nimbus state: provisioning until first created, active
/// while it exists (stopped or not: a stopped server is still billed), suspended when broken, cancelled
/// while being deleted, terminated once gone.
pub fn status(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Creating => "provisioning",
        // ONET's enum has no "stopped": a VM that is not running (powered off, paused, failed) is the
        // closest it has, `suspended`; `state_sync.vm_status` says which.
        InstanceState::Stopping | InstanceState::Stopped | InstanceState::Suspended | InstanceState::Error => {
            "suspended"
        }
        InstanceState::Destroying => "cancelled",
        InstanceState::Destroyed => "terminated",
        _ => "active",
    }
}

/// The instance's ONET billing cycle (recorded in its extension map at creation or by PUT).
pub fn billing_cycle(i: &Instance) -> String {
    i.extension(EXT, "billing_cycle").and_then(Value::as_str).unwrap_or(DEFAULT_BILLING_CYCLE).to_string()
}

fn ext_str(i: &Instance, key: &str) -> Option<String> {
    i.extension(EXT, key).and_then(Value::as_str).map(str::to_string)
}

/// `t` plus `months` calendar months, the day clamped to the target month's length (Jan 31 + 1 = Feb 28).
fn add_months(t: OffsetDateTime, months: u32) -> OffsetDateTime {
    let total = t.year() * 12 + (u8::from(t.month()) as i32 - 1) + months as i32;
    let (year, month) = (total.div_euclid(12), (total.rem_euclid(12) + 1) as u8);
    let month = time::Month::try_from(month).expect("1..=12");
    let day = t.day().min(month.length(year));
    time::Date::from_calendar_date(year, month, day).map(|d| t.replace_date(d)).unwrap_or(t)
}

/// The current billing period `[start, end)` of a life that began at `created`, for a cycle of `months`
/// (0: hourly).
fn period(created: OffsetDateTime, months: u32, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let now = now.max(created);
    if months == 0 {
        let hours = (now - created).whole_hours();
        let start = created + Duration::hours(hours);
        return (start, start + Duration::hours(1));
    }
    let elapsed =
        (now.year() - created.year()) * 12 + (u8::from(now.month()) as i32 - u8::from(created.month()) as i32);
    let mut k = (elapsed.max(0) as u32) / months * months;
    while k > 0 && add_months(created, k) > now {
        k -= months;
    }
    while add_months(created, k + months) <= now {
        k += months;
    }
    (add_months(created, k), add_months(created, k + months))
}

/// Billing start, end and next billing date: the current period of a recurring cycle; a free or one-time
/// instance has a start and no end.
pub fn billing_dates(
    i: &Instance,
    cycle: &str,
    now: OffsetDateTime,
) -> (Option<OffsetDateTime>, Option<OffsetDateTime>, Option<OffsetDateTime>) {
    let Some(&(_, months)) = RECURRING.iter().find(|(c, _)| *c == cycle) else {
        return (Some(i.created_at), None, None);
    };
    let (start, end) = period(i.created_at, months, now);
    // A cancelled instance is not billed again.
    let next = (!matches!(i.state, InstanceState::Destroying | InstanceState::Destroyed)).then_some(end);
    (Some(start), Some(end), next)
}

pub fn cycle_price(t: &InstanceType, cycle: &str) -> Option<f64> {
    RECURRING.iter().find(|(c, _)| *c == cycle).map(|&(_, months)| match months {
        0 => t.price_hourly,
        m => t.price_monthly * m as f64,
    })
}

pub fn location(zone: &Zone) -> Value {
    json!({
        "id": location_id(zone),
        "name": if zone.description.is_empty() { zone.name.clone() } else { zone.description.clone() },
        "slug": zone.name,
        "country_code": "",
        "created": rfc3339(CATALOG_TIME),
        "modified": rfc3339(CATALOG_TIME),
        "is_active": true,
    })
}

pub fn vpc(zone: &Zone, cidr: &str) -> Value {
    json!({
        "id": vpc_id(zone),
        "name": "default",
        "cidr_block": cidr,
        "location": location(zone),
        "created": rfc3339(CATALOG_TIME),
        "modified": rfc3339(CATALOG_TIME),
        "is_active": true,
    })
}

pub fn size(t: &InstanceType) -> Value {
    let pricing: Vec<Value> = RECURRING
        .iter()
        .map(|&(cycle, _)| {
            json!({
                "id": derived_id(t.id, &format!("pricing.{cycle}")),
                "billing_cycle": cycle,
                "price": decimal(cycle_price(t, cycle).unwrap_or(0.0)),
                "discount_percent": decimal(0.0),
                "is_default": cycle == DEFAULT_BILLING_CYCLE,
                "is_active": true,
            })
        })
        .collect();
    json!({
        "id": t.id,
        "name": t.name,
        "slug": t.name,
        "vcpu": t.vcpus,
        "ram_mb": t.memory_mib,
        // Nimbus does not cap an instance's bandwidth; 0 says "no figure" the way the schema can.
        "bandwidth_mbps": 0,
        "available_volumes": [{
            "id": derived_id(t.id, "volume.default"),
            "volume_type": "ssd",
            "disk_gb": t.default_disk_gb,
            "is_default": true,
            "is_active": true,
        }],
        "pricing_options": pricing,
        "available_addons": [],
        "created": rfc3339(CATALOG_TIME),
        "modified": rfc3339(CATALOG_TIME),
        "cpu_model": "qemu",
        "is_active": t.authorized,
        "description": format!("{} vCPU, {} MiB RAM ({} family)", t.vcpus, t.memory_mib, t.family),
    })
}

pub fn image(t: &Template, organization_id: Uuid) -> Value {
    json!({
        "id": t.id,
        "organization_id": t.project_id.map(|_| organization_id),
        "name": t.name,
        "slug": t.name,
        "os_name": t.os_name,
        "os_version": t.os_version,
        "language": "en",
        "is_windows": t.os_name.to_ascii_lowercase().contains("windows"),
        "requires_license_addon": false,
        "created": rfc3339(t.created_at),
        "modified": rfc3339(t.created_at),
        "description": t.description,
        "visibility": match t.visibility { Visibility::Public => "public", Visibility::Private => "private" },
        "os_architecture": "x86_64",
        "is_active": true,
        "is_featured": false,
        "min_disk_gb": t.min_disk_gb,
        "min_ram_mb": t.min_memory_mib,
    })
}

/// What the rendering of one instance needs beyond the record.
pub struct Context<'a> {
    pub organization_id: Uuid,
    pub zone: &'a Zone,
    pub network_cidr: &'a str,
    pub size: Option<&'a InstanceType>,
    pub template: Option<&'a Template>,
    pub legacy_id: i64,
    pub metrics: Option<InstanceMetrics>,
    pub uptime_secs: i64,
    pub driver: &'a str,
    pub now: OffsetDateTime,
}

fn ip_addresses(i: &Instance, c: &Context) -> Vec<Value> {
    let network = nimbus_engine::network::Network::parse(c.network_cidr).ok();
    let netmask =
        network.map(|n| std::net::Ipv4Addr::from(u32::MAX << (32 - n.prefix)).to_string()).unwrap_or_default();
    let gateway = network.map(|n| n.gateway()).unwrap_or_default();
    let mut seen_v4 = false;
    let mut seen_v6 = false;
    i.ip_addresses
        .iter()
        .map(|address| {
            let v6 = address.contains(':');
            let primary =
                if v6 { !std::mem::replace(&mut seen_v6, true) } else { !std::mem::replace(&mut seen_v4, true) };
            json!({
                "id": derived_id(i.id, &format!("ip.{address}")),
                "address": address,
                "ip_type": if v6 { "ipv6" } else { "ipv4" },
                "interface": 0,
                "netmask": if v6 { String::new() } else { netmask.clone() },
                "gateway": if v6 { String::new() } else { gateway.clone() },
                "network_id": vpc_id(c.zone),
                "vlan": 0,
                "mac_address": i.mac_address,
                "is_primary": primary,
                "created": rfc3339(i.created_at),
                "modified": rfc3339(i.updated_at),
                "reverse_dns": i.hostname,
            })
        })
        .collect()
}

fn state_sync(i: &Instance, c: &Context) -> Value {
    let Some(m) = &c.metrics else { return Value::Null };
    const MIB: f64 = 1024.0 * 1024.0;
    // CPU time over wall time across the instance's vCPUs since it last booted, as a percentage.
    let capacity_ns = c.uptime_secs as f64 * 1e9 * i.vcpus.max(1) as f64;
    let cpu = if capacity_ns > 0.0 { (m.cpu_time_ns as f64 / capacity_ns * 100.0).min(100.0) } else { 0.0 };
    json!({
        "id": derived_id(i.id, "state_sync"),
        "vm_status": i.state.as_str(),
        "last_synced_at": rfc3339(c.now),
        "uptime": c.uptime_secs.clamp(0, i32::MAX as i64),
        "cpu_usage": decimal(cpu),
        "memory_usage_mb": (m.memory_rss_bytes as f64 / MIB).round() as u64,
        "disk_usage_gb": decimal(m.disk_used_bytes as f64 / (MIB * 1024.0)),
        "network_in_bytes": m.net_rx_bytes,
        "network_out_bytes": m.net_tx_bytes,
        "sync_source": c.driver,
    })
}

pub fn instance(i: &Instance, c: &Context) -> Value {
    let cycle = billing_cycle(i);
    let (start, end, next) = billing_dates(i, &cycle, c.now);
    let ips = ip_addresses(i, c);
    let primary =
        |kind: &str| ips.iter().find(|a| a["ip_type"] == kind && a["is_primary"] == true).map(|a| a["id"].clone());
    let cancelled = matches!(i.state, InstanceState::Destroying | InstanceState::Destroyed);
    let alive = !cancelled;
    let bandwidth_gb = c
        .metrics
        .as_ref()
        .map(|m| (m.net_rx_bytes + m.net_tx_bytes) as f64 / (1024.0 * 1024.0 * 1024.0))
        .unwrap_or(0.0);
    let os_name = ext_str(i, "os_name").or_else(|| c.template.map(|t| t.os_name.clone())).unwrap_or_default();
    json!({
        "id": i.id,
        "legacy_id": c.legacy_id,
        "organization_id": c.organization_id,
        "project_id": i.project_id,
        "name": i.name,
        "status": status(i.state),
        "size": c.size.map(size),
        "location": location(c.zone),
        "vpc": vpc(c.zone, c.network_cidr),
        "image": c.template.map(|t| image(t, c.organization_id)),
        "os_name": os_name,
        "primary_ipv4": primary("ipv4"),
        "primary_ipv6": primary("ipv6"),
        "ip_addresses": ips,
        "volumes": [{
            "id": derived_id(i.id, "volume.root"),
            "name": format!("{}-root", i.name),
            "size_gb": i.disk_size_gb,
            "status": match i.state {
                InstanceState::Creating => "pending",
                InstanceState::Destroying | InstanceState::Destroyed => "deleting",
                InstanceState::Error => "error",
                _ => "active",
            },
            "disk_name": "vda",
            "location": location(c.zone),
            // The root disk's price is part of the size's; it is not billed apart.
            "price_monthly": decimal(0.0),
            "is_active": alive,
            "created": rfc3339(i.created_at),
        }],
        "billing_start_date": start.map(rfc3339),
        "billing_end_date": end.map(rfc3339),
        "next_billing_date": next.map(rfc3339),
        // Deletion is the cancellation: it began when the instance entered `destroying`.
        "cancellation_requested_at": cancelled.then(|| rfc3339(i.updated_at)),
        "cancellation_reason": ext_str(i, "cancellation_reason"),
        "bandwidth_used_gb": decimal(bandwidth_gb),
        "is_active": alive,
        "is_installed": !matches!(i.state, InstanceState::Creating | InstanceState::Destroyed),
        "state_sync": state_sync(i, c),
        "created": rfc3339(i.created_at),
        "modified": rfc3339(i.updated_at),
        "hostname": i.hostname,
        "billing_cycle": cycle,
        "tags": tags(i),
    })
}

/// ONET's `tags` are any JSON. A map of strings is the instance's labels; anything else is kept verbatim in
/// the extension map (and the labels emptied), shown while the instance has no labels of its own.
pub fn tags(i: &Instance) -> Value {
    match i.extension(EXT, "tags") {
        // Kept as `[value]` (see the handlers' `extension`).
        Some(Value::Array(wrapped)) if i.labels.is_empty() && wrapped.len() == 1 => wrapped[0].clone(),
        _ => json!(i.labels),
    }
}

/// ONET's task types: `stop_vps` cuts the power and `shutdown_vps` asks the guest first; `reset_vps` resets
/// the VM and `reboot_vps` asks the guest to reboot (see the handlers' `power`).
fn task_type(op: &Operation) -> String {
    match op.kind {
        Action::Create => "create_vps".into(),
        Action::Delete => "delete_vps".into(),
        Action::Start => "start_vps".into(),
        Action::Stop if nimbus_engine::is_power_off(op) => "stop_vps".into(),
        Action::Stop | Action::ScheduledStop => "shutdown_vps".into(),
        Action::Reboot if nimbus_engine::is_hard_reboot(op) => "reset_vps".into(),
        Action::Reboot => "reboot_vps".into(),
        // A reinstall from the image.
        Action::Reset => "reinstall_vps".into(),
        Action::Scale | Action::ResizeDisk => "resize_vps".into(),
        other => format!("{}_vps", other.as_str().replace('-', "_")),
    }
}

/// An operation as ONET's compute task.
pub fn task(op: &Operation, instance_name: Option<&str>, max_retries: u32) -> Value {
    let status = match op.state {
        OperationState::Pending => "pending",
        OperationState::Running => "running",
        OperationState::Success => "completed",
        OperationState::Failure | OperationState::Timeout => "failed",
        OperationState::Cancelled => "cancelled",
    };
    let started = (op.state != OperationState::Pending).then(|| rfc3339(op.created_at));
    let completed = op.state.is_final().then(|| rfc3339(op.updated_at));
    json!({
        "id": op.id,
        "instance_id": op.target.id,
        "instance": {"id": op.target.id, "name": instance_name},
        "task_type": task_type(op),
        "status": status,
        "result": op.result.clone().or_else(|| op.message.clone().map(Value::String)),
        "started_at": started,
        "completed_at": completed,
        "retry_count": op.attempts.saturating_sub(1),
        "created": rfc3339(op.created_at),
        "modified": rfc3339(op.updated_at),
        "created_by": null,
        "parameters": op.params,
        "max_retries": max_retries,
    })
}

/// A console session: what opens the instance's serial console.
pub fn console_session(id: &str, instance_id: Uuid, url: &str, expires_at: Option<OffsetDateTime>) -> Value {
    json!({
        "id": id,
        "instance_id": instance_id,
        "url": url,
        "protocol": "websocket",
        "expires_at": expires_at.map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn monthly_periods_clamp_to_short_months() {
        let created = datetime!(2024-01-31 10:00 UTC);
        let (s, e) = period(created, 1, datetime!(2024-02-29 11:00 UTC));
        assert_eq!((s, e), (datetime!(2024-02-29 10:00 UTC), datetime!(2024-03-31 10:00 UTC)));
        let (s, e) = period(created, 3, datetime!(2024-01-31 10:00 UTC));
        assert_eq!((s, e), (created, datetime!(2024-04-30 10:00 UTC)));
        let (s, e) = period(created, 0, datetime!(2024-01-31 12:30 UTC));
        assert_eq!((s, e), (datetime!(2024-01-31 12:00 UTC), datetime!(2024-01-31 13:00 UTC)));
    }

    #[test]
    fn decimals_have_two_places() {
        assert_eq!(decimal(0.0), "0.00");
        assert_eq!(decimal(-0.001), "0.00");
        assert_eq!(decimal(7.3), "7.30");
    }
}
