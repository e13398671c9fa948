//! Loads configuration: defaults, then `bulkhead.toml`, then `BULKHEAD_*` variables, then flags.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use bulkhead_core::config::{Config, LogFormat};
use bulkhead_store::{Store, StoreOptions};
use bulkhead_vault::{LocalKeyProvider, Vault};
use figment::Figment;
use figment::providers::{Env, Format, Toml};

use crate::GlobalArgs;

/// Top-level keys an environment variable may set (`BULKHEAD_<KEY>`, nested with `__`, as in
/// `BULKHEAD_AUTH__LEEWAY_SECONDS`). Other `BULKHEAD_*` variables (such as
/// `BULKHEAD_CONFIG`) are not configuration keys and are left alone.
const ENV_KEYS: &[&str] = &[
    "listen",
    "http_threads",
    "http_cpus",
    "background_cpus",
    "data_dir",
    "database",
    "admin_token",
    "master_key",
    "previous_master_keys",
    "max_body_bytes",
    "regions",
    "auth",
    "log",
    "postgres",
    "vault",
    "endpoints",
    "platform_prompts",
    "models",
    "default_models",
    "threads",
    "embedders",
    "knowledge",
    "tools",
    "limits",
    "metrics",
    "audit_stream",
    "alerts",
    "audit",
    "telemetry",
    "workers",
];

pub fn load(global: &GlobalArgs) -> anyhow::Result<Config> {
    let mut figment = Figment::new();
    match &global.config {
        Some(path) => {
            if !path.exists() {
                bail!("configuration file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        None => {
            let default = Path::new("bulkhead.toml");
            if default.exists() {
                figment = figment.merge(Toml::file_exact(default));
            }
        }
    }
    figment = figment.merge(
        Env::prefixed("BULKHEAD_")
            .filter(|key| {
                let top = key.as_str().split("__").next().unwrap_or_default();
                ENV_KEYS.iter().any(|k| top.eq_ignore_ascii_case(k))
            })
            .split("__"),
    );
    let mut config: Config = figment.extract().context("invalid configuration")?;
    if let Some(dir) = &global.data_dir {
        config.data_dir.clone_from(dir);
    }
    if let Some(url) = &global.database {
        config.database = Some(url.clone());
    }
    if config.regions.is_empty() {
        bail!("configuration lists no regions; add at least one to `regions`");
    }
    Ok(config)
}

pub fn database_url(config: &Config) -> anyhow::Result<String> {
    match &config.database {
        Some(url) if !url.trim().is_empty() => Ok(url.clone()),
        _ => {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("cannot create data directory {}", config.data_dir.display())
            })?;
            restrict_to_owner(&config.data_dir)?;
            Ok(format!(
                "sqlite://{}",
                config.data_dir.join("bulkhead.db").display()
            ))
        }
    }
}

#[cfg(unix)]
fn restrict_to_owner(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict permissions of {}", dir.display()))
}

#[cfg(not(unix))]
fn restrict_to_owner(_dir: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Opens the database. Only a long-running server that closes its store on the way out
/// should take the audit outbox (`[audit] outbox`); the CLI and dedicated workers commit each
/// event before answering, so another process reads it at once.
pub async fn open_store(config: &Config, audit_outbox: bool) -> anyhow::Result<Store> {
    let url = database_url(config)?;
    let options = StoreOptions {
        max_connections: config.postgres.max_connections,
        audit_outbox,
        ..StoreOptions::default()
    };
    Store::open(&url, &options)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(&url)))
}

/// The SQLite database file, which a worker's sandbox checks it cannot open; none on
/// PostgreSQL.
pub fn sqlite_file(config: &Config) -> anyhow::Result<Option<std::path::PathBuf>> {
    let url = database_url(config)?;
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Ok(None);
    };
    let path = path.split('?').next().unwrap_or_default();
    Ok(Some(std::path::PathBuf::from(path)))
}

/// Every model and embedder file the configuration names, for a worker's sandbox.
pub fn model_files(config: &Config) -> Vec<std::path::PathBuf> {
    let models = config.models.iter().filter_map(|m| m.path.clone());
    let embedders = config.embedders.iter().filter_map(|e| e.path.clone());
    models.chain(embedders).collect()
}

/// Hides a password in a database URL before it is printed.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The vault with the configured key-encryption key: `master_key` (BULKHEAD_MASTER_KEY) if
/// set, otherwise the key file, created at first start.
pub fn open_vault(config: &Config) -> anyhow::Result<Vault> {
    let provider = match &config.master_key {
        Some(key) => LocalKeyProvider::from_keys(key, &config.previous_master_keys)
            .context("BULKHEAD_MASTER_KEY or BULKHEAD_PREVIOUS_MASTER_KEYS")?,
        None => local_key_file_provider(config)?,
    };
    Ok(
        Vault::new(Arc::new(provider)).with_credential_cache(std::time::Duration::from_millis(
            config.vault.credential_cache_ms,
        )),
    )
}

/// The key-file provider (`vault.key_file`, default `<data_dir>/master.key`), created at first
/// start; an error when the KEK comes from the environment instead.
pub fn local_key_file_provider(config: &Config) -> anyhow::Result<LocalKeyProvider> {
    if config.master_key.is_some() {
        anyhow::bail!(
            "the key-encryption key comes from BULKHEAD_MASTER_KEY; to rotate it, set a new \
             BULKHEAD_MASTER_KEY, list the old one in BULKHEAD_PREVIOUS_MASTER_KEYS and run \
             `bulkhead keys rotate-kek` (which then only re-wraps)"
        );
    }
    let path = config
        .vault
        .key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("master.key"));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(LocalKeyProvider::load_or_create(&path)?)
}

/// Spans still buffered for the collector; flushed by [`Telemetry::shutdown`].
pub struct Telemetry(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Telemetry {
    /// Sends what is left to the collector; call before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "spans not all exported at shutdown");
        }
    }
}

/// Logs to stderr (text or JSON) and, with `[telemetry] otlp_endpoint`, spans to a collector.
pub fn init_logging(config: &Config) -> anyhow::Result<Telemetry> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = match config.log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = bulkhead_egress::telemetry::otlp_provider(&config.telemetry)?;
    let spans = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("bulkhead")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Telemetry(provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
    }
}
