//! Live counters and gauges of a run, served as Prometheus text on `/metrics`
//! (`plexus run --metrics-addr`).
//!
//! The run updates atomics as it goes; a scrape reads them. The exposition format is small
//! and stable (`# TYPE` lines and `name{labels} value`), so it is written here rather than
//! through a metrics registry whose families would duplicate these counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;

use crate::resilience::breaker::{BreakerState, SharedBreaker};

/// The latest closed window of one key.
#[derive(Debug, Clone, Default)]
struct WindowGauge {
    total: i64,
    failure: i64,
    error_rate: f64,
    latency_p95_ms: Option<f64>,
    latency_avg_ms: Option<f64>,
    data_quality_rate: f64,
    throughput_per_min: f64,
}

#[derive(Default)]
pub struct Telemetry {
    pub pipeline: String,
    pub integration: String,
    pub records_in: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Per sink: rows written.
    sinks: Mutex<BTreeMap<String, u64>>,
    windows: Mutex<BTreeMap<(String, String), WindowGauge>>,
    alerts: Mutex<BTreeMap<(String, String), u64>>,
    breakers: Mutex<Vec<(String, SharedBreaker)>>,
}

impl Telemetry {
    pub fn new(pipeline: &str, integration: &str) -> Self {
        Telemetry {
            pipeline: pipeline.to_string(),
            integration: integration.to_string(),
            ..Telemetry::default()
        }
    }

    /// Each breaker's state, by sink.
    pub fn breaker_states(&self) -> BTreeMap<String, BreakerState> {
        self.breakers
            .lock()
            .expect("telemetry")
            .iter()
            .map(|(sink, b)| (sink.clone(), b.state()))
            .collect()
    }

    /// Alerts raised so far, by `name:severity`.
    pub fn alert_counts(&self) -> BTreeMap<String, u64> {
        self.alerts
            .lock()
            .expect("telemetry")
            .iter()
            .map(|((name, severity), n)| (format!("{name}:{severity}"), *n))
            .collect()
    }

    /// Rows written so far, per sink.
    pub fn sink_counts(&self) -> BTreeMap<String, u64> {
        self.sinks.lock().expect("telemetry").clone()
    }

    /// Called per batch by every sink: no allocation once the sink is known.
    pub fn sink_rows(&self, sink: &str, n: u64) {
        let mut sinks = self.sinks.lock().expect("telemetry");
        match sinks.get_mut(sink) {
            Some(c) => *c += n,
            None => {
                sinks.insert(sink.to_string(), n);
            }
        }
    }

    /// Each sink's breaker (shared: acting on one acts on the running sink's).
    pub fn breakers(&self) -> Vec<(String, SharedBreaker)> {
        self.breakers.lock().expect("telemetry").clone()
    }

    pub fn add_breaker(&self, sink: &str, b: SharedBreaker) {
        self.breakers
            .lock()
            .expect("telemetry")
            .push((sink.to_string(), b));
    }

    pub fn alert(&self, name: &str, severity: &str) {
        *self
            .alerts
            .lock()
            .expect("telemetry")
            .entry((name.to_string(), severity.to_string()))
            .or_default() += 1;
    }

    /// Keeps the latest row per (window, key) of a batch of window rows.
    pub fn window_rows(&self, window: &str, rows: &RecordBatch) {
        let col = |n: &str| rows.column_by_name(n);
        let (
            Some(key),
            Some(total),
            Some(failure),
            Some(rate),
            Some(p95),
            Some(avg),
            Some(dq),
            Some(tp),
        ) = (
            col("key").and_then(|c| c.as_string_opt::<i32>()),
            col("total").and_then(|c| c.as_primitive_opt::<Int64Type>()),
            col("failure").and_then(|c| c.as_primitive_opt::<Int64Type>()),
            col("error_rate").and_then(|c| c.as_primitive_opt::<Float64Type>()),
            col("latency_p95_ms").and_then(|c| c.as_primitive_opt::<Float64Type>()),
            col("latency_avg_ms").and_then(|c| c.as_primitive_opt::<Float64Type>()),
            col("data_quality_rate").and_then(|c| c.as_primitive_opt::<Float64Type>()),
            col("throughput_per_min").and_then(|c| c.as_primitive_opt::<Float64Type>()),
        )
        else {
            return;
        };
        let mut w = self.windows.lock().expect("telemetry");
        for i in 0..rows.num_rows() {
            let opt = |a: &arrow::array::Float64Array| a.is_valid(i).then(|| a.value(i));
            w.insert(
                (window.to_string(), key.value(i).to_string()),
                WindowGauge {
                    total: total.value(i),
                    failure: failure.value(i),
                    error_rate: rate.value(i),
                    latency_p95_ms: opt(p95),
                    latency_avg_ms: opt(avg),
                    data_quality_rate: dq.value(i),
                    throughput_per_min: tp.value(i),
                },
            );
        }
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let base = format!(
            "pipeline=\"{}\",integration=\"{}\"",
            escape(&self.pipeline),
            escape(&self.integration)
        );
        let mut metric = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        metric(
            "plexus_records_in_total",
            "counter",
            "Records read from the source.",
        );
        let _ = writeln!(
            s,
            "plexus_records_in_total{{{base}}} {}",
            self.records_in.load(Ordering::Relaxed)
        );
        let mut body = String::new();
        let _ = writeln!(
            body,
            "# HELP plexus_dead_letters_total Rows written to the dead-letter output.\n# TYPE plexus_dead_letters_total counter\nplexus_dead_letters_total{{{base}}} {}",
            self.dead_letters.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            body,
            "# HELP plexus_sink_rows_total Rows delivered per sink.\n# TYPE plexus_sink_rows_total counter"
        );
        for (sink, n) in self.sinks.lock().expect("telemetry").iter() {
            let _ = writeln!(
                body,
                "plexus_sink_rows_total{{{base},sink=\"{}\"}} {n}",
                escape(sink)
            );
        }
        let _ = writeln!(
            body,
            "# HELP plexus_circuit_state Circuit breaker state (0 closed, 1 half-open, 2 open).\n# TYPE plexus_circuit_state gauge"
        );
        for (sink, b) in self.breakers.lock().expect("telemetry").iter() {
            let v = match b.state() {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            let _ = writeln!(
                body,
                "plexus_circuit_state{{{base},sink=\"{}\"}} {v}",
                escape(sink)
            );
        }
        let _ = writeln!(
            body,
            "# HELP plexus_alerts_total Alerts raised.\n# TYPE plexus_alerts_total counter"
        );
        for ((name, sev), n) in self.alerts.lock().expect("telemetry").iter() {
            let _ = writeln!(
                body,
                "plexus_alerts_total{{{base},alert=\"{}\",severity=\"{}\"}} {n}",
                escape(name),
                escape(sev)
            );
        }
        let windows = self.windows.lock().expect("telemetry");
        type Get = fn(&WindowGauge) -> Option<f64>;
        let gauges: [(&str, &str, Get); 7] = [
            (
                "plexus_window_total",
                "Rows in the latest closed window.",
                |g| Some(g.total as f64),
            ),
            (
                "plexus_window_failures",
                "Failed rows in the latest closed window.",
                |g| Some(g.failure as f64),
            ),
            (
                "plexus_window_error_rate",
                "Error rate of the latest closed window (0-1).",
                |g| Some(g.error_rate),
            ),
            (
                "plexus_window_latency_p95_ms",
                "p95 latency of the latest closed window.",
                |g| g.latency_p95_ms,
            ),
            (
                "plexus_window_latency_avg_ms",
                "Average latency of the latest closed window.",
                |g| g.latency_avg_ms,
            ),
            (
                "plexus_window_data_quality_rate",
                "Share of rows without validation findings.",
                |g| Some(g.data_quality_rate),
            ),
            (
                "plexus_window_throughput_per_minute",
                "Rows per minute in the latest closed window.",
                |g| Some(g.throughput_per_min),
            ),
        ];
        for (name, help, get) in gauges {
            let _ = writeln!(body, "# HELP {name} {help}\n# TYPE {name} gauge");
            for ((w, k), g) in windows.iter() {
                if let Some(v) = get(g) {
                    let _ = writeln!(
                        body,
                        "{name}{{{base},window=\"{}\",key=\"{}\"}} {v}",
                        escape(w),
                        escape(k)
                    );
                }
            }
        }
        s.push_str(&body);
        s
    }
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` (Prometheus) and `/health` until the runtime stops.
pub async fn serve(
    addr: std::net::SocketAddr,
    telemetry: std::sync::Arc<Telemetry>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use axum::routing::get;
    let t = telemetry.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let t = t.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        t.render(),
                    )
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}
