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

use std::sync::Arc;

use bulkhead_core::ApiKeyId;
use bulkhead_core::Tenant;
use bulkhead_core::auth::StoredApiKey;
use bulkhead_core::ttl_cache::TtlCache;

/// What a lookup of a key id found: the key and its tenant, or that there is none. Shared, so
/// that a hit costs no copy of their strings.
pub(crate) type KeyLookup = Option<Arc<(StoredApiKey, Tenant)>>;

/// Key lookups by key id.
pub(crate) type KeyCache = TtlCache<ApiKeyId, KeyLookup>;
