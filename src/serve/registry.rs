//! The registry: integrations (the seed's configuration fields plus the pipeline), their
//! version history, API keys (hashed) and the audit log. SQLite in the state directory by
//! default; PostgreSQL when several servers share it (`connectors::state_db`).

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::connectors::state_db::{self, Commits, StateLocation};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {at}: {why}")]
    Db { at: String, why: String },
    #[error("integration {0} exists")]
    Exists(String),
    #[error("integration {0} not found")]
    NotFound(String),
    #[error("integration {id} has no version {version}")]
    NoVersion { id: String, version: i64 },
}

const POSTGRES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS plexus_integrations (
        id TEXT PRIMARY KEY, version BIGINT NOT NULL, config TEXT NOT NULL,
        pipeline TEXT NOT NULL, active BIGINT NOT NULL,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, updated_by TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plexus_integration_versions (
        id TEXT NOT NULL, version BIGINT NOT NULL, config TEXT NOT NULL, pipeline TEXT NOT NULL,
        created_at BIGINT NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (id, version))",
    "CREATE TABLE IF NOT EXISTS plexus_api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, phi BIGINT NOT NULL,
        hash TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT)",
    "CREATE TABLE IF NOT EXISTS plexus_secrets (
        name TEXT PRIMARY KEY, key_id TEXT NOT NULL, nonce TEXT NOT NULL, sealed TEXT NOT NULL,
        updated_at BIGINT NOT NULL, updated_by TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plexus_audit (
        seq BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, detail TEXT NOT NULL, peer TEXT NOT NULL, request_id TEXT NOT NULL)",
];

const SQLITE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS plexus_integrations (
        id TEXT PRIMARY KEY, version INTEGER NOT NULL, config TEXT NOT NULL,
        pipeline TEXT NOT NULL, active INTEGER NOT NULL,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, updated_by TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plexus_integration_versions (
        id TEXT NOT NULL, version INTEGER NOT NULL, config TEXT NOT NULL, pipeline TEXT NOT NULL,
        created_at INTEGER NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (id, version))",
    "CREATE TABLE IF NOT EXISTS plexus_api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, phi INTEGER NOT NULL,
        hash TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER, revoked_at INTEGER)",
    "CREATE TABLE IF NOT EXISTS plexus_secrets (
        name TEXT PRIMARY KEY, key_id TEXT NOT NULL, nonce TEXT NOT NULL, sealed TEXT NOT NULL,
        updated_at INTEGER NOT NULL, updated_by TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plexus_audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, peer TEXT NOT NULL,
        request_id TEXT NOT NULL)",
];

/// One stored integration (the current version).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    pub id: String,
    pub version: i64,
    /// The seed's configuration fields (JSON object; never credentials).
    pub config: serde_json::Value,
    /// The pipeline's YAML, as written.
    pub pipeline: String,
    /// Runs (live, or in testing mode).
    pub active: bool,
    /// Runs in testing mode: live input, every output diverted to files (`Plan::divert_outputs`).
    #[serde(default)]
    pub testing: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

/// Whether an integration runs, stored as the `active` column's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inactive = 0,
    Active = 1,
    Testing = 2,
}

/// One version in an integration's history.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub version: i64,
    pub config: serde_json::Value,
    pub pipeline: String,
    pub created_at: i64,
    pub created_by: String,
}

/// An API key as stored: the hash of its secret, never the secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub role: String,
    /// May read dead letters' original messages (PHI).
    pub phi: bool,
    #[serde(skip)]
    pub hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// One audit entry: who did what, when, from where.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub peer: String,
    pub request_id: String,
}

/// A secret as stored: sealed (`serve::secrets`), never its value.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub name: String,
    /// The master key that sealed it.
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
    pub updated_at: i64,
    pub updated_by: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[derive(Clone)]
pub struct Registry {
    pool: sqlx::AnyPool,
    postgres: bool,
    at: String,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Registry {
    pub async fn open(at: &StateLocation) -> Result<Registry, RegistryError> {
        let (pool, postgres) =
            state_db::open(at, "plexus_registry", POSTGRES, SQLITE, Commits::Durable)
                .await
                .map_err(|why| RegistryError::Db {
                    at: at.to_string(),
                    why,
                })?;
        Ok(Registry {
            pool,
            postgres,
            at: at.to_string(),
        })
    }

    /// The statement for this backend: written with `$N`, SQLite takes `?N`.
    fn q(&self, sql: &'static str) -> sqlx::AssertSqlSafe<String> {
        // Only our constant statements pass here; `$` never appears in them otherwise.
        sqlx::AssertSqlSafe(if self.postgres {
            sql.to_string()
        } else {
            sql.replace('$', "?")
        })
    }

    fn err(&self) -> impl Fn(sqlx::Error) -> RegistryError + '_ {
        move |e| RegistryError::Db {
            at: self.at.clone(),
            why: e.to_string(),
        }
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(self.err())?;
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<Stored>, RegistryError> {
        let rows = sqlx::query(self.q(
            "SELECT id, version, config, pipeline, active, created_at, updated_at, updated_by
             FROM plexus_integrations ORDER BY id",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err())?;
        rows.iter().map(stored).collect()
    }

    pub async fn get(&self, id: &str) -> Result<Stored, RegistryError> {
        let row = sqlx::query(self.q(
            "SELECT id, version, config, pipeline, active, created_at, updated_at, updated_by
             FROM plexus_integrations WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.err())?;
        match row {
            Some(r) => stored(&r),
            None => Err(RegistryError::NotFound(id.to_string())),
        }
    }

    /// Stores a new integration (version 1, inactive unless `active`).
    pub async fn create(
        &self,
        id: &str,
        config: &serde_json::Value,
        pipeline: &str,
        active: bool,
        by: &str,
    ) -> Result<Stored, RegistryError> {
        let t = now_ms();
        let mut tx = self.pool.begin().await.map_err(self.err())?;
        let inserted = sqlx::query(self.q("INSERT INTO plexus_integrations
               (id, version, config, pipeline, active, created_at, updated_at, updated_by)
             VALUES ($1, 1, $2, $3, $4, $5, $5, $6) ON CONFLICT (id) DO NOTHING"))
        .bind(id)
        .bind(config.to_string())
        .bind(pipeline)
        .bind(active as i64)
        .bind(t)
        .bind(by)
        .execute(&mut *tx)
        .await
        .map_err(self.err())?;
        if inserted.rows_affected() == 0 {
            return Err(RegistryError::Exists(id.to_string()));
        }
        self.add_version(&mut tx, id, 1, config, pipeline, t, by)
            .await?;
        tx.commit().await.map_err(self.err())?;
        self.get(id).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn add_version(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
        version: i64,
        config: &serde_json::Value,
        pipeline: &str,
        t: i64,
        by: &str,
    ) -> Result<(), RegistryError> {
        sqlx::query(self.q("INSERT INTO plexus_integration_versions
               (id, version, config, pipeline, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)"))
        .bind(id)
        .bind(version)
        .bind(config.to_string())
        .bind(pipeline)
        .bind(t)
        .bind(by)
        .execute(&mut **tx)
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// Stores a new version of `id`'s configuration and pipeline.
    pub async fn update(
        &self,
        id: &str,
        config: &serde_json::Value,
        pipeline: &str,
        by: &str,
    ) -> Result<Stored, RegistryError> {
        let t = now_ms();
        let mut tx = self.pool.begin().await.map_err(self.err())?;
        let row = sqlx::query(self.q(
            "UPDATE plexus_integrations SET version = version + 1, config = $2, pipeline = $3,
               updated_at = $4, updated_by = $5
             WHERE id = $1 RETURNING version",
        ))
        .bind(id)
        .bind(config.to_string())
        .bind(pipeline)
        .bind(t)
        .bind(by)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.err())?;
        let Some(row) = row else {
            return Err(RegistryError::NotFound(id.to_string()));
        };
        let version: i64 = row.try_get(0).map_err(self.err())?;
        self.add_version(&mut tx, id, version, config, pipeline, t, by)
            .await?;
        tx.commit().await.map_err(self.err())?;
        self.get(id).await
    }

    pub async fn set_mode(&self, id: &str, mode: Mode, by: &str) -> Result<Stored, RegistryError> {
        let done = sqlx::query(self.q(
            "UPDATE plexus_integrations SET active = $2, updated_at = $3, updated_by = $4 WHERE id = $1",
        ))
        .bind(id)
        .bind(mode as i64)
        .bind(now_ms())
        .bind(by)
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::NotFound(id.to_string()));
        }
        self.get(id).await
    }

    /// Removes the integration; its version history stays (the audit trail refers to it).
    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let done = sqlx::query(self.q("DELETE FROM plexus_integrations WHERE id = $1"))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(self.err())?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::NotFound(id.to_string()));
        }
        Ok(())
    }

    pub async fn versions(&self, id: &str) -> Result<Vec<Version>, RegistryError> {
        let rows = sqlx::query(
            self.q("SELECT version, config, pipeline, created_at, created_by
             FROM plexus_integration_versions WHERE id = $1 ORDER BY version"),
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err())?;
        rows.iter()
            .map(|r| {
                let config: String = r.try_get(1).map_err(self.err())?;
                Ok(Version {
                    version: r.try_get(0).map_err(self.err())?,
                    config: serde_json::from_str(&config).unwrap_or_default(),
                    pipeline: r.try_get(2).map_err(self.err())?,
                    created_at: r.try_get(3).map_err(self.err())?,
                    created_by: r.try_get(4).map_err(self.err())?,
                })
            })
            .collect()
    }

    pub async fn version(&self, id: &str, version: i64) -> Result<Version, RegistryError> {
        self.versions(id)
            .await?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| RegistryError::NoVersion {
                id: id.to_string(),
                version,
            })
    }

    pub async fn add_key(&self, key: &KeyRow) -> Result<(), RegistryError> {
        sqlx::query(self.q(
            "INSERT INTO plexus_api_keys (id, name, role, phi, hash, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        ))
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.role)
        .bind(key.phi as i64)
        .bind(&key.hash)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(())
    }

    pub async fn key(&self, id: &str) -> Result<Option<KeyRow>, RegistryError> {
        let row = sqlx::query(self.q(
            "SELECT id, name, role, phi, hash, created_at, expires_at, revoked_at
             FROM plexus_api_keys WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.err())?;
        row.as_ref().map(|r| self.key_row(r)).transpose()
    }

    pub async fn keys(&self) -> Result<Vec<KeyRow>, RegistryError> {
        let rows = sqlx::query(self.q(
            "SELECT id, name, role, phi, hash, created_at, expires_at, revoked_at
             FROM plexus_api_keys ORDER BY created_at",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err())?;
        rows.iter().map(|r| self.key_row(r)).collect()
    }

    fn key_row(&self, r: &sqlx::any::AnyRow) -> Result<KeyRow, RegistryError> {
        let phi: i64 = r.try_get(3).map_err(self.err())?;
        Ok(KeyRow {
            id: r.try_get(0).map_err(self.err())?,
            name: r.try_get(1).map_err(self.err())?,
            role: r.try_get(2).map_err(self.err())?,
            phi: phi != 0,
            hash: r.try_get(4).map_err(self.err())?,
            created_at: r.try_get(5).map_err(self.err())?,
            expires_at: r.try_get(6).map_err(self.err())?,
            revoked_at: r.try_get(7).map_err(self.err())?,
        })
    }

    /// Revokes a key; false when there is no such key.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, RegistryError> {
        let done =
            sqlx::query(self.q(
                "UPDATE plexus_api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            ))
            .bind(id)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(self.err())?;
        Ok(done.rows_affected() > 0)
    }

    /// Stores (or replaces) a sealed secret.
    pub async fn put_secret(&self, s: &SealedSecret) -> Result<(), RegistryError> {
        sqlx::query(self.q(
            "INSERT INTO plexus_secrets (name, key_id, nonce, sealed, updated_at, updated_by)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce,
               sealed = EXCLUDED.sealed, updated_at = EXCLUDED.updated_at,
               updated_by = EXCLUDED.updated_by",
        ))
        .bind(&s.name)
        .bind(&s.key_id)
        .bind(hex(&s.nonce))
        .bind(hex(&s.sealed))
        .bind(now_ms())
        .bind(&s.updated_by)
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(())
    }

    pub async fn secrets(&self) -> Result<Vec<SealedSecret>, RegistryError> {
        let rows = sqlx::query(self.q(
            "SELECT name, key_id, nonce, sealed, updated_at, updated_by FROM plexus_secrets
             ORDER BY name",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err())?;
        rows.iter()
            .map(|r| {
                let nonce: String = r.try_get(2).map_err(self.err())?;
                let sealed: String = r.try_get(3).map_err(self.err())?;
                Ok(SealedSecret {
                    name: r.try_get(0).map_err(self.err())?,
                    key_id: r.try_get(1).map_err(self.err())?,
                    nonce: unhex(&nonce),
                    sealed: unhex(&sealed),
                    updated_at: r.try_get(4).map_err(self.err())?,
                    updated_by: r.try_get(5).map_err(self.err())?,
                })
            })
            .collect()
    }

    /// Removes a secret; false when there was none.
    pub async fn delete_secret(&self, name: &str) -> Result<bool, RegistryError> {
        let done = sqlx::query(self.q("DELETE FROM plexus_secrets WHERE name = $1"))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(self.err())?;
        Ok(done.rows_affected() > 0)
    }

    /// Appends to the audit log. `detail` must hold no secret and no PHI.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
        peer: &str,
        request_id: &str,
    ) -> Result<(), RegistryError> {
        sqlx::query(self.q(
            "INSERT INTO plexus_audit (at, actor, action, target, detail, peer, request_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ))
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .bind(peer)
        .bind(request_id)
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// The newest audit entries first, filtered by action and target when given.
    pub async fn audit_log(
        &self,
        action: Option<&str>,
        target: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, RegistryError> {
        let rows = sqlx::query(self.q(
            "SELECT seq, at, actor, action, target, detail, peer, request_id FROM plexus_audit
             WHERE ($1 = '' OR action = $1) AND ($2 = '' OR target = $2)
             ORDER BY seq DESC LIMIT $3",
        ))
        .bind(action.unwrap_or(""))
        .bind(target.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err())?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    seq: r.try_get(0).map_err(self.err())?,
                    at: r.try_get(1).map_err(self.err())?,
                    actor: r.try_get(2).map_err(self.err())?,
                    action: r.try_get(3).map_err(self.err())?,
                    target: r.try_get(4).map_err(self.err())?,
                    detail: r.try_get(5).map_err(self.err())?,
                    peer: r.try_get(6).map_err(self.err())?,
                    request_id: r.try_get(7).map_err(self.err())?,
                })
            })
            .collect()
    }
}

fn stored(r: &sqlx::any::AnyRow) -> Result<Stored, RegistryError> {
    let e = |e: sqlx::Error| RegistryError::Db {
        at: "registry".into(),
        why: e.to_string(),
    };
    let config: String = r.try_get(2).map_err(e)?;
    let active: i64 = r.try_get(4).map_err(e)?;
    Ok(Stored {
        id: r.try_get(0).map_err(e)?,
        version: r.try_get(1).map_err(e)?,
        config: serde_json::from_str(&config).unwrap_or_default(),
        pipeline: r.try_get(3).map_err(e)?,
        active: active != 0,
        testing: active == Mode::Testing as i64,
        created_at: r.try_get(5).map_err(e)?,
        updated_at: r.try_get(6).map_err(e)?,
        updated_by: r.try_get(7).map_err(e)?,
    })
}
