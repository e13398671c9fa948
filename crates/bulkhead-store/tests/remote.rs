//! A dedicated worker's store calls (`bulkhead_store::remote`): what a linked handle sends is
//! answered in the tenant of the channel, whatever context the worker made the handle from.
//! The channel here is in-process, bound to one tenant as the control plane binds a worker's;
//! `crates/bulkhead/tests/workers.rs` runs the same calls over a real worker's socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bulkhead_core::{AgentName, Isolation, RequestId, Role, TenantContext};
use bulkhead_store::remote::{LinkFuture, StoreLink, answer};
use bulkhead_store::testing::create_tenant;
use bulkhead_store::{RunProcess, Store, StoreError, StoreOptions};
use serde_json::{Value, json};

/// The control plane's end of one worker's channel: every call is answered as `tenant`.
struct BoundChannel {
    store: Store,
    tenant: TenantContext,
    calls: AtomicUsize,
}

impl StoreLink for BoundChannel {
    fn call(&self, _request: &RequestId, method: &'static str, args: Value) -> LinkFuture<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            // What crosses a real channel is JSON text.
            let args: Value = serde_json::from_str(&args.to_string()).unwrap();
            let process = RunProcess {
                id: 4242,
                isolation: Isolation::Dedicated,
            };
            answer(&self.store.tenant(&self.tenant), process, method, args).await
        })
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

    let channel = Arc::new(BoundChannel {
        store: control.clone(),
        tenant: acme_ctx.clone(),
        calls: AtomicUsize::new(0),
    });
    let worker = open(&path).await.with_link(channel.clone());

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

    // A method that has not moved is not sent (it still uses the worker's own connection),
    // and a name the control plane does not serve is refused there.
    let before = channel.calls.load(Ordering::SeqCst);
    worker.tenant(&acme_ctx).agents().await.unwrap();
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
