//! The OpenAI-compatible provider against a local server that speaks the real wire format,
//! reached through egress with each tenant's own key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bulkhead_core::config::{AuthScheme, EndpointConfig, EndpointKind};
use bulkhead_core::{ConnectorName, RegionName, Role, TenantContext};
use bulkhead_egress::Egress;
use bulkhead_runtime::providers::openai::chat;
use bulkhead_runtime::providers::{ChatMessage, ChatRequest, ProviderError, ToolSpec};
use bulkhead_store::testing::TestDb;
use bulkhead_vault::{LocalKeyProvider, Vault};
use secrecy::SecretString;
use serde_json::{Value, json};

#[derive(Default)]
struct FakeOpenAi {
    calls: AtomicUsize,
    wrong_key: AtomicUsize,
}

/// Answers like api.openai.com: the key must be the one of the tenant named in the user
/// message; `break-auth` gets OpenAI's 401 body, `garbage` a broken body, `tool` a tool call.
async fn completions(
    State(fake): State<Arc<FakeOpenAi>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    fake.calls.fetch_add(1, Ordering::SeqCst);
    let user = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let tenant = user
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if user.contains("break-auth") || auth != format!("Bearer sk-{tenant}") {
        if !user.contains("break-auth") {
            fake.wrong_key.fetch_add(1, Ordering::SeqCst);
        }
        let error = json!({"error": {"message": "Incorrect API key provided: sk-****", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
        return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
    }
    if user.contains("garbage") {
        return (StatusCode::OK, "{\"choices\": [").into_response();
    }
    let message = if user.contains("tool") {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_abc", "type": "function",
            "function": {"name": body["tools"][0]["function"]["name"], "arguments": "{\"q\":\"status\"}"}}]})
    } else {
        json!({"role": "assistant", "content": format!("hello {tenant}")})
    };
    let finish = if user.contains("tool") {
        "tool_calls"
    } else {
        "stop"
    };
    Json(json!({
        "id": "chatcmpl-123", "object": "chat.completion", "created": 1_700_000_000, "model": body["model"],
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26}
    }))
    .into_response()
}

async fn setup() -> (
    Egress,
    Vec<TenantContext>,
    Arc<FakeOpenAi>,
    bulkhead_store::Store,
    TestDb,
) {
    let fake = Arc::new(FakeOpenAi::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(fake.clone());
    let (egress, contexts, store, db) = serve_and_connect(app, "/v1", AuthScheme::Bearer {}).await;
    (egress, contexts, fake, store, db)
}

/// Serves `app` on a local port and returns an egress with one endpoint `provider` pointing at
/// it, and two tenants (acme, globex) whose `provider` credential is `sk-<tenant>`.
async fn serve_and_connect(
    app: axum::Router,
    path: &str,
    auth: AuthScheme,
) -> (Egress, Vec<TenantContext>, bulkhead_store::Store, TestDb) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}{path}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (store, db) = TestDb::sqlite().await;
    let key = SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
    let vault = Vault::new(Arc::new(LocalKeyProvider::from_base64(&key).unwrap()));
    let mut contexts = Vec::new();
    for id in ["acme", "globex"] {
        let tenant = bulkhead_store::testing::create_tenant(&store, id, "local").await;
        let ctx = TenantContext::for_tests(&tenant, &[Role::Owner]);
        vault
            .put(
                &store.tenant(&ctx),
                &ConnectorName::try_from("provider").unwrap(),
                &SecretString::from(format!("sk-{id}")),
                json!({}),
            )
            .await
            .unwrap();
        contexts.push(ctx);
    }
    let endpoint = EndpointConfig {
        name: "provider".into(),
        base_url: base,
        region: RegionName::try_from("local").unwrap(),
        kind: EndpointKind::Model,
        connector: Some(ConnectorName::try_from("provider").unwrap()),
        auth,
        timeout_ms: 5_000,
        max_retries: 1,
    };
    let egress = Egress::new(&[endpoint], store.clone(), vault).unwrap();
    (egress, contexts, store, db)
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", text),
        ],
        tools: vec![ToolSpec {
            name: "lookup".into(),
            description: "Look something up".into(),
            parameters: json!({"type": "object"}),
        }],
        max_tokens: Some(64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_share_one_provider_endpoint_each_with_its_own_key() {
    let (egress, contexts, fake, store, db) = setup().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (egress, ctx) = (egress.clone(), contexts[i % 2].clone());
        tasks.push(tokio::spawn(async move {
            let tenant = ctx.tenant_id().to_string();
            let response = chat(
                &egress.for_tenant(&ctx),
                "provider",
                &request(&format!("{tenant} hi")),
            )
            .await
            .unwrap();
            assert_eq!(
                response.message.content.as_deref(),
                Some(format!("hello {tenant}").as_str())
            );
            assert_eq!(
                (response.usage.input_tokens, response.usage.output_tokens),
                (21, 5)
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 200);
    assert_eq!(
        fake.wrong_key.load(Ordering::SeqCst),
        0,
        "a request carried another tenant's key"
    );
    db.finish(store).await;
}

#[tokio::test]
async fn tool_calls_and_provider_errors_come_back_typed() {
    let (egress, contexts, _fake, store, db) = setup().await;
    let acme = &contexts[0];
    let response = chat(
        &egress.for_tenant(acme),
        "provider",
        &request("acme tool please"),
    )
    .await
    .unwrap();
    assert_eq!(response.finish_reason, "tool_calls");
    assert_eq!(response.message.tool_calls[0].name, "lookup");
    assert_eq!(
        response.message.tool_calls[0].arguments,
        "{\"q\":\"status\"}"
    );

    let error = chat(
        &egress.for_tenant(acme),
        "provider",
        &request("acme break-auth"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, ProviderError::Unauthorized { status: 401, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("Incorrect API key"));
    let error = chat(
        &egress.for_tenant(acme),
        "provider",
        &request("acme garbage"),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), "upstream_malformed");
    db.finish(store).await;
}

/// Answers like api.anthropic.com's Messages API, checking the key and version headers.
async fn messages(headers: HeaderMap, Json(body): Json<Value>) -> axum::response::Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let version = headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if key != "sk-acme" || version != "2023-06-01" || headers.contains_key("authorization") {
        let error = json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}});
        return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
    }
    if body["messages"][0]["content"] == "overload" {
        let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        return (StatusCode::from_u16(529).unwrap(), Json(error)).into_response();
    }
    Json(json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": body["model"],
        "content": [{"type": "text", "text": format!("system was: {}", body["system"].as_str().unwrap_or_default())},
                    {"type": "tool_use", "id": "toolu_01", "name": body["tools"][0]["name"], "input": {"q": "status"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 40, "output_tokens": 12}
    }))
    .into_response()
}

#[tokio::test]
async fn anthropic_messages_go_through_egress_with_the_tenants_key() {
    use bulkhead_runtime::providers::anthropic;
    let app = axum::Router::new().route("/v1/messages", axum::routing::post(messages));
    let auth = AuthScheme::Header {
        name: "x-api-key".into(),
    };
    let (egress, contexts, store, db) = serve_and_connect(app, "", auth).await;
    let acme = &contexts[0];
    let response = anthropic::chat(&egress.for_tenant(acme), "provider", &request("hi"))
        .await
        .unwrap();
    assert_eq!(
        response.message.content.as_deref(),
        Some("system was: Be brief.")
    );
    assert_eq!(response.finish_reason, "tool_calls");
    assert_eq!(response.message.tool_calls[0].name, "lookup");
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (40, 12)
    );
    // This upstream knows only acme's key; globex's call carries globex's and is refused.
    let error = anthropic::chat(&egress.for_tenant(&contexts[1]), "provider", &request("hi"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "provider_unauthorized");
    let error = anthropic::chat(&egress.for_tenant(acme), "provider", &request("overload"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ProviderError::Upstream { status: 529, .. }),
        "{error:?}"
    );
    db.finish(store).await;
}

/// Streams from both providers through egress: text and tool-call deltas split across
/// chunks are assembled, usage is read from the stream, and errors keep their codes.
#[tokio::test]
async fn streamed_answers_assemble_tool_call_deltas_and_usage() {
    use bulkhead_runtime::providers::{Delta, anthropic, openai};
    for (api, path, auth) in [
        ("openai", "/v1", AuthScheme::Bearer {}),
        (
            "anthropic",
            "",
            AuthScheme::Header {
                name: "x-api-key".into(),
            },
        ),
    ] {
        let app = bulkhead_testkit::fake_llm::router(None);
        let (egress, contexts, store, db) = serve_and_connect(app, path, auth).await;
        let egress = egress.for_tenant(&contexts[0]);
        let stream = |text: &'static str| {
            let egress = &egress;
            async move {
                let mut deltas = Vec::new();
                let mut sink = |d: Delta| deltas.push(d);
                let result = if api == "openai" {
                    openai::chat_stream(egress, "provider", &request(text), &mut sink).await
                } else {
                    anthropic::chat_stream(egress, "provider", &request(text), &mut sink).await
                };
                (result, deltas)
            }
        };
        let (response, deltas) = stream("what is the weather").await;
        let response = response.unwrap();
        let call = &response.message.tool_calls[0];
        assert_eq!(call.name, "lookup", "{api}");
        assert_eq!(
            serde_json::from_str::<Value>(&call.arguments).unwrap(),
            json!({"city": "Oslo"}),
            "{api}"
        );
        assert_eq!(response.finish_reason, "tool_calls");
        let argument_pieces = deltas
            .iter()
            .filter(|d| matches!(d, Delta::ToolCall { arguments, .. } if !arguments.is_empty()))
            .count();
        assert!(argument_pieces >= 3, "{api}: {deltas:?}");
        assert_eq!(response.usage.input_tokens, 11);

        let (response, deltas) = stream("hello").await;
        let response = response.unwrap();
        let text: String = deltas
            .iter()
            .filter_map(|d| match d {
                Delta::Text(t) => Some(t.as_str()),
                Delta::ToolCall { .. } => None,
            })
            .collect();
        assert_eq!(response.message.content.as_deref(), Some(text.as_str()));
        assert!(text.starts_with("answered with"), "{api}: {text}");

        for (input, code) in [
            ("truncate", "upstream_malformed"),
            ("status-429", "provider_rate_limited"),
            ("status-401", "provider_unauthorized"),
            ("status-500", "upstream_error"),
        ] {
            let (result, _) = stream(input).await;
            assert_eq!(result.unwrap_err().code(), code, "{api} {input}");
        }
        db.finish(store).await;
    }
}
