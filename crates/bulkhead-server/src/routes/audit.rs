//! The tenant's audit trail for its own auditors: paged, exported as NDJSON, verified.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bulkhead_core::Role;
use bulkhead_core::audit::{AuditEvent, ChainHead};
use bulkhead_core::timestamp::parse_rfc3339;
use bulkhead_store::AuditFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;

/// Who may read the trail: those who run the tenant and its auditors (viewer).
const AUDITORS: &[Role] = &[Role::Owner, Role::Admin, Role::Viewer];
const PAGE: i64 = 1_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Events after this sequence number (the `next_after` of the previous page).
    pub after: Option<i64>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<i64>,
    /// RFC 3339: events at or after this time.
    pub since: Option<String>,
    /// RFC 3339: events before this time.
    pub until: Option<String>,
    /// An action (`approval.approved`), or a prefix ending in `.` (`approval.`).
    pub action: Option<String>,
}

fn filter(query: &AuditQuery, limit: i64) -> Result<AuditFilter, ApiError> {
    let time = |field: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| parse_rfc3339(v).ok_or_else(|| ApiError::invalid(field, "an RFC 3339 time")))
            .transpose()
    };
    if let Some(action) = &query.action
        && (action.is_empty()
            || action.len() > 100
            || !action
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'))
    {
        return Err(ApiError::invalid(
            "action",
            "lowercase letters, '.' and '_' (end with '.' for a prefix)",
        ));
    }
    Ok(AuditFilter {
        after_seq: query.after.unwrap_or(0).max(0),
        since: time("since", &query.since)?,
        until: time("until", &query.until)?,
        action: query.action.clone(),
        limit,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<AuditEvent>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<i64>,
}

/// The tenant's audit events, oldest first, paged by sequence number and filtered by time
/// and action. Owner, admin or viewer.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    security(("tenant_credential" = [])),
    params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn list_audit(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    require_role(&ctx, AUDITORS)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", "1 to 1000"));
    }
    let events = state
        .store()
        .tenant(&ctx)
        .audit_page(&filter(&query, limit)?)
        .await?;
    let next_after = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage { events, next_after }))
}

/// The whole trail (or the part the filters select) as NDJSON, one event per line with its
/// hashes, streamed page by page. `bulkhead audit verify --file` checks a full export offline.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit",
    security(("tenant_credential" = [])),
    params(AuditQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String, description = "One event per line"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn export_audit(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    require_role(&ctx, AUDITORS)?;
    let mut filter = filter(&query, PAGE)?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        let store = state.store().tenant(&ctx);
        loop {
            let events = match store.audit_page(&filter).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::error!(%error, "audit export failed midway");
                    let _ = sender
                        .send(Err(std::io::Error::other("export failed")))
                        .await;
                    return;
                }
            };
            let Some(last) = events.last().map(|e| e.seq) else {
                return;
            };
            let mut chunk = String::new();
            for event in &events {
                if let Ok(line) = serde_json::to_string(event) {
                    chunk.push_str(&line);
                    chunk.push('\n');
                }
            }
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
            filter.after_seq = last;
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    /// Whether the whole trail forms one unbroken chain ending at the recorded head.
    pub ok: bool,
    /// How many events were checked before the end or the first fault.
    pub events: u64,
    pub last_seq: i64,
    /// The hash of the last verified event: keep it elsewhere to compare later.
    pub head_hash: String,
    /// The head the store recorded with the last append.
    pub recorded_seq: i64,
    pub recorded_hash: String,
    /// The first fault found, in words, with its sequence number.
    pub error: Option<String>,
}

/// Verifies the tenant's whole chain: every event's hash, every link, the sequence, and that
/// it ends at the head recorded with the last append (so a cut tail is found too).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    security(("tenant_credential" = [])),
    responses((status = 200, body = VerifyReport), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn verify_audit(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<VerifyReport>, ApiError> {
    require_role(&ctx, AUDITORS)?;
    let found = state.store().tenant(&ctx).verify_audit().await?;
    let ChainHead {
        events,
        last_seq,
        head_hash,
    } = found.head;
    let (recorded_seq, recorded_hash, error) =
        (found.recorded_seq, found.recorded_hash, found.error);
    Ok(Json(VerifyReport {
        ok: error.is_none(),
        events,
        last_seq,
        head_hash,
        recorded_seq,
        recorded_hash,
        error,
    }))
}
