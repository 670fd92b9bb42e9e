//! Process supervision: spawning QEMU (and swtpm) for an instance, waiting for its guest to be ready,
//! finding a running VM again from its files after a control-plane restart, and ending it.
//!
//! QEMU is spawned as a child in a session of its own and never daemonized; `qemu.json` records its pid and
//! /proc start time (a pid alone may be reused) and where its boot began in serial.log. A boot is done when
//! the template's ready marker starts a line of the serial log after that point, or, for templates without
//! one, once QEMU runs. A stop is an ACPI power-down; a guest that ignores it is asked again through the
//! guest agent, then QEMU is told to quit, then signalled.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use super::host::{self, NetNs};
use super::{agent, qmp, QemuDriver, BRIDGE, CONSOLE_CAP};
use crate::{DriverError, DriverResult};

/// The running QEMU process of an instance, as recorded in `qemu.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    pub pid: i32,
    pub start_time: u64,
    /// Length of serial.log when the current boot began: the ready marker counts only after it.
    pub boot_offset: u64,
    /// Empty: the boot is done once QEMU runs.
    pub ready_marker: String,
    pub tap: Option<String>,
    #[serde(default)]
    pub boot_timeout_secs: Option<u64>,
}

impl QemuDriver {
    /// The instance's QEMU process if it is alive. Falls back to QEMU's own pidfile when the driver died
    /// between spawning QEMU and recording it.
    pub(super) async fn runtime(&self, dir: &Path) -> Option<Runtime> {
        let recorded = match tokio::fs::read(dir.join("qemu.json")).await {
            Ok(b) => serde_json::from_slice::<Runtime>(&b).ok(),
            Err(_) => None,
        };
        let rt = match recorded {
            Some(rt) => rt,
            None => {
                let pid = tokio::fs::read_to_string(dir.join("qemu.pid")).await.ok()?.trim().parse::<i32>().ok()?;
                let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline")).await.ok()?;
                let needle = dir.join("qmp.sock").display().to_string();
                if !String::from_utf8_lossy(&cmdline).contains(&needle) {
                    return None;
                }
                let st = host::proc_stat(pid)?;
                Runtime {
                    pid,
                    start_time: st.start_time,
                    boot_offset: 0,
                    ready_marker: String::new(),
                    tap: None,
                    boot_timeout_secs: None,
                }
            }
        };
        host::alive(rt.pid, rt.start_time).then_some(rt)
    }

    pub(super) async fn save_runtime(dir: &Path, rt: &Runtime) -> DriverResult<()> {
        let tmp = dir.join("qemu.json.tmp");
        tokio::fs::write(&tmp, serde_json::to_vec(rt).map_err(failed)?).await.map_err(failed)?;
        tokio::fs::rename(&tmp, dir.join("qemu.json")).await.map_err(failed)
    }

    /// Starts swtpm for the instance's TPM state, if it has one; returns its control socket. swtpm ends
    /// when QEMU closes that socket (`--terminate`), so it never outlives its VM.
    pub(super) async fn start_swtpm(&self, dir: &Path) -> DriverResult<std::path::PathBuf> {
        let state = dir.join("tpm");
        // An instance created with a TPM never went through enable_tpm: its state begins here.
        tokio::fs::create_dir_all(&state).await.map_err(failed)?;
        let sock = dir.join("swtpm.sock");
        let _ = tokio::fs::remove_file(&sock).await;
        let tpmstate = format!("dir={}", state.display());
        let ctrl = format!("type=unixio,path={}", sock.display());
        let log = format!("file={}", dir.join("swtpm.log").display());
        let pid = format!("file={}", dir.join("swtpm.pid").display());
        host::run(
            "swtpm",
            &[
                "socket",
                "--tpm2",
                "--tpmstate",
                &tpmstate,
                "--ctrl",
                &ctrl,
                "--log",
                &log,
                "--pid",
                &pid,
                "--terminate",
                "--daemon",
            ],
        )
        .await
        .map_err(|e| DriverError::Failed(format!("starting swtpm: {e}")))?;
        for _ in 0..100 {
            if tokio::fs::try_exists(&sock).await.unwrap_or(false) {
                return Ok(sock);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(DriverError::Failed("swtpm did not create its socket".into()))
    }

    /// Spawns QEMU with `args`, in the instance network's namespace when there is one.
    pub(super) async fn spawn_qemu(
        &self,
        id: Uuid,
        dir: &Path,
        args: Vec<String>,
        ready_marker: String,
        boot_timeout_secs: Option<u64>,
        tap: Option<String>,
    ) -> DriverResult<Runtime> {
        for stale in ["qmp.sock", "serial.sock", "qga.sock", "qemu.json", "qemu.pid"] {
            let _ = tokio::fs::remove_file(dir.join(stale)).await;
        }
        if let Some(ns) = &self.net {
            // Recreated if it went away since `new` (shutdown() with no VM left, or someone deleted it).
            NetNs::ensure(&ns.name, BRIDGE, &self.config.bridge_cidr).await.map_err(failed)?;
            if let Some(tap) = &tap {
                // A tap of this name can only be a leftover (QEMU's taps vanish with QEMU); QEMU would fail on it.
                ns.delete_link(tap).await;
            }
        }
        let boot_offset = trim_console(dir).await?;
        tokio::fs::write(dir.join("qemu.args"), args.join("\n") + "\n").await.map_err(failed)?;
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
        let rt = Runtime { pid, start_time, boot_offset, ready_marker, tap, boot_timeout_secs };
        Self::save_runtime(dir, &rt).await?;
        tracing::info!(instance = %id, pid, accelerator = %self.accel, "qemu started");
        Ok(rt)
    }

    /// Waits for the ready marker of the current boot; kills the VM when the boot watchdog fires.
    pub(super) async fn wait_ready(&self, id: Uuid, dir: &Path, rt: &Runtime, started: Instant) -> DriverResult<()> {
        let timeout = rt.boot_timeout_secs.map(Duration::from_secs).unwrap_or_default().max(self.config.boot_timeout);
        let deadline = started + timeout;
        let log = dir.join("serial.log");
        let mut scanned = rt.boot_offset;
        loop {
            if rt.ready_marker.is_empty() {
                // No marker: the guest is as ready as the host can tell once QEMU answers QMP.
                if qmp::command(&dir.join("qmp.sock"), "query-status", None).await.is_ok() {
                    return Ok(());
                }
            } else if let Ok(text) = read_from(&log, scanned).await {
                if contains_line_start(&text, &rt.ready_marker, scanned == rt.boot_offset) {
                    tracing::info!(instance = %id, secs = started.elapsed().as_secs_f64(), "guest ready");
                    return Ok(());
                }
                // Rescan the last few bytes, in case the marker was cut in half by the last read.
                let keep = rt.ready_marker.len() as u64 + 1;
                scanned = (scanned + text.len() as u64).saturating_sub(keep).max(scanned);
            }
            if !host::alive(rt.pid, rt.start_time) {
                let err = tokio::fs::read_to_string(dir.join("qemu.stderr")).await.unwrap_or_default();
                self.cleanup(dir, None).await;
                return Err(failed(format!("qemu exited during boot: {}", err.trim())));
            }
            if Instant::now() >= deadline {
                tracing::warn!(instance = %id, "boot watchdog fired; killing the VM");
                self.halt(dir, rt, Duration::ZERO).await;
                self.cleanup(dir, Some(rt)).await;
                return Err(DriverError::Timeout(format!(
                    "guest did not print {:?} within {timeout:?}",
                    rt.ready_marker
                )));
            }
            // Reading only the new bytes of the log is cheap; a short pause keeps the wait from adding to boots
            // (at 50 ms it was a third of the control plane's measured overhead; see BENCHMARKS.md).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends the QEMU process: ACPI power-down for half of `grace`, then (if the guest has an agent) the
    /// agent's power-down for the rest, then QMP quit, SIGTERM, SIGKILL.
    pub(super) async fn halt(&self, dir: &Path, rt: &Runtime, grace: Duration) {
        let qmp = dir.join("qmp.sock");
        if !grace.is_zero() {
            if let Err(e) = qmp::command(&qmp, "system_powerdown", None).await {
                tracing::warn!(error = %e, "system_powerdown failed");
            }
            let agent_sock = dir.join("qga.sock");
            let has_agent = tokio::fs::try_exists(&agent_sock).await.unwrap_or(false);
            let first = if has_agent { grace / 2 } else { grace };
            if host::wait_exit(rt.pid, rt.start_time, first).await {
                return;
            }
            if has_agent {
                match agent::Agent::connect(&agent_sock, Duration::from_secs(3)).await {
                    Ok(mut a) => {
                        tracing::info!(pid = rt.pid, "guest ignored ACPI power-down; asking its agent");
                        let _ = a.shutdown().await;
                        if host::wait_exit(rt.pid, rt.start_time, grace - first).await {
                            return;
                        }
                    }
                    Err(e) => tracing::info!(pid = rt.pid, error = %e, "no guest agent to ask for a power-down"),
                }
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
    pub(super) async fn cleanup(&self, dir: &Path, rt: Option<&Runtime>) {
        if let (Some(ns), Some(tap)) = (&self.net, rt.and_then(|r| r.tap.as_ref())) {
            ns.delete_link(tap).await;
        }
        for f in ["qemu.json", "qemu.pid", "qmp.sock", "serial.sock", "qga.sock", "swtpm.sock"] {
            let _ = tokio::fs::remove_file(dir.join(f)).await;
        }
    }

    pub(super) async fn stop_locked(&self, id: Uuid, dir: &Path, grace: Duration) {
        match self.runtime(dir).await {
            Some(rt) => {
                self.halt(dir, &rt, grace).await;
                self.cleanup(dir, Some(&rt)).await;
                tracing::info!(instance = %id, "qemu stopped");
            }
            None => {
                let tap = self.net.as_ref().map(|_| Self::tap_name(id));
                let rt = Runtime {
                    pid: 0,
                    start_time: 0,
                    boot_offset: 0,
                    ready_marker: String::new(),
                    tap,
                    boot_timeout_secs: None,
                };
                self.cleanup(dir, Some(&rt)).await;
            }
        }
    }

    pub(super) async fn require_stopped(&self, dir: &Path, action: &str) -> DriverResult<()> {
        if self.runtime(dir).await.is_some() {
            return Err(DriverError::Invalid(format!("{action} needs the instance stopped")));
        }
        Ok(())
    }
}

/// Keeps serial.log bounded across boots; only done while QEMU is not running, as it holds the file.
async fn trim_console(dir: &Path) -> DriverResult<u64> {
    let path = dir.join("serial.log");
    let Ok(meta) = tokio::fs::metadata(&path).await else { return Ok(0) };
    if meta.len() <= CONSOLE_CAP {
        return Ok(meta.len());
    }
    let tail = read_tail(&path, CONSOLE_CAP).await.map_err(failed)?;
    let tmp = dir.join("serial.log.tmp");
    tokio::fs::write(&tmp, &tail).await.map_err(failed)?;
    tokio::fs::rename(&tmp, &path).await.map_err(failed)?;
    Ok(tail.len() as u64)
}

pub async fn read_from(path: &Path, offset: u64) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .map_err(std::io::Error::other)?
}

pub async fn read_tail(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(cap)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Whether `marker` starts a line of `text`. `at_line_start` says whether `text` itself begins a line.
pub fn contains_line_start(text: &str, marker: &str, at_line_start: bool) -> bool {
    (at_line_start && text.starts_with(marker))
        || text.match_indices(marker).any(|(i, _)| i > 0 && matches!(text.as_bytes()[i - 1], b'\n' | b'\r'))
}

fn failed(e: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(e.to_string())
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
}
