//! `bulkhead audit verify`: checks a tenant's trail in the database, or an NDJSON export on
//! its own (an auditor's copy), and prints the head hash to keep.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditEvent, ChainVerifier};

use crate::GlobalArgs;
use crate::settings;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Verify a hash chain: every event's hash, every link and the sequence. Exits non-zero
    /// on the first fault, naming it.
    Verify {
        /// The tenant whose stored trail to verify (it must also end at the recorded head).
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        tenant: Option<String>,
        /// An export from `GET /v1/audit/export` (NDJSON), verified without the database.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write a tenant's whole trail as NDJSON to stdout (the same lines as
    /// `GET /v1/audit/export`), for an auditor's copy.
    Export {
        #[arg(long)]
        tenant: String,
    },
}

pub async fn run(global: &GlobalArgs, command: AuditCommand) -> anyhow::Result<()> {
    let (tenant, file) = match command {
        AuditCommand::Verify { tenant, file } => (tenant, file),
        AuditCommand::Export { tenant } => return export(global, &tenant).await,
    };
    let mut out = std::io::stdout().lock();
    if let Some(path) = file {
        let reader = std::io::BufReader::new(
            std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        );
        let mut verifier: Option<ChainVerifier> = None;
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let event: AuditEvent = serde_json::from_str(&line)
                .with_context(|| format!("line {} is not an audit event", n + 1))?;
            let verifier =
                verifier.get_or_insert_with(|| ChainVerifier::new(event.tenant_id.clone()));
            verifier
                .push(&event)
                .map_err(|fault| anyhow::anyhow!("{}: {fault}", path.display()))?;
        }
        let head = verifier
            .map(|v| v.head())
            .ok_or_else(|| anyhow::anyhow!("{} holds no events", path.display()))?;
        writeln!(
            out,
            "ok: {} events, last seq {}, head hash {}",
            head.events, head.last_seq, head.head_hash
        )?;
        return Ok(());
    }
    let tenant = tenant.ok_or_else(|| anyhow::anyhow!("give --tenant or --file"))?;
    let tenant =
        TenantId::try_from(tenant.as_str()).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let config = settings::load(global)?;
    let store = settings::open_store(&config, false).await?;
    let record = store
        .admin()
        .get_tenant(&tenant)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant {tenant}"))?;
    let ctx = bulkhead_core::auth::operator_context(&record);
    let found = store.tenant(&ctx).verify_audit().await?;
    store.close().await;
    match found.error {
        None => {
            writeln!(
                out,
                "ok: {} events, last seq {}, head hash {}",
                found.head.events, found.head.last_seq, found.head.head_hash
            )?;
            Ok(())
        }
        Some(fault) => anyhow::bail!(
            "tenant {tenant}'s trail is broken: {fault} ({} events verified before it)",
            found.head.events
        ),
    }
}

async fn open_tenant(
    global: &GlobalArgs,
    tenant: &str,
) -> anyhow::Result<(bulkhead_store::Store, bulkhead_core::TenantContext)> {
    let tenant = TenantId::try_from(tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let config = settings::load(global)?;
    let store = settings::open_store(&config, false).await?;
    let record = store
        .admin()
        .get_tenant(&tenant)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant {tenant}"))?;
    Ok((store, bulkhead_core::auth::operator_context(&record)))
}

async fn export(global: &GlobalArgs, tenant: &str) -> anyhow::Result<()> {
    let (store, ctx) = open_tenant(global, tenant).await?;
    let scoped = store.tenant(&ctx);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut filter = bulkhead_store::AuditFilter {
        limit: 1_000,
        ..bulkhead_store::AuditFilter::default()
    };
    loop {
        let events = scoped.audit_page(&filter).await?;
        let Some(last) = events.last().map(|e| e.seq) else {
            break;
        };
        for event in &events {
            serde_json::to_writer(&mut out, event)?;
            out.write_all(b"\n")?;
        }
        filter.after_seq = last;
    }
    out.flush()?;
    store.close().await;
    Ok(())
}
