//! A pgvector-backed nearest-neighbour search over knowledge chunks, for PostgreSQL servers
//! that have the `vector` extension. It is the comparison point for the in-process
//! per-tenant index (see ARCHITECTURE.md, "Why the vector index is in-process"), exercised by
//! tests and by `bulkhead bench knowledge`; HTTP search does not use it. Once enabled, every
//! document write fills `kb_vectors` in the same transaction as the chunks.
//!
//! All tenants' vectors share one table and one HNSW graph, under row-level security like
//! every tenant table. That invites the HNSW-with-WHERE pitfall: the index scan yields the
//! `ef_search` nearest rows of *all* tenants and the tenant filter runs afterwards, so a
//! small tenant among large ones gets fewer than k rows, often none. pgvector 0.8's iterative
//! scans avoid it: the scan resumes until k rows pass the filter (or `max_scan_tuples`).

use crate::backend::{Access, Backend, Tx};
use crate::{Store, StoreError, TenantStore};

/// How the search treats the tenant filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorScan {
    /// `hnsw.iterative_scan = off`: the pitfall, kept to show it in tests.
    SinglePass,
    /// `hnsw.iterative_scan = strict_order`: scans on until k rows of the tenant are found.
    Iterative,
}

/// `[0.1,0.2,...]`, pgvector's text input; bound as text and cast, so no extra driver type.
fn vector_literal(vector: &[f32]) -> String {
    let parts: Vec<String> = vector.iter().map(f32::to_string).collect();
    format!("[{}]", parts.join(","))
}

impl Store {
    /// Whether the server has the `vector` extension available.
    pub async fn pgvector_available(&self) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite { .. } | Backend::Detached => Ok(false),
            Backend::Postgres(pool) => {
                let found: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'",
                )
                .fetch_optional(pool)
                .await?;
                Ok(found.is_some())
            }
        }
    }

    /// Creates the extension, the `kb_vectors` table of `dimensions`-long vectors (row-level
    /// security as every tenant table) and its HNSW index. Runs as the database owner, once.
    pub async fn enable_pgvector(&self, dimensions: usize) -> Result<(), StoreError> {
        let Backend::Postgres(pool) = &self.backend else {
            return Err(StoreError::Unsupported("pgvector needs PostgreSQL"));
        };
        let sql = format!(
            "CREATE EXTENSION IF NOT EXISTS vector;
             CREATE TABLE IF NOT EXISTS kb_vectors (
                 tenant_id TEXT NOT NULL,
                 kb        TEXT NOT NULL,
                 chunk_id  BIGINT NOT NULL,
                 embedding vector({dimensions}) NOT NULL,
                 PRIMARY KEY (tenant_id, kb, chunk_id),
                 FOREIGN KEY (tenant_id, kb, chunk_id) REFERENCES kb_chunks (tenant_id, kb, chunk_id) ON DELETE CASCADE
             );
             ALTER TABLE kb_vectors ENABLE ROW LEVEL SECURITY;
             ALTER TABLE kb_vectors FORCE ROW LEVEL SECURITY;
             DROP POLICY IF EXISTS tenant_isolation ON kb_vectors;
             CREATE POLICY tenant_isolation ON kb_vectors TO bulkhead_tenant
                 USING (tenant_id = current_setting('bulkhead.tenant_id', true))
                 WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
             DROP POLICY IF EXISTS control_plane ON kb_vectors;
             CREATE POLICY control_plane ON kb_vectors TO bulkhead_control USING (true) WITH CHECK (true);
             GRANT SELECT, INSERT, UPDATE, DELETE ON kb_vectors TO bulkhead_tenant, bulkhead_control;
             CREATE INDEX IF NOT EXISTS kb_vectors_hnsw ON kb_vectors USING hnsw (embedding vector_cosine_ops);"
        );
        sqlx::raw_sql(&sql).execute(pool).await?;
        self.pgvector
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Writes chunks' vectors into `kb_vectors` inside the transaction that writes the chunks,
/// so the two never disagree (deletes follow through the foreign key).
pub(crate) async fn insert_vectors(
    tx: &mut Tx,
    tenant: &str,
    kb: &str,
    rows: &[(i64, &[f32])],
) -> Result<(), StoreError> {
    let Tx::Postgres(t) = tx else {
        return Err(StoreError::Unsupported("pgvector needs PostgreSQL"));
    };
    for batch in rows.chunks(500) {
        let values = (0..batch.len())
            .map(|i| format!("($1, $2, ${}, ${}::vector)", 3 + 2 * i, 4 + 2 * i))
            .collect::<Vec<_>>()
            .join(", ");
        let sql =
            format!("INSERT INTO kb_vectors (tenant_id, kb, chunk_id, embedding) VALUES {values}");
        let mut query = sqlx::query(&sql).bind(tenant).bind(kb);
        for (id, vector) in batch {
            query = query.bind(*id).bind(vector_literal(vector));
        }
        query.execute(&mut **t).await?;
    }
    Ok(())
}

impl TenantStore<'_> {
    /// The `k` chunks of this tenant's `kb` nearest to `query` by cosine distance, through
    /// the shared HNSW graph, as `(chunk_id, similarity)`.
    pub async fn pgvector_nearest(
        &self,
        kb: &str,
        query: &[f32],
        k: usize,
        scan: VectorScan,
    ) -> Result<Vec<(i64, f32)>, StoreError> {
        let tenant = self.context().tenant_id().as_str();
        let mut tx = self.begin(Access::Read).await?;
        let Tx::Postgres(t) = &mut tx else {
            return Err(StoreError::Unsupported("pgvector needs PostgreSQL"));
        };
        let mode = match scan {
            VectorScan::SinglePass => "off",
            VectorScan::Iterative => "strict_order",
        };
        // Without a sort to fall back on, the planner walks the HNSW graph even for a small
        // tenant (it would otherwise sort that tenant's rows exactly, which hides the
        // pitfall and does not scale to large tenants).
        sqlx::query("SELECT set_config('hnsw.iterative_scan', $1, true), set_config('enable_sort', 'off', true)")
            .bind(mode)
            .execute(&mut **t)
            .await?;
        #[derive(sqlx::FromRow)]
        struct Hit {
            chunk_id: i64,
            similarity: f64,
        }
        let hits: Vec<Hit> = sqlx::query_as(
            "SELECT chunk_id, 1 - (embedding <=> $3::vector) AS similarity FROM kb_vectors \
             WHERE tenant_id = $1 AND kb = $2 ORDER BY embedding <=> $3::vector LIMIT $4",
        )
        .bind(tenant)
        .bind(kb)
        .bind(vector_literal(query))
        .bind(k as i64)
        .fetch_all(&mut **t)
        .await?;
        tx.commit().await?;
        Ok(hits
            .into_iter()
            .map(|h| (h.chunk_id, h.similarity as f32))
            .collect())
    }
}
