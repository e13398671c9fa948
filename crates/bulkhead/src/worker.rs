//! `bulkhead worker`: one dedicated tenant's agent work, in a process of its own.
//!
//! Started by `bulkhead serve`, never by hand. It connects to the socket it is given, takes
//! its tenant's data keys from the start frame (it never reads the key-encryption key),
//! loads the models, confines itself (`sandbox`), and answers forwarded runs until drained.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bulkhead_core::TenantId;
use bulkhead_server::worker::frames::FromWorker;
use bulkhead_vault::{HandedKeyProvider, Vault};
use tokio::net::UnixStream;

use crate::{GlobalArgs, sandbox, serve, settings};

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The one tenant this worker serves.
    #[arg(long)]
    tenant: String,
    /// The control plane's socket to connect to.
    #[arg(long)]
    socket: PathBuf,
    /// The worker's own working directory (the only place it may write).
    #[arg(long)]
    dir: PathBuf,
}

pub async fn run(global: &GlobalArgs, args: WorkerArgs) -> anyhow::Result<()> {
    let tenant = TenantId::try_from(args.tenant.as_str()).context("--tenant")?;
    let mut config = settings::load(global)?;
    // What a worker must never hold, even if the configuration file names it.
    let kek_file = config.master_key.is_none().then(|| {
        config
            .vault
            .key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("master.key"))
    });
    config.master_key = None;
    config.previous_master_keys.clear();
    config.admin_token = None;
    let database_file = settings::sqlite_file(&config)?;
    config.database = None;
    let _telemetry = settings::init_logging(&config)?;
    // Placed before the sandbox confines it, as a `serve` thread would be.
    crate::placement::Placement::for_worker(&config)?.pin_process()?;
    // No database: every store call of the tenant's work goes to the control plane over the
    // channel, which answers it for the request it forwarded (`bulkhead_store::remote`).
    let (link, outgoing) = bulkhead_server::worker::link::WorkerLink::new();
    let store = bulkhead_store::Store::linked(link.clone());
    let mut stream = UnixStream::connect(&args.socket).await.with_context(|| {
        format!(
            "cannot reach the control plane at {}",
            args.socket.display()
        )
    })?;
    let keys = bulkhead_server::worker::serve::receive_start(&mut stream, &tenant).await?;
    let provider = HandedKeyProvider::new(tenant.clone(), keys);
    let key_versions = provider.versions();
    let vault = Vault::new(Arc::new(provider)).with_credential_cache(
        std::time::Duration::from_millis(config.vault.credential_cache_ms),
    );
    let state = serve::worker_state(&config, &store, vault).await?;
    let (memory_mib, open_files) = config.workers.limits_for(tenant.as_str());
    let report = sandbox::confine(&sandbox::Confinement {
        own_dir: &args.dir,
        database_file: database_file.as_deref(),
        model_files: &settings::model_files(&config),
        kek_file: kek_file.as_deref(),
        memory_mib,
        open_files,
    });
    tracing::info!(tenant.id = %tenant, pid = std::process::id(), landlock = %report.landlock, seccomp = %report.seccomp, no_new_privs = report.no_new_privs, "dedicated worker ready");
    let ready = FromWorker::Ready {
        pid: std::process::id(),
        tenant: tenant.to_string(),
        key_versions,
        sandbox: report,
    };
    bulkhead_server::worker::serve::serve(state, tenant, stream, ready, link, outgoing).await?;
    store.close().await;
    Ok(())
}
