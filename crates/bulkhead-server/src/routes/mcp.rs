//! `/mcp`: the tenant's tools for outside agent frameworks, over MCP streamable HTTP (the
//! official SDK's server side, `rmcp`).
//!
//! Every HTTP request is authenticated here with the tenant's key or JWT before rmcp sees it;
//! the `TenantContext` rides in the request's extensions, and each tool listing and call
//! reads it from there. The server runs stateless (no MCP session holds authority): a request
//! acts for the credential it carries, nothing else. Calls take the same path as an agent's
//! (`bulkhead_runtime::tool_calls`): schema, policies with the principal as caller, approvals,
//! egress with the tenant's credential, audit.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bulkhead_core::TenantContext;
use bulkhead_runtime::tool_calls::{self, CallOrigin};
use bulkhead_tools::{Caller, ToolError, Toolbox};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::routes::runs::RUNNERS;

#[derive(Clone)]
struct Gateway {
    state: AppState,
}

fn context(request: &RequestContext<RoleServer>) -> Result<TenantContext, ErrorData> {
    request
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<TenantContext>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request carries no tenant", None))
}

fn internal(error: impl std::fmt::Display) -> ErrorData {
    tracing::error!(%error, "MCP gateway failure");
    ErrorData::internal_error("Something went wrong", None)
}

impl Gateway {
    /// All of the tenant's toolsets. An MCP toolset whose server is unreachable is left out
    /// (and logged) so one broken server does not hide the others.
    async fn toolbox(&self, ctx: &TenantContext) -> Result<Toolbox, ErrorData> {
        let store = self.state.store().tenant(ctx);
        let names: Vec<String> = store
            .toolsets()
            .await
            .map_err(internal)?
            .into_iter()
            .map(|t| t.name)
            .collect();
        let tools = self.state.runner().tools();
        let mut merged = Toolbox::default();
        for name in names {
            match tools.toolbox(&store, std::slice::from_ref(&name)).await {
                Ok(toolbox) => merged.extend(toolbox),
                Err(error) => {
                    tracing::warn!(tenant.id = %ctx.tenant_id(), toolset = %name, code = error.code(), "toolset unavailable to the MCP gateway");
                }
            }
        }
        Ok(merged)
    }
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bulkhead", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "The tools of the organisation your key belongs to. Calls run with its own \
                 credentials and policies; some wait for a person's approval.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        request: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let ctx = context(&request)?;
        let toolbox = self.toolbox(&ctx).await?;
        let tools = toolbox
            .tools()
            .iter()
            .map(|tool| {
                let schema = tool
                    .operation
                    .parameters
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                Tool::new(
                    tool.model_name(),
                    tool.operation.description.clone(),
                    schema,
                )
                .with_annotations(
                    ToolAnnotations::new()
                        .read_only(false)
                        .destructive(tool.operation.destructive),
                )
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        call: CallToolRequestParams,
        request: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let ctx = context(&request)?;
        let store = self.state.store().tenant(&ctx);
        // Only the named tool's toolset is connected for a call.
        let toolset = call
            .name
            .split_once("__")
            .map(|(toolset, _)| toolset.to_owned())
            .unwrap_or_default();
        let tools = self.state.runner().tools();
        let toolbox = match store.toolset(&toolset).await.map_err(internal)? {
            Some(_) => match tools.toolbox(&store, std::slice::from_ref(&toolset)).await {
                Ok(toolbox) => toolbox,
                Err(ToolError::Store(error)) => return Err(internal(error)),
                Err(error) => return Ok(failure(&error).into()),
            },
            None => Toolbox::default(),
        };
        let origin = CallOrigin {
            caller: Caller::User {
                principal: ctx.principal().to_string(),
                roles: ctx.roles().iter().map(|r| r.as_str().to_owned()).collect(),
            },
            via: "mcp",
            run_id: "",
        };
        let arguments = serde_json::Value::Object(call.arguments.clone().unwrap_or_default());
        let result = tool_calls::call_for_principal(
            tools, &store, &toolbox, &origin, &call.name, &arguments,
        )
        .await
        .map_err(internal)?;
        Ok(match result {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]).into(),
            Err(error) => failure(&error).into(),
        })
    }
}

/// A refused or failed call, as an MCP tool error the caller's model can read.
fn failure(error: &ToolError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(tool_calls::refusal(error))])
}

fn service(state: AppState) -> StreamableHttpService<Gateway, LocalSessionManager> {
    StreamableHttpService::new(
        move || {
            Ok(Gateway {
                state: state.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        // Stateless: every request stands on its own credential. Host checks guard local
        // servers against DNS rebinding; here every request needs a bearer credential, which
        // a rebinding page does not have.
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .disable_allowed_hosts(),
    )
}

async fn serve(
    state: AppState,
    ctx: TenantContext,
    mut request: Request,
) -> Result<Response, ApiError> {
    require_role(&ctx, RUNNERS)?;
    request.extensions_mut().insert(ctx);
    let response = service(state).handle(request).await;
    Ok(response.map(Body::new))
}

/// MCP streamable HTTP: JSON-RPC messages (`initialize`, `tools/list`, `tools/call`) from an
/// outside MCP client acting with a tenant's key. It sees that tenant's tools only.
#[utoipa::path(post, path = "/mcp", tag = "tools",
    security(("tenant_credential" = [])),
    request_body(content = String, content_type = "application/json", description = "A JSON-RPC message"),
    responses((status = 200, description = "A JSON-RPC answer (JSON or server-sent events)"),
        (status = 202, description = "A notification, accepted"),
        (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn mcp_post(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    request: Request,
) -> Result<Response, ApiError> {
    serve(state, ctx, request).await
}

/// The server-initiated stream of MCP streamable HTTP; this stateless server answers 405.
#[utoipa::path(get, path = "/mcp", tag = "tools",
    security(("tenant_credential" = [])),
    responses((status = 405, description = "No server-initiated stream"), (status = 401, body = Problem)))]
pub async fn mcp_get(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    request: Request,
) -> Result<Response, ApiError> {
    serve(state, ctx, request).await
}
