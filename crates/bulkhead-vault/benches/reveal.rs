//! Decrypt cost per call: `Vault::reveal` on a real SQLite store, with the tenant's data key
//! already unwrapped (warm) and unwrapped again on every call (cold, as after a restart or a
//! rotation). Run with `cargo bench -p bulkhead-vault --bench reveal`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bulkhead_core::{ConnectorName, Role, TenantContext};
use bulkhead_store::testing::TestDb;
use bulkhead_vault::{LocalKeyProvider, Vault};
use criterion::{Criterion, criterion_group, criterion_main};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

fn bench_reveal(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (store, db, ctx, vault) = runtime.block_on(async {
        let (store, db) = TestDb::sqlite().await;
        let tenant = bulkhead_store::testing::create_tenant(&store, "acme", "local").await;
        let ctx = TenantContext::for_tests(&tenant, &[Role::Owner]);
        let key = SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
        let vault = Vault::new(Arc::new(LocalKeyProvider::from_base64(&key).unwrap()));
        vault
            .put(
                &store.tenant(&ctx),
                &ConnectorName::try_from("openai").unwrap(),
                &SecretString::from("sk-bench".to_owned()),
                json!({}),
            )
            .await
            .unwrap();
        (store, db, ctx, vault)
    });
    let connector = ConnectorName::try_from("openai").unwrap();
    let reveal = |vault: Vault| {
        let (store, ctx, connector) = (store.clone(), ctx.clone(), connector.clone());
        async move {
            let credential = vault
                .reveal(&store.tenant(&ctx), &connector)
                .await
                .unwrap()
                .unwrap();
            // Inject: what egress does with it.
            let header = format!("Bearer {}", credential.secret.expose_secret());
            assert_eq!(header.len(), 15);
        }
    };
    c.bench_function("vault/reveal_and_inject_warm", |b| {
        b.to_async(&runtime).iter(|| reveal(vault.clone()))
    });
    c.bench_function("vault/reveal_and_inject_cold", |b| {
        b.to_async(&runtime).iter(|| {
            vault.clear_cache();
            reveal(vault.clone())
        })
    });
    runtime.block_on(db.finish(store.clone()));
}

criterion_group!(benches, bench_reveal);
criterion_main!(benches);
