//! The pgvector path on PostgreSQL 18 with pgvector 0.8 (from `scripts/pgvector`): the
//! HNSW-with-WHERE pitfall shown, and avoided with iterative scans, under row-level security.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bulkhead_core::{Role, TenantContext};
use bulkhead_store::testing::{TestDb, create_tenant};
use bulkhead_store::{DocumentWrite, NewChunk, VectorScan};

const DIMS: usize = 8;

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// `n` vectors near `direction`, a little apart from each other.
fn around(direction: usize, n: usize, seed: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            let mut v = vec![0.0; DIMS];
            v[direction] = 1.0;
            v[(direction + 1 + (i + seed) % (DIMS - 1)) % DIMS] = 0.01 * ((i % 97) as f32 + 1.0);
            unit(v)
        })
        .collect()
}

async fn store_vectors(store: &bulkhead_store::Store, ctx: &TenantContext, vectors: &[Vec<f32>]) {
    let scoped = store.tenant(ctx);
    scoped
        .ensure_knowledge_base("kb", "test", DIMS)
        .await
        .unwrap();
    let metadata = serde_json::json!({});
    scoped
        .put_document(
            "kb",
            &DocumentWrite {
                doc_id: "d",
                title: "t",
                content_type: "text/plain",
                metadata: &metadata,
                content_hash: "h",
                bytes: 1,
                chunks: vectors
                    .iter()
                    .enumerate()
                    .map(|(i, v)| NewChunk {
                        position: i as i64,
                        heading_path: Vec::new(),
                        text: format!("chunk {i}"),
                        embedding: v.clone(),
                    })
                    .collect(),
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_small_tenant_gets_k_results_only_with_iterative_scans() {
    let (store, db) = TestDb::pgvector().await;
    assert!(store.pgvector_available().await.unwrap());
    store.enable_pgvector(DIMS).await.unwrap();
    let big =
        TenantContext::for_tests(&create_tenant(&store, "big", "local").await, &[Role::Owner]);
    let small = TenantContext::for_tests(
        &create_tenant(&store, "small", "local").await,
        &[Role::Owner],
    );
    // The big tenant's 3,000 vectors sit right where the query points; the small tenant's
    // 30 sit elsewhere, so the graph's nearest candidates all belong to the big tenant.
    store_vectors(&store, &big, &around(0, 3_000, 0)).await;
    store_vectors(&store, &small, &around(3, 30, 5)).await;
    let query = unit({
        let mut v = vec![0.0; DIMS];
        v[0] = 1.0;
        v
    });
    let scoped = store.tenant(&small);
    let single = scoped
        .pgvector_nearest("kb", &query, 10, VectorScan::SinglePass)
        .await
        .unwrap();
    let iterative = scoped
        .pgvector_nearest("kb", &query, 10, VectorScan::Iterative)
        .await
        .unwrap();
    assert!(
        single.len() < 10,
        "the pitfall did not show: one pass found {} rows",
        single.len()
    );
    assert_eq!(iterative.len(), 10, "iterative scans return k rows");
    eprintln!(
        "k = 10: one pass returned {}, iterative scans {}",
        single.len(),
        iterative.len()
    );
    // Row-level security keeps every result the small tenant's own.
    let own: Vec<i64> = (1..=30).collect();
    assert!(
        iterative.iter().all(|(id, _)| own.contains(id)),
        "{iterative:?}"
    );
    // And the big tenant, searching the same way, never sees the small one's.
    // Deleting the document takes its vectors with it, in the same transaction.
    store
        .tenant(&small)
        .delete_document("kb", "d")
        .await
        .unwrap();
    let gone = scoped
        .pgvector_nearest("kb", &query, 10, VectorScan::Iterative)
        .await
        .unwrap();
    assert!(gone.is_empty(), "{gone:?}");
    let theirs = store
        .tenant(&big)
        .pgvector_nearest("kb", &query, 50, VectorScan::Iterative)
        .await
        .unwrap();
    assert_eq!(theirs.len(), 50);
    assert!(theirs.iter().all(|(_, similarity)| *similarity > 0.9));
    db.finish(store).await;
}
