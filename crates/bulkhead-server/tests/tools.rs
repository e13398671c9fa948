//! Tools end to end: toolsets calling a local Slack, Jira and GitHub with each tenant's own
//! credential, Cedar policies, and approvals that pause a run durably.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bulkhead_core::config::{AuthScheme, EndpointConfig, EndpointKind, ToolsConfig};
use bulkhead_core::{ConnectorName, RegionName};
use bulkhead_testkit::fake_saas::FakeSaas;
use common::{Backend, TestServer, put_agent, put_credential};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn endpoint(
    name: &str,
    base_url: String,
    connector: Option<&str>,
    auth: AuthScheme,
    timeout_ms: u64,
) -> EndpointConfig {
    EndpointConfig {
        name: name.into(),
        base_url,
        region: RegionName::try_from("eu-west").unwrap(),
        kind: EndpointKind::Tool,
        connector: connector.map(|c| ConnectorName::try_from(c).unwrap()),
        auth,
        timeout_ms,
        max_retries: 0,
    }
}

fn endpoints(base: &str) -> Vec<EndpointConfig> {
    vec![
        endpoint(
            "slack",
            base.into(),
            Some("slack"),
            AuthScheme::Bearer {},
            5_000,
        ),
        endpoint(
            "jira",
            base.into(),
            Some("jira"),
            AuthScheme::Basic {},
            5_000,
        ),
        endpoint(
            "github",
            base.into(),
            Some("github"),
            AuthScheme::Bearer {},
            5_000,
        ),
        // No default connector: each toolset names the credential it presents.
        endpoint(
            "crm",
            format!("{base}/echo"),
            None,
            AuthScheme::Bearer {},
            5_000,
        ),
        endpoint(
            "slow",
            format!("{base}/hang"),
            Some("crm"),
            AuthScheme::Bearer {},
            400,
        ),
        EndpointConfig {
            kind: EndpointKind::Model,
            ..endpoint(
                "not-a-tool",
                base.into(),
                Some("x"),
                AuthScheme::Bearer {},
                5_000,
            )
        },
    ]
}

struct Keys {
    owner: String,
    approver: String,
    developer: String,
}

async fn tenant(server: &TestServer, id: &str) -> Keys {
    server.create_tenant(id).await;
    Keys {
        owner: server.create_key(id, "owner").await.0,
        approver: server.create_key(id, "approver").await.0,
        developer: server.create_key(id, "developer").await.0,
    }
}

async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server.request(method, path, Some(key));
    if let Some(body) = body {
        request = request.json(&body);
    }
    server.send(request).await
}

async fn put_toolset(server: &TestServer, key: &str, name: &str, spec: Value) {
    let (status, body) = call(
        server,
        Method::PUT,
        &format!("/v1/tools/{name}"),
        key,
        Some(spec),
    )
    .await;
    assert!(status.is_success(), "{body}");
}

async fn put_policy(server: &TestServer, key: &str, name: &str, text: &str) {
    let (status, body) = call(
        server,
        Method::PUT,
        &format!("/v1/policies/{name}"),
        key,
        Some(json!({"text": text})),
    )
    .await;
    assert!(status.is_success(), "{body}");
}

/// An agent on the scripted model that makes `calls` (name, arguments) and then answers.
async fn scripted_agent(
    server: &TestServer,
    key: &str,
    name: &str,
    tools: &[&str],
    calls: &[(&str, Value)],
) {
    let mut script: Vec<Value> = calls
        .iter()
        .map(|(tool, arguments)| json!({"tool_call": {"name": tool, "arguments": arguments}}))
        .collect();
    script.push(json!({"reply": "done"}));
    put_agent(
        server,
        key,
        name,
        json!({"model": "scripted", "system_prompt": "You act for {{ tenant.name }}.", "tools": tools,
               "max_steps": calls.len() + 1, "script": script}),
    )
    .await;
}

async fn start_run(server: &TestServer, key: &str, agent: &str) -> Value {
    let (status, run) = call(
        server,
        Method::POST,
        &format!("/v1/agents/{agent}/runs"),
        key,
        Some(json!({"input": "go"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    run
}

/// Polls a run until it has left `running` and `awaiting_approval`.
async fn finished_run(server: &TestServer, key: &str, run_id: &str) -> Value {
    for _ in 0..200 {
        let (status, run) = server.tenant_get(&format!("/v1/runs/{run_id}"), key).await;
        assert_eq!(status, StatusCode::OK, "{run}");
        if run["status"] != "running" && run["status"] != "awaiting_approval" {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run_id} did not finish");
}

/// The content of the tool results in a run's transcript.
fn tool_results(run: &Value) -> Vec<Value> {
    run["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            serde_json::from_str(m["content"].as_str().unwrap())
                .unwrap_or_else(|_| m["content"].clone())
        })
        .collect()
}

async fn slack_tenant(server: &TestServer, id: &str, token: &str) -> Keys {
    let keys = tenant(server, id).await;
    put_credential(server, &keys.owner, "slack", token).await;
    put_toolset(
        server,
        &keys.owner,
        "slack",
        json!({"kind": "slack", "endpoint": "slack"}),
    )
    .await;
    keys
}

#[tokio::test]
async fn a_thousand_interleaved_tool_calls_each_carry_their_tenants_token() {
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME"), ("xoxb-globex", "T_GLOBEX")])
        .await
        .unwrap();
    let server = TestServer::start_with_tools(
        Backend::Sqlite,
        &endpoints(&saas.base),
        ToolsConfig::default(),
    )
    .await;
    let acme = slack_tenant(&server, "acme", "xoxb-acme").await;
    let globex = slack_tenant(&server, "globex", "xoxb-globex").await;
    // Same toolset name, same connector name, different tokens and workspaces.
    for (keys, id) in [(&acme, "acme"), (&globex, "globex")] {
        let calls: Vec<(&str, Value)> = (0..10)
            .map(|_| {
                (
                    "slack__post_message",
                    json!({"channel": "#general", "text": format!("from {id}")}),
                )
            })
            .collect();
        scripted_agent(&server, &keys.owner, "notifier", &["slack"], &calls).await;
    }
    let runs = (0..100).map(|i| {
        let (key, server) = (
            if i % 2 == 0 {
                &acme.owner
            } else {
                &globex.owner
            },
            &server,
        );
        async move { start_run(server, key, "notifier").await }
    });
    let runs = futures_util::future::join_all(runs).await;
    for run in &runs {
        assert_eq!(run["status"], "completed", "{run}");
        assert!(tool_results(run).iter().all(|r| r["ok"] == true), "{run}");
    }
    let requests = saas.requests();
    assert_eq!(requests.len(), 1_000);
    for request in &requests {
        let expected = match request.body["text"].as_str().unwrap() {
            "from acme" => ("Bearer xoxb-acme", "T_ACME"),
            "from globex" => ("Bearer xoxb-globex", "T_GLOBEX"),
            other => panic!("unexpected text {other}"),
        };
        assert_eq!(
            (request.credential.as_str(), request.team.as_str()),
            expected
        );
    }
    assert_eq!(requests.iter().filter(|r| r.team == "T_ACME").count(), 500);
    // The model never saw a token.
    for run in &runs {
        let transcript = run["transcript"].to_string();
        assert!(!transcript.contains("xoxb-"), "{transcript}");
    }
    server.finish().await;
}

#[tokio::test]
async fn an_approval_pauses_the_run_across_a_restart_and_only_an_approver_of_the_tenant_decides() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME"), ("xoxb-globex", "T_GLOBEX")])
            .await
            .unwrap();
        let server =
            TestServer::start_with_tools(backend, &endpoints(&saas.base), ToolsConfig::default())
                .await;
        let acme = slack_tenant(&server, "acme", "xoxb-acme").await;
        let globex = slack_tenant(&server, "globex", "xoxb-globex").await;
        put_policy(
            &server,
            &acme.owner,
            "incidents",
            r##"permit(principal, action == Bulkhead::Action::"needs_approval", resource)
                when { resource.kind == "slack" && context.target like "#incidents*" };"##,
        )
        .await;
        scripted_agent(
            &server,
            &acme.owner,
            "triage",
            &["slack"],
            &[
                (
                    "slack__post_message",
                    json!({"channel": "#general", "text": "looking"}),
                ),
                (
                    "slack__post_message",
                    json!({"channel": "#incidents", "text": "checkout is down"}),
                ),
            ],
        )
        .await;
        let run = start_run(&server, &acme.owner, "triage").await;
        assert_eq!(run["status"], "awaiting_approval", "{run}");
        let run_id = run["id"].as_str().unwrap().to_owned();
        // The first call (to #general) needed no approval and was made.
        assert_eq!(saas.requests().len(), 1);

        let (status, pending) = server
            .tenant_get("/v1/approvals?status=pending", &acme.approver)
            .await;
        assert_eq!(status, StatusCode::OK);
        let pending = pending.as_array().unwrap().clone();
        assert_eq!(pending.len(), 1, "{pending:?}");
        let approval = &pending[0];
        assert_eq!(
            approval["line"],
            "Agent `triage` acting as `acme org` (`acme`) wants to `post a message to` `#incidents`"
        );
        assert_eq!(
            approval["arguments"],
            json!({"channel": "#incidents", "text": "checkout is down"})
        );
        assert_eq!(approval["tool"], "slack.post_message");
        let id = approval["id"].as_str().unwrap().to_owned();
        let decision = format!("/v1/approvals/{id}/decision");

        // Another tenant sees nothing and cannot decide; a principal without the role cannot.
        let (_, theirs) = server.tenant_get("/v1/approvals", &globex.approver).await;
        assert_eq!(theirs, json!([]));
        let (status, _) = call(
            &server,
            Method::POST,
            &decision,
            &globex.approver,
            Some(json!({"approve": true})),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = server
            .tenant_get(&format!("/v1/approvals/{id}"), &globex.approver)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(
            &server,
            Method::POST,
            &decision,
            &acme.developer,
            Some(json!({"approve": true})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = call(
            &server,
            Method::POST,
            &decision,
            &acme.owner,
            Some(json!({"approve": true})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, problem) = call(
            &server,
            Method::POST,
            &decision,
            &acme.approver,
            Some(json!({"approve": "yes"})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

        // A restart keeps it pending; nothing more was posted.
        let server = server.restart().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, run) = server
            .tenant_get(&format!("/v1/runs/{run_id}"), &acme.owner)
            .await;
        assert_eq!(run["status"], "awaiting_approval");
        assert_eq!(saas.requests().len(), 1);

        let (status, decided) = call(
            &server,
            Method::POST,
            &decision,
            &acme.approver,
            Some(json!({"approve": true, "reason": "confirmed outage"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{decided}");
        assert_eq!(decided["status"], "approved");
        let run = finished_run(&server, &acme.owner, &run_id).await;
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["output"], "done");
        let posted = saas.requests();
        assert_eq!(posted.len(), 2);
        assert_eq!(posted[1].body["channel"], "#incidents");
        assert_eq!(posted[1].credential, "Bearer xoxb-acme");
        assert_eq!(tool_results(&run).len(), 2);
        assert!(tool_results(&run).iter().all(|r| r["ok"] == true), "{run}");

        // The first decision wins.
        let (status, _) = call(
            &server,
            Method::POST,
            &decision,
            &acme.approver,
            Some(json!({"approve": false})),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        let events = server
            .store
            .admin()
            .audit_events(&bulkhead_core::TenantId::try_from("acme").unwrap(), 0, 1000)
            .await
            .unwrap();
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        for wanted in [
            "policy.written",
            "approval.requested",
            "approval.approved",
            "tool.called",
            "run.completed",
        ] {
            assert!(
                actions.contains(&wanted),
                "{wanted} missing from {actions:?}"
            );
        }
        let (_, theirs) = server.tenant_get("/v1/approvals", &globex.owner).await;
        assert_eq!(theirs, json!([]));
        server.finish().await;
    }
}

#[tokio::test]
async fn denied_and_expired_approvals_are_refusals_the_model_reads() {
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME")]).await.unwrap();
    let tools = ToolsConfig {
        approval_ttl_seconds: 1,
        approval_sweep_ms: 100,
        ..ToolsConfig::default()
    };
    let server = TestServer::start_with_tools(Backend::Sqlite, &endpoints(&saas.base), tools).await;
    let acme = slack_tenant(&server, "acme", "xoxb-acme").await;
    put_policy(
        &server,
        &acme.owner,
        "all",
        r#"permit(principal, action == Bulkhead::Action::"needs_approval", resource);"#,
    )
    .await;
    scripted_agent(
        &server,
        &acme.owner,
        "poster",
        &["slack"],
        &[(
            "slack__post_message",
            json!({"channel": "#general", "text": "hi"}),
        )],
    )
    .await;

    let run = start_run(&server, &acme.owner, "poster").await;
    let (_, pending) = server
        .tenant_get("/v1/approvals?status=pending", &acme.approver)
        .await;
    let id = pending[0]["id"].as_str().unwrap();
    let (status, _) = call(
        &server,
        Method::POST,
        &format!("/v1/approvals/{id}/decision"),
        &acme.approver,
        Some(json!({"approve": false, "reason": "not now"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let run = finished_run(&server, &acme.owner, run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed");
    let results = tool_results(&run);
    assert_eq!(results[0]["error"], "approval_denied", "{results:?}");
    assert_eq!(results[0]["reason"], "not now");

    // Nobody decides: the sweep expires it after a second and the model is told.
    let run = start_run(&server, &acme.owner, "poster").await;
    assert_eq!(run["status"], "awaiting_approval");
    let run = finished_run(&server, &acme.owner, run["id"].as_str().unwrap()).await;
    assert_eq!(tool_results(&run)[0]["error"], "approval_expired", "{run}");
    let (_, expired) = server
        .tenant_get("/v1/approvals?status=expired", &acme.approver)
        .await;
    assert_eq!(expired.as_array().unwrap().len(), 1);
    assert!(saas.requests().is_empty(), "a refused call reached Slack");
    server.finish().await;
}

#[tokio::test]
async fn a_decision_made_while_no_process_resumed_the_run_is_picked_up_by_the_sweep() {
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME")]).await.unwrap();
    let tools = ToolsConfig {
        approval_sweep_ms: 100,
        ..ToolsConfig::default()
    };
    let server = TestServer::start_with_tools(Backend::Sqlite, &endpoints(&saas.base), tools).await;
    let acme = slack_tenant(&server, "acme", "xoxb-acme").await;
    put_policy(
        &server,
        &acme.owner,
        "all",
        r#"permit(principal, action == Bulkhead::Action::"needs_approval", resource);"#,
    )
    .await;
    scripted_agent(
        &server,
        &acme.owner,
        "poster",
        &["slack"],
        &[(
            "slack__post_message",
            json!({"channel": "#general", "text": "hi"}),
        )],
    )
    .await;
    let run = start_run(&server, &acme.owner, "poster").await;
    let run_id = run["id"].as_str().unwrap();
    // Decide straight in the database, as if the deciding process stopped before resuming.
    let tenant = server
        .store
        .admin()
        .get_tenant(&bulkhead_core::TenantId::try_from("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let ctx = bulkhead_core::auth::operator_context(&tenant);
    let store = server.store.tenant(&ctx);
    let approval = store.run_approval(run_id).await.unwrap().unwrap();
    store
        .decide_approval(&approval.approval_id, true, "")
        .await
        .unwrap()
        .unwrap();
    let run = finished_run(&server, &acme.owner, run_id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(saas.requests().len(), 1);
    server.finish().await;
}

#[tokio::test]
async fn policies_deny_calls_and_a_tenant_policy_cannot_reach_another_tenant() {
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME"), ("xoxb-globex", "T_GLOBEX")])
        .await
        .unwrap();
    let server = TestServer::start_with_tools(
        Backend::Postgres,
        &endpoints(&saas.base),
        ToolsConfig::default(),
    )
    .await;
    let acme = slack_tenant(&server, "acme", "xoxb-acme").await;
    let globex = slack_tenant(&server, "globex", "xoxb-globex").await;
    // Globex cannot write a policy that names Acme's tenant, agents or tools.
    for text in [
        r#"permit(principal, action, resource in Bulkhead::Tenant::"acme");"#,
        r#"forbid(principal == Bulkhead::Agent::"acme/poster", action, resource);"#,
        r#"permit(principal, action, resource) when { resource == Bulkhead::Tool::"acme/slack.post_message" };"#,
    ] {
        let (status, problem) = call(
            &server,
            Method::PUT,
            "/v1/policies/sneaky",
            &globex.owner,
            Some(json!({"text": text})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("not an entity of this tenant"),
            "{problem}"
        );
    }
    // Policies that fail the schema or are not Cedar are refused too; developers cannot write.
    let (status, problem) = call(
        &server,
        Method::PUT,
        "/v1/policies/bad",
        &acme.owner,
        Some(json!({"text": "permit(principal, action, resource) when { resource.colour == 1 };"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, _) = call(
        &server,
        Method::PUT,
        "/v1/policies/x",
        &acme.developer,
        Some(json!({"text": "permit(principal, action, resource);"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Globex forbids everything for itself; that reaches none of Acme's calls.
    put_policy(
        &server,
        &globex.owner,
        "lockdown",
        r#"forbid(principal, action, resource);"#,
    )
    .await;
    for keys in [&acme, &globex] {
        scripted_agent(
            &server,
            &keys.owner,
            "poster",
            &["slack"],
            &[(
                "slack__post_message",
                json!({"channel": "#general", "text": "hi"}),
            )],
        )
        .await;
    }
    let run = start_run(&server, &acme.owner, "poster").await;
    assert_eq!(tool_results(&run)[0]["ok"], true, "{run}");
    let run = start_run(&server, &globex.owner, "poster").await;
    assert_eq!(run["status"], "completed");
    let refusal = &tool_results(&run)[0];
    assert_eq!(refusal["error"], "policy_denied", "{run}");
    assert_eq!(saas.requests().len(), 1, "the denied call reached Slack");
    assert_eq!(saas.requests()[0].team, "T_ACME");
    let events = server
        .store
        .admin()
        .audit_events(
            &bulkhead_core::TenantId::try_from("globex").unwrap(),
            0,
            1000,
        )
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.action == "tool.denied"));
    let (status, schema) = server
        .tenant_get("/v1/policies/schema", &acme.developer)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        schema["cedar_schema"]
            .as_str()
            .unwrap()
            .contains("action call, needs_approval")
    );
    server.finish().await;
}

#[tokio::test]
async fn jira_github_and_declared_http_operations_use_the_tenants_credentials() {
    let saas = FakeSaas::start(&[]).await.unwrap();
    let server = TestServer::start_with_tools(
        Backend::Sqlite,
        &endpoints(&saas.base),
        ToolsConfig::default(),
    )
    .await;
    let acme = tenant(&server, "acme").await;
    let (status, body) = call(
        &server,
        Method::PUT,
        "/v1/credentials/jira",
        &acme.owner,
        Some(json!({"secret": "jira-token", "fields": {"username": "bot@acme.test"}})),
    )
    .await;
    assert!(status.is_success(), "{body}");
    put_credential(&server, &acme.owner, "github", "ghp_acme").await;
    put_credential(&server, &acme.owner, "acme-crm", "crm-secret").await;
    put_toolset(
        &server,
        &acme.developer,
        "jira",
        json!({"kind": "jira", "endpoint": "jira"}),
    )
    .await;
    put_toolset(
        &server,
        &acme.developer,
        "github",
        json!({"kind": "github", "endpoint": "github"}),
    )
    .await;
    put_toolset(&server, &acme.developer, "crm", json!({
        "kind": "http", "endpoint": "crm", "credential": "acme-crm",
        "operations": [{
            "name": "find_customer", "description": "Find a customer", "method": "GET",
            "path": "/customers/{id}",
            "arguments": {"type": "object", "properties": {"id": {"type": "string"}, "fields": {"type": "string"}},
                          "required": ["id"], "additionalProperties": false},
            "target": "customer {id}"
        }]
    })).await;
    let (_, listed) = server.tenant_get("/v1/tools/crm", &acme.developer).await;
    assert_eq!(listed["tools"][0]["name"], "crm__find_customer");
    scripted_agent(
        &server,
        &acme.owner,
        "ops",
        &["jira", "github", "crm"],
        &[
            (
                "jira__create_issue",
                json!({"project": "OPS", "summary": "Checkout down"}),
            ),
            ("jira__search_issues", json!({"jql": "project = OPS"})),
            (
                "github__create_issue",
                json!({"owner": "acme", "repo": "shop", "title": "Checkout down"}),
            ),
            (
                "github__comment",
                json!({"owner": "acme", "repo": "shop", "issue_number": 3, "body": "on it"}),
            ),
            (
                "crm__find_customer",
                json!({"id": "a/b?c", "fields": "name,email"}),
            ),
            ("crm__find_customer", json!({"id": 7})),
        ],
    )
    .await;
    let run = start_run(&server, &acme.owner, "ops").await;
    assert_eq!(run["status"], "completed", "{run}");
    let results = tool_results(&run);
    assert_eq!(results[0]["key"], "OPS-1");
    assert_eq!(results[1]["issues"][0]["key"], "OPS-1");
    assert_eq!(
        results[2]["html_url"],
        "https://github.com/acme/shop/issues/3"
    );
    assert!(
        results[3]["html_url"]
            .as_str()
            .unwrap()
            .contains("/issues/3#issuecomment")
    );
    assert_eq!(results[4]["path"], "/echo/customers/a%2Fb%3Fc");
    assert_eq!(results[4]["query"], "fields=name%2Cemail");
    assert_eq!(results[5]["error"], "invalid_arguments", "{results:?}");
    let requests = saas.requests();
    assert_eq!(
        requests.len(),
        5,
        "the call with bad arguments must not be made"
    );
    let basic = format!("Basic {}", base64_encode("bot@acme.test:jira-token"));
    assert_eq!(requests[0].credential, basic);
    assert_eq!(
        requests[0].body,
        json!({"fields": {"project": {"key": "OPS"}, "summary": "Checkout down", "issuetype": {"name": "Task"}}})
    );
    assert_eq!(requests[2].credential, "Bearer ghp_acme");
    assert_eq!(requests[4].credential, "Bearer crm-secret");
    let transcript = run["transcript"].to_string();
    for secret in ["jira-token", "ghp_acme", "crm-secret"] {
        assert!(!transcript.contains(secret), "{secret} reached the model");
    }
    server.finish().await;
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn toolsets_are_validated_and_failures_reach_the_model_as_refusals() {
    let saas = FakeSaas::start(&[]).await.unwrap();
    let server = TestServer::start_with_tools(
        Backend::Sqlite,
        &endpoints(&saas.base),
        ToolsConfig::default(),
    )
    .await;
    let acme = tenant(&server, "acme").await;
    for (spec, field) in [
        (json!({"kind": "slack", "endpoint": "nowhere"}), "endpoint"),
        (
            json!({"kind": "slack", "endpoint": "not-a-tool"}),
            "endpoint",
        ),
        (json!({"kind": "teams", "endpoint": "slack"}), "kind"),
        (json!({"kind": "http", "endpoint": "crm"}), "operations"),
        (
            json!({"kind": "slack", "endpoint": "slack", "destructive": ["drop"]}),
            "destructive",
        ),
        (
            json!({"kind": "http", "endpoint": "crm", "operations": [{"name": "x", "description": "d", "method": "GET",
            "path": "/x", "arguments": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}]}),
            "operations[0].arguments",
        ),
        (
            json!({"kind": "http", "endpoint": "crm", "operations": [{"name": "Bad Name", "description": "d", "method": "GET",
            "path": "/x", "arguments": {"type": "object"}}]}),
            "operations[0].name",
        ),
        (
            json!({"kind": "slack", "endpoint": "slack", "token": "xoxb-inline"}),
            "token",
        ),
    ] {
        let (status, problem) = call(
            &server,
            Method::PUT,
            "/v1/tools/t",
            &acme.owner,
            Some(spec.clone()),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{spec}: {problem}"
        );
        assert!(problem.to_string().contains(field), "{spec}: {problem}");
    }
    let (status, _) = call(
        &server,
        Method::PUT,
        "/v1/tools/t",
        &acme.owner,
        Some(json!({"kind": "slack", "endpoint": "slack"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // A viewer-less tenant's other principals: another tenant's toolset is a 404.
    server.create_tenant("globex").await;
    let (globex_owner, _) = server.create_key("globex", "owner").await;
    let (status, _) = server.tenant_get("/v1/tools/t", &globex_owner).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    put_credential(&server, &acme.owner, "crm", "crm-secret").await;
    put_toolset(&server, &acme.owner, "slow", json!({
        "kind": "http", "endpoint": "slow",
        "operations": [{"name": "wait", "description": "Never answers", "method": "GET", "path": "/x",
            "arguments": {"type": "object"}}]
    })).await;
    scripted_agent(
        &server,
        &acme.owner,
        "tries",
        &["t", "slow"],
        &[
            ("slow__wait", json!({})),
            (
                "t__post_message",
                json!({"channel": "#general", "text": "no credential stored"}),
            ),
            ("t__post_message", json!({"text": "no channel"})),
            ("nothing__here", json!({})),
        ],
    )
    .await;
    let run = start_run(&server, &acme.owner, "tries").await;
    assert_eq!(run["status"], "completed", "{run}");
    let codes: Vec<Value> = tool_results(&run)
        .iter()
        .map(|r| r["error"].clone())
        .collect();
    assert_eq!(
        codes,
        [
            json!("upstream_timeout"),
            json!("missing_credential"),
            json!("invalid_arguments"),
            json!("unknown_tool")
        ]
    );
    server.finish().await;
}

fn mcp_endpoint(base: &str, timeout_ms: u64) -> EndpointConfig {
    EndpointConfig {
        kind: EndpointKind::Mcp,
        ..endpoint(
            "orders-mcp",
            base.into(),
            Some("orders"),
            AuthScheme::Bearer {},
            timeout_ms,
        )
    }
}

#[tokio::test]
async fn mcp_servers_are_reached_with_the_tenants_token_and_destructive_tools_wait_for_approval() {
    use bulkhead_testkit::fake_mcp::FakeMcp;
    let mcp = FakeMcp::start(&[
        ("acme-mcp-token", "W_ACME"),
        ("globex-mcp-token", "W_GLOBEX"),
    ])
    .await
    .unwrap();
    let server = TestServer::start_with_tools(
        Backend::Sqlite,
        &[mcp_endpoint(&mcp.base, 5_000)],
        ToolsConfig::default(),
    )
    .await;
    let acme = tenant(&server, "acme").await;
    let globex = tenant(&server, "globex").await;
    for (keys, token) in [(&acme, "acme-mcp-token"), (&globex, "globex-mcp-token")] {
        put_credential(&server, &keys.owner, "orders", token).await;
        put_toolset(
            &server,
            &keys.owner,
            "orders",
            json!({"kind": "mcp", "endpoint": "orders-mcp"}),
        )
        .await;
        scripted_agent(
            &server,
            &keys.owner,
            "support",
            &["orders"],
            &[
                ("orders__lookup_order", json!({"id": "42"})),
                ("orders__fail", json!({})),
                ("orders__cancel_order", json!({"id": "42"})),
            ],
        )
        .await;
    }
    let run = start_run(&server, &globex.owner, "support").await;
    assert_eq!(run["status"], "awaiting_approval", "{run}");
    let run = start_run(&server, &acme.owner, "support").await;
    assert_eq!(run["status"], "awaiting_approval", "{run}");
    let results = tool_results(&run);
    assert_eq!(results[0], json!("order 42 is shipped (workspace W_ACME)"));
    assert_eq!(results[1]["error"], "tool_failed", "{results:?}");
    // cancel_order is annotated destructive: the default platform policy holds it.
    let (_, pending) = server
        .tenant_get("/v1/approvals?status=pending", &acme.approver)
        .await;
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(
        pending[0]["line"],
        "Agent `support` acting as `acme org` (`acme`) wants to `call cancel_order on` `orders-mcp`"
    );
    let id = pending[0]["id"].as_str().unwrap();
    let (status, _) = call(
        &server,
        Method::POST,
        &format!("/v1/approvals/{id}/decision"),
        &acme.approver,
        Some(json!({"approve": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let run = finished_run(&server, &acme.owner, run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(tool_results(&run)[2], json!("order 42 cancelled"));
    let calls = mcp.calls();
    let cancels: Vec<_> = calls.iter().filter(|c| c.tool == "cancel_order").collect();
    assert_eq!(cancels.len(), 1, "{calls:?}");
    assert_eq!(cancels[0].team, "W_ACME");
    assert!(
        calls
            .iter()
            .filter(|c| c.team == "W_GLOBEX")
            .all(|c| c.tool != "cancel_order")
    );
    let credentials = mcp.credentials();
    assert!(
        credentials
            .iter()
            .all(|c| c == "Bearer acme-mcp-token" || c == "Bearer globex-mcp-token"),
        "{credentials:?}"
    );
    assert!(!run["transcript"].to_string().contains("mcp-token"));
    server.finish().await;
}

#[tokio::test]
async fn an_mcp_server_that_hangs_or_speaks_garbage_fails_the_run_with_a_clear_code() {
    use bulkhead_testkit::fake_mcp::FakeMcp;
    let mcp = FakeMcp::start(&[]).await.unwrap();
    let server = TestServer::start_with_tools(
        Backend::Sqlite,
        &[mcp_endpoint(&mcp.base, 600)],
        ToolsConfig::default(),
    )
    .await;
    let acme = tenant(&server, "acme").await;
    put_credential(&server, &acme.owner, "orders", "t").await;
    for (path, code) in [
        ("/hang", "upstream_timeout"),
        ("/garbage", "mcp_error"),
        ("/mcp", "mcp_error"),
    ] {
        put_toolset(
            &server,
            &acme.owner,
            "orders",
            json!({"kind": "mcp", "endpoint": "orders-mcp", "path": path}),
        )
        .await;
        scripted_agent(
            &server,
            &acme.owner,
            "support",
            &["orders"],
            &[("orders__lookup_order", json!({"id": "1"}))],
        )
        .await;
        let started = std::time::Instant::now();
        let run = start_run(&server, &acme.owner, "support").await;
        assert_eq!(run["status"], "failed", "{path}: {run}");
        assert_eq!(run["error_code"], code, "{path}: {run}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    server.finish().await;
}

/// Sends one JSON-RPC message to `/mcp` with `key`; answers the HTTP status and the JSON-RPC
/// reply (read from JSON or from the first server-sent event).
async fn mcp_rpc(
    server: &TestServer,
    key: &str,
    id: u64,
    method: &str,
    params: Value,
) -> (StatusCode, Value) {
    let response = server
        .request(Method::POST, "/mcp", Some(key))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .unwrap_or(&text)
        .to_owned();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(text)),
    )
}

async fn mcp_call(server: &TestServer, key: &str, name: &str, arguments: Value) -> Value {
    let (status, reply) = mcp_rpc(
        server,
        key,
        3,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["result"].clone()
}

#[tokio::test]
async fn the_mcp_gateway_shows_each_key_its_own_tenants_tools_and_applies_policies_and_approvals() {
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME"), ("xoxb-globex", "T_GLOBEX")])
        .await
        .unwrap();
    let server = TestServer::start_with_tools(
        Backend::Postgres,
        &endpoints(&saas.base),
        ToolsConfig::default(),
    )
    .await;
    let acme = slack_tenant(&server, "acme", "xoxb-acme").await;
    let globex = tenant(&server, "globex").await;
    put_credential(&server, &globex.owner, "crm", "globex-crm").await;
    put_toolset(&server, &globex.owner, "crm", json!({
        "kind": "http", "endpoint": "crm", "credential": "crm",
        "operations": [{"name": "ping", "description": "Ping", "method": "GET", "path": "/ping", "arguments": {"type": "object"}}]
    })).await;
    put_policy(&server, &acme.owner, "incidents",
        r##"permit(principal, action == Bulkhead::Action::"needs_approval", resource) when { context.target like "#incidents*" };"##).await;

    let (status, init) = mcp_rpc(&server, &acme.developer, 1, "initialize", json!({
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}})).await;
    assert_eq!(status, StatusCode::OK, "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "bulkhead", "{init}");
    let (_, listed) = mcp_rpc(&server, &acme.developer, 2, "tools/list", json!({})).await;
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["slack__post_message", "slack__list_channels"],
        "{listed}"
    );
    let (_, listed) = mcp_rpc(&server, &globex.developer, 2, "tools/list", json!({})).await;
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["crm__ping"], "{listed}");

    // A call goes out with the tenant's own token.
    let result = mcp_call(
        &server,
        &acme.developer,
        "slack__post_message",
        json!({"channel": "#general", "text": "hi"}),
    )
    .await;
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(saas.requests()[0].credential, "Bearer xoxb-acme");
    // Globex cannot reach Acme's tool by its name, nor by a forged toolset name.
    let result = mcp_call(
        &server,
        &globex.developer,
        "slack__post_message",
        json!({"channel": "#general", "text": "x"}),
    )
    .await;
    assert_eq!(result["isError"], true);
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("unknown_tool"),
        "{result}"
    );
    // Bad arguments are refused before any call.
    let result = mcp_call(
        &server,
        &acme.developer,
        "slack__post_message",
        json!({"channel": 1}),
    )
    .await;
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("invalid_arguments"),
        "{result}"
    );

    // A call that needs approval is refused with the approval's id, goes through once after
    // an approver of the tenant approves it, and needs a new approval after that.
    let incident = json!({"channel": "#incidents", "text": "down"});
    let result = mcp_call(
        &server,
        &acme.developer,
        "slack__post_message",
        incident.clone(),
    )
    .await;
    let text = result["content"][0]["text"].as_str().unwrap().to_owned();
    assert!(text.contains("approval_required"), "{text}");
    let (_, pending) = server
        .tenant_get("/v1/approvals?status=pending", &acme.approver)
        .await;
    let approval = &pending[0];
    assert!(
        approval["line"]
            .as_str()
            .unwrap()
            .starts_with("Agent `mcp:key:"),
        "{approval}"
    );
    assert!(text.contains(approval["id"].as_str().unwrap()));
    let (status, _) = call(
        &server,
        Method::POST,
        &format!(
            "/v1/approvals/{}/decision",
            approval["id"].as_str().unwrap()
        ),
        &acme.approver,
        Some(json!({"approve": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Another principal's identical call is not covered by it.
    let result = mcp_call(
        &server,
        &acme.owner,
        "slack__post_message",
        incident.clone(),
    )
    .await;
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("approval_required"),
        "{result}"
    );
    let result = mcp_call(
        &server,
        &acme.developer,
        "slack__post_message",
        incident.clone(),
    )
    .await;
    assert_eq!(result["isError"], false, "{result}");
    let result = mcp_call(
        &server,
        &acme.developer,
        "slack__post_message",
        incident.clone(),
    )
    .await;
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("approval_required"),
        "{result}"
    );
    let posted: Vec<_> = saas
        .requests()
        .into_iter()
        .filter(|r| r.body["channel"] == "#incidents")
        .collect();
    assert_eq!(posted.len(), 1);

    // A policy denial is a clear error to the MCP caller, and nothing is sent.
    put_policy(&server, &acme.owner, "no-listing",
        r#"forbid(principal, action == Bulkhead::Action::"call", resource) when { resource.operation == "list_channels" };"#).await;
    let before = saas.requests().len();
    let result = mcp_call(&server, &acme.developer, "slack__list_channels", json!({})).await;
    assert_eq!(result["isError"], true);
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("policy_denied"),
        "{result}"
    );
    assert_eq!(saas.requests().len(), before);

    // Without a credential: 401; a viewer may not call tools.
    let (status, _) = server
        .send(server.request(Method::POST, "/mcp", None).json(&json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (viewer, _) = server.create_key("acme", "viewer").await;
    let (status, _) = mcp_rpc(&server, &viewer, 1, "tools/list", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.finish().await;
}

#[tokio::test]
async fn the_official_mcp_python_sdk_sees_only_its_tenants_tools() {
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME")]).await.unwrap();
    let server = TestServer::start_with_tools(
        Backend::Sqlite,
        &endpoints(&saas.base),
        ToolsConfig::default(),
    )
    .await;
    let acme = slack_tenant(&server, "acme", "xoxb-acme").await;
    let globex = tenant(&server, "globex").await;
    put_credential(&server, &globex.owner, "crm", "globex-crm").await;
    put_toolset(&server, &globex.owner, "crm", json!({
        "kind": "http", "endpoint": "crm", "credential": "crm",
        "operations": [{"name": "ping", "description": "Ping", "method": "GET", "path": "/ping", "arguments": {"type": "object"}}]
    })).await;
    common::python_checks(
        "mcp_client.py",
        vec![
            server.base.clone(),
            acme.developer.clone(),
            globex.developer.clone(),
        ],
        "all mcp checks passed",
    )
    .await;
    let requests = saas.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].credential, "Bearer xoxb-acme");
    server.finish().await;
}

#[tokio::test]
async fn the_approval_webhook_is_told_of_each_new_pending_approval() {
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME")]).await.unwrap();
    let mut all = endpoints(&saas.base);
    all.push(EndpointConfig {
        kind: EndpointKind::Webhook,
        ..endpoint(
            "approvals-hook",
            format!("{}/echo/hook", saas.base),
            None,
            AuthScheme::None {},
            5_000,
        )
    });
    let tools = ToolsConfig {
        approval_webhook: Some("approvals-hook".into()),
        ..ToolsConfig::default()
    };
    let server = TestServer::start_with_tools(Backend::Sqlite, &all, tools).await;
    let acme = slack_tenant(&server, "acme", "xoxb-acme").await;
    put_policy(
        &server,
        &acme.owner,
        "all",
        r#"permit(principal, action == Bulkhead::Action::"needs_approval", resource);"#,
    )
    .await;
    scripted_agent(
        &server,
        &acme.owner,
        "poster",
        &["slack"],
        &[(
            "slack__post_message",
            json!({"channel": "#ops", "text": "hi"}),
        )],
    )
    .await;
    let run = start_run(&server, &acme.owner, "poster").await;
    assert_eq!(run["status"], "awaiting_approval");
    let hooks: Vec<_> = saas
        .requests()
        .into_iter()
        .filter(|r| r.path == "/echo/hook/")
        .collect();
    assert_eq!(hooks.len(), 1, "{:?}", saas.requests());
    let notice = &hooks[0].body;
    assert_eq!(notice["type"], "approval.requested");
    assert_eq!(notice["tenant_id"], "acme");
    assert_eq!(
        notice["line"],
        "Agent `poster` acting as `acme org` (`acme`) wants to `post a message to` `#ops`"
    );
    assert_eq!(
        hooks[0].credential, "",
        "the webhook carries no tenant credential"
    );
    server.finish().await;
}
