//! Builds the model's tokenizer from the GGUF file's own metadata (`tokenizer.ggml.*`), so one
//! file is all the local model needs. Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`,
//! as SmolLM2 uses) is supported; the tokenizer is described as a `tokenizer.json` document
//! and loaded by the `tokenizers` crate.

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

use crate::InferenceError;

/// GGUF token type of control tokens (`<|im_start|>` and the like).
const CONTROL: i32 = 3;

fn strings(content: &Content, key: &str) -> Result<Vec<String>, InferenceError> {
    let values = content
        .metadata
        .get(key)
        .ok_or_else(|| InferenceError::Format(format!("no {key} in the GGUF metadata")))?
        .to_vec()
        .map_err(|e| InferenceError::Format(format!("{key}: {e}")))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| InferenceError::Format(format!("{key}: {e}")))
        })
        .collect()
}

pub(crate) fn metadata_u32(content: &Content, key: &str) -> Result<u32, InferenceError> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .ok_or_else(|| InferenceError::Format(format!("no {key} in the GGUF metadata")))
}

pub(crate) fn build(content: &Content) -> Result<Tokenizer, InferenceError> {
    let model = content
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(InferenceError::Format(format!(
            "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
        )));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let merges = strings(content, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(GgufValue::Array(values)) => values.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), json!(id));
        if types.get(id) == Some(&CONTROL) {
            added.push(
                json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    let merges: Vec<Value> = merges
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
        .collect();
    let document = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    document
        .to_string()
        .parse::<Tokenizer>()
        .map_err(|e| InferenceError::Format(format!("building the tokenizer: {e}")))
}
