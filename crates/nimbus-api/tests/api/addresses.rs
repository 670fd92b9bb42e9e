//! Reserved addresses through `/v1/reserved-addresses`: an address of the instance network held apart, the
//! instance made with it, the address kept past that instance and never offered to another create; and
//! the refusals.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_reserved_address_is_kept_past_its_instance_and_offered_to_no_other() {
    let c = Cloud::new().await;
    let r = c.post("/v1/reserved-addresses", ADMIN, json!({"name": "front"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (id, ip) = (r.id(), r.body["ip_address"].as_str().unwrap().to_string());
    assert_eq!(r.body["instance_id"], serde_json::Value::Null);

    let vm = c.instance(ADMIN, "front-1", json!({"reserved_address_id": id})).await;
    let i = c.get(&format!("/v1/instances/{vm}"), ADMIN).await.body;
    assert_eq!(i["ip_addresses"], json!([ip]), "{i}");
    assert_eq!(c.get(&format!("/v1/reserved-addresses/{id}"), ADMIN).await.body["instance_id"], vm.as_str());
    // Held: a second instance cannot have it, and it cannot be deleted.
    let r = c
        .post(
            "/v1/instances",
            ADMIN,
            json!({"name": "front-2", "instance_type": "standard.micro",
        "template": "busybox", "reserved_address_id": id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = c.call(Method::DELETE, &format!("/v1/reserved-addresses/{id}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);

    // The instance goes; the reservation stays, free, and plain creates never get its address.
    let r = c.call(Method::DELETE, &format!("/v1/instances/{vm}"), ADMIN, None).await;
    c.wait(&r.id(), ADMIN).await;
    assert_eq!(
        c.get(&format!("/v1/reserved-addresses/{id}"), ADMIN).await.body["instance_id"],
        serde_json::Value::Null
    );
    for n in 0..3 {
        let other = c.instance(ADMIN, &format!("plain-{n}"), json!({})).await;
        let i = c.get(&format!("/v1/instances/{other}"), ADMIN).await.body;
        assert_ne!(i["ip_addresses"][0], ip.as_str(), "{i}");
    }
    let listed = c.get("/v1/reserved-addresses", ADMIN).await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");

    // A given address: reserved when free, refused when taken or outside the network; then deleted.
    let taken = c.post("/v1/reserved-addresses", ADMIN, json!({"ip_address": ip})).await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
    for body in [
        json!({"ip_address": "192.0.2.1"}),
        json!({"ip_address": "10.213.0.1"}),
        json!({"name": "no spaces"}),
        json!({"ip_address": "nope"}),
        json!({"colour": "red"}),
    ] {
        let r = c.post("/v1/reserved-addresses", ADMIN, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
    }
    let r = c.call(Method::DELETE, &format!("/v1/reserved-addresses/{id}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let again = c.post("/v1/reserved-addresses", ADMIN, json!({"ip_address": ip})).await;
    assert_eq!(again.status, StatusCode::CREATED, "the address is free again: {}", again.text);

    // Another project sees nothing of it and cannot make an instance with it.
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("member", Some(&project.id())).await;
    assert_eq!(c.get(&format!("/v1/reserved-addresses/{}", again.id()), &other).await.status, StatusCode::NOT_FOUND);
    assert!(c.get("/v1/reserved-addresses", &other).await.body["items"].as_array().unwrap().is_empty());
    let r = c
        .post(
            "/v1/instances",
            &other,
            json!({"name": "thief", "instance_type": "standard.micro",
        "template": "busybox", "reserved_address_id": again.id()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let reader = c.key("read-only", None).await;
    assert_eq!(c.post("/v1/reserved-addresses", &reader, json!({})).await.status, StatusCode::FORBIDDEN);
}
