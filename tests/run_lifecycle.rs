//! How a `plexus run` ends, as a scheduler sees it: distinct exit codes for "all delivered",
//! "some dead-lettered", "a sink was unreachable", "interrupted" and "did not start"; and a
//! SIGTERM during a file run that drains, finishes every output (a readable Parquet file, no
//! partial files) and prints the summary.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;

fn spec(input: &Path, sinks: &str, max_rows: usize) -> String {
    format!(
        r#"
name: life
integration: {{id: ghh-life}}
source: {{type: file, path: {input}, format: hl7}}
batch: {{max_rows: {max_rows}}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
      - {{name: family, path: PID-5.1}}
sinks:
{sinks}
dlq: {{path: dlq.ndjson}}
"#,
        input = input.display()
    )
}

fn feed(dir: &Path, n: usize, garbage: bool) -> std::path::PathBuf {
    let mut text = String::new();
    if garbage {
        // Before the first MSH: bytes outside any message, a record of their own.
        text.push_str("THIS IS NOT HL7\r");
    }
    text.extend((0..n).map(|i| adt(&format!("C{i}"), &format!("M{i}"))));
    let p = dir.join("in.hl7");
    std::fs::write(&p, text).unwrap();
    p
}

fn run(p: &Path) -> (Option<i32>, serde_json::Value, String) {
    let o = plexus(&["run", p.to_str().unwrap(), "--json"]);
    let summary = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (
        o.status.code(),
        summary,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// #15 item 11: 0 all delivered, 3 some dead-lettered, 4 a sink unreachable, 2 not started.
#[test]
fn exit_codes_tell_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let file_sink = "  - {name: out, type: file, format: ndjson, path: out.ndjson}";

    let input = feed(dir.path(), 20, false);
    let p = pipeline(dir.path(), "clean", &spec(&input, file_sink, 10));
    let (code, s, err) = run(&p);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(s["delivered"], 20);

    let input = feed(dir.path(), 20, true);
    let p = pipeline(dir.path(), "dead", &spec(&input, file_sink, 10));
    let (code, s, err) = run(&p);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(20), Some(1))
    );
    assert_eq!(s["unavailable"], 0);

    // Nothing listens on port 9: every call fails as a transport error, retried, then
    // dead-lettered as unavailable — not the records' fault, and the code says so.
    let http = "  - name: hook
    type: http
    url: http://127.0.0.1:9/hook
    timeout: 1s
    retry: {max_attempts: 2, backoff: linear, base: 10ms, jitter: 0}";
    let input = feed(dir.path(), 5, true);
    let p = pipeline(dir.path(), "down", &spec(&input, http, 10));
    let (code, s, err) = run(&p);
    assert_eq!(code, Some(4), "{err}");
    assert_eq!(s["unavailable"], 5);
    assert_eq!(s["dead_lettered"], 6);
    assert_eq!(s["records_in"], 6);

    // A pipeline that does not validate never starts: a usage/configuration error.
    let p = pipeline(
        dir.path(),
        "broken",
        &spec(&input, file_sink, 10).replace("type: parse", "type: parsnip"),
    );
    let (code, _, err) = run(&p);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("parsnip"), "{err}");
}

/// #15 item 10: SIGTERM in the middle of a file run stops the reading, drains what was read,
/// finishes every output and prints the summary; exit 5. A reader never sees a partial file:
/// outputs are written under a temporary name and renamed when complete.
#[test]
fn sigterm_during_a_file_run_drains_and_finishes_every_output() {
    // A slow endpoint keeps the run going long enough to be interrupted.
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                "ok"
            }
        }),
    );
    let url = serve(app);
    let dir = tempfile::tempdir().unwrap();
    let n = 5_000;
    let input = feed(dir.path(), n, false);
    let sinks = format!(
        "  - {{name: table, type: file, format: parquet, path: out.parquet}}
  - name: hook
    type: http
    url: {url}/hook
    concurrency: 1
    retry: {{max_attempts: 2, backoff: linear, base: 10ms, jitter: 0}}"
    );
    let p = pipeline(dir.path(), "slow", &spec(&input, &sinks, 20));
    let child = Command::new(BIN)
        .args(["run", p.to_str().unwrap(), "--json"])
        .env("PLEXUS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while calls.load(Ordering::Relaxed) < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no calls arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // While it runs, the outputs exist only under their temporary names.
    assert!(!dir.path().join("out.parquet").exists());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["interrupted"], true);
    let records_in = s["records_in"].as_u64().unwrap();
    assert!(records_in > 0 && records_in < n as u64, "{records_in}");
    // What was read was finished: every record read is delivered, none pending.
    assert_eq!(s["delivered"].as_u64().unwrap(), records_in);
    assert!(
        s["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("interrupted: input read up to byte")),
        "{s}"
    );
    // The Parquet file is complete (footer written) and holds exactly what the summary says.
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(dir.path().join("out.parquet")).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows as u64, records_in);
    let partial: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
    assert!(calls.load(Ordering::Relaxed) >= records_in);
}

/// #15 item 20: `--max-records` works on a file source: the first N records, in file order.
#[test]
fn max_records_samples_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = feed(dir.path(), 20, false);
    let p = pipeline(
        dir.path(),
        "sample",
        &spec(
            &input,
            "  - {name: out, type: file, format: ndjson, path: out.ndjson}",
            3,
        ),
    );
    let o = plexus(&["run", p.to_str().unwrap(), "--json", "--max-records", "7"]);
    let s = summary(&o);
    assert_eq!(
        (s["records_in"].as_u64(), s["delivered"].as_u64()),
        (Some(7), Some(7))
    );
    let out = std::fs::read_to_string(dir.path().join("out.ndjson")).unwrap();
    let ids: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["mrn"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, (0..7).map(|i| format!("M{i}")).collect::<Vec<_>>());
}

/// On a terminal (a pseudo-terminal from util-linux `script`) a file run draws a progress line
/// with MB/s and the time left; `--quiet` draws none; a pipe never gets one.
#[test]
fn a_terminal_gets_a_progress_line_and_quiet_silences_it() {
    let dir = tempfile::tempdir().unwrap();
    // Big enough to take longer than the first redraw (100 ms).
    let input = dir.path().join("big.hl7");
    std::fs::write(
        &input,
        plexus::formats::hl7::synth::synthetic_feed(150_000, 3),
    )
    .unwrap();
    let p = dir.path().join("life.yaml");
    std::fs::write(
        &p,
        spec(
            &input,
            "  - {name: out, input: parse, type: file, format: ndjson, path: out.ndjson}",
            8192,
        ),
    )
    .unwrap();
    let on_tty = |extra: &str| -> String {
        let cmd = format!("{BIN} run {} {extra}", p.display());
        let o = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let shown = on_tty("");
    assert!(
        shown.contains(" MB at ") && shown.contains(" MB/s, ") && shown.contains("ETA "),
        "{shown}"
    );
    assert!(
        shown.contains("records: 150000 in"),
        "the summary follows: {shown}"
    );
    let quiet = on_tty("--quiet");
    // The progress line's own words (the summary has a rate too).
    assert!(
        !quiet.contains(" MB at ") && !quiet.contains("ETA"),
        "{quiet}"
    );
    let piped = plexus(&["run", p.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&piped.stderr).contains(" MB at "));
}
