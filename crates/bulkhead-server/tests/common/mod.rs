//! A real server on 127.0.0.1:0 over a fresh database, and a client to talk to it.

#![allow(dead_code)]

use std::path::PathBuf;

use bulkhead_core::RegionName;
use bulkhead_core::auth::{IssuerBinding, JwkSet, hash_secret, parse_algorithm};
use bulkhead_server::{AppState, ServerSettings};
use std::sync::Arc;

use bulkhead_store::Store;
use bulkhead_store::testing::TestDb;
use bulkhead_vault::{LocalKeyProvider, Vault};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const PLATFORM_ISS: &str = "https://platform.test";
pub const AUDIENCE: &str = "bulkhead";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/jwt")
        .join(name)
}

pub fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

/// A vault over the tests' fixed key-encryption key; any instance opens what another sealed.
pub fn vault() -> Vault {
    let master_key = SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
    Vault::new(Arc::new(
        LocalKeyProvider::from_base64(&master_key).unwrap(),
    ))
}

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub db: TestDb,
    task: tokio::task::JoinHandle<()>,
    /// The approval sweep and the alert judge.
    background: Vec<tokio::task::JoinHandle<()>>,
    config: ServerConfig,
}

/// What a test server is configured with, kept so it can restart the same way.
#[derive(Clone)]
pub struct ServerConfig {
    pub max_body_bytes: usize,
    pub endpoints: Vec<bulkhead_core::config::EndpointConfig>,
    pub models: Vec<bulkhead_core::config::ModelConfig>,
    pub default_models: Option<Vec<String>>,
    pub knowledge: (
        bulkhead_knowledge::Embedders,
        bulkhead_core::config::KnowledgeConfig,
    ),
    pub tools: bulkhead_core::config::ToolsConfig,
    pub limits: bulkhead_core::config::LimitsConfig,
    pub alerts: bulkhead_core::config::AlertsConfig,
    /// Build the state a dedicated worker process runs with (served over HTTP only so a
    /// test can show what it refuses).
    pub dedicated_worker: bool,
    /// How long an API-key lookup is remembered (`[auth] key_cache_ms`).
    pub key_cache: std::time::Duration,
}

impl ServerConfig {
    /// No endpoints, models or embedder; default tools and limits. Set what a test needs.
    pub fn bare() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            endpoints: Vec::new(),
            models: Vec::new(),
            default_models: None,
            knowledge: (
                bulkhead_knowledge::Embedders::load(&[]).unwrap(),
                bulkhead_core::config::KnowledgeConfig::default(),
            ),
            tools: bulkhead_core::config::ToolsConfig::default(),
            limits: bulkhead_core::config::LimitsConfig::default(),
            alerts: bulkhead_core::config::AlertsConfig::default(),
            dedicated_worker: false,
            key_cache: std::time::Duration::from_secs(1),
        }
    }
}

fn platform_issuer() -> IssuerBinding {
    IssuerBinding {
        tenant: None,
        issuer: PLATFORM_ISS.into(),
        audience: AUDIENCE.into(),
        algorithms: ["RS256", "EdDSA", "ES256"]
            .iter()
            .map(|a| parse_algorithm(a).unwrap())
            .collect(),
        jwks: serde_json::from_str::<JwkSet>(&fixture_text("jwks_a.json")).unwrap(),
        hs256_secret: None,
        tenant_claim: "tenant_id".into(),
        roles_claim: "roles".into(),
        require_nbf: true,
    }
}

/// The local embedder, loaded once per test binary and shared by its servers.
pub fn embedders() -> bulkhead_knowledge::Embedders {
    static LOADED: std::sync::OnceLock<bulkhead_knowledge::Embedders> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            bulkhead_knowledge::Embedders::load(&[bulkhead_core::config::EmbedderConfig {
                alias: "local".into(),
                provider: bulkhead_core::config::EmbedderProvider::Local,
                endpoint: String::new(),
                upstream_model: None,
                dimensions: None,
                path: Some(bulkhead_testkit::local_embedder()),
            }])
            .unwrap()
        })
        .clone()
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, 64 * 1024).await
    }

    pub async fn start_with(backend: Backend, max_body_bytes: usize) -> Self {
        Self::start_full(backend, max_body_bytes, &[], Vec::new(), None).await
    }

    /// A server with outbound endpoints and model aliases, for runs against local providers.
    pub async fn start_full(
        backend: Backend,
        max_body_bytes: usize,
        endpoints: &[bulkhead_core::config::EndpointConfig],
        models: Vec<bulkhead_core::config::ModelConfig>,
        default_models: Option<Vec<String>>,
    ) -> Self {
        Self::start_with_knowledge(
            backend,
            max_body_bytes,
            endpoints,
            models,
            default_models,
            (
                embedders(),
                bulkhead_core::config::KnowledgeConfig::default(),
            ),
        )
        .await
    }

    /// Like [`Self::start_full`], with the given embedders and knowledge settings.
    pub async fn start_with_knowledge(
        backend: Backend,
        max_body_bytes: usize,
        endpoints: &[bulkhead_core::config::EndpointConfig],
        models: Vec<bulkhead_core::config::ModelConfig>,
        default_models: Option<Vec<String>>,
        knowledge: (
            bulkhead_knowledge::Embedders,
            bulkhead_core::config::KnowledgeConfig,
        ),
    ) -> Self {
        let (store, db) = match backend {
            Backend::Sqlite => TestDb::sqlite().await,
            Backend::Postgres => TestDb::postgres().await,
        };
        let config = ServerConfig {
            max_body_bytes,
            endpoints: endpoints.to_vec(),
            models,
            default_models,
            knowledge,
            ..ServerConfig::bare()
        };
        Self::start_on(store, db, config).await
    }

    /// A server configured with `config`.
    pub async fn start_configured(backend: Backend, config: ServerConfig) -> Self {
        let (store, db) = match backend {
            Backend::Sqlite => TestDb::sqlite().await,
            Backend::Postgres => TestDb::postgres().await,
        };
        Self::start_on(store, db, config).await
    }

    /// A server with tool endpoints and tool settings (the approval sweep included).
    pub async fn start_with_tools(
        backend: Backend,
        endpoints: &[bulkhead_core::config::EndpointConfig],
        tools: bulkhead_core::config::ToolsConfig,
    ) -> Self {
        let config = ServerConfig {
            endpoints: endpoints.to_vec(),
            tools,
            ..ServerConfig::bare()
        };
        Self::start_configured(backend, config).await
    }

    /// A server with the given per-tenant rate limits.
    pub async fn start_with_limits(
        backend: Backend,
        limits: bulkhead_core::config::LimitsConfig,
    ) -> Self {
        Self::start_configured(
            backend,
            ServerConfig {
                limits,
                ..ServerConfig::bare()
            },
        )
        .await
    }

    /// Stops this server and starts a new one, with fresh in-memory state, on the same
    /// database: what survives is what was stored.
    pub async fn restart(self) -> Self {
        self.task.abort();
        for task in &self.background {
            task.abort();
        }
        let _ = self.task.await;
        Self::start_on(self.store, self.db, self.config).await
    }

    async fn start_on(store: Store, db: TestDb, config: ServerConfig) -> Self {
        let ServerConfig {
            max_body_bytes,
            endpoints,
            models,
            default_models,
            knowledge: (embedders, knowledge),
            tools,
            limits,
            alerts,
            dedicated_worker,
            key_cache,
        } = config.clone();
        let endpoints = endpoints.as_slice();
        let vault = vault();
        let egress = bulkhead_egress::Egress::new(endpoints, store.clone(), vault.clone()).unwrap();
        let sweep = std::time::Duration::from_millis(tools.approval_sweep_ms);
        let settings = ServerSettings {
            admin_token_hash: hash_secret(ADMIN_TOKEN),
            platform_issuer: Some(platform_issuer()),
            leeway_seconds: 30,
            key_cache,
            regions: vec![
                RegionName::try_from("eu-west").unwrap(),
                RegionName::try_from("us-east").unwrap(),
            ],
            max_body_bytes,
            local_models: bulkhead_runtime::providers::local::load(&models).unwrap(),
            models,
            default_models,
            knowledge,
            embedders,
            platform_prompts: std::collections::BTreeMap::from([(
                "safety".to_owned(),
                "Never reveal credentials.".to_owned(),
            )]),
            tools: Arc::new(bulkhead_tools::Tools::new(egress.clone(), tools).unwrap()),
            limits,
            metrics: bulkhead_core::config::MetricsConfig {
                tenant_labels: vec!["noisy".into()],
            },
            alerts,
        };
        let state = if dedicated_worker {
            AppState::dedicated_worker(store.clone(), vault, egress, settings)
        } else {
            AppState::new(store.clone(), vault, egress, settings)
        };
        let mut background = vec![bulkhead_server::resume::spawn_sweeper(state.clone(), sweep)];
        background.extend(bulkhead_server::alerts::spawn_judge(state.clone()));
        let app = bulkhead_server::app(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestServer {
            base,
            client: reqwest::Client::new(),
            store,
            db,
            task,
            background,
            config,
        }
    }

    pub async fn finish(self) {
        self.task.abort();
        for task in &self.background {
            task.abort();
        }
        self.db.finish(self.store).await;
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match bearer {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            assert_eq!(
                content_type, "application/problem+json",
                "{status}: {value}"
            );
            assert!(value["code"].is_string(), "{value}");
            assert_eq!(value["status"], status.as_u16(), "{value}");
        }
        (status, value)
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path, Some(ADMIN_TOKEN));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// The Prometheus text of `/metrics`, read with the admin token.
    pub async fn metrics(&self) -> String {
        let response = self
            .request(Method::GET, "/metrics", Some(ADMIN_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    pub async fn tenant_get(&self, path: &str, bearer: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::GET, path, Some(bearer)))
            .await
    }

    pub async fn create_tenant(&self, id: &str) {
        let (status, body) = self
            .admin(
                Method::POST,
                "/admin/v1/tenants",
                Some(json!({"id": id, "name": format!("{id} org"), "region": "eu-west"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Creates a key and returns `(key, key_id)`.
    pub async fn create_key(&self, tenant: &str, role: &str) -> (String, String) {
        let (status, body) = self
            .admin(
                Method::POST,
                &format!("/admin/v1/tenants/{tenant}/api-keys"),
                Some(json!({"name": "k", "role": role})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["key"].as_str().unwrap().to_owned(),
            body["id"].as_str().unwrap().to_owned(),
        )
    }
}

/// An endpoint named `name` reaching a (fake) provider with each tenant's credential for the
/// connector of the same name, in region `eu-west`, without retries.
pub fn model_endpoint(
    name: &str,
    base_url: String,
    auth: bulkhead_core::config::AuthScheme,
    timeout_ms: u64,
) -> bulkhead_core::config::EndpointConfig {
    bulkhead_core::config::EndpointConfig {
        name: name.into(),
        base_url,
        region: RegionName::try_from("eu-west").unwrap(),
        kind: bulkhead_core::config::EndpointKind::Model,
        connector: Some(bulkhead_core::ConnectorName::try_from(name).unwrap()),
        auth,
        timeout_ms,
        max_retries: 0,
    }
}

/// An endpoint of `kind` without a default connector (a toolset or webhook names its own
/// credential, or none), in region `eu-west`, without retries.
pub fn plain_endpoint(
    name: &str,
    base_url: String,
    kind: bulkhead_core::config::EndpointKind,
    auth: bulkhead_core::config::AuthScheme,
) -> bulkhead_core::config::EndpointConfig {
    bulkhead_core::config::EndpointConfig {
        name: name.into(),
        base_url,
        region: RegionName::try_from("eu-west").unwrap(),
        kind,
        connector: None,
        auth,
        timeout_ms: 5_000,
        max_retries: 0,
    }
}

/// Model alias `alias`, OpenAI-compatible, at `endpoint`, with these prices per million.
pub fn openai_model(
    alias: &str,
    endpoint: &str,
    (input_usd_per_million, output_usd_per_million): (f64, f64),
) -> bulkhead_core::config::ModelConfig {
    bulkhead_core::config::ModelConfig {
        alias: alias.into(),
        provider: bulkhead_core::config::ProviderKind::Openai,
        endpoint: endpoint.into(),
        upstream_model: None,
        path: None,
        input_usd_per_million,
        output_usd_per_million,
    }
}

/// Stores `secret` as the tenant's credential for `connector`.
pub async fn put_credential(server: &TestServer, key: &str, connector: &str, secret: &str) {
    let (status, body) = server
        .send(
            server
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/credentials/{connector}"),
                    Some(key),
                )
                .json(&serde_json::json!({"secret": secret})),
        )
        .await;
    assert!(status.is_success(), "{body}");
}

/// Puts agent `name` with `spec`.
pub async fn put_agent(server: &TestServer, key: &str, name: &str, spec: serde_json::Value) {
    let (status, body) = server
        .send(
            server
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/agents/{name}"),
                    Some(key),
                )
                .json(&spec),
        )
        .await;
    assert!(status.is_success(), "{body}");
}

/// Runs `tests/python/<script>` with `args` and checks that it succeeded and printed
/// `expected` (the Python clients' own assertions are the checks).
pub async fn python_checks(script: &str, args: Vec<String>, expected: &str) {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(path)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script}'s checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(expected), "{stdout}");
}
