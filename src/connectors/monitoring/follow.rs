//! Shared breaker state across scaled-out instances: every instance publishes its breakers'
//! transitions on the compacted events topic (keyed by `integration/sink`) and follows the
//! topic. When another instance's breaker for the same sink *opens* on its own evidence, this
//! instance opens too: a broken EHR is broken for everyone, and N instances should not each
//! spend their minimum calls finding out. Closing is not propagated: each instance probes
//! for itself (half-open), so one instance's recovery never floods a system that is still
//! failing for the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::BreakerEvent;
use crate::connectors::ConnectorError;
use crate::connectors::kafka::KafkaConnection;
use crate::resilience::breaker::SharedBreaker;

/// Reasons of openings that were themselves followed start with this (never re-propagated).
pub const FOLLOWED: &str = "followed instance ";

/// Openings older than this are history, not news (the compacted topic keeps the last one).
const FRESH: Duration = Duration::from_secs(300);

/// Follows `topic` until `stop`; `breakers` by breaker name (`integration/sink`).
pub fn spawn(
    connection: &KafkaConnection,
    topic: &str,
    instance: &str,
    breakers: HashMap<String, SharedBreaker>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ConnectorError> {
    let kafka = |context: &str| {
        let context = context.to_string();
        move |source| ConnectorError::Kafka { context, source }
    };
    let consumer: BaseConsumer<crate::connectors::kafka::Quiet> = connection
        .client_config()
        .map_err(ConnectorError::Other)?
        // Assigned, never subscribed or committed: every instance reads the whole topic.
        .set("group.id", format!("plexus-breakers-{instance}"))
        .set("enable.auto.commit", "false")
        .create_with_context(crate::connectors::kafka::Quiet)
        .map_err(kafka("creating the breaker-event consumer"))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka("reading breaker-event topic metadata"))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(kafka("assigning breaker-event partitions"))?;
        }
    }
    consumer
        .assign(&tpl)
        .map_err(kafka("assigning breaker-event partitions"))?;
    let instance = instance.to_string();
    std::thread::Builder::new()
        .name("breaker-follow".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let Some(Ok(e)) = m.payload().map(serde_json::from_slice::<BreakerEvent>) else {
                    continue;
                };
                if let Some(why) = follows(&e, &instance, chrono::Utc::now().timestamp_millis())
                    && let Some(b) = breakers.get(&e.breaker)
                {
                    b.trip(why);
                }
            }
        })
        .map_err(|e| ConnectorError::Other(format!("starting the breaker follower: {e}")))
}

/// Whether an event from the topic should open our breaker, and why.
pub fn follows(e: &BreakerEvent, instance: &str, now_ms: i64) -> Option<String> {
    let fresh = now_ms - e.at_ms < FRESH.as_millis() as i64;
    (e.to == "OPEN" && e.instance != instance && !e.reason.starts_with(FOLLOWED) && fresh)
        .then(|| format!("{FOLLOWED}{}: {}", e.instance, e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(instance: &str, to: &str, reason: &str, at_ms: i64) -> BreakerEvent {
        BreakerEvent {
            event_type: "integration.circuit.opened".into(),
            integration: "i".into(),
            instance: instance.into(),
            breaker: "i/ehr".into(),
            from: "CLOSED".into(),
            to: to.into(),
            reason: reason.into(),
            calls: 10,
            failure_rate: 100.0,
            slow_call_rate: 0.0,
            at_ms,
        }
    }

    #[test]
    fn only_fresh_original_openings_of_other_instances_are_followed() {
        let now = 1_000_000;
        let why = follows(&event("b", "OPEN", "failure rate 100%", now - 10), "a", now).unwrap();
        assert_eq!(why, "followed instance b: failure rate 100%");
        assert!(
            follows(&event("a", "OPEN", "x", now), "a", now).is_none(),
            "our own"
        );
        assert!(
            follows(&event("b", "CLOSED", "x", now), "a", now).is_none(),
            "closing"
        );
        assert!(
            follows(&event("b", "OPEN", &why, now), "a", now).is_none(),
            "an echo"
        );
        assert!(
            follows(&event("b", "OPEN", "x", now - 600_000), "a", now).is_none(),
            "stale"
        );
    }
}
