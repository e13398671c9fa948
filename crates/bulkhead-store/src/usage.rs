//! Usage metering: model tokens per tenant, UTC day, model and agent, and tool calls per
//! tenant, day, agent and tool. What cost attribution and daily token budgets read.
//!
//! Counting happens in memory and a background task folds the counts into `usage_daily` and
//! `tool_usage_daily` once a second (and on [`Store::flush_usage`], which reads and shutdown
//! call first), in one transaction for all tenants. A request on the hot path thus pays a
//! mutex, not a write. The cost: a crash loses at most the last second of counts, which is
//! acceptable for metering and is not the audit trail (every upstream call is also in the
//! tenant's audit chain).
//!
//! A tenant's tokens spent today are kept beside the counts, so a budget check is a map
//! lookup: the database total, read at most every [`SPENT_REFRESH`] (which is how other
//! processes' spending shows up), plus what this process counted since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bulkhead_core::TenantId;

use crate::backend::{Access, Backend, Scope, execute, fetch_all, fetch_optional};
use crate::{StoreError, TenantStore};

const FLUSH_EVERY: Duration = Duration::from_secs(1);
const SPENT_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ToolCounts {
    calls: i64,
    failures: i64,
}

/// One row of a tenant's model usage.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageRow {
    pub day: String,
    pub model: String,
    /// The agent whose run spent it; empty for plain gateway calls.
    pub agent: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// One row of a tenant's tool calls.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ToolUsageRow {
    pub day: String,
    /// Empty for calls through `/mcp`.
    pub agent: String,
    /// `toolset.operation`.
    pub tool: String,
    pub calls: i64,
    pub failures: i64,
}

/// (tenant, day, model, agent)
type ModelKey = (TenantId, String, String, String);
/// (tenant, day, agent, tool)
type ToolKey = (TenantId, String, String, String);

#[derive(Default)]
struct Pending {
    models: HashMap<ModelKey, UsageCounts>,
    tools: HashMap<ToolKey, ToolCounts>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.models.is_empty() && self.tools.is_empty()
    }

    fn merge(&mut self, other: Pending) {
        for (key, counts) in other.models {
            let entry = self.models.entry(key).or_default();
            entry.requests += counts.requests;
            entry.input_tokens += counts.input_tokens;
            entry.output_tokens += counts.output_tokens;
        }
        for (key, counts) in other.tools {
            let entry = self.tools.entry(key).or_default();
            entry.calls += counts.calls;
            entry.failures += counts.failures;
        }
    }

    /// Tokens `tenant` spent on `day` that are counted here and not yet written.
    fn tokens(&self, tenant: &TenantId, day: &str) -> i64 {
        self.models
            .iter()
            .filter(|((t, d, _, _), _)| t == tenant && d == day)
            .map(|(_, c)| c.input_tokens + c.output_tokens)
            .sum()
    }
}

/// A tenant's tokens today as this process knows them.
struct Spent {
    day: String,
    tokens: i64,
    read_at: Instant,
}

#[derive(Clone)]
pub(crate) struct UsageMeter {
    pending: Arc<Mutex<Pending>>,
    spent: Arc<Mutex<HashMap<TenantId, Spent>>>,
    /// One flush at a time, so counts are never added twice or out of order.
    flushing: Arc<tokio::sync::Mutex<()>>,
}

fn today() -> String {
    bulkhead_core::timestamp::utc_day(bulkhead_core::timestamp::now_millis())
}

fn saturating(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl UsageMeter {
    /// A meter with no flusher: a dedicated worker's store, whose counts go to the control
    /// plane's meter over its channel (`remote.rs`) and never land in this one.
    pub(crate) fn unflushed() -> Self {
        Self {
            pending: Arc::default(),
            spent: Arc::default(),
            flushing: Arc::default(),
        }
    }

    /// Starts the background flusher; it stops when the last `Store` clone is dropped.
    pub(crate) fn start(backend: Backend) -> Self {
        let meter = Self::unflushed();
        let weak: Weak<Mutex<Pending>> = Arc::downgrade(&meter.pending);
        let (spent, flushing) = (meter.spent.clone(), meter.flushing.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FLUSH_EVERY);
            loop {
                ticks.tick().await;
                let Some(pending) = weak.upgrade() else {
                    return;
                };
                let meter = UsageMeter {
                    pending,
                    spent: spent.clone(),
                    flushing: flushing.clone(),
                };
                if let Err(error) = meter.flush(&backend).await {
                    tracing::warn!(%error, "writing usage counts failed; will retry");
                }
            }
        });
        meter
    }

    fn add_tokens(&self, key: ModelKey, input_tokens: u64, output_tokens: u64) {
        let tokens = saturating(input_tokens).saturating_add(saturating(output_tokens));
        if let Ok(mut spent) = self.spent.lock()
            && let Some(entry) = spent.get_mut(&key.0)
            && entry.day == key.1
        {
            entry.tokens = entry.tokens.saturating_add(tokens);
        }
        if let Ok(mut pending) = self.pending.lock() {
            let counts = pending.models.entry(key).or_default();
            counts.requests += 1;
            counts.input_tokens = counts.input_tokens.saturating_add(saturating(input_tokens));
            counts.output_tokens = counts
                .output_tokens
                .saturating_add(saturating(output_tokens));
        }
    }

    fn add_tool_call(&self, key: ToolKey, failed: bool) {
        if let Ok(mut pending) = self.pending.lock() {
            let counts = pending.tools.entry(key).or_default();
            counts.calls += 1;
            counts.failures += i64::from(failed);
        }
    }

    /// Folds every pending count into the tables. On failure the counts are put back.
    pub(crate) async fn flush(&self, backend: &Backend) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let batch = match self.pending.lock() {
            Ok(mut pending) if !pending.is_empty() => std::mem::take(&mut *pending),
            _ => return Ok(()),
        };
        let result = write(backend, &batch).await;
        if result.is_err()
            && let Ok(mut pending) = self.pending.lock()
        {
            pending.merge(batch);
        }
        result
    }

    /// Tokens `tenant` spent today: the database's total as of the last refresh plus what
    /// this process counted since.
    async fn spent_today(&self, backend: &Backend, tenant: &TenantId) -> Result<i64, StoreError> {
        let day = today();
        if let Ok(spent) = self.spent.lock()
            && let Some(entry) = spent.get(tenant)
            && entry.day == day
            && entry.read_at.elapsed() < SPENT_REFRESH
        {
            return Ok(entry.tokens);
        }
        // No flush may move counts from memory to the table while both are read.
        let _no_flush = self.flushing.lock().await;
        let stored = stored_tokens(backend, tenant, &day).await?;
        let unwritten = self
            .pending
            .lock()
            .map(|p| p.tokens(tenant, &day))
            .unwrap_or(0);
        let tokens = stored.saturating_add(unwritten);
        if let Ok(mut spent) = self.spent.lock() {
            spent.insert(
                tenant.clone(),
                Spent {
                    day,
                    tokens,
                    read_at: Instant::now(),
                },
            );
        }
        Ok(tokens)
    }
}

async fn stored_tokens(backend: &Backend, tenant: &TenantId, day: &str) -> Result<i64, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Total {
        tokens: i64,
    }
    let mut tx = backend.begin(Access::Read, Scope::ControlPlane).await?;
    let total = fetch_optional!(
        &mut tx,
        Total,
        "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) AS tokens \
         FROM usage_daily WHERE tenant_id = $1 AND day = $2",
        tenant.as_str(),
        day,
    )?;
    tx.commit().await?;
    Ok(total.map_or(0, |t| t.tokens))
}

async fn write(backend: &Backend, batch: &Pending) -> Result<(), StoreError> {
    let mut tx = backend.begin(Access::Write, Scope::ControlPlane).await?;
    for ((tenant, day, model, agent), counts) in &batch.models {
        execute!(
            &mut tx,
            "INSERT INTO usage_daily \
             (tenant_id, day, model, agent, requests, input_tokens, output_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant_id, day, model, agent) DO UPDATE SET \
             requests = usage_daily.requests + excluded.requests, \
             input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
             output_tokens = usage_daily.output_tokens + excluded.output_tokens",
            tenant.as_str(),
            day.as_str(),
            model.as_str(),
            agent.as_str(),
            counts.requests,
            counts.input_tokens,
            counts.output_tokens,
        )?;
    }
    for ((tenant, day, agent, tool), counts) in &batch.tools {
        execute!(
            &mut tx,
            "INSERT INTO tool_usage_daily (tenant_id, day, agent, tool, calls, failures) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, day, agent, tool) DO UPDATE SET \
             calls = tool_usage_daily.calls + excluded.calls, \
             failures = tool_usage_daily.failures + excluded.failures",
            tenant.as_str(),
            day.as_str(),
            agent.as_str(),
            tool.as_str(),
            counts.calls,
            counts.failures,
        )?;
    }
    tx.commit().await
}

impl TenantStore<'_> {
    /// Counts one model request to `model` (an alias) and its tokens for this tenant, on
    /// behalf of `agent` (`None` for a plain gateway call). In memory; written within a second.
    pub fn record_usage(
        &self,
        model: &str,
        agent: Option<&str>,
        input_tokens: u64,
        output_tokens: u64,
    ) {
        if let Some(link) = self.link {
            let args = (model, agent, input_tokens, output_tokens);
            return crate::remote::notify(link, self.context(), "record_usage", args);
        }
        let key = (
            self.context().tenant_id().clone(),
            today(),
            model.to_owned(),
            agent.unwrap_or_default().to_owned(),
        );
        self.usage.add_tokens(key, input_tokens, output_tokens);
    }

    /// Counts one call of `tool` (`toolset.operation`) by `agent` (`None` through `/mcp`).
    pub fn record_tool_call(&self, agent: Option<&str>, tool: &str, failed: bool) {
        if let Some(link) = self.link {
            let args = (agent, tool, failed);
            return crate::remote::notify(link, self.context(), "record_tool_call", args);
        }
        let key = (
            self.context().tenant_id().clone(),
            today(),
            agent.unwrap_or_default().to_owned(),
            tool.to_owned(),
        );
        self.usage.add_tool_call(key, failed);
    }

    /// Model tokens (input and output) this tenant spent today (UTC), for its budget.
    pub async fn tokens_spent_today(&self) -> Result<i64, StoreError> {
        crate::remote::remote!(self, tokens_spent_today);
        self.usage
            .spent_today(self.backend(), self.context().tenant_id())
            .await
    }

    /// This tenant's model usage, by day, model and agent, counts up to this moment included.
    pub async fn usage(&self) -> Result<Vec<UsageRow>, StoreError> {
        self.usage.flush(self.backend()).await?;
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            UsageRow,
            "SELECT day, model, agent, requests, input_tokens, output_tokens FROM usage_daily \
             WHERE tenant_id = $1 ORDER BY day, model, agent",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        Ok(rows)
    }

    /// This tenant's tool calls, by day, agent and tool, up to this moment included.
    pub async fn tool_usage(&self) -> Result<Vec<ToolUsageRow>, StoreError> {
        self.usage.flush(self.backend()).await?;
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            ToolUsageRow,
            "SELECT day, agent, tool, calls, failures FROM tool_usage_daily \
             WHERE tenant_id = $1 ORDER BY day, agent, tool",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// One row of the platform-wide usage report.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TenantUsageRow {
    pub tenant_id: String,
    #[sqlx(flatten)]
    pub usage: UsageRow,
}

impl crate::AdminStore<'_> {
    /// Every tenant's model usage for days `from..=to` (`YYYY-MM-DD`), for finance.
    pub async fn usage_report(
        &self,
        from: &str,
        to: &str,
    ) -> Result<Vec<TenantUsageRow>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            TenantUsageRow,
            "SELECT tenant_id, day, model, agent, requests, input_tokens, output_tokens \
             FROM usage_daily WHERE day >= $1 AND day <= $2 \
             ORDER BY tenant_id, day, model, agent",
            from,
            to,
        )?;
        tx.commit().await?;
        Ok(rows)
    }
}
