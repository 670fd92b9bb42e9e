//! The `qemu` driver: one QEMU process per instance, on this host.
//!
//! Layout: every instance owns `<state_dir>/instances/<uuid>/`, which holds everything the driver knows
//! about it, so that a new driver (after a control-plane restart) finds running VMs again from files alone:
//!
//! ```text
//! disk.qcow2      overlay over the template's immutable base disk (absolute backing path)
//! seed/<key>      hostname, ip, gateway, ssh-keys, password, user-data: passed as fw_cfg opt/nimbus/<key>
//! qemu.json       the running process (pid + /proc start time) and where its boot began in serial.log
//! qmp.sock        QMP;  serial.sock: interactive console;  serial.log: everything the console printed
//! qemu.args, qemu.stderr, qemu.pid   for debugging
//! .lock           flock held by every mutating action
//! ```
//!
//! Machine: q35, direct boot of the template's uncompressed PVH kernel, TCG unless KVM passes a probe
//! (see /work/shared/QEMU.md for why: the KVM of nested "PVM" hosts cannot run stock kernels). QEMU is
//! spawned as a child in its own session and never daemonized; a boot counts as done when the guest
//! prints the template's ready marker on the serial console.
//!
//! Network: a namespace created by the driver holds a bridge with the gateway address and one tap per
//! running instance; QEMU itself runs inside it. QEMU creates the tap (non-persistent), so a crashed VM
//! leaves no tap behind. Without root there is no NIC at all.

mod host;
mod qmp;

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::catalog::{BootMode, Template, Visibility};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{ActualState, ConsoleStream, Driver, DriverError, DriverResult, HostInfo, InstanceMetrics, InstanceSpec};
use host::NetNs;

/// The console log kept and returned: the tail of serial.log.
const CONSOLE_CAP: u64 = 1 << 20;
const BRIDGE: &str = "nimbr0";
const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet panic=-1";
/// Measured with QEMU 7.2 + SeaBIOS 1.16: with a TPM device, SeaBIOS's ACPI tables and TPM event log
/// outgrow the 160 KiB QEMU reserves above a directly booted kernel's initrd, the initrd copy overwrites
/// them, and the guest loses ACPI (no fw_cfg seed, no power button). Every template of this driver boots
/// its kernel directly, so a TPM waits for disk-booted (UEFI) templates.
const TPM_UNSUPPORTED: &str =
    "the qemu driver has no TPM for direct-kernel-boot templates (SeaBIOS's TPM log overwrites the initrd's ACPI room)";
const SEED_KEYS: &[&str] = &["hostname", "ip", "gateway", "ssh-keys", "password", "user-data"];

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

#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Instance directories go in `state_dir/instances/<uuid>/`.
    pub state_dir: PathBuf,
    /// Holds one directory per template (`<template_dir>/busybox/`, built by `guest/build.sh`).
    pub template_dir: PathBuf,
    pub accel: Accel,
    /// Name of the network namespace the driver creates and owns.
    pub netns: String,
    /// The bridge's address inside the namespace; instances use it as their gateway.
    pub bridge_cidr: String,
    /// Give instances a NIC (needs root / CAP_NET_ADMIN; without it instances get no NIC anyway).
    pub network: bool,
    /// How long a boot may take until the ready marker, before the VM is killed.
    pub boot_timeout: Duration,
    pub qemu_binary: String,
    pub qemu_img: String,
}

impl QemuConfig {
    pub fn new(state_dir: impl Into<PathBuf>, template_dir: impl Into<PathBuf>) -> QemuConfig {
        QemuConfig {
            state_dir: state_dir.into(),
            template_dir: template_dir.into(),
            accel: Accel::Auto,
            netns: "nimbus".into(),
            bridge_cidr: "10.213.0.1/24".into(),
            network: true,
            boot_timeout: Duration::from_secs(60),
            qemu_binary: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
        }
    }
}

/// The running QEMU process of an instance, as recorded in `qemu.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Runtime {
    pid: i32,
    start_time: u64,
    /// Length of serial.log when the current boot began: the ready marker counts only after it.
    boot_offset: u64,
    ready_marker: String,
    tap: Option<String>,
}

/// `template.json` as written by `guest/build.sh`.
#[derive(Debug, Clone, Deserialize)]
struct Manifest {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    os_name: String,
    #[serde(default)]
    os_version: String,
    kernel: String,
    initrd: Option<String>,
    disk: String,
    cmdline: Option<String>,
    ready_marker: Option<String>,
    #[serde(default = "one")]
    min_disk_gb: u64,
    #[serde(default = "min_mem")]
    min_memory_mib: u64,
    #[serde(default)]
    password_enabled: bool,
    #[serde(default)]
    ssh_key_enabled: bool,
    #[serde(default)]
    default_user: String,
    checksum: Option<String>,
    #[serde(default)]
    size_bytes: u64,
}

fn one() -> u64 {
    1
}
fn min_mem() -> u64 {
    128
}

struct TemplateFiles {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    /// Canonical path: overlays must point at the immutable file, not at a symlink that a rebuild moves.
    disk: PathBuf,
    cmdline: String,
    ready_marker: String,
}

pub struct QemuDriver {
    config: QemuConfig,
    /// The accelerator actually used (never `Auto`).
    accel: Accel,
    net: Option<NetNs>,
}

fn failed(e: impl fmt::Display) -> DriverError {
    DriverError::Failed(e.to_string())
}

/// QEMU option values are comma-separated; a literal comma is doubled.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

impl QemuDriver {
    pub async fn new(config: QemuConfig) -> Result<QemuDriver, DriverError> {
        let mut config = config;
        config.state_dir = std::path::absolute(&config.state_dir).map_err(failed)?;
        config.template_dir = std::path::absolute(&config.template_dir).map_err(failed)?;
        std::fs::create_dir_all(config.state_dir.join("instances")).map_err(failed)?;
        if host::which(&config.qemu_binary).is_none() {
            return Err(DriverError::Unsupported(format!("{} is not installed", config.qemu_binary)));
        }
        let (accel, why) = probe_accel(&config).await?;
        tracing::info!(accelerator = %accel, reason = %why, "qemu driver: accelerator chosen");

        let mut net = None;
        if !config.network {
            tracing::info!("qemu driver: networking disabled by configuration; instances get no NIC");
        } else if !host::is_root() {
            tracing::warn!("qemu driver: not root (no CAP_NET_ADMIN); instances get no NIC");
        } else {
            match NetNs::ensure(&config.netns, BRIDGE, &config.bridge_cidr).await {
                Ok(ns) => {
                    // QEMU runs this inside the namespace when it has created an instance's tap.
                    let script = config.state_dir.join("qemu-ifup");
                    let body = format!("#!/bin/sh\nexec ip link set dev \"$1\" master {BRIDGE} up\n");
                    std::fs::write(&script, body).map_err(failed)?;
                    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(failed)?;
                    tracing::info!(netns = %ns.name, bridge = BRIDGE, cidr = %config.bridge_cidr, "qemu driver: network ready");
                    net = Some(ns);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "qemu driver: cannot set up the network namespace; instances get no NIC")
                }
            }
        }
        Ok(QemuDriver { config, accel, net })
    }

    pub fn accelerator(&self) -> Accel {
        self.accel
    }

    /// Name of the network namespace the instances live in, if networking is on.
    pub fn netns(&self) -> Option<&str> {
        self.net.as_ref().map(|n| n.name.as_str())
    }

    /// Removes the network namespace when no instance runs any more. Running VMs keep it (they must
    /// survive a control-plane restart and stay reachable under the same name).
    pub async fn shutdown(&self) -> DriverResult<()> {
        let Some(ns) = &self.net else { return Ok(()) };
        for id in self.instances().await? {
            if self.runtime(&self.dir(id)).is_some() {
                tracing::info!("qemu driver: instances still run; keeping netns {}", ns.name);
                return Ok(());
            }
        }
        ns.delete().await.map_err(failed)
    }

    fn dir(&self, id: Uuid) -> PathBuf {
        self.config.state_dir.join("instances").join(id.to_string())
    }

    fn existing_dir(&self, id: Uuid) -> DriverResult<PathBuf> {
        let dir = self.dir(id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(DriverError::NotFound(id))
        }
    }

    async fn lock(&self, dir: &Path) -> DriverResult<host::FileLock> {
        host::lock_file(dir.join(".lock")).await.map_err(failed)
    }

    /// The instance's QEMU process if it is alive. Falls back to QEMU's own pidfile when the driver died
    /// between spawning QEMU and recording it.
    fn runtime(&self, dir: &Path) -> Option<Runtime> {
        let rt = std::fs::read(dir.join("qemu.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Runtime>(&b).ok())
            .or_else(|| {
                let pid = std::fs::read_to_string(dir.join("qemu.pid")).ok()?.trim().parse::<i32>().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let needle = dir.join("qmp.sock").display().to_string();
                if !String::from_utf8_lossy(&cmdline).contains(&needle) {
                    return None;
                }
                let st = host::proc_stat(pid)?;
                Some(Runtime {
                    pid,
                    start_time: st.start_time,
                    boot_offset: 0,
                    ready_marker: "READY".into(),
                    tap: None,
                })
            })?;
        host::alive(rt.pid, rt.start_time).then_some(rt)
    }

    fn save_runtime(dir: &Path, rt: &Runtime) -> DriverResult<()> {
        let tmp = dir.join("qemu.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(rt).map_err(failed)?).map_err(failed)?;
        std::fs::rename(&tmp, dir.join("qemu.json")).map_err(failed)
    }

    fn template_files(&self, t: &Template) -> DriverResult<TemplateFiles> {
        let source = Path::new(&t.source);
        let dir = if source.is_absolute() && source.join("template.json").is_file() {
            source.to_path_buf()
        } else {
            self.config.template_dir.join(&t.name)
        };
        let m = read_manifest(&dir)
            .map_err(|e| DriverError::Invalid(format!("template {:?} is not available on this host: {e}", t.name)))?;
        let kernel = dir.join(&m.kernel);
        let initrd = m.initrd.as_ref().map(|i| dir.join(i));
        let disk = dir.join(&m.disk).canonicalize().map_err(|e| failed(format!("template disk: {e}")))?;
        for f in std::iter::once(&kernel).chain(initrd.as_ref()) {
            if !f.is_file() {
                return Err(failed(format!("template file {} is missing", f.display())));
            }
        }
        Ok(TemplateFiles {
            kernel,
            initrd,
            disk,
            cmdline: m.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.into()),
            ready_marker: m.ready_marker.unwrap_or_else(|| "READY".into()),
        })
    }

    async fn qemu_img(&self, args: &[&str]) -> DriverResult<String> {
        host::run(&self.config.qemu_img, args).await.map_err(failed)
    }

    /// `qemu-img info`; `-U` so that it also works on the disk of a running VM (read-only).
    async fn disk_info(&self, path: &Path) -> DriverResult<Value> {
        let out = self.qemu_img(&["info", "-U", "--output=json", &path.display().to_string()]).await?;
        serde_json::from_str(&out).map_err(failed)
    }

    async fn virtual_size(&self, path: &Path) -> DriverResult<u64> {
        self.disk_info(path).await?["virtual-size"].as_u64().ok_or_else(|| failed("qemu-img info: no virtual-size"))
    }

    async fn snapshot_names(&self, path: &Path) -> DriverResult<Vec<String>> {
        let info = self.disk_info(path).await?;
        Ok(info["snapshots"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["name"].as_str().map(String::from)).collect())
            .unwrap_or_default())
    }

    /// Creates the overlay under a temporary name first, so that a crash never leaves a half-made disk.
    async fn create_overlay(&self, dir: &Path, tf: &TemplateFiles, size_gb: u64) -> DriverResult<()> {
        let base_size = self.virtual_size(&tf.disk).await?;
        let size = (size_gb << 30).max(base_size);
        let tmp = dir.join("disk.qcow2.tmp");
        let _ = std::fs::remove_file(&tmp);
        self.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &tf.disk.display().to_string(),
            "-F",
            "qcow2",
            &tmp.display().to_string(),
            &size.to_string(),
        ])
        .await?;
        std::fs::rename(&tmp, dir.join("disk.qcow2")).map_err(failed)
    }

    fn write_seed(dir: &Path, spec: &InstanceSpec) -> DriverResult<()> {
        let seed = dir.join("seed");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&seed).map_err(failed)?;
        let hostname = if spec.hostname.is_empty() { &spec.name } else { &spec.hostname };
        let mut keys = spec.ssh_keys.join("\n");
        if !keys.is_empty() {
            keys.push('\n');
        }
        let values: [(&str, Option<Vec<u8>>); 6] = [
            ("hostname", Some(hostname.as_bytes().to_vec())),
            ("ip", spec.ip_address.as_ref().map(|s| s.as_bytes().to_vec())),
            ("gateway", spec.gateway.as_ref().map(|s| s.as_bytes().to_vec())),
            ("ssh-keys", Some(keys.into_bytes())),
            ("password", spec.password.as_ref().map(|s| s.as_bytes().to_vec())),
            ("user-data", spec.user_data.clone()),
        ];
        for (key, value) in values {
            let path = seed.join(key);
            match value.filter(|v| !v.is_empty()) {
                Some(v) => {
                    let tmp = seed.join(format!(".{key}.tmp"));
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)
                        .map_err(failed)?;
                    std::io::Write::write_all(&mut f, &v).map_err(failed)?;
                    std::fs::rename(&tmp, &path).map_err(failed)?;
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    /// Interface names hold at most 15 bytes, so the name takes the id's last 11 hex digits: instance ids
    /// are UUIDv7, whose leading digits are a timestamp shared by every instance created in the same minute
    /// (two running instances would fight over one tap), while the trailing ones are random.
    pub fn tap_name(id: Uuid) -> String {
        let hex = id.simple().to_string();
        format!("tap-{}", &hex[hex.len() - 11..])
    }

    fn mac(spec: &InstanceSpec) -> String {
        if !spec.mac_address.is_empty() {
            return spec.mac_address.clone();
        }
        let b = spec.id.as_bytes();
        format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
    }

    fn qemu_args(&self, spec: &InstanceSpec, tf: &TemplateFiles, dir: &Path) -> Vec<String> {
        let p = |name: &str| opt_path(&dir.join(name));
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            _ => ("tcg", "max"),
        };
        let smp = spec.vcpus.max(1).to_string();
        let mem = if spec.memory_mib == 0 { 256 } else { spec.memory_mib }.to_string();
        let name = format!("nimbus-{},debug-threads=on", spec.id);
        push(&["-name", &name, "-accel", accel, "-M", "q35", "-cpu", cpu, "-smp", &smp, "-m", &mem]);
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        push(&["-kernel", &tf.kernel.display().to_string(), "-append", &tf.cmdline]);
        if let Some(initrd) = &tf.initrd {
            push(&["-initrd", &initrd.display().to_string()]);
        }
        let serial = format!(
            "socket,id=ser0,path={},server=on,wait=off,logfile={},logappend=on",
            p("serial.sock"),
            p("serial.log")
        );
        push(&["-chardev", &serial, "-serial", "chardev:ser0"]);
        let qmp = format!("socket,id=qmp0,path={},server=on,wait=off", p("qmp.sock"));
        push(&["-chardev", &qmp, "-mon", "chardev=qmp0,mode=control"]);
        push(&["-pidfile", &dir.join("qemu.pid").display().to_string()]);
        let file = format!("driver=file,filename={},node-name=f0", p("disk.qcow2"));
        push(&["-blockdev", &file, "-blockdev", "driver=qcow2,file=f0,node-name=d0"]);
        push(&["-device", "virtio-blk-pci,drive=d0,serial=disk0", "-device", "virtio-rng-pci"]);
        if self.net.is_some() {
            let script = opt_path(&self.config.state_dir.join("qemu-ifup"));
            let netdev = format!("tap,id=n0,ifname={},script={script},downscript=no", Self::tap_name(spec.id));
            let nic = format!("virtio-net-pci,netdev=n0,mac={}", Self::mac(spec));
            push(&["-netdev", &netdev, "-device", &nic]);
        }
        for key in SEED_KEYS {
            let f = dir.join("seed").join(key);
            if f.is_file() {
                push(&["-fw_cfg", &format!("name=opt/nimbus/{key},file={}", opt_path(&f))]);
            }
        }
        a
    }

    /// Keeps serial.log bounded across boots; only done while QEMU is not running, as it holds the file.
    fn trim_console(dir: &Path) -> DriverResult<u64> {
        let path = dir.join("serial.log");
        let Ok(meta) = std::fs::metadata(&path) else { return Ok(0) };
        if meta.len() <= CONSOLE_CAP {
            return Ok(meta.len());
        }
        let tail = read_tail(&path, CONSOLE_CAP).map_err(failed)?;
        let tmp = dir.join("serial.log.tmp");
        std::fs::write(&tmp, &tail).map_err(failed)?;
        std::fs::rename(&tmp, &path).map_err(failed)?;
        Ok(tail.len() as u64)
    }

    async fn spawn(&self, spec: &InstanceSpec, dir: &Path) -> DriverResult<Runtime> {
        let tf = self.template_files(&spec.template)?;
        if !dir.join("disk.qcow2").is_file() {
            self.create_overlay(dir, &tf, spec.disk_size_gb).await?;
        }
        Self::write_seed(dir, spec)?;
        if spec.tpm {
            tracing::warn!(instance = %spec.id, "{TPM_UNSUPPORTED}; booting without one");
        }
        for stale in ["qmp.sock", "serial.sock", "qemu.json", "qemu.pid"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let tap = self.net.as_ref().map(|_| Self::tap_name(spec.id));
        if let Some(ns) = &self.net {
            // Recreated if it went away since `new` (shutdown() with no VM left, or someone deleted it).
            NetNs::ensure(&ns.name, BRIDGE, &self.config.bridge_cidr).await.map_err(failed)?;
        }
        if let (Some(ns), Some(tap)) = (&self.net, &tap) {
            // A tap of this name can only be a leftover (QEMU's taps vanish with QEMU); QEMU would fail on it.
            ns.delete_link(tap).await;
        }
        let boot_offset = Self::trim_console(dir)?;
        let args = self.qemu_args(spec, &tf, dir);
        std::fs::write(dir.join("qemu.args"), args.join("\n") + "\n").map_err(failed)?;
        let stderr = std::fs::File::create(dir.join("qemu.stderr")).map_err(failed)?;
        let mut cmd = match &self.net {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", &ns.name, &self.config.qemu_binary]);
                c
            }
            None => std::process::Command::new(&self.config.qemu_binary),
        };
        cmd.args(&args).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        // A session of its own: signals to the control plane's process group (Ctrl-C, a service manager
        // stopping it) must not take the VMs down with it.
        // SAFETY: setsid is async-signal-safe, as required between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| failed(format!("spawn qemu: {e}")))?;
        let pid = child.id() as i32;
        // Reap our child as soon as it exits so that it never lingers as a zombie; a thread rather than a
        // task because the VM outlives any one runtime (tests build one per test).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let start_time = host::proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
        let rt = Runtime { pid, start_time, boot_offset, ready_marker: tf.ready_marker.clone(), tap };
        Self::save_runtime(dir, &rt)?;
        tracing::info!(instance = %spec.id, pid, accelerator = %self.accel, "qemu started");
        Ok(rt)
    }

    /// Waits for the ready marker of the current boot; kills the VM when the boot watchdog fires.
    async fn wait_ready(&self, id: Uuid, dir: &Path, rt: &Runtime, started: Instant) -> DriverResult<()> {
        let deadline = started + self.config.boot_timeout;
        let log = dir.join("serial.log");
        let mut scanned = rt.boot_offset;
        loop {
            if let Ok(text) = read_from(&log, scanned) {
                if contains_line_start(&text, &rt.ready_marker, scanned == rt.boot_offset) {
                    tracing::info!(instance = %id, secs = started.elapsed().as_secs_f64(), "guest ready");
                    return Ok(());
                }
                // Rescan the last few bytes, in case the marker was cut in half by the last read.
                let keep = rt.ready_marker.len() as u64 + 1;
                scanned = (scanned + text.len() as u64).saturating_sub(keep).max(scanned);
            }
            if !host::alive(rt.pid, rt.start_time) {
                let err = std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default();
                self.cleanup(dir, None).await;
                return Err(failed(format!("qemu exited during boot: {}", err.trim())));
            }
            if Instant::now() >= deadline {
                tracing::warn!(instance = %id, "boot watchdog fired; killing the VM");
                self.halt(dir, rt, Duration::ZERO).await;
                self.cleanup(dir, Some(rt)).await;
                return Err(DriverError::Timeout(format!(
                    "guest did not print {:?} within {:?}",
                    rt.ready_marker, self.config.boot_timeout
                )));
            }
            // Reading only the new bytes of the log is cheap; a short pause keeps the wait from adding to boots.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends the QEMU process: ACPI power-down for `grace`, then QMP quit, SIGTERM, SIGKILL.
    async fn halt(&self, dir: &Path, rt: &Runtime, grace: Duration) {
        let qmp = dir.join("qmp.sock");
        if !grace.is_zero() {
            if let Err(e) = qmp::command(&qmp, "system_powerdown", None).await {
                tracing::warn!(error = %e, "system_powerdown failed");
            }
            if host::wait_exit(rt.pid, rt.start_time, grace).await {
                return;
            }
            tracing::warn!(pid = rt.pid, "guest ignored the power-down; forcing");
        }
        let _ = qmp::command(&qmp, "quit", None).await;
        if host::wait_exit(rt.pid, rt.start_time, Duration::from_secs(3)).await {
            return;
        }
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            if host::alive(rt.pid, rt.start_time) {
                host::signal(rt.pid, sig);
            }
            if host::wait_exit(rt.pid, rt.start_time, Duration::from_secs(3)).await {
                return;
            }
        }
        tracing::error!(pid = rt.pid, "qemu survived SIGKILL");
    }

    /// Removes what a stopped VM leaves behind: its tap (if QEMU did not), sockets, the runtime record.
    async fn cleanup(&self, dir: &Path, rt: Option<&Runtime>) {
        if let (Some(ns), Some(tap)) = (&self.net, rt.and_then(|r| r.tap.as_ref())) {
            ns.delete_link(tap).await;
        }
        for f in ["qemu.json", "qemu.pid", "qmp.sock", "serial.sock"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }

    async fn stop_locked(&self, id: Uuid, dir: &Path, grace: Duration) {
        match self.runtime(dir) {
            Some(rt) => {
                self.halt(dir, &rt, grace).await;
                self.cleanup(dir, Some(&rt)).await;
                tracing::info!(instance = %id, "qemu stopped");
            }
            None => {
                let tap = self.net.as_ref().map(|_| Self::tap_name(id));
                let rt = Runtime { pid: 0, start_time: 0, boot_offset: 0, ready_marker: String::new(), tap };
                self.cleanup(dir, Some(&rt)).await;
            }
        }
    }

    fn require_stopped(&self, dir: &Path, action: &str) -> DriverResult<()> {
        if self.runtime(dir).is_some() {
            return Err(DriverError::Invalid(format!("{action} needs the instance stopped")));
        }
        Ok(())
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join("template.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn read_tail(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(cap)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Whether `marker` starts a line of `text`. `at_line_start` says whether `text` itself begins a line.
fn contains_line_start(text: &str, marker: &str, at_line_start: bool) -> bool {
    (at_line_start && text.starts_with(marker))
        || text.match_indices(marker).any(|(i, _)| i > 0 && matches!(text.as_bytes()[i - 1], b'\n' | b'\r'))
}

/// Chooses the accelerator. KVM must be usable for real: nested "PVM" hosts expose a /dev/kvm that only
/// emulates stock kernels (50x slower than TCG, and they crash), hence the cpuinfo and module checks and,
/// when a template is at hand, a smoke boot.
async fn probe_accel(config: &QemuConfig) -> DriverResult<(Accel, String)> {
    match config.accel {
        Accel::Tcg => return Ok((Accel::Tcg, "configured".into())),
        Accel::Kvm => {
            return if std::fs::File::options().read(true).write(true).open("/dev/kvm").is_ok() {
                Ok((Accel::Kvm, "configured".into()))
            } else {
                Err(DriverError::Unsupported("accel=kvm but /dev/kvm cannot be opened".into()))
            };
        }
        Accel::Auto => {}
    }
    if std::fs::File::options().read(true).write(true).open("/dev/kvm").is_err() {
        return Ok((Accel::Tcg, "/dev/kvm cannot be opened".into()));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !virt {
        return Ok((Accel::Tcg, "no vmx/svm CPU flag".into()));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Ok((Accel::Tcg, "kvm is kvm_pvm (nested PVM), which cannot run stock guest kernels".into()));
    }
    match smoke_boot_kvm(config).await {
        Ok(Some(secs)) => Ok((Accel::Kvm, format!("smoke boot passed in {secs:.1}s"))),
        Ok(None) => Ok((Accel::Kvm, "no template to smoke-boot; trusting the CPU flags".into())),
        Err(e) => Ok((Accel::Tcg, format!("KVM smoke boot failed: {e}"))),
    }
}

async fn smoke_boot_kvm(config: &QemuConfig) -> Result<Option<f64>, String> {
    let dir = config.template_dir.join("busybox");
    let Ok(m) = read_manifest(&dir) else { return Ok(None) };
    let tmp = std::env::temp_dir().join(format!("nimbus-kvm-probe-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut args = vec![
        "-accel".to_string(),
        "kvm".into(),
        "-M".into(),
        "q35".into(),
        "-cpu".into(),
        "host".into(),
        "-m".into(),
        "128".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        dir.join(&m.kernel).display().to_string(),
        "-append".into(),
        m.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.into()),
        "-serial".into(),
        format!("file:{}", tmp.display()),
    ];
    if let Some(i) = &m.initrd {
        args.extend(["-initrd".into(), dir.join(i).display().to_string()]);
    }
    let marker = m.ready_marker.unwrap_or_else(|| "READY".into());
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&config.qemu_binary)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = loop {
        if read_from(&tmp, 0).map(|t| contains_line_start(&t, &marker, true)).unwrap_or(false) {
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
    let _ = std::fs::remove_file(&tmp);
    result
}

#[async_trait]
impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn host_info(&self) -> HostInfo {
        HostInfo {
            name: host::hostname(),
            driver: "qemu".into(),
            accelerator: self.accel.to_string(),
            vcpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_mib: host::memory_mib(),
            disk_gb: host::disk_gb(&self.config.state_dir),
            // No GPU passthrough: GPUs are declared by the operator (`--host-gpus`).
            gpus: Default::default(),
        }
    }

    async fn templates(&self) -> DriverResult<Vec<Template>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.config.template_dir) else { return Ok(out) };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(m) = read_manifest(&dir) else { continue };
            out.push(Template {
                id: Template::id_for_name(&m.name),
                project_id: None,
                name: m.name.clone(),
                description: m.description,
                os_name: m.os_name,
                os_version: m.os_version,
                boot_mode: BootMode::Kernel,
                min_disk_gb: m.min_disk_gb,
                min_memory_mib: m.min_memory_mib,
                password_enabled: m.password_enabled,
                ssh_key_enabled: m.ssh_key_enabled,
                default_user: m.default_user,
                visibility: Visibility::Public,
                source: dir.display().to_string(),
                checksum: m.checksum,
                size_bytes: m.size_bytes,
                created_at: nimbus_core::now(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create(&self, spec: &InstanceSpec) -> DriverResult<()> {
        let dir = self.dir(spec.id);
        // Unix socket paths are limited to 108 bytes; fail here rather than at the first boot.
        if dir.join("serial.sock").as_os_str().len() > 107 {
            return Err(DriverError::Invalid(format!("state dir path too long for unix sockets: {}", dir.display())));
        }
        let tf = self.template_files(&spec.template)?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(failed)?;
        let _lock = self.lock(&dir).await?;
        if !dir.join("disk.qcow2").is_file() {
            self.create_overlay(&dir, &tf, spec.disk_size_gb).await?;
        }
        Self::write_seed(&dir, spec)
    }

    async fn start(&self, spec: &InstanceSpec) -> DriverResult<()> {
        let dir = self.existing_dir(spec.id)?;
        let _lock = self.lock(&dir).await?;
        let started = Instant::now();
        // Already running (e.g. the control plane died mid-start): just wait for this boot to finish.
        let rt = match self.runtime(&dir) {
            Some(rt) => rt,
            None => self.spawn(spec, &dir).await?,
        };
        self.wait_ready(spec.id, &dir, &rt, started).await
    }

    async fn stop(&self, id: Uuid, grace: Duration) -> DriverResult<()> {
        let dir = self.existing_dir(id)?;
        let _lock = self.lock(&dir).await?;
        self.stop_locked(id, &dir, grace).await;
        Ok(())
    }

    async fn reboot(&self, spec: &InstanceSpec) -> DriverResult<()> {
        let dir = self.existing_dir(spec.id)?;
        let _lock = self.lock(&dir).await?;
        let started = Instant::now();
        let rt = match self.runtime(&dir) {
            Some(mut rt) => {
                rt.boot_offset = std::fs::metadata(dir.join("serial.log")).map_or(0, |m| m.len());
                Self::save_runtime(&dir, &rt)?;
                qmp::command(&dir.join("qmp.sock"), "system_reset", None).await.map_err(failed)?;
                rt
            }
            None => self.spawn(spec, &dir).await?,
        };
        self.wait_ready(spec.id, &dir, &rt, started).await
    }

    async fn reinstall(&self, spec: &InstanceSpec) -> DriverResult<()> {
        let dir = self.existing_dir(spec.id)?;
        let _lock = self.lock(&dir).await?;
        self.require_stopped(&dir, "reinstall")?;
        let tf = self.template_files(&spec.template)?;
        // The new overlay replaces the old one in one rename; its internal snapshots go with it.
        self.create_overlay(&dir, &tf, spec.disk_size_gb).await?;
        Self::write_seed(&dir, spec)
    }

    async fn join_overlay(&self, spec: &crate::overlay::OverlaySpec) -> DriverResult<()> {
        crate::overlay::sync(&self.config.netns, BRIDGE, spec).await.map_err(failed)
    }

    async fn disk_size_gb(&self, id: Uuid) -> DriverResult<u64> {
        let dir = self.existing_dir(id)?;
        Ok(self.virtual_size(&dir.join("disk.qcow2")).await?.div_ceil(1 << 30))
    }

    async fn snapshots(&self, id: Uuid) -> DriverResult<Vec<Uuid>> {
        let disk = self.existing_dir(id)?.join("disk.qcow2");
        Ok(self.snapshot_names(&disk).await?.iter().filter_map(|n| Uuid::parse_str(n).ok()).collect())
    }

    async fn resize_disk(&self, id: Uuid, size_gb: u64) -> DriverResult<()> {
        let dir = self.existing_dir(id)?;
        let _lock = self.lock(&dir).await?;
        let disk = dir.join("disk.qcow2");
        let current = self.virtual_size(&disk).await?;
        let wanted = size_gb << 30;
        if wanted < current {
            return Err(DriverError::Invalid(format!(
                "disks only grow: {size_gb} GiB is smaller than the current {} GiB",
                current.div_ceil(1 << 30)
            )));
        }
        if wanted == current {
            return Ok(());
        }
        match self.runtime(&dir) {
            // QMP block_resize would shrink too; the check above is what keeps it grow-only.
            Some(_) => {
                qmp::command(&dir.join("qmp.sock"), "block_resize", Some(json!({"node-name": "d0", "size": wanted})))
                    .await
                    .map(|_| ())
                    .map_err(failed)
            }
            None => {
                self.qemu_img(&["resize", "-q", &disk.display().to_string(), &wanted.to_string()]).await.map(|_| ())
            }
        }
    }

    async fn snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<u64> {
        let dir = self.existing_dir(id)?;
        let _lock = self.lock(&dir).await?;
        let disk = dir.join("disk.qcow2");
        let name = snapshot_id.to_string();
        if !self.snapshot_names(&disk).await?.contains(&name) {
            match self.runtime(&dir) {
                Some(_) => {
                    let args = json!({"device": "d0", "name": name});
                    qmp::command(&dir.join("qmp.sock"), "blockdev-snapshot-internal-sync", Some(args))
                        .await
                        .map_err(failed)?;
                }
                None => {
                    self.qemu_img(&["snapshot", "-c", &name, &disk.display().to_string()]).await?;
                }
            }
        }
        // Internal snapshots share clusters with the live disk; the overlay's allocation is the honest
        // upper bound of what the snapshot holds.
        Ok(self.disk_info(&disk).await?["actual-size"].as_u64().unwrap_or(0))
    }

    async fn revert(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        let dir = self.existing_dir(id)?;
        let _lock = self.lock(&dir).await?;
        self.require_stopped(&dir, "revert")?;
        let disk = dir.join("disk.qcow2");
        let name = snapshot_id.to_string();
        if !self.snapshot_names(&disk).await?.contains(&name) {
            return Err(DriverError::Invalid(format!("instance {id} has no snapshot {snapshot_id}")));
        }
        let size = self.virtual_size(&disk).await?;
        self.qemu_img(&["snapshot", "-a", &name, &disk.display().to_string()]).await?;
        // Reverting brings back the snapshot's virtual size too; the disk keeps the size the instance has
        // (grow-only), and the guest grows its filesystem again at boot.
        if self.virtual_size(&disk).await? < size {
            self.qemu_img(&["resize", "-q", &disk.display().to_string(), &size.to_string()]).await?;
        }
        Ok(())
    }

    async fn delete_snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        let dir = self.existing_dir(id)?;
        let _lock = self.lock(&dir).await?;
        let disk = dir.join("disk.qcow2");
        let name = snapshot_id.to_string();
        if !disk.is_file() || !self.snapshot_names(&disk).await?.contains(&name) {
            return Ok(());
        }
        match self.runtime(&dir) {
            Some(_) => qmp::command(
                &dir.join("qmp.sock"),
                "blockdev-snapshot-delete-internal-sync",
                Some(json!({"device": "d0", "name": name})),
            )
            .await
            .map(|_| ())
            .map_err(failed),
            None => self.qemu_img(&["snapshot", "-d", &name, &disk.display().to_string()]).await.map(|_| ()),
        }
    }

    async fn destroy(&self, id: Uuid) -> DriverResult<()> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Ok(());
        }
        let _lock = self.lock(&dir).await?;
        self.stop_locked(id, &dir, Duration::ZERO).await;
        std::fs::remove_dir_all(&dir).map_err(failed)?;
        tracing::info!(instance = %id, "instance destroyed");
        Ok(())
    }

    async fn inspect(&self, id: Uuid) -> DriverResult<ActualState> {
        let dir = self.dir(id);
        Ok(if !dir.is_dir() {
            ActualState::Missing
        } else if self.runtime(&dir).is_some() {
            // A process that does not answer QMP is still running as far as the host can tell.
            match qmp::command(&dir.join("qmp.sock"), "query-status", None).await {
                Ok(status) if status.get("status").and_then(Value::as_str) == Some("paused") => ActualState::Paused,
                _ => ActualState::Running,
            }
        } else {
            ActualState::Stopped
        })
    }

    async fn suspend(&self, id: Uuid) -> DriverResult<()> {
        let dir = self.existing_dir(id)?;
        let _lock = self.lock(&dir).await?;
        if self.runtime(&dir).is_none() {
            return Err(DriverError::Invalid("suspend needs the instance running".into()));
        }
        // QMP `stop` pauses the vCPUs; pausing a paused VM is a no-op.
        qmp::command(&dir.join("qmp.sock"), "stop", None).await.map_err(failed)?;
        Ok(())
    }

    async fn resume(&self, id: Uuid) -> DriverResult<()> {
        let dir = self.existing_dir(id)?;
        let _lock = self.lock(&dir).await?;
        if self.runtime(&dir).is_none() {
            return Err(DriverError::Invalid("resume needs the instance suspended".into()));
        }
        qmp::command(&dir.join("qmp.sock"), "cont", None).await.map_err(failed)?;
        Ok(())
    }

    async fn instances(&self) -> DriverResult<Vec<Uuid>> {
        let entries = match std::fs::read_dir(self.config.state_dir.join("instances")) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(failed(e)),
        };
        let mut ids: Vec<Uuid> =
            entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok())).collect();
        ids.sort();
        Ok(ids)
    }

    async fn console(&self, id: Uuid) -> DriverResult<String> {
        let dir = self.existing_dir(id)?;
        match read_tail(&dir.join("serial.log"), CONSOLE_CAP) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(failed(e)),
        }
    }

    async fn metrics(&self, id: Uuid) -> DriverResult<InstanceMetrics> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.existing_dir(id)?;
        let mut m = InstanceMetrics {
            disk_used_bytes: std::fs::metadata(dir.join("disk.qcow2")).map_or(0, |md| md.blocks() * 512),
            ..Default::default()
        };
        if let Some(rt) = self.runtime(&dir) {
            if let Some(st) = host::proc_stat(rt.pid) {
                m.cpu_time_ns = (st.utime_ticks + st.stime_ticks) * 1_000_000_000 / host::clock_ticks_per_sec();
            }
            m.memory_rss_bytes = host::rss_bytes(rt.pid);
            if let (Some(ns), Some(tap)) = (&self.net, &rt.tap) {
                // The tap sees the guest from outside: what it transmits, the guest receives.
                if let Some((rx, tx)) = ns.link_bytes(tap).await {
                    m.net_rx_bytes = tx;
                    m.net_tx_bytes = rx;
                }
            }
        }
        Ok(m)
    }

    async fn enable_tpm(&self, id: Uuid) -> DriverResult<()> {
        self.existing_dir(id)?;
        Err(DriverError::Unsupported(TPM_UNSUPPORTED.into()))
    }

    async fn console_stream(&self, id: Uuid) -> DriverResult<ConsoleStream> {
        let dir = self.existing_dir(id)?;
        if self.runtime(&dir).is_none() {
            return Err(DriverError::Invalid("the instance is not running".into()));
        }
        let stream = tokio::net::UnixStream::connect(dir.join("serial.sock")).await.map_err(failed)?;
        Ok(Box::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_marker_must_start_a_line() {
        assert!(contains_line_start("READY uptime=1", "READY", true));
        assert!(!contains_line_start("READY uptime=1", "READY", false));
        assert!(contains_line_start("BOOTED\r\nREADY uptime=1", "READY", false));
        assert!(!contains_line_start("UD| NOT READY", "READY", true));
    }

    #[test]
    fn instances_created_together_get_distinct_taps() {
        let a = Uuid::parse_str("01a20311-0c5e-7a10-9f3e-2b8d4c6a1e01").unwrap();
        let b = Uuid::parse_str("01a20311-0c5e-7a10-9f3e-2b8d4c6a1e02").unwrap();
        assert_ne!(QemuDriver::tap_name(a), QemuDriver::tap_name(b));
        assert!(QemuDriver::tap_name(a).len() <= 15, "IFNAMSIZ");
    }

    #[test]
    fn option_paths_double_commas() {
        assert_eq!(opt_path(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn accel_parses() {
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("xen".parse::<Accel>().is_err());
    }
}
