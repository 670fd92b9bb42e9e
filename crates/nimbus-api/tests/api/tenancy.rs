//! Authentication, roles, project isolation and quotas.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn missing_or_wrong_credentials_are_401() {
    let c = Cloud::new().await;
    let none = c.send(axum::http::Request::get("/v1/instances").body(axum::body::Body::empty()).unwrap()).await;
    assert_eq!((none.status, none.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = c.get("/v1/instances", "not-a-key").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let deleted = c.key("member", None).await;
    let keys = c.get("/v1/api-keys", ADMIN).await;
    let member_id =
        keys.body["items"].as_array().unwrap().iter().find(|k| k["role"] == "member").unwrap()["key_id"].clone();
    assert!(keys.text.find("secret").is_none(), "secrets are never listed: {}", keys.text);
    let del = c.call(Method::DELETE, &format!("/v1/api-keys/{}", member_id.as_str().unwrap()), ADMIN, None).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get("/v1/whoami", &deleted).await.status, StatusCode::UNAUTHORIZED, "a deleted key stops working");
}

#[tokio::test]
async fn another_project_sees_nothing_of_mine() {
    let c = Cloud::new().await;
    let mine = c.instance(ADMIN, "secret-box", json!({})).await;
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    assert_eq!(project.status, StatusCode::CREATED, "{}", project.text);
    let other = c.key("admin", Some(project.body["id"].as_str().unwrap())).await;
    let who = c.get("/v1/whoami", &other).await;
    assert_eq!(who.body["project"]["name"], "other");
    assert!(who.body["project"]["numeric_id"].as_i64().unwrap() > 1);

    let get = c.get(&format!("/v1/instances/{mine}"), &other).await;
    assert_eq!(get.status, StatusCode::NOT_FOUND);
    assert!(!get.text.contains("secret-box"));
    assert_eq!(c.get("/v1/instances", &other).await.body["items"], json!([]));
    for (method, path, body) in [
        (Method::POST, format!("/v1/instances/{mine}/stop"), None),
        (Method::PATCH, format!("/v1/instances/{mine}"), Some(json!({"name": "stolen"}))),
        (Method::DELETE, format!("/v1/instances/{mine}"), None),
        (Method::GET, format!("/v1/instances/{mine}/console"), None),
    ] {
        let r = c.call(method.clone(), &path, &other, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}: {}", r.text);
    }
    let ops = c.get("/v1/operations", ADMIN).await;
    let op_id = ops.body["items"][0]["id"].as_str().unwrap();
    assert_eq!(c.get(&format!("/v1/operations/{op_id}"), &other).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.get("/v1/operations", &other).await.body["items"], json!([]));
    assert_eq!(c.state(ADMIN, &mine).await, "running", "untouched");
}

#[tokio::test]
async fn roles_limit_what_a_key_may_do() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "a", json!({})).await;
    let reader = c.key("read-only", None).await;
    let member = c.key("member", None).await;
    assert_eq!(c.get(&format!("/v1/instances/{id}"), &reader).await.status, StatusCode::OK);
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/instances".to_string(),
            Some(json!({"name": "x", "instance_type": "standard.small", "template": "busybox"})),
        ),
        (Method::POST, format!("/v1/instances/{id}/stop"), None),
        (Method::PATCH, format!("/v1/instances/{id}"), Some(json!({"name": "y"}))),
    ] {
        let r = c.call(method, &path, &reader, body).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"), "{path}: {}", r.text);
    }
    let member_stop = c.call(Method::POST, &format!("/v1/instances/{id}/stop"), &member, None).await;
    assert_eq!(member_stop.status, StatusCode::ACCEPTED);
    let r = c.post("/v1/api-keys", &member, json!({"name": "k", "role": "admin"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "members cannot mint keys");
    assert_eq!(c.post("/v1/projects", &member, json!({"name": "p"})).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn quotas_hold_even_under_concurrent_creates() {
    let c = std::sync::Arc::new(Cloud::new().await);
    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let q = c
        .call(
            Method::PUT,
            &format!("/v1/projects/{project_id}/quota"),
            ADMIN,
            Some(json!({"instances": 3, "vcpus": 100, "memory_mib": 1000000, "disk_gb": 1000})),
        )
        .await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.text);
    let mut tasks = Vec::new();
    for n in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.post(
                "/v1/instances",
                ADMIN,
                json!({"name": format!("q{n}"), "instance_type": "standard.small", "template": "busybox"}),
            )
            .await
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::FORBIDDEN => assert_eq!(r.code(), "quota_exceeded", "{}", r.text),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(accepted, 3, "exactly the quota's worth of creates went through");
    let usage = c.get(&format!("/v1/projects/{project_id}"), ADMIN).await;
    assert_eq!(usage.body["usage"]["instances"], 3);
    assert_eq!(c.get("/v1/instances", ADMIN).await.body["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn scaling_past_the_vcpu_quota_is_refused_and_keeps_the_old_type() {
    let c = Cloud::new().await;
    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    c.call(
        Method::PUT,
        &format!("/v1/projects/{project_id}/quota"),
        ADMIN,
        Some(json!({"instances": 5, "vcpus": 2, "memory_mib": 1000000, "disk_gb": 1000})),
    )
    .await;
    let id = c.instance(ADMIN, "a", json!({})).await;
    c.act(ADMIN, &id, "stop", None).await;
    let r = c
        .call(
            Method::POST,
            &format!("/v1/instances/{id}/scale"),
            ADMIN,
            Some(json!({"instance_type": "standard.large"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "quota_exceeded"), "{}", r.text);
    let i = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!((i.body["instance_type"].as_str(), i.body["state"].as_str()), (Some("standard.small"), Some("stopped")));
}

#[tokio::test]
async fn a_full_instance_network_refuses_the_create_at_once() {
    let config = nimbus_engine::EngineConfig { network_cidr: "10.213.0.0/29".into(), ..Default::default() };
    let c = Cloud::with(nimbus_driver::SimConfig::default(), config).await;
    // A /29 has 8 addresses: network, gateway, broadcast and five for instances.
    for n in 0..5 {
        c.instance(ADMIN, &format!("i{n}"), json!({})).await;
    }
    let r = c
        .post(
            "/v1/instances",
            ADMIN,
            json!({"name": "one-too-many", "instance_type": "standard.micro", "template": "busybox"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "conflict"), "{}", r.text);
    assert!(r.message().contains("no free address"), "{}", r.text);
    assert_eq!(c.get("/v1/instances", ADMIN).await.body["items"].as_array().unwrap().len(), 5);
    // Deleting one frees its address for the next create.
    let first = c.get("/v1/instances?name=i0", ADMIN).await.body["items"][0]["id"].as_str().unwrap().to_string();
    let del = c.call(Method::DELETE, &format!("/v1/instances/{first}"), ADMIN, None).await;
    c.wait(&del.id(), ADMIN).await;
    c.instance(ADMIN, "fits-now", json!({})).await;
}

#[tokio::test]
async fn a_deleted_instances_address_goes_to_a_new_instance_only_once_the_network_wraps() {
    let config = nimbus_engine::EngineConfig { network_cidr: "10.213.0.0/29".into(), ..Default::default() };
    let c = Cloud::with(nimbus_driver::SimConfig::default(), config).await;
    let address = |id: String| {
        let c = &c;
        async move { c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["ip_addresses"][0].clone() }
    };
    let first = c.instance(ADMIN, "first", json!({})).await;
    assert_eq!(address(first.clone()).await, "10.213.0.2");
    let del = c.call(Method::DELETE, &format!("/v1/instances/{first}"), ADMIN, None).await;
    c.wait(&del.id(), ADMIN).await;
    // Whatever still points at .2 (a DNS entry, a firewall rule, an ARP cache) does not reach a stranger.
    let second = c.instance(ADMIN, "second", json!({})).await;
    assert_eq!(address(second).await, "10.213.0.3");
    for n in 4..=6 {
        let id = c.instance(ADMIN, &format!("i{n}"), json!({})).await;
        assert_eq!(address(id).await, format!("10.213.0.{n}"));
    }
    // The network's end is reached: the freed address is handed out again.
    let wrapped = c.instance(ADMIN, "wrapped", json!({})).await;
    assert_eq!(address(wrapped).await, "10.213.0.2");
}
