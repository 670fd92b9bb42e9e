//! What instances reference and clients call around them: instance types, templates, snapshots, SSH keys,
//! security groups and anti-affinity groups, as Exoscale lists, shows, creates and deletes them.

use axum::extract::{Path, State};
use axum::Json;
use nimbus_core::catalog::Visibility;
use nimbus_core::resources::AntiAffinityGroup;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Signed;
use super::errors::{ExoError, ExoResult};
use super::handlers::{parse_id, receipt, zone_names, Renderer};
use super::views;
use crate::AppState;

// Instance types.

pub async fn list_instance_types(State(app): State<AppState>, _signed: Signed) -> ExoResult<Json<Value>> {
    let zones = zone_names(&app);
    let types: Vec<Value> =
        app.engine.list_instance_types().await?.iter().map(|t| views::instance_type(t, &zones)).collect();
    Ok(Json(json!({ "instance-types": types })))
}

pub async fn get_instance_type(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id("Instance type")?;
    let types = app.engine.list_instance_types().await?;
    let t = types.iter().find(|t| t.id == id).ok_or_else(|| ExoError::not_found("Instance type"))?;
    Ok(Json(views::instance_type(t, &zone_names(&app))))
}

// Templates.

pub async fn list_templates(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let zones = zone_names(&app);
    let visibility = match signed.query.get("visibility").map(String::as_str) {
        None => None,
        Some("public") => Some(Visibility::Public),
        Some("private") => Some(Visibility::Private),
        Some(other) => {
            return Err(ExoError::bad_request(format!(
                "Invalid parameter visibility: {other:?} is not one of public, private"
            )))
        }
    };
    let family = signed.query.get("family");
    let templates: Vec<Value> = app
        .engine
        .list_templates(&signed.ctx)
        .await?
        .iter()
        .filter(|t| visibility.is_none_or(|v| t.visibility == v))
        .filter(|t| family.is_none_or(|f| t.os_name.eq_ignore_ascii_case(f)))
        .map(|t| views::template(t, &zones))
        .collect();
    Ok(Json(json!({ "templates": templates })))
}

pub async fn get_template(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id("Template")?;
    let t = app.engine.template(&signed.ctx, &id.to_string()).await?;
    Ok(Json(views::template(&t, &zone_names(&app))))
}

// Snapshots.

pub async fn list_snapshots(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let renderer = Renderer::new(&app, ctx).await?;
    let instances = app.engine.all_instances(ctx).await?;
    let mut items = Vec::new();
    for s in &renderer.snapshots {
        let owner = instances.iter().find(|i| i.id == s.instance_id);
        items.push(snapshot_view(&app, ctx, &renderer, s, owner).await);
    }
    Ok(Json(json!({ "snapshots": items })))
}

async fn snapshot_view(
    app: &AppState,
    ctx: &nimbus_engine::Context,
    renderer: &Renderer,
    s: &nimbus_core::resources::Snapshot,
    owner: Option<&nimbus_core::instance::Instance>,
) -> Value {
    let mut v = views::snapshot(s);
    if let Some(i) = owner {
        v["instance"] = renderer.instance(app, ctx, i).await;
    }
    v
}

pub async fn get_snapshot(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let id = signed.id("Snapshot")?;
    let s = app.engine.snapshot(ctx, id).await?;
    let renderer = Renderer::new(&app, ctx).await?;
    let owner = app.engine.instance(ctx, s.instance_id).await.ok();
    Ok(Json(snapshot_view(&app, ctx, &renderer, &s, owner.as_ref()).await))
}

pub async fn delete_snapshot(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id("Snapshot")?;
    let op = app.engine.delete_snapshot(&signed.ctx, id).await?;
    Ok(Json(views::operation(&op)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct PromoteBody {
    name: Option<String>,
    #[serde(default)]
    description: String,
    default_user: Option<String>,
    // Nimbus templates take keys and passwords as their image does (cloud-init); accepted for the client.
    #[allow(dead_code)]
    ssh_key_enabled: Option<bool>,
    #[allow(dead_code)]
    password_enabled: Option<bool>,
}

/// `POST /v2/snapshot/{id}:promote` (`promote-snapshot-to-template`): a template of the snapshot, private to
/// the caller's organization; the operation's reference is the template.
pub async fn post_snapshot_segment(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let (id, Some(action)) = signed.id_and_action("Snapshot")? else {
        return Err(ExoError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "Method POST not allowed"));
    };
    if action != "promote" {
        return Err(ExoError::not_found("Operation"));
    }
    let body: PromoteBody = signed.json()?;
    let name = body.name.ok_or_else(|| ExoError::bad_request("Missing parameter name"))?;
    let request = nimbus_engine::PromoteRequest {
        name,
        description: body.description,
        default_user: body.default_user,
        public: false,
    };
    let op = app.engine.promote_snapshot(&signed.ctx, id, request).await?;
    Ok(Json(views::operation(&op)))
}

// SSH keys: named, not numbered.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct SshKeyBody {
    name: Option<String>,
    public_key: Option<String>,
}

pub async fn list_ssh_keys(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let keys: Vec<Value> = app.engine.list_ssh_keys(&signed.ctx).await?.iter().map(views::ssh_key).collect();
    Ok(Json(json!({ "ssh-keys": keys })))
}

pub async fn get_ssh_key(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let name = signed.segment.clone();
    // By name, as Exoscale addresses keys, or by id: the operation that registers one refers to it by id,
    // and clients that re-fetch the key from that reference (the `exoscale-connector` package) must find it.
    let k = app.engine.ssh_key(&signed.ctx, &name).await?;
    Ok(Json(views::ssh_key(&k)))
}

fn ssh_key_ref(k: &nimbus_core::resources::SshKey) -> Value {
    views::reference("ssh-key", k.id, &k.name)
}

pub async fn register_ssh_key(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let body: SshKeyBody = signed.json()?;
    let name = body.name.ok_or_else(|| ExoError::bad_request("Missing parameter name"))?;
    let public_key = body.public_key.ok_or_else(|| ExoError::bad_request("Missing parameter public-key"))?;
    let key = app.engine.create_ssh_key(&signed.ctx, &name, &public_key).await?;
    receipt(&app, &signed.ctx, ssh_key_ref(&key)).await
}

pub async fn delete_ssh_key(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let name = signed.segment.clone();
    let k = app.engine.ssh_key(&signed.ctx, &name).await?;
    app.engine.delete_ssh_key(&signed.ctx, &k.id.to_string()).await?;
    receipt(&app, &signed.ctx, ssh_key_ref(&k)).await
}

// Security groups and anti-affinity groups.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct GroupBody {
    name: Option<String>,
    description: Option<String>,
}

impl GroupBody {
    fn name(&self) -> ExoResult<&str> {
        self.name.as_deref().ok_or_else(|| ExoError::bad_request("Missing parameter name"))
    }
}

pub async fn list_security_groups(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    // Nimbus has no public (shared) security groups.
    let public = match signed.query.get("visibility").map(String::as_str) {
        None | Some("private") => false,
        Some("public") => true,
        Some(other) => {
            return Err(ExoError::bad_request(format!(
                "Invalid parameter visibility: {other:?} is not one of public, private"
            )))
        }
    };
    let groups: Vec<Value> = if public {
        Vec::new()
    } else {
        let all = app.engine.list_security_groups(&signed.ctx).await?;
        all.iter().map(|g| views::security_group(g, &all)).collect()
    };
    Ok(Json(json!({ "security-groups": groups })))
}

pub async fn get_security_group(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id("Security group")?;
    let g = app.engine.security_group(&signed.ctx, id).await?;
    let all = app.engine.list_security_groups(&signed.ctx).await?;
    Ok(Json(views::security_group(&g, &all)))
}

pub async fn create_security_group(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let body: GroupBody = signed.json()?;
    let g = app
        .engine
        .create_security_group(&signed.ctx, body.name()?, body.description.as_deref().unwrap_or(""), Vec::new())
        .await?;
    receipt(&app, &signed.ctx, views::reference("security-group", g.id, &g.id.to_string())).await
}

/// `PUT /v2/security-group/{id}:attach|:detach` `{"instance": {"id"}}`: the instance's groups change at
/// once (Nimbus enforces no filtering yet, so nothing runs in the background).
pub async fn put_security_group_segment(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let (id, Some(action)) = signed.id_and_action("Security group")? else {
        return Err(ExoError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "Method PUT not allowed"));
    };
    let body: InstanceBody = signed.json()?;
    let instance = body.instance_id()?;
    app.engine.security_group(ctx, id).await?;
    let (attach, detach) = match action {
        "attach" => (vec![id], vec![]),
        "detach" => (vec![], vec![id]),
        _ => return Err(ExoError::not_found("Operation")),
    };
    app.engine.change_security_groups(ctx, instance, &attach, &detach).await?;
    receipt(&app, ctx, views::reference("security-group", id, &id.to_string())).await
}

/// The `{"instance": {"id"}}` body of attach and detach calls. The spec types `instance` as the whole
/// instance object for some of them, so its other fields are accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceBody {
    pub instance: Option<InstanceRef>,
    pub ip: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
pub struct InstanceRef {
    pub id: Option<Uuid>,
}

impl InstanceBody {
    pub fn instance_id(&self) -> ExoResult<Uuid> {
        self.instance.as_ref().and_then(|i| i.id).ok_or_else(|| ExoError::bad_request("Missing parameter instance"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RuleBody {
    flow_direction: Option<String>,
    protocol: Option<String>,
    description: Option<String>,
    network: Option<String>,
    security_group: Option<SecurityGroupRef>,
    icmp: Option<IcmpBody>,
    start_port: Option<u16>,
    end_port: Option<u16>,
}

/// `security-group-resource`: an id, or a name (of this project's groups; Nimbus has no public ones).
#[derive(Debug, Deserialize)]
struct SecurityGroupRef {
    id: Option<Uuid>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpBody {
    code: Option<i16>,
    #[serde(rename = "type")]
    kind: Option<i16>,
}

/// `POST /v2/security-group/{id}/rules`: the operation refers to the group, which now shows the rule.
pub async fn add_security_group_rule(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let id = signed.id("Security group")?;
    let body: RuleBody = signed.json()?;
    let source = match body.security_group {
        None => None,
        Some(SecurityGroupRef { id: Some(g), .. }) => Some(g),
        Some(SecurityGroupRef { name: Some(name), .. }) => {
            let groups = app.engine.list_security_groups(ctx).await?;
            let g = groups.iter().find(|g| g.name == name).ok_or_else(|| {
                ExoError::bad_request(format!("Invalid parameter security-group: no security group {name:?}"))
            })?;
            Some(g.id)
        }
        Some(_) => return Err(ExoError::bad_request("Invalid parameter security-group: give its id or name")),
    };
    let rule = nimbus_core::resources::SecurityGroupRule {
        flow_direction: body.flow_direction.ok_or_else(|| ExoError::bad_request("Missing parameter flow-direction"))?,
        protocol: body.protocol.ok_or_else(|| ExoError::bad_request("Missing parameter protocol"))?,
        description: body.description.unwrap_or_default(),
        network: body.network,
        security_group: source,
        icmp_type: body.icmp.as_ref().and_then(|i| i.kind),
        icmp_code: body.icmp.as_ref().and_then(|i| i.code),
        start_port: body.start_port,
        end_port: body.end_port,
        ..Default::default()
    };
    app.engine.add_security_group_rule(ctx, id, rule).await?;
    receipt(&app, ctx, views::reference("security-group", id, &id.to_string())).await
}

pub async fn delete_security_group_rule(
    State(app): State<AppState>,
    Path((id, rule_id)): Path<(String, String)>,
    signed: Signed,
) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let id = parse_id("Security group", &id)?;
    let rule_id = parse_id("Security group rule", &rule_id)?;
    app.engine.delete_security_group_rule(ctx, id, rule_id).await?;
    receipt(&app, ctx, views::reference("security-group", id, &id.to_string())).await
}

pub async fn delete_security_group(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id("Security group")?;
    app.engine.delete_security_group(&signed.ctx, id).await?;
    receipt(&app, &signed.ctx, views::reference("security-group", id, &id.to_string())).await
}

/// The groups with their members' ids.
async fn anti_affinity_views(app: &AppState, signed: &Signed, groups: Vec<AntiAffinityGroup>) -> ExoResult<Vec<Value>> {
    let with_members = app.engine.anti_affinity_members(&signed.ctx, groups).await?;
    Ok(with_members
        .iter()
        .map(|(g, members)| views::anti_affinity_group(g, &members.iter().map(|i| i.id).collect::<Vec<_>>()))
        .collect())
}

pub async fn list_anti_affinity_groups(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let groups = app.engine.list_anti_affinity_groups(&signed.ctx).await?;
    Ok(Json(json!({ "anti-affinity-groups": anti_affinity_views(&app, &signed, groups).await? })))
}

pub async fn get_anti_affinity_group(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let g = app.engine.anti_affinity_group(&signed.ctx, signed.id("Anti-affinity group")?).await?;
    Ok(Json(anti_affinity_views(&app, &signed, vec![g]).await?.remove(0)))
}

pub async fn create_anti_affinity_group(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let body: GroupBody = signed.json()?;
    let g = app
        .engine
        .create_anti_affinity_group(&signed.ctx, body.name()?, body.description.as_deref().unwrap_or(""))
        .await?;
    receipt(&app, &signed.ctx, views::reference("anti-affinity-group", g.id, &g.id.to_string())).await
}

pub async fn delete_anti_affinity_group(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id("Anti-affinity group")?;
    app.engine.delete_anti_affinity_group(&signed.ctx, id).await?;
    receipt(&app, &signed.ctx, views::reference("anti-affinity-group", id, &id.to_string())).await
}

// Deploy targets: Nimbus places instances itself and offers none to choose (a create naming one is refused).

pub async fn list_deploy_targets(_signed: Signed) -> ExoResult<Json<Value>> {
    Ok(Json(json!({ "deploy-targets": [] })))
}

pub async fn get_deploy_target(_signed: Signed) -> ExoResult<Json<Value>> {
    Err(ExoError::not_found("Deploy target"))
}
