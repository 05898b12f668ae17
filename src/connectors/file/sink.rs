//! File sink: NDJSON, Parquet or Arrow IPC files, or NDJSON on stdout.
//!
//! `_raw` (the original record) is never written to an output (it is for the dead-letter
//! output); the other provenance columns are written when the sink asks for them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::super::{BatchSink, ConnectorError};
use super::config::SinkFormat;
use crate::record::{RAW, is_provenance};

enum Writer {
    Ndjson(arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
    Parquet(Option<parquet::arrow::ArrowWriter<File>>),
    Arrow(Option<arrow::ipc::writer::FileWriter<BufWriter<File>>>),
}

/// Row groups of 128Ki rows (parquet's default is 1Mi): the writer holds a row group in
/// memory until it is full, so a smaller one bounds a long run's RSS; readers still get
/// large, well-compressed groups.
fn parquet_props() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(128 * 1024))
        .build()
}

pub struct FileSink {
    name: String,
    writer: Writer,
    /// Input column indices written, in order.
    keep: Vec<usize>,
    schema: SchemaRef,
    /// (temporary, final) path of a staged file: renamed into place by `finish`.
    staged: Option<(PathBuf, PathBuf)>,
    /// A stream's output file, fsynced at every barrier: a source commits (a Kafka offset,
    /// an MLLP spool position) only once what it fed is on disk.
    sync: Option<File>,
}

/// Where a staged output is written until it is complete: beside the final file (so the
/// rename stays on one file system), hidden, and named after it.
pub fn staging_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.partial"))
}

/// `name.parquet` → `name.<epoch ms>.parquet`: where a stream's previous file is kept.
fn kept_name(p: &Path) -> PathBuf {
    let ms = chrono::Utc::now().timestamp_millis();
    let stem = p.file_stem().unwrap_or_default().to_string_lossy();
    match p.extension() {
        Some(ext) => p.with_file_name(format!("{stem}.{ms}.{}", ext.to_string_lossy())),
        None => p.with_file_name(format!("{stem}.{ms}")),
    }
}

impl FileSink {
    /// `path` None writes NDJSON to stdout. `staged` (batch runs): the file is written under
    /// a temporary name and renamed when complete, so a reader never sees a partial file (a
    /// Parquet file without its footer is unreadable) and a failed run leaves the previous
    /// output in place. A stream's file output is written in place, for readers to follow,
    /// and kept across restarts: NDJSON is appended to; a Parquet or Arrow file (which cannot
    /// be appended to) is first renamed to `<name>.<epoch ms>.<ext>`.
    pub fn create(
        name: &str,
        path: Option<&Path>,
        format: SinkFormat,
        input: &SchemaRef,
        provenance: bool,
        staged: bool,
    ) -> Result<Self, ConnectorError> {
        let staged = path
            .filter(|_| staged)
            .map(|p| (staging_path(p), p.to_path_buf()));
        let written = staged.as_ref().map(|(tmp, _)| tmp.as_path()).or(path);
        let keep: Vec<usize> = (0..input.fields().len())
            .filter(|&i| {
                let n = input.field(i).name();
                n != RAW && (provenance || !is_provenance(n))
            })
            .collect();
        let schema = Arc::new(Schema::new(
            keep.iter()
                .map(|&i| input.field(i).as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        let context = || path.map_or("stdout".to_string(), |p| p.display().to_string());
        let open = |p: &Path| -> Result<File, ConnectorError> {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| ConnectorError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            let io = |source| ConnectorError::Io {
                path: p.display().to_string(),
                source,
            };
            if staged.is_some() {
                return File::create(p).map_err(io);
            }
            if format == SinkFormat::Ndjson {
                return std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(io);
            }
            if std::fs::metadata(p).is_ok_and(|m| m.len() > 0) {
                let kept = kept_name(p);
                std::fs::rename(p, &kept).map_err(io)?;
                tracing::info!(kept = %kept.display(), "stream output: the previous run's file kept");
            }
            File::create(p).map_err(io)
        };
        let writer = match (format, written) {
            (SinkFormat::Ndjson, None) => {
                Writer::Ndjson(ndjson(Box::new(BufWriter::new(std::io::stdout()))))
            }
            (SinkFormat::Ndjson, Some(p)) => {
                Writer::Ndjson(ndjson(Box::new(BufWriter::new(open(p)?))))
            }
            (SinkFormat::Parquet, Some(p)) => Writer::Parquet(Some(
                parquet::arrow::ArrowWriter::try_new(
                    open(p)?,
                    schema.clone(),
                    Some(parquet_props()),
                )
                .map_err(|source| ConnectorError::Parquet {
                    context: context(),
                    source,
                })?,
            )),
            (SinkFormat::Arrow, Some(p)) => Writer::Arrow(Some(
                arrow::ipc::writer::FileWriter::try_new(BufWriter::new(open(p)?), &schema)
                    .map_err(|source| ConnectorError::Arrow {
                        context: context(),
                        source,
                    })?,
            )),
            (_, None) => Writer::Ndjson(ndjson(Box::new(BufWriter::new(std::io::stdout())))),
        };
        let sync = match (&staged, written) {
            (None, Some(p)) => Some(File::open(p).map_err(|source| ConnectorError::Io {
                path: p.display().to_string(),
                source,
            })?),
            _ => None,
        };
        Ok(FileSink {
            name: name.to_string(),
            writer,
            keep,
            schema,
            staged,
            sync,
        })
    }

    fn arrow_err(&self, source: arrow::error::ArrowError) -> ConnectorError {
        ConnectorError::Arrow {
            context: format!("sink {}", self.name),
            source,
        }
    }
}

fn ndjson(w: Box<dyn Write + Send>) -> arrow::json::LineDelimitedWriter<Box<dyn Write + Send>> {
    arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(w)
}

impl BatchSink for FileSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let batch = batch
            .project(&self.keep)
            .and_then(|b| b.with_schema(self.schema.clone()))
            .map_err(|e| self.arrow_err(e))?;
        let name = self.name.clone();
        match &mut self.writer {
            Writer::Ndjson(w) => w.write(&batch).map_err(|source| ConnectorError::Arrow {
                context: format!("sink {name}"),
                source,
            }),
            Writer::Parquet(Some(w)) => w.write(&batch).map_err(|source| ConnectorError::Parquet {
                context: format!("sink {name}"),
                source,
            }),
            Writer::Arrow(Some(w)) => w.write(&batch).map_err(|source| ConnectorError::Arrow {
                context: format!("sink {name}"),
                source,
            }),
            Writer::Parquet(None) | Writer::Arrow(None) => Ok(()),
        }
    }

    /// Files are durable once flushed to the OS (a Parquet row group is closed early).
    fn barrier(&mut self) -> Result<Option<crate::connectors::Durable>, ConnectorError> {
        let path = format!("sink {}", self.name);
        match &mut self.writer {
            Writer::Ndjson(w) => w
                .get_mut()
                .flush()
                .map_err(|source| ConnectorError::Io { path, source })?,
            Writer::Parquet(Some(w)) => w.flush().map_err(|source| ConnectorError::Parquet {
                context: path,
                source,
            })?,
            Writer::Parquet(None) | Writer::Arrow(_) => {}
        }
        if let Some(f) = &self.sync {
            f.sync_data().map_err(|source| ConnectorError::Io {
                path: format!("sink {}", self.name),
                source,
            })?;
        }
        Ok(None)
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        self.close()?;
        if let Some((tmp, path)) = self.staged.take() {
            std::fs::rename(&tmp, &path).map_err(|source| ConnectorError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

impl FileSink {
    /// Ends the file (Parquet footer, Arrow IPC footer) and flushes it.
    fn close(&mut self) -> Result<(), ConnectorError> {
        let name = self.name.clone();
        let arrow = |source| ConnectorError::Arrow {
            context: format!("sink {name}"),
            source,
        };
        match &mut self.writer {
            Writer::Ndjson(w) => {
                w.finish().map_err(arrow)?;
                w.get_mut().flush().map_err(|source| ConnectorError::Io {
                    path: format!("sink {}", self.name),
                    source,
                })
            }
            Writer::Parquet(w) => match w.take() {
                Some(w) => w
                    .close()
                    .map(|_| ())
                    .map_err(|source| ConnectorError::Parquet {
                        context: format!("sink {}", self.name),
                        source,
                    }),
                None => Ok(()),
            },
            Writer::Arrow(w) => match w.take() {
                Some(mut w) => w.finish().map_err(arrow),
                None => Ok(()),
            },
        }
    }
}
