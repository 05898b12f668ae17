//! The HTTP client of sinks, retry workers and alert webhooks: outgoing webhooks and REST
//! endpoints, with auth and TLS (`net::auth`).
//!
//! Each row is one request (a JSON object), signed with HMAC-SHA256 when the sink has a
//! secret, and carrying an `Idempotency-Key` that stays the same across retries and replays so
//! the receiver can drop duplicates (delivery is at-least-once).
//!
//! Signature: `X-Plexus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! the scheme Stripe and Svix use: the timestamp is signed with the body so a captured request
//! cannot be replayed later; receivers check `|now - t|` against a tolerance (see `verify`).
//!
//! Outcomes: 2xx delivered; 408, 425, 429, 500, 502, 503, 504, timeouts and connection errors
//! are transient (retried per the sink's policy, honouring `Retry-After`); everything else is
//! permanent (the record goes to the dead-letter output at once: retrying a 400 only repeats it).

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::auth;

pub const SIGNATURE_HEADER: &str = "x-plexus-signature";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const ATTEMPT_HEADER: &str = "x-plexus-attempt";
pub const CORRELATION_HEADER: &str = "x-plexus-correlation-id";

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        status: u16,
        latency: Duration,
    },
    /// Worth retrying later.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        /// The HTTP status, when the endpoint answered.
        status: Option<u16>,
    },
    /// Retrying would fail the same way.
    Permanent {
        reason: String,
        status: Option<u16>,
    },
}

impl Outcome {
    /// How long the call took (known for delivered calls; zero otherwise).
    pub fn latency(&self) -> Duration {
        match self {
            Outcome::Delivered { latency, .. } => *latency,
            _ => Duration::ZERO,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Delivered { .. } => None,
            Outcome::Transient { reason, .. } | Outcome::Permanent { reason, .. } => Some(reason),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { status, .. } => Some(*status),
            Outcome::Transient { status, .. } | Outcome::Permanent { status, .. } => *status,
        }
    }

    /// The outcome-stream status (`metrics::outcome`).
    pub fn call_status(&self) -> crate::metrics::outcome::CallStatus {
        use crate::metrics::outcome::CallStatus;
        match self {
            Outcome::Delivered { .. } => CallStatus::Delivered,
            Outcome::Transient { .. } => CallStatus::Transient,
            Outcome::Permanent { .. } => CallStatus::Permanent,
        }
    }
}

/// Whether a status is worth retrying (RFC 9110 semantics plus 429 from RFC 6585).
pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504)
}

/// One request of a batch.
pub struct Request<'a> {
    pub body: &'a [u8],
    /// FHIR targets: the request's path under the base (a conditional update's
    /// `Patient?identifier=…`, sent as PUT); `None` or empty posts to the base (a Bundle).
    pub path: Option<&'a str>,
    pub idempotency_key: &'a str,
    pub correlation_id: Option<&'a str>,
    pub attempt: u32,
    /// FHIR conditional updates: elements the message deletes, comma-separated (the `fhir`
    /// stage's `delete_elements`).
    pub delete: Option<&'a str>,
}

/// An endpoint and how to call it. Cheap to clone (the client is shared).
#[derive(Clone)]
pub struct HttpTarget {
    client: reqwest::Client,
    pub url: String,
    method: reqwest::Method,
    headers: Vec<(String, String)>,
    secret: Option<Vec<u8>>,
    /// A FHIR server: `application/fhir+json`, method and path per request.
    fhir: bool,
    timeout: Duration,
    credentials: auth::Credentials,
}

impl HttpTarget {
    /// Makes this a FHIR target: the URL is the server's base, each request says its path.
    pub fn fhir(mut self) -> Self {
        self.fhir = true;
        self
    }

    pub fn new(
        url: &str,
        method: &str,
        headers: Vec<(String, String)>,
        secret: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("unknown HTTP method {method:?}"))?;
        let client = Self::client(timeout, &auth::Tls::default())?;
        Ok(HttpTarget {
            credentials: auth::Credentials::new(auth::Auth::None, client.clone()),
            client,
            url: url.to_string(),
            method,
            headers,
            secret,
            fhir: false,
            timeout,
        })
    }

    /// Authenticates every request with `auth`, over a client with `tls`.
    pub fn with_auth(mut self, auth: auth::Auth, tls: &auth::Tls) -> Result<Self, String> {
        self.client = Self::client(self.timeout, tls)?;
        self.credentials = auth::Credentials::new(auth, self.client.clone());
        Ok(self)
    }

    fn client(timeout: Duration, tls: &auth::Tls) -> Result<reqwest::Client, String> {
        let b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        tls.configure(b)?
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))
    }

    /// One attempt. Never panics; every failure is an `Outcome`. An OAuth2 token the
    /// endpoint no longer accepts (`401`) is fetched again and the request sent once more.
    pub async fn deliver(&self, r: &Request<'_>) -> Outcome {
        let first = self.deliver_once(r).await;
        if first.status() == Some(401) && self.credentials.refreshes() {
            self.credentials.forget_token().await;
            return self.deliver_once(r).await;
        }
        first
    }

    async fn deliver_once(&self, r: &Request<'_>) -> Outcome {
        if self.fhir
            && let Some(path) = r.path.filter(|p| p.contains('?'))
        {
            return self.upsert(r, path).await;
        }
        self.send(r, None, None).await
    }

    /// The request with its credentials; a token endpoint that cannot be reached is a
    /// transient failure, one that refuses a permanent one.
    async fn authorized(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::RequestBuilder, Outcome> {
        self.credentials.apply(req).await.map_err(|e| match e {
            e @ auth::AuthError::Unavailable { .. } => Outcome::Transient {
                reason: format!("{what}: {e}"),
                retry_after: None,
                status: None,
            },
            e @ auth::AuthError::Refused { .. } => Outcome::Permanent {
                reason: format!("{what}: {e}"),
                status: None,
            },
        })
    }

    /// A FHIR conditional update with HL7 v2 semantics: the resource matching the identifier
    /// is read, the message merged into it (`crate::fhir::merge`: what the message does not
    /// carry stays, `""` deletes, identifiers and contacts are kept) and written back on the
    /// version read (`If-Match`, so a concurrent change is not overwritten: 412 → retried).
    /// No match: the conditional PUT creates it. Nothing to change: no write.
    async fn upsert(&self, r: &Request<'_>, path: &str) -> Outcome {
        let started = Instant::now();
        let base = self.url.trim_end_matches('/');
        let kind = path.split_once('?').map_or(path, |(k, _)| k);
        let what = format!("GET {base}/{kind}?…");
        let mut req = self
            .client
            .get(format!("{base}/{path}"))
            .header(reqwest::header::ACCEPT, "application/fhir+json");
        if let Some(c) = r.correlation_id {
            req = req.header(CORRELATION_HEADER, c);
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        req = match self.authorized(req, &what).await {
            Ok(req) => req,
            Err(outcome) => return outcome,
        };
        let found: Value = match req.send().await {
            Ok(resp) if resp.status().is_success() => match resp.json().await {
                Ok(v) => v,
                Err(e) => {
                    return Outcome::Transient {
                        reason: format!("{what}: unreadable search result: {e}"),
                        retry_after: None,
                        status: None,
                    };
                }
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let reason = format!("{what}: HTTP {status}");
                return if is_transient_status(status) {
                    Outcome::Transient {
                        reason,
                        retry_after: None,
                        status: Some(status),
                    }
                } else {
                    Outcome::Permanent {
                        reason,
                        status: Some(status),
                    }
                };
            }
            Err(e) => {
                return Outcome::Transient {
                    reason: format!("{what}: {}", error_chain(&e)),
                    retry_after: None,
                    status: None,
                };
            }
        };
        let matches: Vec<&Value> = found["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] != "include")
            .map(|e| &e["resource"])
            .collect();
        let current = match matches.as_slice() {
            [] => return self.send(r, None, None).await,
            [one] => *one,
            more => {
                return Outcome::Permanent {
                    reason: format!("{what}: {} resources match the identifier", more.len()),
                    status: None,
                };
            }
        };
        let message: Value = match serde_json::from_slice(r.body) {
            Ok(v) => v,
            Err(e) => {
                return Outcome::Permanent {
                    reason: format!("{kind}: the resource is not JSON: {e}"),
                    status: None,
                };
            }
        };
        let deleted: Vec<String> = r
            .delete
            .into_iter()
            .flat_map(|d| d.split(','))
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        let merged = crate::fhir::merge::merge(current, &message, &deleted);
        if crate::fhir::merge::changed_elements(&merged, current).is_empty() {
            return Outcome::Delivered {
                status: 200,
                latency: started.elapsed(),
            };
        }
        let Some(id) = current["id"].as_str() else {
            return Outcome::Permanent {
                reason: format!("{what}: the match has no id"),
                status: None,
            };
        };
        let body = match serde_json::to_vec(&merged) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Permanent {
                    reason: format!("{kind}: {e}"),
                    status: None,
                };
            }
        };
        let if_match = current["meta"]["versionId"]
            .as_str()
            .map(|v| format!("W/\"{v}\""));
        let url = format!("{base}/{kind}/{id}");
        let write = Request { body: &body, ..*r };
        match self.send(&write, Some(&url), if_match.as_deref()).await {
            Outcome::Permanent {
                status: Some(412),
                reason,
            } => Outcome::Transient {
                reason: format!("{reason} (changed by another writer meanwhile: read again)"),
                retry_after: None,
                status: Some(412),
            },
            other => other,
        }
    }

    /// One request: to `url` (a PUT of a FHIR resource by id) when given, else where the
    /// request's path says.
    async fn send(&self, r: &Request<'_>, url: Option<&str>, if_match: Option<&str>) -> Outcome {
        let (method, url, content_type) = match (url, r.path.filter(|p| self.fhir && !p.is_empty()))
        {
            (Some(url), _) => (
                reqwest::Method::PUT,
                url.to_string(),
                "application/fhir+json",
            ),
            (None, Some(path)) => (
                reqwest::Method::PUT,
                format!("{}/{path}", self.url.trim_end_matches('/')),
                "application/fhir+json",
            ),
            (None, None) if self.fhir => (
                reqwest::Method::POST,
                self.url.clone(),
                "application/fhir+json",
            ),
            (None, None) => (self.method.clone(), self.url.clone(), "application/json"),
        };
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(IDEMPOTENCY_HEADER, r.idempotency_key)
            .header(ATTEMPT_HEADER, r.attempt.to_string());
        if let Some(v) = if_match {
            req = req.header(reqwest::header::IF_MATCH, v);
        }
        if let Some(c) = r.correlation_id {
            req = req.header(CORRELATION_HEADER, c);
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(secret) = &self.secret {
            let t = chrono::Utc::now().timestamp();
            req = req.header(SIGNATURE_HEADER, sign(secret, t, r.body));
        }
        // A conditional update's query holds an identifier (an MRN): reasons name the
        // resource type only.
        let what = match url.split_once('?') {
            Some((path, _)) if self.fhir => format!("{method} {path}?…"),
            _ => format!("{method} {url}"),
        };
        req = match self.authorized(req, &what).await {
            Ok(req) => req,
            Err(outcome) => return outcome,
        };
        let started = Instant::now();
        match req.body(r.body.to_vec()).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Outcome::Delivered {
                        status,
                        latency: started.elapsed(),
                    };
                }
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::resilience::retry::parse_retry_after);
                // The start of the body explains most rejections; bounded, never logged.
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                let reason = format!("{what}: HTTP {status}: {}", body.trim());
                if is_transient_status(status) {
                    Outcome::Transient {
                        reason,
                        retry_after,
                        status: Some(status),
                    }
                } else {
                    Outcome::Permanent {
                        reason,
                        status: Some(status),
                    }
                }
            }
            Err(e) if e.is_builder() => Outcome::Permanent {
                reason: format!("{what}: {e}"),
                status: None,
            },
            // Timeouts, refused connections, resets: the endpoint may come back.
            Err(e) => Outcome::Transient {
                reason: format!("{what}: {}", error_chain(&e)),
                retry_after: None,
                status: None,
            },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The signature header value for `body` sent at unix time `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", to_hex(&mac.finalize().into_bytes()))
}

/// Lowercase hex of bytes (signatures, digests).
pub fn to_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Checks a signature header (constant-time compare) and its age; what a receiver does.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), String> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let t = t.ok_or("signature header has no timestamp")?;
    if (now - t).unsigned_abs() > tolerance.as_secs() {
        return Err(format!("signature timestamp {t} is outside the tolerance"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    for s in sigs {
        let Some(bytes) = decode_hex(s) else { continue };
        if mac.clone().verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err("no signature matches".into())
}

/// Hex text to bytes (None when it is not hex).
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let secret = b"whsec_test";
        let body = br#"{"mrn":"123"}"#;
        let h = sign(secret, 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="));
        let tol = Duration::from_secs(300);
        assert_eq!(verify(secret, &h, body, 1_700_000_100, tol), Ok(()));
        assert!(verify(secret, &h, br#"{"mrn":"124"}"#, 1_700_000_100, tol).is_err());
        assert!(verify(b"other", &h, body, 1_700_000_100, tol).is_err());
        // Too old: a captured request cannot be replayed later.
        assert!(verify(secret, &h, body, 1_700_001_000, tol).is_err());
        assert!(verify(secret, "v1=00", body, 0, tol).is_err());
    }

    #[test]
    fn rfc_2104_test_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?", split as
        // t="what do ya want for nothing" + "." would not match; check the raw HMAC instead.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            to_hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412, 422, 501, 505] {
            assert!(!is_transient_status(s), "{s}");
        }
    }
}
