//! The Exoscale dialect driven by the real `exoscale` Python SDK (PyPI, pinned in sdk/requirements.txt)
//! against a real `nimbus server --driver sim`: the whole instance lifecycle with the SDK's own operation
//! waiter, the state rules' refusals, wrong and expired signatures, and every response body validated
//! against the official OpenAPI document shipped in the package (`sdk/exoscale/schema_check.py`).

mod sdk;

/// Zones are named by the operator; the SDK's `Client(zone=...)` takes only Exoscale's zone names, so the
/// server is given one, as the README tells operators to.
const ZONE: &[&str] = &["--zone", "ch-gva-2"];

#[test]
fn the_exoscale_sdk_drives_the_whole_lifecycle_and_every_response_matches_the_official_schema() {
    let server = sdk::Server::start_with(ZONE);
    let out = server.python("exoscale", "exoscale/lifecycle.py", &[]);
    assert!(out.contains("responses validated against the official schema"), "{out}");
}

#[test]
fn the_exoscale_sdk_waiter_polls_a_pending_operation_until_it_ends() {
    let server = sdk::Server::start_with(&[ZONE, &["--sim-delay", "create=2500"]].concat());
    let out = server.python("exoscale", "exoscale/slow_wait.py", &[]);
    assert!(out.contains("OK: waited through pending"), "{out}");
}
