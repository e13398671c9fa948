//! Making a request's span, its audit events and the caller's trace agree on one trace id.
//!
//! With a caller's `traceparent`, the request span becomes a child of the caller's span, so
//! our spans join its trace. Without one, and with an OpenTelemetry exporter installed, the
//! trace id the exporter gave the span is the one recorded; without an exporter, the id
//! [`RequestId`] generated stands alone (still in logs and audit events).

use bulkhead_core::RequestId;
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub(crate) fn link(
    span: &tracing::Span,
    request_id: RequestId,
    traceparent: Option<&str>,
) -> RequestId {
    if let Some(parent) = traceparent.and_then(remote_parent) {
        // Only fails when no OpenTelemetry layer is installed, where there is nothing to join.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    let exported = span.context().span().span_context().trace_id();
    if exported == TraceId::INVALID {
        request_id
    } else {
        request_id.with_trace_id(&format!("{exported:032x}"))
    }
}

/// The caller's span, from a `traceparent` that [`bulkhead_core::ids`] accepts.
fn remote_parent(header: &str) -> Option<SpanContext> {
    let trace_id = bulkhead_core::ids::trace_id_of_traceparent(header)?;
    let mut parts = header.trim().split('-').skip(2);
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let sampled = u8::from_str_radix(parts.next()?, 16).ok()? & 1 == 1;
    Some(SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        span_id,
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    ))
}
