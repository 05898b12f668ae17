//! `plexus fhir convert`: HL7v2 files → FHIR R4 resources (NDJSON) or Bundles, the
//! FHIR-Converter use case.
//!
//! Exit codes as for the HL7 commands: 0 when every message converted, 1 when some did not
//! (each reported on stderr with its position and reason; the rest still converted), 2 on
//! usage or I/O errors.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use crate::fhir::bundle::{BundleType, bundle};
use crate::fhir::v2::{Options, convert};
use crate::formats::hl7::Splitter;

#[derive(Debug, Subcommand)]
pub enum FhirCommand {
    /// Converts HL7v2 messages (ADT, SIU, ORU, ORM/OML, VXU, MDM, RDE/RAS) to FHIR R4 per the
    /// v2-to-FHIR IG.
    Convert {
        /// HL7 file (plain messages or an FHS/BHS batch); `-` for stdin.
        file: String,
        /// One Bundle per message (a line each) instead of one resource per line.
        #[arg(long, value_enum)]
        bundle: Option<BundleKind>,
        /// Output file (default: stdout).
        #[arg(long, short = 'o')]
        output: Option<String>,
        /// Identifier system for an assigning authority sent by local name, e.g.
        /// `--system GHH=urn:oid:2.16.840.1.113883.3.72` (repeatable).
        #[arg(long = "system", value_name = "NAMESPACE=URI")]
        systems: Vec<String>,
        /// Where times sent without an offset are: an IANA zone (`America/Chicago`, daylight
        /// saving time applied per date) or an offset (`+01:00`). FHIR times need an offset;
        /// resources that needed this one are tagged (`meta.tag` assumed-timezone).
        #[arg(long, visible_alias = "default-offset", default_value = "UTC")]
        default_zone: String,
        /// `us-core`: US Core 6.1.0 race/ethnicity extensions (PID-10/22) and
        /// `meta.profile` on Patients that have what the profile requires.
        #[arg(long, value_enum, default_value = "base")]
        profile: ProfileArg,
        /// Messages converted at once (default: one per core). The output keeps the input's
        /// order whatever the number.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Searches a FHIR server and prints the matches as flat rows (FHIR → local columns:
    /// MRN, names, birth date, visit number, times, statuses), every page.
    Search {
        /// The server's base URL, e.g. `http://127.0.0.1:8089/fhir`.
        #[arg(long, env = "PLEXUS_FHIR_BASE")]
        base: String,
        /// Patient, Encounter or Appointment.
        resource_type: String,
        /// The search, e.g. `identifier=urn:oid:1.2|123` or `family=DUCK`.
        query: String,
        #[arg(long, value_enum, default_value = "table")]
        format: crate::cli::query::Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    Base,
    UsCore,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BundleKind {
    Transaction,
    Batch,
}

pub fn run(cmd: FhirCommand) -> Result<ExitCode> {
    match cmd {
        FhirCommand::Convert {
            file,
            bundle,
            output,
            systems,
            default_zone,
            profile,
            threads,
        } => {
            let mut map = HashMap::new();
            for s in &systems {
                let (ns, uri) = s
                    .split_once('=')
                    .with_context(|| format!("--system {s}: expected NAMESPACE=URI"))?;
                map.insert(ns.to_string(), uri.to_string());
            }
            let zone = crate::formats::hl7::Zone::parse(&default_zone)
                .map_err(|e| anyhow::anyhow!("--default-zone: {e}"))?;
            let opts = Options {
                default_zone: zone,
                profile: match profile {
                    ProfileArg::Base => crate::fhir::v2::Profile::Base,
                    ProfileArg::UsCore => crate::fhir::v2::Profile::UsCore,
                },
                ..Options::default()
            }
            .with_systems(map);
            let kind = bundle.map(|b| match b {
                BundleKind::Transaction => BundleType::Transaction,
                BundleKind::Batch => BundleType::Batch,
            });
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            convert_file(&file, kind, output.as_deref(), &opts, threads)
        }
        FhirCommand::Search {
            base,
            resource_type,
            query,
            format,
        } => {
            anyhow::ensure!(
                crate::fhir::rows::columns(&resource_type).is_some(),
                "rows are defined for Patient, Encounter and Appointment, not {resource_type}"
            );
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let client = crate::net::fhir_client::FhirClient::new(
                crate::net::fhir_client::ClientConfig::new(base),
            )?;
            let found = rt.block_on(client.search(&resource_type, &query))?;
            let batch =
                crate::fhir::rows::batch(&resource_type, &found).context("building the rows")?;
            crate::cli::query::write(&[batch], format, None)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Messages handed to a worker at once: enough to amortize the hand-over, few enough that
/// what is in flight (two chunks per worker) stays a few MB of output.
const CHUNK: usize = 32;

/// What one message came to: its output lines and resource count, or the error to report.
type Converted = std::result::Result<(Vec<u8>, usize), String>;

fn convert_one(
    item: crate::formats::hl7::SplitItem<'_>,
    file: &str,
    kind: Option<BundleType>,
    opts: &Options,
) -> Converted {
    let m = match item {
        Ok(m) => m.message,
        Err(b) => {
            return Err(format!(
                "error: {file}: message {} at byte {}: {}",
                b.index, b.offset, b.error
            ));
        }
    };
    let rs = convert(&m, opts).map_err(|e| {
        format!(
            "error: {file}: message {} at byte {}: {e}",
            m.index(),
            m.offset()
        )
    })?;
    let n = rs.len();
    // FHIR JSON is two to three times the HL7 it comes from: sized once, not regrown (an
    // ADT's 17 KB of output regrew three times, copying 28 KB).
    let mut out = Vec::with_capacity((m.raw().len() * 3).max(4096));
    match kind {
        Some(k) => {
            bundle(rs, k).write(&mut out);
            out.push(b'\n');
        }
        None => {
            for r in &rs {
                r.body.write(&mut out);
                out.push(b'\n');
            }
        }
    }
    Ok((out, n))
}

fn convert_file(
    file: &str,
    kind: Option<BundleType>,
    output: Option<&str>,
    opts: &Options,
    threads: usize,
) -> Result<ExitCode> {
    let input = crate::cli::read_input(file)?;
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {p}"))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut splitter = Splitter::new(&input);
    let (mut good, mut bad, mut resources) = (0usize, 0usize, 0usize);
    // Pages already converted go back to the kernel: a file of any size converts in the
    // memory of a round of messages.
    let mut released = crate::connectors::file::mapped::Released::default();
    let threads = threads.max(1);
    // Workers convert chunks; this thread reads the next ones and writes the converted in
    // input order (by sequence number) as they come back.
    let mut report = |converted: Vec<Converted>, upto: usize| -> Result<()> {
        for r in converted {
            match r {
                Ok((bytes, n)) => {
                    good += 1;
                    resources += n;
                    out.write_all(&bytes)?;
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("{e}");
                }
            }
        }
        released.upto(&input, upto);
        Ok(())
    };
    let chunks = std::iter::from_fn(|| {
        let items: Vec<_> = splitter.by_ref().take(CHUNK).collect();
        let upto = match items.last()? {
            Ok(m) => m.message.offset(),
            Err(b) => b.offset,
        };
        Some((items, upto))
    });
    if threads == 1 {
        for (items, upto) in chunks {
            let converted = items
                .into_iter()
                .map(|i| convert_one(i, file, kind, opts))
                .collect();
            report(converted, upto)?;
        }
    } else {
        std::thread::scope(|s| -> Result<()> {
            let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Vec<Converted>)>();
            let mut work = Vec::with_capacity(threads);
            for _ in 0..threads {
                let (tx, rx) = std::sync::mpsc::channel::<(usize, Vec<_>)>();
                let done = done_tx.clone();
                s.spawn(move || {
                    for (seq, items) in rx {
                        // A panic would leave this thread waiting for a result that never
                        // comes: it becomes the message's error instead.
                        let converted = items
                            .into_iter()
                            .map(|i| {
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    convert_one(i, file, kind, opts)
                                }))
                                .unwrap_or_else(|_| {
                                    Err(format!("error: {file}: a message failed to convert (internal error)"))
                                })
                            })
                            .collect();
                        if done.send((seq, converted)).is_err() {
                            return;
                        }
                    }
                });
                work.push(tx);
            }
            drop(done_tx);
            let mut waiting = std::collections::BTreeMap::new();
            let (mut sent, mut next) = (0usize, 0usize);
            let mut upto_of = std::collections::VecDeque::new();
            let mut chunks = chunks.fuse();
            loop {
                // Two chunks per worker in flight: workers never wait for this thread's
                // writing, and memory stays bounded.
                while sent - next < 2 * threads {
                    let Some((items, upto)) = chunks.next() else {
                        break;
                    };
                    upto_of.push_back(upto);
                    if work[sent % threads].send((sent, items)).is_err() {
                        anyhow::bail!("a conversion worker stopped");
                    }
                    sent += 1;
                }
                if next == sent {
                    break;
                }
                let (seq, converted) = done_rx
                    .recv()
                    .map_err(|_| anyhow::anyhow!("a conversion worker stopped"))?;
                waiting.insert(seq, converted);
                while let Some(converted) = waiting.remove(&next) {
                    let upto = upto_of.pop_front().unwrap_or_default();
                    report(converted, upto)?;
                    next += 1;
                }
            }
            drop(work);
            Ok(())
        })?;
    }
    out.flush()?;
    for d in splitter.diagnostics() {
        eprintln!("warning: {file}: {d}");
    }
    eprintln!("{good} messages converted to {resources} resources, {bad} failed");
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
