//! A tenant's daily token budget and its cap on runs in progress.
//!
//! The budget is checked before every model request (each step of a run, each gateway
//! call), against what the usage meter has counted today, so a run that crosses it stops at
//! its next step with `budget_exhausted` rather than finishing on another tenant's goodwill.
//! A request in flight is not cut off: a budget can be overshot by what the requests already
//! running spend. The first refusal of a tenant's day is written to its audit trail.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::config::{EffectiveLimits, LimitsConfig};
use bulkhead_store::{StoreError, TenantStore};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("tenant {tenant} has used {spent} of its {budget} tokens for today (UTC)")]
    BudgetExhausted {
        tenant: TenantId,
        spent: i64,
        budget: u64,
    },
    #[error("tenant {tenant} already has {cap} runs in progress")]
    TooManyRuns { tenant: TenantId, cap: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QuotaError {
    pub fn code(&self) -> &'static str {
        match self {
            QuotaError::BudgetExhausted { .. } => "budget_exhausted",
            QuotaError::TooManyRuns { .. } => "too_many_runs",
            QuotaError::Store(_) => "internal",
        }
    }
}

pub struct Quotas {
    limits: LimitsConfig,
    /// Tenants whose exhaustion today is already in their audit trail: (tenant, day).
    announced: Mutex<HashSet<(TenantId, String)>>,
    run_slots: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
}

/// Held for as long as a run is in progress; dropping it frees the slot.
pub struct RunSlot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Quotas {
    pub fn new(limits: LimitsConfig) -> Self {
        Self {
            limits,
            announced: Mutex::default(),
            run_slots: Mutex::default(),
        }
    }

    /// The limits that apply to `tenant`.
    pub fn limits_for(&self, tenant: &TenantId) -> EffectiveLimits {
        self.limits.for_tenant(tenant.as_str())
    }

    /// Refuses a model request when the tenant of `store` has spent its tokens for today.
    pub async fn check_tokens(&self, store: &TenantStore<'_>) -> Result<(), QuotaError> {
        let tenant = store.context().tenant_id();
        let budget = self.limits_for(tenant).tokens_per_day;
        if budget == 0 {
            return Ok(());
        }
        let spent = store.tokens_spent_today().await?;
        if spent < i64::try_from(budget).unwrap_or(i64::MAX) {
            return Ok(());
        }
        let day = bulkhead_core::timestamp::utc_day(bulkhead_core::timestamp::now_millis());
        let first_today = self
            .announced
            .lock()
            .map(|mut seen| {
                // Yesterday's announcements are of no use any more; keep the set small.
                seen.retain(|(_, announced_day)| *announced_day == day);
                seen.insert((tenant.clone(), day.clone()))
            })
            .unwrap_or(false);
        if first_today {
            tracing::warn!(tenant.id = %tenant, spent, budget, "daily token budget exhausted");
            store
                .record_event(AuditDraft {
                    action: "budget.exhausted",
                    resource: format!("budget/{day}"),
                    outcome: Outcome::Failure,
                    details: json!({"tokens_spent": spent, "tokens_per_day": budget}),
                })
                .await?;
        }
        metrics::counter!("bulkhead_budget_refusals_total").increment(1);
        Err(QuotaError::BudgetExhausted {
            tenant: tenant.clone(),
            spent,
            budget,
        })
    }

    /// Takes one of the tenant's run slots, or refuses when all are taken.
    pub fn run_slot(&self, tenant: &TenantId) -> Result<RunSlot, QuotaError> {
        let cap = self.limits_for(tenant).max_concurrent_runs;
        if cap == 0 {
            return Ok(RunSlot { _permit: None });
        }
        let semaphore = match self.run_slots.lock() {
            Ok(mut slots) => slots
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(cap as usize)))
                .clone(),
            Err(_) => return Ok(RunSlot { _permit: None }),
        };
        semaphore
            .try_acquire_owned()
            .map(|permit| RunSlot {
                _permit: Some(permit),
            })
            .map_err(|_| QuotaError::TooManyRuns {
                tenant: tenant.clone(),
                cap,
            })
    }
}
