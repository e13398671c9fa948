//! `bulkhead bench`: end-to-end measurements that need the real store, reported with the
//! command that produced them.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use bulkhead_core::audit::Origin;
use bulkhead_core::config::default_region;
use bulkhead_core::{Isolation, TenantId};
use bulkhead_store::NewTenant;

use crate::{GlobalArgs, settings};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Create N tenants through the control-plane store path (one transaction and one audit
    /// event each) and report time, peak memory and database size.
    Provision {
        #[arg(long, default_value_t = 100_000)]
        tenants: u32,
        /// Concurrent writers (SQLite serialises writes whatever this is).
        #[arg(long, default_value_t = 8)]
        concurrency: u32,
        /// Prefix for the generated tenant ids, so runs can share a database.
        #[arg(long, default_value = "bench")]
        prefix: String,
    },
    /// Knowledge search: one tenant's latency while the others' chunks grow, graph recall,
    /// memory per tenant, cold loads and ingest throughput.
    Knowledge(crate::bench_knowledge::KnowledgeBenchArgs),
    /// Audit appends per second (durable) on this database, and chain verification speed.
    Audit(crate::bench_audit::AuditBenchArgs),
}

pub async fn run(global: &GlobalArgs, command: BenchCommand) -> anyhow::Result<()> {
    let (tenants, concurrency, prefix) = match command {
        BenchCommand::Provision {
            tenants,
            concurrency,
            prefix,
        } => (tenants, concurrency, prefix),
        BenchCommand::Knowledge(args) => return crate::bench_knowledge::run(global, args).await,
        BenchCommand::Audit(args) => return crate::bench_audit::run(global, args).await,
    };
    let config = settings::load(global)?;
    let store = settings::open_store(&config, false).await?;
    let size_before = store.size_bytes().await?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "provisioning {tenants} tenants on {:?} with {concurrency} writers",
        store.kind()
    )?;
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let store = store.clone();
        let next = next.clone();
        let prefix = prefix.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= tenants {
                    return anyhow::Ok(());
                }
                let id = TenantId::try_from(format!("{prefix}-{i:07}").as_str())?;
                store
                    .admin()
                    .create_tenant(
                        NewTenant {
                            id,
                            name: format!("Tenant {i}"),
                            region: default_region(),
                            isolation: Isolation::Shared,
                            allowed_regions: Vec::new(),
                        },
                        &Origin::cli(),
                    )
                    .await
                    .with_context(|| format!("tenant {i}"))?;
                if i > 0 && i.is_multiple_of(10_000) {
                    eprintln!("  {i} tenants, {:.1}s", started.elapsed().as_secs_f64());
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let size_after = store.size_bytes().await?;
    let total = store.admin().count_tenants().await?;
    writeln!(
        out,
        "tenants created:   {tenants} in {elapsed:.1}s ({:.0} per second)",
        f64::from(tenants) / elapsed
    )?;
    writeln!(out, "tenants in store:  {total}")?;
    writeln!(
        out,
        "database growth:   {:.1} MiB ({:.0} bytes per tenant, tenant row + audit event + index entries)",
        (size_after - size_before) as f64 / 1_048_576.0,
        (size_after - size_before) as f64 / f64::from(tenants.max(1))
    )?;
    writeln!(
        out,
        "peak RSS:          {:.1} MiB",
        peak_rss_kib()? as f64 / 1024.0
    )?;
    store.close().await;
    Ok(())
}

/// The process's peak resident set, from /proc (Linux).
fn peak_rss_kib() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}
