//! Agents and the tenant's prompt library. Every write of an agent is a new version.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_core::{AgentName, PromptName, Role, TenantContext};
use bulkhead_runtime::agents::AgentSpec;
use bulkhead_runtime::prompts::{
    AgentVars, PLATFORM_PREFIX, PromptLibrary, PromptVariables, TenantVars, check_template, render,
};
use bulkhead_store::{AgentRecord, PromptRecord, TenantStore};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::authn::{Authenticated, require_role};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::dto::deleted;

const WRITERS: &[Role] = &[Role::Owner, Role::Admin, Role::Developer];
const READERS: &[Role] = &[
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

fn path_agent(name: &str) -> Result<AgentName, ApiError> {
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

/// The tenant's library as templates see it: its own snippets plus the platform's.
async fn library(state: &AppState, store: &TenantStore<'_>) -> Result<PromptLibrary, ApiError> {
    let own = store
        .prompts()
        .await?
        .into_iter()
        .map(|p| (p.name, p.template));
    Ok(PromptLibrary::new(own, state.platform_prompts()))
}

fn variables(ctx: &TenantContext, agent: &AgentRecord, request: PreviewRequest) -> PromptVariables {
    PromptVariables {
        tenant: TenantVars {
            id: ctx.tenant_id().to_string(),
            name: ctx.tenant_name().to_owned(),
        },
        agent: AgentVars {
            name: agent.name.to_string(),
            version: agent.version,
        },
        user: request.user,
        input: request.input,
        context: Vec::new(),
        memory: Vec::new(),
    }
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
    let library = library(&state, &store).await?;
    let rendered = render(
        &spec.system_prompt,
        &library,
        &variables(&ctx, &agent, request),
    )
    .map_err(|e| ApiError::Template {
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The user's message, inserted as data.
    pub input: String,
    /// The end user the run acts for, as `{{ user }}`. Threads belong to one end user.
    pub end_user: Option<String>,
    /// Continue this conversation. Another tenant's or another end user's thread is a 404.
    pub thread_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    /// The conversation this run belongs to, if any.
    pub thread_id: Option<String>,
    pub agent: String,
    /// The agent version this run used.
    pub agent_version: i64,
    /// `running`, `completed` or `failed`.
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    /// Stable code of the failure, such as `max_steps_exceeded`, `template_error`,
    /// `provider_unauthorized`, `residency_violation` or `interrupted`.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub steps: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The messages exchanged with the model, system prompt first.
    #[schema(value_type = Vec<Object>)]
    pub transcript: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

impl From<bulkhead_store::RunRecord> for RunView {
    fn from(r: bulkhead_store::RunRecord) -> Self {
        Self {
            id: r.run_id,
            thread_id: r.thread_id,
            agent: r.agent,
            agent_version: r.agent_version,
            status: r.status,
            input: r.input,
            output: r.output,
            error_code: r.error_code,
            error_message: r.error_message,
            steps: r.steps,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            transcript: r.transcript,
            created_at: to_rfc3339(r.created_at),
            updated_at: to_rfc3339(r.updated_at),
        }
    }
}

const RUNNERS: &[Role] = &[Role::Owner, Role::Admin, Role::Developer, Role::Agent];

/// Runs the agent's current version to completion and answers the finished run (a failed run
/// is still a 200, with `status` `failed` and an `error_code`).
#[utoipa::path(post, path = "/v1/agents/{name}/runs", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("name" = String, Path, description = "Agent name")),
    request_body = RunRequest,
    responses((status = 200, body = RunView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn create_run(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<Json<RunView>, ApiError> {
    require_role(&ctx, RUNNERS)?;
    if request.input.len() > 256 * 1024 {
        return Err(ApiError::invalid("input", "must be at most 256 KiB"));
    }
    let store = state.store().tenant(&ctx);
    let agent = store
        .agent(&path_agent(&name)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    let input = bulkhead_runtime::runs::RunInput {
        thread_id: request.thread_id,
        input: request.input,
        user: request.end_user,
    };
    let run = state
        .runner()
        .run(&store, &agent, input)
        .await
        .map_err(|e| match e {
            bulkhead_runtime::runs::RunError::ThreadNotFound => ApiError::NotFound,
            bulkhead_runtime::runs::RunError::Store(e) => e.into(),
        })?;
    Ok(Json(run.into()))
}

/// One of the tenant's runs. Another tenant's run id answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_run(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunView>, ApiError> {
    require_role(&ctx, READERS)?;
    let run = state
        .store()
        .tenant(&ctx)
        .run(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(run.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ThreadQuery {
    /// The end user the thread belongs to (omit for threads without one).
    pub end_user: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadMessageView {
    pub seq: i64,
    pub role: String,
    pub content: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadView {
    pub id: String,
    pub messages: Vec<ThreadMessageView>,
}

/// A conversation. Another tenant's or another end user's thread answers 404 like a missing one.
#[utoipa::path(get, path = "/v1/threads/{id}", tag = "tenant-plane",
    security(("tenant_credential" = [])),
    params(("id" = String, Path, description = "Thread id"), ThreadQuery),
    responses((status = 200, body = ThreadView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_thread(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    ApiPath(id): ApiPath<String>,
    crate::extract::ApiQuery(query): crate::extract::ApiQuery<ThreadQuery>,
) -> Result<Json<ThreadView>, ApiError> {
    require_role(&ctx, RUNNERS)?;
    let messages = state
        .store()
        .tenant(&ctx)
        .thread_messages(&id, query.end_user.as_deref().unwrap_or_default())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(ThreadView {
        id,
        messages: messages
            .into_iter()
            .map(|m| ThreadMessageView {
                seq: m.seq,
                role: m.role,
                content: m.content,
                created_at: to_rfc3339(m.created_at),
            })
            .collect(),
    }))
}
