//! The overlay joins two hosts' instance bridges: two "hosts" (network namespaces on an underlay veth), each
//! with an instance namespace holding the bridge and a "guest" (a veth end in a namespace of its own, on the
//! bridge), see each other's guests once `overlay::sync` ran on both sides, and stop seeing them when the
//! peer's entries are taken away. Every namespace is this test's own and goes at the end.
//!
//! Needs root (network namespaces); skips saying so otherwise.

use std::os::fd::AsRawFd;
use std::process::Command;

use nimbus_driver::overlay::{sync, OverlaySpec};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn pings(from_ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", from_ns, "ping", "-c", "1", "-W", "1", to])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `sync` from inside namespace `ns` (the "host", where the underlay is), as an agent would.
fn sync_from(ns: &str, instance_ns: &str, spec: OverlaySpec) -> Result<(), String> {
    let (ns, instance_ns) = (ns.to_string(), instance_ns.to_string());
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: setns on this thread only, with an fd it holds open during the call.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(sync(
            &instance_ns,
            "nimbr0",
            &spec,
        ))
    })
    .join()
    .unwrap()
}

#[test]
fn two_hosts_bridges_join_one_network_through_the_overlay() {
    if !is_root() {
        println!("SKIPPED overlay: not root (network namespaces need CAP_NET_ADMIN)");
        return;
    }
    let tag = format!("{:x}", std::process::id() % 0xffff);
    let name = |n: &str| format!("nbo-{n}-{tag}");
    let (ua, ub, ia, ib, ga, gb) = (name("ua"), name("ub"), name("ia"), name("ib"), name("ga"), name("gb"));
    let _guard = Namespaces(vec![ua.clone(), ub.clone(), ia.clone(), ib.clone(), ga.clone(), gb.clone()]);
    for ns in [&ua, &ub, &ia, &ib, &ga, &gb] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    // The underlay: the two hosts on one link.
    ip(&["-n", &ua, "link", "add", "u0", "type", "veth", "peer", "name", "u1"]);
    ip(&["-n", &ua, "link", "set", "u1", "netns", &ub]);
    ip(&["-n", &ua, "addr", "add", "10.252.0.1/24", "dev", "u0"]);
    ip(&["-n", &ub, "addr", "add", "10.252.0.2/24", "dev", "u1"]);
    ip(&["-n", &ua, "link", "set", "u0", "up"]);
    ip(&["-n", &ub, "link", "set", "u1", "up"]);
    // Each host's instance namespace: a bridge, and a guest on it.
    for (inst, guest, addr) in [(&ia, &ga, "10.213.7.2/24"), (&ib, &gb, "10.213.7.3/24")] {
        ip(&["-n", inst, "link", "add", "nimbr0", "type", "bridge"]);
        ip(&["-n", inst, "link", "set", "nimbr0", "up"]);
        ip(&["-n", inst, "link", "add", "tap0", "type", "veth", "peer", "name", "eth0"]);
        ip(&["-n", inst, "link", "set", "eth0", "netns", guest]);
        ip(&["-n", inst, "link", "set", "tap0", "master", "nimbr0"]);
        ip(&["-n", inst, "link", "set", "tap0", "up"]);
        ip(&["-n", guest, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", guest, "link", "set", "eth0", "up"]);
    }
    let mac = |ns: &str| {
        let out = Command::new("ip").args(["-n", ns, "-j", "link", "show", "eth0"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    };
    let (mac_a, mac_b) = (mac(&ga), mac(&gb));
    assert!(!pings(&ga, "10.213.7.3"), "the two bridges are not joined yet");

    let spec = |local: &str, peer: &str, neighbor: &str| OverlaySpec {
        vni: 10_001,
        port: 4789,
        local: local.into(),
        peers: vec![peer.into()],
        neighbors: vec![(neighbor.into(), peer.into())],
    };
    sync_from(&ua, &ia, spec("10.252.0.1", "10.252.0.2", &mac_b)).unwrap();
    sync_from(&ub, &ib, spec("10.252.0.2", "10.252.0.1", &mac_a)).unwrap();
    assert!(pings(&ga, "10.213.7.3"), "guest A reaches guest B across the overlay");
    assert!(pings(&gb, "10.213.7.2"), "and back");
    // Idempotent: a second sync changes nothing.
    sync_from(&ua, &ia, spec("10.252.0.1", "10.252.0.2", &mac_b)).unwrap();
    assert!(pings(&ga, "10.213.7.3"));

    // A host whose peers and neighbors are gone keeps no entry for them.
    let alone = OverlaySpec { peers: vec![], neighbors: vec![], ..spec("10.252.0.1", "10.252.0.2", &mac_b) };
    sync_from(&ua, &ia, alone).unwrap();
    let fdb = Command::new("bridge").args(["-n", &ia, "fdb", "show", "dev", "nvx10001"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&fdb.stdout).contains("10.252.0.2"), "{}", String::from_utf8_lossy(&fdb.stdout));
}
