//! The MLLP sink (`type: mllp`): each row's HL7 message is sent to the receiver and its ACK
//! awaited before the next one goes on that connection. `connections: N` opens a pool: rows
//! are spread by `key` (a patient's messages stay in order on one connection) or, without
//! one, in contiguous runs. Connections are kept open across batches and reopened after a
//! failure.
//!
//! AA/CA: delivered. AE/CE: the receiver refused this message: a dead letter with the ACK's
//! text (or retried, with `on_error: retry`). AR/CR, no ACK in time, a refused or dropped
//! connection, or an ACK for another message: transient, retried per `retry:` in place, then
//! a dead letter counted as unavailable. Every exchange is reported on the outcome stream
//! (latency = the ACK round trip) and to the breaker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::MllpSinkPlan;
use crate::connectors::{BatchSink, BuildCx, ConnectorError, SinkOutcome};
use crate::formats::hl7::Message;
use crate::formats::mllp::{Deframer, Event, frame};
use crate::metrics::outcome::{CallStatus, OutcomeRow, OutcomeTap};
use crate::record::{DeadLetters, provenance_columns, record_identity};
use crate::resilience::breaker::SharedBreaker;
use crate::resilience::retry::jitter_random;

/// What one exchange came to.
enum Answer {
    /// MSA-1 and a reason (MSA-3 and the ERR segments' texts).
    Ack(String, String),
    /// No usable ACK: why.
    Failed(String),
}

/// A connection, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One connection of the pool, kept open across batches (reopened after a failure).
#[derive(Default)]
struct Lane {
    conn: Option<(Box<dyn Io>, Deframer)>,
}

/// What every lane shares.
struct Shared {
    name: Arc<str>,
    plan: MllpSinkPlan,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    breaker: Option<SharedBreaker>,
    outcomes: OutcomeTap,
}

pub struct MllpSink {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    lanes: Vec<Lane>,
    outcome: SinkOutcome,
}

/// A message that could not be delivered: why, and whether the receiver was unreachable
/// (rather than refusing it).
struct Undelivered {
    reason: String,
    unavailable: bool,
}

impl MllpSink {
    pub fn new(plan: MllpSinkPlan, name: &str, cx: &BuildCx<'_>) -> Result<Self, ConnectorError> {
        let tls = match &plan.tls {
            Some(t) => {
                let identity = t.cert.as_deref().zip(t.key.as_deref());
                let config = crate::net::tls::client_config(t.ca.as_deref(), identity)
                    .and_then(|c| {
                        let n = crate::net::tls::server_name(&plan.to, t.server_name.as_deref())?;
                        Ok((tokio_rustls::TlsConnector::from(c), n))
                    })
                    .map_err(|e| ConnectorError::Other(format!("sink {name}: tls: {e}")))?;
                Some(config)
            }
            None => None,
        };
        let lanes = (0..plan.connections).map(|_| Lane::default()).collect();
        Ok(MllpSink {
            shared: Arc::new(Shared {
                tls,
                name: name.into(),
                breaker: plan.breaker.clone().map(|c| cx.breaker(name, c)),
                outcomes: cx.outcomes.clone(),
                plan,
            }),
            handle: cx.rt.clone(),
            lanes,
            outcome: SinkOutcome::default(),
        })
    }
}

impl Shared {
    /// Opens a connection (and its TLS session).
    async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let to = &self.plan.to;
        let tcp = TcpStream::connect(to)
            .await
            .map_err(|e| format!("connect to {to}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {to}: {e}"))?,
            ),
        })
    }

    /// Sends one message on `lane` and reads its ACK (which must answer this message's
    /// MSH-10).
    async fn exchange(&self, lane: &mut Lane, message: &[u8], control: Option<&str>) -> Answer {
        let wait = self.plan.timeout;
        if lane.conn.is_none() {
            match tokio::time::timeout(wait, self.connect()).await {
                Ok(Ok(s)) => lane.conn = Some((s, Deframer::new(16 << 20))),
                Ok(Err(e)) => return Answer::Failed(e),
                Err(_) => return Answer::Failed(format!("connect to {}: timed out", self.plan.to)),
            }
        }
        let (conn, deframer) = lane.conn.as_mut().expect("connected above");
        let exchange = async {
            conn.write_all(&frame(message)).await?;
            let mut buf = [0u8; 8192];
            let mut events = Vec::new();
            loop {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed before the ACK",
                    ));
                }
                deframer.push(&buf[..n], &mut events);
                if let Some(ack) = events.drain(..).find_map(|e| match e {
                    Event::Frame(a) => Some(a),
                    _ => None,
                }) {
                    return Ok(ack);
                }
            }
        };
        let ack = match tokio::time::timeout(wait, exchange).await {
            Ok(Ok(ack)) => ack,
            // A late ACK on this connection would answer the wrong message: start afresh.
            Ok(Err(e)) => {
                lane.conn = None;
                return Answer::Failed(e.to_string());
            }
            Err(_) => {
                lane.conn = None;
                return Answer::Failed(format!("no ACK within {wait:?}"));
            }
        };
        let Ok(m) = Message::parse(&ack) else {
            lane.conn = None;
            return Answer::Failed("the answer is not an HL7 ACK".into());
        };
        let get = |p: &str| {
            m.query(p)
                .ok()
                .flatten()
                .map(|v| v.into_owned())
                .unwrap_or_default()
        };
        let (code, answers) = (get("MSA-1"), get("MSA-2"));
        if let Some(c) = control
            && answers != c
        {
            lane.conn = None;
            return Answer::Failed(format!("the ACK answers {answers:?}, not {c:?}"));
        }
        let mut why: Vec<String> = Vec::new();
        let text = get("MSA-3");
        if !text.is_empty() {
            why.push(text);
        }
        for err in m.segments_named(*b"ERR") {
            // ERR-8 (user message) from v2.5, else ERR-1.
            let text = [8, 1]
                .iter()
                .map(|&f| String::from_utf8_lossy(err.field(f).raw()).into_owned())
                .find(|t| !t.is_empty());
            why.extend(text);
        }
        Answer::Ack(code, why.join("; "))
    }

    fn report(&self, record: &str, attempt: u32, status: CallStatus, took: Duration) {
        if self.outcomes.is_active() {
            self.outcomes.emit(OutcomeRow {
                sink: self.name.clone(),
                record: record.to_string(),
                attempt,
                status,
                http_status: None,
                latency_ms: Some(took.as_secs_f64() * 1e3),
                at_ms: crate::metrics::outcome::now_ms(),
            });
        }
    }

    /// Delivers one message on `lane`, retrying per the policy.
    async fn deliver(
        &self,
        lane: &mut Lane,
        message: &[u8],
        record: &str,
        control: Option<&str>,
    ) -> Result<(), Undelivered> {
        let mut failed = 0u32;
        let mut outage_since: Option<Instant> = None;
        loop {
            if let Some(b) = &self.breaker
                && let Err(rejected) = b.try_acquire_probe()
            {
                let since = *outage_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.plan.retry.max_outage {
                    return Err(Undelivered {
                        reason: format!(
                            "circuit breaker of sink {} stayed open for {:?} (retry.max_outage)",
                            self.name, self.plan.retry.max_outage
                        ),
                        unavailable: true,
                    });
                }
                let wait = rejected.retry_in.unwrap_or(Duration::from_millis(200));
                tokio::time::sleep(wait.clamp(Duration::from_millis(1), Duration::from_secs(5)))
                    .await;
                continue;
            }
            let started = Instant::now();
            let answer = self.exchange(lane, message, control).await;
            let took = started.elapsed();
            let (status, reason) = match answer {
                Answer::Ack(code, _) if matches!(code.as_str(), "AA" | "CA") => {
                    (CallStatus::Delivered, None)
                }
                Answer::Ack(code, why) if matches!(code.as_str(), "AE" | "CE") => {
                    let reason = format!("{code} from {}: {why}", self.plan.to);
                    if self.plan.retry_errors {
                        (CallStatus::Transient, Some(reason))
                    } else {
                        (CallStatus::Permanent, Some(reason))
                    }
                }
                Answer::Ack(code, why) => (
                    CallStatus::Transient,
                    Some(format!("{code} from {}: {why}", self.plan.to)),
                ),
                Answer::Failed(why) => (CallStatus::Transient, Some(why)),
            };
            failed += u32::from(status != CallStatus::Delivered);
            self.report(record, failed.max(1), status, took);
            if let Some(b) = &self.breaker {
                // A refused message is an answer: the receiver is up.
                b.record(status == CallStatus::Transient, took);
            }
            let Some(reason) = reason else {
                return Ok(());
            };
            if status == CallStatus::Permanent {
                return Err(Undelivered {
                    reason,
                    unavailable: false,
                });
            }
            if !self.plan.retry.retries_after(failed) {
                return Err(Undelivered {
                    reason: format!("{reason} (after {failed} attempts)"),
                    unavailable: true,
                });
            }
            tokio::time::sleep(self.plan.retry.next_delay(failed, jitter_random(), None)).await;
        }
    }
}

/// A row to send: its index in the batch, message, record identity and control id.
struct Outgoing {
    row: usize,
    message: Vec<u8>,
    record: String,
    control: Option<String>,
}

/// The lane a row goes to: by its key's hash (rows with one key stay in order on one
/// connection), else by row number in contiguous runs.
fn lane_of(key: Option<&[u8]>, row: usize, rows: usize, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    match key {
        Some(k) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut h);
            (h.finish() % lanes as u64) as usize
        }
        None => row * lanes / rows.max(1),
    }
}

impl BatchSink for MllpSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let name = self.shared.name.clone();
        let err = move |e: String| ConnectorError::Other(format!("sink {name}: {e}"));
        let column = batch
            .column_by_name(&self.shared.plan.message)
            .ok_or_else(|| err(format!("no column {}", self.shared.plan.message)))?
            .clone();
        let message = |row: usize| -> Option<&[u8]> {
            if column.is_null(row) {
                return None;
            }
            match column.data_type() {
                DataType::Binary => Some(column.as_binary::<i32>().value(row)),
                DataType::LargeBinary => Some(column.as_binary::<i64>().value(row)),
                DataType::Utf8 => Some(column.as_string::<i32>().value(row).as_bytes()),
                DataType::LargeUtf8 => Some(column.as_string::<i64>().value(row).as_bytes()),
                _ => None,
            }
        };
        let (sources, offsets, controls) = provenance_columns(batch);
        let key = match &self.shared.plan.key {
            Some(k) => Some(
                arrow::compute::cast(
                    batch
                        .column_by_name(k)
                        .ok_or_else(|| err(format!("no key column {k}")))?,
                    &DataType::Utf8,
                )
                .map_err(|e| err(e.to_string()))?,
            ),
            None => None,
        };
        let key = key.as_ref().map(|k| k.as_string::<i32>());
        let lanes = self.lanes.len();
        let mut queues: Vec<Vec<Outgoing>> = (0..lanes).map(|_| Vec::new()).collect();
        let mut dead: Vec<(usize, String)> = Vec::new();
        for row in 0..batch.num_rows() {
            let Some(m) = message(row) else {
                dead.push((row, format!("column {} is empty", self.shared.plan.message)));
                continue;
            };
            let m = m.to_vec();
            let control = controls
                .filter(|c| c.is_valid(row))
                .map(|c| c.value(row).to_string())
                .or_else(|| crate::connectors::dlq::hl7_control_id(&m));
            let record = record_identity(
                sources.filter(|s| s.is_valid(row)).map(|s| s.value(row)),
                offsets.filter(|o| o.is_valid(row)).map(|o| o.value(row)),
                control.as_deref(),
            );
            let k = key
                .filter(|k| k.is_valid(row))
                .map(|k| k.value(row).as_bytes());
            queues[lane_of(k, row, batch.num_rows(), lanes)].push(Outgoing {
                row,
                message: m,
                record,
                control,
            });
        }
        // The lanes send at once, each in order, each waiting for its ACKs.
        let shared = self.shared.clone();
        let results = self.handle.block_on(futures::future::join_all(
            self.lanes.iter_mut().zip(queues).map(|(lane, queue)| {
                let shared = shared.clone();
                async move {
                    let mut failed = Vec::new();
                    for o in queue {
                        if let Err(u) = shared
                            .deliver(lane, &o.message, &o.record, o.control.as_deref())
                            .await
                        {
                            failed.push((o.row, u));
                        }
                    }
                    failed
                }
            }),
        ));
        for (row, u) in results.into_iter().flatten() {
            self.outcome.unavailable += u64::from(u.unavailable);
            dead.push((row, u.reason));
        }
        dead.sort_by_key(|d| d.0);
        if !dead.is_empty() {
            let rows = arrow::array::UInt32Array::from_iter_values(dead.iter().map(|d| d.0 as u32));
            let rows =
                arrow::compute::take_record_batch(batch, &rows).map_err(|e| err(e.to_string()))?;
            let n = dead.len();
            self.outcome.dead.push(DeadLetters {
                rows,
                rule: vec!["delivery".to_string(); n],
                reason: dead.into_iter().map(|d| d.1).collect(),
            });
        }
        Ok(())
    }

    fn take_outcome(&mut self) -> SinkOutcome {
        std::mem::take(&mut self.outcome)
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        self.lanes.clear();
        Ok(())
    }
}
