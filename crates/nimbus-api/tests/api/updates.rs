//! Merge-patch semantics, ETags and the all-or-nothing batch update.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn labels_follow_json_merge_patch() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "a", json!({"labels": {"env": "prod", "team": "web", "tier": "front"}})).await;
    let r = c
        .call(
            Method::PATCH,
            &format!("/v1/instances/{id}"),
            ADMIN,
            Some(json!({"labels": {"team": null, "env": "dev", "new": "x"}, "description": "hello"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["labels"], json!({"env": "dev", "new": "x", "tier": "front"}));
    assert_eq!(r.body["description"], "hello");
    assert_eq!(r.body["name"], "a", "absent fields stay");
    let system = r.body["system_labels"].clone();
    assert_eq!(system["nimbus.zone"], "local");

    let cleared = c.call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(json!({"labels": null}))).await;
    assert_eq!(cleared.body["labels"], json!({}));
    assert_eq!(cleared.body["system_labels"], system, "read-only labels never change");

    for (body, field) in [
        (json!({"state": "stopped"}), "state"),
        (json!({"system_labels": {"a": "b"}}), "system_labels"),
        (json!({"name": 3}), "name"),
        (json!({"labels": {"env": 1}}), "labels.env"),
        (json!({"labels": ["a"]}), "labels"),
    ] {
        let r = c.call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.message().contains(field), "{body}: the message names {field}: {}", r.text);
    }
    let after = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!((after.body["state"].as_str(), after.body["labels"].clone()), (Some("running"), json!({})));
}

#[tokio::test]
async fn a_stale_etag_is_refused_and_changes_nothing() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "a", json!({})).await;
    let etag = c.get(&format!("/v1/instances/{id}"), ADMIN).await.headers["etag"].to_str().unwrap().to_string();
    let patch = |etag: String, name: &str| {
        Request::builder()
            .method(Method::PATCH)
            .uri(format!("/v1/instances/{id}"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/merge-patch+json")
            .header("if-match", etag)
            .body(Body::from(json!({"name": name}).to_string()))
            .unwrap()
    };
    let first = c.send(patch(etag.clone(), "b")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_ne!(first.headers["etag"].to_str().unwrap(), etag, "a change gives a new ETag");
    let stale = c.send(patch(etag, "c")).await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
        "{}",
        stale.text
    );
    assert_eq!(c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["name"], "b");
}

#[tokio::test]
async fn concurrent_label_writers_never_lose_an_update() {
    let c = std::sync::Arc::new(Cloud::new().await);
    let id = c.instance(ADMIN, "a", json!({})).await;
    let mut tasks = Vec::new();
    for n in 0..10 {
        let (c, id) = (c.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let r = c
                .call(
                    Method::PATCH,
                    &format!("/v1/instances/{id}"),
                    ADMIN,
                    Some(json!({"labels": {format!("k{n}"): "v"}})),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let labels = c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["labels"].clone();
    assert_eq!(labels.as_object().unwrap().len(), 10, "every writer's label is there: {labels}");
}

#[tokio::test]
async fn a_batch_update_is_all_or_nothing() {
    let c = Cloud::new().await;
    let a = c.instance(ADMIN, "a", json!({})).await;
    let b = c.instance(ADMIN, "b", json!({})).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let r = c
        .call(
            Method::PATCH,
            "/v1/instances",
            ADMIN,
            Some(json!({"items": [
                {"id": a, "labels": {"batch": "1"}},
                {"id": unknown, "name": "ghost"},
                {"id": b, "labels": {"batch": "1"}},
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(r.message().contains(&unknown), "{}", r.text);
    for id in [&a, &b] {
        assert_eq!(c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["labels"], json!({}), "nothing was written");
    }
    let bad_value = c
        .call(
            Method::PATCH,
            "/v1/instances",
            ADMIN,
            Some(json!({"items": [{"id": a, "labels": {"x": "1"}}, {"id": b, "name": "-bad"}]})),
        )
        .await;
    assert_eq!(bad_value.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad_value.text);
    assert!(bad_value.message().contains("name"), "{}", bad_value.text);
    assert_eq!(c.get(&format!("/v1/instances/{a}"), ADMIN).await.body["labels"], json!({}));

    let ok = c
        .call(
            Method::PATCH,
            "/v1/instances",
            ADMIN,
            Some(json!({"items": [
                {"id": b, "name": "first-b"},
                {"id": a, "labels": {"n": "1"}},
                {"id": b, "name": "last-b"},
                {"id": a},
            ]})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let items = ok.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one entry per unique id");
    assert_eq!(
        (items[0]["id"].as_str(), items[0]["name"].as_str()),
        (Some(b.as_str()), Some("last-b")),
        "first-seen order, the last name wins"
    );
    assert_eq!(items[1]["labels"], json!({"n": "1"}), "entries apply in order: an id-only one undoes nothing");
}

#[tokio::test]
async fn long_names_are_fine_and_hostnames_stay_valid_dns_names() {
    let c = Cloud::new().await;
    let long = format!("Build_Runner.{}", "x".repeat(200));
    let id = c.instance(ADMIN, &long, json!({})).await;
    let i = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!(i.body["name"], long.as_str());
    let host = i.body["hostname"].as_str().unwrap();
    assert!(host.starts_with("build-runner.") && host.split('.').all(|l| l.len() <= 63), "{host}");
    let r = c
        .call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(json!({"hostname": "web-1.example.org"})))
        .await;
    assert_eq!(r.body["hostname"], "web-1.example.org", "{}", r.text);
    let bad =
        c.call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(json!({"hostname": "under_score"}))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.message().contains("hostname"), "{}", bad.text);
}
