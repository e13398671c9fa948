//! What hashing one event into its tenant's chain costs: `AuditEvent::compute_hash` runs for
//! every event the audit importer appends (each outbound call through the gateway makes one),
//! on the thread that shares the cores with serving. The event is shaped like the gateway's
//! `egress.request`. Also the details' rendering and the hash together, as the importer pays
//! them. Run with `cargo bench -p bulkhead-core --bench audit_hash`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditEvent, GENESIS_HASH, Outcome, canonical_json};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn egress_event() -> AuditEvent {
    AuditEvent {
        tenant_id: TenantId::try_from("acme").unwrap(),
        seq: 1_234_567,
        occurred_at: 1_764_990_000_000,
        actor: "key:bk_01HF8Z3Q9XKJ2M".into(),
        action: "egress.request".into(),
        resource: "endpoint/openai".into(),
        outcome: Outcome::Success,
        request_id: Some("0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331".into()),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        details: json!({
            "status": 200, "attempts": 1, "response_bytes": 312, "region": "eu-central",
            "endpoint": "openai", "path": "/chat/completions", "method": "POST",
            "request_bytes": 71, "duration_ms": 1,
        }),
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    }
}

fn hashing(c: &mut Criterion) {
    let event = egress_event();
    c.bench_function("audit compute_hash (egress.request)", |b| {
        b.iter(|| std::hint::black_box(&event).compute_hash())
    });
    // What the importer pays per event for the stored details and the hash together, against
    // the baseline of rendering the details twice (the row's text, then the hashed form).
    let mut append = c.benchmark_group("audit details and hash (egress.request)");
    append.bench_function("rendered twice: to_string + compute_hash", |b| {
        b.iter(|| {
            let event = std::hint::black_box(&event);
            (event.details.to_string(), event.compute_hash())
        })
    });
    append.bench_function(
        "rendered once: canonical_json + hash_with_canonical_details",
        |b| {
            b.iter(|| {
                let event = std::hint::black_box(&event);
                let details = canonical_json(&event.details);
                let hash = event.hash_with_canonical_details(&details);
                (details, hash)
            })
        },
    );
    append.finish();
}

criterion_group!(benches, hashing);
criterion_main!(benches);
