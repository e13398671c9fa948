//! Where the audit stream publisher has got to in each tenant's chain.
//!
//! The chain itself is the outbox: an event is durable in `audit_events` before anyone is
//! told of it, and the publisher reads forward from a per-tenant cursor that it advances only
//! after the stream acknowledged. A crash between the two republishes a few events, which the
//! stream drops by message id; nothing is ever skipped.

use bulkhead_core::TenantId;

use crate::backend::{Access, execute, fetch_all};
use crate::{AdminStore, StoreError};

/// A tenant whose chain is ahead of what the stream has acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBacklog {
    pub tenant: TenantId,
    pub published_seq: i64,
    pub head_seq: i64,
}

impl AdminStore<'_> {
    /// Every tenant with events not yet published, in no particular order.
    pub async fn audit_stream_backlog(&self) -> Result<Vec<StreamBacklog>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            tenant_id: String,
            published_seq: i64,
            head_seq: i64,
        }
        self.events.settle().await?;
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            Row,
            "SELECT h.tenant_id, COALESCE(c.published_seq, 0) AS published_seq, \
                    h.seq AS head_seq \
             FROM audit_heads h \
             LEFT JOIN audit_stream_cursors c ON c.tenant_id = h.tenant_id \
             WHERE h.seq > COALESCE(c.published_seq, 0)",
        )?;
        tx.commit().await?;
        rows.into_iter()
            .map(|row| {
                Ok(StreamBacklog {
                    tenant: TenantId::try_from(row.tenant_id)
                        .map_err(|e| StoreError::Corrupt(format!("tenant id: {e}")))?,
                    published_seq: row.published_seq,
                    head_seq: row.head_seq,
                })
            })
            .collect()
    }

    /// Records that the stream acknowledged `tenant`'s events up to `seq`. Never moves a
    /// cursor back, so two publishers (two server processes on one database) cannot undo
    /// each other's progress.
    pub async fn mark_audit_published(
        &self,
        tenant: &TenantId,
        seq: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        execute!(
            &mut tx,
            "INSERT INTO audit_stream_cursors (tenant_id, published_seq) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET published_seq = \
                 CASE WHEN excluded.published_seq > audit_stream_cursors.published_seq \
                      THEN excluded.published_seq ELSE audit_stream_cursors.published_seq END",
            tenant.as_str(),
            seq,
        )?;
        tx.commit().await?;
        Ok(())
    }
}
