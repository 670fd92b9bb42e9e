//! The one place that says which action is allowed in which instance state, which state the instance shows
//! while the action runs, and where it lands afterwards.

use serde::{Deserialize, Serialize};

use crate::instance::InstanceState::{self, *};
use crate::{DomainError, Result};

/// Everything that can be done to an instance. The background ones are also the kinds of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Start,
    Stop,
    Reboot,
    Reset,
    Scale,
    /// A scale that a running instance may take too: stopped gracefully, given its new size and started
    /// again, so it ends in the power state it began in. Opt-in (`ScaleTo { restart_if_running }`): the
    /// plain `Scale` still needs the instance stopped.
    ScaleWithRestart,
    ResizeDisk,
    CreateSnapshot,
    RevertSnapshot,
    DeleteSnapshot,
    ResetPassword,
    EnableTpm,
    /// Pauses the running VM in memory (QMP `stop`); `Resume` lets it run again where it was.
    Suspend,
    Resume,
    Delete,
    /// A stop that Nimbus itself starts when an instance's `expected_shutdown_at` has come.
    ScheduledStop,
    /// Joins or leaves anti-affinity groups: the record changes at once, and placement honours it from the
    /// next start; the host has nothing to do.
    ChangeAntiAffinityGroups,
    /// Moves an instance off a host that stopped answering, by an operator's choice: recreated on another
    /// host from its template (its disk's contents are lost), or left stopped.
    Evacuate,
    /// Makes a template of one of the instance's snapshots (a standalone copy of its disk).
    PromoteSnapshot,
    /// Takes a disk image in as a template. Not done to an instance: its operation targets the template.
    ImportTemplate,
    /// The volume kinds: their operations target a volume (`crate::volume`), and attach and detach also
    /// hold the instance's lock while they run, without changing the state it shows.
    CreateVolume,
    AttachVolume,
    DetachVolume,
    ResizeVolume,
    DeleteVolume,
    /// A volume's snapshots: made (detached or attached), the volume reverted to one (detached only), and
    /// removed. Their operations target the volume, whose lock they hold.
    CreateVolumeSnapshot,
    RevertVolume,
    DeleteVolumeSnapshot,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 26] = [
        Action::Create,
        Action::Start,
        Action::Stop,
        Action::Reboot,
        Action::Reset,
        Action::Scale,
        Action::ScaleWithRestart,
        Action::ResizeDisk,
        Action::CreateSnapshot,
        Action::RevertSnapshot,
        Action::DeleteSnapshot,
        Action::ResetPassword,
        Action::EnableTpm,
        Action::Suspend,
        Action::Resume,
        Action::Delete,
        Action::ScheduledStop,
        Action::ChangeAntiAffinityGroups,
        Action::Evacuate,
        Action::PromoteSnapshot,
        Action::ImportTemplate,
        Action::CreateVolume,
        Action::AttachVolume,
        Action::DetachVolume,
        Action::ResizeVolume,
        Action::DeleteVolume,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Reboot => "reboot",
            Action::Reset => "reset",
            Action::Scale => "scale",
            Action::ScaleWithRestart => "scale_with_restart",
            Action::ResizeDisk => "resize_disk",
            Action::CreateSnapshot => "create_snapshot",
            Action::RevertSnapshot => "revert_snapshot",
            Action::DeleteSnapshot => "delete_snapshot",
            Action::ResetPassword => "reset_password",
            Action::EnableTpm => "enable_tpm",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Delete => "delete",
            Action::ScheduledStop => "scheduled_stop",
            Action::ChangeAntiAffinityGroups => "change_anti_affinity_groups",
            Action::Evacuate => "evacuate",
            Action::PromoteSnapshot => "promote_snapshot",
            Action::ImportTemplate => "import_template",
            Action::CreateVolume => "create_volume",
            Action::AttachVolume => "attach_volume",
            Action::DetachVolume => "detach_volume",
            Action::ResizeVolume => "resize_volume",
            Action::DeleteVolume => "delete_volume",
            Action::CreateVolumeSnapshot => "create_volume_snapshot",
            Action::RevertVolume => "revert_volume",
            Action::DeleteVolumeSnapshot => "delete_volume_snapshot",
        }
    }
}

impl Action {
    /// Whether operations of this kind target a volume.
    pub fn is_volume(self) -> bool {
        matches!(
            self,
            Action::CreateVolume
                | Action::AttachVolume
                | Action::DetachVolume
                | Action::ResizeVolume
                | Action::DeleteVolume
                | Action::CreateVolumeSnapshot
                | Action::RevertVolume
                | Action::DeleteVolumeSnapshot
        )
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an instance lands when an action succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    In(InstanceState),
    /// Back in the state it had before the action (snapshots, reset, passwords).
    Previous,
    /// The record is removed.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Shown while the operation runs.
    pub during: InstanceState,
    pub on_success: Landing,
}

/// The states an action may start from, with the sentence a refused user reads.
fn rule(action: Action) -> (&'static [InstanceState], &'static str, InstanceState, Landing) {
    match action {
        Action::Create => (&[], "", Creating, Landing::In(Running)),
        Action::Start => (&[Stopped, Error], "start needs the instance stopped", Starting, Landing::In(Running)),
        Action::Stop | Action::ScheduledStop => {
            (&[Running, Error], "stop needs the instance running", Stopping, Landing::In(Stopped))
        }
        Action::Reboot => (&[Running], "reboot needs the instance running", Rebooting, Landing::In(Running)),
        Action::Reset => {
            (&[Running, Stopped, Error], "reset needs the instance running or stopped", Creating, Landing::Previous)
        }
        Action::Scale => (&[Stopped], "scale needs the instance stopped", Resizing, Landing::In(Stopped)),
        Action::ScaleWithRestart => {
            (&[Running, Stopped], "scale needs the instance running or stopped", Resizing, Landing::Previous)
        }
        Action::ResizeDisk => (&[Stopped], "resize-disk needs the instance stopped", Resizing, Landing::In(Stopped)),
        Action::CreateSnapshot => (
            &[Running, Stopped],
            "create-snapshot needs the instance running or stopped",
            Snapshotting,
            Landing::Previous,
        ),
        Action::RevertSnapshot => {
            (&[Stopped], "revert-snapshot needs the instance stopped", Reverting, Landing::In(Stopped))
        }
        Action::DeleteSnapshot => (
            &[Running, Stopped],
            "delete-snapshot needs the instance running or stopped",
            Running, // replaced by the current state below
            Landing::Previous,
        ),
        Action::ResetPassword => (
            &[Running, Stopped],
            "reset-password needs the instance running or stopped",
            Running, // replaced by the current state below: a password reset shows no transitional state
            Landing::Previous,
        ),
        Action::EnableTpm => (&[Stopped], "enable-tpm needs the instance stopped", Stopped, Landing::In(Stopped)),
        Action::PromoteSnapshot => (
            &[Running, Stopped],
            "promote-snapshot needs the instance running or stopped",
            Running, // replaced by the current state below
            Landing::Previous,
        ),
        // No instance: `transition` refuses it for every state.
        Action::ImportTemplate => (&[], "templates are imported, not instances", Creating, Landing::Previous),
        // Volumes have their own rules (`crate::volume`).
        Action::CreateVolume
        | Action::AttachVolume
        | Action::DetachVolume
        | Action::ResizeVolume
        | Action::DeleteVolume
        | Action::CreateVolumeSnapshot
        | Action::RevertVolume
        | Action::DeleteVolumeSnapshot => (&[], "volume actions are done to volumes", Creating, Landing::Previous),
        Action::ChangeAntiAffinityGroups => (
            &[Running, Stopped, Suspended, Error],
            "anti-affinity groups change while the instance is at rest",
            Running, // replaced by the current state below
            Landing::Previous,
        ),
        // Where it lands (running, stopped) depends on what it was before its host went away: the saga says.
        Action::Evacuate => {
            (&[Unknown], "evacuate moves instances whose host stopped answering", Creating, Landing::In(Stopped))
        }
        // Neither shows a state of its own while it runs: the instance is running until it is suspended, and
        // suspended until it runs again (the operation holding the lock says which change is under way).
        Action::Suspend => (&[Running], "suspend needs the instance running", Running, Landing::In(Suspended)),
        Action::Resume => (&[Suspended], "resume needs the instance suspended", Suspended, Landing::In(Running)),
        Action::Delete => (
            &[
                Creating,
                Starting,
                Running,
                Stopping,
                Stopped,
                Rebooting,
                Resizing,
                Snapshotting,
                Reverting,
                Migrating,
                Error,
                Suspended,
                Unknown,
            ],
            "the instance is already being destroyed",
            Destroying,
            Landing::Gone,
        ),
    }
}

/// Decides whether `action` may begin on an instance in `state`.
pub fn transition(action: Action, state: InstanceState) -> Result<Transition> {
    let (from, hint, during, on_success) = rule(action);
    if action != Action::Create && !from.contains(&state) || action == Action::ImportTemplate || action.is_volume() {
        return Err(DomainError::InvalidState {
            action: action.as_str().replace('_', "-"),
            state,
            hint: hint.to_string(),
        });
    }
    // These change nothing the instance shows: it keeps its state while they run.
    let keeps_state = matches!(
        action,
        Action::ResetPassword | Action::DeleteSnapshot | Action::PromoteSnapshot | Action::ChangeAntiAffinityGroups
    );
    let during = if keeps_state { state } else { during };
    Ok(Transition { during, on_success })
}

/// The state an instance lands in after `action` succeeded, given the state it had before.
pub fn landing(action: Action, before: InstanceState) -> Option<InstanceState> {
    match rule(action).3 {
        Landing::In(s) => Some(s),
        Landing::Previous => Some(before),
        Landing::Gone => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_refused_while_running_with_a_message_naming_the_state() {
        let err = transition(Action::Start, Running).unwrap_err();
        assert_eq!(err.to_string(), "cannot start instance in state running: start needs the instance stopped");
    }

    #[test]
    fn disk_and_type_changes_need_a_stopped_instance() {
        for a in [Action::Scale, Action::ResizeDisk, Action::RevertSnapshot, Action::EnableTpm] {
            assert!(transition(a, Running).is_err(), "{a} allowed while running");
            assert!(transition(a, Stopped).is_ok(), "{a} refused while stopped");
        }
    }

    #[test]
    fn a_scale_with_restart_takes_a_running_or_stopped_instance_back_to_where_it_was() {
        for s in [Running, Stopped] {
            assert_eq!(transition(Action::ScaleWithRestart, s).unwrap().during, Resizing);
            assert_eq!(landing(Action::ScaleWithRestart, s), Some(s));
        }
        for s in [Suspended, Error, Starting, Stopping, Resizing, Destroying] {
            assert!(transition(Action::ScaleWithRestart, s).is_err(), "scale-with-restart allowed in {s}");
        }
        assert!(transition(Action::Scale, Running).is_err(), "the plain scale still needs a stopped instance");
    }

    #[test]
    fn snapshots_return_to_the_state_they_started_from() {
        assert_eq!(landing(Action::CreateSnapshot, Running), Some(Running));
        assert_eq!(landing(Action::CreateSnapshot, Stopped), Some(Stopped));
        assert_eq!(landing(Action::Delete, Running), None);
    }

    #[test]
    fn anti_affinity_groups_change_at_rest_and_show_no_state_of_their_own() {
        for s in [Running, Stopped, Suspended] {
            assert_eq!(transition(Action::ChangeAntiAffinityGroups, s).unwrap().during, s);
            assert_eq!(landing(Action::ChangeAntiAffinityGroups, s), Some(s));
        }
        assert!(transition(Action::ChangeAntiAffinityGroups, Destroying).is_err());
        assert!(transition(Action::ChangeAntiAffinityGroups, Creating).is_err());
    }

    #[test]
    fn only_a_running_instance_suspends_and_only_a_suspended_one_resumes() {
        assert_eq!(transition(Action::Suspend, Running).unwrap().during, Running);
        assert_eq!(landing(Action::Suspend, Running), Some(Suspended));
        assert_eq!(landing(Action::Resume, Suspended), Some(Running));
        for a in [Action::Start, Action::Stop, Action::Reboot, Action::Scale, Action::Suspend] {
            assert!(transition(a, Suspended).is_err(), "{a} allowed while suspended");
        }
        assert!(transition(Action::Resume, Running).is_err());
        assert!(transition(Action::Delete, Suspended).is_ok());
    }

    #[test]
    fn nothing_but_delete_starts_from_a_transitional_state() {
        for s in InstanceState::ALL.into_iter().filter(|s| s.is_transitional()) {
            for a in [
                Action::Start,
                Action::Stop,
                Action::Reboot,
                Action::Scale,
                Action::ScaleWithRestart,
                Action::RevertSnapshot,
            ] {
                assert!(transition(a, s).is_err(), "{a} allowed in {s}");
            }
        }
        assert!(transition(Action::Delete, Destroying).is_err());
    }
}
