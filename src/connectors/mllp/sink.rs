//! The MLLP sink (`type: mllp`): each row's HL7 message is sent to the receiver and its ACK
//! awaited before the next one goes, so the receiver sees the rows in order on one
//! connection (kept open across batches, reopened after a failure).
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

pub struct MllpSink {
    name: Arc<str>,
    plan: MllpSinkPlan,
    handle: tokio::runtime::Handle,
    conn: Option<(Box<dyn Io>, Deframer)>,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    breaker: Option<SharedBreaker>,
    outcomes: OutcomeTap,
    outcome: SinkOutcome,
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
        Ok(MllpSink {
            tls,
            name: name.into(),
            breaker: plan.breaker.clone().map(|c| cx.breaker(name, c)),
            outcomes: cx.outcomes.clone(),
            handle: cx.rt.clone(),
            plan,
            conn: None,
            outcome: SinkOutcome::default(),
        })
    }

    /// Opens the connection (and its TLS session).
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

    /// Sends one message and reads its ACK (which must answer this message's MSH-10).
    async fn exchange(&mut self, message: &[u8], control: Option<&str>) -> Answer {
        let wait = self.plan.timeout;
        if self.conn.is_none() {
            match tokio::time::timeout(wait, self.connect()).await {
                Ok(Ok(s)) => self.conn = Some((s, Deframer::new(16 << 20))),
                Ok(Err(e)) => return Answer::Failed(e),
                Err(_) => return Answer::Failed(format!("connect to {}: timed out", self.plan.to)),
            }
        }
        let (conn, deframer) = self.conn.as_mut().expect("connected above");
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
                self.conn = None;
                return Answer::Failed(e.to_string());
            }
            Err(_) => {
                self.conn = None;
                return Answer::Failed(format!("no ACK within {wait:?}"));
            }
        };
        let Ok(m) = Message::parse(&ack) else {
            self.conn = None;
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
            self.conn = None;
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

    /// Delivers one message (retrying per the policy); the reason when it could not.
    fn deliver(&mut self, message: &[u8], record: &str, control: Option<&str>) -> Option<String> {
        let mut failed = 0u32;
        let mut outage_since: Option<Instant> = None;
        loop {
            if let Some(b) = &self.breaker
                && let Err(rejected) = b.try_acquire_probe()
            {
                let since = *outage_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.plan.retry.max_outage {
                    self.outcome.unavailable += 1;
                    return Some(format!(
                        "circuit breaker of sink {} stayed open for {:?} (retry.max_outage)",
                        self.name, self.plan.retry.max_outage
                    ));
                }
                let wait = rejected.retry_in.unwrap_or(Duration::from_millis(200));
                std::thread::sleep(wait.clamp(Duration::from_millis(1), Duration::from_secs(5)));
                continue;
            }
            let started = Instant::now();
            let handle = self.handle.clone();
            let answer = handle.block_on(self.exchange(message, control));
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
            let reason = reason?;
            if status == CallStatus::Permanent {
                return Some(reason);
            }
            if !self.plan.retry.retries_after(failed) {
                self.outcome.unavailable += 1;
                return Some(format!("{reason} (after {failed} attempts)"));
            }
            std::thread::sleep(self.plan.retry.next_delay(failed, jitter_random(), None));
        }
    }
}

impl BatchSink for MllpSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let name = self.name.clone();
        let err = move |e: String| ConnectorError::Other(format!("sink {name}: {e}"));
        let column = batch
            .column_by_name(&self.plan.message)
            .ok_or_else(|| err(format!("no column {}", self.plan.message)))?
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
        let mut dead: Vec<(usize, String)> = Vec::new();
        for row in 0..batch.num_rows() {
            let Some(m) = message(row) else {
                dead.push((row, format!("column {} is empty", self.plan.message)));
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
            if let Some(reason) = self.deliver(&m, &record, control.as_deref()) {
                dead.push((row, reason));
            }
        }
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
        self.conn = None;
        Ok(())
    }
}
