use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::{ApiKeyId, Isolation, RegionName, RequestId, Role, Tenant, TenantId};

/// Who is acting inside a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A caller holding one of the tenant's API keys.
    ApiKey(ApiKeyId),
    /// A person or service named by a verified JWT's `sub`, from the issuer that signed it.
    User { issuer: String, subject: String },
    /// The platform operator at the command line, acting on one tenant's behalf. Their
    /// credential is access to the data directory or database itself.
    Operator,
    /// Bulkhead itself, continuing a tenant's paused run once its approval was decided or
    /// expired. It acts with what the run had: the run's agent, tools and policies.
    Runtime,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::ApiKey(id) => write!(f, "key:{id}"),
            Principal::User { issuer, subject } => write!(f, "user:{subject}@{issuer}"),
            Principal::Operator => f.write_str("operator"),
            Principal::Runtime => f.write_str("runtime"),
        }
    }
}

/// The one tenant a request acts for, and who is acting.
///
/// There is deliberately no public constructor, no `Default`, no `Clone`-from-parts and no
/// serde: the only way to get one is [`crate::auth`], from a credential it has verified
/// against a tenant that exists and is active. Everything below the HTTP layer takes
/// `&TenantContext` and reads the tenant from it, never from a path, a body or a header.
///
/// Cloning one is cheap (its parts are shared): a request's context is handed to the store,
/// egress and spawned tasks, and copying its strings for each was a few dozen allocations a
/// request.
#[derive(Debug, Clone)]
pub struct TenantContext(Arc<Parts>);

#[derive(Debug)]
struct Parts {
    tenant_id: TenantId,
    tenant_name: String,
    region: RegionName,
    allowed_regions: Vec<RegionName>,
    isolation: Isolation,
    principal: Principal,
    roles: BTreeSet<Role>,
    request_id: RequestId,
}

impl TenantContext {
    pub(crate) fn new(
        tenant: &Tenant,
        principal: Principal,
        roles: BTreeSet<Role>,
        request_id: RequestId,
    ) -> Self {
        Self(Arc::new(Parts {
            tenant_id: tenant.id.clone(),
            tenant_name: tenant.name.clone(),
            region: tenant.region.clone(),
            allowed_regions: tenant.allowed_regions.clone(),
            isolation: tenant.isolation,
            principal,
            roles,
            request_id,
        }))
    }

    /// Builds a context without a credential, for tests only.
    #[cfg(feature = "test-support")]
    pub fn for_tests(tenant: &Tenant, roles: &[Role]) -> Self {
        Self::new(
            tenant,
            Principal::User {
                issuer: "test".to_owned(),
                subject: "test".to_owned(),
            },
            roles.iter().copied().collect(),
            RequestId::generate(),
        )
    }

    pub fn tenant_id(&self) -> &TenantId {
        &self.0.tenant_id
    }

    pub fn tenant_name(&self) -> &str {
        &self.0.tenant_name
    }

    pub fn region(&self) -> &RegionName {
        &self.0.region
    }

    /// Regions besides the home region where this tenant's data may go.
    pub fn allowed_regions(&self) -> &[RegionName] {
        &self.0.allowed_regions
    }

    /// Whether this tenant's data may go to `region` (residency).
    pub fn may_use_region(&self, region: &RegionName) -> bool {
        &self.0.region == region || self.0.allowed_regions.contains(region)
    }

    pub fn isolation(&self) -> Isolation {
        self.0.isolation
    }

    pub fn principal(&self) -> &Principal {
        &self.0.principal
    }

    pub fn roles(&self) -> &BTreeSet<Role> {
        &self.0.roles
    }

    pub fn has_any_role(&self, wanted: &[Role]) -> bool {
        wanted.iter().any(|role| self.0.roles.contains(role))
    }

    pub fn request_id(&self) -> &RequestId {
        &self.0.request_id
    }
}
