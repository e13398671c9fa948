//! The control-plane handle. It may see every tenant, so it is a different type from
//! [`crate::TenantStore`] and is only given to admin-authenticated code and to authentication.

use bulkhead_core::audit::{AuditDraft, AuditEvent, Origin, Outcome};
use bulkhead_core::auth::{GeneratedApiKey, StoredApiKey};
use bulkhead_core::timestamp::now_millis;
use bulkhead_core::{ApiKeyId, IssuerId, Role, Tenant, TenantId, TenantStatus};
use serde_json::json;

use crate::StoreError;
use crate::audit;
use crate::backend::{Access, Backend, Scope, Tx, execute, fetch_all, fetch_optional};
use crate::credentials::DataKeyRecord;
use crate::events::EventBatcher;
use crate::records::{
    API_KEY_COLUMNS, ApiKeyInfo, ApiKeyRow, DeletionReceipt, ISSUER_COLUMNS, IssuerRecord,
    IssuerRow, KeyForAuthRow, NewIssuer, NewTenant, Page, TENANT_COLUMNS, TenantPatch, TenantRow,
    convert_all,
};

pub struct AdminStore<'a> {
    backend: &'a Backend,
    pub(crate) events: &'a EventBatcher,
}

#[derive(sqlx::FromRow)]
struct SettingRow {
    value: String,
}

impl<'a> AdminStore<'a> {
    pub(crate) fn new(backend: &'a Backend, events: &'a EventBatcher) -> Self {
        Self { backend, events }
    }

    pub(crate) async fn begin_write(&self) -> Result<Tx, StoreError> {
        self.begin(Access::Write).await
    }

    pub(crate) async fn tenant_exists(
        &self,
        tx: &mut Tx,
        id: &TenantId,
    ) -> Result<bool, StoreError> {
        Ok(tenant_in(tx, id).await?.is_some())
    }

    pub(crate) fn backend(&self) -> &Backend {
        self.backend
    }

    pub(crate) async fn begin(&self, access: Access) -> Result<Tx, StoreError> {
        self.backend.begin(access, Scope::ControlPlane).await
    }

    pub async fn create_tenant(
        &self,
        new: NewTenant,
        origin: &Origin,
    ) -> Result<Tenant, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        let inserted = execute!(
            &mut tx,
            "INSERT INTO tenants (tenant_id, name, region, allowed_regions, isolation, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $6) ON CONFLICT (tenant_id) DO NOTHING",
            new.id.as_str(),
            new.name.as_str(),
            new.region.as_str(),
            regions_json(&new.allowed_regions)?,
            new.isolation.as_str(),
            now,
        )?;
        if inserted == 0 {
            return Err(StoreError::Conflict("tenant"));
        }
        let tenant = Tenant {
            id: new.id,
            name: new.name,
            region: new.region,
            allowed_regions: new.allowed_regions,
            isolation: new.isolation,
            status: TenantStatus::Active,
            created_at: now,
            updated_at: now,
        };
        audit::append(
            &mut tx,
            &tenant.id,
            origin,
            AuditDraft {
                action: "tenant.created",
                resource: format!("tenant/{}", tenant.id),
                outcome: Outcome::Success,
                details: json!({
                    "name": tenant.name,
                    "region": tenant.region,
                    "allowed_regions": tenant.allowed_regions,
                    "isolation": tenant.isolation,
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(tenant)
    }

    pub async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let tenant = tenant_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// Tenants ordered by id, `limit` at a time, starting after `after`.
    pub async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: u32,
    ) -> Result<Page<Tenant>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2"
        );
        let rows = fetch_all!(
            &mut tx,
            TenantRow,
            &sql,
            after.map_or("", TenantId::as_str),
            i64::from(limit) + 1,
        )?;
        tx.commit().await?;
        let mut items: Vec<Tenant> = convert_all(rows)?;
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|t| t.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_after })
    }

    pub async fn count_tenants(&self) -> Result<i64, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Count {
            n: i64,
        }
        let mut tx = self.begin(Access::Read).await?;
        let count = fetch_optional!(&mut tx, Count, "SELECT COUNT(*) AS n FROM tenants")?;
        tx.commit().await?;
        Ok(count.map_or(0, |c| c.n))
    }

    /// Applies `patch`; `None` if the tenant does not exist.
    pub async fn update_tenant(
        &self,
        id: &TenantId,
        patch: TenantPatch,
        origin: &Origin,
    ) -> Result<Option<Tenant>, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        let Some(before) = tenant_in(&mut tx, id).await? else {
            return Ok(None);
        };
        let mut after = before.clone();
        if let Some(name) = patch.name {
            after.name = name;
        }
        if let Some(status) = patch.status {
            after.status = status;
        }
        if let Some(regions) = patch.allowed_regions {
            after.allowed_regions = regions;
        }
        if let Some(isolation) = patch.isolation {
            after.isolation = isolation;
        }
        if after == before {
            tx.commit().await?;
            return Ok(Some(before));
        }
        after.updated_at = now_millis();
        execute!(
            &mut tx,
            "UPDATE tenants SET name = $2, status = $3, allowed_regions = $4, updated_at = $5, isolation = $6 \
             WHERE tenant_id = $1",
            id.as_str(),
            after.name.as_str(),
            after.status.as_str(),
            regions_json(&after.allowed_regions)?,
            after.updated_at,
            after.isolation.as_str(),
        )?;
        let action = match (before.status, after.status) {
            (TenantStatus::Active, TenantStatus::Suspended) => "tenant.suspended",
            (TenantStatus::Suspended, TenantStatus::Active) => "tenant.reactivated",
            _ if before.isolation != after.isolation => "tenant.isolation_changed",
            _ => "tenant.updated",
        };
        audit::append(
            &mut tx,
            id,
            origin,
            AuditDraft {
                action,
                resource: format!("tenant/{id}"),
                outcome: Outcome::Success,
                details: json!({
                    "before": {"name": before.name, "status": before.status, "allowed_regions": before.allowed_regions, "isolation": before.isolation.as_str()},
                    "after": {"name": after.name, "status": after.status, "allowed_regions": after.allowed_regions, "isolation": after.isolation.as_str()},
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(after))
    }

    /// Deletes a tenant and everything it owns except its audit trail, which records the
    /// deletion as its last event. `None` if the tenant does not exist.
    pub async fn delete_tenant(
        &self,
        id: &TenantId,
        origin: &Origin,
    ) -> Result<Option<DeletionReceipt>, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        if tenant_in(&mut tx, id).await?.is_none() {
            return Ok(None);
        }
        // Crypto-shredding: the data keys go first; without them the sealed credentials
        // (and any copy of them) are noise.
        let data_keys_destroyed = execute!(
            &mut tx,
            "DELETE FROM tenant_keys WHERE tenant_id = $1",
            id.as_str()
        )?;
        let credentials_destroyed = execute!(
            &mut tx,
            "DELETE FROM credentials WHERE tenant_id = $1",
            id.as_str()
        )?;
        let api_keys_deleted = execute!(
            &mut tx,
            "DELETE FROM api_keys WHERE tenant_id = $1",
            id.as_str()
        )?;
        let issuers_deleted = execute!(
            &mut tx,
            "DELETE FROM jwt_issuers WHERE tenant_id = $1",
            id.as_str()
        )?;
        execute!(
            &mut tx,
            "DELETE FROM tenants WHERE tenant_id = $1",
            id.as_str()
        )?;
        let deleted_at = now_millis();
        let event = audit::append(
            &mut tx,
            id,
            origin,
            AuditDraft {
                action: "tenant.deleted",
                resource: format!("tenant/{id}"),
                outcome: Outcome::Success,
                details: json!({
                    "data_keys_destroyed": data_keys_destroyed,
                    "credentials_destroyed": credentials_destroyed,
                    "api_keys_deleted": api_keys_deleted,
                    "issuers_deleted": issuers_deleted,
                }),
            },
        )
        .await?;
        tx.commit().await?;
        self.backend.scrub_freed_pages().await;
        Ok(Some(DeletionReceipt {
            tenant_id: id.clone(),
            deleted_at,
            data_keys_destroyed,
            credentials_destroyed,
            api_keys_deleted,
            issuers_deleted,
            audit_seq: event.seq,
        }))
    }

    /// Stores a new key's hash; `None` if the tenant does not exist.
    pub async fn create_api_key(
        &self,
        tenant: &TenantId,
        name: &str,
        role: Role,
        key: &GeneratedApiKey,
        origin: &Origin,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        if tenant_in(&mut tx, tenant).await?.is_none() {
            return Ok(None);
        }
        let info = ApiKeyInfo {
            tenant_id: tenant.clone(),
            id: key.id.clone(),
            name: name.to_owned(),
            role,
            display_prefix: key.display_prefix.clone(),
            created_at: now_millis(),
            revoked_at: None,
        };
        execute!(
            &mut tx,
            "INSERT INTO api_keys (tenant_id, key_id, name, role, secret_hash, display_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            tenant.as_str(),
            info.id.as_str(),
            info.name.as_str(),
            info.role.as_str(),
            key.secret_hash.as_str(),
            info.display_prefix.as_str(),
            info.created_at,
        )?;
        audit::append(
            &mut tx,
            tenant,
            origin,
            AuditDraft {
                action: "api_key.created",
                resource: format!("api_key/{}", info.id),
                outcome: Outcome::Success,
                details: json!({"name": info.name, "role": info.role, "prefix": info.display_prefix}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(info))
    }

    /// The tenant's keys, newest first; `None` if the tenant does not exist.
    pub async fn list_api_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Vec<ApiKeyInfo>>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        if tenant_in(&mut tx, tenant).await?.is_none() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at DESC, key_id"
        );
        let rows = fetch_all!(&mut tx, ApiKeyRow, &sql, tenant.as_str())?;
        tx.commit().await?;
        convert_all(rows).map(Some)
    }

    /// Revokes a key at once; `None` if the tenant or key does not exist. Revoking twice is
    /// not an error and records nothing the second time.
    pub async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        key: &ApiKeyId,
        origin: &Origin,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        let revoked = execute!(
            &mut tx,
            "UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL",
            tenant.as_str(),
            key.as_str(),
            now_millis(),
        )?;
        let sql =
            format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND key_id = $2");
        let Some(row) = fetch_optional!(&mut tx, ApiKeyRow, &sql, tenant.as_str(), key.as_str())?
        else {
            return Ok(None);
        };
        if revoked > 0 {
            audit::append(
                &mut tx,
                tenant,
                origin,
                AuditDraft {
                    action: "api_key.revoked",
                    resource: format!("api_key/{key}"),
                    outcome: Outcome::Success,
                    details: json!({}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        ApiKeyInfo::try_from(row).map(Some)
    }

    /// Binds a JWT issuer to a tenant. `Ok(None)` if the tenant does not exist; a conflict if
    /// the id is taken in this tenant, or if another tenant already bound the same issuer and
    /// audience (a token must never be able to mean two tenants).
    pub async fn create_issuer(
        &self,
        tenant: &TenantId,
        new: NewIssuer,
        origin: &Origin,
    ) -> Result<Option<IssuerRecord>, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        if tenant_in(&mut tx, tenant).await?.is_none() {
            return Ok(None);
        }
        let sql =
            format!("SELECT {ISSUER_COLUMNS} FROM jwt_issuers WHERE issuer = $1 AND audience = $2");
        let clash = fetch_optional!(
            &mut tx,
            IssuerRow,
            &sql,
            new.issuer.as_str(),
            new.audience.as_str()
        )?;
        if clash.is_some() {
            return Err(StoreError::Conflict(
                "an issuer binding with this issuer and audience",
            ));
        }
        let record = IssuerRecord {
            tenant_id: tenant.clone(),
            id: new.id,
            issuer: new.issuer,
            audience: new.audience,
            algorithms: new.algorithms,
            jwks: new.jwks,
            jwks_path: new.jwks_path,
            tenant_claim: new.tenant_claim,
            roles_claim: new.roles_claim,
            require_nbf: new.require_nbf,
            created_at: now_millis(),
        };
        let algorithms = serde_json::to_string(&record.algorithms)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let inserted = execute!(
            &mut tx,
            "INSERT INTO jwt_issuers (tenant_id, issuer_id, issuer, audience, algorithms, jwks, \
             jwks_path, tenant_claim, roles_claim, require_nbf, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (tenant_id, issuer_id) DO NOTHING",
            tenant.as_str(),
            record.id.as_str(),
            record.issuer.as_str(),
            record.audience.as_str(),
            algorithms,
            record.jwks.as_deref(),
            record.jwks_path.as_deref(),
            record.tenant_claim.as_str(),
            record.roles_claim.as_str(),
            record.require_nbf,
            record.created_at,
        )?;
        if inserted == 0 {
            return Err(StoreError::Conflict("issuer"));
        }
        audit::append(
            &mut tx,
            tenant,
            origin,
            AuditDraft {
                action: "issuer.bound",
                resource: format!("issuer/{}", record.id),
                outcome: Outcome::Success,
                details: json!({
                    "issuer": record.issuer,
                    "audience": record.audience,
                    "algorithms": record.algorithms,
                    "jwks_path": record.jwks_path,
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    pub async fn list_issuers(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Vec<IssuerRecord>>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        if tenant_in(&mut tx, tenant).await?.is_none() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {ISSUER_COLUMNS} FROM jwt_issuers WHERE tenant_id = $1 ORDER BY issuer_id"
        );
        let rows = fetch_all!(&mut tx, IssuerRow, &sql, tenant.as_str())?;
        tx.commit().await?;
        convert_all(rows).map(Some)
    }

    /// Unbinds an issuer; `false` if the tenant or issuer does not exist.
    pub async fn delete_issuer(
        &self,
        tenant: &TenantId,
        issuer: &IssuerId,
        origin: &Origin,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        let deleted = execute!(
            &mut tx,
            "DELETE FROM jwt_issuers WHERE tenant_id = $1 AND issuer_id = $2",
            tenant.as_str(),
            issuer.as_str(),
        )?;
        audit::commit_if_changed(
            tx,
            deleted,
            tenant,
            origin,
            AuditDraft {
                action: "issuer.unbound",
                resource: format!("issuer/{issuer}"),
                outcome: Outcome::Success,
                details: json!({}),
            },
        )
        .await
    }

    /// Finds a presented API key and its tenant, for authentication, which must look the key up
    /// before it knows the tenant. The key's id is random and generated by Bulkhead, so looking
    /// it up across tenants reveals nothing a caller chose.
    pub async fn api_key_for_auth(
        &self,
        key: &ApiKeyId,
    ) -> Result<Option<(StoredApiKey, Tenant)>, StoreError> {
        let mut tx = self.begin(Access::SingleRead).await?;
        let row = fetch_optional!(
            &mut tx,
            KeyForAuthRow,
            "SELECT k.key_id, k.role, k.secret_hash, k.revoked_at, t.tenant_id, t.name, t.region, t.allowed_regions, \
                    t.isolation, t.status, t.created_at, t.updated_at \
             FROM api_keys k JOIN tenants t ON t.tenant_id = k.tenant_id \
             WHERE k.key_id = $1",
            key.as_str(),
        )?;
        tx.commit().await?;
        row.map(TryInto::try_into).transpose()
    }

    /// The issuer bindings whose `iss` is `issuer`, across tenants, for authentication.
    pub async fn issuers_for_auth(&self, issuer: &str) -> Result<Vec<IssuerRecord>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!("SELECT {ISSUER_COLUMNS} FROM jwt_issuers WHERE issuer = $1");
        let rows = fetch_all!(&mut tx, IssuerRow, &sql, issuer)?;
        tx.commit().await?;
        convert_all(rows)
    }

    /// A tenant's audit events after `after`, oldest first.
    pub async fn audit_events(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.events.settle().await?;
        let mut tx = self.begin(Access::Read).await?;
        let events = audit::read(&mut tx, tenant, after, limit).await?;
        tx.commit().await?;
        Ok(events)
    }

    /// Data keys not wrapped by `kek_id`, across tenants, for re-wrapping after a KEK rotation.
    pub async fn data_keys_not_wrapped_by(
        &self,
        kek_id: &str,
    ) -> Result<Vec<(TenantId, DataKeyRecord)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            tenant_id: String,
            #[sqlx(flatten)]
            key: DataKeyRecord,
        }
        let mut tx = self.begin(Access::Read).await?;
        let rows = fetch_all!(
            &mut tx,
            Row,
            "SELECT tenant_id, kek_id, dek_version, wrapped_dek FROM tenant_keys WHERE kek_id <> $1 \
             ORDER BY tenant_id, dek_version",
            kek_id,
        )?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| {
                TenantId::try_from(r.tenant_id)
                    .map(|t| (t, r.key))
                    .map_err(|e| StoreError::Corrupt(format!("tenant id: {e}")))
            })
            .collect()
    }

    /// Replaces one wrapped data key with the same key wrapped by another KEK, unless it was
    /// re-wrapped meanwhile. Recorded in that tenant's audit chain.
    pub async fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        dek_version: i64,
        from_kek_id: &str,
        to_kek_id: &str,
        wrapped_dek: &[u8],
        origin: &Origin,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        let updated = execute!(
            &mut tx,
            "UPDATE tenant_keys SET kek_id = $4, wrapped_dek = $5, updated_at = $6 \
             WHERE tenant_id = $1 AND dek_version = $2 AND kek_id = $3",
            tenant.as_str(),
            dek_version,
            from_kek_id,
            to_kek_id,
            wrapped_dek,
            now_millis(),
        )?;
        if updated > 0 {
            audit::append(
                &mut tx,
                tenant,
                origin,
                AuditDraft {
                    action: "data_key.rewrapped",
                    resource: format!("tenant/{tenant}/data_key"),
                    outcome: Outcome::Success,
                    details: json!({"dek_version": dek_version, "from_kek_id": from_kek_id, "to_kek_id": to_kek_id}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(updated > 0)
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let row = fetch_optional!(
            &mut tx,
            SettingRow,
            "SELECT value FROM platform_settings WHERE key = $1",
            key
        )?;
        tx.commit().await?;
        Ok(row.map(|r| r.value))
    }

    /// Stores `value` under `key` unless one is there; returns the value now stored, so two
    /// replicas starting at once agree on the first writer's value.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        execute!(
            &mut tx,
            "INSERT INTO platform_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            key,
            value,
        )?;
        let row = fetch_optional!(
            &mut tx,
            SettingRow,
            "SELECT value FROM platform_settings WHERE key = $1",
            key
        )?
        .ok_or_else(|| StoreError::Corrupt(format!("setting {key} vanished")))?;
        tx.commit().await?;
        Ok(row.value)
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        execute!(
            &mut tx,
            "INSERT INTO platform_settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key,
            value,
        )?;
        tx.commit().await?;
        Ok(())
    }
}

fn regions_json(regions: &[bulkhead_core::RegionName]) -> Result<String, StoreError> {
    serde_json::to_string(regions).map_err(|e| StoreError::Corrupt(e.to_string()))
}

async fn tenant_in(tx: &mut Tx, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
    let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1");
    let row = fetch_optional!(tx, TenantRow, &sql, id.as_str())?;
    row.map(Tenant::try_from).transpose()
}
