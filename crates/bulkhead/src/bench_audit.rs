//! `bulkhead bench audit`: durable audit appends per second (each caller answered only after
//! its event is committed) at concurrency 1 and at the chosen concurrency, spread over several
//! tenants' chains, then verification speed over one tenant's whole chain.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use bulkhead_core::audit::{AuditDraft, Origin, Outcome};
use bulkhead_core::config::default_region;
use bulkhead_core::{Isolation, Tenant, TenantId};
use bulkhead_store::{NewTenant, Store};

use crate::{GlobalArgs, settings};

#[derive(clap::Args)]
pub struct AuditBenchArgs {
    /// Events appended in each measurement.
    #[arg(long, default_value_t = 20_000)]
    events: u32,
    /// Tenants whose chains the events are spread over.
    #[arg(long, default_value_t = 8)]
    tenants: u32,
    /// Concurrent appenders in the second measurement.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// Prefix for the generated tenant ids, so runs can share a database.
    #[arg(long, default_value = "audit-bench")]
    prefix: String,
}

pub async fn run(global: &GlobalArgs, args: AuditBenchArgs) -> anyhow::Result<()> {
    let config = settings::load(global)?;
    let store = settings::open_store(&config).await?;
    let mut tenants = Vec::new();
    for i in 0..args.tenants.max(1) {
        let id = TenantId::try_from(format!("{}-{i}", args.prefix).as_str())?;
        let tenant = match store.admin().get_tenant(&id).await? {
            Some(tenant) => tenant,
            None => {
                store
                    .admin()
                    .create_tenant(
                        NewTenant {
                            id,
                            name: format!("Audit bench {i}"),
                            region: default_region(),
                            isolation: Isolation::Shared,
                            allowed_regions: Vec::new(),
                        },
                        &Origin::cli(),
                    )
                    .await?
            }
        };
        tenants.push(tenant);
    }
    let tenants = Arc::new(tenants);
    let mut out = std::io::stdout();
    writeln!(
        out,
        "audit appends on {:?}: {} events per measurement over {} tenants' chains",
        store.kind(),
        args.events,
        tenants.len()
    )?;
    for concurrency in [1, args.concurrency.max(1)] {
        let rate = appends(&store, &tenants, args.events, concurrency).await?;
        writeln!(
            out,
            "  concurrency {concurrency:>3}: {rate:>8.0} durable events per second"
        )?;
    }
    let ctx = bulkhead_core::auth::operator_context(&tenants[0]);
    let started = Instant::now();
    let found = store.tenant(&ctx).verify_audit().await?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        found.error.is_none(),
        "the chain did not verify: {:?}",
        found.error
    );
    writeln!(
        out,
        "verify: {} events of one chain in {elapsed:.2}s ({:.0} events per second)",
        found.head.events,
        found.head.events as f64 / elapsed
    )?;
    store.close().await;
    Ok(())
}

/// Appends `events` events from `concurrency` tasks, round-robin over the tenants; answers
/// events per second. Each append returns only once its event is committed.
async fn appends(
    store: &Store,
    tenants: &Arc<Vec<Tenant>>,
    events: u32,
    concurrency: u32,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (store, tenants, next) = (store.clone(), tenants.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return anyhow::Ok(());
                }
                let tenant = &tenants[i as usize % tenants.len()];
                let ctx = bulkhead_core::auth::operator_context(tenant);
                store
                    .tenant(&ctx)
                    .record_event(AuditDraft {
                        action: "bench.event",
                        resource: format!("bench/{i}"),
                        outcome: Outcome::Success,
                        details: serde_json::json!({"i": i}),
                    })
                    .await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(f64::from(events) / started.elapsed().as_secs_f64())
}
