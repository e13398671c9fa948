//! The worker's side of the channel: one tenant's runs, answered over the socket the worker
//! opened to the control plane.
//!
//! Every context is built here from the worker's own tenant record and what the control
//! plane authenticated; a frame has no field that names a tenant, so no request can reach
//! another tenant's rows through this process's handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bulkhead_core::{AgentName, TenantContext, TenantId};
use bulkhead_runtime::runs::{RunEvent, RunInput};
use bulkhead_vault::{HandedKey, VaultError};
use futures_util::StreamExt as _;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tower::ServiceExt as _;
use tracing::Instrument;

use crate::AppState;
use crate::authn::PreAuthenticated;
use crate::worker::frames::{
    Caller, FrameError, FromWorker, HttpCall, RunCall, ToWorker, header_pair, read_frame,
    write_frame,
};
use crate::worker::link::WorkerLink;

/// Set by the worker on every answer it gives, so a caller (and a test) can see which
/// process served it.
pub const SERVED_BY_HEADER: &str = "x-bulkhead-served-by";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the control plane started this worker for {sent:?}, not {expected:?}")]
    WrongTenant { expected: String, sent: String },
    #[error("the first frame was not a start frame")]
    NotStart,
    #[error("a handed data key is malformed: {0}")]
    Key(#[from] VaultError),
}

/// Reads the start frame: the keys the worker is handed, for the tenant it was started for.
pub async fn receive_start(
    stream: &mut UnixStream,
    tenant: &TenantId,
) -> Result<Vec<HandedKey>, StartError> {
    match read_frame::<_, ToWorker>(stream).await? {
        ToWorker::Start { tenant: sent, keys } if sent == tenant.as_str() => keys
            .iter()
            .map(HandedKey::from_wire)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Key),
        ToWorker::Start { tenant: sent, .. } => Err(StartError::WrongTenant {
            expected: tenant.to_string(),
            sent,
        }),
        _ => Err(StartError::NotStart),
    }
}

/// Announces the worker ready, then answers requests until the control plane drains it or
/// goes away (then the worker has no reason to live and returns).
/// `link` is the store's link to the control plane (`WorkerLink::new`), and `outbox` the
/// frames it made; every frame the worker sends goes through it.
pub async fn serve(
    state: AppState,
    tenant: TenantId,
    stream: UnixStream,
    ready: FromWorker,
    link: Arc<WorkerLink>,
    mut outbox: mpsc::UnboundedReceiver<FromWorker>,
) -> Result<(), FrameError> {
    let (mut reader, mut writer) = stream.into_split();
    let Some(out) = link.frames() else {
        return Ok(());
    };
    let writing = {
        let link = link.clone();
        tokio::spawn(async move {
            while let Some(frame) = outbox.recv().await {
                match (write_frame(&mut writer, &frame).await, &frame) {
                    // Nothing was written: the call fails, the channel goes on.
                    (Err(FrameError::TooLarge(bytes)), FromWorker::Store { call, .. }) => {
                        tracing::warn!(bytes, "a store call is larger than a frame; failed");
                        link.answered(*call, Err(WorkerLink::too_large()));
                    }
                    (written, _) => written?,
                }
            }
            Ok::<_, FrameError>(())
        })
    };
    let _ = out.send(ready);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let router = crate::app(state.clone());
    // Set once a drain has seen the last request finish; until then the loop keeps reading,
    // since the requests in flight may still be waiting for the answers to store calls.
    let drained = Arc::new(tokio::sync::Notify::new());
    let outcome = loop {
        let read = tokio::select! {
            read = read_frame::<_, ToWorker>(&mut reader) => read,
            () = drained.notified() => break Ok(()),
        };
        let frame = match read {
            Ok(frame) => frame,
            Err(FrameError::Closed) => {
                tracing::info!("the control plane closed the channel; exiting");
                break Ok(());
            }
            Err(error) => break Err(error),
        };
        match frame {
            ToWorker::Run { id, call } => {
                let (state, tenant, frames) = (state.clone(), tenant.clone(), out.clone());
                answer_in_background(&in_flight, &out, async move {
                    run(&state, &tenant, id, *call, &frames).await
                });
            }
            ToWorker::Http { id, call } => {
                let (tenant, frames) = (tenant.clone(), out.clone());
                let router = router.clone();
                answer_in_background(&in_flight, &out, async move {
                    http(router, &tenant, id, *call, &frames).await
                });
            }
            ToWorker::Resume { id, run_id, caller } => {
                let (state, tenant) = (state.clone(), tenant.clone());
                answer_in_background(&in_flight, &out, async move {
                    resume(&state, &tenant, id, run_id, caller).await
                });
            }
            ToWorker::StoreAnswer { call, answer } => link.answered(call, answer),
            ToWorker::Health { id } => {
                let _ = out.send(FromWorker::Healthy {
                    id,
                    in_flight: in_flight.load(Ordering::SeqCst),
                });
            }
            ToWorker::Drain { id } => {
                let (in_flight, out, drained) = (in_flight.clone(), out.clone(), drained.clone());
                tokio::spawn(async move {
                    while in_flight.load(Ordering::SeqCst) > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    tracing::info!("drained; exiting");
                    let _ = out.send(FromWorker::Drained { id });
                    drained.notify_one();
                });
            }
            ToWorker::Start { .. } => {
                tracing::warn!("ignoring a second start frame");
            }
        }
    };
    drop(out);
    link.shut_down();
    // Whatever was answered reaches the control plane before the process exits.
    match writing.await {
        Ok(Err(error)) if outcome.is_ok() => Err(error),
        _ => outcome,
    }
}

/// Does a request's work on a task of its own, counted in flight until its last frame is
/// sent.
fn answer_in_background(
    in_flight: &Arc<AtomicUsize>,
    out: &mpsc::UnboundedSender<FromWorker>,
    work: impl Future<Output = FromWorker> + Send + 'static,
) {
    in_flight.fetch_add(1, Ordering::SeqCst);
    let (in_flight, out) = (in_flight.clone(), out.clone());
    tokio::spawn(async move {
        let answer = work.await;
        let _ = out.send(answer);
        in_flight.fetch_sub(1, Ordering::SeqCst);
    });
}

/// One forwarded run; the frame returned is its last.
async fn run(
    state: &AppState,
    tenant: &TenantId,
    id: u64,
    call: RunCall,
    out: &mpsc::UnboundedSender<FromWorker>,
) -> FromWorker {
    let refused = |code: &str, detail: String| FromWorker::refused(id, code, detail);
    let ctx = match context(tenant, call.caller, id) {
        Ok(ctx) => ctx,
        Err(refusal) => return *refusal,
    };
    let span = worker_span("worker.run", &ctx);
    async move {
        let store = state.store().tenant(&ctx);
        let agent = match AgentName::try_from(call.agent.as_str()) {
            Ok(name) => match store.agent(&name).await {
                Ok(Some(agent)) => agent,
                Ok(None) => return refused("not_found", "not found".into()),
                Err(error) => return refused("internal", error.to_string()),
            },
            Err(_) => return refused("not_found", "not found".into()),
        };
        let input = RunInput {
            input: call.input,
            user: call.end_user,
            thread_id: call.thread_id,
        };
        let stream = call.stream;
        let mut sink = |event: RunEvent| {
            if let RunEvent::Started { run_id, .. } = &event {
                let _ = out.send(FromWorker::RunStarted {
                    id,
                    run_id: run_id.clone(),
                });
            }
            if stream {
                let data = serde_json::to_string(&event).unwrap_or_default();
                let _ = out.send(FromWorker::Event {
                    id,
                    name: event.name().to_owned(),
                    data,
                });
            }
        };
        match state
            .runner()
            .run_observed(&store, &agent, input, &mut sink, stream)
            .await
        {
            Ok(run) => FromWorker::Done {
                id,
                run_id: run.run_id,
            },
            Err(error) => {
                let error = crate::routes::runs::run_error(error);
                refused(error.code(), error.to_string())
            }
        }
    }
    .instrument(span)
    .await
}

/// The context of a forwarded request: this worker's own tenant, as the control plane
/// authenticated it, with the caller it authenticated. One that cannot be built is the
/// request's refusal (`id`'s last frame), boxed since a frame is large.
fn context(tenant: &TenantId, caller: Caller, id: u64) -> Result<TenantContext, Box<FromWorker>> {
    let refused = |detail: String| Box::new(FromWorker::refused(id, "unauthenticated", detail));
    let record = caller.tenant_record(tenant);
    let request_id = caller.request_id();
    let principal = caller
        .principal
        .principal()
        .ok_or_else(|| refused("the forwarded principal is malformed".to_owned()))?;
    bulkhead_core::auth::forwarded_context(
        Some(&record),
        tenant,
        principal,
        caller.roles,
        request_id,
    )
    .map_err(|error| refused(error.to_string()))
}

fn worker_span(name: &'static str, ctx: &TenantContext) -> tracing::Span {
    tracing::info_span!("worker",
        otel.name = name,
        tenant.id = %ctx.tenant_id(),
        request.id = %ctx.request_id().as_str(),
        trace.id = %ctx.request_id().trace_id(),
        process.pid = std::process::id(),
        isolation = "dedicated",
    )
}

/// One forwarded request, answered by this worker's own router with the forwarded context;
/// every frame of the answer is sent here, the last one returned.
async fn http(
    router: axum::Router,
    tenant: &TenantId,
    id: u64,
    call: HttpCall,
    out: &mpsc::UnboundedSender<FromWorker>,
) -> FromWorker {
    let refused = |code: &str, detail: String| FromWorker::refused(id, code, detail);
    let ctx = match context(tenant, call.caller, id) {
        Ok(ctx) => ctx,
        Err(refusal) => return *refusal,
    };
    let span = worker_span("worker.http", &ctx);
    let request = match forwarded_request(&call.method, &call.uri, &call.headers, &call.body) {
        Ok(mut request) => {
            request.extensions_mut().insert(PreAuthenticated(ctx));
            request
        }
        Err(detail) => return refused("malformed_body", detail),
    };
    async move {
        let Ok(response) = router.oneshot(request).await;
        let (parts, body) = response.into_parts();
        let mut headers: Vec<(String, String)> =
            parts.headers.iter().filter_map(header_pair).collect();
        headers.push((SERVED_BY_HEADER.to_owned(), std::process::id().to_string()));
        let _ = out.send(FromWorker::Head {
            id,
            status: parts.status.as_u16(),
            headers,
        });
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(bytes) => {
                    let _ = out.send(FromWorker::Body {
                        id,
                        data: BASE64.encode(&bytes),
                    });
                }
                Err(error) => return refused("internal", error.to_string()),
            }
        }
        FromWorker::End { id }
    }
    .instrument(span)
    .await
}

fn forwarded_request(
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<axum::extract::Request, String> {
    let body = BASE64.decode(body).map_err(|e| format!("body: {e}"))?;
    let mut builder = axum::http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder
        .body(axum::body::Body::from(body))
        .map_err(|e| e.to_string())
}

/// A paused run of this tenant continued here; answered `Done` (however it ended) or
/// `Refused`.
async fn resume(
    state: &AppState,
    tenant: &TenantId,
    id: u64,
    run_id: String,
    caller: Caller,
) -> FromWorker {
    let ctx = match context(tenant, caller, id) {
        Ok(ctx) => ctx,
        Err(refusal) => return *refusal,
    };
    let span = worker_span("worker.resume", &ctx);
    async {
        match state
            .runner()
            .resume(&state.store().tenant(&ctx), &run_id)
            .await
        {
            Ok(_) => FromWorker::Done { id, run_id },
            Err(error) => {
                let error = crate::routes::runs::run_error(error);
                FromWorker::refused(id, error.code(), error.to_string())
            }
        }
    }
    .instrument(span)
    .await
}
