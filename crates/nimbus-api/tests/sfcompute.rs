//! The SF Compute dialect through HTTP on the real router, engine and SQLite store (sim driver): the batch
//! PATCH of seed 000 and the instance endpoints around it, seen side by side with the native API.

#[path = "api/common.rs"]
mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{eventually, Cloud, Reply, ADMIN};
use nimbus_driver::SimConfig;
use nimbus_engine::EngineConfig;
use serde_json::{json, Value};

const BASE: &str = "/preview/v2/instances";

async fn patch(c: &Cloud, path: &str, token: &str, body: Value) -> Reply {
    c.call(Method::PATCH, path, token, Some(body)).await
}

/// The SF id (`inst_…`) of the caller's instance named `name`, as the SF list shows it.
async fn sf_id(c: &Cloud, token: &str, name: &str) -> String {
    let r = c.get(&format!("{BASE}?limit=200"), token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let found = r.body["data"].as_array().unwrap().iter().find(|i| i["name"] == name);
    found.unwrap_or_else(|| panic!("{name} not listed: {}", r.text))["id"].as_str().unwrap().to_string()
}

async fn native_labels(c: &Cloud, token: &str, id: &str) -> Value {
    c.get(&format!("/v1/instances/{id}"), token).await.body["labels"].clone()
}

/// A member key in a second project of the same organization.
async fn other_project_key(c: &Cloud) -> String {
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    assert_eq!(project.status, StatusCode::CREATED, "{}", project.text);
    c.key("member", Some(project.id().as_str())).await
}

fn assert_error(r: &Reply, status: StatusCode, kind: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["error"]["type"], kind, "{}", r.text);
    assert!(r.body["error"]["message"].is_string(), "{}", r.text);
}

fn is_sf_id(v: &Value, prefix: &str) -> bool {
    v.as_str().and_then(|s| s.strip_prefix(prefix)).is_some_and(|rest| {
        rest.len() == 21 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Every field of the seed's example, with its type.
fn assert_seed_shape(i: &Value) {
    let text = i.to_string();
    assert!(is_sf_id(&i["id"], "inst_"), "{text}");
    assert_eq!(i["object"], "instance", "{text}");
    let path = format!("sfc:instance:{}:{}:{}", i["owner"].as_str().unwrap(), i["workspace"].as_str().unwrap(), {
        i["name"].as_str().unwrap()
    });
    assert_eq!(i["resource_path"], json!(path), "{text}");
    assert!(is_sf_id(&i["workspace_id"], "wksp_"), "{text}");
    assert!(is_sf_id(&i["capacity"]["id"], "cap_"), "{text}");
    assert!(i["capacity"]["name"].is_string(), "{text}");
    assert!(is_sf_id(&i["pool"]["id"], "pool_"), "{text}");
    assert!(i["pool"]["name"].is_string(), "{text}");
    assert!(i["created_at"].is_i64(), "{text}");
    assert!(i["updated_at"].is_i64(), "{text}");
    assert!(is_sf_id(&i["image"]["id"], "image_"), "{text}");
    assert!(i["image"]["name"].is_string(), "{text}");
    assert!(i["cloud_init_user_data_used"].is_boolean(), "{text}");
    assert_eq!(i["instance_sku"]["object"], "instance_sku", "{text}");
    assert!(is_sf_id(&i["instance_sku"]["id"], "isku_"), "{text}");
    assert!(i["instance_sku"]["alias"].is_string(), "{text}");
    let d = &i["deployment"];
    assert!(d.is_null() || (d["id"].is_string() && d["name"].is_string()), "{text}");
    let obj = i.as_object().unwrap();
    assert!(obj.contains_key("deployment"), "{text}");
    assert!(obj.contains_key("cloud_init_user_data"), "{text}");
    let ud = &i["cloud_init_user_data"];
    assert!(ud.is_null() || ud.is_string(), "{text}");
    assert!(i["tags"].is_object(), "{text}");
    assert!(obj.contains_key("expected_shutdown_at"), "{text}");
    assert!(i["expected_shutdown_at"].is_null() || i["expected_shutdown_at"].is_i64(), "{text}");
    assert!(i["status"].is_string(), "{text}");
}

#[tokio::test]
async fn the_seed_example_an_id_only_entry_returns_the_full_instance() {
    let c = Cloud::new().await;
    let user_data = "IyEvYmluL2Jhc2gKZWNobyBoZWxsbyB3b3JsZAo=";
    let native =
        c.instance(ADMIN, "seed", json!({"labels": {"env": "prod", "team": "infra"}, "user_data": user_data})).await;
    let id = sf_id(&c, ADMIN, "seed").await;

    let r = patch(&c, BASE, ADMIN, json!({"data": [{"id": id}]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["object"], "list");
    let obj = r.body.as_object().unwrap();
    assert!(!obj.contains_key("cursor") && !obj.contains_key("has_more"), "a batch has no pagination: {}", r.text);
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    let i = &data[0];
    assert_seed_shape(i);
    assert_eq!(i["id"], json!(id));
    assert_eq!(i["name"], "seed");
    assert_eq!(i["owner"], "default");
    assert_eq!(i["workspace"], "default");
    assert_eq!(i["tags"], json!({"env": "prod", "team": "infra"}));
    assert_eq!(i["cloud_init_user_data"], user_data);
    assert_eq!(i["cloud_init_user_data_used"], true);
    assert_eq!(i["image"]["name"], "busybox");
    assert_eq!(i["instance_sku"]["alias"], "standard.small");
    assert_eq!(i["status"], "running");
    assert_eq!(i["expected_shutdown_at"], Value::Null);

    // Ids are stable aliases: the same on every read, through either mount, by id or by resource path.
    let again = c.get(&format!("/v2/instances/{id}"), ADMIN).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body, *i);
    let by_path = c.get(&format!("{BASE}/{}", i["resource_path"].as_str().unwrap()), ADMIN).await;
    assert_eq!(by_path.body["id"], json!(id), "{}", by_path.text);
    let legacy = c.get(&format!("{BASE}/vm_{}", &id["inst_".len()..]), ADMIN).await;
    assert_eq!(legacy.body["id"], json!(id), "{}", legacy.text);
    // The id-only entry changed nothing.
    assert_eq!(native_labels(&c, ADMIN, &native).await, json!({"env": "prod", "team": "infra"}));
}

#[tokio::test]
async fn one_bad_entry_among_good_ones_changes_nothing() {
    let c = Cloud::new().await;
    let (a, b) = (c.instance(ADMIN, "a", json!({})).await, c.instance(ADMIN, "b", json!({})).await);
    let (sa, sb) = (sf_id(&c, ADMIN, "a").await, sf_id(&c, ADMIN, "b").await);
    // The bad entries name a third instance: a later good entry for the same id would win over them.
    c.instance(ADMIN, "c", json!({})).await;
    let sc = sf_id(&c, ADMIN, "c").await;
    let other = other_project_key(&c).await;
    c.instance(&other, "theirs", json!({})).await;
    let theirs = sf_id(&c, &other, "theirs").await;

    let bad_entries = [
        // Another project's instance is an unknown id here; the engine finds out inside the batch.
        json!({"id": theirs, "tags": {"x": "1"}}),
        json!({"id": "inst_doesNotExist1234567", "tags": {"x": "1"}}),
        json!({"id": "not-an-id"}),
        json!({"tags": {"x": "1"}}),
        // Valid for SF's tag pattern, not a label key Nimbus takes: refused by the engine inside the transaction.
        json!({"id": sc, "tags": {"a!b": "1"}}),
        json!({"id": sc, "tags": {"_reserved": "1"}}),
        json!({"id": sc, "tags": {"k": "a=b"}}),
        json!({"id": sc, "expected_shutdown_at": "tomorrow"}),
        json!({"id": sc, "colour": "blue"}),
    ];
    for bad in bad_entries {
        let body = json!({"data": [
            {"id": sa, "tags": {"changed": "yes"}, "name": "a-renamed"},
            bad,
            {"id": sb, "tags": {"changed": "yes"}},
        ]});
        let r = patch(&c, BASE, ADMIN, body).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity");
        assert!(r.body["error"]["details"].as_array().is_some_and(|d| !d.is_empty()), "{}", r.text);
        for id in [&a, &b] {
            assert_eq!(native_labels(&c, ADMIN, id).await, json!({}), "after {bad}");
        }
        assert_eq!(c.get(&format!("/v1/instances/{a}"), ADMIN).await.body["name"], "a");
    }
    let r = c.get(&format!("{BASE}/{theirs}"), &other).await;
    assert_eq!(r.body["tags"], json!({}), "{}", r.text);

    // The same batch without the bad entry goes through.
    let r = patch(
        &c,
        BASE,
        ADMIN,
        json!({"data": [{"id": sa, "tags": {"changed": "yes"}}, {"id": sb, "tags": {"changed": "yes"}}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(native_labels(&c, ADMIN, &b).await, json!({"changed": "yes"}));

    // A body without `data`, or not JSON at all, is a bad request rather than a bad entry.
    assert_error(&patch(&c, BASE, ADMIN, json!({"items": []})).await, StatusCode::BAD_REQUEST, "invalid_request_error");
    let raw = Request::builder()
        .method(Method::PATCH)
        .uri(BASE)
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    assert_error(&c.send(raw).await, StatusCode::BAD_REQUEST, "invalid_request_error");
    // Over the entry cap.
    let many: Vec<Value> = (0..101).map(|_| json!({"id": sa})).collect();
    assert_error(
        &patch(&c, BASE, ADMIN, json!({"data": many})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable_entity",
    );
}

#[tokio::test]
async fn duplicates_last_one_wins_and_the_response_mirrors_unique_ids_in_first_seen_order() {
    let c = Cloud::new().await;
    let mut native = Vec::new();
    for name in ["one", "two", "three"] {
        native.push(c.instance(ADMIN, name, json!({})).await);
    }
    let (one, two, three) =
        (sf_id(&c, ADMIN, "one").await, sf_id(&c, ADMIN, "two").await, sf_id(&c, ADMIN, "three").await);
    let body = json!({"data": [
        {"id": three, "tags": {"pass": "first"}},
        {"id": one, "tags": {"pass": "first"}},
        {"id": three, "tags": {"pass": "second"}},
        {"id": two},
        {"id": three, "tags": {"pass": "third"}, "priority_level": "critical"},
    ]});
    let r = patch(&c, "/v2/instances", ADMIN, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let data = r.body["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [three.as_str(), one.as_str(), two.as_str()]);
    for i in data {
        assert_seed_shape(i);
    }
    assert_eq!(data[0]["tags"], json!({"pass": "third"}));
    assert_eq!(data[0]["priority_level"], "critical");
    assert_eq!(data[1]["tags"], json!({"pass": "first"}));
    assert_eq!(data[2]["tags"], json!({}));
    // The response is the post-write state, and the native API sees the same.
    assert_eq!(native_labels(&c, ADMIN, &native[2]).await, json!({"pass": "third"}));
    assert_eq!(native_labels(&c, ADMIN, &native[0]).await, json!({"pass": "first"}));
}

#[tokio::test]
async fn expected_shutdown_at_moved_by_the_batch_really_stops_the_instance() {
    let config = EngineConfig { reconcile_every: Duration::from_millis(100), ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    let native = c.instance(ADMIN, "job", json!({})).await;
    let id = sf_id(&c, ADMIN, "job").await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    // Far away first: nothing happens.
    let r = patch(&c, BASE, ADMIN, json!({"data": [{"id": id, "expected_shutdown_at": now + 3600}]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["data"][0]["expected_shutdown_at"], json!(now + 3600));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.state(ADMIN, &native).await, "running");

    // Moved to a moment from now: the engine stops it then, as an operation of its own.
    let due = time::OffsetDateTime::now_utc().unix_timestamp() + 2;
    let r = patch(&c, BASE, ADMIN, json!({"data": [{"id": id, "expected_shutdown_at": due}]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(c.state(ADMIN, &native).await, "running", "not before it is due");
    eventually("the scheduled stop", || async { c.state(ADMIN, &native).await == "stopped" }).await;
    assert!(time::OffsetDateTime::now_utc().unix_timestamp() >= due);
    let ops = c.get(&format!("/v1/operations?target={native}"), ADMIN).await;
    assert!(
        ops.body["items"].as_array().unwrap().iter().any(|o| o["kind"] == "scheduled_stop" && o["state"] == "success"),
        "{}",
        ops.text
    );
    let r = c.get(&format!("{BASE}/{id}"), ADMIN).await;
    // SF has no stopped instance: its shutdown time reached, it is terminated.
    assert_eq!(r.body["status"], "terminated", "{}", r.text);
    assert_eq!(r.body["expected_shutdown_at"], Value::Null, "{}", r.text);

    // Cleared through the singleton PATCH: a started instance then keeps running.
    c.act(ADMIN, &native, "start", None).await;
    let soon = time::OffsetDateTime::now_utc().unix_timestamp() + 2;
    let r = patch(&c, &format!("{BASE}/{id}"), ADMIN, json!({"expected_shutdown_at": soon})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = patch(&c, &format!("{BASE}/{id}"), ADMIN, json!({"expected_shutdown_at": null})).await;
    assert_eq!(r.body["expected_shutdown_at"], Value::Null, "{}", r.text);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.state(ADMIN, &native).await, "running");
}

#[tokio::test]
async fn without_a_valid_token_the_answer_is_401() {
    let c = Cloud::new().await;
    let id = {
        c.instance(ADMIN, "x", json!({})).await;
        sf_id(&c, ADMIN, "x").await
    };
    let no_token = Request::builder().uri(BASE).body(Body::empty()).unwrap();
    let r = c.send(no_token).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "authentication_error");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert!(r.body["error"].get("details").is_none(), "{}", r.text);
    assert_error(&c.get(BASE, "wrong-secret").await, StatusCode::UNAUTHORIZED, "authentication_error");
    let r = patch(&c, BASE, "wrong-secret", json!({"data": [{"id": id, "tags": {"a": "b"}}]})).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "authentication_error");
    assert_error(&c.get(&format!("{BASE}/{id}"), "").await, StatusCode::UNAUTHORIZED, "authentication_error");
}

#[tokio::test]
async fn another_projects_instance_is_404() {
    let c = Cloud::new().await;
    let other = other_project_key(&c).await;
    c.instance(&other, "theirs", json!({})).await;
    let theirs = sf_id(&c, &other, "theirs").await;
    assert_eq!(c.get(&format!("{BASE}/{theirs}"), &other).await.status, StatusCode::OK);

    assert_error(&c.get(&format!("{BASE}/{theirs}"), ADMIN).await, StatusCode::NOT_FOUND, "not_found");
    let r = patch(&c, &format!("{BASE}/{theirs}"), ADMIN, json!({"tags": {"stolen": "yes"}})).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    assert_error(&c.get(&format!("{BASE}/inst_unknownUnknown12345"), ADMIN).await, StatusCode::NOT_FOUND, "not_found");
    // Their instance is not in our list, and their workspace is another one.
    let ours = c.get(BASE, ADMIN).await;
    assert_eq!(ours.body["data"], json!([]), "{}", ours.text);
    let theirs_view = c.get(&format!("{BASE}/{theirs}"), &other).await;
    assert_eq!(theirs_view.body["workspace"], "other");
    assert_eq!(theirs_view.body["tags"], json!({}));
}

#[tokio::test]
async fn the_list_pages_with_limit_starting_after_and_has_more() {
    let c = Cloud::new().await;
    for n in 0..5 {
        c.instance(ADMIN, &format!("p{n}"), json!({"labels": {"parity": if n % 2 == 0 { "even" } else { "odd" }}}))
            .await;
    }
    let mut seen = Vec::new();
    let mut url = format!("{BASE}?limit=2");
    let mut pages = 0;
    loop {
        let r = c.get(&url, ADMIN).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["object"], "list");
        let data = r.body["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        for i in data {
            assert_seed_shape_listed(i);
            seen.push(i["name"].as_str().unwrap().to_string());
        }
        pages += 1;
        let cursor = r.body["cursor"].as_str().unwrap();
        assert!(cursor.starts_with("nodec_"), "{cursor}");
        if !r.body["has_more"].as_bool().unwrap() {
            break;
        }
        url = format!("{BASE}?limit=2&starting_after={cursor}");
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);

    let r = c.get(&format!("{BASE}?tag=parity%3Deven&include=cloud_init_user_data"), ADMIN).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 3, "{}", r.text);
    assert!(r.body["data"][0].as_object().unwrap().contains_key("cloud_init_user_data"));
    assert_eq!(r.body["has_more"], false);

    for bad in ["limit=0", "limit=201", "limit=many", "starting_after=nodec_bogus!", "starting_after=abc"] {
        let r = c.get(&format!("{BASE}?{bad}"), ADMIN).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request_error");
        assert!(r.body["error"]["details"][0]["field"].is_string(), "{}", r.text);
    }
    assert_error(&c.get(&format!("{BASE}?workspace=wksp_nope"), ADMIN).await, StatusCode::NOT_FOUND, "not_found");
    let wksp = c.get(BASE, ADMIN).await.body["data"][0]["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(c.get(&format!("{BASE}?workspace={wksp}"), ADMIN).await.status, StatusCode::OK);
}

/// A list item: the seed's fields, except that user-data is only there when asked for.
fn assert_seed_shape_listed(i: &Value) {
    assert!(i.get("cloud_init_user_data").is_none(), "{i}");
    let mut full = i.clone();
    full["cloud_init_user_data"] = Value::Null;
    assert_seed_shape(&full);
}

#[tokio::test]
async fn native_and_sf_see_the_same_instances() {
    let c = Cloud::new().await;
    // Created natively, changed here, seen natively.
    let native = c.instance(ADMIN, "shared", json!({"labels": {"keep": "1", "drop": "1"}})).await;
    let id = sf_id(&c, ADMIN, "shared").await;
    // SF's PATCH replaces the tags: the ones left out are gone.
    let r =
        patch(&c, &format!("{BASE}/{id}"), ADMIN, json!({"tags": {"keep": "1", "new": "2"}, "name": "shared-2"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["tags"], json!({"keep": "1", "new": "2"}));
    assert_eq!(r.body["resource_path"], "sfc:instance:default:default:shared-2");
    let n = c.get(&format!("/v1/instances/{native}"), ADMIN).await;
    assert_eq!(n.body["labels"], json!({"keep": "1", "new": "2"}));
    assert_eq!(n.body["name"], "shared-2");
    // Changed natively, seen here.
    let r =
        c.call(Method::PATCH, &format!("/v1/instances/{native}"), ADMIN, Some(json!({"labels": {"keep": null}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(c.get(&format!("{BASE}/{id}"), ADMIN).await.body["tags"], json!({"new": "2"}));

    // Created here, with SF ids taken from an instance it already knows; seen natively.
    let known = c.get(&format!("{BASE}/{id}"), ADMIN).await.body;
    let user_data = "I2Nsb3VkLWNvbmZpZwo=";
    let r = c
        .post(
            BASE,
            ADMIN,
            json!({
                "pool": known["pool"]["id"],
                "image": known["image"]["id"],
                "instance_sku": known["instance_sku"]["id"],
                "name": "made-here",
                "tags": {"origin": "sf"},
                "cloud_init_user_data": user_data,
                "priority_level": "preferred",
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_seed_shape(&r.body);
    assert_eq!(r.body["priority_level"], "preferred");
    let made = r.body["id"].as_str().unwrap().to_string();
    let listed = c.get("/v1/instances?name=made-here", ADMIN).await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", listed.text);
    let made_native = items[0]["id"].as_str().unwrap().to_string();
    assert_eq!(items[0]["labels"], json!({"origin": "sf"}));
    assert_eq!(items[0]["template"], "busybox");
    assert_eq!(items[0]["instance_type"], "standard.small");
    assert_eq!(items[0]["user_data"], user_data);
    eventually("the instance to boot", || async { c.state(ADMIN, &made_native).await == "running" }).await;
    // The id given at creation is the one every later read shows.
    let r = c.get(&format!("{BASE}/{made}"), ADMIN).await;
    assert_eq!(r.body["status"], "running", "{}", r.text);
    assert_eq!(sf_id(&c, ADMIN, "made-here").await, made);

    // Unnamed instances are named after their SF id; unknown pools are 404.
    let mut body = json!({"pool": known["pool"]["id"], "image": "busybox", "instance_sku": "standard.small"});
    let r = c.post(BASE, ADMIN, body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["name"], r.body["id"]);
    body["pool"] = json!("pool_elsewhere");
    assert_error(&c.post(BASE, ADMIN, body.clone()).await, StatusCode::NOT_FOUND, "not_found");
    body["pool"] = known["pool"]["id"].clone();
    body["instance_sku"] = json!("isku_nothingLikeThis");
    let r = c.post(BASE, ADMIN, body).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request_error");
    assert_eq!(r.body["error"]["details"][0]["field"], "instance_sku", "{}", r.text);
}

#[tokio::test]
async fn the_singleton_patch_validates_names_and_tags_with_details() {
    let c = Cloud::new().await;
    c.instance(ADMIN, "v", json!({})).await;
    let id = sf_id(&c, ADMIN, "v").await;
    let path = format!("{BASE}/{id}");
    let too_many: serde_json::Map<String, Value> = (0..51).map(|n| (format!("k{n}"), json!("v"))).collect();
    for (body, field) in [
        (json!({"name": "-leading-dash"}), "name"),
        (json!({"name": "has space"}), "name"),
        (json!({"tags": {"_x": "1"}}), "tags._x"),
        (json!({"tags": {"a,b": "1"}}), "tags.a,b"),
        (json!({"tags": {"k": "x".repeat(257)}}), "tags.k"),
        (json!({"tags": {"k": 3}}), "tags.k"),
        (json!({"tags": too_many}), "tags"),
        (json!({"tags": "env=prod"}), "tags"),
        (json!({"priority_level": "urgent"}), "priority_level"),
        (json!({"expected_shutdown_at": 1.5}), "expected_shutdown_at"),
        (json!({"status": "running"}), "status"),
    ] {
        let r = patch(&c, &path, ADMIN, body.clone()).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request_error");
        assert_eq!(r.body["error"]["details"][0]["field"], field, "{body}: {}", r.text);
        assert!(r.body["error"]["details"][0]["code"].is_string(), "{}", r.text);
    }
    assert_eq!(c.get(&path, ADMIN).await.body["tags"], json!({}));
    // Omitted fields stay; `tags: null` clears them.
    patch(&c, &path, ADMIN, json!({"tags": {"a": "1"}})).await;
    let r = patch(&c, &path, ADMIN, json!({"priority_level": "yield"})).await;
    assert_eq!(r.body["tags"], json!({"a": "1"}), "{}", r.text);
    let r = patch(&c, &path, ADMIN, json!({"tags": null})).await;
    assert_eq!(r.body["tags"], json!({}), "{}", r.text);
    assert_eq!(r.body["priority_level"], "yield");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_sfs_envelope() {
    let c = Cloud::new().await;
    for path in ["/preview/v2/nothing", "/preview/v2/instances/x/y", "/v2/instances/x/y"] {
        assert_error(&c.get(path, ADMIN).await, StatusCode::NOT_FOUND, "not_found");
    }
    assert_error(
        &c.call(Method::PUT, BASE, ADMIN, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
    );
}

#[tokio::test]
async fn patch_replaces_the_tags_and_null_clears_them() {
    let c = Cloud::new().await;
    c.instance(ADMIN, "tagged", json!({"labels": {"a": "1", "b": "2"}})).await;
    let path = format!("{BASE}/{}", sf_id(&c, ADMIN, "tagged").await);
    let r = patch(&c, &path, ADMIN, json!({"tags": {"c": "3"}})).await;
    assert_eq!((r.status, &r.body["tags"]), (StatusCode::OK, &json!({"c": "3"})), "{}", r.text);
    let r = patch(&c, &path, ADMIN, json!({"name": "renamed"})).await;
    assert_eq!(r.body["tags"], json!({"c": "3"}), "omitted tags stay: {}", r.text);
    let r = patch(&c, &path, ADMIN, json!({"tags": null})).await;
    assert_eq!(r.body["tags"], json!({}), "{}", r.text);
}

#[tokio::test]
async fn duplicate_batch_entries_apply_in_order_field_by_field() {
    let c = Cloud::new().await;
    c.instance(ADMIN, "dup", json!({"labels": {"old": "1"}})).await;
    let id = sf_id(&c, ADMIN, "dup").await;
    let body = json!({"data": [
        {"id": id, "tags": {"a": "1"}, "priority_level": "critical"},
        {"id": id, "name": "dup-renamed"},
        {"id": id, "tags": {"b": "2"}},
    ]});
    let r = patch(&c, "/v2/instances", ADMIN, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let i = &r.body["data"][0];
    assert_eq!(r.body["data"].as_array().map(Vec::len), Some(1), "{}", r.text);
    // The second entry did not undo the first one's priority, the third replaced the first one's tags.
    assert_eq!(
        (i["name"].as_str(), i["priority_level"].as_str(), &i["tags"]),
        (Some("dup-renamed"), Some("critical"), &json!({"b": "2"})),
        "{i}"
    );
    assert_eq!(c.get(&format!("{BASE}/{id}"), ADMIN).await.body, *i, "the response is what is stored");
}

#[tokio::test]
async fn an_instance_is_terminated_before_it_is_deleted() {
    let c = Cloud::new().await;
    let native = c.instance(ADMIN, "doomed", json!({})).await;
    let path = format!("{BASE}/{}", sf_id(&c, ADMIN, "doomed").await);
    assert_eq!(c.get(&path, ADMIN).await.body["status"], "running");

    let r = c.call(Method::DELETE, &path, ADMIN, None).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");
    assert_eq!(c.state(ADMIN, &native).await, "running", "a refused delete changes nothing");

    let r = c.post(&format!("{path}/terminate"), ADMIN, json!({})).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("terminated")), "{}", r.text);
    assert_seed_shape(&r.body);
    eventually("the VM to stop", || async { c.state(ADMIN, &native).await == "stopped" }).await;
    let r = c.get(&path, ADMIN).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("terminated")), "{}", r.text);
    let listed = c.get(&format!("{BASE}?status=terminated"), ADMIN).await;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(1), "{}", listed.text);
    assert_error(&c.post(&format!("{path}/terminate"), ADMIN, json!({})).await, StatusCode::NOT_FOUND, "not_found");

    let r = c.call(Method::DELETE, &path, ADMIN, None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::NO_CONTENT, ""), "{}", r.text);
    eventually("the instance to go", || async { c.state(ADMIN, &native).await == "gone" }).await;
    // SF keeps showing a deleted instance, terminated, for the retention; it cannot be deleted twice.
    let r = c.get(&path, ADMIN).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("terminated")), "{}", r.text);
    let listed = c.get(BASE, ADMIN).await;
    assert_eq!(listed.body["data"][0]["id"], r.body["id"], "{}", listed.text);
    assert_error(&c.call(Method::DELETE, &path, ADMIN, None).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn status_is_only_ever_one_of_sfs_values() {
    let c = Cloud::new().await;
    let native = c.instance(ADMIN, "stopped-natively", json!({})).await;
    c.act(ADMIN, &native, "stop", None).await;
    let r = c.get(&format!("{BASE}/{}", sf_id(&c, ADMIN, "stopped-natively").await), ADMIN).await;
    assert_eq!(r.body["status"], "terminated", "SF has no stopped instance: {}", r.text);
}

#[tokio::test]
async fn a_client_finds_what_to_put_in_a_create_body() {
    let c = Cloud::new().await;
    for base in ["/preview/v2", "/v2"] {
        let list = |what: &'static str| {
            let c = &c;
            async move {
                let r = c.get(&format!("{base}/{what}"), ADMIN).await;
                assert_eq!((r.status, r.body["object"].as_str()), (StatusCode::OK, Some("list")), "{}", r.text);
                assert_eq!(r.body["has_more"], false, "{}", r.text);
                r.body["data"].as_array().unwrap().clone()
            }
        };
        let images = list("images").await;
        let image = images.iter().find(|i| i["name"] == "busybox").expect("busybox listed");
        assert!(is_sf_id(&image["id"], "image_"), "{image}");
        let skus = list("instance_skus").await;
        let sku = skus.iter().find(|s| s["alias"] == "standard.small").expect("standard.small listed");
        assert!(is_sf_id(&sku["id"], "isku_"), "{sku}");
        let pools = list("pools").await;
        assert!(is_sf_id(&pools[0]["id"], "pool_"), "{pools:?}");
        let workspaces = list("workspaces").await;
        assert!(is_sf_id(&workspaces[0]["id"], "wksp_"), "{workspaces:?}");
        let me = c.get(&format!("{base}/me"), ADMIN).await;
        assert_eq!(me.body["workspace"]["id"], workspaces[0]["id"], "{}", me.text);

        let name = format!("found{}", base.len());
        let body = json!({"pool": pools[0]["id"], "image": image["id"], "instance_sku": sku["id"], "name": name});
        let r = c.post(&format!("{base}/instances"), ADMIN, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!((&r.body["image"]["id"], &r.body["instance_sku"]["id"]), (&image["id"], &sku["id"]), "{}", r.text);
        assert_eq!(r.body["workspace_id"], workspaces[0]["id"]);
    }
}

#[tokio::test]
async fn lists_filter_by_id_status_sku_and_creation_time() {
    let c = Cloud::new().await;
    c.instance(ADMIN, "small", json!({})).await;
    c.instance(ADMIN, "medium", json!({"instance_type": "standard.medium"})).await;
    let (small, medium) = (sf_id(&c, ADMIN, "small").await, sf_id(&c, ADMIN, "medium").await);
    let names = |r: &Reply| -> Vec<String> {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let mut n: Vec<String> =
            r.body["data"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    let sku = c.get(&format!("{BASE}/{medium}"), ADMIN).await.body["instance_sku"]["id"].as_str().unwrap().to_string();
    assert_eq!(names(&c.get(&format!("{BASE}?instance_sku={sku}"), ADMIN).await), ["medium"]);
    assert_eq!(names(&c.get(&format!("{BASE}?id={small}&id={medium}"), ADMIN).await), ["medium", "small"]);
    assert_eq!(names(&c.get(&format!("{BASE}?id={small}"), ADMIN).await), ["small"]);
    assert_eq!(names(&c.get(&format!("{BASE}?status=running"), ADMIN).await), ["medium", "small"]);
    assert_eq!(names(&c.get(&format!("{BASE}?status=failed"), ADMIN).await), Vec::<String>::new());
    let future = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    assert_eq!(names(&c.get(&format!("{BASE}?created_after={future}"), ADMIN).await), Vec::<String>::new());
    assert_eq!(names(&c.get(&format!("{BASE}?created_before={future}"), ADMIN).await), ["medium", "small"]);
    // Paging with a filter: one at a time, both reached.
    let first = c.get(&format!("{BASE}?status=running&limit=1"), ADMIN).await;
    assert_eq!(first.body["has_more"], true, "{}", first.text);
    let cursor = first.body["cursor"].as_str().unwrap();
    let second = c.get(&format!("{BASE}?status=running&limit=1&starting_after={cursor}"), ADMIN).await;
    assert_eq!(names(&second).len(), 1);
    assert_ne!(names(&first), names(&second));
    assert_error(
        &c.get(&format!("{BASE}?status=stopped"), ADMIN).await,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    assert_error(&c.get(&format!("{BASE}?pool=pool_nope"), ADMIN).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn ending_before_pages_backwards() {
    let c = Cloud::new().await;
    for name in ["p1", "p2", "p3"] {
        c.instance(ADMIN, name, json!({})).await;
    }
    let names = |r: &Reply| -> Vec<String> {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["data"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect()
    };
    let all = c.get(BASE, ADMIN).await;
    assert_eq!(names(&all), ["p1", "p2", "p3"]);
    let last = c.get(&format!("{BASE}?limit=1&starting_after={}", cursor_of(&c, "p2").await), ADMIN).await;
    assert_eq!(names(&last), ["p3"]);
    // Back from p3, one at a time: p2 (more before it), then p1 (none).
    let cursor = last.body["cursor"].as_str().unwrap();
    let r = c.get(&format!("{BASE}?limit=1&ending_before={cursor}"), ADMIN).await;
    assert_eq!((names(&r), r.body["has_more"].as_bool()), (vec!["p2".to_string()], Some(true)), "{}", r.text);
    let r = c.get(&format!("{BASE}?limit=1&ending_before={}", r.body["cursor"].as_str().unwrap()), ADMIN).await;
    assert_eq!((names(&r), r.body["has_more"].as_bool()), (vec!["p1".to_string()], Some(false)), "{}", r.text);
    let r = c.get(&format!("{BASE}?limit=5&ending_before={cursor}"), ADMIN).await;
    assert_eq!(names(&r), ["p1", "p2"], "a backward page is in the usual order");
    let both = c.get(&format!("{BASE}?ending_before={cursor}&starting_after={cursor}"), ADMIN).await;
    assert_error(&both, StatusCode::BAD_REQUEST, "invalid_request_error");
}

/// The list cursor that names the instance called `name` (the cursor of a one-item page ending with it).
async fn cursor_of(c: &Cloud, name: &str) -> String {
    let all = c.get(&format!("{BASE}?limit=200"), ADMIN).await;
    let items = all.body["data"].as_array().unwrap();
    let at = items.iter().position(|i| i["name"] == name).unwrap();
    let mut cursor: Option<String> = None;
    for _ in 0..=at {
        let q = match &cursor {
            Some(cur) => format!("{BASE}?limit=1&starting_after={cur}"),
            None => format!("{BASE}?limit=1"),
        };
        cursor = c.get(&q, ADMIN).await.body["cursor"].as_str().map(str::to_string);
    }
    cursor.unwrap()
}
