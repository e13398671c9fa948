//! Data keys handed to a dedicated worker process.
//!
//! A dedicated tenant's agent work runs in a process of its own, which must be able to open
//! that tenant's secrets and nothing else. The control plane unwraps the tenant's data keys
//! with its KEK ([`Vault::hand_over`]) and sends them over the worker channel; the worker's
//! vault uses a [`HandedKeyProvider`], which unwraps only those exact wrapped keys of that one
//! tenant and cannot wrap at all. The worker never holds a key-encryption key, so another
//! tenant's wrapped data key read from anywhere stays sealed to it.
//!
//! This is the one place a key leaves its process: [`HandedKeyWire`] is the serialised form,
//! written only to the worker's private socket and zeroed on drop.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bulkhead_core::TenantId;
use bulkhead_store::TenantStore;
use zeroize::{Zeroize, Zeroizing};

use crate::keys::{BoxFuture, DataKey, KeyProvider, WrappedKey};
use crate::{Vault, VaultError};

/// One of a tenant's data keys, unwrapped, with the stored form it came from.
pub struct HandedKey {
    pub dek_version: i64,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    key: DataKey,
}

impl std::fmt::Debug for HandedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HandedKey(v{}, [elided])", self.dek_version)
    }
}

/// A handed key as it crosses the worker channel (base64 fields).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct HandedKeyWire {
    pub dek_version: i64,
    pub kek_id: String,
    pub wrapped: String,
    pub key: String,
}

impl Drop for HandedKeyWire {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for HandedKeyWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HandedKeyWire(v{}, [elided])", self.dek_version)
    }
}

impl HandedKey {
    pub fn to_wire(&self) -> HandedKeyWire {
        HandedKeyWire {
            dek_version: self.dek_version,
            kek_id: self.kek_id.clone(),
            wrapped: STANDARD.encode(&self.wrapped),
            key: STANDARD.encode(self.key.bytes()),
        }
    }

    pub fn from_wire(wire: &HandedKeyWire) -> Result<Self, VaultError> {
        let wrapped = STANDARD
            .decode(&wire.wrapped)
            .map_err(|_| VaultError::Decrypt)?;
        let key = Zeroizing::new(
            STANDARD
                .decode(&wire.key)
                .map_err(|_| VaultError::Decrypt)?,
        );
        Ok(Self {
            dek_version: wire.dek_version,
            kek_id: wire.kek_id.clone(),
            wrapped,
            key: DataKey::from_slice(&key)?,
        })
    }
}

impl Vault {
    /// Every data key of the store's tenant, unwrapped, for that tenant's dedicated worker.
    /// Rotations retire old versions; a worker is restarted to receive new ones.
    pub async fn hand_over(&self, store: &TenantStore<'_>) -> Result<Vec<HandedKey>, VaultError> {
        let tenant = store.context().tenant_id();
        let mut keys = Vec::new();
        for record in store.data_keys().await? {
            let key = self
                .provider
                .unwrap(tenant, &record.kek_id, &record.wrapped_dek)
                .await?;
            keys.push(HandedKey {
                dek_version: record.dek_version,
                kek_id: record.kek_id,
                wrapped: record.wrapped_dek,
                key,
            });
        }
        Ok(keys)
    }
}

/// The key provider of a dedicated worker: the data keys it was handed, for its one tenant.
pub struct HandedKeyProvider {
    tenant: TenantId,
    keys: Vec<HandedKey>,
}

impl HandedKeyProvider {
    pub fn new(tenant: TenantId, keys: Vec<HandedKey>) -> Self {
        Self { tenant, keys }
    }

    /// The versions held, newest first as stored; for the worker's start report.
    pub fn versions(&self) -> Vec<i64> {
        self.keys.iter().map(|k| k.dek_version).collect()
    }
}

impl KeyProvider for HandedKeyProvider {
    fn current_kek_id(&self) -> String {
        "none (dedicated worker)".to_owned()
    }

    fn wrap<'a>(
        &'a self,
        _tenant: &'a TenantId,
        _dek: &'a DataKey,
    ) -> BoxFuture<'a, Result<WrappedKey, VaultError>> {
        Box::pin(async { Err(VaultError::NoKek) })
    }

    fn unwrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        kek_id: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<DataKey, VaultError>> {
        Box::pin(async move {
            if tenant != &self.tenant {
                return Err(VaultError::Decrypt);
            }
            self.keys
                .iter()
                .find(|k| k.kek_id == kek_id && k.wrapped == wrapped)
                .map(|k| k.key.duplicate())
                .ok_or(VaultError::Decrypt)
        })
    }
}
