//! Bulkhead's HTTP API: the control plane (`/admin/v1`), the tenant plane (`/v1`), operations
//! endpoints and the OpenAPI document, all answering errors as problem+json.
//!
//! **Architecture Invariant:** handlers never see a tenant id they could choose: tenant-plane
//! handlers take [`authn::Authenticated`] and reach data through `store.tenant(&ctx)`.

pub mod alerts;
pub mod authn;
pub mod error;
pub mod extract;
mod key_cache;
pub mod limits;
mod metrics;
mod openapi;
pub mod resume;
mod routes;
mod trace_context;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use bulkhead_core::RegionName;
use bulkhead_core::auth::IssuerBinding;
use bulkhead_egress::Egress;
use bulkhead_runtime::runs::Runner;
use bulkhead_store::Store;
use bulkhead_vault::Vault;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

pub use crate::openapi::openapi_document;

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    store: Store,
    vault: Vault,
    egress: Egress,
    runner: Runner,
    limiter: limits::RateLimiter,
    error_rates: alerts::ErrorRates,
    metric_tenants: Vec<String>,
    admin_token_hash: String,
    platform_issuer: Option<IssuerBinding>,
    leeway_seconds: u64,
    regions: Vec<RegionName>,
    max_body_bytes: usize,
    key_cache: key_cache::KeyCache,
    /// Dedicated tenants' workers; unset in a worker itself and in servers without them.
    workers: std::sync::OnceLock<worker::Workers>,
    /// Set in a dedicated worker: it takes no credentials, only forwarded contexts.
    dedicated_worker: bool,
    /// Per tenant: agent work holds it shared while it runs; a change of tier holds it
    /// exclusively, so it waits for the work in flight and new work waits for it. It holds
    /// the tier the last change on this process set, newer than a context authenticated
    /// before that change.
    tier_gates: std::sync::Mutex<std::collections::HashMap<bulkhead_core::TenantId, TierGate>>,
}

/// What the server needs besides the store, already validated by the caller.
pub struct ServerSettings {
    /// SHA-256 (hex) of the admin token.
    pub admin_token_hash: String,
    pub platform_issuer: Option<IssuerBinding>,
    pub leeway_seconds: u64,
    /// How long an API-key lookup is remembered (`key_cache`).
    pub key_cache: std::time::Duration,
    pub regions: Vec<RegionName>,
    pub max_body_bytes: usize,
    /// Platform snippets, already checked to parse.
    pub platform_prompts: BTreeMap<String, String>,
    /// Model aliases agents may name.
    pub models: Vec<bulkhead_core::config::ModelConfig>,
    /// Aliases every tenant may use; `None` means all of `models`.
    pub default_models: Option<Vec<String>>,
    /// The `local` models of `models`, loaded.
    pub local_models: bulkhead_runtime::providers::local::LocalModels,
    pub knowledge: bulkhead_core::config::KnowledgeConfig,
    /// The `[[embedders]]`, loaded.
    pub embedders: bulkhead_knowledge::Embedders,
    /// Toolsets, policies and tool calls (built on the same egress).
    pub tools: Arc<bulkhead_tools::Tools>,
    /// Per-tenant request rates.
    pub limits: bulkhead_core::config::LimitsConfig,
    /// Which tenants may appear as metric labels.
    pub metrics: bulkhead_core::config::MetricsConfig,
    /// The per-tenant error-rate alert.
    pub alerts: bulkhead_core::config::AlertsConfig,
}

impl AppState {
    pub fn new(store: Store, vault: Vault, egress: Egress, settings: ServerSettings) -> Self {
        Self::build(
            store,
            vault,
            egress,
            settings,
            bulkhead_core::Isolation::Shared,
        )
    }

    /// The state of a dedicated worker process: the same runtime, recording its runs as
    /// executed by a dedicated process.
    pub fn dedicated_worker(
        store: Store,
        vault: Vault,
        egress: Egress,
        settings: ServerSettings,
    ) -> Self {
        Self::build(
            store,
            vault,
            egress,
            settings,
            bulkhead_core::Isolation::Dedicated,
        )
    }

    fn build(
        store: Store,
        vault: Vault,
        egress: Egress,
        settings: ServerSettings,
        isolation: bulkhead_core::Isolation,
    ) -> Self {
        Self {
            inner: Arc::new(StateInner {
                store,
                vault,
                runner: Runner::new(
                    egress.clone(),
                    settings.models,
                    settings.default_models,
                    settings.platform_prompts,
                    settings.local_models,
                    Arc::new(bulkhead_knowledge::Knowledge::new(
                        settings.knowledge,
                        settings.embedders,
                        egress.clone(),
                    )),
                    settings.tools,
                )
                .with_limits(settings.limits.clone())
                .serving(isolation),
                egress,
                limiter: limits::RateLimiter::new(&settings.limits),
                error_rates: alerts::ErrorRates::new(settings.alerts),
                metric_tenants: settings.metrics.tenant_labels,
                admin_token_hash: settings.admin_token_hash,
                platform_issuer: settings.platform_issuer,
                leeway_seconds: settings.leeway_seconds,
                regions: settings.regions,
                max_body_bytes: settings.max_body_bytes,
                key_cache: key_cache::KeyCache::new(settings.key_cache),
                workers: std::sync::OnceLock::new(),
                dedicated_worker: isolation == bulkhead_core::Isolation::Dedicated,
                tier_gates: std::sync::Mutex::default(),
            }),
        }
    }

    /// Gives this server its dedicated workers; once, before serving.
    pub fn install_workers(&self, workers: worker::Workers) {
        if self.inner.workers.set(workers).is_err() {
            tracing::warn!("dedicated workers were already installed");
        }
    }

    pub fn workers(&self) -> Option<&worker::Workers> {
        self.inner.workers.get()
    }

    /// Whether this process is one tenant's dedicated worker (it then serves only what the
    /// control plane forwards to it).
    pub(crate) fn is_dedicated_worker(&self) -> bool {
        self.inner.dedicated_worker
    }

    /// The gate a tenant's agent work and its changes of tier meet at.
    pub(crate) fn tier_gate(&self, tenant: &bulkhead_core::TenantId) -> TierGate {
        let mut gates = match self.inner.tier_gates.lock() {
            Ok(gates) => gates,
            Err(poisoned) => poisoned.into_inner(),
        };
        gates.entry(tenant.clone()).or_default().clone()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn vault(&self) -> &Vault {
        &self.inner.vault
    }

    /// The outbound path, for the features that call model providers and tools.
    pub fn egress(&self) -> &Egress {
        &self.inner.egress
    }

    pub(crate) fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    /// Knowledge bases: ingest and search, shared with agent runs.
    pub fn knowledge(&self) -> &bulkhead_knowledge::Knowledge {
        self.inner.runner.knowledge()
    }

    pub(crate) fn admin_token_hash(&self) -> &str {
        &self.inner.admin_token_hash
    }

    pub(crate) fn platform_issuer(&self) -> Option<&IssuerBinding> {
        self.inner.platform_issuer.as_ref()
    }

    pub(crate) fn key_cache(&self) -> &key_cache::KeyCache {
        &self.inner.key_cache
    }

    pub(crate) fn leeway_seconds(&self) -> u64 {
        self.inner.leeway_seconds
    }

    pub(crate) fn regions(&self) -> &[RegionName] {
        &self.inner.regions
    }

    /// The `tenant` label for metrics about `tenant` (allowlisted, or `other`).
    pub(crate) fn metric_tenant(&self, tenant: &bulkhead_core::TenantId) -> &str {
        metrics::tenant_label(&self.inner.metric_tenants, tenant)
    }

    pub(crate) fn limiter(&self) -> &limits::RateLimiter {
        &self.inner.limiter
    }

    /// A context for work this process does on its own for `tenant` (resuming a run,
    /// recording an alert); `None` when the tenant is gone or not active.
    pub(crate) async fn runtime_context(
        &self,
        tenant: &bulkhead_core::TenantId,
    ) -> Result<Option<bulkhead_core::TenantContext>, bulkhead_store::StoreError> {
        let record = self.store().admin().get_tenant(tenant).await?;
        Ok(record.and_then(|t| bulkhead_core::auth::runtime_context(&t).ok()))
    }

    /// Each tenant's recent error rate, for its alert.
    pub fn error_rates(&self) -> &alerts::ErrorRates {
        &self.inner.error_rates
    }

    pub(crate) fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }
}

/// See `StateInner::tier_gates`.
pub(crate) type TierGate = Arc<tokio::sync::RwLock<Option<bulkhead_core::Isolation>>>;

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    // Installed before the first request, so nothing counted is lost.
    metrics::handle();
    let (router, _) = routes::router().split_for_parts();
    // One `layer` call for the whole stack, outermost first. `Router::layer` boxes every
    // route once per call, and a request clones its route's boxes at every level a
    // middleware clones its inner service: four calls made that about twenty allocations a
    // request, one call makes it a handful.
    let layers = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(routes::ops::panic_response))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authn::request_context,
        ))
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::forwarded::agent_work,
        ));
    router
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(layers)
        .with_state(state)
}
