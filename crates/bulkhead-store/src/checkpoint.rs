//! SQLite WAL checkpoints, off the request path.
//!
//! By default SQLite checkpoints inside the commit that fills the WAL past 1,000 pages, and
//! that checkpoint fsyncs the database file: about one commit in a hundred on the gateway's
//! path (its audit events) waited for the disk, which was its p99. The writer connection now
//! never checkpoints (`wal_autocheckpoint = 0`); a connection of its own does, every
//! `EVERY`, in `PASSIVE` mode, which waits for no reader or writer. Durability is
//! unchanged: a commit is in the WAL either way, and with `synchronous = NORMAL` the WAL is
//! made durable at checkpoints, now at least every `EVERY` rather than every 1,000 pages.
//!
//! The checkpoints run on a thread of their own in the idle scheduling class, and so does
//! SQLite's thread for their connection (`idle.rs`): a checkpoint copies a quarter second's
//! pages in one go, a millisecond or more that a request woken onto its core would wait out.
//! Nobody waits for a checkpoint, so it can wait for the CPU; under full load it falls behind
//! and the WAL grows until the load eases.

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

use crate::idle;

const EVERY: Duration = Duration::from_millis(250);

/// The checkpointer's thread, by this name in `ps` and `top`.
const THREAD_NAME: &str = "bulkhead-checkpoint";

/// Keeps the checkpointer running; it stops when the last clone of its store is dropped.
#[derive(Clone)]
pub(crate) struct Checkpointer {
    _alive: Arc<watch::Sender<()>>,
}

impl Checkpointer {
    pub(crate) fn start(connect: SqliteConnectOptions) -> Self {
        let (alive, stopped) = watch::channel(());
        let started = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                // Before the connection is opened: SQLite's thread for it starts from this one.
                if let Err(error) = idle::enter_idle_class() {
                    tracing::debug!(%error, "checkpoints run at normal priority");
                }
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(checkpoint_until_stopped(connect, stopped)),
                    Err(error) => tracing::warn!(%error,
                        "no runtime for WAL checkpoints; the WAL grows until the database is closed"),
                }
            });
        if let Err(error) = started {
            tracing::warn!(%error, "no thread for WAL checkpoints; the WAL grows until the database is closed");
        }
        Self {
            _alive: Arc::new(alive),
        }
    }
}

async fn checkpoint_until_stopped(connect: SqliteConnectOptions, mut stopped: watch::Receiver<()>) {
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
}
