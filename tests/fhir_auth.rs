//! The integration's credentials and TLS, configured in pipeline YAML:
//! - a `fhir` sink with `auth: {type: oauth2}` against a stand-in EHR that only accepts its
//!   current token (one token for the run; revoked midway → fetched again, nothing lost);
//! - a syncing `fhir` sink with `tls:` (mutual TLS, a private CA) and `auth: {type: bearer}`
//!   through an HTTPS front door that demands a client certificate, in front of the real
//!   FHIR server (sekmet) — and the same without the certificate or with a wrong token
//!   failing with a clear reason, nothing written.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use plexus::net::fhir_client::{Auth, ClientConfig, FhirClient, Tls};
use serde_json::{Value, json};

use support::{FHIR, Pki};
const SYSTEM: &str = support::MRN_SYSTEM;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Default)]
struct Ehr {
    token_requests: AtomicU32,
    /// The token the EHR accepts now.
    valid: Mutex<String>,
    /// Requests per answer: (status, method and path).
    seen: Mutex<Vec<(u16, String)>>,
    /// Revoke the token after this many more accepted writes (0: never).
    revoke_after: AtomicU32,
}

/// A token endpoint and a FHIR endpoint accepting PUT/POST with the current token only.
fn oauth_ehr() -> (Arc<Ehr>, String) {
    let ehr = Arc::new(Ehr::default());
    let (e1, e2) = (ehr.clone(), ehr.clone());
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let e = e1.clone();
                async move {
                    let n = e.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
                    // plexus:s3cret, from the pipeline's client_id and the env secret.
                    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                        == Some("Basic cGxleHVzOnMzY3JldA==")
                        && body.contains("grant_type=client_credentials")
                        && body.contains("scope=system%2F*.write");
                    if !ok {
                        return (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(json!({"error": "invalid_client"})),
                        )
                            .into_response();
                    }
                    let token = format!("tok-{n}");
                    *e.valid.lock().unwrap() = token.clone();
                    axum::Json(
                        json!({"access_token": token, "token_type": "bearer", "expires_in": 3600}),
                    )
                    .into_response()
                }
            }),
        )
        .fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap| {
                let e = e2.clone();
                async move {
                    let want = format!("Bearer {}", e.valid.lock().unwrap());
                    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                        == Some(want.as_str());
                    let status = if ok { 200 } else { 401 };
                    e.seen
                        .lock()
                        .unwrap()
                        .push((status, format!("{method} {}", uri.path())));
                    // A search (the sink reads before it writes) finds nothing: an empty Bundle.
                    if method == axum::http::Method::GET {
                        return (
                            StatusCode::from_u16(status).unwrap(),
                            axum::Json(
                                json!({"resourceType": "Bundle", "type": "searchset", "entry": []}),
                            ),
                        );
                    }
                    if ok
                        && e.revoke_after.load(Ordering::SeqCst) > 0
                        && e.revoke_after.fetch_sub(1, Ordering::SeqCst) == 1
                    {
                        *e.valid.lock().unwrap() = "revoked".into();
                    }
                    (
                        StatusCode::from_u16(status).unwrap(),
                        axum::Json(json!({"resourceType": "OperationOutcome", "issue": []})),
                    )
                }
            },
        );
    let url = support::serve(app);
    (ehr, url)
}

/// The rows of the six messages of `adt`: Patient, Encounter, 4 Locations each.
const ROWS: usize = 6 * 6;

fn adt(n: usize) -> String {
    support::adt(&format!("C{n}"), &format!("M{n}"))
}

#[test]
fn a_fhir_sink_authenticates_with_oauth2_client_credentials_from_the_pipeline() {
    let (ehr, url) = oauth_ehr();
    let dir = tempfile::tempdir().unwrap();
    let input: String = (0..6).map(|n| adt(n) + "\n").collect();
    std::fs::write(dir.path().join("adt.hl7"), input).unwrap();
    let p = support::pipeline(
        dir.path(),
        "oauth",
        &format!(
            r#"
name: oauth
integration: {{id: ehr-oauth}}
source: {{type: file, path: adt.hl7, format: hl7}}
batch: {{max_rows: 2}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - name: ehr
    type: fhir
    url: "{url}/fhir"
    concurrency: 1
    auth: {{type: oauth2, token_url: "{url}/token", client_id: plexus,
           client_secret: "env:EHR_CLIENT_SECRET", scope: "system/*.write"}}
"#
        ),
    );
    let run = || {
        support::summary(
            &Command::new(support::BIN)
                .args(["run", p.to_str().unwrap(), "--json", "--output"])
                .arg(dir.path().join("out"))
                .env("EHR_CLIENT_SECRET", "s3cret")
                .output()
                .unwrap(),
        )
    };
    // 6 messages → 6 patients, 6 encounters and the 4 Locations of each PV1-3 (`4E^1^A^GHH`:
    // facility, point of care, room, bed): 36 rows, one token for the whole run.
    let s = run();
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(6), Some(0)),
        "{s}"
    );
    assert_eq!(s["sinks"][0], json!(["ehr", ROWS]), "{s}");
    assert_eq!(ehr.token_requests.load(Ordering::SeqCst), 1);
    assert!(ehr.seen.lock().unwrap().iter().all(|(st, _)| *st == 200));
    // Each Patient and Location: a search (nothing found), then the conditional PUT; each
    // Encounter (no visit number: addressed by its id) a PUT.
    let first_run = ehr.seen.lock().unwrap().len();
    assert_eq!(first_run, 6 * (2 + 1 + 4 * 2));

    // Midway through the next run the EHR revokes the token: that call gets 401, a new
    // token is fetched, the call is sent again; nothing is dead-lettered.
    ehr.revoke_after.store(5, Ordering::SeqCst);
    let s = run();
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(6), Some(0)),
        "{s}"
    );
    assert_eq!(s["sinks"][0], json!(["ehr", ROWS]), "{s}");
    assert_eq!(
        ehr.token_requests.load(Ordering::SeqCst),
        3,
        "one per run, one after the 401"
    );
    let seen = ehr.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|(st, _)| *st == 401).count(),
        1,
        "{seen:?}"
    );
    let writes = |st: u16| {
        seen.iter()
            .filter(|(s, what)| *s == st && what.starts_with("PUT"))
            .count()
    };
    assert_eq!(writes(200), 2 * ROWS, "{seen:?}");
    // The refused call came after the fifth write of the run; it went through, the same
    // request, on the new token.
    let refused = seen.iter().position(|(st, _)| *st == 401).unwrap();
    assert!(refused > first_run, "{seen:?}");
    assert_eq!(seen[refused + 1], (200, seen[refused].1.clone()));

    // A wrong secret: the token endpoint refuses; every record is dead-lettered with the
    // OAuth2 error — and the secret itself is nowhere in the output.
    let o = Command::new(support::BIN)
        .args(["run", p.to_str().unwrap(), "--json", "--output"])
        .arg(dir.path().join("bad"))
        .env("EHR_CLIENT_SECRET", "wrong-secret-value")
        .output()
        .unwrap();
    let s = support::summary(&o);
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(0), Some(6)),
        "{s}"
    );
    assert_eq!(s["dead_letter_rows"], ROWS, "{s}");
    let dlq = std::fs::read_to_string(dir.path().join("bad/oauth.dlq.ndjson")).unwrap();
    assert!(dlq.contains("refused (401): invalid_client"), "{dlq}");
    let everything = format!(
        "{dlq}{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!everything.contains("wrong-secret-value"));
}

#[test]
fn a_plain_secret_in_the_pipeline_is_refused_at_validation() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let p = support::pipeline(
        dir.path(),
        "bad_auth",
        r#"
name: bad_auth
integration: {id: x}
source: {type: file, path: adt.hl7, format: hl7}
stages:
  - {name: fhir, type: fhir}
sinks:
  - name: ehr
    type: fhir
    url: "http://127.0.0.1:1/fhir"
    auth: {type: basic, user: plexus, password: hunter2}
    tls: {cert: client.pem}
  - name: ehr2
    type: fhir
    url: "http://127.0.0.1:1/fhir"
    auth: {type: oauth2, token_url: "http://127.0.0.1:1/token", client_id: plexus, user: x}
  - name: ehr3
    type: http
    url: "http://127.0.0.1:1/hook"
    auth: {type: kerberos}
  - name: ehr4
    type: fhir
    url: "http://127.0.0.1:1/fhir"
    sync: {state: "postgres://plexus:pw@db/sync"}
"#,
    );
    let o = support::plexus(&["validate", p.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad_auth.yaml:12:"), "{err}");
    assert!(
        err.contains("a secret is `env:NAME`, `file:/path` or `secret:NAME`"),
        "{err}"
    );
    assert!(
        err.contains("mutual TLS needs both `cert` and `key`"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("oauth2 auth needs `client_secret`"), "{err}");
    assert!(
        err.contains("`user` is not a setting of oauth2 auth"),
        "{err}"
    );
    assert!(
        err.contains("auth type is basic, bearer, api_key or oauth2, not \"kerberos\""),
        "{err}"
    );
    assert!(
        err.contains("write `state: postgres` and put the URL in DATABASE_URL"),
        "{err}"
    );
}

/// The HTTPS front door (mutual TLS + bearer token) before sekmet; killed on drop.
struct FrontDoor {
    child: Child,
    base: String,
}

impl FrontDoor {
    fn start(pki: &Pki, token: &str) -> FrontDoor {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mtls_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("ca.pem"),
            ])
            .args([token, "http://127.0.0.1:8089"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut port,
        )
        .unwrap();
        FrontDoor {
            child,
            base: format!("https://127.0.0.1:{}/fhir", port.trim()),
        }
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_syncing_fhir_sink_reaches_an_ehr_over_mutual_tls_with_a_bearer_token() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let door = FrontDoor::start(&pki, "door-token");
    let base = &door.base;
    let mrn = support::unique("T").replace(['-', '_'], "");

    // The client alone: a write through the door lands on the server behind it.
    let rt = rt();
    let pem = |f: &str| std::fs::read(pki.path(f)).unwrap();
    let mut config = ClientConfig::new(base.clone());
    config.tls = Tls {
        ca_pem: Some(pem("ca.pem")),
        identity_pem: Some([pem("client.pem"), pem("client.key")].concat()),
    };
    config.auth = Auth::Bearer("door-token".into());
    let client = FhirClient::new(config.clone()).unwrap();
    rt.block_on(async {
        let created = client
            .create(&json!({"resourceType": "Patient", "name": [{"family": "Through-The-Door"}]}))
            .await
            .unwrap();
        let id = created.id().unwrap();
        let direct = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
        let behind = direct.read("Patient", id).await.unwrap();
        assert_eq!(behind.resource["name"][0]["family"], "Through-The-Door");
        client.delete("Patient", id).await.unwrap();
    });
    // Without the client certificate the handshake fails: no answer at all.
    let mut no_cert = config.clone();
    no_cert.tls.identity_pem = None;
    no_cert.retry.max_attempts = 1;
    let err = rt
        .block_on(FhirClient::new(no_cert).unwrap().read("Patient", "x"))
        .unwrap_err();
    assert!(
        matches!(err, plexus::net::fhir_client::FhirError::Unavailable { .. }),
        "{err}"
    );
    // Without our CA the server is not trusted.
    let mut no_ca = config.clone();
    no_ca.tls.ca_pem = None;
    no_ca.retry.max_attempts = 1;
    assert!(
        rt.block_on(FhirClient::new(no_ca).unwrap().read("Patient", "x"))
            .is_err()
    );

    // The pipeline: sync state embedded (SQLite), credentials and certificates from YAML.
    let msg = support::corpus_adt(&mrn, "A01", "DUCK");
    std::fs::write(dir.path().join("adt.hl7"), msg).unwrap();
    let yaml = |token_env: &str, with_cert: bool| {
        let cert = if with_cert {
            format!(
                ", cert: {}, key: {}",
                pki.path("client.pem"),
                pki.path("client.key")
            )
        } else {
            String::new()
        };
        format!(
            r#"
name: tls_sync
integration: {{id: {integration}}}
source: {{type: file, path: adt.hl7, format: hl7}}
stages:
  - {{name: fhir, type: fhir}}
sinks:
  - name: ehr
    type: fhir
    url: "{base}"
    concurrency: 1
    retry: {{max_attempts: 1}}
    auth: {{type: bearer, token: "env:{token_env}"}}
    tls: {{ca: {ca}{cert}}}
    sync: {{conflicts: manual}}
"#,
            integration = support::unique("ehr-tls"),
            ca = pki.path("ca.pem"),
        )
    };
    let run = |name: &str, yaml: String| {
        let p = support::pipeline(dir.path(), name, &yaml);
        let o = Command::new(support::BIN)
            .args(["run", p.to_str().unwrap(), "--json", "--output"])
            .arg(dir.path().join(name))
            .env("EHR_TOKEN", "door-token")
            .env("WRONG_TOKEN", "not-the-token")
            .output()
            .unwrap();
        let s = support::summary(&o);
        let dlq = std::fs::read_to_string(dir.path().join(name).join("tls_sync.dlq.ndjson"))
            .unwrap_or_default();
        (s, dlq)
    };
    let on_server = || {
        rt.block_on(
            FhirClient::new(ClientConfig::new(FHIR))
                .unwrap()
                .search("Patient", &format!("identifier={SYSTEM}|{mrn}")),
        )
        .unwrap()
    };

    // No client certificate: dead-lettered with the transport failure, nothing on the server.
    let (s, dlq) = run("nocert", yaml("EHR_TOKEN", false));
    assert_eq!(s["delivered"].as_u64(), Some(0), "{s}");
    assert!(dlq.contains("unavailable"), "{dlq}");
    // A wrong token: refused by the EHR (401), nothing on the server.
    let (s, dlq) = run("badtoken", yaml("WRONG_TOKEN", true));
    assert_eq!(s["delivered"].as_u64(), Some(0), "{s}");
    assert!(dlq.contains("(401)"), "{dlq}");
    assert!(!dlq.contains("not-the-token"), "{dlq}");
    assert!(on_server().is_empty());

    // Both: the patient and encounter are synced through the front door.
    let (s, dlq) = run("ok", yaml("EHR_TOKEN", true));
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(1), Some(0)),
        "{s} {dlq}"
    );
    // The patient, its DG1's Condition, its encounter and the 6 Practitioners and
    // Locations the corpus A01 names.
    assert_eq!(s["sinks"][0], json!(["ehr", 9]), "{s}");
    let found: Vec<Value> = on_server();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["name"][0]["family"], "DUCK");
}
