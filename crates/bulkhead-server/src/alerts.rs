//! The per-tenant error-rate alert.
//!
//! Every authenticated request counts toward its tenant's window (a ring of buckets, so the
//! window slides without keeping each request). A sweep judges each tenant: past the
//! threshold with enough volume it raises `alert.error_rate`, and `alert.resolved` once the
//! rate is back under; each goes into the tenant's own audit trail (the operator's and the
//! tenant's auditor's record of what happened to whom) and to the optional webhook.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::config::AlertsConfig;
use bulkhead_egress::OutboundRequest;
use serde_json::json;

use crate::AppState;

const BUCKETS: u64 = 10;

#[derive(Default, Clone, Copy)]
struct Bucket {
    /// Which bucket period this is, counted from the tracker's start.
    period: u64,
    requests: u64,
    errors: u64,
}

#[derive(Default)]
struct Window {
    buckets: [Bucket; BUCKETS as usize],
    firing: bool,
}

impl Window {
    fn totals(&self, now_period: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| b.period + BUCKETS > now_period && b.period <= now_period)
            .fold((0, 0), |(r, e), b| (r + b.requests, e + b.errors))
    }
}

/// A change of a tenant's alert state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub tenant: TenantId,
    pub firing: bool,
    pub requests: u64,
    pub errors: u64,
}

impl Transition {
    pub fn rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

pub struct ErrorRates {
    config: AlertsConfig,
    started: Instant,
    bucket: Duration,
    tenants: Mutex<HashMap<TenantId, Window>>,
}

impl ErrorRates {
    pub fn new(config: AlertsConfig) -> Self {
        let bucket = Duration::from_millis((config.window_seconds.max(1) * 1000) / BUCKETS);
        Self {
            config,
            started: Instant::now(),
            bucket,
            tenants: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.error_rate_threshold > 0.0
    }

    fn period(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started).as_millis();
        (elapsed / self.bucket.as_millis().max(1)) as u64
    }

    /// Counts one finished request of `tenant`.
    pub fn record(&self, tenant: &TenantId, failed: bool) {
        self.record_at(tenant, failed, Instant::now());
    }

    fn record_at(&self, tenant: &TenantId, failed: bool, now: Instant) {
        if !self.enabled() {
            return;
        }
        let period = self.period(now);
        let Ok(mut tenants) = self.tenants.lock() else {
            return;
        };
        let window = tenants.entry(tenant.clone()).or_default();
        let bucket = &mut window.buckets[(period % BUCKETS) as usize];
        if bucket.period != period {
            *bucket = Bucket {
                period,
                ..Bucket::default()
            };
        }
        bucket.requests += 1;
        bucket.errors += u64::from(failed);
    }

    /// Judges every tenant; answers those whose alert starts or ends now.
    pub fn judge(&self) -> Vec<Transition> {
        self.judge_at(Instant::now())
    }

    fn judge_at(&self, now: Instant) -> Vec<Transition> {
        let period = self.period(now);
        let Ok(mut tenants) = self.tenants.lock() else {
            return Vec::new();
        };
        let mut transitions = Vec::new();
        tenants.retain(|tenant, window| {
            let (requests, errors) = window.totals(period);
            let over = requests >= self.config.min_requests
                && errors as f64 > self.config.error_rate_threshold * requests as f64;
            // Resolved once the rate is back under, whatever the volume (an emptied window
            // counts as under).
            let under = errors as f64 <= self.config.error_rate_threshold * requests as f64;
            if over && !window.firing {
                window.firing = true;
                transitions.push(Transition {
                    tenant: tenant.clone(),
                    firing: true,
                    requests,
                    errors,
                });
            } else if under && window.firing {
                window.firing = false;
                transitions.push(Transition {
                    tenant: tenant.clone(),
                    firing: false,
                    requests,
                    errors,
                });
            }
            // A quiet tenant's empty window is forgotten.
            requests > 0 || window.firing
        });
        transitions
    }

    pub fn config(&self) -> &AlertsConfig {
        &self.config
    }
}

/// Judges tenants every `check_ms` and reports each transition.
pub fn spawn_judge(state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    if !state.error_rates().enabled() {
        return None;
    }
    let every = Duration::from_millis(state.error_rates().config().check_ms.max(10));
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            for transition in state.error_rates().judge() {
                report(&state, &transition).await;
            }
        }
    }))
}

async fn report(state: &AppState, transition: &Transition) {
    let config = state.error_rates().config();
    let (action, outcome) = if transition.firing {
        ("alert.error_rate", Outcome::Failure)
    } else {
        ("alert.resolved", Outcome::Success)
    };
    let details = json!({
        "error_rate": transition.rate(),
        "requests": transition.requests,
        "errors": transition.errors,
        "threshold": config.error_rate_threshold,
        "window_seconds": config.window_seconds,
    });
    if transition.firing {
        tracing::warn!(tenant.id = %transition.tenant, rate = transition.rate(), requests = transition.requests, "tenant error rate above threshold");
    } else {
        tracing::info!(tenant.id = %transition.tenant, "tenant error rate back under threshold");
    }
    metrics::counter!("bulkhead_alerts_total", "kind" => action).increment(1);
    // A suspended tenant's alert still reaches the operator through the log and metric.
    let ctx = match state.runtime_context(&transition.tenant).await {
        Ok(Some(ctx)) => ctx,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, tenant.id = %transition.tenant, "alert not recorded");
            return;
        }
    };
    let store = state.store().tenant(&ctx);
    if let Err(error) = store
        .record_event(AuditDraft {
            action,
            resource: "alerts/error_rate".into(),
            outcome,
            details: details.clone(),
        })
        .await
    {
        tracing::warn!(%error, tenant.id = %transition.tenant, "alert not recorded");
    }
    if let Some(webhook) = &config.webhook {
        let mut body = details;
        body["type"] = json!(action);
        body["tenant_id"] = json!(transition.tenant);
        let sent = state
            .egress()
            .for_tenant(&ctx)
            .send(webhook, OutboundRequest::post_json("/", &body))
            .await;
        if let Err(error) = sent {
            tracing::warn!(%error, tenant.id = %transition.tenant, "alert webhook not reached");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threshold: f64, min_requests: u64) -> AlertsConfig {
        AlertsConfig {
            error_rate_threshold: threshold,
            window_seconds: 10,
            min_requests,
            ..AlertsConfig::default()
        }
    }

    #[test]
    fn an_alert_needs_volume_and_rate_and_resolves_when_the_window_moves_on() {
        let rates = ErrorRates::new(config(0.02, 50));
        let (a, b) = (
            TenantId::try_from("a").unwrap(),
            TenantId::try_from("b").unwrap(),
        );
        let t0 = rates.started;
        // Three failures in ten: a high rate, too little volume.
        for i in 0..10 {
            rates.record_at(&a, i < 3, t0);
        }
        assert!(rates.judge_at(t0).is_empty());
        for _ in 0..40 {
            rates.record_at(&a, false, t0);
            rates.record_at(&b, false, t0);
        }
        let fired = rates.judge_at(t0);
        assert_eq!(
            fired,
            [Transition {
                tenant: a.clone(),
                firing: true,
                requests: 50,
                errors: 3
            }]
        );
        // Fires once, not at every judgement.
        assert!(rates.judge_at(t0).is_empty());
        // Eleven seconds later the window holds only new, successful requests.
        let later = t0 + Duration::from_secs(11);
        for _ in 0..60 {
            rates.record_at(&a, false, later);
        }
        let resolved = rates.judge_at(later);
        assert_eq!(resolved.len(), 1);
        assert!(!resolved[0].firing);
        assert_eq!((resolved[0].requests, resolved[0].errors), (60, 0));
    }

    #[test]
    fn a_rate_at_the_threshold_does_not_fire() {
        let rates = ErrorRates::new(config(0.02, 100));
        let a = TenantId::try_from("a").unwrap();
        for i in 0..100 {
            rates.record_at(&a, i < 2, rates.started);
        }
        assert!(rates.judge_at(rates.started).is_empty());
        rates.record_at(&a, true, rates.started);
        assert_eq!(rates.judge_at(rates.started).len(), 1);
    }
}
