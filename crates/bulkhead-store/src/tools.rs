//! Tools: a tenant's toolsets (the connectors it declared, as JSON whose shape bulkhead-tools
//! owns), its Cedar policies (text) with a generation counter, and approvals: tool calls that
//! wait, with their run, for a person of the same tenant.

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::timestamp::now_millis;
use serde_json::{Value, json};

use crate::backend::{Access, Scope, execute, fetch_all, fetch_optional};
use crate::remote::remote;
use crate::runs::RunProgress;
use crate::{AdminStore, StoreError, TenantStore, audit};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ToolsetRecord {
    pub name: String,
    pub version: i64,
    pub spec: Value,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct ToolsetRow {
    name: String,
    version: i64,
    spec: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ToolsetRow> for ToolsetRecord {
    type Error = StoreError;
    fn try_from(row: ToolsetRow) -> Result<Self, StoreError> {
        Ok(ToolsetRecord {
            spec: serde_json::from_str(&row.spec)
                .map_err(|e| StoreError::Corrupt(format!("toolset spec: {e}")))?,
            name: row.name,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct PolicyRecord {
    pub name: String,
    pub version: i64,
    pub text: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A tool call waiting for (or past) a decision.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ApprovalRecord {
    pub approval_id: String,
    pub run_id: String,
    pub agent: String,
    /// The tool as policies name it, `<toolset>.<operation>`.
    pub tool: String,
    pub tool_call_id: String,
    /// What the call does, in words ("post a message to").
    pub action: String,
    pub target: String,
    /// The exact arguments, as JSON text.
    pub arguments: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: String,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
}

/// What a run asks a person to decide.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ApprovalDraft {
    pub approval_id: String,
    pub run_id: String,
    pub agent: String,
    pub tool: String,
    pub tool_call_id: String,
    pub action: String,
    pub target: String,
    pub arguments: String,
    pub expires_at: i64,
}

/// How a decision went.
#[derive(Debug, Clone)]
pub enum DecisionOutcome {
    Decided(ApprovalRecord),
    /// Someone decided first, or it expired; the record as it stands.
    AlreadyDecided(ApprovalRecord),
}

const APPROVAL_COLUMNS: &str = "approval_id, run_id, agent, tool, tool_call_id, action, target, arguments, status, \
     decided_by, reason, created_at, expires_at, decided_at";

impl TenantStore<'_> {
    /// Stores a toolset (its next version if it exists).
    pub async fn put_toolset(&self, name: &str, spec: &Value) -> Result<ToolsetRecord, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        let row = fetch_optional!(
            &mut tx,
            ToolsetRow,
            "INSERT INTO toolsets (tenant_id, name, version, spec, created_at, updated_at) VALUES ($1, $2, 1, $3, $4, $4) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET version = toolsets.version + 1, spec = excluded.spec, \
             updated_at = excluded.updated_at RETURNING name, version, spec, created_at, updated_at",
            tenant.as_str(),
            name,
            spec.to_string(),
            now,
        )?
        .ok_or_else(|| StoreError::Corrupt("toolset upsert returned no row".into()))?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "toolset.written",
                resource: format!("toolset/{name}"),
                outcome: Outcome::Success,
                details: json!({"version": row.version, "kind": spec.get("kind"), "endpoint": spec.get("endpoint")}),
            },
        )
        .await?;
        tx.commit().await?;
        row.try_into()
    }

    pub async fn toolset(&self, name: &str) -> Result<Option<ToolsetRecord>, StoreError> {
        remote!(self, toolset, name);
        let mut tx = self.begin(Access::Read).await?;
        let row = fetch_optional!(
            &mut tx,
            ToolsetRow,
            "SELECT name, version, spec, created_at, updated_at FROM toolsets WHERE tenant_id = $1 AND name = $2",
            self.context().tenant_id().as_str(),
            name,
        )?;
        tx.commit().await?;
        row.map(ToolsetRecord::try_from).transpose()
    }

    pub async fn toolsets(&self) -> Result<Vec<ToolsetRecord>, StoreError> {
        remote!(self, toolsets);
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            ToolsetRow,
            "SELECT name, version, spec, created_at, updated_at FROM toolsets WHERE tenant_id = $1 ORDER BY name",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        rows.into_iter().map(ToolsetRecord::try_from).collect()
    }

    pub async fn delete_toolset(&self, name: &str) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let deleted = execute!(
            &mut tx,
            "DELETE FROM toolsets WHERE tenant_id = $1 AND name = $2",
            tenant.as_str(),
            name,
        )?;
        audit::commit_if_changed(
            tx,
            deleted,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "toolset.deleted",
                resource: format!("toolset/{name}"),
                outcome: Outcome::Success,
                details: json!({}),
            },
        )
        .await
    }

    /// Stores a policy (its next version if it exists) and moves the tenant's policy
    /// generation on, in one transaction.
    pub async fn put_policy(&self, name: &str, text: &str) -> Result<PolicyRecord, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        let record = fetch_optional!(
            &mut tx,
            PolicyRecord,
            "INSERT INTO tenant_policies (tenant_id, name, version, text, created_at, updated_at) VALUES ($1, $2, 1, $3, $4, $4) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET version = tenant_policies.version + 1, text = excluded.text, \
             updated_at = excluded.updated_at RETURNING name, version, text, created_at, updated_at",
            tenant.as_str(),
            name,
            text,
            now,
        )?
        .ok_or_else(|| StoreError::Corrupt("policy upsert returned no row".into()))?;
        bump_policy_generation(&mut tx, tenant).await?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "policy.written",
                resource: format!("policy/{name}"),
                outcome: Outcome::Success,
                details: json!({"version": record.version, "text": text}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    pub async fn policy(&self, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let row = fetch_optional!(
            &mut tx,
            PolicyRecord,
            "SELECT name, version, text, created_at, updated_at FROM tenant_policies WHERE tenant_id = $1 AND name = $2",
            self.context().tenant_id().as_str(),
            name,
        )?;
        tx.commit().await?;
        Ok(row)
    }

    /// All of the tenant's policies and the generation they are at, read in one snapshot.
    pub async fn policies(&self) -> Result<(i64, Vec<PolicyRecord>), StoreError> {
        remote!(self, policies);
        let mut tx = self.begin(Access::Read).await?;
        let generation = read_policy_generation(&mut tx, self.context().tenant_id()).await?;
        let rows = fetch_all!(
            &mut tx,
            PolicyRecord,
            "SELECT name, version, text, created_at, updated_at FROM tenant_policies WHERE tenant_id = $1 ORDER BY name",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        Ok((generation, rows))
    }

    /// The tenant's policy generation: 0 before its first policy, then one more per change.
    pub async fn policy_generation(&self) -> Result<i64, StoreError> {
        remote!(self, policy_generation);
        let mut tx = self.begin(Access::SingleRead).await?;
        let generation = read_policy_generation(&mut tx, self.context().tenant_id()).await?;
        tx.commit().await?;
        Ok(generation)
    }

    pub async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let deleted = execute!(
            &mut tx,
            "DELETE FROM tenant_policies WHERE tenant_id = $1 AND name = $2",
            tenant.as_str(),
            name,
        )?;
        if deleted > 0 {
            bump_policy_generation(&mut tx, tenant).await?;
        }
        audit::commit_if_changed(
            tx,
            deleted,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "policy.deleted",
                resource: format!("policy/{name}"),
                outcome: Outcome::Success,
                details: json!({}),
            },
        )
        .await
    }

    /// Pauses a running run on a tool call: records the approval, saves the run's progress
    /// and sets it `awaiting_approval`, all in one transaction with the audit event. Fails
    /// with `NotFound` if the run is not running.
    pub async fn request_approval(
        &self,
        draft: &ApprovalDraft,
        progress: &RunProgress,
    ) -> Result<ApprovalRecord, StoreError> {
        remote!(self, request_approval, draft, progress);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        let paused = execute!(
            &mut tx,
            "UPDATE runs SET status = 'awaiting_approval', transcript = $3, steps = $4, input_tokens = $5, \
             output_tokens = $6, updated_at = $7 WHERE tenant_id = $1 AND run_id = $2 AND status = 'running'",
            tenant.as_str(),
            draft.run_id.as_str(),
            progress.transcript.to_string(),
            progress.steps,
            progress.input_tokens,
            progress.output_tokens,
            now,
        )?;
        if paused == 0 {
            return Err(StoreError::NotFound("running run"));
        }
        let record = insert_approval(&mut tx, tenant, &self.origin(), draft, now).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// The tenant's approvals, newest first, optionally only those in `status`.
    pub async fn approvals(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE tenant_id = $1 AND ($2 = '' OR status = $2) \
             ORDER BY created_at DESC, approval_id LIMIT $3"
        );
        let rows = fetch_all!(
            &mut tx,
            ApprovalRecord,
            &sql,
            self.context().tenant_id().as_str(),
            status.unwrap_or_default(),
            limit,
        )?;
        tx.commit().await?;
        Ok(rows)
    }

    /// One approval; another tenant's is `None`, like a missing one.
    pub async fn approval(&self, approval_id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE tenant_id = $1 AND approval_id = $2"
        );
        let row = fetch_optional!(
            &mut tx,
            ApprovalRecord,
            &sql,
            self.context().tenant_id().as_str(),
            approval_id,
        )?;
        tx.commit().await?;
        Ok(row)
    }

    /// The latest approval of a run (the one it waits for, or waited for last).
    pub async fn run_approval(&self, run_id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        remote!(self, run_approval, run_id);
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE tenant_id = $1 AND run_id = $2 \
             ORDER BY created_at DESC, approval_id DESC LIMIT 1"
        );
        let row = fetch_optional!(
            &mut tx,
            ApprovalRecord,
            &sql,
            self.context().tenant_id().as_str(),
            run_id,
        )?;
        tx.commit().await?;
        Ok(row)
    }

    /// Decides a pending approval, once: the first decision wins, and one made after the
    /// expiry time is refused as already decided. `None` if there is no such approval in
    /// this tenant.
    pub async fn decide_approval(
        &self,
        approval_id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Option<DecisionOutcome>, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        let status = if approve { "approved" } else { "denied" };
        let decided_by = self.context().principal().to_string();
        let sql = format!(
            "UPDATE approvals SET status = $3, decided_by = $4, reason = $5, decided_at = $6 \
             WHERE tenant_id = $1 AND approval_id = $2 AND status = 'pending' AND expires_at > $6 \
             RETURNING {APPROVAL_COLUMNS}"
        );
        let decided = fetch_optional!(
            &mut tx,
            ApprovalRecord,
            &sql,
            tenant.as_str(),
            approval_id,
            status,
            decided_by.as_str(),
            reason,
            now,
        )?;
        let Some(record) = decided else {
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE tenant_id = $1 AND approval_id = $2"
            );
            let existing =
                fetch_optional!(&mut tx, ApprovalRecord, &sql, tenant.as_str(), approval_id)?;
            tx.commit().await?;
            return Ok(existing.map(DecisionOutcome::AlreadyDecided));
        };
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: if approve {
                    "approval.approved"
                } else {
                    "approval.denied"
                },
                resource: format!("approval/{approval_id}"),
                outcome: Outcome::Success,
                details: json!({"run_id": record.run_id, "tool": record.tool, "target": record.target,
                    "reason": reason}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(DecisionOutcome::Decided(record)))
    }

    /// Records an approval for a call made outside any run (the MCP gateway): the caller
    /// retries once it is approved, and [`TenantStore::consume_approval`] lets exactly one
    /// retry through.
    pub async fn request_call_approval(
        &self,
        draft: &ApprovalDraft,
    ) -> Result<ApprovalRecord, StoreError> {
        remote!(self, request_call_approval, draft);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let draft = ApprovalDraft {
            run_id: String::new(),
            tool_call_id: String::new(),
            ..draft.clone()
        };
        let record = insert_approval(&mut tx, tenant, &self.origin(), &draft, now_millis()).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Uses up one approved, unused, unexpired approval of `caller` for exactly this tool
    /// and these arguments (canonical JSON). `None` if there is none.
    pub async fn consume_approval(
        &self,
        caller: &str,
        tool: &str,
        arguments: &str,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        remote!(self, consume_approval, caller, tool, arguments);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let sql = format!(
            "UPDATE approvals SET consumed_at = $6 WHERE tenant_id = $1 AND approval_id = ( \
                SELECT approval_id FROM approvals WHERE tenant_id = $1 AND run_id = '' AND agent = $2 \
                AND tool = $3 AND arguments = $4 AND status = 'approved' AND consumed_at IS NULL AND expires_at > $5 \
                ORDER BY decided_at LIMIT 1) \
             AND consumed_at IS NULL RETURNING {APPROVAL_COLUMNS}"
        );
        let now = now_millis();
        let record = fetch_optional!(
            &mut tx,
            ApprovalRecord,
            &sql,
            tenant.as_str(),
            caller,
            tool,
            arguments,
            now,
            now,
        )?;
        tx.commit().await?;
        Ok(record)
    }

    /// Takes a paused run whose approval has been decided back to `running`, so exactly one
    /// process resumes it, and records that process as the run's. `false` if it is not paused
    /// or its approval is still pending.
    pub async fn claim_paused_run(
        &self,
        run_id: &str,
        process: crate::RunProcess,
    ) -> Result<bool, StoreError> {
        // As with start_run, the process is the one the control plane knows the worker by.
        remote!(self, claim_paused_run, run_id);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let claimed = execute!(
            &mut tx,
            "UPDATE runs SET status = 'running', updated_at = $3, process_id = $4, isolation = $5 \
             WHERE tenant_id = $1 AND run_id = $2 AND status = 'awaiting_approval' \
             AND NOT EXISTS (SELECT 1 FROM approvals a WHERE a.tenant_id = $1 AND a.run_id = $2 AND a.status = 'pending')",
            tenant.as_str(),
            run_id,
            now_millis(),
            i64::from(process.id),
            process.isolation.as_str(),
        )?;
        tx.commit().await?;
        Ok(claimed > 0)
    }
}

/// Inserts a pending approval and appends its `approval.requested` event, in `tx`.
async fn insert_approval(
    tx: &mut crate::backend::Tx,
    tenant: &TenantId,
    origin: &bulkhead_core::audit::Origin,
    draft: &ApprovalDraft,
    now: i64,
) -> Result<ApprovalRecord, StoreError> {
    let sql = format!(
        "INSERT INTO approvals (tenant_id, approval_id, run_id, agent, tool, tool_call_id, action, target, arguments, \
         status, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11) \
         RETURNING {APPROVAL_COLUMNS}"
    );
    let record = fetch_optional!(
        tx,
        ApprovalRecord,
        &sql,
        tenant.as_str(),
        draft.approval_id.as_str(),
        draft.run_id.as_str(),
        draft.agent.as_str(),
        draft.tool.as_str(),
        draft.tool_call_id.as_str(),
        draft.action.as_str(),
        draft.target.as_str(),
        draft.arguments.as_str(),
        now,
        draft.expires_at,
    )?
    .ok_or_else(|| StoreError::Corrupt("approval insert returned no row".into()))?;
    audit::append(
        tx,
        tenant,
        origin,
        AuditDraft {
            action: "approval.requested",
            resource: format!("approval/{}", draft.approval_id),
            outcome: Outcome::Success,
            details: json!({"run_id": draft.run_id, "caller": draft.agent, "tool": draft.tool,
                "target": draft.target, "expires_at": draft.expires_at}),
        },
    )
    .await?;
    Ok(record)
}

async fn read_policy_generation(
    tx: &mut crate::backend::Tx,
    tenant: &TenantId,
) -> Result<i64, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Head {
        generation: i64,
    }
    Ok(fetch_optional!(
        tx,
        Head,
        "SELECT generation FROM policy_heads WHERE tenant_id = $1",
        tenant.as_str(),
    )?
    .map_or(0, |h| h.generation))
}

async fn bump_policy_generation(
    tx: &mut crate::backend::Tx,
    tenant: &TenantId,
) -> Result<(), StoreError> {
    execute!(
        tx,
        "INSERT INTO policy_heads (tenant_id, generation) VALUES ($1, 1) \
         ON CONFLICT (tenant_id) DO UPDATE SET generation = policy_heads.generation + 1",
        tenant.as_str(),
    )?;
    Ok(())
}

/// A paused run some process should pick up: its approval was decided or has expired.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResumableRun {
    pub tenant_id: String,
    pub run_id: String,
}

impl AdminStore<'_> {
    /// Marks every pending approval past its expiry as `expired`, each with an audit event in
    /// its tenant's chain. Returns the runs that may now resume (with a refusal).
    pub async fn expire_approvals(&self, now: i64) -> Result<Vec<ResumableRun>, StoreError> {
        let mut tx = self
            .backend()
            .begin(Access::Write, Scope::ControlPlane)
            .await?;
        #[derive(sqlx::FromRow)]
        struct Expired {
            tenant_id: String,
            approval_id: String,
            run_id: String,
        }
        let expired = fetch_all!(
            &mut tx,
            Expired,
            "UPDATE approvals SET status = 'expired', decided_at = $1 \
             WHERE status = 'pending' AND expires_at <= $1 RETURNING tenant_id, approval_id, run_id",
            now,
        )?;
        let origin = bulkhead_core::audit::Origin {
            actor: "approval-expiry".to_owned(),
            request_id: None,
        };
        for row in &expired {
            let tenant = TenantId::try_from(row.tenant_id.as_str())
                .map_err(|e| StoreError::Corrupt(format!("tenant id in approvals: {e}")))?;
            audit::append(
                &mut tx,
                &tenant,
                &origin,
                AuditDraft {
                    action: "approval.expired",
                    resource: format!("approval/{}", row.approval_id),
                    outcome: Outcome::Failure,
                    details: json!({"run_id": row.run_id}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(expired
            .into_iter()
            .map(|e| ResumableRun {
                tenant_id: e.tenant_id,
                run_id: e.run_id,
            })
            .collect())
    }

    /// Paused runs whose approval is no longer pending: decided while no process could
    /// resume them (a crash between the decision and the resumption), or expired.
    pub async fn resumable_runs(&self) -> Result<Vec<ResumableRun>, StoreError> {
        let mut tx = self
            .backend()
            .begin(Access::Read, Scope::ControlPlane)
            .await?;
        let rows = fetch_all!(
            &mut tx,
            ResumableRun,
            "SELECT r.tenant_id, r.run_id FROM runs r WHERE r.status = 'awaiting_approval' \
             AND NOT EXISTS (SELECT 1 FROM approvals a WHERE a.tenant_id = r.tenant_id AND a.run_id = r.run_id \
             AND a.status = 'pending')",
        )?;
        tx.commit().await?;
        Ok(rows)
    }
}
