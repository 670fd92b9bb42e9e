//! Authenticated API keys, kept for a moment so that a request does not read its key and project from the
//! store every time (two reads; half the cost of serving a small GET).
//!
//! Staleness is bounded twice. Every entry is forgotten when the store's revocation counter moves
//! ([`nimbus_store::Store::revocations`]: a key, project or organization deleted, by this server at once
//! after its commit, by another server when its notification arrives, milliseconds later), and no entry
//! is used after [`TTL`] whatever happens. Keys are immutable but for their deletion, so nothing else can
//! go stale. Streams that outlive a request (events, consoles, tunnels) do not rely on this: they ask the
//! store whether their key still stands.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_core::tenancy::{ApiKey, Project};
use tokio::sync::watch;

/// The longest an authentication is reused.
pub(crate) const TTL: Duration = Duration::from_secs(10);
/// Entries at most; past it the cache starts over (a flood of distinct keys costs store reads, no memory).
const CAPACITY: usize = 10_000;

struct Entry {
    key: ApiKey,
    project: Project,
    /// The revocation counter when the key was read, before the read.
    revocations: u64,
    read_at: Instant,
}

pub(crate) struct KeyCache {
    entries: Mutex<HashMap<String, Entry>>,
    revocations: watch::Receiver<u64>,
}

impl KeyCache {
    pub(crate) fn new(revocations: watch::Receiver<u64>) -> KeyCache {
        KeyCache { entries: Mutex::new(HashMap::new()), revocations }
    }

    /// The revocation counter now: read it before reading a key, and hand it to [`KeyCache::put`].
    pub(crate) fn revocations(&self) -> u64 {
        *self.revocations.borrow()
    }

    /// The key found by `lookup` (its secret's hash) and its project, if read since the last revocation
    /// and within [`TTL`].
    pub(crate) fn get(&self, lookup: &str) -> Option<(ApiKey, Project)> {
        let now = self.revocations();
        let entries = self.entries.lock().expect("key cache");
        let entry = entries.get(lookup)?;
        (entry.revocations == now && entry.read_at.elapsed() < TTL).then(|| (entry.key.clone(), entry.project.clone()))
    }

    pub(crate) fn put(&self, lookup: String, key: ApiKey, project: Project, revocations: u64) {
        let mut entries = self.entries.lock().expect("key cache");
        if entries.len() >= CAPACITY || entries.values().next().is_some_and(|e| e.revocations != revocations) {
            entries.clear();
        }
        entries.insert(lookup, Entry { key, project, revocations, read_at: Instant::now() });
    }
}
