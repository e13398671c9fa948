//! Wire shapes shared by several routes, with their OpenAPI schemas. Core types stay free of
//! HTTP concerns; these mirror them.

use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_core::{Isolation, Role, Tenant, TenantStatus};
use bulkhead_store::ApiKeyInfo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsolationDto {
    Shared,
    Dedicated,
}

impl From<IsolationDto> for Isolation {
    fn from(value: IsolationDto) -> Self {
        match value {
            IsolationDto::Shared => Isolation::Shared,
            IsolationDto::Dedicated => Isolation::Dedicated,
        }
    }
}

impl From<Isolation> for IsolationDto {
    fn from(value: Isolation) -> Self {
        match value {
            Isolation::Shared => IsolationDto::Shared,
            Isolation::Dedicated => IsolationDto::Dedicated,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusDto {
    Active,
    Suspended,
}

impl From<StatusDto> for TenantStatus {
    fn from(value: StatusDto) -> Self {
        match value {
            StatusDto::Active => TenantStatus::Active,
            StatusDto::Suspended => TenantStatus::Suspended,
        }
    }
}

impl From<TenantStatus> for StatusDto {
    fn from(value: TenantStatus) -> Self {
        match value {
            TenantStatus::Active => StatusDto::Active,
            TenantStatus::Suspended => StatusDto::Suspended,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleDto {
    Owner,
    Admin,
    Approver,
    Developer,
    Viewer,
    Agent,
}

impl From<RoleDto> for Role {
    fn from(value: RoleDto) -> Self {
        match value {
            RoleDto::Owner => Role::Owner,
            RoleDto::Admin => Role::Admin,
            RoleDto::Approver => Role::Approver,
            RoleDto::Developer => Role::Developer,
            RoleDto::Viewer => Role::Viewer,
            RoleDto::Agent => Role::Agent,
        }
    }
}

impl From<Role> for RoleDto {
    fn from(value: Role) -> Self {
        match value {
            Role::Owner => RoleDto::Owner,
            Role::Admin => RoleDto::Admin,
            Role::Approver => RoleDto::Approver,
            Role::Developer => RoleDto::Developer,
            Role::Viewer => RoleDto::Viewer,
            Role::Agent => RoleDto::Agent,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub region: String,
    /// Regions besides `region` where the tenant's data may go.
    pub allowed_regions: Vec<String>,
    pub isolation: IsolationDto,
    pub status: StatusDto,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// For a dedicated tenant, its worker process on the node that answered (absent when it
    /// never started there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<crate::worker::WorkerView>,
}

impl TenantView {
    /// With the tenant's worker on this node, if it is dedicated.
    pub(crate) fn with_worker(mut self, state: &crate::AppState) -> Self {
        if matches!(self.isolation, IsolationDto::Dedicated) {
            self.worker = worker_view(state, &self.id);
        }
        self
    }
}

/// The worker of a dedicated tenant on this node: its state, or `stopped` if it never ran.
pub(crate) fn worker_view(
    state: &crate::AppState,
    tenant: &str,
) -> Option<crate::worker::WorkerView> {
    let workers = state.workers()?;
    let tenant = bulkhead_core::TenantId::try_from(tenant).ok()?;
    Some(
        workers
            .view(&tenant)
            .unwrap_or_else(|| crate::worker::WorkerView {
                state: "stopped".into(),
                ..Default::default()
            }),
    )
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id.into(),
            name: t.name,
            region: t.region.into(),
            allowed_regions: t.allowed_regions.into_iter().map(Into::into).collect(),
            isolation: t.isolation.into(),
            status: t.status.into(),
            created_at: to_rfc3339(t.created_at),
            updated_at: to_rfc3339(t.updated_at),
            worker: None,
        }
    }
}

/// An API key's metadata. The key itself is shown once, at creation, and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub role: RoleDto,
    /// The start of the key, safe to display: `bhk_<id>`.
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<ApiKeyInfo> for ApiKeyView {
    fn from(k: ApiKeyInfo) -> Self {
        Self {
            id: k.id.into(),
            tenant_id: k.tenant_id.into(),
            name: k.name,
            role: k.role.into(),
            prefix: k.display_prefix,
            created_at: to_rfc3339(k.created_at),
            revoked_at: k.revoked_at.map(to_rfc3339),
        }
    }
}

/// Checks a human-readable name, naming `field` in the error.
pub fn validate_name(field: &str, name: &str) -> Result<String, crate::error::ApiError> {
    bulkhead_core::validate_display_name(name)
        .map_err(|e| crate::error::ApiError::invalid(field, e))
}

/// The answer to a DELETE: 204 if something was deleted, else the same 404 as for a resource
/// that never existed (or belongs to another tenant).
pub fn deleted(found: bool) -> Result<axum::http::StatusCode, crate::error::ApiError> {
    if found {
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(crate::error::ApiError::NotFound)
    }
}
