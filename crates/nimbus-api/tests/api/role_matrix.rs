//! The role matrix: every route of every API family, as the router lists it (`nimbus_api::routes`), tried
//! by every kind of caller — the operator, an organization admin, a project admin, a member, a read-only
//! key, another organization's tenant, no key, a revoked key — each in its family's own credential scheme.
//! Each answer must be the one [`RULES`] documents (docs/SECURITY.md, "Roles"): a route the router serves
//! without a rule here fails the test, and so does a rule for a route that is gone.
//!
//! What "the documented answer" means, for a route whose rule is `Role(r)`:
//! - keys of role `r` or above are let through: whatever the route answers then (its own 2xx, or 400/404
//!   for the test's empty body and made-up ids), never 401 or 403;
//! - keys below `r` are refused with 403;
//! - no key and a revoked key are refused with 401 (Exoscale: 403, as its API answers a bad signature);
//! - another organization's tenant (a project admin there) is let through only into its own project:
//!   where the path names this organization's instance or project, it gets no 2xx; where `r` is above a
//!   project admin, 403.
//!
//! Nothing answers 5xx.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use nimbus_api::dialects::exoscale::signature;
use nimbus_core::tenancy::Role;
use nimbus_driver::SimConfig;
use nimbus_engine::EngineConfig;
use serde_json::json;

use crate::common::*;

/// Who a route lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// Anyone, with or without a key (health, documents, sign-in, registration, the console's files).
    Anyone,
    /// A host's agent, with its host token: no API key of any role.
    Agent,
    /// Keys of this role or above.
    Role(Role),
}

use Who::*;
const R: Who = Role(Role::ReadOnly);
const M: Who = Role(Role::Member);
const A: Who = Role(Role::Admin);
const O: Who = Role(Role::OrgAdmin);
const OP: Who = Role(Role::Operator);

/// The documented answer of every route: its path as written in the router (SF Compute's `/preview`
/// prefix and ONET's and SharedCloud's trailing slashes dropped: they serve the same routes), and who each
/// method lets through.
const RULES: &[(&str, &[(&str, Who)])] = &[
    // Unauthenticated by design.
    ("/healthz", &[("GET", Anyone)]),
    ("/openapi.json", &[("GET", Anyone)]),
    ("/", &[("GET", Anyone)]),
    ("/ui", &[("GET", Anyone)]),
    ("/ui/", &[("GET", Anyone)]),
    ("/ui/{file}", &[("GET", Anyone)]),
    ("/ui/session", &[("POST", Anyone), ("DELETE", Anyone)]),
    ("/metrics", &[("GET", OP)]),
    // The native API.
    ("/v1/instances", &[("GET", R), ("POST", M), ("PATCH", M)]),
    ("/v1/instances/{id}", &[("GET", R), ("PATCH", M), ("DELETE", M)]),
    ("/v1/instances/{id}/password", &[("GET", M)]),
    ("/v1/instances/{id}/console", &[("GET", R)]),
    ("/v1/instances/{id}/console/stream", &[("GET", R)]),
    ("/v1/instances/{id}/console/ticket", &[("POST", M)]),
    ("/v1/instances/{id}/metrics", &[("GET", R)]),
    ("/v1/instances/{id}/guest", &[("GET", R)]),
    ("/v1/instances/{id}/tunnel/{port}", &[("GET", R)]),
    ("/v1/instances/{id}/{action}", &[("POST", M)]),
    ("/v1/operations", &[("GET", R)]),
    ("/v1/operations/{id}", &[("GET", R)]),
    ("/v1/events", &[("GET", R)]),
    ("/v1/hosts", &[("GET", OP)]),
    ("/v1/hosts/{name}", &[("GET", OP)]),
    ("/v1/hosts/{name}/{action}", &[("POST", OP)]),
    ("/v1/host-tokens", &[("GET", OP), ("POST", OP)]),
    ("/v1/whoami", &[("GET", R)]),
    ("/v1/audit", &[("GET", O)]),
    ("/v1/ping", &[("GET", R)]),
    ("/v1/api-keys", &[("GET", A), ("POST", A)]),
    ("/v1/projects", &[("GET", R), ("POST", O)]),
    ("/v1/projects/{id}", &[("GET", R)]),
    ("/v1/projects/{id}/quota", &[("PUT", OP)]),
    ("/v1/ssh-keys", &[("GET", R), ("POST", M)]),
    ("/v1/ssh-keys/{id}", &[("GET", R), ("DELETE", M)]),
    ("/v1/zones", &[("GET", R)]),
    ("/v1/host", &[("GET", R)]),
    ("/v1/instance-types", &[("GET", R)]),
    ("/v1/templates", &[("GET", R), ("POST", M)]),
    ("/v1/templates/{id}", &[("GET", R), ("DELETE", M)]),
    ("/v1/snapshots", &[("GET", R)]),
    ("/v1/snapshots/{id}", &[("GET", R), ("DELETE", M)]),
    ("/v1/snapshots/{id}/promote", &[("POST", M)]),
    ("/v1/snapshots/{id}/export", &[("GET", R)]),
    ("/v1/security-groups", &[("GET", R), ("POST", M)]),
    ("/v1/security-groups/{id}", &[("GET", R), ("DELETE", M)]),
    ("/v1/anti-affinity-groups", &[("GET", R), ("POST", M)]),
    ("/v1/anti-affinity-groups/{id}", &[("GET", R), ("DELETE", M)]),
    ("/v1/host-tokens/{id}", &[("DELETE", OP)]),
    ("/v1/api-keys/{key_id}", &[("DELETE", A)]),
    ("/v1/host/unknown-instances/{id}", &[("DELETE", OP)]),
    ("/v1/volumes", &[("GET", R), ("POST", M)]),
    ("/v1/volumes/{id}", &[("GET", R), ("PATCH", M), ("DELETE", M)]),
    ("/v1/volumes/{id}/{action}", &[("POST", M)]),
    ("/v1/volumes/{id}/snapshots", &[("GET", R), ("POST", M)]),
    ("/v1/volumes/{id}/snapshots/{snapshot_id}", &[("GET", R), ("PATCH", M), ("DELETE", M)]),
    // Hosts' agents: their host token, never an API key.
    ("/v1/agent/config", &[("GET", Agent)]),
    ("/v1/agent/register", &[("POST", Agent)]),
    ("/v1/agent/heartbeat", &[("POST", Agent)]),
    ("/v1/agent/calls", &[("GET", Agent)]),
    ("/v1/agent/calls/{id}", &[("POST", Agent)]),
    ("/v1/agent/console/{id}", &[("GET", Agent)]),
    ("/v1/agent/overlay", &[("GET", Agent)]),
    // SF Compute.
    ("/v2/instances", &[("GET", R), ("POST", M), ("PATCH", M)]),
    ("/v2/instances/{id}", &[("GET", R), ("PATCH", M), ("DELETE", M)]),
    ("/v2/instances/{id}/terminate", &[("POST", M)]),
    ("/v2/images", &[("GET", R)]),
    ("/v2/instance_skus", &[("GET", R)]),
    ("/v2/pools", &[("GET", R)]),
    ("/v2/capacities", &[("GET", R)]),
    ("/v2/workspaces", &[("GET", R)]),
    ("/v2/me", &[("GET", R)]),
    // Exoscale.
    ("/v2/zone", &[("GET", Anyone)]),
    ("/v2/operation/{id}", &[("GET", R)]),
    ("/v2/instance", &[("GET", R), ("POST", M)]),
    ("/v2/instance/{segment}", &[("GET", R), ("POST", M), ("PUT", M), ("DELETE", M)]),
    ("/v2/console/{id}", &[("GET", M)]),
    ("/v2/reverse-dns/instance/{id}", &[("GET", R), ("POST", M), ("DELETE", M)]),
    ("/v2/reverse-dns/elastic-ip/{id}", &[("GET", R), ("POST", M), ("DELETE", M)]),
    ("/v2/deploy-target", &[("GET", R)]),
    ("/v2/deploy-target/{id}", &[("GET", R)]),
    ("/v2/instance-type", &[("GET", R)]),
    ("/v2/instance-type/{id}", &[("GET", R)]),
    ("/v2/template", &[("GET", R)]),
    ("/v2/template/{id}", &[("GET", R)]),
    ("/v2/snapshot", &[("GET", R)]),
    ("/v2/snapshot/{id}", &[("GET", R), ("POST", M), ("DELETE", M)]),
    ("/v2/ssh-key", &[("GET", R), ("POST", M)]),
    ("/v2/ssh-key/{name}", &[("GET", R), ("DELETE", M)]),
    ("/v2/security-group", &[("GET", R), ("POST", M)]),
    ("/v2/security-group/{id}", &[("GET", R), ("PUT", M), ("DELETE", M)]),
    ("/v2/security-group/{id}/rules", &[("POST", M)]),
    ("/v2/private-network", &[("GET", R), ("POST", M)]),
    ("/v2/private-network/{segment}", &[("GET", R), ("PUT", M), ("DELETE", M)]),
    ("/v2/elastic-ip", &[("GET", R), ("POST", M)]),
    ("/v2/elastic-ip/{segment}", &[("GET", R), ("PUT", M), ("DELETE", M)]),
    ("/v2/anti-affinity-group", &[("GET", R), ("POST", M)]),
    ("/v2/anti-affinity-group/{id}", &[("GET", R), ("DELETE", M)]),
    ("/v2/instance/{id}/{field}", &[("DELETE", M)]),
    ("/v2/security-group/{id}/rules/{rule_id}", &[("DELETE", M)]),
    ("/v2/block-storage", &[("GET", R), ("POST", M)]),
    ("/v2/block-storage/{segment}", &[("GET", R), ("POST", M), ("PUT", M), ("DELETE", M)]),
    ("/v2/block-storage-snapshot", &[("GET", R)]),
    ("/v2/block-storage-snapshot/{id}", &[("GET", R), ("PUT", M), ("DELETE", M)]),
    // Gcore.
    ("/cloud/v2/instances/{project_id}/{region_id}", &[("POST", M)]),
    ("/cloud/v1/instances/{project_id}/{region_id}", &[("GET", R)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}", &[("GET", R), ("PATCH", M), ("DELETE", M)]),
    ("/cloud/v2/instances/{project_id}/{region_id}/{instance_id}/action", &[("POST", M)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/changeflavor", &[("POST", M)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/addsecuritygroup", &[("POST", M)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/delsecuritygroup", &[("POST", M)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/interfaces", &[("GET", R)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/attach_interface", &[("POST", M)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/detach_interface", &[("POST", M)]),
    ("/cloud/v1/networks/{project_id}/{region_id}", &[("GET", R), ("POST", M)]),
    ("/cloud/v1/networks/{project_id}/{region_id}/{network_id}", &[("GET", R), ("DELETE", M)]),
    ("/cloud/v1/subnets/{project_id}/{region_id}", &[("GET", R), ("POST", M)]),
    ("/cloud/v1/subnets/{project_id}/{region_id}/{subnet_id}", &[("GET", R), ("DELETE", M)]),
    ("/cloud/v1/floatingips/{project_id}/{region_id}", &[("GET", R), ("POST", M)]),
    ("/cloud/v1/floatingips/{project_id}/{region_id}/{floating_ip_id}", &[("GET", R), ("DELETE", M)]),
    ("/cloud/v1/floatingips/{project_id}/{region_id}/{floating_ip_id}/assign", &[("POST", M)]),
    ("/cloud/v1/floatingips/{project_id}/{region_id}/{floating_ip_id}/unassign", &[("POST", M)]),
    ("/cloud/v1/reserved_fixed_ips/{project_id}/{region_id}", &[("GET", R), ("POST", M)]),
    ("/v1/reserved-addresses", &[("GET", R), ("POST", M)]),
    ("/v1/reserved-addresses/{id}", &[("GET", R), ("DELETE", M)]),
    ("/cloud/v1/reserved_fixed_ips/{project_id}/{region_id}/{port_id}", &[("GET", R), ("PATCH", M), ("DELETE", M)]),
    (
        "/cloud/v1/reserved_fixed_ips/{project_id}/{region_id}/{port_id}/connected_devices",
        &[("GET", R), ("PUT", M), ("PATCH", M)],
    ),
    ("/cloud/v1/reserved_fixed_ips/{project_id}/{region_id}/{port_id}/available_devices", &[("GET", R)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/metrics", &[("POST", M)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/get_console", &[("GET", M)]),
    ("/cloud/v1/flavors/{project_id}/{region_id}", &[("GET", R)]),
    ("/cloud/v1/images/{project_id}/{region_id}", &[("GET", R)]),
    ("/cloud/v1/images/{project_id}/{region_id}/{image_id}", &[("GET", R)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/put_into_servergroup", &[("POST", M)]),
    ("/cloud/v1/instances/{project_id}/{region_id}/{instance_id}/remove_from_servergroup", &[("POST", M)]),
    ("/cloud/v1/securitygroups/{project_id}/{region_id}", &[("GET", R)]),
    ("/cloud/v1/securitygroups/{project_id}/{region_id}/{group_id}", &[("GET", R), ("DELETE", M)]),
    ("/cloud/v2/security_groups/{project_id}/{region_id}", &[("POST", M)]),
    ("/cloud/v2/security_groups/{project_id}/{region_id}/{group_id}", &[("PATCH", M)]),
    ("/cloud/v1/servergroups/{project_id}/{region_id}", &[("GET", R), ("POST", M)]),
    ("/cloud/v1/servergroups/{project_id}/{region_id}/{group_id}", &[("GET", R), ("DELETE", M)]),
    ("/cloud/v1/ssh_keys/{project_id}", &[("GET", R), ("POST", M)]),
    ("/cloud/v1/ssh_keys/{project_id}/{ssh_key_id}", &[("GET", R), ("DELETE", M)]),
    ("/cloud/v1/projects", &[("GET", R)]),
    ("/cloud/v1/projects/{project_id}", &[("GET", R)]),
    ("/cloud/v1/regions", &[("GET", R)]),
    ("/cloud/v1/regions/{region_id}", &[("GET", R)]),
    ("/cloud/v1/tasks", &[("GET", R)]),
    ("/cloud/v1/volumes/{project_id}/{region_id}", &[("GET", R), ("POST", M)]),
    ("/cloud/v1/volumes/{project_id}/{region_id}/{volume_id}", &[("GET", R), ("PATCH", M), ("DELETE", M)]),
    ("/cloud/v2/volumes/{project_id}/{region_id}/{volume_id}/attach", &[("POST", M)]),
    ("/cloud/v2/volumes/{project_id}/{region_id}/{volume_id}/detach", &[("POST", M)]),
    ("/cloud/v1/volumes/{project_id}/{region_id}/{volume_id}/extend", &[("POST", M)]),
    ("/cloud/v1/tasks/{task_id}", &[("GET", R)]),
    // ONET.
    ("/v1/organizations/{organization_id}/projects/{project_id}/compute/instances", &[("GET", R), ("POST", M)]),
    (
        "/v1/organizations/{organization_id}/projects/{project_id}/compute/instances/{id}",
        &[("GET", R), ("PUT", M), ("PATCH", M), ("DELETE", M)],
    ),
    ("/v1/organizations/{organization_id}/projects/{project_id}/compute/instances/{id}/resize", &[("POST", M)]),
    ("/v1/organizations/{organization_id}/projects/{project_id}/compute/instances/{id}/{action}", &[("POST", M)]),
    ("/v1/organizations/{organization_id}/projects/{project_id}/compute/instances/{id}/console", &[("POST", M)]),
    (
        "/v1/organizations/{organization_id}/projects/{project_id}/compute/instances/{id}/console/{session_id}",
        &[("GET", R)],
    ),
    ("/v1/organizations/{organization_id}/projects/{project_id}/compute/instances/{id}/tasks/{task_id}", &[("GET", R)]),
    ("/v1/organizations/{organization_id}/projects/{project_id}/compute/tasks/{id}", &[("GET", R)]),
    ("/v1/organizations/{organization_id}/projects/{project_id}/compute/{catalog}", &[("GET", R)]),
    ("/v1/compute/sizes", &[("GET", R)]),
    ("/v1/compute/locations", &[("GET", R)]),
    ("/v1/compute/images", &[("GET", R)]),
    // SharedCloud.
    ("/api/v1/instances", &[("GET", R), ("POST", M)]),
    ("/api/v1/instances/{uuid}", &[("GET", R), ("PUT", M), ("PATCH", M), ("DELETE", M)]),
    ("/api/v1/instances/{uuid}/start", &[("PATCH", M)]),
    ("/api/v1/instances/{uuid}/stop", &[("PATCH", M)]),
    ("/api/v1/gpus", &[("GET", R)]),
    ("/api/v1/users", &[("GET", R), ("POST", Anyone)]),
    ("/api/v1/users/account", &[("PUT", A), ("PATCH", A), ("DELETE", A)]),
    ("/api/v1/api-token-auth", &[("POST", Anyone)]),
];

/// The kinds of caller, in the order they are tried: refusals first, then roles from least to most, so
/// that what an allowed caller changes (a member stopping an instance) does not hide a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    NoKey,
    Revoked,
    /// A host's agent token: good for `/v1/agent/...` and nothing else.
    HostToken,
    OtherTenant,
    Key(Role),
}

struct Credentials {
    key_id: String,
    secret: String,
}

/// The API family of a path, for its credential scheme.
fn family(path: &str) -> &'static str {
    if path.starts_with("/v2/instances")
        || path.starts_with("/preview/v2/")
        || ["/v2/images", "/v2/instance_skus", "/v2/pools", "/v2/capacities", "/v2/workspaces", "/v2/me"]
            .iter()
            .any(|p| path.starts_with(p))
    {
        "sfcompute"
    } else if path.starts_with("/v2/") {
        "exoscale"
    } else if path.starts_with("/cloud/") {
        "gcore"
    } else if path.starts_with("/api/v1/") {
        "sharedcloud"
    } else if path.starts_with("/v1/organizations/") || path.starts_with("/v1/compute/") {
        "onet"
    } else {
        "native"
    }
}

fn normalized(path: &str) -> String {
    let p = path.strip_prefix("/preview").unwrap_or(path);
    if p.len() > 1 && p.ends_with('/') && p != "/ui/" {
        p.trim_end_matches('/').to_string()
    } else {
        p.to_string()
    }
}

async fn request(c: &Cloud, method: &Method, path: &str, credentials: Option<&Credentials>) -> Reply {
    let fam = family(path);
    let body = if matches!(*method, Method::POST | Method::PUT | Method::PATCH) { "{}" } else { "" };
    let mut req = Request::builder().method(method.clone()).uri(path);
    if let Some(k) = credentials {
        let value = match fam {
            "exoscale" => {
                let expires =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 600;
                let message =
                    signature::message(method.as_str(), path.split('?').next().unwrap(), body.as_bytes(), "", expires);
                let sig = base64::engine::general_purpose::STANDARD
                    .encode(signature::hmac_sha256(k.secret.as_bytes(), &message));
                format!("EXO2-HMAC-SHA256 credential={},expires={expires},signature={sig}", k.key_id)
            }
            "gcore" => format!("APIKey {}", k.secret),
            "sharedcloud" => format!("Token {}", k.secret),
            _ => format!("Bearer {}", k.secret),
        };
        req = req.header("authorization", value);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    send(c, req.body(Body::from(body)).unwrap()).await
}

/// One exchange; a body still streaming after a moment (an event stream, a long poll) is cut there: its
/// status is what counts.
async fn send(c: &Cloud, req: Request<Body>) -> Reply {
    use tower::ServiceExt;
    // A long poll that let its caller in may hold its answer back: let through, then.
    let Ok(response) = tokio::time::timeout(std::time::Duration::from_secs(3), c.app.clone().oneshot(req)).await else {
        return Reply {
            status: StatusCode::OK,
            headers: Default::default(),
            body: Default::default(),
            text: String::new(),
        };
    };
    let response = response.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let read = axum::body::to_bytes(response.into_body(), usize::MAX);
    let bytes = tokio::time::timeout(std::time::Duration::from_millis(300), read).await.ok().and_then(Result::ok);
    let bytes = bytes.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Reply { status, headers, body: serde_json::from_slice(&bytes).unwrap_or_default(), text }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_as_documented() {
    let config = EngineConfig { allow_registration: true, ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    let whoami = |secret: String| {
        let c = &c;
        async move {
            let me = c.get("/v1/whoami", &secret).await;
            assert_eq!(me.status, StatusCode::OK, "{}", me.text);
            (Credentials { key_id: me.body["key_id"].as_str().unwrap().to_string(), secret }, me.body)
        }
    };
    let mut callers: BTreeMap<Caller, Credentials> = BTreeMap::new();
    let (operator, me) = whoami(ADMIN.to_string()).await;
    let project_id = me["project"]["id"].as_str().unwrap().to_string();
    let project_number = me["project"]["numeric_id"].as_i64().unwrap_or(1);
    let organization_id = me["organization"]["id"].as_str().unwrap().to_string();
    callers.insert(Caller::Key(Role::Operator), operator);
    for (role, name) in
        [(Role::OrgAdmin, "org-admin"), (Role::Admin, "admin"), (Role::Member, "member"), (Role::ReadOnly, "read-only")]
    {
        callers.insert(Caller::Key(role), whoami(c.key(name, None).await).await.0);
    }
    let (revoked, _) = whoami(c.key("member", None).await).await;
    let gone = c.call(Method::DELETE, &format!("/v1/api-keys/{}", revoked.key_id), ADMIN, None).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    callers.insert(Caller::Revoked, revoked);
    let form = "email=eve%40example.com&username=eve&password=Sup3r-secret-pass";
    let post_form = |path: &str, body: &'static str| {
        Request::post(path).header("content-type", "application/x-www-form-urlencoded").body(Body::from(body)).unwrap()
    };
    assert_eq!(c.send(post_form("/api/v1/users/", form)).await.status, StatusCode::CREATED);
    let eve = c.send(post_form("/api/v1/api-token-auth/", "username=eve&password=Sup3r-secret-pass")).await;
    callers.insert(Caller::OtherTenant, whoami(eve.body["token"].as_str().unwrap().to_string()).await.0);
    let instance = c.instance(ADMIN, "target", json!({})).await;
    let token = c.post("/v1/host-tokens", ADMIN, json!({"host": "matrix-host"})).await;
    assert_eq!(token.status, StatusCode::CREATED, "{}", token.text);
    let host_token = token.body["token"].as_str().unwrap().to_string();
    callers.insert(Caller::HostToken, Credentials { key_id: "host-token".into(), secret: host_token });

    // A path template with this organization's resources (or made-up ids) in its parameters.
    let fill = |template: &str| -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').unwrap() + start;
            let name = &rest[start + 1..end];
            let value = match name {
                "id" | "uuid" | "instance_id" | "segment"
                    if template.contains("instance") || template.contains("console") =>
                {
                    instance.clone()
                }
                "project_id" if template.starts_with("/cloud/") => project_number.to_string(),
                "project_id" => project_id.clone(),
                "organization_id" => organization_id.clone(),
                "region_id" => "1".into(),
                "action" if template.starts_with("/v1/hosts") => "drain".into(),
                "action" => "stop".into(),
                "port" => "22".into(),
                "file" => "app.js".into(),
                "field" => "labels".into(),
                "catalog" => "sizes".into(),
                "key_id" => "NIMnosuchkey".into(),
                "name" => "nosuchname".into(),
                _ => "00000000-0000-7000-8000-00000000beef".into(),
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    };

    let routes = nimbus_api::routes(nimbus_api::AppState::new(c.engine.clone()));
    let mut exchanges = Vec::new();
    for template in routes.paths() {
        let path = fill(template);
        for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            // Served methods answer a request without a key with anything but 405.
            if request(&c, &method, &path, None).await.status != StatusCode::METHOD_NOT_ALLOWED {
                exchanges.push((template.clone(), method, path.clone()));
            }
        }
    }
    // Deletions last, so that they do not take away what the other calls name; the account's own
    // deletion (SharedCloud's) the very last, as it ends the other tenant's key.
    exchanges.sort_by_key(|(t, m, _)| (*m == Method::DELETE, t.contains("/users/account")));
    // That deletion is tried once (its trailing-slash twin would find the account gone).
    exchanges.retain(|(t, m, _)| !(*m == Method::DELETE && t.ends_with("/users/account/")));

    let rules: BTreeMap<&str, &[(&str, Who)]> = RULES.iter().copied().collect();
    let mut failures = Vec::new();
    let mut observed = BTreeMap::<String, BTreeMap<String, String>>::new();
    let mut ruled = BTreeSet::new();
    for (template, method, path) in &exchanges {
        let key = normalized(template);
        let rule = rules
            .get(key.as_str())
            .and_then(|methods| methods.iter().find(|(m, _)| *m == method.as_str()))
            .map(|(_, w)| *w);
        ruled.insert(key.clone());
        let mut through = Vec::new();
        let mut answers = Vec::new();
        for caller in [
            Caller::NoKey,
            Caller::Revoked,
            Caller::HostToken,
            Caller::OtherTenant,
            Caller::Key(Role::ReadOnly),
            Caller::Key(Role::Member),
            Caller::Key(Role::Admin),
            Caller::Key(Role::OrgAdmin),
            Caller::Key(Role::Operator),
        ] {
            let r = request(&c, method, path, callers.get(&caller)).await;
            let refused = matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
            answers.push(format!("{caller:?}={}", r.status.as_u16()));
            if r.status.is_server_error() {
                failures.push(format!("{method} {path} as {caller:?}: {} {}", r.status, r.text));
            }
            if !refused {
                through.push(caller);
            }
            let Some(rule) = rule else { continue };
            let expected_through = match (rule, caller) {
                (Anyone, _) => true,
                (Agent, caller) => caller == Caller::HostToken,
                (Role(_), Caller::NoKey | Caller::Revoked | Caller::HostToken) => false,
                (Role(need), Caller::OtherTenant) => need <= Role::Admin,
                (Role(need), Caller::Key(have)) => have >= need,
            };
            let names_ours = path.contains(&instance)
                || path.contains(&project_id)
                || (template.starts_with("/cloud/") && template.contains("{project_id}"));
            let fault = if caller == Caller::OtherTenant && names_ours {
                // Another organization reaches nothing of this one's, whatever its role.
                r.status.is_success().then_some("another organization's tenant got through")
            } else if expected_through {
                refused.then_some("refused a caller the rule lets through")
            } else if matches!(caller, Caller::NoKey | Caller::Revoked | Caller::HostToken) {
                (!refused).then_some("let a caller without a valid key through")
            } else if refused && rule == Agent {
                // An API key, of any role, is no host token.
                (r.status != StatusCode::UNAUTHORIZED).then_some("refused an API key at an agent's route without 401")
            } else if refused {
                // A key below the route's role: 403, whatever its family (401 says the key is bad).
                (r.status != StatusCode::FORBIDDEN).then_some("refused a valid key without 403")
            } else {
                // A key below the role may still be turned away earlier, for its request (400, 422) or a
                // made-up id (404): nothing was changed or shown. Only a success is wrong.
                r.status.is_success().then_some("let a key below the route's role through")
            };
            if let Some(fault) = fault {
                failures.push(format!("{method} {path} ({rule:?}) as {caller:?}: {fault}: {} {}", r.status, r.text));
            }
        }
        if rule.is_none() {
            failures.push(format!("{method} {template}: no rule says who may call it ({})", answers.join(" ")));
        }
        observed.entry(key).or_default().insert(method.to_string(), format!("{through:?}"));
    }
    for stale in rules.keys().filter(|k| !ruled.contains(**k)) {
        failures.push(format!("a rule for {stale}, which no route serves"));
    }
    if std::env::var("ROLE_MATRIX_PRINT").is_ok() {
        for (path, methods) in &observed {
            println!("OBSERVED {path} {methods:?}");
        }
    }
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));
}
