use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::ApiKeyId;
use bulkhead_core::audit::Origin;
use bulkhead_core::auth::generate_api_key;
use bulkhead_core::timestamp::to_rfc3339;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::Admin;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::admin_tenants::path_tenant;
use crate::routes::dto::{ApiKeyView, RoleDto, validate_name};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
    pub role: RoleDto,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: String,
    /// The key. Shown only in this response; Bulkhead keeps only its hash.
    pub key: String,
    pub name: String,
    pub role: RoleDto,
    pub prefix: String,
    pub created_at: String,
}

/// Creates an API key for a tenant.
#[utoipa::path(post, path = "/admin/v1/tenants/{id}/api-keys", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let tenant = path_tenant(&id)?;
    let name = validate_name("name", &body.name)?;
    let key = generate_api_key();
    let info = state
        .store()
        .admin()
        .create_api_key(
            &tenant,
            &name,
            body.role.into(),
            &key,
            &Origin::admin(admin.request_id),
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            id: info.id.into(),
            key: key.key.expose_secret().to_owned(),
            name: info.name,
            role: info.role.into(),
            prefix: info.display_prefix,
            created_at: to_rfc3339(info.created_at),
        }),
    ))
}

/// Lists a tenant's API keys (metadata only).
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/api-keys", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    let tenant = path_tenant(&id)?;
    let keys = state
        .store()
        .admin()
        .list_api_keys(&tenant)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

/// Revokes an API key; it stops working on the next request.
#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/api-keys/{key_id}", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id"), ("key_id" = String, Path, description = "API key id")),
    responses((status = 200, body = ApiKeyView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath((id, key_id)): ApiPath<(String, String)>,
) -> Result<Json<ApiKeyView>, ApiError> {
    let tenant = path_tenant(&id)?;
    let key_id = ApiKeyId::try_from(key_id.as_str()).map_err(|_| ApiError::NotFound)?;
    let info = state
        .store()
        .admin()
        .revoke_api_key(&tenant, &key_id, &Origin::admin(admin.request_id))
        .await?
        .ok_or(ApiError::NotFound)?;
    state.key_cache().clear();
    Ok(Json(info.into()))
}
