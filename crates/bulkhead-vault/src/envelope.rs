//! XChaCha20-Poly1305 with random 192-bit nonces (safe to draw at random for any number of
//! messages under one key). Sealed bytes are `nonce ‖ ciphertext ‖ tag`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::VaultError;

const NONCE_LEN: usize = 24;

pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| VaultError::Encrypt)?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// Fails if the bytes were altered or `aad` differs from sealing time: a ciphertext moved to
/// another tenant's or connector's row does not open.
pub(crate) fn open(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    if sealed.len() < NONCE_LEN {
        return Err(VaultError::Decrypt);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| VaultError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_the_same_key_and_associated_data() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"acme/slack/1", b"xoxb-secret").unwrap();
        assert_eq!(
            open(&key, b"acme/slack/1", &sealed).unwrap().as_slice(),
            b"xoxb-secret"
        );
        assert!(open(&key, b"globex/slack/1", &sealed).is_err());
        assert!(open(&key, b"acme/jira/1", &sealed).is_err());
        assert!(open(&[8u8; 32], b"acme/slack/1", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(open(&key, b"acme/slack/1", &flipped).is_err());
        assert!(open(&key, b"acme/slack/1", &sealed[..10]).is_err());
        // Two seals of the same plaintext differ (random nonces).
        assert_ne!(
            seal(&key, b"a", b"x").unwrap(),
            seal(&key, b"a", b"x").unwrap()
        );
    }
}
