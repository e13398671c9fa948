//! The run loop: render the system prompt, call the model, answer its tool calls, repeat up to
//! `max_steps`, and persist the run as it starts and as it ends.
//!
//! An agent with knowledge bases gets passages for its input in its prompt and the built-in
//! `retrieve` tool (`retrieval.rs`). Other tools arrive with the tools issue; until then a
//! call to one is answered with a refusal the model can read, and the loop goes on.

use std::collections::BTreeMap;
use std::sync::Arc;

use bulkhead_core::config::{ModelConfig, ProviderKind};
use bulkhead_egress::Egress;
use bulkhead_knowledge::{Knowledge, KnowledgeError};
use bulkhead_store::{AgentRecord, RunEnd, RunProgress, RunRecord, StoreError, TenantStore};
use serde::Serialize;
use serde_json::json;

use crate::agents::{AgentSpec, SCRIPTED_MODEL, ScriptStep};
use crate::prompts::{MemoryTurn, PromptLibrary, PromptVariables, reads_variable, render};
use crate::providers::local::LocalModels;
use crate::providers::{
    self, ChatMessage, ChatRequest, ChatResponse, Delta, DeltaSink, ProviderError, ToolCall, Usage,
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
}

impl RunEvent {
    /// The server-sent event name.
    pub fn name(&self) -> &'static str {
        match self {
            RunEvent::Started { .. } => "run.started",
            RunEvent::MessageDelta { .. } => "message.delta",
            RunEvent::ToolCalled { .. } => "tool.called",
            RunEvent::ToolResult { .. } => "tool.result",
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
    ) -> Self {
        Self {
            knowledge,
            egress,
            models,
            default_models,
            platform_prompts,
            local,
        }
    }

    /// Knowledge bases: what runs retrieve from and what the HTTP routes ingest into.
    pub fn knowledge(&self) -> &Arc<Knowledge> {
        &self.knowledge
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

    /// Whether `alias` is a configured model (or the built-in scripted one).
    pub fn knows_model(&self, alias: &str) -> bool {
        alias == SCRIPTED_MODEL || self.models.iter().any(|m| m.alias == alias)
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
        };
        let result = match &spec {
            Ok(spec) => {
                self.drive(store, agent, spec, input, memory, &mut turn)
                    .await
            }
            Err(message) => Err(Failure {
                code: "internal",
                message: message.clone(),
            }),
        };
        let progress = turn.progress;
        if let (Some(thread), Ok(output)) = (&thread_id, &result) {
            store
                .append_thread(
                    thread,
                    &[
                        ("user", user_input.as_str()),
                        ("assistant", output.as_str()),
                    ],
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
        store.finish_run(&run_id, &end).await?;
        if let Some(spec) = spec.ok().filter(|_| progress.steps > 0) {
            store.record_usage(
                &spec.model,
                progress.usage.input_tokens,
                progress.usage.output_tokens,
            );
        }
        Ok(store
            .run(&run_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("run vanished".into()))?)
    }

    async fn drive(
        &self,
        store: &TenantStore<'_>,
        agent: &AgentRecord,
        spec: &AgentSpec,
        input: RunInput,
        memory: Vec<MemoryTurn>,
        turn: &mut Turn<'_, '_>,
    ) -> Result<String, Failure> {
        let Turn {
            run_id,
            streaming,
            events,
            progress,
        } = turn;
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
        let boundary = bulkhead_core::ids::new_boundary();
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
                .map(|(kb, passage)| retrieval::delimited(kb, passage, &boundary))
                .collect();
            if !passages.is_empty() && !reads_variable(&spec.system_prompt, "context") {
                context_message = Some(retrieval::context_message(&passages, &boundary));
            }
            variables.context = passages;
        }
        let system = render(&spec.system_prompt, &library, &variables).map_err(|e| Failure {
            code: "template_error",
            message: e.to_string(),
        })?;
        let transcript = &mut progress.transcript;
        transcript.push(ChatMessage::text("system", system));
        if let Some(message) = context_message {
            transcript.push(ChatMessage::text("system", message));
        }
        for turn in memory {
            transcript.push(ChatMessage::text(&turn.role, turn.content));
        }
        transcript.push(ChatMessage::text("user", input.input));
        let egress = self.egress.for_tenant(ctx);
        for _ in 0..spec.max_steps {
            progress.steps += 1;
            let step = progress.steps;
            let request = ChatRequest {
                model: spec.model.clone(),
                messages: progress.transcript.clone(),
                tools: if spec.knowledge_bases.is_empty() {
                    Vec::new()
                } else {
                    vec![retrieval::retrieve_tool(&spec.knowledge_bases)]
                },
                max_tokens: Some(spec.max_output_tokens),
            };
            let response = self
                .call_model(&egress, spec, request, step, *streaming, &mut **events)
                .await?;
            progress.usage.input_tokens += response.usage.input_tokens;
            progress.usage.output_tokens += response.usage.output_tokens;
            let calls = response.message.tool_calls.clone();
            progress.transcript.push(response.message.clone());
            if calls.is_empty() {
                return Ok(response.message.content.unwrap_or_default());
            }
            for call in calls {
                events(RunEvent::ToolCalled {
                    step,
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                });
                let content = if call.name == RETRIEVE_TOOL && !spec.knowledge_bases.is_empty() {
                    retrieval::retrieve_call(
                        &self.knowledge,
                        store,
                        &spec.knowledge_bases,
                        &call.arguments,
                        &boundary,
                    )
                    .await
                } else {
                    json!({"error": format!("tool {} is not available to this agent", call.name)})
                        .to_string()
                };
                events(RunEvent::ToolResult {
                    step,
                    id: call.id.clone(),
                    content: content.clone(),
                });
                progress.transcript.push(ChatMessage {
                    role: "tool".into(),
                    content: Some(content),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call.id),
                });
            }
            store.record_run_progress(run_id, &progress.saved()).await?;
        }
        Err(Failure {
            code: "max_steps_exceeded",
            message: format!(
                "the agent did not finish within max_steps ({})",
                spec.max_steps
            ),
        })
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
