//! The SQLite audit outbox: an acknowledged event is never lost or repeated, reaches its own
//! tenant's chain only, is read back by its own process at once, and what a stopped process
//! left behind is imported before the next one serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;

use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::{Role, TenantContext};
use bulkhead_store::testing::create_tenant;
use bulkhead_store::{Store, StoreOptions};

fn draft(n: usize) -> AuditDraft {
    AuditDraft {
        action: "model.call",
        resource: format!("call-{n}"),
        outcome: Outcome::Success,
        details: serde_json::json!({ "n": n }),
    }
}

fn outbox_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains(".audit-outbox."))
        .collect();
    names.sort();
    names
}

async fn open(path: &Path) -> Store {
    Store::open_sqlite(path, &StoreOptions::default())
        .await
        .unwrap()
}

async fn resources(store: &Store, tenant: &bulkhead_core::Tenant) -> Vec<String> {
    let ctx = TenantContext::for_tests(tenant, &[Role::Owner]);
    let tenants = store.tenant(&ctx);
    let verification = tenants.verify_audit().await.unwrap();
    assert!(verification.error.is_none(), "{verification:?}");
    tenants
        .audit_events(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "model.call")
        .map(|e| e.resource)
        .collect()
}

#[tokio::test]
async fn events_of_two_tenants_reach_their_own_chains_in_order_and_are_read_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("bulkhead.db")).await;
    let acme = create_tenant(&store, "acme", "local").await;
    let globex = create_tenant(&store, "globex", "local").await;
    let acme_ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    let globex_ctx = TenantContext::for_tests(&globex, &[Role::Owner]);
    let mut calls = Vec::new();
    for n in 0..200 {
        let ctx = if n % 3 == 0 { &globex_ctx } else { &acme_ctx };
        let store = store.clone();
        let ctx = ctx.clone();
        calls.push(tokio::spawn(async move {
            store.tenant(&ctx).record_event(draft(n)).await.unwrap();
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    // Read straight after the acknowledgements: the read waits for the import.
    let mut acme_seen = resources(&store, &acme).await;
    let mut globex_seen = resources(&store, &globex).await;
    assert_eq!(
        acme_seen.len() + globex_seen.len(),
        200,
        "none lost, none repeated"
    );
    acme_seen.sort();
    globex_seen.sort();
    let expected = |keep: fn(usize) -> bool| {
        let mut names: Vec<String> = (0..200)
            .filter(|n| keep(*n))
            .map(|n| format!("call-{n}"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        acme_seen,
        expected(|n| n % 3 != 0),
        "acme's chain holds acme's events only"
    );
    assert_eq!(
        globex_seen,
        expected(|n| n % 3 == 0),
        "globex's chain holds globex's events only"
    );

    // One task's events keep their order in the chain.
    for n in 1000..1010 {
        store
            .tenant(&acme_ctx)
            .record_event(draft(n))
            .await
            .unwrap();
    }
    let tail: Vec<String> = resources(&store, &acme).await.split_off(acme_seen.len());
    let in_order: Vec<String> = (1000..1010).map(|n| format!("call-{n}")).collect();
    assert_eq!(tail, in_order);
    store.close().await;
}

/// A process that died with events acknowledged but not imported leaves its file; the next
/// store to open the database, outbox or not, imports exactly the part not yet imported, drops a line the
/// crash cut short (it was never acknowledged), and removes the file.
#[tokio::test]
async fn what_a_stopped_process_left_in_its_outbox_is_imported_once_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.db");
    let store = open(&path).await;
    let acme = create_tenant(&store, "acme", "local").await;
    let ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    for n in 0..3 {
        store.tenant(&ctx).record_event(draft(n)).await.unwrap();
    }
    assert_eq!(resources(&store, &acme).await.len(), 3);
    store.close().await;
    drop(store);

    // The file of the closed store is still there, three events imported. A crash would have
    // left two more lines after them, the second cut off mid-write.
    let files = outbox_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let file = dir.path().join(&files[0]);
    let imported = std::fs::read(&file).unwrap();
    assert_eq!(imported.iter().filter(|b| **b == b'\n').count(), 3);
    let line = |n: usize| {
        format!(
            "{{\"tenant\":\"acme\",\"occurred_at\":1700000000000,\"actor\":\"test\",\"action\":\"model.call\",\
             \"resource\":\"call-{n}\",\"outcome\":\"success\",\"request_id\":null,\"trace_id\":null,\"details\":{{}}}}"
        )
    };
    let mut tail = format!("{}\n", line(3)).into_bytes();
    tail.extend_from_slice(&line(4).as_bytes()[..40]);
    let mut handle = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    // The closed store's importer lets go of the file (and its lock) as it winds down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while handle.try_lock().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed store still holds its outbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    handle.write_all(&tail).unwrap();
    drop(handle);

    // Opened as the CLI opens it, with no outbox of its own: it imports all the same, so an
    // operator reading the trail after a crash sees what the crashed server acknowledged.
    let cli = StoreOptions {
        audit_outbox: false,
        ..StoreOptions::default()
    };
    let store = Store::open_sqlite(&path, &cli).await.unwrap();
    assert_eq!(
        resources(&store, &acme).await,
        ["call-0", "call-1", "call-2", "call-3"],
        "the three imported before are not repeated, the complete fourth is added, the cut fifth is not"
    );
    assert!(
        outbox_files(dir.path()).is_empty(),
        "the imported file is gone"
    );
    store.close().await;
}

/// Another live store's file is held under its lock: a second store opening the same
/// database leaves it alone, and the first keeps importing into it.
#[tokio::test]
async fn a_live_stores_outbox_is_not_taken_by_another_store_of_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.db");
    let first = open(&path).await;
    let acme = create_tenant(&first, "acme", "local").await;
    let ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    let second = open(&path).await;
    assert_eq!(outbox_files(dir.path()).len(), 2);
    first.tenant(&ctx).record_event(draft(1)).await.unwrap();
    second.tenant(&ctx).record_event(draft(2)).await.unwrap();
    let mut seen = resources(&first, &acme).await;
    seen.extend(resources(&second, &acme).await);
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["call-1", "call-2"]);
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn with_the_outbox_off_no_file_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.db");
    let options = StoreOptions {
        audit_outbox: false,
        ..StoreOptions::default()
    };
    let store = Store::open_sqlite(&path, &options).await.unwrap();
    let acme = create_tenant(&store, "acme", "local").await;
    let ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    store.tenant(&ctx).record_event(draft(1)).await.unwrap();
    assert_eq!(resources(&store, &acme).await, ["call-1"]);
    assert!(outbox_files(dir.path()).is_empty());
    store.close().await;
}

/// Past its size limit the file is sealed and a fresh one takes the appends, while events
/// keep arriving (the importer is never caught up when it looks); the sealed file's last
/// events are imported before the new file's, and it is deleted.
#[tokio::test]
async fn under_steady_appends_the_file_is_replaced_and_no_event_is_lost_or_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.db");
    let options = StoreOptions {
        audit_outbox_rotate_bytes: 4096,
        ..StoreOptions::default()
    };
    let store = Store::open_sqlite(&path, &options).await.unwrap();
    let acme = create_tenant(&store, "acme", "local").await;
    let globex = create_tenant(&store, "globex", "local").await;
    let acme_ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    let globex_ctx = TenantContext::for_tests(&globex, &[Role::Owner]);
    let first_file = outbox_files(dir.path());
    assert_eq!(first_file.len(), 1);
    // Two writers, one per tenant, each in order, with a pause now and then so the importer
    // runs between appends: about 300 bytes an event, 4 KiB a file, many replacements.
    let writer = |ctx: TenantContext, store: Store| async move {
        for n in 0..400 {
            store.tenant(&ctx).record_event(draft(n)).await.unwrap();
            if n % 20 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    let a = tokio::spawn(writer(acme_ctx.clone(), store.clone()));
    let g = tokio::spawn(writer(globex_ctx.clone(), store.clone()));
    a.await.unwrap();
    g.await.unwrap();
    let in_order: Vec<String> = (0..400).map(|n| format!("call-{n}")).collect();
    assert_eq!(resources(&store, &acme).await, in_order);
    assert_eq!(resources(&store, &globex).await, in_order);
    // The importer deletes a sealed file just after importing its end, which the reads above
    // waited for; give it a moment.
    let mut files = outbox_files(dir.path());
    for _ in 0..500 {
        if files.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        files = outbox_files(dir.path());
    }
    assert_eq!(files.len(), 1, "sealed files are deleted: {files:?}");
    assert_ne!(files, first_file, "the first file was replaced");
    store.close().await;
}
