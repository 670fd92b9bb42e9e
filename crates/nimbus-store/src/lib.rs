//! Persistence behind one trait. The engine is the only caller; only this crate writes SQL.
//!
//! Design: resources are stored as JSON documents beside the few columns that queries filter, sort or
//! count on. Every multi-row change goes through [`Store::apply`], one transaction that checks the
//! generations it was given (compare-and-swap), applies the writes, enforces the project's quota on the
//! result, and rolls everything back when any part fails.
//!
//! Nothing here relies on a lock held in one process's memory: several `nimbus server` processes may share
//! one PostgreSQL database, and every guarantee below holds across them. Every update of a stored document
//! is a compare-and-swap on its generation (or, for an operation, on the lease that its worker holds);
//! uniqueness (names kept as aliases, addresses) is a unique index, so two writers racing for one name or one
//! address cannot both win.
//!
//! Two backends implement the trait with one body of portable SQL ([`sql`]): SQLite, the embedded default
//! (one machine), and PostgreSQL (any number of servers). Both pass [`conformance`].

use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::audit::{AuditEntry, AuditQuery};
use nimbus_core::catalog::Zone;
use nimbus_core::event::Event;
use nimbus_core::host::{Allocation, Capacity, Host};
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::{Operation, OperationState};
use nimbus_core::tenancy::{ApiKey, Organization, Project, Quota, Usage};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod conformance;
pub mod seal;
pub mod sql;
pub mod testing;

pub use seal::SealKeys;
pub use sql::integrity::{backup_sqlite, restore_sqlite, sqlite_file, Restored};
pub use sql::{SqlStore, SEALED_RECORD_KINDS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-swap lost: someone else changed the row first (or took the address, or the lease). The
    /// caller re-reads and retries.
    #[error("concurrent update of {0}")]
    Conflict(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The placement's host has no room for the set's result (or would hold two members of one
    /// anti-affinity group): the caller places again on fresh figures.
    #[error("no room: {0}")]
    NoRoom(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("store: {0}")]
    Backend(String),
    /// The database cannot take the write now, for a reason that should pass: its disk is full or
    /// read-only, it cannot be reached. Nothing was written; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request's hold on its idempotency key was taken over by a retry (this request's server stalled
    /// past the hold's lease): nothing was written, and the retry answers for the key.
    #[error("superseded: {0}")]
    Superseded(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An operation claimed by [`Store::claim_and_start`], as its claimer will run it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub operation: Operation,
    /// Whether another operation was left to claim at that moment (so idle workers are worth waking).
    pub more: bool,
}

/// See [`Store::claim_and_start`].
pub type StartClaimed = Box<dyn FnOnce(Operation) -> (Operation, WriteSet) + Send>;

/// A document of a kind that needs no columns of its own (templates, snapshots, SSH keys, groups, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: String,
    pub id: Uuid,
    /// `None` for records every project sees (public templates).
    pub project_id: Option<Uuid>,
    pub name: String,
    pub body: serde_json::Value,
    /// Bumped by every update: the compare-and-swap token of [`Write::UpdateRecord`]. A new record has 1.
    pub generation: i64,
}

impl Record {
    /// A new record (generation 1) holding `value`.
    pub fn new<T: Serialize>(kind: &str, id: Uuid, project_id: Option<Uuid>, name: &str, value: &T) -> Record {
        Record {
            kind: kind.to_string(),
            id,
            project_id,
            name: name.to_string(),
            body: serde_json::to_value(value).expect("domain types serialize"),
            generation: 1,
        }
    }
    pub fn decode<T: for<'de> Deserialize<'de>>(&self) -> StoreResult<T> {
        serde_json::from_value(self.body.clone())
            .map_err(|e| StoreError::Backend(format!("corrupt {}: {e}", self.kind)))
    }
    /// The next version of this record: `value` as its body (and `name`), one generation on. Write it with
    /// [`Write::UpdateRecord`] expecting this record's generation.
    pub fn next<T: Serialize>(&self, name: &str, value: &T) -> Record {
        Record {
            name: name.to_string(),
            body: serde_json::to_value(value).expect("domain types serialize"),
            generation: self.generation + 1,
            ..self.clone()
        }
    }
}

/// One write inside a [`WriteSet`].
// A write set lives for one request and holds a handful of writes; boxing the instance would only add
// an allocation to every write.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Write {
    /// Inserts the instance when `expected_generation` is `None` (`AlreadyExists` if its id is taken),
    /// assigning it its `numeric_id` (never reused); otherwise updates it only if its stored generation still
    /// equals that number (`Conflict` otherwise, or when it is gone). The instance carries its new
    /// generation (and, on update, the `numeric_id` it was read with).
    PutInstance { instance: Instance, expected_generation: Option<i64> },
    /// `Conflict` unless the instance is still at `expected_generation`.
    DeleteInstance { id: Uuid, expected_generation: i64 },
    /// Records a new operation, unclaimed: any server's worker may claim it ([`Store::claim_operation`]).
    /// `AlreadyExists` if its id is taken.
    InsertOperation(Operation),
    /// Holds the operation inserted earlier in the same set for `lease_owner` until `lease` from now (by the
    /// database's clock): the server recording it runs it itself, without a claim. When the holder dies
    /// the lease expires and any server's worker claims it as usual. `Conflict` when it is held already.
    LeaseOperation { id: Uuid, lease_owner: String, lease: Duration },
    /// Updates an operation on behalf of the worker holding its lease: `Conflict` unless `lease_owner`
    /// still holds it (another worker took it over when the lease expired). An operation written in a final
    /// state is no longer claimable and its lease is dropped.
    UpdateOperation { operation: Operation, lease_owner: String },
    /// Inserts a record: `AlreadyExists` if one of its kind has its id.
    InsertRecord(Record),
    /// Replaces a record only if its stored generation still equals `expected_generation` (`Conflict`
    /// otherwise, or when it is gone). `record.generation` is the new one (see [`Record::next`]).
    UpdateRecord { record: Record, expected_generation: i64 },
    /// Deletes a record. With `expected_generation`, only that version (`Conflict` otherwise, or when it is
    /// gone); without, whatever version is there, and a missing record is no error.
    DeleteRecord { kind: String, id: Uuid, expected_generation: Option<i64> },
    /// Stored with the next sequence number. Events become visible in sequence order: a reader that has seen
    /// sequence number N never later finds a new event numbered below N (on PostgreSQL, event appends are
    /// serialized to their commit order).
    AppendEvent(Event),
    /// A unique name for an id: a dialect's stable id for a canonical one (`inst_…` for an instance UUID),
    /// or a name that must be unique within a scope (an account's username). `AlreadyExists` when the alias
    /// is taken, or when the id already has an alias of this kind.
    PutAlias { kind: String, alias: String, id: Uuid },
    /// Frees an alias (a missing one is no error).
    DeleteAlias { kind: String, alias: String },
    /// Fails the set with `Conflict` unless the alias still names `id`: writes that are only right while
    /// a unique name is held (an account's username) make it their precondition.
    ExpectAlias { kind: String, alias: String, id: Uuid },
    /// Takes host number `host` of `network` for `owner` (an instance, an elastic IP): `Conflict` when
    /// someone holds it already. Find candidates with [`Store::free_addresses`].
    ClaimAddress { network: String, host: u32, owner: Uuid },
    /// Gives back every address `owner` holds, in every network.
    ReleaseAddresses { owner: Uuid },
    /// Inserts an API key, inside a set (`Store::put_api_key` does it alone).
    PutApiKey(ApiKey),
    /// Removes a project that holds no instances, with what only it used: its API keys, its records and
    /// its idempotency keys. Its operations and events stay as history. `Conflict` while an instance of it
    /// remains, `NotFound` when there is no such project.
    DeleteProject { id: Uuid },
    /// Removes an organization that has no projects left: `Conflict` otherwise, `NotFound` when missing.
    DeleteOrganization { id: Uuid },
    /// Inserts a host (`AlreadyExists` when its name or id is taken) when `expected_generation` is `None`,
    /// else replaces it only if it is still at that generation (`Conflict` otherwise). Its heartbeat
    /// lease is left as it is (see [`Store::renew_host`]).
    PutHost { host: Host, generation: i64, expected_generation: Option<i64> },
}

/// An all-or-nothing transaction.
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    pub writes: Vec<Write>,
    /// After the writes, the project's live instances must fit its quota, or everything rolls back. Sets
    /// that check the same project's quota are serialized (on PostgreSQL the project's row is locked at the
    /// start of the transaction), so two servers creating at once cannot overrun it together.
    pub enforce_quota_of: Option<Uuid>,
    /// After the writes, the placement's host must still have room for what is placed on it, and must not
    /// hold two members of one anti-affinity group, or everything rolls back with `NoRoom`. Sets placing on
    /// one host are serialized (its row is locked first), so two servers placing at once cannot overfill it.
    pub placement: Option<Placement>,
}

/// The check of [`WriteSet::placement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The host's name.
    pub host: String,
    /// The most it may carry (its capacity with the operator's overcommit applied).
    pub limit: Capacity,
    /// The instance placed, and the anti-affinity groups none of whose other members may be on the host.
    pub instance_id: Uuid,
    pub anti_affinity_groups: Vec<Uuid>,
}

/// A host as stored: the document, its version, and whether its heartbeat lease is current (judged by
/// the database's clock).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHost {
    pub host: Host,
    pub generation: i64,
    pub reachable: bool,
}

impl WriteSet {
    pub fn new() -> WriteSet {
        WriteSet::default()
    }
    pub fn push(&mut self, w: Write) -> &mut Self {
        self.writes.push(w);
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct InstanceQuery {
    pub project_id: Option<Uuid>,
    /// Only this instance.
    pub id: Option<Uuid>,
    /// With no `state` asked for, destroyed instances' records (kept for a while after their deletion) are
    /// left out, as `get_instance` leaves them out, unless this says to list them too.
    pub with_destroyed: bool,
    /// Only instances placed on this host.
    pub host: Option<String>,
    pub state: Option<InstanceState>,
    pub name: Option<String>,
    /// In any of these states (empty: any). With `state` too, both hold.
    pub states: Vec<InstanceState>,
    /// Only names that contain this text (compared as it is: case counts).
    pub name_contains: Option<String>,
    /// Only instances with every one of these labels, with the value given (`None`: any value). Served by
    /// an index, so a selector matching a few of many instances reads only those.
    pub labels: Vec<(String, Option<String>)>,
    /// Only instances placed on no host (made before hosts existed).
    pub unplaced: bool,
    /// Only instances with a scheduled shutdown (`expected_shutdown_at`), read through a partial index so
    /// that the reconciler's pass costs what is scheduled, not what exists.
    pub shutdown_scheduled: bool,
    /// Only ids whose text (lowercase, hyphenated) contains this.
    pub id_contains: Option<String>,
    /// Of any of these instance types, by name (empty: any).
    pub instance_types: Vec<String>,
    /// Only instance types whose name begins with this.
    pub instance_type_prefix: Option<String>,
    /// Only instance types whose name does not begin with this.
    pub instance_type_not_prefix: Option<String>,
    /// Only instances with an address whose text contains this.
    pub ip_contains: Option<String>,
    /// Only instances whose tags (the labels, with the system labels over them) hold every one of these
    /// keys with that value.
    pub tags_equal: Vec<(String, String)>,
    /// Only instances with a tag (as in `tags_equal`) of any of these values (empty: any).
    pub tag_values: Vec<String>,
    /// Only instances not in this security group.
    pub not_in_security_group: Option<Uuid>,
    /// Only instances last changed at or after this time, and at or before this one.
    pub updated_since: Option<time::OffsetDateTime>,
    pub updated_until: Option<time::OffsetDateTime>,
    /// Keyset pagination: only ids greater than this one.
    pub after: Option<Uuid>,
    /// Keyset pagination backwards: only ids smaller than this one, the nearest first (descending order).
    pub before: Option<Uuid>,
    /// The order of the listing. Keyset pagination (`after`, `before`) is by id and goes with the default.
    pub order: InstanceOrder,
    /// Offset pagination, for the providers whose pages are numbered: skips this many.
    pub offset: u32,
    /// At most this many (0: all).
    pub limit: u32,
}

/// How instances are listed; equal names or states are in id order (oldest first), so every order is total
/// and an offset always means the same place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InstanceOrder {
    /// By id: creation order, since ids are time-ordered UUIDv7.
    #[default]
    Oldest,
    Newest,
    NameAscending,
    NameDescending,
    /// By the state's name (`InstanceState::as_str`).
    StateAscending,
    StateDescending,
}

#[derive(Debug, Clone, Default)]
pub struct OperationQuery {
    pub project_id: Option<Uuid>,
    pub target_id: Option<Uuid>,
    /// Only operations not yet finished (pending or running).
    pub unfinished: bool,
    /// In any of these states (empty: any).
    pub states: Vec<OperationState>,
    /// Of any of these kinds (empty: any).
    pub kinds: Vec<nimbus_core::state_machine::Action>,
    /// Only operations created at or after this time, and at or before this one.
    pub created_since: Option<time::OffsetDateTime>,
    pub created_until: Option<time::OffsetDateTime>,
    /// Keyset pagination, oldest first: only ids greater than this one.
    pub after: Option<Uuid>,
    /// Newest first instead of oldest first (ids are time-ordered).
    pub newest_first: bool,
    /// Offset pagination, for the providers whose pages are numbered: skips this many.
    pub offset: u32,
    /// At most this many (0: all).
    pub limit: u32,
}

/// Whose an `Idempotency-Key` is: a key belongs to the API key that sent it, so two API keys of one project
/// may use the same string without ever meeting (neither is answered with the other's response).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyScope {
    pub project_id: Uuid,
    pub api_key_id: String,
    pub key: String,
}

/// One request's hold on an idempotency key, from [`IdempotencyClaim::New`] until its response is stored.
///
/// The hold is what makes a key apply at most once across crashes and servers: every write set committed
/// while the request runs inside [`holding`] also records, in the same transaction and only if this hold
/// still holds the key, that the key's request has applied (and what it made). So after a crash a retry
/// finds either a key whose request committed nothing, which it may take over once the hold's lease has
/// expired (a late write of the old holder is then refused, its transaction rolled back), or a key whose
/// request committed, which is answered from what it made and never run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyHold {
    pub scope: IdempotencyScope,
    /// The server the request runs on (its lease-holder id): a restarted server drops the holds of its
    /// earlier run at once ([`Store::idempotency_sweep`]).
    pub server: String,
    /// This request's own name; unique.
    pub holder: String,
}

/// What a request with an `Idempotency-Key` finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// First time, or a retry taking over from a request that died before committing anything: run the
    /// request inside [`holding`] this hold, then store the response with `idempotency_finish`.
    New(IdempotencyHold),
    /// Done before with the same request: here is the stored response.
    Replay { status: u16, body: String },
    /// The first request committed its writes but its response was never stored (its server died, or the
    /// store failed, in between): `result` names what it made (see [`applied_result`]). Answer from that;
    /// never run the request again.
    Applied { result: serde_json::Value },
    /// Another request with the same key is running now (its hold's lease is live): retry shortly.
    InProgress,
    /// The key was used before with a different request.
    Mismatch,
}

/// Idempotency keys by what became of them, for audits and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdempotencyAudit {
    /// Answered: the response is stored.
    pub answered: u64,
    /// The request committed, its response was never stored; answered from what it made.
    pub applied: u64,
    /// Held by a running request whose lease is live.
    pub held: u64,
    /// Held by a request whose lease expired before it committed anything: its server died. A retry takes
    /// it over; [`Store::idempotency_sweep`] removes it.
    pub abandoned: u64,
    /// Unanswered keys from before keys had holders (schema version 2 and older): refused as in progress
    /// until they expire, since nothing tells whether their request committed.
    pub unknown: u64,
}

tokio::task_local! {
    static HOLD: IdempotencyHold;
}

/// Runs `f` (a request's handler) holding an idempotency key: every write set the store commits inside it
/// (in this task) records that the key's request applied, in the same transaction, and fails with
/// [`StoreError::Superseded`] (writing nothing) if the hold was taken over meanwhile.
pub async fn holding<F: std::future::Future>(hold: IdempotencyHold, f: F) -> F::Output {
    HOLD.scope(hold, f).await
}

/// The hold the current task runs under, if any.
pub fn current_hold() -> Option<IdempotencyHold> {
    HOLD.try_with(|h| h.clone()).ok()
}

/// What a write set made, as an [`IdempotencyClaim::Applied`] result names it: the operation it recorded
/// (`{"operation": id}`), else the API key, record or instance it wrote first (`{"api_key": key_id}`,
/// `{"record": {"kind": k, "id": id}}`, `{"instance": id}`), else `{}`.
pub fn applied_result(set: &WriteSet) -> serde_json::Value {
    use serde_json::json;
    let first = |f: &dyn Fn(&Write) -> Option<serde_json::Value>| set.writes.iter().find_map(f);
    first(&|w| match w {
        Write::InsertOperation(op) => Some(json!({ "operation": op.id })),
        _ => None,
    })
    .or_else(|| {
        first(&|w| match w {
            Write::PutApiKey(k) => Some(json!({ "api_key": k.key_id })),
            _ => None,
        })
    })
    .or_else(|| {
        first(&|w| match w {
            Write::InsertRecord(r) => Some(json!({ "record": { "kind": r.kind, "id": r.id } })),
            _ => None,
        })
    })
    .or_else(|| {
        first(&|w| match w {
            Write::PutInstance { instance, .. } => Some(json!({ "instance": instance.id })),
            _ => None,
        })
    })
    .unwrap_or_else(|| json!({}))
}

/// An address held in the store's allocator: host number `host` of `network`, held by `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressHold {
    pub network: String,
    pub host: u32,
    pub owner: Uuid,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    // Tenancy.
    /// Inserts or replaces an organization.
    async fn put_organization(&self, org: &Organization) -> StoreResult<()>;
    async fn get_organization(&self, id: Uuid) -> StoreResult<Option<Organization>>;
    /// Inserts a project; the store assigns its `numeric_id`.
    async fn create_project(&self, project: &Project) -> StoreResult<Project>;
    async fn get_project(&self, id: Uuid) -> StoreResult<Option<Project>>;
    async fn get_project_by_numeric_id(&self, numeric_id: i64) -> StoreResult<Option<Project>>;
    async fn list_projects(&self, organization_id: Uuid) -> StoreResult<Vec<Project>>;
    /// Replaces the project's quota, atomically (a concurrent change of the project is not lost).
    async fn set_quota(&self, project_id: Uuid, quota: Quota) -> StoreResult<()>;
    async fn usage(&self, project_id: Uuid) -> StoreResult<Usage>;
    async fn count_api_keys(&self) -> StoreResult<u64>;
    /// `AlreadyExists` when the key id or the secret's hash is taken.
    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()>;
    async fn get_api_key(&self, key_id: &str) -> StoreResult<Option<ApiKey>>;
    async fn get_api_key_by_secret_hash(&self, sha256_hex: &str) -> StoreResult<Option<ApiKey>>;
    async fn list_api_keys(&self, project_id: Uuid) -> StoreResult<Vec<ApiKey>>;
    async fn delete_api_key(&self, key_id: &str) -> StoreResult<bool>;

    // Catalog.
    /// Inserts or replaces a zone.
    async fn put_zone(&self, zone: &Zone) -> StoreResult<()>;
    async fn list_zones(&self) -> StoreResult<Vec<Zone>>;

    // Documents.
    async fn get_record(&self, kind: &str, id: Uuid) -> StoreResult<Option<Record>>;
    /// Records of a kind visible to a project: its own plus public ones (`project_id` NULL), in id order.
    /// `None` lists all.
    async fn list_records(&self, kind: &str, project_id: Option<Uuid>) -> StoreResult<Vec<Record>>;

    // Instances and operations.
    async fn get_instance(&self, id: Uuid) -> StoreResult<Option<Instance>>;
    /// In the query's order (id order by default).
    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<Vec<Instance>>;
    /// How many instances `list_instances` would list without paging (`after`, `before`, `offset` and
    /// `limit` are not looked at): the count a numbered page shows.
    async fn count_instances(&self, query: &InstanceQuery) -> StoreResult<u64>;
    async fn get_operation(&self, id: Uuid) -> StoreResult<Option<Operation>>;
    /// In id order (ids are time-ordered UUIDv7: oldest first), or newest first when the query says so.
    async fn list_operations(&self, query: &OperationQuery) -> StoreResult<Vec<Operation>>;
    /// How many operations `list_operations` would list without paging (`after`, `offset` and `limit` are
    /// not looked at).
    async fn count_operations(&self, query: &OperationQuery) -> StoreResult<u64>;

    /// Applies every write or none; see [`WriteSet`].
    async fn apply(&self, set: WriteSet) -> StoreResult<()>;

    // Leased operations: any server's workers may run any operation, one at a time.
    /// Claims the oldest unfinished operation that nobody holds (pending ones never claimed, and any whose
    /// lease has expired because its holder died or gave it up) for `owner` until `lease` from now, and
    /// returns it. Two callers never get the same operation while its lease runs (`FOR UPDATE SKIP LOCKED`
    /// on PostgreSQL; a write transaction on SQLite). Expiry is judged by the database's clock, so servers'
    /// clocks need not agree.
    async fn claim_operation(&self, owner: &str, lease: Duration) -> StoreResult<Option<Operation>>;

    /// [`Store::claim_operation`], and in the same transaction what the claimer records on taking the
    /// operation: `start` gets it as claimed and gives it back as the claimer will run it, with the writes
    /// that record that (its attempt counted, its state running, its event). One commit instead of two; if
    /// those writes fail, the claim is undone with them.
    async fn claim_and_start(&self, owner: &str, lease: Duration, start: StartClaimed) -> StoreResult<Option<Claimed>>;
    /// Extends `owner`'s lease on the operation to `lease` from now: `false` when `owner` no longer holds
    /// it (it expired and another worker claimed it, or the operation ended).
    async fn renew_lease(&self, id: Uuid, owner: &str, lease: Duration) -> StoreResult<bool>;
    /// Gives a held lease up at once (a worker stopping cleanly), so another worker may claim it now
    /// instead of after expiry. Not holding it is no error.
    async fn release_lease(&self, id: Uuid, owner: &str) -> StoreResult<()>;
    /// Gives up every lease held by `server` or by any of its claims (owners named `<server>/<claim>`): a
    /// server restarting after a crash takes back what its earlier run held. Returns how many.
    async fn release_leases_of(&self, server: &str) -> StoreResult<u64>;

    // Events, in sequence order.
    async fn events_after(&self, project_id: Option<Uuid>, after_seq: i64, limit: u32) -> StoreResult<Vec<Event>>;
    /// The sequence number of the newest event (of the project, if given); 0 when there is none.
    async fn latest_event_seq(&self, project_id: Option<Uuid>) -> StoreResult<i64>;

    /// A counter that moves after every committed write set, in this process or (on PostgreSQL, through
    /// LISTEN/NOTIFY) in any other process on the same database. Workers waiting for operations, operation
    /// waiters and event streams wait on it and then re-read; it says only that something may have changed.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
    /// A counter that moves when credentials may have been revoked: after an API key, a project or an
    /// organization is deleted, here (once committed) or, on PostgreSQL, by any other process (within the
    /// notification's delivery, milliseconds; at once when the listener had to reconnect). Caches of
    /// authenticated keys are dropped when it moves.
    fn revocations(&self) -> tokio::sync::watch::Receiver<u64>;
    /// A counter that moves when an operation may have become claimable: one was recorded, or a lease was
    /// given back (here once committed, or by any other process on PostgreSQL). Idle workers wait on it
    /// (and on a short poll for leases that expire without a write).
    fn new_work(&self) -> tokio::sync::watch::Receiver<u64>;

    // Dialect aliases and unique names.
    async fn resolve_alias(&self, kind: &str, alias: &str) -> StoreResult<Option<Uuid>>;
    async fn alias_of(&self, kind: &str, id: Uuid) -> StoreResult<Option<String>>;

    // Address allocation.
    /// Up to `limit` host numbers of `network` in `first..=last` that nobody holds, lowest first. Reading
    /// them reserves nothing: a create claims one with [`Write::ClaimAddress`] in its own transaction and
    /// tries another when it loses the race.
    async fn free_addresses(&self, network: &str, first: u32, last: u32, limit: u32) -> StoreResult<Vec<u32>>;
    /// Every address held (in `network`, if given), for audits and tests: an address held by nothing is a leak.
    async fn list_addresses(&self, network: Option<&str>) -> StoreResult<Vec<AddressHold>>;

    // Hosts.
    async fn get_host(&self, name: &str) -> StoreResult<Option<StoredHost>>;
    /// Every host, by name.
    async fn list_hosts(&self) -> StoreResult<Vec<StoredHost>>;
    /// Extends the host's heartbeat lease to `lease` from now (by the database's clock): `false` when
    /// there is no such host. A host whose lease ran out is unreachable.
    async fn renew_host(&self, name: &str, lease: Duration) -> StoreResult<bool>;
    /// What the instances placed on each host take of it (every instance but a destroyed one), by host.
    async fn host_allocations(&self) -> StoreResult<std::collections::BTreeMap<String, Allocation>>;
    /// Every host, by name, with what its instances take of it, as placement reads them on every create:
    /// in one statement, and GPUs counted (a second) only `with_gpus` and when some host has any: an
    /// instance without GPUs is placed without looking at them, and a host without GPUs takes none.
    async fn hosts_with_allocations(&self, with_gpus: bool) -> StoreResult<Vec<(StoredHost, Allocation)>>;
    /// Where the members of these anti-affinity groups are placed: (host, instance) pairs.
    async fn group_members_hosts(&self, groups: &[Uuid]) -> StoreResult<Vec<(String, Uuid)>>;

    /// Records of a kind with the given name (hosts' pending calls are named by their host), in id order.
    async fn list_records_named(&self, kind: &str, name: &str) -> StoreResult<Vec<Record>>;

    // Idempotency keys, scoped by API key (see [`IdempotencyHold`]).
    /// Claims `scope` for a request whose method, path and body hash to `request_hash`, held by `server`
    /// under a lease of `lease` (by the database's clock), or says what became of an earlier claim.
    async fn idempotency_claim(
        &self,
        scope: &IdempotencyScope,
        request_hash: &str,
        server: &str,
        lease: Duration,
    ) -> StoreResult<IdempotencyClaim>;
    /// Extends a hold's lease while its request runs: `false` when it no longer holds the key.
    async fn idempotency_renew(&self, hold: &IdempotencyHold, lease: Duration) -> StoreResult<bool>;
    /// Stores the response, answering the key for good. Does nothing if the hold was taken over.
    async fn idempotency_finish(&self, hold: &IdempotencyHold, status: u16, body: &str) -> StoreResult<()>;
    /// Gives a hold up without a response (the request failed on the server's side): a key whose request
    /// committed nothing is forgotten, so a retry runs; one whose request applied stays answerable.
    async fn idempotency_release(&self, hold: &IdempotencyHold) -> StoreResult<()>;
    /// Forgets holds whose request committed nothing and never will: those of `server` (a server starting
    /// again after a crash, or stopping cleanly, has no request running) and every hold whose lease
    /// expired; and keys older than a day. Returns how many holds it dropped.
    async fn idempotency_sweep(&self, server: Option<&str>) -> StoreResult<u64>;
    async fn idempotency_audit(&self) -> StoreResult<IdempotencyAudit>;

    /// Checks the database, physically (the backend's own checks) and logically (documents against their
    /// columns, references between rows); see [`sql::integrity`].
    async fn check_integrity(&self) -> StoreResult<IntegrityReport>;

    // The audit log.
    /// Appends entries in one transaction, in order (the store numbers them).
    async fn append_audit(&self, entries: &[AuditEntry]) -> StoreResult<()>;
    /// Entries matching `query`, oldest first.
    async fn list_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>>;
    /// Forgets entries older than `before`; returns how many.
    async fn prune_audit(&self, before: time::OffsetDateTime) -> StoreResult<u64>;
}

/// What [`Store::check_integrity`] checked and found wrong; nothing wrong when `problems` is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub checked: Vec<String>,
    pub problems: Vec<String>,
}

/// Opens the store a database URL names: `sqlite://PATH` (created if missing), `sqlite::memory:`, or
/// `postgres://...` (the database must exist; its schema is created or brought up to date).
pub async fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    Ok(std::sync::Arc::new(SqlStore::open(url).await?))
}
