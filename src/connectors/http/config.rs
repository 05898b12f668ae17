//! The HTTP connector's configuration: `type: http` sinks (webhooks, REST endpoints), and
//! the settings every HTTP-speaking sink shares (retry, breaker, auth, TLS), which the
//! `fhir` sink reuses.

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::{PlanCx, Spanned};
use crate::net::secret::SecretRef;

/// `{name: hook, type: http, url: env:HOOK_URL, secret: env:HOOK_SECRET}`: one signed JSON
/// request per row.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// The endpoint (or `env:NAME` holding it).
    pub url: Spanned<String>,
    /// `POST` (default), `PUT` or `PATCH`.
    #[schemars(extend("enum" = ["POST", "PUT", "PATCH", "post", "put", "patch"]))]
    pub method: Option<Spanned<String>>,
    /// Extra request headers; a value may be `env:NAME` or `file:/path` (API keys).
    #[serde(default)]
    pub headers: IndexMap<String, Spanned<String>>,
    /// HMAC-SHA256 signing secret, `env:NAME` or `file:/path` only.
    pub secret: Option<Spanned<String>>,
    /// Per-request timeout (default 30s).
    pub timeout: Option<Spanned<String>>,
    /// Requests in flight at once (default 8).
    pub concurrency: Option<Spanned<usize>>,
    /// Retries of transient delivery failures (the seed's `connection.retryPolicy`).
    pub retry: Option<RetrySpec>,
    /// A circuit breaker gating the calls (see `resilience::breaker`).
    pub breaker: Option<BreakerSpec>,
    /// How to authenticate to the endpoint.
    pub auth: Option<AuthSpec>,
    /// An extra trusted CA and a client certificate (mutual TLS).
    pub tls: Option<TlsSpec>,
    /// Only `json` (the default).
    #[schemars(extend("enum" = ["json", "ndjson"]))]
    pub format: Option<Spanned<String>>,
    /// Send the provenance columns (`_raw` is always left out).
    #[serde(default)]
    pub provenance: bool,
}

impl HttpSinkConfig {
    pub fn plan(&self, cx: &mut PlanCx<'_>) -> HttpSinkPlan {
        if let Some(f) = &self.format
            && !matches!(f.as_str(), "json" | "ndjson")
        {
            cx.err(f, "http sinks send json");
        }
        let mut plan = plan_http(
            cx,
            HttpSettings {
                url: &self.url,
                method: self.method.as_ref(),
                headers: &self.headers,
                secret: self.secret.as_ref(),
                timeout: &self.timeout,
                concurrency: self.concurrency.as_ref(),
                retry: self.retry.as_ref(),
                breaker: self.breaker.as_ref(),
                auth: self.auth.as_ref(),
                tls: self.tls.as_ref(),
            },
        );
        plan.provenance = self.provenance;
        plan
    }
}

/// `breaker:` on a sink. Rates are percentages.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// The last N calls (`100`) or the calls of a span (`60s`).
    pub window: Option<Spanned<String>>,
    pub minimum_calls: Option<Spanned<usize>>,
    pub failure_rate: Option<Spanned<f64>>,
    pub slow_call_rate: Option<Spanned<f64>>,
    pub slow_call: Option<Spanned<String>>,
    /// Opens on this many failures in the window, whatever the rate.
    pub max_failures: Option<Spanned<usize>>,
    pub wait: Option<Spanned<String>>,
    pub wait_multiplier: Option<Spanned<f64>>,
    pub max_wait: Option<Spanned<String>>,
    pub half_open_calls: Option<Spanned<usize>>,
    pub half_open_max_wait: Option<Spanned<String>>,
}

/// `retry:` on a sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (default 3).
    pub max_attempts: Option<Spanned<u32>>,
    /// `linear` or `exponential` (default).
    pub backoff: Option<Spanned<String>>,
    /// The first wait (default 1s).
    pub base: Option<Spanned<String>>,
    /// The longest wait (default 5m).
    pub max_delay: Option<Spanned<String>>,
    /// Up to this fraction of each wait added at random (default 0.2).
    pub jitter: Option<Spanned<f64>>,
    /// Retrying in place: how long records wait for an open circuit breaker (an outage)
    /// before they are dead-lettered as unavailable (default 10m). Waiting uses no attempt.
    pub max_outage: Option<Spanned<String>>,
    /// Kafka: park failed records on `<topic>.<attempt>` and go on (non-blocking); without
    /// it the sink waits and retries in place.
    pub topic: Option<Spanned<String>>,
}

/// `auth:` on an http or fhir sink. Secrets (`password`, `token`, `key`, `client_secret`)
/// are `env:NAME` or `file:/path`, never written in the pipeline.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// `basic`, `bearer`, `api_key` or `oauth2` (client credentials).
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["basic", "bearer", "api_key", "oauth2"]))]
    pub kind: Spanned<String>,
    /// basic: the user (literal or `env:`).
    pub user: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    /// bearer: a long-lived token.
    pub token: Option<Spanned<String>>,
    /// api_key: the header (default `X-API-Key`) and its value.
    pub header: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// oauth2: the token endpoint, client id (literal or `env:`), secret and scope.
    pub token_url: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<String>>,
    pub scope: Option<Spanned<String>>,
    /// oauth2 (the seed's `refreshConfig.refreshUrl`): where a token that came with a
    /// `refresh_token` is refreshed (default: `token_url`).
    pub refresh_url: Option<Spanned<String>>,
    /// oauth2 (`refreshConfig.refreshInterval`): refresh at least this often (e.g. `15m`),
    /// even when the token's `expires_in` is longer.
    pub refresh_every: Option<Spanned<String>>,
}

/// `tls:` on an http or fhir sink: PEM files.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// CA certificates to trust besides the system's.
    pub ca: Option<Spanned<String>>,
    /// The client certificate (chain) and its PKCS#8 private key, for mutual TLS.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

/// A `type: http` sink.
#[derive(Clone, Debug)]
pub struct HttpSinkPlan {
    pub url: String,
    pub method: String,
    /// Header values resolved at start (secrets read then, never stored in the plan's text).
    pub headers: Vec<(String, HeaderValue)>,
    pub secret: Option<SecretRef>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub retry: crate::resilience::retry::RetryPolicy,
    /// Kafka retry topics' base name (non-blocking retries).
    pub retry_topic: Option<String>,
    pub breaker: Option<crate::resilience::breaker::BreakerConfig>,
    /// `type: fhir`: `url` is the FHIR base; rows of a `fhir` stage are PUT to their
    /// `request_url` (conditional updates) or, as Bundles, POSTed to the base.
    pub fhir: bool,
    pub auth: AuthPlan,
    pub tls: TlsPlan,
    /// Send the provenance columns too (`_raw` never).
    pub provenance: bool,
}

impl HttpSinkPlan {
    /// The endpoint (or FHIR base), read from the environment when given as `env:NAME`.
    pub fn resolved_url(&self) -> Result<String, String> {
        match self.url.strip_prefix("env:") {
            Some(var) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} (url) is not set")),
            None => Ok(self.url.clone()),
        }
    }

    /// The FHIR client settings of a `fhir` sink: base, timeout, retry policy, credentials
    /// and TLS (secrets read now).
    pub fn fhir_client_config(&self) -> Result<crate::net::fhir_client::ClientConfig, String> {
        let mut c = crate::net::fhir_client::ClientConfig::new(self.resolved_url()?);
        c.timeout = self.timeout;
        c.retry = self.retry.clone();
        c.auth = self.auth.resolve()?;
        c.tls = self.tls.resolve()?;
        Ok(c)
    }
}

/// `auth:` of a sink, secrets still references (read at start).
#[derive(Debug, Clone, Default)]
pub enum AuthPlan {
    #[default]
    None,
    Basic {
        user: HeaderValue,
        password: SecretRef,
    },
    Bearer(SecretRef),
    ApiKey {
        header: String,
        key: SecretRef,
    },
    OAuth2 {
        token_url: String,
        client_id: HeaderValue,
        client_secret: SecretRef,
        scope: Option<String>,
        refresh_url: Option<String>,
        refresh_every: Option<Duration>,
    },
}

impl HeaderValue {
    /// `env:NAME` and `file:/path` are secrets read at start; anything else is literal.
    pub fn parse(v: &str) -> HeaderValue {
        match SecretRef::parse(v) {
            Ok(r) => HeaderValue::Secret(r),
            Err(_) => HeaderValue::Literal(v.to_string()),
        }
    }

    pub fn read(&self) -> Result<String, String> {
        match self {
            HeaderValue::Literal(t) => Ok(t.clone()),
            HeaderValue::Secret(r) => r.read(),
        }
    }
}

impl AuthPlan {
    /// The credentials, secrets read now.
    pub fn resolve(&self) -> Result<crate::net::auth::Auth, String> {
        use crate::net::auth::Auth;
        Ok(match self {
            AuthPlan::None => Auth::None,
            AuthPlan::Basic { user, password } => Auth::Basic {
                user: user.read()?,
                password: password.read()?,
            },
            AuthPlan::Bearer(t) => Auth::Bearer(t.read()?),
            AuthPlan::ApiKey { header, key } => Auth::ApiKey {
                header: header.clone(),
                value: key.read()?,
            },
            AuthPlan::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                refresh_url,
                refresh_every,
            } => Auth::ClientCredentials {
                token_url: token_url.clone(),
                client_id: client_id.read()?,
                client_secret: client_secret.read()?,
                scope: scope.clone(),
                refresh_url: refresh_url.clone(),
                refresh_every: *refresh_every,
            },
        })
    }
}

/// `tls:` of a sink: PEM files, read at start.
#[derive(Debug, Clone, Default)]
pub struct TlsPlan {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsPlan {
    pub fn resolve(&self) -> Result<crate::net::auth::Tls, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let identity_pem = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let mut pem = read(c)?;
                pem.push(b'\n');
                pem.extend(read(k)?);
                Some(pem)
            }
            _ => None,
        };
        Ok(crate::net::auth::Tls {
            ca_pem: self.ca.as_ref().map(read).transpose()?,
            identity_pem,
        })
    }
}

/// A header value: literal, or a secret read at start.
#[derive(Clone, Debug)]
pub enum HeaderValue {
    Literal(String),
    Secret(SecretRef),
}

/// The settings an `http` and a `fhir` sink share, checked once for both.
pub(crate) struct HttpSettings<'a> {
    pub url: &'a Spanned<String>,
    pub method: Option<&'a Spanned<String>>,
    pub headers: &'a IndexMap<String, Spanned<String>>,
    pub secret: Option<&'a Spanned<String>>,
    pub timeout: &'a Option<Spanned<String>>,
    pub concurrency: Option<&'a Spanned<usize>>,
    pub retry: Option<&'a RetrySpec>,
    pub breaker: Option<&'a BreakerSpec>,
    pub auth: Option<&'a AuthSpec>,
    pub tls: Option<&'a TlsSpec>,
}

pub(crate) fn plan_http(cx: &mut PlanCx<'_>, s: HttpSettings<'_>) -> HttpSinkPlan {
    let url = s.url;
    let url_text = match url.strip_prefix("env:") {
        Some(name) => std::env::var(name).unwrap_or_default(),
        None => url.to_string(),
    };
    if let Err(e) = reqwest::Url::parse(&url_text) {
        cx.err(url, format!("not a URL ({e})"));
    }
    let method = s
        .method
        .map(|m| m.to_ascii_uppercase())
        .unwrap_or_else(|| "POST".into());
    if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        cx.err(s.method.expect("set"), "method is POST, PUT or PATCH");
    }
    let headers: Vec<(String, HeaderValue)> = s
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), HeaderValue::parse(v)))
        .collect();
    let secret = match s.secret {
        Some(v) => match SecretRef::parse(v) {
            Ok(r) => Some(r),
            Err(e) => {
                cx.err(v, e);
                None
            }
        },
        None => None,
    };
    let timeout = cx.duration_or(s.timeout, Duration::from_secs(30));
    let (retry, retry_topic) = plan_retry(cx, s.retry);
    let breaker = s.breaker.map(|b| plan_breaker(cx, b));
    let (auth, tls) = plan_auth(cx, s.auth, s.tls);
    let concurrency = s.concurrency.map(|c| **c).unwrap_or(8);
    if let Some(c) = s.concurrency
        && (**c == 0 || **c > 1024)
    {
        cx.err(c, "concurrency is between 1 and 1024");
    }
    HttpSinkPlan {
        url: url.to_string(),
        method,
        headers,
        secret,
        timeout,
        concurrency: concurrency.clamp(1, 1024),
        retry,
        retry_topic,
        breaker,
        fhir: false,
        auth,
        tls,
        provenance: false,
    }
}

/// A `retry:` block (shared by the sinks that call a service): the policy, and the Kafka
/// retry topics' base name when it asks for them.
pub(crate) fn plan_retry(
    cx: &mut PlanCx<'_>,
    spec: Option<&RetrySpec>,
) -> (crate::resilience::retry::RetryPolicy, Option<String>) {
    use crate::resilience::retry::{Backoff, RetryPolicy};
    let mut retry = RetryPolicy {
        jitter: 0.2,
        ..RetryPolicy::default()
    };
    let mut retry_topic = None;
    if let Some(r) = spec {
        retry.base = cx.duration_or(&r.base, retry.base);
        retry.max_delay = cx.duration_or(&r.max_delay, retry.max_delay);
        retry.max_outage = cx.duration_or(&r.max_outage, retry.max_outage);
        if let Some(n) = &r.max_attempts {
            if **n == 0 || **n > 20 {
                cx.err(n, "max_attempts is between 1 and 20");
            }
            retry.max_attempts = (**n).clamp(1, 20);
        }
        if let Some(b) = &r.backoff {
            retry.backoff = match b.as_str() {
                "linear" => Backoff::Linear,
                "exponential" => Backoff::Exponential,
                other => {
                    cx.err(
                        b,
                        format!("backoff is linear or exponential, not {other:?}"),
                    );
                    Backoff::Exponential
                }
            };
        }
        if let Some(j) = &r.jitter {
            if !(0.0..=1.0).contains(&**j) {
                cx.err(j, "jitter is a fraction between 0 and 1");
            }
            retry.jitter = j.clamp(0.0, 1.0);
        }
        if let Some(t) = &r.topic {
            if !cx.has_kafka {
                cx.err(t, "retry topics need a `kafka:` connection block");
            }
            // The worker dead-letters exhausted records itself: it needs the DLQ topic.
            if !cx.has_dlq_topic {
                cx.err(
                    t,
                    "retry topics need a dead-letter topic (`dlq: {topic: ...}`)",
                );
            }
            retry_topic = Some(t.to_string());
        }
    }
    (retry, retry_topic)
}

pub(crate) fn plan_breaker(
    cx: &mut PlanCx<'_>,
    b: &BreakerSpec,
) -> crate::resilience::breaker::BreakerConfig {
    use crate::resilience::breaker::{BreakerConfig, SlidingWindow};
    let mut c = BreakerConfig::default();
    c.slow_call_duration = cx.duration_or(&b.slow_call, c.slow_call_duration);
    c.wait_in_open = cx.duration_or(&b.wait, c.wait_in_open);
    c.max_wait_in_open = cx.duration_or(&b.max_wait, c.max_wait_in_open.max(c.wait_in_open));
    c.max_wait_in_half_open = cx.duration_or(&b.half_open_max_wait, c.max_wait_in_half_open);
    if let Some(w) = &b.window {
        match w.parse::<usize>() {
            Ok(n) if n > 0 => c.window = SlidingWindow::Count(n),
            _ => match crate::config::parse_duration(w) {
                Ok(d) if d >= Duration::from_secs(1) => c.window = SlidingWindow::Time(d),
                _ => cx.err(
                    w,
                    "window is a number of calls (100) or a span of at least 1s (60s)",
                ),
            },
        }
    }
    // A count window smaller than the minimum could never trip.
    let window_calls = match c.window {
        SlidingWindow::Count(n) => n,
        SlidingWindow::Time(_) => usize::MAX,
    };
    c.minimum_calls = b
        .minimum_calls
        .as_ref()
        .map(|m| **m)
        .unwrap_or(c.minimum_calls.min(window_calls));
    if let Some(m) = &b.minimum_calls
        && (**m == 0 || **m > window_calls)
    {
        cx.err(m, "minimum_calls is between 1 and the window's size");
    }
    for (v, slot) in [
        (&b.failure_rate, &mut c.failure_rate_threshold),
        (&b.slow_call_rate, &mut c.slow_call_rate_threshold),
    ] {
        if let Some(r) = v {
            if !(**r > 0.0 && **r <= 100.0) {
                cx.err(r, "a rate threshold is a percentage in (0, 100]");
            }
            *slot = **r;
        }
    }
    if let Some(m) = &b.wait_multiplier {
        if **m < 1.0 {
            cx.err(m, "wait_multiplier is at least 1");
        }
        c.wait_multiplier = m.max(1.0);
    }
    if let Some(n) = &b.half_open_calls {
        if **n == 0 {
            cx.err(n, "half_open_calls is at least 1");
        }
        c.permitted_in_half_open = (**n).max(1);
    }
    c.max_failures = b.max_failures.as_ref().map(|m| **m);
    c
}

/// `auth:` and `tls:` of an http or fhir sink.
fn plan_auth(
    cx: &mut PlanCx<'_>,
    auth: Option<&AuthSpec>,
    tls: Option<&TlsSpec>,
) -> (AuthPlan, TlsPlan) {
    let tls = match tls {
        Some(t) => {
            if t.cert.is_some() != t.key.is_some() {
                let at = t.cert.as_ref().or(t.key.as_ref()).expect("one is set");
                cx.err(at, "mutual TLS needs both `cert` and `key`");
            }
            TlsPlan {
                ca: t.ca.as_ref().map(|p| cx.resolve(p)),
                cert: t.cert.as_ref().map(|p| cx.resolve(p)),
                key: t.key.as_ref().map(|p| cx.resolve(p)),
            }
        }
        None => TlsPlan::default(),
    };
    let Some(a) = auth else {
        return (AuthPlan::None, tls);
    };
    let fields = [
        ("user", &a.user),
        ("password", &a.password),
        ("token", &a.token),
        ("header", &a.header),
        ("key", &a.key),
        ("token_url", &a.token_url),
        ("client_id", &a.client_id),
        ("client_secret", &a.client_secret),
        ("scope", &a.scope),
        ("refresh_url", &a.refresh_url),
        ("refresh_every", &a.refresh_every),
    ];
    let (needed, allowed): (&[&str], &[&str]) = match a.kind.as_str() {
        "basic" => (&["user", "password"], &[]),
        "bearer" => (&["token"], &[]),
        "api_key" => (&["key"], &["header"]),
        "oauth2" => (
            &["token_url", "client_id", "client_secret"],
            &["scope", "refresh_url", "refresh_every"],
        ),
        other => {
            cx.err(
                &a.kind,
                format!("auth type is basic, bearer, api_key or oauth2, not {other:?}"),
            );
            return (AuthPlan::None, tls);
        }
    };
    let mut ok = true;
    for (key, v) in fields {
        match v {
            Some(v) if !needed.contains(&key) && !allowed.contains(&key) => {
                cx.err(
                    v,
                    format!("`{key}` is not a setting of {} auth", a.kind.as_str()),
                );
                ok = false;
            }
            None if needed.contains(&key) => {
                cx.err(&a.kind, format!("{} auth needs `{key}`", a.kind.as_str()));
                ok = false;
            }
            _ => {}
        }
    }
    if !ok {
        return (AuthPlan::None, tls);
    }
    // Checked present above.
    let set = |v: &Option<Spanned<String>>| v.as_ref().expect("checked").clone();
    // Secrets come from the environment or a file, never from the pipeline's text.
    let secret = |cx: &mut PlanCx<'_>, v: &Option<Spanned<String>>| {
        let v = set(v);
        SecretRef::parse(&v).map_err(|e| cx.err(&v, e)).ok()
    };
    let plain = |v: &Option<Spanned<String>>| HeaderValue::parse(&set(v));
    let auth = match a.kind.as_str() {
        "basic" => secret(cx, &a.password).map(|password| AuthPlan::Basic {
            user: plain(&a.user),
            password,
        }),
        "bearer" => secret(cx, &a.token).map(AuthPlan::Bearer),
        "api_key" => secret(cx, &a.key).map(|key| AuthPlan::ApiKey {
            header: a
                .header
                .as_ref()
                .map_or("X-API-Key".to_string(), |h| h.to_string()),
            key,
        }),
        _ => {
            let token_url = set(&a.token_url);
            for u in std::iter::once(&token_url).chain(a.refresh_url.as_ref()) {
                if let Err(e) = reqwest::Url::parse(u) {
                    cx.err(u, format!("not a URL ({e})"));
                }
            }
            let refresh_every = a.refresh_every.as_ref().and_then(|d| {
                crate::config::parse_duration(d)
                    .map_err(|e| cx.err(d, e))
                    .ok()
            });
            secret(cx, &a.client_secret).map(|client_secret| AuthPlan::OAuth2 {
                token_url: token_url.to_string(),
                client_id: plain(&a.client_id),
                client_secret,
                scope: a.scope.as_ref().map(|s| s.to_string()),
                refresh_url: a.refresh_url.as_ref().map(|s| s.to_string()),
                refresh_every,
            })
        }
    };
    (auth.unwrap_or_default(), tls)
}
