//! One instance network across hosts: each host's instance bridge (inside the network namespace the driver
//! owns) joins a VXLAN segment whose tunnel endpoint is the host's own underlay address, so instances of a
//! zone reach each other at layer 2 whichever host they run on.
//!
//! The VXLAN device is created in the namespace the agent runs in (where the underlay address is) and then
//! moved into the instance namespace: its UDP socket stays on the underlay, its frames enter the bridge.
//! Learning is off: forwarding entries come from the control plane's records (each remote instance's MAC
//! and its host's address), and broadcast and unknown frames (ARP) are sent to every peer host (head-end
//! replication). [`sync`] makes the kernel's entries exactly the wanted ones; it is idempotent.
//!
//! Nothing is routed out: the namespaces stay closed, and the tunnel carries only instance-to-instance
//! traffic between hosts of the zone.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// What a host's side of the overlay must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    /// The segment (VXLAN network identifier) of the zone's instance network.
    pub vni: u32,
    /// The UDP port tunnels use (4789, IANA's).
    pub port: u16,
    /// This host's underlay address: the tunnel's local end.
    pub local: String,
    /// The underlay addresses of the zone's other hosts.
    pub peers: Vec<String>,
    /// Instances on other hosts: (MAC, their host's underlay address).
    pub neighbors: Vec<(String, String)>,
}

const ALL_ZEROS: &str = "00:00:00:00:00:00";

async fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out =
        Command::new(program).args(args).kill_on_drop(true).output().await.map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The overlay device's name: one per segment, short enough for the kernel's 15 characters.
pub fn device(vni: u32) -> String {
    format!("nvx{vni}")
}

/// Makes the overlay of `netns`'s bridge `bridge` what `spec` says: the VXLAN device exists, is on the
/// bridge and up, and its forwarding entries are exactly the flood entries of the peers and the entries of
/// the neighbors.
pub async fn sync(netns: &str, bridge: &str, spec: &OverlaySpec) -> Result<(), String> {
    let dev = device(spec.vni);
    if run("ip", &["-n", netns, "link", "show", &dev]).await.is_err() {
        let (vni, port) = (spec.vni.to_string(), spec.port.to_string());
        // Made here, in the namespace of the underlay, then moved: the tunnel's socket stays on the underlay.
        let _ = run("ip", &["link", "del", &dev]).await;
        run(
            "ip",
            &["link", "add", &dev, "type", "vxlan", "id", &vni, "local", &spec.local, "dstport", &port, "nolearning"],
        )
        .await?;
        run("ip", &["link", "set", &dev, "netns", netns]).await?;
    }
    run("ip", &["-n", netns, "link", "set", &dev, "master", bridge]).await?;
    run("ip", &["-n", netns, "link", "set", &dev, "up"]).await?;

    let wanted: BTreeSet<(String, String)> = spec
        .peers
        .iter()
        .map(|p| (ALL_ZEROS.to_string(), p.clone()))
        .chain(spec.neighbors.iter().map(|(mac, host)| (mac.to_ascii_lowercase(), host.clone())))
        .collect();
    let have = entries(netns, &dev).await?;
    for (mac, dst) in have.difference(&wanted) {
        let _ = run("bridge", &["-n", netns, "fdb", "del", mac, "dev", &dev, "dst", dst]).await;
    }
    for (mac, dst) in wanted.difference(&have) {
        // Flood entries are one per peer (append); a MAC has one home (replace).
        let verb = if mac == ALL_ZEROS { "append" } else { "replace" };
        run("bridge", &["-n", netns, "fdb", verb, mac, "dev", &dev, "dst", dst]).await?;
    }
    Ok(())
}

/// The device's forwarding entries that have a remote destination: (MAC, destination).
async fn entries(netns: &str, dev: &str) -> Result<BTreeSet<(String, String)>, String> {
    let out = run("bridge", &["-n", netns, "-j", "fdb", "show", "dev", dev]).await?;
    let list: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_default();
    Ok(list
        .iter()
        .filter_map(|e| Some((e["mac"].as_str()?.to_ascii_lowercase(), e["dst"].as_str()?.to_string())))
        .collect())
}

/// Removes the host's side of the overlay (the device goes with its entries).
pub async fn leave(netns: &str, vni: u32) {
    let _ = run("ip", &["-n", netns, "link", "del", &device(vni)]).await;
}
