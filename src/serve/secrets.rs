//! Credentials at rest: each secret is sealed with AES-256-GCM (ring) under the master key,
//! with a fresh random nonce and the secret's name as associated data (a ciphertext moved to
//! another name does not open). The master key comes from `PLEXUS_MASTER_KEY` (64 hex
//! digits) or a file; its id (the first 8 hex digits of its SHA-256) is stored with each
//! secret, so after a rotation the old key (`PLEXUS_MASTER_KEY_OLD`) still opens what it
//! sealed until `plexus keys rotate` re-seals everything under the new one.
//!
//! The API takes secret values and never returns them; pipelines refer to them as
//! `secret:NAME` (`net::secret`), read when an integration starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

use super::registry::{Registry, RegistryError, SealedSecret};

/// A master key and its id.
pub struct MasterKey {
    pub id: String,
    key: LessSafeKey,
}

impl MasterKey {
    /// From 64 hex digits (32 bytes).
    pub fn from_hex(text: &str) -> Result<MasterKey, String> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a master key is 64 hex digits (32 bytes; `openssl rand -hex 32`)".into());
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex checked"))
            .collect();
        let id = Sha256::digest(&bytes)
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "not an AES-256 key".to_string())?,
        );
        Ok(MasterKey { id, key })
    }

    fn seal(&self, name: &str, value: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let mut data = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_string())?;
        Ok((nonce.to_vec(), data))
    }

    fn open(&self, name: &str, nonce: &[u8], sealed: &[u8]) -> Result<String, String> {
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| format!("secret {name}: bad nonce"))?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| format!("secret {name}: does not open with key {}", self.id))?;
        String::from_utf8(plain.to_vec()).map_err(|_| format!("secret {name}: not UTF-8"))
    }
}

/// The master keys of this process: the current one (seals) and older ones (open only).
pub struct Keyring {
    pub current: MasterKey,
    pub old: Vec<MasterKey>,
}

impl Keyring {
    /// `PLEXUS_MASTER_KEY` (or the file `--master-key-file`), and `PLEXUS_MASTER_KEY_OLD`
    /// (comma-separated); None when no key is configured (then secrets are refused).
    pub fn from_env(file: Option<&std::path::Path>) -> Result<Option<Keyring>, String> {
        let current = match file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("master key file {}: {e}", f.display()))?,
            ),
            None => std::env::var("PLEXUS_MASTER_KEY").ok(),
        };
        let Some(current) = current else {
            return Ok(None);
        };
        let old = std::env::var("PLEXUS_MASTER_KEY_OLD")
            .unwrap_or_default()
            .split(',')
            .filter(|k| !k.trim().is_empty())
            .map(MasterKey::from_hex)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("PLEXUS_MASTER_KEY_OLD: {e}"))?;
        Ok(Some(Keyring {
            current: MasterKey::from_hex(&current).map_err(|e| format!("master key: {e}"))?,
            old,
        }))
    }

    pub fn seal(&self, name: &str, value: &str) -> Result<SealedSecret, String> {
        let (nonce, sealed) = self.current.seal(name, value)?;
        Ok(SealedSecret {
            name: name.to_string(),
            key_id: self.current.id.clone(),
            nonce,
            sealed,
            updated_at: 0,
            updated_by: String::new(),
        })
    }

    pub fn open(&self, s: &SealedSecret) -> Result<String, String> {
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == s.key_id)
            .ok_or_else(|| {
                format!(
                    "secret {}: sealed with master key {}, which this server does not have",
                    s.name, s.key_id
                )
            })?;
        key.open(&s.name, &s.nonce, &s.sealed)
    }
}

/// The sealed secrets, as last read from the registry; opened on use.
pub struct Vault {
    pub keyring: Option<Keyring>,
    sealed: Mutex<HashMap<String, SealedSecret>>,
}

impl Vault {
    pub fn new(keyring: Option<Keyring>) -> Arc<Vault> {
        Arc::new(Vault {
            keyring,
            sealed: Mutex::default(),
        })
    }

    /// Reads every sealed secret again (before integrations start, after API changes).
    pub async fn refresh(&self, registry: &Registry) -> Result<(), RegistryError> {
        let all = registry.secrets().await?;
        *self.sealed.lock().expect("vault") =
            all.into_iter().map(|s| (s.name.clone(), s)).collect();
        Ok(())
    }
}

impl crate::net::secret::SecretStore for Vault {
    fn get(&self, name: &str) -> Result<String, String> {
        let sealed = self
            .sealed
            .lock()
            .expect("vault")
            .get(name)
            .cloned()
            .ok_or_else(|| format!("secret:{name} is not in the secret store"))?;
        match &self.keyring {
            Some(k) => k.open(&sealed),
            None => Err(format!(
                "secret:{name}: no master key configured (PLEXUS_MASTER_KEY)"
            )),
        }
    }
}

/// Re-seals every secret under the current key (`plexus keys rotate`); returns how many.
pub async fn rotate(registry: &Registry, keyring: &Keyring) -> Result<usize, String> {
    let all = registry.secrets().await.map_err(|e| e.to_string())?;
    let mut n = 0;
    for s in all {
        if s.key_id == keyring.current.id {
            continue;
        }
        let value = keyring.open(&s)?;
        let mut resealed = keyring.seal(&s.name, &value)?;
        resealed.updated_by = "plexus keys rotate".into();
        registry
            .put_secret(&resealed)
            .await
            .map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sealed_secrets_open_only_under_their_key_and_name() {
        let ring = Keyring {
            current: MasterKey::from_hex(K1).unwrap(),
            old: Vec::new(),
        };
        let s = ring.seal("partner", "s3cr3t-value").unwrap();
        assert_eq!(s.key_id, ring.current.id);
        assert!(!s.sealed.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(ring.open(&s).unwrap(), "s3cr3t-value");
        // Moved to another name: the associated data differs, it does not open.
        let moved = SealedSecret {
            name: "other".into(),
            ..s.clone()
        };
        assert!(ring.open(&moved).is_err());
        // Each seal has its own nonce.
        assert_ne!(ring.seal("partner", "s3cr3t-value").unwrap().nonce, s.nonce);
        // After a rotation the old key still opens what it sealed; without it, a clear error.
        let rotated = Keyring {
            current: MasterKey::from_hex(K2).unwrap(),
            old: vec![MasterKey::from_hex(K1).unwrap()],
        };
        assert_eq!(rotated.open(&s).unwrap(), "s3cr3t-value");
        let new_only = Keyring {
            current: MasterKey::from_hex(K2).unwrap(),
            old: Vec::new(),
        };
        let e = new_only.open(&s).unwrap_err();
        assert!(e.contains(&s.key_id) && !e.contains("s3cr3t"), "{e}");
        assert!(MasterKey::from_hex("abc").is_err());
    }
}
