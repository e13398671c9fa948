//! One knowledge base's index in isolation: exact and graph nearest-neighbour search, and
//! hybrid search, at 10,000 chunks of 384 dimensions (clustered, like real embeddings). Run
//! with `cargo bench -p bulkhead-knowledge --bench index`; the ratios between the lines are
//! the point, read them from one run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bulkhead_knowledge::{IndexEntry, PartitionIndex};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIMS: usize = 384;
const CHUNKS: usize = 10_000;

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn bench_search(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let centers: Vec<Vec<f32>> = (0..200)
        .map(|_| unit((0..DIMS).map(|_| rng.gen_range(-1.0..1.0)).collect()))
        .collect();
    let vector = |rng: &mut StdRng| {
        let center = &centers[rng.gen_range(0..centers.len())];
        unit(
            center
                .iter()
                .map(|c| c + rng.gen_range(-0.06..0.06))
                .collect(),
        )
    };
    let vectors: Vec<Vec<f32>> = (0..CHUNKS).map(|_| vector(&mut rng)).collect();
    let texts: Vec<String> = (0..CHUNKS)
        .map(|_| {
            (0..40)
                .map(|_| format!("term{}", rng.gen_range(0..5_000)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
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
    let mut index = PartitionIndex::build(DIMS, 1_000, 1, &entries);
    index.build_graph_now();
    let queries: Vec<Vec<f32>> = (0..64).map(|_| vector(&mut rng)).collect();
    let mut group = c.benchmark_group("10k chunks, k=10");
    let mut i = 0;
    group.bench_function("exact nearest", |b| {
        b.iter(|| {
            i += 1;
            index.exact_nearest(&queries[i % queries.len()], 10)
        })
    });
    group.bench_function("graph nearest", |b| {
        b.iter(|| {
            i += 1;
            index.nearest(&queries[i % queries.len()], 10)
        })
    });
    group.bench_function("hybrid (graph + BM25)", |b| {
        b.iter(|| {
            i += 1;
            index.search(&queries[i % queries.len()], "term17 term4242", 10)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_search);
criterion_main!(benches);
