//! A fake model provider speaking OpenAI Chat Completions (`POST /v1/chat/completions`) and
//! Anthropic Messages (`POST /v1/messages`), whole or streamed as server-sent events, with the
//! request, response, error and event shapes of their public API references.
//!
//! What it answers depends on the last user message:
//! - after a tool result: `the tool said: <result>`;
//! - `weather`, with tools offered: a call of the first tool with `{"city":"Oslo"}` (streamed,
//!   its arguments arrive in three pieces);
//! - `status-401`, `status-429`, `status-500`: that status with the provider's error body;
//! - `garbage`: a 200 whose body is not the format;
//! - `stall`: an answer after 30 s, for timeout tests;
//! - `truncate`: a stream that stops before its final event;
//! - anything else: `answered with <credential>`, the `Authorization` or `x-api-key` value it
//!   received, so a test sees whose key each call carried.
//!
//! Streams are written in 7-byte pieces so clients meet events split anywhere.
//!
//! `POST /v1/embeddings` answers OpenAI's embeddings shape with a deterministic vector per
//! input: its words hashed into `dimensions` buckets (default 1536), so texts sharing words
//! are close. An input containing `status-401` or `status-429` gets that error.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub api: &'static str,
    pub credential: String,
    pub input: String,
    pub stream: bool,
    pub model: String,
    /// The request body as it arrived.
    pub body: String,
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

pub struct FakeLlm {
    /// `http://127.0.0.1:<port>`; the OpenAI base URL is this plus `/v1`.
    pub base: String,
    pub log: Log,
}

impl FakeLlm {
    /// Serves on an ephemeral loopback port until the runtime stops.
    pub async fn start() -> std::io::Result<Self> {
        let log = Log::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let app = router(Some(log.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { base, log })
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The routes; with a log, every request is recorded.
pub fn router(log: Option<Log>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai))
        .route("/v1/messages", post(anthropic))
        .route("/v1/embeddings", post(embeddings))
        .with_state(log)
}

/// What the fake decided to answer.
enum Reply {
    Text(String),
    ToolCall { name: String },
    Status(StatusCode),
    Garbage,
}

fn decide(input: &str, after_tool: Option<&str>, first_tool: Option<&str>, key: &str) -> Reply {
    if let Some(result) = after_tool {
        return Reply::Text(format!("the tool said: {result}"));
    }
    for (word, status) in [
        ("status-401", StatusCode::UNAUTHORIZED),
        ("status-429", StatusCode::TOO_MANY_REQUESTS),
        ("status-500", StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        if input.contains(word) {
            return Reply::Status(status);
        }
    }
    if input.contains("garbage") {
        return Reply::Garbage;
    }
    match first_tool {
        Some(name) if input.contains("weather") => Reply::ToolCall {
            name: name.to_owned(),
        },
        _ => Reply::Text(format!("answered with {key}")),
    }
}

fn header_value(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn record(log: Option<&Log>, seen: Seen) {
    if let Some(mut log) = log.and_then(|l| l.lock().ok()) {
        log.push(seen);
    }
}

fn words(text: &str) -> u64 {
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// Splits `text` into pieces that end after each space, so a streamed answer is several deltas.
fn pieces(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// A streamed body written in small pieces; without its end when `truncate`.
fn sse_body(events: Vec<String>, truncate: bool) -> Response {
    let mut text = String::new();
    let keep = if truncate {
        events.len().saturating_sub(2)
    } else {
        events.len()
    };
    for event in events.into_iter().take(keep) {
        text.push_str(&event);
    }
    let chunks: Vec<Result<Bytes, Infallible>> = text
        .into_bytes()
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn stall_if_asked(input: &str) {
    if input.contains("stall") {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

/// A bag-of-words vector: each lowercased word adds 1 to the bucket its hash names.
pub fn fake_embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0.0f32; dimensions.max(1)];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let hash = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let slot = usize::try_from(hash % vector.len() as u64).unwrap_or(0);
        vector[slot] += 1.0;
    }
    vector
}

async fn embeddings(State(log): State<Option<Log>>, headers: HeaderMap, raw: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
        );
    };
    let inputs: Vec<String> = match &body["input"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => return openai_error(StatusCode::BAD_REQUEST, "'input' is a required property"),
    };
    let dimensions = body["dimensions"].as_u64().map_or(1536, |d| d as usize);
    let key = header_value(&headers, "authorization");
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    record(
        log.as_ref(),
        Seen {
            api: "embeddings",
            credential: key,
            input: inputs.join("\n"),
            stream: false,
            model: model.clone(),
            body: String::from_utf8_lossy(&raw).into_owned(),
        },
    );
    let joined = inputs.join(" ");
    for (marker, status) in [
        ("status-401", StatusCode::UNAUTHORIZED),
        ("status-429", StatusCode::TOO_MANY_REQUESTS),
    ] {
        if joined.contains(marker) {
            return openai_error(status, "the fake was asked to fail");
        }
    }
    let tokens: u64 = inputs.iter().map(|i| words(i)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": fake_embedding(text, dimensions)}))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

async fn openai(State(log): State<Option<Log>>, headers: HeaderMap, raw: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
        );
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let after_tool = (last["role"] == "tool").then(|| last["content"].as_str().unwrap_or_default());
    let input = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let key = header_value(&headers, "authorization");
    let stream = body["stream"] == true;
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    record(
        log.as_ref(),
        Seen {
            api: "openai",
            credential: key.clone(),
            input: input.clone(),
            stream,
            model: model.clone(),
            body: String::from_utf8_lossy(&raw).into_owned(),
        },
    );
    stall_if_asked(&input).await;
    let first_tool = body["tools"][0]["function"]["name"].as_str();
    let reply = decide(&input, after_tool, first_tool, &key);
    let (message, finish, output) = match reply {
        Reply::Status(status) => return openai_error(status, "the fake was asked to fail"),
        Reply::Garbage => return (StatusCode::OK, "{\"choices\": [").into_response(),
        Reply::Text(text) => {
            let output = words(&text);
            (
                json!({"role": "assistant", "content": text}),
                "stop",
                output,
            )
        }
        Reply::ToolCall { name } => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_fake1", "type": "function",
                "function": {"name": name, "arguments": "{\"city\":\"Oslo\"}"}}]}),
            "tool_calls",
            4,
        ),
    };
    let usage =
        json!({"prompt_tokens": 11, "completion_tokens": output, "total_tokens": 11 + output});
    if !stream {
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if let Some(text) = message["content"].as_str() {
        for piece in pieces(text) {
            events.push(chunk(json!({"content": piece}), Value::Null));
        }
    } else {
        let call = &message["tool_calls"][0];
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}]}),
            Value::Null,
        ));
        for part in ["{\"ci", "ty\":\"Os", "lo\"}"] {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(json!({}), json!(finish)));
    if body["stream_options"]["include_usage"] == true {
        let usage_chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [], "usage": usage});
        events.push(format!("data: {usage_chunk}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse_body(events, input.contains("truncate"))
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        429 => ("requests", "rate_limit_exceeded"),
        400 => ("invalid_request_error", "invalid_json"),
        _ => ("server_error", "server_error"),
    };
    (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
        ),
    )
        .into_response()
}

async fn anthropic(State(log): State<Option<Log>>, headers: HeaderMap, raw: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return anthropic_error(StatusCode::BAD_REQUEST, "invalid JSON body");
    };
    if header_value(&headers, "anthropic-version").is_empty() {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let tool_result = last["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_result"))
        .map(|b| b["content"].as_str().unwrap_or_default().to_owned());
    let input = messages
        .iter()
        .rev()
        .find_map(|m| {
            (m["role"] == "user")
                .then(|| m["content"].as_str())
                .flatten()
        })
        .unwrap_or_default()
        .to_owned();
    let key = header_value(&headers, "x-api-key");
    let stream = body["stream"] == true;
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    record(
        log.as_ref(),
        Seen {
            api: "anthropic",
            credential: key.clone(),
            input: input.clone(),
            stream,
            model: model.clone(),
            body: String::from_utf8_lossy(&raw).into_owned(),
        },
    );
    stall_if_asked(&input).await;
    let first_tool = body["tools"][0]["name"].as_str();
    let reply = decide(&input, tool_result.as_deref(), first_tool, &key);
    let (block, stop, output) = match reply {
        Reply::Status(status) => return anthropic_error(status, "the fake was asked to fail"),
        Reply::Garbage => return (StatusCode::OK, "{\"content\": [").into_response(),
        Reply::Text(text) => {
            let output = words(&text);
            (json!({"type": "text", "text": text}), "end_turn", output)
        }
        Reply::ToolCall { name } => (
            json!({"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {"city": "Oslo"}}),
            "tool_use",
            4,
        ),
    };
    if !stream {
        return axum::Json(json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [block], "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": output},
        }))
        .into_response();
    }
    let event = |data: Value| {
        let name = data["type"].as_str().unwrap_or_default().to_owned();
        format!("event: {name}\ndata: {data}\n\n")
    };
    let mut events = vec![
        event(
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        ),
        event(json!({"type": "ping"})),
    ];
    if let Some(text) = block["text"].as_str() {
        events.push(event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        for piece in pieces(text) {
            events.push(event(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}})));
        }
    } else {
        events.push(event(
            json!({"type": "content_block_start", "index": 0, "content_block":
            {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}),
        ));
        for part in ["{\"ci", "ty\": \"Os", "lo\"}"] {
            events.push(event(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": part}})));
        }
    }
    events.push(event(json!({"type": "content_block_stop", "index": 0})));
    events.push(event(
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
        "usage": {"output_tokens": output}}),
    ));
    events.push(event(json!({"type": "message_stop"})));
    sse_body(events, input.contains("truncate"))
}

fn anthropic_error(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_error",
        400 => "invalid_request_error",
        _ => "api_error",
    };
    (
        status,
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}
