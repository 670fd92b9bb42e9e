//! The audit log's table: appended in batches, read by organization, time, key and resource, pruned by age.

use nimbus_core::audit::{AuditEntry, AuditQuery};
use time::OffsetDateTime;

use super::*;

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// `text` as a LIKE pattern that matches only itself (`\` escapes).
fn like_literal(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

impl SqlStore {
    pub(super) async fn append_audit_entries(&self, entries: &[AuditEntry]) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // A write of its own would be one more commit (an fsync) per request: it joins the next batch.
        let rows: Vec<Vec<Arg>> = entries
            .iter()
            .map(|e| args![millis(e.at), e.organization_id, e.key_id.as_ref(), &e.path, encode(e)])
            .collect();
        let backend = self.backend;
        self.group
            .run(Box::new(move |mut conn| {
                Box::pin(async move {
                    for row in rows {
                        query(
                            "INSERT INTO audit (at_ms, organization_id, key_id, path, body) VALUES ($1, $2, $3, $4, $5)",
                            row,
                        )
                        .execute(&mut conn)
                        .await
                        .map_err(|e| backend.error("appending to the audit log", e))?;
                    }
                    // Nothing waits on the audit log, nor is it cached: no change to announce or forget.
                    Ok(group_commit::Done::new((), false))
                })
            }))
            .await
    }

    pub(super) async fn audit_entries(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        let mut sql = Filtered::new("SELECT seq, body FROM audit WHERE 1=1");
        if let Some(org) = q.organization_id {
            sql.and("organization_id = ", org);
        }
        if let Some(since) = q.since {
            sql.and("at_ms >= ", millis(since));
        }
        if let Some(until) = q.until {
            sql.and("at_ms < ", millis(until));
        }
        if let Some(key) = &q.key_id {
            sql.and("key_id = ", key);
        }
        if let Some(resource) = &q.resource {
            sql.and("path || '/' LIKE ", format!("%/{}/%", like_literal(resource))).push(" ESCAPE '\\'");
        }
        if let Some(after) = q.after_seq {
            sql.and("seq > ", after);
        }
        sql.push(" ORDER BY seq").limit(q.limit);
        let rows = sql.query().fetch_all(&self.pool).await.map_err(self.fail("reading the audit log"))?;
        rows.iter()
            .map(|row| {
                let mut entry: AuditEntry = decode("audit entry", &column::<String>(row, "body")?)?;
                entry.seq = column(row, "seq")?;
                Ok(entry)
            })
            .collect()
    }

    pub(super) async fn prune_audit_entries(&self, before: OffsetDateTime) -> StoreResult<u64> {
        self.write_one("pruning the audit log", "DELETE FROM audit WHERE at_ms < $1", args![millis(before)]).await
    }
}
