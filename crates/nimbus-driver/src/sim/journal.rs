//! Where a simulated host keeps its VMs (or templates, or volumes) when it has a state directory: one
//! append-only file of JSON lines, `journal.jsonl`, each line the whole new state of one record or its
//! removal, read back into a map.
//!
//! Why one file and not a file per VM: every new file is a new inode, and at scale-run rates ext4's inode
//! allocation (`__ext4_new_inode` → `recently_deleted`) and the directory's lock were a third of a busy
//! server's CPU. An append is one `write` to a file that already exists.
//!
//! Several processes may share a state directory (two servers on one simulated host; a server restarted
//! while its old process dies). Each appends with `O_APPEND` (one `write` per line, so lines never
//! interleave) and, before every read or write, reads what the file gained since it last looked, so it
//! sees the others' changes in order. A line still being written (no newline yet) is read once complete;
//! one that does not parse (a host that lost power mid-write) is skipped. The simulated VMs outlive a
//! killed process like real QEMU processes do: a write in the page cache survives the process.
//!
//! The file is compacted (rewritten with one line per live record) when a process opens it while no other
//! process has it open: every process holds a shared `flock` on `journal.lock` for as long as it keeps
//! the journal, and compaction needs the exclusive one. The state directories of earlier builds (two
//! `<id>.<slot>.json` files, or one `<id>.json`, per VM) are read into the journal then.
//!
//! Why not a crate: an embedded database (SQLite, sled) would bring its own file format and locking for a
//! map of a few thousand small records that only tests and scale runs keep; this is a map and an append.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DriverError, DriverResult};

const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "journal.lock";

/// One line: a record's whole new state, or its removal (`value` null).
#[derive(Serialize, Deserialize)]
struct Line<T> {
    id: Uuid,
    value: Option<T>,
}

pub(super) struct Journal<T> {
    dir: PathBuf,
    state: Mutex<Result<Open<T>, String>>,
}

struct Open<T> {
    file: File,
    /// Held (shared) while this journal lives: no other process compacts the file under it.
    _lock: File,
    /// How far the file has been read: always the end of a whole line.
    read_to: u64,
    records: HashMap<Uuid, T>,
}

impl<T: Clone + Serialize + DeserializeOwned> Journal<T> {
    /// The journal of `dir` (created when missing). Failing to open it is reported by every call after.
    pub(super) fn open(dir: &Path) -> Journal<T> {
        let state = Open::new(dir).map_err(|e| format!("sim: opening the state in {}: {e}", dir.display()));
        if let Err(e) = &state {
            tracing::warn!(error = %e, "sim: the simulated host has no state");
        }
        Journal { dir: dir.to_path_buf(), state: Mutex::new(state) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Open<T>) -> R) -> Result<R, String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let open = state.as_mut().map_err(|e| e.clone())?;
        open.catch_up();
        Ok(f(open))
    }

    pub(super) fn get(&self, id: Uuid) -> Option<T> {
        self.with(|open| open.records.get(&id).cloned()).ok().flatten()
    }

    pub(super) fn put(&self, id: Uuid, value: &T) -> DriverResult<()> {
        self.append(Line { id, value: Some(value.clone()) })
    }

    pub(super) fn remove(&self, id: Uuid) -> DriverResult<()> {
        self.append(Line { id, value: None })
    }

    /// Every record's id, in order.
    pub(super) fn ids(&self) -> Vec<Uuid> {
        let mut ids = self.with(|open| open.records.keys().copied().collect::<Vec<_>>()).unwrap_or_default();
        ids.sort();
        ids
    }

    fn append(&self, line: Line<T>) -> DriverResult<()> {
        let mut bytes = serde_json::to_vec(&line).map_err(|e| DriverError::Failed(format!("sim: {e}")))?;
        bytes.push(b'\n');
        self.with(|open| {
            // One write: with O_APPEND, another process's line lands wholly before or after it.
            (&open.file)
                .write_all(&bytes)
                .map_err(|e| format!("sim: writing {}: {e}", self.dir.join(JOURNAL).display()))?;
            match line.value {
                Some(value) => open.records.insert(line.id, value),
                None => open.records.remove(&line.id),
            };
            Ok(())
        })
        .and_then(|written| written)
        .map_err(DriverError::Failed)
    }
}

impl<T: Clone + Serialize + DeserializeOwned> Open<T> {
    fn new(dir: &Path) -> std::io::Result<Open<T>> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK))?;
        if lock.try_lock().is_ok() {
            // Nobody else has the journal open: rewrite it to what it holds.
            compact::<T>(dir)?;
            lock.unlock()?;
        }
        // Another process may compact between the unlock and this lock: the journal is opened only after.
        lock.lock_shared()?;
        let file = OpenOptions::new().create(true).read(true).append(true).open(dir.join(JOURNAL))?;
        let mut open = Open { file, _lock: lock, read_to: 0, records: HashMap::new() };
        open.catch_up();
        Ok(open)
    }

    /// Applies the lines appended since the last look (by this process or another).
    fn catch_up(&mut self) {
        // Sized by the file's length, read first: every look of a busy host allocated and zeroed a 64 KiB
        // buffer for the line or two it gained (5-8% of a busy server's CPU went to zeroing allocations).
        // The file only grows; what is appended after its length was read is found at the next look.
        let len = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                tracing::warn!(error = %e, "sim: reading the state journal's length");
                return;
            }
        };
        let Some(new) = len.checked_sub(self.read_to).filter(|n| *n > 0) else { return };
        let mut gained = vec![0u8; new as usize];
        let mut filled = 0;
        while filled < gained.len() {
            match self.file.read_at(&mut gained[filled..], self.read_to + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "sim: reading the state journal");
                    break;
                }
            }
        }
        gained.truncate(filled);
        // Only whole lines: the last one may still be being written.
        let Some(end) = gained.iter().rposition(|b| *b == b'\n') else { return };
        for line in gained[..end].split(|b| *b == b'\n') {
            apply(&mut self.records, line);
        }
        self.read_to += end as u64 + 1;
    }
}

fn apply<T: DeserializeOwned>(records: &mut HashMap<Uuid, T>, line: &[u8]) {
    match serde_json::from_slice::<Line<T>>(line) {
        Ok(Line { id, value: Some(value) }) => {
            records.insert(id, value);
        }
        Ok(Line { id, value: None }) => {
            records.remove(&id);
        }
        Err(e) => tracing::warn!(error = %e, "sim: skipping an unreadable line of the state journal"),
    }
}

/// Rewrites the journal of `dir` with one line per live record, taking in the per-record files of earlier
/// builds. Run only under the exclusive lock.
fn compact<T: Serialize + DeserializeOwned>(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(JOURNAL);
    let mut records: HashMap<Uuid, T> = HashMap::new();
    let mut lines = 0usize;
    if let Ok(bytes) = std::fs::read(&path) {
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(&bytes[..0], |end| &bytes[..end]);
        for line in whole.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines += 1;
            apply(&mut records, line);
        }
    }
    let legacy = legacy::take::<T>(dir)?;
    let imported = !legacy.is_empty();
    for (id, value) in legacy {
        records.entry(id).or_insert(value);
    }
    if !imported && lines == records.len() {
        return Ok(());
    }
    let fresh = dir.join(format!("{JOURNAL}.new"));
    let mut out = std::io::BufWriter::new(File::create(&fresh)?);
    for (id, value) in &records {
        serde_json::to_writer(&mut out, &Line { id: *id, value: Some(value) })?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&fresh, &path)?;
    legacy::remove(dir)
}

/// The state directories of earlier builds: per record, two files `<id>.0.json`/`<id>.1.json` holding
/// `{"seq": n, "value": ...}` (the higher `seq` that parses wins), or one `<id>.json` holding the value.
mod legacy {
    use super::*;

    #[derive(Deserialize)]
    struct Slot<T> {
        seq: u64,
        value: T,
    }

    fn files(dir: &Path) -> Vec<(Uuid, PathBuf, Option<char>)> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
                let (id, slot) = match name.strip_suffix(".0").or(name.strip_suffix(".1")) {
                    Some(id) => (id.to_string(), name.chars().last()),
                    None => (name.clone(), None),
                };
                Some((Uuid::parse_str(&id).ok()?, e.path(), slot))
            })
            .collect()
    }

    pub(super) fn take<T: DeserializeOwned>(dir: &Path) -> std::io::Result<Vec<(Uuid, T)>> {
        let mut newest: HashMap<Uuid, (u64, T)> = HashMap::new();
        for (id, path, slot) in files(dir) {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let read = match slot {
                Some(_) => serde_json::from_slice::<Slot<T>>(&bytes).ok().map(|s| (s.seq, s.value)),
                None => serde_json::from_slice::<T>(&bytes).ok().map(|v| (0, v)),
            };
            if let Some((seq, value)) = read {
                if newest.get(&id).is_none_or(|(known, _)| seq >= *known) {
                    newest.insert(id, (seq, value));
                }
            }
        }
        Ok(newest.into_iter().map(|(id, (_, value))| (id, value)).collect())
    }

    pub(super) fn remove(dir: &Path) -> std::io::Result<()> {
        for (_, path, _) in files(dir) {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_journals_on_one_directory_see_each_others_writes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Journal::<u32>::open(dir.path()), Journal::<u32>::open(dir.path()));
        let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
        a.put(x, &1).unwrap();
        b.put(x, &2).unwrap();
        b.put(y, &3).unwrap();
        assert_eq!((a.get(x), a.get(y)), (Some(2), Some(3)));
        a.remove(y).unwrap();
        assert_eq!((b.get(y), b.ids()), (None, vec![x]));
    }

    #[test]
    fn a_line_half_written_is_read_once_whole_and_a_torn_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::<u32>::open(dir.path());
        let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
        journal.put(x, &1).unwrap();
        let mut file = OpenOptions::new().append(true).open(dir.path().join(JOURNAL)).unwrap();
        // Another process's line, its first half written so far.
        file.write_all(format!("{{\"id\":\"{y}\",\"val").as_bytes()).unwrap();
        assert_eq!((journal.get(x), journal.get(y)), (Some(1), None));
        file.write_all(b"ue\":5}\n").unwrap();
        assert_eq!(journal.get(y), Some(5));
        // A line torn for good (a host that lost power) is skipped; what follows is read.
        file.write_all(format!("{{\"id\":\"{x}\",\"va\n").as_bytes()).unwrap();
        journal.put(x, &7).unwrap();
        assert_eq!(Journal::<u32>::open(dir.path()).get(x), Some(7));
    }

    #[test]
    fn reopened_alone_the_journal_is_compacted_and_not_while_another_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL);
        let lines = || std::fs::read_to_string(&path).unwrap().lines().count();
        let first = Journal::<u32>::open(dir.path());
        let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
        for n in 0..10 {
            first.put(x, &n).unwrap();
        }
        first.put(y, &1).unwrap();
        first.remove(y).unwrap();
        let second = Journal::<u32>::open(dir.path());
        assert_eq!((lines(), second.get(x)), (12, Some(9)), "not compacted under the first");
        drop((first, second));
        let alone = Journal::<u32>::open(dir.path());
        assert_eq!((lines(), alone.get(x), alone.ids()), (1, Some(9), vec![x]));
    }

    #[test]
    fn the_state_directories_of_earlier_builds_are_taken_in() {
        let dir = tempfile::tempdir().unwrap();
        let (two_slots, one_file) = (Uuid::new_v4(), Uuid::new_v4());
        std::fs::write(dir.path().join(format!("{two_slots}.0.json")), b"{\"seq\": 4, \"value\": 40}").unwrap();
        std::fs::write(dir.path().join(format!("{two_slots}.1.json")), b"{\"seq\": 5, \"value\": 50}").unwrap();
        std::fs::write(dir.path().join(format!("{one_file}.json")), b"7").unwrap();
        let journal = Journal::<u32>::open(dir.path());
        assert_eq!((journal.get(two_slots), journal.get(one_file)), (Some(50), Some(7)));
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, vec![JOURNAL.to_string(), LOCK.to_string()]);
    }
}
