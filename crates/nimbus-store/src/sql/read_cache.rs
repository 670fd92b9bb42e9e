//! SQLite only: the instances and records this server read lately, kept until the next write commits.
//!
//! An indexed read through sqlx's SQLite driver costs two hand-offs to the connection's thread; the
//! instance GET did two of them and reached a quarter of an authenticated no-op's throughput. On SQLite
//! every write of this server moves [`super::notify::Changes`] right after its commit, so a cache emptied
//! whenever that counter moves never answers with something older than the last commit acknowledged: an
//! entry is stamped with the counter's value read *before* its query, and dropped unless the counter still
//! has that value, so a read that raced a commit is never kept past it.
//!
//! Another process writing the same file (a second server, which `BEGIN IMMEDIATE` keeps correct) does not
//! move this server's counter: entries also expire after [`MAX_AGE`], which bounds how stale a read can be
//! in that setup. PostgreSQL has no cache: its other servers' commits arrive by notification, later.
//! Why not a crate: the whole policy is "empty on every change", a map and a counter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_core::instance::Instance;
use uuid::Uuid;

use crate::Record;

/// How long an entry may live without any write of this server: the bound of a read's staleness when
/// another process writes the same file.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);

/// The most entries kept (each an instance or a short list of records); past it the cache starts over.
const MAX_ENTRIES: usize = 20_000;

#[derive(Default)]
pub(crate) struct ReadCache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The change counter's value the entries were read under.
    version: u64,
    /// When the first of them was read.
    since: Option<Instant>,
    instances: HashMap<Uuid, Option<Instance>>,
    records: HashMap<(String, Option<Uuid>), Vec<Record>>,
}

impl State {
    /// Empties the cache unless it holds what was read under `version` within [`MAX_AGE`].
    fn current(&mut self, version: u64) -> bool {
        let fresh = self.since.is_some_and(|t| t.elapsed() < MAX_AGE);
        if self.version != version || !fresh {
            self.instances.clear();
            self.records.clear();
            self.since = None;
            if self.version > version {
                // A read from before the last change: it must not start the cache over at its version.
                return false;
            }
            self.version = version;
        }
        true
    }

    fn room(&mut self) {
        if self.instances.len() + self.records.len() >= MAX_ENTRIES {
            self.instances.clear();
            self.records.clear();
        }
        self.since.get_or_insert_with(Instant::now);
    }
}

impl ReadCache {
    pub(crate) fn instance(&self, version: u64, id: Uuid) -> Option<Option<Instance>> {
        let mut s = self.state.lock().expect("read cache");
        if !s.current(version) {
            return None;
        }
        s.instances.get(&id).cloned()
    }

    pub(crate) fn keep_instance(&self, version: u64, id: Uuid, found: &Option<Instance>) {
        let mut s = self.state.lock().expect("read cache");
        if s.current(version) {
            s.room();
            s.instances.insert(id, found.clone());
        }
    }

    pub(crate) fn records(&self, version: u64, kind: &str, project_id: Option<Uuid>) -> Option<Vec<Record>> {
        let mut s = self.state.lock().expect("read cache");
        if !s.current(version) {
            return None;
        }
        s.records.get(&(kind.to_string(), project_id)).cloned()
    }

    pub(crate) fn keep_records(&self, version: u64, kind: &str, project_id: Option<Uuid>, found: &[Record]) {
        let mut s = self.state.lock().expect("read cache");
        if s.current(version) {
            s.room();
            s.records.insert((kind.to_string(), project_id), found.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Option<Instance> {
        let mut i = crate::conformance::instance(Uuid::nil(), name, 1);
        i.id = Uuid::nil();
        Some(i)
    }

    /// What was read before a write committed is never answered after it.
    #[test]
    fn a_read_that_raced_a_commit_is_not_kept_past_it() {
        let cache = ReadCache::default();
        let id = Uuid::nil();
        cache.keep_instance(1, id, &named("old"));
        assert_eq!(cache.instance(1, id).unwrap().unwrap().name, "old");
        // A commit moved the counter to 2: the entry read under 1 is gone...
        assert!(cache.instance(2, id).is_none());
        // ...and a read that began under 1 (before the commit) and ends now is not kept.
        cache.keep_instance(1, id, &named("old"));
        assert!(cache.instance(2, id).is_none());
        cache.keep_instance(2, id, &named("new"));
        assert_eq!(cache.instance(2, id).unwrap().unwrap().name, "new");
    }

    #[test]
    fn entries_expire_without_any_write() {
        let cache = ReadCache::default();
        cache.keep_instance(1, Uuid::nil(), &named("a"));
        cache.state.lock().unwrap().since = Some(Instant::now() - MAX_AGE);
        assert!(cache.instance(1, Uuid::nil()).is_none());
    }
}
