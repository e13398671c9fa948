//! The worker's end of the store calls that go to the control plane (`bulkhead_store::remote`):
//! each call is a `Store` frame on the worker's channel, answered by a `StoreAnswer` frame
//! with the same call number.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bulkhead_core::RequestId;
use bulkhead_store::StoreError;
use bulkhead_store::remote::{LinkFuture, RemoteFailure, StoreLink};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::worker::frames::FromWorker;

type Answer = Result<Value, RemoteFailure>;

pub struct WorkerLink {
    /// Taken at shutdown, so that once every task holding a clone has ended the writer sees
    /// the channel close and the worker can exit.
    frames: Mutex<Option<mpsc::UnboundedSender<FromWorker>>>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_call: AtomicU64,
}

impl WorkerLink {
    /// The link, and the frames it (and everything else the worker sends) puts on the
    /// channel, in order.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<FromWorker>) {
        let (frames, outgoing) = mpsc::unbounded_channel();
        let link = Arc::new(Self {
            frames: Mutex::new(Some(frames)),
            waiting: Mutex::default(),
            next_call: AtomicU64::new(1),
        });
        (link, outgoing)
    }

    /// Where the worker's other frames go: the same channel, so they keep their order.
    /// `None` once shut down.
    pub fn frames(&self) -> Option<mpsc::UnboundedSender<FromWorker>> {
        self.frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Hands an answer to the call waiting for it; one nobody waits for is dropped.
    pub fn answered(&self, call: u64, answer: Answer) {
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&call);
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer);
        }
    }

    /// The failure of a call too large for one frame (a document with more chunks than
    /// the channel carries at once).
    pub fn too_large() -> RemoteFailure {
        RemoteFailure {
            kind: "unsupported".into(),
            detail: "a store call larger than the worker channel's frame limit".into(),
        }
    }

    /// The worker is done serving: no more calls, and every waiting one fails (their
    /// senders drop).
    pub fn shut_down(&self) {
        self.frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl StoreLink for WorkerLink {
    fn call(&self, request: &RequestId, method: &'static str, args: Value) -> LinkFuture<'_> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(call, answer);
        let sent = self.frames().is_some_and(|frames| {
            frames
                .send(FromWorker::Store {
                    call,
                    request: request.as_str().to_owned(),
                    method: method.to_owned(),
                    args,
                })
                .is_ok()
        });
        Box::pin(async move {
            if !sent {
                self.answered(call, Err(gone()));
            }
            match answered.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(failure)) => Err(StoreError::from(failure)),
                Err(_) => Err(StoreError::from(gone())),
            }
        })
    }
}

fn gone() -> RemoteFailure {
    RemoteFailure {
        kind: "remote".into(),
        detail: "the channel to the control plane closed".into(),
    }
}
