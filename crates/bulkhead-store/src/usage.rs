//! Token usage metering: per tenant, UTC day and model.
//!
//! Counting happens in memory and a background task folds the counts into `usage_daily`
//! once a second (and on [`Store::flush_usage`], which reads and shutdown call first), in one
//! transaction for all tenants. A request on the hot path thus pays a mutex, not a write. The
//! cost: a crash loses at most the last second of counts, which is acceptable for metering
//! and is not the audit trail (every upstream call is also in the tenant's audit chain).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bulkhead_core::TenantId;

use crate::backend::{Access, Backend, Scope, execute, fetch_all};
use crate::{StoreError, TenantStore};

const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// One row of a tenant's usage.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageRow {
    pub day: String,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

type Pending = HashMap<(TenantId, String, String), UsageCounts>;

#[derive(Clone)]
pub(crate) struct UsageMeter {
    pending: Arc<Mutex<Pending>>,
    /// One flush at a time, so counts are never added twice or out of order.
    flushing: Arc<tokio::sync::Mutex<()>>,
}

impl UsageMeter {
    /// Starts the background flusher; it stops when the last `Store` clone is dropped.
    pub(crate) fn start(backend: Backend) -> Self {
        let meter = Self {
            pending: Arc::default(),
            flushing: Arc::default(),
        };
        let weak: Weak<Mutex<Pending>> = Arc::downgrade(&meter.pending);
        let flushing = meter.flushing.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FLUSH_EVERY);
            loop {
                ticks.tick().await;
                let Some(pending) = weak.upgrade() else {
                    return;
                };
                let meter = UsageMeter {
                    pending,
                    flushing: flushing.clone(),
                };
                if let Err(error) = meter.flush(&backend).await {
                    tracing::warn!(%error, "writing usage counts failed; will retry");
                }
            }
        });
        meter
    }

    fn add(&self, tenant: &TenantId, model: &str, input_tokens: u64, output_tokens: u64) {
        let day = bulkhead_core::timestamp::to_rfc3339(bulkhead_core::timestamp::now_millis())
            .chars()
            .take(10)
            .collect::<String>();
        if let Ok(mut pending) = self.pending.lock() {
            let counts = pending
                .entry((tenant.clone(), day, model.to_owned()))
                .or_default();
            counts.requests += 1;
            counts.input_tokens += i64::try_from(input_tokens).unwrap_or(i64::MAX);
            counts.output_tokens += i64::try_from(output_tokens).unwrap_or(i64::MAX);
        }
    }

    /// Folds every pending count into the table. On failure the counts are put back.
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
            for (key, counts) in batch {
                let entry = pending.entry(key).or_default();
                entry.requests += counts.requests;
                entry.input_tokens += counts.input_tokens;
                entry.output_tokens += counts.output_tokens;
            }
        }
        result
    }
}

async fn write(backend: &Backend, batch: &Pending) -> Result<(), StoreError> {
    let mut tx = backend.begin(Access::Write, Scope::ControlPlane).await?;
    for ((tenant, day, model), counts) in batch {
        execute!(
            &mut tx,
            "INSERT INTO usage_daily (tenant_id, day, model, requests, input_tokens, output_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, day, model) DO UPDATE SET \
             requests = usage_daily.requests + excluded.requests, \
             input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
             output_tokens = usage_daily.output_tokens + excluded.output_tokens",
            tenant.as_str(),
            day.as_str(),
            model.as_str(),
            counts.requests,
            counts.input_tokens,
            counts.output_tokens,
        )?;
    }
    tx.commit().await
}

impl TenantStore<'_> {
    /// Counts one request to `model` (an alias, or `agent/<name>`) and its tokens for this
    /// tenant. In memory; written within a second.
    pub fn record_usage(&self, model: &str, input_tokens: u64, output_tokens: u64) {
        self.usage.add(
            self.context().tenant_id(),
            model,
            input_tokens,
            output_tokens,
        );
    }

    /// This tenant's usage, by day and model, counts up to this moment included.
    pub async fn usage(&self) -> Result<Vec<UsageRow>, StoreError> {
        self.usage.flush(self.backend()).await?;
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            UsageRow,
            "SELECT day, model, requests, input_tokens, output_tokens FROM usage_daily \
             WHERE tenant_id = $1 ORDER BY day, model",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        Ok(rows)
    }
}
