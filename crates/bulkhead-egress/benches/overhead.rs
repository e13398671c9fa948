//! Egress overhead against a direct reqwest call to the same local server, measured in one
//! run, at concurrency 1 and 32. Egress adds: the residency check, revealing the tenant's
//! credential from the vault (SQLite reads), injecting it, and one audit append (a SQLite
//! write) per call. Run with `cargo bench -p bulkhead-egress --bench overhead`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_core::config::{AuthScheme, EndpointConfig, EndpointKind};
use bulkhead_core::{ConnectorName, RegionName, Role, TenantContext};
use bulkhead_egress::{Egress, OutboundRequest};
use bulkhead_store::testing::TestDb;
use bulkhead_vault::{LocalKeyProvider, Vault};
use secrecy::SecretString;
use serde_json::json;

const SECRET: &str = "sk-bench-0123456789";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

struct Run {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

async fn measure<F, Fut>(concurrency: usize, total: usize, call: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    // Warm up connections and caches.
    for _ in 0..50 {
        call().await;
    }
    let started = Instant::now();
    let per_worker = total / concurrency;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                call().await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(total);
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    Run {
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true})) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let (store, db) = TestDb::sqlite().await;
        let tenant = bulkhead_store::testing::create_tenant(&store, "acme", "local").await;
        let ctx = TenantContext::for_tests(&tenant, &[Role::Owner]);
        let key = SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
        let vault = Vault::new(Arc::new(LocalKeyProvider::from_base64(&key).unwrap()));
        vault
            .put(&store.tenant(&ctx), &ConnectorName::try_from("model").unwrap(), &SecretString::from(SECRET.to_owned()), json!({}))
            .await
            .unwrap();
        let endpoint = EndpointConfig {
            name: "model".into(),
            base_url: base.clone(),
            region: RegionName::try_from("local").unwrap(),
            kind: EndpointKind::Model,
            connector: Some(ConnectorName::try_from("model").unwrap()),
            auth: AuthScheme::Bearer {},
            timeout_ms: 10_000,
            max_retries: 0,
        };
        let egress = Egress::new(&[endpoint], store.clone(), vault).unwrap();
        let direct_client = reqwest::Client::new();

        println!("egress overhead vs direct reqwest, local axum server, SQLite store (one run)");
        println!("{:<12} {:>6} {:>10} {:>10} {:>10}", "path", "conc", "p50", "p99", "req/s");
        for (concurrency, total) in [(1usize, 2_000usize), (32, 6_400)] {
            let (client, url) = (direct_client.clone(), format!("{base}/v1/chat"));
            let direct = measure(concurrency, total, move || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let response = client.get(&url).bearer_auth(SECRET).send().await.unwrap();
                    assert!(response.status().is_success());
                    response.bytes().await.unwrap();
                }
            })
            .await;
            let (egress_c, ctx_c) = (egress.clone(), ctx.clone());
            let through = measure(concurrency, total, move || {
                let (egress, ctx) = (egress_c.clone(), ctx_c.clone());
                async move {
                    let response = egress.for_tenant(&ctx).send("model", OutboundRequest::get("/v1/chat")).await.unwrap();
                    assert_eq!(response.status, 200);
                }
            })
            .await;
            for (name, run) in [("direct", &direct), ("egress", &through)] {
                println!(
                    "{name:<12} {concurrency:>6} {:>8.0}us {:>8.0}us {:>10.0}",
                    run.p50.as_secs_f64() * 1e6,
                    run.p99.as_secs_f64() * 1e6,
                    run.per_second
                );
            }
            println!(
                "ratio egress/direct at concurrency {concurrency}: p50 {:.1}x, p99 {:.1}x, throughput {:.2}x",
                through.p50.as_secs_f64() / direct.p50.as_secs_f64(),
                through.p99.as_secs_f64() / direct.p99.as_secs_f64(),
                through.per_second / direct.per_second
            );
        }
        db.finish(store).await;
    });
}
