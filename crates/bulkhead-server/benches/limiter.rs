//! What the per-tenant rate limiter adds to a request: one bucket check for a single busy
//! tenant, and across 10,000 tenants. Run with `cargo bench -p bulkhead-server --bench limiter`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bulkhead_core::TenantId;
use bulkhead_core::config::LimitsConfig;
use bulkhead_server::limits::RateLimiter;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench_limiter(c: &mut Criterion) {
    let limiter = RateLimiter::new(&LimitsConfig {
        requests_per_second: 1e12,
        burst: u32::MAX,
        ..LimitsConfig::default()
    });
    let one = TenantId::try_from("acme").unwrap();
    c.bench_function("limiter_check_one_tenant", |b| {
        b.iter(|| limiter.check(&one))
    });
    let many: Vec<TenantId> = (0..10_000)
        .map(|i| TenantId::try_from(format!("t{i}").as_str()).unwrap())
        .collect();
    let mut i = 0;
    c.bench_function("limiter_check_10000_tenants", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            limiter.check(&many[i])
        })
    });
}

criterion_group!(benches, bench_limiter);
criterion_main!(benches);
