//! Shared by the dialect tests that drive a provider's real client SDK: a `nimbus server --driver sim` on a
//! free loopback port, and a way to run a Python script inside that SDK's virtualenv (made by
//! `scripts/install-sdks.sh`, which the README's test command runs first).
//!
//! Each test binary includes this with `mod sdk;` and uses what it needs.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
/// The bootstrap administrator's key id and secret of every test server.
pub const ADMIN_KEY: &str = "NIMsdktest";
pub const ADMIN_SECRET: &str = "sdk-test-secret-0123456789";

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub url: String,
    pub listen: String,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Extra arguments go to `nimbus server` (for example `--sim-delay-ms 200`).
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        // Bound then released: the port is free when the server binds it a moment later.
        let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let child = Command::new(BIN)
            .args(["server", "--driver", "sim", "--listen", &listen, "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("NIMBUS_BOOTSTRAP_KEY", ADMIN_KEY)
            .env("NIMBUS_BOOTSTRAP_SECRET", ADMIN_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the server");
        let mut server = Server { child, url: format!("http://{listen}"), listen: listen.clone(), dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&listen).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited early: {status}\n{}", server.log());
            }
            assert!(Instant::now() < deadline, "the server did not listen on {listen}");
            std::thread::sleep(Duration::from_millis(25));
        }
        server
    }

    /// What the server wrote to stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs `script` (a path relative to `crates/nimbus/tests/sdk/`) with the Python of the `venv` SDK
    /// virtualenv, with `NIMBUS_URL`, `NIMBUS_KEY` and `NIMBUS_SECRET` set, and panics with its output and the
    /// server's log unless it exits 0. Returns its stdout.
    pub fn python(&self, venv: &str, script: &str, env: &[(&str, &str)]) -> String {
        let out = self.python_output(venv, script, env);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{script} failed with {:?}\n--- stdout\n{stdout}\n--- stderr\n{}\n--- server log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        stdout
    }

    pub fn python_output(&self, venv: &str, script: &str, env: &[(&str, &str)]) -> Output {
        let python = venv_dir(venv).join("bin/python");
        assert!(
            python.exists(),
            "no {} — run scripts/install-sdks.sh (the README's test command does) to install the real SDKs",
            python.display()
        );
        let mut cmd = Command::new(python);
        cmd.arg(scripts_dir().join(script))
            .env("NIMBUS_URL", &self.url)
            .env("NIMBUS_KEY", ADMIN_KEY)
            .env("NIMBUS_SECRET", ADMIN_SECRET)
            .env("HOME", self.dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run python")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `scripts/install-sdks.sh` put the virtualenvs (`NIMBUS_SDK_DIR` overrides, as it does there).
pub fn venv_dir(venv: &str) -> PathBuf {
    let root = std::env::var_os("NIMBUS_SDK_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target/sdk"));
    let root = if root.is_relative() { workspace().join(root) } else { root };
    root.join(venv)
}

pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}
