//! `plexus run|validate|test PIPELINE`: the pipeline commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;

use crate::connectors::dlq::DlqFile;
use crate::connectors::file::{FileSink, FileSource};
use crate::connectors::memory::{MemoryDlq, MemorySink};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::connectors::http::{HttpSink, HttpSinkConfig, HttpTarget};
use crate::connectors::kafka::retry::{
    RetryStats, RetryTopics, RetryWorkerConfig, retry_topics, run_worker,
};
use crate::connectors::kafka::sink::KafkaSinkConfig;
use crate::connectors::kafka::source::KafkaSourceConfig;
use crate::connectors::kafka::{KafkaDlq, KafkaSink, KafkaSource, RecordMeta, ensure_topics};
use crate::connectors::monitoring::MonitorOutputs;
use crate::connectors::monitoring::follow::spawn as follow_breakers;
use crate::connectors::monitoring::state::WindowStateStore;
use crate::connectors::schema_registry::SchemaRegistry;
use crate::connectors::{BatchSink, BatchSource, ConnectorError, DeadLetterSink};
use crate::metrics::outcome::OutcomeTap;
use crate::operators::parse::raw_batch;
use crate::plan::graph::{HttpSinkPlan, SourceFormat};
use crate::plan::windows::{MetricsLocation, PlannedWindow, StateStore, WindowInput};
use crate::plan::{Plan, build};
use crate::resilience::breaker::SharedBreaker;
use crate::runtime::RunOptions;
use crate::runtime::summary::{EXIT_FAILED, EXIT_USAGE};
use crate::runtime::telemetry::{Telemetry, serve as serve_metrics};
use crate::runtime::windows::{Monitor, WindowIo};
use crate::spec::{PipelineSpec, SpecErrors};

async fn load(path: &Path) -> Result<(PipelineSpec, Plan), SpecErrors> {
    let spec = PipelineSpec::load(path)?;
    let plan = build(&spec).await?;
    Ok((spec, plan))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// `plexus validate`: type-checks every pipeline given; exit 1 on any error.
pub fn validate(paths: &[PathBuf]) -> Result<ExitCode> {
    let rt = runtime()?;
    let mut failed = false;
    for path in paths {
        // `plexus validate pipelines/*.yaml` also meets the test-case files beside the
        // pipelines: they are not pipelines (`plexus test` checks them).
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
        {
            println!(
                "skipped: {}: test cases, checked by `plexus test` on their pipeline",
                path.display()
            );
            continue;
        }
        match rt.block_on(load(path)) {
            Ok((_, plan)) => {
                // Output directories that do not exist yet are created by the run: say so.
                let mut missing: Vec<String> = plan
                    .sinks
                    .iter()
                    .filter_map(|s| s.path.as_deref())
                    .chain(plan.dlq.as_deref())
                    .filter_map(|p| p.parent())
                    .filter(|d| !d.as_os_str().is_empty() && !d.exists())
                    .map(|d| d.display().to_string())
                    .collect();
                missing.sort();
                missing.dedup();
                let creates = if missing.is_empty() {
                    String::new()
                } else {
                    format!("; the run creates {}", missing.join(", "))
                };
                println!(
                    "ok: {}: {} stages, {} sinks, source {} file(s){creates}",
                    path.display(),
                    plan.stages.len(),
                    plan.sinks.len(),
                    plan.source.paths.len()
                )
            }
            Err(errors) => {
                failed = true;
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Options of `plexus run`.
pub struct RunArgs {
    pub pipeline: PathBuf,
    pub input: Option<String>,
    pub output: Option<PathBuf>,
    pub json: bool,
    pub exit_when_idle: Option<String>,
    pub max_records: Option<u64>,
    /// Serve Prometheus `/metrics` here (`127.0.0.1:9898`).
    pub metrics_addr: Option<String>,
}

/// `plexus run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    let (_, mut plan) = match rt.block_on(load(&args.pipeline)) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    if let Some(input) = &args.input {
        plan.source.paths = if input == "-" {
            vec![PathBuf::from("-")]
        } else {
            let matched: Vec<PathBuf> = glob::glob(input)
                .with_context(|| format!("bad input pattern {input}"))?
                .filter_map(Result::ok)
                .collect();
            anyhow::ensure!(!matched.is_empty(), "no input file matches {input}");
            matched
        };
    }
    if let Some(dir) = &args.output {
        // Outputs keep their file names, in the given directory.
        for s in &mut plan.sinks {
            if let Some(p) = &s.path {
                s.path = Some(dir.join(p.file_name().unwrap_or_default()));
            }
        }
        for s in &mut plan.sinks {
            if let Some(events) = s
                .http
                .as_mut()
                .and_then(|h| h.sync.as_mut())
                .map(|sy| &mut sy.events_path)
            {
                *events = dir.join(events.file_name().unwrap_or_default());
            }
        }
        if let Some(d) = &plan.dlq {
            plan.dlq = Some(dir.join(d.file_name().unwrap_or_default()));
        } else if plan.dlq_topic.is_none() {
            // The default dead-letter file goes with the other outputs (where `plexus query
            // --output` looks for it), not into the working directory.
            plan.dlq = Some(dir.join(format!("{}.dlq.ndjson", plan.name)));
        }
        if let Some(m) = &mut plan.monitoring {
            let moved = |p: &Path| dir.join(p.file_name().unwrap_or_default());
            // Local metrics and the state beside them move; object-store metrics stay where
            // the pipeline says (and so does their state).
            if let MetricsLocation::Dir(old) = m.metrics.clone() {
                let new = moved(&old);
                if m.state == StateStore::Dir(old.join("_state")) {
                    m.state = StateStore::Dir(new.join("_state"));
                }
                m.metrics = MetricsLocation::Dir(new);
            }
            m.events_path = moved(&m.events_path);
            m.alerts_path = moved(&m.alerts_path);
        }
    }
    let idle = args
        .exit_when_idle
        .as_deref()
        .map(crate::spec::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--exit-when-idle: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let meta = RecordMeta::default();
    let source: Box<dyn BatchSource> = match &plan.source.kafka {
        Some(k) => {
            let conn = plan.kafka.clone().unwrap_or_default();
            let config = KafkaSourceConfig {
                topics: k.topics.clone(),
                pattern: k.pattern.clone(),
                group: k.group.clone(),
                start: k.start.clone(),
                instance: k.instance.clone(),
                format: plan.source.format,
                max_rows: plan.max_rows,
                max_bytes: plan.max_bytes,
                max_delay: plan.max_delay,
                limit: args.max_records,
            };
            let _guard = rt.enter();
            watch_signals(&rt, stop.clone());
            Box::new(KafkaSource::new(
                &conn,
                config,
                stop.clone(),
                idle,
                meta.clone(),
            )?)
        }
        None => {
            // A signal stops the reading; what was read is finished and accounted for.
            let _guard = rt.enter();
            watch_signals(&rt, stop.clone());
            Box::new(
                FileSource::new(plan.source.paths.clone(), plan.source.format, plan.max_rows)
                    .with_stop(stop.clone())
                    .with_limit(args.max_records),
            )
        }
    };
    // A batch run's files appear whole when it ends; a stream's grow in place.
    let staged = plan.source.kafka.is_none();
    let registry = match &plan.registry {
        Some(r) => Some(SchemaRegistry::new(r).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mut sinks: Vec<Box<dyn BatchSink>> = Vec::new();
    let main_done = Arc::new(AtomicBool::new(false));
    let breakers: Breakers = Arc::default();
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
    let mut workers = Vec::new();
    let mut http_sinks: std::collections::HashMap<usize, Box<dyn BatchSink>> =
        std::collections::HashMap::new();
    let http_plans: Vec<_> = plan.sinks.iter_mut().map(|s| s.http.take()).collect();
    for (i, h) in http_plans.into_iter().enumerate() {
        let Some(h) = h else { continue };
        let (name, provenance) = (plan.sinks[i].name.clone(), plan.sinks[i].provenance);
        if let Some(sync) = h.sync.clone() {
            let sink = fhir_sync_sink(&rt, &plan, &name, &h, &sync, tap.clone(), &breakers)?;
            http_sinks.insert(i, Box::new(sink));
            continue;
        }
        {
            let (sink, worker) = http_sink(
                &rt,
                &plan,
                &name,
                provenance,
                h,
                RetryRun {
                    stop: stop.clone(),
                    main_done: main_done.clone(),
                    idle: idle.unwrap_or(std::time::Duration::from_secs(2)),
                    breakers: breakers.clone(),
                    outcomes: tap.clone(),
                },
            )?;
            http_sinks.insert(i, Box::new(sink));
            workers.extend(worker);
        }
    }
    let mut http_sinks_taken = http_sinks;
    for (i, s) in plan.sinks.iter_mut().enumerate() {
        if let Some(sink) = http_sinks_taken.remove(&i) {
            sinks.push(sink);
            continue;
        }
        match s.kafka.take() {
            Some(k) => {
                let conn = plan.kafka.clone().unwrap_or_default();
                let config = KafkaSinkConfig {
                    name: s.name.clone(),
                    topic: k.topic,
                    key: k.key,
                    avro: k.avro,
                    subject: k.subject,
                    avro_schema: k.avro_schema,
                    provenance: s.provenance,
                    pipeline: plan.name.clone(),
                    integration: plan.integration_id.clone(),
                };
                let sink = rt.block_on(KafkaSink::create(
                    &conn,
                    config,
                    &s.schema,
                    registry.as_ref(),
                ))?;
                sinks.push(Box::new(sink));
            }
            None => sinks.push(Box::new(FileSink::create(
                &s.name,
                s.path.as_deref(),
                s.format,
                &s.schema,
                s.provenance,
                staged,
            )?)),
        }
    }
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
    let dlq_topic = plan.dlq_topic.clone();
    let progress = progress_bar(&args);
    let telemetry = Arc::new(Telemetry::new(&plan.name, &plan.integration_id));
    for (sink, b) in breakers.lock().expect("breakers").iter() {
        telemetry.add_breaker(sink, b.clone());
    }
    let server = match &args.metrics_addr {
        Some(addr) => {
            let addr: std::net::SocketAddr = addr
                .parse()
                .with_context(|| format!("--metrics-addr {addr}: not host:port"))?;
            let _guard = rt.enter();
            let h = rt
                .block_on(serve_metrics(addr, telemetry.clone()))
                .with_context(|| format!("--metrics-addr {addr}"))?;
            eprintln!("metrics: http://{addr}/metrics");
            Some(h)
        }
        None => None,
    };
    let mut follower = None;
    let (window_io, monitor) = match monitoring(&rt, &plan, &breakers, &telemetry)? {
        Some((io, f)) => {
            follower = f;
            // Also without outcome windows: the monitor publishes the breaker events.
            let rx = tap_rx.unwrap_or_else(|| OutcomeTap::channel().1);
            let _guard = rt.enter();
            let monitor = Monitor::start(outcome_windows, rx, io.clone())?;
            (Some(io), Some(monitor))
        }
        None => (None, None),
    };
    // The sinks hold the tap; the monitor ends when told, after the retry workers.
    drop(tap);
    let result = rt.block_on(crate::runtime::run(
        plan,
        source,
        sinks,
        dlq,
        RunOptions {
            progress,
            windows: window_io,
            telemetry: Some(telemetry.clone()),
        },
    ));
    if let Some(s) = server {
        s.abort();
    }
    // The retry workers finish what is due, then stop (or stop now on a signal).
    main_done.store(true, Ordering::Relaxed);
    // From here on the run had started: a failure is exit code 1, not a usage error.
    let failed = |e: anyhow::Error| {
        crate::cli::end_progress_line();
        eprintln!("error: the run failed: {e:#}");
        Ok(ExitCode::from(EXIT_FAILED))
    };
    let mut retries = Vec::new();
    for w in workers {
        match w.join() {
            Ok(Ok(stats)) => retries.push(stats),
            Ok(Err(e)) => return failed(anyhow::anyhow!("retry worker: {e}")),
            Err(_) => return failed(anyhow::anyhow!("retry worker panicked")),
        }
    }
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    summary.retries = retries;
    // A stream runs until it is told to stop; a file run stopped early did not finish.
    summary.interrupted = staged && stop.load(Ordering::Relaxed);
    if let Some(m) = monitor {
        summary.windows.extend(rt.block_on(m.stop())?);
    }
    if let Some((stop, h)) = follower {
        stop.store(true, Ordering::Relaxed);
        let _ = h.join();
    }
    for (_, b) in breakers.lock().expect("breakers").iter() {
        summary.breaker_transitions.extend(b.transitions());
    }
    crate::cli::end_progress_line();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprint!("{}", summary.render());
        if summary.dead_lettered > 0 {
            match &dlq_topic {
                Some(t) => eprintln!("dead letters: topic {t} (plexus dlq list)"),
                None => eprintln!("dead letters: {}", dlq_path.display()),
            }
        }
    }
    Ok(ExitCode::from(summary.exit_code()))
}

/// The breaker-event follower: its stop flag and thread.
type Follower = (Arc<AtomicBool>, std::thread::JoinHandle<()>);

/// The run's breakers, by sink name.
type Breakers = Arc<std::sync::Mutex<Vec<(String, SharedBreaker)>>>;

/// What a retry worker needs from the run.
struct RetryRun {
    stop: Arc<AtomicBool>,
    main_done: Arc<AtomicBool>,
    idle: std::time::Duration,
    breakers: Breakers,
    outcomes: OutcomeTap,
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
                HttpTarget::new(
                    url,
                    "POST",
                    Vec::new(),
                    key,
                    std::time::Duration::from_secs(10),
                )
                .map_err(|e| anyhow::anyhow!("alerts webhook: {e}"))?,
            )
        }
        None => None,
    };
    let outputs = MonitorOutputs::new(m, kafka.as_ref(), webhook, rt.handle().clone())?;
    let state = rt.block_on(WindowStateStore::open(&m.state))?;
    let configured = plan.source.kafka.as_ref().and_then(|k| k.instance.clone());
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
            bounded: plan.source.kafka.is_none(),
            member,
            breakers: breakers.lock().expect("breakers").iter().cloned().collect(),
            telemetry: Some(telemetry.clone()),
        },
        follower,
    )))
}

type Worker = std::thread::JoinHandle<Result<RetryStats, ConnectorError>>;

/// An HTTP sink, and the retry worker of its retry topics when it has them.
/// A `fhir` sink with `sync:`: every resource through the sync state.
fn fhir_sync_sink(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    name: &str,
    h: &HttpSinkPlan,
    sync: &crate::plan::graph::SyncPlan,
    outcomes: OutcomeTap,
    breakers: &Breakers,
) -> Result<crate::connectors::fhir_sync::FhirSyncSink> {
    use crate::fhir::client::FhirClient;
    let in_sink = |e: String| anyhow::anyhow!("sink {name}: {e}");
    let state = sync.state.location().map_err(in_sink)?;
    let config = h.fhir_client_config().map_err(in_sink)?;
    let mut client = FhirClient::new(config)?;
    if let Some(c) = h.breaker.clone() {
        let b = SharedBreaker::new(&format!("{}/{name}", plan.integration_id), c);
        breakers
            .lock()
            .expect("breakers")
            .push((name.to_string(), b.clone()));
        client = client.with_breaker(b);
    }
    let store = rt
        .block_on(crate::sync::store::SyncStore::open(&state))
        .with_context(|| format!("sink {name}"))?;
    let events = sync.open_events(plan.kafka.as_ref()).map_err(in_sink)?;
    let syncer = crate::sync::Syncer {
        integration: plan.integration_id.clone(),
        owner: format!("{}-{}", plan.name, std::process::id()),
        store,
        client,
        policy: sync.policy,
        lease: sync.lease,
        events: Some(events),
    };
    Ok(crate::connectors::fhir_sync::FhirSyncSink::new(
        name,
        syncer,
        rt.handle().clone(),
        outcomes,
        h.concurrency,
    ))
}

fn http_sink(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    name: &str,
    provenance: bool,
    h: HttpSinkPlan,
    run: RetryRun,
) -> Result<(HttpSink, Option<Worker>)> {
    let in_sink = |e: String| anyhow::anyhow!("sink {name}: {e}");
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
    let breaker = h
        .breaker
        .clone()
        .map(|c| SharedBreaker::new(&format!("{}/{name}", plan.integration_id), c));
    let config = HttpSinkConfig {
        name: name.to_string(),
        target: target.clone(),
        policy: h.retry.clone(),
        concurrency: h.concurrency,
        provenance,
        breaker: breaker.clone(),
        outcomes: run.outcomes.clone(),
        fhir: h.fhir,
    };
    if let Some(b) = &breaker {
        run.breakers
            .lock()
            .expect("breakers")
            .push((name.to_string(), b.clone()));
    }
    let Some(base) = &h.retry_topic else {
        return Ok((HttpSink::new(config, rt.handle().clone(), None), None));
    };
    let conn = plan.kafka.clone().unwrap_or_default();
    let topics: Vec<(String, i32, bool)> = retry_topics(base, &h.retry)
        .into_iter()
        .map(|t| (t, 3, false))
        .collect();
    rt.block_on(ensure_topics(&conn, &topics))?;
    let parking = RetryTopics::new(&conn, base, &plan.name, &plan.integration_id, name)?;
    let group = match &plan.source.kafka {
        Some(k) => k.group.clone(),
        None => format!("plexus-{}", plan.name),
    };
    let worker_config = RetryWorkerConfig {
        base: base.clone(),
        group: format!("{group}.retry.{name}"),
        sink: name.to_string(),
        pipeline: plan.name.clone(),
        integration: plan.integration_id.clone(),
        dlq_topic: plan
            .dlq_topic
            .clone()
            .context("retry topics need a dead-letter topic")?,
        policy: h.retry.clone(),
        concurrency: h.concurrency,
        outcomes: run.outcomes.clone(),
    };
    let handle = rt.handle().clone();
    let worker = std::thread::Builder::new()
        .name(format!("retry-{name}"))
        .spawn(move || {
            run_worker(
                &conn,
                worker_config,
                target,
                handle,
                run.stop,
                run.main_done,
                run.idle,
                breaker,
            )
        })
        .context("starting the retry worker")?;
    Ok((
        HttpSink::new(config, rt.handle().clone(), Some(parking)),
        Some(worker),
    ))
}

/// SIGTERM/SIGINT stop the stream gracefully (stop reading, drain, commit, exit); a second
/// signal exits at once (uncommitted records are redelivered on restart: nothing is lost).
fn watch_signals(rt: &tokio::runtime::Runtime, stop: Arc<AtomicBool>) {
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
            crate::cli::end_progress_line();
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

/// A progress line on a terminal (stderr), redrawn at most ten times a second.
fn progress_bar(args: &RunArgs) -> Option<crate::runtime::Progress> {
    if args.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let started = std::time::Instant::now();
    let last = std::sync::Mutex::new(std::time::Instant::now());
    Some(Box::new(move |done, total, records| {
        let mut last = last.lock().expect("progress lock");
        if last.elapsed().as_millis() < 100 {
            return;
        }
        *last = std::time::Instant::now();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let pct = total
            .filter(|&t| t > 0)
            .map(|t| format!("{:5.1}% ", 100.0 * done as f64 / t as f64))
            .unwrap_or_default();
        eprint!(
            "\r{pct}{records} records, {:.1} MB, {:.0} records/s   ",
            done as f64 / 1e6,
            records as f64 / secs
        );
        crate::cli::PROGRESS_SHOWN.store(true, std::sync::atomic::Ordering::Relaxed);
    }))
}

/// A source over bytes held in memory (test inputs).
struct MemorySource {
    batches: std::vec::IntoIter<RecordBatch>,
    len: u64,
}

impl MemorySource {
    fn new(data: &[u8], format: SourceFormat, max_rows: usize) -> Self {
        let mut warnings = Vec::new();
        let spans = crate::connectors::file::source::frame(data, format, "test", &mut warnings);
        let records: Vec<(usize, &[u8])> = spans.iter().map(|&(s, e)| (s, &data[s..e])).collect();
        let batches = records
            .chunks(max_rows.max(1))
            .enumerate()
            .map(|(i, chunk)| raw_batch("test", chunk, i * max_rows.max(1)))
            .collect::<Vec<_>>();
        MemorySource {
            batches: batches.into_iter(),
            len: data.len() as u64,
        }
    }
}

impl BatchSource for MemorySource {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        Ok(self.batches.next())
    }
    fn progress(&self) -> (u64, Option<u64>) {
        (self.len, Some(self.len))
    }
}

/// Rows of batches as JSON objects (what the NDJSON sink would write).
fn rows_as_json(
    batches: &[RecordBatch],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        for b in batches {
            let keep: Vec<usize> = (0..b.num_columns())
                .filter(|&i| b.schema().field(i).name() != crate::operators::RAW)
                .collect();
            w.write(&b.project(&keep)?)?;
        }
        w.finish()?;
    }
    buf.split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Ok(serde_json::from_slice(l)?))
        .collect()
}

/// Whether `actual` has every expected key with an equal value. Test files are YAML, where
/// `42` and `"42"` read the same, so values compare as text; for `reason`, containment.
fn matches(
    expected: &indexmap::IndexMap<String, serde_json::Value>,
    actual: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for (k, want) in expected {
        let Some(got) = actual.get(k) else {
            return Err(format!("no column {k:?}"));
        };
        let (w, g) = (text(want), text(got));
        let ok = if k == "reason" {
            g.contains(&w)
        } else {
            w == g
        };
        if !ok {
            return Err(format!("{k}: expected {w:?}, got {g:?}"));
        }
    }
    Ok(())
}

/// `plexus test`: runs the pipeline's test cases against its real graph (files replaced by
/// memory); exit 1 if any fails.
pub fn test(path: &Path) -> Result<ExitCode> {
    let rt = runtime()?;
    let spec = match PipelineSpec::load(path) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    if spec.tests.is_empty() {
        eprintln!(
            "{}: no test cases (add `tests:` or a sibling .test.yaml)",
            path.display()
        );
        return Ok(ExitCode::from(1));
    }
    let mut failures = 0;
    for case in &spec.tests {
        let plan = match rt.block_on(build(&spec)) {
            Ok(p) => p,
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
                return Ok(ExitCode::from(1));
            }
        };
        let sink_names: Vec<String> = plan.sinks.iter().map(|s| s.name.clone()).collect();
        let memory: Vec<MemorySink> = sink_names.iter().map(|_| MemorySink::default()).collect();
        let sinks: Vec<Box<dyn BatchSink>> = memory
            .iter()
            .map(|m| Box::new(m.clone()) as Box<dyn BatchSink>)
            .collect();
        let dlq = MemoryDlq::default();
        let source = Box::new(MemorySource::new(
            case.input.as_bytes(),
            plan.source.format,
            plan.max_rows,
        ));
        let summary = rt.block_on(crate::runtime::run(
            plan,
            source,
            sinks,
            Box::new(dlq.clone()),
            RunOptions::default(),
        ))?;
        let mut problems = Vec::new();
        for (target, expected_rows) in &case.expect {
            let actual: Vec<serde_json::Map<String, serde_json::Value>> = if target == "dlq" {
                dlq.records
                    .lock()
                    .expect("dlq")
                    .iter()
                    .map(|r| match serde_json::to_value(r) {
                        Ok(serde_json::Value::Object(m)) => m,
                        _ => serde_json::Map::new(),
                    })
                    .collect()
            } else {
                match sink_names.iter().position(|n| n == target) {
                    Some(i) => rows_as_json(&memory[i].batches.lock().expect("sink"))?,
                    None => {
                        problems.push(format!("expect: no sink named {target:?}"));
                        continue;
                    }
                }
            };
            if actual.len() != expected_rows.len() {
                problems.push(format!(
                    "{target}: expected {} rows, got {}",
                    expected_rows.len(),
                    actual.len()
                ));
                continue;
            }
            for (i, (want, got)) in expected_rows.iter().zip(&actual).enumerate() {
                if let Err(e) = matches(want, got) {
                    problems.push(format!("{target} row {}: {e}", i + 1));
                }
            }
        }
        if summary.pending() != 0 {
            problems.push(format!("{} records unaccounted for", summary.pending()));
        }
        if problems.is_empty() {
            println!("ok   {}", case.name.as_str());
        } else {
            failures += 1;
            println!("FAIL {}", case.name.as_str());
            for p in problems {
                println!("     {p}");
            }
        }
    }
    println!(
        "{} passed, {} failed",
        spec.tests.len() - failures,
        failures
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
