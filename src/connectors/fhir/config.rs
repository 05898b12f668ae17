//! The FHIR connector's configuration: `type: fhir` sinks. Rows of a `fhir` stage are
//! written to a FHIR R4 server: merged into the server's version and PUT (plain), or through
//! the sync state with conflict detection (`sync:`).

use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::{PlanCx, Spanned};
use crate::connectors::http::config::{
    AuthSpec, BreakerSpec, HttpSettings, HttpSinkPlan, RetrySpec, TlsSpec, plan_http,
};
use crate::connectors::kafka::KafkaConnection;

/// `{name: ehr, type: fhir, url: env:EHR_FHIR_BASE, sync: {conflicts: manual}}`.
///
/// The HTTP settings repeat `HttpSinkConfig`'s on purpose: each connector's config is its own
/// type (its own keys in the schema, `method`/`secret` refused here), and serde's `flatten`
/// would lose both `deny_unknown_fields` and the spans. They are planned by one function
/// (`http::config::plan_http`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FhirSinkConfig {
    /// The FHIR base URL (or `env:NAME` holding it).
    pub url: Spanned<String>,
    /// Extra request headers; a value may be `env:NAME` or `file:/path`.
    #[serde(default)]
    pub headers: IndexMap<String, Spanned<String>>,
    /// Per-request timeout (default 30s).
    pub timeout: Option<Spanned<String>>,
    /// Requests in flight at once (default 8).
    pub concurrency: Option<Spanned<usize>>,
    /// Retries of transient failures (in place, or on Kafka retry topics without `sync`).
    pub retry: Option<RetrySpec>,
    /// A circuit breaker gating the calls.
    pub breaker: Option<BreakerSpec>,
    /// How to authenticate to the server.
    pub auth: Option<AuthSpec>,
    /// An extra trusted CA and a client certificate (mutual TLS).
    pub tls: Option<TlsSpec>,
    /// Through the sync state (conflict detection) instead of plain merged updates.
    pub sync: Option<SyncSpec>,
    /// Only `json` (the default).
    #[schemars(extend("enum" = ["json", "ndjson"]))]
    pub format: Option<Spanned<String>>,
}

/// `sync:` on a fhir sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncSpec {
    /// Where the sync state lives: `postgres` (connection URL in `DATABASE_URL`) or a SQLite
    /// file (default: `<pipeline>.sync.db` beside the pipeline).
    pub state: Option<Spanned<String>>,
    /// `manual` (default), `timestamp_wins`, `local_wins` or `external_wins`.
    #[schemars(extend("enum" = ["manual", "timestamp_wins", "local_wins", "external_wins"]))]
    pub conflicts: Option<Spanned<String>>,
    /// How long a worker holds an entity (default 30s).
    pub lease: Option<Spanned<String>>,
    /// Sync events (`integration.sync.*`): a file (default `<pipeline>.sync_events.ndjson`)
    /// and optionally a topic.
    pub events: Option<SyncEventsSpec>,
}

/// Where sync events go.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncEventsSpec {
    pub path: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
}

/// A planned fhir sink: the HTTP settings (in FHIR mode) and, with `sync:`, the sync state.
#[derive(Debug, Clone)]
pub struct FhirSinkPlan {
    pub http: HttpSinkPlan,
    pub sync: Option<SyncPlan>,
}

impl FhirSinkConfig {
    pub fn plan(
        &self,
        cx: &mut PlanCx<'_>,
        name: &Spanned<String>,
        schema: &SchemaRef,
    ) -> Option<FhirSinkPlan> {
        for col in ["resource", "request_url"] {
            if schema.column_with_name(col).is_none() {
                cx.err(
                    name,
                    format!(
                        "a fhir sink reads the `{col}` column: its input must be a `fhir` stage"
                    ),
                );
            }
        }
        if let Some(f) = &self.format
            && !matches!(f.as_str(), "json" | "ndjson")
        {
            cx.err(f, "fhir sinks send json");
        }
        let mut http = plan_http(
            cx,
            HttpSettings {
                url: &self.url,
                method: None,
                headers: &self.headers,
                secret: None,
                timeout: &self.timeout,
                concurrency: self.concurrency.as_ref(),
                retry: self.retry.as_ref(),
                breaker: self.breaker.as_ref(),
                auth: self.auth.as_ref(),
                tls: self.tls.as_ref(),
            },
        );
        http.fhir = true;
        let sync = match &self.sync {
            Some(sy) => {
                if let Some(t) = self.retry.as_ref().and_then(|r| r.topic.as_ref()) {
                    cx.err(t, "a syncing fhir sink retries in place (each entity under its lease), not on retry topics");
                }
                Some(plan_sync(cx, sy)?)
            }
            None => None,
        };
        Some(FhirSinkPlan { http, sync })
    }
}

impl SyncPlan {
    /// Opens the sync event outputs (the file; the topic on `kafka` when set).
    pub fn open_events(
        &self,
        kafka: Option<&KafkaConnection>,
    ) -> Result<crate::connectors::fhir::sync::SyncEvents, String> {
        crate::connectors::fhir::sync::SyncEvents::open(
            &self.events_path,
            self.events_topic.as_deref(),
            kafka,
        )
        .map_err(|e| format!("sync events: {e}"))
    }
}

/// A fhir sink's sync settings.
#[derive(Debug, Clone)]
pub struct SyncPlan {
    pub state: SyncStatePlan,
    pub policy: crate::connectors::fhir::sync::ConflictPolicy,
    pub lease: Duration,
    /// Sync events: always a file, a topic when set.
    pub events_path: PathBuf,
    pub events_topic: Option<String>,
}

/// Where a sink's sync state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStatePlan {
    /// PostgreSQL at the URL in this environment variable.
    Postgres { url_env: String },
    /// A SQLite file (the embedded default).
    Sqlite(PathBuf),
}

impl SyncStatePlan {
    pub fn location(&self) -> Result<crate::connectors::fhir::sync::store::StateLocation, String> {
        use crate::connectors::fhir::sync::store::StateLocation;
        match self {
            SyncStatePlan::Postgres { url_env } => std::env::var(url_env)
                .map(StateLocation::Postgres)
                .map_err(|_| format!("sync state in PostgreSQL: set {url_env} to its URL")),
            SyncStatePlan::Sqlite(p) => Ok(StateLocation::Sqlite(p.clone())),
        }
    }
}

fn plan_sync(cx: &mut PlanCx<'_>, sy: &SyncSpec) -> Option<SyncPlan> {
    use crate::connectors::fhir::sync::{ConflictPolicy, Side};
    let name = cx.pipeline.to_string();
    let state = match &sy.state {
        Some(s) if s.as_str() == "postgres" => SyncStatePlan::Postgres {
            url_env: "DATABASE_URL".into(),
        },
        Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
            // A URL here would put the database password in the pipeline file.
            cx.err(s, "write `state: postgres` and put the URL in DATABASE_URL");
            return None;
        }
        Some(s) => {
            let p = s.strip_prefix("sqlite:").unwrap_or(s);
            SyncStatePlan::Sqlite(cx.resolve(p))
        }
        None => SyncStatePlan::Sqlite(cx.resolve(&format!("{name}.sync.db"))),
    };
    let policy = match sy.conflicts.as_ref().map(|c| c.as_str()) {
        None | Some("manual") => ConflictPolicy::Manual,
        Some("timestamp_wins") => ConflictPolicy::TimestampWins,
        Some("local_wins") => ConflictPolicy::SourcePriority(Side::Local),
        Some("external_wins") => ConflictPolicy::SourcePriority(Side::External),
        Some(_) => {
            let c = sy.conflicts.as_ref().expect("some");
            cx.err(
                c,
                "conflicts: manual, timestamp_wins, local_wins or external_wins",
            );
            return None;
        }
    };
    let lease = cx.duration_or(&sy.lease, Duration::from_secs(30));
    let events = sy.events.as_ref();
    if let Some(t) = events.and_then(|e| e.topic.as_ref())
        && !cx.has_kafka
    {
        cx.err(t, "a sync events topic needs a `kafka:` connection block");
    }
    Some(SyncPlan {
        state,
        policy,
        lease,
        events_path: match events.and_then(|e| e.path.as_ref()) {
            Some(p) => cx.resolve(p),
            None => cx.resolve(&format!("{name}.sync_events.ndjson")),
        },
        events_topic: events.and_then(|e| e.topic.as_ref()).map(|t| t.to_string()),
    })
}
