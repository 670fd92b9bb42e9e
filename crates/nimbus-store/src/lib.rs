//! Persistence behind one trait. The engine is the only caller; only this crate writes SQL.
//!
//! Design: resources are stored as JSON documents beside the few columns that queries filter, sort or
//! count on. Every multi-row change goes through [`Store::apply`], one transaction that checks the
//! generations it was given (compare-and-swap), applies the writes, enforces the project's quota on the
//! result, and rolls everything back when any part fails. A second backend (PostgreSQL) implements the same
//! trait and must pass [`conformance`].

use async_trait::async_trait;
use nimbus_core::catalog::Zone;
use nimbus_core::event::Event;
use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::Operation;
use nimbus_core::tenancy::{ApiKey, Organization, Project, Quota, Usage};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod conformance;
pub mod sqlite;

pub use sqlite::SqliteStore;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-swap lost: someone else changed the row first. The caller re-reads and retries.
    #[error("concurrent update of {0}")]
    Conflict(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("store: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A document of a kind that needs no columns of its own (templates, snapshots, SSH keys, groups, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: String,
    pub id: Uuid,
    /// `None` for records every project sees (public templates).
    pub project_id: Option<Uuid>,
    pub name: String,
    pub body: serde_json::Value,
}

impl Record {
    pub fn new<T: Serialize>(kind: &str, id: Uuid, project_id: Option<Uuid>, name: &str, value: &T) -> Record {
        Record {
            kind: kind.to_string(),
            id,
            project_id,
            name: name.to_string(),
            body: serde_json::to_value(value).expect("domain types serialize"),
        }
    }
    pub fn decode<T: for<'de> Deserialize<'de>>(&self) -> StoreResult<T> {
        serde_json::from_value(self.body.clone())
            .map_err(|e| StoreError::Backend(format!("corrupt {}: {e}", self.kind)))
    }
}

/// One write inside a [`WriteSet`].
// A write set lives for one request and holds a handful of writes; boxing the instance would only add
// an allocation to every write.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Write {
    /// Inserts the instance when `expected_generation` is `None`, otherwise updates it only if its stored
    /// generation still equals that number. The instance carries its new generation.
    PutInstance {
        instance: Instance,
        expected_generation: Option<i64>,
    },
    DeleteInstance {
        id: Uuid,
        expected_generation: i64,
    },
    PutOperation(Operation),
    PutRecord(Record),
    DeleteRecord {
        kind: String,
        id: Uuid,
    },
    /// Stored with the next sequence number.
    AppendEvent(Event),
    /// A dialect's stable id for a canonical one (`inst_…` for an instance UUID).
    PutAlias {
        kind: String,
        alias: String,
        id: Uuid,
    },
    /// Frees a dialect id (or a unique name kept as one, like an account's username).
    DeleteAlias {
        kind: String,
        alias: String,
    },
    ReleaseAddresses {
        instance_id: Uuid,
    },
    /// Fails the set with `Conflict` unless the alias still names `id`: writes that are only right while
    /// a unique name is held (an account's username) make it their precondition.
    ExpectAlias {
        kind: String,
        alias: String,
        id: Uuid,
    },
    /// Inserts an API key, inside a set (`Store::put_api_key` does it alone).
    PutApiKey(ApiKey),
    /// Removes a project that holds no instances, with what only it used: its API keys, its records and
    /// its idempotency keys. Its operations and events stay as history. `Conflict` while an instance of it
    /// remains (a destroyed instance has no row), `NotFound` when there is no such project.
    DeleteProject {
        id: Uuid,
    },
    /// Removes an organization that has no projects left: `Conflict` otherwise, `NotFound` when missing.
    DeleteOrganization {
        id: Uuid,
    },
}

/// An all-or-nothing transaction.
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    pub writes: Vec<Write>,
    /// After the writes, the project's live instances must fit its quota, or everything rolls back.
    pub enforce_quota_of: Option<Uuid>,
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
    pub state: Option<InstanceState>,
    pub name: Option<String>,
    /// Keyset pagination: only ids greater than this one.
    pub after: Option<Uuid>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default)]
pub struct OperationQuery {
    pub project_id: Option<Uuid>,
    pub target_id: Option<Uuid>,
    /// Only operations not yet finished (pending or running).
    pub unfinished: bool,
    pub after: Option<Uuid>,
    pub limit: u32,
}

/// What a request with an `Idempotency-Key` finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// First time: the caller runs the request and then calls `idempotency_finish`.
    New,
    /// Done before with the same body: here is the stored response.
    Replay { status: u16, body: String },
    /// Another request with the same key is still running.
    InProgress,
    /// The key was used before with a different body.
    Mismatch,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Tenancy.
    async fn put_organization(&self, org: &Organization) -> StoreResult<()>;
    async fn get_organization(&self, id: Uuid) -> StoreResult<Option<Organization>>;
    /// Inserts a project; the store assigns its `numeric_id`.
    async fn create_project(&self, project: &Project) -> StoreResult<Project>;
    async fn get_project(&self, id: Uuid) -> StoreResult<Option<Project>>;
    async fn get_project_by_numeric_id(&self, numeric_id: i64) -> StoreResult<Option<Project>>;
    async fn list_projects(&self, organization_id: Uuid) -> StoreResult<Vec<Project>>;
    async fn set_quota(&self, project_id: Uuid, quota: Quota) -> StoreResult<()>;
    async fn usage(&self, project_id: Uuid) -> StoreResult<Usage>;
    async fn count_api_keys(&self) -> StoreResult<u64>;
    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()>;
    async fn get_api_key(&self, key_id: &str) -> StoreResult<Option<ApiKey>>;
    async fn get_api_key_by_secret_hash(&self, sha256_hex: &str) -> StoreResult<Option<ApiKey>>;
    async fn list_api_keys(&self, project_id: Uuid) -> StoreResult<Vec<ApiKey>>;
    async fn delete_api_key(&self, key_id: &str) -> StoreResult<bool>;

    // Catalog.
    async fn put_zone(&self, zone: &Zone) -> StoreResult<()>;
    async fn list_zones(&self) -> StoreResult<Vec<Zone>>;

    // Documents.
    async fn get_record(&self, kind: &str, id: Uuid) -> StoreResult<Option<Record>>;
    /// Records of a kind visible to a project: its own plus public ones (`project_id` NULL). `None` lists all.
    async fn list_records(&self, kind: &str, project_id: Option<Uuid>) -> StoreResult<Vec<Record>>;

    // Instances and operations.
    async fn get_instance(&self, id: Uuid) -> StoreResult<Option<Instance>>;
    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<Vec<Instance>>;
    async fn get_operation(&self, id: Uuid) -> StoreResult<Option<Operation>>;
    async fn list_operations(&self, query: &OperationQuery) -> StoreResult<Vec<Operation>>;

    /// Applies every write or none; see [`WriteSet`].
    async fn apply(&self, set: WriteSet) -> StoreResult<()>;

    // Events, in sequence order.
    async fn events_after(&self, project_id: Option<Uuid>, after_seq: i64, limit: u32) -> StoreResult<Vec<Event>>;

    // Dialect aliases.
    async fn resolve_alias(&self, kind: &str, alias: &str) -> StoreResult<Option<Uuid>>;
    async fn alias_of(&self, kind: &str, id: Uuid) -> StoreResult<Option<String>>;

    /// Allocates the lowest free address of `network` (host numbers `first..=last`) to an instance; returns
    /// the same one again when the instance already holds one there.
    async fn allocate_address(&self, network: &str, first: u32, last: u32, instance_id: Uuid) -> StoreResult<u32>;

    // Idempotency keys, scoped by project.
    async fn idempotency_claim(&self, project_id: Uuid, key: &str, request_hash: &str)
        -> StoreResult<IdempotencyClaim>;
    async fn idempotency_finish(&self, project_id: Uuid, key: &str, status: u16, body: &str) -> StoreResult<()>;
    /// Forgets a claim whose request failed before doing anything, so that a retry can run.
    async fn idempotency_release(&self, project_id: Uuid, key: &str) -> StoreResult<()>;
}
