//! Knowledge bases: documents, chunks and their embeddings, per tenant. The search index
//! lives in bulkhead-knowledge; this module keeps what it is built from and the generation
//! that tells a cached index it is stale.

use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::timestamp::now_millis;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backend::{Access, Tx, execute, fetch_all, fetch_optional};
use crate::remote::{self, StoreLink, remote};
use crate::{StoreError, TenantStore, audit};

/// Chunks per page of an index source sent to a dedicated worker: with 384 dimensions as
/// JSON numbers, a few MiB, well under a frame.
pub(crate) const INDEX_PAGE: i64 = 512;

/// Rows per multi-row INSERT: 8 parameters each stays far below both databases' limits.
const CHUNK_INSERT_BATCH: usize = 200;

#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
pub struct KnowledgeBaseRecord {
    pub kb: String,
    pub embedder: String,
    pub dimensions: i64,
    pub generation: i64,
    pub documents: i64,
    pub chunks: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Which state of a knowledge base an index reflects: the creation (`epoch`, its
/// `created_at`) and the count of changes since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnowledgeVersion {
    pub epoch: i64,
    pub generation: i64,
}

/// What a search needs to know about its knowledge base.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
pub struct KnowledgeHead {
    pub generation: i64,
    /// When this knowledge base was created: a generation counts changes of one creation,
    /// so an index is current only for the same `created_at` as well.
    pub created_at: i64,
    pub embedder: String,
    pub dimensions: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub doc_id: String,
    pub title: String,
    pub content_type: String,
    pub metadata: Value,
    pub content_hash: String,
    pub bytes: i64,
    pub chunks: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct DocumentRow {
    doc_id: String,
    title: String,
    content_type: String,
    metadata: String,
    content_hash: String,
    bytes: i64,
    chunks: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<DocumentRow> for DocumentRecord {
    type Error = StoreError;
    fn try_from(row: DocumentRow) -> Result<Self, StoreError> {
        Ok(DocumentRecord {
            metadata: serde_json::from_str(&row.metadata)
                .map_err(|e| StoreError::Corrupt(format!("document metadata: {e}")))?,
            doc_id: row.doc_id,
            title: row.title,
            content_type: row.content_type,
            content_hash: row.content_hash,
            bytes: row.bytes,
            chunks: row.chunks,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A chunk to store with its document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewChunk {
    pub position: i64,
    pub heading_path: Vec<String>,
    pub text: String,
    pub embedding: Vec<f32>,
}

/// A document and its chunks, written together.
#[derive(Serialize)]
pub struct DocumentWrite<'a> {
    pub doc_id: &'a str,
    pub title: &'a str,
    pub content_type: &'a str,
    pub metadata: &'a Value,
    pub content_hash: &'a str,
    pub bytes: i64,
    pub chunks: Vec<NewChunk>,
}

/// What a document write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DocumentOutcome {
    Created,
    Replaced,
    /// Same id, same content: nothing changed (and no event was appended).
    Unchanged,
}

/// The change a write made, for a cached index to apply without reloading.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnowledgeChange {
    pub outcome: DocumentOutcome,
    /// The knowledge base's generation before and after the change (equal if unchanged).
    pub generation_before: i64,
    /// The knowledge base's `created_at`, which with the generation names its version.
    pub epoch: i64,
    pub generation: i64,
    pub removed_chunk_ids: Vec<i64>,
    /// Ids of the new chunks, in the order they were given.
    pub added_chunk_ids: Vec<i64>,
}

/// A chunk as the index loads it: what vector and keyword search need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexedChunk {
    pub chunk_id: i64,
    pub text: String,
    pub embedding: Vec<f32>,
}

/// A chunk as a search result shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub chunk_id: i64,
    pub doc_id: String,
    pub title: String,
    pub position: i64,
    pub heading_path: Vec<String>,
    pub text: String,
}

#[derive(sqlx::FromRow)]
struct ChunkRow {
    chunk_id: i64,
    doc_id: String,
    title: String,
    position: i64,
    heading_path: String,
    text: String,
}

#[derive(sqlx::FromRow)]
struct IndexedRow {
    chunk_id: i64,
    text: String,
    embedding: Vec<u8>,
}

#[derive(sqlx::FromRow)]
struct Generation {
    generation: i64,
    created_at: i64,
}

#[derive(sqlx::FromRow)]
struct ChunkId {
    chunk_id: i64,
}

pub fn embedding_to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn embedding_from_bytes(bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt(format!(
            "embedding of {} bytes is not a whole number of f32s",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

const KNOWLEDGE_BASES: &str = "SELECT k.kb, k.embedder, k.dimensions, k.generation, k.created_at, k.updated_at, \
     (SELECT COUNT(*) FROM kb_documents d WHERE d.tenant_id = k.tenant_id AND d.kb = k.kb) AS documents, \
     (SELECT COUNT(*) FROM kb_chunks c WHERE c.tenant_id = k.tenant_id AND c.kb = k.kb) AS chunks \
     FROM knowledge_bases k WHERE k.tenant_id = $1";

impl TenantStore<'_> {
    /// The knowledge base, creating it with `embedder` if it does not exist. An existing one
    /// keeps the embedder it was created with: its vectors only compare with that model's.
    pub async fn ensure_knowledge_base(
        &self,
        kb: &str,
        embedder: &str,
        dimensions: usize,
    ) -> Result<KnowledgeBaseRecord, StoreError> {
        remote!(self, ensure_knowledge_base, kb, embedder, dimensions);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        let created = execute!(
            &mut tx,
            "INSERT INTO knowledge_bases (tenant_id, kb, embedder, dimensions, generation, next_chunk_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, 1, $5, $5) ON CONFLICT (tenant_id, kb) DO NOTHING",
            tenant.as_str(),
            kb,
            embedder,
            dimensions as i64,
            now,
        )?;
        if created == 1 {
            audit::append(
                &mut tx,
                tenant,
                &self.origin(),
                AuditDraft {
                    action: "knowledge_base.created",
                    resource: format!("knowledge/{kb}"),
                    outcome: Outcome::Success,
                    details: json!({"embedder": embedder, "dimensions": dimensions}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        self.knowledge_base(kb)
            .await?
            .ok_or_else(|| StoreError::Corrupt("knowledge base vanished after creation".into()))
    }

    pub async fn knowledge_base(
        &self,
        kb: &str,
    ) -> Result<Option<KnowledgeBaseRecord>, StoreError> {
        remote!(self, knowledge_base, kb);
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!("{KNOWLEDGE_BASES} AND k.kb = $2");
        let row = fetch_optional!(
            &mut tx,
            KnowledgeBaseRecord,
            &sql,
            self.context().tenant_id().as_str(),
            kb
        )?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn knowledge_bases(&self) -> Result<Vec<KnowledgeBaseRecord>, StoreError> {
        remote!(self, knowledge_bases);
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!("{KNOWLEDGE_BASES} ORDER BY k.kb");
        let rows = fetch_all!(
            &mut tx,
            KnowledgeBaseRecord,
            &sql,
            self.context().tenant_id().as_str()
        )?;
        tx.commit().await?;
        Ok(rows)
    }

    /// The knowledge base's generation and embedder, on every search: one indexed
    /// single-row read.
    pub async fn knowledge_head(&self, kb: &str) -> Result<Option<KnowledgeHead>, StoreError> {
        remote!(self, knowledge_head, kb);
        let mut tx = self.begin(Access::SingleRead).await?;
        let row = fetch_optional!(
            &mut tx,
            KnowledgeHead,
            "SELECT generation, created_at, embedder, dimensions FROM knowledge_bases WHERE tenant_id = $1 AND kb = $2",
            self.context().tenant_id().as_str(),
            kb
        )?;
        tx.commit().await?;
        Ok(row)
    }

    /// The stored content hash of a document, to skip embedding unchanged content.
    pub async fn document_hash(
        &self,
        kb: &str,
        doc_id: &str,
    ) -> Result<Option<String>, StoreError> {
        remote!(self, document_hash, kb, doc_id);
        Ok(self.document(kb, doc_id).await?.map(|d| d.content_hash))
    }

    pub async fn document(
        &self,
        kb: &str,
        doc_id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError> {
        remote!(self, document, kb, doc_id);
        let mut tx = self.begin(Access::Read).await?;
        let row = fetch_optional!(
            &mut tx,
            DocumentRow,
            "SELECT doc_id, title, content_type, metadata, content_hash, bytes, chunks, created_at, updated_at \
             FROM kb_documents WHERE tenant_id = $1 AND kb = $2 AND doc_id = $3",
            self.context().tenant_id().as_str(),
            kb,
            doc_id
        )?;
        tx.commit().await?;
        row.map(DocumentRecord::try_from).transpose()
    }

    pub async fn documents(&self, kb: &str) -> Result<Vec<DocumentRecord>, StoreError> {
        remote!(self, documents, kb);
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            DocumentRow,
            "SELECT doc_id, title, content_type, metadata, content_hash, bytes, chunks, created_at, updated_at \
             FROM kb_documents WHERE tenant_id = $1 AND kb = $2 ORDER BY doc_id",
            self.context().tenant_id().as_str(),
            kb
        )?;
        tx.commit().await?;
        rows.into_iter().map(DocumentRecord::try_from).collect()
    }

    /// Writes a document with its chunks in one transaction: the old chunks of the same id go
    /// and the new ones arrive together, or nothing changes. Same content hash: nothing to
    /// do. The knowledge base must exist ([`Self::ensure_knowledge_base`]).
    pub async fn put_document(
        &self,
        kb: &str,
        write: &DocumentWrite<'_>,
    ) -> Result<KnowledgeChange, StoreError> {
        remote!(self, put_document, kb, write);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        #[derive(sqlx::FromRow)]
        struct Existing {
            content_hash: String,
        }
        let existing = fetch_optional!(
            &mut tx,
            Existing,
            "SELECT content_hash FROM kb_documents WHERE tenant_id = $1 AND kb = $2 AND doc_id = $3",
            tenant.as_str(),
            kb,
            write.doc_id
        )?;
        let before = fetch_optional!(
            &mut tx,
            Generation,
            "SELECT generation, created_at FROM knowledge_bases WHERE tenant_id = $1 AND kb = $2",
            tenant.as_str(),
            kb
        )?
        .ok_or(StoreError::NotFound("knowledge base"))?;
        let (generation_before, epoch) = (before.generation, before.created_at);
        if existing
            .as_ref()
            .is_some_and(|e| e.content_hash == write.content_hash)
        {
            tx.commit().await?;
            return Ok(KnowledgeChange {
                outcome: DocumentOutcome::Unchanged,
                generation_before,
                epoch,
                generation: generation_before,
                removed_chunk_ids: Vec::new(),
                added_chunk_ids: Vec::new(),
            });
        }
        let removed_chunk_ids = delete_chunks(&mut tx, tenant.as_str(), kb, write.doc_id).await?;
        let count = write.chunks.len() as i64;
        #[derive(sqlx::FromRow)]
        struct Counters {
            generation: i64,
            next_chunk_id: i64,
        }
        let counters = fetch_optional!(
            &mut tx,
            Counters,
            "UPDATE knowledge_bases SET generation = generation + 1, next_chunk_id = next_chunk_id + $3, \
             updated_at = $4 WHERE tenant_id = $1 AND kb = $2 RETURNING generation, next_chunk_id",
            tenant.as_str(),
            kb,
            count,
            now
        )?
        .ok_or(StoreError::NotFound("knowledge base"))?;
        let first_id = counters.next_chunk_id - count;
        execute!(
            &mut tx,
            "INSERT INTO kb_documents (tenant_id, kb, doc_id, title, content_type, metadata, content_hash, bytes, chunks, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (tenant_id, kb, doc_id) DO UPDATE SET title = excluded.title, content_type = excluded.content_type, \
             metadata = excluded.metadata, content_hash = excluded.content_hash, bytes = excluded.bytes, \
             chunks = excluded.chunks, updated_at = excluded.updated_at",
            tenant.as_str(),
            kb,
            write.doc_id,
            write.title,
            write.content_type,
            write.metadata.to_string(),
            write.content_hash,
            write.bytes,
            count,
            now
        )?;
        let added_chunk_ids: Vec<i64> = (first_id..first_id + count).collect();
        insert_chunks(
            &mut tx,
            tenant.as_str(),
            kb,
            write.doc_id,
            first_id,
            &write.chunks,
        )
        .await?;
        if self.pgvector {
            let rows: Vec<(i64, &[f32])> = added_chunk_ids
                .iter()
                .copied()
                .zip(write.chunks.iter().map(|c| c.embedding.as_slice()))
                .collect();
            crate::pgvector::insert_vectors(&mut tx, tenant.as_str(), kb, &rows).await?;
        }
        let outcome = if existing.is_some() {
            DocumentOutcome::Replaced
        } else {
            DocumentOutcome::Created
        };
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "knowledge.document.written",
                resource: format!("knowledge/{kb}/documents/{}", write.doc_id),
                outcome: Outcome::Success,
                details: json!({
                    "replaced": outcome == DocumentOutcome::Replaced,
                    "chunks": count,
                    "bytes": write.bytes,
                    "content_hash": write.content_hash,
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(KnowledgeChange {
            outcome,
            generation_before,
            epoch,
            generation: counters.generation,
            removed_chunk_ids,
            added_chunk_ids,
        })
    }

    /// Deletes a document and its chunks; `None` if there was no such document.
    pub async fn delete_document(
        &self,
        kb: &str,
        doc_id: &str,
    ) -> Result<Option<KnowledgeChange>, StoreError> {
        remote!(self, delete_document, kb, doc_id);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let removed_chunk_ids = delete_chunks(&mut tx, tenant.as_str(), kb, doc_id).await?;
        let deleted = execute!(
            &mut tx,
            "DELETE FROM kb_documents WHERE tenant_id = $1 AND kb = $2 AND doc_id = $3",
            tenant.as_str(),
            kb,
            doc_id
        )?;
        if deleted == 0 {
            return Ok(None);
        }
        let after = fetch_optional!(
            &mut tx,
            Generation,
            "UPDATE knowledge_bases SET generation = generation + 1, updated_at = $3 \
             WHERE tenant_id = $1 AND kb = $2 RETURNING generation, created_at",
            tenant.as_str(),
            kb,
            now_millis()
        )?
        .ok_or(StoreError::NotFound("knowledge base"))?;
        let generation = after.generation;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "knowledge.document.deleted",
                resource: format!("knowledge/{kb}/documents/{doc_id}"),
                outcome: Outcome::Success,
                details: json!({"chunks": removed_chunk_ids.len()}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(KnowledgeChange {
            outcome: DocumentOutcome::Replaced,
            generation_before: generation - 1,
            epoch: after.created_at,
            generation,
            removed_chunk_ids,
            added_chunk_ids: Vec::new(),
        }))
    }

    /// Deletes a knowledge base with all its documents, chunks and vectors; `None` if there
    /// was none. Answers how many documents went.
    pub async fn delete_knowledge_base(&self, kb: &str) -> Result<Option<i64>, StoreError> {
        remote!(self, delete_knowledge_base, kb);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        execute!(
            &mut tx,
            "DELETE FROM kb_chunks WHERE tenant_id = $1 AND kb = $2",
            tenant.as_str(),
            kb
        )?;
        let documents = execute!(
            &mut tx,
            "DELETE FROM kb_documents WHERE tenant_id = $1 AND kb = $2",
            tenant.as_str(),
            kb
        )?;
        let deleted = execute!(
            &mut tx,
            "DELETE FROM knowledge_bases WHERE tenant_id = $1 AND kb = $2",
            tenant.as_str(),
            kb
        )?;
        if deleted == 0 {
            return Ok(None);
        }
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "knowledge_base.deleted",
                resource: format!("knowledge/{kb}"),
                outcome: Outcome::Success,
                details: json!({"documents": documents}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(documents as i64))
    }

    /// Everything an index of the knowledge base is built from, with the generation it
    /// reflects (read in the same transaction).
    pub async fn knowledge_index_source(
        &self,
        kb: &str,
    ) -> Result<Option<(KnowledgeVersion, Vec<IndexedChunk>)>, StoreError> {
        if let Some(link) = self.link {
            return self.index_source_in_pages(link, kb).await;
        }
        self.knowledge_index_page(kb, 0, i64::MAX).await
    }

    /// A dedicated worker reads the index source a page at a time, so that no answer is
    /// larger than a frame. Pages are read in transactions of their own; every change of a
    /// knowledge base moves its version, so pages that all carry one version are one state.
    async fn index_source_in_pages(
        &self,
        link: &dyn StoreLink,
        kb: &str,
    ) -> Result<Option<(KnowledgeVersion, Vec<IndexedChunk>)>, StoreError> {
        const ATTEMPTS: usize = 3;
        'attempt: for _ in 0..ATTEMPTS {
            let mut chunks: Vec<IndexedChunk> = Vec::new();
            let mut version = None;
            loop {
                let after = chunks.last().map_or(0, |chunk| chunk.chunk_id);
                let page: Option<(KnowledgeVersion, Vec<IndexedChunk>)> = remote::call(
                    link,
                    self.context(),
                    "knowledge_index_page",
                    (kb, after, INDEX_PAGE),
                )
                .await?;
                let Some((page_version, page)) = page else {
                    return Ok(None);
                };
                if version.is_some_and(|seen| seen != page_version) {
                    continue 'attempt;
                }
                version = Some(page_version);
                let last = page.len() < INDEX_PAGE as usize;
                chunks.extend(page);
                if last {
                    return Ok(Some((page_version, chunks)));
                }
            }
        }
        Err(StoreError::Conflict(
            "a knowledge base that changed while it was read, three times over",
        ))
    }

    /// The chunks after `after` (a chunk id), at most `limit` of them, with the version they
    /// belong to.
    pub(crate) async fn knowledge_index_page(
        &self,
        kb: &str,
        after: i64,
        limit: i64,
    ) -> Result<Option<(KnowledgeVersion, Vec<IndexedChunk>)>, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Read).await?;
        let Some(generation) = fetch_optional!(
            &mut tx,
            Generation,
            "SELECT generation, created_at FROM knowledge_bases WHERE tenant_id = $1 AND kb = $2",
            tenant.as_str(),
            kb
        )?
        else {
            tx.commit().await?;
            return Ok(None);
        };
        let rows = fetch_all!(
            &mut tx,
            IndexedRow,
            "SELECT chunk_id, text, embedding FROM kb_chunks WHERE tenant_id = $1 AND kb = $2 \
             AND chunk_id > $3 ORDER BY chunk_id LIMIT $4",
            tenant.as_str(),
            kb,
            after,
            limit
        )?;
        tx.commit().await?;
        let chunks = rows
            .into_iter()
            .map(|row| {
                Ok(IndexedChunk {
                    chunk_id: row.chunk_id,
                    text: row.text,
                    embedding: embedding_from_bytes(&row.embedding)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some((
            KnowledgeVersion {
                epoch: generation.created_at,
                generation: generation.generation,
            },
            chunks,
        )))
    }

    /// The chunks with these ids that still exist, with their document's title. A chunk
    /// deleted since the index was read is simply absent.
    pub async fn chunks_by_id(
        &self,
        kb: &str,
        ids: &[i64],
    ) -> Result<Vec<ChunkRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        remote!(self, chunks_by_id, kb, ids);
        let placeholders = (0..ids.len())
            .map(|i| format!("${}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT c.chunk_id, c.doc_id, d.title, c.position, c.heading_path, c.text FROM kb_chunks c \
             JOIN kb_documents d ON d.tenant_id = c.tenant_id AND d.kb = c.kb AND d.doc_id = c.doc_id \
             WHERE c.tenant_id = $1 AND c.kb = $2 AND c.chunk_id IN ({placeholders})"
        );
        let tenant = self.context().tenant_id().as_str();
        let mut tx = self.begin(Access::Read).await?;
        macro_rules! bound {
            () => {{
                let mut query = sqlx::query_as::<_, ChunkRow>(&sql).bind(tenant).bind(kb);
                for id in ids {
                    query = query.bind(*id);
                }
                query
            }};
        }
        let rows = match &mut tx {
            Tx::Sqlite(t) => bound!().fetch_all(&mut **t).await?,
            Tx::SqliteStatement(t) => bound!().fetch_all(&mut **t).await?,
            Tx::Postgres(t) => bound!().fetch_all(&mut **t).await?,
        };
        tx.commit().await?;
        rows.into_iter()
            .map(|row| {
                Ok(ChunkRecord {
                    heading_path: serde_json::from_str(&row.heading_path)
                        .map_err(|e| StoreError::Corrupt(format!("chunk heading path: {e}")))?,
                    chunk_id: row.chunk_id,
                    doc_id: row.doc_id,
                    title: row.title,
                    position: row.position,
                    text: row.text,
                })
            })
            .collect()
    }
}

/// Deletes a document's chunks inside the caller's transaction; answers their ids.
async fn delete_chunks(
    tx: &mut Tx,
    tenant: &str,
    kb: &str,
    doc_id: &str,
) -> Result<Vec<i64>, StoreError> {
    let ids = fetch_all!(
        tx,
        ChunkId,
        "SELECT chunk_id FROM kb_chunks WHERE tenant_id = $1 AND kb = $2 AND doc_id = $3",
        tenant,
        kb,
        doc_id
    )?;
    execute!(
        tx,
        "DELETE FROM kb_chunks WHERE tenant_id = $1 AND kb = $2 AND doc_id = $3",
        tenant,
        kb,
        doc_id
    )?;
    Ok(ids.into_iter().map(|c| c.chunk_id).collect())
}

/// Multi-row INSERTs of a document's chunks, ids `first_id..`, inside the caller's
/// transaction.
async fn insert_chunks(
    tx: &mut Tx,
    tenant: &str,
    kb: &str,
    doc_id: &str,
    first_id: i64,
    chunks: &[NewChunk],
) -> Result<(), StoreError> {
    for (batch_index, batch) in chunks.chunks(CHUNK_INSERT_BATCH).enumerate() {
        let rows = (0..batch.len())
            .map(|i| {
                let p = 4 + i * 5;
                format!(
                    "($1, $2, $3, ${p}, ${}, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO kb_chunks (tenant_id, kb, doc_id, chunk_id, position, heading_path, text, embedding) VALUES {rows}"
        );
        let base = first_id + (batch_index * CHUNK_INSERT_BATCH) as i64;
        macro_rules! bound {
            () => {{
                let mut query = sqlx::query(&sql).bind(tenant).bind(kb).bind(doc_id);
                for (offset, chunk) in batch.iter().enumerate() {
                    query = query
                        .bind(base + offset as i64)
                        .bind(chunk.position)
                        .bind(serde_json::to_string(&chunk.heading_path).unwrap_or_default())
                        .bind(chunk.text.as_str())
                        .bind(embedding_to_bytes(&chunk.embedding));
                }
                query
            }};
        }
        match tx {
            Tx::Sqlite(t) => {
                bound!().execute(&mut **t).await?;
            }
            Tx::Postgres(t) => {
                bound!().execute(&mut **t).await?;
            }
            Tx::SqliteStatement(_) => {
                return Err(StoreError::Corrupt(
                    "chunk insert outside a transaction".into(),
                ));
            }
        }
    }
    Ok(())
}
