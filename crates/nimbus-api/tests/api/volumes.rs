//! Volumes through `/v1/volumes`: made, attached to a running instance (the guest sees the disk come),
//! detached, attached to another, grown, deleted; and every refusal a user can meet on the way.

use axum::http::{Method, StatusCode};
use nimbus_driver::Driver;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// Creates a volume, waits for it, returns its id.
async fn volume(c: &Cloud, token: &str, name: &str, size_gb: u64) -> String {
    let r = c.post("/v1/volumes", token, json!({"name": name, "size_gb": size_gb})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["target"]["type"], "volume", "{}", r.text);
    let op = c.wait(&r.id(), token).await;
    assert_eq!(op["state"], "success", "{op}");
    op["target"]["id"].as_str().unwrap().to_string()
}

async fn volume_action(c: &Cloud, id: &str, action: &str, body: Option<Value>) -> crate::common::Reply {
    c.call(Method::POST, &format!("/v1/volumes/{id}/{action}"), ADMIN, body).await
}

/// Runs a volume action and waits for its operation.
async fn volume_act(c: &Cloud, id: &str, action: &str, body: Option<Value>) -> Value {
    let r = volume_action(c, id, action, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{action}: {}", r.text);
    c.wait(&r.id(), ADMIN).await
}

async fn show(c: &Cloud, id: &str) -> Value {
    let r = c.get(&format!("/v1/volumes/{id}"), ADMIN).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn a_volume_goes_from_one_instance_to_another_and_is_deleted() {
    let c = Cloud::new().await;
    let first = c.instance(ADMIN, "first", json!({})).await;
    let second = c.instance(ADMIN, "second", json!({})).await;
    c.act(ADMIN, &second, "stop", None).await;
    let id = volume(&c, ADMIN, "data", 2).await;
    let v = show(&c, &id).await;
    assert_eq!(
        (v["state"].as_str(), v["size_gb"].as_u64(), &v["instance_id"]),
        (Some("available"), Some(2), &Value::Null)
    );
    let serial = v["serial"].as_str().unwrap().to_string();
    assert_eq!(serial.len(), 20, "virtio-blk keeps 20 bytes of serial");
    let uuid = Uuid::parse_str(&id).unwrap();
    assert_eq!(c.sim.volume(uuid).unwrap().size_gb, 2, "the host has its disk");

    // Onto a running instance: hot-plugged, the guest sees it without a reboot.
    let op = volume_act(&c, &id, "attach", Some(json!({"instance_id": first}))).await;
    assert_eq!(op["state"], "success", "{op}");
    let v = show(&c, &id).await;
    assert_eq!((v["state"].as_str(), v["instance_id"].as_str()), (Some("in-use"), Some(first.as_str())));
    let i = c.get(&format!("/v1/instances/{first}"), ADMIN).await.body;
    assert_eq!((i["state"].as_str(), &i["volumes"]), (Some("running"), &json!([id])), "{i}");
    assert_eq!(i["operation_id"], Value::Null, "the instance's lock is released");
    let listed = c.get("/v1/instances", ADMIN).await.body;
    let listed_first = listed["items"].as_array().unwrap().iter().find(|i| i["id"] == first.as_str()).unwrap();
    assert_eq!(listed_first["volumes"], json!([id]));
    let console = c.get(&format!("/v1/instances/{first}/console"), ADMIN).await.text;
    assert!(console.contains(&format!("virtio-{serial} appeared")), "{console}");
    assert_eq!(c.sim.volume(uuid).unwrap().attached_to, Some(Uuid::parse_str(&first).unwrap()));

    // Refused while attached: deleting, attaching again.
    let r = c.call(Method::DELETE, &format!("/v1/volumes/{id}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.message().contains("detach it first"), "{}", r.text);
    let r = volume_action(&c, &id, "attach", Some(json!({"instance_id": second}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(show(&c, &id).await["state"], "in-use", "refusals change nothing");
    // Grown under the running guest, which is told.
    let op = volume_act(&c, &id, "resize", Some(json!({"size_gb": 3}))).await;
    assert_eq!(op["state"], "success", "{op}");
    let v = show(&c, &id).await;
    assert_eq!((v["size_gb"].as_u64(), v["state"].as_str()), (Some(3), Some("in-use")));
    let console = c.get(&format!("/v1/instances/{first}/console"), ADMIN).await.text;
    assert!(console.contains(&format!("virtio-{serial} is now 3 GB")), "{console}");
    assert_eq!(c.get(&format!("/v1/instances/{first}"), ADMIN).await.body["operation_id"], Value::Null);

    // Off it, and onto a stopped one, which gets it at its next boot.
    let op = volume_act(&c, &id, "detach", None).await;
    assert_eq!(op["state"], "success", "{op}");
    let v = show(&c, &id).await;
    assert_eq!((v["state"].as_str(), &v["instance_id"]), (Some("available"), &Value::Null));
    let console = c.get(&format!("/v1/instances/{first}/console"), ADMIN).await.text;
    assert!(console.contains(&format!("virtio-{serial} disappeared")), "{console}");
    assert_eq!(c.get(&format!("/v1/instances/{first}"), ADMIN).await.body["volumes"], json!([]));
    volume_act(&c, &id, "attach", Some(json!({"instance_id": second}))).await;
    assert_eq!(show(&c, &id).await["instance_id"], second.as_str());
    let op = c.act(ADMIN, &second, "start", None).await;
    assert_eq!(op["state"], "success", "{op}");
    volume_act(&c, &id, "detach", None).await;

    // Grown while detached too; never shrunk.
    let r = volume_action(&c, &id, "resize", Some(json!({"size_gb": 2}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.message().contains("only grow"), "{}", r.text);
    let op = volume_act(&c, &id, "resize", Some(json!({"size_gb": 5}))).await;
    assert_eq!(op["state"], "success", "{op}");
    assert_eq!(show(&c, &id).await["size_gb"], 5);
    assert_eq!(c.sim.volume(uuid).unwrap().size_gb, 5);

    // Renamed and relabelled, then deleted: its record and its disk are gone.
    let r = c
        .call(
            Method::PATCH,
            &format!("/v1/volumes/{id}"),
            ADMIN,
            Some(json!({"name": "archive", "labels": {"env": "prod"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.body["name"].as_str(), &r.body["labels"]), (Some("archive"), &json!({"env": "prod"})));
    let r = c.call(Method::DELETE, &format!("/v1/volumes/{id}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success");
    assert_eq!(c.get(&format!("/v1/volumes/{id}"), ADMIN).await.status, StatusCode::NOT_FOUND);
    assert!(c.sim.volumes().await.unwrap().is_empty(), "no disk left on the host");
    assert!(c.get("/v1/volumes", ADMIN).await.body["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_deleted_instance_leaves_its_volumes_available_with_their_data() {
    let c = Cloud::new().await;
    let i = c.instance(ADMIN, "short-lived", json!({})).await;
    let id = volume(&c, ADMIN, "keep", 1).await;
    volume_act(&c, &id, "attach", Some(json!({"instance_id": i}))).await;
    let r = c.call(Method::DELETE, &format!("/v1/instances/{i}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success");
    let v = show(&c, &id).await;
    assert_eq!((v["state"].as_str(), &v["instance_id"]), (Some("available"), &Value::Null), "{v}");
    assert_eq!(c.sim.volume(Uuid::parse_str(&id).unwrap()).unwrap().attached_to, None);
}

#[tokio::test]
async fn volumes_refuse_other_projects_other_zones_and_bad_input() {
    let c = Cloud::new().await;
    let mine = c.instance(ADMIN, "mine", json!({})).await;
    let id = volume(&c, ADMIN, "data", 1).await;

    // Another project's instance looks like a missing one, and so does its volume to it.
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    assert_eq!(project.status, StatusCode::CREATED, "{}", project.text);
    let other_key = c.key("admin", Some(&project.id())).await;
    let theirs = c.instance(&other_key, "theirs", json!({})).await;
    let r = volume_action(&c, &id, "attach", Some(json!({"instance_id": theirs}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.text);
    assert_eq!(c.get(&format!("/v1/volumes/{id}"), &other_key).await.status, StatusCode::NOT_FOUND);
    let r = c
        .call(Method::POST, &format!("/v1/volumes/{id}/attach"), &other_key, Some(json!({"instance_id": theirs})))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert!(c.get("/v1/volumes", &other_key).await.body["items"].as_array().unwrap().is_empty());

    // A volume of another zone (kept by a host there) never attaches to this zone's instances.
    let far_id = c.volume_of_another_zone().await;
    let r = volume_action(&c, &far_id, "attach", Some(json!({"instance_id": mine}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.message().contains("zone"), "{}", r.text);
    assert_eq!(show(&c, &far_id).await["state"], "available");

    // Bad input changes nothing.
    for (body, field) in [
        (json!({"name": "big", "size_gb": 0}), "size_gb"),
        (json!({"name": "big", "size_gb": 100000}), "size_gb"),
        (json!({"name": "no spaces", "size_gb": 1}), "name"),
        (json!({"name": "z", "size_gb": 1, "zone": "nowhere"}), "zone"),
        (json!({"name": "t", "template": "nope"}), "from_template"),
        (json!({"name": "t", "template": "busybox", "snapshot_id": Uuid::nil()}), "from_template"),
    ] {
        let r = c.post("/v1/volumes", ADMIN, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.message().contains(field), "{body}: {}", r.text);
    }
    let r = volume_action(&c, &id, "attach", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = volume_action(&c, &id, "attach", Some(json!({"instance_id": Uuid::nil()}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = volume_action(&c, &id, "explode", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = volume_action(&c, &id, "detach", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "not attached: {}", r.text);
    let reader = c.key("read-only", None).await;
    let r = c.post("/v1/volumes", &reader, json!({"name": "x", "size_gb": 1})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(c.get("/v1/volumes", ADMIN).await.body["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_volume_quota_counts_every_volume_and_every_resize() {
    let c = Cloud::new().await;
    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let q = c
        .call(
            Method::PUT,
            &format!("/v1/projects/{project_id}/quota"),
            ADMIN,
            Some(json!({"instances": 5, "vcpus": 100, "memory_mib": 1000000, "disk_gb": 1000, "volume_gb": 10})),
        )
        .await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.text);
    assert_eq!(q.body["quota"]["volume_gb"], 10);
    let a = volume(&c, ADMIN, "a", 6).await;
    let r = c.post("/v1/volumes", ADMIN, json!({"name": "b", "size_gb": 5})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "quota_exceeded"), "{}", r.text);
    assert!(r.message().contains("volume_gb"), "{}", r.text);
    let r = volume_action(&c, &a, "resize", Some(json!({"size_gb": 11}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "quota_exceeded"), "{}", r.text);
    assert_eq!(show(&c, &a).await["size_gb"], 6, "the refused resize changed nothing");
    let usage = c.get(&format!("/v1/projects/{project_id}"), ADMIN).await.body;
    assert_eq!(usage["usage"]["volume_gb"], 6, "{usage}");
    volume(&c, ADMIN, "b", 4).await;
    // A deleted volume gives its size back.
    let r = c.call(Method::DELETE, &format!("/v1/volumes/{a}"), ADMIN, None).await;
    c.wait(&r.id(), ADMIN).await;
    volume(&c, ADMIN, "c", 6).await;
}

#[tokio::test]
async fn a_failed_attach_leaves_the_volume_available_and_the_instance_free() {
    let c = Cloud::new().await;
    let i = c.instance(ADMIN, "vm", json!({})).await;
    let id = volume(&c, ADMIN, "data", 1).await;
    c.sim.inject_failure("attach_volume", 1);
    let op = volume_act(&c, &id, "attach", Some(json!({"instance_id": i}))).await;
    assert_eq!((op["state"].as_str(), op["reason"].as_str()), (Some("failure"), Some("fault")), "{op}");
    let v = show(&c, &id).await;
    assert_eq!(
        (v["state"].as_str(), &v["instance_id"], &v["operation_id"]),
        (Some("available"), &Value::Null, &Value::Null)
    );
    let instance = c.get(&format!("/v1/instances/{i}"), ADMIN).await.body;
    assert_eq!((instance["state"].as_str(), &instance["operation_id"]), (Some("running"), &Value::Null));
    // And the next one goes through.
    assert_eq!(volume_act(&c, &id, "attach", Some(json!({"instance_id": i}))).await["state"], "success");
}

#[tokio::test]
async fn a_volume_is_snapshotted_attached_reverted_detached_and_its_snapshots_deleted() {
    let c = Cloud::new().await;
    let vm = c.instance(ADMIN, "vm", json!({})).await;
    let id = volume(&c, ADMIN, "data", 2).await;
    let uuid = Uuid::parse_str(&id).unwrap();
    volume_act(&c, &id, "attach", Some(json!({"instance_id": vm}))).await;

    // Taken while attached to a running instance: the volume and the instance keep their states.
    let path = format!("/v1/volumes/{id}/snapshots");
    let r = c
        .call(Method::POST, &format!("{path}?wait=30"), ADMIN, Some(json!({"name": "before", "labels": {"k": "v"}})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "success", "{}", r.text);
    let made =
        r.body["result"]["snapshot_id"].as_str().unwrap_or_else(|| panic!("no snapshot id: {}", r.text)).to_string();
    let listed = c.get(&path, ADMIN).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let items = listed.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{}", listed.text);
    let snap = items[0]["id"].as_str().unwrap().to_string();
    assert_eq!(snap, made, "the operation names the snapshot it made");
    assert_eq!(
        (items[0]["name"].as_str(), items[0]["state"].as_str(), items[0]["size_gb"].as_u64(), &items[0]["labels"]),
        (Some("before"), Some("ready"), Some(2), &json!({"k": "v"}))
    );
    assert_eq!(items[0]["volume_id"], id.as_str());
    let snap_uuid = Uuid::parse_str(&snap).unwrap();
    assert!(c.sim.volume(uuid).unwrap().snapshots.contains_key(&snap_uuid), "the host keeps the copy");
    let v = show(&c, &id).await;
    assert_eq!((v["state"].as_str(), &v["operation_id"]), (Some("in-use"), &Value::Null));
    let i = c.get(&format!("/v1/instances/{vm}"), ADMIN).await.body;
    assert_eq!((i["state"].as_str(), &i["operation_id"]), (Some("running"), &Value::Null), "{i}");

    // Reverting is refused while attached, with the reason.
    let r = volume_action(&c, &id, "revert", Some(json!({"snapshot_id": snap}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.message().contains("detach it first"), "{}", r.text);
    assert_eq!(c.sim.volume(uuid).unwrap().reverted_to, None);

    // Grown, detached, then reverted: the data comes back, the size stays.
    volume_act(&c, &id, "resize", Some(json!({"size_gb": 4}))).await;
    volume_act(&c, &id, "detach", None).await;
    let op = volume_act(&c, &id, "revert", Some(json!({"snapshot_id": snap}))).await;
    assert_eq!(op["state"], "success", "{op}");
    assert_eq!(c.sim.volume(uuid).unwrap().reverted_to, Some(snap_uuid));
    let v = show(&c, &id).await;
    assert_eq!((v["state"].as_str(), v["size_gb"].as_u64()), (Some("available"), Some(4)));

    // Another volume's snapshot, or an unknown one, is not this volume's.
    let other = volume(&c, ADMIN, "other", 1).await;
    let r = volume_action(&c, &other, "revert", Some(json!({"snapshot_id": snap}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = c.get(&format!("/v1/volumes/{other}/snapshots/{snap}"), ADMIN).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = volume_action(&c, &id, "revert", Some(json!({"snapshot_id": Uuid::nil()}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // Renamed; a volume with snapshots is not deleted; the snapshot is, then the volume.
    let one = format!("{path}/{snap}");
    let r = c.call(Method::PATCH, &one, ADMIN, Some(json!({"name": "golden", "labels": {"k": null}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.body["name"].as_str(), &r.body["labels"]), (Some("golden"), &json!({})));
    let r = c.call(Method::DELETE, &format!("/v1/volumes/{id}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.message().contains("snapshots"), "{}", r.text);
    let r = c.call(Method::DELETE, &one, ADMIN, None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success");
    assert_eq!(c.get(&one, ADMIN).await.status, StatusCode::NOT_FOUND);
    assert!(c.sim.volume(uuid).unwrap().snapshots.is_empty(), "the copy is gone from the host");
    let r = c.call(Method::DELETE, &format!("/v1/volumes/{id}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success");
}

#[tokio::test]
async fn an_instance_is_created_with_an_existing_and_a_new_volume() {
    let c = Cloud::new().await;
    let existing = volume(&c, ADMIN, "existing", 1).await;
    let vm = c
        .instance(ADMIN, "with-volumes", json!({"volumes": [{"volume_id": existing}, {"size_gb": 2, "name": "fresh"}]}))
        .await;
    let i = c.get(&format!("/v1/instances/{vm}"), ADMIN).await.body;
    assert_eq!(i["state"], "running", "{i}");
    let ids: Vec<String> = i["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2, "{i}");
    assert!(ids.contains(&existing), "{i}");
    for id in &ids {
        let v = show(&c, id).await;
        assert_eq!((v["state"].as_str(), v["instance_id"].as_str()), (Some("in-use"), Some(vm.as_str())), "{v}");
        // Booted with it: the simulated host has it plugged into the instance.
        let uuid = Uuid::parse_str(id).unwrap();
        assert_eq!(c.sim.volume(uuid).unwrap().attached_to, Some(Uuid::parse_str(&vm).unwrap()));
    }
    let fresh = ids.iter().find(|id| **id != existing).unwrap();
    assert_eq!(show(&c, fresh).await["name"], "fresh");

    // In use: refused to another create, which makes nothing (no instance, no new volume).
    let r = c
        .post(
            "/v1/instances",
            ADMIN,
            json!({"name": "second", "instance_type": "standard.small", "template": "busybox",
                   "volumes": [{"size_gb": 1}, {"volume_id": existing}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(c.get("/v1/volumes", ADMIN).await.body["items"].as_array().map(Vec::len), Some(2));
    // Neither an id nor a size, or both.
    for bad in [json!({}), json!({"volume_id": existing, "size_gb": 1}), json!({"volume_id": existing, "name": "x"})] {
        let r = c
            .post(
                "/v1/instances",
                ADMIN,
                json!({"name": "third", "instance_type": "standard.small", "template": "busybox", "volumes": [bad]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
    // Another project's volume is not found.
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("admin", Some(project.id().as_str())).await;
    let r = c
        .post(
            "/v1/instances",
            &other,
            json!({"name": "theirs", "instance_type": "standard.small", "template": "busybox",
                   "volumes": [{"volume_id": existing}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
}

#[tokio::test]
async fn a_volume_is_made_from_a_snapshot_of_another() {
    let c = Cloud::new().await;
    let id = volume(&c, ADMIN, "data", 2).await;
    let r =
        c.call(Method::POST, &format!("/v1/volumes/{id}/snapshots?wait=30"), ADMIN, Some(json!({"name": "s"}))).await;
    assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::OK, Some("success")), "{}", r.text);
    let snap = r.body["result"]["snapshot_id"].as_str().unwrap().to_string();
    let r = c.post("/v1/volumes", ADMIN, json!({"name": "copy", "snapshot_id": snap})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let op = c.wait(&r.id(), ADMIN).await;
    assert_eq!(op["state"], "success", "{op}");
    let copy = op["target"]["id"].as_str().unwrap().to_string();
    let v = show(&c, &copy).await;
    assert_eq!((v["state"].as_str(), v["size_gb"].as_u64()), (Some("available"), Some(2)), "{v}");
    let disk = c.sim.volume(Uuid::parse_str(&copy).unwrap()).unwrap();
    assert_eq!(disk.made_from, Some(Uuid::parse_str(&snap).unwrap()));
    // The source is free again: its snapshot can go, then it can.
    assert_eq!(show(&c, &id).await["operation_id"], Value::Null);
    // Smaller than the snapshot: refused; another project's snapshot: not found.
    let r = c.post("/v1/volumes", ADMIN, json!({"name": "small", "size_gb": 1, "snapshot_id": snap})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("admin", Some(project.id().as_str())).await;
    let r = c.post("/v1/volumes", &other, json!({"name": "theirs", "snapshot_id": snap})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // An empty volume still needs a size.
    let r = c.post("/v1/volumes", ADMIN, json!({"name": "sizeless"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}

#[tokio::test]
async fn an_instance_boots_from_a_volume_that_it_leaves_behind() {
    let c = Cloud::new().await;
    let first = c.instance(ADMIN, "first", json!({"boot_volume": {"name": "root"}, "disk_size_gb": 12})).await;
    let i = c.get(&format!("/v1/instances/{first}"), ADMIN).await.body;
    let root = i["boot_volume"]["volume_id"].as_str().unwrap_or_else(|| panic!("no boot volume: {i}")).to_string();
    assert_eq!(i["boot_volume"]["delete_on_termination"], false, "{i}");
    assert_eq!(i["volumes"], json!([root]), "{i}");
    let v = show(&c, &root).await;
    assert_eq!(
        (v["name"].as_str(), v["state"].as_str(), v["size_gb"].as_u64(), &v["boot"]),
        (Some("root"), Some("in-use"), Some(12), &json!(true)),
        "{v}"
    );
    assert_eq!(v["template_id"], i["template_id"], "{v}");
    // Its disk counts once, as a volume.
    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let usage = c.get(&format!("/v1/projects/{project_id}"), ADMIN).await.body["usage"].clone();
    assert_eq!((&usage["disk_gb"], &usage["volume_gb"]), (&json!(0), &json!(12)), "{usage}");
    let r = volume_action(&c, &root, "detach", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "conflict"), "{}", r.text);

    let r = c.call(Method::DELETE, &format!("/v1/instances/{first}"), ADMIN, None).await;
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success");
    let v = show(&c, &root).await;
    assert_eq!((v["state"].as_str(), &v["boot"], &v["instance_id"]), (Some("available"), &json!(false), &Value::Null));

    // Refused: a name for an existing volume, a data volume, another size.
    let data = volume(&c, ADMIN, "data", 1).await;
    for (body, field) in [
        (json!({"boot_volume": {"volume_id": root, "name": "x"}}), "boot_volume.name"),
        (json!({"boot_volume": {"volume_id": data}}), "boot_volume.id"),
        (json!({"boot_volume": {"volume_id": root}, "disk_size_gb": 20}), "disk_size_gb"),
    ] {
        let mut req = json!({"name": "second", "instance_type": "standard.small"});
        req.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        let r = c.post("/v1/instances", ADMIN, req).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}: {}", r.text);
        assert!(r.text.contains(field), "{body}: {}", r.text);
    }
    // Its template and size come with it.
    let second = c.instance(ADMIN, "second", json!({"boot_volume": {"volume_id": root}})).await;
    let j = c.get(&format!("/v1/instances/{second}"), ADMIN).await.body;
    assert_eq!((j["template"].as_str(), j["disk_size_gb"].as_u64()), (Some("busybox"), Some(12)), "{j}");
    assert_eq!(show(&c, &root).await["instance_id"].as_str(), Some(second.as_str()));
}

#[tokio::test]
async fn a_deleted_template_keeps_its_files_while_a_boot_volume_is_made_of_them() {
    let c = Cloud::new().await;
    let body = json!({"name": "bookworm", "url": "http://127.0.0.1:1/d.qcow2", "default_user": "debian"});
    let r = c.post("/v1/templates", ADMIN, body).await;
    let template = c.wait(&r.id(), ADMIN).await["result"]["template_id"].as_str().unwrap().to_string();
    let vm = c.instance(ADMIN, "vm", json!({"template": "bookworm", "boot_volume": {}})).await;
    let r = c.call(Method::DELETE, &format!("/v1/instances/{vm}"), ADMIN, None).await;
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success");
    let gone = c.call(Method::DELETE, &format!("/v1/templates/{template}"), ADMIN, None).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    let id: Uuid = template.parse().unwrap();
    assert!(c.sim.template_files().contains(&id), "the kept boot volume's disk still stands on them");
}

/// A volume made from a template (`template`) is one an instance boots from: it gets the template's disk
/// and the template's smallest size unless asked for more.
#[tokio::test]
async fn a_volume_made_from_a_template_boots_an_instance() {
    let c = Cloud::new().await;
    let r = c.post("/v1/volumes", ADMIN, json!({"name": "root", "template": "busybox", "size_gb": 5})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let op = c.wait(r.body["id"].as_str().unwrap(), ADMIN).await;
    assert_eq!(op["state"], "success", "{op}");
    let root = op["target"]["id"].as_str().unwrap().to_string();
    let v = show(&c, &root).await;
    let busybox = c.get("/v1/templates", ADMIN).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "busybox")
        .cloned()
        .unwrap();
    assert_eq!((v["size_gb"].as_u64(), &v["template_id"]), (Some(5), &busybox["id"]), "{v}");
    let vm = c.instance(ADMIN, "booted", json!({"boot_volume": {"volume_id": root}})).await;
    let i = c.get(&format!("/v1/instances/{vm}"), ADMIN).await.body;
    assert_eq!((i["state"].as_str(), i["disk_size_gb"].as_u64()), (Some("running"), Some(5)), "{i}");
    assert_eq!(i["boot_volume"]["volume_id"], root.as_str(), "{i}");
    // Without a size: the template's smallest disk.
    let r = c.post("/v1/volumes", ADMIN, json!({"name": "small", "template": "busybox"})).await;
    let op = c.wait(r.body["id"].as_str().unwrap(), ADMIN).await;
    let small = show(&c, op["target"]["id"].as_str().unwrap()).await;
    assert_eq!(small["size_gb"], busybox["min_disk_gb"], "{small}");
}

/// Once its operation says a create succeeded, the volume is shown `available`, every time: the server's
/// read cache once answered the `creating` volume for up to a second when the read came between the
/// commit landing and the cache forgetting it (an operation's state is read uncached). Races show up within
/// a few hundred creates on a busy machine.
#[tokio::test]
async fn a_volume_whose_create_succeeded_is_never_shown_creating() {
    let c = Cloud::new().await;
    for n in 0..200 {
        let id = volume(&c, ADMIN, &format!("v{n}"), 1).await;
        let v = show(&c, &id).await;
        assert_eq!(v["state"], "available", "create {n}: {v}");
    }
}
