//! Window state checkpoints: a directory of JSON snapshots (the embedded default) or a
//! PostgreSQL table. A snapshot is taken at every barrier, after the rows before it were
//! aggregated and before the barrier is acknowledged — so the committed source offsets and
//! the window counts always describe the same records, and a restart neither loses nor
//! double-counts a window's rows.

use std::path::PathBuf;

use crate::connectors::ConnectorError;
use crate::connectors::monitoring::config::StateStore;

pub enum WindowStateStore {
    Dir(PathBuf),
    Postgres {
        pool: sqlx::PgPool,
        handle: tokio::runtime::Handle,
    },
}

/// The table, created when missing.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS plexus_window_state (
    pipeline text NOT NULL,
    instance text NOT NULL,
    window_name text NOT NULL,
    state bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, instance, window_name))";

impl WindowStateStore {
    pub async fn open(store: &StateStore) -> Result<Self, ConnectorError> {
        match store {
            StateStore::Dir(d) => Ok(WindowStateStore::Dir(d.clone())),
            StateStore::Postgres { url_env } => {
                let url = std::env::var(url_env).map_err(|_| {
                    ConnectorError::Other(format!(
                        "window state in PostgreSQL: set {url_env} to the connection URL"
                    ))
                })?;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&url)
                    .await
                    .map_err(|e| ConnectorError::Other(format!("window state: {e}")))?;
                sqlx::query(CREATE)
                    .execute(&pool)
                    .await
                    .map_err(|e| ConnectorError::Other(format!("window state: {e}")))?;
                Ok(WindowStateStore::Postgres {
                    pool,
                    handle: tokio::runtime::Handle::current(),
                })
            }
        }
    }

    fn file(dir: &std::path::Path, pipeline: &str, instance: &str, window: &str) -> PathBuf {
        dir.join(format!("{pipeline}.{instance}.{window}.json"))
    }

    /// The last snapshot, if any. Blocking: call from a blocking context.
    pub fn load(
        &self,
        pipeline: &str,
        instance: &str,
        window: &str,
    ) -> Result<Option<Vec<u8>>, ConnectorError> {
        match self {
            WindowStateStore::Dir(d) => {
                let p = Self::file(d, pipeline, instance, window);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(ConnectorError::Io {
                        path: p.display().to_string(),
                        source,
                    }),
                }
            }
            WindowStateStore::Postgres { pool, handle } => {
                let q = sqlx::query_scalar::<_, Vec<u8>>(
                    "SELECT state FROM plexus_window_state
                     WHERE pipeline = $1 AND instance = $2 AND window_name = $3",
                )
                .bind(pipeline)
                .bind(instance)
                .bind(window)
                .fetch_optional(pool);
                block(handle, q).map_err(|e| ConnectorError::Other(format!("window state: {e}")))
            }
        }
    }

    /// Replaces the snapshot (atomically). Blocking.
    pub fn save(
        &self,
        pipeline: &str,
        instance: &str,
        window: &str,
        state: &[u8],
    ) -> Result<(), ConnectorError> {
        match self {
            WindowStateStore::Dir(d) => {
                let io = |source| ConnectorError::Io {
                    path: d.display().to_string(),
                    source,
                };
                std::fs::create_dir_all(d).map_err(io)?;
                let p = Self::file(d, pipeline, instance, window);
                let tmp = p.with_extension("json.tmp");
                std::fs::write(&tmp, state).map_err(io)?;
                std::fs::rename(&tmp, &p).map_err(io)
            }
            WindowStateStore::Postgres { pool, handle } => {
                let q = sqlx::query(
                    "INSERT INTO plexus_window_state (pipeline, instance, window_name, state)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (pipeline, instance, window_name)
                     DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
                )
                .bind(pipeline)
                .bind(instance)
                .bind(window)
                .bind(state)
                .execute(pool);
                block(handle, q)
                    .map(|_| ())
                    .map_err(|e| ConnectorError::Other(format!("window state: {e}")))
            }
        }
    }
}

/// Runs a future from synchronous code, whether or not on a runtime thread.
fn block<F: std::future::Future>(handle: &tokio::runtime::Handle, f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(|| handle.block_on(f)),
        Err(_) => handle.block_on(f),
    }
}
