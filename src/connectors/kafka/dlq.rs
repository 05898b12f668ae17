//! The dead-letter topic: each rejected record's original bytes, unchanged, as the message
//! value; why and where it failed in headers (stage, rule, error, attempt, first and latest
//! failure time, original topic/partition/offset). The key is the original
//! `topic/partition/offset` (or file/offset), which is what `plexus replay` deduplicates on.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::{KafkaConnection, RecordMeta, headers, parse_source_name};
use crate::connectors::{ConnectorError, DeadLetterSink, Durable};
use crate::record::{CONTROL_ID, DeadLetters, OFFSET, RAW, RECORD_INDEX, SOURCE};

pub struct KafkaDlq {
    topic: String,
    out: super::Deliveries,
    pipeline: String,
    integration: String,
    meta: RecordMeta,
}

impl KafkaDlq {
    pub fn new(
        connection: &KafkaConnection,
        topic: &str,
        pipeline: &str,
        integration: &str,
        meta: RecordMeta,
    ) -> Result<Self, ConnectorError> {
        Ok(KafkaDlq {
            topic: topic.to_string(),
            out: super::Deliveries::new(connection, format!("dead-letter topic {topic}"))?,
            pipeline: pipeline.to_string(),
            integration: integration.to_string(),
            meta,
        })
    }
}

impl KafkaDlq {
    /// Attempt numbers, first-failure times and origins by `_record_index` (the retry
    /// worker's, which dead-letters records it did not read from the source).
    pub fn set_meta(&mut self, meta: RecordMeta) {
        self.meta = meta;
    }
}

/// Error text as a header: bounded, and without control characters.
pub(crate) fn header_text(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(2000)
        .collect();
    if s.chars().count() > 2000 {
        t.push('…');
    }
    t
}

impl DeadLetterSink for KafkaDlq {
    fn write(&mut self, stage: &str, dead: &DeadLetters) -> Result<(), ConnectorError> {
        let rows = &dead.rows;
        let raw = rows
            .column_by_name(RAW)
            .and_then(|c| c.as_binary_opt::<i32>());
        let sources = rows
            .column_by_name(SOURCE)
            .and_then(|c| c.as_string_opt::<i32>());
        let offsets = rows
            .column_by_name(OFFSET)
            .and_then(|c| c.as_primitive_opt::<Int64Type>());
        let indexes = rows
            .column_by_name(RECORD_INDEX)
            .and_then(|c| c.as_primitive_opt::<Int64Type>());
        let controls = rows
            .column_by_name(CONTROL_ID)
            .and_then(|c| c.as_string_opt::<i32>());
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for i in 0..rows.num_rows() {
            let payload: &[u8] = raw
                .filter(|r| r.is_valid(i))
                .map(|r| r.value(i))
                .unwrap_or_default();
            let source = sources.filter(|s| s.is_valid(i)).map(|s| s.value(i));
            let offset = offsets.filter(|o| o.is_valid(i)).map(|o| o.value(i));
            let index = indexes.filter(|x| x.is_valid(i)).map(|x| x.value(i));
            let (attempt, first) = index
                .and_then(|x| self.meta.get(x))
                .unwrap_or((1, now.clone()));
            let origin = index.and_then(|x| self.meta.origin(x));
            let error = header_text(&dead.reason[i]);
            let mut h = OwnedHeaders::new_with_capacity(12)
                .insert(Header {
                    key: headers::PIPELINE,
                    value: Some(self.pipeline.as_str()),
                })
                .insert(Header {
                    key: headers::INTEGRATION,
                    value: Some(self.integration.as_str()),
                })
                .insert(Header {
                    key: headers::STAGE,
                    value: Some(stage),
                })
                .insert(Header {
                    key: headers::RULE,
                    value: Some(dead.rule[i].as_str()),
                })
                .insert(Header {
                    key: headers::ERROR,
                    value: Some(error.as_str()),
                })
                .insert(Header {
                    key: headers::ATTEMPT,
                    value: Some(&attempt.to_string()),
                })
                .insert(Header {
                    key: headers::FIRST_FAILED_AT,
                    value: Some(first.as_str()),
                })
                .insert(Header {
                    key: headers::FAILED_AT,
                    value: Some(now.as_str()),
                });
            let (topic, partition) = match source.map(|s| parse_source_name(s).ok_or(s)) {
                Some(Ok((t, p))) => (Some(t), Some(p.to_string())),
                Some(Err(s)) => (Some(s), None),
                None => (None, None),
            };
            if let Some(t) = topic {
                h = h.insert(Header {
                    key: headers::SOURCE_TOPIC,
                    value: Some(t),
                });
            }
            if let Some(p) = &partition {
                h = h.insert(Header {
                    key: headers::SOURCE_PARTITION,
                    value: Some(p.as_str()),
                });
            }
            if let Some(o) = offset {
                h = h.insert(Header {
                    key: headers::SOURCE_OFFSET,
                    value: Some(&o.to_string()),
                });
            }
            // Stable across runs (a reprocessed window dead-letters the same key again, and
            // replay skips keys it has replayed).
            // A record that failed to parse has no `_control_id`: read MSH-10 from its bytes.
            let parsed_control = controls.filter(|c| c.is_valid(i)).map(|c| c.value(i));
            let raw_control = match parsed_control {
                Some(_) => None,
                None => crate::connectors::dlq::hl7_control_id(payload),
            };
            let control = parsed_control.or(raw_control.as_deref());
            let key = crate::record::record_identity(source, offset, control);
            if let Some(c) = control {
                h = h.insert(Header {
                    key: headers::CORRELATION_ID,
                    value: Some(c),
                });
            }
            // The record's own key and headers, for replay to restore.
            if let Some(o) = &origin {
                if let Some(k) = &o.key {
                    h = h.insert(Header {
                        key: headers::SOURCE_KEY,
                        value: Some(k.as_slice()),
                    });
                }
                for (name, value) in &o.headers {
                    h = h.insert(Header {
                        key: name.as_str(),
                        value: value.as_deref(),
                    });
                }
            }
            let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .payload(payload)
                .key(key.as_bytes())
                .headers(h);
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
