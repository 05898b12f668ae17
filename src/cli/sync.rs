//! `plexus sync list|resolve`: the open conflicts of an integration, and settling one.
//!
//! With `--pipeline`, everything comes from the pipeline's syncing `fhir` sink: the
//! integration, where the sync state lives, the EHR's base, credentials and TLS, and where
//! sync events go. Without it: `--integration`, `--database-url` (`postgres://…` or a SQLite
//! file; or `DATABASE_URL`) and `--fhir-base` (or `PLEXUS_FHIR_BASE`). A resolution is applied to the server
//! on the version seen now (a newer change there fails it rather than being overwritten),
//! recorded as the agreed state, and written to the audit log with who did it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use crate::connectors::fhir::sync::store::{StateLocation, SyncStore};
use crate::connectors::fhir::sync::{
    ConflictPolicy, Resolution, Side, Status, SyncEvents, SyncOutcome, Syncer,
};
use crate::net::fhir_client::{ClientConfig, FhirClient};

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The pipeline whose syncing fhir sink to act for (its state, EHR and credentials).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// That sink's name, when the pipeline has several syncing fhir sinks.
    #[arg(long, requires = "pipeline")]
    sink: Option<String>,
    /// Without --pipeline: the integration id (the pipeline's `integration.id`).
    #[arg(long)]
    integration: Option<String>,
    /// Without --pipeline: the sync state, `postgres://…` or a SQLite file.
    #[arg(long, alias = "state", env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// What a command acts on, from the pipeline or the flags.
struct Resolved {
    integration: String,
    state: StateLocation,
    /// The EHR client settings (base, credentials, TLS) when the pipeline gives them.
    client: Option<ClientConfig>,
    events: Option<SyncEvents>,
}

impl Target {
    async fn resolve(&self) -> Result<Resolved> {
        let Some(path) = &self.pipeline else {
            return Ok(Resolved {
                integration: self
                    .integration
                    .clone()
                    .context("--integration (or --pipeline) is needed")?,
                state: StateLocation::parse(
                    self.database_url
                        .as_deref()
                        .context("--database-url (or --pipeline) is needed")?,
                ),
                client: None,
                events: None,
            });
        };
        let spec = crate::spec::PipelineSpec::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let plan = crate::plan::build(&spec)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let syncing: Vec<_> = plan
            .sinks
            .iter()
            .filter_map(|s| {
                let crate::connectors::registry::SinkPlan::Fhir(f) = &s.connector else {
                    return None;
                };
                Some((s.name.as_str(), &f.http, f.sync.as_ref()?))
            })
            .filter(|(n, ..)| self.sink.as_deref().is_none_or(|want| want == *n))
            .collect();
        let (name, h, sync) = match syncing.as_slice() {
            [one] => *one,
            [] => anyhow::bail!(
                "{}: no fhir sink with `sync:`{}",
                path.display(),
                self.sink
                    .as_deref()
                    .map(|s| format!(" named {s}"))
                    .unwrap_or_default()
            ),
            _ => anyhow::bail!(
                "{}: several syncing fhir sinks: name one with --sink",
                path.display()
            ),
        };
        let in_sink = |e: String| anyhow::anyhow!("sink {name}: {e}");
        let client = h.fhir_client_config().map_err(in_sink)?;
        let events = sync.open_events(plan.kafka.as_ref()).map_err(in_sink)?;
        Ok(Resolved {
            integration: plan.integration_id.clone(),
            state: sync.state.location().map_err(in_sink)?,
            client: Some(client),
            events: Some(events),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Entities with an open conflict: `Type<TAB>system|value`.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Settles one conflict.
    Resolve {
        #[command(flatten)]
        target: Target,
        /// Without --pipeline: the EHR's FHIR base.
        #[arg(long, env = "PLEXUS_FHIR_BASE")]
        fhir_base: Option<String>,
        /// `Patient/system|value`.
        #[arg(long)]
        entity: String,
        #[arg(long, value_enum)]
        strategy: Strategy,
        /// merge: `field=local` or `field=external` (fields not named keep the server's).
        #[arg(long = "take", value_name = "FIELD=SIDE")]
        take: Vec<String>,
        /// Who resolves (for the audit log); default: $USER.
        #[arg(long, env = "USER")]
        actor: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Strategy {
    #[value(name = "use_local", alias = "use-local")]
    UseLocal,
    #[value(name = "use_external", alias = "use-external")]
    UseExternal,
    Merge,
    /// Leave it open (nothing changes; for scripts that list first).
    Manual,
}

pub fn run(cmd: SyncCommand) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async {
        match cmd {
            SyncCommand::List { target } => {
                let t = target.resolve().await?;
                let store = SyncStore::open(&t.state).await?;
                for (kind, key) in store.list(&t.integration, Status::Conflict).await? {
                    println!("{kind}\t{key}");
                }
                Ok(ExitCode::SUCCESS)
            }
            SyncCommand::Resolve {
                target,
                fhir_base,
                entity,
                strategy,
                take,
                actor,
            } => {
                let (kind, key) = entity
                    .split_once('/')
                    .context("--entity is Type/system|value")?;
                let how = match strategy {
                    Strategy::UseLocal => Resolution::UseLocal,
                    Strategy::UseExternal => Resolution::UseExternal,
                    Strategy::Manual => return Ok(ExitCode::SUCCESS),
                    Strategy::Merge => {
                        let mut choices = BTreeMap::new();
                        for t in &take {
                            let (field, side) = t
                                .split_once('=')
                                .context("--take is FIELD=local|external")?;
                            let side = match side {
                                "local" => Side::Local,
                                "external" => Side::External,
                                other => anyhow::bail!("--take {field}={other}: local or external"),
                            };
                            choices.insert(field.to_string(), side);
                        }
                        anyhow::ensure!(!choices.is_empty(), "merge needs --take FIELD=SIDE");
                        Resolution::Merge(choices)
                    }
                };
                let t = target.resolve().await?;
                let client = match (t.client, fhir_base) {
                    // The flag overrides the pipeline's base (a test server, say).
                    (Some(mut c), Some(base)) => {
                        c.base = base;
                        c
                    }
                    (Some(c), None) => c,
                    (None, Some(base)) => ClientConfig::new(base),
                    (None, None) => anyhow::bail!("--fhir-base (or --pipeline) is needed"),
                };
                let syncer = Syncer {
                    integration: t.integration,
                    owner: format!("resolve:{actor}"),
                    store: SyncStore::open(&t.state).await?,
                    client: FhirClient::new(client)?,
                    policy: ConflictPolicy::Manual,
                    lease: std::time::Duration::from_secs(30),
                    events: t.events,
                };
                let outcome = syncer.resolve(kind, key, &how, &actor).await;
                if let Some(e) = &syncer.events {
                    e.finish()?;
                }
                match outcome? {
                    SyncOutcome::Contended => {
                        eprintln!("{entity} is being synced by another worker: try again");
                        Ok(ExitCode::from(1))
                    }
                    SyncOutcome::Updated { version, .. } => {
                        println!(
                            "resolved: {entity} in sync at version {}",
                            version.unwrap_or_default()
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    other => {
                        println!("resolved: {other:?}");
                        Ok(ExitCode::SUCCESS)
                    }
                }
            }
        }
    })
}
