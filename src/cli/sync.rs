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

use crate::connectors::fhir::sync::store::StateLocation;
use crate::connectors::fhir::sync::{Resolution, Side, SyncOutcome};
use crate::net::fhir_client::ClientConfig;
use crate::runtime::sync::SyncTarget;

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

impl Target {
    async fn resolve(&self) -> Result<SyncTarget> {
        let Some(path) = &self.pipeline else {
            return Ok(SyncTarget {
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
        SyncTarget::of(&plan, self.sink.as_deref())
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
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
                for (kind, key) in t.conflicts().await? {
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
                let mut t = target.resolve().await?;
                t.client = match (t.client.take(), fhir_base) {
                    // The flag overrides the pipeline's base (a test server, say).
                    (Some(mut c), Some(base)) => {
                        c.base = base;
                        Some(c)
                    }
                    (Some(c), None) => Some(c),
                    (None, Some(base)) => Some(ClientConfig::new(base)),
                    (None, None) => anyhow::bail!("--fhir-base (or --pipeline) is needed"),
                };
                let outcome = t.resolve(kind, key, &how, &actor).await;
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
