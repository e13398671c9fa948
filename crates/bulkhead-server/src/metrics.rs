//! Prometheus metrics: request counts and latency by route, authenticated requests by tenant
//! and status class, rate-limit rejections and upstream errors (counted in egress). A `tenant` label appears only for the tenants
//! `[metrics] tenant_labels` names; the rest are `other`, so cardinality stays bounded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use bulkhead_core::TenantId;
use metrics::{Counter, Histogram};
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

/// The labels of one request's metrics: the route's template (never the raw path), the method
/// and the status class.
pub(crate) struct RequestLabels<'a> {
    pub route: &'a str,
    pub method: &'a Method,
    pub status: StatusCode,
}

/// Counts a request by route, method and status class, with its latency.
///
/// The handles are looked up once per thread and label set: `counter!` with labels builds its
/// key (allocating every label) and hashes it into the registry on every call, which was a
/// few thousand instructions of every gateway request. The recorder is installed before the
/// first request ([`handle`]) and never drops a metric (no idle timeout), so a kept handle
/// stays the registry's.
pub(crate) fn record_request(labels: RequestLabels<'_>, elapsed: Duration) {
    let method = method_label(labels.method);
    let class = labels.status.as_u16() / 100;
    REQUEST_HANDLES.with_borrow_mut(|routes| {
        let Some(handles) = kept(routes, labels.route, || RouteHandles {
            duration: metrics::histogram!(
                "bulkhead_http_request_duration_seconds",
                "route" => labels.route.to_owned()
            ),
            counts: Vec::new(),
        }) else {
            return;
        };
        handles.duration.record(elapsed.as_secs_f64());
        kept_counter(&mut handles.counts, (method, class), || {
            metrics::counter!(
                "bulkhead_http_requests_total",
                "route" => labels.route.to_owned(),
                "method" => method,
                "status" => status_label(class)
            )
        })
        .increment(1);
    });
}

/// Counts an authenticated request toward its tenant's label (see [`tenant_label`]) and
/// status class, with its handle kept as [`record_request`] keeps its.
pub(crate) fn record_tenant_request(tenant_label: &str, status: StatusCode) {
    let class = status.as_u16() / 100;
    TENANT_HANDLES.with_borrow_mut(|tenants| {
        let Some(counts) = kept(tenants, tenant_label, Vec::new) else {
            return;
        };
        kept_counter(counts, class, || {
            metrics::counter!(
                "bulkhead_tenant_requests_total",
                "tenant" => tenant_label.to_owned(),
                "status" => status_label(class)
            )
        })
        .increment(1);
    });
}

/// What `handles` keeps under `label`, made by `make` the first time (always `Some`). Looked
/// up by `&str`, so a hit allocates nothing.
fn kept<'a, V>(
    handles: &'a mut HashMap<String, V>,
    label: &str,
    make: impl FnOnce() -> V,
) -> Option<&'a mut V> {
    if !handles.contains_key(label) {
        handles.insert(label.to_owned(), make());
    }
    handles.get_mut(label)
}

/// The counter kept in `counts` for `key` (a handful of label values), registered by
/// `register` the first time.
fn kept_counter<K: PartialEq>(
    counts: &mut Vec<(K, Counter)>,
    key: K,
    register: impl FnOnce() -> Counter,
) -> &Counter {
    let index = match counts.iter().position(|(k, _)| *k == key) {
        Some(index) => index,
        None => {
            counts.push((key, register()));
            counts.len() - 1
        }
    };
    &counts[index].1
}

/// `2xx`, `4xx`, ...: the `status` label of a status class.
fn status_label(class: u16) -> String {
    format!("{class}xx")
}

/// One route's kept handles: its latency histogram, and a counter per method and status class
/// seen on this thread (a handful).
struct RouteHandles {
    duration: Histogram,
    counts: Vec<((&'static str, u16), Counter)>,
}

thread_local! {
    /// Bounded by the router's templates (and `unmatched`), seven methods and `other`, and
    /// five status classes.
    static REQUEST_HANDLES: RefCell<HashMap<String, RouteHandles>> = RefCell::new(HashMap::new());
    /// Bounded by the `[metrics] tenant_labels` allowlist and `other`.
    static TENANT_HANDLES: RefCell<HashMap<String, Vec<(u16, Counter)>>> = RefCell::new(HashMap::new());
}

/// The `method` label: a standard method by name, any other as `other`, since a client may
/// send any token as a method and each would be a new series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The `tenant` label value for `tenant`: its id if allowlisted, else `other`.
pub fn tenant_label<'a>(allowlist: &'a [String], tenant: &TenantId) -> &'a str {
    allowlist
        .iter()
        .find(|t| *t == tenant.as_str())
        .map_or("other", String::as_str)
}
