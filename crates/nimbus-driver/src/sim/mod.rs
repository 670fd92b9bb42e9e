//! The `sim` driver: a simulated host kept in memory, with per-action delays and injected failures.
//!
//! It exists for tests and scale runs, never as the default. When given a state directory its simulated
//! VMs live there, in a journal ([`journal`]), and outlive the control plane like real QEMU processes do: a
//! restarted server, or a second server process on the same host, finds them there. Every call first
//! reads what the journal gained, so processes sharing the directory see each other's changes; the engine
//! never runs two operations on one instance at once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::catalog::{BootMode, Template, Visibility};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod journal;

use crate::{ActualState, Driver, DriverError, DriverResult, HostInfo, InstanceSpec, TemplateImport, VolumeSpec};

#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    /// Delay of every action unless `action_delays` names it.
    pub delay: Duration,
    /// Per-action delays, by action name (`create`, `start`, `stop`, `reboot`, `reinstall`, `resize_disk`,
    /// `snapshot`, `revert`, `destroy`, `suspend`, `resume`).
    pub action_delays: HashMap<String, Duration>,
    /// Fail the next N calls of an action.
    pub failures: HashMap<String, u32>,
    /// Keep the simulated host's VMs here (a journal), so that they survive a restart of the control
    /// plane and are shared by every server process on this host. `None`: in this process's memory only.
    pub state_dir: Option<PathBuf>,
    pub host_vcpus: u32,
    pub host_memory_mib: u64,
}

impl SimConfig {
    /// Parses `action=value` pairs as given on the command line.
    pub fn parse_pairs(pairs: &[String]) -> Result<Vec<(String, u64)>, String> {
        pairs
            .iter()
            .map(|p| {
                let (k, v) = p.split_once('=').ok_or_else(|| format!("expected ACTION=NUMBER, got {p:?}"))?;
                let n = v.parse::<u64>().map_err(|_| format!("expected a number in {p:?}"))?;
                Ok((k.to_string(), n))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimVm {
    running: bool,
    disk_size_gb: u64,
    /// Stands in for the disk's content: bumped by every boot, so a revert visibly brings an old one back.
    disk_version: u64,
    snapshots: BTreeMap<Uuid, u64>,
    console: String,
    tpm: bool,
    /// Running but suspended (only meaningful while `running`).
    #[serde(default)]
    paused: bool,
}

type Vms = Store<SimVm>;

/// A simulated volume's disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimVolume {
    pub size_gb: u64,
    pub serial: String,
    /// The instance it is plugged into.
    pub attached_to: Option<Uuid>,
    /// Its snapshots, with the size the volume had when each was taken.
    #[serde(default)]
    pub snapshots: std::collections::BTreeMap<Uuid, u64>,
    /// The snapshot it was last reverted to.
    #[serde(default)]
    pub reverted_to: Option<Uuid>,
    /// The snapshot (of another volume) it was made from.
    #[serde(default)]
    pub made_from: Option<Uuid>,
}

/// Where the simulated VMs (and templates, and volumes) live.
enum Store<T> {
    Memory(Mutex<HashMap<Uuid, T>>),
    /// In the state directory's journal, shared with every process using that directory.
    Journal(journal::Journal<T>),
}

impl<T: Clone + Serialize + serde::de::DeserializeOwned> Store<T> {
    /// In `dir`'s journal when given, in this process's memory otherwise.
    fn at(dir: Option<PathBuf>) -> Store<T> {
        match dir {
            Some(dir) => Store::Journal(journal::Journal::open(&dir)),
            None => Store::Memory(Mutex::new(HashMap::new())),
        }
    }

    fn get(&self, id: Uuid) -> Option<T> {
        match self {
            Store::Memory(m) => m.lock().unwrap().get(&id).cloned(),
            Store::Journal(j) => j.get(id),
        }
    }

    fn put(&self, id: Uuid, vm: &T) -> DriverResult<()> {
        match self {
            Store::Memory(m) => {
                m.lock().unwrap().insert(id, vm.clone());
                Ok(())
            }
            Store::Journal(j) => j.put(id, vm),
        }
    }

    fn remove(&self, id: Uuid) -> DriverResult<()> {
        match self {
            Store::Memory(m) => {
                m.lock().unwrap().remove(&id);
                Ok(())
            }
            Store::Journal(j) => j.remove(id),
        }
    }

    fn ids(&self) -> Vec<Uuid> {
        match self {
            Store::Memory(m) => {
                let mut ids: Vec<Uuid> = m.lock().unwrap().keys().copied().collect();
                ids.sort();
                ids
            }
            Store::Journal(j) => j.ids(),
        }
    }
}

/// What a sim import reports as the checksum of every file.
pub const SIM_CHECKSUM: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

pub struct SimDriver {
    config: SimConfig,
    vms: Vms,
    /// Imported and promoted templates, kept like VMs (in `<state_dir>/templates/`).
    templates: Store<Template>,
    /// Volumes' disks, kept like VMs (in `<state_dir>/volumes/`).
    volumes: Store<SimVolume>,
    /// Volumes arriving from another host (`write_volume`), until their last piece.
    incoming: Mutex<HashMap<Uuid, Vec<u8>>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl SimDriver {
    /// Records a new volume's disk, unless it has one already.
    fn new_volume(&self, volume: &VolumeSpec) -> DriverResult<()> {
        if self.volumes.get(volume.id).is_some() {
            return Ok(());
        }
        self.volumes.put(
            volume.id,
            &SimVolume { size_gb: volume.size_gb, serial: volume.serial.clone(), ..SimVolume::default() },
        )
    }

    /// A simulated host; with `state_dir`, its VMs are those found there (created if missing).
    pub fn new(config: SimConfig) -> SimDriver {
        let dir = config.state_dir.clone();
        let vms = Store::at(dir.clone());
        let templates = Store::at(dir.as_ref().map(|d| d.join("templates")));
        let volumes = Store::at(dir.as_ref().map(|d| d.join("volumes")));
        let failures = config.failures.clone();
        SimDriver { config, vms, templates, volumes, incoming: Mutex::default(), failures: Mutex::new(failures) }
    }

    /// A volume's disk as the simulated host has it.
    pub fn volume(&self, id: Uuid) -> Option<SimVolume> {
        self.volumes.get(id)
    }

    /// The imported and promoted templates this host has files of.
    pub fn template_files(&self) -> Vec<Uuid> {
        self.templates.ids()
    }

    /// Makes the next `times` calls of `action` fail.
    pub fn inject_failure(&self, action: &str, times: u32) {
        self.failures.lock().unwrap().insert(action.to_string(), times);
    }

    async fn act(&self, action: &str) -> DriverResult<()> {
        let delay = self.config.action_delays.get(action).copied().unwrap_or(self.config.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut failures = self.failures.lock().unwrap();
        if let Some(n) = failures.get_mut(action) {
            if *n > 0 {
                *n -= 1;
                return Err(DriverError::Failed(format!("sim: injected failure of {action}")));
            }
        }
        Ok(())
    }

    /// Read-modify-write of one VM; its new state is kept only when `f` succeeds.
    fn with_vm<T>(&self, id: Uuid, f: impl FnOnce(&mut SimVm) -> DriverResult<T>) -> DriverResult<T> {
        let mut vm = self.vms.get(id).ok_or(DriverError::NotFound(id))?;
        let before = vm.clone();
        let out = f(&mut vm)?;
        if !same(&before, &vm) {
            self.vms.put(id, &vm)?;
        }
        Ok(out)
    }
}

fn same(a: &SimVm, b: &SimVm) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

pub(crate) fn busybox_template() -> Template {
    Template {
        id: Template::id_for_name("busybox"),
        project_id: None,
        name: "busybox".into(),
        description: "Minimal busybox guest on the Debian kernel".into(),
        os_name: "busybox".into(),
        os_version: "1.35".into(),
        boot_mode: BootMode::Kernel,
        min_disk_gb: 1,
        min_memory_mib: 128,
        password_enabled: true,
        ssh_key_enabled: true,
        default_user: "root".into(),
        visibility: Visibility::Public,
        source: "sim".into(),
        checksum: None,
        size_bytes: 0,
        host: None,
        created_at: nimbus_core::now(),
    }
}

#[async_trait]
impl Driver for SimDriver {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn instant(&self) -> bool {
        self.config.delay.is_zero() && self.config.action_delays.values().all(|d| d.is_zero())
    }

    async fn host_info(&self) -> HostInfo {
        HostInfo {
            name: "sim-host".into(),
            driver: "sim".into(),
            accelerator: "none".into(),
            vcpus: if self.config.host_vcpus == 0 { 1024 } else { self.config.host_vcpus },
            memory_mib: if self.config.host_memory_mib == 0 { 4 << 20 } else { self.config.host_memory_mib },
            disk_gb: 1 << 20,
            // Plenty of every GPU model of the catalog, like its plenty of CPUs.
            gpus: nimbus_core::catalog::default_gpu_models().into_iter().map(|m| (m.codename, 1024)).collect(),
        }
    }

    async fn templates(&self) -> DriverResult<Vec<Template>> {
        Ok(vec![busybox_template()])
    }

    async fn create(&self, spec: &InstanceSpec) -> DriverResult<()> {
        self.act("create").await?;
        if self.vms.get(spec.id).is_some() {
            return Ok(());
        }
        if let Some(bv) = &spec.boot_volume {
            // Its root disk is the volume's, plugged into it from the start.
            let mut v = match self.volumes.get(bv.volume.id) {
                Some(v) => v,
                None if bv.new => {
                    SimVolume { size_gb: bv.volume.size_gb, serial: bv.volume.serial.clone(), ..SimVolume::default() }
                }
                None => return Err(DriverError::Invalid(format!("volume {} has no disk on this host", bv.volume.id))),
            };
            v.attached_to = Some(spec.id);
            self.volumes.put(bv.volume.id, &v)?;
        }
        self.vms.put(
            spec.id,
            &SimVm {
                running: false,
                disk_size_gb: spec.disk_size_gb,
                disk_version: 0,
                snapshots: BTreeMap::new(),
                console: String::new(),
                tpm: false,
                paused: false,
            },
        )
    }

    async fn start(&self, spec: &InstanceSpec) -> DriverResult<()> {
        self.act("start").await?;
        self.with_vm(spec.id, |vm| {
            if !vm.running {
                vm.running = true;
                vm.disk_version += 1;
                let system = if spec.rescue { "the rescue system" } else { "its own system" };
                vm.console.push_str(&format!("sim: {} booted {system}, disk {} GB\n", spec.hostname, vm.disk_size_gb));
                // What the real guest's init does with a password in its seed (never the password itself).
                if spec.password.is_some() {
                    vm.console.push_str(&format!("sim: {} password set\n", spec.template.default_user));
                }
                vm.console.push_str("READY\n");
            }
            Ok(())
        })
    }

    async fn stop(&self, id: Uuid, grace: Duration) -> DriverResult<()> {
        self.act("stop").await?;
        self.with_vm(id, |vm| {
            if vm.running {
                vm.running = false;
                vm.paused = false;
                // The guest is given no time to shut down when there is no grace: a power cut.
                if grace.is_zero() {
                    vm.console.push_str("sim: power cut\n");
                }
                vm.console.push_str("POWEROFF\n");
            }
            Ok(())
        })
    }

    async fn reboot(&self, spec: &InstanceSpec) -> DriverResult<()> {
        self.act("reboot").await?;
        self.with_vm(spec.id, |vm| {
            vm.running = true;
            vm.paused = false;
            // A reset keeps the VM's kernel: a rescued one boots the rescue system again.
            let system = if spec.rescue { "the rescue system" } else { "its own system" };
            vm.console.push_str(&format!("sim: reboot\nsim: {} booted {system} again\nREADY\n", spec.hostname));
            Ok(())
        })
    }

    async fn reinstall(&self, spec: &InstanceSpec) -> DriverResult<()> {
        self.act("reinstall").await?;
        self.with_vm(spec.id, |vm| {
            // Snapshots are kept apart from the disk, as the qemu driver keeps them.
            vm.disk_version = 0;
            vm.disk_size_gb = spec.disk_size_gb;
            Ok(())
        })
    }

    async fn disk_size_gb(&self, id: Uuid) -> DriverResult<u64> {
        self.vms.get(id).map(|vm| vm.disk_size_gb).ok_or(DriverError::NotFound(id))
    }

    async fn snapshots(&self, id: Uuid) -> DriverResult<Vec<Uuid>> {
        self.vms.get(id).map(|vm| vm.snapshots.keys().copied().collect()).ok_or(DriverError::NotFound(id))
    }

    async fn resize_disk(&self, id: Uuid, size_gb: u64) -> DriverResult<()> {
        self.act("resize_disk").await?;
        self.with_vm(id, |vm| {
            if size_gb < vm.disk_size_gb {
                return Err(DriverError::Invalid(format!(
                    "disk can only grow ({} GB -> {size_gb} GB)",
                    vm.disk_size_gb
                )));
            }
            vm.disk_size_gb = size_gb;
            Ok(())
        })
    }

    async fn snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<u64> {
        self.act("snapshot").await?;
        self.with_vm(id, |vm| {
            vm.snapshots.insert(snapshot_id, vm.disk_version);
            Ok(vm.disk_size_gb << 30)
        })
    }

    async fn revert(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        self.act("revert").await?;
        self.with_vm(id, |vm| {
            let version = *vm
                .snapshots
                .get(&snapshot_id)
                .ok_or_else(|| DriverError::Invalid(format!("snapshot {snapshot_id} not found on host")))?;
            vm.disk_version = version;
            Ok(())
        })
    }

    async fn delete_snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        self.with_vm(id, |vm| {
            vm.snapshots.remove(&snapshot_id);
            Ok(())
        })
        .or_else(|e| if matches!(e, DriverError::NotFound(_)) { Ok(()) } else { Err(e) })
    }

    async fn destroy(&self, id: Uuid) -> DriverResult<()> {
        self.act("destroy").await?;
        // Its volumes outlive it, unplugged, as the qemu driver's files do.
        for volume_id in self.volumes.ids() {
            if let Some(mut v) = self.volumes.get(volume_id).filter(|v| v.attached_to == Some(id)) {
                v.attached_to = None;
                self.volumes.put(volume_id, &v)?;
            }
        }
        self.vms.remove(id)
    }

    async fn inspect(&self, id: Uuid) -> DriverResult<ActualState> {
        Ok(match self.vms.get(id) {
            None => ActualState::Missing,
            Some(vm) if vm.running && vm.paused => ActualState::Paused,
            Some(vm) if vm.running => ActualState::Running,
            Some(_) => ActualState::Stopped,
        })
    }

    async fn instances(&self) -> DriverResult<Vec<Uuid>> {
        Ok(self.vms.ids())
    }

    async fn console(&self, id: Uuid) -> DriverResult<String> {
        self.with_vm(id, |vm| Ok(vm.console.clone()))
    }

    /// A serial line that replays the log so far, then echoes what it is sent, like a guest's terminal.
    async fn console_stream(&self, id: Uuid) -> DriverResult<crate::ConsoleStream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let log = self.with_vm(id, |vm| {
            if !vm.running {
                return Err(DriverError::Invalid("the instance is not running".into()));
            }
            Ok(vm.console.clone())
        })?;
        let (ours, mut guest) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            if guest.write_all(log.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = guest.read(&mut buf).await {
                if guest.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        Ok(Box::new(ours))
    }

    async fn suspend(&self, id: Uuid) -> DriverResult<()> {
        self.act("suspend").await?;
        self.with_vm(id, |vm| {
            if !vm.running {
                return Err(DriverError::Invalid("suspend needs the instance running".into()));
            }
            vm.paused = true;
            Ok(())
        })
    }

    async fn resume(&self, id: Uuid) -> DriverResult<()> {
        self.act("resume").await?;
        self.with_vm(id, |vm| {
            if !vm.running {
                return Err(DriverError::Invalid("resume needs the instance suspended".into()));
            }
            vm.paused = false;
            Ok(())
        })
    }

    fn supports_tpm(&self) -> bool {
        true
    }

    /// Refuses a source whose name says `corrupt`, or a checksum that is not the one a sim file "has"
    /// (`sha256:` followed by 64 zeros), the way the qemu driver refuses bad images.
    async fn import_template(&self, req: &TemplateImport) -> DriverResult<Template> {
        self.act("import_template").await?;
        if req.source.contains("corrupt") {
            return Err(DriverError::Invalid("not a disk image: neither qcow2 nor a raw disk".into()));
        }
        if req.checksum.as_deref().is_some_and(|c| c != SIM_CHECKSUM) {
            return Err(DriverError::Invalid(format!("checksum mismatch: the file has {SIM_CHECKSUM}")));
        }
        let t = Template {
            id: req.template_id,
            name: req.name.clone(),
            boot_mode: req.boot_mode,
            source: format!("sim:{}", req.source),
            checksum: Some(SIM_CHECKSUM.into()),
            size_bytes: 1 << 20,
            default_user: req.default_user.clone(),
            ..busybox_template()
        };
        self.templates.put(req.template_id, &t)?;
        Ok(t)
    }

    async fn promote_snapshot(
        &self,
        id: Uuid,
        snapshot_id: Uuid,
        template_id: Uuid,
        name: &str,
    ) -> DriverResult<Template> {
        self.act("promote_snapshot").await?;
        let vm = self.vms.get(id).ok_or(DriverError::NotFound(id))?;
        if !vm.snapshots.contains_key(&snapshot_id) {
            return Err(DriverError::Invalid(format!("instance {id} has no snapshot {snapshot_id}")));
        }
        let t = Template {
            id: template_id,
            name: name.into(),
            source: format!("sim:snapshot:{snapshot_id}"),
            min_disk_gb: vm.disk_size_gb,
            ..busybox_template()
        };
        self.templates.put(template_id, &t)?;
        Ok(t)
    }

    async fn remove_template(&self, template_id: Uuid) -> DriverResult<()> {
        self.templates.remove(template_id)
    }

    async fn enable_tpm(&self, id: Uuid) -> DriverResult<()> {
        self.act("enable_tpm").await?;
        self.with_vm(id, |vm| {
            vm.tpm = true;
            Ok(())
        })
    }

    async fn create_volume(&self, volume: &VolumeSpec) -> DriverResult<()> {
        self.act("create_volume").await?;
        self.new_volume(volume)
    }

    /// A template's disk is nothing the simulated host holds: the volume is made as an empty one is.
    async fn create_volume_from_template(&self, volume: &VolumeSpec, _template: &Template) -> DriverResult<()> {
        self.act("create_volume_from_template").await?;
        self.new_volume(volume)
    }

    async fn create_volume_from_snapshot(
        &self,
        volume: &VolumeSpec,
        source: Uuid,
        snapshot_id: Uuid,
    ) -> DriverResult<()> {
        self.act("create_volume_from_snapshot").await?;
        if self.volumes.get(volume.id).is_some() {
            return Ok(());
        }
        let from = self.volumes.get(source).ok_or(DriverError::NotFound(source))?;
        let Some(&size_gb) = from.snapshots.get(&snapshot_id) else {
            return Err(DriverError::Invalid(format!("volume {source} has no snapshot {snapshot_id}")));
        };
        self.volumes.put(
            volume.id,
            &SimVolume {
                size_gb: volume.size_gb.max(size_gb),
                serial: volume.serial.clone(),
                made_from: Some(snapshot_id),
                ..SimVolume::default()
            },
        )
    }

    async fn delete_volume(&self, volume_id: Uuid) -> DriverResult<()> {
        self.act("delete_volume").await?;
        if let Some(v) = self.volumes.get(volume_id) {
            if let Some(i) = v.attached_to {
                return Err(DriverError::Invalid(format!("volume {volume_id} is attached to instance {i}")));
            }
        }
        self.volumes.remove(volume_id)
    }

    async fn resize_volume(&self, volume_id: Uuid, size_gb: u64, attached_to: Option<Uuid>) -> DriverResult<()> {
        self.act("resize_volume").await?;
        let mut v = self.volumes.get(volume_id).ok_or(DriverError::NotFound(volume_id))?;
        if v.attached_to != attached_to {
            return Err(DriverError::Invalid(format!("volume {volume_id} is not attached to {attached_to:?}")));
        }
        if let Some(id) = attached_to.filter(|_| size_gb > v.size_gb) {
            let serial = v.serial.clone();
            let _ = self.with_vm(id, |vm| {
                if vm.running {
                    vm.console.push_str(&format!("sim: disk virtio-{serial} is now {size_gb} GB\n"));
                }
                Ok(())
            });
        }
        if size_gb < v.size_gb {
            return Err(DriverError::Invalid(format!("a volume can only grow ({} GB -> {size_gb} GB)", v.size_gb)));
        }
        v.size_gb = size_gb;
        self.volumes.put(volume_id, &v)
    }

    async fn volume_size_gb(&self, volume_id: Uuid) -> DriverResult<u64> {
        self.volumes.get(volume_id).map(|v| v.size_gb).ok_or(DriverError::NotFound(volume_id))
    }

    async fn attach_volume(&self, id: Uuid, volume: &VolumeSpec) -> DriverResult<()> {
        self.act("attach_volume").await?;
        let mut v = self.volumes.get(volume.id).ok_or(DriverError::NotFound(volume.id))?;
        match v.attached_to {
            Some(i) if i == id => return Ok(()),
            Some(i) => return Err(DriverError::Invalid(format!("volume {} is attached to instance {i}", volume.id))),
            None => {}
        }
        self.with_vm(id, |vm| {
            if vm.running {
                vm.console.push_str(&format!("sim: disk virtio-{} appeared\n", volume.serial));
            }
            Ok(())
        })?;
        v.attached_to = Some(id);
        self.volumes.put(volume.id, &v)
    }

    async fn detach_volume(&self, id: Uuid, volume_id: Uuid) -> DriverResult<()> {
        self.act("detach_volume").await?;
        let Some(mut v) = self.volumes.get(volume_id) else { return Ok(()) };
        if v.attached_to != Some(id) {
            return Ok(());
        }
        // A VM already destroyed has nothing to unplug.
        let _ = self.with_vm(id, |vm| {
            if vm.running {
                vm.console.push_str(&format!("sim: disk virtio-{} disappeared\n", v.serial));
            }
            Ok(())
        });
        v.attached_to = None;
        self.volumes.put(volume_id, &v)
    }

    async fn volumes(&self) -> DriverResult<Vec<Uuid>> {
        Ok(self.volumes.ids())
    }

    async fn snapshot_volume(&self, volume_id: Uuid, snapshot_id: Uuid, attached_to: Option<Uuid>) -> DriverResult<()> {
        self.act("snapshot_volume").await?;
        let mut v = self.volumes.get(volume_id).ok_or(DriverError::NotFound(volume_id))?;
        if v.attached_to != attached_to {
            return Err(DriverError::Invalid(format!("volume {volume_id} is not attached to {attached_to:?}")));
        }
        let size = v.size_gb;
        v.snapshots.entry(snapshot_id).or_insert(size);
        self.volumes.put(volume_id, &v)
    }

    async fn revert_volume(&self, volume_id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        self.act("revert_volume").await?;
        let mut v = self.volumes.get(volume_id).ok_or(DriverError::NotFound(volume_id))?;
        if let Some(i) = v.attached_to {
            return Err(DriverError::Invalid(format!("volume {volume_id} is attached to instance {i}")));
        }
        if !v.snapshots.contains_key(&snapshot_id) {
            return Err(DriverError::Invalid(format!("volume {volume_id} has no snapshot {snapshot_id}")));
        }
        v.reverted_to = Some(snapshot_id);
        self.volumes.put(volume_id, &v)
    }

    async fn delete_volume_snapshot(&self, volume_id: Uuid, snapshot_id: Uuid) -> DriverResult<()> {
        self.act("delete_volume_snapshot").await?;
        let Some(mut v) = self.volumes.get(volume_id) else { return Ok(()) };
        if v.snapshots.remove(&snapshot_id).is_some() {
            self.volumes.put(volume_id, &v)?;
        }
        Ok(())
    }

    async fn volume_snapshots(&self, volume_id: Uuid) -> DriverResult<Vec<Uuid>> {
        Ok(self.volumes.get(volume_id).map(|v| v.snapshots.keys().copied().collect()).unwrap_or_default())
    }

    // A simulated volume's "file" is its record as JSON: it travels like a real one, piece by piece.
    async fn read_volume(&self, volume_id: Uuid, offset: u64, len: u64) -> DriverResult<crate::VolumeChunk> {
        use base64::Engine as _;
        self.act("read_volume").await?;
        let v = self.volumes.get(volume_id).ok_or(DriverError::NotFound(volume_id))?;
        if let Some(i) = v.attached_to {
            return Err(DriverError::Invalid(format!("volume {volume_id} is attached to instance {i}")));
        }
        let bytes = serde_json::to_vec(&v).map_err(|e| DriverError::Failed(e.to_string()))?;
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(len as usize).min(bytes.len());
        Ok(crate::VolumeChunk {
            offset,
            data: base64::engine::general_purpose::STANDARD.encode(&bytes[start..end]),
            last: end == bytes.len(),
        })
    }

    async fn write_volume(&self, volume_id: Uuid, chunk: &crate::VolumeChunk) -> DriverResult<()> {
        use base64::Engine as _;
        self.act("write_volume").await?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(&chunk.data)
            .map_err(|e| DriverError::Invalid(format!("a volume piece is not base64: {e}")))?;
        let whole = {
            let mut incoming = self.incoming.lock().unwrap();
            let part = incoming.entry(volume_id).or_default();
            if chunk.offset == 0 {
                part.clear();
            }
            if chunk.offset as usize > part.len() {
                return Err(DriverError::Invalid(format!("a volume piece at {} comes out of order", chunk.offset)));
            }
            part.truncate(chunk.offset as usize);
            part.extend_from_slice(&data);
            if !chunk.last {
                return Ok(());
            }
            incoming.remove(&volume_id).unwrap_or_default()
        };
        let v: SimVolume = serde_json::from_slice(&whole)
            .map_err(|e| DriverError::Invalid(format!("volume {volume_id} arrived unreadable: {e}")))?;
        self.volumes.put(volume_id, &v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: Uuid) -> InstanceSpec {
        InstanceSpec {
            id,
            name: "a".into(),
            hostname: "a".into(),
            vcpus: 1,
            memory_mib: 512,
            disk_size_gb: 10,
            template: busybox_template(),
            user_data: None,
            ssh_keys: vec![],
            password: None,
            mac_address: "52:54:00:00:00:01".into(),
            ip_address: None,
            gateway: None,
            tpm: false,
            secure_boot: false,
            volumes: Vec::new(),
            boot_volume: None,
            rescue: false,
        }
    }

    #[tokio::test]
    async fn vms_survive_a_new_driver_when_a_state_dir_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig { state_dir: Some(dir.path().join("sim")), ..Default::default() };
        let id = Uuid::new_v4();
        let d = SimDriver::new(config.clone());
        d.create(&spec(id)).await.unwrap();
        d.start(&spec(id)).await.unwrap();
        drop(d);
        let d = SimDriver::new(config);
        assert_eq!(d.inspect(id).await.unwrap(), ActualState::Running);
        assert_eq!(d.instances().await.unwrap(), vec![id]);
    }

    #[tokio::test]
    async fn two_drivers_on_one_state_dir_see_each_others_changes() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig { state_dir: Some(dir.path().to_path_buf()), ..Default::default() };
        let (a, b) = (SimDriver::new(config.clone()), SimDriver::new(config));
        let id = Uuid::new_v4();
        a.create(&spec(id)).await.unwrap();
        b.start(&spec(id)).await.unwrap();
        assert_eq!(a.inspect(id).await.unwrap(), ActualState::Running);
        a.resize_disk(id, 20).await.unwrap();
        assert_eq!(b.disk_size_gb(id).await.unwrap(), 20);
        b.destroy(id).await.unwrap();
        assert_eq!(a.inspect(id).await.unwrap(), ActualState::Missing);
        assert!(a.instances().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn injected_failures_fail_exactly_that_many_calls() {
        let d = SimDriver::new(SimConfig::default());
        let id = Uuid::new_v4();
        d.create(&spec(id)).await.unwrap();
        d.inject_failure("start", 1);
        assert!(d.start(&spec(id)).await.is_err());
        assert!(d.start(&spec(id)).await.is_ok());
    }

    #[tokio::test]
    async fn a_suspended_vm_is_paused_until_resumed() {
        let d = SimDriver::new(SimConfig::default());
        let id = Uuid::new_v4();
        d.create(&spec(id)).await.unwrap();
        assert!(d.suspend(id).await.is_err(), "a stopped VM cannot be suspended");
        d.start(&spec(id)).await.unwrap();
        d.suspend(id).await.unwrap();
        d.suspend(id).await.unwrap();
        assert_eq!(d.inspect(id).await.unwrap(), ActualState::Paused);
        d.resume(id).await.unwrap();
        assert_eq!(d.inspect(id).await.unwrap(), ActualState::Running);
    }

    #[tokio::test]
    async fn disks_only_grow() {
        let d = SimDriver::new(SimConfig::default());
        let id = Uuid::new_v4();
        d.create(&spec(id)).await.unwrap();
        assert!(d.resize_disk(id, 5).await.is_err());
        assert!(d.resize_disk(id, 20).await.is_ok());
    }
}
