//! The request metrics: every request counted in its series, from whichever thread served it,
//! however many requests before it were; and labels that a client cannot multiply.
//!
//! A test binary of its own: the recorder is the process's, so in this process no other test's
//! requests add to the counts checked here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestServer};
use reqwest::Method;

/// The value of the first sample of `metric` whose labels include every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_counted_in_its_series_and_an_odd_method_is_other() {
    let server = TestServer::start(Backend::Sqlite).await;
    // The test servers allowlist `noisy` for a tenant label; `quiet` counts as `other`.
    server.create_tenant("noisy").await;
    server.create_tenant("quiet").await;
    let (noisy, _) = server.create_key("noisy", "viewer").await;
    let (quiet, _) = server.create_key("quiet", "viewer").await;
    let odd = Method::from_bytes(b"FROBNICATE").unwrap();

    let whoami = [
        r#"route="/v1/whoami""#,
        r#"method="GET""#,
        r#"status="2xx""#,
    ];
    let odd_whoami = [
        r#"route="/v1/whoami""#,
        r#"method="other""#,
        r#"status="4xx""#,
    ];
    let noisy_ok = [r#"tenant="noisy""#, r#"status="2xx""#];
    let other_ok = [r#"tenant="other""#, r#"status="2xx""#];
    // Two rounds: the second's requests go through the handles the first one kept.
    for round in 1..=2 {
        // Several connections, so that both of the runtime's threads serve some.
        let mut sent = Vec::new();
        for key in [&noisy, &noisy, &noisy, &quiet] {
            let request = server.request(Method::GET, "/v1/whoami", Some(key));
            sent.push(tokio::spawn(request.send()));
        }
        for _ in 0..3 {
            let request = server.request(odd.clone(), "/v1/whoami", Some(&noisy));
            sent.push(tokio::spawn(request.send()));
        }
        for request in sent {
            request.await.unwrap().unwrap();
        }

        let text = server.metrics().await;
        let n = f64::from(round);
        let requests = "bulkhead_http_requests_total";
        assert_eq!(sample(&text, requests, &whoami), 4.0 * n, "{text}");
        assert_eq!(sample(&text, requests, &odd_whoami), 3.0 * n, "{text}");
        assert_eq!(
            sample(
                &text,
                "bulkhead_http_request_duration_seconds_count",
                &[r#"route="/v1/whoami""#]
            ),
            7.0 * n,
            "{text}"
        );
        let tenants = "bulkhead_tenant_requests_total";
        assert_eq!(sample(&text, tenants, &noisy_ok), 3.0 * n, "{text}");
        assert_eq!(sample(&text, tenants, &other_ok), n, "{text}");
        assert!(!text.contains("FROBNICATE"), "{text}");
        assert!(!text.contains("quiet"), "{text}");
    }
    server.finish().await;
}
