//! The `local` provider: a model run in-process on the CPU (see `bulkhead-inference`). No
//! outbound call, so no credential and no residency question: the text stays on the node.
//! It answers text only; tool specs are not shown to it.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use bulkhead_core::config::{ModelConfig, ProviderKind};
use bulkhead_inference::{LocalChatModel, Turn};

use super::{ChatMessage, ChatRequest, ChatResponse, Delta, DeltaSink, ProviderError, Usage};

/// Loaded local models by alias. Aliases naming the same file share one copy.
pub type LocalModels = HashMap<String, Arc<LocalChatModel>>;

/// Loads every `local` model of `models`. Blocking (reads ~100 MB per file).
pub fn load(models: &[ModelConfig]) -> Result<LocalModels, String> {
    let mut by_path: HashMap<std::path::PathBuf, Arc<LocalChatModel>> = HashMap::new();
    let mut loaded = LocalModels::new();
    for model in models.iter().filter(|m| m.provider == ProviderKind::Local) {
        model.validate()?;
        let Some(path) = &model.path else { continue };
        let weights = match by_path.get(path) {
            Some(weights) => weights.clone(),
            None => {
                let weights = Arc::new(LocalChatModel::load(path).map_err(|e| {
                    format!(
                        "model {}: {e} (scripts/fetch-models fetches the offline models)",
                        model.alias
                    )
                })?);
                by_path.insert(path.clone(), weights.clone());
                weights
            }
        };
        loaded.insert(model.alias.clone(), weights);
    }
    Ok(loaded)
}

/// How a transcript message reads to a model that knows only system, user and assistant.
fn as_text(message: &ChatMessage) -> (String, String) {
    let content = message.content.clone().unwrap_or_default();
    match message.role.as_str() {
        "tool" => ("user".into(), format!("Tool result: {content}")),
        "assistant" if !message.tool_calls.is_empty() => {
            let calls: Vec<String> = message
                .tool_calls
                .iter()
                .map(|c| format!("{}({})", c.name, c.arguments))
                .collect();
            (
                "assistant".into(),
                format!("{content}[called {}]", calls.join(", ")),
            )
        }
        role => (role.to_owned(), content),
    }
}

/// Generates on a blocking thread; text pieces reach `sink` as they are decoded.
pub async fn chat(
    model: &Arc<LocalChatModel>,
    request: &ChatRequest,
    sink: Option<DeltaSink<'_>>,
) -> Result<ChatResponse, ProviderError> {
    let messages: Vec<(String, String)> = request.messages.iter().map(as_text).collect();
    let max_tokens = request.max_tokens.unwrap_or(256);
    let model = model.clone();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
    // Generation is a run's heaviest CPU work and runs on other threads: it is metered by
    // the process's clock (see `crate::cpu`) against the run's budget, and stopped between
    // tokens once that is spent.
    let meter = crate::cpu::current();
    let generation = tokio::task::spawn_blocking(move || {
        let turns: Vec<Turn<'_>> = messages
            .iter()
            .map(|(role, content)| Turn { role, content })
            .collect();
        let started = crate::cpu::process_time();
        let spent = || crate::cpu::process_time().saturating_sub(started);
        let generation = model.generate(&turns, max_tokens, &mut |piece| {
            let _ = sender.send(piece.to_owned());
            match &meter {
                Some(meter) if meter.exceeded_with(spent()) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        });
        if let Some(meter) = &meter {
            meter.record(spent());
        }
        generation.map(|g| (g, meter))
    });
    let mut sink = sink;
    while let Some(piece) = receiver.recv().await {
        if let Some(sink) = sink.as_mut() {
            sink(Delta::Text(piece));
        }
    }
    let (generation, meter) = generation
        .await
        .map_err(|e| ProviderError::Local(e.to_string()))?
        .map_err(|e| ProviderError::Local(e.to_string()))?;
    if let Some(meter) = meter.filter(|m| m.exceeded()) {
        return Err(ProviderError::cpu_budget(&meter));
    }
    Ok(ChatResponse {
        message: ChatMessage::text("assistant", generation.text),
        finish_reason: generation.finish_reason.to_owned(),
        usage: Usage {
            input_tokens: generation.prompt_tokens,
            output_tokens: generation.completion_tokens,
        },
    })
}
