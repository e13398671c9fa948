//! The configuration model: what `bulkhead.toml`, `BULKHEAD_*` variables and flags describe.
//! Loading and merging happen in the binary; this module only defines and validates.

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use crate::{ConnectorName, RegionName};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Threads that serve HTTP, each a single-threaded runtime that serves its connections
    /// start to end (fewest hand-offs between threads). Unset: one per core. `0`: serve on the
    /// shared multi-threaded runtime instead, where an idle thread takes work from a busy one.
    pub http_threads: Option<usize>,
    /// Cores the serving threads run on, in turn (thread `i` on `http_cpus[i % len]`). Empty:
    /// not pinned (the cores the process started with, whatever `background_cpus` says). With
    /// cores named and `http_threads` unset, one serving thread per core named. Needs
    /// `background_cpus`, so that nothing else is left to follow a serving thread's core.
    pub http_cpus: Vec<usize>,
    /// Cores for everything but the serving threads: the shared runtime (the audit importer,
    /// usage flusher, sweepers, the acceptor), blocking threads (long computation), the
    /// database's threads and dedicated tenants' worker processes. Empty: not pinned.
    pub background_cpus: Vec<usize>,
    /// Where the embedded database and local key material live.
    pub data_dir: PathBuf,
    /// `sqlite://path` or `postgres://...`; empty means SQLite in `data_dir`.
    pub database: Option<String>,
    /// The platform admin token. When unset, one is generated at first start, printed once
    /// and stored hashed.
    pub admin_token: Option<SecretString>,
    /// The key-encryption key as base64 of 32 bytes (use `BULKHEAD_MASTER_KEY`). When unset,
    /// the key file in `vault.key_file` is used, created at first start.
    pub master_key: Option<SecretString>,
    /// Earlier master keys, still needed to unwrap data keys until `bulkhead keys rotate-kek`
    /// has re-wrapped them (use `BULKHEAD_PREVIOUS_MASTER_KEYS='["...","..."]'`).
    pub previous_master_keys: Vec<SecretString>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Regions this deployment serves; a tenant's home region must be one of them.
    pub regions: Vec<RegionName>,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub postgres: PostgresConfig,
    pub vault: VaultConfig,
    /// Outbound endpoints (model providers, tools, webhooks): the only places egress calls.
    pub endpoints: Vec<EndpointConfig>,
    /// Model aliases agents and the gateway may name, each served by a provider at an
    /// endpoint. The alias `scripted` is built in.
    pub models: Vec<ModelConfig>,
    /// Model aliases every tenant may use. Unset: all of `models`. A tenant may also use the
    /// aliases the control plane grants it (`PUT /admin/v1/tenants/{id}/models`).
    pub default_models: Option<Vec<String>>,
    /// Platform prompt snippets, included by any tenant's templates as `platform/<name>` and
    /// read-only to tenants.
    pub platform_prompts: std::collections::BTreeMap<String, String>,
    pub threads: ThreadsConfig,
    /// Embedders knowledge bases may use, by alias.
    pub embedders: Vec<EmbedderConfig>,
    pub knowledge: KnowledgeConfig,
    pub tools: ToolsConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    /// Publishing every audit event to NATS JetStream. Unset: the database chain only.
    pub audit_stream: Option<AuditStreamConfig>,
    pub alerts: AlertsConfig,
    pub audit: AuditConfig,
    pub telemetry: TelemetryConfig,
    /// Dedicated tenants' worker processes.
    pub workers: WorkersConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            http_threads: None,
            http_cpus: Vec::new(),
            background_cpus: Vec::new(),
            data_dir: PathBuf::from("./bulkhead-data"),
            database: None,
            admin_token: None,
            master_key: None,
            previous_master_keys: Vec::new(),
            max_body_bytes: 1024 * 1024,
            regions: vec![default_region()],
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            postgres: PostgresConfig::default(),
            vault: VaultConfig::default(),
            endpoints: Vec::new(),
            platform_prompts: std::collections::BTreeMap::new(),
            models: Vec::new(),
            default_models: None,
            threads: ThreadsConfig::default(),
            embedders: Vec::new(),
            knowledge: KnowledgeConfig::default(),
            tools: ToolsConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            audit_stream: None,
            alerts: AlertsConfig::default(),
            audit: AuditConfig::default(),
            telemetry: TelemetryConfig::default(),
            workers: WorkersConfig::default(),
        }
    }
}

/// `[telemetry]`: request spans exported to an OpenTelemetry collector (OTLP over HTTP with
/// JSON), each carrying its tenant, request id and status, in the caller's trace when it
/// sent a `traceparent`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, such as `http://127.0.0.1:4318`; spans go to
    /// `<url>/v1/traces`. Unset: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` on every span.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "bulkhead".to_owned(),
        }
    }
}

/// `[workers]`: the processes that run dedicated tenants' agent work, one per tenant on this
/// node, started by `bulkhead serve` on a tenant's first request and supervised by it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Most workers this node runs at once; a dedicated tenant's request beyond it is
    /// refused with `worker_capacity` (503) rather than run in the shared process.
    pub max_workers: usize,
    /// A worker with nothing in flight for this long is stopped; the next request starts
    /// it again. 0 keeps workers running.
    pub idle_seconds: u64,
    /// How often each worker is asked whether it is healthy, in milliseconds; one that does
    /// not answer within the same time is killed and restarted.
    pub health_ms: u64,
    /// How long a worker may take from spawn to ready before it counts as failed to start.
    pub start_timeout_ms: u64,
    /// How long a change of a tenant's tier waits for its runs in flight to finish.
    pub drain_seconds: u64,
    /// Each worker's address-space limit (RLIMIT_AS), in MiB. 0: none.
    pub memory_mib: u64,
    /// Each worker's open-file limit (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Sockets and working directories (default `<data_dir>/workers`).
    pub dir: Option<PathBuf>,
    /// The executable started as `<binary> worker` (default: the running binary).
    pub binary: Option<PathBuf>,
    /// Other limits for named tenants' workers (`[workers.tenants.acme] memory_mib = 4096`);
    /// what an entry leaves out comes from the values above.
    pub tenants: std::collections::BTreeMap<String, WorkerLimits>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkerLimits {
    pub memory_mib: Option<u64>,
    pub open_files: Option<u64>,
}

impl WorkersConfig {
    /// The limits of `tenant`'s worker: its own entry over the node's defaults.
    pub fn limits_for(&self, tenant: &str) -> (u64, u64) {
        let own = self.tenants.get(tenant).copied().unwrap_or_default();
        (
            own.memory_mib.unwrap_or(self.memory_mib),
            own.open_files.unwrap_or(self.open_files),
        )
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            max_workers: 64,
            idle_seconds: 600,
            health_ms: 5_000,
            start_timeout_ms: 60_000,
            drain_seconds: 30,
            memory_mib: 16 * 1024,
            open_files: 1024,
            dir: None,
            binary: None,
            tenants: std::collections::BTreeMap::new(),
        }
    }
}

/// `[audit]`: how the audit trail is written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// SQLite: `bulkhead serve` acknowledges the audit event of an outbound call once it is
    /// appended to an outbox file next to the database, the same durability as a SQLite
    /// commit, and imports it into the chain moments later (reads of the trail wait for
    /// it). `false`: the caller waits for the event's transaction. Ignored on PostgreSQL,
    /// whose commit is the stronger guarantee.
    pub outbox: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { outbox: true }
    }
}

/// `[alerts]`: a tenant whose share of failed requests (status 5xx) over the window passes
/// the threshold, with at least `min_requests` in the window, raises `alert.error_rate` in its
/// audit trail and at the webhook; `alert.resolved` follows when it drops back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// A fraction: 0.02 is 2%. 0 turns the alert off.
    pub error_rate_threshold: f64,
    pub window_seconds: u64,
    /// Below this many requests in the window a tenant is not judged (a few failures of a
    /// quiet tenant are no trend).
    pub min_requests: u64,
    /// How often tenants are judged, in milliseconds.
    pub check_ms: u64,
    /// An `[[endpoints]]` name (kind `webhook`) told of each alert and each resolution.
    pub webhook: Option<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            error_rate_threshold: 0.02,
            window_seconds: 300,
            min_requests: 100,
            check_ms: 30_000,
            webhook: None,
        }
    }
}

/// `[audit_stream]`: every audit event also goes to NATS JetStream, on the subject
/// `<subject_prefix>.<tenant id>` with message id `<tenant id>:<seq>`, at least once and in
/// each tenant's order, from the chain in the database (which is the outbox).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditStreamConfig {
    /// The NATS server, `nats://host:port`.
    pub url: String,
    /// The JetStream stream, created if missing, covering `<subject_prefix>.>`.
    pub stream: String,
    pub subject_prefix: String,
    /// How long JetStream remembers message ids to drop a republished event.
    pub duplicate_window_seconds: u64,
    /// How often the publisher looks for new events, in milliseconds.
    pub poll_ms: u64,
    /// Events published per tenant before the next tenant gets its turn.
    pub batch: u32,
}

impl Default for AuditStreamConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream: "BULKHEAD_AUDIT".to_owned(),
            subject_prefix: "bulkhead.audit".to_owned(),
            duplicate_window_seconds: 120,
            poll_ms: 200,
            batch: 256,
        }
    }
}

/// Prometheus metrics at `/metrics` (admin token).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Tenants whose id may appear as a `tenant` label; every other tenant is counted as
    /// `other`, so the number of series stays bounded however many tenants there are.
    pub tenant_labels: Vec<String>,
}

/// Per-tenant limits on the tenant plane: request rates, a daily token budget and how many
/// runs may go at once. Each tenant has its own bucket, budget and run slots, so one tenant's
/// flood is refused with 429 while the others go on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sustained requests per second per tenant; 0 turns the limiter off.
    pub requests_per_second: f64,
    /// Requests a tenant may send at once above the sustained rate.
    pub burst: u32,
    /// Model tokens (input and output) a tenant may use per UTC day, over the gateway and
    /// agent runs together; 0 means no budget. A run that reaches it mid-way fails with
    /// `budget_exhausted`; new requests get 429 until the next day.
    pub tokens_per_day: u64,
    /// Agent runs of one tenant in progress at once in this process; 0 means no cap.
    pub max_concurrent_runs: u32,
    /// CPU time one run may spend, in milliseconds, on either tier: its own work and its
    /// local model's generation, not its waits. A run over it fails with
    /// `cpu_budget_exceeded` (a local generation stops mid-answer). 0 means no budget.
    pub run_cpu_ms: u64,
    /// Other limits for named tenants (`[limits.tenants.acme] tokens_per_day = 50000`);
    /// what a tenant's entry leaves out comes from the defaults above.
    pub tenants: std::collections::BTreeMap<String, TenantLimits>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub tokens_per_day: Option<u64>,
    pub max_concurrent_runs: Option<u32>,
    pub run_cpu_ms: Option<u64>,
}

/// One tenant's limits, its own entry over the defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EffectiveLimits {
    pub requests_per_second: f64,
    pub burst: u32,
    pub tokens_per_day: u64,
    pub max_concurrent_runs: u32,
    pub run_cpu_ms: u64,
}

impl LimitsConfig {
    pub fn for_tenant(&self, tenant: &str) -> EffectiveLimits {
        let own = self.tenants.get(tenant).copied().unwrap_or_default();
        EffectiveLimits {
            requests_per_second: own.requests_per_second.unwrap_or(self.requests_per_second),
            burst: own.burst.unwrap_or(self.burst),
            tokens_per_day: own.tokens_per_day.unwrap_or(self.tokens_per_day),
            max_concurrent_runs: own.max_concurrent_runs.unwrap_or(self.max_concurrent_runs),
            run_cpu_ms: own.run_cpu_ms.unwrap_or(self.run_cpu_ms),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 1_000.0,
            burst: 2_000,
            tokens_per_day: 0,
            max_concurrent_runs: 0,
            run_cpu_ms: 0,
            tenants: std::collections::BTreeMap::new(),
        }
    }
}

/// Tools: the platform's policies and how approvals behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Cedar policies that apply to every tenant, against the schema at
    /// `GET /v1/policies/schema`. Unset: every call allowed, destructive tools need approval.
    pub platform_policies: Option<String>,
    /// A call waiting for approval longer than this is refused to the model.
    pub approval_ttl_seconds: u64,
    /// An `[[endpoints]]` name (kind `webhook`) told of every new pending approval.
    pub approval_webhook: Option<String>,
    /// How often expired approvals are swept and decided runs picked up, in milliseconds.
    pub approval_sweep_ms: u64,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            platform_policies: None,
            approval_ttl_seconds: 24 * 60 * 60,
            approval_webhook: None,
            approval_sweep_ms: 5_000,
        }
    }
}

/// Conversation memory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThreadsConfig {
    /// A thread untouched for this many days is deleted with its messages (checked at start
    /// and hourly). 0 keeps threads forever.
    pub retention_days: u32,
}

impl Default for ThreadsConfig {
    fn default() -> Self {
        Self { retention_days: 30 }
    }
}

/// Knowledge bases: chunking, search and the in-memory indexes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeConfig {
    /// The `[[embedders]]` alias a new knowledge base uses. A knowledge base keeps the
    /// embedder it was created with: its vectors only compare with that model's.
    pub default_embedder: String,
    /// Largest document text accepted, in bytes (UTF-8).
    pub max_document_bytes: usize,
    /// Most chunks one document may produce.
    pub max_chunks_per_document: usize,
    /// Most tokens in one chunk, overlap included.
    pub chunk_max_tokens: usize,
    /// Tokens repeated from the end of the previous chunk of the same section.
    pub chunk_overlap_tokens: usize,
    /// Up to this many chunks a knowledge base is searched exactly; above it an HNSW graph
    /// answers.
    pub exact_search_max_chunks: usize,
    /// Memory for the indexes of all knowledge bases on this node, in MiB. Least recently
    /// used indexes are dropped beyond it and loaded again from the database when needed.
    pub index_memory_mb: usize,
    /// Passages an agent with knowledge bases gets in its prompt's `context` for each run.
    pub context_passages: usize,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        Self {
            default_embedder: "local".into(),
            max_document_bytes: 512 * 1024,
            max_chunks_per_document: 2_000,
            chunk_max_tokens: 200,
            chunk_overlap_tokens: 32,
            exact_search_max_chunks: 20_000,
            index_memory_mb: 1024,
            context_passages: 4,
        }
    }
}

/// An embedding model: in-process (`local`) or an OpenAI-compatible `/embeddings` endpoint
/// reached through egress with the tenant's key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderConfig {
    pub alias: String,
    pub provider: EmbedderProvider,
    /// For `openai`: the name of an `[[endpoints]]` entry (its region applies).
    #[serde(default)]
    pub endpoint: String,
    /// For `openai`: the model name the provider expects; defaults to the alias.
    pub upstream_model: Option<String>,
    /// For `openai`: the vector length, sent as `dimensions` and checked on every answer.
    pub dimensions: Option<usize>,
    /// For `local`: the directory holding `config.json`, `tokenizer.json` and
    /// `model.safetensors` (from `scripts/fetch-models`).
    pub path: Option<PathBuf>,
}

impl EmbedderConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.provider {
            EmbedderProvider::Local if self.path.is_none() => Err(format!(
                "embedder {}: provider \"local\" needs `path` (the all-minilm-l6-v2 directory)",
                self.alias
            )),
            EmbedderProvider::Openai if self.endpoint.is_empty() || self.dimensions.is_none() => {
                Err(format!(
                    "embedder {}: provider \"openai\" needs `endpoint` and `dimensions`",
                    self.alias
                ))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderProvider {
    /// all-MiniLM-L6-v2 run in-process: documents never leave the node.
    Local,
    /// An OpenAI-compatible `/embeddings` endpoint.
    Openai,
}

pub fn default_region() -> RegionName {
    // PANIC SAFETY: "local" satisfies the naming rule; covered by a unit test below.
    #[allow(clippy::expect_used)]
    RegionName::try_from("local").expect("\"local\" is a valid region name")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// The platform's own JWT issuer, whose tokens name their tenant by claim.
    pub platform_issuer: Option<PlatformIssuerConfig>,
    /// How long an API-key lookup is remembered, in milliseconds (0: not at all). A key
    /// revoked or a tenant suspended by another process takes effect here up to this late.
    pub key_cache_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            leeway_seconds: 30,
            platform_issuer: None,
            key_cache_ms: 1_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformIssuerConfig {
    pub issuer: String,
    pub audience: String,
    /// Allowed algorithms, such as `["RS256", "EdDSA"]`. `HS256` needs `hs256_secret`.
    pub algorithms: Vec<String>,
    /// Path to a JWKS file with the issuer's public keys.
    pub jwks_path: Option<PathBuf>,
    /// Shared secret for HS256 tokens; prefer asymmetric keys.
    pub hs256_secret: Option<SecretString>,
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    #[serde(default = "default_true")]
    pub require_nbf: bool,
}

pub fn default_tenant_claim() -> String {
    "tenant_id".to_owned()
}

pub fn default_roles_claim() -> String {
    "roles".to_owned()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `bulkhead_server=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// The local key-encryption key file; default `<data_dir>/master.key` (mode 0600).
    pub key_file: Option<PathBuf>,
    /// How long a sealed credential read from the store is kept for the next use, in
    /// milliseconds (0: not at all). It is still opened on every use. A credential replaced
    /// or deleted by another process is seen here up to this late.
    pub credential_cache_ms: u64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            credential_cache_ms: 1_000,
        }
    }
}

/// A model alias: which provider wire format, at which endpoint, under which upstream name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub alias: String,
    pub provider: ProviderKind,
    /// The name of an `[[endpoints]]` entry (not for `local`).
    #[serde(default)]
    pub endpoint: String,
    /// The model name the provider expects; defaults to the alias.
    pub upstream_model: Option<String>,
    /// For `local`: the GGUF file (from `scripts/fetch-models`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// What the platform pays (or charges) per million input tokens, in US dollars; used to
    /// attribute cost to tenants and agents in usage reports. 0 when unset.
    #[serde(default)]
    pub input_usd_per_million: f64,
    /// Per million output tokens, in US dollars.
    #[serde(default)]
    pub output_usd_per_million: f64,
}

impl ModelConfig {
    /// The cost of `input` and `output` tokens at this model's prices, in US dollars.
    pub fn cost_usd(&self, input: i64, output: i64) -> f64 {
        (input as f64 * self.input_usd_per_million + output as f64 * self.output_usd_per_million)
            / 1_000_000.0
    }
}

impl ModelConfig {
    /// Checks that the fields the provider needs are there.
    pub fn validate(&self) -> Result<(), String> {
        match (self.provider, &self.path, self.endpoint.is_empty()) {
            (ProviderKind::Local, None, _) => Err(format!(
                "model {}: provider \"local\" needs `path` (the GGUF file)",
                self.alias
            )),
            (ProviderKind::Openai | ProviderKind::Anthropic, _, true) => Err(format!(
                "model {}: provider needs `endpoint` (an [[endpoints]] name)",
                self.alias
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI-compatible Chat Completions.
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// A small model run in-process on the CPU (offline; for demos and tests).
    Local,
}

/// One outbound endpoint. Tenants call it by `name`; egress adds the tenant's credential
/// for `connector` and refuses if `region` is not one the tenant's data may go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    /// Scheme, host, port and optional path prefix; calls append their path to it.
    pub base_url: String,
    pub region: RegionName,
    pub kind: EndpointKind,
    /// Whose credential to inject: the calling tenant's secret for this connector.
    pub connector: Option<ConnectorName>,
    #[serde(default)]
    pub auth: AuthScheme,
    /// Per attempt, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after the first attempt, for idempotent calls and for 429.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
}

impl Default for AuthScheme {
    fn default() -> Self {
        AuthScheme::Bearer {}
    }
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_max_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    Model,
    Embedding,
    Tool,
    Mcp,
    Webhook,
}

/// How the credential is presented to the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthScheme {
    /// `Authorization: Bearer <secret>`.
    ///
    /// The empty braces matter: serde ignores unknown keys beside the tag of a unit variant,
    /// and a stray `token = "..."` must be an error, not silently dropped.
    Bearer {},
    /// `<name>: <secret>`, such as `x-api-key`.
    Header { name: String },
    /// HTTP Basic with the credential's `username` field and the secret as password.
    Basic {},
    /// `?<param>=<secret>` on the URL.
    Query { param: String },
    /// No credential (a public endpoint).
    None {},
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_region_is_valid() {
        assert_eq!(default_region().as_str(), "local");
        assert_eq!(Config::default().regions, vec![default_region()]);
    }
}
