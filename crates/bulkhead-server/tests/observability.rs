//! What the operator sees: the per-tenant error-rate alert (audit event and webhook), and the
//! trace id that ties a request's audit events to its caller's trace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bulkhead_core::config::{AlertsConfig, AuthScheme, EndpointKind};
use bulkhead_testkit::fake_llm::FakeLlm;
use bulkhead_testkit::fake_saas::FakeSaas;
use common::{
    Backend, ServerConfig, TestServer, model_endpoint, openai_model, plain_endpoint, put_credential,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn audit(server: &TestServer, key: &str, action: &str) -> Vec<Value> {
    let (status, page) = server
        .tenant_get(&format!("/v1/audit?action={action}"), key)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["events"].as_array().unwrap().clone()
}

async fn wait_for_event(server: &TestServer, key: &str, action: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(event) = audit(server, key, action).await.pop() {
            return event;
        }
        assert!(Instant::now() < deadline, "no {action} event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tenant_whose_errors_pass_the_threshold_is_alerted_on_alone_and_resolved() {
    let llm = FakeLlm::start().await.unwrap();
    let saas = FakeSaas::start(&[]).await.unwrap();
    let config = ServerConfig {
        endpoints: vec![
            model_endpoint(
                "openai",
                format!("{}/v1", llm.base),
                AuthScheme::Bearer {},
                5_000,
            ),
            plain_endpoint(
                "alerts-hook",
                format!("{}/echo/alerts", saas.base),
                EndpointKind::Webhook,
                AuthScheme::None {},
            ),
        ],
        models: vec![openai_model("fast", "openai", (0.0, 0.0))],
        alerts: AlertsConfig {
            error_rate_threshold: 0.02,
            window_seconds: 2,
            min_requests: 20,
            check_ms: 50,
            webhook: Some("alerts-hook".into()),
        },
        ..ServerConfig::bare()
    };
    let server = TestServer::start_configured(Backend::Sqlite, config).await;
    server.create_tenant("acme").await;
    server.create_tenant("globex").await;
    let (acme, _) = server.create_key("acme", "owner").await;
    let (globex, _) = server.create_key("globex", "owner").await;
    put_credential(&server, &acme, "openai", "sk-acme").await;

    // Acme: 20 upstream failures (502) among 40 requests; globex: 40 successes.
    for _ in 0..20 {
        let response = server
            .request(Method::POST, "/v1/chat/completions", Some(&acme))
            .json(
                &json!({"model": "fast", "messages": [{"role": "user", "content": "status-500"}]}),
            )
            .send()
            .await
            .unwrap();
        assert!(response.status().is_server_error(), "{}", response.status());
        // Through the agent-work middleware an answer keeps its length (no chunking).
        assert!(response.content_length().is_some_and(|n| n > 0));
        assert_eq!(
            server.tenant_get("/v1/whoami", &acme).await.0,
            StatusCode::OK
        );
    }
    for _ in 0..40 {
        assert_eq!(
            server.tenant_get("/v1/whoami", &globex).await.0,
            StatusCode::OK
        );
    }

    let alert = wait_for_event(&server, &acme, "alert.error_rate").await;
    assert_eq!(alert["outcome"], "failure");
    // It fires as soon as the window holds enough requests at a rate over the threshold.
    assert!(
        alert["details"]["requests"].as_u64().unwrap() >= 20,
        "{alert}"
    );
    assert!(
        alert["details"]["error_rate"].as_f64().unwrap() > 0.4,
        "{alert}"
    );
    let hooks: Vec<Value> = saas
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/echo/alerts"))
        .map(|r| r.body)
        .collect();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(
        (hooks[0]["type"].as_str(), hooks[0]["tenant_id"].as_str()),
        (Some("alert.error_rate"), Some("acme"))
    );
    // Globex, served by the same process at the same time, raised nothing.
    assert!(audit(&server, &globex, "alert.").await.is_empty());

    // Once the failures have left the window, acme's successes resolve the alert.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    for _ in 0..20 {
        assert_eq!(
            server.tenant_get("/v1/whoami", &acme).await.0,
            StatusCode::OK
        );
    }
    let resolved = wait_for_event(&server, &acme, "alert.resolved").await;
    assert_eq!(resolved["details"]["errors"], 0, "{resolved}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !saas
        .requests()
        .iter()
        .any(|r| r.body["type"] == "alert.resolved")
    {
        assert!(
            Instant::now() < deadline,
            "the resolution never reached the webhook"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(audit(&server, &acme, "alert.error_rate").await.len(), 1);
    server.finish().await;
}

#[tokio::test]
async fn a_callers_traceparent_reaches_the_audit_events_of_its_request() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.create_tenant("acme").await;
    let (acme, _) = server.create_key("acme", "owner").await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = server
        .request(Method::PUT, "/v1/prompts/tone", Some(&acme))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"template": "Be brief."}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let written = audit(&server, &acme, "prompt.").await;
    assert_eq!(written[0]["trace_id"], trace, "{written:?}");
    assert_eq!(written[0]["request_id"], request_id.as_str());
    // Without a traceparent each request gets a trace of its own.
    put_credential(&server, &acme, "openai", "sk-acme").await;
    let credential = audit(&server, &acme, "credential.").await;
    let own = credential[0]["trace_id"].as_str().unwrap();
    assert_eq!(own.len(), 32);
    assert_ne!(own, trace);
    server.finish().await;
}
