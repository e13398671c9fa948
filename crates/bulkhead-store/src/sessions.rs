//! Console sessions: created by a tenant-scoped handle once a credential has been verified,
//! found by the hash of their cookie through the admin handle (before the tenant is known,
//! like API keys).

use std::collections::BTreeSet;

use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::auth::{SessionPrincipal, StoredSession};
use bulkhead_core::timestamp::now_millis;
use bulkhead_core::{ApiKeyId, Role, TenantId};
use serde_json::json;

use crate::backend::{Access, execute, fetch_optional};
use crate::{AdminStore, StoreError, TenantStore, audit};

#[derive(sqlx::FromRow)]
struct SessionRow {
    tenant_id: String,
    principal: String,
    api_key_id: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    roles: String,
    csrf_token: String,
    expires_at: i64,
}

impl TenantStore<'_> {
    /// Stores a session for this context's tenant (it must be `session.tenant_id`); drops the
    /// tenant's expired sessions on the way.
    pub async fn create_console_session(
        &self,
        session_hash: &str,
        session: &StoredSession,
        csrf_token: &str,
    ) -> Result<(), StoreError> {
        let tenant = self.context().tenant_id();
        if &session.tenant_id != tenant {
            return Err(StoreError::Corrupt("a session for another tenant".into()));
        }
        let now = now_millis();
        let (kind, key, issuer, subject) = match &session.principal {
            SessionPrincipal::ApiKey(id) => ("key", Some(id.as_str()), None, None),
            SessionPrincipal::User { issuer, subject } => {
                ("user", None, Some(issuer.as_str()), Some(subject.as_str()))
            }
        };
        let roles: Vec<&str> = session.roles.iter().map(|r| r.as_str()).collect();
        let mut tx = self.begin(Access::Write).await?;
        execute!(
            &mut tx,
            "DELETE FROM console_sessions WHERE tenant_id = $1 AND expires_at <= $2",
            tenant.as_str(),
            now,
        )?;
        execute!(
            &mut tx,
            "INSERT INTO console_sessions (tenant_id, session_hash, principal, api_key_id, issuer, subject, roles, \
             csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            tenant.as_str(),
            session_hash,
            kind,
            key,
            issuer,
            subject,
            roles.join(","),
            csrf_token,
            now,
            session.expires_at,
        )?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "console.signed_in",
                resource: "console".into(),
                outcome: Outcome::Success,
                details: json!({"expires_at": session.expires_at}),
            },
        )
        .await?;
        tx.commit().await
    }

    /// Ends a session of this tenant; `false` if there was none.
    pub async fn delete_console_session(&self, session_hash: &str) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let deleted = execute!(
            &mut tx,
            "DELETE FROM console_sessions WHERE tenant_id = $1 AND session_hash = $2",
            tenant.as_str(),
            session_hash,
        )?;
        audit::commit_if_changed(
            tx,
            deleted,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "console.signed_out",
                resource: "console".into(),
                outcome: Outcome::Success,
                details: json!({}),
            },
        )
        .await
    }
}

impl AdminStore<'_> {
    /// The session whose cookie hashes to `session_hash`, with its CSRF token.
    pub async fn session_for_auth(
        &self,
        session_hash: &str,
    ) -> Result<Option<(StoredSession, String)>, StoreError> {
        let mut tx = self.begin(Access::SingleRead).await?;
        let row = fetch_optional!(
            &mut tx,
            SessionRow,
            "SELECT tenant_id, principal, api_key_id, issuer, subject, roles, csrf_token, expires_at \
             FROM console_sessions WHERE session_hash = $1",
            session_hash,
        )?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("console session: {what}"));
        let principal = match (
            row.principal.as_str(),
            row.api_key_id,
            row.issuer,
            row.subject,
        ) {
            ("key", Some(id), _, _) => {
                SessionPrincipal::ApiKey(ApiKeyId::try_from(id).map_err(|_| corrupt("key id"))?)
            }
            ("user", _, Some(issuer), Some(subject)) => SessionPrincipal::User { issuer, subject },
            _ => return Err(corrupt("principal")),
        };
        let roles: BTreeSet<Role> = row
            .roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(|r| r.parse().map_err(|_| corrupt("role")))
            .collect::<Result<_, _>>()?;
        Ok(Some((
            StoredSession {
                tenant_id: TenantId::try_from(row.tenant_id).map_err(|_| corrupt("tenant"))?,
                principal,
                roles,
                expires_at: row.expires_at,
            },
            row.csrf_token,
        )))
    }
}
