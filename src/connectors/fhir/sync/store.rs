//! Sync state in a database: one row per (integration, entity type, entity key) with the
//! versions last agreed on both sides, the status, retry bookkeeping, the open conflict and
//! a lease; an append-only audit table of resolutions; and the merges (ADT^A40) that point a
//! merged-away entity at its survivor.
//!
//! Two backends behind one store: PostgreSQL (workers on several machines share it) and
//! SQLite (the embedded default: a file beside the pipeline, for one machine's workers).
//! The statements differ only in dialect (placeholders, clock, types), so each is written
//! once per backend in a [`Dialect`] and run through sqlx's `Any` driver.
//!
//! The lease is the lock: `acquire` takes it when it is free, expired or already ours, in
//! one statement (no read-then-write race), and every later write of the row checks that
//! the lease is still ours — a worker whose lease expired mid-sync cannot overwrite the row
//! another worker now holds (fencing).

use std::time::Duration;

use serde_json::Value;
use sqlx::Row;

use super::{Status, SyncError};

/// The statements of one backend. Parameters: `acquire` (integration, type, key, owner,
/// lease seconds); `save` (integration, type, key, owner, status, local hash, local
/// resource, external id, external version, conflict, synced, retry-in seconds).
struct Dialect {
    create: [&'static str; 3],
    acquire: &'static str,
    release: &'static str,
    get: &'static str,
    save: &'static str,
    audit: &'static str,
    audit_log: &'static str,
    list: &'static str,
    merge: &'static str,
    unmerge: &'static str,
    survivor: &'static str,
    by_external_id: &'static str,
}

const POSTGRES: Dialect = Dialect {
    create: [
        "CREATE TABLE IF NOT EXISTS plexus_sync_state (
            integration text NOT NULL,
            entity_type text NOT NULL,
            entity_key text NOT NULL,
            local_hash text,
            local_resource text,
            external_id text,
            external_version text,
            last_synced_at timestamptz,
            status text NOT NULL DEFAULT 'out_of_sync',
            retry_count integer NOT NULL DEFAULT 0,
            next_retry_at timestamptz,
            conflict text,
            lease_owner text,
            lease_until timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (integration, entity_type, entity_key))",
        "CREATE TABLE IF NOT EXISTS plexus_sync_audit (
            id bigserial PRIMARY KEY,
            integration text NOT NULL,
            entity_type text NOT NULL,
            entity_key text NOT NULL,
            action text NOT NULL,
            actor text NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            details text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS plexus_sync_merge (
            integration text NOT NULL,
            entity_type text NOT NULL,
            entity_key text NOT NULL,
            survivor_key text NOT NULL,
            merged_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (integration, entity_type, entity_key))",
    ],
    acquire: "INSERT INTO plexus_sync_state (integration, entity_type, entity_key, lease_owner, lease_until)
        VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
        ON CONFLICT (integration, entity_type, entity_key) DO UPDATE
          SET lease_owner = EXCLUDED.lease_owner, lease_until = EXCLUDED.lease_until
          WHERE plexus_sync_state.lease_owner IS NULL
             OR plexus_sync_state.lease_until < now()
             OR plexus_sync_state.lease_owner = EXCLUDED.lease_owner
        RETURNING lease_owner",
    release: "UPDATE plexus_sync_state SET lease_owner = NULL, lease_until = NULL
        WHERE integration = $1 AND entity_type = $2 AND entity_key = $3 AND lease_owner = $4",
    get: "SELECT local_hash, local_resource, external_id, external_version, status,
               retry_count, conflict
        FROM plexus_sync_state
        WHERE integration = $1 AND entity_type = $2 AND entity_key = $3",
    save: "UPDATE plexus_sync_state SET
            status = $5,
            local_hash = COALESCE($6, local_hash),
            local_resource = COALESCE($7, local_resource),
            external_id = COALESCE($8, external_id),
            external_version = COALESCE($9, external_version),
            conflict = $10,
            last_synced_at = CASE WHEN $11 THEN now() ELSE last_synced_at END,
            retry_count = CASE WHEN $12::float8 IS NULL THEN 0 ELSE retry_count + 1 END,
            next_retry_at = CASE WHEN $12::float8 IS NULL THEN NULL
                                 ELSE now() + make_interval(secs => $12::float8) END,
            updated_at = now()
        WHERE integration = $1 AND entity_type = $2 AND entity_key = $3
          AND lease_owner = $4 AND lease_until >= now()",
    audit: "INSERT INTO plexus_sync_audit (integration, entity_type, entity_key, action, actor, details)
        VALUES ($1, $2, $3, $4, $5, $6)",
    audit_log: "SELECT action, actor, details FROM plexus_sync_audit
        WHERE integration = $1 AND entity_type = $2 AND entity_key = $3 ORDER BY id",
    list: "SELECT entity_type, entity_key FROM plexus_sync_state
        WHERE integration = $1 AND status = $2 ORDER BY entity_type, entity_key",
    merge: "INSERT INTO plexus_sync_merge (integration, entity_type, entity_key, survivor_key)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (integration, entity_type, entity_key) DO UPDATE
          SET survivor_key = EXCLUDED.survivor_key, merged_at = now()",
    unmerge: "DELETE FROM plexus_sync_merge
        WHERE integration = $1 AND entity_type = $2 AND entity_key = $3",
    survivor: "SELECT survivor_key FROM plexus_sync_merge
        WHERE integration = $1 AND entity_type = $2 AND entity_key = $3",
    by_external_id: "SELECT entity_key FROM plexus_sync_state
        WHERE integration = $1 AND entity_type = $2 AND external_id = $3
        ORDER BY entity_key LIMIT 1",
};

// SQLite: `?N` placeholders (numbered, so a parameter may be used twice); the lease clock is
// Unix seconds as REAL (julianday is SQLite's sub-second clock), other times ISO 8601 text.
const SQLITE: Dialect = Dialect {
    create: [
        "CREATE TABLE IF NOT EXISTS plexus_sync_state (
            integration TEXT NOT NULL,
            entity_type TEXT NOT NULL,
            entity_key TEXT NOT NULL,
            local_hash TEXT,
            local_resource TEXT,
            external_id TEXT,
            external_version TEXT,
            last_synced_at TEXT,
            status TEXT NOT NULL DEFAULT 'out_of_sync',
            retry_count INTEGER NOT NULL DEFAULT 0,
            next_retry_at TEXT,
            conflict TEXT,
            lease_owner TEXT,
            lease_until REAL,
            updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            PRIMARY KEY (integration, entity_type, entity_key))",
        "CREATE TABLE IF NOT EXISTS plexus_sync_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            integration TEXT NOT NULL,
            entity_type TEXT NOT NULL,
            entity_key TEXT NOT NULL,
            action TEXT NOT NULL,
            actor TEXT NOT NULL,
            at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            details TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS plexus_sync_merge (
            integration TEXT NOT NULL,
            entity_type TEXT NOT NULL,
            entity_key TEXT NOT NULL,
            survivor_key TEXT NOT NULL,
            merged_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            PRIMARY KEY (integration, entity_type, entity_key))",
    ],
    acquire: "INSERT INTO plexus_sync_state (integration, entity_type, entity_key, lease_owner, lease_until)
        VALUES (?1, ?2, ?3, ?4, ((julianday('now') - 2440587.5) * 86400.0) + ?5)
        ON CONFLICT (integration, entity_type, entity_key) DO UPDATE
          SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until
          WHERE plexus_sync_state.lease_owner IS NULL
             OR plexus_sync_state.lease_until < ((julianday('now') - 2440587.5) * 86400.0)
             OR plexus_sync_state.lease_owner = excluded.lease_owner
        RETURNING lease_owner",
    release: "UPDATE plexus_sync_state SET lease_owner = NULL, lease_until = NULL
        WHERE integration = ?1 AND entity_type = ?2 AND entity_key = ?3 AND lease_owner = ?4",
    get: "SELECT local_hash, local_resource, external_id, external_version, status,
               retry_count, conflict
        FROM plexus_sync_state
        WHERE integration = ?1 AND entity_type = ?2 AND entity_key = ?3",
    save: "UPDATE plexus_sync_state SET
            status = ?5,
            local_hash = COALESCE(?6, local_hash),
            local_resource = COALESCE(?7, local_resource),
            external_id = COALESCE(?8, external_id),
            external_version = COALESCE(?9, external_version),
            conflict = ?10,
            last_synced_at = CASE WHEN ?11 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                                  ELSE last_synced_at END,
            retry_count = CASE WHEN ?12 IS NULL THEN 0 ELSE retry_count + 1 END,
            next_retry_at = CASE WHEN ?12 IS NULL THEN NULL
                                 ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || ?12 || ' seconds') END,
            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        WHERE integration = ?1 AND entity_type = ?2 AND entity_key = ?3
          AND lease_owner = ?4 AND lease_until >= ((julianday('now') - 2440587.5) * 86400.0)",
    audit: "INSERT INTO plexus_sync_audit (integration, entity_type, entity_key, action, actor, details)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    audit_log: "SELECT action, actor, details FROM plexus_sync_audit
        WHERE integration = ?1 AND entity_type = ?2 AND entity_key = ?3 ORDER BY id",
    list: "SELECT entity_type, entity_key FROM plexus_sync_state
        WHERE integration = ?1 AND status = ?2 ORDER BY entity_type, entity_key",
    merge: "INSERT INTO plexus_sync_merge (integration, entity_type, entity_key, survivor_key)
        VALUES (?1, ?2, ?3, ?4)
        ON CONFLICT (integration, entity_type, entity_key) DO UPDATE
          SET survivor_key = excluded.survivor_key,
              merged_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    unmerge: "DELETE FROM plexus_sync_merge
        WHERE integration = ?1 AND entity_type = ?2 AND entity_key = ?3",
    survivor: "SELECT survivor_key FROM plexus_sync_merge
        WHERE integration = ?1 AND entity_type = ?2 AND entity_key = ?3",
    by_external_id: "SELECT entity_key FROM plexus_sync_state
        WHERE integration = ?1 AND entity_type = ?2 AND external_id = ?3
        ORDER BY entity_key LIMIT 1",
};

/// One entity's sync state.
#[derive(Debug, Clone, Default)]
pub struct SyncRecord {
    /// The local resource last pushed or adopted (canonical JSON hash and the resource).
    pub local_hash: Option<String>,
    pub local_resource: Option<Value>,
    pub external_id: Option<String>,
    /// The server's `versionId` both sides last agreed on.
    pub external_version: Option<String>,
    pub status: Option<Status>,
    pub retry_count: i32,
    /// The open conflict: fields, both sides, when detected.
    pub conflict: Option<Value>,
}

/// What a sync writes back into the row.
#[derive(Debug, Clone)]
pub struct Update<'a> {
    pub status: Status,
    pub local_hash: Option<&'a str>,
    pub local_resource: Option<&'a Value>,
    pub external_id: Option<&'a str>,
    pub external_version: Option<&'a str>,
    pub conflict: Option<&'a Value>,
    /// Set `last_synced_at` to now (a successful exchange with the server).
    pub synced: bool,
    /// A failure: count it and schedule the next try.
    pub retry_in: Option<Duration>,
}

impl<'a> Update<'a> {
    /// Both sides agree on `local` at the server's `external_version`.
    pub fn in_sync(
        local_hash: &'a str,
        local: &'a Value,
        external_id: Option<&'a str>,
        external_version: Option<&'a str>,
    ) -> Self {
        Update {
            status: Status::InSync,
            local_hash: Some(local_hash),
            local_resource: Some(local),
            external_id,
            external_version,
            conflict: None,
            synced: true,
            retry_in: None,
        }
    }
}

pub use crate::connectors::state_db::StateLocation;

#[derive(Clone)]
pub struct SyncStore {
    pool: sqlx::AnyPool,
    sql: &'static Dialect,
}

/// A statement whose first three parameters are the entity's key (integration, type, key).
fn keyed<'q>(
    sql: &'static str,
    key: (&'q str, &'q str, &'q str),
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(sql).bind(key.0).bind(key.1).bind(key.2)
}

fn db(e: sqlx::Error) -> SyncError {
    SyncError::Store(e.to_string())
}

impl SyncStore {
    /// Opens (and creates the tables of) the sync state at a URL or path (see
    /// [`StateLocation::parse`]).
    pub async fn connect(url: &str) -> Result<Self, SyncError> {
        Self::open(&StateLocation::parse(url)).await
    }

    pub async fn open(at: &StateLocation) -> Result<Self, SyncError> {
        let (pool, postgres) = crate::connectors::state_db::open(
            at,
            "plexus_sync_schema",
            &POSTGRES.create,
            &SQLITE.create,
            crate::connectors::state_db::Commits::Durable,
        )
        .await
        .map_err(SyncError::Store)?;
        let sql = if postgres { &POSTGRES } else { &SQLITE };
        Ok(SyncStore { pool, sql })
    }

    /// Takes the entity's lease for `ttl` if it is free, expired or already `owner`'s.
    pub async fn acquire(
        &self,
        key: (&str, &str, &str),
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, SyncError> {
        let row = keyed(self.sql.acquire, key)
            .bind(owner)
            .bind(ttl.as_secs_f64())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }

    /// Gives the lease back (only if still ours).
    pub async fn release(&self, key: (&str, &str, &str), owner: &str) -> Result<(), SyncError> {
        keyed(self.sql.release, key)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub async fn get(&self, key: (&str, &str, &str)) -> Result<Option<SyncRecord>, SyncError> {
        let row = keyed(self.sql.get, key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let Some(r) = row else { return Ok(None) };
        let json = |v: Option<String>| v.and_then(|t| serde_json::from_str(&t).ok());
        let status: String = r.try_get("status").map_err(db)?;
        Ok(Some(SyncRecord {
            local_hash: r.try_get("local_hash").map_err(db)?,
            local_resource: json(r.try_get("local_resource").map_err(db)?),
            external_id: r.try_get("external_id").map_err(db)?,
            external_version: r.try_get("external_version").map_err(db)?,
            status: Status::parse(&status),
            retry_count: r.try_get("retry_count").map_err(db)?,
            conflict: json(r.try_get("conflict").map_err(db)?),
        }))
    }

    /// Writes the outcome of a sync, if `owner` still holds the lease (else
    /// [`SyncError::LeaseLost`]: another worker took over after our lease expired).
    pub async fn save(
        &self,
        key: (&str, &str, &str),
        owner: &str,
        u: &Update<'_>,
    ) -> Result<(), SyncError> {
        let text = |v: Option<&Value>| v.map(|v| v.to_string());
        let done = keyed(self.sql.save, key)
            .bind(owner)
            .bind(u.status.as_str())
            .bind(u.local_hash)
            .bind(text(u.local_resource))
            .bind(u.external_id)
            .bind(u.external_version)
            .bind(text(u.conflict))
            .bind(u.synced)
            .bind(u.retry_in.map(|d| d.as_secs_f64()))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(SyncError::LeaseLost);
        }
        Ok(())
    }

    /// Appends to the audit log: who did what to which entity, when.
    pub async fn audit(
        &self,
        key: (&str, &str, &str),
        action: &str,
        actor: &str,
        details: &Value,
    ) -> Result<(), SyncError> {
        keyed(self.sql.audit, key)
            .bind(action)
            .bind(actor)
            .bind(details.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The audit entries of one entity, oldest first: (action, actor, details).
    pub async fn audit_log(
        &self,
        key: (&str, &str, &str),
    ) -> Result<Vec<(String, String, Value)>, SyncError> {
        let rows = keyed(self.sql.audit_log, key)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let details: String = r.try_get("details").map_err(db)?;
                Ok((
                    r.try_get("action").map_err(db)?,
                    r.try_get("actor").map_err(db)?,
                    serde_json::from_str(&details).unwrap_or(Value::Null),
                ))
            })
            .collect()
    }

    /// Entities of an integration in `status` (e.g. open conflicts): (type, key).
    pub async fn list(
        &self,
        integration: &str,
        status: Status,
    ) -> Result<Vec<(String, String)>, SyncError> {
        let rows = sqlx::query(self.sql.list)
            .bind(integration)
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
            .collect()
    }
    /// Records that `key`'s entity was merged into `survivor` (an ADT^A40): later messages
    /// on the merged-away identifier follow the survivor.
    pub async fn merge(&self, key: (&str, &str, &str), survivor: &str) -> Result<(), SyncError> {
        keyed(self.sql.merge, key)
            .bind(survivor)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Forgets `key`'s merge (it survives a later merge): whether there was one.
    pub async fn unmerge(&self, key: (&str, &str, &str)) -> Result<bool, SyncError> {
        let done = keyed(self.sql.unmerge, key)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    /// The entity `key`'s entity was merged into, one step (see `Syncer::survivor`).
    pub async fn survivor(&self, key: (&str, &str, &str)) -> Result<Option<String>, SyncError> {
        let row = keyed(self.sql.survivor, key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get(0).map_err(db)).transpose()
    }

    /// The entity the server knows by `external_id`.
    pub async fn by_external_id(
        &self,
        integration: &str,
        entity_type: &str,
        external_id: &str,
    ) -> Result<Option<String>, SyncError> {
        let row = sqlx::query(self.sql.by_external_id)
            .bind(integration)
            .bind(entity_type)
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get(0).map_err(db)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_locations_read_urls_and_paths_and_show_no_password() {
        let pg = StateLocation::parse("postgres://plexus:pw-secret@db.internal:5432/sync");
        assert!(matches!(pg, StateLocation::Postgres(_)));
        assert_eq!(pg.to_string(), "postgres://db.internal:5432/sync");
        assert_eq!(
            StateLocation::parse("sqlite:state/sync.db"),
            StateLocation::Sqlite("state/sync.db".into())
        );
        assert_eq!(
            StateLocation::parse("/var/lib/plexus/sync.db"),
            StateLocation::Sqlite("/var/lib/plexus/sync.db".into())
        );
    }
}
