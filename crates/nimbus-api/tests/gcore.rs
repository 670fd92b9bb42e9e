//! The Gcore dialect through HTTP on the real router, engine and SQLite store (sim driver): what the SDK
//! test does not reach — tenancy across projects, refusals that must not be 409, failed tasks, and the same
//! instances seen consistently through the native API.

#[path = "api/common.rs"]
mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Cloud, Reply, ADMIN};
use nimbus_driver::SimConfig;
use nimbus_engine::EngineConfig;
use serde_json::{json, Value};
use uuid::Uuid;

/// A Gcore request with `Authorization: APIKey <secret>`.
async fn gcore(c: &Cloud, method: Method, path: &str, secret: &str, body: Option<Value>) -> Reply {
    let req = Request::builder().method(method).uri(path).header("authorization", format!("APIKey {secret}"));
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    c.send(req.unwrap()).await
}

/// `/cloud/v1/instances/{project}/{region}` of the key's project and the server's zone.
async fn base(c: &Cloud, secret: &str, version: &str) -> String {
    let who = c.get("/v1/whoami", secret).await;
    let zones = c.get("/v1/zones", secret).await;
    format!("/cloud/{version}/instances/{}/{}", who.body["project"]["numeric_id"], zones.body["items"][0]["numeric_id"])
}

/// Creates an instance through Gcore and waits for its task; returns (instance id, task id).
async fn create(c: &Cloud, secret: &str, name: &str, tags: Value) -> (String, String) {
    let body = json!({
        "name": name,
        "flavor": "standard.small",
        "interfaces": [{"type": "external"}],
        "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
        "tags": tags,
    });
    let r = gcore(c, Method::POST, &base(c, secret, "v2").await, secret, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let task = r.body["tasks"][0].as_str().unwrap().to_string();
    let op = c.wait(&task, secret).await;
    assert_eq!(op["state"], "success", "{op}");
    (op["target"]["id"].as_str().unwrap().to_string(), task)
}

async fn task(c: &Cloud, secret: &str, id: &str) -> Value {
    c.wait(id, secret).await;
    let r = gcore(c, Method::GET, &format!("/cloud/v1/tasks/{id}"), secret, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

fn assert_gcore_error(r: &Reply, status: StatusCode, class: &str) {
    assert_eq!((r.status, r.body["exception_class"].as_str()), (status, Some(class)), "{}", r.text);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.text);
    assert!(r.body["request_id"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.text);
}

#[tokio::test]
async fn another_project_sees_nothing_and_cannot_use_my_ids() {
    let c = Cloud::new().await;
    let (id, task_id) = create(&c, ADMIN, "mine", json!({})).await;
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("member", Some(project.id().as_str())).await;
    let mine = base(&c, ADMIN, "v1").await;
    let theirs = base(&c, &other, "v1").await;
    assert_ne!(mine, theirs, "projects have their own integer ids");

    assert_gcore_error(&gcore(&c, Method::GET, &mine, &other, None).await, StatusCode::NOT_FOUND, "NotFoundError");
    let listed = gcore(&c, Method::GET, &theirs, &other, None).await;
    assert_eq!((listed.body["count"].as_u64(), listed.body["results"].as_array().map(Vec::len)), (Some(0), Some(0)));
    let r = gcore(&c, Method::GET, &format!("{theirs}/{id}"), &other, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let r = gcore(&c, Method::GET, &format!("/cloud/v1/tasks/{task_id}"), &other, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let r = gcore(&c, Method::DELETE, &format!("{theirs}/{id}"), &other, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    assert_eq!(c.state(ADMIN, &id).await, "running", "nothing happened to my instance");
}

#[tokio::test]
async fn gcore_and_native_views_agree() {
    let c = Cloud::new().await;
    let (id, _) = create(&c, ADMIN, "both", json!({"env": "prod"})).await;
    let native = c.get(&format!("/v1/instances/{id}"), ADMIN).await.body;
    assert_eq!(native["labels"], json!({"env": "prod"}));
    let path = format!("{}/{id}", base(&c, ADMIN, "v1").await);
    let g = gcore(&c, Method::GET, &path, ADMIN, None).await.body;
    let read_only: Vec<&Value> = g["tags"].as_array().unwrap().iter().filter(|t| t["read_only"] == true).collect();
    assert!(!read_only.is_empty(), "{g}");
    for t in &read_only {
        assert_eq!(native["system_labels"][t["key"].as_str().unwrap()], t["value"], "{native}");
    }
    assert_eq!(g["addresses"]["nimbus"][0]["addr"], native["ip_addresses"][0]);

    // A user label with a system label's key (possible natively) never shadows the read-only tag.
    let zone_key = read_only[0]["key"].as_str().unwrap();
    let r =
        c.call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(json!({"labels": {zone_key: "x"}}))).await;
    if r.status == StatusCode::OK {
        let g = gcore(&c, Method::GET, &path, ADMIN, None).await.body;
        let same_key: Vec<&Value> = g["tags"].as_array().unwrap().iter().filter(|t| t["key"] == zone_key).collect();
        assert_eq!(same_key.len(), 1, "{g}");
        assert_eq!(same_key[0]["read_only"], true);
        let undo = json!({"labels": {zone_key: null}});
        c.call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(undo)).await;
    }

    // A native suspend shows as Gcore's SUSPENDED.
    c.act(ADMIN, &id, "suspend", None).await;
    let g = gcore(&c, Method::GET, &path, ADMIN, None).await.body;
    assert_eq!((g["status"].as_str(), g["vm_state"].as_str()), (Some("SUSPENDED"), Some("suspended")));
    // A Gcore rename and tag patch shows natively.
    let r =
        gcore(&c, Method::PATCH, &path, ADMIN, Some(json!({"name": "renamed", "tags": {"env": null, "a": "b"}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let native = c.get(&format!("/v1/instances/{id}"), ADMIN).await.body;
    assert_eq!((native["name"].as_str(), &native["labels"]), (Some("renamed"), &json!({"a": "b"})));
}

#[tokio::test]
async fn refusals_are_gcore_errors_and_only_a_lock_is_409() {
    let c = Cloud::new().await;
    let (id, _) = create(&c, ADMIN, "guarded", json!({})).await;
    let path = format!("{}/{id}", base(&c, ADMIN, "v1").await);
    c.call(Method::POST, &format!("/v1/instances/{id}/add-protection"), ADMIN, None).await;
    let r = gcore(&c, Method::DELETE, &path, ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    assert_eq!(r.headers["x-should-retry"], "false");
    assert!(r.body["message"].as_str().unwrap().contains("protected"), "{}", r.text);

    let r = gcore(&c, Method::PUT, &path, ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::METHOD_NOT_ALLOWED, "HTTPError");

    let r = gcore(&c, Method::PATCH, &path, ADMIN, Some(json!({"name": "bad name with spaces"}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    assert!(r.body["invalid_fields"]["name"].is_array(), "{}", r.text);

    let readonly = c.key("read-only", None).await;
    let r = gcore(&c, Method::PATCH, &path, &readonly, Some(json!({"tags": {"a": "b"}}))).await;
    assert_gcore_error(&r, StatusCode::FORBIDDEN, "ForbiddenError");

    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let quota = json!({"instances": 1, "vcpus": 100, "memory_mib": 1000000, "disk_gb": 1000});
    let q = c.call(Method::PUT, &format!("/v1/projects/{project_id}/quota"), ADMIN, Some(quota)).await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.text);
    let body = json!({
        "name": "one-too-many", "flavor": "standard.small", "interfaces": [{"type": "external"}],
        "volumes": [{"source": "image", "image_id": "busybox"}],
    });
    let r = gcore(&c, Method::POST, &base(&c, ADMIN, "v2").await, ADMIN, Some(body)).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "QuotaLimitExceed");

    let r = gcore(&c, Method::GET, "/cloud/v1/tasks/not-a-task", ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let r = c.send(Request::get(&path).header("authorization", "Bearer x").body(Body::empty()).unwrap()).await;
    assert_gcore_error(&r, StatusCode::UNAUTHORIZED, "NotAuthenticated");
}

#[tokio::test]
async fn a_failed_action_is_an_error_task_and_releases_the_instance() {
    let c = Cloud::new().await;
    let (id, create_task) = create(&c, ADMIN, "flaky", json!({})).await;
    let created = task(&c, ADMIN, &create_task).await;
    assert_eq!(
        (created["state"].as_str(), &created["created_resources"]["instances"]),
        (Some("FINISHED"), &json!([id]))
    );
    let path = format!("{}/{id}", base(&c, ADMIN, "v2").await);
    c.sim.inject_failure("reboot", 1);
    let r = gcore(&c, Method::POST, &format!("{path}/action"), ADMIN, Some(json!({"action": "reboot_hard"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let t = task(&c, ADMIN, r.body["tasks"][0].as_str().unwrap()).await;
    assert_eq!(t["state"], "ERROR", "{t}");
    assert!(t["error"].as_str().is_some_and(|e| e.contains("injected")), "{t}");
    assert!(t["finished_on"].is_string(), "{t}");
    let g = gcore(&c, Method::GET, &format!("{}/{id}", base(&c, ADMIN, "v1").await), ADMIN, None).await.body;
    assert_eq!((g["status"].as_str(), &g["task_id"], &g["task_state"]), (Some("ACTIVE"), &Value::Null, &Value::Null));
    assert_eq!(g["creator_task_id"], json!(create_task));
}

#[tokio::test]
async fn changeflavor_resizes_a_running_instance_across_families_and_leaves_it_running() {
    // A slow stop, so that the resize can be seen under way.
    let mut sim = SimConfig::default();
    sim.action_delays.insert("stop".into(), Duration::from_millis(400));
    let c = Cloud::with(sim, EngineConfig::default()).await;
    let (id, _) = create(&c, ADMIN, "grows", json!({})).await;
    let path = format!("{}/{id}", base(&c, ADMIN, "v1").await);
    let console_before = c.get(&format!("/v1/instances/{id}/console"), ADMIN).await.text;

    let r =
        gcore(&c, Method::POST, &format!("{path}/changeflavor"), ADMIN, Some(json!({"flavor_id": "cpu.large"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let task_id = r.body["tasks"][0].as_str().unwrap().to_string();
    let during = gcore(&c, Method::GET, &path, ADMIN, None).await.body;
    assert_eq!(
        (during["status"].as_str(), during["vm_state"].as_str(), during["task_state"].as_str()),
        (Some("RESIZE"), Some("active"), Some("resize_prep")),
        "{during}"
    );
    assert_eq!(during["task_id"], json!(task_id));

    let t = task(&c, ADMIN, &task_id).await;
    assert_eq!((t["state"].as_str(), t["task_type"].as_str()), (Some("FINISHED"), Some("resize_vm")), "{t}");
    let g = gcore(&c, Method::GET, &path, ADMIN, None).await.body;
    assert_eq!((g["status"].as_str(), g["vm_state"].as_str()), (Some("ACTIVE"), Some("active")), "{g}");
    assert_eq!((&g["task_id"], &g["task_state"]), (&Value::Null, &Value::Null), "{g}");
    assert_eq!(
        (g["flavor"]["flavor_id"].as_str(), g["flavor"]["vcpus"].as_u64(), g["flavor"]["ram"].as_u64()),
        (Some("cpu.large"), Some(8), Some(8192)),
        "{g}"
    );
    let native = c.get(&format!("/v1/instances/{id}"), ADMIN).await.body;
    assert_eq!(
        (native["state"].as_str(), native["instance_type"].as_str(), native["vcpus"].as_u64()),
        (Some("running"), Some("cpu.large"), Some(8)),
        "{native}"
    );
    // The host saw the VM power off and boot again.
    let console = c.get(&format!("/v1/instances/{id}/console"), ADMIN).await.text;
    let new = &console[console_before.len()..];
    assert!(new.contains("POWEROFF") && new.contains("booted"), "{new}");
    assert!(new.find("POWEROFF") < new.find("booted"), "{new}");

    // A stopped instance stays stopped, and the native plain scale of a running one is still refused.
    c.act(ADMIN, &id, "stop", None).await;
    let r =
        gcore(&c, Method::POST, &format!("{path}/changeflavor"), ADMIN, Some(json!({"flavor_id": "standard.small"})))
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    task(&c, ADMIN, r.body["tasks"][0].as_str().unwrap()).await;
    let g = gcore(&c, Method::GET, &path, ADMIN, None).await.body;
    assert_eq!((g["status"].as_str(), g["flavor"]["flavor_id"].as_str()), (Some("SHUTOFF"), Some("standard.small")));
    c.act(ADMIN, &id, "start", None).await;
    let r = c.post(&format!("/v1/instances/{id}/scale"), ADMIN, json!({"instance_type": "standard.medium"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
}

/// `/cloud/{version}/{area}/{project}/{region}` of the key's project and the server's zone.
async fn area(c: &Cloud, secret: &str, version: &str, name: &str) -> String {
    base(c, secret, version).await.replace("/instances/", &format!("/{name}/"))
}

#[tokio::test]
async fn security_groups_live_in_gcore_and_in_the_core_alike() {
    let c = Cloud::new().await;
    let (v1, v2) = (area(&c, ADMIN, "v1", "securitygroups").await, area(&c, ADMIN, "v2", "security_groups").await);
    // No rules named: Gcore's default template, everything in and out; the task is finished at once.
    let r = gcore(&c, Method::POST, &v2, ADMIN, Some(json!({"name": "web", "description": "front"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = r.body["tasks"][0].as_str().unwrap().to_string();
    let t = gcore(&c, Method::GET, &format!("/cloud/v1/tasks/{id}"), ADMIN, None).await;
    assert_eq!(
        (t.body["state"].as_str(), t.body["task_type"].as_str()),
        (Some("FINISHED"), Some("create_security_group"))
    );
    assert_eq!(t.body["created_resources"]["security_groups"], json!([id]), "{}", t.text);
    let g = gcore(&c, Method::GET, &format!("{v1}/{id}"), ADMIN, None).await;
    let directions: Vec<&str> =
        g.body["security_group_rules"].as_array().unwrap().iter().map(|r| r["direction"].as_str().unwrap()).collect();
    assert_eq!(directions, ["ingress", "egress"], "{}", g.text);
    let native = c.get(&format!("/v1/security-groups/{id}"), ADMIN).await;
    assert_eq!((native.status, native.body["name"].as_str()), (StatusCode::OK, Some("web")), "{}", native.text);

    // Update: a rename, and the whole rule set (a rule that stays keeps its id); no task is left to run.
    let ssh = json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
                     "remote_ip_prefix": "10.0.0.0/8", "ethertype": "IPv4"});
    let patch = json!({"name": "web-2", "rules": [ssh, {"direction": "egress"}]});
    let u = gcore(&c, Method::PATCH, &format!("{v2}/{id}"), ADMIN, Some(patch)).await;
    assert_eq!((u.status, &u.body), (StatusCode::OK, &json!({"tasks": []})), "{}", u.text);
    let after = gcore(&c, Method::GET, &format!("{v1}/{id}"), ADMIN, None).await.body;
    assert_eq!(after["name"], "web-2");
    let rules = after["security_group_rules"].as_array().unwrap();
    assert_eq!((rules[0]["port_range_min"].as_u64(), rules[0]["protocol"].as_str()), (Some(22), Some("tcp")));
    assert_eq!(rules[1]["id"], g.body["security_group_rules"][1]["id"], "the egress rule stayed");
    let listed = gcore(&c, Method::GET, &format!("{v1}?name=web-2"), ADMIN, None).await;
    assert_eq!(listed.body["count"], 1, "{}", listed.text);

    // Refused: IPv6, tags, a missing name; nothing was written.
    for bad in [
        json!({"name": "x", "rules": [{"direction": "ingress", "ethertype": "IPv6"}]}),
        json!({"name": "x", "tags": {"k": "v"}}),
        json!({"description": "no name"}),
    ] {
        let r = gcore(&c, Method::POST, &v2, ADMIN, Some(bad)).await;
        assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    }
    assert_eq!(gcore(&c, Method::GET, &v1, ADMIN, None).await.body["count"], 1);

    // A group in use is not deleted; once free it is, and its id is found no more.
    let (vm, _) = create(&c, ADMIN, "sg-vm", json!({})).await;
    let add = gcore(
        &c,
        Method::POST,
        &format!("{}/{vm}/addsecuritygroup", base(&c, ADMIN, "v1").await),
        ADMIN,
        Some(json!({"name": "web-2"})),
    )
    .await;
    assert_eq!(add.status, StatusCode::NO_CONTENT, "{}", add.text);
    let d = gcore(&c, Method::DELETE, &format!("{v1}/{id}"), ADMIN, None).await;
    assert_gcore_error(&d, StatusCode::BAD_REQUEST, "BadRequestError");
    let del = gcore(
        &c,
        Method::POST,
        &format!("{}/{vm}/delsecuritygroup", base(&c, ADMIN, "v1").await),
        ADMIN,
        Some(json!({"name": "web-2"})),
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    assert_eq!(gcore(&c, Method::DELETE, &format!("{v1}/{id}"), ADMIN, None).await.status, StatusCode::NO_CONTENT);
    assert_gcore_error(
        &gcore(&c, Method::GET, &format!("{v1}/{id}"), ADMIN, None).await,
        StatusCode::NOT_FOUND,
        "NotFoundError",
    );
}

#[tokio::test]
async fn server_groups_are_anti_affinity_groups_joined_by_a_task() {
    let c = Cloud::new().await;
    let sg = area(&c, ADMIN, "v1", "servergroups").await;
    let r = gcore(&c, Method::POST, &sg, ADMIN, Some(json!({"name": "spread", "policy": "affinity"}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    let r = gcore(&c, Method::POST, &sg, ADMIN, Some(json!({"name": "spread", "policy": "anti-affinity"}))).await;
    assert_eq!((r.status, r.body["instances"].clone()), (StatusCode::OK, json!([])), "{}", r.text);
    let group = r.body["servergroup_id"].as_str().unwrap().to_string();

    let (vm, _) = create(&c, ADMIN, "sg-member", json!({})).await;
    let inst = base(&c, ADMIN, "v1").await;
    let put = gcore(
        &c,
        Method::POST,
        &format!("{inst}/{vm}/put_into_servergroup"),
        ADMIN,
        Some(json!({"servergroup_id": group})),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let t = task(&c, ADMIN, put.body["tasks"][0].as_str().unwrap()).await;
    assert_eq!((t["state"].as_str(), t["task_type"].as_str()), (Some("FINISHED"), Some("put_into_servergroup")), "{t}");
    let g = gcore(&c, Method::GET, &format!("{sg}/{group}"), ADMIN, None).await;
    assert_eq!(g.body["instances"], json!([{"instance_id": vm, "instance_name": "sg-member"}]), "{}", g.text);
    let native = c.get(&format!("/v1/instances/{vm}"), ADMIN).await;
    assert!(native.text.contains(&group), "the core's record has the group: {}", native.text);
    assert_eq!(c.state(ADMIN, &vm).await, "running", "joining changes nothing on the host");

    // In use, the group stays; out of it, it goes, with no task left to run.
    let d = gcore(&c, Method::DELETE, &format!("{sg}/{group}"), ADMIN, None).await;
    assert_gcore_error(&d, StatusCode::BAD_REQUEST, "BadRequestError");
    let rm = gcore(&c, Method::POST, &format!("{inst}/{vm}/remove_from_servergroup"), ADMIN, None).await;
    let t = task(&c, ADMIN, rm.body["tasks"][0].as_str().unwrap()).await;
    assert_eq!(t["task_type"], "remove_from_servergroup", "{t}");
    assert_eq!(gcore(&c, Method::GET, &format!("{sg}/{group}"), ADMIN, None).await.body["instances"], json!([]));
    let again = gcore(&c, Method::POST, &format!("{inst}/{vm}/remove_from_servergroup"), ADMIN, None).await;
    assert_gcore_error(&again, StatusCode::BAD_REQUEST, "BadRequestError");
    let d = gcore(&c, Method::DELETE, &format!("{sg}/{group}"), ADMIN, None).await;
    assert_eq!((d.status, &d.body), (StatusCode::OK, &json!({"tasks": []})), "{}", d.text);
    assert_eq!(gcore(&c, Method::GET, &sg, ADMIN, None).await.body["count"], 0);
}

#[tokio::test]
async fn a_password_given_at_create_is_revealed_natively_and_reaches_the_guest() {
    let c = Cloud::new().await;
    let url = base(&c, ADMIN, "v2").await;
    let body = |extra: Value| {
        let mut b = json!({
            "name": "pw", "flavor": "standard.small", "interfaces": [{"type": "external"}],
            "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
        });
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    for bad in [
        json!({"password": "short"}),
        json!({"password": "has a space"}),
        json!({"password": "long-enough-1", "username": "admin"}),
    ] {
        let r = gcore(&c, Method::POST, &url, ADMIN, Some(body(bad.clone()))).await;
        assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
        let field = if bad.get("username").is_some() { "username" } else { "password" };
        assert!(r.body["invalid_fields"].get(field).is_some(), "{bad}: {}", r.text);
    }
    let r = gcore(&c, Method::POST, &url, ADMIN, Some(body(json!({"password": "Secret-pass-42", "username": "root"}))))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let op = c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await;
    let id = op["target"]["id"].as_str().unwrap();
    let revealed = c.get(&format!("/v1/instances/{id}/password"), ADMIN).await;
    assert_eq!(revealed.body["password"], "Secret-pass-42", "{}", revealed.text);
    let console = c.get(&format!("/v1/instances/{id}/console"), ADMIN).await;
    assert!(console.text.contains("root password set"), "{}", console.text);
    let record = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert!(!record.text.contains("Secret-pass-42"), "the password is kept apart from the instance: {}", record.text);
}

#[tokio::test]
async fn creator_task_id_is_kept_on_the_instance() {
    let c = Cloud::new().await;
    let (id, task) = create(&c, ADMIN, "kept", json!({})).await;
    let ctx = c.engine.authenticate_secret(common::ADMIN, Default::default()).await.unwrap();
    let record = c.engine.instance(&ctx, id.parse().unwrap()).await.unwrap();
    assert_eq!(record.create_operation_id.map(|o| o.to_string()), Some(task.clone()));
    let listed = gcore(&c, Method::GET, &base(&c, ADMIN, "v1").await, ADMIN, None).await;
    assert_eq!(listed.body["results"][0]["creator_task_id"], task, "{}", listed.text);
}

/// `/cloud/v1/{what}/{project}/{region}` of the key's project.
async fn network_base(c: &Cloud, secret: &str, what: &str) -> String {
    base(c, secret, "v1").await.replace("/instances/", &format!("/{what}/"))
}

#[tokio::test]
async fn private_networks_stay_in_their_project_and_subnets_follow_the_core_range() {
    let c = Cloud::new().await;
    let networks = network_base(&c, ADMIN, "networks").await;
    let subnets = network_base(&c, ADMIN, "subnets").await;
    let r = gcore(&c, Method::POST, &networks, ADMIN, Some(json!({"name": "back"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let t =
        gcore(&c, Method::GET, &format!("/cloud/v1/tasks/{}", r.body["tasks"][0].as_str().unwrap()), ADMIN, None).await;
    assert_eq!(t.body["state"], "FINISHED", "{}", t.text);
    let net = t.body["created_resources"]["networks"][0].as_str().unwrap().to_string();

    // The gateway is the first or last host, or none; the range is every other host.
    let bad = json!({"name": "s", "network_id": net, "cidr": "10.9.0.0/29", "gateway_ip": "10.9.0.3"});
    let r = gcore(&c, Method::POST, &subnets, ADMIN, Some(bad)).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    assert!(r.body["invalid_fields"]["gateway_ip"].is_array(), "{}", r.text);
    let last = json!({"name": "s", "network_id": net, "cidr": "10.9.0.0/29", "gateway_ip": "10.9.0.6"});
    let r = gcore(&c, Method::POST, &subnets, ADMIN, Some(last)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let listed = gcore(&c, Method::GET, &subnets, ADMIN, None).await;
    let subnet = &listed.body["results"][0];
    assert_eq!((subnet["gateway_ip"].as_str(), subnet["total_ips"].as_u64()), (Some("10.9.0.6"), Some(5)), "{subnet}");

    // Another project sees none of it, and cannot use the ids.
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("member", Some(project.id().as_str())).await;
    let theirs = network_base(&c, &other, "networks").await;
    let listed = gcore(&c, Method::GET, &theirs, &other, None).await;
    assert_eq!(listed.body["count"], 0, "{}", listed.text);
    let r = gcore(&c, Method::GET, &format!("{theirs}/{net}"), &other, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let r = gcore(&c, Method::DELETE, &format!("{theirs}/{net}"), &other, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let (id, _) = create(&c, &other, "theirs", json!({})).await;
    let attach = json!({"type": "any_subnet", "network_id": net});
    let r = gcore(
        &c,
        Method::POST,
        &format!("{}/{id}/attach_interface", base(&c, &other, "v1").await),
        &other,
        Some(attach),
    )
    .await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let r = gcore(&c, Method::GET, &format!("/cloud/v1/tasks/{}", t.body["id"].as_str().unwrap()), &other, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");

    // The instance network is Nimbus's: listed with owned_by=any, never deleted.
    let any = gcore(&c, Method::GET, &format!("{networks}?owned_by=any"), ADMIN, None).await;
    let shared = any.body["results"].as_array().unwrap().iter().find(|n| n["name"] == "nimbus").cloned().unwrap();
    let r = gcore(&c, Method::DELETE, &format!("{networks}/{}", shared["id"].as_str().unwrap()), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_gcores_error_body() {
    let c = Cloud::new().await;
    let r = gcore(&c, Method::GET, "/cloud/v1/nothing/1/1", ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let r = gcore(&c, Method::PUT, &base(&c, ADMIN, "v1").await, ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::METHOD_NOT_ALLOWED, "HTTPError");
}

#[tokio::test]
async fn patch_keeps_read_only_tags_instead_of_refusing() {
    let c = Cloud::new().await;
    let (id, _) = create(&c, ADMIN, "keeper", json!({"team": "a"})).await;
    let path = format!("{}/{id}", base(&c, ADMIN, "v1").await);
    let before = gcore(&c, Method::GET, &path, ADMIN, None).await.body;
    let read_only: Vec<Value> =
        before["tags"].as_array().unwrap().iter().filter(|t| t["read_only"] == true).cloned().collect();
    let key = read_only[0]["key"].as_str().unwrap().to_string();
    // A client sending back a read-only tag (changed or removed) with its own change: the change applies.
    for attempt in [json!({&key: "hijacked", "team": "b"}), json!({&key: null})] {
        let r = gcore(&c, Method::PATCH, &path, ADMIN, Some(json!({"tags": attempt}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let kept: Vec<Value> =
            r.body["tags"].as_array().unwrap().iter().filter(|t| t["read_only"] == true).cloned().collect();
        assert_eq!(kept, read_only, "{}", r.text);
    }
    let after = gcore(&c, Method::GET, &path, ADMIN, None).await.body;
    let team: Vec<&Value> = after["tags"].as_array().unwrap().iter().filter(|t| t["key"] == "team").collect();
    assert_eq!(team[0]["value"], "b", "{after}");
}

#[tokio::test]
async fn ssh_keys_regions_and_projects_are_what_a_create_refers_to() {
    let c = Cloud::new().await;
    let projects = gcore(&c, Method::GET, "/cloud/v1/projects", ADMIN, None).await;
    assert_eq!(projects.body["count"], 1, "{}", projects.text);
    let project = projects.body["results"][0]["id"].as_i64().unwrap();
    let regions = gcore(&c, Method::GET, "/cloud/v1/regions", ADMIN, None).await;
    let region = regions.body["results"][0]["id"].as_i64().unwrap();
    assert_eq!(base(&c, ADMIN, "v1").await, format!("/cloud/v1/instances/{project}/{region}"));
    let r = gcore(&c, Method::GET, &format!("/cloud/v1/regions/{region}"), ADMIN, None).await;
    assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::OK, Some("ACTIVE")), "{}", r.text);
    assert_gcore_error(
        &gcore(&c, Method::GET, "/cloud/v1/projects/999", ADMIN, None).await,
        StatusCode::NOT_FOUND,
        "NotFoundError",
    );

    let keys = format!("/cloud/v1/ssh_keys/{project}");
    let public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t";
    let made = gcore(&c, Method::POST, &keys, ADMIN, Some(json!({"name": "deploy", "public_key": public_key}))).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.text);
    assert_eq!((made.body["name"].as_str(), made.body["state"].as_str()), (Some("deploy"), Some("ACTIVE")));
    assert!(made.body["fingerprint"].as_str().is_some_and(|f| !f.is_empty()), "{}", made.text);
    let id = made.id();
    let listed = gcore(&c, Method::GET, &keys, ADMIN, None).await;
    assert_eq!(listed.body["results"][0]["id"], id.as_str(), "{}", listed.text);
    let got = gcore(&c, Method::GET, &format!("{keys}/{id}"), ADMIN, None).await;
    assert_eq!(got.body["public_key"], public_key);
    // The key a create names by ssh_key_name.
    let body = json!({
        "name": "keyed",
        "flavor": "standard.small",
        "interfaces": [{"type": "external"}],
        "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
        "ssh_key_name": "deploy",
    });
    let r = gcore(&c, Method::POST, &base(&c, ADMIN, "v2").await, ADMIN, Some(body)).await;
    let op = c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await;
    assert_eq!(op["state"], "success", "{op}");

    // Refusals change nothing: no key pair is generated, and a duplicate name is refused.
    let r = gcore(&c, Method::POST, &keys, ADMIN, Some(json!({"name": "generated"}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    let r = gcore(&c, Method::POST, &keys, ADMIN, Some(json!({"name": "deploy", "public_key": public_key}))).await;
    assert!(r.status.is_client_error(), "{}", r.text);
    assert_eq!(gcore(&c, Method::GET, &keys, ADMIN, None).await.body["count"], 1);
    assert_gcore_error(
        &gcore(&c, Method::GET, "/cloud/v1/ssh_keys/999", ADMIN, None).await,
        StatusCode::NOT_FOUND,
        "NotFoundError",
    );

    let r = gcore(&c, Method::DELETE, &format!("{keys}/{id}"), ADMIN, None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::NO_CONTENT, ""), "{}", r.text);
    assert_gcore_error(
        &gcore(&c, Method::GET, &format!("{keys}/{id}"), ADMIN, None).await,
        StatusCode::NOT_FOUND,
        "NotFoundError",
    );
}

/// Gcore's list: offset and limit over the count of all that match, in the order asked for, with filters
/// the store applies (name, status) and those it cannot (tags, flavor) alike.
#[tokio::test]
async fn the_list_pages_by_offset_in_any_order_with_filters() {
    let c = Cloud::new().await;
    let mut ids = Vec::new();
    for (name, env) in [("web-b", "prod"), ("db", "prod"), ("web-a", "dev"), ("web-c", "prod")] {
        ids.push(create(&c, ADMIN, name, json!({ "env": env })).await.0);
    }
    c.act(ADMIN, &ids[1], "stop", None).await;
    let base = base(&c, ADMIN, "v1").await;
    let list = |query: &str| {
        let (path, query) = (format!("{base}?{query}"), query.to_string());
        let c = &c;
        async move {
            let r = gcore(c, Method::GET, &path, ADMIN, None).await;
            assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text);
            let names: Vec<String> =
                r.body["results"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
            (r.body["count"].as_u64().unwrap(), names)
        }
    };
    assert_eq!(list("limit=2").await, (4, vec!["web-b".into(), "db".into()]));
    assert_eq!(list("limit=2&offset=3").await, (4, vec!["web-c".into()]));
    assert_eq!(list("order_by=created.desc&limit=1").await, (4, vec!["web-c".into()]));
    assert_eq!(list("order_by=name.asc&offset=1&limit=2").await, (4, vec!["web-a".into(), "web-b".into()]));
    assert_eq!(list("order_by=name.desc&limit=1").await, (4, vec!["web-c".into()]));
    assert_eq!(list("name=web&order_by=name.asc&limit=2").await, (3, vec!["web-a".into(), "web-b".into()]));
    assert_eq!(list("status=SHUTOFF").await, (1, vec!["db".into()]));
    assert_eq!(list("status=ACTIVE&offset=1").await, (3, vec!["web-a".into(), "web-c".into()]));
    let prod =
        form_urlencoded::Serializer::new(String::new()).append_pair("tag_key_value", r#"{"env":"prod"}"#).finish();
    assert_eq!(list(&format!("{prod}&status=ACTIVE&limit=1")).await, (2, vec!["web-b".into()]));
    assert_eq!(list("tag_value=dev&flavor_prefix=standard").await, (1, vec!["web-a".into()]));
    let number = form_urlencoded::Serializer::new(String::new()).append_pair("tag_key_value", r#"{"env":1}"#).finish();
    assert_eq!(list(&number).await, (0, vec![]), "a tag's value is text");
    // Addresses and the time of the last change are the store's filters too.
    let ip =
        c.get(&format!("/v1/instances/{}", ids[2]), ADMIN).await.body["ip_addresses"][0].as_str().unwrap().to_string();
    assert_eq!(list(&format!("ip={ip}")).await.1, vec!["web-a".to_string()], "{ip}");
    assert_eq!(list("changes_since=2000-01-01T00:00:00Z&limit=1").await, (4, vec!["web-b".into()]));
    assert_eq!(list("changes_before=2000-01-01T00:00:00Z").await, (0, vec![]));
    assert_eq!(list("changes_since=2999-01-01T00:00:00Z&status=ACTIVE").await, (0, vec![]));
    // Id and flavour filters are the store's: one window and one count.
    assert_eq!(list(&format!("uuid={}", &ids[2][24..])).await, (1, vec!["web-a".into()]));
    assert_eq!(list("flavor_prefix=standard&limit=1&offset=3").await, (4, vec!["web-c".into()]));
    assert_eq!(list("exclude_flavor_prefix=standard").await, (0, vec![]));
    assert_eq!(list("flavor_id=no-such-flavor").await, (0, vec![]));
    assert_eq!(list("flavor_id=standard.small&limit=1").await, (4, vec!["web-b".into()]));
    assert_eq!(list("offset=9").await, (4, vec![]));
    assert_eq!(list("limit=0").await, (4, vec![]));
    // A deleted instance is gone for Gcore, whatever status is asked for.
    let r = c.call(Method::DELETE, &format!("/v1/instances/{}", ids[1]), ADMIN, None).await;
    c.wait(&r.id(), ADMIN).await;
    assert_eq!(list("status=DELETED").await, (0, vec![]));
    assert_eq!(list("order_by=name.asc&limit=1").await, (3, vec!["web-a".into()]));
    let r = gcore(&c, Method::GET, &format!("{base}?order_by=size.asc"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
}

/// `reboot` is asked of the guest (an ACPI power-off and a boot) and `reboot_hard` resets the VM: they are
/// different tasks doing different things.
#[tokio::test]
async fn a_soft_reboot_asks_the_guest_and_a_hard_one_resets_the_vm() {
    let c = Cloud::new().await;
    let (id, _) = create(&c, ADMIN, "cycled", json!({})).await;
    let path = format!("{}/{id}/action", base(&c, ADMIN, "v2").await);
    let reboot = |action: &'static str| {
        let (c, path) = (&c, path.clone());
        async move {
            let r = gcore(c, Method::POST, &path, ADMIN, Some(json!({ "action": action }))).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            task(c, ADMIN, r.body["tasks"][0].as_str().unwrap()).await
        }
    };
    let console = || async { c.get(&format!("/v1/instances/{id}/console"), ADMIN).await.text };
    // The VM's reset is broken: a soft reboot never uses it.
    c.sim.inject_failure("reboot", 1);
    let soft = reboot("reboot").await;
    assert_eq!((soft["state"].as_str(), soft["task_type"].as_str()), (Some("FINISHED"), Some("reboot_vm")), "{soft}");
    assert!(console().await.contains("POWEROFF"), "{}", console().await);
    assert!(!console().await.contains("sim: reboot"), "{}", console().await);
    let hard = reboot("reboot_hard").await;
    assert_eq!((hard["state"].as_str(), hard["task_type"].as_str()), (Some("ERROR"), Some("hard_reboot_vm")), "{hard}");
    let hard = reboot("reboot_hard").await;
    assert_eq!(hard["state"], "FINISHED", "{hard}");
    assert!(console().await.contains("sim: reboot"), "{}", console().await);
    let g = gcore(&c, Method::GET, &format!("{}/{id}", base(&c, ADMIN, "v1").await), ADMIN, None).await.body;
    assert_eq!(g["status"], "ACTIVE", "{g}");
}

/// An instance running its rescue system (a rescue start through another API) is Nova's rescued one:
/// `RESCUE`/`rescued`, found by that status and not by `ACTIVE`; stopped, it is `SHUTOFF` and then `ACTIVE`
/// again once started.
#[tokio::test]
async fn a_rescued_instance_shows_novas_rescue_status() {
    let c = Cloud::new().await;
    let (id, _) = create(&c, ADMIN, "rescued", json!({})).await;
    let (other, _) = create(&c, ADMIN, "plain", json!({})).await;
    let v1 = base(&c, ADMIN, "v1").await;
    let show = |id: &str| {
        let (c, path) = (&c, format!("{v1}/{id}"));
        async move {
            let g = gcore(c, Method::GET, &path, ADMIN, None).await.body;
            (
                g["status"].as_str().unwrap_or_default().to_string(),
                g["vm_state"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    let listed = |status: &'static str| {
        let (c, path) = (&c, format!("{v1}?status={status}"));
        async move {
            let r = gcore(c, Method::GET, &path, ADMIN, None).await;
            let names = r.body["results"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string());
            names.collect::<Vec<_>>()
        }
    };
    let act = |id: &str, action: &'static str, body: Option<Value>| {
        let (c, id) = (&c, id.to_string());
        async move {
            let op = c.call(Method::POST, &format!("/v1/instances/{id}/{action}"), ADMIN, body).await;
            assert_eq!(c.wait(&op.id(), ADMIN).await["state"], "success");
        }
    };
    act(&id, "stop", None).await;
    act(&id, "start", Some(json!({"rescue": true}))).await;
    assert_eq!(show(&id).await, ("RESCUE".into(), "rescued".into()));
    assert_eq!(show(&other).await, ("ACTIVE".into(), "active".into()));
    assert_eq!(listed("RESCUE").await, ["rescued"]);
    assert_eq!(listed("ACTIVE").await, ["plain"]);
    act(&id, "stop", None).await;
    assert_eq!(show(&id).await, ("SHUTOFF".into(), "stopped".into()));
    act(&id, "start", None).await;
    assert_eq!(show(&id).await, ("ACTIVE".into(), "active".into()));
}

/// The task of a change made at once, FINISHED when answered.
async fn finished(c: &Cloud, r: &Reply) -> Value {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let path = format!("/cloud/v1/tasks/{}", r.body["tasks"][0].as_str().unwrap());
    let t = gcore(c, Method::GET, &path, ADMIN, None).await;
    assert_eq!(t.body["state"], "FINISHED", "{}", t.text);
    t.body
}

/// Floating IPs are the core's elastic IPs, from the operator's pool: made (on a port or not), assigned to an
/// instance's port and unassigned, listed with their instance, deleted only once unassigned.
#[tokio::test]
async fn floating_ips_are_elastic_ips_assigned_to_an_instances_port() {
    let c = Cloud::new().await;
    let (id, _) = create(&c, ADMIN, "fip-holder", json!({})).await;
    let interfaces =
        gcore(&c, Method::GET, &format!("{}/{id}/interfaces", base(&c, ADMIN, "v1").await), ADMIN, None).await;
    assert_eq!(interfaces.status, StatusCode::OK, "{}", interfaces.text);
    let port = interfaces.body["results"][0]["port_id"].as_str().unwrap().to_string();
    let fips = base(&c, ADMIN, "v1").await.replace("/instances/", "/floatingips/");

    let r = gcore(&c, Method::POST, &fips, ADMIN, Some(json!({"tags": {"env": "prod"}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let t = finished(&c, &r).await;
    let fip = t["created_resources"]["floatingips"][0].as_str().unwrap().to_string();
    let one = format!("{fips}/{fip}");
    let f = gcore(&c, Method::GET, &one, ADMIN, None).await.body;
    assert_eq!(
        (f["status"].as_str(), &f["port_id"], &f["fixed_ip_address"]),
        (Some("DOWN"), &Value::Null, &Value::Null)
    );
    assert_eq!(f["tags"], json!([{"key": "env", "value": "prod", "read_only": false}]));
    let address = f["floating_ip_address"].as_str().unwrap().to_string();
    assert!(address.starts_with("198.51.100."), "from the operator's pool: {address}");

    let r = gcore(&c, Method::POST, &format!("{one}/assign"), ADMIN, Some(json!({"port_id": port}))).await;
    assert_eq!(
        (r.status, r.body["status"].as_str(), r.body["port_id"].as_str()),
        (StatusCode::OK, Some("ACTIVE"), Some(port.as_str())),
        "{}",
        r.text
    );
    let native = c.get("/v1/instances", ADMIN).await.body["items"][0]["ip_addresses"][0].clone();
    assert_eq!(r.body["fixed_ip_address"], native);
    let listed = gcore(&c, Method::GET, &fips, ADMIN, None).await.body;
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["results"][0]["instance"]["id"], id.as_str(), "{listed}");
    // Deleting an assigned address is refused; unassigned, it goes back to the pool.
    let r = gcore(&c, Method::DELETE, &one, ADMIN, None).await;
    assert!(r.status.is_client_error(), "{}", r.text);
    let r = gcore(&c, Method::POST, &format!("{one}/unassign"), ADMIN, None).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("DOWN")), "{}", r.text);
    let r = gcore(&c, Method::DELETE, &one, ADMIN, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_gcore_error(&gcore(&c, Method::GET, &one, ADMIN, None).await, StatusCode::NOT_FOUND, "NotFoundError");

    // Made on a port, it is assigned at once; an unknown port makes nothing.
    let r =
        gcore(&c, Method::POST, &fips, ADMIN, Some(json!({"port_id": "00000000-0000-0000-0000-000000000000"}))).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    assert_eq!(gcore(&c, Method::GET, &fips, ADMIN, None).await.body["count"], 0);
    let r = gcore(&c, Method::POST, &fips, ADMIN, Some(json!({"port_id": port}))).await;
    let t = finished(&c, &r).await;
    let fip = t["created_resources"]["floatingips"][0].as_str().unwrap();
    let f = gcore(&c, Method::GET, &format!("{fips}/{fip}"), ADMIN, None).await.body;
    assert_eq!((f["status"].as_str(), f["port_id"].as_str()), (Some("ACTIVE"), Some(port.as_str())), "{f}");
}

/// The task list: offset and limit over the count of all that match, oldest or newest first, by state and
/// by task type.
#[tokio::test]
async fn the_task_list_pages_by_offset_with_filters() {
    let c = Cloud::new().await;
    let (id, create_task) = create(&c, ADMIN, "tasked", json!({})).await;
    let path = format!("{}/{id}/action", base(&c, ADMIN, "v2").await);
    let mut ids = vec![create_task];
    for action in ["stop", "start", "reboot_hard"] {
        let r = gcore(&c, Method::POST, &path, ADMIN, Some(json!({ "action": action }))).await;
        let t = task(&c, ADMIN, r.body["tasks"][0].as_str().unwrap()).await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let list = |query: &str| {
        let path = format!("/cloud/v1/tasks?{query}");
        let c = &c;
        async move {
            let r = gcore(c, Method::GET, &path, ADMIN, None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let ids: Vec<String> =
                r.body["results"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
            (r.body["count"].as_u64().unwrap(), ids)
        }
    };
    assert_eq!(list("limit=2").await, (4, ids[..2].to_vec()));
    assert_eq!(list("limit=2&offset=1&order_by=desc").await, (4, vec![ids[2].clone(), ids[1].clone()]));
    assert_eq!(list("state=FINISHED&offset=3").await, (4, vec![ids[3].clone()]));
    assert_eq!(list("state=ERROR").await, (0, vec![]));
    assert_eq!(list("task_type=hard_reboot_vm").await, (1, vec![ids[3].clone()]));
    assert_eq!(list("state=FINISHED&task_type=stop_vm&limit=5").await, (1, vec![ids[1].clone()]));
    assert_eq!(list("task_type=create_vm&offset=1").await, (1, vec![]));
    assert_eq!(list("task_type=no_such_task").await, (0, vec![]));
    assert_eq!(list("region_id=999").await, (0, vec![]));
    // The times are the store's filter: both bounds are included.
    let created = |n: usize| {
        let (c, path) = (&c, format!("/cloud/v1/tasks/{}", ids[n]));
        async move {
            let t = gcore(c, Method::GET, &path, ADMIN, None).await.body;
            form_urlencoded::byte_serialize(t["created_on"].as_str().unwrap().as_bytes()).collect::<String>()
        }
    };
    let (from, to) = (created(1).await, created(2).await);
    let between = list(&format!("from_timestamp={from}&to_timestamp={to}")).await;
    assert_eq!(between, (2, vec![ids[1].clone(), ids[2].clone()]), "{from} {to}");
    assert_eq!(list(&format!("from_timestamp={from}&task_type=hard_reboot_vm")).await, (1, vec![ids[3].clone()]));
    assert_eq!(list("to_timestamp=2000-01-01T00:00:00Z").await, (0, vec![]));
}

/// A reserved fixed IP is an address of the instance network held by the project: the instance made with it
/// (an interface `reserved_fixed_ip` naming its port) gets that address and shows the port as its NIC's;
/// no other create is given it, not while an instance holds it nor after; the instance's delete leaves it
/// reserved unless the delete names it; another project sees none of it.
#[tokio::test]
async fn a_reserved_fixed_ip_gives_its_address_to_the_instance_made_with_it_and_outlives_it() {
    let c = Cloud::new().await;
    let instances = base(&c, ADMIN, "v1").await;
    let reserved = instances.replace("/instances/", "/reserved_fixed_ips/");
    let r = gcore(&c, Method::POST, &reserved, ADMIN, Some(json!({"type": "external", "is_vip": false}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let t = finished(&c, &r).await;
    let port = t["created_resources"]["ports"][0].as_str().unwrap().to_string();
    let one = format!("{reserved}/{port}");
    let f = gcore(&c, Method::GET, &one, ADMIN, None).await.body;
    assert_eq!(
        (f["status"].as_str(), f["reservation"]["status"].as_str(), &f["attachments"], &f["is_external"]),
        (Some("DOWN"), Some("available"), &json!([]), &json!(true)),
        "{f}"
    );
    let address = f["fixed_ip_address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.213.0."), "an address of the instance network: {address}");

    // An instance made with it has its address, and its NIC is the reservation's port.
    let with_reservation = |name: &str| {
        json!({
            "name": name,
            "flavor": "standard.small",
            "interfaces": [{"type": "reserved_fixed_ip", "port_id": port}],
            "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
        })
    };
    // Two creates racing for it: one has it, the other is refused.
    let v2 = base(&c, ADMIN, "v2").await;
    let (a, b) = tokio::join!(
        gcore(&c, Method::POST, &v2, ADMIN, Some(with_reservation("reserved-1"))),
        gcore(&c, Method::POST, &v2, ADMIN, Some(with_reservation("reserved-1b"))),
    );
    let (r, refused) = if a.status == StatusCode::OK { (a, b) } else { (b, a) };
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_gcore_error(&refused, StatusCode::BAD_REQUEST, "BadRequestError");
    let op = c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await;
    let id = op["target"]["id"].as_str().unwrap().to_string();
    let native = c.get(&format!("/v1/instances/{id}"), ADMIN).await.body;
    assert_eq!(native["ip_addresses"], json!([address]), "{native}");
    let nics = gcore(&c, Method::GET, &format!("{instances}/{id}/interfaces"), ADMIN, None).await.body;
    assert_eq!(nics["results"][0]["port_id"], port.as_str(), "{nics}");
    let f = gcore(&c, Method::GET, &one, ADMIN, None).await.body;
    assert_eq!(
        (f["status"].as_str(), f["reservation"]["resource_id"].as_str()),
        (Some("ACTIVE"), Some(id.as_str())),
        "{f}"
    );
    assert_eq!(f["attachments"], json!([{"resource_id": id, "resource_type": "instance"}]));
    let listed = |query: &str| {
        let (c, path) = (&c, format!("{reserved}?{query}"));
        async move { gcore(c, Method::GET, &path, ADMIN, None).await.body["count"].as_u64().unwrap() }
    };
    assert_eq!(
        (listed("").await, listed("available_only=true").await, listed(&format!("device_id={id}")).await),
        (1, 0, 1)
    );

    // One holder at a time: a second create with it is refused and makes nothing; the reservation cannot
    // be deleted from under its instance (400s: Gcore keeps 409 for "locked by a task", which clients retry).
    let r = gcore(&c, Method::POST, &v2, ADMIN, Some(with_reservation("reserved-2"))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    assert_eq!(c.get("/v1/instances", ADMIN).await.body["items"].as_array().unwrap().len(), 1);
    let r = gcore(&c, Method::DELETE, &one, ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");

    // Deleted, the instance gives the address back to the reservation, not to the network.
    let r = gcore(&c, Method::DELETE, &format!("{instances}/{id}"), ADMIN, None).await;
    c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await;
    assert_eq!(gcore(&c, Method::GET, &one, ADMIN, None).await.body["reservation"]["status"], "available");
    for n in 0..3 {
        let (other, _) = create(&c, ADMIN, &format!("plain-{n}"), json!({})).await;
        let ip = c.get(&format!("/v1/instances/{other}"), ADMIN).await.body["ip_addresses"][0].clone();
        assert_ne!(ip, address.as_str(), "a plain create is never given a reserved address");
    }
    // Made again with it, and deleted naming it: the reservation goes too, and its address is free.
    let r = gcore(&c, Method::POST, &v2, ADMIN, Some(with_reservation("reserved-3"))).await;
    let op = c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await;
    let id = op["target"]["id"].as_str().unwrap().to_string();
    let r = gcore(&c, Method::DELETE, &format!("{instances}/{id}?reserved_fixed_ips=not-an-id"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    let r = gcore(&c, Method::DELETE, &format!("{instances}/{id}?reserved_fixed_ips={port}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await["state"], "success");
    assert_gcore_error(&gcore(&c, Method::GET, &one, ADMIN, None).await, StatusCode::NOT_FOUND, "NotFoundError");
    let network_id = f["network_id"].as_str().unwrap();
    let again = json!({"type": "ip_address", "network_id": network_id, "ip_address": address});
    let r = gcore(&c, Method::POST, &reserved, ADMIN, Some(again.clone())).await;
    let t = finished(&c, &r).await;
    let port = t["created_resources"]["ports"][0].as_str().unwrap().to_string();
    let f = gcore(&c, Method::GET, &format!("{reserved}/{port}"), ADMIN, None).await.body;
    assert_eq!(f["fixed_ip_address"], address.as_str(), "{f}");
    // That address is taken now.
    let r = gcore(&c, Method::POST, &reserved, ADMIN, Some(again)).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");

    // Refusals, which reserve nothing.
    let before = listed("").await;
    for body in [
        json!({"type": "external", "is_vip": "yes"}),
        json!({"type": "external", "ip_family": "ipv6"}),
        json!({"type": "subnet", "subnet_id": "00000000-0000-0000-0000-000000000001"}),
        json!({"type": "port"}),
        json!({"type": "ip_address", "network_id": network_id, "ip_address": "192.0.2.7"}),
        json!({"type": "floating"}),
        json!({}),
    ] {
        let r = gcore(&c, Method::POST, &reserved, ADMIN, Some(body.clone())).await;
        assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    }
    assert_eq!(listed("").await, before);
    let unknown = json!({
        "name": "nowhere",
        "flavor": "standard.small",
        "interfaces": [{"type": "reserved_fixed_ip", "port_id": "00000000-0000-0000-0000-000000000002"}],
        "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
    });
    assert_gcore_error(
        &gcore(&c, Method::POST, &v2, ADMIN, Some(unknown)).await,
        StatusCode::NOT_FOUND,
        "NotFoundError",
    );

    // Another project sees none of it and cannot make an instance with it.
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("member", Some(project.id().as_str())).await;
    let theirs = base(&c, &other, "v1").await.replace("/instances/", "/reserved_fixed_ips/");
    let r = gcore(&c, Method::GET, &format!("{theirs}/{port}"), &other, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    assert_eq!(gcore(&c, Method::GET, &theirs, &other, None).await.body["count"], 0);
    let r = gcore(&c, Method::POST, &base(&c, &other, "v2").await, &other, Some(with_reservation("stolen"))).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
}

/// An instance's own port reserved after the fact (`type: port`): the reservation is that port, names the
/// instance while it lives, and keeps its address when it goes, for the next instance made with it.
#[tokio::test]
async fn an_instances_port_reserved_after_the_fact_keeps_its_address_past_the_instance() {
    let c = Cloud::new().await;
    let instances = base(&c, ADMIN, "v1").await;
    let reserved = instances.replace("/instances/", "/reserved_fixed_ips/");
    let (id, _) = create(&c, ADMIN, "keeper", json!({})).await;
    let native = c.get(&format!("/v1/instances/{id}"), ADMIN).await.body;
    let address = native["ip_addresses"][0].as_str().unwrap().to_string();
    let nics = gcore(&c, Method::GET, &format!("{instances}/{id}/interfaces"), ADMIN, None).await.body;
    let port = nics["results"][0]["port_id"].as_str().unwrap().to_string();

    // Refused, reserving nothing: a VIP (held by no instance), a port nobody has, no port at all.
    let refused = [
        (json!({"type": "port", "port_id": port, "is_vip": true}), StatusCode::BAD_REQUEST, "ValidationError"),
        (
            json!({"type": "port", "port_id": "00000000-0000-0000-0000-000000000009"}),
            StatusCode::NOT_FOUND,
            "NotFoundError",
        ),
        (json!({"type": "port", "port_id": null}), StatusCode::BAD_REQUEST, "ValidationError"),
    ];
    for (body, status, kind) in refused {
        assert_gcore_error(&gcore(&c, Method::POST, &reserved, ADMIN, Some(body)).await, status, kind);
    }
    assert_eq!(gcore(&c, Method::GET, &reserved, ADMIN, None).await.body["count"], 0);

    let r = gcore(&c, Method::POST, &reserved, ADMIN, Some(json!({"type": "port", "port_id": port}))).await;
    let t = finished(&c, &r).await;
    assert_eq!(t["created_resources"]["ports"], json!([port]), "the reservation is the instance's port: {t}");
    let one = format!("{reserved}/{port}");
    let f = gcore(&c, Method::GET, &one, ADMIN, None).await.body;
    assert_eq!(
        (f["fixed_ip_address"].as_str(), f["status"].as_str(), f["reservation"]["resource_id"].as_str()),
        (Some(address.as_str()), Some("ACTIVE"), Some(id.as_str())),
        "{f}"
    );
    // Once is enough.
    let r = gcore(&c, Method::POST, &reserved, ADMIN, Some(json!({"type": "port", "port_id": port}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    assert_eq!(gcore(&c, Method::GET, &reserved, ADMIN, None).await.body["count"], 1);

    // The instance goes; its address stays with the reservation, and only an instance made with it gets it.
    let r = gcore(&c, Method::DELETE, &format!("{instances}/{id}"), ADMIN, None).await;
    c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await;
    let f = gcore(&c, Method::GET, &one, ADMIN, None).await.body;
    assert_eq!((f["fixed_ip_address"].as_str(), f["status"].as_str()), (Some(address.as_str()), Some("DOWN")), "{f}");
    for n in 0..3 {
        let (other, _) = create(&c, ADMIN, &format!("plain-{n}"), json!({})).await;
        let ip = c.get(&format!("/v1/instances/{other}"), ADMIN).await.body["ip_addresses"][0].clone();
        assert_ne!(ip, address.as_str(), "a plain create is never given a reserved address");
    }
    let body = json!({
        "name": "heir",
        "flavor": "standard.small",
        "interfaces": [{"type": "reserved_fixed_ip", "port_id": port}],
        "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
    });
    let r = gcore(&c, Method::POST, &base(&c, ADMIN, "v2").await, ADMIN, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let op = c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await;
    let heir = op["target"]["id"].as_str().unwrap();
    assert_eq!(c.get(&format!("/v1/instances/{heir}"), ADMIN).await.body["ip_addresses"], json!([address]));
}

/// A reserved fixed IP of a private network's subnet (`any_subnet`, `subnet`, `ip_address` naming the
/// network): no attach is given its address but the one made with it, at the instance's create (an
/// interface `reserved_fixed_ip`) or later (`attach_interface`); the interface shows the reservation as its
/// port; detached, the instance gives it back to the reservation; the network is not deleted from under it.
#[tokio::test]
async fn a_private_networks_reserved_fixed_ip_is_leased_only_through_it() {
    let c = Cloud::new().await;
    let instances = base(&c, ADMIN, "v1").await;
    let reserved = instances.replace("/instances/", "/reserved_fixed_ips/");
    let networks = network_base(&c, ADMIN, "networks").await;
    let r = gcore(&c, Method::POST, &networks, ADMIN, Some(json!({"name": "back"}))).await;
    let net = finished(&c, &r).await["created_resources"]["networks"][0].as_str().unwrap().to_string();
    let subnet = json!({"name": "s", "network_id": net, "cidr": "10.9.0.0/29", "gateway_ip": "10.9.0.6"});
    let r = gcore(&c, Method::POST, &network_base(&c, ADMIN, "subnets").await, ADMIN, Some(subnet)).await;
    let subnet_id = finished(&c, &r).await["created_resources"]["subnets"][0].as_str().unwrap().to_string();
    let reserve = |body: Value| {
        let (c, path) = (&c, reserved.clone());
        async move {
            let r = gcore(c, Method::POST, &path, ADMIN, Some(body)).await;
            let t = finished(c, &r).await;
            let port = t["created_resources"]["ports"][0].as_str().unwrap().to_string();
            gcore(c, Method::GET, &format!("{path}/{port}"), ADMIN, None).await.body
        }
    };
    let first = reserve(json!({"type": "any_subnet", "network_id": net})).await;
    assert_eq!(
        (first["fixed_ip_address"].as_str(), first["network_id"].as_str(), first["subnet_id"].as_str()),
        (Some("10.9.0.1"), Some(net.as_str()), Some(subnet_id.as_str())),
        "{first}"
    );
    assert_eq!((&first["is_external"], &first["network"]["name"]), (&json!(false), &json!("back")), "{first}");
    let port = first["port_id"].as_str().unwrap().to_string();
    let third = reserve(json!({"type": "ip_address", "network_id": net, "ip_address": "10.9.0.3"})).await;
    let by_subnet = reserve(json!({"type": "subnet", "subnet_id": subnet_id})).await;
    assert_eq!(by_subnet["fixed_ip_address"], "10.9.0.2", "{by_subnet}");
    let taken = json!({"type": "ip_address", "network_id": net, "ip_address": "10.9.0.3"});
    assert_gcore_error(
        &gcore(&c, Method::POST, &reserved, ADMIN, Some(taken)).await,
        StatusCode::BAD_REQUEST,
        "BadRequestError",
    );
    let r =
        gcore(&c, Method::DELETE, &format!("{reserved}/{}", by_subnet["port_id"].as_str().unwrap()), ADMIN, None).await;
    finished(&c, &r).await;
    let count = |query: &'static str| {
        let (c, path) = (&c, format!("{reserved}?{query}"));
        async move { gcore(c, Method::GET, &path, ADMIN, None).await.body["count"].as_u64().unwrap() }
    };
    assert_eq!((count("internal_only=true").await, count("external_only=true").await), (2, 0));
    let native = c.get("/v1/reserved-addresses", ADMIN).await.body;
    assert_eq!(native["items"][0]["network_id"], net.as_str(), "{native}");

    // Made with it: the instance has the reservation's address on the network, on the reservation's port.
    let body = json!({
        "name": "held",
        "flavor": "standard.small",
        "interfaces": [{"type": "external"}, {"type": "reserved_fixed_ip", "port_id": port, "interface_name": "eth9"}],
        "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
    });
    let r = gcore(&c, Method::POST, &base(&c, ADMIN, "v2").await, ADMIN, Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await["target"]["id"].as_str().unwrap().to_string();
    let nics = gcore(&c, Method::GET, &format!("{instances}/{id}/interfaces"), ADMIN, None).await.body;
    let nic = nics["results"].as_array().unwrap().iter().find(|n| n["network_id"] == net.as_str()).cloned().unwrap();
    assert_eq!(
        (nic["port_id"].as_str(), nic["ip_assignments"][0]["ip_address"].as_str(), nic["interface_name"].as_str()),
        (Some(port.as_str()), Some("10.9.0.1"), Some("eth9")),
        "{nics}"
    );
    let f = gcore(&c, Method::GET, &format!("{reserved}/{port}"), ADMIN, None).await.body;
    assert_eq!((f["status"].as_str(), f["reservation"]["resource_id"].as_str()), (Some("ACTIVE"), Some(id.as_str())));
    let r = gcore(&c, Method::POST, &base(&c, ADMIN, "v2").await, ADMIN, Some(body)).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");

    // Plain attaches skip the held addresses: .2, then .4 (.1 and .3 are held).
    let attach = |id: &str, body: Value| {
        let (c, path) = (&c, format!("{instances}/{id}/attach_interface"));
        async move { gcore(c, Method::POST, &path, ADMIN, Some(body)).await }
    };
    let mut plain = Vec::new();
    for name in ["plain-a", "plain-b"] {
        let (other, _) = create(&c, ADMIN, name, json!({})).await;
        finished(&c, &attach(&other, json!({"type": "any_subnet", "network_id": net})).await).await;
        let nics = gcore(&c, Method::GET, &format!("{instances}/{other}/interfaces"), ADMIN, None).await.body;
        plain.push(nics["results"][1]["ip_assignments"][0]["ip_address"].as_str().unwrap().to_string());
    }
    assert_eq!(plain, ["10.9.0.2", "10.9.0.4"]);
    let subnet = format!("{}/{subnet_id}", network_base(&c, ADMIN, "subnets").await);
    let subnet = gcore(&c, Method::GET, &subnet, ADMIN, None).await.body;
    assert_eq!(subnet["available_ips"], 1, "5 addresses: 3 leased, .3 reserved: {subnet}");

    // Held: not deleted; its network neither. Detached, the instance gives it back to the reservation.
    let one = format!("{reserved}/{port}");
    assert_gcore_error(&gcore(&c, Method::DELETE, &one, ADMIN, None).await, StatusCode::BAD_REQUEST, "BadRequestError");
    let r = gcore(&c, Method::DELETE, &format!("{networks}/{net}"), ADMIN, None).await;
    assert!(r.status.is_client_error(), "{}", r.text);
    let detach = json!({"port_id": port, "ip_address": "10.9.0.1"});
    let r = gcore(&c, Method::POST, &format!("{instances}/{id}/detach_interface"), ADMIN, Some(detach)).await;
    finished(&c, &r).await;
    assert_eq!(gcore(&c, Method::GET, &one, ADMIN, None).await.body["reservation"]["status"], "available");
    // Attached with a reservation after the create.
    let third_port = third["port_id"].as_str().unwrap();
    let r = attach(&id, json!({"type": "reserved_fixed_ip", "port_id": third_port})).await;
    assert_eq!(finished(&c, &r).await["created_resources"]["ports"][0], third_port);
    let nics = gcore(&c, Method::GET, &format!("{instances}/{id}/interfaces"), ADMIN, None).await.body;
    assert_eq!(nics["results"][1]["ip_assignments"][0]["ip_address"], "10.9.0.3", "{nics}");
    let r = gcore(&c, Method::DELETE, &one, ADMIN, None).await;
    finished(&c, &r).await;
    let r = attach(&id, json!({"type": "reserved_fixed_ip", "port_id": port})).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    // Deleted with its instance: the reservation goes, and its address is the network's again.
    let r = gcore(&c, Method::DELETE, &format!("{instances}/{id}?reserved_fixed_ips={third_port}"), ADMIN, None).await;
    assert_eq!(c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await["state"], "success");
    let r = gcore(&c, Method::GET, &format!("{reserved}/{third_port}"), ADMIN, None).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let again = reserve(json!({"type": "ip_address", "network_id": net, "ip_address": "10.9.0.3"})).await;
    assert_eq!(again["fixed_ip_address"], "10.9.0.3", "{again}");
}

/// A VIP is a reserved fixed IP held by no instance and shared by the instances connected to it: their
/// ports allow its address (`allowed_address_pairs`), on the instance network and on a private network
/// alike; candidates are the ports of its network not yet connected; it is never an instance's own address.
#[tokio::test]
async fn a_vip_is_shared_by_the_ports_connected_to_it() {
    let c = Cloud::new().await;
    let instances = base(&c, ADMIN, "v1").await;
    let reserved = instances.replace("/instances/", "/reserved_fixed_ips/");
    let call = |method: Method, path: String, body: Option<Value>| {
        let c = &c;
        async move { gcore(c, method, &path, ADMIN, body).await }
    };
    let r = call(Method::POST, reserved.clone(), Some(json!({"type": "external", "is_vip": true}))).await;
    let vip = finished(&c, &r).await["created_resources"]["ports"][0].as_str().unwrap().to_string();
    let one = format!("{reserved}/{vip}");
    let shown = call(Method::GET, one.clone(), None).await.body;
    assert_eq!((&shown["is_vip"], &shown["status"]), (&json!(true), &json!("DOWN")), "{shown}");
    let address = shown["fixed_ip_address"].as_str().unwrap().to_string();
    let (a, _) = create(&c, ADMIN, "keepalived-a", json!({})).await;
    let (b, _) = create(&c, ADMIN, "keepalived-b", json!({})).await;
    let port = |id: &str| {
        let path = format!("{instances}/{id}/interfaces");
        let c = &c;
        async move { gcore(c, Method::GET, &path, ADMIN, None).await.body["results"][0].clone() }
    };
    let (port_a, port_b) = (port(&a).await["port_id"].clone(), port(&b).await["port_id"].clone());
    let ports_of = |list: &Value| -> Vec<Value> {
        list["results"].as_array().unwrap().iter().map(|p| p["port_id"].clone()).collect()
    };

    let available = call(Method::GET, format!("{one}/available_devices"), None).await.body;
    assert_eq!((available["count"].as_u64(), ports_of(&available).len()), (Some(2), 2), "{available}");
    assert_eq!(available["results"][0]["ip_assignments"][0]["subnet"]["cidr"], "10.213.0.0/24", "{available}");
    let devices = format!("{one}/connected_devices");
    let r = call(Method::PUT, devices.clone(), Some(json!({"port_ids": [port_a]}))).await;
    assert_eq!((r.status, ports_of(&r.body)), (StatusCode::OK, vec![port_a.clone()]), "{}", r.text);
    let r = call(Method::PATCH, devices.clone(), Some(json!({"port_ids": [port_b]}))).await;
    assert_eq!(r.body["count"], 2, "{}", r.text);
    let connected = call(Method::GET, devices.clone(), None).await.body;
    assert_eq!(connected["results"][0]["instance_name"], "keepalived-a", "{connected}");
    assert_eq!(port(&a).await["allowed_address_pairs"], json!([{"ip_address": address, "mac_address": null}]));
    assert_eq!(call(Method::GET, format!("{one}/available_devices"), None).await.body["count"], 0);
    let listed = call(Method::GET, format!("{reserved}?vip_only=true"), None).await.body;
    assert_eq!(listed["count"], 1, "{listed}");

    // Refusals, which change nothing: another port, a VIP that stops being one while shared, a VIP as an
    // instance's own address.
    let r = call(Method::PATCH, devices.clone(), Some(json!({"port_ids": [Uuid::nil()]}))).await;
    assert_gcore_error(&r, StatusCode::NOT_FOUND, "NotFoundError");
    let r = call(Method::PATCH, one.clone(), Some(json!({"is_vip": false}))).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");
    let with_vip = json!({
        "name": "owner",
        "flavor": "standard.small",
        "interfaces": [{"type": "reserved_fixed_ip", "port_id": vip}],
        "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
    });
    let r = call(Method::POST, base(&c, ADMIN, "v2").await, Some(with_vip)).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "ValidationError");
    assert_eq!(call(Method::GET, devices.clone(), None).await.body["count"], 2);

    // A deleted instance shares it no more; with none connected it can stop being a VIP.
    let r = call(Method::DELETE, format!("{instances}/{b}"), None).await;
    c.wait(r.body["tasks"][0].as_str().unwrap(), ADMIN).await;
    assert_eq!(ports_of(&call(Method::GET, devices.clone(), None).await.body), vec![port_a.clone()]);
    call(Method::PUT, devices.clone(), Some(json!({"port_ids": []}))).await;
    assert_eq!(port(&a).await["allowed_address_pairs"], json!([]));
    let r = call(Method::PATCH, one.clone(), Some(json!({"is_vip": false}))).await;
    assert_eq!((r.status, &r.body["is_vip"]), (StatusCode::OK, &json!(false)), "{}", r.text);
    let r = call(Method::GET, devices.clone(), None).await;
    assert_gcore_error(&r, StatusCode::BAD_REQUEST, "BadRequestError");

    // On a private network: the ports are the network's leases.
    let networks = network_base(&c, ADMIN, "networks").await;
    let r = call(Method::POST, networks, Some(json!({"name": "back"}))).await;
    let net = finished(&c, &r).await["created_resources"]["networks"][0].as_str().unwrap().to_string();
    let subnet = json!({"name": "s", "network_id": net, "cidr": "10.9.0.0/29"});
    finished(&c, &call(Method::POST, network_base(&c, ADMIN, "subnets").await, Some(subnet)).await).await;
    let r =
        call(Method::POST, reserved.clone(), Some(json!({"type": "any_subnet", "network_id": net, "is_vip": true})))
            .await;
    let private_vip = finished(&c, &r).await["created_resources"]["ports"][0].as_str().unwrap().to_string();
    let private = format!("{reserved}/{private_vip}");
    assert_eq!(call(Method::GET, format!("{private}/available_devices"), None).await.body["count"], 0);
    let attach = json!({"type": "any_subnet", "network_id": net});
    finished(&c, &call(Method::POST, format!("{instances}/{a}/attach_interface"), Some(attach)).await).await;
    let available = call(Method::GET, format!("{private}/available_devices"), None).await.body;
    let lease_port = available["results"][0]["port_id"].clone();
    assert_eq!(available["results"][0]["network"]["id"], net.as_str(), "{available}");
    let r = call(Method::PUT, format!("{private}/connected_devices"), Some(json!({"port_ids": [lease_port]}))).await;
    assert_eq!(r.body["count"], 1, "{}", r.text);
    let nics = call(Method::GET, format!("{instances}/{a}/interfaces"), None).await.body;
    let vip_ip = call(Method::GET, private.clone(), None).await.body["fixed_ip_address"].clone();
    assert_eq!(nics["results"][1]["allowed_address_pairs"][0]["ip_address"], vip_ip, "{nics}");
    assert_eq!(nics["results"][0]["allowed_address_pairs"], json!([]), "{nics}");
}

/// A reserved fixed IP deleted while an instance is being made with it: one of the two wins, never both
/// (both winning would leave an instance on an address nothing holds, for the next create to be given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_is_never_deleted_from_under_the_create_taking_it() {
    let c = Cloud::new().await;
    let reserved = base(&c, ADMIN, "v1").await.replace("/instances/", "/reserved_fixed_ips/");
    let v2 = base(&c, ADMIN, "v2").await;
    let mut outcomes = std::collections::BTreeMap::new();
    for n in 0..30 {
        let r = gcore(&c, Method::POST, &reserved, ADMIN, Some(json!({"type": "external"}))).await;
        let port = finished(&c, &r).await["created_resources"]["ports"][0].as_str().unwrap().to_string();
        let body = json!({
            "name": format!("racer-{n}"),
            "flavor": "standard.small",
            "interfaces": [{"type": "reserved_fixed_ip", "port_id": port}],
            "volumes": [{"source": "image", "image_id": "busybox", "boot_index": 0}],
        });
        let one = format!("{reserved}/{port}");
        let (created, deleted) = tokio::join!(
            gcore(&c, Method::POST, &v2, ADMIN, Some(body)),
            gcore(&c, Method::DELETE, &one, ADMIN, None),
        );
        let (created, deleted) = (created.status == StatusCode::OK, deleted.status == StatusCode::OK);
        assert!(created != deleted, "round {n}: the create {created}, the delete {deleted}");
        if created {
            let held = gcore(&c, Method::GET, &format!("{reserved}/{port}"), ADMIN, None).await;
            assert_eq!(held.status, StatusCode::OK, "round {n}: {}", held.text);
        }
        *outcomes.entry(created).or_insert(0) += 1;
    }
    println!("create won {:?} rounds, delete won {:?}", outcomes.get(&true), outcomes.get(&false));
}
