//! Reading and waiting on operations, and the event stream.

use std::time::Duration;

use nimbus_core::event::Event;
use nimbus_core::instance::InstanceState;
use nimbus_core::operation::{Operation, OperationState};
use nimbus_core::state_machine::Action;
use nimbus_core::DomainError;
use nimbus_store::OperationQuery;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{page_token, store_err, Context, Engine, Page, Result};

/// The longest a single `?wait=` blocks.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

impl Engine {
    pub async fn operation(&self, ctx: &Context, id: Uuid) -> Result<Operation> {
        self.store
            .get_operation(id)
            .await
            .map_err(store_err)?
            .filter(|op| op.project_id == ctx.project.id)
            .ok_or_else(|| DomainError::not_found("operation", id))
    }

    /// Returns the operation once it has ended, or as it is when `wait` runs out.
    pub async fn wait_operation(&self, ctx: &Context, id: Uuid, wait: Duration) -> Result<Operation> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        // Watched before reading, so a change between the read and the wait is not missed; the store's
        // watch moves on changes made through any server.
        let mut changes = self.changes();
        loop {
            let op = self.operation(ctx, id).await?;
            let now = tokio::time::Instant::now();
            if op.state.is_final() || now >= deadline {
                return Ok(op);
            }
            Engine::wait_for_change(&mut changes, deadline - now).await;
        }
    }

    /// When the instance last (re)booted: the end of its latest successful create, start, reboot, reset or
    /// scale with restart of a running instance.
    /// The driver reports no uptime, so the operation history is the record of it.
    pub async fn last_booted_at(&self, ctx: &Context, instance: Uuid) -> Result<Option<OffsetDateTime>> {
        let mut booted = None;
        let mut token = None;
        loop {
            let page = self.list_operations(ctx, Some(instance), crate::instances::MAX_PAGE, token.as_deref()).await?;
            for op in &page.items {
                let boots = matches!(op.kind, Action::Create | Action::Start | Action::Reboot | Action::Reset)
                    || (op.kind == Action::ScaleWithRestart && op.state_before == Some(InstanceState::Running));
                if boots && op.state == OperationState::Success {
                    booted = Some(op.updated_at);
                }
            }
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(booted),
            }
        }
    }

    pub async fn list_operations(
        &self,
        ctx: &Context,
        target: Option<Uuid>,
        limit: u32,
        page: Option<&str>,
    ) -> Result<Page<Operation>> {
        if limit == 0 || limit > crate::instances::MAX_PAGE {
            return Err(DomainError::invalid("limit", format!("must be between 1 and {}", crate::instances::MAX_PAGE)));
        }
        let after = page.map(page_token::decode).transpose()?;
        let mut items = self
            .store
            .list_operations(&OperationQuery {
                project_id: Some(ctx.project.id),
                target_id: target,
                after,
                limit: limit + 1,
                ..Default::default()
            })
            .await
            .map_err(store_err)?;
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|o| page_token::encode(o.id))
        } else {
            None
        };
        Ok(Page { items, next_page_token })
    }

    /// The caller's project's events after `after_seq`, oldest first.
    pub async fn events_after(&self, ctx: &Context, after_seq: i64, limit: u32) -> Result<Vec<Event>> {
        self.store.events_after(Some(ctx.project.id), after_seq, limit).await.map_err(store_err)
    }

    /// The sequence number of the newest event of the caller's project (0 when there is none).
    pub async fn latest_event_seq(&self, ctx: &Context) -> Result<i64> {
        self.store.latest_event_seq(Some(ctx.project.id)).await.map_err(store_err)
    }
}
