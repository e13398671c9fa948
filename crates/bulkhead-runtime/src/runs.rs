//! The run loop: render the system prompt, call the model, answer its tool calls, repeat up to
//! `max_steps`, and persist the run as it starts and as it ends.
//!
//! An agent with knowledge bases gets passages for its input in its prompt and the built-in
//! `retrieve` tool (`retrieval.rs`). An agent with toolsets gets their operations: each call is
//! checked against its schema, decided by the tenant's and the platform's policies, and made
//! through egress with the tenant's credential. A call that needs a person's approval pauses
//! the run durably (`awaiting_approval`); [`Runner::resume`] continues it once decided.

use std::collections::BTreeMap;
use std::sync::Arc;

use bulkhead_core::config::{ModelConfig, ProviderKind};
use bulkhead_egress::Egress;
use bulkhead_knowledge::{Knowledge, KnowledgeError};
use bulkhead_store::{
    AgentRecord, ApprovalRecord, RunEnd, RunProgress, RunRecord, StoreError, TenantStore,
};
use bulkhead_tools::{Caller, ToolError, Toolbox, Tools};

use crate::quotas::{QuotaError, Quotas};
use crate::tool_calls::{self, CallOrigin, Gate, refusal};
use serde::Serialize;
use serde_json::json;

use crate::agents::{AgentSpec, SCRIPTED_MODEL, ScriptStep};
use crate::prompts::{MemoryTurn, PromptLibrary, PromptVariables, reads_variable, render};
use crate::providers::local::LocalModels;
use crate::providers::{
    self, ChatMessage, ChatRequest, ChatResponse, Delta, DeltaSink, ProviderError, ToolCall,
    ToolSpec, Usage,
};
use crate::retrieval::{self, RETRIEVE_TOOL};

/// What a streaming run reports as it goes. The HTTP layer sends each as a server-sent event
/// named by its `type`, then `run.completed` or `run.failed` with the stored run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum RunEvent {
    #[serde(rename = "run.started")]
    Started {
        run_id: String,
        agent: String,
        agent_version: i64,
        thread_id: Option<String>,
    },
    /// Text of the model's answer as it arrives.
    #[serde(rename = "message.delta")]
    MessageDelta { step: i64, text: String },
    #[serde(rename = "tool.called")]
    ToolCalled {
        step: i64,
        id: String,
        name: String,
        arguments: String,
    },
    #[serde(rename = "tool.result")]
    ToolResult {
        step: i64,
        id: String,
        content: String,
    },
    /// A tool call waits for a person's decision; the run stops here and continues later.
    #[serde(rename = "approval.requested")]
    ApprovalRequested {
        step: i64,
        approval_id: String,
        tool: String,
        target: String,
    },
}

impl RunEvent {
    /// The server-sent event name.
    pub fn name(&self) -> &'static str {
        match self {
            RunEvent::Started { .. } => "run.started",
            RunEvent::MessageDelta { .. } => "message.delta",
            RunEvent::ToolCalled { .. } => "tool.called",
            RunEvent::ToolResult { .. } => "tool.result",
            RunEvent::ApprovalRequested { .. } => "approval.requested",
        }
    }
}

/// Where a run sends its events; a run that nobody streams gets a sink that drops them.
pub type EventSink<'a> = &'a mut (dyn FnMut(RunEvent) + Send);

/// Runs agents for any tenant; each run is bound to the tenant of the store handle given.
#[derive(Clone)]
pub struct Runner {
    pub(crate) egress: Egress,
    pub(crate) models: Vec<ModelConfig>,
    /// Aliases every tenant may use; `None` means all of `models`.
    default_models: Option<Vec<String>>,
    platform_prompts: BTreeMap<String, String>,
    local: LocalModels,
    knowledge: Arc<Knowledge>,
    tools: Arc<Tools>,
    quotas: Arc<Quotas>,
    /// Whether this process is the shared pool or one tenant's dedicated worker; recorded on
    /// every run it starts, beside its process id.
    isolation: bulkhead_core::Isolation,
}

#[derive(Debug, Clone)]
pub struct RunInput {
    pub input: String,
    /// The end user the run acts for; threads are scoped to it.
    pub user: Option<String>,
    /// Continue this thread (it must be this tenant's and this end user's).
    pub thread_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The thread does not exist, or is another tenant's or another end user's: all answer
    /// alike, so thread ids cannot be probed.
    #[error("no such thread")]
    ThreadNotFound,
    /// Refused before it started: the tenant's budget is spent or its run slots are taken.
    #[error(transparent)]
    Quota(QuotaError),
}

impl From<QuotaError> for RunError {
    fn from(error: QuotaError) -> Self {
        match error {
            QuotaError::Store(e) => RunError::Store(e),
            other => RunError::Quota(other),
        }
    }
}

/// What a run has produced so far, kept whether it completes or fails.
#[derive(Default)]
struct Progress {
    transcript: Vec<ChatMessage>,
    usage: Usage,
    steps: i64,
}

impl Progress {
    /// The stored form.
    fn saved(&self) -> RunProgress {
        RunProgress {
            transcript: serde_json::to_value(&self.transcript).unwrap_or_default(),
            steps: self.steps,
            input_tokens: i64::try_from(self.usage.input_tokens).unwrap_or(i64::MAX),
            output_tokens: i64::try_from(self.usage.output_tokens).unwrap_or(i64::MAX),
        }
    }
}

/// The run being driven and where its events go.
struct Turn<'a, 'e> {
    run_id: &'a str,
    streaming: bool,
    events: EventSink<'e>,
    progress: Progress,
    /// Names the delimiters of retrieved passages; random per run (and per resumption).
    boundary: String,
    toolbox: Toolbox,
}

/// How driving a run ended, short of a failure.
enum Outcome {
    Completed(String),
    /// Waiting for a person; the run is stored `awaiting_approval`.
    Paused,
}

/// What answering one tool call needs of its run. Borrowed apart from the run's event sink,
/// which is not `Sync` and so must not be held across an await by shared reference.
struct CallScope<'t> {
    run_id: &'t str,
    boundary: &'t str,
    toolbox: &'t Toolbox,
}

/// What a tool call gets: an answer for the model, or a pause for approval.
enum CallAnswer {
    Content(String),
    Pause,
}

/// A failure the run records (and the caller sees in the finished run), with a stable code.
struct Failure {
    code: &'static str,
    message: String,
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure {
            code: "internal",
            message: error.to_string(),
        }
    }
}

impl From<KnowledgeError> for Failure {
    fn from(error: KnowledgeError) -> Self {
        Failure {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

impl From<ProviderError> for Failure {
    fn from(error: ProviderError) -> Self {
        Failure {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

impl Runner {
    pub fn new(
        egress: Egress,
        models: Vec<ModelConfig>,
        default_models: Option<Vec<String>>,
        platform_prompts: BTreeMap<String, String>,
        local: LocalModels,
        knowledge: Arc<Knowledge>,
        tools: Arc<Tools>,
    ) -> Self {
        Self {
            knowledge,
            tools,
            egress,
            models,
            default_models,
            platform_prompts,
            local,
            quotas: Arc::new(Quotas::new(bulkhead_core::config::LimitsConfig::default())),
            isolation: bulkhead_core::Isolation::Shared,
        }
    }

    /// Marks this runner as a dedicated worker's (runs record it).
    pub fn serving(mut self, isolation: bulkhead_core::Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Applies the tenants' token budgets and run caps (none by default).
    pub fn with_limits(mut self, limits: bulkhead_core::config::LimitsConfig) -> Self {
        self.quotas = Arc::new(Quotas::new(limits));
        self
    }

    /// Token budgets and run caps, which the plain gateway checks too.
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    /// Knowledge bases: what runs retrieve from and what the HTTP routes ingest into.
    pub fn knowledge(&self) -> &Arc<Knowledge> {
        &self.knowledge
    }

    /// Toolsets, policies and tool calls.
    pub fn tools(&self) -> &Arc<Tools> {
        &self.tools
    }

    /// The platform's snippets, read-only to tenants.
    pub fn platform_prompts(&self) -> &BTreeMap<String, String> {
        &self.platform_prompts
    }

    /// What the tenant of `store`'s templates may include: its own snippets and the
    /// platform's.
    pub async fn prompt_library(
        &self,
        store: &TenantStore<'_>,
    ) -> Result<PromptLibrary, StoreError> {
        let own = store
            .prompts()
            .await?
            .into_iter()
            .map(|p| (p.name, p.template));
        Ok(PromptLibrary::new(own, &self.platform_prompts))
    }

    /// Sends `request` (its `model` already the upstream name) to `model`'s provider; with a
    /// sink, as a stream whose deltas go there.
    pub(crate) async fn provider_chat(
        &self,
        egress: &bulkhead_egress::TenantEgress<'_>,
        model: &ModelConfig,
        request: &ChatRequest,
        sink: Option<DeltaSink<'_>>,
    ) -> Result<ChatResponse, ProviderError> {
        let endpoint = &model.endpoint;
        match (model.provider, sink) {
            (ProviderKind::Openai, None) => {
                providers::openai::chat(egress, endpoint, request).await
            }
            (ProviderKind::Openai, Some(sink)) => {
                providers::openai::chat_stream(egress, endpoint, request, sink).await
            }
            (ProviderKind::Anthropic, None) => {
                providers::anthropic::chat(egress, endpoint, request).await
            }
            (ProviderKind::Anthropic, Some(sink)) => {
                providers::anthropic::chat_stream(egress, endpoint, request, sink).await
            }
            (ProviderKind::Local, sink) => {
                let local = self.local.get(&model.alias).ok_or_else(|| {
                    ProviderError::Local(format!("model {} is not loaded", model.alias))
                })?;
                providers::local::chat(local, request, sink).await
            }
        }
    }

    /// A configured model by alias (not the built-in scripted one), for its prices.
    pub fn model_config(&self, alias: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.alias == alias)
    }

    /// Whether `alias` is a configured model (or the built-in scripted one).
    pub fn knows_model(&self, alias: &str) -> bool {
        alias == SCRIPTED_MODEL || self.model_config(alias).is_some()
    }

    /// Whether the tenant of `store` may use `alias`: a default alias, or one granted to it.
    /// The scripted model makes no outbound call and is always allowed.
    pub async fn may_use_model(
        &self,
        store: &TenantStore<'_>,
        alias: &str,
    ) -> Result<bool, StoreError> {
        if alias == SCRIPTED_MODEL {
            return Ok(true);
        }
        let default = match &self.default_models {
            None => self.models.iter().any(|m| m.alias == alias),
            Some(list) => list.iter().any(|m| m == alias),
        };
        Ok(default || store.extra_models().await?.iter().any(|m| m == alias))
    }

    /// Runs `agent` (at the version given) to completion and returns the stored run. With a
    /// thread, the conversation so far comes before the input, and the exchange is appended
    /// when the run completes; an agent with `memory` and no thread given starts one.
    ///
    /// With `events`, the run streams: model answers are requested as streams and every
    /// delta, tool call and tool result is reported as it happens.
    pub async fn run(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        input: RunInput,
        events: Option<EventSink<'_>>,
    ) -> Result<RunRecord, RunError> {
        let streaming = events.is_some();
        let mut ignore = |_: RunEvent| {};
        let events: EventSink<'_> = match events {
            Some(sink) => sink,
            None => &mut ignore,
        };
        self.run_observed(store, agent, input, events, streaming)
            .await
    }

    /// [`Runner::run`] with its events always reported (a forwarding process needs the run
    /// id as soon as it exists), and model answers streamed only if `streaming`.
    pub async fn run_observed(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        input: RunInput,
        events: EventSink<'_>,
        streaming: bool,
    ) -> Result<RunRecord, RunError> {
        // Refused before anything is stored: a run that cannot get a model answer is no run.
        let _slot = self.quotas.run_slot(store.context().tenant_id())?;
        self.quotas.check_tokens(store).await?;
        let end_user = input.user.clone().unwrap_or_default();
        // A stored spec that no longer parses still gets a run, recorded as failed.
        let spec = serde_json::from_value::<AgentSpec>(agent.spec.clone())
            .map_err(|e| format!("stored agent spec: {e}"));
        let memory_on = spec.as_ref().is_ok_and(|s| s.memory);
        let (thread_id, memory) = match &input.thread_id {
            Some(id) => {
                let messages = store
                    .thread_messages(id, &end_user)
                    .await?
                    .ok_or(RunError::ThreadNotFound)?;
                (Some(id.clone()), messages)
            }
            None if memory_on => {
                let id = bulkhead_core::ids::new_thread_id();
                store.create_thread(&id, &end_user).await?;
                (Some(id), Vec::new())
            }
            None => (None, Vec::new()),
        };
        let memory: Vec<MemoryTurn> = memory
            .into_iter()
            .map(|m| MemoryTurn {
                role: m.role,
                content: m.content,
            })
            .collect();
        let run_id = bulkhead_core::ids::new_run_id();
        store
            .start_run(
                &run_id,
                thread_id.as_deref(),
                &agent.name,
                agent.version,
                &input.input,
                bulkhead_store::RunProcess::current(self.isolation),
            )
            .await?;
        events(RunEvent::Started {
            run_id: run_id.clone(),
            agent: agent.name.to_string(),
            agent_version: agent.version,
            thread_id: thread_id.clone(),
        });
        let user_input = input.input.clone();
        let mut turn = Turn {
            run_id: &run_id,
            streaming,
            events,
            progress: Progress::default(),
            boundary: bulkhead_core::ids::new_boundary(),
            toolbox: Toolbox::default(),
        };
        let meter = self.cpu_meter(store);
        let result = match &spec {
            Ok(spec) => {
                crate::cpu::metered(
                    meter,
                    self.drive(store, agent, spec, input, memory, &mut turn),
                )
                .await
            }
            Err(message) => Err(Failure {
                code: "internal",
                message: message.clone(),
            }),
        };
        self.conclude(
            store,
            &run_id,
            thread_id.as_deref(),
            &user_input,
            turn.progress,
            result,
        )
        .await
    }

    /// Continues a paused run whose approval has been decided (or has expired): the call
    /// waiting for it runs or is refused, and the loop goes on. Exactly one caller gets to
    /// resume a run; the others (and a run not paused, or still pending) get `None`.
    pub async fn resume(
        &self,
        store: &TenantStore<'_>,
        run_id: &str,
    ) -> Result<Option<RunRecord>, RunError> {
        if !store
            .claim_paused_run(run_id, bulkhead_store::RunProcess::current(self.isolation))
            .await?
        {
            return Ok(None);
        }
        let run = store
            .run(run_id)
            .await?
            .ok_or(StoreError::NotFound("run"))?;
        let approval = store.run_approval(run_id).await?;
        let agent = match bulkhead_core::AgentName::try_from(run.agent.as_str()) {
            Ok(name) => store.agent_version(&name, run.agent_version).await?,
            Err(_) => None,
        };
        let spec = agent
            .as_ref()
            .ok_or_else(|| "the run's agent version is gone".to_owned())
            .and_then(|a| {
                serde_json::from_value::<AgentSpec>(a.spec.clone())
                    .map_err(|e| format!("stored agent spec: {e}"))
            });
        let transcript: Vec<ChatMessage> =
            serde_json::from_value(run.transcript.clone()).unwrap_or_default();
        let mut ignore = |_: RunEvent| {};
        let mut turn = Turn {
            run_id,
            streaming: false,
            events: &mut ignore,
            progress: Progress {
                transcript,
                usage: Usage {
                    input_tokens: u64::try_from(run.input_tokens).unwrap_or(0),
                    output_tokens: u64::try_from(run.output_tokens).unwrap_or(0),
                },
                steps: run.steps,
            },
            boundary: bulkhead_core::ids::new_boundary(),
            toolbox: Toolbox::default(),
        };
        let meter = self.cpu_meter(store);
        let result = match (&agent, &spec) {
            (Some(agent), Ok(spec)) => {
                crate::cpu::metered(
                    meter,
                    self.continue_paused(store, agent, spec, approval.as_ref(), &mut turn),
                )
                .await
            }
            (_, Err(message)) => Err(Failure {
                code: "internal",
                message: message.clone(),
            }),
            (None, Ok(_)) => Err(Failure {
                code: "internal",
                message: "the run's agent version is gone".into(),
            }),
        };
        self.conclude(
            store,
            run_id,
            run.thread_id.as_deref(),
            &run.input,
            turn.progress,
            result,
        )
        .await
        .map(Some)
    }

    /// Stores how a run ended (unless it paused), appends the exchange to its thread and
    /// answers the stored run. (Tokens are metered per model request, as they are spent.)
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &self,
        store: &TenantStore<'_>,
        run_id: &str,
        thread_id: Option<&str>,
        user_input: &str,
        progress: Progress,
        result: Result<Outcome, Failure>,
    ) -> Result<RunRecord, RunError> {
        let result = match result {
            Ok(Outcome::Paused) => {
                return Ok(store
                    .run(run_id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("run vanished".into()))?);
            }
            Ok(Outcome::Completed(output)) => Ok(output),
            Err(failure) => Err(failure),
        };
        if let (Some(thread), Ok(output)) = (thread_id, &result) {
            store
                .append_thread(
                    thread,
                    &[("user", user_input), ("assistant", output.as_str())],
                )
                .await?;
        }
        let end = RunEnd {
            error: result
                .as_ref()
                .err()
                .map(|f| (f.code.to_owned(), f.message.clone())),
            output: result.ok(),
            progress: progress.saved(),
        };
        store.finish_run(run_id, &end).await?;
        Ok(store
            .run(run_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("run vanished".into()))?)
    }

    /// The CPU meter of a run of this tenant: its `run_cpu_ms` budget, none if 0. A resumed
    /// run starts a fresh one; what it spent before its pause is not carried over.
    fn cpu_meter(&self, store: &TenantStore<'_>) -> crate::cpu::CpuMeter {
        let budget = self
            .quotas
            .limits_for(store.context().tenant_id())
            .run_cpu_ms;
        crate::cpu::CpuMeter::new(std::time::Duration::from_millis(budget))
    }

    async fn drive(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        spec: &AgentSpec,
        input: RunInput,
        memory: Vec<MemoryTurn>,
        turn: &mut Turn<'_, '_>,
    ) -> Result<Outcome, Failure> {
        let ctx = store.context();
        let allowed = self.may_use_model(store, &spec.model).await?;
        if self.knows_model(&spec.model) && !allowed {
            return Err(Failure {
                code: "model_not_allowed",
                message: format!("this tenant may not use model {:?}", spec.model),
            });
        }
        let library = self.prompt_library(store).await?;
        let mut variables = PromptVariables::for_agent(ctx, agent, input.user, input.input.clone());
        variables.memory = memory.clone();
        // Passages are data: delimited by a boundary no document can guess, and shown to the
        // model as untrusted, never rendered as template source.
        let mut context_message = None;
        if !spec.knowledge_bases.is_empty() {
            let found = retrieval::search_all(
                &self.knowledge,
                store,
                &spec.knowledge_bases,
                &input.input,
                self.knowledge.config().context_passages,
            )
            .await?;
            let passages: Vec<String> = found
                .iter()
                .map(|(kb, passage)| retrieval::delimited(kb, passage, &turn.boundary))
                .collect();
            if !passages.is_empty() && !reads_variable(&spec.system_prompt, "context") {
                context_message = Some(retrieval::context_message(&passages, &turn.boundary));
            }
            variables.context = passages;
        }
        let system = render(&spec.system_prompt, &library, &variables).map_err(|e| Failure {
            code: "template_error",
            message: e.to_string(),
        })?;
        let transcript = &mut turn.progress.transcript;
        transcript.push(ChatMessage::text("system", system));
        if let Some(message) = context_message {
            transcript.push(ChatMessage::text("system", message));
        }
        for turn in memory {
            transcript.push(ChatMessage::text(&turn.role, turn.content));
        }
        transcript.push(ChatMessage::text("user", input.input));
        turn.toolbox = self.tools.toolbox(store, &spec.tools).await?;
        self.steps(store, agent, spec, turn).await
    }

    /// Answers the calls a paused run stopped at (the decided one first), then goes on.
    async fn continue_paused(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        spec: &AgentSpec,
        approval: Option<&ApprovalRecord>,
        turn: &mut Turn<'_, '_>,
    ) -> Result<Outcome, Failure> {
        turn.toolbox = self.tools.toolbox(store, &spec.tools).await?;
        let pending = unanswered_calls(&turn.progress.transcript);
        let step = turn.progress.steps;
        if let Outcome::Paused = self
            .answer_calls(store, agent, spec, turn, step, &pending, approval)
            .await?
        {
            return Ok(Outcome::Paused);
        }
        store
            .record_run_progress(turn.run_id, &turn.progress.saved())
            .await?;
        self.steps(store, agent, spec, turn).await
    }

    /// Calls the model and answers its tool calls until it answers in words, pauses for an
    /// approval, or runs out of steps.
    async fn steps(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        spec: &AgentSpec,
        turn: &mut Turn<'_, '_>,
    ) -> Result<Outcome, Failure> {
        let egress = self.egress.for_tenant(store.context());
        let mut offered: Vec<ToolSpec> = Vec::new();
        if !spec.knowledge_bases.is_empty() {
            offered.push(retrieval::retrieve_tool(&spec.knowledge_bases));
        }
        offered.extend(turn.toolbox.definitions().into_iter().map(|d| ToolSpec {
            name: d.name,
            description: d.description,
            parameters: d.parameters,
        }));
        while turn.progress.steps < i64::from(spec.max_steps) {
            if let Err(refused) = self.quotas.check_tokens(store).await {
                return Err(Failure {
                    code: refused.code(),
                    message: refused.to_string(),
                });
            }
            cpu_budget_left()?;
            turn.progress.steps += 1;
            let step = turn.progress.steps;
            let request = ChatRequest {
                model: spec.model.clone(),
                messages: turn.progress.transcript.clone(),
                tools: offered.clone(),
                max_tokens: Some(spec.max_output_tokens),
            };
            let response = self
                .call_model(
                    &egress,
                    spec,
                    request,
                    step,
                    turn.streaming,
                    &mut *turn.events,
                )
                .await?;
            turn.progress.usage.input_tokens += response.usage.input_tokens;
            turn.progress.usage.output_tokens += response.usage.output_tokens;
            // Metered per model request, not per run, so the budget sees a run's spending as
            // it happens and cost is attributed to the agent that spent it.
            store.record_usage(
                &spec.model,
                Some(agent.name.as_str()),
                response.usage.input_tokens,
                response.usage.output_tokens,
            );
            let calls = response.message.tool_calls.clone();
            turn.progress.transcript.push(response.message.clone());
            if calls.is_empty() {
                return Ok(Outcome::Completed(
                    response.message.content.unwrap_or_default(),
                ));
            }
            if let Outcome::Paused = self
                .answer_calls(store, agent, spec, turn, step, &calls, None)
                .await?
            {
                return Ok(Outcome::Paused);
            }
            store
                .record_run_progress(turn.run_id, &turn.progress.saved())
                .await?;
        }
        Err(Failure {
            code: "max_steps_exceeded",
            message: format!(
                "the agent did not finish within max_steps ({})",
                spec.max_steps
            ),
        })
    }

    /// Answers `calls` in order. A call that needs approval (and has no decision in
    /// `decided`) pauses the run there: the approval is stored with the run's progress in one
    /// transaction, and the calls after it are answered on resumption.
    #[allow(clippy::too_many_arguments)]
    async fn answer_calls(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        spec: &AgentSpec,
        turn: &mut Turn<'_, '_>,
        step: i64,
        calls: &[ToolCall],
        decided: Option<&ApprovalRecord>,
    ) -> Result<Outcome, Failure> {
        for call in calls {
            let scope = CallScope {
                run_id: turn.run_id,
                boundary: &turn.boundary,
                toolbox: &turn.toolbox,
            };
            (turn.events)(RunEvent::ToolCalled {
                step,
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            });
            let content = match self
                .answer_call(store, agent, spec, &scope, call, decided)
                .await?
            {
                CallAnswer::Content(content) => content,
                CallAnswer::Pause => {
                    let saved = turn.progress.saved();
                    let record = self.pause(store, agent, &scope, saved, call).await?;
                    (turn.events)(RunEvent::ApprovalRequested {
                        step,
                        approval_id: record.approval_id,
                        tool: record.tool,
                        target: record.target,
                    });
                    return Ok(Outcome::Paused);
                }
            };
            (turn.events)(RunEvent::ToolResult {
                step,
                id: call.id.clone(),
                content: content.clone(),
            });
            turn.progress.transcript.push(ChatMessage {
                role: "tool".into(),
                content: Some(content),
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id.clone()),
            });
        }
        Ok(Outcome::Completed(String::new()))
    }

    async fn answer_call(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        spec: &AgentSpec,
        turn: &CallScope<'_>,
        call: &ToolCall,
        decided: Option<&ApprovalRecord>,
    ) -> Result<CallAnswer, Failure> {
        if call.name == RETRIEVE_TOOL && !spec.knowledge_bases.is_empty() {
            return Ok(CallAnswer::Content(
                retrieval::retrieve_call(
                    &self.knowledge,
                    store,
                    &spec.knowledge_bases,
                    &call.arguments,
                    turn.boundary,
                )
                .await,
            ));
        }
        let Some(tool) = turn.toolbox.by_model_name(&call.name) else {
            return Ok(CallAnswer::Content(
                json!({"error": "unknown_tool", "message": format!("tool {} is not available to this agent", call.name)})
                    .to_string(),
            ));
        };
        let arguments: serde_json::Value =
            serde_json::from_str(&call.arguments).unwrap_or(serde_json::Value::Null);
        let origin = CallOrigin {
            caller: Caller::Agent(agent.name.to_string()),
            via: "agent",
            run_id: turn.run_id,
        };
        let execute = || async {
            match tool_calls::execute(&self.tools, store, turn.toolbox, &origin, tool, &arguments)
                .await?
            {
                Ok(content) => Ok(CallAnswer::Content(content)),
                Err(error) => Ok(CallAnswer::Content(refusal(&error))),
            }
        };
        match tool_calls::gate(&self.tools, store, &origin, tool, &arguments).await? {
            Gate::Refused(error) => Ok(CallAnswer::Content(refusal(&error))),
            Gate::Allowed => execute().await,
            Gate::NeedsApproval => match decided.filter(|a| a.tool_call_id == call.id) {
                Some(approval) if approval.status == "approved" => execute().await,
                Some(approval) => Ok(CallAnswer::Content(
                    json!({
                        "error": format!("approval_{}", approval.status),
                        "message": "A person of this organisation did not approve this call; it was not made.",
                        "reason": approval.reason,
                    })
                    .to_string(),
                )),
                None => Ok(CallAnswer::Pause),
            },
        }
    }

    /// Stores the approval `call` waits for and the run as paused, then tells the webhook.
    async fn pause(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        turn: &CallScope<'_>,
        saved: RunProgress,
        call: &ToolCall,
    ) -> Result<ApprovalRecord, Failure> {
        let Some(tool) = turn.toolbox.by_model_name(&call.name) else {
            return Err(Failure {
                code: "internal",
                message: "the tool to approve vanished".into(),
            });
        };
        let arguments: serde_json::Value =
            serde_json::from_str(&call.arguments).unwrap_or_default();
        let origin = CallOrigin {
            caller: Caller::Agent(agent.name.to_string()),
            via: "agent",
            run_id: turn.run_id,
        };
        let draft = tool_calls::approval_draft(&self.tools, &origin, tool, &arguments, &call.id);
        let record = store.request_approval(&draft, &saved).await?;
        crate::approvals::notify(&self.tools, store, &record).await;
        Ok(record)
    }

    async fn call_model(
        &self,
        egress: &bulkhead_egress::TenantEgress<'_>,
        spec: &AgentSpec,
        mut request: ChatRequest,
        step: i64,
        streaming: bool,
        events: EventSink<'_>,
    ) -> Result<ChatResponse, Failure> {
        if spec.model == SCRIPTED_MODEL {
            let response = scripted(spec, step)?;
            if let Some(text) = response.message.content.clone() {
                events(RunEvent::MessageDelta { step, text });
            }
            return Ok(response);
        }
        let model = self
            .models
            .iter()
            .find(|m| m.alias == spec.model)
            .ok_or_else(|| Failure {
                code: "unknown_model",
                message: format!("no model alias {:?} is configured", spec.model),
            })?;
        request.model = model
            .upstream_model
            .clone()
            .unwrap_or_else(|| model.alias.clone());
        if !streaming {
            return Ok(self.provider_chat(egress, model, &request, None).await?);
        }
        let mut sink = |delta: Delta| {
            if let Delta::Text(text) = delta {
                events(RunEvent::MessageDelta { step, text });
            }
        };
        Ok(self
            .provider_chat(egress, model, &request, Some(&mut sink))
            .await?)
    }
}

/// The built-in scripted model: the agent's `script`, one step per model call.
fn scripted(spec: &AgentSpec, step: i64) -> Result<ChatResponse, Failure> {
    let index = usize::try_from(step - 1).unwrap_or(usize::MAX);
    let Some(next) = spec.script.get(index) else {
        return Err(Failure {
            code: "script_exhausted",
            message: format!("the script has no step {step}"),
        });
    };
    let message = match next {
        ScriptStep::Reply(text) => ChatMessage::text("assistant", text.clone()),
        ScriptStep::ToolCall { name, arguments } => ChatMessage {
            role: "assistant".into(),
            content: None,
            tool_calls: vec![ToolCall {
                id: format!("call_{step}"),
                name: name.clone(),
                arguments: arguments.to_string(),
            }],
            tool_call_id: None,
        },
    };
    Ok(ChatResponse {
        finish_reason: if message.tool_calls.is_empty() {
            "stop".into()
        } else {
            "tool_calls".into()
        },
        message,
        usage: Usage::default(),
    })
}

/// The tool calls of the last assistant message that no tool message answers yet: where a
/// paused run stopped.
fn unanswered_calls(transcript: &[ChatMessage]) -> Vec<ToolCall> {
    let Some(at) = transcript.iter().rposition(|m| m.role == "assistant") else {
        return Vec::new();
    };
    let answered: Vec<&str> = transcript[at + 1..]
        .iter()
        .filter_map(|m| m.tool_call_id.as_deref())
        .collect();
    transcript[at]
        .tool_calls
        .iter()
        .filter(|c| !answered.contains(&c.id.as_str()))
        .cloned()
        .collect()
}

impl From<ToolError> for Failure {
    fn from(error: ToolError) -> Self {
        Failure {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// Refuses the next step of a run that has spent its CPU budget.
fn cpu_budget_left() -> Result<(), Failure> {
    match crate::cpu::current() {
        Some(meter) if meter.exceeded() => Err(ProviderError::cpu_budget(&meter).into()),
        _ => Ok(()),
    }
}

pub const CPU_BUDGET_EXCEEDED: &str = "cpu_budget_exceeded";
