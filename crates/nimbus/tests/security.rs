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

/// `--tls-cert`/`--tls-key`: the API is served over TLS, which a client trusting the CA reaches (the CLI
/// with `--ca-file`, reqwest with the root added) and a client that does not is refused; plain HTTP on the
/// same port is not served.
#[tokio::test]
async fn the_server_speaks_tls_to_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    // A CA and a server certificate it signed (a self-signed leaf is not a CA any client should take).
    std::fs::write(
        dir.path().join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let steps: [Vec<&str>; 3] = [
        [
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", "/CN=nimbus-test-ca", "-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
        [&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "leaf.csr"]].concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
    ];
    for args in steps {
        let made =
            std::process::Command::new("openssl").args(&args).current_dir(dir.path()).output().expect("openssl runs");
        assert!(made.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&made.stderr));
    }
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut server = std::process::Command::new(BIN)
        .args(["server", "--driver", "sim", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("NIMBUS_BOOTSTRAP_KEY", KEY)
        .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut server);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_pem).unwrap()).unwrap();
    let trusting = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = trusting.get(format!("{url}/healthz")).send().await;
        if let Ok(r) = &answer {
            assert_eq!(r.status().as_u16(), 200);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the TLS server never answered: {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let who = trusting.get(format!("{url}/v1/whoami")).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(who.status().as_u16(), 200);
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP answered on the TLS port");

    let cli = |ca: bool| {
        let mut c = std::process::Command::new(BIN);
        c.args(["--url", &url, "--token", SECRET, "-o", "json"]);
        if ca {
            c.arg("--ca-file").arg(&ca_pem);
        }
        c.arg("whoami").env_remove("NIMBUS_CA_FILE").output().unwrap()
    };
    let ok = cli(true);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let refused = cli(false);
    assert!(!refused.status.success(), "the CLI trusted an unknown CA");

    // The clouds' clients are sent on to https: Exoscale's zones name this server's https endpoint.
    let zones: serde_json::Value = trusting.get(format!("{url}/v2/zone")).send().await.unwrap().json().await.unwrap();
    let endpoint = zones["zones"][0]["api-endpoint"].as_str().unwrap_or_default().to_string();
    assert!(endpoint.starts_with(&format!("{url}/v2")), "{zones}");

    // The interactive console is a websocket: wss://, trusting the same CA.
    let made = trusting
        .post(format!("{url}/v1/instances"))
        .bearer_auth(SECRET)
        .json(&serde_json::json!({"name": "vm", "instance_type": "standard.micro", "template": "busybox"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status().as_u16(), 202);
    let op: serde_json::Value = made.json().await.unwrap();
    let waited = trusting
        .get(format!("{url}/v1/operations/{}?wait=60", op["id"].as_str().unwrap()))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    let op: serde_json::Value = waited.json().await.unwrap();
    assert_eq!(op["state"], "success", "{op}");
    let console = |ca: bool| {
        let mut c = std::process::Command::new(BIN);
        c.args(["--url", &url, "--token", SECRET]);
        if ca {
            c.arg("--ca-file").arg(&ca_pem);
        }
        // Piped, empty input: the console detaches once the guest has been quiet a moment.
        c.args(["instance", "console", "vm", "--follow"]).env_remove("NIMBUS_CA_FILE");
        c.stdin(std::process::Stdio::null()).output().unwrap()
    };
    let attached = console(true);
    assert!(attached.status.success(), "the console over wss://: {}", String::from_utf8_lossy(&attached.stderr));
    let refused = console(false);
    assert!(!refused.status.success(), "the console trusted an unknown CA");

    // A host's agent reaches the control plane over https:// (and would bring consoles back over wss://).
    let token = trusting
        .post(format!("{url}/v1/host-tokens"))
        .bearer_auth(SECRET)
        .json(&serde_json::json!({"host": "tls-host"}))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status().as_u16(), 201);
    let token: serde_json::Value = token.json().await.unwrap();
    let agent_log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let agent = std::process::Command::new(BIN)
        .args(["agent", "--driver", "sim", "--name", "tls-host", "--server", &url, "--ca-file"])
        .arg(&ca_pem)
        .args(["--token", token["token"].as_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("agent"))
        .stdout(std::process::Stdio::null())
        .stderr(agent_log)
        .spawn()
        .unwrap();
    let mut agent = agent;
    let _kill_agent = Kill(&mut agent);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let hosts: serde_json::Value = trusting
            .get(format!("{url}/v1/hosts/tls-host"))
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if hosts["reachable"] == true || hosts["state"] == "ready" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never registered over TLS: {hosts}\n{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a copy of the data dir gives away: no secret in clear. API keys' secrets (the bootstrap key's and a
/// new one's), an instance's generated password and the stored answer of an idempotent key creation (which
/// carries the new secret) are sealed under the server's key ring, `seal.key`, its owner's alone; and the
/// server still uses them all, across a restart: EXO2 signatures check against the stored secret, the
/// password is revealed, the idempotent retry is answered with the key's secret.
#[tokio::test]
async fn a_copy_of_the_data_dir_holds_no_secret_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::sim(dir.path(), Database::Sqlite, &[]);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let create_key = serde_json::json!({"name": "ci", "role": "member"});
    let retry = [("idempotency-key", "make-ci-key".to_string())];
    let made = c.send(reqwest::Method::POST, "/v1/api-keys", Auth::Bearer, Some(&create_key), &retry).await.unwrap();
    assert_eq!(made.status, 201, "{}", made.body);
    let new_secret = made.str("/secret").expect("the new key's secret");
    let created = c
        .native(
            reqwest::Method::POST,
            "/v1/instances",
            Some(serde_json::json!({"name": "vm", "instance_type": "standard.micro", "template": "busybox"})),
        )
        .await;
    let op = c.wait(&created.str("/id").unwrap(), Duration::from_secs(60)).await;
    let id = op["target"]["id"].as_str().unwrap().to_string();
    let password = c.get(&format!("/v1/instances/{id}/password")).await["password"].as_str().unwrap().to_string();
    server.stop(Duration::from_secs(20));

    let ring = setup.data_dir.join("seal.key");
    assert_eq!(mode(&ring), 0o600, "the seal key ring");
    let mut scanned = 0;
    for entry in std::fs::read_dir(&setup.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path == ring || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for (what, secret) in
            [("the bootstrap key's secret", SECRET), ("a new key's secret", &new_secret), ("a password", &password)]
        {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{what} is in clear in {}", path.display());
        }
        scanned += 1;
    }
    assert!(scanned >= 2, "the database was scanned");

    let server = setup.start().await;
    let c = Client::new(&server.base);
    let signed = c.send(reqwest::Method::GET, "/v2/instance", Auth::Exoscale, None, &[]).await.unwrap();
    assert_eq!(signed.status, 200, "an EXO2 signature checks against the sealed secret: {}", signed.body);
    let again = c.send(reqwest::Method::POST, "/v1/api-keys", Auth::Bearer, Some(&create_key), &retry).await.unwrap();
    assert_eq!(again.str("/secret").as_deref(), Some(new_secret.as_str()), "the retry's stored answer: {}", again.body);
    let revealed = c.get(&format!("/v1/instances/{id}/password")).await;
    assert_eq!(revealed["password"].as_str(), Some(password.as_str()));
    let by_new_key = c.http.get(format!("{}/v1/instances", server.base)).bearer_auth(&new_secret).send().await.unwrap();
    assert_eq!(by_new_key.status().as_u16(), 200);
}
