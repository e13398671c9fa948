//! What each tenant, agent and tool call consumed and cost: the tenant's own report and the
//! platform-wide one for finance.

use axum::Json;
use axum::extract::State;
use bulkhead_core::Role;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::authn::{Admin, Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLine {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The model alias used (by the gateway or by an agent's runs).
    pub model: String,
    /// The agent whose runs used it; empty for plain gateway calls.
    pub agent: String,
    /// Model requests (one per step of a run).
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// At the model's configured prices (`input_usd_per_million`, `output_usd_per_million`).
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolUsageLine {
    pub day: String,
    /// Empty for calls through `/mcp`.
    pub agent: String,
    /// `toolset.operation`.
    pub tool: String,
    pub calls: i64,
    pub failures: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Budget {
    /// 0: no budget.
    pub tokens_per_day: u64,
    /// Tokens spent today (UTC), as the budget sees them.
    pub spent_today: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub lines: Vec<UsageLine>,
    pub tool_calls: Vec<ToolUsageLine>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub budget: Budget,
}

const USAGE_READERS: &[Role] = &[Role::Owner, Role::Admin, Role::Viewer];

fn line(state: &AppState, row: bulkhead_store::UsageRow) -> UsageLine {
    let cost_usd = state
        .runner()
        .model_config(&row.model)
        .map_or(0.0, |m| m.cost_usd(row.input_tokens, row.output_tokens));
    UsageLine {
        day: row.day,
        model: row.model,
        agent: row.agent,
        requests: row.requests,
        input_tokens: row.input_tokens,
        output_tokens: row.output_tokens,
        cost_usd,
    }
}

/// The tenant's model usage by day, model and agent with its cost, its tool calls by agent
/// and tool, and its daily budget, up to this moment. Owner, admin or viewer.
#[utoipa::path(get, path = "/v1/usage", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    responses((status = 200, body = UsageReport), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn tenant_usage(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<UsageReport>, ApiError> {
    require_role(&ctx, USAGE_READERS)?;
    let store = state.store().tenant(&ctx);
    let lines: Vec<UsageLine> = store
        .usage()
        .await?
        .into_iter()
        .map(|row| line(&state, row))
        .collect();
    let tool_calls = store
        .tool_usage()
        .await?
        .into_iter()
        .map(|row| ToolUsageLine {
            day: row.day,
            agent: row.agent,
            tool: row.tool,
            calls: row.calls,
            failures: row.failures,
        })
        .collect();
    let budget = Budget {
        tokens_per_day: state
            .runner()
            .quotas()
            .limits_for(ctx.tenant_id())
            .tokens_per_day,
        spent_today: store.tokens_spent_today().await?,
    };
    Ok(Json(UsageReport {
        requests: lines.iter().map(|l| l.requests).sum(),
        input_tokens: lines.iter().map(|l| l.input_tokens).sum(),
        output_tokens: lines.iter().map(|l| l.output_tokens).sum(),
        cost_usd: lines.iter().map(|l| l.cost_usd).sum(),
        lines,
        tool_calls,
        budget,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PeriodQuery {
    /// First UTC day, `YYYY-MM-DD`; default: the first of this month.
    pub from: Option<String>,
    /// Last UTC day included, `YYYY-MM-DD`; default: today.
    pub to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantUsage {
    pub tenant_id: String,
    pub lines: Vec<UsageLine>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlatformUsage {
    pub from: String,
    pub to: String,
    pub tenants: Vec<TenantUsage>,
    pub cost_usd: f64,
}

fn day(value: Option<String>, field: &str, default: String) -> Result<String, ApiError> {
    match value {
        None => Ok(default),
        Some(day)
            if day.len() == 10
                && bulkhead_core::timestamp::parse_rfc3339(&format!("{day}T00:00:00Z"))
                    .is_some() =>
        {
            Ok(day)
        }
        Some(_) => Err(ApiError::invalid(field, "expected a day as YYYY-MM-DD")),
    }
}

/// Every tenant's usage and cost by day, model and agent over a period, for finance.
#[utoipa::path(get, path = "/admin/v1/usage", tag = "control-plane",
    security(("admin_token" = [])),
    params(PeriodQuery),
    responses((status = 200, body = PlatformUsage), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn platform_usage(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<PeriodQuery>,
) -> Result<Json<PlatformUsage>, ApiError> {
    let today = bulkhead_core::timestamp::utc_day(bulkhead_core::timestamp::now_millis());
    let month: String = today.chars().take(7).collect();
    let from = day(query.from, "from", format!("{month}-01"))?;
    let to = day(query.to, "to", today)?;
    state.store().flush_usage().await?;
    let rows = state.store().admin().usage_report(&from, &to).await?;
    let mut tenants: Vec<TenantUsage> = Vec::new();
    for row in rows {
        if tenants.last().is_none_or(|t| t.tenant_id != row.tenant_id) {
            tenants.push(TenantUsage {
                tenant_id: row.tenant_id.clone(),
                lines: Vec::new(),
                input_tokens: 0,
                output_tokens: 0,
                cost_usd: 0.0,
            });
        }
        let usage = line(&state, row.usage);
        if let Some(tenant) = tenants.last_mut() {
            tenant.input_tokens += usage.input_tokens;
            tenant.output_tokens += usage.output_tokens;
            tenant.cost_usd += usage.cost_usd;
            tenant.lines.push(usage);
        }
    }
    Ok(Json(PlatformUsage {
        cost_usd: tenants.iter().map(|t| t.cost_usd).sum(),
        from,
        to,
        tenants,
    }))
}
