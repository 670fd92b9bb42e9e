//! The holes an attacker's probe found (issue 16), each tried again through HTTP and now refused.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use nimbus_driver::SimConfig;
use nimbus_engine::EngineConfig;
use serde_json::json;

use crate::common::*;

/// A NUL or an escape sequence in a label ends up in logs, terminals and other systems' files: refused in
/// keys and values, natively and through a dialect (SF Compute's tags are labels), and nothing changes.
#[tokio::test]
async fn control_characters_in_labels_are_refused_everywhere() {
    let c = Cloud::new().await;
    for labels in [json!({"env": "a\u{0}b"}), json!({"e\u{1b}[31m": "x"}), json!({"env": "line\nbreak"})] {
        let r = c
            .post(
                "/v1/instances",
                ADMIN,
                json!({"name": "a", "instance_type": "standard.small", "template": "busybox",
                "labels": labels}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{labels}: {}", r.text);
        assert!(r.text.contains("control characters"), "{}", r.text);
    }
    let id = c.instance(ADMIN, "kept", json!({"labels": {"env": "prod"}})).await;
    let r = c
        .call(
            axum::http::Method::PATCH,
            &format!("/v1/instances/{id}"),
            ADMIN,
            Some(json!({"labels": {"env": "\u{7}bell"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let listed = c.get("/preview/v2/instances?limit=200", ADMIN).await;
    let sf_id = listed.body["data"].as_array().unwrap().iter().find(|i| i["name"] == "kept").unwrap()["id"].clone();
    let sf = c
        .call(
            axum::http::Method::PATCH,
            "/preview/v2/instances",
            ADMIN,
            Some(json!({"data": [{"id": sf_id, "tags": {"env": "\u{0}"}}]})),
        )
        .await;
    // SF Compute answers a field it cannot take with 422, in its own shape.
    assert_eq!(sf.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", sf.text);
    assert!(sf.text.contains("control characters") && sf.text.contains("no instance was changed"), "{}", sf.text);
    assert_eq!(c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["labels"], json!({"env": "prod"}));
}

/// Answers are never sniffed into something a browser runs, nor kept by a shared cache: on the native API,
/// on a dialect, and on errors.
#[tokio::test]
async fn every_answer_says_nosniff_and_no_store() {
    let c = Cloud::new().await;
    for (path, token) in
        [("/v1/instances", ADMIN), ("/v1/instances", "wrong"), ("/v2/zone", ADMIN), ("/nowhere", ADMIN)]
    {
        let r = c.get(path, token).await;
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers["cache-control"], "no-store", "{path}");
    }
}

/// `/metrics` tells every tenant's load and failures: operators only on the API's address.
#[tokio::test]
async fn metrics_are_for_operators_only() {
    let c = Cloud::new().await;
    let anonymous = c.send(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.text);
    let member = c.key("member", None).await;
    let r = c.get("/metrics", &member).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(!r.text.contains("nimbus_http_requests_total"));
    assert_eq!(c.get("/metrics", ADMIN).await.status, StatusCode::OK);
}

/// A client chooses its Host header: with a public URL configured, the console URL and Exoscale's zone
/// endpoint name the configured server, not the host a client said.
#[tokio::test]
async fn absolute_urls_come_from_the_public_url_not_the_host_header() {
    let config = EngineConfig { public_url: Some("https://cloud.example.test".into()), ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    let id = c.instance(ADMIN, "web", json!({})).await;
    let req = Request::post(format!("/v1/instances/{id}/console/ticket"))
        .header("host", "evil.example")
        .header("x-forwarded-proto", "http")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.body["url"].as_str().unwrap().starts_with("wss://cloud.example.test/v1/instances/"), "{}", r.text);
    let zones = c.send(Request::get("/v2/zone").header("host", "evil.example").body(Body::empty()).unwrap()).await;
    assert!(!zones.text.contains("evil.example"), "{}", zones.text);
    assert!(zones.text.contains("https://cloud.example.test/v2"), "{}", zones.text);
}

/// Registration is unauthenticated and makes an organization: closed unless the operator opens it, and
/// refused in SharedCloud's own error shape.
#[tokio::test]
async fn registration_is_closed_unless_the_operator_opens_it() {
    let c = Cloud::new().await;
    let form = "email=eve%40example.com&username=eve&password=Sup3r-secret-pass&password2=Sup3r-secret-pass";
    let req = Request::post("/api/v1/users/")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(r.text.contains("registration is closed"), "{}", r.text);
    assert!(r.body.get("error").is_none(), "SharedCloud's shape, not the native one: {}", r.text);
}

/// Roles mean what they say: a project's admin acts inside its project (no quotas, no projects, no keys
/// for other projects, no key above its own role); an organization's admin manages its projects and their
/// keys but not quotas; quotas are the operator's, for any project.
#[tokio::test]
async fn tenants_cannot_raise_their_quotas_or_reach_past_their_role() {
    let c = Cloud::new().await;
    let project = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let other = c.post("/v1/projects", ADMIN, json!({"name": "neighbour"})).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
    let other = other.id();
    let admin = c.key("admin", None).await;
    let org_admin = c.key("org-admin", None).await;
    let huge =
        json!({"instances": 1_000_000_000, "vcpus": 1_000_000_000, "memory_mib": 1u64 << 50, "disk_gb": 1u64 << 40});
    let before = c.get(&format!("/v1/projects/{project}"), ADMIN).await.body["quota"].clone();

    for (who, key) in [("a project admin", &admin), ("an organization admin", &org_admin)] {
        let r =
            c.call(axum::http::Method::PUT, &format!("/v1/projects/{project}/quota"), key, Some(huge.clone())).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{who} raising its own quota: {}", r.text);
        let r = c.post("/v1/api-keys", key, json!({"name": "up", "role": "operator"})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{who} minting an operator key: {}", r.text);
    }
    let r = c.post("/v1/projects", &admin, json!({"name": "mine"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a project admin making projects: {}", r.text);
    let r = c.post("/v1/api-keys", &admin, json!({"name": "x", "role": "admin", "project_id": other})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a project admin minting keys for another project: {}", r.text);
    let r = c.post("/v1/api-keys", &admin, json!({"name": "x", "role": "org-admin"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a project admin minting an organization admin: {}", r.text);
    assert_eq!(c.get(&format!("/v1/projects/{project}"), ADMIN).await.body["quota"], before, "nothing changed");

    // An organization admin manages its projects and their keys.
    let r = c.post("/v1/projects", &org_admin, json!({"name": "team-b"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = c.post("/v1/api-keys", &org_admin, json!({"name": "b", "role": "admin", "project_id": other})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // The operator sets quotas.
    let r = c.call(axum::http::Method::PUT, &format!("/v1/projects/{other}/quota"), ADMIN, Some(huge)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// A self-registered SharedCloud account (when registration is open) gets a project of its own with the
/// default quotas, and its login token cannot raise them or make projects.
#[tokio::test]
async fn a_registered_tenant_cannot_raise_its_quota() {
    let config = EngineConfig { allow_registration: true, ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    let form = "email=eve%40example.com&username=eve&password=Sup3r-secret-pass";
    let post = |path: &str, body: &'static str| {
        Request::post(path).header("content-type", "application/x-www-form-urlencoded").body(Body::from(body)).unwrap()
    };
    assert_eq!(c.send(post("/api/v1/users/", form)).await.status, StatusCode::CREATED);
    let token = c.send(post("/api/v1/api-token-auth/", "username=eve&password=Sup3r-secret-pass")).await;
    let token = token.body["token"].as_str().unwrap().to_string();
    let me = c.get("/v1/whoami", &token).await;
    let project = me.body["project"]["id"].as_str().unwrap().to_string();
    let r = c
        .call(
            axum::http::Method::PUT,
            &format!("/v1/projects/{project}/quota"),
            &token,
            Some(json!({"instances": 1_000_000_000, "vcpus": 1, "memory_mib": 1, "disk_gb": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = c.post("/v1/projects", &token, json!({"name": "more"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(
        c.get(&format!("/v1/projects/{project}"), &token).await.body["quota"],
        json!(nimbus_core::tenancy::Quota::default())
    );
}

/// The audit log: who did what, from where, with which key and request id. An organization's admin reads
/// its organization's changes and refusals, never another organization's; the operator reads everyone's,
/// forged credentials included; nobody below an organization admin reads it. Reads are not logged.
#[tokio::test]
async fn the_audit_log_tells_who_did_what_to_those_allowed_to_read_it() {
    let config = EngineConfig { allow_registration: true, ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    let (org_admin, member, read_only) =
        (c.key("org-admin", None).await, c.key("member", None).await, c.key("read-only", None).await);
    let member_key_id = c.get("/v1/whoami", &member).await.body["key_id"].as_str().unwrap().to_string();
    let ssh_key = |name: &str| json!({"name": name, "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"});
    let made = c.post("/v1/ssh-keys", &member, ssh_key("laptop")).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let (ssh_id, request_id) = (made.id(), made.headers["x-request-id"].to_str().unwrap().to_string());
    let refused = c.call(axum::http::Method::DELETE, &format!("/v1/ssh-keys/{ssh_id}"), &read_only, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(c.post("/v1/ssh-keys", "forged-secret", ssh_key("x")).await.status, StatusCode::UNAUTHORIZED);
    let form = "email=eve%40example.com&username=eve&password=Sup3r-secret-pass";
    let post_form = |path: &str, body: &'static str| {
        Request::post(path).header("content-type", "application/x-www-form-urlencoded").body(Body::from(body)).unwrap()
    };
    assert_eq!(c.send(post_form("/api/v1/users/", form)).await.status, StatusCode::CREATED);
    let eve = c.send(post_form("/api/v1/api-token-auth/", "username=eve&password=Sup3r-secret-pass")).await;
    let eve = eve.body["token"].as_str().unwrap().to_string();
    assert_eq!(c.post("/v1/ssh-keys", &eve, ssh_key("eve")).await.status, StatusCode::CREATED);

    for (who, key) in [("a member", &member), ("a read-only key", &read_only), ("another tenant", &eve)] {
        assert_eq!(c.get("/v1/audit", key).await.status, StatusCode::FORBIDDEN, "{who} reading the audit log");
    }
    let log = c.get("/v1/audit", &org_admin).await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    let items = log.body["items"].as_array().unwrap().clone();
    let made_entry = items.iter().find(|e| e["request_id"] == request_id.as_str()).expect("the change is logged");
    assert_eq!(made_entry["key_id"], member_key_id.as_str());
    assert_eq!(made_entry["role"], "member");
    assert_eq!((made_entry["method"].as_str(), made_entry["path"].as_str()), (Some("POST"), Some("/v1/ssh-keys")));
    assert_eq!(made_entry["status"], 201);
    assert!(items.iter().any(|e| e["status"] == 403 && e["path"] == format!("/v1/ssh-keys/{ssh_id}")), "the refusal");
    assert!(items.iter().all(|e| e["method"] != "GET" || e["status"] == 403), "reads are not logged, refusals are");
    assert!(items.iter().any(|e| e["path"] == "/v1/audit" && e["key_id"] == member_key_id.as_str()));
    assert!(items.iter().all(|e| e["status"] != 401), "requests no key of the organization made are not its own");
    assert!(!log.text.contains("/api/v1/users/") && !log.text.contains("eve"), "another organization's entries");

    let by_resource = c.get(&format!("/v1/audit?resource={ssh_id}"), &org_admin).await.body["items"].clone();
    assert_eq!(by_resource.as_array().unwrap().len(), 1, "{by_resource}");
    let by_key = c.get(&format!("/v1/audit?key_id={member_key_id}"), &org_admin).await.body["items"].clone();
    assert!(by_key.as_array().unwrap().iter().all(|e| e["key_id"] == member_key_id.as_str()) && by_key[0].is_object());
    let future = c.get("/v1/audit?since=2999-01-01T00:00:00Z", &org_admin).await.body["items"].clone();
    assert_eq!(future, json!([]));
    let page = c.get("/v1/audit?limit=1", &org_admin).await;
    let next = page.body["next_page_token"].as_str().expect("a next page").to_string();
    let second = c.get(&format!("/v1/audit?limit=1&page_token={next}"), &org_admin).await.body["items"].clone();
    assert_ne!(second[0]["seq"], page.body["items"][0]["seq"]);
    assert_eq!(c.get("/v1/audit?since=yesterday", &org_admin).await.status, StatusCode::BAD_REQUEST);

    let everyone = c.get("/v1/audit?limit=1000", ADMIN).await.body["items"].as_array().unwrap().clone();
    assert!(everyone.iter().any(|e| e["status"] == 401 && e["organization_id"].is_null()), "the forged key");
    assert!(everyone.iter().any(|e| e["path"] == "/api/v1/users/"), "the registration");
    assert!(everyone.iter().any(|e| e["key_id"].is_string() && e["organization_id"] != made_entry["organization_id"]));
}
