//! Typed access to the store's documents (snapshots, keys, groups, networks...), with every change a
//! compare-and-swap on the record's generation.
//!
//! [`Engine::edit_record`] is the one read-modify-write loop: it reads the record, lets the caller make the
//! next version (or refuse), and writes it only if nobody changed it meanwhile; on a lost race it reads
//! again. That is what lets any number of servers change one security group's rules at once without losing
//! a rule, with nothing held in any process's memory.

use nimbus_core::DomainError;
use nimbus_store::{Record, StoreError, Write, WriteSet};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::instances::{backoff, CAS_RETRIES};
use crate::{store_err, Context, Engine, Result};

impl Engine {
    /// A record of `kind` and its decoded body, whoever owns it.
    pub(crate) async fn record_of<T: DeserializeOwned>(&self, kind: &str, id: Uuid) -> Result<Option<(T, Record)>> {
        let Some(record) = self.store.get_record(kind, id).await.map_err(store_err)? else { return Ok(None) };
        let value = record.decode().map_err(store_err)?;
        Ok(Some((value, record)))
    }

    /// The caller's project's records of a kind (public ones left out).
    pub(crate) async fn records<T: DeserializeOwned>(&self, kind: &str, ctx: &Context) -> Result<Vec<T>> {
        let records = self.store.list_records(kind, Some(ctx.project.id)).await.map_err(store_err)?;
        records.iter().filter(|r| r.project_id == Some(ctx.project.id)).map(|r| r.decode().map_err(store_err)).collect()
    }

    /// The caller's project's record of a kind; another project's looks exactly like a missing one.
    pub(crate) async fn record<T: DeserializeOwned>(&self, kind: &'static str, ctx: &Context, id: Uuid) -> Result<T> {
        Ok(self.owned_record(kind, ctx, id).await?.0)
    }

    pub(crate) async fn owned_record<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        ctx: &Context,
        id: Uuid,
    ) -> Result<(T, Record)> {
        let found = self.record_of::<T>(kind, id).await?;
        found
            .filter(|(_, r)| r.project_id == Some(ctx.project.id))
            .ok_or_else(|| DomainError::not_found(crate::resources::kind_name(kind), id))
    }

    /// Inserts a new record, with `others` in the same transaction.
    pub(crate) async fn insert(&self, record: Record, others: Vec<Write>) -> Result<()> {
        let mut set = WriteSet::new();
        set.push(Write::InsertRecord(record));
        set.writes.extend(others);
        self.store.apply(set).await.map_err(store_err)
    }

    /// Deletes a record whatever its version (a missing one is no error).
    pub(crate) async fn delete(&self, kind: &str, id: Uuid) -> Result<()> {
        let mut set = WriteSet::new();
        set.push(Write::DeleteRecord { kind: kind.into(), id, expected_generation: None });
        self.store.apply(set).await.map_err(store_err)
    }

    /// Read-modify-write of one of the caller's records: `change` makes the next version (and its name)
    /// from the current one, with any other writes to commit with it, or refuses. Retried on a lost race.
    pub(crate) async fn edit_record<T, R>(
        &self,
        kind: &'static str,
        ctx: &Context,
        id: Uuid,
        change: impl Fn(&mut T) -> Result<(String, Vec<Write>, R)>,
    ) -> Result<(T, R)>
    where
        T: DeserializeOwned + Serialize,
    {
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (mut value, record) = self.owned_record::<T>(kind, ctx, id).await?;
            let (name, others, out) = change(&mut value)?;
            let mut set = WriteSet::new();
            set.push(Write::UpdateRecord {
                record: record.next(&name, &value),
                expected_generation: record.generation,
            });
            set.writes.extend(others);
            match self.store.apply(set).await {
                Ok(()) => return Ok((value, out)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!(
            "{} {id} is being changed by many writers at once; retry",
            crate::resources::kind_name(kind)
        )))
    }

    /// Deletes one of the caller's records, unless `refuse` (given its current version) says no; the delete
    /// happens only if the record is still the version `refuse` saw.
    pub(crate) async fn delete_record_if<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        ctx: &Context,
        id: Uuid,
        refuse: impl Fn(&T) -> Result<Vec<Write>>,
    ) -> Result<()> {
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (value, record) = self.owned_record::<T>(kind, ctx, id).await?;
            let others = refuse(&value)?;
            let mut set = WriteSet::new();
            set.push(Write::DeleteRecord { kind: kind.into(), id, expected_generation: Some(record.generation) });
            set.writes.extend(others);
            match self.store.apply(set).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!(
            "{} {id} is being changed by many writers at once; retry",
            crate::resources::kind_name(kind)
        )))
    }

    /// The write that makes `value` the record's content, whatever was there: an insert when there is none,
    /// else a compare-and-swap on the version just read (the caller's transaction fails on a race, and its
    /// retry reads again).
    pub(crate) async fn replace_record<T: Serialize>(
        &self,
        kind: &str,
        id: Uuid,
        project_id: Option<Uuid>,
        name: &str,
        value: &T,
    ) -> Result<Write> {
        Ok(match self.store.get_record(kind, id).await.map_err(store_err)? {
            None => Write::InsertRecord(Record::new(kind, id, project_id, name, value)),
            Some(current) => Write::UpdateRecord {
                record: Record { project_id, ..current.next(name, value) },
                expected_generation: current.generation,
            },
        })
    }

    /// Makes `value` the record's content whatever was there, alone, retrying a lost race.
    pub(crate) async fn put_record<T: Serialize>(
        &self,
        kind: &str,
        id: Uuid,
        project_id: Option<Uuid>,
        name: &str,
        value: &T,
    ) -> Result<()> {
        for attempt in 0..CAS_RETRIES {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let mut set = WriteSet::new();
            set.push(self.replace_record(kind, id, project_id, name, value).await?);
            match self.store.apply(set).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_) | StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(format!("{kind} {id} is being changed by many writers at once; retry")))
    }
}
