//! What the listener benches share: a pipeline served in this process, stopped like SIGTERM
//! stops it, and latency percentiles.
// Each bench uses only some of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use plexus::runtime::summary::RunSummary;
use plexus::runtime::topology::{StartOptions, Topology};

/// How many records a run sends: `var` in the environment, else `default`; None when cargo
/// runs the bench as a test (no `--bench`): nothing to do then.
pub fn count(var: &str, default: usize) -> Option<usize> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    Some(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// A pipeline running on its own thread.
pub struct Served {
    pub rt: Arc<tokio::runtime::Runtime>,
    stop: Arc<AtomicBool>,
    runner: std::thread::JoinHandle<RunSummary>,
}

/// Loads, plans and starts the pipeline at `path`.
pub fn serve(path: &std::path::Path) -> Served {
    let rt = Arc::new(tokio::runtime::Runtime::new().unwrap());
    let spec = plexus::spec::PipelineSpec::load(path).unwrap();
    let plan = rt.block_on(plexus::plan::build(&spec)).unwrap();
    let topology = Topology::start(&rt, plan, StartOptions::default()).unwrap();
    let stop = topology.stop_handle();
    let runner = {
        let rt = rt.clone();
        std::thread::spawn(move || topology.run(&rt).unwrap())
    };
    Served { rt, stop, runner }
}

impl Served {
    /// Stops it (drain, commit) and returns its summary.
    pub fn stop(self) -> RunSummary {
        self.stop.store(true, Ordering::Relaxed);
        self.runner.join().unwrap()
    }
}

/// The `p` quantile of sorted latencies, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}
