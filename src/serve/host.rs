//! Hosting: each integration's pipeline runs as its own topology on the server's runtime, on a
//! thread of its own (a run blocks on its flow), so starting, updating or stopping one never
//! touches the others. Stopping drains like SIGTERM does for `plexus run`: what was read is
//! finished and committed.
//!
//! The host does not decide what runs: `serve::reconcile` compares the wanted state (the
//! registry, the pipelines directory) with what runs here and calls `start` / `stop`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::health::{HealthReport, Target};
use crate::metrics::outcome::OutcomeTap;
use crate::resilience::breaker::BreakerState;
use crate::runtime::summary::RunSummary;
use crate::runtime::telemetry::Telemetry;
use crate::runtime::topology::{StartOptions, Topology};
use crate::spec::PipelineSpec;

/// Where an integration's definition comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Registry,
    /// A pipeline file in `--pipelines`.
    Directory(PathBuf),
}

/// What a hosted integration is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Inactive,
    Error,
    /// Runs on live input with every output diverted to files (`Plan::divert_outputs`).
    Testing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Error => "error",
            Status::Testing => "testing",
        }
    }
}

/// What the API shows about one hosted integration.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub status: Status,
    /// Why it is in error, or why an update was refused (no PHI: plan errors and run
    /// failures name places, not values).
    pub reason: Option<String>,
    #[serde(skip)]
    pub origin: Origin,
    /// The registry version, or the pipeline file's content hash.
    pub version: String,
    pub started_at: Option<i64>,
    pub records_in: u64,
    pub dead_letters: u64,
    pub sinks: BTreeMap<String, u64>,
    /// Each sink's circuit breaker: closed, open or half_open.
    pub breakers: BTreeMap<String, String>,
    /// Alerts raised, by `name:severity`.
    pub alerts: BTreeMap<String, u64>,
    /// The summary of its last run that ended (an update, a stop, a failure).
    #[schema(value_type = Option<Object>)]
    pub last_run: Option<serde_json::Value>,
    /// The latest health check of its downstream systems (`health.rs`).
    pub health: Option<HealthReport>,
}

struct Running {
    stop: Arc<AtomicBool>,
    telemetry: Arc<Telemetry>,
    tap: OutcomeTap,
    targets: Vec<Target>,
    health: super::health::Settings,
    thread: std::thread::JoinHandle<Result<RunSummary, String>>,
}

struct Hosted {
    origin: Origin,
    version: String,
    status: Status,
    reason: Option<String>,
    started_at: Option<i64>,
    run: Option<Running>,
    last_run: Option<serde_json::Value>,
    /// The version last refused (its pipeline does not plan): not tried again.
    refused: Option<String>,
    health: Option<HealthReport>,
    /// Runs in testing mode, its outputs diverted into this directory.
    testing: Option<PathBuf>,
}

/// The integrations this server runs.
pub struct Host {
    rt: Arc<tokio::runtime::Runtime>,
    items: Mutex<BTreeMap<String, Hosted>>,
}

impl Host {
    pub fn new(rt: Arc<tokio::runtime::Runtime>) -> Arc<Host> {
        Arc::new(Host {
            rt,
            items: Mutex::default(),
        })
    }

    /// Runs `spec` as `id` (stopping, draining, the version running now first); in testing
    /// mode when `testing` names the directory its outputs go to. Blocks until the new
    /// version started or failed to; call from a blocking context.
    pub fn start(
        &self,
        id: &str,
        origin: Origin,
        version: String,
        spec: PipelineSpec,
        health: super::health::Settings,
        testing: Option<PathBuf>,
    ) -> Result<(), String> {
        self.stop(id);
        let (tx, rx) = std::sync::mpsc::channel();
        let rt = self.rt.clone();
        let settings = health.clone();
        let divert = testing.clone();
        let thread = std::thread::Builder::new()
            .name(format!("integration-{id}"))
            .spawn(move || {
                let mut plan = match rt.block_on(crate::plan::build(&spec)) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return Err("did not start".to_string());
                    }
                };
                if let Some(dir) = &divert {
                    plan.divert_outputs(dir);
                }
                let targets = super::health::targets(&plan, &settings);
                let options = StartOptions {
                    hosted: true,
                    ..StartOptions::default()
                };
                let topology = match Topology::start(&rt, plan, options) {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        return Err("did not start".to_string());
                    }
                };
                let _ = tx.send(Ok((
                    topology.stop_handle(),
                    topology.telemetry(),
                    topology.outcome_tap(),
                    targets,
                )));
                topology.run(&rt).map_err(|e| format!("{e:#}"))
            })
            .map_err(|e| format!("starting a thread: {e}"))?;
        let started = rx
            .recv()
            .unwrap_or_else(|_| Err("the run ended before it started".into()));
        let mut items = self.items.lock().expect("host");
        let entry = items.entry(id.to_string()).or_insert_with(|| Hosted {
            origin: origin.clone(),
            version: version.clone(),
            status: Status::Inactive,
            reason: None,
            started_at: None,
            run: None,
            last_run: None,
            refused: None,
            health: None,
            testing: None,
        });
        entry.origin = origin;
        entry.version = version;
        entry.refused = None;
        match started {
            Ok((stop, telemetry, tap, targets)) => {
                entry.status = if testing.is_some() {
                    Status::Testing
                } else {
                    Status::Active
                };
                entry.testing = testing;
                entry.reason = None;
                entry.started_at = Some(super::registry::now_ms());
                entry.health = None;
                entry.run = Some(Running {
                    stop,
                    telemetry,
                    tap,
                    targets,
                    health,
                    thread,
                });
                tracing::info!(integration = id, "serve: integration started");
                Ok(())
            }
            Err(reason) => {
                let _ = thread.join();
                entry.status = Status::Error;
                entry.reason = Some(reason.clone());
                tracing::warn!(integration = id, "serve: integration failed to start");
                Err(reason)
            }
        }
    }

    /// Stops `id`'s run, draining it; keeps its entry (inactive) with the run's summary.
    /// Blocks until the run ended.
    pub fn stop(&self, id: &str) -> Option<serde_json::Value> {
        let running = {
            let mut items = self.items.lock().expect("host");
            items.get_mut(id).and_then(|h| h.run.take())
        };
        let running = running?;
        running.stop.store(true, Ordering::Relaxed);
        let ended = running
            .thread
            .join()
            .unwrap_or_else(|_| Err("the run panicked".into()));
        let mut items = self.items.lock().expect("host");
        let entry = items.get_mut(id)?;
        entry.started_at = None;
        entry.testing = None;
        match ended {
            Ok(summary) => {
                entry.status = Status::Inactive;
                entry.last_run = serde_json::to_value(&summary).ok();
            }
            Err(e) => {
                entry.status = Status::Error;
                entry.reason = Some(e);
            }
        }
        tracing::info!(integration = id, "serve: integration stopped");
        entry.last_run.clone()
    }

    /// Stops `id` and forgets it.
    pub fn remove(&self, id: &str) {
        self.stop(id);
        self.items.lock().expect("host").remove(id);
    }

    /// Marks `id` as refused (a definition that does not plan), keeping what runs.
    pub fn refuse(&self, id: &str, origin: Origin, version: String, reason: String) {
        let mut items = self.items.lock().expect("host");
        let entry = items.entry(id.to_string()).or_insert_with(|| Hosted {
            origin: origin.clone(),
            version: version.clone(),
            status: Status::Error,
            reason: None,
            started_at: None,
            run: None,
            last_run: None,
            refused: None,
            health: None,
            testing: None,
        });
        if entry.run.is_none() {
            entry.status = Status::Error;
            entry.version = version.clone();
        }
        entry.refused = Some(version);
        entry.reason = Some(reason);
    }

    /// Runs that ended on their own (a failure): marked as errors, with the reason.
    pub fn reap(&self) {
        let ended: Vec<String> = {
            let items = self.items.lock().expect("host");
            items
                .iter()
                .filter(|(_, h)| h.run.as_ref().is_some_and(|r| r.thread.is_finished()))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in ended {
            self.stop(&id);
        }
    }

    /// What is hosted: id, origin, version, running, in testing mode.
    pub fn ids(&self) -> Vec<(String, Origin, String, bool, bool)> {
        let items = self.items.lock().expect("host");
        items
            .iter()
            .map(|(id, h)| {
                (
                    id.clone(),
                    h.origin.clone(),
                    h.version.clone(),
                    h.run.is_some(),
                    h.testing.is_some(),
                )
            })
            .collect()
    }

    /// Where `id`'s outputs go while it runs in testing mode.
    pub fn testing_dir(&self, id: &str) -> Option<PathBuf> {
        let items = self.items.lock().expect("host");
        items.get(id).and_then(|h| h.testing.clone())
    }

    /// Whether `version` of `id` was refused already (its pipeline does not plan).
    pub fn refused(&self, id: &str, version: &str) -> bool {
        let items = self.items.lock().expect("host");
        items
            .get(id)
            .is_some_and(|h| h.refused.as_deref() == Some(version))
    }

    /// The telemetry of `id`'s run, while it runs.
    pub fn telemetry(&self, id: &str) -> Option<Arc<Telemetry>> {
        let items = self.items.lock().expect("host");
        items
            .get(id)
            .and_then(|h| h.run.as_ref().map(|r| r.telemetry.clone()))
    }

    /// Running integrations with downstream systems to check: (id, targets, tap, interval).
    pub fn health_targets(&self) -> Vec<(String, Vec<Target>, OutcomeTap, std::time::Duration)> {
        let items = self.items.lock().expect("host");
        items
            .iter()
            .filter_map(|(id, h)| {
                let r = h.run.as_ref().filter(|r| !r.targets.is_empty())?;
                Some((id.clone(), r.targets.clone(), r.tap.clone(), r.health.every))
            })
            .collect()
    }

    /// Keeps `report` as `id`'s latest health check; a change to unhealthy raises an
    /// `integration.health` alert.
    pub fn set_health(&self, id: &str, report: HealthReport) {
        let mut items = self.items.lock().expect("host");
        let Some(h) = items.get_mut(id) else {
            return;
        };
        let Some(run) = &h.run else {
            return;
        };
        let was_healthy = h.health.as_ref().is_none_or(|r| r.healthy);
        if was_healthy && !report.healthy {
            run.telemetry.alert("integration.health", "critical");
            tracing::warn!(
                integration = id,
                reason = report.reason().unwrap_or_default(),
                "integration.health"
            );
        } else if !was_healthy && report.healthy {
            tracing::info!(integration = id, "serve: integration healthy again");
        }
        h.health = Some(report);
    }

    pub fn snapshot(&self, id: &str) -> Option<Snapshot> {
        let items = self.items.lock().expect("host");
        items.get(id).map(snapshot)
    }

    pub fn snapshots(&self) -> BTreeMap<String, Snapshot> {
        let items = self.items.lock().expect("host");
        items
            .iter()
            .map(|(id, h)| (id.clone(), snapshot(h)))
            .collect()
    }

    /// Prometheus text for every running integration (each labelled with its integration).
    pub fn metrics(&self) -> String {
        let items = self.items.lock().expect("host");
        let texts: Vec<String> = items
            .values()
            .filter_map(|h| h.run.as_ref().map(|r| r.telemetry.render()))
            .collect();
        merge_expositions(&texts)
    }

    /// Stops everything (the server is shutting down), draining each run.
    pub fn stop_all(&self) {
        let ids: Vec<String> = self.items.lock().expect("host").keys().cloned().collect();
        // Every run is told first, so they drain together, not one after the other.
        for id in &ids {
            let flag = self
                .items
                .lock()
                .expect("host")
                .get(id)
                .and_then(|h| h.run.as_ref().map(|r| r.stop.clone()));
            if let Some(s) = flag {
                s.store(true, Ordering::Relaxed);
            }
        }
        for id in ids {
            self.stop(&id);
        }
    }
}

fn snapshot(h: &Hosted) -> Snapshot {
    let (records_in, dead_letters, sinks, breakers, alerts) = match &h.run {
        Some(r) => (
            r.telemetry.records_in.load(Ordering::Relaxed),
            r.telemetry.dead_letters.load(Ordering::Relaxed),
            r.telemetry.sink_counts(),
            r.telemetry
                .breaker_states()
                .into_iter()
                .map(|(sink, state)| {
                    let state = match state {
                        BreakerState::Closed => "closed",
                        BreakerState::Open => "open",
                        BreakerState::HalfOpen => "half_open",
                    };
                    (sink, state.to_string())
                })
                .collect(),
            r.telemetry.alert_counts(),
        ),
        None => Default::default(),
    };
    // Running but a downstream system fails its checks: the seed's `error` status.
    let unhealthy = h
        .health
        .as_ref()
        .filter(|r| !r.healthy && h.run.is_some() && h.status != Status::Inactive);
    Snapshot {
        status: if unhealthy.is_some() {
            Status::Error
        } else {
            h.status
        },
        reason: unhealthy
            .and_then(HealthReport::reason)
            .or_else(|| h.reason.clone()),
        origin: h.origin.clone(),
        version: h.version.clone(),
        started_at: h.started_at,
        records_in,
        dead_letters,
        sinks,
        breakers,
        alerts,
        last_run: h.last_run.clone(),
        health: h.health.clone(),
    }
}

/// Joins Prometheus expositions: each metric family's HELP and TYPE once, its samples from
/// every text under it (the format allows a family's lines in one group only).
pub fn merge_expositions(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for text in texts {
        for line in text.lines() {
            let family = match line.strip_prefix("# ") {
                Some(rest) => rest.split_whitespace().nth(1).unwrap_or("").to_string(),
                None => line
                    .split(['{', ' '])
                    .next()
                    .unwrap_or("")
                    .trim_end_matches("_bucket")
                    .to_string(),
            };
            if family.is_empty() {
                continue;
            }
            let entry = families.entry(family.clone()).or_insert_with(|| {
                order.push(family.clone());
                Default::default()
            });
            if line.starts_with('#') {
                if !entry.0.iter().any(|l| l == line) {
                    entry.0.push(line.to_string());
                }
            } else {
                entry.1.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for f in order {
        let (meta, samples) = &families[&f];
        for l in meta.iter().chain(samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expositions_merge_into_one_group_per_family() {
        let a =
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{integration=\"a\"} 1\n".to_string();
        let b = "# HELP x_total X.\n# TYPE x_total counter\nx_total{integration=\"b\"} 2\n# HELP y Y.\n# TYPE y gauge\ny{integration=\"b\"} 3\n".to_string();
        let merged = merge_expositions(&[a, b]);
        assert_eq!(
            merged,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{integration=\"a\"} 1\nx_total{integration=\"b\"} 2\n# HELP y Y.\n# TYPE y gauge\ny{integration=\"b\"} 3\n"
        );
    }
}
