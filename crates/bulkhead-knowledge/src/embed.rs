//! Embedders by alias: the in-process one, or an OpenAI-compatible `/embeddings` endpoint
//! called through egress with the calling tenant's key and region rules.

use std::collections::HashMap;
use std::sync::Arc;

use bulkhead_core::config::{EmbedderConfig, EmbedderProvider};
use bulkhead_egress::{OutboundRequest, TenantEgress};
use bulkhead_inference::LocalEmbedder;
use serde::Deserialize;
use serde_json::json;

use crate::KnowledgeError;
use crate::chunk::estimate_tokens;

/// Texts per model call: large enough to amortise a call, small enough that one batch of
/// long chunks stays a few MB of activations.
const LOCAL_BATCH: usize = 16;
const REMOTE_BATCH: usize = 64;

#[derive(Clone)]
pub enum Embedder {
    Local(Arc<LocalEmbedder>),
    Remote {
        endpoint: String,
        model: String,
        dimensions: usize,
    },
}

impl Embedder {
    pub fn dimensions(&self) -> usize {
        match self {
            Embedder::Local(model) => model.dimensions(),
            Embedder::Remote { dimensions, .. } => *dimensions,
        }
    }

    /// Tokens of `text` as this embedder counts them (its own tokenizer when it has one).
    pub fn count_tokens(&self, text: &str) -> usize {
        match self {
            Embedder::Local(model) => model.count_tokens(text),
            Embedder::Remote { .. } => estimate_tokens(text),
        }
    }

    /// One unit vector per text, in batches; `progress` hears how many are done.
    pub async fn embed(
        &self,
        egress: &TenantEgress<'_>,
        texts: &[String],
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<Vec<f32>>, KnowledgeError> {
        let mut vectors = Vec::with_capacity(texts.len());
        match self {
            Embedder::Local(model) => {
                for batch in texts.chunks(LOCAL_BATCH) {
                    let model = model.clone();
                    let batch = batch.to_vec();
                    let embedded = tokio::task::spawn_blocking(move || {
                        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                        model.embed(&refs)
                    })
                    .await
                    .map_err(|e| KnowledgeError::Embedder(e.to_string()))?
                    .map_err(|e| KnowledgeError::Embedder(e.to_string()))?;
                    vectors.extend(embedded);
                    progress(vectors.len());
                }
            }
            Embedder::Remote {
                endpoint,
                model,
                dimensions,
            } => {
                for batch in texts.chunks(REMOTE_BATCH) {
                    let embedded = remote(egress, endpoint, model, *dimensions, batch).await?;
                    vectors.extend(embedded);
                    progress(vectors.len());
                }
            }
        }
        Ok(vectors)
    }
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

/// One `POST /embeddings` (OpenAI's shape: `{"model","input":[...],"dimensions"}` answered by
/// `{"data":[{"index","embedding"}]}`).
async fn remote(
    egress: &TenantEgress<'_>,
    endpoint: &str,
    model: &str,
    dimensions: usize,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, KnowledgeError> {
    let body = json!({
        "model": model,
        "input": texts,
        "dimensions": dimensions,
        "encoding_format": "float",
    });
    let response = egress
        .send(
            endpoint,
            OutboundRequest::post_json("/embeddings", &body).retry_safe(),
        )
        .await?;
    if !(200..300).contains(&response.status) {
        let message = serde_json::from_slice::<ErrorResponse>(&response.body)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(200)
                    .collect()
            });
        return Err(KnowledgeError::Upstream {
            status: response.status,
            message,
        });
    }
    let parsed: EmbeddingsResponse = serde_json::from_slice(&response.body)
        .map_err(|e| KnowledgeError::Embedder(format!("embeddings answer: {e}")))?;
    let mut vectors = vec![Vec::new(); texts.len()];
    for item in parsed.data {
        let slot = vectors.get_mut(item.index).ok_or_else(|| {
            KnowledgeError::Embedder(format!("embeddings answer has index {}", item.index))
        })?;
        *slot = normalised(item.embedding);
    }
    if let Some(bad) = vectors.iter().find(|v| v.len() != dimensions) {
        return Err(KnowledgeError::Embedder(format!(
            "expected {dimensions} dimensions, the endpoint answered {}",
            bad.len()
        )));
    }
    Ok(vectors)
}

/// Unit length, so a dot product is the cosine similarity whatever the provider returns.
fn normalised(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// Every configured embedder, loaded. Local models sharing a directory share one copy.
#[derive(Clone, Default)]
pub struct Embedders {
    by_alias: HashMap<String, Embedder>,
}

impl Embedders {
    /// Loads the local models (blocking: ~90 MB each) and checks every entry.
    pub fn load(configs: &[EmbedderConfig]) -> Result<Self, String> {
        let mut by_path: HashMap<std::path::PathBuf, Arc<LocalEmbedder>> = HashMap::new();
        let mut by_alias = HashMap::new();
        for config in configs {
            config.validate()?;
            let embedder = match (config.provider, &config.path, config.dimensions) {
                (EmbedderProvider::Local, Some(path), _) => {
                    let model = match by_path.get(path) {
                        Some(model) => model.clone(),
                        None => {
                            let model = Arc::new(LocalEmbedder::load(path).map_err(|e| {
                                format!(
                                    "embedder {}: {e} (scripts/fetch-models fetches the offline models)",
                                    config.alias
                                )
                            })?);
                            by_path.insert(path.clone(), model.clone());
                            model
                        }
                    };
                    Embedder::Local(model)
                }
                (EmbedderProvider::Openai, _, Some(dimensions)) => Embedder::Remote {
                    endpoint: config.endpoint.clone(),
                    model: config
                        .upstream_model
                        .clone()
                        .unwrap_or_else(|| config.alias.clone()),
                    dimensions,
                },
                _ => return Err(format!("embedder {}: incomplete", config.alias)),
            };
            if by_alias.insert(config.alias.clone(), embedder).is_some() {
                return Err(format!("embedder {} is configured twice", config.alias));
            }
        }
        Ok(Self { by_alias })
    }

    pub fn get(&self, alias: &str) -> Option<&Embedder> {
        self.by_alias.get(alias)
    }

    pub fn is_empty(&self) -> bool {
        self.by_alias.is_empty()
    }
}
