//! Faults outside Nimbus, made for real: the data dir's filesystem full (a small tmpfs), the database
//! read-only (a read-only mount under SQLite; PostgreSQL put into read-only transactions and its sessions
//! cut), `qemu-img` and QEMU failing (stub programs in front of the real ones). Each time the server
//! answers with a clear error — never a hang, a panic or a 500 — records what failed, recovers once the
//! fault is gone, and loses nothing.
//!
//! The mounts need root; those tests skip, saying so, without it. The QEMU ones need real VMs.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;
use nimbus_driver::Driver;
use reqwest::Method;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);
/// No request may take longer than this to be answered, fault or not: a fault is never a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// A tmpfs of `mib` MiB mounted at `path`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs at {}", path.display());
        Tmpfs(path.to_path_buf())
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remount {} {options}", self.0.display());
    }

    /// Fills the filesystem to the last byte; returns the filler, whose removal frees the space.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        while f.write_all(&small[..1]).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn needs_root(test: &str) -> bool {
    if !is_root() {
        println!("SKIPPED {test}: mounting a filesystem needs root");
        return false;
    }
    true
}

/// One request, answered within [`ANSWER_WITHIN`].
async fn answered(c: &Client, method: Method, path: &str, body: Option<Value>, headers: &[(&str, String)]) -> Answer {
    let started = Instant::now();
    let a = c.send(method.clone(), path, Auth::Bearer, body.as_ref(), headers).await;
    let a = a.unwrap_or_else(|e| panic!("{method} {path}: no answer ({e})"));
    assert!(started.elapsed() < ANSWER_WITHIN, "{method} {path} took {:?}", started.elapsed());
    a
}

/// A refusal that says the store cannot write now: 503, `unavailable`, a reason, and when to retry.
fn assert_unavailable(a: &Answer, what: &str, reason: &str) {
    assert_eq!((a.status, a.str("/error/code").as_deref()), (503, Some("unavailable")), "{what}: {}", a.body);
    let message = a.str("/error/message").unwrap_or_default();
    assert!(message.contains(reason), "{what}: the message names the cause ({reason}): {message}");
    assert!(a.headers.contains_key("retry-after"), "{what}: {:?}", a.headers);
}

async fn create(c: &Client, name: &str) -> String {
    let body = json!({"name": name, "instance_type": "standard.micro", "template": "busybox"});
    let a = c.native(Method::POST, "/v1/instances", Some(body)).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let op = c.wait(&a.str("/id").unwrap(), LONG).await;
    assert_eq!(op["state"], "success", "{op}");
    op["target"]["id"].as_str().unwrap().to_string()
}

fn panicked(server: &Server) -> bool {
    server.log_tail().contains("panicked")
}

/// The data dir's filesystem fills up while the server serves, with an operation under way: writes are
/// refused with a clear 503 (reads go on), the operation waits, the server stays up; once space is freed
/// the same requests (the same idempotency key) succeed, the operation ends, and nothing is lost.
#[tokio::test]
async fn a_full_disk_is_answered_clearly_and_recovered_from_losing_nothing() {
    if !needs_root("a_full_disk_is_answered_clearly_and_recovered_from_losing_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::sim(dir.path(), Database::Sqlite, &["--sim-delay", "stop=2000", "--reconcile-secs", "1"]);
    setup.data_dir = dir.path().join("mnt/data");
    let fs = Tmpfs::mount(&dir.path().join("mnt"), 32);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let kept = create(&c, "kept").await;
    let stopping = create(&c, "stopping").await;
    let a =
        c.native(Method::PATCH, &format!("/v1/instances/{kept}"), Some(json!({"labels": {"before": "full"}}))).await;
    assert_eq!(a.status, 200);
    let stop = c.native(Method::POST, &format!("/v1/instances/{stopping}/stop"), None).await;
    assert_eq!(stop.status, 202);
    let stop_op = stop.str("/id").unwrap();

    let filler = fs.fill();
    let create_body = json!({"name": "during", "instance_type": "standard.micro", "template": "busybox"});
    let key = [("idempotency-key", "create-during-full".to_string())];
    let refused = answered(&c, Method::POST, "/v1/instances", Some(create_body.clone()), &key).await;
    assert_unavailable(&refused, "a create", "full");
    let refused =
        answered(&c, Method::PATCH, &format!("/v1/instances/{kept}"), Some(json!({"labels": {"during": "full"}})), &[])
            .await;
    assert_unavailable(&refused, "a label change", "full");
    let listed = answered(&c, Method::GET, "/v1/instances", None, &[]).await;
    assert_eq!(listed.status, 200, "reads go on: {}", listed.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(server.ready(Duration::from_secs(1)).await.is_ok() && !panicked(&server), "{}", server.log_tail());
    assert!(server.log_tail().contains("full"), "the log says what failed:\n{}", server.log_tail());

    std::fs::remove_file(&filler).unwrap();
    let created = answered(&c, Method::POST, "/v1/instances", Some(create_body), &key).await;
    assert_eq!(created.status, 202, "once space is back: {}", created.body);
    assert_eq!(c.wait(&created.str("/id").unwrap(), LONG).await["state"], "success");
    assert_eq!(c.wait(&stop_op, LONG).await["state"], "success", "the operation under way ended");
    let i = c.get(&format!("/v1/instances/{kept}")).await;
    assert_eq!(i["labels"]["before"], "full", "{i}");
    assert!(i["labels"].get("during").is_none(), "a refused write changed nothing: {i}");
    assert_eq!(c.get(&format!("/v1/instances/{stopping}")).await["state"], "stopped");
    server.stop(LONG);
    let store = setup.store().await;
    let audit = audit(store.as_ref(), &setup.host()).await;
    assert!(audit.clean(), "{audit:?}");
    assert_eq!(audit.instances, 3);
}

/// A database that cannot be written when the server starts (a read-only mount): the server says so
/// and exits, without a panic; once writable again it starts, with everything there.
#[tokio::test]
async fn a_read_only_database_is_refused_clearly_at_start_and_served_once_writable() {
    if !needs_root("a_read_only_database_is_refused_clearly_at_start_and_served_once_writable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::sim(dir.path(), Database::Sqlite, &[]);
    setup.data_dir = dir.path().join("mnt/data");
    let fs = Tmpfs::mount(&dir.path().join("mnt"), 32);
    let mut server = setup.start().await;
    let c = Client::new(&server.base);
    let id = create(&c, "kept").await;
    server.stop(LONG);

    fs.remount("ro");
    let mut server = setup.spawn();
    let err = server.ready(Duration::from_secs(30)).await.expect_err("a read-only database is refused");
    assert!(err.contains("exited"), "{err}");
    let said = err.to_lowercase();
    assert!(said.contains("read-only") || said.contains("readonly"), "the reason is given: {err}");
    assert!(said.contains("data dir") || said.contains("database"), "and what it is about: {err}");
    assert!(!err.contains("panicked"), "{err}");

    fs.remount("rw");
    let server = setup.start().await;
    let c = Client::new(&server.base);
    assert_eq!(c.get(&format!("/v1/instances/{id}")).await["state"], "running");
}

/// PostgreSQL turned read-only under a running server (every session cut and reopened read-only): writes
/// are refused with a clear 503 and reads go on; once writable again the same requests succeed.
#[tokio::test]
async fn a_read_only_postgres_database_is_answered_clearly_and_recovered_from() {
    let Some(db) = Database::postgres().await else { return };
    let Database::Postgres { url, .. } = &db else { unreachable!() };
    let (url, name) = (url.clone(), url.rsplit('/').next().unwrap().to_string());
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::sim(dir.path(), db, &[]);
    let server = setup.start().await;
    let c = Client::new(&server.base);
    let id = create(&c, "kept").await;

    let admin = |sql: String| {
        let url = url.clone();
        async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            // This session may itself have started read-only: it is the operator's, and writes. (On its own:
            // statements sent together run in one transaction, which would have begun read-only.)
            sqlx::raw_sql("SET default_transaction_read_only = off").execute(&mut conn).await.unwrap();
            sqlx::raw_sql(&sql).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
    };
    let cut = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );
    // The setting committed before the sessions are cut: sent together, they would run in one transaction,
    // and a session the server opened between the cut and that commit would still write.
    admin(format!("ALTER DATABASE \"{name}\" SET default_transaction_read_only = on")).await;
    admin(cut.clone()).await;
    let key = [("idempotency-key", "label-read-only".to_string())];
    let refused = answered(&c, Method::POST, &format!("/v1/instances/{id}/stop"), None, &key).await;
    assert_unavailable(&refused, "a stop", "read-only");
    let listed = answered(&c, Method::GET, "/v1/instances", None, &[]).await;
    assert_eq!(listed.status, 200, "reads go on: {}", listed.body);

    admin(format!("ALTER DATABASE \"{name}\" RESET default_transaction_read_only")).await;
    admin(cut).await;
    let deadline = Instant::now() + LONG;
    let stop = loop {
        let a = answered(&c, Method::POST, &format!("/v1/instances/{id}/stop"), None, &key).await;
        if a.status != 503 || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stop.status, 202, "{}", stop.body);
    assert_eq!(c.wait(&stop.str("/id").unwrap(), LONG).await["state"], "success");
    assert!(!panicked(&server));
}

/// A stand-in for a program that fails (as a full disk or a broken install would make it) while
/// `<dir>/fail` exists, and runs the real one otherwise.
fn failing_stub(dir: &Path, program: &str, message: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap();
    let stub = dir.join(program);
    let flag = dir.join("fail");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo '{program}: {message}' >&2; exit 1; fi\nexec '{}' \"$@\"\n",
            flag.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    stub
}

/// `qemu-img` failing, then QEMU itself: the create (then the start) fails with the program's own words
/// on the operation, the instance shows what the host has, nothing is left running; once the programs
/// work again the same instance starts and a new one is created.
#[tokio::test]
async fn failing_qemu_img_and_qemu_are_recorded_and_recovered_from() {
    if !can_run_vms("failing_qemu_img_and_qemu_are_recorded_and_recovered_from") {
        return;
    }
    let stubs = tempfile::tempdir().unwrap();
    let qemu_img = failing_stub(stubs.path(), "qemu-img", "Could not create image: No space left on device");
    let qemu = failing_stub(stubs.path(), "qemu-system-x86_64", "cannot set up guest memory: Cannot allocate memory");
    let cloud = VmCloud::new(1, &["--qemu-img", qemu_img.to_str().unwrap(), "--qemu-binary", qemu.to_str().unwrap()]);
    let server = cloud.setup.start().await;
    let c = Client::new(&server.base);
    let flag = stubs.path().join("fail");

    std::fs::write(&flag, "").unwrap();
    let body = json!({"name": "img", "instance_type": "standard.micro", "template": "busybox"});
    let a = c.native(Method::POST, "/v1/instances", Some(body)).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let op = c.wait(&a.str("/id").unwrap(), Duration::from_secs(150)).await;
    assert_eq!(op["state"], "failure", "{op}");
    assert!(op["message"].as_str().unwrap_or("").contains("No space left on device"), "the cause is recorded: {op}");
    let id = op["target"]["id"].as_str().unwrap().to_string();
    let instance = c.get(&format!("/v1/instances/{id}")).await;
    let host = cloud.host().await;
    let actual = host.inspect(id.parse().unwrap()).await.unwrap();
    assert!(power_agrees(instance["state"].as_str().unwrap(), actual), "what the host has ({actual:?}): {instance}");
    assert_eq!(instance["operation_id"], Value::Null, "not left locked: {instance}");
    assert!(qemu_pids(&id).is_empty(), "nothing runs");

    // qemu-img works again, QEMU does not: the disk is made, the boot fails.
    std::fs::remove_file(&flag).unwrap();
    let a = c.native(Method::DELETE, &format!("/v1/instances/{id}"), None).await;
    assert_eq!(c.wait(&a.str("/id").unwrap(), LONG).await["state"], "success", "the failed instance deletes");
    let body = json!({"name": "boot", "instance_type": "standard.micro", "template": "busybox", "auto_start": false});
    let a = c.native(Method::POST, "/v1/instances", Some(body)).await;
    let op = c.wait(&a.str("/id").unwrap(), Duration::from_secs(150)).await;
    assert_eq!(op["state"], "success", "{op}");
    let id = op["target"]["id"].as_str().unwrap().to_string();
    std::fs::write(&flag, "").unwrap();
    let a = c.native(Method::POST, &format!("/v1/instances/{id}/start"), None).await;
    let op = c.wait(&a.str("/id").unwrap(), Duration::from_secs(150)).await;
    assert_eq!(op["state"], "failure", "{op}");
    assert!(op["message"].as_str().unwrap_or("").contains("Cannot allocate memory"), "the cause is recorded: {op}");
    assert_eq!(c.get(&format!("/v1/instances/{id}")).await["state"], "stopped");
    assert!(qemu_pids(&id).is_empty());

    std::fs::remove_file(&flag).unwrap();
    let a = c.native(Method::POST, &format!("/v1/instances/{id}/start"), None).await;
    assert_eq!(c.wait(&a.str("/id").unwrap(), Duration::from_secs(150)).await["state"], "success");
    assert_eq!(qemu_pids(&id).len(), 1, "running once the program works");
    assert_eq!(host.inspect(id.parse().unwrap()).await.unwrap(), nimbus_driver::ActualState::Running);
    let a = c.native(Method::DELETE, &format!("/v1/instances/{id}"), None).await;
    assert_eq!(c.wait(&a.str("/id").unwrap(), LONG).await["state"], "success");
    assert!(!server.log_tail().contains("panicked"));
}
