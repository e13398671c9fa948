//! Knowledge bases: documents split into chunks, embedded, and searched by meaning and by
//! keyword over an index that holds one tenant's knowledge base and nothing else.
//!
//! **Architecture Invariant:** the tenant boundary is inside the index. Each
//! [`PartitionIndex`] is built from one tenant's knowledge base, read through that tenant's
//! `TenantStore`, and the cache keys it by tenant and knowledge base. A search reaches only
//! the partition of its caller's context; there is no shared index to filter.

mod cache;
pub mod chunk;
mod embed;
mod html;
pub mod index;

use std::collections::HashMap;

use bulkhead_core::KnowledgeBaseName;
use bulkhead_core::config::KnowledgeConfig;
use bulkhead_egress::{Egress, EgressError};
use bulkhead_store::{
    DocumentOutcome, DocumentWrite, KnowledgeHead, NewChunk, StoreError, TenantStore,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use cache::{CacheStats, IndexCache};
pub use chunk::{Chunk, ChunkLimits, ContentType, chunk_document, estimate_tokens};
pub use embed::{Embedder, Embedders};
pub use index::{IndexEntry, PartitionIndex, Scored};

/// Most passages one search returns.
pub const MAX_K: usize = 50;
const MAX_TITLE_CHARS: usize = 300;
const MAX_DOC_ID_CHARS: usize = 200;
const MAX_QUERY_CHARS: usize = 2_000;
const MAX_METADATA_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("the document is {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("no such knowledge base or document")]
    NotFound,
    #[error("embedder {0:?} is not configured on this deployment")]
    EmbedderUnavailable(String),
    #[error("embedding failed: {0}")]
    Embedder(String),
    #[error("the embedding provider answered {status}: {message}")]
    Upstream { status: u16, message: String },
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KnowledgeError {
    /// The stable problem code the HTTP layer and failed runs report.
    pub fn code(&self) -> &'static str {
        match self {
            KnowledgeError::Invalid { .. } => "invalid",
            KnowledgeError::TooLarge { .. } => "document_too_large",
            KnowledgeError::NotFound => "not_found",
            KnowledgeError::EmbedderUnavailable(_) => "embedder_unavailable",
            KnowledgeError::Embedder(_) => "embedder_failed",
            KnowledgeError::Upstream { .. } => "upstream_error",
            KnowledgeError::Egress(e) => e.code(),
            KnowledgeError::Store(_) => "internal",
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// A document as a tenant posts it.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// Unset: derived from the content, so posting the same content again does nothing.
    pub id: Option<String>,
    pub title: String,
    pub text: String,
    pub content_type: ContentType,
    pub metadata: Value,
}

#[derive(Debug, Clone)]
pub struct PutOutcome {
    pub doc_id: String,
    pub outcome: DocumentOutcome,
    pub chunks: usize,
}

/// One search result, with where it came from.
#[derive(Debug, Clone)]
pub struct Passage {
    pub doc_id: String,
    pub title: String,
    pub chunk_id: i64,
    pub position: i64,
    pub heading_path: Vec<String>,
    pub text: String,
    pub score: f32,
    pub vector_score: f32,
    pub keyword_score: f32,
}

/// Ingest and search, shared by the HTTP routes, the CLI and agent runs.
pub struct Knowledge {
    config: KnowledgeConfig,
    embedders: Embedders,
    cache: IndexCache,
    egress: Egress,
}

impl Knowledge {
    pub fn new(config: KnowledgeConfig, embedders: Embedders, egress: Egress) -> Self {
        let cache = IndexCache::new(
            config.index_memory_mb.saturating_mul(1024 * 1024),
            config.exact_search_max_chunks,
        );
        Self {
            config,
            embedders,
            cache,
            egress,
        }
    }

    pub fn config(&self) -> &KnowledgeConfig {
        &self.config
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Resolves once no graph is being built for this knowledge base (benchmarks measure the
    /// graph path with it).
    pub async fn wait_for_graph(&self, tenant: &bulkhead_core::TenantId, kb: &KnowledgeBaseName) {
        self.cache.wait_for_graph(tenant, kb.as_str()).await;
    }

    fn embedder(&self, alias: &str) -> Result<&Embedder, KnowledgeError> {
        self.embedders
            .get(alias)
            .ok_or_else(|| KnowledgeError::EmbedderUnavailable(alias.to_owned()))
    }

    /// Chunks, embeds and stores a document, replacing an earlier one of the same id. The
    /// same content again changes nothing and embeds nothing. `progress` hears how many
    /// chunks are embedded.
    pub async fn put_document(
        &self,
        store: &TenantStore<'_>,
        kb: &KnowledgeBaseName,
        document: NewDocument,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<PutOutcome, KnowledgeError> {
        let hash = content_hash(&document);
        let doc_id = self.validate(&document, &hash)?;
        let existing = store.knowledge_head(kb.as_str()).await?;
        let embedder_alias = existing
            .as_ref()
            .map_or(self.config.default_embedder.as_str(), |h| {
                h.embedder.as_str()
            });
        let embedder = self.embedder(embedder_alias)?;
        if existing.is_some()
            && store.document_hash(kb.as_str(), &doc_id).await?.as_deref() == Some(hash.as_str())
        {
            return Ok(PutOutcome {
                doc_id,
                outcome: DocumentOutcome::Unchanged,
                chunks: 0,
            });
        }
        let limits = ChunkLimits {
            max_tokens: self.config.chunk_max_tokens,
            overlap_tokens: self.config.chunk_overlap_tokens,
        };
        let chunks = chunk_document(document.content_type, &document.text, limits, &|t| {
            embedder.count_tokens(t)
        });
        if chunks.is_empty() {
            return Err(KnowledgeError::invalid("text", "the document has no text"));
        }
        if chunks.len() > self.config.max_chunks_per_document {
            return Err(KnowledgeError::invalid(
                "text",
                format!(
                    "the document makes {} chunks; the limit is {}",
                    chunks.len(),
                    self.config.max_chunks_per_document
                ),
            ));
        }
        let texts: Vec<String> = chunks.iter().map(Chunk::embedding_text).collect();
        let total = texts.len();
        let egress = self.egress.for_tenant(store.context());
        let vectors = embedder
            .embed(&egress, &texts, &|done| progress(done, total))
            .await?;
        // Created only now, so a failed embedding leaves no empty knowledge base behind.
        if existing.is_none() {
            store
                .ensure_knowledge_base(kb.as_str(), embedder_alias, embedder.dimensions())
                .await?;
        }
        let stored_chunks: Vec<NewChunk> = chunks
            .into_iter()
            .zip(vectors)
            .map(|(chunk, embedding)| NewChunk {
                position: chunk.position as i64,
                heading_path: chunk.heading_path,
                text: chunk.text,
                embedding,
            })
            .collect();
        let count = stored_chunks.len();
        let write = DocumentWrite {
            doc_id: &doc_id,
            title: &document.title,
            content_type: document.content_type.as_str(),
            metadata: &document.metadata,
            content_hash: &hash,
            bytes: document.text.len() as i64,
            chunks: stored_chunks,
        };
        let change = store.put_document(kb.as_str(), &write).await?;
        if change.outcome != DocumentOutcome::Unchanged {
            let added = change
                .added_chunk_ids
                .iter()
                .zip(write.chunks)
                .map(|(id, chunk)| (*id, chunk.embedding, chunk.text))
                .collect();
            self.cache
                .apply(store.context().tenant_id(), kb.as_str(), &change, added)
                .await?;
        }
        Ok(PutOutcome {
            doc_id,
            outcome: change.outcome,
            chunks: count,
        })
    }

    /// Checks the document; answers its id. A document without one gets a prefix of its
    /// content hash, so the same content posted twice is one document.
    fn validate(&self, document: &NewDocument, hash: &str) -> Result<String, KnowledgeError> {
        if document.text.len() > self.config.max_document_bytes {
            return Err(KnowledgeError::TooLarge {
                bytes: document.text.len(),
                limit: self.config.max_document_bytes,
            });
        }
        if document.title.trim().is_empty() || document.title.chars().count() > MAX_TITLE_CHARS {
            return Err(KnowledgeError::invalid(
                "title",
                format!("must be 1 to {MAX_TITLE_CHARS} characters"),
            ));
        }
        if !document.metadata.is_object() {
            return Err(KnowledgeError::invalid("metadata", "must be a JSON object"));
        }
        if document.metadata.to_string().len() > MAX_METADATA_BYTES {
            return Err(KnowledgeError::invalid(
                "metadata",
                format!("must be at most {MAX_METADATA_BYTES} bytes"),
            ));
        }
        match &document.id {
            Some(id) => {
                validate_doc_id(id)?;
                Ok(id.clone())
            }
            None => Ok(format!("sha256-{}", &hash[..24])),
        }
    }

    /// Deletes a document; it is gone from the next search. `false` if there was none.
    pub async fn delete_document(
        &self,
        store: &TenantStore<'_>,
        kb: &KnowledgeBaseName,
        doc_id: &str,
    ) -> Result<bool, KnowledgeError> {
        let Some(change) = store.delete_document(kb.as_str(), doc_id).await? else {
            return Ok(false);
        };
        self.cache
            .apply(
                store.context().tenant_id(),
                kb.as_str(),
                &change,
                Vec::new(),
            )
            .await?;
        Ok(true)
    }

    /// Deletes a whole knowledge base; `false` if there was none. Every process's next search
    /// of it answers 404 (the generation read finds no row).
    pub async fn delete_knowledge_base(
        &self,
        store: &TenantStore<'_>,
        kb: &KnowledgeBaseName,
    ) -> Result<bool, KnowledgeError> {
        let deleted = store.delete_knowledge_base(kb.as_str()).await?.is_some();
        self.cache
            .forget(store.context().tenant_id(), kb.as_str())
            .await;
        Ok(deleted)
    }

    /// The `k` passages of the tenant's knowledge base best matching `query`, best first.
    pub async fn search(
        &self,
        store: &TenantStore<'_>,
        kb: &KnowledgeBaseName,
        query: &str,
        k: usize,
    ) -> Result<Vec<Passage>, KnowledgeError> {
        let mut found = self
            .search_many(store, std::slice::from_ref(kb), query, k)
            .await?;
        match found.pop() {
            Some((_, Some(passages))) => Ok(passages),
            _ => Err(KnowledgeError::NotFound),
        }
    }

    /// [`Self::search`] over several knowledge bases, embedding the query once per embedder
    /// they use. Each knowledge base answers its passages, or `None` if it does not exist.
    pub async fn search_many(
        &self,
        store: &TenantStore<'_>,
        kbs: &[KnowledgeBaseName],
        query: &str,
        k: usize,
    ) -> Result<Vec<(KnowledgeBaseName, Option<Vec<Passage>>)>, KnowledgeError> {
        if query.trim().is_empty() || query.chars().count() > MAX_QUERY_CHARS {
            return Err(KnowledgeError::invalid(
                "q",
                format!("must be 1 to {MAX_QUERY_CHARS} characters"),
            ));
        }
        if !(1..=MAX_K).contains(&k) {
            return Err(KnowledgeError::invalid(
                "k",
                format!("must be 1 to {MAX_K}"),
            ));
        }
        let egress = self.egress.for_tenant(store.context());
        let mut query_vectors: HashMap<String, Vec<f32>> = HashMap::new();
        let mut results = Vec::with_capacity(kbs.len());
        for kb in kbs {
            let Some(head) = store.knowledge_head(kb.as_str()).await? else {
                results.push((kb.clone(), None));
                continue;
            };
            if !query_vectors.contains_key(&head.embedder) {
                let vector = self
                    .embedder(&head.embedder)?
                    .embed(&egress, &[query.to_owned()], &|_| {})
                    .await?
                    .into_iter()
                    .next()
                    .ok_or_else(|| KnowledgeError::Embedder("no vector for the query".into()))?;
                query_vectors.insert(head.embedder.clone(), vector);
            }
            let vector = query_vectors
                .get(&head.embedder)
                .map_or(&[][..], Vec::as_slice);
            let passages = match self.search_vector(store, kb, &head, vector, query, k).await {
                Ok(passages) => Some(passages),
                // Deleted between the head read and the index load.
                Err(KnowledgeError::NotFound) => None,
                Err(other) => return Err(other),
            };
            results.push((kb.clone(), passages));
        }
        Ok(results)
    }

    /// The search after the query is embedded: the partition's index (loaded or refreshed
    /// if stale), then the stored text of the hits that still exist.
    pub async fn search_vector(
        &self,
        store: &TenantStore<'_>,
        kb: &KnowledgeBaseName,
        head: &KnowledgeHead,
        query_vector: &[f32],
        query: &str,
        k: usize,
    ) -> Result<Vec<Passage>, KnowledgeError> {
        let scored = {
            let Some(index) = self.cache.read(store, kb.as_str(), head).await? else {
                return Err(KnowledgeError::NotFound);
            };
            index.search(query_vector, query, k)
        };
        let ids: Vec<i64> = scored.iter().map(|s| s.chunk_id).collect();
        let mut chunks: HashMap<i64, bulkhead_store::ChunkRecord> = store
            .chunks_by_id(kb.as_str(), &ids)
            .await?
            .into_iter()
            .map(|c| (c.chunk_id, c))
            .collect();
        Ok(scored
            .into_iter()
            .filter_map(|s| {
                let chunk = chunks.remove(&s.chunk_id)?;
                Some(Passage {
                    doc_id: chunk.doc_id,
                    title: chunk.title,
                    chunk_id: chunk.chunk_id,
                    position: chunk.position,
                    heading_path: chunk.heading_path,
                    text: chunk.text,
                    score: s.score,
                    vector_score: s.vector_score,
                    keyword_score: s.keyword_score,
                })
            })
            .collect())
    }
}

/// Printable, no surrounding spaces, at most 200 characters; `/` is allowed so files keep
/// their relative paths as ids.
pub fn validate_doc_id(id: &str) -> Result<(), KnowledgeError> {
    let ok = !id.is_empty()
        && id.chars().count() <= MAX_DOC_ID_CHARS
        && id.trim() == id
        && !id.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(KnowledgeError::invalid(
            "id",
            format!(
                "must be 1 to {MAX_DOC_ID_CHARS} printable characters without surrounding spaces"
            ),
        ))
    }
}

/// What identifies a document's content: a change to any of these re-indexes it.
fn content_hash(document: &NewDocument) -> String {
    let mut hasher = Sha256::new();
    for part in [
        document.content_type.as_str(),
        document.title.as_str(),
        document.text.as_str(),
        &document.metadata.to_string(),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    bulkhead_core::ids::lower_hex(&hasher.finalize())
}
