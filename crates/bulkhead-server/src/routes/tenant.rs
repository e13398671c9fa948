use axum::Json;
use axum::extract::State;
use bulkhead_core::{ApiKeyId, Role};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::ApiPath;
use crate::routes::dto::{ApiKeyView, IsolationDto, RoleDto};

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub tenant_id: String,
    pub tenant_name: String,
    /// `key:<id>` for an API key, `user:<sub>@<issuer>` for a JWT.
    pub principal: String,
    pub roles: Vec<RoleDto>,
    pub region: String,
    pub allowed_regions: Vec<String>,
    pub isolation: IsolationDto,
    /// For a dedicated tenant: its worker process on the node that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<crate::worker::WorkerView>,
}

/// The tenant and principal the credential authenticates as.
#[utoipa::path(get, path = "/v1/whoami", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = Problem)))]
pub async fn whoami(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Json<WhoAmI> {
    let dedicated = ctx.isolation() == bulkhead_core::Isolation::Dedicated;
    Json(WhoAmI {
        worker: dedicated
            .then(|| crate::routes::dto::worker_view(&state, ctx.tenant_id().as_str()))
            .flatten(),
        tenant_id: ctx.tenant_id().to_string(),
        tenant_name: ctx.tenant_name().to_owned(),
        principal: ctx.principal().to_string(),
        roles: ctx.roles().iter().copied().map(Into::into).collect(),
        region: ctx.region().to_string(),
        allowed_regions: ctx
            .allowed_regions()
            .iter()
            .map(ToString::to_string)
            .collect(),
        isolation: ctx.isolation().into(),
    })
}

const KEY_READERS: &[Role] = &[Role::Owner, Role::Admin];

/// The tenant's own API keys (metadata only). Owner or admin.
#[utoipa::path(get, path = "/v1/api-keys", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_own_api_keys(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    require_role(&ctx, KEY_READERS)?;
    let keys = state.store().tenant(&ctx).api_keys().await?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

/// One of the tenant's API keys. Another tenant's key answers 404, exactly like a missing one.
#[utoipa::path(get, path = "/v1/api-keys/{key_id}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("key_id" = String, Path, description = "API key id")),
    responses((status = 200, body = ApiKeyView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_own_api_key(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(key_id): ApiPath<String>,
) -> Result<Json<ApiKeyView>, ApiError> {
    require_role(&ctx, KEY_READERS)?;
    let key_id = ApiKeyId::try_from(key_id.as_str()).map_err(|_| ApiError::NotFound)?;
    let key = state
        .store()
        .tenant(&ctx)
        .api_key(&key_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(key.into()))
}
