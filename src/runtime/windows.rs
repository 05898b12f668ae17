//! Running windows: a `WindowNode` is an operator with no output ports, over a stage's output
//! (checkpointed at the run's barriers) or over the sinks' outcomes (`super::outcomes`).
//!
//! Streams (Kafka) keep open windows across restarts: their state is saved at every barrier
//! and loaded at start. A bounded input (files) is a batch job: at its end every window fires
//! (Flink's final watermark) and no state is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::connectors::monitoring::MonitorOutputs;
use crate::connectors::monitoring::state::WindowStateStore;
use crate::metrics::outcome::now_ms;
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
    tick: Duration,
    io: WindowIo,
    /// Where its summary goes when the input ends.
    summaries: Arc<Mutex<Vec<WindowSummary>>>,
}

impl WindowNode {
    pub fn new(driver: Driver, io: WindowIo, summaries: Arc<Mutex<Vec<WindowSummary>>>) -> Self {
        WindowNode {
            driver: Some(driver),
            tick: Duration::from_secs(1),
            io,
            summaries,
        }
    }

    /// How often processing-time windows may fire while no rows come.
    pub fn ticking_every(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
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
        Some(self.tick)
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
