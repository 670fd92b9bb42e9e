//! Numbered pages of instances and operations, for the providers whose lists are paged by position rather
//! than by cursor (ONET's DRF `?page=`, Gcore's `?offset=&limit=`): one window of a listing and the count of
//! all of it.
//!
//! What the store can choose by (states, a part of the name, id or an address, the instance type, tags,
//! security groups, times, the order) it chooses by, and then the window and the count are the store's
//! `LIMIT/OFFSET` and `COUNT`: nothing is loaded but the page. Conditions the store cannot apply (a status
//! that depends on the operation holding an instance's lock) are given as a predicate; then the listing is read in store pages of
//! [`MAX_PAGE`], counting what the predicate keeps and holding only the window, so memory stays one page
//! however many instances there are (the count still costs a read of the candidates).

use nimbus_core::instance::{Instance, InstanceState};
use nimbus_core::operation::{Operation, OperationState};
use nimbus_core::state_machine::Action;
use nimbus_store::{InstanceQuery, OperationQuery};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::instances::MAX_PAGE;
use crate::{store_err, Context, Engine, Result};

pub use nimbus_store::InstanceOrder;

/// Which instances of the caller's project, in which order, and which window of them.
#[derive(Debug, Clone, Default)]
pub struct InstanceWindow {
    /// Any of these states (empty: any).
    pub states: Vec<InstanceState>,
    /// Names containing this text, case counting.
    pub name_contains: Option<String>,
    /// Ids whose text (lowercase, hyphenated) contains this.
    pub id_contains: Option<String>,
    /// Of this instance type, by name.
    pub instance_type: Option<String>,
    /// Of an instance type whose name begins, or does not begin, with this.
    pub instance_type_prefix: Option<String>,
    pub instance_type_not_prefix: Option<String>,
    /// With an address containing this text.
    pub ip_contains: Option<String>,
    /// Whose tags (labels, system labels over them) hold all these keys with these values; with a tag of
    /// any of `tag_values` (empty: any).
    pub tags_equal: Vec<(String, String)>,
    pub tag_values: Vec<String>,
    /// Not in this security group.
    pub not_in_security_group: Option<Uuid>,
    /// Last changed at or after, and at or before.
    pub updated_since: Option<OffsetDateTime>,
    pub updated_until: Option<OffsetDateTime>,
    /// Also the kept records of deleted instances (see `EngineConfig::deleted_retention`).
    pub with_destroyed: bool,
    pub order: InstanceOrder,
    /// How many to skip.
    pub offset: u64,
    /// At most this many (`None`: all from the offset on).
    pub limit: Option<u32>,
}

/// Which operations of the caller's project, in which order, and which window of them.
#[derive(Debug, Clone, Default)]
pub struct OperationWindow {
    /// Any of these states (empty: any).
    pub states: Vec<OperationState>,
    /// Of any of these kinds (empty: any).
    pub kinds: Vec<Action>,
    /// Created at or after, and at or before.
    pub created_since: Option<OffsetDateTime>,
    pub created_until: Option<OffsetDateTime>,
    pub newest_first: bool,
    pub offset: u64,
    /// At most this many (`None`: all from the offset on).
    pub limit: Option<u32>,
}

/// One window of a listing, and how many the whole listing holds.
#[derive(Debug, Clone)]
pub struct NumberedPage<T> {
    pub count: u64,
    pub items: Vec<T>,
}

impl Engine {
    /// One window of the caller's instances, and their count.
    pub async fn instance_window(&self, ctx: &Context, window: &InstanceWindow) -> Result<NumberedPage<Instance>> {
        let query = self.window_query(ctx, window);
        let count = self.store.count_instances(&query).await.map_err(store_err)?;
        // The store reads a limit of 0 as none; a window of 0 holds nothing.
        let (Ok(offset), false) = (u32::try_from(window.offset), window.limit == Some(0)) else {
            return Ok(NumberedPage { count, items: Vec::new() });
        };
        let items = self
            .store
            .list_instances(&InstanceQuery { offset, limit: window.limit.unwrap_or(0), ..query })
            .await
            .map_err(store_err)?;
        Ok(NumberedPage { count, items })
    }

    /// Like [`Engine::instance_window`], of the instances `keep` keeps too: conditions the store cannot
    /// apply, checked while reading the listing one store page at a time.
    pub async fn instance_window_where(
        &self,
        ctx: &Context,
        window: &InstanceWindow,
        keep: impl Fn(&Instance) -> bool,
    ) -> Result<NumberedPage<Instance>> {
        let query = self.window_query(ctx, window);
        let end = window.limit.map_or(u64::MAX, |l| window.offset.saturating_add(l.into()));
        let (mut count, mut read, mut items) = (0u64, 0u32, Vec::new());
        loop {
            let batch = self
                .store
                .list_instances(&InstanceQuery { offset: read, limit: MAX_PAGE, ..query.clone() })
                .await
                .map_err(store_err)?;
            let exhausted = batch.len() < MAX_PAGE as usize;
            read = read.saturating_add(MAX_PAGE);
            for i in batch.into_iter().filter(|i| keep(i)) {
                if (window.offset..end).contains(&count) {
                    items.push(i);
                }
                count += 1;
            }
            if exhausted {
                return Ok(NumberedPage { count, items });
            }
        }
    }

    fn window_query(&self, ctx: &Context, window: &InstanceWindow) -> InstanceQuery {
        InstanceQuery {
            project_id: Some(ctx.project.id),
            states: window.states.clone(),
            name_contains: window.name_contains.clone(),
            id_contains: window.id_contains.clone(),
            instance_types: window.instance_type.iter().cloned().collect(),
            instance_type_prefix: window.instance_type_prefix.clone(),
            instance_type_not_prefix: window.instance_type_not_prefix.clone(),
            ip_contains: window.ip_contains.clone(),
            tags_equal: window.tags_equal.clone(),
            tag_values: window.tag_values.clone(),
            not_in_security_group: window.not_in_security_group,
            updated_since: window.updated_since,
            updated_until: window.updated_until,
            with_destroyed: window.with_destroyed,
            order: window.order,
            ..Default::default()
        }
    }

    /// One window of the caller's project's operations that `keep` keeps too (conditions the store has no
    /// column for, checked while reading the listing one store page at a time), and their count.
    pub async fn operation_window_where(
        &self,
        ctx: &Context,
        window: &OperationWindow,
        keep: impl Fn(&Operation) -> bool,
    ) -> Result<NumberedPage<Operation>> {
        let query = operation_query(ctx, window);
        let end = window.limit.map_or(u64::MAX, |l| window.offset.saturating_add(l.into()));
        let (mut count, mut read, mut items) = (0u64, 0u32, Vec::new());
        loop {
            let batch = self
                .store
                .list_operations(&OperationQuery { offset: read, limit: MAX_PAGE, ..query.clone() })
                .await
                .map_err(store_err)?;
            let exhausted = batch.len() < MAX_PAGE as usize;
            read = read.saturating_add(MAX_PAGE);
            for op in batch.into_iter().filter(|op| keep(op)) {
                if (window.offset..end).contains(&count) {
                    items.push(op);
                }
                count += 1;
            }
            if exhausted {
                return Ok(NumberedPage { count, items });
            }
        }
    }

    /// Like [`Engine::operation_window_where`] with nothing but what the store chooses by: one window and
    /// the count, both from the store.
    pub async fn operation_window(&self, ctx: &Context, window: &OperationWindow) -> Result<NumberedPage<Operation>> {
        let query = operation_query(ctx, window);
        let count = self.store.count_operations(&query).await.map_err(store_err)?;
        let (Ok(offset), false) = (u32::try_from(window.offset), window.limit == Some(0)) else {
            return Ok(NumberedPage { count, items: Vec::new() });
        };
        let limit = window.limit.unwrap_or(0);
        let items = self.store.list_operations(&OperationQuery { offset, limit, ..query }).await.map_err(store_err)?;
        Ok(NumberedPage { count, items })
    }

    /// The caller's project's operations still pending or running: the holders of its instances' locks,
    /// read at once for a listing that shows what each instance is doing.
    pub async fn unfinished_operations(&self, ctx: &Context) -> Result<Vec<Operation>> {
        let query = OperationQuery { project_id: Some(ctx.project.id), unfinished: true, ..Default::default() };
        self.store.list_operations(&query).await.map_err(store_err)
    }
}

fn operation_query(ctx: &Context, window: &OperationWindow) -> OperationQuery {
    OperationQuery {
        project_id: Some(ctx.project.id),
        states: window.states.clone(),
        kinds: window.kinds.clone(),
        created_since: window.created_since,
        created_until: window.created_until,
        newest_first: window.newest_first,
        ..Default::default()
    }
}
