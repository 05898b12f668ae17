//! Spec → graph of operators. Each stage is planned against the schema its upstream produces,
//! so an unknown column, a non-boolean condition or a type mismatch is found here, before any
//! record is read, and reported at the YAML (or SQL file) position it comes from.

use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion::scalar::ScalarValue;
use marked_yaml::Spanned;

use super::sql::{PlannedExpr, SqlPlanner};
use crate::connectors::kafka::{KafkaConnection, SecretRef, is_secret_property};
use crate::connectors::schema_registry::{RegistryConfig, SchemaRegistry};
use crate::formats::hl7::Zone;
use crate::formats::hl7::extract::{ColumnSpec, ColumnType};
use crate::operators::Operator;
use crate::operators::enrich::Enrich;
use crate::operators::lookup::{JoinKind, Lookup, OnMiss, ReferenceTable};
use crate::operators::map::Map;
use crate::operators::parse::{Parse, raw_record_schema};
use crate::operators::route::{Route, RouteMode};
use crate::operators::validate::{Rule, Severity, Validate};
use crate::spec::{PipelineSpec, SpecError, SpecErrors, StageSpec};

/// Record framing of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Hl7,
    Ndjson,
    Csv,
    /// Confluent-framed Avro (Kafka messages only).
    Avro,
}

impl SourceFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "hl7" => Ok(SourceFormat::Hl7),
            "ndjson" | "json" => Ok(SourceFormat::Ndjson),
            "csv" => Ok(SourceFormat::Csv),
            "avro" => Ok(SourceFormat::Avro),
            other => Err(format!("unknown format {other:?} (hl7, ndjson, csv, avro)")),
        }
    }
}

/// Where a stage or sink reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    Source,
    Stage { stage: usize, port: usize },
}

#[derive(Debug, Clone)]
pub struct PlannedSource {
    /// Files matched by the spec's path/glob, in order; `-` is stdin. Empty for Kafka.
    pub paths: Vec<PathBuf>,
    pub format: SourceFormat,
    pub kafka: Option<KafkaSourcePlan>,
}

/// A Kafka source's subscription.
#[derive(Debug, Clone)]
pub struct KafkaSourcePlan {
    pub topics: Vec<String>,
    pub pattern: Option<String>,
    pub group: String,
    pub start: String,
    pub instance: Option<String>,
}

/// A Kafka sink's settings.
#[derive(Debug, Clone)]
pub struct KafkaSinkPlan {
    pub topic: String,
    pub key: Option<super::sql::PlannedExpr>,
    pub avro: bool,
    pub subject: Option<String>,
    /// The writer schema's JSON text, when declared.
    pub avro_schema: Option<String>,
}

/// A `type: http` sink.
#[derive(Clone, Debug)]
pub struct HttpSinkPlan {
    pub url: String,
    pub method: String,
    /// Header values resolved at start (secrets read then, never stored in the plan's text).
    pub headers: Vec<(String, HeaderValue)>,
    pub secret: Option<crate::connectors::kafka::SecretRef>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub retry: crate::resilience::retry::RetryPolicy,
    /// Kafka retry topics' base name (non-blocking retries).
    pub retry_topic: Option<String>,
    pub breaker: Option<crate::resilience::breaker::BreakerConfig>,
    /// `type: fhir`: `url` is the FHIR base; rows of a `fhir` stage are PUT to their
    /// `request_url` (conditional updates) or, as Bundles, POSTed to the base.
    pub fhir: bool,
    /// `type: fhir` with `sync:`: through the sync state instead.
    pub sync: Option<SyncPlan>,
    pub auth: AuthPlan,
    pub tls: TlsPlan,
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
    pub fn fhir_client_config(&self) -> Result<crate::fhir::client::ClientConfig, String> {
        let mut c = crate::fhir::client::ClientConfig::new(self.resolved_url()?);
        c.timeout = self.timeout;
        c.retry = self.retry.clone();
        c.auth = self.auth.resolve()?;
        c.tls = self.tls.resolve()?;
        Ok(c)
    }
}

impl SyncPlan {
    /// Opens the sync event outputs (the file; the topic on `kafka` when set).
    pub fn open_events(
        &self,
        kafka: Option<&KafkaConnection>,
    ) -> Result<crate::sync::SyncEvents, String> {
        crate::sync::SyncEvents::open(&self.events_path, self.events_topic.as_deref(), kafka)
            .map_err(|e| format!("sync events: {e}"))
    }
}

/// `auth:` of a sink, secrets still references (read at start).
#[derive(Debug, Clone, Default)]
pub enum AuthPlan {
    #[default]
    None,
    Basic {
        user: HeaderValue,
        password: crate::connectors::kafka::SecretRef,
    },
    Bearer(crate::connectors::kafka::SecretRef),
    ApiKey {
        header: String,
        key: crate::connectors::kafka::SecretRef,
    },
    OAuth2 {
        token_url: String,
        client_id: HeaderValue,
        client_secret: crate::connectors::kafka::SecretRef,
        scope: Option<String>,
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
    pub fn resolve(&self) -> Result<crate::connectors::http::auth::Auth, String> {
        use crate::connectors::http::auth::Auth;
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
            } => Auth::ClientCredentials {
                token_url: token_url.clone(),
                client_id: client_id.read()?,
                client_secret: client_secret.read()?,
                scope: scope.clone(),
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
    pub fn resolve(&self) -> Result<crate::connectors::http::auth::Tls, String> {
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
        Ok(crate::connectors::http::auth::Tls {
            ca_pem: self.ca.as_ref().map(read).transpose()?,
            identity_pem,
        })
    }
}

/// A fhir sink's sync settings.
#[derive(Debug, Clone)]
pub struct SyncPlan {
    pub state: SyncStatePlan,
    pub policy: crate::sync::ConflictPolicy,
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
    pub fn location(&self) -> Result<crate::sync::store::StateLocation, String> {
        use crate::sync::store::StateLocation;
        match self {
            SyncStatePlan::Postgres { url_env } => std::env::var(url_env)
                .map(StateLocation::Postgres)
                .map_err(|_| format!("sync state in PostgreSQL: set {url_env} to its URL")),
            SyncStatePlan::Sqlite(p) => Ok(StateLocation::Sqlite(p.clone())),
        }
    }
}

/// A header value: literal, or a secret read at start.
#[derive(Clone, Debug)]
pub enum HeaderValue {
    Literal(String),
    Secret(crate::connectors::kafka::SecretRef),
}

pub struct PlannedStage {
    pub name: String,
    pub kind: &'static str,
    pub input: Upstream,
    pub operator: Box<dyn Operator>,
    pub outputs: Vec<(String, SchemaRef)>,
}

/// Output file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    Ndjson,
    Parquet,
    Arrow,
}

#[derive(Debug, Clone)]
pub struct PlannedSink {
    pub name: String,
    pub input: Upstream,
    /// None = stdout.
    pub path: Option<PathBuf>,
    pub format: SinkFormat,
    pub schema: SchemaRef,
    pub provenance: bool,
    /// Set for `type: kafka` sinks (then `path`/`format` are unused).
    pub kafka: Option<KafkaSinkPlan>,
    /// Set for `type: http` sinks.
    pub http: Option<HttpSinkPlan>,
}

/// A pipeline ready to run.
pub struct Plan {
    pub name: String,
    pub integration_id: String,
    pub source: PlannedSource,
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_delay: Duration,
    pub stages: Vec<PlannedStage>,
    pub sinks: Vec<PlannedSink>,
    pub dlq: Option<PathBuf>,
    /// The dead-letter topic, when the DLQ is on Kafka.
    pub dlq_topic: Option<String>,
    pub kafka: Option<KafkaConnection>,
    pub registry: Option<RegistryConfig>,
    /// Windowed aggregations (`windows:`), run beside the sinks.
    pub windows: Vec<super::windows::PlannedWindow>,
    /// Where window rows, breaker events and alerts go (set when there are windows).
    pub monitoring: Option<super::windows::MonitoringPlan>,
}

impl Plan {
    pub fn schema_of(&self, up: Upstream) -> SchemaRef {
        match up {
            Upstream::Source => raw_record_schema(),
            Upstream::Stage { stage, port } => self.stages[stage].outputs[port].1.clone(),
        }
    }
}

pub(super) struct Ctx<'s> {
    pub(super) spec: &'s PipelineSpec,
    pub(super) errors: Vec<SpecError>,
    /// Built on first use by an Avro parse stage.
    registry: Option<std::sync::Arc<SchemaRegistry>>,
}

impl Ctx<'_> {
    pub(super) fn err<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.errors
            .push(SpecError::at(&self.spec.file, at.span(), message.into()));
    }

    /// An error in the SQL written at `at` (inline), or in `file` (a `.sql` file it names):
    /// a syntax error is placed at its own line and column, not at the start of the value.
    pub(super) fn sql_err(
        &mut self,
        at: &Spanned<String>,
        sql: &str,
        file: Option<&std::path::Path>,
        message: String,
    ) {
        let Some((line, column, message)) = super::sql::error_position(&message, sql) else {
            return self.err(at, message);
        };
        if let Some(file) = file {
            self.errors
                .push(SpecError::at_line(file, line, column, message));
            return;
        }
        let Some(start) = at.span().start() else {
            return self.err(at, message);
        };
        if line == 1 && !sql.contains('\n') {
            // A one-line value: its SQL starts at the value, after a quote if it has one.
            let quoted = std::fs::read_to_string(&self.spec.file)
                .ok()
                .and_then(|t| t.lines().nth(start.line() - 1).map(str::to_string))
                .and_then(|l| l.chars().nth(start.column() - 1))
                .is_some_and(|c| c == '"' || c == '\'');
            let column = start.column() + usize::from(quoted) + column - 1;
            self.errors.push(SpecError::at_line(
                &self.spec.file,
                start.line(),
                column,
                message,
            ));
        } else {
            // A block scalar: its lines do not map one to one onto the file's; say where in
            // the SQL.
            self.err(at, format!("{message} (SQL line {line}, column {column})"));
        }
    }

    /// Reports `name` at its place when one of the `earlier` names (of the same `kind`:
    /// stage, sink, window) is the same: names key summaries, metrics and topics.
    pub(super) fn unique_name<'n>(
        &mut self,
        kind: &str,
        name: &Spanned<String>,
        mut earlier: impl Iterator<Item = &'n str>,
    ) {
        if earlier.any(|e| e == name.as_str()) {
            self.err(
                name,
                format!("{kind} name {:?} is used twice", name.as_str()),
            );
        }
    }
}

/// Plans a spec; every problem found is returned (not only the first).
/// A pipeline's name names files (`<name>.dlq.ndjson`), topics and consumer groups, so it is
/// one plain path component: letters, digits, `_`, `-` and `.` (not first), at most 128.
pub fn check_pipeline_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(
            "a pipeline name is 1 to 128 letters, digits, '_', '-' or '.' (not first, not \
             '..'): it names files, topics and consumer groups"
                .into(),
        )
    }
}

pub async fn build(spec: &PipelineSpec) -> Result<Plan, SpecErrors> {
    let mut cx = Ctx {
        spec,
        errors: Vec::new(),
        registry: None,
    };
    if let Err(e) = check_pipeline_name(&spec.name) {
        cx.err(&spec.name, e);
    }
    let kafka = plan_kafka(&mut cx);
    let sql = SqlPlanner::new();

    let source = plan_source(&mut cx);
    let max_delay = match &spec.batch.max_delay {
        Some(d) => crate::spec::parse_duration(d).unwrap_or_else(|e| {
            cx.err(d, e);
            Duration::from_millis(200)
        }),
        None => Duration::from_millis(200),
    };
    // Bounded: a batch is held in memory whole, and a typo (10^12) must not be a plan.
    const MAX_ROWS: i64 = 1 << 20;
    const MAX_BYTES: i64 = 1 << 30;
    if !(1..=MAX_ROWS).contains(&*spec.batch.max_rows) {
        cx.err(
            &spec.batch.max_rows,
            format!(
                "max_rows is between 1 and {MAX_ROWS}, not {}",
                *spec.batch.max_rows
            ),
        );
    }
    if let Some(b) = &spec.batch.max_bytes
        && !(1024..=MAX_BYTES).contains(&**b)
    {
        cx.err(
            b,
            format!("max_bytes is between 1024 and {MAX_BYTES}, not {}", **b),
        );
    }

    let mut stages: Vec<PlannedStage> = Vec::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let name = stage.name();
        cx.unique_name(
            "stage",
            name,
            spec.stages[..i].iter().map(|s| s.name().as_str()),
        );
        let input = match resolve_upstream(&mut cx, &stages, stage.input(), i, stage.kind()) {
            Some(u) => u,
            None => break,
        };
        let input_schema = match input {
            Upstream::Source => raw_record_schema(),
            Upstream::Stage { stage, port } => stages[stage].outputs[port].1.clone(),
        };
        let is_source_input = input == Upstream::Source;
        if is_source_input != matches!(stage, StageSpec::Parse(_) | StageSpec::Fhir(_)) {
            let msg = if is_source_input {
                "the stage reading the source must be a `parse` or `fhir` stage"
            } else {
                "a `parse` or `fhir` stage reads raw records: its input must be the source"
            };
            cx.err(name, msg);
            break;
        }
        match plan_stage(&mut cx, &sql, stage, &input_schema).await {
            Some(operator) => {
                let outputs = operator.outputs();
                stages.push(PlannedStage {
                    name: name.to_string(),
                    kind: stage.kind(),
                    input,
                    operator,
                    outputs,
                });
            }
            // Downstream schemas are unknown after a failed stage: stop rather than cascade.
            None => break,
        }
    }
    let planned_all_stages = stages.len() == spec.stages.len();

    let mut sinks = Vec::new();
    if planned_all_stages {
        for (i, s) in spec.sinks.iter().enumerate() {
            cx.unique_name(
                "sink",
                &s.name,
                spec.sinks[..i].iter().map(|o| o.name.as_str()),
            );
            if let Some(sink) = plan_sink(&mut cx, &stages, s, &sql) {
                sinks.push(sink);
            }
        }
        check_reachability(&mut cx, &stages, &sinks);
    }
    let windows = if planned_all_stages {
        super::windows::plan_windows(&mut cx, &stages, &mut sinks, &sql)
    } else {
        Vec::new()
    };
    // Breakers publish their events even without windows.
    let has_breaker = sinks
        .iter()
        .any(|s| s.http.as_ref().is_some_and(|h| h.breaker.is_some()));
    let monitoring = (!spec.windows.is_empty() || spec.monitoring.is_some() || has_breaker)
        .then(|| super::windows::plan_monitoring(&mut cx));
    if spec.sinks.is_empty() {
        cx.errors.push(SpecError::at_line(
            &spec.file,
            1,
            1,
            "a pipeline needs at least one sink",
        ));
    }
    let (dlq, dlq_topic) = match &spec.dlq {
        None => (None, None),
        Some(d) => match (&d.path, &d.topic) {
            (Some(p), None) => (Some(spec.resolve(p)), None),
            (None, Some(t)) => {
                if kafka.is_none() {
                    cx.err(t, "a dead-letter topic needs a `kafka:` connection block");
                }
                (None, Some(t.to_string()))
            }
            (Some(p), Some(_)) => {
                cx.err(p, "the dlq has a `path` or a `topic`, not both");
                (None, None)
            }
            (None, None) => {
                cx.errors.push(SpecError::at_line(
                    &spec.file,
                    1,
                    1,
                    "`dlq` needs a `path` or a `topic`",
                ));
                (None, None)
            }
        },
    };
    if let Some(s) = &source
        && s.kafka.is_some()
        && kafka.is_none()
    {
        cx.err(
            &spec.source.kind,
            "a kafka source needs a `kafka:` connection block",
        );
    }
    let registry = spec.schema_registry.as_ref().map(|r| RegistryConfig {
        url: r.url.to_string(),
        username_env: r.username_env.as_ref().map(|s| s.to_string()),
        password_env: r.password_env.as_ref().map(|s| s.to_string()),
    });
    if !cx.errors.is_empty() {
        cx.errors
            .sort_by_key(|e| (e.location.line, e.location.column));
        return Err(SpecErrors(cx.errors));
    }
    Ok(Plan {
        name: spec.name.to_string(),
        integration_id: spec.integration.id.to_string(),
        source: source.expect("no errors"),
        max_rows: (*spec.batch.max_rows).clamp(1, MAX_ROWS) as usize,
        max_bytes: spec
            .batch
            .max_bytes
            .as_ref()
            .map_or(8 << 20, |b| (**b).clamp(1024, MAX_BYTES) as usize),
        max_delay,
        stages,
        sinks,
        dlq,
        dlq_topic,
        kafka,
        registry,
        windows,
        monitoring,
    })
}

/// The `kafka:` block: brokers, properties, and secrets by reference only.
fn plan_kafka(cx: &mut Ctx<'_>) -> Option<KafkaConnection> {
    let k = cx.spec.kafka.as_ref()?;
    let mut conn = KafkaConnection {
        brokers: k.brokers.as_ref().map(|b| b.to_string()),
        ..KafkaConnection::default()
    };
    if let Some(m) = &k.max_outage {
        match crate::spec::parse_duration(m) {
            Ok(d) if !d.is_zero() => conn.max_outage = Some(d),
            Ok(_) => cx.err(m, "max_outage is a positive duration (e.g. 5m)"),
            Err(e) => cx.err(m, e),
        }
    }
    for (key, value) in &k.properties {
        if is_secret_property(key) {
            cx.err(
                value,
                format!("{key} is a secret: put it under `secrets:` as env:NAME or file:/path"),
            );
            continue;
        }
        conn.properties.push((key.clone(), value.to_string()));
    }
    for (key, value) in &k.secrets {
        match SecretRef::parse(value) {
            Ok(r) => conn.secrets.push((key.clone(), r)),
            Err(e) => cx.err(value, e),
        }
    }
    Some(conn)
}

fn plan_source(cx: &mut Ctx<'_>) -> Option<PlannedSource> {
    let s = &cx.spec.source;
    let format = match SourceFormat::parse(&s.format) {
        Ok(f) => f,
        Err(e) => {
            cx.err(&s.format, e);
            return None;
        }
    };
    match s.kind.as_str() {
        "file" => {}
        "kafka" => return plan_kafka_source(cx, format),
        other => {
            cx.err(
                &s.kind,
                format!("unknown source type {other:?} (file, kafka)"),
            );
            return None;
        }
    }
    for (key, set) in [
        ("topics", !s.topics.is_empty()),
        ("pattern", s.pattern.is_some()),
        ("group", s.group.is_some()),
        ("start", s.start.is_some()),
        ("instance", s.instance.is_some()),
    ] {
        if set {
            cx.err(&s.kind, format!("`{key}` is a kafka source setting"));
        }
    }
    if format == SourceFormat::Avro {
        cx.err(
            &s.format,
            "avro records come from Kafka (Confluent wire format)",
        );
        return None;
    }
    let Some(path) = &s.path else {
        cx.err(&s.kind, "a file source needs a `path`");
        return None;
    };
    if path.as_str() == "-" {
        return Some(PlannedSource {
            paths: vec![PathBuf::from("-")],
            format,
            kafka: None,
        });
    }
    let pattern = cx.spec.resolve(path);
    let paths: Vec<PathBuf> = match glob::glob(&pattern.to_string_lossy()) {
        Ok(paths) => paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect(),
        Err(e) => {
            cx.err(path, format!("bad glob pattern: {e}"));
            return None;
        }
    };
    if paths.is_empty() {
        cx.err(path, format!("no input file matches {}", pattern.display()));
        return None;
    }
    Some(PlannedSource {
        paths,
        format,
        kafka: None,
    })
}

fn plan_kafka_source(cx: &mut Ctx<'_>, format: SourceFormat) -> Option<PlannedSource> {
    let s = &cx.spec.source;
    if let Some(p) = &s.path {
        cx.err(
            p,
            "a kafka source reads `topics` or a `pattern`, not a `path`",
        );
    }
    if format == SourceFormat::Csv {
        cx.err(&s.format, "kafka messages are hl7, json or avro");
        return None;
    }
    if s.topics.is_empty() == s.pattern.is_none() {
        cx.err(
            &s.kind,
            "a kafka source needs `topics` or a `pattern` (one of them)",
        );
        return None;
    }
    if let Some(p) = &s.pattern
        && let Err(e) = regex_check(p)
    {
        cx.err(p, e);
    }
    let start = match s.start.as_ref().map(|s| s.as_str()) {
        None | Some("earliest") => "earliest",
        Some("latest") => "latest",
        Some(other) => {
            cx.err(
                s.start.as_ref().expect("some"),
                format!("start is `earliest` or `latest`, not {other:?}"),
            );
            return None;
        }
    };
    Some(PlannedSource {
        paths: Vec::new(),
        format,
        kafka: Some(KafkaSourcePlan {
            topics: s.topics.iter().map(|t| t.to_string()).collect(),
            pattern: s.pattern.as_ref().map(|p| p.to_string()),
            group: s
                .group
                .as_ref()
                .map(|g| g.to_string())
                .unwrap_or_else(|| cx.spec.name.to_string()),
            start: start.to_string(),
            instance: s.instance.as_ref().map(|i| i.to_string()),
        }),
    })
}

/// A light check of a topic regex (librdkafka compiles it; unbalanced groups are the usual
/// mistake).
fn regex_check(p: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut escaped = false;
    for c in p.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '(') => depth += 1,
            (false, ')') => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced `)` in topic pattern".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced `(` in topic pattern".into());
    }
    Ok(())
}

/// Resolves `stage` / `stage.output` (or the previous stage) to an upstream port.
pub(super) fn resolve_upstream(
    cx: &mut Ctx<'_>,
    stages: &[PlannedStage],
    input: Option<&Spanned<String>>,
    position: usize,
    what: &str,
) -> Option<Upstream> {
    let Some(input) = input else {
        if position == 0 {
            return Some(Upstream::Source);
        }
        let prev = stages.last()?;
        if prev.outputs.len() != 1 {
            let at = cx.spec.stages[position].name().clone();
            cx.err(
                &at,
                format!(
                    "the previous stage {:?} has several outputs ({}): name one with `input: {}.<output>`",
                    prev.name,
                    port_names(prev),
                    prev.name
                ),
            );
            return None;
        }
        return Some(Upstream::Stage {
            stage: stages.len() - 1,
            port: 0,
        });
    };
    if input.as_str() == "source" {
        return Some(Upstream::Source);
    }
    let (stage_name, port_name) = match input.split_once('.') {
        Some((s, p)) => (s, Some(p)),
        None => (input.as_str(), None),
    };
    let Some(stage) = stages.iter().position(|s| s.name == stage_name) else {
        let known: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        cx.err(
            input,
            format!(
                "{what} input {:?}: no earlier stage has that name (known: source, {})",
                input.as_str(),
                known.join(", ")
            ),
        );
        return None;
    };
    let s = &stages[stage];
    let port = match port_name {
        Some(p) => s.outputs.iter().position(|(n, _)| n == p),
        None if s.outputs.len() == 1 => Some(0),
        None => None,
    };
    match port {
        Some(port) => Some(Upstream::Stage { stage, port }),
        None => {
            cx.err(
                input,
                format!(
                    "{what} input {:?}: stage {:?} has outputs {}",
                    input.as_str(),
                    s.name,
                    port_names(s)
                ),
            );
            None
        }
    }
}

fn port_names(s: &PlannedStage) -> String {
    s.outputs
        .iter()
        .map(|(n, _)| {
            if n.is_empty() {
                s.name.clone()
            } else {
                format!("{}.{n}", s.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plans an expression, recording an error at `at` on failure.
fn expr(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    name: &str,
    at: &Spanned<String>,
    schema: &SchemaRef,
    predicate: bool,
) -> Option<PlannedExpr> {
    let r = if predicate {
        sql.predicate(name, at, schema)
    } else {
        sql.expr(name, at, schema)
    };
    r.map_err(|e| cx.sql_err(at, at, None, format!("{name}: {e}")))
        .ok()
}

async fn plan_stage(
    cx: &mut Ctx<'_>,
    sql: &SqlPlanner,
    stage: &StageSpec,
    input: &SchemaRef,
) -> Option<Box<dyn Operator>> {
    match stage {
        StageSpec::Fhir(f) => {
            if SourceFormat::parse(&cx.spec.source.format).ok() != Some(SourceFormat::Hl7) {
                cx.err(
                    &f.name,
                    "a `fhir` stage maps HL7v2: the source format must be hl7",
                );
                return None;
            }
            let bundle = match f.bundle.as_ref().map(|b| b.as_str()) {
                None => None,
                Some("transaction") => Some(crate::fhir::bundle::BundleType::Transaction),
                Some("batch") => Some(crate::fhir::bundle::BundleType::Batch),
                Some(_) => {
                    let b = f.bundle.as_ref().expect("some");
                    cx.err(b, "bundle is `transaction` or `batch`");
                    return None;
                }
            };
            let offset = match &f.default_timezone {
                Some(tz) => match Zone::parse(tz) {
                    Ok(z) => z,
                    Err(e) => {
                        cx.err(tz, format!("default_timezone: {e}"));
                        return None;
                    }
                },
                None => Zone::default(),
            };
            let systems = f
                .systems
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            let opts = crate::fhir::v2::Options {
                default_zone: offset,
                ..Default::default()
            }
            .with_systems(systems);
            let per_record = cx.spec.source.kind.as_str() == "kafka";
            Some(
                Box::new(crate::operators::fhir::ToFhir::new(opts, bundle).per_record(per_record))
                    as Box<dyn Operator>,
            )
        }
        StageSpec::Parse(p) => {
            let format = match SourceFormat::parse(&p.format) {
                Ok(f) => f,
                Err(e) => {
                    cx.err(&p.format, e);
                    return None;
                }
            };
            if format != SourceFormat::parse(&cx.spec.source.format).unwrap_or(format) {
                cx.err(
                    &p.format,
                    format!(
                        "parse format {:?} differs from the source format {:?}",
                        p.format.as_str(),
                        cx.spec.source.format.as_str()
                    ),
                );
            }
            match format {
                SourceFormat::Hl7 => {
                    if p.columns.is_empty() {
                        cx.err(&p.name, "an hl7 parse stage needs `columns`");
                        return None;
                    }
                    if let Some(s) = &p.schema {
                        cx.err(s, "hl7 columns are declared with `columns`, not `schema`");
                    }
                    let mut columns = Vec::new();
                    for c in &p.columns {
                        let ty = match &c.data_type {
                            Some(t) => match t.parse::<ColumnType>() {
                                Ok(t) => t,
                                Err(e) => {
                                    cx.err(t, e);
                                    continue;
                                }
                            },
                            None => ColumnType::Utf8,
                        };
                        if columns
                            .iter()
                            .any(|x: &ColumnSpec| x.name == c.name.as_str())
                        {
                            cx.err(
                                &c.name,
                                format!("column {:?} is declared twice", c.name.as_str()),
                            );
                        }
                        if c.name.starts_with('_') {
                            cx.err(
                                &c.name,
                                "names starting with '_' are reserved for provenance",
                            );
                        }
                        match ColumnSpec::new(c.name.as_str(), &c.path, ty) {
                            Ok(spec) => columns.push(spec),
                            Err(e) => cx.err(&c.path, e.kind.to_string()),
                        }
                    }
                    let offset = match &p.default_timezone {
                        Some(tz) => match Zone::parse(tz) {
                            Ok(z) => z,
                            Err(e) => {
                                cx.err(tz, format!("default_timezone: {e}"));
                                return None;
                            }
                        },
                        None => Zone::default(),
                    };
                    (columns.len() == p.columns.len()).then(|| {
                        let per_record = cx.spec.source.kind.as_str() == "kafka";
                        Box::new(Parse::hl7(columns, offset).per_record(per_record))
                            as Box<dyn Operator>
                    })
                }
                SourceFormat::Avro => {
                    let Some(schema_path) = &p.schema else {
                        cx.err(
                            &p.name,
                            "an avro parse stage needs a reader `schema` (.avsc)",
                        );
                        return None;
                    };
                    let path = cx.spec.resolve(schema_path);
                    let reader = match std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))
                        .and_then(|t| {
                            apache_avro::Schema::parse_str(&t)
                                .map_err(|e| format!("{}: {e}", path.display()))
                        }) {
                        Ok(r) => r,
                        Err(e) => {
                            cx.err(schema_path, e);
                            return None;
                        }
                    };
                    let arrow = match crate::formats::avro::arrow_schema(&reader) {
                        Ok(a) => std::sync::Arc::new(a),
                        Err(e) => {
                            cx.err(schema_path, format!("{}: {e}", path.display()));
                            return None;
                        }
                    };
                    let registry = match registry(cx, &p.name) {
                        Some(r) => r,
                        None => return None,
                    };
                    Some(Box::new(Parse::avro(reader, arrow, registry)) as Box<dyn Operator>)
                }
                SourceFormat::Ndjson | SourceFormat::Csv => {
                    if !p.columns.is_empty() {
                        cx.err(
                            &p.name,
                            "ndjson/csv records are typed by a `schema` file, not `columns`",
                        );
                    }
                    let Some(schema_path) = &p.schema else {
                        cx.err(&p.name, "an ndjson/csv parse stage needs a `schema` file");
                        return None;
                    };
                    match crate::formats::schema::load(&cx.spec.resolve(schema_path)) {
                        Ok(schema) => Some(if format == SourceFormat::Csv {
                            Box::new(Parse::csv(schema)) as Box<dyn Operator>
                        } else {
                            Box::new(Parse::ndjson(schema))
                        }),
                        Err(e) => {
                            cx.err(schema_path, e);
                            None
                        }
                    }
                }
            }
        }
        StageSpec::Map(m) => {
            let planned = match (&m.sql, &m.select) {
                (Some(text), None) => {
                    let (query, file) = if text.trim_end().ends_with(".sql") {
                        let path = cx.spec.resolve(text.trim());
                        match std::fs::read_to_string(&path) {
                            Ok(q) => (q, Some(path)),
                            Err(e) => {
                                cx.err(text, format!("cannot read {}: {e}", path.display()));
                                return None;
                            }
                        }
                    } else {
                        (text.to_string(), None)
                    };
                    match sql.select(&query, input).await {
                        Ok(s) => s,
                        Err(e) => {
                            let origin = file
                                .as_ref()
                                .map(|p| format!(" (in {})", p.display()))
                                .unwrap_or_default();
                            cx.sql_err(text, &query, file.as_deref(), format!("{e}{origin}"));
                            return None;
                        }
                    }
                }
                (None, Some(select)) => {
                    let mut projection = Vec::new();
                    for (name, e) in select {
                        if let Some(p) = expr(cx, sql, name, e, input, false) {
                            projection.push(p);
                        }
                    }
                    if projection.len() != select.len() {
                        return None;
                    }
                    super::sql::PlannedSelect {
                        projection,
                        filter: None,
                    }
                }
                _ => {
                    cx.err(
                        &m.name,
                        "a map stage needs exactly one of `sql` or `select`",
                    );
                    return None;
                }
            };
            match Map::new(planned, input) {
                Ok(op) => Some(Box::new(op)),
                Err(e) => {
                    cx.err(&m.name, e);
                    None
                }
            }
        }
        StageSpec::Enrich(e) => {
            let mut fields = Vec::new();
            for (name, value) in &e.fields {
                if let Some(p) = expr(cx, sql, name, value, input, false) {
                    fields.push(p);
                }
            }
            if fields.len() != e.fields.len() {
                return None;
            }
            match Enrich::new(fields, input) {
                Ok(op) => Some(Box::new(op)),
                Err(msg) => {
                    cx.err(&e.name, msg);
                    None
                }
            }
        }
        StageSpec::Validate(v) => {
            let mut rules = Vec::new();
            for r in &v.rules {
                let severity = match r.severity.as_ref().map(|s| s.as_str()) {
                    None | Some("error") => Severity::Error,
                    Some("warning") | Some("warn") => Severity::Warning,
                    Some(other) => {
                        let at = r.severity.as_ref().expect("some");
                        cx.err(at, format!("unknown severity {other:?} (error, warning)"));
                        continue;
                    }
                };
                if rules.iter().any(|x: &Rule| x.name == r.name.as_str()) {
                    cx.err(
                        &r.name,
                        format!("rule {:?} is declared twice", r.name.as_str()),
                    );
                }
                if let Some(check) = expr(cx, sql, &r.name, &r.check, input, true) {
                    rules.push(Rule {
                        name: r.name.to_string(),
                        message: r
                            .message
                            .clone()
                            .unwrap_or_else(|| format!("failed: {}", r.check.as_str())),
                        severity,
                        check,
                    });
                }
            }
            if rules.len() != v.rules.len() {
                return None;
            }
            match Validate::new(rules, input) {
                Ok(op) => Some(Box::new(op)),
                Err(e) => {
                    cx.err(&v.name, e);
                    None
                }
            }
        }
        StageSpec::Route(r) => {
            let mode = match r.mode.as_ref().map(|m| m.as_str()) {
                None | Some("first_match") => RouteMode::FirstMatch,
                Some("all_matches") => RouteMode::AllMatches,
                Some(other) => {
                    cx.err(
                        r.mode.as_ref().expect("some"),
                        format!("unknown route mode {other:?} (first_match, all_matches)"),
                    );
                    return None;
                }
            };
            let mut routes = Vec::new();
            for route in &r.routes {
                if routes
                    .iter()
                    .any(|x: &PlannedExpr| x.name == route.name.as_str())
                    || r.default
                        .as_ref()
                        .is_some_and(|d| d.as_str() == route.name.as_str())
                {
                    cx.err(
                        &route.name,
                        format!("output {:?} is declared twice", route.name.as_str()),
                    );
                }
                if let Some(p) = expr(cx, sql, &route.name, &route.when, input, true) {
                    routes.push(p);
                }
            }
            if r.routes.is_empty() {
                cx.err(&r.name, "a route stage needs at least one route");
                return None;
            }
            if routes.len() != r.routes.len() {
                return None;
            }
            Some(Box::new(Route::new(
                routes,
                r.default.as_ref().map(|d| d.to_string()),
                mode,
                input,
            )))
        }
        StageSpec::Lookup(l) => {
            let loaded = match (&l.table, &l.postgres) {
                (Some(table), None) => ReferenceTable::load(&cx.spec.resolve(table), &l.key.table)
                    .map_err(|e| (*table.span(), e)),
                (None, Some(pg)) => {
                    let var = pg.url_env.as_ref().map_or("DATABASE_URL", |v| v.as_str());
                    match std::env::var(var) {
                        Ok(url) => ReferenceTable::load_postgres(&url, &pg.query, &l.key.table)
                            .await
                            .map_err(|e| (*pg.query.span(), e)),
                        Err(_) => Err((
                            *pg.url_env.as_ref().map_or(pg.query.span(), |v| v.span()),
                            format!("environment variable {var} (the PostgreSQL URL) is not set"),
                        )),
                    }
                }
                _ => Err((
                    *l.name.span(),
                    "a lookup needs exactly one of `table` (a file) or `postgres`".to_string(),
                )),
            };
            let table = match loaded {
                Ok(t) => t,
                Err((span, e)) => {
                    cx.errors.push(SpecError::at(&cx.spec.file, &span, e));
                    return None;
                }
            };
            let join = match l.join.as_ref().map(|j| j.as_str()) {
                None | Some("left") => JoinKind::Left,
                Some("inner") => JoinKind::Inner,
                Some(other) => {
                    cx.err(
                        l.join.as_ref().expect("some"),
                        format!("unknown join {other:?} (left, inner)"),
                    );
                    return None;
                }
            };
            let on_miss = match l.on_miss.as_ref().map(|m| m.as_str()) {
                None | Some("null") => OnMiss::Null,
                Some("warn") => OnMiss::Warn,
                Some("default") => OnMiss::Default,
                Some("dlq") => OnMiss::DeadLetter,
                Some(other) => {
                    cx.err(
                        l.on_miss.as_ref().expect("some"),
                        format!("unknown on_miss {other:?} (null, warn, default, dlq)"),
                    );
                    return None;
                }
            };
            let mut defaults = Vec::new();
            for (col, value) in &l.defaults {
                match literal(sql, value) {
                    Ok(v) => defaults.push((col.clone(), v)),
                    Err(e) => cx.err(value, e),
                }
            }
            if on_miss == OnMiss::Default && l.defaults.is_empty() {
                cx.err(&l.name, "on_miss: default needs `defaults`");
            }
            match Lookup::new(
                &l.name,
                input.clone(),
                table,
                &l.key.input,
                l.columns.iter().map(|c| c.to_string()).collect(),
                join,
                on_miss,
                defaults,
            ) {
                Ok(op) => Some(Box::new(op)),
                Err(e) => {
                    cx.err(&l.key.input, e);
                    None
                }
            }
        }
    }
}

/// Evaluates a constant SQL expression (a lookup default) once.
fn literal(sql: &SqlPlanner, text: &str) -> Result<ScalarValue, String> {
    let empty: SchemaRef = std::sync::Arc::new(arrow::datatypes::Schema::empty());
    let e = sql.expr("default", text, &empty)?;
    let batch = arrow::record_batch::RecordBatch::try_new_with_options(
        empty,
        vec![],
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(1)),
    )
    .map_err(|e| e.to_string())?;
    let v = e.evaluate(&batch).map_err(|e| e.to_string())?;
    ScalarValue::try_from_array(&v, 0).map_err(|e| e.to_string())
}

/// Whether a file output can be written at `path`: not a directory, not under the kernel's
/// pseudo file systems, and its nearest existing ancestor a directory. (Missing directories
/// are created by the run.)
fn check_output_path(path: &std::path::Path) -> Result<(), String> {
    if ["/proc", "/sys", "/dev"]
        .iter()
        .any(|root| path.starts_with(root))
    {
        return Err(format!(
            "{} is not a place for an output file (a kernel pseudo file system)",
            path.display()
        ));
    }
    if path.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()));
    }
    let mut ancestor = path.parent();
    while let Some(a) = ancestor {
        if a.as_os_str().is_empty() || a.exists() {
            let a = if a.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                a
            };
            if !a.is_dir() {
                return Err(format!(
                    "{} cannot be created: {} is a file, not a directory",
                    path.display(),
                    a.display()
                ));
            }
            if a.metadata().is_ok_and(|m| m.permissions().readonly()) {
                return Err(format!(
                    "{} cannot be written: {} is read-only",
                    path.display(),
                    a.display()
                ));
            }
            return Ok(());
        }
        ancestor = a.parent();
    }
    Ok(())
}

/// The pipeline's schema registry client (one per plan, shared by its stages).
fn registry(cx: &mut Ctx<'_>, at: &Spanned<String>) -> Option<std::sync::Arc<SchemaRegistry>> {
    if let Some(r) = &cx.registry {
        return Some(r.clone());
    }
    let Some(spec) = &cx.spec.schema_registry else {
        cx.err(
            at,
            "avro needs a `schema_registry:` block (url of a Confluent-compatible registry)",
        );
        return None;
    };
    let config = RegistryConfig {
        url: spec.url.to_string(),
        username_env: spec.username_env.as_ref().map(|s| s.to_string()),
        password_env: spec.password_env.as_ref().map(|s| s.to_string()),
    };
    match SchemaRegistry::new(&config) {
        Ok(r) => {
            let r = std::sync::Arc::new(r);
            cx.registry = Some(r.clone());
            Some(r)
        }
        Err(e) => {
            cx.err(&spec.url, e);
            None
        }
    }
}

fn plan_sink(
    cx: &mut Ctx<'_>,
    stages: &[PlannedStage],
    s: &crate::spec::SinkSpec,
    sql: &SqlPlanner,
) -> Option<PlannedSink> {
    let input = match &s.input {
        Some(i) => resolve_upstream(cx, stages, Some(i), stages.len(), "sink")?,
        None => {
            let Some(last) = stages.last() else {
                cx.err(&s.name, "a sink needs stages to read from");
                return None;
            };
            if last.outputs.len() != 1 {
                cx.err(
                    &s.name,
                    format!(
                        "sink {:?} must name its input: one of {}",
                        s.name.as_str(),
                        port_names(last)
                    ),
                );
                return None;
            }
            Upstream::Stage {
                stage: stages.len() - 1,
                port: 0,
            }
        }
    };
    let schema = match input {
        Upstream::Source => {
            cx.err(&s.name, "a sink cannot read raw records: add a parse stage");
            return None;
        }
        Upstream::Stage { stage, port } => stages[stage].outputs[port].1.clone(),
    };
    if s.kind.as_str() == "kafka" {
        let kafka = plan_kafka_sink(cx, s, &schema, sql)?;
        return Some(PlannedSink {
            name: s.name.to_string(),
            input,
            path: None,
            format: SinkFormat::Ndjson,
            schema,
            provenance: s.provenance,
            kafka: Some(kafka),
            http: None,
        });
    }
    if matches!(s.kind.as_str(), "http" | "fhir") {
        let mut http = plan_http_sink(cx, s)?;
        if s.kind.as_str() == "fhir" {
            for col in ["resource", "request_url"] {
                if schema.column_with_name(col).is_none() {
                    cx.err(
                        &s.name,
                        format!(
                            "a fhir sink reads the `{col}` column: its input must be a `fhir` stage"
                        ),
                    );
                }
            }
            for (key, set) in [
                ("method", s.method.is_some()),
                ("secret", s.secret.is_some()),
            ] {
                if set {
                    cx.err(&s.kind, format!("`{key}` is not a fhir sink setting (FHIR decides the method; credentials go in `auth`)"));
                }
            }
            http.fhir = true;
            if let Some(sy) = &s.sync {
                if let Some(t) = s.retry.as_ref().and_then(|r| r.topic.as_ref()) {
                    cx.err(t, "a syncing fhir sink retries in place (each entity under its lease), not on retry topics");
                }
                http.sync = plan_sync(cx, sy);
            }
        } else if s.sync.is_some() {
            cx.err(&s.kind, "`sync` is a fhir sink setting");
        }
        return Some(PlannedSink {
            name: s.name.to_string(),
            input,
            path: None,
            format: SinkFormat::Ndjson,
            schema,
            provenance: s.provenance,
            kafka: None,
            http: Some(http),
        });
    }
    for (key, set) in [
        ("url", s.url.is_some()),
        ("method", s.method.is_some()),
        ("headers", !s.headers.is_empty()),
        ("secret", s.secret.is_some()),
        ("timeout", s.timeout.is_some()),
        ("concurrency", s.concurrency.is_some()),
        ("retry", s.retry.is_some()),
        ("breaker", s.breaker.is_some()),
    ] {
        if set {
            cx.err(&s.kind, format!("`{key}` is an http sink setting"));
        }
    }
    for (key, set) in [
        ("topic", s.topic.is_some()),
        ("key", s.key.is_some()),
        ("subject", s.subject.is_some()),
        ("schema", s.schema.is_some()),
    ] {
        if set {
            cx.err(&s.kind, format!("`{key}` is a kafka sink setting"));
        }
    }
    let format = match s.format.as_ref().map(|f| f.as_str()) {
        None | Some("ndjson") | Some("json") => SinkFormat::Ndjson,
        Some("parquet") => SinkFormat::Parquet,
        Some("arrow") | Some("ipc") => SinkFormat::Arrow,
        Some(other) => {
            cx.err(
                s.format.as_ref().expect("some"),
                format!("unknown sink format {other:?} (ndjson, parquet, arrow)"),
            );
            return None;
        }
    };
    let path = match s.kind.as_str() {
        "file" => match &s.path {
            Some(p) => {
                let path = cx.spec.resolve(p);
                if let Err(e) = check_output_path(&path) {
                    cx.err(p, e);
                    return None;
                }
                Some(path)
            }
            None => {
                cx.err(&s.kind, "a file sink needs a `path`");
                return None;
            }
        },
        "stdout" => None,
        other => {
            cx.err(
                &s.kind,
                format!("unknown sink type {other:?} (file, stdout, kafka, http, fhir)"),
            );
            return None;
        }
    };
    Some(PlannedSink {
        name: s.name.to_string(),
        input,
        path,
        format,
        schema,
        provenance: s.provenance,
        kafka: None,
        http: None,
    })
}

fn plan_http_sink(cx: &mut Ctx<'_>, s: &crate::spec::SinkSpec) -> Option<HttpSinkPlan> {
    use crate::connectors::kafka::SecretRef;
    use crate::resilience::retry::{Backoff, RetryPolicy};
    for (key, set) in [
        ("path", s.path.is_some()),
        ("topic", s.topic.is_some()),
        ("key", s.key.is_some()),
        ("subject", s.subject.is_some()),
        ("schema", s.schema.is_some()),
    ] {
        if set {
            cx.err(&s.kind, format!("`{key}` is not an http sink setting"));
        }
    }
    if let Some(f) = &s.format
        && !matches!(f.as_str(), "json" | "ndjson")
    {
        cx.err(f, "http sinks send json");
    }
    let Some(url) = &s.url else {
        cx.err(
            &s.kind,
            format!(
                "a{} sink needs a `url`",
                if s.kind.as_str() == "fhir" {
                    " fhir"
                } else {
                    "n http"
                }
            ),
        );
        return None;
    };
    let url_text = match url.strip_prefix("env:") {
        Some(name) => std::env::var(name).unwrap_or_default(),
        None => url.to_string(),
    };
    if let Err(e) = reqwest::Url::parse(&url_text) {
        cx.err(url, format!("not a URL ({e})"));
    }
    let method = s
        .method
        .as_ref()
        .map(|m| m.to_ascii_uppercase())
        .unwrap_or_else(|| "POST".into());
    if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        cx.err(
            s.method.as_ref().expect("set"),
            "method is POST, PUT or PATCH",
        );
    }
    let headers: Vec<(String, HeaderValue)> = s
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), HeaderValue::parse(v)))
        .collect();
    let secret = match &s.secret {
        Some(v) => match SecretRef::parse(v) {
            Ok(r) => Some(r),
            Err(e) => {
                cx.err(v, e);
                None
            }
        },
        None => None,
    };
    let mut dur = |v: &Option<Spanned<String>>, default: Duration| duration_or(cx, v, default);
    let timeout = dur(&s.timeout, Duration::from_secs(30));
    let mut retry = RetryPolicy {
        jitter: 0.2,
        ..RetryPolicy::default()
    };
    let mut retry_topic = None;
    if let Some(r) = &s.retry {
        retry.base = dur(&r.base, retry.base);
        retry.max_delay = dur(&r.max_delay, retry.max_delay);
        retry.max_outage = dur(&r.max_outage, retry.max_outage);
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
            if cx.spec.kafka.is_none() {
                cx.err(t, "retry topics need a `kafka:` connection block");
            }
            // The worker dead-letters exhausted records itself: it needs the DLQ topic.
            if cx
                .spec
                .dlq
                .as_ref()
                .and_then(|d| d.topic.as_ref())
                .is_none()
            {
                cx.err(
                    t,
                    "retry topics need a dead-letter topic (`dlq: {topic: ...}`)",
                );
            }
            retry_topic = Some(t.to_string());
        }
    }
    let breaker = s.breaker.as_ref().map(|b| plan_breaker(cx, b));
    let (auth, tls) = plan_auth(cx, s);
    let concurrency = s.concurrency.as_ref().map(|c| **c).unwrap_or(8);
    if let Some(c) = &s.concurrency
        && (**c == 0 || **c > 1024)
    {
        cx.err(c, "concurrency is between 1 and 1024");
    }
    Some(HttpSinkPlan {
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
        sync: None,
        auth,
        tls,
    })
}

fn plan_sync(cx: &mut Ctx<'_>, sy: &crate::spec::SyncSpec) -> Option<SyncPlan> {
    use crate::sync::{ConflictPolicy, Side};
    let name = cx.spec.name.to_string();
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
            SyncStatePlan::Sqlite(cx.spec.resolve(p))
        }
        None => SyncStatePlan::Sqlite(cx.spec.resolve(&format!("{name}.sync.db"))),
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
    let lease = duration_or(cx, &sy.lease, Duration::from_secs(30));
    let events = sy.events.as_ref();
    if let Some(e) = events {
        for (key, v) in [("webhook", &e.webhook), ("secret", &e.secret)] {
            if let Some(v) = v {
                cx.err(v, format!("`{key}` is not a sync events setting"));
            }
        }
        if let Some(t) = &e.topic
            && cx.spec.kafka.is_none()
        {
            cx.err(t, "a sync events topic needs a `kafka:` connection block");
        }
    }
    Some(SyncPlan {
        state,
        policy,
        lease,
        events_path: match events.and_then(|e| e.path.as_ref()) {
            Some(p) => cx.spec.resolve(p),
            None => cx.spec.resolve(&format!("{name}.sync_events.ndjson")),
        },
        events_topic: events.and_then(|e| e.topic.as_ref()).map(|t| t.to_string()),
    })
}

/// `auth:` and `tls:` of an http or fhir sink.
fn plan_auth(cx: &mut Ctx<'_>, s: &crate::spec::SinkSpec) -> (AuthPlan, TlsPlan) {
    let tls = match &s.tls {
        Some(t) => {
            if t.cert.is_some() != t.key.is_some() {
                let at = t.cert.as_ref().or(t.key.as_ref()).expect("one is set");
                cx.err(at, "mutual TLS needs both `cert` and `key`");
            }
            TlsPlan {
                ca: t.ca.as_ref().map(|p| cx.spec.resolve(p)),
                cert: t.cert.as_ref().map(|p| cx.spec.resolve(p)),
                key: t.key.as_ref().map(|p| cx.spec.resolve(p)),
            }
        }
        None => TlsPlan::default(),
    };
    let Some(a) = &s.auth else {
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
    ];
    let (needed, allowed): (&[&str], &[&str]) = match a.kind.as_str() {
        "basic" => (&["user", "password"], &[]),
        "bearer" => (&["token"], &[]),
        "api_key" => (&["key"], &["header"]),
        "oauth2" => (&["token_url", "client_id", "client_secret"], &["scope"]),
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
    let secret = |cx: &mut Ctx<'_>, v: &Option<Spanned<String>>| {
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
            if let Err(e) = reqwest::Url::parse(&token_url) {
                cx.err(&token_url, format!("not a URL ({e})"));
            }
            secret(cx, &a.client_secret).map(|client_secret| AuthPlan::OAuth2 {
                token_url: token_url.to_string(),
                client_id: plain(&a.client_id),
                client_secret,
                scope: a.scope.as_ref().map(|s| s.to_string()),
            })
        }
    };
    (auth.unwrap_or_default(), tls)
}

/// A duration setting, or `default` when absent (a bad value is reported at its place).
pub(super) fn duration_or(
    cx: &mut Ctx<'_>,
    v: &Option<Spanned<String>>,
    default: Duration,
) -> Duration {
    match v {
        Some(t) => match crate::spec::parse_duration(t) {
            Ok(d) => d,
            Err(e) => {
                cx.err(t, e);
                default
            }
        },
        None => default,
    }
}

fn plan_breaker(
    cx: &mut Ctx<'_>,
    b: &crate::spec::BreakerSpec,
) -> crate::resilience::breaker::BreakerConfig {
    use crate::resilience::breaker::{BreakerConfig, SlidingWindow};
    let mut c = BreakerConfig::default();
    let mut dur = |v: &Option<Spanned<String>>, default: Duration| duration_or(cx, v, default);
    c.slow_call_duration = dur(&b.slow_call, c.slow_call_duration);
    c.wait_in_open = dur(&b.wait, c.wait_in_open);
    c.max_wait_in_open = dur(&b.max_wait, c.max_wait_in_open.max(c.wait_in_open));
    c.max_wait_in_half_open = dur(&b.half_open_max_wait, c.max_wait_in_half_open);
    if let Some(w) = &b.window {
        match w.parse::<usize>() {
            Ok(n) if n > 0 => c.window = SlidingWindow::Count(n),
            _ => match crate::spec::parse_duration(w) {
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

fn plan_kafka_sink(
    cx: &mut Ctx<'_>,
    s: &crate::spec::SinkSpec,
    schema: &SchemaRef,
    sql: &SqlPlanner,
) -> Option<KafkaSinkPlan> {
    if cx.spec.kafka.is_none() {
        cx.err(&s.kind, "a kafka sink needs a `kafka:` connection block");
    }
    if let Some(p) = &s.path {
        cx.err(p, "a kafka sink writes a `topic`, not a `path`");
    }
    let Some(topic) = &s.topic else {
        cx.err(&s.kind, "a kafka sink needs a `topic`");
        return None;
    };
    let avro = match s.format.as_ref().map(|f| f.as_str()) {
        None | Some("json") | Some("ndjson") => false,
        Some("avro") => true,
        Some(other) => {
            cx.err(
                s.format.as_ref().expect("some"),
                format!("kafka sinks write json or avro, not {other:?}"),
            );
            return None;
        }
    };
    let key = match &s.key {
        Some(k) => match sql.expr(&format!("{}.key", s.name.as_str()), k, schema) {
            Ok(e) => Some(e),
            Err(e) => {
                cx.err(k, e);
                return None;
            }
        },
        None => None,
    };
    let avro_schema = match &s.schema {
        Some(p) if avro => {
            let path = cx.spec.resolve(p);
            match std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|t| {
                    apache_avro::Schema::parse_str(&t)
                        .map(|_| t)
                        .map_err(|e| format!("{}: {e}", path.display()))
                }) {
                Ok(t) => Some(t),
                Err(e) => {
                    cx.err(p, e);
                    return None;
                }
            }
        }
        Some(p) => {
            cx.err(p, "`schema` is for avro sinks");
            None
        }
        None => None,
    };
    if avro && cx.spec.schema_registry.is_none() {
        cx.err(&s.kind, "an avro sink needs a `schema_registry:` block");
    }
    Some(KafkaSinkPlan {
        topic: topic.to_string(),
        key,
        avro,
        subject: s.subject.as_ref().map(|x| x.to_string()),
        avro_schema,
    })
}

/// Every stage output must be read by a later stage or a sink: rows sent nowhere would be lost.
fn check_reachability(cx: &mut Ctx<'_>, stages: &[PlannedStage], sinks: &[PlannedSink]) {
    for (i, stage) in stages.iter().enumerate() {
        for (port, (name, _)) in stage.outputs.iter().enumerate() {
            let up = Upstream::Stage { stage: i, port };
            let read = stages.iter().any(|s| s.input == up) || sinks.iter().any(|s| s.input == up);
            if !read {
                let at = cx.spec.stages[i].name().clone();
                let what = if name.is_empty() {
                    format!("the output of stage {:?}", stage.name)
                } else {
                    format!("output {:?} of stage {:?}", name, stage.name)
                };
                cx.err(
                    &at,
                    format!("{what} goes nowhere: no stage or sink reads it"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_names_are_one_path_component() {
        for ok in ["adt_to_patient", "adt-kafka.v2", "A1"] {
            assert_eq!(check_pipeline_name(ok), Ok(()), "{ok}");
        }
        let long = "n".repeat(129);
        for bad in [
            "",
            "../escape",
            "a/b",
            "..",
            ".hidden",
            "a..b",
            "a b",
            "x\\y",
            &long,
        ] {
            assert!(check_pipeline_name(bad).is_err(), "{bad:?}");
        }
    }
}
