//! Lookups remembered for a short, fixed time: what the API-key cache and the vault's
//! sealed-credential cache both are. A zero time-to-live keeps nothing, and a cache past its
//! bound starts over rather than grow (a flood of made-up keys fills it, nothing more).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries past this many and the cache starts over.
const MAX_ENTRIES: usize = 100_000;

pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// What was put for `key` less than the time-to-live ago.
    pub fn get(&self, key: &K) -> Option<V> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(key, (Instant::now(), value));
        }
    }

    /// Forgets the entries whose key `forget` says yes to.
    pub fn forget(&self, mut forget: impl FnMut(&K) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|key, _| !forget(key));
        }
    }

    pub fn clear(&self) {
        self.forget(|_| true);
    }
}

impl<K: Eq + Hash, V: Clone> Default for TtlCache<K, V> {
    /// Keeps nothing.
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_are_forgotten_and_a_zero_ttl_keeps_nothing() {
        let cache = TtlCache::new(Duration::from_millis(50));
        assert!(cache.get(&"a").is_none());
        cache.put("a", 1);
        cache.put("b", 2);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.forget(|key| *key == "a");
        assert_eq!((cache.get(&"a"), cache.get(&"b")), (None, Some(2)));
        cache.clear();
        assert!(cache.get(&"b").is_none());
        cache.put("a", 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&"a").is_none(), "an expired entry was answered");
        let off = TtlCache::default();
        off.put("a", 1);
        assert!(off.get(&"a").is_none());
    }
}
