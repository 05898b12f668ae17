//! The outcome stream: one row per call a sink made (an HTTP request, a Kafka or file write),
//! which windows aggregate into error rates and latencies per integration and sink.
//!
//! Sinks and retry workers emit into an `OutcomeTap` as calls complete — not at the end of a
//! batch — so a window sees a failing endpoint while the sink is still retrying, and can trip
//! its breaker. The tap is unbounded on purpose: a sink must never block on metrics, and the
//! window task drains it far faster than calls complete.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    UInt16Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    Delivered,
    /// Failed, will be retried (5xx, 429, timeout, connection error).
    Transient,
    /// Rejected by the receiver (4xx): dead-lettered, not retried.
    Permanent,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Delivered => "delivered",
            CallStatus::Transient => "transient",
            CallStatus::Permanent => "permanent",
        }
    }
}

/// One call's outcome. Identifiers and numbers only: never a record's content.
#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub sink: Arc<str>,
    /// The record identity (`source/offset#control id`), as in the DLQ and idempotency key.
    pub record: String,
    pub attempt: u32,
    pub status: CallStatus,
    pub http_status: Option<u16>,
    pub latency_ms: Option<f64>,
    pub at_ms: i64,
}

/// The columns a window over `outcomes` sees.
pub fn outcome_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("integration", DataType::Utf8, false),
        Field::new("sink", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("attempt", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("http_status", DataType::UInt16, true),
        Field::new("latency_ms", DataType::Float64, true),
        Field::new("at", ts, false),
    ]))
}

/// Rows as a batch of `outcome_schema()`.
pub fn outcome_batch(integration: &str, rows: &[OutcomeRow]) -> RecordBatch {
    let n = rows.len();
    let mut integ = StringBuilder::with_capacity(n, n * integration.len());
    let mut sink = StringBuilder::with_capacity(n, n * 8);
    let mut record = StringBuilder::with_capacity(n, n * 32);
    let mut attempt = Int64Builder::with_capacity(n);
    let mut status = StringBuilder::with_capacity(n, n * 9);
    let mut http = UInt16Builder::with_capacity(n);
    let mut latency = Float64Builder::with_capacity(n);
    let mut at = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in rows {
        integ.append_value(integration);
        sink.append_value(&r.sink);
        record.append_value(&r.record);
        attempt.append_value(r.attempt as i64);
        status.append_value(r.status.as_str());
        http.append_option(r.http_status);
        latency.append_option(r.latency_ms);
        at.append_value(r.at_ms);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(integ.finish()),
        Arc::new(sink.finish()),
        Arc::new(record.finish()),
        Arc::new(attempt.finish()),
        Arc::new(status.finish()),
        Arc::new(http.finish()),
        Arc::new(latency.finish()),
        Arc::new(at.finish()),
    ];
    RecordBatch::try_new(outcome_schema(), columns).expect("outcome columns match the schema")
}

/// Where sinks report calls. Cloning is cheap; a tap nobody reads is a no-op.
#[derive(Clone, Default)]
pub struct OutcomeTap {
    tx: Option<mpsc::UnboundedSender<OutcomeRow>>,
}

impl OutcomeTap {
    pub fn channel() -> (OutcomeTap, mpsc::UnboundedReceiver<OutcomeRow>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (OutcomeTap { tx: Some(tx) }, rx)
    }

    pub fn is_active(&self) -> bool {
        self.tx.is_some()
    }

    pub fn emit(&self, row: OutcomeRow) {
        if let Some(tx) = &self.tx {
            // A closed receiver means the run is ending: nothing is waiting for metrics.
            let _ = tx.send(row);
        }
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
