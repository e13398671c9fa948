//! OpenAI-compatible Chat Completions: the wire format of OpenAI's `POST /chat/completions`,
//! spoken by many providers and gateways, whole or streamed as server-sent events.

use bulkhead_egress::{OutboundRequest, TenantEgress};
use serde::Deserialize;
use serde_json::{Value, json};

use super::sse::{expect_stream, read_events};
use super::{
    Accumulator, ChatMessage, ChatRequest, ChatResponse, Delta, DeltaSink, ProviderError, ToolCall,
    Usage, WireErrorBody, error_from_status,
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
            OutboundRequest::post_json("/chat/completions", &request_body(request)).retry_safe(),
        )
        .await?;
    parse_response(response.status, &response.body)
}

/// Like [`chat`], streamed: deltas go to `sink` as they arrive (tool-call arguments in pieces),
/// and the assembled response, usage included, is answered at the end.
pub async fn chat_stream(
    egress: &TenantEgress<'_>,
    endpoint: &str,
    request: &ChatRequest,
    sink: DeltaSink<'_>,
) -> Result<ChatResponse, ProviderError> {
    let mut body = request_body(request);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = egress
        .send_streaming(
            endpoint,
            OutboundRequest::post_json("/chat/completions", &body).retry_safe(),
        )
        .await?;
    let mut response = expect_stream(response).await?;
    let mut accumulator = Accumulator::default();
    read_events(&mut response, |event| {
        Ok(apply_chunk(&event.data, &mut accumulator, &mut *sink)? == ChunkKind::Done)
    })
    .await?;
    accumulator.finish()
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    usage: Option<WireUsage>,
    error: Option<WireErrorBody>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    delta: WireDelta,
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct WireDelta {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCallDelta>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    index: usize,
    id: Option<String>,
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

/// What one `data:` payload of a stream was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// `[DONE]`: the stream is over.
    Done,
    /// A chunk with choices (deltas, a finish reason).
    Choices,
    /// The chunk that carries only usage (`stream_options.include_usage`).
    UsageOnly,
}

/// Applies one `data:` payload of a Chat Completions stream. An `error` object inside the
/// stream (some providers send one after a 200) is an upstream error.
pub fn apply_chunk(
    data: &str,
    accumulator: &mut Accumulator,
    sink: DeltaSink<'_>,
) -> Result<ChunkKind, ProviderError> {
    if data.trim() == "[DONE]" {
        return Ok(ChunkKind::Done);
    }
    let chunk: WireChunk = serde_json::from_str(data)
        .map_err(|e| ProviderError::Malformed(format!("stream chunk: {e}")))?;
    if let Some(error) = chunk.error {
        return Err(ProviderError::Upstream {
            status: 200,
            message: error.message,
        });
    }
    if let Some(usage) = &chunk.usage {
        accumulator.usage = Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        };
    }
    let kind = if chunk.choices.is_empty() && chunk.usage.is_some() {
        ChunkKind::UsageOnly
    } else {
        ChunkKind::Choices
    };
    for choice in chunk.choices {
        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
            accumulator.apply(Delta::Text(text), &mut *sink);
        }
        for call in choice.delta.tool_calls {
            let (name, arguments) = call
                .function
                .map_or((None, None), |f| (f.name, f.arguments));
            accumulator.apply(
                Delta::ToolCall {
                    index: call.index,
                    id: call.id,
                    name,
                    arguments: arguments.unwrap_or_default(),
                },
                &mut *sink,
            );
        }
        if let Some(reason) = choice.finish_reason {
            accumulator.finish_reason = Some(reason);
        }
    }
    Ok(kind)
}

/// The `usage` object of Chat Completions.
pub fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    })
}

/// A whole `chat.completion` answer, for answers that did not come from an OpenAI-compatible
/// upstream (an Anthropic model, a hosted agent).
pub fn completion_json(id: &str, model: &str, created: i64, response: &ChatResponse) -> Value {
    let mut message = json!({"role": "assistant", "content": response.message.content});
    if !response.message.tool_calls.is_empty() {
        message["tool_calls"] = response
            .message
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": response.finish_reason}],
        "usage": usage_json(response.usage),
    })
}

/// One `chat.completion.chunk` of a stream.
pub fn chunk_json(
    id: &str,
    model: &str,
    created: i64,
    delta: Value,
    finish: Option<&str>,
) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// The last chunk of a stream whose client asked for usage: no choices, only `usage`.
pub fn usage_chunk_json(id: &str, model: &str, created: i64, usage: Usage) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [], "usage": usage_json(usage),
    })
}

/// The chunk that carries a streamed delta.
pub fn delta_json(delta: &Delta) -> Value {
    match delta {
        Delta::Text(text) => json!({"content": text}),
        Delta::ToolCall {
            index,
            id,
            name,
            arguments,
        } => {
            let mut call = json!({"index": index, "function": {"arguments": arguments}});
            if let Some(id) = id {
                call["id"] = json!(id);
                call["type"] = json!("function");
            }
            if let Some(name) = name {
                call["function"]["name"] = json!(name);
            }
            json!({"tool_calls": [call]})
        }
    }
}

/// Reads a Chat Completions request body into the provider-neutral shape, for sending it to
/// a provider of another format. Text content parts are joined; other parts are refused.
pub fn request_from_json(body: &Value) -> Result<ChatRequest, String> {
    let model = body["model"].as_str().ok_or("model must be a string")?;
    let messages = body["messages"]
        .as_array()
        .ok_or("messages must be an array")?
        .iter()
        .enumerate()
        .map(|(i, m)| message_from_json(m).map_err(|e| format!("messages[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                Ok(super::ToolSpec {
                    name: f["name"]
                        .as_str()
                        .ok_or("tools[].function.name must be a string")?
                        .to_owned(),
                    description: f["description"].as_str().unwrap_or_default().to_owned(),
                    parameters: f
                        .get("parameters")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect::<Result<Vec<_>, String>>()?,
        Some(_) => return Err("tools must be an array".into()),
    };
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Ok(ChatRequest {
        model: model.to_owned(),
        messages,
        tools,
        max_tokens,
    })
}

fn message_from_json(message: &Value) -> Result<ChatMessage, String> {
    let role = message["role"].as_str().ok_or("role must be a string")?;
    let role = if role == "developer" { "system" } else { role };
    if !matches!(role, "system" | "user" | "assistant" | "tool") {
        return Err(format!("unknown role {role:?}"));
    }
    let content = match &message["content"] {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(text)) => Ok(text),
                    _ => Err("only text content parts are supported"),
                })
                .collect::<Result<Vec<_>, _>>()?
                .concat(),
        ),
        _ => return Err("content must be a string, an array of parts or null".into()),
    };
    let tool_calls = match &message["tool_calls"] {
        Value::Array(calls) => calls
            .iter()
            .map(|c| {
                Ok(ToolCall {
                    id: c["id"]
                        .as_str()
                        .ok_or("tool_calls[].id must be a string")?
                        .to_owned(),
                    name: c["function"]["name"]
                        .as_str()
                        .ok_or("tool_calls[].function.name must be a string")?
                        .to_owned(),
                    arguments: c["function"]["arguments"]
                        .as_str()
                        .unwrap_or("{}")
                        .to_owned(),
                })
            })
            .collect::<Result<Vec<_>, &str>>()?,
        _ => Vec::new(),
    };
    Ok(ChatMessage {
        role: role.to_owned(),
        content,
        tool_calls,
        tool_call_id: message["tool_call_id"].as_str().map(str::to_owned),
    })
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
    fn assembles_streamed_text_and_tool_call_deltas() {
        let chunks = [
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Look"},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_9","type":"function","function":{"name":"search","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"tea\"}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":9,"total_tokens":39}}"#,
            "[DONE]",
        ];
        let mut accumulator = Accumulator::default();
        let mut seen = Vec::new();
        let mut sink = |d: Delta| seen.push(d);
        let kinds: Vec<ChunkKind> = chunks
            .iter()
            .map(|chunk| apply_chunk(chunk, &mut accumulator, &mut sink).unwrap())
            .collect();
        assert_eq!(kinds[6], ChunkKind::UsageOnly);
        assert_eq!(kinds[7], ChunkKind::Done);
        let response = accumulator.finish().unwrap();
        assert_eq!(response.message.content.as_deref(), Some("Look"));
        assert_eq!(response.message.tool_calls[0].id, "call_9");
        assert_eq!(response.message.tool_calls[0].arguments, r#"{"q":"tea"}"#);
        assert_eq!(response.finish_reason, "tool_calls");
        assert_eq!(response.usage.output_tokens, 9);
        assert_eq!(seen.len(), 4);

        let mut accumulator = Accumulator::default();
        let error = apply_chunk(
            r#"{"error":{"message":"overloaded"}}"#,
            &mut accumulator,
            &mut |_| {},
        );
        assert_eq!(error.unwrap_err().code(), "upstream_error");
        assert_eq!(
            apply_chunk("{not json", &mut accumulator, &mut |_| {})
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
