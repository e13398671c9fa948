//! The local chat model: a llama-architecture GGUF file (SmolLM2-135M-Instruct) run with
//! candle's `quantized_llama`, prompted in ChatML, decoded greedily.
//!
//! One generation at a time per loaded model (its key-value cache is mutable state); callers
//! queue on a mutex. Nothing survives a generation: the cache is reset by the next prompt,
//! so no tenant's text is left for another.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Mutex;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokenizers::Tokenizer;

use crate::InferenceError;
use crate::gguf_tokenizer;

/// Penalises tokens seen in the last `REPEAT_WINDOW` generated ones, so greedy decoding of a
/// small model does not loop on one phrase. Still deterministic.
const REPEAT_PENALTY: f32 = 1.1;
const REPEAT_WINDOW: usize = 64;

/// One message of the conversation to continue.
#[derive(Debug, Clone)]
pub struct Turn<'a> {
    /// `system`, `user`, `assistant`; anything else is presented as a user message.
    pub role: &'a str,
    pub content: &'a str,
}

/// What one generation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `stop` at the end-of-turn token, `length` at `max_tokens`.
    pub finish_reason: &'static str,
}

pub struct LocalChatModel {
    state: Mutex<ModelWeights>,
    tokenizer: Tokenizer,
    end_of_turn: u32,
    context_length: usize,
}

impl LocalChatModel {
    /// Loads the GGUF file at `path`: weights and tokenizer (from its metadata).
    pub fn load(path: &Path) -> Result<Self, InferenceError> {
        let io = |source| InferenceError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| InferenceError::Format(e.to_string()))?;
        let tokenizer = gguf_tokenizer::build(&content)?;
        let end_of_turn = tokenizer.token_to_id("<|im_end|>").map_or_else(
            || gguf_tokenizer::metadata_u32(&content, "tokenizer.ggml.eos_token_id"),
            Ok,
        )?;
        let context_length = gguf_tokenizer::metadata_u32(&content, "llama.context_length")
            .map_or(2048, |n| usize::try_from(n).unwrap_or(2048));
        let weights = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
        Ok(Self {
            state: Mutex::new(weights),
            tokenizer,
            end_of_turn,
            context_length,
        })
    }

    /// The ChatML prompt SmolLM2 was tuned on, ending where the assistant speaks.
    fn prompt(messages: &[Turn<'_>]) -> String {
        let mut prompt = String::new();
        for message in messages {
            let role = match message.role {
                "system" | "user" | "assistant" => message.role,
                _ => "user",
            };
            prompt.push_str("<|im_start|>");
            prompt.push_str(role);
            prompt.push('\n');
            prompt.push_str(message.content);
            prompt.push_str("<|im_end|>\n");
        }
        prompt.push_str("<|im_start|>assistant\n");
        prompt
    }

    /// Continues the conversation, greedily, for at most `max_tokens`. Text goes to `on_text`
    /// as it is decoded (whole characters only); `on_text` answering `Break` stops the
    /// generation there (finish reason `interrupted`). Blocking and CPU-bound: run it on a
    /// blocking thread.
    pub fn generate(
        &self,
        messages: &[Turn<'_>],
        max_tokens: u32,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, InferenceError> {
        let encoding = self
            .tokenizer
            .encode(Self::prompt(messages), false)
            .map_err(|e| InferenceError::Compute(format!("tokenizing: {e}")))?;
        let mut prompt: Vec<u32> = encoding.get_ids().to_vec();
        let max_tokens = usize::try_from(max_tokens).unwrap_or(usize::MAX).max(1);
        // Keep the end of an over-long conversation: the newest turns matter most.
        let room = self.context_length.saturating_sub(max_tokens).max(16);
        if prompt.len() > room {
            prompt.drain(..prompt.len() - room);
        }
        let mut weights = self
            .state
            .lock()
            .map_err(|_| InferenceError::Compute("an earlier generation panicked".into()))?;
        let device = Device::Cpu;
        let mut generated: Vec<u32> = Vec::new();
        let mut emitted = 0usize;
        let mut input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
        let mut finish_reason = "length";
        while generated.len() < max_tokens {
            let position = if generated.is_empty() {
                0
            } else {
                prompt.len() + generated.len() - 1
            };
            let logits = weights.forward(&input, position)?.squeeze(0)?;
            let window = &generated[generated.len().saturating_sub(REPEAT_WINDOW)..];
            let logits =
                candle_transformers::utils::apply_repeat_penalty(&logits, REPEAT_PENALTY, window)?;
            let next = logits.argmax(0)?.to_scalar::<u32>()?;
            if next == self.end_of_turn {
                finish_reason = "stop";
                break;
            }
            generated.push(next);
            let text = self
                .tokenizer
                .decode(&generated, true)
                .map_err(|e| InferenceError::Compute(format!("decoding: {e}")))?;
            // A character split across tokens decodes as U+FFFD until its last byte arrives.
            if text.len() > emitted && !text.ends_with('\u{FFFD}') {
                let flow = text.get(emitted..).map(&mut *on_text);
                emitted = text.len();
                if flow == Some(ControlFlow::Break(())) {
                    finish_reason = "interrupted";
                    break;
                }
            }
            input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        }
        let text = self
            .tokenizer
            .decode(&generated, true)
            .map_err(|e| InferenceError::Compute(format!("decoding: {e}")))?;
        if let Some(rest) = text.get(emitted..).filter(|r| !r.is_empty()) {
            // The generation is over either way.
            let _ = on_text(rest);
        }
        Ok(Generation {
            text,
            prompt_tokens: u64::try_from(prompt.len()).unwrap_or(u64::MAX),
            completion_tokens: u64::try_from(generated.len()).unwrap_or(u64::MAX),
            finish_reason,
        })
    }
}
