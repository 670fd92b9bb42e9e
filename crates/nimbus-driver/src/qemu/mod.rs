//! The `qemu` driver: one QEMU process per instance, on this host.
//!
//! Layout: every instance owns `<state_dir>/instances/<uuid>/`, which holds everything the driver knows
//! about it, so that a new driver (after a control-plane restart) finds running VMs again from files alone:
//!
//! ```text
//! disk.qcow2      overlay over the template's immutable disk (absolute backing path), of the instance's size
//! seed/          what a fw_cfg template's guest is told at boot (seeds.rs)
//! nocloud/, seed.iso   the same for a cloud image: the documents and their NoCloud cidata disk
//! efivars.fd      the instance's UEFI variable store (UEFI boots only)
//! tpm/            swtpm's state of the instance's TPM (once enabled)
//! qemu.json       the running process (pid + /proc start time) and where its boot began in serial.log
//! qmp.sock        QMP;  serial.sock: interactive console;  serial.log: everything the console printed
//! qga.sock        the guest agent's channel;  swtpm.sock: the TPM emulator's
//! qemu.args, qemu.stderr, qemu.pid   for debugging
//! .lock           flock held by every mutating action
//! ```
//!
//! Snapshots are files of their own, `<state_dir>/snapshots/<instance>/<snapshot>.qcow2`, outside the
//! instance directory: a reinstall (reset) keeps them, and only `destroy` removes them (disks.rs).
//! Templates live in the template dir that the servers of a host share (templates.rs). Volumes are files of
//! their own too, `<state_dir>/volumes/<volume>.qcow2`, plugged into instances' QEMUs (volumes.rs).
//!
//! The rest is split by concern: `accel` (accelerator probe), `cmdline` (the one QEMU command line builder,
//! also used by the probe), `templates`, `disks`, `seeds`, `process` (spawn, readiness, adoption, stop),
//! `agent` (the guest agent), `qmp`, `host` (/proc, flock, network namespace).
//!
//! Network: a namespace created by the driver holds a bridge with the gateway address and one tap per
//! running instance; QEMU itself runs inside it. QEMU creates the tap (non-persistent), so a crashed VM
//! leaves no tap behind. Without root there is no NIC at all.

pub mod accel;
pub mod agent;
pub mod cmdline;
mod disks;
mod host;
mod process;
mod qmp;
mod seeds;
pub mod templates;
mod volumes;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::catalog::{BootMode, Template};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

pub use accel::Accel;
use cmdline::{Boot, Machine, Nic};
use host::NetNs;
use templates::{BootKind, SeedKind, TemplateFiles};

use crate::{
    ActualState, ConsoleStream, Driver, DriverError, DriverResult, GuestInterface, HostInfo, InstanceMetrics,
    InstanceSpec, TemplateImport, VolumeSpec,
};

/// The console log kept and returned: the tail of serial.log.
const CONSOLE_CAP: u64 = 1 << 20;
const BRIDGE: &str = "nimbr0";
/// Debian's OVMF (package `ovmf`): plain, and secure-boot capable with Microsoft's keys enrolled.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const OVMF_CODE_SECURE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Instance directories go in `state_dir/instances/<uuid>/`, snapshots in `state_dir/snapshots/`.
    pub state_dir: PathBuf,
    /// Holds one directory per template; shared by the servers of a host.
    pub template_dir: PathBuf,
    pub accel: Accel,
    /// Name of the network namespace the driver creates and owns.
    pub netns: String,
    /// The bridge's address inside the namespace; instances use it as their gateway.
    pub bridge_cidr: String,
    /// Give instances a NIC (needs root / CAP_NET_ADMIN; without it instances get no NIC anyway).
    pub network: bool,
    /// How long a boot may take until the ready marker, before the VM is killed (a template may ask more).
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

pub struct QemuDriver {
    config: QemuConfig,
    /// The accelerator actually used (never `Auto`).
    accel: Accel,
    net: Option<NetNs>,
}

/// In an instance's directory while a copy of its disks holds its VM paused (see `while_paused`).
const COPY_PAUSE: &str = "copy-pause";
/// The stock template whose kernel and initramfs are the rescue system (see `InstanceSpec::rescue`).
const RESCUE_TEMPLATE: &str = "busybox";

fn failed(e: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(e.to_string())
}

impl QemuDriver {
    pub async fn new(config: QemuConfig) -> Result<QemuDriver, DriverError> {
        let mut config = config;
        config.state_dir = std::path::absolute(&config.state_dir).map_err(failed)?;
        config.template_dir = std::path::absolute(&config.template_dir).map_err(failed)?;
        for sub in ["instances", "snapshots", "exports", "volumes"] {
            tokio::fs::create_dir_all(config.state_dir.join(sub)).await.map_err(failed)?;
        }
        if host::which(&config.qemu_binary).is_none() {
            return Err(DriverError::Unsupported(format!("{} is not installed", config.qemu_binary)));
        }
        let (accel, why) = accel::probe(&config).await?;
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
                    tokio::fs::write(&script, body).await.map_err(failed)?;
                    use std::os::unix::fs::PermissionsExt;
                    tokio::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                        .await
                        .map_err(failed)?;
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

    pub fn template_dir(&self) -> &Path {
        &self.config.template_dir
    }

    /// Removes the network namespace when no instance runs any more. Running VMs keep it (they must
    /// survive a control-plane restart and stay reachable under the same name).
    pub async fn shutdown(&self) -> DriverResult<()> {
        let Some(ns) = &self.net else { return Ok(()) };
        for id in self.instances().await? {
            if self.runtime(&self.dir(id)).await.is_some() {
                tracing::info!("qemu driver: instances still run; keeping netns {}", ns.name);
                return Ok(());
            }
        }
        ns.delete().await.map_err(failed)
    }

    fn dir(&self, id: Uuid) -> PathBuf {
        self.config.state_dir.join("instances").join(id.to_string())
    }

    fn snapshot_dir(&self, id: Uuid) -> PathBuf {
        self.config.state_dir.join("snapshots").join(id.to_string())
    }

    fn snapshot_path(&self, id: Uuid, snapshot_id: Uuid) -> PathBuf {
        self.snapshot_dir(id).join(format!("{snapshot_id}.qcow2"))
    }

    fn export_path(&self, snapshot_id: Uuid) -> PathBuf {
        self.config.state_dir.join("exports").join(format!("{snapshot_id}.qcow2"))
    }

    fn imported_dir(&self, template_id: Uuid) -> PathBuf {
        self.config.template_dir.join(templates::IMPORTED).join(template_id.to_string())
    }

    async fn existing_dir(&self, id: Uuid) -> DriverResult<PathBuf> {
        let dir = self.dir(id);
        if tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            Ok(dir)
        } else {
            Err(DriverError::NotFound(id))
        }
    }

    async fn lock(&self, dir: &Path) -> DriverResult<host::FileLock> {
        host::lock_file(dir.join(".lock")).await.map_err(failed)
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

    /// How this instance boots its template, refusing what the template or this host cannot do.
    async fn boot_kind(tf: &TemplateFiles, spec: &InstanceSpec) -> DriverResult<BootKind> {
        let m = &tf.manifest;
        let wants_uefi = spec.tpm || spec.secure_boot;
        let boot = if wants_uefi { BootKind::Uefi } else { m.boot() };
        if wants_uefi && !m.supports(BootKind::Uefi) {
            let what = if spec.tpm { "a TPM" } else { "secure boot" };
            return Err(DriverError::Invalid(format!(
                "{what} needs a UEFI template; {} boots only with {:?}",
                m.name,
                m.boot()
            )));
        }
        if boot == BootKind::Uefi {
            let code = if spec.secure_boot { OVMF_CODE_SECURE } else { OVMF_CODE };
            if !accel::have(Path::new(code)).await {
                return Err(DriverError::Unsupported(format!("{code} is missing: install ovmf (guest/packages.txt)")));
            }
        }
        if spec.tpm && host::which("swtpm").is_none() {
            return Err(DriverError::Unsupported("swtpm is missing: install swtpm (guest/packages.txt)".into()));
        }
        Ok(boot)
    }

    /// The disk, seed and firmware state an instance needs before it boots; idempotent.
    async fn provision(&self, dir: &Path, tf: &TemplateFiles, spec: &InstanceSpec, boot: BootKind) -> DriverResult<()> {
        let disk = dir.join("disk.qcow2");
        if let Some(bv) = &spec.boot_volume {
            self.link_boot_volume(dir, tf, spec, bv).await?;
        } else if !tokio::fs::try_exists(&disk).await.unwrap_or(false) {
            disks::create_overlay(
                &self.config.qemu_img,
                &tf.disk,
                &tf.manifest.disk_format,
                spec.disk_size_gb << 30,
                &disk,
            )
            .await?;
        }
        let vars = dir.join("efivars.fd");
        if boot == BootKind::Uefi && !tokio::fs::try_exists(&vars).await.unwrap_or(false) {
            // Microsoft's keys enrolled for secure boot (Debian's shim is signed by them), an empty store else.
            let source = if spec.secure_boot { OVMF_VARS_MS } else { OVMF_VARS };
            let tmp = dir.join("efivars.fd.tmp");
            tokio::fs::copy(source, &tmp).await.map_err(|e| failed(format!("{source}: {e}")))?;
            tokio::fs::rename(&tmp, &vars).await.map_err(failed)?;
        }
        match tf.manifest.seed() {
            SeedKind::FwCfg => seeds::write_fw_cfg(dir, spec).await,
            SeedKind::Nocloud => seeds::write_nocloud(dir, spec).await.map(|_| ()),
        }
    }

    /// Makes the instance's `disk.qcow2` a link to its boot volume's file (made from the template first when
    /// the create makes the volume), so that every call on the instance's disk (boot, snapshot, revert,
    /// reinstall, resize) works on the volume, and `destroy`, which removes the instance's directory, leaves
    /// the volume. Idempotent.
    async fn link_boot_volume(
        &self,
        dir: &Path,
        tf: &TemplateFiles,
        spec: &InstanceSpec,
        bv: &crate::BootVolumeSpec,
    ) -> DriverResult<()> {
        let file = volumes::path(&self.config.state_dir, bv.volume.id);
        if !tokio::fs::try_exists(&file).await.unwrap_or(false) {
            if !bv.new {
                return Err(DriverError::Invalid(format!("volume {} has no disk on this host", bv.volume.id)));
            }
            if let Some(parent) = file.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(failed)?;
            }
            let size = bv.volume.size_gb.max(spec.disk_size_gb) << 30;
            disks::create_overlay(&self.config.qemu_img, &tf.disk, &tf.manifest.disk_format, size, &file).await?;
        }
        let disk = dir.join("disk.qcow2");
        if tokio::fs::read_link(&disk).await.ok().as_deref() == Some(file.as_path()) {
            return Ok(());
        }
        let _ = tokio::fs::remove_file(&disk).await;
        tokio::fs::symlink(&file, &disk).await.map_err(failed)
    }

    /// Runs `copy` with the instance's running VM paused: paused, QEMU has flushed everything to its files,
    /// so a read of them is a crash-consistent copy. A VM its owner paused (suspended) stays paused. The pause
    /// is marked in the instance's directory before it is made, so that a control plane killed mid-copy does
    /// not leave the guest paused: the step runs again and [`Self::end_copy_pause`] resumes it first.
    async fn while_paused<T>(
        &self,
        dir: &Path,
        copy: impl std::future::Future<Output = DriverResult<T>>,
    ) -> DriverResult<T> {
        let qmp_sock = dir.join("qmp.sock");
        let status = qmp::command(&qmp_sock, "query-status", None).await.map_err(failed)?;
        if status.get("status").and_then(Value::as_str) == Some("paused") {
            return copy.await;
        }
        tokio::fs::write(dir.join(COPY_PAUSE), b"").await.map_err(failed)?;
        qmp::command(&qmp_sock, "stop", None).await.map_err(failed)?;
        let copied = copy.await;
        self.end_copy_pause(dir).await?;
        copied
    }

    /// Resumes a VM that a copy paused ([`Self::while_paused`]), also one whose copy was cut short by a crash.
    async fn end_copy_pause(&self, dir: &Path) -> DriverResult<()> {
        let mark = dir.join(COPY_PAUSE);
        if !tokio::fs::try_exists(&mark).await.unwrap_or(false) {
            return Ok(());
        }
        if self.runtime(dir).await.is_some() {
            qmp::command(&dir.join("qmp.sock"), "cont", None).await.map_err(failed)?;
        }
        tokio::fs::remove_file(&mark).await.map_err(failed)
    }

    /// The file behind an instance's disk: its own, or its boot volume's. Writes that replace the file
    /// (a rename over it) go there, not over the link.
    async fn disk_file(dir: &Path) -> PathBuf {
        let disk = dir.join("disk.qcow2");
        tokio::fs::canonicalize(&disk).await.unwrap_or(disk)
    }

    async fn spawn(&self, spec: &InstanceSpec, dir: &Path) -> DriverResult<process::Runtime> {
        let tf = templates::resolve(&self.config.template_dir, &spec.template).await?;
        let boot = Self::boot_kind(&tf, spec).await?;
        self.provision(dir, &tf, spec, boot).await?;
        if spec.rescue {
            return self.spawn_rescue(spec, dir).await;
        }
        let tpm_socket = if spec.tpm { Some(self.start_swtpm(dir).await?) } else { None };
        let boot_spec = match boot {
            BootKind::Kernel => Boot::Kernel {
                kernel: tf.kernel.clone().expect("checked by templates::files"),
                initrd: tf.initrd.clone(),
                cmdline: tf.cmdline.clone(),
            },
            BootKind::Bios => Boot::Bios,
            BootKind::Uefi => Boot::Uefi {
                code: PathBuf::from(if spec.secure_boot { OVMF_CODE_SECURE } else { OVMF_CODE }),
                vars: dir.join("efivars.fd"),
                secure_boot: spec.secure_boot,
            },
        };
        let machine = Machine {
            seed_iso: (tf.manifest.seed() == SeedKind::Nocloud).then(|| dir.join("seed.iso")),
            fw_cfg: match tf.manifest.seed() {
                SeedKind::FwCfg => {
                    seeds::fw_cfg_files(dir).await.into_iter().map(|(k, p)| (k.to_string(), p)).collect()
                }
                SeedKind::Nocloud => Vec::new(),
            },
            tpm_socket,
            // Disk images may run qemu-guest-agent; the busybox guest has none.
            agent_socket: (boot != BootKind::Kernel || tf.manifest.guest_agent).then(|| dir.join("qga.sock")),
            ..self.instance_machine(spec, dir, boot_spec)
        };
        self.spawn_machine(spec, dir, &machine, &tf.manifest).await
    }

    /// The instance's machine booted by `boot`: its size, its disk, its NIC on the instance network when the
    /// host has one, its directory; no seed, TPM or guest agent (each boot adds what it has).
    fn instance_machine(&self, spec: &InstanceSpec, dir: &Path, boot: Boot) -> Machine {
        let tap = self.net.as_ref().map(|_| Self::tap_name(spec.id));
        Machine {
            name: format!("nimbus-{}", spec.id),
            accel: self.accel,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            boot,
            disk: Some(dir.join("disk.qcow2")),
            seed_iso: None,
            fw_cfg: Vec::new(),
            nic: tap.map(|tap| Nic { tap, mac: Self::mac(spec), ifup_script: self.config.state_dir.join("qemu-ifup") }),
            dir: Some(dir.to_path_buf()),
            serial_file: None,
            tpm_socket: None,
            agent_socket: None,
        }
    }

    /// Boots the rescue system (`InstanceSpec::rescue`): the stock busybox template's kernel and initramfs,
    /// told about the instance through fw_cfg whatever its template, with its disk (already provisioned)
    /// and volumes attached as they are for its own boots. No TPM, firmware or guest agent: none of the
    /// instance's own boot chain runs.
    async fn spawn_rescue(&self, spec: &InstanceSpec, dir: &Path) -> DriverResult<process::Runtime> {
        let rescue_dir = self.config.template_dir.join(RESCUE_TEMPLATE);
        let manifest = templates::read_manifest(&rescue_dir).await.map_err(|e| {
            DriverError::Unsupported(format!(
                "a rescue boot needs the stock busybox template on this host (nimbus template build busybox): {e}"
            ))
        })?;
        let tf = templates::files(rescue_dir, manifest).await?;
        let Some(kernel) = tf.kernel.clone() else {
            return Err(DriverError::Unsupported("the busybox template on this host boots no kernel".into()));
        };
        seeds::write_fw_cfg(dir, spec).await?;
        let boot = Boot::Kernel { kernel, initrd: tf.initrd.clone(), cmdline: tf.cmdline.clone() };
        let machine = Machine {
            fw_cfg: seeds::fw_cfg_files(dir).await.into_iter().map(|(k, p)| (k.to_string(), p)).collect(),
            ..self.instance_machine(spec, dir, boot)
        };
        self.spawn_machine(spec, dir, &machine, &tf.manifest).await
    }

    /// Starts QEMU for `machine` with the spec's volumes plugged in (each on the port it had before), and
    /// waits for the ready marker of the template it boots.
    async fn spawn_machine(
        &self,
        spec: &InstanceSpec,
        dir: &Path,
        machine: &Machine,
        booted: &templates::Manifest,
    ) -> DriverResult<process::Runtime> {
        let mut args = cmdline::args(machine);
        let ports = volumes::ports_for_boot(&volumes::read_ports(dir).await, &spec.volumes)?;
        for id in ports.keys() {
            if !tokio::fs::try_exists(volumes::path(&self.config.state_dir, *id)).await.unwrap_or(false) {
                return Err(DriverError::Invalid(format!("volume {id} has no disk on this host")));
            }
        }
        volumes::write_ports(dir, &ports).await?;
        args.extend(volumes::boot_args(&self.config.state_dir, &ports));
        let marker = booted.ready_marker.clone().unwrap_or_default();
        let tap = machine.nic.as_ref().map(|n| n.tap.clone());
        self.spawn_qemu(spec.id, dir, args, marker, booted.boot_timeout_secs, tap).await
    }

    async fn snapshot_ids(&self, id: Uuid) -> Vec<Uuid> {
        let mut out = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(self.snapshot_dir(id)).await else { return out };
        while let Ok(Some(e)) = entries.next_entry().await {
            if let Some(id) =
                e.file_name().to_str().and_then(|n| n.strip_suffix(".qcow2")).and_then(|s| Uuid::parse_str(s).ok())
            {
                out.push(id);
            }
        }
        out.sort();
        out
    }

    /// The template a snapshot's disk was made from: the directory of the end of its backing chain.
    async fn template_of_image(&self, image: &Path) -> DriverResult<TemplateFiles> {
        let (base, _) = disks::backing(&self.config.qemu_img, image).await?;
        let dir = Path::new(&base).parent().map(Path::to_path_buf).unwrap_or_default();
        let m = templates::read_manifest(&dir)
            .await
            .map_err(|e| DriverError::Invalid(format!("the template this snapshot was made from is gone: {e}")))?;
        templates::files(dir, m).await
    }

    /// Copies `from` into `dir` under its own name, as a hard link when the file system allows.
    async fn link_or_copy(from: &Path, dir: &Path) -> DriverResult<String> {
        let name = from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let to = dir.join(&name);
        if !tokio::fs::try_exists(&to).await.unwrap_or(false) && tokio::fs::hard_link(from, &to).await.is_err() {
            tokio::fs::copy(from, &to).await.map_err(failed)?;
        }
        Ok(name)
    }

    /// Downloads (http, https: curl) or copies (an absolute path on this host) `source` to `to`.
    async fn fetch(source: &str, to: &Path) -> DriverResult<()> {
        let to_s = to.display().to_string();
        if source.starts_with("http://") || source.starts_with("https://") {
            host::run(
                "curl",
                &[
                    "--fail",
                    "--silent",
                    "--show-error",
                    "--location",
                    "--proto",
                    "=http,https",
                    "--output",
                    &to_s,
                    source,
                ],
            )
            .await
            .map_err(|e| DriverError::Invalid(format!("cannot download {source}: {e}")))?;
        } else if Path::new(source).is_absolute() {
            tokio::fs::copy(source, to)
                .await
                .map_err(|e| DriverError::Invalid(format!("cannot read {source}: {e}")))?;
        } else {
            return Err(DriverError::Invalid(format!(
                "{source:?} is neither an http(s) URL nor an absolute path on the server's host"
            )));
        }
        Ok(())
    }

    async fn imported_template(&self, dir: &Path, template_id: Uuid) -> DriverResult<Template> {
        let m = templates::read_manifest(dir).await.map_err(failed)?;
        let mut t = m.template(dir);
        t.id = template_id;
        Ok(t)
    }
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
        Ok(templates::stock(&self.config.template_dir).await)
    }

    async fn create(&self, spec: &InstanceSpec) -> DriverResult<()> {
        let dir = self.dir(spec.id);
        // Unix socket paths are limited to 108 bytes; fail here rather than at the first boot.
        if dir.join("serial.sock").as_os_str().len() > 107 {
            return Err(DriverError::Invalid(format!("state dir path too long for unix sockets: {}", dir.display())));
        }
        let tf = templates::resolve(&self.config.template_dir, &spec.template).await?;
        let boot = Self::boot_kind(&tf, spec).await?;
        let mk = dir.clone();
        tokio::task::spawn_blocking(move || std::fs::DirBuilder::new().recursive(true).mode(0o700).create(mk))
            .await
            .map_err(failed)?
            .map_err(failed)?;
        let _lock = self.lock(&dir).await?;
        self.provision(&dir, &tf, spec, boot).await
    }

    async fn start(&self, spec: &InstanceSpec) -> DriverResult<()> {
        let dir = self.existing_dir(spec.id).await?;
        let _lock = self.lock(&dir).await?;
        let started = Instant::now();
        // Already running (e.g. the control plane died mid-start): just wait for this boot to finish.
        let rt = match self.runtime(&dir).await {
            Some(rt) => rt,
            None => self.spawn(spec, &dir).await?,
        };
        self.wait_ready(spec.id, &dir, &rt, started).await
    }

    async fn stop(&self, id: Uuid, grace: Duration) -> DriverResult<()> {
        let dir = self.existing_dir(id).await?;
        let _lock = self.lock(&dir).await?;
        self.stop_locked(id, &dir, grace).await;
        Ok(())
    }

    async fn reboot(&self, spec: &InstanceSpec) -> DriverResult<()> {
        let dir = self.existing_dir(spec.id).await?;
        let _lock = self.lock(&dir).await?;
        let started = Instant::now();
        let rt = match self.runtime(&dir).await {
            Some(mut rt) => {
                rt.boot_offset = tokio::fs::metadata(dir.join("serial.log")).await.map_or(0, |m| m.len());
                Self::save_runtime(&dir, &rt).await?;
                qmp::command(&dir.join("qmp.sock"), "system_reset", None).await.map_err(failed)?;
                rt
            }
            None => self.spawn(spec, &dir).await?,
        };
        self.wait_ready(spec.id, &dir, &rt, started).await
    }

    async fn reinstall(&self, spec: &InstanceSpec) -> DriverResult<()> {
        let dir = self.existing_dir(spec.id).await?;
        let _lock = self.lock(&dir).await?;
        self.require_stopped(&dir, "reinstall").await?;
        let tf = templates::resolve(&self.config.template_dir, &spec.template).await?;
        let boot = Self::boot_kind(&tf, spec).await?;
        // The new overlay replaces the old one in one rename. Snapshots are files of their own: they stay. A
        // boot volume is reinstalled in place: the instance keeps booting from it.
        let disk = Self::disk_file(&dir).await;
        disks::create_overlay(
            &self.config.qemu_img,
            &tf.disk,
            &tf.manifest.disk_format,
            spec.disk_size_gb << 30,
            &disk,
        )
        .await?;
        self.provision(&dir, &tf, spec, boot).await
    }

    async fn join_overlay(&self, spec: &crate::overlay::OverlaySpec) -> DriverResult<()> {
        crate::overlay::sync(&self.config.netns, BRIDGE, spec).await.map_err(failed)
    }

    async fn disk_size_gb(&self, id: Uuid) -> DriverResult<u64> {
        let dir = self.existing_dir(id).await?;
        Ok(disks::virtual_size(&self.config.qemu_img, &dir.join("disk.qcow2")).await?.div_ceil(1 << 30))
    }

    async fn snapshots(&self, id: Uuid) -> DriverResult<Vec<Uuid>> {
        self.existing_dir(id).await?;
        Ok(self.snapshot_ids(id).await)
    }

    async fn resize_disk(&self, id: Uuid, size_gb: u64) -> DriverResult<()> {
        let dir = self.existing_dir(id).await?;
        let _lock = self.lock(&dir).await?;
        let disk = dir.join("disk.qcow2");
        let current = disks::virtual_size(&self.config.qemu_img, &disk).await?;
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
        match self.runtime(&dir).await {
            // QMP block_resize would shrink too; the check above is what keeps it grow-only.
            Some(_) => qmp::command(
                &dir.join("qmp.sock"),
                "block_resize",
                Some(serde_json::json!({"node-name": "d0", "size": wanted})),
            )
            .await
            .map(|_| ())
            .map_err(failed),
            None => disks::grow(&self.config.qemu_img, &disk, wanted).await,
        }
    }

    async fn snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<u64> {
        let dir = self.existing_dir(id).await?;
        let _lock = self.lock(&dir).await?;
        self.end_copy_pause(&dir).await?;
        let path = self.snapshot_path(id, snapshot_id);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            tokio::fs::create_dir_all(self.snapshot_dir(id)).await.map_err(failed)?;
            let disk = dir.join("disk.qcow2");
            match self.runtime(&dir).await {
                Some(_) => {
                    self.while_paused(&dir, disks::copy_overlay(&self.config.qemu_img, &disk, &path, true)).await?
                }
                None => disks::copy_overlay(&self.config.qemu_img, &disk, &path, false).await?,
            }
        }
        // What the snapshot really takes on the host: the clusters the instance had written.
        Ok(disks::allocated(&path).await)
    }

    async fn revert(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        let dir = self.existing_dir(id).await?;
        let _lock = self.lock(&dir).await?;
        self.require_stopped(&dir, "revert").await?;
        let path = self.snapshot_path(id, snapshot_id);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(DriverError::Invalid(format!("instance {id} has no snapshot {snapshot_id}")));
        }
        let disk = Self::disk_file(&dir).await;
        let size = disks::virtual_size(&self.config.qemu_img, &disk).await?;
        disks::copy_overlay(&self.config.qemu_img, &path, &disk, false).await?;
        // Reverting brings back the snapshot's virtual size too; the disk keeps the size the instance has
        // (grow-only), and the guest grows its filesystem again at boot.
        if disks::virtual_size(&self.config.qemu_img, &disk).await? < size {
            disks::grow(&self.config.qemu_img, &disk, size).await?;
        }
        Ok(())
    }

    async fn delete_snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        for path in [self.snapshot_path(id, snapshot_id), self.export_path(snapshot_id)] {
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
                _ => {}
            }
        }
        Ok(())
    }

    async fn destroy(&self, id: Uuid) -> DriverResult<()> {
        let dir = self.dir(id);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            let _lock = self.lock(&dir).await?;
            self.stop_locked(id, &dir, Duration::ZERO).await;
            tokio::fs::remove_dir_all(&dir).await.map_err(failed)?;
        }
        // The instance's snapshots go with it (a promoted one lives on as its template's own copy).
        for sid in self.snapshot_ids(id).await {
            let _ = tokio::fs::remove_file(self.export_path(sid)).await;
        }
        match tokio::fs::remove_dir_all(self.snapshot_dir(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
            _ => {}
        }
        tracing::info!(instance = %id, "instance destroyed");
        Ok(())
    }

    async fn inspect(&self, id: Uuid) -> DriverResult<ActualState> {
        let dir = self.dir(id);
        Ok(if !tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            ActualState::Missing
        } else if self.runtime(&dir).await.is_some() {
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
        let dir = self.existing_dir(id).await?;
        let _lock = self.lock(&dir).await?;
        if self.runtime(&dir).await.is_none() {
            return Err(DriverError::Invalid("suspend needs the instance running".into()));
        }
        // QMP `stop` pauses the vCPUs; pausing a paused VM is a no-op.
        qmp::command(&dir.join("qmp.sock"), "stop", None).await.map_err(failed)?;
        Ok(())
    }

    async fn resume(&self, id: Uuid) -> DriverResult<()> {
        let dir = self.existing_dir(id).await?;
        let _lock = self.lock(&dir).await?;
        if self.runtime(&dir).await.is_none() {
            return Err(DriverError::Invalid("resume needs the instance suspended".into()));
        }
        qmp::command(&dir.join("qmp.sock"), "cont", None).await.map_err(failed)?;
        Ok(())
    }

    async fn instances(&self) -> DriverResult<Vec<Uuid>> {
        let mut entries = match tokio::fs::read_dir(self.config.state_dir.join("instances")).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(failed(e)),
        };
        let mut ids = Vec::new();
        while let Ok(Some(e)) = entries.next_entry().await {
            if let Some(id) = e.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    async fn console(&self, id: Uuid) -> DriverResult<String> {
        let dir = self.existing_dir(id).await?;
        match process::read_tail(&dir.join("serial.log"), CONSOLE_CAP).await {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(failed(e)),
        }
    }

    async fn metrics(&self, id: Uuid) -> DriverResult<InstanceMetrics> {
        let dir = self.existing_dir(id).await?;
        let mut m =
            InstanceMetrics { disk_used_bytes: disks::allocated(&dir.join("disk.qcow2")).await, ..Default::default() };
        if let Some(rt) = self.runtime(&dir).await {
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

    fn supports_tpm(&self) -> bool {
        host::which("swtpm").is_some()
    }

    async fn enable_tpm(&self, id: Uuid) -> DriverResult<()> {
        let dir = self.existing_dir(id).await?;
        let _lock = self.lock(&dir).await?;
        self.require_stopped(&dir, "enable-tpm").await?;
        if !self.supports_tpm() {
            return Err(DriverError::Unsupported("swtpm is missing: install swtpm (guest/packages.txt)".into()));
        }
        // swtpm fills the state directory at the TPM's first start; the instance boots UEFI from then on
        // (checked at start against its template).
        tokio::fs::create_dir_all(dir.join("tpm")).await.map_err(failed)
    }

    async fn console_stream(&self, id: Uuid) -> DriverResult<ConsoleStream> {
        let dir = self.existing_dir(id).await?;
        if self.runtime(&dir).await.is_none() {
            return Err(DriverError::Invalid("the instance is not running".into()));
        }
        let stream = tokio::net::UnixStream::connect(dir.join("serial.sock")).await.map_err(failed)?;
        Ok(Box::new(stream))
    }

    async fn connect(&self, id: Uuid, address: &str, port: u16) -> DriverResult<ConsoleStream> {
        let dir = self.existing_dir(id).await?;
        if self.runtime(&dir).await.is_none() {
            return Err(DriverError::Invalid("the instance is not running".into()));
        }
        let Some(ns) = &self.net else {
            return Err(DriverError::Unsupported("instances have no network on this host (not root)".into()));
        };
        let stream =
            ns.connect(address, port).await.map_err(|e| DriverError::Failed(format!("{address}:{port}: {e}")))?;
        Ok(Box::new(stream))
    }

    async fn guest_interfaces(&self, id: Uuid) -> DriverResult<Vec<GuestInterface>> {
        let dir = self.existing_dir(id).await?;
        if self.runtime(&dir).await.is_none() {
            return Err(DriverError::Invalid("the instance is not running".into()));
        }
        let mut agent = agent::Agent::connect(&dir.join("qga.sock"), Duration::from_secs(5))
            .await
            .map_err(|e| DriverError::Unsupported(format!("{e} (does the image run qemu-guest-agent?)")))?;
        agent.interfaces().await.map_err(failed)
    }

    async fn import_template(&self, req: &TemplateImport) -> DriverResult<Template> {
        let dir = self.imported_dir(req.template_id);
        if templates::read_manifest(&dir).await.is_ok() {
            return self.imported_template(&dir, req.template_id).await;
        }
        let expected = req.checksum.as_deref().map(templates::parse_checksum).transpose()?;
        tokio::fs::create_dir_all(&dir).await.map_err(failed)?;
        let part = dir.join("download.part");
        let _ = tokio::fs::remove_file(&part).await;
        let result = async {
            Self::fetch(&req.source, &part).await?;
            let checksum = templates::sha256(&part).await?;
            if let Some(expected) = &expected {
                if *expected != checksum {
                    return Err(DriverError::Invalid(format!(
                        "checksum mismatch: expected {expected}, the file has {checksum}"
                    )));
                }
            }
            let (format, virtual_size) = templates::check_foreign_image(&self.config.qemu_img, &part).await?;
            let disk = format!("disk.{format}");
            tokio::fs::rename(&part, dir.join(&disk)).await.map_err(failed)?;
            let size = tokio::fs::metadata(dir.join(&disk)).await.map_or(0, |m| m.len());
            let manifest = templates::Manifest {
                name: req.name.clone(),
                description: format!("Imported from {}", req.source),
                os_name: String::new(),
                os_version: String::new(),
                boot_mode: Some(if req.boot_mode == BootMode::Uefi { BootKind::Uefi } else { BootKind::Bios }),
                firmware: vec![],
                kernel: None,
                initrd: None,
                cmdline: None,
                disk,
                disk_format: format,
                seed: Some(SeedKind::Nocloud),
                ready_marker: None,
                boot_timeout_secs: None,
                guest_agent: false,
                min_disk_gb: virtual_size.div_ceil(1 << 30).max(1),
                min_memory_mib: 128,
                password_enabled: true,
                ssh_key_enabled: true,
                default_user: req.default_user.clone(),
                checksum: Some(checksum),
                size_bytes: size,
            };
            templates::write_manifest(&dir, &manifest).await
        }
        .await;
        if let Err(e) = result {
            // Nothing of a refused image stays behind.
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        self.imported_template(&dir, req.template_id).await
    }

    async fn promote_snapshot(
        &self,
        id: Uuid,
        snapshot_id: Uuid,
        template_id: Uuid,
        name: &str,
    ) -> DriverResult<Template> {
        let out = self.imported_dir(template_id);
        if templates::read_manifest(&out).await.is_ok() {
            return self.imported_template(&out, template_id).await;
        }
        let snap = self.snapshot_path(id, snapshot_id);
        if !tokio::fs::try_exists(&snap).await.unwrap_or(false) {
            return Err(DriverError::Invalid(format!("instance {id} has no snapshot {snapshot_id}")));
        }
        let source = self.template_of_image(&snap).await?;
        tokio::fs::create_dir_all(&out).await.map_err(failed)?;
        // A standalone disk: the template outlives the snapshot, the instance and the template it came from.
        disks::flatten(&self.config.qemu_img, &snap, &out.join("disk.qcow2")).await?;
        let mut m = source.manifest.clone();
        m.name = name.to_string();
        m.description = format!("Snapshot {snapshot_id} of instance {id}, made from {}", source.manifest.name);
        m.disk = "disk.qcow2".into();
        m.disk_format = "qcow2".into();
        if let Some(k) = &source.kernel {
            m.kernel = Some(Self::link_or_copy(k, &out).await?);
        }
        if let Some(i) = &source.initrd {
            m.initrd = Some(Self::link_or_copy(i, &out).await?);
        }
        m.checksum = Some(templates::sha256(&out.join("disk.qcow2")).await?);
        m.size_bytes = tokio::fs::metadata(out.join("disk.qcow2")).await.map_or(0, |md| md.len());
        m.min_disk_gb = disks::virtual_size(&self.config.qemu_img, &snap).await?.div_ceil(1 << 30).max(m.min_disk_gb);
        templates::write_manifest(&out, &m).await?;
        self.imported_template(&out, template_id).await
    }

    async fn remove_template(&self, template_id: Uuid) -> DriverResult<()> {
        match tokio::fs::remove_dir_all(self.imported_dir(template_id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(e)),
            _ => Ok(()),
        }
    }

    async fn create_volume(&self, volume: &VolumeSpec) -> DriverResult<()> {
        volumes::create(&self.config.qemu_img, &volumes::path(&self.config.state_dir, volume.id), volume.size_gb).await
    }

    async fn create_volume_from_template(&self, volume: &VolumeSpec, template: &Template) -> DriverResult<()> {
        let file = volumes::path(&self.config.state_dir, volume.id);
        if tokio::fs::try_exists(&file).await.unwrap_or(false) {
            return Ok(());
        }
        let tf = templates::resolve(&self.config.template_dir, template).await?;
        if let Some(parent) = file.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(failed)?;
        }
        disks::create_overlay(&self.config.qemu_img, &tf.disk, &tf.manifest.disk_format, volume.size_gb << 30, &file)
            .await
    }

    async fn create_volume_from_snapshot(
        &self,
        volume: &VolumeSpec,
        source: Uuid,
        snapshot_id: Uuid,
    ) -> DriverResult<()> {
        let file = volumes::path(&self.config.state_dir, volume.id);
        if tokio::fs::try_exists(&file).await.unwrap_or(false) {
            return Ok(());
        }
        let snapshot = volumes::snapshot_path(&self.config.state_dir, source, snapshot_id);
        if !tokio::fs::try_exists(&snapshot).await.unwrap_or(false) {
            return Err(DriverError::Invalid(format!("volume {source} has no snapshot {snapshot_id}")));
        }
        volumes::from_snapshot(&self.config.qemu_img, &snapshot, &file, volume.size_gb).await
    }

    async fn delete_volume(&self, volume_id: Uuid) -> DriverResult<()> {
        volumes::remove(&volumes::path(&self.config.state_dir, volume_id)).await
    }

    async fn resize_volume(&self, volume_id: Uuid, size_gb: u64, attached_to: Option<Uuid>) -> DriverResult<()> {
        let file = volumes::path(&self.config.state_dir, volume_id);
        if let Some(id) = attached_to {
            let dir = self.existing_dir(id).await?;
            let _lock = self.lock(&dir).await?;
            let plugged = volumes::read_ports(&dir).await.get(&volume_id).cloned();
            if let (Some(p), Some(_)) = (plugged, self.runtime(&dir).await) {
                // QEMU holds the file: it grows it, and tells the guest.
                return volumes::grow_plugged(
                    &self.config.qemu_img,
                    &dir.join("qmp.sock"),
                    &file,
                    volume_id,
                    &p.serial,
                    size_gb,
                )
                .await;
            }
        }
        volumes::grow(&self.config.qemu_img, &file, volume_id, size_gb).await
    }

    async fn volume_size_gb(&self, volume_id: Uuid) -> DriverResult<u64> {
        volumes::size_gb(&self.config.qemu_img, &volumes::path(&self.config.state_dir, volume_id), volume_id).await
    }

    async fn snapshot_volume(&self, volume_id: Uuid, snapshot_id: Uuid, attached_to: Option<Uuid>) -> DriverResult<()> {
        let file = volumes::path(&self.config.state_dir, volume_id);
        let to = volumes::snapshot_path(&self.config.state_dir, volume_id, snapshot_id);
        // The instance it is attached to, locked for the copy.
        let (dir, _lock) = match attached_to {
            Some(id) => {
                let dir = self.existing_dir(id).await?;
                let lock = self.lock(&dir).await?;
                self.end_copy_pause(&dir).await?;
                (Some(dir), Some(lock))
            }
            None => (None, None),
        };
        if tokio::fs::try_exists(&to).await.unwrap_or(false) {
            return Ok(());
        }
        if !tokio::fs::try_exists(&file).await.unwrap_or(false) {
            return Err(DriverError::NotFound(volume_id));
        }
        match dir {
            Some(dir) if self.runtime(&dir).await.is_some() => {
                self.while_paused(&dir, volumes::copy(&self.config.qemu_img, &file, &to, true)).await
            }
            _ => volumes::copy(&self.config.qemu_img, &file, &to, false).await,
        }
    }

    async fn revert_volume(&self, volume_id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        let snapshot = volumes::snapshot_path(&self.config.state_dir, volume_id, snapshot_id);
        if !tokio::fs::try_exists(&snapshot).await.unwrap_or(false) {
            return Err(DriverError::Invalid(format!("volume {volume_id} has no snapshot {snapshot_id}")));
        }
        let file = volumes::path(&self.config.state_dir, volume_id);
        volumes::restore(&self.config.qemu_img, &snapshot, &file, volume_id).await
    }

    async fn delete_volume_snapshot(&self, volume_id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        volumes::remove(&volumes::snapshot_path(&self.config.state_dir, volume_id, snapshot_id)).await?;
        // The volume's directory goes with its last snapshot.
        if let Some(dir) = volumes::snapshot_path(&self.config.state_dir, volume_id, snapshot_id).parent() {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    async fn volume_snapshots(&self, volume_id: Uuid) -> DriverResult<Vec<Uuid>> {
        Ok(volumes::snapshot_ids(&self.config.state_dir, volume_id).await)
    }

    async fn read_volume(&self, volume_id: Uuid, offset: u64, len: u64) -> DriverResult<crate::VolumeChunk> {
        volumes::read_chunk(&volumes::path(&self.config.state_dir, volume_id), volume_id, offset, len).await
    }

    async fn write_volume(&self, volume_id: Uuid, chunk: &crate::VolumeChunk) -> DriverResult<()> {
        volumes::write_chunk(&volumes::path(&self.config.state_dir, volume_id), chunk).await
    }

    async fn attach_volume(&self, id: Uuid, volume: &VolumeSpec) -> DriverResult<()> {
        let dir = self.existing_dir(id).await?;
        let file = volumes::path(&self.config.state_dir, volume.id);
        if !tokio::fs::try_exists(&file).await.unwrap_or(false) {
            return Err(DriverError::NotFound(volume.id));
        }
        let _lock = self.lock(&dir).await?;
        // The port is recorded before the device is added: run again after a crash, the attach finds it.
        let mut ports = volumes::read_ports(&dir).await;
        let port = volumes::assign(&mut ports, volume)?;
        volumes::write_ports(&dir, &ports).await?;
        if self.runtime(&dir).await.is_some() {
            volumes::hot_plug(&dir.join("qmp.sock"), &file, volume, port).await?;
            tracing::info!(instance = %id, volume = %volume.id, port, "volume hot-plugged");
        }
        Ok(())
    }

    async fn detach_volume(&self, id: Uuid, volume_id: Uuid) -> DriverResult<()> {
        let dir = match self.existing_dir(id).await {
            Ok(dir) => dir,
            // A destroyed instance holds nothing.
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _lock = self.lock(&dir).await?;
        let mut ports = volumes::read_ports(&dir).await;
        let Some(plugged) = ports.get(&volume_id).cloned() else { return Ok(()) };
        if self.runtime(&dir).await.is_some() {
            volumes::hot_unplug(&dir.join("qmp.sock"), &plugged.serial).await?;
            tracing::info!(instance = %id, volume = %volume_id, "volume hot-unplugged");
        }
        ports.remove(&volume_id);
        volumes::write_ports(&dir, &ports).await
    }

    async fn volumes(&self) -> DriverResult<Vec<Uuid>> {
        Ok(volumes::ids(&self.config.state_dir).await)
    }

    async fn export_snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<String> {
        let snap = self.snapshot_path(id, snapshot_id);
        if !tokio::fs::try_exists(&snap).await.unwrap_or(false) {
            return Err(DriverError::Invalid(format!("instance {id} has no snapshot {snapshot_id}")));
        }
        let out = self.export_path(snapshot_id);
        if !tokio::fs::try_exists(&out).await.unwrap_or(false) {
            disks::flatten(&self.config.qemu_img, &snap, &out).await?;
        }
        Ok(out.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_created_together_get_distinct_taps() {
        let a = Uuid::parse_str("01a20311-0c5e-7a10-9f3e-2b8d4c6a1e01").unwrap();
        let b = Uuid::parse_str("01a20311-0c5e-7a10-9f3e-2b8d4c6a1e02").unwrap();
        assert_ne!(QemuDriver::tap_name(a), QemuDriver::tap_name(b));
        assert!(QemuDriver::tap_name(a).len() <= 15, "IFNAMSIZ");
    }
}
