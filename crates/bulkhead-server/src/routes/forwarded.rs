//! The agent work of dedicated tenants: authenticated and admitted here, executed by the
//! tenant's own worker process (`crate::worker`), answered here exactly as the shared path
//! would answer it.
//!
//! Runs have a frame of their own (`run`); everything else that is agent work (the gateway,
//! `/mcp`, knowledge ingest and search, prompt previews) goes through [`agent_work`], which
//! forwards the request itself and relays the worker's answer.

use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bulkhead_core::{Isolation, TenantContext};
use tokio::sync::{OwnedRwLockReadGuard, mpsc};

use crate::AppState;
use crate::authn::{Authenticated, EarlyRefusal, PreAuthenticated};
use crate::error::{ApiError, relayed};
use crate::routes::runs::{RunRequest, RunStreamItem, RunView, sse_event};
use crate::routes::streaming;
use crate::worker::WorkerError;
use crate::worker::frames::{Caller, FromWorker, HttpCall, RunCall, header_pair};

/// The routes whose work decrypts a tenant's secrets, calls its models or tools, renders
/// its prompts or embeds its documents. Reading and writing records stays in this process.
const AGENT_WORK: &[(Method, &str)] = &[
    (Method::POST, "/v1/chat/completions"),
    (Method::POST, "/mcp"),
    (Method::GET, "/mcp"),
    (Method::POST, "/v1/knowledge/{kb}/documents"),
    (Method::GET, "/v1/knowledge/{kb}/search"),
    (Method::POST, "/v1/agents/{name}/prompt-preview"),
];

/// The largest request body a frame carries: base64 of it, with headers, stays under
/// `frames::MAX_FRAME`.
const MAX_FORWARDED_BODY: usize = (crate::worker::frames::MAX_FRAME as usize / 4) * 3 - 64 * 1024;

/// Headers a worker has no use for: the credential was checked here, and hop-by-hop ones
/// belong to this connection.
const NOT_FORWARDED: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
];

/// Middleware: a dedicated tenant's agent work is forwarded to its worker; a shared tenant's
/// is served here, with the context authenticated once. Either way the tenant's tier gate is
/// held until the answer's body ends, so a change of tier drains it.
pub(crate) async fn agent_work(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let is_agent_work = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|path| {
            AGENT_WORK
                .iter()
                .any(|(method, route)| method == request.method() && path.as_str() == *route)
        });
    if !is_agent_work || state.is_dedicated_worker() {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let ctx = match Authenticated::from_request_parts(&mut parts, &state).await {
        Ok(Authenticated(ctx)) => ctx,
        Err(error) => {
            // The handler answers it, in its route's own error shape.
            parts.extensions.insert(EarlyRefusal::new(error));
            return next.run(Request::from_parts(parts, body)).await;
        }
    };
    let gate = state.tier_gate(ctx.tenant_id()).read_owned().await;
    let tier = gate.unwrap_or(ctx.isolation());
    if tier == Isolation::Dedicated {
        let request = Request::from_parts(parts, body);
        return match http(&state, ctx, gate, request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
    }
    parts.extensions.insert(PreAuthenticated(ctx));
    let response = next.run(Request::from_parts(parts, body)).await;
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, axum::body::Body::new(Guarded { body, _gate: gate }))
}

/// A body that holds its tenant's tier gate until it has been sent, and is otherwise the
/// body it wraps (its length known up front stays known, so no chunked encoding).
struct Guarded {
    body: axum::body::Body,
    _gate: OwnedRwLockReadGuard<Option<Isolation>>,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Forwards `request` to the tenant's worker and relays its answer as it comes.
async fn http(
    state: &AppState,
    ctx: TenantContext,
    gate: OwnedRwLockReadGuard<Option<Isolation>>,
    request: Request,
) -> Result<Response, ApiError> {
    let workers = state.workers().ok_or(WorkerError::Disabled)?;
    let (parts, body) = request.into_parts();
    let limit = state.max_body_bytes();
    // The frame that carries it has its own bound (a third more, in base64).
    let limit = limit.min(MAX_FORWARDED_BODY);
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit })?;
    let call = HttpCall {
        caller: Caller::of(&ctx),
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| !NOT_FORWARDED.contains(name))
            .filter_map(header_pair)
            .chain([(
                crate::authn::REQUEST_ID_HEADER.to_owned(),
                ctx.request_id().as_str().to_owned(),
            )])
            .collect(),
        body: BASE64.encode(&body),
    };
    let mut frames = workers.http(&ctx, call).await?;
    let (status, headers) = match frames.recv().await {
        Some(FromWorker::Head {
            status, headers, ..
        }) => (status, headers),
        Some(FromWorker::Refused { code, detail, .. }) => return Err(relayed(&code, detail)),
        _ => return Err(WorkerError::Lost.into()),
    };
    let mut response =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) && !NOT_FORWARDED.contains(&name)
        {
            response = response.header(name, value);
        }
    }
    // The body is relayed frame by frame (server-sent events stay live); the gate goes with
    // it. A worker that fails mid-body ends the body with an error, once.
    let body = futures_util::stream::unfold(Some((frames, gate)), |relay| async move {
        let (mut frames, gate) = relay?;
        let failed = |detail: String| Some((Err(std::io::Error::other(detail)), None));
        match frames.recv().await {
            Some(FromWorker::Body { data, .. }) => match BASE64.decode(data) {
                Ok(bytes) => Some((Ok(axum::body::Bytes::from(bytes)), Some((frames, gate)))),
                Err(error) => failed(format!("a worker's body frame is not base64: {error}")),
            },
            Some(FromWorker::End { .. }) => None,
            Some(FromWorker::Refused { detail, .. }) => failed(detail),
            Some(_) => Some((Ok(axum::body::Bytes::new()), Some((frames, gate)))),
            None => failed(WorkerError::Lost.to_string()),
        }
    });
    response
        .body(axum::body::Body::from_stream(body))
        .map_err(|e| ApiError::Internal(e.to_string().into()))
}

pub(crate) async fn run(
    state: AppState,
    ctx: TenantContext,
    gate: OwnedRwLockReadGuard<Option<bulkhead_core::Isolation>>,
    agent: String,
    request: RunRequest,
    stream: bool,
) -> Result<Response, ApiError> {
    let workers = state.workers().ok_or(WorkerError::Disabled)?;
    let call = RunCall {
        caller: Caller::of(&ctx),
        agent,
        input: request.input,
        end_user: request.end_user,
        thread_id: request.thread_id,
        stream,
    };
    let mut frames = workers.run(&ctx, call).await?;
    if !stream {
        let answer = loop {
            match frames.recv().await {
                Some(FromWorker::Done { run_id, .. }) => {
                    break finished(&state, &ctx, &run_id).await;
                }
                Some(FromWorker::Refused { code, detail, .. }) => {
                    break Err(relayed(&code, detail));
                }
                Some(_) => {}
                None => break Err(WorkerError::Lost.into()),
            }
        };
        drop(gate);
        return answer.map(|run| Json(run).into_response());
    }
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _gate = gate;
        while let Some(frame) = frames.recv().await {
            let item = match frame {
                FromWorker::Event { name, data, .. } => RunStreamItem::Relayed { name, data },
                FromWorker::Done { run_id, .. } => {
                    let _ = sender.send(match finished_record(&state, &ctx, &run_id).await {
                        Ok(run) => RunStreamItem::Done(Box::new(Ok(run))),
                        Err(error) => RunStreamItem::Refused(error),
                    });
                    return;
                }
                FromWorker::Refused { code, detail, .. } => {
                    let _ = sender.send(RunStreamItem::Refused(relayed(&code, detail)));
                    return;
                }
                _ => continue,
            };
            let _ = sender.send(item);
        }
        let _ = sender.send(RunStreamItem::Refused(WorkerError::Lost.into()));
    });
    streaming::after_first_item(
        receiver,
        |item| match item {
            RunStreamItem::Refused(error) => Err(error),
            item => Ok(item),
        },
        || ApiError::Internal("the forwarding task ended without a result".into()),
        sse_event,
    )
    .await
}

async fn finished(
    state: &AppState,
    ctx: &TenantContext,
    run_id: &str,
) -> Result<RunView, ApiError> {
    finished_record(state, ctx, run_id).await.map(RunView::from)
}

/// The run as the worker left it, read by this process with the caller's own context.
async fn finished_record(
    state: &AppState,
    ctx: &TenantContext,
    run_id: &str,
) -> Result<bulkhead_store::RunRecord, ApiError> {
    state.store().tenant(ctx).run(run_id).await?.ok_or_else(|| {
        ApiError::Internal(format!("run {run_id} reported by the worker is missing").into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A misspelt entry would let a dedicated tenant's agent work run in the shared process
    /// without a sound: every entry must name a route that exists, with that method.
    #[test]
    fn every_agent_work_route_exists() {
        let (_, api) = crate::routes::router().split_for_parts();
        for (method, path) in AGENT_WORK {
            let item = api
                .paths
                .paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is not a route"));
            let operation = match *method {
                Method::GET => item.get.as_ref(),
                Method::POST => item.post.as_ref(),
                _ => None,
            };
            assert!(operation.is_some(), "{method} {path} is not a route");
        }
    }
}
