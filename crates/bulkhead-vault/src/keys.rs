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

    pub(crate) fn duplicate(&self) -> Self {
        Self(Zeroizing::new(*self.0))
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Result<Self, VaultError> {
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
    fn current_kek_id(&self) -> String;
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

/// KEKs held locally: the current one (which wraps new data keys) and previous ones (kept so
/// keys wrapped before a rotation still unwrap until they are re-wrapped).
///
/// From a key file, one base64 key per line, current first; the file is re-read when a
/// wrapped key names an unknown KEK and before wrapping, so a `bulkhead keys rotate-kek` run
/// beside a serving process takes effect there without a restart. From the environment,
/// `BULKHEAD_MASTER_KEY` (current) and `BULKHEAD_PREVIOUS_MASTER_KEYS` (comma-separated).
pub struct LocalKeyProvider {
    file: Option<std::path::PathBuf>,
    ring: std::sync::RwLock<KeyRing>,
}

struct KeyRing {
    /// `(kek_id, kek)`, current first.
    keys: Vec<(String, Zeroizing<[u8; 32]>)>,
}

impl KeyRing {
    fn current(&self) -> Result<&(String, Zeroizing<[u8; 32]>), VaultError> {
        self.keys
            .first()
            .ok_or_else(|| VaultError::BadMasterKey("no key".into()))
    }

    fn find(&self, kek_id: &str) -> Option<&Zeroizing<[u8; 32]>> {
        self.keys
            .iter()
            .find(|(id, _)| id == kek_id)
            .map(|(_, key)| key)
    }

    fn parse(text: &str) -> Result<Self, VaultError> {
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| decode_kek(line).map(|key| (kek_id(&key), key)))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(VaultError::BadMasterKey("the key file is empty".into()));
        }
        Ok(Self { keys })
    }

    fn render(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::new());
        for (_, key) in &self.keys {
            text.push_str(&STANDARD.encode(key.as_ref()));
            text.push('\n');
        }
        text
    }
}

fn decode_kek(encoded: &str) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(encoded.trim())
            .map_err(|_| VaultError::BadMasterKey("not base64".into()))?,
    );
    let kek: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| VaultError::BadMasterKey(format!("{} bytes, expected 32", bytes.len())))?;
    Ok(Zeroizing::new(kek))
}

/// Names a key without revealing it, so rotation can tell keys apart.
fn kek_id(kek: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"bulkhead kek id\0")
        .chain_update(kek)
        .finalize();
    format!("local-{}", bulkhead_core::ids::lower_hex(&digest[..8]))
}

fn random_kek() -> Zeroizing<[u8; 32]> {
    let mut kek = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(kek.as_mut());
    kek
}

impl std::fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalKeyProvider({:?})", self.file)
    }
}

impl LocalKeyProvider {
    /// The current KEK as base64 of 32 bytes, such as `BULKHEAD_MASTER_KEY`.
    pub fn from_base64(encoded: &SecretString) -> Result<Self, VaultError> {
        Self::from_keys(encoded, &[])
    }

    /// The current KEK and the previous ones still needed to unwrap older data keys.
    pub fn from_keys(
        current: &SecretString,
        previous: &[SecretString],
    ) -> Result<Self, VaultError> {
        let keys = std::iter::once(current)
            .chain(previous)
            .map(|k| decode_kek(k.expose_secret()).map(|key| (kek_id(&key), key)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            file: None,
            ring: std::sync::RwLock::new(KeyRing { keys }),
        })
    }

    /// Reads the key file, creating it (mode 0600, one random key) if missing.
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        let ring = match std::fs::read_to_string(path) {
            Ok(text) => KeyRing::parse(&Zeroizing::new(text))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let kek = random_kek();
                let ring = KeyRing {
                    keys: vec![(kek_id(&kek), kek)],
                };
                write_private(path, ring.render().as_bytes(), false)?;
                tracing::info!(path = %path.display(), "generated a new key-encryption key");
                ring
            }
            Err(error) => return Err(VaultError::KeyFile(format!("{}: {error}", path.display()))),
        };
        Ok(Self {
            file: Some(path.to_path_buf()),
            ring: std::sync::RwLock::new(ring),
        })
    }

    /// Makes a fresh KEK current, keeping the others for unwrapping, and saves the key file
    /// (written to a temporary file and renamed, so a crash leaves the old file or the new
    /// one, never half of one). Returns the new KEK's id. Only for file-backed providers:
    /// environment keys are rotated by setting new variables.
    pub fn add_current_key(&self) -> Result<String, VaultError> {
        let Some(path) = &self.file else {
            return Err(VaultError::KeyFile(
                "the KEK comes from BULKHEAD_MASTER_KEY: set a new one and list the old one in BULKHEAD_PREVIOUS_MASTER_KEYS".into(),
            ));
        };
        self.reload()?;
        let kek = random_kek();
        let id = kek_id(&kek);
        let mut ring = self
            .ring
            .write()
            .map_err(|_| VaultError::KeyFile("key ring lock poisoned".into()))?;
        ring.keys.insert(0, (id.clone(), kek));
        write_private(path, ring.render().as_bytes(), true)?;
        Ok(id)
    }

    /// Re-reads the key file, if there is one.
    fn reload(&self) -> Result<(), VaultError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| VaultError::KeyFile(format!("{}: {e}", path.display())))?,
        );
        let fresh = KeyRing::parse(&text)?;
        let mut ring = self
            .ring
            .write()
            .map_err(|_| VaultError::KeyFile("key ring lock poisoned".into()))?;
        *ring = fresh;
        Ok(())
    }

    fn with_ring<T>(
        &self,
        f: impl FnOnce(&KeyRing) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let ring = self
            .ring
            .read()
            .map_err(|_| VaultError::KeyFile("key ring lock poisoned".into()))?;
        f(&ring)
    }
}

/// Writes `bytes` to `path` with mode 0600. With `replace`, writes a sibling temporary file
/// and renames it over `path`, which is atomic on one file system.
#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8], replace: bool) -> Result<(), VaultError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| VaultError::KeyFile(format!("{}: {e}", path.display()));
    let target = if replace {
        path.with_extension("key.new")
    } else {
        path.to_path_buf()
    };
    if replace {
        let _ = std::fs::remove_file(&target);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(fail)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    if replace {
        std::fs::rename(&target, path).map_err(fail)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8], _replace: bool) -> Result<(), VaultError> {
    std::fs::write(path, bytes).map_err(|e| VaultError::KeyFile(format!("{}: {e}", path.display())))
}

fn wrap_aad(tenant: &TenantId, kek_id: &str) -> Vec<u8> {
    format!("bulkhead/dek/v1\0{tenant}\0{kek_id}").into_bytes()
}

impl KeyProvider for LocalKeyProvider {
    fn current_kek_id(&self) -> String {
        // Another process may have rotated the key file; a failed re-read keeps what we have.
        if let Err(error) = self.reload() {
            tracing::warn!(%error, "cannot re-read the key file");
        }
        self.with_ring(|ring| Ok(ring.current()?.0.clone()))
            .unwrap_or_default()
    }

    fn wrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        dek: &'a DataKey,
    ) -> BoxFuture<'a, Result<WrappedKey, VaultError>> {
        Box::pin(async move {
            // Pick up a rotation done by another process before choosing the KEK.
            self.reload()?;
            self.with_ring(|ring| {
                let (kek_id, kek) = ring.current()?;
                let bytes = envelope::seal(kek, &wrap_aad(tenant, kek_id), dek.bytes())?;
                Ok(WrappedKey {
                    kek_id: kek_id.clone(),
                    bytes,
                })
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
            if self.with_ring(|ring| Ok(ring.find(kek_id).is_none()))? {
                self.reload()?;
            }
            self.with_ring(|ring| {
                let kek = ring
                    .find(kek_id)
                    .ok_or_else(|| VaultError::UnknownKek(kek_id.to_owned()))?;
                let plain = envelope::open(kek, &wrap_aad(tenant, kek_id), wrapped)?;
                DataKey::from_slice(&plain)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    /// Stored wrapped keys name their KEK by this id, so its form may never change.
    #[test]
    fn a_kek_id_is_pinned() {
        assert_eq!(super::kek_id(&[0; 32]), "local-98f948b8a327ad5d");
    }
}
