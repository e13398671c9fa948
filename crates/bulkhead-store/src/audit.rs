//! Appending to and reading a tenant's audit chain, inside the caller's transaction.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditDraft, AuditEvent, GENESIS_HASH, Origin, Outcome, canonical_json};
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
    append_to_chain(tx, tenant, vec![PendingEvent::new(origin, draft)])
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("an audit append chained no event".into()))
}

/// Appends events made earlier to their tenants' chains in `tx`: each tenant's in the order
/// given. Three statements per tenant and one per [`ROWS_PER_INSERT`] events, instead of three
/// per event: on SQLite every statement is a round trip to the connection's thread, and the
/// importer of the audit outbox appends thousands of events a second.
///
/// Tenants are appended in the order of their ids, so two batches on PostgreSQL take the head
/// rows' locks in one order and cannot deadlock each other.
pub(crate) async fn append_batch(
    tx: &mut Tx,
    events: impl IntoIterator<Item = (TenantId, PendingEvent)>,
) -> Result<(), StoreError> {
    let mut by_tenant: BTreeMap<TenantId, Vec<PendingEvent>> = BTreeMap::new();
    for (tenant, event) in events {
        by_tenant.entry(tenant).or_default().push(event);
    }
    for (tenant, events) in by_tenant {
        append_to_chain(tx, &tenant, events).await?;
    }
    Ok(())
}

/// Events per multi-row INSERT: twelve parameters each, far below SQLite's limit of 32,766
/// bound parameters and PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 64;

/// How many events are chained between offers of the CPU to whatever waits for it.
///
/// The importer chains an import's events (details rendered, hashes computed) in one run of
/// the CPU: a millisecond or more at 15,000 events a second. A thread of a request's chain (the
/// client, the upstream, a serving thread) that the scheduler wakes onto that core waited for
/// the run to end, even with the other core idle, and at concurrency 1 those waits were most
/// of the p99. `sched_yield` costs a system call and returns at once when nothing waits; eight
/// events are about 40 us of work.
const YIELD_EVERY: usize = 8;

/// Appends `pending` to `tenant`'s chain in `tx`, in order, and answers the chained events.
///
/// The first statement is an upsert on the tenant's head row: a write, so it takes the row lock
/// on PostgreSQL (SQLite already serialises writers) and concurrent appends for one tenant
/// queue up instead of racing for the same sequence number. Different tenants never wait for
/// each other.
async fn append_to_chain(
    tx: &mut Tx,
    tenant: &TenantId,
    pending: Vec<PendingEvent>,
) -> Result<Vec<AuditEvent>, StoreError> {
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

    let mut seq = head.seq;
    let mut prev_hash = head.hash;
    let mut chained = Vec::with_capacity(pending.len());
    // The details as stored: rendered once, for the row and inside the hashed bytes.
    let mut stored_details = Vec::with_capacity(pending.len());
    for (n, pending) in pending.into_iter().enumerate() {
        if n % YIELD_EVERY == YIELD_EVERY - 1 {
            std::thread::yield_now();
        }
        seq += 1;
        let mut event = AuditEvent {
            tenant_id: tenant.clone(),
            seq,
            occurred_at: pending.occurred_at,
            actor: pending.actor,
            action: pending.action,
            resource: pending.resource,
            outcome: pending.outcome,
            request_id: pending.request_id,
            trace_id: pending.trace_id,
            details: pending.details,
            prev_hash,
            hash: String::new(),
        };
        let details = canonical_json(&event.details);
        event.hash = event.hash_with_canonical_details(&details);
        prev_hash = event.hash.clone();
        chained.push(event);
        stored_details.push(details);
    }
    for (rows, details) in chained
        .chunks(ROWS_PER_INSERT)
        .zip(stored_details.chunks(ROWS_PER_INSERT))
    {
        insert_events(tx, rows, details).await?;
    }
    if !chained.is_empty() {
        execute!(
            tx,
            "UPDATE audit_heads SET seq = $2, hash = $3 WHERE tenant_id = $1",
            tenant.as_str(),
            seq,
            prev_hash.as_str(),
        )?;
    }
    Ok(chained)
}

/// Inserts chained events with one statement; `details[i]` is `events[i]`'s details as
/// [`canonical_json`] wrote them.
async fn insert_events(
    tx: &mut Tx,
    events: &[AuditEvent],
    details: &[String],
) -> Result<(), StoreError> {
    const COLUMNS: usize = 12;
    // SQLite gets anonymous `?` parameters: sqlx looks up every numbered parameter's name,
    // and SQLite finds a name by walking the statement's list of them, which made binding
    // 768 numbered parameters cost more than running the statement.
    let numbered = matches!(tx, Tx::Postgres(_));
    let mut sql = String::from(
        "INSERT INTO audit_events (tenant_id, seq, occurred_at, actor, action, resource, \
         outcome, request_id, details, prev_hash, hash, trace_id) VALUES ",
    );
    for row in 0..events.len() {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..COLUMNS {
            if column > 0 {
                sql.push_str(", ");
            }
            if numbered {
                // Writing to a String cannot fail.
                let _ = write!(sql, "${}", row * COLUMNS + column + 1);
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    macro_rules! bind_rows {
        ($query:expr) => {{
            let mut query = $query;
            for (event, details) in events.iter().zip(details) {
                query = query
                    .bind(event.tenant_id.as_str())
                    .bind(event.seq)
                    .bind(event.occurred_at)
                    .bind(event.actor.as_str())
                    .bind(event.action.as_str())
                    .bind(event.resource.as_str())
                    .bind(event.outcome.as_str())
                    .bind(event.request_id.as_deref())
                    .bind(details.as_str())
                    .bind(event.prev_hash.as_str())
                    .bind(event.hash.as_str())
                    .bind(event.trace_id.as_deref());
            }
            query
        }};
    }
    match tx {
        Tx::Sqlite(tx) => {
            bind_rows!(sqlx::query(&sql)).execute(&mut **tx).await?;
        }
        Tx::SqliteStatement(tx) => {
            bind_rows!(sqlx::query(&sql)).execute(&mut **tx).await?;
        }
        Tx::Postgres(tx) => {
            bind_rows!(sqlx::query(&sql)).execute(&mut **tx).await?;
        }
    }
    Ok(())
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
