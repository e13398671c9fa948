//! The tenant-scoped handle. Every method reads the tenant from the context it was made from;
//! none takes a tenant id, so no caller can ask it for another tenant's rows.

use bulkhead_core::audit::AuditEvent;
use bulkhead_core::{ApiKeyId, Tenant, TenantContext};

use crate::StoreError;
use crate::audit;
use crate::backend::{Access, Backend, Scope, Tx, fetch_all, fetch_optional};
use crate::events::EventBatcher;
use crate::records::{
    API_KEY_COLUMNS, ApiKeyInfo, ApiKeyRow, TENANT_COLUMNS, TenantRow, convert_all,
};
use crate::usage::UsageMeter;

pub struct TenantStore<'a> {
    backend: &'a Backend,
    pub(crate) events: &'a EventBatcher,
    pub(crate) usage: &'a UsageMeter,
    ctx: &'a TenantContext,
    pub(crate) pgvector: bool,
    /// Set in a dedicated worker: see `remote.rs`.
    pub(crate) link: Option<&'a dyn crate::remote::StoreLink>,
}

impl<'a> TenantStore<'a> {
    pub(crate) fn new(
        backend: &'a Backend,
        events: &'a EventBatcher,
        usage: &'a UsageMeter,
        ctx: &'a TenantContext,
        pgvector: bool,
    ) -> Self {
        Self {
            backend,
            events,
            usage,
            ctx,
            pgvector,
            link: None,
        }
    }

    pub(crate) fn linked(mut self, link: Option<&'a dyn crate::remote::StoreLink>) -> Self {
        self.link = link;
        self
    }

    pub(crate) fn backend(&self) -> &Backend {
        self.backend
    }

    pub fn context(&self) -> &TenantContext {
        self.ctx
    }

    pub(crate) async fn begin(&self, access: Access) -> Result<Tx, StoreError> {
        self.backend
            .begin(access, Scope::Tenant(self.ctx.tenant_id()))
            .await
    }

    /// The context's own tenant record.
    pub async fn tenant(&self) -> Result<Option<Tenant>, StoreError> {
        crate::remote::remote!(self, tenant);
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1");
        let row = fetch_optional!(&mut tx, TenantRow, &sql, self.ctx.tenant_id().as_str())?;
        tx.commit().await?;
        row.map(Tenant::try_from).transpose()
    }

    /// The tenant's API keys (metadata only), newest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at DESC, key_id"
        );
        let rows = fetch_all!(&mut tx, ApiKeyRow, &sql, self.ctx.tenant_id().as_str())?;
        tx.commit().await?;
        convert_all(rows)
    }

    /// One of the tenant's API keys; another tenant's key is `None`, like a missing one.
    pub async fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKeyInfo>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql =
            format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND key_id = $2");
        let row = fetch_optional!(
            &mut tx,
            ApiKeyRow,
            &sql,
            self.ctx.tenant_id().as_str(),
            id.as_str()
        )?;
        tx.commit().await?;
        row.map(ApiKeyInfo::try_from).transpose()
    }

    /// The tenant's audit events after `after`, oldest first.
    pub async fn audit_events(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.events.settle().await?;
        let mut tx = self.begin(Access::Read).await?;
        let events = audit::read(&mut tx, self.ctx.tenant_id(), after, limit).await?;
        tx.commit().await?;
        Ok(events)
    }

    /// Runs `SELECT tenant_id FROM <table>` with no tenant filter inside this handle's
    /// transaction: the query a careless change might write. Tests use it to show that on
    /// PostgreSQL row-level security still returns only this tenant's rows.
    #[cfg(feature = "test-support")]
    pub async fn unfiltered_tenant_ids(&self, table: &str) -> Result<Vec<String>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            tenant_id: String,
        }
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!("SELECT tenant_id FROM {table}");
        let rows = fetch_all!(&mut tx, Row, &sql)?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.tenant_id).collect())
    }

    /// Reports who the database thinks is asking, so tests can check the role switch.
    #[cfg(feature = "test-support")]
    pub async fn database_role(&self) -> Result<Option<String>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            role: String,
        }
        let mut tx = self.begin(Access::Read).await?;
        let row = match &mut tx {
            Tx::Postgres(_) => fetch_optional!(&mut tx, Row, "SELECT current_user::text AS role")?,
            Tx::Sqlite(_) | Tx::SqliteStatement(_) => None,
        };
        tx.commit().await?;
        Ok(row.map(|r| r.role))
    }
}
