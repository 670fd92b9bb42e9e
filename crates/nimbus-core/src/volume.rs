//! Volumes: block devices of their own, with a life apart from any instance's.
//!
//! A volume belongs to a project and a zone, lives as one disk file on one host (its `host`, set when it is
//! created: the host its zone's instances run on), and may be attached to one instance on that host at a
//! time, which then sees it as a virtio disk whose serial is the volume's `serial`. This file is the one
//! place that says which volume action is allowed in which state, what the volume shows while it runs and
//! where it lands, like `state_machine.rs` for instances.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::instance::InstanceState;
use crate::labels::Labels;
use crate::{DomainError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    Creating,
    Available,
    Attaching,
    InUse,
    Detaching,
    Deleting,
    Error,
}

impl VolumeState {
    pub const ALL: [VolumeState; 7] =
        [Self::Creating, Self::Available, Self::Attaching, Self::InUse, Self::Detaching, Self::Deleting, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Available => "available",
            Self::Attaching => "attaching",
            Self::InUse => "in-use",
            Self::Detaching => "detaching",
            Self::Deleting => "deleting",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub zone: String,
    pub size_gb: u64,
    pub state: VolumeState,
    /// The instance it is attached to (also while attaching and detaching).
    pub instance_id: Option<Uuid>,
    /// The host whose disk holds it; an instance it is attached to runs there.
    pub host: Option<String>,
    /// What the guest reads as the disk's serial (`/dev/disk/by-id/virtio-<serial>`): virtio-blk keeps 20
    /// bytes, so it is the random tail of the id.
    pub serial: String,
    pub labels: Labels,
    /// The operation that currently holds this volume's lock.
    pub lock_operation_id: Option<Uuid>,
    /// The template whose disk it was made from (a boot volume): an instance can boot from it, with that
    /// template's boot files (`None`: a data volume, nothing to boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<Uuid>,
    /// It is the root disk of the instance it is attached to, which boots from it: it leaves that instance
    /// only when the instance is deleted (and goes with it unless kept).
    #[serde(default)]
    pub boot: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Volume {
    /// The serial a volume with this id shows its guest: the last 20 hex digits of the id (a UUIDv7's first
    /// ones are its time, shared by volumes made in the same millisecond).
    pub fn serial_for(id: Uuid) -> String {
        let hex = id.simple().to_string();
        hex[hex.len() - 20..].to_string()
    }
}

/// The smallest and largest volume, in GB.
pub const MIN_SIZE_GB: u64 = 1;
pub const MAX_SIZE_GB: u64 = 16 * 1024;

pub fn validate_size(field: &str, size_gb: u64) -> Result<()> {
    if !(MIN_SIZE_GB..=MAX_SIZE_GB).contains(&size_gb) {
        return Err(DomainError::invalid(field, format!("must be between {MIN_SIZE_GB} and {MAX_SIZE_GB} GB")));
    }
    Ok(())
}

/// What can be done to a volume once it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeAction {
    Attach,
    Detach,
    Resize,
    Delete,
    /// Takes a snapshot of the volume's data (detached or attached).
    Snapshot,
    /// Puts one of its snapshots' data back (detached only: a guest must not see its disk change under it).
    Revert,
    /// Removes one of its snapshots.
    DeleteSnapshot,
}

impl VolumeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attach => "attach",
            Self::Detach => "detach",
            Self::Resize => "resize",
            Self::Delete => "delete",
            Self::Snapshot => "snapshot",
            Self::Revert => "revert",
            Self::DeleteSnapshot => "delete a snapshot of",
        }
    }
}

/// Decides whether `action` may begin on `volume`, and returns the state it shows while it runs. A volume
/// another operation holds is busy whatever its state.
pub fn volume_transition(action: VolumeAction, volume: &Volume) -> Result<VolumeState> {
    use VolumeState::*;
    if let Some(op) = volume.lock_operation_id {
        return Err(DomainError::Conflict(format!("volume {} is busy with operation {op}", volume.id)));
    }
    let (from, during, hint): (&[VolumeState], VolumeState, &str) = match action {
        VolumeAction::Attach => (&[Available], Attaching, "attach needs the volume available (attached to nothing)"),
        // An attach or detach that failed leaves the volume in `error`, still naming its instance: detaching
        // again is how it is put right.
        VolumeAction::Detach => (&[InUse, Error], Detaching, "detach needs the volume attached"),
        // An attached volume grows under its running guest too (the guest sees the new size).
        VolumeAction::Resize => (&[Available, InUse], volume.state, "resize needs the volume available or attached"),
        VolumeAction::Delete => (&[Available, Error], Deleting, "delete needs the volume detached; detach it first"),
        VolumeAction::Snapshot => {
            (&[Available, InUse], volume.state, "a snapshot needs the volume available or attached")
        }
        VolumeAction::Revert => (&[Available], Available, "revert needs the volume available (detached)"),
        VolumeAction::DeleteSnapshot => (&[Available, InUse, Error], volume.state, "wait for the volume to settle"),
    };
    if action == VolumeAction::Detach && volume.instance_id.is_none() {
        return Err(DomainError::Conflict(format!("volume {} is not attached to any instance", volume.id)));
    }
    if volume.boot && matches!(action, VolumeAction::Detach | VolumeAction::Resize | VolumeAction::Revert) {
        // Its guest runs from it: the instance's own actions (resize-disk, snapshots) change it.
        return Err(DomainError::Conflict(format!(
            "cannot {} volume {}: it is the boot disk of instance {}; it is freed when that instance is deleted",
            action.as_str(),
            volume.id,
            volume.instance_id.unwrap_or_default()
        )));
    }
    if matches!(action, VolumeAction::Delete | VolumeAction::Revert) && volume.instance_id.is_some() {
        return Err(DomainError::Conflict(format!(
            "cannot {} volume {} while it is attached to instance {}: detach it first",
            action.as_str(),
            volume.id,
            volume.instance_id.unwrap_or_default()
        )));
    }
    if !from.contains(&volume.state) {
        return Err(DomainError::Conflict(format!(
            "cannot {} volume {} in state {}: {hint}",
            action.as_str(),
            volume.id,
            volume.state
        )));
    }
    Ok(during)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeSnapshotState {
    Creating,
    Ready,
    Deleting,
    Error,
}

impl VolumeSnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Deleting => "deleting",
            Self::Error => "error",
        }
    }
}

impl std::fmt::Display for VolumeSnapshotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a volume's data, kept on the volume's host beside it. It belongs to its volume: it is made,
/// reverted to and removed by operations that hold the volume's lock, and a volume is deleted only once its
/// snapshots are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    pub id: Uuid,
    pub project_id: Uuid,
    pub volume_id: Uuid,
    pub name: String,
    /// The volume's size when the snapshot was taken.
    pub size_gb: u64,
    pub state: VolumeSnapshotState,
    pub labels: Labels,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Whether `snapshot` may be used by `action` (a revert or a removal): only a snapshot done being made,
/// and of this volume.
pub fn snapshot_usable(action: VolumeAction, volume: &Volume, snapshot: &VolumeSnapshot) -> Result<()> {
    if snapshot.volume_id != volume.id {
        return Err(DomainError::not_found("volume snapshot", snapshot.id));
    }
    let ok = match action {
        VolumeAction::Revert => snapshot.state == VolumeSnapshotState::Ready,
        _ => matches!(snapshot.state, VolumeSnapshotState::Ready | VolumeSnapshotState::Error),
    };
    if !ok {
        return Err(DomainError::Conflict(format!(
            "cannot {} snapshot {} in state {}",
            if action == VolumeAction::Revert { "revert to" } else { "delete" },
            snapshot.id,
            snapshot.state
        )));
    }
    Ok(())
}

/// Whether an instance in `state` may have a volume attached or detached: at rest or running (a running
/// one gets the disk hot-plugged), never while another change is under way.
pub fn instance_takes_volumes(state: InstanceState) -> Result<()> {
    match state {
        InstanceState::Running | InstanceState::Stopped => Ok(()),
        other => Err(DomainError::InvalidState {
            action: "attach-volume".into(),
            state: other,
            hint: "volumes are attached to and detached from running or stopped instances".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(state: VolumeState, instance: Option<Uuid>) -> Volume {
        let id = crate::new_id();
        Volume {
            id,
            project_id: Uuid::nil(),
            name: "v".into(),
            description: String::new(),
            zone: "local".into(),
            size_gb: 1,
            state,
            instance_id: instance,
            host: None,
            serial: Volume::serial_for(id),
            labels: Labels::new(),
            lock_operation_id: None,
            template_id: None,
            boot: false,
            created_at: crate::now(),
            updated_at: crate::now(),
        }
    }

    #[test]
    fn a_boot_volume_stays_with_its_instance() {
        let v = Volume { boot: true, template_id: Some(Uuid::nil()), ..volume(VolumeState::InUse, Some(Uuid::nil())) };
        for action in [VolumeAction::Detach, VolumeAction::Resize] {
            let e = volume_transition(action, &v).unwrap_err().to_string();
            assert!(e.contains("boot disk of instance"), "{e}");
        }
        assert!(volume_transition(VolumeAction::Snapshot, &v).is_ok(), "a snapshot of a boot volume is fine");
    }

    #[test]
    fn attached_volumes_are_not_deleted_but_grow() {
        let v = volume(VolumeState::InUse, Some(Uuid::nil()));
        let e = volume_transition(VolumeAction::Delete, &v).unwrap_err().to_string();
        assert!(e.contains("detach it first"), "{e}");
        assert_eq!(volume_transition(VolumeAction::Resize, &v).unwrap(), VolumeState::InUse);
        let attaching = Volume { state: VolumeState::Attaching, ..v.clone() };
        assert!(volume_transition(VolumeAction::Resize, &attaching).is_err());
        assert_eq!(volume_transition(VolumeAction::Detach, &v).unwrap(), VolumeState::Detaching);
        assert!(volume_transition(VolumeAction::Attach, &v).is_err());
    }

    #[test]
    fn available_volumes_attach_resize_and_delete() {
        let v = volume(VolumeState::Available, None);
        assert_eq!(volume_transition(VolumeAction::Attach, &v).unwrap(), VolumeState::Attaching);
        assert_eq!(volume_transition(VolumeAction::Resize, &v).unwrap(), VolumeState::Available);
        assert_eq!(volume_transition(VolumeAction::Delete, &v).unwrap(), VolumeState::Deleting);
        assert!(volume_transition(VolumeAction::Detach, &v).is_err());
        let busy = Volume { lock_operation_id: Some(Uuid::nil()), ..v };
        assert!(volume_transition(VolumeAction::Delete, &busy).unwrap_err().to_string().contains("busy"));
    }

    #[test]
    fn snapshots_are_taken_attached_but_reverted_detached() {
        let attached = volume(VolumeState::InUse, Some(Uuid::nil()));
        assert_eq!(volume_transition(VolumeAction::Snapshot, &attached).unwrap(), VolumeState::InUse);
        let e = volume_transition(VolumeAction::Revert, &attached).unwrap_err().to_string();
        assert!(e.contains("detach it first"), "{e}");
        let detached = volume(VolumeState::Available, None);
        assert_eq!(volume_transition(VolumeAction::Revert, &detached).unwrap(), VolumeState::Available);
        assert_eq!(volume_transition(VolumeAction::DeleteSnapshot, &attached).unwrap(), VolumeState::InUse);
    }

    #[test]
    fn serials_fit_virtio_and_differ() {
        let (a, b) = (crate::new_id(), crate::new_id());
        assert_eq!(Volume::serial_for(a).len(), 20);
        assert_ne!(Volume::serial_for(a), Volume::serial_for(b));
    }
}
