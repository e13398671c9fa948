//! The vault on real databases: sealed secrets open only for their own tenant, connector and
//! version, and no secret is ever stored in plain text. Each test runs on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bulkhead_core::audit::Origin;
use bulkhead_core::ids::lower_hex;
use bulkhead_core::{ConnectorName, Role, Tenant, TenantContext};
use bulkhead_store::Store;
use bulkhead_store::testing::{TestDb, contains};
use bulkhead_vault::{
    HandedKey, HandedKeyProvider, HandedKeyWire, LocalKeyProvider, Vault, VaultError,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

bulkhead_store::on_both_backends!(
    secrets_round_trip_per_tenant_and_version,
    a_ciphertext_moved_to_another_row_does_not_open,
    a_wrapped_data_key_moved_to_another_tenant_does_not_unwrap,
    a_canary_secret_is_nowhere_in_plain_text,
    another_key_encryption_key_cannot_open_the_data,
    rotating_a_data_key_reseals_every_secret_and_destroys_the_old_key,
    a_data_key_rotation_runs_beside_100_concurrent_readers,
    an_interrupted_data_key_rotation_is_resumed,
    rotating_the_key_encryption_key_rewraps_every_data_key,
    deleting_a_tenant_shreds_its_keys,
    a_worker_vault_opens_its_own_tenants_secrets_only,
    kept_sealed_credentials_are_per_tenant_and_forgotten_on_change,
    a_deferred_renewal_answers_the_kept_credential_and_renews_its_own_tenants_only,
);

const CANARY: &str = "canary-7f3a9c1e-5b2d-4e8f-a6c0-d9b8e7f6a5b4";

async fn tenant(store: &Store, id: &str) -> Tenant {
    bulkhead_store::testing::create_tenant(store, id, "local").await
}

fn vault() -> Vault {
    let key = SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
    Vault::new(Arc::new(LocalKeyProvider::from_base64(&key).unwrap()))
}

fn connector(name: &str) -> ConnectorName {
    ConnectorName::try_from(name).unwrap()
}

async fn secrets_round_trip_per_tenant_and_version(store: &Store, _db: &TestDb) {
    let vault = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    let slack = connector("slack");

    let first = vault
        .put(
            &store.tenant(&acme),
            &slack,
            &SecretString::from("xoxb-acme-1".to_owned()),
            json!({"workspace": "acme"}),
        )
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    vault
        .put(
            &store.tenant(&globex),
            &slack,
            &SecretString::from("xoxb-globex".to_owned()),
            json!({}),
        )
        .await
        .unwrap();
    let second = vault
        .put(
            &store.tenant(&acme),
            &slack,
            &SecretString::from("xoxb-acme-2".to_owned()),
            json!({"workspace": "acme2"}),
        )
        .await
        .unwrap();
    assert_eq!(second.version, 2);

    // Two tenants, one connector name, two secrets; each handle opens its own.
    let opened = vault
        .reveal(&store.tenant(&acme), &slack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opened.secret.expose_secret(), "xoxb-acme-2");
    assert_eq!(opened.tenant_id.as_str(), "acme");
    assert_eq!(opened.version, 2);
    assert_eq!(opened.fields, json!({"workspace": "acme2"}));
    let opened = vault
        .reveal(&store.tenant(&globex), &slack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opened.secret.expose_secret(), "xoxb-globex");
    assert_eq!(opened.tenant_id.as_str(), "globex");
    assert!(
        vault
            .reveal(&store.tenant(&globex), &connector("jira"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !format!("{opened:?}").contains("xoxb"),
        "Debug must not print the secret"
    );

    // A cold cache (a fresh process) opens the same secrets from the store alone.
    let cold = self::vault();
    let opened = cold
        .reveal(&store.tenant(&acme), &slack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opened.secret.expose_secret(), "xoxb-acme-2");

    assert!(matches!(
        vault
            .put(
                &store.tenant(&acme),
                &slack,
                &SecretString::from("x".to_owned()),
                json!([1])
            )
            .await,
        Err(VaultError::FieldsNotObject)
    ));
    assert!(store.tenant(&acme).delete_credential(&slack).await.unwrap());
    assert!(
        vault
            .reveal(&store.tenant(&acme), &slack)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        vault
            .reveal(&store.tenant(&globex), &slack)
            .await
            .unwrap()
            .is_some()
    );
    let actions: Vec<_> = store
        .admin()
        .audit_events(acme.tenant_id(), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.created",
            "data_key.created",
            "credential.written",
            "credential.written",
            "credential.deleted"
        ]
    );
}

async fn a_ciphertext_moved_to_another_row_does_not_open(store: &Store, db: &TestDb) {
    let vault = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    for (ctx, name, secret) in [
        (&acme, "slack", "acme-slack"),
        (&acme, "jira", "acme-jira"),
        (&globex, "slack", "globex-slack"),
    ] {
        vault
            .put(
                &store.tenant(ctx),
                &connector(name),
                &SecretString::from(secret.to_owned()),
                json!({}),
            )
            .await
            .unwrap();
    }
    // An attacker with write access to the database copies acme's sealed Slack token into
    // globex's row, and into acme's Jira row.
    db.raw(
        "UPDATE credentials SET sealed = (SELECT sealed FROM credentials WHERE tenant_id = 'acme' AND connector = 'slack') \
         WHERE (tenant_id = 'globex' AND connector = 'slack') OR (tenant_id = 'acme' AND connector = 'jira')",
    )
    .await;
    for (ctx, name) in [(&globex, "slack"), (&acme, "jira")] {
        let result = vault.reveal(&store.tenant(ctx), &connector(name)).await;
        assert!(
            matches!(result, Err(VaultError::Decrypt)),
            "{name}: {result:?}"
        );
    }
    assert_eq!(
        vault
            .reveal(&store.tenant(&acme), &connector("slack"))
            .await
            .unwrap()
            .unwrap()
            .secret
            .expose_secret(),
        "acme-slack"
    );
    // Replaying an older version's ciphertext under a newer version number fails too.
    vault
        .put(
            &store.tenant(&acme),
            &connector("slack"),
            &SecretString::from("acme-slack-2".to_owned()),
            json!({}),
        )
        .await
        .unwrap();
    db.raw("UPDATE credentials SET version = 1 WHERE tenant_id = 'acme' AND connector = 'slack'")
        .await;
    assert!(matches!(
        vault
            .reveal(&store.tenant(&acme), &connector("slack"))
            .await,
        Err(VaultError::Decrypt)
    ));
}

async fn a_wrapped_data_key_moved_to_another_tenant_does_not_unwrap(store: &Store, db: &TestDb) {
    let vault = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    vault
        .put(
            &store.tenant(&acme),
            &connector("slack"),
            &SecretString::from("a".to_owned()),
            json!({}),
        )
        .await
        .unwrap();
    vault
        .put(
            &store.tenant(&globex),
            &connector("slack"),
            &SecretString::from("g".to_owned()),
            json!({}),
        )
        .await
        .unwrap();
    // Copy acme's wrapped key and sealed secret into globex's rows: a consistent pair, but
    // both bind acme's tenant id.
    db.raw(
        "UPDATE tenant_keys SET wrapped_dek = (SELECT wrapped_dek FROM tenant_keys WHERE tenant_id = 'acme') WHERE tenant_id = 'globex'; \
         UPDATE credentials SET sealed = (SELECT sealed FROM credentials WHERE tenant_id = 'acme') WHERE tenant_id = 'globex'",
    )
    .await;
    let cold = self::vault();
    assert!(matches!(
        cold.reveal(&store.tenant(&globex), &connector("slack"))
            .await,
        Err(VaultError::Decrypt)
    ));
}

async fn a_canary_secret_is_nowhere_in_plain_text(store: &Store, db: &TestDb) {
    let vault = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    vault
        .put(
            &store.tenant(&acme),
            &connector("openai"),
            &SecretString::from(CANARY.to_owned()),
            json!({"base_url": "http://127.0.0.1"}),
        )
        .await
        .unwrap();
    let bytes = db.dump().await;
    assert!(bytes.len() > 1000, "the dump holds the data");
    assert!(
        contains(&bytes, b"openai"),
        "the dump is readable (the connector name is in it)"
    );
    // pg_dump prints bytea as hex, so look for the hex form as well as the raw bytes.
    let hex_canary = lower_hex(CANARY.as_bytes());
    for needle in [
        CANARY.as_bytes(),
        &CANARY.as_bytes()[..16],
        hex_canary.as_bytes(),
    ] {
        assert!(
            !contains(&bytes, needle),
            "the canary is stored in plain text"
        );
    }
    let audit = serde_json::to_string(
        &store
            .admin()
            .audit_events(acme.tenant_id(), 0, 100)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!audit.contains(CANARY));
}

async fn another_key_encryption_key_cannot_open_the_data(store: &Store, _db: &TestDb) {
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    vault()
        .put(
            &store.tenant(&acme),
            &connector("slack"),
            &SecretString::from("s".to_owned()),
            json!({}),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = Vault::new(Arc::new(
        LocalKeyProvider::load_or_create(&dir.path().join("master.key")).unwrap(),
    ));
    assert!(matches!(
        other
            .reveal(&store.tenant(&acme), &connector("slack"))
            .await,
        Err(VaultError::UnknownKek(_))
    ));
}

#[test]
fn the_local_key_file_is_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let first = LocalKeyProvider::load_or_create(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = LocalKeyProvider::load_or_create(&path).unwrap();
    use bulkhead_vault::KeyProvider;
    assert_eq!(first.current_kek_id(), again.current_kek_id());
    std::fs::write(&path, "not base64!").unwrap();
    assert!(matches!(
        LocalKeyProvider::load_or_create(&path),
        Err(VaultError::BadMasterKey(_))
    ));
    let short = SecretString::from("AAEC".to_owned());
    assert!(matches!(
        LocalKeyProvider::from_base64(&short),
        Err(VaultError::BadMasterKey(_))
    ));
}

async fn put_many(vault: &Vault, store: &Store, ctx: &TenantContext, count: usize) {
    for i in 0..count {
        vault
            .put(
                &store.tenant(ctx),
                &connector(&format!("c{i}")),
                &SecretString::from(format!("secret-{i}")),
                json!({}),
            )
            .await
            .unwrap();
    }
}

async fn assert_all_open(vault: &Vault, store: &Store, ctx: &TenantContext, count: usize) {
    for i in 0..count {
        let opened = vault
            .reveal(&store.tenant(ctx), &connector(&format!("c{i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(opened.secret.expose_secret(), format!("secret-{i}"));
    }
}

async fn rotating_a_data_key_reseals_every_secret_and_destroys_the_old_key(
    store: &Store,
    _db: &TestDb,
) {
    let vault = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    put_many(&vault, store, &acme, 3).await;
    put_many(&vault, store, &globex, 2).await;
    let before = store.tenant(&acme).data_keys().await.unwrap();
    let report = vault.rotate_data_key(&store.tenant(&acme)).await.unwrap();
    assert_eq!(
        (
            report.from_dek_version,
            report.to_dek_version,
            report.resealed,
            report.retired,
            report.resumed
        ),
        (1, 2, 3, 1, false)
    );
    let after = store.tenant(&acme).data_keys().await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].dek_version, 2);
    assert_ne!(after[0].wrapped_dek, before[0].wrapped_dek);
    assert!(
        store
            .tenant(&acme)
            .credentials()
            .await
            .unwrap()
            .iter()
            .all(|c| c.dek_version == 2)
    );
    assert_all_open(&vault, store, &acme, 3).await;
    assert_all_open(&self::vault(), store, &acme, 3).await;
    // Globex's key is untouched.
    assert_eq!(
        store.tenant(&globex).data_keys().await.unwrap()[0].dek_version,
        1
    );
    assert_all_open(&vault, store, &globex, 2).await;
    // Again: version 3.
    assert_eq!(
        vault
            .rotate_data_key(&store.tenant(&acme))
            .await
            .unwrap()
            .to_dek_version,
        3
    );
    assert_all_open(&vault, store, &acme, 3).await;
    // A tenant without secrets has nothing to rotate.
    let empty = TenantContext::for_tests(&tenant(store, "initech").await, &[Role::Owner]);
    assert_eq!(
        vault.rotate_data_key(&store.tenant(&empty)).await.unwrap(),
        bulkhead_vault::DekRotation::default()
    );
}

async fn a_data_key_rotation_runs_beside_100_concurrent_readers(store: &Store, _db: &TestDb) {
    let vault = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    put_many(&vault, store, &acme, 20).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..100)
        .map(|r| {
            let (vault, store, ctx, stop) =
                (vault.clone(), store.clone(), acme.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    let i = (r + reads as usize) % 20;
                    let opened = vault
                        .reveal(&store.tenant(&ctx), &connector(&format!("c{i}")))
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(opened.secret.expose_secret(), format!("secret-{i}"));
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for _ in 0..3 {
        vault.rotate_data_key(&store.tenant(&acme)).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for reader in readers {
        total += reader.await.unwrap();
    }
    assert!(total >= 100);
    assert_eq!(
        store.tenant(&acme).data_keys().await.unwrap()[0].dek_version,
        4
    );
    assert_all_open(&vault, store, &acme, 20).await;
}

async fn an_interrupted_data_key_rotation_is_resumed(store: &Store, _db: &TestDb) {
    let vault = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    put_many(&vault, store, &acme, 5).await;
    // An earlier run added version 2 and died before re-sealing anything.
    use bulkhead_vault::KeyProvider;
    let provider = LocalKeyProvider::from_base64(&SecretString::from(
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned(),
    ))
    .unwrap();
    let wrapped = provider
        .wrap(acme.tenant_id(), &bulkhead_vault::DataKey::generate())
        .await
        .unwrap();
    assert!(
        store
            .tenant(&acme)
            .start_data_key_rotation(1, &wrapped.kek_id, &wrapped.bytes)
            .await
            .unwrap()
    );
    // Meanwhile secrets still open, and a new write uses the new key.
    assert_all_open(&vault, store, &acme, 5).await;
    vault
        .put(
            &store.tenant(&acme),
            &connector("fresh"),
            &SecretString::from("new".to_owned()),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .tenant(&acme)
            .credential(&connector("fresh"))
            .await
            .unwrap()
            .unwrap()
            .dek_version,
        2
    );
    let report = vault.rotate_data_key(&store.tenant(&acme)).await.unwrap();
    assert!(report.resumed);
    assert_eq!(
        (report.to_dek_version, report.resealed, report.retired),
        (2, 5, 1)
    );
    assert_all_open(&vault, store, &acme, 5).await;
}

async fn rotating_the_key_encryption_key_rewraps_every_data_key(store: &Store, _db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let provider = Arc::new(LocalKeyProvider::load_or_create(&path).unwrap());
    let vault = Vault::new(provider.clone());
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    put_many(&vault, store, &acme, 2).await;
    put_many(&vault, store, &globex, 2).await;
    let old = vault.kek_id();
    // Another process (the CLI) rotates the key file; this vault sees it without a restart.
    let other = LocalKeyProvider::load_or_create(&path).unwrap();
    let new = other.add_current_key().unwrap();
    assert_ne!(old, new);
    assert_eq!(vault.kek_id(), new);
    assert_eq!(
        store
            .admin()
            .data_keys_not_wrapped_by(&new)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_all_open(&vault, store, &acme, 2).await;
    assert_eq!(
        vault
            .rewrap_all(&store.admin(), &Origin::cli())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        vault
            .rewrap_all(&store.admin(), &Origin::cli())
            .await
            .unwrap(),
        0,
        "idempotent"
    );
    assert!(
        store
            .admin()
            .data_keys_not_wrapped_by(&new)
            .await
            .unwrap()
            .is_empty()
    );
    let fresh = Vault::new(Arc::new(LocalKeyProvider::load_or_create(&path).unwrap()));
    assert_all_open(&fresh, store, &acme, 2).await;
    assert_all_open(&fresh, store, &globex, 2).await;
    let events = store
        .admin()
        .audit_events(acme.tenant_id(), 0, 100)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.action == "data_key.rewrapped"));
}

async fn deleting_a_tenant_shreds_its_keys(store: &Store, db: &TestDb) {
    let vault = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    put_many(&vault, store, &acme, 3).await;
    put_many(&vault, store, &globex, 1).await;
    let wrapped = store.tenant(&acme).data_keys().await.unwrap()[0]
        .wrapped_dek
        .clone();
    let sealed = store
        .tenant(&acme)
        .credential(&connector("c0"))
        .await
        .unwrap()
        .unwrap()
        .sealed;
    let receipt = store
        .admin()
        .delete_tenant(acme.tenant_id(), &Origin::cli())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (receipt.data_keys_destroyed, receipt.credentials_destroyed),
        (1, 3)
    );
    let dump = db.dump().await;
    for needle in [
        wrapped.clone(),
        sealed.clone(),
        lower_hex(&wrapped).into_bytes(),
        lower_hex(&sealed).into_bytes(),
    ] {
        assert!(
            !contains(&dump, &needle),
            "key material survived the deletion"
        );
    }
    assert_all_open(&vault, store, &globex, 1).await;
    let events = store
        .admin()
        .audit_events(acme.tenant_id(), 0, 100)
        .await
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.action, "tenant.deleted");
    assert_eq!(last.details["data_keys_destroyed"], 1);
}

/// What a dedicated worker is handed, after the round trip through the channel's JSON, opens
/// its own tenant's secrets, and neither another tenant's nor a new one of its own (it holds
/// no key-encryption key to wrap a data key with).
async fn a_worker_vault_opens_its_own_tenants_secrets_only(store: &Store, _db: &TestDb) {
    let control = vault();
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    let initech = TenantContext::for_tests(&tenant(store, "initech").await, &[Role::Owner]);
    for ctx in [&acme, &globex] {
        let secret = SecretString::from(format!("{}-token", ctx.tenant_id()));
        control
            .put(&store.tenant(ctx), &connector("github"), &secret, json!({}))
            .await
            .unwrap();
    }
    let handed = control.hand_over(&store.tenant(&acme)).await.unwrap();
    assert_eq!(handed.len(), 1);
    let text =
        serde_json::to_string(&handed.iter().map(HandedKey::to_wire).collect::<Vec<_>>()).unwrap();
    let received: Vec<HandedKeyWire> = serde_json::from_str(&text).unwrap();
    let keys = received
        .iter()
        .map(HandedKey::from_wire)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let worker = Vault::new(Arc::new(HandedKeyProvider::new(
        acme.tenant_id().clone(),
        keys,
    )));

    let revealed = worker
        .reveal(&store.tenant(&acme), &connector("github"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revealed.secret.expose_secret(), "acme-token");
    assert!(matches!(
        worker
            .reveal(&store.tenant(&globex), &connector("github"))
            .await,
        Err(VaultError::Decrypt)
    ));
    // A tenant without a data key yet would need one wrapped: the worker cannot.
    assert!(matches!(
        worker
            .put(
                &store.tenant(&initech),
                &connector("github"),
                &SecretString::from("x".to_owned()),
                json!({})
            )
            .await,
        Err(VaultError::NoKek)
    ));
}

/// The sealed-credential cache keeps each tenant's own lookup, sees this vault's writes at
/// once, and keeps a change made elsewhere (here: straight through the store, as another
/// process would) only until it is told to forget.
async fn kept_sealed_credentials_are_per_tenant_and_forgotten_on_change(
    store: &Store,
    _db: &TestDb,
) {
    let vault = vault().with_credential_cache(std::time::Duration::from_secs(60));
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    let slack = connector("slack");
    let secret = |s: &str| SecretString::from(s.to_owned());
    vault
        .put(
            &store.tenant(&acme),
            &slack,
            &secret("xoxb-acme-1"),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        revealed(&vault, store, &acme, &slack).await.as_deref(),
        Some("xoxb-acme-1")
    );
    assert_eq!(
        revealed(&vault, store, &globex, &slack).await,
        None,
        "acme's kept credential leaked"
    );
    // This vault's own writes are seen at once, by their tenant only.
    vault
        .put(
            &store.tenant(&globex),
            &slack,
            &secret("xoxb-globex"),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        revealed(&vault, store, &globex, &slack).await.as_deref(),
        Some("xoxb-globex")
    );
    vault
        .put(
            &store.tenant(&acme),
            &slack,
            &secret("xoxb-acme-2"),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        revealed(&vault, store, &acme, &slack).await.as_deref(),
        Some("xoxb-acme-2")
    );
    // A deletion elsewhere is seen once the vault forgets that tenant's, and only then.
    assert!(store.tenant(&acme).delete_credential(&slack).await.unwrap());
    assert_eq!(
        revealed(&vault, store, &acme, &slack).await.as_deref(),
        Some("xoxb-acme-2")
    );
    vault.forget_credentials(Some(acme.tenant_id()));
    assert_eq!(revealed(&vault, store, &acme, &slack).await, None);
    assert_eq!(
        revealed(&vault, store, &globex, &slack).await.as_deref(),
        Some("xoxb-globex")
    );
}

/// Past half its life a kept credential is still answered, to one caller with a renewal to
/// make (the egress makes it in a task of its own); the renewal reads the change made
/// elsewhere, and handed another tenant's store it renews that tenant's entry, never puts one
/// tenant's credential under another's.
async fn a_deferred_renewal_answers_the_kept_credential_and_renews_its_own_tenants_only(
    store: &Store,
    _db: &TestDb,
) {
    let ttl = std::time::Duration::from_secs(8);
    let elsewhere = vault(); // another process, on the same database and key
    let vault = vault().with_credential_cache(ttl);
    let acme = TenantContext::for_tests(&tenant(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&tenant(store, "globex").await, &[Role::Owner]);
    let (slack, github) = (connector("slack"), connector("github"));
    let entries = [(&acme, &slack), (&acme, &github), (&globex, &github)];
    // Each entry's secret names its tenant, connector and version: `acme-slack-1`.
    let put_all = |vault: Vault, version: u32| async move {
        for (ctx, connector) in entries {
            let value = format!("{}-{connector}-{version}", ctx.tenant_id());
            let value = SecretString::from(value);
            vault
                .put(&store.tenant(ctx), connector, &value, json!({}))
                .await
                .unwrap();
        }
    };
    put_all(vault.clone(), 1).await;
    let kept_at = std::time::Instant::now();
    for (ctx, connector) in entries {
        assert!(revealed(&vault, store, ctx, connector).await.is_some());
    }
    put_all(elsewhere, 2).await;
    tokio::time::sleep(ttl / 2 + std::time::Duration::from_millis(200)).await;

    let deferred = |ctx, connector| {
        let vault = vault.clone();
        async move {
            let (credential, renewal) = vault
                .reveal_deferring_renewal(&store.tenant(ctx), connector)
                .await
                .unwrap();
            let secret = credential.map(|c| c.secret.expose_secret().to_owned());
            (secret, renewal)
        }
    };
    let (kept, renewal) = deferred(&acme, &slack).await;
    assert_eq!(
        kept.as_deref(),
        Some("acme-slack-1"),
        "the kept credential answers"
    );
    let renewal = renewal.expect("the first caller past half its life renews");
    let (kept, again) = deferred(&acme, &slack).await;
    assert_eq!(kept.as_deref(), Some("acme-slack-1"));
    assert!(
        again.is_none(),
        "one caller renews, the others keep using the entry"
    );
    vault.renew(&store.tenant(&acme), renewal).await.unwrap();
    assert_eq!(
        revealed(&vault, store, &acme, &slack).await.as_deref(),
        Some("acme-slack-2"),
        "the renewal read the change made elsewhere"
    );

    // acme's renewal handed globex's store: globex's own entry is renewed, acme's is not
    // overwritten with globex's credential.
    let (_, misdirected) = deferred(&acme, &github).await;
    let misdirected = misdirected.expect("acme's github entry is due for renewal");
    vault
        .renew(&store.tenant(&globex), misdirected)
        .await
        .unwrap();
    assert!(
        kept_at.elapsed() < ttl,
        "the test ran too slowly to tell a renewal from an expiry"
    );
    assert_eq!(
        revealed(&vault, store, &acme, &github).await.as_deref(),
        Some("acme-github-1"),
        "acme's entry stays its own until it is renewed or expires"
    );
    assert_eq!(
        revealed(&vault, store, &globex, &github).await.as_deref(),
        Some("globex-github-2")
    );
}

async fn revealed(
    vault: &Vault,
    store: &Store,
    ctx: &TenantContext,
    connector: &ConnectorName,
) -> Option<String> {
    vault
        .reveal(&store.tenant(ctx), connector)
        .await
        .unwrap()
        .map(|c| c.secret.expose_secret().to_owned())
}
