//! Planning `windows:` and `monitoring:`: window expressions over their input's schema, alert
//! rules and breaker trip predicates over the window-row schema, all planned once here.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Spanned;

use super::graph::{Ctx, PlannedSink, PlannedStage, Upstream, duration_or, resolve_upstream};
use crate::metrics::outcome::outcome_schema;
use crate::metrics::window::WindowConfig;
use crate::net::secret::SecretRef;
use crate::operators::WARNINGS;
use crate::operators::window::{
    AlertRule, Severity, WindowAggregate, WindowExprs, window_row_schema,
};
use crate::resilience::breaker::BreakerConfig;
use crate::spec::WindowSpec;
use crate::sql::SqlPlanner;

/// What a window reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowInput {
    /// A stage's output (any stream).
    Stream(Upstream),
    /// The sinks' per-call outcomes (`metrics::outcome`).
    Outcomes,
}

pub struct PlannedWindow {
    pub name: String,
    pub input: WindowInput,
    pub aggregate: WindowAggregate,
    /// The HTTP sink whose breaker the trip predicate opens.
    pub breaker_sink: Option<String>,
}

pub use crate::connectors::monitoring::config::{MetricsLocation, MonitoringPlan, StateStore};

pub(super) fn plan_monitoring(cx: &mut Ctx<'_>) -> MonitoringPlan {
    let spec = cx.spec;
    let name = spec.name.as_str();
    let m = spec.monitoring.as_ref();
    let has_kafka = spec.kafka.is_some();
    let mut out = |o: Option<&crate::spec::OutputSpec>, default: String, what: &str| {
        let path = o
            .and_then(|o| o.path.as_ref())
            .map(|p| spec.resolve(p))
            .unwrap_or_else(|| spec.resolve(&default));
        let topic = o.and_then(|o| o.topic.as_ref());
        if let Some(t) = topic
            && !has_kafka
        {
            cx.err(
                t,
                format!("a {what} topic needs a `kafka:` connection block"),
            );
        }
        (path, topic.map(|t| t.to_string()))
    };
    let (metrics_dir, metrics_topic) = out(
        m.and_then(|m| m.metrics.as_ref()),
        format!("{name}.metrics"),
        "metrics",
    );
    let (events_path, events_topic) = out(
        m.and_then(|m| m.breaker_events.as_ref()),
        format!("{name}.breaker_events.ndjson"),
        "breaker events",
    );
    let (alerts_path, alerts_topic) = out(
        m.and_then(|m| m.alerts.as_ref()),
        format!("{name}.alerts.ndjson"),
        "alerts",
    );
    for o in [
        m.and_then(|m| m.metrics.as_ref()),
        m.and_then(|m| m.breaker_events.as_ref()),
    ]
    .into_iter()
    .flatten()
    {
        for w in [&o.webhook, &o.secret].into_iter().flatten() {
            cx.err(w, "only `alerts` go to a webhook");
        }
    }
    let alerts_webhook = m.and_then(|m| m.alerts.as_ref()).and_then(|a| {
        let url = a.webhook.as_ref()?;
        let secret = a.secret.as_ref().and_then(|s| match SecretRef::parse(s) {
            Ok(r) => Some(r),
            Err(_) => {
                cx.err(
                    s,
                    "a webhook secret is `env:NAME` or `file:/path`, never inline",
                );
                None
            }
        });
        Some((url.to_string(), secret))
    });
    let metrics = match m
        .and_then(|m| m.metrics.as_ref())
        .and_then(|o| o.path.as_ref())
    {
        Some(raw) => match MetricsLocation::parse(raw, |p| spec.resolve(p)) {
            Ok(l) => l,
            Err(e) => {
                cx.err(raw, e);
                MetricsLocation::Dir(metrics_dir)
            }
        },
        None => MetricsLocation::Dir(metrics_dir),
    };
    let state = match m.and_then(|m| m.state.as_ref()) {
        Some(s) if s.as_str() == "postgres" => StateStore::Postgres {
            url_env: "DATABASE_URL".into(),
        },
        Some(s) => StateStore::Dir(spec.resolve(s)),
        None => default_state(&metrics, || spec.resolve(&format!("{name}.window_state"))),
    };
    MonitoringPlan {
        metrics,
        metrics_topic,
        events_path,
        events_topic,
        alerts_path,
        alerts_topic,
        alerts_webhook,
        state,
    }
}

/// Window state by default: beside local metrics; next to the pipeline when metrics go to an
/// object store (state is rewritten every checkpoint, which object stores bill per request).
fn default_state(
    metrics: &MetricsLocation,
    beside_pipeline: impl FnOnce() -> PathBuf,
) -> StateStore {
    match metrics {
        MetricsLocation::Dir(d) => StateStore::Dir(d.join("_state")),
        MetricsLocation::Url(_) => StateStore::Dir(beside_pipeline()),
    }
}

/// Plans every window; may give an HTTP sink a breaker (window-driven only) when a trip
/// predicate names it and it has none of its own.
pub(super) fn plan_windows(
    cx: &mut Ctx<'_>,
    stages: &[PlannedStage],
    sinks: &mut [PlannedSink],
    sql: &SqlPlanner,
) -> Vec<PlannedWindow> {
    let spec = cx.spec;
    let mut out = Vec::new();
    let thresholds = threshold_rules(cx);
    for (i, w) in spec.windows.iter().enumerate() {
        cx.unique_name(
            "window",
            &w.name,
            spec.windows[..i].iter().map(|o| o.name.as_str()),
        );
        if let Some(p) = plan_window(cx, stages, sinks, sql, w, &thresholds) {
            out.push(p);
        }
    }
    out
}

/// The seed's `alertThresholds` as SQL rules over window rows.
fn threshold_rules(cx: &mut Ctx<'_>) -> Vec<(String, Severity, String)> {
    let Some(t) = cx
        .spec
        .monitoring
        .as_ref()
        .and_then(|m| m.thresholds.as_ref())
    else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    if let Some(rt) = &t.response_time {
        let d = duration_or(cx, &Some(rt.clone()), Duration::ZERO);
        rules.push((
            "response_time".to_string(),
            Severity::Warning,
            format!("latency_avg_ms > {}", d.as_secs_f64() * 1e3),
        ));
    }
    for (v, name, sev, sql) in [
        (
            &t.error_rate,
            "error_rate",
            Severity::Critical,
            "error_rate >",
        ),
        (
            &t.data_quality,
            "data_quality",
            Severity::Warning,
            "data_quality_rate <",
        ),
    ] {
        if let Some(x) = v {
            if !(0.0..=1.0).contains(&**x) {
                cx.err(x, "a rate threshold is between 0 and 1");
            }
            rules.push((name.to_string(), sev, format!("{sql} {}", **x)));
        }
    }
    rules
}

/// Size, slide, out-of-orderness and lateness of a window.
fn window_config(cx: &mut Ctx<'_>, w: &WindowSpec) -> WindowConfig {
    let size = duration_or(cx, &Some(w.size.clone()), Duration::from_secs(60));
    let slide = duration_or(cx, &w.slide, size);
    if size.is_zero() {
        cx.err(&w.size, "a window's size is positive");
    }
    if let Some(s) = &w.slide
        && (slide.is_zero()
            || slide > size
            || !size.as_millis().is_multiple_of(slide.as_millis().max(1)))
    {
        cx.err(s, "slide is positive, at most the size, and divides it");
    }
    let ooo = duration_or(cx, &w.out_of_orderness, Duration::ZERO);
    let lateness = duration_or(cx, &w.allowed_lateness, Duration::ZERO);
    WindowConfig::hopping(size, slide).with_watermark(ooo, lateness)
}

/// The pipeline's threshold rules and the window's own alerts, over its rows.
fn alert_rules(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    w: &WindowSpec,
    thresholds: &[(String, Severity, String)],
    row_schema: &arrow::datatypes::SchemaRef,
) -> Vec<AlertRule> {
    let mut alerts = Vec::new();
    for (name, severity, text) in thresholds {
        match sql.predicate(name, text, row_schema) {
            Ok(when) => alerts.push(AlertRule {
                name: name.clone(),
                severity: *severity,
                when,
                text: text.clone(),
            }),
            Err(e) => cx.err(&w.name, format!("threshold {name}: {e}")),
        }
    }
    for a in &w.alerts {
        let severity = match &a.severity {
            None => Severity::Warning,
            Some(s) => Severity::parse(s).unwrap_or_else(|| {
                cx.err(s, "severity is `warning` or `critical`");
                Severity::Warning
            }),
        };
        match sql.predicate(&a.name, &a.when, row_schema) {
            Ok(when) => alerts.push(AlertRule {
                name: a.name.to_string(),
                severity,
                when,
                text: a.when.to_string(),
            }),
            Err(e) => {
                cx.err(&a.when, format!("alert {}: {e}", a.name.as_str()));
            }
        }
    }
    alerts
}

/// `breaker:` of a window: its trip predicate, and the sink whose breaker it opens (given a
/// breaker that only the window opens, when the sink has none).
fn window_breaker(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    w: &WindowSpec,
    sinks: &mut [PlannedSink],
    row_schema: &arrow::datatypes::SchemaRef,
) -> (Option<crate::sql::PlannedExpr>, Option<String>) {
    let mut trip = None;
    let mut breaker_sink = None;
    if let Some(b) = &w.breaker {
        match sql.predicate("trip", &b.trip, row_schema) {
            Ok(p) => trip = Some(p),
            Err(e) => {
                cx.err(&b.trip, format!("breaker trip: {e}"));
            }
        }
        match sinks.iter_mut().find(|s| s.name == b.sink.as_str()) {
            Some(s) => match s.connector.breaker_mut() {
                Some(breaker) => {
                    // Only the window opens it; probes still decide half-open → closed.
                    breaker.get_or_insert_with(|| BreakerConfig {
                        minimum_calls: usize::MAX,
                        ..BreakerConfig::default()
                    });
                    breaker_sink = Some(s.name.clone());
                }
                None => cx.err(&b.sink, "breakers gate http sinks; this sink is not one"),
            },
            None => {
                let known: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
                cx.err(
                    &b.sink,
                    format!(
                        "no sink named {:?} (sinks: {})",
                        b.sink.as_str(),
                        known.join(", ")
                    ),
                );
            }
        }
    }
    (trip, breaker_sink)
}

fn plan_window(
    cx: &mut Ctx<'_>,
    stages: &[PlannedStage],
    sinks: &mut [PlannedSink],
    sql: &SqlPlanner,
    w: &WindowSpec,
    thresholds: &[(String, Severity, String)],
) -> Option<PlannedWindow> {
    let (input, schema) = if w.input.as_str() == "outcomes" {
        (WindowInput::Outcomes, outcome_schema())
    } else {
        let up = resolve_upstream(cx, stages, Some(&w.input), stages.len(), "window")?;
        match up {
            Upstream::Source => {
                cx.err(
                    &w.input,
                    "a window reads parsed rows: name a stage or `outcomes`",
                );
                return None;
            }
            Upstream::Stage { stage, port } => (
                WindowInput::Stream(up),
                stages[stage].outputs[port].1.clone(),
            ),
        }
    };
    let outcomes = input == WindowInput::Outcomes;
    // Any error below fails this window (the count tells, so closures need not share a flag).
    let errors_before = cx.errors.len();
    let expr =
        |cx: &mut Ctx<'_>, name: &str, at: &Spanned<String>| match sql.expr(name, at, &schema) {
            Ok(e) => Some(e),
            Err(e) => {
                cx.err(at, format!("window {}: {name}: {e}", w.name.as_str()));
                None
            }
        };
    let mut key = Vec::new();
    let default_key;
    let keys: Vec<(&String, &Spanned<String>)> = if w.key.is_empty() && outcomes {
        default_key = (
            "sink".to_string(),
            Spanned::new(*w.input.span(), "sink".to_string()),
        );
        vec![(&default_key.0, &default_key.1)]
    } else {
        w.key.iter().collect()
    };
    let reserved = window_row_schema(&[]);
    for (name, text) in keys {
        if reserved.field_with_name(name).is_ok() {
            cx.err(
                text,
                format!("key name {name:?} is a window-row column; pick another"),
            );
        }
        key.extend(expr(cx, name, text));
    }
    let time = w.time.as_ref().and_then(|t| expr(cx, "time", t));
    let synth = |text: &str| Spanned::new(*w.name.span(), text.to_string());
    let failed_text = w
        .failed
        .clone()
        .or_else(|| outcomes.then(|| synth("status <> 'delivered'")));
    let failed = failed_text.as_ref().and_then(|t| expr(cx, "failed", t));
    let latency_text = w
        .latency_ms
        .clone()
        .or_else(|| outcomes.then(|| synth("latency_ms")));
    let latency_ms = latency_text
        .as_ref()
        .and_then(|t| expr(cx, "latency_ms", t));
    let warnings_text = w.warnings.clone().or_else(|| {
        (schema.field_with_name(WARNINGS).is_ok())
            .then(|| synth(&format!("coalesce(cardinality({WARNINGS}), 0)")))
    });
    let warnings = warnings_text.as_ref().and_then(|t| expr(cx, "warnings", t));
    if let Some(f) = &failed
        && f.data_type != arrow::datatypes::DataType::Boolean
    {
        cx.err(
            failed_text.as_ref().expect("planned"),
            "`failed` must be a boolean expression",
        );
    }

    let config = window_config(cx, w);

    let key_names: Vec<String> = key.iter().map(|k| k.name.clone()).collect();
    let row_schema = window_row_schema(&key_names);
    let alerts = alert_rules(cx, sql, w, thresholds, &row_schema);
    let (trip, breaker_sink) = window_breaker(cx, sql, w, sinks, &row_schema);
    if cx.errors.len() > errors_before {
        return None;
    }
    let exprs = WindowExprs {
        key,
        time,
        failed,
        latency_ms,
        warnings,
    };
    Some(PlannedWindow {
        name: w.name.to_string(),
        input,
        aggregate: WindowAggregate::new(
            w.name.as_str(),
            cx.spec.integration.id.as_str(),
            config,
            exprs,
            alerts,
            trip,
        ),
        breaker_sink,
    })
}
