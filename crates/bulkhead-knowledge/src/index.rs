//! One knowledge base's search index: vectors for semantic search, postings for keyword
//! (BM25) search, over the chunks of one tenant's knowledge base and nothing else. A search
//! can only reach what this value holds, so no filter can be forgotten.
//!
//! Vectors live in a `base` (immutable, shared with the HNSW graph when there is one) and a
//! `delta` of chunks added since. Deleted chunks are tombstones until the next compaction.
//! Below `exact_max` chunks every search is exact; above it the base gets an HNSW graph
//! (instant-distance), built on another thread while searches stay exact, and the delta is
//! still searched exactly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use instant_distance::{Builder, HnswMap, Point, Search};

/// Search breadth of the graph, and the most vector candidates one search asks for.
const EF_SEARCH: usize = 128;
/// BM25 parameters (the usual ones).
const BM25_K1: f32 = 1.2;
const BM25_B: f32 = 0.75;
/// Weight of the vector score in the hybrid score; the rest is the normalised BM25 score.
const VECTOR_WEIGHT: f32 = 0.7;

/// A vector of the base, by reference: the graph and the exact scan share one allocation.
#[derive(Clone)]
struct SharedPoint {
    storage: Arc<[f32]>,
    dims: u32,
    slot: u32,
}

impl SharedPoint {
    fn vector(&self) -> &[f32] {
        let start = self.slot as usize * self.dims as usize;
        self.storage
            .get(start..start + self.dims as usize)
            .unwrap_or(&[])
    }
}

impl Point for SharedPoint {
    fn distance(&self, other: &Self) -> f32 {
        // Vectors are unit length, so 1 - dot is the cosine distance.
        1.0 - dot(self.vector(), other.vector())
    }
}

/// The hot loop of every search and of graph building. Eight independent partial sums let
/// the compiler use SIMD lanes (a single running sum must be added in order, so it cannot).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut sums = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// A chunk to add: its id, its vector and its text for the keyword index.
pub struct IndexEntry<'a> {
    pub chunk_id: i64,
    pub embedding: &'a [f32],
    pub text: &'a str,
}

/// One scored result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub chunk_id: i64,
    pub score: f32,
    pub vector_score: f32,
    pub keyword_score: f32,
}

#[derive(Clone, Copy)]
enum Location {
    Base(u32),
    Delta(u32),
}

pub struct PartitionIndex {
    dims: usize,
    exact_max: usize,
    /// The knowledge base's `created_at`: a recreated knowledge base counts generations anew.
    epoch: i64,
    generation: i64,
    base: Arc<[f32]>,
    base_ids: Vec<i64>,
    delta: Vec<f32>,
    delta_ids: Vec<i64>,
    location: HashMap<i64, Location>,
    dead: HashSet<i64>,
    /// Tombstones that point into the base (the rest point into the delta).
    dead_in_base: usize,
    graph: Option<HnswMap<SharedPoint, u32>>,
    /// A graph for the current base is being built elsewhere.
    graph_pending: bool,
    keywords: Bm25,
}

/// What building a base's graph needs, detached from the index so it can run on another
/// thread while the index keeps answering (exactly).
pub struct GraphJob {
    base: Arc<[f32]>,
    dims: usize,
    count: usize,
}

pub struct BuiltGraph {
    base: Arc<[f32]>,
    graph: HnswMap<SharedPoint, u32>,
}

impl GraphJob {
    /// CPU-bound (seconds for tens of thousands of chunks): run it on a blocking thread.
    pub fn build(self) -> BuiltGraph {
        let points = (0..self.count as u32)
            .map(|slot| SharedPoint {
                storage: self.base.clone(),
                dims: self.dims as u32,
                slot,
            })
            .collect::<Vec<_>>();
        let slots = (0..self.count as u32).collect();
        let graph = Builder::default()
            .ef_search(EF_SEARCH)
            .ef_construction(EF_SEARCH)
            .seed(0x5eed)
            .build(points, slots);
        BuiltGraph {
            base: self.base,
            graph,
        }
    }
}

impl PartitionIndex {
    /// Builds the index of a knowledge base as of `generation`. CPU-bound: call it from a
    /// blocking task.
    pub fn build(
        dims: usize,
        exact_max: usize,
        generation: i64,
        entries: &[IndexEntry<'_>],
    ) -> Self {
        let mut index = PartitionIndex {
            dims,
            exact_max,
            epoch: 0,
            generation,
            base: Arc::from(Vec::new()),
            base_ids: Vec::new(),
            delta: Vec::new(),
            delta_ids: Vec::new(),
            location: HashMap::new(),
            dead: HashSet::new(),
            dead_in_base: 0,
            graph: None,
            graph_pending: false,
            keywords: Bm25::default(),
        };
        index.add(entries);
        index.compact();
        index
    }

    /// [`Self::build`] from chunks as the store loads them.
    pub fn from_stored(
        dims: usize,
        exact_max: usize,
        version: bulkhead_store::KnowledgeVersion,
        chunks: &[bulkhead_store::IndexedChunk],
    ) -> Self {
        let entries: Vec<IndexEntry<'_>> = chunks
            .iter()
            .map(|c| IndexEntry {
                chunk_id: c.chunk_id,
                embedding: &c.embedding,
                text: &c.text,
            })
            .collect();
        let mut index = Self::build(dims, exact_max, version.generation, &entries);
        index.epoch = version.epoch;
        index
    }

    /// The state of the knowledge base this index reflects.
    pub fn version(&self) -> bulkhead_store::KnowledgeVersion {
        bulkhead_store::KnowledgeVersion {
            epoch: self.epoch,
            generation: self.generation,
        }
    }

    pub fn generation(&self) -> i64 {
        self.generation
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Live chunks.
    pub fn len(&self) -> usize {
        self.location.len()
    }

    pub fn is_empty(&self) -> bool {
        self.location.is_empty()
    }

    pub fn uses_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// A graph for the current base is being built.
    pub fn graph_pending(&self) -> bool {
        self.graph_pending
    }

    /// Bytes held, roughly: what the cache's memory budget counts.
    pub fn memory_bytes(&self) -> usize {
        let vectors = (self.base.len() + self.delta.len()) * 4;
        let ids = (self.base_ids.len() + self.delta_ids.len()) * 8 + self.location.len() * 24;
        // Counted as soon as the base is large enough to get a graph, built yet or not.
        let graph = if self.base_ids.len() > self.exact_max {
            self.base_ids.len() * (64 * 4 + 48)
        } else {
            0
        };
        vectors + ids + graph + self.keywords.memory_bytes() + std::mem::size_of::<Self>()
    }

    /// Applies a change written by this process: removes `removed`, adds `added`, and moves
    /// to `generation`.
    pub fn apply(&mut self, removed: &[i64], added: &[IndexEntry<'_>], generation: i64) {
        for id in removed {
            match self.location.remove(id) {
                Some(Location::Base(_)) => {
                    self.dead.insert(*id);
                    self.dead_in_base += 1;
                }
                Some(Location::Delta(_)) => {
                    self.dead.insert(*id);
                }
                None => {}
            }
        }
        self.add(added);
        self.generation = generation;
        let garbage = self.dead.len() + self.delta_ids.len();
        if garbage > 256.max(self.base_ids.len() / 4) {
            self.compact();
        }
    }

    fn add(&mut self, entries: &[IndexEntry<'_>]) {
        for entry in entries {
            if entry.embedding.len() != self.dims || self.location.contains_key(&entry.chunk_id) {
                continue;
            }
            let slot = self.delta_ids.len() as u32;
            self.delta.extend_from_slice(entry.embedding);
            self.delta_ids.push(entry.chunk_id);
            self.location.insert(entry.chunk_id, Location::Delta(slot));
            self.keywords.add(entry.chunk_id, entry.text);
        }
    }

    /// Folds the delta into the base, drops tombstones, and rebuilds the graph if the base
    /// is large enough to need one.
    fn compact(&mut self) {
        let mut vectors = Vec::with_capacity((self.location.len()) * self.dims);
        let mut ids = Vec::with_capacity(self.location.len());
        for (slot, id) in self.base_ids.iter().enumerate() {
            if !self.dead.contains(id) {
                vectors.extend_from_slice(slice(&self.base, slot, self.dims));
                ids.push(*id);
            }
        }
        for (slot, id) in self.delta_ids.iter().enumerate() {
            if !self.dead.contains(id) {
                vectors.extend_from_slice(slice(&self.delta, slot, self.dims));
                ids.push(*id);
            }
        }
        self.keywords.purge(&self.dead);
        self.dead.clear();
        self.dead_in_base = 0;
        self.base = Arc::from(vectors);
        self.base_ids = ids;
        self.delta = Vec::new();
        self.delta_ids = Vec::new();
        self.location = self
            .base_ids
            .iter()
            .enumerate()
            .map(|(slot, id)| (*id, Location::Base(slot as u32)))
            .collect();
        // The graph of the new base is built apart ([`Self::graph_job`]); until it is
        // installed, searches are exact, which is correct, only slower.
        self.graph = None;
        self.graph_pending = false;
    }

    /// Work to build the graph of the current base, when it is large enough to need one and
    /// nobody is building it yet. Hand it to a blocking thread, then [`Self::install`].
    pub fn graph_job(&mut self) -> Option<GraphJob> {
        if self.graph.is_some() || self.graph_pending || self.base_ids.len() <= self.exact_max {
            return None;
        }
        self.graph_pending = true;
        Some(GraphJob {
            base: self.base.clone(),
            dims: self.dims,
            count: self.base_ids.len(),
        })
    }

    /// Installs a built graph if the base it was built over is still this index's base (a
    /// compaction in between makes it useless; the next job builds the new one).
    pub fn install(&mut self, built: BuiltGraph) -> bool {
        if !Arc::ptr_eq(&self.base, &built.base) {
            return false;
        }
        self.graph = Some(built.graph);
        self.graph_pending = false;
        true
    }

    /// Builds the graph on this thread, for tests and benchmarks.
    pub fn build_graph_now(&mut self) -> bool {
        match self.graph_job() {
            Some(job) => self.install(job.build()),
            None => false,
        }
    }

    fn vector_of(&self, chunk_id: i64) -> Option<&[f32]> {
        Some(match self.location.get(&chunk_id)? {
            Location::Base(slot) => slice(&self.base, *slot as usize, self.dims),
            Location::Delta(slot) => slice(&self.delta, *slot as usize, self.dims),
        })
    }

    /// The `n` chunks nearest to `query` by cosine similarity, best first, read exactly.
    pub fn exact_nearest(&self, query: &[f32], n: usize) -> Vec<(i64, f32)> {
        let mut top = TopN::new(n);
        for (slot, id) in self.base_ids.iter().enumerate() {
            if !self.dead.contains(id) {
                top.offer(*id, dot(query, slice(&self.base, slot, self.dims)));
            }
        }
        self.scan_delta(query, &mut top);
        top.into_sorted()
    }

    fn scan_delta(&self, query: &[f32], top: &mut TopN) {
        for (slot, id) in self.delta_ids.iter().enumerate() {
            if !self.dead.contains(id) {
                top.offer(*id, dot(query, slice(&self.delta, slot, self.dims)));
            }
        }
    }

    /// The `n` nearest chunks: through the graph when there is one, else exactly. Never
    /// fewer than `n` when the index holds `n` live chunks: if tombstones leave the graph's
    /// answer short, the search falls back to an exact scan.
    pub fn nearest(&self, query: &[f32], n: usize) -> Vec<(i64, f32)> {
        let Some(graph) = &self.graph else {
            return self.exact_nearest(query, n);
        };
        if n > EF_SEARCH {
            return self.exact_nearest(query, n);
        }
        let point = SharedPoint {
            storage: Arc::from(query.to_vec()),
            dims: self.dims as u32,
            slot: 0,
        };
        let mut search = Search::default();
        let mut top = TopN::new(n);
        let mut from_graph = 0;
        for item in graph.search(&point, &mut search) {
            let Some(id) = self.base_ids.get(*item.value as usize) else {
                continue;
            };
            if !self.dead.contains(id) {
                top.offer(*id, 1.0 - item.distance);
                from_graph += 1;
            }
        }
        if from_graph < n.min(self.base_ids.len() - self.dead_in_base) {
            return self.exact_nearest(query, n);
        }
        self.scan_delta(query, &mut top);
        top.into_sorted()
    }

    /// Hybrid search: the union of the best vector and keyword candidates, each scored
    /// `0.7 × cosine + 0.3 × BM25 / best BM25`, best first.
    pub fn search(&self, query_vector: &[f32], query_text: &str, k: usize) -> Vec<Scored> {
        if k == 0 || self.is_empty() {
            return Vec::new();
        }
        let candidates = (k * 4).clamp(20, EF_SEARCH);
        let by_vector = self.nearest(query_vector, candidates);
        let by_keyword = self.keywords.top(query_text, candidates, &self.dead);
        let best_keyword = by_keyword.first().map_or(0.0, |(_, s)| *s);
        let mut scored: HashMap<i64, Scored> = HashMap::new();
        for (id, vector_score) in by_vector {
            scored.insert(
                id,
                Scored {
                    chunk_id: id,
                    score: 0.0,
                    vector_score,
                    keyword_score: self.keywords.score(query_text, id),
                },
            );
        }
        for (id, keyword_score) in by_keyword {
            if let Some(vector) = self.vector_of(id) {
                scored.entry(id).or_insert(Scored {
                    chunk_id: id,
                    score: 0.0,
                    vector_score: dot(query_vector, vector),
                    keyword_score,
                });
            }
        }
        let mut results: Vec<Scored> = scored
            .into_values()
            .map(|mut s| {
                let keyword = if best_keyword > 0.0 {
                    s.keyword_score / best_keyword
                } else {
                    0.0
                };
                s.score = VECTOR_WEIGHT * s.vector_score.max(0.0) + (1.0 - VECTOR_WEIGHT) * keyword;
                s
            })
            .collect();
        results.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.chunk_id.cmp(&b.chunk_id))
        });
        results.truncate(k);
        results
    }
}

fn slice(storage: &[f32], slot: usize, dims: usize) -> &[f32] {
    storage.get(slot * dims..(slot + 1) * dims).unwrap_or(&[])
}

/// The best `n` by score; ties broken by the smaller id, so results are deterministic.
struct TopN {
    n: usize,
    items: Vec<(i64, f32)>,
}

impl TopN {
    fn new(n: usize) -> Self {
        Self {
            n,
            items: Vec::with_capacity(n + 1),
        }
    }

    fn offer(&mut self, id: i64, score: f32) {
        if self.n == 0 {
            return;
        }
        if self.items.len() == self.n {
            let worst = self.items.last().map_or(f32::MIN, |(_, s)| *s);
            if score <= worst {
                return;
            }
            self.items.pop();
        }
        let at = self
            .items
            .partition_point(|(other, s)| *s > score || (*s == score && *other < id));
        self.items.insert(at, (id, score));
    }

    fn into_sorted(self) -> Vec<(i64, f32)> {
        self.items
    }
}

/// Keyword lowercased words of letters and digits.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// An inverted index with BM25 scoring. Posting lists are sorted by chunk id because ids
/// only grow and chunks are added in id order.
#[derive(Default)]
struct Bm25 {
    postings: HashMap<String, Vec<(i64, u16)>>,
    lengths: HashMap<i64, u32>,
    total_length: u64,
}

impl Bm25 {
    fn add(&mut self, chunk_id: i64, text: &str) {
        let mut counts: HashMap<String, u16> = HashMap::new();
        let mut length = 0u32;
        for term in terms(text) {
            *counts.entry(term).or_default() += 1;
            length += 1;
        }
        for (term, count) in counts {
            self.postings
                .entry(term)
                .or_default()
                .push((chunk_id, count));
        }
        self.lengths.insert(chunk_id, length);
        self.total_length += u64::from(length);
    }

    fn purge(&mut self, dead: &HashSet<i64>) {
        if dead.is_empty() {
            return;
        }
        for list in self.postings.values_mut() {
            list.retain(|(id, _)| !dead.contains(id));
        }
        self.postings.retain(|_, list| !list.is_empty());
        for id in dead {
            if let Some(length) = self.lengths.remove(id) {
                self.total_length -= u64::from(length);
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        self.postings
            .iter()
            .map(|(term, list)| term.len() + 48 + list.len() * 16)
            .sum::<usize>()
            + self.lengths.len() * 24
    }

    fn term_weight(&self, df: usize, tf: u16, length: u32) -> f32 {
        let n = self.lengths.len() as f32;
        let df = df as f32;
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        let average = self.total_length as f32 / n.max(1.0);
        let tf = f32::from(tf);
        idf * tf * (BM25_K1 + 1.0)
            / (tf + BM25_K1 * (1.0 - BM25_B + BM25_B * length as f32 / average.max(1.0)))
    }

    fn query_terms(query: &str) -> Vec<String> {
        let mut seen = HashSet::new();
        terms(query).filter(|t| seen.insert(t.clone())).collect()
    }

    fn top(&self, query: &str, n: usize, dead: &HashSet<i64>) -> Vec<(i64, f32)> {
        let mut scores: HashMap<i64, f32> = HashMap::new();
        for term in Self::query_terms(query) {
            let Some(list) = self.postings.get(&term) else {
                continue;
            };
            for (id, tf) in list {
                if dead.contains(id) {
                    continue;
                }
                let length = self.lengths.get(id).copied().unwrap_or(1);
                *scores.entry(*id).or_default() += self.term_weight(list.len(), *tf, length);
            }
        }
        let mut top = TopN::new(n);
        for (id, score) in scores {
            top.offer(id, score);
        }
        top.into_sorted()
    }

    fn score(&self, query: &str, chunk_id: i64) -> f32 {
        let Some(length) = self.lengths.get(&chunk_id).copied() else {
            return 0.0;
        };
        Self::query_terms(query)
            .iter()
            .filter_map(|term| {
                let list = self.postings.get(term)?;
                let at = list.binary_search_by_key(&chunk_id, |(id, _)| *id).ok()?;
                let (_, tf) = list.get(at)?;
                Some(self.term_weight(list.len(), *tf, length))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn unit(mut v: Vec<f32>) -> Vec<f32> {
        let norm = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    fn random_vectors(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| unit((0..dims).map(|_| rng.gen_range(-1.0..1.0)).collect()))
            .collect()
    }

    fn build(vectors: &[Vec<f32>], exact_max: usize) -> PartitionIndex {
        let texts: Vec<String> = (0..vectors.len()).map(|i| format!("chunk {i}")).collect();
        let entries: Vec<IndexEntry<'_>> = vectors
            .iter()
            .zip(&texts)
            .enumerate()
            .map(|(i, (v, t))| IndexEntry {
                chunk_id: i as i64 + 1,
                embedding: v,
                text: t,
            })
            .collect();
        let mut index = PartitionIndex::build(vectors[0].len(), exact_max, 1, &entries);
        index.build_graph_now();
        index
    }

    #[test]
    fn the_graph_finds_most_of_the_exact_top_ten() {
        let vectors = random_vectors(3000, 32, 7);
        let index = build(&vectors, 1000);
        assert!(index.uses_graph());
        let queries = random_vectors(50, 32, 8);
        let mut found = 0;
        for q in &queries {
            let exact: HashSet<i64> = index
                .exact_nearest(q, 10)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let approx = index.nearest(q, 10);
            assert_eq!(approx.len(), 10);
            found += approx.iter().filter(|(id, _)| exact.contains(id)).count();
        }
        let recall = found as f32 / 500.0;
        assert!(recall > 0.9, "recall@10 {recall}");
    }

    #[test]
    fn deleted_chunks_never_come_back_and_k_results_still_do() {
        let vectors = random_vectors(1500, 16, 9);
        let mut index = build(&vectors, 500);
        let query = &vectors[0];
        let nearest: Vec<i64> = index
            .nearest(query, 10)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(nearest[0], 1);
        // Tombstone the ten nearest (fewer than a compaction needs).
        index.apply(&nearest, &[], 2);
        assert!(index.uses_graph());
        let after = index.nearest(query, 10);
        assert_eq!(after.len(), 10);
        assert!(after.iter().all(|(id, _)| !nearest.contains(id)));
        let hybrid = index.search(query, "chunk 0", 10);
        assert_eq!(hybrid.len(), 10);
        assert!(hybrid.iter().all(|s| !nearest.contains(&s.chunk_id)));
        assert_eq!(index.len(), 1490);
        assert_eq!(index.generation(), 2);
    }

    #[test]
    fn added_chunks_are_found_before_and_after_compaction() {
        let vectors = random_vectors(600, 16, 10);
        let mut index = build(&vectors[..300], 100);
        let extra: Vec<IndexEntry<'_>> = vectors[300..]
            .iter()
            .enumerate()
            .map(|(i, v)| IndexEntry {
                chunk_id: 1000 + i as i64,
                embedding: v,
                text: "zebra crossing",
            })
            .collect();
        index.apply(&[], &extra[..10], 2);
        assert_eq!(index.nearest(&vectors[305], 1)[0].0, 1005);
        index.apply(&[], &extra[10..], 3);
        assert_eq!(index.len(), 600);
        assert_eq!(index.nearest(&vectors[599], 1)[0].0, 1299);
        let hits = index.search(&vectors[0], "zebra", 5);
        assert!(
            hits.iter()
                .all(|s| s.keyword_score > 0.0 || s.chunk_id == 1)
        );
    }

    #[test]
    fn a_graph_built_over_a_base_that_was_compacted_meanwhile_is_discarded() {
        let vectors = random_vectors(1000, 8, 12);
        let mut index = build(&vectors[..600], 100);
        assert!(index.uses_graph());
        // 400 tombstones: a compaction, a new base of 200, whose graph is not built yet.
        index.apply(&(1..=400).collect::<Vec<_>>(), &[], 2);
        assert!(!index.uses_graph());
        let job = index.graph_job().expect("200 live chunks need a graph");
        assert!(index.graph_job().is_none(), "one job at a time");
        assert_eq!(index.nearest(&vectors[500], 1)[0].0, 501, "exact meanwhile");
        // 400 additions: another compaction, another base, before the job finishes.
        let extra: Vec<IndexEntry<'_>> = vectors[600..]
            .iter()
            .enumerate()
            .map(|(i, v)| IndexEntry {
                chunk_id: 1000 + i as i64,
                embedding: v,
                text: "x",
            })
            .collect();
        index.apply(&[], &extra, 3);
        assert!(!index.install(job.build()), "built over the old base");
        assert!(!index.uses_graph());
        assert!(index.build_graph_now());
        assert!(index.uses_graph());
        assert_eq!(index.nearest(&vectors[999], 1)[0].0, 1399);
    }

    #[test]
    fn keywords_lift_an_exact_term_match() {
        let vectors = random_vectors(3, 8, 11);
        let texts = [
            "the refund policy",
            "canary-7f3a shipping note",
            "unrelated words",
        ];
        let entries: Vec<IndexEntry<'_>> = (0..3)
            .map(|i| IndexEntry {
                chunk_id: i as i64 + 1,
                embedding: &vectors[i],
                text: texts[i],
            })
            .collect();
        let index = PartitionIndex::build(8, 100, 1, &entries);
        // The query vector is as near to chunk 1 as to chunk 2; the keyword names chunk 2.
        let query = unit(
            vectors[0]
                .iter()
                .zip(&vectors[1])
                .map(|(a, b)| a + b)
                .collect(),
        );
        let results = index.search(&query, "7f3a", 3);
        assert_eq!(results[0].chunk_id, 2, "{results:?}");
        assert!(results[0].keyword_score > 0.0);
    }
}
