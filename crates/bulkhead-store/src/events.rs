//! Group commit for audit events that accompany no stored change (outbound calls, refusals).
//!
//! Appending such an event in its own transaction costs one write transaction per call, and
//! on SQLite all writes queue for one writer. Callers instead hand the event to a background
//! task, which appends whatever has queued up in one transaction and answers each caller only
//! after that commit: the same durability, far fewer transactions under load.
//!
//! Events for a tenant stay in the order they were queued, so the chain is unchanged. The batch
//! runs as the control plane (on PostgreSQL: the `bulkhead_control` role), because one
//! transaction may hold events of several tenants; each event's tenant comes from the
//! `TenantContext` of the handle that queued it.

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditDraft, Origin};
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;
use crate::audit::{self, PendingEvent};
use crate::backend::{Access, Backend, Scope};
use crate::outbox::Outbox;

const MAX_BATCH: usize = 512;
const QUEUE: usize = 4096;

pub(crate) struct Pending {
    tenant: TenantId,
    origin: Origin,
    draft: AuditDraft,
    done: oneshot::Sender<Result<(), String>>,
}

/// Where events with no stored change go: a group-committed transaction, or on SQLite the
/// audit outbox (`outbox.rs`).
#[derive(Clone)]
pub(crate) enum EventBatcher {
    GroupCommit { queue: mpsc::Sender<Pending> },
    Outbox(Outbox),
}

impl EventBatcher {
    /// Starts the background writer. It stops when every `Store` clone is dropped.
    pub(crate) fn start(backend: Backend) -> Self {
        let (queue, mut receiver) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let result = write_batch(&backend, &batch)
                    .await
                    .map_err(|e| e.to_string());
                for pending in batch.drain(..) {
                    let _ = pending.done.send(result.clone());
                }
            }
        });
        Self::GroupCommit { queue }
    }

    /// Appends one event; it is as durable as a commit when this returns. With the group
    /// commit that means waiting for the transaction holding it.
    pub(crate) async fn append(
        &self,
        tenant: &TenantId,
        origin: Origin,
        draft: AuditDraft,
    ) -> Result<(), StoreError> {
        let queue = match self {
            Self::GroupCommit { queue } => queue,
            Self::Outbox(outbox) => {
                return outbox.append(tenant, PendingEvent::new(&origin, draft));
            }
        };
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            tenant: tenant.clone(),
            origin,
            draft,
            done,
        };
        queue
            .send(pending)
            .await
            .map_err(|_| StoreError::EventWriter("the audit writer has stopped".into()))?;
        committed
            .await
            .map_err(|_| StoreError::EventWriter("the audit writer has stopped".into()))?
            .map_err(StoreError::EventWriter)
    }

    /// Returns once every event this process acknowledged is in its chain, so that a read
    /// of the audit trail sees them (only the outbox acknowledges before that).
    pub(crate) async fn settle(&self) -> Result<(), StoreError> {
        match self {
            Self::GroupCommit { .. } => Ok(()),
            Self::Outbox(outbox) => outbox.settle().await,
        }
    }
}

async fn write_batch(backend: &Backend, batch: &[Pending]) -> Result<(), StoreError> {
    let events = batch.iter().map(|pending| {
        let event = PendingEvent::new(&pending.origin, pending.draft.clone());
        (pending.tenant.clone(), event)
    });
    let mut tx = backend.begin(Access::Write, Scope::ControlPlane).await?;
    audit::append_batch(&mut tx, events).await?;
    tx.commit().await
}
