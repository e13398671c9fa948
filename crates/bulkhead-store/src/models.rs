//! Which model aliases each tenant may use beyond the deployment's defaults. Set by the
//! control plane; read by the tenant's runs.

use bulkhead_core::TenantId;
use bulkhead_core::audit::{AuditDraft, Origin, Outcome};
use serde_json::json;

use crate::backend::{Access, execute, fetch_all};
use crate::{AdminStore, StoreError, TenantStore, audit};

#[derive(sqlx::FromRow)]
struct AliasRow {
    alias: String,
}

impl AdminStore<'_> {
    /// Replaces the tenant's extra model aliases; `None` if the tenant does not exist.
    pub async fn set_tenant_models(
        &self,
        tenant: &TenantId,
        aliases: &[String],
        origin: &Origin,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.tenant_exists(&mut tx, tenant).await? {
            execute!(
                &mut tx,
                "DELETE FROM tenant_models WHERE tenant_id = $1",
                tenant.as_str()
            )?;
            for alias in aliases {
                execute!(
                    &mut tx,
                    "INSERT INTO tenant_models (tenant_id, alias) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    tenant.as_str(),
                    alias.as_str(),
                )?;
            }
            audit::append(
                &mut tx,
                tenant,
                origin,
                AuditDraft {
                    action: "tenant.models_set",
                    resource: format!("tenant/{tenant}/models"),
                    outcome: Outcome::Success,
                    details: json!({"aliases": aliases}),
                },
            )
            .await?;
            tx.commit().await?;
            Ok(Some(aliases.to_vec()))
        } else {
            Ok(None)
        }
    }
}

impl TenantStore<'_> {
    /// The model aliases this tenant may use beyond the deployment's defaults.
    pub async fn extra_models(&self) -> Result<Vec<String>, StoreError> {
        crate::remote::remote!(self, extra_models);
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            AliasRow,
            "SELECT alias FROM tenant_models WHERE tenant_id = $1 ORDER BY alias",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.alias).collect())
    }
}
