//! Delayed retry topics: how a transient delivery failure waits without stalling its partition.
//!
//! A sink that fails to deliver a record with a transient error (HTTP 503, a timeout) *parks*
//! it on `<base>.<n>`, where `n` is the attempt that failed, with the time it is due in a
//! header; the source's offset is then committed as for a delivered record, and later records
//! go on. Every record on `<base>.<n>` waited the same backoff, so each partition of a retry
//! topic is in due-time order: the retry worker reads the head of each partition and, when it
//! is not due yet, pauses that partition (seeking back to it) until it is — no record is held
//! in memory and nothing is busy-waiting. A due record is delivered again; a further transient
//! failure parks it on `<base>.<n+1>`; after the policy's last attempt, or on a permanent
//! failure, it goes to the pipeline's dead-letter topic with its original bytes. A retry
//! topic's offset is committed only after that outcome is durable (at-least-once).
//!
//! This is the non-blocking retry of Uber's "reliable reprocessing" and Spring Kafka's
//! `@RetryableTopic`, with one topic per attempt instead of per delay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{BinaryArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::{Deliveries, KafkaConnection, KafkaDlq, headers};
use crate::connectors::http::{HttpTarget, Outcome, Request};
use crate::connectors::{ConnectorError, DeadLetterSink, Durable};
use crate::operators::{CONTROL_ID, DeadLetters, OFFSET, RAW, RECORD_INDEX, SOURCE};
use crate::resilience::retry::{RetryPolicy, jitter_random};

/// The topic holding records whose attempt `failed_attempt` failed.
pub fn retry_topic(base: &str, failed_attempt: u32) -> String {
    format!("{base}.{failed_attempt}")
}

/// Every retry topic of a policy (one per attempt that can be retried).
pub fn retry_topics(base: &str, policy: &RetryPolicy) -> Vec<String> {
    (1..policy.max_attempts.max(1))
        .map(|n| retry_topic(base, n))
        .collect()
}

/// A record to park.
pub struct Parked<'a> {
    pub failed_attempt: u32,
    pub due: DateTime<Utc>,
    pub first_failed_at: DateTime<Utc>,
    pub error: String,
    /// What the sink sends (the request body).
    pub body: &'a [u8],
    /// The record's stable identity (idempotency key); also the message key.
    pub key: &'a str,
    pub correlation_id: Option<&'a str>,
    /// The original record, for the dead-letter topic if every attempt fails.
    pub original: Option<&'a [u8]>,
    /// `_source` and `_offset` of the original record.
    pub source: Option<&'a str>,
    pub offset: Option<i64>,
}

/// The producer side: parks records and reports when the parks are durable.
pub struct RetryTopics {
    base: String,
    out: Deliveries,
    pipeline: String,
    integration: String,
    sink: String,
}

impl RetryTopics {
    pub fn new(
        connection: &KafkaConnection,
        base: &str,
        pipeline: &str,
        integration: &str,
        sink: &str,
    ) -> Result<Self, ConnectorError> {
        Ok(RetryTopics {
            base: base.to_string(),
            out: Deliveries::new(connection, format!("retry topics {base}.*"))?,
            pipeline: pipeline.to_string(),
            integration: integration.to_string(),
            sink: sink.to_string(),
        })
    }

    pub fn park(&mut self, p: Parked<'_>) -> Result<(), ConnectorError> {
        let topic = retry_topic(&self.base, p.failed_attempt);
        let next = (p.failed_attempt + 1).to_string();
        let due = p.due.timestamp_millis().to_string();
        let first = p
            .first_failed_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let error = super::dlq::header_text(&p.error);
        let offset = p.offset.map(|o| o.to_string());
        let mut h = OwnedHeaders::new_with_capacity(12);
        for (key, value) in [
            (headers::PIPELINE, Some(self.pipeline.as_bytes())),
            (headers::INTEGRATION, Some(self.integration.as_bytes())),
            (headers::SINK, Some(self.sink.as_bytes())),
            (headers::ATTEMPT, Some(next.as_bytes())),
            (headers::DUE_AT, Some(due.as_bytes())),
            (headers::FIRST_FAILED_AT, Some(first.as_bytes())),
            (headers::ERROR, Some(error.as_bytes())),
            (headers::CORRELATION_ID, p.correlation_id.map(str::as_bytes)),
            (headers::RECORD_SOURCE, p.source.map(str::as_bytes)),
            (headers::SOURCE_OFFSET, offset.as_deref().map(str::as_bytes)),
            (headers::ORIGINAL, p.original),
        ] {
            if let Some(value) = value {
                h = h.insert(Header {
                    key,
                    value: Some(value),
                });
            }
        }
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
            .payload(p.body)
            .key(p.key.as_bytes())
            .headers(h);
        self.out.send(record)
    }

    pub fn barrier(&mut self) -> Option<Durable> {
        self.out.barrier()
    }

    pub fn finish(&mut self) -> Result<(), ConnectorError> {
        self.out.finish()
    }
}

/// What the retry worker did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetryStats {
    pub sink: String,
    /// Delivered on a later attempt.
    pub delivered: u64,
    /// Failed again and parked for the next attempt.
    pub parked_again: u64,
    /// Sent to the dead-letter topic (attempts exhausted or a permanent failure).
    pub dead_lettered: u64,
}

pub struct RetryWorkerConfig {
    pub base: String,
    pub group: String,
    pub sink: String,
    pub pipeline: String,
    pub integration: String,
    pub dlq_topic: String,
    pub policy: RetryPolicy,
    pub concurrency: usize,
}

/// One record read from a retry topic.
struct Due {
    body: Vec<u8>,
    key: String,
    attempt: u32,
    due_ms: i64,
    first_failed_at: String,
    correlation_id: Option<String>,
    source: Option<String>,
    offset: Option<i64>,
    original: Vec<u8>,
}

fn read(m: &rdkafka::message::BorrowedMessage<'_>) -> Due {
    let mut d = Due {
        body: m.payload().unwrap_or_default().to_vec(),
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        attempt: 2,
        due_ms: 0,
        first_failed_at: String::new(),
        correlation_id: None,
        source: None,
        offset: None,
        original: Vec::new(),
    };
    if let Some(h) = m.headers() {
        for hd in h.iter() {
            let Some(v) = hd.value else { continue };
            let text = || String::from_utf8_lossy(v).into_owned();
            match hd.key {
                headers::ATTEMPT => d.attempt = text().parse().unwrap_or(2),
                headers::DUE_AT => d.due_ms = text().parse().unwrap_or(0),
                headers::FIRST_FAILED_AT => d.first_failed_at = text(),
                headers::CORRELATION_ID => d.correlation_id = Some(text()),
                headers::RECORD_SOURCE => d.source = Some(text()),
                headers::SOURCE_OFFSET => d.offset = text().parse().ok(),
                headers::ORIGINAL => d.original = v.to_vec(),
                _ => {}
            }
        }
    }
    d
}

/// The dead letter of a record whose retries ended, as the one-row batch `KafkaDlq` writes.
fn dead_letter(d: &Due, reason: String) -> DeadLetters {
    let schema = Arc::new(Schema::new(vec![
        Field::new(RAW, DataType::Binary, true),
        Field::new(SOURCE, DataType::Utf8, true),
        Field::new(OFFSET, DataType::Int64, true),
        Field::new(CONTROL_ID, DataType::Utf8, true),
        Field::new(RECORD_INDEX, DataType::Int64, false),
    ]));
    let rows = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(BinaryArray::from_iter_values([d.original.as_slice()])),
            Arc::new(StringArray::from(vec![d.source.clone()])),
            Arc::new(Int64Array::from(vec![d.offset])),
            Arc::new(StringArray::from(vec![d.correlation_id.clone()])),
            Arc::new(Int64Array::from(vec![0])),
        ],
    )
    .expect("dead-letter columns match");
    DeadLetters {
        rows,
        rule: vec!["delivery".into()],
        reason: vec![reason],
    }
}

/// Consumes the retry topics of one sink until `stop`, or until `main_done` and nothing was
/// due or read for `idle` (batch-style runs). Runs on its own thread.
#[allow(clippy::too_many_arguments)]
pub fn run_worker(
    connection: &KafkaConnection,
    config: RetryWorkerConfig,
    target: HttpTarget,
    handle: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    main_done: Arc<AtomicBool>,
    idle: Duration,
) -> Result<RetryStats, ConnectorError> {
    let kafka = |context: &str| {
        let context = context.to_string();
        move |source| ConnectorError::Kafka { context, source }
    };
    let consumer: BaseConsumer = connection
        .client_config()
        .map_err(ConnectorError::Other)?
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(kafka("creating the retry consumer"))?;
    let topics = retry_topics(&config.base, &config.policy);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(kafka("subscribing to the retry topics"))?;
    let mut parking = RetryTopics::new(
        connection,
        &config.base,
        &config.pipeline,
        &config.integration,
        &config.sink,
    )?;
    let mut dlq = KafkaDlq::new(
        connection,
        &config.dlq_topic,
        &config.pipeline,
        &config.integration,
        super::Attempts::default(),
    )?;
    let mut stats = RetryStats {
        sink: config.sink.clone(),
        ..RetryStats::default()
    };
    // Paused partitions and when their head record is due (ms since the epoch).
    let mut paused: HashMap<(String, i32), i64> = HashMap::new();
    let mut last_activity = Instant::now();
    let mut joined = false;
    // Next offset per partition whose records are handled (for the final commit).
    let mut handled: HashMap<(String, i32), i64> = HashMap::new();
    let tp = |t: &str, p: i32, o: Option<i64>| {
        let mut l = TopicPartitionList::new();
        match o {
            Some(o) => {
                let _ = l.add_partition_offset(t, p, Offset::Offset(o));
            }
            None => {
                l.add_partition(t, p);
            }
        }
        l
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Utc::now().timestamp_millis();
        // Resume partitions whose head is due: it is fetched again and handled below.
        let due: Vec<(String, i32)> = paused
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (t, p) in due {
            paused.remove(&(t.clone(), p));
            consumer
                .resume(&tp(&t, p, None))
                .map_err(kafka("resuming a retry partition"))?;
        }
        if !joined && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            joined = true;
            last_activity = Instant::now();
        }
        if main_done.load(Ordering::Relaxed)
            && paused.is_empty()
            && (joined || last_activity.elapsed() > idle * 4)
            && last_activity.elapsed() >= idle
        {
            break;
        }
        let wait = paused
            .values()
            .min()
            .map(|at| Duration::from_millis((at - now).clamp(1, 100) as u64))
            .unwrap_or(Duration::from_millis(100));
        let Some(m) = consumer.poll(wait) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "retry consumer error");
                continue;
            }
        };
        last_activity = Instant::now();
        let key = (m.topic().to_string(), m.partition());
        if paused.contains_key(&key) {
            // Fetched before the pause took effect; read again after the resume.
            continue;
        }
        let d = read(&m);
        if d.due_ms > Utc::now().timestamp_millis() {
            // Not due: wait at this record without reading past it (the partition is in due
            // order). Seeking back makes the resume fetch it again.
            let l = tp(&key.0, key.1, None);
            consumer
                .pause(&l)
                .map_err(kafka("pausing a retry partition"))?;
            consumer
                .seek(
                    &key.0,
                    key.1,
                    Offset::Offset(m.offset()),
                    Duration::from_secs(10),
                )
                .map_err(kafka("seeking a retry partition"))?;
            paused.insert(key, d.due_ms);
            continue;
        }
        let offset = m.offset();
        drop(m);
        let outcome = handle.block_on(target.deliver(&Request {
            body: &d.body,
            idempotency_key: &d.key,
            correlation_id: d.correlation_id.as_deref(),
            attempt: d.attempt,
        }));
        let max = config.policy.max_attempts.max(1);
        let durable = match outcome {
            Outcome::Delivered { .. } => {
                stats.delivered += 1;
                None
            }
            Outcome::Transient {
                reason,
                retry_after,
            } if d.attempt < max => {
                let delay = config
                    .policy
                    .next_delay(d.attempt, jitter_random(), retry_after);
                let first = DateTime::parse_from_rfc3339(&d.first_failed_at)
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(|_| Utc::now());
                parking.park(Parked {
                    failed_attempt: d.attempt,
                    due: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                    first_failed_at: first,
                    error: reason,
                    body: &d.body,
                    key: &d.key,
                    correlation_id: d.correlation_id.as_deref(),
                    original: Some(&d.original),
                    source: d.source.as_deref(),
                    offset: d.offset,
                })?;
                stats.parked_again += 1;
                parking.barrier()
            }
            other => {
                let reason = match &other {
                    Outcome::Transient { reason, .. } => {
                        format!("{reason} (attempt {} of {max})", d.attempt)
                    }
                    _ => other.reason().unwrap_or_default().to_string(),
                };
                let dead = dead_letter(&d, reason);
                let attempts = super::Attempts::default();
                attempts.insert(0, d.attempt, d.first_failed_at.clone());
                dlq.set_attempts(attempts);
                dlq.write(&config.sink, &dead)?;
                stats.dead_lettered += 1;
                dlq.barrier()?
            }
        };
        if let Some(f) = durable {
            handle.block_on(f)?;
        }
        consumer
            .commit(&tp(&key.0, key.1, Some(offset + 1)), CommitMode::Async)
            .map_err(kafka("committing a retry offset"))?;
        handled.insert(key, offset + 1);
    }
    // A final synchronous commit: async commits may still be in flight.
    if !handled.is_empty() {
        let mut l = TopicPartitionList::new();
        for ((t, p), o) in &handled {
            let _ = l.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        consumer
            .commit(&l, CommitMode::Sync)
            .map_err(kafka("committing retry offsets"))?;
    }
    parking.finish()?;
    dlq.finish()?;
    Ok(stats)
}
