//! A webhook receiver for tests: a real HTTP server that checks each request's signature and
//! answers by script (fail a record's first N attempts with a status, or always), recording
//! every request it saw.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// How to answer requests whose body contains a marker.
#[derive(Clone, Debug)]
pub enum Rule {
    /// The first `n` attempts of each such record get `status`, then 200.
    FailFirst(u16, usize),
    Always(u16),
    /// Every matching request gets `status` until this instant (an outage), then 200.
    Until(Instant, u16),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub key: String,
    pub attempt: u32,
    pub body: serde_json::Value,
    pub status: u16,
    pub signature_ok: bool,
}

#[derive(Default)]
struct Inner {
    rules: Vec<(String, Rule)>,
    seen: Vec<Received>,
}

#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    secret: Vec<u8>,
}

impl Receiver {
    /// Starts on an ephemeral port; returns it and the hook URL.
    pub fn start(secret: &str, rules: Vec<(&str, Rule)>) -> (Receiver, String) {
        let r = Receiver {
            inner: Arc::new(Mutex::new(Inner {
                rules: rules.into_iter().map(|(m, r)| (m.to_string(), r)).collect(),
                seen: Vec::new(),
            })),
            secret: secret.as_bytes().to_vec(),
        };
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(r.clone());
        let url = format!("{}/hook", super::serve(app));
        (r, url)
    }

    pub fn seen(&self) -> Vec<Received> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Waits until `pred` holds for what was received (or the timeout passes).
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let t = Instant::now();
        loop {
            let seen = self.seen();
            if pred(&seen) || t.elapsed() > timeout {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let now = chrono::Utc::now().timestamp();
    let signature_ok = plexus::net::http::verify(
        &r.secret,
        &h("x-plexus-signature"),
        &body,
        now,
        Duration::from_secs(300),
    )
    .is_ok();
    let key = h("idempotency-key");
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut inner = r.inner.lock().unwrap();
    let earlier = inner.seen.iter().filter(|s| s.key == key).count();
    let status = match inner.rules.iter().find(|(m, _)| text.contains(m.as_str())) {
        Some((_, Rule::FailFirst(s, n))) if earlier < *n => *s,
        Some((_, Rule::Always(s))) => *s,
        Some((_, Rule::Until(t, s))) if Instant::now() < *t => *s,
        _ if !signature_ok => 401,
        _ => 200,
    };
    inner.seen.push(Received {
        at: Instant::now(),
        key,
        attempt: h("x-plexus-attempt").parse().unwrap_or(0),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        status,
        signature_ok,
    });
    StatusCode::from_u16(status).unwrap()
}
