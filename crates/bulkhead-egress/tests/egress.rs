//! Egress against a real local HTTP server: the right tenant's credential on every request,
//! residency, retries, timeouts, the circuit breaker, the anomaly guard and redaction.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::any;
use bulkhead_core::audit::Origin;
use bulkhead_core::config::{AuthScheme, EndpointConfig, EndpointKind};
use bulkhead_core::{ConnectorName, RegionName, Role, TenantContext, TenantId};
use bulkhead_egress::{Egress, EgressError, OutboundRequest, check_credential_owner};
use bulkhead_store::testing::TestDb;
use bulkhead_store::{Store, TenantPatch};
use bulkhead_vault::{Credential, LocalKeyProvider, Vault};
use secrecy::SecretString;
use serde_json::{Value, json};

#[derive(Default)]
struct Upstream {
    requests: AtomicUsize,
    mismatches: AtomicUsize,
    flaky_left: AtomicUsize,
    limited_left: AtomicUsize,
    /// Expected bearer per tenant name in the path.
    expected: Mutex<HashMap<String, String>>,
}

async fn check(
    State(up): State<Arc<Upstream>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> StatusCode {
    up.requests.fetch_add(1, Ordering::SeqCst);
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let expected = up
        .expected
        .lock()
        .unwrap()
        .get(&tenant)
        .cloned()
        .unwrap_or_default();
    if got == format!("Bearer {expected}") {
        StatusCode::OK
    } else {
        up.mismatches.fetch_add(1, Ordering::SeqCst);
        StatusCode::FORBIDDEN
    }
}

async fn echo(State(up): State<Arc<Upstream>>, uri: Uri, headers: HeaderMap) -> axum::Json<Value> {
    up.requests.fetch_add(1, Ordering::SeqCst);
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    axum::Json(json!({"headers": headers, "query": uri.query()}))
}

async fn flaky(State(up): State<Arc<Upstream>>) -> StatusCode {
    up.requests.fetch_add(1, Ordering::SeqCst);
    let left = up.flaky_left.load(Ordering::SeqCst);
    if left > 0 {
        up.flaky_left.store(left - 1, Ordering::SeqCst);
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn limited(State(up): State<Arc<Upstream>>) -> axum::response::Response {
    up.requests.fetch_add(1, Ordering::SeqCst);
    let left = up.limited_left.load(Ordering::SeqCst);
    if left > 0 {
        up.limited_left.store(left - 1, Ordering::SeqCst);
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

async fn slow(State(up): State<Arc<Upstream>>) -> StatusCode {
    up.requests.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    StatusCode::OK
}

async fn fail(State(up): State<Arc<Upstream>>) -> StatusCode {
    up.requests.fetch_add(1, Ordering::SeqCst);
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn upstream() -> (String, Arc<Upstream>) {
    let state = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/check/{tenant}", any(check))
        .route("/echo", any(echo))
        .route("/flaky", any(flaky))
        .route("/limited", any(limited))
        .route("/slow", any(slow))
        .route("/fail", any(fail))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, state)
}

fn endpoint(
    name: &str,
    base: &str,
    region: &str,
    connector: Option<&str>,
    auth: AuthScheme,
) -> EndpointConfig {
    EndpointConfig {
        name: name.into(),
        base_url: base.into(),
        region: RegionName::try_from(region).unwrap(),
        kind: EndpointKind::Tool,
        connector: connector.map(|c| ConnectorName::try_from(c).unwrap()),
        auth,
        timeout_ms: 2_000,
        max_retries: 2,
    }
}

struct World {
    store: Store,
    db: TestDb,
    vault: Vault,
    up: Arc<Upstream>,
    base: String,
}

impl World {
    async fn new() -> Self {
        let (store, db) = TestDb::sqlite().await;
        let key = SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
        let vault = Vault::new(Arc::new(LocalKeyProvider::from_base64(&key).unwrap()));
        let (base, up) = upstream().await;
        for (id, secret) in [("acme", "acme-secret-111"), ("globex", "globex-secret-222")] {
            let tenant = bulkhead_store::testing::create_tenant(&store, id, "eu-west").await;
            let ctx = TenantContext::for_tests(&tenant, &[Role::Owner]);
            vault
                .put(
                    &store.tenant(&ctx),
                    &ConnectorName::try_from("tool").unwrap(),
                    &SecretString::from(secret.to_owned()),
                    json!({"username": id}),
                )
                .await
                .unwrap();
            up.expected.lock().unwrap().insert(id.into(), secret.into());
        }
        World {
            store,
            db,
            vault,
            up,
            base,
        }
    }

    async fn ctx(&self, id: &str) -> TenantContext {
        let tenant = self
            .store
            .admin()
            .get_tenant(&TenantId::try_from(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        TenantContext::for_tests(&tenant, &[Role::Owner])
    }

    fn egress(&self, endpoints: &[EndpointConfig]) -> Egress {
        Egress::new(endpoints, self.store.clone(), self.vault.clone()).unwrap()
    }

    async fn events(&self, id: &str, action: &str) -> Vec<bulkhead_core::audit::AuditEvent> {
        self.store
            .admin()
            .audit_events(&TenantId::try_from(id).unwrap(), 0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == action)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_interleaved_calls_each_carry_their_own_tenants_secret() {
    let world = World::new().await;
    let egress = world.egress(&[endpoint(
        "tool",
        &world.base,
        "eu-west",
        Some("tool"),
        AuthScheme::Bearer {},
    )]);
    let acme = world.ctx("acme").await;
    let globex = world.ctx("globex").await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (egress, ctx) = (
            egress.clone(),
            if i % 2 == 0 {
                acme.clone()
            } else {
                globex.clone()
            },
        );
        tasks.push(tokio::spawn(async move {
            let path = format!("/check/{}", ctx.tenant_id());
            egress
                .for_tenant(&ctx)
                .send("tool", OutboundRequest::get(path))
                .await
                .unwrap()
                .status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(world.up.requests.load(Ordering::SeqCst), 1000);
    assert_eq!(world.up.mismatches.load(Ordering::SeqCst), 0);
    let calls = world.events("acme", "egress.call").await;
    assert_eq!(calls.len(), 500);
    assert_eq!(calls[0].details["endpoint"], "tool");
    assert_eq!(calls[0].details["region"], "eu-west");
    assert_eq!(calls[0].details["status"], 200);
    assert_eq!(calls[0].details["method"], "GET");
    assert_eq!(calls[0].details["path"], "/check/acme");
    assert_eq!(calls[0].details["request_bytes"], 0);
    assert_eq!(calls[0].details["response_bytes"], 0);
    assert!(calls[0].details["latency_ms"].is_u64());
    bulkhead_core::audit::verify_chain(
        &TenantId::try_from("acme").unwrap(),
        &world
            .store
            .admin()
            .audit_events(&TenantId::try_from("acme").unwrap(), 0, 100_000)
            .await
            .unwrap(),
    )
    .unwrap();
    world.db.finish(world.store).await;
}

#[tokio::test]
async fn an_endpoint_outside_the_tenants_regions_is_refused_before_any_byte_leaves() {
    let world = World::new().await;
    let egress = world.egress(&[endpoint(
        "us-tool",
        &world.base,
        "us-east",
        Some("tool"),
        AuthScheme::Bearer {},
    )]);
    let acme = world.ctx("acme").await;
    let error = egress
        .for_tenant(&acme)
        .send("us-tool", OutboundRequest::get("/check/acme"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, EgressError::ResidencyViolation { .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), "residency_violation");
    assert_eq!(world.up.requests.load(Ordering::SeqCst), 0);
    let denied = world.events("acme", "egress.denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].details["region"], "us-east");

    // Allowing the region lets the same call through.
    world
        .store
        .admin()
        .update_tenant(
            acme.tenant_id(),
            TenantPatch {
                isolation: None,
                allowed_regions: Some(vec![RegionName::try_from("us-east").unwrap()]),
                ..TenantPatch::default()
            },
            &Origin::cli(),
        )
        .await
        .unwrap();
    let acme = world.ctx("acme").await;
    let response = egress
        .for_tenant(&acme)
        .send("us-tool", OutboundRequest::get("/check/acme"))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    world.db.finish(world.store).await;
}

#[tokio::test]
async fn each_auth_scheme_presents_the_credential_and_callers_cannot_override_it() {
    let world = World::new().await;
    let egress = world.egress(&[
        endpoint(
            "header",
            &world.base,
            "eu-west",
            Some("tool"),
            AuthScheme::Header {
                name: "x-api-key".into(),
            },
        ),
        endpoint(
            "basic",
            &world.base,
            "eu-west",
            Some("tool"),
            AuthScheme::Basic {},
        ),
        endpoint(
            "query",
            &world.base,
            "eu-west",
            Some("tool"),
            AuthScheme::Query {
                param: "key".into(),
            },
        ),
        endpoint(
            "bearer",
            &world.base,
            "eu-west",
            Some("tool"),
            AuthScheme::Bearer {},
        ),
        endpoint("public", &world.base, "eu-west", None, AuthScheme::None {}),
    ]);
    let acme = world.ctx("acme").await;
    let call = |name: &'static str| {
        let (egress, acme) = (egress.clone(), acme.clone());
        async move {
            let mut request = OutboundRequest::get("/echo?x=1");
            request
                .headers
                .push(("authorization".into(), "Bearer forged-by-caller".into()));
            let response = egress.for_tenant(&acme).send(name, request).await.unwrap();
            serde_json::from_slice::<Value>(&response.body).unwrap()
        }
    };
    assert_eq!(
        call("header").await["headers"]["x-api-key"],
        "acme-secret-111"
    );
    let basic = call("basic").await;
    let expected = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "acme:acme-secret-111"
        )
    );
    assert_eq!(basic["headers"]["authorization"], expected);
    assert_eq!(call("query").await["query"], "x=1&key=acme-secret-111");
    assert_eq!(
        call("bearer").await["headers"]["authorization"],
        "Bearer acme-secret-111"
    );
    let public = call("public").await;
    assert!(public["headers"].get("authorization").is_none(), "{public}");
    assert!(!public.to_string().contains("acme-secret"));
    world.db.finish(world.store).await;
}

#[tokio::test]
async fn retries_honour_idempotency_and_retry_after() {
    let world = World::new().await;
    let egress = world.egress(&[endpoint(
        "tool",
        &world.base,
        "eu-west",
        Some("tool"),
        AuthScheme::Bearer {},
    )]);
    let acme = world.ctx("acme").await;

    world.up.flaky_left.store(2, Ordering::SeqCst);
    let response = egress
        .for_tenant(&acme)
        .send("tool", OutboundRequest::get("/flaky"))
        .await
        .unwrap();
    assert_eq!((response.status, response.attempts), (200, 3));

    // A POST may have taken effect upstream: a 503 is not retried.
    world.up.flaky_left.store(1, Ordering::SeqCst);
    let response = egress
        .for_tenant(&acme)
        .send("tool", OutboundRequest::post_json("/flaky", &json!({})))
        .await
        .unwrap();
    assert_eq!((response.status, response.attempts), (503, 1));
    // ...unless the caller marks it safe to repeat, as model completions are.
    world.up.flaky_left.store(1, Ordering::SeqCst);
    let response = egress
        .for_tenant(&acme)
        .send(
            "tool",
            OutboundRequest::post_json("/flaky", &json!({})).retry_safe(),
        )
        .await
        .unwrap();
    assert_eq!((response.status, response.attempts), (200, 2));

    // 429 is retried for any method, after the upstream's Retry-After.
    world.up.limited_left.store(1, Ordering::SeqCst);
    let started = Instant::now();
    let response = egress
        .for_tenant(&acme)
        .send("tool", OutboundRequest::post_json("/limited", &json!({})))
        .await
        .unwrap();
    assert_eq!((response.status, response.attempts), (200, 2));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After was not honoured"
    );
    world.db.finish(world.store).await;
}

#[tokio::test]
async fn timeouts_and_a_failing_endpoint_trip_the_circuit_breaker() {
    let world = World::new().await;
    let mut slow = endpoint(
        "slow",
        &world.base,
        "eu-west",
        Some("tool"),
        AuthScheme::Bearer {},
    );
    slow.timeout_ms = 200;
    slow.max_retries = 0;
    let mut failing = endpoint(
        "failing",
        &world.base,
        "eu-west",
        Some("tool"),
        AuthScheme::Bearer {},
    );
    failing.max_retries = 0;
    let egress = world.egress(&[slow, failing]);
    let acme = world.ctx("acme").await;
    let error = egress
        .for_tenant(&acme)
        .send("slow", OutboundRequest::get("/slow"))
        .await
        .unwrap_err();
    assert!(matches!(error, EgressError::Timeout(_)), "{error:?}");

    for _ in 0..5 {
        let response = egress
            .for_tenant(&acme)
            .send("failing", OutboundRequest::get("/fail"))
            .await
            .unwrap();
        assert_eq!(response.status, 500);
    }
    let before = world.up.requests.load(Ordering::SeqCst);
    let error = egress
        .for_tenant(&acme)
        .send("failing", OutboundRequest::get("/fail"))
        .await
        .unwrap_err();
    assert!(matches!(error, EgressError::CircuitOpen(_)), "{error:?}");
    assert_eq!(error.code(), "upstream_unavailable");
    assert_eq!(
        world.up.requests.load(Ordering::SeqCst),
        before,
        "an open circuit sends nothing"
    );
    // Other endpoints are unaffected... and other tenants share the endpoint's breaker, since
    // it protects the upstream, not the tenant.
    world.db.finish(world.store).await;
}

#[tokio::test]
async fn bad_requests_fail_before_anything_is_sent() {
    let world = World::new().await;
    let egress = world.egress(&[
        endpoint(
            "tool",
            &world.base,
            "eu-west",
            Some("tool"),
            AuthScheme::Bearer {},
        ),
        endpoint(
            "other",
            &world.base,
            "eu-west",
            Some("missing"),
            AuthScheme::Bearer {},
        ),
    ]);
    let acme = world.ctx("acme").await;
    for path in ["//evil.test/x", "relative", "/../../x#y"] {
        let error = egress
            .for_tenant(&acme)
            .send("tool", OutboundRequest::get(path))
            .await
            .unwrap_err();
        assert!(
            matches!(error, EgressError::InvalidPath),
            "{path}: {error:?}"
        );
    }
    assert!(matches!(
        egress
            .for_tenant(&acme)
            .send("nope", OutboundRequest::get("/echo"))
            .await,
        Err(EgressError::UnknownEndpoint(_))
    ));
    assert!(matches!(
        egress
            .for_tenant(&acme)
            .send("other", OutboundRequest::get("/echo"))
            .await,
        Err(EgressError::MissingCredential(_))
    ));
    assert_eq!(world.up.requests.load(Ordering::SeqCst), 0);
    for bad in [
        endpoint("x", "ftp://127.0.0.1", "eu-west", None, AuthScheme::None {}),
        endpoint(
            "x",
            "http://user:pw@127.0.0.1",
            "eu-west",
            None,
            AuthScheme::None {},
        ),
        endpoint(
            "x",
            "http://127.0.0.1/?key=abc",
            "eu-west",
            None,
            AuthScheme::None {},
        ),
        // A model endpoint's credential is always its connector's; a tool endpoint may
        // leave the choice to each toolset (below).
        EndpointConfig {
            kind: EndpointKind::Model,
            ..endpoint(
                "x",
                "http://127.0.0.1",
                "eu-west",
                None,
                AuthScheme::Bearer {},
            )
        },
    ] {
        assert!(Egress::new(&[bad], world.store.clone(), world.vault.clone()).is_err());
    }
    // A tool endpoint with no connector: a call that chooses none is refused before any I/O,
    // and only tool and MCP endpoints accept a chosen credential.
    let open = Egress::new(
        &[
            endpoint("t", &world.base, "eu-west", None, AuthScheme::Bearer {}),
            EndpointConfig {
                kind: EndpointKind::Model,
                ..endpoint(
                    "m",
                    &world.base,
                    "eu-west",
                    Some("openai"),
                    AuthScheme::Bearer {},
                )
            },
        ],
        world.store.clone(),
        world.vault.clone(),
    )
    .unwrap();
    assert!(matches!(
        open.for_tenant(&acme)
            .send("t", OutboundRequest::get("/echo"))
            .await,
        Err(EgressError::MissingCredential(_))
    ));
    let chosen = Some(bulkhead_core::ConnectorName::try_from("other").unwrap());
    assert!(matches!(
        open.for_tenant(&acme)
            .send("m", OutboundRequest::get("/echo").with_credential(chosen))
            .await,
        Err(EgressError::Config(_))
    ));
    assert_eq!(world.up.requests.load(Ordering::SeqCst), 0);
    world.db.finish(world.store).await;
}

#[tokio::test]
async fn a_credential_of_another_tenant_is_refused() {
    let world = World::new().await;
    let acme = world.ctx("acme").await;
    let foreign = Credential {
        tenant_id: TenantId::try_from("globex").unwrap(),
        connector: ConnectorName::try_from("tool").unwrap(),
        version: 1,
        secret: SecretString::from("globex-secret-222".to_owned()),
        fields: json!({}),
    };
    let error = check_credential_owner(&acme, &foreign).unwrap_err();
    assert!(matches!(error, EgressError::CrossTenantCredential));
    assert_eq!(error.code(), "cross_tenant_credential");
    assert!(!error.to_string().contains("globex-secret"));
    let own = Credential {
        tenant_id: TenantId::try_from("acme").unwrap(),
        ..foreign
    };
    assert!(check_credential_owner(&acme, &own).is_ok());
    world.db.finish(world.store).await;
}

/// A writer the test can read back: every log line egress emits during the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_stay_out_of_errors_logs_and_audit() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let world = World::new().await;
    // Nothing listens on port 9 here: the call fails in transport, with the secret in the URL.
    let mut dead = endpoint(
        "dead",
        "http://127.0.0.1:9",
        "eu-west",
        Some("tool"),
        AuthScheme::Query {
            param: "key".into(),
        },
    );
    dead.max_retries = 0;
    let egress = world.egress(&[
        dead,
        endpoint(
            "tool",
            &world.base,
            "eu-west",
            Some("tool"),
            AuthScheme::Bearer {},
        ),
    ]);
    let acme = world.ctx("acme").await;
    let error = egress
        .for_tenant(&acme)
        .send("dead", OutboundRequest::get("/x"))
        .await
        .unwrap_err();
    assert!(matches!(error, EgressError::Transport { .. }), "{error:?}");
    assert!(
        !format!("{error} {error:?}").contains("acme-secret"),
        "{error}"
    );
    egress
        .for_tenant(&acme)
        .send("tool", OutboundRequest::get("/check/acme"))
        .await
        .unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("outbound call failed"),
        "logs were captured: {logs}"
    );
    assert!(!logs.contains("acme-secret"), "a secret reached the logs");
    let audit = serde_json::to_string(
        &world
            .store
            .admin()
            .audit_events(acme.tenant_id(), 0, 1000)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!audit.contains("acme-secret"));
    assert!(audit.contains("upstream_error"));
    world.db.finish(world.store).await;
}

/// A self-signed certificate for 127.0.0.1 (P-256, valid until 2126), made with
/// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500
/// -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost`. No public root
/// signed it, so egress must refuse it.
const SELF_SIGNED_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUYGoD1BLqu3mE+haNDyt0N9/MuzkwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNjA4NTQ1N1oYDzIxMjYxMTEy
MDg1NDU3WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARVExPv2zSvxEgSJJ3UO7lHD3/TGqOQj5Bm2rkv3hIJND6Km28k8xHo
ILoXeDN4t8FMmcFVFxfZguIBy+/VhtEto28wbTAdBgNVHQ4EFgQUoASmMe6z3I+0
FZWuBjZBoyh4SG8wHwYDVR0jBBgwFoAUoASmMe6z3I+0FZWuBjZBoyh4SG8wDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDSAAwRQIhAJmO4ncO8u8YrFFrmMQmQMIQJ8TO9DoM1dH6eZ5ntnKrAiBj
yBiwFf2KPVUBue3+BTnED7bNHvofTni7AGIA50hgcg==
-----END CERTIFICATE-----
";
const SELF_SIGNED_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg5RmWah33lwCatLa6
n5S53Xc7YVVNblY2weezadU/xYyhRANCAARVExPv2zSvxEgSJJ3UO7lHD3/TGqOQ
j5Bm2rkv3hIJND6Km28k8xHoILoXeDN4t8FMmcFVFxfZguIBy+/VhtEt
-----END PRIVATE KEY-----
";

/// What a local TLS server saw: connections, and bytes read after a completed handshake.
#[derive(Default)]
struct TlsSeen {
    connections: AtomicUsize,
    received: Mutex<Vec<u8>>,
}

async fn self_signed_tls_server() -> (String, Arc<TlsSeen>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::AsyncReadExt;

    let cert = CertificateDer::from_pem_slice(SELF_SIGNED_CERT.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(SELF_SIGNED_KEY.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(TlsSeen::default());
    let server_seen = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            server_seen.connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let seen = server_seen.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut buffer = vec![0; 4096];
                    if let Ok(read) = tls.read(&mut buffer).await {
                        seen.received.lock().unwrap().extend(&buffer[..read]);
                    }
                }
            });
        }
    });
    (base, seen)
}

#[tokio::test]
async fn an_https_endpoint_whose_certificate_no_root_signed_gets_no_request() {
    let world = World::new().await;
    let (base, seen) = self_signed_tls_server().await;
    let mut untrusted = endpoint(
        "untrusted",
        &base,
        "eu-west",
        Some("tool"),
        AuthScheme::Bearer {},
    );
    untrusted.max_retries = 0;
    let egress = world.egress(&[untrusted]);
    let acme = world.ctx("acme").await;
    let error = egress
        .for_tenant(&acme)
        .send("untrusted", OutboundRequest::get("/x"))
        .await
        .unwrap_err();
    let EgressError::Transport { message, .. } = &error else {
        panic!("expected a transport error, got {error:?}");
    };
    assert!(message.contains("certificate"), "{message}");
    assert_eq!(error.code(), "upstream_error");
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        1,
        "egress spoke TLS to the server"
    );
    assert!(
        seen.received.lock().unwrap().is_empty(),
        "no request, so no credential, went over the untrusted connection"
    );
    let failed = world.events("acme", "egress.call").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].details["error"], "upstream_error");
    world.db.finish(world.store).await;
}
