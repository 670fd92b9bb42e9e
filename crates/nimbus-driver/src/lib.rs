//! The `Driver` trait is the only boundary between Nimbus and the host. The engine calls it from its
//! operation workers; nothing else does.
//!
//! Invariants:
//! - Only this crate spawns processes or touches the host (disks, taps, namespaces).
//! - Every method is idempotent: calling it again after a crash, with the same arguments, converges to the
//!   same result (start on a running instance succeeds, destroy of a missing one succeeds). The engine
//!   resumes interrupted operations by calling the same steps again.

use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::catalog::Template;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod call;
pub mod overlay;
pub mod qemu;
pub mod sim;

pub use qemu::{QemuConfig, QemuDriver};
pub use sim::{SimConfig, SimDriver};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum DriverError {
    #[error("instance {0} is not known to the driver")]
    NotFound(Uuid),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Failed(String),
    /// The host that runs the instance does not answer (its agent missed its heartbeats).
    #[error("{0}")]
    Unreachable(String),
}

pub type DriverResult<T> = Result<T, DriverError>;

/// Everything the driver needs to build and boot an instance. Built by the engine from the instance record,
/// the same whichever API created the instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: Uuid,
    pub name: String,
    pub hostname: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_size_gb: u64,
    pub template: Template,
    /// Decoded user-data (the API carries it base64).
    pub user_data: Option<Vec<u8>>,
    pub ssh_keys: Vec<String>,
    pub password: Option<String>,
    pub mac_address: String,
    /// Address assigned by the store's IPAM, in CIDR notation (`10.x.y.z/24`), if any.
    pub ip_address: Option<String>,
    pub gateway: Option<String>,
    pub tpm: bool,
    /// Boot with UEFI secure boot (Microsoft's keys enrolled); needs a UEFI-capable template.
    #[serde(default)]
    pub secure_boot: bool,
    /// The volumes attached to it, which a boot gives the guest beside its own disk.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// The volume it boots from, whose disk is its root disk instead of a disk of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_volume: Option<BootVolumeSpec>,
    /// Boot the host's rescue system instead of the instance's own (a `start` asked for it, as Exoscale's
    /// `rescue-profile` and Nova's rescue do): the stock busybox kernel and initramfs, told the instance's
    /// address, keys and password, with the instance's disk and volumes attached but not booted nor mounted,
    /// and no user-data run. For this boot only: the next start boots the instance's own system.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rescue: bool,
}

/// A volume an instance boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootVolumeSpec {
    pub volume: VolumeSpec,
    /// Made by the create that runs: a missing disk is made from the template (of the volume's size). An
    /// existing volume's missing disk is an error instead, not an empty new one.
    pub new: bool,
}

/// A volume as its host needs it: a disk file of its own (`create_volume`), given to an instance's guest as
/// a virtio disk with this serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub id: Uuid,
    pub size_gb: u64,
    /// At most 20 bytes (virtio-blk's limit): the guest finds the disk at `/dev/disk/by-id/virtio-<serial>`.
    pub serial: String,
}

/// A piece of a volume's disk file, as it travels from one host to another when a detached volume moves
/// (`read_volume`, `write_volume`). Base64, since it travels as JSON through the hosts' agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeChunk {
    pub offset: u64,
    pub data: String,
    /// The file ends with this piece.
    pub last: bool,
}

impl VolumeChunk {
    /// How many bytes it carries (its base64 decoded).
    pub fn len(&self) -> u64 {
        let padding = self.data.bytes().rev().take_while(|b| *b == b'=').count();
        (self.data.len() / 4 * 3).saturating_sub(padding) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// How much of a volume's file one call carries: within the control plane's 1 MiB body limit once in
/// base64.
pub const VOLUME_CHUNK_BYTES: u64 = 512 * 1024;

/// Copies detached volume `id`'s file from host `from` to host `to`, piece by piece ([`VolumeChunk`]); it
/// exists on `to` once the last piece is written, and `from` keeps it. Returns the bytes copied.
pub async fn copy_volume(from: &dyn Driver, to: &dyn Driver, id: Uuid) -> DriverResult<u64> {
    let mut offset = 0;
    loop {
        let chunk = from.read_volume(id, offset, VOLUME_CHUNK_BYTES).await?;
        to.write_volume(id, &chunk).await?;
        let len = chunk.len();
        offset += len;
        if chunk.last {
            return Ok(offset);
        }
        if len == 0 {
            return Err(DriverError::Failed(format!("volume {id}: its host sent an empty piece at {offset}")));
        }
    }
}

/// A disk image to take in as a template (`import_template`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateImport {
    /// The id the template's record will have: the import's files are kept under it.
    pub template_id: Uuid,
    pub name: String,
    /// An http(s) URL, or an absolute path on the driver's host.
    pub source: String,
    /// `sha256:<hex>`: the file must have it.
    pub checksum: Option<String>,
    /// `Legacy` (BIOS) or `Uefi`.
    pub boot_mode: nimbus_core::catalog::BootMode,
    pub default_user: String,
}

/// One network interface of a running guest, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    pub name: String,
    pub mac_address: Option<String>,
    /// `address/prefix`.
    pub addresses: Vec<String>,
}

/// What the host says about an instance, whatever the records say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActualState {
    Running,
    Stopped,
    /// The VM exists in memory but its vCPUs are paused (suspended).
    Paused,
    /// The driver has nothing for this instance (never created, or destroyed).
    Missing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub name: String,
    pub driver: String,
    /// `kvm`, `tcg`, or `none` for the sim driver.
    pub accelerator: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// GPUs the host can give instances, by model codename.
    #[serde(default)]
    pub gpus: std::collections::BTreeMap<String, u64>,
}

/// Usage figures of one instance, as the host measures them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceMetrics {
    pub cpu_time_ns: u64,
    pub memory_rss_bytes: u64,
    pub disk_used_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// A template that the driver ships ready to use (e.g. `busybox`), registered in the catalog on start.
pub type TemplateRegistration = Template;

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Whether every call ends at once, without waiting on anything (the sim driver without delays). The
    /// engine then runs an operation's steps without recording its progress between them: a worker taking
    /// over repeats them for nothing, and nobody could have seen the state a step shows.
    fn instant(&self) -> bool {
        false
    }
    async fn host_info(&self) -> HostInfo;
    /// Templates this driver provides out of the box.
    async fn templates(&self) -> DriverResult<Vec<TemplateRegistration>>;

    /// Provisions the instance's disk and seed. Leaves it stopped.
    async fn create(&self, spec: &InstanceSpec) -> DriverResult<()>;
    /// Boots the instance and returns once the guest reports ready.
    async fn start(&self, spec: &InstanceSpec) -> DriverResult<()>;
    /// Graceful power-down, forced after `grace`.
    async fn stop(&self, id: Uuid, grace: Duration) -> DriverResult<()>;
    async fn reboot(&self, spec: &InstanceSpec) -> DriverResult<()>;
    /// Reinstalls the disk from the template (instance stopped by the engine first). The instance's
    /// snapshots stay: they are files of their own, and `revert` works after a reinstall.
    async fn reinstall(&self, spec: &InstanceSpec) -> DriverResult<()>;
    /// Grows the disk (instance stopped). Shrinking is refused.
    async fn resize_disk(&self, id: Uuid, size_gb: u64) -> DriverResult<()>;
    /// The disk's size as the host has it, to tell whether an interrupted resize happened.
    async fn disk_size_gb(&self, id: Uuid) -> DriverResult<u64>;
    /// The ids of the snapshots the host keeps of the instance's disk.
    async fn snapshots(&self, id: Uuid) -> DriverResult<Vec<Uuid>>;
    /// Returns the snapshot's size in bytes.
    async fn snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<u64>;
    async fn revert(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()>;
    async fn delete_snapshot(&self, id: Uuid, snapshot_id: Uuid) -> DriverResult<()>;
    /// Removes every process and file of the instance, its snapshots included.
    async fn destroy(&self, id: Uuid) -> DriverResult<()>;
    async fn inspect(&self, id: Uuid) -> DriverResult<ActualState>;
    /// Ids of every instance the host has something of (processes or files): used to find orphans.
    async fn instances(&self) -> DriverResult<Vec<Uuid>>;
    /// The serial console log so far (capped).
    async fn console(&self, id: Uuid) -> DriverResult<String>;
    async fn metrics(&self, _id: Uuid) -> DriverResult<InstanceMetrics> {
        Ok(InstanceMetrics::default())
    }
    /// Pauses a running VM in memory; it keeps its RAM and devices. Idempotent on a paused VM.
    async fn suspend(&self, _id: Uuid) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver cannot suspend instances", self.name())))
    }
    /// Lets a suspended VM run again where it stopped. Idempotent on a running VM.
    async fn resume(&self, _id: Uuid) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver cannot resume instances", self.name())))
    }
    /// Whether `enable_tpm` can work on this host; the API refuses it up front otherwise.
    fn supports_tpm(&self) -> bool {
        false
    }
    /// Attaches a virtual TPM (instance stopped).
    async fn enable_tpm(&self, _id: Uuid) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver has no TPM support", self.name())))
    }
    /// Joins the host's instance network to the zone's overlay across hosts (see `overlay`), or brings it up
    /// to date. Default: nothing to join (a simulated host has no network).
    async fn join_overlay(&self, _spec: &overlay::OverlaySpec) -> DriverResult<()> {
        Ok(())
    }
    /// Opens the interactive serial console. Default: not supported.
    async fn console_stream(&self, _id: Uuid) -> DriverResult<ConsoleStream> {
        Err(DriverError::Unsupported(format!("the {} driver has no interactive console", self.name())))
    }
    /// A TCP connection to `address:port` of a running instance, made from inside the instance network
    /// (for `ssh` and port forwarding). Like `console_stream`, it returns a byte stream.
    async fn connect(&self, _id: Uuid, _address: &str, _port: u16) -> DriverResult<ConsoleStream> {
        Err(DriverError::Unsupported(format!("the {} driver cannot reach into instance networks", self.name())))
    }
    /// The guest's own view of its network interfaces, from its guest agent.
    async fn guest_interfaces(&self, _id: Uuid) -> DriverResult<Vec<GuestInterface>> {
        Err(DriverError::Unsupported(format!("the {} driver has no guest agent channel", self.name())))
    }
    /// Takes a disk image in as a template: copied or downloaded, its checksum verified, refused unless it
    /// is a sound qcow2 or raw disk. Idempotent per `template_id`; a refused image leaves nothing behind.
    async fn import_template(&self, _req: &TemplateImport) -> DriverResult<Template> {
        Err(DriverError::Unsupported(format!("the {} driver cannot import images", self.name())))
    }
    /// Makes a standalone template (`template_id`, named `name`) of a snapshot, booting the way the
    /// snapshot's own template boots. Idempotent per `template_id`.
    async fn promote_snapshot(
        &self,
        _id: Uuid,
        _snapshot_id: Uuid,
        _template_id: Uuid,
        _name: &str,
    ) -> DriverResult<Template> {
        Err(DriverError::Unsupported(format!("the {} driver cannot promote snapshots", self.name())))
    }
    /// Removes the files of an imported or promoted template. Idempotent.
    async fn remove_template(&self, _template_id: Uuid) -> DriverResult<()> {
        Ok(())
    }
    /// A standalone qcow2 of a snapshot, for download: its path on the driver's host.
    async fn export_snapshot(&self, _id: Uuid, _snapshot_id: Uuid) -> DriverResult<String> {
        Err(DriverError::Unsupported(format!("the {} driver cannot export snapshots", self.name())))
    }

    // Volumes: disk files of their own on the host, attached to at most one of its instances at a time.
    /// Makes the volume's empty disk. Idempotent: an existing one is kept as it is.
    async fn create_volume(&self, _volume: &VolumeSpec) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver has no volumes", self.name())))
    }
    /// Makes the volume's disk from the template's, of the volume's size: a volume an instance can boot from.
    /// Idempotent: an existing disk is kept as it is.
    async fn create_volume_from_template(&self, _volume: &VolumeSpec, _template: &Template) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver has no volumes", self.name())))
    }
    /// Makes the volume's disk as a copy of snapshot `snapshot_id` of volume `source` (kept on this host),
    /// grown to the volume's size. Idempotent: an existing disk is kept as it is.
    async fn create_volume_from_snapshot(
        &self,
        _volume: &VolumeSpec,
        _source: Uuid,
        _snapshot_id: Uuid,
    ) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver has no volume snapshots", self.name())))
    }
    /// Removes the volume's disk (detached). Idempotent: a missing one is no error.
    async fn delete_volume(&self, _volume_id: Uuid) -> DriverResult<()> {
        Ok(())
    }
    /// Grows the volume's disk; `attached_to`: the instance it is plugged into, whose running guest then
    /// sees the new size. Shrinking is refused.
    async fn resize_volume(&self, _volume_id: Uuid, _size_gb: u64, _attached_to: Option<Uuid>) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver has no volumes", self.name())))
    }
    /// The volume's size as the host has it (`NotFound` when it has no such disk).
    async fn volume_size_gb(&self, volume_id: Uuid) -> DriverResult<u64> {
        Err(DriverError::NotFound(volume_id))
    }
    /// Gives the volume to the instance: hot-plugged into its guest at once when it runs (the guest sees the
    /// disk appear, no reboot), and on every later boot through its spec's `volumes`. Idempotent.
    async fn attach_volume(&self, _id: Uuid, _volume: &VolumeSpec) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver has no volumes", self.name())))
    }
    /// Takes the volume back from the instance: hot-unplugged from a running guest (the disk disappears),
    /// its data kept. Idempotent: a volume not attached is no error.
    async fn detach_volume(&self, _id: Uuid, _volume_id: Uuid) -> DriverResult<()> {
        Ok(())
    }
    /// Ids of every volume the host has a disk of: used to find leaks.
    async fn volumes(&self) -> DriverResult<Vec<Uuid>> {
        Ok(Vec::new())
    }
    /// Keeps a copy of the volume's data as snapshot `snapshot_id`, beside the volume; `attached_to`: the
    /// instance it is plugged into, whose running guest is paused for the copy (crash-consistent).
    /// Idempotent: an existing snapshot is kept.
    async fn snapshot_volume(
        &self,
        _volume_id: Uuid,
        _snapshot_id: Uuid,
        _attached_to: Option<Uuid>,
    ) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver has no volume snapshots", self.name())))
    }
    /// Puts a snapshot's data back into the (detached) volume; the volume keeps its size if it grew since.
    async fn revert_volume(&self, _volume_id: Uuid, _snapshot_id: Uuid) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver has no volume snapshots", self.name())))
    }
    /// Removes a volume's snapshot. Idempotent: a missing one is no error.
    async fn delete_volume_snapshot(&self, _volume_id: Uuid, _snapshot_id: Uuid) -> DriverResult<()> {
        Ok(())
    }
    /// Ids of the snapshots the host keeps of a volume: used to find leaks.
    /// Up to `len` bytes of a detached volume's disk file from `offset`, to be written on another host.
    async fn read_volume(&self, _volume_id: Uuid, _offset: u64, _len: u64) -> DriverResult<VolumeChunk> {
        Err(DriverError::Unsupported(format!("the {} driver cannot move volumes", self.name())))
    }

    /// Writes a piece of a volume's file read on another host: pieces come in order, the one at offset 0
    /// starts the file afresh (a move that was interrupted starts over), and the last one puts the whole
    /// file in place at once (until then the volume does not exist on this host). Idempotent.
    async fn write_volume(&self, _volume_id: Uuid, _chunk: &VolumeChunk) -> DriverResult<()> {
        Err(DriverError::Unsupported(format!("the {} driver cannot move volumes", self.name())))
    }

    async fn volume_snapshots(&self, _volume_id: Uuid) -> DriverResult<Vec<Uuid>> {
        Ok(Vec::new())
    }
}

/// A bidirectional byte stream to an instance's serial console.
pub type ConsoleStream = Box<dyn ConsoleIo>;
pub trait ConsoleIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> ConsoleIo for T {}
