//! The web console's sessions, as a browser lives them: sign in with a key or a password, the cookie
//! standing in for the key on `/v1`, changes refused without the CSRF header or from another origin, and
//! the session ended by signing out or by deleting its key. A second server on the same database (its own
//! store connection, engine and router) honours a session the first one opened.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use nimbus_driver::{SimConfig, SimDriver};
use nimbus_engine::{Engine, EngineConfig};
use serde_json::{json, Value};

use crate::common::{Cloud, Reply, ADMIN};

/// What the browser keeps after signing in.
struct Browser {
    session: String,
    csrf: String,
}

fn cookie_value(reply: &Reply, name: &str) -> String {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap()[name.len() + 1..].to_string())
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", reply.headers))
}

async fn sign_in(cloud: &Cloud, body: Value) -> Reply {
    let req =
        Request::post("/ui/session").header("content-type", "application/json").body(Body::from(body.to_string()));
    cloud.send(req.unwrap()).await
}

async fn signed_in(cloud: &Cloud, body: Value) -> Browser {
    let r = sign_in(cloud, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let set: Vec<_> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let session_cookie = set.iter().find(|c| c.starts_with("nimbus_session=")).unwrap();
    assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Strict"), "{session_cookie}");
    Browser { session: cookie_value(&r, "nimbus_session"), csrf: cookie_value(&r, "nimbus_csrf") }
}

/// A request as the console's page sends it: the cookie always, the CSRF header when asked.
fn from_page(b: &Browser, method: Method, path: &str, csrf: bool, body: Option<Value>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path).header("cookie", format!("nimbus_session={}", b.session));
    if csrf {
        req = req.header("x-csrf-token", &b.csrf);
    }
    match body {
        Some(v) => req.header("content-type", "application/json").body(Body::from(v.to_string())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    }
}

#[tokio::test]
async fn a_session_stands_for_its_key_until_signed_out_or_revoked() {
    let cloud = Cloud::new().await;

    let wrong = sign_in(&cloud, json!({"api_key": "nope"})).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.message(), "invalid API key");
    let malformed = sign_in(&cloud, json!({"token": "x"})).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(malformed.message().contains("api_key"), "{}", malformed.text);

    let secret = cloud.key("member", None).await;
    let b = signed_in(&cloud, json!({"api_key": secret})).await;
    let who = cloud.send(from_page(&b, Method::GET, "/v1/whoami", false, None)).await;
    assert_eq!(who.status, StatusCode::OK, "{}", who.text);
    assert_eq!(who.body["role"], "member");

    // A change needs the session's CSRF token: none, or another, is refused before anything happens.
    let create = json!({"name": "from-page", "instance_type": "standard.micro", "template": "busybox"});
    let r = cloud.send(from_page(&b, Method::POST, "/v1/instances", false, Some(create.clone()))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.message().contains("X-CSRF-Token"), "{}", r.text);
    let forged = Browser { session: b.session.clone(), csrf: "guessed".into() };
    let r = cloud.send(from_page(&forged, Method::POST, "/v1/instances", true, Some(create.clone()))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(cloud.get("/v1/instances", ADMIN).await.body["items"], json!([]));
    let r = cloud.send(from_page(&b, Method::POST, "/v1/instances", true, Some(create))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);

    // Another site's page (a websocket or fetch carrying the cookie) is refused by its Origin.
    let mut req = from_page(&b, Method::GET, "/v1/whoami", false, None);
    req.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    req.headers_mut().insert("host", "nimbus.example:8700".parse().unwrap());
    assert_eq!(cloud.send(req).await.status, StatusCode::FORBIDDEN);

    // Signing out needs the CSRF header too, then the cookie is dead.
    let r = cloud.send(from_page(&b, Method::DELETE, "/ui/session", false, None)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = cloud.send(from_page(&b, Method::DELETE, "/ui/session", true, None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = cloud.send(from_page(&b, Method::GET, "/v1/whoami", false, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Deleting the key ends every session opened with it.
    let b = signed_in(&cloud, json!({"api_key": secret})).await;
    let key_id = who.body["key_id"].as_str().unwrap();
    assert_eq!(
        cloud.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), ADMIN, None).await.status,
        StatusCode::NO_CONTENT
    );
    let r = cloud.send(from_page(&b, Method::GET, "/v1/whoami", false, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.message().contains("deleted"), "{}", r.text);
}

#[tokio::test]
async fn accounts_sign_in_with_their_password() {
    let config = nimbus_engine::EngineConfig { allow_registration: true, ..Default::default() };
    let cloud = Cloud::with(nimbus_driver::SimConfig::default(), config).await;
    cloud
        .engine
        .register_account(
            None,
            nimbus_engine::accounts::NewAccount {
                username: "ada".into(),
                email: "ada@example.com".into(),
                password: "correct horse 42".into(),
            },
        )
        .await
        .unwrap();
    let r = sign_in(&cloud, json!({"username": "ada", "password": "wrong"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.message(), "wrong username or password");
    let r = sign_in(&cloud, json!({"username": "nobody", "password": "wrong"})).await;
    assert_eq!(r.message(), "wrong username or password", "no hint of which usernames exist");
    let b = signed_in(&cloud, json!({"username": "ada", "password": "correct horse 42"})).await;
    let who = cloud.send(from_page(&b, Method::GET, "/v1/whoami", false, None)).await;
    assert_eq!(who.body["role"], "admin", "{}", who.text);
}

#[tokio::test]
async fn another_server_on_the_same_database_honours_the_session() {
    let cloud = Cloud::new().await;
    let b = signed_in(&cloud, json!({"api_key": ADMIN})).await;
    let store = nimbus_store::open(&cloud.store.url).await.unwrap();
    let engine = Engine::start(store, Arc::new(SimDriver::new(SimConfig::default())), EngineConfig::default()).await;
    let engine = engine.unwrap();
    let other = nimbus_api::router(nimbus_api::AppState::new(engine.clone()));
    let reply = tower::ServiceExt::oneshot(other, from_page(&b, Method::GET, "/v1/whoami", false, None)).await.unwrap();
    engine.halt();
    assert_eq!(reply.status(), StatusCode::OK);
}

#[tokio::test]
async fn browsers_land_on_the_console_and_get_its_files() {
    let cloud = Cloud::new().await;
    let r = cloud.send(Request::get("/").header("accept", "text/html").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/");
    let r = cloud.send(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "API clients keep the JSON 404");
    let r = cloud.send(Request::get("/ui/").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("<script type=\"module\" src=\"app.js\">"), "{}", r.text);
    let r = cloud.send(Request::get("/ui/app.js").body(Body::empty()).unwrap()).await;
    assert_eq!(r.headers["content-type"], "text/javascript; charset=utf-8");
    assert!(r.headers["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    let r = cloud.send(Request::get("/ui/nope.js").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
