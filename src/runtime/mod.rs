//! The executor: one task per source, stage and sink, connected by bounded channels.
//!
//! Bounded channels give backpressure (a slow sink slows the source instead of buffering
//! without limit) and let stages run in parallel on all cores. Batches are Arrow
//! `RecordBatch`es, so fanning one output out to several readers clones pointers, not data.
//!
//! Accounting: every source record ends delivered (written by a sink), dead-lettered or
//! filtered (dropped on purpose by a route or inner join); the summary shows the numbers and
//! that they add up to the records read.

pub mod summary;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::connectors::{BatchSink, BatchSource, DeadLetterSink};
use crate::operators::{DeadLetters, RECORD_INDEX};
use crate::plan::Plan;
use crate::plan::graph::Upstream;
pub use summary::{RunSummary, StageSummary};

/// Batches in flight per channel: enough to keep both cores busy, small enough to bound memory.
const CHANNEL_CAPACITY: usize = 4;

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
/// record to several sinks, and it still counts once).
#[derive(Default)]
struct Seen {
    delivered: Vec<u64>,
    dead: Vec<u64>,
}

fn mark(bits: &mut Vec<u64>, batch: &RecordBatch) {
    let Some(idx) = batch
        .column_by_name(RECORD_INDEX)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
    else {
        return;
    };
    for &i in idx.values() {
        let i = i as usize;
        if bits.len() <= i / 64 {
            bits.resize(i / 64 + 1, 0);
        }
        bits[i / 64] |= 1 << (i % 64);
    }
}

fn count(bits: &[u64]) -> u64 {
    bits.iter().map(|w| w.count_ones() as u64).sum()
}

/// Progress callback: (bytes read, total bytes if known, records read).
pub type Progress = Box<dyn Fn(u64, Option<u64>, u64) + Send>;

/// Runs a planned pipeline to completion with the given connectors.
pub async fn run(
    plan: Plan,
    mut source: Box<dyn BatchSource>,
    sinks: Vec<Box<dyn BatchSink>>,
    mut dlq: Box<dyn DeadLetterSink>,
    progress: Option<Progress>,
) -> anyhow::Result<RunSummary> {
    let started = Instant::now();
    let Plan {
        name,
        integration_id,
        stages,
        sinks: sink_specs,
        ..
    } = plan;
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));

    // Who reads each upstream port.
    let mut readers: HashMap<Upstream, Vec<mpsc::Sender<RecordBatch>>> = HashMap::new();
    let mut tasks = Vec::new();

    // Dead letters from every stage go through one writer task.
    let (dead_tx, mut dead_rx) = mpsc::channel::<(String, DeadLetters)>(CHANNEL_CAPACITY * 4);
    let dlq_seen = seen.clone();
    let dlq_task = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut n = 0;
        while let Some((stage, dead)) = dead_rx.blocking_recv() {
            dlq.write(&stage, &dead)?;
            mark(&mut dlq_seen.lock().expect("seen").dead, &dead.rows);
            n += dead.rows.num_rows() as u64;
        }
        dlq.finish()?;
        Ok(n)
    });

    // Sinks.
    let mut sink_tasks = Vec::new();
    let mut sink_rows = Vec::new();
    for (spec, mut sink) in sink_specs.into_iter().zip(sinks) {
        let (tx, mut rx) = mpsc::channel::<RecordBatch>(CHANNEL_CAPACITY);
        readers.entry(spec.input).or_default().push(tx);
        let rows = Arc::new(AtomicU64::new(0));
        sink_rows.push((spec.name.clone(), rows.clone()));
        let sink_seen = seen.clone();
        sink_tasks.push(tokio::task::spawn_blocking(
            move || -> anyhow::Result<()> {
                while let Some(batch) = rx.blocking_recv() {
                    sink.write(&batch)?;
                    rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    mark(&mut sink_seen.lock().expect("seen").delivered, &batch);
                }
                sink.finish()?;
                Ok(())
            },
        ));
    }

    // Stages, last first, so that each stage's readers exist when it is spawned.
    let mut counters = Vec::new();
    let mut stage_meta = Vec::new();
    let stage_count = stages.len();
    for (i, stage) in stages.into_iter().enumerate().rev() {
        let (tx, mut rx) = mpsc::channel::<RecordBatch>(CHANNEL_CAPACITY);
        // This stage reads `stage.input`: upstream stages are spawned after it (reverse
        // order) and find this sender there.
        readers.entry(stage.input).or_default().push(tx);
        let ports: Vec<Vec<mpsc::Sender<RecordBatch>>> = (0..stage.outputs.len())
            .map(|port| {
                readers
                    .remove(&Upstream::Stage { stage: i, port })
                    .unwrap_or_default()
            })
            .collect();
        let c = Arc::new(StageCounters::default());
        counters.push(c.clone());
        stage_meta.push((stage.name.clone(), stage.kind));
        let dead_tx = dead_tx.clone();
        let stage_name = stage.name.clone();
        let mut operator = stage.operator;
        tasks.push(tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                let t = Instant::now();
                c.rows_in
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                c.batches.fetch_add(1, Ordering::Relaxed);
                // Operators run inline: they are short CPU bursts per batch, and the
                // multi-threaded runtime spreads stages over the cores.
                let out = operator.process(batch);
                let out = out.map_err(|e| anyhow::anyhow!("stage {stage_name}: {e}"))?;
                c.busy_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                c.filtered.fetch_add(out.filtered as u64, Ordering::Relaxed);
                if let Some(dead) = out.dead {
                    c.dead
                        .fetch_add(dead.rows.num_rows() as u64, Ordering::Relaxed);
                    dead_tx
                        .send((stage_name.clone(), dead))
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
                        r.send(batch.clone()).await.map_err(|_| {
                            anyhow::anyhow!("a reader of stage {stage_name} stopped")
                        })?;
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    drop(dead_tx);
    counters.reverse();
    stage_meta.reverse();
    debug_assert_eq!(counters.len(), stage_count);

    // The source, on a blocking thread: files are read synchronously.
    let source_readers = readers.remove(&Upstream::Source).unwrap_or_default();
    let records_read = Arc::new(AtomicU64::new(0));
    let read_counter = records_read.clone();
    let source_task = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Vec<String>)> {
        let mut bytes = 0;
        while let Some(batch) = source.next_batch()? {
            read_counter.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            for r in &source_readers {
                r.blocking_send(batch.clone())
                    .map_err(|_| anyhow::anyhow!("the first stage stopped"))?;
            }
            let (done, total) = source.progress();
            bytes = done;
            if let Some(p) = &progress {
                p(done, total, read_counter.load(Ordering::Relaxed));
            }
        }
        Ok((bytes, source.warnings()))
    });

    let (bytes, warnings) = source_task.await??;
    for t in tasks {
        t.await??;
    }
    for t in sink_tasks {
        t.await??;
    }
    let dead_rows = dlq_task.await??;
    let elapsed = started.elapsed();

    let seen = seen.lock().expect("seen");
    let stages = stage_meta
        .into_iter()
        .zip(counters)
        .map(|((name, kind), c)| StageSummary {
            name,
            kind: kind.to_string(),
            rows_in: c.rows_in.load(Ordering::Relaxed),
            rows_out: c.rows_out.load(Ordering::Relaxed),
            dead_lettered: c.dead.load(Ordering::Relaxed),
            filtered: c.filtered.load(Ordering::Relaxed),
            busy_ms: c.busy_nanos.load(Ordering::Relaxed) as f64 / 1e6,
        })
        .collect::<Vec<_>>();
    let filtered = stages.iter().map(|s| s.filtered).sum();
    Ok(RunSummary {
        pipeline: name,
        integration: integration_id,
        records_in: records_read.load(Ordering::Relaxed),
        bytes_in: bytes,
        delivered: count(&seen.delivered),
        dead_lettered: count(&seen.dead),
        dead_letter_rows: dead_rows,
        filtered,
        elapsed_ms: elapsed.as_secs_f64() * 1e3,
        stages,
        sinks: sink_rows
            .into_iter()
            .map(|(n, r)| (n, r.load(Ordering::Relaxed)))
            .collect(),
        warnings,
    })
}
