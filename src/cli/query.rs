//! `plexus query "SQL"`: DataFusion SQL over what a pipeline's monitoring wrote (the tables
//! are `runtime::query`'s).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;

use crate::runtime::query::{Locations, context};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The SQL (tables: metrics, <window name>, breaker_events, alerts, dead_letters).
    pub sql: String,
    /// The pipeline whose outputs to query (paths from its `monitoring:` and `dlq:`).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// The directory given to `plexus run --output`, if one was.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write here instead of stdout (required for parquet).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

pub fn run(args: QueryArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let spec =
        crate::spec::PipelineSpec::load(&args.pipeline).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = rt
        .block_on(crate::plan::build(&spec))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let loc = Locations::of(&plan, args.output.as_deref())?;
    let batches = rt.block_on(async {
        let ctx = context(&loc).await?;
        // The analyst's SQL is read-only: queries over the registered tables, nothing else.
        let df = crate::sql::read_only::query(&ctx, &args.sql)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        df.collect().await.map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    write(&batches, args.format, args.out.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn write(batches: &[RecordBatch], format: Format, out: Option<&Path>) -> Result<()> {
    let mut sink: Box<dyn std::io::Write + Send> = match out {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    match format {
        Format::Table => {
            writeln!(
                sink,
                "{}",
                arrow::util::pretty::pretty_format_batches(batches)?
            )?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut sink);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut sink);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            anyhow::ensure!(out.is_some(), "--format parquet needs --out FILE");
            let Some(first) = batches.first() else {
                anyhow::bail!("the query returned no batches: nothing to write");
            };
            let mut w = parquet::arrow::ArrowWriter::try_new(sink, first.schema(), None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
        }
    }
    Ok(())
}
