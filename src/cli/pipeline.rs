//! `plexus run|validate|test PIPELINE`: the pipeline commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::connectors::registry::SourcePlan;
use crate::plan::{Plan, build};
use crate::runtime::summary::{EXIT_FAILED, EXIT_USAGE};
use crate::runtime::topology::{StartOptions, Topology};
use crate::spec::{PipelineSpec, SpecErrors};

async fn load(path: &Path) -> Result<(PipelineSpec, Plan), SpecErrors> {
    let spec = PipelineSpec::load(path)?;
    let plan = build(&spec).await?;
    Ok((spec, plan))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// `plexus validate`: type-checks every pipeline given; exit 1 on any error.
pub fn validate(paths: &[PathBuf]) -> Result<ExitCode> {
    let rt = runtime()?;
    let mut failed = false;
    for path in paths {
        // `plexus validate pipelines/*.yaml` also meets the test-case files beside the
        // pipelines: they are not pipelines (`plexus test` checks them).
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
        {
            println!(
                "skipped: {}: test cases, checked by `plexus test` on their pipeline",
                path.display()
            );
            continue;
        }
        match rt.block_on(load(path)) {
            Ok((_, plan)) => {
                // Output directories that do not exist yet are created by the run: say so.
                let mut missing: Vec<String> = plan
                    .sinks
                    .iter()
                    .filter_map(|s| s.connector.output_path())
                    .chain(plan.dlq.as_deref())
                    .filter_map(|p| p.parent())
                    .filter(|d| !d.as_os_str().is_empty() && !d.exists())
                    .map(|d| d.display().to_string())
                    .collect();
                missing.sort();
                missing.dedup();
                let creates = if missing.is_empty() {
                    String::new()
                } else {
                    format!("; the run creates {}", missing.join(", "))
                };
                println!(
                    "ok: {}: {} stages, {} sinks, source {} file(s){creates}",
                    path.display(),
                    plan.stages.len(),
                    plan.sinks.len(),
                    plan.source.paths().len()
                )
            }
            Err(errors) => {
                failed = true;
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Options of `plexus run`.
pub struct RunArgs {
    pub pipeline: PathBuf,
    pub input: Option<String>,
    pub output: Option<PathBuf>,
    pub json: bool,
    pub exit_when_idle: Option<String>,
    pub max_records: Option<u64>,
    /// Serve Prometheus `/metrics` here (`127.0.0.1:9898`).
    pub metrics_addr: Option<String>,
    /// No progress line.
    pub quiet: bool,
}

/// `plexus run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    let (_, mut plan) = match rt.block_on(load(&args.pipeline)) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    if let Some(input) = &args.input
        && let SourcePlan::File { paths } = &mut plan.source.connector
    {
        *paths = if input == "-" {
            vec![PathBuf::from("-")]
        } else {
            let matched: Vec<PathBuf> = glob::glob(input)
                .with_context(|| format!("bad input pattern {input}"))?
                .filter_map(Result::ok)
                .collect();
            anyhow::ensure!(!matched.is_empty(), "no input file matches {input}");
            matched
        };
    }
    if let Some(dir) = &args.output {
        plan.relocate_outputs(dir);
    }
    let exit_when_idle = args
        .exit_when_idle
        .as_deref()
        .map(crate::spec::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--exit-when-idle: {e}"))?;
    let metrics_addr = args
        .metrics_addr
        .as_deref()
        .map(|a| {
            a.parse::<std::net::SocketAddr>()
                .with_context(|| format!("--metrics-addr {a}: not host:port"))
        })
        .transpose()?;
    let topology = Topology::start(
        &rt,
        plan,
        StartOptions {
            max_records: args.max_records,
            exit_when_idle,
            metrics_addr,
            progress: progress_bar(&args),
            on_signal: Some(crate::cli::end_progress_line),
            hosted: false,
        },
    )?;
    let (dlq_path, dlq_topic) = (topology.dlq_path.clone(), topology.dlq_topic.clone());
    let summary = match topology.run(&rt) {
        Ok(s) => s,
        // The run had started: a failure is exit code 1, not a usage error.
        Err(e) => {
            crate::cli::end_progress_line();
            eprintln!("error: the run failed: {e:#}");
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    crate::cli::end_progress_line();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprint!("{}", summary.render());
        if summary.dead_lettered > 0 {
            match &dlq_topic {
                Some(t) => eprintln!("dead letters: topic {t} (plexus dlq list)"),
                None => eprintln!("dead letters: {}", dlq_path.display()),
            }
        }
    }
    Ok(ExitCode::from(summary.exit_code()))
}

/// A progress line on a terminal (stderr), redrawn at most ten times a second: records,
/// MB and MB/s, records/s, and for files the share done and the time left.
fn progress_bar(args: &RunArgs) -> Option<crate::runtime::Progress> {
    if args.json || args.quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let started = std::time::Instant::now();
    let last = std::sync::Mutex::new(std::time::Instant::now());
    Some(Box::new(move |done, total, records| {
        let mut last = last.lock().expect("progress lock");
        if last.elapsed().as_millis() < 100 {
            return;
        }
        *last = std::time::Instant::now();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let pct = total
            .filter(|&t| t > 0)
            .map(|t| format!("{:5.1}% ", 100.0 * done as f64 / t as f64))
            .unwrap_or_default();
        let rate = done as f64 / secs;
        let eta = match total {
            Some(t) if t > done && rate > 0.0 => {
                let left = ((t - done) as f64 / rate).ceil() as u64;
                format!(", ETA {}:{:02}", left / 60, left % 60)
            }
            _ => String::new(),
        };
        eprint!(
            "\r{pct}{records} records, {:.1} MB at {:.1} MB/s, {:.0} records/s{eta}   ",
            done as f64 / 1e6,
            rate / 1e6,
            records as f64 / secs
        );
        crate::cli::PROGRESS_SHOWN.store(true, std::sync::atomic::Ordering::Relaxed);
    }))
}

/// `plexus test`: runs the pipeline's test cases against its real graph (files replaced by
/// memory); exit 1 if any fails.
pub fn test(path: &Path) -> Result<ExitCode> {
    let rt = runtime()?;
    let spec = match PipelineSpec::load(path) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    if spec.tests.is_empty() {
        eprintln!(
            "{}: no test cases (add `tests:` or a sibling .test.yaml)",
            path.display()
        );
        return Ok(ExitCode::from(1));
    }
    let mut failures = 0;
    for case in &spec.tests {
        let result = match rt.block_on(crate::runtime::testing::run_case(&spec, case)) {
            Ok(r) => r,
            Err(crate::runtime::testing::CaseError::Plan(errors)) => {
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        };
        if result.passed {
            println!("ok   {}", result.name);
        } else {
            failures += 1;
            println!("FAIL {}", result.name);
            for p in result.problems {
                println!("     {p}");
            }
        }
    }
    println!(
        "{} passed, {} failed",
        spec.tests.len() - failures,
        failures
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
