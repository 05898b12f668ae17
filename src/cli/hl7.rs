//! `plexus hl7 split|extract|ack`: the HL7 engine from the shell.
//!
//! Exit codes: 0 when every record parsed, 1 when some did not (they are reported on stderr and
//! the rest is still processed), 2 on usage or I/O errors.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use clap::{Subcommand, ValueEnum};

use crate::formats::hl7::extract::{ColumnSpec, ExtractOptions, Extractor};
use crate::formats::hl7::{
    AckCode, AckError, AckOptions, Splitter, build_ack, build_nack_for_unparsed,
};

#[derive(Debug, Subcommand)]
pub enum Hl7Command {
    /// One line per message: index, byte offset, message type, control id.
    Split {
        /// HL7 file (plain messages or FHS/BHS batch file); `-` for stdin.
        file: String,
    },
    /// One record per message with the named fields.
    Extract {
        /// HL7 file; `-` for stdin.
        file: String,
        /// NAME=PATH[:TYPE], e.g. `mrn=PID-3.1`, `dob=PID-7:date`, `ids=PID-3(*).1`.
        /// Types: utf8, int64, float64, date, timestamp, list. Default: list when the path
        /// asks for every value (`(*)`), else utf8 (a path without a repetition index reads
        /// the first repetition).
        #[arg(long = "field", short = 'f', required = true)]
        fields: Vec<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Ndjson)]
        format: OutputFormat,
        /// Output file (default: stdout).
        #[arg(long, short = 'o')]
        output: Option<String>,
        /// Leave out the provenance columns (_control_id, _message_type, _source, _offset,
        /// _message_index).
        #[arg(long)]
        no_provenance: bool,
        /// Messages per Arrow batch.
        #[arg(long, default_value_t = 8192)]
        batch_size: usize,
    },
    /// Prints the acknowledgement for each message.
    Ack {
        /// HL7 file; `-` for stdin.
        file: String,
        /// MSA-1 code for messages that parsed (unparseable ones always get AR).
        #[arg(long, default_value = "AA")]
        code: AckCode,
        /// MSA-3 text message.
        #[arg(long)]
        text: Option<String>,
        /// Segment terminator: `cr` as the standard says, `lf` for reading on a terminal
        /// (default: lf on a terminal, cr otherwise).
        #[arg(long, value_enum)]
        terminator: Option<Terminator>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Ndjson,
    Csv,
    Parquet,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Terminator {
    Cr,
    Lf,
}

pub fn run(cmd: Hl7Command) -> Result<ExitCode> {
    match cmd {
        Hl7Command::Split { file } => split(&file),
        Hl7Command::Extract {
            file,
            fields,
            format,
            output,
            no_provenance,
            batch_size,
        } => extract(
            &file,
            &fields,
            format,
            output.as_deref(),
            !no_provenance,
            batch_size,
        ),
        Hl7Command::Ack {
            file,
            code,
            text,
            terminator,
        } => ack(&file, code, text, terminator),
    }
}

fn exit(bad: usize) -> ExitCode {
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn report_diagnostics(file: &str, splitter: &Splitter<'_>) {
    for d in splitter.diagnostics() {
        eprintln!("warning: {file}: {d}");
    }
}

fn split(file: &str) -> Result<ExitCode> {
    let input = crate::cli::read_input(file)?;
    let mut splitter = Splitter::new(&input);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut bad = 0;
    for item in splitter.by_ref() {
        match item {
            Ok(m) => {
                let m = m.message;
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    m.index(),
                    m.offset(),
                    m.message_type(),
                    m.control_id()
                )?;
            }
            Err(b) => {
                bad += 1;
                writeln!(out, "{}\t{}\t-\t-", b.index, b.offset)?;
                eprintln!("error: {file}: {}", b.error);
            }
        }
    }
    out.flush()?;
    report_diagnostics(file, &splitter);
    Ok(exit(bad))
}

fn extract(
    file: &str,
    fields: &[String],
    format: OutputFormat,
    output: Option<&str>,
    provenance: bool,
    batch_size: usize,
) -> Result<ExitCode> {
    let columns = fields
        .iter()
        .map(|f| ColumnSpec::parse_cli(f).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let input = crate::cli::read_input(file)?;
    let extractor = Extractor::new(
        columns,
        ExtractOptions {
            provenance,
            ..ExtractOptions::default()
        },
    );
    let sink: Box<dyn Write + Send> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut writer = BatchWriter::new(format, sink, extractor.schema())?;
    let source = if file == "-" { "stdin" } else { file };
    let mut splitter = Splitter::new(&input);
    let mut released = crate::connectors::file::mapped::Released::default();
    let mut chunk = Vec::with_capacity(batch_size.max(1));
    let mut bad = 0;
    loop {
        let item = splitter.next();
        let done = item.is_none();
        match item {
            Some(Ok(m)) => chunk.push(m.message),
            Some(Err(b)) => {
                bad += 1;
                eprintln!("error: {file}: {}", b.error);
            }
            None => {}
        }
        if chunk.len() >= batch_size.max(1) || (done && !chunk.is_empty()) {
            let x = extractor.extract(&chunk, source)?;
            for e in &x.errors {
                eprintln!("warning: {file}: column {}: {}", e.column, e.error);
            }
            writer.write(&x.batch)?;
            // What was extracted goes back to the kernel (a mapped file's pages).
            if let Some(last) = chunk.last() {
                released.upto(&input, last.offset());
            }
            chunk.clear();
        }
        if done {
            break;
        }
    }
    writer.finish()?;
    report_diagnostics(file, &splitter);
    Ok(exit(bad))
}

/// Writes batches in one of the output formats.
enum BatchWriter {
    Ndjson(arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
    Csv(arrow::csv::Writer<Box<dyn Write + Send>>),
    Parquet(parquet::arrow::ArrowWriter<Box<dyn Write + Send>>),
}

impl BatchWriter {
    fn new(
        format: OutputFormat,
        sink: Box<dyn Write + Send>,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<Self> {
        Ok(match format {
            OutputFormat::Ndjson => BatchWriter::Ndjson(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(sink),
            ),
            OutputFormat::Csv => BatchWriter::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(sink),
            ),
            OutputFormat::Parquet => {
                BatchWriter::Parquet(parquet::arrow::ArrowWriter::try_new(sink, schema, None)?)
            }
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            BatchWriter::Ndjson(w) => w.write(batch)?,
            // CSV has no arrays: lists are written as JSON arrays in one cell.
            BatchWriter::Csv(w) => w.write(&lists_as_json(batch)?)?,
            BatchWriter::Parquet(w) => w.write(batch)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            BatchWriter::Ndjson(mut w) => {
                w.finish()?;
                w.into_inner().flush()?;
            }
            BatchWriter::Csv(w) => {
                w.into_inner().flush()?;
            }
            BatchWriter::Parquet(w) => {
                w.close()?;
            }
        }
        Ok(())
    }
}

fn lists_as_json(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if let DataType::List(_) = field.data_type() {
            let list = col.as_list::<i32>();
            let mut b = StringBuilder::new();
            for i in 0..list.len() {
                if list.is_null(i) {
                    b.append_null();
                    continue;
                }
                let items = list.value(i);
                let items = items.as_string::<i32>();
                let v: Vec<Option<&str>> = (0..items.len())
                    .map(|j| (!items.is_null(j)).then(|| items.value(j)))
                    .collect();
                b.append_value(serde_json::to_string(&v)?);
            }
            fields.push(Field::new(field.name(), DataType::Utf8, true));
            columns.push(Arc::new(b.finish()));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(col.clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn ack(
    file: &str,
    code: AckCode,
    text: Option<String>,
    terminator: Option<Terminator>,
) -> Result<ExitCode> {
    let input = crate::cli::read_input(file)?;
    let stdout = std::io::stdout();
    let lf = match terminator {
        Some(Terminator::Lf) => true,
        Some(Terminator::Cr) => false,
        None => stdout.is_terminal(),
    };
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut splitter = Splitter::new(&input);
    let mut bad = 0;
    for item in splitter.by_ref() {
        let mut bytes = match item {
            Ok(m) => {
                let mut o = AckOptions::new(code);
                o.text = text.clone();
                if code.is_negative() {
                    // A negative ack without a located error still says why (ERR-3 207).
                    o.errors.push(AckError::internal(text.clone()));
                }
                build_ack(&m.message, &o)
            }
            Err(b) => {
                bad += 1;
                eprintln!("error: {file}: {}", b.error);
                let mut o = AckOptions::new(AckCode::AR);
                o.text = Some(b.error.kind.to_string());
                build_nack_for_unparsed(b.raw, &b.error, &o)
            }
        };
        if lf {
            for byte in bytes.iter_mut() {
                if *byte == b'\r' {
                    *byte = b'\n';
                }
            }
        } else {
            bytes.push(b'\n');
        }
        out.write_all(&bytes)?;
    }
    out.flush()?;
    report_diagnostics(file, &splitter);
    Ok(exit(bad))
}
