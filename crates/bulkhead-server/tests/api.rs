//! The HTTP API against the real server: tenant isolation (on both backends), the control
//! plane, bad input, and the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bulkhead_core::TenantId;
use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn two_tenants_each_key_sees_only_its_own(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_tenant("acme").await;
    server.create_tenant("globex").await;
    let (acme_key, acme_key_id) = server.create_key("acme", "owner").await;
    let (globex_key, globex_key_id) = server.create_key("globex", "owner").await;
    let (acme_viewer, _) = server.create_key("acme", "viewer").await;

    for (key, tenant) in [(&acme_key, "acme"), (&globex_key, "globex")] {
        let (status, me) = server.tenant_get("/v1/whoami", key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me["tenant_id"], tenant);
        assert_eq!(me["region"], "eu-west");
        assert_eq!(me["isolation"], "shared");
        assert_eq!(me["roles"], json!(["owner"]));
        let (status, keys) = server.tenant_get("/v1/api-keys", key).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            keys.as_array()
                .unwrap()
                .iter()
                .all(|k| k["tenant_id"] == tenant),
            "{keys}"
        );
    }
    let (_, acme_keys) = server.tenant_get("/v1/api-keys", &acme_key).await;
    assert_eq!(acme_keys.as_array().unwrap().len(), 2);
    assert!(
        acme_keys.to_string().find("bhk_").is_some(),
        "prefixes are shown"
    );
    assert!(
        !acme_keys.to_string().contains(&acme_key),
        "keys are never shown again"
    );

    // Tenant B's key id, asked for by tenant A, answers exactly like an id that never existed.
    let (own_status, _) = server
        .tenant_get(&format!("/v1/api-keys/{acme_key_id}"), &acme_key)
        .await;
    assert_eq!(own_status, StatusCode::OK);
    let (foreign_status, foreign) = server
        .tenant_get(&format!("/v1/api-keys/{globex_key_id}"), &acme_key)
        .await;
    let (missing_status, missing) = server
        .tenant_get("/v1/api-keys/0000000000000000", &acme_key)
        .await;
    assert_eq!(foreign_status, StatusCode::NOT_FOUND);
    assert_eq!(foreign, missing);
    assert_eq!(missing_status, StatusCode::NOT_FOUND);

    // A role that may not read keys gets 403.
    let (status, problem) = server.tenant_get("/v1/api-keys", &acme_viewer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["code"], "forbidden");
    // ...while whoami is open to every role.
    assert_eq!(
        server.tenant_get("/v1/whoami", &acme_viewer).await.0,
        StatusCode::OK
    );
    server.finish().await;
}

#[tokio::test]
async fn two_tenants_each_key_sees_only_its_own_on_sqlite() {
    two_tenants_each_key_sees_only_its_own(Backend::Sqlite).await;
}

#[tokio::test]
async fn two_tenants_each_key_sees_only_its_own_on_postgres() {
    two_tenants_each_key_sees_only_its_own(Backend::Postgres).await;
}

#[tokio::test]
async fn the_control_plane_manages_tenants() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, created) = server
        .admin(Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme", "name": "Acme Corp", "region": "us-east", "isolation": "dedicated"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["isolation"], "dedicated");
    assert_eq!(created["region"], "us-east");
    assert_eq!(created["status"], "active");
    // The region defaults to the first configured one.
    let (_, defaulted) = server
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "zeta", "name": "Zeta"})),
        )
        .await;
    assert_eq!(defaulted["region"], "eu-west");
    assert_eq!(defaulted["isolation"], "shared");
    for id in ["bravo", "charlie", "delta"] {
        server.create_tenant(id).await;
    }

    let (status, page) = server
        .admin(Method::GET, "/admin/v1/tenants?limit=2", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "bravo"]);
    assert_eq!(page["next_after"], "bravo");
    let (_, page) = server
        .admin(Method::GET, "/admin/v1/tenants?limit=2&after=bravo", None)
        .await;
    let ids: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["charlie", "delta"]);
    let (_, page) = server
        .admin(Method::GET, "/admin/v1/tenants?limit=2&after=delta", None)
        .await;
    assert_eq!(page["next_after"], Value::Null);
    for query in [
        "limit=0",
        "limit=501",
        "limit=abc",
        "after=Not%20Valid",
        "bogus=1",
    ] {
        let (status, problem) = server
            .admin(Method::GET, &format!("/admin/v1/tenants?{query}"), None)
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {problem}"
        );
    }

    let (status, regional) = server
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/bravo",
            Some(json!({"allowed_regions": ["us-east", "us-east"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{regional}");
    assert_eq!(regional["allowed_regions"], json!(["us-east"]));
    assert_eq!(regional["region"], "eu-west");
    let (bravo_key, _) = server.create_key("bravo", "viewer").await;
    let (_, me) = server.tenant_get("/v1/whoami", &bravo_key).await;
    assert_eq!(me["allowed_regions"], json!(["us-east"]));

    let (status, renamed) = server
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(json!({"name": "Acme Inc"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renamed["name"], "Acme Inc");
    let (_, fetched) = server
        .admin(Method::GET, "/admin/v1/tenants/acme", None)
        .await;
    assert_eq!(fetched["name"], "Acme Inc");

    let (status, receipt) = server
        .admin(Method::DELETE, "/admin/v1/tenants/acme", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(receipt["tenant_id"], "acme");
    assert!(receipt["audit_seq"].as_i64().unwrap() >= 3);
    for (method, path) in [
        (Method::GET, "/admin/v1/tenants/acme"),
        (Method::DELETE, "/admin/v1/tenants/acme"),
        (Method::GET, "/admin/v1/tenants/acme/api-keys"),
        (Method::GET, "/admin/v1/tenants/Not-Valid"),
        (
            Method::DELETE,
            "/admin/v1/tenants/bravo/api-keys/0000000000000000",
        ),
    ] {
        let (status, problem) = server.admin(method.clone(), path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {problem}");
        assert_eq!(problem["code"], "not_found");
    }

    // Control-plane changes land in the tenant's own audit chain, with the request id.
    let response = server
        .request(
            Method::PATCH,
            "/admin/v1/tenants/bravo",
            Some(common::ADMIN_TOKEN),
        )
        .header("x-request-id", "trace-me-123")
        .json(&json!({"status": "suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-123");
    let events = server
        .store
        .admin()
        .audit_events(&TenantId::try_from("bravo").unwrap(), 0, 10)
        .await
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.action, "tenant.suspended");
    assert_eq!(last.actor, "admin");
    assert_eq!(last.request_id.as_deref(), Some("trace-me-123"));
    bulkhead_core::audit::verify_chain(&TenantId::try_from("bravo").unwrap(), &events).unwrap();

    // Without the admin token, nothing.
    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, _) = server
            .send(server.request(Method::GET, "/admin/v1/tenants", token))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    server.finish().await;
}

/// Counts what the database holds, to prove a refused request wrote nothing.
async fn footprint(server: &TestServer) -> (i64, usize) {
    let admin = server.store.admin();
    let tenants = admin.count_tenants().await.unwrap();
    let mut events = 0;
    for id in ["acme", "globex"] {
        events += admin
            .audit_events(&TenantId::try_from(id).unwrap(), 0, 10_000)
            .await
            .unwrap()
            .len();
    }
    (tenants, events)
}

#[tokio::test]
async fn bad_input_gets_a_clear_problem_and_writes_nothing() {
    let server = TestServer::start_with(Backend::Sqlite, 4096).await;
    server.create_tenant("acme").await;
    let before = footprint(&server).await;

    let cases: Vec<(&str, Value, StatusCode, &str, Option<&str>)> = vec![
        (
            "uppercase id",
            json!({"id": "Acme2", "name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("id"),
        ),
        (
            "empty id",
            json!({"id": "", "name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("id"),
        ),
        (
            "long id",
            json!({"id": "a".repeat(64), "name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("id"),
        ),
        (
            "underscore id",
            json!({"id": "acme_2", "name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("id"),
        ),
        (
            "leading dash",
            json!({"id": "-acme", "name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("id"),
        ),
        (
            "unicode id",
            json!({"id": "acmé", "name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("id"),
        ),
        (
            "id not a string",
            json!({"id": 7, "name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("id"),
        ),
        (
            "missing name",
            json!({"id": "globex"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            Some("name"),
        ),
        (
            "blank name",
            json!({"id": "globex", "name": "  "}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("name"),
        ),
        (
            "control chars in name",
            json!({"id": "globex", "name": "a\u{7}b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("name"),
        ),
        (
            "unknown field",
            json!({"id": "globex", "name": "x", "tenant": "acme"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_field",
            Some("tenant"),
        ),
        (
            "unknown isolation",
            json!({"id": "globex", "name": "x", "isolation": "private"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("isolation"),
        ),
        (
            "unknown region",
            json!({"id": "globex", "name": "x", "region": "mars"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("region"),
        ),
        (
            "unknown allowed region",
            json!({"id": "globex", "name": "x", "allowed_regions": ["eu-west", "mars"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("allowed_regions"),
        ),
        (
            "duplicate id",
            json!({"id": "acme", "name": "Impostor"}),
            StatusCode::CONFLICT,
            "conflict",
            None,
        ),
        (
            "not an object",
            json!([1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("."),
        ),
    ];
    for (name, body, status, code, field) in cases {
        let (got, problem) = server
            .admin(Method::POST, "/admin/v1/tenants", Some(body))
            .await;
        assert_eq!(got, status, "{name}: {problem}");
        assert_eq!(problem["code"], code, "{name}: {problem}");
        assert_eq!(problem["field"].as_str(), field, "{name}: {problem}");
        assert!(problem["type"].as_str().unwrap().ends_with(code));
    }

    let raw = |body: &'static str, content_type: &'static str| {
        server
            .request(Method::POST, "/admin/v1/tenants", Some(common::ADMIN_TOKEN))
            .header("content-type", content_type)
            .body(body)
    };
    let (status, problem) = server
        .send(raw("{\"id\": \"globex\", ", "application/json"))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_body"))
    );
    let (status, problem) = server.send(raw("", "application/json")).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_body"))
    );
    let (status, problem) = server
        .send(raw("{\"id\":\"globex\",\"name\":\"x\"}", "text/plain"))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let huge = json!({"id": "globex", "name": "x".repeat(10_000)});
    let (status, problem) = server
        .admin(Method::POST, "/admin/v1/tenants", Some(huge))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    let patch_cases = [
        (json!({"status": "deleted"}), "status"),
        (json!({"isolation": "quantum"}), "isolation"),
        (json!({"name": ""}), "name"),
    ];
    for (body, field) in patch_cases {
        let (status, problem) = server
            .admin(Method::PATCH, "/admin/v1/tenants/acme", Some(body))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["field"], field);
    }
    let (status, problem) = server
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/api-keys",
            Some(json!({"name": "k", "role": "superuser"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "role");

    assert_eq!(
        footprint(&server).await,
        before,
        "a refused request wrote something"
    );
    let (_, acme) = server
        .admin(Method::GET, "/admin/v1/tenants/acme", None)
        .await;
    assert_eq!(acme["name"], "acme org");
    server.finish().await;
}

#[tokio::test]
async fn unknown_routes_methods_and_operations_answer_cleanly() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, problem) = server
        .send(server.request(Method::GET, "/nope", None))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, problem) = server
        .send(server.request(Method::PUT, "/v1/whoami", None))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (status, health) = server
        .send(server.request(Method::GET, "/healthz", None))
        .await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, ready) = server
        .send(server.request(Method::GET, "/readyz", None))
        .await;
    assert_eq!(
        (status, ready["database"].as_str()),
        (StatusCode::OK, Some("sqlite"))
    );
    let response = server
        .request(Method::GET, "/healthz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"].len(),
        20,
        "a request id is generated"
    );

    server.store.close().await;
    let (status, problem) = server
        .send(server.request(Method::GET, "/readyz", None))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready"))
    );
    server.finish().await;
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, doc) = server
        .send(server.request(Method::GET, "/openapi.json", None))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
        ("/admin/v1/tenants", "get"),
        ("/admin/v1/tenants", "post"),
        ("/admin/v1/tenants/{id}", "get"),
        ("/admin/v1/tenants/{id}", "patch"),
        ("/admin/v1/tenants/{id}", "delete"),
        ("/admin/v1/tenants/{id}/api-keys", "get"),
        ("/admin/v1/tenants/{id}/models", "put"),
        ("/admin/v1/usage", "get"),
        ("/admin/v1/tenants/{id}/api-keys", "post"),
        ("/admin/v1/tenants/{id}/api-keys/{key_id}", "delete"),
        ("/admin/v1/tenants/{id}/issuers", "get"),
        ("/admin/v1/tenants/{id}/issuers", "post"),
        ("/admin/v1/tenants/{id}/issuers/{issuer_id}", "delete"),
        ("/v1/whoami", "get"),
        ("/v1/api-keys", "get"),
        ("/v1/api-keys/{key_id}", "get"),
        ("/v1/credentials", "get"),
        ("/v1/credentials/{connector}", "put"),
        ("/v1/credentials/{connector}", "get"),
        ("/v1/credentials/{connector}", "delete"),
        ("/v1/agents", "get"),
        ("/v1/agents/{name}", "put"),
        ("/v1/agents/{name}", "get"),
        ("/v1/agents/{name}", "delete"),
        ("/v1/agents/{name}/prompt-preview", "post"),
        ("/v1/agents/{name}/runs", "post"),
        ("/v1/runs/{id}", "get"),
        ("/v1/threads/{id}", "get"),
        ("/v1/chat/completions", "post"),
        ("/v1/usage", "get"),
        ("/v1/prompts", "get"),
        ("/v1/prompts/{name}", "put"),
        ("/v1/prompts/{name}", "get"),
        ("/v1/prompts/{name}", "delete"),
        ("/v1/knowledge", "get"),
        ("/v1/knowledge/{kb}", "delete"),
        ("/v1/knowledge/{kb}/documents", "post"),
        ("/v1/knowledge/{kb}/documents", "get"),
        ("/v1/knowledge/{kb}/documents/{id}", "delete"),
        ("/v1/knowledge/{kb}/search", "get"),
        ("/v1/tools", "get"),
        ("/v1/tools/{name}", "put"),
        ("/v1/tools/{name}", "get"),
        ("/v1/tools/{name}", "delete"),
        ("/v1/policies", "get"),
        ("/v1/policies/schema", "get"),
        ("/v1/policies/{name}", "put"),
        ("/v1/policies/{name}", "get"),
        ("/v1/policies/{name}", "delete"),
        ("/v1/approvals", "get"),
        ("/v1/approvals/{id}", "get"),
        ("/v1/approvals/{id}/decision", "post"),
        ("/mcp", "post"),
        ("/mcp", "get"),
        ("/metrics", "get"),
        ("/v1/audit", "get"),
        ("/v1/audit/export", "get"),
        ("/v1/audit/verify", "get"),
        ("/console/approvals", "get"),
        ("/console/sign-in", "post"),
        ("/console/sign-out", "post"),
        ("/console/approvals/{id}/decision", "post"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        expected.len(),
        "document and this list disagree: {:?}",
        paths.keys()
    );
    for (path, method) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
        // Every documented route is really served (anything but the 404 fallback).
        let url = path
            .replace("{id}", "acme")
            .replace("{key_id}", "0000000000000000")
            .replace("{issuer_id}", "x")
            .replace("{connector}", "slack")
            .replace("{name}", "triage")
            .replace("{kb}", "docs");
        let response = server
            .request(method.to_uppercase().parse().unwrap(), &url, None)
            .send()
            .await
            .unwrap();
        let status = response.status();
        // Unauthenticated, a routed path answers 200 or 401; only an unrouted one is 404/405.
        // The console's forms refuse a request without a form body first.
        let form_without_body =
            path.starts_with("/console/") && status == StatusCode::UNSUPPORTED_MEDIA_TYPE;
        assert!(
            status == StatusCode::OK || status == StatusCode::UNAUTHORIZED || form_without_body,
            "{method} {path} is not routed: {status}"
        );
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("admin_token") && schemes.contains_key("tenant_credential"));
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    server.finish().await;
}
