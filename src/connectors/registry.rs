//! The connector registry: which `type:` names which connector.
//!
//! A source or sink entry in a pipeline is read in two parts: the keys every entry has
//! (`type`, and for sinks `name` and `input`), then the rest as the typed config of the
//! connector its `type` names (unknown keys rejected, errors at `file:line:column`). Adding a
//! connector is one folder (`config.rs`, `source.rs`/`sink.rs`) and one row here.

use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use marked_yaml::{FromNodeError, Node};
use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::fhir::{FhirSinkConfig, FhirSinkPlan};
use super::file::{FileSinkConfig, FileSinkPlan, FileSourceConfig, StdoutSinkConfig};
use super::http::source_config::{HttpSourceConfig, HttpSourcePlan};
use super::http::{HttpSinkConfig, HttpSinkPlan};
use super::kafka::config::{KafkaSinkConfig, KafkaSinkPlan, KafkaSourceConfig, KafkaSourcePlan};
use super::mllp::{MllpSinkConfig, MllpSinkPlan, MllpSourceConfig, MllpSourcePlan};
use super::{BatchSink, BatchSource, BuildCx, ConnectorError};
use crate::config::{PlanCx, Spanned};
use crate::formats::framing::SourceFormat;
use crate::resilience::breaker::BreakerConfig;

/// One connector of a kind (sources or sinks): its `type` name, a line of help, how its
/// config is read, and its JSON Schema.
pub struct Connector<C> {
    pub kind: &'static str,
    pub about: &'static str,
    read: fn(&Node) -> Result<C, FromNodeError>,
    schema: fn(&mut SchemaGenerator) -> Schema,
}

impl<C> Connector<C> {
    /// Reads the connector's own keys (the common ones already taken out of `node`).
    pub fn read(&self, node: &Node) -> Result<C, FromNodeError> {
        (self.read)(node)
    }

    /// The JSON Schema of the connector's own keys (an object).
    pub fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.schema)(generator)
    }
}

/// A source's typed config.
// Read once per pipeline load: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SourceConfig {
    File(FileSourceConfig),
    Kafka(KafkaSourceConfig),
    Mllp(MllpSourceConfig),
    Http(HttpSourceConfig),
}

/// A sink's typed config.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SinkConfig {
    File(FileSinkConfig),
    Stdout(StdoutSinkConfig),
    Kafka(KafkaSinkConfig),
    Http(HttpSinkConfig),
    Fhir(FhirSinkConfig),
    Mllp(MllpSinkConfig),
}

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

pub static SOURCES: &[Connector<SourceConfig>] = &[
    Connector {
        kind: "file",
        about: "files (a path or glob) or stdin, framed into records: the embedded default",
        read: |n| marked_yaml::from_node(n).map(SourceConfig::File),
        schema: schema_of::<FileSourceConfig>,
    },
    Connector {
        kind: "kafka",
        about: "Kafka topics (a list or a pattern), one record per message, at least once",
        read: |n| marked_yaml::from_node(n).map(SourceConfig::Kafka),
        schema: schema_of::<KafkaSourceConfig>,
    },
    Connector {
        kind: "mllp",
        about: "an MLLP listener (HL7 v2 over TCP): spooled durably, then acknowledged",
        read: |n| marked_yaml::from_node(n).map(SourceConfig::Mllp),
        schema: schema_of::<MllpSourceConfig>,
    },
    Connector {
        kind: "http",
        about: "HTTP/webhook ingest: verified (HMAC, API key, bearer), spooled durably, then 202",
        read: |n| marked_yaml::from_node(n).map(SourceConfig::Http),
        schema: schema_of::<HttpSourceConfig>,
    },
];

pub static SINKS: &[Connector<SinkConfig>] = &[
    Connector {
        kind: "file",
        about: "an NDJSON, Parquet or Arrow IPC file",
        read: |n| marked_yaml::from_node(n).map(SinkConfig::File),
        schema: schema_of::<FileSinkConfig>,
    },
    Connector {
        kind: "stdout",
        about: "NDJSON on standard output",
        read: |n| marked_yaml::from_node(n).map(SinkConfig::Stdout),
        schema: schema_of::<StdoutSinkConfig>,
    },
    Connector {
        kind: "kafka",
        about: "a Kafka topic, JSON or Confluent-framed Avro, keyed by a SQL expression",
        read: |n| marked_yaml::from_node(n).map(SinkConfig::Kafka),
        schema: schema_of::<KafkaSinkConfig>,
    },
    Connector {
        kind: "http",
        about: "one signed JSON request per row (webhooks, REST), with retries and a breaker",
        read: |n| marked_yaml::from_node(n).map(SinkConfig::Http),
        schema: schema_of::<HttpSinkConfig>,
    },
    Connector {
        kind: "fhir",
        about: "a FHIR R4 server: merged updates, or sync with conflict detection",
        read: |n| marked_yaml::from_node(n).map(SinkConfig::Fhir),
        schema: schema_of::<FhirSinkConfig>,
    },
    Connector {
        kind: "mllp",
        about: "HL7 v2 over MLLP to a receiver, one message at a time, each ACK awaited",
        read: |n| marked_yaml::from_node(n).map(SinkConfig::Mllp),
        schema: schema_of::<MllpSinkConfig>,
    },
];

/// The source connector named `kind`.
pub fn source(kind: &str) -> Option<&'static Connector<SourceConfig>> {
    SOURCES.iter().find(|c| c.kind == kind)
}

/// The sink connector named `kind`.
pub fn sink(kind: &str) -> Option<&'static Connector<SinkConfig>> {
    SINKS.iter().find(|c| c.kind == kind)
}

/// `file, kafka` (for error messages).
pub fn kinds<C>(connectors: &[Connector<C>]) -> String {
    connectors
        .iter()
        .map(|c| c.kind)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A planned source.
// One per pipeline: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SourcePlan {
    /// Files matched by the glob, in order; `-` is stdin.
    File {
        paths: Vec<PathBuf>,
    },
    Kafka(KafkaSourcePlan),
    /// An MLLP listener with its spool.
    Mllp(MllpSourcePlan),
    /// An HTTP server with its spool.
    Http(HttpSourcePlan),
}

impl SourcePlan {
    /// The files read (empty for a stream).
    pub fn paths(&self) -> &[PathBuf] {
        match self {
            SourcePlan::File { paths } => paths,
            SourcePlan::Kafka(_) | SourcePlan::Mllp(_) | SourcePlan::Http(_) => &[],
        }
    }

    pub fn kafka(&self) -> Option<&KafkaSourcePlan> {
        match self {
            SourcePlan::Kafka(k) => Some(k),
            SourcePlan::File { .. } | SourcePlan::Mllp(_) | SourcePlan::Http(_) => None,
        }
    }

    /// A bounded input (files): the run ends when it is read.
    pub fn is_bounded(&self) -> bool {
        matches!(self, SourcePlan::File { .. })
    }

    /// Connects the source. Call within the runtime (streams start tasks on it).
    pub fn build(&self, cx: SourceCx<'_>) -> Result<Box<dyn BatchSource>, ConnectorError> {
        Ok(match self {
            SourcePlan::Kafka(k) => Box::new(super::kafka::KafkaSource::new(
                &cx.kafka.cloned().unwrap_or_default(),
                k,
                cx.batching,
                cx.stop,
                cx.exit_when_idle,
                cx.meta,
            )?),
            SourcePlan::Mllp(m) => super::mllp::source::start(m, cx)?,
            SourcePlan::Http(h) => super::http::source::start(h, cx)?,
            SourcePlan::File { paths } => Box::new(
                super::file::FileSource::new(
                    paths.clone(),
                    cx.batching.format,
                    cx.batching.max_rows,
                )
                .with_stop(cx.stop)
                .with_max_bytes(cx.batching.max_bytes)
                .with_limit(cx.batching.limit),
            ),
        })
    }
}

/// What starting a source needs from the run.
pub struct SourceCx<'a> {
    pub batching: super::Batching,
    /// The pipeline's `kafka:` connection.
    pub kafka: Option<&'a super::kafka::KafkaConnection>,
    /// Set by a signal: a stream drains, commits and ends.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Streams: end after this long without a record.
    pub exit_when_idle: Option<std::time::Duration>,
    /// Kafka record metadata shared with the DLQ topic writer.
    pub meta: super::kafka::RecordMeta,
}

impl SourceConfig {
    /// The `format` key (every source has one).
    pub fn format(&self) -> &Spanned<String> {
        match self {
            SourceConfig::File(c) => &c.format,
            SourceConfig::Kafka(c) => &c.format,
            SourceConfig::Mllp(c) => &c.format,
            SourceConfig::Http(c) => &c.format,
        }
    }

    /// How its records are framed (see `SourceSpec::record_format`).
    pub fn record_format(&self) -> Result<SourceFormat, String> {
        match self {
            SourceConfig::Http(c) => match c.format.as_str() {
                "hl7" => Ok(SourceFormat::Hl7),
                "json" | "ndjson" | "fhir" => Ok(SourceFormat::Ndjson),
                other => Err(format!("unknown format {other:?} (json, fhir, hl7)")),
            },
            _ => SourceFormat::parse(self.format()),
        }
    }

    pub fn plan(
        &self,
        cx: &mut PlanCx<'_>,
        kind: &Spanned<String>,
        format: SourceFormat,
    ) -> Option<SourcePlan> {
        match self {
            SourceConfig::File(c) => c.plan(cx, format).map(|paths| SourcePlan::File { paths }),
            SourceConfig::Kafka(c) => c.plan(cx, kind, format).map(SourcePlan::Kafka),
            SourceConfig::Mllp(c) => c.plan(cx, format).map(SourcePlan::Mllp),
            SourceConfig::Http(c) => c.plan(cx, format).map(SourcePlan::Http),
        }
    }
}

/// A planned sink: what its connector needs to start.
#[derive(Debug, Clone)]
pub enum SinkPlan {
    /// A file, or stdout.
    File(FileSinkPlan),
    Kafka(KafkaSinkPlan),
    Http(HttpSinkPlan),
    Fhir(FhirSinkPlan),
    Mllp(MllpSinkPlan),
}

impl SinkConfig {
    /// Checks the config against the rows it will receive (`schema`).
    pub fn plan(
        &self,
        cx: &mut PlanCx<'_>,
        kind: &Spanned<String>,
        name: &Spanned<String>,
        schema: &SchemaRef,
    ) -> Option<SinkPlan> {
        Some(match self {
            SinkConfig::File(c) => SinkPlan::File(c.plan(cx)?),
            SinkConfig::Stdout(c) => SinkPlan::File(c.plan(cx)?),
            SinkConfig::Kafka(c) => SinkPlan::Kafka(c.plan(cx, kind, name, schema)?),
            SinkConfig::Http(c) => SinkPlan::Http(c.plan(cx)),
            SinkConfig::Fhir(c) => SinkPlan::Fhir(c.plan(cx, name, schema)?),
            SinkConfig::Mllp(c) => SinkPlan::Mllp(c.plan(cx, schema)?),
        })
    }
}

impl SinkPlan {
    /// The file it writes, if any.
    pub fn output_path(&self) -> Option<&Path> {
        match self {
            SinkPlan::File(f) => f.path.as_deref(),
            _ => None,
        }
    }

    /// Moves the files it writes into `dir`, keeping their names (`--output DIR`).
    pub fn relocate(&mut self, dir: &Path) {
        let moved = |p: &Path| dir.join(p.file_name().unwrap_or_default());
        match self {
            SinkPlan::File(FileSinkPlan { path: Some(p), .. }) => *p = moved(p),
            SinkPlan::Fhir(FhirSinkPlan {
                sync: Some(sync), ..
            }) => sync.events_path = moved(&sync.events_path),
            _ => {}
        }
    }

    /// The circuit breaker gating its calls: a slot for sinks that call a service.
    pub fn breaker_mut(&mut self) -> Option<&mut Option<BreakerConfig>> {
        match self {
            SinkPlan::Http(h) => Some(&mut h.breaker),
            SinkPlan::Fhir(f) => Some(&mut f.http.breaker),
            SinkPlan::Mllp(m) => Some(&mut m.breaker),
            _ => None,
        }
    }

    pub fn has_breaker(&self) -> bool {
        match self {
            SinkPlan::Http(h) => h.breaker.is_some(),
            SinkPlan::Fhir(f) => f.http.breaker.is_some(),
            SinkPlan::Mllp(m) => m.breaker.is_some(),
            _ => false,
        }
    }

    /// Starts the sink (its retry worker too, when it has one: into `cx.workers`).
    pub fn build(
        self,
        name: &str,
        schema: &SchemaRef,
        cx: &mut BuildCx<'_>,
    ) -> Result<Box<dyn BatchSink>, ConnectorError> {
        Ok(match self {
            SinkPlan::File(f) => Box::new(super::file::FileSink::create(
                name,
                f.path.as_deref(),
                f.format,
                schema,
                f.provenance,
                cx.staged,
            )?),
            SinkPlan::Kafka(k) => Box::new(super::kafka::sink::build(k, name, schema, cx)?),
            SinkPlan::Mllp(m) => Box::new(super::mllp::MllpSink::new(m, name, cx)?),
            SinkPlan::Http(h)
            | SinkPlan::Fhir(FhirSinkPlan {
                http: h,
                sync: None,
            }) => Box::new(http_sink(h, name, cx)?),
            SinkPlan::Fhir(FhirSinkPlan {
                http,
                sync: Some(sync),
            }) => Box::new(super::fhir::sink::build(&http, &sync, name, cx)?),
        })
    }
}

/// An HTTP (or plain FHIR) sink; with retry topics, their parking and worker too. The one
/// place the HTTP sink and the Kafka retry worker meet: neither imports the other.
fn http_sink(
    h: HttpSinkPlan,
    name: &str,
    cx: &mut BuildCx<'_>,
) -> Result<super::http::HttpSink, ConnectorError> {
    let parts = super::http::sink::parts(&h, name, cx)?;
    let parking = match &h.retry_topic {
        Some(base) => Some(super::kafka::retry::start(
            &h,
            base,
            name,
            parts.target.clone(),
            parts.breaker.clone(),
            cx,
        )?),
        None => None,
    };
    Ok(super::http::HttpSink::new(parts, cx.rt.clone(), parking))
}
