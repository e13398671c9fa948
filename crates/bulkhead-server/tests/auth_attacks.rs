//! Tenant-plane authentication against the real server: each attack of RFC 8725's checklist,
//! and each way a credential can go stale, answered 401.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bulkhead_core::audit::Origin;
use bulkhead_core::{ApiKeyId, TenantId};
use common::{AUDIENCE, Backend, PLATFORM_ISS, TestServer, fixture_text};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ACME_ISS: &str = "https://idp.acme.test";
const GLOBEX_ISS: &str = "https://idp.globex.test";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(iss: &str, tenant: Option<&str>) -> Value {
    let mut claims = json!({
        "iss": iss,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": now() + 600,
        "nbf": now() - 10,
        "iat": now(),
        "roles": ["developer", "not-a-role"],
    });
    if let Some(tenant) = tenant {
        claims["tenant_id"] = json!(tenant);
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key_file: &str, claims: &Value) -> String {
    let pem = fixture_text(key_file);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        other => panic!("no fixture for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn rs256_a(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-a"), "rsa_a.pem", claims)
}

fn unsigned_token(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// acme binds its own IdP (key rsa-b); globex binds another (key ed-a).
async fn setup() -> TestServer {
    let server = TestServer::start(Backend::Sqlite).await;
    for tenant in ["acme", "globex", "initech"] {
        server.create_tenant(tenant).await;
    }
    let (status, body) = server
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/issuers",
            Some(json!({
                "id": "okta", "issuer": ACME_ISS, "audience": AUDIENCE,
                "algorithms": ["RS256"],
                "jwks": serde_json::from_str::<Value>(&fixture_text("jwks_b.json")).unwrap(),
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let globex_jwks = json!({"keys": [serde_json::from_str::<Value>(&fixture_text("jwks_a.json")).unwrap()["keys"][1].clone()]});
    let (status, body) = server
        .admin(
            Method::POST,
            "/admin/v1/tenants/globex/issuers",
            Some(json!({
                "id": "auth0", "issuer": GLOBEX_ISS, "audience": AUDIENCE,
                "algorithms": ["EdDSA"], "jwks": globex_jwks,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = server
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/initech",
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server
}

async fn whoami(server: &TestServer, token: &str) -> (StatusCode, Value) {
    server.tenant_get("/v1/whoami", token).await
}

#[tokio::test]
async fn valid_tokens_authenticate_as_the_right_tenant() {
    let server = setup().await;

    // Platform tokens name their tenant by claim, in each supported algorithm.
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-a", "rsa_a.pem"),
        (Algorithm::EdDSA, "ed-a", "ed25519_a.pem"),
        (Algorithm::ES256, "ec-a", "ec_a.pem"),
    ] {
        let token = sign(alg, Some(kid), key, &claims(PLATFORM_ISS, Some("acme")));
        let (status, body) = whoami(&server, &token).await;
        assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
        assert_eq!(body["tenant_id"], "acme");
        assert_eq!(body["principal"], format!("user:alice@{PLATFORM_ISS}"));
        assert_eq!(
            body["roles"],
            json!(["developer"]),
            "unknown roles are dropped"
        );
    }

    // A tenant issuer's token acts for its bound tenant, with or without the tenant claim.
    let token = sign(
        Algorithm::RS256,
        Some("rsa-b"),
        "rsa_b.pem",
        &claims(ACME_ISS, None),
    );
    let (status, body) = whoami(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant_id"], "acme");
    let token = sign(
        Algorithm::EdDSA,
        Some("ed-a"),
        "ed25519_a.pem",
        &claims(GLOBEX_ISS, Some("globex")),
    );
    let (status, body) = whoami(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant_id"], "globex");

    // A header never picks the tenant.
    let token = rs256_a(&claims(PLATFORM_ISS, Some("acme")));
    let (status, body) = server
        .send(
            server
                .request(Method::GET, "/v1/whoami", Some(&token))
                .header("x-tenant-id", "globex"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tenant_id"], "acme");
    server.finish().await;
}

/// A stand-in attacker's key server: counts every request it gets, so the test can show that
/// a `jku` header is never followed.
async fn attacker_jwks_server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let jwks = fixture_text("jwks_b.json");
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let jwks = jwks.clone();
        async move { jwks }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, hits)
}

#[tokio::test]
async fn every_jwt_attack_is_refused() {
    let server = setup().await;
    let (jku_url, jku_hits) = attacker_jwks_server().await;
    let rsa_public_pem = fixture_text("rsa_a.pub.pem");

    let mut cases: Vec<(&str, String)> = Vec::new();
    // Signed by rsa-b but claiming kid rsa-a: the signature does not verify.
    cases.push((
        "bad signature",
        sign(
            Algorithm::RS256,
            Some("rsa-a"),
            "rsa_b.pem",
            &claims(PLATFORM_ISS, Some("acme")),
        ),
    ));
    let mut tampered = rs256_a(&claims(PLATFORM_ISS, Some("acme")));
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    cases.push(("tampered signature", tampered));
    let mut c = claims(PLATFORM_ISS, Some("acme"));
    c["exp"] = json!(now() - 3600);
    cases.push(("expired", rs256_a(&c)));
    let mut c = claims(PLATFORM_ISS, Some("acme"));
    c["nbf"] = json!(now() + 3600);
    cases.push(("not yet valid", rs256_a(&c)));
    let mut c = claims(PLATFORM_ISS, Some("acme"));
    c.as_object_mut().unwrap().remove("nbf");
    cases.push(("missing nbf", rs256_a(&c)));
    let mut c = claims(PLATFORM_ISS, Some("acme"));
    c.as_object_mut().unwrap().remove("exp");
    cases.push(("missing exp", rs256_a(&c)));
    let mut c = claims(PLATFORM_ISS, Some("acme"));
    c["aud"] = json!("someone-else");
    cases.push(("wrong audience", rs256_a(&c)));
    cases.push((
        "wrong issuer",
        rs256_a(&claims("https://evil.test", Some("acme"))),
    ));
    cases.push((
        "alg none",
        unsigned_token(
            json!({"alg": "none", "typ": "JWT"}),
            &claims(PLATFORM_ISS, Some("acme")),
        ),
    ));
    cases.push((
        "alg None",
        unsigned_token(
            json!({"alg": "None", "typ": "JWT"}),
            &claims(PLATFORM_ISS, Some("acme")),
        ),
    ));
    // The classic confusion: HMAC keyed with the RSA public key the verifier already holds.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-a".into());
    let hs = jsonwebtoken::encode(
        &header,
        &claims(PLATFORM_ISS, Some("acme")),
        &EncodingKey::from_secret(rsa_public_pem.as_bytes()),
    )
    .unwrap();
    cases.push(("HS256 signed with the RSA public key", hs));
    cases.push((
        "unknown kid",
        sign(
            Algorithm::RS256,
            Some("nope"),
            "rsa_a.pem",
            &claims(PLATFORM_ISS, Some("acme")),
        ),
    ));
    // The platform issuer has three keys, so a token without kid is ambiguous.
    cases.push((
        "no kid with several keys",
        sign(
            Algorithm::RS256,
            None,
            "rsa_a.pem",
            &claims(PLATFORM_ISS, Some("acme")),
        ),
    ));
    // Acme's own IdP mints a token naming globex.
    cases.push((
        "tenant issuer claiming another tenant",
        sign(
            Algorithm::RS256,
            Some("rsa-b"),
            "rsa_b.pem",
            &claims(ACME_ISS, Some("globex")),
        ),
    ));
    cases.push((
        "platform token naming a missing tenant",
        rs256_a(&claims(PLATFORM_ISS, Some("nobody"))),
    ));
    cases.push((
        "platform token naming a suspended tenant",
        rs256_a(&claims(PLATFORM_ISS, Some("initech"))),
    ));
    cases.push((
        "platform token naming no tenant",
        rs256_a(&claims(PLATFORM_ISS, None)),
    ));
    cases.push((
        "platform token naming an invalid tenant",
        rs256_a(&claims(PLATFORM_ISS, Some("Not Valid"))),
    ));
    // Acme controls its IdP and mints a token in globex's issuer's name: globex's keys reject it.
    cases.push((
        "acme's IdP replayed against globex",
        sign(
            Algorithm::RS256,
            Some("rsa-b"),
            "rsa_b.pem",
            &claims(GLOBEX_ISS, Some("globex")),
        ),
    ));
    cases.push((
        "acme's token with globex's algorithm",
        sign(
            Algorithm::EdDSA,
            Some("ed-a"),
            "ed25519_a.pem",
            &claims(ACME_ISS, None),
        ),
    ));
    // jku pointing at the attacker's key server, signed with the key it serves.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-b".into());
    header.jku = Some(jku_url.clone());
    let jku = jsonwebtoken::encode(
        &header,
        &claims(PLATFORM_ISS, Some("acme")),
        &EncodingKey::from_rsa_pem(fixture_text("rsa_b.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    cases.push(("jku header pointing elsewhere", jku));
    let mut header = Header::new(Algorithm::RS256);
    header.x5u = Some(jku_url.clone());
    header.kid = Some("rsa-b".into());
    let x5u = jsonwebtoken::encode(
        &header,
        &claims(PLATFORM_ISS, Some("acme")),
        &EncodingKey::from_rsa_pem(fixture_text("rsa_b.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    cases.push(("x5u header pointing elsewhere", x5u));
    cases.push(("garbage", "not.a.jwt".into()));
    cases.push(("two parts", "abc.def".into()));

    for (name, token) in &cases {
        let (status, body) = whoami(&server, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["code"], "unauthenticated", "{name}");
    }
    assert_eq!(
        jku_hits.load(Ordering::SeqCst),
        0,
        "a jku/x5u URL was fetched"
    );
    server.finish().await;
}

#[tokio::test]
async fn malformed_headers_and_stale_keys_are_refused() {
    let server = setup().await;
    let (key, key_id) = server.create_key("acme", "developer").await;
    assert_eq!(whoami(&server, &key).await.0, StatusCode::OK);

    for header in [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer a b",
        "bearer",
        "Token abc",
        "Bearer bhk_x",
    ] {
        let (status, body) = server
            .send(
                server
                    .request(Method::GET, "/v1/whoami", None)
                    .header("authorization", header),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header:?}: {body}");
    }
    let (status, _) = server
        .send(server.request(Method::GET, "/v1/whoami", None))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = server
        .request(Method::GET, "/v1/whoami", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    // A key whose secret half was altered.
    let mut forged = key.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(whoami(&server, &forged).await.0, StatusCode::UNAUTHORIZED);
    // The admin token is not a tenant credential, nor is a tenant key an admin one.
    assert_eq!(
        whoami(&server, common::ADMIN_TOKEN).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = server
        .send(server.request(Method::GET, "/admin/v1/tenants", Some(&key)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Revocation takes effect on the next request.
    let (status, body) = server
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/acme/api-keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["revoked_at"].is_string());
    assert_eq!(whoami(&server, &key).await.0, StatusCode::UNAUTHORIZED);

    // A remembered lookup decides nothing on its own: acme's key id, once seen, with any
    // other secret (globex's included) is still refused.
    let (acme_key, _) = server.create_key("acme", "viewer").await;
    let (globex_key, _) = server.create_key("globex", "viewer").await;
    assert_eq!(whoami(&server, &acme_key).await.0, StatusCode::OK);
    let (acme_prefix, _) = acme_key.rsplit_once('_').unwrap();
    let (_, globex_secret) = globex_key.rsplit_once('_').unwrap();
    for forged in [
        format!("{acme_prefix}_{globex_secret}"),
        format!("{acme_prefix}_{}", "x".repeat(globex_secret.len())),
    ] {
        assert_eq!(
            whoami(&server, &forged).await.0,
            StatusCode::UNAUTHORIZED,
            "{forged}"
        );
    }
    assert_eq!(whoami(&server, &acme_key).await.0, StatusCode::OK);

    // So does suspension, and reactivation lets the tenant back in.
    let (key, _) = server.create_key("globex", "viewer").await;
    assert_eq!(whoami(&server, &key).await.0, StatusCode::OK);
    server
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/globex",
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(whoami(&server, &key).await.0, StatusCode::UNAUTHORIZED);
    let token = sign(
        Algorithm::EdDSA,
        Some("ed-a"),
        "ed25519_a.pem",
        &claims(GLOBEX_ISS, None),
    );
    assert_eq!(whoami(&server, &token).await.0, StatusCode::UNAUTHORIZED);
    server
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/globex",
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(whoami(&server, &key).await.0, StatusCode::OK);
    assert_eq!(whoami(&server, &token).await.0, StatusCode::OK);

    // Unbinding an issuer stops its tokens; deleting a tenant stops its keys.
    let (status, _) = server
        .admin(
            Method::DELETE,
            "/admin/v1/tenants/globex/issuers/auth0",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(whoami(&server, &token).await.0, StatusCode::UNAUTHORIZED);
    server
        .admin(Method::DELETE, "/admin/v1/tenants/globex", None)
        .await;
    assert_eq!(whoami(&server, &key).await.0, StatusCode::UNAUTHORIZED);
    server.finish().await;
}

#[tokio::test]
async fn issuer_bindings_are_validated() {
    let server = setup().await;
    let jwks: Value = serde_json::from_str(&fixture_text("jwks_b.json")).unwrap();
    let base = json!({"id": "idp", "issuer": "https://idp.x", "audience": "aud", "algorithms": ["RS256"], "jwks": jwks});
    let bad: Vec<(&str, Value, &str)> = vec![
        (
            "HS256 for a tenant issuer",
            json!({"algorithms": ["HS256"]}),
            "algorithms",
        ),
        ("alg none", json!({"algorithms": ["none"]}), "algorithms"),
        ("no algorithm", json!({"algorithms": []}), "algorithms"),
        (
            "both key sources",
            json!({"jwks_path": "/etc/passwd"}),
            "jwks",
        ),
        ("empty JWKS", json!({"jwks": {"keys": []}}), "jwks"),
        ("not a JWKS", json!({"jwks": {"hello": 1}}), "jwks"),
        ("invalid id", json!({"id": "Bad Id"}), "id"),
        ("empty issuer", json!({"issuer": " "}), "issuer"),
    ];
    for (name, overrides, field) in bad {
        let mut body = base.clone();
        for (k, v) in overrides.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, problem) = server
            .admin(Method::POST, "/admin/v1/tenants/acme/issuers", Some(body))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name}: {problem}"
        );
        assert_eq!(problem["field"], field, "{name}: {problem}");
    }
    let mut missing_path = base.clone();
    missing_path.as_object_mut().unwrap().remove("jwks");
    missing_path["jwks_path"] = json!("/nonexistent/jwks.json");
    let (status, problem) = server
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/issuers",
            Some(missing_path),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "jwks_path");

    // Globex cannot bind acme's issuer and audience: a token must never mean two tenants.
    let mut clash = base.clone();
    clash["issuer"] = json!(ACME_ISS);
    clash["audience"] = json!(AUDIENCE);
    let (status, problem) = server
        .admin(
            Method::POST,
            "/admin/v1/tenants/globex/issuers",
            Some(clash),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");

    // A JWKS file path works and is listed.
    let mut by_path = base.clone();
    by_path.as_object_mut().unwrap().remove("jwks");
    by_path["jwks_path"] = json!(common::fixture("jwks_b.json").display().to_string());
    let (status, body) = server
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/issuers",
            Some(by_path),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = sign(Algorithm::RS256, Some("rsa-b"), "rsa_b.pem", &{
        let mut c = claims("https://idp.x", None);
        c["aud"] = json!("aud");
        c
    });
    let (status, body) = whoami(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant_id"], "acme");
    let (status, list) = server
        .admin(Method::GET, "/admin/v1/tenants/acme/issuers", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    server.finish().await;
}

/// A key revoked by another process (a second replica, the offline CLI) is honoured within
/// `key_cache_ms`, and renewing the remembered lookup keeps no request waiting: the request
/// that finds it past half its life is answered from it, and the renewal, read in a task of
/// its own, refuses the requests after it well before the lookup would have expired.
#[tokio::test]
async fn a_key_revoked_elsewhere_is_refused_once_its_lookup_is_renewed_in_the_background() {
    let ttl = std::time::Duration::from_secs(10);
    let server = TestServer::start_configured(
        Backend::Sqlite,
        common::ServerConfig {
            key_cache: ttl,
            ..common::ServerConfig::bare()
        },
    )
    .await;
    server.create_tenant("acme").await;
    let (key, key_id) = server.create_key("acme", "viewer").await;
    let remembered_at = std::time::Instant::now();
    assert_eq!(whoami(&server, &key).await.0, StatusCode::OK);

    // Revoked in the database by someone else: this process's cache is not told.
    let revoked = server
        .store
        .admin()
        .revoke_api_key(
            &TenantId::try_from("acme").unwrap(),
            &ApiKeyId::try_from(key_id.as_str()).unwrap(),
            &Origin::cli(),
        )
        .await
        .unwrap();
    assert!(revoked.is_some());
    assert_eq!(
        whoami(&server, &key).await.0,
        StatusCode::OK,
        "within its time-to-live the remembered lookup answers, as documented"
    );

    tokio::time::sleep(ttl / 2 + std::time::Duration::from_millis(200)).await;
    assert_eq!(
        whoami(&server, &key).await.0,
        StatusCode::OK,
        "the request that renews the lookup is answered from it, not after a read"
    );
    assert!(
        remembered_at.elapsed() < ttl,
        "the test ran too slowly to tell a renewal from an expiry"
    );
    let mut refused = false;
    while remembered_at.elapsed() < ttl {
        if whoami(&server, &key).await.0 == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the background renewal did not replace the remembered lookup before it expired"
    );
    server.finish().await;
}

/// A dedicated worker serves only what its control plane authenticated and forwarded: a
/// request that reaches its router any other way, with a valid key of its own tenant or of
/// another, is refused before any handler runs.
#[tokio::test]
async fn a_dedicated_workers_router_takes_no_credential_at_all() {
    let server = TestServer::start_configured(
        Backend::Sqlite,
        common::ServerConfig {
            dedicated_worker: true,
            ..common::ServerConfig::bare()
        },
    )
    .await;
    server.create_tenant("acme").await;
    server.create_tenant("globex").await;
    let (acme, _) = server.create_key("acme", "owner").await;
    let (globex, _) = server.create_key("globex", "owner").await;
    for key in [&acme, &globex] {
        for (method, path, body) in [
            (Method::GET, "/v1/whoami", None),
            (
                Method::POST,
                "/v1/chat/completions",
                Some(json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}]})),
            ),
            (Method::GET, "/v1/knowledge/docs/search?q=x", None),
        ] {
            let mut request = server.request(method, path, Some(key));
            if let Some(body) = body {
                request = request.json(&body);
            }
            // Problem documents, or OpenAI's error shape on the gateway.
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            let code = body["code"].as_str().or(body["error"]["code"].as_str());
            assert_eq!(
                (status, code),
                (StatusCode::UNAUTHORIZED, Some("unauthenticated")),
                "{path}: {body}"
            );
        }
    }
    server.finish().await;
}
