//! Toolsets and policies: what a tenant's agents may call, and under which rules.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_core::{PolicyName, Role, ToolsetName};
use bulkhead_store::{PolicyRecord, ToolsetRecord};
use bulkhead_tools::ToolsetSpec;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::agents::READERS;
use crate::routes::dto::deleted;

const TOOL_WRITERS: &[Role] = &[Role::Owner, Role::Admin, Role::Developer];
/// Policies decide what agents may do and what needs a person: not a developer's call.
const POLICY_WRITERS: &[Role] = &[Role::Owner, Role::Admin];

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolsetView {
    pub name: String,
    pub version: i64,
    pub spec: ToolsetSpec,
    /// The tools agents get from it, as the model sees them (for `mcp`, listed at run time).
    pub tools: Vec<ToolView>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolView {
    /// The name the model calls.
    pub name: String,
    /// The name policies and approvals use.
    pub id: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    pub destructive: bool,
}

fn toolset_view(record: ToolsetRecord) -> Result<ToolsetView, ApiError> {
    let spec: ToolsetSpec = serde_json::from_value(record.spec)
        .map_err(|e| ApiError::Internal(format!("stored toolset spec: {e}").into()))?;
    let tools = spec
        .operations()
        .into_iter()
        .map(|op| ToolView {
            name: format!("{}__{}", record.name, op.name),
            id: format!("{}.{}", record.name, op.name),
            description: op.description,
            parameters: op.parameters,
            destructive: op.destructive,
        })
        .collect();
    Ok(ToolsetView {
        name: record.name,
        version: record.version,
        spec,
        tools,
        created_at: to_rfc3339(record.created_at),
        updated_at: to_rfc3339(record.updated_at),
    })
}

fn path_toolset(name: &str) -> Result<ToolsetName, ApiError> {
    ToolsetName::try_from(name).map_err(|_| ApiError::NotFound)
}

/// Declares a toolset (or writes its next version): a connector kind, the configured
/// endpoint it calls and which of the tenant's credentials it presents. Owner, admin or
/// developer.
#[utoipa::path(put, path = "/v1/tools/{name}", tag = "tools",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Toolset name")),
    request_body = ToolsetSpec,
    responses((status = 201, body = ToolsetView, description = "first version"), (status = 200, body = ToolsetView),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn put_toolset(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
    ApiJson(spec): ApiJson<ToolsetSpec>,
) -> Result<(StatusCode, Json<ToolsetView>), ApiError> {
    require_role(&ctx, TOOL_WRITERS)?;
    let name = ToolsetName::try_from(name.as_str())
        .map_err(|e| ApiError::invalid("name", e.to_string()))?;
    state
        .runner()
        .tools()
        .validate(&spec)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let value = serde_json::to_value(&spec).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let record = state
        .store()
        .tenant(&ctx)
        .put_toolset(name.as_str(), &value)
        .await?;
    let status = if record.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(toolset_view(record)?)))
}

/// The tenant's toolsets.
#[utoipa::path(get, path = "/v1/tools", tag = "tools",
    security(("tenant_credential" = [])),
    responses((status = 200, body = Vec<ToolsetView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_toolsets(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<Vec<ToolsetView>>, ApiError> {
    require_role(&ctx, READERS)?;
    let records = state.store().tenant(&ctx).toolsets().await?;
    Ok(Json(
        records
            .into_iter()
            .map(toolset_view)
            .collect::<Result<_, _>>()?,
    ))
}

/// One toolset. Another tenant's answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/tools/{name}", tag = "tools",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Toolset name")),
    responses((status = 200, body = ToolsetView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_toolset(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ToolsetView>, ApiError> {
    require_role(&ctx, READERS)?;
    let record = state
        .store()
        .tenant(&ctx)
        .toolset(path_toolset(&name)?.as_str())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(toolset_view(record)?))
}

/// Deletes a toolset; agents that name it lose its tools at their next run.
#[utoipa::path(delete, path = "/v1/tools/{name}", tag = "tools",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Toolset name")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_toolset(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require_role(&ctx, TOOL_WRITERS)?;
    deleted(
        state
            .store()
            .tenant(&ctx)
            .delete_toolset(path_toolset(&name)?.as_str())
            .await?,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Cedar policies against the schema at `GET /v1/policies/schema`. They may name only
    /// this tenant's entities: `Bulkhead::Tenant::"<tenant id>"` and ids starting with
    /// `"<tenant id>/"`.
    pub text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub name: String,
    pub version: i64,
    pub text: String,
    pub created_at: String,
    pub updated_at: String,
}

fn policy_view(record: PolicyRecord) -> PolicyView {
    PolicyView {
        name: record.name,
        version: record.version,
        text: record.text,
        created_at: to_rfc3339(record.created_at),
        updated_at: to_rfc3339(record.updated_at),
    }
}

fn path_policy(name: &str) -> Result<PolicyName, ApiError> {
    PolicyName::try_from(name).map_err(|_| ApiError::NotFound)
}

/// Writes one of the tenant's Cedar policy documents. It is parsed, validated against the
/// published schema and checked to name nothing outside the tenant before it is stored; it
/// applies from the next tool call on. Owner or admin.
#[utoipa::path(put, path = "/v1/policies/{name}", tag = "tools",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Policy name")),
    request_body = PolicyInput,
    responses((status = 201, body = PolicyView, description = "first version"), (status = 200, body = PolicyView),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn put_policy(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
    ApiJson(input): ApiJson<PolicyInput>,
) -> Result<(StatusCode, Json<PolicyView>), ApiError> {
    require_role(&ctx, POLICY_WRITERS)?;
    let name = PolicyName::try_from(name.as_str())
        .map_err(|e| ApiError::invalid("name", e.to_string()))?;
    if name.as_str() == "schema" {
        return Err(ApiError::invalid(
            "name",
            "\"schema\" is reserved (GET /v1/policies/schema)",
        ));
    }
    state
        .runner()
        .tools()
        .policies()
        .check_tenant_policy(ctx.tenant_id(), name.as_str(), &input.text)
        .map_err(|e| ApiError::invalid("text", e.to_string()))?;
    let store = state.store().tenant(&ctx);
    if store.policy(name.as_str()).await?.is_none()
        && store.policies().await?.1.len() >= bulkhead_tools::policy::MAX_POLICIES_PER_TENANT
    {
        return Err(ApiError::invalid(
            "name",
            format!(
                "a tenant may hold at most {} policy documents",
                bulkhead_tools::policy::MAX_POLICIES_PER_TENANT
            ),
        ));
    }
    let record = store.put_policy(name.as_str(), &input.text).await?;
    let status = if record.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(policy_view(record))))
}

/// The tenant's policy documents.
#[utoipa::path(get, path = "/v1/policies", tag = "tools",
    security(("tenant_credential" = [])),
    responses((status = 200, body = Vec<PolicyView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_policies(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<Vec<PolicyView>>, ApiError> {
    require_role(&ctx, READERS)?;
    let (_, records) = state.store().tenant(&ctx).policies().await?;
    Ok(Json(records.into_iter().map(policy_view).collect()))
}

/// One policy document. Another tenant's answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/policies/{name}", tag = "tools",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = PolicyView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_policy(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PolicyView>, ApiError> {
    require_role(&ctx, READERS)?;
    let record = state
        .store()
        .tenant(&ctx)
        .policy(path_policy(&name)?.as_str())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(policy_view(record)))
}

/// Deletes a policy document. Owner or admin.
#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "tools",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_policy(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require_role(&ctx, POLICY_WRITERS)?;
    deleted(
        state
            .store()
            .tenant(&ctx)
            .delete_policy(path_policy(&name)?.as_str())
            .await?,
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicySchemaView {
    /// The Cedar schema, in Cedar's schema syntax.
    pub cedar_schema: String,
    /// The platform's policies, which apply to every tenant alongside its own.
    pub platform_policies: String,
}

/// The Cedar schema tenant policies are validated against, and the platform's policies.
#[utoipa::path(get, path = "/v1/policies/schema", tag = "tools",
    security(("tenant_credential" = [])),
    responses((status = 200, body = PolicySchemaView), (status = 401, body = Problem)))]
pub async fn policy_schema(
    State(state): State<AppState>,
    Authenticated(_ctx): Authenticated,
) -> Json<PolicySchemaView> {
    let platform = state
        .runner()
        .tools()
        .config()
        .platform_policies
        .clone()
        .unwrap_or_else(|| bulkhead_tools::policy::DEFAULT_PLATFORM_POLICIES.to_owned());
    Json(PolicySchemaView {
        cedar_schema: bulkhead_tools::policy::SCHEMA.to_owned(),
        platform_policies: platform,
    })
}
