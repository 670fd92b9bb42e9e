//! The `Driver` trait as data: a call to one of its methods and the reply, both serializable, so that a
//! control plane can ask a host's agent to run a driver step and read its answer, whichever server and
//! process each side runs in. [`dispatch`] runs a call on a real driver; the engine's remote driver builds
//! the calls. Adding a method to `Driver` means adding its variant here (and its arm in [`dispatch`]).

use std::time::Duration;

use nimbus_core::catalog::Template;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Driver, DriverError, HostInfo, InstanceSpec, TemplateImport, TemplateRegistration, VolumeChunk, VolumeSpec,
};

/// One call of a `Driver` method on an instance of the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum DriverCall {
    Create {
        spec: InstanceSpec,
    },
    Start {
        spec: InstanceSpec,
    },
    Stop {
        id: Uuid,
        grace_ms: u64,
    },
    Reboot {
        spec: InstanceSpec,
    },
    Reinstall {
        spec: InstanceSpec,
    },
    ResizeDisk {
        id: Uuid,
        size_gb: u64,
    },
    DiskSizeGb {
        id: Uuid,
    },
    Snapshots {
        id: Uuid,
    },
    Snapshot {
        id: Uuid,
        snapshot_id: Uuid,
    },
    Revert {
        id: Uuid,
        snapshot_id: Uuid,
    },
    DeleteSnapshot {
        id: Uuid,
        snapshot_id: Uuid,
    },
    Destroy {
        id: Uuid,
    },
    Inspect {
        id: Uuid,
    },
    Instances,
    Console {
        id: Uuid,
    },
    Metrics {
        id: Uuid,
    },
    Suspend {
        id: Uuid,
    },
    Resume {
        id: Uuid,
    },
    EnableTpm {
        id: Uuid,
    },
    HostInfo,
    Templates,
    GuestInterfaces {
        id: Uuid,
    },
    ImportTemplate {
        request: TemplateImport,
    },
    PromoteSnapshot {
        id: Uuid,
        snapshot_id: Uuid,
        template_id: Uuid,
        name: String,
    },
    RemoveTemplate {
        template_id: Uuid,
    },
    CreateVolume {
        volume: VolumeSpec,
    },
    DeleteVolume {
        volume_id: Uuid,
    },
    ResizeVolume {
        volume_id: Uuid,
        size_gb: u64,
        #[serde(default)]
        attached_to: Option<Uuid>,
    },
    VolumeSizeGb {
        volume_id: Uuid,
    },
    AttachVolume {
        id: Uuid,
        volume: VolumeSpec,
    },
    DetachVolume {
        id: Uuid,
        volume_id: Uuid,
    },
    Volumes,
    CreateVolumeFromSnapshot {
        volume: VolumeSpec,
        source: Uuid,
        snapshot_id: Uuid,
    },
    CreateVolumeFromTemplate {
        volume: VolumeSpec,
        template: Template,
    },
    SnapshotVolume {
        volume_id: Uuid,
        snapshot_id: Uuid,
        #[serde(default)]
        attached_to: Option<Uuid>,
    },
    RevertVolume {
        volume_id: Uuid,
        snapshot_id: Uuid,
    },
    DeleteVolumeSnapshot {
        volume_id: Uuid,
        snapshot_id: Uuid,
    },
    VolumeSnapshots {
        volume_id: Uuid,
    },
    ReadVolume {
        volume_id: Uuid,
        offset: u64,
        len: u64,
    },
    WriteVolume {
        volume_id: Uuid,
        chunk: VolumeChunk,
    },
}

impl DriverCall {
    /// The instance the call is about, if it is about one.
    pub fn instance(&self) -> Option<Uuid> {
        match self {
            DriverCall::Create { spec } | DriverCall::Start { spec } | DriverCall::Reboot { spec } => Some(spec.id),
            DriverCall::Reinstall { spec } => Some(spec.id),
            DriverCall::Stop { id, .. }
            | DriverCall::ResizeDisk { id, .. }
            | DriverCall::DiskSizeGb { id }
            | DriverCall::Snapshots { id }
            | DriverCall::Snapshot { id, .. }
            | DriverCall::Revert { id, .. }
            | DriverCall::DeleteSnapshot { id, .. }
            | DriverCall::Destroy { id }
            | DriverCall::Inspect { id }
            | DriverCall::Console { id }
            | DriverCall::Metrics { id }
            | DriverCall::Suspend { id }
            | DriverCall::Resume { id }
            | DriverCall::EnableTpm { id }
            | DriverCall::GuestInterfaces { id }
            | DriverCall::PromoteSnapshot { id, .. }
            | DriverCall::AttachVolume { id, .. }
            | DriverCall::DetachVolume { id, .. } => Some(*id),
            DriverCall::Instances
            | DriverCall::HostInfo
            | DriverCall::Templates
            | DriverCall::ImportTemplate { .. }
            | DriverCall::RemoveTemplate { .. }
            | DriverCall::CreateVolume { .. }
            | DriverCall::CreateVolumeFromSnapshot { .. }
            | DriverCall::CreateVolumeFromTemplate { .. }
            | DriverCall::DeleteVolume { .. }
            | DriverCall::ResizeVolume { .. }
            | DriverCall::VolumeSizeGb { .. }
            | DriverCall::Volumes
            | DriverCall::SnapshotVolume { .. }
            | DriverCall::RevertVolume { .. }
            | DriverCall::DeleteVolumeSnapshot { .. }
            | DriverCall::VolumeSnapshots { .. }
            | DriverCall::ReadVolume { .. }
            | DriverCall::WriteVolume { .. } => None,
        }
    }
}

/// What a call answered: its value as JSON (the method's result type), or the driver's error.
pub type DriverReply = Result<serde_json::Value, DriverError>;

fn reply<T: Serialize>(r: Result<T, DriverError>) -> DriverReply {
    r.map(|v| serde_json::to_value(v).expect("driver results serialize"))
}

/// Runs `call` on `driver`.
pub async fn dispatch(driver: &dyn Driver, call: DriverCall) -> DriverReply {
    match call {
        DriverCall::Create { spec } => reply(driver.create(&spec).await),
        DriverCall::Start { spec } => reply(driver.start(&spec).await),
        DriverCall::Stop { id, grace_ms } => reply(driver.stop(id, Duration::from_millis(grace_ms)).await),
        DriverCall::Reboot { spec } => reply(driver.reboot(&spec).await),
        DriverCall::Reinstall { spec } => reply(driver.reinstall(&spec).await),
        DriverCall::ResizeDisk { id, size_gb } => reply(driver.resize_disk(id, size_gb).await),
        DriverCall::DiskSizeGb { id } => reply(driver.disk_size_gb(id).await),
        DriverCall::Snapshots { id } => reply(driver.snapshots(id).await),
        DriverCall::Snapshot { id, snapshot_id } => reply(driver.snapshot(id, snapshot_id).await),
        DriverCall::Revert { id, snapshot_id } => reply(driver.revert(id, snapshot_id).await),
        DriverCall::DeleteSnapshot { id, snapshot_id } => reply(driver.delete_snapshot(id, snapshot_id).await),
        DriverCall::Destroy { id } => reply(driver.destroy(id).await),
        DriverCall::Inspect { id } => reply(driver.inspect(id).await),
        DriverCall::Instances => reply(driver.instances().await),
        DriverCall::Console { id } => reply(driver.console(id).await),
        DriverCall::Metrics { id } => reply(driver.metrics(id).await),
        DriverCall::Suspend { id } => reply(driver.suspend(id).await),
        DriverCall::Resume { id } => reply(driver.resume(id).await),
        DriverCall::EnableTpm { id } => reply(driver.enable_tpm(id).await),
        DriverCall::HostInfo => reply(Ok::<HostInfo, DriverError>(driver.host_info().await)),
        DriverCall::Templates => reply::<Vec<TemplateRegistration>>(driver.templates().await),
        DriverCall::GuestInterfaces { id } => reply(driver.guest_interfaces(id).await),
        DriverCall::ImportTemplate { request } => reply(driver.import_template(&request).await),
        DriverCall::PromoteSnapshot { id, snapshot_id, template_id, name } => {
            reply(driver.promote_snapshot(id, snapshot_id, template_id, &name).await)
        }
        DriverCall::RemoveTemplate { template_id } => reply(driver.remove_template(template_id).await),
        DriverCall::CreateVolume { volume } => reply(driver.create_volume(&volume).await),
        DriverCall::CreateVolumeFromSnapshot { volume, source, snapshot_id } => {
            reply(driver.create_volume_from_snapshot(&volume, source, snapshot_id).await)
        }
        DriverCall::CreateVolumeFromTemplate { volume, template } => {
            reply(driver.create_volume_from_template(&volume, &template).await)
        }
        DriverCall::DeleteVolume { volume_id } => reply(driver.delete_volume(volume_id).await),
        DriverCall::ResizeVolume { volume_id, size_gb, attached_to } => {
            reply(driver.resize_volume(volume_id, size_gb, attached_to).await)
        }
        DriverCall::VolumeSizeGb { volume_id } => reply(driver.volume_size_gb(volume_id).await),
        DriverCall::AttachVolume { id, volume } => reply(driver.attach_volume(id, &volume).await),
        DriverCall::DetachVolume { id, volume_id } => reply(driver.detach_volume(id, volume_id).await),
        DriverCall::Volumes => reply(driver.volumes().await),
        DriverCall::SnapshotVolume { volume_id, snapshot_id, attached_to } => {
            reply(driver.snapshot_volume(volume_id, snapshot_id, attached_to).await)
        }
        DriverCall::RevertVolume { volume_id, snapshot_id } => {
            reply(driver.revert_volume(volume_id, snapshot_id).await)
        }
        DriverCall::DeleteVolumeSnapshot { volume_id, snapshot_id } => {
            reply(driver.delete_volume_snapshot(volume_id, snapshot_id).await)
        }
        DriverCall::VolumeSnapshots { volume_id } => reply(driver.volume_snapshots(volume_id).await),
        DriverCall::ReadVolume { volume_id, offset, len } => reply(driver.read_volume(volume_id, offset, len).await),
        DriverCall::WriteVolume { volume_id, chunk } => reply(driver.write_volume(volume_id, &chunk).await),
    }
}

/// Reads a reply's value as the method's result type.
pub fn decode<T: for<'de> Deserialize<'de>>(reply: DriverReply) -> Result<T, DriverError> {
    let value = reply?;
    serde_json::from_value(value).map_err(|e| DriverError::Failed(format!("a host answered something unreadable: {e}")))
}
