//! Anthropic Messages (non-streaming): `POST /v1/messages` with `x-api-key` (injected by
//! egress; configure the endpoint with `auth = { scheme = "header", name = "x-api-key" }`).

use bulkhead_egress::{OutboundRequest, TenantEgress};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ChatMessage, ChatRequest, ChatResponse, ProviderError, ToolCall, Usage, error_from_status,
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
    let finish_reason = match wire.stop_reason.as_deref() {
        Some("tool_use") => "tool_calls",
        Some("max_tokens") => "length",
        _ => "stop",
    };
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
    let mut outbound = OutboundRequest::post_json("/v1/messages", &request_body(request)?);
    outbound
        .headers
        .push(("anthropic-version".into(), API_VERSION.into()));
    let response = egress.send(endpoint, outbound).await?;
    parse_response(response.status, &response.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ToolSpec;

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
