//! Lookups remembered for a short, fixed time: what the API-key cache and the vault's
//! sealed-credential cache both are. A zero time-to-live keeps nothing, and a cache past its
//! bound starts over rather than grow (a flood of made-up keys fills it, nothing more).
//!
//! An entry past half its life is renewed by one caller while the others still get it: that
//! caller alone is answered "not here", looks the value up and puts it back. Without this,
//! every caller in flight when a busy key's entry expired missed at once, and under load that
//! was dozens of database reads in the same instant, once a second, for every key
//! (ARCHITECTURE.md, "Where the gateway's time goes", has the figures). No entry is ever
//! answered past its time-to-live, so what the cache may hide stays bounded by it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries past this many and the cache starts over.
const MAX_ENTRIES: usize = 100_000;

pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, Entry<V>>>,
}

struct Entry<V> {
    put_at: Instant,
    value: V,
    /// A caller has been sent to renew this entry.
    renewing: bool,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// What was put for `key` less than the time-to-live ago; `None` to one caller once the
    /// entry is past half its life, so that it renews the entry (see the module's comment).
    pub fn get(&self, key: &K) -> Option<V> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get_mut(key)?;
        let age = entry.put_at.elapsed();
        if age >= self.ttl {
            return None;
        }
        if age >= self.ttl / 2 && !entry.renewing {
            entry.renewing = true;
            return None;
        }
        Some(entry.value.clone())
    }

    pub fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(
                key,
                Entry {
                    put_at: Instant::now(),
                    value,
                    renewing: false,
                },
            );
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
        let cache = TtlCache::new(Duration::from_secs(60));
        assert!(cache.get(&"a").is_none());
        cache.put("a", 1);
        cache.put("b", 2);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.forget(|key| *key == "a");
        assert_eq!((cache.get(&"a"), cache.get(&"b")), (None, Some(2)));
        cache.clear();
        assert!(cache.get(&"b").is_none());
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.put("a", 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&"a").is_none(), "an expired entry was answered");
        let off = TtlCache::default();
        off.put("a", 1);
        assert!(off.get(&"a").is_none());
    }

    #[test]
    fn past_half_its_life_one_caller_renews_an_entry_and_the_others_keep_it() {
        let cache = TtlCache::new(Duration::from_secs(1));
        cache.put("a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"a"), Some(1));
        std::thread::sleep(Duration::from_millis(550));
        assert_eq!(
            cache.get(&"a"),
            None,
            "the first caller past half-life renews"
        );
        assert_eq!(cache.get(&"a"), Some(1), "the others still get the entry");
        assert_eq!(cache.get(&"a"), Some(1));
        cache.put("a", 2);
        assert_eq!(
            cache.get(&"a"),
            Some(2),
            "the renewed entry starts a new life"
        );
        std::thread::sleep(Duration::from_millis(550));
        assert_eq!(cache.get(&"a"), None);
        // The renewing caller never came back: past its time-to-live nobody gets the entry.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(cache.get(&"a"), None);
        assert_eq!(cache.get(&"a"), None);
    }
}
