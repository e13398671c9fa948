//! Authentication cost per request, without the database: what `bulkhead_core::auth` spends
//! to turn a credential into a `TenantContext`. API keys hash and compare; JWTs verify a
//! signature. Run with `cargo bench -p bulkhead-core --bench auth`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use bulkhead_core::auth::{
    Algorithm, Credential, IssuerBinding, JwkSet, StoredApiKey, authenticate_api_key,
    authenticate_jwt, generate_api_key, parse_authorization, verify_jwt,
};
use bulkhead_core::{Isolation, RegionName, RequestId, Role, Tenant, TenantId, TenantStatus};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::json;

fn testdata(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/jwt")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

fn tenant() -> Tenant {
    Tenant {
        id: TenantId::try_from("acme").unwrap(),
        name: "Acme".into(),
        region: RegionName::try_from("local").unwrap(),
        isolation: Isolation::Shared,
        allowed_regions: Vec::new(),
        status: TenantStatus::Active,
        created_at: 0,
        updated_at: 0,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(alg: Algorithm, kid: &str, pem: &str) -> String {
    let claims = json!({
        "iss": "https://platform.test", "aud": "bulkhead", "sub": "alice",
        "exp": now() + 3600, "nbf": now() - 10, "tenant_id": "acme", "roles": ["developer"],
    });
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn bench_auth(c: &mut Criterion) {
    let tenant = tenant();
    let generated = generate_api_key();
    let stored = StoredApiKey {
        tenant_id: tenant.id.clone(),
        id: generated.id.clone(),
        role: Role::Developer,
        secret_hash: generated.secret_hash.clone(),
        revoked: false,
    };
    let header = format!("Bearer {}", generated.key.expose_secret());
    c.bench_function("auth/api_key", |b| {
        b.iter(|| {
            let Ok(Credential::ApiKey(presented)) = parse_authorization(Some(&header)) else {
                unreachable!("a generated key parses")
            };
            authenticate_api_key(
                &presented,
                Some(&stored),
                Some(&tenant),
                RequestId::generate(),
            )
            .unwrap()
        })
    });

    let binding = IssuerBinding {
        tenant: None,
        issuer: "https://platform.test".into(),
        audience: "bulkhead".into(),
        algorithms: vec![Algorithm::RS256, Algorithm::EdDSA],
        jwks: serde_json::from_str::<JwkSet>(&testdata("jwks_a.json")).unwrap(),
        hs256_secret: None,
        tenant_claim: "tenant_id".into(),
        roles_claim: "roles".into(),
        require_nbf: true,
    };
    let bindings = [binding];
    for (name, alg, kid, pem) in [
        ("auth/jwt_rs256", Algorithm::RS256, "rsa-a", "rsa_a.pem"),
        ("auth/jwt_eddsa", Algorithm::EdDSA, "ed-a", "ed25519_a.pem"),
    ] {
        let jwt = token(alg, kid, &testdata(pem));
        let header = format!("Bearer {jwt}");
        c.bench_function(name, |b| {
            b.iter(|| {
                let Ok(Credential::Jwt(token)) = parse_authorization(Some(&header)) else {
                    unreachable!("a JWT parses")
                };
                let verified = verify_jwt(&token, &bindings, 30).unwrap();
                authenticate_jwt(verified, Some(&tenant), RequestId::generate()).unwrap()
            })
        });
    }
}

criterion_group!(benches, bench_auth);
criterion_main!(benches);
