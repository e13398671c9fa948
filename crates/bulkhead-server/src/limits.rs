//! Per-tenant request rates: a token bucket for each tenant, in this process.
//!
//! Each tenant draws from its own bucket, so a tenant that floods the API is answered 429
//! (with `Retry-After`) while every other tenant's requests go on untouched: fairness by
//! construction rather than by a shared queue. The check runs after authentication, before
//! any handler work, and costs one mutex and a little arithmetic. Limits are per process; with
//! several replicas each enforces its own share (a shared store such as Redis would make them
//! global; not built yet).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bulkhead_core::config::LimitsConfig;
use bulkhead_core::{ApiKeyId, TenantId};

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub struct RateLimiter {
    limits: LimitsConfig,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
    /// API keys that authenticated, and their tenant (a key never changes tenant), so a
    /// flood is refused before its database lookup. Only ever used to refuse.
    key_tenants: Mutex<HashMap<ApiKeyId, TenantId>>,
}

/// Keys remembered before the map is cleared and refilled from new authentications.
const REMEMBERED_KEYS: usize = 100_000;

impl RateLimiter {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            limits: config.clone(),
            buckets: Mutex::new(HashMap::new()),
            key_tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant of an API key that authenticated before.
    pub fn tenant_of_key(&self, key: &ApiKeyId) -> Option<TenantId> {
        self.key_tenants.lock().ok()?.get(key).cloned()
    }

    pub fn remember_key(&self, key: ApiKeyId, tenant: TenantId) {
        if let Ok(mut keys) = self.key_tenants.lock() {
            if keys.len() >= REMEMBERED_KEYS {
                keys.clear();
            }
            keys.insert(key, tenant);
        }
    }

    /// Takes one request from `tenant`'s bucket; `Err(seconds)` to wait when it is empty.
    pub fn check(&self, tenant: &TenantId) -> Result<(), u64> {
        self.check_at(tenant, Instant::now())
    }

    /// Whether `tenant`'s bucket has a request left, without taking it. Used before
    /// authentication, where the tenant is only presumed (from the key id presented): a
    /// stranger presenting someone's key id must not be able to drain their bucket.
    pub fn peek(&self, tenant: &TenantId) -> Result<(), u64> {
        self.take_at(tenant, Instant::now(), false)
    }

    fn check_at(&self, tenant: &TenantId, now: Instant) -> Result<(), u64> {
        self.take_at(tenant, now, true)
    }

    fn take_at(&self, tenant: &TenantId, now: Instant, take: bool) -> Result<(), u64> {
        let rate = self.limits.for_tenant(tenant.as_str());
        if rate.requests_per_second <= 0.0 {
            return Ok(());
        }
        let capacity = f64::from(rate.burst.max(1));
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let bucket = buckets.entry(tenant.clone()).or_insert(Bucket {
            tokens: capacity,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.requests_per_second).min(capacity);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate.requests_per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_tenant_has_its_own_bucket_that_refills() {
        let mut config = LimitsConfig {
            requests_per_second: 10.0,
            burst: 3,
            ..LimitsConfig::default()
        };
        config.tenants.insert(
            "big".into(),
            bulkhead_core::config::TenantLimits {
                requests_per_second: Some(100.0),
                burst: Some(50),
                ..Default::default()
            },
        );
        let limiter = RateLimiter::new(&config);
        let (a, b, big) = (
            TenantId::try_from("a").unwrap(),
            TenantId::try_from("b").unwrap(),
            TenantId::try_from("big").unwrap(),
        );
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(&a, start).is_ok());
        }
        assert_eq!(limiter.check_at(&a, start), Err(1));
        // Another tenant is untouched by a's empty bucket.
        assert!(limiter.check_at(&b, start).is_ok());
        assert_eq!(
            (0..60)
                .filter(|_| limiter.check_at(&big, start).is_ok())
                .count(),
            50
        );
        // A tenth of a second refills one request at 10 per second.
        assert!(
            limiter
                .check_at(&a, start + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            limiter
                .check_at(&a, start + Duration::from_millis(100))
                .is_err()
        );
        let off = RateLimiter::new(&LimitsConfig {
            requests_per_second: 0.0,
            ..LimitsConfig::default()
        });
        assert!((0..10_000).all(|_| off.check_at(&a, start).is_ok()));
        // Peeking never takes: a stranger naming b's key cannot drain b's bucket.
        assert!((0..100).all(|_| limiter.peek(&b).is_ok()));
    }
}
