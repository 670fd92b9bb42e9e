//! A Nimbus cloud in the test process: the real router, engine and store, on the sim driver. The store is
//! SQLite, or PostgreSQL when `NIMBUS_TEST_DATABASE_URL` names a server (a fresh database per cloud), so the
//! same tests run on both backends.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use nimbus_driver::{SimConfig, SimDriver};
use nimbus_engine::{Engine, EngineConfig};
use nimbus_store::testing::{FaultyStore, TestStore};
use serde_json::{json, Value};
use tower::ServiceExt;

pub const ADMIN: &str = "admin-secret-for-tests";

pub struct Cloud {
    pub app: Router,
    pub engine: Arc<Engine>,
    pub sim: Arc<SimDriver>,
    /// The store under the engine, for checking what no API shows (a deleted account's project, say).
    pub store: TestStore,
    /// The engine's store is this one, in front of `store`: it fails chosen calls on demand.
    pub faults: Arc<FaultyStore>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        // Its tasks end with it, before its database goes.
        self.engine.halt();
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_else(|| panic!("no id in {}", self.text)).to_string()
    }
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl Cloud {
    pub async fn new() -> Cloud {
        Cloud::with(SimConfig::default(), EngineConfig::default()).await
    }

    pub async fn with(sim: SimConfig, config: EngineConfig) -> Cloud {
        let store = nimbus_store::testing::test_store().await;
        let faults = Arc::new(FaultyStore::new(store.store.clone()));
        let sim = Arc::new(SimDriver::new(sim));
        let engine = Engine::start(faults.clone(), sim.clone(), config).await.unwrap();
        engine.bootstrap(Some(("NIMadmin".into(), ADMIN.into()))).await.unwrap();
        let app = nimbus_api::router(nimbus_api::AppState::new(engine.clone()));
        Cloud { app, engine, sim, store, faults }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    pub async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Waits for an operation to end and returns it.
    pub async fn wait(&self, op_id: &str, token: &str) -> Value {
        let r = self.get(&format!("/v1/operations/{op_id}?wait=10"), token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(
            matches!(r.body["state"].as_str(), Some("success" | "failure" | "timeout")),
            "still running: {}",
            r.text
        );
        r.body
    }

    /// Creates an instance, waits for it and returns its id.
    pub async fn instance(&self, token: &str, name: &str, extra: Value) -> String {
        let mut body = json!({"name": name, "instance_type": "standard.small", "template": "busybox"});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        let r = self.post("/v1/instances", token, body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let op = self.wait(&r.id(), token).await;
        assert_eq!(op["state"], "success", "{op}");
        op["target"]["id"].as_str().unwrap().to_string()
    }

    /// Runs an action and waits for its operation.
    pub async fn act(&self, token: &str, id: &str, action: &str, body: Option<Value>) -> Value {
        let r = self.call(Method::POST, &format!("/v1/instances/{id}/{action}"), token, body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{action}: {}", r.text);
        self.wait(&r.id(), token).await
    }

    pub async fn state(&self, token: &str, id: &str) -> String {
        self.get(&format!("/v1/instances/{id}"), token).await.body["state"].as_str().unwrap_or("gone").to_string()
    }

    /// A new API key; returns its secret.
    pub async fn key(&self, role: &str, project_id: Option<&str>) -> String {
        let mut body = json!({"name": format!("{role}-key"), "role": role});
        if let Some(p) = project_id {
            body["project_id"] = json!(p);
        }
        let r = self.post("/v1/api-keys", ADMIN, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["secret"].as_str().unwrap().to_string()
    }

    /// An `available` volume of the admin's project in another zone (kept by a host there), which this
    /// server's zone has no way to make: written straight into the store. Returns its id.
    #[allow(dead_code)] // Not every test crate sharing this file uses it.
    pub async fn volume_of_another_zone(&self) -> String {
        use nimbus_core::volume::{Volume, VolumeState};
        let project = self.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
        let project_id = uuid::Uuid::parse_str(&project).unwrap();
        let id = nimbus_core::new_id();
        let far = Volume {
            id,
            project_id,
            name: "far".into(),
            description: String::new(),
            zone: "far-away".into(),
            size_gb: 1,
            state: VolumeState::Available,
            instance_id: None,
            host: Some("far-host".into()),
            serial: Volume::serial_for(id),
            labels: Default::default(),
            lock_operation_id: None,
            template_id: None,
            boot: false,
            created_at: nimbus_core::now(),
            updated_at: nimbus_core::now(),
        };
        let mut set = nimbus_store::WriteSet::new();
        let record = nimbus_store::Record::new("volume", id, Some(project_id), "far", &far);
        set.push(nimbus_store::Write::InsertRecord(record));
        self.store.store.apply(set).await.unwrap();
        id.to_string()
    }
}

pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
