//! Prometheus metrics: request counts and latency by route, authenticated requests by tenant
//! and status class, rate-limit rejections and upstream errors (counted in egress). A `tenant` label appears only for the tenants
//! `[metrics] tenant_labels` names; the rest are `other`, so cardinality stays bounded.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use bulkhead_core::TenantId;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process's recorder, installed on first use (a process has one global recorder).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Counts every request by route (its template, never the raw path), method and status class,
/// with its latency.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = status_class(response.status());
    metrics::counter!("bulkhead_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("bulkhead_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `2xx`, `4xx`, ...: the `status` label, a handful of values whatever the status.
pub(crate) fn status_class(status: axum::http::StatusCode) -> String {
    format!("{}xx", status.as_u16() / 100)
}

/// The `tenant` label value for `tenant`: its id if allowlisted, else `other`.
pub fn tenant_label(allowlist: &[String], tenant: &TenantId) -> String {
    if allowlist.iter().any(|t| t == tenant.as_str()) {
        tenant.to_string()
    } else {
        "other".to_owned()
    }
}
