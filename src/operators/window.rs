//! `windows:` — windowed aggregation over any stream (a stage's output or the sinks'
//! outcomes), keyed and timed by SQL expressions.
//!
//! Per batch: the key, event-time, failure, latency and data-quality expressions are
//! evaluated once (vectorized), then each row is added to `metrics::window::Windows`. Rows
//! of windows the watermark passed come back as a `RecordBatch` of `window_row_schema`, over
//! which the alert rules and the breaker's trip predicate (SQL, planned once) are evaluated.
//! The breaker predicate also sees the *running* rows of windows still open, so a failing
//! endpoint trips it within the window, not after it.
//!
//! A row whose event time is NULL or unparseable cannot be placed in a window: it is counted
//! (`invalid_time`) and reported, never silently skipped. The record itself still flows on to
//! the sinks: windows observe a stream, they do not consume it.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::OperatorError;
use crate::metrics::window::{Observation, WindowConfig, WindowRow, Windows};
use crate::sql::PlannedExpr;

/// Separates key parts in `WindowRow::key` (a control character: never in real key values).
const KEY_SEP: char = '\u{1f}';

/// `warning` or `critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// An alert rule: a predicate over window rows.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub name: String,
    pub severity: Severity,
    pub when: PlannedExpr,
    /// The SQL text, for the alert message.
    pub text: String,
}

/// An alert event (`integration.alert`): what crossed which threshold, in which window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    #[serde(rename = "type")]
    pub event_type: String,
    pub alert: String,
    pub severity: Severity,
    pub integration: String,
    pub window: String,
    pub key: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub condition: String,
    pub total: u64,
    pub error_rate: f64,
    pub latency_avg_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub data_quality_rate: f64,
    pub at_ms: i64,
}

/// What a windowed aggregation computes from its input rows.
pub struct WindowExprs {
    /// Named key expressions (each a column of the window rows).
    pub key: Vec<PlannedExpr>,
    /// Event time; None = processing time.
    pub time: Option<PlannedExpr>,
    pub failed: Option<PlannedExpr>,
    pub latency_ms: Option<PlannedExpr>,
    pub warnings: Option<PlannedExpr>,
}

/// What one batch changed.
#[derive(Debug, Default)]
pub struct WindowOutput {
    /// Rows of windows that fired (or were updated by late rows).
    pub rows: Option<RecordBatch>,
    pub alerts: Vec<Alert>,
    /// Set when the breaker's trip predicate held for a running window: why.
    pub trip: Option<String>,
}

/// Checkpointed state: the windows and the counters that go with them.
#[derive(Serialize, Deserialize)]
struct State {
    windows: Windows,
    invalid_time: u64,
    rows_in: u64,
}

pub struct WindowAggregate {
    pub name: String,
    integration: String,
    exprs: WindowExprs,
    processing_time: bool,
    state: State,
    alerts: Vec<AlertRule>,
    trip: Option<PlannedExpr>,
    /// Windows starting before this already tripped the breaker once: they keep their
    /// failures after the breaker recovers, and must not trip it again.
    trip_armed_from_ms: i64,
    schema: SchemaRef,
}

/// The columns of window rows: what `metrics` holds and what alert/trip SQL sees.
pub fn window_row_schema(key_names: &[String]) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("window", DataType::Utf8, false),
        Field::new("integration", DataType::Utf8, false),
    ];
    for k in key_names {
        fields.push(Field::new(k, DataType::Utf8, true));
    }
    fields.extend([
        Field::new("key", DataType::Utf8, false),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts.clone(), false),
        Field::new("total", DataType::Int64, false),
        Field::new("success", DataType::Int64, false),
        Field::new("failure", DataType::Int64, false),
        Field::new("error_rate", DataType::Float64, false),
        Field::new("latency_avg_ms", DataType::Float64, true),
        Field::new("latency_p50_ms", DataType::Float64, true),
        Field::new("latency_p95_ms", DataType::Float64, true),
        Field::new("latency_p99_ms", DataType::Float64, true),
        Field::new("throughput_per_min", DataType::Float64, false),
        Field::new("data_quality_rate", DataType::Float64, false),
        Field::new("update", DataType::Boolean, false),
        Field::new("emitted_at", ts, false),
        // Event-time windows describe the input (a re-run over it replaces their rows);
        // processing-time windows describe a run (each run's rows stand on their own).
        Field::new("event_time", DataType::Boolean, false),
    ]);
    Arc::new(Schema::new(fields))
}

impl WindowAggregate {
    pub fn new(
        name: &str,
        integration: &str,
        config: WindowConfig,
        exprs: WindowExprs,
        alerts: Vec<AlertRule>,
        trip: Option<PlannedExpr>,
    ) -> Self {
        let key_names: Vec<String> = exprs.key.iter().map(|k| k.name.clone()).collect();
        WindowAggregate {
            name: name.to_string(),
            integration: integration.to_string(),
            processing_time: exprs.time.is_none(),
            exprs,
            state: State {
                windows: Windows::new(config),
                invalid_time: 0,
                rows_in: 0,
            },
            alerts,
            trip,
            trip_armed_from_ms: i64::MIN,
            schema: window_row_schema(&key_names),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn is_processing_time(&self) -> bool {
        self.processing_time
    }

    /// Rows whose event time could not be read (NULL or not a time).
    pub fn invalid_time(&self) -> u64 {
        self.state.invalid_time
    }

    pub fn late_dropped(&self) -> u64 {
        self.state.windows.late_dropped()
    }

    pub fn rows_in(&self) -> u64 {
        self.state.rows_in
    }

    /// Adds a batch of input rows (`now_ms`: processing time).
    pub fn process(
        &mut self,
        batch: &RecordBatch,
        now_ms: i64,
    ) -> Result<WindowOutput, OperatorError> {
        let n = batch.num_rows();
        if n == 0 {
            return self.tick(now_ms);
        }
        let keys = self.keys(batch)?;
        let times = match &self.exprs.time {
            Some(t) => Some(event_times(&t.evaluate(batch)?)?),
            None => None,
        };
        let failed = match &self.exprs.failed {
            Some(f) => Some(
                f.evaluate(batch)?
                    .as_boolean_opt()
                    .cloned()
                    .ok_or_else(|| {
                        OperatorError::Other(format!(
                            "window {}: `failed` must be boolean",
                            self.name
                        ))
                    })?,
            ),
            None => None,
        };
        let latency = match &self.exprs.latency_ms {
            Some(l) => Some(as_f64(&l.evaluate(batch)?)?),
            None => None,
        };
        let warnings = match &self.exprs.warnings {
            Some(w) => Some(as_f64(&w.evaluate(batch)?)?),
            None => None,
        };
        let mut updates = Vec::new();
        let mut touched: HashSet<&str> = HashSet::new();
        for row in 0..n {
            let event_ms = match &times {
                Some(t) if t.is_null(row) => {
                    self.state.invalid_time += 1;
                    continue;
                }
                Some(t) => t.value(row),
                None => now_ms,
            };
            let key = keys.get(row);
            let o = Observation {
                key,
                event_ms,
                // NULL (unknown) is not a failure, as SQL WHERE reads it.
                failed: failed
                    .as_ref()
                    .is_some_and(|f| f.is_valid(row) && f.value(row)),
                latency_ms: latency
                    .as_ref()
                    .and_then(|l| l.is_valid(row).then(|| l.value(row))),
                warnings: warnings.as_ref().map_or(0, |w| {
                    if w.is_valid(row) {
                        w.value(row).max(0.0) as u32
                    } else {
                        0
                    }
                }),
                errors: 0,
            };
            updates.extend(self.state.windows.add(&o));
            if self.trip.is_some() {
                touched.insert(key);
            }
        }
        self.state.rows_in += n as u64;
        if self.processing_time {
            self.state.windows.advance_watermark_to(now_ms);
        }
        let trip = match &self.trip {
            Some(pred) if !touched.is_empty() => {
                let mut live = self.state.windows.live_rows(touched.iter().copied());
                live.retain(|r| r.window_start_ms >= self.trip_armed_from_ms);
                let hit = self.first_match(pred, &live, now_ms)?;
                if let Some((_, end)) = &hit {
                    self.trip_armed_from_ms = *end;
                }
                hit.map(|(why, _)| why)
            }
            _ => None,
        };
        updates.extend(self.state.windows.fire());
        let mut out = self.emit(updates, now_ms)?;
        out.trip = trip;
        Ok(out)
    }

    /// Processing time passes without rows: windows whose end passed fire.
    pub fn tick(&mut self, now_ms: i64) -> Result<WindowOutput, OperatorError> {
        if !self.processing_time {
            return Ok(WindowOutput::default());
        }
        self.state.windows.advance_watermark_to(now_ms);
        let rows = self.state.windows.fire();
        self.emit(rows, now_ms)
    }

    /// The end of a bounded input: every window fires.
    pub fn finish(&mut self, now_ms: i64) -> Result<WindowOutput, OperatorError> {
        let rows = self.state.windows.fire_all();
        self.emit(rows, now_ms)
    }

    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.state).expect("window state serializes")
    }

    /// Resumes from a checkpoint taken with the same window configuration.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: State = serde_json::from_slice(bytes)
            .map_err(|e| format!("window {}: unreadable state: {e}", self.name))?;
        if state.windows.config() != self.state.windows.config() {
            return Err(format!(
                "window {}: the checkpoint was taken with another size/slide/lateness; \
                 delete it to start the window over",
                self.name
            ));
        }
        self.state = state;
        Ok(())
    }

    fn keys(&self, batch: &RecordBatch) -> Result<Keys, OperatorError> {
        let mut parts = Vec::with_capacity(self.exprs.key.len());
        for k in &self.exprs.key {
            let a = k.evaluate(batch)?;
            let s = cast_with_options(&a, &DataType::Utf8, &CastOptions::default())?;
            parts.push(s);
        }
        Ok(match parts.len() {
            0 => Keys::Constant,
            1 => Keys::One(parts.pop().expect("one")),
            _ => {
                let joined = (0..batch.num_rows())
                    .map(|row| {
                        let mut k = String::new();
                        for (i, p) in parts.iter().enumerate() {
                            if i > 0 {
                                k.push(KEY_SEP);
                            }
                            let p = p.as_string::<i32>();
                            if p.is_valid(row) {
                                k.push_str(p.value(row));
                            }
                        }
                        k
                    })
                    .collect();
                Keys::Joined(joined)
            }
        })
    }

    fn emit(&self, rows: Vec<WindowRow>, now_ms: i64) -> Result<WindowOutput, OperatorError> {
        if rows.is_empty() {
            return Ok(WindowOutput::default());
        }
        let batch = self.rows_batch(&rows, now_ms)?;
        let mut alerts = Vec::new();
        for rule in &self.alerts {
            let hits = super::true_mask(rule.when.evaluate(&batch)?.as_boolean_opt().ok_or_else(
                || OperatorError::Other(format!("alert {}: not boolean", rule.name)),
            )?);
            for (i, r) in rows.iter().enumerate() {
                if hits.value(i) {
                    alerts.push(Alert {
                        event_type: "integration.alert".into(),
                        alert: rule.name.clone(),
                        severity: rule.severity,
                        integration: self.integration.clone(),
                        window: self.name.clone(),
                        key: display_key(&r.key),
                        window_start_ms: r.window_start_ms,
                        window_end_ms: r.window_end_ms,
                        condition: rule.text.clone(),
                        total: r.total,
                        error_rate: r.error_rate,
                        latency_avg_ms: r.latency_avg_ms,
                        latency_p95_ms: r.latency_p95_ms,
                        data_quality_rate: r.data_quality_rate,
                        at_ms: now_ms,
                    });
                }
            }
        }
        Ok(WindowOutput {
            rows: Some(batch),
            alerts,
            trip: None,
        })
    }

    /// The first live row the predicate holds for, described, with its window's end.
    fn first_match(
        &self,
        pred: &PlannedExpr,
        rows: &[WindowRow],
        now_ms: i64,
    ) -> Result<Option<(String, i64)>, OperatorError> {
        if rows.is_empty() {
            return Ok(None);
        }
        let batch = self.rows_batch(rows, now_ms)?;
        let hits = super::true_mask(pred.evaluate(&batch)?.as_boolean_opt().ok_or_else(|| {
            OperatorError::Other(format!("window {}: trip is not boolean", self.name))
        })?);
        Ok((0..rows.len()).find(|&i| hits.value(i)).map(|i| {
            let r = &rows[i];
            let why = format!(
                "window {} key {:?}: {} calls, {} failed ({:.0}%)",
                self.name,
                display_key(&r.key),
                r.total,
                r.failure,
                r.error_rate * 100.0
            );
            (why, r.window_end_ms)
        }))
    }

    /// Window rows as a batch of `self.schema`.
    pub fn rows_batch(
        &self,
        rows: &[WindowRow],
        now_ms: i64,
    ) -> Result<RecordBatch, OperatorError> {
        let n = rows.len();
        let nkeys = self.exprs.key.len();
        let mut name = StringBuilder::new();
        let mut integ = StringBuilder::new();
        let mut key_cols: Vec<StringBuilder> = (0..nkeys).map(|_| StringBuilder::new()).collect();
        let mut key = StringBuilder::new();
        let mut start = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut end = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut emitted = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        let (mut total, mut success, mut failure) = (
            Int64Builder::with_capacity(n),
            Int64Builder::with_capacity(n),
            Int64Builder::with_capacity(n),
        );
        let mut f64s: Vec<Float64Builder> =
            (0..7).map(|_| Float64Builder::with_capacity(n)).collect();
        let mut update = BooleanBuilder::with_capacity(n);
        for r in rows {
            name.append_value(&self.name);
            integ.append_value(&self.integration);
            if nkeys == 1 {
                key_cols[0].append_value(&r.key);
            } else if nkeys > 1 {
                let mut parts = r.key.split(KEY_SEP);
                for c in key_cols.iter_mut() {
                    c.append_value(parts.next().unwrap_or(""));
                }
            }
            key.append_value(display_key(&r.key));
            start.append_value(r.window_start_ms);
            end.append_value(r.window_end_ms);
            emitted.append_value(now_ms);
            total.append_value(r.total as i64);
            success.append_value(r.success as i64);
            failure.append_value(r.failure as i64);
            f64s[0].append_value(r.error_rate);
            f64s[1].append_option(r.latency_avg_ms);
            f64s[2].append_option(r.latency_p50_ms);
            f64s[3].append_option(r.latency_p95_ms);
            f64s[4].append_option(r.latency_p99_ms);
            f64s[5].append_value(r.throughput_per_min);
            f64s[6].append_value(r.data_quality_rate);
            update.append_value(r.update);
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(name.finish()), Arc::new(integ.finish())];
        for mut c in key_cols {
            columns.push(Arc::new(c.finish()));
        }
        columns.push(Arc::new(key.finish()));
        columns.push(Arc::new(start.finish()));
        columns.push(Arc::new(end.finish()));
        columns.push(Arc::new(total.finish()));
        columns.push(Arc::new(success.finish()));
        columns.push(Arc::new(failure.finish()));
        for mut b in f64s {
            columns.push(Arc::new(b.finish()));
        }
        // error_rate sits before the latencies; the builder order above matches the schema.
        columns.push(Arc::new(update.finish()));
        columns.push(Arc::new(emitted.finish()));
        columns.push(Arc::new(arrow::array::BooleanArray::from(vec![
            !self.processing_time;
            n
        ])));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// A key as people read it: parts joined by `/`.
fn display_key(k: &str) -> String {
    k.replace(KEY_SEP, "/")
}

enum Keys {
    Constant,
    One(ArrayRef),
    Joined(Vec<String>),
}

impl Keys {
    fn get(&self, row: usize) -> &str {
        match self {
            Keys::Constant => "",
            Keys::One(a) => {
                let s = a.as_string::<i32>();
                if s.is_valid(row) { s.value(row) } else { "" }
            }
            Keys::Joined(v) => &v[row],
        }
    }
}

/// Event times as epoch milliseconds: timestamps (any unit) and dates are converted, integers
/// are read as epoch milliseconds, strings are parsed as RFC 3339; anything else is NULL.
fn event_times(a: &ArrayRef) -> Result<arrow::array::Int64Array, OperatorError> {
    let ms = match a.data_type() {
        DataType::Int64 => a.clone(),
        DataType::Int32 | DataType::UInt32 | DataType::UInt64 => {
            cast_with_options(a, &DataType::Int64, &CastOptions::default())?
        }
        _ => {
            let safe = CastOptions {
                safe: true,
                ..CastOptions::default()
            };
            let t = cast_with_options(a, &DataType::Timestamp(TimeUnit::Millisecond, None), &safe)?;
            cast_with_options(&t, &DataType::Int64, &safe)?
        }
    };
    Ok(ms.as_primitive::<Int64Type>().clone())
}

fn as_f64(a: &ArrayRef) -> Result<arrow::array::Float64Array, OperatorError> {
    let safe = CastOptions {
        safe: true,
        ..CastOptions::default()
    };
    Ok(cast_with_options(a, &DataType::Float64, &safe)?
        .as_primitive::<Float64Type>()
        .clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::SqlPlanner;
    use arrow::array::{Int64Array, StringArray};
    use std::time::Duration;

    fn input(rows: &[(&str, i64, &str, f64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sink", DataType::Utf8, false),
            Field::new("t", DataType::Int64, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("latency_ms", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(arrow::array::Float64Array::from_iter_values(
                    rows.iter().map(|r| r.3),
                )),
            ],
        )
        .unwrap()
    }

    fn aggregate(trip: Option<&str>, alert: Option<&str>) -> WindowAggregate {
        let sql = SqlPlanner::new();
        let schema = input(&[]).schema();
        let e = |name: &str, text: &str| sql.expr(name, text, &schema).unwrap();
        let exprs = WindowExprs {
            key: vec![e("sink", "sink")],
            time: Some(e("t", "t")),
            failed: Some(e("failed", "status <> 'delivered'")),
            latency_ms: Some(e("latency_ms", "latency_ms")),
            warnings: None,
        };
        let row_schema = window_row_schema(&["sink".to_string()]);
        let trip = trip.map(|t| sql.expr("trip", t, &row_schema).unwrap());
        let alerts = alert
            .map(|a| AlertRule {
                name: "errors".into(),
                severity: Severity::Critical,
                when: sql.expr("when", a, &row_schema).unwrap(),
                text: a.into(),
            })
            .into_iter()
            .collect();
        WindowAggregate::new(
            "health",
            "adt",
            WindowConfig::tumbling(Duration::from_secs(60)),
            exprs,
            alerts,
            trip,
        )
    }

    #[test]
    fn trip_predicate_sees_the_running_window_before_it_closes() {
        let mut w = aggregate(Some("error_rate > 0.5 AND total >= 4"), None);
        let out = w
            .process(
                &input(&[
                    ("ehr", 1_000, "transient", 5.0),
                    ("ehr", 2_000, "delivered", 5.0),
                ]),
                0,
            )
            .unwrap();
        assert!(out.trip.is_none() && out.rows.is_none());
        let out = w
            .process(
                &input(&[
                    ("ehr", 3_000, "transient", 5.0),
                    ("ehr", 4_000, "transient", 5.0),
                ]),
                0,
            )
            .unwrap();
        let why = out.trip.expect("3 of 4 failed");
        assert!(why.contains("4 calls, 3 failed"), "{why}");
        assert!(out.rows.is_none(), "the window has not closed");
        // After the breaker recovers, the same window's old failures do not trip it again.
        let out = w
            .process(&input(&[("ehr", 5_000, "transient", 5.0)]), 0)
            .unwrap();
        assert!(out.trip.is_none());
        let out = w
            .process(
                &input(&[
                    ("ehr", 61_000, "transient", 5.0),
                    ("ehr", 62_000, "transient", 5.0),
                    ("ehr", 63_000, "transient", 5.0),
                    ("ehr", 64_000, "transient", 5.0),
                ]),
                0,
            )
            .unwrap();
        assert!(out.trip.is_some(), "a new window trips again");
    }

    #[test]
    fn closed_windows_come_out_as_rows_and_raise_alerts() {
        let mut w = aggregate(None, Some("error_rate >= 0.5"));
        w.process(
            &input(&[
                ("ehr", 1_000, "transient", 10.0),
                ("lab", 2_000, "delivered", 20.0),
                ("ehr", 3_000, "delivered", 30.0),
            ]),
            0,
        )
        .unwrap();
        let out = w
            .process(&input(&[("lab", 61_000, "delivered", 1.0)]), 0)
            .unwrap();
        let rows = out.rows.expect("window [0, 60s) fired");
        assert_eq!(rows.num_rows(), 2);
        let keys = rows.column_by_name("sink").unwrap().as_string::<i32>();
        let totals = rows
            .column_by_name("total")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!((keys.value(0), totals.value(0)), ("ehr", 2));
        assert_eq!((keys.value(1), totals.value(1)), ("lab", 1));
        assert_eq!(out.alerts.len(), 1);
        assert_eq!(out.alerts[0].key, "ehr");
        assert_eq!(out.alerts[0].severity, Severity::Critical);
    }

    #[test]
    fn rows_without_an_event_time_are_counted_not_aggregated() {
        let sql = SqlPlanner::new();
        let schema = input(&[]).schema();
        let exprs = WindowExprs {
            key: vec![],
            time: Some(
                sql.expr("t", "CASE WHEN t > 0 THEN t END", &schema)
                    .unwrap(),
            ),
            failed: None,
            latency_ms: None,
            warnings: None,
        };
        let mut w = WindowAggregate::new(
            "w",
            "i",
            WindowConfig::tumbling(Duration::from_secs(1)),
            exprs,
            vec![],
            None,
        );
        w.process(&input(&[("a", 0, "x", 0.0), ("a", 500, "x", 0.0)]), 0)
            .unwrap();
        assert_eq!(w.invalid_time(), 1);
        let out = w.finish(0).unwrap();
        let rows = out.rows.unwrap();
        assert_eq!(
            rows.column_by_name("total")
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            1
        );
    }

    #[test]
    fn a_restored_checkpoint_keeps_counting_the_same_window() {
        let mut w = aggregate(None, None);
        w.process(
            &input(&[
                ("ehr", 1_000, "delivered", 1.0),
                ("ehr", 2_000, "transient", 1.0),
            ]),
            0,
        )
        .unwrap();
        let saved = w.snapshot();
        let mut again = aggregate(None, None);
        again.restore(&saved).unwrap();
        again
            .process(&input(&[("ehr", 3_000, "delivered", 1.0)]), 0)
            .unwrap();
        let rows = again.finish(0).unwrap().rows.unwrap();
        let col = |n: &str| {
            rows.column_by_name(n)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0)
        };
        assert_eq!((col("total"), col("failure")), (3, 1));
    }
}
