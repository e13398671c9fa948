//! The OpenAI-compatible gateway, driven by the real `openai` Python package (installed by
//! `scripts/test` from `tests/python/requirements.txt`), against a local provider that speaks
//! OpenAI's and Anthropic's wire formats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bulkhead_core::config::{AuthScheme, ModelConfig, ProviderKind};
use bulkhead_testkit::fake_llm::FakeLlm;
use common::{Backend, TestServer, model_endpoint, put_agent, put_credential};
use serde_json::json;

fn model(alias: &str, provider: ProviderKind, endpoint: &str) -> ModelConfig {
    ModelConfig {
        alias: alias.into(),
        provider,
        endpoint: endpoint.into(),
        upstream_model: None,
        path: None,
        input_usd_per_million: 0.0,
        output_usd_per_million: 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_uses_the_gateway_in_both_modes() {
    let fake = FakeLlm::start().await.unwrap();
    let endpoints = [
        model_endpoint(
            "openai",
            format!("{}/v1", fake.base),
            AuthScheme::Bearer {},
            5_000,
        ),
        model_endpoint(
            "anthropic",
            fake.base.clone(),
            AuthScheme::Header {
                name: "x-api-key".into(),
            },
            5_000,
        ),
    ];
    let models = vec![
        model("fast", ProviderKind::Openai, "openai"),
        model("claude", ProviderKind::Anthropic, "anthropic"),
        model("premium", ProviderKind::Openai, "openai"),
    ];
    let server = TestServer::start_full(
        Backend::Sqlite,
        64 * 1024,
        &endpoints,
        models,
        Some(vec!["fast".into(), "claude".into()]),
    )
    .await;
    let mut keys = Vec::new();
    for tenant in ["acme", "globex"] {
        server.create_tenant(tenant).await;
        let (key, _) = server.create_key(tenant, "owner").await;
        put_credential(&server, &key, "openai", &format!("sk-{tenant}")).await;
        put_credential(&server, &key, "anthropic", &format!("ak-{tenant}")).await;
        put_agent(
            &server,
            &key,
            "helper",
            json!({"model": "fast", "system_prompt": "Help {{ tenant.name }}."}),
        )
        .await;
        keys.push(key);
    }
    put_agent(
        &server,
        &keys[0],
        "acme-only",
        json!({"model": "fast", "system_prompt": "Acme's secret agent."}),
    )
    .await;

    common::python_checks(
        "gateway_client.py",
        vec![server.base.clone(), keys[0].clone(), keys[1].clone()],
        "all gateway checks passed",
    )
    .await;

    // Usage is recorded per tenant and model; globex sees only its own.
    let (_, usage) = server.tenant_get("/v1/usage", &keys[0]).await;
    let requests = |report: &serde_json::Value, model: &str| {
        report["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["model"] == model)
            .map(|l| l["requests"].as_i64().unwrap())
            .sum::<i64>()
    };
    assert!(requests(&usage, "fast") >= 6, "{usage}");
    assert_eq!(requests(&usage, "claude"), 2, "{usage}");
    let (_, theirs) = server.tenant_get("/v1/usage", &keys[1]).await;
    assert_eq!(requests(&theirs, "fast"), 1, "{theirs}");
    assert_eq!(requests(&theirs, "claude"), 0);
    // Every upstream call carried the key of the tenant that made it.
    for seen in fake.seen() {
        assert!(
            seen.credential.ends_with("-acme") || seen.credential.ends_with("-globex"),
            "{seen:?}"
        );
    }
    server.finish().await;
}

/// The plain gateway forwards the client's body as the client wrote it, but for `model` (and a
/// stream's `stream` and `stream_options`), and refuses what is not a request in OpenAI's shape
/// with a stable code, before anything goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_clients_fields_as_written_and_a_bad_body_goes_nowhere() {
    let fake = FakeLlm::start().await.unwrap();
    let endpoints = [model_endpoint(
        "openai",
        format!("{}/v1", fake.base),
        AuthScheme::Bearer {},
        5_000,
    )];
    let mut fast = model("fast", ProviderKind::Openai, "openai");
    fast.upstream_model = Some("gpt-4o-mini".into());
    let server =
        TestServer::start_full(Backend::Sqlite, 64 * 1024, &endpoints, vec![fast], None).await;
    server.create_tenant("acme").await;
    let (key, _) = server.create_key("acme", "owner").await;
    put_credential(&server, &key, "openai", "sk-acme").await;
    let post = |body: &'static str| {
        server
            .request(reqwest::Method::POST, "/v1/chat/completions", Some(&key))
            .header("content-type", "application/json")
            .body(body)
    };

    let sent = r#"{"model":"fast","temperature":1.50,"messages":[{"role":"user","content":"say {{ hi }} \"now\""}],"n":1e0,"metadata":{"a":[1, 2]},"model":"fast"}"#;
    let (status, answer) = server.send(post(sent)).await;
    assert_eq!(status, 200, "{answer}");
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].body,
        r#"{"model":"gpt-4o-mini","temperature":1.50,"messages":[{"role":"user","content":"say {{ hi }} \"now\""}],"n":1e0,"metadata":{"a":[1, 2]}}"#
    );

    let streamed = server
        .request(reqwest::Method::POST, "/v1/chat/completions", Some(&key))
        .header("content-type", "application/json")
        .body(r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}],"user":"u1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let events = streamed.text().await.unwrap();
    assert!(events.trim_end().ends_with("data: [DONE]"), "{events}");
    assert_eq!(
        fake.seen()[1].body,
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}],"user":"u1","stream_options":{"include_usage":true}}"#
    );

    for (body, code, message) in [
        ("{\"model\": \"fast\", ", "malformed_body", None),
        ("[1, 2]", "invalid_request", Some("model must be a string")),
        (
            r#"{"model":7,"messages":[]}"#,
            "invalid_request",
            Some("model must be a string"),
        ),
        (
            r#"{"model":"fast"}"#,
            "invalid_request",
            Some("messages must be an array"),
        ),
        (
            r#"{"model":"fast","messages":{"role":"user"}}"#,
            "invalid_request",
            Some("messages must be an array"),
        ),
    ] {
        let response = post(body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        if let Some(message) = message {
            assert_eq!(error["error"]["message"], message, "{error}");
        }
    }
    assert_eq!(fake.seen().len(), 2, "a refused body went upstream");
    server.finish().await;
}
