//! Runs of dedicated tenants: authenticated and admitted here, executed by the tenant's own
//! worker process (`crate::worker`), answered here exactly as a shared run would be.

use axum::Json;
use axum::response::{IntoResponse, Response};
use bulkhead_core::TenantContext;
use tokio::sync::{OwnedRwLockReadGuard, mpsc};

use crate::AppState;
use crate::error::{ApiError, relayed};
use crate::routes::runs::{RunRequest, RunStreamItem, RunView, sse_event};
use crate::routes::streaming;
use crate::worker::WorkerError;
use crate::worker::frames::{FromWorker, RunCall};

pub(crate) async fn run(
    state: AppState,
    ctx: TenantContext,
    gate: OwnedRwLockReadGuard<()>,
    agent: String,
    request: RunRequest,
    stream: bool,
) -> Result<Response, ApiError> {
    let workers = state.workers().ok_or(WorkerError::Disabled)?;
    let call = RunCall {
        principal: ctx.principal().into(),
        roles: ctx.roles().clone(),
        request_id: ctx.request_id().as_str().to_owned(),
        trace_id: ctx.request_id().trace_id().to_owned(),
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
