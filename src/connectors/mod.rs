//! Connectors: where records come from and where rows go.
//!
//! | file              | what it does                                                      |
//! |-------------------|-------------------------------------------------------------------|
//! | `file/source.rs`  | files (globs) or stdin, framed into raw records (HL7, NDJSON, CSV) |
//! | `file/sink.rs`    | NDJSON, Parquet or Arrow IPC files, or stdout                      |
//! | `dlq.rs`          | the dead-letter output: original record + stage, rule, reason     |
//! | `memory.rs`       | in-memory sinks for `plexus test` and tests                        |
//! | `kafka/`          | Kafka source, sink and dead-letter topic (at-least-once)           |
//! | `schema_registry.rs` | the schema registry client (Confluent wire format, schema cache) |
//! | `http/`           | HTTP sink (webhooks, REST): signed requests, retries, retry topics; HTTP source (webhooks in) |
//! | `mllp/`           | MLLP listener (spooled, ACKed) and sender                          |
//! | `spool.rs`, `spooled.rs` | the durable queue behind listeners, and the source reading it |
//! | `state_db.rs`     | SQLite/PostgreSQL state (sync state, idempotency keys)            |
//! | `monitoring/`     | window rows (Parquet, topic), alerts, breaker events, window state |

pub mod checkpoint;
pub mod dlq;
pub mod fhir;
pub mod file;
pub mod handoff;
pub mod http;
pub mod kafka;
pub mod memory;
pub mod mllp;
pub mod monitoring;
pub mod registry;
pub mod spool;
pub mod spooled;
pub mod state_db;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};

use crate::metrics::outcome::OutcomeTap;
use crate::resilience::breaker::SharedBreaker;

use crate::record::DeadLetters;

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
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("{0}")]
    Other(String),
}

/// One JSON object per row (nulls written out), as bytes: what the Kafka and HTTP sinks send.
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, arrow::error::ArrowError> {
    let mut buf = Vec::with_capacity(batch.num_rows() * 128);
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    // The writer escapes newlines inside strings, so lines are rows.
    Ok(buf
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Resolves once everything written before it is durable (Kafka acks received).
pub type Durable = futures::future::BoxFuture<'static, Result<(), ConnectorError>>;

pub use checkpoint::{Checkpoints, Position};

/// A source of raw-record batches (see `operators::parse::raw_record_schema`).
pub trait BatchSource: Send {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError>;
    /// Bytes read so far and in total (when known), for progress.
    fn progress(&self) -> (u64, Option<u64>);
    /// Non-fatal findings about the input (e.g. HL7 batch trailer counts).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// Checkpointed sources: the positions the batch just returned covers, committed once
    /// everything derived from it is durable. None (files): the source does not commit.
    fn positions(&mut self) -> Option<Vec<Position>> {
        None
    }
    /// Commits positions whose batches are complete (`last`: the final commit at shutdown).
    fn commit(&mut self, _positions: &[Position], _last: bool) -> Result<(), ConnectorError> {
        Ok(())
    }
    /// Gives the source the run's checkpoints (a rebalance waits for in-flight batches).
    fn attach(&mut self, _checkpoints: std::sync::Arc<Checkpoints>) {}
    /// A source that answers senders once their records settle (MLLP application ACKs):
    /// the run tells it of every dead letter and every completed epoch.
    fn settlement(&self) -> Option<std::sync::Arc<dyn Settlement>> {
        None
    }
}

/// Told of each dead-lettered record of a settling source before the epoch covering it
/// completes (`offset` is the record's `_offset`, `stage` the stage or sink that refused
/// it), then of each completed epoch's positions: everything below them has settled.
pub trait Settlement: Send + Sync {
    fn dead_letter(&self, offset: i64, stage: &str, rule: &str, reason: &str);
    fn complete(&self, positions: &[Position]);
}

/// Rows a sink could not deliver, per `write`: dead letters, and records parked on a retry
/// topic (by `_record_index`; they are neither delivered nor dead yet).
#[derive(Debug, Default)]
pub struct SinkOutcome {
    pub dead: Vec<DeadLetters>,
    pub parked: Vec<i64>,
    /// How many of `dead` could not be delivered because the target was unreachable (retries
    /// spent, or the outage outlasted the wait) rather than because it refused the record.
    pub unavailable: u64,
}

/// Where rows of one pipeline output go.
pub trait BatchSink: Send {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError>;
    /// Rows of the last `write` that were not delivered (sinks that deliver per record).
    fn take_outcome(&mut self) -> SinkOutcome {
        SinkOutcome::default()
    }
    /// Makes what was written so far durable: now (returns None) or when the returned
    /// future resolves (Kafka delivery reports), without blocking later writes.
    fn barrier(&mut self) -> Result<Option<Durable>, ConnectorError> {
        Ok(None)
    }
    fn finish(&mut self) -> Result<(), ConnectorError>;
}

/// Where dead letters go.
pub trait DeadLetterSink: Send {
    fn write(&mut self, stage: &str, dead: &DeadLetters) -> Result<(), ConnectorError>;
    /// As `BatchSink::barrier`.
    fn barrier(&mut self) -> Result<Option<Durable>, ConnectorError> {
        Ok(None)
    }
    fn finish(&mut self) -> Result<(), ConnectorError>;
}

/// A record to park.
pub struct Parked<'a> {
    /// Which retry topic (`<base>.<n>`): the attempt that failed.
    pub failed_attempt: u32,
    /// The attempt number of the next try (the same one when a breaker refused the call).
    pub next_attempt: u32,
    pub due: DateTime<Utc>,
    pub first_failed_at: DateTime<Utc>,
    pub error: String,
    /// What the sink sends (the request body).
    pub body: &'a [u8],
    /// FHIR: the request's path under the base (see `net::http::Request::path`).
    pub path: Option<&'a str>,
    /// FHIR: elements the message deletes (see `net::http::Request::delete`).
    pub delete: Option<&'a str>,
    /// The record's stable identity (idempotency key); also the message key.
    pub key: &'a str,
    pub correlation_id: Option<&'a str>,
    /// The original record, for the dead-letter topic if every attempt fails.
    pub original: Option<&'a [u8]>,
    /// `_source` and `_offset` of the original record.
    pub source: Option<&'a str>,
    pub offset: Option<i64>,
}

/// Where a sink that calls a service parks records for a later attempt instead of waiting
/// (Kafka retry topics, `kafka::retry`): the HTTP sink sees only this.
pub trait Parking: Send {
    fn park(&mut self, p: Parked<'_>) -> Result<(), ConnectorError>;
    /// As `BatchSink::barrier`: resolves when everything parked so far is durable.
    fn barrier(&mut self) -> Option<Durable>;
    fn finish(&mut self) -> Result<(), ConnectorError>;
}

/// How a source groups records into batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub format: crate::formats::framing::SourceFormat,
    pub max_rows: usize,
    /// Streams: close a batch at this many payload bytes.
    pub max_bytes: usize,
    /// Streams: close a batch this long after its first record.
    pub max_delay: Duration,
    /// Stop after this many records (sampling, benchmarks).
    pub limit: Option<u64>,
}

/// The run's circuit breakers, by sink name (windows trip them, telemetry shows them).
pub type Breakers = Arc<Mutex<Vec<(String, SharedBreaker)>>>;

/// A sink's retry worker (Kafka retry topics), joined when the run ends.
pub type RetryWorker = std::thread::JoinHandle<Result<kafka::retry::RetryStats, ConnectorError>>;

/// Who a sink writes for (headers, dead letters, breaker names).
#[derive(Debug, Clone)]
pub struct SinkId {
    pub name: String,
    pub pipeline: String,
    pub integration: String,
}

/// What a connector is started with: the run around it. The topology fills it in.
pub struct BuildCx<'a> {
    pub rt: &'a tokio::runtime::Handle,
    pub pipeline: &'a str,
    pub integration: &'a str,
    pub kafka: Option<&'a kafka::KafkaConnection>,
    pub registry: Option<&'a crate::net::schema_registry::SchemaRegistry>,
    pub dlq_topic: Option<&'a str>,
    /// The consumer group retry workers' groups are named after.
    pub group: String,
    /// A batch run: files are written under a temporary name and renamed when complete.
    pub staged: bool,
    /// Set by a signal.
    pub stop: Arc<AtomicBool>,
    /// Set when the main flow has ended (retry workers then finish what is due).
    pub main_done: Arc<AtomicBool>,
    /// How long a retry worker waits for more before it ends a batch run.
    pub idle: Duration,
    pub breakers: Breakers,
    pub outcomes: OutcomeTap,
    pub workers: Vec<RetryWorker>,
}

impl BuildCx<'_> {
    pub fn sink_id(&self, name: &str) -> SinkId {
        SinkId {
            name: name.to_string(),
            pipeline: self.pipeline.to_string(),
            integration: self.integration.to_string(),
        }
    }

    /// A breaker named `<integration>/<sink>`, registered with the run.
    pub fn breaker(
        &self,
        name: &str,
        config: crate::resilience::breaker::BreakerConfig,
    ) -> SharedBreaker {
        let b = SharedBreaker::new(&format!("{}/{name}", self.integration), config);
        self.breakers
            .lock()
            .expect("breakers")
            .push((name.to_string(), b.clone()));
        b
    }
}
