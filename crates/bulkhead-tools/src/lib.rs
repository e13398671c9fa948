//! Tools agents call with their tenant's own credentials.
//!
//! A tenant declares toolsets (`PUT /v1/tools/{name}`): a connector kind (`http`, `slack`,
//! `jira`, `github`, `mcp`), the configured endpoint it calls and which of the tenant's
//! credentials it presents. An agent names toolsets; a run gets their operations as tools
//! (`<toolset>__<operation>` for the model, `<toolset>.<operation>` for policies and people).
//! Every call is checked against its schema, decided by Cedar policies ([`policy`]) and made
//! through egress, which adds the calling tenant's credential.
//!
//! **Architecture Invariant:** the model sees a tool's name, description and argument schema,
//! never a credential: [`ToolDefinition`] has no other fields, and credentials are added by
//! egress after the request leaves this crate.

pub mod catalog;
pub mod http;
pub mod mcp;
pub mod policy;
pub mod spec;

use bulkhead_core::ConnectorName;
use bulkhead_core::config::{EndpointKind, ToolsConfig};
use bulkhead_egress::{Egress, EgressError};
use bulkhead_store::{StoreError, TenantStore};
use serde_json::Value;

pub use policy::{Caller, PolicyEngine, PolicyError, Verdict};
pub use spec::{Operation, SpecError, ToolsetKind, ToolsetSpec};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("no tool {0:?} is available here")]
    UnknownTool(String),
    #[error("the arguments do not match the tool's schema: {0}")]
    InvalidArguments(String),
    #[error("the policy refused this call")]
    Denied { policies: Vec<String> },
    #[error("the service answered {status}: {message}")]
    Upstream { status: u16, message: String },
    #[error("the MCP server failed: {0}")]
    Mcp(String),
    /// The call waits for a person's approval (through the MCP gateway: call again once it
    /// is approved).
    #[error(
        "this call needs the approval of a person of this organisation: approval {0} is pending; call again once it is approved"
    )]
    ApprovalRequired(String),
    /// The tool ran and reported a failure (an MCP result with `isError`).
    #[error("the tool reported an error: {0}")]
    Failed(String),
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ToolError {
    pub fn code(&self) -> &'static str {
        match self {
            ToolError::UnknownTool(_) => "unknown_tool",
            ToolError::InvalidArguments(_) => "invalid_arguments",
            ToolError::Denied { .. } => "policy_denied",
            ToolError::Upstream { .. } => "tool_failed",
            ToolError::Mcp(_) => "mcp_error",
            ToolError::Failed(_) => "tool_failed",
            ToolError::ApprovalRequired(_) => "approval_required",
            ToolError::Egress(e) => e.code(),
            ToolError::Policy(e) => e.code(),
            ToolError::Store(_) => "internal",
        }
    }
}

/// What a model is shown of a tool. Never a credential.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// One tool a run may call: an operation of one of the tenant's toolsets.
#[derive(Debug, Clone)]
pub struct ResolvedTool {
    pub toolset: String,
    pub kind: ToolsetKind,
    pub endpoint: String,
    pub credential: Option<ConnectorName>,
    pub operation: Operation,
}

impl ResolvedTool {
    /// The name policies, approvals and the audit trail use: `<toolset>.<operation>`.
    pub fn id(&self) -> String {
        format!("{}.{}", self.toolset, self.operation.name)
    }

    /// The name the model calls: `<toolset>__<operation>` (providers allow no dots).
    pub fn model_name(&self) -> String {
        format!("{}__{}", self.toolset, self.operation.name)
    }

    pub fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            name: self.model_name(),
            description: self.operation.description.clone(),
            parameters: self.operation.parameters.clone(),
        }
    }

    /// The target an approver sees and policies get as `context.target`.
    pub fn target(&self, arguments: &Value) -> String {
        http::fill_template(&self.operation.target, arguments)
    }
}

/// The tools of one run (or one MCP gateway session), resolved from the tenant's toolsets.
#[derive(Debug, Default)]
pub struct Toolbox {
    tools: Vec<ResolvedTool>,
    /// Connected MCP servers by toolset name, for the life of the toolbox.
    mcp: std::collections::HashMap<String, mcp::McpSession>,
}

impl Toolbox {
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.tools.iter().map(ResolvedTool::definition).collect()
    }

    pub fn tools(&self) -> &[ResolvedTool] {
        &self.tools
    }

    /// The tool a model called by name.
    pub fn by_model_name(&self, name: &str) -> Option<&ResolvedTool> {
        self.tools.iter().find(|t| t.model_name() == name)
    }

    /// Adds another toolbox's tools and connections.
    pub fn extend(&mut self, other: Toolbox) {
        self.tools.extend(other.tools);
        self.mcp.extend(other.mcp);
    }

    /// The tool by its policy name, `<toolset>.<operation>`.
    pub fn by_id(&self, id: &str) -> Option<&ResolvedTool> {
        self.tools.iter().find(|t| t.id() == id)
    }
}

/// Toolsets, policies and calls, for any tenant; each call is bound to the tenant of the
/// store handle it is given.
pub struct Tools {
    egress: Egress,
    policies: PolicyEngine,
    config: ToolsConfig,
}

impl Tools {
    /// Parses and validates the platform's policies; fails on a bad policy or a webhook that
    /// names no configured endpoint.
    pub fn new(egress: Egress, config: ToolsConfig) -> Result<Self, PolicyError> {
        if let Some(webhook) = &config.approval_webhook
            && egress.endpoint(webhook).is_none()
        {
            return Err(PolicyError::Invalid(format!(
                "tools.approval_webhook: no endpoint {webhook:?} is configured"
            )));
        }
        Ok(Self {
            policies: PolicyEngine::new(config.platform_policies.as_deref())?,
            egress,
            config,
        })
    }

    pub fn policies(&self) -> &PolicyEngine {
        &self.policies
    }

    pub fn config(&self) -> &ToolsConfig {
        &self.config
    }

    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// Checks a toolset spec, its endpoint included.
    pub fn validate(&self, spec: &ToolsetSpec) -> Result<(), SpecError> {
        spec.validate()?;
        let endpoint = self
            .egress
            .endpoint(&spec.endpoint)
            .ok_or_else(|| SpecError {
                field: "endpoint".into(),
                message: format!("no endpoint {:?} is configured", spec.endpoint),
            })?;
        let wanted = if spec.kind == ToolsetKind::Mcp {
            EndpointKind::Mcp
        } else {
            EndpointKind::Tool
        };
        if endpoint.kind != wanted {
            return Err(SpecError {
                field: "endpoint".into(),
                message: format!(
                    "endpoint {:?} is not a{} endpoint",
                    spec.endpoint,
                    if wanted == EndpointKind::Mcp {
                        "n mcp"
                    } else {
                        " tool"
                    }
                ),
            });
        }
        Ok(())
    }

    /// The tools of the named toolsets of `store`'s tenant. A name with no toolset offers
    /// nothing (logged), so deleting a toolset disarms every agent that named it.
    pub async fn toolbox(
        &self,
        store: &TenantStore<'_>,
        names: &[String],
    ) -> Result<Toolbox, ToolError> {
        let mut tools = Vec::new();
        let mut sessions = std::collections::HashMap::new();
        for name in names {
            let Some(record) = store.toolset(name).await? else {
                tracing::info!(tenant.id = %store.context().tenant_id(), toolset = %name, "an agent names a toolset that does not exist");
                continue;
            };
            let spec: ToolsetSpec = serde_json::from_value(record.spec)
                .map_err(|e| StoreError::Corrupt(format!("toolset {name}: {e}")))?;
            let credential = spec
                .credential
                .as_deref()
                .map(ConnectorName::try_from)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("toolset {name}: {e}")))?;
            let operations = if spec.kind == ToolsetKind::Mcp {
                let session = mcp::connect(
                    &self.egress,
                    store.context(),
                    &spec.endpoint,
                    spec.path.as_deref().unwrap_or(spec::DEFAULT_MCP_PATH),
                    credential.clone(),
                    &spec.destructive,
                )
                .await?;
                let operations = session.operations.clone();
                sessions.insert(name.clone(), session);
                operations
            } else {
                spec.operations()
            };
            for operation in operations {
                tools.push(ResolvedTool {
                    toolset: name.clone(),
                    kind: spec.kind,
                    endpoint: spec.endpoint.clone(),
                    credential: credential.clone(),
                    operation,
                });
            }
        }
        Ok(Toolbox {
            tools,
            mcp: sessions,
        })
    }

    /// What the policies say about `caller` calling `tool` with `arguments`.
    pub async fn decide(
        &self,
        store: &TenantStore<'_>,
        caller: &Caller,
        tool: &ResolvedTool,
        arguments: &Value,
        via: &str,
    ) -> Result<Verdict, ToolError> {
        let target = tool.target(arguments);
        let facts = policy::CallFacts {
            caller,
            toolset: &tool.toolset,
            operation: &tool.operation.name,
            kind: tool.kind.as_str(),
            destructive: tool.operation.destructive,
            target: &target,
            arguments,
            via,
        };
        Ok(self.policies.decide(store, &facts).await?)
    }

    /// Makes the call with the tenant's credential; answers what the model gets back.
    /// Arguments must have passed [`http::check_arguments`] and the policies.
    pub async fn execute(
        &self,
        store: &TenantStore<'_>,
        toolbox: &Toolbox,
        tool: &ResolvedTool,
        arguments: &Value,
    ) -> Result<String, ToolError> {
        let egress = self.egress.for_tenant(store.context());
        match tool.kind {
            ToolsetKind::Mcp => {
                let session = toolbox
                    .mcp
                    .get(&tool.toolset)
                    .ok_or_else(|| ToolError::UnknownTool(tool.id()))?;
                session
                    .call(&tool.endpoint, &tool.operation.name, arguments)
                    .await
            }
            kind => {
                http::call(
                    &egress,
                    &tool.endpoint,
                    tool.credential.clone(),
                    kind,
                    &tool.operation,
                    arguments,
                )
                .await
            }
        }
    }
}
