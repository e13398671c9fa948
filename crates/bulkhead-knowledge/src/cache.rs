//! The in-memory indexes of this node, one per tenant and knowledge base, loaded on first
//! search and dropped, least recently used first, when they outgrow the memory budget.
//!
//! An index is valid for one generation of its knowledge base. Every search reads the
//! generation (one single-row read), so a change made by another process is seen at once:
//! the stale index is rebuilt from the database before answering. Changes made by this
//! process are applied in place when the index is exactly one change behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bulkhead_core::TenantId;
use bulkhead_store::{KnowledgeChange, KnowledgeHead, KnowledgeVersion, TenantStore};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::KnowledgeError;
use crate::index::{IndexEntry, PartitionIndex};

type Key = (TenantId, String);

struct Slot {
    index: Arc<RwLock<Option<PartitionIndex>>>,
    last_used: AtomicU64,
    bytes: AtomicUsize,
}

/// Counters for `GET /admin/v1/knowledge/cache`-style reporting and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub loaded: usize,
    pub bytes: usize,
    pub loads: u64,
    pub evictions: u64,
    pub applied_in_place: u64,
}

pub struct IndexCache {
    budget_bytes: usize,
    exact_max: usize,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    clock: AtomicU64,
    used: AtomicUsize,
    loads: AtomicU64,
    evictions: AtomicU64,
    applied: AtomicU64,
}

/// Starts building the graph of `index`'s base on a blocking thread, if it needs one. The index
/// keeps answering, exactly, meanwhile; the graph is installed when ready unless the base has
/// changed since (a compaction) or the index was dropped.
fn build_graph_later(slot: &Arc<Slot>, index: Option<&mut PartitionIndex>) {
    let Some(job) = index.and_then(PartitionIndex::graph_job) else {
        return;
    };
    let lock = slot.index.clone();
    tokio::task::spawn_blocking(move || {
        let built = job.build();
        if let Some(index) = lock.blocking_write().as_mut() {
            index.install(built);
        }
    });
}

/// A read lock on one knowledge base's loaded index.
pub type IndexGuard = OwnedRwLockReadGuard<Option<PartitionIndex>, PartitionIndex>;

impl IndexCache {
    pub fn new(budget_bytes: usize, exact_max: usize) -> Self {
        Self {
            budget_bytes,
            exact_max,
            slots: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            used: AtomicUsize::new(0),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> CacheStats {
        let loaded = self
            .lock_slots()
            .values()
            .filter(|s| s.bytes.load(Ordering::Relaxed) > 0)
            .count();
        CacheStats {
            loaded,
            bytes: self.used.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            applied_in_place: self.applied.load(Ordering::Relaxed),
        }
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Slot>>> {
        match self.slots.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        let mut slots = self.lock_slots();
        slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    index: Arc::new(RwLock::new(None)),
                    last_used: AtomicU64::new(0),
                    bytes: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// The index of `kb` for the store's tenant, at least as new as `head` (read by the
    /// caller just before); `None` if the knowledge base was deleted meanwhile.
    pub async fn read(
        &self,
        store: &TenantStore<'_>,
        kb: &str,
        head: &KnowledgeHead,
    ) -> Result<Option<IndexGuard>, KnowledgeError> {
        let current = |index: &PartitionIndex| {
            index.version().epoch == head.created_at && index.generation() >= head.generation
        };
        let key = (store.context().tenant_id().clone(), kb.to_owned());
        let slot = self.slot(&key);
        slot.last_used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        {
            let guard = slot.index.clone().read_owned().await;
            if guard.as_ref().is_some_and(current) {
                return Ok(OwnedRwLockReadGuard::try_map(guard, Option::as_ref).ok());
            }
        }
        let mut guard = slot.index.clone().write_owned().await;
        if !guard.as_ref().is_some_and(current) {
            let Some((version, chunks)) = store.knowledge_index_source(kb).await? else {
                return Ok(None);
            };
            let dims = usize::try_from(head.dimensions).unwrap_or(0);
            let exact_max = self.exact_max;
            let index = tokio::task::spawn_blocking(move || {
                PartitionIndex::from_stored(dims, exact_max, version, &chunks)
            })
            .await
            .map_err(|e| KnowledgeError::Embedder(format!("index build: {e}")))?;
            self.loads.fetch_add(1, Ordering::Relaxed);
            self.account(&slot, index.memory_bytes());
            *guard = Some(index);
            build_graph_later(&slot, guard.as_mut());
        }
        let guard = guard.downgrade();
        self.evict_beyond_budget(&key);
        Ok(OwnedRwLockReadGuard::try_map(guard, Option::as_ref).ok())
    }

    /// After this process changed `kb`: applies the change to a loaded index that was exactly
    /// at the generation before it, or drops a loaded index that was not (the next search
    /// rebuilds it).
    pub async fn apply(
        &self,
        tenant: &TenantId,
        kb: &str,
        change: &KnowledgeChange,
        added: Vec<(i64, Vec<f32>, String)>,
    ) -> Result<(), KnowledgeError> {
        let key = (tenant.clone(), kb.to_owned());
        let slot = self.slot(&key);
        let mut guard = slot.index.clone().write_owned().await;
        let Some(index) = guard.as_ref() else {
            return Ok(());
        };
        let expected = KnowledgeVersion {
            epoch: change.epoch,
            generation: change.generation_before,
        };
        if index.version() != expected {
            *guard = None;
            self.account(&slot, 0);
            return Ok(());
        }
        let removed = change.removed_chunk_ids.clone();
        let generation = change.generation;
        let guard = tokio::task::spawn_blocking(move || {
            let mut guard = guard;
            if let Some(index) = guard.as_mut() {
                let entries: Vec<IndexEntry<'_>> = added
                    .iter()
                    .map(|(id, embedding, text)| IndexEntry {
                        chunk_id: *id,
                        embedding,
                        text,
                    })
                    .collect();
                index.apply(&removed, &entries, generation);
            }
            guard
        })
        .await
        .map_err(|e| KnowledgeError::Embedder(format!("index update: {e}")))?;
        self.applied.fetch_add(1, Ordering::Relaxed);
        self.account(
            &slot,
            guard.as_ref().map_or(0, PartitionIndex::memory_bytes),
        );
        drop(guard);
        self.evict_beyond_budget(&key);
        Ok(())
    }

    /// Waits until no graph is being built for `kb` of `tenant` (tests and benchmarks use it
    /// to measure the graph path).
    pub async fn wait_for_graph(&self, tenant: &TenantId, kb: &str) {
        let slot = self.slot(&(tenant.clone(), kb.to_owned()));
        loop {
            if slot
                .index
                .read()
                .await
                .as_ref()
                .is_none_or(|i| !i.graph_pending())
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Drops the loaded index of `kb` (after it was deleted), freeing its memory at once.
    pub async fn forget(&self, tenant: &TenantId, kb: &str) {
        let slot = self.slot(&(tenant.clone(), kb.to_owned()));
        *slot.index.write().await = None;
        self.account(&slot, 0);
    }

    fn account(&self, slot: &Slot, bytes: usize) {
        let before = slot.bytes.swap(bytes, Ordering::Relaxed);
        if bytes >= before {
            self.used.fetch_add(bytes - before, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(before - bytes, Ordering::Relaxed);
        }
    }

    /// Drops least recently used indexes (never `keep`) until the total fits the budget.
    /// An index in use is skipped; it will be a candidate next time.
    fn evict_beyond_budget(&self, keep: &Key) {
        if self.used.load(Ordering::Relaxed) <= self.budget_bytes {
            return;
        }
        let mut candidates: Vec<(u64, Arc<Slot>)> = self
            .lock_slots()
            .iter()
            .filter(|(key, slot)| *key != keep && slot.bytes.load(Ordering::Relaxed) > 0)
            .map(|(_, slot)| (slot.last_used.load(Ordering::Relaxed), slot.clone()))
            .collect();
        candidates.sort_by_key(|(last_used, _)| *last_used);
        for (_, slot) in candidates {
            if self.used.load(Ordering::Relaxed) <= self.budget_bytes {
                break;
            }
            if let Ok(mut guard) = slot.index.try_write() {
                *guard = None;
                self.account(&slot, 0);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
