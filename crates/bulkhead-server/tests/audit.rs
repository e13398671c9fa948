//! The tenant's audit trail over HTTP: paging and filters, the NDJSON export, verification,
//! and tampering done straight in the database (edit, delete, reorder, insert, cut tail), on
//! both backends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditEvent, verify_chain};
use common::{Backend, TestServer, put_agent};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn trail(server: &TestServer, key: &str) -> Vec<AuditEvent> {
    let response = server
        .request(Method::GET, "/v1/audit/export", Some(key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn verify(server: &TestServer, key: &str) -> Value {
    let (status, report) = server.tenant_get("/v1/audit/verify", key).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    report
}

#[tokio::test]
async fn a_tenant_reads_pages_exports_and_verifies_its_own_trail_and_tampering_is_found() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let server = TestServer::start(backend).await;
        for tenant in ["acme", "globex"] {
            server.create_tenant(tenant).await;
        }
        let (owner, _) = server.create_key("acme", "owner").await;
        let (viewer, _) = server.create_key("acme", "viewer").await;
        let (developer, _) = server.create_key("acme", "developer").await;
        let (globex, _) = server.create_key("globex", "owner").await;
        for i in 0..6 {
            put_agent(
                &server,
                &owner,
                &format!("a{i}"),
                json!({"model": "m", "system_prompt": "x"}),
            )
            .await;
        }
        // Paging by sequence and filtering by action prefix and time.
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = server
                .tenant_get(&format!("/v1/audit?limit=4&after={after}"), &viewer)
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            seen.extend(
                page["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["seq"].as_i64().unwrap()),
            );
            match page["next_after"].as_i64() {
                Some(next) => after = next,
                None => break,
            }
        }
        let all = trail(&server, &owner).await;
        assert_eq!(seen, all.iter().map(|e| e.seq).collect::<Vec<_>>());
        assert!(all.iter().all(|e| e.tenant_id.as_str() == "acme"));
        assert!(all.len() >= 9, "{}", all.len());
        let (_, agents) = server.tenant_get("/v1/audit?action=agent.", &viewer).await;
        assert_eq!(agents["events"].as_array().unwrap().len(), 6);
        let (_, none) = server
            .tenant_get("/v1/audit?since=2999-01-01T00:00:00Z", &viewer)
            .await;
        assert_eq!(none["events"], json!([]));
        for bad in [
            "limit=0",
            "since=yesterday",
            "action=DROP%20TABLE",
            "after=x",
            "color=red",
        ] {
            let (status, _) = server
                .tenant_get(&format!("/v1/audit?{bad}"), &viewer)
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        let (status, _) = server.tenant_get("/v1/audit", &developer).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // Globex reads only Globex.
        let theirs = trail(&server, &globex).await;
        assert!(!theirs.is_empty() && theirs.iter().all(|e| e.tenant_id.as_str() == "globex"));

        let report = verify(&server, &viewer).await;
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["head_hash"], all.last().unwrap().hash);
        let head = verify_chain(&TenantId::try_from("acme").unwrap(), &all).unwrap();
        assert_eq!(report["head_hash"], head.head_hash);

        // Each kind of tampering, done in the database and undone before the next.
        let last = all.last().unwrap().seq;
        let original = all[2].clone();
        let tampering = [
            (
                "UPDATE audit_events SET details = '{\"version\":99}' WHERE tenant_id = 'acme' AND seq = 3".to_owned(),
                "edited",
            ),
            ("DELETE FROM audit_events WHERE tenant_id = 'acme' AND seq = 3".to_owned(), "missing"),
            (format!("DELETE FROM audit_events WHERE tenant_id = 'acme' AND seq = {last}"), "removed or added at the end"),
            (
                "UPDATE audit_events SET seq = -1 WHERE tenant_id = 'acme' AND seq = 3; \
                 UPDATE audit_events SET seq = 3 WHERE tenant_id = 'acme' AND seq = 4; \
                 UPDATE audit_events SET seq = 4 WHERE tenant_id = 'acme' AND seq = -1"
                    .to_owned(),
                "event 3",
            ),
        ];
        for (sql, expect) in tampering {
            // Keep a copy of the rows to put back.
            server
                .db
                .raw("CREATE TABLE audit_backup AS SELECT * FROM audit_events")
                .await;
            server.db.raw(&sql).await;
            let report = verify(&server, &viewer).await;
            assert_eq!(report["ok"], false, "{sql}: {report}");
            assert!(
                report["error"].as_str().unwrap().contains(expect),
                "{sql}: {report}"
            );
            server.db.raw("DELETE FROM audit_events").await;
            server
                .db
                .raw("INSERT INTO audit_events SELECT * FROM audit_backup")
                .await;
            server.db.raw("DROP TABLE audit_backup").await;
            assert_eq!(
                verify(&server, &viewer).await["ok"],
                true,
                "restored after {sql}"
            );
        }
        // An event inserted in the middle (a copy of another, renumbered) breaks the link.
        server
            .db
            .raw("UPDATE audit_events SET seq = seq + 1000000 WHERE tenant_id = 'acme' AND seq > 5; \
                  UPDATE audit_events SET seq = seq - 999999 WHERE tenant_id = 'acme' AND seq > 1000000")
            .await;
        let insert = format!(
            "INSERT INTO audit_events SELECT tenant_id, 6, occurred_at, actor, action, resource, outcome, request_id, details, prev_hash, hash, trace_id \
             FROM audit_events WHERE tenant_id = 'acme' AND seq = {}",
            original.seq
        );
        server.db.raw(&insert).await;
        let report = verify(&server, &viewer).await;
        assert_eq!(report["ok"], false, "{report}");
        server.finish().await;
    }
}
