//! Daily token budgets, run caps and cost attribution, against a fake OpenAI-compatible
//! provider and a fake tool: a budget that runs out in the middle of a run stops it at its
//! next step, another tenant never notices, and each tenant, agent and tool call is costed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bulkhead_core::config::{AuthScheme, EndpointKind, LimitsConfig, TenantLimits};
use bulkhead_testkit::fake_llm::FakeLlm;
use bulkhead_testkit::fake_saas::FakeSaas;
use common::{
    Backend, ServerConfig, TestServer, model_endpoint, openai_model, plain_endpoint, put_agent,
    put_credential,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const INPUT_USD: f64 = 2.0;
const OUTPUT_USD: f64 = 8.0;

async fn server(llm: &FakeLlm, saas: &FakeSaas) -> TestServer {
    let mut limits = LimitsConfig::default();
    // Acme's budget is smaller than one model answer: its first step is allowed, its next
    // one is not.
    limits.tenants.insert(
        "acme".into(),
        TenantLimits {
            tokens_per_day: Some(12),
            ..TenantLimits::default()
        },
    );
    limits.tenants.insert(
        "globex".into(),
        TenantLimits {
            max_concurrent_runs: Some(1),
            ..TenantLimits::default()
        },
    );
    let config = ServerConfig {
        endpoints: vec![
            model_endpoint(
                "openai",
                format!("{}/v1", llm.base),
                AuthScheme::Bearer {},
                1_500,
            ),
            plain_endpoint(
                "crm",
                format!("{}/echo", saas.base),
                EndpointKind::Tool,
                AuthScheme::Bearer {},
            ),
        ],
        models: vec![openai_model("fast", "openai", (INPUT_USD, OUTPUT_USD))],
        limits,
        ..ServerConfig::bare()
    };
    TestServer::start_configured(Backend::Sqlite, config).await
}

/// A tenant with a model key, a CRM toolset and agent `forecaster` that may call it.
async fn tenant(server: &TestServer, id: &str) -> String {
    server.create_tenant(id).await;
    let (key, _) = server.create_key(id, "owner").await;
    put_credential(server, &key, "openai", &format!("sk-{id}")).await;
    put_credential(server, &key, "crm", &format!("crm-{id}")).await;
    let (status, body) = server
        .send(
            server
                .request(Method::PUT, "/v1/tools/crm", Some(&key))
                .json(&json!({
                    "kind": "http", "endpoint": "crm", "credential": "crm",
                    "operations": [{
                        "name": "forecast", "description": "Weather by city", "method": "GET",
                        "path": "/forecast/{city}",
                        "arguments": {"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"]},
                        "target": "city {city}"
                    }]
                })),
        )
        .await;
    assert!(status.is_success(), "{body}");
    put_agent(
        server,
        &key,
        "forecaster",
        json!({"model": "fast", "system_prompt": "Forecast for {{ tenant.name }}.", "tools": ["crm"]}),
    )
    .await;
    key
}

async fn start_run(server: &TestServer, key: &str, input: &str) -> (StatusCode, Value) {
    server
        .send(
            server
                .request(Method::POST, "/v1/agents/forecaster/runs", Some(key))
                .json(&json!({"input": input})),
        )
        .await
}

#[tokio::test]
async fn a_budget_spent_mid_run_stops_that_run_only_and_usage_is_costed_per_agent_and_tool() {
    let llm = FakeLlm::start().await.unwrap();
    let saas = FakeSaas::start(&[]).await.unwrap();
    let server = server(&llm, &saas).await;
    let acme = tenant(&server, "acme").await;
    let globex = tenant(&server, "globex").await;

    // Step 1 is allowed and calls the tool; the answer's tokens spend the budget, so step 2
    // is refused and the run ends there, failed, with what it did so far kept.
    let (status, run) = start_run(&server, &acme, "weather in Oslo").await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(
        (run["status"].as_str(), run["error_code"].as_str()),
        (Some("failed"), Some("budget_exhausted")),
        "{run}"
    );
    assert_eq!(run["steps"], 1, "{run}");
    let transcript = run["transcript"].to_string();
    assert!(
        transcript.contains("/forecast/Oslo"),
        "the tool ran: {transcript}"
    );

    // Now nothing of acme's reaches a model: runs and the gateway get 429 and a clear code.
    let (status, refused) = start_run(&server, &acme, "hello").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["code"], "budget_exhausted");
    // The gateway answers in OpenAI's error format, which its SDKs read.
    let response = server
        .request(Method::POST, "/v1/chat/completions", Some(&acme))
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "budget_exhausted");
    let calls_before = llm.log.lock().unwrap().len();

    // Globex has no budget and its own count: its identical run completes.
    let (status, run) = start_run(&server, &globex, "weather in Oslo").await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["steps"], 2);
    assert_eq!(llm.log.lock().unwrap().len(), calls_before + 2);

    // The exhaustion is in acme's trail once, not in globex's.
    let (_, trail) = server
        .tenant_get("/v1/audit?action=budget.exhausted", &acme)
        .await;
    assert_eq!(trail["events"].as_array().unwrap().len(), 1, "{trail}");
    assert_eq!(trail["events"][0]["details"]["tokens_per_day"], 12);
    let (_, theirs) = server
        .tenant_get("/v1/audit?action=budget.exhausted", &globex)
        .await;
    assert!(theirs["events"].as_array().unwrap().is_empty(), "{theirs}");

    // Cost attribution: per agent and model at the configured prices, tool calls per agent.
    let (status, usage) = server.tenant_get("/v1/usage", &acme).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let line = &usage["lines"][0];
    assert_eq!(
        (line["model"].as_str(), line["agent"].as_str()),
        (Some("fast"), Some("forecaster"))
    );
    assert_eq!(line["requests"], 1);
    let (input, output) = (
        line["input_tokens"].as_f64().unwrap(),
        line["output_tokens"].as_f64().unwrap(),
    );
    let expected = (input * INPUT_USD + output * OUTPUT_USD) / 1e6;
    assert!(
        (line["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{usage}"
    );
    assert!(expected > 0.0);
    assert_eq!(usage["budget"]["tokens_per_day"], 12);
    assert!(usage["budget"]["spent_today"].as_i64().unwrap() >= 12);
    assert_eq!(
        usage["tool_calls"],
        json!([{"day": line["day"], "agent": "forecaster", "tool": "crm.forecast", "calls": 1, "failures": 0}])
    );

    // Finance sees both tenants, each with its own cost.
    let (status, platform) = server.admin(Method::GET, "/admin/v1/usage", None).await;
    assert_eq!(status, StatusCode::OK, "{platform}");
    let tenants: Vec<&str> = platform["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
    assert_eq!(platform["tenants"][1]["lines"][0]["requests"], 2);
    let (status, bad) = server
        .admin(Method::GET, "/admin/v1/usage?from=yesterday", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    server.finish().await;
}

#[tokio::test]
async fn a_tenant_at_its_run_cap_is_refused_until_a_run_ends() {
    let llm = FakeLlm::start().await.unwrap();
    let saas = FakeSaas::start(&[]).await.unwrap();
    let server = server(&llm, &saas).await;
    let globex = tenant(&server, "globex").await;
    let acme = tenant(&server, "acme").await;

    // `stall` keeps the model from answering until the endpoint's 1.5 s timeout.
    let slow = {
        let request = server
            .request(Method::POST, "/v1/agents/forecaster/runs", Some(&globex))
            .json(&json!({"input": "stall"}));
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while llm.log.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow run never reached the model"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, refused) = start_run(&server, &globex, "hello").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["code"], "too_many_runs");
    // The cap is globex's alone.
    let (status, run) = start_run(&server, &acme, "hello").await;
    assert_eq!(
        (status, run["status"].as_str()),
        (StatusCode::OK, Some("completed")),
        "{run}"
    );

    let slow = slow.await.unwrap();
    assert_eq!(slow["error_code"], "upstream_timeout", "{slow}");
    let (status, run) = start_run(&server, &globex, "hello").await;
    assert_eq!(
        (status, run["status"].as_str()),
        (StatusCode::OK, Some("completed")),
        "{run}"
    );
    server.finish().await;
}
