//! Volumes on a qemu host: each a qcow2 file of its own, `<state>/volumes/<id>.qcow2`, outside every
//! instance's directory (an instance's destroy leaves them), given to a guest as a virtio-blk disk whose
//! serial is the volume's, so the guest finds it at `/dev/disk/by-id/virtio-<serial>` (and in
//! `/sys/block/vd*/serial`).
//!
//! q35's root bus cannot take hot-plugged devices, so every instance's machine has [`PORTS`] PCIe root
//! ports reserved for volumes (`vp0`...). `volumes.json` in the instance's directory says which volume sits
//! behind which port; it is written under the instance's lock before a device is added, so an attach run
//! again after a crash finds the same port, and every QMP step treats "already there" (or, unplugging,
//! "already gone") as done. A boot puts the volumes of its spec on the command line (see [`boot_args`]).
//!
//! Hot-plug: `blockdev-add` of the qcow2 node (`v<serial>`), then `device_add` of a virtio-blk-pci
//! (`dv<serial>`) on the volume's port. Hot-unplug: `device_del`, which the guest must acknowledge (the
//! device is gone from `/machine/peripheral` once it has), then `blockdev-del`, after which QEMU holds the
//! file no more.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::cmdline::opt_path;
use super::{disks, qmp};
use crate::{DriverError, DriverResult, VolumeSpec};

/// Root ports reserved for volumes on every instance: the most volumes one instance takes.
pub const PORTS: usize = 8;
/// How long a guest may take to let go of an unplugged disk (Linux's PCIe hotplug waits 5 s for an
/// attention button press to be taken back before it powers a slot off).
const UNPLUG_WAIT: Duration = Duration::from_secs(60);

fn failed(e: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(e.to_string())
}

pub fn path(state_dir: &Path, id: Uuid) -> PathBuf {
    state_dir.join("volumes").join(format!("{id}.qcow2"))
}

fn node(serial: &str) -> String {
    format!("v{serial}")
}

fn device(serial: &str) -> String {
    format!("dv{serial}")
}

fn port(n: usize) -> String {
    format!("vp{n}")
}

/// A new empty qcow2 of `size_gb`, made under a temporary name; an existing file is kept as it is.
pub async fn create(qemu_img: &str, file: &Path, size_gb: u64) -> DriverResult<()> {
    if tokio::fs::try_exists(file).await.unwrap_or(false) {
        return Ok(());
    }
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    }
    let tmp = file.with_extension("qcow2.tmp");
    let _ = tokio::fs::remove_file(&tmp).await;
    let size = (size_gb << 30).to_string();
    disks::run(qemu_img, &["create", "-q", "-f", "qcow2", &tmp.display().to_string(), &size]).await.map_err(failed)?;
    tokio::fs::rename(&tmp, file).await.map_err(failed)
}

/// The file's size in whole GiB (`NotFound` for a missing one).
pub async fn size_gb(qemu_img: &str, file: &Path, id: Uuid) -> DriverResult<u64> {
    if !tokio::fs::try_exists(file).await.unwrap_or(false) {
        return Err(DriverError::NotFound(id));
    }
    Ok(disks::virtual_size(qemu_img, file).await?.div_ceil(1 << 30))
}

/// Grows a volume's file that no running QEMU holds; refuses to shrink it.
pub async fn grow(qemu_img: &str, file: &Path, id: Uuid, size_gb: u64) -> DriverResult<()> {
    let current = size_bytes(qemu_img, file, id).await?;
    let wanted = size_gb << 30;
    if wanted < current {
        return Err(DriverError::Invalid(format!(
            "a volume only grows: {size_gb} GiB is smaller than its {} GiB",
            current.div_ceil(1 << 30)
        )));
    }
    if wanted == current {
        return Ok(());
    }
    disks::grow(qemu_img, file, wanted).await
}

/// Grows a volume a running QEMU holds, through QMP `block_resize` (the guest sees the new size at once);
/// refuses to shrink it.
pub async fn grow_plugged(
    qemu_img: &str,
    socket: &Path,
    file: &Path,
    id: Uuid,
    serial: &str,
    size_gb: u64,
) -> DriverResult<()> {
    let current = size_bytes(qemu_img, file, id).await?;
    let wanted = size_gb << 30;
    if wanted < current {
        return Err(DriverError::Invalid(format!("a volume only grows: {size_gb} GiB is smaller than it is")));
    }
    if wanted == current {
        return Ok(());
    }
    qmp::command(socket, "block_resize", Some(json!({"node-name": node(serial), "size": wanted})))
        .await
        .map(|_| ())
        .map_err(failed)
}

async fn size_bytes(qemu_img: &str, file: &Path, id: Uuid) -> DriverResult<u64> {
    if !tokio::fs::try_exists(file).await.unwrap_or(false) {
        return Err(DriverError::NotFound(id));
    }
    disks::virtual_size(qemu_img, file).await
}

/// Removes a volume's file; a missing one is no error.
pub async fn remove(file: &Path) -> DriverResult<()> {
    match tokio::fs::remove_file(file).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(e)),
        _ => Ok(()),
    }
}

/// Up to `len` bytes of a volume's file from `offset` (a detached volume: nothing writes to it).
pub async fn read_chunk(file: &Path, volume_id: Uuid, offset: u64, len: u64) -> DriverResult<crate::VolumeChunk> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = match tokio::fs::File::open(file).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DriverError::NotFound(volume_id)),
        Err(e) => return Err(failed(e)),
    };
    let size = f.metadata().await.map_err(failed)?.len();
    f.seek(std::io::SeekFrom::Start(offset)).await.map_err(failed)?;
    let mut data = Vec::with_capacity(len.min(size.saturating_sub(offset)) as usize);
    (&mut f).take(len).read_to_end(&mut data).await.map_err(failed)?;
    let last = offset + data.len() as u64 >= size;
    Ok(crate::VolumeChunk { offset, data: base64::engine::general_purpose::STANDARD.encode(&data), last })
}

/// Writes a piece of a volume's file read on another host into `<file>.part` (the piece at offset 0 starts
/// it afresh); the last piece is synced and renamed over `file`, so the volume exists here whole or not
/// at all.
pub async fn write_chunk(file: &Path, chunk: &crate::VolumeChunk) -> DriverResult<()> {
    use base64::Engine as _;
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let data = base64::engine::general_purpose::STANDARD
        .decode(&chunk.data)
        .map_err(|e| DriverError::Invalid(format!("a volume piece is not base64: {e}")))?;
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    }
    let part = file.with_extension("qcow2.part");
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(chunk.offset == 0)
        .open(&part)
        .await
        .map_err(failed)?;
    let have = f.metadata().await.map_err(failed)?.len();
    if chunk.offset > have {
        return Err(DriverError::Invalid(format!(
            "a volume piece at {} follows {have} bytes: pieces come in order",
            chunk.offset
        )));
    }
    f.seek(std::io::SeekFrom::Start(chunk.offset)).await.map_err(failed)?;
    f.write_all(&data).await.map_err(failed)?;
    // A tokio file hands its write to a blocking thread and may be dropped before it lands: flushed, the
    // piece is in the file when this returns, where the next piece's length check looks.
    f.flush().await.map_err(failed)?;
    if chunk.last {
        f.set_len(chunk.offset + data.len() as u64).await.map_err(failed)?;
        f.sync_all().await.map_err(failed)?;
        drop(f);
        tokio::fs::rename(&part, file).await.map_err(failed)?;
    }
    Ok(())
}

/// Where a volume's snapshot is kept: `<state>/volume-snapshots/<volume>/<snapshot>.qcow2`, a standalone
/// copy of the volume's file at the time.
pub fn snapshot_path(state_dir: &Path, volume_id: Uuid, snapshot_id: Uuid) -> PathBuf {
    state_dir.join("volume-snapshots").join(volume_id.to_string()).join(format!("{snapshot_id}.qcow2"))
}

/// Copies a volume's file to `to` under a temporary name, then renames it: a crash leaves no half snapshot
/// under the real name. `shared`: read it while a (paused) QEMU holds it.
pub async fn copy(qemu_img: &str, from: &Path, to: &Path, shared: bool) -> DriverResult<()> {
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    }
    let tmp = to.with_extension("qcow2.tmp");
    let _ = tokio::fs::remove_file(&tmp).await;
    let (from_s, tmp_s) = (from.display().to_string(), tmp.display().to_string());
    let mut args = vec!["convert", "-q", "-f", "qcow2", "-O", "qcow2"];
    if shared {
        args.push("-U");
    }
    args.extend([from_s.as_str(), tmp_s.as_str()]);
    disks::run(qemu_img, &args).await.map_err(failed)?;
    tokio::fs::rename(&tmp, to).await.map_err(failed)
}

/// Puts a snapshot's data back into a detached volume's file: a copy of the snapshot, grown back to the
/// volume's size if it grew since, renamed over the file.
pub async fn restore(qemu_img: &str, snapshot: &Path, file: &Path, id: Uuid) -> DriverResult<()> {
    let current = size_bytes(qemu_img, file, id).await?;
    let tmp = file.with_extension("qcow2.revert");
    let _ = tokio::fs::remove_file(&tmp).await;
    let (from_s, tmp_s) = (snapshot.display().to_string(), tmp.display().to_string());
    disks::run(qemu_img, &["convert", "-q", "-f", "qcow2", "-O", "qcow2", &from_s, &tmp_s]).await.map_err(failed)?;
    if disks::virtual_size(qemu_img, &tmp).await? < current {
        disks::grow(qemu_img, &tmp, current).await?;
    }
    tokio::fs::rename(&tmp, file).await.map_err(failed)
}

/// Makes a new volume's file as a copy of a snapshot, grown to `size_gb` when the snapshot is smaller: made
/// under a temporary name and renamed, so a crash leaves no half disk under the real name.
pub async fn from_snapshot(qemu_img: &str, snapshot: &Path, file: &Path, size_gb: u64) -> DriverResult<()> {
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    }
    let tmp = file.with_extension("qcow2.new");
    let _ = tokio::fs::remove_file(&tmp).await;
    let (from_s, tmp_s) = (snapshot.display().to_string(), tmp.display().to_string());
    disks::run(qemu_img, &["convert", "-q", "-f", "qcow2", "-O", "qcow2", &from_s, &tmp_s]).await.map_err(failed)?;
    let bytes = size_gb << 30;
    if disks::virtual_size(qemu_img, &tmp).await? < bytes {
        disks::grow(qemu_img, &tmp, bytes).await?;
    }
    tokio::fs::rename(&tmp, file).await.map_err(failed)
}

/// The snapshots the host keeps of a volume.
pub async fn snapshot_ids(state_dir: &Path, volume_id: Uuid) -> Vec<Uuid> {
    let mut out = Vec::new();
    let dir = state_dir.join("volume-snapshots").join(volume_id.to_string());
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return out };
    while let Ok(Some(e)) = entries.next_entry().await {
        if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_suffix(".qcow2")).and_then(|s| s.parse().ok()) {
            out.push(id);
        }
    }
    out.sort();
    out
}

/// The volumes the host has files of.
pub async fn ids(state_dir: &Path) -> Vec<Uuid> {
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(state_dir.join("volumes")).await else { return out };
    while let Ok(Some(e)) = entries.next_entry().await {
        if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_suffix(".qcow2")).and_then(|s| s.parse().ok()) {
            out.push(id);
        }
    }
    out.sort();
    out
}

/// One volume behind one of an instance's root ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugged {
    pub port: usize,
    pub serial: String,
}

/// `volumes.json`: which volume sits behind which port of the instance.
pub type Ports = BTreeMap<Uuid, Plugged>;

pub async fn read_ports(dir: &Path) -> Ports {
    match tokio::fs::read(dir.join("volumes.json")).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Ports::new(),
    }
}

pub async fn write_ports(dir: &Path, ports: &Ports) -> DriverResult<()> {
    let tmp = dir.join("volumes.json.tmp");
    tokio::fs::write(&tmp, serde_json::to_vec(ports).expect("ports serialize")).await.map_err(failed)?;
    tokio::fs::rename(&tmp, dir.join("volumes.json")).await.map_err(failed)
}

/// The port of `volume` in `ports`, or the lowest free one (recorded in `ports`).
pub fn assign(ports: &mut Ports, volume: &VolumeSpec) -> DriverResult<usize> {
    if let Some(p) = ports.get(&volume.id) {
        return Ok(p.port);
    }
    let taken: Vec<usize> = ports.values().map(|p| p.port).collect();
    let free = (0..PORTS)
        .find(|n| !taken.contains(n))
        .ok_or_else(|| DriverError::Invalid(format!("an instance takes at most {PORTS} volumes")))?;
    ports.insert(volume.id, Plugged { port: free, serial: volume.serial.clone() });
    Ok(free)
}

/// The ports of a boot: exactly the spec's volumes, each on the port it had if it had one.
pub fn ports_for_boot(before: &Ports, volumes: &[VolumeSpec]) -> DriverResult<Ports> {
    let mut ports: Ports =
        before.iter().filter(|(id, _)| volumes.iter().any(|v| v.id == **id)).map(|(k, v)| (*k, v.clone())).collect();
    for v in volumes {
        assign(&mut ports, v)?;
    }
    Ok(ports)
}

/// The command-line arguments of the volume ports and of the volumes behind them.
pub fn boot_args(state_dir: &Path, ports: &Ports) -> Vec<String> {
    let mut a = Vec::new();
    for n in 0..PORTS {
        a.push("-device".to_string());
        a.push(format!("pcie-root-port,id={},chassis={},slot=0,io-reserve=0", port(n), n + 1));
    }
    for (id, p) in ports {
        a.push("-blockdev".to_string());
        a.push(format!(
            "driver=qcow2,node-name={},file.driver=file,file.filename={}",
            node(&p.serial),
            opt_path(&path(state_dir, *id))
        ));
        a.push("-device".to_string());
        a.push(format!(
            "virtio-blk-pci,drive={},serial={},id={},bus={}",
            node(&p.serial),
            p.serial,
            device(&p.serial),
            port(p.port)
        ));
    }
    a
}

/// QMP errors that say the step was done already.
fn already(e: &qmp::QmpError) -> bool {
    let m = e.0.to_lowercase();
    m.contains("duplicate") || m.contains("already") || m.contains("in use")
}

fn gone(e: &qmp::QmpError) -> bool {
    let m = e.0.to_lowercase();
    m.contains("not found") || m.contains("no such") || m.contains("cannot find")
}

/// Plugs the volume into a running QEMU (its port already recorded). Idempotent.
pub async fn hot_plug(socket: &Path, file: &Path, volume: &VolumeSpec, port_n: usize) -> DriverResult<()> {
    let mut q = qmp::Qmp::connect(socket, Duration::from_secs(2)).await.map_err(failed)?;
    let blockdev = json!({
        "driver": "qcow2",
        "node-name": node(&volume.serial),
        "file": {"driver": "file", "filename": file.display().to_string()},
    });
    match q.execute("blockdev-add", Some(blockdev)).await {
        Err(e) if !already(&e) => return Err(failed(e)),
        _ => {}
    }
    let dev = json!({
        "driver": "virtio-blk-pci",
        "id": device(&volume.serial),
        "drive": node(&volume.serial),
        "serial": volume.serial,
        "bus": port(port_n),
    });
    match q.execute("device_add", Some(dev)).await {
        Err(e) if !already(&e) => Err(failed(e)),
        _ => Ok(()),
    }
}

/// Unplugs the volume from a running QEMU and waits until the guest has let go of it. Idempotent.
pub async fn hot_unplug(socket: &Path, serial: &str) -> DriverResult<()> {
    let mut q = qmp::Qmp::connect(socket, Duration::from_secs(2)).await.map_err(failed)?;
    match q.execute("device_del", Some(json!({"id": device(serial)}))).await {
        Err(e) if !gone(&e) => return Err(failed(e)),
        _ => {}
    }
    let deadline = tokio::time::Instant::now() + UNPLUG_WAIT;
    loop {
        let devices = q.execute("qom-list", Some(json!({"path": "/machine/peripheral"}))).await.map_err(failed)?;
        let present = devices
            .as_array()
            .is_some_and(|list| list.iter().any(|d| d.get("name").and_then(Value::as_str) == Some(&device(serial))));
        if !present {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DriverError::Timeout(format!(
                "the guest did not release disk virtio-{serial} within {}s",
                UNPLUG_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match q.execute("blockdev-del", Some(json!({"node-name": node(serial)}))).await {
        Err(e) if !gone(&e) => Err(failed(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(serial: &str) -> VolumeSpec {
        VolumeSpec { id: Uuid::new_v4(), size_gb: 1, serial: serial.into() }
    }

    /// Each piece is on the file when its call returns: the next one, sent at once, finds it there (a
    /// dropped tokio file finishes its last write in the background, after the next piece looked).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_written_one_after_another_make_the_whole_file() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("volumes/moving.qcow2");
        let piece = crate::VOLUME_CHUNK_BYTES as usize;
        let whole: Vec<u8> = (0..64 * piece).map(|i| (i % 251) as u8).collect();
        for (n, data) in whole.chunks(piece).enumerate() {
            let chunk = crate::VolumeChunk {
                offset: (n * piece) as u64,
                data: base64::engine::general_purpose::STANDARD.encode(data),
                last: (n + 1) * piece >= whole.len(),
            };
            write_chunk(&file, &chunk).await.unwrap();
        }
        assert!(std::fs::read(&file).unwrap() == whole, "the file is the pieces in order");
    }

    #[test]
    fn volumes_keep_their_port_and_take_the_lowest_free_one() {
        let (a, b, c) = (spec("aaaa"), spec("bbbb"), spec("cccc"));
        let mut ports = Ports::new();
        assert_eq!(assign(&mut ports, &a).unwrap(), 0);
        assert_eq!(assign(&mut ports, &b).unwrap(), 1);
        assert_eq!(assign(&mut ports, &a).unwrap(), 0, "again: the same port");
        ports.remove(&a.id);
        assert_eq!(assign(&mut ports, &c).unwrap(), 0);
        let boot = ports_for_boot(&ports, std::slice::from_ref(&b)).unwrap();
        assert_eq!(boot.get(&b.id).map(|p| p.port), Some(1), "a boot keeps a volume's port");
        assert_eq!(boot.len(), 1, "and only the spec's volumes");
        let mut full = Ports::new();
        for n in 0..PORTS {
            assign(&mut full, &spec(&format!("s{n}"))).unwrap();
        }
        assert!(assign(&mut full, &spec("one-more")).is_err());
    }

    #[test]
    fn a_boot_gives_the_guest_each_volume_with_its_serial_on_its_port() {
        let v = spec("0123456789abcdef0123");
        let ports = ports_for_boot(&Ports::new(), std::slice::from_ref(&v)).unwrap();
        let args = boot_args(Path::new("/s"), &ports).join(" ");
        assert_eq!(args.matches("pcie-root-port").count(), PORTS);
        assert!(args.contains(&format!("file.filename=/s/volumes/{}.qcow2", v.id)), "{args}");
        assert!(args.contains("virtio-blk-pci,drive=v0123456789abcdef0123,serial=0123456789abcdef0123,id=dv0123456789abcdef0123,bus=vp0"), "{args}");
    }

    /// Needs `qemu-img` (qemu-utils).
    #[tokio::test]
    async fn files_are_made_grown_measured_and_removed() {
        if super::super::host::which("qemu-img").is_none() {
            println!("SKIPPED: no qemu-img");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let file = path(dir.path(), id);
        assert!(matches!(size_gb("qemu-img", &file, id).await, Err(DriverError::NotFound(_))));
        create("qemu-img", &file, 1).await.unwrap();
        create("qemu-img", &file, 5).await.unwrap();
        assert_eq!(size_gb("qemu-img", &file, id).await.unwrap(), 1, "an existing volume is kept");
        assert_eq!(ids(dir.path()).await, vec![id]);
        assert!(grow("qemu-img", &file, id, 0).await.is_err(), "never shrunk");
        grow("qemu-img", &file, id, 3).await.unwrap();
        assert_eq!(size_gb("qemu-img", &file, id).await.unwrap(), 3);
        remove(&file).await.unwrap();
        remove(&file).await.unwrap();
        assert!(ids(dir.path()).await.is_empty());
    }

    /// A snapshot keeps the data as it was; a revert puts it back and keeps the size the volume grew to.
    #[tokio::test]
    async fn a_snapshot_copy_is_restored_over_a_grown_volume() {
        if super::super::host::which("qemu-img").is_none() || super::super::host::which("qemu-io").is_none() {
            println!("SKIPPED: no qemu-img or qemu-io");
            return;
        }
        let io = |file: &Path, cmd: &str| {
            let (file, cmd) = (file.display().to_string(), cmd.to_string());
            async move { disks::run("qemu-io", &["-f", "qcow2", "-c", &cmd, &file]).await }
        };
        let dir = tempfile::tempdir().unwrap();
        let (id, snap) = (Uuid::new_v4(), Uuid::new_v4());
        let file = path(dir.path(), id);
        create("qemu-img", &file, 1).await.unwrap();
        io(&file, "write -P 0xab 0 64k").await.unwrap();
        let copy_path = snapshot_path(dir.path(), id, snap);
        copy("qemu-img", &file, &copy_path, false).await.unwrap();
        assert_eq!(snapshot_ids(dir.path(), id).await, vec![snap]);
        assert_eq!(ids(dir.path()).await, vec![id], "a snapshot is not a volume");
        io(&file, "write -P 0xcd 0 64k").await.unwrap();
        grow("qemu-img", &file, id, 2).await.unwrap();
        restore("qemu-img", &copy_path, &file, id).await.unwrap();
        restore("qemu-img", &copy_path, &file, id).await.unwrap();
        let read = io(&file, "read -P 0xab 0 64k").await.unwrap();
        assert!(!read.contains("Pattern verification failed"), "{read}");
        assert_eq!(size_gb("qemu-img", &file, id).await.unwrap(), 2, "the size it grew to is kept");
        // A new volume made from the snapshot holds its data, at the size asked for.
        let made = Uuid::new_v4();
        let made_path = path(dir.path(), made);
        from_snapshot("qemu-img", &copy_path, &made_path, 3).await.unwrap();
        let read = io(&made_path, "read -P 0xab 0 64k").await.unwrap();
        assert!(!read.contains("Pattern verification failed"), "{read}");
        assert_eq!(size_gb("qemu-img", &made_path, made).await.unwrap(), 3);
        remove(&copy_path).await.unwrap();
        assert!(snapshot_ids(dir.path(), id).await.is_empty());
    }

    /// A fake QEMU that answers as a real one does to an attach run twice and a detach: the second attach
    /// finds both the node and the device there already, and the detach waits for the device to go.
    #[tokio::test]
    async fn plugging_twice_and_unplugging_converge() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let server_log = log.clone();
        let server = tokio::spawn(async move {
            let mut nodes = std::collections::BTreeSet::new();
            let mut devices = std::collections::BTreeSet::new();
            let mut lists_after_del = 0;
            for _ in 0..3 {
                let (s, _) = listener.accept().await.unwrap();
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"{\"QMP\": {}}\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let req: Value = serde_json::from_str(&line).unwrap();
                    let cmd = req["execute"].as_str().unwrap().to_string();
                    server_log.lock().unwrap().push(cmd.clone());
                    let args = &req["arguments"];
                    let err = |desc: &str| json!({"error": {"class": "GenericError", "desc": desc}, "id": req["id"]});
                    let ok = |ret: Value| json!({"return": ret, "id": req["id"]});
                    let reply = match cmd.as_str() {
                        "blockdev-add" if !nodes.insert(args["node-name"].to_string()) => {
                            err("Duplicate nodes with node-name")
                        }
                        "device_add" if !devices.insert(args["id"].as_str().unwrap().to_string()) => {
                            err("Duplicate device ID")
                        }
                        "device_del" => ok(json!({})),
                        "qom-list" => {
                            // The guest lets go on the second look.
                            lists_after_del += 1;
                            if lists_after_del >= 2 {
                                devices.clear();
                            }
                            ok(Value::Array(
                                devices.iter().map(|d| json!({"name": d, "type": "child<virtio-blk-pci>"})).collect(),
                            ))
                        }
                        _ => ok(json!({})),
                    };
                    w.write_all(format!("{reply}\r\n").as_bytes()).await.unwrap();
                }
            }
        });
        let v = spec("0123456789abcdef0123");
        hot_plug(&sock, Path::new("/s/v.qcow2"), &v, 2).await.unwrap();
        hot_plug(&sock, Path::new("/s/v.qcow2"), &v, 2).await.unwrap();
        hot_unplug(&sock, &v.serial).await.unwrap();
        server.await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(log.iter().filter(|c| *c == "device_add").count(), 2);
        assert_eq!(log.last().map(String::as_str), Some("blockdev-del"), "the node goes after the device: {log:?}");
    }
}
