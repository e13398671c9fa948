//! The OpenAI-compatible gateway: a Chat Completions request from an outside framework, sent
//! to the provider behind one of the tenant's model aliases with the tenant's own key.
//!
//! An OpenAI-compatible upstream gets the client's body as it came (only `model` replaced), and
//! its answer goes back as it came, so every field the client and upstream agree on passes.
//! An Anthropic upstream or a `local` model gets the request translated, and its answer is
//! translated back.

use bulkhead_core::config::{ModelConfig, ProviderKind};
use bulkhead_egress::OutboundRequest;
use bulkhead_store::{StoreError, TenantStore};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agents::SCRIPTED_MODEL;
use crate::chat_body::ChatBody;
use crate::providers::openai::ChunkKind;
use crate::providers::sse::{expect_stream, read_events};
use crate::providers::{
    Accumulator, ChatRequest, Delta, ProviderError, Usage, error_from_status, openai,
};
use crate::runs::Runner;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no model alias {0:?} is configured")]
    UnknownModel(String),
    #[error("this tenant may not use model {0:?}")]
    ModelNotAllowed(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl GatewayError {
    /// The stable problem code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::UnknownModel(_) => "model_not_found",
            GatewayError::ModelNotAllowed(_) => "model_not_allowed",
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::Provider(e) => e.code(),
            GatewayError::Store(_) => "internal",
        }
    }
}

impl From<bulkhead_egress::EgressError> for GatewayError {
    fn from(error: bulkhead_egress::EgressError) -> Self {
        GatewayError::Provider(error.into())
    }
}

/// A whole answer, in Chat Completions format, and the usage it reported.
pub struct Completion {
    pub body: Vec<u8>,
    pub usage: Usage,
}

/// Where a streamed answer goes: the `data:` payloads of Chat Completions chunks, in order,
/// without the final `[DONE]` (the caller ends the stream).
pub type ChunkSink<'a> = &'a mut (dyn FnMut(String) + Send);

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

fn now_seconds() -> i64 {
    bulkhead_core::timestamp::now_millis() / 1000
}

impl Runner {
    /// The configured model behind `alias`, if this tenant may use it.
    pub async fn model_for(
        &self,
        store: &TenantStore<'_>,
        alias: &str,
    ) -> Result<&ModelConfig, GatewayError> {
        let model = self
            .models
            .iter()
            .find(|m| m.alias == alias && alias != SCRIPTED_MODEL)
            .ok_or_else(|| GatewayError::UnknownModel(alias.to_owned()))?;
        if !self.may_use_model(store, alias).await? {
            return Err(GatewayError::ModelNotAllowed(alias.to_owned()));
        }
        Ok(model)
    }

    /// Answers a non-streaming Chat Completions request with the model behind its `model`.
    pub async fn complete(
        &self,
        store: &TenantStore<'_>,
        mut body: ChatBody,
    ) -> Result<Completion, GatewayError> {
        let alias = body.model().to_owned();
        let model = self.model_for(store, &alias).await?;
        let egress = self.egress.for_tenant(store.context());
        match model.provider {
            ProviderKind::Openai => {
                body.set("model", &json!(upstream_name(model)))
                    .map_err(invalid)?;
                let request = body.to_json().map_err(invalid)?;
                let response = egress
                    .send(
                        &model.endpoint,
                        OutboundRequest::post_json_text("/chat/completions", request).retry_safe(),
                    )
                    .await?;
                if !(200..300).contains(&response.status) {
                    return Err(error_from_status(response.status, &response.body).into());
                }
                let usage = serde_json::from_slice::<UsageOnly>(&response.body)
                    .map_err(|e| ProviderError::Malformed(e.to_string()))?
                    .usage
                    .map_or(Usage::default(), |u| Usage {
                        input_tokens: u.prompt_tokens,
                        output_tokens: u.completion_tokens,
                    });
                Ok(Completion {
                    body: response.body,
                    usage,
                })
            }
            ProviderKind::Anthropic | ProviderKind::Local => {
                let request = translated_request(&body, model)?;
                let response = self.provider_chat(&egress, model, &request, None).await?;
                let id = format!("chatcmpl-{}", bulkhead_core::ids::new_run_id());
                let body = openai::completion_json(&id, &alias, now_seconds(), &response);
                Ok(Completion {
                    body: body.to_string().into_bytes(),
                    usage: response.usage,
                })
            }
        }
    }

    /// Answers a streaming Chat Completions request: chunks go to `sink` as they arrive, and
    /// the usage is answered at the end. A usage chunk is always asked of the upstream, and
    /// passed on only if the client asked for it.
    pub async fn complete_stream(
        &self,
        store: &TenantStore<'_>,
        mut body: ChatBody,
        sink: ChunkSink<'_>,
    ) -> Result<Usage, GatewayError> {
        let alias = body.model().to_owned();
        let model = self.model_for(store, &alias).await?;
        let egress = self.egress.for_tenant(store.context());
        let client_wants_usage = body
            .raw("stream_options")
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .is_some_and(|options| options["include_usage"] == true);
        match model.provider {
            ProviderKind::Openai => {
                body.set("model", &json!(upstream_name(model)))
                    .map_err(invalid)?;
                body.set("stream", &json!(true)).map_err(invalid)?;
                body.set("stream_options", &json!({"include_usage": true}))
                    .map_err(invalid)?;
                let request = body.to_json().map_err(invalid)?;
                let response = egress
                    .send_streaming(
                        &model.endpoint,
                        OutboundRequest::post_json_text("/chat/completions", request).retry_safe(),
                    )
                    .await?;
                let mut response = expect_stream(response).await?;
                let mut accumulator = Accumulator::default();
                read_events(&mut response, |event| {
                    match openai::apply_chunk(&event.data, &mut accumulator, &mut |_| {})? {
                        ChunkKind::Done => return Ok(true),
                        ChunkKind::UsageOnly if !client_wants_usage => {}
                        ChunkKind::Choices | ChunkKind::UsageOnly => sink(event.data),
                    }
                    Ok(false)
                })
                .await?;
                Ok(accumulator.usage)
            }
            ProviderKind::Anthropic | ProviderKind::Local => {
                let request = translated_request(&body, model)?;
                let id = format!("chatcmpl-{}", bulkhead_core::ids::new_run_id());
                let created = now_seconds();
                let chunk = |delta: Value, finish: Option<&str>| {
                    openai::chunk_json(&id, &alias, created, delta, finish).to_string()
                };
                sink(chunk(json!({"role": "assistant", "content": ""}), None));
                let mut forward = |delta: Delta| sink(chunk(openai::delta_json(&delta), None));
                let response = self
                    .provider_chat(&egress, model, &request, Some(&mut forward))
                    .await?;
                sink(chunk(json!({}), Some(&response.finish_reason)));
                if client_wants_usage {
                    sink(
                        openai::usage_chunk_json(&id, &alias, created, response.usage).to_string(),
                    );
                }
                Ok(response.usage)
            }
        }
    }
}

/// A body that cannot be written back out; not expected from one that was read.
fn invalid(error: serde_json::Error) -> GatewayError {
    GatewayError::InvalidRequest(error.to_string())
}

/// The client's request in the provider-neutral shape, for a provider that does not speak
/// Chat Completions, addressed to the model's upstream name.
fn translated_request(body: &ChatBody, model: &ModelConfig) -> Result<ChatRequest, GatewayError> {
    let body = body.to_value().map_err(invalid)?;
    let mut request = openai::request_from_json(&body).map_err(GatewayError::InvalidRequest)?;
    request.model = upstream_name(model).to_owned();
    Ok(request)
}

fn upstream_name(model: &ModelConfig) -> &str {
    model.upstream_model.as_deref().unwrap_or(&model.alias)
}
