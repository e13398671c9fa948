//! The credentials API: write-only secrets, readable metadata, per-tenant isolation, roles.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bulkhead_core::audit::verify_chain;
use bulkhead_core::{ConnectorName, TenantId};
use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CANARY: &str = "canary-0b5e4c2a-91f7-4d3e-8a6b-2c1d0e9f8a7b";

async fn put(server: &TestServer, key: &str, connector: &str, body: Value) -> (StatusCode, Value) {
    server
        .send(
            server
                .request(
                    Method::PUT,
                    &format!("/v1/credentials/{connector}"),
                    Some(key),
                )
                .json(&body),
        )
        .await
}

async fn credentials_are_write_only_and_per_tenant(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_tenant("acme").await;
    server.create_tenant("globex").await;
    let (acme_owner, _) = server.create_key("acme", "owner").await;
    let (acme_dev, _) = server.create_key("acme", "developer").await;
    let (acme_viewer, _) = server.create_key("acme", "viewer").await;
    let (globex_owner, _) = server.create_key("globex", "owner").await;

    let (status, created) = put(
        &server,
        &acme_owner,
        "slack",
        json!({"secret": CANARY, "fields": {"workspace": "acme"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 1);
    let (status, replaced) = put(
        &server,
        &acme_owner,
        "slack",
        json!({"secret": format!("{CANARY}-2"), "fields": {"workspace": "acme"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["version"], 2);
    let (status, _) = put(
        &server,
        &globex_owner,
        "slack",
        json!({"secret": "globex-secret"}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the same connector name is globex's own"
    );

    // Developers read metadata; nobody reads the secret.
    let (status, list) = server.tenant_get("/v1/credentials", &acme_dev).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["fields"], json!({"workspace": "acme"}));
    let (status, one) = server.tenant_get("/v1/credentials/slack", &acme_dev).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["version"], 2);
    for body in [&created, &replaced, &list, &one] {
        assert!(!body.to_string().contains(CANARY), "{body}");
        assert!(body.get("secret").is_none());
    }
    let (status, _) = put(&server, &acme_dev, "slack", json!({"secret": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "developers do not write");
    let (status, _) = server.tenant_get("/v1/credentials", &acme_viewer).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewers do not read");

    // Tenant B asks for A's connector by name: its own, or a 404 exactly like a missing one.
    let (_, globex_slack) = server
        .tenant_get("/v1/credentials/slack", &globex_owner)
        .await;
    assert_eq!(globex_slack["version"], 1);
    let (status_missing, missing) = server
        .tenant_get("/v1/credentials/jira", &globex_owner)
        .await;
    assert_eq!(status_missing, StatusCode::NOT_FOUND);
    let (_, _) = put(&server, &acme_owner, "jira", json!({"secret": "acme-jira"})).await;
    let (status_foreign, foreign) = server
        .tenant_get("/v1/credentials/jira", &globex_owner)
        .await;
    assert_eq!((status_foreign, foreign), (status_missing, missing));
    let (status, _) = server
        .send(server.request(Method::DELETE, "/v1/credentials/jira", Some(&globex_owner)))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "globex cannot delete acme's credential"
    );
    let (status, _) = server.tenant_get("/v1/credentials/jira", &acme_owner).await;
    assert_eq!(status, StatusCode::OK);

    // The secret opens for acme only, through the vault.
    let acme = server
        .store
        .admin()
        .get_tenant(&TenantId::try_from("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let ctx = bulkhead_core::auth::operator_context(&acme);
    let opened = vault_reveal(&server, &ctx, "slack").await;
    assert_eq!(opened, format!("{CANARY}-2"));

    // Nothing secret reached the audit trail, and the chain holds.
    let events = server
        .store
        .admin()
        .audit_events(&TenantId::try_from("acme").unwrap(), 0, 100)
        .await
        .unwrap();
    verify_chain(&TenantId::try_from("acme").unwrap(), &events).unwrap();
    assert!(!serde_json::to_string(&events).unwrap().contains(CANARY));
    assert!(
        events
            .iter()
            .any(|e| e.action == "credential.written" && e.resource == "credential/slack")
    );

    let (status, _) = server
        .send(server.request(Method::DELETE, "/v1/credentials/slack", Some(&acme_owner)))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .tenant_get("/v1/credentials/slack", &acme_owner)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert!(
        !server.db.holds(CANARY.as_bytes()).await,
        "canary in the database"
    );
    server.finish().await;
}

async fn vault_reveal(
    server: &TestServer,
    ctx: &bulkhead_core::TenantContext,
    connector: &str,
) -> String {
    let vault = common::vault();
    let credential = vault
        .reveal(
            &server.store.tenant(ctx),
            &ConnectorName::try_from(connector).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    secrecy::ExposeSecret::expose_secret(&credential.secret).to_owned()
}

#[tokio::test]
async fn credentials_are_write_only_and_per_tenant_on_sqlite() {
    credentials_are_write_only_and_per_tenant(Backend::Sqlite).await;
}

#[tokio::test]
async fn credentials_are_write_only_and_per_tenant_on_postgres() {
    credentials_are_write_only_and_per_tenant(Backend::Postgres).await;
}

#[tokio::test]
async fn bad_credential_input_is_refused_without_echoing_the_secret() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.create_tenant("acme").await;
    let (owner, _) = server.create_key("acme", "owner").await;
    let cases = [
        ("Bad_Name", json!({"secret": CANARY}), "connector"),
        ("slack", json!({"secret": ""}), "secret"),
        (
            "slack",
            json!({"secret": CANARY, "fields": [1, 2]}),
            "fields",
        ),
        (
            "slack",
            json!({"secret": CANARY, "fields": {"big": "x".repeat(9000)}}),
            "fields",
        ),
        ("slack", json!({"secret": CANARY, "token": CANARY}), "token"),
        ("slack", json!({"fields": {}}), "secret"),
        ("slack", json!({"secret": 12}), "secret"),
    ];
    for (connector, body, field) in cases {
        let (status, problem) = put(&server, &owner, connector, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{connector}: {problem}"
        );
        assert_eq!(problem["field"], field, "{problem}");
        assert!(!problem.to_string().contains(CANARY), "{problem}");
    }
    let (_, list) = server.tenant_get("/v1/credentials", &owner).await;
    assert_eq!(list, json!([]), "nothing was written");
    server.finish().await;
}
