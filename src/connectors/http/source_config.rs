//! `source: {type: http, ...}`: HTTP/webhook ingest. How it is configured, checked and what
//! it plans to (the server is `source.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::{PlanCx, Spanned};
use crate::connectors::spool::SpoolOptions;
use crate::connectors::state_db::StateLocation;
use crate::formats::framing::SourceFormat;
use crate::net::secret::SecretRef;

/// `source: {type: http, listen: "127.0.0.1:8088", path: /events, format: json}`: partners
/// POST records; each request is verified, made durable in a local spool and answered 202,
/// then processed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// `host:port` to listen on.
    pub listen: Spanned<String>,
    /// The path requests are POSTed to (default `/`).
    pub path: Option<Spanned<String>>,
    /// `json` (one object per request, or an array of them; typed by the parse stage's
    /// schema), `fhir` (a FHIR resource or a Bundle: one record per resource) or `hl7` (HL7
    /// v2 text: one message, or a batch).
    #[schemars(extend("enum" = ["json", "fhir", "hl7"]))]
    pub format: Spanned<String>,
    /// The spool directory (relative to the pipeline file); default `<pipeline>.spool`.
    pub spool: Option<Spanned<String>>,
    /// Largest request body in bytes (default 10 MiB); larger ones are answered 413.
    pub max_body_bytes: Option<Spanned<usize>>,
    /// Unprocessed bytes the spool may hold (default 1 GiB); past it requests get 429.
    pub spool_max_bytes: Option<Spanned<u64>>,
    /// How long the oldest unprocessed record may wait (default `1h`); past it, 429.
    pub spool_max_age: Option<Spanned<String>>,
    /// Who may post. Without it anyone who reaches `listen` may.
    pub auth: Option<IngestAuthSpec>,
    /// Requests per second each sender may make (a token bucket per sender: its API key or
    /// token name, else its address); over it, 429 with `Retry-After`.
    pub rate_limit: Option<RateLimitSpec>,
    /// Answer a repeated request with the first answer instead of processing it again.
    pub idempotency: Option<IdempotencySpec>,
    /// HTTPS: the server's certificate and key (PEM), and optionally the CA whose client
    /// certificates it requires (mutual TLS).
    pub tls: Option<crate::connectors::mllp::config::ListenerTlsSpec>,
    /// Hand each record to this Kafka topic instead of the spool: 202 once every in-sync
    /// replica has it; the flow reads it back through its consumer group.
    pub handoff: Option<crate::connectors::handoff::HandoffSpec>,
}

/// `auth:` of an HTTP source: any method listed may admit a request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestAuthSpec {
    /// An HMAC-SHA256 signature of the body.
    pub hmac: Option<HmacSpec>,
    /// API keys by sender name (`partner_a: env:PARTNER_A_KEY`), sent in `api_key_header`.
    #[serde(default)]
    pub api_keys: IndexMap<String, Spanned<String>>,
    /// The header carrying an API key (default `X-API-Key`).
    pub api_key_header: Option<Spanned<String>>,
    /// Bearer tokens by sender name (`Authorization: Bearer …`).
    #[serde(default)]
    pub bearer: IndexMap<String, Spanned<String>>,
}

/// `hmac:` of an HTTP source.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacSpec {
    /// The shared secret, `env:NAME` or `file:/path` only.
    pub secret: Spanned<String>,
    /// `timestamped` (default): `t=<unix seconds>,v1=<hex HMAC of "<t>.<body>">`, what
    /// plexus' http sink sends; a request older than `tolerance` is refused, so a captured
    /// one cannot be replayed later. `hex`: the hex HMAC of the body alone (optionally
    /// `sha256=`-prefixed), in `X-Signature` or `Signature`.
    #[schemars(extend("enum" = ["timestamped", "hex"]))]
    pub scheme: Option<Spanned<String>>,
    /// The header (default `X-Plexus-Signature` for `timestamped`; `hex` reads
    /// `X-Signature`, then `Signature`).
    pub header: Option<Spanned<String>>,
    /// How far a signature's timestamp may be from now (default `5m`).
    pub tolerance: Option<Spanned<String>>,
}

/// `rate_limit:` of an HTTP source.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sustained requests per second per sender.
    pub per_second: Spanned<u32>,
    /// Requests a sender may make at once after being quiet (default: `per_second`).
    pub burst: Option<Spanned<u32>>,
}

/// `idempotency:` of an HTTP source.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySpec {
    /// The request header holding the key (default `Idempotency-Key`).
    pub header: Option<Spanned<String>>,
    /// Else the event's id: a top-level field of a JSON body (`id`), or a JSON pointer
    /// (`/meta/event_id`).
    pub field: Option<Spanned<String>>,
    /// How long a key is remembered (default `24h`).
    pub retention: Option<Spanned<String>>,
    /// Where keys are kept: a SQLite file (default `<pipeline>.idempotency.db`) or
    /// `postgres` (shared by several servers; the URL in `DATABASE_URL`).
    pub store: Option<Spanned<String>>,
}

/// What a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Fhir,
    Hl7,
}

/// How signatures are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacScheme {
    Timestamped,
    Hex,
}

#[derive(Debug, Clone)]
pub struct HmacPlan {
    pub secret: SecretRef,
    pub scheme: HmacScheme,
    pub header: String,
    pub tolerance: Duration,
}

/// Secrets stay references until the source starts.
#[derive(Debug, Clone, Default)]
pub struct AuthPlan {
    pub hmac: Option<HmacPlan>,
    pub api_keys: Vec<(String, SecretRef)>,
    pub api_key_header: String,
    pub bearer: Vec<(String, SecretRef)>,
}

impl AuthPlan {
    pub fn is_open(&self) -> bool {
        self.hmac.is_none() && self.api_keys.is_empty() && self.bearer.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct IdempotencyPlan {
    pub header: String,
    pub field: Option<String>,
    pub retention: Duration,
    /// A SQLite file, or PostgreSQL at the URL in this environment variable.
    pub store: KeyStorePlan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStorePlan {
    Postgres { url_env: String },
    Sqlite(PathBuf),
}

impl KeyStorePlan {
    pub fn location(&self) -> Result<StateLocation, String> {
        match self {
            KeyStorePlan::Postgres { url_env } => std::env::var(url_env)
                .map(StateLocation::Postgres)
                .map_err(|_| format!("idempotency keys in PostgreSQL: set {url_env} to its URL")),
            KeyStorePlan::Sqlite(p) => Ok(StateLocation::Sqlite(p.clone())),
        }
    }
}

/// A planned HTTP source.
#[derive(Debug, Clone)]
pub struct HttpSourcePlan {
    pub listen: SocketAddr,
    pub path: String,
    pub format: BodyFormat,
    pub spool: PathBuf,
    pub spool_options: SpoolOptions,
    pub max_body_bytes: usize,
    pub auth: AuthPlan,
    /// (per second, burst)
    pub rate_limit: Option<(u32, u32)>,
    pub idempotency: Option<IdempotencyPlan>,
    /// Whose keys these are: the pipeline and the path.
    pub scope: String,
    pub tls: Option<crate::connectors::mllp::config::TlsFiles>,
    /// Kafka instead of the local spool.
    pub handoff: Option<crate::connectors::handoff::HandoffPlan>,
}

fn secret(cx: &mut PlanCx<'_>, v: &Spanned<String>) -> Option<SecretRef> {
    SecretRef::parse(v).map_err(|e| cx.err(v, e)).ok()
}

impl IngestAuthSpec {
    fn plan(&self, cx: &mut PlanCx<'_>) -> AuthPlan {
        let hmac = self.hmac.as_ref().and_then(|h| {
            let scheme = match h.scheme.as_ref().map(|s| s.as_str()) {
                None | Some("timestamped") => HmacScheme::Timestamped,
                Some("hex") => HmacScheme::Hex,
                Some(other) => {
                    let at = h.scheme.as_ref().expect("matched Some");
                    cx.err(at, format!("scheme: {other:?} is not timestamped or hex"));
                    HmacScheme::Timestamped
                }
            };
            let header = h
                .header
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or(match scheme {
                    HmacScheme::Timestamped => "X-Plexus-Signature".into(),
                    HmacScheme::Hex => "X-Signature".into(),
                });
            let tolerance = cx.duration_or(&h.tolerance, Duration::from_secs(300));
            Some(HmacPlan {
                secret: secret(cx, &h.secret)?,
                scheme,
                header,
                tolerance,
            })
        });
        let named = |cx: &mut PlanCx<'_>, m: &IndexMap<String, Spanned<String>>| {
            m.iter()
                .filter_map(|(name, v)| Some((name.clone(), secret(cx, v)?)))
                .collect::<Vec<_>>()
        };
        AuthPlan {
            hmac,
            api_keys: named(cx, &self.api_keys),
            api_key_header: self
                .api_key_header
                .as_ref()
                .map_or("X-API-Key".into(), |h| h.to_string()),
            bearer: named(cx, &self.bearer),
        }
    }
}

impl IdempotencySpec {
    fn plan(&self, cx: &mut PlanCx<'_>, format: BodyFormat) -> Option<IdempotencyPlan> {
        if let Some(f) = &self.field
            && format == BodyFormat::Hl7
        {
            cx.err(f, "field: HL7 bodies have no JSON fields (use the header)");
        }
        let store = match &self.store {
            Some(s) if s.as_str() == "postgres" => KeyStorePlan::Postgres {
                url_env: "DATABASE_URL".into(),
            },
            Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                // A URL here would put the database password in the pipeline file.
                cx.err(s, "write `store: postgres` and put the URL in DATABASE_URL");
                return None;
            }
            Some(s) => KeyStorePlan::Sqlite(cx.resolve(s.strip_prefix("sqlite:").unwrap_or(s))),
            None => KeyStorePlan::Sqlite(cx.resolve(&format!("{}.idempotency.db", cx.pipeline))),
        };
        Some(IdempotencyPlan {
            header: self
                .header
                .as_ref()
                .map_or("Idempotency-Key".into(), |h| h.to_string()),
            field: self.field.as_ref().map(|f| f.to_string()),
            retention: cx.duration_or(&self.retention, Duration::from_secs(24 * 3600)),
            store,
        })
    }
}

impl HttpSourceConfig {
    pub fn plan(&self, cx: &mut PlanCx<'_>, _format: SourceFormat) -> Option<HttpSourcePlan> {
        let format = match self.format.as_str() {
            "json" | "ndjson" => BodyFormat::Json,
            "fhir" => BodyFormat::Fhir,
            "hl7" => BodyFormat::Hl7,
            other => {
                cx.err(
                    &self.format,
                    format!("format: {other:?} is not json, fhir or hl7"),
                );
                BodyFormat::Json
            }
        };
        let listen = self.listen.parse::<SocketAddr>().map_err(|_| {
            cx.err(
                &self.listen,
                format!(
                    "{:?} is not host:port (e.g. 127.0.0.1:8088)",
                    self.listen.as_str()
                ),
            )
        });
        let path = self
            .path
            .as_ref()
            .map_or("/".to_string(), |p| p.to_string());
        if !path.starts_with('/') {
            let at = self.path.as_ref().expect("a default starts with /");
            cx.err(at, "path: must start with /");
        }
        let max_body_bytes = match &self.max_body_bytes {
            Some(n) if **n == 0 => {
                cx.err(n, "must be at least 1");
                10 << 20
            }
            Some(n) => **n,
            None => 10 << 20,
        };
        let rate_limit = self.rate_limit.as_ref().and_then(|r| {
            let burst = r.burst.as_ref().map_or(*r.per_second, |b| **b);
            if *r.per_second == 0 || burst == 0 {
                cx.err(&r.per_second, "per_second and burst must be at least 1");
                return None;
            }
            Some((*r.per_second, burst))
        });
        let (spool, spool_options) = crate::connectors::spool::plan_spool(
            cx,
            &self.spool,
            &self.spool_max_bytes,
            &self.spool_max_age,
        );
        let auth = self.auth.as_ref().map(|a| a.plan(cx)).unwrap_or_default();
        let idempotency = match &self.idempotency {
            Some(i) => Some(i.plan(cx, format)?),
            None => None,
        };
        Some(HttpSourcePlan {
            tls: self.tls.as_ref().map(|t| t.plan(cx)),
            handoff: self.handoff.as_ref().map(|h| h.plan(cx)),
            scope: format!("{}{path}", cx.pipeline),
            listen: listen.ok()?,
            path,
            format,
            spool,
            spool_options,
            max_body_bytes,
            auth,
            rate_limit,
            idempotency,
        })
    }
}
