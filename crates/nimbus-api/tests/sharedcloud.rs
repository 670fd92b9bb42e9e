//! The SharedCloud dialect through the real router, engine and SQLite store on the sim driver: accounts and
//! token login, the seed's instance object with numeric type and status and day-first times, form-encoded
//! and JSON bodies, the API's validation messages, DRF-shaped 401/404 bodies, one user never seeing
//! another's instances, GPU models and switching between CPU and GPU, account changes and deletion, and the
//! same instances seen through the native API.

#[path = "api/common.rs"]
mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Cloud, Reply, ADMIN};
use serde_json::{json, Value};

struct SharedCloud {
    cloud: Cloud,
}

/// How a request body is sent: as `sharedcloud-cli` does (a form) or as JSON.
enum Payload<'a> {
    None,
    Form(&'a [(&'a str, &'a str)]),
    FormOwned(Vec<(String, String)>),
    Json(Value),
}

impl SharedCloud {
    async fn new() -> SharedCloud {
        let config = nimbus_engine::EngineConfig { allow_registration: true, ..Default::default() };
        SharedCloud { cloud: Cloud::with(nimbus_driver::SimConfig::default(), config).await }
    }

    async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Payload<'_>) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Token {t}"));
        }
        let form =
            |pairs: Vec<(String, String)>| form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let body = match body {
            Payload::None => Body::empty(),
            Payload::Form(pairs) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(form(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
            }
            Payload::FormOwned(pairs) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(form(pairs))
            }
            Payload::Json(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
        };
        self.cloud.send(req.body(body).unwrap()).await
    }

    /// Registers `username` and logs in; returns the token.
    async fn user(&self, username: &str) -> String {
        let pairs = vec![
            ("email".to_string(), format!("{username}@example.com")),
            ("username".to_string(), username.to_string()),
            ("password".to_string(), format!("{username}-blablabla")),
        ];
        let r = self.send(Method::POST, "/api/v1/users/", None, Payload::FormOwned(pairs)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        self.log_in(username, &format!("{username}-blablabla")).await
    }

    async fn log_in(&self, username: &str, password: &str) -> String {
        let pairs =
            vec![("username".to_string(), username.to_string()), ("password".to_string(), password.to_string())];
        let r = self.send(Method::POST, "/api/v1/api-token-auth/", None, Payload::FormOwned(pairs)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["token"].as_str().unwrap().to_string()
    }

    async fn create(&self, token: &str, body: Payload<'_>) -> Reply {
        self.send(Method::POST, "/api/v1/instances/", Some(token), body).await
    }

    async fn created(&self, token: &str, body: Payload<'_>) -> Value {
        let r = self.create(token, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body
    }

    async fn list(&self, token: &str) -> Vec<Value> {
        let r = self.send(Method::GET, "/api/v1/instances/", Some(token), Payload::None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body.as_array().unwrap().clone()
    }

    async fn patch(&self, token: &str, uuid: &str, body: Payload<'_>) -> Reply {
        self.send(Method::PATCH, &format!("/api/v1/instances/{uuid}/"), Some(token), body).await
    }

    async fn native(&self, id: &str) -> Value {
        let r = self.cloud.get(&format!("/v1/instances/{id}"), ADMIN).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body
    }

    /// The SharedCloud uuid of a GPU model, by codename.
    async fn gpu(&self, token: &str, codename: &str) -> String {
        let r = self.send(Method::GET, "/api/v1/gpus/", Some(token), Payload::None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let gpu = r.body.as_array().unwrap().iter().find(|g| g["codename"] == codename).cloned();
        gpu.unwrap_or_else(|| panic!("no GPU {codename} in {}", r.text))["uuid"].as_str().unwrap().to_string()
    }

    async fn account_patch(&self, token: &str, pairs: &[(&str, &str)]) -> Reply {
        self.send(Method::PATCH, "/api/v1/users/account/", Some(token), Payload::Form(pairs)).await
    }

    async fn log_in_status(&self, username: &str, password: &str) -> StatusCode {
        let pairs = [("username", username), ("password", password)];
        self.send(Method::POST, "/api/v1/api-token-auth/", None, Payload::Form(&pairs)).await.status
    }
}

fn is_day_first_time(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    time::PrimitiveDateTime::parse(
        s,
        time::macros::format_description!("[day]-[month]-[year] [hour]:[minute]:[second]"),
    )
    .is_ok()
}

/// The first message of a DRF field error.
fn message(r: &Reply, field: &str) -> String {
    r.body[field][0].as_str().unwrap_or_else(|| panic!("no {field} error in {}", r.text)).to_string()
}

#[tokio::test]
async fn a_user_registers_logs_in_and_manages_an_instance_as_the_cli_does() {
    let sc = SharedCloud::new().await;
    let token = sc.user("alice").await;
    assert_eq!(token, sc.log_in("alice", "alice-blablabla").await, "one token per user, as DRF's");

    let r = sc
        .create(
            &token,
            Payload::Form(&[
                ("name", "instance1"),
                ("type", "1"),
                ("ask_price", "1.5"),
                ("max_num_parallel_jobs", "3"),
            ]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let i = r.body;
    let uuid = i["uuid"].as_str().unwrap().to_string();
    assert_eq!(
        (&i["name"], &i["type"], &i["status"], &i["ask_price"], &i["max_num_parallel_jobs"]),
        (&json!("instance1"), &json!(1), &json!(1), &json!(1.5), &json!(3))
    );
    assert_eq!((&i["gpu"], &i["gpu_name"]), (&Value::Null, &json!("n/a")));
    assert_eq!((&i["num_running_jobs"], &i["num_assigned_jobs"]), (&json!(0), &json!(0)));
    assert_eq!((&i["downloaded_images"], &i["last_connection"]), (&json!([]), &Value::Null));
    for key in ["created_at", "updated_at", "current_server_time"] {
        assert!(is_day_first_time(&i[key]), "{key}: {}", i[key]);
    }

    let listed = sc.list(&token).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["uuid"], uuid.as_str());
    let got = sc.send(Method::GET, &format!("/api/v1/instances/{uuid}/"), Some(&token), Payload::None).await;
    assert_eq!((got.status, &got.body["name"]), (StatusCode::OK, &json!("instance1")));

    // The CLI's PATCH: only the options given, and the uuid echoed back.
    let r = sc
        .patch(
            &token,
            &uuid,
            Payload::Form(&[
                ("uuid", &uuid),
                ("name", "renamed"),
                ("ask_price", "2.5"),
                ("max_num_parallel_jobs", "5"),
            ]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (&r.body["name"], &r.body["ask_price"], &r.body["max_num_parallel_jobs"]),
        (&json!("renamed"), &json!(2.5), &json!(5))
    );
    assert_eq!(r.body["uuid"], uuid.as_str());

    // PUT takes JSON too, and needs name and ask_price.
    let path = format!("/api/v1/instances/{uuid}/");
    let r = sc.send(Method::PUT, &path, Some(&token), Payload::Json(json!({"name": "put-name"}))).await;
    assert_eq!((r.status, message(&r, "ask_price")), (StatusCode::BAD_REQUEST, "This field is required.".into()));
    let r =
        sc.send(Method::PUT, &path, Some(&token), Payload::Json(json!({"name": "put-name", "ask_price": 0.02}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (&r.body["name"], &r.body["ask_price"], &r.body["max_num_parallel_jobs"]),
        (&json!("put-name"), &json!(0.02), &json!(5))
    );

    let r = sc.send(Method::DELETE, &path, Some(&token), Payload::None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert!(sc.list(&token).await.is_empty(), "a deleted instance is gone at once");
    for method in [Method::GET, Method::DELETE, Method::PATCH] {
        let r = sc.send(method.clone(), &path, Some(&token), Payload::None).await;
        assert_eq!((r.status, &r.body), (StatusCode::NOT_FOUND, &json!({"detail": "Not found."})), "{method}");
    }
}

#[tokio::test]
async fn credentials_are_checked_the_drf_way() {
    let sc = SharedCloud::new().await;
    let r = sc.send(Method::GET, "/api/v1/instances/", None, Payload::None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body, json!({"detail": "Authentication credentials were not provided."}));
    assert_eq!(r.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Token");
    for path in ["/api/v1/instances/", "/api/v1/instances", "/api/v1/gpus/", "/api/v1/users/"] {
        let r = sc.send(Method::GET, path, Some("not-a-token"), Payload::None).await;
        assert_eq!((r.status, &r.body), (StatusCode::UNAUTHORIZED, &json!({"detail": "Invalid token."})), "{path}");
    }
    // A Bearer header is not SharedCloud's scheme.
    let req = Request::get("/api/v1/instances/").header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
    let r = sc.cloud.send(req.body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    sc.user("bob").await;
    let bad = [("username", "bob"), ("password", "wrong-password")];
    let r = sc.send(Method::POST, "/api/v1/api-token-auth/", None, Payload::Form(&bad)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body, json!({"non_field_errors": ["Unable to log in with provided credentials."]}));
    let nobody = [("username", "nobody"), ("password", "whatever-pass")];
    let r = sc.send(Method::POST, "/api/v1/api-token-auth/", None, Payload::Form(&nobody)).await;
    assert_eq!(r.body, json!({"non_field_errors": ["Unable to log in with provided credentials."]}));
    let r = sc.send(Method::POST, "/api/v1/api-token-auth/", None, Payload::Form(&[("username", "bob")])).await;
    assert_eq!((r.status, &r.body), (StatusCode::BAD_REQUEST, &json!({"password": ["This field is required."]})));
}

#[tokio::test]
async fn registration_refuses_taken_names_and_weak_passwords() {
    let sc = SharedCloud::new().await;
    sc.user("carol").await;
    let again = [("email", "c2@example.com"), ("username", "carol"), ("password", "another-good-one")];
    let r = sc.send(Method::POST, "/api/v1/users/", None, Payload::Form(&again)).await;
    assert_eq!(
        (r.status, message(&r, "username")),
        (StatusCode::BAD_REQUEST, "A user with that username already exists.".into())
    );
    let short = [("email", "d@example.com"), ("username", "dave"), ("password", "short")];
    let r = sc.send(Method::POST, "/api/v1/users/", None, Payload::Form(&short)).await;
    assert!(message(&r, "password").contains("too short"), "{}", r.text);
    let common = [("email", "d@example.com"), ("username", "dave"), ("password", "password")];
    let r = sc.send(Method::POST, "/api/v1/users/", None, Payload::Form(&common)).await;
    assert!(message(&r, "password").contains("too common"), "{}", r.text);
    let email = [("email", "not-an-email"), ("username", "dave"), ("password", "good-password")];
    let r = sc.send(Method::POST, "/api/v1/users/", None, Payload::Form(&email)).await;
    assert_eq!(message(&r, "email"), "Enter a valid email address.");

    let token = sc.log_in("carol", "carol-blablabla").await;
    let r = sc.send(Method::GET, "/api/v1/users/", Some(&token), Payload::None).await;
    let me = &r.body[0];
    assert_eq!(
        (&me["username"], &me["email"], &me["balance"]),
        (&json!("carol"), &json!("carol@example.com"), &json!(0.0))
    );
    assert!(is_day_first_time(&me["date_joined"]) && is_day_first_time(&me["last_login"]), "{}", r.text);
}

#[tokio::test]
async fn validation_messages_are_the_ones_the_cli_knows() {
    let sc = SharedCloud::new().await;
    let t = sc.user("erin").await;
    let titan = sc.gpu(&t, "titanv").await;
    let titan = titan.as_str();

    let r = sc.create(&t, Payload::Form(&[("name", "x")])).await;
    assert_eq!(r.body, json!({"ask_price": ["This field is required."]}));
    let r = sc.create(&t, Payload::Form(&[("name", "x"), ("ask_price", "0.0001")])).await;
    assert_eq!(message(&r, "ask_price"), "\"ask_price\" cannot be smaller than $0.001");
    let r = sc.create(&t, Payload::Form(&[("name", "x"), ("ask_price", "cheap")])).await;
    assert_eq!(message(&r, "ask_price"), "A valid number is required.");
    let r = sc.create(&t, Payload::Form(&[("name", "x"), ("ask_price", "1"), ("type", "2")])).await;
    assert!(message(&r, "gpu").ends_with("needs to be provided if the instance is type GPU"), "{}", r.text);
    let r = sc.create(&t, Payload::Form(&[("name", "x"), ("ask_price", "1"), ("type", "1"), ("gpu", titan)])).await;
    assert!(
        message(&r, "gpu").ends_with("is unnecessary because the instance is not, or not gonna be type GPU anymore")
    );
    let r = sc
        .create(
            &t,
            Payload::Form(&[
                ("name", "x"),
                ("ask_price", "1"),
                ("type", "2"),
                ("gpu", titan),
                ("max_num_parallel_jobs", "2"),
            ]),
        )
        .await;
    assert!(message(&r, "max_num_parallel_jobs")
        .ends_with("is invalid. All GPU instances can only process one job at a time"));
    let r = sc.create(&t, Payload::Form(&[("name", "x"), ("ask_price", "1"), ("type", "3")])).await;
    assert_eq!(message(&r, "type"), "\"3\" is not a valid choice.");
    assert!(sc.list(&t).await.is_empty(), "nothing refused was made");

    let cpu =
        sc.created(&t, Payload::Form(&[("name", "cpu1"), ("ask_price", "1.5"), ("max_num_parallel_jobs", "3")])).await;
    let uuid = cpu["uuid"].as_str().unwrap();
    // Field errors come before the rules between fields.
    let r = sc.patch(&t, uuid, Payload::Form(&[("ask_price", "0.0001"), ("gpu", titan)])).await;
    assert_eq!(r.body, json!({"ask_price": ["\"ask_price\" cannot be smaller than $0.001"]}));
    let r = sc.patch(&t, uuid, Payload::Form(&[("type", "2"), ("gpu", titan)])).await;
    assert!(message(&r, "max_num_parallel_jobs")
        .starts_with("current set value (3) is invalid for a GPU instance. Please set it to 1"));
    let r = sc.patch(&t, uuid, Payload::Form(&[("type", "2"), ("gpu", titan), ("max_num_parallel_jobs", "3")])).await;
    assert!(message(&r, "max_num_parallel_jobs").contains("All GPU instances can only process one job at a time"));
    let r = sc.patch(&t, uuid, Payload::Form(&[("gpu", titan)])).await;
    assert!(message(&r, "gpu").contains("is unnecessary"), "{}", r.text);
    let unchanged = &sc.list(&t).await[0];
    assert_eq!((&unchanged["ask_price"], &unchanged["max_num_parallel_jobs"]), (&json!(1.5), &json!(3)));
}

#[tokio::test]
async fn users_see_only_their_own_instances_newest_first() {
    let sc = SharedCloud::new().await;
    let (frank, grace) = (sc.user("frank").await, sc.user("grace").await);
    let first = sc.created(&frank, Payload::Form(&[("name", "first"), ("ask_price", "1")])).await;
    let second = sc.created(&frank, Payload::Json(json!({"name": "second", "ask_price": 2, "type": "cpu"}))).await;
    let names: Vec<Value> = sc.list(&frank).await.iter().map(|i| i["name"].clone()).collect();
    assert_eq!(names, vec![json!("second"), json!("first")]);
    assert!(sc.list(&grace).await.is_empty());
    let path = format!("/api/v1/instances/{}/", first["uuid"].as_str().unwrap());
    for method in [Method::GET, Method::DELETE] {
        let r = sc.send(method, &path, Some(&grace), Payload::None).await;
        assert_eq!((r.status, &r.body), (StatusCode::NOT_FOUND, &json!({"detail": "Not found."})));
    }
    let r = sc.patch(&grace, first["uuid"].as_str().unwrap(), Payload::Form(&[("name", "stolen")])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(sc.list(&frank).await.len(), 2);
    // Each account has a project of its own: the bootstrap administrator's project holds none of them.
    let native = sc.cloud.get("/v1/instances", ADMIN).await;
    assert_eq!(native.body["items"], json!([]), "{}", native.text);
    let _ = second;
}

#[tokio::test]
async fn instances_are_the_same_through_the_native_api() {
    let sc = SharedCloud::new().await;
    // Any API key of the core speaks SharedCloud for its own project: here the administrator's.
    let titan = sc.gpu(ADMIN, "titanv").await;
    assert_eq!(titan, "caf0daeb-ba23-4499-b4f9-8b4965714366", "SharedCloud's own uuid of its Titan V");
    let body = json!({"name": "trainer", "type": 2, "gpu": titan, "ask_price": 0.75});
    let i = sc.created(ADMIN, Payload::Json(body)).await;
    assert_eq!(
        (&i["type"], &i["gpu"], &i["gpu_name"], &i["max_num_parallel_jobs"]),
        (&json!(2), &json!(titan), &json!(" Nvidia Titan V 12GB"), &json!(1))
    );
    let id = i["uuid"].as_str().unwrap();
    let n = sc.native(id).await;
    assert_eq!(
        (&n["name"], &n["instance_type"], &n["gpus"], &n["gpu_model"], &n["price_hourly"]),
        (&json!("trainer"), &json!("gpu.small"), &json!(1), &json!("titanv"), &json!(0.75))
    );
    assert_eq!(n["state"], "stopped", "SharedCloud instances start when their owner starts them");

    // Start and stop are the instance's status; a running instance keeps its hardware.
    let gtx = sc.gpu(ADMIN, "1080").await;
    let r = sc.send(Method::PATCH, &format!("/api/v1/instances/{id}/start/"), Some(ADMIN), Payload::None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    common::eventually("running", || async { sc.native(id).await["state"] == "running" }).await;
    let listed = sc.list(ADMIN).await;
    assert_eq!(listed[0]["status"], 2);
    let r = sc.patch(ADMIN, id, Payload::Json(json!({"gpu": gtx}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a running instance keeps its GPU: {}", r.text);
    assert!(message(&r, "gpu").contains("stopped"), "{}", r.text);
    let r = sc.patch(ADMIN, id, Payload::Form(&[("type", "1")])).await;
    assert!(message(&r, "type").contains("stopped"), "{}", r.text);
    assert_eq!(sc.native(id).await["gpu_model"], "titanv");
    let r = sc.send(Method::PATCH, &format!("/api/v1/instances/{id}/stop/"), Some(ADMIN), Payload::None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    common::eventually("stopped", || async { sc.native(id).await["state"] == "stopped" }).await;

    // Another GPU model is new hardware for the stopped instance: Nimbus scales it onto that model.
    let r = sc.patch(ADMIN, id, Payload::Json(json!({"gpu": gtx, "ask_price": "1.25"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (&r.body["gpu"], &r.body["gpu_name"], &r.body["ask_price"]),
        (&json!(gtx), &json!(" Nvidia GeForce GTX 1080 8GB"), &json!(1.25))
    );
    let n = sc.native(id).await;
    assert_eq!(
        (&n["instance_type"], &n["gpu_model"], &n["price_hourly"]),
        (&json!("gpu.small"), &json!("1080"), &json!(1.25))
    );
    // CPU and back to GPU, as the CLI's update tests do: a scale across families, asked for by SharedCloud.
    let r = sc.patch(ADMIN, id, Payload::Form(&[("type", "1"), ("max_num_parallel_jobs", "4")])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (&r.body["type"], &r.body["gpu"], &r.body["gpu_name"], &r.body["max_num_parallel_jobs"]),
        (&json!(1), &Value::Null, &json!("n/a"), &json!(4))
    );
    let n = sc.native(id).await;
    assert_eq!(
        (&n["instance_type"], &n["gpus"], &n["gpu_model"], &n["state"]),
        (&json!("standard.small"), &json!(0), &Value::Null, &json!("stopped"))
    );
    let r = sc.patch(ADMIN, id, Payload::Form(&[("type", "2"), ("gpu", &titan), ("max_num_parallel_jobs", "1")])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((&r.body["type"], &r.body["gpu"]), (&json!(2), &json!(titan)));
    let n = sc.native(id).await;
    assert_eq!((&n["instance_type"], &n["gpu_model"]), (&json!("gpu.small"), &json!("titanv")));

    // A native rename shows in SharedCloud, and an instance made natively shows there too.
    let r = sc.cloud.call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(json!({"name": "renamed"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let native_id = sc.cloud.instance(ADMIN, "native-one", json!({})).await;
    let listed = sc.list(ADMIN).await;
    let native_one = listed.iter().find(|i| i["uuid"] == native_id.as_str()).expect("native instance listed");
    assert_eq!((&native_one["type"], &native_one["status"]), (&json!(1), &json!(2)));
    assert!(native_one["ask_price"].as_f64().unwrap() > 0.0, "the type's list price");
    assert!(listed.iter().any(|i| i["name"] == "renamed"));

    // Deleting through SharedCloud deletes the Nimbus instance.
    let r = sc.send(Method::DELETE, &format!("/api/v1/instances/{id}"), Some(ADMIN), Payload::None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    common::eventually("gone", || async {
        sc.cloud.get(&format!("/v1/instances/{id}"), ADMIN).await.status == StatusCode::NOT_FOUND
    })
    .await;
}

#[tokio::test]
async fn deleting_an_account_deletes_its_instances_project_and_organization_and_frees_its_name() {
    let sc = SharedCloud::new().await;
    let token = sc.user("heidi").await;
    let me = sc.cloud.get("/v1/whoami", &token).await.body;
    let project = uuid::Uuid::parse_str(me["project"]["id"].as_str().unwrap()).unwrap();
    let organization = uuid::Uuid::parse_str(me["organization"]["id"].as_str().unwrap()).unwrap();
    let i = sc.created(&token, Payload::Form(&[("name", "mine"), ("ask_price", "1")])).await;
    let r = sc.send(Method::DELETE, "/api/v1/users/account/", Some(&token), Payload::None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = sc.send(Method::GET, "/api/v1/instances/", Some(&token), Payload::None).await;
    assert_eq!((r.status, &r.body), (StatusCode::UNAUTHORIZED, &json!({"detail": "Invalid token."})));
    assert_eq!(sc.log_in_status("heidi", "heidi-blablabla").await, StatusCode::BAD_REQUEST, "the account is gone");
    // Nothing of it is left: its instance is destroyed, its project and organization are gone.
    let id = uuid::Uuid::parse_str(i["uuid"].as_str().unwrap()).unwrap();
    use nimbus_driver::Driver;
    let vm = sc.cloud.sim.inspect(id).await;
    assert!(matches!(vm, Ok(nimbus_driver::ActualState::Missing)), "the instance's VM is gone: {vm:?}");
    assert_eq!(sc.cloud.store.get_instance(id).await.unwrap(), None);
    assert_eq!(sc.cloud.store.get_project(project).await.unwrap(), None);
    assert_eq!(sc.cloud.store.get_organization(organization).await.unwrap(), None);
    let again = sc.user("heidi").await;
    assert!(sc.list(&again).await.is_empty(), "a new account with the old name starts empty");
    // A key that belongs to no account has no account to delete.
    let r = sc.send(Method::DELETE, "/api/v1/users/account/", Some(ADMIN), Payload::None).await;
    assert_eq!((r.status, &r.body), (StatusCode::NOT_FOUND, &json!({"detail": "Not found."})));
    let r = sc.send(Method::GET, "/api/v1/users/", Some(ADMIN), Payload::None).await;
    assert_eq!(r.body, json!([]));
}

#[tokio::test]
async fn a_user_changes_email_username_and_password_checked_as_at_registration() {
    let sc = SharedCloud::new().await;
    let token = sc.user("ivan").await;
    sc.user("judy").await;
    let r = sc.account_patch(&token, &[("email", "ivan@new.example.com"), ("username", "ivan2")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((&r.body["email"], &r.body["username"]), (&json!("ivan@new.example.com"), &json!("ivan2")));
    // The name moved: the new one logs in, the old one is free for someone else.
    assert_eq!(sc.log_in_status("ivan2", "ivan-blablabla").await, StatusCode::OK);
    assert_eq!(sc.log_in_status("ivan", "ivan-blablabla").await, StatusCode::BAD_REQUEST);
    sc.user("ivan").await;

    let refused = [
        (("username", "judy"), "username", "A user with that username already exists."),
        (("username", "no spaces"), "username", "Enter a valid username."),
        (("email", "not-an-email"), "email", "Enter a valid email address."),
        (("password", "password"), "password", "This password is too common."),
        (("password", "short"), "password", "This password is too short."),
        (("email", ""), "email", "This field may not be blank."),
    ];
    for ((field, value), key, text) in refused {
        let r = sc.account_patch(&token, &[(field, value)]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}={value}: {}", r.text);
        assert!(message(&r, key).starts_with(text), "{field}={value}: {}", r.text);
    }
    let me = sc.send(Method::GET, "/api/v1/users/", Some(&token), Payload::None).await.body;
    assert_eq!((&me[0]["username"], &me[0]["email"]), (&json!("ivan2"), &json!("ivan@new.example.com")));

    // A new password (what `account change_password` sends) replaces the old one; the token still works.
    let r = sc.account_patch(&token, &[("password", "a-much-better-one")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(sc.log_in_status("ivan2", "ivan-blablabla").await, StatusCode::BAD_REQUEST);
    assert_eq!(sc.log_in_status("ivan2", "a-much-better-one").await, StatusCode::OK);
    assert_eq!(sc.send(Method::GET, "/api/v1/instances/", Some(&token), Payload::None).await.status, StatusCode::OK);
    let r = sc.send(Method::PATCH, "/api/v1/users/account/", None, Payload::Form(&[("email", "x@example.com")])).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_login_racing_the_account_deletion_never_brings_it_back() {
    let sc = SharedCloud::new().await;
    for round in 0..8 {
        let name = format!("race{round}");
        let token = sc.user(&name).await;
        let password = format!("{name}-blablabla");
        let (deleted, logged_in) = tokio::join!(
            sc.send(Method::DELETE, "/api/v1/users/account/", Some(&token), Payload::None),
            sc.log_in_status(&name, &password),
        );
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
        assert!(matches!(logged_in, StatusCode::OK | StatusCode::BAD_REQUEST));
        // Whichever came first, the account is gone with every key: no login works, no token is left.
        assert_eq!(sc.log_in_status(&name, &password).await, StatusCode::BAD_REQUEST);
        let r = sc.send(Method::GET, "/api/v1/users/", Some(&token), Payload::None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn gpus_are_the_catalogs_gpu_models_with_stable_sharedcloud_uuids() {
    let sc = SharedCloud::new().await;
    let r = sc.send(Method::GET, "/api/v1/gpus", Some(ADMIN), Payload::None).await;
    let gpus = r.body.as_array().unwrap();
    let codenames: Vec<&str> = gpus.iter().map(|g| g["codename"].as_str().unwrap()).collect();
    assert_eq!(codenames, ["titanv", "teslak80", "titanxp", "1080_ti", "titanx", "1080", "1070", "1060"]);
    assert_eq!(
        gpus[0],
        json!({"uuid": "caf0daeb-ba23-4499-b4f9-8b4965714366", "name": " Nvidia Titan V 12GB", "codename": "titanv",
               "cuda_cores": 5120, "is_available": true})
    );
    assert!(gpus.iter().all(|g| g["cuda_cores"].as_u64() > Some(0) && g["is_available"] == true));
    // The same uuids on another server.
    let other = SharedCloud::new().await;
    let again = other.send(Method::GET, "/api/v1/gpus/", Some(ADMIN), Payload::None).await;
    assert_eq!(&again.body, &r.body);
}

/// A login attempt, as the CLI sends it, from `source` (the connection's peer).
async fn attempt_from(sc: &SharedCloud, source: [u8; 4], username: &str, password: &str) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("username", username), ("password", password)])
        .finish();
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/api-token-auth/")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((source, 40000))));
    sc.cloud.send(req).await
}

/// Password guessing is throttled, per account and per source address, in DRF's shape with `Retry-After`;
/// the account's owner elsewhere is throttled too until the window passes, and other accounts from other
/// addresses are not.
#[tokio::test]
async fn password_guessing_is_throttled_per_account_and_per_address() {
    let limits = nimbus_engine::throttle::AttemptLimits { per_source_per_minute: 6, per_account_per_minute: 4 };
    let config = nimbus_engine::EngineConfig { allow_registration: true, attempt_limits: limits, ..Default::default() };
    let sc = SharedCloud { cloud: Cloud::with(nimbus_driver::SimConfig::default(), config).await };
    sc.user("victim").await;

    // Guesses at one account from many addresses: the account's allowance runs out.
    let mut statuses = Vec::new();
    for n in 0..6u8 {
        statuses.push(attempt_from(&sc, [192, 0, 2, n], "victim", "guess").await);
    }
    let throttled = statuses.iter().position(|r| r.status == StatusCode::TOO_MANY_REQUESTS);
    let first = throttled
        .unwrap_or_else(|| panic!("never throttled: {:?}", statuses.iter().map(|r| r.status).collect::<Vec<_>>()));
    assert!(first <= 3, "throttled after at most the account's allowance, at attempt {first}");
    let r = &statuses[first];
    assert!(
        r.body["detail"].as_str().unwrap().starts_with("Request was throttled. Expected available in"),
        "{}",
        r.text
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // Guesses at many accounts from one address: the address's allowance runs out.
    let names: Vec<String> = (0..8).map(|n| format!("user{n}")).collect();
    let from_one: Vec<StatusCode> =
        futures_util::future::join_all(names.iter().map(|name| attempt_from(&sc, [198, 51, 100, 7], name, "guess")))
            .await
            .iter()
            .map(|r| r.status)
            .collect();
    assert!(from_one.contains(&StatusCode::TOO_MANY_REQUESTS), "{from_one:?}");
    assert!(from_one.iter().filter(|s| **s != StatusCode::TOO_MANY_REQUESTS).count() <= 6, "{from_one:?}");

    // Someone else, from elsewhere, logs in as usual.
    sc.user("bystander").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_drfs_detail() {
    let c = Cloud::new().await;
    for path in ["/api/v1/nothing/", "/api/v2/instances/"] {
        let r = c.get(path, ADMIN).await;
        assert_eq!((r.status, &r.body), (StatusCode::NOT_FOUND, &json!({"detail": "Not found."})), "{}", r.text);
    }
    let r = c.call(Method::DELETE, "/api/v1/gpus/", ADMIN, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);
    assert!(r.body["detail"].as_str().is_some_and(|d| d.contains("DELETE")), "{}", r.text);
}

#[tokio::test]
async fn names_are_any_text() {
    let sc = SharedCloud::new().await;
    let t = sc.user("nadia").await;
    let r = sc.create(&t, Payload::Form(&[("name", "my first instance"), ("ask_price", "0.5")])).await;
    assert_eq!((r.status, r.body["name"].as_str()), (StatusCode::CREATED, Some("my first instance")), "{}", r.text);
}
