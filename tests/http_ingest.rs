//! HTTP/webhook ingest (`type: http` source) against an independent sender: Python's urllib
//! with signatures computed by Python's hmac (`tests/support/webhook_sender.py`). Real
//! processes, sockets, spool and key store (SQLite; PostgreSQL for the shared-store test).

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::listener::{free_port, rows, serve, serve_env, stop};

const SECRET: &str = "whsec-test-0123456789";

/// A pipeline whose HTTP source listens on `port`, with `source_extra` under `source:`.
fn pipeline(dir: &Path, port: u16, format: &str, source_extra: &str, stages: &str) -> PathBuf {
    let p = dir.join("hook.yaml");
    std::fs::write(
        dir.join("event.json"),
        r#"{"fields": [{"name": "id", "type": "utf8"}, {"name": "type", "type": "utf8"},
                       {"name": "resourceType", "type": "utf8"}, {"name": "data", "type": "json"}]}"#,
    )
    .unwrap();
    std::fs::write(
        &p,
        format!(
            r#"name: hook_t
integration: {{id: hook-test}}
source:
  type: http
  listen: "127.0.0.1:{port}"
  path: /events
  format: {format}
  spool: spool
{source_extra}
batch: {{max_rows: 100, max_delay: 50ms}}
stages:
{stages}
sinks:
  - {{name: out, type: file, format: ndjson, path: out.ndjson, provenance: true}}
dlq: {{path: dlq.ndjson}}
"#
        ),
    )
    .unwrap();
    p
}

const JSON_STAGES: &str = "  - {name: parse, type: parse, format: ndjson, schema: event.json}";

/// Sends the script's requests to `/events` from Python; one result per request.
fn send(port: u16, script: Value) -> Vec<Value> {
    send_to(&format!("http://127.0.0.1:{port}/events"), script)
}

fn send_to(url: &str, script: Value) -> Vec<Value> {
    send_with(url, script, &[])
}

/// As `send_to`, with environment for the sender (its TLS files).
fn send_with(url: &str, script: Value, env: &[(&str, String)]) -> Vec<Value> {
    let mut child = Command::new("python3")
        .arg(support::repo().join("tests/support/webhook_sender.py"))
        .arg(url)
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn statuses(results: &[Value]) -> Vec<u64> {
    results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect()
}

fn body(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap()).unwrap()
}

fn summary_line(summary: &Value, prefix: &str) -> String {
    summary["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|w| w.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line: {summary}"))
        .to_string()
}

fn event(id: &str, kind: &str) -> String {
    json!({"id": id, "type": kind, "timestamp": "2026-11-30T10:00:00Z",
           "data": {"resourceType": "Patient", "id": format!("p-{id}"), "name": [{"family": "Zed"}]}})
    .to_string()
}

#[test]
fn signed_events_are_verified_deduplicated_spooled_and_processed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let auth = "  auth: {hmac: {secret: \"env:HOOK_SECRET\", tolerance: 5m}}\n  idempotency: {field: id, store: keys.db}";
    let p = pipeline(dir.path(), port, "json", auth, JSON_STAGES);
    // The secret reaches the server through its environment only.
    let env = [("HOOK_SECRET", SECRET)];
    let server = serve_env(&p, port, &env);
    let signed = |b: String| json!({"body": b, "sign": "timestamped", "secret": SECRET});
    let e1 = event("e1", "patient.updated");
    let results = send(
        port,
        json!([
            signed(e1.clone()),
            // Signed with another secret; signed 10 minutes ago (a captured request).
            {"body": event("e2", "patient.updated"), "sign": "timestamped", "secret": "wrong"},
            {"body": event("e3", "patient.updated"), "sign": "timestamped", "secret": SECRET, "age": 600},
            // The first request again, byte for byte: its event id was answered already.
            {"replay": 0},
            // The same event, freshly signed; then its id with another body.
            signed(e1.clone()),
            signed(event("e1", "appointment.cancelled")),
            {"body": event("e6", "patient.updated")},
            signed("{\"id\": \"e7\",\n \"type\": tru}".into()),
            signed("5".into()),
            signed(format!("[{}, {}]", event("e4", "patient.updated"), event("e5", "appointment.cancelled"))),
        ]),
    );
    assert_eq!(
        statuses(&results),
        [202, 401, 401, 200, 200, 422, 401, 400, 422, 202],
        "{results:#?}"
    );
    let first = body(&results[0]);
    assert_eq!(
        (first["status"].as_str(), first["records"].as_u64()),
        (Some("accepted"), Some(1))
    );
    // A duplicate gets the first answer, marked as a replay.
    assert_eq!(body(&results[3]), first);
    assert_eq!(results[4]["headers"]["idempotent-replayed"], "true");
    assert!(
        body(&results[2])["error"]
            .as_str()
            .unwrap()
            .contains("tolerance")
    );
    assert!(
        body(&results[5])["error"]
            .as_str()
            .unwrap()
            .contains("different body")
    );
    let bad = body(&results[7]);
    assert!(
        bad["error"].as_str().unwrap().contains("line 2 column"),
        "{bad}"
    );

    let (code, summary, stderr) = stop(server);
    // e1 once, e4 and e5 from the array; the body that does not parse is dead-lettered whole.
    let out = rows(&dir.path().join("out.ndjson"));
    let ids: Vec<&str> = out.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3, "{ids:?}");
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in ["e1", "e4", "e5"] {
        assert!(ids.contains(&id), "{id}: {ids:?}");
    }
    // `data` (declared `json`) is kept as JSON text.
    let data: Value = serde_json::from_str(out[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["resourceType"], "Patient");
    let origin = format!("http://127.0.0.1:{port}/events/127.0.0.1:");
    assert!(
        out.iter()
            .all(|r| r["_source"].as_str().unwrap().starts_with(&origin)),
        "{}",
        out[0]
    );
    let dlq = rows(&dir.path().join("dlq.ndjson"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert!(dlq[0]["record"].as_str().unwrap().contains("\"e7\""));
    assert_eq!(summary["records_in"], 4, "{summary}");
    assert_eq!(summary["dead_lettered"], 1, "{summary}");
    assert_eq!(code, Some(3), "{stderr}");
    let line = summary_line(&summary, "http ");
    assert!(
        line.contains("10 requests")
            && line.contains("4 records spooled")
            && line.contains("202 2,")
            && line.contains("200 duplicates 2")
            && line.contains("401 3 (0 replays)")
            && line.contains("422 2"),
        "{line}"
    );
    // No record content in the logs.
    assert!(
        !stderr.contains("Zed") && !stderr.contains(SECRET),
        "{stderr}"
    );

    // Keys outlive the process: after a restart the event is still a duplicate, and an
    // exact replay without an event id is refused.
    let server = serve_env(&p, port, &env);
    let again = send(port, json!([signed(e1.clone())]));
    assert_eq!(statuses(&again), [200]);
    let (_, summary, _) = stop(server);
    assert_eq!(summary["records_in"], 0, "{summary}");
}

#[test]
fn hex_signatures_api_keys_rate_and_size_limits_and_fhir_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = "  max_body_bytes: 3000
  rate_limit: {per_second: 1, burst: 3}
  auth:
    hmac: {secret: \"env:HOOK_SECRET_HEX\", scheme: hex}
    api_keys: {partner_a: \"env:PARTNER_A_KEY\"}";
    let p = pipeline(
        dir.path(),
        port,
        "fhir",
        extra,
        "  - {name: parse, type: parse, format: ndjson, schema: event.json}",
    );
    let env = [
        ("HOOK_SECRET_HEX", SECRET),
        ("PARTNER_A_KEY", "key-partner-a"),
    ];
    let server = serve_env(&p, port, &env);
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "b1"}},
        {"resource": {"resourceType": "Encounter", "id": "b2"}}]})
    .to_string();
    let patient = |id: &str| json!({"resourceType": "Patient", "id": id}).to_string();
    let keyed = |b: String, key: &str| json!({"body": b, "headers": {"X-API-Key": key}});
    let results = send(
        port,
        json!([
            {"body": bundle, "sign": "hex", "secret": SECRET},
            {"body": patient("h2"), "sign": "hex-sha256", "secret": SECRET},
            {"body": patient("h3"), "sign": "hex", "secret": "wrong"},
            keyed(patient("k1"), "key-partner-a"),
            keyed(patient("k2"), "not-the-key"),
            keyed(format!("{{\"resourceType\": \"Patient\", \"text\": \"{}\"}}", "x".repeat(4000)), "key-partner-a"),
            keyed(json!({"id": "no-type"}).to_string(), "key-partner-a"),
            keyed(patient("k3"), "key-partner-a"),
            keyed(patient("k4"), "key-partner-a"),
        ]),
    );
    // The API key's bucket holds 3: k1, the 422 and k3 use it (401 and 413 are refused
    // before it), so k4 is over the rate; the hex-signed requests count against the peer.
    assert_eq!(
        statuses(&results),
        [202, 202, 401, 202, 401, 413, 422, 202, 429],
        "{results:#?}"
    );
    assert_eq!(body(&results[0])["records"], 2);
    let retry: u64 = results[8]["headers"]["retry-after"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let (_, summary, _) = stop(server);
    let out = rows(&dir.path().join("out.ndjson"));
    let mut types: Vec<&str> = out
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["Encounter", "Patient", "Patient", "Patient", "Patient"]
    );
    assert_eq!(summary["records_in"], 5, "{summary}");
    let line = summary_line(&summary, "http ");
    assert!(
        line.contains("413 1") && line.contains("429 1 over the rate"),
        "{line}"
    );
}

#[test]
fn hl7_bodies_that_do_not_parse_get_400_and_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = pipeline(
        dir.path(),
        port,
        "hl7",
        "",
        "  - name: parse\n    type: parse\n    format: hl7\n    columns: [{name: mrn, path: PID-3.1}]",
    );
    let server = serve(&p, port);
    let good = support::adt("H1", "MRN-1");
    let batch = format!(
        "FHS|^~\\&\rBHS|^~\\&\r{}{}BTS|2\rFTS|1\r",
        support::adt("H2", "MRN-2"),
        support::adt("H3", "MRN-3")
    );
    let bad = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|H4|P|2.5\rP!D|1||MRN-4\r";
    let results = send(
        port,
        json!([
            {"body": good, "content_type": "x-application/hl7-v2+er7"},
            {"body": batch, "content_type": "x-application/hl7-v2+er7"},
            {"body": "THIS IS NOT HL7", "content_type": "text/plain"},
            {"body": bad},
        ]),
    );
    assert_eq!(statuses(&results), [202, 202, 400, 400], "{results:#?}");
    assert_eq!(body(&results[1])["records"], 2);
    let reason = body(&results[3])["error"].as_str().unwrap().to_string();
    assert!(reason.contains("message 1"), "{reason}");
    let (_, summary, _) = stop(server);
    let out = rows(&dir.path().join("out.ndjson"));
    let mut mrns: Vec<&str> = out.iter().map(|r| r["mrn"].as_str().unwrap()).collect();
    mrns.sort();
    assert_eq!(mrns, ["MRN-1", "MRN-2", "MRN-3"]);
    let dlq = rows(&dir.path().join("dlq.ndjson"));
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert_eq!(summary["dead_lettered"], 2, "{summary}");
}

/// `handoff:` to Kafka: 202 once the topic has every record; the flow reads them back.
#[test]
fn kafka_handoff_answers_202_once_the_topic_has_the_records() {
    let topic = support::unique("http-in");
    support::create_topics(&[(&topic, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = pipeline(
        dir.path(),
        port,
        "json",
        &format!(
            "  handoff: {{topic: {topic}, group: {}}}",
            support::unique("g")
        ),
        JSON_STAGES,
    );
    support::add_kafka_block(&p);
    let server = serve(&p, port);
    let batch = format!(
        "[{},{}]",
        event("k2", "patient.updated"),
        event("k3", "patient.updated")
    );
    let results = send(
        port,
        json!([{"body": event("k1", "patient.updated")}, {"body": batch}]),
    );
    assert_eq!(statuses(&results), [202, 202], "{results:#?}");
    assert_eq!(body(&results[1])["records"], 2);
    let on_topic = support::read_topic(&topic, 3, Duration::from_secs(30));
    assert_eq!(on_topic.len(), 3);
    assert!(
        on_topic[0]
            .header("plexus.record-source")
            .starts_with(&format!("http://127.0.0.1:{port}/events/127.0.0.1:"))
    );
    let started = std::time::Instant::now();
    while rows(&dir.path().join("out.ndjson")).len() < 3 && started.elapsed().as_secs() < 60 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, summary, _) = stop(server);
    let out = rows(&dir.path().join("out.ndjson"));
    let mut ids: Vec<&str> = out.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["k1", "k2", "k3"]);
    assert!(
        out[0]["_source"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{topic}/"))
    );
    assert_eq!(summary["records_in"], 3, "{summary}");
}

/// Two servers sharing PostgreSQL keys: a retry that lands on the other server is still a
/// duplicate.
#[test]
fn idempotency_keys_in_postgresql_are_shared_between_servers() {
    let url = support::database_url();
    support::need("PostgreSQL", "127.0.0.1:5432");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(), free_port());
    let extra = "  idempotency: {store: postgres}";
    let p_a = pipeline(dir_a.path(), port_a, "json", extra, JSON_STAGES);
    let p_b = pipeline(dir_b.path(), port_b, "json", extra, JSON_STAGES);
    let env = [("DATABASE_URL", url.as_str())];
    let (a, b) = (serve_env(&p_a, port_a, &env), serve_env(&p_b, port_b, &env));
    let key = support::unique("idem");
    let req =
        json!([{"body": event("pg1", "patient.updated"), "headers": {"Idempotency-Key": key}}]);
    let first = send(port_a, req.clone());
    let second = send(port_b, req);
    assert_eq!(
        (statuses(&first), statuses(&second)),
        (vec![202], vec![200])
    );
    assert_eq!(body(&first[0]), body(&second[0]));
    let ((_, sa, _), (_, sb, _)) = (stop(a), stop(b));
    assert_eq!(
        (sa["records_in"].as_u64(), sb["records_in"].as_u64()),
        (Some(1), Some(0))
    );
}

/// The shipped `pipelines/webhook_events.yaml` (on a free port, outputs in a temporary
/// directory): the seed's three event types reach the FHIR server, others are kept aside,
/// an event whose data does not match its type is dead-lettered.
#[test]
fn the_shipped_webhook_pipeline_takes_the_seed_events_to_the_fhir_server() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shipped = std::fs::read_to_string(support::repo().join("pipelines/webhook_events.yaml"))
        .unwrap()
        .replace("127.0.0.1:8088", &format!("127.0.0.1:{port}"))
        .replace("../out/", "")
        .replace(
            "../schemas/",
            &format!("{}/", support::repo().join("schemas").display()),
        );
    let p = dir.path().join("webhook_events.yaml");
    std::fs::write(&p, shipped).unwrap();
    let server = serve_env(&p, port, &[("WEBHOOK_SECRET", SECRET)]);
    let run = support::unique("wh").replace(['-', '_'], "");
    let ev = |id: &str, kind: &str, data: Value| {
        json!({"body": json!({"id": id, "type": kind, "timestamp": "2026-11-30T10:00:00Z",
                              "data": data}).to_string(),
               "sign": "timestamped", "secret": SECRET})
    };
    let patient = json!({"resourceType": "Patient", "id": format!("p{run}"),
        "identifier": [{"system": "urn:partner:mrn", "value": format!("m{run}")}],
        "name": [{"family": "Okafor", "given": ["Ada"]}], "birthDate": "1980-01-02"});
    let appointment = json!({"resourceType": "Appointment", "id": format!("a{run}"),
        "status": "cancelled", "cancelationReason": {"text": "patient request"},
        "participant": [{"actor": {"reference": format!("Patient/p{run}")}, "status": "declined"}]});
    let slot = json!({"resourceType": "Slot", "id": format!("s{run}"),
        "schedule": {"reference": "Schedule/dr-lee"}, "status": "busy-unavailable",
        "start": "2026-12-01T09:00:00Z", "end": "2026-12-01T09:30:00Z"});
    let results = send_to(
        &format!("http://127.0.0.1:{port}/webhooks/partner"),
        json!([
            ev(&format!("e1{run}"), "patient.updated", patient),
            ev(&format!("e2{run}"), "appointment.cancelled", appointment),
            ev(&format!("e3{run}"), "provider.availability.changed", slot),
            ev(
                &format!("e4{run}"),
                "provider.created",
                json!({"resourceType": "Practitioner", "id": "x"})
            ),
            ev(
                &format!("e5{run}"),
                "patient.updated",
                json!({"resourceType": "Slot", "id": "y"})
            ),
        ]),
    );
    assert_eq!(
        statuses(&results),
        [202, 202, 202, 202, 202],
        "{results:#?}"
    );
    let (code, summary, stderr) = stop(server);
    assert_eq!(
        (
            summary["records_in"].as_u64(),
            summary["delivered"].as_u64(),
            summary["dead_lettered"].as_u64()
        ),
        (Some(5), Some(4), Some(1)),
        "{summary}\n{stderr}"
    );
    assert_eq!(code, Some(3), "{stderr}");
    let unhandled = rows(&dir.path().join("webhook_unhandled.ndjson"));
    assert_eq!(unhandled.len(), 1);
    assert_eq!(unhandled[0]["type"], "provider.created");
    let dlq = rows(&dir.path().join("webhook_events.dlq.ndjson"));
    assert_eq!(dlq[0]["rule"], "resource_matches_event", "{dlq:?}");
    let get = |path: String| -> Value {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:8089/fhir/{path}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(
        get(format!("Patient/p{run}"))["name"][0]["family"],
        "Okafor"
    );
    assert_eq!(get(format!("Appointment/a{run}"))["status"], "cancelled");
    assert_eq!(get(format!("Slot/s{run}"))["status"], "busy-unavailable");
}

/// HTTPS with client certificates: Python's ssl (OpenSSL) as the client. A client without a
/// certificate, and plain HTTP to the HTTPS port, are refused in the handshake and counted.
#[test]
fn https_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::Pki::new(dir.path());
    let port = free_port();
    let tls = format!(
        "  tls: {{cert: {}, key: {}, client_ca: {}}}",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem")
    );
    let p = pipeline(dir.path(), port, "json", &tls, JSON_STAGES);
    let server = serve(&p, port);
    let https = format!("https://127.0.0.1:{port}/events");
    let one = |id: &str| json!([{"body": event(id, "patient.updated")}]);
    let ca = ("WEBHOOK_CA", pki.path("ca.pem"));
    let with_cert = [
        ca.clone(),
        ("WEBHOOK_CERT", pki.path("client.pem")),
        ("WEBHOOK_KEY", pki.path("client.key")),
    ];
    assert_eq!(statuses(&send_with(&https, one("t1"), &with_cert)), [202]);
    let no_cert = send_with(&https, one("t2"), std::slice::from_ref(&ca));
    assert_eq!(statuses(&no_cert), [0], "{no_cert:?}");
    let plain = send_to(&format!("http://127.0.0.1:{port}/events"), one("t3"));
    assert_eq!(statuses(&plain), [0], "{plain:?}");
    let (_, summary, _) = stop(server);
    assert_eq!(summary["records_in"], 1, "{summary}");
    let out = rows(&dir.path().join("out.ndjson"));
    assert!(
        out[0]["_source"].as_str().unwrap().starts_with("https://"),
        "{}",
        out[0]
    );
    let line = summary_line(&summary, "http ");
    // The two refused senders, and the test's readiness probe (a TCP connect, no TLS).
    assert!(line.contains("3 failed TLS handshakes"), "{line}");
}
