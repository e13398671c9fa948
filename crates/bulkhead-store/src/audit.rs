//! Appending to and reading a tenant's audit chain, inside the caller's transaction.

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditDraft, AuditEvent, GENESIS_HASH, Origin};
use bulkhead_core::timestamp::now_millis;

use crate::StoreError;
use crate::backend::{Tx, execute, fetch_all, fetch_optional};
use crate::records::{AUDIT_COLUMNS, AuditRow, convert_all};

#[derive(sqlx::FromRow)]
struct HeadRow {
    seq: i64,
    hash: String,
}

/// Appends one event to `tenant`'s chain in `tx`.
///
/// The first statement is an upsert on the tenant's head row: a write, so it takes the row lock
/// on PostgreSQL (SQLite already serialises writers) and concurrent appends for one tenant
/// queue up instead of racing for the same sequence number. Different tenants never wait for
/// each other.
pub(crate) async fn append(
    tx: &mut Tx,
    tenant: &TenantId,
    origin: &Origin,
    draft: AuditDraft,
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
        occurred_at: now_millis(),
        actor: origin.actor.clone(),
        action: draft.action.to_owned(),
        resource: draft.resource,
        outcome: draft.outcome,
        request_id: origin.request_id.as_ref().map(|r| r.as_str().to_owned()),
        details: draft.details,
        prev_hash: head.hash,
        hash: String::new(),
    };
    event.hash = event.compute_hash();

    execute!(
        tx,
        "INSERT INTO audit_events (tenant_id, seq, occurred_at, actor, action, resource, \
         outcome, request_id, details, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
