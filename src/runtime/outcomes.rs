//! The outcome stream: the graph's second source. Sinks and retry workers report each call's
//! outcome into an `OutcomeTap` as it completes; this node batches those reports into Arrow
//! batches (`metrics::outcome::outcome_batch`) and drives its readers through the same
//! operator hooks the stages have: the windows over `outcomes` (`WindowNode`s, as over a
//! stage) and the breaker-event publisher.
//!
//! It starts before the flow and ends after the retry workers, which keep reporting after the
//! flow's last batch; so `Topology` runs it beside `runtime::run`, not inside. Outcomes arrive
//! outside the flow's epochs, so its nodes are checkpointed on a timer instead of at barriers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use tokio::sync::{Notify, mpsc};

use super::windows::{Driver, WindowIo, WindowNode, WindowSummary};
use crate::connectors::monitoring::BreakerEvent;
use crate::metrics::outcome::{OutcomeRow, outcome_batch};
use crate::operators::{Operator, OperatorError, StageOutput};
use crate::plan::windows::PlannedWindow;

type Res<T> = anyhow::Result<T>;

/// Reports per batch at most; a busy stream batches by time.
const BATCH_ROWS: usize = 4096;
/// How often reports are batched, processing-time windows fire and breaker transitions are
/// published.
const TICK: Duration = Duration::from_millis(100);
/// How often the nodes' state is saved and their outputs flushed (and at the end).
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// The running outcome stream.
pub struct OutcomeStream {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<Res<Vec<WindowSummary>>>,
}

impl OutcomeStream {
    /// Starts the stream's nodes: one per window over `outcomes`, then the breaker-event
    /// publisher (last: its end writes the last events and closes the monitoring outputs).
    pub fn start(
        windows: Vec<PlannedWindow>,
        outcomes: mpsc::UnboundedReceiver<OutcomeRow>,
        io: WindowIo,
    ) -> Res<OutcomeStream> {
        let summaries = Arc::new(Mutex::new(Vec::new()));
        let mut nodes: Vec<Box<dyn Operator>> = Vec::new();
        for w in windows {
            let driver = Driver::start(w, &io)?;
            nodes.push(Box::new(
                WindowNode::new(driver, io.clone(), summaries.clone()).ticking_every(TICK),
            ));
        }
        nodes.push(Box::new(BreakerEvents {
            io: io.clone(),
            published: HashMap::new(),
        }));
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(drive(
            nodes,
            outcomes,
            io.integration.clone(),
            stop.clone(),
            summaries,
        ));
        Ok(OutcomeStream { stop, task })
    }

    /// Drains what was reported, ends every node and returns the windows' summaries.
    pub async fn stop(self) -> Res<Vec<WindowSummary>> {
        self.stop.notify_one();
        self.task.await?
    }
}

fn node_err(e: OperatorError) -> anyhow::Error {
    anyhow::anyhow!("outcome stream: {e}")
}

/// The source loop: collect reports, hand each batch to every node, tick idle nodes, save on
/// the timer; at the stop, drain and end the nodes in order.
async fn drive(
    mut nodes: Vec<Box<dyn Operator>>,
    mut outcomes: mpsc::UnboundedReceiver<OutcomeRow>,
    integration: String,
    stop: Arc<Notify>,
    summaries: Arc<Mutex<Vec<WindowSummary>>>,
) -> Res<Vec<WindowSummary>> {
    let mut buf: Vec<OutcomeRow> = Vec::new();
    let mut last_active = vec![Instant::now(); nodes.len()];
    let mut last_save = Instant::now();
    let mut epoch = 0u64;
    let mut stopping = false;
    let mut tap_open = true;
    loop {
        tokio::select! {
            r = outcomes.recv(), if tap_open => match r {
                Some(row) => {
                    buf.push(row);
                    if buf.len() < BATCH_ROWS {
                        continue;
                    }
                }
                // Every sink is done reporting; breaker events may still come.
                None => tap_open = false,
            },
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.notified() => stopping = true,
        }
        if stopping {
            while let Ok(row) = outcomes.try_recv() {
                buf.push(row);
            }
        }
        let batch: Option<RecordBatch> =
            (!buf.is_empty()).then(|| outcome_batch(&integration, &buf));
        buf.clear();
        let save = last_save.elapsed() >= SAVE_EVERY;
        let flushes = tokio::task::block_in_place(|| -> Result<_, OperatorError> {
            let mut flushes = Vec::new();
            for (node, active) in nodes.iter_mut().zip(&mut last_active) {
                if let Some(b) = &batch {
                    node.process(b.clone())?;
                    *active = Instant::now();
                } else if node.tick_every().is_some_and(|t| active.elapsed() >= t) {
                    node.on_tick()?;
                    *active = Instant::now();
                }
                if save && node.is_checkpointed() {
                    flushes.extend(node.on_barrier(epoch)?);
                }
            }
            Ok(flushes)
        })
        .map_err(node_err)?;
        if save {
            epoch += 1;
            last_save = Instant::now();
            for f in flushes {
                f.await
                    .map_err(|e| anyhow::anyhow!("outcome stream: flushing outputs: {e}"))?;
            }
        }
        if stopping {
            break;
        }
    }
    tokio::task::block_in_place(|| -> Result<(), OperatorError> {
        for node in &mut nodes {
            node.on_end()?;
        }
        Ok(())
    })
    .map_err(node_err)?;
    let mut done = std::mem::take(&mut *summaries.lock().expect("window summaries"));
    done.sort_by_key(|w| w.name.clone());
    Ok(done)
}

/// Publishes breaker transitions (to the events topic/file) as they happen: a node with no
/// input use and no output ports, ticking.
struct BreakerEvents {
    io: WindowIo,
    /// Transitions already published, per breaker.
    published: HashMap<String, usize>,
}

impl BreakerEvents {
    fn publish(&mut self) -> Result<(), OperatorError> {
        let io = &self.io;
        for b in io.breakers.values() {
            let done = self.published.entry(b.name().to_string()).or_default();
            // Only what is new since the last tick.
            let new = b.transitions_since(*done);
            if new.is_empty() {
                continue;
            }
            let mut o = io.outputs.lock().expect("monitor outputs");
            for t in &new {
                o.breaker_event(&BreakerEvent::new(&io.integration, &io.member, b.name(), t))
                    .map_err(|e| OperatorError::Other(format!("breaker events: {e}")))?;
            }
            *done += new.len();
        }
        Ok(())
    }
}

impl Operator for BreakerEvents {
    fn outputs(&self) -> Vec<(String, arrow::datatypes::SchemaRef)> {
        Vec::new()
    }

    fn process(&mut self, _batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        // Transitions come from the breakers, not the rows; a busy stream still publishes.
        self.publish()?;
        Ok(StageOutput::default())
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(TICK)
    }

    fn on_tick(&mut self) -> Result<(), OperatorError> {
        self.publish()
    }

    fn on_end(&mut self) -> Result<(), OperatorError> {
        self.publish()?;
        self.io
            .outputs
            .lock()
            .expect("monitor outputs")
            .finish()
            .map_err(|e| OperatorError::Other(format!("monitoring outputs: {e}")))
    }
}
