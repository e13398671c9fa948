//! `bulkhead bench audit`: durable audit appends per second (each caller answered only after
//! its event is committed) at concurrency 1 and at the chosen concurrency, spread over several
//! tenants' chains, then verification speed over one tenant's whole chain. With `--nats`, also
//! how fast the audit stream publishes a backlog to JetStream (every event acknowledged).

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
    /// A NATS server with JetStream (`nats://127.0.0.1:4222`): measure publishing the
    /// events just appended to the stream `BULKHEAD_AUDIT_BENCH`.
    #[arg(long)]
    nats: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: AuditBenchArgs) -> anyhow::Result<()> {
    let config = settings::load(global)?;
    let store = settings::open_store(&config, false).await?;
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
    if let Some(url) = &args.nats {
        publish_backlog(&store, url, &mut out).await?;
    }
    store.close().await;
    Ok(())
}

/// Starts the audit stream publisher on the backlog just appended and times it until the
/// stream has acknowledged every event.
async fn publish_backlog(store: &Store, url: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let backlog: i64 = store
        .admin()
        .audit_stream_backlog()
        .await?
        .iter()
        .map(|b| b.head_seq - b.published_seq)
        .sum();
    let config = bulkhead_core::config::AuditStreamConfig {
        url: url.to_owned(),
        stream: "BULKHEAD_AUDIT_BENCH".to_owned(),
        subject_prefix: "bulkhead.audit-bench".to_owned(),
        poll_ms: 10,
        ..Default::default()
    };
    let started = Instant::now();
    let publisher = bulkhead_egress::audit_stream::spawn(store.clone(), config);
    while !store.admin().audit_stream_backlog().await?.is_empty() {
        anyhow::ensure!(
            started.elapsed().as_secs() < 300,
            "the stream did not catch up in 5 minutes (is {url} up, with JetStream?)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    publisher.abort();
    writeln!(
        out,
        "stream: {backlog} events published and acknowledged in {elapsed:.2}s ({:.0} events per second)",
        backlog as f64 / elapsed
    )?;
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
