//! Delayed retry topics: how a transient delivery failure waits without stalling its partition.
//!
//! A sink that fails to deliver a record with a transient error (HTTP 503, a timeout) *parks*
//! it on `<base>.<n>`, where `n` is the attempt that failed, with the time it is due in a
//! header; the source's offset is then committed as for a delivered record, and later records
//! go on. Every record on `<base>.<n>` waited the same backoff, so each partition of a retry
//! topic is in due-time order: the retry worker reads the head of each partition and, when it
//! is not due yet (or the sink's circuit breaker is open), lets that partition wait until it
//! is, holding what is fetched behind it in memory (bounded) — nothing is busy-waiting. A due record is delivered again; a further transient
//! failure parks it on `<base>.<n+1>`; after the policy's last attempt, or on a permanent
//! failure, it goes to the pipeline's dead-letter topic with its original bytes. A retry
//! topic's offset is committed only after that outcome is durable (at-least-once).
//!
//! This is the non-blocking retry of Uber's "reliable reprocessing" and Spring Kafka's
//! `@RetryableTopic`, with one topic per attempt instead of per delay.

use std::collections::{HashMap, VecDeque};
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
use crate::connectors::{ConnectorError, DeadLetterSink, Durable, Parked, Parking};
use crate::net::http::{HttpTarget, Outcome, Request};
use crate::record::{CONTROL_ID, DeadLetters, OFFSET, RAW, RECORD_INDEX, SOURCE};
use crate::resilience::breaker::SharedBreaker;
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

    fn park_record(&mut self, p: Parked<'_>) -> Result<(), ConnectorError> {
        let topic = retry_topic(&self.base, p.failed_attempt);
        let next = p.next_attempt.to_string();
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
            (headers::REQUEST_PATH, p.path.map(str::as_bytes)),
            (headers::DELETE_ELEMENTS, p.delete.map(str::as_bytes)),
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
}

impl Parking for RetryTopics {
    fn park(&mut self, p: Parked<'_>) -> Result<(), ConnectorError> {
        self.park_record(p)
    }

    fn barrier(&mut self) -> Option<Durable> {
        self.out.barrier()
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        self.out.finish()
    }
}

/// Parks an HTTP sink's transient failures on its retry topics `<base>.<attempt>` and starts
/// the worker that delivers them when due (into `cx.workers`).
pub fn start(
    h: &crate::connectors::http::HttpSinkPlan,
    base: &str,
    name: &str,
    target: HttpTarget,
    breaker: Option<SharedBreaker>,
    cx: &mut crate::connectors::BuildCx<'_>,
) -> Result<Box<dyn Parking>, ConnectorError> {
    let in_sink = |e: String| ConnectorError::Other(format!("sink {name}: {e}"));
    let conn = cx.kafka.cloned().unwrap_or_default();
    let topics: Vec<(String, i32, bool)> = retry_topics(base, &h.retry)
        .into_iter()
        .map(|t| (t, 3, false))
        .collect();
    cx.rt.block_on(super::ensure_topics(&conn, &topics))?;
    let parking = RetryTopics::new(&conn, base, cx.pipeline, cx.integration, name)?;
    let worker_config = RetryWorkerConfig {
        base: base.to_string(),
        group: format!("{}.retry.{name}", cx.group),
        sink: name.to_string(),
        pipeline: cx.pipeline.to_string(),
        integration: cx.integration.to_string(),
        dlq_topic: cx
            .dlq_topic
            .ok_or_else(|| in_sink("retry topics need a dead-letter topic".into()))?
            .to_string(),
        policy: h.retry.clone(),
        concurrency: h.concurrency,
        outcomes: cx.outcomes.clone(),
    };
    let (handle, stop, main_done, idle) = (
        cx.rt.clone(),
        cx.stop.clone(),
        cx.main_done.clone(),
        cx.idle,
    );
    let worker = std::thread::Builder::new()
        .name(format!("retry-{name}"))
        .spawn(move || {
            run_worker(
                &conn,
                worker_config,
                target,
                handle,
                stop,
                main_done,
                idle,
                breaker,
            )
        })
        .map_err(|e| in_sink(format!("starting the retry worker: {e}")))?;
    cx.workers.push(worker);
    Ok(Box::new(parking))
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
    /// Of those, attempts exhausted: the target stayed unreachable.
    pub unavailable: u64,
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
    /// Where each retried call's outcome is reported.
    pub outcomes: crate::metrics::outcome::OutcomeTap,
}

/// One record read from a retry topic.
struct Due {
    body: Vec<u8>,
    path: Option<String>,
    delete: Option<String>,
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
        path: None,
        delete: None,
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
                headers::REQUEST_PATH => d.path = Some(text()),
                headers::DELETE_ELEMENTS => d.delete = Some(text()),
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
    breaker: Option<SharedBreaker>,
) -> Result<RetryStats, ConnectorError> {
    let consumer: BaseConsumer<super::Quiet> = connection
        .client_config()
        .map_err(ConnectorError::Other)?
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(super::Quiet)
        .map_err(kafka("creating the retry consumer"))?;
    let topics = retry_topics(&config.base, &config.policy);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(kafka("subscribing to the retry topics"))?;
    let sink_name: std::sync::Arc<str> = std::sync::Arc::from(config.sink.as_str());
    let mut w = Worker {
        parking: RetryTopics::new(
            connection,
            &config.base,
            &config.pipeline,
            &config.integration,
            &config.sink,
        )?,
        dlq: KafkaDlq::new(
            connection,
            &config.dlq_topic,
            &config.pipeline,
            &config.integration,
            super::RecordMeta::default(),
        )?,
        stats: RetryStats {
            sink: config.sink.clone(),
            ..RetryStats::default()
        },
        consumer,
        config,
        target,
        handle,
        breaker,
        held: HashMap::new(),
        paused: HashMap::new(),
        fetch_paused: false,
        handled: HashMap::new(),
        sink_name,
    };
    let mut last_activity = Instant::now();
    let mut joined = false;
    while !stop.load(Ordering::Relaxed) {
        w.release_due()?;
        if !joined && w.consumer.assignment().is_ok_and(|a| a.count() > 0) {
            joined = true;
            last_activity = Instant::now();
        }
        let waiting = w.held.values().any(|q| !q.is_empty());
        if main_done.load(Ordering::Relaxed)
            && !waiting
            && (joined || last_activity.elapsed() > idle * 4)
            && last_activity.elapsed() >= idle
        {
            break;
        }
        let now = Utc::now().timestamp_millis();
        let wait = w
            .paused
            .values()
            .min()
            .map(|at| Duration::from_millis((at - now).clamp(1, 100) as u64))
            .unwrap_or(Duration::from_millis(100));
        let m = match w.consumer.poll(wait) {
            None => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "retry consumer error");
                continue;
            }
            Some(Ok(m)) => m,
        };
        last_activity = Instant::now();
        let key = (m.topic().to_string(), m.partition());
        let record = (m.offset(), read(&m));
        drop(m);
        let queue = w.held.entry(key.clone()).or_default();
        queue.push_back(record);
        if !w.paused.contains_key(&key) {
            w.drain(&key)?;
        }
    }
    tracing::info!(
        sink = %w.config.sink,
        delivered = w.stats.delivered,
        parked_again = w.stats.parked_again,
        dead_lettered = w.stats.dead_lettered,
        stopped = stop.load(Ordering::Relaxed),
        "retry worker done"
    );
    // A final synchronous commit: async commits may still be in flight. Records still held
    // are not committed: the next run reads them again.
    if !w.handled.is_empty() {
        let mut l = TopicPartitionList::new();
        for ((t, p), o) in &w.handled {
            let _ = l.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        w.consumer
            .commit(&l, CommitMode::Sync)
            .map_err(kafka("committing retry offsets"))?;
    }
    w.parking.finish()?;
    w.dlq.finish()?;
    Ok(w.stats)
}

fn kafka(context: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> ConnectorError {
    let context = context.to_string();
    move |source| ConnectorError::Kafka { context, source }
}

/// Records held in memory before the worker stops fetching.
const MAX_HELD: usize = 50_000;

/// The retry worker's state. Each partition of a retry topic is in due order, so only its
/// head can be waiting; what is fetched behind it queues in memory, and fetching continues
/// (up to `MAX_HELD` records). Partitions are not paused per head: a pause discards the
/// prefetched records and re-fetches them, and holding them costs less than fetching twice.
struct Worker {
    consumer: BaseConsumer<super::Quiet>,
    config: RetryWorkerConfig,
    target: HttpTarget,
    handle: tokio::runtime::Handle,
    breaker: Option<SharedBreaker>,
    parking: RetryTopics,
    dlq: KafkaDlq,
    stats: RetryStats,
    /// Records read but not handled yet, per partition, in offset order.
    held: HashMap<(String, i32), VecDeque<(i64, Due)>>,
    /// Waiting partitions and when their head may be tried (ms since the epoch).
    paused: HashMap<(String, i32), i64>,
    /// Fetching stopped by the memory guard.
    fetch_paused: bool,
    /// Next offset per partition whose records are handled (for the final commit).
    handled: HashMap<(String, i32), i64>,
    sink_name: std::sync::Arc<str>,
}

impl Worker {
    /// Resumes partitions whose head is due and works through what they hold.
    fn release_due(&mut self) -> Result<(), ConnectorError> {
        let now = Utc::now().timestamp_millis();
        let due: Vec<(String, i32)> = self
            .paused
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.paused.remove(&key);
            self.drain(&key)?;
        }
        // Memory guard: past MAX_HELD records waiting, stop fetching until half have gone.
        let held: usize = self.held.values().map(VecDeque::len).sum();
        if held > MAX_HELD && !self.fetch_paused {
            let assigned = self
                .consumer
                .assignment()
                .map_err(kafka("reading the assignment"))?;
            self.consumer
                .pause(&assigned)
                .map_err(kafka("pausing the retry topics"))?;
            self.fetch_paused = true;
            tracing::warn!(
                held,
                "retry worker: {MAX_HELD}+ records waiting; fetching paused"
            );
        } else if held <= MAX_HELD / 2 && self.fetch_paused {
            let assigned = self
                .consumer
                .assignment()
                .map_err(kafka("reading the assignment"))?;
            self.consumer
                .resume(&assigned)
                .map_err(kafka("resuming the retry topics"))?;
            self.fetch_paused = false;
        }
        Ok(())
    }

    /// Handles the held records of a partition in order until one must wait.
    fn drain(&mut self, key: &(String, i32)) -> Result<(), ConnectorError> {
        loop {
            let Some((offset, d)) = self.held.get_mut(key).and_then(|q| q.pop_front()) else {
                return Ok(());
            };
            let now = Utc::now().timestamp_millis();
            // An open breaker holds the record like a not-yet-due one.
            let ready_at = if d.due_ms > now {
                d.due_ms
            } else {
                match self.breaker.as_ref().map(|b| b.try_acquire()) {
                    Some(Err(r)) => {
                        now + r
                            .retry_in
                            .unwrap_or(Duration::from_millis(200))
                            .as_millis()
                            .max(1) as i64
                    }
                    _ => now,
                }
            };
            if ready_at > now {
                tracing::debug!(topic = %key.0, partition = key.1, offset, wait_ms = ready_at - now, "retry partition waits");
                self.paused.insert(key.clone(), ready_at);
                self.held
                    .get_mut(key)
                    .expect("queue")
                    .push_front((offset, d));
                return Ok(());
            }
            self.handle_one(key, offset, &d)?;
        }
    }

    /// Delivers one due record; parks or dead-letters it on failure; commits once durable.
    fn handle_one(
        &mut self,
        key: &(String, i32),
        offset: i64,
        d: &Due,
    ) -> Result<(), ConnectorError> {
        let started = std::time::Instant::now();
        let outcome = self.handle.block_on(self.target.deliver(&Request {
            path: d.path.as_deref(),
            body: &d.body,
            idempotency_key: &d.key,
            correlation_id: d.correlation_id.as_deref(),
            attempt: d.attempt,
            delete: d.delete.as_deref(),
        }));
        let took = started.elapsed();
        crate::connectors::http::sink::report_call(
            &self.config.outcomes,
            &self.sink_name,
            &d.key,
            d.attempt,
            &outcome,
            took,
        );
        tracing::debug!(topic = %key.0, partition = key.1, offset, attempt = d.attempt, delivered = matches!(outcome, Outcome::Delivered { .. }), "retry handled");
        if let Some(b) = &self.breaker {
            b.record(matches!(outcome, Outcome::Transient { .. }), took);
        }
        let max = self.config.policy.max_attempts.max(1);
        let durable = match outcome {
            Outcome::Delivered { .. } => {
                self.stats.delivered += 1;
                None
            }
            Outcome::Transient {
                reason,
                retry_after,
                ..
            } if d.attempt < max => {
                let delay = self
                    .config
                    .policy
                    .next_delay(d.attempt, jitter_random(), retry_after);
                let first = DateTime::parse_from_rfc3339(&d.first_failed_at)
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(|_| Utc::now());
                self.parking.park(Parked {
                    failed_attempt: d.attempt,
                    next_attempt: d.attempt + 1,
                    due: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                    first_failed_at: first,
                    error: reason,
                    body: &d.body,
                    path: d.path.as_deref(),
                    delete: d.delete.as_deref(),
                    key: &d.key,
                    correlation_id: d.correlation_id.as_deref(),
                    original: Some(&d.original),
                    source: d.source.as_deref(),
                    offset: d.offset,
                })?;
                self.stats.parked_again += 1;
                self.parking.barrier()
            }
            other => {
                let reason = match &other {
                    Outcome::Transient { reason, .. } => {
                        self.stats.unavailable += 1;
                        format!("{reason} (attempt {} of {max})", d.attempt)
                    }
                    _ => other.reason().unwrap_or_default().to_string(),
                };
                let dead = dead_letter(d, reason);
                let meta = super::RecordMeta::default();
                meta.insert(0, d.attempt, d.first_failed_at.clone());
                self.dlq.set_meta(meta);
                self.dlq.write(&self.config.sink, &dead)?;
                self.stats.dead_lettered += 1;
                self.dlq.barrier()?
            }
        };
        if let Some(f) = durable {
            self.handle.block_on(f)?;
        }
        let mut l = TopicPartitionList::new();
        let _ = l.add_partition_offset(&key.0, key.1, Offset::Offset(offset + 1));
        self.consumer
            .commit(&l, CommitMode::Async)
            .map_err(kafka("committing a retry offset"))?;
        self.handled.insert(key.clone(), offset + 1);
        Ok(())
    }
}
