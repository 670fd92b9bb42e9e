//! What a real `nimbus server` process keeps to itself: its data dir and database are its owner's alone, and
//! `/metrics` is served without a key only on the operator's separate address.

mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use harness::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_dir_and_the_database_are_the_owners_alone_and_metrics_need_a_key_or_their_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let setup = Setup::sim(dir.path(), Database::Sqlite, &["--metrics-listen", &metrics_listen]);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let created = c
        .native(
            reqwest::Method::POST,
            "/v1/ssh-keys",
            Some(serde_json::json!({"name": "k",
        "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"})),
        )
        .await;
    assert!(created.ok(), "{:?}", created.body);

    // Made 0755 by the harness before the server started: the server takes it back.
    assert_eq!(mode(&setup.data_dir), 0o700, "the data dir");
    for file in ["nimbus.db", "nimbus.db-wal", "server-id"] {
        let path = setup.data_dir.join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }
    assert!(setup.data_dir.join("nimbus.db").exists());

    let http = reqwest::Client::new();
    let anonymous = http.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let scraped = http.get(format!("http://{metrics_listen}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status().as_u16(), 200);
    assert!(scraped.text().await.unwrap().contains("nimbus_http_requests_total"));
    let other = http.get(format!("http://{metrics_listen}/v1/instances")).send().await.unwrap();
    assert_eq!(other.status().as_u16(), 404, "the metrics address serves nothing else");
    server.stop(Duration::from_secs(20));
}
