//! Monitoring outputs: window rows (Parquet + topic), alerts (file + topic + webhook) and
//! circuit-breaker events (file + compacted topic keyed by breaker), plus window-state
//! checkpoints (`state`).
//!
//! Events are JSON lines, one per event, appended to a local file (the embedded default, what
//! `plexus query` reads) and, with Kafka, produced to a topic. Breaker events are keyed by
//! `integration/sink`, so a compacted topic keeps each breaker's latest state.

pub mod config;
pub mod follow;
pub mod parquet;
pub mod state;

use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::connectors::http::{HttpTarget, Request};
use crate::connectors::kafka::{Deliveries, KafkaConnection};
use crate::connectors::{ConnectorError, Durable};
use crate::operators::window::Alert;
use crate::resilience::breaker::Transition;

/// A breaker state change as published (`integration.circuit.opened|half_opened|closed`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BreakerEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub integration: String,
    /// The process that made the transition (scaled-out instances share the topic).
    pub instance: String,
    /// `integration/sink`: the key on the topic.
    pub breaker: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub calls: usize,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub at_ms: i64,
}

impl BreakerEvent {
    pub fn new(integration: &str, instance: &str, breaker: &str, t: &Transition) -> Self {
        let state = |s| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        BreakerEvent {
            event_type: t.to.event_type().to_string(),
            integration: integration.to_string(),
            instance: instance.to_string(),
            breaker: breaker.to_string(),
            from: state(t.from),
            to: state(t.to),
            reason: t.reason.clone(),
            calls: t.calls,
            failure_rate: t.failure_rate,
            slow_call_rate: t.slow_call_rate,
            at_ms: t.at_ms,
        }
    }
}

/// JSON lines to a file and optionally a topic.
pub struct EventLog {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    topic: Option<(String, Deliveries)>,
    pub written: u64,
}

impl EventLog {
    pub fn new(
        path: &Path,
        topic: Option<(&str, &KafkaConnection)>,
    ) -> Result<Self, ConnectorError> {
        let topic = match topic {
            Some((t, conn)) => Some((t.to_string(), Deliveries::new(conn, format!("topic {t}"))?)),
            None => None,
        };
        Ok(EventLog {
            path: path.to_path_buf(),
            file: None,
            topic,
            written: 0,
        })
    }

    pub fn append<T: Serialize>(&mut self, key: &str, event: &T) -> Result<(), ConnectorError> {
        let line = serde_json::to_vec(event).map_err(|e| ConnectorError::Other(e.to_string()))?;
        let io = |source| ConnectorError::Io {
            path: self.path.display().to_string(),
            source,
        };
        if self.file.is_none() {
            if let Some(d) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d).map_err(io)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(io)?;
            self.file = Some(std::io::BufWriter::new(f));
        }
        let f = self.file.as_mut().expect("opened");
        f.write_all(&line).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        if let Some((t, d)) = &mut self.topic {
            d.send(
                rdkafka::producer::FutureRecord::to(t)
                    .key(key.as_bytes())
                    .payload(&line[..]),
            )?;
        }
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<Option<Durable>, ConnectorError> {
        if let Some(f) = &mut self.file {
            f.flush().map_err(|source| ConnectorError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        }
        Ok(self.topic.as_mut().and_then(|(_, d)| d.barrier()))
    }

    pub fn finish(&mut self) -> Result<(), ConnectorError> {
        self.flush()?;
        match &mut self.topic {
            Some((_, d)) => d.finish(),
            None => Ok(()),
        }
    }
}

/// Everything the windows and breakers write.
pub struct MonitorOutputs {
    pub metrics: parquet::PartitionedParquet,
    metrics_topic: Option<(String, Deliveries)>,
    pub alerts: EventLog,
    pub events: EventLog,
    webhook: Option<(HttpTarget, tokio::runtime::Handle)>,
    pub webhook_failures: u64,
    pub window_rows: u64,
    /// Alert rules already announced in the log: one warning per rule, the rest at debug
    /// (every alert is in the alert outputs and counted in the summary).
    announced: std::collections::HashSet<String>,
    /// Alerts already raised (see `alert_identity`), from the alert file of earlier runs and
    /// this one: an alert is raised once, not again on a re-run or a late update.
    raised: std::collections::HashSet<String>,
}

/// What makes an alert the same alert: its rule and the window row it is about.
fn alert_identity(alert: &str, integration: &str, window: &str, key: &str, start: i64) -> String {
    format!("{alert}\u{1f}{integration}\u{1f}{window}\u{1f}{key}\u{1f}{start}")
}

/// The identities of the alerts in an alert file (missing file: none). Lines that do not
/// read as alerts are skipped: the file is ours, and a torn last line must not stop a run.
fn raised_alerts(path: &Path) -> std::collections::HashSet<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Default::default();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Alert>(l).ok())
        .map(|a| {
            alert_identity(
                &a.alert,
                &a.integration,
                &a.window,
                &a.key,
                a.window_start_ms,
            )
        })
        .collect()
}

/// An alert as published: the event and the run that raised it.
#[derive(Serialize)]
struct RaisedAlert<'a> {
    #[serde(flatten)]
    alert: &'a Alert,
    run_id: &'a str,
}

impl MonitorOutputs {
    pub fn new(
        plan: &config::MonitoringPlan,
        kafka: Option<&KafkaConnection>,
        webhook: Option<HttpTarget>,
        handle: tokio::runtime::Handle,
    ) -> Result<Self, ConnectorError> {
        fn topic<'a>(
            t: &'a Option<String>,
            kafka: Option<&'a KafkaConnection>,
        ) -> Option<(&'a str, &'a KafkaConnection)> {
            t.as_deref().zip(kafka)
        }
        Ok(MonitorOutputs {
            metrics: parquet::PartitionedParquet::new(&plan.metrics, handle.clone())?,
            metrics_topic: match topic(&plan.metrics_topic, kafka) {
                Some((t, c)) => Some((t.to_string(), Deliveries::new(c, format!("topic {t}"))?)),
                None => None,
            },
            alerts: EventLog::new(&plan.alerts_path, topic(&plan.alerts_topic, kafka))?,
            events: EventLog::new(&plan.events_path, topic(&plan.events_topic, kafka))?,
            webhook: webhook.map(|w| (w, handle)),
            webhook_failures: 0,
            window_rows: 0,
            announced: std::collections::HashSet::new(),
            raised: raised_alerts(&plan.alerts_path),
        })
    }

    pub fn window_rows(&mut self, window: &str, rows: &RecordBatch) -> Result<(), ConnectorError> {
        self.window_rows += rows.num_rows() as u64;
        self.metrics.write(window, rows)?;
        if let Some((t, d)) = &mut self.metrics_topic {
            let keys = rows
                .column_by_name("key")
                .and_then(|c| arrow::array::AsArray::as_string_opt::<i32>(c.as_ref()).cloned());
            for (i, line) in crate::connectors::json_rows(rows)
                .map_err(|source| ConnectorError::Arrow {
                    context: "window rows as JSON".into(),
                    source,
                })?
                .into_iter()
                .enumerate()
            {
                let key = format!(
                    "{window}/{}",
                    keys.as_ref().map(|k| k.value(i)).unwrap_or_default()
                );
                d.send(
                    rdkafka::producer::FutureRecord::to(t)
                        .key(key.as_bytes())
                        .payload(&line[..]),
                )?;
            }
        }
        Ok(())
    }

    /// Publishes an alert; false (and nothing published) when it was raised before.
    pub fn alert(&mut self, a: &Alert) -> Result<bool, ConnectorError> {
        if !self.raised.insert(alert_identity(
            &a.alert,
            &a.integration,
            &a.window,
            &a.key,
            a.window_start_ms,
        )) {
            tracing::debug!(alert = %a.alert, window = %a.window, "alert already raised");
            return Ok(false);
        }
        let raised = RaisedAlert {
            alert: a,
            run_id: self.metrics.run_id(),
        };
        // Names only (no record content): safe to log. A rule that fires for every window of
        // a multi-day batch would bury the summary: it is announced once.
        if self.announced.insert(a.alert.clone()) {
            tracing::warn!(alert = %a.alert, severity = ?a.severity, integration = %a.integration, window = %a.window, "alert raised (later alerts of this rule: in the alert outputs and the summary)");
        } else {
            tracing::debug!(alert = %a.alert, severity = ?a.severity, integration = %a.integration, window = %a.window, key = %a.key, "alert raised");
        }
        let key = format!("{}/{}/{}", a.integration, a.window, a.key);
        self.alerts.append(&key, &raised)?;
        if let Some((target, handle)) = &self.webhook {
            let body =
                serde_json::to_vec(&raised).map_err(|e| ConnectorError::Other(e.to_string()))?;
            let idem = format!("{key}/{}/{}", a.alert, a.window_start_ms);
            let outcome = tokio::task::block_in_place(|| {
                handle.block_on(target.deliver(&Request {
                    path: None,
                    body: &body,
                    idempotency_key: &idem,
                    correlation_id: None,
                    attempt: 1,
                    delete: None,
                }))
            });
            if let Some(reason) = outcome.reason() {
                // The alert is in the file and topic; the webhook is best effort, counted.
                self.webhook_failures += 1;
                tracing::warn!(%reason, "alert webhook failed");
            }
        }
        Ok(true)
    }

    pub fn breaker_event(&mut self, e: &BreakerEvent) -> Result<(), ConnectorError> {
        self.events.append(&e.breaker, e)
    }

    /// Writes what is buffered; the future resolves once topics acknowledged it.
    pub fn flush(&mut self) -> Result<Option<Durable>, ConnectorError> {
        self.metrics.flush()?;
        let mut pending: Vec<Durable> = Vec::new();
        pending.extend(self.alerts.flush()?);
        pending.extend(self.events.flush()?);
        if let Some((_, d)) = &mut self.metrics_topic {
            pending.extend(d.barrier());
        }
        Ok((!pending.is_empty()).then(|| {
            Box::pin(async move {
                for p in pending {
                    p.await?;
                }
                Ok(())
            }) as Durable
        }))
    }

    pub fn finish(&mut self) -> Result<(), ConnectorError> {
        self.metrics.flush()?;
        self.alerts.finish()?;
        self.events.finish()?;
        if let Some((_, d)) = &mut self.metrics_topic {
            d.finish()?;
        }
        Ok(())
    }
}
