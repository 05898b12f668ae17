//! `plexus serve`: many integrations in one process behind an authenticated REST API.
//!
//! What should run is data: the registry (integrations created over the API; SQLite in the
//! state directory, or PostgreSQL shared by several servers) and the pipelines directory
//! (every `*.yaml` in it, reloaded when it changes). `reconcile` brings what runs here in
//! line with it — after each API change and every few seconds, so a server sharing a
//! PostgreSQL registry picks up what another one changed. An update drains the old version
//! (as SIGTERM drains `plexus run`) and starts the new one; the others keep running.
//!
//! - `registry`: integrations with their version history, API keys, the audit log.
//! - `keys`: API keys and roles.
//! - `host`: the running integrations.
//! - `integration`: the API's view of an integration, and the checks before storing one.
//! - `secrets`: credentials sealed at rest, read by pipelines as `secret:NAME`.
//! - `events`: the live event stream (status, breakers, alerts, counts).
//! - `api`: routes, authentication, rate limits, request ids.

pub mod access;
pub mod api;
pub mod config;
pub mod events;
pub mod health;
pub mod host;
pub mod integration;
pub mod jwt;
pub mod keys;
pub mod ops;
pub mod registry;
pub mod secrets;
pub mod testing;
pub mod versions;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::connectors::http::https::{Peer, TlsListener};
use crate::connectors::state_db::StateLocation;
use host::{Host, Origin};
use registry::Registry;

/// `plexus serve`'s settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The state directory: the registry (SQLite), each registry integration's files.
    pub state: PathBuf,
    /// A PostgreSQL URL for a registry shared by several servers (default: SQLite in `state`).
    pub registry: Option<String>,
    /// Pipelines hosted from files, reloaded when they change.
    pub pipelines: Option<PathBuf>,
    /// Requests per second per API key, and the burst allowed above it.
    pub api_rate: u32,
    pub api_burst: u32,
    pub max_body_bytes: usize,
    /// How often the registry and the directory are compared with what runs.
    pub reconcile_every: Duration,
    /// The master key's file (else `PLEXUS_MASTER_KEY`); without one, secrets are refused.
    pub master_key_file: Option<PathBuf>,
    /// How often integrations' downstream systems are checked when their
    /// `monitoring.healthCheckInterval` does not say.
    pub health_every: Duration,
    /// JWT bearer tokens verified against this JWKS, beside API keys.
    pub jwt: Option<jwt::JwtConfig>,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The rate limit (requests per second, burst) of each hosted integration's HTTP ingest
    /// route that does not set its own `rate_limit`.
    pub ingest_rate: Option<(u32, u32)>,
}

impl ServeOptions {
    pub fn registry_location(&self) -> StateLocation {
        match &self.registry {
            Some(url) => StateLocation::parse(url),
            None => StateLocation::Sqlite(self.state.join("registry.db")),
        }
    }
}

/// What the API handlers share.
pub struct Server {
    pub options: ServeOptions,
    pub registry: Registry,
    pub host: Arc<Host>,
    pub limiter: governor::DefaultKeyedRateLimiter<String>,
    pub vault: Arc<secrets::Vault>,
    pub events: Arc<events::Events>,
    /// Set when the server stops: open event streams end (else graceful shutdown would wait
    /// for them forever).
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// One reconciliation at a time.
    reconciling: tokio::sync::Mutex<()>,
    pub jwt: Option<jwt::JwtVerifier>,
}

/// Runs the server until SIGTERM/SIGINT, then drains every integration.
pub fn run(options: ServeOptions) -> anyhow::Result<()> {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?,
    );
    std::fs::create_dir_all(&options.state)
        .with_context(|| format!("creating {}", options.state.display()))?;
    let registry = rt
        .block_on(Registry::open(&options.registry_location()))
        .map_err(anyhow::Error::msg)?;
    let keyring = secrets::Keyring::from_env(options.master_key_file.as_deref())
        .map_err(anyhow::Error::msg)?;
    if keyring.is_none() {
        eprintln!("serve: no master key (PLEXUS_MASTER_KEY): secrets are refused");
    }
    let vault = secrets::Vault::new(keyring);
    crate::net::secret::install_store(vault.clone());
    let jwt = match &options.jwt {
        Some(c) => Some(
            rt.block_on(jwt::JwtVerifier::new(c.clone()))
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).expect("at least 1");
    let server = Arc::new(Server {
        limiter: governor::RateLimiter::keyed(
            governor::Quota::per_second(nz(options.api_rate)).allow_burst(nz(options.api_burst)),
        ),
        host: Host::new(rt.clone()),
        vault,
        events: events::Events::new(),
        stopping: tokio::sync::watch::Sender::new(false),
        registry,
        options,
        reconciling: tokio::sync::Mutex::new(()),
        jwt,
    });
    let served = rt.block_on(serve(server.clone()));
    // Every integration drains (commits what it read) before the process ends.
    eprintln!("serve: stopping every integration (draining)");
    server.host.stop_all();
    eprintln!("serve: stopped");
    served
}

async fn serve(server: Arc<Server>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(server.options.listen)
        .await
        .with_context(|| format!("--listen {}", server.options.listen))?;
    let addr = listener.local_addr()?;
    reconcile(&server).await;
    let ticker = {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(server.options.reconcile_every).await;
                reconcile(&server).await;
            }
        })
    };
    let sampler = server
        .events
        .spawn(server.host.clone(), Duration::from_secs(1));
    let monitor = tokio::spawn(health_monitor(server.host.clone()));
    let app = api::router(server.clone()).into_make_service_with_connect_info::<Peer>();
    let stopping = server.stopping.clone();
    let stopped = async move {
        shutdown().await;
        stopping.send_replace(true);
    };
    match &server.options.tls {
        Some((cert, key)) => {
            let config =
                crate::net::tls::server_config(cert, key, None).map_err(anyhow::Error::msg)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            // Failed handshakes are the client's business (logged at debug).
            let listener = TlsListener::new(
                listener,
                acceptor,
                Arc::new(|| {}),
                server.stopping.subscribe(),
            )?;
            eprintln!("serve: listening on https://{addr} (API under /api/v1)");
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
        None => {
            eprintln!("serve: listening on http://{addr} (API under /api/v1)");
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
    }
    .context("serving the API")?;
    ticker.abort();
    sampler.abort();
    monitor.abort();
    Ok(())
}

/// Checks each running integration's downstream systems when its interval has passed; one
/// check at a time per integration, each on its own task (a slow system delays no other).
async fn health_monitor(host: Arc<Host>) {
    let mut due: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let busy: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let running = host.health_targets();
        due.retain(|id, _| running.iter().any(|r| r.0 == *id));
        for (id, targets, tap, every) in running {
            // The first check soon after a start; then every `every`.
            let next = due.entry(id.clone()).or_insert(now);
            if *next > now || busy.lock().expect("busy").contains(&id) {
                continue;
            }
            *next = now + every;
            busy.lock().expect("busy").insert(id.clone());
            let (host, busy) = (host.clone(), busy.clone());
            tokio::spawn(async move {
                let report = health::run(&targets, &tap).await;
                host.set_health(&id, report);
                busy.lock().expect("busy").remove(&id);
            });
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// One integration that should run: where it comes from, its version, its pipeline.
struct Wanted {
    origin: Origin,
    version: String,
    health: health::Settings,
    path: PathBuf,
    text: String,
    /// Testing mode: outputs diverted into this directory.
    testing: Option<PathBuf>,
}

/// Brings what runs in line with the registry and the pipelines directory.
pub async fn reconcile(server: &Arc<Server>) {
    let _one = server.reconciling.lock().await;
    server.host.reap();
    if let Err(e) = server.vault.refresh(&server.registry).await {
        tracing::error!(error = %e, "serve: secrets unavailable; nothing changed");
        return;
    }
    let stored = match server.registry.list().await {
        Ok(s) => s,
        Err(e) => {
            // Keep what runs; the next round tries again.
            tracing::error!(error = %e, "serve: registry unavailable; nothing changed");
            return;
        }
    };
    let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
    for s in stored.iter().filter(|s| s.active) {
        wanted.insert(
            s.id.clone(),
            Wanted {
                origin: Origin::Registry,
                version: s.version.to_string(),
                health: health::Settings::of(
                    s.config.get("monitoring"),
                    server.options.health_every,
                ),
                path: integration::pipeline_path(server, &s.id),
                text: s.pipeline.clone(),
                testing: s.testing.then(|| integration::testing_dir(server, &s.id)),
            },
        );
    }
    if let Some(dir) = &server.options.pipelines {
        for (id, path, text) in directory(dir) {
            if stored.iter().any(|s| s.id == id) {
                let reason = format!("{}: the registry has an integration {id}", path.display());
                server
                    .host
                    .refuse(&id, Origin::Directory(path), String::new(), reason);
                continue;
            }
            let version = Sha256::digest(text.as_bytes())
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect();
            wanted.insert(
                id,
                Wanted {
                    origin: Origin::Directory(path.clone()),
                    version,
                    health: health::Settings::of(None, server.options.health_every),
                    path,
                    text,
                    testing: None,
                },
            );
        }
    }
    let hosted = server.host.ids();
    for (id, origin, _, running, _) in &hosted {
        if wanted.contains_key(id) {
            continue;
        }
        let host = server.host.clone();
        let (id, keep) = (
            id.clone(),
            *origin == Origin::Registry && stored.iter().any(|s| s.id == *id),
        );
        if *running || !keep {
            let _ = tokio::task::spawn_blocking(move || {
                if keep {
                    host.stop(&id);
                } else {
                    host.remove(&id);
                }
            })
            .await;
        }
    }
    for (id, w) in wanted {
        let current = hosted.iter().find(|h| h.0 == id);
        let unchanged = current.is_some_and(|(_, o, v, running, testing)| {
            *o == w.origin
                && *v == w.version
                && *testing == w.testing.is_some()
                && (*running
                    || server
                        .host
                        .snapshot(&id)
                        .is_some_and(|s| s.status == host::Status::Error))
        });
        if unchanged || server.host.refused(&id, &w.version) {
            continue;
        }
        let registry_id = (w.origin == Origin::Registry).then_some(id.as_str());
        let spec = match integration::plan_check(&w.path, registry_id, &w.text).await {
            Ok(spec) => spec,
            Err(errors) => {
                let reason = errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{}:{}:{}: {}",
                            w.path.display(),
                            e.line,
                            e.column,
                            e.message
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(integration = %id, "serve: pipeline refused: {reason}");
                server.host.refuse(&id, w.origin, w.version, reason);
                continue;
            }
        };
        let mut spec = spec;
        if let Some((rate, burst)) = server.options.ingest_rate {
            default_ingest_limit(&mut spec, rate, burst);
        }
        if let Some(dir) = w.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let host = server.host.clone();
        let started = tokio::task::spawn_blocking(move || {
            host.start(&id, w.origin, w.version, spec, w.health, w.testing)
        })
        .await;
        if let Ok(Err(e)) = started {
            tracing::warn!("serve: integration failed to start: {e}");
        }
    }
}

/// The server's ingest rate limit on an HTTP source that sets none of its own.
fn default_ingest_limit(spec: &mut crate::spec::PipelineSpec, rate: u32, burst: u32) {
    use crate::config::Spanned;
    use crate::connectors::http::source_config::RateLimitSpec;
    if let crate::connectors::registry::SourceConfig::Http(h) = &mut spec.source.config
        && h.rate_limit.is_none()
    {
        let blank = marked_yaml::Span::new_blank;
        h.rate_limit = Some(RateLimitSpec {
            per_second: Spanned::new(blank(), rate),
            burst: Some(Spanned::new(blank(), burst)),
        });
    }
}

/// The pipelines in `dir`: (id = file stem, path, text), skipping test-case files.
fn directory(dir: &Path) -> Vec<(String, PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "serve: cannot read the pipelines directory");
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".test.yaml") || name.ends_with(".test.yml") {
            continue;
        }
        let Some(stem) = name.strip_suffix(".yaml").or(name.strip_suffix(".yml")) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            out.push((stem.to_string(), path, text));
        }
    }
    out.sort();
    out
}
