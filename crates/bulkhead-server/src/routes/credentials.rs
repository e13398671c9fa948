//! The tenant's credentials: write-only secrets with readable metadata. No route ever returns
//! a secret.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_core::{ConnectorName, Role};
use bulkhead_store::CredentialRecord;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::dto::deleted;

const WRITERS: &[Role] = &[Role::Owner, Role::Admin];
const READERS: &[Role] = &[Role::Owner, Role::Admin, Role::Developer];
const MAX_SECRET_BYTES: usize = 16 * 1024;
const MAX_FIELDS_BYTES: usize = 8 * 1024;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCredentialRequest {
    /// The secret (API key, token, password). Stored encrypted; never returned.
    pub secret: String,
    /// Non-secret metadata such as `base_url`, `workspace` or `scopes`. Readable by developers.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: Option<serde_json::Value>,
}

/// A credential's metadata: everything but the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialView {
    pub connector: String,
    /// Increases with every write.
    pub version: i64,
    #[schema(value_type = Object)]
    pub fields: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

impl From<CredentialRecord> for CredentialView {
    fn from(r: CredentialRecord) -> Self {
        Self {
            connector: r.connector.into(),
            version: r.version,
            fields: r.fields,
            created_at: to_rfc3339(r.created_at),
            updated_at: to_rfc3339(r.updated_at),
        }
    }
}

fn path_connector(name: &str) -> Result<ConnectorName, ApiError> {
    ConnectorName::try_from(name).map_err(|_| ApiError::NotFound)
}

/// Stores (or replaces, as a new version) the tenant's secret for a connector. Owner or admin.
#[utoipa::path(put, path = "/v1/credentials/{connector}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("connector" = String, Path, description = "Connector name (lowercase letters, digits, '-')")),
    request_body = PutCredentialRequest,
    responses((status = 201, body = CredentialView, description = "first version"),
        (status = 200, body = CredentialView, description = "a new version"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn put_credential(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(connector): ApiPath<String>,
    ApiJson(body): ApiJson<PutCredentialRequest>,
) -> Result<(StatusCode, Json<CredentialView>), ApiError> {
    require_role(&ctx, WRITERS)?;
    let connector = ConnectorName::try_from(connector.as_str())
        .map_err(|e| ApiError::invalid("connector", e.to_string()))?;
    let secret = SecretString::from(body.secret);
    let length = secrecy::ExposeSecret::expose_secret(&secret).len();
    if length == 0 || length > MAX_SECRET_BYTES {
        return Err(ApiError::invalid(
            "secret",
            format!("must be 1 to {MAX_SECRET_BYTES} bytes"),
        ));
    }
    let fields = body.fields.unwrap_or_else(|| serde_json::json!({}));
    if fields.to_string().len() > MAX_FIELDS_BYTES {
        return Err(ApiError::invalid(
            "fields",
            format!("must be at most {MAX_FIELDS_BYTES} bytes as JSON"),
        ));
    }
    let record = state
        .vault()
        .put(&state.store().tenant(&ctx), &connector, &secret, fields)
        .await?;
    let status = if record.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record.into())))
}

/// The tenant's credentials (metadata only). Owner, admin or developer.
#[utoipa::path(get, path = "/v1/credentials", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    responses((status = 200, body = Vec<CredentialView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_credentials(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    require_role(&ctx, READERS)?;
    let records = state.store().tenant(&ctx).credentials().await?;
    Ok(Json(records.into_iter().map(Into::into).collect()))
}

/// One credential's metadata. Another tenant's connector answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/credentials/{connector}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("connector" = String, Path, description = "Connector name")),
    responses((status = 200, body = CredentialView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_credential(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(connector): ApiPath<String>,
) -> Result<Json<CredentialView>, ApiError> {
    require_role(&ctx, READERS)?;
    let connector = path_connector(&connector)?;
    let record = state
        .store()
        .tenant(&ctx)
        .credential(&connector)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(record.into()))
}

/// Deletes a credential. Owner or admin.
#[utoipa::path(delete, path = "/v1/credentials/{connector}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("connector" = String, Path, description = "Connector name")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_credential(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(connector): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require_role(&ctx, WRITERS)?;
    let connector = path_connector(&connector)?;
    let rows = state
        .store()
        .tenant(&ctx)
        .delete_credential(&connector)
        .await?;
    state.vault().forget_credentials(Some(ctx.tenant_id()));
    deleted(rows)
}
