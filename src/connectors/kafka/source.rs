//! The Kafka source: a consumer group member that turns messages into raw-record batches.
//!
//! Batches close at `max_rows` records, `max_bytes` payload bytes or `max_delay` after their
//! first record, whichever comes first. Offsets are never auto-committed: the runtime commits
//! a batch's offsets once everything derived from it is durable (see `runtime::checkpoint`).
//!
//! Rebalances: before partitions are taken away, the consumer waits (bounded) for in-flight
//! batches, commits what completed, and drops records it buffered but had not handed on for
//! the revoked partitions — their new owner reads them from the committed offset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::KafkaSourcePlan;
use super::{KafkaConnection, Origin, RecordMeta, headers, source_name};
use crate::connectors::Batching;
use crate::connectors::{BatchSource, Checkpoints, ConnectorError, Position};
use crate::formats::framing::SourceFormat;
use crate::record::raw_record_schema;

/// How long a rebalance waits for in-flight batches before handing partitions over.
const REBALANCE_DRAIN: Duration = Duration::from_secs(30);

/// State shared with the consumer's rebalance callback.
#[derive(Default)]
struct Shared {
    checkpoints: Mutex<Option<Arc<Checkpoints>>>,
    revoked: Mutex<Vec<(String, i32)>>,
    /// Set on each assignment: the idle clock starts then, not while joining the group.
    assigned: AtomicBool,
}

pub struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        super::client_log(level, fac, message);
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::client_error(error, reason);
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let cp = self.shared.checkpoints.lock().expect("shared").clone();
        if let Some(cp) = cp {
            if !cp.wait_all(REBALANCE_DRAIN) {
                tracing::warn!(
                    "rebalance: in-flight batches did not complete; their records will be redelivered"
                );
            }
            let done = cp.take_committable();
            if !done.is_empty()
                && let Err(e) = consumer.commit(&position_list(&done), CommitMode::Sync)
            {
                tracing::warn!(error = %e, "rebalance: commit failed; records since the last commit will be redelivered");
            }
        }
        let mut revoked = self.shared.revoked.lock().expect("shared");
        for e in tpl.elements() {
            revoked.push((e.topic().to_string(), e.partition()));
        }
        tracing::info!(partitions = tpl.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.assigned.store(true, Ordering::Relaxed);
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

fn position_list(positions: &[Position]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in positions {
        // Positions come from offsets we read: always valid.
        let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
    }
    tpl
}

/// One buffered record.
struct Pending {
    topic_partition: usize,
    offset: i64,
    end: usize,
    /// Its message's key and headers, and plexus retry headers (attempt, first failure):
    /// handed to `RecordMeta` when the batch is taken and the record's index is final.
    origin: Option<Arc<Origin>>,
    retried: Option<Arc<(u32, String)>>,
}

pub struct KafkaSource {
    consumer: BaseConsumer<Context>,
    config: Batching,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    idle_exit: Option<Duration>,
    last_record: Instant,
    /// Whether partitions were ever assigned (idle time counts only after that).
    joined: bool,
    /// `topic/partition` names, interned.
    names: Vec<(String, i32, String)>,
    name_index: HashMap<(String, i32), usize>,
    pending: Vec<Pending>,
    data: Vec<u8>,
    first_at: Option<Instant>,
    /// Next offset per partition covered by the batch last returned.
    last_positions: Vec<Position>,
    next_index: i64,
    bytes_read: u64,
    meta: RecordMeta,
    /// Key/headers and retry headers of the message being added (see `Pending`).
    current_origin: Option<Arc<Origin>>,
    current_retried: Option<Arc<(u32, String)>>,
    stopped: bool,
    warnings: Vec<String>,
    /// `kafka.max_outage`.
    max_outage: Option<Duration>,
    /// When the unreachable brokers were last probed.
    last_probe: Instant,
}

impl KafkaSource {
    /// Connects and subscribes. `stop` ends the stream (SIGTERM); `idle_exit` ends it after
    /// that long without a record (batch-style runs and tests).
    pub fn new(
        connection: &KafkaConnection,
        plan: &KafkaSourcePlan,
        config: Batching,
        stop: Arc<AtomicBool>,
        idle_exit: Option<Duration>,
        meta: RecordMeta,
    ) -> Result<Self, ConnectorError> {
        let mut cc = connection.client_config().map_err(ConnectorError::Other)?;
        cc.set("group.id", &plan.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &plan.start)
            .set("enable.partition.eof", "false");
        let instance = std::env::var("PLEXUS_KAFKA_INSTANCE_ID")
            .ok()
            .filter(|i| !i.is_empty())
            .or_else(|| plan.instance.clone());
        if let Some(id) = &instance {
            cc.set("group.instance.id", id);
        }
        if !connection
            .properties
            .iter()
            .any(|(k, _)| k == "session.timeout.ms")
        {
            // A crashed member's partitions move on after 10 s rather than the default 45 s.
            cc.set("session.timeout.ms", "10000");
        }
        let shared = Arc::new(Shared::default());
        let consumer: BaseConsumer<Context> = cc
            .create_with_context(Context {
                shared: shared.clone(),
            })
            .map_err(|source| ConnectorError::Kafka {
                context: "creating the consumer".into(),
                source,
            })?;
        let subscription: Vec<String> = match &plan.pattern {
            Some(p) if p.starts_with('^') => vec![p.clone()],
            Some(p) => vec![format!("^{p}")],
            None => plan.topics.clone(),
        };
        let refs: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|source| ConnectorError::Kafka {
                context: format!("subscribing to {}", subscription.join(", ")),
                source,
            })?;
        tracing::info!(group = %plan.group, topics = %subscription.join(","), "kafka source subscribed");
        Ok(KafkaSource {
            consumer,
            config,
            shared,
            stop,
            idle_exit,
            last_record: Instant::now(),
            joined: false,
            names: Vec::new(),
            name_index: HashMap::new(),
            pending: Vec::new(),
            data: Vec::new(),
            first_at: None,
            last_positions: Vec::new(),
            next_index: 0,
            bytes_read: 0,
            meta,
            current_origin: None,
            current_retried: None,
            stopped: false,
            warnings: Vec::new(),
            max_outage: connection.max_outage,
            last_probe: Instant::now(),
        })
    }

    /// While the brokers are unreachable: probes them every 2 s (an answer ends the outage),
    /// and fails the run once the outage outlasts `kafka.max_outage`, or `--exit-when-idle`
    /// with nothing in hand — a script waiting for the run to end hears why.
    fn check_brokers(&mut self) -> Result<(), ConnectorError> {
        let Some(down) = super::BROKERS.down_for() else {
            return Ok(());
        };
        if self.last_probe.elapsed() >= Duration::from_secs(2) {
            self.last_probe = Instant::now();
            if self
                .consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok()
            {
                super::BROKERS.up();
                return Ok(());
            }
        }
        let idle = self.idle_exit.filter(|_| self.pending.is_empty());
        let limit = [self.max_outage, idle].into_iter().flatten().min();
        match limit {
            Some(limit) if down >= limit => Err(ConnectorError::Other(format!(
                "kafka brokers unreachable for {:.1} s (limit {limit:?}: kafka.max_outage or --exit-when-idle)",
                down.as_secs_f64()
            ))),
            _ => Ok(()),
        }
    }

    fn intern(&mut self, topic: &str, partition: i32, offset: i64) -> usize {
        if let Some(&i) = self.name_index.get(&(topic.to_string(), partition)) {
            return i;
        }
        // Where each partition resumed: the first thing to check after a restart.
        tracing::info!(topic, partition, offset, "first record of partition");
        // A resume past the committed offset means offsets were never read here: retention or
        // compaction removed them, transaction markers sit there, or a broker skipped them (a
        // fault: Kafka returns the containing batch for a fetch from inside one). Say so,
        // never silently.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        if let Ok(c) = self.consumer.committed_offsets(tpl, Duration::from_secs(5))
            && let Some(Offset::Offset(committed)) = c.elements().first().map(|e| e.offset())
            && offset > committed
        {
            let skipped = offset - committed;
            tracing::warn!(
                topic,
                partition,
                committed,
                first = offset,
                skipped,
                "the first record after the committed offset is further on: offsets in between were not read"
            );
            self.warnings.push(format!(
                "{topic}/{partition}: resumed at offset {offset} but {committed} was committed: {skipped} offsets not read (retention, compaction, transaction markers or a broker fault)"
            ));
        }
        self.names
            .push((topic.to_string(), partition, source_name(topic, partition)));
        self.name_index
            .insert((topic.to_string(), partition), self.names.len() - 1);
        self.names.len() - 1
    }

    fn push(&mut self, tp: usize, offset: i64, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.pending.push(Pending {
            topic_partition: tp,
            offset,
            end: self.data.len(),
            origin: self.current_origin.clone(),
            retried: self.current_retried.clone(),
        });
    }

    /// Buffers one message as one or more records (HL7 batch files split into messages).
    fn add(&mut self, topic: &str, partition: i32, offset: i64, payload: &[u8]) {
        let tp = self.intern(topic, partition, offset);
        self.bytes_read += payload.len() as u64;
        match self.config.format {
            SourceFormat::Hl7 => {
                let name = self.names[tp].2.clone();
                let spans = crate::formats::framing::frame(
                    payload,
                    SourceFormat::Hl7,
                    &name,
                    &mut self.warnings,
                );
                if spans.len() <= 1 {
                    // One message (or nothing recognisable, which dead-letters): the record
                    // is the payload byte for byte, terminators included.
                    self.push(tp, offset, payload);
                } else {
                    for (s, e) in spans {
                        self.push(tp, offset, &payload[s..e]);
                    }
                }
            }
            _ => self.push(tp, offset, payload),
        }
    }

    /// Drops buffered records of partitions taken away by a rebalance.
    fn drop_revoked(&mut self) {
        let revoked = std::mem::take(&mut *self.shared.revoked.lock().expect("shared"));
        if revoked.is_empty() || self.pending.is_empty() {
            return;
        }
        let gone: Vec<bool> = self
            .names
            .iter()
            .map(|(t, p, _)| revoked.iter().any(|(rt, rp)| rt == t && rp == p))
            .collect();
        let mut data = Vec::with_capacity(self.data.len());
        let mut kept = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        for p in self.pending.drain(..) {
            if !gone[p.topic_partition] {
                data.extend_from_slice(&self.data[start..p.end]);
                kept.push(Pending {
                    end: data.len(),
                    ..p
                });
            }
            start = p.end;
        }
        self.data = data;
        self.pending = kept;
        if self.pending.is_empty() {
            self.first_at = None;
        }
    }

    /// The buffered records as a raw batch (empty buffer: an empty batch).
    fn take_batch(&mut self) -> RecordBatch {
        let n = self.pending.len();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0i32);
        let mut positions: HashMap<usize, i64> = HashMap::new();
        let mut sources = Vec::with_capacity(n);
        let mut kafka_offsets = Vec::with_capacity(n);
        for p in &self.pending {
            offsets.push(p.end as i32);
            sources.push(self.names[p.topic_partition].2.as_str());
            kafka_offsets.push(p.offset);
            let next = positions.entry(p.topic_partition).or_insert(p.offset + 1);
            *next = (*next).max(p.offset + 1);
        }
        let mut origins = Vec::new();
        for (i, p) in self.pending.iter().enumerate() {
            let index = self.next_index + i as i64;
            if let Some(o) = &p.origin {
                origins.push((index, o.clone()));
            }
            if let Some(r) = &p.retried {
                self.meta.insert(index, r.0, r.1.clone());
            }
        }
        if !origins.is_empty() {
            self.meta.insert_origins(origins);
        }
        let data = std::mem::take(&mut self.data);
        let raw = BinaryArray::new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(data),
            None,
        );
        let indexes = Int64Array::from_iter_values(self.next_index..self.next_index + n as i64);
        self.next_index += n as i64;
        self.last_positions = positions
            .into_iter()
            .map(|(tp, o)| (self.names[tp].0.clone(), self.names[tp].1, o))
            .collect();
        let batch = RecordBatch::try_new(
            raw_record_schema(),
            vec![
                Arc::new(raw),
                Arc::new(StringArray::from(sources)),
                Arc::new(Int64Array::from(kafka_offsets)),
                Arc::new(indexes),
            ],
        )
        .expect("raw schema matches");
        self.pending.clear();
        self.first_at = None;
        batch
    }

    fn full(&self) -> bool {
        self.pending.len() >= self.config.max_rows || self.data.len() >= self.config.max_bytes
    }
}

impl BatchSource for KafkaSource {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.stopped {
            return Ok(None);
        }
        let tick = self.config.max_delay.min(Duration::from_millis(100));
        let idle_tick = Instant::now() + self.config.max_delay.max(Duration::from_millis(50));
        loop {
            let limit_reached = self
                .config
                .limit
                .is_some_and(|l| (self.next_index as u64 + self.pending.len() as u64) >= l);
            if self.shared.assigned.swap(false, Ordering::Relaxed) {
                self.joined = true;
                self.last_record = Instant::now();
            }
            if self.stop.load(Ordering::Relaxed)
                || limit_reached
                || self.idle_exit.is_some_and(|d| {
                    self.joined && self.pending.is_empty() && self.last_record.elapsed() >= d
                })
            {
                self.stopped = true;
                tracing::info!("kafka source stopping: draining in-flight batches");
                let batch = self.take_batch();
                return Ok(Some(batch));
            }
            let wait = match self.first_at {
                Some(t) => (t + self.config.max_delay)
                    .saturating_duration_since(Instant::now())
                    .min(tick),
                None => tick,
            };
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    let mut retried = None;
                    if let Some(h) = m.headers() {
                        let mut attempt = None;
                        let mut failed = None;
                        for hd in h.iter() {
                            match (hd.key, hd.value) {
                                (headers::ATTEMPT, Some(v)) => {
                                    attempt =
                                        std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
                                }
                                (headers::FIRST_FAILED_AT, Some(v)) => {
                                    failed = std::str::from_utf8(v).ok().map(str::to_string)
                                }
                                _ => {}
                            }
                        }
                        retried = attempt.zip(failed).map(Arc::new);
                    }
                    let origin = Origin::of(m.key(), m.headers()).map(Arc::new);
                    let (topic, partition, offset) =
                        (m.topic().to_string(), m.partition(), m.offset());
                    let payload = m.payload().unwrap_or_default().to_vec();
                    drop(m);
                    super::BROKERS.up();
                    // One message may hold several records (an HL7 batch file): each of them
                    // carries the message's origin and attempt.
                    self.current_origin = origin;
                    self.current_retried = retried;
                    self.add(&topic, partition, offset, &payload);
                    self.last_record = Instant::now();
                    self.first_at.get_or_insert_with(Instant::now);
                }
                Some(Err(e)) => {
                    // librdkafka retries broker connections itself; only a fatal error stops us.
                    if matches!(e, rdkafka::error::KafkaError::MessageConsumptionFatal(_)) {
                        return Err(ConnectorError::Kafka {
                            context: "consuming".into(),
                            source: e,
                        });
                    }
                    if super::is_unreachable(&e) {
                        super::BROKERS.down(&e.to_string());
                    } else {
                        tracing::warn!(error = %e, "kafka consumer error");
                    }
                }
                None => {}
            }
            self.check_brokers()?;
            self.drop_revoked();
            let due = self
                .first_at
                .is_some_and(|t| t.elapsed() >= self.config.max_delay);
            if !self.pending.is_empty() && (self.full() || due) {
                return Ok(Some(self.take_batch()));
            }
            if self.pending.is_empty() && Instant::now() >= idle_tick {
                // Nothing to hand on: return so the runtime can commit and check for stops.
                return Ok(Some(self.take_batch()));
            }
        }
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.bytes_read, None)
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn positions(&mut self) -> Option<Vec<Position>> {
        Some(std::mem::take(&mut self.last_positions))
    }

    fn commit(&mut self, positions: &[Position], last: bool) -> Result<(), ConnectorError> {
        let mode = if last {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        tracing::debug!(?positions, last, "committing offsets");
        self.consumer
            .commit(&position_list(positions), mode)
            .map_err(|source| ConnectorError::Kafka {
                context: "committing offsets".into(),
                source,
            })?;
        let (_, _, final_below) = self
            .shared
            .checkpoints
            .lock()
            .expect("shared")
            .as_ref()
            .map(|c| c.progress())
            .unwrap_or_default();
        self.meta.forget_below(final_below);
        Ok(())
    }

    fn attach(&mut self, checkpoints: Arc<Checkpoints>) {
        *self.shared.checkpoints.lock().expect("shared") = Some(checkpoints);
    }
}
