//! Operations, idempotency keys, pagination, the event stream and the catalog.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures_util::StreamExt;
use serde_json::json;
use tower::ServiceExt;

use crate::common::*;

fn create_with_key(key: &str, name: &str) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/instances")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(json!({"name": name, "instance_type": "standard.small", "template": "busybox"}).to_string()))
        .unwrap()
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_result_again() {
    let c = Cloud::new().await;
    let first = c.send(create_with_key("create-web-1", "web-1")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let again = c.send(create_with_key("create-web-1", "web-1")).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["id"], first.body["id"], "the same operation");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other_body = c.send(create_with_key("create-web-1", "web-2")).await;
    assert_eq!((other_body.status, other_body.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    assert_eq!(c.get("/v1/instances", ADMIN).await.body["items"].as_array().unwrap().len(), 1, "one instance");
}

#[tokio::test]
async fn lists_page_with_opaque_tokens_and_filter_by_labels() {
    let c = Cloud::new().await;
    for n in 0..7 {
        let env = if n % 2 == 0 { "prod" } else { "dev" };
        c.instance(ADMIN, &format!("i{n}"), json!({"labels": {"env": env}})).await;
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/v1/instances?labels=env%3Dprod&limit=2&page_token={t}"),
            None => "/v1/instances?labels=env%3Dprod&limit=2".into(),
        };
        let page = c.get(&path, ADMIN).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for i in page.body["items"].as_array().unwrap() {
            names.push(i["name"].as_str().unwrap().to_string());
        }
        match page.body["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(names, ["i0", "i2", "i4", "i6"]);
    let not_dev = c.get("/v1/instances?labels=env!%3Ddev", ADMIN).await;
    assert_eq!(not_dev.body["items"].as_array().unwrap().len(), 4);
    let by_name = c.get("/v1/instances?name=i3", ADMIN).await;
    assert_eq!(by_name.body["items"][0]["labels"]["env"], "dev");
    let by_state = c.get("/v1/instances?state=stopped", ADMIN).await;
    assert_eq!(by_state.body["items"], json!([]));
}

#[tokio::test]
async fn the_event_stream_tells_who_did_what() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "watched", json!({})).await;
    let req = Request::get("/v1/events?after=0")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let response = c.app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = response.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("event: operation.updated") || !text.contains(&id) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: instance.created"), "{text}");
    assert!(text.contains(r#""key_id":"NIMadmin""#), "the audit trail names the key: {text}");
    assert!(text.contains("request_id"), "{text}");
}

/// Many live subscribers (the hub reads each event once and hands it to all): every one of a project's
/// streams gets the project's new events, in order, and none of another project's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_subscriber_gets_its_projects_events_and_no_others() {
    let c = Cloud::new().await;
    let other = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await.id();
    let neighbour = c.key("member", Some(&other)).await;
    let open = |token: String| {
        let app = c.app.clone();
        async move {
            let req = Request::get("/v1/events").header("authorization", format!("Bearer {token}")).body(Body::empty());
            let response = app.oneshot(req.unwrap()).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().into_data_stream()
        }
    };
    let mut ours = Vec::new();
    for _ in 0..50 {
        ours.push(open(ADMIN.to_string()).await);
    }
    let mut theirs = open(neighbour.clone()).await;
    let id = c.instance(ADMIN, "broadcast", json!({})).await;
    let theirs_id = c.instance(&neighbour, "theirs", json!({})).await;
    for stream in &mut ours {
        let mut text = String::new();
        while !(text.contains("event: operation.updated") && text.contains(&id)) {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .expect("events arrive at every subscriber")
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(!text.contains(&theirs_id), "another project's event: {text}");
        let seqs: Vec<i64> = text.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.parse().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, once each: {seqs:?}");
    }
    let mut text = String::new();
    while !text.contains(&theirs_id) {
        let chunk =
            tokio::time::timeout(std::time::Duration::from_secs(5), theirs.next()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!text.contains(&id), "the neighbour saw this project's instance: {text}");
}

/// While nobody listens the hub does not read the events stored (it skips past them), yet a subscriber that
/// comes later gets them from the store, then the new ones live: in order, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_gets_what_nobody_heard_then_what_follows() {
    let c = Cloud::new().await;
    let unheard = c.instance(ADMIN, "unheard", json!({})).await;
    // Longer than the hub's look while nobody listens (once a second): it has skipped these by now.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let req = Request::get("/v1/events?after=0").header("authorization", format!("Bearer {ADMIN}")).body(Body::empty());
    let mut stream = c.app.clone().oneshot(req.unwrap()).await.unwrap().into_body().into_data_stream();
    let heard = c.instance(ADMIN, "heard", json!({})).await;
    let mut text = String::new();
    while !(text.contains("event: operation.updated") && text.contains(&heard) && text.ends_with("\n\n")) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("the new events arrive live")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains(&unheard), "the events stored while nobody listened: {text}");
    let seqs: Vec<i64> = text.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, once each: {seqs:?}");
}

#[tokio::test]
async fn operations_are_listed_per_instance_and_waitable() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "a", json!({})).await;
    c.act(ADMIN, &id, "stop", None).await;
    let ops = c.get(&format!("/v1/operations?target={id}"), ADMIN).await;
    let kinds: Vec<_> =
        ops.body["items"].as_array().unwrap().iter().map(|o| o["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["create", "stop"]);
    let waited = c.call(Method::POST, &format!("/v1/instances/{id}/start?wait=10"), ADMIN, None).await;
    assert_eq!((waited.status, waited.body["state"].as_str()), (StatusCode::OK, Some("success")), "{}", waited.text);
}

#[tokio::test]
async fn the_catalog_offers_zones_types_and_the_stock_template() {
    let c = Cloud::new().await;
    let zones = c.get("/v1/zones", ADMIN).await;
    assert_eq!(zones.body["items"][0], json!({"name": "local", "numeric_id": 1, "description": "This host"}));
    let types = c.get("/v1/instance-types", ADMIN).await;
    let small =
        types.body["items"].as_array().unwrap().iter().find(|t| t["name"] == "standard.small").cloned().unwrap();
    assert_eq!((small["vcpus"].as_u64(), small["family"].as_str()), (Some(2), Some("standard")));
    let busybox = c.get("/v1/templates/busybox", ADMIN).await;
    assert_eq!(busybox.body["password_enabled"], true);
    let private = c.post("/v1/templates", ADMIN, json!({"name": "mine", "source": "/srv/templates/mine"})).await;
    assert_eq!(private.status, StatusCode::CREATED, "{}", private.text);
    let host = c.get("/v1/host", ADMIN).await;
    assert_eq!((host.body["driver"].as_str(), host.body["accelerator"].as_str()), (Some("sim"), Some("none")));
}

#[tokio::test]
async fn ssh_keys_and_groups_are_referenced_by_instances() {
    let c = Cloud::new().await;
    let key = c.post("/v1/ssh-keys", ADMIN, json!({"name": "laptop", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"})).await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    assert!(key.body["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let bad = c.post("/v1/ssh-keys", ADMIN, json!({"name": "junk", "public_key": "hello"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let sg = c.post("/v1/security-groups", ADMIN, json!({"name": "web", "rules": [{"flow_direction": "ingress", "protocol": "tcp", "start_port": 80, "end_port": 80}]})).await;
    assert_eq!(sg.status, StatusCode::CREATED, "{}", sg.text);
    let id = c.instance(ADMIN, "keyed", json!({"ssh_keys": ["laptop"], "security_groups": [sg.body["id"]]})).await;
    let i = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!(i.body["ssh_keys"], json!(["laptop"]));
    let in_use =
        c.call(Method::DELETE, &format!("/v1/security-groups/{}", sg.body["id"].as_str().unwrap()), ADMIN, None).await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{}", in_use.text);
}
