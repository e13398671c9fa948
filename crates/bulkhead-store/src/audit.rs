//! Appending to and reading a tenant's audit chain, inside the caller's transaction.

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditDraft, AuditEvent, GENESIS_HASH, Origin, Outcome};
use bulkhead_core::timestamp::now_millis;

use crate::StoreError;
use crate::backend::{Tx, execute, fetch_all, fetch_optional};
use crate::records::{AUDIT_COLUMNS, AuditRow, convert_all};

#[derive(sqlx::FromRow)]
struct HeadRow {
    seq: i64,
    hash: String,
}

/// An event as its caller made it, before the chain gives it a place: what the audit
/// outbox keeps between acknowledging an event and importing it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PendingEvent {
    pub occurred_at: i64,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub outcome: Outcome,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub details: serde_json::Value,
}

impl PendingEvent {
    pub(crate) fn new(origin: &Origin, draft: AuditDraft) -> Self {
        Self {
            occurred_at: now_millis(),
            actor: origin.actor.clone(),
            action: draft.action.to_owned(),
            resource: draft.resource,
            outcome: draft.outcome,
            request_id: origin.request_id.as_ref().map(|r| r.as_str().to_owned()),
            trace_id: origin.request_id.as_ref().map(|r| r.trace_id().to_owned()),
            details: draft.details,
        }
    }
}

/// Appends one event to `tenant`'s chain in `tx`.
pub(crate) async fn append(
    tx: &mut Tx,
    tenant: &TenantId,
    origin: &Origin,
    draft: AuditDraft,
) -> Result<AuditEvent, StoreError> {
    append_pending(tx, tenant, PendingEvent::new(origin, draft)).await
}

/// Appends an event made earlier to `tenant`'s chain in `tx`, keeping the time it was made.
///
/// The first statement is an upsert on the tenant's head row: a write, so it takes the row lock
/// on PostgreSQL (SQLite already serialises writers) and concurrent appends for one tenant
/// queue up instead of racing for the same sequence number. Different tenants never wait for
/// each other.
pub(crate) async fn append_pending(
    tx: &mut Tx,
    tenant: &TenantId,
    pending: PendingEvent,
) -> Result<AuditEvent, StoreError> {
    let head = fetch_optional!(
        tx,
        HeadRow,
        "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, 0, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET seq = audit_heads.seq \
         RETURNING seq, hash",
        tenant.as_str(),
        GENESIS_HASH,
    )?
    .ok_or_else(|| StoreError::Corrupt("audit head upsert returned no row".into()))?;

    let mut event = AuditEvent {
        tenant_id: tenant.clone(),
        seq: head.seq + 1,
        occurred_at: pending.occurred_at,
        actor: pending.actor,
        action: pending.action,
        resource: pending.resource,
        outcome: pending.outcome,
        request_id: pending.request_id,
        trace_id: pending.trace_id,
        details: pending.details,
        prev_hash: head.hash,
        hash: String::new(),
    };
    event.hash = event.compute_hash();

    execute!(
        tx,
        "INSERT INTO audit_events (tenant_id, seq, occurred_at, actor, action, resource, \
         outcome, request_id, details, prev_hash, hash, trace_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        event.tenant_id.as_str(),
        event.seq,
        event.occurred_at,
        event.actor.as_str(),
        event.action.as_str(),
        event.resource.as_str(),
        event.outcome.as_str(),
        event.request_id.as_deref(),
        event.details.to_string(),
        event.prev_hash.as_str(),
        event.hash.as_str(),
        event.trace_id.as_deref(),
    )?;
    execute!(
        tx,
        "UPDATE audit_heads SET seq = $2, hash = $3 WHERE tenant_id = $1",
        tenant.as_str(),
        event.seq,
        event.hash.as_str(),
    )?;
    Ok(event)
}

/// Ends a change that touched `rows` rows: if any, appends `draft` to the tenant's chain and
/// commits; if none, drops the transaction (nothing changed, nothing to record). For
/// operations where "nothing matched" is an answer, such as a delete, rather than an error.
pub(crate) async fn commit_if_changed(
    mut tx: Tx,
    rows: u64,
    tenant: &TenantId,
    origin: &Origin,
    draft: AuditDraft,
) -> Result<bool, StoreError> {
    if rows == 0 {
        return Ok(false);
    }
    append(&mut tx, tenant, origin, draft).await?;
    tx.commit().await?;
    Ok(true)
}

/// Events of `tenant` with `seq > after`, oldest first.
pub(crate) async fn read(
    tx: &mut Tx,
    tenant: &TenantId,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEvent>, StoreError> {
    let sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events \
         WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    );
    let rows = fetch_all!(tx, AuditRow, &sql, tenant.as_str(), after, limit)?;
    convert_all(rows)
}

/// Which of a tenant's events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events with a greater sequence number (the paging cursor).
    pub after_seq: i64,
    /// At or after this time (Unix milliseconds).
    pub since: Option<i64>,
    /// Before this time (Unix milliseconds).
    pub until: Option<i64>,
    /// This action exactly, or every action starting with it when it ends in `.`
    /// (`approval.` for all approval events).
    pub action: Option<String>,
    pub limit: i64,
}

impl crate::TenantStore<'_> {
    /// The tenant's events matching `filter`, oldest first.
    pub async fn audit_page(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let (exact, prefix) = match filter.action.as_deref() {
            Some(action) if action.ends_with('.') => (None, Some(format!("{action}%"))),
            Some(action) => (Some(action.to_owned()), None),
            None => (None, None),
        };
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant_id = $1 AND seq > $2 \
             AND occurred_at >= $3 AND occurred_at < $4 \
             AND ($5 = '' OR action = $5) AND ($6 = '' OR action LIKE $6) ORDER BY seq LIMIT $7"
        );
        self.events.settle().await?;
        let mut tx = self.begin(crate::backend::Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            AuditRow,
            &sql,
            self.context().tenant_id().as_str(),
            filter.after_seq,
            filter.since.unwrap_or(i64::MIN),
            filter.until.unwrap_or(i64::MAX),
            exact.unwrap_or_default(),
            prefix.unwrap_or_default(),
            filter.limit,
        )?;
        tx.commit().await?;
        convert_all(rows)
    }

    /// The head of the tenant's chain as the store records it on every append: the last
    /// sequence number and hash. A trail whose verified head differs was cut short.
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        self.events.settle().await?;
        let mut tx = self.begin(crate::backend::Access::Read).await?;
        let head = fetch_optional!(
            &mut tx,
            HeadRow,
            "SELECT seq, hash FROM audit_heads WHERE tenant_id = $1",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        Ok(head.map_or((0, GENESIS_HASH.to_owned()), |h| (h.seq, h.hash)))
    }
}

/// What verifying a tenant's stored trail found.
#[derive(Debug, Clone)]
pub struct AuditVerification {
    /// The chain as far as it verified.
    pub head: bulkhead_core::audit::ChainHead,
    /// The head the store recorded with the last append.
    pub recorded_seq: i64,
    pub recorded_hash: String,
    /// The first fault, in words; `None` when the whole trail verified.
    pub error: Option<String>,
}

impl crate::TenantStore<'_> {
    /// Verifies the whole stored chain page by page (every hash, link and sequence number) and
    /// that it ends at the head recorded with the last append, so a cut tail is found too.
    ///
    /// The head is read after the chain: an event appended meanwhile (it moves the head in its
    /// own transaction) is then read too, instead of looking like an event added at the end.
    pub async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        /// Rounds of "the head moved on while the chain was read" before judging as is.
        const CATCH_UP_ROUNDS: usize = 10;
        let mut verifier =
            bulkhead_core::audit::ChainVerifier::new(self.context().tenant_id().clone());
        let mut filter = AuditFilter {
            limit: 1_000,
            ..AuditFilter::default()
        };
        let mut error = None;
        let mut rounds = 0;
        let (recorded_seq, recorded_hash) = loop {
            'pages: loop {
                let events = self.audit_page(&filter).await?;
                let Some(last) = events.last().map(|e| e.seq) else {
                    break;
                };
                for event in &events {
                    if let Err(fault) = verifier.push(event) {
                        error = Some(fault.to_string());
                        break 'pages;
                    }
                }
                filter.after_seq = last;
            }
            let (seq, hash) = self.audit_head().await?;
            rounds += 1;
            if error.is_some() || verifier.head().last_seq >= seq || rounds >= CATCH_UP_ROUNDS {
                break (seq, hash);
            }
        };
        let head = verifier.head();
        if error.is_none() && (head.last_seq != recorded_seq || head.head_hash != recorded_hash) {
            error = Some(format!(
                "the chain ends at event {} but the store recorded event {recorded_seq} as its head: events were removed or added at the end",
                head.last_seq
            ));
        }
        Ok(AuditVerification {
            head,
            recorded_seq,
            recorded_hash,
            error,
        })
    }
}
