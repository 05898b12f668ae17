//! The EHR client against a real FHIR R4 server (sekmet, from `scripts/dev-services`): CRUD,
//! vread, optimistic locking with `If-Match`, conditional update, search paging; and against
//! a local stand-in for what a test server cannot be made to do on demand: OAuth2 client
//! credentials with token refresh, basic and API-key auth, transient failures with
//! `Retry-After`, OperationOutcome errors, and the circuit breaker.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use plexus::net::fhir_client::{Auth, ClientConfig, FhirClient, FhirError};
use plexus::resilience::retry::{Backoff, RetryPolicy};
use serde_json::{Value, json};

use support::FHIR;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        backoff: Backoff::Exponential,
        base: Duration::from_millis(50),
        max_delay: Duration::from_secs(5),
        jitter: 0.0,
        max_outage: Duration::from_secs(600),
    }
}

fn patient(family: &str, mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": mrn}],
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female"
    })
}

#[test]
fn create_read_vread_update_with_if_match_and_delete_on_a_fhir_server() {
    support::need_fhir();
    let rt = rt();
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    rt.block_on(async {
        let mrn = support::unique("M");
        let created = c.create(&patient("Lovelace", &mrn)).await.unwrap();
        assert_eq!(created.status, 201);
        assert_eq!(created.version_id.as_deref(), Some("1"));
        let id = created.id().unwrap().to_string();

        let read = c.read("Patient", &id).await.unwrap();
        assert_eq!(read.resource["name"][0]["family"], "Lovelace");

        // Update on the version we saw: accepted, version 2.
        let mut changed = read.resource.clone();
        changed["name"][0]["family"] = json!("Byron");
        let v2 = c.update(&changed, Some("1")).await.unwrap();
        assert_eq!(v2.version_id.as_deref(), Some("2"));

        // Someone else's write happened since version 1: a conflict, not an overwrite.
        let mut stale = read.resource.clone();
        stale["name"][0]["family"] = json!("Stale");
        let err = c.update(&stale, Some("1")).await.unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert!(
            matches!(err, FhirError::Conflict { status: 412, .. }),
            "{err}"
        );
        assert_eq!(
            c.read("Patient", &id).await.unwrap().resource["name"][0]["family"],
            "Byron"
        );

        // vread gives the old version.
        let v1 = c.vread("Patient", &id, "1").await.unwrap();
        assert_eq!(v1.resource["name"][0]["family"], "Lovelace");

        c.delete("Patient", &id).await.unwrap();
        let gone = c.read("Patient", &id).await.unwrap_err();
        assert!(
            matches!(gone, FhirError::Gone { .. } | FhirError::NotFound { .. }),
            "{gone}"
        );
    });
}

#[test]
fn conditional_update_creates_once_then_updates_the_same_resource() {
    support::need_fhir();
    let rt = rt();
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    rt.block_on(async {
        let mrn = support::unique("C");
        let q = format!("identifier=urn:oid:2.16.840.1.113883.19.5|{mrn}");
        let first = c
            .conditional_update(&patient("One", &mrn), &q)
            .await
            .unwrap();
        assert_eq!(first.status, 201);
        let second = c
            .conditional_update(&patient("Two", &mrn), &q)
            .await
            .unwrap();
        assert_eq!(second.status, 200);
        assert_eq!(first.id(), second.id());
        let found = c.search("Patient", &q).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["name"][0]["family"], "Two");
    });
}

#[test]
fn search_follows_next_links_through_every_page() {
    support::need_fhir();
    let rt = rt();
    let c = FhirClient::new(ClientConfig::new(FHIR)).unwrap();
    rt.block_on(async {
        let family = support::unique("Paged").replace(['-', '_'], "");
        for i in 0..7 {
            c.create(&patient(&family, &format!("{family}-{i}")))
                .await
                .unwrap();
        }
        let all = c
            .search("Patient", &format!("family={family}&_count=3"))
            .await
            .unwrap();
        let mut mrns: Vec<String> = all
            .iter()
            .map(|p| p["identifier"][0]["value"].as_str().unwrap().to_string())
            .collect();
        mrns.sort();
        assert_eq!(
            mrns,
            (0..7).map(|i| format!("{family}-{i}")).collect::<Vec<_>>()
        );
    });
}

/// A stand-in EHR: a token endpoint and a Patient endpoint whose behaviour the test scripts.
#[derive(Default)]
struct Ehr {
    token_requests: AtomicU32,
    calls: AtomicU32,
    /// Responses to give before the normal one (status, Retry-After).
    script: Mutex<Vec<(u16, Option<&'static str>)>>,
    headers: Mutex<Vec<HeaderMap>>,
    call_times: Mutex<Vec<Instant>>,
}

fn stand_in() -> (Arc<Ehr>, String) {
    let ehr = Arc::new(Ehr::default());
    let e1 = ehr.clone();
    let e2 = ehr.clone();
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let e = e1.clone();
                async move {
                    let n = e.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
                    // client_id:client_secret in basic auth, the grant in the form.
                    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                        == Some("Basic cGxleHVzOnMzY3JldA==")
                        && body.contains("grant_type=client_credentials")
                        && body.contains("scope=system%2FPatient.rs");
                    if !ok {
                        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"})))
                            .into_response();
                    }
                    axum::Json(json!({"access_token": format!("tok-{n}"), "token_type": "bearer", "expires_in": 3600}))
                        .into_response()
                }
            }),
        )
        .route(
            "/fhir/Patient/{id}",
            axum::routing::get(move |headers: HeaderMap| {
                let e = e2.clone();
                async move {
                    e.calls.fetch_add(1, Ordering::SeqCst);
                    e.call_times.lock().unwrap().push(Instant::now());
                    e.headers.lock().unwrap().push(headers.clone());
                    let next = {
                        let mut s = e.script.lock().unwrap();
                        if s.is_empty() { None } else { Some(s.remove(0)) }
                    };
                    match next {
                        Some((422, _)) => (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            axum::Json(json!({"resourceType": "OperationOutcome", "issue": [{
                                "severity": "error", "code": "invalid",
                                "expression": ["Patient.birthDate"], "diagnostics": "not a valid date"}]})),
                        )
                            .into_response(),
                        Some((status, retry_after)) => {
                            let mut r = StatusCode::from_u16(status).unwrap().into_response();
                            if let Some(ra) = retry_after {
                                r.headers_mut().insert("retry-after", ra.parse().unwrap());
                            }
                            r
                        }
                        None => axum::Json(json!({"resourceType": "Patient", "id": "p1",
                                                  "meta": {"versionId": "4"}}))
                            .into_response(),
                    }
                }
            }),
        );
    let url = support::serve(app);
    (ehr, url)
}

#[test]
fn oauth2_tokens_are_reused_refreshed_on_401_and_transient_failures_retried_with_retry_after() {
    let (ehr, url) = stand_in();
    let mut config = ClientConfig::new(format!("{url}/fhir"));
    config.auth = Auth::ClientCredentials {
        token_url: format!("{url}/token"),
        client_id: "plexus".into(),
        client_secret: "s3cret".into(),
        scope: Some("system/Patient.rs".into()),
        refresh_url: None,
        refresh_every: None,
    };
    config.retry = quick_retry(3);
    let c = FhirClient::new(config).unwrap();
    let rt = rt();
    rt.block_on(async {
        // Two reads: one token.
        assert_eq!(c.read("Patient", "p1").await.unwrap().version_id.as_deref(), Some("4"));
        c.read("Patient", "p1").await.unwrap();
        assert_eq!(ehr.token_requests.load(Ordering::SeqCst), 1);
        let auth = |i: usize| {
            ehr.headers.lock().unwrap()[i]
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(auth(1), "Bearer tok-1");

        // The token was revoked: one 401, a new token, the call succeeds.
        ehr.script.lock().unwrap().push((401, None));
        c.read("Patient", "p1").await.unwrap();
        assert_eq!(ehr.token_requests.load(Ordering::SeqCst), 2);
        assert_eq!(auth(3), "Bearer tok-2");

        // 503 asking for 1 s, then 429: retried, the first wait honouring Retry-After.
        ehr.script.lock().unwrap().extend([(503, Some("1")), (429, None)]);
        let before = ehr.calls.load(Ordering::SeqCst);
        c.read("Patient", "p1").await.unwrap();
        assert_eq!(ehr.calls.load(Ordering::SeqCst) - before, 3);
        let times = ehr.call_times.lock().unwrap().clone();
        let n = times.len();
        assert!(times[n - 2] - times[n - 3] >= Duration::from_millis(950), "Retry-After honoured");

        // Still failing after the policy's attempts: Unavailable, with the attempts counted.
        ehr.script.lock().unwrap().extend([(503, None), (503, None), (503, None)]);
        let err = c.read("Patient", "p1").await.unwrap_err();
        assert!(matches!(err, FhirError::Unavailable { attempts: 3, .. }), "{err}");

        // A 422 is not retried and carries the server's located issue.
        ehr.script.lock().unwrap().push((422, None));
        let before = ehr.calls.load(Ordering::SeqCst);
        let err = c.read("Patient", "p1").await.unwrap_err();
        assert_eq!(ehr.calls.load(Ordering::SeqCst) - before, 1);
        assert_eq!(
            err.to_string(),
            format!("GET {url}/fhir/Patient/p1: rejected (422): error invalid at Patient.birthDate: not a valid date")
        );
    });
}

#[test]
fn basic_and_api_key_authentication_send_their_headers() {
    let (ehr, url) = stand_in();
    let rt = rt();
    rt.block_on(async {
        for auth in [
            Auth::Basic {
                user: "u".into(),
                password: "p".into(),
            },
            Auth::ApiKey {
                header: "X-Api-Key".into(),
                value: "k-123".into(),
            },
        ] {
            let mut config = ClientConfig::new(format!("{url}/fhir"));
            config.auth = auth;
            FhirClient::new(config)
                .unwrap()
                .read("Patient", "p1")
                .await
                .unwrap();
        }
        let h = ehr.headers.lock().unwrap().clone();
        assert_eq!(h[0].get("authorization").unwrap(), "Basic dTpw");
        assert_eq!(h[1].get("x-api-key").unwrap(), "k-123");
    });
}

#[test]
fn an_open_breaker_stops_calls_to_a_failing_ehr() {
    use plexus::resilience::breaker::{BreakerConfig, SharedBreaker};
    let (ehr, url) = stand_in();
    ehr.script
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n((503, None), 50));
    let mut config = ClientConfig::new(format!("{url}/fhir"));
    config.retry = quick_retry(1);
    // Refused calls wait for the breaker (using no attempt) up to max_outage, then give up.
    config.retry.max_outage = Duration::from_millis(100);
    let breaker = SharedBreaker::new(
        "ehr",
        BreakerConfig {
            minimum_calls: 4,
            failure_rate_threshold: 50.0,
            wait_in_open: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
    );
    let c = FhirClient::new(config).unwrap().with_breaker(breaker);
    let rt = rt();
    rt.block_on(async {
        for _ in 0..10 {
            let _ = c.read("Patient", "p1").await;
        }
        let e = c.read("Patient", "p1").await.unwrap_err().to_string();
        assert!(e.contains("retry.max_outage"), "{e}");
    });
    // Four calls reached it; the breaker refused the other seven.
    assert_eq!(ehr.calls.load(Ordering::SeqCst), 4);
}

/// A token endpoint issuing refresh tokens, a refresh endpoint (slow, to overlap concurrent
/// callers) and a FHIR read that records which token each call carried.
#[derive(Default)]
struct Idp {
    grants: Mutex<Vec<String>>,
    /// The refresh token honoured now (None: every refresh is refused).
    refresh: Mutex<Option<String>>,
    used: Mutex<Vec<String>>,
}

#[test]
fn oauth2_refresh_config_renews_early_once_for_concurrent_calls_and_falls_back() {
    let idp = Arc::new(Idp::default());
    let (a, b, c) = (idp.clone(), idp.clone(), idp.clone());
    let form = |body: &str, key: &str| {
        body.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_string()
    };
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(move |body: String| {
                let i = a.clone();
                async move {
                    assert_eq!(form(&body, "grant_type"), "client_credentials");
                    let mut g = i.grants.lock().unwrap();
                    g.push("client_credentials".into());
                    let n = g.len();
                    *i.refresh.lock().unwrap() = Some(format!("r-{n}"));
                    axum::Json(
                        json!({"access_token": format!("cc-{n}"), "token_type": "bearer",
                        "expires_in": 3600, "refresh_token": format!("r-{n}")}),
                    )
                    .into_response()
                }
            }),
        )
        .route(
            "/refresh",
            axum::routing::post(move |body: String| {
                let i = b.clone();
                async move {
                    assert_eq!(form(&body, "grant_type"), "refresh_token");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let given = form(&body, "refresh_token");
                    let mut g = i.grants.lock().unwrap();
                    g.push(format!("refresh {given}"));
                    let n = g.len();
                    if i.refresh.lock().unwrap().as_deref() != Some(given.as_str()) {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            axum::Json(json!({"error": "invalid_grant"})),
                        )
                            .into_response();
                    }
                    // This server keeps the refresh token: it sends none back.
                    axum::Json(
                        json!({"access_token": format!("rf-{n}"), "token_type": "bearer",
                        "expires_in": 3600}),
                    )
                    .into_response()
                }
            }),
        )
        .route(
            "/fhir/Patient/p1",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let i = c.clone();
                async move {
                    let auth = headers["authorization"].to_str().unwrap().to_string();
                    i.used.lock().unwrap().push(auth);
                    axum::Json(json!({"resourceType": "Patient", "id": "p1",
                        "meta": {"versionId": "1"}}))
                }
            }),
        );
    let url = support::serve(app);
    let mut config = ClientConfig::new(format!("{url}/fhir"));
    config.auth = Auth::ClientCredentials {
        token_url: format!("{url}/token"),
        client_id: "plexus".into(),
        client_secret: "s3cret".into(),
        scope: None,
        refresh_url: Some(format!("{url}/refresh")),
        refresh_every: Some(Duration::from_secs(1)),
    };
    let client = FhirClient::new(config).unwrap();
    rt().block_on(async {
        client.read("Patient", "p1").await.unwrap();
        assert_eq!(*idp.grants.lock().unwrap(), ["client_credentials"]);
        // Past refresh_every (the token's own hour is far off): eight calls at once share
        // one refresh, at the refresh URL, with the refresh token.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let calls = (0..8).map(|_| client.read("Patient", "p1"));
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        assert_eq!(
            *idp.grants.lock().unwrap(),
            ["client_credentials", "refresh r-1"]
        );
        let used = idp.used.lock().unwrap().clone();
        assert!(used[1..].iter().all(|t| t == "Bearer rf-2"), "{used:?}");
        // The kept refresh token works again; then the server stops honouring it: a new
        // client-credentials token instead.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        client.read("Patient", "p1").await.unwrap();
        *idp.refresh.lock().unwrap() = None;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        client.read("Patient", "p1").await.unwrap();
        assert_eq!(
            *idp.grants.lock().unwrap(),
            [
                "client_credentials",
                "refresh r-1",
                "refresh r-1",
                "refresh r-1",
                "client_credentials"
            ]
        );
        assert_eq!(idp.used.lock().unwrap().last().unwrap(), "Bearer cc-5");
    });
}
