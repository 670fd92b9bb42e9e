//! The Gcore dialect driven by the real `gcore` Python SDK (PyPI, pinned in `sdk/requirements.txt`) against
//! a real `nimbus server --driver sim`: the scripts in `tests/sdk/gcore/` assert what a Gcore user sees.

mod sdk;

#[test]
fn the_gcore_sdk_manages_instances_end_to_end() {
    let server = sdk::Server::start();
    let out = server.python("gcore", "gcore/lifecycle.py", &[]);
    assert!(out.contains("gcore lifecycle: ok"), "{out}");
}

#[test]
fn the_gcore_sdk_sees_running_tasks_locks_and_deletes() {
    // Slow enough that a task is seen running, fast enough for the SDK's one-second polls.
    let server = sdk::Server::start_with(&["--sim-delay-ms", "1500"]);
    let out = server.python("gcore", "gcore/transitions.py", &[]);
    assert!(out.contains("gcore transitions: ok"), "{out}");
}

#[test]
fn the_gcore_sdk_manages_security_and_server_groups_and_passwords() {
    let server = sdk::Server::start();
    let out = server.python("gcore", "gcore/groups.py", &[]);
    assert!(out.contains("gcore groups: ok"), "{out}");
}

#[test]
fn the_gcore_sdk_manages_private_networks_subnets_and_interfaces() {
    let server = sdk::Server::start();
    let out = server.python("gcore", "gcore/networks.py", &[]);
    assert!(out.contains("gcore networks: ok"), "{out}");
}

#[test]
fn the_gcore_sdk_manages_volumes() {
    let server = sdk::Server::start();
    let out = server.python("gcore", "gcore/volumes.py", &[]);
    assert!(out.contains("gcore volumes: ok"), "{out}");
}
