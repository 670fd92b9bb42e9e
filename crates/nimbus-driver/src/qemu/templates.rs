//! Templates on this host: one directory each, described by its `template.json` (the manifest).
//!
//! Stock templates (`busybox`, `debian-12`, built by `guest/`) live in `<template_dir>/<name>/` and are
//! registered as public templates by every server that shares the template dir. Images imported by users
//! and snapshots promoted to templates live in `<template_dir>/.imported/<template id>/`: the engine keeps
//! their records (with their owner), so the scan of stock templates skips them.
//!
//! Invariants: a template's disk file is never written once its manifest exists (instance overlays and
//! snapshots point at it by path); a directory without a manifest is unfinished and may be removed; every
//! image taken in is checked first: qcow2 or raw only, no backing or external data file (those could point
//! at any file of the host), no corruption, and a raw image must carry a partition table.

use std::path::{Path, PathBuf};

use nimbus_core::catalog::{BootMode, Template, Visibility};
use serde::{Deserialize, Serialize};

use super::disks;
use crate::{DriverError, DriverResult};

/// Where user-imported and promoted templates live, under the template dir.
pub const IMPORTED: &str = ".imported";
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// How a template boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootKind {
    /// QEMU loads the template's kernel and initrd itself (no firmware boot loader).
    Kernel,
    /// The disk's own boot loader, through SeaBIOS.
    Bios,
    /// The disk's own boot loader, through OVMF.
    Uefi,
}

/// How the instance's hostname, keys, password, network and user-data reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedKind {
    /// QEMU fw_cfg files `opt/nimbus/<key>` (the busybox guest's init reads them).
    FwCfg,
    /// A NoCloud `cidata` disk, which cloud-init reads.
    Nocloud,
}

/// `template.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub os_name: String,
    #[serde(default)]
    pub os_version: String,
    /// Default: `kernel` when a kernel is given, else `bios`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootKind>,
    /// Other firmware the disk boots with too (a UEFI-capable image for TPM and secure boot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware: Vec<BootKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    pub disk: String,
    #[serde(default = "qcow2")]
    pub disk_format: String,
    /// Default: `fw_cfg` for kernel boot, `nocloud` for disk boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedKind>,
    /// The serial line that says the guest is up; none: the boot is done once QEMU runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_marker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_timeout_secs: Option<u64>,
    /// The image runs qemu-guest-agent.
    #[serde(default)]
    pub guest_agent: bool,
    #[serde(default = "one")]
    pub min_disk_gb: u64,
    #[serde(default = "min_mem")]
    pub min_memory_mib: u64,
    #[serde(default)]
    pub password_enabled: bool,
    #[serde(default)]
    pub ssh_key_enabled: bool,
    #[serde(default)]
    pub default_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default)]
    pub size_bytes: u64,
}

fn qcow2() -> String {
    "qcow2".into()
}
fn one() -> u64 {
    1
}
fn min_mem() -> u64 {
    128
}

impl Manifest {
    pub fn boot(&self) -> BootKind {
        self.boot_mode.unwrap_or(if self.kernel.is_some() { BootKind::Kernel } else { BootKind::Bios })
    }

    pub fn seed(&self) -> SeedKind {
        self.seed.unwrap_or(if self.boot() == BootKind::Kernel { SeedKind::FwCfg } else { SeedKind::Nocloud })
    }

    pub fn supports(&self, boot: BootKind) -> bool {
        self.boot() == boot || self.firmware.contains(&boot)
    }

    pub fn template(&self, dir: &Path) -> Template {
        Template {
            id: Template::id_for_name(&self.name),
            project_id: None,
            name: self.name.clone(),
            description: self.description.clone(),
            os_name: self.os_name.clone(),
            os_version: self.os_version.clone(),
            boot_mode: match self.boot() {
                BootKind::Kernel => BootMode::Kernel,
                BootKind::Bios => BootMode::Legacy,
                BootKind::Uefi => BootMode::Uefi,
            },
            min_disk_gb: self.min_disk_gb,
            min_memory_mib: self.min_memory_mib,
            password_enabled: self.password_enabled,
            ssh_key_enabled: self.ssh_key_enabled,
            default_user: self.default_user.clone(),
            visibility: Visibility::Public,
            source: dir.display().to_string(),
            checksum: self.checksum.clone(),
            size_bytes: self.size_bytes,
            host: None,
            created_at: nimbus_core::now(),
        }
    }
}

/// A template resolved to files on this host.
#[derive(Debug, Clone)]
pub struct TemplateFiles {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Canonical path: overlays must point at the immutable file, not at a symlink that a rebuild moves.
    pub disk: PathBuf,
    pub cmdline: String,
}

pub async fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join("template.json");
    let bytes = tokio::fs::read(&path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a manifest atomically: a directory has a manifest only once everything it names is in place.
pub async fn write_manifest(dir: &Path, m: &Manifest) -> DriverResult<()> {
    let tmp = dir.join("template.json.tmp");
    let bytes = serde_json::to_vec_pretty(m).map_err(failed)?;
    tokio::fs::write(&tmp, bytes).await.map_err(failed)?;
    tokio::fs::rename(&tmp, dir.join("template.json")).await.map_err(failed)
}

/// The directory of a template: its recorded source when that is a template directory, else the stock
/// `<template_dir>/<name>`.
pub async fn resolve(template_dir: &Path, t: &Template) -> DriverResult<TemplateFiles> {
    let source = Path::new(&t.source);
    let dir = if source.is_absolute() && tokio::fs::try_exists(source.join("template.json")).await.unwrap_or(false) {
        source.to_path_buf()
    } else {
        template_dir.join(&t.name)
    };
    let manifest = read_manifest(&dir)
        .await
        .map_err(|e| DriverError::Invalid(format!("template {:?} is not available on this host: {e}", t.name)))?;
    files(dir, manifest).await
}

pub async fn files(dir: PathBuf, manifest: Manifest) -> DriverResult<TemplateFiles> {
    let kernel = manifest.kernel.as_ref().map(|k| dir.join(k));
    let initrd = manifest.initrd.as_ref().map(|i| dir.join(i));
    let disk =
        tokio::fs::canonicalize(dir.join(&manifest.disk)).await.map_err(|e| failed(format!("template disk: {e}")))?;
    for f in kernel.iter().chain(initrd.iter()) {
        if !tokio::fs::try_exists(f).await.unwrap_or(false) {
            return Err(failed(format!("template file {} is missing", f.display())));
        }
    }
    if manifest.boot() == BootKind::Kernel && kernel.is_none() {
        return Err(failed(format!("template {} boots a kernel but names none", manifest.name)));
    }
    let cmdline = manifest.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.into());
    Ok(TemplateFiles { dir, manifest, kernel, initrd, disk, cmdline })
}

/// The stock templates of the template dir (imported and promoted ones are the engine's records).
pub async fn stock(template_dir: &Path) -> Vec<Template> {
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(template_dir).await else { return out };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let dir = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if let Ok(m) = read_manifest(&dir).await {
            out.push(m.template(&dir));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What `qemu-img info` says about an image taken in from outside, once it passed every check: its format
/// and virtual size.
pub async fn check_foreign_image(qemu_img: &str, path: &Path) -> DriverResult<(String, u64)> {
    let shown = path.display().to_string();
    let info = disks::info_json(qemu_img, &["info", "--output=json", &shown])
        .await
        .map_err(|e| DriverError::Invalid(format!("not a disk image: {e}")))?;
    let format = info["format"].as_str().unwrap_or("").to_string();
    let virtual_size = info["virtual-size"].as_u64().unwrap_or(0);
    if info.get("backing-filename").is_some() || info["format-specific"]["data"].get("data-file").is_some() {
        return Err(DriverError::Invalid(
            "the image refers to another file (a backing or data file); flatten it first (qemu-img convert)".into(),
        ));
    }
    match format.as_str() {
        "qcow2" => {
            let out = disks::run(qemu_img, &["check", "-f", "qcow2", "--output=json", &shown]).await;
            match out {
                Ok(_) => {}
                Err(e) => return Err(DriverError::Invalid(format!("the qcow2 image is damaged: {e}"))),
            }
        }
        "raw" => {
            // Any bytes are a "raw image"; a bootable disk has a partition table (MBR or GPT's protective MBR).
            let head = read_head(path, 512).await.map_err(failed)?;
            if head.len() < 512 || head[510] != 0x55 || head[511] != 0xaa {
                return Err(DriverError::Invalid(
                    "not a disk image: neither qcow2 nor a raw disk with a partition table".into(),
                ));
            }
        }
        other => {
            return Err(DriverError::Invalid(format!(
                "unsupported image format {other:?}: import qcow2 or raw (qemu-img convert -O qcow2 converts it)"
            )))
        }
    }
    if virtual_size == 0 {
        return Err(DriverError::Invalid("the image is empty".into()));
    }
    Ok((format, virtual_size))
}

async fn read_head(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(path).await?;
    let mut buf = Vec::with_capacity(n);
    f.take(n as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// `sha256:<hex>` of a file.
pub async fn sha256(path: &Path) -> DriverResult<String> {
    let out = disks::run("sha256sum", &[&path.display().to_string()]).await.map_err(failed)?;
    let hex = out.split_whitespace().next().unwrap_or_default();
    Ok(format!("sha256:{hex}"))
}

/// Accepts `sha256:<64 hex>` (or the bare hex), lower-cased.
pub fn parse_checksum(checksum: &str) -> DriverResult<String> {
    let hex = checksum.strip_prefix("sha256:").unwrap_or(checksum).to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DriverError::Invalid(format!("checksum {checksum:?} is not sha256:<64 hex digits>")));
    }
    Ok(format!("sha256:{hex}"))
}

fn failed(e: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_sha256_hex() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_checksum(&format!("sha256:{}", hex.to_uppercase())).unwrap(), format!("sha256:{hex}"));
        assert!(parse_checksum("md5:abc").is_err());
        assert!(parse_checksum("sha256:xyz").is_err());
    }

    #[test]
    fn manifests_default_their_boot_and_seed() {
        let kernel: Manifest = serde_json::from_str(r#"{"name":"a","kernel":"vmlinux","disk":"d.qcow2"}"#).unwrap();
        assert_eq!((kernel.boot(), kernel.seed()), (BootKind::Kernel, SeedKind::FwCfg));
        let disk: Manifest = serde_json::from_str(r#"{"name":"b","disk":"d.qcow2","firmware":["uefi"]}"#).unwrap();
        assert_eq!((disk.boot(), disk.seed()), (BootKind::Bios, SeedKind::Nocloud));
        assert!(disk.supports(BootKind::Uefi) && !disk.supports(BootKind::Kernel));
    }
}
