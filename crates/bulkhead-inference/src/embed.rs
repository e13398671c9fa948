//! The local embedder: all-MiniLM-L6-v2 (a BERT encoder) with mean pooling over the real
//! tokens and L2 normalisation, as sentence-transformers computes it, so its vectors are
//! comparable with a dot product.

use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::InferenceError;

/// The longest input the model was trained on; longer text is cut (chunking keeps text
/// shorter than this, so it rarely happens).
pub const MAX_EMBED_TOKENS: usize = 256;

pub struct LocalEmbedder {
    model: BertModel,
    /// Padding is set per batch; the tokenizer's own settings are shared state, so batches
    /// take turns.
    tokenizer: Mutex<Tokenizer>,
    dimensions: usize,
}

impl LocalEmbedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir` (as
    /// `scripts/fetch-models` lays them out).
    pub fn load(dir: &Path) -> Result<Self, InferenceError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| InferenceError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| InferenceError::Format(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| InferenceError::Format(format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_EMBED_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| InferenceError::Format(format!("tokenizer truncation: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)?;
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            tokenizer: Mutex::new(tokenizer),
            dimensions: config.hidden_size,
        })
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// How many tokens the model sees for `text` (without the special tokens), for chunking.
    pub fn count_tokens(&self, text: &str) -> usize {
        let tokenizer = match self.tokenizer.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        tokenizer
            .encode_fast(text, false)
            .map(|encoding| encoding.len())
            .unwrap_or(text.len() / 4)
    }

    /// One unit vector per text, in order. Runs on the calling thread: call it from a
    /// blocking task.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = {
            let tokenizer = match self.tokenizer.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            tokenizer
                .encode_batch_fast(texts.to_vec(), true)
                .map_err(|e| InferenceError::Compute(format!("tokenize: {e}")))?
        };
        let width = encodings.first().map_or(0, |e| e.len());
        let rows = encodings.len();
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for encoding in &encodings {
            ids.extend(encoding.get_ids().iter().copied());
            mask.extend(encoding.get_attention_mask().iter().copied());
        }
        let device = &self.model.device;
        let ids = Tensor::from_vec(ids, (rows, width), device)?;
        let mask = Tensor::from_vec(mask, (rows, width), device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens only: padding must not pull short texts towards each other.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
