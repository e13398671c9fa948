//! Agents and the tenant's prompt library. Every write of an agent is a new version.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_core::{AgentName, PromptName, Role};
use bulkhead_runtime::agents::AgentSpec;
use bulkhead_runtime::prompts::{PLATFORM_PREFIX, PromptVariables, check_template, render};
use bulkhead_store::{AgentRecord, PromptRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::dto::deleted;

const WRITERS: &[Role] = &[Role::Owner, Role::Admin, Role::Developer];
pub(crate) const READERS: &[Role] = &[
    Role::Owner,
    Role::Admin,
    Role::Developer,
    Role::Viewer,
    Role::Approver,
];
const MAX_SNIPPET_BYTES: usize = 64 * 1024;

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    pub name: String,
    /// Increases with every write; runs record the version they used.
    pub version: i64,
    pub spec: AgentSpec,
    pub created_at: String,
}

fn agent_view(record: AgentRecord) -> Result<AgentView, ApiError> {
    let spec: AgentSpec = serde_json::from_value(record.spec)
        .map_err(|e| ApiError::Internal(format!("stored agent spec: {e}").into()))?;
    Ok(AgentView {
        name: record.name.into(),
        version: record.version,
        spec,
        created_at: to_rfc3339(record.created_at),
    })
}

pub(crate) fn path_agent(name: &str) -> Result<AgentName, ApiError> {
    AgentName::try_from(name).map_err(|_| ApiError::NotFound)
}

/// Creates an agent or writes its next version. Owner, admin or developer.
#[utoipa::path(put, path = "/v1/agents/{name}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Agent name")),
    request_body = AgentSpec,
    responses((status = 201, body = AgentView, description = "first version"), (status = 200, body = AgentView),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn put_agent(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
    ApiJson(spec): ApiJson<AgentSpec>,
) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    require_role(&ctx, WRITERS)?;
    let name =
        AgentName::try_from(name.as_str()).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    spec.validate()
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let value = serde_json::to_value(&spec).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let record = state.store().tenant(&ctx).put_agent(&name, &value).await?;
    let status = if record.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(agent_view(record)?)))
}

/// The tenant's agents, current versions.
#[utoipa::path(get, path = "/v1/agents", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    responses((status = 200, body = Vec<AgentView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_agents(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    require_role(&ctx, READERS)?;
    let records = state.store().tenant(&ctx).agents().await?;
    Ok(Json(
        records
            .into_iter()
            .map(agent_view)
            .collect::<Result<_, _>>()?,
    ))
}

/// One agent's current version. Another tenant's agent answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/agents/{name}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Agent name")),
    responses((status = 200, body = AgentView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_agent(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<AgentView>, ApiError> {
    require_role(&ctx, READERS)?;
    let record = state
        .store()
        .tenant(&ctx)
        .agent(&path_agent(&name)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(agent_view(record)?))
}

/// Deletes an agent; the versions past runs used are kept. Owner, admin or developer.
#[utoipa::path(delete, path = "/v1/agents/{name}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Agent name")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_agent(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require_role(&ctx, WRITERS)?;
    deleted(
        state
            .store()
            .tenant(&ctx)
            .delete_agent(&path_agent(&name)?)
            .await?,
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// The user input, inserted as data (`{{ input }}`), never evaluated.
    pub input: String,
    /// The end user, as `{{ user }}`.
    pub user: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResponse {
    pub agent: String,
    pub version: i64,
    pub system_prompt: String,
}

/// Renders the agent's system prompt for an input, as a run would, without calling a model:
/// a missing variable or snippet is a 422 naming its line.
#[utoipa::path(post, path = "/v1/agents/{name}/prompt-preview", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Agent name")),
    request_body = PreviewRequest,
    responses((status = 200, body = PreviewResponse), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn preview_prompt(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<PreviewRequest>,
) -> Result<Json<PreviewResponse>, ApiError> {
    require_role(&ctx, WRITERS)?;
    let store = state.store().tenant(&ctx);
    let agent = store
        .agent(&path_agent(&name)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    let spec: AgentSpec = serde_json::from_value(agent.spec.clone())
        .map_err(|e| ApiError::Internal(format!("stored agent spec: {e}").into()))?;
    let library = state.runner().prompt_library(&store).await?;
    let variables = PromptVariables::for_agent(&ctx, &agent, request.user, request.input);
    let rendered =
        render(&spec.system_prompt, &library, &variables).map_err(|e| ApiError::Template {
            field: "system_prompt",
            detail: e.to_string(),
            line: e.line(),
        })?;
    Ok(Json(PreviewResponse {
        agent: agent.name.to_string(),
        version: agent.version,
        system_prompt: rendered,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPromptRequest {
    /// A minijinja snippet; templates include it with `{% include "<name>" %}`.
    pub template: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PromptView {
    /// `<name>` for the tenant's snippets, `platform/<name>` for the platform's.
    pub name: String,
    /// `tenant` (editable) or `platform` (read-only).
    pub source: &'static str,
    pub version: i64,
    pub template: String,
    pub updated_at: Option<String>,
}

fn prompt_view(p: PromptRecord) -> PromptView {
    PromptView {
        name: p.name,
        source: "tenant",
        version: p.version,
        template: p.template,
        updated_at: Some(to_rfc3339(p.updated_at)),
    }
}

fn path_prompt(name: &str) -> Result<PromptName, ApiError> {
    PromptName::try_from(name).map_err(|_| ApiError::NotFound)
}

/// Writes a snippet of the tenant's prompt library. Owner, admin or developer.
#[utoipa::path(put, path = "/v1/prompts/{name}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Snippet name")),
    request_body = PutPromptRequest,
    responses((status = 201, body = PromptView), (status = 200, body = PromptView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn put_prompt(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutPromptRequest>,
) -> Result<(StatusCode, Json<PromptView>), ApiError> {
    require_role(&ctx, WRITERS)?;
    let name = PromptName::try_from(name.as_str())
        .map_err(|e| ApiError::invalid("name", e.to_string()))?;
    if body.template.len() > MAX_SNIPPET_BYTES {
        return Err(ApiError::invalid(
            "template",
            format!("must be at most {MAX_SNIPPET_BYTES} bytes"),
        ));
    }
    check_template(&body.template).map_err(|e| ApiError::Template {
        field: "template",
        detail: e.to_string(),
        line: e.line(),
    })?;
    let record = state
        .store()
        .tenant(&ctx)
        .put_prompt(&name, &body.template)
        .await?;
    let status = if record.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(prompt_view(record))))
}

/// The tenant's snippets and, read-only, the platform's.
#[utoipa::path(get, path = "/v1/prompts", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    responses((status = 200, body = Vec<PromptView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_prompts(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<Vec<PromptView>>, ApiError> {
    require_role(&ctx, READERS)?;
    let mut views: Vec<PromptView> = state
        .store()
        .tenant(&ctx)
        .prompts()
        .await?
        .into_iter()
        .map(prompt_view)
        .collect();
    views.extend(
        state
            .runner()
            .platform_prompts()
            .iter()
            .map(|(name, template)| PromptView {
                name: format!("{PLATFORM_PREFIX}{name}"),
                source: "platform",
                version: 1,
                template: template.clone(),
                updated_at: None,
            }),
    );
    Ok(Json(views))
}

/// One of the tenant's snippets. Another tenant's answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/prompts/{name}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Snippet name")),
    responses((status = 200, body = PromptView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_prompt(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PromptView>, ApiError> {
    require_role(&ctx, READERS)?;
    let record = state
        .store()
        .tenant(&ctx)
        .prompt(&path_prompt(&name)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(prompt_view(record)))
}

/// Deletes one of the tenant's snippets. Owner, admin or developer.
#[utoipa::path(delete, path = "/v1/prompts/{name}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Snippet name")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_prompt(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require_role(&ctx, WRITERS)?;
    deleted(
        state
            .store()
            .tenant(&ctx)
            .delete_prompt(&path_prompt(&name)?)
            .await?,
    )
}
