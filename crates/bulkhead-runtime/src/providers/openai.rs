//! OpenAI-compatible Chat Completions (non-streaming): the wire format of OpenAI's
//! `POST /chat/completions`, spoken by many providers and gateways.

use bulkhead_egress::{OutboundRequest, TenantEgress};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ChatMessage, ChatRequest, ChatResponse, ProviderError, ToolCall, Usage, error_from_status,
};

/// The request body, in OpenAI's shape.
pub fn request_body(request: &ChatRequest) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| {
            let mut message = json!({"role": m.role, "content": m.content});
            if !m.tool_calls.is_empty() {
                message["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
            }
            if let Some(id) = &m.tool_call_id {
                message["tool_call_id"] = json!(id);
            }
            message
        })
        .collect();
    let mut body = json!({"model": request.model, "messages": messages});
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
            .collect();
    }
    if let Some(max_tokens) = request.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

#[derive(Deserialize)]
struct WireResponse {
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: Option<String>,
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// Parses a Chat Completions answer (status and body) into a response or a typed error.
pub fn parse_response(status: u16, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(error_from_status(status, body));
    }
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| ProviderError::Malformed(e.to_string()))?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ProviderError::Malformed("no choices".into()))?;
    let usage = wire.usage.map_or(Usage::default(), |u| Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
    });
    Ok(ChatResponse {
        message: ChatMessage {
            role: choice.message.role.unwrap_or_else(|| "assistant".into()),
            content: choice.message.content,
            tool_calls: choice
                .message
                .tool_calls
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.function.name,
                    arguments: c.function.arguments,
                })
                .collect(),
            tool_call_id: None,
        },
        finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".into()),
        usage,
    })
}

/// Calls `endpoint` (an OpenAI-compatible endpoint from configuration) for the tenant that
/// owns `egress`, with that tenant's key.
pub async fn chat(
    egress: &TenantEgress<'_>,
    endpoint: &str,
    request: &ChatRequest,
) -> Result<ChatResponse, ProviderError> {
    let response = egress
        .send(
            endpoint,
            OutboundRequest::post_json("/chat/completions", &request_body(request)),
        )
        .await?;
    parse_response(response.status, &response.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_tool_calls_usage_and_errors() {
        let body = br##"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"slack-post","arguments":"{\"channel\":\"#ops\"}"}}]},
            "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"##;
        let response = parse_response(200, body).unwrap();
        assert_eq!(response.finish_reason, "tool_calls");
        assert_eq!(response.message.tool_calls[0].name, "slack-post");
        assert_eq!(
            response.message.tool_calls[0].arguments,
            r##"{"channel":"#ops"}"##
        );
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 7
            }
        );

        let error = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        assert!(matches!(
            parse_response(401, error),
            Err(ProviderError::Unauthorized { status: 401, .. })
        ));
        assert_eq!(
            parse_response(429, b"{}").unwrap_err().code(),
            "provider_rate_limited"
        );
        assert_eq!(
            parse_response(400, b"bad").unwrap_err().code(),
            "provider_bad_request"
        );
        assert_eq!(
            parse_response(502, b"<html>").unwrap_err().code(),
            "upstream_error"
        );
        assert_eq!(
            parse_response(200, b"not json").unwrap_err().code(),
            "upstream_malformed"
        );
        assert_eq!(
            parse_response(200, br#"{"choices":[]}"#)
                .unwrap_err()
                .code(),
            "upstream_malformed"
        );
    }

    #[test]
    fn builds_openai_request_bodies() {
        let request = ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![
                ChatMessage::text("system", "Be brief."),
                ChatMessage {
                    role: "assistant".into(),
                    content: None,
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "t".into(),
                        arguments: "{}".into(),
                    }],
                    tool_call_id: None,
                },
                ChatMessage {
                    role: "tool".into(),
                    content: Some("ok".into()),
                    tool_calls: Vec::new(),
                    tool_call_id: Some("c1".into()),
                },
            ],
            tools: vec![super::super::ToolSpec {
                name: "t".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
            max_tokens: Some(64),
        };
        let body = request_body(&request);
        assert_eq!(
            body["messages"][1]["tool_calls"][0]["function"]["name"],
            "t"
        );
        assert_eq!(body["messages"][2]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["max_tokens"], 64);
    }
}
