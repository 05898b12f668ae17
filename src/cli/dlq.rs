//! `plexus dlq list|show` and `plexus replay`: working with a pipeline's dead letters (the
//! reading and replaying is `runtime::dlq`, shared with the server's routes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::runtime::dlq::{DeadLetter, DlqLocation, ReplayRequest};

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: where it came from, stage, rule, attempt, error.
    List {
        pipeline: PathBuf,
        /// At most this many (the oldest first).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// A file DLQ: the directory given to `plexus run --output`, if one was.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// A dead letter's headers and original record: `--at PARTITION:OFFSET` of a DLQ topic,
    /// or `--at LINE` of a DLQ file.
    Show {
        pipeline: PathBuf,
        #[arg(long, value_name = "PARTITION:OFFSET|LINE")]
        at: String,
        /// A file DLQ: the directory given to `plexus run --output`, if one was.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The pipeline whose dead letters to replay.
    #[arg(long)]
    pipeline: PathBuf,
    /// Only dead letters matching this SQL condition over: stage, rule, error, attempt,
    /// source_topic, source_partition, source_offset, correlation_id, failed_at, record.
    #[arg(long)]
    filter: Option<String>,
    /// Where to re-inject (default: each record's original topic).
    #[arg(long)]
    to_topic: Option<String>,
    /// Show what would be replayed without doing it.
    #[arg(long)]
    dry_run: bool,
    /// A file DLQ: the directory given to `plexus run --output`, if one was.
    #[arg(long)]
    output: Option<PathBuf>,
    /// A file DLQ: where to write the original records for a re-run (default: beside the
    /// DLQ file, `<dlq>.replay.<hl7|ndjson>`).
    #[arg(long)]
    to_file: Option<PathBuf>,
}

fn locate(pipeline: &Path, output: Option<&Path>) -> Result<DlqLocation> {
    let spec = crate::spec::PipelineSpec::load(pipeline).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.0.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    DlqLocation::of(&spec, output).with_context(|| pipeline.display().to_string())
}

/// Prints the dead letters as a table (or JSON lines); `at` names each one's address.
fn print_list(
    all: &[DeadLetter],
    limit: usize,
    json: bool,
    at: impl Fn(&DeadLetter) -> String,
) -> Result<()> {
    if !json {
        println!(
            "{:<14} {:<32} {:<10} {:<24} {:>7}  error",
            "at", "from", "stage", "rule", "attempt"
        );
    }
    for d in all.iter().take(limit) {
        if json {
            println!("{}", serde_json::to_string(d)?);
        } else {
            let from = match (&d.source_topic, d.source_partition, d.source_offset) {
                (Some(t), Some(p), Some(o)) => format!("{t}/{p}@{o}"),
                (Some(t), None, Some(o)) => format!("{t}@{o}"),
                _ => "-".into(),
            };
            let error: String = d.error.chars().take(80).collect();
            println!(
                "{:<14} {:<32} {:<10} {:<24} {:>7}  {}",
                at(d),
                from,
                d.stage,
                d.rule,
                d.attempt,
                error
            );
        }
    }
    Ok(())
}

/// Prints one dead letter and its original record.
fn print_one(d: &DeadLetter) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(d)?);
    println!("--- original record ({} bytes) ---", d.record.len());
    match std::str::from_utf8(&d.record) {
        Ok(text) => println!("{}", text.replace('\r', "\n")),
        Err(_) => println!(
            "{}",
            d.record
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    }
    Ok(())
}

pub fn run(cmd: DlqCommand) -> Result<ExitCode> {
    match cmd {
        DlqCommand::List {
            pipeline,
            limit,
            json,
            output,
        } => {
            let loc = locate(&pipeline, output.as_deref())?;
            let all = loc.read()?;
            print_list(&all, limit, json, |d| match &loc {
                DlqLocation::Topic(_) => loc.address(d),
                DlqLocation::File { .. } => format!("line {}", d.offset),
            })?;
            if !json {
                let on = if matches!(loc, DlqLocation::Topic(_)) {
                    "on"
                } else {
                    "in"
                };
                eprintln!("{} dead letters {on} {}", all.len(), loc.describe());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show {
            pipeline,
            at,
            output,
        } => {
            let loc = locate(&pipeline, output.as_deref())?;
            let all = loc.read()?;
            let d = loc.find(&all, &at)?.with_context(|| match &loc {
                DlqLocation::Topic(t) => format!("no dead letter at {at} on {}", t.topic),
                DlqLocation::File { path, .. } => {
                    format!("no dead letter on line {at} of {}", path.display())
                }
            })?;
            print_one(d)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let loc = locate(&args.pipeline, args.output.as_deref())?;
    let req = ReplayRequest {
        filter: args.filter.clone(),
        filter_on_record: true,
        to_topic: args.to_topic.clone(),
        to_file: args.to_file.clone(),
        dry_run: args.dry_run,
    };
    let r = crate::runtime::dlq::replay(&loc, &req).map_err(|e| {
        // The CLI's names for the request's fields.
        anyhow::anyhow!(
            "{}",
            format!("{e:#}")
                .replace("filter:", "--filter:")
                .replace("name a topic to replay to", "pass --to-topic")
        )
    })?;
    match &loc {
        DlqLocation::Topic(t) => {
            eprintln!(
                "{} dead letters on {}: replaying {}, {} replayed before, {} duplicate copies",
                r.dead_letters, t.topic, r.replayed, r.replayed_before, r.duplicates
            );
            if r.dry_run {
                for t in &r.targets {
                    println!("{} -> {}", t.at, t.to);
                }
            } else {
                println!("replayed {} dead letters", r.replayed);
            }
        }
        DlqLocation::File { path, .. } => {
            eprintln!(
                "{} dead letters in {}: {} records to replay",
                r.dead_letters,
                path.display(),
                r.replayed
            );
            let to = r.file.as_deref().unwrap_or_default();
            if r.dry_run {
                for t in &r.targets {
                    println!("line {} -> {}", t.at, t.to);
                }
            } else {
                println!(
                    "wrote {} records to {to}; re-run them with:\n  plexus run {} --input {to} --output <new directory>",
                    r.replayed,
                    args.pipeline.display(),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
