//! The local model for real: SmolLM2-135M-Instruct from `scripts/fetch-models`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use bulkhead_inference::{LocalChatModel, Turn};

fn model_path() -> PathBuf {
    bulkhead_testkit::local_chat_model()
}

#[test]
fn answers_greedily_streams_whole_characters_and_counts_tokens() {
    let model = LocalChatModel::load(&model_path()).unwrap();
    let messages = [
        Turn {
            role: "system",
            content: "You are a helpful assistant. Answer in one short sentence.",
        },
        Turn {
            role: "user",
            content: "What is the capital of France?",
        },
    ];
    let mut pieces = Vec::new();
    let first = model
        .generate(&messages, 24, &mut |piece| {
            pieces.push(piece.to_owned());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert!(first.text.contains("Paris"), "{first:?}");
    assert_eq!(
        pieces.concat(),
        first.text,
        "the stream adds up to the answer"
    );
    assert!(pieces.len() > 1, "{pieces:?}");
    assert!(
        first.prompt_tokens > 10 && first.completion_tokens > 0,
        "{first:?}"
    );
    assert!(first.completion_tokens <= 24);
    // Greedy decoding: the same conversation gives the same answer.
    let second = model
        .generate(&messages, 24, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(first, second);
    // A cap of one token stops there.
    let short = model
        .generate(&messages, 1, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(
        (short.completion_tokens, short.finish_reason),
        (1, "length")
    );
    // The caller may stop it between pieces (a run out of CPU budget does).
    let mut seen = 0;
    let stopped = model
        .generate(&messages, 24, &mut |_| {
            seen += 1;
            std::ops::ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(stopped.finish_reason, "interrupted");
    assert_eq!(seen, 1);
    assert!(
        stopped.completion_tokens < first.completion_tokens,
        "{stopped:?}"
    );
}

#[test]
fn a_file_that_is_not_a_model_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("bulkhead-not-a-model-{}", std::process::id()));
    std::fs::write(&dir, b"not a gguf file").unwrap();
    let error = LocalChatModel::load(&dir).err().unwrap();
    assert!(error.to_string().contains("not usable"), "{error}");
    std::fs::remove_file(&dir).unwrap();
    let missing = LocalChatModel::load(std::path::Path::new("/nonexistent/model.gguf"))
        .err()
        .unwrap();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
}
