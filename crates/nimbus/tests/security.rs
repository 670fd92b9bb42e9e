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

/// A client that never finishes its request's headers, or its body, is cut off instead of holding a
/// connection (it was held for over 75 s before); and a server holding its most connections leaves the next
/// in the backlog until one closes, rather than taking them all.
#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::sim(
        dir.path(),
        Database::Sqlite,
        &["--header-timeout-secs", "2", "--body-timeout-secs", "1", "--max-connections", "3"],
    );
    let mut server = setup.start().await;
    let address = server.base.trim_start_matches("http://").to_string();
    let read_all = |mut stream: tokio::net::TcpStream| async move {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        (read.is_ok(), String::from_utf8_lossy(&answer).into_owned())
    };

    // Headers that never end: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let (closed, _) = read_all(slow).await;
    assert!(closed, "a request whose headers never end was held for 10 s");
    assert!(started.elapsed() < Duration::from_secs(6), "closed after {:?}", started.elapsed());

    // A body that never ends: answered 408.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/ssh-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\":"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let (closed, answer) = read_all(slow).await;
    assert!(closed, "a body that never ends was held for 10 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Three idle connections take every slot: a fourth client waits...
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = reqwest::Client::builder().timeout(Duration::from_millis(800)).build().unwrap();
    let waiting = http.get(format!("{}/healthz", server.base)).send().await;
    assert!(waiting.is_err(), "a fourth connection was served while three were held: {waiting:?}");
    // ...until the idle ones are cut off for sending nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let served = http.get(format!("{}/healthz", server.base)).send().await.expect("served once a slot is free");
    assert_eq!(served.status().as_u16(), 200);
    drop(idle);
    server.stop(Duration::from_secs(20));
}
