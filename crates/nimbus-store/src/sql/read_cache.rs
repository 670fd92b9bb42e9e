//! SQLite only: the instances and records this server read lately, kept until a write of this server
//! touches them.
//!
//! An indexed read through sqlx's SQLite driver costs hand-offs to the connection's thread (one per
//! statement and one per row); the instance GET did two of them and reached a quarter of an authenticated
//! no-op's throughput, and every create read the catalog (instance types, templates) row by row. Every
//! commit of this server tells the cache what it touched before its writer is answered ([`Touched`]: the
//! instances it wrote and the kinds of records, or everything for writes that are not classified), so the
//! cache never answers with something older than the last commit acknowledged. Emptying it on every
//! commit instead made it useless under load, when commits never stop.
//!
//! A read that raced a commit is never kept past it: a reader takes a [`Stamp`] *before* its query, and
//! its result is kept only if nothing it covers was invalidated since that stamp. And a commit is never
//! hidden by the cache from a reader who can already see it elsewhere: from before its `COMMIT` is sent
//! until its invalidation ([`Committing`]), what it touches is neither answered from the cache nor kept
//! (an operation's state, which is not cached, shows a commit the moment it lands; the volume it wrote must
//! not look older when read next).
//!
//! Another process writing the same file (a second server, which `BEGIN IMMEDIATE` keeps correct) tells
//! this cache nothing: entries also expire after [`MAX_AGE`], which bounds how stale a read can be in that
//! setup. PostgreSQL has no cache: its other servers' commits arrive by notification, later.
//! Why not a crate: the policy is this store's own (what a write set touches), over two maps and a counter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_core::instance::Instance;
use uuid::Uuid;

use crate::{Record, Write, WriteSet};

/// How long an entry may live: the bound of a read's staleness when another process writes the same file.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);

/// The most entries kept (each an instance or a short list of records); past it the cache starts over.
const MAX_ENTRIES: usize = 20_000;

/// What a committed write touched, as far as cached reads are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Touched {
    /// Anything (a project's removal, a write outside write sets): every entry goes.
    Everything,
    /// These instances and the records of these kinds; nothing else a cached read covers.
    Only { instances: Vec<Uuid>, kinds: Vec<String> },
}

impl Touched {
    pub(crate) fn nothing() -> Touched {
        Touched::Only { instances: Vec::new(), kinds: Vec::new() }
    }

    /// What `set` touches.
    pub(crate) fn of(set: &WriteSet) -> Touched {
        let mut touched = Touched::nothing();
        for write in &set.writes {
            let Touched::Only { instances, kinds } = &mut touched else { break };
            match write {
                Write::PutInstance { instance, .. } => instances.push(instance.id),
                Write::DeleteInstance { id, .. } => instances.push(*id),
                Write::InsertRecord(r) | Write::UpdateRecord { record: r, .. } => kinds.push(r.kind.clone()),
                Write::DeleteRecord { kind, .. } => kinds.push(kind.clone()),
                // They remove records (and may cascade) beyond what they name.
                Write::DeleteProject { .. } | Write::DeleteOrganization { .. } => touched = Touched::Everything,
                // Neither instances' nor records' rows.
                Write::InsertOperation(_)
                | Write::LeaseOperation { .. }
                | Write::UpdateOperation { .. }
                | Write::AppendEvent(_)
                | Write::PutAlias { .. }
                | Write::DeleteAlias { .. }
                | Write::ExpectAlias { .. }
                | Write::ClaimAddress { .. }
                | Write::ReleaseAddresses { .. }
                | Write::PutApiKey(_)
                | Write::PutHost { .. } => {}
            }
        }
        touched
    }

    /// Adds what `other` touched.
    pub(crate) fn add(&mut self, other: Touched) {
        match (self, other) {
            (Touched::Everything, _) => {}
            (me, Touched::Everything) => *me = Touched::Everything,
            (Touched::Only { instances, kinds }, Touched::Only { instances: more, kinds: other_kinds }) => {
                instances.extend(more);
                kinds.extend(other_kinds);
            }
        }
    }
}

/// When a read began: see [`ReadCache::stamp`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp(u64);

#[derive(Default)]
pub(crate) struct ReadCache {
    state: Mutex<State>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Instance(Uuid),
    Records(String, Option<Uuid>),
}

#[derive(Default)]
struct State {
    /// Moved by every invalidation.
    clock: u64,
    /// Reads stamped before this are not kept (everything was invalidated then).
    floor: u64,
    /// When each key was last invalidated, on `clock`.
    invalidated: HashMap<Key, u64>,
    /// Kinds of records, likewise (a kind's invalidation covers every project's list of it).
    kinds_invalidated: HashMap<String, u64>,
    /// When the oldest entry was read.
    since: Option<Instant>,
    instances: HashMap<Uuid, Option<Instance>>,
    /// Lists of records by kind and project.
    records: HashMap<(String, Option<Uuid>), Vec<Record>>,
    /// Records by kind and id.
    by_id: HashMap<(String, Uuid), Option<Record>>,
    /// Commits in flight ([`Committing`]): what they touch is not answered from the cache nor kept.
    committing_everything: usize,
    committing_instances: HashMap<Uuid, usize>,
    committing_kinds: HashMap<String, usize>,
}

impl State {
    /// Drops every entry when the oldest is past [`MAX_AGE`].
    fn expire(&mut self) {
        if self.since.is_some_and(|t| t.elapsed() >= MAX_AGE) {
            self.forget_all();
        }
    }

    fn forget_all(&mut self) {
        self.instances.clear();
        self.records.clear();
        self.by_id.clear();
        self.invalidated.clear();
        self.kinds_invalidated.clear();
        self.since = None;
        self.floor = self.clock;
    }

    /// Whether a commit in flight touches `key`.
    fn in_flight(&self, key: &Key) -> bool {
        self.committing_everything > 0
            || match key {
                Key::Instance(id) => self.committing_instances.contains_key(id),
                Key::Records(kind, _) => self.committing_kinds.contains_key(kind),
            }
    }

    /// Counts a commit of `touched` in (`1`) or out (`-1`).
    fn count_committing(&mut self, touched: &Touched, by: isize) {
        fn count<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, by: isize) {
            let n = map.entry(key).or_default();
            *n = n.saturating_add_signed(by);
            if *n == 0 {
                map.retain(|_, n| *n > 0);
            }
        }
        match touched {
            Touched::Everything => self.committing_everything = self.committing_everything.saturating_add_signed(by),
            Touched::Only { instances, kinds } => {
                for id in instances {
                    count(&mut self.committing_instances, *id, by);
                }
                for kind in kinds {
                    count(&mut self.committing_kinds, kind.clone(), by);
                }
            }
        }
    }

    /// Whether a read stamped `stamp` of `key` may be kept.
    fn may_keep(&self, stamp: Stamp, key: &Key) -> bool {
        let since = |t: Option<&u64>| t.is_none_or(|t| *t <= stamp.0);
        !self.in_flight(key)
            && stamp.0 >= self.floor
            && since(self.invalidated.get(key))
            && match key {
                Key::Records(kind, _) => since(self.kinds_invalidated.get(kind)),
                Key::Instance(_) => true,
            }
    }

    /// Forgets what a commit touched, and makes reads stamped before now unkeepable for it.
    fn invalidate(&mut self, touched: &Touched) {
        self.clock += 1;
        let now = self.clock;
        match touched {
            Touched::Everything => self.forget_all(),
            Touched::Only { instances, kinds } => {
                for id in instances {
                    self.instances.remove(id);
                    self.invalidated.insert(Key::Instance(*id), now);
                }
                for kind in kinds {
                    self.records.retain(|(k, _), _| k != kind);
                    self.by_id.retain(|(k, _), _| k != kind);
                    self.kinds_invalidated.insert(kind.clone(), now);
                }
            }
        }
    }

    fn room(&mut self) {
        if self.instances.len() + self.records.len() + self.by_id.len() + self.invalidated.len() >= MAX_ENTRIES {
            self.forget_all();
        }
        self.since.get_or_insert_with(Instant::now);
    }
}

impl ReadCache {
    /// Taken before a read's query; its result is kept only if nothing it covers was invalidated since.
    pub(crate) fn stamp(&self) -> Stamp {
        Stamp(self.state.lock().expect("read cache").clock)
    }

    /// Called before a commit's `COMMIT` is sent: until the returned guard is dropped (after the commit,
    /// before its writers are answered), what it touches is not answered from the cache nor kept; dropped,
    /// it forgets what the commit touched (whether the commit landed or not: forgetting is always safe).
    pub(crate) fn committing(&self, touched: Touched) -> Committing<'_> {
        self.state.lock().expect("read cache").count_committing(&touched, 1);
        Committing { cache: self, touched }
    }

    pub(crate) fn instance(&self, id: Uuid) -> Option<Option<Instance>> {
        let mut s = self.state.lock().expect("read cache");
        s.expire();
        if s.in_flight(&Key::Instance(id)) {
            return None;
        }
        s.instances.get(&id).cloned()
    }

    pub(crate) fn keep_instance(&self, stamp: Stamp, id: Uuid, found: &Option<Instance>) {
        let mut s = self.state.lock().expect("read cache");
        if s.may_keep(stamp, &Key::Instance(id)) {
            s.room();
            s.instances.insert(id, found.clone());
        }
    }

    pub(crate) fn records(&self, kind: &str, project_id: Option<Uuid>) -> Option<Vec<Record>> {
        let mut s = self.state.lock().expect("read cache");
        s.expire();
        if s.in_flight(&Key::Records(kind.to_string(), project_id)) {
            return None;
        }
        s.records.get(&(kind.to_string(), project_id)).cloned()
    }

    pub(crate) fn record(&self, kind: &str, id: Uuid) -> Option<Option<Record>> {
        let mut s = self.state.lock().expect("read cache");
        s.expire();
        if s.in_flight(&Key::Records(kind.to_string(), None)) {
            return None;
        }
        s.by_id.get(&(kind.to_string(), id)).cloned()
    }

    pub(crate) fn keep_record(&self, stamp: Stamp, kind: &str, id: Uuid, found: &Option<Record>) {
        let mut s = self.state.lock().expect("read cache");
        if s.may_keep(stamp, &Key::Records(kind.to_string(), None)) {
            s.room();
            s.by_id.insert((kind.to_string(), id), found.clone());
        }
    }

    pub(crate) fn keep_records(&self, stamp: Stamp, kind: &str, project_id: Option<Uuid>, found: &[Record]) {
        let mut s = self.state.lock().expect("read cache");
        if s.may_keep(stamp, &Key::Records(kind.to_string(), project_id)) {
            s.room();
            s.records.insert((kind.to_string(), project_id), found.to_vec());
        }
    }
}

/// A commit in flight (see [`ReadCache::committing`]).
pub(crate) struct Committing<'a> {
    cache: &'a ReadCache,
    touched: Touched,
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        let mut s = self.cache.state.lock().expect("read cache");
        // In one step: no reader is answered from the cache between the two.
        s.invalidate(&self.touched);
        s.count_committing(&self.touched, -1);
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

    fn only(instances: Vec<Uuid>, kinds: &[&str]) -> Touched {
        Touched::Only { instances, kinds: kinds.iter().map(|k| k.to_string()).collect() }
    }

    /// What was read before a write committed is never answered after it.
    #[test]
    fn a_read_that_raced_a_commit_is_not_kept_past_it() {
        let cache = ReadCache::default();
        let id = Uuid::nil();
        let stamp = cache.stamp();
        cache.keep_instance(stamp, id, &named("old"));
        assert_eq!(cache.instance(id).unwrap().unwrap().name, "old");
        // A commit wrote the instance: the entry is gone...
        drop(cache.committing(only(vec![id], &[])));
        assert!(cache.instance(id).is_none());
        // ...and a read that began before the commit and ends now is not kept.
        cache.keep_instance(stamp, id, &named("old"));
        assert!(cache.instance(id).is_none());
        cache.keep_instance(cache.stamp(), id, &named("new"));
        assert_eq!(cache.instance(id).unwrap().unwrap().name, "new");
    }

    /// Between a commit landing and its invalidation, another reader may already see it (an operation's
    /// state is read uncached): the cache must not answer it the older instance or records meanwhile.
    #[test]
    fn a_commit_in_flight_is_never_hidden_by_the_cache() {
        let cache = ReadCache::default();
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let stamp = cache.stamp();
        cache.keep_instance(stamp, id, &named("old"));
        cache.keep_instance(stamp, other, &named("other"));
        cache.keep_record(stamp, "volume", id, &None);
        cache.keep_records(stamp, "template", None, &[]);
        let committing = cache.committing(only(vec![id], &["volume"]));
        // The COMMIT has landed (or is landing): nothing it touched is answered, nor kept.
        assert!(cache.instance(id).is_none() && cache.record("volume", id).is_none());
        cache.keep_instance(cache.stamp(), id, &named("read during the commit"));
        cache.keep_record(cache.stamp(), "volume", id, &None);
        assert!(cache.instance(id).is_none() && cache.record("volume", id).is_none());
        // What it did not touch still is.
        assert!(cache.instance(other).is_some() && cache.records("template", None).is_some());
        drop(committing);
        assert!(cache.instance(id).is_none(), "forgotten once committed");
        cache.keep_instance(stamp, id, &named("old"));
        assert!(cache.instance(id).is_none(), "a read begun before the commit is not kept after it");
        cache.keep_instance(cache.stamp(), id, &named("new"));
        assert_eq!(cache.instance(id).unwrap().unwrap().name, "new");
        // Two commits of one kind at once: the kind is held until both are done.
        let (a, b) = (cache.committing(only(vec![], &["volume"])), cache.committing(only(vec![], &["volume"])));
        drop(a);
        cache.keep_record(cache.stamp(), "volume", id, &None);
        assert!(cache.record("volume", id).is_none());
        drop(b);
        cache.keep_record(cache.stamp(), "volume", id, &None);
        assert!(cache.record("volume", id).is_some());
        let everything = cache.committing(Touched::Everything);
        assert!(cache.instance(other).is_none());
        drop(everything);
    }

    #[test]
    fn a_commit_forgets_only_what_it_touched() {
        let cache = ReadCache::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let stamp = cache.stamp();
        cache.keep_instance(stamp, a, &named("a"));
        cache.keep_instance(stamp, b, &named("b"));
        cache.keep_records(stamp, "template", None, &[]);
        cache.keep_records(stamp, "template", Some(a), &[]);
        cache.keep_records(stamp, "ssh_key", Some(a), &[]);
        cache.keep_record(stamp, "template", a, &None);
        cache.keep_record(stamp, "ssh_key", a, &None);
        drop(cache.committing(only(vec![a], &["template"])));
        assert!(cache.record("template", a).is_none() && cache.record("ssh_key", a).is_some());
        assert!(cache.instance(a).is_none() && cache.instance(b).is_some());
        assert!(cache.records("template", None).is_none() && cache.records("template", Some(a)).is_none());
        assert!(cache.records("ssh_key", Some(a)).is_some());
        // A read of another project's templates that began before the commit is not kept either.
        cache.keep_records(stamp, "template", Some(b), &[]);
        assert!(cache.records("template", Some(b)).is_none());
        drop(cache.committing(Touched::Everything));
        assert!(cache.instance(b).is_none() && cache.records("ssh_key", Some(a)).is_none());
        cache.keep_instance(stamp, b, &named("b"));
        assert!(cache.instance(b).is_none(), "read before everything went");
    }

    #[test]
    fn what_a_write_set_touches() {
        let id = Uuid::new_v4();
        let mut set = WriteSet::new();
        set.push(Write::DeleteInstance { id, expected_generation: 1 });
        set.push(Write::DeleteRecord { kind: "volume".into(), id, expected_generation: None });
        set.push(Write::ReleaseAddresses { owner: id });
        assert_eq!(Touched::of(&set), only(vec![id], &["volume"]));
        set.push(Write::DeleteProject { id });
        assert_eq!(Touched::of(&set), Touched::Everything);
    }

    #[test]
    fn entries_expire() {
        let cache = ReadCache::default();
        cache.keep_instance(cache.stamp(), Uuid::nil(), &named("a"));
        cache.state.lock().unwrap().since = Some(Instant::now() - MAX_AGE);
        assert!(cache.instance(Uuid::nil()).is_none());
    }
}
