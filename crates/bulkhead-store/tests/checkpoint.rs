//! SQLite commits never checkpoint the WAL themselves; the store's own checkpointer moves
//! their pages into the database file while the store stays open.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bulkhead_core::audit::Origin;
use bulkhead_core::{Role, TenantContext, TenantId};
use bulkhead_store::testing::TestDb;
use bulkhead_store::{DocumentWrite, NewChunk, Store, StoreOptions};
use sqlx::Connection;

#[tokio::test]
async fn committed_pages_reach_the_database_file_without_closing_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.db");
    let store = Store::open_sqlite(&path, &StoreOptions::default())
        .await
        .unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let wal = || {
        std::fs::metadata(dir.path().join("bulkhead.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    // Migrations may have been checkpointed already; what counts is what follows.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = size();
    for i in 0..300 {
        bulkhead_store::testing::create_tenant(&store, &format!("t{i}"), "local").await;
    }
    assert!(wal() > 0, "the writes went to the WAL");
    let deadline = Instant::now() + Duration::from_secs(20);
    while size() <= before {
        assert!(
            Instant::now() < deadline,
            "nothing was checkpointed: database {} bytes, WAL {} bytes",
            size(),
            wal()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
}

/// Deleting a tenant checkpoints its freed pages out of the WAL. SQLite answers that
/// checkpoint "busy" at once while another connection is mid-checkpoint, which the store's
/// own checkpointer is every 250 ms; here a second connection checkpoints without pause, so
/// a deletion that took "busy" for done would leave the canary behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_leaves_the_wal_while_another_connection_checkpoints() {
    let (store, db) = TestDb::sqlite().await;
    let TestDb::Sqlite { path, .. } = &db else {
        unreachable!("TestDb::sqlite opens SQLite")
    };
    let url = format!("sqlite://{}", path.display());
    let stop = Arc::new(AtomicBool::new(false));
    let contender = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let mut checkpoints = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                checkpoints += 1;
            }
            checkpoints
        }
    });
    let metadata = serde_json::json!({});
    for round in 0..30 {
        let tenant_id = format!("t{round}");
        let tenant = bulkhead_store::testing::create_tenant(&store, &tenant_id, "local").await;
        let context = TenantContext::for_tests(&tenant, &[Role::Owner]);
        let scoped = store.tenant(&context);
        scoped
            .ensure_knowledge_base("kb", "local", 2)
            .await
            .unwrap();
        let canary = format!("canary-of-deleted-tenant-{round}");
        scoped
            .put_document(
                "kb",
                &DocumentWrite {
                    doc_id: "d",
                    title: "Title",
                    content_type: "text/plain",
                    metadata: &metadata,
                    content_hash: "h",
                    bytes: 10,
                    chunks: vec![NewChunk {
                        position: 0,
                        heading_path: Vec::new(),
                        text: canary.clone(),
                        embedding: vec![0.0, 1.0],
                    }],
                },
            )
            .await
            .unwrap();
        store
            .admin()
            .delete_tenant(
                &TenantId::try_from(tenant_id.as_str()).unwrap(),
                &Origin::cli(),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(
            !db.holds(canary.as_bytes()).await,
            "round {round}: the deleted tenant's chunk text is still on disk"
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        contender.await.unwrap() > 0,
        "the contender never checkpointed"
    );
    store.close().await;
}

/// The checkpointer's thread, and SQLite's thread for its connection, are in the idle
/// scheduling class, so a request woken onto their core does not wait out a checkpoint; the
/// store's own connections, which requests wait on, are not.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn checkpoints_run_in_the_idle_class_and_the_stores_connections_do_not() {
    const SCHED_IDLE: &str = "5";
    const SCHED_OTHER: &str = "0";
    /// (name, scheduling policy) of every thread of this process.
    fn threads() -> Vec<(String, String)> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
            .filter_map(|stat| {
                let (head, rest) = stat.rsplit_once(')')?;
                let name = head.split_once('(')?.1.to_owned();
                // Field 41 of stat(5); `rest` starts at field 3.
                let policy = rest.split_whitespace().nth(41 - 3)?.to_owned();
                Some((name, policy))
            })
            .collect()
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("bulkhead.db"), &StoreOptions::default())
        .await
        .unwrap();
    bulkhead_store::testing::create_tenant(&store, "acme", "local").await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let threads = threads();
        let sqlite_in = |policy: &str| {
            threads
                .iter()
                .any(|(name, p)| name.starts_with("sqlx-sqlite") && p == policy)
        };
        let checkpointers: Vec<_> = threads
            .iter()
            .filter(|(name, _)| name.starts_with("bulkhead-checkp"))
            .collect();
        if !checkpointers.is_empty() && sqlite_in(SCHED_IDLE) {
            assert!(
                checkpointers.iter().all(|(_, policy)| policy == SCHED_IDLE),
                "a checkpointer outside the idle class: {checkpointers:?}"
            );
            assert!(
                sqlite_in(SCHED_OTHER),
                "the store's own connections left the normal class: {threads:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no idle checkpointer and connection thread: {threads:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await;
}
