//! The store conformance suite: every test runs once on SQLite and once on PostgreSQL, each on
//! a fresh database, and must behave identically on both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bulkhead_core::audit::{Origin, verify_chain};
use bulkhead_core::auth::generate_api_key;
use bulkhead_core::{Isolation, RegionName, Role, Tenant, TenantContext, TenantId, TenantStatus};
use bulkhead_store::testing::TestDb;
use bulkhead_store::{NewIssuer, NewTenant, Store, StoreError, TenantPatch};

bulkhead_store::on_both_backends!(
    tenants_are_created_read_listed_and_paged,
    a_duplicate_tenant_is_a_conflict_and_writes_nothing,
    suspend_and_reactivate_are_recorded,
    api_keys_are_found_for_auth_and_revoked_at_once,
    a_tenant_handle_sees_only_its_own_tenant,
    the_same_issuer_and_audience_cannot_serve_two_tenants,
    deleting_a_tenant_removes_its_data_and_keeps_its_trail,
    every_change_extends_a_verifiable_chain,
    a_change_whose_audit_append_fails_is_rolled_back,
    a_tampered_chain_fails_verification,
    concurrent_changes_for_one_tenant_keep_one_chain,
    a_query_without_a_tenant_filter_still_sees_one_tenant,
    group_committed_events_keep_each_tenants_chain,
    agents_are_versioned_and_prompts_are_per_tenant,
    usage_is_counted_per_tenant_and_model,
    expired_threads_go_with_an_audit_event,
    documents_replace_their_chunks_atomically_per_tenant,
    approvals_are_decided_once_and_their_runs_claimed_once,
    the_stream_cursor_follows_each_chain_and_never_moves_back,
);

fn id(s: &str) -> TenantId {
    TenantId::try_from(s).unwrap()
}

fn new_tenant(s: &str) -> NewTenant {
    NewTenant {
        id: id(s),
        name: format!("{} Corp", s.to_uppercase()),
        region: RegionName::try_from("local").unwrap(),
        isolation: Isolation::Shared,
        allowed_regions: Vec::new(),
    }
}

async fn create(store: &Store, s: &str) -> Tenant {
    store
        .admin()
        .create_tenant(new_tenant(s), &Origin::cli())
        .await
        .unwrap()
}

fn new_issuer(issuer_id: &str, iss: &str, aud: &str) -> NewIssuer {
    NewIssuer {
        id: bulkhead_core::IssuerId::try_from(issuer_id).unwrap(),
        issuer: iss.into(),
        audience: aud.into(),
        algorithms: vec!["RS256".into()],
        jwks: Some(r#"{"keys":[]}"#.into()),
        jwks_path: None,
        tenant_claim: "tenant_id".into(),
        roles_claim: "roles".into(),
        require_nbf: true,
    }
}

async fn tenants_are_created_read_listed_and_paged(store: &Store, _db: &TestDb) {
    for name in ["delta", "alpha", "charlie", "bravo", "echo"] {
        create(store, name).await;
    }
    let admin = store.admin();
    let alpha = admin.get_tenant(&id("alpha")).await.unwrap().unwrap();
    assert_eq!(alpha.name, "ALPHA Corp");
    assert_eq!(alpha.status, TenantStatus::Active);
    assert_eq!(alpha.isolation, Isolation::Shared);
    assert!(admin.get_tenant(&id("zulu")).await.unwrap().is_none());

    let first = admin.list_tenants(None, 2).await.unwrap();
    let ids: Vec<_> = first.items.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(ids, ["alpha", "bravo"]);
    assert_eq!(first.next_after.as_deref(), Some("bravo"));
    let second = admin.list_tenants(Some(&id("bravo")), 2).await.unwrap();
    let ids: Vec<_> = second.items.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(ids, ["charlie", "delta"]);
    let last = admin.list_tenants(Some(&id("delta")), 2).await.unwrap();
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.next_after, None);
    assert_eq!(admin.count_tenants().await.unwrap(), 5);
}

async fn a_duplicate_tenant_is_a_conflict_and_writes_nothing(store: &Store, _db: &TestDb) {
    create(store, "acme").await;
    let mut again = new_tenant("acme");
    again.name = "Impostor".into();
    let err = store
        .admin()
        .create_tenant(again, &Origin::cli())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict("tenant")), "{err:?}");
    let tenant = store
        .admin()
        .get_tenant(&id("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tenant.name, "ACME Corp");
    let events = store
        .admin()
        .audit_events(&id("acme"), 0, 100)
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        1,
        "the failed create must not append an event"
    );
}

async fn suspend_and_reactivate_are_recorded(store: &Store, _db: &TestDb) {
    create(store, "acme").await;
    let admin = store.admin();
    let suspend = TenantPatch {
        isolation: None,
        status: Some(TenantStatus::Suspended),
        ..TenantPatch::default()
    };
    let suspended = admin
        .update_tenant(&id("acme"), suspend.clone(), &Origin::cli())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(suspended.status, TenantStatus::Suspended);
    // Applying the same patch again changes nothing and records nothing.
    admin
        .update_tenant(&id("acme"), suspend, &Origin::cli())
        .await
        .unwrap();
    let reactivate = TenantPatch {
        isolation: None,
        status: Some(TenantStatus::Active),
        name: Some("Acme Inc".into()),
        allowed_regions: Some(vec![RegionName::try_from("eu-west").unwrap()]),
    };
    let active = admin
        .update_tenant(&id("acme"), reactivate, &Origin::cli())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.status, TenantStatus::Active);
    let stored = admin.get_tenant(&id("acme")).await.unwrap().unwrap();
    assert_eq!(
        stored.allowed_regions,
        [RegionName::try_from("eu-west").unwrap()]
    );
    assert_eq!(stored, active);
    assert_eq!(active.name, "Acme Inc");
    let actions: Vec<_> = admin
        .audit_events(&id("acme"), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["tenant.created", "tenant.suspended", "tenant.reactivated"]
    );
    assert!(
        admin
            .update_tenant(&id("nobody"), TenantPatch::default(), &Origin::cli())
            .await
            .unwrap()
            .is_none()
    );
}

async fn api_keys_are_found_for_auth_and_revoked_at_once(store: &Store, _db: &TestDb) {
    create(store, "acme").await;
    let admin = store.admin();
    let key = generate_api_key();
    let info = admin
        .create_api_key(&id("acme"), "ci", Role::Developer, &key, &Origin::cli())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.role, Role::Developer);
    assert!(info.display_prefix.starts_with("bhk_"));

    let (stored, tenant) = admin.api_key_for_auth(&key.id).await.unwrap().unwrap();
    assert_eq!(tenant.id, id("acme"));
    assert_eq!(stored.secret_hash, key.secret_hash);
    assert!(!stored.revoked);

    let revoked = admin
        .revoke_api_key(&id("acme"), &key.id, &Origin::cli())
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    let (stored, _) = admin.api_key_for_auth(&key.id).await.unwrap().unwrap();
    assert!(stored.revoked);

    // Revoking through another tenant's id finds nothing: the key is not theirs.
    create(store, "globex").await;
    let other = generate_api_key();
    admin
        .create_api_key(&id("acme"), "second", Role::Viewer, &other, &Origin::cli())
        .await
        .unwrap();
    assert!(
        admin
            .revoke_api_key(&id("globex"), &other.id, &Origin::cli())
            .await
            .unwrap()
            .is_none()
    );
    let (still, _) = admin.api_key_for_auth(&other.id).await.unwrap().unwrap();
    assert!(!still.revoked);

    assert!(
        admin
            .create_api_key(
                &id("nobody"),
                "x",
                Role::Viewer,
                &generate_api_key(),
                &Origin::cli()
            )
            .await
            .unwrap()
            .is_none()
    );
    let keys = admin.list_api_keys(&id("acme")).await.unwrap().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(admin.list_api_keys(&id("nobody")).await.unwrap().is_none());
}

async fn a_tenant_handle_sees_only_its_own_tenant(store: &Store, _db: &TestDb) {
    let acme = create(store, "acme").await;
    let globex = create(store, "globex").await;
    let admin = store.admin();
    for (tenant, name) in [(&acme, "a1"), (&acme, "a2"), (&globex, "g1")] {
        admin
            .create_api_key(
                &tenant.id,
                name,
                Role::Viewer,
                &generate_api_key(),
                &Origin::cli(),
            )
            .await
            .unwrap();
    }
    // Tenant B tries: its handle answers with its own data only.
    let ctx = TenantContext::for_tests(&globex, &[Role::Owner]);
    let scoped = store.tenant(&ctx);
    let names: Vec<_> = scoped
        .api_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["g1"]);
    assert_eq!(scoped.tenant().await.unwrap().unwrap().id, globex.id);
    let events = scoped.audit_events(0, 100).await.unwrap();
    assert!(events.iter().all(|e| e.tenant_id == globex.id));
    assert_eq!(events.len(), 2);
}

async fn the_same_issuer_and_audience_cannot_serve_two_tenants(store: &Store, _db: &TestDb) {
    create(store, "acme").await;
    create(store, "globex").await;
    let admin = store.admin();
    admin
        .create_issuer(
            &id("acme"),
            new_issuer("idp", "https://idp.example", "bulkhead"),
            &Origin::cli(),
        )
        .await
        .unwrap()
        .unwrap();
    let err = admin
        .create_issuer(
            &id("globex"),
            new_issuer("idp", "https://idp.example", "bulkhead"),
            &Origin::cli(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The same issuer with another audience is a separate binding.
    admin
        .create_issuer(
            &id("globex"),
            new_issuer("idp", "https://idp.example", "globex-app"),
            &Origin::cli(),
        )
        .await
        .unwrap()
        .unwrap();
    let err = admin
        .create_issuer(
            &id("acme"),
            new_issuer("idp", "https://other.example", "x"),
            &Origin::cli(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict("issuer")), "{err:?}");

    let found = admin.issuers_for_auth("https://idp.example").await.unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(
        admin
            .list_issuers(&id("acme"))
            .await
            .unwrap()
            .unwrap()
            .len(),
        1
    );
    let issuer_id = bulkhead_core::IssuerId::try_from("idp").unwrap();
    assert!(
        admin
            .delete_issuer(&id("acme"), &issuer_id, &Origin::cli())
            .await
            .unwrap()
    );
    assert!(
        !admin
            .delete_issuer(&id("acme"), &issuer_id, &Origin::cli())
            .await
            .unwrap()
    );
    assert_eq!(
        admin
            .issuers_for_auth("https://idp.example")
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn deleting_a_tenant_removes_its_data_and_keeps_its_trail(store: &Store, db: &TestDb) {
    let acme_tenant = create(store, "acme").await;
    create(store, "globex").await;
    let acme_ctx = TenantContext::for_tests(&acme_tenant, &[Role::Owner]);
    let scoped = store.tenant(&acme_ctx);
    scoped
        .ensure_knowledge_base("kb", "local", 2)
        .await
        .unwrap();
    scoped
        .put_document("kb", &document("d", "h", &["canary-deleted-tenant"]))
        .await
        .unwrap();
    let admin = store.admin();
    let key = generate_api_key();
    admin
        .create_api_key(&id("acme"), "k", Role::Owner, &key, &Origin::cli())
        .await
        .unwrap();
    admin
        .create_issuer(
            &id("acme"),
            new_issuer("idp", "https://idp.example", "aud"),
            &Origin::cli(),
        )
        .await
        .unwrap();
    let receipt = admin
        .delete_tenant(&id("acme"), &Origin::cli())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.api_keys_deleted, 1);
    assert_eq!(receipt.issuers_deleted, 1);
    assert!(admin.get_tenant(&id("acme")).await.unwrap().is_none());
    assert!(admin.api_key_for_auth(&key.id).await.unwrap().is_none());
    assert!(
        admin
            .issuers_for_auth("https://idp.example")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        admin
            .delete_tenant(&id("acme"), &Origin::cli())
            .await
            .unwrap()
            .is_none()
    );
    assert!(admin.get_tenant(&id("globex")).await.unwrap().is_some());
    // Its knowledge goes with it: documents, chunk text and embeddings.
    assert!(scoped.knowledge_index_source("kb").await.unwrap().is_none());
    assert!(scoped.chunks_by_id("kb", &[1]).await.unwrap().is_empty());
    assert!(
        !db.holds(b"canary-deleted-tenant").await,
        "a deleted tenant's chunk text is still on disk"
    );

    let events = admin.audit_events(&id("acme"), 0, 100).await.unwrap();
    assert_eq!(events.last().unwrap().action, "tenant.deleted");
    assert_eq!(events.last().unwrap().seq, receipt.audit_seq);
    verify_chain(&id("acme"), &events).unwrap();
}

async fn every_change_extends_a_verifiable_chain(store: &Store, _db: &TestDb) {
    create(store, "acme").await;
    create(store, "globex").await;
    let admin = store.admin();
    let origin = Origin::admin(bulkhead_core::RequestId::from_header_or_generate(Some(
        "req-42",
    )));
    let key = generate_api_key();
    admin
        .create_api_key(&id("acme"), "k", Role::Owner, &key, &origin)
        .await
        .unwrap();
    admin
        .revoke_api_key(&id("acme"), &key.id, &origin)
        .await
        .unwrap();
    let events = admin.audit_events(&id("acme"), 0, 100).await.unwrap();
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["tenant.created", "api_key.created", "api_key.revoked"]
    );
    let seqs: Vec<_> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(events[0].prev_hash, bulkhead_core::audit::GENESIS_HASH);
    assert_eq!(events[1].prev_hash, events[0].hash);
    assert_eq!(events[2].prev_hash, events[1].hash);
    assert_eq!(events[1].actor, "admin");
    assert_eq!(events[1].request_id.as_deref(), Some("req-42"));
    // The trace the request was part of is stored and hashed with the event.
    assert_eq!(
        events[1].trace_id.as_deref(),
        Some(origin.request_id.as_ref().unwrap().trace_id())
    );
    let head = verify_chain(&id("acme"), &events).unwrap();
    assert_eq!(head.head_hash, events[2].hash);
    // No secret reaches the log: the key's hash and the key are absent.
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&key.secret_hash));
    assert!(!text.contains(secrecy::ExposeSecret::expose_secret(&key.key)));

    // Globex's chain is its own, starting at 1.
    let other = admin.audit_events(&id("globex"), 0, 100).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].seq, 1);
    // Reading after a sequence number pages.
    assert_eq!(
        admin.audit_events(&id("acme"), 2, 100).await.unwrap().len(),
        1
    );
}

async fn the_stream_cursor_follows_each_chain_and_never_moves_back(store: &Store, _db: &TestDb) {
    let acme = create(store, "acme").await;
    create(store, "globex").await;
    let admin = store.admin();
    let behind = |backlog: Vec<bulkhead_store::StreamBacklog>| {
        let mut rows: Vec<_> = backlog
            .into_iter()
            .map(|b| (b.tenant.to_string(), b.published_seq, b.head_seq))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(
        behind(admin.audit_stream_backlog().await.unwrap()),
        [("acme".into(), 0, 1), ("globex".into(), 0, 1)]
    );
    admin.mark_audit_published(&id("acme"), 1).await.unwrap();
    admin
        .update_tenant(
            &id("globex"),
            TenantPatch {
                isolation: None,
                status: Some(TenantStatus::Suspended),
                ..TenantPatch::default()
            },
            &Origin::cli(),
        )
        .await
        .unwrap();
    admin.mark_audit_published(&id("globex"), 2).await.unwrap();
    // A slower publisher's older acknowledgement does not undo a newer one.
    admin.mark_audit_published(&id("globex"), 1).await.unwrap();
    assert!(admin.audit_stream_backlog().await.unwrap().is_empty());
    let ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    store
        .tenant(&ctx)
        .record_event(bulkhead_core::audit::AuditDraft {
            action: "test.event",
            resource: "x".into(),
            outcome: bulkhead_core::audit::Outcome::Success,
            details: serde_json::json!({}),
        })
        .await
        .unwrap();
    assert_eq!(
        behind(admin.audit_stream_backlog().await.unwrap()),
        [("acme".into(), 1, 2)]
    );
}

async fn a_change_whose_audit_append_fails_is_rolled_back(store: &Store, db: &TestDb) {
    if db.is_postgres() {
        db.raw(
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'audit refused'; END $$; \
             CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events \
             FOR EACH ROW WHEN (NEW.action = 'tenant.created') EXECUTE FUNCTION refuse_audit();",
        )
        .await;
    } else {
        db.raw(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events \
             WHEN NEW.action = 'tenant.created' BEGIN SELECT RAISE(ABORT, 'audit refused'); END;",
        )
        .await;
    }
    let err = store
        .admin()
        .create_tenant(new_tenant("acme"), &Origin::cli())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert!(
        store
            .admin()
            .get_tenant(&id("acme"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.admin().count_tenants().await.unwrap(), 0);
    assert!(
        store
            .admin()
            .audit_events(&id("acme"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_tampered_chain_fails_verification(store: &Store, db: &TestDb) {
    create(store, "acme").await;
    for i in 0..3 {
        store
            .admin()
            .update_tenant(
                &id("acme"),
                TenantPatch {
                    isolation: None,
                    name: Some(format!("Acme {i}")),
                    ..TenantPatch::default()
                },
                &Origin::cli(),
            )
            .await
            .unwrap();
    }
    let events = store
        .admin()
        .audit_events(&id("acme"), 0, 100)
        .await
        .unwrap();
    verify_chain(&id("acme"), &events).unwrap();

    db.raw("UPDATE audit_events SET actor = 'someone-else' WHERE tenant_id = 'acme' AND seq = 2")
        .await;
    let events = store
        .admin()
        .audit_events(&id("acme"), 0, 100)
        .await
        .unwrap();
    assert!(matches!(
        verify_chain(&id("acme"), &events),
        Err(bulkhead_core::audit::ChainError::Tampered { seq: 2 })
    ));

    db.raw("DELETE FROM audit_events WHERE tenant_id = 'acme' AND seq = 2")
        .await;
    let events = store
        .admin()
        .audit_events(&id("acme"), 0, 100)
        .await
        .unwrap();
    assert!(matches!(
        verify_chain(&id("acme"), &events),
        Err(bulkhead_core::audit::ChainError::Sequence {
            seq: 3,
            expected_seq: 2
        })
    ));
}

async fn concurrent_changes_for_one_tenant_keep_one_chain(store: &Store, _db: &TestDb) {
    create(store, "acme").await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .admin()
                    .create_api_key(
                        &id("acme"),
                        &format!("k{i}"),
                        Role::Viewer,
                        &generate_api_key(),
                        &Origin::cli(),
                    )
                    .await
                    .unwrap()
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let events = store
        .admin()
        .audit_events(&id("acme"), 0, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 17);
    let head = verify_chain(&id("acme"), &events).unwrap();
    assert_eq!(head.last_seq, 17);
}

async fn a_query_without_a_tenant_filter_still_sees_one_tenant(store: &Store, _db: &TestDb) {
    let acme = create(store, "acme").await;
    let globex = create(store, "globex").await;
    for tenant in [&acme, &globex] {
        store
            .admin()
            .create_api_key(
                &tenant.id,
                "k",
                Role::Viewer,
                &generate_api_key(),
                &Origin::cli(),
            )
            .await
            .unwrap();
    }
    // Give both tenants a row in every tenant table.
    for tenant in [&acme, &globex] {
        let ctx = TenantContext::for_tests(tenant, &[Role::Owner]);
        let scoped = store.tenant(&ctx);
        let connector = bulkhead_core::ConnectorName::try_from("slack").unwrap();
        scoped.create_data_key("kek", b"wrapped").await.unwrap();
        scoped
            .put_credential(
                &connector,
                bulkhead_store::CredentialWrite::Create,
                1,
                1,
                b"sealed",
                &serde_json::json!({}),
            )
            .await
            .unwrap();
        scoped
            .put_agent(
                &bulkhead_core::AgentName::try_from("a").unwrap(),
                &serde_json::json!({}),
            )
            .await
            .unwrap();
        scoped
            .put_prompt(&bulkhead_core::PromptName::try_from("p").unwrap(), "x")
            .await
            .unwrap();
        scoped.create_thread("thr_1", "ada").await.unwrap();
        scoped
            .append_thread("thr_1", &[("user", "hi")])
            .await
            .unwrap();
        let agent_name = bulkhead_core::AgentName::try_from("a").unwrap();
        scoped
            .start_run(
                "run_1",
                Some("thr_1"),
                &agent_name,
                1,
                "hi",
                bulkhead_store::RunProcess {
                    id: 4242,
                    isolation: bulkhead_core::Isolation::Dedicated,
                },
            )
            .await
            .unwrap();
        scoped.record_usage("fast", None, 10, 2);
        scoped.record_tool_call(Some("a"), "slack.post_message", false);
        store.flush_usage().await.unwrap();
        scoped
            .ensure_knowledge_base("kb", "local", 2)
            .await
            .unwrap();
        scoped
            .put_document("kb", &document("d", "h", &["x"]))
            .await
            .unwrap();
        scoped
            .put_toolset("slack", &serde_json::json!({"kind": "slack"}))
            .await
            .unwrap();
        scoped
            .put_policy("p", "permit(principal, action, resource);")
            .await
            .unwrap();
        scoped
            .start_run(
                "run_2",
                None,
                &agent_name,
                1,
                "act",
                bulkhead_store::RunProcess {
                    id: 4242,
                    isolation: bulkhead_core::Isolation::Dedicated,
                },
            )
            .await
            .unwrap();
        scoped
            .request_approval(
                &bulkhead_store::ApprovalDraft {
                    approval_id: "apr_1".into(),
                    run_id: "run_2".into(),
                    agent: "a".into(),
                    tool: "slack.post_message".into(),
                    tool_call_id: "call_1".into(),
                    action: "post a message to".into(),
                    target: "#x".into(),
                    arguments: "{}".into(),
                    expires_at: i64::MAX,
                },
                &bulkhead_store::RunProgress {
                    transcript: serde_json::json!([]),
                    steps: 1,
                    input_tokens: 0,
                    output_tokens: 0,
                },
            )
            .await
            .unwrap();
        scoped
            .create_console_session(
                &format!("hash-{}", tenant.id),
                &bulkhead_core::auth::StoredSession {
                    tenant_id: tenant.id.clone(),
                    principal: bulkhead_core::auth::SessionPrincipal::User {
                        issuer: "i".into(),
                        subject: "s".into(),
                    },
                    roles: [Role::Approver].into(),
                    expires_at: i64::MAX,
                },
                "csrf",
            )
            .await
            .unwrap();
        store
            .admin()
            .create_issuer(
                &tenant.id,
                new_issuer(tenant.id.as_str(), "https://idp", tenant.id.as_str()),
                &Origin::cli(),
            )
            .await
            .unwrap();
    }
    for tenant in [&acme, &globex] {
        let granted = store
            .admin()
            .set_tenant_models(&tenant.id, &["premium".to_owned()], &Origin::cli())
            .await
            .unwrap();
        assert_eq!(granted.as_deref(), Some(&["premium".to_owned()][..]));
    }
    let ctx = TenantContext::for_tests(&acme, &[Role::Owner]);
    let scoped = store.tenant(&ctx);
    match store.kind() {
        bulkhead_store::BackendKind::Postgres => {
            // Row-level security, not the query, keeps globex out.
            for table in [
                "tenants",
                "api_keys",
                "audit_events",
                "audit_heads",
                "jwt_issuers",
                "tenant_keys",
                "credentials",
                "agents",
                "agent_versions",
                "prompts",
                "tenant_models",
                "threads",
                "thread_messages",
                "runs",
                "usage_daily",
                "tool_usage_daily",
                "knowledge_bases",
                "kb_documents",
                "kb_chunks",
                "toolsets",
                "tenant_policies",
                "policy_heads",
                "approvals",
                "console_sessions",
            ] {
                let seen = scoped.unfiltered_tenant_ids(table).await.unwrap();
                assert!(
                    !seen.is_empty() && seen.iter().all(|t| t == "acme"),
                    "{table}: {seen:?}"
                );
            }
            assert_eq!(
                scoped.unfiltered_tenant_ids("api_keys").await.unwrap(),
                ["acme"]
            );
            assert_eq!(
                scoped.database_role().await.unwrap().as_deref(),
                Some("bulkhead_tenant")
            );
        }
        bulkhead_store::BackendKind::Sqlite => {
            // SQLite has no row-level security: the filter in every query is the only guard,
            // which is why the tenant handle's methods take no tenant id. Document the gap by
            // asserting today's behaviour.
            let seen = scoped.unfiltered_tenant_ids("api_keys").await.unwrap();
            assert_eq!(seen.len(), 2);
            assert_eq!(scoped.database_role().await.unwrap(), None);
        }
        bulkhead_store::BackendKind::ControlPlane => unreachable!("conformance runs on a database"),
    }
}

async fn group_committed_events_keep_each_tenants_chain(store: &Store, _db: &TestDb) {
    let acme = create(store, "acme").await;
    let globex = create(store, "globex").await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let tenant = if i % 2 == 0 {
                acme.clone()
            } else {
                globex.clone()
            };
            tokio::spawn(async move {
                let ctx = TenantContext::for_tests(&tenant, &[Role::Owner]);
                store
                    .tenant(&ctx)
                    .record_event(bulkhead_core::audit::AuditDraft {
                        action: "egress.call",
                        resource: format!("endpoint/e{i}"),
                        outcome: bulkhead_core::audit::Outcome::Success,
                        details: serde_json::json!({"i": i}),
                    })
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for tenant in [&acme, &globex] {
        let events = store
            .admin()
            .audit_events(&tenant.id, 0, 1000)
            .await
            .unwrap();
        assert_eq!(events.len(), 101, "{}", tenant.id);
        verify_chain(&tenant.id, &events).unwrap();
        let parity = if tenant.id == acme.id { 0 } else { 1 };
        assert!(
            events[1..]
                .iter()
                .all(|e| e.details["i"].as_i64().unwrap() % 2 == parity)
        );
    }
}

async fn agents_are_versioned_and_prompts_are_per_tenant(store: &Store, _db: &TestDb) {
    use bulkhead_core::{AgentName, PromptName};
    let acme = TenantContext::for_tests(&create(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&create(store, "globex").await, &[Role::Owner]);
    let triage = AgentName::try_from("triage").unwrap();
    let a = store.tenant(&acme);
    assert_eq!(
        a.put_agent(&triage, &serde_json::json!({"model": "m1"}))
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        a.put_agent(&triage, &serde_json::json!({"model": "m2"}))
            .await
            .unwrap()
            .version,
        2
    );
    let current = a.agent(&triage).await.unwrap().unwrap();
    assert_eq!(
        (current.version, current.spec["model"].as_str()),
        (2, Some("m2"))
    );
    assert_eq!(
        a.agent_version(&triage, 1).await.unwrap().unwrap().spec["model"],
        "m1"
    );
    // Globex has its own namespace: same name, its own versions, and no view of acme's.
    let g = store.tenant(&globex);
    assert!(g.agent(&triage).await.unwrap().is_none());
    assert!(g.agent_version(&triage, 1).await.unwrap().is_none());
    assert_eq!(
        g.put_agent(&triage, &serde_json::json!({"model": "g"}))
            .await
            .unwrap()
            .version,
        1
    );
    assert!(
        !g.delete_agent(&AgentName::try_from("nobody").unwrap())
            .await
            .unwrap()
    );
    // Deleting hides the agent but keeps its versions; re-creating continues the numbering.
    assert!(a.delete_agent(&triage).await.unwrap());
    assert!(a.agent(&triage).await.unwrap().is_none());
    assert!(a.agents().await.unwrap().is_empty());
    assert!(a.agent_version(&triage, 2).await.unwrap().is_some());
    assert_eq!(
        a.put_agent(&triage, &serde_json::json!({"model": "m3"}))
            .await
            .unwrap()
            .version,
        3
    );
    assert_eq!(g.agents().await.unwrap().len(), 1);

    let tone = PromptName::try_from("tone").unwrap();
    assert_eq!(a.put_prompt(&tone, "Be brief.").await.unwrap().version, 1);
    assert_eq!(
        a.put_prompt(&tone, "Be very brief.").await.unwrap().version,
        2
    );
    assert_eq!(
        a.prompt(&tone).await.unwrap().unwrap().template,
        "Be very brief."
    );
    assert!(g.prompt(&tone).await.unwrap().is_none());
    assert!(g.prompts().await.unwrap().is_empty());
    assert!(!g.delete_prompt(&tone).await.unwrap());
    assert!(a.delete_prompt(&tone).await.unwrap());
    assert!(a.prompts().await.unwrap().is_empty());
    let actions: Vec<_> = store
        .admin()
        .audit_events(acme.tenant_id(), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.contains(&"agent.written".to_owned())
            && actions.contains(&"prompt.deleted".to_owned())
    );
}

async fn usage_is_counted_per_tenant_and_model(store: &Store, _db: &TestDb) {
    let acme = TenantContext::for_tests(&create(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&create(store, "globex").await, &[Role::Owner]);
    let (a, g) = (store.tenant(&acme), store.tenant(&globex));
    a.record_usage("fast", None, 10, 2);
    a.record_usage("fast", None, 5, 1);
    // Spent today counts what is still in memory.
    assert_eq!(a.tokens_spent_today().await.unwrap(), 18);
    store.flush_usage().await.unwrap();
    // Counts after a flush add to the same row; an agent's use is a row of its own.
    a.record_usage("fast", None, 1, 1);
    a.record_usage("fast", Some("triage"), 4, 4);
    a.record_usage("claude", Some("triage"), 7, 3);
    g.record_usage("fast", None, 100, 50);
    a.record_tool_call(Some("triage"), "slack.post_message", false);
    a.record_tool_call(Some("triage"), "slack.post_message", true);
    g.record_tool_call(None, "jira.create_issue", false);
    // Written and unwritten counts together, once each, per tenant.
    assert_eq!(a.tokens_spent_today().await.unwrap(), 18 + 2 + 8 + 10);
    assert_eq!(g.tokens_spent_today().await.unwrap(), 150);
    let usage = a.usage().await.unwrap();
    let line = |model: &str, agent: &str| {
        usage
            .iter()
            .find(|r| r.model == model && r.agent == agent)
            .cloned()
            .unwrap()
    };
    assert_eq!(usage.len(), 3);
    assert_eq!(
        (
            line("fast", "").requests,
            line("fast", "").input_tokens,
            line("fast", "").output_tokens
        ),
        (3, 16, 4)
    );
    assert_eq!(line("fast", "triage").input_tokens, 4);
    assert_eq!(line("claude", "triage").requests, 1);
    let tools = a.tool_usage().await.unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(
        (
            tools[0].agent.as_str(),
            tools[0].tool.as_str(),
            tools[0].calls,
            tools[0].failures
        ),
        ("triage", "slack.post_message", 2, 1)
    );
    let theirs = g.usage().await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].input_tokens, 100);
    assert_eq!(g.tool_usage().await.unwrap()[0].agent, "");
    // After everything is written, the total is unchanged (nothing counted twice).
    assert_eq!(a.tokens_spent_today().await.unwrap(), 38);
    let day = &usage[0].day;
    let report = store.admin().usage_report(day, day).await.unwrap();
    assert_eq!(report.len(), 4);
    assert_eq!(report[3].tenant_id, "globex");
}

async fn expired_threads_go_with_an_audit_event(store: &Store, _db: &TestDb) {
    let acme = TenantContext::for_tests(&create(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&create(store, "globex").await, &[Role::Owner]);
    let (a, g) = (store.tenant(&acme), store.tenant(&globex));
    a.create_thread("thr_old", "").await.unwrap();
    a.append_thread("thr_old", &[("user", "hi")]).await.unwrap();
    let cutoff = bulkhead_core::timestamp::now_millis() + 1;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    g.create_thread("thr_new", "").await.unwrap();
    assert_eq!(store.admin().expire_threads(cutoff).await.unwrap(), 1);
    assert!(a.thread_messages("thr_old", "").await.unwrap().is_none());
    assert!(g.thread_messages("thr_new", "").await.unwrap().is_some());
    let events = store
        .admin()
        .audit_events(acme.tenant_id(), 0, 100)
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.action == "thread.expired"),
        "{events:?}"
    );
    verify_chain(&id("acme"), &events).unwrap();
    assert_eq!(store.admin().expire_threads(cutoff).await.unwrap(), 0);
}

fn document<'a>(
    doc_id: &'a str,
    hash: &'a str,
    texts: &[&str],
) -> bulkhead_store::DocumentWrite<'a> {
    static METADATA: std::sync::LazyLock<serde_json::Value> =
        std::sync::LazyLock::new(|| serde_json::json!({"source": "test"}));
    bulkhead_store::DocumentWrite {
        doc_id,
        title: "Title",
        content_type: "text/plain",
        metadata: &METADATA,
        content_hash: hash,
        bytes: 10,
        chunks: texts
            .iter()
            .enumerate()
            .map(|(i, text)| bulkhead_store::NewChunk {
                position: i as i64,
                heading_path: vec!["H".into()],
                text: (*text).into(),
                embedding: vec![i as f32, 1.0],
            })
            .collect(),
    }
}

async fn documents_replace_their_chunks_atomically_per_tenant(store: &Store, _db: &TestDb) {
    use bulkhead_store::DocumentOutcome;
    let acme = TenantContext::for_tests(&create(store, "acme").await, &[Role::Owner]);
    let globex = TenantContext::for_tests(&create(store, "globex").await, &[Role::Owner]);
    let (a, g) = (store.tenant(&acme), store.tenant(&globex));
    assert!(a.knowledge_head("kb").await.unwrap().is_none());
    let err = a
        .put_document("kb", &document("d1", "h1", &["x"]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let created = a.ensure_knowledge_base("kb", "local", 2).await.unwrap();
    assert_eq!((created.generation, created.documents), (0, 0));
    // A second ensure keeps the first embedder.
    assert_eq!(
        a.ensure_knowledge_base("kb", "other", 9)
            .await
            .unwrap()
            .embedder,
        "local"
    );

    let first = a
        .put_document("kb", &document("d1", "h1", &["one", "two"]))
        .await
        .unwrap();
    assert_eq!(first.outcome, DocumentOutcome::Created);
    assert_eq!((first.generation_before, first.generation), (0, 1));
    assert_eq!(first.added_chunk_ids, [1, 2]);
    let same = a
        .put_document("kb", &document("d1", "h1", &["one", "two"]))
        .await
        .unwrap();
    assert_eq!(same.outcome, DocumentOutcome::Unchanged);
    assert_eq!(same.generation, 1);
    let replaced = a
        .put_document("kb", &document("d1", "h2", &["three"]))
        .await
        .unwrap();
    assert_eq!(replaced.outcome, DocumentOutcome::Replaced);
    assert_eq!(replaced.removed_chunk_ids, [1, 2]);
    assert_eq!(replaced.added_chunk_ids, [3]);

    let (version, chunks) = a.knowledge_index_source("kb").await.unwrap().unwrap();
    assert_eq!(version.generation, 2);
    assert_eq!(version.epoch, created.created_at);
    assert_eq!(chunks.len(), 1);
    assert_eq!((chunks[0].chunk_id, chunks[0].text.as_str()), (3, "three"));
    assert_eq!(chunks[0].embedding, [0.0, 1.0]);
    let shown = a.chunks_by_id("kb", &[1, 3]).await.unwrap();
    assert_eq!(shown.len(), 1, "a replaced chunk is gone");
    assert_eq!(shown[0].heading_path, ["H"]);
    assert_eq!(shown[0].title, "Title");

    // Another tenant: the same names are its own, and nothing of acme's is reachable.
    assert!(g.knowledge_base("kb").await.unwrap().is_none());
    assert!(g.knowledge_index_source("kb").await.unwrap().is_none());
    assert!(g.chunks_by_id("kb", &[3]).await.unwrap().is_empty());
    assert!(g.delete_document("kb", "d1").await.unwrap().is_none());
    g.ensure_knowledge_base("kb", "local", 2).await.unwrap();
    assert!(g.documents("kb").await.unwrap().is_empty());
    assert!(g.chunks_by_id("kb", &[3]).await.unwrap().is_empty());

    let listed = a.knowledge_bases().await.unwrap();
    assert_eq!((listed[0].documents, listed[0].chunks), (1, 1));
    let deleted = a.delete_document("kb", "d1").await.unwrap().unwrap();
    assert_eq!(deleted.removed_chunk_ids, [3]);
    assert!(a.chunks_by_id("kb", &[3]).await.unwrap().is_empty());
    assert!(a.delete_document("kb", "d1").await.unwrap().is_none());
    assert_eq!(a.knowledge_head("kb").await.unwrap().unwrap().generation, 3);

    // Chunk ids are never reused, even across a delete.
    let again = a
        .put_document("kb", &document("d1", "h1", &["one"]))
        .await
        .unwrap();
    assert_eq!(again.added_chunk_ids, [4]);

    let events = store
        .admin()
        .audit_events(acme.tenant_id(), 0, 100)
        .await
        .unwrap();
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("knowledge"))
            .count(),
        5,
        "{actions:?}"
    );
    verify_chain(&id("acme"), &events).unwrap();
}

async fn approvals_are_decided_once_and_their_runs_claimed_once(store: &Store, _db: &TestDb) {
    use bulkhead_store::{ApprovalDraft, DecisionOutcome, RunProgress};
    let acme = create(store, "acme").await;
    let globex = create(store, "globex").await;
    let ctx = TenantContext::for_tests(&acme, &[Role::Approver]);
    let scoped = store.tenant(&ctx);
    let agent = bulkhead_core::AgentName::try_from("a").unwrap();
    let progress = RunProgress {
        transcript: serde_json::json!([{"role": "user", "content": "go"}]),
        steps: 1,
        input_tokens: 3,
        output_tokens: 4,
    };
    let draft = |id: &str, run: &str, expires_at: i64| ApprovalDraft {
        approval_id: id.into(),
        run_id: run.into(),
        agent: "a".into(),
        tool: "slack.post_message".into(),
        tool_call_id: "call_1".into(),
        action: "post a message to".into(),
        target: "#x".into(),
        arguments: "{}".into(),
        expires_at,
    };
    scoped
        .start_run(
            "run_1",
            None,
            &agent,
            1,
            "go",
            bulkhead_store::RunProcess {
                id: 4242,
                isolation: bulkhead_core::Isolation::Dedicated,
            },
        )
        .await
        .unwrap();
    scoped
        .request_approval(&draft("apr_1", "run_1", i64::MAX), &progress)
        .await
        .unwrap();
    let run = scoped.run("run_1").await.unwrap().unwrap();
    assert_eq!(
        (run.status.as_str(), run.steps, run.output_tokens),
        ("awaiting_approval", 1, 4)
    );
    // The process that ran it is on the record, for auditors of the dedicated tier.
    assert_eq!(
        (run.process_id, run.isolation.as_deref()),
        (Some(4242), Some("dedicated"))
    );
    // A run whose worker died is failed once, by whoever sees it first; an ended one stays.
    scoped
        .start_run(
            "run_lost",
            None,
            &agent,
            1,
            "go",
            bulkhead_store::RunProcess::current(bulkhead_core::Isolation::Dedicated),
        )
        .await
        .unwrap();
    assert!(
        scoped
            .fail_running_run("run_lost", "worker_lost", "gone")
            .await
            .unwrap()
    );
    assert!(
        !scoped
            .fail_running_run("run_lost", "worker_lost", "gone")
            .await
            .unwrap()
    );
    assert!(
        !scoped
            .fail_running_run("run_1", "worker_lost", "gone")
            .await
            .unwrap()
    );
    let lost = scoped.run("run_lost").await.unwrap().unwrap();
    assert_eq!(
        (lost.status.as_str(), lost.error_code.as_deref()),
        ("failed", Some("worker_lost"))
    );
    // A dead worker's runs are failed by its process id, this tenant's only: another
    // tenant's run that happens to record the same id (another node) is left running.
    let dead_worker = bulkhead_store::RunProcess {
        id: 777,
        isolation: bulkhead_core::Isolation::Dedicated,
    };
    for run_id in ["run_dead_a", "run_dead_b"] {
        scoped
            .start_run(run_id, None, &agent, 1, "go", dead_worker)
            .await
            .unwrap();
    }
    let globex_ctx = TenantContext::for_tests(&globex, &[Role::Developer]);
    let globex_store = store.tenant(&globex_ctx);
    globex_store
        .start_run("run_dead_g", None, &agent, 1, "go", dead_worker)
        .await
        .unwrap();
    assert_eq!(
        scoped
            .fail_runs_of_process(777, "worker_lost", "gone")
            .await
            .unwrap(),
        vec!["run_dead_a".to_owned(), "run_dead_b".to_owned()]
    );
    assert!(
        scoped
            .fail_runs_of_process(777, "worker_lost", "gone")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        globex_store
            .run("run_dead_g")
            .await
            .unwrap()
            .unwrap()
            .status,
        "running"
    );
    // A paused run cannot pause again, and nobody claims it while its approval is pending.
    let resumer = bulkhead_store::RunProcess {
        id: 9001,
        isolation: bulkhead_core::Isolation::Dedicated,
    };
    assert!(matches!(
        scoped
            .request_approval(&draft("apr_2", "run_1", i64::MAX), &progress)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!scoped.claim_paused_run("run_1", resumer).await.unwrap());
    // Another tenant sees nothing and decides nothing.
    let other = TenantContext::for_tests(&globex, &[Role::Approver]);
    let theirs = store.tenant(&other);
    assert!(theirs.approval("apr_1").await.unwrap().is_none());
    assert!(
        theirs
            .decide_approval("apr_1", true, "")
            .await
            .unwrap()
            .is_none()
    );
    assert!(theirs.approvals(None, 10).await.unwrap().is_empty());
    // The first decision wins; the run is claimed exactly once.
    assert!(
        matches!(scoped.decide_approval("apr_1", true, "ok").await.unwrap(), Some(DecisionOutcome::Decided(r)) if r.status == "approved")
    );
    assert!(
        matches!(scoped.decide_approval("apr_1", false, "no").await.unwrap(), Some(DecisionOutcome::AlreadyDecided(r)) if r.status == "approved")
    );
    let claims = tokio::join!(
        scoped.claim_paused_run("run_1", resumer),
        scoped.claim_paused_run("run_1", resumer),
        scoped.claim_paused_run("run_1", resumer),
        scoped.claim_paused_run("run_1", resumer)
    );
    let claims = [claims.0, claims.1, claims.2, claims.3];
    assert_eq!(claims.iter().filter(|c| *c.as_ref().unwrap()).count(), 1);
    let claimed = scoped.run("run_1").await.unwrap().unwrap();
    assert_eq!(
        (claimed.status.as_str(), claimed.process_id),
        ("running", Some(9001)),
        "the process that resumes a run is recorded as the run's"
    );
    // An overdue approval expires in the sweep, with an event in its tenant's chain, and its
    // run becomes resumable; a decision after expiry is refused.
    scoped
        .start_run(
            "run_2",
            None,
            &agent,
            1,
            "go",
            bulkhead_store::RunProcess {
                id: 4242,
                isolation: bulkhead_core::Isolation::Dedicated,
            },
        )
        .await
        .unwrap();
    scoped
        .request_approval(&draft("apr_3", "run_2", 1), &progress)
        .await
        .unwrap();
    assert!(matches!(
        scoped.decide_approval("apr_3", true, "").await.unwrap(),
        Some(DecisionOutcome::AlreadyDecided(_))
    ));
    let expired = store
        .admin()
        .expire_approvals(bulkhead_core::timestamp::now_millis())
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].tenant_id.as_str(), expired[0].run_id.as_str()),
        ("acme", "run_2")
    );
    let resumable = store.admin().resumable_runs().await.unwrap();
    assert_eq!(
        resumable
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>(),
        ["run_2"]
    );
    let events = store.admin().audit_events(&acme.id, 0, 100).await.unwrap();
    assert!(events.iter().any(|e| e.action == "approval.expired"));
    // A gateway approval (no run) lets exactly one identical call through once approved.
    scoped
        .request_call_approval(&ApprovalDraft {
            run_id: String::new(),
            ..draft("apr_4", "", i64::MAX)
        })
        .await
        .unwrap();
    assert!(
        scoped
            .consume_approval("a", "slack.post_message", "{}")
            .await
            .unwrap()
            .is_none()
    );
    scoped.decide_approval("apr_4", true, "").await.unwrap();
    assert!(
        scoped
            .consume_approval("a", "slack.post_message", "{\"x\":1}")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        scoped
            .consume_approval("b", "slack.post_message", "{}")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        theirs
            .consume_approval("a", "slack.post_message", "{}")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        scoped
            .consume_approval("a", "slack.post_message", "{}")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        scoped
            .consume_approval("a", "slack.post_message", "{}")
            .await
            .unwrap()
            .is_none()
    );
}
