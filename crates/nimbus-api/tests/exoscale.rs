//! The Exoscale dialect through HTTP on the real router, engine and store (sim driver), with the request
//! bodies the Go clients send (egoscale v3, so the `exo` CLI and the Terraform provider): whole objects as
//! references, `"labels": null` on every update. The Python SDK's lifecycle is `crates/nimbus/tests/
//! exoscale_sdk.rs`; this is what that SDK never sends.

#[path = "api/common.rs"]
mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use common::{Cloud, Reply, ADMIN};
use nimbus_api::dialects::exoscale::signature;
use nimbus_driver::SimConfig;
use nimbus_engine::EngineConfig;
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

/// An instance type as `GET /v2/instance-type` lists it: what egoscale sends back whole.
async fn instance_type(c: &Cloud, family: &str, size: &str) -> Value {
    let types = exo(c, Method::GET, "/v2/instance-type", None).await;
    types.body["instance-types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["family"] == family && t["size"] == size)
        .unwrap_or_else(|| panic!("no {family}.{size} in {}", types.text))
        .clone()
}

/// egoscale's `Template` with only the id set: its zero values come along (`created-at` is Go's zero time).
async fn go_template(c: &Cloud, name: &str) -> Value {
    let templates = exo(c, Method::GET, "/v2/template", None).await;
    let t = templates.body["templates"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone();
    json!({"created-at": "0001-01-01T00:00:00Z", "id": t["id"], "boot-mode": "", "zones": null, "size": 0})
}

/// `exo compute instance create`'s body: whole objects for every reference.
async fn create_like_exo_cli(c: &Cloud, name: &str, extra: Value) -> String {
    let mut body = json!({
        "name": name,
        "disk-size": 10,
        "instance-type": instance_type(c, "standard", "small").await,
        "template": go_template(c, "busybox").await,
        "labels": {"env": "prod"},
        "public-ip-assignment": "inet4",
    });
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    let op = done(c, &exo(c, Method::POST, "/v2/instance", Some(body)).await).await;
    op["reference"]["id"].as_str().unwrap().to_string()
}

async fn instance(c: &Cloud, id: &str) -> Value {
    let r = exo(c, Method::GET, &format!("/v2/instance/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn whole_object_references_from_the_go_clients_create_scale_and_reset() {
    let c = Cloud::new().await;
    let key = json!({"name": "laptop", "public-key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t"});
    done(&c, &exo(&c, Method::POST, "/v2/ssh-key", Some(key)).await).await;
    let sg = done(&c, &exo(&c, Method::POST, "/v2/security-group", Some(json!({"name": "web"}))).await).await;
    let sg_id = sg["reference"]["id"].clone();
    let aag = done(&c, &exo(&c, Method::POST, "/v2/anti-affinity-group", Some(json!({"name": "spread"}))).await).await;
    let aag_id = aag["reference"]["id"].clone();

    let id = create_like_exo_cli(
        &c,
        "go-made",
        json!({
            "ssh-keys": [{"name": "laptop", "fingerprint": ""}],
            // By id with Go's zero values around it, and by name (the spec allows both for groups).
            "security-groups": [{"id": sg_id, "name": "", "description": "", "rules": null, "external-sources": null}],
            "anti-affinity-groups": [{"name": "spread", "id": "", "instances": null}],
            "deploy-target": null,
        }),
    )
    .await;
    let i = instance(&c, &id).await;
    assert_eq!(i["state"], "running", "{i}");
    assert_eq!(i["ssh-keys"][0]["name"], "laptop", "{i}");
    assert_eq!(i["security-groups"], json!([{"id": sg_id}]), "{i}");
    assert_eq!(i["anti-affinity-groups"], json!([{"id": aag_id}]), "{i}");

    // `exo compute instance scale` (and Terraform's type change): stop, then the whole type object.
    done(&c, &exo(&c, Method::PUT, &format!("/v2/instance/{id}:stop"), Some(json!({}))).await).await;
    let medium = instance_type(&c, "standard", "medium").await;
    let r = exo(&c, Method::PUT, &format!("/v2/instance/{id}:scale"), Some(json!({"instance-type": medium}))).await;
    done(&c, &r).await;
    assert_eq!(instance(&c, &id).await["instance-type"]["id"], medium["id"]);

    // `exo compute instance reset --template`: the whole template; the instance's snapshots survive it.
    let snap = done(&c, &exo(&c, Method::POST, &format!("/v2/instance/{id}:create-snapshot"), None).await).await;
    let snapshot_id = snap["reference"]["id"].clone();
    let template = go_template(&c, "busybox").await;
    let r = exo(&c, Method::PUT, &format!("/v2/instance/{id}:reset"), Some(json!({"template": template}))).await;
    done(&c, &r).await;
    let i = instance(&c, &id).await;
    assert_eq!(i["template"]["id"], template["id"], "{i}");
    assert_eq!(i["snapshots"], json!([{"id": snapshot_id}]), "reset keeps the snapshots: {i}");
}

#[tokio::test]
async fn a_reference_without_a_usable_id_is_refused_and_creates_nothing() {
    let c = Cloud::new().await;
    let mut itype = instance_type(&c, "standard", "small").await;
    itype["id"] = json!("not-an-id");
    let body = json!({"disk-size": 10, "instance-type": itype, "template": go_template(&c, "busybox").await});
    assert_exo_error(&exo(&c, Method::POST, "/v2/instance", Some(body)).await, StatusCode::BAD_REQUEST);
    let body = json!({
        "disk-size": 10,
        "instance-type": instance_type(&c, "standard", "small").await,
        "template": {"created-at": "0001-01-01T00:00:00Z", "id": ""},
    });
    assert_exo_error(&exo(&c, Method::POST, "/v2/instance", Some(body)).await, StatusCode::BAD_REQUEST);
    let listed = exo(&c, Method::GET, "/v2/instance", None).await;
    assert_eq!(listed.body["instances"], json!([]), "{}", listed.text);
}

#[tokio::test]
async fn labels_null_on_update_leaves_them_and_an_empty_map_clears_them() {
    let c = Cloud::new().await;
    let id = create_like_exo_cli(&c, "labelled", json!({})).await;
    // `exo compute instance update --name`: egoscale sends `"labels": null` beside the new name.
    let r = exo(&c, Method::PUT, &format!("/v2/instance/{id}"), Some(json!({"name": "renamed", "labels": null}))).await;
    done(&c, &r).await;
    let i = instance(&c, &id).await;
    assert_eq!((i["name"].as_str(), &i["labels"]), (Some("renamed"), &json!({"env": "prod"})), "{i}");

    // Bad labels change nothing, the name included.
    let r =
        exo(&c, Method::PUT, &format!("/v2/instance/{id}"), Some(json!({"name": "again", "labels": {"a": 1}}))).await;
    assert_exo_error(&r, StatusCode::BAD_REQUEST);
    assert_eq!(instance(&c, &id).await["name"], "renamed");

    let r = exo(&c, Method::PUT, &format!("/v2/instance/{id}"), Some(json!({"labels": {"team": "a"}}))).await;
    done(&c, &r).await;
    assert_eq!(instance(&c, &id).await["labels"], json!({"team": "a"}), "a map replaces the labels");
    done(&c, &exo(&c, Method::PUT, &format!("/v2/instance/{id}"), Some(json!({"labels": {}}))).await).await;
    assert_eq!(instance(&c, &id).await["labels"], json!({}), "an empty map clears them");
}

#[tokio::test]
async fn zones_are_the_names_the_operator_gave() {
    let config = EngineConfig { zone: "lab-1".into(), zone_aliases: vec!["ch-dk-2".into()], ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    // Anonymous, as the Python SDK lists zones; the `exo` CLI finds its zone by name here.
    let r = c.send(Request::get("/v2/zone").header("host", "nimbus.test:8080").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let names: Vec<&str> = r.body["zones"].as_array().unwrap().iter().map(|z| z["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["lab-1", "ch-dk-2"]);
    for z in r.body["zones"].as_array().unwrap() {
        assert_eq!(z["api-endpoint"], "http://nimbus.test:8080/v2", "{z}");
    }
    let t = instance_type(&c, "standard", "small").await;
    assert_eq!(t["zones"], json!(["lab-1", "ch-dk-2"]), "{t}");
}

#[tokio::test]
async fn a_registered_ssh_key_is_found_from_its_operations_reference() {
    let c = Cloud::new().await;
    let key = json!({"name": "ci", "public-key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t"});
    let op = done(&c, &exo(&c, Method::POST, "/v2/ssh-key", Some(key)).await).await;
    let by_reference =
        exo(&c, Method::GET, &format!("/v2/ssh-key/{}", op["reference"]["id"].as_str().unwrap()), None).await;
    assert_eq!(
        (by_reference.status, by_reference.body["name"].as_str()),
        (StatusCode::OK, Some("ci")),
        "{}",
        by_reference.text
    );
    let by_link = exo(&c, Method::GET, op["reference"]["link"].as_str().unwrap(), None).await;
    assert_eq!(by_link.body["name"], "ci", "{}", by_link.text);
    assert_exo_error(&exo(&c, Method::GET, "/v2/ssh-key/nobody", None).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_instance_is_found_by_its_elastic_ip() {
    let c = Cloud::new().await;
    let id = create_like_exo_cli(&c, "holder", json!({})).await;
    create_like_exo_cli(&c, "other", json!({})).await;
    let op = done(&c, &exo(&c, Method::POST, "/v2/elastic-ip", Some(json!({}))).await).await;
    let eip = op["reference"]["id"].as_str().unwrap().to_string();
    let ip =
        exo(&c, Method::GET, &format!("/v2/elastic-ip/{eip}"), None).await.body["ip"].as_str().unwrap().to_string();
    let attach = json!({"instance": {"id": id, "created-at": "0001-01-01T00:00:00Z", "name": ""}});
    done(&c, &exo(&c, Method::PUT, &format!("/v2/elastic-ip/{eip}:attach"), Some(attach)).await).await;
    // `exo compute elastic-ip show`'s look-up of the holder.
    let listed = |query: String| {
        let c = &c;
        async move {
            let r = exo(c, Method::GET, &format!("/v2/instance?{query}"), None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let items = r.body["instances"].as_array().unwrap().clone();
            items.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(format!("ip-address={ip}")).await, vec![id.clone()]);
    // By its own address too, and by labels.
    let own = instance(&c, &id).await["public-ip"].as_str().unwrap().to_string();
    assert_eq!(listed(format!("ip-address={own}")).await, vec![id.clone()]);
    assert_eq!(listed("ip-address=192.0.2.250".into()).await, Vec::<String>::new());
    assert_eq!(listed("labels=env%3Dprod".into()).await.len(), 2);
    assert_eq!(listed("labels=env%3Dstaging".into()).await, Vec::<String>::new());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_exoscales_shape() {
    let c = Cloud::new().await;
    assert_exo_error(&exo(&c, Method::GET, "/v2/no-such-thing", None).await, StatusCode::NOT_FOUND);
    assert_exo_error(&exo(&c, Method::DELETE, "/v2/instance-type", None).await, StatusCode::METHOD_NOT_ALLOWED);
    // Deploy targets are listed (none: Nimbus places instances itself), not an unknown route.
    let r = exo(&c, Method::GET, "/v2/deploy-target", None).await;
    assert_eq!((r.status, &r.body), (StatusCode::OK, &json!({"deploy-targets": []})), "{}", r.text);
    assert_exo_error(
        &exo(&c, Method::GET, &format!("/v2/deploy-target/{}", uuid::Uuid::new_v4()), None).await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn an_elastic_ips_reverse_dns_is_set_read_and_removed() {
    let c = Cloud::new().await;
    let op = done(&c, &exo(&c, Method::POST, "/v2/elastic-ip", Some(json!({}))).await).await;
    let path = format!("/v2/reverse-dns/elastic-ip/{}", op["reference"]["id"].as_str().unwrap());
    // None yet: the CLI and Terraform accept exactly a 404 here.
    assert_exo_error(&exo(&c, Method::GET, &path, None).await, StatusCode::NOT_FOUND);
    let bad = exo(&c, Method::POST, &path, Some(json!({"domain-name": "not a name"}))).await;
    assert_exo_error(&bad, StatusCode::BAD_REQUEST);
    assert_exo_error(&exo(&c, Method::GET, &path, None).await, StatusCode::NOT_FOUND);
    done(&c, &exo(&c, Method::POST, &path, Some(json!({"domain-name": "mail.example.org."}))).await).await;
    let r = exo(&c, Method::GET, &path, None).await;
    assert_eq!(r.body, json!({"domain-name": "mail.example.org."}), "{}", r.text);
    done(&c, &exo(&c, Method::DELETE, &path, None).await).await;
    assert_exo_error(&exo(&c, Method::GET, &path, None).await, StatusCode::NOT_FOUND);
    assert_exo_error(&exo(&c, Method::DELETE, &path, None).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_disk_size_range_stated_is_the_one_that_holds() {
    let c = Cloud::new().await;
    let body = json!({
        "disk-size": 20000,
        "instance-type": instance_type(&c, "standard", "small").await,
        "template": go_template(&c, "busybox").await,
    });
    let r = exo(&c, Method::POST, "/v2/instance", Some(body)).await;
    assert_exo_error(&r, StatusCode::BAD_REQUEST);
    let max = nimbus_engine::MAX_DISK_GB.to_string();
    assert!(r.body["message"].as_str().unwrap().contains(&format!("between 10 and {max}")), "{}", r.text);
}

/// `public-ip-assignment: dual` (and the deprecated `ipv6-enabled`) give the instance an IPv6 address from the
/// operator's prefix besides its IPv4 one; an update can turn it on and off.
#[tokio::test]
async fn dual_assignment_gives_an_ipv6_address_from_the_operators_prefix() {
    let config = EngineConfig { ipv6_prefix: "2001:db8:77::/64".into(), ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    let dual = create_like_exo_cli(&c, "dual", json!({"public-ip-assignment": "dual"})).await;
    let i = instance(&c, &dual).await;
    assert_eq!(i["public-ip-assignment"], "dual", "{i}");
    let v6: std::net::Ipv6Addr = i["ipv6-address"].as_str().unwrap().parse().unwrap();
    assert!(v6.to_string().starts_with("2001:db8:77:0:"), "{v6}");
    assert!(i["public-ip"].is_string(), "an IPv4 address too: {i}");
    let old_style = create_like_exo_cli(&c, "old", json!({"public-ip-assignment": null, "ipv6-enabled": true})).await;
    let o = instance(&c, &old_style).await;
    assert_eq!(o["public-ip-assignment"], "dual", "{o}");
    assert_ne!(o["ipv6-address"], i["ipv6-address"], "every instance its own address");
    // The address stays the instance's, and goes with the assignment.
    let r = exo(&c, Method::PUT, &format!("/v2/instance/{dual}"), Some(json!({"public-ip-assignment": "inet4"}))).await;
    done(&c, &r).await;
    assert!(instance(&c, &dual).await.get("ipv6-address").is_none());
    let r = exo(&c, Method::PUT, &format!("/v2/instance/{dual}"), Some(json!({"public-ip-assignment": "dual"}))).await;
    done(&c, &r).await;
    assert_eq!(instance(&c, &dual).await["ipv6-address"], i["ipv6-address"]);
    let inet4 = create_like_exo_cli(&c, "inet4", json!({})).await;
    assert!(instance(&c, &inet4).await.get("ipv6-address").is_none());
    // Found by its IPv6 address, as by its IPv4 one.
    let v6 = i["ipv6-address"].as_str().unwrap();
    let r = exo(&c, Method::GET, &format!("/v2/instance?ip-address={v6}"), None).await;
    let found: Vec<&str> = r.body["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(found, [dual.as_str()], "{}", r.text);
}

/// `exo compute instance start --rescue-profile netboot`: the instance boots the host's rescue system, for
/// that boot only (the next start boots its own); a profile Exoscale does not have is refused and starts
/// nothing, as is a rescue start of a running instance.
#[tokio::test]
async fn a_rescue_profile_start_boots_the_rescue_system_once() {
    let c = Cloud::new().await;
    let id = create_like_exo_cli(&c, "rescued", json!({})).await;
    let console = || {
        let (c, path) = (&c, format!("/v1/instances/{id}/console"));
        async move { c.get(&path, ADMIN).await.text }
    };
    let r = exo(&c, Method::PUT, &format!("/v2/instance/{id}:start"), Some(json!({"rescue-profile": "netboot"}))).await;
    assert_exo_error(&r, StatusCode::BAD_REQUEST);
    done(&c, &exo(&c, Method::PUT, &format!("/v2/instance/{id}:stop"), None).await).await;
    let r = exo(&c, Method::PUT, &format!("/v2/instance/{id}:start"), Some(json!({"rescue-profile": "pxe"}))).await;
    assert_exo_error(&r, StatusCode::BAD_REQUEST);
    assert_eq!(instance(&c, &id).await["state"], "stopped", "a refused start starts nothing");

    let r = exo(&c, Method::PUT, &format!("/v2/instance/{id}:start"), Some(json!({"rescue-profile": "netboot"}))).await;
    done(&c, &r).await;
    assert_eq!(instance(&c, &id).await["state"], "running");
    let last_boot = |log: &str| log.lines().rev().find(|l| l.contains("booted")).unwrap_or_default().to_string();
    let log = console().await;
    assert!(last_boot(&log).contains("booted the rescue system"), "{log}");

    done(&c, &exo(&c, Method::PUT, &format!("/v2/instance/{id}:stop"), None).await).await;
    done(&c, &exo(&c, Method::PUT, &format!("/v2/instance/{id}:start"), None).await).await;
    let log = console().await;
    assert!(last_boot(&log).contains("booted its own system"), "{log}");
}
