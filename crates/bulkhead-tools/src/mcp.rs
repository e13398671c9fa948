//! A tenant's own MCP server, reached with the official SDK (`rmcp`) over streamable HTTP.
//!
//! rmcp's client drives the protocol (initialize, sessions, `tools/list`, `tools/call`); the
//! HTTP underneath is ours: [`EgressHttp`] implements rmcp's `StreamableHttpClient` by sending
//! every request through egress in the tenant's context. So an MCP call gets what any call
//! gets: the endpoint from configuration, the tenant's own token from its vault (never
//! rmcp's `auth_header`, which stays unset), residency, the audit event, and the endpoint's
//! timeout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_core::{ConnectorName, TenantContext};
use bulkhead_egress::{Egress, EgressError, Method, OutboundRequest, StreamingResponse};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::{
    CallToolRequestParams, ClientJsonRpcMessage, JsonRpcMessage, ServerJsonRpcMessage,
};
use rmcp::service::{RoleClient, RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransport,
    StreamableHttpClientTransportConfig, StreamableHttpError, StreamableHttpPostResponse,
};
use serde_json::Value;
use sse_stream::{Sse, SseStream};

use crate::ToolError;
use crate::http::{MAX_RESULT_BYTES, clip};
use crate::spec::{BodyShape, Operation};

/// Most bytes of one JSON answer read from an MCP server.
const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;

/// rmcp's HTTP client, made of egress.
#[derive(Clone)]
pub struct EgressHttp {
    egress: Egress,
    ctx: Arc<TenantContext>,
    endpoint: Arc<str>,
    credential: Option<ConnectorName>,
}

impl EgressHttp {
    fn request(
        &self,
        method: Method,
        uri: &str,
        session_id: Option<&str>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> OutboundRequest {
        let mut request =
            OutboundRequest::get(uri.to_owned()).with_credential(self.credential.clone());
        request.method = method;
        request.headers.push((
            "accept".into(),
            "application/json, text/event-stream".into(),
        ));
        if let Some(session) = session_id {
            request
                .headers
                .push(("mcp-session-id".into(), session.to_owned()));
        }
        for (name, value) in custom_headers {
            if let Ok(value) = value.to_str() {
                request.headers.push((name.to_string(), value.to_owned()));
            }
        }
        request
    }

    async fn send(
        &self,
        request: OutboundRequest,
    ) -> Result<StreamingResponse, StreamableHttpError<EgressError>> {
        self.egress
            .for_tenant(&self.ctx)
            .send_streaming(&self.endpoint, request)
            .await
            .map_err(StreamableHttpError::Client)
    }
}

async fn read_all(
    response: &mut StreamingResponse,
) -> Result<Vec<u8>, StreamableHttpError<EgressError>> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(StreamableHttpError::Client)?
    {
        if body.len() + chunk.len() > MAX_JSON_BYTES {
            return Err(StreamableHttpError::ResponseBodyTooLarge {
                max_size: MAX_JSON_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The body of a streamed answer as a stream of byte chunks.
fn byte_stream(
    response: StreamingResponse,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, EgressError>> + Send + 'static {
    futures_util::stream::unfold(Some(response), |state| async move {
        let mut response = state?;
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(bytes::Bytes::from(chunk)), Some(response))),
            Ok(None) => None,
            Err(error) => Some((Err(error), None)),
        }
    })
}

impl StreamableHttpClient for EgressHttp {
    type Error = EgressError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let mut request = self.request(Method::POST, &uri, session_id.as_deref(), custom_headers);
        request
            .headers
            .push(("content-type".into(), "application/json".into()));
        request.body = Some(serde_json::to_vec(&message)?);
        let mut response = self.send(request).await?;
        let status = response.status;
        if status == 202 || status == 204 {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == 404 && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let content_type = response
            .header("content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let session = response.header("mcp-session-id").map(str::to_owned);
        if !(200..300).contains(&status) {
            let body = read_all(&mut response).await?;
            if let Ok(message @ JsonRpcMessage::Error(_)) =
                serde_json::from_slice::<ServerJsonRpcMessage>(&body)
            {
                return Ok(StreamableHttpPostResponse::Json(message, session));
            }
            return Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(
                format!(
                    "HTTP {status}: {}",
                    clip(&String::from_utf8_lossy(&body), 300)
                ),
            )));
        }
        if content_type.starts_with("text/event-stream") {
            let stream: BoxStream<'static, Result<Sse, SseError>> =
                SseStream::from_bytes_stream(byte_stream(response)).boxed();
            return Ok(StreamableHttpPostResponse::Sse(stream, session));
        }
        if content_type.starts_with("application/json") {
            let body = read_all(&mut response).await?;
            if body.is_empty() {
                return Ok(StreamableHttpPostResponse::Accepted);
            }
            let message: ServerJsonRpcMessage = serde_json::from_slice(&body)?;
            return Ok(StreamableHttpPostResponse::Json(message, session));
        }
        let body = read_all(&mut response).await?;
        if body.is_empty() {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        Err(StreamableHttpError::UnexpectedContentType(Some(
            content_type,
        )))
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        let request = self.request(Method::DELETE, &uri, Some(&session_id), custom_headers);
        let mut response = self.send(request).await?;
        let _ = read_all(&mut response).await;
        Ok(())
    }

    /// Server-initiated messages (the optional GET stream) are not used: tool calls answer
    /// on their own POST.
    async fn get_stream(
        &self,
        _uri: Arc<str>,
        _session_id: Option<Arc<str>>,
        _last_event_id: Option<String>,
        _auth_header: Option<String>,
        _custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        Err(StreamableHttpError::ServerDoesNotSupportSse)
    }
}

/// A connected MCP server and the tools it offered.
pub struct McpSession {
    client: RunningService<RoleClient, ()>,
    timeout: Duration,
    pub operations: Vec<Operation>,
}

impl std::fmt::Debug for McpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpSession")
            .field("operations", &self.operations.len())
            .finish()
    }
}

fn mcp_error(what: &str, error: impl std::fmt::Display) -> ToolError {
    ToolError::Mcp(clip(&format!("{what}: {error}"), 500))
}

/// Connects to the MCP server at `path` of `endpoint` for the tenant of `ctx` and lists its
/// tools. Each step is bounded by the endpoint's timeout.
pub async fn connect(
    egress: &Egress,
    ctx: &TenantContext,
    endpoint: &str,
    path: &str,
    credential: Option<ConnectorName>,
    destructive: &[String],
) -> Result<McpSession, ToolError> {
    let config = egress
        .endpoint(endpoint)
        .ok_or_else(|| ToolError::Egress(EgressError::UnknownEndpoint(endpoint.to_owned())))?;
    let timeout = Duration::from_millis(config.timeout_ms);
    let http = EgressHttp {
        egress: egress.clone(),
        ctx: Arc::new(ctx.clone()),
        endpoint: Arc::from(endpoint),
        credential,
    };
    let transport = StreamableHttpClientTransport::with_client(
        http,
        StreamableHttpClientTransportConfig::with_uri(path.to_owned()),
    );
    let client = tokio::time::timeout(timeout, ().serve(transport))
        .await
        .map_err(|_| ToolError::Egress(EgressError::Timeout(endpoint.to_owned())))?
        .map_err(|e| mcp_error("the MCP server did not initialize", e))?;
    let tools = tokio::time::timeout(timeout, client.list_all_tools())
        .await
        .map_err(|_| ToolError::Egress(EgressError::Timeout(endpoint.to_owned())))?
        .map_err(|e| mcp_error("listing the MCP server's tools failed", e))?;
    let operations = tools
        .into_iter()
        .filter_map(|tool| {
            let name = tool.name.to_string();
            if !valid_mcp_name(&name) {
                tracing::info!(tenant.id = %ctx.tenant_id(), endpoint, tool = %name, "skipping an MCP tool whose name models cannot call");
                return None;
            }
            let annotations = tool.annotations.clone().unwrap_or_default();
            // The MCP spec's defaults: a tool not marked read-only may be destructive.
            let marked = !annotations.read_only_hint.unwrap_or(false)
                && annotations.destructive_hint.unwrap_or(true);
            Some(Operation {
                description: tool
                    .description
                    .as_deref()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("The MCP tool {name}.")),
                parameters: Value::Object((*tool.input_schema).clone()),
                target: endpoint.to_owned(),
                action: format!("call {name} on"),
                destructive: marked || destructive.contains(&name),
                method: "MCP".into(),
                path: String::new(),
                body: BodyShape::Arguments,
                headers: Vec::new(),
                name,
            })
        })
        .collect();
    Ok(McpSession {
        client,
        timeout,
        operations,
    })
}

/// MCP tool names the model can call after `<toolset>__`: letters, digits, `_` and `-`.
fn valid_mcp_name(name: &str) -> bool {
    name.len() <= 48
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl McpSession {
    /// Calls tool `name`; answers its text content (capped) or its reported error.
    pub async fn call(
        &self,
        endpoint: &str,
        name: &str,
        arguments: &Value,
    ) -> Result<String, ToolError> {
        let mut params = CallToolRequestParams::new(name.to_owned());
        params.arguments = arguments.as_object().cloned();
        let result = tokio::time::timeout(self.timeout, self.client.call_tool(params))
            .await
            .map_err(|_| ToolError::Egress(EgressError::Timeout(endpoint.to_owned())))?
            .map_err(|e| mcp_error("the MCP call failed", e))?;
        let mut text: Vec<String> = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.clone()))
            .collect();
        if text.is_empty()
            && let Some(structured) = &result.structured_content
        {
            text.push(structured.to_string());
        }
        let text = clip(&text.join("\n"), MAX_RESULT_BYTES);
        if result.is_error.unwrap_or(false) {
            return Err(ToolError::Failed(text));
        }
        Ok(text)
    }
}
