//! One tool call's way through: its arguments checked against the tool's schema, the
//! policies asked, the call made through egress, each step audited. Shared by agent runs and
//! the MCP gateway, so a call reaches a tool by one path whoever makes it.

use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_store::{ApprovalDraft, StoreError, TenantStore};
use bulkhead_tools::{Caller, PolicyError, ResolvedTool, ToolError, Toolbox, Tools, Verdict};
use serde_json::{Value, json};

/// Who makes a call and from where, for the policies and the audit trail.
pub struct CallOrigin<'a> {
    pub caller: Caller,
    /// `agent` (a run) or `mcp` (the MCP gateway).
    pub via: &'static str,
    /// The run making the call; empty through the gateway.
    pub run_id: &'a str,
}

impl CallOrigin<'_> {
    /// How approvers and the audit trail name the caller: the agent, or `mcp:<principal>`.
    pub fn label(&self) -> String {
        match &self.caller {
            Caller::Agent(name) => name.clone(),
            Caller::User { principal, .. } => format!("mcp:{principal}"),
        }
    }
}

/// What the schema and the policies say about a call.
pub enum Gate {
    Refused(ToolError),
    Allowed,
    NeedsApproval,
}

/// Checks `arguments` and asks the policies; a denial is audited. A stored policy that no
/// longer parses denies (fails closed).
pub async fn gate(
    tools: &Tools,
    store: &TenantStore<'_>,
    origin: &CallOrigin<'_>,
    tool: &ResolvedTool,
    arguments: &Value,
) -> Result<Gate, StoreError> {
    if !arguments.is_object() {
        return Ok(Gate::Refused(ToolError::InvalidArguments(
            "the arguments must be a JSON object".into(),
        )));
    }
    if let Err(error) = bulkhead_tools::http::check_arguments(&tool.operation.parameters, arguments)
    {
        return Ok(Gate::Refused(error));
    }
    let verdict = match tools
        .decide(store, &origin.caller, tool, arguments, origin.via)
        .await
    {
        Ok(verdict) => verdict,
        Err(ToolError::Store(error) | ToolError::Policy(PolicyError::Store(error))) => {
            return Err(error);
        }
        Err(error) => {
            tracing::error!(tenant.id = %store.context().tenant_id(), %error, "the tenant's policies cannot be evaluated; refusing");
            Verdict::Deny {
                policies: vec!["unevaluable".into()],
            }
        }
    };
    Ok(match verdict {
        Verdict::Allow => Gate::Allowed,
        Verdict::NeedsApproval => Gate::NeedsApproval,
        Verdict::Deny { policies } => {
            store
                .record_event(AuditDraft {
                    action: "tool.denied",
                    resource: format!("tool/{}", tool.id()),
                    outcome: Outcome::Failure,
                    details: json!({"run_id": origin.run_id, "caller": origin.label(), "via": origin.via,
                        "target": tool.target(arguments), "policies": policies}),
                })
                .await?;
            Gate::Refused(ToolError::Denied { policies })
        }
    })
}

/// Makes the call and audits it; the inner result is what the caller is told.
pub async fn execute(
    tools: &Tools,
    store: &TenantStore<'_>,
    toolbox: &Toolbox,
    origin: &CallOrigin<'_>,
    tool: &ResolvedTool,
    arguments: &Value,
) -> Result<Result<String, ToolError>, StoreError> {
    let result = tools.execute(store, toolbox, tool, arguments).await;
    let agent = match &origin.caller {
        Caller::Agent(name) => Some(name.as_str()),
        Caller::User { .. } => None,
    };
    store.record_tool_call(agent, &tool.id(), result.is_err());
    store
        .record_event(AuditDraft {
            action: "tool.called",
            resource: format!("tool/{}", tool.id()),
            outcome: if result.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            details: json!({"run_id": origin.run_id, "caller": origin.label(), "via": origin.via,
                "target": tool.target(arguments), "error": result.as_ref().err().map(ToolError::code)}),
        })
        .await?;
    match result {
        Err(ToolError::Store(error)) => Err(error),
        other => Ok(other),
    }
}

/// The approval a call waits for, expiring after the configured time.
pub fn approval_draft(
    tools: &Tools,
    origin: &CallOrigin<'_>,
    tool: &ResolvedTool,
    arguments: &Value,
    tool_call_id: &str,
) -> ApprovalDraft {
    let ttl =
        i64::try_from(tools.config().approval_ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    ApprovalDraft {
        approval_id: bulkhead_core::ids::new_approval_id(),
        run_id: origin.run_id.to_owned(),
        agent: origin.label(),
        tool: tool.id(),
        tool_call_id: tool_call_id.to_owned(),
        action: tool.operation.action.clone(),
        target: tool.target(arguments),
        arguments: bulkhead_tools::policy::canonical_json(arguments),
        expires_at: bulkhead_core::timestamp::now_millis().saturating_add(ttl),
    }
}

/// What a caller reads when its call was not made or failed: the stable code and why.
pub fn refusal(error: &ToolError) -> String {
    json!({"error": error.code(), "message": error.to_string()}).to_string()
}

/// Calls `name` for a principal through the MCP gateway: the same schema check, policies,
/// approvals and egress as a run's call. A call that needs approval records one and is
/// refused; once a person approves it, the same call (same tool, same arguments) goes
/// through, once.
pub async fn call_for_principal(
    tools: &Tools,
    store: &TenantStore<'_>,
    toolbox: &Toolbox,
    origin: &CallOrigin<'_>,
    name: &str,
    arguments: &Value,
) -> Result<Result<String, ToolError>, StoreError> {
    let Some(tool) = toolbox.by_model_name(name) else {
        return Ok(Err(ToolError::UnknownTool(name.to_owned())));
    };
    match gate(tools, store, origin, tool, arguments).await? {
        Gate::Refused(error) => Ok(Err(error)),
        Gate::Allowed => execute(tools, store, toolbox, origin, tool, arguments).await,
        Gate::NeedsApproval => {
            let canonical = bulkhead_tools::policy::canonical_json(arguments);
            if store
                .consume_approval(&origin.label(), &tool.id(), &canonical)
                .await?
                .is_some()
            {
                return execute(tools, store, toolbox, origin, tool, arguments).await;
            }
            let draft = approval_draft(tools, origin, tool, arguments, "");
            let record = store.request_call_approval(&draft).await?;
            crate::approvals::notify(tools, store, &record).await;
            Ok(Err(ToolError::ApprovalRequired(record.approval_id)))
        }
    }
}
