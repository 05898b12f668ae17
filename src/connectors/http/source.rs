//! HTTP/webhook ingest as a source. Each POST is checked in this order, and the first check
//! that fails answers it:
//!
//! | check                                   | answer                                   |
//! |-----------------------------------------|------------------------------------------|
//! | body over `max_body_bytes`              | 413                                      |
//! | signature, API key or bearer token      | 401 (a replayed signature too)           |
//! | the sender's token bucket               | 429 + `Retry-After`                      |
//! | not a JSON object, resource or HL7      | 422, nothing stored                      |
//! | idempotency key seen                    | the first answer again (202 → 200)       |
//! | ... or in progress / reused elsewhere   | 409 / 422                                |
//! | spool full or stalled                   | 429 + `Retry-After` (busy)               |
//! | records appended and fsynced            | 202, or 400 when a record does not parse |
//!
//! A body that does not parse is still spooled, so the parse stage dead-letters it with its
//! bytes and reason; the sender gets 400 with the same located reason. Nothing is answered
//! 202 before its records are durable (group commit: concurrent requests share an fsync).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::https::{Peer, TlsListener};
use super::idempotency::{Claim, KeyStore};
use super::source_config::{BodyFormat, HttpSourcePlan};
use super::verify::{Refused, Verifier};
use crate::connectors::handoff::{self, Handoff};
use crate::connectors::registry::SourceCx;
use crate::connectors::spool::SpoolError;
use crate::connectors::spooled::{Counters, ListenerFront, Listening, SpooledSource, bind};
use crate::connectors::{BatchSource, ConnectorError};
use crate::formats::hl7::Splitter;

type Limiter = governor::DefaultKeyedRateLimiter<String>;

/// The server's counters (the run summary reports them; no record content).
#[derive(Default)]
pub struct IngestStats {
    pub requests: AtomicU64,
    pub accepted: AtomicU64,
    pub records: AtomicU64,
    pub duplicates: AtomicU64,
    pub bad: AtomicU64,
    pub unauthorized: AtomicU64,
    pub replayed: AtomicU64,
    pub conflicts: AtomicU64,
    pub too_large: AtomicU64,
    pub unprocessable: AtomicU64,
    pub rate_limited: AtomicU64,
    pub busy: AtomicU64,
    pub failed: AtomicU64,
    /// TLS handshakes that failed (no or a wrong client certificate, plain HTTP, ...).
    pub tls_failed: AtomicU64,
    pub bytes: AtomicU64,
    /// Requests being answered now.
    pub open: AtomicUsize,
}

impl IngestStats {
    pub fn describe(&self, at: &str) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "http {at}: {} requests ({} bytes), {} records spooled; 202 {}, 200 duplicates {}, 400 {}, 401 {} ({} replays), 409 {}, 413 {}, 422 {}, 429 {} over the rate and {} busy, 503 {}; {} failed TLS handshakes",
            n(&self.requests),
            n(&self.bytes),
            n(&self.records),
            n(&self.accepted),
            n(&self.duplicates),
            n(&self.bad),
            n(&self.unauthorized),
            n(&self.replayed),
            n(&self.conflicts),
            n(&self.too_large),
            n(&self.unprocessable),
            n(&self.rate_limited),
            n(&self.busy),
            n(&self.failed),
            n(&self.tls_failed),
        )
    }
}

/// What every request shares.
struct Cx {
    plan: HttpSourcePlan,
    spool: Handoff,
    verifier: Verifier,
    limiter: Option<Limiter>,
    keys: Option<KeyStore>,
    stats: Arc<IngestStats>,
    /// `http://<listen><path>`: the start of each record's `_source`.
    origin: String,
}

impl Counters for IngestStats {
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn describe(&self, at: &str) -> String {
        IngestStats::describe(self, at)
    }
}

/// A running server: the front of a spooled source.
pub type HttpFront = ListenerFront<IngestStats>;

pub type HttpSource = SpooledSource<HttpFront>;

fn other(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Other(format!("http source: {e}"))
}

/// Opens the spool and the key store, reads the secrets and starts serving. Call within the
/// runtime.
pub fn start(
    plan: &HttpSourcePlan,
    source: SourceCx<'_>,
) -> Result<Box<dyn BatchSource>, ConnectorError> {
    let handle = tokio::runtime::Handle::current();
    let (spool, reader) = handoff::open(
        "http source",
        &plan.spool,
        plan.spool_options.clone(),
        plan.handoff.as_ref(),
        source.kafka,
    )?;
    let verifier = Verifier::new(&plan.auth).map_err(other)?;
    if plan.auth.is_open() {
        tracing::warn!(listen = %plan.listen, "http source: no auth: anyone who reaches it may post");
    }
    let keys = match &plan.idempotency {
        Some(i) => Some(
            handle
                .block_on(KeyStore::open(i, &plan.scope))
                .map_err(other)?,
        ),
        None => None,
    };
    let limiter = plan.rate_limit.map(|(rate, burst)| {
        let nz = |n: u32| std::num::NonZeroU32::new(n).expect("planned non-zero");
        Limiter::keyed(governor::Quota::per_second(nz(rate)).allow_burst(nz(burst)))
    });
    let (listener, listen) = bind("http source", plan.listen)?;
    let tls = plan
        .tls
        .as_ref()
        .map(|t| t.acceptor("http source"))
        .transpose()?;
    let stats = Arc::new(IngestStats::default());
    let cx = Arc::new(Cx {
        plan: plan.clone(),
        spool,
        verifier,
        limiter,
        keys,
        stats: stats.clone(),
        origin: format!(
            "{}://{listen}{}",
            if tls.is_some() { "https" } else { "http" },
            plan.path
        ),
    });
    let app = Router::new()
        .route(&plan.path, axum::routing::post(ingest))
        .with_state(cx.clone());
    let tls_stats = stats.clone();
    let listening = Listening::spawn(move |stop| async move {
        tokio::spawn(purge_keys(cx, stop.clone()));
        let mut until = stop.clone();
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        let app = app.into_make_service_with_connect_info::<Peer>();
        let served = match tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(acceptor) => match TlsListener::new(
                listener,
                acceptor,
                Arc::new(move || {
                    tls_stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                }),
                stop,
            ) {
                Ok(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "http source: server failed");
        }
    });
    let at = format!("{listen}{}", plan.path);
    tracing::info!(listen = %at, "http source: listening");
    eprintln!("http: listening on {at}");
    let front = HttpFront {
        stats,
        at,
        listening,
        settle: None,
    };
    handoff::source(front, reader, plan.handoff.as_ref(), source)
}

/// Deletes expired idempotency keys every ten minutes.
async fn purge_keys(cx: Arc<Cx>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(keys) = &cx.keys else { return };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match keys.purge().await {
            Ok(n) => tracing::debug!(purged = n, "http source: expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "http source: purging idempotency keys failed"),
        }
    }
}

/// A JSON answer.
fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Response {
    answer(
        status,
        json!({"status": status.as_u16(), "error": error.into()}),
    )
}

fn retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(secs.max(1)));
    r
}

/// Counts a request in progress for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

async fn ingest(
    State(cx): State<Arc<Cx>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let s = &cx.stats;
    bump(&s.requests);
    s.open.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight(&s.open);
    let max = cx.plan.max_body_bytes;
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        bump(&s.too_large);
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {max} bytes"),
        );
    }
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(e) if e.to_string().contains("length limit") => {
            bump(&s.too_large);
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {max} bytes"),
            );
        }
        Err(_) => {
            bump(&s.bad);
            return refuse(StatusCode::BAD_REQUEST, "the body could not be read");
        }
    };
    s.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let now = chrono::Utc::now().timestamp();
    let (sender, replayed) = match cx.verifier.check(&headers, &bytes, now) {
        Ok(a) => (a.sender, false),
        Err(Refused::Replayed) => (None, true),
        Err(Refused::Unauthorized(why)) => {
            bump(&s.unauthorized);
            tracing::debug!(peer = %peer, reason = %why, "http source: request refused");
            return refuse(StatusCode::UNAUTHORIZED, why);
        }
    };
    if let Some(limiter) = &cx.limiter {
        // Every sender seen gets a bucket: forget the full ones now and then, so the map
        // holds recent senders, not every address that ever posted.
        if s.requests.load(Ordering::Relaxed).is_multiple_of(4096) {
            limiter.retain_recent();
        }
        let who = sender.unwrap_or_else(|| peer.ip().to_string());
        if let Err(not_until) = limiter.check_key(&who) {
            bump(&s.rate_limited);
            use governor::clock::Clock;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let r = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "over the sender's rate limit",
            );
            return retry_after(r, wait.as_secs_f64().ceil() as u64);
        }
    }
    let body = match split(
        cx.plan.format,
        &bytes,
        cx.plan
            .idempotency
            .as_ref()
            .and_then(|i| i.field.as_deref()),
    ) {
        Ok(b) => b,
        Err(why) => {
            bump(&s.unprocessable);
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, why);
        }
    };
    let key = cx.plan.idempotency.as_ref().and_then(|i| {
        headers
            .get(i.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or(body.event_id.clone())
    });
    if replayed && key.is_none() {
        bump(&s.unauthorized);
        bump(&s.replayed);
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this signature was already used: a replayed request",
        );
    }
    let (Some(keys), Some(key)) = (&cx.keys, key) else {
        return store(&cx, peer, body).await.0;
    };
    let hash = crate::net::http::to_hex(&Sha256::digest(&bytes));
    match keys.claim(&key, &hash).await {
        Ok(Claim::New) => {}
        Ok(Claim::Done { status, response }) => {
            bump(&s.duplicates);
            // The first answer again; an accepted request is now simply OK.
            let status = if status == 202 { 200 } else { status };
            let mut r = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                [("content-type", "application/json")],
                response,
            )
                .into_response();
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return r;
        }
        Ok(Claim::InProgress) => {
            bump(&s.conflicts);
            return refuse(
                StatusCode::CONFLICT,
                "a request with this idempotency key is being processed",
            );
        }
        Ok(Claim::Mismatch) => {
            bump(&s.unprocessable);
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this idempotency key was used for a different body",
            );
        }
        Err(e) => {
            bump(&s.failed);
            tracing::error!(error = %e, "http source: idempotency store");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "idempotency store unavailable",
            );
        }
    }
    let (response, kept) = store(&cx, peer, body).await;
    let saved = match kept {
        Some((status, text)) => keys.finish(&key, status, &text).await,
        None => keys.release(&key).await,
    };
    if let Err(e) = saved {
        tracing::error!(error = %e, "http source: idempotency store");
    }
    response
}

/// Appends the records; the answer, and (status, body) when it is final (not retryable).
async fn store(cx: &Cx, peer: SocketAddr, body: Body1) -> (Response, Option<(u16, String)>) {
    let s = &cx.stats;
    let origin = format!("{}/{peer}", cx.origin);
    let n = body.records.len();
    let records = body
        .records
        .into_iter()
        .map(|r| (origin.clone(), r))
        .collect();
    match cx.spool.append_all(records).await {
        Ok(offsets) => {
            let offset = offsets.first().copied().unwrap_or_default();
            s.records.fetch_add(n as u64, Ordering::Relaxed);
            let (status, value) = match body.bad {
                None => {
                    bump(&s.accepted);
                    (
                        StatusCode::ACCEPTED,
                        json!({"status": "accepted", "records": n, "offset": offset}),
                    )
                }
                Some((bad, reason)) => {
                    bump(&s.bad);
                    (
                        StatusCode::BAD_REQUEST,
                        json!({"status": 400, "error": reason, "records": n,
                               "rejected": bad, "offset": offset,
                               "note": "records that do not parse go to the dead letters"}),
                    )
                }
            };
            let text = value.to_string();
            let r = (status, [("content-type", "application/json")], text.clone()).into_response();
            (r, Some((status.as_u16(), text)))
        }
        Err(e @ (SpoolError::Full { .. } | SpoolError::Stalled { .. })) => {
            bump(&s.busy);
            let r = refuse(StatusCode::TOO_MANY_REQUESTS, format!("busy: {e}"));
            (retry_after(r, 1), None)
        }
        Err(e) => {
            bump(&s.failed);
            tracing::error!(error = %e, "http source: spool append failed");
            (
                refuse(StatusCode::SERVICE_UNAVAILABLE, "not stored; send it again"),
                None,
            )
        }
    }
}

/// A body cut into records.
#[derive(Debug)]
struct Body1 {
    records: Vec<Vec<u8>>,
    /// How many records do not parse, and the first reasons.
    bad: Option<(usize, String)>,
    /// The configured event-id field of a single JSON object.
    event_id: Option<String>,
}

/// Cuts a body into records. Err: a body that parses but is not what this source takes.
fn split(format: BodyFormat, bytes: &[u8], id_field: Option<&str>) -> Result<Body1, String> {
    let whole = |why: String| Body1 {
        records: vec![bytes.to_vec()],
        bad: Some((1, why)),
        event_id: None,
    };
    if format == BodyFormat::Hl7 {
        return split_hl7(bytes);
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return Ok(whole(format!("JSON does not parse: {e}"))),
    };
    let event_id = id_field.and_then(|f| {
        let v = if f.starts_with('/') {
            value.pointer(f)
        } else {
            value.get(f)
        }?;
        Some(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    });
    let one = |records| Body1 {
        records,
        bad: None,
        event_id: event_id.clone(),
    };
    match (format, &value) {
        (BodyFormat::Json, Value::Object(_)) => Ok(one(vec![bytes.to_vec()])),
        (BodyFormat::Json, Value::Array(items)) if items.iter().all(Value::is_object) => {
            Ok(one(items
                .iter()
                .map(|v| v.to_string().into_bytes())
                .collect()))
        }
        (BodyFormat::Json, _) => Err("expected a JSON object or an array of objects".into()),
        (BodyFormat::Fhir, Value::Object(o)) => match o.get("resourceType").and_then(Value::as_str)
        {
            Some("Bundle") => {
                let resources: Vec<Vec<u8>> = o
                    .get("entry")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.get("resource"))
                    .filter(|r| r.get("resourceType").and_then(Value::as_str).is_some())
                    .map(|r| r.to_string().into_bytes())
                    .collect();
                if resources.is_empty() {
                    return Err("the Bundle has no entry with a resource".into());
                }
                Ok(one(resources))
            }
            Some(_) => Ok(one(vec![bytes.to_vec()])),
            None => Err("not a FHIR resource: no resourceType".into()),
        },
        (BodyFormat::Fhir, _) => Err("expected a FHIR resource or Bundle (a JSON object)".into()),
        (BodyFormat::Hl7, _) => unreachable!("handled above"),
    }
}

/// HL7 v2 text: one message, or a batch (FHS/BHS) cut into its messages.
fn split_hl7(bytes: &[u8]) -> Result<Body1, String> {
    let mut records = Vec::new();
    let mut bad = 0;
    let mut reasons = Vec::new();
    for (i, item) in Splitter::new(bytes).enumerate() {
        match item {
            Ok(m) => records.push(m.message.raw().to_vec()),
            Err(b) => {
                records.push(b.raw.to_vec());
                bad += 1;
                if reasons.len() < 3 {
                    reasons.push(format!("message {}: {}", i + 1, b.error));
                }
            }
        }
    }
    if records.is_empty() {
        return Err("no HL7 v2 message in the body".into());
    }
    Ok(Body1 {
        records,
        bad: (bad > 0).then(|| (bad, reasons.join("; "))),
        event_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_records() {
        let b = split(BodyFormat::Json, br#"{"id":"e1","type":"x"}"#, Some("id")).unwrap();
        assert_eq!((b.records.len(), b.event_id.as_deref()), (1, Some("e1")));
        let b = split(BodyFormat::Json, br#"[{"a":1},{"a":2}]"#, None).unwrap();
        assert_eq!(
            b.records,
            vec![br#"{"a":1}"#.to_vec(), br#"{"a":2}"#.to_vec()]
        );
        let b = split(
            BodyFormat::Json,
            br#"{"meta":{"event_id":7}}"#,
            Some("/meta/event_id"),
        )
        .unwrap();
        assert_eq!(b.event_id.as_deref(), Some("7"));
        // Does not parse: kept whole (for the dead letters), with a located reason.
        let b = split(BodyFormat::Json, b"{\"a\":\n  tru}", None).unwrap();
        let (n, why) = b.bad.unwrap();
        assert_eq!(n, 1);
        assert!(why.contains("line 2 column"), "{why}");
        assert!(split(BodyFormat::Json, b"[1,2]", None).is_err());
        let bundle = br#"{"resourceType":"Bundle","entry":[
            {"resource":{"resourceType":"Patient","id":"p1"}},
            {"request":{"method":"DELETE","url":"Patient/p2"}},
            {"resource":{"resourceType":"Encounter","id":"e1"}}]}"#;
        let b = split(BodyFormat::Fhir, bundle, None).unwrap();
        assert_eq!(b.records.len(), 2);
        assert!(String::from_utf8_lossy(&b.records[1]).contains("Encounter"));
        assert!(split(BodyFormat::Fhir, br#"{"id":"x"}"#, None).is_err());
        let hl7 = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1\rMSH|^~\\&|A|B|C|D|20240101||ADT^A01|2|P|2.5\rPID|2\r";
        assert_eq!(split(BodyFormat::Hl7, hl7, None).unwrap().records.len(), 2);
        assert!(split(BodyFormat::Hl7, b"", None).is_err());
    }
}
