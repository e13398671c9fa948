//! A tenant's MCP server, served with the official SDK (`rmcp`) over streamable HTTP at
//! `/mcp`, offering three tools:
//!
//! - `lookup_order` (`{"id"}`, read-only): `order <id> is shipped (workspace <team>)`;
//! - `cancel_order` (`{"id"}`, destructive): `order <id> cancelled`;
//! - `fail`: an `isError` result.
//!
//! Each token maps to a workspace, named in answers so tests see whose token a call carried;
//! an unknown token gets 401. Misbehaving servers for failure tests: `/hang` accepts the
//! connection and never answers; `/garbage` answers 200 `application/json` that is not
//! JSON-RPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;

/// A tool call as the server saw it.
#[derive(Debug, Clone)]
pub struct McpCall {
    pub tool: String,
    pub team: String,
    pub arguments: serde_json::Value,
}

#[derive(Clone)]
struct Orders {
    calls: Arc<Mutex<Vec<McpCall>>>,
}

fn tools() -> Vec<Tool> {
    let id_schema =
        json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]});
    let object = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    vec![
        Tool::new(
            "lookup_order",
            "Look an order up by id.",
            object(id_schema.clone()),
        )
        .with_annotations(ToolAnnotations::new().read_only(true)),
        Tool::new("cancel_order", "Cancel an order.", object(id_schema))
            .with_annotations(ToolAnnotations::new().read_only(false).destructive(true)),
        Tool::new("fail", "Always fails.", object(json!({"type": "object"})))
            .with_annotations(ToolAnnotations::new().read_only(true)),
    ]
}

impl ServerHandler for Orders {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let team = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Team>())
            .map(|t| t.0.clone())
            .unwrap_or_default();
        let arguments = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
        let id = arguments["id"].as_str().unwrap_or_default().to_owned();
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(McpCall {
                tool: request.name.to_string(),
                team: team.clone(),
                arguments,
            });
        }
        let result = match request.name.as_ref() {
            "lookup_order" => CallToolResult::success(vec![ContentBlock::text(format!(
                "order {id} is shipped (workspace {team})"
            ))]),
            "cancel_order" => {
                CallToolResult::success(vec![ContentBlock::text(format!("order {id} cancelled"))])
            }
            "fail" => CallToolResult::error(vec![ContentBlock::text("the order system is down")]),
            other => return Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        };
        Ok(result.into())
    }
}

/// The workspace the request's token belongs to, put in the request's extensions.
#[derive(Clone)]
struct Team(String);

pub struct FakeMcp {
    /// `http://127.0.0.1:<port>`; the server is at `/mcp`.
    pub base: String,
    calls: Arc<Mutex<Vec<McpCall>>>,
    /// Every `Authorization` header received, in order.
    credentials: Arc<Mutex<Vec<String>>>,
}

impl FakeMcp {
    /// Serves on an ephemeral loopback port; `tokens` maps each bearer token to a workspace.
    pub async fn start(tokens: &[(&str, &str)]) -> std::io::Result<Self> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let credentials = Arc::new(Mutex::new(Vec::new()));
        let handler = Orders {
            calls: calls.clone(),
        };
        let service = StreamableHttpService::new(
            move || Ok(handler.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let tokens: Arc<HashMap<String, String>> = Arc::new(
            tokens
                .iter()
                .map(|(k, v)| (format!("Bearer {k}"), (*v).to_owned()))
                .collect(),
        );
        let guard = (tokens, credentials.clone());
        let app = Router::new()
            .nest_service("/mcp", service)
            .layer(middleware::from_fn_with_state(guard, authenticate))
            .route("/hang", any(hang))
            .route("/garbage", any(garbage));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            base,
            calls,
            credentials,
        })
    }

    pub fn calls(&self) -> Vec<McpCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn credentials(&self) -> Vec<String> {
        self.credentials
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }
}

type Guard = (Arc<HashMap<String, String>>, Arc<Mutex<Vec<String>>>);

async fn authenticate(
    State((tokens, seen)): State<Guard>,
    mut request: Request,
    next: Next,
) -> Response {
    let credential = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if let Ok(mut seen) = seen.lock() {
        seen.push(credential.clone());
    }
    let Some(team) = tokens.get(&credential) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    request.extensions_mut().insert(Team(team.clone()));
    next.run(request).await
}

async fn hang() -> Response {
    std::future::pending::<()>().await;
    StatusCode::NO_CONTENT.into_response()
}

async fn garbage() -> Response {
    (
        [("content-type", "application/json")],
        r#"{"hello": "this is not JSON-RPC"}"#,
    )
        .into_response()
}
