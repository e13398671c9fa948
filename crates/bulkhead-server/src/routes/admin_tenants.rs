use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bulkhead_core::audit::Origin;
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_core::{RegionName, TenantId};
use bulkhead_store::{DeletionReceipt, NewTenant, TenantPatch};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::authn::Admin;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::dto::{IsolationDto, StatusDto, TenantView, validate_name};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// Lowercase letters, digits and `-`, 1 to 63 characters.
    pub id: String,
    pub name: String,
    /// One of the deployment's regions; defaults to the first configured one.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub isolation: Option<IsolationDto>,
    /// Regions besides the home region where the tenant's data may go (egress to any other
    /// region fails closed). Each must be one of the deployment's regions.
    #[serde(default)]
    pub allowed_regions: Option<Vec<String>>,
}

/// Creates a tenant.
#[utoipa::path(post, path = "/admin/v1/tenants", tag = "control-plane",
    security(("admin_token" = [])),
    request_body = CreateTenantRequest,
    responses(
        (status = 201, body = TenantView),
        (status = 401, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(body): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, HeaderMap, Json<TenantView>), ApiError> {
    let id =
        TenantId::try_from(body.id.as_str()).map_err(|e| ApiError::invalid("id", e.to_string()))?;
    let name = validate_name("name", &body.name)?;
    let region = match body.region {
        None => state
            .regions()
            .first()
            .cloned()
            .ok_or_else(|| ApiError::invalid("region", "no region is configured"))?,
        Some(region) => configured_region(&state, "region", &region)?,
    };
    let allowed_regions = allowed_regions(&state, body.allowed_regions)?.unwrap_or_default();
    let new = NewTenant {
        id,
        name,
        region,
        allowed_regions,
        isolation: body.isolation.unwrap_or(IsolationDto::Shared).into(),
    };
    let tenant = state
        .store()
        .admin()
        .create_tenant(new, &Origin::admin(admin.request_id))
        .await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/admin/v1/tenants/{}", tenant.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(tenant.into())))
}

/// A region named in a request, which must be one this deployment serves.
fn configured_region(state: &AppState, field: &str, name: &str) -> Result<RegionName, ApiError> {
    let region = RegionName::try_from(name).map_err(|e| ApiError::invalid(field, e.to_string()))?;
    if !state.regions().contains(&region) {
        return Err(ApiError::invalid(
            field,
            format!(
                "unknown region {region}; this deployment serves {}",
                region_list(state.regions())
            ),
        ));
    }
    Ok(region)
}

fn allowed_regions(
    state: &AppState,
    names: Option<Vec<String>>,
) -> Result<Option<Vec<RegionName>>, ApiError> {
    names
        .map(|names| {
            let mut regions = names
                .iter()
                .map(|name| configured_region(state, "allowed_regions", name))
                .collect::<Result<Vec<_>, _>>()?;
            regions.sort();
            regions.dedup();
            Ok(regions)
        })
        .transpose()
}

fn region_list(regions: &[RegionName]) -> String {
    regions
        .iter()
        .map(RegionName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 500; default 50.
    pub limit: Option<u32>,
    /// Return tenants whose id sorts after this one (the previous page's `next_after`).
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantPage {
    pub items: Vec<TenantView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// Lists tenants by id, a page at a time.
#[utoipa::path(get, path = "/admin/v1/tenants", tag = "control-plane",
    security(("admin_token" = [])),
    params(ListQuery),
    responses((status = 200, body = TenantPage), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<TenantPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let after = query
        .after
        .map(|a| {
            TenantId::try_from(a.as_str()).map_err(|e| ApiError::invalid("after", e.to_string()))
        })
        .transpose()?;
    let page = state
        .store()
        .admin()
        .list_tenants(after.as_ref(), limit)
        .await?;
    Ok(Json(TenantPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_after: page.next_after,
    }))
}

/// A path id that is not a valid tenant id names no tenant: 404, like a missing one.
pub(crate) fn path_tenant(id: &str) -> Result<TenantId, ApiError> {
    TenantId::try_from(id).map_err(|_| ApiError::NotFound)
}

/// Reads one tenant.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = TenantView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantView>, ApiError> {
    let id = path_tenant(&id)?;
    let tenant = state
        .store()
        .admin()
        .get_tenant(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(TenantView::from(tenant).with_worker(&state)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTenantRequest {
    pub name: Option<String>,
    /// `suspended` refuses every credential of the tenant from the next request on;
    /// `active` lets them in again.
    pub status: Option<StatusDto>,
    /// Replaces the regions besides the home region where the tenant's data may go.
    pub allowed_regions: Option<Vec<String>>,
    /// Moves the tenant's agent work between the shared pool and a dedicated worker. Waits
    /// for its runs in flight to finish (new ones wait meanwhile), then switches: no run is
    /// lost or run twice. 409 `conflict` if they do not finish within `workers.drain_seconds`.
    pub isolation: Option<IsolationDto>,
}

/// Renames, suspends or reactivates a tenant, or changes its isolation tier.
#[utoipa::path(patch, path = "/admin/v1/tenants/{id}", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    request_body = PatchTenantRequest,
    responses((status = 200, body = TenantView), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn patch_tenant(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchTenantRequest>,
) -> Result<Json<TenantView>, ApiError> {
    let id = path_tenant(&id)?;
    let patch = TenantPatch {
        name: body
            .name
            .as_deref()
            .map(|n| validate_name("name", n))
            .transpose()?,
        status: body.status.map(Into::into),
        allowed_regions: allowed_regions(&state, body.allowed_regions)?,
        isolation: body.isolation.map(Into::into),
    };
    let isolation = patch.isolation;
    // A change of tier holds the tenant's gate exclusively: it waits for the runs in flight
    // on either side, and runs that arrive meanwhile wait behind it and then read the new tier.
    let mut switching = match isolation {
        None => None,
        Some(_) => {
            let drain = std::time::Duration::from_secs(
                state
                    .workers()
                    .map_or(30, |workers| workers.config().drain_seconds),
            );
            let gate = tokio::time::timeout(drain, state.tier_gate(&id).write_owned())
                .await
                .map_err(|_| {
                    ApiError::Conflict(format!(
                        "the tenant's runs in flight did not finish within {} s; its tier is unchanged",
                        drain.as_secs()
                    ))
                })?;
            Some(gate)
        }
    };
    let tenant = state
        .store()
        .admin()
        .update_tenant(&id, patch, &Origin::admin(admin.request_id))
        .await?
        .ok_or(ApiError::NotFound)?;
    // A suspension or a change of tier or regions takes effect on the next request.
    state.key_cache().clear();
    if let Some(gate) = switching.as_mut() {
        **gate = Some(tenant.isolation);
    }
    if isolation == Some(bulkhead_core::Isolation::Shared)
        && let Some(workers) = state.workers()
    {
        workers.retire(&id).await;
    }
    Ok(Json(TenantView::from(tenant).with_worker(&state)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletionReceiptView {
    pub tenant_id: String,
    pub deleted_at: String,
    /// Data key versions destroyed (first), making the tenant's sealed secrets unrecoverable.
    pub data_keys_destroyed: u64,
    pub credentials_destroyed: u64,
    pub api_keys_deleted: u64,
    pub issuers_deleted: u64,
    /// Sequence number of the `tenant.deleted` event in the tenant's audit chain.
    pub audit_seq: i64,
}

impl From<DeletionReceipt> for DeletionReceiptView {
    fn from(r: DeletionReceipt) -> Self {
        Self {
            tenant_id: r.tenant_id.into(),
            deleted_at: to_rfc3339(r.deleted_at),
            data_keys_destroyed: r.data_keys_destroyed,
            credentials_destroyed: r.credentials_destroyed,
            api_keys_deleted: r.api_keys_deleted,
            issuers_deleted: r.issuers_deleted,
            audit_seq: r.audit_seq,
        }
    }
}

/// Deletes a tenant: destroys its data keys first (crypto-shredding its credentials), then its
/// credentials, API keys and issuers. Its audit trail stays, ending with the deletion.
#[utoipa::path(delete, path = "/admin/v1/tenants/{id}", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = DeletionReceiptView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_tenant(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeletionReceiptView>, ApiError> {
    let id = path_tenant(&id)?;
    let receipt = state
        .store()
        .admin()
        .delete_tenant(&id, &Origin::admin(admin.request_id))
        .await?
        .ok_or(ApiError::NotFound)?;
    state.key_cache().clear();
    state.vault().forget_credentials(Some(&id));
    Ok(Json(receipt.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantModelsRequest {
    /// Model aliases this tenant may use beyond the deployment's `default_models`. Replaces the
    /// previous list.
    pub aliases: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantModelsView {
    pub tenant_id: String,
    pub aliases: Vec<String>,
}

/// Grants a tenant model aliases beyond the defaults.
#[utoipa::path(put, path = "/admin/v1/tenants/{id}/models", tag = "control-plane",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    request_body = TenantModelsRequest,
    responses((status = 200, body = TenantModelsView), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn put_tenant_models(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TenantModelsRequest>,
) -> Result<Json<TenantModelsView>, ApiError> {
    let id = path_tenant(&id)?;
    let mut aliases = body.aliases;
    aliases.sort();
    aliases.dedup();
    if let Some(unknown) = aliases.iter().find(|a| !state.runner().knows_model(a)) {
        return Err(ApiError::invalid(
            "aliases",
            format!("no model alias {unknown:?} is configured"),
        ));
    }
    let aliases = state
        .store()
        .admin()
        .set_tenant_models(&id, &aliases, &Origin::admin(admin.request_id))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(TenantModelsView {
        tenant_id: id.into(),
        aliases,
    }))
}
