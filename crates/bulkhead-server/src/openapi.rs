use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulkhead",
        description = "Multi-tenant runtime for AI agents. Control plane under /admin/v1 \
                       (admin token); tenant plane under /v1 (a tenant's API key or JWT). \
                       Every error is application/problem+json with a stable `code`."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "control-plane", description = "Tenants, their API keys and JWT issuers; admin token"),
        (name = "tenant-plane", description = "Acts for the tenant named by the credential"),
        (name = "gateway", description = "OpenAI-compatible Chat Completions for outside agent frameworks, with a tenant API key as the OpenAI key"),
        (name = "knowledge", description = "Knowledge bases: documents in, passages out, searched by meaning and keyword within the calling tenant only"),
        (name = "tools", description = "Toolsets the tenant's agents call with its own credentials, the Cedar policies over them, approvals of high-stakes calls, and the MCP gateway"),
        (name = "audit", description = "The tenant's own hash-chained audit trail: paged, exported, verified"),
        (name = "console", description = "Server-rendered pages for people: the approvals console (cookie session, CSRF-protected forms)"),
        (name = "operations", description = "Health, readiness and this document"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The platform admin token (BULKHEAD_ADMIN_TOKEN)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "tenant_credential",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A tenant API key (bhk_...) or a JWT from a bound issuer",
                    ))
                    .build(),
            ),
        );
    }
}

pub(crate) fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The OpenAPI document describing every route the server serves.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes::router().split_for_parts().1
}
