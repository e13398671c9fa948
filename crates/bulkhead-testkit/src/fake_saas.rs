//! A fake Slack, Jira and GitHub on one loopback port, with the request and response shapes
//! of their public REST references:
//!
//! - Slack Web API: `POST /api/chat.postMessage` (JSON `channel`, `text`) answering
//!   `{"ok":true,"channel","ts","message"}`, and `GET /api/conversations.list` answering
//!   `{"ok":true,"channels":[...],"response_metadata":{"next_cursor":""}}`. A bot token maps
//!   to one workspace (team); an unknown token gets `{"ok":false,"error":"invalid_auth"}`, and
//!   `chat.postMessage` to `#missing` gets `channel_not_found`, both with status 200 as Slack
//!   does.
//! - Jira Cloud: `POST /rest/api/2/issue` (`{"fields":{...}}`, HTTP Basic) answering 201
//!   `{"id","key","self"}`; `GET /rest/api/3/search/jql` answering `{"issues":[...],"isLast"}`.
//! - GitHub: `POST /repos/{owner}/{repo}/issues` answering 201 with `number` and `html_url`;
//!   `POST /repos/{owner}/{repo}/issues/{n}/comments` answering 201.
//! - `GET|POST /echo/{*rest}` answers the method, path, query and body it got (never the
//!   credential), for declared `http` operations; `/hang/{*rest}` never answers.
//!
//! Every request is recorded with the credential it carried, so tests check whose it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct SaasRequest {
    pub service: &'static str,
    pub method: String,
    pub path: String,
    /// The `Authorization` header as received.
    pub credential: String,
    /// For Slack: the workspace the token belongs to (empty if unknown).
    pub team: String,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    /// Slack bot token -> team id.
    slack_tokens: HashMap<String, String>,
    requests: std::collections::VecDeque<SaasRequest>,
    next_issue: u64,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeSaas {
    /// `http://127.0.0.1:<port>`: the base URL of all three services.
    pub base: String,
    inner: Shared,
}

impl FakeSaas {
    /// Serves on an ephemeral loopback port; `slack_tokens` maps each bot token to its
    /// workspace.
    pub async fn start(slack_tokens: &[(&str, &str)]) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", slack_tokens).await
    }

    /// Like [`FakeSaas::start`], on `addr`. Under load it keeps only the last 10,000
    /// requests.
    pub async fn start_on(addr: &str, slack_tokens: &[(&str, &str)]) -> std::io::Result<Self> {
        let inner = Shared::default();
        if let Ok(mut state) = inner.lock() {
            state.slack_tokens = slack_tokens
                .iter()
                .map(|(token, team)| ((*token).to_owned(), (*team).to_owned()))
                .collect();
        }
        let app = Router::new()
            .route("/api/chat.postMessage", post(slack_post))
            .route("/api/conversations.list", get(slack_list))
            .route("/rest/api/2/issue", post(jira_create))
            .route("/rest/api/3/search/jql", get(jira_search))
            .route("/repos/{owner}/{repo}/issues", post(github_issue))
            .route(
                "/repos/{owner}/{repo}/issues/{number}/comments",
                post(github_comment),
            )
            .route("/echo/{*rest}", any(echo))
            .route("/hang/{*rest}", any(hang))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { base, inner })
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<SaasRequest> {
        self.inner
            .lock()
            .map(|s| s.requests.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn authorization(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn record(state: &Shared, request: SaasRequest) -> u64 {
    match state.lock() {
        Ok(mut s) => {
            if s.requests.len() >= 10_000 {
                s.requests.pop_front();
            }
            s.requests.push_back(request);
            s.next_issue += 1;
            s.next_issue
        }
        Err(_) => 0,
    }
}

fn slack_team(state: &Shared, credential: &str) -> String {
    let token = credential.strip_prefix("Bearer ").unwrap_or_default();
    state
        .lock()
        .ok()
        .and_then(|s| s.slack_tokens.get(token).cloned())
        .unwrap_or_default()
}

async fn slack_post(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let credential = authorization(&headers);
    let team = slack_team(&state, &credential);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = record(
        &state,
        SaasRequest {
            service: "slack",
            method: "POST".into(),
            path: "/api/chat.postMessage".into(),
            credential,
            team: team.clone(),
            body: body.clone(),
        },
    );
    if team.is_empty() {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    let channel = body["channel"].as_str().unwrap_or_default();
    if channel.is_empty() || channel == "#missing" {
        return Json(json!({"ok": false, "error": "channel_not_found"})).into_response();
    }
    let ts = format!("1700000000.{n:06}");
    Json(json!({
        "ok": true,
        "channel": format!("C{}", channel.trim_start_matches('#').to_uppercase()),
        "ts": ts,
        "message": {"type": "message", "subtype": "bot_message", "text": body["text"], "ts": ts, "team": team},
    }))
    .into_response()
}

async fn slack_list(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let credential = authorization(&headers);
    let team = slack_team(&state, &credential);
    record(
        &state,
        SaasRequest {
            service: "slack",
            method: "GET".into(),
            path: "/api/conversations.list".into(),
            credential,
            team: team.clone(),
            body: Value::Null,
        },
    );
    if team.is_empty() {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    Json(json!({
        "ok": true,
        "channels": [
            {"id": "CGENERAL", "name": "general", "is_channel": true, "context_team_id": team},
            {"id": "CINCIDENTS", "name": "incidents", "is_channel": true, "context_team_id": team},
        ],
        "response_metadata": {"next_cursor": ""},
    }))
    .into_response()
}

async fn jira_create(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = record(
        &state,
        SaasRequest {
            service: "jira",
            method: "POST".into(),
            path: "/rest/api/2/issue".into(),
            credential: authorization(&headers),
            team: String::new(),
            body: body.clone(),
        },
    );
    let Some(project) = body["fields"]["project"]["key"].as_str() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errorMessages": [], "errors": {"project": "project is required"}})),
        )
            .into_response();
    };
    let id = 10_000 + n;
    (
        StatusCode::CREATED,
        Json(
            json!({"id": id.to_string(), "key": format!("{project}-{n}"),
            "self": format!("https://example.atlassian.net/rest/api/2/issue/{id}")}),
        ),
    )
        .into_response()
}

async fn jira_search(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    record(
        &state,
        SaasRequest {
            service: "jira",
            method: "GET".into(),
            path: format!("/rest/api/3/search/jql?{}", query.unwrap_or_default()),
            credential: authorization(&headers),
            team: String::new(),
            body: Value::Null,
        },
    );
    Json(json!({
        "issues": [{"id": "10001", "key": "OPS-1", "fields": {"summary": "Checkout is down", "status": {"name": "Open"}}}],
        "isLast": true,
    }))
    .into_response()
}

async fn github_issue(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = record(
        &state,
        SaasRequest {
            service: "github",
            method: "POST".into(),
            path: format!("/repos/{owner}/{repo}/issues"),
            credential: authorization(&headers),
            team: String::new(),
            body: body.clone(),
        },
    );
    (
        StatusCode::CREATED,
        Json(
            json!({"id": 1_000 + n, "number": n, "state": "open", "title": body["title"],
            "html_url": format!("https://github.com/{owner}/{repo}/issues/{n}")}),
        ),
    )
        .into_response()
}

async fn github_comment(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = record(
        &state,
        SaasRequest {
            service: "github",
            method: "POST".into(),
            path: format!("/repos/{owner}/{repo}/issues/{number}/comments"),
            credential: authorization(&headers),
            team: String::new(),
            body: body.clone(),
        },
    );
    (
        StatusCode::CREATED,
        Json(json!({"id": 5_000 + n, "body": body["body"],
            "html_url": format!("https://github.com/{owner}/{repo}/issues/{number}#issuecomment-{n}")})),
    )
        .into_response()
}

async fn echo(
    State(state): State<Shared>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    // The path as sent, percent-encoding and all: tests check what reached the wire.
    let rest = uri.path().trim_start_matches("/echo/").to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(
        &state,
        SaasRequest {
            service: "echo",
            method: method.to_string(),
            path: format!("/echo/{rest}"),
            credential: authorization(&headers),
            team: String::new(),
            body: body.clone(),
        },
    );
    Json(json!({"method": method.as_str(), "path": format!("/echo/{rest}"), "query": query, "body": body}))
        .into_response()
}

async fn hang() -> Response {
    std::future::pending::<()>().await;
    StatusCode::NO_CONTENT.into_response()
}
