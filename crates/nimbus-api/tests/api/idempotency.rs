//! `Idempotency-Key`s: a key is its API key's own; a request applies once, whatever happens to its answer;
//! a repeat is answered with what the first request did, never by running it again.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use nimbus_driver::SimConfig;
use nimbus_engine::EngineConfig;
use serde_json::{json, Value};

use crate::common::*;

const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop";

fn keyed(method: Method, path: &str, token: &str, key: &str, body: Option<&Value>) -> Request<Body> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("idempotency-key", key);
    match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    }
}

async fn count(c: &Cloud, list: &str) -> usize {
    let r = c.get(list, ADMIN).await;
    assert_eq!(r.status, StatusCode::OK, "{list}: {}", r.text);
    r.body["items"].as_array().map_or(0, Vec::len)
}

/// Another API key of the same project sending the same key and request gets its own request run, not the
/// first key's answer (which could hold another key's secret, or name what the other key made).
#[tokio::test]
async fn an_idempotency_key_is_its_api_keys_own() {
    let c = Cloud::new().await;
    let (alice, bob) = (c.key("member", None).await, c.key("member", None).await);
    let body = json!({"name": "shared", "instance_type": "standard.small", "template": "busybox"});
    let first = c.send(keyed(Method::POST, "/v1/instances", &alice, "create-shared", Some(&body))).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let second = c.send(keyed(Method::POST, "/v1/instances", &bob, "create-shared", Some(&body))).await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.text);
    assert!(second.headers.get("idempotent-replayed").is_none(), "bob's request ran: {:?}", second.headers);
    assert_ne!(second.body["id"], first.body["id"], "bob's own operation, not alice's");
    assert_eq!(count(&c, "/v1/instances").await, 2);
    let again = c.send(keyed(Method::POST, "/v1/instances", &alice, "create-shared", Some(&body))).await;
    assert_eq!(again.body["id"], first.body["id"], "alice's key still answers alice");
}

/// One POST route the idempotency middleware covers: how to call it, and how to count what it makes.
struct Route {
    name: &'static str,
    path: String,
    body: Option<Value>,
    status: StatusCode,
    /// A list whose length grows by one when the request applies.
    list: Option<String>,
}

async fn routes(c: &Cloud) -> Vec<Route> {
    let running = c.instance(ADMIN, "running", json!({})).await;
    let other = c.instance(ADMIN, "other", json!({})).await;
    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let snapshot_op = c.act(ADMIN, &other, "create-snapshot", Some(json!({"name": "before"}))).await;
    assert_eq!(snapshot_op["state"], "success", "{snapshot_op}");
    let snapshot = snapshot_op["result"]["snapshot_id"].as_str().unwrap().to_string();
    let made = c.post("/v1/volumes", ADMIN, json!({"name": "spare", "size_gb": 1})).await;
    let volume = c.wait(&made.id(), ADMIN).await["target"]["id"].as_str().unwrap().to_string();
    let made = c.post("/v1/volumes", ADMIN, json!({"name": "kept", "size_gb": 1})).await;
    let snapped = c.wait(&made.id(), ADMIN).await["target"]["id"].as_str().unwrap().to_string();
    let route = |name, path: String, body: Option<Value>, status, list: Option<String>| Route {
        name,
        path,
        body,
        status,
        list,
    };
    vec![
        route(
            "create an instance",
            "/v1/instances".into(),
            Some(json!({"name": "web", "instance_type": "standard.small", "template": "busybox"})),
            StatusCode::ACCEPTED,
            Some("/v1/instances".into()),
        ),
        route(
            "an action",
            format!("/v1/instances/{running}/stop"),
            None,
            StatusCode::ACCEPTED,
            Some(format!("/v1/operations?target={running}")),
        ),
        route(
            "an action with a wait",
            format!("/v1/instances/{other}/reboot?wait=10"),
            None,
            StatusCode::OK,
            Some(format!("/v1/operations?target={other}")),
        ),
        route("add-protection", format!("/v1/instances/{other}/add-protection"), None, StatusCode::OK, None),
        route(
            "promote a snapshot",
            format!("/v1/snapshots/{snapshot}/promote"),
            Some(json!({"name": "golden"})),
            StatusCode::ACCEPTED,
            Some(format!("/v1/operations?target={other}")),
        ),
        route(
            "an API key",
            "/v1/api-keys".into(),
            Some(json!({"name": "ci", "role": "member", "project_id": project_id})),
            StatusCode::CREATED,
            Some("/v1/api-keys".into()),
        ),
        route(
            "a project",
            "/v1/projects".into(),
            Some(json!({"name": "side"})),
            StatusCode::CREATED,
            Some("/v1/projects".into()),
        ),
        route(
            "an SSH key",
            "/v1/ssh-keys".into(),
            Some(json!({"name": "laptop", "public_key": SSH_KEY})),
            StatusCode::CREATED,
            Some("/v1/ssh-keys".into()),
        ),
        route(
            "a reserved address",
            "/v1/reserved-addresses".into(),
            Some(json!({"name": "front"})),
            StatusCode::CREATED,
            Some("/v1/reserved-addresses".into()),
        ),
        route(
            "a template",
            "/v1/templates".into(),
            Some(json!({"name": "mine", "source": "/srv/templates/mine"})),
            StatusCode::CREATED,
            Some("/v1/templates".into()),
        ),
        route(
            "a security group",
            "/v1/security-groups".into(),
            Some(json!({"name": "web", "rules": [{"flow_direction": "ingress", "protocol": "tcp",
                "start_port": 22, "end_port": 22, "network": "0.0.0.0/0"}]})),
            StatusCode::CREATED,
            Some("/v1/security-groups".into()),
        ),
        route(
            "a volume",
            "/v1/volumes".into(),
            Some(json!({"name": "data", "size_gb": 1})),
            StatusCode::ACCEPTED,
            Some("/v1/volumes".into()),
        ),
        route(
            "a volume action",
            format!("/v1/volumes/{volume}/resize"),
            Some(json!({"size_gb": 2})),
            StatusCode::ACCEPTED,
            Some(format!("/v1/operations?target={volume}")),
        ),
        route(
            "a volume snapshot",
            format!("/v1/volumes/{snapped}/snapshots"),
            Some(json!({"name": "s1"})),
            StatusCode::ACCEPTED,
            Some(format!("/v1/operations?target={snapped}")),
        ),
        route(
            "an anti-affinity group",
            "/v1/anti-affinity-groups".into(),
            Some(json!({"name": "spread"})),
            StatusCode::CREATED,
            Some("/v1/anti-affinity-groups".into()),
        ),
    ]
}

/// The store fails to record a request's answer after the request committed (a full disk, a lost
/// connection; a kill does the same): the retry the client sends is answered with what the request did —
/// the same status, the same ids, the same shape — and nothing is applied twice. Before keys recorded what
/// their request applied, such a key answered 409 "still being processed" forever.
#[tokio::test]
async fn a_request_whose_answer_was_lost_is_answered_again_and_applied_once() {
    let c = Cloud::new().await;
    for (n, r) in routes(&c).await.into_iter().enumerate() {
        let before = match &r.list {
            Some(list) => count(&c, list).await,
            None => 0,
        };
        let key = format!("lost-answer-{n}");
        c.faults.fail_next("idempotency_finish", 1);
        let first = c.send(keyed(Method::POST, &r.path, ADMIN, &key, r.body.as_ref())).await;
        assert_eq!(first.status, r.status, "{}: {}", r.name, first.text);
        let retry = c.send(keyed(Method::POST, &r.path, ADMIN, &key, r.body.as_ref())).await;
        assert_eq!(retry.status, r.status, "{}: the retry: {}", r.name, retry.text);
        assert_eq!(retry.headers["idempotent-replayed"], "true", "{}", r.name);
        assert_eq!(retry.headers.get("content-type"), first.headers.get("content-type"), "{}", r.name);
        // Same object: same id, same fields (values of an operation move on as it runs, and the fields an
        // ending operation gains, its result or its failure, may be there by the retry: the request's own
        // server runs it at once).
        assert_eq!(retry.body["id"], first.body["id"], "{}: {} vs {}", r.name, retry.text, first.text);
        let ending = ["result", "reason", "message"];
        let fields = |v: &Value| {
            v.as_object()
                .map(|o| o.keys().filter(|k| !ending.contains(&k.as_str())).cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(fields(&retry.body), fields(&first.body), "{}", r.name);
        if r.name == "an API key" {
            assert_eq!(retry.body["secret"], first.body["secret"], "the secret, shown again to its creator");
        }
        if r.name == "add-protection" {
            assert_eq!(retry.headers["etag"], first.headers["etag"], "protected once: one new version");
        }
        if let Some(list) = &r.list {
            assert_eq!(count(&c, list).await, before + 1, "{}: applied exactly once", r.name);
        }
        // And the answer is stable from then on.
        let third = c.send(keyed(Method::POST, &r.path, ADMIN, &key, r.body.as_ref())).await;
        assert_eq!((third.status, &third.body["id"]), (r.status, &first.body["id"]), "{}", r.name);
    }
}

/// A host token's secret is shown once and kept only as a hash: when the answer of the request that made it
/// is lost, the retry makes no second token and says which one was made, so the operator can revoke it.
#[tokio::test]
async fn a_host_token_whose_answer_was_lost_is_named_not_made_again() {
    let c = Cloud::new().await;
    let before = count(&c, "/v1/host-tokens").await;
    c.faults.fail_next("idempotency_finish", 1);
    let body = json!({"host": "rack-1"});
    let first = c.send(keyed(Method::POST, "/v1/host-tokens", ADMIN, "token-1", Some(&body))).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let retry = c.send(keyed(Method::POST, "/v1/host-tokens", ADMIN, "token-1", Some(&body))).await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text);
    let id = first.body["id"].as_str().unwrap();
    assert!(retry.text.contains(id), "{}", retry.text);
    assert!(!retry.text.contains(first.body["token"].as_str().unwrap()), "the secret is never shown again");
    assert_eq!(count(&c, "/v1/host-tokens").await, before + 1, "one token made");
}

/// Every POST of the native API is either in the table above, or the host-token test, or deliberately not
/// replayed: a console ticket (a single-use secret kept only as a hash; minting another is harmless) and a
/// host's admin actions (which set a state, so a repeat changes nothing).
#[tokio::test]
async fn every_post_route_is_covered_by_the_lost_answer_test() {
    let doc: Value = serde_json::from_str(&nimbus_api::openapi::document_json()).unwrap();
    let mut posts: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, ops)| ops.get("post").is_some())
        .map(|(path, _)| path.clone())
        .collect();
    posts.sort();
    assert_eq!(
        posts,
        [
            "/v1/anti-affinity-groups",
            "/v1/api-keys",
            "/v1/host-tokens",
            "/v1/hosts/{name}/{action}",
            "/v1/instances",
            "/v1/instances/{id}/console/ticket",
            "/v1/instances/{id}/{action}",
            "/v1/projects",
            "/v1/reserved-addresses",
            "/v1/security-groups",
            "/v1/snapshots/{id}/promote",
            "/v1/ssh-keys",
            "/v1/templates",
            "/v1/volumes",
            "/v1/volumes/{id}/snapshots",
            "/v1/volumes/{id}/{action}",
        ],
        "a new POST route: add it to `routes` above"
    );
}

/// A repeat while the first request still waits for its operation: the operation is recorded already, so
/// the repeat is answered with it (waiting for it as asked too), and no second stop is recorded. (A repeat
/// that comes before the first request committed anything is told to retry shortly: see the store's
/// conformance cases.)
#[tokio::test]
async fn a_repeat_while_the_first_still_waits_gets_the_same_operation() {
    let sim =
        SimConfig { action_delays: [("stop".to_string(), Duration::from_millis(1500))].into(), ..Default::default() };
    let c = std::sync::Arc::new(Cloud::with(sim, EngineConfig::default()).await);
    let id = c.instance(ADMIN, "slow", json!({})).await;
    let path = format!("/v1/instances/{id}/stop?wait=10");
    let first = {
        let (c, path) = (c.clone(), path.clone());
        tokio::spawn(async move { c.send(keyed(Method::POST, &path, ADMIN, "slow-stop", None)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = c.send(keyed(Method::POST, &path, ADMIN, "slow-stop", None)).await;
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body["state"].as_str()), (StatusCode::OK, Some("success")), "{}", first.text);
    assert_eq!((early.status, &early.body["id"]), (StatusCode::OK, &first.body["id"]), "{}", early.text);
    assert_eq!(early.headers["idempotent-replayed"], "true");
    let ops = c.get(&format!("/v1/operations?target={id}"), ADMIN).await.body["items"].clone();
    assert_eq!(ops.as_array().unwrap().iter().filter(|o| o["kind"] == "stop").count(), 1, "{ops}");
}

/// The client gives up on a request that is waiting for its operation (the server drops the request): the
/// operation was recorded, so the retry is answered with it, and waits for it as asked; no second stop.
#[tokio::test]
async fn a_request_dropped_after_it_applied_answers_the_retry_with_what_it_did() {
    let sim =
        SimConfig { action_delays: [("stop".to_string(), Duration::from_millis(1500))].into(), ..Default::default() };
    let c = std::sync::Arc::new(Cloud::with(sim, EngineConfig::default()).await);
    let id = c.instance(ADMIN, "left", json!({})).await;
    let path = format!("/v1/instances/{id}/stop?wait=10");
    let gone = {
        let (c, path) = (c.clone(), path.clone());
        tokio::spawn(async move { c.send(keyed(Method::POST, &path, ADMIN, "left-stop", None)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.abort();
    let _ = gone.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = c.send(keyed(Method::POST, &path, ADMIN, "left-stop", None)).await;
    assert_eq!((retry.status, retry.body["state"].as_str()), (StatusCode::OK, Some("success")), "{}", retry.text);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    let ops = c.get(&format!("/v1/operations?target={id}"), ADMIN).await.body["items"].clone();
    let stops = ops.as_array().unwrap().iter().filter(|o| o["kind"] == "stop").count();
    assert_eq!(stops, 1, "{ops}");
}
