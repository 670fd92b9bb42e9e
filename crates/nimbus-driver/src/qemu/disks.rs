//! Disks, through `qemu-img`: the instance's overlay over its template, and snapshots as files of their own.
//!
//! Every image an instance uses is a qcow2 overlay whose backing file is a template's immutable disk
//! (absolute path): the instance's `disk.qcow2`, and each snapshot `<state>/snapshots/<instance>/<id>.qcow2`,
//! a copy of the overlay's own clusters at the time of the snapshot. A snapshot therefore depends on nothing
//! but its template: it survives a reinstall (`reset`), which replaces only `disk.qcow2`, and a revert copies
//! it back over `disk.qcow2`. Files are made under a temporary name and renamed into place, so a crash never
//! leaves half a disk or half a snapshot under the real name.

use std::path::Path;

use serde_json::Value;

use crate::{DriverError, DriverResult};

pub async fn run(program: &str, args: &[&str]) -> Result<String, String> {
    super::host::run(program, args).await
}

pub async fn info_json(qemu_img: &str, args: &[&str]) -> Result<Value, String> {
    let out = run(qemu_img, args).await?;
    serde_json::from_str(&out).map_err(|e| format!("qemu-img info: {e}"))
}

/// `qemu-img info -U`: also works, read-only, on the disk of a running VM.
pub async fn info(qemu_img: &str, path: &Path) -> DriverResult<Value> {
    info_json(qemu_img, &["info", "-U", "--output=json", &path.display().to_string()]).await.map_err(failed)
}

pub async fn virtual_size(qemu_img: &str, path: &Path) -> DriverResult<u64> {
    info(qemu_img, path).await?["virtual-size"].as_u64().ok_or_else(|| failed("qemu-img info: no virtual-size"))
}

/// Bytes the file really takes on the host.
pub async fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    tokio::fs::metadata(path).await.map_or(0, |m| m.blocks() * 512)
}

/// The backing file (absolute) and its format, of an overlay.
pub async fn backing(qemu_img: &str, path: &Path) -> DriverResult<(String, String)> {
    let info = info(qemu_img, path).await?;
    let file = info["full-backing-filename"]
        .as_str()
        .or_else(|| info["backing-filename"].as_str())
        .ok_or_else(|| failed(format!("{} has no backing file", path.display())))?;
    let format = info["backing-filename-format"].as_str().unwrap_or("qcow2");
    Ok((file.to_string(), format.to_string()))
}

/// A new overlay over `base` of at least `size` bytes (never smaller than the base), at `target`.
pub async fn create_overlay(
    qemu_img: &str,
    base: &Path,
    base_format: &str,
    size: u64,
    target: &Path,
) -> DriverResult<()> {
    let base_size = virtual_size(qemu_img, base).await?;
    let size = size.max(base_size);
    let tmp = target.with_extension("qcow2.tmp");
    let _ = tokio::fs::remove_file(&tmp).await;
    let (base, tmp_s) = (base.display().to_string(), tmp.display().to_string());
    run(qemu_img, &["create", "-q", "-f", "qcow2", "-b", &base, "-F", base_format, &tmp_s, &size.to_string()])
        .await
        .map_err(failed)?;
    tokio::fs::rename(&tmp, target).await.map_err(failed)
}

/// Copies the overlay `from` (its own clusters only, over the same backing file) to `to`. `shared`: read
/// it while a (paused) QEMU holds it.
pub async fn copy_overlay(qemu_img: &str, from: &Path, to: &Path, shared: bool) -> DriverResult<()> {
    let (base, base_format) = backing(qemu_img, from).await?;
    let tmp = to.with_extension("qcow2.tmp");
    let _ = tokio::fs::remove_file(&tmp).await;
    let (from_s, tmp_s) = (from.display().to_string(), tmp.display().to_string());
    let mut args = vec!["convert", "-q", "-f", "qcow2", "-O", "qcow2", "-B", &base, "-F", &base_format];
    if shared {
        args.push("-U");
    }
    args.extend([from_s.as_str(), tmp_s.as_str()]);
    run(qemu_img, &args).await.map_err(failed)?;
    tokio::fs::rename(&tmp, to).await.map_err(failed)
}

/// A standalone qcow2 of everything `from` shows (its backing chain flattened) at `to`.
pub async fn flatten(qemu_img: &str, from: &Path, to: &Path) -> DriverResult<()> {
    let tmp = to.with_extension("qcow2.tmp");
    let _ = tokio::fs::remove_file(&tmp).await;
    let (from_s, tmp_s) = (from.display().to_string(), tmp.display().to_string());
    run(qemu_img, &["convert", "-q", "-O", "qcow2", &from_s, &tmp_s]).await.map_err(failed)?;
    tokio::fs::rename(&tmp, to).await.map_err(failed)
}

/// Grows a stopped instance's image to `size` bytes (grow-only: callers check first).
pub async fn grow(qemu_img: &str, path: &Path, size: u64) -> DriverResult<()> {
    run(qemu_img, &["resize", "-q", &path.display().to_string(), &size.to_string()]).await.map(|_| ()).map_err(failed)
}

fn failed(e: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(e.to_string())
}
