//! Templates from images and from snapshots, through `/v1`: an import is an operation whose template appears
//! only once the image is in, bad requests are refused before anything starts, and a promoted snapshot is a
//! template that outlives its instance.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::common::{Cloud, ADMIN};

#[tokio::test]
async fn an_image_import_is_an_operation_and_bad_ones_change_nothing() {
    let c = Cloud::new().await;
    let r = c
        .post(
            "/v1/templates",
            ADMIN,
            json!({"name": "bookworm", "url": "http://127.0.0.1:1/d.qcow2", "default_user": "debian"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["kind"], "import_template");
    let op = c.wait(&r.id(), ADMIN).await;
    assert_eq!(op["state"], "success", "{op}");
    let id = op["result"]["template_id"].as_str().unwrap();
    let t = c.get(&format!("/v1/templates/{id}"), ADMIN).await;
    assert_eq!(
        (t.body["name"].as_str(), t.body["default_user"].as_str()),
        (Some("bookworm"), Some("debian")),
        "{}",
        t.text
    );

    // Refused at once, nothing recorded: a relative path, a malformed checksum, a taken name, both sources.
    for (body, field) in [
        (json!({"name": "rel", "path": "images/d.qcow2"}), "source"),
        (json!({"name": "sum", "path": "/srv/d.qcow2", "checksum": "md5:abc"}), "checksum"),
        (json!({"name": "two", "path": "/srv/d.qcow2", "url": "http://127.0.0.1:1/d"}), "url"),
        (json!({"name": "boot", "path": "/srv/d.qcow2", "boot_mode": "coreboot"}), "boot_mode"),
    ] {
        let r = c.post("/v1/templates", ADMIN, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert!(r.text.contains(field), "{}", r.text);
    }
    let taken = c.post("/v1/templates", ADMIN, json!({"name": "bookworm", "path": "/srv/d.qcow2"})).await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
    // A file of the server's host (a block device is a raw disk too) is the operator's to import.
    let member = c.key("member", None).await;
    let r = c.post("/v1/templates", &member, json!({"name": "host-disk", "path": "/dev/vda"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = c.post("/v1/templates", &member, json!({"name": "theirs", "url": "http://127.0.0.1:1/d.qcow2"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "a member imports from a URL: {}", r.text);
    c.wait(&r.id(), &member).await;

    // Refused by the host: the operation fails saying why, and no template appears.
    let r = c.post("/v1/templates", ADMIN, json!({"name": "junk", "path": "/srv/corrupt.img"})).await;
    let op = c.wait(&r.id(), ADMIN).await;
    assert_eq!(op["state"], "failure");
    assert!(op["message"].as_str().unwrap().contains("not a disk image"), "{op}");
    let names: Vec<String> = c.get("/v1/templates", ADMIN).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["bookworm", "busybox", "theirs"]);

    // An imported template goes with its files.
    let gone = c.call(Method::DELETE, &format!("/v1/templates/{id}"), ADMIN, None).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    let id: uuid::Uuid = id.parse().unwrap();
    assert!(!c.sim.template_files().contains(&id), "the deleted template's files are gone");
}

#[tokio::test]
async fn a_promoted_snapshot_is_a_template_that_outlives_its_instance() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "web", json!({})).await;
    let op = c.act(ADMIN, &id, "create-snapshot", Some(json!({"name": "before"}))).await;
    let snapshot = op["result"]["snapshot_id"].as_str().unwrap().to_string();
    let s = c.get(&format!("/v1/snapshots/{snapshot}"), ADMIN).await;
    assert!(s.body["size_bytes"].as_u64().unwrap() > 0, "{}", s.text);

    // Reset keeps it, and revert works afterwards.
    c.act(ADMIN, &id, "reset", None).await;
    assert_eq!(c.get(&format!("/v1/snapshots/{snapshot}"), ADMIN).await.status, StatusCode::OK);
    c.act(ADMIN, &id, "stop", None).await;
    let reverted = c.act(ADMIN, &id, "revert-snapshot", Some(json!({"snapshot_id": snapshot}))).await;
    assert_eq!(reverted["state"], "success", "{reverted}");

    let bad = c.post(&format!("/v1/snapshots/{snapshot}/promote"), ADMIN, json!({"name": "not a name!"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let r = c.post(&format!("/v1/snapshots/{snapshot}/promote"), ADMIN, json!({"name": "web-golden"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let op = c.wait(&r.id(), ADMIN).await;
    assert_eq!((op["kind"].as_str(), op["state"].as_str()), (Some("promote_snapshot"), Some("success")), "{op}");
    let template = op["result"]["template_id"].as_str().unwrap().to_string();
    let again = c.post(&format!("/v1/snapshots/{snapshot}/promote"), ADMIN, json!({"name": "web-golden"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "a name is one template: {}", again.text);

    // Deleting the instance deletes its snapshots; the template stays and makes instances.
    let r = c.call(Method::DELETE, &format!("/v1/instances/{id}"), ADMIN, None).await;
    c.wait(&r.id(), ADMIN).await;
    assert_eq!(c.get(&format!("/v1/snapshots/{snapshot}"), ADMIN).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.get(&format!("/v1/templates/{template}"), ADMIN).await.status, StatusCode::OK);
    c.instance(ADMIN, "web-2", json!({"template": "web-golden"})).await;
}
