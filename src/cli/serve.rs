//! `plexus serve` and `plexus keys`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::serve::config::ServerFile;
use crate::serve::jwt::JwtConfig;
use crate::serve::{ServeOptions, keys, registry::Registry};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings from a file (see `serve::config`); flags given here win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the API listens [default: 127.0.0.1:8700].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// State directory: the registry (SQLite) and each integration's files.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Host every pipeline in DIR too (reloaded when files change).
    #[arg(long, value_name = "DIR")]
    pipelines: Option<PathBuf>,
    /// A PostgreSQL URL for a registry shared by several servers (default: SQLite in --state).
    #[arg(long, env = "PLEXUS_REGISTRY", value_name = "URL")]
    registry: Option<String>,
    /// API requests per second per key [default: 20].
    #[arg(long)]
    api_rate: Option<u32>,
    /// Requests a key may make at once above its rate [default: 40].
    #[arg(long)]
    api_burst: Option<u32>,
    /// How often the registry and the directory are compared with what runs [default: 2s].
    #[arg(long, value_name = "DURATION")]
    reconcile_every: Option<String>,
    /// File holding the master key (64 hex digits) that seals secrets; default: the
    /// PLEXUS_MASTER_KEY environment variable.
    #[arg(long, value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    /// How often each integration's downstream systems are checked, unless its
    /// `monitoring.healthCheckInterval` says otherwise [default: 30s].
    #[arg(long, value_name = "DURATION")]
    health_every: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept JWT bearer tokens verified with this JWKS (a file or an https:// URL).
    #[arg(long, value_name = "FILE|URL")]
    jwks: Option<String>,
    /// The issuer (`iss`) a JWT must name.
    #[arg(long, requires = "jwks")]
    jwt_issuer: Option<String>,
    /// The audience (`aud`) a JWT must name.
    #[arg(long, requires = "jwks")]
    jwt_audience: Option<String>,
    /// Requests per second per sender on each hosted integration's HTTP ingest route that
    /// sets no `rate_limit` of its own.
    #[arg(long)]
    ingest_rate: Option<u32>,
    /// The burst above --ingest-rate [default: the rate].
    #[arg(long, requires = "ingest_rate")]
    ingest_burst: Option<u32>,
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let file = match &args.config {
        Some(p) => ServerFile::load(p).map_err(anyhow::Error::msg)?,
        None => ServerFile::default(),
    };
    let duration = |flag: &str, v: Option<String>, default: &str| {
        crate::config::parse_duration(v.as_deref().unwrap_or(default))
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
    };
    let state = args
        .state
        .or(file.state)
        .context("--state DIR (or `state:` in --config) is needed")?;
    let jwt = match (args.jwks, file.jwt) {
        (Some(jwks), _) => Some(JwtConfig {
            jwks,
            issuer: args.jwt_issuer,
            audience: args.jwt_audience,
        }),
        (None, Some(j)) => Some(JwtConfig {
            jwks: j.jwks,
            issuer: args.jwt_issuer.or(j.issuer),
            audience: args.jwt_audience.or(j.audience),
        }),
        (None, None) => None,
    };
    let tls = match (args.tls_cert, args.tls_key, file.tls) {
        (Some(c), Some(k), _) => Some((c, k)),
        (_, _, Some(t)) => Some((t.cert, t.key)),
        _ => None,
    };
    crate::serve::run(ServeOptions {
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or(([127, 0, 0, 1], 8700).into()),
        state,
        registry: args.registry.or(file.registry),
        pipelines: args.pipelines.or(file.pipelines),
        api_rate: args.api_rate.or(file.api.rate).unwrap_or(20),
        api_burst: args.api_burst.or(file.api.burst).unwrap_or(40),
        max_body_bytes: file.api.max_body_bytes.unwrap_or(2 << 20),
        reconcile_every: duration(
            "--reconcile-every",
            args.reconcile_every.or(file.reconcile_every),
            "2s",
        )?,
        master_key_file: args.master_key_file.or(file.master_key_file),
        health_every: duration(
            "--health-every",
            args.health_every.or(file.health_every),
            "30s",
        )?,
        jwt,
        tls,
        ingest_rate: match (args.ingest_rate, file.ingest) {
            (Some(r), _) => Some((r, args.ingest_burst.unwrap_or(r))),
            (None, Some(i)) => Some((i.rate, i.burst.unwrap_or(i.rate))),
            (None, None) => None,
        },
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates an API key; prints it once (alone on the last line of stdout).
    Create {
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        #[arg(long, env = "PLEXUS_REGISTRY", value_name = "URL")]
        registry: Option<String>,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
        /// May read dead letters' original messages (PHI).
        #[arg(long)]
        phi: bool,
        /// Expires after this long (e.g. 90d).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Lists keys (never their secrets).
    List {
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        #[arg(long, env = "PLEXUS_REGISTRY", value_name = "URL")]
        registry: Option<String>,
    },
    /// Re-seals every stored secret under the current master key (PLEXUS_MASTER_KEY or
    /// --master-key-file), opening them with PLEXUS_MASTER_KEY_OLD (comma-separated).
    Rotate {
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        #[arg(long, env = "PLEXUS_REGISTRY", value_name = "URL")]
        registry: Option<String>,
        #[arg(long, value_name = "FILE")]
        master_key_file: Option<PathBuf>,
    },
    /// Revokes a key by its id.
    Revoke {
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        #[arg(long, env = "PLEXUS_REGISTRY", value_name = "URL")]
        registry: Option<String>,
        id: String,
    },
}

fn open(
    state: &std::path::Path,
    registry: Option<String>,
) -> Result<(tokio::runtime::Runtime, Registry)> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let options = ServeOptions {
        listen: ([127, 0, 0, 1], 0).into(),
        state: state.to_path_buf(),
        registry,
        pipelines: None,
        api_rate: 1,
        api_burst: 1,
        max_body_bytes: 0,
        reconcile_every: std::time::Duration::from_secs(1),
        master_key_file: None,
        health_every: std::time::Duration::from_secs(30),
        jwt: None,
        tls: None,
        ingest_rate: None,
    };
    let registry = rt
        .block_on(Registry::open(&options.registry_location()))
        .map_err(anyhow::Error::msg)?;
    Ok((rt, registry))
}

pub fn keys(cmd: KeysCommand) -> Result<ExitCode> {
    match cmd {
        KeysCommand::Create {
            state,
            registry,
            role,
            name,
            phi,
            expires_in,
        } => {
            let role = keys::Role::parse(&role).map_err(anyhow::Error::msg)?;
            let expires = expires_in
                .as_deref()
                .map(crate::config::parse_duration)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?;
            let (rt, registry) = open(&state, registry)?;
            let (row, key) = rt
                .block_on(keys::create(&registry, &name, role, phi, expires))
                .map_err(anyhow::Error::msg)?;
            rt.block_on(registry.audit(
                "cli",
                "key.create",
                &row.id,
                &format!("role {}, phi {}", row.role, row.phi),
                "local",
                "-",
            ))
            .map_err(anyhow::Error::msg)?;
            eprintln!(
                "created key {} ({}, role {}); it is shown once — store it now:",
                row.id, row.name, row.role
            );
            println!("{key}");
        }
        KeysCommand::List { state, registry } => {
            let (rt, registry) = open(&state, registry)?;
            for k in rt.block_on(registry.keys()).map_err(anyhow::Error::msg)? {
                let status = if k.revoked_at.is_some() {
                    "revoked"
                } else if k
                    .expires_at
                    .is_some_and(|t| t <= crate::serve::registry::now_ms())
                {
                    "expired"
                } else {
                    "active"
                };
                println!("{}\t{}\t{}\t{}", k.id, k.role, status, k.name);
            }
        }
        KeysCommand::Rotate {
            state,
            registry,
            master_key_file,
        } => {
            let keyring = crate::serve::secrets::Keyring::from_env(master_key_file.as_deref())
                .map_err(anyhow::Error::msg)?
                .ok_or_else(|| {
                    anyhow::anyhow!("no master key: set PLEXUS_MASTER_KEY or --master-key-file")
                })?;
            let (rt, registry) = open(&state, registry)?;
            let n = rt
                .block_on(crate::serve::secrets::rotate(&registry, &keyring))
                .map_err(anyhow::Error::msg)?;
            rt.block_on(registry.audit(
                "cli",
                "secrets.rotate",
                &keyring.current.id,
                &format!("{n} secrets re-sealed"),
                "local",
                "-",
            ))
            .map_err(anyhow::Error::msg)?;
            eprintln!(
                "re-sealed {n} secret(s) under master key {}",
                keyring.current.id
            );
        }
        KeysCommand::Revoke {
            state,
            registry,
            id,
        } => {
            let (rt, registry) = open(&state, registry)?;
            if !rt
                .block_on(registry.revoke_key(&id))
                .map_err(anyhow::Error::msg)?
            {
                eprintln!("error: no active key {id}");
                return Ok(ExitCode::from(1));
            }
            rt.block_on(registry.audit("cli", "key.revoke", &id, "", "local", "-"))
                .map_err(anyhow::Error::msg)?;
            eprintln!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
