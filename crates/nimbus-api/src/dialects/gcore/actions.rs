//! What changes a running instance: the v2 actions, `changeflavor`, and security groups by name.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_core::instance::Instance;
use nimbus_core::DomainError;
use nimbus_engine::ActionRequest;
use serde_json::Value;
use uuid::Uuid;

use super::common::{body_object, required_str, tasks, BodyMap, OneInstance, Region};
use super::errors::{FieldErrors, GcoreError, GcoreResult};
use super::views;
use crate::AppState;

/// `POST /cloud/v2/.../action`: start, stop, reboot, reboot_hard, suspend, resume.
pub async fn action(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let name = required_str(&map, "action")?;
    let request = match name {
        "start" => ActionRequest::Start,
        "stop" => ActionRequest::Stop,
        // Gcore's soft reboot is asked of the guest (ACPI); its hard reboot resets the VM.
        "reboot" => ActionRequest::SoftReboot,
        "reboot_hard" => ActionRequest::Reboot,
        "suspend" => ActionRequest::Suspend,
        "resume" => ActionRequest::Resume,
        other => {
            return Err(GcoreError::field(
                "action",
                format!(
                    "Input tag {other:?} does not match any of 'start', 'stop', 'reboot', 'reboot_hard', \
                     'suspend', 'resume'"
                ),
            ))
        }
    };
    let op = app.engine.act(&r.ctx, instance.id, request).await?;
    Ok(tasks(&[&op]))
}

/// `changeflavor`: like Gcore's, onto any flavor, of an ACTIVE or a stopped instance; it shows RESIZE while
/// the task runs (a running one is stopped, given its new size and started again) and ends in the power
/// state it began in.
pub async fn resize(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    BodyMap(map): BodyMap,
) -> GcoreResult<Json<Value>> {
    let flavor = required_str(&map, "flavor_id")?.to_string();
    let scale = ActionRequest::ScaleTo {
        instance_type: flavor,
        gpu_model: None,
        across_families: true,
        restart_if_running: true,
    };
    let op = app.engine.act(&r.ctx, instance.id, scale).await.map_err(|e| match e {
        DomainError::Invalid { message, .. } => GcoreError::field("flavor_id", message),
        DomainError::Conflict(m) if !m.contains("concurrently") => GcoreError::field("flavor_id", m),
        other => other.into(),
    })?;
    Ok(tasks(&[&op]))
}

/// The security group names of `addsecuritygroup`/`delsecuritygroup`, resolved to the project's groups.
async fn named_groups(app: &AppState, r: &Region, instance: &Instance, body: &Bytes) -> GcoreResult<Vec<Uuid>> {
    let map = body_object(body)?;
    let mut names: Vec<String> = Vec::new();
    let mut errors = FieldErrors::default();
    match map.get("name") {
        None | Some(Value::Null) => {}
        Some(Value::String(n)) => names.push(n.clone()),
        Some(_) => errors.add("name", "Input should be a valid string"),
    }
    match map.get("ports_security_group_names") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ports)) => {
            let port = views::port_id(instance).to_string();
            for (n, p) in ports.iter().enumerate() {
                match p.get("port_id") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(id)) if *id == port => {}
                    Some(_) => errors.add(
                        &format!("ports_security_group_names.{n}.port_id"),
                        format!("The instance's one port is {port}"),
                    ),
                }
                match p.get("security_group_names").and_then(Value::as_array) {
                    Some(list) => names.extend(list.iter().filter_map(Value::as_str).map(str::to_string)),
                    None => {
                        errors.add(&format!("ports_security_group_names.{n}.security_group_names"), "Field required")
                    }
                }
            }
        }
        Some(_) => errors.add("ports_security_group_names", "Input should be a valid list"),
    }
    if names.is_empty() {
        errors.add("name", "Give a security group name or ports_security_group_names");
    }
    errors.check()?;
    let groups = app.engine.list_security_groups(&r.ctx).await?;
    names
        .iter()
        .map(|n| {
            groups
                .iter()
                .find(|g| &g.name == n)
                .map(|g| g.id)
                .ok_or_else(|| GcoreError::not_found(format!("Security group {n} could not be found")))
        })
        .collect()
}

pub async fn add_security_group(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    body: Bytes,
) -> GcoreResult<StatusCode> {
    let groups = named_groups(&app, &r, &instance, &body).await?;
    app.engine.change_security_groups(&r.ctx, instance.id, &groups, &[]).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn del_security_group(
    State(app): State<AppState>,
    OneInstance(r, instance): OneInstance,
    body: Bytes,
) -> GcoreResult<StatusCode> {
    let groups = named_groups(&app, &r, &instance, &body).await?;
    app.engine.change_security_groups(&r.ctx, instance.id, &[], &groups).await?;
    Ok(StatusCode::NO_CONTENT)
}
