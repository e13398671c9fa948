//! Runs against local providers that speak OpenAI's and Anthropic's real wire formats:
//! streamed runs, many interleaved runs of two tenants on one endpoint, and upstreams that
//! stall, fail or answer garbage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bulkhead_core::config::{AuthScheme, ModelConfig, ProviderKind};
use bulkhead_testkit::fake_llm::FakeLlm;
use common::{Backend, TestServer, model_endpoint, put_agent, put_credential};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A server with model `fast` (OpenAI-compatible) and `claude` (Anthropic), both on `fake`.
async fn server_on(fake: &FakeLlm, backend: Backend, timeout_ms: u64) -> TestServer {
    let endpoints = [
        model_endpoint(
            "openai",
            format!("{}/v1", fake.base),
            AuthScheme::Bearer {},
            timeout_ms,
        ),
        model_endpoint(
            "anthropic",
            fake.base.clone(),
            AuthScheme::Header {
                name: "x-api-key".into(),
            },
            timeout_ms,
        ),
    ];
    let models = vec![
        ModelConfig {
            alias: "fast".into(),
            provider: ProviderKind::Openai,
            endpoint: "openai".into(),
            upstream_model: Some("gpt-4o-mini".into()),
            path: None,
            input_usd_per_million: 0.0,
            output_usd_per_million: 0.0,
        },
        ModelConfig {
            alias: "claude".into(),
            provider: ProviderKind::Anthropic,
            endpoint: "anthropic".into(),
            upstream_model: Some("claude-3-5-haiku-latest".into()),
            path: None,
            input_usd_per_million: 0.0,
            output_usd_per_million: 0.0,
        },
    ];
    TestServer::start_full(backend, 64 * 1024, &endpoints, models, None).await
}

/// A tenant with both provider keys and agents `gpt` and `haiku`; answers its API key.
async fn tenant(server: &TestServer, id: &str) -> String {
    server.create_tenant(id).await;
    let (key, _) = server.create_key(id, "owner").await;
    put_credential(server, &key, "openai", &format!("sk-{id}")).await;
    put_credential(server, &key, "anthropic", &format!("ak-{id}")).await;
    for (agent, model) in [("gpt", "fast"), ("haiku", "claude")] {
        put_agent(
            server,
            &key,
            agent,
            json!({"model": model, "system_prompt": "You help {{ tenant.name }}."}),
        )
        .await;
    }
    key
}

async fn run(server: &TestServer, key: &str, agent: &str, input: &str) -> Value {
    let (status, run) = server
        .send(
            server
                .request(Method::POST, &format!("/v1/agents/{agent}/runs"), Some(key))
                .json(&json!({"input": input})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    run
}

/// Posts a run with `Accept: text/event-stream` and answers its events, in order.
async fn run_streamed(
    server: &TestServer,
    key: &str,
    agent: &str,
    input: &str,
) -> Vec<(String, Value)> {
    let response = server
        .request(Method::POST, &format!("/v1/agents/{agent}/runs"), Some(key))
        .header("accept", "text/event-stream")
        .json(&json!({"input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            (
                field("event:"),
                serde_json::from_str(&field("data:")).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn streamed_runs_send_deltas_then_the_stored_run_on_both_providers() {
    streamed_runs(Backend::Sqlite).await;
}

#[tokio::test]
async fn streamed_runs_send_deltas_then_the_stored_run_on_postgres() {
    streamed_runs(Backend::Postgres).await;
}

async fn streamed_runs(backend: Backend) {
    let fake = FakeLlm::start().await.unwrap();
    let server = server_on(&fake, backend, 5_000).await;
    let key = tenant(&server, "acme").await;
    for (agent, expected) in [
        ("gpt", "answered with Bearer sk-acme"),
        ("haiku", "answered with ak-acme"),
    ] {
        let events = run_streamed(&server, &key, agent, "hello there").await;
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"run.started"), "{names:?}");
        assert_eq!(names.last(), Some(&"run.completed"), "{names:?}");
        let deltas: Vec<&str> = events
            .iter()
            .filter(|(n, _)| n == "message.delta")
            .map(|(_, d)| d["text"].as_str().unwrap())
            .collect();
        assert!(deltas.len() > 1, "the answer arrives in pieces: {deltas:?}");
        assert_eq!(deltas.concat(), expected);
        let (_, finished) = events.last().unwrap();
        assert_eq!(finished["output"], expected);
        assert_eq!(finished["input_tokens"], 11, "usage comes from the stream");
        assert_eq!(
            finished["output_tokens"],
            expected.split_whitespace().count()
        );
        let run_id = events[0].1["run_id"].as_str().unwrap();
        assert_eq!(finished["id"], run_id);
        let (_, stored) = server.tenant_get(&format!("/v1/runs/{run_id}"), &key).await;
        assert_eq!(stored["status"], "completed");
        assert_eq!(stored["output"], expected);
    }
    assert!(
        fake.seen().iter().all(|s| s.stream),
        "streamed upstream calls"
    );

    // A refused run is an HTTP error before any stream starts.
    let other = tenant(&server, "globex").await;
    let response = server
        .request(Method::POST, "/v1/agents/gpt/runs", Some(&other))
        .header("accept", "text/event-stream")
        .json(&json!({"input": "x", "thread_id": "thr_not_yours"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.finish().await;
}

#[tokio::test]
async fn five_hundred_interleaved_runs_of_two_tenants_each_carry_their_own_key() {
    let fake = FakeLlm::start().await.unwrap();
    let server = server_on(&fake, Backend::Sqlite, 10_000).await;
    let acme = tenant(&server, "acme").await;
    let globex = tenant(&server, "globex").await;
    let runs = futures_util::stream::iter(0..500)
        .map(|i| {
            let (id, key) = if i % 2 == 0 {
                ("acme", &acme)
            } else {
                ("globex", &globex)
            };
            let agent = if i % 3 == 0 { "haiku" } else { "gpt" };
            let server = &server;
            async move {
                let input = format!("{id} run {i}");
                let output = if i % 5 == 0 {
                    let events = run_streamed(server, key, agent, &input).await;
                    events.last().unwrap().1["output"].clone()
                } else {
                    run(server, key, agent, &input).await["output"].clone()
                };
                (id, agent, output)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(runs.len(), 500);
    for (id, agent, output) in runs {
        let expected = if agent == "gpt" {
            format!("answered with Bearer sk-{id}")
        } else {
            format!("answered with ak-{id}")
        };
        assert_eq!(output, expected);
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), 500);
    let wrong = seen
        .iter()
        .filter(|s| {
            let tenant = s.input.split_whitespace().next().unwrap_or_default();
            !s.credential.ends_with(&format!("k-{tenant}"))
        })
        .count();
    assert_eq!(
        wrong, 0,
        "every upstream request carried its own tenant's key"
    );
    server.finish().await;
}

#[tokio::test]
async fn upstreams_that_stall_fail_or_answer_garbage_fail_the_run_clearly() {
    let fake = FakeLlm::start().await.unwrap();
    let server = server_on(&fake, Backend::Sqlite, 700).await;
    let key = tenant(&server, "acme").await;
    for agent in ["gpt", "haiku"] {
        for (input, code) in [
            ("stall", "upstream_timeout"),
            ("garbage", "upstream_malformed"),
            ("status-429", "provider_rate_limited"),
            ("status-401", "provider_unauthorized"),
            ("status-500", "upstream_error"),
        ] {
            let finished = run(&server, &key, agent, input).await;
            assert_eq!(
                (finished["status"].as_str(), finished["error_code"].as_str()),
                (Some("failed"), Some(code)),
                "{agent} {input}: {finished}"
            );
        }
        for (input, code) in [
            ("truncate", "upstream_malformed"),
            ("stall", "upstream_timeout"),
            ("status-429", "provider_rate_limited"),
        ] {
            let events = run_streamed(&server, &key, agent, input).await;
            let (name, finished) = events.last().unwrap();
            assert_eq!(name, "run.failed");
            assert_eq!(finished["error_code"], code, "{agent} {input} streamed");
            let (_, stored) = server
                .tenant_get(
                    &format!("/v1/runs/{}", finished["id"].as_str().unwrap()),
                    &key,
                )
                .await;
            assert_eq!(stored["status"], "failed", "nothing left running");
        }
    }
    server.finish().await;
}

#[tokio::test]
async fn the_local_model_answers_runs_and_the_gateway_offline() {
    let local = local_model();
    let server = TestServer::start_full(Backend::Sqlite, 64 * 1024, &[], vec![local], None).await;
    server.create_tenant("acme").await;
    let (key, _) = server.create_key("acme", "owner").await;
    put_agent(
        &server,
        &key,
        "geo",
        json!({"model": "local", "system_prompt": "You are a helpful assistant for {{ tenant.name }}. Answer in one short sentence.",
            "max_output_tokens": 24}),
    )
    .await;
    let events = run_streamed(&server, &key, "geo", "What is the capital of France?").await;
    let (name, finished) = events.last().unwrap();
    assert_eq!(name, "run.completed", "{finished}");
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "message.delta")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(finished["output"].as_str().unwrap(), deltas);
    assert!(deltas.contains("Paris"), "{deltas}");
    assert!(finished["input_tokens"].as_i64().unwrap() > 10);
    assert!((1..=24).contains(&finished["output_tokens"].as_i64().unwrap()));

    // The gateway translates for it, and nothing went out: no outbound call was audited.
    let (status, completion) = server
        .send(
            server
                .request(Method::POST, "/v1/chat/completions", Some(&key))
                .json(&json!({"model": "local", "max_tokens": 8,
                    "messages": [{"role": "user", "content": "Say hello."}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{completion}");
    assert_eq!(completion["object"], "chat.completion");
    assert!(completion["usage"]["completion_tokens"].as_i64().unwrap() <= 8);
    let tenant = server
        .store
        .admin()
        .get_tenant(&bulkhead_core::TenantId::try_from("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let events = server
        .store
        .admin()
        .audit_events(&tenant.id, 0, 1000)
        .await
        .unwrap();
    assert!(events.iter().all(|e| e.action != "egress.call"));
    server.finish().await;
}

/// A tenant's `run_cpu_ms` stops its run's local generation between tokens and fails the run
/// clearly; another tenant's identical run, without a budget, completes.
#[tokio::test]
async fn a_run_over_its_tenants_cpu_budget_fails_and_another_tenants_does_not() {
    let local = local_model();
    let mut limits = bulkhead_core::config::LimitsConfig::default();
    limits.tenants.insert(
        "acme".into(),
        bulkhead_core::config::TenantLimits {
            run_cpu_ms: Some(20),
            ..Default::default()
        },
    );
    let server = TestServer::start_configured(
        Backend::Sqlite,
        common::ServerConfig {
            models: vec![local],
            limits,
            ..common::ServerConfig::bare()
        },
    )
    .await;
    let mut keys = Vec::new();
    for tenant in ["acme", "globex"] {
        server.create_tenant(tenant).await;
        let (key, _) = server.create_key(tenant, "owner").await;
        put_agent(
            &server,
            &key,
            "writer",
            json!({"model": "local", "system_prompt": "You write long stories.", "max_output_tokens": 48}),
        )
        .await;
        keys.push(key);
    }
    let run = |key: String| {
        let server = &server;
        async move {
            let (status, run) = server
                .send(
                    server
                        .request(Method::POST, "/v1/agents/writer/runs", Some(&key))
                        .json(&json!({"input": "Tell me a story about a lighthouse."})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{run}");
            run
        }
    };
    let stopped = run(keys[0].clone()).await;
    assert_eq!(
        (stopped["status"].as_str(), stopped["error_code"].as_str()),
        (Some("failed"), Some("cpu_budget_exceeded")),
        "{stopped}"
    );
    assert!(
        stopped["error_message"]
            .as_str()
            .unwrap()
            .contains("over its budget of 20 ms"),
        "{stopped}"
    );
    let finished = run(keys[1].clone()).await;
    assert_eq!(finished["status"], "completed", "{finished}");
    assert!(
        finished["output_tokens"].as_i64().unwrap() > 1,
        "{finished}"
    );
    server.finish().await;
}

/// The offline `local` model, as an alias of that name.
fn local_model() -> ModelConfig {
    ModelConfig {
        alias: "local".into(),
        provider: ProviderKind::Local,
        endpoint: String::new(),
        upstream_model: None,
        path: Some(bulkhead_testkit::local_chat_model()),
        input_usd_per_million: 0.0,
        output_usd_per_million: 0.0,
    }
}
