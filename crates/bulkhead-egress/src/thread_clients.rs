//! One HTTP client per thread.
//!
//! reqwest pools connections per client, and a pooled connection is driven by a task of the
//! runtime that opened it. `bulkhead serve` answers requests from one single-threaded runtime
//! per core (`serving.rs` in the binary); with one client for all of them, a request served on
//! one thread would send its upstream call through a connection driven by another, a
//! cross-thread wake-up each way of every call. A client per thread keeps the call on the
//! thread that serves the request. Every client is built alike, so which one a call uses
//! changes nothing else: not the credential (set on each request), not redirects, not
//! timeouts.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

thread_local! {
    /// This thread's client of each live [`ThreadClients`].
    static CLIENTS: RefCell<Vec<(Weak<()>, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) struct ThreadClients {
    /// Identifies this set; threads hold it weakly, so their clients of a dropped set are
    /// recognised as dead and dropped at their next miss.
    owner: Arc<()>,
    /// The client built at start (a configuration error surfaces there), used by a thread
    /// whose own client cannot be built.
    first: reqwest::Client,
}

impl ThreadClients {
    pub(crate) fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            owner: Arc::new(()),
            first: build()?,
        })
    }

    /// The client of the calling thread, built at its first call.
    pub(crate) fn current(&self) -> reqwest::Client {
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            let owner = Arc::downgrade(&self.owner);
            if let Some((_, client)) = clients.iter().find(|(o, _)| o.ptr_eq(&owner)) {
                return client.clone();
            }
            clients.retain(|(o, _)| o.strong_count() > 0);
            let client = build().unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot build this thread's HTTP client; sharing the first");
                self.first.clone()
            });
            clients.push((owner, client.clone()));
            client
        })
    }
}

fn build() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // Redirects could carry the injected credential to another host.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_client_and_a_dropped_set_leaves() {
        let clients = Arc::new(ThreadClients::new().unwrap());
        // reqwest::Client has no identity to compare; count this thread's entries instead.
        let entries = || CLIENTS.with(|c| c.borrow().len());
        let _ = clients.current();
        let _ = clients.current();
        assert_eq!(entries(), 1, "one client per thread, reused");
        let other = Arc::clone(&clients);
        let other_thread_entries = std::thread::spawn(move || {
            let _ = other.current();
            CLIENTS.with(|c| c.borrow().len())
        })
        .join()
        .unwrap();
        assert_eq!(other_thread_entries, 1);
        drop(clients);
        let second = ThreadClients::new().unwrap();
        let _ = second.current();
        assert_eq!(entries(), 1, "the dropped set's client was pruned");
    }
}
