//! Publishing every tenant's audit chain to NATS JetStream.
//!
//! The chain in the database is the outbox: the publisher reads each tenant's events after
//! its cursor, publishes them in order on `<prefix>.<tenant>` with message id
//! `<tenant>:<seq>`, and moves the cursor only past events the stream acknowledged. So an
//! event acknowledged to a client is published at least once, in order, whatever NATS did in
//! between; JetStream drops a republished id within its duplicate window, and a consumer
//! that remembers ids (or the last sequence per subject) sees each event once.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream::StorageType};
use bulkhead_core::config::AuditStreamConfig;
use bulkhead_store::{Store, StreamBacklog};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot reach NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot create or read the JetStream stream {stream}: {source}")]
    Stream {
        stream: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("publishing to JetStream failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("reading the audit chain failed: {0}")]
    Store(#[from] bulkhead_store::StoreError),
    #[error("an audit event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Starts the publisher; it runs until the task is aborted, retrying with backoff while NATS
/// or the database is away.
pub fn spawn(store: Store, config: AuditStreamConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut publisher = Publisher {
            store,
            config,
            jetstream: None,
        };
        let poll = Duration::from_millis(publisher.config.poll_ms.max(10));
        let mut backoff = Duration::from_millis(100);
        loop {
            match publisher.publish_backlog().await {
                Ok(0) => {
                    backoff = Duration::from_millis(100);
                    tokio::time::sleep(poll).await;
                }
                Ok(_) => backoff = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "audit stream behind; will retry");
                    metrics::counter!("bulkhead_audit_stream_errors_total").increment(1);
                    // The stream may be gone with the server's storage: check it again.
                    publisher.jetstream = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

struct Publisher {
    store: Store,
    config: AuditStreamConfig,
    /// Connected, with the stream known to exist.
    jetstream: Option<jetstream::Context>,
}

impl Publisher {
    async fn connected(&mut self) -> Result<jetstream::Context, StreamError> {
        if let Some(jetstream) = &self.jetstream {
            return Ok(jetstream.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .name("bulkhead-audit-stream")
            .connect(self.config.url.as_str())
            .await
            .map_err(|source| StreamError::Connect {
                url: self.config.url.clone(),
                source,
            })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client);
        jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: self.config.stream.clone(),
                subjects: vec![format!("{}.>", self.config.subject_prefix)],
                duplicate_window: Duration::from_secs(self.config.duplicate_window_seconds),
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|source| StreamError::Stream {
                stream: self.config.stream.clone(),
                source,
            })?;
        tracing::info!(url = %self.config.url, stream = %self.config.stream, "audit stream connected");
        self.jetstream = Some(jetstream.clone());
        Ok(jetstream)
    }

    /// Publishes one batch of every tenant that is behind; returns how many events went out.
    async fn publish_backlog(&mut self) -> Result<u64, StreamError> {
        let backlog = self.store.admin().audit_stream_backlog().await?;
        let behind: i64 = backlog.iter().map(|b| b.head_seq - b.published_seq).sum();
        metrics::gauge!("bulkhead_audit_stream_backlog_events").set(behind as f64);
        if backlog.is_empty() {
            return Ok(0);
        }
        let jetstream = self.connected().await?;
        let mut published = 0;
        for tenant in &backlog {
            published += self.publish_tenant(&jetstream, tenant).await?;
        }
        Ok(published)
    }

    /// Sends a batch without waiting between messages, then takes the acknowledgements in
    /// order: the cursor moves to the last event acknowledged before the first failure.
    async fn publish_tenant(
        &self,
        jetstream: &jetstream::Context,
        backlog: &StreamBacklog,
    ) -> Result<u64, StreamError> {
        let events = self
            .store
            .admin()
            .audit_events(
                &backlog.tenant,
                backlog.published_seq,
                i64::from(self.config.batch.max(1)),
            )
            .await?;
        let subject = format!("{}.{}", self.config.subject_prefix, backlog.tenant);
        let mut pending = Vec::with_capacity(events.len());
        for event in &events {
            let payload = serde_json::to_vec(event)?;
            let message = PublishMessage::build()
                .payload(payload.into())
                .message_id(format!("{}:{}", event.tenant_id, event.seq));
            pending.push((
                event.seq,
                jetstream.send_publish(subject.clone(), message).await?,
            ));
        }
        let mut acknowledged = None;
        let mut failure = None;
        for (seq, ack) in pending {
            match ack.await {
                Ok(_) => acknowledged = Some(seq),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let sent = match acknowledged {
            Some(seq) => {
                self.store
                    .admin()
                    .mark_audit_published(&backlog.tenant, seq)
                    .await?;
                (seq - backlog.published_seq) as u64
            }
            None => 0,
        };
        metrics::counter!("bulkhead_audit_stream_published_total").increment(sent);
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(sent),
        }
    }
}
