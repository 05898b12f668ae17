//! The HTTP sink (`type: http`): each row POSTed as a JSON object to an endpoint.
//!
//! Failures never stop the partition. A permanent failure (a 4xx) sends the record to the
//! dead-letter output with the status and the start of the response. A transient one (503,
//! timeout, ...) is retried per the sink's `retry:` policy:
//! - with `retry.topic` (Kafka), the record is *parked* on the delayed retry topic
//!   `<topic>.<attempt>` and later records go on; the retry worker (`kafka::retry`) delivers it
//!   when due. The source's offset is committed once the park is acknowledged.
//! - without it (file mode), the sink waits out the backoff and retries in place.
//!
//! After the last attempt the record goes to the dead-letter output.

use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;

use std::sync::Arc;

use super::config::HttpSinkPlan;
use super::{HttpTarget, Outcome, Request};
use crate::connectors::{
    BatchSink, BuildCx, ConnectorError, Durable, Parked, Parking, SinkOutcome,
};
use crate::metrics::outcome::{OutcomeRow, OutcomeTap};
use crate::record::record_identity;
use crate::record::{DeadLetters, RAW, RECORD_INDEX, is_provenance};
use crate::resilience::breaker::SharedBreaker;
use crate::resilience::retry::{RetryPolicy, jitter_random};

pub struct HttpSinkParts {
    pub name: String,
    pub target: HttpTarget,
    pub policy: RetryPolicy,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Send the provenance columns too (`_raw` never).
    pub provenance: bool,
    /// Gates the calls; shared with the retry worker.
    pub breaker: Option<SharedBreaker>,
    /// Where each call's outcome is reported (windows over `outcomes`).
    pub outcomes: OutcomeTap,
    /// A FHIR server (`type: fhir`): each row's `resource` is PUT to its `request_url`
    /// (a Bundle, with no URL, is POSTed to the base).
    pub fhir: bool,
}

/// The running parts of a planned HTTP (or plain FHIR) sink: its client (secrets read now)
/// and breaker (registered with the run).
pub fn parts(
    h: &HttpSinkPlan,
    name: &str,
    cx: &BuildCx<'_>,
) -> Result<HttpSinkParts, ConnectorError> {
    let in_sink = |e: String| ConnectorError::Other(format!("sink {name}: {e}"));
    let url = h.resolved_url().map_err(in_sink)?;
    let headers = h
        .headers
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.read()?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(in_sink)?;
    let key = h
        .secret
        .as_ref()
        .map(|r| r.read().map(String::into_bytes))
        .transpose()
        .map_err(in_sink)?;
    let mut target = HttpTarget::new(&url, &h.method, headers, key, h.timeout)
        .and_then(|t| t.with_auth(h.auth.resolve()?, &h.tls.resolve()?))
        .map_err(in_sink)?;
    if h.fhir {
        target = target.fhir();
    }
    Ok(HttpSinkParts {
        name: name.to_string(),
        target,
        policy: h.retry.clone(),
        concurrency: h.concurrency,
        provenance: h.provenance,
        breaker: h.breaker.clone().map(|c| cx.breaker(name, c)),
        outcomes: cx.outcomes.clone(),
        fhir: h.fhir,
    })
}

pub struct HttpSink {
    config: HttpSinkParts,
    handle: tokio::runtime::Handle,
    retry: Option<Box<dyn Parking>>,
    outcome: SinkOutcome,
    delivered: u64,
}

impl HttpSink {
    /// `retry`: the Kafka retry topics to park transient failures on (None: retry in place).
    pub fn new(
        config: HttpSinkParts,
        handle: tokio::runtime::Handle,
        retry: Option<Box<dyn Parking>>,
    ) -> Self {
        HttpSink {
            config,
            handle,
            retry,
            outcome: SinkOutcome::default(),
            delivered: 0,
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Other(format!("sink {}: {e}", self.config.name))
    }

    /// What `write` needs of each row besides the batch: bodies, FHIR paths and deletions,
    /// identities, and the provenance columns (for parked records).
    fn rows<'b>(&self, batch: &'b RecordBatch) -> Result<Rows<'b>, ConnectorError> {
        let bodies = self.bodies(batch)?;
        let paths = match self.config.fhir {
            true => Some(fhir_column(batch, "request_url").map_err(|e| self.err(e))?),
            false => None,
        };
        // FHIR: what each message deletes (optional: rows of an older stage delete nothing).
        let deletes = batch
            .column_by_name("delete_elements")
            .and_then(|c| c.as_string_opt::<i32>())
            .filter(|_| self.config.fhir);
        let (sources, offsets, controls) = crate::record::provenance_columns(batch);
        // (idempotency key = the record's identity, correlation id) per row.
        let ids: Vec<(String, Option<String>)> = (0..batch.num_rows())
            .map(|r| {
                let control = controls.filter(|c| c.is_valid(r)).map(|c| c.value(r));
                let key = record_identity(
                    sources.filter(|s| s.is_valid(r)).map(|s| s.value(r)),
                    offsets.filter(|o| o.is_valid(r)).map(|o| o.value(r)),
                    control,
                );
                (key, control.map(str::to_string))
            })
            .collect();
        Ok(Rows {
            bodies,
            paths,
            deletes,
            ids,
            indexes: batch
                .column_by_name(RECORD_INDEX)
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .cloned(),
            raw: batch
                .column_by_name(RAW)
                .and_then(|c| c.as_binary_opt::<i32>())
                .cloned(),
            sources,
            offsets,
        })
    }

    /// The breaker decides which calls are made now: refused ones wait (parked, or in place)
    /// without using up an attempt; in place, a row that met the outage `max_outage` ago
    /// gives up. Returns (refused: row, attempt, wait), the half-open probes, and gave-ups.
    #[allow(clippy::type_complexity)]
    fn gate(
        &self,
        todo: &mut Vec<(usize, u32)>,
        outage_since: &mut std::collections::HashMap<usize, std::time::Instant>,
        in_place: bool,
        max_outage: Duration,
    ) -> (
        Vec<(usize, u32, Duration)>,
        std::collections::HashSet<usize>,
        Vec<usize>,
    ) {
        let mut refused = Vec::new();
        let mut probes = std::collections::HashSet::new();
        let mut gave_up = Vec::new();
        let Some(b) = &self.config.breaker else {
            return (refused, probes, gave_up);
        };
        todo.retain(|&(row, attempt)| match b.try_acquire_probe() {
            Ok(probe) => {
                if probe {
                    probes.insert(row);
                }
                true
            }
            Err(r) => {
                let since = *outage_since
                    .entry(row)
                    .or_insert_with(std::time::Instant::now);
                if in_place && since.elapsed() >= max_outage {
                    gave_up.push(row);
                    return false;
                }
                let wait = r.retry_in.unwrap_or(Duration::from_millis(200));
                refused.push((
                    row,
                    attempt,
                    wait.clamp(Duration::from_millis(1), Duration::from_secs(5)),
                ));
                false
            }
        });
        (refused, probes, gave_up)
    }

    /// Rows whose outage outlasted `max_outage`: dead letters, counted as unavailable.
    fn give_up(&mut self, rows: Vec<usize>, dead: &mut Vec<(usize, String)>, max_outage: Duration) {
        for row in rows {
            self.outcome.unavailable += 1;
            dead.push((
                row,
                format!(
                    "circuit breaker of sink {} stayed open for {max_outage:?} (retry.max_outage)",
                    self.config.name
                ),
            ));
        }
    }

    /// The rows that could not be delivered, with their reasons, as dead letters.
    fn dead_letters(
        &self,
        batch: &RecordBatch,
        mut dead: Vec<(usize, String)>,
    ) -> Result<Option<DeadLetters>, ConnectorError> {
        if dead.is_empty() {
            return Ok(None);
        }
        dead.sort_by_key(|d| d.0);
        let rows = arrow::array::UInt32Array::from_iter_values(dead.iter().map(|d| d.0 as u32));
        let rows = arrow::compute::take_record_batch(batch, &rows).map_err(|e| self.err(e))?;
        let n = dead.len();
        Ok(Some(DeadLetters {
            rows,
            rule: vec!["delivery".to_string(); n],
            reason: dead.into_iter().map(|d| d.1).collect(),
        }))
    }

    /// One JSON object per row (FHIR: the row's `resource`, as the `fhir` stage wrote it).
    fn bodies(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>, ConnectorError> {
        if self.config.fhir {
            let resources = fhir_column(batch, "resource").map_err(|e| self.err(e))?;
            return Ok((0..batch.num_rows())
                .map(|r| resources.value(r).as_bytes().to_vec())
                .collect());
        }
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| {
                let n = batch.schema_ref().field(i).name().clone();
                n != RAW && (self.config.provenance || !is_provenance(&n))
            })
            .collect();
        let rows = batch.project(&keep).map_err(|e| self.err(e))?;
        crate::connectors::json_rows(&rows).map_err(|e| self.err(e))
    }
}

/// Per-row parts of a batch, for `write`.
struct Rows<'b> {
    bodies: Vec<Vec<u8>>,
    paths: Option<&'b arrow::array::StringArray>,
    deletes: Option<&'b arrow::array::StringArray>,
    /// (idempotency key = the record's identity, correlation id).
    ids: Vec<(String, Option<String>)>,
    indexes: Option<arrow::array::Int64Array>,
    raw: Option<arrow::array::BinaryArray>,
    sources: Option<&'b arrow::array::StringArray>,
    offsets: Option<&'b arrow::array::Int64Array>,
}

/// A string column the `fhir` stage writes.
fn fhir_column<'b>(
    batch: &'b RecordBatch,
    name: &str,
) -> Result<&'b arrow::array::StringArray, String> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| format!("a fhir sink reads the `{name}` column of a `fhir` stage"))
}

/// Delivers `requests` with at most `concurrency` in flight; outcomes (with how long each
/// call took) in request order.
pub async fn deliver_all(
    target: &HttpTarget,
    requests: &[Request<'_>],
    concurrency: usize,
) -> Vec<(Outcome, Duration)> {
    futures::stream::iter(requests.iter().map(|r| async move {
        let started = std::time::Instant::now();
        let o = target.deliver(r).await;
        (o, started.elapsed())
    }))
    .buffered(concurrency.max(1))
    .collect()
    .await
}

/// Reports one call on the outcome stream.
pub fn report_call(
    tap: &OutcomeTap,
    sink: &Arc<str>,
    record: &str,
    attempt: u32,
    outcome: &Outcome,
    took: Duration,
) {
    if tap.is_active() {
        tap.emit(OutcomeRow {
            sink: sink.clone(),
            record: record.to_string(),
            attempt,
            status: outcome.call_status(),
            http_status: outcome.status(),
            latency_ms: Some(took.as_secs_f64() * 1e3),
            at_ms: crate::metrics::outcome::now_ms(),
        });
    }
}

impl BatchSink for HttpSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let Rows {
            bodies,
            paths,
            deletes,
            ids,
            indexes,
            raw,
            sources,
            offsets,
        } = self.rows(batch)?;
        let delete = |row: usize| deletes.filter(|d| d.is_valid(row)).map(|d| d.value(row));
        let max = self.config.policy.max_attempts.max(1);
        // (row, attempt) still to try.
        let mut todo: Vec<(usize, u32)> = (0..batch.num_rows()).map(|r| (r, 1)).collect();
        let mut dead: Vec<(usize, String)> = Vec::new();
        let first_failed = chrono::Utc::now();
        // In place: when each row first met an outage (breaker open, failed probe); it waits
        // up to `max_outage`, then is dead-lettered as unavailable.
        let mut outage_since: std::collections::HashMap<usize, std::time::Instant> =
            std::collections::HashMap::new();
        let max_outage = self.config.policy.max_outage;
        let in_place = self.retry.is_none();
        while !todo.is_empty() {
            // The breaker decides which calls are made now; refused ones wait (parked, or
            // in place) without using up an attempt.
            let (refused, probes, gave_up) =
                self.gate(&mut todo, &mut outage_since, in_place, max_outage);
            self.give_up(gave_up, &mut dead, max_outage);
            let requests: Vec<Request<'_>> = todo
                .iter()
                .map(|&(row, attempt)| Request {
                    body: &bodies[row],
                    path: paths.map(|p| p.value(row)),
                    idempotency_key: &ids[row].0,
                    correlation_id: ids[row].1.as_deref(),
                    attempt,
                    delete: delete(row),
                })
                .collect();
            let outcomes = self.handle.block_on(deliver_all(
                &self.config.target,
                &requests,
                self.config.concurrency,
            ));
            // Records that wait for a later attempt: (row, retry topic = the attempt that
            // failed, next attempt number, delay, why). A refusal uses up no attempt.
            let mut waits: Vec<(usize, u32, u32, Duration, String)> = refused
                .into_iter()
                .map(|(row, attempt, delay)| {
                    let why = format!("circuit breaker of sink {} is open", self.config.name);
                    (row, attempt.saturating_sub(1).max(1), attempt, delay, why)
                })
                .collect();
            let sink_name: Arc<str> = Arc::from(self.config.name.as_str());
            for (&(row, attempt), (outcome, took)) in todo.iter().zip(outcomes) {
                report_call(
                    &self.config.outcomes,
                    &sink_name,
                    &ids[row].0,
                    attempt,
                    &outcome,
                    took,
                );
                if let Some(b) = &self.config.breaker {
                    // A 4xx is the record's fault, not the system's: it counts as an answer.
                    b.record(matches!(outcome, Outcome::Transient { .. }), took);
                }
                let outage_left = outage_since
                    .get(&row)
                    .is_none_or(|t| !in_place || t.elapsed() < max_outage);
                match outcome {
                    Outcome::Delivered { .. } => self.delivered += 1,
                    Outcome::Permanent { reason, .. } => dead.push((row, reason)),
                    Outcome::Transient { reason, .. } if probes.contains(&row) && outage_left => {
                        // A failed half-open probe: the system is still down. It costs the
                        // record no attempt; the reopened breaker makes it wait.
                        outage_since
                            .entry(row)
                            .or_insert_with(std::time::Instant::now);
                        waits.push((
                            row,
                            attempt.saturating_sub(1).max(1),
                            attempt,
                            Duration::from_millis(50),
                            reason,
                        ));
                    }
                    Outcome::Transient { reason, .. } if attempt >= max => {
                        self.outcome.unavailable += 1;
                        dead.push((row, format!("{reason} (attempt {attempt} of {max})")));
                    }
                    Outcome::Transient {
                        reason,
                        retry_after,
                        ..
                    } => {
                        let delay =
                            self.config
                                .policy
                                .next_delay(attempt, jitter_random(), retry_after);
                        waits.push((row, attempt, attempt + 1, delay, reason));
                    }
                }
            }
            let mut again = Vec::new();
            let mut wait = Duration::ZERO;
            for (row, failed_attempt, next_attempt, delay, error) in waits {
                let Some(topics) = &mut self.retry else {
                    wait = wait.max(delay);
                    again.push((row, next_attempt));
                    continue;
                };
                topics.park(Parked {
                    failed_attempt,
                    next_attempt,
                    due: chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                    first_failed_at: first_failed,
                    error,
                    body: &bodies[row],
                    path: paths.map(|p| p.value(row)),
                    delete: delete(row),
                    key: &ids[row].0,
                    correlation_id: ids[row].1.as_deref(),
                    original: raw
                        .as_ref()
                        .filter(|r| r.is_valid(row))
                        .map(|r| r.value(row)),
                    source: sources.filter(|s| s.is_valid(row)).map(|s| s.value(row)),
                    offset: offsets.filter(|o| o.is_valid(row)).map(|o| o.value(row)),
                })?;
                if let Some(ix) = &indexes {
                    self.outcome.parked.push(ix.value(row));
                }
            }
            if !again.is_empty() {
                tracing::debug!(sink = %self.config.name, records = again.len(), ?wait, "retrying in place");
                std::thread::sleep(wait);
            }
            todo = again;
        }
        if let Some(failed) = self.dead_letters(batch, dead)? {
            self.outcome.dead.push(failed);
        }
        Ok(())
    }

    fn take_outcome(&mut self) -> SinkOutcome {
        std::mem::take(&mut self.outcome)
    }

    fn barrier(&mut self) -> Result<Option<Durable>, ConnectorError> {
        Ok(self.retry.as_mut().and_then(|p| p.barrier()))
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        tracing::info!(sink = %self.config.name, delivered = self.delivered, "http sink done");
        match &mut self.retry {
            Some(t) => t.finish(),
            None => Ok(()),
        }
    }
}
