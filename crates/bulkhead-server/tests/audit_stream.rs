//! The audit stream against a real nats-server of the test's own: every event of every tenant
//! reaches JetStream on its tenant's subject, in order, and a stop and start of NATS under
//! load loses nothing; a consumer that drops repeated message ids sees each event once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_core::TenantId;
use bulkhead_core::audit::AuditEvent;
use bulkhead_core::config::AuditStreamConfig;
use bulkhead_testkit::nats::NatsServer;
use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

const TENANTS: [&str; 2] = ["acme", "globex"];

/// Keeps both tenants writing prompt snippets (one audit event each) until told to stop;
/// returns how many writes were acknowledged with 201.
fn load(
    server: &Arc<TestServer>,
    key: &str,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let (server, key, stop) = (server.clone(), key.to_owned(), stop.clone());
    tokio::spawn(async move {
        let acknowledged = AtomicU64::new(0);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let response = server
                .request(Method::PUT, &format!("/v1/prompts/p{i}"), Some(&key))
                .json(&json!({"template": format!("snippet {i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        acknowledged.into_inner()
    })
}

async fn head(server: &TestServer, tenant: &str) -> i64 {
    let tenant = TenantId::try_from(tenant).unwrap();
    server
        .store
        .admin()
        .audit_events(&tenant, 0, i64::MAX)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e.seq)
}

/// Every message in the stream, as a consumer that de-duplicates by message id sees them:
/// (subject, event) in stream order, and how many repeats it dropped.
async fn consume(url: &str, stream: &str) -> (Vec<(String, AuditEvent)>, usize) {
    let client = async_nats::connect(url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut seen = HashSet::new();
    let mut events = Vec::new();
    let mut repeats = 0;
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .expect("every message has an id")
            .to_string();
        if !seen.insert(id.clone()) {
            repeats += 1;
            continue;
        }
        let event: AuditEvent = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(id, format!("{}:{}", event.tenant_id, event.seq));
        events.push((message.subject.to_string(), event));
    }
    (events, repeats)
}

#[tokio::test]
async fn every_event_reaches_its_tenants_subject_once_across_a_nats_stop_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(dir.path()).unwrap();
    let server = Arc::new(TestServer::start(Backend::Sqlite).await);
    for tenant in TENANTS {
        server.create_tenant(tenant).await;
    }
    let config = AuditStreamConfig {
        url: nats.url(),
        poll_ms: 20,
        batch: 64,
        ..AuditStreamConfig::default()
    };
    let publisher = bulkhead_egress::audit_stream::spawn(server.store.clone(), config.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for tenant in TENANTS {
        let (key, _) = server.create_key(tenant, "owner").await;
        writers.push(load(&server, &key, &stop));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.stop();
    let heads_at_stop = [head(&server, "acme").await, head(&server, "globex").await];
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let heads_at_start = [head(&server, "acme").await, head(&server, "globex").await];
    nats.resume().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = 0;
    for writer in writers {
        acknowledged += writer.await.unwrap();
    }
    for (stopped, started) in heads_at_stop.iter().zip(&heads_at_start) {
        assert!(
            started > stopped,
            "events were written while NATS was down ({stopped} -> {started})"
        );
    }

    // Catch-up: the publisher reconnects and drains what piled up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let backlog = server.store.admin().audit_stream_backlog().await.unwrap();
        if backlog.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not catch up: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publisher.abort();

    let (events, repeats) = consume(&nats.url(), &config.stream).await;
    let mut by_tenant: BTreeMap<String, Vec<AuditEvent>> = BTreeMap::new();
    for (subject, event) in events {
        assert_eq!(
            subject,
            format!("bulkhead.audit.{}", event.tenant_id),
            "an event on another tenant's subject"
        );
        by_tenant
            .entry(event.tenant_id.to_string())
            .or_default()
            .push(event);
    }
    let mut total = 0;
    for tenant in TENANTS {
        let stored = server
            .store
            .admin()
            .audit_events(&TenantId::try_from(tenant).unwrap(), 0, i64::MAX)
            .await
            .unwrap();
        // Exactly the chain, in order: nothing lost, nothing twice, nothing altered.
        assert_eq!(
            by_tenant[tenant], stored,
            "{tenant}'s stream differs from its chain"
        );
        total += stored.len();
    }
    assert!(
        total as u64 > acknowledged,
        "each write and each tenant's setup is an event"
    );
    println!(
        "audit stream: {total} events ({acknowledged} writes under load), {repeats} repeats dropped by message id"
    );
    Arc::into_inner(server).unwrap().finish().await;
}
