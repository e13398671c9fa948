//! Serving HTTP from one single-threaded runtime per core.
//!
//! Why: on the multi-threaded runtime a gateway call was handed between threads several times
//! (the client's connection on one worker, the pooled upstream connection's task on another,
//! the audit and metering on either), and each hand-off to a parked thread is a futex wake-up
//! and a context switch. Those were the largest cost left on the gateway's path (ARCHITECTURE.md,
//! "Where the gateway's time goes"). Here a connection is served start to end by one thread:
//! its requests, their upstream calls (egress keeps an HTTP client per thread) and everything
//! they await.
//!
//! How: an acceptor task on the main runtime takes connections from the one listener and deals
//! them round robin to the serving threads, each a current-thread tokio runtime serving the
//! same router over the same shared state (caches, limiters, store, workers). Round robin, not
//! one listener per thread with `SO_REUSEPORT`: the kernel's hash can put every connection of a
//! few long-lived clients on one thread, and `SO_REUSEPORT` would let any process of the same
//! user (a dedicated tenant's worker, say) bind the port and take a share of the connections.
//! Background work (the audit importer, the usage flusher, sweepers, the workers' channels) stays
//! on the main runtime. Work that computes for long already runs on blocking threads
//! (`spawn_blocking`), so a serving thread is not held by one request.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::placement::Placement;

/// How many serving threads `http_threads = 0` means: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves `app` on `listener` from `threads` single-threaded runtimes until `shutdown`
/// completes, then lets every connection finish its requests (graceful shutdown) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    threads: usize,
    placement: Placement,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut queues = Vec::with_capacity(threads);
    let mut finished = Vec::with_capacity(threads);
    let mut pinned = Vec::with_capacity(threads);
    for index in 0..threads.max(1) {
        let (queue, connections) = mpsc::unbounded_channel();
        let (done, finished_one) = oneshot::channel();
        let (pinned_tx, pinned_one) = oneshot::channel();
        let blocking_placement = placement.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Runs on the threads this runtime starts for blocking work; the serving thread
            // itself calls `block_on` and is pinned below.
            .on_thread_start(move || {
                if let Err(error) = blocking_placement.pin_background_thread() {
                    tracing::warn!(%error, "a blocking thread keeps its serving thread's core");
                }
            })
            .build()?;
        let app = app.clone();
        let placement = placement.clone();
        let mut stopped = stopped.clone();
        std::thread::Builder::new()
            .name(format!("bulkhead-http-{index}"))
            .spawn(move || {
                let pin = placement.pin_serving_thread(index);
                let failed = pin.is_err();
                let _ = pinned_tx.send(pin);
                if failed {
                    return;
                }
                let served = runtime.block_on(async move {
                    tokio::spawn(keep_a_timer_ahead());
                    let listener = Dealt { connections, local };
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        })
                        .await
                });
                let _ = done.send(served);
            })?;
        queues.push(queue);
        finished.push(finished_one);
        pinned.push(pinned_one);
    }
    // Every serving thread on its core before the first connection is dealt.
    for pinned_one in pinned {
        match pinned_one.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(io::Error::other(error)),
            Err(_) => return Err(io::Error::other("a serving thread ended before it started")),
        }
    }
    deal(&listener, &queues, shutdown).await;
    let _ = stop.send(true);
    drop(queues);
    let mut result = Ok(());
    for finished_one in finished {
        match finished_one.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => result = Err(error),
            Err(_) => result = Err(io::Error::other("a serving thread ended without a word")),
        }
    }
    result
}

/// How far ahead a serving runtime always has a timer pending; see [`keep_a_timer_ahead`].
const TIMER_AHEAD: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps a timer of the serving runtime due within [`TIMER_AHEAD`], for as long as it runs.
///
/// Why: egress arms a timeout for every upstream call, and when a runtime's new timer is due
/// before every other one it has, tokio wakes the runtime's driver through its eventfd so that
/// the driver sleeps less long: on a serving thread with no other timer that is a `write` and an
/// extra `epoll_wait` per request, on the thread serving it (seen with strace, one of each per
/// gateway call). With this timer always due sooner, a timeout of a second or more never is.
/// The cost is one wake-up a second per serving thread.
async fn keep_a_timer_ahead() {
    let mut ticks = tokio::time::interval(TIMER_AHEAD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
    }
}

/// Accepts connections and hands them out in turn until `shutdown` completes.
async fn deal(
    listener: &TcpListener,
    queues: &[mpsc::UnboundedSender<std::net::TcpStream>],
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let stream = match accepted.and_then(|(stream, _)| prepare(stream)) {
            Ok(stream) => stream,
            Err(error) => {
                // As axum's own accept loop: errors such as running out of descriptors pass,
                // and a short pause keeps the loop from spinning on them.
                tracing::debug!(%error, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A serving thread that is gone has failed; the connection goes to the next one.
        let mut stream = stream;
        let mut tries = queues.len();
        loop {
            let queue = &queues[next % queues.len()];
            next = next.wrapping_add(1);
            match queue.send(stream) {
                Ok(()) => break,
                Err(returned) if tries > 1 => {
                    tries -= 1;
                    stream = returned.0;
                }
                Err(_) => {
                    tracing::error!("no serving thread is left; stopping");
                    return;
                }
            }
        }
    }
}

/// Turns Nagle's algorithm off on an accepted connection. A streamed answer ends with a small
/// write of its own (the last chunk); with Nagle on, it waits for the client's delayed ACK,
/// about 40 ms. A connection where this fails is still served.
pub fn no_delay(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

/// Readies an accepted connection to move to a serving thread's runtime.
fn prepare(stream: TcpStream) -> io::Result<std::net::TcpStream> {
    no_delay(&stream);
    let stream = stream.into_std()?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// The connections dealt to one serving thread, as a listener axum serves.
struct Dealt {
    connections: mpsc::UnboundedReceiver<std::net::TcpStream>,
    local: SocketAddr,
}

impl axum::serve::Listener for Dealt {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            // Closed only after shutdown began, when axum no longer waits for this.
            let Some(stream) = self.connections.recv().await else {
                return std::future::pending().await;
            };
            match TcpStream::from_std(stream).and_then(|s| Ok((s.peer_addr()?, s))) {
                Ok((peer, stream)) => return (stream, peer),
                Err(error) => tracing::debug!(%error, "a dealt connection cannot be served"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::routing::get;

    /// Answers with the name of the thread that served the request.
    fn thread_name_app() -> Router {
        Router::new().route(
            "/thread",
            get(|| async { std::thread::current().name().unwrap_or("?").to_owned() }),
        )
    }

    /// Asks for the serving thread's name on `connection`, one HTTP/1.1 request on a socket
    /// of the test's own: a pooling client may open a second connection when its first has
    /// not yet gone back to its pool, and the second is dealt to the other thread.
    async fn thread_of(connection: &mut tokio::net::TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        connection
            .write_all(b"GET /thread HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        loop {
            let mut buffer = [0; 1024];
            let read = connection.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the server closed the connection");
            answer.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&answer);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            if body.len() >= length {
                return body[..length].to_owned();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_dealt_in_turn_and_each_is_served_by_one_thread() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            thread_name_app(),
            2,
            Placement::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let mut connections = Vec::new();
        let mut first = Vec::new();
        for _ in 0..4 {
            // Connections are made one after another, so the deal order is theirs.
            let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
            first.push(thread_of(&mut connection).await);
            connections.push(connection);
        }
        assert_eq!(
            first,
            [
                "bulkhead-http-0",
                "bulkhead-http-1",
                "bulkhead-http-0",
                "bulkhead-http-1"
            ]
        );
        for (connection, thread) in connections.iter_mut().zip(&first) {
            for _ in 0..5 {
                assert_eq!(&thread_of(connection).await, thread, "a connection stays");
            }
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_a_request_in_flight_finish_and_then_returns() {
        let (entered, in_handler) = oneshot::channel::<()>();
        let entered = std::sync::Arc::new(std::sync::Mutex::new(Some(entered)));
        let app = Router::new().route(
            "/slow",
            get(move || {
                if let Some(entered) = entered.lock().unwrap().take() {
                    let _ = entered.send(());
                }
                async {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    "finished"
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, 2, Placement::default(), async {
            let _ = stopped.await;
        }));
        let request = tokio::spawn(async move {
            reqwest::get(format!("http://{address}/slow"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        in_handler.await.unwrap();
        stop.send(()).unwrap();
        assert_eq!(request.await.unwrap(), "finished");
        server.await.unwrap().unwrap();
        assert!(
            TcpStream::connect(address).await.is_err(),
            "no longer accepting"
        );
    }
}
