//! The real `sharedcloud-cli` 0.0.5 (from PyPI, in `target/sdk/sharedcloud`) against a `nimbus server`:
//! a user signs up, logs in, creates, lists, updates (CPU to GPU and back) and deletes instances, changes
//! password, email and name, and finally deletes the account, all through the CLI
//! (`tests/sdk/sharedcloud/*.py`); in between, the same state is checked through plain HTTP — the
//! SharedCloud API's bodies and errors — and through the native API.

mod sdk;

use reqwest::Method;
use serde_json::{json, Value};

struct Reply {
    status: u16,
    body: Value,
    text: String,
}

/// One HTTP request; `auth` is a whole `Authorization` header value.
fn http(method: Method, url: &str, auth: Option<&str>, content_type: Option<&str>, body: &str) -> Reply {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct).body(body.to_string());
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
    })
}

fn token(t: &str) -> String {
    format!("Token {t}")
}

#[test]
fn the_real_cli_signs_up_and_manages_instances_seen_the_same_through_http_and_the_native_api() {
    // The CLI signs its users up, one per test of its suite, all from this machine: registration is open
    // and the sign-in limit per address is raised to what a test suite needs.
    let server = sdk::Server::start_with(&["--allow-registration", "--sign-ins-per-address-per-minute", "10000"]);
    let api = |path: &str| format!("{}{path}", server.url);

    let out = server.python("sharedcloud", "sharedcloud/cli_flow.py", &[("SC_USERNAME", "alice")]);
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).expect("the script's summary");
    let secret = summary["token"].as_str().unwrap();
    let (cpu, deleted) = (summary["cpu"].as_str().unwrap(), summary["deleted"].as_str().unwrap());

    // What the CLI left behind, as the SharedCloud API shows it.
    let r = http(Method::GET, &api("/api/v1/instances/"), Some(&token(secret)), None, "");
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.body.as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", r.text);
    let i = &items[0];
    assert_eq!(
        (&i["uuid"], &i["name"], &i["type"], &i["status"], &i["ask_price"], &i["max_num_parallel_jobs"], &i["gpu"]),
        (&json!(cpu), &json!("cpu-box-2"), &json!(1), &json!(1), &json!(2.5), &json!(5), &Value::Null)
    );
    let r = http(Method::GET, &api(&format!("/api/v1/instances/{deleted}/")), Some(&token(secret)), None, "");
    assert_eq!((r.status, &r.body), (404, &json!({"detail": "Not found."})));
    let r = http(Method::GET, &api("/api/v1/instances/"), Some("Token 0123456789abcdef"), None, "");
    assert_eq!((r.status, &r.body), (401, &json!({"detail": "Invalid token."})));
    let r = http(Method::GET, &api("/api/v1/instances/"), None, None, "");
    assert_eq!((r.status, &r.body), (401, &json!({"detail": "Authentication credentials were not provided."})));

    // The same instance through the native API, with the CLI's token as a bearer key: it is an API key.
    let bearer = format!("Bearer {secret}");
    let n = http(Method::GET, &api(&format!("/v1/instances/{cpu}")), Some(&bearer), None, "");
    assert_eq!(n.status, 200, "{}", n.text);
    assert_eq!(
        (&n.body["name"], &n.body["instance_type"], &n.body["price_hourly"], &n.body["state"]),
        (&json!("cpu-box-2"), &json!("standard.small"), &json!(2.5), &json!("stopped"))
    );
    let r = http(Method::GET, &api(&format!("/v1/instances/{deleted}")), Some(&bearer), None, "");
    assert!(r.status == 404 || r.body["state"] == "destroying", "deleted through the CLI: {}", r.text);
    // A native rename is what the CLI's API shows next.
    let patch = json!({"name": "renamed-natively"}).to_string();
    let r = http(Method::PATCH, &api(&format!("/v1/instances/{cpu}")), Some(&bearer), Some("application/json"), &patch);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = http(Method::GET, &api(&format!("/api/v1/instances/{cpu}")), Some(&token(secret)), None, "");
    assert_eq!(r.body["name"], "renamed-natively");

    // Another user, signed up over plain HTTP with a form and JSON, sees none of alice's instances.
    let form = "email=bob%40example.com&username=bob&password=bob-s3cret-pass";
    let r = http(Method::POST, &api("/api/v1/users/"), None, Some("application/x-www-form-urlencoded"), form);
    assert_eq!(r.status, 201, "{}", r.text);
    let login = json!({"username": "bob", "password": "bob-s3cret-pass"}).to_string();
    let r = http(Method::POST, &api("/api/v1/api-token-auth/"), None, Some("application/json"), &login);
    assert_eq!(r.status, 200, "{}", r.text);
    let bob = token(r.body["token"].as_str().unwrap());
    let r = http(Method::GET, &api("/api/v1/instances/"), Some(&bob), None, "");
    assert_eq!((r.status, &r.body), (200, &json!([])));
    let r = http(Method::GET, &api(&format!("/api/v1/instances/{cpu}/")), Some(&bob), None, "");
    assert_eq!((r.status, &r.body), (404, &json!({"detail": "Not found."})));
    let body = "name=bobs&ask_price=0.0001";
    let r = http(Method::POST, &api("/api/v1/instances/"), Some(&bob), Some("application/x-www-form-urlencoded"), body);
    assert_eq!((r.status, &r.body), (400, &json!({"ask_price": ["\"ask_price\" cannot be smaller than $0.001"]})));
    let body = json!({"name": "bobs", "ask_price": 0.25, "type": "gpu", "gpu": summary["gpu_1080"]}).to_string();
    let r = http(Method::POST, &api("/api/v1/instances/"), Some(&bob), Some("application/json"), &body);
    assert_eq!(
        (r.status, &r.body["gpu_name"], &r.body["type"]),
        (201, &json!(" Nvidia GeForce GTX 1080 8GB"), &json!(2)),
        "{}",
        r.text
    );
    let r = http(Method::GET, &api("/api/v1/instances/"), Some(&token(secret)), None, "");
    assert_eq!(r.body.as_array().unwrap().len(), 1, "alice still sees only her own: {}", r.text);
    // Neither shows up in the bootstrap administrator's project.
    let admin = format!("Bearer {}", sdk::ADMIN_SECRET);
    let r = http(Method::GET, &api("/v1/instances"), Some(&admin), None, "");
    assert_eq!(r.body["items"], json!([]), "{}", r.text);

    // The CLI changes the account's password, email and name (logging out after each), then deletes the
    // account: its token and its instances go with it.
    let renamed = [("SC_USERNAME", "alice"), ("SC_NEW_USERNAME", "alice2")];
    server.python("sharedcloud", "sharedcloud/cli_account_update.py", &renamed);
    let r = http(Method::GET, &api("/api/v1/users/"), Some(&token(secret)), None, "");
    assert_eq!(r.body[0]["username"], "alice2", "the token outlives the changes, as DRF's does: {}", r.text);
    server.python("sharedcloud", "sharedcloud/cli_account_delete.py", &[("SC_USERNAME", "alice2")]);
    let r = http(Method::GET, &api("/api/v1/instances/"), Some(&token(secret)), None, "");
    assert_eq!((r.status, &r.body), (401, &json!({"detail": "Invalid token."})));
    let login = "username=alice&password=alice-blablabla";
    let r = http(Method::POST, &api("/api/v1/api-token-auth/"), None, Some("application/x-www-form-urlencoded"), login);
    assert_eq!(
        (r.status, &r.body),
        (400, &json!({"non_field_errors": ["Unable to log in with provided credentials."]}))
    );
    let r = http(Method::GET, &api("/api/v1/instances/"), Some(&bob), None, "");
    assert_eq!(r.body.as_array().unwrap().len(), 1, "bob keeps his: {}", r.text);
}

/// The wheel's own instance test files, run unchanged by pytest against the server (through our plugin
/// `tests/sdk/sharedcloud/wheel_conftest.py`, which answers the password prompts that the wheel's harness
/// still passes as `--password`).
const WHEEL_FILES: &str = "test_create_instance.py test_update_instance.py test_delete_instance.py";

/// The only ones left out, and why: this test starts a second instance with `instance start` in a
/// background process, which needs Docker on the client and SharedCloud's job queue (functions, runs, jobs
/// and images), none of which is part of the instances API.
const WHEEL_EXCLUDED: &[&str] = &[
    "test_create_instance.py::test_user_creates_an_instance_that_overrides_old_instance_as_the_active_one_in_the_system",
];

#[test]
fn the_clis_own_instance_tests_pass_against_nimbus() {
    // The CLI signs its users up, one per test of its suite, all from this machine: registration is open
    // and the sign-in limit per address is raised to what a test suite needs.
    let server = sdk::Server::start_with(&["--allow-registration", "--sign-ins-per-address-per-minute", "10000"]);
    let report = server.dir.path().join("wheel-report.jsonl");
    let deselect = WHEEL_EXCLUDED.join("\n");
    let out = server.python_output(
        "sharedcloud",
        "sharedcloud/wheel_tests.py",
        &[
            ("SC_WHEEL_FILES", WHEEL_FILES),
            ("SC_WHEEL_DESELECT", &deselect),
            ("SC_WHEEL_REPORT", report.to_str().unwrap()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcomes: Vec<Value> = std::fs::read_to_string(&report)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a report line"))
        .collect();
    let failed: Vec<&Value> = outcomes.iter().filter(|o| o["outcome"] != "passed").collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "the wheel's tests failed ({:?}): {failed:?}\n--- pytest\n{stdout}\n--- stderr\n{}\n--- server log\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    // Every test of the three files ran and passed, but the excluded one (16 + 16 + 4 in the wheel).
    let passed: Vec<&str> = outcomes.iter().filter_map(|o| o["test"].as_str()).collect();
    assert_eq!(passed.len(), 36 - WHEEL_EXCLUDED.len(), "{passed:#?}\n{stdout}");
    for excluded in WHEEL_EXCLUDED {
        assert!(!passed.iter().any(|p| p.ends_with(excluded)), "{excluded} ran");
    }
}
