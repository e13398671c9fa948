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
mod handed;
mod keys;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bulkhead_core::audit::Origin;
use bulkhead_core::ttl_cache::{Lookup, Ticket, TtlCache};
use bulkhead_core::{ConnectorName, TenantId};
use bulkhead_store::{
    AdminStore, CredentialRecord, CredentialWrite, DataKeyRecord, StoreError, TenantStore,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub use handed::{HandedKey, HandedKeyProvider, HandedKeyWire};
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
    /// A dedicated worker holds its tenant's data keys, not the key-encryption key: it can
    /// open what exists but not create a tenant's first data key.
    #[error("this process holds no key-encryption key; write credentials through the API")]
    NoKek,
}

/// What a data-key rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DekRotation {
    /// Whether it finished a rotation an earlier run had started.
    pub resumed: bool,
    pub from_dek_version: i64,
    pub to_dek_version: i64,
    pub resealed: u64,
    /// Old key versions destroyed at the end.
    pub retired: u64,
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

/// A remembered credential read past half its life, which one caller of
/// [`Vault::reveal_deferring_renewal`] is to read again with [`Vault::renew`].
#[must_use = "nobody else renews this entry before it expires"]
pub struct Renewal {
    connector: ConnectorName,
    ticket: Ticket,
}

/// Seals and opens tenant secrets. Cheap to clone; shares one cache of unwrapped data keys.
#[derive(Clone)]
pub struct Vault {
    pub(crate) provider: Arc<dyn KeyProvider>,
    data_keys: Arc<Mutex<HashMap<(TenantId, i64), CachedKey>>>,
    sealed: Arc<SealedCache>,
}

/// Sealed credentials as last read from the store (`with_credential_cache`): a read per
/// outbound call was one of the two database hops on the gateway's path. They stay sealed
/// here and are opened on every use. Shared, so that a hit costs no copy of the record.
type SealedCache = TtlCache<(TenantId, ConnectorName), Option<Arc<SealedCredential>>>;

/// A sealed credential and the wrapped data key that opens it (none if that key is gone).
type SealedCredential = (CredentialRecord, Option<DataKeyRecord>);

/// Forgets what `cache` keeps for `tenant`, or for every tenant with `None`.
fn forget_sealed(cache: &SealedCache, tenant: Option<&TenantId>) {
    cache.forget(|(t, _)| tenant.is_none_or(|tenant| t == tenant));
}

#[derive(Clone)]
struct CachedKey {
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
            sealed: Arc::default(),
        }
    }

    /// Keeps sealed credentials read from the store for `ttl` (zero: not at all). Changes
    /// this vault makes are seen at once; another process's, up to `ttl` later.
    pub fn with_credential_cache(mut self, ttl: std::time::Duration) -> Self {
        self.sealed = Arc::new(SealedCache::new(ttl));
        self
    }

    /// Forgets the sealed credentials kept for `tenant` (all tenants' with `None`): after
    /// a credential or the tenant itself was changed or deleted outside the vault.
    pub fn forget_credentials(&self, tenant: Option<&TenantId>) {
        forget_sealed(&self.sealed, tenant);
    }

    pub fn kek_id(&self) -> String {
        self.provider.current_kek_id()
    }

    /// Forgets every cached data key and sealed credential, so the next use reads and
    /// unwraps from the store again.
    pub fn clear_cache(&self) {
        if let Ok(mut cache) = self.data_keys.lock() {
            cache.clear();
        }
        forget_sealed(&self.sealed, None);
    }

    /// The tenant's current data key (the newest version), creating one if `create`.
    async fn current_key(
        &self,
        store: &TenantStore<'_>,
        create: bool,
    ) -> Result<Option<(i64, Arc<DataKey>)>, VaultError> {
        let record = match store.data_keys().await?.into_iter().next() {
            Some(record) => record,
            None if create => {
                let fresh = DataKey::generate();
                let wrapped = self
                    .provider
                    .wrap(store.context().tenant_id(), &fresh)
                    .await?;
                store
                    .create_data_key(&wrapped.kek_id, &wrapped.bytes)
                    .await?
            }
            None => return Ok(None),
        };
        let key = self
            .unwrap_cached(store.context().tenant_id(), &record)
            .await?;
        Ok(Some((record.dek_version, key)))
    }

    /// The tenant's data key of version `dek_version`, if it still exists.
    async fn key_version(
        &self,
        store: &TenantStore<'_>,
        dek_version: i64,
    ) -> Result<Option<Arc<DataKey>>, VaultError> {
        let Some(record) = store
            .data_keys()
            .await?
            .into_iter()
            .find(|k| k.dek_version == dek_version)
        else {
            return Ok(None);
        };
        self.unwrap_cached(store.context().tenant_id(), &record)
            .await
            .map(Some)
    }

    /// Unwraps a stored data key, remembering the result. The stored records are read on every
    /// use, so a rotated or destroyed key takes effect at once; only the unwrap (a KMS call for
    /// remote providers) is cached, keyed by the exact wrapped bytes.
    async fn unwrap_cached(
        &self,
        tenant: &TenantId,
        record: &DataKeyRecord,
    ) -> Result<Arc<DataKey>, VaultError> {
        let cache_key = (tenant.clone(), record.dek_version);
        let cached = self
            .data_keys
            .lock()
            .ok()
            .and_then(|cache| cache.get(&cache_key).cloned())
            .filter(|c| c.wrapped == record.wrapped_dek);
        if let Some(cached) = cached {
            return Ok(cached.key);
        }
        let key = Arc::new(
            self.provider
                .unwrap(tenant, &record.kek_id, &record.wrapped_dek)
                .await?,
        );
        if let Ok(mut cache) = self.data_keys.lock() {
            cache.insert(
                cache_key,
                CachedKey {
                    wrapped: record.wrapped_dek.clone(),
                    key: key.clone(),
                },
            );
        }
        Ok(key)
    }

    /// Re-encrypts the tenant's secrets under a new data key, then destroys the old one.
    /// Safe to run while the server serves (new writes use the new key at once; reads find
    /// each secret's own key version) and to run again after an interruption: a rotation in
    /// progress (more than one key version) is resumed, not restarted.
    pub async fn rotate_data_key(
        &self,
        store: &TenantStore<'_>,
    ) -> Result<DekRotation, VaultError> {
        let tenant = store.context().tenant_id();
        let keys = store.data_keys().await?;
        let Some(current) = keys.first() else {
            // Nothing sealed yet: the first write will create a key.
            return Ok(DekRotation::default());
        };
        let resumed = keys.len() > 1;
        if !resumed {
            let fresh = DataKey::generate();
            let wrapped = self.provider.wrap(tenant, &fresh).await?;
            store
                .start_data_key_rotation(current.dek_version, &wrapped.kek_id, &wrapped.bytes)
                .await?;
        }
        let Some((target, new_key)) = self.current_key(store, false).await? else {
            return Err(VaultError::Decrypt);
        };
        let mut report = DekRotation {
            resumed,
            from_dek_version: current.dek_version,
            to_dek_version: target,
            ..DekRotation::default()
        };
        // Writers racing with this loop seal under `target`, so the set shrinks to empty.
        loop {
            let pending = store.credentials_sealed_before(target).await?;
            if pending.is_empty() {
                break;
            }
            for record in pending {
                let old_key = self
                    .key_version(store, record.dek_version)
                    .await?
                    .ok_or(VaultError::Decrypt)?;
                let old_aad = secret_aad(
                    tenant,
                    &record.connector,
                    record.version,
                    record.dek_version,
                );
                let plain = envelope::open(old_key.bytes(), &old_aad, &record.sealed)?;
                let new_aad = secret_aad(tenant, &record.connector, record.version, target);
                let sealed = envelope::seal(new_key.bytes(), &new_aad, &plain)?;
                if store
                    .reseal_credential(
                        &record.connector,
                        record.version,
                        record.dek_version,
                        target,
                        &sealed,
                    )
                    .await?
                {
                    report.resealed += 1;
                }
            }
        }
        report.retired = store.retire_data_keys_before(target).await?;
        if let Ok(mut cache) = self.data_keys.lock() {
            cache.retain(|(t, v), _| t != tenant || *v >= target);
        }
        forget_sealed(&self.sealed, Some(tenant));
        Ok(report)
    }

    /// Re-wraps every data key not wrapped by the provider's current KEK (after a KEK
    /// rotation). Idempotent; each key is re-wrapped with a conditional update, so concurrent
    /// runs and an interrupted run followed by another all end with every key re-wrapped once.
    pub async fn rewrap_all(
        &self,
        admin: &AdminStore<'_>,
        origin: &Origin,
    ) -> Result<u64, VaultError> {
        let current = self.provider.current_kek_id();
        let mut rewrapped = 0;
        for (tenant, record) in admin.data_keys_not_wrapped_by(&current).await? {
            let key = self
                .provider
                .unwrap(&tenant, &record.kek_id, &record.wrapped_dek)
                .await?;
            let wrapped = self.provider.wrap(&tenant, &key).await?;
            if admin
                .rewrap_data_key(
                    &tenant,
                    record.dek_version,
                    &record.kek_id,
                    &wrapped.kek_id,
                    &wrapped.bytes,
                    origin,
                )
                .await?
            {
                rewrapped += 1;
            }
        }
        forget_sealed(&self.sealed, None);
        Ok(rewrapped)
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
        let Some((dek_version, key)) = self.current_key(store, true).await? else {
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
                forget_sealed(&self.sealed, Some(tenant));
                return Ok(record);
            }
        }
        Err(VaultError::Contended)
    }

    /// Opens the tenant's credential for `connector`; `None` if it has none. A remembered
    /// read past half its life is renewed before this returns; a caller that can renew it in
    /// a task of its own, and so answer sooner, uses [`reveal_deferring_renewal`].
    ///
    /// [`reveal_deferring_renewal`]: Self::reveal_deferring_renewal
    pub async fn reveal(
        &self,
        store: &TenantStore<'_>,
        connector: &ConnectorName,
    ) -> Result<Option<Credential>, VaultError> {
        let (credential, renewal) = self.reveal_deferring_renewal(store, connector).await?;
        if let Some(renewal) = renewal {
            self.renew(store, renewal).await?;
        }
        Ok(credential)
    }

    /// [`reveal`](Self::reveal), opening a remembered read past half its life as it is (it is
    /// within its time-to-live) and answering the [`Renewal`] that this caller alone is to
    /// hand to [`renew`](Self::renew). What the cache may hide stays bounded by
    /// `[vault] credential_cache_ms` whether or not the renewal is ever made.
    pub async fn reveal_deferring_renewal(
        &self,
        store: &TenantStore<'_>,
        connector: &ConnectorName,
    ) -> Result<(Option<Credential>, Option<Renewal>), VaultError> {
        let tenant = store.context().tenant_id();
        let mut renewal = None;
        // A rotation may re-seal the credential and destroy its old key between reading the
        // row and reading the key; reading again finds it under the new key.
        let mut attempts = 0;
        let (found, plain) = loop {
            attempts += 1;
            // A retry reads afresh: what was kept may be what a rotation just replaced. It does
            // not look the entry up, which could make it the renewer and then drop the renewal.
            // An entry past half its life is opened as it is, its renewal left to the caller.
            let lookup = if attempts > 1 {
                Err(self.sealed.ticket())
            } else {
                match self.sealed.lookup(&(tenant.clone(), connector.clone())) {
                    Lookup::Hit(found) => Ok(found),
                    Lookup::Renew(found, ticket) => {
                        renewal = Some(Renewal {
                            connector: connector.clone(),
                            ticket,
                        });
                        Ok(found)
                    }
                    Lookup::Miss(ticket) => Err(ticket),
                }
            };
            let found = match lookup {
                Ok(found) => found,
                Err(ticket) => self.read_sealed(store, connector, ticket).await?,
            };
            let Some(found) = found else {
                return Ok((None, renewal));
            };
            let (record, key) = &*found;
            let opened = match key {
                Some(key) => {
                    let key = self.unwrap_cached(tenant, key).await?;
                    let aad = secret_aad(tenant, connector, record.version, record.dek_version);
                    envelope::open(key.bytes(), &aad, &record.sealed)
                }
                None => Err(VaultError::Decrypt),
            };
            match opened {
                Ok(plain) => break (found, plain),
                Err(error) if attempts >= 3 => return Err(error),
                Err(_) => continue,
            }
        };
        let secret = String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Decrypt)?;
        let (record, _) = &*found;
        let credential = Credential {
            tenant_id: tenant.clone(),
            connector: connector.clone(),
            version: record.version,
            secret: SecretString::from(secret),
            fields: record.fields.clone(),
        };
        Ok((Some(credential), renewal))
    }

    /// Reads the credential of a [`Renewal`] again and remembers it, for the tenant of
    /// `store`: whatever store a renewal is handed, it can only renew that tenant's own entry.
    pub async fn renew(&self, store: &TenantStore<'_>, renewal: Renewal) -> Result<(), VaultError> {
        let Renewal { connector, ticket } = renewal;
        self.read_sealed(store, &connector, ticket).await?;
        Ok(())
    }

    /// Reads the sealed credential for `connector` and remembers it under the tenant of
    /// `store`, the one place the cache's key is made, unless a change forgot entries since
    /// `ticket` was taken.
    async fn read_sealed(
        &self,
        store: &TenantStore<'_>,
        connector: &ConnectorName,
        ticket: Ticket,
    ) -> Result<Option<Arc<SealedCredential>>, VaultError> {
        let found = store.credential_with_key(connector).await?.map(Arc::new);
        let cache_key = (store.context().tenant_id().clone(), connector.clone());
        self.sealed.put(ticket, cache_key, found.clone());
        Ok(found)
    }
}
