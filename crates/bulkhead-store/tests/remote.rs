//! A dedicated worker's store calls (`bulkhead_store::remote`): what a linked handle sends is
//! answered in the tenant of the channel, whatever context the worker made the handle from.
//! The channel here is in-process, bound to one tenant as the control plane binds a worker's;
//! `crates/bulkhead/tests/workers.rs` runs the same calls over a real worker's socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bulkhead_core::{AgentName, Isolation, RequestId, Role, TenantContext};
use bulkhead_store::remote::{LinkFuture, StoreLink, answer};
use bulkhead_store::testing::create_tenant;
use bulkhead_store::{DocumentWrite, NewChunk, RunProcess, Store, StoreError, StoreOptions};
use serde_json::{Value, json};

/// The control plane's end of one worker's channel: every call is answered as `tenant`.
struct BoundChannel {
    store: Store,
    tenant: TenantContext,
    calls: AtomicUsize,
    index_pages: AtomicUsize,
    /// Once set, the knowledge base changes just before the second page of an index is
    /// answered (as another request's write would).
    change_before_second_page: AtomicBool,
    /// Calls nobody waits for, answered on tasks of their own as the control plane does.
    notified: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl BoundChannel {
    fn new(store: &Store, tenant: &TenantContext) -> Arc<Self> {
        Arc::new(Self {
            store: store.clone(),
            tenant: tenant.clone(),
            calls: AtomicUsize::new(0),
            index_pages: AtomicUsize::new(0),
            change_before_second_page: AtomicBool::new(false),
            notified: Default::default(),
        })
    }

    async fn notified_calls_answered(&self) {
        let handles = std::mem::take(&mut *self.notified.lock().unwrap());
        for handle in handles {
            handle.await.unwrap();
        }
    }
}

impl StoreLink for BoundChannel {
    fn call(&self, _request: &RequestId, method: &'static str, args: Value) -> LinkFuture<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if method == "knowledge_index_page"
                && self.index_pages.fetch_add(1, Ordering::SeqCst) == 1
                && self.change_before_second_page.swap(false, Ordering::SeqCst)
            {
                let texts = ["a change made between two pages"];
                let store = self.store.tenant(&self.tenant);
                store
                    .put_document("kb", &document("late", &texts))
                    .await
                    .unwrap();
            }
            // What crosses a real channel is JSON text.
            let args: Value = serde_json::from_str(&args.to_string()).unwrap();
            let process = RunProcess {
                id: 4242,
                isolation: Isolation::Dedicated,
            };
            answer(&self.store.tenant(&self.tenant), process, method, args).await
        })
    }

    fn notify(&self, _request: &RequestId, method: &'static str, args: Value) {
        let (store, tenant) = (self.store.clone(), self.tenant.clone());
        let process = RunProcess::current(Isolation::Dedicated);
        let handle = tokio::spawn(async move {
            answer(&store.tenant(&tenant), process, method, args)
                .await
                .unwrap();
        });
        self.notified.lock().unwrap().push(handle);
    }
}

async fn open(path: &Path) -> Store {
    Store::open_sqlite(path, &StoreOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_linked_handle_reads_and_writes_in_the_channels_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.db");
    let control = open(&path).await;
    let acme = create_tenant(&control, "acme", "local").await;
    let globex = create_tenant(&control, "globex", "local").await;
    let acme_ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    let globex_ctx = TenantContext::for_tests(&globex, &[Role::Owner]);
    let helper = AgentName::try_from("helper").unwrap();
    control
        .tenant(&acme_ctx)
        .put_agent(&helper, &json!({"model": "acme-model"}))
        .await
        .unwrap();
    control
        .tenant(&globex_ctx)
        .put_agent(&helper, &json!({"model": "globex-model"}))
        .await
        .unwrap();

    let channel = BoundChannel::new(&control, &acme_ctx);
    let worker = Store::linked(channel.clone());

    // Acme's worker asks as acme: acme's agent, through the channel.
    let agent = worker
        .tenant(&acme_ctx)
        .agent(&helper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agent.spec["model"], "acme-model");
    assert_eq!(channel.calls.load(Ordering::SeqCst), 1);

    // A compromised acme worker that makes a handle from a context naming globex still gets
    // acme's rows: the channel decides the tenant, not the handle.
    let forged = worker.tenant(&globex_ctx);
    let agent = forged.agent(&helper).await.unwrap().unwrap();
    assert_eq!(agent.spec["model"], "acme-model");
    assert_eq!(forged.tenant().await.unwrap().unwrap().id, acme.id);

    // Writes land in acme's rows too, with the process the control plane knows the worker
    // by, not one the worker names.
    forged
        .start_run(
            "run_remote",
            None,
            &helper,
            agent.version,
            "hi",
            RunProcess {
                id: 1,
                isolation: Isolation::Shared,
            },
        )
        .await
        .unwrap();
    let run = control
        .tenant(&acme_ctx)
        .run("run_remote")
        .await
        .unwrap()
        .expect("the run is acme's");
    assert_eq!(run.process_id, Some(4242));
    assert_eq!(run.isolation.as_deref(), Some("dedicated"));
    assert!(
        control
            .tenant(&globex_ctx)
            .run("run_remote")
            .await
            .unwrap()
            .is_none()
    );

    // A linked store has no database: a method that has not moved (no agent work calls it)
    // and every control-plane call fail there, without sending anything; a name the control
    // plane does not serve is refused there.
    let before = channel.calls.load(Ordering::SeqCst);
    let unmoved = worker.tenant(&acme_ctx).agents().await;
    assert!(
        matches!(unmoved, Err(StoreError::Unsupported(_))),
        "{unmoved:?}"
    );
    let admin = worker.admin().list_tenants(None, 10).await;
    assert!(
        matches!(admin, Err(StoreError::Unsupported(_))),
        "{admin:?}"
    );
    assert_eq!(channel.calls.load(Ordering::SeqCst), before);
    let refused = answer(
        &control.tenant(&acme_ctx),
        RunProcess::current(Isolation::Dedicated),
        "delete_agent",
        json!(["helper"]),
    )
    .await;
    assert!(
        matches!(refused, Err(StoreError::Unsupported(_))),
        "{refused:?}"
    );
    // An approval is consumed only for the request's own principal (or an agent).
    let ctx_principal = format!("mcp:{}", acme_ctx.principal());
    for (caller, allowed) in [
        (ctx_principal.as_str(), true),
        ("mcp:someone-else", false),
        ("helper", true),
        ("not an agent name!", false),
    ] {
        let consumed = answer(
            &control.tenant(&acme_ctx),
            RunProcess::current(Isolation::Dedicated),
            "consume_approval",
            json!([caller, "slack.post_message", "{}"]),
        )
        .await;
        match allowed {
            true => assert_eq!(consumed.unwrap(), Value::Null, "{caller}"),
            false => assert!(
                matches!(consumed, Err(StoreError::Unsupported(_))),
                "{caller}: {consumed:?}"
            ),
        }
    }
    // Malformed arguments are refused, not a panic.
    let malformed = answer(
        &control.tenant(&acme_ctx),
        RunProcess::current(Isolation::Dedicated),
        "agent",
        json!({"name": 7}),
    )
    .await;
    assert!(
        matches!(malformed, Err(StoreError::Unsupported(_))),
        "{malformed:?}"
    );
}

fn document<'a>(doc_id: &'a str, texts: &[&str]) -> DocumentWrite<'a> {
    static METADATA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DocumentWrite {
        doc_id,
        title: doc_id,
        content_type: "text/plain",
        metadata: METADATA.get_or_init(|| json!({})),
        content_hash: doc_id,
        bytes: 1,
        chunks: texts
            .iter()
            .enumerate()
            .map(|(i, text)| NewChunk {
                position: i as i64,
                heading_path: vec!["Top".to_owned()],
                text: (*text).to_owned(),
                embedding: vec![i as f32, 0.5, -0.25, 1.0],
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_worker_reads_a_large_index_in_pages_of_one_version_and_counts_usage_remotely() {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&dir.path().join("bulkhead.db")).await;
    let acme = create_tenant(&control, "acme", "local").await;
    let globex = create_tenant(&control, "globex", "local").await;
    let acme_ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    let globex_ctx = TenantContext::for_tests(&globex, &[Role::Owner]);
    let channel = BoundChannel::new(&control, &acme_ctx);
    let worker = Store::linked(channel.clone());
    // The worker writes through the channel; a handle naming globex writes acme's rows.
    let forged = worker.tenant(&globex_ctx);
    forged
        .ensure_knowledge_base("kb", "local", 4)
        .await
        .unwrap();
    let texts: Vec<String> = (0..1100).map(|i| format!("chunk {i}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let change = forged
        .put_document("kb", &document("big", &texts))
        .await
        .unwrap();
    assert_eq!(change.added_chunk_ids.len(), 1100);
    assert!(
        control
            .tenant(&globex_ctx)
            .knowledge_head("kb")
            .await
            .unwrap()
            .is_none()
    );
    let head = control
        .tenant(&acme_ctx)
        .knowledge_head("kb")
        .await
        .unwrap()
        .unwrap();

    // More chunks than a page: read in three pages, all of one version.
    let pages_before = channel.index_pages.load(Ordering::SeqCst);
    let (version, chunks) = forged.knowledge_index_source("kb").await.unwrap().unwrap();
    assert_eq!(channel.index_pages.load(Ordering::SeqCst) - pages_before, 3);
    assert_eq!(
        (version.generation, version.epoch),
        (head.generation, head.created_at)
    );
    assert_eq!(chunks.len(), 1100);
    assert!(chunks.windows(2).all(|w| w[0].chunk_id < w[1].chunk_id));
    assert_eq!(chunks[1099].text, "chunk 1099");
    assert_eq!(chunks[7].embedding, vec![7.0, 0.5, -0.25, 1.0]);
    let (_, direct) = control
        .tenant(&acme_ctx)
        .knowledge_index_source("kb")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(direct.len(), chunks.len());

    // A change between two pages: the pages of the old version are thrown away and the
    // source is read again, whole, at the new version.
    channel
        .change_before_second_page
        .store(true, Ordering::SeqCst);
    channel.index_pages.store(0, Ordering::SeqCst);
    let (changed, chunks) = forged.knowledge_index_source("kb").await.unwrap().unwrap();
    assert_eq!(changed.generation, version.generation + 1);
    assert_eq!(chunks.len(), 1101);
    assert_eq!(channel.index_pages.load(Ordering::SeqCst), 2 + 3);
    let found = forged
        .chunks_by_id("kb", &[chunks[0].chunk_id, chunks[1100].chunk_id])
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(
        forged.document_hash("kb", "big").await.unwrap().as_deref(),
        Some("big")
    );

    // Usage is counted by the control plane, in the channel's tenant.
    forged.record_usage("gpt", None, 10, 5);
    forged.record_tool_call(None, "slack.post", false);
    channel.notified_calls_answered().await;
    let usage = control.tenant(&acme_ctx).usage().await.unwrap();
    assert_eq!(
        usage
            .iter()
            .map(|row| (row.model.as_str(), row.requests))
            .collect::<Vec<_>>(),
        [("gpt", 1)]
    );
    assert_eq!(
        control.tenant(&acme_ctx).tool_usage().await.unwrap().len(),
        1
    );
    assert!(
        control
            .tenant(&globex_ctx)
            .usage()
            .await
            .unwrap()
            .is_empty()
    );
}
