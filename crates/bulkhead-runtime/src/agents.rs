//! Agent definitions as tenants write them.

use serde::{Deserialize, Serialize};

use crate::prompts::{PromptError, check_template};

/// What `PUT /v1/agents/{name}` takes. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// A model alias the tenant may use.
    pub model: String,
    /// A prompt template (minijinja, strict undefined).
    pub system_prompt: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub knowledge_bases: Vec<String>,
    #[serde(default)]
    pub memory: bool,
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    #[serde(default = "default_max_output_tokens")]
    pub max_output_tokens: u32,
    /// For the built-in `scripted` model only: its replies, in order, one per model call. A
    /// testing and demo aid for runs that must make a given tool call; real agents use a
    /// real model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub script: Vec<ScriptStep>,
}

/// The model alias of the built-in scripted provider.
pub const SCRIPTED_MODEL: &str = "scripted";

/// One scripted model reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ScriptStep {
    /// Answer with this text.
    Reply(String),
    /// Call this tool with these arguments.
    ToolCall {
        name: String,
        #[schema(value_type = Object)]
        arguments: serde_json::Value,
    },
}

fn default_max_steps() -> u32 {
    8
}

fn default_max_output_tokens() -> u32 {
    1024
}

pub const MAX_STEPS: u32 = 50;
pub const MAX_OUTPUT_TOKENS: u32 = 32_768;
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

/// A reason an agent spec is refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

impl AgentSpec {
    /// Checks the spec; the system prompt must parse (rendering needs a run's variables).
    pub fn validate(&self) -> Result<(), SpecError> {
        let model = self.model.trim();
        if model.is_empty() || model.len() > 200 {
            return Err(refuse("model", "must be 1 to 200 characters"));
        }
        if self.system_prompt.len() > MAX_PROMPT_BYTES {
            return Err(refuse(
                "system_prompt",
                format!("must be at most {MAX_PROMPT_BYTES} bytes"),
            ));
        }
        check_template(&self.system_prompt)
            .map_err(|e: PromptError| refuse("system_prompt", e.to_string()))?;
        for (field, names) in [
            ("tools", &self.tools),
            ("knowledge_bases", &self.knowledge_bases),
        ] {
            for name in names {
                if bulkhead_core::ConnectorName::try_from(name.as_str()).is_err() {
                    return Err(refuse(
                        field,
                        format!("{name:?} is not a valid name (lowercase letters, digits, '-')"),
                    ));
                }
            }
        }
        let scripted = self.model == SCRIPTED_MODEL;
        if scripted == self.script.is_empty() {
            return Err(refuse(
                "script",
                format!("give a script exactly when the model is {SCRIPTED_MODEL:?}"),
            ));
        }
        if !(1..=MAX_STEPS).contains(&self.max_steps) {
            return Err(refuse("max_steps", format!("must be 1 to {MAX_STEPS}")));
        }
        if !(1..=MAX_OUTPUT_TOKENS).contains(&self.max_output_tokens) {
            return Err(refuse(
                "max_output_tokens",
                format!("must be 1 to {MAX_OUTPUT_TOKENS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentSpec {
        serde_json::from_value(
            serde_json::json!({"model": "gpt-4o-mini", "system_prompt": "Help {{ tenant.name }}."}),
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let s = spec();
        assert_eq!(
            (s.max_steps, s.max_output_tokens, s.memory),
            (8, 1024, false)
        );
        assert!(s.validate().is_ok());
        let bad = [
            AgentSpec {
                model: " ".into(),
                ..spec()
            },
            AgentSpec {
                system_prompt: "{% if %}".into(),
                ..spec()
            },
            AgentSpec {
                tools: vec!["Bad Tool".into()],
                ..spec()
            },
            AgentSpec {
                max_steps: 0,
                ..spec()
            },
            AgentSpec {
                max_output_tokens: 1_000_000,
                ..spec()
            },
        ];
        let fields: Vec<_> = bad
            .iter()
            .map(|s| s.validate().unwrap_err().field)
            .collect();
        assert_eq!(
            fields,
            [
                "model",
                "system_prompt",
                "tools",
                "max_steps",
                "max_output_tokens"
            ]
        );
        assert!(
            serde_json::from_value::<AgentSpec>(
                serde_json::json!({"model": "m", "system_prompt": "x", "temperature": 2})
            )
            .is_err()
        );
    }
}
