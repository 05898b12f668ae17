//! MLLP ingest: messages/s and ACK latency through a whole `type: mllp` pipeline — listener,
//! spool with fsync group commit, parse, NDJSON output — in one process, over loopback.
//!
//!     cargo bench --bench mllp_ingest          # PLEXUS_BENCH_MESSAGES=20000 per run by default
//!
//! Each connection sends like an MLLP sender does: one message in flight, the next after the
//! ACK. Runs: 1 connection, 16 connections at full speed, then 16 connections paced to half
//! the full-speed rate (the latency a sender sees when the listener is not saturated). The
//! spool lives in a temporary directory on the machine's disk (`TMPDIR` to choose another).
//! Not a criterion bench: one run of each is the measurement.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

fn main() {
    let Some(n) = support::count("PLEXUS_BENCH_MESSAGES", 20_000) else {
        return;
    };
    let feed = plexus::formats::hl7::synth::synthetic_feed(n, 7);
    let messages: Arc<Vec<Vec<u8>>> = Arc::new(
        plexus::formats::hl7::Splitter::new(&feed)
            .filter_map(|m| m.ok().map(|m| m.message.raw().to_vec()))
            .collect(),
    );
    let bytes: usize = messages.iter().map(Vec::len).sum();
    println!(
        "{} synthetic ADT messages per run, {:.1} MB",
        messages.len(),
        bytes as f64 / 1e6
    );
    let full = run("1 connection", &messages, 1, None);
    let busy = run("16 connections", &messages, 16, None);
    let _ = full;
    run(
        "16 connections at half that rate",
        &messages,
        16,
        Some(busy / 2.0),
    );
}

/// Serves a fresh pipeline, sends every message over `conns` connections (optionally paced to
/// `rate` messages/s in total), stops it; prints and returns messages/s.
fn run(label: &str, messages: &Arc<Vec<Vec<u8>>>, conns: usize, rate: Option<f64>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("bench.yaml");
    std::fs::write(
        &path,
        format!(
            r#"name: mllp_bench
integration: {{id: bench}}
source: {{type: mllp, listen: "127.0.0.1:{port}", format: hl7, spool: spool}}
batch: {{max_rows: 8192, max_delay: 20ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
      - {{name: family, path: PID-5.1}}
      - {{name: event, path: MSH-9.2}}
sinks:
  - {{name: out, input: parse, type: file, format: ndjson, path: out.ndjson}}
dlq: {{path: dlq.ndjson}}
"#
        ),
    )
    .unwrap();
    let served = support::serve(&path);
    let started = Instant::now();
    let per_conn_interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
    let clients: Vec<_> = (0..conns)
        .map(|c| {
            let messages = messages.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let mut latencies = Vec::new();
                let mut buf = [0u8; 4096];
                let mut next = Instant::now();
                for m in messages.iter().skip(c).step_by(conns) {
                    if let Some(every) = per_conn_interval {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += every;
                    }
                    let t = Instant::now();
                    s.write_all(&[&[0x0b][..], m, &[0x1c, 0x0d]].concat())
                        .unwrap();
                    let mut got = Vec::new();
                    while !got.contains(&0x1c) {
                        let k = s.read(&mut buf).unwrap();
                        assert!(k > 0, "connection closed");
                        got.extend_from_slice(&buf[..k]);
                    }
                    assert!(
                        // The synthetic messages ask for enhanced mode (MSH-15 AL): CA.
                        got.windows(7).any(|w| w == b"MSA|AA|" || w == b"MSA|CA|"),
                        "not accepted: {}",
                        String::from_utf8_lossy(&got)
                    );
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let summary = served.stop();
    assert_eq!(
        summary.delivered as usize,
        messages.len(),
        "every message delivered"
    );
    latencies.sort();
    let pct = |p: f64| support::percentile_ms(&latencies, p);
    let rate = messages.len() as f64 / elapsed;
    println!(
        "{label}: {rate:.0} messages/s acknowledged; ACK latency p50 {:.2} ms, p99 {:.2} ms",
        pct(0.50),
        pct(0.99)
    );
    rate
}
