//! `POST /v1/chat/completions`: the OpenAI-compatible gateway. Outside agent frameworks point
//! their OpenAI base URL here and use a tenant API key as the OpenAI key. `model` is either a
//! model alias the tenant may use (the request goes to that provider with the tenant's own
//! key) or `agent/<name>` (the tenant's hosted agent runs and answers in the same format).
//!
//! Errors answer in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so
//! OpenAI clients raise them as API errors; `code` is Bulkhead's stable problem code.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use bulkhead_core::{AgentName, TenantContext};
use bulkhead_runtime::chat_body::{ChatBody, ChatBodyError};
use bulkhead_runtime::gateway::GatewayError;
use bulkhead_runtime::providers::{Usage, openai};
use bulkhead_runtime::runs::{RunEvent, RunInput};
use bulkhead_store::RunRecord;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::ApiError;
use crate::routes::runs::{RUNNERS, run_error, wants_event_stream};
use crate::routes::streaming;

/// An error in OpenAI's format.
pub(crate) struct OpenAiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl OpenAiError {
    fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    fn body(&self) -> Value {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": null, "code": self.code}})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        let message = match &error {
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "gateway request failed");
                "Something went wrong".to_owned()
            }
            other => other.to_string(),
        };
        OpenAiError::new(error.status(), error.code(), message)
    }
}

impl From<GatewayError> for OpenAiError {
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::Store(e) => ApiError::from(e).into(),
            other => OpenAiError::new(
                crate::error::status_for_code(other.code()),
                other.code(),
                other.to_string(),
            ),
        }
    }
}

/// Chat Completions, OpenAI-compatible, whole or streamed (`"stream": true`).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "gateway",
    security(("tenant_credential" = [])),
    request_body(content = Object, description = "An OpenAI Chat Completions request; `model` is a model alias or `agent/<name>`"),
    responses(
        (status = 200, description = "A `chat.completion`, or `chat.completion.chunk` events ending in `[DONE]`",
            content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "Invalid request (OpenAI error shape)"),
        (status = 401, description = "No valid tenant credential"),
        (status = 403, description = "Model not allowed for this tenant"),
        (status = 404, description = "No such model alias or agent"),
        (status = 429, description = "The provider is rate limiting this tenant"),
        (status = 502, description = "The provider failed")))]
pub async fn chat_completions(
    State(state): State<AppState>,
    auth: Result<Authenticated, ApiError>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let Authenticated(ctx) = auth?;
    require_role(&ctx, RUNNERS)?;
    let body = ChatBody::parse(&body).map_err(|error| match error {
        ChatBodyError::Malformed(e) => {
            OpenAiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string())
        }
        ChatBodyError::Invalid(reason) => {
            OpenAiError::new(StatusCode::BAD_REQUEST, "invalid_request", reason)
        }
    })?;
    let model = body.model().to_owned();
    let stream = body.wants_stream() || wants_event_stream(&headers);
    if let Some(agent) = model.strip_prefix("agent/") {
        let body = body.to_value().map_err(|e| {
            OpenAiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string())
        })?;
        return agent_completion(state, ctx, agent, body, stream).await;
    }
    state
        .runner()
        .quotas()
        .check_tokens(&state.store().tenant(&ctx))
        .await
        .map_err(ApiError::from)?;
    if !stream {
        let store = state.store().tenant(&ctx);
        let completion = state.runner().complete(&store, body).await?;
        store.record_usage(
            &model,
            None,
            completion.usage.input_tokens,
            completion.usage.output_tokens,
        );
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            completion.body,
        )
            .into_response());
    }
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let store = state.store().tenant(&ctx);
        let chunks = sender.clone();
        let mut sink = move |data: String| {
            let _ = chunks.send(Item::Data(data));
        };
        let result = state
            .runner()
            .complete_stream(&store, body, &mut sink)
            .await
            .map_err(OpenAiError::from);
        if let Ok(usage) = &result {
            store.record_usage(&model, None, usage.input_tokens, usage.output_tokens);
        }
        let _ = sender.send(Item::End(result.map(|_| ())));
    });
    stream_response(receiver).await
}

/// What a streaming task hands the response: chunk payloads, then its end.
enum Item {
    Data(String),
    End(Result<(), OpenAiError>),
}

/// Streams the task's chunks, ending with `[DONE]`, or with an `error` chunk if the upstream
/// fails midway. A request refused before any chunk (an unknown model, a provider's 401)
/// answers as an HTTP error instead.
async fn stream_response(receiver: mpsc::UnboundedReceiver<Item>) -> Result<Response, OpenAiError> {
    streaming::after_first_item(
        receiver,
        |item| match item {
            Item::End(Err(error)) => Err(error),
            item => Ok(item),
        },
        || ApiError::Internal("the completion task ended without a result".into()).into(),
        |item| {
            Event::default().data(match item {
                Item::Data(data) => data,
                Item::End(Ok(())) => "[DONE]".to_owned(),
                Item::End(Err(error)) => error.body().to_string(),
            })
        },
    )
    .await
}

/// The last user message's text: what a hosted agent takes as its input.
fn agent_input(body: &Value) -> Result<String, OpenAiError> {
    let request = openai::request_from_json(body)
        .map_err(|e| OpenAiError::new(StatusCode::BAD_REQUEST, "invalid_request", e))?;
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| m.content.clone())
        .ok_or_else(|| {
            OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "no user message",
            )
        })
}

/// Runs the tenant's agent `name` on the last user message. `user` is the end user; the
/// `X-Bulkhead-Thread-Id` header continues one of its threads.
async fn agent_completion(
    state: AppState,
    ctx: TenantContext,
    name: &str,
    body: Value,
    stream: bool,
) -> Result<Response, OpenAiError> {
    let model = format!("agent/{name}");
    let name = AgentName::try_from(name)
        .map_err(|e| OpenAiError::new(StatusCode::NOT_FOUND, "agent_not_found", e.to_string()))?;
    let agent = state
        .store()
        .tenant(&ctx)
        .agent(&name)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            OpenAiError::new(
                StatusCode::NOT_FOUND,
                "agent_not_found",
                format!("no agent {name}"),
            )
        })?;
    let input = RunInput {
        input: agent_input(&body)?,
        user: body.get("user").and_then(Value::as_str).map(str::to_owned),
        thread_id: body
            .pointer("/metadata/thread_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    let created = bulkhead_core::timestamp::now_millis() / 1000;
    if !stream {
        let store = state.store().tenant(&ctx);
        let run = state
            .runner()
            .run(&store, &agent, input, None)
            .await
            .map_err(|e| OpenAiError::from(run_error(e)))?;
        let run = finished(run)?;
        let response = bulkhead_runtime::providers::ChatResponse {
            message: bulkhead_runtime::providers::ChatMessage::text(
                "assistant",
                run.output.clone().unwrap_or_default(),
            ),
            finish_reason: "stop".into(),
            usage: run_usage(&run),
        };
        let id = format!("chatcmpl-{}", run.run_id);
        return Ok(Json(openai::completion_json(&id, &model, created, &response)).into_response());
    }
    let wants_usage = body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let store = state.store().tenant(&ctx);
        let chunks = sender.clone();
        let mut id = String::new();
        let model_name = model.clone();
        let mut sink = move |event: RunEvent| match event {
            RunEvent::Started { run_id, .. } => {
                id = format!("chatcmpl-{run_id}");
                let chunk = openai::chunk_json(
                    &id,
                    &model_name,
                    created,
                    json!({"role": "assistant", "content": ""}),
                    None,
                );
                let _ = chunks.send(Item::Data(chunk.to_string()));
            }
            RunEvent::MessageDelta { text, .. } => {
                let chunk =
                    openai::chunk_json(&id, &model_name, created, json!({"content": text}), None);
                let _ = chunks.send(Item::Data(chunk.to_string()));
            }
            RunEvent::ToolCalled { .. }
            | RunEvent::ToolResult { .. }
            | RunEvent::ApprovalRequested { .. } => {}
        };
        let result = state
            .runner()
            .run(&store, &agent, input, Some(&mut sink))
            .await;
        let end = match result
            .map_err(|e| OpenAiError::from(run_error(e)))
            .and_then(finished)
        {
            Ok(run) => {
                let id = format!("chatcmpl-{}", run.run_id);
                let last = openai::chunk_json(&id, &model, created, json!({}), Some("stop"));
                let _ = sender.send(Item::Data(last.to_string()));
                if wants_usage {
                    let usage = openai::usage_chunk_json(&id, &model, created, run_usage(&run));
                    let _ = sender.send(Item::Data(usage.to_string()));
                }
                Ok(())
            }
            Err(error) => Err(error),
        };
        let _ = sender.send(Item::End(end));
    });
    stream_response(receiver).await
}

/// A completed run, or its failure as an error naming the run.
fn finished(run: RunRecord) -> Result<RunRecord, OpenAiError> {
    if run.status == "completed" {
        return Ok(run);
    }
    let code = run.error_code.clone().unwrap_or_else(|| "internal".into());
    Err(OpenAiError::new(
        crate::error::status_for_code(&code),
        code,
        format!(
            "run {} failed: {}",
            run.run_id,
            run.error_message.unwrap_or_default()
        ),
    ))
}

fn run_usage(run: &RunRecord) -> Usage {
    Usage {
        input_tokens: u64::try_from(run.input_tokens).unwrap_or_default(),
        output_tokens: u64::try_from(run.output_tokens).unwrap_or_default(),
    }
}
