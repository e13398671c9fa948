//! What agents run on. Today: agent definitions and strict prompt templates with a per-tenant
//! snippet library. The model providers and the run loop build on these.

pub mod agents;
pub mod prompts;
