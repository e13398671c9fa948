//! The worker's side of the channel: one tenant's runs, answered over the socket the worker
//! opened to the control plane.
//!
//! Every context is built here from the worker's own tenant record and what the control
//! plane authenticated; a frame has no field that names a tenant, so no request can reach
//! another tenant's rows through this process's handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bulkhead_core::{AgentName, TenantId};
use bulkhead_runtime::runs::{RunEvent, RunInput};
use bulkhead_vault::{HandedKey, VaultError};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::AppState;
use crate::worker::frames::{FrameError, FromWorker, RunCall, ToWorker, read_frame, write_frame};

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
pub async fn serve(
    state: AppState,
    tenant: TenantId,
    stream: UnixStream,
    ready: FromWorker,
) -> Result<(), FrameError> {
    let (mut reader, mut writer) = stream.into_split();
    let (out, mut outbox) = mpsc::unbounded_channel::<FromWorker>();
    let writing = tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            write_frame(&mut writer, &frame).await?;
        }
        Ok::<_, FrameError>(())
    });
    let _ = out.send(ready);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let outcome = loop {
        let frame = match read_frame::<_, ToWorker>(&mut reader).await {
            Ok(frame) => frame,
            Err(FrameError::Closed) => {
                tracing::info!("the control plane closed the channel; exiting");
                break Ok(());
            }
            Err(error) => break Err(error),
        };
        match frame {
            ToWorker::Run { id, call } => {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let (state, tenant, out, in_flight) = (
                    state.clone(),
                    tenant.clone(),
                    out.clone(),
                    in_flight.clone(),
                );
                tokio::spawn(async move {
                    let answer = run(&state, &tenant, id, *call, &out).await;
                    let _ = out.send(answer);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            ToWorker::Health { id } => {
                let _ = out.send(FromWorker::Healthy {
                    id,
                    in_flight: in_flight.load(Ordering::SeqCst),
                });
            }
            ToWorker::Drain { id } => {
                while in_flight.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tracing::info!("drained; exiting");
                let _ = out.send(FromWorker::Drained { id });
                break Ok(());
            }
            ToWorker::Start { .. } => {
                tracing::warn!("ignoring a second start frame");
            }
        }
    };
    drop(out);
    // Whatever was answered reaches the control plane before the process exits.
    match writing.await {
        Ok(Err(error)) if outcome.is_ok() => Err(error),
        _ => outcome,
    }
}

/// One forwarded run; the frame returned is its last.
async fn run(
    state: &AppState,
    tenant: &TenantId,
    id: u64,
    call: RunCall,
    out: &mpsc::UnboundedSender<FromWorker>,
) -> FromWorker {
    let refused = |code: &str, detail: String| FromWorker::Refused {
        id,
        code: code.to_owned(),
        detail,
    };
    let record = match state.store().admin().get_tenant(tenant).await {
        Ok(record) => record,
        Err(error) => return refused("internal", error.to_string()),
    };
    let request_id = call.request_id();
    let Some(principal) = call.principal.principal() else {
        return refused(
            "unauthenticated",
            "the forwarded principal is malformed".into(),
        );
    };
    let ctx = match bulkhead_core::auth::forwarded_context(
        record.as_ref(),
        tenant,
        principal,
        call.roles,
        request_id,
    ) {
        Ok(ctx) => ctx,
        Err(error) => return refused("unauthenticated", error.to_string()),
    };
    let span = tracing::info_span!("worker.run",
        tenant.id = %ctx.tenant_id(),
        request.id = %ctx.request_id().as_str(),
        trace.id = %ctx.request_id().trace_id(),
        process.pid = std::process::id(),
        isolation = "dedicated",
    );
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
