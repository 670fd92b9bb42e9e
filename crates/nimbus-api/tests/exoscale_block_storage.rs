//! Exoscale's block storage through HTTP on the real router, engine and store (sim driver), with the
//! bodies the Go clients send (`exo compute block-storage`, the Terraform provider): whole objects as
//! references, `"labels": null` on updates; and Exoscale's states and error body on every refusal.

#[path = "api/common.rs"]
mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use common::{Cloud, Reply, ADMIN};
use nimbus_api::dialects::exoscale::signature;
use serde_json::{json, Value};

/// The key id `Cloud` bootstraps with [`ADMIN`] as its secret.
const KEY_ID: &str = "NIMadmin";

/// An EXO2-HMAC-SHA256 signed request, as the clients sign it: every query parameter signed, in
/// alphabetical order, the body's bytes as sent.
async fn exo(c: &Cloud, method: Method, path_and_query: &str, body: Option<Value>) -> Reply {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut names: Vec<String> =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).map(|(k, _)| k.into_owned()).collect();
    names.sort();
    names.dedup();
    let (values, _) = signature::signed_query(query, &names);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let expires = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 600;
    let message = signature::message(method.as_str(), path, body.as_bytes(), &values, expires);
    let sig = base64::engine::general_purpose::STANDARD.encode(signature::hmac_sha256(ADMIN.as_bytes(), &message));
    let args = if names.is_empty() { String::new() } else { format!(",signed-query-args={}", names.join(";")) };
    let auth = format!("EXO2-HMAC-SHA256 credential={KEY_ID}{args},expires={expires},signature={sig}");
    let req = Request::builder().method(method).uri(path_and_query).header("authorization", auth);
    let req = if body.is_empty() {
        req.body(Body::empty())
    } else {
        req.header("content-type", "application/json").body(Body::from(body))
    };
    c.send(req.unwrap()).await
}

fn assert_exo_error(r: &Reply, status: StatusCode) {
    assert_eq!(r.status, status, "{}", r.text);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()), "not Exoscale's error body: {}", r.text);
    assert!(r.body.get("error").is_none(), "the native error body leaked: {}", r.text);
}

/// Waits for an operation an Exoscale call answered with and checks it succeeded.
async fn done(c: &Cloud, r: &Reply) -> Value {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let op = r.body["id"].as_str().unwrap_or_else(|| panic!("no operation in {}", r.text));
    if r.body["state"] == "pending" {
        let native = c.wait(op, ADMIN).await;
        assert_eq!(native["state"], "success", "{native}");
    }
    let r = exo(c, Method::GET, &format!("/v2/operation/{op}"), None).await;
    assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::OK, Some("success")), "{}", r.text);
    r.body
}

/// Creates a volume and waits for it; returns its id.
async fn volume(c: &Cloud, name: &str, size: u64) -> String {
    let r =
        exo(c, Method::POST, "/v2/block-storage", Some(json!({"name": name, "size": size, "labels": {"env": "prod"}})))
            .await;
    let op = done(c, &r).await;
    assert_eq!(op["reference"]["link"], format!("/v2/block-storage/{}", op["reference"]["id"].as_str().unwrap()));
    op["reference"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn block_storage_is_made_attached_refused_detached_resized_and_deleted() {
    let c = Cloud::new().await;
    let vm = c.instance(ADMIN, "vm", json!({})).await;
    let id = volume(&c, "data", 10).await;
    let v = exo(&c, Method::GET, &format!("/v2/block-storage/{id}"), None).await.body;
    assert_eq!(
        (v["state"].as_str(), v["size"].as_u64(), &v["labels"]),
        (Some("detached"), Some(10), &json!({"env": "prod"})),
        "{v}"
    );
    assert!(v.get("instance").is_none(), "{v}");
    let listed = exo(&c, Method::GET, "/v2/block-storage", None).await.body;
    assert_eq!(listed["block-storage-volumes"].as_array().unwrap().len(), 1);

    // Attached with the whole instance object the Go client sends.
    let whole = json!({"instance": {"id": vm, "name": "vm", "created-at": "0001-01-01T00:00:00Z", "labels": null}});
    done(&c, &exo(&c, Method::PUT, &format!("/v2/block-storage/{id}:attach"), Some(whole)).await).await;
    let v = exo(&c, Method::GET, &format!("/v2/block-storage/{id}"), None).await.body;
    assert_eq!((v["state"].as_str(), v["instance"]["id"].as_str()), (Some("attached"), Some(vm.as_str())), "{v}");

    // Deleting is refused while attached, in Exoscale's error body; growing is not.
    assert_exo_error(&exo(&c, Method::DELETE, &format!("/v2/block-storage/{id}"), None).await, StatusCode::BAD_REQUEST);
    let r = exo(&c, Method::PUT, &format!("/v2/block-storage/{id}:resize-volume"), Some(json!({"size": 20}))).await;
    assert_eq!(
        (r.status, r.body["size"].as_u64(), r.body["state"].as_str()),
        (StatusCode::OK, Some(20), Some("attached")),
        "{}",
        r.text
    );

    done(&c, &exo(&c, Method::PUT, &format!("/v2/block-storage/{id}:detach"), None).await).await;
    let r = exo(&c, Method::PUT, &format!("/v2/block-storage/{id}:resize-volume"), Some(json!({"size": 5}))).await;
    assert_exo_error(&r, StatusCode::BAD_REQUEST);
    let r = exo(&c, Method::PUT, &format!("/v2/block-storage/{id}:resize-volume"), Some(json!({"size": 30}))).await;
    assert_eq!((r.status, r.body["size"].as_u64()), (StatusCode::OK, Some(30)), "{}", r.text);

    // `"labels": null` leaves them; a name changes.
    let r = exo(&c, Method::PUT, &format!("/v2/block-storage/{id}"), Some(json!({"name": "archive", "labels": null})))
        .await;
    done(&c, &r).await;
    let v = exo(&c, Method::GET, &format!("/v2/block-storage/{id}"), None).await.body;
    assert_eq!((v["name"].as_str(), &v["labels"]), (Some("archive"), &json!({"env": "prod"})));

    assert_eq!(
        exo(&c, Method::GET, "/v2/block-storage-snapshot", None).await.body,
        json!({"block-storage-snapshots": []})
    );
    // A snapshot: the operation's reference is the snapshot, listed `created` with its volume.
    let r = exo(&c, Method::POST, &format!("/v2/block-storage/{id}:create-snapshot"), Some(json!({"name": "s"}))).await;
    let op = done(&c, &r).await;
    assert_eq!(op["reference"]["command"], "get-block-storage-snapshot", "{op}");
    let snap = op["reference"]["id"].as_str().unwrap().to_string();
    let s = exo(&c, Method::GET, &format!("/v2/block-storage-snapshot/{snap}"), None).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text);
    assert_eq!(
        (
            s.body["name"].as_str(),
            s.body["state"].as_str(),
            s.body["size"].as_u64(),
            s.body["block-storage-volume"]["id"].as_str()
        ),
        (Some("s"), Some("created"), Some(30), Some(id.as_str())),
        "{}",
        s.text
    );
    let listed = exo(&c, Method::GET, "/v2/block-storage-snapshot", None).await.body;
    assert_eq!(listed["block-storage-snapshots"].as_array().map(Vec::len), Some(1), "{listed}");
    let v = exo(&c, Method::GET, &format!("/v2/block-storage/{id}"), None).await.body;
    assert_eq!(v["block-storage-snapshots"], json!([{"id": snap}]), "{v}");
    // A new volume from the snapshot, as egoscale sends it: its size by default, or a bigger one.
    for (size, want) in [(None, 30), (Some(40), 40)] {
        let mut body = json!({"name": "copy", "block-storage-snapshot": {"id": snap}});
        if let Some(s) = size {
            body["size"] = json!(s);
        }
        let op = done(&c, &exo(&c, Method::POST, "/v2/block-storage", Some(body)).await).await;
        let copy = op["reference"]["id"].as_str().unwrap().to_string();
        let v = exo(&c, Method::GET, &format!("/v2/block-storage/{copy}"), None).await.body;
        assert_eq!((v["state"].as_str(), v["size"].as_u64()), (Some("detached"), Some(want)), "{v}");
        let disk = c.sim.volume(uuid::Uuid::parse_str(&copy).unwrap()).unwrap();
        assert_eq!((disk.made_from.map(|s| s.to_string()), disk.size_gb), (Some(snap.clone()), want));
        done(&c, &exo(&c, Method::DELETE, &format!("/v2/block-storage/{copy}"), None).await).await;
    }
    // Smaller than the snapshot, or from a snapshot that is not there: refused, nothing made.
    let r = exo(
        &c,
        Method::POST,
        "/v2/block-storage",
        Some(json!({"name": "small", "size": 10, "block-storage-snapshot": {"id": snap}})),
    )
    .await;
    assert_exo_error(&r, StatusCode::BAD_REQUEST);
    let r = exo(
        &c,
        Method::POST,
        "/v2/block-storage",
        Some(json!({"name": "none", "block-storage-snapshot": {"id": uuid::Uuid::new_v4()}})),
    )
    .await;
    assert_exo_error(&r, StatusCode::NOT_FOUND);
    let all = exo(&c, Method::GET, "/v2/block-storage", None).await.body;
    assert_eq!(all["block-storage-volumes"].as_array().map(Vec::len), Some(1), "{all}");
    // The snapshot's volume is free again once the copies are made.
    let v = c.get(&format!("/v1/volumes/{id}"), ADMIN).await.body;
    assert_eq!(v["operation_id"], Value::Null, "{v}");
    // Renamed and relabelled (the whole map); `"labels": null` leaves them.
    let path = format!("/v2/block-storage-snapshot/{snap}");
    done(&c, &exo(&c, Method::PUT, &path, Some(json!({"name": "s2", "labels": {"a": "b"}}))).await).await;
    done(&c, &exo(&c, Method::PUT, &path, Some(json!({"labels": null}))).await).await;
    let s = exo(&c, Method::GET, &path, None).await.body;
    assert_eq!((s["name"].as_str(), &s["labels"]), (Some("s2"), &json!({"a": "b"})), "{s}");
    // The volume goes only once its snapshots have.
    assert_exo_error(&exo(&c, Method::DELETE, &format!("/v2/block-storage/{id}"), None).await, StatusCode::BAD_REQUEST);
    let op = done(&c, &exo(&c, Method::DELETE, &path, None).await).await;
    assert_eq!(op["reference"]["id"], snap.as_str(), "{op}");
    assert_exo_error(&exo(&c, Method::GET, &path, None).await, StatusCode::NOT_FOUND);

    done(&c, &exo(&c, Method::DELETE, &format!("/v2/block-storage/{id}"), None).await).await;
    assert_exo_error(&exo(&c, Method::GET, &format!("/v2/block-storage/{id}"), None).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn block_storage_refuses_bad_input_another_project_and_the_quota() {
    let c = Cloud::new().await;
    for body in [
        json!({"name": "x"}),
        json!({"size": 10}),
        json!({"name": "x", "size": 0}),
        json!({"name": "x", "size": 10, "block-storage-snapshot": {"id": "not-an-id"}}),
    ] {
        assert_exo_error(&exo(&c, Method::POST, "/v2/block-storage", Some(body)).await, StatusCode::BAD_REQUEST);
    }
    let id = volume(&c, "data", 10).await;
    let project = c.post("/v1/projects", ADMIN, json!({"name": "other"})).await;
    let other = c.key("admin", Some(project.id().as_str())).await;
    let theirs = c.instance(&other, "theirs", json!({})).await;
    let r = exo(&c, Method::PUT, &format!("/v2/block-storage/{id}:attach"), Some(json!({"instance": {"id": theirs}})))
        .await;
    assert_exo_error(&r, StatusCode::NOT_FOUND);
    assert_exo_error(&exo(&c, Method::GET, "/v2/block-storage/not-an-id", None).await, StatusCode::NOT_FOUND);

    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    c.call(
        Method::PUT,
        &format!("/v1/projects/{project_id}/quota"),
        ADMIN,
        Some(json!({"instances": 5, "vcpus": 100, "memory_mib": 1000000, "disk_gb": 1000, "volume_gb": 15})),
    )
    .await;
    let r = exo(&c, Method::POST, "/v2/block-storage", Some(json!({"name": "big", "size": 10}))).await;
    assert_exo_error(&r, StatusCode::FORBIDDEN);
    assert_eq!(
        exo(&c, Method::GET, "/v2/block-storage", None).await.body["block-storage-volumes"].as_array().unwrap().len(),
        1
    );
    // A volume of another zone does not attach to this zone's instance.
    let far = c.volume_of_another_zone().await;
    let mine = c.instance(ADMIN, "mine", json!({})).await;
    let r =
        exo(&c, Method::PUT, &format!("/v2/block-storage/{far}:attach"), Some(json!({"instance": {"id": mine}}))).await;
    assert_exo_error(&r, StatusCode::BAD_REQUEST);
    assert!(r.body["message"].as_str().unwrap().contains("zone"), "{}", r.text);
}
