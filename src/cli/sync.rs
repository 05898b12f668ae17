//! `plexus sync list|resolve`: the open conflicts of an integration, and settling one.
//!
//! The sync state is in PostgreSQL (`--database-url` or `DATABASE_URL`); the EHR is the FHIR
//! base given (`--fhir-base` or `PLEXUS_FHIR_BASE`). A resolution is applied to the server
//! on the version seen now (a newer change there fails it rather than being overwritten),
//! recorded as the agreed state, and written to the audit log with who did it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use crate::fhir::client::{ClientConfig, FhirClient};
use crate::sync::store::SyncStore;
use crate::sync::{ConflictPolicy, Resolution, Side, Status, SyncOutcome, Syncer};

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The integration id (the pipeline's `integration.id`).
    #[arg(long)]
    integration: String,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
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
        #[arg(long, env = "PLEXUS_FHIR_BASE")]
        fhir_base: String,
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
                let store = SyncStore::connect(&target.database_url).await?;
                for (kind, key) in store.list(&target.integration, Status::Conflict).await? {
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
                let syncer = Syncer {
                    integration: target.integration,
                    owner: format!("resolve:{actor}"),
                    store: SyncStore::connect(&target.database_url).await?,
                    client: FhirClient::new(ClientConfig::new(fhir_base))?,
                    policy: ConflictPolicy::Manual,
                    lease: std::time::Duration::from_secs(30),
                    events: None,
                };
                match syncer.resolve(kind, key, &how, &actor).await? {
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
