//! Windowed metrics end to end: windows over a stage's rows (file mode) written as partitioned
//! Parquet and queried with `plexus query`; windows over sink outcomes tripping an HTTP
//! sink's breaker during an outage (nothing lost, breaker events and alerts written); window
//! state surviving a restart mid-window on Kafka (PostgreSQL checkpoint); `/metrics`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::webhook::{Receiver, Rule};
use support::*;

/// An ADT message of `event` at `ts` (`YYYYMMDDHHMMSS`); empty `mrn` → a validation warning.
fn msg(control: &str, ts: &str, event: &str, mrn: &str) -> String {
    format!(
        "MSH|^~\\&|EPIC|GHH|PLEXUS|GHH|{ts}||ADT^{event}|{control}|P|2.5\r\
         PID|1||{mrn}^^^GHH^MR||DOE^JANE||19800102|F\r\
         PV1|1|I|4E^1^A^GHH\r"
    )
}

/// A plain HTTP/1.0 GET; None while nothing listens.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

/// `plexus query` over the outputs of pipeline `p` run with `--output out`; its stdout.
fn query_as(p: &std::path::Path, out: &std::path::Path, options: &[&str], sql: &str) -> String {
    let mut args = vec![
        "query",
        "--pipeline",
        p.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(options);
    args.push(sql);
    let o = plexus(&args);
    assert_ok(&o);
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn query(p: &std::path::Path, out: &std::path::Path, sql: &str) -> Vec<serde_json::Value> {
    query_as(p, out, &["--format", "json"], sql)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const STREAM_WINDOW: &str = r#"
name: adt
integration: {id: ghh-adt}
source: {type: file, path: in.hl7, format: hl7}
batch: {max_rows: 7}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {name: event, path: MSH-9.2}
      - {name: at, path: MSH-7, type: timestamp}
      - {name: mrn, path: PID-3.1}
  - name: checks
    type: validate
    rules:
      - {name: mrn_present, check: "mrn IS NOT NULL AND mrn <> ''", severity: warning}
sinks:
  - {name: out, type: file, format: ndjson, path: rows.ndjson}
windows:
  - name: feed
    input: checks
    key: {event: event}
    time: at
    size: 30m
    out_of_orderness: 5m
monitoring:
  thresholds: {data_quality: 0.9}
"#;

#[test]
fn stream_windows_write_partitioned_parquet_that_plexus_query_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // 90 messages over 12:00–13:29, out of order by up to 4 minutes (reversed in groups of
    // five, within the 5-minute bound); every 7th has no MRN.
    let events = ["A01", "A08", "A03"];
    let mut input = String::new();
    let mut expected: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for i in 0..90u32 {
        let minute = i - i % 5 + (4 - i % 5);
        let (h, m) = (12 + minute / 60, minute % 60);
        let event = events[(i % 3) as usize];
        let mrn = if i % 7 == 0 {
            String::new()
        } else {
            format!("M{i}")
        };
        input.push_str(&msg(
            &format!("C{i}"),
            &format!("20260105{h:02}{m:02}00"),
            event,
            &mrn,
        ));
        let window = format!("2026-01-05T{h:02}:{:02}:00Z", if m < 30 { 0 } else { 30 });
        let e = expected.entry((window, event.to_string())).or_default();
        e.0 += 1;
        e.1 += (i % 7 == 0) as u64;
    }
    std::fs::write(dir.path().join("in.hl7"), input).unwrap();
    // Alerts also go to a signed webhook.
    let (hook, url) = Receiver::start("alert-secret", vec![]);
    let spec = format!("{STREAM_WINDOW}  alerts: {{webhook: {url}, secret: env:ALERT_SECRET}}\n");
    let p = pipeline(dir.path(), "adt", &spec);
    let s = summary(
        &std::process::Command::new(BIN)
            .args([
                "run",
                p.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--json",
            ])
            .env("ALERT_SECRET", "alert-secret")
            .output()
            .unwrap(),
    );
    assert_eq!(s["delivered"], 90, "{s}");
    let w = &s["windows"][0];
    assert_eq!(
        (w["rows_in"].as_u64(), w["late_dropped"].as_u64()),
        (Some(90), Some(0)),
        "{s}"
    );
    assert_eq!(
        w["window_rows"].as_u64(),
        Some(expected.len() as u64),
        "{s}"
    );

    // Hive-style partitions by date and hour of the window start.
    for hour in ["12", "13"] {
        let d = out.join(format!("adt.metrics/feed/date=2026-01-05/hour={hour}"));
        let files: Vec<_> = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|x| x == "parquet"))
            .collect();
        assert!(!files.is_empty(), "no parquet in {}", d.display());
    }

    let rows = query(
        &p,
        &out,
        "SELECT CAST(window_start AS VARCHAR) AS ws, event, total, failure, data_quality_rate, hour \
         FROM feed ORDER BY ws, event",
    );
    let got: BTreeMap<(String, String), (u64, u64)> = rows
        .iter()
        .map(|r| {
            let ws = r["ws"].as_str().unwrap().replace(' ', "T");
            let ws = format!("{}Z", ws.trim_end_matches('Z'));
            let total = r["total"].as_u64().unwrap();
            let flagged =
                (total as f64 * (1.0 - r["data_quality_rate"].as_f64().unwrap())).round() as u64;
            assert_eq!(r["failure"], 0);
            (
                (ws, r["event"].as_str().unwrap().to_string()),
                (total, flagged),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // The common `metrics` table, filtered on the partition column.
    let rows = query(
        &p,
        &out,
        "SELECT sum(total) AS n FROM metrics WHERE hour = '13'",
    );
    let want13: u64 = expected
        .iter()
        .filter(|((w, _), _)| w.contains("T13:"))
        .map(|(_, v)| v.0)
        .sum();
    assert_eq!(rows[0]["n"].as_u64(), Some(want13));

    // Data quality below the seed's threshold raised warnings, one per such window row.
    let alerts = query(
        &p,
        &out,
        "SELECT alert, severity, key FROM alerts ORDER BY key",
    );
    let below = expected
        .values()
        .filter(|(n, f)| ((*n - *f) as f64 / *n as f64) < 0.9)
        .count();
    assert!(below > 0, "the input was built to cross the threshold");
    assert_eq!(alerts.len(), below, "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|a| a["alert"] == "data_quality" && a["severity"] == "warning")
    );
    let posted = hook.seen();
    assert_eq!(posted.len(), below, "one signed POST per alert");
    assert!(posted.iter().all(|r| r.signature_ok && r.status == 200));
    assert!(posted.iter().all(|r| r.body["type"] == "integration.alert"));
    let keys: std::collections::HashSet<&str> = posted.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), below, "distinct idempotency keys");

    // CSV and Parquet output of a query.
    let csv = query_as(
        &p,
        &out,
        &["--format", "csv"],
        "SELECT key AS event, sum(total) AS n FROM metrics GROUP BY key ORDER BY key",
    );
    assert_eq!(csv, "event,n\nA01,30\nA03,30\nA08,30\n");
    let pq = dir.path().join("q.parquet");
    let pq_arg = pq.to_str().unwrap();
    query_as(
        &p,
        &out,
        &["--format", "parquet", "--out", pq_arg],
        "SELECT * FROM metrics",
    );
    assert!(std::fs::read(&pq).unwrap().starts_with(b"PAR1"));
}

#[test]
fn windows_validate_their_sql_and_settings_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    let bad = STREAM_WINDOW
        .replace("    time: at\n", "    time: no_such_column\n")
        .replace("    size: 30m\n", "    size: 30m\n    slide: 7m\n    breaker: {sink: out, trip: \"total > 1\"}\n    alerts:\n      - {name: x, when: \"error_rate\"}\n");
    let p = pipeline(dir.path(), "bad", &bad);
    let o = plexus(&["validate", p.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let line = bad
        .lines()
        .position(|l| l.contains("no_such_column"))
        .unwrap()
        + 1;
    for want in [
        &format!("bad.yaml:{line}:") as &str,
        "no_such_column",
        "slide is positive, at most the size, and divides it",
        "breakers gate http sinks",
        "a condition must be boolean",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn a_failing_endpoint_trips_the_breaker_from_the_outcome_window_and_nothing_is_lost() {
    // 503 for the first 6 seconds.
    let outage_end = std::time::Instant::now() + Duration::from_secs(6);
    let (rx, url) = Receiver::start("s3cret", vec![("", Rule::Until(outage_end, 503))]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 120;
    let input: String = (0..n)
        .map(|i| msg(&format!("C{i}"), "20260105120000", "A01", &format!("M{i}")))
        .collect();
    std::fs::write(dir.path().join("in.hl7"), input).unwrap();
    let spec = format!(
        r#"
name: ehr
integration: {{id: ghh-ehr}}
source: {{type: file, path: in.hl7, format: hl7}}
batch: {{max_rows: 5}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
sinks:
  - name: ehr
    type: http
    url: {url}
    secret: env:HOOK_SECRET
    concurrency: 1
    retry: {{max_attempts: 20, backoff: linear, base: 200ms, max_delay: 1s, jitter: 0}}
    breaker: {{wait: 2s, half_open_calls: 2}}
windows:
  - name: calls
    input: outcomes
    size: 2s
    breaker: {{sink: ehr, trip: "error_rate >= 0.5 AND total >= 4"}}
monitoring:
  thresholds: {{error_rate: 0.2}}
"#
    );
    let p = pipeline(dir.path(), "ehr", &spec);
    let o = std::process::Command::new(BIN)
        .args([
            "run",
            p.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--json",
        ])
        .env("HOOK_SECRET", "s3cret")
        .output()
        .unwrap();
    let s = summary(&o);

    // Every record delivered after the outage; none lost, none dead.
    assert_eq!(s["delivered"], n, "{s}");
    assert_eq!(s["dead_lettered"], 0);
    let seen = rx.seen();
    let failed = seen.iter().filter(|r| r.status == 503).count();
    eprintln!("{failed} calls failed during the outage");
    assert!(failed >= 4, "the window needs its minimum calls ({failed})");
    // Without the breaker the first batch alone would retry 8 times in 6 s (linear 200 ms
    // backoff): 40 failed calls. With it: the calls that tripped it, then 2 probes per 2 s.
    assert!(failed <= 20, "{failed} calls hit the broken endpoint");

    // The window opened the breaker (its reason names the window), probes closed it later.
    let events = query(
        &p,
        &out,
        "SELECT \"to\", reason FROM breaker_events ORDER BY at_ms",
    );
    let to: Vec<&str> = events.iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(to.first(), Some(&"OPEN"), "{events:?}");
    assert!(
        events[0]["reason"]
            .as_str()
            .unwrap()
            .contains("window calls"),
        "{events:?}"
    );
    assert_eq!(to.last(), Some(&"CLOSED"), "{events:?}");
    assert!(
        s["windows"][0]["breaker_trips"].as_u64().unwrap() >= 1,
        "{s}"
    );

    // The windows saw the failures and the recovery; the error-rate alert is critical.
    let m = query(
        &p,
        &out,
        "SELECT sum(total) AS calls, sum(failure) AS failed FROM metrics",
    );
    assert_eq!(m[0]["calls"].as_u64(), Some((n + failed) as u64));
    assert_eq!(m[0]["failed"].as_u64(), Some(failed as u64));
    let a = query(
        &p,
        &out,
        "SELECT severity FROM alerts WHERE alert = 'error_rate'",
    );
    assert!(
        !a.is_empty() && a.iter().all(|a| a["severity"] == "critical"),
        "{a:?}"
    );
}

#[test]
fn a_restart_mid_window_keeps_its_counts_and_metrics_are_served() {
    let input = unique("win-in");
    let output = unique("win-out");
    let metrics = unique("win-metrics");
    let group = unique("g");
    create_topics(&[(&input, 1), (&output, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let spec = format!(
        r#"
name: winkafka
integration: {{id: ghh-win}}
kafka: {{brokers: {brokers}}}
source: {{type: kafka, topics: [{input}], group: {group}, format: hl7, instance: {group}-1}}
batch: {{max_rows: 10, max_delay: 100ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: event, path: MSH-9.2}}
      - {{name: at, path: MSH-7, type: timestamp}}
sinks:
  - {{name: out, type: kafka, topic: {output}}}
windows:
  - name: hourly
    input: parse
    key: {{event: event}}
    time: at
    size: 1h
monitoring:
  state: postgres
  metrics: {{topic: {metrics}}}
"#,
        brokers = brokers()
    );
    let p = pipeline(dir.path(), "winkafka", &spec);
    let db = "postgres://postgres@127.0.0.1:5432/test";
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            p.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--json",
            "--exit-when-idle",
            "3s",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(BIN)
            .args(&args)
            .env("DATABASE_URL", db)
            .output()
            .unwrap()
    };
    // Run 1: 30 messages inside 10:00–11:00; the window stays open (state saved).
    produce(
        &input,
        (0..30)
            .map(|i| {
                Rec::value(msg(
                    &format!("A{i}"),
                    &format!("2026010510{i:02}00"),
                    "A01",
                    "M",
                ))
            })
            .collect(),
    );
    let s1 = summary(&run(&[]));
    assert_eq!(s1["records_in"], 30, "{s1}");
    assert_eq!(
        s1["windows"][0]["window_rows"], 0,
        "the hour has not ended: {s1}"
    );

    // Run 2: 20 more in the same hour, then one at 12:30 moves the watermark past 11:00.
    let mut more: Vec<Rec> = (0..20)
        .map(|i| {
            Rec::value(msg(
                &format!("B{i}"),
                &format!("2026010510{:02}00", 30 + i),
                "A01",
                "M",
            ))
        })
        .collect();
    more.push(Rec::value(msg("Z", "20260105123000", "A01", "M")));
    produce(&input, more);
    let port = 20000 + (std::process::id() % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(BIN)
        .args([
            "run",
            p.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--json",
            "--exit-when-idle",
            "4s",
            "--metrics-addr",
            &addr,
        ])
        .env("DATABASE_URL", db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Scrape while it runs.
    let mut scraped = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(body) = http_get(&addr, "/metrics")
            && body.contains(
                "plexus_records_in_total{pipeline=\"winkafka\",integration=\"ghh-win\"} 21",
            )
            && body.contains("plexus_window_total{")
        {
            scraped = body;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output().unwrap();
    let s2 = summary(&o);
    assert!(!scraped.is_empty(), "never scraped the expected metrics");
    assert!(
        scraped.contains("# TYPE plexus_records_in_total counter"),
        "{scraped}"
    );
    assert!(
        scraped.contains("window=\"hourly\",key=\"A01\"} 50"),
        "{scraped}"
    );

    assert_eq!(s2["windows"][0]["resumed"], true, "{s2}");
    assert_eq!(s2["windows"][0]["window_rows"], 1, "{s2}");
    let rows = query(
        &p,
        &out,
        "SELECT CAST(window_start AS VARCHAR) AS ws, total FROM hourly",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0]["total"], 50,
        "30 before the restart + 20 after: {rows:?}"
    );
    // The same window row on the metrics topic, keyed by window/key.
    let m = read_topic(&metrics, 1, Duration::from_secs(20));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].key.as_deref(), Some(&b"hourly/A01"[..]));
    assert_eq!(m[0].json()["total"], 50);
    assert!(
        rows[0]["ws"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-05T10:00:00")
            || rows[0]["ws"]
                .as_str()
                .unwrap()
                .starts_with("2026-01-05 10:00:00"),
        "{rows:?}"
    );
}

#[test]
fn breaker_events_go_to_a_compacted_topic_and_other_instances_follow_an_opening() {
    let (rx, url) = Receiver::start("s3cret", vec![]);
    let input = unique("follow-in");
    let events = unique("breakers");
    let group = unique("g");
    create_topics(&[(&input, 1), (&events, 1)]);
    // Another instance's breaker for the same sink opened a moment ago.
    let other = serde_json::json!({
        "type": "integration.circuit.opened", "integration": "ghh-follow",
        "instance": "other-1", "breaker": "ghh-follow/ehr", "from": "CLOSED", "to": "OPEN",
        "reason": "failure rate 100.0% ≥ 50% over 10 calls", "calls": 10,
        "failure_rate": 100.0, "slow_call_rate": 0.0,
        "at_ms": chrono::Utc::now().timestamp_millis(),
    });
    let mut rec = Rec::value(other.to_string());
    rec.key = Some(b"ghh-follow/ehr".to_vec());
    produce(&events, vec![rec]);
    let n = 40;
    produce(
        &input,
        (0..n)
            .map(|i| {
                Rec::value(msg(
                    &format!("F{i}"),
                    "20260105120000",
                    "A01",
                    &format!("M{i}"),
                ))
            })
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        r#"
name: follow
integration: {{id: ghh-follow}}
kafka: {{brokers: {brokers}}}
source: {{type: kafka, topics: [{input}], group: {group}, format: hl7, instance: {group}-1}}
batch: {{max_rows: 10, max_delay: 100ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
sinks:
  - name: ehr
    type: http
    url: {url}
    secret: env:HOOK_SECRET
    retry: {{max_attempts: 5, backoff: linear, base: 200ms, jitter: 0}}
    breaker: {{wait: 2s, half_open_calls: 2}}
monitoring:
  breaker_events: {{topic: {events}}}
"#,
        brokers = brokers()
    );
    let p = pipeline(dir.path(), "follow", &spec);
    let started = std::time::Instant::now();
    let o = std::process::Command::new(BIN)
        .args([
            "run",
            p.to_str().unwrap(),
            "--json",
            "--exit-when-idle",
            "3s",
        ])
        .env("HOOK_SECRET", "s3cret")
        .output()
        .unwrap();
    let s = summary(&o);

    // Our breaker opened on the other instance's evidence, then probed and closed by itself.
    let t = s["breaker_transitions"].as_array().unwrap();
    assert_eq!(t[0]["to"], "OPEN", "{s}");
    let why = t[0]["reason"].as_str().unwrap();
    assert!(
        why.starts_with("followed instance other-1: failure rate"),
        "{why}"
    );
    assert_eq!(t.last().unwrap()["to"], "CLOSED", "{s}");
    // Nothing lost; the healthy endpoint was spared while open (no call in the first 2 s
    // after the opening, except what was in flight before it).
    assert_eq!(s["delivered"], n, "{s}");
    let seen = rx.seen();
    let early = seen
        .iter()
        .filter(|r| r.at < started + Duration::from_millis(1500))
        .count();
    assert!(
        early <= 10,
        "{early} calls while the followed breaker was open"
    );

    // Our own transitions are on the compacted topic, keyed by integration/sink, naming us.
    let msgs = read_topic(&events, 1 + t.len(), Duration::from_secs(20));
    let ours: Vec<serde_json::Value> = msgs
        .iter()
        .map(|m| m.json())
        .filter(|e| e["instance"] == format!("{group}-1"))
        .collect();
    assert_eq!(ours.len(), t.len(), "{ours:?}");
    assert!(
        msgs.iter()
            .all(|m| m.key.as_deref() == Some(&b"ghh-follow/ehr"[..]))
    );
    let types: Vec<&str> = ours.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types.first(),
        Some(&"integration.circuit.opened"),
        "{types:?}"
    );
    assert_eq!(
        types.last(),
        Some(&"integration.circuit.closed"),
        "{types:?}"
    );
}
