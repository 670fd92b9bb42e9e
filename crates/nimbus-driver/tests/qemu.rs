//! The `qemu` driver against real QEMU: builds the busybox template with guest/build.sh and walks one
//! instance through its whole life (boots run one at a time; about a minute on 2 cores under TCG).
//!
//! Skips, saying so, when qemu-system-x86_64 is missing or the test does not run as root (the driver's
//! network namespace needs CAP_NET_ADMIN). Everything it starts is killed and removed by a guard, also
//! when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nimbus_driver::qemu::Accel;
use nimbus_driver::{ActualState, Driver, DriverError, InstanceSpec, QemuConfig, QemuDriver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Live (non-zombie) processes whose command line mentions `needle` and `program`.
fn processes(needle: &str, program: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if cmdline.contains(needle) && cmdline.contains(program) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// Kills whatever the test left running and deletes its namespace and files, whatever happened.
struct Guard {
    state: PathBuf,
    netns: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let needle = self.state.display().to_string();
        for pid in processes(&needle, "qemu-system") {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Built once per test process: tests run in parallel threads and share the output directory.
fn build_template() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_template_now).clone()
}

fn build_template_now() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qemu-templates");
    let out = root.join("busybox");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/build.sh");
    let t = Instant::now();
    let status = Command::new("sh").arg(&script).arg(&out).status().expect("run guest/build.sh");
    assert!(status.success(), "guest/build.sh failed");
    println!("template built in {:.1}s", t.elapsed().as_secs_f64());
    root
}

async fn wait_console(d: &QemuDriver, id: Uuid, from: usize, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let console = d.console(id).await.unwrap();
        let new = console.get(from..).unwrap_or("").to_string();
        if needles.iter().all(|n| new.contains(n)) {
            return new;
        }
        assert!(Instant::now() < deadline, "console never showed {needles:?}; it has:\n{new}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn console_len(d: &QemuDriver, id: Uuid) -> usize {
    d.console(id).await.unwrap().len()
}

fn ping(netns: &str, addr: &str) -> bool {
    (0..10).any(|_| {
        Command::new("ip")
            .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "1", addr])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn tap_exists(netns: &str, tap: &str) -> bool {
    Command::new("ip").args(["-n", netns, "link", "show", tap]).output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_instance_lifecycle() {
    if !have("qemu-system-x86_64") {
        println!("SKIPPED qemu driver tests: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return;
    }
    if !is_root() {
        println!("SKIPPED qemu driver tests: not root (the driver's network namespace needs CAP_NET_ADMIN)");
        return;
    }
    let template_dir = build_template();
    // Short path: unix socket paths are limited to 108 bytes.
    let state = PathBuf::from(format!("/tmp/nimbus-qemu-test-{}", std::process::id()));
    let netns = format!("nimbus-test-{}", std::process::id());
    let guard = Guard { state: state.clone(), netns: netns.clone() };
    let needle = state.display().to_string();

    let mut config = QemuConfig::new(&state, &template_dir);
    config.netns = netns.clone();
    config.boot_timeout = Duration::from_secs(60);
    let d = QemuDriver::new(config.clone()).await.expect("driver");
    let accel = d.host_info().await.accelerator;
    if Path::new("/sys/module/kvm_pvm").exists() || !Path::new("/dev/kvm").exists() {
        assert_eq!(accel, "tcg", "the probe must refuse unusable KVM");
    }
    assert_eq!(d.netns(), Some(netns.as_str()));

    let template = d.templates().await.unwrap().into_iter().find(|t| t.name == "busybox").expect("busybox template");
    let user_data = "#!/bin/sh\necho hello-from-userdata\n\
        n=$(cat /mnt/data/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /mnt/data/count; sync\n\
        echo count=$n\necho host=$(hostname) keys=$(wc -l < /root/.ssh/authorized_keys)\n";
    let id = Uuid::new_v4();
    let mut spec = InstanceSpec {
        id,
        name: "t1".into(),
        hostname: "vm-t1".into(),
        vcpus: 1,
        memory_mib: 256,
        disk_size_gb: 1,
        template,
        user_data: Some(user_data.as_bytes().to_vec()),
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST test@nimbus".into()],
        password: Some("pw-for-test".into()),
        mac_address: String::new(),
        ip_address: Some("10.213.0.10/24".into()),
        gateway: Some("10.213.0.1".into()),
        tpm: false,
        secure_boot: false,
        volumes: Vec::new(),
        boot_volume: None,
        rescue: false,
    };
    let tap = QemuDriver::tap_name(id);

    // Create + first boot: user-data runs, the guest answers on the private bridge.
    d.create(&spec).await.unwrap();
    d.create(&spec).await.unwrap();
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Stopped);
    assert_eq!(d.instances().await.unwrap(), vec![id]);
    let t = Instant::now();
    d.start(&spec).await.unwrap();
    let boot = t.elapsed();
    let out = wait_console(&d, id, 0, &["READY", "hello-from-userdata", "count=1", "host=vm-t1 keys=1"]).await;
    assert!(out.contains("NET eth0 10.213.0.10/24"), "{out}");
    assert!(out.contains("size=1073741824"), "{out}");
    assert!(ping(&netns, "10.213.0.10"), "guest does not answer ping in the namespace");
    assert!(tap_exists(&netns, &tap), "the running instance has its tap {tap}");
    let m = d.metrics(id).await.unwrap();
    assert!(m.memory_rss_bytes > 0 && m.cpu_time_ns > 0 && m.disk_used_bytes > 0, "{m:?}");
    assert!(m.net_rx_bytes > 0, "{m:?}");
    println!("boot to READY: {:.2}s, RSS {} MiB", boot.as_secs_f64(), m.memory_rss_bytes >> 20);
    let t = Instant::now();
    d.start(&spec).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "start of a running instance must return at once");

    // Interactive console: the guest's getty answers.
    let mut con = d.console_stream(id).await.unwrap();
    con.write_all(b"\r\n").await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("login:") {
        assert!(Instant::now() < deadline, "no login prompt: {}", String::from_utf8_lossy(&seen));
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), con.read(&mut buf)).await {
            seen.extend_from_slice(&buf[..n]);
        }
    }
    drop(con);

    // Suspend pauses the vCPUs (QMP stop) and resume lets the same boot go on (QMP cont).
    d.suspend(id).await.unwrap();
    d.suspend(id).await.unwrap();
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Paused);
    d.resume(id).await.unwrap();
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Running);
    assert!(ping(&netns, "10.213.0.10"), "the resumed guest answers ping");

    // A new driver over the same state dir (the control plane restarted) adopts the VM and stops it.
    let d2 = QemuDriver::new(config.clone()).await.expect("second driver");
    assert_eq!(d2.inspect(id).await.unwrap(), ActualState::Running);
    let t = Instant::now();
    d2.stop(id, Duration::from_secs(20)).await.unwrap();
    println!("graceful stop: {:.2}s", t.elapsed().as_secs_f64());
    assert!(processes(&needle, "qemu-system").is_empty(), "qemu still runs after stop");
    assert!(!tap_exists(&netns, &tap), "tap left after stop");
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Stopped);
    d.stop(id, Duration::from_secs(1)).await.unwrap();
    assert!(wait_console(&d, id, 0, &["POWEROFF"]).await.contains("SHUTDOWN"));

    // Snapshot, grow the disk (never shrink), boot: the guest sees the new size and changes its disk.
    let s1 = Uuid::new_v4();
    assert!(d.snapshot(id, s1).await.unwrap() > 0);
    d.snapshot(id, s1).await.unwrap();
    d.resize_disk(id, 2).await.unwrap();
    assert!(matches!(d.resize_disk(id, 1).await, Err(DriverError::Invalid(_))));
    spec.disk_size_gb = 2;
    let from = console_len(&d, id).await;
    d.start(&spec).await.unwrap();
    wait_console(&d, id, from, &["size=2147483648", "count=2"]).await;
    d.stop(id, Duration::from_secs(20)).await.unwrap();

    // Revert: the disk content of the snapshot is back (the counter restarts from 1), the size stays.
    assert!(matches!(d.revert(id, Uuid::new_v4()).await, Err(DriverError::Invalid(_))));
    d.revert(id, s1).await.unwrap();
    let from = console_len(&d, id).await;
    d.start(&spec).await.unwrap();
    let out = wait_console(&d, id, from, &["count=2", "size=2147483648"]).await;
    assert!(!out.contains("count=3"), "{out}");
    assert!(matches!(d.revert(id, s1).await, Err(DriverError::Invalid(_))), "revert must need a stopped VM");

    // Live snapshots go through QMP.
    let s2 = Uuid::new_v4();
    d.snapshot(id, s2).await.unwrap();
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Running, "the copy's pause ends with it");
    // A copy cut short by a crash after its pause (marked, QMP stop) leaves the guest paused: the step run
    // again resumes it, although the copy is there already.
    std::fs::write(state.join("instances").join(id.to_string()).join("copy-pause"), b"").unwrap();
    d.suspend(id).await.unwrap();
    d.snapshot(id, s2).await.unwrap();
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Running, "left paused by a crashed copy");
    d.delete_snapshot(id, s2).await.unwrap();
    d.delete_snapshot(id, s2).await.unwrap();

    // Reboot: a hard reset, then READY again.
    let from = console_len(&d, id).await;
    d.reboot(&spec).await.unwrap();
    wait_console(&d, id, from, &["READY", "count=3"]).await;

    // Reinstall: a fresh disk from the template, of the instance's size. Snapshots are files of their own
    // and stay.
    d.stop(id, Duration::from_secs(20)).await.unwrap();
    assert!(processes(&needle, "qemu-system").is_empty());
    d.reinstall(&spec).await.unwrap();
    assert_eq!(d.snapshots(id).await.unwrap(), vec![s1], "reinstall keeps the snapshots");
    d.delete_snapshot(id, s1).await.unwrap();
    assert!(d.snapshots(id).await.unwrap().is_empty());
    let from = console_len(&d, id).await;
    d.start(&spec).await.unwrap();
    wait_console(&d, id, from, &["count=1", "size=2147483648"]).await;

    // A TPM needs the instance stopped, and a UEFI template: the busybox guest boots its kernel directly.
    assert!(matches!(d.enable_tpm(id).await, Err(DriverError::Invalid(_) | DriverError::Unsupported(_))));
    let with_tpm = InstanceSpec { tpm: true, ..spec.clone() };
    match d.reboot(&InstanceSpec { id: Uuid::new_v4(), ..with_tpm.clone() }).await {
        Err(DriverError::NotFound(_)) => {}
        other => panic!("reboot of an unknown instance: {other:?}"),
    }
    let other = Uuid::new_v4();
    let refused = d.create(&InstanceSpec { id: other, ..with_tpm }).await;
    assert!(matches!(refused, Err(DriverError::Invalid(ref m)) if m.contains("UEFI")), "{refused:?}");

    // Destroy a running instance: no process, tap or file remains.
    d.destroy(id).await.unwrap();
    assert!(processes(&needle, "qemu-system").is_empty(), "qemu still runs after destroy");
    assert!(!tap_exists(&netns, &tap), "tap left after destroy");
    assert!(!state.join("instances").join(id.to_string()).exists());
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Missing);
    assert!(d.instances().await.unwrap().is_empty());
    d.destroy(id).await.unwrap();

    d.shutdown().await.unwrap();
    assert!(!Path::new("/run/netns").join(&netns).exists(), "namespace left after shutdown");
    drop(guard);
}

/// An unprivileged-style driver: TCG forced, networking off, works without touching namespaces.
#[tokio::test]
async fn qemu_driver_without_network() {
    if !have("qemu-system-x86_64") {
        println!("SKIPPED: qemu-system-x86_64 is not installed");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let mut config = QemuConfig::new(state.path(), state.path().join("no-templates"));
    config.accel = Accel::Tcg;
    config.network = false;
    let d = QemuDriver::new(config).await.unwrap();
    assert_eq!(d.host_info().await.accelerator, "tcg");
    assert_eq!(d.netns(), None);
    assert!(d.templates().await.unwrap().is_empty());
    let id = Uuid::new_v4();
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Missing);
    assert!(matches!(d.stop(id, Duration::ZERO).await, Err(DriverError::NotFound(_))));
    d.destroy(id).await.unwrap();
}

/// A volume's file moves between two hosts' drivers piece by piece and arrives the same, with the data
/// written into it; until the last piece the receiving host has no volume.
#[tokio::test]
async fn a_volume_file_moves_between_two_qemu_hosts() {
    if !have("qemu-io") {
        println!("SKIPPED: qemu-io is not installed");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let driver = |name: &str| {
        let mut config = QemuConfig::new(state.path().join(name), state.path().join("no-templates"));
        config.accel = Accel::Tcg;
        config.network = false;
        QemuDriver::new(config)
    };
    let (a, b) = (driver("a").await.unwrap(), driver("b").await.unwrap());
    let volume = nimbus_driver::VolumeSpec { id: Uuid::new_v4(), size_gb: 1, serial: "moving".into() };
    a.create_volume(&volume).await.unwrap();
    let file = |host: &str| state.path().join(host).join(format!("volumes/{}.qcow2", volume.id));
    // 1.5 MiB of data: the file travels in several pieces.
    let io = |host: &str, cmd: &str| {
        Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(file(host)).output().unwrap()
    };
    assert!(io("a", "write -P 0xab 0 1536k").status.success());
    let first = a.read_volume(volume.id, 0, nimbus_driver::VOLUME_CHUNK_BYTES).await.unwrap();
    assert!(!first.last && first.len() == nimbus_driver::VOLUME_CHUNK_BYTES, "{} bytes", first.len());
    b.write_volume(volume.id, &first).await.unwrap();
    assert!(b.volumes().await.unwrap().is_empty(), "not there before its last piece");

    // Interrupted and run again: it starts over at offset 0.
    let bytes = nimbus_driver::copy_volume(&a, &b, volume.id).await.unwrap();
    assert_eq!(bytes, std::fs::metadata(file("a")).unwrap().len());
    assert_eq!(b.volumes().await.unwrap(), vec![volume.id]);
    let same = Command::new("qemu-img").arg("compare").arg(file("a")).arg(file("b")).output().unwrap();
    assert!(same.status.success(), "{}", String::from_utf8_lossy(&same.stdout));
    let read = io("b", "read -P 0xab 0 1536k");
    assert!(read.status.success() && !String::from_utf8_lossy(&read.stdout).contains("Pattern verification failed"));
    assert_eq!(b.volume_size_gb(volume.id).await.unwrap(), 1);
    // A missing volume is named.
    assert!(matches!(a.read_volume(Uuid::new_v4(), 0, 1).await, Err(DriverError::NotFound(_))));
}

/// A volume made from a template is an overlay on the template's disk, of the volume's size (what an
/// instance booting from it reads as its disk); made again it is kept as it is.
#[tokio::test]
async fn a_volume_made_from_a_template_is_an_overlay_on_its_disk() {
    if !have("qemu-img") {
        println!("SKIPPED: qemu-img is not installed");
        return;
    }
    let template_dir = build_template();
    let state = tempfile::tempdir().unwrap();
    let mut config = QemuConfig::new(state.path(), &template_dir);
    config.accel = Accel::Tcg;
    config.network = false;
    let d = QemuDriver::new(config).await.unwrap();
    let template = d.templates().await.unwrap().into_iter().find(|t| t.name == "busybox").expect("busybox template");
    let volume = nimbus_driver::VolumeSpec { id: Uuid::new_v4(), size_gb: 2, serial: "root".into() };
    d.create_volume_from_template(&volume, &template).await.unwrap();
    let file = state.path().join(format!("volumes/{}.qcow2", volume.id));
    let info = |file: &Path| -> serde_json::Value {
        let out = Command::new("qemu-img").args(["info", "--output", "json", "-U"]).arg(file).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let i = info(&file);
    assert_eq!(i["virtual-size"].as_u64(), Some(2 << 30), "{i}");
    let backing = i["full-backing-filename"].as_str().or(i["backing-filename"].as_str()).unwrap_or_default();
    assert!(backing.starts_with(template_dir.join("busybox").to_str().unwrap()), "on the template's disk: {i}");
    let written = std::fs::metadata(&file).unwrap().modified().unwrap();
    d.create_volume_from_template(&volume, &template).await.unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), written, "kept as it was");
    assert_eq!(d.volumes().await.unwrap(), vec![volume.id]);
    let gone = nimbus_core::catalog::Template { name: "gone".into(), source: String::new(), ..template };
    let other = nimbus_driver::VolumeSpec { id: Uuid::new_v4(), ..volume };
    assert!(d.create_volume_from_template(&other, &gone).await.is_err(), "no such template on this host");
}

fn small_spec(id: Uuid, template: nimbus_core::catalog::Template, ip: &str) -> InstanceSpec {
    InstanceSpec {
        id,
        name: "adopted".into(),
        hostname: "adopted".into(),
        vcpus: 1,
        memory_mib: 128,
        disk_size_gb: 1,
        template,
        user_data: None,
        ssh_keys: Vec::new(),
        password: None,
        mac_address: String::new(),
        ip_address: Some(ip.into()),
        gateway: Some("10.213.0.1".into()),
        tpm: false,
        secure_boot: false,
        volumes: Vec::new(),
        boot_volume: None,
        rescue: false,
    }
}

/// Runs only as the child process of `qemu_vm_outlives_the_control_plane`: boots a VM, then exits
/// without stopping it, like a control plane that is killed.
#[tokio::test]
async fn qemu_adoption_child_helper() {
    let (Ok(state), Ok(templates), Ok(netns), Ok(id)) = (
        std::env::var("NIMBUS_QEMU_CHILD_STATE"),
        std::env::var("NIMBUS_QEMU_CHILD_TEMPLATES"),
        std::env::var("NIMBUS_QEMU_CHILD_NETNS"),
        std::env::var("NIMBUS_QEMU_CHILD_ID"),
    ) else {
        return;
    };
    let mut config = QemuConfig::new(state, templates);
    config.netns = netns;
    let d = QemuDriver::new(config).await.unwrap();
    let template = d.templates().await.unwrap().remove(0);
    let spec = small_spec(id.parse().unwrap(), template, "10.213.0.20/24");
    d.create(&spec).await.unwrap();
    d.start(&spec).await.unwrap();
}

/// A VM started by one process is found, reached and stopped by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_vm_outlives_the_control_plane() {
    if !have("qemu-system-x86_64") || !is_root() {
        println!("SKIPPED qemu adoption test: needs qemu-system-x86_64 and root");
        return;
    }
    let template_dir = build_template();
    let state = PathBuf::from(format!("/tmp/nimbus-qemu-adopt-{}", std::process::id()));
    let netns = format!("nimbus-adopt-{}", std::process::id());
    let _guard = Guard { state: state.clone(), netns: netns.clone() };
    let id = Uuid::new_v4();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "qemu_adoption_child_helper", "--nocapture", "--test-threads=1"])
        .env("NIMBUS_QEMU_CHILD_STATE", &state)
        .env("NIMBUS_QEMU_CHILD_TEMPLATES", &template_dir)
        .env("NIMBUS_QEMU_CHILD_NETNS", &netns)
        .env("NIMBUS_QEMU_CHILD_ID", id.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "child control plane failed");

    let mut config = QemuConfig::new(&state, &template_dir);
    config.netns = netns.clone();
    let d = QemuDriver::new(config).await.unwrap();
    assert_eq!(d.instances().await.unwrap(), vec![id]);
    assert_eq!(d.inspect(id).await.unwrap(), ActualState::Running);
    assert!(d.console(id).await.unwrap().contains("READY"));
    assert!(ping(&netns, "10.213.0.20"), "adopted guest does not answer ping");
    let template = d.templates().await.unwrap().remove(0);
    d.start(&small_spec(id, template, "10.213.0.20/24")).await.unwrap();
    d.stop(id, Duration::from_secs(20)).await.unwrap();
    assert!(processes(&state.display().to_string(), "qemu-system").is_empty(), "adopted qemu still runs");
    d.destroy(id).await.unwrap();
    d.shutdown().await.unwrap();
    assert!(!Path::new("/run/netns").join(&netns).exists());
}
