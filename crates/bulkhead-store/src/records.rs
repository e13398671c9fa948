//! What the store hands out and takes in, and the row shapes both backends decode into.

use bulkhead_core::audit::{AuditEvent, Outcome};
use bulkhead_core::auth::StoredApiKey;
use bulkhead_core::{
    ApiKeyId, Isolation, IssuerId, RegionName, Role, Tenant, TenantId, TenantStatus,
};
use serde::Serialize;

use crate::StoreError;

#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub name: String,
    pub region: RegionName,
    pub allowed_regions: Vec<RegionName>,
    pub isolation: Isolation,
}

/// Fields a control-plane PATCH may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub allowed_regions: Option<Vec<RegionName>>,
    pub status: Option<TenantStatus>,
    pub isolation: Option<bulkhead_core::Isolation>,
}

/// One page of a keyset-paginated listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// What a tenant deletion destroyed, returned to the caller and written to the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct DeletionReceipt {
    pub tenant_id: TenantId,
    /// Unix milliseconds.
    pub deleted_at: i64,
    /// Data key versions destroyed first, which makes every sealed secret unrecoverable.
    pub data_keys_destroyed: u64,
    pub credentials_destroyed: u64,
    pub api_keys_deleted: u64,
    pub issuers_deleted: u64,
    /// The audit sequence number of the deletion event.
    pub audit_seq: i64,
}

/// An API key's metadata; the key itself is never stored.
#[derive(Debug, Clone)]
pub struct ApiKeyInfo {
    pub tenant_id: TenantId,
    pub id: ApiKeyId,
    pub name: String,
    pub role: Role,
    pub display_prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewIssuer {
    pub id: IssuerId,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    /// A JWKS document, as JSON text.
    pub jwks: Option<String>,
    pub jwks_path: Option<String>,
    pub tenant_claim: String,
    pub roles_claim: String,
    pub require_nbf: bool,
}

/// A JWT issuer bound to one tenant.
#[derive(Debug, Clone)]
pub struct IssuerRecord {
    pub tenant_id: TenantId,
    pub id: IssuerId,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    pub jwks: Option<String>,
    pub jwks_path: Option<String>,
    pub tenant_claim: String,
    pub roles_claim: String,
    pub require_nbf: bool,
    pub created_at: i64,
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    tenant_id: String,
    name: String,
    region: String,
    allowed_regions: String,
    isolation: String,
    status: String,
    created_at: i64,
    updated_at: i64,
}

pub(crate) const TENANT_COLUMNS: &str =
    "tenant_id, name, region, allowed_regions, isolation, status, created_at, updated_at";

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;
    fn try_from(row: TenantRow) -> Result<Self, StoreError> {
        Ok(Tenant {
            id: TenantId::try_from(row.tenant_id).map_err(|e| corrupt("tenant id", e))?,
            name: row.name,
            region: RegionName::try_from(row.region).map_err(|e| corrupt("region", e))?,
            allowed_regions: serde_json::from_str(&row.allowed_regions)
                .map_err(|e| corrupt("allowed regions", e))?,
            isolation: row.isolation.parse().map_err(|e| corrupt("isolation", e))?,
            status: row.status.parse().map_err(|e| corrupt("status", e))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    tenant_id: String,
    key_id: String,
    name: String,
    role: String,
    display_prefix: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

pub(crate) const API_KEY_COLUMNS: &str =
    "tenant_id, key_id, name, role, display_prefix, created_at, revoked_at";

impl TryFrom<ApiKeyRow> for ApiKeyInfo {
    type Error = StoreError;
    fn try_from(row: ApiKeyRow) -> Result<Self, StoreError> {
        Ok(ApiKeyInfo {
            tenant_id: TenantId::try_from(row.tenant_id).map_err(|e| corrupt("tenant id", e))?,
            id: ApiKeyId::try_from(row.key_id).map_err(|e| corrupt("key id", e))?,
            name: row.name,
            role: row.role.parse().map_err(|e| corrupt("role", e))?,
            display_prefix: row.display_prefix,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        })
    }
}

/// An API key joined with its tenant, as authentication needs it.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyForAuthRow {
    key_id: String,
    role: String,
    secret_hash: String,
    revoked_at: Option<i64>,
    #[sqlx(flatten)]
    tenant: TenantRow,
}

impl TryFrom<KeyForAuthRow> for (StoredApiKey, Tenant) {
    type Error = StoreError;
    fn try_from(row: KeyForAuthRow) -> Result<Self, StoreError> {
        let tenant = Tenant::try_from(row.tenant)?;
        let key = StoredApiKey {
            tenant_id: tenant.id.clone(),
            id: ApiKeyId::try_from(row.key_id).map_err(|e| corrupt("key id", e))?,
            role: row.role.parse().map_err(|e| corrupt("role", e))?,
            secret_hash: row.secret_hash,
            revoked: row.revoked_at.is_some(),
        };
        Ok((key, tenant))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct IssuerRow {
    tenant_id: String,
    issuer_id: String,
    issuer: String,
    audience: String,
    algorithms: String,
    jwks: Option<String>,
    jwks_path: Option<String>,
    tenant_claim: String,
    roles_claim: String,
    require_nbf: bool,
    created_at: i64,
}

pub(crate) const ISSUER_COLUMNS: &str = "tenant_id, issuer_id, issuer, audience, algorithms, \
     jwks, jwks_path, tenant_claim, roles_claim, require_nbf, created_at";

impl TryFrom<IssuerRow> for IssuerRecord {
    type Error = StoreError;
    fn try_from(row: IssuerRow) -> Result<Self, StoreError> {
        Ok(IssuerRecord {
            tenant_id: TenantId::try_from(row.tenant_id).map_err(|e| corrupt("tenant id", e))?,
            id: IssuerId::try_from(row.issuer_id).map_err(|e| corrupt("issuer id", e))?,
            issuer: row.issuer,
            audience: row.audience,
            algorithms: serde_json::from_str(&row.algorithms)
                .map_err(|e| corrupt("algorithms", e))?,
            jwks: row.jwks,
            jwks_path: row.jwks_path,
            tenant_claim: row.tenant_claim,
            roles_claim: row.roles_claim,
            require_nbf: row.require_nbf,
            created_at: row.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    tenant_id: String,
    seq: i64,
    occurred_at: i64,
    actor: String,
    action: String,
    resource: String,
    outcome: String,
    request_id: Option<String>,
    trace_id: Option<String>,
    details: String,
    prev_hash: String,
    hash: String,
}

pub(crate) const AUDIT_COLUMNS: &str = "tenant_id, seq, occurred_at, actor, action, resource, \
     outcome, request_id, trace_id, details, prev_hash, hash";

impl TryFrom<AuditRow> for AuditEvent {
    type Error = StoreError;
    fn try_from(row: AuditRow) -> Result<Self, StoreError> {
        Ok(AuditEvent {
            tenant_id: TenantId::try_from(row.tenant_id).map_err(|e| corrupt("tenant id", e))?,
            seq: row.seq,
            occurred_at: row.occurred_at,
            actor: row.actor,
            action: row.action,
            resource: row.resource,
            outcome: Outcome::parse(&row.outcome)
                .ok_or_else(|| corrupt("outcome", &row.outcome))?,
            request_id: row.request_id,
            trace_id: row.trace_id,
            details: serde_json::from_str(&row.details).map_err(|e| corrupt("details", e))?,
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
    }
}

pub(crate) fn convert_all<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}
