//! Conversation threads, scoped to a tenant and an end user (empty string: no end user).

use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::timestamp::now_millis;
use serde_json::json;

use bulkhead_core::TenantId;
use bulkhead_core::audit::Origin;

use crate::backend::{Access, Scope, execute, fetch_all, fetch_optional};
use crate::remote::remote;
use crate::{AdminStore, StoreError, TenantStore, audit};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ThreadMessage {
    pub seq: i64,
    pub role: String,
    pub content: String,
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
struct ThreadRow {
    end_user: String,
}

impl TenantStore<'_> {
    /// Creates an empty thread for `end_user`.
    pub async fn create_thread(&self, thread_id: &str, end_user: &str) -> Result<(), StoreError> {
        remote!(self, create_thread, thread_id, end_user);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        execute!(
            &mut tx,
            "INSERT INTO threads (tenant_id, thread_id, end_user, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
            tenant.as_str(),
            thread_id,
            end_user,
            now,
        )?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "thread.created",
                resource: format!("thread/{thread_id}"),
                outcome: Outcome::Success,
                details: json!({"end_user": end_user}),
            },
        )
        .await?;
        tx.commit().await
    }

    /// The thread's messages, oldest first; `None` if the thread does not exist, belongs to
    /// another tenant, or belongs to another end user: all three answer alike.
    pub async fn thread_messages(
        &self,
        thread_id: &str,
        end_user: &str,
    ) -> Result<Option<Vec<ThreadMessage>>, StoreError> {
        remote!(self, thread_messages, thread_id, end_user);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Read).await?;
        let thread = fetch_optional!(
            &mut tx,
            ThreadRow,
            "SELECT end_user FROM threads WHERE tenant_id = $1 AND thread_id = $2",
            tenant.as_str(),
            thread_id,
        )?;
        if thread.is_none_or(|t| t.end_user != end_user) {
            return Ok(None);
        }
        let messages = fetch_all!(
            &mut tx,
            ThreadMessage,
            "SELECT seq, role, content, created_at FROM thread_messages \
             WHERE tenant_id = $1 AND thread_id = $2 ORDER BY seq",
            tenant.as_str(),
            thread_id,
        )?;
        tx.commit().await?;
        Ok(Some(messages))
    }

    /// Appends messages to a thread (the caller has checked it is this end user's).
    pub async fn append_thread(
        &self,
        thread_id: &str,
        messages: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        remote!(self, append_thread, thread_id, messages);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        #[derive(sqlx::FromRow)]
        struct Next {
            next: i64,
        }
        let mut seq = fetch_optional!(
            &mut tx,
            Next,
            "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM thread_messages WHERE tenant_id = $1 AND thread_id = $2",
            tenant.as_str(),
            thread_id,
        )?
        .map_or(1, |n| n.next);
        let now = now_millis();
        for (role, content) in messages {
            execute!(
                &mut tx,
                "INSERT INTO thread_messages (tenant_id, thread_id, seq, role, content, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                tenant.as_str(),
                thread_id,
                seq,
                *role,
                *content,
                now,
            )?;
            seq += 1;
        }
        execute!(
            &mut tx,
            "UPDATE threads SET updated_at = $3 WHERE tenant_id = $1 AND thread_id = $2",
            tenant.as_str(),
            thread_id,
            now,
        )?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "thread.appended",
                resource: format!("thread/{thread_id}"),
                outcome: Outcome::Success,
                details: json!({"messages": messages.len()}),
            },
        )
        .await?;
        tx.commit().await
    }
}

#[derive(sqlx::FromRow)]
struct ExpiredCount {
    tenant_id: String,
    threads: i64,
}

impl AdminStore<'_> {
    /// Deletes every thread untouched since `cutoff` (milliseconds since the epoch), with its
    /// messages, and appends a `thread.expired` event with the count to each tenant's chain in
    /// the same transaction. Returns how many threads went.
    pub async fn expire_threads(&self, cutoff: i64) -> Result<u64, StoreError> {
        let mut tx = self
            .backend()
            .begin(Access::Write, Scope::ControlPlane)
            .await?;
        let counts = fetch_all!(
            &mut tx,
            ExpiredCount,
            "SELECT tenant_id, COUNT(*) AS threads FROM threads WHERE updated_at < $1 GROUP BY tenant_id",
            cutoff,
        )?;
        if counts.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        // Messages go by the foreign key's cascade on SQLite only when foreign keys are on;
        // delete them explicitly so both backends behave alike.
        execute!(
            &mut tx,
            "DELETE FROM thread_messages WHERE (tenant_id, thread_id) IN \
             (SELECT tenant_id, thread_id FROM threads WHERE updated_at < $1)",
            cutoff,
        )?;
        let deleted = execute!(&mut tx, "DELETE FROM threads WHERE updated_at < $1", cutoff,)?;
        let origin = Origin {
            actor: "retention".to_owned(),
            request_id: None,
        };
        for count in &counts {
            let tenant = TenantId::try_from(count.tenant_id.as_str())
                .map_err(|e| StoreError::Corrupt(format!("tenant id in threads: {e}")))?;
            audit::append(
                &mut tx,
                &tenant,
                &origin,
                AuditDraft {
                    action: "thread.expired",
                    resource: "threads".to_owned(),
                    outcome: Outcome::Success,
                    details: json!({"threads": count.threads, "untouched_before": cutoff}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }
}
