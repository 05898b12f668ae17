//! Idempotency keys of an HTTP source: a request whose key was seen within the retention
//! window is answered with the first answer and not processed again. Keys live in SQLite
//! (a file beside the pipeline) or PostgreSQL (shared by several servers).
//!
//! A key is claimed before the request is processed, in one statement (no read-then-write
//! race between two servers): the claim wins when the key is new, expired, or held by a
//! request that has not finished within `STALE_S` (its server died mid-request; the sender
//! is retrying). A request that ends with a retryable answer (429, 503) releases its key.
//! The body's SHA-256 is kept, so a key reused for a different body is refused.

use std::time::Duration;

use sqlx::Row;

use super::source_config::IdempotencyPlan;
use crate::connectors::state_db;

/// A claim older than this whose request never finished is taken over.
const STALE_S: i64 = 60;

struct Dialect {
    create: [&'static str; 1],
    claim: &'static str,
    get: &'static str,
    finish: &'static str,
    release: &'static str,
    purge: &'static str,
}

// Times are Unix seconds written by plexus, so both dialects compare plain integers.
const POSTGRES: Dialect = Dialect {
    create: ["CREATE TABLE IF NOT EXISTS plexus_idempotency (
        scope text NOT NULL,
        key text NOT NULL,
        body_sha256 text NOT NULL,
        status integer NOT NULL,
        response text,
        created_at bigint NOT NULL,
        PRIMARY KEY (scope, key))"],
    claim: "INSERT INTO plexus_idempotency (scope, key, body_sha256, status, response, created_at)
        VALUES ($1, $2, $3, 0, NULL, $4)
        ON CONFLICT (scope, key) DO UPDATE
          SET body_sha256 = EXCLUDED.body_sha256, status = 0, response = NULL,
              created_at = EXCLUDED.created_at
          WHERE plexus_idempotency.created_at < $5
             OR (plexus_idempotency.status = 0 AND plexus_idempotency.created_at < $6)
        RETURNING status",
    get: "SELECT body_sha256, status, response FROM plexus_idempotency
        WHERE scope = $1 AND key = $2",
    finish: "UPDATE plexus_idempotency SET status = $3, response = $4
        WHERE scope = $1 AND key = $2",
    release: "DELETE FROM plexus_idempotency WHERE scope = $1 AND key = $2 AND status = 0",
    purge: "DELETE FROM plexus_idempotency WHERE created_at < $1",
};

const SQLITE: Dialect = Dialect {
    create: ["CREATE TABLE IF NOT EXISTS plexus_idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        body_sha256 TEXT NOT NULL,
        status INTEGER NOT NULL,
        response TEXT,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (scope, key))"],
    claim: "INSERT INTO plexus_idempotency (scope, key, body_sha256, status, response, created_at)
        VALUES (?1, ?2, ?3, 0, NULL, ?4)
        ON CONFLICT (scope, key) DO UPDATE
          SET body_sha256 = excluded.body_sha256, status = 0, response = NULL,
              created_at = excluded.created_at
          WHERE plexus_idempotency.created_at < ?5
             OR (plexus_idempotency.status = 0 AND plexus_idempotency.created_at < ?6)
        RETURNING status",
    get: "SELECT body_sha256, status, response FROM plexus_idempotency
        WHERE scope = ?1 AND key = ?2",
    finish: "UPDATE plexus_idempotency SET status = ?3, response = ?4
        WHERE scope = ?1 AND key = ?2",
    release: "DELETE FROM plexus_idempotency WHERE scope = ?1 AND key = ?2 AND status = 0",
    purge: "DELETE FROM plexus_idempotency WHERE created_at < ?1",
};

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: process the request, then `finish`.
    New,
    /// Seen and answered: this answer again.
    Done { status: u16, response: String },
    /// Another request with this key is being processed.
    InProgress,
    /// The key was used for a different body.
    Mismatch,
}

pub struct KeyStore {
    pool: sqlx::AnyPool,
    sql: &'static Dialect,
    scope: String,
    retention: Duration,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn db(e: sqlx::Error) -> String {
    format!("idempotency store: {e}")
}

impl KeyStore {
    pub async fn open(plan: &IdempotencyPlan, scope: &str) -> Result<KeyStore, String> {
        let at = plan.store.location()?;
        let (pool, postgres) = state_db::open(
            &at,
            "plexus_idempotency_schema",
            &POSTGRES.create,
            &SQLITE.create,
            state_db::Commits::Relaxed,
        )
        .await?;
        let store = KeyStore {
            pool,
            sql: if postgres { &POSTGRES } else { &SQLITE },
            scope: scope.to_string(),
            retention: plan.retention,
        };
        store.purge().await?;
        Ok(store)
    }

    /// Claims `key` for a request whose body hashes to `body_sha256`.
    pub async fn claim(&self, key: &str, body_sha256: &str) -> Result<Claim, String> {
        let t = now();
        let won = sqlx::query(self.sql.claim)
            .bind(&self.scope)
            .bind(key)
            .bind(body_sha256)
            .bind(t)
            .bind(t - self.retention.as_secs() as i64)
            .bind(t - STALE_S)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        if won.is_some() {
            return Ok(Claim::New);
        }
        let row = sqlx::query(self.sql.get)
            .bind(&self.scope)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        // Gone between the two statements (purged): claim again.
        let Some(row) = row else {
            return Box::pin(self.claim(key, body_sha256)).await;
        };
        let hash: String = row.try_get(0).map_err(db)?;
        let status: i32 = row.try_get(1).map_err(db)?;
        let response: Option<String> = row.try_get(2).map_err(db)?;
        Ok(if hash != body_sha256 {
            Claim::Mismatch
        } else if status == 0 {
            Claim::InProgress
        } else {
            Claim::Done {
                status: status as u16,
                response: response.unwrap_or_default(),
            }
        })
    }

    /// Records the answer given to the key's request.
    pub async fn finish(&self, key: &str, status: u16, response: &str) -> Result<(), String> {
        sqlx::query(self.sql.finish)
            .bind(&self.scope)
            .bind(key)
            .bind(status as i32)
            .bind(response)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Forgets a claim whose request may be sent again (it was not accepted).
    pub async fn release(&self, key: &str) -> Result<(), String> {
        sqlx::query(self.sql.release)
            .bind(&self.scope)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Deletes keys past the retention window.
    pub async fn purge(&self) -> Result<u64, String> {
        let r = sqlx::query(self.sql.purge)
            .bind(now() - self.retention.as_secs() as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::http::source_config::KeyStorePlan;

    #[tokio::test]
    async fn keys_are_claimed_once_answered_again_and_checked_against_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let plan = IdempotencyPlan {
            header: "Idempotency-Key".into(),
            field: None,
            retention: Duration::from_secs(3600),
            store: KeyStorePlan::Sqlite(dir.path().join("keys.db")),
        };
        let a = KeyStore::open(&plan, "p/events").await.unwrap();
        assert_eq!(a.claim("k1", "h1").await.unwrap(), Claim::New);
        assert_eq!(a.claim("k1", "h1").await.unwrap(), Claim::InProgress);
        assert_eq!(a.claim("k1", "h2").await.unwrap(), Claim::Mismatch);
        a.finish("k1", 202, r#"{"status":"accepted"}"#)
            .await
            .unwrap();
        assert_eq!(
            a.claim("k1", "h1").await.unwrap(),
            Claim::Done {
                status: 202,
                response: r#"{"status":"accepted"}"#.into()
            }
        );
        // Another scope (pipeline or path) has its own keys; a released key is new again.
        let b = KeyStore::open(&plan, "p/other").await.unwrap();
        assert_eq!(b.claim("k1", "h1").await.unwrap(), Claim::New);
        b.release("k1").await.unwrap();
        assert_eq!(b.claim("k1", "h1").await.unwrap(), Claim::New);
        // Past the retention, a key is forgotten.
        let short = KeyStore {
            retention: Duration::ZERO,
            ..KeyStore::open(&plan, "p/events").await.unwrap()
        };
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(short.claim("k1", "h1").await.unwrap(), Claim::New);
    }
}
