//! Runs of an agent, whole or streamed as server-sent events, and the threads they continue.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use bulkhead_core::Role;
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_runtime::runs::{RunError, RunEvent, RunInput};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::agents::{READERS, path_agent};
use crate::routes::streaming;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The user's message, inserted as data.
    pub input: String,
    /// The end user the run acts for, as `{{ user }}`. Threads belong to one end user.
    pub end_user: Option<String>,
    /// Continue this conversation. Another tenant's or another end user's thread is a 404.
    pub thread_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    /// The conversation this run belongs to, if any.
    pub thread_id: Option<String>,
    pub agent: String,
    /// The agent version this run used.
    pub agent_version: i64,
    /// `running`, `completed` or `failed`.
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    /// Stable code of the failure, such as `max_steps_exceeded`, `template_error`,
    /// `provider_unauthorized`, `residency_violation` or `interrupted`.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub steps: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The messages exchanged with the model, system prompt first.
    #[schema(value_type = Vec<Object>)]
    pub transcript: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
    /// The operating-system process that executed the run.
    pub process_id: Option<i64>,
    /// `shared` (the shared pool) or `dedicated` (the tenant's own worker process).
    pub isolation: Option<String>,
}

impl From<bulkhead_store::RunRecord> for RunView {
    fn from(r: bulkhead_store::RunRecord) -> Self {
        Self {
            id: r.run_id,
            thread_id: r.thread_id,
            agent: r.agent,
            agent_version: r.agent_version,
            status: r.status,
            input: r.input,
            output: r.output,
            error_code: r.error_code,
            error_message: r.error_message,
            steps: r.steps,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            transcript: r.transcript,
            created_at: to_rfc3339(r.created_at),
            updated_at: to_rfc3339(r.updated_at),
            process_id: r.process_id,
            isolation: r.isolation,
        }
    }
}

pub(crate) const RUNNERS: &[Role] = &[Role::Owner, Role::Admin, Role::Developer, Role::Agent];

/// Runs the agent's current version to completion and answers the finished run (a failed run
/// is still a 200, with `status` `failed` and an `error_code`). A run whose tool call needs a
/// person's approval answers with `status` `awaiting_approval`; it continues on its own once
/// decided (`POST /v1/approvals/{id}/decision`), and `GET /v1/runs/{id}` shows how it ended.
///
/// With `Accept: text/event-stream` the run streams as server-sent events: `run.started`,
/// `message.delta` (text as the model produces it), `tool.called`, `tool.result`,
/// `approval.requested`, then `run.completed`, `run.paused` or `run.failed` carrying the
/// stored run. A client that disconnects does not
/// stop the run; it completes and can be read with `GET /v1/runs/{id}`.
#[utoipa::path(post, path = "/v1/agents/{name}/runs", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Agent name")),
    request_body = RunRequest,
    responses((status = 200, description = "The finished run, or its events as they happen",
            content((RunView = "application/json"), (String = "text/event-stream"))),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn create_run(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    require_role(&ctx, RUNNERS)?;
    if request.input.len() > 256 * 1024 {
        return Err(ApiError::invalid("input", "must be at most 256 KiB"));
    }
    let agent = state
        .store()
        .tenant(&ctx)
        .agent(&path_agent(&name)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    // Held until the run ends: a change of tier waits for it, and this waits for a change
    // in progress, then reads the tier that change left.
    let gate = state.tier_gate(ctx.tenant_id()).read_owned().await;
    let tier = state
        .store()
        .admin()
        .get_tenant(ctx.tenant_id())
        .await?
        .ok_or(ApiError::NotFound)?
        .isolation;
    let stream = wants_event_stream(&headers);
    if tier == bulkhead_core::Isolation::Dedicated {
        return crate::routes::forwarded::run(
            state,
            ctx,
            gate,
            agent.name.to_string(),
            request,
            stream,
        )
        .await;
    }
    let input = RunInput {
        thread_id: request.thread_id,
        input: request.input,
        user: request.end_user,
    };
    if !stream {
        let store = state.store().tenant(&ctx);
        let run = state
            .runner()
            .run(&store, &agent, input, None)
            .await
            .map_err(run_error)?;
        drop(gate);
        return Ok(Json(RunView::from(run)).into_response());
    }
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _gate = gate;
        let store = state.store().tenant(&ctx);
        let events = sender.clone();
        let mut sink = move |event: RunEvent| {
            // A disconnected client does not stop the run.
            let _ = events.send(RunStreamItem::Event(event));
        };
        let result = state
            .runner()
            .run(&store, &agent, input, Some(&mut sink))
            .await;
        let _ = sender.send(RunStreamItem::Done(Box::new(result)));
    });
    // A run refused before it starts (a thread of someone else, say) is an HTTP error, not
    // a stream.
    streaming::after_first_item(
        receiver,
        |item| match item {
            RunStreamItem::Done(done) => match *done {
                Err(error) => Err(run_error(error)),
                ok => Ok(RunStreamItem::Done(Box::new(ok))),
            },
            item => Ok(item),
        },
        || ApiError::Internal("the run task ended without a result".into()),
        sse_event,
    )
    .await
}

pub(crate) enum RunStreamItem {
    Event(RunEvent),
    /// An event a dedicated worker sent, already in its server-sent form.
    Relayed {
        name: String,
        data: String,
    },
    /// A dedicated worker refused the run, or was lost, before the stream began.
    Refused(ApiError),
    Done(Box<Result<bulkhead_store::RunRecord, RunError>>),
}

pub(crate) fn sse_event(item: RunStreamItem) -> Event {
    let (name, data) = match item {
        RunStreamItem::Relayed { name, data } => return Event::default().event(name).data(data),
        RunStreamItem::Refused(error) => {
            let problem =
                json!({"type": "run.failed", "code": error.code(), "detail": error.to_string()});
            ("run.failed", Ok(problem.to_string()))
        }
        RunStreamItem::Event(event) => (event.name(), serde_json::to_string(&event)),
        RunStreamItem::Done(done) => match *done {
            Ok(run) => {
                let name = match run.status.as_str() {
                    "completed" => "run.completed",
                    "awaiting_approval" => "run.paused",
                    _ => "run.failed",
                };
                (name, serde_json::to_string(&RunView::from(run)))
            }
            Err(error) => {
                let problem =
                    json!({"type": "run.failed", "code": "internal", "detail": error.to_string()});
                ("run.failed", Ok(problem.to_string()))
            }
        },
    };
    Event::default()
        .event(name)
        .data(data.unwrap_or_else(|e| json!({"error": e.to_string()}).to_string()))
}

pub(crate) fn run_error(error: RunError) -> ApiError {
    match error {
        RunError::ThreadNotFound => ApiError::NotFound,
        RunError::Store(e) => e.into(),
        RunError::Quota(e) => e.into(),
    }
}

/// Whether the client asked for server-sent events.
pub(crate) fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// One of the tenant's runs. Another tenant's run id answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_run(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunView>, ApiError> {
    require_role(&ctx, READERS)?;
    let run = state
        .store()
        .tenant(&ctx)
        .run(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(run.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ThreadQuery {
    /// The end user the thread belongs to (omit for threads without one).
    pub end_user: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadMessageView {
    pub seq: i64,
    pub role: String,
    pub content: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadView {
    pub id: String,
    pub messages: Vec<ThreadMessageView>,
}

/// A conversation. Another tenant's or another end user's thread answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/threads/{id}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("id" = String, Path, description = "Thread id"), ThreadQuery),
    responses((status = 200, body = ThreadView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_thread(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(id): ApiPath<String>,
    crate::extract::ApiQuery(query): crate::extract::ApiQuery<ThreadQuery>,
) -> Result<Json<ThreadView>, ApiError> {
    require_role(&ctx, RUNNERS)?;
    let messages = state
        .store()
        .tenant(&ctx)
        .thread_messages(&id, query.end_user.as_deref().unwrap_or_default())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(ThreadView {
        id,
        messages: messages
            .into_iter()
            .map(|m| ThreadMessageView {
                seq: m.seq,
                role: m.role,
                content: m.content,
                created_at: to_rfc3339(m.created_at),
            })
            .collect(),
    }))
}
