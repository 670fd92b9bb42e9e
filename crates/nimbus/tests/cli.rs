//! The `nimbus` command line against a real server: the same binary runs `server --driver sim` on a free port.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
const KEY: &str = "NIMclitest";
const SECRET: &str = "cli-test-secret-0123456789";
const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f test@nimbus";

struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        // Bound then released: the port is free when the server binds it a moment later.
        let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args(["server", "--driver", "sim", "--listen", &listen, "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("NIMBUS_BOOTSTRAP_KEY", KEY)
            .env("NIMBUS_BOOTSTRAP_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let mut server = Server { child, url: format!("http://{listen}"), dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&listen).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited early: {status}");
            }
            assert!(Instant::now() < deadline, "the server did not listen on {listen}");
            std::thread::sleep(Duration::from_millis(25));
        }
        server
    }

    /// The client, connected by environment, with a config file of its own so the user's is never read.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("NIMBUS_URL", &self.url)
            .env("NIMBUS_TOKEN", SECRET)
            .env("NIMBUS_CONFIG", self.dir.path().join("config.yaml"))
            .env_remove("NIMBUS_PROFILE")
            .env_remove("NIMBUS_SECRET")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run nimbus")
    }

    /// Runs and insists on success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "nimbus {args:?} failed with {:?}: {}", out.status, stderr(&out));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("nimbus {args:?} -o json is not JSON ({e}): {text}"))
    }

    fn create(&self, name: &str, extra: &[&str]) -> Value {
        let mut args = vec!["instance", "create", name, "--type", "standard.small", "--template", "busybox"];
        args.extend(extra);
        self.json(&args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code, not a signal")
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn create_waits_and_prints_the_instance() {
    let s = Server::start();
    let i = s.create("web", &["--label", "env=prod", "--label", "tier=front", "--disk-size", "12"]);
    assert_eq!(i["name"], "web");
    assert_eq!(i["state"], "running", "create waits until the instance runs: {i}");
    assert_eq!(i["labels"]["env"], "prod");
    assert_eq!(i["labels"]["tier"], "front");
    assert_eq!(i["disk_size_gb"], 12);

    // For people: a key/value list, and the progress of the operation on stderr.
    let out = s.run(&["instance", "create", "db", "--type", "standard.small", "--template", "busybox"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("name:") && l.ends_with("db")), "{text}");
    assert!(stderr(&out).contains("create instance"), "progress lines on stderr: {}", stderr(&out));
}

#[test]
fn create_sends_user_data_base64() {
    let s = Server::start();
    let file = s.dir.path().join("init.sh");
    std::fs::write(&file, "#!/bin/sh\necho hello\n").unwrap();
    let i = s.create("boot", &["--user-data-file", file.to_str().unwrap()]);
    assert_eq!(i["user_data"], "IyEvYmluL3NoCmVjaG8gaGVsbG8K");
}

#[test]
fn list_filters_by_selector_and_prints_json_tables_and_ids() {
    let s = Server::start();
    let prod = s.create("a", &["--label", "env=prod"]);
    s.create("b", &["--label", "env=dev"]);

    let items = s.json(&["instance", "list", "-l", "env=prod"]);
    let items = items.as_array().expect("a JSON array");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["id"], prod["id"]);

    let table = s.ok(&["instance", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("ID ") && lines[0].contains("NAME") && lines[0].contains("STATE"), "{table}");
    // Aligned: every row's NAME column starts where the header's does.
    let col = lines[0].find("NAME").unwrap();
    for row in &lines[1..] {
        assert!(row[col..].starts_with('a') || row[col..].starts_with('b'), "{table}");
    }

    let quiet = s.ok(&["instance", "list", "--quiet", "-l", "env=dev"]);
    let ids: Vec<&str> = quiet.lines().collect();
    assert_eq!(ids.len(), 1);
    assert!(is_uuid(ids[0]), "{quiet}");

    let yaml = s.ok(&["instance", "list", "-o", "yaml", "-l", "env=prod"]);
    let parsed: Value = serde_yaml::from_str(&yaml).expect("YAML");
    assert_eq!(parsed[0]["name"], "a");
}

#[test]
fn show_resolves_names_and_refuses_ambiguous_ones() {
    let s = Server::start();
    let web = s.create("web", &[]);
    let shown = s.json(&["instance", "show", "web"]);
    assert_eq!(shown["id"], web["id"]);
    let by_id = s.json(&["instance", "show", web["id"].as_str().unwrap()]);
    assert_eq!(by_id["name"], "web");

    let other = s.create("web", &[]);
    let out = s.run(&["instance", "show", "web"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(web["id"].as_str().unwrap()) && err.contains(other["id"].as_str().unwrap()), "{err}");
}

#[test]
fn stop_start_and_a_refused_action() {
    let s = Server::start();
    s.create("web", &[]);
    assert_eq!(s.json(&["instance", "stop", "web"])["state"], "stopped");
    assert_eq!(s.json(&["instance", "start", "web"])["state"], "running");
    assert_eq!(s.json(&["instance", "reboot", "web"])["state"], "running");
    // A rescue start boots the rescue system (the sim guest says which system it booted).
    s.ok(&["instance", "stop", "web"]);
    assert_eq!(s.json(&["instance", "start", "web", "--rescue"])["state"], "running");
    let log = s.ok(&["instance", "console", "web"]);
    let last_boot = log.lines().rev().find(|l| l.contains("booted")).unwrap_or_default();
    assert!(last_boot.contains("the rescue system"), "{log}");
    let shown = s.ok(&["instance", "show", "web"]);
    assert!(shown.lines().any(|l| l.starts_with("rescue:") && l.trim_end().ends_with("yes")), "{shown}");

    let out = s.run(&["instance", "start", "web"]);
    assert_eq!(code(&out), 4, "starting a running instance is refused: {}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("start needs the instance stopped"), "the server's message: {err}");
    assert!(err.contains("request id"), "{err}");
}

#[test]
fn not_found_exits_3() {
    let s = Server::start();
    let out = s.run(&["instance", "show", "nope"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("nope"));
    // An id goes to the server, whose 404 maps to the same code.
    let out = s.run(&["instance", "stop", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
}

#[test]
fn no_wait_prints_an_operation_that_operation_wait_completes() {
    let s = Server::start_with(&["--sim-delay", "stop=300"]);
    s.create("web", &[]);
    let out = s.ok(&["instance", "stop", "web", "--no-wait"]);
    let op_id = out.trim();
    assert!(is_uuid(op_id), "only the operation id on stdout: {out:?}");

    let op = s.json(&["operation", "wait", op_id]);
    assert_eq!(op["state"], "success");
    assert_eq!(op["kind"], "stop");
    assert_eq!(s.json(&["instance", "show", "web"])["state"], "stopped");

    let shown = s.json(&["operation", "show", op_id]);
    assert_eq!(shown["id"], op_id);
    let listed = s.json(&["operation", "list", "--instance", "web"]);
    assert!(listed.as_array().unwrap().iter().any(|o| o["id"] == op_id), "{listed}");
}

#[test]
fn a_failed_operation_exits_4_with_its_message() {
    let s = Server::start_with(&["--sim-fail", "stop=5"]);
    s.create("web", &[]);
    let out = s.run(&["instance", "stop", "web"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("error: operation") && err.contains("(stop)"), "{err}");
}

#[test]
fn delete_removes_the_instance() {
    let s = Server::start();
    let web = s.create("web", &[]);
    let out = s.ok(&["instance", "delete", "web"]);
    assert!(out.contains("deleted instance web"), "{out}");
    assert_eq!(s.json(&["instance", "list"]), serde_json::json!([]));
    let out = s.run(&["instance", "show", web["id"].as_str().unwrap()]);
    assert_eq!(code(&out), 3);
}

#[test]
fn protection_update_and_resize() {
    let s = Server::start();
    s.create("web", &["--label", "env=prod"]);
    assert_eq!(s.json(&["instance", "protect", "web"])["protected"], true);
    let out = s.run(&["instance", "delete", "web"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(s.json(&["instance", "unprotect", "web"])["protected"], false);

    let updated =
        s.json(&["instance", "update", "web", "--name", "www", "--label", "tier=front", "--remove-label", "env"]);
    assert_eq!(updated["name"], "www");
    assert_eq!(updated["labels"], serde_json::json!({"tier": "front"}));
    let out = s.run(&["instance", "update", "www", "--label", "a=b", "--if-match", "999"]);
    assert_eq!(code(&out), 4, "a stale ETag is refused: {}", stderr(&out));

    s.ok(&["instance", "stop", "www"]);
    assert_eq!(s.json(&["instance", "scale", "www", "standard.medium"])["instance_type"], "standard.medium");
    assert_eq!(s.json(&["instance", "resize-disk", "www", "20"])["disk_size_gb"], 20);
}

#[test]
fn snapshots_are_taken_listed_reverted_and_deleted() {
    let s = Server::start();
    s.create("web", &[]);
    let snap = s.json(&["instance", "snapshot", "web", "--name", "before"]);
    assert_eq!(snap["name"], "before");
    let listed = s.json(&["snapshot", "list", "--instance", "web"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(s.json(&["snapshot", "show", "before"])["id"], snap["id"]);

    s.ok(&["instance", "stop", "web"]);
    assert_eq!(s.json(&["instance", "revert", "web", "before"])["state"], "stopped");
    s.ok(&["snapshot", "delete", "before"]);
    assert_eq!(s.json(&["snapshot", "list"]), serde_json::json!([]));
}

#[test]
fn volumes_are_created_attached_moved_grown_and_deleted() {
    let s = Server::start();
    s.create("web", &[]);
    s.create("db", &[]);
    let v = s.json(&["volume", "create", "data", "--size", "2", "--label", "env=prod"]);
    // An instance created with it, and one booting from a volume of its own that outlives it.
    let with = s.json(&[
        "instance",
        "create",
        "with",
        "--type",
        "standard.micro",
        "--template",
        "busybox",
        "--volume",
        "data",
        "--boot-volume",
    ]);
    let boot = with["boot_volume"]["volume_id"].as_str().unwrap_or_else(|| panic!("{with}")).to_string();
    assert_eq!(with["volumes"].as_array().map(Vec::len), Some(2), "{with}");
    s.ok(&["instance", "delete", "with"]);
    assert_eq!(s.json(&["volume", "show", &boot])["state"], "available");
    let again = s.json(&[
        "instance",
        "create",
        "again",
        "--type",
        "standard.micro",
        "--boot-from",
        "with-boot",
        "--delete-boot-volume",
    ]);
    assert_eq!(
        (again["template"].as_str(), again["boot_volume"]["volume_id"].as_str()),
        (Some("busybox"), Some(boot.as_str()))
    );
    s.ok(&["instance", "delete", "again"]);
    assert_ne!(code(&s.run(&["volume", "show", &boot])), 0, "deleted with the instance");
    let out = s.run(&["instance", "create", "x", "--type", "standard.micro"]);
    assert_ne!(code(&out), 0, "a template or a boot volume is needed");
    assert_eq!((v["state"].as_str(), v["size_gb"].as_u64()), (Some("available"), Some(2)), "{v}");
    assert_eq!(v["labels"], serde_json::json!({"env": "prod"}));
    let attached = s.json(&["volume", "attach", "data", "web"]);
    assert_eq!(attached["state"], "in-use", "{attached}");
    let web = s.json(&["instance", "show", "web"]);
    assert_eq!(attached["instance_id"], web["id"]);
    let out = s.run(&["volume", "delete", "data"]);
    assert_ne!(code(&out), 0, "an attached volume is not deleted");
    assert!(stderr(&out).contains("detach it first"), "{}", stderr(&out));
    assert_eq!(s.json(&["volume", "detach", "data"])["state"], "available");
    assert_eq!(s.json(&["volume", "attach", "data", "db"])["instance_id"], s.json(&["instance", "show", "db"])["id"]);
    s.ok(&["volume", "detach", "data"]);
    assert_eq!(s.json(&["volume", "resize", "data", "--size", "5"])["size_gb"], 5);
    assert_eq!(s.json(&["volume", "list"]).as_array().unwrap().len(), 1);
    let snap = s.json(&["volume", "snapshot", "create", "data", "--name", "before"]);
    assert_eq!((snap["name"].as_str(), snap["state"].as_str()), (Some("before"), Some("ready")), "{snap}");
    assert_eq!(s.json(&["volume", "snapshot", "list", "data"]).as_array().unwrap().len(), 1);
    assert_eq!(s.json(&["volume", "revert", "data", "before"])["state"], "available");
    let out = s.run(&["volume", "delete", "data"]);
    assert_ne!(code(&out), 0, "a volume with snapshots is not deleted");
    s.ok(&["volume", "snapshot", "delete", "data", "before"]);
    assert_eq!(s.json(&["volume", "snapshot", "list", "data"]), serde_json::json!([]));
    s.ok(&["volume", "delete", "data"]);
    assert_eq!(s.json(&["volume", "list"]), serde_json::json!([]));
}

#[test]
fn console_and_metrics() {
    let s = Server::start();
    s.create("web", &[]);
    let log = s.ok(&["instance", "console", "web"]);
    assert!(!log.is_empty());
    let m = s.json(&["instance", "metrics", "web"]);
    assert!(m.get("cpu_time_ns").is_some(), "{m}");
}

#[test]
fn ssh_keys_are_added_listed_and_deleted() {
    let s = Server::start();
    let key = s.json(&["ssh-key", "add", "laptop", "--public-key", PUBLIC_KEY]);
    assert_eq!(key["name"], "laptop");
    let file = s.dir.path().join("id.pub");
    std::fs::write(&file, format!("{PUBLIC_KEY}\n")).unwrap();
    s.ok(&["ssh-key", "add", "desktop", "--file", file.to_str().unwrap()]);

    let table = s.ok(&["ssh-key", "list"]);
    assert!(table.contains("laptop") && table.contains("desktop") && table.starts_with("ID"), "{table}");
    assert_eq!(s.json(&["ssh-key", "show", "laptop"])["id"], key["id"]);

    let i = s.create("web", &["--ssh-key", "laptop"]);
    assert_eq!(i["state"], "running");
    s.ok(&["ssh-key", "delete", "desktop"]);
    assert_eq!(s.json(&["ssh-key", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn api_keys_and_whoami() {
    let s = Server::start();
    let me = s.json(&["whoami"]);
    assert_eq!(me["key_id"], KEY);
    assert_eq!(me["role"], "operator", "the bootstrap key runs the cloud");
    assert!(me["project"]["id"].is_string() && me["organization"]["id"].is_string(), "{me}");

    let key = s.json(&["api-key", "create", "ci", "--role", "read-only"]);
    let secret = key["secret"].as_str().expect("the secret, shown once").to_string();
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let listed = s.json(&["api-key", "list"]);
    assert!(listed.as_array().unwrap().iter().any(|k| k["key_id"] == key_id.as_str() && k.get("secret").is_none()));

    let ci = s.json(&["whoami", "--token", &secret]);
    assert_eq!(ci["key_id"], key_id.as_str());
    assert_eq!(ci["role"], "read-only");
    // A read-only key is refused a create: a 403 that is about who asks.
    let out =
        s.run(&["--token", &secret, "instance", "create", "x", "--type", "standard.small", "--template", "busybox"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));

    s.ok(&["api-key", "delete", &key_id]);
    let out = s.run(&["whoami", "--token", &secret]);
    assert_eq!(code(&out), 5, "a deleted key no longer authenticates: {}", stderr(&out));
}

#[test]
fn a_wrong_token_exits_5() {
    let s = Server::start();
    let out = s.cmd(&["whoami"]).env("NIMBUS_TOKEN", "not-the-secret").output().unwrap();
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(stderr(&out).contains("unauthenticated"), "{}", stderr(&out));
}

#[test]
fn no_server_exits_6_and_usage_errors_exit_2() {
    let s = Server::start();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = s.run(&["whoami", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    let out = s.run(&["instance", "create", "web", "--template", "busybox"]);
    assert_eq!(code(&out), 2, "--type is required: {}", stderr(&out));
    let out = s.run(&["instance", "create", "web", "--type", "no.such", "--template", "busybox"]);
    assert!(matches!(code(&out), 2 | 3), "an unknown type: {:?} {}", out.status, stderr(&out));
}

#[test]
fn verbose_shows_the_exchange_without_the_token() {
    let s = Server::start();
    let out = s.run(&["whoami", "--verbose"]);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(err.contains("> GET ") && err.contains("/v1/whoami") && err.contains("< 200"), "{err}");
    assert!(!err.contains(SECRET), "the token never shows: {err}");
}

#[test]
fn catalog_types_and_templates() {
    let s = Server::start();
    let types = s.json(&["type", "list"]);
    assert!(types.as_array().unwrap().iter().any(|t| t["name"] == "standard.small"), "{types}");
    let table = s.ok(&["type", "list"]);
    assert!(table.starts_with("NAME") && table.contains("standard.small"), "{table}");

    let templates = s.json(&["template", "list"]);
    assert!(templates.as_array().unwrap().iter().any(|t| t["name"] == "busybox"), "{templates}");
    assert_eq!(s.json(&["template", "show", "busybox"])["name"], "busybox");
    let out = s.run(&["template", "show", "nope"]);
    assert_eq!(code(&out), 3);
}

#[test]
fn projects_and_quotas() {
    let s = Server::start();
    let p = s.json(&["project", "create", "staging"]);
    assert_eq!(p["name"], "staging");
    let listed = s.json(&["project", "list"]);
    assert!(listed.as_array().unwrap().iter().any(|x| x["name"] == "staging"));
    let shown = s.json(&["project", "show", "staging"]);
    assert_eq!(shown["id"], p["id"]);
    let q = s.json(&["project", "quota", "staging", "--instances", "7"]);
    assert_eq!(q["quota"]["instances"], 7);
    assert_eq!(q["quota"]["vcpus"], p["quota"]["vcpus"], "the other limits stay");
    let table = s.ok(&["project", "quota", "staging"]);
    assert!(table.starts_with("RESOURCE") && table.contains("instances"), "{table}");
}

#[test]
fn events_replay_one_line_each() {
    let s = Server::start();
    s.create("web", &[]);
    let out = s.ok(&["events", "--after", "0", "--count", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("instance.created") || lines[0].contains("operation.created"), "{out}");
    let out = s.ok(&["events", "--after", "0", "--count", "2", "-o", "json"]);
    for line in out.lines() {
        let e: Value = serde_json::from_str(line).expect("one JSON event per line");
        assert!(e["seq"].is_number(), "{e}");
    }
}

#[test]
fn profiles_connect_and_flags_override_them() {
    let s = Server::start();
    let config = s.dir.path().join("config.yaml");
    // Without NIMBUS_URL/NIMBUS_TOKEN only the profile can connect.
    let bare = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("NIMBUS_CONFIG", &config)
            .env_remove("NIMBUS_URL")
            .env_remove("NIMBUS_TOKEN")
            .env_remove("NIMBUS_SECRET")
            .env_remove("NIMBUS_PROFILE")
            .output()
            .unwrap()
    };
    let out = bare(&["config", "add", "local", "--url", &s.url, "--token", SECRET]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = bare(&["config", "add", "broken", "--url", &s.url, "--token", "wrong"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = bare(&["whoami", "-o", "json"]);
    assert!(out.status.success(), "the first profile is the current one: {}", stderr(&out));
    assert!(!std::fs::read_to_string(&config).unwrap().is_empty());

    assert!(bare(&["config", "use", "broken"]).status.success());
    assert_eq!(code(&bare(&["whoami"])), 5);
    assert!(bare(&["whoami", "--token", SECRET]).status.success(), "--token overrides the profile");
    assert!(bare(&["whoami", "--profile", "local"]).status.success());

    let list = String::from_utf8(bare(&["config", "list"]).stdout).unwrap();
    assert!(list.lines().any(|l| l.starts_with('*') && l.contains("broken")), "{list}");
    assert!(!list.contains(SECRET), "tokens are never listed: {list}");
    assert_eq!(code(&bare(&["config", "use", "nope"])), 3);
}

#[test]
fn completion_and_help_examples() {
    let s = Server::start();
    for shell in ["bash", "zsh", "fish"] {
        let out = s.ok(&["completion", shell]);
        assert!(out.contains("instance"), "{shell}");
    }
    let help = s.ok(&["instance", "create", "--help"]);
    assert!(help.contains("Example:") && help.contains("nimbus instance create"), "{help}");
}

#[test]
fn ctrl_c_while_waiting_leaves_the_operation_running() {
    let s = Server::start_with(&["--sim-delay", "start=1500"]);
    let mut child = s
        .cmd(&["instance", "create", "web", "--type", "standard.small", "--template", "busybox"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Signalled only once it is waiting (its first progress line), so the signal meets the handler.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let first = lines.next().unwrap_or_default();
    assert!(first.contains("create instance"), "{first}");
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signals our own child, which has not been waited for yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let err: Vec<String> = lines.collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err:?}");
    let hint = err.iter().find(|l| l.contains("nimbus operation wait")).unwrap_or_else(|| panic!("{err:?}"));
    let op_id = hint.rsplit(' ').next().unwrap();
    assert!(is_uuid(op_id), "{hint}");
    assert_eq!(s.json(&["operation", "wait", op_id])["state"], "success");
    assert_eq!(s.json(&["instance", "show", "web"])["state"], "running");
}
