//! Command-line interface: one file per command group.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod dlq;
pub mod fhir;
pub mod hl7;
pub mod mllp;
pub mod otel;
pub mod pipeline;
pub mod query;
pub mod serve;
pub mod sync;

/// plexus: streaming dataflow engine for healthcare integration.
#[derive(Debug, Parser)]
#[command(name = "plexus", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a pipeline to completion (file mode: no services needed).
    Run {
        /// Pipeline file (pipelines/*.yaml).
        pipeline: std::path::PathBuf,
        /// Input file or glob instead of the pipeline's source path; `-` for stdin.
        #[arg(long)]
        input: Option<String>,
        /// Directory for the outputs and dead letters (file names kept).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// Print the run summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Streaming sources: stop (drain, commit, exit) after this long without a record,
        /// e.g. `5s`. Without it a stream runs until SIGTERM/SIGINT.
        #[arg(long, value_name = "DURATION")]
        exit_when_idle: Option<String>,
        /// Read at most this many records: a file run processes the first N (a sample of a
        /// big feed); a stream drains, commits and exits after N.
        #[arg(long, value_name = "N")]
        max_records: Option<u64>,
        /// Serve Prometheus metrics on http://ADDR/metrics while running (e.g. 127.0.0.1:9898).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
        /// No progress line (there is none either when stderr is not a terminal, or with --json).
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Dead-letter topics: list or show what failed and why.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Re-injects dead letters into the pipeline's source topic after a fix, once each.
    Replay(dlq::ReplayArgs),
    /// Type-checks pipelines without running them; exit 1 on any error.
    Validate {
        #[arg(required = true)]
        pipelines: Vec<std::path::PathBuf>,
    },
    /// Runs a pipeline's test cases (in-file `tests:` or a sibling .test.yaml).
    Test { pipeline: std::path::PathBuf },
    /// SQL over a pipeline's window metrics, breaker events, alerts and dead-letter summary.
    Query(query::QueryArgs),
    /// HL7v2 tools: split, extract, ack.
    #[command(subcommand)]
    Hl7(hl7::Hl7Command),
    /// MLLP tools: send a file's messages and print the ACKs, or listen and print.
    #[command(subcommand)]
    Mllp(mllp::MllpCommand),
    /// FHIR R4 tools: convert HL7v2 to FHIR resources or Bundles.
    #[command(subcommand)]
    Fhir(fhir::FhirCommand),
    /// EHR sync state: list open conflicts, resolve one.
    #[command(subcommand)]
    Sync(sync::SyncCommand),
    /// Hosts many integrations behind an authenticated REST API (`/api/v1`), until SIGTERM.
    Serve(serve::ServeArgs),
    /// API keys for `plexus serve`: create (shown once), list, revoke.
    #[command(subcommand)]
    Keys(serve::KeysCommand),
    /// Prints the JSON Schema of pipeline files (for editors; kept as
    /// schemas/pipeline.schema.json), or lists the source and sink types.
    Schema {
        /// List the connector types (sources and sinks) instead.
        #[arg(long)]
        connectors: bool,
    },
}

/// Entry point used by `src/main.rs`.
pub fn main() -> ExitCode {
    // Dropped last: flushes exported spans after the command finished.
    let _otel = init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hl7(cmd) => hl7::run(cmd),
        Command::Fhir(cmd) => fhir::run(cmd),
        Command::Mllp(cmd) => mllp::run(cmd),
        Command::Sync(cmd) => sync::run(cmd),
        Command::Serve(args) => serve::serve(args),
        Command::Keys(cmd) => serve::keys(cmd),
        Command::Run {
            pipeline,
            input,
            output,
            json,
            exit_when_idle,
            max_records,
            metrics_addr,
            quiet,
        } => pipeline::run(pipeline::RunArgs {
            pipeline,
            input,
            output,
            json,
            exit_when_idle,
            max_records,
            metrics_addr,
            quiet,
        }),
        Command::Dlq(cmd) => dlq::run(cmd),
        Command::Replay(args) => dlq::replay(args),
        Command::Validate { pipelines } => pipeline::validate(&pipelines),
        Command::Test { pipeline } => pipeline::test(&pipeline),
        Command::Query(args) => query::run(args),
        Command::Schema { connectors } => schema(connectors),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `plexus schema`.
fn schema(connectors: bool) -> anyhow::Result<ExitCode> {
    use crate::connectors::registry::{SINKS, SOURCES};
    if connectors {
        for (what, list) in [
            (
                "source",
                SOURCES
                    .iter()
                    .map(|c| (c.kind, c.about))
                    .collect::<Vec<_>>(),
            ),
            ("sink", SINKS.iter().map(|c| (c.kind, c.about)).collect()),
        ] {
            for (kind, about) in list {
                println!("{what:<6} {kind:<8} {about}");
            }
        }
    } else {
        let schema = crate::spec::schema::pipeline_schema();
        println!("{}", serde_json::to_string_pretty(&schema)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() -> Option<otel::OtelGuard> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    // Logs go to stderr so that stdout stays clean for data. Default: warnings only.
    // PLEXUS_LOG wins over the conventional RUST_LOG; both take EnvFilter directives.
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLEXUS_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a person at a terminal: a log file or a pipe gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let (otel, guard) = match otel::layer() {
        Ok(Some((layer, guard))) => (Some(layer), Some(guard)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("warning: OpenTelemetry export is off: {e:#}");
            (None, None)
        }
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    guard
}

/// Whether a progress line is on the terminal (drawn with `\r`, no newline yet).
pub(crate) static PROGRESS_SHOWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Ends a progress line on the terminal, if one is shown, so the next line starts clean.
pub(crate) fn end_progress_line() {
    if PROGRESS_SHOWN.swap(false, std::sync::atomic::Ordering::Relaxed) {
        use std::io::Write;
        // Carriage return and erase-line: the next text starts at column 0 of an empty line.
        let _ = std::io::stderr().write_all(b"\r\x1b[2K");
    }
}

/// stderr for log lines: a progress line is erased first, so a log line never continues it.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        end_progress_line();
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// An input read once, front to back: a path (mapped; see `connectors::file::mapped`), or
/// `-` for stdin.
pub(crate) fn read_input(path: &str) -> anyhow::Result<crate::connectors::file::mapped::Input> {
    use anyhow::Context;
    crate::connectors::file::mapped::Input::open(std::path::Path::new(path)).with_context(|| {
        if path == "-" {
            "reading standard input".to_string()
        } else {
            format!("reading {path}")
        }
    })
}
