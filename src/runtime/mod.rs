//! The executor: one task per source, stage and sink, connected by bounded channels.
//!
//! Bounded channels give backpressure (a slow sink slows the source instead of buffering
//! without limit) and let stages run in parallel on all cores. Batches are Arrow
//! `RecordBatch`es, so fanning one output out to several readers clones pointers, not data.
//!
//! Accounting: every source record ends delivered (written by a sink), dead-lettered or
//! filtered (dropped on purpose by a route or inner join); the summary shows the numbers and
//! that they add up to the records read.

pub mod dlq;
pub mod outcomes;
pub mod query;
pub mod summary;
pub mod sync;
pub mod telemetry;
pub mod testing;
pub mod topology;
pub mod windows;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

pub use crate::connectors::checkpoint::Checkpoints;
use crate::connectors::{BatchSink, BatchSource, DeadLetterSink, Durable, Settlement};
use crate::plan::Plan;
use crate::plan::graph::Upstream;
use crate::record::{DeadLetters, RECORD_INDEX};
pub use summary::{RunSummary, StageSummary};

/// Batches in flight per channel: enough to keep both cores busy, small enough to bound memory.
const CHANNEL_CAPACITY: usize = 4;

/// What flows on the channels between tasks.
#[derive(Clone)]
enum Msg {
    Batch(RecordBatch),
    /// Everything before this belongs to epochs up to this one (see `checkpoint`).
    Barrier(u64),
}

/// What flows to the dead-letter writer.
enum DeadMsg {
    Rows(String, DeadLetters),
    Barrier(u64),
}

#[derive(Default)]
struct StageCounters {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    dead: AtomicU64,
    filtered: AtomicU64,
    batches: AtomicU64,
    busy_nanos: AtomicU64,
}

/// Record indexes seen at the sinks and the DLQ (distinct: `all_matches` routes may deliver a
/// record to several sinks, and it still counts once). Bits below `base` were folded into
/// the totals once their epoch completed, so a long-running stream keeps only its in-flight
/// window.
#[derive(Default)]
struct Seen {
    base: u64,
    delivered: Vec<u64>,
    dead: Vec<u64>,
    parked: Vec<u64>,
    delivered_total: u64,
    dead_total: u64,
    parked_total: u64,
}

/// The `_record_index` column of a batch.
fn record_indexes(batch: &RecordBatch) -> &[i64] {
    batch
        .column_by_name(RECORD_INDEX)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .map(|a| a.values().as_ref())
        .unwrap_or_default()
}

impl Seen {
    fn mark(&mut self, which: Which, batch: &RecordBatch) {
        self.mark_indexes(which, record_indexes(batch).iter().copied());
    }

    fn mark_indexes(&mut self, which: Which, indexes: impl Iterator<Item = i64>) {
        let base = self.base;
        let bits = match which {
            Which::Delivered => &mut self.delivered,
            Which::Dead => &mut self.dead,
            Which::Parked => &mut self.parked,
        };
        for i in indexes {
            let Some(i) = (i as u64).checked_sub(base) else {
                continue;
            };
            let i = i as usize;
            if bits.len() <= i / 64 {
                bits.resize(i / 64 + 1, 0);
            }
            bits[i / 64] |= 1 << (i % 64);
        }
    }

    /// Folds whole words of records below `end` (final) into the totals.
    fn compact(&mut self, end: u64) {
        let words = (end.saturating_sub(self.base) / 64) as usize;
        if words == 0 {
            return;
        }
        for (bits, total) in [
            (&mut self.delivered, &mut self.delivered_total),
            (&mut self.dead, &mut self.dead_total),
            (&mut self.parked, &mut self.parked_total),
        ] {
            let n = words.min(bits.len());
            *total += count(&bits[..n]);
            bits.drain(..n);
        }
        self.base += words as u64 * 64;
    }

    fn delivered(&self) -> u64 {
        self.delivered_total + count(&self.delivered)
    }

    fn dead(&self) -> u64 {
        self.dead_total + count(&self.dead)
    }

    fn parked(&self) -> u64 {
        self.parked_total + count(&self.parked)
    }
}

#[derive(Clone, Copy)]
enum Which {
    Delivered,
    Dead,
    /// Handed to a delayed retry topic: its outcome is the retry worker's.
    Parked,
}

fn count(bits: &[u64]) -> u64 {
    bits.iter().map(|w| w.count_ones() as u64).sum()
}

/// Acks `epoch` once `durable` resolves (or now), on the runtime.
fn ack_when(
    handle: &tokio::runtime::Handle,
    checkpoints: &Arc<Checkpoints>,
    epoch: u64,
    durable: Option<Durable>,
    who: String,
) {
    match durable {
        None => checkpoints.ack(epoch),
        Some(f) => {
            let cp = checkpoints.clone();
            handle.spawn(async move {
                match f.await {
                    Ok(()) => cp.ack(epoch),
                    Err(e) => cp.fail(format!("{who}: {e}")),
                }
            });
        }
    }
}

/// Progress callback: (bytes read, total bytes if known, records read).
pub type Progress = Box<dyn Fn(u64, Option<u64>, u64) + Send>;

/// Optional parts of a run.
#[derive(Default)]
pub struct RunOptions {
    pub progress: Option<Progress>,
    /// Window outputs and state; without it windows are not run (`plexus test`).
    pub windows: Option<windows::WindowIo>,
    /// Live counters (`/metrics`).
    pub telemetry: Option<Arc<telemetry::Telemetry>>,
}

/// Runs a planned pipeline to completion with the given connectors: until the source ends
/// (files) or is stopped (streams; see `KafkaSource`).
pub async fn run(
    plan: Plan,
    source: Box<dyn BatchSource>,
    sinks: Vec<Box<dyn BatchSink>>,
    dlq: Box<dyn DeadLetterSink>,
    options: RunOptions,
) -> anyhow::Result<RunSummary> {
    let RunOptions {
        progress,
        windows: window_io,
        telemetry,
    } = options;
    let started = Instant::now();
    let Plan {
        name,
        integration_id,
        stages,
        sinks: sink_specs,
        windows: planned_windows,
        ..
    } = plan;
    // Windows over stage outputs run here (outcome windows in `outcomes::OutcomeStream`); without
    // window outputs (`plexus test`) they are not run.
    let stream_windows: Vec<_> = match &window_io {
        Some(_) => planned_windows
            .into_iter()
            .filter_map(|w| match w.input {
                crate::plan::windows::WindowInput::Stream(up) => Some((up, w)),
                crate::plan::windows::WindowInput::Outcomes => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let sh = Shared {
        seen: Arc::default(),
        // Parties: every sink, the dead-letter writer, every window (its state at the barrier).
        checkpoints: Arc::new(Checkpoints::new(
            sink_specs.len() + 1 + stream_windows.len(),
        )),
        handle: tokio::runtime::Handle::current(),
        telemetry,
    };
    let mut source = source;
    source.attach(sh.checkpoints.clone());
    // Every stage and every sink sends each barrier to the dead-letter writer (sinks send
    // their undeliverable rows there too).
    // Windows over stage outputs are nodes of the graph: stages with no output ports.
    let window_summaries = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stages = stages;
    for (up, w) in stream_windows {
        let io = window_io.clone().expect("stream windows need window io");
        stages.push(crate::plan::PlannedStage {
            name: w.name.clone(),
            kind: "window",
            input: up,
            operator: Box::new(windows::WindowNode::new(
                windows::Driver::start(w, &io)?,
                io,
                window_summaries.clone(),
            )),
            outputs: Vec::new(),
        });
    }
    let settlement = source.settlement();
    if let Some(s) = &settlement {
        sh.checkpoints.watch(s.clone());
    }
    let (dead_tx, dlq_task) =
        spawn_dead_letters(dlq, stages.len() + sink_specs.len(), settlement, &sh);
    // Who reads each upstream port.
    let mut readers: Readers = HashMap::new();
    let unavailable = Arc::new(AtomicU64::new(0));
    let mut sink_tasks = Vec::new();
    let mut sink_rows = Vec::new();
    for (spec, sink) in sink_specs.into_iter().zip(sinks) {
        let (task, rows) = spawn_sink(spec, sink, &mut readers, &dead_tx, unavailable.clone(), &sh);
        sink_tasks.push(task);
        sink_rows.push(rows);
    }
    // Stages, last first, so that each stage's readers exist when it is spawned.
    let mut tasks = Vec::new();
    let mut counters = Vec::new();
    let mut stage_meta = Vec::new();
    for (i, stage) in stages.into_iter().enumerate().rev() {
        let c = Arc::new(StageCounters::default());
        counters.push(c.clone());
        stage_meta.push((stage.name.clone(), stage.kind));
        tasks.push(spawn_stage(i, stage, &mut readers, &dead_tx, c, &sh));
    }
    drop(dead_tx);
    counters.reverse();
    stage_meta.reverse();
    let records_read = Arc::new(AtomicU64::new(0));
    let source_readers = readers.remove(&Upstream::Source).unwrap_or_default();
    let source_task = spawn_source(source, source_readers, progress, records_read.clone(), &sh);

    let (bytes, warnings) = source_task.await??;
    for t in tasks {
        t.await??;
    }
    for t in sink_tasks {
        t.await??;
    }
    let dead_rows = dlq_task.await??;
    let seen = sh.seen.lock().expect("seen");
    // Windows report in `windows`, not as stages.
    let stages = stage_meta
        .into_iter()
        .zip(counters)
        .filter(|((_, kind), _)| *kind != "window")
        .map(|((name, kind), c)| c.summary(name, kind))
        .collect::<Vec<_>>();
    let mut window_summaries = std::mem::take(&mut *window_summaries.lock().expect("windows"));
    window_summaries.sort_by_key(|w| w.name.clone());
    let filtered = stages.iter().map(|s| s.filtered).sum();
    Ok(RunSummary {
        pipeline: name,
        integration: integration_id,
        records_in: records_read.load(Ordering::Relaxed),
        bytes_in: bytes,
        delivered: seen.delivered(),
        dead_lettered: seen.dead(),
        unavailable: unavailable.load(Ordering::Relaxed),
        interrupted: false,
        parked: seen.parked(),
        retries: Vec::new(),
        breaker_transitions: Vec::new(),
        windows: window_summaries,
        dead_letter_rows: dead_rows,
        filtered,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        stages,
        sinks: sink_rows
            .into_iter()
            .map(|(n, r)| (n, r.load(Ordering::Relaxed)))
            .collect(),
        warnings,
    })
}

/// What every task of a run shares.
#[derive(Clone)]
struct Shared {
    seen: Arc<std::sync::Mutex<Seen>>,
    checkpoints: Arc<Checkpoints>,
    handle: tokio::runtime::Handle,
    telemetry: Option<Arc<telemetry::Telemetry>>,
}

/// Who reads each upstream port.
type Readers = HashMap<Upstream, Vec<mpsc::Sender<Msg>>>;

type Task<T> = tokio::task::JoinHandle<anyhow::Result<T>>;

impl StageCounters {
    fn summary(&self, name: String, kind: &str) -> StageSummary {
        StageSummary {
            name,
            kind: kind.to_string(),
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            dead_lettered: self.dead.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            busy_ms: self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Dead letters from every stage and sink go through one writer task. It acks an epoch once
/// every one of the `barrier_senders` has passed that epoch's barrier (each sends it after
/// its dead letters).
fn spawn_dead_letters(
    mut dlq: Box<dyn DeadLetterSink>,
    barrier_senders: usize,
    settlement: Option<Arc<dyn Settlement>>,
    sh: &Shared,
) -> (mpsc::Sender<DeadMsg>, Task<u64>) {
    let (dead_tx, mut dead_rx) = mpsc::channel::<DeadMsg>(CHANNEL_CAPACITY * 4);
    let sh = sh.clone();
    let task = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut n = 0;
        let mut barriers: HashMap<u64, usize> = HashMap::new();
        while let Some(msg) = dead_rx.blocking_recv() {
            match msg {
                DeadMsg::Rows(stage, dead) => {
                    dlq.write(&stage, &dead)?;
                    if let Some(s) = &settlement {
                        settle_dead(s.as_ref(), &stage, &dead);
                    }
                    sh.seen.lock().expect("seen").mark(Which::Dead, &dead.rows);
                    n += dead.rows.num_rows() as u64;
                    if let Some(t) = &sh.telemetry {
                        t.dead_letters
                            .fetch_add(dead.rows.num_rows() as u64, Ordering::Relaxed);
                    }
                }
                DeadMsg::Barrier(epoch) => {
                    let c = barriers.entry(epoch).or_default();
                    *c += 1;
                    if *c == barrier_senders {
                        barriers.remove(&epoch);
                        let durable = dlq.barrier()?;
                        ack_when(
                            &sh.handle,
                            &sh.checkpoints,
                            epoch,
                            durable,
                            "dead letters".into(),
                        );
                    }
                }
            }
        }
        dlq.finish()?;
        Ok(n)
    });
    (dead_tx, task)
}

/// Tells a settling source which of its records were dead-lettered, and why.
fn settle_dead(settlement: &dyn Settlement, stage: &str, dead: &DeadLetters) {
    let Some(offsets) = dead
        .rows
        .column_by_name(crate::record::OFFSET)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
    else {
        return;
    };
    for (i, offset) in offsets.iter().enumerate() {
        if let Some(offset) = offset {
            let rule = dead.rule.get(i).map_or("", String::as_str);
            let reason = dead.reason.get(i).map_or("", String::as_str);
            settlement.dead_letter(offset, stage, rule, reason);
        }
    }
}

/// A sink's task: writes batches, sends what it could not deliver to the dead letters, and
/// makes its writes durable at each barrier before acknowledging it.
fn spawn_sink(
    spec: crate::plan::PlannedSink,
    mut sink: Box<dyn BatchSink>,
    readers: &mut Readers,
    dead_tx: &mpsc::Sender<DeadMsg>,
    unavailable: Arc<AtomicU64>,
    sh: &Shared,
) -> (Task<()>, (String, Arc<AtomicU64>)) {
    let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL_CAPACITY);
    readers.entry(spec.input).or_default().push(tx);
    let rows = Arc::new(AtomicU64::new(0));
    let counted = (spec.name.clone(), rows.clone());
    let dead_tx = dead_tx.clone();
    let sh = sh.clone();
    let task = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let dlq_gone = |_| anyhow::anyhow!("dead-letter writer stopped");
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Batch(batch) => {
                    let span = tracing::info_span!(
                        "sink_batch",
                        sink = %spec.name,
                        rows = batch.num_rows() as i64,
                        parked = tracing::field::Empty,
                        dead = tracing::field::Empty,
                    );
                    let _entered = span.enter();
                    sink.write(&batch)?;
                    let outcome = sink.take_outcome();
                    unavailable.fetch_add(outcome.unavailable, Ordering::Relaxed);
                    span.record("parked", outcome.parked.len() as i64);
                    span.record(
                        "dead",
                        outcome
                            .dead
                            .iter()
                            .map(|d| d.rows.num_rows() as i64)
                            .sum::<i64>(),
                    );
                    let mut undelivered: std::collections::HashSet<i64> =
                        outcome.parked.iter().copied().collect();
                    for dead in &outcome.dead {
                        undelivered.extend(record_indexes(&dead.rows));
                    }
                    let delivered = record_indexes(&batch)
                        .iter()
                        .copied()
                        .filter(|i| !undelivered.contains(i));
                    {
                        let mut seen = sh.seen.lock().expect("seen");
                        seen.mark_indexes(Which::Delivered, delivered);
                        seen.mark_indexes(Which::Parked, outcome.parked.into_iter());
                    }
                    let written =
                        (batch.num_rows() - undelivered.len().min(batch.num_rows())) as u64;
                    rows.fetch_add(written, Ordering::Relaxed);
                    if let Some(t) = &sh.telemetry {
                        t.sink_rows(&spec.name, written);
                    }
                    for dead in outcome.dead {
                        dead_tx
                            .blocking_send(DeadMsg::Rows(spec.name.clone(), dead))
                            .map_err(dlq_gone)?;
                    }
                }
                Msg::Barrier(epoch) => {
                    let durable = sink.barrier()?;
                    ack_when(
                        &sh.handle,
                        &sh.checkpoints,
                        epoch,
                        durable,
                        format!("sink {}", spec.name),
                    );
                    // After this sink's dead letters of the epoch.
                    dead_tx
                        .blocking_send(DeadMsg::Barrier(epoch))
                        .map_err(dlq_gone)?;
                }
            }
        }
        sink.finish()?;
        Ok(())
    });
    (task, counted)
}

/// A stage's task: runs its operator on each batch, inline (short CPU bursts; the
/// multi-threaded runtime spreads stages over the cores), and passes barriers on.
fn spawn_stage(
    i: usize,
    stage: crate::plan::PlannedStage,
    readers: &mut Readers,
    dead_tx: &mpsc::Sender<DeadMsg>,
    c: Arc<StageCounters>,
    sh: &Shared,
) -> Task<()> {
    let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL_CAPACITY);
    // This stage reads `stage.input`: upstream stages are spawned after it (reverse order)
    // and find this sender there.
    readers.entry(stage.input).or_default().push(tx);
    let ports: Vec<Vec<mpsc::Sender<Msg>>> = (0..stage.outputs.len())
        .map(|port| {
            readers
                .remove(&Upstream::Stage { stage: i, port })
                .unwrap_or_default()
        })
        .collect();
    let dead_tx = dead_tx.clone();
    let stage_name = stage.name.clone();
    let mut operator = stage.operator;
    // Stateful operators (windows) tick while idle, are parties to checkpoints and may block.
    let tick = operator.tick_every();
    let checkpointed = operator.is_checkpointed();
    let sh = sh.clone();
    // One span per stage: traces (and an OpenTelemetry layer, when installed) show where a
    // batch spent its time; fields are names, never row content.
    let span = tracing::info_span!("stage", name = %stage.name, kind = stage.kind);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let stopped = |_| anyhow::anyhow!("a reader of stage {stage_name} stopped");
            let fail =
                |e: crate::operators::OperatorError| anyhow::anyhow!("stage {stage_name}: {e}");
            loop {
                let msg = match tick {
                    Some(every) => match tokio::time::timeout(every, rx.recv()).await {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(_) => {
                            tokio::task::block_in_place(|| operator.on_tick()).map_err(fail)?;
                            continue;
                        }
                    },
                    None => match rx.recv().await {
                        Some(m) => m,
                        None => break,
                    },
                };
                let batch = match msg {
                    Msg::Batch(b) => b,
                    Msg::Barrier(epoch) => {
                        let op = checkpointed.then_some(&mut operator);
                        pass_barrier(epoch, op, &stage_name, &ports, &dead_tx, &sh).await?;
                        continue;
                    }
                };
                if let Some(prepare) = operator.prepare(&batch) {
                    prepare
                        .await
                        .map_err(|e| anyhow::anyhow!("stage {stage_name}: {e}"))?;
                }
                let t = Instant::now();
                c.rows_in
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                c.batches.fetch_add(1, Ordering::Relaxed);
                // Operators run inline: they are short CPU bursts per batch, and the
                // multi-threaded runtime spreads stages over the cores.
                let batch_span = tracing::info_span!(
                    "batch",
                    rows_in = batch.num_rows() as i64,
                    rows_out = tracing::field::Empty,
                    dead = tracing::field::Empty,
                    filtered = tracing::field::Empty,
                );
                let out = if checkpointed {
                    tokio::task::block_in_place(|| batch_span.in_scope(|| operator.process(batch)))
                } else {
                    batch_span.in_scope(|| operator.process(batch))
                };
                let out = out.map_err(|e| anyhow::anyhow!("stage {stage_name}: {e}"))?;
                batch_span.record(
                    "rows_out",
                    out.outputs
                        .iter()
                        .flatten()
                        .map(|b| b.num_rows() as i64)
                        .sum::<i64>(),
                );
                batch_span.record(
                    "dead",
                    out.dead.as_ref().map_or(0, |d| d.rows.num_rows() as i64),
                );
                batch_span.record("filtered", out.filtered as i64);
                drop(batch_span);
                c.busy_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                c.filtered.fetch_add(out.filtered as u64, Ordering::Relaxed);
                if let Some(dead) = out.dead {
                    c.dead
                        .fetch_add(dead.rows.num_rows() as u64, Ordering::Relaxed);
                    dead_tx
                        .send(DeadMsg::Rows(stage_name.clone(), dead))
                        .await
                        .map_err(|_| anyhow::anyhow!("dead-letter writer stopped"))?;
                }
                for (port, batch) in out.outputs.into_iter().enumerate() {
                    let Some(batch) = batch else { continue };
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    c.rows_out
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    for r in &ports[port] {
                        r.send(Msg::Batch(batch.clone())).await.map_err(stopped)?;
                    }
                }
            }
            if checkpointed {
                tokio::task::block_in_place(|| operator.on_end()).map_err(fail)?;
            } else {
                operator.on_end().map_err(fail)?;
            }
            Ok::<(), anyhow::Error>(())
        },
        span,
    ))
}

/// A barrier at a stage: a checkpointed operator saves its state (the epoch is acked once its
/// outputs are durable); then the barrier goes to the dead-letter writer and every reader.
async fn pass_barrier(
    epoch: u64,
    checkpointed: Option<&mut Box<dyn crate::operators::Operator>>,
    stage_name: &str,
    ports: &[Vec<mpsc::Sender<Msg>>],
    dead_tx: &mpsc::Sender<DeadMsg>,
    sh: &Shared,
) -> anyhow::Result<()> {
    if let Some(operator) = checkpointed {
        let flushed = tokio::task::block_in_place(|| operator.on_barrier(epoch))
            .map_err(|e| anyhow::anyhow!("stage {stage_name}: {e}"))?;
        let durable = flushed.map(|f| -> Durable {
            Box::pin(async move { f.await.map_err(crate::connectors::ConnectorError::Other) })
        });
        ack_when(
            &sh.handle,
            &sh.checkpoints,
            epoch,
            durable,
            format!("window {stage_name}"),
        );
    }
    dead_tx
        .send(DeadMsg::Barrier(epoch))
        .await
        .map_err(|_| anyhow::anyhow!("dead-letter writer stopped"))?;
    for readers in ports {
        for r in readers {
            r.send(Msg::Barrier(epoch))
                .await
                .map_err(|_| anyhow::anyhow!("a reader of stage {stage_name} stopped"))?;
        }
    }
    Ok(())
}

/// The source, on a blocking thread: files are read synchronously, and librdkafka's poll
/// blocks. A checkpointed source follows each batch with a barrier and commits what
/// completed; at its end it waits for the last epochs and commits once more.
fn spawn_source(
    mut source: Box<dyn BatchSource>,
    source_readers: Vec<mpsc::Sender<Msg>>,
    progress: Option<Progress>,
    read_counter: Arc<AtomicU64>,
    sh: &Shared,
) -> Task<(u64, Vec<String>)> {
    let source_cp = sh.checkpoints.clone();
    let source_seen = sh.seen.clone();
    let source_tel = sh.telemetry.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Vec<String>)> {
        let mut bytes = 0;
        let mut epoch = 0u64;
        let send = |msg: Msg| -> anyhow::Result<()> {
            for r in &source_readers {
                r.blocking_send(msg.clone())
                    .map_err(|_| anyhow::anyhow!("the first stage stopped"))?;
            }
            Ok(())
        };
        let commit = |source: &mut Box<dyn BatchSource>, last: bool| -> anyhow::Result<()> {
            let done = source_cp.take_committable();
            if !done.is_empty()
                && let Err(e) = source.commit(&done, last)
            {
                // Not fatal: a later commit covers these offsets too.
                tracing::warn!(error = %e, "offset commit failed; retrying with the next one");
                source_cp.restore(done);
            }
            let (_, _, final_below) = source_cp.progress();
            source_seen
                .lock()
                .expect("seen")
                .compact(final_below.max(0) as u64);
            Ok(())
        };
        while let Some(batch) = source.next_batch()? {
            if let Some(f) = source_cp.failure() {
                anyhow::bail!("stopping: {f}");
            }
            let rows = batch.num_rows() as u64;
            if rows > 0 {
                let read = read_counter.fetch_add(rows, Ordering::Relaxed) + rows;
                if let Some(t) = &source_tel {
                    t.records_in.fetch_add(rows, Ordering::Relaxed);
                }
                send(Msg::Batch(batch))?;
                if let Some(positions) = source.positions() {
                    epoch += 1;
                    source_cp.register(epoch, positions, read as i64);
                    send(Msg::Barrier(epoch))?;
                }
            }
            commit(&mut source, false)?;
            let (done, total) = source.progress();
            bytes = done;
            if let Some(p) = &progress {
                p(done, total, read_counter.load(Ordering::Relaxed));
            }
        }
        drop(source_readers);
        if epoch > 0 {
            // Drain: every batch read is processed and acked before the last commit.
            if !source_cp.wait_all(std::time::Duration::from_secs(60)) {
                let why = source_cp
                    .failure()
                    .unwrap_or_else(|| "timed out waiting for sinks".into());
                commit(&mut source, true)?;
                anyhow::bail!("stopping: {why}");
            }
            commit(&mut source, true)?;
        }
        Ok((bytes, source.warnings()))
    })
}
