use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use bulkhead_core::auth::{generate_admin_token, hash_secret};
use bulkhead_core::config::Config;
use bulkhead_server::authn::{PlatformIssuer, parse_jwks};
use bulkhead_server::{AppState, ServerSettings};
use bulkhead_store::Store;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::placement::Placement;
use crate::{GlobalArgs, settings};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080; port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

pub async fn run(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<()> {
    let mut config = settings::load(global)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let placement = Placement::from_config(&config)?;
    let telemetry = settings::init_logging(&config)?;
    let store = settings::open_store(&config, config.audit.outbox).await?;
    let (admin_token_hash, generated) = admin_token_hash(&config, &store).await?;
    if let Some(token) = generated {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Generated the platform admin token. It is shown only this once:"
        )?;
        writeln!(out, "\n    {}\n", token.expose_secret())?;
        writeln!(
            out,
            "Keep it safe; set BULKHEAD_ADMIN_TOKEN to choose your own, or run `bulkhead admin-token rotate`."
        )?;
    }
    let interrupted = store.admin().fail_interrupted_runs().await?;
    if interrupted > 0 {
        tracing::warn!(
            runs = interrupted,
            "marked runs cut off by the last stop as failed"
        );
    }
    if config.threads.retention_days > 0 {
        tokio::spawn(expire_threads(store.clone(), config.threads.retention_days));
    }
    let state = app_state(&config, &store, admin_token_hash).await?;
    state.install_workers(bulkhead_server::worker::Workers::new(
        config.workers.clone(),
        worker_launch(global, &config)?,
        store.clone(),
        state.vault().clone(),
    ));
    // Expires overdue approvals and resumes runs decided while no process could (including
    // those decided just before the last stop).
    bulkhead_server::resume::spawn_sweeper(
        state.clone(),
        std::time::Duration::from_millis(config.tools.approval_sweep_ms),
    );
    bulkhead_server::alerts::spawn_judge(state.clone());
    if let Some(stream) = &config.audit_stream {
        tracing::info!(url = %stream.url, stream = %stream.stream, "publishing audit events to NATS JetStream");
        bulkhead_egress::audit_stream::spawn(store.clone(), stream.clone());
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // Before the address is printed: a supervisor may signal as soon as it reads it.
    let shutdown = shutdown_signal();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "bulkhead listening on http://{address}")?;
        out.flush()?;
    }
    tracing::info!(%address, database = ?store.kind(), "serving");
    let app = bulkhead_server::app(state);
    placement.pin_process()?;
    match config.http_threads {
        Some(0) => {
            let listener =
                axum::serve::ListenerExt::tap_io(listener, |tcp| crate::serving::no_delay(tcp));
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        threads => {
            let threads = threads.unwrap_or_else(|| placement.default_http_threads());
            tracing::info!(threads, http_cpus = ?config.http_cpus, background_cpus = ?config.background_cpus,
                "serving HTTP from one runtime per thread");
            crate::serving::serve(listener, app, threads, placement, shutdown).await
        }
    }
    .context("server failed")?;
    tracing::info!("shut down; closing the database");
    store.close().await;
    // The exporter's own thread blocks on its HTTP calls; keep that off the runtime.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    Ok(())
}

/// Deletes threads past their retention at start and every hour after.
async fn expire_threads(store: Store, retention_days: u32) {
    let retention_ms = i64::from(retention_days) * 24 * 60 * 60 * 1000;
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(60 * 60));
    loop {
        hourly.tick().await;
        let cutoff = bulkhead_core::timestamp::now_millis() - retention_ms;
        match store.admin().expire_threads(cutoff).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(threads = expired, retention_days, "expired threads"),
            Err(error) => tracing::warn!(%error, "expiring threads failed; will retry in an hour"),
        }
    }
}

/// Everything the HTTP application needs, built from configuration: the vault with its KEK,
/// the egress with its endpoints, and the server settings. Used by `serve` and `demo`.
pub async fn app_state(
    config: &Config,
    store: &Store,
    admin_token_hash: String,
) -> anyhow::Result<AppState> {
    let vault = settings::open_vault(config)?;
    let egress = bulkhead_egress::Egress::new(&config.endpoints, store.clone(), vault.clone())
        .context("invalid [[endpoints]] configuration")?;
    Ok(AppState::new(
        store.clone(),
        vault,
        egress.clone(),
        server_settings(config, admin_token_hash, &egress).await?,
    ))
}

/// The state of a dedicated worker: the same runtime as `serve`, with the vault it was
/// handed and no admin token (it serves no HTTP).
pub async fn worker_state(
    config: &Config,
    store: &Store,
    vault: bulkhead_vault::Vault,
) -> anyhow::Result<AppState> {
    let egress = bulkhead_egress::Egress::new(&config.endpoints, store.clone(), vault.clone())
        .context("invalid [[endpoints]] configuration")?;
    Ok(AppState::dedicated_worker(
        store.clone(),
        vault,
        egress.clone(),
        server_settings(config, String::new(), &egress).await?,
    ))
}

/// Environment variables a worker must not inherit: the key-encryption keys, the admin
/// token, and the database's address (a worker has no database; a PostgreSQL URL may carry
/// a password).
const WITHHELD_FROM_WORKERS: &[&str] = &[
    "BULKHEAD_MASTER_KEY",
    "BULKHEAD_PREVIOUS_MASTER_KEYS",
    "BULKHEAD_ADMIN_TOKEN",
    "BULKHEAD_DATABASE",
];

const MIMALLOC_EAGER_COMMIT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// How `serve` starts workers: this binary (or `workers.binary`) with the same configuration
/// sources, and the environment minus what a worker must not hold.
fn worker_launch(
    global: &GlobalArgs,
    config: &Config,
) -> anyhow::Result<bulkhead_server::worker::pool::WorkerLaunch> {
    let binary = match &config.workers.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().context("cannot find this binary to start workers")?,
    };
    let mut global_args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(path) = &global.config {
        global_args.extend(["--config".into(), std::path::absolute(path)?.into()]);
    }
    global_args.extend([
        "--data-dir".into(),
        std::path::absolute(&config.data_dir)?.into(),
    ]);
    // Only a SQLite file's place, which the worker checks it cannot open; never a
    // PostgreSQL URL.
    if let Some(database) = config
        .database
        .as_ref()
        .filter(|url| url.starts_with("sqlite://"))
    {
        global_args.extend(["--database".into(), database.into()]);
    }
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(key, _)| {
            !WITHHELD_FROM_WORKERS
                .iter()
                .any(|withheld| key.as_os_str() == *withheld)
        })
        .collect();
    // mimalloc commits its first arena eagerly: harmless for one `serve`, but it made each
    // idle worker 16 MiB larger and its cold start twice as long (bench-isolation, 83 against
    // 69 MiB, 106 against 63 ms). The option is read before `main`, so it can only come from
    // the environment. An operator's own setting wins.
    if std::env::var_os(MIMALLOC_EAGER_COMMIT).is_none() {
        env.push((MIMALLOC_EAGER_COMMIT.into(), "0".into()));
    }
    let dir = match &config.workers.dir {
        Some(dir) => dir.clone(),
        None => std::path::absolute(config.data_dir.join("workers"))?,
    };
    Ok(bulkhead_server::worker::pool::WorkerLaunch {
        binary,
        global_args,
        env,
        dir,
    })
}

pub const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";

/// The admin token's hash. A configured token wins and its hash is stored; otherwise the
/// stored hash is used; on first start a token is generated, stored hashed, and returned so
/// the caller can print it once.
pub async fn admin_token_hash(
    config: &Config,
    store: &Store,
) -> anyhow::Result<(String, Option<SecretString>)> {
    let admin = store.admin();
    if let Some(token) = &config.admin_token {
        if token.expose_secret().len() < 16 {
            anyhow::bail!("the admin token must be at least 16 characters long");
        }
        let hash = hash_secret(token.expose_secret());
        admin.set_setting(ADMIN_TOKEN_SETTING, &hash).await?;
        return Ok((hash, None));
    }
    if let Some(hash) = admin.setting(ADMIN_TOKEN_SETTING).await? {
        return Ok((hash, None));
    }
    let token = generate_admin_token();
    let hash = hash_secret(token.expose_secret());
    let stored = admin.setting_or_insert(ADMIN_TOKEN_SETTING, &hash).await?;
    // Another replica may have won the race to generate it; then it printed the token.
    let generated = (stored == hash).then_some(token);
    Ok((stored, generated))
}

pub async fn server_settings(
    config: &Config,
    admin_token_hash: String,
    egress: &bulkhead_egress::Egress,
) -> anyhow::Result<ServerSettings> {
    let platform_issuer = match &config.auth.platform_issuer {
        None => None,
        Some(issuer) => {
            let jwks =
                match &issuer.jwks_path {
                    None => None,
                    Some(path) => {
                        let text = tokio::fs::read_to_string(path).await.with_context(|| {
                            format!("cannot read platform JWKS {}", path.display())
                        })?;
                        Some(parse_jwks(&text).map_err(|e| {
                            anyhow::anyhow!("platform JWKS {}: {e}", path.display())
                        })?)
                    }
                };
            let binding = PlatformIssuer {
                issuer: issuer.issuer.clone(),
                audience: issuer.audience.clone(),
                algorithms: issuer.algorithms.clone(),
                jwks,
                hs256_secret: issuer.hs256_secret.clone(),
                tenant_claim: issuer.tenant_claim.clone(),
                roles_claim: issuer.roles_claim.clone(),
                require_nbf: issuer.require_nbf,
            }
            .into_binding()
            .map_err(|e| anyhow::anyhow!("auth.platform_issuer: {e}"))?;
            Some(binding)
        }
    };
    for model in &config.models {
        model
            .validate()
            .map_err(|e| anyhow::anyhow!("[[models]]: {e}"))?;
    }
    for (name, source) in &config.platform_prompts {
        bulkhead_core::PromptName::try_from(name.as_str())
            .map_err(|e| anyhow::anyhow!("platform_prompts: {name:?}: {e}"))?;
        bulkhead_runtime::prompts::check_template(source)
            .map_err(|e| anyhow::anyhow!("platform_prompts.{name}: {e}"))?;
    }
    Ok(ServerSettings {
        admin_token_hash,
        platform_prompts: config.platform_prompts.clone(),
        local_models: load_local_models(&config.models).await?,
        models: config.models.clone(),
        default_models: config.default_models.clone(),
        platform_issuer,
        leeway_seconds: config.auth.leeway_seconds,
        key_cache: std::time::Duration::from_millis(config.auth.key_cache_ms),
        regions: config.regions.clone(),
        max_body_bytes: config.max_body_bytes,
        knowledge: config.knowledge.clone(),
        embedders: load_embedders(config).await?,
        limits: config.limits.clone(),
        metrics: config.metrics.clone(),
        alerts: config.alerts.clone(),
        tools: std::sync::Arc::new(
            bulkhead_tools::Tools::new(egress.clone(), config.tools.clone())
                .map_err(|e| anyhow::anyhow!("[tools]: {e}"))?,
        ),
    })
}

async fn load_embedders(config: &Config) -> anyhow::Result<bulkhead_knowledge::Embedders> {
    let embedders = config.embedders.clone();
    let loaded =
        tokio::task::spawn_blocking(move || bulkhead_knowledge::Embedders::load(&embedders))
            .await?
            .map_err(|e| anyhow::anyhow!("[[embedders]]: {e}"))?;
    if loaded.get(&config.knowledge.default_embedder).is_none() {
        tracing::warn!(
            embedder = %config.knowledge.default_embedder,
            "knowledge.default_embedder names no [[embedders]] entry: new knowledge bases cannot be created"
        );
    }
    Ok(loaded)
}

async fn load_local_models(
    models: &[bulkhead_core::config::ModelConfig],
) -> anyhow::Result<bulkhead_runtime::providers::local::LocalModels> {
    let models = models.to_vec();
    tokio::task::spawn_blocking(move || bulkhead_runtime::providers::local::load(&models))
        .await?
        .map_err(|e| anyhow::anyhow!("[[models]]: {e}"))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; the server then stops accepting and finishes
/// in-flight requests. The signals are caught from the call on, not from the first poll:
/// until then they keep their default action, which ends the process without draining.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let caught = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (interrupt, terminate) = caught;
            let received = |signal: std::io::Result<tokio::signal::unix::Signal>,
                            name: &'static str| async move {
                match signal {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(error) => {
                        tracing::error!(%error, signal = name, "cannot listen for the signal");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = received(interrupt, "SIGINT") => tracing::info!("received SIGINT, draining"),
                () = received(terminate, "SIGTERM") => tracing::info!("received SIGTERM, draining"),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
            tracing::info!("received ctrl-c, draining");
        }
    }
}
