//! Every route, registered through `utoipa_axum::routes!` so a handler cannot be served
//! without appearing in the OpenAPI document.

pub(crate) mod admin_issuers;
pub(crate) mod admin_keys;
pub(crate) mod admin_tenants;
pub(crate) mod agents;
pub(crate) mod approvals;
pub(crate) mod audit;
pub(crate) mod console;
pub(crate) mod credentials;
pub(crate) mod dto;
pub(crate) mod forwarded;
pub(crate) mod gateway;
pub(crate) mod knowledge;
pub(crate) mod mcp;
pub(crate) mod ops;
pub(crate) mod runs;
pub(crate) mod streaming;
pub(crate) mod tenant;
pub(crate) mod tools;
pub(crate) mod usage;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::openapi_json))
        .routes(routes!(ops::metrics))
        .routes(routes!(
            admin_tenants::create_tenant,
            admin_tenants::list_tenants
        ))
        .routes(routes!(
            admin_tenants::get_tenant,
            admin_tenants::patch_tenant,
            admin_tenants::delete_tenant
        ))
        .routes(routes!(
            admin_keys::create_api_key,
            admin_keys::list_api_keys
        ))
        .routes(routes!(admin_keys::revoke_api_key))
        .routes(routes!(admin_tenants::put_tenant_models))
        .routes(routes!(
            admin_issuers::create_issuer,
            admin_issuers::list_issuers
        ))
        .routes(routes!(admin_issuers::delete_issuer))
        .routes(routes!(tenant::whoami))
        .routes(routes!(tenant::list_own_api_keys))
        .routes(routes!(tenant::get_own_api_key))
        .routes(routes!(credentials::list_credentials))
        .routes(routes!(agents::list_agents))
        .routes(routes!(
            agents::put_agent,
            agents::get_agent,
            agents::delete_agent
        ))
        .routes(routes!(agents::preview_prompt))
        .routes(routes!(runs::create_run))
        .routes(routes!(gateway::chat_completions))
        .routes(routes!(usage::tenant_usage))
        .routes(routes!(usage::platform_usage))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::get_thread))
        .routes(routes!(agents::list_prompts))
        .routes(routes!(
            agents::put_prompt,
            agents::get_prompt,
            agents::delete_prompt
        ))
        .routes(routes!(knowledge::list_knowledge_bases))
        .routes(routes!(knowledge::delete_knowledge_base))
        .routes(routes!(knowledge::post_document, knowledge::list_documents))
        .routes(routes!(knowledge::delete_document))
        .routes(routes!(knowledge::search))
        .routes(routes!(tools::list_toolsets))
        .routes(routes!(
            tools::put_toolset,
            tools::get_toolset,
            tools::delete_toolset
        ))
        .routes(routes!(tools::list_policies))
        .routes(routes!(tools::policy_schema))
        .routes(routes!(
            tools::put_policy,
            tools::get_policy,
            tools::delete_policy
        ))
        .routes(routes!(approvals::list_approvals))
        .routes(routes!(approvals::get_approval))
        .routes(routes!(approvals::decide))
        .routes(routes!(mcp::mcp_post, mcp::mcp_get))
        .routes(routes!(audit::list_audit))
        .routes(routes!(audit::export_audit))
        .routes(routes!(audit::verify_audit))
        .routes(routes!(console::approvals_page))
        .routes(routes!(console::sign_in))
        .routes(routes!(console::sign_out))
        .routes(routes!(console::decide))
        .routes(routes!(
            credentials::put_credential,
            credentials::get_credential,
            credentials::delete_credential
        ))
}
