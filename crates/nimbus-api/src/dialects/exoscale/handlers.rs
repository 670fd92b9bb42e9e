//! Exoscale's compute instance endpoints: create, list, get, update, delete, reset of a field, the
//! `:action` verbs, the password, the console URL, the instance's reverse DNS, and the operations they
//! answer with. Each handler checks the signature (the [`Signed`] extractor), translates the request into
//! engine calls and renders Exoscale's objects.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use nimbus_core::catalog::{InstanceType, Template};
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::labels::{Labels, Selector};
use nimbus_core::networking::{ElasticIp, PrivateNetwork};
use nimbus_core::resources::{SecurityGroup, Snapshot, SshKey};
use nimbus_core::state_machine::Action;
use nimbus_core::DomainError;
use nimbus_engine::{ActionRequest, Context, CreateInstance, InstanceFilter, InstancePatch, InstanceWindow};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::auth::Signed;
use super::errors::{ExoError, ExoResult};
use super::views::{self, EXT};
use crate::AppState;

const DIALECT: &str = "exoscale";
/// The kind of this dialect's operation receipts (see [`receipt`]).
const RECEIPT: &str = "operation";
const MIN_DISK: u64 = 10;
/// Exoscale's largest disk is 51200 GiB; Nimbus's own limit is lower, and a client is told the one that holds.
const MAX_DISK: u64 = if nimbus_engine::MAX_DISK_GB < 51200 { nimbus_engine::MAX_DISK_GB } else { 51200 };
/// The longest `GET /v2/operation/{id}` holds a pending operation before answering.
const OPERATION_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// A reference to another resource in a request body. Exoscale's Go clients (egoscale v3, so the `exo`
/// CLI and the Terraform provider) send the whole object they listed, zero-valued fields included:
/// `{"authorized": true, "cpus": 1, "family": "standard", "id": "…", …}` for an instance type,
/// `{"created-at": "0001-01-01T00:00:00Z", "id": "…"}` for a template. Only `id`, and `name` where the
/// spec lets the resource be named, are read; every other field is ignored and an empty string is no value.
#[derive(Debug, Default, Deserialize)]
pub struct Ref {
    id: Option<String>,
    name: Option<String>,
}

impl Ref {
    /// The referenced id, if one was given; `field` names the reference in the error.
    pub fn id(&self, field: &str) -> ExoResult<Option<Uuid>> {
        match self.id.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => Uuid::parse_str(s)
                .map(Some)
                .map_err(|_| ExoError::bad_request(format!("Invalid parameter {field}: {s:?} is not an id"))),
        }
    }

    pub fn required_id(&self, field: &str) -> ExoResult<Uuid> {
        self.id(field)?.ok_or_else(|| ExoError::bad_request(format!("Invalid parameter {field}: give its id")))
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref().filter(|s| !s.is_empty())
    }

    fn has_id(&self) -> bool {
        self.id.as_deref().is_some_and(|s| !s.is_empty())
    }
}

/// The instance type a reference names (by id: the spec has no other way).
async fn referenced_instance_type(app: &AppState, r: &Ref) -> ExoResult<InstanceType> {
    let id = r.required_id("instance-type")?;
    app.engine
        .instance_type(&id.to_string())
        .await
        .map_err(|_| ExoError::bad_request(format!("Invalid parameter instance-type: no instance type {id}")))
}

/// The SSH keys a create names: Exoscale addresses keys by name.
fn referenced_ssh_keys(refs: Vec<Ref>, field: &str) -> ExoResult<Vec<String>> {
    refs.iter()
        .map(|r| {
            r.name()
                .map(str::to_string)
                .ok_or_else(|| ExoError::bad_request(format!("Invalid parameter {field}: give the key's name")))
        })
        .collect()
}

/// Security groups and anti-affinity groups are referenced by id or, in the spec, by name: `named` is the
/// caller's groups as (id, name), read only when some reference has no id.
fn referenced_groups(refs: &[Ref], field: &str, named: &[(Uuid, String)]) -> ExoResult<Vec<Uuid>> {
    refs.iter()
        .map(|r| match (r.id(field)?, r.name()) {
            (Some(id), _) => Ok(id),
            (None, Some(name)) => named
                .iter()
                .find(|(_, n)| n == name)
                .map(|(id, _)| *id)
                .ok_or_else(|| ExoError::bad_request(format!("Invalid parameter {field}: no group named {name:?}"))),
            (None, None) => Err(ExoError::bad_request(format!("Invalid parameter {field}: give its id or name"))),
        })
        .collect()
}

pub fn parse_id(what: &str, id: &str) -> ExoResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ExoError::not_found(what))
}

/// What rendering instances needs from the catalog and the referenced resources, read once per request.
pub struct Renderer {
    pub zones: Vec<String>,
    pub types: Vec<InstanceType>,
    pub templates: Vec<Template>,
    pub ssh_keys: Vec<SshKey>,
    pub security_groups: Vec<SecurityGroup>,
    pub snapshots: Vec<Snapshot>,
    pub private_networks: Vec<PrivateNetwork>,
    pub elastic_ips: Vec<ElasticIp>,
}

impl Renderer {
    pub async fn new(app: &AppState, ctx: &Context) -> ExoResult<Renderer> {
        Ok(Renderer {
            zones: zone_names(app),
            types: app.engine.list_instance_types().await?,
            templates: app.engine.list_templates(ctx).await?,
            ssh_keys: app.engine.list_ssh_keys(ctx).await?,
            security_groups: app.engine.list_security_groups(ctx).await?,
            snapshots: app.engine.list_snapshots(ctx, None).await?,
            private_networks: app.engine.list_private_networks(ctx).await?,
            elastic_ips: app.engine.list_elastic_ips(ctx).await?,
        })
    }

    async fn context<'a>(&'a self, app: &AppState, ctx: &Context, i: &Instance) -> views::InstanceContext<'a> {
        // A snapshot in progress shows the power state it began in, which its operation recorded.
        let state_before = match (i.state, i.lock_operation_id) {
            (InstanceState::Snapshotting, Some(op)) => {
                app.engine.operation(ctx, op).await.ok().and_then(|op| op.state_before)
            }
            _ => None,
        };
        views::InstanceContext {
            zones: &self.zones,
            instance_type: self.types.iter().find(|t| t.name == i.instance_type),
            template: self.templates.iter().find(|t| t.id == i.template_id),
            ssh_keys: &self.ssh_keys,
            security_groups: &self.security_groups,
            snapshots: self.snapshots.iter().filter(|s| s.instance_id == i.id).map(|s| s.id).collect(),
            // In the instance's order of attachment; the lease carries the interface's MAC.
            private_networks: i
                .private_networks
                .iter()
                .filter_map(|n| self.private_networks.iter().find(|p| p.id == *n))
                .filter_map(|p| p.lease_of(i.id).map(|l| (p.id, l.mac_address.clone())))
                .collect(),
            elastic_ips: self.elastic_ips.iter().filter(|e| e.instances.contains(&i.id)).map(|e| e.id).collect(),
            state_before,
            ipv6_address: app.engine.ipv6_address(i.id),
        }
    }

    pub async fn instance(&self, app: &AppState, ctx: &Context, i: &Instance) -> Value {
        let c = self.context(app, ctx, i).await;
        views::instance(i, &c)
    }

    pub async fn summary(&self, app: &AppState, ctx: &Context, i: &Instance) -> Value {
        let c = self.context(app, ctx, i).await;
        views::instance_summary(i, &c)
    }
}

/// Records a change done at request time as a finished operation that `GET /v2/operation/{id}` finds
/// (the Python SDK's `wait` always polls it), and returns it.
pub async fn receipt(app: &AppState, ctx: &Context, reference: Value) -> ExoResult<Json<Value>> {
    let id = nimbus_core::new_id();
    let op = views::receipt(id, reference);
    app.engine.put_dialect_record(ctx, DIALECT, RECEIPT, id, &op).await?;
    Ok(Json(op))
}

fn instance_ref(id: Uuid) -> Value {
    views::reference("instance", id, &id.to_string())
}

// Zones.

/// The public base URL of this dialect, as the client reached it: what zones advertise as `api-endpoint`
/// (the `exo` CLI switches to it for zone-scoped commands).
fn api_endpoint(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}/v2")
}

/// The names of this server's zone, as the operator gave them (`--zone`, repeatable): Exoscale clients
/// find their zone by name in `GET /v2/zone`, and the one zone answers to each of them.
pub fn zone_names(app: &AppState) -> Vec<String> {
    let config = app.engine.config();
    let mut names = vec![config.zone.clone()];
    for alias in &config.zone_aliases {
        if !names.contains(alias) {
            names.push(alias.clone());
        }
    }
    names
}

/// `GET /v2/zone`: anonymous, as the Python SDK calls it without credentials. Every name of the zone has
/// the same endpoint, this server's `/v2`.
pub async fn list_zones(State(app): State<AppState>, headers: HeaderMap) -> ExoResult<Json<Value>> {
    let endpoint = api_endpoint(&headers);
    let zones: Vec<Value> = zone_names(&app).iter().map(|name| views::zone(name, &endpoint)).collect();
    Ok(Json(json!({ "zones": zones })))
}

// Operations.

pub async fn get_operation(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id("Operation")?;
    // Clients poll every 3 s or more; holding a pending operation up to a second lets most of them see
    // the end of a short one at their first poll instead of one sleep later.
    match app.engine.wait_operation(&signed.ctx, id, OPERATION_HOLD).await {
        Ok(op) => Ok(Json(views::operation(&op))),
        Err(DomainError::NotFound { .. }) => app
            .engine
            .dialect_record(&signed.ctx, DIALECT, RECEIPT, id)
            .await?
            .map(Json)
            .ok_or_else(|| ExoError::not_found("Operation")),
        Err(e) => Err(e.into()),
    }
}

// Instances.

pub async fn list(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let q = &signed.query;
    // Nimbus instances have no manager (instance pool, SKS node pool): filtering by one finds none.
    if q.contains_key("manager-id") || q.contains_key("manager-type") {
        return Ok(Json(json!({ "instances": [] })));
    }
    let selector = match q.get("labels") {
        Some(s) => Some(Selector::parse(s).map_err(ExoError::from)?),
        None => None,
    };
    let renderer = Renderer::new(&app, ctx).await?;
    // An instance is found by its own address, its IPv6 one, or an elastic IP attached to it (`exo compute
    // elastic-ip show` looks the holder of an elastic IP up so).
    let has_address = |i: &Instance, ip: &String| {
        i.ip_addresses.contains(ip)
            || (views::ext_str(i, "public-ip-assignment") == Some("dual")
                && ip.parse() == Ok(app.engine.ipv6_address(i.id)))
            || renderer.elastic_ips.iter().any(|e| e.ip.to_string() == *ip && e.instances.contains(&i.id))
    };
    // Exoscale's list is not paged: what the store can choose by (an IPv4 address, the indexed labels) it
    // chooses by, and an elastic IP's instances are added by id.
    let candidates = match q.get("ip-address") {
        Some(ip) if ip.parse::<std::net::Ipv4Addr>().is_ok() => {
            let own = InstanceWindow { ip_contains: Some(ip.clone()), ..Default::default() };
            let mut found = app.engine.instance_window(ctx, &own).await?.items;
            let holders = renderer.elastic_ips.iter().filter(|e| e.ip.to_string() == *ip).flat_map(|e| &e.instances);
            for id in holders {
                if !found.iter().any(|i| i.id == *id) {
                    if let Ok(i) = app.engine.instance(ctx, *id).await {
                        found.push(i);
                    }
                }
            }
            found.sort_by_key(|i| i.id);
            found
        }
        // An IPv6 address is derived from the instance's id, which no index holds.
        _ => {
            app.engine
                .all_instances_where(ctx, InstanceFilter { labels: selector.clone(), ..Default::default() })
                .await?
        }
    };
    let mut items = Vec::new();
    for i in candidates {
        if q.get("ip-address").is_some_and(|ip| !has_address(&i, ip)) {
            continue;
        }
        if selector.as_ref().is_some_and(|s| !s.matches(&i.labels)) {
            continue;
        }
        items.push(renderer.summary(&app, ctx, &i).await);
    }
    Ok(Json(json!({ "instances": items })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct CreateBody {
    disk_size: Option<u64>,
    instance_type: Option<Ref>,
    template: Option<Ref>,
    name: Option<String>,
    labels: Option<Labels>,
    auto_start: Option<bool>,
    user_data: Option<String>,
    ssh_keys: Option<Vec<Ref>>,
    ssh_key: Option<Ref>,
    security_groups: Option<Vec<Ref>>,
    anti_affinity_groups: Option<Vec<Ref>>,
    deploy_target: Option<Ref>,
    public_ip_assignment: Option<String>,
    ipv6_enabled: Option<bool>,
    secureboot_enabled: Option<bool>,
    tpm_enabled: Option<bool>,
    application_consistent_snapshot_enabled: Option<bool>,
}

fn check_disk(size: u64) -> ExoResult<u64> {
    if (MIN_DISK..=MAX_DISK).contains(&size) {
        Ok(size)
    } else {
        Err(ExoError::bad_request(format!(
            "Invalid parameter disk-size: {size} is not between {MIN_DISK} and {MAX_DISK} GiB"
        )))
    }
}

/// `dual` gives the instance an IPv6 address besides its IPv4 one, from the operator's prefix.
fn check_ip_assignment(given: Option<&str>) -> ExoResult<()> {
    match given {
        None | Some("inet4") | Some("dual") | Some("none") => Ok(()),
        Some(other) => Err(ExoError::bad_request(format!(
            "Invalid parameter public-ip-assignment: {other:?} is not one of inet4, dual, none"
        ))),
    }
}

pub async fn create(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let body: CreateBody = signed.json()?;
    let missing = |f: &str| ExoError::bad_request(format!("Missing parameter {f}"));
    let disk = check_disk(body.disk_size.ok_or_else(|| missing("disk-size"))?)?;
    let itype = referenced_instance_type(&app, &body.instance_type.ok_or_else(|| missing("instance-type"))?).await?;
    let template_id = body.template.ok_or_else(|| missing("template"))?.required_id("template")?;
    if body.deploy_target.is_some_and(|t| t.has_id()) {
        return Err(ExoError::bad_request("Invalid parameter deploy-target: this zone has no deploy targets"));
    }
    check_ip_assignment(body.public_ip_assignment.as_deref())?;
    // The deprecated `ipv6-enabled` is the dual assignment of before.
    let assignment = match (body.public_ip_assignment, body.ipv6_enabled) {
        (None, Some(true)) => "dual".to_string(),
        (Some(a), _) => a,
        (None, _) => "inet4".to_string(),
    };
    let mut ssh_keys = referenced_ssh_keys(body.ssh_keys.unwrap_or_default(), "ssh-keys")?;
    if let Some(k) = body.ssh_key {
        let name = referenced_ssh_keys(vec![k], "ssh-key")?.remove(0);
        if !ssh_keys.contains(&name) {
            ssh_keys.insert(0, name);
        }
    }
    // Groups' names are read only when some reference has no id.
    let refs = body.security_groups.unwrap_or_default();
    let named = match refs.iter().all(Ref::has_id) {
        true => vec![],
        false => app.engine.list_security_groups(ctx).await?.into_iter().map(|g| (g.id, g.name)).collect(),
    };
    let security_groups = referenced_groups(&refs, "security-groups", &named)?;
    let refs = body.anti_affinity_groups.unwrap_or_default();
    let named = match refs.iter().all(Ref::has_id) {
        true => vec![],
        false => app.engine.list_anti_affinity_groups(ctx).await?.into_iter().map(|g| (g.id, g.name)).collect(),
    };
    let anti_affinity_groups = referenced_groups(&refs, "anti-affinity-groups", &named)?;
    let mut ext = Map::new();
    ext.insert("public-ip-assignment".into(), json!(assignment));
    ext.insert(
        "application-consistent-snapshot-enabled".into(),
        json!(body.application_consistent_snapshot_enabled.unwrap_or(false)),
    );
    let mut extensions = BTreeMap::new();
    extensions.insert(EXT.to_string(), Value::Object(ext));
    let name = body.name.unwrap_or_else(|| format!("instance-{}", &Uuid::new_v4().simple().to_string()[..8]));
    let (op, _) = app
        .engine
        .create_instance(
            ctx,
            CreateInstance {
                name,
                instance_type: itype.name,
                template: template_id.to_string(),
                disk_size_gb: Some(disk),
                labels: body.labels.unwrap_or_default(),
                user_data: body.user_data,
                ssh_keys,
                security_groups,
                anti_affinity_groups,
                auto_start: body.auto_start.unwrap_or(true),
                tpm_enabled: body.tpm_enabled.unwrap_or(false),
                secure_boot: body.secureboot_enabled.unwrap_or(false),
                extensions,
                ..Default::default()
            },
        )
        .await?;
    Ok(Json(views::operation(&op)))
}

/// `GET /v2/instance/{id}` and `GET /v2/instance/{id}:password`.
pub async fn get_segment(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    match signed.id_and_action("Instance")? {
        (id, None) => {
            let i = app.engine.instance(ctx, id).await?;
            let renderer = Renderer::new(&app, ctx).await?;
            Ok(Json(renderer.instance(&app, ctx, &i).await))
        }
        (id, Some("password")) => {
            let p = app.engine.reveal_password(ctx, id).await.map_err(|e| match e {
                DomainError::NotFound { kind: "password", .. } => {
                    ExoError::not_found("Password (none was set in the last 24 hours)")
                }
                other => other.into(),
            })?;
            Ok(Json(json!({ "password": p.password })))
        }
        (_, Some(_)) => Err(ExoError::not_found("Operation")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct UpdateBody {
    name: Option<String>,
    /// Replaces the whole map; `{}` clears it. `null` leaves it unchanged, like an absent field: egoscale v3
    /// sends `"labels": null` on every update that does not set labels (its field has no `omitempty`).
    labels: Option<Labels>,
    user_data: Option<String>,
    public_ip_assignment: Option<String>,
    application_consistent_snapshot_enabled: Option<bool>,
}

pub async fn update(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let id = signed.id("Instance")?;
    let body: UpdateBody = signed.json()?;
    check_ip_assignment(body.public_ip_assignment.as_deref())?;
    let mut patch =
        InstancePatch { name: body.name, user_data: body.user_data, replace_labels: body.labels, ..Default::default() };
    let mut ext = Map::new();
    if let Some(a) = &body.public_ip_assignment {
        ext.insert("public-ip-assignment".into(), json!(a));
    }
    if let Some(b) = body.application_consistent_snapshot_enabled {
        ext.insert("application-consistent-snapshot-enabled".into(), json!(b));
    }
    if !ext.is_empty() {
        patch.extensions.insert(EXT.into(), Value::Object(ext));
    }
    app.engine.update_instance(ctx, id, patch, None).await?;
    receipt(&app, ctx, instance_ref(id)).await
}

/// `DELETE /v2/instance/{id}/{field}`: the spec's only resettable field is `labels`.
pub async fn reset_field(
    State(app): State<AppState>,
    Path((id, field)): Path<(String, String)>,
    signed: Signed,
) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let id = parse_id("Instance", &id)?;
    if field != "labels" {
        return Err(ExoError::bad_request(format!("Invalid parameter field: {field:?} cannot be reset (only labels)")));
    }
    app.engine
        .update_instance(ctx, id, InstancePatch { labels: Some(Value::Null), ..Default::default() }, None)
        .await?;
    receipt(&app, ctx, instance_ref(id)).await
}

pub async fn delete(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let (id, None) = signed.id_and_action("Instance")? else {
        return Err(ExoError::not_found("Operation"));
    };
    let op = app.engine.act(&signed.ctx, id, ActionRequest::Delete).await.map_err(refusal(Action::Delete))?;
    Ok(Json(views::operation(&op)))
}

/// Exoscale's sentence for an action the instance's state does not allow.
fn state_refusal(action: Action, state: InstanceState) -> String {
    let (needs, verb) = match action {
        Action::Start => ("stopped", "started"),
        Action::Stop => ("running", "stopped"),
        Action::Reboot => ("running", "rebooted"),
        Action::Scale => ("stopped", "scaled"),
        Action::ResizeDisk => ("stopped", "resized"),
        Action::RevertSnapshot => ("stopped", "reverted to a snapshot"),
        Action::EnableTpm => ("stopped", "given a TPM"),
        Action::Reset => ("running or stopped", "reset"),
        Action::CreateSnapshot => ("running or stopped", "snapshotted"),
        _ => return format!("The instance cannot be changed while it is {}.", views::instance_state(state, None)),
    };
    format!("Only {needs} instances can be {verb}.")
}

/// Runs an instance action and answers with its operation, a state refusal in Exoscale's words.
async fn act(app: &AppState, ctx: &Context, id: Uuid, request: ActionRequest) -> ExoResult<Json<Value>> {
    let kind = request.action();
    let op = app.engine.act(ctx, id, request).await.map_err(refusal(kind))?;
    Ok(Json(views::operation(&op)))
}

fn refusal(action: Action) -> impl Fn(DomainError) -> ExoError {
    move |e| match e {
        DomainError::InvalidState { state, .. } => ExoError::bad_request(state_refusal(action, state)),
        other => other.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct StartBody {
    rescue_profile: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ResetBody {
    template: Option<Ref>,
    disk_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ScaleBody {
    instance_type: Option<Ref>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ResizeBody {
    disk_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RevertBody {
    id: Option<Uuid>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// `PUT /v2/instance/{id}` (update) and `PUT /v2/instance/{id}:<action>`.
pub async fn put_segment(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let (id, Some(action)) = signed.id_and_action("Instance")? else {
        return update(State(app), signed).await;
    };
    let ctx = &signed.ctx;
    let request = match action {
        "start" => {
            let body: StartBody = signed.json()?;
            // Exoscale's profiles network-boot a rescue system (BIOS or UEFI); Nimbus boots the host's own.
            match body.rescue_profile.as_deref() {
                None => ActionRequest::Start,
                Some("netboot" | "netboot-efi") => ActionRequest::StartRescue,
                Some(other) => {
                    return Err(ExoError::bad_request(format!(
                        "Invalid parameter rescue-profile: {other:?} is not one of netboot, netboot-efi"
                    )))
                }
            }
        }
        "stop" => {
            signed.json::<Empty>()?;
            ActionRequest::Stop
        }
        "reboot" => {
            signed.json::<Empty>()?;
            ActionRequest::Reboot
        }
        "reset" => {
            let body: ResetBody = signed.json()?;
            ActionRequest::Reset {
                template: body.template.map(|t| t.required_id("template")).transpose()?.map(|id| id.to_string()),
                disk_size_gb: body.disk_size.map(check_disk).transpose()?,
            }
        }
        "scale" => {
            let body: ScaleBody = signed.json()?;
            let wanted = body.instance_type.ok_or_else(|| ExoError::bad_request("Missing parameter instance-type"))?;
            let t = referenced_instance_type(&app, &wanted).await?;
            ActionRequest::Scale { instance_type: t.name }
        }
        "resize-disk" => {
            let body: ResizeBody = signed.json()?;
            let size = body.disk_size.ok_or_else(|| ExoError::bad_request("Missing parameter disk-size"))?;
            ActionRequest::ResizeDisk { disk_size_gb: check_disk(size)? }
        }
        "reset-password" => {
            signed.json::<Empty>()?;
            ActionRequest::ResetPassword
        }
        "add-protection" | "remove-protection" => {
            signed.json::<Empty>()?;
            app.engine.set_protection(ctx, id, action == "add-protection").await?;
            return receipt(&app, ctx, instance_ref(id)).await;
        }
        _ => return Err(ExoError::not_found("Operation")),
    };
    act(&app, ctx, id, request).await
}

/// `POST /v2/instance/{id}:create-snapshot|:revert-snapshot|:enable-tpm`.
pub async fn post_segment(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let (id, Some(action)) = signed.id_and_action("Instance")? else {
        return Err(ExoError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "Method POST not allowed"));
    };
    let ctx = &signed.ctx;
    let request = match action {
        "create-snapshot" => {
            signed.json::<Empty>()?;
            ActionRequest::CreateSnapshot { name: None }
        }
        "revert-snapshot" => {
            let body: RevertBody = signed.json()?;
            let snapshot_id = body.id.ok_or_else(|| ExoError::bad_request("Missing parameter id"))?;
            ActionRequest::RevertSnapshot { snapshot_id }
        }
        "enable-tpm" => {
            signed.json::<Empty>()?;
            ActionRequest::EnableTpm
        }
        _ => return Err(ExoError::not_found("Operation")),
    };
    act(&app, ctx, id, request).await
}

/// `GET /v2/console/{id}`: a signed URL valid for 60 seconds to connect, like Exoscale's console proxy.
/// Nimbus's proxy is its native serial-console websocket with a single-use console ticket in the query
/// (`/v1/instances/{id}/console/stream?ticket=…`), so the URL works without this key's signature; `path`
/// carries the query too, so `host` and `path` rebuild the URL.
pub async fn console_url(State(app): State<AppState>, headers: HeaderMap, signed: Signed) -> ExoResult<Json<Value>> {
    // The engine refuses a console to an instance that is not running; Exoscale words it so.
    let ticket = app.engine.console_ticket(&signed.ctx, signed.id("Instance")?).await.map_err(|e| match e {
        DomainError::InvalidState { .. } => ExoError::bad_request("Only running instances have a console."),
        other => other.into(),
    })?;
    let url = crate::native::instances::console_url(&headers, &ticket);
    Ok(Json(json!({ "url": url.url, "host": url.host, "path": url.path })))
}

// Reverse DNS of an instance: its PTR name, kept in the instance's Exoscale extension map.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReverseDnsBody {
    domain_name: Option<String>,
}

impl ReverseDnsBody {
    /// The PTR name asked for, checked.
    pub fn domain_name(self) -> ExoResult<String> {
        let name = self.domain_name.ok_or_else(|| ExoError::bad_request("Missing parameter domain-name"))?;
        if !valid_domain(&name) {
            return Err(ExoError::bad_request(format!("Invalid parameter domain-name: {name:?} is not a domain name")));
        }
        Ok(name)
    }
}

pub fn valid_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty() && name.len() <= 253 && nimbus_core::instance::validate_hostname("domain-name", name).is_ok()
}

pub async fn get_reverse_dns(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let i = app.engine.instance(&signed.ctx, signed.id("Instance")?).await?;
    match views::ext_str(&i, "reverse-dns") {
        Some(name) => Ok(Json(json!({ "domain-name": name }))),
        None => Err(ExoError::not_found("Reverse DNS record")),
    }
}

pub async fn set_reverse_dns(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let id = signed.id("Instance")?;
    let name = signed.json::<ReverseDnsBody>()?.domain_name()?;
    let mut patch = InstancePatch::default();
    patch.extensions.insert(EXT.into(), json!({ "reverse-dns": name }));
    app.engine.update_instance(ctx, id, patch, None).await?;
    receipt(&app, ctx, instance_ref(id)).await
}

pub async fn delete_reverse_dns(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let id = signed.id("Instance")?;
    app.engine
        .update_instance_with(ctx, id, |current| {
            if views::ext_str(current, "reverse-dns").is_none() {
                return Err(ExoError::not_found("Reverse DNS record"));
            }
            let mut patch = InstancePatch::default();
            patch.extensions.insert(EXT.into(), json!({ "reverse-dns": null }));
            Ok(Some(patch))
        })
        .await?;
    receipt(&app, ctx, instance_ref(id)).await
}
