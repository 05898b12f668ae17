//! The HTTP (webhook) sink against a real HTTP receiver: signed requests, idempotency keys,
//! transient failures retried per the policy (in place in file mode; parked on delayed retry
//! topics on Kafka without stalling the partition), permanent failures and exhausted retries
//! dead-lettered with their original bytes. Nothing is lost: every record is accounted for.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use support::webhook::{Receiver, Rule};
use support::*;

const SECRET: &str = "whsec_test_only";

fn webhook_pipeline(source: &str, url: &str, retry: &str, dlq: &str, extra: &str) -> String {
    format!(
        r#"
name: hook
integration: {{id: ghh-hook}}
{extra}
source: {source}
batch: {{max_rows: 10, max_delay: 100ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
      - {{name: family, path: PID-5.1}}
  - name: shape
    type: map
    select: {{mrn: mrn, family: family}}
sinks:
  - name: notify
    type: http
    url: {url}
    secret: env:HOOK_SECRET
    headers: {{X-Source: plexus-test}}
    timeout: 5s
    concurrency: 4
    retry: {retry}
dlq: {dlq}
"#
    )
}

/// MRNs: `R..` fail twice with 503 then succeed; `X..` always 503; `B..` get 400.
fn mrn(i: usize) -> String {
    match i % 20 {
        3 => format!("R{i:04}"),
        7 => format!("X{i:04}"),
        11 => format!("B{i:04}"),
        _ => format!("M{i:04}"),
    }
}

fn rules() -> Vec<(&'static str, Rule)> {
    vec![
        ("\"R", Rule::FailFirst(503, 2)),
        ("\"X", Rule::Always(503)),
        ("\"B", Rule::Always(400)),
    ]
}

fn run_with_secret(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env("HOOK_SECRET", SECRET)
        .env(
            "PLEXUS_LOG",
            std::env::var("PLEXUS_TEST_LOG").unwrap_or("warn".into()),
        )
        .output()
        .unwrap()
}

#[test]
fn file_mode_retries_in_place_and_dead_letters_what_cannot_be_delivered() {
    let (rx, url) = Receiver::start(SECRET, rules());
    let dir = tempfile::tempdir().unwrap();
    let n = 100;
    let feed: String = (0..n).map(|i| adt(&format!("C{i}"), &mrn(i))).collect();
    let input = dir.path().join("adt.hl7");
    std::fs::write(&input, &feed).unwrap();
    let dlq_path = dir.path().join("dlq.ndjson");
    let p = pipeline(
        dir.path(),
        "hook",
        &webhook_pipeline(
            &format!("{{type: file, path: {}, format: hl7}}", input.display()),
            &url,
            "{max_attempts: 3, backoff: exponential, base: 50ms, jitter: 0}",
            &format!("{{path: {}}}", dlq_path.display()),
            "",
        ),
    );
    let out = run_with_secret(&["run", p.to_str().unwrap(), "--json"]);
    let s = summary(&out);
    let seen = rx.seen();

    // Every request signed; one idempotency key per record across its attempts.
    assert!(seen.iter().all(|r| r.signature_ok), "all signatures verify");
    let mut by_key: HashMap<&str, Vec<&support::webhook::Received>> = HashMap::new();
    for r in &seen {
        by_key.entry(&r.key).or_default().push(r);
    }
    assert_eq!(by_key.len(), n, "one key per record");
    let delivered: HashSet<String> = seen
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.body["mrn"].as_str().unwrap().to_string())
        .collect();
    let (retried, always, bad) = (5, 5, 5);
    assert_eq!(delivered.len(), n - always - bad);
    for attempts in by_key.values() {
        let m = attempts[0].body["mrn"].as_str().unwrap();
        let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
        match &m[..1] {
            "R" | "X" => assert_eq!(numbers, vec![1, 2, 3], "{m}: three attempts"),
            _ => assert_eq!(numbers, vec![1], "{m}: one attempt"),
        }
    }
    assert!(delivered.iter().filter(|m| m.starts_with('R')).count() == retried);

    // Accounting, and the dead letters: original HL7 bytes and the reason.
    assert_eq!(s["records_in"], n);
    assert_eq!(s["delivered"], n - always - bad);
    assert_eq!(s["dead_lettered"], always + bad);
    assert_eq!(s["parked"], 0);
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dlq_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), always + bad);
    for d in &dead {
        let raw = d["record"].as_str().unwrap();
        assert!(raw.starts_with("MSH|"), "original bytes kept: {d}");
        let reason = d["reason"].as_str().unwrap();
        assert_eq!(d["stage"], "notify");
        if raw.contains("|X0") {
            assert!(
                reason.contains("HTTP 503") && reason.contains("attempt 3 of 3"),
                "{reason}"
            );
        } else {
            assert!(raw.contains("|B0"), "{raw}");
            assert!(reason.contains("HTTP 400"), "{reason}");
        }
    }
}

#[test]
fn kafka_retry_topics_do_not_stall_the_partition_and_lose_nothing() {
    let (rx, url) = Receiver::start(SECRET, rules());
    let (input, dlq) = (unique("hook-in"), unique("hook-dlq"));
    let retry = unique("hook-retry");
    let group = unique("g");
    create_topics(&[(&input, 1), (&dlq, 1)]);
    let n = 200;
    produce(
        &input,
        (0..n)
            .map(|i| Rec::value(adt(&format!("C{i}"), &mrn(i))))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        "hook",
        &webhook_pipeline(
            &format!("{{type: kafka, topics: [{input}], group: {group}, format: hl7}}"),
            &url,
            &format!("{{max_attempts: 3, backoff: linear, base: 2s, jitter: 0, topic: {retry}}}"),
            &format!("{{topic: {dlq}}}"),
            &format!("kafka: {{brokers: {}}}", brokers()),
        ),
    );
    let out = run_with_secret(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "6s",
    ]);
    let s = summary(&out);
    let seen = rx.seen();
    assert!(seen.iter().all(|r| r.signature_ok));

    let (always, bad) = (n / 20, n / 20);
    // First attempts: the failing ones were parked, the 400s dead-lettered at once.
    assert_eq!(s["records_in"], n);
    assert_eq!(s["delivered"], n - 3 * n / 20);
    assert_eq!(s["parked"], 2 * n / 20, "R and X records parked: {s}");
    assert_eq!(s["dead_lettered"], bad);
    let r = &s["retries"][0];
    assert_eq!(
        r["delivered"],
        n / 20,
        "R records delivered on attempt 3: {r}"
    );
    assert_eq!(
        r["parked_again"],
        2 * n / 20,
        "both kinds failed attempt 2: {r}"
    );
    assert_eq!(r["dead_lettered"], always, "X records exhausted: {r}");

    // Non-blocking: while the first R record waited out its backoff, later records went on.
    let first_r = seen
        .iter()
        .find(|x| x.body["mrn"].as_str().is_some_and(|m| m.starts_with('R')))
        .unwrap();
    let second_attempt = seen
        .iter()
        .find(|x| x.key == first_r.key && x.attempt == 2)
        .expect("retried");
    let waited = second_attempt.at - first_r.at;
    assert!(
        waited >= Duration::from_millis(1900),
        "backoff honoured: {waited:?}"
    );
    let later_done = seen
        .iter()
        .filter(|x| x.at > first_r.at && x.at < second_attempt.at && x.attempt == 1)
        .count();
    assert!(
        later_done > 100,
        "later records flowed meanwhile ({later_done})"
    );

    // Dead-letter topic: the 400s and the exhausted ones, original bytes and attempt numbers.
    let dead = read_topic(&dlq, always + bad, WAIT_DLQ);
    assert_eq!(dead.len(), always + bad);
    for d in &dead {
        assert!(d.text().starts_with("MSH|"));
        assert_eq!(d.header("plexus.dlq.stage"), "notify");
        if d.text().contains("|X0") {
            assert_eq!(d.header("plexus.attempt"), "3");
            assert!(d.header("plexus.dlq.error").contains("attempt 3 of 3"));
        } else {
            assert_eq!(d.header("plexus.attempt"), "1");
            assert!(d.header("plexus.dlq.error").contains("HTTP 400"));
        }
    }
    // Input committed to its end; a second run has nothing to do.
    assert_eq!(committed(&group, &input, 1).get(&0), Some(&(n as i64)));
    let again = run_with_secret(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "3s",
    ]);
    let s2 = summary(&again);
    assert_eq!(s2["records_in"], 0);
    assert!(
        s2["retries"][0]["delivered"] == 0 && s2["retries"][0]["dead_lettered"] == 0,
        "retry topics committed: {s2}"
    );
}

const WAIT_DLQ: Duration = Duration::from_secs(30);

#[test]
fn validate_locates_http_sink_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.hl7");
    std::fs::write(&input, adt("C1", "M1")).unwrap();
    let spec = webhook_pipeline(
        &format!("{{type: file, path: {}, format: hl7}}", input.display()),
        "not a url",
        "{max_attempts: 0, backoff: sideways, base: 1s, topic: t.retry}",
        "{path: dlq.ndjson}",
        "",
    )
    .replace("secret: env:HOOK_SECRET", "secret: hunter2");
    let p = pipeline(dir.path(), "bad", &spec);
    let o = plexus(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let at = |line: usize| format!("{}:{line}:", p.display());
    // Lines of `webhook_pipeline` (it starts with a newline): url 20, secret 21.
    assert!(err.contains(&at(20)) && err.contains("not a URL"), "{err}");
    assert!(err.contains(&at(21)) && err.contains("env:NAME"), "{err}");
    assert!(!err.contains("hunter2"), "a secret is never echoed: {err}");
    assert!(err.contains("max_attempts is between 1 and 20"), "{err}");
    assert!(err.contains("backoff is linear or exponential"), "{err}");
    assert!(err.contains("retry topics need a `kafka:`"), "{err}");
    assert!(
        err.contains("retry topics need a dead-letter topic"),
        "{err}"
    );

    // The corrected file validates.
    let good = webhook_pipeline(
        &format!("{{type: file, path: {}, format: hl7}}", input.display()),
        "http://127.0.0.1:9/hook",
        "{max_attempts: 3, backoff: linear, base: 1s}",
        "{path: dlq.ndjson}",
        "",
    );
    let p = pipeline(dir.path(), "good", &good);
    let o = plexus(&["validate", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn an_outage_opens_the_breaker_records_wait_and_drain_after_recovery() {
    // Every request fails with 503 for the first 9 seconds.
    let outage_end = std::time::Instant::now() + Duration::from_secs(9);
    let (rx, url) = Receiver::start(SECRET, vec![("", Rule::Until(outage_end, 503))]);
    let (input, dlq) = (unique("brk-in"), unique("brk-dlq"));
    let retry = unique("brk-retry");
    let group = unique("g");
    create_topics(&[(&input, 1), (&dlq, 1)]);
    let n = 300;
    produce(
        &input,
        (0..n)
            .map(|i| Rec::value(adt(&format!("C{i}"), &format!("M{i:04}"))))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = webhook_pipeline(
        &format!("{{type: kafka, topics: [{input}], group: {group}, format: hl7}}"),
        &url,
        &format!("{{max_attempts: 10, backoff: linear, base: 1s, jitter: 0, topic: {retry}}}"),
        &format!("{{topic: {dlq}}}"),
        &format!("kafka: {{brokers: {}}}", brokers()),
    )
    .replace(
        "    retry:",
        "    breaker: {window: 20, minimum_calls: 10, failure_rate: 50, wait: 2s, half_open_calls: 2}\n    retry:",
    );
    let p = pipeline(dir.path(), "brk", &spec);
    let out = run_with_secret(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "6s",
    ]);
    let s = summary(&out);
    let seen = rx.seen();
    if std::env::var("PLEXUS_TEST_LOG").is_ok() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }

    // Not hammered: while the endpoint was down it saw a handful of calls, not one per record.
    let failed = seen.iter().filter(|r| r.status == 503).count();
    eprintln!("{failed} calls failed during the outage; summary {s}");
    assert!(
        failed >= 10,
        "the breaker needed its minimum calls to open ({failed})"
    );
    assert!(
        failed < n / 5,
        "{failed} calls reached the broken endpoint for {n} records"
    );

    // Opened, probed, and closed again after the recovery.
    let t = s["breaker_transitions"].as_array().unwrap();
    let to: Vec<&str> = t.iter().map(|t| t["to"].as_str().unwrap()).collect();
    assert_eq!(to.first(), Some(&"OPEN"), "{to:?}");
    assert!(to.contains(&"HALF_OPEN"), "{to:?}");
    assert_eq!(to.last(), Some(&"CLOSED"), "{to:?}");

    // Nothing lost: every record delivered once the endpoint was back, none dead.
    let delivered: HashSet<&str> = seen
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(delivered.len(), n, "every record delivered after recovery");
    assert!(
        seen.iter()
            .filter(|r| r.status == 200)
            .all(|r| r.at >= outage_end)
    );
    assert_eq!(s["dead_lettered"], 0);
    let parked = s["parked"].as_u64().unwrap();
    assert_eq!(s["delivered"].as_u64().unwrap() + parked, n as u64, "{s}");
    assert_eq!(
        s["retries"][0]["delivered"], parked,
        "the backlog drained: {s}"
    );
    assert_eq!(s["retries"][0]["dead_lettered"], 0);
    assert_eq!(committed(&group, &input, 1).get(&0), Some(&(n as i64)));
}

/// A `fhir` sink on Kafka parks failed requests with their path: the retry worker PUTs each
/// conditional update to the same `Patient?identifier=…` it first failed on (not to the base).
#[test]
fn a_fhir_sink_parks_requests_with_their_path_and_the_retry_worker_puts_them_there() {
    use std::sync::{Arc, Mutex};
    let input = unique("fhir-in");
    let dlq = unique("fhir-dlq");
    let retry = unique("fhir-retry");
    let group = unique("g");
    create_topics(&[(&input, 1), (&dlq, 1)]);
    // (method, path?query, attempt, answered status): the first attempt of every Patient
    // update fails with 503.
    type Seen = Vec<(String, String, String, u16)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap| {
            let seen = s2.clone();
            async move {
                let attempt = headers
                    .get("x-plexus-attempt")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let path = uri.path_and_query().unwrap().to_string();
                if method == axum::http::Method::GET {
                    // The sink reads before it writes (v2 update semantics): nothing yet.
                    seen.lock()
                        .unwrap()
                        .push((method.to_string(), path, attempt, 200));
                    return (
                        axum::http::StatusCode::OK,
                        r#"{"resourceType":"Bundle","type":"searchset","entry":[]}"#,
                    );
                }
                let status = if path.contains("/Patient?") && attempt == "1" {
                    503
                } else {
                    200
                };
                seen.lock()
                    .unwrap()
                    .push((method.to_string(), path, attempt, status));
                (axum::http::StatusCode::from_u16(status).unwrap(), "")
            }
        },
    );
    let url = serve(app);
    let n = 5;
    produce(
        &input,
        (0..n)
            .map(|i| Rec::value(adt(&format!("C{i}"), &format!("M{i}"))))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        "fhir_retry",
        &format!(
            r#"
name: fhir_retry
integration: {{id: ghh-ehr}}
kafka: {{brokers: {brokers}}}
source: {{type: kafka, topics: [{input}], group: {group}, format: hl7}}
batch: {{max_rows: 10, max_delay: 100ms}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - name: ehr
    type: fhir
    url: "{url}/fhir"
    retry: {{max_attempts: 3, backoff: linear, base: 500ms, jitter: 0, topic: {retry}}}
dlq: {{topic: {dlq}}}
"#,
            brokers = brokers()
        ),
    );
    let s = summary(&run_with_secret(&[
        "run",
        p.to_str().unwrap(),
        "--json",
        "--exit-when-idle",
        "5s",
    ]));
    assert_eq!(s["parked"], n, "the patients' first attempts: {s}");
    assert_eq!(s["retries"][0]["delivered"], n, "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");
    let seen = seen.lock().unwrap().clone();
    for i in 0..n {
        let mine: Vec<_> = seen
            .iter()
            .filter(|(m, path, ..)| {
                m == "PUT" && path.contains("/Patient?") && path.contains(&format!("M{i}"))
            })
            .collect();
        assert_eq!(mine.len(), 2, "{seen:?}");
        assert_eq!((mine[0].2.as_str(), mine[0].3), ("1", 503));
        assert_eq!((mine[1].2.as_str(), mine[1].3), ("2", 200));
        // The retry went to the same conditional update, as a PUT.
        assert_eq!(mine[0].1, mine[1].1);
        assert!(mine.iter().all(|m| m.0 == "PUT"), "{mine:?}");
    }
    // Nothing was POSTed to the base (where a request without its path would go): searches
    // and conditional updates only.
    assert!(
        seen.iter().all(|(m, ..)| m == "PUT" || m == "GET"),
        "{seen:?}"
    );
}
