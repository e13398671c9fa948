//! Policy evaluation per tool call, with 10 and with 1,000 tenant policies loaded (plus the
//! platform's defaults). Run with `cargo bench -p bulkhead-tools --bench policy`; compare
//! the lines of one run. A real call adds one single-row read of the tenant's policy
//! generation; parsing happens only when that changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bulkhead_core::TenantId;
use bulkhead_tools::policy::{CallFacts, Caller, PolicyEngine};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

/// `n` policy documents of the shapes tenants write: per-agent permits scoped by target,
/// approval rules by connector and channel, and forbids.
fn documents(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let text = match i % 3 {
                0 => format!(
                    r##"permit(principal == Bulkhead::Agent::"acme/agent-{i}", action == Bulkhead::Action::"call", resource)
                       when {{ context.target like "#team-{i}*" }};"##
                ),
                1 => format!(
                    r##"permit(principal, action == Bulkhead::Action::"needs_approval", resource)
                       when {{ resource.kind == "slack" && context.target like "#incidents-{i}*" }};"##
                ),
                _ => format!(
                    r##"forbid(principal == Bulkhead::Agent::"acme/agent-{i}", action == Bulkhead::Action::"call", resource)
                       when {{ resource.kind == "github" && context.arguments like "*force*" }};"##
                ),
            };
            (format!("p{i}"), text)
        })
        .collect()
}

fn bench_decide(c: &mut Criterion) {
    let engine = PolicyEngine::new(None).unwrap();
    let tenant = TenantId::try_from("acme").unwrap();
    let caller = Caller::Agent("agent-7".into());
    let arguments = json!({"channel": "#incidents-7", "text": "checkout is down"});
    let facts = CallFacts {
        caller: &caller,
        toolset: "slack",
        operation: "post_message",
        kind: "slack",
        destructive: false,
        target: "#incidents-7",
        arguments: &arguments,
        via: "agent",
    };
    let mut group = c.benchmark_group("policy_decision");
    for n in [10, 1_000] {
        let docs = documents(n);
        let sets = engine
            .build_sets(
                1,
                &tenant,
                docs.iter().map(|(a, b)| (a.as_str(), b.as_str())),
            )
            .unwrap();
        group.bench_function(format!("{n}_tenant_policies"), |b| {
            b.iter(|| engine.decide_with(&tenant, &sets, &facts))
        });
    }
    group.finish();
    let docs = documents(1_000);
    c.bench_function("parse_and_validate_1000_policies", |b| {
        b.iter(|| {
            engine
                .build_sets(
                    1,
                    &tenant,
                    docs.iter().map(|(a, b)| (a.as_str(), b.as_str())),
                )
                .unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_decide
}
criterion_main!(benches);
