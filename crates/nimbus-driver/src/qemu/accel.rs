//! The accelerator: KVM only when it is usable for real, TCG otherwise.
//!
//! Nested "PVM" hosts expose a /dev/kvm that only emulates stock kernels (50x slower than TCG, and they
//! crash; see /work/shared/QEMU.md), hence the cpuinfo and module checks and, when a kernel template is at
//! hand, a smoke boot with the same command line builder the instances use.

use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::cmdline::{self, Boot, Machine};
use super::templates::{self, BootKind};
use super::QemuConfig;
use crate::{DriverError, DriverResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// KVM if the host passes the probe, otherwise TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!("unknown accelerator {other:?} (auto, kvm or tcg)")),
        }
    }
}

async fn kvm_opens() -> bool {
    tokio::task::spawn_blocking(|| std::fs::File::options().read(true).write(true).open("/dev/kvm").is_ok())
        .await
        .unwrap_or(false)
}

/// Chooses the accelerator (never `Auto`) and says why.
pub async fn probe(config: &QemuConfig) -> DriverResult<(Accel, String)> {
    match config.accel {
        Accel::Tcg => return Ok((Accel::Tcg, "configured".into())),
        Accel::Kvm => {
            return if kvm_opens().await {
                Ok((Accel::Kvm, "configured".into()))
            } else {
                Err(DriverError::Unsupported("accel=kvm but /dev/kvm cannot be opened".into()))
            };
        }
        Accel::Auto => {}
    }
    if !kvm_opens().await {
        return Ok((Accel::Tcg, "/dev/kvm cannot be opened".into()));
    }
    let cpuinfo = tokio::fs::read_to_string("/proc/cpuinfo").await.unwrap_or_default();
    let virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !virt {
        return Ok((Accel::Tcg, "no vmx/svm CPU flag".into()));
    }
    if tokio::fs::try_exists("/sys/module/kvm_pvm").await.unwrap_or(false) {
        return Ok((Accel::Tcg, "kvm is kvm_pvm (nested PVM), which cannot run stock guest kernels".into()));
    }
    match smoke_boot_kvm(config).await {
        Ok(Some(secs)) => Ok((Accel::Kvm, format!("smoke boot passed in {secs:.1}s"))),
        Ok(None) => Ok((Accel::Kvm, "no kernel template to smoke-boot; trusting the CPU flags".into())),
        Err(e) => Ok((Accel::Tcg, format!("KVM smoke boot failed: {e}"))),
    }
}

/// Boots the busybox template's kernel under KVM until its ready marker, without disk or network.
async fn smoke_boot_kvm(config: &QemuConfig) -> Result<Option<f64>, String> {
    let dir = config.template_dir.join("busybox");
    let Ok(m) = templates::read_manifest(&dir).await else { return Ok(None) };
    let (Some(kernel), BootKind::Kernel) = (m.kernel.clone(), m.boot()) else { return Ok(None) };
    let tmp = std::env::temp_dir().join(format!("nimbus-kvm-probe-{}", std::process::id()));
    let _ = tokio::fs::remove_file(&tmp).await;
    let machine = Machine {
        name: "nimbus-kvm-probe".into(),
        accel: Accel::Kvm,
        vcpus: 1,
        memory_mib: 128,
        boot: Boot::Kernel {
            kernel: dir.join(kernel),
            initrd: m.initrd.as_ref().map(|i| dir.join(i)),
            cmdline: m.cmdline.clone().unwrap_or_else(|| templates::DEFAULT_CMDLINE.into()),
        },
        disk: None,
        seed_iso: None,
        fw_cfg: vec![],
        nic: None,
        dir: None,
        serial_file: Some(tmp.clone()),
        tpm_socket: None,
        agent_socket: None,
    };
    let marker = m.ready_marker.unwrap_or_else(|| "READY".into());
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&config.qemu_binary)
        .args(cmdline::args(&machine))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = loop {
        let text = tokio::fs::read_to_string(&tmp).await.unwrap_or_default();
        if super::process::contains_line_start(&text, &marker, true) {
            break Ok(Some(started.elapsed().as_secs_f64()));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("qemu exited ({status}) before the guest was ready"));
        }
        if started.elapsed() > Duration::from_secs(30) {
            break Err("no ready marker within 30s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill().await;
    let _ = tokio::fs::remove_file(&tmp).await;
    result
}

/// Whether a firmware file exists (OVMF).
pub async fn have(path: &Path) -> bool {
    tokio::fs::try_exists(path).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_parses() {
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("xen".parse::<Accel>().is_err());
    }
}
