//! The EHR client (the seed's EHRIntegrationAdapter): FHIR R4 REST over reqwest.
//!
//! - Interactions: create, read, vread, update (optionally `If-Match` on the version the
//!   caller last saw), conditional update, delete, search (following `Bundle.link[next]`
//!   through every page), transaction/batch.
//! - Errors are typed: `409`/`412` are [`FhirError::Conflict`] (someone else changed the
//!   resource: never retried, the sync decides), other `4xx` are [`FhirError::Rejected`] with
//!   the server's OperationOutcome issues (severity, code, where, diagnostics), `404`/`410`
//!   are [`FhirError::NotFound`]/[`FhirError::Gone`]. Transient failures (`408`, `425`,
//!   `429`, `5xx`, timeouts, connection errors) are retried by the integration's
//!   [`RetryPolicy`] honouring `Retry-After`, then reported as [`FhirError::Unavailable`].
//! - Authentication: none, basic, API key header, bearer token, OAuth2 client credentials
//!   (token fetched once, reused until shortly before it expires, fetched again on a `401`),
//!   and a client certificate (mTLS).
//! - A circuit breaker, when given, gates every call and learns from its outcome.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub use crate::net::auth::{Auth, AuthError, Credentials, Tls};
use crate::resilience::breaker::SharedBreaker;
use crate::resilience::retry::{RetryPolicy, jitter_random, parse_retry_after};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The FHIR base, e.g. `https://ehr.example.org/fhir` (no trailing slash needed).
    pub base: String,
    pub auth: Auth,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// An extra trusted CA, and the client certificate for mutual TLS.
    pub tls: Tls,
    /// At most this many search pages are followed (a server looping its `next` link must
    /// not hang a sync).
    pub max_pages: usize,
}

impl ClientConfig {
    pub fn new(base: impl Into<String>) -> Self {
        ClientConfig {
            base: base.into(),
            auth: Auth::None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            tls: Tls::default(),
            max_pages: 1000,
        }
    }
}

/// One OperationOutcome issue.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: String,
    pub code: String,
    /// `expression` (or the deprecated `location`), e.g. `Patient.birthDate`.
    pub location: Option<String>,
    pub diagnostics: Option<String>,
}

/// The issues of an OperationOutcome (empty when the server sent none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome(pub Vec<Issue>);

impl Outcome {
    /// Reads an OperationOutcome body; anything else gives no issues.
    pub fn parse(body: &Value) -> Outcome {
        if body["resourceType"] != "OperationOutcome" {
            return Outcome::default();
        }
        let text = |v: &Value| v.as_str().map(str::to_string);
        Outcome(
            body["issue"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| Issue {
                    severity: text(&i["severity"]).unwrap_or_default(),
                    code: text(&i["code"]).unwrap_or_default(),
                    location: i["expression"][0]
                        .as_str()
                        .or(i["location"][0].as_str())
                        .map(str::to_string),
                    diagnostics: text(&i["diagnostics"]).or_else(|| text(&i["details"]["text"])),
                })
                .collect(),
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "no OperationOutcome");
        }
        for (n, i) in self.0.iter().enumerate() {
            if n > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{} {}", i.severity, i.code)?;
            if let Some(l) = &i.location {
                write!(f, " at {l}")?;
            }
            if let Some(d) = &i.diagnostics {
                write!(f, ": {d}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// 409 or 412: the resource changed since the version the caller sent (or a concurrent
    /// write won). Not retried: the caller re-reads and decides.
    #[error("{method} {url}: conflict ({status}): {outcome}")]
    Conflict {
        method: Method,
        url: String,
        status: u16,
        outcome: Outcome,
    },
    #[error("{method} {url}: not found")]
    NotFound { method: Method, url: String },
    #[error("{method} {url}: gone (deleted)")]
    Gone { method: Method, url: String },
    /// Any other 4xx: the request itself is wrong; retrying cannot help.
    #[error("{method} {url}: rejected ({status}): {outcome}")]
    Rejected {
        method: Method,
        url: String,
        status: u16,
        outcome: Outcome,
    },
    /// Still failing after the retry policy's attempts (or refused by the breaker).
    #[error("{method} {url}: unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        method: Method,
        url: String,
        attempts: u32,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

impl FhirError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, FhirError::Conflict { .. })
    }
}

/// A resource as the server returned it, with its version.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub resource: Value,
    /// `meta.versionId`, else the `ETag`'s (`W/"3"` → `3`).
    pub version_id: Option<String>,
    /// HTTP status of the response (201 on create, 200 on update).
    pub status: u16,
}

impl Versioned {
    pub fn id(&self) -> Option<&str> {
        self.resource["id"].as_str()
    }
}

/// A FHIR R4 client for one EHR.
#[derive(Clone)]
pub struct FhirClient {
    config: Arc<ClientConfig>,
    http: reqwest::Client,
    credentials: Credentials,
    breaker: Option<SharedBreaker>,
    /// Calls are waiting out an open breaker (shared by the clones, for one log line).
    waiting: Arc<std::sync::atomic::AtomicBool>,
}

/// What one attempt produced.
enum Attempt {
    Done(reqwest::StatusCode, reqwest::header::HeaderMap, Value),
    Transient(String, Option<Duration>),
    Unauthorized,
}

impl FhirClient {
    pub fn new(config: ClientConfig) -> Result<Self, FhirError> {
        let b = reqwest::Client::builder().timeout(config.timeout);
        let http = config
            .tls
            .configure(b)
            .map_err(FhirError::Config)?
            .build()
            .map_err(|e| FhirError::Config(format!("HTTP client: {e}")))?;
        Ok(FhirClient {
            credentials: Credentials::new(config.auth.clone(), http.clone()),
            config: Arc::new(config),
            http,
            breaker: None,
            waiting: Arc::default(),
        })
    }

    /// Gates every call with `breaker` (and records each outcome in it).
    pub fn with_breaker(mut self, breaker: SharedBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Says once per outage that calls wait for the server (not once per record).
    fn outage_started(&self, breaker: &str) {
        if !self
            .waiting
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                breaker,
                max_outage = ?self.config.retry.max_outage,
                "FHIR server unavailable (circuit breaker open): records wait for it without using attempts"
            );
        }
    }

    fn outage_ended(&self) {
        if self
            .waiting
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!("FHIR server answering again: waiting records resume");
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.config.base.trim_end_matches('/'), path)
    }

    /// The server's CapabilityStatement (`GET [base]/metadata`): what a health check asks.
    pub async fn capabilities(&self) -> Result<Versioned, FhirError> {
        self.send(Method::GET, &self.url("metadata"), None, &[])
            .await
    }

    pub async fn read(&self, kind: &str, id: &str) -> Result<Versioned, FhirError> {
        self.send(Method::GET, &self.url(&format!("{kind}/{id}")), None, &[])
            .await
    }

    pub async fn vread(&self, kind: &str, id: &str, version: &str) -> Result<Versioned, FhirError> {
        let path = format!("{kind}/{id}/_history/{version}");
        self.send(Method::GET, &self.url(&path), None, &[]).await
    }

    pub async fn create(&self, resource: &Value) -> Result<Versioned, FhirError> {
        self.post(resource, &[]).await
    }

    /// Update by id; with `if_match`, only if the server's version is still that one
    /// (else [`FhirError::Conflict`]).
    pub async fn update(
        &self,
        resource: &Value,
        if_match: Option<&str>,
    ) -> Result<Versioned, FhirError> {
        let kind = resource_type(resource)?;
        let id = resource["id"]
            .as_str()
            .ok_or_else(|| FhirError::Config("an update needs the resource's id".into()))?;
        let etag = if_match.map(|v| format!("W/\"{v}\""));
        let headers: Vec<(&str, &str)> = etag.iter().map(|e| ("If-Match", e.as_str())).collect();
        self.send(
            Method::PUT,
            &self.url(&format!("{kind}/{id}")),
            Some(resource),
            &headers,
        )
        .await
    }

    /// `POST Type` with `If-None-Exist: query`: creates unless the query matches, in which
    /// case the server answers with the one it has (412 when several).
    pub async fn conditional_create(
        &self,
        resource: &Value,
        query: &str,
    ) -> Result<Versioned, FhirError> {
        self.post(resource, &[("If-None-Exist", query)]).await
    }

    async fn post(
        &self,
        resource: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Versioned, FhirError> {
        let kind = resource_type(resource)?;
        self.send(Method::POST, &self.url(kind), Some(resource), headers)
            .await
    }

    /// `PUT Type?query`: updates the one match, creates when none (412 when several).
    pub async fn conditional_update(
        &self,
        resource: &Value,
        query: &str,
    ) -> Result<Versioned, FhirError> {
        let kind = resource_type(resource)?;
        self.send(
            Method::PUT,
            &self.url(&format!("{kind}?{query}")),
            Some(resource),
            &[],
        )
        .await
    }

    pub async fn delete(&self, kind: &str, id: &str) -> Result<(), FhirError> {
        self.send(
            Method::DELETE,
            &self.url(&format!("{kind}/{id}")),
            None,
            &[],
        )
        .await
        .map(|_| ())
    }

    /// Every resource matching `query` (e.g. `identifier=sys|123&_count=50`), through all
    /// pages. Included resources (`search.mode = include`) are left out.
    pub async fn search(&self, kind: &str, query: &str) -> Result<Vec<Value>, FhirError> {
        let mut url = self.url(&format!("{kind}?{query}"));
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..self.config.max_pages {
            let page = self.send(Method::GET, &url, None, &[]).await?.resource;
            for e in page["entry"].as_array().into_iter().flatten() {
                if e["search"]["mode"] != "include" {
                    out.push(e["resource"].clone());
                }
            }
            let next = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str());
            match next {
                Some(n) if seen.insert(n.to_string()) => url = n.to_string(),
                _ => return Ok(out),
            }
        }
        Err(FhirError::Unavailable {
            method: Method::GET,
            url: redact(&url),
            attempts: 1,
            reason: format!("more than {} search pages", self.config.max_pages),
        })
    }

    /// Posts a transaction or batch Bundle to the base; the response Bundle.
    pub async fn bundle(&self, bundle: &Value) -> Result<Value, FhirError> {
        let base = self.config.base.trim_end_matches('/').to_string();
        Ok(self
            .send(Method::POST, &base, Some(bundle), &[])
            .await?
            .resource)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Versioned, FhirError> {
        let policy = &self.config.retry;
        let mut failed = 0u32;
        let mut reauthenticated = false;
        // When this call first met the breaker open or a failed probe: an outage is waited
        // out (using no attempt) for up to `max_outage`, then the call is given up.
        let mut outage: Option<Instant> = None;
        loop {
            let mut probe = false;
            if let Some(b) = &self.breaker {
                match b.try_acquire_probe() {
                    Ok(p) => probe = p,
                    Err(r) => {
                        let since = *outage.get_or_insert_with(Instant::now);
                        let left = policy.max_outage.saturating_sub(since.elapsed());
                        if left.is_zero() {
                            return Err(FhirError::Unavailable {
                                method,
                                url: redact(url),
                                attempts: failed,
                                reason: format!(
                                    "circuit breaker {:?}: the server stayed unavailable for {:?} (retry.max_outage)",
                                    r.state, policy.max_outage
                                ),
                            });
                        }
                        self.outage_started(b.name());
                        let wait = r
                            .retry_in
                            .unwrap_or(Duration::from_millis(200))
                            .clamp(Duration::from_millis(10), Duration::from_secs(5))
                            .min(left);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            let started = Instant::now();
            let attempt = self.attempt(&method, url, body, headers).await;
            let failure = match &attempt {
                Ok(Attempt::Transient(..)) => true,
                Ok(Attempt::Done(status, ..)) => status.is_server_error(),
                _ => false,
            };
            if let Some(b) = &self.breaker {
                b.record(failure, started.elapsed());
            }
            if !failure {
                self.outage_ended();
            }
            match attempt? {
                Attempt::Done(status, headers, json) => {
                    return self.finish(method, url, status, &headers, json);
                }
                Attempt::Unauthorized if !reauthenticated => {
                    // An expired or revoked token: fetch a new one once.
                    reauthenticated = true;
                    self.credentials.forget_token().await;
                }
                Attempt::Unauthorized => {
                    return Err(FhirError::Rejected {
                        method,
                        url: redact(url),
                        status: 401,
                        outcome: Outcome::default(),
                    });
                }
                Attempt::Transient(_, _)
                    if probe
                        && outage.get_or_insert_with(Instant::now).elapsed()
                            < policy.max_outage =>
                {
                    // The server is still down: the breaker opens again and the loop waits.
                    tracing::debug!(%method, "FHIR probe failed; waiting for the server");
                }
                Attempt::Transient(reason, retry_after) => {
                    failed += 1;
                    if !policy.retries_after(failed) {
                        return Err(FhirError::Unavailable {
                            method,
                            url: redact(url),
                            attempts: failed,
                            reason,
                        });
                    }
                    let wait = policy.next_delay(failed, jitter_random(), retry_after);
                    // Redacted: a conditional URL's query holds identifiers (PHI).
                    let url = redact(url);
                    tracing::debug!(%method, url, attempt = failed, ?wait, %reason, "FHIR call retried");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Attempt, FhirError> {
        let mut req = self
            .http
            .request(method.clone(), url)
            .header("Accept", "application/fhir+json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/fhir+json")
                .body(serde_json::to_vec(b).map_err(|e| FhirError::Config(e.to_string()))?);
        }
        req = match self.credentials.apply(req).await {
            Ok(r) => r,
            Err(AuthError::Unavailable { url, reason }) => {
                return Ok(Attempt::Transient(
                    format!("token request to {url}: {reason}"),
                    None,
                ));
            }
            Err(AuthError::Refused {
                url,
                status,
                code,
                description,
            }) => {
                return Err(FhirError::Rejected {
                    method: Method::POST,
                    url,
                    status,
                    outcome: Outcome(vec![Issue {
                        severity: "error".into(),
                        code,
                        location: None,
                        diagnostics: description,
                    }]),
                });
            }
        };
        let resp = match req.send().await {
            Ok(r) => r,
            // Timeouts and refused connections: the server may be back soon.
            Err(e) => return Ok(Attempt::Transient(transport_reason(&e), None)),
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED && self.credentials.refreshes() {
            return Ok(Attempt::Unauthorized);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let headers = resp.headers().clone();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Ok(Attempt::Transient(transport_reason(&e), None)),
        };
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        let transient = matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error();
        if transient {
            let why = format!("{status}: {}", Outcome::parse(&json));
            return Ok(Attempt::Transient(why, retry_after));
        }
        Ok(Attempt::Done(status, headers, json))
    }

    fn finish(
        &self,
        method: Method,
        url: &str,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        json: Value,
    ) -> Result<Versioned, FhirError> {
        let url = redact(url);
        match status.as_u16() {
            200..=299 => {
                let etag_version = headers
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string());
                let version_id = json["meta"]["versionId"]
                    .as_str()
                    .map(str::to_string)
                    .or(etag_version);
                Ok(Versioned {
                    resource: json,
                    version_id,
                    status: status.as_u16(),
                })
            }
            404 => Err(FhirError::NotFound { method, url }),
            410 => Err(FhirError::Gone { method, url }),
            409 | 412 => Err(FhirError::Conflict {
                method,
                url,
                status: status.as_u16(),
                outcome: Outcome::parse(&json),
            }),
            s => Err(FhirError::Rejected {
                method,
                url,
                status: s,
                outcome: Outcome::parse(&json),
            }),
        }
    }
}

/// A URL fit for errors and logs: a search or conditional update's query holds business
/// identifiers (an MRN is patient data), so only its parameter names are kept.
fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((path, query)) => {
            let names: Vec<&str> = query
                .split('&')
                .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
                .collect();
            format!("{path}?{}", names.join("&"))
        }
        None => url.to_string(),
    }
}

fn resource_type(resource: &Value) -> Result<&str, FhirError> {
    resource["resourceType"]
        .as_str()
        .ok_or_else(|| FhirError::Config("a resource needs its resourceType".into()))
}

fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        // Without the URL (it is reported next to the error already, and a search URL may
        // hold identifiers).
        let text = e.to_string();
        match e.url() {
            Some(u) => text.replace(u.as_str(), "<url>"),
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_in_errors_keep_parameter_names_only() {
        assert_eq!(
            redact("http://ehr/fhir/Patient?identifier=urn:oid:1|MRN123&_count=50"),
            "http://ehr/fhir/Patient?identifier&_count"
        );
        assert_eq!(
            redact("http://ehr/fhir/Patient/p1"),
            "http://ehr/fhir/Patient/p1"
        );
    }

    #[test]
    fn operation_outcomes_read_as_located_issues() {
        let o = Outcome::parse(&json!({
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "invalid", "expression": ["Patient.birthDate"],
                 "diagnostics": "not a date"},
                {"severity": "warning", "code": "business-rule", "details": {"text": "late"}}
            ]
        }));
        assert_eq!(
            o.to_string(),
            "error invalid at Patient.birthDate: not a date; warning business-rule: late"
        );
        assert_eq!(
            Outcome::parse(&json!({"resourceType": "Patient"})),
            Outcome::default()
        );
    }
}
