//! Agent definitions (versioned) and the tenant's prompt snippet library. Specs are stored as
//! JSON text; bulkhead-runtime owns their shape.

use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::timestamp::now_millis;
use bulkhead_core::{AgentName, PromptName};
use serde_json::{Value, json};

use crate::backend::{Access, execute, fetch_all, fetch_optional};
use crate::remote::remote;
use crate::{StoreError, TenantStore, audit};

/// One version of an agent.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentRecord {
    pub name: AgentName,
    pub version: i64,
    pub spec: Value,
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    name: String,
    version: i64,
    spec: String,
    created_at: i64,
}

impl TryFrom<AgentRow> for AgentRecord {
    type Error = StoreError;
    fn try_from(row: AgentRow) -> Result<Self, StoreError> {
        Ok(AgentRecord {
            name: AgentName::try_from(row.name)
                .map_err(|e| StoreError::Corrupt(format!("agent name: {e}")))?,
            version: row.version,
            spec: serde_json::from_str(&row.spec)
                .map_err(|e| StoreError::Corrupt(format!("agent spec: {e}")))?,
            created_at: row.created_at,
        })
    }
}

/// A prompt snippet of the tenant's library.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct PromptRecord {
    pub name: String,
    pub version: i64,
    pub template: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const CURRENT_AGENT: &str = "SELECT v.name, v.version, v.spec, v.created_at FROM agents a \
     JOIN agent_versions v ON v.tenant_id = a.tenant_id AND v.name = a.name AND v.version = a.current_version \
     WHERE a.tenant_id = $1 AND a.deleted = false";

impl TenantStore<'_> {
    /// Stores `spec` as the agent's next version (1 for a new or re-created agent's first).
    pub async fn put_agent(
        &self,
        name: &AgentName,
        spec: &Value,
    ) -> Result<AgentRecord, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        #[derive(sqlx::FromRow)]
        struct Version {
            current_version: i64,
        }
        let version = fetch_optional!(
            &mut tx,
            Version,
            "INSERT INTO agents (tenant_id, name, current_version, deleted, updated_at) VALUES ($1, $2, 1, false, $3) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET current_version = agents.current_version + 1, \
             deleted = false, updated_at = excluded.updated_at RETURNING current_version",
            tenant.as_str(),
            name.as_str(),
            now,
        )?
        .ok_or_else(|| StoreError::Corrupt("agent upsert returned no row".into()))?
        .current_version;
        execute!(
            &mut tx,
            "INSERT INTO agent_versions (tenant_id, name, version, spec, created_at) VALUES ($1, $2, $3, $4, $5)",
            tenant.as_str(),
            name.as_str(),
            version,
            spec.to_string(),
            now,
        )?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "agent.written",
                resource: format!("agent/{name}"),
                outcome: Outcome::Success,
                details: json!({"version": version, "model": spec.get("model")}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(AgentRecord {
            name: name.clone(),
            version,
            spec: spec.clone(),
            created_at: now,
        })
    }

    /// The agent's current version; `None` if it does not exist, was deleted, or belongs to
    /// another tenant.
    pub async fn agent(&self, name: &AgentName) -> Result<Option<AgentRecord>, StoreError> {
        remote!(self, agent, name);
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!("{CURRENT_AGENT} AND a.name = $2");
        let row = fetch_optional!(
            &mut tx,
            AgentRow,
            &sql,
            self.context().tenant_id().as_str(),
            name.as_str()
        )?;
        tx.commit().await?;
        row.map(AgentRecord::try_from).transpose()
    }

    /// One specific version, deleted agents included (a run keeps pointing at its version).
    pub async fn agent_version(
        &self,
        name: &AgentName,
        version: i64,
    ) -> Result<Option<AgentRecord>, StoreError> {
        remote!(self, agent_version, name, version);
        let mut tx = self.begin(Access::Read).await?;
        let row = fetch_optional!(
            &mut tx,
            AgentRow,
            "SELECT name, version, spec, created_at FROM agent_versions WHERE tenant_id = $1 AND name = $2 AND version = $3",
            self.context().tenant_id().as_str(),
            name.as_str(),
            version,
        )?;
        tx.commit().await?;
        row.map(AgentRecord::try_from).transpose()
    }

    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!("{CURRENT_AGENT} ORDER BY a.name");
        let rows = fetch_all!(&mut tx, AgentRow, &sql, self.context().tenant_id().as_str())?;
        tx.commit().await?;
        rows.into_iter().map(AgentRecord::try_from).collect()
    }

    /// Deletes the agent (its versions stay for the runs that used them); `false` if none.
    pub async fn delete_agent(&self, name: &AgentName) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let deleted = execute!(
            &mut tx,
            "UPDATE agents SET deleted = true, updated_at = $3 WHERE tenant_id = $1 AND name = $2 AND deleted = false",
            tenant.as_str(),
            name.as_str(),
            now_millis(),
        )?;
        audit::commit_if_changed(
            tx,
            deleted,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "agent.deleted",
                resource: format!("agent/{name}"),
                outcome: Outcome::Success,
                details: json!({}),
            },
        )
        .await
    }

    /// Stores a snippet (a new version of it if it exists).
    pub async fn put_prompt(
        &self,
        name: &PromptName,
        template: &str,
    ) -> Result<PromptRecord, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        let record = fetch_optional!(
            &mut tx,
            PromptRecord,
            "INSERT INTO prompts (tenant_id, name, version, template, created_at, updated_at) VALUES ($1, $2, 1, $3, $4, $4) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET version = prompts.version + 1, template = excluded.template, \
             updated_at = excluded.updated_at RETURNING name, version, template, created_at, updated_at",
            tenant.as_str(),
            name.as_str(),
            template,
            now,
        )?
        .ok_or_else(|| StoreError::Corrupt("prompt upsert returned no row".into()))?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "prompt.written",
                resource: format!("prompt/{name}"),
                outcome: Outcome::Success,
                details: json!({"version": record.version, "bytes": template.len()}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    pub async fn prompt(&self, name: &PromptName) -> Result<Option<PromptRecord>, StoreError> {
        remote!(self, prompt, name);
        let mut tx = self.begin(Access::Read).await?;
        let row = fetch_optional!(
            &mut tx,
            PromptRecord,
            "SELECT name, version, template, created_at, updated_at FROM prompts WHERE tenant_id = $1 AND name = $2",
            self.context().tenant_id().as_str(),
            name.as_str(),
        )?;
        tx.commit().await?;
        Ok(row)
    }

    /// The whole library: what this tenant's templates may include.
    pub async fn prompts(&self) -> Result<Vec<PromptRecord>, StoreError> {
        remote!(self, prompts);
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            PromptRecord,
            "SELECT name, version, template, created_at, updated_at FROM prompts WHERE tenant_id = $1 ORDER BY name",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn delete_prompt(&self, name: &PromptName) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let deleted = execute!(
            &mut tx,
            "DELETE FROM prompts WHERE tenant_id = $1 AND name = $2",
            tenant.as_str(),
            name.as_str(),
        )?;
        audit::commit_if_changed(
            tx,
            deleted,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "prompt.deleted",
                resource: format!("prompt/{name}"),
                outcome: Outcome::Success,
                details: json!({}),
            },
        )
        .await
    }
}
