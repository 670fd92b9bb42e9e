//! Gcore's volumes through HTTP on the real router, engine and store (sim driver): made, attached to an
//! instance made through Gcore, refused while attached, detached, extended, deleted, with Gcore's tasks
//! and errors; and the refusals of another project and of the quota.

#[path = "api/common.rs"]
mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Cloud, Reply, ADMIN};
use serde_json::{json, Value};

async fn gcore(c: &Cloud, method: Method, path: &str, secret: &str, body: Option<Value>) -> Reply {
    let req = Request::builder().method(method).uri(path).header("authorization", format!("APIKey {secret}"));
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    c.send(req.unwrap()).await
}

/// `/cloud/{version}/{what}/{project}/{region}` of the key's project and the server's zone.
async fn base(c: &Cloud, secret: &str, version: &str, what: &str) -> String {
    let who = c.get("/v1/whoami", secret).await;
    let zones = c.get("/v1/zones", secret).await;
    format!("/cloud/{version}/{what}/{}/{}", who.body["project"]["numeric_id"], zones.body["items"][0]["numeric_id"])
}

/// Sends a call that answers `{"tasks": [id]}`, waits for the task, and returns it as Gcore shows it.
async fn task_of(c: &Cloud, secret: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    let r = gcore(c, method, path, secret, body).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    let id = r.body["tasks"][0].as_str().unwrap_or_else(|| panic!("no task: {}", r.text)).to_string();
    c.wait(&id, secret).await;
    let t = gcore(c, Method::GET, &format!("/cloud/v1/tasks/{id}"), secret, None).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    t.body
}

async fn instance(c: &Cloud, secret: &str, name: &str) -> String {
    let body = json!({
        "name": name,
        "flavor": "standard.small",
        "interfaces": [{"type": "external"}],
        "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
    });
    let task = task_of(c, secret, Method::POST, &base(c, secret, "v2", "instances").await, Some(body)).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    task["created_resources"]["instances"][0].as_str().unwrap().to_string()
}

fn assert_gcore_error(r: &Reply, status: StatusCode, class: &str) {
    assert_eq!((r.status, r.body["exception_class"].as_str()), (status, Some(class)), "{}", r.text);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.text);
}

#[tokio::test]
async fn a_gcore_volume_is_made_attached_detached_extended_and_deleted() {
    let c = Cloud::new().await;
    let volumes = base(&c, ADMIN, "v1", "volumes").await;
    let v2 = base(&c, ADMIN, "v2", "volumes").await;
    let vm = instance(&c, ADMIN, "vm").await;

    let body = json!({"source": "new-volume", "name": "data", "size": 2, "tags": {"env": "prod"}});
    let task = task_of(&c, ADMIN, Method::POST, &volumes, Some(body)).await;
    assert_eq!(
        (task["state"].as_str(), task["task_type"].as_str()),
        (Some("FINISHED"), Some("create_volume")),
        "{task}"
    );
    let id = task["created_resources"]["volumes"][0].as_str().unwrap().to_string();
    let v = gcore(&c, Method::GET, &format!("{volumes}/{id}"), ADMIN, None).await.body;
    assert_eq!(
        (v["status"].as_str(), v["size"].as_u64(), v["volume_type"].as_str()),
        (Some("available"), Some(2), Some("standard"))
    );
    assert_eq!(v["tags"], json!([{"key": "env", "value": "prod", "read_only": false}]));
    assert_eq!(v["attachments"], json!([]));
    let listed = gcore(&c, Method::GET, &volumes, ADMIN, None).await.body;
    assert_eq!(listed["count"], 1, "{listed}");

    let task = task_of(&c, ADMIN, Method::POST, &format!("{v2}/{id}/attach"), Some(json!({"instance_id": vm}))).await;
    assert_eq!(
        (task["state"].as_str(), task["task_type"].as_str()),
        (Some("FINISHED"), Some("attach_volume")),
        "{task}"
    );
    let v = gcore(&c, Method::GET, &format!("{volumes}/{id}"), ADMIN, None).await.body;
    assert_eq!(v["status"], "in-use");
    assert_eq!(
        (v["attachments"][0]["server_id"].as_str(), v["attachments"][0]["instance_name"].as_str()),
        (Some(vm.as_str()), Some("vm"))
    );
    let mine = gcore(&c, Method::GET, &format!("{volumes}?instance_id={vm}"), ADMIN, None).await.body;
    assert_eq!(mine["count"], 1);
    let free = gcore(&c, Method::GET, &format!("{volumes}?has_attachments=false"), ADMIN, None).await.body;
    assert_eq!(free["count"], 0);

    // Refused while attached; a detach must name the volume's instance.
    let r = gcore(&c, Method::DELETE, &format!("{volumes}/{id}"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    // An attached volume is extended under its instance.
    let task = task_of(&c, ADMIN, Method::POST, &format!("{volumes}/{id}/extend"), Some(json!({"size": 4}))).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let v = gcore(&c, Method::GET, &format!("{volumes}/{id}"), ADMIN, None).await.body;
    assert_eq!((v["size"].as_u64(), v["status"].as_str()), (Some(4), Some("in-use")));
    let other_vm = instance(&c, ADMIN, "other").await;
    let r = gcore(&c, Method::POST, &format!("{v2}/{id}/detach"), ADMIN, Some(json!({"instance_id": other_vm}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");

    let task = task_of(&c, ADMIN, Method::POST, &format!("{v2}/{id}/detach"), Some(json!({"instance_id": vm}))).await;
    assert_eq!(task["task_type"], "detach_volume");
    let r = gcore(&c, Method::POST, &format!("{volumes}/{id}/extend"), ADMIN, Some(json!({"size": 1}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    let task = task_of(&c, ADMIN, Method::POST, &format!("{volumes}/{id}/extend"), Some(json!({"size": 5}))).await;
    assert_eq!((task["state"].as_str(), task["task_type"].as_str()), (Some("FINISHED"), Some("extend_volume")));
    let r = gcore(
        &c,
        Method::PATCH,
        &format!("{volumes}/{id}"),
        ADMIN,
        Some(json!({"name": "archive", "tags": {"env": null, "tier": "cold"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.body["name"].as_str(), r.body["size"].as_u64()), (Some("archive"), Some(5)));
    assert_eq!(r.body["tags"], json!([{"key": "tier", "value": "cold", "read_only": false}]));

    let task = task_of(&c, ADMIN, Method::DELETE, &format!("{volumes}/{id}"), None).await;
    assert_eq!((task["state"].as_str(), task["task_type"].as_str()), (Some("FINISHED"), Some("delete_volume")));
    let r = gcore(&c, Method::GET, &format!("{volumes}/{id}"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    // The same volume as the native API sees it: gone.
    assert_eq!(c.get(&format!("/v1/volumes/{id}"), ADMIN).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_gcore_volume_is_made_attached_to_the_instance_it_names() {
    let c = Cloud::new().await;
    let volumes = base(&c, ADMIN, "v1", "volumes").await;
    let vm = instance(&c, ADMIN, "vm").await;
    let body = json!({"source": "new-volume", "name": "data", "size": 2, "instance_id_to_attach_to": vm});
    let task = task_of(&c, ADMIN, Method::POST, &volumes, Some(body)).await;
    assert_eq!(
        (task["state"].as_str(), task["task_type"].as_str()),
        (Some("FINISHED"), Some("create_volume")),
        "{task}"
    );
    let id = task["created_resources"]["volumes"][0].as_str().unwrap().to_string();
    let v = gcore(&c, Method::GET, &format!("{volumes}/{id}"), ADMIN, None).await.body;
    assert_eq!(
        (v["status"].as_str(), v["attachments"][0]["server_id"].as_str()),
        (Some("in-use"), Some(vm.as_str())),
        "{v}"
    );
    let native = c.get(&format!("/v1/instances/{vm}"), ADMIN).await.body;
    assert_eq!((&native["volumes"], &native["operation_id"]), (&json!([id]), &Value::Null), "{native}");
    // An instance that is not there, or not a UUID, is refused before anything is made.
    for bad in [json!(uuid::Uuid::nil()), json!("nope")] {
        let body = json!({"source": "new-volume", "name": "x", "size": 1, "instance_id_to_attach_to": bad});
        let r = gcore(&c, Method::POST, &volumes, ADMIN, Some(body)).await;
        assert!(r.status.is_client_error(), "{}", r.text);
    }
    assert_eq!(gcore(&c, Method::GET, &volumes, ADMIN, None).await.body["count"], 1);
}

#[tokio::test]
async fn gcore_volumes_refuse_other_projects_bad_sources_and_the_quota() {
    let c = Cloud::new().await;
    let volumes = base(&c, ADMIN, "v1", "volumes").await;
    let v2 = base(&c, ADMIN, "v2", "volumes").await;
    let task =
        task_of(&c, ADMIN, Method::POST, &volumes, Some(json!({"source": "new-volume", "name": "d", "size": 1}))).await;
    let id = task["created_resources"]["volumes"][0].as_str().unwrap().to_string();

    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("admin", Some(project.id().as_str())).await;
    let theirs = instance(&c, &other, "theirs").await;
    let r = gcore(&c, Method::POST, &format!("{v2}/{id}/attach"), ADMIN, Some(json!({"instance_id": theirs}))).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let their_volumes = base(&c, &other, "v1", "volumes").await;
    let r = gcore(&c, Method::GET, &format!("{their_volumes}/{id}"), &other, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    assert_eq!(gcore(&c, Method::GET, &their_volumes, &other, None).await.body["count"], 0);

    for body in [
        json!({"source": "snapshot", "snapshot_id": "00000000-0000-0000-0000-000000000001", "name": "x", "size": 1}),
        json!({"source": "image", "name": "x", "size": 1}),
        json!({"source": "new-volume", "name": "x"}),
        json!({"source": "new-volume", "name": "x", "size": 1, "type_name": "ultra"}),
    ] {
        let r = gcore(&c, Method::POST, &volumes, ADMIN, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
    }

    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let q = c
        .call(
            Method::PUT,
            &format!("/v1/projects/{project_id}/quota"),
            ADMIN,
            Some(json!({"instances": 5, "vcpus": 100, "memory_mib": 1000000, "disk_gb": 1000, "volume_gb": 3})),
        )
        .await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.text);
    let r =
        gcore(&c, Method::POST, &volumes, ADMIN, Some(json!({"source": "new-volume", "name": "big", "size": 3}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "QuotaLimitExceed");
    assert_eq!(gcore(&c, Method::GET, &volumes, ADMIN, None).await.body["count"], 1, "nothing was made");

    // A volume of another zone does not attach to this zone's instance.
    let far = c.volume_of_another_zone().await;
    let mine = instance(&c, ADMIN, "mine").await;
    let r = gcore(&c, Method::POST, &format!("{v2}/{far}/attach"), ADMIN, Some(json!({"instance_id": mine}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    assert!(r.text.contains("zone"), "{}", r.text);
}

/// A Gcore create body with the boot volume and `extra` volumes.
fn create_body(name: &str, extra: Vec<Value>) -> Value {
    let mut volumes = vec![json!({"source": "image", "image_id": "busybox", "boot_index": 0, "size": 1})];
    volumes.extend(extra);
    json!({"name": name, "flavor": "standard.small", "interfaces": [{"type": "external"}], "volumes": volumes})
}

async fn new_volume(c: &Cloud, secret: &str, name: &str) -> String {
    let volumes = base(c, secret, "v1", "volumes").await;
    let body = json!({"source": "new-volume", "name": name, "size": 1});
    let task = task_of(c, secret, Method::POST, &volumes, Some(body)).await;
    task["created_resources"]["volumes"][0].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_gcore_instance_is_created_with_new_and_existing_volumes_and_deleted_with_some_of_them() {
    let c = Cloud::new().await;
    let volumes = base(&c, ADMIN, "v1", "volumes").await;
    let v1_instances = base(&c, ADMIN, "v1", "instances").await;
    let existing = new_volume(&c, ADMIN, "existing").await;
    let body = create_body(
        "multi",
        vec![
            json!({"source": "existing-volume", "volume_id": existing, "boot_index": -1}),
            json!({"source": "new-volume", "size": 2, "name": "scratch", "type_name": "standard",
                   "tags": {"tier": "fast"}}),
        ],
    );
    let task = task_of(&c, ADMIN, Method::POST, &base(&c, ADMIN, "v2", "instances").await, Some(body)).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let vm = task["created_resources"]["instances"][0].as_str().unwrap().to_string();
    // The task lists the boot volume and the one it made.
    let made: Vec<&str> =
        task["created_resources"]["volumes"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(made.len(), 2, "{task}");
    let scratch = made[1].to_string();
    let i = gcore(&c, Method::GET, &format!("{v1_instances}/{vm}"), ADMIN, None).await.body;
    assert_eq!(i["status"], "ACTIVE", "{i}");
    let ids: Vec<&str> = i["volumes"].as_array().unwrap().iter().filter_map(|v| v["id"].as_str()).collect();
    assert_eq!(ids.len(), 3, "{i}");
    assert!(ids.contains(&existing.as_str()) && ids.contains(&scratch.as_str()), "{i}");
    for id in [&existing, &scratch] {
        let v = gcore(&c, Method::GET, &format!("{volumes}/{id}"), ADMIN, None).await.body;
        assert_eq!(
            (v["status"].as_str(), v["attachments"][0]["server_id"].as_str()),
            (Some("in-use"), Some(vm.as_str())),
            "{v}"
        );
    }
    let s = gcore(&c, Method::GET, &format!("{volumes}/{scratch}"), ADMIN, None).await.body;
    assert_eq!((s["name"].as_str(), s["size"].as_u64()), (Some("scratch"), Some(2)), "{s}");
    assert_eq!(s["tags"], json!([{"key": "tier", "value": "fast", "read_only": false}]));
    // The native API sees the same attachments.
    let native = c.get(&format!("/v1/instances/{vm}"), ADMIN).await.body;
    assert_eq!(native["volumes"].as_array().map(Vec::len), Some(2), "{native}");

    // A volume in use is refused to a second create, which leaves nothing behind.
    let before = gcore(&c, Method::GET, &volumes, ADMIN, None).await.body["count"].clone();
    let body = create_body(
        "taken",
        vec![json!({"source": "new-volume", "size": 1}), json!({"source": "existing-volume", "volume_id": existing})],
    );
    let r = gcore(&c, Method::POST, &base(&c, ADMIN, "v2", "instances").await, ADMIN, Some(body)).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    assert_eq!(gcore(&c, Method::GET, &volumes, ADMIN, None).await.body["count"].clone(), before, "nothing was made");
    let listed = gcore(&c, Method::GET, &v1_instances, ADMIN, None).await.body;
    assert_eq!(listed["count"], 1, "{listed}");

    // Deleting with a volume that is not the instance's own is refused, and nothing changes.
    let loose = new_volume(&c, ADMIN, "loose").await;
    let r = gcore(&c, Method::DELETE, &format!("{v1_instances}/{vm}?volumes={scratch},{loose}"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    let r = gcore(&c, Method::DELETE, &format!("{v1_instances}/{vm}?volumes=nope"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    let r =
        gcore(&c, Method::DELETE, &format!("{v1_instances}/{vm}?volumes={}", uuid::Uuid::new_v4()), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let i = gcore(&c, Method::GET, &format!("{v1_instances}/{vm}"), ADMIN, None).await.body;
    assert_eq!((i["status"].as_str(), &i["task_id"]), (Some("ACTIVE"), &Value::Null), "{i}");
    let s = gcore(&c, Method::GET, &format!("{volumes}/{scratch}"), ADMIN, None).await.body;
    assert_eq!(s["status"], "in-use");

    // Deleted with the new volume: it goes, the existing one is detached and kept.
    let task = task_of(&c, ADMIN, Method::DELETE, &format!("{v1_instances}/{vm}?volumes={scratch}"), None).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let r = gcore(&c, Method::GET, &format!("{v1_instances}/{vm}"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let r = gcore(&c, Method::GET, &format!("{volumes}/{scratch}"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let e = gcore(&c, Method::GET, &format!("{volumes}/{existing}"), ADMIN, None).await.body;
    assert_eq!((e["status"].as_str(), &e["attachments"]), (Some("available"), &json!([])), "{e}");
}

#[tokio::test]
async fn a_gcore_create_with_volumes_refuses_other_projects_and_bad_sources() {
    let c = Cloud::new().await;
    let instances = base(&c, ADMIN, "v2", "instances").await;
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("admin", Some(project.id().as_str())).await;
    let theirs = new_volume(&c, &other, "theirs").await;

    let r = gcore(
        &c,
        Method::POST,
        &instances,
        ADMIN,
        Some(create_body("x", vec![json!({"source": "existing-volume", "volume_id": theirs})])),
    )
    .await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    for (extra, field) in [
        (json!({"source": "existing-volume"}), "volumes.1.volume_id"),
        (json!({"source": "existing-volume", "volume_id": theirs, "boot_index": 0}), "volumes.1.boot_index"),
        (json!({"source": "new-volume"}), "volumes.1.size"),
        (json!({"source": "new-volume", "size": 1, "type_name": "ultra"}), "volumes.1.type_name"),
        (json!({"source": "new-volume", "size": 1, "delete_on_termination": true}), "volumes.1.delete_on_termination"),
        (json!({"source": "snapshot", "snapshot_id": theirs, "size": 1}), "volumes.1.source"),
        (json!({"source": "new-volume", "size": 1, "name": "bad name!"}), "volumes.1.name"),
    ] {
        let r = gcore(&c, Method::POST, &instances, ADMIN, Some(create_body("x", vec![extra.clone()]))).await;
        assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
        assert!(r.body["invalid_fields"].get(field).is_some(), "{extra}: {}", r.text);
    }
    // Still one boot volume from an image.
    let body = json!({"name": "x", "flavor": "standard.small", "interfaces": [{"type": "external"}],
                      "volumes": [{"source": "new-volume", "size": 1}]});
    let r = gcore(&c, Method::POST, &instances, ADMIN, Some(body)).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    let listed = gcore(&c, Method::GET, &base(&c, ADMIN, "v1", "instances").await, ADMIN, None).await.body;
    assert_eq!(listed["count"], 0, "{listed}");
    let theirs_now =
        gcore(&c, Method::GET, &format!("{}/{theirs}", base(&c, &other, "v1", "volumes").await), &other, None)
            .await
            .body;
    assert_eq!(theirs_now["status"], "available");
}

#[tokio::test]
async fn a_gcore_boot_volume_kept_at_deletion_boots_the_next_instance() {
    let c = Cloud::new().await;
    let volumes = base(&c, ADMIN, "v1", "volumes").await;
    let v1_instances = base(&c, ADMIN, "v1", "instances").await;
    let v2_instances = base(&c, ADMIN, "v2", "instances").await;
    // `delete_on_termination: false` on the image volume: the boot disk is a volume of its own.
    let body = json!({"name": "keeper", "flavor": "standard.small", "interfaces": [{"type": "external"}],
        "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0, "size": 2, "name": "root",
                     "delete_on_termination": false}]});
    let task = task_of(&c, ADMIN, Method::POST, &v2_instances, Some(body)).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let vm = task["created_resources"]["instances"][0].as_str().unwrap().to_string();
    let root = task["created_resources"]["volumes"][0].as_str().unwrap().to_string();
    let v = gcore(&c, Method::GET, &format!("{volumes}/{root}"), ADMIN, None).await.body;
    assert_eq!(
        (v["name"].as_str(), v["status"].as_str(), v["size"].as_u64(), &v["bootable"], &v["is_root_volume"]),
        (Some("root"), Some("in-use"), Some(2), &json!(true), &json!(true)),
        "{v}"
    );
    let i = gcore(&c, Method::GET, &format!("{v1_instances}/{vm}"), ADMIN, None).await.body;
    assert_eq!(i["volumes"], json!([{"id": root, "delete_on_termination": false}]), "{i}");
    // Gcore's detach of a root volume is refused.
    let v2 = base(&c, ADMIN, "v2", "volumes").await;
    let r = gcore(&c, Method::POST, &format!("{v2}/{root}/detach"), ADMIN, Some(json!({"instance_id": vm}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    assert!(r.text.contains("boot disk"), "{}", r.text);

    let task = task_of(&c, ADMIN, Method::DELETE, &format!("{v1_instances}/{vm}"), None).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let v = gcore(&c, Method::GET, &format!("{volumes}/{root}"), ADMIN, None).await.body;
    assert_eq!(
        (v["status"].as_str(), &v["bootable"], &v["is_root_volume"]),
        (Some("available"), &json!(true), &json!(false))
    );
    let bootable = gcore(&c, Method::GET, &format!("{volumes}?bootable=true"), ADMIN, None).await.body;
    assert_eq!(bootable["count"], 1, "{bootable}");

    // An existing volume with boot_index 0 boots the next instance, which takes it with it.
    let body = json!({"name": "again", "flavor": "standard.small", "interfaces": [{"type": "external"}],
        "volumes": [{"source": "existing-volume", "volume_id": root, "boot_index": 0, "delete_on_termination": true}]});
    let task = task_of(&c, ADMIN, Method::POST, &v2_instances, Some(body)).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    assert_eq!(task["created_resources"]["volumes"], json!([]), "it made no volume: {task}");
    let vm = task["created_resources"]["instances"][0].as_str().unwrap().to_string();
    let i = gcore(&c, Method::GET, &format!("{v1_instances}/{vm}"), ADMIN, None).await.body;
    assert_eq!(
        (i["status"].as_str(), &i["volumes"]),
        (Some("ACTIVE"), &json!([{"id": root, "delete_on_termination": true}])),
        "{i}"
    );
    let task = task_of(&c, ADMIN, Method::DELETE, &format!("{v1_instances}/{vm}"), None).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let r = gcore(&c, Method::GET, &format!("{volumes}/{root}"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
}

/// The Terraform provider's way to a boot disk: a volume made from an image first (`source: image`), then an
/// instance made with it as an `existing-volume` of `boot_index` 0; kept when the instance goes. An unknown
/// image is refused and makes nothing.
#[tokio::test]
async fn a_gcore_volume_made_from_an_image_boots_an_instance() {
    let c = Cloud::new().await;
    let volumes = base(&c, ADMIN, "v1", "volumes").await;
    let body = json!({"source": "image", "image_id": "busybox", "name": "boot", "size": 3, "tags": {"tf": "yes"}});
    let task = task_of(&c, ADMIN, Method::POST, &volumes, Some(body)).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let boot = task["created_resources"]["volumes"][0].as_str().unwrap().to_string();
    let v = gcore(&c, Method::GET, &format!("{volumes}/{boot}"), ADMIN, None).await.body;
    let template = c.get("/v1/templates", ADMIN).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "busybox")
        .unwrap()["id"]
        .clone();
    assert_eq!(
        (v["status"].as_str(), v["size"].as_u64(), &v["bootable"], &v["volume_image_metadata"]["image_id"]),
        (Some("available"), Some(3), &json!(true), &template),
        "{v}"
    );
    // Its size may be left out: the image's smallest disk.
    let body = json!({"source": "image", "image_id": "busybox", "name": "small"});
    let task = task_of(&c, ADMIN, Method::POST, &volumes, Some(body)).await;
    assert_eq!(task["state"], "FINISHED", "{task}");

    let v2_instances = base(&c, ADMIN, "v2", "instances").await;
    let body = json!({"name": "from-volume", "flavor": "standard.small", "interfaces": [{"type": "external"}],
        "volumes": [{"source": "existing-volume", "volume_id": boot, "boot_index": 0}]});
    let task = task_of(&c, ADMIN, Method::POST, &v2_instances, Some(body)).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let vm = task["created_resources"]["instances"][0].as_str().unwrap().to_string();
    let native = c.get(&format!("/v1/instances/{vm}"), ADMIN).await.body;
    assert_eq!(
        (native["state"].as_str(), native["template"].as_str(), native["disk_size_gb"].as_u64()),
        (Some("running"), Some("busybox"), Some(3)),
        "{native}"
    );
    assert_eq!(native["boot_volume"]["volume_id"], boot.as_str(), "{native}");
    let v1_instances = base(&c, ADMIN, "v1", "instances").await;
    let task = task_of(&c, ADMIN, Method::DELETE, &format!("{v1_instances}/{vm}"), None).await;
    assert_eq!(task["state"], "FINISHED", "{task}");
    let v = gcore(&c, Method::GET, &format!("{volumes}/{boot}"), ADMIN, None).await.body;
    assert_eq!(v["status"], "available", "kept by default: {v}");

    let before = gcore(&c, Method::GET, &volumes, ADMIN, None).await.body["count"].clone();
    let r = gcore(&c, Method::POST, &volumes, ADMIN, Some(json!({"source": "image", "image_id": "nope", "name": "x"})))
        .await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    assert_eq!(gcore(&c, Method::GET, &volumes, ADMIN, None).await.body["count"], before, "nothing was made");
}
