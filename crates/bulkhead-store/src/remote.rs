//! Stage 2 of hard isolation: a dedicated worker's [`TenantStore`] calls, answered by the
//! control plane over the worker's channel instead of by a database the worker opens.
//!
//! A worker's store is made with [`Store::with_link`](crate::Store::with_link). A method that
//! has moved (it begins with `remote!`) sends its name, its arguments as JSON and the id of
//! the forwarded request it serves; the control plane looks that request up among the ones
//! it forwarded *on that worker's channel*, builds the handle from the context it
//! authenticated itself, and answers through [`answer`]. So the tenant of every call is the
//! channel's, and the caller is the one the control plane authenticated: nothing the worker
//! sends can name another tenant or another principal.
//!
//! A worker's store is [`Store::linked`](crate::Store::linked): it has no database at all.
//! A method that has not moved, and every `AdminStore` call, fails there with
//! `StoreError::Unsupported` instead of reaching any row. Calls whose answer nobody waits
//! for (usage counts) are [`StoreLink::notify`].

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, PoisonError};

use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::{AgentName, ConnectorName, PromptName, RequestId, TenantContext};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::knowledge::INDEX_PAGE;
use crate::{
    ApprovalDraft, DocumentWrite, NewChunk, RunEnd, RunProcess, RunProgress, StoreError,
    TenantStore,
};

pub type LinkFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, StoreError>> + Send + 'a>>;

/// The worker's end of the channel, as the store sees it.
pub trait StoreLink: Send + Sync {
    /// Sends one call made while serving the forwarded request `request` and waits for its
    /// answer. The call is on its way when this returns, before the future is polled: the
    /// control plane reads it before any later frame of the same request, and so before the
    /// request's last one.
    fn call(&self, request: &RequestId, method: &'static str, args: Value) -> LinkFuture<'_>;

    /// Sends a call whose answer nobody waits for (counting usage). A failure is logged by
    /// the control plane.
    fn notify(&self, request: &RequestId, method: &'static str, args: Value) {
        drop(self.call(request, method, args));
    }
}

/// Sends a call whose answer nobody waits for; see [`StoreLink::notify`].
pub(crate) fn notify<A: Serialize>(
    link: &dyn StoreLink,
    ctx: &TenantContext,
    method: &'static str,
    args: A,
) {
    match serde_json::to_value(args) {
        Ok(args) => link.notify(ctx.request_id(), method, args),
        Err(error) => tracing::warn!(method, %error, "cannot encode a store call; not sent"),
    }
}

/// A failed call as it crosses the channel: the error's kind and its message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteFailure {
    pub kind: String,
    pub detail: String,
}

impl From<&StoreError> for RemoteFailure {
    fn from(error: &StoreError) -> Self {
        let (kind, detail) = match error {
            StoreError::Conflict(what) => ("conflict", (*what).to_owned()),
            StoreError::NotFound(what) => ("not_found", (*what).to_owned()),
            StoreError::Unsupported(what) => ("unsupported", (*what).to_owned()),
            StoreError::Corrupt(detail) => ("corrupt", detail.clone()),
            StoreError::EventWriter(detail) => ("event_writer", detail.clone()),
            // The database's own errors stay on the control plane's side, in its log.
            other => {
                tracing::error!(error = %other, "a worker's store call failed");
                (
                    "remote",
                    "the control plane could not answer the store call".to_owned(),
                )
            }
        };
        Self {
            kind: kind.to_owned(),
            detail,
        }
    }
}

impl From<RemoteFailure> for StoreError {
    fn from(failure: RemoteFailure) -> Self {
        match failure.kind.as_str() {
            "conflict" => StoreError::Conflict(intern(failure.detail)),
            "not_found" => StoreError::NotFound(intern(failure.detail)),
            "unsupported" => StoreError::Unsupported(intern(failure.detail)),
            "corrupt" => StoreError::Corrupt(failure.detail),
            "event_writer" => StoreError::EventWriter(failure.detail),
            _ => StoreError::Remote(failure.detail),
        }
    }
}

/// `StoreError` names what conflicted or was missing with a `&'static str`; across the
/// channel that name arrives as a string. The names are the store's own few fixed nouns and
/// messages (the control plane never puts a worker's input in one), so each distinct one is
/// kept once for the life of the worker.
/// Audit actions arrive the same way from a worker, which is not trusted: past
/// `MAX_NAMES` distinct names nothing new is kept, so a hostile worker cannot grow the
/// control plane's memory this way.
fn intern(name: String) -> &'static str {
    const MAX_NAMES: usize = 4096;
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name.as_str()) {
        return known;
    }
    if names.len() >= MAX_NAMES {
        return "(name not kept: too many distinct names)";
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Encodes the arguments, sends the call and decodes its answer.
pub(crate) async fn call<A: Serialize, R: DeserializeOwned>(
    link: &dyn StoreLink,
    ctx: &TenantContext,
    method: &'static str,
    args: A,
) -> Result<R, StoreError> {
    let args = serde_json::to_value(args)
        .map_err(|e| StoreError::Remote(format!("cannot encode the arguments of {method}: {e}")))?;
    let answer = link.call(ctx.request_id(), method, args).await?;
    serde_json::from_value(answer)
        .map_err(|e| StoreError::Remote(format!("cannot decode the answer to {method}: {e}")))
}

/// The first statement of a method that a worker's store sends to the control plane.
macro_rules! remote {
    ($store:expr, $method:ident $(, $arg:expr)* $(,)?) => {
        if let Some(link) = $store.link {
            return $crate::remote::call(link, $store.context(), stringify!($method), ($($arg,)*))
                .await;
        }
    };
}
pub(crate) use remote;

/// An audit draft as it crosses the channel: its action is a `&'static str` on either side.
#[derive(Serialize, Deserialize)]
pub(crate) struct DraftWire {
    action: String,
    resource: String,
    outcome: Outcome,
    details: Value,
}

impl From<&AuditDraft> for DraftWire {
    fn from(draft: &AuditDraft) -> Self {
        Self {
            action: draft.action.to_owned(),
            resource: draft.resource.clone(),
            outcome: draft.outcome,
            details: draft.details.clone(),
        }
    }
}

impl From<DraftWire> for AuditDraft {
    fn from(wire: DraftWire) -> Self {
        Self {
            action: intern(wire.action),
            resource: wire.resource,
            outcome: wire.outcome,
            details: wire.details,
        }
    }
}

/// A document write as it crosses the channel (`DocumentWrite` borrows its fields).
#[derive(Deserialize)]
struct DocumentWire {
    doc_id: String,
    title: String,
    content_type: String,
    metadata: Value,
    content_hash: String,
    bytes: i64,
    chunks: Vec<NewChunk>,
}

/// The caller label of an approval a worker consumes: `mcp:<principal>` only for the
/// principal the control plane authenticated for the request, otherwise an agent's name (which
/// the control plane cannot check: it does not know which agent a forwarded gateway call
/// runs). So a worker cannot spend an approval granted to another person's MCP call.
fn check_approval_caller(ctx: &TenantContext, caller: &str) -> Result<(), StoreError> {
    let allowed = match caller.strip_prefix("mcp:") {
        Some(principal) => principal == ctx.principal().to_string(),
        None => AgentName::try_from(caller).is_ok(),
    };
    if allowed {
        return Ok(());
    }
    tracing::warn!("a worker consumed an approval for a caller other than its request's; refused");
    Err(StoreError::Unsupported(
        "an approval for a caller other than the request's",
    ))
}

/// Decodes a call's arguments. What a worker sends is not trusted: a malformed call is
/// refused with a fixed message (the detail goes to the log, never into a string the process
/// keeps).
fn decode<T: DeserializeOwned>(method: &str, args: Value) -> Result<T, StoreError> {
    serde_json::from_value(args).map_err(|error| {
        tracing::warn!(method, %error, "a worker's store call has malformed arguments; refused");
        StoreError::Unsupported("a store call with malformed arguments")
    })
}

fn encode<T: Serialize>(value: T) -> Result<Value, StoreError> {
    serde_json::to_value(value)
        .map_err(|e| StoreError::Remote(format!("cannot encode an answer: {e}")))
}

/// Answers a worker's call on the control plane, through `store`: the handle of the context
/// the control plane authenticated for the request the call serves. `process` is the worker's
/// process as the control plane knows it (the kernel's peer pid), recorded on the runs it
/// starts whatever the worker says.
pub async fn answer(
    store: &TenantStore<'_>,
    process: RunProcess,
    method: &str,
    args: Value,
) -> Result<Value, StoreError> {
    match method {
        "tenant" => encode(store.tenant().await?),
        "agent" => {
            let (name,): (AgentName,) = decode(method, args)?;
            encode(store.agent(&name).await?)
        }
        "agent_version" => {
            let (name, version): (AgentName, i64) = decode(method, args)?;
            encode(store.agent_version(&name, version).await?)
        }
        "prompt" => {
            let (name,): (PromptName,) = decode(method, args)?;
            encode(store.prompt(&name).await?)
        }
        "prompts" => encode(store.prompts().await?),
        "start_run" => {
            let (run_id, thread_id, agent, version, input): (
                String,
                Option<String>,
                AgentName,
                i64,
                String,
            ) = decode(method, args)?;
            encode(
                store
                    .start_run(
                        &run_id,
                        thread_id.as_deref(),
                        &agent,
                        version,
                        &input,
                        process,
                    )
                    .await?,
            )
        }
        "record_run_progress" => {
            let (run_id, progress): (String, RunProgress) = decode(method, args)?;
            encode(store.record_run_progress(&run_id, &progress).await?)
        }
        "finish_run" => {
            let (run_id, end): (String, RunEnd) = decode(method, args)?;
            encode(store.finish_run(&run_id, &end).await?)
        }
        "run" => {
            let (run_id,): (String,) = decode(method, args)?;
            encode(store.run(&run_id).await?)
        }
        "create_thread" => {
            let (thread_id, end_user): (String, String) = decode(method, args)?;
            encode(store.create_thread(&thread_id, &end_user).await?)
        }
        "thread_messages" => {
            let (thread_id, end_user): (String, String) = decode(method, args)?;
            encode(store.thread_messages(&thread_id, &end_user).await?)
        }
        "append_thread" => {
            let (thread_id, messages): (String, Vec<(String, String)>) = decode(method, args)?;
            let messages: Vec<(&str, &str)> = messages
                .iter()
                .map(|(role, text)| (role.as_str(), text.as_str()))
                .collect();
            encode(store.append_thread(&thread_id, &messages).await?)
        }
        "record_event" => {
            let (draft,): (DraftWire,) = decode(method, args)?;
            encode(store.record_event(draft.into()).await?)
        }
        "data_keys" => encode(store.data_keys().await?),
        "credential" => {
            let (connector,): (ConnectorName,) = decode(method, args)?;
            encode(store.credential(&connector).await?)
        }
        "credential_with_key" => {
            let (connector,): (ConnectorName,) = decode(method, args)?;
            encode(store.credential_with_key(&connector).await?)
        }
        "extra_models" => encode(store.extra_models().await?),
        "tokens_spent_today" => encode(store.tokens_spent_today().await?),
        "toolset" => {
            let (name,): (String,) = decode(method, args)?;
            encode(store.toolset(&name).await?)
        }
        "toolsets" => encode(store.toolsets().await?),
        "policies" => encode(store.policies().await?),
        "policy_generation" => encode(store.policy_generation().await?),
        "request_approval" => {
            let (draft, progress): (ApprovalDraft, RunProgress) = decode(method, args)?;
            encode(store.request_approval(&draft, &progress).await?)
        }
        "run_approval" => {
            let (run_id,): (String,) = decode(method, args)?;
            encode(store.run_approval(&run_id).await?)
        }
        "request_call_approval" => {
            let (draft,): (ApprovalDraft,) = decode(method, args)?;
            encode(store.request_call_approval(&draft).await?)
        }
        "consume_approval" => {
            let (caller, tool, arguments): (String, String, String) = decode(method, args)?;
            check_approval_caller(store.context(), &caller)?;
            encode(store.consume_approval(&caller, &tool, &arguments).await?)
        }
        "ensure_knowledge_base" => {
            let (kb, embedder, dimensions): (String, String, usize) = decode(method, args)?;
            encode(
                store
                    .ensure_knowledge_base(&kb, &embedder, dimensions)
                    .await?,
            )
        }
        "knowledge_base" => {
            let (kb,): (String,) = decode(method, args)?;
            encode(store.knowledge_base(&kb).await?)
        }
        "knowledge_bases" => encode(store.knowledge_bases().await?),
        "knowledge_head" => {
            let (kb,): (String,) = decode(method, args)?;
            encode(store.knowledge_head(&kb).await?)
        }
        "document_hash" => {
            let (kb, doc_id): (String, String) = decode(method, args)?;
            encode(store.document_hash(&kb, &doc_id).await?)
        }
        "document" => {
            let (kb, doc_id): (String, String) = decode(method, args)?;
            encode(store.document(&kb, &doc_id).await?)
        }
        "documents" => {
            let (kb,): (String,) = decode(method, args)?;
            encode(store.documents(&kb).await?)
        }
        "put_document" => {
            let (kb, wire): (String, DocumentWire) = decode(method, args)?;
            let write = DocumentWrite {
                doc_id: &wire.doc_id,
                title: &wire.title,
                content_type: &wire.content_type,
                metadata: &wire.metadata,
                content_hash: &wire.content_hash,
                bytes: wire.bytes,
                chunks: wire.chunks,
            };
            encode(store.put_document(&kb, &write).await?)
        }
        "delete_document" => {
            let (kb, doc_id): (String, String) = decode(method, args)?;
            encode(store.delete_document(&kb, &doc_id).await?)
        }
        "delete_knowledge_base" => {
            let (kb,): (String,) = decode(method, args)?;
            encode(store.delete_knowledge_base(&kb).await?)
        }
        "knowledge_index_page" => {
            // A worker asking for more per page than it should still gets answers that fit
            // in a frame.
            let (kb, after, limit): (String, i64, i64) = decode(method, args)?;
            let limit = limit.clamp(1, INDEX_PAGE);
            encode(store.knowledge_index_page(&kb, after, limit).await?)
        }
        "chunks_by_id" => {
            let (kb, ids): (String, Vec<i64>) = decode(method, args)?;
            encode(store.chunks_by_id(&kb, &ids).await?)
        }
        "record_usage" => {
            let (model, agent, input_tokens, output_tokens): (String, Option<String>, u64, u64) =
                decode(method, args)?;
            store.record_usage(&model, agent.as_deref(), input_tokens, output_tokens);
            encode(())
        }
        "record_tool_call" => {
            let (agent, tool, failed): (Option<String>, String, bool) = decode(method, args)?;
            store.record_tool_call(agent.as_deref(), &tool, failed);
            encode(())
        }
        "claim_paused_run" => {
            let (run_id,): (String,) = decode(method, args)?;
            encode(store.claim_paused_run(&run_id, process).await?)
        }
        other => {
            tracing::warn!(
                method = other,
                "a worker called a store method it may not; refused"
            );
            Err(StoreError::Unsupported(
                "a store method a worker may not call",
            ))
        }
    }
}
