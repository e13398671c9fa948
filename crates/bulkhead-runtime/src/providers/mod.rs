//! Model providers. Every provider call goes through egress, so it carries the calling
//! tenant's own key, stays in the tenant's regions and is audited.

pub mod anthropic;
pub mod local;
pub mod openai;
pub mod sse;

use serde::{Deserialize, Serialize};

/// One message of a conversation, in the shape every provider is translated to and from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For `tool` messages: the call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as the model produced it (it may be invalid; the caller validates).
    pub arguments: String,
}

/// A tool the model may call: name, description and JSON Schema of its arguments. Never a
/// credential.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct ChatResponse {
    pub message: ChatMessage,
    pub finish_reason: String,
    pub usage: Usage,
}

/// A piece of an answer as it streams in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Text(String),
    /// The tool call at `index` begins (with its id and name) or its arguments grow.
    ToolCall {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
}

/// Where a streaming call hands its deltas, as they arrive.
pub type DeltaSink<'a> = &'a mut (dyn FnMut(Delta) + Send);

/// Builds the final response of a streamed answer from its deltas, so streaming and
/// non-streaming calls end in the same [`ChatResponse`].
#[derive(Debug, Default)]
pub struct Accumulator {
    text: String,
    calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: Option<String>,
}

impl Accumulator {
    /// Records `delta` and passes it on to `sink`.
    pub fn apply(&mut self, delta: Delta, sink: DeltaSink<'_>) {
        match &delta {
            Delta::Text(text) => self.text.push_str(text),
            Delta::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                while self.calls.len() <= *index {
                    self.calls.push(ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let call = &mut self.calls[*index];
                if let Some(id) = id {
                    call.id.clone_from(id);
                }
                if let Some(name) = name {
                    call.name.push_str(name);
                }
                call.arguments.push_str(arguments);
            }
        }
        sink(delta);
    }

    pub fn finish(self) -> Result<ChatResponse, ProviderError> {
        if let Some(call) = self
            .calls
            .iter()
            .find(|c| c.id.is_empty() || c.name.is_empty())
        {
            return Err(ProviderError::Malformed(format!(
                "a streamed tool call has no id or name (arguments {:?})",
                call.arguments
            )));
        }
        let finish_reason = self.finish_reason.unwrap_or_else(|| {
            if self.calls.is_empty() {
                "stop".into()
            } else {
                "tool_calls".into()
            }
        });
        Ok(ChatResponse {
            message: ChatMessage {
                role: "assistant".into(),
                content: (!self.text.is_empty() || self.calls.is_empty()).then_some(self.text),
                tool_calls: self.calls,
                tool_call_id: None,
            },
            finish_reason,
            usage: self.usage,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Egress(#[from] bulkhead_egress::EgressError),
    #[error("the provider refused the tenant's credential ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("the provider is rate limiting this tenant: {message}")]
    RateLimited { message: String },
    #[error("the provider rejected the request ({status}): {message}")]
    BadRequest { status: u16, message: String },
    #[error("the provider failed ({status}): {message}")]
    Upstream { status: u16, message: String },
    #[error("the provider's answer is not valid: {0}")]
    Malformed(String),
    #[error("the local model failed: {0}")]
    Local(String),
    /// The run's CPU budget ran out while the local model was generating.
    #[error("the run spent {used_ms} ms of CPU, over its budget of {budget_ms} ms")]
    CpuBudget { used_ms: u128, budget_ms: u128 },
}

impl ProviderError {
    /// The refusal of a run whose `meter` is over its budget.
    pub fn cpu_budget(meter: &crate::cpu::CpuMeter) -> Self {
        ProviderError::CpuBudget {
            used_ms: meter.used().as_millis(),
            budget_ms: meter.budget().unwrap_or_default().as_millis(),
        }
    }

    /// The stable problem code the HTTP layer answers with.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Egress(e) => e.code(),
            ProviderError::Unauthorized { .. } => "provider_unauthorized",
            ProviderError::RateLimited { .. } => "provider_rate_limited",
            ProviderError::BadRequest { .. } => "provider_bad_request",
            ProviderError::Upstream { .. } => "upstream_error",
            ProviderError::Malformed(_) => "upstream_malformed",
            ProviderError::Local(_) => "local_model_failed",
            ProviderError::CpuBudget { .. } => crate::runs::CPU_BUDGET_EXCEEDED,
        }
    }
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
pub(crate) struct WireErrorBody {
    pub(crate) message: String,
}

/// Maps a non-2xx provider answer to a typed error. OpenAI and Anthropic both send
/// `{"error": {"message": ...}}`; anything else is quoted, shortened.
pub(crate) fn error_from_status(status: u16, body: &[u8]) -> ProviderError {
    let message = serde_json::from_slice::<WireError>(body)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    match status {
        401 | 403 => ProviderError::Unauthorized { status, message },
        429 => ProviderError::RateLimited { message },
        400..=499 => ProviderError::BadRequest { status, message },
        // Includes Anthropic's 529 "overloaded".
        _ => ProviderError::Upstream { status, message },
    }
}
