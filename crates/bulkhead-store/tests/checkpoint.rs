//! SQLite commits never checkpoint the WAL themselves; the store's own checkpointer moves
//! their pages into the database file while the store stays open.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bulkhead_store::{Store, StoreOptions};

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
