//! Token encryption at rest: AES-256-GCM with a key id stored beside every ciphertext.
//!
//! The current key (`CRM_FLEET_TOKEN_KEY`, base64 of 32 bytes) encrypts; it and any previous
//! keys (`CRM_FLEET_TOKEN_KEYS_PREVIOUS`, comma-separated) decrypt, so a key can be rotated
//! without downtime: deploy the new key with the old one as previous, run
//! `crmctl keys rotate` to re-encrypt, then drop the old key. Each ciphertext is bound to its
//! row and column through the associated data (`connection:<id>:access`), so ciphertexts
//! cannot be swapped between rows. The key id is the first 16 hex digits of the key's
//! SHA-256, so it identifies a key without revealing it.
//!
//! Invariant: no type here derives `Debug` over key material, and plaintexts are returned in
//! [`SecretString`]s.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// Key problems.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A configured key is not base64 of 32 bytes.
    #[error("{name} must be base64 of exactly 32 bytes ({reason})")]
    Invalid {
        /// Which setting.
        name: String,
        /// Why.
        reason: String,
    },
    /// A ciphertext names a key we do not have.
    #[error("no key with id {0} is configured (was it rotated out too early?)")]
    UnknownKey(String),
    /// A ciphertext does not decrypt (tampered, or wrong row).
    #[error("ciphertext does not decrypt with key {0}")]
    Corrupt(String),
}

struct Entry {
    id: String,
    cipher: Aes256Gcm,
    raw: [u8; 32],
}

/// The current key and the previous ones.
pub struct Keyring {
    current: Entry,
    previous: Vec<Entry>,
}

fn derive_from(raw: &[u8; 32], purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"crm-fleet key derivation v1\0");
    h.update(purpose.as_bytes());
    h.update(raw);
    h.finalize().into()
}

fn entry(name: &str, b64: &str) -> Result<Entry, KeyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| KeyError::Invalid { name: name.to_owned(), reason: e.to_string() })?;
    let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Invalid {
        name: name.to_owned(),
        reason: format!("decodes to {} bytes", bytes.len()),
    })?;
    let id = hex::encode(Sha256::digest(raw))[..16].to_owned();
    let key = Key::<Aes256Gcm>::from(raw);
    Ok(Entry { id, cipher: Aes256Gcm::new(&key), raw })
}

impl Keyring {
    /// A keyring from the current key and previous keys (all base64 of 32 bytes).
    pub fn from_base64(current: &str, previous: &[String]) -> Result<Self, KeyError> {
        let current = entry("CRM_FLEET_TOKEN_KEY", current)?;
        let previous = previous
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| entry("CRM_FLEET_TOKEN_KEYS_PREVIOUS", p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { current, previous })
    }

    /// A fresh random key, base64 (for `crmctl keys generate`, tests and the demo).
    pub fn generate_base64() -> String {
        let raw: [u8; 32] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    /// The id of the key that encrypts.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Encrypts `plaintext` bound to `aad`; returns nonce ‖ ciphertext.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Vec<u8> {
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = self
            .current
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: aad.as_bytes() })
            .unwrap_or_default();
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts what [`Keyring::seal`] produced with key `key_id` for `aad`.
    pub fn open(&self, key_id: &str, sealed: &[u8], aad: &str) -> Result<SecretString, KeyError> {
        let entry = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|e| e.id == key_id)
            .ok_or_else(|| KeyError::UnknownKey(key_id.to_owned()))?;
        if sealed.len() < 12 {
            return Err(KeyError::Corrupt(key_id.to_owned()));
        }
        let (nonce, ct) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| KeyError::Corrupt(key_id.to_owned()))?;
        let plain = entry
            .cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map_err(|_| KeyError::Corrupt(key_id.to_owned()))?;
        String::from_utf8(plain).map(SecretString::from).map_err(|_| KeyError::Corrupt(key_id.to_owned()))
    }

    /// A MAC key derived from the current key for `purpose` (OAuth state signing).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        derive_from(&self.current.raw, purpose)
    }

    /// The MAC keys for `purpose` derived from every configured key, the current one first:
    /// what was signed before a rotation (or by a replica not yet rolled) still verifies while
    /// its key is among the previous ones.
    pub fn derive_all(&self, purpose: &str) -> Vec<[u8; 32]> {
        std::iter::once(&self.current).chain(&self.previous).map(|e| derive_from(&e.raw, purpose)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn seals_and_opens_bound_to_its_row() {
        let k = Keyring::from_base64(&Keyring::generate_base64(), &[]).expect("key");
        let sealed = k.seal(b"tok-123", "connection:1:access");
        assert!(!sealed.windows(7).any(|w| w == b"tok-123"), "no plaintext in the ciphertext");
        let opened = k.open(k.current_id(), &sealed, "connection:1:access").expect("open");
        assert_eq!(opened.expose_secret(), "tok-123");
        assert_eq!(
            k.open(k.current_id(), &sealed, "connection:2:access").err(),
            Some(KeyError::Corrupt(k.current_id().to_owned()))
        );
    }

    #[test]
    fn previous_keys_still_open_after_rotation() {
        let old = Keyring::generate_base64();
        let old_ring = Keyring::from_base64(&old, &[]).expect("old");
        let sealed = old_ring.seal(b"refresh", "a");
        let new_ring = Keyring::from_base64(&Keyring::generate_base64(), &[old]).expect("new");
        assert_ne!(new_ring.current_id(), old_ring.current_id());
        assert_eq!(
            new_ring.open(old_ring.current_id(), &sealed, "a").expect("open").expose_secret(),
            "refresh"
        );
    }

    #[test]
    fn rejects_bad_keys_with_the_setting_named() {
        let err = Keyring::from_base64("c2hvcnQ=", &[]).err().expect("invalid");
        assert!(err.to_string().contains("CRM_FLEET_TOKEN_KEY"), "{err}");
    }
}
