//! The credential vault: each tenant's secrets sealed under that tenant's own data key.
//!
//! **Architecture Invariant:** a secret is sealed with associated data that names its tenant,
//! connector, version and data-key version; a sealed value copied to any other row fails to
//! open. A data key is wrapped with associated data naming its tenant.
//!
//! **Architecture Invariant:** the vault is reached through a [`TenantStore`], so it can only
//! read and write the secrets of the tenant whose context made that handle. A revealed
//! [`Credential`] carries its tenant id, for the egress layer to check once more.
//!
//! Secrets live in memory as `secrecy::SecretString` (redacted `Debug`, no serde); keys are
//! zeroed on drop.

mod envelope;
mod keys;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bulkhead_core::{ConnectorName, TenantId};
use bulkhead_store::{CredentialRecord, CredentialWrite, StoreError, TenantStore};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub use keys::{BoxFuture, DataKey, KeyProvider, LocalKeyProvider, WrappedKey};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encryption failed")]
    Encrypt,
    #[error("a sealed value does not open: it was altered, moved, or its key is gone")]
    Decrypt,
    #[error(
        "the data key was wrapped by key-encryption key {0}, which this provider does not hold"
    )]
    UnknownKek(String),
    #[error("the master key is invalid: {0}")]
    BadMasterKey(String),
    #[error("cannot use the key file {0}")]
    KeyFile(String),
    #[error("the credential kept changing while it was being written; try again")]
    Contended,
    #[error("credential fields must be a JSON object of non-secret metadata")]
    FieldsNotObject,
}

/// A decrypted credential. The tenant id travels with the secret so the egress layer can
/// refuse to use it for any other tenant.
#[derive(Debug)]
pub struct Credential {
    pub tenant_id: TenantId,
    pub connector: ConnectorName,
    pub version: i64,
    pub secret: SecretString,
    pub fields: Value,
}

/// Seals and opens tenant secrets. Cheap to clone; shares one cache of unwrapped data keys.
#[derive(Clone)]
pub struct Vault {
    provider: Arc<dyn KeyProvider>,
    data_keys: Arc<Mutex<HashMap<TenantId, CachedKey>>>,
}

#[derive(Clone)]
struct CachedKey {
    dek_version: i64,
    wrapped: Vec<u8>,
    key: Arc<DataKey>,
}

fn secret_aad(
    tenant: &TenantId,
    connector: &ConnectorName,
    version: i64,
    dek_version: i64,
) -> Vec<u8> {
    format!("bulkhead/secret/v1\0{tenant}\0{connector}\0{version}\0{dek_version}").into_bytes()
}

const WRITE_ATTEMPTS: usize = 5;

impl Vault {
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self {
            provider,
            data_keys: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn kek_id(&self) -> &str {
        self.provider.current_kek_id()
    }

    /// Forgets every cached data key, so the next use unwraps from the store again.
    pub fn clear_cache(&self) {
        if let Ok(mut cache) = self.data_keys.lock() {
            cache.clear();
        }
    }

    /// The tenant's data key and its version, creating and storing one if `create`.
    async fn data_key(
        &self,
        store: &TenantStore<'_>,
        create: bool,
    ) -> Result<Option<(i64, Arc<DataKey>)>, VaultError> {
        let tenant = store.context().tenant_id();
        let record = match store.data_key().await? {
            Some(record) => record,
            None if create => {
                let fresh = DataKey::generate();
                let wrapped = self.provider.wrap(tenant, &fresh).await?;
                store
                    .create_data_key(&wrapped.kek_id, &wrapped.bytes)
                    .await?
            }
            None => return Ok(None),
        };
        // The stored record is read on every use, so a rotated or destroyed key takes effect
        // at once; only the unwrap (a KMS call for remote providers) is cached, keyed by the
        // exact wrapped bytes.
        let cached = self
            .data_keys
            .lock()
            .ok()
            .and_then(|cache| cache.get(tenant).cloned())
            .filter(|c| c.dek_version == record.dek_version && c.wrapped == record.wrapped_dek);
        if let Some(cached) = cached {
            return Ok(Some((cached.dek_version, cached.key)));
        }
        let key = Arc::new(
            self.provider
                .unwrap(tenant, &record.kek_id, &record.wrapped_dek)
                .await?,
        );
        if let Ok(mut cache) = self.data_keys.lock() {
            cache.insert(
                tenant.clone(),
                CachedKey {
                    dek_version: record.dek_version,
                    wrapped: record.wrapped_dek.clone(),
                    key: key.clone(),
                },
            );
        }
        Ok(Some((record.dek_version, key)))
    }

    /// Seals and stores `secret` as the tenant's credential for `connector`, as a new version.
    pub async fn put(
        &self,
        store: &TenantStore<'_>,
        connector: &ConnectorName,
        secret: &SecretString,
        fields: Value,
    ) -> Result<CredentialRecord, VaultError> {
        if !fields.is_object() {
            return Err(VaultError::FieldsNotObject);
        }
        let tenant = store.context().tenant_id();
        let Some((dek_version, key)) = self.data_key(store, true).await? else {
            return Err(VaultError::Decrypt);
        };
        for _ in 0..WRITE_ATTEMPTS {
            let (write, version) = match store.credential(connector).await? {
                None => (CredentialWrite::Create, 1),
                Some(current) => (
                    CredentialWrite::Replace {
                        current_version: current.version,
                    },
                    current.version + 1,
                ),
            };
            let aad = secret_aad(tenant, connector, version, dek_version);
            let sealed = envelope::seal(key.bytes(), &aad, secret.expose_secret().as_bytes())?;
            if let Some(record) = store
                .put_credential(connector, write, version, dek_version, &sealed, &fields)
                .await?
            {
                return Ok(record);
            }
        }
        Err(VaultError::Contended)
    }

    /// Opens the tenant's credential for `connector`; `None` if it has none.
    pub async fn reveal(
        &self,
        store: &TenantStore<'_>,
        connector: &ConnectorName,
    ) -> Result<Option<Credential>, VaultError> {
        let Some(record) = store.credential(connector).await? else {
            return Ok(None);
        };
        let tenant = store.context().tenant_id();
        let Some((dek_version, key)) = self.data_key(store, false).await? else {
            return Err(VaultError::Decrypt);
        };
        if dek_version != record.dek_version {
            return Err(VaultError::Decrypt);
        }
        let aad = secret_aad(tenant, connector, record.version, record.dek_version);
        let plain = envelope::open(key.bytes(), &aad, &record.sealed)?;
        let secret = String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Decrypt)?;
        Ok(Some(Credential {
            tenant_id: tenant.clone(),
            connector: connector.clone(),
            version: record.version,
            secret: SecretString::from(secret),
            fields: record.fields,
        }))
    }
}
