//! Authentication at the HTTP edge: turns the `Authorization` header into a
//! [`TenantContext`] (tenant plane) or an admin session (control plane).
//!
//! **Architecture Invariant:** the tenant comes from the credential only. No header, path
//! segment or body field selects it; `X-Tenant-ID` and the like are ignored.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use bulkhead_core::auth::{
    self, AuthError, Credential, IssuerBinding, JwkSet, authenticate_api_key, authenticate_jwt,
    parse_algorithms, peek_issuer, secret_matches, verify_jwt,
};
use bulkhead_core::ttl_cache::{Lookup, Ticket};
use bulkhead_core::{ApiKeyId, RequestId, Role, TenantContext, TenantId};
use bulkhead_store::IssuerRecord;
use secrecy::SecretString;
use tracing::Instrument;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::BodyLimit;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// W3C Trace Context: a caller's trace is joined, so our spans and audit events carry its id.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Gives every request an id (the caller's `x-request-id` if sane) and a span that the
/// authentication extractors fill with `tenant.id`, echoes the id in the response, and counts
/// the request in the metrics (one layer for both: each `from_fn` layer costs every request a
/// boxed future and a clone of the service inside it).
pub async fn request_context(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let (request_id, traceparent) = {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let traceparent = header(TRACEPARENT_HEADER).map(str::to_owned);
        let request_id = RequestId::from_header_or_generate(header(REQUEST_ID_HEADER))
            .within_trace(traceparent.as_deref());
        (request_id, traceparent)
    };
    req.extensions_mut()
        .insert(BodyLimit(state.max_body_bytes()));
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        tenant.id = tracing::field::Empty,
        principal = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let request_id = crate::trace_context::link(&span, request_id, traceparent.as_deref());
    span.record("trace_id", request_id.trace_id());
    req.extensions_mut().insert(request_id.clone());
    let tenant = TenantSlot::default();
    req.extensions_mut().insert(tenant.clone());
    let mut response = next.run(req).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    crate::metrics::record_request(
        crate::metrics::RequestLabels {
            route: route.as_ref().map_or("unmatched", MatchedPath::as_str),
            method: &method,
            status: response.status(),
        },
        started.elapsed(),
    );
    if let Some(tenant) = tenant.0.get() {
        state
            .error_rates()
            .record(tenant, response.status().is_server_error());
        crate::metrics::record_tenant_request(state.metric_tenant(tenant), response.status());
    }
    span.in_scope(|| tracing::info!("request finished"));
    if let Ok(value) = HeaderValue::from_str(request_id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Filled with the tenant once a request authenticates, so the request's middleware can
/// count the outcome toward that tenant's error rate.
#[derive(Clone, Default)]
pub(crate) struct TenantSlot(Arc<OnceLock<TenantId>>);

pub(crate) fn request_id(parts: &Parts) -> RequestId {
    parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate)
}

fn authorization(parts: &Parts) -> Result<Option<&str>, ApiError> {
    match parts.headers.get(header::AUTHORIZATION) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::Unauthenticated),
    }
}

/// Counts a refusal of `tenant`'s request by the rate limiter, and the answer to give.
fn rate_limited(
    state: &AppState,
    tenant: &TenantId,
    retry_after: u64,
    stage: &'static str,
) -> ApiError {
    tracing::debug!(tenant.id = %tenant, stage, "rate limited");
    metrics::counter!("bulkhead_rate_limited_total", "tenant" => state.metric_tenant(tenant).to_owned())
        .increment(1);
    ApiError::RateLimited { retry_after }
}

/// An authenticated tenant-plane request.
pub struct Authenticated(pub TenantContext);

/// A request authenticated before it reached its handler: by the control plane's forwarding
/// middleware (which then served it in this process), or, in a dedicated worker, by the
/// control plane that forwarded it. Only this server's own code can set an extension; a
/// client cannot.
#[derive(Clone)]
pub(crate) struct PreAuthenticated(pub TenantContext);

/// A refusal from authentication done before the handler, left for the handler's own
/// extractor to answer, so a route with its own error shape (the gateway's) keeps it.
#[derive(Clone, Default)]
pub(crate) struct EarlyRefusal(Arc<std::sync::Mutex<Option<ApiError>>>);

impl EarlyRefusal {
    pub(crate) fn new(error: ApiError) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(error))))
    }

    fn take(&self) -> Option<ApiError> {
        self.0.lock().ok()?.take()
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(PreAuthenticated(ctx)) = parts.extensions.get::<PreAuthenticated>() {
            return Ok(Authenticated(ctx.clone()));
        }
        if let Some(error) = parts
            .extensions
            .get::<EarlyRefusal>()
            .and_then(EarlyRefusal::take)
        {
            return Err(error);
        }
        // A worker takes no credential: all it serves was authenticated by the control plane.
        if state.is_dedicated_worker() {
            return Err(ApiError::Unauthenticated);
        }
        let header = authorization(parts)?;
        // A key seen before names its tenant without a database read, so once a flooding
        // tenant's bucket is empty its excess is refused before it costs a lookup. This only
        // peeks (anyone may present a key id); the token is taken after authentication.
        let key_id = match auth::parse_authorization(header) {
            Ok(Credential::ApiKey(presented)) => Some(presented.id().clone()),
            _ => None,
        };
        if let Some(tenant) = key_id
            .as_ref()
            .and_then(|id| state.limiter().tenant_of_key(id))
            && let Err(retry_after) = state.limiter().peek(&tenant)
        {
            return Err(rate_limited(
                state,
                &tenant,
                retry_after,
                "before authentication",
            ));
        }
        match authenticate(state, header, request_id(parts)).await {
            Ok((ctx, _)) => {
                let span = tracing::Span::current();
                span.record("tenant.id", ctx.tenant_id().as_str());
                if let Some(slot) = parts.extensions.get::<TenantSlot>() {
                    let _ = slot.0.set(ctx.tenant_id().clone());
                }
                span.record("principal", ctx.principal().to_string());
                if let Err(retry_after) = state.limiter().check(ctx.tenant_id()) {
                    return Err(rate_limited(
                        state,
                        ctx.tenant_id(),
                        retry_after,
                        "after authentication",
                    ));
                }
                if let Some(id) = key_id {
                    state.limiter().remember_key(id, ctx.tenant_id().clone());
                }
                Ok(Authenticated(ctx))
            }
            Err(Refusal::Auth(reason)) => {
                tracing::info!(reason = %reason, "credential refused");
                Err(ApiError::Unauthenticated)
            }
            Err(Refusal::Api(error)) => Err(error),
        }
    }
}

pub(crate) enum Refusal {
    Auth(AuthError),
    Api(ApiError),
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        Refusal::Auth(error)
    }
}

impl From<bulkhead_store::StoreError> for Refusal {
    fn from(error: bulkhead_store::StoreError) -> Self {
        Refusal::Api(error.into())
    }
}

/// Reads a cached API-key lookup again in a task of its own, so that the request that found
/// the entry past half its life is answered with it rather than wait for the database: on a
/// serving thread that read was a hand-off to the connection's thread and back, a tail
/// request at concurrency 1 (ARCHITECTURE.md, 2026-12-06 eighth). A read that fails leaves the
/// entry to expire; the next request then reads it itself and meets the error.
fn renew_key_lookup(state: AppState, id: ApiKeyId, ticket: Ticket) {
    tokio::spawn(async move {
        if let Err(error) = read_key_lookup(&state, &id, ticket).await {
            tracing::warn!(%error, "renewing a cached API-key lookup failed; it will expire");
        }
    });
}

/// Reads API key `id` for authentication and remembers the answer, unless a change forgot
/// keys since `ticket` was taken.
async fn read_key_lookup(
    state: &AppState,
    id: &ApiKeyId,
    ticket: Ticket,
) -> Result<crate::key_cache::KeyLookup, bulkhead_store::StoreError> {
    let found = state
        .store()
        .admin()
        .api_key_for_auth(id)
        .await?
        .map(Arc::new);
    state.key_cache().put(ticket, id.clone(), found.clone());
    Ok(found)
}

/// Verifies a tenant credential; with a JWT, also answers when it expires (Unix seconds).
pub(crate) async fn authenticate(
    state: &AppState,
    header: Option<&str>,
    request_id: RequestId,
) -> Result<(TenantContext, Option<i64>), Refusal> {
    let admin = state.store().admin();
    match auth::parse_authorization(header)? {
        Credential::ApiKey(presented) => {
            let found = match state.key_cache().lookup(presented.id()) {
                Lookup::Hit(found) => found,
                Lookup::Renew(found, ticket) => {
                    renew_key_lookup(state.clone(), presented.id().clone(), ticket);
                    found
                }
                Lookup::Miss(ticket) => read_key_lookup(state, presented.id(), ticket).await?,
            };
            let (stored, tenant) = found.as_deref().map(|(s, t)| (s, t)).unzip();
            let ctx = authenticate_api_key(&presented, stored, tenant, request_id)?;
            Ok((ctx, None))
        }
        Credential::Jwt(token) => {
            let iss = peek_issuer(&token)?;
            let mut candidates: Vec<IssuerBinding> = state
                .platform_issuer()
                .filter(|p| p.issuer == iss)
                .cloned()
                .into_iter()
                .collect();
            for record in admin.issuers_for_auth(&iss).await? {
                match binding_from_record(&record).await {
                    Ok(binding) => candidates.push(binding),
                    Err(problem) => tracing::warn!(
                        tenant.id = %record.tenant_id,
                        issuer = %record.id,
                        problem = %problem,
                        "skipping an unusable issuer binding"
                    ),
                }
            }
            let verified = verify_jwt(&token, &candidates, state.leeway_seconds())?;
            let tenant = admin.get_tenant(verified.tenant_id()).await?;
            let expires_at = verified.expires_at();
            Ok((
                authenticate_jwt(verified, tenant.as_ref(), request_id)?,
                Some(expires_at),
            ))
        }
    }
}

/// Builds the verifier's view of a stored issuer binding, reading its JWKS file if it has one.
pub async fn binding_from_record(record: &IssuerRecord) -> Result<IssuerBinding, String> {
    let jwks_text = match (&record.jwks, &record.jwks_path) {
        (Some(inline), _) => inline.clone(),
        (None, Some(path)) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read JWKS file {path}: {e}"))?,
        (None, None) => return Err("no keys".into()),
    };
    let jwks = parse_jwks(&jwks_text)?;
    let algorithms = parse_algorithms(&record.algorithms)?;
    Ok(IssuerBinding {
        tenant: Some(record.tenant_id.clone()),
        issuer: record.issuer.clone(),
        audience: record.audience.clone(),
        algorithms,
        jwks,
        hs256_secret: None,
        tenant_claim: record.tenant_claim.clone(),
        roles_claim: record.roles_claim.clone(),
        require_nbf: record.require_nbf,
    })
}

pub fn parse_jwks(text: &str) -> Result<JwkSet, String> {
    let jwks: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    if jwks.keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    Ok(jwks)
}

/// A control-plane request carrying the admin token.
pub struct Admin {
    pub request_id: RequestId,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = authorization(parts)?.ok_or(ApiError::Unauthenticated)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthenticated)?;
        if !secret_matches(token, state.admin_token_hash()) {
            tracing::info!("admin token refused");
            return Err(ApiError::Unauthenticated);
        }
        tracing::Span::current().record("principal", "admin");
        Ok(Admin {
            request_id: request_id(parts),
        })
    }
}

/// Refuses with 403 unless the context holds one of `roles`.
pub fn require_role(ctx: &TenantContext, roles: &'static [Role]) -> Result<(), ApiError> {
    if ctx.has_any_role(roles) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(roles))
    }
}

/// The platform issuer from configuration, with its keys loaded.
pub struct PlatformIssuer {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    pub jwks: Option<JwkSet>,
    pub hs256_secret: Option<SecretString>,
    pub tenant_claim: String,
    pub roles_claim: String,
    pub require_nbf: bool,
}

impl PlatformIssuer {
    pub fn into_binding(self) -> Result<IssuerBinding, String> {
        let algorithms = parse_algorithms(&self.algorithms)?;
        if algorithms.is_empty() {
            return Err("the platform issuer allows no algorithm".into());
        }
        let wants_hs = algorithms.contains(&auth::Algorithm::HS256);
        if wants_hs && self.hs256_secret.is_none() {
            return Err("HS256 is allowed but no hs256_secret is set".into());
        }
        let wants_keys = algorithms.iter().any(|a| *a != auth::Algorithm::HS256);
        if wants_keys && self.jwks.is_none() {
            return Err("an asymmetric algorithm is allowed but no jwks_path is set".into());
        }
        Ok(IssuerBinding {
            tenant: None,
            issuer: self.issuer,
            audience: self.audience,
            algorithms,
            jwks: self.jwks.unwrap_or(JwkSet { keys: Vec::new() }),
            hs256_secret: self.hs256_secret,
            tenant_claim: self.tenant_claim,
            roles_claim: self.roles_claim,
            require_nbf: self.require_nbf,
        })
    }
}
