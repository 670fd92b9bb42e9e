//! The defects an operator's crash loop found (issue 20), each reproduced on the real server process: a
//! kill -9 in the middle, a restart, and what a user would see after.
//!
//! - an `Idempotency-Key` whose first request was cut by the kill answered `409` forever;
//! - a snapshot cut mid-way stayed `snapshotting` forever;
//! - a `resize-disk` cut mid-way left the record with the new size and the disk with the old;
//! - the address of a create that was cut was never released;
//! - idempotency keys were left "in progress" with no answer after a clean stop.
//!
//! `NIMBUS_TEST_SERVER_BIN` runs them against another build of the server (they read the store only once
//! the server has stopped, and the sim host through its files).

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use nimbus_driver::Driver;
use reqwest::Method;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

async fn create(c: &Client, name: &str, auto_start: bool) -> String {
    let body =
        json!({"name": name, "instance_type": "standard.small", "template": "busybox", "auto_start": auto_start});
    let a = c.native(Method::POST, "/v1/instances", Some(body)).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let op = c.wait(&a.str("/id").unwrap(), LONG).await;
    assert_eq!(op["state"], "success", "{op}");
    op["target"]["id"].as_str().unwrap().to_string()
}

/// Waits until the operation is running (its step under way on the host).
async fn until_running(c: &Client, op: &str) {
    let deadline = Instant::now() + LONG;
    while c.get(&format!("/v1/operations/{op}")).await["state"] != "running" {
        assert!(Instant::now() < deadline, "operation {op} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ops_of(c: &Client, instance: &str, kind: &str) -> Vec<Value> {
    c.all(&format!("/v1/operations?target={instance}")).await.into_iter().filter(|o| o["kind"] == kind).collect()
}

/// The first request commits its stop and waits for it; the kill cuts it before it answers. The client's
/// retry, with the same key, after the restart, is answered with that stop (waited for, as asked) —
/// before, it was refused as "still being processed" forever — and the instance is stopped once.
#[tokio::test]
async fn an_idempotency_key_whose_request_was_cut_by_a_kill_answers_the_retry_and_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::sim(dir.path(), Database::Sqlite, &["--sim-delay", "stop=3000"]);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let id = create(&c, "cut", true).await;
    let path = format!("/v1/instances/{id}/stop?wait=30");
    let key = [("idempotency-key", "stop-cut-1".to_string())];
    let first = {
        let (c, path, key) = (c.clone(), path.clone(), key.clone());
        tokio::spawn(async move { c.send(Method::POST, &path, Auth::Bearer, None, &key).await })
    };
    let deadline = Instant::now() + LONG;
    while ops_of(&c, &id, "stop").await.is_empty() {
        assert!(Instant::now() < deadline, "the stop was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    assert!(first.await.unwrap().is_err(), "the first request got no answer");

    let _server = setup.start().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let retry = loop {
        let a = c.send(Method::POST, &path, Auth::Bearer, None, &key).await.expect("an answer");
        if a.status != 409 || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!((retry.status, retry.str("/state").as_deref()), (200, Some("success")), "the retry: {}", retry.body);
    assert_eq!(ops_of(&c, &id, "stop").await.len(), 1, "stopped once");
    assert_eq!(c.get(&format!("/v1/instances/{id}")).await["state"], "stopped");
}

/// A snapshot cut by one kill is resumed and ends `ready`, on the host too; one cut by every restart is
/// given up and removed, record and host file. Before, such snapshots stayed `snapshotting` forever.
#[tokio::test]
async fn a_snapshot_cut_mid_way_ends_ready_or_gone_never_snapshotting() {
    let dir = tempfile::tempdir().unwrap();
    let slow = ["--sim-delay", "snapshot=3000"];
    let setup = Setup::sim(dir.path(), Database::Sqlite, &slow);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let id = create(&c, "snapped", true).await;
    let host = setup.host();
    let instance: uuid::Uuid = id.parse().unwrap();

    let snap = |name: &'static str| {
        let (c, id) = (c.clone(), id.clone());
        async move {
            let a = c
                .native(Method::POST, &format!("/v1/instances/{id}/create-snapshot"), Some(json!({"name": name})))
                .await;
            assert_eq!(a.status, 202, "{}", a.body);
            a.str("/id").unwrap()
        }
    };
    let op = snap("once").await;
    until_running(&c, &op).await;
    server.kill9();
    server = setup.start().await;
    let done = c.wait(&op, LONG).await;
    assert_eq!((done["state"].as_str(), done["attempts"].as_u64()), (Some("success"), Some(2)), "{done}");
    let snapshots = c.get(&format!("/v1/snapshots?instance_id={id}")).await["items"].clone();
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{snapshots}");
    assert_eq!(snapshots[0]["state"], "ready", "{snapshots}");
    assert_eq!(host.snapshots(instance).await.unwrap().len(), 1);

    let op = snap("never").await;
    for attempt in 1..=3 {
        let deadline = Instant::now() + LONG;
        loop {
            let v = c.get(&format!("/v1/operations/{op}")).await;
            if v["state"] == "running" && v["attempts"] == attempt {
                break;
            }
            assert!(Instant::now() < deadline, "attempt {attempt} never ran: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill9();
        server = setup.start().await;
    }
    let done = c.wait(&op, LONG).await;
    assert_eq!((done["state"].as_str(), done["reason"].as_str()), (Some("failure"), Some("interrupted")), "{done}");
    let snapshots = c.get(&format!("/v1/snapshots?instance_id={id}")).await["items"].clone();
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "only the first, ready: {snapshots}");
    assert_eq!(snapshots[0]["state"], "ready");
    assert_eq!(host.snapshots(instance).await.unwrap().len(), 1, "nothing of the given-up one on the host");
    drop(server);
}

/// A disk resize cut by every restart is given up; the record then shows the size the host's disk has.
/// Before, the record kept the asked size (13 GB) over a 10 GB disk.
#[tokio::test]
async fn a_resize_cut_mid_way_leaves_the_record_and_the_disk_agreeing() {
    let dir = tempfile::tempdir().unwrap();
    let slow = ["--sim-delay", "resize_disk=3000"];
    let setup = Setup::sim(dir.path(), Database::Sqlite, &slow);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let id = create(&c, "grows", false).await;
    let instance: uuid::Uuid = id.parse().unwrap();
    let before = c.get(&format!("/v1/instances/{id}")).await["disk_size_gb"].as_u64().unwrap();
    let a = c
        .native(Method::POST, &format!("/v1/instances/{id}/resize-disk"), Some(json!({"disk_size_gb": before + 3})))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let op = a.str("/id").unwrap();
    for attempt in 1..=3 {
        let deadline = Instant::now() + LONG;
        while c.get(&format!("/v1/operations/{op}")).await["attempts"] != attempt {
            assert!(Instant::now() < deadline, "attempt {attempt} never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        until_running(&c, &op).await;
        server.kill9();
        server = setup.start().await;
    }
    let done = c.wait(&op, LONG).await;
    assert_eq!(done["state"], "failure", "{done}");
    let record = c.get(&format!("/v1/instances/{id}")).await;
    let disk = setup.host().disk_size_gb(instance).await.unwrap();
    assert_eq!(record["disk_size_gb"].as_u64(), Some(disk), "record {record} vs the host's {disk} GB");
    assert_eq!(record["state"], "stopped", "{record}");
    drop(server);
}

/// A create cut by every restart is given up, and the instance left shows what the host has; deleting it
/// gives its address back. No address is ever held by something that does not exist.
#[tokio::test]
async fn a_create_cut_until_given_up_leaves_no_address_behind() {
    let dir = tempfile::tempdir().unwrap();
    let slow = ["--sim-delay", "start=3000"];
    let setup = Setup::sim(dir.path(), Database::Sqlite, &slow);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let body = json!({"name": "doomed", "instance_type": "standard.small", "template": "busybox"});
    let a = c.native(Method::POST, "/v1/instances", Some(body)).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let op = a.str("/id").unwrap();
    let id = a.str("/target/id").unwrap();
    for attempt in 1..=3 {
        let deadline = Instant::now() + LONG;
        loop {
            let v = c.get(&format!("/v1/operations/{op}")).await;
            if v["state"] == "running" && v["attempts"] == attempt {
                break;
            }
            assert!(Instant::now() < deadline, "attempt {attempt} never ran: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill9();
        server = setup.start().await;
    }
    let done = c.wait(&op, LONG).await;
    assert_eq!((done["state"].as_str(), done["reason"].as_str()), (Some("failure"), Some("interrupted")), "{done}");
    let a = c.native(Method::DELETE, &format!("/v1/instances/{id}"), None).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(c.wait(&a.str("/id").unwrap(), LONG).await["state"], "success");
    server.stop(LONG);
    let store = setup.store().await;
    assert_eq!(store.list_addresses(None).await.unwrap(), vec![], "no address held by anything");
    assert!(setup.host().instances().await.unwrap_or_default().is_empty(), "nothing left on the host");
}

/// A client that gives up on a request waiting for its operation, then a clean stop: no idempotency key is
/// left held, and the retry after the restart is answered with what the first request did. Before, keys
/// were left "in progress" with no answer after a clean stop.
#[tokio::test]
async fn a_clean_stop_leaves_no_idempotency_key_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::sim(dir.path(), Database::Sqlite, &["--sim-delay", "stop=2000"]);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let id = create(&c, "left", true).await;
    let path = format!("/v1/instances/{id}/stop?wait=30");
    let key = [("idempotency-key", "left-stop".to_string())];
    let gone = {
        let (c, path, key) = (c.clone(), path.clone(), key.clone());
        tokio::spawn(async move { c.send(Method::POST, &path, Auth::Bearer, None, &key).await })
    };
    let deadline = Instant::now() + LONG;
    while ops_of(&c, &id, "stop").await.is_empty() {
        assert!(Instant::now() < deadline, "the stop was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client goes away; the server drops the request.
    gone.abort();
    let _ = gone.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop(LONG);
    {
        let store = setup.store().await;
        let holds = store.idempotency_audit().await.unwrap();
        assert_eq!((holds.held, holds.abandoned, holds.unknown), (0, 0, 0), "{holds:?}");
    }
    let _server = setup.start().await;
    let retry = c.send(Method::POST, &path, Auth::Bearer, None, &key).await.expect("an answer");
    assert_eq!((retry.status, retry.str("/state").as_deref()), (200, Some("success")), "{}", retry.body);
    assert_eq!(ops_of(&c, &id, "stop").await.len(), 1, "stopped once");
}
