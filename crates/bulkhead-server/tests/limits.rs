//! Per-tenant rate limits: a noisy neighbour sending 20 times its limit is refused with 429
//! while every request of the quiet tenant beside it succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bulkhead_core::config::{LimitsConfig, TenantLimits};
use common::{Backend, TestServer};
use reqwest::StatusCode;

#[tokio::test]
async fn a_tenant_flooding_twenty_times_its_limit_does_not_stop_another_tenants_requests() {
    let mut limits = LimitsConfig {
        requests_per_second: 20.0,
        burst: 20,
        ..LimitsConfig::default()
    };
    limits.tenants.insert(
        "noisy".into(),
        TenantLimits {
            requests_per_second: Some(10.0),
            burst: Some(10),
            ..TenantLimits::default()
        },
    );
    let server = TestServer::start_with_limits(Backend::Sqlite, limits).await;
    server.create_tenant("noisy").await;
    server.create_tenant("quiet").await;
    let (noisy, _) = server.create_key("noisy", "viewer").await;
    let (quiet, _) = server.create_key("quiet", "viewer").await;

    // For two seconds the noisy tenant sends 200 requests a second (20 times its 10), while
    // the quiet one sends 10 a second (half of its 20).
    let started = Instant::now();
    let flood = {
        let (base, key) = (server.base.clone(), noisy.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while started.elapsed() < Duration::from_secs(2) {
                tick.tick().await;
                let response = client
                    .get(format!("{base}/v1/whoami"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    assert!(response.headers().contains_key("retry-after"));
                    let body: serde_json::Value = response.json().await.unwrap();
                    assert_eq!(body["code"], "rate_limited");
                    statuses.push(429);
                } else {
                    statuses.push(response.status().as_u16());
                }
            }
            statuses
        })
    };
    let mut quiet_statuses = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < Duration::from_secs(2) {
        tick.tick().await;
        let (status, body) = server.tenant_get("/v1/whoami", &quiet).await;
        assert_eq!(body["tenant_id"], "quiet");
        quiet_statuses.push(status);
    }
    let noisy_statuses = flood.await.unwrap();
    assert!(
        quiet_statuses.iter().all(|s| *s == StatusCode::OK),
        "{quiet_statuses:?}"
    );
    assert!(quiet_statuses.len() >= 15, "{}", quiet_statuses.len());
    let allowed = noisy_statuses.iter().filter(|s| **s == 200).count();
    let refused = noisy_statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        allowed + refused,
        noisy_statuses.len(),
        "{noisy_statuses:?}"
    );
    // The burst of 10 plus about 10 a second for 2 seconds; the rest refused.
    assert!(
        (10..=40).contains(&allowed),
        "allowed {allowed} of {}",
        noisy_statuses.len()
    );
    assert!(refused > allowed, "refused {refused}, allowed {allowed}");

    // Prometheus metrics, for the admin token only: refusals by tenant for the allowlisted
    // tenant only (the test server allowlists "noisy"), requests by route template, and no
    // secret anywhere.
    let (status, _) = server
        .send(server.request(reqwest::Method::GET, "/metrics", Some(&quiet)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let text = server.metrics().await;
    let refusals = text
        .lines()
        .find(|l| l.starts_with("bulkhead_rate_limited_total{tenant=\"noisy\"}"))
        .unwrap_or_else(|| panic!("no refusal counter for the allowlisted tenant:\n{text}"));
    let counted: f64 = refusals.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted >= refused as f64, "{refusals} < {refused}");
    assert!(text.contains("route=\"/v1/whoami\""), "{text}");
    assert!(
        text.contains("bulkhead_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        !text.contains("quiet"),
        "a tenant outside the allowlist got a label:\n{text}"
    );
    assert!(!text.contains("bhk_"), "a key in the metrics:\n{text}");
    server.finish().await;
}
