//! SQLite WAL checkpoints, off the request path.
//!
//! By default SQLite checkpoints inside the commit that fills the WAL past 1,000 pages, and
//! that checkpoint fsyncs the database file: about one commit in a hundred on the gateway's
//! path (its audit events) waited for the disk, which was its p99. The writer connection now
//! never checkpoints (`wal_autocheckpoint = 0`); a connection of its own does, every
//! `EVERY`, in `PASSIVE` mode, which waits for no reader or writer. Durability is
//! unchanged: a commit is in the WAL either way, and with `synchronous = NORMAL` the WAL is
//! made durable at checkpoints, now at least every `EVERY` rather than every 1,000 pages.

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

const EVERY: Duration = Duration::from_millis(250);

/// Keeps the checkpointer running; it stops when the last clone of its store is dropped.
#[derive(Clone)]
pub(crate) struct Checkpointer {
    _alive: Arc<watch::Sender<()>>,
}

impl Checkpointer {
    pub(crate) fn start(connect: SqliteConnectOptions) -> Self {
        let (alive, mut stopped) = watch::channel(());
        tokio::spawn(async move {
            let mut connection = match connect.connect().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "no checkpoint connection; the WAL grows until the database is closed");
                    return;
                }
            };
            let mut ticks = tokio::time::interval(EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    // Every sender is gone: the store was dropped.
                    _ = stopped.changed() => break,
                }
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut connection)
                    .await
                {
                    tracing::debug!(%error, "a WAL checkpoint failed; the next one retries");
                }
            }
            let _ = connection.close().await;
        });
        Self {
            _alive: Arc::new(alive),
        }
    }
}
