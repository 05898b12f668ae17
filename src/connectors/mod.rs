//! Connectors: where records come from and where rows go.
//!
//! | file              | what it does                                                      |
//! |-------------------|-------------------------------------------------------------------|
//! | `file/source.rs`  | files (globs) or stdin, framed into raw records (HL7, NDJSON, CSV) |
//! | `file/sink.rs`    | NDJSON, Parquet or Arrow IPC files, or stdout                      |
//! | `dlq.rs`          | the dead-letter output: original record + stage, rule, reason     |
//! | `memory.rs`       | in-memory sinks for `plexus test` and tests                        |

pub mod dlq;
pub mod file;
pub mod memory;

use arrow::record_batch::RecordBatch;

use crate::operators::DeadLetters;

/// Errors of sources and sinks (I/O and encoding), with the path or name involved.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Arrow {
        context: String,
        source: arrow::error::ArrowError,
    },
    #[error("{context}: {source}")]
    Parquet {
        context: String,
        source: parquet::errors::ParquetError,
    },
}

/// A source of raw-record batches (see `operators::parse::raw_record_schema`).
pub trait BatchSource: Send {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError>;
    /// Bytes read so far and in total (when known), for progress.
    fn progress(&self) -> (u64, Option<u64>);
    /// Non-fatal findings about the input (e.g. HL7 batch trailer counts).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Where rows of one pipeline output go.
pub trait BatchSink: Send {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError>;
    fn finish(&mut self) -> Result<(), ConnectorError>;
}

/// Where dead letters go.
pub trait DeadLetterSink: Send {
    fn write(&mut self, stage: &str, dead: &DeadLetters) -> Result<(), ConnectorError>;
    fn finish(&mut self) -> Result<(), ConnectorError>;
}
