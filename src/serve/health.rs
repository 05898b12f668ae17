//! The health monitor (the seed's `IntegrationHealthMonitor`): every running integration's
//! downstream systems are checked at its `healthCheckInterval` — connectivity (a TCP
//! connection to each sink's endpoint), authentication (an OAuth2 token fetched with the
//! integration's credentials), a basic operation (a FHIR server's `GET [base]/metadata`).
//!
//! A check's result is kept as the integration's `lastHealthCheck`; it is also an event on
//! the integration's outcome stream (record `health_check`, so windows over `outcomes` and the
//! breakers they drive see it); an unhealthy result makes the integration's status `error`
//! with the failing check as the reason and raises an `integration.health` alert (once per
//! change to unhealthy). Results name sinks, hosts and ports, never record content.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::connectors::registry::SinkPlan;
use crate::metrics::outcome::{CallStatus, OutcomeRow, OutcomeTap};
use crate::net::auth::{Auth, Credentials};
use crate::net::fhir_client::{ClientConfig, FhirClient};
use crate::plan::Plan;

/// How long one step of a check may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// What to check for one sink.
#[derive(Clone)]
pub enum Target {
    /// A FHIR server: connect, authenticate, `GET /metadata`.
    Fhir { sink: String, config: ClientConfig },
    /// An HTTP endpoint: connect, authenticate (OAuth2 only).
    Http {
        sink: String,
        url: String,
        auth: Auth,
    },
    /// An MLLP peer (`host:port`): connect; with a test message, a round trip (an AA or CA
    /// acknowledgement).
    Mllp {
        sink: String,
        to: String,
        message: Option<String>,
    },
    /// The Kafka cluster (`kafka:`): a connection to one of its bootstrap brokers.
    Kafka { brokers: Vec<String> },
}

impl Target {
    fn sink(&self) -> &str {
        match self {
            Target::Fhir { sink, .. } | Target::Http { sink, .. } | Target::Mllp { sink, .. } => {
                sink
            }
            Target::Kafka { .. } => "kafka",
        }
    }
}

/// How an integration is checked: the seed's `monitoring.healthCheckInterval`, and
/// `monitoring.healthCheckMessage` (an HL7 message sent to MLLP peers, when given).
#[derive(Debug, Clone)]
pub struct Settings {
    pub every: Duration,
    pub mllp_message: Option<String>,
}

impl Settings {
    pub fn of(monitoring: Option<&serde_json::Value>, default_every: Duration) -> Settings {
        Settings {
            every: interval(monitoring, default_every),
            mllp_message: monitoring
                .and_then(|m| m.get("healthCheckMessage"))
                .and_then(|v| v.as_str())
                // Segments end in CR on the wire, whatever the JSON carried.
                .map(|t| t.replace("\r\n", "\r").replace('\n', "\r")),
        }
    }
}

/// The downstream systems of `plan`'s sinks, and its Kafka cluster (files have none).
pub fn targets(plan: &Plan, settings: &Settings) -> Vec<Target> {
    let mut out = Vec::new();
    let brokers = std::env::var("PLEXUS_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
        .or_else(|| plan.kafka.as_ref().and_then(|k| k.brokers.clone()));
    if let Some(b) = brokers {
        out.push(Target::Kafka {
            brokers: b.split(',').map(|s| s.trim().to_string()).collect(),
        });
    }
    for s in &plan.sinks {
        match &s.connector {
            SinkPlan::Fhir(f) => {
                if let Ok(config) = f.http.fhir_client_config() {
                    out.push(Target::Fhir {
                        sink: s.name.clone(),
                        config,
                    });
                }
            }
            SinkPlan::Http(h) if h.fhir => {
                if let Ok(config) = h.fhir_client_config() {
                    out.push(Target::Fhir {
                        sink: s.name.clone(),
                        config,
                    });
                }
            }
            SinkPlan::Http(h) => out.push(Target::Http {
                sink: s.name.clone(),
                url: h.url.clone(),
                auth: h.auth.resolve().unwrap_or_default(),
            }),
            SinkPlan::Mllp(m) => out.push(Target::Mllp {
                sink: s.name.clone(),
                to: m.to.clone(),
                message: settings.mllp_message.clone(),
            }),
            SinkPlan::File(_) | SinkPlan::Kafka(_) => {}
        }
    }
    out
}

/// One step of a check.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    pub sink: String,
    /// connect, authenticate or operation.
    pub check: String,
    /// `host:port`, or the operation (`GET /metadata`).
    pub target: String,
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One round of checks of an integration.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// When it ran (ms since the epoch): the seed's `lastHealthCheck`.
    pub at_ms: i64,
    pub healthy: bool,
    pub checks: Vec<CheckResult>,
}

impl HealthReport {
    /// The first failure, as a status reason.
    pub fn reason(&self) -> Option<String> {
        self.checks.iter().find(|c| !c.ok).map(|c| {
            format!(
                "health check: sink {}: {} {}: {}",
                c.sink,
                c.check,
                c.target,
                c.error.as_deref().unwrap_or("failed")
            )
        })
    }
}

/// `host:port` of a URL (default ports by scheme).
fn authority(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, String>>,
) -> (f64, Result<T, String>) {
    let t = Instant::now();
    let r = match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {STEP_TIMEOUT:?}")),
    };
    (t.elapsed().as_secs_f64() * 1000.0, r)
}

fn result(
    sink: &str,
    check: &str,
    target: &str,
    (ms, r): (f64, Result<(), String>),
) -> CheckResult {
    CheckResult {
        sink: sink.to_string(),
        check: check.to_string(),
        target: target.to_string(),
        ok: r.is_ok(),
        latency_ms: (ms * 10.0).round() / 10.0,
        error: r.err(),
    }
}

async fn connect(sink: &str, addr: &str) -> CheckResult {
    let r = timed(async {
        tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| e.kind().to_string())
    })
    .await;
    result(sink, "connect", addr, r)
}

/// Fetches a token when the credentials are OAuth2 (other kinds have nothing to fetch).
async fn authenticate(sink: &str, auth: &Auth, url: &str) -> Option<CheckResult> {
    let Auth::ClientCredentials { token_url, .. } = auth else {
        return None;
    };
    let http = reqwest::Client::builder()
        .timeout(STEP_TIMEOUT)
        .build()
        .ok()?;
    let creds = Credentials::new(auth.clone(), http.clone());
    let r = timed(async {
        creds
            .apply(http.get(url))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    Some(result(
        sink,
        "authenticate",
        &authority(token_url).unwrap_or_default(),
        r,
    ))
}

/// Checks one target, step by step; a failed step ends it.
async fn check(t: &Target) -> Vec<CheckResult> {
    let sink = t.sink();
    if let Target::Kafka { brokers } = t {
        // One broker answering is enough: the client finds the rest from it.
        let mut last = None;
        for b in brokers {
            let r = connect(sink, b).await;
            if r.ok {
                return vec![r];
            }
            last = Some(r);
        }
        return last.into_iter().collect();
    }
    let (addr, auth, url) = match t {
        Target::Fhir { config, .. } => (
            authority(&config.base),
            Some(&config.auth),
            config.base.as_str(),
        ),
        Target::Http { url, auth, .. } => (authority(url), Some(auth), url.as_str()),
        Target::Mllp { to, .. } => (Some(to.clone()), None, ""),
        Target::Kafka { .. } => unreachable!("checked above"),
    };
    let Some(addr) = addr else {
        return vec![result(
            sink,
            "connect",
            url,
            (0.0, Err("no host in the URL".into())),
        )];
    };
    let mut out = vec![connect(sink, &addr).await];
    if !out[0].ok {
        return out;
    }
    // Only OAuth2 has something to fetch (`authenticate` says None otherwise).
    if let Some(a) = auth
        && let Some(r) = authenticate(sink, a, url).await
    {
        let failed = !r.ok;
        out.push(r);
        if failed {
            return out;
        }
    }
    if let Target::Mllp {
        to,
        message: Some(m),
        ..
    } = t
    {
        let r = timed(round_trip(to, m)).await;
        out.push(result(sink, "operation", "MLLP round trip", r));
    }
    if let Target::Fhir { config, .. } = t {
        let mut c = config.clone();
        c.timeout = STEP_TIMEOUT;
        // One attempt: a health check reports, it does not wait an outage out.
        c.retry.max_attempts = 1;
        let r = timed(async {
            let client = FhirClient::new(c).map_err(|e| e.to_string())?;
            client
                .capabilities()
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
        out.push(result(sink, "operation", "GET /metadata", r));
    }
    out
}

/// Sends `message` framed to `to` and reads the acknowledgement: AA or CA passes; anything
/// else names its MSA-1 (never the message's content).
async fn round_trip(to: &str, message: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| e.kind().to_string())?;
    s.write_all(&crate::formats::mllp::frame(message.as_bytes()))
        .await
        .map_err(|e| e.kind().to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got
        .windows(2)
        .any(|w| w == [crate::formats::mllp::END, b'\r'])
    {
        let n = s.read(&mut buf).await.map_err(|e| e.kind().to_string())?;
        if n == 0 {
            return Err("the peer closed the connection without an acknowledgement".into());
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 1 << 20 {
            return Err("no acknowledgement in the first MiB".into());
        }
    }
    let text = String::from_utf8_lossy(&got);
    let code = text
        .split('\r')
        .find(|seg| seg.starts_with("MSA"))
        .and_then(|msa| msa.get(4..6))
        .unwrap_or("");
    match code {
        "AA" | "CA" => Ok(()),
        "" => Err("the answer has no MSA segment".into()),
        other => Err(format!("acknowledged {other}")),
    }
}

/// Runs every target's checks; reports each sink's outcome on `tap`.
pub async fn run(targets: &[Target], tap: &OutcomeTap) -> HealthReport {
    let at_ms = crate::metrics::outcome::now_ms();
    let mut checks = Vec::new();
    for t in targets {
        let results = check(t).await;
        let ok = results.iter().all(|r| r.ok);
        tap.emit(OutcomeRow {
            sink: Arc::from(t.sink()),
            record: "health_check".to_string(),
            attempt: 1,
            status: if ok {
                CallStatus::Delivered
            } else {
                CallStatus::Transient
            },
            http_status: None,
            latency_ms: Some(results.iter().map(|r| r.latency_ms).sum()),
            at_ms,
        });
        checks.extend(results);
    }
    HealthReport {
        at_ms,
        healthy: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// The interval from the seed's `monitoring.healthCheckInterval`: milliseconds (as the seed
/// has it) or a duration (`30s`).
pub fn interval(monitoring: Option<&serde_json::Value>, default: Duration) -> Duration {
    let v = monitoring.and_then(|m| m.get("healthCheckInterval"));
    let d = match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(Duration::from_millis),
        Some(serde_json::Value::String(s)) => crate::config::parse_duration(s).ok(),
        _ => None,
    };
    // Not more often than every 200 ms, whatever the configuration says.
    d.unwrap_or(default).max(Duration::from_millis(200))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn intervals_read_the_seeds_milliseconds_and_durations() {
        let d = Duration::from_secs(30);
        assert_eq!(interval(None, d), d);
        let m = json!({"healthCheckInterval": 60000});
        assert_eq!(interval(Some(&m), d), Duration::from_secs(60));
        let m = json!({"healthCheckInterval": "5s"});
        assert_eq!(interval(Some(&m), d), Duration::from_secs(5));
        let m = json!({"healthCheckInterval": 1});
        assert_eq!(interval(Some(&m), d), Duration::from_millis(200));
        let m = json!({"healthCheckInterval": "soon"});
        assert_eq!(interval(Some(&m), d), d);
    }

    #[test]
    fn authorities_default_ports_by_scheme() {
        assert_eq!(
            authority("https://ehr.example.org/fhir").as_deref(),
            Some("ehr.example.org:443")
        );
        assert_eq!(
            authority("http://127.0.0.1:8089/fhir").as_deref(),
            Some("127.0.0.1:8089")
        );
        assert_eq!(authority("not a url"), None);
    }

    #[tokio::test]
    async fn a_closed_port_fails_at_connect_and_says_so() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let (tap, mut rx) = OutcomeTap::channel();
        let t = Target::Mllp {
            sink: "lab".into(),
            to: addr.clone(),
            message: Some("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|T|2.5\r".into()),
        };
        let r = run(&[t], &tap).await;
        assert!(!r.healthy);
        assert_eq!(r.checks.len(), 1, "a failed connect ends the check");
        assert_eq!(r.checks[0].target, addr);
        assert!(
            r.reason()
                .unwrap()
                .starts_with("health check: sink lab: connect")
        );
        let row = rx.try_recv().unwrap();
        assert_eq!(
            (row.record.as_str(), row.status),
            ("health_check", CallStatus::Transient)
        );
    }
}
