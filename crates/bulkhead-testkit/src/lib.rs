//! Stand-ins for outside services, speaking their real wire formats, so tests and benchmarks
//! need no internet. Never a dependency of the product: the architecture test checks that
//! only test and bench targets use it.

pub mod fake_llm;
pub mod fake_mcp;
pub mod fake_saas;
pub mod nats;

use std::path::PathBuf;

/// The offline models' directory: `$BULKHEAD_MODELS_DIR`, else `models/` in the workspace,
/// where `scripts/fetch-models` puts them.
pub fn models_dir() -> PathBuf {
    std::env::var_os("BULKHEAD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")))
}

/// The local chat model's GGUF file. Tests fail, not skip, without it: CI fetches it.
pub fn local_chat_model() -> PathBuf {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models",
        path.display()
    );
    path
}

/// The local embedder's directory (all-MiniLM-L6-v2). Tests fail, not skip, without it.
pub fn local_embedder() -> PathBuf {
    let path = models_dir().join("all-minilm-l6-v2");
    assert!(
        path.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-models",
        path.display()
    );
    path
}
