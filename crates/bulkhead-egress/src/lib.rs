//! Egress: the one way out of the process.
//!
//! **Architecture Invariant:** the only crate with a network client (hyper-util's, async-nats,
//! the OTLP exporter), checked by `only_the_egress_crate_has_a_network_client`. Tenants'
//! calls go through [`Egress`]; the platform's own traffic (the audit stream in [`audit_stream`],
//! spans in [`telemetry`]) goes to destinations only the operator configures, and carries
//! ids, never a tenant's secret or content.
//!
//! **Architecture Invariant:** a call is made through [`Egress::for_tenant`] with a
//! `TenantContext`; the endpoint is one declared in configuration; the credential injected is
//! the calling tenant's own, fetched from the vault at the last moment and used for that
//! request alone; an endpoint outside the tenant's regions is refused before any byte leaves;
//! every call, refused or made, is appended to the tenant's audit chain. Credentials never
//! come from the environment or the config file, only from the tenant's vault.

pub mod audit_stream;
mod breaker;
pub mod telemetry;
mod thread_clients;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::config::{AuthScheme, EndpointConfig, EndpointKind};
use bulkhead_core::{ConnectorName, RegionName, TenantContext};
use bulkhead_store::{Store, StoreError};
use bulkhead_vault::{Credential, Vault, VaultError};
use bytes::Bytes;
pub use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use secrecy::ExposeSecret;
use serde_json::json;
use url::Url;

use crate::breaker::Breaker;
use crate::thread_clients::ThreadClients;

const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);
/// Enough for every path Bulkhead's own provider code calls on one endpoint.
const MAX_CACHED_URIS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("no endpoint named {0:?} is configured")]
    UnknownEndpoint(String),
    #[error("endpoint {endpoint} is in region {region}, where this tenant's data may not go")]
    ResidencyViolation {
        endpoint: String,
        region: RegionName,
    },
    #[error("the tenant has no credential for connector {0}")]
    MissingCredential(String),
    #[error("the credential's field {0:?} is missing or not a string")]
    MissingCredentialField(&'static str),
    #[error("a credential of another tenant reached this tenant's call; refused")]
    CrossTenantCredential,
    #[error("the path must start with '/' and stay on the endpoint's host")]
    InvalidPath,
    #[error("endpoint {0} is failing; calls are paused for a while (circuit open)")]
    CircuitOpen(String),
    #[error("endpoint {0} did not answer in time")]
    Timeout(String),
    #[error("calling endpoint {endpoint} failed: {message}")]
    Transport { endpoint: String, message: String },
    #[error("the response from {0} is larger than the limit")]
    ResponseTooLarge(String),
    #[error("invalid endpoint configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EgressError {
    /// The stable problem code the HTTP layer answers with.
    pub fn code(&self) -> &'static str {
        match self {
            EgressError::UnknownEndpoint(_) => "unknown_endpoint",
            EgressError::ResidencyViolation { .. } => "residency_violation",
            EgressError::MissingCredential(_) | EgressError::MissingCredentialField(_) => {
                "missing_credential"
            }
            EgressError::CrossTenantCredential => "cross_tenant_credential",
            EgressError::InvalidPath => "invalid_path",
            EgressError::CircuitOpen(_) => "upstream_unavailable",
            EgressError::Timeout(_) => "upstream_timeout",
            EgressError::Transport { .. } | EgressError::ResponseTooLarge(_) => "upstream_error",
            EgressError::Config(_) | EgressError::Vault(_) | EgressError::Store(_) => "internal",
        }
    }
}

/// A request to an endpoint, relative to its base URL.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    /// Starts with `/`; appended to the endpoint's base URL. May carry a query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Set by a caller that knows a repeated request does no harm (a model completion: no
    /// side effect upstream), so failures are retried even though the method is not
    /// idempotent.
    pub retry_safe: bool,
    /// Present this credential of the tenant's instead of the endpoint's connector. Only for
    /// tool and MCP endpoints, where a tenant chooses which of its own credentials a toolset
    /// uses; it is still the calling tenant's, fetched from its vault.
    pub credential: Option<ConnectorName>,
}

impl OutboundRequest {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: None,
            retry_safe: false,
            credential: None,
        }
    }

    pub fn post_json(path: impl Into<String>, body: &serde_json::Value) -> Self {
        Self::post_json_text(path, body.to_string().into_bytes())
    }

    /// A POST of JSON the caller has already written.
    pub fn post_json_text(path: impl Into<String>, body: Vec<u8>) -> Self {
        Self {
            method: Method::POST,
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Some(body),
            retry_safe: false,
            credential: None,
        }
    }

    /// Presents the tenant's credential for `connector` (see [`OutboundRequest::credential`]).
    pub fn with_credential(mut self, connector: Option<ConnectorName>) -> Self {
        self.credential = connector;
        self
    }

    /// Marks the request as safe to repeat (see [`OutboundRequest::retry_safe`]).
    pub fn retry_safe(mut self) -> Self {
        self.retry_safe = true;
        self
    }

    fn idempotent(&self) -> bool {
        self.retry_safe
            || matches!(
                self.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            )
    }
}

#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub attempts: u32,
}

struct Endpoint {
    config: EndpointConfig,
    base: Url,
    breaker: Mutex<Breaker>,
    /// The checked URI of each path called, for a model or embedding endpoint, whose paths
    /// are Bulkhead's own (`/chat/completions`): `join` parses a URL, a fifth of egress's own
    /// work per call. A tool's or MCP server's paths come from tenants and are not kept.
    uris: Mutex<HashMap<String, http::Uri>>,
}

impl Endpoint {
    /// `path` on this endpoint, checked by [`join`].
    fn uri(&self, path: &str) -> Result<http::Uri, EgressError> {
        let cached = matches!(
            self.config.kind,
            EndpointKind::Model | EndpointKind::Embedding
        );
        if cached && let Some(uri) = self.uris.lock().ok().and_then(|u| u.get(path).cloned()) {
            return Ok(uri);
        }
        let uri = to_uri(join(&self.base, path)?)?;
        if cached
            && let Ok(mut uris) = self.uris.lock()
            && uris.len() < MAX_CACHED_URIS
        {
            uris.insert(path.to_owned(), uri.clone());
        }
        Ok(uri)
    }
}

/// The outbound client. Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct Inner {
    clients: ThreadClients,
    endpoints: HashMap<String, Endpoint>,
    store: Store,
    vault: Vault,
}

impl Egress {
    /// Validates the endpoints and builds the first HTTP client.
    pub fn new(
        endpoints: &[EndpointConfig],
        store: Store,
        vault: Vault,
    ) -> Result<Self, EgressError> {
        let mut map = HashMap::new();
        for config in endpoints {
            let base = Url::parse(&config.base_url).map_err(|e| {
                EgressError::Config(format!("endpoint {}: base_url: {e}", config.name))
            })?;
            if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
                return Err(EgressError::Config(format!(
                    "endpoint {}: base_url must be http(s)://host",
                    config.name
                )));
            }
            if base.query().is_some() || !base.username().is_empty() || base.password().is_some() {
                return Err(EgressError::Config(format!(
                    "endpoint {}: base_url must not carry a query or credentials; use the vault",
                    config.name
                )));
            }
            // A tool or MCP endpoint may leave the credential to each toolset that uses it.
            let chosen_per_call = matches!(config.kind, EndpointKind::Tool | EndpointKind::Mcp);
            if config.connector.is_none()
                && !chosen_per_call
                && !matches!(config.auth, AuthScheme::None {})
            {
                return Err(EgressError::Config(format!(
                    "endpoint {}: an auth scheme needs a connector (set auth = {{ scheme = \"none\" }} for a public endpoint)",
                    config.name
                )));
            }
            let endpoint = Endpoint {
                config: config.clone(),
                base,
                breaker: Mutex::new(Breaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN)),
                uris: Mutex::new(HashMap::new()),
            };
            if map.insert(config.name.clone(), endpoint).is_some() {
                return Err(EgressError::Config(format!(
                    "endpoint {} is declared twice",
                    config.name
                )));
            }
        }
        let clients = ThreadClients::new()
            .map_err(|e| EgressError::Config(format!("cannot set up TLS: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                clients,
                endpoints: map,
                store,
                vault,
            }),
        })
    }

    /// The configuration of endpoint `name`, if one is declared.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointConfig> {
        self.inner.endpoints.get(name).map(|e| &e.config)
    }

    /// The only way to call out: bound to one tenant's context.
    pub fn for_tenant<'a>(&'a self, ctx: &'a TenantContext) -> TenantEgress<'a> {
        TenantEgress { egress: self, ctx }
    }
}

/// Refuses a credential that belongs to another tenant than the calling context. The vault
/// reads through a tenant-scoped store, so this cannot happen through any API; it is the last
/// check before a secret leaves, in case a future code path gets that wrong.
pub fn check_credential_owner(
    ctx: &TenantContext,
    credential: &Credential,
) -> Result<(), EgressError> {
    if &credential.tenant_id == ctx.tenant_id() {
        Ok(())
    } else {
        Err(EgressError::CrossTenantCredential)
    }
}

pub struct TenantEgress<'a> {
    egress: &'a Egress,
    ctx: &'a TenantContext,
}

impl TenantEgress<'_> {
    /// Reads a remembered credential again in a task of its own, so that the call that found
    /// it past half its life goes out with it rather than wait for the database (a tail
    /// request at concurrency 1: ARCHITECTURE.md, 2026-12-06 eighth). A read that fails leaves
    /// the entry to expire; the next call then reads it itself and meets the error.
    fn renew_in_the_background(&self, renewal: bulkhead_vault::Renewal) {
        let store = self.egress.inner.store.clone();
        let vault = self.egress.inner.vault.clone();
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            if let Err(error) = vault.renew(&store.tenant(&ctx), renewal).await {
                tracing::warn!(%error, "renewing a remembered credential failed; it will expire");
            }
        });
    }

    /// Sends `request` to endpoint `name` with this tenant's credential and reads the whole
    /// answer (capped).
    pub async fn send(
        &self,
        name: &str,
        request: OutboundRequest,
    ) -> Result<OutboundResponse, EgressError> {
        let call = CallFacts::new(name, &request);
        let result = match self.send_to(name, request).await {
            Ok(sent) => {
                let (status, headers) = sent.status_and_headers();
                let attempts = sent.attempts;
                sent.read_whole().await.map(|body| OutboundResponse {
                    status,
                    headers,
                    body,
                    attempts,
                })
            }
            Err(error) => Err(error),
        };
        let summary = result
            .as_ref()
            .map(|r| (r.status, r.attempts, Some(r.body.len())));
        self.audit(call, summary.as_ref().map_err(|e| *e)).await?;
        result
    }

    /// Sends `request` and hands back the answer as soon as its headers arrive, for
    /// server-sent events. A 2xx body is read chunk by chunk by the caller; any other status
    /// has its body read here (capped) so the caller can map the error. The call is audited
    /// when the headers arrive: status, attempts and time to first byte.
    pub async fn send_streaming(
        &self,
        name: &str,
        request: OutboundRequest,
    ) -> Result<StreamingResponse, EgressError> {
        let call = CallFacts::new(name, &request);
        let result = match self.send_to(name, request).await {
            Ok(sent) => {
                let (status, headers) = sent.status_and_headers();
                let (attempts, endpoint) = (sent.attempts, sent.endpoint.config.name.clone());
                let body = if (200..300).contains(&status) {
                    Ok(StreamBody::Live {
                        body: sent.response.into_body(),
                        deadline: sent.deadline,
                    })
                } else {
                    sent.read_whole()
                        .await
                        .map(|body| StreamBody::Read(Some(body)))
                };
                body.map(|body| StreamingResponse {
                    status,
                    headers,
                    attempts,
                    endpoint,
                    body,
                })
            }
            Err(error) => Err(error),
        };
        let summary = result.as_ref().map(|r| (r.status, r.attempts, None));
        self.audit(call, summary.as_ref().map_err(|e| *e)).await?;
        result
    }

    async fn audit(
        &self,
        call: CallFacts,
        result: Result<&(u16, u32, Option<usize>), &EgressError>,
    ) -> Result<(), EgressError> {
        let CallFacts {
            name,
            method,
            path,
            request_bytes,
            started,
        } = call;
        let (outcome, mut details) = match result {
            Ok((status, attempts, response_bytes)) => {
                let mut details = json!({"status": status, "attempts": attempts});
                match response_bytes {
                    Some(bytes) => details["response_bytes"] = json!(bytes),
                    None => details["streamed"] = json!(true),
                }
                let outcome = if *status < 400 {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                (outcome, details)
            }
            Err(error) => (Outcome::Failure, json!({"error": error.code()})),
        };
        if let Some(endpoint) = self.egress.inner.endpoints.get(&name) {
            details["region"] = json!(endpoint.config.region);
        }
        details["endpoint"] = json!(name);
        details["path"] = json!(path);
        details["method"] = json!(method);
        details["request_bytes"] = json!(request_bytes);
        details["latency_ms"] =
            json!(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        let action = match result {
            Err(EgressError::ResidencyViolation { .. }) => "egress.denied",
            Err(EgressError::CrossTenantCredential) => "security.cross_tenant_credential",
            _ => "egress.call",
        };
        self.egress
            .inner
            .store
            .tenant(self.ctx)
            .record_event(AuditDraft {
                action,
                resource: format!("endpoint/{name}"),
                outcome,
                details,
            })
            .await?;
        let failed = match result {
            Err(error) => {
                tracing::warn!(tenant.id = %self.ctx.tenant_id(), endpoint = name, code = error.code(), "outbound call failed");
                Some(error.code().to_owned())
            }
            Ok((status, ..)) if *status >= 500 || *status == 429 => Some(format!("http_{status}")),
            Ok(_) => None,
        };
        // Labelled by endpoint (a configured name: bounded) and code, never by tenant.
        if let Some(code) = failed {
            metrics::counter!("bulkhead_upstream_errors_total", "endpoint" => name.clone(), "code" => code)
                .increment(1);
        }
        Ok(())
    }

    /// Checks residency, injects the credential and sends with retries; answers the response
    /// whose headers have arrived and the number of attempts it took.
    async fn send_to(
        &self,
        name: &str,
        mut request: OutboundRequest,
    ) -> Result<Sent<'_>, EgressError> {
        let endpoint = self
            .egress
            .inner
            .endpoints
            .get(name)
            .ok_or_else(|| EgressError::UnknownEndpoint(name.to_owned()))?;
        let config = &endpoint.config;
        if !self.ctx.may_use_region(&config.region) {
            return Err(EgressError::ResidencyViolation {
                endpoint: config.name.clone(),
                region: config.region.clone(),
            });
        }
        // The path is checked before anything is revealed. A query-string credential goes
        // into the URL itself, so that scheme keeps the parsed URL; the others take the URI.
        let checked = match config.auth {
            AuthScheme::Query { .. } => Checked::Url(join(&endpoint.base, &request.path)?),
            _ => Checked::Uri(endpoint.uri(&request.path)?),
        };
        let connector = match &request.credential {
            Some(chosen) if matches!(config.kind, EndpointKind::Tool | EndpointKind::Mcp) => {
                Some(chosen)
            }
            Some(_) => {
                return Err(EgressError::Config(format!(
                    "endpoint {}: only tool and MCP endpoints take a chosen credential",
                    config.name
                )));
            }
            None => config.connector.as_ref(),
        };
        let credential = match connector {
            None if !matches!(config.auth, AuthScheme::None {}) => {
                return Err(EgressError::MissingCredential(format!(
                    "(endpoint {} names no connector and the call chose none)",
                    config.name
                )));
            }
            None => None,
            Some(connector) => {
                let store = self.egress.inner.store.tenant(self.ctx);
                let (credential, renewal) = self
                    .egress
                    .inner
                    .vault
                    .reveal_deferring_renewal(&store, connector)
                    .await?;
                if let Some(renewal) = renewal {
                    self.renew_in_the_background(renewal);
                }
                let credential = credential
                    .ok_or_else(|| EgressError::MissingCredential(connector.to_string()))?;
                check_credential_owner(self.ctx, &credential)?;
                Some(credential)
            }
        };
        let secret = credential.as_ref().map(|c| c.secret.expose_secret());
        let (uri, headers) = self.prepare(endpoint, checked, &request, credential.as_ref())?;
        // Bytes, so that each attempt shares the one copy of the body.
        let body = Bytes::from(request.body.take().unwrap_or_default());
        let timeout = Duration::from_millis(endpoint.config.timeout_ms);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let allowed = endpoint
                .breaker
                .lock()
                .map(|b| b.allows(Instant::now()))
                .unwrap_or(true);
            if !allowed {
                return Err(EgressError::CircuitOpen(config.name.clone()));
            }
            let mut outbound = http::Request::new(Full::new(body.clone()));
            *outbound.method_mut() = request.method.clone();
            *outbound.uri_mut() = uri.clone();
            *outbound.headers_mut() = headers.clone();
            // Each attempt has the whole timeout, its answer's body included.
            let deadline = tokio::time::Instant::now() + timeout;
            let retries_left = attempts <= config.max_retries;
            let sent =
                tokio::time::timeout_at(deadline, self.egress.inner.clients.request(outbound));
            match sent
                .await
                .map_err(|_| CallError::Timeout)
                .and_then(|r| r.map_err(CallError::Client))
            {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let failure = status >= 500;
                    self.record(endpoint, !failure);
                    let retryable = status == 429 || (failure && request.idempotent());
                    if retryable && retries_left {
                        tokio::time::sleep(backoff(attempts, response.headers())).await;
                        continue;
                    }
                    return Ok(Sent {
                        endpoint,
                        response,
                        attempts,
                        deadline,
                    });
                }
                Err(error) => {
                    self.record(endpoint, false);
                    if request.idempotent() && retries_left {
                        tokio::time::sleep(backoff(attempts, &HeaderMap::new())).await;
                        continue;
                    }
                    let CallError::Client(error) = error else {
                        return Err(EgressError::Timeout(config.name.clone()));
                    };
                    // The client's errors name no URL, but scrub the secret to be sure.
                    let mut message = error_chain(&error);
                    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
                        message = message.replace(secret, "[redacted]");
                    }
                    return Err(EgressError::Transport {
                        endpoint: config.name.clone(),
                        message,
                    });
                }
            }
        }
    }

    fn record(&self, endpoint: &Endpoint, success: bool) {
        if let Ok(mut breaker) = endpoint.breaker.lock() {
            if success {
                breaker.record_success();
            } else {
                breaker.record_failure(Instant::now());
            }
        }
    }

    /// The request's URI and headers, the credential injected: the same for every attempt.
    fn prepare(
        &self,
        endpoint: &Endpoint,
        checked: Checked,
        request: &OutboundRequest,
        credential: Option<&Credential>,
    ) -> Result<(http::Uri, HeaderMap), EgressError> {
        let mut headers = HeaderMap::new();
        let mut query_credential = None;
        for (name, value) in &request.headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| EgressError::InvalidPath)?;
            if name == header::AUTHORIZATION {
                // The caller never supplies credentials; egress does.
                continue;
            }
            let value = HeaderValue::from_str(value).map_err(|_| EgressError::InvalidPath)?;
            headers.append(name, value);
        }
        if let Some(credential) = credential {
            let secret = credential.secret.expose_secret();
            let sensitive = |value: String| {
                HeaderValue::from_str(&value)
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| EgressError::MissingCredentialField("secret"))
            };
            match &endpoint.config.auth {
                AuthScheme::Bearer {} => {
                    headers.insert(
                        header::AUTHORIZATION,
                        sensitive(format!("Bearer {secret}"))?,
                    );
                }
                AuthScheme::Header { name } => {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| EgressError::Config(format!("bad header name {name}")))?;
                    headers.insert(name, sensitive(secret.to_owned())?);
                }
                AuthScheme::Basic {} => {
                    let username = credential
                        .fields
                        .get("username")
                        .and_then(serde_json::Value::as_str)
                        .ok_or(EgressError::MissingCredentialField("username"))?;
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{secret}"));
                    headers.insert(
                        header::AUTHORIZATION,
                        sensitive(format!("Basic {encoded}"))?,
                    );
                }
                AuthScheme::Query { param } => query_credential = Some((param, secret)),
                AuthScheme::None {} => {}
            }
        }
        let uri = match checked {
            Checked::Uri(uri) => uri,
            Checked::Url(mut url) => {
                if let Some((param, secret)) = query_credential {
                    url.query_pairs_mut().append_pair(param, secret);
                }
                to_uri(url)?
            }
        };
        Ok((uri, headers))
    }
}

/// A call's target, its path checked by [`join`].
enum Checked {
    Uri(http::Uri),
    /// For a query-string credential, which is appended to the URL.
    Url(Url),
}

/// A response whose headers have arrived, and what reading its body needs.
struct Sent<'a> {
    endpoint: &'a Endpoint,
    response: http::Response<Incoming>,
    attempts: u32,
    /// When the attempt's timeout runs out; the body must be read by then.
    deadline: tokio::time::Instant,
}

impl Sent<'_> {
    fn status_and_headers(&self) -> (u16, Vec<(String, String)>) {
        (
            self.response.status().as_u16(),
            header_pairs(self.response.headers()),
        )
    }

    /// The whole body, capped, by the attempt's deadline.
    async fn read_whole(self) -> Result<Vec<u8>, EgressError> {
        read_capped(
            self.response.into_body(),
            self.deadline,
            &self.endpoint.config.name,
        )
        .await
    }
}

/// Why an attempt got no response.
enum CallError {
    Timeout,
    Client(hyper_util::client::legacy::Error),
}

/// The error and its causes, outermost first: hyper-util's own message alone ("client error
/// (Connect)") does not say what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// What the audit event of a call records about its request.
struct CallFacts {
    name: String,
    method: String,
    /// Without the query string, which may carry a credential.
    path: String,
    request_bytes: usize,
    started: Instant,
}

impl CallFacts {
    fn new(name: &str, request: &OutboundRequest) -> Self {
        Self {
            name: name.to_owned(),
            method: request.method.to_string(),
            path: request
                .path
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned(),
            request_bytes: request.body.as_ref().map_or(0, Vec::len),
            started: Instant::now(),
        }
    }
}

/// An answer whose body is read as it arrives.
pub struct StreamingResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub attempts: u32,
    endpoint: String,
    body: StreamBody,
}

enum StreamBody {
    Live {
        body: Incoming,
        deadline: tokio::time::Instant,
    },
    /// A non-2xx answer, read whole; handed out as one chunk.
    Read(Option<Vec<u8>>),
}

impl StreamingResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of the body, `None` at its end. The endpoint's timeout covers the whole
    /// answer, so a stalled stream ends in [`EgressError::Timeout`].
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, EgressError> {
        match &mut self.body {
            StreamBody::Read(body) => Ok(body.take()),
            StreamBody::Live { body, deadline } => Ok(next_data(body, *deadline, &self.endpoint)
                .await?
                .map(|c| c.to_vec())),
        }
    }
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_owned())))
        .collect()
}

/// The body's next piece of data, `None` at its end; trailers are skipped.
async fn next_data(
    body: &mut Incoming,
    deadline: tokio::time::Instant,
    endpoint: &str,
) -> Result<Option<Bytes>, EgressError> {
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| EgressError::Timeout(endpoint.to_owned()))?;
        match frame {
            None => return Ok(None),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
            Some(Err(error)) => {
                return Err(EgressError::Transport {
                    endpoint: endpoint.to_owned(),
                    message: error_chain(&error),
                });
            }
        }
    }
}

/// Appends `path` to the base URL and checks the result stays on the base's scheme, host and
/// port, under its path prefix: a caller-chosen path can never redirect the tenant's
/// credential to another server.
fn join(base: &Url, path: &str) -> Result<Url, EgressError> {
    if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') || path.contains('#')
    {
        return Err(EgressError::InvalidPath);
    }
    let joined = format!("{}{path}", base.as_str().trim_end_matches('/'));
    let url = Url::parse(&joined).map_err(|_| EgressError::InvalidPath)?;
    let prefix = base.path().trim_end_matches('/');
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
        || !url.path().starts_with(prefix)
    {
        return Err(EgressError::InvalidPath);
    }
    Ok(url)
}

/// A URL that [`join`] accepted is a valid URI; the error is for the impossible case and does
/// not echo the URL, which may carry a query-string credential.
fn to_uri(url: Url) -> Result<http::Uri, EgressError> {
    http::Uri::try_from(String::from(url)).map_err(|_| EgressError::InvalidPath)
}

/// `Retry-After` (seconds) when the upstream gives it, capped; otherwise exponential backoff
/// from 100 ms with jitter.
fn backoff(attempt: u32, headers: &HeaderMap) -> Duration {
    use rand::Rng;
    if let Some(seconds) = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Duration::from_secs(seconds).min(MAX_RETRY_AFTER);
    }
    let base = 100u64.saturating_mul(1 << attempt.min(6));
    Duration::from_millis(base + rand::thread_rng().gen_range(0..=base / 2))
}

async fn read_capped(
    mut incoming: Incoming,
    deadline: tokio::time::Instant,
    endpoint: &str,
) -> Result<Vec<u8>, EgressError> {
    let mut body = Vec::new();
    while let Some(chunk) = next_data(&mut incoming, deadline, endpoint).await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(EgressError::ResponseTooLarge(endpoint.to_owned()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_endpoint() {
        let base = Url::parse("http://127.0.0.1:9000/api/v1").unwrap();
        assert_eq!(
            join(&base, "/chat?x=1").unwrap().as_str(),
            "http://127.0.0.1:9000/api/v1/chat?x=1"
        );
        for bad in [
            "chat",
            "//evil.test/x",
            "/../../admin",
            "/x#frag",
            "/\\\\evil",
            "@evil.test/",
            "/%2e%2e/%2e%2e/admin",
            "/x/../../../admin",
            "/a?b#c",
        ] {
            assert!(join(&base, bad).is_err(), "{bad}");
        }
        // A query may name another server; the request still goes to the endpoint.
        assert_eq!(
            join(&base, "/chat?next=http://evil.test/")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9000/api/v1/chat?next=http://evil.test/"
        );
        assert_eq!(
            join(&base, "/x/../chat").unwrap().as_str(),
            "http://127.0.0.1:9000/api/v1/chat"
        );
        let root = Url::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            join(&root, "/v1/x").unwrap().as_str(),
            "http://127.0.0.1:9000/v1/x"
        );
    }

    fn endpoint_of(kind: EndpointKind) -> Endpoint {
        let base = "http://127.0.0.1:9000/api/v1";
        Endpoint {
            config: EndpointConfig {
                name: "e".into(),
                base_url: base.into(),
                region: RegionName::try_from("local").unwrap(),
                kind,
                connector: None,
                auth: AuthScheme::None {},
                timeout_ms: 1_000,
                max_retries: 0,
            },
            base: Url::parse(base).unwrap(),
            breaker: Mutex::new(Breaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN)),
            uris: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn only_model_endpoints_keep_checked_uris_and_bad_paths_stay_refused() {
        let model = endpoint_of(EndpointKind::Model);
        for _ in 0..2 {
            assert_eq!(
                model.uri("/chat/completions").unwrap(),
                "http://127.0.0.1:9000/api/v1/chat/completions"
            );
            assert!(model.uri("/../../admin").is_err());
        }
        assert_eq!(model.uris.lock().unwrap().len(), 1, "refusals are not kept");
        for i in 0..2 * MAX_CACHED_URIS {
            model.uri(&format!("/x/{i}")).unwrap();
        }
        assert_eq!(model.uris.lock().unwrap().len(), MAX_CACHED_URIS);
        assert_eq!(
            model.uri("/x/100").unwrap(),
            "http://127.0.0.1:9000/api/v1/x/100",
            "a path past the cap is still checked and answered"
        );

        let tool = endpoint_of(EndpointKind::Tool);
        tool.uri("/issues/1?q=tenant-data").unwrap();
        assert!(
            tool.uris.lock().unwrap().is_empty(),
            "a tenant's paths are not kept"
        );
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(backoff(1, &headers), Duration::from_secs(2));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(backoff(1, &headers), MAX_RETRY_AFTER);
        let none = HeaderMap::new();
        let first = backoff(1, &none);
        assert!(
            first >= Duration::from_millis(200) && first <= Duration::from_millis(300),
            "{first:?}"
        );
    }
}
