//! The Kafka sink: one message per row, JSON or Confluent-framed Avro, keyed by a SQL
//! expression, with provenance in headers.
//!
//! Writes only enqueue (librdkafka batches and retries; the idempotent producer keeps order
//! per partition without duplicates); `barrier` hands the runtime a future that resolves when
//! every message written before it has been acknowledged by the brokers.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::config::KafkaSinkPlan;
use super::{KafkaConnection, headers, parse_source_name};
use crate::connectors::{BatchSink, BuildCx, ConnectorError, Durable, SinkId};
use crate::net::schema_registry::{SchemaRegistry, frame_wire};
use crate::record::is_provenance;
use crate::sql::PlannedExpr;

/// How rows are encoded.
pub enum KafkaEncoding {
    /// One JSON object per message (explicit nulls).
    Json,
    /// Confluent wire format: magic byte, schema id, Avro datum.
    Avro {
        schema: Arc<apache_avro::Schema>,
        id: u32,
    },
}

pub struct KafkaSink {
    name: String,
    topic: String,
    out: super::Deliveries,
    encoding: KafkaEncoding,
    key: Option<PlannedExpr>,
    /// Payload columns (input indices) and their schema.
    keep: Vec<usize>,
    payload_schema: SchemaRef,
    pipeline: String,
    integration: String,
}

/// Starts a planned Kafka sink (registering its Avro schema first).
pub fn build(
    plan: KafkaSinkPlan,
    name: &str,
    schema: &SchemaRef,
    cx: &BuildCx<'_>,
) -> Result<KafkaSink, ConnectorError> {
    let conn = cx.kafka.cloned().unwrap_or_default();
    cx.rt.block_on(KafkaSink::create(
        &conn,
        plan,
        cx.sink_id(name),
        schema,
        cx.registry,
    ))
}

impl KafkaSink {
    /// Connects; for Avro, registers the writer schema under its subject first.
    pub async fn create(
        connection: &KafkaConnection,
        config: KafkaSinkPlan,
        id: SinkId,
        input_schema: &SchemaRef,
        registry: Option<&SchemaRegistry>,
    ) -> Result<Self, ConnectorError> {
        let keep: Vec<usize> = input_schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                config.provenance && f.name() != crate::record::RAW || !is_provenance(f.name())
            })
            .map(|(i, _)| i)
            .collect();
        let payload_schema = Arc::new(
            input_schema
                .project(&keep)
                .map_err(|e| ConnectorError::Other(format!("sink {}: {e}", id.name)))?,
        );
        let encoding = if config.avro {
            let registry = registry.ok_or_else(|| {
                ConnectorError::Other(format!("sink {}: avro needs a `schema_registry:`", id.name))
            })?;
            let text = match &config.avro_schema {
                Some(t) => t.clone(),
                None => crate::formats::avro::avro_schema_json(
                    &payload_schema,
                    &avro_name(&config.topic),
                    Some("plexus"),
                )
                .map_err(|e| ConnectorError::Other(format!("sink {}: {e}", id.name)))?,
            };
            let schema = apache_avro::Schema::parse_str(&text).map_err(|e| {
                ConnectorError::Other(format!("sink {}: Avro schema: {e}", id.name))
            })?;
            let subject = config
                .subject
                .clone()
                .unwrap_or_else(|| format!("{}-value", config.topic));
            let id = registry
                .register(&subject, &text)
                .await
                .map_err(ConnectorError::Other)?;
            KafkaEncoding::Avro {
                schema: Arc::new(schema),
                id,
            }
        } else {
            KafkaEncoding::Json
        };
        Ok(KafkaSink {
            out: super::Deliveries::new(
                connection,
                format!("sink {} (topic {})", id.name, config.topic),
            )?,
            name: id.name,
            topic: config.topic,
            encoding,
            key: config.key,
            keep,
            payload_schema,
            pipeline: id.pipeline,
            integration: id.integration,
        })
    }

    fn err(&self, msg: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Other(format!("sink {}: {msg}", self.name))
    }

    fn payloads(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>, ConnectorError> {
        let projected = batch
            .project(&self.keep)
            .and_then(|b| b.with_schema(self.payload_schema.clone()))
            .map_err(|e| self.err(e))?;
        match &self.encoding {
            KafkaEncoding::Json => {
                crate::connectors::json_rows(&projected).map_err(|e| self.err(e))
            }
            KafkaEncoding::Avro { schema, id } => (0..projected.num_rows())
                .map(|row| {
                    let value = crate::formats::avro::row_to_value(&projected, row, schema)
                        .map_err(|e| self.err(format!("row {row}: {e}")))?;
                    // 0.22's builder-style GenericDatumWriter does the same; this is simpler.
                    #[allow(deprecated)]
                    let datum = apache_avro::to_avro_datum(schema, value)
                        .map_err(|e| self.err(format!("row {row}: {e}")))?;
                    Ok(frame_wire(*id, &datum))
                })
                .collect(),
        }
    }
}

/// An Avro record name from a topic name (`patients.out` → `patients_out`).
fn avro_name(topic: &str) -> String {
    let mut s: String = topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

impl BatchSink for KafkaSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let payloads = self.payloads(batch)?;
        let keys = match &self.key {
            Some(k) => {
                let a = k.evaluate(batch).map_err(|e| self.err(e))?;
                Some(
                    arrow::compute::cast(&a, &arrow::datatypes::DataType::Utf8)
                        .map_err(|e| self.err(e))?,
                )
            }
            None => None,
        };
        let keys = keys.as_ref().map(|k| k.as_string::<i32>());
        let (sources, offsets, controls) = crate::record::provenance_columns(batch);
        for (row, payload) in payloads.iter().enumerate() {
            let mut h = OwnedHeaders::new_with_capacity(6)
                .insert(Header {
                    key: headers::PIPELINE,
                    value: Some(self.pipeline.as_str()),
                })
                .insert(Header {
                    key: headers::INTEGRATION,
                    value: Some(self.integration.as_str()),
                });
            if let Some(s) = sources.filter(|s| s.is_valid(row)).map(|s| s.value(row)) {
                match parse_source_name(s) {
                    Some((t, p)) => {
                        h = h
                            .insert(Header {
                                key: headers::SOURCE_TOPIC,
                                value: Some(t),
                            })
                            .insert(Header {
                                key: headers::SOURCE_PARTITION,
                                value: Some(&p.to_string()),
                            });
                    }
                    None => {
                        h = h.insert(Header {
                            key: headers::SOURCE_TOPIC,
                            value: Some(s),
                        })
                    }
                }
            }
            if let Some(o) = offsets.filter(|o| o.is_valid(row)) {
                h = h.insert(Header {
                    key: headers::SOURCE_OFFSET,
                    value: Some(&o.value(row).to_string()),
                });
            }
            if let Some(c) = controls.filter(|c| c.is_valid(row)) {
                h = h.insert(Header {
                    key: headers::CORRELATION_ID,
                    value: Some(c.value(row)),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .payload(payload.as_slice())
                .headers(h);
            if let Some(k) = keys.filter(|k| k.is_valid(row)) {
                record = record.key(k.value(row).as_bytes());
            }
            self.out.send(record)?;
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<Option<Durable>, ConnectorError> {
        Ok(self.out.barrier())
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn avro_names_are_valid() {
        assert_eq!(super::avro_name("patients.out"), "patients_out");
        assert_eq!(super::avro_name("1x"), "_1x");
    }
}
