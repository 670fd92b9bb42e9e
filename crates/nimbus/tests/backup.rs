//! `nimbus backup` and `nimbus restore`, as an operator uses them: a backup taken while the server serves a
//! steady load, restored on a fresh data dir over the same host, holds every write acknowledged before the
//! backup began; the restored server finds what changed on the host since — an instance created after the
//! backup is reported and left running (never destroyed), one deleted since shows `error` — and its store
//! passes the integrity check.

mod harness;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use nimbus_driver::{ActualState, Driver};
use reqwest::Method;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// A write a client got a 2xx for, and when.
#[derive(Debug, Clone)]
enum Write {
    Created { id: String, name: String },
    Label { id: String, key: String, value: String },
}

fn nimbus(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_remove("NIMBUS_DATABASE").env_remove("NIMBUS_DATA_DIR").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_every_write_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::sim(dir.path(), Database::Sqlite, &["--reconcile-secs", "1"]);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let acked: Arc<Mutex<Vec<(Instant, Write)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|n| {
            let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut mine: Vec<String> = Vec::new();
                for k in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    // Creates stop short of the instance network's 253 addresses, whatever the server's pace.
                    if mine.len() < 3 || (k % 4 == 0 && mine.len() < 50) {
                        let name = format!("w{n}-{k}");
                        let body = json!({"name": name, "instance_type": "standard.micro", "template": "busybox"});
                        let a = c.native(Method::POST, "/v1/instances", Some(body)).await;
                        assert_eq!(a.status, 202, "{}", a.body);
                        let id = a.str("/target/id").unwrap();
                        acked.lock().unwrap().push((Instant::now(), Write::Created { id: id.clone(), name }));
                        mine.push(id);
                    } else {
                        let id = mine[k % mine.len()].clone();
                        let (key, value) = (format!("k{k}"), format!("v{n}"));
                        let a = c
                            .native(
                                Method::PATCH,
                                &format!("/v1/instances/{id}"),
                                Some(json!({"labels": {&key: &value}})),
                            )
                            .await;
                        assert_eq!(a.status, 200, "{}", a.body);
                        acked.lock().unwrap().push((Instant::now(), Write::Label { id, key, value }));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let file = dir.path().join("nimbus-backup.db");
    let began = Instant::now();
    let out = {
        let (file, data) = (file.clone(), setup.data_dir.clone());
        tokio::task::spawn_blocking(move || {
            nimbus(&["backup", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
        })
        .await
        .unwrap()
    };
    assert!(out.status.success(), "nimbus backup: {}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let writes = acked.lock().unwrap().clone();
    let before: Vec<&Write> = writes.iter().filter(|(t, _)| *t < began).map(|(_, w)| w).collect();
    assert!(before.len() > 20, "a steady load before the backup: {} writes", before.len());
    assert!(writes.len() > before.len(), "and during it");
    let again = nimbus(&["backup", file.to_str().unwrap(), "--data-dir", setup.data_dir.to_str().unwrap()]);
    assert!(!again.status.success(), "a backup never overwrites a file");

    // After the backup: one instance made, one deleted.
    let made = c
        .native(
            Method::POST,
            "/v1/instances",
            Some(json!({"name": "after", "instance_type": "standard.micro", "template": "busybox"})),
        )
        .await;
    let made_op = c.wait(&made.str("/id").unwrap(), LONG).await;
    let made_id: uuid::Uuid = made_op["target"]["id"].as_str().unwrap().parse().unwrap();
    let Write::Created { id: gone, .. } = before.iter().find(|w| matches!(w, Write::Created { .. })).unwrap() else {
        unreachable!()
    };
    let gone = gone.clone();
    let deleting = loop {
        let a = c.native(Method::DELETE, &format!("/v1/instances/{gone}"), None).await;
        if a.status == 202 {
            break a;
        }
        assert_eq!(a.status, 409, "{}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(c.wait(&deleting.str("/id").unwrap(), LONG).await["state"], "success");

    // A restore refuses a data dir a server runs on.
    let busy = nimbus(&["restore", file.to_str().unwrap(), "--data-dir", setup.data_dir.to_str().unwrap()]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("running"), "{}", String::from_utf8_lossy(&busy.stderr));
    server.stop(LONG);

    // Restored on a fresh data dir, over the same host.
    let restored = Setup {
        data_dir: dir.path().join("restored"),
        database: Database::Sqlite,
        host_dir: setup.host_dir.clone(),
        args: setup.args.clone(),
        port: free_port(),
        log: dir.path().join("restored.log"),
    };
    let out = nimbus(&["restore", file.to_str().unwrap(), "--data-dir", restored.data_dir.to_str().unwrap()]);
    assert!(out.status.success(), "nimbus restore: {}", String::from_utf8_lossy(&out.stderr));
    let mut server = restored.start().await;
    let c = Client::new(&server.base);
    let instances: Vec<Value> = c.all("/v1/instances").await;
    let find = |id: &str| instances.iter().find(|i| i["id"] == id);
    for w in &before {
        match w {
            Write::Created { id, name } => {
                let i =
                    find(id).unwrap_or_else(|| panic!("instance {name} ({id}), created before the backup, is lost"));
                assert_eq!(i["name"].as_str(), Some(name.as_str()));
            }
            Write::Label { id, key, value } => {
                let i = find(id).unwrap_or_else(|| panic!("instance {id} is lost"));
                assert_eq!(
                    i["labels"][key].as_str(),
                    Some(value.as_str()),
                    "label {key} of {id}, set before the backup: {i}"
                );
            }
        }
    }
    assert!(find(&made_id.to_string()).is_none(), "made after the backup: no record");

    // The host: the instance made since is reported and keeps running; the one deleted since shows error.
    let host = restored.host();
    let deadline = Instant::now() + LONG;
    loop {
        let h = c.get("/v1/host").await;
        let reported = h["unknown_instances"].as_array().unwrap().iter().any(|u| u["id"] == json!(made_id));
        let gone_state = c.get(&format!("/v1/instances/{gone}")).await["state"].clone();
        if reported && gone_state == "error" {
            break;
        }
        assert!(Instant::now() < deadline, "the restored server never noticed the host's changes: {h}, {gone_state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(host.inspect(made_id).await.unwrap(), ActualState::Running, "left running, passes later");
    server.stop(LONG);
    let report = restored.store().await.check_integrity().await.unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    println!("backup under load: {} writes acknowledged before it, all restored", before.len());
}

#[test]
fn a_postgres_store_is_backed_up_with_pg_dump_and_the_command_says_so() {
    let out = nimbus(&["backup", "/tmp/never-written.db", "--database", "postgres://nimbus@db.example/nimbus"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("pg_dump") && said.contains("pg_restore"), "{said}");
    assert!(!std::path::Path::new("/tmp/never-written.db").exists());
}
