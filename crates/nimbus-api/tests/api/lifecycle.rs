//! An instance through every action, and every action refused in a state that does not allow it.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use nimbus_driver::SimConfig;
use nimbus_engine::EngineConfig;
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn an_instance_goes_through_every_action() {
    let c = Cloud::new().await;
    let user_data = "IyEvYmluL3NoCmVjaG8gaGVsbG8K"; // "#!/bin/sh\necho hello\n"
    let id = c.instance(ADMIN, "web-1", json!({"labels": {"env": "prod"}, "user_data": user_data})).await;
    let i = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!(i.body["state"], "running");
    assert_eq!(i.body["labels"]["env"], "prod");
    assert_eq!(i.body["user_data"], user_data);
    assert_eq!(i.body["ip_addresses"].as_array().unwrap().len(), 1, "an address is assigned: {}", i.text);
    assert!(i.headers.get("etag").is_some());

    assert_eq!(c.act(ADMIN, &id, "reboot", None).await["state"], "success");
    assert_eq!(c.state(ADMIN, &id).await, "running");
    assert_eq!(c.act(ADMIN, &id, "create-snapshot", Some(json!({"name": "before"}))).await["state"], "success");
    assert_eq!(c.state(ADMIN, &id).await, "running", "a snapshot returns to the state it began in");

    assert_eq!(c.act(ADMIN, &id, "stop", None).await["state"], "success");
    assert_eq!(c.state(ADMIN, &id).await, "stopped");

    let scaled = c.act(ADMIN, &id, "scale", Some(json!({"instance_type": "standard.medium"}))).await;
    assert_eq!(scaled["state"], "success");
    let i = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!(
        (i.body["instance_type"].as_str(), i.body["memory_mib"].as_u64()),
        (Some("standard.medium"), Some(4096))
    );

    assert_eq!(c.act(ADMIN, &id, "resize-disk", Some(json!({"disk_size_gb": 20}))).await["state"], "success");
    assert_eq!(c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["disk_size_gb"], 20);

    let snaps = c.get(&format!("/v1/snapshots?instance_id={id}"), ADMIN).await;
    let snap = snaps.body["items"][0].clone();
    assert_eq!(snap["name"], "before");
    assert_eq!(snap["state"], "ready");
    let reverted = c.act(ADMIN, &id, "revert-snapshot", Some(json!({"snapshot_id": snap["id"]}))).await;
    assert_eq!(reverted["state"], "success", "{reverted}");

    assert_eq!(c.act(ADMIN, &id, "enable-tpm", None).await["state"], "success");
    assert_eq!(c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["tpm_enabled"], true);

    assert_eq!(c.act(ADMIN, &id, "reset-password", None).await["state"], "success");
    let pw = c.get(&format!("/v1/instances/{id}/password"), ADMIN).await;
    assert_eq!(pw.status, StatusCode::OK, "{}", pw.text);
    assert!(pw.body["password"].as_str().unwrap().len() >= 16);

    assert_eq!(c.act(ADMIN, &id, "start", None).await["state"], "success");
    assert_eq!(c.act(ADMIN, &id, "reset", None).await["state"], "success");
    assert_eq!(c.state(ADMIN, &id).await, "running", "reset returns a running instance to running");
    let console = c.get(&format!("/v1/instances/{id}/console"), ADMIN).await;
    assert!(console.text.contains("READY"), "{}", console.text);

    let protect = c.call(Method::POST, &format!("/v1/instances/{id}/add-protection"), ADMIN, None).await;
    assert_eq!((protect.status, protect.body["protected"].clone()), (StatusCode::OK, json!(true)));
    let refused = c.call(Method::DELETE, &format!("/v1/instances/{id}"), ADMIN, None).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::CONFLICT, "conflict"));
    assert!(refused.message().contains("protected"), "{}", refused.text);
    c.call(Method::POST, &format!("/v1/instances/{id}/remove-protection"), ADMIN, None).await;

    let del = c.call(Method::DELETE, &format!("/v1/instances/{id}"), ADMIN, None).await;
    assert_eq!(del.status, StatusCode::ACCEPTED);
    assert_eq!(c.wait(&del.id(), ADMIN).await["state"], "success");
    assert_eq!(c.get(&format!("/v1/instances/{id}"), ADMIN).await.status, StatusCode::NOT_FOUND);
    assert!(c.get(&format!("/v1/snapshots?instance_id={id}"), ADMIN).await.body["items"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn actions_are_refused_in_states_that_do_not_allow_them() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "a", json!({})).await;
    let refused = [
        ("start", None, "running"),
        ("scale", Some(json!({"instance_type": "standard.large"})), "running"),
        ("resize-disk", Some(json!({"disk_size_gb": 50})), "running"),
        ("enable-tpm", None, "running"),
    ];
    for (action, body, state) in refused {
        let r = c.call(Method::POST, &format!("/v1/instances/{id}/{action}"), ADMIN, body).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_state"), "{action}: {}", r.text);
        assert!(r.message().contains(&format!("state {state}")), "{action}: the message names the state: {}", r.text);
    }
    c.act(ADMIN, &id, "stop", None).await;
    for (action, body) in [("stop", None), ("reboot", None)] {
        let r = c.call(Method::POST, &format!("/v1/instances/{id}/{action}"), ADMIN, body).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_state"), "{action}: {}", r.text);
        assert!(r.message().contains("state stopped"), "{}", r.text);
    }
    let shrink =
        c.call(Method::POST, &format!("/v1/instances/{id}/resize-disk"), ADMIN, Some(json!({"disk_size_gb": 5}))).await;
    assert_eq!(shrink.status, StatusCode::CONFLICT);
    assert!(shrink.message().contains("only grow"), "{}", shrink.text);
    let other_family = c
        .call(Method::POST, &format!("/v1/instances/{id}/scale"), ADMIN, Some(json!({"instance_type": "memory.small"})))
        .await;
    assert_eq!(other_family.status, StatusCode::CONFLICT);
    assert!(other_family.message().contains("family"), "{}", other_family.text);
    // Nothing refused changed the instance.
    let i = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!((i.body["state"].as_str(), i.body["disk_size_gb"].as_u64()), (Some("stopped"), Some(10)));
    assert_eq!(i.body["instance_type"], "standard.small");
}

#[tokio::test]
async fn a_gpu_instance_has_a_gpu_model_and_a_scale_may_cross_families_when_asked() {
    let c = Cloud::new().await;
    let gpu = c.instance(ADMIN, "trainer", json!({"instance_type": "gpu.small", "gpu_model": "1080_ti"})).await;
    let i = c.get(&format!("/v1/instances/{gpu}"), ADMIN).await;
    assert_eq!((&i.body["gpus"], &i.body["gpu_model"]), (&json!(1), &json!("1080_ti")), "{}", i.text);
    let default = c.instance(ADMIN, "default-gpu", json!({"instance_type": "gpu.small"})).await;
    assert_eq!(c.get(&format!("/v1/instances/{default}"), ADMIN).await.body["gpu_model"], "titanv");
    let r = c
        .post(
            "/v1/instances",
            ADMIN,
            json!({"name": "x", "instance_type": "standard.small", "template": "busybox", "gpu_model": "titanv"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a CPU type carries no GPU model: {}", r.text);
    let r = c
        .post(
            "/v1/instances",
            ADMIN,
            json!({"name": "x", "instance_type": "gpu.small", "template": "busybox", "gpu_model": "voodoo2"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    c.act(ADMIN, &gpu, "stop", None).await;
    let path = format!("/v1/instances/{gpu}/scale");
    let scale = |body: Value| c.call(Method::POST, &path, ADMIN, Some(body));
    // Another model on the same type is a scale too; the plain one keeps the family and the model.
    let r = scale(json!({"instance_type": "gpu.small", "gpu_model": "titanv"})).await;
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success", "{}", r.text);
    let r = scale(json!({"instance_type": "gpu.medium"})).await;
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success", "{}", r.text);
    let i = c.get(&format!("/v1/instances/{gpu}"), ADMIN).await;
    assert_eq!((&i.body["instance_type"], &i.body["gpu_model"]), (&json!("gpu.medium"), &json!("titanv")));
    let r = scale(json!({"instance_type": "standard.small"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "the default stays within the family: {}", r.text);
    assert!(r.message().contains("family"), "{}", r.text);

    let r = scale(json!({"instance_type": "standard.small", "across_families": true})).await;
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success", "{}", r.text);
    let i = c.get(&format!("/v1/instances/{gpu}"), ADMIN).await;
    assert_eq!(
        (
            &i.body["instance_type"],
            &i.body["gpus"],
            &i.body["gpu_model"],
            &i.body["system_labels"]["nimbus.instance-type.family"]
        ),
        (&json!("standard.small"), &json!(0), &Value::Null, &json!("standard")),
        "{}",
        i.text
    );
    let r = scale(json!({"instance_type": "gpu.small", "across_families": true, "gpu_model": "1060"})).await;
    assert_eq!(c.wait(&r.id(), ADMIN).await["state"], "success", "{}", r.text);
    let i = c.get(&format!("/v1/instances/{gpu}"), ADMIN).await;
    assert_eq!((&i.body["instance_type"], &i.body["gpu_model"]), (&json!("gpu.small"), &json!("1060")));

    // Still only what the state machine allows: not while it runs.
    c.act(ADMIN, &gpu, "start", None).await;
    let r = scale(json!({"instance_type": "standard.small", "across_families": true})).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_state"), "{}", r.text);
}

#[tokio::test]
async fn a_second_action_while_one_runs_is_busy() {
    let mut sim = SimConfig::default();
    sim.action_delays.insert("stop".into(), Duration::from_millis(800));
    let c = Cloud::with(sim, EngineConfig::default()).await;
    let id = c.instance(ADMIN, "slow", json!({})).await;
    let stop = c.call(Method::POST, &format!("/v1/instances/{id}/stop"), ADMIN, None).await;
    assert_eq!(stop.status, StatusCode::ACCEPTED);
    let i = c.get(&format!("/v1/instances/{id}"), ADMIN).await;
    assert_eq!(i.body["state"], "stopping");
    assert_eq!(i.body["operation_id"], stop.body["id"]);
    let second = c.call(Method::POST, &format!("/v1/instances/{id}/reboot"), ADMIN, None).await;
    assert_eq!((second.status, second.code()), (StatusCode::CONFLICT, "busy"), "{}", second.text);
    let delete = c.call(Method::DELETE, &format!("/v1/instances/{id}"), ADMIN, None).await;
    assert_eq!(delete.code(), "busy");
    assert_eq!(c.wait(&stop.id(), ADMIN).await["state"], "success");
    assert_eq!(c.state(ADMIN, &id).await, "stopped");
}

#[tokio::test]
async fn a_failing_driver_fails_the_operation_and_shows_the_real_state() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "flaky", json!({})).await;
    c.act(ADMIN, &id, "stop", None).await;
    c.sim.inject_failure("start", 1);
    let op = c.act(ADMIN, &id, "start", None).await;
    assert_eq!((op["state"].as_str(), op["reason"].as_str()), (Some("failure"), Some("fault")), "{op}");
    assert!(op["message"].as_str().unwrap().contains("injected"));
    assert_eq!(c.state(ADMIN, &id).await, "stopped", "the host still has it stopped");
    assert_eq!(c.act(ADMIN, &id, "start", None).await["state"], "success", "the lock was released");

    c.act(ADMIN, &id, "stop", None).await;
    c.sim.inject_failure("resize_disk", 1);
    let op = c.act(ADMIN, &id, "resize-disk", Some(json!({"disk_size_gb": 30}))).await;
    assert_eq!(op["state"], "failure");
    assert_eq!(
        c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["disk_size_gb"],
        10,
        "the size that did not happen is taken back"
    );
}

#[tokio::test]
async fn create_without_auto_start_leaves_the_instance_stopped() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "cold", json!({"auto_start": false})).await;
    assert_eq!(c.state(ADMIN, &id).await, "stopped");
}

#[tokio::test]
async fn a_scheduled_shutdown_stops_the_instance_when_due() {
    let config = EngineConfig {
        reconcile_every: Duration::from_millis(100),
        report_every: Duration::from_millis(100),
        ..Default::default()
    };
    let c = Cloud::with(SimConfig::default(), config).await;
    let id = c.instance(ADMIN, "batch-job", json!({})).await;
    let due = (time::OffsetDateTime::now_utc() - time::Duration::seconds(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r =
        c.call(Method::PATCH, &format!("/v1/instances/{id}"), ADMIN, Some(json!({"expected_shutdown_at": due}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    eventually("the scheduled stop", || async { c.state(ADMIN, &id).await == "stopped" }).await;
    let ops = c.get(&format!("/v1/operations?target={id}"), ADMIN).await;
    assert!(
        ops.body["items"].as_array().unwrap().iter().any(|o| o["kind"] == "scheduled_stop" && o["state"] == "success"),
        "{}",
        ops.text
    );
    assert_eq!(c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["expected_shutdown_at"], json!(null));
}

#[tokio::test]
async fn the_reconciler_shows_an_instance_that_stopped_behind_nimbus_back() {
    use nimbus_driver::Driver;
    let config = EngineConfig {
        reconcile_every: Duration::from_millis(100),
        report_every: Duration::from_millis(100),
        ..Default::default()
    };
    let c = Cloud::with(SimConfig::default(), config).await;
    let id = c.instance(ADMIN, "crashy", json!({})).await;
    c.sim.stop(id.parse().unwrap(), Duration::ZERO).await.unwrap();
    eventually("the observed stop", || async { c.state(ADMIN, &id).await == "stopped" }).await;
}

#[tokio::test]
async fn a_suspended_instance_only_resumes_or_is_deleted() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "sleepy", json!({})).await;
    assert_eq!(c.act(ADMIN, &id, "suspend", None).await["state"], "success");
    assert_eq!(c.state(ADMIN, &id).await, "suspended");
    for action in ["start", "stop", "reboot", "suspend"] {
        let r = c.call(Method::POST, &format!("/v1/instances/{id}/{action}"), ADMIN, None).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_state"), "{action}: {}", r.text);
        assert!(r.message().contains("state suspended"), "{}", r.text);
    }
    assert_eq!(c.act(ADMIN, &id, "resume", None).await["state"], "success");
    assert_eq!(c.state(ADMIN, &id).await, "running");
    let r = c.call(Method::POST, &format!("/v1/instances/{id}/resume"), ADMIN, None).await;
    assert_eq!(r.code(), "invalid_state", "a running instance does not resume: {}", r.text);
    assert_eq!(c.act(ADMIN, &id, "suspend", None).await["state"], "success");
    let del = c.call(Method::DELETE, &format!("/v1/instances/{id}"), ADMIN, None).await;
    assert_eq!(c.wait(&del.id(), ADMIN).await["state"], "success", "a suspended instance can be deleted");
}

#[tokio::test]
async fn the_reconciler_shows_an_instance_paused_or_resumed_behind_nimbus_back() {
    use nimbus_driver::Driver;
    let config = EngineConfig {
        reconcile_every: Duration::from_millis(100),
        report_every: Duration::from_millis(100),
        ..Default::default()
    };
    let c = Cloud::with(SimConfig::default(), config).await;
    let id = c.instance(ADMIN, "paused", json!({})).await;
    c.sim.suspend(id.parse().unwrap()).await.unwrap();
    eventually("the observed pause", || async { c.state(ADMIN, &id).await == "suspended" }).await;
    c.sim.resume(id.parse().unwrap()).await.unwrap();
    eventually("the observed resume", || async { c.state(ADMIN, &id).await == "running" }).await;
}

#[tokio::test]
async fn a_deleted_instance_is_kept_destroyed_for_the_retention_and_holds_nothing() {
    let config = EngineConfig {
        reconcile_every: Duration::from_millis(100),
        deleted_retention: Duration::from_secs(2),
        network_cidr: "10.213.0.0/29".into(),
        ..Default::default()
    };
    let c = Cloud::with(SimConfig::default(), config).await;
    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let quota = json!({"instances": 5, "vcpus": 100, "memory_mib": 1000000, "disk_gb": 1000});
    let r = c.call(Method::PUT, &format!("/v1/projects/{project_id}/quota"), ADMIN, Some(quota)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // A /29 has five addresses for instances, and the quota is five instances: the record kept after the
    // delete must hold neither a place in the quota nor an address, nor the name.
    for n in 1..5 {
        c.instance(ADMIN, &format!("other-{n}"), json!({})).await;
    }
    let id = c.instance(ADMIN, "only", json!({})).await;
    let del = c.call(Method::DELETE, &format!("/v1/instances/{id}"), ADMIN, None).await;
    assert_eq!(c.wait(&del.id(), ADMIN).await["state"], "success");

    assert_eq!(c.get(&format!("/v1/instances/{id}"), ADMIN).await.status, StatusCode::NOT_FOUND);
    let listed = c.get("/v1/instances", ADMIN).await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(4), "not listed unasked: {}", listed.text);
    let kept = c.get("/v1/instances?state=destroyed", ADMIN).await;
    let items = kept.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", kept.text);
    assert_eq!((items[0]["id"].as_str(), items[0]["state"].as_str()), (Some(id.as_str()), Some("destroyed")));
    assert_eq!(items[0]["ip_addresses"], json!([]), "{}", kept.text);

    let again = c.instance(ADMIN, "only", json!({})).await;
    assert_ne!(again, id);

    // Past the retention the record goes.
    eventually("the record to be purged", || async {
        c.get("/v1/instances?state=destroyed", ADMIN).await.body["items"] == json!([])
    })
    .await;
}

/// A host report taken before an operation ended says what the VM was, not what it is: applied after the
/// operation (the report was under way meanwhile), it must not undo what the operation just did.
#[tokio::test]
async fn a_report_older_than_an_operations_end_does_not_undo_it() {
    use nimbus_driver::Driver;
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "sleepy", json!({})).await;
    assert_eq!(c.act(ADMIN, &id, "suspend", None).await["state"], "success");
    let host = c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["host"].as_str().unwrap().to_string();
    // The agent looks at its VMs (this one paused), then the resume ends, then the report arrives.
    let stale = nimbus_engine::local_agent::report(c.sim.as_ref()).await.unwrap();
    assert_eq!(c.act(ADMIN, &id, "resume", None).await["state"], "success");
    c.engine.host_heartbeat(&host, Some(stale)).await.unwrap();
    assert_eq!(c.state(ADMIN, &id).await, "running", "the stale report flipped it back");
    // A VM that really changed behind Nimbus's back is still seen, by a report taken after the change.
    c.sim.stop(id.parse().unwrap(), Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = nimbus_engine::local_agent::report(c.sim.as_ref()).await.unwrap();
    c.engine.host_heartbeat(&host, Some(fresh)).await.unwrap();
    assert_eq!(c.state(ADMIN, &id).await, "stopped");
}

/// A host's report is judged a page of its instances at a time: the instances of every page are aligned
/// with what really runs, the last page's too.
#[tokio::test]
async fn a_report_of_a_host_with_more_instances_than_a_page_judges_every_one() {
    use nimbus_driver::Driver;
    let config = EngineConfig { network_cidr: "10.213.0.0/22".into(), ..Default::default() };
    let c = Cloud::with(SimConfig::default(), config).await;
    let project_id = c.get("/v1/whoami", ADMIN).await.body["project"]["id"].as_str().unwrap().to_string();
    let quota = json!({"instances": 2000, "vcpus": 100000, "memory_mib": 100000000, "disk_gb": 1000000});
    let r = c.call(Method::PUT, &format!("/v1/projects/{project_id}/quota"), ADMIN, Some(quota)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Two pages and a bit (a page is 500).
    let mut ids = Vec::new();
    for n in 0..1003 {
        ids.push(c.instance(ADMIN, &format!("many-{n}"), json!({})).await);
    }
    let host = c.get(&format!("/v1/instances/{}", ids[0]), ADMIN).await.body["host"].as_str().unwrap().to_string();
    let behind_our_back = [&ids[0], &ids[499], &ids[500], &ids[1002]];
    for id in behind_our_back {
        c.sim.stop(id.parse().unwrap(), Duration::ZERO).await.unwrap();
    }
    // A report is trusted only about records older than itself.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = nimbus_engine::local_agent::report(c.sim.as_ref()).await.unwrap();
    c.engine.host_heartbeat(&host, Some(report)).await.unwrap();
    for id in behind_our_back {
        assert_eq!(c.state(ADMIN, id).await, "stopped", "{id}");
    }
    assert_eq!(c.state(ADMIN, &ids[1]).await, "running");
    assert_eq!(c.state(ADMIN, &ids[1001]).await, "running");
}

/// A rescue start shows on the instance (`rescue`) for as long as the rescue system runs: a reboot boots it
/// again, a stop ends it, and a reset of a rescued instance boots its own fresh system.
#[tokio::test]
async fn a_rescued_instance_says_so_until_it_stops() {
    let c = Cloud::new().await;
    let id = c.instance(ADMIN, "rescuable", json!({})).await;
    async fn rescue(c: &Cloud, id: &str) -> Value {
        c.get(&format!("/v1/instances/{id}"), ADMIN).await.body["rescue"].clone()
    }
    async fn last_boot(c: &Cloud, id: &str) -> String {
        let log = c.get(&format!("/v1/instances/{id}/console"), ADMIN).await.text;
        log.lines().rev().find(|l| l.contains("booted")).unwrap_or_default().to_string()
    }
    assert_eq!(rescue(&c, &id).await, false);
    assert_eq!(c.act(ADMIN, &id, "stop", None).await["state"], "success");
    assert_eq!(c.act(ADMIN, &id, "start", Some(json!({"rescue": true}))).await["state"], "success");
    assert_eq!(rescue(&c, &id).await, true, "running the rescue system");
    assert!(last_boot(&c, &id).await.contains("the rescue system"));
    let listed = c.get("/v1/instances", ADMIN).await;
    assert_eq!(listed.body["items"][0]["rescue"], true, "{}", listed.text);

    assert_eq!(c.act(ADMIN, &id, "reboot", None).await["state"], "success");
    assert_eq!(rescue(&c, &id).await, true, "a reboot boots the rescue system again");
    assert!(last_boot(&c, &id).await.contains("the rescue system"));

    assert_eq!(c.act(ADMIN, &id, "stop", None).await["state"], "success");
    assert_eq!(rescue(&c, &id).await, false, "a stop ends the rescue");
    assert_eq!(c.act(ADMIN, &id, "start", None).await["state"], "success");
    assert!(last_boot(&c, &id).await.contains("its own system"));
    assert_eq!(rescue(&c, &id).await, false);

    assert_eq!(c.act(ADMIN, &id, "stop", None).await["state"], "success");
    assert_eq!(c.act(ADMIN, &id, "start", Some(json!({"rescue": true}))).await["state"], "success");
    assert_eq!(c.act(ADMIN, &id, "reset", None).await["state"], "success");
    assert_eq!((c.state(ADMIN, &id).await.as_str(), rescue(&c, &id).await), ("running", json!(false)));
    assert!(last_boot(&c, &id).await.contains("its own system"), "a reset boots the fresh system");
}
