//! What agents run on: agent definitions, strict prompt templates with a per-tenant snippet
//! library, and model providers (through egress). The run loop builds on these.

pub mod agents;
pub mod approvals;
pub mod chat_body;
pub mod cpu;
pub mod gateway;
pub mod prompts;
pub mod providers;
pub mod quotas;
pub mod retrieval;
pub mod runs;
pub mod tool_calls;
