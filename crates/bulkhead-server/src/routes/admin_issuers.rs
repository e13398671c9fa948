use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::IssuerId;
use bulkhead_core::audit::Origin;
use bulkhead_core::auth::{Algorithm, parse_algorithms};
use bulkhead_core::config::{default_roles_claim, default_tenant_claim};
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_store::{IssuerRecord, NewIssuer};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::{Admin, parse_jwks};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::admin_tenants::path_tenant;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIssuerRequest {
    /// This binding's id within the tenant.
    pub id: String,
    /// The exact `iss` of the tenant's tokens.
    pub issuer: String,
    /// The `aud` the tenant's tokens must carry. Another tenant cannot bind the same issuer
    /// and audience.
    pub audience: String,
    /// Allowed algorithms: RS256, RS384, RS512, PS256, ES256, ES384, EdDSA. HS256 is refused
    /// for tenant issuers (a shared secret would have to be stored).
    pub algorithms: Vec<String>,
    /// The issuer's public keys as an inline JWKS document. Exactly one of `jwks` and
    /// `jwks_path` is required.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// Path, on the server, of a JWKS file; read on each verification so a rotated file
    /// applies at once.
    pub jwks_path: Option<String>,
    /// Claim that may name the tenant; if present it must equal this tenant. Default `tenant_id`.
    pub tenant_claim: Option<String>,
    /// Claim holding the principal's roles (array of strings). Default `roles`.
    pub roles_claim: Option<String>,
    /// Whether tokens must carry `nbf`. Default true.
    pub require_nbf: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuerView {
    pub id: String,
    pub tenant_id: String,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    /// Number of keys in the inline JWKS, if inline.
    pub inline_keys: Option<usize>,
    pub jwks_path: Option<String>,
    pub tenant_claim: String,
    pub roles_claim: String,
    pub require_nbf: bool,
    pub created_at: String,
}

impl From<IssuerRecord> for IssuerView {
    fn from(r: IssuerRecord) -> Self {
        Self {
            inline_keys: r
                .jwks
                .as_deref()
                .and_then(|j| parse_jwks(j).ok())
                .map(|s| s.keys.len()),
            id: r.id.into(),
            tenant_id: r.tenant_id.into(),
            issuer: r.issuer,
            audience: r.audience,
            algorithms: r.algorithms,
            jwks_path: r.jwks_path,
            tenant_claim: r.tenant_claim,
            roles_claim: r.roles_claim,
            require_nbf: r.require_nbf,
            created_at: to_rfc3339(r.created_at),
        }
    }
}

fn non_empty(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.len() > 2048 {
        return Err(ApiError::invalid(field, "must be 1 to 2048 characters"));
    }
    Ok(value.to_owned())
}

async fn validate(body: CreateIssuerRequest) -> Result<NewIssuer, ApiError> {
    let id =
        IssuerId::try_from(body.id.as_str()).map_err(|e| ApiError::invalid("id", e.to_string()))?;
    let issuer = non_empty("issuer", &body.issuer)?;
    let audience = non_empty("audience", &body.audience)?;
    if body.algorithms.is_empty() {
        return Err(ApiError::invalid(
            "algorithms",
            "name at least one algorithm",
        ));
    }
    let algorithms =
        parse_algorithms(&body.algorithms).map_err(|e| ApiError::invalid("algorithms", e))?;
    if algorithms.contains(&Algorithm::HS256) {
        return Err(ApiError::invalid(
            "algorithms",
            "HS256 is not accepted for tenant issuers; use an asymmetric algorithm",
        ));
    }
    let jwks_text = match (&body.jwks, &body.jwks_path) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::invalid(
                "jwks",
                "give exactly one of jwks and jwks_path",
            ));
        }
        (Some(inline), None) => {
            let text = inline.to_string();
            parse_jwks(&text).map_err(|e| ApiError::invalid("jwks", e))?;
            Some(text)
        }
        (None, Some(path)) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| ApiError::invalid("jwks_path", format!("cannot read {path}: {e}")))?;
            parse_jwks(&text).map_err(|e| ApiError::invalid("jwks_path", e))?;
            None
        }
    };
    Ok(NewIssuer {
        id,
        issuer,
        audience,
        algorithms: body.algorithms,
        jwks: jwks_text,
        jwks_path: body.jwks_path,
        tenant_claim: body.tenant_claim.unwrap_or_else(default_tenant_claim),
        roles_claim: body.roles_claim.unwrap_or_else(default_roles_claim),
        require_nbf: body.require_nbf.unwrap_or(true),
    })
}

/// Binds the tenant's own JWT issuer: its tokens then authenticate as this tenant, and only
/// this tenant, whatever their claims say.
#[utoipa::path(post, path = "/admin/v1/tenants/{id}/issuers", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    request_body = CreateIssuerRequest,
    responses((status = 201, body = IssuerView), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_issuer(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CreateIssuerRequest>,
) -> Result<(StatusCode, Json<IssuerView>), ApiError> {
    let tenant = path_tenant(&id)?;
    let new = validate(body).await?;
    let record = state
        .store()
        .admin()
        .create_issuer(&tenant, new, &Origin::admin(admin.request_id))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// Lists a tenant's bound issuers.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/issuers", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = Vec<IssuerView>), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn list_issuers(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<IssuerView>>, ApiError> {
    let tenant = path_tenant(&id)?;
    let issuers = state
        .store()
        .admin()
        .list_issuers(&tenant)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(issuers.into_iter().map(Into::into).collect()))
}

/// Unbinds an issuer; its tokens stop working on the next request.
#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/issuers/{issuer_id}", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id"), ("issuer_id" = String, Path, description = "Issuer binding id")),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_issuer(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath((id, issuer_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = path_tenant(&id)?;
    let issuer_id = IssuerId::try_from(issuer_id.as_str()).map_err(|_| ApiError::NotFound)?;
    let deleted = state
        .store()
        .admin()
        .delete_issuer(&tenant, &issuer_id, &Origin::admin(admin.request_id))
        .await?;
    crate::routes::dto::deleted(deleted)
}
