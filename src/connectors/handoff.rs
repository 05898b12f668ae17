//! Where a listener makes what it received durable before it answers: its local spool (the
//! default), or a Kafka topic (`handoff: {topic: …}`), written with `acks=all`. With Kafka
//! the flow reads the topic back through its consumer group, so several listeners behind
//! one address share the work, and what one took in may be processed by another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::Deserialize;

use super::kafka::config::KafkaSourcePlan;
use super::kafka::{KafkaConnection, Quiet, headers};
use super::spool::{Spool, SpoolError};
use super::spooled::Front;
use super::{BatchSource, ConnectorError, Position};
use crate::config::{PlanCx, Spanned};

/// `handoff: {topic: hl7.adt.raw}` of a listening source.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffSpec {
    /// The topic each received record is written to (with `acks=all`) before it is
    /// acknowledged. Needs the pipeline's `kafka:` block.
    pub topic: Spanned<String>,
    /// The consumer group reading it back (default: the pipeline name).
    pub group: Option<Spanned<String>>,
}

/// A planned Kafka hand-off.
#[derive(Debug, Clone)]
pub struct HandoffPlan {
    pub topic: String,
    pub group: String,
}

impl HandoffSpec {
    pub fn plan(&self, cx: &mut PlanCx<'_>) -> HandoffPlan {
        if !cx.has_kafka {
            cx.err(
                &self.topic,
                "a Kafka hand-off needs a `kafka:` connection block",
            );
        }
        if self.topic.is_empty() {
            cx.err(&self.topic, "the hand-off topic is empty");
        }
        HandoffPlan {
            topic: self.topic.to_string(),
            group: self
                .group
                .as_ref()
                .map_or_else(|| cx.pipeline.to_string(), |g| g.to_string()),
        }
    }
}

impl HandoffPlan {
    /// The subscription the flow reads the topic back with.
    pub fn source_plan(&self) -> KafkaSourcePlan {
        KafkaSourcePlan {
            topics: vec![self.topic.clone()],
            pattern: None,
            group: self.group.clone(),
            start: "earliest".into(),
            instance: None,
        }
    }
}

/// How long a record may wait for the brokers' acknowledgement before the sender is told
/// to send it again: well inside senders' own ACK timeouts.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The durable store behind a listener.
#[derive(Clone)]
pub enum Handoff {
    Spool(Spool),
    Kafka {
        producer: FutureProducer<Quiet>,
        topic: Arc<str>,
    },
}

impl Handoff {
    /// A producer for `plan.topic`: idempotent, `acks=all`.
    pub fn kafka(connection: &KafkaConnection, plan: &HandoffPlan) -> Result<Self, ConnectorError> {
        let mut connection = connection.clone();
        if !connection
            .properties
            .iter()
            .any(|(k, _)| k == "message.timeout.ms")
        {
            connection.properties.push((
                "message.timeout.ms".into(),
                DELIVERY_TIMEOUT.as_millis().to_string(),
            ));
        }
        // Each listener's records leave at once: a sender waits for every one.
        if !connection.properties.iter().any(|(k, _)| k == "linger.ms") {
            connection.properties.push(("linger.ms".into(), "1".into()));
        }
        Ok(Handoff::Kafka {
            producer: super::kafka::producer(&connection)?,
            topic: plan.topic.as_str().into(),
        })
    }

    /// Whether records settle by offset here (application ACKs): only in the local spool.
    pub fn settles(&self) -> bool {
        matches!(self, Handoff::Spool(_))
    }

    /// Makes the records durable (origin, payload); resolves with each one's offset.
    /// In Kafka each is keyed by its origin, so one sender's records keep their order in
    /// one partition; the origin also rides in the `plexus.record-source` header.
    pub async fn append_all(
        &self,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<u64>, SpoolError> {
        let (producer, topic) = match self {
            Handoff::Spool(s) => return s.append_all(records).await,
            Handoff::Kafka { producer, topic } => (producer, topic),
        };
        let failed = |e: String| SpoolError::Handoff {
            topic: topic.to_string(),
            why: e,
        };
        let mut pending = Vec::with_capacity(records.len());
        for (origin, payload) in &records {
            let headers = OwnedHeaders::new().insert(Header {
                key: headers::RECORD_SOURCE,
                value: Some(origin.as_bytes()),
            });
            let record = FutureRecord::to(topic)
                .key(origin.as_bytes())
                .payload(payload.as_slice())
                .headers(headers);
            // Waits while librdkafka's queue is full: the sender waits with it.
            pending.push(producer.send(record, DELIVERY_TIMEOUT));
        }
        let mut offsets = Vec::with_capacity(pending.len());
        for p in pending {
            match p.await {
                Ok(delivery) => offsets.push(delivery.offset.max(0) as u64),
                Err((e, _)) => return Err(failed(e.to_string())),
            }
        }
        Ok(offsets)
    }
}

/// A listener whose records were handed to Kafka, read back through the consumer group.
pub struct HandedOff<F: Front> {
    front: F,
    inner: Box<dyn BatchSource>,
    stop: Arc<AtomicBool>,
    stopped: bool,
}

impl<F: Front> HandedOff<F> {
    pub fn new(front: F, inner: Box<dyn BatchSource>, stop: Arc<AtomicBool>) -> Self {
        HandedOff {
            front,
            inner,
            stop,
            stopped: false,
        }
    }

    /// Stops the listener (answering what it holds) before the consumer drains.
    fn stop_front(&mut self) {
        if !self.stopped {
            self.front.begin_stop();
            self.front.stop();
            self.stopped = true;
        }
    }
}

impl<F: Front> BatchSource for HandedOff<F> {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.stop.load(Ordering::Relaxed) {
            self.stop_front();
        }
        let batch = self.inner.next_batch()?;
        if batch.is_none() {
            self.stop_front();
        }
        Ok(batch)
    }

    fn progress(&self) -> (u64, Option<u64>) {
        self.inner.progress()
    }

    fn warnings(&self) -> Vec<String> {
        let mut w = vec![self.front.describe()];
        w.extend(self.inner.warnings());
        w
    }

    fn positions(&mut self) -> Option<Vec<Position>> {
        self.inner.positions()
    }

    fn commit(&mut self, positions: &[Position], last: bool) -> Result<(), ConnectorError> {
        self.inner.commit(positions, last)
    }

    fn attach(&mut self, checkpoints: Arc<super::Checkpoints>) {
        self.inner.attach(checkpoints)
    }
}

/// Opens a listener's durable store: the local spool (recovering what a crash left) with the
/// reader the flow reads it by, or the Kafka hand-off.
pub fn open(
    what: &str,
    spool: &std::path::Path,
    options: super::spool::SpoolOptions,
    handoff: Option<&HandoffPlan>,
    kafka: Option<&KafkaConnection>,
) -> Result<(Handoff, Option<super::spool::SpoolReader>), ConnectorError> {
    match handoff {
        None => {
            let (spool, reader) = super::spooled::open_spool(what, spool, options)?;
            Ok((Handoff::Spool(spool), Some(reader)))
        }
        Some(plan) => {
            let connection = kafka.ok_or_else(|| {
                ConnectorError::Other(format!("{what}: a Kafka hand-off needs `kafka:`"))
            })?;
            Ok((Handoff::kafka(connection, plan)?, None))
        }
    }
}

/// The flow's side of a listener: its spool reader, or a consumer of the hand-off topic.
pub fn source<F: Front + 'static>(
    front: F,
    reader: Option<super::spool::SpoolReader>,
    handoff: Option<&HandoffPlan>,
    cx: super::registry::SourceCx<'_>,
) -> Result<Box<dyn BatchSource>, ConnectorError> {
    match (reader, handoff) {
        (Some(reader), _) => Ok(Box::new(super::spooled::SpooledSource::new(
            front,
            reader,
            cx.batching,
            cx.stop,
            cx.exit_when_idle,
        ))),
        (None, Some(plan)) => {
            let consumer = super::kafka::KafkaSource::new(
                &cx.kafka.cloned().unwrap_or_default(),
                &plan.source_plan(),
                cx.batching,
                cx.stop.clone(),
                cx.exit_when_idle,
                cx.meta,
            )?;
            Ok(Box::new(HandedOff::new(front, Box::new(consumer), cx.stop)))
        }
        (None, None) => unreachable!("a listener has a spool or a hand-off"),
    }
}
