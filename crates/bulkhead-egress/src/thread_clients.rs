//! One HTTP client per thread, on hyper-util's pooled client.
//!
//! A pooled connection is driven by a task of the runtime that opened it. `bulkhead serve`
//! answers requests from one single-threaded runtime per core (`serving.rs` in the binary);
//! with one client for all of them, a request served on one thread would send its upstream
//! call through a connection driven by another, a cross-thread wake-up each way of every call.
//! A client per thread keeps the call on the thread that serves the request. Every client is
//! built alike, so which one a call uses changes nothing else.
//!
//! Why hyper-util's client and not reqwest (which wraps it): egress already does what
//! reqwest's layers are for (the URL checks, the credential, the timeout, no redirects), and
//! those layers cost a tenth of a gateway request's instructions: the URL parsed twice more,
//! a redirect policy consulted on a client that never follows redirects, the request and
//! response rebuilt in reqwest's own types (ARCHITECTURE.md, "Where the gateway's time goes").

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The same as reqwest's defaults, which egress used before.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

thread_local! {
    /// This thread's client of each live [`ThreadClients`].
    static CLIENTS: RefCell<Vec<(Weak<()>, HttpClient)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) struct ThreadClients {
    /// Identifies this set; threads hold it weakly, so their clients of a dropped set are
    /// recognised as dead and dropped at their next miss.
    owner: Arc<()>,
    tls: rustls::ClientConfig,
}

impl ThreadClients {
    /// Checks that a client can be built (the TLS configuration) before any call needs one.
    pub(crate) fn new() -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth();
        Ok(Self {
            owner: Arc::new(()),
            tls,
        })
    }

    /// Sends `request` on the calling thread's client, built at the thread's first call. The
    /// answer's future owns what it needs, so no client is cloned per call.
    pub(crate) fn request(&self, request: http::Request<Full<Bytes>>) -> ResponseFuture {
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            let owner = Arc::downgrade(&self.owner);
            if let Some((_, client)) = clients.iter().find(|(o, _)| o.ptr_eq(&owner)) {
                return client.request(request);
            }
            clients.retain(|(o, _)| o.strong_count() > 0);
            let client = self.build();
            let response = client.request(request);
            clients.push((owner, client));
            response
        })
    }

    fn build(&self) -> HttpClient {
        let mut http = HttpConnector::new();
        // The https connector wraps this one and takes both schemes.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(TCP_KEEPALIVE));
        http.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Redirects are never followed: this client has no redirect layer, so a 3xx comes
        // back as it is and the injected credential never goes to another host.
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_client_and_a_dropped_set_leaves() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let clients = Arc::new(ThreadClients::new().unwrap());
        // The futures are dropped unpolled: only which client each call reached matters.
        let call = |clients: &ThreadClients| {
            drop(clients.request(http::Request::new(Full::new(Bytes::new()))));
        };
        let entries = || CLIENTS.with(|c| c.borrow().len());
        call(&clients);
        call(&clients);
        assert_eq!(entries(), 1, "one client per thread, reused");
        let other = Arc::clone(&clients);
        let handle = runtime.handle().clone();
        let other_thread_entries = std::thread::spawn(move || {
            let _guard = handle.enter();
            call(&other);
            CLIENTS.with(|c| c.borrow().len())
        })
        .join()
        .unwrap();
        assert_eq!(other_thread_entries, 1);
        drop(clients);
        let second = ThreadClients::new().unwrap();
        call(&second);
        assert_eq!(entries(), 1, "the dropped set's client was pruned");
    }
}
