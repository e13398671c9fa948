//! `bulkhead bench knowledge`: what a tenant's search costs while the other tenants' data
//! grows, the graph's recall against exact search, memory per loaded and idle tenant, cold
//! load time, and ingest throughput with the local embedder. Every figure is measured in one
//! run and printed beside its baseline.
//!
//! Vectors are synthetic (clustered, unit length, 384 dimensions) so millions of chunks can be
//! stored quickly; they go through the same store, cache and index a real ingest fills.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bulkhead_core::audit::Origin;
use bulkhead_core::config::{EmbedderConfig, EmbedderProvider, KnowledgeConfig, default_region};
use bulkhead_core::{Isolation, KnowledgeBaseName, Tenant, TenantId};
use bulkhead_knowledge::{ContentType, Embedders, Knowledge, NewDocument, PartitionIndex};
use bulkhead_store::{DocumentWrite, NewChunk, NewTenant, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{GlobalArgs, settings};

const DIMS: usize = 384;
const CLUSTERS: usize = 200;
const CHUNKS_PER_DOCUMENT: usize = 500;
const WORDS: [&str; 24] = [
    "refund",
    "invoice",
    "shipping",
    "policy",
    "security",
    "incident",
    "password",
    "holiday",
    "contract",
    "pricing",
    "discount",
    "onboarding",
    "laptop",
    "travel",
    "expense",
    "audit",
    "backup",
    "vendor",
    "privacy",
    "retention",
    "escalation",
    "warranty",
    "license",
    "payroll",
];

#[derive(clap::Args)]
pub struct KnowledgeBenchArgs {
    /// Chunks in the measured tenant's knowledge base.
    #[arg(long, default_value_t = 10_000)]
    target_chunks: usize,
    /// Totals of chunks held by all other tenants, measured in turn (cumulative).
    #[arg(long, value_delimiter = ',', default_value = "0,100000,1000000")]
    others: Vec<usize>,
    /// Other tenants the chunks are spread over.
    #[arg(long, default_value_t = 100)]
    other_tenants: usize,
    /// Searches per measurement.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Small tenants (20 chunks each) loaded to measure memory per tenant.
    #[arg(long, default_value_t = 1_000)]
    small_tenants: usize,
    /// Where the local embedder lives, for the ingest figure; skipped when absent.
    #[arg(long)]
    models_dir: Option<PathBuf>,
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Clustered vectors, like real embeddings of related documents (uniform random vectors in
/// 384 dimensions are all nearly orthogonal, which no real corpus is).
struct VectorSource {
    rng: StdRng,
    centers: Vec<Vec<f32>>,
}

impl VectorSource {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centers = (0..CLUSTERS)
            .map(|_| unit((0..DIMS).map(|_| rng.gen_range(-1.0..1.0)).collect()))
            .collect();
        Self { rng, centers }
    }

    fn next(&mut self) -> Vec<f32> {
        let center = &self.centers[self.rng.gen_range(0..CLUSTERS)];
        let noise: Vec<f32> = (0..DIMS).map(|_| self.rng.gen_range(-0.06..0.06)).collect();
        unit(center.iter().zip(noise).map(|(c, n)| c + n).collect())
    }

    /// Forty words: mostly from a 5,000-word synthetic vocabulary (so posting lists have
    /// realistic lengths), one in twenty a common business word.
    fn text(&mut self) -> String {
        (0..40)
            .map(|_| {
                if self.rng.gen_bool(0.05) {
                    WORDS[self.rng.gen_range(0..WORDS.len())].to_owned()
                } else {
                    format!("term{}", self.rng.gen_range(0..5_000))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

async fn tenant(store: &Store, id: &str) -> anyhow::Result<Tenant> {
    let id = TenantId::try_from(id).map_err(|e| anyhow!("{e}"))?;
    if let Some(existing) = store.admin().get_tenant(&id).await? {
        return Ok(existing);
    }
    Ok(store
        .admin()
        .create_tenant(
            NewTenant {
                id,
                name: "Bench".into(),
                region: default_region(),
                isolation: Isolation::Shared,
                allowed_regions: Vec::new(),
            },
            &Origin::cli(),
        )
        .await?)
}

/// Adds `chunks` synthetic chunks to the tenant's knowledge base `kb` (and, once pgvector is
/// enabled, to `kb_vectors` in the same transaction).
async fn fill(
    store: &Store,
    tenant: &Tenant,
    chunks: usize,
    source: &mut VectorSource,
) -> anyhow::Result<()> {
    let ctx = bulkhead_core::auth::operator_context(tenant);
    let scoped = store.tenant(&ctx);
    scoped
        .ensure_knowledge_base("kb", "synthetic", DIMS)
        .await?;
    let existing = scoped.documents("kb").await?.len();
    let metadata = serde_json::json!({});
    let mut left = chunks;
    let mut doc = existing;
    while left > 0 {
        let n = left.min(CHUNKS_PER_DOCUMENT);
        let new_chunks: Vec<NewChunk> = (0..n)
            .map(|i| NewChunk {
                position: i as i64,
                heading_path: Vec::new(),
                text: source.text(),
                embedding: source.next(),
            })
            .collect();
        let id = format!("doc-{doc}");
        scoped
            .put_document(
                "kb",
                &DocumentWrite {
                    doc_id: &id,
                    title: "Synthetic",
                    content_type: "text/plain",
                    metadata: &metadata,
                    content_hash: &id,
                    bytes: 0,
                    chunks: new_chunks,
                },
            )
            .await?;

        left -= n;
        doc += 1;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn current_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A fresh knowledge service (empty cache) with no outbound endpoints.
fn knowledge(store: &Store, exact_max: usize, embedders: Embedders) -> anyhow::Result<Knowledge> {
    // No endpoints: nothing here calls out, so no key ever needs unwrapping.
    let vault = bulkhead_vault::Vault::new(std::sync::Arc::new(
        bulkhead_vault::LocalKeyProvider::from_base64(&secrecy::SecretString::from(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ))
        .map_err(|e| anyhow!("{e}"))?,
    ));
    let egress =
        bulkhead_egress::Egress::new(&[], store.clone(), vault).map_err(|e| anyhow!("{e}"))?;
    Ok(Knowledge::new(
        KnowledgeConfig {
            exact_search_max_chunks: exact_max,
            ..KnowledgeConfig::default()
        },
        embedders,
        egress,
    ))
}

/// How one search configuration performed for the target tenant.
struct SearchFigures {
    p50: Duration,
    p99: Duration,
    /// The first search: read the chunks, build the exact index, answer.
    cold: Duration,
    /// From the first search until the background graph was installed (graph mode only).
    graph_ready: Duration,
}

/// p50 and p99 of `queries` searches of the target tenant after a cold first one.
async fn measure_search(
    store: &Store,
    target: &Tenant,
    exact_max: usize,
    queries: &[Vec<f32>],
) -> anyhow::Result<SearchFigures> {
    let knowledge = knowledge(store, exact_max, Embedders::default())?;
    let ctx = bulkhead_core::auth::operator_context(target);
    let scoped = store.tenant(&ctx);
    let kb = KnowledgeBaseName::try_from("kb").map_err(|e| anyhow!("{e}"))?;
    let mut timings = Vec::with_capacity(queries.len());
    let mut cold = Duration::ZERO;
    let mut graph_ready = Duration::ZERO;
    for (i, query) in queries.iter().enumerate() {
        let started = Instant::now();
        let head = scoped
            .knowledge_head("kb")
            .await?
            .context("the target knowledge base is missing")?;
        let found = knowledge
            .search_vector(&scoped, &kb, &head, query, "refund policy", 10)
            .await?;
        let took = started.elapsed();
        anyhow::ensure!(
            found.len() == 10,
            "a search returned {} passages",
            found.len()
        );
        if i == 0 {
            cold = took;
            knowledge.wait_for_graph(&target.id, &kb).await;
            graph_ready = started.elapsed();
        } else {
            timings.push(took);
        }
    }
    timings.sort();
    Ok(SearchFigures {
        p50: percentile(&timings, 0.5),
        p99: percentile(&timings, 0.99),
        cold,
        graph_ready,
    })
}

/// p50 and p99 of pgvector searches of the target tenant (vector part only, k = 10).
async fn measure_pgvector(
    store: &Store,
    target: &Tenant,
    queries: &[Vec<f32>],
) -> anyhow::Result<(Duration, Duration)> {
    let ctx = bulkhead_core::auth::operator_context(target);
    let scoped = store.tenant(&ctx);
    let mut timings = Vec::with_capacity(queries.len());
    for query in queries {
        let started = Instant::now();
        let found = scoped
            .pgvector_nearest("kb", query, 10, bulkhead_store::VectorScan::Iterative)
            .await?;
        timings.push(started.elapsed());
        anyhow::ensure!(found.len() == 10, "pgvector returned {} rows", found.len());
    }
    timings.sort();
    Ok((percentile(&timings, 0.5), percentile(&timings, 0.99)))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(global: &GlobalArgs, args: KnowledgeBenchArgs) -> anyhow::Result<()> {
    let config = settings::load(global)?;
    let store = settings::open_store(&config, false).await?;
    let mut out = std::io::stdout();
    writeln!(out, "knowledge bench on {:?}", store.kind())?;
    // On a PostgreSQL with pgvector, the shared-graph search is measured beside ours.
    let pgvector = store.pgvector_available().await?;
    if pgvector {
        store.enable_pgvector(DIMS).await?;
    }
    let mut source = VectorSource::new(7);
    let target = tenant(&store, "bench-target").await?;
    let have = store
        .tenant(&bulkhead_core::auth::operator_context(&target))
        .knowledge_base("kb")
        .await?
        .map_or(0, |kb| kb.chunks as usize);
    fill(
        &store,
        &target,
        args.target_chunks.saturating_sub(have),
        &mut source,
    )
    .await?;
    let queries: Vec<Vec<f32>> = (0..args.queries).map(|_| source.next()).collect();

    // Isolation of cost: the target's latency as everyone else's data grows.
    writeln!(
        out,
        "\nsearch of one tenant with {} chunks (k = 10, hybrid), others growing:",
        args.target_chunks
    )?;
    writeln!(
        out,
        "{:>14} | {:>22} | {:>22} | {:>10} | {:>11}",
        "others' chunks", "exact p50 / p99", "graph p50 / p99", "cold load", "graph ready"
    )?;
    let others: Vec<Tenant> = {
        let mut list = Vec::new();
        for i in 0..args.other_tenants {
            list.push(tenant(&store, &format!("bench-other-{i:04}")).await?);
        }
        list
    };
    let mut held = 0usize;
    let mut baseline: Option<(Duration, Duration)> = None;
    for level in &args.others {
        let started = Instant::now();
        let per_tenant = level.saturating_sub(held).div_ceil(others.len().max(1));
        if per_tenant > 0 {
            for other in &others {
                fill(&store, other, per_tenant, &mut source).await?;
            }
            held += per_tenant * others.len();
            eprintln!(
                "  others now hold {held} chunks (+{:.0}s)",
                started.elapsed().as_secs_f64()
            );
        }
        let exact = measure_search(&store, &target, usize::MAX, &queries).await?;
        let graph = measure_search(&store, &target, 1_000, &queries).await?;
        let pg = if pgvector {
            let (p50, p99) = measure_pgvector(&store, &target, &queries).await?;
            format!(
                "   pgvector (one shared HNSW, iterative scan) p50 / p99: {} / {}",
                ms(p50),
                ms(p99)
            )
        } else {
            String::new()
        };
        let base = *baseline.get_or_insert((exact.p50, graph.p50));
        writeln!(
            out,
            "{held:>14} | {:>9} / {:>9} | {:>9} / {:>9} | {:>10} | {:>11}   (p50 vs 0 others: exact {:.2}x, graph {:.2}x){pg}",
            ms(exact.p50),
            ms(exact.p99),
            ms(graph.p50),
            ms(graph.p99),
            ms(exact.cold),
            ms(graph.graph_ready),
            exact.p50.as_secs_f64() / base.0.as_secs_f64(),
            graph.p50.as_secs_f64() / base.1.as_secs_f64(),
        )?;
    }

    // Recall of the graph against exact search, on the target's own vectors.
    let ctx = bulkhead_core::auth::operator_context(&target);
    let (version, chunks) = store
        .tenant(&ctx)
        .knowledge_index_source("kb")
        .await?
        .context("target knowledge base")?;
    let started = Instant::now();
    let mut graph = PartitionIndex::from_stored(DIMS, 1_000, version, &chunks);
    graph.build_graph_now();
    let build = started.elapsed();
    let mut hits = 0;
    let (mut exact_time, mut graph_time) = (Duration::ZERO, Duration::ZERO);
    for query in &queries {
        let started = Instant::now();
        let exact: std::collections::HashSet<i64> = graph
            .exact_nearest(query, 10)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        exact_time += started.elapsed();
        let started = Instant::now();
        let approximate = graph.nearest(query, 10);
        graph_time += started.elapsed();
        hits += approximate
            .iter()
            .filter(|(id, _)| exact.contains(id))
            .count();
    }
    let per_query = |total: Duration| ms(total / queries.len().max(1) as u32);
    writeln!(
        out,
        "\nrecall@10 of the HNSW graph against exact search: {:.3} ({} queries; graph of {} chunks built in {:.2} s, {:.1} MiB)",
        hits as f64 / (10 * queries.len()) as f64,
        queries.len(),
        chunks.len(),
        build.as_secs_f64(),
        graph.memory_bytes() as f64 / 1_048_576.0
    )?;
    writeln!(
        out,
        "vector part alone, per query: exact scan {}, graph {}",
        per_query(exact_time),
        per_query(graph_time)
    )?;
    drop(graph);

    // Memory: many small tenants loaded, then idle (evicted).
    let mut small = Vec::new();
    for i in 0..args.small_tenants {
        let t = tenant(&store, &format!("bench-small-{i:05}")).await?;
        let have = store
            .tenant(&bulkhead_core::auth::operator_context(&t))
            .knowledge_base("kb")
            .await?
            .map_or(0, |kb| kb.chunks as usize);
        fill(&store, &t, 20usize.saturating_sub(have), &mut source).await?;
        small.push(t);
    }
    let knowledge = knowledge(&store, 20_000, Embedders::default())?;
    let kb = KnowledgeBaseName::try_from("kb").map_err(|e| anyhow!("{e}"))?;
    let rss_before = current_rss_kib();
    let started = Instant::now();
    for t in &small {
        let ctx = bulkhead_core::auth::operator_context(t);
        let scoped = store.tenant(&ctx);
        let head = scoped.knowledge_head("kb").await?.context("small kb")?;
        knowledge
            .search_vector(&scoped, &kb, &head, &queries[0], "refund", 5)
            .await?;
    }
    let load_all = started.elapsed();
    let stats = knowledge.cache_stats();
    let rss_after = current_rss_kib();
    writeln!(
        out,
        "\n{} small tenants (20 chunks each) loaded: {:.1} KiB of index per tenant by the cache's count, {:.1} KiB RSS per tenant; cold load {:.2} ms per tenant",
        small.len(),
        stats.bytes as f64 / 1024.0 / small.len().max(1) as f64,
        rss_after.saturating_sub(rss_before) as f64 / small.len().max(1) as f64,
        load_all.as_secs_f64() * 1000.0 / small.len().max(1) as f64,
    )?;
    writeln!(
        out,
        "an idle (evicted) tenant holds no index: only its cache slot entry, about {} bytes",
        std::mem::size_of::<(TenantId, String)>() + 64
    )?;

    if let Some(dir) = &args.models_dir {
        ingest(&store, &mut out, dir).await?;
    }
    store.close().await;
    Ok(())
}

/// Chunks per second through the whole ingest path with the local embedder.
async fn ingest(store: &Store, out: &mut impl Write, dir: &std::path::Path) -> anyhow::Result<()> {
    let embedders = Embedders::load(&[EmbedderConfig {
        alias: "local".into(),
        provider: EmbedderProvider::Local,
        endpoint: String::new(),
        upstream_model: None,
        dimensions: None,
        path: Some(dir.join("all-minilm-l6-v2")),
    }])
    .map_err(|e| anyhow!("{e}"))?;
    let knowledge = knowledge(store, 20_000, embedders)?;
    let t = tenant(store, "bench-ingest").await?;
    let ctx = bulkhead_core::auth::operator_context(&t);
    let scoped = store.tenant(&ctx);
    let kb = KnowledgeBaseName::try_from(format!("kb-{}", rand::random::<u32>()).as_str())
        .map_err(|e| anyhow!("{e}"))?;
    let mut source = VectorSource::new(9);
    let started = Instant::now();
    let mut chunks = 0;
    for i in 0..12 {
        // Paragraphs of ~60 words: a few chunks of up to 200 tokens each per document.
        let text = (0..12)
            .map(|_| format!("{}.", source.text()))
            .collect::<Vec<_>>()
            .join("\n\n");
        let written = knowledge
            .put_document(
                &scoped,
                &kb,
                NewDocument {
                    id: Some(format!("d{i}")),
                    title: "Bench".into(),
                    text,
                    content_type: ContentType::Plain,
                    metadata: serde_json::json!({}),
                },
                &|_, _| {},
            )
            .await?;
        chunks += written.chunks;
    }
    let seconds = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "\ningest with the local embedder: {chunks} chunks (up to 200 tokens) in {seconds:.1} s = {:.1} chunks/s",
        chunks as f64 / seconds
    )?;
    Ok(())
}
