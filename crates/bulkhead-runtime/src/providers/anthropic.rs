//! Anthropic Messages: `POST /v1/messages` with `x-api-key` (injected by egress; configure the
//! endpoint with `auth = { scheme = "header", name = "x-api-key" }`), whole or streamed.

use bulkhead_egress::{OutboundRequest, TenantEgress};
use serde::Deserialize;
use serde_json::{Value, json};

use std::collections::HashMap;

use super::sse::{expect_stream, read_events};
use super::{
    Accumulator, ChatMessage, ChatRequest, ChatResponse, Delta, DeltaSink, ProviderError, ToolCall,
    Usage, WireErrorBody, error_from_status,
};

pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; used when the agent sets none.
const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The request body, in Anthropic's shape: system text apart, tool results as `user` blocks.
pub fn request_body(request: &ChatRequest) -> Result<Value, ProviderError> {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .filter_map(|m| m.content.as_deref())
        .collect();
    let mut messages = Vec::new();
    for message in request.messages.iter().filter(|m| m.role != "system") {
        let value = match message.role.as_str() {
            "tool" => json!({"role": "user", "content": [{
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content.clone().unwrap_or_default(),
            }]}),
            "assistant" => {
                let mut blocks = Vec::new();
                if let Some(text) = message.content.as_deref().filter(|t| !t.is_empty()) {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in &message.tool_calls {
                    let input: Value = serde_json::from_str(&call.arguments).map_err(|e| {
                        ProviderError::Malformed(format!("tool call {} arguments: {e}", call.id))
                    })?;
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
                }
                json!({"role": "assistant", "content": blocks})
            }
            _ => json!({"role": "user", "content": message.content.clone().unwrap_or_default()}),
        };
        messages.push(value);
    }
    let mut body = json!({
        "model": request.model,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    Ok(body)
}

#[derive(Deserialize)]
struct WireResponse {
    content: Vec<WireBlock>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireUsage {
    input_tokens: u64,
    output_tokens: u64,
}

pub fn parse_response(status: u16, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(error_from_status(status, body));
    }
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| ProviderError::Malformed(e.to_string()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in wire.content {
        match block {
            WireBlock::Text { text: t } => text.push_str(&t),
            WireBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: input.to_string(),
            }),
            WireBlock::Other => {}
        }
    }
    let finish_reason = finish_reason(wire.stop_reason.as_deref());
    Ok(ChatResponse {
        message: ChatMessage {
            role: "assistant".into(),
            content: (!text.is_empty()).then_some(text),
            tool_calls,
            tool_call_id: None,
        },
        finish_reason: finish_reason.into(),
        usage: wire.usage.map_or(Usage::default(), |u| Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
        }),
    })
}

pub async fn chat(
    egress: &TenantEgress<'_>,
    endpoint: &str,
    request: &ChatRequest,
) -> Result<ChatResponse, ProviderError> {
    let mut outbound =
        OutboundRequest::post_json("/v1/messages", &request_body(request)?).retry_safe();
    outbound
        .headers
        .push(("anthropic-version".into(), API_VERSION.into()));
    let response = egress.send(endpoint, outbound).await?;
    parse_response(response.status, &response.body)
}

/// Like [`chat`], streamed: text and tool-input deltas go to `sink` as they arrive.
pub async fn chat_stream(
    egress: &TenantEgress<'_>,
    endpoint: &str,
    request: &ChatRequest,
    sink: DeltaSink<'_>,
) -> Result<ChatResponse, ProviderError> {
    let mut body = request_body(request)?;
    body["stream"] = json!(true);
    let mut outbound = OutboundRequest::post_json("/v1/messages", &body).retry_safe();
    outbound
        .headers
        .push(("anthropic-version".into(), API_VERSION.into()));
    let response = egress.send_streaming(endpoint, outbound).await?;
    let mut response = expect_stream(response).await?;
    let mut stream = StreamState::default();
    read_events(&mut response, |event| stream.apply(&event.data, &mut *sink)).await?;
    stream.accumulator.finish()
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireStartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: WireBlockDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: WireMessageDelta,
        usage: Option<WireDeltaUsage>,
    },
    MessageStop,
    Error {
        error: WireErrorBody,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireStartMessage {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireMessageDelta {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDeltaUsage {
    output_tokens: u64,
}

/// Anthropic numbers content blocks (text and tool use alike); tool calls are numbered among
/// themselves, so block indexes are mapped to tool-call indexes.
#[derive(Default)]
pub struct StreamState {
    pub accumulator: Accumulator,
    tool_index: HashMap<usize, usize>,
    /// Tool blocks that have received input so far; one without any gets `{}`.
    tool_has_input: HashMap<usize, bool>,
}

impl StreamState {
    /// Applies one event's data; answers `true` at `message_stop`.
    pub fn apply(&mut self, data: &str, sink: DeltaSink<'_>) -> Result<bool, ProviderError> {
        let event: WireEvent = serde_json::from_str(data)
            .map_err(|e| ProviderError::Malformed(format!("stream event: {e}")))?;
        match event {
            WireEvent::MessageStart { message } => {
                if let Some(usage) = message.usage {
                    self.accumulator.usage.input_tokens = usage.input_tokens;
                    self.accumulator.usage.output_tokens = usage.output_tokens;
                }
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                WireBlock::Text { text } if !text.is_empty() => {
                    self.accumulator.apply(Delta::Text(text), sink);
                }
                WireBlock::ToolUse { id, name, .. } => {
                    let tool = self.tool_index.len();
                    self.tool_index.insert(index, tool);
                    self.tool_has_input.insert(index, false);
                    self.accumulator.apply(
                        Delta::ToolCall {
                            index: tool,
                            id: Some(id),
                            name: Some(name),
                            arguments: String::new(),
                        },
                        sink,
                    );
                }
                _ => {}
            },
            WireEvent::ContentBlockDelta { index, delta } => match delta {
                WireBlockDelta::TextDelta { text } => {
                    self.accumulator.apply(Delta::Text(text), sink);
                }
                WireBlockDelta::InputJsonDelta { partial_json } => {
                    let tool = *self.tool_index.get(&index).ok_or_else(|| {
                        ProviderError::Malformed(format!("input for block {index}, not a tool"))
                    })?;
                    if !partial_json.is_empty() {
                        self.tool_has_input.insert(index, true);
                    }
                    self.accumulator.apply(
                        Delta::ToolCall {
                            index: tool,
                            id: None,
                            name: None,
                            arguments: partial_json,
                        },
                        sink,
                    );
                }
                WireBlockDelta::Other => {}
            },
            WireEvent::ContentBlockStop { index } => {
                if self.tool_has_input.get(&index) == Some(&false) {
                    let tool = self.tool_index.get(&index).copied().unwrap_or_default();
                    self.accumulator.apply(
                        Delta::ToolCall {
                            index: tool,
                            id: None,
                            name: None,
                            arguments: "{}".into(),
                        },
                        sink,
                    );
                }
            }
            WireEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.accumulator.finish_reason = Some(finish_reason(Some(&reason)).into());
                }
                if let Some(usage) = usage {
                    self.accumulator.usage.output_tokens = usage.output_tokens;
                }
            }
            WireEvent::MessageStop => return Ok(true),
            WireEvent::Error { error } => {
                return Err(ProviderError::Upstream {
                    status: 200,
                    message: error.message,
                });
            }
            WireEvent::Other => {}
        }
        Ok(false)
    }
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("tool_use") => "tool_calls",
        Some("max_tokens") => "length",
        _ => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ToolSpec;

    #[test]
    fn assembles_streamed_events() {
        // The event sequence of Anthropic's streaming documentation, tool input split in two.
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Oslo\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"now","input":{}}}"#,
            r#"{"type":"content_block_stop","index":2}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut state = StreamState::default();
        let mut deltas = 0;
        let mut done = false;
        for event in events {
            done = state.apply(event, &mut |_| deltas += 1).unwrap();
        }
        assert!(done);
        let response = state.accumulator.finish().unwrap();
        assert_eq!(response.message.content.as_deref(), Some("Checking"));
        assert_eq!(response.message.tool_calls[0].id, "toolu_1");
        assert_eq!(
            response.message.tool_calls[0].arguments,
            r#"{"city": "Oslo"}"#
        );
        assert_eq!(response.message.tool_calls[1].arguments, "{}");
        assert_eq!(response.finish_reason, "tool_calls");
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 25,
                output_tokens: 15
            }
        );
        assert!(deltas >= 5);
        let error = StreamState::default().apply(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &mut |_| {},
        );
        assert_eq!(error.unwrap_err().code(), "upstream_error");
    }

    #[test]
    fn translates_requests_and_responses() {
        let request = ChatRequest {
            model: "claude-3-5-haiku".into(),
            messages: vec![
                ChatMessage::text("system", "Be brief."),
                ChatMessage::text("user", "status?"),
                ChatMessage {
                    role: "assistant".into(),
                    content: Some("Checking.".into()),
                    tool_calls: vec![ToolCall {
                        id: "toolu_1".into(),
                        name: "lookup".into(),
                        arguments: "{\"q\":1}".into(),
                    }],
                    tool_call_id: None,
                },
                ChatMessage {
                    role: "tool".into(),
                    content: Some("green".into()),
                    tool_calls: Vec::new(),
                    tool_call_id: Some("toolu_1".into()),
                },
            ],
            tools: vec![ToolSpec {
                name: "lookup".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
            max_tokens: None,
        };
        let body = request_body(&request).unwrap();
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["max_tokens"], 1024);
        assert_eq!(body["messages"][1]["content"][1]["input"], json!({"q": 1}));
        assert_eq!(body["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(body["tools"][0]["input_schema"]["type"], "object");

        let answer = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku",
            "content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_2","name":"lookup","input":{"q":"x"}}],
            "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":30,"output_tokens":9}}"#;
        let response = parse_response(200, answer).unwrap();
        assert_eq!(response.finish_reason, "tool_calls");
        assert_eq!(response.message.content.as_deref(), Some("Let me look."));
        assert_eq!(response.message.tool_calls[0].arguments, r#"{"q":"x"}"#);
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 30,
                output_tokens: 9
            }
        );

        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            parse_response(529, overloaded),
            Err(ProviderError::Upstream { status: 529, .. })
        ));
        let auth = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(
            parse_response(401, auth).unwrap_err().code(),
            "provider_unauthorized"
        );
        assert!(
            request_body(&ChatRequest {
                messages: vec![ChatMessage {
                    role: "assistant".into(),
                    content: None,
                    tool_calls: vec![ToolCall {
                        id: "t".into(),
                        name: "n".into(),
                        arguments: "{not json".into()
                    }],
                    tool_call_id: None
                }],
                ..request
            })
            .is_err()
        );
    }
}
