//! The vocabulary every other Bulkhead crate speaks: tenant ids, the tenant-bound request
//! context, roles, the configuration model, the audit event shape and authentication.
//!
//! **Architecture Invariant:** this crate performs no I/O. It does not know about HTTP, SQL or
//! the file system; it computes and validates.
//!
//! **Architecture Invariant:** a [`TenantContext`] is only created by [`auth`] from a verified
//! credential (or, behind the `test-support` feature, by tests).

pub mod audit;
pub mod auth;
pub mod config;
mod context;
pub mod ids;
mod roles;
mod tenant;
pub mod timestamp;
pub mod ttl_cache;

pub use context::{Principal, TenantContext};
pub use ids::{
    AgentName, ApiKeyId, ConnectorName, IdError, IssuerId, KnowledgeBaseName, PolicyName,
    PromptName, RegionName, RequestId, TenantId, ToolsetName,
};
pub use roles::{Role, RoleError};
pub use tenant::{Isolation, Tenant, TenantStatus, validate_display_name};
