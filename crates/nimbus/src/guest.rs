//! The stock templates' build scripts (`guest/`), carried inside the binary so that `nimbus server` and
//! `nimbus template build` work on a host without the source tree.
//!
//! Templates live in one directory that every server of the host shares. Its default is outside any one
//! server's data dir (`/var/lib/nimbus/templates` for root, the XDG data dir otherwise): images are large
//! and host-wide, a second server on the host must find the same ones, and deleting a server's data dir
//! must not delete the images other servers' instances are overlays of.

use std::path::{Path, PathBuf};
use std::process::Command;

const BUILD_BUSYBOX: &str = include_str!("../../../guest/build.sh");
const BUSYBOX_INIT: &str = include_str!("../../../guest/init");
const BUILD_DEBIAN: &str = include_str!("../../../guest/build-debian.sh");

/// The stock templates this binary can build.
pub const STOCK: &[&str] = &["busybox", "debian-12"];

pub fn default_template_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/nimbus/templates")
    } else {
        dirs::data_dir().unwrap_or_else(std::env::temp_dir).join("nimbus").join("templates")
    }
}

/// Builds the stock template `name` into `<template_dir>/<name>`. `cache`: where the debian-12 build keeps
/// its downloaded root filesystem between builds. The scripts' own messages (which package is missing, say)
/// come back as the error.
pub fn build(name: &str, template_dir: &Path, cache: Option<&Path>) -> Result<(), String> {
    let scripts = tempfile::Builder::new().prefix("nimbus-guest-").tempdir().map_err(|e| e.to_string())?;
    let script = match name {
        "busybox" => {
            std::fs::write(scripts.path().join("init"), BUSYBOX_INIT).map_err(|e| e.to_string())?;
            std::fs::write(scripts.path().join("build.sh"), BUILD_BUSYBOX).map_err(|e| e.to_string())?;
            scripts.path().join("build.sh")
        }
        "debian-12" => {
            std::fs::write(scripts.path().join("build-debian.sh"), BUILD_DEBIAN).map_err(|e| e.to_string())?;
            scripts.path().join("build-debian.sh")
        }
        other => return Err(format!("no stock template {other:?}; this build knows {}", STOCK.join(", "))),
    };
    std::fs::create_dir_all(template_dir).map_err(|e| format!("{}: {e}", template_dir.display()))?;
    let mut cmd = Command::new("sh");
    cmd.arg(&script).arg(template_dir.join(name));
    if let Some(cache) = cache {
        cmd.env("NIMBUS_ROOTFS_CACHE", cache);
    }
    let out = cmd.output().map_err(|e| format!("sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().rev().take(5).collect();
        Err(last.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}

/// What this binary builds the busybox template from (its build script and init), as `guest/build.sh`
/// records it in the manifest's `recipe`.
pub fn busybox_recipe() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(BUILD_BUSYBOX).chain_update(BUSYBOX_INIT).finalize();
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Why the busybox template of `template_dir` is not what this binary builds (another version's init: a
/// guest that lacks what this server asks of it, such as the rescue boot); `None` when it is, or is absent.
pub fn stale_busybox(template_dir: &Path) -> Option<String> {
    let manifest = std::fs::read(template_dir.join("busybox/template.json")).ok()?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).ok()?;
    let recipe = manifest.get("recipe").and_then(serde_json::Value::as_str);
    let wanted = busybox_recipe();
    match recipe {
        Some(r) if r == wanted => None,
        Some(r) => Some(format!("built from {r}, this Nimbus builds it from {wanted}")),
        None => Some("built by a Nimbus that did not record what it built it from".into()),
    }
}

/// Whether `template_dir` holds any stock template.
pub fn has_templates(template_dir: &Path) -> bool {
    std::fs::read_dir(template_dir)
        .map(|entries| entries.flatten().any(|e| e.path().join("template.json").is_file()))
        .unwrap_or(false)
}
