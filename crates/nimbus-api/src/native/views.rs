//! What the native API returns. Kept apart from the domain types so that the wire format changes only on
//! purpose.

use std::collections::BTreeMap;

use nimbus_core::catalog::{InstanceType, Template, Zone};
use nimbus_core::instance::Instance;
use nimbus_core::operation::Operation;
use nimbus_core::resources::{AntiAffinityGroup, SecurityGroup, SecurityGroupRule, Snapshot, SshKey};
use nimbus_core::tenancy::{ApiKey, Project, Quota, Usage};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceView {
    pub id: Uuid,
    pub name: String,
    pub hostname: String,
    pub description: String,
    pub project_id: Uuid,
    pub zone: String,
    pub instance_type: String,
    pub template: String,
    pub template_id: Uuid,
    /// creating, starting, running, stopping, stopped, rebooting, resizing, snapshotting, reverting,
    /// migrating, error, destroying, suspended, unknown (its host stopped answering)
    pub state: String,
    /// Why it shows its state when no action put it there (`host-unreachable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// The host it runs on: shown to operators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Set by Nimbus; a patch never changes them.
    pub system_labels: BTreeMap<String, String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    /// Codename of its GPU model (`titanv`) when it has GPUs.
    pub gpu_model: Option<String>,
    pub disk_size_gb: u64,
    /// Base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    pub ssh_keys: Vec<String>,
    pub security_groups: Vec<Uuid>,
    pub anti_affinity_groups: Vec<Uuid>,
    pub ip_addresses: Vec<String>,
    pub mac_address: String,
    pub protected: bool,
    pub tpm_enabled: bool,
    pub secure_boot: bool,
    /// It runs the host's rescue system (a start with `rescue`), not its own, until it stops.
    pub rescue: bool,
    /// The hourly price its owner set (a marketplace ask price, SharedCloud's `ask_price`); absent when
    /// the instance type's list price applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_hourly: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expected_shutdown_at: Option<OffsetDateTime>,
    /// The operation holding the instance's lock, if one is running.
    pub operation_id: Option<Uuid>,
    /// The volumes attached to it (`/v1/volumes`); shown by `GET /v1/instances` and `GET /v1/instances/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Uuid>>,
    /// The volume it boots from, when its root disk is a volume (also listed in `volumes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_volume: Option<BootVolumeView>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The volume an instance boots from.
#[derive(Debug, Serialize, ToSchema)]
pub struct BootVolumeView {
    pub volume_id: Uuid,
    /// Deleted with the instance; kept (`available`, bootable) otherwise.
    pub delete_on_termination: bool,
}

impl From<&Instance> for InstanceView {
    fn from(i: &Instance) -> Self {
        InstanceView {
            id: i.id,
            name: i.name.clone(),
            hostname: i.hostname.clone(),
            description: i.description.clone(),
            project_id: i.project_id,
            zone: i.zone.clone(),
            instance_type: i.instance_type.clone(),
            template: i.template.clone(),
            template_id: i.template_id,
            state: i.state.as_str().into(),
            state_reason: i.state_reason.clone(),
            host: None,
            labels: i.labels.clone(),
            system_labels: i.system_labels.clone(),
            vcpus: i.vcpus,
            memory_mib: i.memory_mib,
            gpus: i.gpus,
            gpu_model: i.gpu_model.clone(),
            disk_size_gb: i.disk_size_gb,
            user_data: i.user_data.clone(),
            ssh_keys: i.ssh_keys.clone(),
            security_groups: i.security_groups.clone(),
            anti_affinity_groups: i.anti_affinity_groups.clone(),
            ip_addresses: i.ip_addresses.clone(),
            mac_address: i.mac_address.clone(),
            protected: i.protected,
            tpm_enabled: i.tpm_enabled,
            secure_boot: i.secure_boot,
            rescue: i.rescue,
            price_hourly: i.price_hourly,
            expected_shutdown_at: i.expected_shutdown_at,
            operation_id: i.lock_operation_id,
            volumes: None,
            boot_volume: i
                .boot_volume
                .map(|b| BootVolumeView { volume_id: b.id, delete_on_termination: b.delete_on_termination }),
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

impl InstanceView {
    /// The view a caller gets: the host only for operators, who run the hosts.
    pub fn for_caller(ctx: &nimbus_engine::Context, i: &Instance) -> InstanceView {
        let mut view = InstanceView::from(i);
        if ctx.role() == nimbus_core::tenancy::Role::Operator {
            view.host = i.host.clone();
        }
        view
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceList {
    pub items: Vec<InstanceView>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetView {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperationView {
    pub id: Uuid,
    /// create, start, stop, reboot, reset, scale, scale_with_restart, resize_disk, create_snapshot,
    /// revert_snapshot, delete_snapshot, reset_password, enable_tpm, suspend, resume, delete, scheduled_stop
    pub kind: String,
    /// pending, running, success, failure, timeout, cancelled
    pub state: String,
    /// Why it failed: incorrect, unknown, unavailable, forbidden, busy, fault, partial, not-found,
    /// interrupted, unsupported, conflict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub target: TargetView,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub attempts: u32,
    /// How far its steps have come.
    pub progress: ProgressView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&Operation> for OperationView {
    fn from(o: &Operation) -> Self {
        OperationView {
            id: o.id,
            kind: o.kind.as_str().into(),
            state: o.state.as_str().into(),
            reason: o
                .reason
                .map(|r| serde_json::to_value(r).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
            message: o.message.clone(),
            target: TargetView { kind: o.target.kind.clone(), id: o.target.id },
            result: o.result.clone(),
            attempts: o.attempts,
            progress: ProgressView {
                steps_done: o.progress.steps_done,
                steps_total: o.progress.steps_total,
                step: o.progress.step.clone(),
            },
            key_id: o.actor.key_id.clone(),
            request_id: o.actor.request_id.clone(),
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// An operation's steps: how many are done of how many (0 until a worker has taken it up), and the name of
/// the one under way or last done.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressView {
    pub steps_done: u32,
    pub steps_total: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperationList {
    pub items: Vec<OperationView>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectRef {
    pub id: Uuid,
    /// Stable small integer id (Gcore's `project_id`).
    pub numeric_id: i64,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ZoneView {
    pub name: String,
    /// Stable small integer id (Gcore's `region_id`).
    pub numeric_id: i64,
    pub description: String,
}

impl From<&Zone> for ZoneView {
    fn from(z: &Zone) -> Self {
        ZoneView { name: z.name.clone(), numeric_id: z.numeric_id, description: z.description.clone() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ZoneList {
    pub items: Vec<ZoneView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmIView {
    pub key_id: String,
    pub role: String,
    pub project: ProjectRef,
    pub organization: OrganizationRef,
    pub zone: ZoneView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceTypeView {
    pub id: Uuid,
    pub name: String,
    pub family: String,
    pub size: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    pub default_disk_gb: u64,
    pub min_disk_gb: u64,
    pub price_hourly: f64,
    pub price_monthly: f64,
    pub zones: Vec<String>,
    pub authorized: bool,
}

impl From<&InstanceType> for InstanceTypeView {
    fn from(t: &InstanceType) -> Self {
        InstanceTypeView {
            id: t.id,
            name: t.name.clone(),
            family: t.family.clone(),
            size: t.size.clone(),
            vcpus: t.vcpus,
            memory_mib: t.memory_mib,
            gpus: t.gpus,
            default_disk_gb: t.default_disk_gb,
            min_disk_gb: t.min_disk_gb,
            price_hourly: t.price_hourly,
            price_monthly: t.price_monthly,
            zones: t.zones.clone(),
            authorized: t.authorized,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceTypeList {
    pub items: Vec<InstanceTypeView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub os_name: String,
    pub os_version: String,
    pub boot_mode: String,
    pub min_disk_gb: u64,
    pub min_memory_mib: u64,
    pub password_enabled: bool,
    pub ssh_key_enabled: bool,
    pub default_user: String,
    /// public or private
    pub visibility: String,
    pub source: String,
    pub checksum: Option<String>,
    pub size_bytes: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

fn snake<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

impl From<&Template> for TemplateView {
    fn from(t: &Template) -> Self {
        TemplateView {
            id: t.id,
            name: t.name.clone(),
            description: t.description.clone(),
            os_name: t.os_name.clone(),
            os_version: t.os_version.clone(),
            boot_mode: snake(&t.boot_mode),
            min_disk_gb: t.min_disk_gb,
            min_memory_mib: t.min_memory_mib,
            password_enabled: t.password_enabled,
            ssh_key_enabled: t.ssh_key_enabled,
            default_user: t.default_user.clone(),
            visibility: snake(&t.visibility),
            source: t.source.clone(),
            checksum: t.checksum.clone(),
            size_bytes: t.size_bytes,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub items: Vec<TemplateView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotView {
    pub id: Uuid,
    pub instance_id: Uuid,
    pub name: String,
    /// snapshotting, ready, error, deleting
    pub state: String,
    /// `size_bytes` rounded up to whole GiB (at least 1).
    pub size_gb: u64,
    /// What the snapshot's own file takes on the host: the data the instance had written.
    pub size_bytes: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&Snapshot> for SnapshotView {
    fn from(s: &Snapshot) -> Self {
        SnapshotView {
            id: s.id,
            instance_id: s.instance_id,
            name: s.name.clone(),
            state: snake(&s.state),
            size_gb: s.size_gb,
            size_bytes: s.size_bytes,
            created_at: s.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotList {
    pub items: Vec<SnapshotView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SshKeyView {
    pub id: Uuid,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&SshKey> for SshKeyView {
    fn from(k: &SshKey) -> Self {
        SshKeyView {
            id: k.id,
            name: k.name.clone(),
            public_key: k.public_key.clone(),
            fingerprint: k.fingerprint.clone(),
            created_at: k.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SshKeyList {
    pub items: Vec<SshKeyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub key_id: String,
    pub name: String,
    pub project_id: Uuid,
    pub role: String,
    /// Only in the response that created the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl ApiKeyView {
    pub fn without_secret(k: &ApiKey) -> Self {
        ApiKeyView {
            key_id: k.key_id.clone(),
            name: k.name.clone(),
            project_id: k.project_id,
            role: k.role.as_str().into(),
            secret: None,
            created_at: k.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKeyView>,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct QuotaView {
    pub instances: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// The total size of the project's volumes (when setting a quota, left out: the default, 65536).
    #[serde(default = "nimbus_core::tenancy::default_volume_gb")]
    pub volume_gb: u64,
}

impl From<Quota> for QuotaView {
    fn from(q: Quota) -> Self {
        QuotaView {
            instances: q.instances,
            vcpus: q.vcpus,
            memory_mib: q.memory_mib,
            disk_gb: q.disk_gb,
            volume_gb: q.volume_gb,
        }
    }
}

impl From<Usage> for QuotaView {
    fn from(u: Usage) -> Self {
        QuotaView {
            instances: u.instances,
            vcpus: u.vcpus,
            memory_mib: u.memory_mib,
            disk_gb: u.disk_gb,
            volume_gb: u.volume_gb,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    pub id: Uuid,
    pub numeric_id: i64,
    pub organization_id: Uuid,
    pub name: String,
    pub quota: QuotaView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<QuotaView>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&Project> for ProjectView {
    fn from(p: &Project) -> Self {
        ProjectView {
            id: p.id,
            numeric_id: p.numeric_id,
            organization_id: p.organization_id,
            name: p.name.clone(),
            quota: p.quota.into(),
            usage: None,
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    pub items: Vec<ProjectView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecurityGroupRuleView {
    pub id: Uuid,
    pub flow_direction: String,
    pub protocol: String,
    pub start_port: Option<u16>,
    pub end_port: Option<u16>,
    pub network: Option<String>,
    pub description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecurityGroupView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub rules: Vec<SecurityGroupRuleView>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&SecurityGroupRule> for SecurityGroupRuleView {
    fn from(r: &SecurityGroupRule) -> Self {
        SecurityGroupRuleView {
            id: r.id,
            flow_direction: r.flow_direction.clone(),
            protocol: r.protocol.clone(),
            start_port: r.start_port,
            end_port: r.end_port,
            network: r.network.clone(),
            description: r.description.clone(),
        }
    }
}

impl From<&SecurityGroup> for SecurityGroupView {
    fn from(g: &SecurityGroup) -> Self {
        SecurityGroupView {
            id: g.id,
            name: g.name.clone(),
            description: g.description.clone(),
            rules: g.rules.iter().map(Into::into).collect(),
            created_at: g.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecurityGroupList {
    pub items: Vec<SecurityGroupView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AntiAffinityGroupView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&AntiAffinityGroup> for AntiAffinityGroupView {
    fn from(g: &AntiAffinityGroup) -> Self {
        AntiAffinityGroupView {
            id: g.id,
            name: g.name.clone(),
            description: g.description.clone(),
            created_at: g.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AntiAffinityGroupList {
    pub items: Vec<AntiAffinityGroupView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PasswordView {
    pub password: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A console ticket: `url` opens the instance's console websocket without any header, once, until
/// `expires_at` (an open connection outlives it).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsoleTicketView {
    pub url: String,
    /// The ticket alone, for `GET /v1/instances/{id}/console/stream?ticket=`.
    pub ticket: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    pub name: String,
    pub driver: String,
    /// kvm, tcg, or none (sim driver)
    pub accelerator: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// Instances the host runs that no record knows and that this cloud has no history of (after a
    /// restore from a backup: the ones created since). Never touched by Nimbus; an admin may remove one
    /// with `DELETE /v1/host/unknown-instances/{id}`.
    pub unknown_instances: Vec<UnknownHostInstanceView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnknownHostInstanceView {
    pub id: Uuid,
    /// running, stopped, paused or missing, when it was found; null if the host could not tell.
    pub host_state: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub found_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceMetricsView {
    pub cpu_time_ns: u64,
    pub memory_rss_bytes: u64,
    pub disk_used_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// The native error shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// invalid_request, unauthenticated, forbidden, quota_exceeded, not_found, invalid_state, busy, conflict,
    /// precondition_failed, payload_too_large, unsupported, internal
    pub code: String,
    pub message: String,
    pub request_id: String,
}

/// What the guest agent reports.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuestView {
    pub interfaces: Vec<GuestInterfaceView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GuestInterfaceView {
    pub name: String,
    pub mac_address: Option<String>,
    /// `address/prefix`
    pub addresses: Vec<String>,
}
