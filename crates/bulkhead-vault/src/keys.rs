//! Data keys and key-encryption keys.
//!
//! Each tenant has a 256-bit data key (DEK) that seals its secrets; the DEK is stored wrapped
//! by a key-encryption key (KEK) held by a [`KeyProvider`]. The `local` provider keeps the KEK
//! in a file (or `BULKHEAD_MASTER_KEY`). A KMS or Vault/OpenBao Transit provider implements the
//! same two calls, `wrap` and `unwrap`, by sending the DEK to the remote service (AWS KMS
//! `Encrypt`/`Decrypt`, Transit `encrypt/<key>`/`decrypt/<key>` with the tenant id as context),
//! so the KEK never enters this process.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bulkhead_core::TenantId;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{VaultError, envelope};

/// A tenant's data key. Never printed, zeroed on drop.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Self(key)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, VaultError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| VaultError::Decrypt)?;
        Ok(Self(Zeroizing::new(array)))
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([elided])")
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A data key as stored: the wrapped bytes and which KEK wrapped them.
pub struct WrappedKey {
    pub kek_id: String,
    pub bytes: Vec<u8>,
}

/// Wraps and unwraps tenant data keys. The tenant id is bound into the wrapping, so a wrapped
/// key copied to another tenant does not unwrap.
pub trait KeyProvider: Send + Sync {
    /// The KEK new data keys are wrapped with.
    fn current_kek_id(&self) -> &str;
    fn wrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        dek: &'a DataKey,
    ) -> BoxFuture<'a, Result<WrappedKey, VaultError>>;
    fn unwrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        kek_id: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<DataKey, VaultError>>;
}

/// The KEK in a local file or an environment variable.
pub struct LocalKeyProvider {
    kek_id: String,
    kek: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalKeyProvider({})", self.kek_id)
    }
}

impl LocalKeyProvider {
    /// A KEK given as base64 of 32 bytes, such as `BULKHEAD_MASTER_KEY`.
    pub fn from_base64(encoded: &SecretString) -> Result<Self, VaultError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(encoded.expose_secret().trim())
                .map_err(|_| VaultError::BadMasterKey("not base64".into()))?,
        );
        let kek: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::BadMasterKey(format!("{} bytes, expected 32", bytes.len())))?;
        Ok(Self::from_bytes(Zeroizing::new(kek)))
    }

    /// Reads the KEK file, creating it (mode 0600, 32 random bytes as base64) if missing.
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&SecretString::from(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut kek = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(kek.as_mut());
                let encoded = Zeroizing::new(STANDARD.encode(kek.as_ref()));
                write_private(path, encoded.as_bytes())?;
                tracing::info!(path = %path.display(), "generated a new key-encryption key");
                Ok(Self::from_bytes(kek))
            }
            Err(error) => Err(VaultError::KeyFile(format!("{}: {error}", path.display()))),
        }
    }

    fn from_bytes(kek: Zeroizing<[u8; 32]>) -> Self {
        // The id names the key without revealing it, so rotation can tell keys apart.
        let digest = Sha256::new()
            .chain_update(b"bulkhead kek id\0")
            .chain_update(kek.as_ref())
            .finalize();
        Self {
            kek_id: format!("local-{}", &hex::encode(digest)[..16]),
            kek,
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| VaultError::KeyFile(format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| VaultError::KeyFile(format!("{}: {e}", path.display())))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    std::fs::write(path, bytes).map_err(|e| VaultError::KeyFile(format!("{}: {e}", path.display())))
}

fn wrap_aad(tenant: &TenantId, kek_id: &str) -> Vec<u8> {
    format!("bulkhead/dek/v1\0{tenant}\0{kek_id}").into_bytes()
}

impl KeyProvider for LocalKeyProvider {
    fn current_kek_id(&self) -> &str {
        &self.kek_id
    }

    fn wrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        dek: &'a DataKey,
    ) -> BoxFuture<'a, Result<WrappedKey, VaultError>> {
        Box::pin(async move {
            let bytes = envelope::seal(&self.kek, &wrap_aad(tenant, &self.kek_id), dek.bytes())?;
            Ok(WrappedKey {
                kek_id: self.kek_id.clone(),
                bytes,
            })
        })
    }

    fn unwrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        kek_id: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<DataKey, VaultError>> {
        Box::pin(async move {
            if kek_id != self.kek_id {
                return Err(VaultError::UnknownKek(kek_id.to_owned()));
            }
            let plain = envelope::open(&self.kek, &wrap_aad(tenant, kek_id), wrapped)?;
            DataKey::from_slice(&plain)
        })
    }
}
