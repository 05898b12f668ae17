//! Kafka: the source, the sink and the dead-letter topic, over librdkafka (`rdkafka`).
//!
//! Delivery is at-least-once end to end. The source hands the runtime one batch per poll
//! window and, after it, a barrier; a batch's offsets are committed only once every sink and
//! the dead-letter writer have made everything before that barrier durable (Kafka acks,
//! flushed files). A crash therefore replays at most the uncommitted window, and a rebalance
//! waits for in-flight batches of the partitions it takes away, then commits them.
//!
//! Connection settings come from the pipeline's `kafka:` block, then the environment:
//! `PLEXUS_KAFKA_BROKERS` overrides the brokers, and each `secrets:` entry names an
//! environment variable (`env:NAME`) or file (`file:/path`) holding a property's value —
//! passwords never live in pipeline files or logs.

pub mod config;
pub mod dlq;
pub mod retry;
pub mod sink;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdkafka::ClientConfig;

pub use crate::net::secret::SecretRef;
pub use dlq::KafkaDlq;
pub use sink::KafkaSink;
pub use source::KafkaSource;

/// Header names plexus writes (and reads back on replay).
pub mod headers {
    pub const PIPELINE: &str = "plexus.pipeline";
    pub const INTEGRATION: &str = "plexus.integration";
    pub const SOURCE_TOPIC: &str = "plexus.source.topic";
    pub const SOURCE_PARTITION: &str = "plexus.source.partition";
    pub const SOURCE_OFFSET: &str = "plexus.source.offset";
    pub const CORRELATION_ID: &str = "plexus.correlation-id";
    pub const STAGE: &str = "plexus.dlq.stage";
    pub const RULE: &str = "plexus.dlq.rule";
    pub const ERROR: &str = "plexus.dlq.error";
    pub const ATTEMPT: &str = "plexus.attempt";
    pub const FIRST_FAILED_AT: &str = "plexus.first-failed-at";
    pub const FAILED_AT: &str = "plexus.failed-at";
    /// On a replayed record: the dead letter it came from (`topic/partition/offset`).
    pub const REPLAY_OF: &str = "plexus.replay-of";
    /// On a parked record: the sink that failed to deliver it.
    pub const SINK: &str = "plexus.sink";
    /// On a parked record: when it is due (milliseconds since the Unix epoch).
    pub const DUE_AT: &str = "plexus.due-at";
    /// On a parked record: the original record's `_source` (`topic/partition` or file).
    pub const RECORD_SOURCE: &str = "plexus.record-source";
    /// On a parked record: the original record's bytes (for its dead letter).
    pub const ORIGINAL: &str = "plexus.original";
    /// On a parked FHIR request: its path under the base (`Patient?identifier=…`); absent
    /// for a Bundle (POSTed to the base).
    pub const REQUEST_PATH: &str = "plexus.request-path";
    /// FHIR: elements the message deletes (see `http::Request::delete`).
    pub const DELETE_ELEMENTS: &str = "plexus.delete-elements";
    /// On a dead letter: the original record's Kafka key (absent when it had none). The
    /// record's own headers are copied beside plexus's, under their names.
    pub const SOURCE_KEY: &str = "plexus.source.key";
}

/// Creates topics that do not exist yet: (name, partitions, compacted).
pub async fn ensure_topics(
    connection: &KafkaConnection,
    topics: &[(String, i32, bool)],
) -> Result<(), crate::connectors::ConnectorError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<Quiet> = connection
        .client_config()
        .map_err(crate::connectors::ConnectorError::Other)?
        .create_with_context(Quiet)
        .map_err(|source| crate::connectors::ConnectorError::Kafka {
            context: "creating an admin client".into(),
            source,
        })?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p, compact)| {
            let n = NewTopic::new(t, *p, TopicReplication::Fixed(-1));
            if *compact {
                n.set("cleanup.policy", "compact")
            } else {
                n
            }
        })
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(|source| crate::connectors::ConnectorError::Kafka {
            context: "creating topics".into(),
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => {
                return Err(crate::connectors::ConnectorError::Other(format!(
                    "creating topic {t}: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// Properties that must come from `secrets:` (never inline in a pipeline file).
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".key.pem") || k == "ssl.key.pem"
}

/// The resolved `kafka:` block.
#[derive(Debug, Clone, Default)]
pub struct KafkaConnection {
    pub brokers: Option<String>,
    pub properties: Vec<(String, String)>,
    pub secrets: Vec<(String, SecretRef)>,
    /// `kafka.max_outage`: brokers unreachable longer than this fail the run.
    pub max_outage: Option<std::time::Duration>,
}

/// Whether the brokers answer, for the whole process: every client reports connection errors
/// here, so an outage is one log line when it starts and one when it ends (with how long it
/// lasted and how many errors it caused), not dozens of lines a second.
pub struct Reachability {
    /// Since when the brokers are unreachable, and the errors seen since.
    state: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

/// The process's view of its brokers.
pub static BROKERS: Reachability = Reachability {
    state: std::sync::Mutex::new(None),
};

impl Reachability {
    /// A connection error (`reason` from librdkafka names brokers, never record data).
    pub fn down(&self, reason: &str) {
        let mut s = self.state.lock().expect("reachability");
        match &mut *s {
            Some((_, n)) => {
                *n += 1;
                tracing::debug!(%reason, "kafka brokers still unreachable");
            }
            None => {
                *s = Some((std::time::Instant::now(), 1));
                tracing::warn!(%reason, "kafka brokers unreachable; retrying (one line until they are back)");
            }
        }
    }

    /// The brokers answered.
    pub fn up(&self) {
        if let Some((since, n)) = self.state.lock().expect("reachability").take() {
            tracing::warn!(
                after = ?since.elapsed(),
                errors = n,
                "kafka brokers reachable again"
            );
        }
    }

    /// How long the brokers have been unreachable (None: they answer).
    pub fn down_for(&self) -> Option<std::time::Duration> {
        self.state
            .lock()
            .expect("reachability")
            .map(|(since, _)| since.elapsed())
    }
}

/// Errors that mean "cannot reach the brokers" (as opposed to a refused request).
pub fn is_unreachable(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::Resolve
                | C::NetworkException
                | C::BrokerNotAvailable
                | C::OperationTimedOut
        )
    )
}

/// librdkafka's callbacks for every plexus client: connection errors go to [`BROKERS`], its
/// own log lines stay at debug (they repeat per broker and per retry).
pub fn client_error(error: rdkafka::error::KafkaError, reason: &str) {
    if is_unreachable(&error) {
        BROKERS.down(reason);
    } else {
        tracing::warn!(error = %error, %reason, "kafka client error");
    }
}

/// See [`client_error`].
pub fn client_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical => tracing::warn!(target: "librdkafka", fac, "{message}"),
        _ => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// The client context of plexus's producers and admin clients.
#[derive(Clone, Default)]
pub struct Quiet;

impl rdkafka::consumer::ConsumerContext for Quiet {}

impl rdkafka::client::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        client_log(level, fac, message);
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

impl KafkaConnection {
    /// A librdkafka configuration with the brokers, properties and secrets applied.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let brokers = std::env::var("PLEXUS_KAFKA_BROKERS")
            .ok()
            .filter(|b| !b.is_empty())
            .or_else(|| self.brokers.clone())
            .ok_or("no Kafka brokers: set `kafka.brokers` or PLEXUS_KAFKA_BROKERS")?;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, r) in &self.secrets {
            c.set(k, r.read().map_err(|e| format!("kafka secret {k}: {e}"))?);
        }
        // librdkafka logs through `log`; keep its chatter below info.
        c.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        Ok(c)
    }
}

/// An idempotent producer (no duplicates from producer retries; order kept per partition).
pub fn producer(
    connection: &KafkaConnection,
) -> Result<rdkafka::producer::FutureProducer<Quiet>, crate::connectors::ConnectorError> {
    let mut cc = connection
        .client_config()
        .map_err(crate::connectors::ConnectorError::Other)?;
    for (k, v) in [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
    ] {
        // The pipeline's properties win over these defaults.
        if !connection.properties.iter().any(|(pk, _)| pk == k) {
            cc.set(k, v);
        }
    }
    cc.create_with_context(Quiet)
        .map_err(|source| crate::connectors::ConnectorError::Kafka {
            context: "creating the producer".into(),
            source,
        })
}

/// Sends one record, waiting while librdkafka's queue is full (backpressure, not an error).
pub fn send(
    producer: &rdkafka::producer::FutureProducer<Quiet>,
    mut record: rdkafka::producer::FutureRecord<'_, [u8], [u8]>,
) -> Result<rdkafka::producer::DeliveryFuture, crate::connectors::ConnectorError> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                producer.poll(std::time::Duration::from_millis(20));
            }
            Err((source, r)) => {
                return Err(crate::connectors::ConnectorError::Kafka {
                    context: format!("producing to {}", r.topic),
                    source,
                });
            }
        }
    }
}

/// Resolves when every delivery report is in; the first failure is the error.
pub fn all_delivered(
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    what: String,
) -> crate::connectors::Durable {
    Box::pin(async move {
        let n = pending.len();
        for f in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(crate::connectors::ConnectorError::Kafka {
                        context: format!("delivering to {what}"),
                        source,
                    });
                }
                Err(_) => {
                    return Err(crate::connectors::ConnectorError::Other(format!(
                        "{what}: the producer was dropped before delivery"
                    )));
                }
            }
        }
        tracing::debug!(records = n, to = %what, "delivery reports in");
        Ok(())
    })
}

/// A producer plus the delivery reports not yet handed to a barrier: what the sink and the
/// dead-letter topic share.
pub struct Deliveries {
    producer: rdkafka::producer::FutureProducer<Quiet>,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    /// Names the destination in errors (`sink patients (topic patients.out)`).
    what: String,
}

impl Deliveries {
    pub fn new(
        connection: &KafkaConnection,
        what: String,
    ) -> Result<Self, crate::connectors::ConnectorError> {
        Ok(Deliveries {
            producer: producer(connection)?,
            pending: Vec::new(),
            what,
        })
    }

    /// Enqueues one record (see `send`).
    pub fn send(
        &mut self,
        record: rdkafka::producer::FutureRecord<'_, [u8], [u8]>,
    ) -> Result<(), crate::connectors::ConnectorError> {
        let f = send(&self.producer, record)?;
        self.pending.push(f);
        Ok(())
    }

    /// Resolves once everything sent so far is acknowledged (None: nothing pending).
    pub fn barrier(&mut self) -> Option<crate::connectors::Durable> {
        if self.pending.is_empty() {
            return None;
        }
        Some(all_delivered(
            std::mem::take(&mut self.pending),
            self.what.clone(),
        ))
    }

    /// Flushes and waits for the reports of writes after the last barrier.
    pub fn finish(&mut self) -> Result<(), crate::connectors::ConnectorError> {
        use rdkafka::producer::Producer;
        self.producer
            .flush(std::time::Duration::from_secs(60))
            .map_err(|source| crate::connectors::ConnectorError::Kafka {
                context: format!("{}: flushing", self.what),
                source,
            })?;
        match self.barrier() {
            Some(f) => futures::executor::block_on(f),
            None => Ok(()),
        }
    }
}

/// Where a record came from on Kafka: `_source` is `topic/partition`, `_offset` the offset.
pub fn source_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Splits a `_source` written by `source_name`.
pub fn parse_source_name(s: &str) -> Option<(&str, i32)> {
    let (t, p) = s.rsplit_once('/')?;
    Some((t, p.parse().ok()?))
}

/// A record's Kafka key and headers (other than plexus's own) as it arrived: kept with its
/// dead letter so that replay puts it back with the same key, partition and headers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Origin {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Origin {
    /// The origin of a consumed message; None when it has neither key nor foreign headers
    /// (nothing to keep, and nothing stored).
    pub fn of(
        key: Option<&[u8]>,
        headers: Option<&rdkafka::message::BorrowedHeaders>,
    ) -> Option<Self> {
        use rdkafka::message::Headers;
        let headers: Vec<(String, Option<Vec<u8>>)> = headers
            .map(|h| {
                h.iter()
                    .filter(|h| !is_plexus_header(h.key))
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        (key.is_some() || !headers.is_empty()).then(|| Origin {
            key: key.map(<[u8]>::to_vec),
            headers,
        })
    }
}

/// Headers plexus writes and reads itself; every other header belongs to the producer.
pub fn is_plexus_header(key: &str) -> bool {
    key.starts_with("plexus.")
}

/// What the source knew of each in-flight record beyond its bytes, by `_record_index`: the
/// plexus retry headers it arrived with (attempt, first failure, so a record failing again
/// gets the right attempt number) and its original key and headers. Shared by the source and
/// the dead-letter writer; forgotten once the record's batch is committed.
#[derive(Debug, Default, Clone)]
pub struct RecordMeta(Arc<Mutex<MetaMaps>>);

#[derive(Debug, Default)]
struct MetaMaps {
    attempts: HashMap<i64, (u32, String)>,
    origins: HashMap<i64, Arc<Origin>>,
}

impl RecordMeta {
    pub fn insert(&self, record_index: i64, attempt: u32, first_failed_at: String) {
        self.0
            .lock()
            .expect("record meta")
            .attempts
            .insert(record_index, (attempt, first_failed_at));
    }
    pub fn get(&self, record_index: i64) -> Option<(u32, String)> {
        self.0
            .lock()
            .expect("record meta")
            .attempts
            .get(&record_index)
            .cloned()
    }
    /// Records origins in one go (the source calls this once per batch).
    pub fn insert_origins(&self, origins: impl IntoIterator<Item = (i64, Arc<Origin>)>) {
        let mut m = self.0.lock().expect("record meta");
        m.origins.extend(origins);
    }
    pub fn origin(&self, record_index: i64) -> Option<Arc<Origin>> {
        self.0
            .lock()
            .expect("record meta")
            .origins
            .get(&record_index)
            .cloned()
    }
    /// Forgets records below `index` (their batches are committed).
    pub fn forget_below(&self, index: i64) {
        let mut m = self.0.lock().expect("record meta");
        if !m.attempts.is_empty() {
            m.attempts.retain(|&k, _| k >= index);
        }
        if !m.origins.is_empty() {
            m.origins.retain(|&k, _| k >= index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_and_source_names() {
        assert!(is_secret_property("sasl.password"));
        assert!(!is_secret_property("sasl.username"));
        assert_eq!(parse_source_name("hl7.adt/3"), Some(("hl7.adt", 3)));
        assert_eq!(
            parse_source_name(&source_name("a.b-c", 12)),
            Some(("a.b-c", 12))
        );
    }
}
