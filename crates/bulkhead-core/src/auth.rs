//! Authentication: the only place a [`TenantContext`] is made.
//!
//! The HTTP layer parses the `Authorization` header, the store fetches the records a credential
//! points at (an API key and its tenant, or the JWT issuers named by a token), and the
//! functions here decide. They take everything as arguments and do no I/O, so every rule is a
//! plain function with unit tests.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use jsonwebtoken::Algorithm;
pub use jsonwebtoken::jwk::JwkSet;

use crate::ids::random_alphanumeric;
use crate::{ApiKeyId, Principal, RequestId, Role, Tenant, TenantContext, TenantId, TenantStatus};

/// Every API key starts with this, so leaked keys are easy to find in logs and repositories.
pub const API_KEY_PREFIX: &str = "bhk_";
const API_KEY_SECRET_LEN: usize = 40;

/// Why a credential was refused. The HTTP layer answers every variant with the same 401 so a
/// caller learns nothing about which check failed; the variant goes to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential was presented")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    MalformedHeader,
    #[error("the API key is malformed")]
    MalformedApiKey,
    #[error("no such API key")]
    UnknownApiKey,
    #[error("the API key does not match")]
    WrongApiKey,
    #[error("the API key was revoked")]
    RevokedApiKey,
    #[error("the token is not a well-formed JWT: {0}")]
    MalformedJwt(String),
    #[error("no issuer is bound for the token's iss {0:?}")]
    UnknownIssuer(String),
    #[error("the token was refused: {0}")]
    InvalidJwt(String),
    #[error("the token names tenant {claimed:?} but its issuer is bound to tenant {bound}")]
    TenantClaimMismatch { claimed: String, bound: TenantId },
    #[error("the token names no valid tenant in claim {0:?}")]
    MissingTenantClaim(String),
    #[error("the token matches issuer bindings of more than one tenant")]
    AmbiguousIssuer,
    #[error("no such console session, or it has expired")]
    UnknownSession,
    #[error("the tenant does not exist")]
    UnknownTenant,
    #[error("the tenant is suspended")]
    TenantSuspended,
}

/// What the caller put in `Authorization: Bearer ...`.
pub enum Credential {
    ApiKey(PresentedApiKey),
    Jwt(String),
}

/// Splits the header into an API key or a JWT; anything else is malformed.
pub fn parse_authorization(header: Option<&str>) -> Result<Credential, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(AuthError::MalformedHeader);
    }
    if token.starts_with(API_KEY_PREFIX) {
        return parse_api_key(token).map(Credential::ApiKey);
    }
    Ok(Credential::Jwt(token.to_owned()))
}

/// An API key as presented: its id (to look it up) and the whole key (to compare hashes).
pub struct PresentedApiKey {
    id: ApiKeyId,
    full: SecretString,
}

impl PresentedApiKey {
    pub fn id(&self) -> &ApiKeyId {
        &self.id
    }
}

fn parse_api_key(token: &str) -> Result<PresentedApiKey, AuthError> {
    let rest = token
        .strip_prefix(API_KEY_PREFIX)
        .ok_or(AuthError::MalformedApiKey)?;
    let (id, secret) = rest.split_once('_').ok_or(AuthError::MalformedApiKey)?;
    let id = ApiKeyId::try_from(id).map_err(|_| AuthError::MalformedApiKey)?;
    if secret.len() != API_KEY_SECRET_LEN {
        return Err(AuthError::MalformedApiKey);
    }
    Ok(PresentedApiKey {
        id,
        full: SecretString::from(token.to_owned()),
    })
}

/// A freshly made API key. `key` is shown to the caller once and never stored.
pub struct GeneratedApiKey {
    pub id: ApiKeyId,
    pub key: SecretString,
    pub secret_hash: String,
    /// The part of the key safe to display later, such as `bhk_4f9a...`.
    pub display_prefix: String,
}

pub fn generate_api_key() -> GeneratedApiKey {
    let id = ApiKeyId::generate();
    let key = format!(
        "{API_KEY_PREFIX}{id}_{}",
        random_alphanumeric(API_KEY_SECRET_LEN)
    );
    GeneratedApiKey {
        secret_hash: hash_secret(&key),
        display_prefix: format!("{API_KEY_PREFIX}{id}"),
        id,
        key: SecretString::from(key),
    }
}

/// SHA-256, hex. Enough for random 200-bit keys and tokens: there is nothing to brute-force,
/// so a slow password hash would only cost latency on every request.
pub fn hash_secret(secret: &str) -> String {
    crate::ids::lower_hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares a presented secret with a stored hash in constant time.
pub fn secret_matches(presented: &str, stored_hash: &str) -> bool {
    hash_secret(presented)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// Generates the platform admin token shown once at first start.
pub fn generate_admin_token() -> SecretString {
    SecretString::from(format!("bha_{}", random_alphanumeric(48)))
}

/// An API key as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredApiKey {
    pub tenant_id: TenantId,
    pub id: ApiKeyId,
    pub role: Role,
    pub secret_hash: String,
    pub revoked: bool,
}

/// Checks a presented API key against its stored record and tenant.
pub fn authenticate_api_key(
    presented: &PresentedApiKey,
    stored: Option<&StoredApiKey>,
    tenant: Option<&Tenant>,
    request_id: RequestId,
) -> Result<TenantContext, AuthError> {
    let stored = stored.ok_or(AuthError::UnknownApiKey)?;
    if stored.id != presented.id {
        return Err(AuthError::UnknownApiKey);
    }
    if !secret_matches(presented.full.expose_secret(), &stored.secret_hash) {
        return Err(AuthError::WrongApiKey);
    }
    if stored.revoked {
        return Err(AuthError::RevokedApiKey);
    }
    let tenant = active_tenant(tenant, &stored.tenant_id)?;
    Ok(TenantContext::new(
        tenant,
        Principal::ApiKey(stored.id.clone()),
        BTreeSet::from([stored.role]),
        request_id,
    ))
}

fn active_tenant<'t>(
    tenant: Option<&'t Tenant>,
    expected: &TenantId,
) -> Result<&'t Tenant, AuthError> {
    let tenant = tenant.ok_or(AuthError::UnknownTenant)?;
    if &tenant.id != expected {
        return Err(AuthError::UnknownTenant);
    }
    if tenant.status != TenantStatus::Active {
        return Err(AuthError::TenantSuspended);
    }
    Ok(tenant)
}

/// A JWT issuer Bulkhead trusts: the platform's own (`tenant: None`, the tenant comes from a
/// claim) or one bound to a single tenant (every token it signs acts for that tenant only).
#[derive(Clone)]
pub struct IssuerBinding {
    pub tenant: Option<TenantId>,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub jwks: JwkSet,
    /// The shared secret for HS256; only an issuer configured with one accepts HS256.
    pub hs256_secret: Option<SecretString>,
    pub tenant_claim: String,
    pub roles_claim: String,
    pub require_nbf: bool,
}

/// Algorithms an issuer may allow. `none` is not representable.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "PS256" => Some(Algorithm::PS256),
        "ES256" => Some(Algorithm::ES256),
        "ES384" => Some(Algorithm::ES384),
        "EdDSA" => Some(Algorithm::EdDSA),
        "HS256" => Some(Algorithm::HS256),
        _ => None,
    }
}

/// Parses an issuer's algorithm allowlist, naming the first unsupported entry.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    names
        .iter()
        .map(|name| parse_algorithm(name).ok_or_else(|| format!("unsupported algorithm {name:?}")))
        .collect()
}

pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Reads the `iss` claim without verifying anything, only to choose which issuer bindings to
/// try. Nothing read here is trusted until [`verify_jwt`] has checked the signature.
pub fn peek_issuer(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::MalformedJwt(
            "expected three dot-separated parts".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::MalformedJwt("payload is not base64url".into()))?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::MalformedJwt("payload is not a JSON object".into()))?;
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss.clone()),
        _ => Err(AuthError::InvalidJwt("missing iss".into())),
    }
}

/// A token whose signature, issuer, audience and times have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedJwt {
    tenant_id: TenantId,
    issuer: String,
    subject: String,
    roles: BTreeSet<Role>,
    /// `exp`, in Unix seconds (required and checked).
    expires_at: i64,
}

impl VerifiedJwt {
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }

    /// When the token expires, in Unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// What a console session opened with this token records: it ends when the token would.
    pub fn session(&self, max_until_millis: i64) -> StoredSession {
        StoredSession {
            tenant_id: self.tenant_id.clone(),
            principal: SessionPrincipal::User {
                issuer: self.issuer.clone(),
                subject: self.subject.clone(),
            },
            roles: self.roles.clone(),
            expires_at: self.expires_at.saturating_mul(1000).min(max_until_millis),
        }
    }
}

/// Verifies `token` against the issuer bindings whose `issuer` equals its `iss` (RFC 8725):
/// the algorithm must be on that issuer's allowlist, the key is looked up by `kid` in that
/// issuer's keys only, `jku`, `x5u` and embedded `jwk` headers are never followed, and `exp`,
/// `iss`, `aud`, `sub` (and `nbf` unless the issuer opts out) are required.
pub fn verify_jwt(
    token: &str,
    candidates: &[IssuerBinding],
    leeway_seconds: u64,
) -> Result<VerifiedJwt, AuthError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| AuthError::MalformedJwt(e.to_string()))?;
    let iss = peek_issuer(token)?;
    let mut verified: Option<VerifiedJwt> = None;
    let mut last_error = AuthError::UnknownIssuer(iss.clone());
    for binding in candidates.iter().filter(|b| b.issuer == iss) {
        match verify_with_binding(token, &header, binding, leeway_seconds) {
            Ok(jwt) => {
                if verified.is_some() {
                    return Err(AuthError::AmbiguousIssuer);
                }
                verified = Some(jwt);
            }
            Err(e) => last_error = e,
        }
    }
    verified.ok_or(last_error)
}

fn verify_with_binding(
    token: &str,
    header: &jsonwebtoken::Header,
    binding: &IssuerBinding,
    leeway_seconds: u64,
) -> Result<VerifiedJwt, AuthError> {
    if !binding.algorithms.contains(&header.alg) {
        return Err(AuthError::InvalidJwt(format!(
            "algorithm {} is not allowed for this issuer",
            algorithm_name(header.alg)
        )));
    }
    let key = decoding_key(header, binding)?;
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.leeway = leeway_seconds;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[binding.issuer.as_str()]);
    validation.set_audience(&[binding.audience.as_str()]);
    let mut required = vec!["exp", "iss", "aud", "sub"];
    if binding.require_nbf {
        required.push("nbf");
    }
    validation.set_required_spec_claims(&required);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| AuthError::InvalidJwt(e.to_string()))?;
    let claims = data.claims;

    let claimed_tenant = claims.get(&binding.tenant_claim);
    let tenant_id = match &binding.tenant {
        Some(bound) => {
            if let Some(claimed) = claimed_tenant
                && claimed.as_str() != Some(bound.as_str())
            {
                return Err(AuthError::TenantClaimMismatch {
                    claimed: claimed.to_string(),
                    bound: bound.clone(),
                });
            }
            bound.clone()
        }
        None => claimed_tenant
            .and_then(Value::as_str)
            .and_then(|s| TenantId::try_from(s).ok())
            .ok_or_else(|| AuthError::MissingTenantClaim(binding.tenant_claim.clone()))?,
    };
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::InvalidJwt("sub must be a non-empty string".into()))?
        .to_owned();
    let mut roles: BTreeSet<Role> = claims
        .get(&binding.roles_claim)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|s| s.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if roles.is_empty() {
        roles.insert(Role::Viewer);
    }
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| AuthError::InvalidJwt("exp must be an integer".into()))?;
    Ok(VerifiedJwt {
        tenant_id,
        issuer: binding.issuer.clone(),
        subject,
        roles,
        expires_at,
    })
}

fn decoding_key(
    header: &jsonwebtoken::Header,
    binding: &IssuerBinding,
) -> Result<DecodingKey, AuthError> {
    if header.alg == Algorithm::HS256 {
        let secret = binding
            .hs256_secret
            .as_ref()
            .ok_or_else(|| AuthError::InvalidJwt("issuer has no HS256 secret".into()))?;
        return Ok(DecodingKey::from_secret(secret.expose_secret().as_bytes()));
    }
    let jwk = match &header.kid {
        Some(kid) => binding
            .jwks
            .find(kid)
            .ok_or_else(|| AuthError::InvalidJwt(format!("unknown kid {kid:?}")))?,
        None => match binding.jwks.keys.as_slice() {
            [only] => only,
            _ => {
                return Err(AuthError::InvalidJwt(
                    "token has no kid and the issuer has several keys".into(),
                ));
            }
        },
    };
    if let Some(key_alg) = jwk.common.key_algorithm
        && key_alg.to_string() != algorithm_name(header.alg)
    {
        return Err(AuthError::InvalidJwt(
            "key is not for this algorithm".into(),
        ));
    }
    DecodingKey::from_jwk(jwk).map_err(|e| AuthError::InvalidJwt(e.to_string()))
}

/// Turns a verified token into a context, once the store has fetched the tenant it names.
pub fn authenticate_jwt(
    verified: VerifiedJwt,
    tenant: Option<&Tenant>,
    request_id: RequestId,
) -> Result<TenantContext, AuthError> {
    let tenant = active_tenant(tenant, &verified.tenant_id)?;
    Ok(TenantContext::new(
        tenant,
        Principal::User {
            issuer: verified.issuer,
            subject: verified.subject,
        },
        verified.roles,
        request_id,
    ))
}

/// The context for the platform operator acting on one tenant from the command line. The
/// credential is local access to the data directory or database, which the CLI already proved
/// by opening it. The tenant must exist; it may be suspended (an operator may still manage it).
pub fn operator_context(tenant: &Tenant) -> TenantContext {
    TenantContext::new(
        tenant,
        Principal::Operator,
        BTreeSet::from([Role::Owner]),
        RequestId::generate(),
    )
}

/// Who a console session was opened by: the principal of the credential signed in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPrincipal {
    /// An API key; the session lives only as long as the key is not revoked.
    ApiKey(ApiKeyId),
    /// A JWT's subject; the session ends when the token would have expired.
    User { issuer: String, subject: String },
}

/// A console session as the store holds it (looked up by the hash of its cookie).
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub tenant_id: TenantId,
    pub principal: SessionPrincipal,
    pub roles: BTreeSet<Role>,
    pub expires_at: i64,
}

/// Checks a console session: unexpired, its tenant active, and, for a key's session, the key
/// still there, not revoked, and of the same tenant. The roles are the key's current ones,
/// so a session never outlives a change to its key.
pub fn authenticate_session(
    session: Option<&StoredSession>,
    key: Option<&StoredApiKey>,
    tenant: Option<&Tenant>,
    now: i64,
    request_id: RequestId,
) -> Result<TenantContext, AuthError> {
    let session = session.ok_or(AuthError::UnknownSession)?;
    if session.expires_at <= now {
        return Err(AuthError::UnknownSession);
    }
    let tenant = active_tenant(tenant, &session.tenant_id)?;
    let (principal, roles) = match &session.principal {
        SessionPrincipal::ApiKey(id) => {
            let key = key
                .filter(|k| &k.id == id && k.tenant_id == session.tenant_id)
                .ok_or(AuthError::UnknownApiKey)?;
            if key.revoked {
                return Err(AuthError::RevokedApiKey);
            }
            (Principal::ApiKey(id.clone()), BTreeSet::from([key.role]))
        }
        SessionPrincipal::User { issuer, subject } => (
            Principal::User {
                issuer: issuer.clone(),
                subject: subject.clone(),
            },
            session.roles.clone(),
        ),
    };
    Ok(TenantContext::new(tenant, principal, roles, request_id))
}

/// The context in which Bulkhead continues one of `tenant`'s paused runs: the tenant must
/// still be active (a suspended tenant's runs stay paused). Its only role is `agent`.
pub fn runtime_context(tenant: &Tenant) -> Result<TenantContext, AuthError> {
    let tenant = active_tenant(Some(tenant), &tenant.id)?;
    Ok(TenantContext::new(
        tenant,
        Principal::Runtime,
        BTreeSet::from([Role::Agent]),
        RequestId::generate(),
    ))
}

/// The context a dedicated worker acts in for a request the control plane authenticated and
/// forwarded: the principal and roles come from the control plane, the tenant is the one the
/// worker was started for (`bound`), read from its own record. A forwarded request can never
/// name another tenant: there is no tenant in it to name.
pub fn forwarded_context(
    tenant: Option<&Tenant>,
    bound: &TenantId,
    principal: Principal,
    roles: BTreeSet<Role>,
    request_id: RequestId,
) -> Result<TenantContext, AuthError> {
    let tenant = active_tenant(tenant, bound)?;
    Ok(TenantContext::new(tenant, principal, roles, request_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Isolation, RegionName};

    fn tenant(id: &str, status: TenantStatus) -> Tenant {
        Tenant {
            id: TenantId::try_from(id).unwrap(),
            name: id.to_uppercase(),
            region: RegionName::try_from("local").unwrap(),
            isolation: Isolation::Shared,
            allowed_regions: Vec::new(),
            status,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn stored(tenant: &str, generated: &GeneratedApiKey) -> StoredApiKey {
        StoredApiKey {
            tenant_id: TenantId::try_from(tenant).unwrap(),
            id: generated.id.clone(),
            role: Role::Developer,
            secret_hash: generated.secret_hash.clone(),
            revoked: false,
        }
    }

    fn presented(key: &SecretString) -> PresentedApiKey {
        match parse_authorization(Some(&format!("Bearer {}", key.expose_secret()))) {
            Ok(Credential::ApiKey(k)) => k,
            _ => panic!("expected an API key"),
        }
    }

    #[test]
    fn a_generated_key_authenticates_for_its_tenant_only() {
        let key = generate_api_key();
        let acme = tenant("acme", TenantStatus::Active);
        let record = stored("acme", &key);
        let ctx = authenticate_api_key(
            &presented(&key.key),
            Some(&record),
            Some(&acme),
            RequestId::generate(),
        )
        .unwrap();
        assert_eq!(ctx.tenant_id().as_str(), "acme");
        assert!(ctx.roles().contains(&Role::Developer));

        let globex = tenant("globex", TenantStatus::Active);
        assert_eq!(
            authenticate_api_key(
                &presented(&key.key),
                Some(&record),
                Some(&globex),
                RequestId::generate()
            )
            .unwrap_err(),
            AuthError::UnknownTenant
        );
    }

    #[test]
    fn a_key_with_the_right_id_and_wrong_secret_fails() {
        let key = generate_api_key();
        let other = generate_api_key();
        let forged = format!(
            "{API_KEY_PREFIX}{}_{}",
            key.id,
            &other.key.expose_secret()[API_KEY_PREFIX.len() + ApiKeyId::LEN + 1..]
        );
        let acme = tenant("acme", TenantStatus::Active);
        let err = authenticate_api_key(
            &presented(&SecretString::from(forged)),
            Some(&stored("acme", &key)),
            Some(&acme),
            RequestId::generate(),
        )
        .unwrap_err();
        assert_eq!(err, AuthError::WrongApiKey);
    }

    #[test]
    fn revoked_keys_and_suspended_tenants_fail() {
        let key = generate_api_key();
        let mut record = stored("acme", &key);
        let acme = tenant("acme", TenantStatus::Active);
        record.revoked = true;
        assert_eq!(
            authenticate_api_key(
                &presented(&key.key),
                Some(&record),
                Some(&acme),
                RequestId::generate()
            )
            .unwrap_err(),
            AuthError::RevokedApiKey
        );
        record.revoked = false;
        let suspended = tenant("acme", TenantStatus::Suspended);
        assert_eq!(
            authenticate_api_key(
                &presented(&key.key),
                Some(&record),
                Some(&suspended),
                RequestId::generate()
            )
            .unwrap_err(),
            AuthError::TenantSuspended
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in [
            "",
            "Bearer",
            "Bearer ",
            "Basic abc",
            "Bearer a b",
            "Bearer bhk_short",
            "Bearer bhk_0123456789abcdef_tooshort",
            "bearer",
        ] {
            assert!(parse_authorization(Some(header)).is_err(), "{header:?}");
        }
        assert!(matches!(parse_authorization(None), Err(AuthError::Missing)));
    }

    #[test]
    fn peek_issuer_rejects_garbage() {
        assert!(peek_issuer("a.b").is_err());
        assert!(peek_issuer("a.!!!.c").is_err());
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://idp"}"#);
        assert_eq!(
            peek_issuer(&format!("x.{payload}.y")).unwrap(),
            "https://idp"
        );
    }
}
