//! HTTP/webhook ingest: requests/s and answer latency through a whole `type: http` pipeline —
//! signature check (HMAC-SHA256, timestamped), spool with fsync group commit, parse against
//! a schema, NDJSON output — in one process, over loopback, the load generator (reqwest,
//! keep-alive) on the same two cores.
//!
//!     cargo bench --bench http_ingest          # PLEXUS_BENCH_REQUESTS=20000 per run by default
//!
//! Each client sends like a webhook sender does: one request in flight, the next after the
//! answer. Runs: 1 client, 16 clients, and 16 clients with idempotency keys (an event-id
//! field, kept in SQLite). Not a criterion bench: one run of each is the measurement.

use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";

mod support;

fn main() {
    let Some(n) = support::count("PLEXUS_BENCH_REQUESTS", 20_000) else {
        return;
    };
    let events: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| {
                serde_json::json!({
                    "id": format!("evt-{i}"),
                    "type": "patient.updated",
                    "timestamp": "2026-11-30T10:00:00Z",
                    "data": {"resourceType": "Patient", "id": format!("p{i}"),
                             "name": [{"family": "Synthetic", "given": ["Pat"]}],
                             "birthDate": "1980-01-02", "gender": "female"}
                })
                .to_string()
            })
            .collect(),
    );
    let bytes: usize = events.iter().map(String::len).sum();
    println!(
        "{} signed JSON events per run, {:.1} MB",
        events.len(),
        bytes as f64 / 1e6
    );
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("PLEXUS_BENCH_SECRET", SECRET) };
    run("1 client", &events, 1, "");
    run("16 clients", &events, 16, "");
    run(
        "16 clients, idempotency keys in SQLite",
        &events,
        16,
        "  idempotency: {field: id, store: keys.db}\n",
    );
}

/// Serves a fresh pipeline, posts every event from `clients` concurrent clients, stops it;
/// prints requests/s and latency.
fn run(label: &str, events: &Arc<Vec<String>>, clients: usize, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("event.json"),
        r#"{"fields": [{"name": "id", "type": "utf8"}, {"name": "type", "type": "utf8"},
                       {"name": "timestamp", "type": "timestamp"}, {"name": "data", "type": "json"}]}"#,
    )
    .unwrap();
    let path = dir.path().join("bench.yaml");
    std::fs::write(
        &path,
        format!(
            r#"name: http_bench
integration: {{id: bench}}
source:
  type: http
  listen: "127.0.0.1:{port}"
  path: /events
  format: json
  spool: spool
  auth: {{hmac: {{secret: "env:PLEXUS_BENCH_SECRET"}}}}
{extra}batch: {{max_rows: 8192, max_delay: 20ms}}
stages:
  - {{name: parse, type: parse, format: ndjson, schema: event.json}}
sinks:
  - {{name: out, input: parse, type: file, format: ndjson, path: out.ndjson}}
dlq: {{path: dlq.ndjson}}
"#
        ),
    )
    .unwrap();
    let served = support::serve(&path);
    let url = format!("http://127.0.0.1:{port}/events");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = served.rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (events, client, url) = (events.clone(), client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    for e in events.iter().skip(c).step_by(clients) {
                        let t = Instant::now();
                        let now = chrono::Utc::now().timestamp();
                        let sig = plexus::net::http::sign(SECRET.as_bytes(), now, e.as_bytes());
                        let r = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("x-plexus-signature", sig)
                            .body(e.clone())
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let summary = served.stop();
    assert_eq!(
        summary.delivered as usize,
        events.len(),
        "every event delivered"
    );
    latencies.sort();
    let pct = |p: f64| support::percentile_ms(&latencies, p);
    println!(
        "{label}: {:.0} requests/s answered 202; latency p50 {:.2} ms, p99 {:.2} ms",
        events.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
