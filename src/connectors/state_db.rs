//! State kept in a database by connectors (the FHIR sync state, the HTTP source's
//! idempotency keys): PostgreSQL when several machines share it, SQLite (a file beside the
//! pipeline) by default. Both through sqlx's `Any` driver, so a store writes each statement
//! once per dialect.

/// Where the sync state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// A PostgreSQL URL (`postgres://…`).
    Postgres(String),
    /// A SQLite database file (created when missing).
    Sqlite(std::path::PathBuf),
}

impl StateLocation {
    /// `postgres://…`/`postgresql://…` is PostgreSQL; `sqlite:PATH` or a bare path is a
    /// SQLite file.
    pub fn parse(s: &str) -> StateLocation {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StateLocation::Postgres(s.to_string())
        } else {
            let path = s.strip_prefix("sqlite://").or(s.strip_prefix("sqlite:"));
            StateLocation::Sqlite(path.unwrap_or(s).into())
        }
    }
}

impl std::fmt::Display for StateLocation {
    // The PostgreSQL URL may hold a password: shown without its credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::Postgres(url) => {
                let host = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
                let host = host
                    .trim_start_matches("postgresql://")
                    .trim_start_matches("postgres://");
                write!(f, "postgres://{host}")
            }
            StateLocation::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
        }
    }
}

/// How a SQLite store commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commits {
    /// Each commit is fsynced (SQLite's default): state that must survive a power loss.
    Durable,
    /// WAL with `synchronous=NORMAL`: commits survive a crash of the process, and the last
    /// ones may be lost with the machine's power. For state whose loss only repeats work
    /// (idempotency keys: at-least-once holds), at a fraction of the cost.
    Relaxed,
}

/// Connects and creates the tables (`postgres` or `sqlite` statements, by backend). Returns
/// the pool and whether it is PostgreSQL. Errors name the location, never its password.
pub async fn open(
    at: &StateLocation,
    lock: &str,
    postgres: &[&'static str],
    sqlite: &[&'static str],
    commits: Commits,
) -> Result<(sqlx::AnyPool, bool), String> {
    sqlx::any::install_default_drivers();
    let in_ctx = |e: sqlx::Error| format!("{at}: {e}");
    match at {
        StateLocation::Postgres(url) => {
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await
                .map_err(in_ctx)?;
            // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in PostgreSQL's
            // catalog: workers starting together take turns under an advisory lock.
            let mut tx = pool.begin().await.map_err(in_ctx)?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(lock)
                .execute(&mut *tx)
                .await
                .map_err(in_ctx)?;
            for &stmt in postgres {
                sqlx::query(stmt).execute(&mut *tx).await.map_err(in_ctx)?;
            }
            tx.commit().await.map_err(in_ctx)?;
            Ok((pool, true))
        }
        StateLocation::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("{at}: creating {}: {e}", dir.display()))?;
            }
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if commits == Commits::Relaxed {
                            sqlx::query("PRAGMA synchronous=NORMAL")
                                .execute(conn)
                                .await?;
                        }
                        Ok(())
                    })
                })
                // Absolute: a relative path would read as `sqlite://<host>/…`.
                .connect(&format!(
                    "sqlite://{}?mode=rwc",
                    std::path::absolute(path)
                        .map_err(|e| format!("{at}: {e}"))?
                        .display()
                ))
                .await
                .map_err(in_ctx)?;
            // WAL: readers do not block the writer, and the setting stays with the file.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(in_ctx)?;
            for &stmt in sqlite {
                sqlx::query(stmt).execute(&pool).await.map_err(in_ctx)?;
            }
            Ok((pool, false))
        }
    }
}
