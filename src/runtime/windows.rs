//! Running windows: over a stage's output (inside the run, checkpointed at barriers) and over
//! the sinks' outcomes (the `Monitor`, beside the run, which also publishes breaker events).
//!
//! Streams (Kafka) keep open windows across restarts: their state is saved at every barrier
//! and loaded at start. A bounded input (files) is a batch job: at its end every window fires
//! (Flink's final watermark) and no state is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::connectors::monitoring::state::WindowStateStore;
use crate::connectors::monitoring::{BreakerEvent, MonitorOutputs};
use crate::metrics::outcome::{OutcomeRow, now_ms, outcome_batch};
use crate::operators::window::{WindowAggregate, WindowOutput};
use crate::operators::{Flushed, Operator, OperatorError, StageOutput};
use crate::plan::windows::PlannedWindow;
use crate::resilience::breaker::SharedBreaker;

/// What windows share: outputs, state store, breakers by sink name.
#[derive(Clone)]
pub struct WindowIo {
    pub outputs: Arc<Mutex<MonitorOutputs>>,
    pub state: Arc<WindowStateStore>,
    pub pipeline: String,
    pub integration: String,
    /// Separates the state of scaled-out instances (the Kafka static member id).
    pub instance: String,
    /// Names this process in breaker events (the instance id, else host and pid).
    pub member: String,
    /// The input ends (files): windows fire at the end, no state is kept.
    pub bounded: bool,
    pub breakers: HashMap<String, SharedBreaker>,
    pub telemetry: Option<Arc<super::telemetry::Telemetry>>,
}

/// Per window, in the run summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowSummary {
    pub name: String,
    pub rows_in: u64,
    pub window_rows: u64,
    /// Alerts raised (written to the alert outputs).
    pub alerts: u64,
    /// Alerts already raised for the same rule, window, key and window start (by a late
    /// update, or an earlier run over the same input): not sent again.
    pub alerts_repeated: u64,
    pub breaker_trips: u64,
    /// Rows later than the allowed lateness (counted, not aggregated).
    pub late_dropped: u64,
    /// Rows without a readable event time.
    pub invalid_time: u64,
    /// Restored from a checkpoint at start.
    pub resumed: bool,
}

/// One window at run time.
pub struct Driver {
    agg: WindowAggregate,
    breaker: Option<SharedBreaker>,
    summary: WindowSummary,
}

type Res<T> = anyhow::Result<T>;

impl Driver {
    pub fn start(w: PlannedWindow, io: &WindowIo) -> Res<Driver> {
        let mut agg = w.aggregate;
        let mut resumed = false;
        if !io.bounded
            && let Some(bytes) = io.state.load(&io.pipeline, &io.instance, &w.name)?
        {
            agg.restore(&bytes).map_err(anyhow::Error::msg)?;
            resumed = true;
            tracing::info!(window = %w.name, rows = agg.rows_in(), "window state restored");
        }
        let breaker =
            match &w.breaker_sink {
                Some(s) => Some(io.breakers.get(s).cloned().ok_or_else(|| {
                    anyhow::anyhow!("window {}: sink {s} has no breaker", w.name)
                })?),
                None => None,
            };
        Ok(Driver {
            summary: WindowSummary {
                name: w.name.clone(),
                resumed,
                ..WindowSummary::default()
            },
            agg,
            breaker,
        })
    }

    fn apply(&mut self, out: WindowOutput, io: &WindowIo) -> Res<()> {
        if let Some(why) = out.trip
            && let Some(b) = &self.breaker
        {
            self.summary.breaker_trips += 1;
            b.trip(why);
        }
        if out.rows.is_none() && out.alerts.is_empty() {
            return Ok(());
        }
        let mut o = io.outputs.lock().expect("monitor outputs");
        if let Some(rows) = &out.rows {
            self.summary.window_rows += rows.num_rows() as u64;
            o.window_rows(&self.agg.name, rows)?;
            if let Some(t) = &io.telemetry {
                t.window_rows(&self.agg.name, rows);
            }
        }
        for a in &out.alerts {
            if !o.alert(a)? {
                self.summary.alerts_repeated += 1;
                continue;
            }
            self.summary.alerts += 1;
            if let Some(t) = &io.telemetry {
                t.alert(
                    &a.alert,
                    if a.severity == crate::operators::window::Severity::Critical {
                        "critical"
                    } else {
                        "warning"
                    },
                );
            }
        }
        Ok(())
    }

    pub fn process(&mut self, batch: &RecordBatch, io: &WindowIo) -> Res<()> {
        let out = self.agg.process(batch, now_ms())?;
        self.apply(out, io)
    }

    pub fn tick(&mut self, io: &WindowIo) -> Res<()> {
        let out = self.agg.tick(now_ms())?;
        self.apply(out, io)
    }

    /// Saves the state (streams only).
    pub fn checkpoint(&self, io: &WindowIo) -> Res<()> {
        if !io.bounded {
            io.state.save(
                &io.pipeline,
                &io.instance,
                &self.agg.name,
                &self.agg.snapshot(),
            )?;
        }
        Ok(())
    }

    /// The input ended (bounded: fire everything) or the stream stopped (save).
    pub fn end(mut self, io: &WindowIo) -> Res<WindowSummary> {
        if io.bounded {
            let out = self.agg.finish(now_ms())?;
            self.apply(out, io)?;
        } else {
            self.checkpoint(io)?;
        }
        self.summary.rows_in = self.agg.rows_in();
        self.summary.late_dropped = self.agg.late_dropped();
        self.summary.invalid_time = self.agg.invalid_time();
        Ok(self.summary)
    }
}

/// A window over a stage's output as a node of the graph: an operator with no output ports
/// (its rows go to the monitoring outputs) that ticks while idle and saves its state at
/// every barrier.
pub struct WindowNode {
    driver: Option<Driver>,
    io: WindowIo,
    /// Where its summary goes when the input ends.
    summaries: Arc<Mutex<Vec<WindowSummary>>>,
}

impl WindowNode {
    pub fn new(driver: Driver, io: WindowIo, summaries: Arc<Mutex<Vec<WindowSummary>>>) -> Self {
        WindowNode {
            driver: Some(driver),
            io,
            summaries,
        }
    }

    fn driver(&mut self) -> Result<&mut Driver, OperatorError> {
        self.driver
            .as_mut()
            .ok_or_else(|| OperatorError::Other("window used after its end".into()))
    }
}

fn op_err(e: anyhow::Error) -> OperatorError {
    OperatorError::Other(format!("{e:#}"))
}

impl Operator for WindowNode {
    fn outputs(&self) -> Vec<(String, arrow::datatypes::SchemaRef)> {
        Vec::new()
    }

    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        let io = self.io.clone();
        self.driver()?.process(&batch, &io).map_err(op_err)?;
        Ok(StageOutput::default())
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn on_tick(&mut self) -> Result<(), OperatorError> {
        let io = self.io.clone();
        self.driver()?.tick(&io).map_err(op_err)
    }

    fn is_checkpointed(&self) -> bool {
        true
    }

    fn on_barrier(&mut self, _epoch: u64) -> Result<Option<Flushed>, OperatorError> {
        let io = self.io.clone();
        self.driver()?.checkpoint(&io).map_err(op_err)?;
        let durable = io
            .outputs
            .lock()
            .expect("monitor outputs")
            .flush()
            .map_err(|e| OperatorError::Other(e.to_string()))?;
        Ok(durable
            .map(|d| -> Flushed { Box::pin(async move { d.await.map_err(|e| e.to_string()) }) }))
    }

    fn on_end(&mut self) -> Result<(), OperatorError> {
        let Some(driver) = self.driver.take() else {
            return Ok(());
        };
        let summary = driver.end(&self.io).map_err(op_err)?;
        self.summaries
            .lock()
            .expect("window summaries")
            .push(summary);
        Ok(())
    }
}

/// Windows over the outcome stream, and the breaker-event publisher, as one task.
pub struct Monitor {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Res<Vec<WindowSummary>>>,
}

/// How often outcome rows are aggregated, processing-time windows fire and breaker
/// transitions are published.
const TICK: Duration = Duration::from_millis(100);
/// Outcome windows are not aligned with barriers (retry workers report outside the epochs):
/// their state is saved this often and at the end.
const SAVE_EVERY: Duration = Duration::from_secs(5);

impl Monitor {
    pub fn start(
        windows: Vec<PlannedWindow>,
        mut outcomes: mpsc::UnboundedReceiver<OutcomeRow>,
        io: WindowIo,
    ) -> Res<Monitor> {
        let mut drivers = windows
            .into_iter()
            .map(|w| Driver::start(w, &io))
            .collect::<Res<Vec<_>>>()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut published: HashMap<String, usize> = HashMap::new();
            let mut buf: Vec<OutcomeRow> = Vec::new();
            let mut last_save = std::time::Instant::now();
            let mut stopping = false;
            let mut tap_open = true;
            loop {
                tokio::select! {
                    r = outcomes.recv(), if tap_open => match r {
                        Some(row) => {
                            buf.push(row);
                            if buf.len() < 4096 {
                                continue;
                            }
                        }
                        // Every sink is done reporting; breaker events may still come.
                        None => tap_open = false,
                    },
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stopped.notified() => stopping = true,
                }
                if stopping {
                    while let Ok(row) = outcomes.try_recv() {
                        buf.push(row);
                    }
                }
                tokio::task::block_in_place(|| -> Res<()> {
                    if !buf.is_empty() {
                        let batch = outcome_batch(&io.integration, &buf);
                        buf.clear();
                        for d in &mut drivers {
                            d.process(&batch, &io)?;
                        }
                    }
                    for d in &mut drivers {
                        d.tick(&io)?;
                    }
                    publish_breaker_events(&io, &mut published)?;
                    if last_save.elapsed() >= SAVE_EVERY {
                        last_save = std::time::Instant::now();
                        for d in &drivers {
                            d.checkpoint(&io)?;
                        }
                        io.outputs.lock().expect("monitor outputs").flush()?;
                    }
                    Ok(())
                })?;
                if stopping {
                    break;
                }
            }
            tokio::task::block_in_place(|| {
                let summaries = drivers
                    .into_iter()
                    .map(|d| d.end(&io))
                    .collect::<Res<Vec<_>>>()?;
                publish_breaker_events(&io, &mut published)?;
                io.outputs.lock().expect("monitor outputs").finish()?;
                Ok(summaries)
            })
        });
        Ok(Monitor { stop, task })
    }

    /// Drains what was reported, ends the windows, writes the last events.
    pub async fn stop(self) -> Res<Vec<WindowSummary>> {
        self.stop.notify_one();
        self.task.await?
    }
}

/// Appends breaker transitions not published yet.
fn publish_breaker_events(io: &WindowIo, published: &mut HashMap<String, usize>) -> Res<()> {
    for b in io.breakers.values() {
        let done = published.entry(b.name().to_string()).or_default();
        // Only what is new since the last tick (this runs every 100 ms).
        let new = b.transitions_since(*done);
        if !new.is_empty() {
            let mut o = io.outputs.lock().expect("monitor outputs");
            for t in &new {
                o.breaker_event(&BreakerEvent::new(&io.integration, &io.member, b.name(), t))?;
            }
            *done += new.len();
        }
    }
    Ok(())
}
