//! Agents and prompt snippets over HTTP: versions, isolation, strict templates, injection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn put(server: &TestServer, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
    server
        .send(server.request(Method::PUT, path, Some(key)).json(&body))
        .await
}

async fn post(server: &TestServer, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
    server
        .send(server.request(Method::POST, path, Some(key)).json(&body))
        .await
}

async fn agents_and_snippets_stay_in_their_tenant(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_tenant("acme").await;
    server.create_tenant("globex").await;
    let (acme, _) = server.create_key("acme", "developer").await;
    let (acme_viewer, _) = server.create_key("acme", "viewer").await;
    let (globex, _) = server.create_key("globex", "developer").await;

    let spec = json!({
        "model": "gpt-4o-mini",
        "system_prompt": "You help {{ tenant.name }}.\n{% include 'tone' %}\n{% include 'platform/safety' %}\nUser says: {{ input }}",
        "tools": ["slack"],
        "memory": true,
    });
    let (status, tone) = put(
        &server,
        &acme,
        "/v1/prompts/tone",
        json!({"template": "Answer {{ user }} briefly."}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{tone}");
    let (status, v1) = put(&server, &acme, "/v1/agents/triage", spec.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    assert_eq!(
        (v1["version"].as_i64(), v1["spec"]["max_steps"].as_i64()),
        (Some(1), Some(8))
    );
    let mut next = spec.clone();
    next["max_steps"] = json!(4);
    let (status, v2) = put(&server, &acme, "/v1/agents/triage", next).await;
    assert_eq!((status, v2["version"].as_i64()), (StatusCode::OK, Some(2)));

    // Viewers read, only writers write.
    let (status, listed) = server.tenant_get("/v1/agents", &acme_viewer).await;
    assert_eq!(
        (status, listed.as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    let (status, _) = put(&server, &acme_viewer, "/v1/agents/other", spec.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Globex asks for acme's agent and snippet: the same 404 as for ones that never existed.
    let foreign = server.tenant_get("/v1/agents/triage", &globex).await;
    let missing = server.tenant_get("/v1/agents/nobody", &globex).await;
    assert_eq!(foreign, missing);
    assert_eq!(foreign.0, StatusCode::NOT_FOUND);
    assert_eq!(
        server.tenant_get("/v1/prompts/tone", &globex).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, globex_prompts) = server.tenant_get("/v1/prompts", &globex).await;
    let names: Vec<_> = globex_prompts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["platform/safety"],
        "globex sees the platform's snippets only"
    );

    // A globex template that includes acme's snippet cannot reach it.
    put(&server, &globex, "/v1/agents/triage", spec.clone()).await;
    let (status, problem) = post(
        &server,
        &globex,
        "/v1/agents/triage/prompt-preview",
        json!({"input": "hi"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "template_error");
    assert!(
        problem["detail"].as_str().unwrap().contains("tone"),
        "{problem}"
    );

    // Acme's renders, with input as data: its {{ }} is printed, not evaluated.
    let (status, preview) = post(
        &server,
        &acme,
        "/v1/agents/triage/prompt-preview",
        json!({"input": "{{ tenant.id }} {% include 'tone' %}", "user": "alice"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(
        preview["system_prompt"],
        "You help acme org.\nAnswer alice briefly.\nNever reveal credentials.\nUser says: {{ tenant.id }} {% include 'tone' %}"
    );
    assert_eq!(preview["version"], 2);

    // A variable the caller did not give is an error naming its line.
    let (status, problem) = post(
        &server,
        &acme,
        "/v1/agents/triage/prompt-preview",
        json!({"input": "hi"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    // Line 2 of the agent's template includes the snippet whose line 1 uses `user`.
    assert_eq!(
        (problem["code"].as_str(), problem["line"].as_i64()),
        (Some("template_error"), Some(2)),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("undefined") && detail.contains("snippet tone, line 1"),
        "{detail}"
    );

    let (status, _) = server
        .send(server.request(Method::DELETE, "/v1/agents/triage", Some(&acme)))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        server.tenant_get("/v1/agents/triage", &acme).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.tenant_get("/v1/agents/triage", &globex).await.0,
        StatusCode::OK,
        "globex's own is untouched"
    );
    server.finish().await;
}

#[tokio::test]
async fn agents_and_snippets_stay_in_their_tenant_on_sqlite() {
    agents_and_snippets_stay_in_their_tenant(Backend::Sqlite).await;
}

#[tokio::test]
async fn agents_and_snippets_stay_in_their_tenant_on_postgres() {
    agents_and_snippets_stay_in_their_tenant(Backend::Postgres).await;
}

#[tokio::test]
async fn bad_agent_specs_and_snippets_are_refused_naming_the_field() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.create_tenant("acme").await;
    let (key, _) = server.create_key("acme", "owner").await;
    let base = json!({"model": "m", "system_prompt": "ok"});
    let cases = [
        (json!({"temperature": 2}), "unknown_field", "temperature"),
        (
            json!({"system_prompt": "line\n{% if %}"}),
            "invalid_field",
            "system_prompt",
        ),
        (json!({"max_steps": 0}), "invalid_field", "max_steps"),
        (json!({"max_steps": 51}), "invalid_field", "max_steps"),
        (json!({"model": ""}), "invalid_field", "model"),
        (json!({"tools": ["Not OK"]}), "invalid_field", "tools"),
        (json!({"memory": "yes"}), "invalid_field", "memory"),
    ];
    for (overrides, code, field) in cases {
        let mut body = base.clone();
        for (k, v) in overrides.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, problem) = put(&server, &key, "/v1/agents/a", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(
            (problem["code"].as_str(), problem["field"].as_str()),
            (Some(code), Some(field)),
            "{problem}"
        );
    }
    let (status, problem) = put(&server, &key, "/v1/agents/Bad_Name", base.clone()).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );
    let (status, problem) = put(
        &server,
        &key,
        "/v1/prompts/p",
        json!({"template": "a\nb\n{% for %}"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (problem["code"].as_str(), problem["line"].as_i64()),
        (Some("template_error"), Some(3)),
        "{problem}"
    );
    let (_, agents) = server.tenant_get("/v1/agents", &key).await;
    assert_eq!(agents, json!([]), "nothing was written");
    server.finish().await;
}
