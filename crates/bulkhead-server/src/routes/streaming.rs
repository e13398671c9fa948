//! Server-sent event responses fed by a task that owns the work (a run, a completion) and
//! sends its items on a channel; the response reads the channel, so a client that goes away
//! does not stop the work. The stream ends when the task drops its sender.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

/// Waits for the task's first item: `refused` turns one that says the work never started into
/// a plain HTTP error, and a task that ended without sending anything is `ended`'s error.
/// Otherwise answers a stream of every item through `to_event`.
pub(crate) async fn after_first_item<T, E>(
    mut receiver: mpsc::UnboundedReceiver<T>,
    refused: impl FnOnce(T) -> Result<T, E>,
    ended: impl FnOnce() -> E,
    to_event: fn(T) -> Event,
) -> Result<Response, E>
where
    T: Send + 'static,
{
    let first = match receiver.recv().await {
        Some(item) => refused(item)?,
        None => return Err(ended()),
    };
    let stream = futures_util::stream::unfold(
        (Some(first), receiver),
        move |(pending, mut receiver)| async move {
            let item = match pending {
                Some(item) => item,
                None => receiver.recv().await?,
            };
            Some((Ok::<_, Infallible>(to_event(item)), (None, receiver)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
