//! Approvals: tool calls waiting for a person of the same tenant, and their decisions.

use axum::Json;
use axum::extract::State;
use bulkhead_core::Role;
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_store::{ApprovalRecord, DecisionOutcome};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};

/// Who may see approvals: those who may decide them and those who run the tenant.
const VIEWERS: &[Role] = &[Role::Owner, Role::Admin, Role::Approver, Role::Developer];
/// Only an approver decides; owners who want to must hold the role too.
pub(crate) const DECIDERS: &[Role] = &[Role::Approver];
const STATUSES: [&str; 4] = ["pending", "approved", "denied", "expired"];

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalView {
    pub id: String,
    /// "Agent `<agent>` acting as `<tenant name>` (`<tenant id>`) wants to `<action>` `<target>`".
    pub line: String,
    pub status: String,
    pub run_id: String,
    pub agent: String,
    pub tool: String,
    pub action: String,
    pub target: String,
    /// The exact arguments the tool will be called with.
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
    pub created_at: String,
    pub expires_at: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
}

pub(crate) fn approval_view(
    tenant_name: &str,
    tenant_id: &str,
    record: ApprovalRecord,
) -> ApprovalView {
    ApprovalView {
        line: bulkhead_runtime::approvals::line(tenant_name, tenant_id, &record),
        arguments: serde_json::from_str(&record.arguments).unwrap_or_default(),
        id: record.approval_id,
        status: record.status,
        run_id: record.run_id,
        agent: record.agent,
        tool: record.tool,
        action: record.action,
        target: record.target,
        created_at: to_rfc3339(record.created_at),
        expires_at: to_rfc3339(record.expires_at),
        decided_by: record.decided_by,
        decided_at: record.decided_at.map(to_rfc3339),
        reason: record.reason,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    /// `pending`, `approved`, `denied` or `expired`; all when absent.
    pub status: Option<String>,
    /// At most this many, newest first (1 to 500, default 100).
    pub limit: Option<i64>,
}

/// The tenant's approvals, newest first.
#[utoipa::path(get, path = "/v1/approvals", tag = "tools",
    security(("tenant_credential" = [])),
    params(ApprovalQuery),
    responses((status = 200, body = Vec<ApprovalView>), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn list_approvals(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiQuery(query): ApiQuery<ApprovalQuery>,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    require_role(&ctx, VIEWERS)?;
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            "one of pending, approved, denied, expired",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "1 to 500"));
    }
    let records = state
        .store()
        .tenant(&ctx)
        .approvals(query.status.as_deref(), limit)
        .await?;
    let (name, id) = (ctx.tenant_name(), ctx.tenant_id().as_str());
    Ok(Json(
        records
            .into_iter()
            .map(|r| approval_view(name, id, r))
            .collect(),
    ))
}

/// One approval. Another tenant's answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "tools",
    security(("tenant_credential" = [])),
    params(("id" = String, Path, description = "Approval id")),
    responses((status = 200, body = ApprovalView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_approval(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ApprovalView>, ApiError> {
    require_role(&ctx, VIEWERS)?;
    let record = state
        .store()
        .tenant(&ctx)
        .approval(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(approval_view(
        ctx.tenant_name(),
        ctx.tenant_id().as_str(),
        record,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionInput {
    pub approve: bool,
    /// Why; shown to the model on a denial and kept in the audit trail.
    #[serde(default)]
    pub reason: String,
}

/// Approves or denies a pending call. Approver role of the same tenant only; another tenant's
/// approval answers 404. The first decision wins (a second gets 409). Approved, the tool runs
/// with the tenant's credential and the run continues; denied, the model is told no.
#[utoipa::path(post, path = "/v1/approvals/{id}/decision", tag = "tools",
    security(("tenant_credential" = [])),
    params(("id" = String, Path, description = "Approval id")),
    request_body = DecisionInput,
    responses((status = 200, body = ApprovalView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn decide(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(id): ApiPath<String>,
    ApiJson(input): ApiJson<DecisionInput>,
) -> Result<Json<ApprovalView>, ApiError> {
    require_role(&ctx, DECIDERS)?;
    let record = decide_approval(&state, &ctx, &id, input.approve, &input.reason).await?;
    Ok(Json(approval_view(
        ctx.tenant_name(),
        ctx.tenant_id().as_str(),
        record,
    )))
}

/// Records a decision and sets the run going again; shared by the API and the console.
pub(crate) async fn decide_approval(
    state: &AppState,
    ctx: &bulkhead_core::TenantContext,
    id: &str,
    approve: bool,
    reason: &str,
) -> Result<ApprovalRecord, ApiError> {
    if reason.len() > 2_000 {
        return Err(ApiError::invalid("reason", "at most 2000 bytes"));
    }
    match state
        .store()
        .tenant(ctx)
        .decide_approval(id, approve, reason)
        .await?
    {
        None => Err(ApiError::NotFound),
        Some(DecisionOutcome::AlreadyDecided(record)) => Err(ApiError::Conflict(format!(
            "this approval is already {}",
            record.status
        ))),
        Some(DecisionOutcome::Decided(record)) => {
            // A gateway call has no run: its caller retries once approved.
            if !record.run_id.is_empty() {
                crate::resume::spawn(
                    state.clone(),
                    ctx.tenant_id().clone(),
                    record.run_id.clone(),
                );
            }
            Ok(record)
        }
    }
}
