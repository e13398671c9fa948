//! Knowledge bases: documents in, passages out. Every handler reaches the caller's own
//! knowledge bases only, through `store.tenant(&ctx)`; another tenant's knowledge base of the
//! same name is simply not there.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_core::{KnowledgeBaseName, Role};
use bulkhead_knowledge::{ContentType, NewDocument, Passage};
use bulkhead_store::{DocumentOutcome, DocumentRecord, KnowledgeBaseRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::agents::READERS;

const WRITERS: &[Role] = &[Role::Owner, Role::Admin, Role::Developer];

fn path_kb(name: &str) -> Result<KnowledgeBaseName, ApiError> {
    KnowledgeBaseName::try_from(name).map_err(|_| ApiError::NotFound)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KnowledgeBaseView {
    pub name: String,
    /// The embedder its vectors come from, fixed at creation.
    pub embedder: String,
    pub dimensions: i64,
    pub documents: i64,
    pub chunks: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<KnowledgeBaseRecord> for KnowledgeBaseView {
    fn from(record: KnowledgeBaseRecord) -> Self {
        Self {
            name: record.kb,
            embedder: record.embedder,
            dimensions: record.dimensions,
            documents: record.documents,
            chunks: record.chunks,
            created_at: to_rfc3339(record.created_at),
            updated_at: to_rfc3339(record.updated_at),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    /// Unset: derived from the content, so the same content posted twice is one document.
    pub id: Option<String>,
    pub title: String,
    pub text: String,
    /// `text/plain` (default), `text/markdown` or `text/html`.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Any JSON object, kept with the document.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

fn default_content_type() -> String {
    "text/plain".into()
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentWritten {
    pub id: String,
    pub knowledge_base: String,
    /// `created`, `replaced` or `unchanged` (same id and content: nothing was done).
    pub outcome: &'static str,
    /// Chunks the document was split into (0 when unchanged).
    pub chunks: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    pub id: String,
    pub title: String,
    pub content_type: String,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// SHA-256 over type, title, text and metadata.
    pub content_hash: String,
    pub bytes: i64,
    pub chunks: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<DocumentRecord> for DocumentView {
    fn from(record: DocumentRecord) -> Self {
        Self {
            id: record.doc_id,
            title: record.title,
            content_type: record.content_type,
            metadata: record.metadata,
            content_hash: record.content_hash,
            bytes: record.bytes,
            chunks: record.chunks,
            created_at: to_rfc3339(record.created_at),
            updated_at: to_rfc3339(record.updated_at),
        }
    }
}

/// The tenant's knowledge bases.
#[utoipa::path(get, path = "/v1/knowledge", tag = "knowledge",
    security(("tenant_credential" = [])),
    responses((status = 200, body = Vec<KnowledgeBaseView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_knowledge_bases(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<Vec<KnowledgeBaseView>>, ApiError> {
    require_role(&ctx, READERS)?;
    let records = state.store().tenant(&ctx).knowledge_bases().await?;
    Ok(Json(records.into_iter().map(Into::into).collect()))
}

/// Deletes a knowledge base with all its documents. Owner or admin.
#[utoipa::path(delete, path = "/v1/knowledge/{kb}", tag = "knowledge",
    security(("tenant_credential" = [])),
    params(("kb" = String, Path, description = "Knowledge base name")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_knowledge_base(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(kb): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require_role(&ctx, &[Role::Owner, Role::Admin])?;
    let kb = path_kb(&kb)?;
    let store = state.store().tenant(&ctx);
    if state.knowledge().delete_knowledge_base(&store, &kb).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

/// Adds or replaces a document (the knowledge base is created on first use). Its chunks are
/// replaced atomically: a search sees the old document or the new one, never a mixture.
/// Owner, admin or developer.
#[utoipa::path(post, path = "/v1/knowledge/{kb}/documents", tag = "knowledge",
    security(("tenant_credential" = [])),
    params(("kb" = String, Path, description = "Knowledge base name")),
    request_body = DocumentInput,
    responses((status = 201, body = DocumentWritten, description = "created"),
        (status = 200, body = DocumentWritten, description = "replaced or unchanged"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 413, body = Problem),
        (status = 422, body = Problem), (status = 502, body = Problem), (status = 503, body = Problem)))]
pub async fn post_document(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(kb): ApiPath<String>,
    ApiJson(input): ApiJson<DocumentInput>,
) -> Result<(StatusCode, Json<DocumentWritten>), ApiError> {
    require_role(&ctx, WRITERS)?;
    let kb = KnowledgeBaseName::try_from(kb.as_str())
        .map_err(|e| ApiError::invalid("kb", e.to_string()))?;
    let content_type = ContentType::parse(&input.content_type).ok_or_else(|| {
        ApiError::invalid(
            "content_type",
            "must be text/plain, text/markdown or text/html",
        )
    })?;
    let document = NewDocument {
        id: input.id,
        title: input.title,
        text: input.text,
        content_type,
        metadata: input.metadata,
    };
    let store = state.store().tenant(&ctx);
    let written = state
        .knowledge()
        .put_document(&store, &kb, document, &|_, _| {})
        .await?;
    let (status, outcome) = match written.outcome {
        DocumentOutcome::Created => (StatusCode::CREATED, "created"),
        DocumentOutcome::Replaced => (StatusCode::OK, "replaced"),
        DocumentOutcome::Unchanged => (StatusCode::OK, "unchanged"),
    };
    Ok((
        status,
        Json(DocumentWritten {
            id: written.doc_id,
            knowledge_base: kb.to_string(),
            outcome,
            chunks: written.chunks,
        }),
    ))
}

/// The documents of one knowledge base.
#[utoipa::path(get, path = "/v1/knowledge/{kb}/documents", tag = "knowledge",
    security(("tenant_credential" = [])),
    params(("kb" = String, Path, description = "Knowledge base name")),
    responses((status = 200, body = Vec<DocumentView>), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_documents(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(kb): ApiPath<String>,
) -> Result<Json<Vec<DocumentView>>, ApiError> {
    require_role(&ctx, READERS)?;
    let kb = path_kb(&kb)?;
    let store = state.store().tenant(&ctx);
    store
        .knowledge_head(kb.as_str())
        .await?
        .ok_or(ApiError::NotFound)?;
    let documents = store.documents(kb.as_str()).await?;
    Ok(Json(documents.into_iter().map(Into::into).collect()))
}

/// Deletes a document; it is gone from the next search. Owner, admin or developer.
#[utoipa::path(delete, path = "/v1/knowledge/{kb}/documents/{id}", tag = "knowledge",
    security(("tenant_credential" = [])),
    params(("kb" = String, Path, description = "Knowledge base name"),
        ("id" = String, Path, description = "Document id (percent-encode a `/`)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_document(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath((kb, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_role(&ctx, WRITERS)?;
    let kb = path_kb(&kb)?;
    let store = state.store().tenant(&ctx);
    if state.knowledge().delete_document(&store, &kb, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// What to look for.
    pub q: String,
    /// How many passages, 1 to 50 (default 5).
    pub k: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PassageView {
    pub document_id: String,
    pub title: String,
    /// The chunk's 0-based position in its document.
    pub position: i64,
    pub heading_path: Vec<String>,
    pub text: String,
    /// `0.7 × vector + 0.3 × keyword`.
    pub score: f32,
    /// Cosine similarity of the query and the chunk.
    pub vector_score: f32,
    /// BM25 of the query's words in the chunk (unnormalised).
    pub keyword_score: f32,
}

impl From<Passage> for PassageView {
    fn from(p: Passage) -> Self {
        Self {
            document_id: p.doc_id,
            title: p.title,
            position: p.position,
            heading_path: p.heading_path,
            text: p.text,
            score: p.score,
            vector_score: p.vector_score,
            keyword_score: p.keyword_score,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub knowledge_base: String,
    pub passages: Vec<PassageView>,
}

/// Hybrid search (meaning and keywords) over one of the tenant's knowledge bases.
#[utoipa::path(get, path = "/v1/knowledge/{kb}/search", tag = "knowledge",
    security(("tenant_credential" = [])),
    params(("kb" = String, Path, description = "Knowledge base name"), SearchQuery),
    responses((status = 200, body = SearchResults), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn search(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(kb): ApiPath<String>,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<SearchResults>, ApiError> {
    require_role(&ctx, READERS)?;
    let kb = path_kb(&kb)?;
    let store = state.store().tenant(&ctx);
    let passages = state
        .knowledge()
        .search(&store, &kb, &query.q, query.k.unwrap_or(5))
        .await?;
    Ok(Json(SearchResults {
        knowledge_base: kb.to_string(),
        passages: passages.into_iter().map(Into::into).collect(),
    }))
}
