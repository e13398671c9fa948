//! Persistence for Bulkhead: migrations, tenant-scoped and admin handles, the audit chain.
//!
//! **Architecture Invariant:** this is the only crate that depends on the SQL driver.
//!
//! **Architecture Invariant:** tenant data is reached through [`TenantStore`], obtained from a
//! [`TenantContext`]; none of its methods takes a tenant id. Control-plane operations use
//! [`AdminStore`], a different type. On PostgreSQL the two run as different non-owner roles
//! and row-level security filters a second time.
//!
//! **Architecture Invariant:** every state change appends its audit event inside the same
//! transaction, so a change that fails leaves no event and an event never describes a change
//! that did not happen.

mod admin;
mod agents;
mod audit;
mod audit_stream;
mod backend;
mod checkpoint;
mod credentials;
mod events;
mod idle;
mod knowledge;
mod models;
mod outbox;
mod pgvector;
mod records;
pub mod remote;
mod runs;
mod sessions;
mod tenant;
#[cfg(feature = "test-support")]
pub mod testing;
mod threads;
mod tools;
mod usage;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use bulkhead_core::TenantContext;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use admin::AdminStore;
pub use agents::{AgentRecord, PromptRecord};
pub use audit::{AuditFilter, AuditVerification};
pub use audit_stream::StreamBacklog;
pub use credentials::{CredentialRecord, CredentialWrite, DataKeyRecord};
pub use knowledge::{
    ChunkRecord, DocumentOutcome, DocumentRecord, DocumentWrite, IndexedChunk, KnowledgeBaseRecord,
    KnowledgeChange, KnowledgeHead, KnowledgeVersion, NewChunk, embedding_from_bytes,
    embedding_to_bytes,
};
pub use pgvector::VectorScan;
pub use records::{
    ApiKeyInfo, DeletionReceipt, IssuerRecord, NewIssuer, NewTenant, Page, TenantPatch,
};
pub use runs::{RunEnd, RunProcess, RunProgress, RunRecord};
pub use tenant::TenantStore;
pub use threads::ThreadMessage;
pub use tools::{
    ApprovalDraft, ApprovalRecord, DecisionOutcome, PolicyRecord, ResumableRun, ToolsetRecord,
};

use crate::backend::Backend;
use crate::events::EventBatcher;
use crate::usage::UsageMeter;
pub use usage::{TenantUsageRow, ToolUsageRow, UsageCounts, UsageRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("unsupported database url (expected sqlite:// or postgres://): {0}")]
    UnsupportedUrl(String),
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("{0} does not exist")]
    NotFound(&'static str),
    #[error("not supported here: {0}")]
    Unsupported(&'static str),
    #[error("appending audit events failed: {0}")]
    EventWriter(String),
    /// A dedicated worker's store call that the control plane could not answer (or whose
    /// answer did not decode).
    #[error("the control plane's store: {0}")]
    Remote(String),
}

/// Which database holds the data; reported by `/readyz` and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
    /// A dedicated worker's store: no database of its own, its tenant's calls answered by
    /// the control plane.
    ControlPlane,
}

/// A handle on the database. Cheap to clone; hands out [`AdminStore`] and [`TenantStore`].
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    events: EventBatcher,
    usage: UsageMeter,
    /// Set by [`Store::enable_pgvector`]: chunk writes also fill `kb_vectors`.
    pgvector: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// SQLite only: WAL checkpoints on a connection of their own.
    _checkpointer: Option<checkpoint::Checkpointer>,
    /// A dedicated worker's channel: the methods that have moved go there (`remote.rs`).
    link: Option<std::sync::Arc<dyn remote::StoreLink>>,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// SQLite: acknowledge audit events of outbound calls once they are in the audit outbox
    /// file rather than after their transaction (`outbox.rs`). Ignored on PostgreSQL.
    pub audit_outbox: bool,
    /// The audit outbox's file is replaced by a fresh one once this much of it is imported.
    pub audit_outbox_rotate_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            audit_outbox: true,
            audit_outbox_rotate_bytes: outbox::ROTATE_BYTES,
        }
    }
}

impl Store {
    /// Opens `url` (`sqlite://path` or `postgres://...`) and applies pending migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(connect)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            let backend = Backend::Postgres(pool);
            let events = EventBatcher::start(backend.clone());
            let usage = UsageMeter::start(backend.clone());
            return Ok(Self::with_backend(backend, events, usage));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Self::open_sqlite(Path::new(path), options).await;
        }
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }

    /// Opens (creating if needed) a SQLite database file in WAL mode.
    ///
    /// Writes go through a single connection and begin with `BEGIN IMMEDIATE`, so they queue
    /// for the write lock (also against the CLI or another process) instead of failing when
    /// a read lock cannot be upgraded; reads use a pool of their own.
    pub async fn open_sqlite(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Deleted rows (destroyed keys above all) are overwritten, not left in free pages.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect.clone().read_only(true))
            .await?;
        let backend = Backend::Sqlite { writer, reader };
        outbox::import_left_behind(path, &backend).await?;
        let events = if options.audit_outbox {
            EventBatcher::Outbox(
                outbox::Outbox::open(path, backend.clone(), options.audit_outbox_rotate_bytes)
                    .await?,
            )
        } else {
            EventBatcher::start(backend.clone())
        };
        let usage = UsageMeter::start(backend.clone());
        let mut store = Self::with_backend(backend, events, usage);
        store._checkpointer = Some(checkpoint::Checkpointer::start(connect));
        Ok(store)
    }

    fn with_backend(backend: Backend, events: EventBatcher, usage: UsageMeter) -> Self {
        Self {
            events,
            usage,
            pgvector: Default::default(),
            _checkpointer: None,
            link: None,
            backend,
        }
    }

    /// This store, with its tenant handles sending the calls that have moved to the control
    /// plane over `link` (a dedicated worker's channel).
    pub fn with_link(mut self, link: std::sync::Arc<dyn remote::StoreLink>) -> Self {
        self.link = Some(link);
        self
    }

    /// A dedicated worker's store: no database, every tenant call sent over `link`. A call
    /// that has not moved, and every [`AdminStore`] call, fails with
    /// `StoreError::Unsupported`.
    pub fn linked(link: std::sync::Arc<dyn remote::StoreLink>) -> Self {
        let backend = Backend::Detached;
        // The usage calls are sent over the link; a flusher here would wake the idle worker
        // every second to write nothing.
        let usage = UsageMeter::unflushed();
        Self::with_backend(backend.clone(), EventBatcher::start(backend), usage).with_link(link)
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
            Backend::Detached => BackendKind::ControlPlane,
        }
    }

    /// The control-plane handle: sees every tenant. Only admin-authenticated code and the
    /// authentication layer (which must find a credential before it knows the tenant) use it.
    pub fn admin(&self) -> AdminStore<'_> {
        AdminStore::new(&self.backend, &self.events)
    }

    /// The handle for one tenant, taken from an authenticated context.
    pub fn tenant<'a>(&'a self, ctx: &'a TenantContext) -> TenantStore<'a> {
        TenantStore::new(
            &self.backend,
            &self.events,
            &self.usage,
            ctx,
            self.pgvector.load(std::sync::atomic::Ordering::Relaxed),
        )
        .linked(self.link.as_deref())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.backend.ping().await
    }

    /// Bytes the database occupies: SQLite's pages, or PostgreSQL's `pg_database_size`.
    pub async fn size_bytes(&self) -> Result<i64, StoreError> {
        self.backend.size_bytes().await
    }

    /// Writes the usage counted in memory so far (the meter does so every second anyway).
    pub async fn flush_usage(&self) -> Result<(), StoreError> {
        self.usage.flush(&self.backend).await
    }

    pub async fn close(&self) {
        if let Err(error) = self.events.settle().await {
            tracing::warn!(%error, "audit events still in the outbox are imported at the next start");
        }
        if let Err(error) = self.flush_usage().await {
            tracing::warn!(%error, "usage counts of the last second were not written");
        }
        self.backend.close().await;
    }
}
