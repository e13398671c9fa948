//! Approvals as people see them, and the optional webhook told of each new one.

use bulkhead_egress::OutboundRequest;
use bulkhead_store::{ApprovalRecord, TenantStore};
use bulkhead_tools::Tools;
use serde_json::json;

/// The line an approver reads: who acts, for which tenant, doing what to what.
pub fn line(tenant_name: &str, tenant_id: &str, approval: &ApprovalRecord) -> String {
    format!(
        "Agent `{}` acting as `{}` (`{}`) wants to `{}` `{}`",
        approval.agent, tenant_name, tenant_id, approval.action, approval.target
    )
}

/// Tells the configured webhook of a new pending approval, through egress in the tenant's
/// context (so it is audited in the tenant's chain and bound by its residency). Best effort:
/// a webhook that fails is logged, and the approval stays pending for the console and API.
pub async fn notify(tools: &Tools, store: &TenantStore<'_>, approval: &ApprovalRecord) {
    let Some(endpoint) = &tools.config().approval_webhook else {
        return;
    };
    let ctx = store.context();
    let body = json!({
        "type": "approval.requested",
        "approval_id": approval.approval_id,
        "tenant_id": ctx.tenant_id(),
        "tenant_name": ctx.tenant_name(),
        "line": line(ctx.tenant_name(), ctx.tenant_id().as_str(), approval),
        "agent": approval.agent,
        "tool": approval.tool,
        "target": approval.target,
        "expires_at": approval.expires_at,
    });
    let sent = tools
        .egress()
        .for_tenant(ctx)
        .send(endpoint, OutboundRequest::post_json("/", &body))
        .await;
    match sent {
        Ok(response) if response.status < 300 => {}
        Ok(response) => {
            tracing::warn!(tenant.id = %ctx.tenant_id(), status = response.status, "the approval webhook refused the notice");
        }
        Err(error) => {
            tracing::warn!(tenant.id = %ctx.tenant_id(), code = error.code(), "the approval webhook could not be told");
        }
    }
}
