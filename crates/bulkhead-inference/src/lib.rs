//! Models run in-process on the CPU with candle, so the demo and tests need no internet and a
//! tenant's text never leaves the node for them.
//!
//! [`LocalEmbedder`] is all-MiniLM-L6-v2 (384 dimensions), the built-in embedder of knowledge
//! bases: documents stay on the node.
//!
//! [`LocalChatModel`] is a small instruct model (SmolLM2-135M-Instruct, Q4_1 GGUF): useful to
//! show the whole path offline, not a substitute for a real provider in production.

mod chat;
mod embed;
mod gguf_tokenizer;

pub use chat::{Generation, LocalChatModel, Turn};
pub use embed::{LocalEmbedder, MAX_EMBED_TOKENS};

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the model file is not usable: {0}")]
    Format(String),
    #[error("inference failed: {0}")]
    Compute(String),
}

impl From<candle_core::Error> for InferenceError {
    fn from(error: candle_core::Error) -> Self {
        InferenceError::Compute(error.to_string())
    }
}
