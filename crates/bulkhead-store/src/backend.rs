//! The two databases behind one set of queries.
//!
//! Both backends take the same SQL (`$1`-style parameters, `ON CONFLICT`, `RETURNING`) and the
//! same column types (text, 64-bit integers), so each query is written once and the macros
//! below run it on whichever transaction is open.

use bulkhead_core::TenantId;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::StoreError;

#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
    Postgres(PgPool),
    /// No database at all: a dedicated worker's store, whose tenant calls go to the control
    /// plane (`remote.rs`). A call that has not moved fails here, loudly, instead of reaching
    /// rows the worker has no business reading.
    Detached,
}

/// What a call on a [`Backend::Detached`] store fails with.
pub(crate) const DETACHED: StoreError =
    StoreError::Unsupported("this process has no database (a dedicated worker)");

pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    /// A read-only SQLite connection outside any transaction: see [`Access::SingleRead`].
    SqliteStatement(PoolConnection<Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Whether a transaction will write; SQLite sends writes to its single writer connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    /// One SELECT, on the hot path of every request (authentication, revealing a
    /// credential). On SQLite it runs without BEGIN and COMMIT: a single statement reads one
    /// consistent snapshot on its own, and each of those two statements is a round trip
    /// through sqlx-sqlite's worker thread. On PostgreSQL it is a transaction as always,
    /// because the role and tenant settings that row-level security reads are
    /// transaction-local.
    SingleRead,
}

/// Whom a PostgreSQL transaction acts as. Both are non-owner roles without BYPASSRLS; the
/// migration gives each its row-level security policy.
pub(crate) enum Scope<'a> {
    ControlPlane,
    Tenant(&'a TenantId),
}

impl Backend {
    pub(crate) async fn begin(&self, access: Access, scope: Scope<'_>) -> Result<Tx, StoreError> {
        match self {
            Backend::Sqlite { writer, reader } => {
                // A deferred transaction that reads and then writes fails at once (it does
                // not wait) if another process wrote in between; BEGIN IMMEDIATE takes the
                // write lock up front and waits for it under busy_timeout instead.
                let tx = match access {
                    Access::Write => writer.begin_with("BEGIN IMMEDIATE").await?,
                    Access::Read => reader.begin().await?,
                    Access::SingleRead => return Ok(Tx::SqliteStatement(reader.acquire().await?)),
                };
                Ok(Tx::Sqlite(tx))
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Both settings are transaction-local (`true`), so they vanish at commit or
                // rollback and a pooled connection never carries a tenant into the next use.
                match scope {
                    Scope::ControlPlane => {
                        sqlx::query("SELECT set_config('role', 'bulkhead_control', true)")
                            .execute(&mut *tx)
                            .await?;
                    }
                    Scope::Tenant(tenant) => {
                        sqlx::query(
                            "SELECT set_config('role', 'bulkhead_tenant', true), \
                                    set_config('bulkhead.tenant_id', $1, true)",
                        )
                        .bind(tenant.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                Ok(Tx::Postgres(tx))
            }
            Backend::Detached => Err(DETACHED),
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Backend::Sqlite { reader, .. } => {
                sqlx::query("SELECT 1").execute(reader).await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Backend::Detached => return Err(DETACHED),
        }
        Ok(())
    }

    pub(crate) async fn size_bytes(&self) -> Result<i64, StoreError> {
        let size: i64 = match self {
            Backend::Sqlite { writer, .. } => {
                // Checkpoint first so the WAL's pages count where they will live.
                checkpoint_truncate(writer).await?;
                sqlx::query_scalar(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                )
                .fetch_one(writer)
                .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT pg_database_size(current_database())")
                    .fetch_one(pool)
                    .await?
            }
            Backend::Detached => return Err(DETACHED),
        };
        Ok(size)
    }

    /// After destroying key material, pushes it out of SQLite's write-ahead log. Freed pages
    /// are already zeroed (`secure_delete`); the WAL may still hold older page images until a
    /// checkpoint. Best effort: a checkpoint still blocked after its retries leaves the frames
    /// to the next one. PostgreSQL keeps dead rows until vacuum; see ARCHITECTURE.md.
    pub(crate) async fn scrub_freed_pages(&self) {
        if let Backend::Sqlite { writer, .. } = self {
            match checkpoint_truncate(writer).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "the checkpoint after key destruction stayed blocked; the WAL keeps the old pages until the next one"
                ),
                Err(error) => tracing::warn!(%error, "checkpoint after key destruction failed"),
            }
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Backend::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
            Backend::Detached => {}
        }
    }
}

/// How often a blocked `TRUNCATE` checkpoint is tried again, and how long apart.
const TRUNCATE_ATTEMPTS: u32 = 50;
const TRUNCATE_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// Moves every WAL frame into the database file and empties the WAL; `false` if it stayed
/// blocked. SQLite answers such a checkpoint "busy" (a row, not an error) without waiting
/// while another connection is mid-checkpoint, and the store's own checkpointer
/// (`checkpoint.rs`) runs one every 250 ms: ignoring that answer left a deleted tenant's
/// pages in the WAL now and then.
async fn checkpoint_truncate(writer: &SqlitePool) -> Result<bool, StoreError> {
    for attempt in 0..TRUNCATE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(TRUNCATE_RETRY).await;
        }
        let (busy, _wal_frames, _checkpointed): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(writer)
                .await?;
        if busy == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::SqliteStatement(_) => {}
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// Runs a statement; evaluates to the number of rows it touched.
macro_rules! execute {
    ($tx:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $tx {
            $crate::backend::Tx::Sqlite(tx) => sqlx::query($sql)$(.bind($arg))*
                .execute(&mut **tx).await.map(|r| r.rows_affected()),
            $crate::backend::Tx::SqliteStatement(tx) => sqlx::query($sql)$(.bind($arg))*
                .execute(&mut **tx).await.map(|r| r.rows_affected()),
            $crate::backend::Tx::Postgres(tx) => sqlx::query($sql)$(.bind($arg))*
                .execute(&mut **tx).await.map(|r| r.rows_affected()),
        }
    };
}

/// Runs a query into `Option<$row>`, `$row` being a `sqlx::FromRow` type.
macro_rules! fetch_optional {
    ($tx:expr, $row:ty, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $tx {
            $crate::backend::Tx::Sqlite(tx) => sqlx::query_as::<_, $row>($sql)$(.bind($arg))*
                .fetch_optional(&mut **tx).await,
            $crate::backend::Tx::SqliteStatement(tx) => sqlx::query_as::<_, $row>($sql)$(.bind($arg))*
                .fetch_optional(&mut **tx).await,
            $crate::backend::Tx::Postgres(tx) => sqlx::query_as::<_, $row>($sql)$(.bind($arg))*
                .fetch_optional(&mut **tx).await,
        }
    };
}

/// Runs a query into `Vec<$row>`.
macro_rules! fetch_all {
    ($tx:expr, $row:ty, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $tx {
            $crate::backend::Tx::Sqlite(tx) => sqlx::query_as::<_, $row>($sql)$(.bind($arg))*
                .fetch_all(&mut **tx).await,
            $crate::backend::Tx::SqliteStatement(tx) => sqlx::query_as::<_, $row>($sql)$(.bind($arg))*
                .fetch_all(&mut **tx).await,
            $crate::backend::Tx::Postgres(tx) => sqlx::query_as::<_, $row>($sql)$(.bind($arg))*
                .fetch_all(&mut **tx).await,
        }
    };
}

pub(crate) use {execute, fetch_all, fetch_optional};
