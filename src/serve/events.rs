//! The live event stream (`GET /api/v1/events`, server-sent events) a dashboard follows:
//! integration status changes, breaker transitions, alerts, and every second the counts of
//! each running integration. One task samples the host each second and publishes what changed
//! to every subscriber; a slow subscriber skips what it missed rather than slowing the rest.
//! Events hold ids, states and counts: never record content.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::host::{Host, Snapshot};

/// One event: its SSE `event:` name and JSON `data:`.
#[derive(Debug, Clone)]
pub struct ServerEvent {
    pub kind: &'static str,
    pub data: Value,
}

pub struct Events {
    tx: broadcast::Sender<ServerEvent>,
}

impl Events {
    pub fn new() -> Arc<Events> {
        let (tx, _) = broadcast::channel(1024);
        Arc::new(Events { tx })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.tx.subscribe()
    }

    /// Samples `host` every `every` and publishes what changed, until the runtime ends.
    pub fn spawn(
        self: &Arc<Self>,
        host: Arc<Host>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let events = self.clone();
        tokio::spawn(async move {
            let mut before: BTreeMap<String, Snapshot> = BTreeMap::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let now = host.snapshots();
                for e in changes(&before, &now) {
                    // No subscriber is not an error.
                    let _ = events.tx.send(e);
                }
                before = now;
            }
        })
    }
}

/// The events between two samples: status changes (and integrations gone), breaker
/// transitions, alerts raised, then the counts of every running integration.
pub fn changes(
    before: &BTreeMap<String, Snapshot>,
    now: &BTreeMap<String, Snapshot>,
) -> Vec<ServerEvent> {
    let mut out = Vec::new();
    for (id, s) in now {
        let was = before.get(id);
        if was.is_none_or(|w| w.status != s.status || w.reason != s.reason) {
            out.push(ServerEvent {
                kind: "status",
                data: json!({"id": id, "status": s.status, "reason": s.reason}),
            });
        }
        for (sink, state) in &s.breakers {
            if was.and_then(|w| w.breakers.get(sink)) != Some(state) {
                out.push(ServerEvent {
                    kind: "breaker",
                    data: json!({"id": id, "sink": sink, "state": state}),
                });
            }
        }
        for (alert, n) in &s.alerts {
            let seen = was.and_then(|w| w.alerts.get(alert)).copied().unwrap_or(0);
            if *n > seen {
                out.push(ServerEvent {
                    kind: "alert",
                    data: json!({"id": id, "alert": alert, "count": n, "new": n - seen}),
                });
            }
        }
    }
    for id in before.keys().filter(|id| !now.contains_key(*id)) {
        out.push(ServerEvent {
            kind: "status",
            data: json!({"id": id, "status": "removed", "reason": null}),
        });
    }
    let counts: serde_json::Map<String, Value> = now
        .iter()
        .filter(|(_, s)| s.started_at.is_some())
        .map(|(id, s)| {
            (
                id.clone(),
                json!({"records_in": s.records_in, "dead_letters": s.dead_letters, "sinks": s.sinks}),
            )
        })
        .collect();
    out.push(ServerEvent {
        kind: "counts",
        data: json!({"integrations": counts}),
    });
    out
}
