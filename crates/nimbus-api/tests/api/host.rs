//! The host as the API shows it: instances it runs that no record knows are reported and left alone
//! (they may be all that is left of real work, after a restore from a backup), unless the store's own
//! history says they were deleted.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use nimbus_driver::{Driver, InstanceSpec, SimConfig};
use nimbus_engine::EngineConfig;
use serde_json::json;
use uuid::Uuid;

use crate::common::*;

async fn spec(c: &Cloud, id: Uuid) -> InstanceSpec {
    InstanceSpec {
        id,
        name: "stray".into(),
        hostname: "stray".into(),
        vcpus: 1,
        memory_mib: 512,
        disk_size_gb: 10,
        template: c.sim.templates().await.unwrap().remove(0),
        user_data: None,
        ssh_keys: vec![],
        password: None,
        mac_address: "52:54:00:00:00:09".into(),
        ip_address: None,
        gateway: None,
        tpm: false,
        secure_boot: false,
        volumes: Vec::new(),
        boot_volume: None,
        rescue: false,
    }
}

async fn quick_reconciler() -> Cloud {
    Cloud::with(
        SimConfig::default(),
        EngineConfig {
            reconcile_every: Duration::from_millis(100),
            report_every: Duration::from_millis(100),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_host_instance_no_record_knows_is_reported_and_left_alone_until_an_admin_removes_it() {
    let c = quick_reconciler().await;
    let stray = Uuid::new_v4();
    c.sim.create(&spec(&c, stray).await).await.unwrap();
    c.sim.start(&spec(&c, stray).await).await.unwrap();
    eventually("the stray instance to be reported", || async {
        c.get("/v1/host", ADMIN).await.body["unknown_instances"].as_array().is_some_and(|u| !u.is_empty())
    })
    .await;
    let host = c.get("/v1/host", ADMIN).await.body;
    assert_eq!(host["unknown_instances"][0]["id"], json!(stray), "{host}");
    assert_eq!(host["unknown_instances"][0]["host_state"], "running", "{host}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.sim.inspect(stray).await.unwrap(),
        nimbus_driver::ActualState::Running,
        "several reconciler passes later it still runs"
    );

    let member = c.key("member", None).await;
    let path = format!("/v1/host/unknown-instances/{stray}");
    assert_eq!(c.call(Method::DELETE, &path, &member, None).await.status, StatusCode::FORBIDDEN);
    let unknown = c.call(Method::DELETE, &format!("/v1/host/unknown-instances/{}", Uuid::new_v4()), ADMIN, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    assert_eq!(c.call(Method::DELETE, &path, ADMIN, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.sim.inspect(stray).await.unwrap(), nimbus_driver::ActualState::Missing);
    assert_eq!(c.get("/v1/host", ADMIN).await.body["unknown_instances"], json!([]));
}

#[tokio::test]
async fn leftovers_of_an_instance_the_store_knows_it_deleted_are_removed() {
    let c = quick_reconciler().await;
    let id: Uuid = c.instance(ADMIN, "gone", json!({})).await.parse().unwrap();
    let r = c.call(Method::DELETE, &format!("/v1/instances/{id}"), ADMIN, None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    c.wait(&r.id(), ADMIN).await;
    // Something of it comes back on the host (a destroy that left files behind, say).
    c.sim.create(&spec(&c, id).await).await.unwrap();
    eventually("the leftovers to be removed", || async {
        c.sim.inspect(id).await.unwrap() == nimbus_driver::ActualState::Missing
    })
    .await;
    assert_eq!(c.get("/v1/host", ADMIN).await.body["unknown_instances"], json!([]), "not reported: removed");
}
