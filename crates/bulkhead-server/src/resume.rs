//! Paused runs going again: right after a decision, and from a sweep that expires overdue
//! approvals and picks up decided runs nobody resumed (the process stopped in between).
//! Resumption is claimed in the database, so two processes, or a decision racing the sweep,
//! never run the same continuation twice.

use std::time::Duration;

use bulkhead_core::TenantId;
use bulkhead_core::timestamp::now_millis;
use bulkhead_store::StoreError;

use crate::AppState;
use crate::worker::WorkerError;
use crate::worker::frames::FromWorker;

/// Resumes `run_id` of `tenant` on a task of its own; failures are logged.
pub(crate) fn spawn(state: AppState, tenant: TenantId, run_id: String) {
    tokio::spawn(async move {
        if let Err(error) = resume(&state, &tenant, &run_id).await {
            tracing::error!(tenant.id = %tenant, run_id, %error, "resuming a paused run failed");
        }
    });
}

async fn resume(state: &AppState, tenant: &TenantId, run_id: &str) -> Result<(), String> {
    let Some(ctx) = state
        .runtime_context(tenant)
        .await
        .map_err(|e| e.to_string())?
    else {
        tracing::info!(tenant.id = %tenant, run_id, "the tenant is gone or not active; its run stays paused");
        return Ok(());
    };
    // Continuing a run is agent work: a dedicated tenant's worker does it.
    let gate = state.tier_gate(tenant).read_owned().await;
    if gate.unwrap_or(ctx.isolation()) == bulkhead_core::Isolation::Dedicated {
        // Without workers it stays paused (never run in the shared process); a later sweep
        // tries again.
        let workers = state
            .workers()
            .ok_or_else(|| WorkerError::Disabled.to_string())?;
        let mut answers = workers
            .resume(&ctx, run_id)
            .await
            .map_err(|e| e.to_string())?;
        return match answers.recv().await {
            Some(FromWorker::Done { .. }) => {
                tracing::info!(tenant.id = %tenant, run_id, "the dedicated worker resumed a paused run");
                Ok(())
            }
            Some(FromWorker::Refused { code, detail, .. }) => Err(format!("{code}: {detail}")),
            _ => Err(WorkerError::Lost.to_string()),
        };
    }
    let store = state.store().tenant(&ctx);
    match state.runner().resume(&store, run_id).await {
        Ok(Some(run)) => {
            tracing::info!(tenant.id = %tenant, run_id, status = %run.status, "resumed a paused run");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Expires overdue approvals and resumes, in the background, every run whose approval is no
/// longer pending. Answers how many runs it set going.
pub async fn sweep(state: &AppState) -> Result<usize, StoreError> {
    let admin = state.store().admin();
    admin.expire_approvals(now_millis()).await?;
    let runs = admin.resumable_runs().await?;
    let count = runs.len();
    for run in runs {
        if let Ok(tenant) = TenantId::try_from(run.tenant_id.as_str()) {
            spawn(state.clone(), tenant, run.run_id);
        }
    }
    Ok(count)
}

/// Sweeps now and then every `every`, until the process ends.
pub fn spawn_sweeper(state: AppState, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(50)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = sweep(&state).await {
                tracing::warn!(%error, "the approval sweep failed");
            }
        }
    })
}
