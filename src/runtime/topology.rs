//! The running graph, built from a plan: the source, every sink (through the connector
//! registry), the dead-letter output, retry workers, the outcome stream, telemetry and the
//! signal handler. `Topology::start` builds it; `Topology::run` runs the flow to its end and
//! winds everything down in order, returning the run's summary.
//!
//! The command line only turns arguments into a plan and options; everything that runs is
//! assembled here.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use super::outcomes::OutcomeStream;
use super::summary::RunSummary;
use super::telemetry::{Telemetry, serve as serve_metrics};
use super::windows::WindowIo;
use super::{Progress, RunOptions};
use crate::connectors::dlq::DlqFile;
use crate::connectors::kafka::{KafkaDlq, RecordMeta, ensure_topics};

use crate::connectors::monitoring::MonitorOutputs;
use crate::connectors::monitoring::follow::spawn as follow_breakers;
use crate::connectors::monitoring::state::WindowStateStore;
use crate::connectors::registry::SourceCx;
use crate::connectors::{
    BatchSink, BatchSource, Batching, Breakers, BuildCx, DeadLetterSink, RetryWorker,
};
use crate::metrics::outcome::OutcomeTap;
use crate::net::http::HttpTarget;
use crate::net::schema_registry::SchemaRegistry;
use crate::plan::Plan;
use crate::plan::windows::{PlannedWindow, WindowInput};

/// How a run is started (from `plexus run`'s options).
#[derive(Default)]
pub struct StartOptions {
    /// Read at most this many records.
    pub max_records: Option<u64>,
    /// Streams: end after this long without a record.
    pub exit_when_idle: Option<Duration>,
    /// Serve Prometheus `/metrics` here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub progress: Option<Progress>,
    /// Called before a signal's message is printed (the CLI ends its progress line).
    pub on_signal: Option<fn()>,
    /// Hosted by `plexus serve`: the server handles signals and stops the run through
    /// `stop_handle`.
    pub hosted: bool,
}

/// The breaker-event follower: its stop flag and thread.
type Follower = (Arc<AtomicBool>, std::thread::JoinHandle<()>);

/// A started pipeline, ready to run.
pub struct Topology {
    plan: Plan,
    source: Box<dyn BatchSource>,
    sinks: Vec<Box<dyn BatchSink>>,
    dlq: Box<dyn DeadLetterSink>,
    /// Where the dead letters go: a file, or a topic.
    pub dlq_path: PathBuf,
    pub dlq_topic: Option<String>,
    stop: Arc<AtomicBool>,
    main_done: Arc<AtomicBool>,
    workers: Vec<RetryWorker>,
    breakers: Breakers,
    telemetry: Arc<Telemetry>,
    /// Where sinks report calls (and a host its health checks).
    tap: OutcomeTap,
    server: Option<tokio::task::JoinHandle<()>>,
    window_io: Option<WindowIo>,
    outcomes: Option<OutcomeStream>,
    follower: Option<Follower>,
    staged: bool,
    progress: Option<Progress>,
}

impl Topology {
    /// Connects the source and every sink, starts retry workers, the outcome stream and the
    /// signal handler. An error here means nothing ran (exit 2).
    pub fn start(
        rt: &tokio::runtime::Runtime,
        mut plan: Plan,
        options: StartOptions,
    ) -> Result<Topology> {
        let stop = Arc::new(AtomicBool::new(false));
        let meta = RecordMeta::default();
        if !options.hosted {
            // A signal stops the reading; what was read is finished and accounted for.
            let _guard = rt.enter();
            watch_signals(rt, stop.clone(), options.on_signal);
        }
        let source = source(rt, &plan, &options, stop.clone(), meta.clone())?;
        // A batch run's files appear whole when it ends; a stream's grow in place.
        let staged = plan.source.is_bounded();
        let registry = match &plan.registry {
            Some(r) => Some(SchemaRegistry::new(r).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let outcome_windows: Vec<PlannedWindow> = {
            let (o, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.windows)
                .into_iter()
                .partition(|w| w.input == WindowInput::Outcomes);
            plan.windows = rest;
            o
        };
        let (tap, tap_rx) = if outcome_windows.is_empty() {
            (OutcomeTap::default(), None)
        } else {
            let (t, rx) = OutcomeTap::channel();
            (t, Some(rx))
        };
        let main_done = Arc::new(AtomicBool::new(false));
        let breakers: Breakers = Arc::default();
        let handle = rt.handle().clone();
        let mut cx = BuildCx {
            rt: &handle,
            pipeline: &plan.name,
            integration: &plan.integration_id,
            kafka: plan.kafka.as_ref(),
            registry: registry.as_ref(),
            dlq_topic: plan.dlq_topic.as_deref(),
            group: match plan.source.kafka() {
                Some(k) => k.group.clone(),
                None => format!("plexus-{}", plan.name),
            },
            staged,
            stop: stop.clone(),
            main_done: main_done.clone(),
            idle: options.exit_when_idle.unwrap_or(Duration::from_secs(2)),
            breakers: breakers.clone(),
            outcomes: tap.clone(),
            workers: Vec::new(),
        };
        let mut sinks = Vec::with_capacity(plan.sinks.len());
        for s in &plan.sinks {
            sinks.push(s.connector.clone().build(&s.name, &s.schema, &mut cx)?);
        }
        let workers = std::mem::take(&mut cx.workers);
        drop(cx);
        let dlq_path = plan
            .dlq
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.dlq.ndjson", plan.name)));
        let dlq: Box<dyn DeadLetterSink> = match &plan.dlq_topic {
            Some(topic) => Box::new(KafkaDlq::new(
                &plan.kafka.clone().unwrap_or_default(),
                topic,
                &plan.name,
                &plan.integration_id,
                meta,
            )?),
            None => {
                let file = DlqFile::new(&dlq_path, &plan.name, &plan.integration_id);
                Box::new(if staged { file.staged() } else { file })
            }
        };
        let telemetry = Arc::new(Telemetry::new(&plan.name, &plan.integration_id));
        for (sink, b) in breakers.lock().expect("breakers").iter() {
            telemetry.add_breaker(sink, b.clone());
        }
        let server = match options.metrics_addr {
            Some(addr) => {
                let _guard = rt.enter();
                let h = rt
                    .block_on(serve_metrics(addr, telemetry.clone()))
                    .with_context(|| format!("--metrics-addr {addr}"))?;
                eprintln!("metrics: http://{addr}/metrics");
                Some(h)
            }
            None => None,
        };
        let (window_io, outcomes, follower) = match monitoring(rt, &plan, &breakers, &telemetry)? {
            Some((io, follower)) => {
                // Also without outcome windows: the stream's last node publishes breaker events.
                let rx = tap_rx.unwrap_or_else(|| OutcomeTap::channel().1);
                let _guard = rt.enter();
                let stream = OutcomeStream::start(outcome_windows, rx, io.clone())?;
                (Some(io), Some(stream), follower)
            }
            None => (None, None, None),
        };
        // The sinks hold the tap, and so does the topology (for a host's health checks): the
        // outcome stream ends when told, after the retry workers, not when the tap closes.
        Ok(Topology {
            dlq_topic: plan.dlq_topic.clone(),
            plan,
            source,
            sinks,
            dlq,
            dlq_path,
            stop,
            main_done,
            workers,
            breakers,
            telemetry,
            tap,
            server,
            window_io,
            outcomes,
            follower,
            staged,
            progress: options.progress,
        })
    }

    /// The run's counters (what `/metrics` shows).
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    /// The outcome tap: what is emitted here reaches the windows over `outcomes` (a no-op
    /// tap when there are none).
    pub fn outcome_tap(&self) -> OutcomeTap {
        self.tap.clone()
    }

    /// The flag a signal sets: setting it stops a stream the way SIGTERM does (drain,
    /// commit, end).
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Runs the flow to its end (files read, or a stream stopped), then the retry workers,
    /// the outcome stream and the follower, in that order. An error means the run failed after it
    /// started (exit 1).
    pub fn run(self, rt: &tokio::runtime::Runtime) -> Result<RunSummary> {
        let result = rt.block_on(super::run(
            self.plan,
            self.source,
            self.sinks,
            self.dlq,
            RunOptions {
                progress: self.progress,
                windows: self.window_io,
                telemetry: Some(self.telemetry),
            },
        ));
        if let Some(s) = self.server {
            s.abort();
        }
        // The retry workers finish what is due, then stop (or stop now on a signal).
        self.main_done.store(true, Ordering::Relaxed);
        let mut retries = Vec::new();
        for w in self.workers {
            match w.join() {
                Ok(Ok(stats)) => retries.push(stats),
                Ok(Err(e)) => anyhow::bail!("retry worker: {e}"),
                Err(_) => anyhow::bail!("retry worker panicked"),
            }
        }
        let mut summary = result?;
        summary.retries = retries;
        // A stream runs until it is told to stop; a file run stopped early did not finish.
        summary.interrupted = self.staged && self.stop.load(Ordering::Relaxed);
        if let Some(o) = self.outcomes {
            summary.windows.extend(rt.block_on(o.stop())?);
        }
        if let Some((stop, h)) = self.follower {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
        for (_, b) in self.breakers.lock().expect("breakers").iter() {
            summary.breaker_transitions.extend(b.transitions());
        }
        Ok(summary)
    }
}

/// The plan's source, connected.
fn source(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    options: &StartOptions,
    stop: Arc<AtomicBool>,
    meta: RecordMeta,
) -> Result<Box<dyn BatchSource>> {
    let batching = Batching {
        format: plan.source.format,
        max_rows: plan.max_rows,
        max_bytes: plan.max_bytes,
        max_delay: plan.max_delay,
        limit: options.max_records,
    };
    let _guard = rt.enter();
    Ok(plan.source.connector.build(SourceCx {
        batching,
        kafka: plan.kafka.as_ref(),
        stop,
        exit_when_idle: options.exit_when_idle,
        meta,
    })?)
}

/// The monitoring outputs, window state and breakers, when the pipeline has windows or
/// breakers (None otherwise).
fn monitoring(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    breakers: &Breakers,
    telemetry: &Arc<Telemetry>,
) -> Result<Option<(WindowIo, Option<Follower>)>> {
    let Some(m) = &plan.monitoring else {
        return Ok(None);
    };
    let kafka = plan.kafka.clone();
    if let Some(conn) = &kafka {
        // Breaker events are compacted: the topic keeps each breaker's latest state.
        let topics: Vec<(String, i32, bool)> = [
            (&m.metrics_topic, false),
            (&m.alerts_topic, false),
            (&m.events_topic, true),
        ]
        .into_iter()
        .filter_map(|(t, compact)| t.clone().map(|t| (t, 3, compact)))
        .collect();
        if !topics.is_empty() {
            rt.block_on(ensure_topics(conn, &topics))?;
        }
    }
    let webhook = match &m.alerts_webhook {
        Some((url, secret)) => {
            let key = secret
                .as_ref()
                .map(|r| r.read().map(String::into_bytes))
                .transpose()
                .map_err(|e| anyhow::anyhow!("alerts webhook: {e}"))?;
            Some(
                HttpTarget::new(url, "POST", Vec::new(), key, Duration::from_secs(10))
                    .map_err(|e| anyhow::anyhow!("alerts webhook: {e}"))?,
            )
        }
        None => None,
    };
    let outputs = MonitorOutputs::new(m, kafka.as_ref(), webhook, rt.handle().clone())?;
    let state = rt.block_on(WindowStateStore::open(&m.state))?;
    let configured = plan.source.kafka().and_then(|k| k.instance.clone());
    let instance = configured.clone().unwrap_or_else(|| "default".into());
    let member = configured.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let follower = match (&kafka, &m.events_topic) {
        (Some(conn), Some(topic)) => {
            let by_name = breakers
                .lock()
                .expect("breakers")
                .iter()
                .map(|(_, b)| (b.name().to_string(), b.clone()))
                .collect();
            let stop = Arc::new(AtomicBool::new(false));
            let h = follow_breakers(conn, topic, &member, by_name, stop.clone())?;
            Some((stop, h))
        }
        _ => None,
    };
    Ok(Some((
        WindowIo {
            outputs: Arc::new(std::sync::Mutex::new(outputs)),
            state: Arc::new(state),
            pipeline: plan.name.clone(),
            integration: plan.integration_id.clone(),
            instance,
            bounded: plan.source.is_bounded(),
            member,
            breakers: breakers.lock().expect("breakers").iter().cloned().collect(),
            telemetry: Some(telemetry.clone()),
        },
        follower,
    )))
}

/// SIGTERM/SIGINT stop the stream gracefully (stop reading, drain, commit, exit); a second
/// signal exits at once (uncommitted records are redelivered on restart: nothing is lost).
fn watch_signals(rt: &tokio::runtime::Runtime, stop: Arc<AtomicBool>, on_signal: Option<fn()>) {
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if let Some(f) = on_signal {
                f();
            }
            if n > 0 {
                eprintln!("second signal: exiting without draining");
                std::process::exit(130);
            }
            eprintln!(
                "stopping: draining in-flight batches and committing (signal again to exit now)"
            );
            stop.store(true, Ordering::Relaxed);
        }
    });
}
