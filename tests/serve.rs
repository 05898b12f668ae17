//! `plexus serve` as a process: API keys from the CLI, every route's authentication and
//! roles, the integration lifecycle (a broken pipeline refused with locations, fixed,
//! activated, fed over HTTP ingest, updated while messages flow, deactivated), pipelines from
//! a directory, rate limits. A plain HTTP/1.1 client over a socket: nothing shared with the
//! server's code.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::listener::{free_port, wait_for_port};

/// One HTTP exchange: (status, lower-cased headers, body).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n..];
        s = s.strip_prefix("\r\n").unwrap_or(s);
    }
    out
}

fn call(port: u16, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Reply {
    let body = body.map(|b| b.to_string());
    http(port, method, path, key, body.as_deref()).unwrap()
}

/// The status of a request without a body.
fn status(port: u16, method: &str, path: &str, key: Option<&str>) -> u16 {
    call(port, method, path, key, None).status
}

fn new_key(state: &Path, role: &str, name: &str) -> String {
    new_key_with(state, role, name, &[])
}

fn new_key_with(state: &Path, role: &str, name: &str, extra: &[&str]) -> String {
    let out = Command::new(support::BIN)
        .args(["keys", "create", "--state"])
        .arg(state)
        .args(["--role", role, "--name", name])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout.lines().last().unwrap().trim().to_string()
}

/// A server process, killed when dropped unless stopped: a failing test must not leave a
/// server behind (on the shared PostgreSQL registry it would join later tests' groups).
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_server(state: &Path, port: u16, extra: &[&str]) -> Server {
    start_with_keys(state, port, extra, Some(K1), "")
}

/// `plexus serve` with this master key (None: without one) and old keys.
fn start_with_keys(
    state: &Path,
    port: u16,
    extra: &[&str],
    key: Option<&str>,
    old: &str,
) -> Server {
    let mut cmd = Command::new(support::BIN);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--state"])
        .arg(state)
        .args(["--reconcile-every", "300ms"])
        .args(extra)
        .env("PLEXUS_MASTER_KEY_OLD", old)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match key {
        Some(k) => cmd.env("PLEXUS_MASTER_KEY", k),
        None => cmd.env_remove("PLEXUS_MASTER_KEY"),
    };
    let server = Server(Some(cmd.spawn().unwrap()));
    wait_for_port(port, Duration::from_secs(30));
    server
}

/// SIGTERM, then the exit status and stderr.
fn stop_server(mut server: Server) -> (Option<i32>, String) {
    let child = server.0.take().expect("running");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The output's complete rows (a line being written is not one yet).
fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn hl7(i: u64) -> String {
    format!(
        "MSH|^~\\&|SENDAPP|SENDFAC|PLEXUS|HUB|20260105143000||ADT^A01^ADT_A01|C{i}|P|2.5.1\rPID|1||M{i}^^^GHH^MR||DOE^JOHN||19800102|M\r"
    )
}

/// An HTTP-ingest pipeline for integration `id`; `columns` are PID paths the parse stage reads.
fn ingest_pipeline(id: &str, port: u16, columns: &str) -> String {
    format!(
        r#"name: {id}
integration: {{id: {id}}}
source: {{type: http, listen: "127.0.0.1:{port}", path: /hl7, format: hl7, spool: spool}}
batch: {{max_rows: 200, max_delay: 50ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
{columns}
sinks:
  - {{name: out, input: parse, type: file, format: ndjson, path: out.ndjson}}
dlq: {{path: dlq.ndjson}}
"#
    )
}

const MRN: &str = "      - {name: mrn, path: PID-3.1}\n";

/// Posts HL7 to the ingest port; true when answered 202.
fn ingest(port: u16, i: u64) -> bool {
    ingest_as(port, i, None) == 202
}

/// Posts HL7 to the ingest port with an optional bearer token; the status (0: no answer).
fn ingest_as(port: u16, i: u64, token: Option<&str>) -> u16 {
    post_hl7(port, &hl7(i), token)
}

/// Posts one HL7 message to an ingest port; the status (0: no answer).
fn post_hl7(port: u16, msg: &str, token: Option<&str>) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "POST /hl7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{msg}",
        msg.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Who did the latest `action` in the server's audit log.
fn last_actor(port: u16, admin: &str, action: &str) -> String {
    let log = call(
        port,
        "GET",
        &format!("/api/v1/audit?action={action}"),
        Some(admin),
        None,
    )
    .json();
    log["entries"][0]["actor"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_route_checks_keys_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (admin, operator, viewer) = (
        new_key(&state, "admin", "ada"),
        new_key(&state, "operator", "otto"),
        new_key(&state, "viewer", "vic"),
    );
    let port = free_port();
    let server = start_server(&state, port, &[]);
    // Open routes.
    assert_eq!(status(port, "GET", "/health", None), 200);
    assert_eq!(status(port, "GET", "/ready", None), 200);
    // Every other route: 401 without a key, with a wrong one, with a revoked one.
    let routes: &[(&str, &str, Option<Value>, &str)] = &[
        ("GET", "/metrics", None, "viewer"),
        ("GET", "/api/v1/integrations", None, "viewer"),
        (
            "POST",
            "/api/v1/integrations",
            Some(json!({"id": "x", "pipeline": "name: x"})),
            "admin",
        ),
        ("GET", "/api/v1/integrations/none", None, "viewer"),
        (
            "PUT",
            "/api/v1/integrations/none",
            Some(json!({"pipeline": "name: x"})),
            "admin",
        ),
        ("DELETE", "/api/v1/integrations/none", None, "admin"),
        ("POST", "/api/v1/integrations/none/activate", None, "admin"),
        (
            "POST",
            "/api/v1/integrations/none/deactivate",
            None,
            "admin",
        ),
        ("GET", "/api/v1/integrations/none/versions", None, "viewer"),
        ("GET", "/api/v1/integrations/none/diff", None, "viewer"),
        (
            "POST",
            "/api/v1/integrations/none/rollback",
            Some(json!({"revision": 1})),
            "admin",
        ),
        (
            "POST",
            "/api/v1/integrations/none/test",
            Some(json!({})),
            "operator",
        ),
        ("GET", "/api/v1/keys", None, "admin"),
        (
            "POST",
            "/api/v1/keys",
            Some(json!({"name": "n", "role": "viewer"})),
            "admin",
        ),
        ("DELETE", "/api/v1/keys/00000000", None, "admin"),
        ("GET", "/api/v1/audit", None, "admin"),
        ("GET", "/api/v1/integrations/none/health", None, "viewer"),
        ("GET", "/api/v1/integrations/none/breakers", None, "viewer"),
        (
            "POST",
            "/api/v1/integrations/none/breakers/out/open",
            None,
            "operator",
        ),
        (
            "POST",
            "/api/v1/integrations/none/breakers/out/reset",
            None,
            "operator",
        ),
        ("GET", "/api/v1/integrations/none/alerts", None, "viewer"),
        (
            "POST",
            "/api/v1/integrations/none/query",
            Some(json!({"sql": "SELECT 1"})),
            "viewer",
        ),
        (
            "GET",
            "/api/v1/integrations/none/dead-letters",
            None,
            "viewer",
        ),
        (
            "GET",
            "/api/v1/integrations/none/dead-letters/1",
            None,
            "viewer",
        ),
        (
            "POST",
            "/api/v1/integrations/none/dead-letters/replay",
            Some(json!({"dryRun": true})),
            "operator",
        ),
        ("GET", "/api/v1/integrations/none/conflicts", None, "viewer"),
        (
            "POST",
            "/api/v1/integrations/none/conflicts/abc/resolve",
            Some(json!({"strategy": "use_local"})),
            "operator",
        ),
        ("GET", "/api/v1/integrations/none/testing", None, "viewer"),
        ("DELETE", "/api/v1/integrations/none/testing", None, "admin"),
        (
            "GET",
            "/api/v1/integrations/none/testing/out.ndjson",
            None,
            "viewer",
        ),
        ("GET", "/api/v1/secrets", None, "admin"),
        (
            "PUT",
            "/api/v1/secrets/none",
            Some(json!({"value": "v"})),
            "admin",
        ),
        ("DELETE", "/api/v1/secrets/none", None, "admin"),
    ];
    // The list is every operation the server documents: a route added later without a
    // line here fails this test. The event stream never ends, so its roles are checked
    // by `the_event_stream_follows_status_and_counts`; the open routes above.
    let documented = call(port, "GET", "/openapi.json", None, None).json();
    assert!(documented["paths"].as_object().unwrap().len() > 20);
    let mut missing = Vec::new();
    for (path, ops) in documented["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            if ["/health", "/ready", "/openapi.json", "/api/v1/events"].contains(&path.as_str()) {
                continue;
            }
            let covered = routes.iter().any(|(m, p, _, _)| {
                *m == method
                    && p.split('/').count() == path.split('/').count()
                    && p.split('/')
                        .zip(path.split('/'))
                        .all(|(a, b)| a == b || (b.starts_with('{') && b.ends_with('}')))
            });
            if !covered {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "routes not in the matrix: {missing:?}");
    // The last digit changed (to one it is not: the key may end in 0).
    let last = if admin.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &admin[..admin.len() - 1]);
    let rank = |r: &str| {
        ["viewer", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    for (method, path, body, needs) in routes {
        for key in [None, Some("nonsense"), Some(wrong.as_str())] {
            let r = call(port, method, path, key, body.clone());
            assert_eq!(r.status, 401, "{method} {path} with {key:?}: {}", r.body);
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            assert!(!r.body.contains(&admin[12..]), "no key material in errors");
        }
        for (role, key) in [
            ("viewer", &viewer),
            ("operator", &operator),
            ("admin", &admin),
        ] {
            let r = call(port, method, path, Some(key), body.clone());
            if rank(role) < rank(needs) {
                assert_eq!(r.status, 403, "{role} {method} {path}: {}", r.body);
            } else {
                // Allowed: whatever the answer, it is not a refusal of the caller.
                assert!(
                    ![401, 403].contains(&r.status) && r.status < 500,
                    "{role} {method} {path}: {} {}",
                    r.status,
                    r.body
                );
            }
            assert!(r.header("x-request-id").is_some());
        }
    }
    // Keys made over the API work at once; revoked ones stop working.
    let made = call(
        port,
        "POST",
        "/api/v1/keys",
        Some(&admin),
        Some(json!({"name": "late", "role": "viewer"})),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let late = made.json()["key"].as_str().unwrap().to_string();
    let late_id = made.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        status(port, "GET", "/api/v1/integrations", Some(&late)),
        200
    );
    let listed = call(port, "GET", "/api/v1/keys", Some(&admin), None);
    assert!(
        !listed.body.contains(&late[12..]),
        "secrets are never listed"
    );
    assert!(!listed.body.contains("hash"), "{}", listed.body);
    let gone = call(
        port,
        "DELETE",
        &format!("/api/v1/keys/{late_id}"),
        Some(&admin),
        None,
    );
    assert_eq!(gone.status, 200);
    assert_eq!(
        status(port, "GET", "/api/v1/integrations", Some(&late)),
        401
    );
    // The audit log names who did it, from where, under which request.
    let log = call(
        port,
        "GET",
        "/api/v1/audit?action=key.revoke",
        Some(&admin),
        None,
    )
    .json();
    let entry = &log["entries"][0];
    assert_eq!(entry["target"], late_id.as_str());
    assert!(
        entry["actor"].as_str().unwrap().contains("(ada)"),
        "{entry}"
    );
    assert!(entry["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

#[test]
fn an_integration_lives_from_a_refused_draft_to_an_update_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key(&state, "admin", "ada");
    let viewer = new_key(&state, "viewer", "vic");
    let (port, ingest_port) = (free_port(), free_port());
    let server = start_server(&state, port, &[]);
    let id = "adt-in";

    // A broken pipeline: 422 with every problem at its line and column; nothing stored.
    let broken = ingest_pipeline(
        id,
        ingest_port,
        "      - {name: mrn, path: PID-3.1, kind: nope}\n",
    )
    .replace("input: parse", "input: parsed");
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": id, "facilityId": "F1", "systemType": "ehr", "pipeline": broken})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let errors = r.json()["errors"].as_array().unwrap().clone();
    assert!(!errors.is_empty());
    for e in &errors {
        assert!(
            e["line"].as_u64().unwrap() > 1 && e["column"].as_u64().unwrap() >= 1,
            "{e}"
        );
    }
    assert_eq!(
        status(
            port,
            "GET",
            &format!("/api/v1/integrations/{id}"),
            Some(&admin)
        ),
        404
    );
    // Credentials are refused rather than stored in plain text.
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({
        "id": id, "pipeline": ingest_pipeline(id, ingest_port, MRN),
        "connection": {"type": "hl7", "authentication": {"type": "basic", "credentials": {"password": "pw"}}}})),
    );
    assert_eq!(r.status, 422);
    assert!(!r.body.contains("\"pw\""), "{}", r.body);

    // Fixed: stored inactive, then activated.
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({
        "id": id, "facilityId": "F1", "systemType": "ehr", "systemName": "Epic", "vendor": "Epic",
        "pipeline": ingest_pipeline(id, ingest_port, MRN)})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (r.json()["status"].as_str(), r.json()["revision"].as_i64()),
        (Some("inactive"), Some(1))
    );
    assert_eq!(
        call(
            port,
            "POST",
            "/api/v1/integrations",
            Some(&admin),
            Some(json!({
        "id": id, "pipeline": ingest_pipeline(id, ingest_port, MRN)}))
        )
        .status,
        409
    );
    let r = call(
        port,
        "POST",
        &format!("/api/v1/integrations/{id}/activate"),
        Some(&admin),
        None,
    );
    assert_eq!(r.json()["status"], "active", "{}", r.body);
    wait_for_port(ingest_port, Duration::from_secs(10));

    // Messages flow; an update lands while a sender keeps sending (retrying while the
    // listener is between versions, as senders do).
    let accepted = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (accepted, done) = (accepted.clone(), done.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                if ingest(ingest_port, i) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    wait_until("150 accepted", Duration::from_secs(30), || {
        accepted.load(Ordering::Relaxed) >= 150
    });
    let r = call(
        port,
        "GET",
        &format!("/api/v1/integrations/{id}"),
        Some(&viewer),
        None,
    );
    assert!(
        r.json()["run"]["records_in"].as_u64().unwrap() > 0,
        "{}",
        r.body
    );
    let metrics = call(port, "GET", "/metrics", Some(&viewer), None);
    assert!(
        metrics.body.contains(&format!(
            "plexus_records_in_total{{pipeline=\"{id}\",integration=\"{id}\"}}"
        )),
        "{}",
        metrics.body
    );
    let updated = ingest_pipeline(
        id,
        ingest_port,
        &format!("{MRN}      - {{name: family, path: PID-5.1}}\n"),
    );
    let r = call(
        port,
        "PUT",
        &format!("/api/v1/integrations/{id}"),
        Some(&admin),
        Some(json!({
        "facilityId": "F1", "systemType": "ehr", "pipeline": updated})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["revision"].as_i64(), r.json()["status"].as_str()),
        (Some(2), Some("active")),
        "{}",
        r.body
    );
    // The old version drained: its run's summary is the last run.
    assert!(
        r.json()["run"]["last_run"]["records_in"].as_u64().unwrap() > 0,
        "{}",
        r.body
    );
    let before = accepted.load(Ordering::Relaxed);
    wait_until("the new version accepting", Duration::from_secs(30), || {
        accepted.load(Ordering::Relaxed) >= before + 100
    });
    done.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let sent = accepted.load(Ordering::Relaxed);
    let out = state.join("integrations").join(id).join("out.ndjson");
    wait_until(
        "every accepted message in the output",
        Duration::from_secs(30),
        || rows(&out).len() as u64 >= sent,
    );
    let rows = rows(&out);
    assert_eq!(
        rows.len() as u64,
        sent,
        "no loss, no duplicates across the update"
    );
    assert!(
        rows.iter().any(|r| r["family"] == "DOE"),
        "the new version's column"
    );
    assert!(
        rows.iter().any(|r| r.get("family").is_none()),
        "the old version's rows"
    );

    // History, rollback, deactivation with the run's summary, deletion.
    let v = call(
        port,
        "GET",
        &format!("/api/v1/integrations/{id}/versions"),
        Some(&viewer),
        None,
    )
    .json();
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    // What the update changed: the pipeline as a unified diff, line by line.
    let diff = |q: &str| {
        let r = call(
            port,
            "GET",
            &format!("/api/v1/integrations/{id}/diff{q}"),
            Some(&viewer),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let d = diff("");
    assert_eq!((d["from"].as_i64(), d["to"].as_i64()), (Some(1), Some(2)));
    let text = d["pipeline"].as_str().unwrap();
    assert!(
        text.starts_with("--- revision 1\n+++ revision 2\n"),
        "{text}"
    );
    let added: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert!(
        !added.is_empty() && added.iter().all(|l| l.contains("family")),
        "{text}"
    );
    assert!(
        diff("?from=2&to=2")["pipeline"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        call(
            port,
            "GET",
            &format!("/api/v1/integrations/{id}/diff?from=9"),
            Some(&viewer),
            None
        )
        .status,
        404
    );
    let r = call(
        port,
        "POST",
        &format!("/api/v1/integrations/{id}/deactivate"),
        Some(&admin),
        None,
    );
    assert_eq!(r.json()["status"], "inactive", "{}", r.body);
    assert!(
        r.json()["run"]["last_run"]["records_in"].as_u64().unwrap() > 0,
        "{}",
        r.body
    );
    let r = call(
        port,
        "POST",
        &format!("/api/v1/integrations/{id}/rollback"),
        Some(&admin),
        Some(json!({"revision": 1})),
    );
    assert_eq!(
        (
            r.json()["revision"].as_i64(),
            r.json()["pipeline"].as_str().map(|p| p.contains("family"))
        ),
        (Some(3), Some(false))
    );
    let d = diff("");
    assert!(
        d["pipeline"]
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l.starts_with('-') && l.contains("family")),
        "the rollback took the column out again: {d}"
    );
    let audit = call(
        port,
        "GET",
        &format!("/api/v1/audit?target={id}"),
        Some(&admin),
        None,
    )
    .json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "integration.rollback",
            "integration.deactivate",
            "integration.update",
            "integration.activate",
            "integration.create"
        ]
    );
    assert_eq!(
        status(
            port,
            "DELETE",
            &format!("/api/v1/integrations/{id}"),
            Some(&admin)
        ),
        200
    );
    assert_eq!(
        status(
            port,
            "GET",
            &format!("/api/v1/integrations/{id}"),
            Some(&admin)
        ),
        404
    );
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

#[test]
fn pipelines_from_a_directory_reload_and_keys_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pipelines) = (dir.path().join("state"), dir.path().join("pipelines"));
    std::fs::create_dir_all(&pipelines).unwrap();
    let viewer = new_key(&state, "viewer", "vic");
    let ingest_port = free_port();
    let file = pipelines.join("feed.yaml");
    std::fs::write(&file, ingest_pipeline("feed", ingest_port, MRN)).unwrap();
    let bad_stage = "      - {name: mrn, path: PID-3.1, kind: nope}\n";
    std::fs::write(
        pipelines.join("broken.yaml"),
        ingest_pipeline("broken", free_port(), bad_stage),
    )
    .unwrap();
    let port = free_port();
    let server = start_server(
        &state,
        port,
        &[
            "--pipelines",
            pipelines.to_str().unwrap(),
            "--api-rate",
            "2",
            "--api-burst",
            "3",
        ],
    );
    wait_for_port(ingest_port, Duration::from_secs(10));
    assert!(ingest(ingest_port, 1));
    let r = call(
        port,
        "GET",
        "/api/v1/integrations/feed",
        Some(&viewer),
        None,
    );
    assert_eq!(
        (r.json()["origin"].as_str(), r.json()["status"].as_str()),
        (Some("directory"), Some("active")),
        "{}",
        r.body
    );
    let first = r.json()["run"]["version"].clone();
    let broken = call(
        port,
        "GET",
        "/api/v1/integrations/broken",
        Some(&viewer),
        None,
    )
    .json();
    assert_eq!(broken["status"], "error");
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("broken.yaml:10:"),
        "{broken}"
    );
    assert_eq!(
        status(port, "GET", "/ready", None),
        503,
        "an integration in error"
    );

    // Over the rate: 429 with when to retry.
    std::thread::sleep(Duration::from_secs(2));
    let replies: Vec<Reply> = (0..8)
        .map(|_| call(port, "GET", "/api/v1/integrations", Some(&viewer), None))
        .collect();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty() && replies.iter().filter(|r| r.status == 200).count() >= 3);
    for r in limited {
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&after), "{after}");
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    }
    std::thread::sleep(Duration::from_secs(2));

    // A change that does not plan is refused; the running version keeps running.
    std::fs::write(&file, ingest_pipeline("feed", ingest_port, bad_stage)).unwrap();
    wait_until("the refusal", Duration::from_secs(20), || {
        let r = call(
            port,
            "GET",
            "/api/v1/integrations/feed",
            Some(&viewer),
            None,
        )
        .json();
        r["reason"]
            .as_str()
            .is_some_and(|w| w.contains("feed.yaml:10:"))
            && r["status"] == "active"
    });
    assert!(ingest(ingest_port, 3));
    // The file changes: the new version runs; the file goes: it stops.
    std::fs::write(
        &file,
        ingest_pipeline(
            "feed",
            ingest_port,
            &format!("{MRN}      - {{name: family, path: PID-5.1}}\n"),
        ),
    )
    .unwrap();
    std::fs::remove_file(pipelines.join("broken.yaml")).unwrap();
    wait_until("the new version", Duration::from_secs(20), || {
        let r = call(
            port,
            "GET",
            "/api/v1/integrations/feed",
            Some(&viewer),
            None,
        )
        .json();
        r["run"]["version"] != first && r["status"] == "active"
    });
    wait_for_port(ingest_port, Duration::from_secs(10));
    assert!(ingest(ingest_port, 2));
    assert_eq!(status(port, "GET", "/ready", None), 200);
    std::fs::remove_file(&file).unwrap();
    wait_until("the integration gone", Duration::from_secs(20), || {
        status(port, "GET", "/api/v1/integrations/feed", Some(&viewer)) == 404
    });
    let out = rows(&pipelines.join("out.ndjson"));
    assert_eq!(out.len(), 3, "{out:?}");
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

/// schemathesis (an independent tool) reads `/openapi.json` and probes every route with
/// generated requests, as an admin, with an integration present: no 5xx, and every answer's
/// status, content type, headers and body as documented. Its `positive_data_acceptance`
/// check is left out: a schema-valid body may still hold a pipeline that does not plan,
/// which is answered 422 by design.
#[test]
fn schemathesis_finds_every_route_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key_with(&state, "admin", "ada", &["--phi"]);
    let port = free_port();
    let server = start_server(
        &state,
        port,
        &["--api-rate", "100000", "--api-burst", "100000"],
    );
    let doc = call(port, "GET", "/openapi.json", None, None).json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        30,
        "{}",
        doc["paths"]
    );
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({
        "id": "probe", "pipeline": ingest_pipeline("probe", free_port(), MRN)})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let schemathesis = support::services_dir().join("schemathesis-venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "run scripts/dev-services up (it installs schemathesis)"
    );
    let out = Command::new(schemathesis)
        .args(["run", &format!("http://127.0.0.1:{port}/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "40", "--workers", "1", "--seed", "1"])
        // An endless stream: its own test reads it.
        .args(["--exclude-path", "/api/v1/events"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Tested: 35"), "{text}");
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

/// Two servers on one PostgreSQL registry and one Kafka cluster: an integration created on
/// one runs on both (the other picks it up on its next reconciliation), and its consumer
/// group splits the topic between them: every message processed, by one server or the other.
#[test]
fn two_servers_share_a_registry_and_split_a_topic() {
    let url = support::database_url();
    let brokers = support::brokers();
    let id =
        support::unique("shared").replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let topic = format!("{id}-in");
    support::create_topics(&[(&topic, 4)]);
    let dir = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    let out = Command::new(support::BIN)
        .args(["keys", "create", "--state"])
        .arg(&state_a)
        .args(["--registry", &url, "--role", "admin", "--name", "both"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    // The registry is shared by every run: the integration goes with the test, even a
    // failed one (a leftover would run in every later test's servers).
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            support::psql(&format!(
                "DELETE FROM plexus_integrations WHERE id = '{}'",
                self.0
            ));
        }
    }
    let _cleanup = Cleanup(id.clone());
    let (port_a, port_b) = (free_port(), free_port());
    let a = start_server(&state_a, port_a, &["--registry", &url]);
    let b = start_server(&state_b, port_b, &["--registry", &url]);
    let pipeline = format!(
        r#"name: shared
integration: {{id: {id}}}
kafka: {{brokers: "{brokers}"}}
source: {{type: kafka, topics: [{topic}], group: {id}, format: hl7}}
batch: {{max_rows: 100, max_delay: 50ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: control, path: MSH-10}}
sinks:
  - {{name: out, input: parse, type: file, format: ndjson, path: out.ndjson}}
dlq: {{path: dlq.ndjson}}
"#
    );
    let r = call(
        port_a,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": id, "pipeline": pipeline, "isActive": true})),
    );
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (201, Some("active")),
        "{}",
        r.body
    );
    // The key and the integration are in the shared registry: server B knows both.
    wait_until("server B running it", Duration::from_secs(20), || {
        call(
            port_b,
            "GET",
            &format!("/api/v1/integrations/{id}"),
            Some(&admin),
            None,
        )
        .json()["status"]
            == "active"
    });
    // Both members in the group before the messages come: a few seconds of rebalancing.
    std::thread::sleep(Duration::from_secs(6));
    let n = 800u64;
    for round in 0..20 {
        let recs = (0..n / 20)
            .map(|k| {
                let i = round * (n / 20) + k;
                let mut r = support::Rec::value(hl7(i));
                r.key = Some(format!("k{i}").into_bytes());
                r
            })
            .collect();
        support::produce(&topic, recs);
        std::thread::sleep(Duration::from_millis(200));
    }
    let outs = [
        state_a.join("integrations").join(&id).join("out.ndjson"),
        state_b.join("integrations").join(&id).join("out.ndjson"),
    ];
    let distinct = |outs: &[std::path::PathBuf]| {
        outs.iter()
            .flat_map(|o| rows(o))
            .filter_map(|r| r["control"].as_str().map(str::to_string))
            .collect::<std::collections::HashSet<_>>()
            .len() as u64
    };
    wait_until("every message processed", Duration::from_secs(60), || {
        distinct(&outs) == n
    });
    let (a_rows, b_rows) = (rows(&outs[0]).len(), rows(&outs[1]).len());
    assert!(
        a_rows > 0 && b_rows > 0,
        "both servers took a share: {a_rows} and {b_rows}"
    );
    // The health monitor reaches the Kafka cluster (a file sink has nothing to check).
    let h = call(
        port_b,
        "GET",
        &format!("/api/v1/integrations/{id}/health"),
        Some(&admin),
        None,
    )
    .json();
    assert_eq!(
        (h["healthy"].as_bool(), h["checks"][0]["sink"].as_str()),
        (Some(true), Some("kafka")),
        "{h}"
    );
    assert_eq!(stop_server(a).0, Some(0));
    assert_eq!(stop_server(b).0, Some(0));
}

const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff";

/// Credentials: stored sealed over the API (write-only), read by a pipeline as `secret:NAME`,
/// never in answers, the audit log or the registry's file; the master key rotates.
#[test]
fn secrets_are_sealed_write_only_and_survive_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key(&state, "admin", "ada");
    let (port, ingest_port) = (free_port(), free_port());
    let token = "partner-token-7f3a9c";
    let start = |key: &str, old: &str| start_with_keys(&state, port, &[], Some(key), old);
    let server = start(K1, "");
    let r = call(
        port,
        "PUT",
        "/api/v1/secrets/partner",
        Some(&admin),
        Some(json!({"value": token})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(token));
    let pipeline = ingest_pipeline("guarded", ingest_port, MRN).replace(
        "spool: spool}",
        "spool: spool, auth: {bearer: {partner: \"secret:partner\"}}}",
    );
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": "guarded", "pipeline": pipeline, "isActive": true})),
    );
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (201, Some("active")),
        "{}",
        r.body
    );
    wait_for_port(ingest_port, Duration::from_secs(10));
    assert_eq!(ingest_as(ingest_port, 1, Some(token)), 202);
    assert_eq!(ingest_as(ingest_port, 2, Some("wrong")), 401);
    for path in [
        "/api/v1/secrets",
        "/api/v1/audit",
        "/api/v1/integrations/guarded",
    ] {
        let r = call(port, "GET", path, Some(&admin), None);
        assert_eq!(r.status, 200);
        assert!(!r.body.contains(token), "{path}: {}", r.body);
    }
    let listed = call(port, "GET", "/api/v1/secrets", Some(&admin), None).json();
    let k1_id = listed["secrets"][0]["keyId"].as_str().unwrap().to_string();
    let db = std::fs::read(state.join("registry.db")).unwrap();
    assert!(
        !db.windows(token.len()).any(|w| w == token.as_bytes()),
        "no plain secret on disk"
    );
    assert_eq!(stop_server(server).0, Some(0));

    // Rotation: the new key re-seals everything (the old one opens it), then serves alone.
    let out = Command::new(support::BIN)
        .args(["keys", "rotate", "--state"])
        .arg(&state)
        .env("PLEXUS_MASTER_KEY", K2)
        .env("PLEXUS_MASTER_KEY_OLD", K1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("re-sealed 1 secret"));
    let server = start(K2, "");
    wait_for_port(ingest_port, Duration::from_secs(10));
    let listed = call(port, "GET", "/api/v1/secrets", Some(&admin), None).json();
    assert_ne!(listed["secrets"][0]["keyId"].as_str().unwrap(), k1_id);
    assert_eq!(ingest_as(ingest_port, 3, Some(token)), 202);
    // Without a master key, secrets are refused, not stored in the clear.
    assert_eq!(stop_server(server).0, Some(0));
    let server = start_with_keys(&state, port, &[], None, "");
    let r = call(
        port,
        "PUT",
        "/api/v1/secrets/other",
        Some(&admin),
        Some(json!({"value": "x"})),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    let (_, stderr) = stop_server(server);
    assert!(!stderr.contains(token));
}

/// The dashboard's event stream: a status event when an integration starts, counts that
/// follow ingest, a removal event; 401 without a key; and SIGTERM ends open streams.
#[test]
fn the_event_stream_follows_status_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key(&state, "admin", "ada");
    let viewer = new_key(&state, "viewer", "vic");
    let (port, ingest_port) = (free_port(), free_port());
    let server = start_server(&state, port, &[]);
    assert_eq!(status(port, "GET", "/api/v1/events", None), 401);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(
            format!(
                "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {viewer}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({
        "id": "watched", "pipeline": ingest_pipeline("watched", ingest_port, MRN), "isActive": true})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for_port(ingest_port, Duration::from_secs(10));
    for i in 0..5 {
        assert!(ingest(ingest_port, i));
    }
    // Read events until the counts show the five records, then remove the integration.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut removed = false;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "events so far:\n{seen}"
        );
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if !removed && seen.contains("\"records_in\":5") {
            assert_eq!(
                status(port, "DELETE", "/api/v1/integrations/watched", Some(&admin)),
                200
            );
            removed = true;
        }
        if removed && seen.contains("\"status\":\"removed\"") {
            break;
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    assert!(
        seen.contains(
            "event: status\ndata: {\"id\":\"watched\",\"reason\":null,\"status\":\"active\"}"
        ),
        "{seen}"
    );
    assert!(!seen.contains("DOE"), "no record content in events");
    // SIGTERM ends the open stream and the server exits.
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

/// A dry run: the pipeline's own test cases, cases sent with the request, and a draft
/// pipeline, through the real graph with memory in place of source and sinks; nothing runs
/// or is stored, and a viewer may not.
#[test]
fn a_dry_run_tests_an_integration_without_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (admin, operator, viewer) = (
        new_key(&state, "admin", "ada"),
        new_key(&state, "operator", "otto"),
        new_key(&state, "viewer", "vic"),
    );
    let port = free_port();
    let server = start_server(&state, port, &[]);
    let pipeline = format!(
        "{}tests:\n  - name: own case\n    input: \"{}\"\n    expect:\n      out: [{{mrn: M7}}]\n",
        ingest_pipeline("dry", free_port(), MRN),
        hl7(7).replace('\\', "\\\\").replace('\r', "\\r")
    );
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": "dry", "pipeline": pipeline})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let path = "/api/v1/integrations/dry/test";
    assert_eq!(
        call(port, "POST", path, Some(&viewer), Some(json!({}))).status,
        403
    );
    let r = call(port, "POST", path, Some(&operator), Some(json!({})));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["passed"].as_u64(), r.json()["failed"].as_u64()),
        (Some(1), Some(0)),
        "{}",
        r.body
    );
    // Cases sent with the request: one passes, one expects the wrong MRN and says so; a
    // message that does not parse lands in `dlq`.
    let cases = json!({"cases": [
        {"name": "right", "input": hl7(1), "expect": {"out": [{"mrn": "M1"}]}},
        {"name": "wrong", "input": hl7(2), "expect": {"out": [{"mrn": "M9"}]}},
        {"name": "bad", "input": "MSH|^~\\&|A|B\rP\r", "expect": {"out": [], "dlq": [{"stage": "parse"}]}}
    ]});
    let r = call(port, "POST", path, Some(&operator), Some(cases));
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["cases"].as_array().unwrap().clone();
    assert_eq!(
        results
            .iter()
            .map(|c| c["passed"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        [true, false, true],
        "{}",
        r.body
    );
    assert!(
        results[1]["problems"][0]
            .as_str()
            .unwrap()
            .contains("mrn: expected \"M9\", got \"M2\""),
        "{}",
        r.body
    );
    // A draft that does not plan: 422 with its location; the stored pipeline is unchanged.
    let draft = ingest_pipeline(
        "dry",
        free_port(),
        "      - {name: mrn, path: PID-3.1, kind: nope}\n",
    );
    let r = call(
        port,
        "POST",
        path,
        Some(&operator),
        Some(json!({"pipeline": draft, "cases": [{"name": "x", "input": hl7(1)}]})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["errors"][0]["line"], 10, "{}", r.body);
    let v = call(port, "GET", "/api/v1/integrations/dry", Some(&viewer), None).json();
    assert_eq!(
        (v["revision"].as_i64(), v["status"].as_str()),
        (Some(1), Some("inactive"))
    );
    assert!(
        !state.join("integrations/dry/out.ndjson").exists(),
        "a dry run writes nothing"
    );
    assert_eq!(stop_server(server).0, Some(0));
}

/// Stores the webhook receivers' secret as `secret:hook`.
fn put_hook_secret(port: u16, admin: &str) {
    let r = call(
        port,
        "PUT",
        "/api/v1/secrets/hook",
        Some(admin),
        Some(json!({"value": "s3cret"})),
    );
    assert!(r.status < 300, "{}", r.body);
}

/// HTTP ingest → parse the MRN → validate (MRNs ending in 3 are dead letters) → a webhook
/// sink `ehr` signed with `secret:hook` (plus `ehr_keys`) and `more_sinks`, with an outcome
/// window `calls`.
fn webhook_pipeline(
    id: &str,
    ingest_port: u16,
    url: &str,
    ehr_keys: &str,
    more_sinks: &str,
) -> String {
    format!(
        r#"name: {id}
integration: {{id: {id}}}
source: {{type: http, listen: "127.0.0.1:{ingest_port}", path: /hl7, format: hl7, spool: spool}}
batch: {{max_rows: 50, max_delay: 50ms}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
  - name: checks
    type: validate
    rules:
      - {{name: mrn_allowed, check: "mrn NOT LIKE '%3'"}}
sinks:
  - name: ehr
    input: checks
    type: http
    url: {url}
    secret: secret:hook
{ehr_keys}{more_sinks}dlq: {{path: dlq.ndjson}}
windows:
  - name: calls
    input: outcomes
    size: 1s
"#
    )
}

#[test]
fn operators_hold_breakers_query_metrics_and_read_dead_letters_by_scope() {
    use support::webhook::Receiver;
    let (rx, url) = Receiver::start("s3cret", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key(&state, "admin", "ada");
    let operator = new_key(&state, "operator", "otto");
    let viewer = new_key(&state, "viewer", "vic");
    let clinician = new_key_with(&state, "viewer", "cleo", &["--phi"]);
    let (port, ingest_port) = (free_port(), free_port());
    let server = start_server(&state, port, &[]);
    let id = "ops";
    put_hook_secret(port, &admin);
    // MRNs ending in 3 fail validation: dead letters.
    let pipeline = webhook_pipeline(
        id,
        ingest_port,
        &url,
        "    concurrency: 1\n    retry: {max_attempts: 3, backoff: linear, base: 100ms, max_delay: 200ms, jitter: 0}\n    breaker: {wait: 30s}\n",
        "",
    );
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": id, "pipeline": pipeline, "isActive": true})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_until("the integration to run", Duration::from_secs(30), || {
        call(
            port,
            "GET",
            &format!("/api/v1/integrations/{id}"),
            Some(&viewer),
            None,
        )
        .json()["status"]
            == "active"
    });
    for i in 0..10 {
        assert!(ingest(ingest_port, i));
    }
    let seen = rx.wait(Duration::from_secs(20), |s| s.len() >= 9);
    assert_eq!(seen.len(), 9, "M3 is a dead letter, the rest delivered");

    // The breaker, live; held open by an operator (a viewer may not).
    let ops = format!("/api/v1/integrations/{id}");
    let b = call(port, "GET", &format!("{ops}/breakers"), Some(&viewer), None).json();
    assert_eq!(b["breakers"][0]["sink"], "ehr", "{b}");
    assert_eq!(b["breakers"][0]["state"], "CLOSED");
    let open = format!("{ops}/breakers/ehr/open");
    assert_eq!(status(port, "POST", &open, Some(&viewer)), 403);
    let r = call(
        port,
        "POST",
        &open,
        Some(&operator),
        Some(json!({"reason": "EHR maintenance"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["forced"].as_bool()),
        (Some("OPEN"), Some(true))
    );
    assert_eq!(
        call(
            port,
            "POST",
            &format!("{ops}/breakers/nope/open"),
            Some(&operator),
            None
        )
        .status,
        404
    );
    // Messages wait while it is held open: nothing reaches the EHR, nothing is lost.
    for i in 10..15 {
        assert!(ingest(ingest_port, i));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rx.seen().len(), 9, "the sink holds back while forced open");
    let r = call(
        port,
        "POST",
        &format!("{ops}/breakers/ehr/reset"),
        Some(&operator),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "CLOSED");
    let seen = rx.wait(Duration::from_secs(20), |s| s.len() >= 13);
    assert_eq!(
        seen.len(),
        13,
        "the four held records delivered after the reset"
    );

    // SQL over the monitoring outputs: the forced transitions are breaker events.
    let q = |key: &str, sql: &str, max: Option<u64>| {
        let mut body = json!({"sql": sql});
        if let Some(m) = max {
            body["maxRows"] = json!(m);
        }
        call(port, "POST", &format!("{ops}/query"), Some(key), Some(body))
    };
    wait_until("the breaker events", Duration::from_secs(20), || {
        q(&viewer, "SELECT count(*) AS n FROM breaker_events", None).json()["rows"][0]["n"] == 2
    });
    let r = q(
        &viewer,
        "SELECT \"to\", reason FROM breaker_events ORDER BY at_ms",
        None,
    );
    let rows = r.json()["rows"].clone();
    assert_eq!(rows[0]["to"], "OPEN", "{rows}");
    let why = rows[0]["reason"].as_str().unwrap();
    assert!(
        why.contains("forced open by key:")
            && why.contains("(otto)")
            && why.contains("EHR maintenance"),
        "{why}"
    );
    assert_eq!(rows[1]["to"], "CLOSED");
    let r = q(&viewer, "SELECT rule, records FROM dead_letters", None).json();
    assert_eq!(
        r["rows"],
        json!([{"rule": "mrn_allowed", "records": 2}]),
        "{r}"
    );
    let r = q(
        &viewer,
        "SELECT * FROM (VALUES (1), (2), (3)) AS t(x)",
        Some(2),
    )
    .json();
    assert_eq!(
        (
            r["rows"].as_array().unwrap().len(),
            r["truncated"].as_bool()
        ),
        (2, Some(true))
    );
    // Outside SQL reads, and only what the pipeline's monitoring wrote.
    for bad in [
        "CREATE TABLE x AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/plexus-x.csv'",
        "SELECT * FROM '/etc/passwd'",
        "DROP VIEW metrics",
    ] {
        let r = q(&viewer, bad, None);
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    assert!(!Path::new("/tmp/plexus-x.csv").exists());
    assert_eq!(
        call(
            port,
            "GET",
            &format!("{ops}/alerts?limit=5"),
            Some(&viewer),
            None
        )
        .status,
        200
    );

    // Dead letters: metadata for viewers; the original record with the phi scope, audited.
    let r = call(
        port,
        "GET",
        &format!("{ops}/dead-letters"),
        Some(&viewer),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json();
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["dead_letters"][0]["rule"], "mrn_allowed");
    assert!(
        !r.body.contains("DOE") && !r.body.contains("M13"),
        "no record content: {}",
        r.body
    );
    let at = list["dead_letters"][0]["at"].as_str().unwrap().to_string();
    let one = format!("{ops}/dead-letters/{at}?original=true");
    let r = call(port, "GET", &one, Some(&viewer), None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(port, "GET", &one, Some(&clinician), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["original"]
            .as_str()
            .unwrap()
            .contains("PID|1||M3^"),
        "{}",
        r.body
    );
    let who = last_actor(port, &admin, "dead_letter.read_original");
    assert!(who.ends_with("(cleo)"), "{who}");
    assert_eq!(
        call(
            port,
            "GET",
            &format!("{ops}/dead-letters?rule=other"),
            Some(&viewer),
            None
        )
        .json()["total"],
        0
    );
    // Replay: a viewer may not; a filter on the record needs the phi scope.
    let replay = format!("{ops}/dead-letters/replay");
    assert_eq!(
        call(port, "POST", &replay, Some(&viewer), Some(json!({}))).status,
        403
    );
    let r = call(
        port,
        "POST",
        &replay,
        Some(&operator),
        Some(json!({"filter": "record LIKE '%M13%'", "dryRun": true})),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = call(
        port,
        "POST",
        &replay,
        Some(&operator),
        Some(json!({"filter": "rule = 'mrn_allowed'"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    assert_eq!(
        (report["matched"].as_u64(), report["replayed"].as_u64()),
        (Some(2), Some(2)),
        "{report}"
    );
    let written = std::fs::read_to_string(report["file"].as_str().unwrap()).unwrap();
    assert_eq!(written.matches("MSH|").count(), 2);
    // The breaker actions and the replay are in the audit log, by whom.
    let log = call(port, "GET", "/api/v1/audit", Some(&admin), None).json();
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["breaker.force_open", "breaker.reset", "dead_letter.replay"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    // No syncing FHIR sink: no conflicts to list.
    assert_eq!(
        status(port, "GET", &format!("{ops}/conflicts"), Some(&viewer)),
        409
    );
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

#[test]
fn health_checks_reach_each_downstream_system_and_set_the_status() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key(&state, "admin", "ada");
    let viewer = new_key(&state, "viewer", "vic");
    let (port, ingest_port, hook_port) = (free_port(), free_port(), free_port());
    let server = start_server(&state, port, &[]);
    let id = "hc";
    // The FHIR server answers; nothing listens at the webhook's port yet.
    let pipeline = format!(
        r#"name: {id}
integration: {{id: {id}}}
source: {{type: http, listen: "127.0.0.1:{ingest_port}", path: /hl7, format: hl7, spool: spool}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - {{name: ehr, input: fhir, type: fhir, url: "http://127.0.0.1:8089/fhir"}}
  - {{name: hook, input: fhir, type: http, url: "http://127.0.0.1:{hook_port}/hook"}}
windows:
  - {{name: calls, input: outcomes, size: 1s}}
"#
    );
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": id, "pipeline": pipeline, "isActive": true,
            "monitoring": {"healthCheckInterval": 300}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let health = || {
        call(
            port,
            "GET",
            &format!("/api/v1/integrations/{id}/health"),
            Some(&viewer),
            None,
        )
        .json()
    };
    wait_until("a failed health check", Duration::from_secs(30), || {
        health()["healthy"] == false
    });
    let h = health();
    let steps: Vec<(String, String, bool)> = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["sink"].as_str().unwrap().to_string(),
                c["check"].as_str().unwrap().to_string(),
                c["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("ehr", "connect", true),
        ("ehr", "operation", true),
        ("hook", "connect", false),
    ]
    .map(|(s, c, ok)| (s.to_string(), c.to_string(), ok));
    assert_eq!(steps, expected, "{h}");
    assert_eq!(h["checks"][1]["target"], "GET /metadata");
    assert_eq!(h["status"], "error");
    let view = call(
        port,
        "GET",
        &format!("/api/v1/integrations/{id}"),
        Some(&viewer),
        None,
    )
    .json();
    assert!(
        view["reason"]
            .as_str()
            .unwrap()
            .starts_with("health check: sink hook: connect"),
        "{view}"
    );
    assert!(view["lastHealthCheck"].as_i64().unwrap() > 0);
    assert_eq!(view["run"]["alerts"]["integration.health:critical"], 1);
    let ready = call(port, "GET", "/ready", None, None);
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["integrations_in_error"], json!([id]));
    // Health checks are outcomes too: the window over `outcomes` counts the failures.
    wait_until(
        "health checks in the window",
        Duration::from_secs(20),
        || {
            let r = call(
                port,
                "POST",
                &format!("/api/v1/integrations/{id}/query"),
                Some(&viewer),
                Some(json!({"sql": "SELECT coalesce(sum(failure), 0) AS f FROM calls"})),
            );
            r.json()["rows"][0]["f"].as_i64().unwrap_or(0) >= 1
        },
    );

    // The webhook comes up: the next check passes, the status and readiness follow.
    let listener = std::net::TcpListener::bind(("127.0.0.1", hook_port)).unwrap();
    std::thread::spawn(move || for _ in listener.incoming() {});
    wait_until("a passing health check", Duration::from_secs(30), || {
        health()["healthy"] == true
    });
    assert_eq!(health()["status"], "active");
    assert_eq!(status(port, "GET", "/ready", None), 200);
    let view = call(
        port,
        "GET",
        &format!("/api/v1/integrations/{id}"),
        Some(&viewer),
        None,
    )
    .json();
    assert_eq!(
        view["run"]["alerts"]["integration.health:critical"], 1,
        "one alert per change to unhealthy, not one per check"
    );
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

/// base64url without padding (JWK coordinates).
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A P-256 signing key (PKCS#8) and its public JWK under `kid`.
fn ec_key(kid: &str) -> (Vec<u8>, Value) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": b64url(&point[1..33]), "y": b64url(&point[33..65])});
    (pkcs8.as_ref().to_vec(), jwk)
}

fn jwt(key: &[u8], kid: &str, claims: Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ec_der(key)).unwrap()
}

#[test]
fn jwt_bearer_tokens_from_a_rotating_jwks_over_tls_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::Pki::new(dir.path());
    let (k1, jwk1) = ec_key("k1");
    let (k2, jwk2) = ec_key("k2");
    // The identity provider's key set, served over HTTP; rotated below.
    let jwks = Arc::new(std::sync::Mutex::new(json!({"keys": [jwk1]})));
    let served = jwks.clone();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let v = served.lock().unwrap().clone();
            async move { axum::Json(v) }
        }),
    );
    let jwks_url = format!("{}/jwks", support::serve(app));
    let (port, ingest_port) = (free_port(), free_port());
    // A directory integration whose HTTP ingest route sets no limit: the server's applies.
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("pipelines/feed.yaml"),
        ingest_pipeline("feed", ingest_port, MRN),
    )
    .unwrap();
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstate: state\nreconcile_every: 300ms\n\
             pipelines: pipelines\ningest: {{rate: 1, burst: 2}}\n\
             tls: {{cert: {}, key: {}}}\n\
             jwt: {{jwks: \"{jwks_url}\", issuer: \"https://idp.test/\", audience: plexus}}\n",
            pki.path("server.pem"),
            pki.path("server.key")
        ),
    )
    .unwrap();
    let server = Server(Some(
        Command::new(support::BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("PLEXUS_MASTER_KEY", K1)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_for_port(port, Duration::from_secs(30));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let https =
        |method: &str, path: &str, token: Option<&str>, body: Option<Value>| -> (u16, String) {
            rt.block_on(async {
                let mut r = client.request(
                    method.parse().unwrap(),
                    format!("https://127.0.0.1:{port}{path}"),
                );
                if let Some(t) = token {
                    r = r.bearer_auth(t);
                }
                if let Some(b) = body {
                    r = r.json(&b);
                }
                let resp = r.send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |sub: &str, extra: Value| {
        let mut c = json!({"sub": sub, "iss": "https://idp.test/", "aud": "plexus",
            "iat": now, "exp": now + 300});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    assert_eq!(https("GET", "/health", None, None).0, 200);
    // Plain HTTP gets no HTTP answer from a TLS port.
    assert!(
        http(port, "GET", "/health", None, None).map_or(true, |r| r.status != 200),
        "plain HTTP is not served"
    );
    let operator = jwt(
        &k1,
        "k1",
        claims("olga", json!({"scope": "openid plexus:operator"})),
    );
    assert_eq!(
        https("GET", "/api/v1/integrations", Some(&operator), None).0,
        200
    );
    let (code, body) = https("GET", "/api/v1/keys", Some(&operator), None);
    assert_eq!(code, 403, "{body}");
    let admin = jwt(&k1, "k1", claims("root", json!({"role": "admin"})));
    let (code, body) = https(
        "POST",
        "/api/v1/keys",
        Some(&admin),
        Some(json!({"name": "made-by-jwt", "role": "viewer"})),
    );
    assert_eq!(code, 201, "{body}");
    let (_, log) = https("GET", "/api/v1/audit?action=key.create", Some(&admin), None);
    let log: Value = serde_json::from_str(&log).unwrap();
    assert_eq!(log["entries"][0]["actor"], "jwt:root", "{log}");
    // Refused: expired, another audience, another issuer, no role, a shared-secret token.
    let refused = [
        jwt(
            &k1,
            "k1",
            claims("olga", json!({"role": "viewer", "exp": now - 120})),
        ),
        jwt(
            &k1,
            "k1",
            claims("olga", json!({"role": "viewer", "aud": "other"})),
        ),
        jwt(
            &k1,
            "k1",
            claims("olga", json!({"role": "viewer", "iss": "https://evil/"})),
        ),
        jwt(&k1, "k1", claims("olga", json!({}))),
        jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: Some("k1".into()),
                ..jsonwebtoken::Header::default()
            },
            &claims("olga", json!({"role": "admin"})),
            &jsonwebtoken::EncodingKey::from_secret(b"guess"),
        )
        .unwrap(),
    ];
    for (i, t) in refused.iter().enumerate() {
        let (code, body) = https("GET", "/api/v1/integrations", Some(t), None);
        assert_eq!(code, 401, "token {i}: {body}");
    }
    // The provider rotates to k2: a k2 token works once the server reloaded the key set.
    let rotated = jwt(&k2, "k2", claims("olga", json!({"role": "viewer"})));
    assert_eq!(
        https("GET", "/api/v1/integrations", Some(&rotated), None).0,
        401
    );
    *jwks.lock().unwrap() = json!({"keys": [jwk2]});
    wait_until("the rotated key", Duration::from_secs(15), || {
        https("GET", "/api/v1/integrations", Some(&rotated), None).0 == 200
    });
    // The ingest route's token bucket: the burst passes, then 429 with Retry-After.
    wait_for_port(ingest_port, Duration::from_secs(30));
    let started = Instant::now();
    let codes: Vec<u16> = (0..10).map(|i| ingest_as(ingest_port, i, None)).collect();
    let refill = started.elapsed().as_secs_f64().ceil() as usize;
    let accepted = codes.iter().filter(|c| **c == 202).count();
    assert_eq!(&codes[..2], [202, 202], "{codes:?}");
    assert!(codes.iter().all(|c| [202, 429].contains(c)), "{codes:?}");
    assert!(accepted <= 2 + refill, "{codes:?} in {refill} s");
    let mut s = TcpStream::connect(("127.0.0.1", ingest_port)).unwrap();
    let msg = hl7(9);
    write!(
        s,
        "POST /hl7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{msg}",
        msg.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 429")
            && answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

#[test]
fn operators_resolve_a_sync_conflict_over_the_api() {
    use plexus::net::fhir_client::{ClientConfig, FhirClient};
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key(&state, "admin", "ada");
    let operator = new_key(&state, "operator", "otto");
    let viewer = new_key(&state, "viewer", "vic");
    let (port, ingest_port) = (free_port(), free_port());
    let server = start_server(&state, port, &[]);
    let id = "ehr-sync";
    let mrn = support::unique("S").replace(['-', '_'], "");
    let pipeline = format!(
        r#"name: {id}
integration: {{id: {id}}}
source: {{type: http, listen: "127.0.0.1:{ingest_port}", path: /hl7, format: hl7, spool: spool}}
batch: {{max_rows: 10, max_delay: 50ms}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - {{name: ehr, type: fhir, url: "{fhir}", concurrency: 1, sync: {{conflicts: manual}}}}
dlq: {{path: dlq.ndjson}}
"#,
        fhir = support::FHIR
    );
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": id, "pipeline": pipeline, "isActive": true})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for_port(ingest_port, Duration::from_secs(30));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ehr = FhirClient::new(ClientConfig::new(support::FHIR)).unwrap();
    let query = format!("identifier={}|{mrn}", support::MRN_SYSTEM);
    let on_server = || rt.block_on(ehr.search("Patient", &query)).unwrap();
    assert_eq!(
        post_hl7(ingest_port, &support::corpus_adt(&mrn, "A01", "DUCK"), None),
        202
    );
    wait_until("the patient on the EHR", Duration::from_secs(30), || {
        on_server().len() == 1
    });
    // The EHR changes the phone while the next message changes the name: a conflict.
    let mut p = on_server().remove(0);
    p["telecom"] = json!([{"system": "phone", "value": "555-0199", "use": "mobile"}]);
    rt.block_on(ehr.update(&p, p["meta"]["versionId"].as_str()))
        .unwrap();
    assert_eq!(
        post_hl7(
            ingest_port,
            &support::corpus_adt(&mrn, "A08", "DRAKE"),
            None
        ),
        202
    );
    let conflicts = format!("/api/v1/integrations/{id}/conflicts");
    wait_until("the conflict", Duration::from_secs(30), || {
        call(port, "GET", &conflicts, Some(&viewer), None).json()["conflicts"]
            .as_array()
            .is_some_and(|c| c.len() == 1)
    });
    let listed = call(port, "GET", &conflicts, Some(&viewer), None);
    assert!(
        !listed.body.contains(&mrn),
        "no identifier in the list: {}",
        listed.body
    );
    let c = listed.json()["conflicts"][0].clone();
    assert_eq!(c["resourceType"], "Patient");
    assert!(
        c["fields"].as_array().unwrap().contains(&json!("name")),
        "{c}"
    );
    let resolve = format!("{conflicts}/{}/resolve", c["id"].as_str().unwrap());
    let how = json!({"strategy": "merge", "take": {"name": "local"}});
    assert_eq!(
        call(port, "POST", &resolve, Some(&viewer), Some(how.clone())).status,
        403
    );
    let r = call(port, "POST", &resolve, Some(&operator), Some(how.clone()));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["resolvedBy"].as_str().unwrap().ends_with("(otto)"),
        "{}",
        r.body
    );
    // Settled: the EHR has the message's name and kept its own phone; nothing left open.
    let now = on_server().remove(0);
    assert_eq!(now["name"][0]["family"], "DRAKE");
    assert_eq!(now["telecom"][0]["value"], "555-0199");
    assert_eq!(
        call(port, "GET", &conflicts, Some(&viewer), None).json()["conflicts"],
        json!([])
    );
    assert_eq!(
        call(port, "POST", &resolve, Some(&operator), Some(how)).status,
        404
    );
    let who = last_actor(port, &admin, "conflict.resolve");
    assert!(who.ends_with("(otto)"), "{who}");
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

#[test]
fn a_configured_test_message_makes_an_mllp_round_trip_of_the_health_check() {
    // An MLLP peer answering each frame with AA, or AE once told to.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_port = peer.local_addr().unwrap().port();
    let refuse = Arc::new(AtomicBool::new(false));
    let r = refuse.clone();
    std::thread::spawn(move || {
        for conn in peer.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(2).any(|w| w == [0x1c, b'\r']) {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let code = if r.load(Ordering::SeqCst) { "AE" } else { "AA" };
            let ack = format!(
                "\x0bMSH|^~\\&|LAB|LAB|PLEXUS|HUB|20260101||ACK|A1|P|2.5\rMSA|{code}|HC1\r\x1c\r"
            );
            let _ = c.write_all(ack.as_bytes());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key(&state, "admin", "ada");
    let (port, ingest_port) = (free_port(), free_port());
    let server = start_server(&state, port, &[]);
    let pipeline = format!(
        r#"name: lab
integration: {{id: lab}}
source: {{type: http, listen: "127.0.0.1:{ingest_port}", path: /hl7, format: hl7, spool: spool}}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {{name: mrn, path: PID-3.1}}
sinks:
  - {{name: lab, input: parse, type: mllp, to: "127.0.0.1:{peer_port}"}}
"#
    );
    let test_message = "MSH|^~\\&|PLEXUS|HUB|LAB|LAB|20260101||ADT^A01|HC1|T|2.5\nPID|1||TEST";
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": "lab", "pipeline": pipeline, "isActive": true,
            "monitoring": {"healthCheckInterval": 300, "healthCheckMessage": test_message}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let health = || {
        call(
            port,
            "GET",
            "/api/v1/integrations/lab/health",
            Some(&admin),
            None,
        )
        .json()
    };
    wait_until("a health check", Duration::from_secs(30), || {
        health()["healthy"] == true
    });
    let h = health();
    assert_eq!(h["checks"][1]["check"], "operation", "{h}");
    assert_eq!(h["checks"][1]["target"], "MLLP round trip");
    refuse.store(true, Ordering::SeqCst);
    wait_until("the refused test message", Duration::from_secs(30), || {
        health()["healthy"] == false
    });
    let h = health();
    assert_eq!(h["checks"][1]["error"], "acknowledged AE", "{h}");
    assert_eq!(h["status"], "error");
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}

#[test]
fn testing_mode_runs_live_input_into_files_and_leaves_the_live_outputs_alone() {
    use support::webhook::Receiver;
    let (rx, url) = Receiver::start("s3cret", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin = new_key(&state, "admin", "ada");
    let viewer = new_key(&state, "viewer", "vic");
    let clinician = new_key_with(&state, "viewer", "cleo", &["--phi"]);
    let (port, ingest_port) = (free_port(), free_port());
    let server = start_server(&state, port, &[]);
    let id = "trial";
    let base = format!("/api/v1/integrations/{id}");
    put_hook_secret(port, &admin);
    // MRNs ending in 3 fail validation; the rest go to a webhook and a file.
    let pipeline = webhook_pipeline(
        id,
        ingest_port,
        &url,
        "    retry: {max_attempts: 2, backoff: linear, base: 100ms, max_delay: 200ms, jitter: 0}\n",
        "  - {name: archive, input: checks, type: file, format: ndjson, path: archive.ndjson}\n",
    );
    let r = call(
        port,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(json!({"id": id, "pipeline": pipeline})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let bad = call(
        port,
        "POST",
        &format!("{base}/activate?mode=rehearsal"),
        Some(&admin),
        None,
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(
        status(
            port,
            "POST",
            &format!("{base}/activate?mode=testing"),
            Some(&viewer)
        ),
        403
    );
    let r = call(
        port,
        "POST",
        &format!("{base}/activate?mode=testing"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "testing", "{}", r.body);
    assert_eq!(r.json()["isActive"], true);

    // Live input on the integration's own port; every output lands in the testing directory.
    for i in 0..10 {
        assert!(ingest(ingest_port, i));
    }
    let outputs = || call(port, "GET", &format!("{base}/testing"), Some(&viewer), None).json();
    let records = |o: &Value, file: &str| {
        o["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["file"] == file)
            .map(|f| f["records"].as_u64().unwrap())
    };
    wait_until("the diverted outputs", Duration::from_secs(30), || {
        let o = outputs();
        records(&o, "ehr.ndjson") == Some(9)
            && records(&o, "archive.ndjson") == Some(9)
            && records(&o, "trial.dlq.ndjson") == Some(1)
    });
    let o = outputs();
    assert_eq!(o["testing"], true, "{o}");
    assert!(
        !o.to_string().contains("M1"),
        "the listing names files, not records: {o}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(rx.seen().is_empty(), "nothing reached the live webhook");
    let live = state.join("integrations").join(id);
    for f in ["archive.ndjson", "dlq.ndjson"] {
        assert!(!live.join(f).exists(), "the live {f} was not written");
    }
    // Operations follow the run: its dead letters and metrics are the diverted ones.
    let d = call(
        port,
        "GET",
        &format!("{base}/dead-letters"),
        Some(&viewer),
        None,
    )
    .json();
    assert_eq!(d["total"], 1, "{d}");
    let r = call(
        port,
        "POST",
        &format!("{base}/query"),
        Some(&viewer),
        Some(json!({"sql": "SELECT rule, records FROM dead_letters"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["rows"],
        json!([{"rule": "mrn_allowed", "records": 1}]),
        "{}",
        r.body
    );

    // Reading a test output is reading patient data: the phi scope, audited.
    let file = format!("{base}/testing/archive.ndjson?limit=3");
    assert_eq!(status(port, "GET", &file, Some(&viewer)), 403);
    let r = call(port, "GET", &file, Some(&clinician), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let page = r.json();
    assert_eq!(
        (page["total"].as_u64(), page["truncated"].as_bool()),
        (Some(9), Some(true))
    );
    assert_eq!(page["records"].as_array().unwrap().len(), 3);
    assert_eq!(page["records"][0]["mrn"], "M0", "{page}");
    let actor = last_actor(port, &admin, "testing.read_output");
    assert!(actor.contains("(cleo)"), "{actor}");
    for missing in ["../pipeline.yaml", "nope.ndjson", "spool"] {
        let path = format!("{base}/testing/{}", missing.replace('/', "%2F"));
        let s = status(port, "GET", &path, Some(&clinician));
        assert_eq!(s, 404, "{missing}");
    }
    // Not cleared while the test runs.
    assert_eq!(
        status(port, "DELETE", &format!("{base}/testing"), Some(&admin)),
        409
    );

    // Going live: the same integration now delivers, and the test outputs stay as they were.
    let r = call(
        port,
        "POST",
        &format!("{base}/activate"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "active", "{}", r.body);
    for i in 20..22 {
        assert!(ingest(ingest_port, i));
    }
    let seen = rx.wait(Duration::from_secs(20), |s| s.len() >= 2);
    assert_eq!(seen.len(), 2, "live records reach the webhook");
    wait_until("the live archive", Duration::from_secs(20), || {
        rows(&live.join("archive.ndjson")).len() == 2
    });
    let o = outputs();
    assert_eq!(
        (o["testing"].as_bool(), records(&o, "ehr.ndjson")),
        (Some(false), Some(9)),
        "{o}"
    );

    // Cleared between test sessions (admin): outputs and metrics go, the spool stays.
    assert_eq!(
        status(port, "DELETE", &format!("{base}/testing"), Some(&viewer)),
        403
    );
    let r = call(
        port,
        "DELETE",
        &format!("{base}/testing"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let removed = r.json()["removed"].clone();
    assert!(
        removed
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "ehr.ndjson"),
        "{removed}"
    );
    assert!(outputs()["outputs"].as_array().unwrap().is_empty());
    assert!(live.join("testing").join("spool").is_dir());
    assert_eq!(
        status(
            port,
            "GET",
            "/api/v1/integrations/nope/testing",
            Some(&viewer)
        ),
        404
    );
    let (code, _) = stop_server(server);
    assert_eq!(code, Some(0));
}
