//! Runs over HTTP with the built-in scripted model: the loop, its limits, its failures, its
//! persistence, and isolation of run ids.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn agent(server: &TestServer, key: &str, name: &str, spec: Value) {
    let (status, body) = server
        .send(
            server
                .request(Method::PUT, &format!("/v1/agents/{name}"), Some(key))
                .json(&spec),
        )
        .await;
    assert!(status.is_success(), "{body}");
}

async fn run(server: &TestServer, key: &str, name: &str, body: Value) -> (StatusCode, Value) {
    server
        .send(
            server
                .request(Method::POST, &format!("/v1/agents/{name}/runs"), Some(key))
                .json(&body),
        )
        .await
}

#[tokio::test]
async fn a_scripted_run_calls_a_tool_then_answers_and_is_stored() {
    scripted_run_calls_a_tool_then_answers(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_scripted_run_calls_a_tool_then_answers_and_is_stored_on_postgres() {
    scripted_run_calls_a_tool_then_answers(Backend::Postgres).await;
}

async fn scripted_run_calls_a_tool_then_answers(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_tenant("acme").await;
    server.create_tenant("globex").await;
    let (acme, _) = server.create_key("acme", "developer").await;
    let (globex, _) = server.create_key("globex", "developer").await;
    agent(&server, &acme, "triage", json!({
        "model": "scripted",
        "system_prompt": "You help {{ tenant.name }}.",
        "script": [{"tool_call": {"name": "lookup", "arguments": {"q": "status"}}}, {"reply": "All green."}],
    }))
    .await;
    let (status, finished) = run(
        &server,
        &acme,
        "triage",
        json!({"input": "status? {{ tenant.id }}"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{finished}");
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_eq!(finished["output"], "All green.");
    assert_eq!(
        (
            finished["steps"].as_i64(),
            finished["agent_version"].as_i64()
        ),
        (Some(2), Some(1))
    );
    let roles: Vec<_> = finished["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
    assert_eq!(finished["transcript"][0]["content"], "You help acme org.");
    assert_eq!(
        finished["transcript"][1]["content"], "status? {{ tenant.id }}",
        "input is data"
    );
    assert!(
        finished["transcript"][3]["content"]
            .as_str()
            .unwrap()
            .contains("not available")
    );

    // Stored, readable by id; another tenant's id answers like a missing one.
    let id = finished["id"].as_str().unwrap();
    let (status, stored) = server.tenant_get(&format!("/v1/runs/{id}"), &acme).await;
    assert_eq!(
        (status, &stored["output"]),
        (StatusCode::OK, &json!("All green."))
    );
    let foreign = server.tenant_get(&format!("/v1/runs/{id}"), &globex).await;
    let missing = server
        .tenant_get("/v1/runs/run_doesnotexist", &globex)
        .await;
    assert_eq!(foreign, missing);
    assert_eq!(foreign.0, StatusCode::NOT_FOUND);
    // Globex cannot run acme's agent either.
    assert_eq!(
        run(&server, &globex, "triage", json!({"input": "x"}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // A new version leaves old runs pointing at the version they used.
    agent(
        &server,
        &acme,
        "triage",
        json!({"model": "scripted", "system_prompt": "v2", "script": [{"reply": "v2"}]}),
    )
    .await;
    let (_, second) = run(&server, &acme, "triage", json!({"input": "again"})).await;
    assert_eq!(
        (second["agent_version"].as_i64(), second["output"].as_str()),
        (Some(2), Some("v2"))
    );
    let (_, first) = server.tenant_get(&format!("/v1/runs/{id}"), &acme).await;
    assert_eq!(first["agent_version"], 1);

    let events = server
        .store
        .admin()
        .audit_events(&bulkhead_core::TenantId::try_from("acme").unwrap(), 0, 100)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "run.completed" && e.resource == format!("run/{id}"))
    );
    server.finish().await;
}

#[tokio::test]
async fn runs_fail_with_clear_codes_and_nothing_left_running() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.create_tenant("acme").await;
    let (key, _) = server.create_key("acme", "developer").await;
    let call = json!({"tool_call": {"name": "t", "arguments": {}}});
    agent(&server, &key, "looper", json!({"model": "scripted", "system_prompt": "x", "max_steps": 2, "script": [call, call, call]})).await;
    agent(
        &server,
        &key,
        "short",
        json!({"model": "scripted", "system_prompt": "x", "script": [call]}),
    )
    .await;
    agent(
        &server,
        &key,
        "needs-user",
        json!({"model": "scripted", "system_prompt": "Hi {{ user }}", "script": [{"reply": "x"}]}),
    )
    .await;
    agent(
        &server,
        &key,
        "unknown-model",
        json!({"model": "gpt-17", "system_prompt": "x"}),
    )
    .await;
    for (name, code) in [
        ("looper", "max_steps_exceeded"),
        ("short", "script_exhausted"),
        ("needs-user", "template_error"),
        ("unknown-model", "unknown_model"),
    ] {
        let (status, finished) = run(&server, &key, name, json!({"input": "go"})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (finished["status"].as_str(), finished["error_code"].as_str()),
            (Some("failed"), Some(code)),
            "{finished}"
        );
        let (_, stored) = server
            .tenant_get(
                &format!("/v1/runs/{}", finished["id"].as_str().unwrap()),
                &key,
            )
            .await;
        assert_eq!(
            stored["status"], "failed",
            "persisted as failed, never left running"
        );
    }
    // With an end user the template renders.
    let (_, finished) = run(
        &server,
        &key,
        "needs-user",
        json!({"input": "go", "end_user": "alice"}),
    )
    .await;
    assert_eq!(finished["status"], "completed");
    assert_eq!(finished["transcript"][0]["content"], "Hi alice");

    // A run cut off by a crash is marked failed at the next start.
    let tenant = server
        .store
        .admin()
        .get_tenant(&bulkhead_core::TenantId::try_from("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let ctx = bulkhead_core::auth::operator_context(&tenant);
    let agent_name = bulkhead_core::AgentName::try_from("short").unwrap();
    server
        .store
        .tenant(&ctx)
        .start_run(
            "run_crashed",
            None,
            &agent_name,
            1,
            "x",
            bulkhead_store::RunProcess::current(bulkhead_core::Isolation::Shared),
        )
        .await
        .unwrap();
    assert_eq!(
        server.store.admin().fail_interrupted_runs().await.unwrap(),
        1
    );
    let (_, crashed) = server.tenant_get("/v1/runs/run_crashed", &key).await;
    assert_eq!(
        (crashed["status"].as_str(), crashed["error_code"].as_str()),
        (Some("failed"), Some("interrupted"))
    );
    let (status, problem) = run(&server, &key, "short", json!({"input": "x", "extra": 1})).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("extra"))
    );
    server.finish().await;
}

/// The fake OpenAI-compatible provider, as endpoint `openai`.
async fn fake_openai() -> bulkhead_core::config::EndpointConfig {
    let fake = bulkhead_testkit::fake_llm::FakeLlm::start().await.unwrap();
    common::model_endpoint(
        "openai",
        format!("{}/v1", fake.base),
        bulkhead_core::config::AuthScheme::Bearer {},
        5_000,
    )
}

#[tokio::test]
async fn runs_call_the_configured_provider_with_each_tenants_own_key() {
    use bulkhead_core::config::{ModelConfig, ProviderKind};
    let endpoint = fake_openai().await;
    let model = ModelConfig {
        alias: "fast".into(),
        provider: ProviderKind::Openai,
        endpoint: "openai".into(),
        upstream_model: Some("gpt-4o-mini".into()),
        path: None,
        input_usd_per_million: 0.0,
        output_usd_per_million: 0.0,
    };
    let server =
        TestServer::start_full(Backend::Sqlite, 64 * 1024, &[endpoint], vec![model], None).await;
    for tenant in ["acme", "globex"] {
        server.create_tenant(tenant).await;
        let (key, _) = server.create_key(tenant, "owner").await;
        let (status, _) = server
            .send(
                server
                    .request(Method::PUT, "/v1/credentials/openai", Some(&key))
                    .json(&json!({"secret": format!("sk-{tenant}")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        agent(
            &server,
            &key,
            "helper",
            json!({"model": "fast", "system_prompt": "Help {{ tenant.name }}."}),
        )
        .await;
        let (status, finished) = run(&server, &key, "helper", json!({"input": "hi"})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(finished["status"], "completed", "{finished}");
        assert_eq!(
            finished["output"],
            format!("answered with Bearer sk-{tenant}")
        );
        assert_eq!(
            (
                finished["input_tokens"].as_i64(),
                finished["output_tokens"].as_i64()
            ),
            (Some(11), Some(4))
        );
    }
    // A tenant without the credential gets a clear failure, not another tenant's key.
    server.create_tenant("initech").await;
    let (key, _) = server.create_key("initech", "owner").await;
    agent(
        &server,
        &key,
        "helper",
        json!({"model": "fast", "system_prompt": "x"}),
    )
    .await;
    let (_, finished) = run(&server, &key, "helper", json!({"input": "hi"})).await;
    assert_eq!(
        (finished["status"].as_str(), finished["error_code"].as_str()),
        (Some("failed"), Some("missing_credential")),
        "{finished}"
    );
    server.finish().await;
}

#[tokio::test]
async fn a_tenant_uses_only_the_models_allowed_for_it() {
    use bulkhead_core::config::{ModelConfig, ProviderKind};
    let endpoint = fake_openai().await;
    let model = |alias: &str| ModelConfig {
        alias: alias.into(),
        provider: ProviderKind::Openai,
        endpoint: "openai".into(),
        upstream_model: None,
        path: None,
        input_usd_per_million: 0.0,
        output_usd_per_million: 0.0,
    };
    // Everyone may use "fast"; "premium" only where granted.
    let server = TestServer::start_full(
        Backend::Sqlite,
        64 * 1024,
        &[endpoint],
        vec![model("fast"), model("premium")],
        Some(vec!["fast".into()]),
    )
    .await;
    let mut keys = Vec::new();
    for tenant in ["acme", "globex"] {
        server.create_tenant(tenant).await;
        let (key, _) = server.create_key(tenant, "owner").await;
        server
            .send(
                server
                    .request(Method::PUT, "/v1/credentials/openai", Some(&key))
                    .json(&json!({"secret": format!("sk-{tenant}")})),
            )
            .await;
        agent(
            &server,
            &key,
            "pro",
            json!({"model": "premium", "system_prompt": "x"}),
        )
        .await;
        agent(
            &server,
            &key,
            "basic",
            json!({"model": "fast", "system_prompt": "x"}),
        )
        .await;
        keys.push(key);
    }
    let (_, refused) = run(&server, &keys[0], "pro", json!({"input": "hi"})).await;
    assert_eq!(refused["error_code"], "model_not_allowed", "{refused}");
    assert_eq!(
        run(&server, &keys[0], "basic", json!({"input": "hi"}))
            .await
            .1["status"],
        "completed"
    );

    let (status, granted) = server
        .admin(
            Method::PUT,
            "/admin/v1/tenants/acme/models",
            Some(json!({"aliases": ["premium"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{granted}");
    assert_eq!(
        run(&server, &keys[0], "pro", json!({"input": "hi"}))
            .await
            .1["status"],
        "completed"
    );
    // The grant is acme's alone.
    assert_eq!(
        run(&server, &keys[1], "pro", json!({"input": "hi"}))
            .await
            .1["error_code"],
        "model_not_allowed"
    );

    let (status, problem) = server
        .admin(
            Method::PUT,
            "/admin/v1/tenants/acme/models",
            Some(json!({"aliases": ["gpt-17"]})),
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("aliases"))
    );
    let (status, _) = server
        .admin(
            Method::PUT,
            "/admin/v1/tenants/nobody/models",
            Some(json!({"aliases": []})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.finish().await;
}

#[tokio::test]
async fn threads_carry_a_conversation_for_one_tenant_and_end_user() {
    threads_carry_a_conversation(Backend::Sqlite).await;
}

#[tokio::test]
async fn threads_carry_a_conversation_for_one_tenant_and_end_user_on_postgres() {
    threads_carry_a_conversation(Backend::Postgres).await;
}

async fn threads_carry_a_conversation(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_tenant("acme").await;
    server.create_tenant("globex").await;
    let (acme, _) = server.create_key("acme", "developer").await;
    let (globex, _) = server.create_key("globex", "developer").await;
    let spec = json!({
        "model": "scripted",
        "memory": true,
        "system_prompt": "Earlier turns: {{ memory | length }}.",
        "script": [{"reply": "Noted."}],
    });
    agent(&server, &acme, "notes", spec.clone()).await;
    agent(&server, &globex, "notes", spec).await;

    let (_, first) = run(
        &server,
        &acme,
        "notes",
        json!({"input": "my name is Ada", "end_user": "ada"}),
    )
    .await;
    assert_eq!(first["status"], "completed", "{first}");
    let thread = first["thread_id"].as_str().unwrap().to_owned();
    assert!(thread.starts_with("thr_"));
    let (_, second) = run(
        &server,
        &acme,
        "notes",
        json!({"input": "what is my name?", "end_user": "ada", "thread_id": thread}),
    )
    .await;
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(second["thread_id"], thread.as_str());
    let contents: Vec<_> = second["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        contents,
        [
            "Earlier turns: 2.",
            "my name is Ada",
            "Noted.",
            "what is my name?",
            "Noted."
        ]
    );

    let (status, stored) = server
        .tenant_get(&format!("/v1/threads/{thread}?end_user=ada"), &acme)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4);

    // Another end user of acme, and globex, get the same 404 as for a thread that never existed.
    let missing = server
        .tenant_get("/v1/threads/thr_doesnotexist?end_user=ada", &acme)
        .await;
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
    assert_eq!(
        server
            .tenant_get(&format!("/v1/threads/{thread}?end_user=bob"), &acme)
            .await,
        missing
    );
    assert_eq!(
        server
            .tenant_get(&format!("/v1/threads/{thread}"), &acme)
            .await,
        missing
    );
    assert_eq!(
        server
            .tenant_get(&format!("/v1/threads/{thread}?end_user=ada"), &globex)
            .await,
        missing
    );
    for (key, user) in [(&acme, "bob"), (&globex, "ada")] {
        let (status, _) = run(
            &server,
            key,
            "notes",
            json!({"input": "x", "end_user": user, "thread_id": thread}),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "a run cannot continue another's thread"
        );
    }
    // The refused attempts appended nothing.
    let (_, stored) = server
        .tenant_get(&format!("/v1/threads/{thread}?end_user=ada"), &acme)
        .await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4);
    server.finish().await;
}
