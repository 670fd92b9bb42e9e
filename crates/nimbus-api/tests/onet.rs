//! The ONET dialect through the real router, engine and SQLite store on the sim driver: the seed's full
//! instance object, PUT's modifiable properties and its refusals, resize, delete, pagination, DRF-shaped
//! errors, tenancy, and the same instance seen through the native API.

#[path = "api/common.rs"]
mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{eventually, Cloud, Reply, ADMIN};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

struct Onet {
    cloud: Cloud,
    org: String,
    project: String,
    sizes: Value,
    busybox: String,
}

impl Onet {
    async fn new() -> Onet {
        let cloud = Cloud::new().await;
        let who = cloud.get("/v1/whoami", ADMIN).await;
        let sizes = cloud.get("/v1/instance-types", ADMIN).await.body["items"].clone();
        let templates = cloud.get("/v1/templates", ADMIN).await.body["items"].clone();
        let busybox = templates.as_array().unwrap().iter().find(|t| t["name"] == "busybox").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        Onet {
            org: who.body["organization"]["id"].as_str().unwrap().into(),
            project: who.body["project"]["id"].as_str().unwrap().into(),
            cloud,
            sizes,
            busybox,
        }
    }

    fn base(&self) -> String {
        format!("/v1/organizations/{}/projects/{}/compute", self.org, self.project)
    }

    fn size(&self, name: &str) -> String {
        self.sizes.as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()["id"].as_str().unwrap().into()
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.cloud.call(method, &format!("{}{path}", self.base()), ADMIN, body).await
    }

    async fn create(&self, name: &str, extra: Value) -> Reply {
        let mut body = json!({"name": name, "size_id": self.size("standard.small"), "image_id": self.busybox});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        self.call(Method::POST, "/instances", Some(body)).await
    }

    /// Creates an instance through ONET and waits until the native API sees it running.
    async fn running(&self, name: &str, extra: Value) -> Value {
        let r = self.create(name, extra).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let id = r.id();
        eventually("running", || async { self.cloud.state(ADMIN, &id).await == "running" }).await;
        self.call(Method::GET, &format!("/instances/{id}"), None).await.body
    }
}

fn is_decimal(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_else(|| panic!("decimal {v} is not a string"));
    // ^-?\d{0,13}(?:\.\d{0,2})?$ , and ONET emits two places.
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    int.len() <= 13
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.len() == 2
        && frac.chars().all(|c| c.is_ascii_digit())
}

fn time_of(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap_or_else(|| panic!("time {v} is not a string")), &Rfc3339)
        .unwrap_or_else(|e| panic!("{v} is not RFC 3339: {e}"))
}

fn keys(v: &Value, expected: &[&str], what: &str) {
    let obj = v.as_object().unwrap_or_else(|| panic!("{what} is not an object: {v}"));
    for k in expected {
        assert!(obj.contains_key(*k), "{what} lacks {k}: {v}");
    }
}

const LOCATION: &[&str] = &["id", "name", "slug", "country_code", "created", "modified", "is_active"];

#[tokio::test]
async fn the_instance_object_has_every_field_of_the_seed() {
    let o = Onet::new().await;
    let created = o.create("web-1", json!({"tags": {"env": "prod"}, "hostname": "web-1.example"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["status"], "provisioning");
    assert_eq!(created.body["is_installed"], false);
    // A second instance, so that legacy ids can be seen to differ.
    o.running("other-1", json!({})).await;
    let id = created.id();
    eventually("running", || async { o.cloud.state(ADMIN, &id).await == "running" }).await;
    let r = o.call(Method::GET, &format!("/instances/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let i = &r.body;
    keys(
        i,
        &[
            "id",
            "legacy_id",
            "organization_id",
            "project_id",
            "name",
            "status",
            "size",
            "location",
            "vpc",
            "image",
            "os_name",
            "primary_ipv4",
            "primary_ipv6",
            "ip_addresses",
            "volumes",
            "billing_start_date",
            "billing_end_date",
            "next_billing_date",
            "cancellation_requested_at",
            "cancellation_reason",
            "bandwidth_used_gb",
            "is_active",
            "is_installed",
            "state_sync",
            "created",
            "modified",
            "hostname",
            "billing_cycle",
            "tags",
        ],
        "instance",
    );
    assert_eq!(i["id"], id.as_str());
    assert_eq!(i["organization_id"], o.org.as_str());
    assert_eq!(i["project_id"], o.project.as_str());
    assert_eq!(i["name"], "web-1");
    assert_eq!(i["hostname"], "web-1.example");
    assert_eq!(i["status"], "active");
    assert_eq!(i["is_active"], true);
    assert_eq!(i["is_installed"], true);
    assert_eq!(i["billing_cycle"], "hourly");
    assert_eq!(i["tags"], json!({"env": "prod"}));
    assert!(i["cancellation_requested_at"].is_null() && i["cancellation_reason"].is_null());
    let legacy = i["legacy_id"].as_i64().expect("legacy_id is an integer");
    assert!(legacy > 0 && legacy <= i32::MAX as i64);
    let again = o.call(Method::GET, &format!("/instances/{id}"), None).await;
    assert_eq!(again.body["legacy_id"], legacy, "legacy_id is stable");
    assert_ne!(
        created.body["legacy_id"],
        o.call(Method::GET, "/instances", None).await.body["results"][1]["legacy_id"]
    );

    // Size, with its prices per billing cycle from the type's hourly and monthly prices.
    let size = &i["size"];
    keys(
        size,
        &[
            "id",
            "name",
            "slug",
            "vcpu",
            "ram_mb",
            "bandwidth_mbps",
            "available_volumes",
            "pricing_options",
            "available_addons",
            "created",
            "modified",
            "cpu_model",
            "is_active",
            "description",
        ],
        "size",
    );
    assert_eq!(size["id"], o.size("standard.small").as_str());
    assert_eq!(size["slug"], "standard.small");
    assert_eq!((size["vcpu"].as_u64(), size["ram_mb"].as_u64()), (Some(2), Some(2048)));
    keys(&size["available_volumes"][0], &["id", "volume_type", "disk_gb", "is_default", "is_active"], "volume option");
    let native_type = o.sizes.as_array().unwrap().iter().find(|t| t["name"] == "standard.small").unwrap().clone();
    let options = size["pricing_options"].as_array().unwrap();
    for p in options {
        keys(p, &["id", "billing_cycle", "price", "discount_percent", "is_default", "is_active"], "pricing option");
        assert!(is_decimal(&p["price"]) && is_decimal(&p["discount_percent"]), "{p}");
    }
    let price = |cycle: &str| options.iter().find(|p| p["billing_cycle"] == cycle).unwrap()["price"].clone();
    let monthly = native_type["price_monthly"].as_f64().unwrap();
    assert_eq!(price("monthly"), format!("{monthly:.2}"));
    assert_eq!(price("annually"), format!("{:.2}", monthly * 12.0));
    assert!(size["available_addons"].is_array());

    keys(&i["location"], LOCATION, "location");
    assert_eq!(i["location"]["slug"], "local");
    keys(&i["vpc"], &["id", "name", "cidr_block", "location", "created", "modified", "is_active"], "vpc");
    assert_eq!(i["vpc"]["cidr_block"], "10.213.0.0/24");
    keys(&i["vpc"]["location"], LOCATION, "vpc location");
    keys(
        &i["image"],
        &[
            "id",
            "organization_id",
            "name",
            "slug",
            "os_name",
            "os_version",
            "language",
            "is_windows",
            "requires_license_addon",
            "created",
            "modified",
            "description",
            "visibility",
            "os_architecture",
            "is_active",
            "is_featured",
            "min_disk_gb",
            "min_ram_mb",
        ],
        "image",
    );
    assert_eq!(i["image"]["id"], o.busybox.as_str());
    assert_eq!(i["os_name"], i["image"]["os_name"]);

    // Addresses: the primary IPv4 names the address object, which carries the instance network's plan.
    let ips = i["ip_addresses"].as_array().unwrap();
    assert!(!ips.is_empty(), "{i}");
    let ip = &ips[0];
    keys(
        ip,
        &[
            "id",
            "address",
            "ip_type",
            "interface",
            "netmask",
            "gateway",
            "network_id",
            "vlan",
            "mac_address",
            "is_primary",
            "created",
            "modified",
            "reverse_dns",
        ],
        "ip address",
    );
    assert_eq!(ip["ip_type"], "ipv4");
    assert_eq!(ip["is_primary"], true);
    assert_eq!(i["primary_ipv4"], ip["id"]);
    assert!(i["primary_ipv6"].is_null());
    assert_eq!((ip["netmask"].as_str(), ip["gateway"].as_str()), (Some("255.255.255.0"), Some("10.213.0.1")));
    assert_eq!(ip["network_id"], i["vpc"]["id"]);

    let vol = &i["volumes"][0];
    keys(
        vol,
        &["id", "name", "size_gb", "status", "disk_name", "location", "price_monthly", "is_active", "created"],
        "volume",
    );
    assert_eq!(vol["size_gb"], 10);
    assert!(is_decimal(&vol["price_monthly"]));

    let sync = &i["state_sync"];
    keys(
        sync,
        &[
            "id",
            "vm_status",
            "last_synced_at",
            "uptime",
            "cpu_usage",
            "memory_usage_mb",
            "disk_usage_gb",
            "network_in_bytes",
            "network_out_bytes",
            "sync_source",
        ],
        "state_sync",
    );
    assert_eq!(sync["vm_status"], "running");
    assert_eq!(sync["sync_source"], "sim");
    assert!(sync["uptime"].is_i64() && sync["network_in_bytes"].is_u64() && sync["memory_usage_mb"].is_u64());
    assert!(
        is_decimal(&sync["cpu_usage"]) && is_decimal(&sync["disk_usage_gb"]) && is_decimal(&i["bandwidth_used_gb"])
    );
    time_of(&sync["last_synced_at"]);

    // Hourly billing: the current hour of the instance's life, the next one begins at its end.
    let created_at = time_of(&i["created"]);
    let (start, end) = (time_of(&i["billing_start_date"]), time_of(&i["billing_end_date"]));
    assert_eq!(start, created_at);
    assert_eq!(end - start, time::Duration::hours(1));
    assert_eq!(i["next_billing_date"], i["billing_end_date"]);
    time_of(&i["modified"]);
}

#[tokio::test]
async fn an_onet_instance_is_the_same_instance_natively() {
    let o = Onet::new().await;
    let i = o.running("shared-1", json!({"tags": {"team": "blue", "env": "dev"}})).await;
    let id = i["id"].as_str().unwrap();
    let native = o.cloud.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!(native.status, StatusCode::OK, "{}", native.text);
    assert_eq!(native.body["id"], i["id"]);
    assert_eq!(native.body["name"], i["name"]);
    assert_eq!(native.body["labels"], i["tags"]);
    assert_eq!(native.body["state"], "running");
    assert_eq!(i["status"], "active");
    assert_eq!(native.body["instance_type"], i["size"]["slug"]);
    assert_eq!(native.body["disk_size_gb"], i["volumes"][0]["size_gb"]);
    assert_eq!(native.body["ip_addresses"][0], i["ip_addresses"][0]["address"]);
    // And a change made natively shows through ONET.
    let p = o
        .cloud
        .call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(json!({"labels": {"env": null}})))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let again = o.call(Method::GET, &format!("/instances/{id}"), None).await;
    assert_eq!(again.body["tags"], json!({"team": "blue"}));
}

#[tokio::test]
async fn put_changes_the_modifiable_properties_and_refuses_hardware() {
    let o = Onet::new().await;
    let i = o.running("put-1", json!({"tags": {"a": "1", "b": "2"}})).await;
    let id = i["id"].as_str().unwrap().to_string();
    let path = format!("/instances/{id}");
    // A client echoes the object back with its changes: same hardware ids are accepted.
    let body = json!({
        "name": "put-renamed", "size_id": i["size"]["id"], "location_id": i["location"]["id"],
        "image_id": i["image"]["id"], "vpc_id": i["vpc"]["id"], "os_name": "Busybox Custom",
        "hostname": i["hostname"], "billing_cycle": "monthly", "tags": {"b": "3", "c": "4"},
    });
    let r = o.call(Method::PUT, &path, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["name"], "put-renamed");
    assert_eq!(r.body["tags"], json!({"b": "3", "c": "4"}), "PUT replaces the tags");
    assert_eq!(r.body["billing_cycle"], "monthly");
    assert_eq!(r.body["os_name"], "Busybox Custom");
    let (start, end) = (time_of(&r.body["billing_start_date"]), time_of(&r.body["billing_end_date"]));
    assert_eq!(start, time_of(&r.body["created"]));
    assert!((28..=31).contains(&(end - start).whole_days()), "a monthly period: {start} .. {end}");
    let native = o.cloud.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!(native.body["name"], "put-renamed");
    assert_eq!(native.body["labels"], json!({"b": "3", "c": "4"}));

    // Another size is refused and pointed to resize; nothing in the request is written.
    let r =
        o.call(Method::PUT, &path, Some(json!({"name": "not-written", "size_id": o.size("standard.medium")}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.body["size_id"][0].as_str().unwrap().contains("resize"), "{}", r.text);
    let r = o.call(Method::PUT, &path, Some(json!({"image_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.body["image_id"].is_array());
    let r = o.call(Method::PUT, &path, Some(json!({"location_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a"}))).await;
    assert!(r.body["location_id"].is_array(), "{}", r.text);
    assert_eq!(o.cloud.get(&format!("/v1/instances/{id}"), ADMIN).await.body["name"], "put-renamed");

    // PATCH changes only what it names.
    let r = o.call(Method::PATCH, &path, Some(json!({"billing_cycle": "annually"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["billing_cycle"], "annually");
    assert_eq!(r.body["tags"], json!({"b": "3", "c": "4"}));
    // A trailing slash is the same route.
    let r = o.call(Method::GET, &format!("{path}/"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn bad_input_gets_drf_field_errors() {
    let o = Onet::new().await;
    let i = o.running("bad-1", json!({})).await;
    let path = format!("/instances/{}", i["id"].as_str().unwrap());

    let r = o.call(Method::PUT, &path, Some(json!({"billing_cycle": "weekly"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body, json!({"billing_cycle": ["\"weekly\" is not a valid choice."]}));
    let r = o.call(Method::PUT, &path, Some(json!({"name": "n".repeat(256)}))).await;
    assert_eq!(r.body, json!({"name": ["Ensure this field has no more than 255 characters."]}));
    let r = o.call(Method::PUT, &path, Some(json!({"hostname": "h".repeat(256), "os_name": "o".repeat(101)}))).await;
    assert_eq!(
        r.body,
        json!({
            "hostname": ["Ensure this field has no more than 255 characters."],
            "os_name": ["Ensure this field has no more than 100 characters."],
        })
    );
    let r = o.call(Method::PUT, &path, Some(json!({"size_id": "not-a-uuid", "tags": ["x"]}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body, json!({"size_id": ["Must be a valid UUID."]}), "any JSON is a valid tags value");
    // Within ONET's length limit but a name no text field takes (NUL): the engine's refusal, in ONET's shape.
    let r = o.call(Method::PUT, &path, Some(json!({"name": "nul\u{0}inside"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["name"][0].is_string(), "{}", r.text);
    // Nothing above was written.
    let after = o.call(Method::GET, &path, None).await;
    assert_eq!((after.body["name"].as_str(), after.body["billing_cycle"].as_str()), (Some("bad-1"), Some("hourly")));

    let r = o.call(Method::POST, "/instances", Some(json!({"tags": {}}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for field in ["name", "size_id", "image_id"] {
        assert_eq!(r.body[field], json!(["This field is required."]), "{}", r.text);
    }
    let r = o.create("bad-2", json!({"size_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "billing_cycle": 5})).await;
    assert_eq!(
        r.body["size_id"],
        json!(["Invalid pk \"3c90c3cc-0d44-4b50-8888-8dd25736052a\" - object does not exist."])
    );
    assert_eq!(r.body["billing_cycle"], json!(["\"5\" is not a valid choice."]));
    let malformed = o
        .cloud
        .send(
            Request::builder()
                .method(Method::POST)
                .uri(format!("{}/instances", o.base()))
                .header("authorization", format!("Bearer {ADMIN}"))
                .header("content-type", "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(malformed.body["detail"].as_str().unwrap().starts_with("JSON parse error"), "{}", malformed.text);

    // Every decimal the object carries has the seed's pattern.
    let i = o.call(Method::GET, &path, None).await.body;
    for p in i["size"]["pricing_options"].as_array().unwrap() {
        assert!(is_decimal(&p["price"]));
    }
    assert!(is_decimal(&i["bandwidth_used_gb"]));
}

#[tokio::test]
async fn tenancy_and_credentials_answer_like_onet() {
    let o = Onet::new().await;
    let i = o.running("mine-1", json!({})).await;
    let id = i["id"].as_str().unwrap();
    let other_org =
        format!("/v1/organizations/3c90c3cc-0d44-4b50-8888-8dd25736052a/projects/{}/compute/instances/{id}", o.project);
    let r = o.cloud.get(&other_org, ADMIN).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::NOT_FOUND, json!({"detail": "Not found."})));
    let r = o.cloud.get(&format!("/v1/organizations/{}/projects/not-a-uuid/compute/instances", o.org), ADMIN).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Another project of the organization: its key sees its own path, not the first project's instance.
    let p = o.cloud.post("/v1/projects", ADMIN, json!({"name": "second"})).await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
    let second = p.id();
    let key = o.cloud.key("member", Some(&second)).await;
    let theirs = format!("/v1/organizations/{}/projects/{second}/compute/instances", o.org);
    let r = o.cloud.get(&format!("{theirs}/{id}"), &key).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::NOT_FOUND, json!({"detail": "No Instance matches the given query."}))
    );
    let r = o.cloud.get(&format!("{}/instances/{id}", o.base()), &key).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "the first project's path is not the second key's");
    let r = o.cloud.get(&theirs, &key).await;
    assert_eq!((r.status, r.body["count"].as_u64()), (StatusCode::OK, Some(0)));

    let unauth =
        o.cloud.send(Request::builder().uri(format!("{}/instances", o.base())).body(Body::empty()).unwrap()).await;
    assert_eq!(unauth.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauth.body, json!({"detail": "Authentication credentials were not provided."}));
    let r = o.cloud.get(&format!("{}/instances/{id}", o.base()), "wrong-secret").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["detail"].is_string());
    let r = o.call(Method::GET, "/instances/not-a-uuid", None).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::NOT_FOUND, json!({"detail": "No Instance matches the given query."}))
    );
}

#[tokio::test]
async fn lists_are_drf_pages() {
    let o = Onet::new().await;
    for n in 0..3 {
        let r = o.create(&format!("page-{n}"), json!({})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let r = o.call(Method::GET, "/instances?page_size=2", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["count"], 3);
    assert_eq!(r.body["results"].as_array().unwrap().len(), 2);
    assert!(r.body["previous"].is_null());
    let next = r.body["next"].as_str().unwrap();
    assert!(next.contains("page=2") && next.contains("page_size=2") && next.starts_with("http"), "{next}");
    let r = o.call(Method::GET, "/instances?page_size=2&page=2", None).await;
    assert_eq!(r.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["results"][0]["name"], "page-2");
    assert!(r.body["next"].is_null() && r.body["previous"].is_string());
    let r = o.call(Method::GET, "/instances?page=9", None).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::NOT_FOUND, json!({"detail": "Invalid page."})));
    let r = o.call(Method::GET, "/instances", None).await;
    assert_eq!(r.body["results"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn resize_goes_through_the_engines_scale_and_delete_cancels() {
    let o = Onet::new().await;
    let i = o.running("grow-1", json!({})).await;
    let id = i["id"].as_str().unwrap().to_string();
    let resize = format!("/instances/{id}/resize");

    let r = o.call(Method::POST, &resize, Some(json!({"size_id": o.size("standard.medium")}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a running instance is not resized: {}", r.text);
    assert!(r.body["detail"].as_str().unwrap().contains("stopped"), "{}", r.text);

    o.cloud.act(ADMIN, &id, "stop", None).await;
    let r = o.call(Method::POST, &resize, Some(json!({"size_id": o.size("cpu.small")}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.body["size_id"][0].as_str().unwrap().contains("family"), "{}", r.text);
    let r = o.call(Method::POST, &resize, Some(json!({"size_id": "nope"}))).await;
    assert_eq!(r.body, json!({"size_id": ["Must be a valid UUID."]}));

    let r = o.call(Method::POST, &resize, Some(json!({"size_id": o.size("standard.medium")}))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["task_type"], "resize_vps");
    assert_eq!(r.body["instance"]["name"], "grow-1");
    let task = o.call(Method::GET, &format!("/tasks/{}?wait=10", r.id()), None).await;
    assert_eq!(task.body["status"], "completed", "{}", task.text);
    let after = o.call(Method::GET, &format!("/instances/{id}"), None).await;
    assert_eq!(after.body["size"]["slug"], "standard.medium");
    assert_eq!(after.body["state_sync"]["vm_status"], "stopped");
    assert_eq!(o.cloud.get(&format!("/v1/instances/{id}"), ADMIN).await.body["instance_type"], "standard.medium");

    let r = o.call(Method::DELETE, &format!("/instances/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = o.call(Method::GET, &format!("/instances/{id}"), None).await;
    if r.status == StatusCode::OK {
        assert_eq!(r.body["status"], "cancelled");
        assert!(r.body["cancellation_requested_at"].is_string() && r.body["next_billing_date"].is_null());
    }
    // ONET keeps a deleted instance, terminated, listed and readable, for the retention.
    eventually("terminated", || async {
        o.call(Method::GET, &format!("/instances/{id}"), None).await.body["status"] == "terminated"
    })
    .await;
    let listed = o.call(Method::GET, "/instances", None).await;
    assert_eq!(listed.body["results"][0]["status"], "terminated", "{}", listed.text);
    assert_eq!(o.cloud.state(ADMIN, &id).await, "gone", "the native API does not show it unasked");
    let r = o.call(Method::DELETE, &format!("/instances/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_drfs_detail() {
    let o = Onet::new().await;
    let r = o.call(Method::GET, "/nothing", None).await;
    assert_eq!((r.status, &r.body), (StatusCode::NOT_FOUND, &json!({"detail": "Not found."})), "{}", r.text);
    let r = o.cloud.call(Method::GET, "/v1/organizations/x/nothing", ADMIN, None).await;
    assert_eq!((r.status, &r.body), (StatusCode::NOT_FOUND, &json!({"detail": "Not found."})), "{}", r.text);
    let r = o.call(Method::DELETE, "/instances", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);
    assert!(r.body["detail"].as_str().is_some_and(|d| d.contains("DELETE")), "{}", r.text);
}

#[tokio::test]
async fn tags_are_any_json_kept_as_given() {
    let o = Onet::new().await;
    let i = o.running("tagged-1", json!({"tags": {"cost": 12, "owners": ["a", "b"], "note": null}})).await;
    let path = format!("/instances/{}", i["id"].as_str().unwrap());
    assert_eq!(i["tags"], json!({"cost": 12, "owners": ["a", "b"], "note": null}), "{i}");
    for tags in [json!(["x", 1]), json!("plain"), json!({"nested": {"a": null}}), json!({"env": "prod"})] {
        let r = o.call(Method::PATCH, &path, Some(json!({"tags": tags}))).await;
        assert_eq!((r.status, &r.body["tags"]), (StatusCode::OK, &tags), "{}", r.text);
        assert_eq!(o.call(Method::GET, &path, None).await.body["tags"], tags);
    }
    // A map of strings is the instance's labels, as the native API sees them.
    let native = o.cloud.get(&format!("/v1/instances/{}", i["id"].as_str().unwrap()), ADMIN).await;
    assert_eq!(native.body["labels"], json!({"env": "prod"}));
    let r = o.call(Method::PATCH, &path, Some(json!({"tags": null}))).await;
    assert_eq!(r.body["tags"], json!({}), "{}", r.text);
}

#[tokio::test]
async fn power_actions_are_onet_tasks_and_status_tells_stopped_from_running() {
    let o = Onet::new().await;
    let i = o.running("power-1", json!({})).await;
    let id = i["id"].as_str().unwrap().to_string();
    let run = |action: &'static str| {
        let (o, id) = (&o, id.clone());
        async move {
            let r = o.call(Method::POST, &format!("/instances/{id}/{action}"), None).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{action}: {}", r.text);
            let task = o.call(Method::GET, &format!("/instances/{id}/tasks/{}", r.id()), None).await;
            assert_eq!(task.body["instance_id"], id.as_str(), "{}", task.text);
            let done = o.call(Method::GET, &format!("/tasks/{}?wait=10", r.id()), None).await;
            assert_eq!(done.body["status"], "completed", "{}", done.text);
            (
                r.body["task_type"].as_str().unwrap().to_string(),
                o.call(Method::GET, &format!("/instances/{id}"), None).await.body,
            )
        }
    };
    let console = || async { o.cloud.get(&format!("/v1/instances/{id}/console"), ADMIN).await.text };
    let (kind, after) = run("shutdown").await;
    assert_eq!((kind.as_str(), after["status"].as_str()), ("shutdown_vps", Some("suspended")), "{after}");
    assert_eq!(after["state_sync"]["vm_status"], "stopped");
    assert!(!console().await.contains("power cut"), "a shutdown asks the guest first");
    // Refused in ONET's words, and nothing changes.
    let r = o.call(Method::POST, &format!("/instances/{id}/reboot"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.body["detail"].as_str().is_some_and(|d| d.contains("stopped")), "{}", r.text);
    let (kind, after) = run("start").await;
    assert_eq!((kind.as_str(), after["status"].as_str()), ("start_vps", Some("active")), "{after}");
    // A stop is the hard power-off.
    let (kind, after) = run("stop").await;
    assert_eq!((kind.as_str(), after["state_sync"]["vm_status"].as_str()), ("stop_vps", Some("stopped")), "{after}");
    assert!(console().await.ends_with("sim: power cut\nPOWEROFF\n"), "{}", console().await);
    run("start").await;
    // A reset resets the VM; a reboot is asked of the guest, which powers off and boots again.
    let (kind, _) = run("reset").await;
    assert_eq!(kind, "reset_vps");
    assert!(console().await.contains("sim: reboot"), "{}", console().await);
    o.cloud.sim.inject_failure("reboot", 1);
    let (kind, after) = run("reboot").await;
    assert_eq!((kind.as_str(), after["state_sync"]["vm_status"].as_str()), ("reboot_vps", Some("running")), "{after}");
    let r = o.call(Method::POST, &format!("/instances/{id}/explode"), None).await;
    assert_eq!((r.status, &r.body), (StatusCode::NOT_FOUND, &json!({"detail": "Not found."})));
}

#[tokio::test]
async fn the_catalogs_give_the_ids_a_create_body_names() {
    let o = Onet::new().await;
    for prefix in ["/v1/compute".to_string(), o.base()] {
        let page = |what: &'static str| {
            let (o, prefix) = (&o, prefix.clone());
            async move {
                let r = o.cloud.get(&format!("{prefix}/{what}"), ADMIN).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text);
                assert_eq!(r.body["count"].as_u64(), r.body["results"].as_array().map(|a| a.len() as u64));
                r.body["results"].as_array().unwrap().clone()
            }
        };
        let sizes = page("sizes").await;
        let size = sizes.iter().find(|s| s["slug"] == "standard.small").expect("standard.small");
        let images = page("images").await;
        let image = images.iter().find(|i| i["name"] == "busybox").expect("busybox");
        let locations = page("locations").await;
        let name = format!("cat-{}", prefix.len());
        let body =
            json!({"name": name, "size_id": size["id"], "image_id": image["id"], "location_id": locations[0]["id"]});
        let r = o.call(Method::POST, "/instances", Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!((&r.body["size"]["id"], &r.body["image"]["id"]), (&size["id"], &image["id"]));
        assert_eq!(r.body["location"], locations[0]);
    }
}

#[tokio::test]
async fn names_are_any_text_and_the_hostname_is_derived_from_them() {
    let o = Onet::new().await;
    let i = o.running("Serveur de prod n°1", json!({})).await;
    assert_eq!(
        (i["name"].as_str(), i["hostname"].as_str()),
        (Some("Serveur de prod n°1"), Some("serveur-de-prod-n-1"))
    );
    let path = format!("/instances/{}", i["id"].as_str().unwrap());
    let r = o.call(Method::PATCH, &path, Some(json!({"name": "-Web (staging)"}))).await;
    assert_eq!((r.status, r.body["name"].as_str()), (StatusCode::OK, Some("-Web (staging)")), "{}", r.text);
    assert_eq!(r.body["hostname"], "serveur-de-prod-n-1", "a rename keeps the hostname");
}

/// An instance's console: `POST .../console` opens a session whose URL is the serial console's websocket,
/// usable without the API token; `GET .../console/{session_id}` shows it again; a stopped instance has none.
#[tokio::test]
async fn a_console_session_opens_the_serial_console() {
    let o = Onet::new().await;
    let i = o.running("console-1", json!({})).await;
    let id = i["id"].as_str().unwrap().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = o.cloud.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let path = format!("{}/instances/{id}/console", o.base());
    let req = Request::post(&path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let r = o.cloud.send(req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let url = r.body["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("ws://{addr}/v1/instances/{id}/console/stream?ticket=")), "{url}");
    let session = r.body["id"].as_str().unwrap();
    let req = Request::get(format!("{path}/{session}"))
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let again = o.cloud.send(req).await;
    assert_eq!((again.status, again.body["url"].as_str()), (StatusCode::OK, Some(url.as_str())), "{}", again.text);
    let (mut socket, response) = tokio_tungstenite::connect_async(&url).await.expect("the session's URL opens");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket.close(None).await.ok();

    o.cloud.act(ADMIN, &id, "stop", None).await;
    let r = o.call(Method::POST, &format!("/instances/{id}/console"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.body["detail"].as_str().is_some_and(|d| d.contains("stopped")), "{}", r.text);
}
