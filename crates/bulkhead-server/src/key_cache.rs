//! API-key lookups, remembered for a moment.
//!
//! Every tenant-plane request authenticated by API key reads its key and tenant. On SQLite that
//! read is a hop to the connection's thread and back, and under load those hops were half of
//! the gateway's CPU. What a lookup found is kept for `[auth] key_cache_ms` (1 s by default;
//! 0 turns it off). The presented secret is still checked against the stored hash on every
//! request, so the cache decides nothing a lookup would not have.
//!
//! What it costs, said plainly: a change made in *another* process (a key revoked or a
//! tenant suspended by a second `serve` replica or by the offline CLI) takes effect here up
//! to that long later. Changes made through this process's own API clear the cache at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bulkhead_core::ApiKeyId;
use bulkhead_core::Tenant;
use bulkhead_core::auth::StoredApiKey;

/// A bound on memory: a flood of made-up key ids fills it, and it starts over.
const MAX_ENTRIES: usize = 100_000;

pub(crate) type Lookup = Option<(StoredApiKey, Tenant)>;

pub(crate) struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<ApiKeyId, (Instant, Lookup)>>,
}

impl KeyCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// What a lookup of `key` found less than the time-to-live ago.
    pub(crate) fn get(&self, key: &ApiKeyId) -> Option<Lookup> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (at, found) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| found.clone())
    }

    pub(crate) fn put(&self, key: ApiKeyId, found: Lookup) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(key, (Instant::now(), found));
        }
    }

    /// Forgets everything: after this process changed a key or a tenant.
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_clear_and_a_zero_ttl_keeps_nothing() {
        let id = bulkhead_core::auth::generate_api_key().id;
        let cache = KeyCache::new(Duration::from_millis(50));
        assert!(cache.get(&id).is_none());
        cache.put(id.clone(), None);
        assert_eq!(cache.get(&id).map(|found| found.is_none()), Some(true));
        cache.clear();
        assert!(cache.get(&id).is_none());
        cache.put(id.clone(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&id).is_none(), "an expired entry was answered");
        let off = KeyCache::new(Duration::ZERO);
        off.put(id.clone(), None);
        assert!(off.get(&id).is_none());
    }
}
