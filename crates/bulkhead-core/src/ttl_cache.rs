//! Lookups remembered for a short, fixed time: what the API-key cache and the vault's
//! sealed-credential cache both are. A zero time-to-live keeps nothing, and a cache past its
//! bound starts over rather than grow (a flood of made-up keys fills it, nothing more).
//!
//! An entry past half its life is renewed by one caller while the others still get it: that
//! caller alone is told to renew it ([`Lookup::Renew`]), with the value it may still use, and
//! looks the value up and puts it back. Without this, every caller in flight when a busy key's
//! entry expired missed at once, and under load that was dozens of database reads in the same
//! instant, once a second, for every key (ARCHITECTURE.md, "Where the gateway's time goes",
//! has the figures). A caller that can renew in the background answers its request with the
//! value it was given, so no request waits on the read. No entry is ever answered past its
//! time-to-live, so what the cache may hide stays bounded by it.
//!
//! A lookup that misses or renews gets a [`Ticket`] taken before it reads, and `put` keeps its
//! value only if nothing was forgotten since: a read that began before a change (a key revoked
//! through this process) and finished after the change's `forget` would otherwise put the old
//! value back for a whole time-to-live.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries past this many and the cache starts over.
const MAX_ENTRIES: usize = 100_000;

pub struct TtlCache<K, V> {
    ttl: Duration,
    state: Mutex<State<K, V>>,
}

struct State<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// How many times entries were forgotten: what a [`Ticket`] is checked against.
    forgets: u64,
}

impl<K, V> Default for State<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            forgets: 0,
        }
    }
}

/// Taken before a lookup reads, handed to [`TtlCache::put`] with what it read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ticket(u64);

/// What [`TtlCache::lookup`] found.
#[derive(Debug, PartialEq)]
pub enum Lookup<V> {
    /// Put less than half the time-to-live ago, or being renewed by another caller.
    Hit(V),
    /// Still within its time-to-live, so the caller may use it; past half of it, and this
    /// caller alone is to read the value again and put it with the ticket.
    Renew(V, Ticket),
    /// Nothing usable: read the value and put it with the ticket.
    Miss(Ticket),
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
            state: Mutex::default(),
        }
    }

    /// To be taken before a read that [`lookup`](Self::lookup) did not ask for (a retry).
    pub fn ticket(&self) -> Ticket {
        Ticket(self.state.lock().map_or(u64::MAX, |state| state.forgets))
    }

    /// What was put for `key` less than the time-to-live ago, and whether this caller is the
    /// one to renew it (see the module's comment). One lock, ticket included.
    pub fn lookup(&self, key: &K) -> Lookup<V> {
        // A poisoned lock only means a panic elsewhere while it was held; the map is still
        // whole (no operation leaves it half-changed), but a miss is the cautious answer.
        let Ok(mut state) = self.state.lock() else {
            return Lookup::Miss(Ticket(u64::MAX));
        };
        let ticket = Ticket(state.forgets);
        if self.ttl.is_zero() {
            return Lookup::Miss(ticket);
        }
        let Some(entry) = state.entries.get_mut(key) else {
            return Lookup::Miss(ticket);
        };
        let age = entry.put_at.elapsed();
        if age >= self.ttl {
            return Lookup::Miss(ticket);
        }
        if age >= self.ttl / 2 && !entry.renewing {
            entry.renewing = true;
            return Lookup::Renew(entry.value.clone(), ticket);
        }
        Lookup::Hit(entry.value.clone())
    }

    /// Keeps `value` for `key`, unless entries were forgotten since `ticket` was taken.
    pub fn put(&self, ticket: Ticket, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut state) = self.state.lock() {
            if state.forgets != ticket.0 {
                return;
            }
            if state.entries.len() >= MAX_ENTRIES {
                state.entries.clear();
            }
            state.entries.insert(
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
        if let Ok(mut state) = self.state.lock() {
            state.entries.retain(|key, _| !forget(key));
            state.forgets += 1;
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

    /// The value a caller may use, whether or not it is the one to renew it.
    fn get<V: Clone>(cache: &TtlCache<&'static str, V>, key: &'static str) -> Option<V> {
        match cache.lookup(&key) {
            Lookup::Hit(value) | Lookup::Renew(value, _) => Some(value),
            Lookup::Miss(_) => None,
        }
    }

    #[test]
    fn entries_expire_are_forgotten_and_a_zero_ttl_keeps_nothing() {
        let cache = TtlCache::new(Duration::from_secs(60));
        assert!(get(&cache, "a").is_none());
        cache.put(cache.ticket(), "a", 1);
        cache.put(cache.ticket(), "b", 2);
        assert_eq!(get(&cache, "a"), Some(1));
        cache.forget(|key| *key == "a");
        assert_eq!((get(&cache, "a"), get(&cache, "b")), (None, Some(2)));
        cache.clear();
        assert!(get(&cache, "b").is_none());
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.put(cache.ticket(), "a", 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(get(&cache, "a").is_none(), "an expired entry was answered");
        let off = TtlCache::default();
        off.put(off.ticket(), "a", 1);
        assert!(get(&off, "a").is_none());
    }

    #[test]
    fn past_half_its_life_one_caller_renews_an_entry_and_the_others_keep_it() {
        let cache = TtlCache::new(Duration::from_secs(1));
        cache.put(cache.ticket(), "a", 1);
        assert_eq!(cache.lookup(&"a"), Lookup::Hit(1));
        assert_eq!(cache.lookup(&"a"), Lookup::Hit(1));
        std::thread::sleep(Duration::from_millis(550));
        let Lookup::Renew(kept, ticket) = cache.lookup(&"a") else {
            panic!("the first caller past half-life renews, keeping the value meanwhile");
        };
        assert_eq!(kept, 1);
        assert_eq!(
            cache.lookup(&"a"),
            Lookup::Hit(1),
            "the others still get the entry"
        );
        assert_eq!(cache.lookup(&"a"), Lookup::Hit(1));
        cache.put(ticket, "a", 2);
        assert_eq!(
            cache.lookup(&"a"),
            Lookup::Hit(2),
            "the renewed entry starts a new life"
        );
        std::thread::sleep(Duration::from_millis(550));
        assert!(matches!(cache.lookup(&"a"), Lookup::Renew(2, _)));
        // The renewing caller never came back: past its time-to-live nobody gets the entry.
        std::thread::sleep(Duration::from_millis(500));
        assert!(matches!(cache.lookup(&"a"), Lookup::Miss(_)));
        assert!(matches!(cache.lookup(&"a"), Lookup::Miss(_)));
    }

    #[test]
    fn a_value_read_before_a_forget_is_not_kept() {
        let cache = TtlCache::new(Duration::from_secs(60));
        let before_the_change = cache.ticket();
        // The change commits and forgets while the lookup is still reading.
        cache.forget(|key| *key == "a");
        cache.put(before_the_change, "a", "revoked key, as read before");
        assert_eq!(get(&cache, "a"), None, "a stale read outlived the forget");
        let after = cache.ticket();
        cache.put(after, "a", "as read after");
        assert_eq!(get(&cache, "a"), Some("as read after"));
    }
}
