//! The Kafka connector's configuration: `source: {type: kafka, ...}` and `type: kafka` sinks,
//! how they are checked, and what they plan to. The connection itself (`kafka:` at the top
//! of the pipeline) is shared by every Kafka client of the pipeline.

use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::{PlanCx, Spanned};
use crate::formats::framing::SourceFormat;
use crate::sql::PlannedExpr;

/// `source: {type: kafka, topics: [adt], format: hl7}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Each message is a record (`hl7` also splits batch files).
    #[schemars(extend("enum" = ["hl7", "json", "ndjson", "avro"]))]
    pub format: Spanned<String>,
    /// The topics to read.
    #[serde(default)]
    pub topics: Vec<Spanned<String>>,
    /// Or a regex of topic names (`^facility\..*`).
    pub pattern: Option<Spanned<String>>,
    /// The consumer group (default: the pipeline name).
    pub group: Option<Spanned<String>>,
    /// Where a group without committed offsets starts: `earliest` (default) or `latest`.
    #[schemars(extend("enum" = ["earliest", "latest"]))]
    pub start: Option<Spanned<String>>,
    /// Static group membership (`group.instance.id`): a restarted process with the same id
    /// takes its partitions back at once instead of waiting for the broker to expire the old
    /// member. `PLEXUS_KAFKA_INSTANCE_ID` overrides (one id per process).
    pub instance: Option<Spanned<String>>,
}

/// A Kafka source's subscription.
#[derive(Debug, Clone)]
pub struct KafkaSourcePlan {
    pub topics: Vec<String>,
    pub pattern: Option<String>,
    pub group: String,
    pub start: String,
    pub instance: Option<String>,
}

impl KafkaSourceConfig {
    pub fn plan(
        &self,
        cx: &mut PlanCx<'_>,
        kind: &Spanned<String>,
        format: SourceFormat,
    ) -> Option<KafkaSourcePlan> {
        if !cx.has_kafka {
            cx.err(kind, "a kafka source needs a `kafka:` connection block");
        }
        if format == SourceFormat::Csv {
            cx.err(&self.format, "kafka messages are hl7, json or avro");
            return None;
        }
        if self.topics.is_empty() == self.pattern.is_none() {
            cx.err(
                kind,
                "a kafka source needs `topics` or a `pattern` (one of them)",
            );
            return None;
        }
        if let Some(p) = &self.pattern
            && let Err(e) = regex_check(p)
        {
            cx.err(p, e);
        }
        let start = match self.start.as_ref().map(|s| s.as_str()) {
            None | Some("earliest") => "earliest",
            Some("latest") => "latest",
            Some(other) => {
                cx.err(
                    self.start.as_ref().expect("some"),
                    format!("start is `earliest` or `latest`, not {other:?}"),
                );
                return None;
            }
        };
        Some(KafkaSourcePlan {
            topics: self.topics.iter().map(|t| t.to_string()).collect(),
            pattern: self.pattern.as_ref().map(|p| p.to_string()),
            group: self
                .group
                .as_ref()
                .map(|g| g.to_string())
                .unwrap_or_else(|| cx.pipeline.to_string()),
            start: start.to_string(),
            instance: self.instance.as_ref().map(|i| i.to_string()),
        })
    }
}

/// A light check of a topic regex (librdkafka compiles it; unbalanced groups are the usual
/// mistake).
fn regex_check(p: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut escaped = false;
    for c in p.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '(') => depth += 1,
            (false, ')') => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced `)` in topic pattern".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced `(` in topic pattern".into());
    }
    Ok(())
}

/// `{name: out, type: kafka, topic: patients, key: mrn, format: avro}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// The topic written.
    pub topic: Spanned<String>,
    /// `json` (default) or `avro` (Confluent wire format, schema in the registry).
    #[schemars(extend("enum" = ["json", "ndjson", "avro"]))]
    pub format: Option<Spanned<String>>,
    /// SQL expression for the message key (records with one key keep their order).
    pub key: Option<Spanned<String>>,
    /// Avro: the registry subject (default `<topic>-value`).
    pub subject: Option<Spanned<String>>,
    /// Avro: the writer schema (`.avsc`); default: derived from the rows.
    pub schema: Option<Spanned<String>>,
    /// Keep the provenance columns (`_raw` is always left out).
    #[serde(default)]
    pub provenance: bool,
}

/// A planned Kafka sink.
#[derive(Debug, Clone)]
pub struct KafkaSinkPlan {
    pub topic: String,
    pub key: Option<PlannedExpr>,
    pub avro: bool,
    pub subject: Option<String>,
    /// The writer schema's JSON text, when declared.
    pub avro_schema: Option<String>,
    pub provenance: bool,
}

impl KafkaSinkConfig {
    pub fn plan(
        &self,
        cx: &mut PlanCx<'_>,
        kind: &Spanned<String>,
        name: &str,
        schema: &SchemaRef,
    ) -> Option<KafkaSinkPlan> {
        if !cx.has_kafka {
            cx.err(kind, "a kafka sink needs a `kafka:` connection block");
        }
        let avro = match self.format.as_ref().map(|f| f.as_str()) {
            None | Some("json") | Some("ndjson") => false,
            Some("avro") => true,
            Some(other) => {
                cx.err(
                    self.format.as_ref().expect("some"),
                    format!("kafka sinks write json or avro, not {other:?}"),
                );
                return None;
            }
        };
        let key = match &self.key {
            Some(k) => match cx.sql.expr(&format!("{name}.key"), k, schema) {
                Ok(e) => Some(e),
                Err(e) => {
                    cx.err(k, e);
                    return None;
                }
            },
            None => None,
        };
        let avro_schema = match &self.schema {
            Some(p) if avro => {
                let path = cx.resolve(p);
                match std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|t| {
                        apache_avro::Schema::parse_str(&t)
                            .map(|_| t)
                            .map_err(|e| format!("{}: {e}", path.display()))
                    }) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        cx.err(p, e);
                        return None;
                    }
                }
            }
            Some(p) => {
                cx.err(p, "`schema` is for avro sinks");
                None
            }
            None => None,
        };
        if avro && !cx.has_registry {
            cx.err(kind, "an avro sink needs a `schema_registry:` block");
        }
        Some(KafkaSinkPlan {
            topic: self.topic.to_string(),
            key,
            avro,
            subject: self.subject.as_ref().map(|x| x.to_string()),
            avro_schema,
            provenance: self.provenance,
        })
    }
}
