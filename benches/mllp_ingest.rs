//! MLLP ingest: messages/s and ACK latency through a whole `type: mllp` pipeline — listener,
//! spool with fsync group commit, parse, NDJSON output — in one process, over loopback.
//!
//!     cargo bench --bench mllp_ingest          # PLEXUS_BENCH_MESSAGES=20000 per run by default
//!
//! Most runs send like a classic MLLP sender: one message in flight, the next after the ACK.
//! Runs: 1 connection, 16 connections at full speed, 16 connections paced to half the
//! full-speed rate (the latency a sender sees when the listener is not saturated), then 16
//! connections each keeping `PLEXUS_BENCH_WINDOW` messages in flight (default 8: a
//! pipelining sender, ACKs still one per message and in order). With one message in flight
//! the rate is bounded by connections / (fsync + round trip); a window lets one group commit
//! carry many messages per connection. The spool lives in a temporary directory on the
//! machine's disk (`TMPDIR` to choose another). Not a criterion bench: one run of each is the
//! measurement.

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
    let window = support::count("PLEXUS_BENCH_WINDOW", 8).unwrap_or(8).max(1);
    run("1 connection", &messages, 1, 1, None);
    let busy = run("16 connections", &messages, 16, 1, None);
    run(
        "16 connections at half that rate",
        &messages,
        16,
        1,
        Some(busy / 2.0),
    );
    run(
        &format!("16 connections, {window} messages in flight each"),
        &messages,
        16,
        window,
        None,
    );
}

/// Sends `messages` over one connection keeping up to `window` unacknowledged, each paced
/// `every` apart when set; returns each message's ACK latency.
fn send(port: u16, messages: &[&Vec<u8>], window: usize, every: Option<Duration>) -> Vec<Duration> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut latencies = Vec::with_capacity(messages.len());
    let mut sent_at = std::collections::VecDeque::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = Vec::new();
    let mut next = Instant::now();
    let mut todo = messages.iter();
    let mut out = Vec::new();
    while latencies.len() < messages.len() {
        out.clear();
        while sent_at.len() < window {
            let Some(m) = todo.next() else { break };
            if let Some(every) = every {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                next += every;
            }
            out.push(0x0b);
            out.extend_from_slice(m);
            out.extend_from_slice(&[0x1c, 0x0d]);
            sent_at.push_back(Instant::now());
        }
        if !out.is_empty() {
            s.write_all(&out).unwrap();
        }
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "connection closed");
        got.extend_from_slice(&buf[..k]);
        // Each ACK ends with 0x1c 0x0d; they come in the order the messages went.
        while let Some(end) = got.windows(2).position(|w| w == [0x1c, 0x0d]) {
            let ack: Vec<u8> = got.drain(..end + 2).collect();
            assert!(
                // The synthetic messages ask for enhanced mode (MSH-15 AL): CA.
                ack.windows(7).any(|w| w == b"MSA|AA|" || w == b"MSA|CA|"),
                "not accepted: {}",
                String::from_utf8_lossy(&ack)
            );
            latencies.push(sent_at.pop_front().expect("an ACK per message").elapsed());
        }
    }
    latencies
}

/// Serves a fresh pipeline, sends every message over `conns` connections, `window` in flight
/// on each (optionally paced to `rate` messages/s in total), stops it; prints and returns
/// messages/s.
fn run(
    label: &str,
    messages: &Arc<Vec<Vec<u8>>>,
    conns: usize,
    window: usize,
    rate: Option<f64>,
) -> f64 {
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
                let mine: Vec<&Vec<u8>> = messages.iter().skip(c).step_by(conns).collect();
                send(port, &mine, window, per_conn_interval)
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
