//! Bad input of each kind gets a clear error in the native shape and changes nothing; every response
//! carries a request id; the OpenAPI document served matches the one checked in.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

fn raw(method: Method, path: &str, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_400_naming_the_field() {
    let c = Cloud::new().await;
    let cases: [(&str, &str); 6] = [
        ("{not json", "malformed JSON"),
        (r#"{"name": 5, "instance_type": "standard.small", "template": "busybox"}"#, "name"),
        (r#"{"name": "a", "instance_type": "standard.small", "template": "busybox", "colour": "red"}"#, "colour"),
        (r#"{"name": "a", "instance_type": "standard.small"}"#, "template"),
        (
            r#"{"name": "a", "instance_type": "standard.small", "template": "busybox", "disk_size_gb": -1}"#,
            "disk_size_gb",
        ),
        (r#"{"name": "a", "instance_type": "standard.small", "template": "busybox", "user_data": "%%%"}"#, "user_data"),
    ];
    for (body, field) in cases {
        let r = c.send(raw(Method::POST, "/v1/instances", body)).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}: {}", r.text);
        assert!(r.message().contains(field), "{body}: the message names {field}: {}", r.text);
    }
    for (body, field) in [
        (json!({"name": "a", "instance_type": "huge.nope", "template": "busybox"}), "instance_type"),
        (json!({"name": "a", "instance_type": "standard.small", "template": "windows"}), "template"),
        (json!({"name": "bad name!", "instance_type": "standard.small", "template": "busybox"}), "name"),
        (
            json!({"name": "a", "instance_type": "standard.small", "template": "busybox", "ssh_keys": ["nope"]}),
            "ssh_keys",
        ),
        (
            json!({"name": "a", "instance_type": "standard.small", "template": "busybox", "labels": {"a,b": "c"}}),
            "labels",
        ),
    ] {
        let r = c.post("/v1/instances", ADMIN, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.message().contains(field), "{body}: {}", r.text);
    }
    assert_eq!(c.get("/v1/instances", ADMIN).await.body["items"], json!([]), "nothing was created");
    assert_eq!(c.get("/v1/operations", ADMIN).await.body["items"], json!([]));
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let c = Cloud::new().await;
    let big = format!(
        r#"{{"name": "a", "instance_type": "standard.small", "template": "busybox", "description": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/instances")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from(big))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"), "{}", r.text);
    let too_much_user_data = base64_of(&vec![b'x'; 40 * 1024]);
    let r = c.post("/v1/instances", ADMIN, json!({"name": "a", "instance_type": "standard.small", "template": "busybox", "user_data": too_much_user_data})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("user_data"), "{}", r.text);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn unknown_ids_routes_and_actions_are_404() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "a", json!({})).await;
    for path in [
        format!("/v1/instances/{}", uuid::Uuid::now_v7()),
        "/v1/instances/not-a-uuid".to_string(),
        format!("/v1/operations/{}", uuid::Uuid::now_v7()),
        "/v1/nothing-here".to_string(),
    ] {
        let r = c.get(&path, ADMIN).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{path}: {}", r.text);
    }
    let r = c.call(Method::POST, &format!("/v1/instances/{id}/explode"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c.call(Method::POST, &format!("/v1/instances/{id}/scale"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "scale without a body: {}", r.text);
    let r = c.call(Method::PUT, "/v1/instances", ADMIN, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"), "{}", r.text);
}

#[tokio::test]
async fn bad_query_parameters_are_400() {
    let c = Cloud::new().await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("state=flying", "state"),
        ("page_token=zzz", "page_token"),
        ("labels=a%3Db%3Dc%2C%3D", "label"),
    ] {
        let r = c.get(&format!("/v1/instances?{query}"), ADMIN).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert!(r.message().contains(field), "{query}: {}", r.text);
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_that_errors_repeat() {
    let c = Cloud::new().await;
    let ok = c.get("/v1/whoami", ADMIN).await;
    assert!(ok.headers.get("x-request-id").is_some());
    let err = c.get("/v1/instances/not-a-uuid", ADMIN).await;
    let header = err.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(err.body["error"]["request_id"], header);
    let given = Request::get("/healthz").header("x-request-id", "trace-me").body(Body::empty()).unwrap();
    assert_eq!(c.send(given).await.headers["x-request-id"], "trace-me");
}

#[tokio::test]
async fn the_served_openapi_document_matches_the_checked_in_copy() {
    let c = Cloud::new().await;
    let served = c.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(served.status, StatusCode::OK);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &served.text).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).expect("docs/openapi.json exists (UPDATE_OPENAPI=1 writes it)");
    assert!(
        checked_in == served.text,
        "docs/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p nimbus-api --test api openapi` and commit it"
    );
    for path in ["/v1/instances", "/v1/instances/{id}/{action}", "/v1/operations/{id}", "/v1/whoami"] {
        assert!(served.body["paths"].get(path).is_some(), "{path} is documented");
    }
}

/// What generated clients trip on: a parameter in the wrong place, two operations of one name, a link to
/// nothing, an authenticated operation whose 401 is not described.
#[test]
fn the_openapi_document_is_consistent() {
    let doc: Value = serde_json::from_str(&nimbus_api::openapi::document_json()).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                if p["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: path parameter {name} is not in the path"
                    );
                }
            }
            for status in ["401", "503"] {
                assert!(op["responses"].get(status).is_some(), "{method} {path} does not describe {status}");
            }
        }
    }
    let links = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .flat_map(|op| op["responses"].as_object().unwrap().values())
        .filter_map(|r| r["links"].as_object())
        .flat_map(|links| links.values());
    let mut n = 0;
    for link in links {
        let target = link["operationId"].as_str().unwrap_or_else(|| panic!("a link names no operationId: {link}"));
        assert!(ids.contains(target), "a link to {target}, which does not exist");
        n += 1;
    }
    assert!(n > 20, "links for stateful clients: {n}");
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let c = Cloud::new().await;
    c.instance(ADMIN, "a", json!({})).await;
    let health = c.send(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(health.status, StatusCode::OK);
    let metrics = c.get("/metrics", ADMIN).await;
    assert!(
        metrics.text.contains(r#"nimbus_http_requests_total{method="POST",route="/v1/instances",status="202"} 1"#),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("nimbus_http_request_duration_seconds_bucket"));
    // The worker counts an outcome just after committing it, so a waiter may see the operation end a moment
    // before the counter moves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let metrics = c.get("/metrics", ADMIN).await;
        if metrics.text.contains("nimbus_operations_succeeded_total 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", metrics.text);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
