//! Storage for the credential vault: each tenant's wrapped data key and its sealed secrets.
//! This module stores bytes; encryption and decryption live in bulkhead-vault.

use bulkhead_core::ConnectorName;
use bulkhead_core::audit::{AuditDraft, Origin, Outcome};
use bulkhead_core::timestamp::now_millis;
use serde_json::{Value, json};

use crate::backend::{Access, execute, fetch_all, fetch_optional};
use crate::remote::remote;
use crate::{StoreError, TenantStore, audit};

/// A tenant's data key, wrapped by a key-encryption key.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct DataKeyRecord {
    /// Which key-encryption key wrapped it.
    pub kek_id: String,
    /// Bumped each time the data key is replaced; sealed secrets name the version they use.
    pub dek_version: i64,
    pub wrapped_dek: Vec<u8>,
}

/// A sealed credential and its non-secret metadata.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CredentialRecord {
    pub connector: ConnectorName,
    pub version: i64,
    pub dek_version: i64,
    /// Nonce and ciphertext; opaque to the store.
    pub sealed: Vec<u8>,
    pub fields: Value,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    connector: String,
    version: i64,
    dek_version: i64,
    sealed: Vec<u8>,
    fields: String,
    created_at: i64,
    updated_at: i64,
}

const CREDENTIAL_COLUMNS: &str =
    "connector, version, dek_version, sealed, fields, created_at, updated_at";

impl TryFrom<CredentialRow> for CredentialRecord {
    type Error = StoreError;
    fn try_from(row: CredentialRow) -> Result<Self, StoreError> {
        Ok(CredentialRecord {
            connector: ConnectorName::try_from(row.connector)
                .map_err(|e| StoreError::Corrupt(format!("connector: {e}")))?,
            version: row.version,
            dek_version: row.dek_version,
            sealed: row.sealed,
            fields: serde_json::from_str(&row.fields)
                .map_err(|e| StoreError::Corrupt(format!("fields: {e}")))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// What a credential write is: a first version, or a replacement of a known version.
#[derive(Debug, Clone, Copy)]
pub enum CredentialWrite {
    Create,
    Replace { current_version: i64 },
}

impl TenantStore<'_> {
    pub(crate) fn origin(&self) -> Origin {
        Origin {
            actor: self.context().principal().to_string(),
            request_id: Some(self.context().request_id().clone()),
        }
    }

    /// Appends an event that goes with no stored change, such as an outbound call or a
    /// refused one, to the tenant's audit chain.
    ///
    /// Durable when this returns. Concurrent calls share one transaction (group commit; see
    /// `events.rs`), so recording every outbound call does not serialise callers on the
    /// database's writer.
    pub async fn record_event(&self, draft: AuditDraft) -> Result<(), StoreError> {
        remote!(self, record_event, crate::remote::DraftWire::from(&draft));
        self.events
            .append(self.context().tenant_id(), self.origin(), draft)
            .await
    }

    /// Every live version of the tenant's data key, newest (current) first.
    pub async fn data_keys(&self) -> Result<Vec<DataKeyRecord>, StoreError> {
        remote!(self, data_keys);
        let mut tx = self.begin(Access::Read).await?;
        let keys = fetch_all!(
            &mut tx,
            DataKeyRecord,
            "SELECT kek_id, dek_version, wrapped_dek FROM tenant_keys WHERE tenant_id = $1 \
             ORDER BY dek_version DESC",
            self.context().tenant_id().as_str(),
        )?;
        tx.commit().await?;
        Ok(keys)
    }

    /// Stores the tenant's first data key unless another request stored one first; returns
    /// the current key, so concurrent first writes agree on one.
    pub async fn create_data_key(
        &self,
        kek_id: &str,
        wrapped_dek: &[u8],
    ) -> Result<DataKeyRecord, StoreError> {
        self.add_data_key_version(1, kek_id, wrapped_dek, "data_key.created")
            .await?;
        self.data_keys()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("data key vanished".into()))
    }

    /// Adds data key version `current_version + 1`, which from then on seals new secrets.
    /// `false` if that version exists already (another rotation got there first).
    pub async fn start_data_key_rotation(
        &self,
        current_version: i64,
        kek_id: &str,
        wrapped_dek: &[u8],
    ) -> Result<bool, StoreError> {
        self.add_data_key_version(
            current_version + 1,
            kek_id,
            wrapped_dek,
            "data_key.rotation_started",
        )
        .await
    }

    async fn add_data_key_version(
        &self,
        dek_version: i64,
        kek_id: &str,
        wrapped_dek: &[u8],
        action: &'static str,
    ) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let inserted = execute!(
            &mut tx,
            "INSERT INTO tenant_keys (tenant_id, dek_version, kek_id, wrapped_dek, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (tenant_id, dek_version) DO NOTHING",
            tenant.as_str(),
            dek_version,
            kek_id,
            wrapped_dek,
            now_millis(),
        )?;
        if inserted > 0 {
            audit::append(
                &mut tx,
                tenant,
                &self.origin(),
                AuditDraft {
                    action,
                    resource: format!("tenant/{tenant}/data_key"),
                    outcome: Outcome::Success,
                    details: json!({"kek_id": kek_id, "dek_version": dek_version}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(inserted > 0)
    }

    /// Credentials still sealed under a data key older than `dek_version`.
    pub async fn credentials_sealed_before(
        &self,
        dek_version: i64,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = $1 AND dek_version < $2 ORDER BY connector"
        );
        let rows = fetch_all!(
            &mut tx,
            CredentialRow,
            &sql,
            self.context().tenant_id().as_str(),
            dek_version
        )?;
        tx.commit().await?;
        rows.into_iter().map(CredentialRecord::try_from).collect()
    }

    /// Replaces a credential's sealed bytes with the same secret sealed under another data key
    /// version, unless it changed meanwhile; `false` then (a newer write used the current key).
    pub async fn reseal_credential(
        &self,
        connector: &ConnectorName,
        version: i64,
        from_dek_version: i64,
        to_dek_version: i64,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let updated = execute!(
            &mut tx,
            "UPDATE credentials SET dek_version = $5, sealed = $6 \
             WHERE tenant_id = $1 AND connector = $2 AND version = $3 AND dek_version = $4",
            tenant.as_str(),
            connector.as_str(),
            version,
            from_dek_version,
            to_dek_version,
            sealed,
        )?;
        if updated > 0 {
            audit::append(
                &mut tx,
                tenant,
                &self.origin(),
                AuditDraft {
                    action: "credential.resealed",
                    resource: format!("credential/{connector}"),
                    outcome: Outcome::Success,
                    details: json!({"version": version, "from_dek_version": from_dek_version, "to_dek_version": to_dek_version}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(updated > 0)
    }

    /// Destroys data key versions older than `dek_version` that no credential uses any more.
    pub async fn retire_data_keys_before(&self, dek_version: i64) -> Result<u64, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let retired = execute!(
            &mut tx,
            "DELETE FROM tenant_keys WHERE tenant_id = $1 AND dek_version < $2 AND NOT EXISTS \
             (SELECT 1 FROM credentials c WHERE c.tenant_id = tenant_keys.tenant_id \
              AND c.dek_version = tenant_keys.dek_version)",
            tenant.as_str(),
            dek_version,
        )?;
        if retired > 0 {
            audit::append(
                &mut tx,
                tenant,
                &self.origin(),
                AuditDraft {
                    action: "data_key.retired",
                    resource: format!("tenant/{tenant}/data_key"),
                    outcome: Outcome::Success,
                    details: json!({"versions_destroyed": retired, "current_dek_version": dek_version}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(retired)
    }

    pub async fn credential(
        &self,
        connector: &ConnectorName,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        remote!(self, credential, connector);
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = $1 AND connector = $2"
        );
        let row = fetch_optional!(
            &mut tx,
            CredentialRow,
            &sql,
            self.context().tenant_id().as_str(),
            connector.as_str(),
        )?;
        tx.commit().await?;
        row.map(CredentialRecord::try_from).transpose()
    }

    /// A credential together with the data key version that sealed it, in one read: what
    /// revealing a secret needs. `None` if the tenant has no such credential; the key is
    /// `None` if its version no longer exists (a rotation just retired it).
    pub async fn credential_with_key(
        &self,
        connector: &ConnectorName,
    ) -> Result<Option<(CredentialRecord, Option<DataKeyRecord>)>, StoreError> {
        remote!(self, credential_with_key, connector);
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            credential: CredentialRow,
            kek_id: Option<String>,
            wrapped_dek: Option<Vec<u8>>,
        }
        let mut tx = self.begin(Access::SingleRead).await?;
        let row = fetch_optional!(
            &mut tx,
            Row,
            "SELECT c.connector, c.version, c.dek_version, c.sealed, c.fields, c.created_at, \
                    c.updated_at, k.kek_id, k.wrapped_dek \
             FROM credentials c LEFT JOIN tenant_keys k \
               ON k.tenant_id = c.tenant_id AND k.dek_version = c.dek_version \
             WHERE c.tenant_id = $1 AND c.connector = $2",
            self.context().tenant_id().as_str(),
            connector.as_str(),
        )?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        let credential = CredentialRecord::try_from(row.credential)?;
        let key = match (row.kek_id, row.wrapped_dek) {
            (Some(kek_id), Some(wrapped_dek)) => Some(DataKeyRecord {
                kek_id,
                dek_version: credential.dek_version,
                wrapped_dek,
            }),
            _ => None,
        };
        Ok(Some((credential, key)))
    }

    pub async fn credentials(&self) -> Result<Vec<CredentialRecord>, StoreError> {
        let mut tx = self.begin(Access::Read).await?;
        let sql = format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = $1 ORDER BY connector"
        );
        let rows = fetch_all!(
            &mut tx,
            CredentialRow,
            &sql,
            self.context().tenant_id().as_str()
        )?;
        tx.commit().await?;
        rows.into_iter().map(CredentialRecord::try_from).collect()
    }

    /// Writes a sealed credential as `new_version`, only if the stored version is still what
    /// the caller sealed against (`write`); `None` if another writer got there first, so the
    /// caller reseals (the version is part of the ciphertext's associated data) and retries.
    pub async fn put_credential(
        &self,
        connector: &ConnectorName,
        write: CredentialWrite,
        new_version: i64,
        dek_version: i64,
        sealed: &[u8],
        fields: &Value,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        let fields_text = fields.to_string();
        let written = match write {
            CredentialWrite::Create => execute!(
                &mut tx,
                "INSERT INTO credentials (tenant_id, connector, version, dek_version, sealed, fields, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (tenant_id, connector) DO NOTHING",
                tenant.as_str(),
                connector.as_str(),
                new_version,
                dek_version,
                sealed,
                fields_text.as_str(),
                now,
            )?,
            CredentialWrite::Replace { current_version } => execute!(
                &mut tx,
                "UPDATE credentials SET version = $3, dek_version = $4, sealed = $5, fields = $6, updated_at = $7 \
                 WHERE tenant_id = $1 AND connector = $2 AND version = $8",
                tenant.as_str(),
                connector.as_str(),
                new_version,
                dek_version,
                sealed,
                fields_text.as_str(),
                now,
                current_version,
            )?,
        };
        if written == 0 {
            return Ok(None);
        }
        let field_names: Vec<&String> = fields
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "credential.written",
                resource: format!("credential/{connector}"),
                outcome: Outcome::Success,
                details: json!({"version": new_version, "fields": field_names}),
            },
        )
        .await?;
        let sql = format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = $1 AND connector = $2"
        );
        let row = fetch_optional!(
            &mut tx,
            CredentialRow,
            &sql,
            tenant.as_str(),
            connector.as_str()
        )?
        .ok_or_else(|| StoreError::Corrupt("credential vanished".into()))?;
        tx.commit().await?;
        CredentialRecord::try_from(row).map(Some)
    }

    /// Deletes a credential; `false` if the tenant has none under that name.
    pub async fn delete_credential(&self, connector: &ConnectorName) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let deleted = execute!(
            &mut tx,
            "DELETE FROM credentials WHERE tenant_id = $1 AND connector = $2",
            tenant.as_str(),
            connector.as_str(),
        )?;
        audit::commit_if_changed(
            tx,
            deleted,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "credential.deleted",
                resource: format!("credential/{connector}"),
                outcome: Outcome::Success,
                details: json!({}),
            },
        )
        .await
    }
}
