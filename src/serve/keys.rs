//! API keys: `plx_<id>_<secret>`. The id (8 hex digits) finds the key; the secret (32 random
//! bytes) is stored only as its SHA-256, compared in constant time. A key is shown once, when
//! it is created. Roles nest: a viewer reads, an operator also acts on running flows (replay,
//! breaker reset, conflict resolution), an admin also changes integrations and keys.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::registry::{KeyRow, Registry, RegistryError, now_ms};

/// What a caller may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (admin, operator, viewer)")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Who is calling: a key's id, name and role.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub key_id: String,
    pub name: String,
    pub role: Role,
    /// May read dead letters' original messages (PHI).
    pub phi: bool,
}

impl Caller {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        if self.key_id.starts_with("jwt:") {
            // A token's subject: the identity provider's name for the caller.
            self.key_id.clone()
        } else {
            format!("key:{} ({})", self.key_id, self.name)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new key, stored; returns the row and the key text (shown once).
pub async fn create(
    registry: &Registry,
    name: &str,
    role: Role,
    phi: bool,
    expires_in: Option<std::time::Duration>,
) -> Result<(KeyRow, String), RegistryError> {
    let mut id = [0u8; 4];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)
        .and_then(|()| getrandom::fill(&mut secret))
        .map_err(|e| RegistryError::Db {
            at: "keys".into(),
            why: format!("no randomness: {e}"),
        })?;
    let (id, secret) = (hex(&id), hex(&secret));
    let created_at = now_ms();
    let expires_at = match expires_in {
        Some(d) => Some(
            i64::try_from(d.as_millis())
                .ok()
                .and_then(|ms| created_at.checked_add(ms))
                .ok_or_else(|| RegistryError::Db {
                    at: "keys".into(),
                    why: "the expiry is too far away".into(),
                })?,
        ),
        None => None,
    };
    let row = KeyRow {
        id: id.clone(),
        name: name.to_string(),
        role: role.as_str().to_string(),
        phi,
        hash: hex(&digest(&secret)),
        created_at,
        expires_at,
        revoked_at: None,
    };
    registry.add_key(&row).await?;
    Ok((row, format!("plx_{id}_{secret}")))
}

/// Why a key was refused (the reason never holds the key).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unknown,
    Revoked,
    Expired,
}

impl Refusal {
    pub fn text(&self) -> &'static str {
        match self {
            Refusal::Malformed => "the bearer token is not a plexus API key",
            Refusal::Unknown => "unknown API key",
            Refusal::Revoked => "the API key was revoked",
            Refusal::Expired => "the API key has expired",
        }
    }
}

/// Checks a presented key against the registry.
pub async fn verify(
    registry: &Registry,
    presented: &str,
) -> Result<Result<Caller, Refusal>, RegistryError> {
    let Some((id, secret)) = presented
        .strip_prefix("plx_")
        .and_then(|rest| rest.split_once('_'))
        .filter(|(id, s)| id.len() == 8 && s.len() == 64)
    else {
        return Ok(Err(Refusal::Malformed));
    };
    let Some(row) = registry.key(id).await? else {
        return Ok(Err(Refusal::Unknown));
    };
    let want = hex(&digest(secret));
    // Equal in time that does not depend on where they differ.
    let same = want.len() == row.hash.len()
        && want
            .bytes()
            .zip(row.hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Ok(Err(Refusal::Unknown));
    }
    if row.revoked_at.is_some() {
        return Ok(Err(Refusal::Revoked));
    }
    if row.expires_at.is_some_and(|t| t <= now_ms()) {
        return Ok(Err(Refusal::Expired));
    }
    let Ok(role) = Role::parse(&row.role) else {
        return Ok(Err(Refusal::Unknown));
    };
    Ok(Ok(Caller {
        key_id: row.id,
        name: row.name,
        role,
        phi: row.phi,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::state_db::StateLocation;

    #[test]
    fn keys_verify_until_revoked_or_expired_and_only_their_hash_is_stored() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let reg = Registry::open(&StateLocation::Sqlite(dir.path().join("r.db")))
                .await
                .unwrap();
            let (row, key) = create(&reg, "ops", Role::Operator, false, None)
                .await
                .unwrap();
            assert!(key.starts_with(&format!("plx_{}_", row.id)));
            let secret = key.rsplit('_').next().unwrap();
            let stored = reg.key(&row.id).await.unwrap().unwrap();
            assert!(!stored.hash.contains(secret));
            let caller = verify(&reg, &key).await.unwrap().unwrap();
            assert_eq!((caller.role, caller.name.as_str()), (Role::Operator, "ops"));
            // One character off: refused, as unknown.
            let mut wrong = key.clone();
            wrong.pop();
            wrong.push(if key.ends_with('0') { '1' } else { '0' });
            assert_eq!(
                verify(&reg, &wrong).await.unwrap().unwrap_err(),
                Refusal::Unknown
            );
            assert_eq!(
                verify(&reg, "Bearer x").await.unwrap().unwrap_err(),
                Refusal::Malformed
            );
            assert!(reg.revoke_key(&row.id).await.unwrap());
            assert_eq!(
                verify(&reg, &key).await.unwrap().unwrap_err(),
                Refusal::Revoked
            );
            let (_, short) = create(
                &reg,
                "tmp",
                Role::Viewer,
                false,
                Some(std::time::Duration::ZERO),
            )
            .await
            .unwrap();
            assert_eq!(
                verify(&reg, &short).await.unwrap().unwrap_err(),
                Refusal::Expired
            );
        });
    }
}
