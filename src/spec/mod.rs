//! The pipeline spec: what a `pipelines/*.yaml` file says, with the YAML position of every
//! value kept so that any later error (unknown column, bad SQL, missing file) can name the
//! `file:line:column` it comes from.
//!
//! Loading is two-step: the YAML is read into a marked node tree, then each component is
//! deserialized into the struct for its `type` (`deny_unknown_fields` everywhere, so a typo in
//! a key is an error, not a silently ignored setting).

pub mod error;
pub mod schema;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use marked_yaml::{LoadError, LoaderOptions, Node};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;

pub use crate::config::{Spanned, parse_duration};
pub use crate::connectors::registry::{SinkConfig, SourceConfig};
pub use error::{SpecError, SpecErrors, SpecLocation};

/// `source:`: its `type` and the typed config of the connector it names.
#[derive(Debug)]
pub struct SourceSpec {
    pub kind: Spanned<String>,
    pub config: SourceConfig,
}

impl SourceSpec {
    /// How bytes are framed into records (every source has a `format`).
    pub fn format(&self) -> &Spanned<String> {
        self.config.format()
    }

    /// The records it produces: `format` itself, except that an HTTP source's `json` and
    /// `fhir` bodies become one JSON record per object or resource.
    pub fn record_format(&self) -> Result<crate::formats::framing::SourceFormat, String> {
        self.config.record_format()
    }
}

/// One of `sinks:`: the keys every sink has, and the typed config of its connector.
#[derive(Debug)]
pub struct SinkSpec {
    pub name: Spanned<String>,
    /// `stage` or `stage.output` (default: the last stage).
    pub input: Option<Spanned<String>>,
    pub kind: Spanned<String>,
    pub config: SinkConfig,
}

/// A loaded pipeline file.
#[derive(Debug)]
pub struct PipelineSpec {
    /// The YAML file.
    pub file: PathBuf,
    /// Relative paths in the spec resolve against this (the YAML file's directory).
    pub base_dir: PathBuf,
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub integration: IntegrationSpec,
    pub source: SourceSpec,
    pub batch: BatchSpec,
    pub stages: Vec<StageSpec>,
    pub sinks: Vec<SinkSpec>,
    pub dlq: Option<DlqSpec>,
    /// Kafka connection shared by Kafka sources, sinks and the DLQ topic.
    pub kafka: Option<KafkaSpec>,
    /// Confluent-compatible schema registry (Avro parse stages and sinks).
    pub schema_registry: Option<RegistrySpec>,
    /// Windowed aggregations over any stream or over the sinks' outcomes.
    pub windows: Vec<WindowSpec>,
    /// Where window results, breaker events and alerts go; the seed's alert thresholds.
    pub monitoring: Option<MonitoringSpec>,
    pub tests: Vec<TestCaseSpec>,
}

/// How to reach the Kafka cluster. Secrets never live here: `secrets` names environment
/// variables or files that hold them, and `PLEXUS_KAFKA_BROKERS` overrides `brokers`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// `host:port[,host:port]`.
    pub brokers: Option<Spanned<String>>,
    /// librdkafka client properties (`security.protocol`, `sasl.mechanism`, ...).
    #[serde(default)]
    pub properties: IndexMap<String, Spanned<String>>,
    /// Property → where its value comes from: `env:NAME` or `file:/run/secrets/x`.
    #[serde(default)]
    pub secrets: IndexMap<String, Spanned<String>>,
    /// How long the brokers may stay unreachable before the run fails (exit 1). Default:
    /// no limit — a stream rides out a broker restart, saying so once.
    pub max_outage: Option<Spanned<String>>,
}

/// A schema registry: its URL, and credentials from the environment.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    pub url: Spanned<String>,
    /// Environment variables holding basic-auth credentials.
    pub username_env: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
}

/// The seed's IntegrationConfiguration, as far as a pipeline needs it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSpec {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub facility: Option<String>,
    pub system: Option<SystemSpec>,
}

/// The external system: type (ehr, lis, ris, ...), name and vendor.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
    pub vendor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Header {
    name: Spanned<String>,
    description: Option<String>,
    integration: IntegrationSpec,
    #[serde(default)]
    batch: Option<BatchSpec>,
    // Read per component type afterwards; named here so that `deny_unknown_fields` knows them.
    #[allow(dead_code)]
    #[schemars(skip)]
    source: IgnoredAny,
    #[allow(dead_code)]
    #[schemars(skip)]
    stages: IgnoredAny,
    #[allow(dead_code)]
    #[schemars(skip)]
    sinks: IgnoredAny,
    #[serde(default)]
    dlq: Option<DlqSpec>,
    #[serde(default)]
    kafka: Option<KafkaSpec>,
    #[serde(default)]
    schema_registry: Option<RegistrySpec>,
    #[serde(default)]
    windows: Vec<WindowSpec>,
    #[serde(default)]
    monitoring: Option<MonitoringSpec>,
    #[serde(default)]
    tests: Vec<TestCaseSpec>,
}

/// A windowed aggregation: `input` is a stage output (any stream) or `outcomes` (one row
/// per sink call: `integration, sink, record, attempt, status, http_status, latency_ms,
/// at`). Every expression is SQL over the input's columns.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub name: Spanned<String>,
    pub input: Spanned<String>,
    /// Grouping expressions; each becomes a column of the window rows (default: none, one
    /// group per window).
    #[serde(default)]
    pub key: IndexMap<String, Spanned<String>>,
    /// Event time (a timestamp or epoch milliseconds); omitted: processing time.
    pub time: Option<Spanned<String>>,
    pub size: Spanned<String>,
    /// Hopping windows: a new window every `slide` (default: `size`, tumbling).
    pub slide: Option<Spanned<String>>,
    /// Bounded out-of-orderness of event time (the watermark lag).
    pub out_of_orderness: Option<Spanned<String>>,
    /// How long after the watermark passed a window's end late rows still update it.
    pub allowed_lateness: Option<Spanned<String>>,
    /// A row counts as a failure when this is true (outcomes default: `status <> 'delivered'`).
    pub failed: Option<Spanned<String>>,
    /// Latency of the row in milliseconds (outcomes default: `latency_ms`).
    pub latency_ms: Option<Spanned<String>>,
    /// Data-quality findings on the row (default: entries of `_warnings` when present).
    pub warnings: Option<Spanned<String>>,
    /// Trips a sink's circuit breaker when true for a window's running row.
    pub breaker: Option<WindowBreakerSpec>,
    /// Alert rules over each window row.
    #[serde(default)]
    pub alerts: Vec<AlertRuleSpec>,
}

/// `breaker: {sink: ehr, trip: "error_rate > 0.5 AND total >= 20"}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowBreakerSpec {
    pub sink: Spanned<String>,
    pub trip: Spanned<String>,
}

/// `{name: slow, when: "latency_p95_ms > 2000", severity: warning}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleSpec {
    pub name: Spanned<String>,
    pub when: Spanned<String>,
    /// `warning` (default) or `critical`.
    pub severity: Option<Spanned<String>>,
}

/// The pipeline's monitoring outputs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSpec {
    /// The seed's `monitoring.alertThresholds`, turned into alert rules on every window.
    pub thresholds: Option<ThresholdsSpec>,
    /// Window rows: a directory of Parquet files (`window=/date=/hour=`) and/or a topic.
    pub metrics: Option<OutputSpec>,
    /// Circuit-breaker state changes (keyed by integration/sink on a topic).
    pub breaker_events: Option<OutputSpec>,
    /// Alert events.
    pub alerts: Option<OutputSpec>,
    /// Where window state is checkpointed: a file path (default: next to the metrics) or
    /// `postgres` (connection URL from `DATABASE_URL`).
    pub state: Option<Spanned<String>>,
}

/// The seed's `alertThresholds`: response time, error rate, data quality.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsSpec {
    /// Average latency above this raises a warning (`integration_performance`).
    pub response_time: Option<Spanned<String>>,
    /// Error rate (0–1) above this raises a critical alert (`integration_reliability`).
    pub error_rate: Option<Spanned<f64>>,
    /// Data-quality rate (0–1) below this raises a warning (`data_quality`).
    pub data_quality: Option<Spanned<f64>>,
}

/// A monitoring output: a local path, a Kafka topic, and (alerts) a webhook.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub path: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
    /// Alerts only: POSTed as signed JSON (`env:`/`file:` for the secret).
    pub webhook: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
}

/// How rows are grouped into Arrow batches.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Signed so that `-1` reads, and is refused with the allowed range (not a parse error).
    #[serde(default = "default_max_rows")]
    pub max_rows: Spanned<i64>,
    /// Close a batch at this many bytes of records (default 512 KiB for files, 8 MiB for
    /// streams).
    pub max_bytes: Option<Spanned<i64>>,
    /// e.g. `200ms`, `1s`.
    #[serde(default)]
    pub max_delay: Option<Spanned<String>>,
}

fn default_max_rows() -> Spanned<i64> {
    Spanned::new(marked_yaml::Span::new_blank(), 8192)
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            max_rows: default_max_rows(),
            max_bytes: None,
            max_delay: None,
        }
    }
}

/// One stage of the flow.
// Built once per pipeline load: variant sizes do not matter, direct field access does.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum StageSpec {
    Parse(ParseStage),
    Map(MapStage),
    Lookup(LookupStage),
    Validate(ValidateStage),
    Enrich(EnrichStage),
    Route(RouteStage),
    Fhir(FhirStage),
}

impl StageSpec {
    pub fn name(&self) -> &Spanned<String> {
        match self {
            StageSpec::Parse(s) => &s.name,
            StageSpec::Map(s) => &s.name,
            StageSpec::Lookup(s) => &s.name,
            StageSpec::Validate(s) => &s.name,
            StageSpec::Enrich(s) => &s.name,
            StageSpec::Route(s) => &s.name,
            StageSpec::Fhir(s) => &s.name,
        }
    }

    /// The upstream this stage reads (`stage` or `stage.output`); None = the previous stage.
    pub fn input(&self) -> Option<&Spanned<String>> {
        match self {
            StageSpec::Parse(s) => s.input.as_ref(),
            StageSpec::Map(s) => s.input.as_ref(),
            StageSpec::Lookup(s) => s.input.as_ref(),
            StageSpec::Validate(s) => s.input.as_ref(),
            StageSpec::Enrich(s) => s.input.as_ref(),
            StageSpec::Route(s) => s.input.as_ref(),
            StageSpec::Fhir(s) => s.input.as_ref(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StageSpec::Parse(_) => "parse",
            StageSpec::Map(_) => "map",
            StageSpec::Lookup(_) => "lookup",
            StageSpec::Validate(_) => "validate",
            StageSpec::Enrich(_) => "enrich",
            StageSpec::Route(_) => "route",
            StageSpec::Fhir(_) => "fhir",
        }
    }
}

/// Decodes records into columns.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParseStage {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub input: Option<Spanned<String>>,
    /// `hl7`, `ndjson` or `csv`.
    pub format: Spanned<String>,
    /// HL7: the columns to extract by path.
    #[serde(default)]
    pub columns: Vec<ColumnDecl>,
    /// NDJSON/CSV: an Arrow schema file (JSON), relative to the pipeline file.
    pub schema: Option<Spanned<String>>,
    /// HL7: where timestamps sent without an offset are: an IANA zone (`America/Chicago`,
    /// DST-aware) or a fixed offset (`-0500`); default UTC.
    pub default_timezone: Option<Spanned<String>>,
}

/// HL7v2 → FHIR R4 per the v2-to-FHIR IG: reads the source's raw HL7 records.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FhirStage {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub input: Option<Spanned<String>>,
    /// `transaction` or `batch`: one Bundle row per message instead of a row per resource.
    pub bundle: Option<Spanned<String>>,
    /// Assigning-authority namespace → identifier system URI.
    #[serde(default)]
    pub systems: IndexMap<String, Spanned<String>>,
    /// Where times sent without an offset are: an IANA zone (`America/Chicago`, DST-aware) or
    /// a fixed offset (`-0500`); default UTC. Resources that needed it are tagged.
    pub default_timezone: Option<Spanned<String>>,
    /// `base` (default: R4 and the IG's maps) or `us-core` (US Core 6.1.0: race and
    /// ethnicity extensions from PID-10/22, `meta.profile` on conforming Patients).
    pub profile: Option<Spanned<String>>,
}

/// An HL7 column: `{name: mrn, path: PID-3.1, type: utf8}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnDecl {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    #[serde(rename = "type")]
    pub data_type: Option<Spanned<String>>,
}

/// A SQL projection: `sql:` (inline `SELECT ... FROM input` or a `.sql` file) or `select:`
/// (`name: expression` pairs, in order).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MapStage {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub input: Option<Spanned<String>>,
    pub sql: Option<Spanned<String>>,
    pub select: Option<IndexMap<String, Spanned<String>>>,
}

/// A join with a reference table.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupStage {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub input: Option<Spanned<String>>,
    /// CSV or Parquet file, relative to the pipeline file.
    pub table: Option<Spanned<String>>,
    /// Or a PostgreSQL query (loaded once at startup).
    pub postgres: Option<PostgresTable>,
    /// Input column and table column to match.
    pub key: LookupKey,
    /// Table columns to add (default: all but the key).
    #[serde(default)]
    pub columns: Vec<Spanned<String>>,
    /// `left` (default) or `inner`.
    pub join: Option<Spanned<String>>,
    /// What a miss does: `null` (default for left), `warn` (adds to `_warnings`), `default`
    /// (fills `defaults`), `dlq` (dead-letters the row).
    pub on_miss: Option<Spanned<String>>,
    /// SQL literal per column for `on_miss: default`.
    #[serde(default)]
    pub defaults: IndexMap<String, Spanned<String>>,
}

/// A reference table read from PostgreSQL.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresTable {
    /// Environment variable holding the connection URL (default `DATABASE_URL`): credentials
    /// never live in pipeline files.
    pub url_env: Option<Spanned<String>>,
    /// The rows to load, e.g. `SELECT code, name FROM facilities WHERE active`.
    pub query: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupKey {
    pub input: Spanned<String>,
    pub table: Spanned<String>,
}

/// Named SQL predicates.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateStage {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub input: Option<Spanned<String>>,
    pub rules: Vec<RuleSpec>,
}

/// A rule: the row is valid when `check` is true (NULL counts as a failure).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: Spanned<String>,
    pub check: Spanned<String>,
    pub message: Option<String>,
    /// `error` (row to the DLQ, default) or `warning` (row goes on, noted in `_warnings`).
    pub severity: Option<Spanned<String>>,
}

/// Computed columns added to the row (the seed's `calculate`/`enrich` rules).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichStage {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub input: Option<Spanned<String>>,
    pub fields: IndexMap<String, Spanned<String>>,
}

/// Rows to named outputs by ordered predicates.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteStage {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub input: Option<Spanned<String>>,
    /// `first_match` (default) or `all_matches`.
    pub mode: Option<Spanned<String>>,
    pub routes: Vec<RouteSpec>,
    /// Output for rows no route takes; without one they are counted as filtered.
    pub default: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: Spanned<String>,
    pub when: Spanned<String>,
}

/// The dead-letter output: an NDJSON file (original record, stage, rule, reason, provenance)
/// or a Kafka topic (original bytes unchanged, the rest in headers).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqSpec {
    pub path: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
}

/// A test case: input records and what each sink (and the DLQ) must receive.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCaseSpec {
    pub name: Spanned<String>,
    /// The raw input, in the source's format.
    pub input: String,
    /// Sink name (or `dlq`) → expected rows, each a subset of the row's columns.
    #[serde(default)]
    pub expect: IndexMap<String, Vec<IndexMap<String, serde_json::Value>>>,
}

impl PipelineSpec {
    /// Reads and structurally checks a pipeline file (types of keys and values; semantic checks
    /// such as columns and SQL are the planner's).
    pub fn load(path: &Path) -> Result<PipelineSpec, SpecErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SpecError::at_line(path, 1, 1, format!("cannot read pipeline file: {e}"))
        })?;
        let mut spec = Self::parse(path, &text)?;
        // Sibling `<name>.test.yaml` adds test cases.
        let tests = path.with_extension("test.yaml");
        if tests.exists() {
            spec.tests.extend(load_tests(&tests)?);
        }
        Ok(spec)
    }

    /// Parses pipeline YAML; `path` is used for locations and relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<PipelineSpec, SpecErrors> {
        let root = marked_yaml::parse_yaml_with_options(0, text, yaml_options())
            .map_err(|e| load_error(path, e))?;
        let header: Header = from_node(path, &root)?;
        let map = root.as_mapping().expect("a parsed header is a mapping");
        let mut errors = Vec::new();

        let source_node = map.get_node("source").expect("header has source");
        let source = source_from_node(path, source_node)
            .map_err(|e| errors.extend(e.0))
            .ok();

        let mut stages = Vec::new();
        match map.get_node("stages").and_then(Node::as_sequence) {
            Some(seq) => {
                for node in seq.iter() {
                    match stage_from_node(path, node) {
                        Ok(s) => stages.push(s),
                        Err(e) => errors.extend(e.0),
                    }
                }
            }
            None => errors.push(SpecError::at(
                path,
                map.get_node("stages").expect("header has stages").span(),
                "`stages` must be a list",
            )),
        }

        let mut sinks = Vec::new();
        match map.get_node("sinks").and_then(Node::as_sequence) {
            Some(seq) => {
                for node in seq.iter() {
                    match sink_from_node(path, node) {
                        Ok(s) => sinks.push(s),
                        Err(e) => errors.extend(e.0),
                    }
                }
            }
            None => errors.push(SpecError::at(
                path,
                map.get_node("sinks").expect("header has sinks").span(),
                "`sinks` must be a list",
            )),
        }
        if !errors.is_empty() {
            return Err(SpecErrors(errors));
        }
        Ok(PipelineSpec {
            file: path.to_path_buf(),
            base_dir: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            name: header.name,
            description: header.description,
            integration: header.integration,
            source: source.expect("no errors means the source parsed"),
            batch: header.batch.unwrap_or_default(),
            stages,
            sinks,
            dlq: header.dlq,
            kafka: header.kafka,
            schema_registry: header.schema_registry,
            windows: header.windows,
            monitoring: header.monitoring,
            tests: header.tests,
        })
    }

    /// Resolves a path written in the spec (relative to the pipeline file; `-` stays stdin).
    pub fn resolve(&self, p: &str) -> PathBuf {
        crate::config::resolve(&self.base_dir, p)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TestFile {
    tests: Vec<TestCaseSpec>,
}

fn load_tests(path: &Path) -> Result<Vec<TestCaseSpec>, SpecErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SpecError::at_line(path, 1, 1, format!("cannot read test file: {e}")))?;
    let root = marked_yaml::parse_yaml_with_options(0, &text, yaml_options())
        .map_err(|e| load_error(path, e))?;
    Ok(from_node::<TestFile>(path, &root)?.tests)
}

/// A repeated key is a mistake in a pipeline (the second would silently win).
fn yaml_options() -> LoaderOptions {
    LoaderOptions::default().error_on_duplicate_keys(true)
}

fn stage_from_node(path: &Path, node: &Node) -> Result<StageSpec, SpecErrors> {
    let Some(kind) = node.as_mapping().and_then(|m| m.get_scalar("type")) else {
        return Err(SpecError::at(path, node.span(), "a stage needs a `type`").into());
    };
    Ok(match kind.as_str() {
        "parse" => StageSpec::Parse(from_node(path, node)?),
        "map" => StageSpec::Map(from_node(path, node)?),
        "lookup" => StageSpec::Lookup(from_node(path, node)?),
        "validate" => StageSpec::Validate(from_node(path, node)?),
        "enrich" => StageSpec::Enrich(from_node(path, node)?),
        "route" => StageSpec::Route(from_node(path, node)?),
        "fhir" => StageSpec::Fhir(from_node(path, node)?),
        other => {
            return Err(SpecError::at(
                path,
                kind.span(),
                format!(
                    "unknown stage type {other:?} (parse, map, lookup, validate, enrich, route, fhir)"
                ),
            )
            .into());
        }
    })
}

/// The keys every sink has; the rest is its connector's.
#[derive(Deserialize)]
struct SinkCommon {
    name: Spanned<String>,
    input: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
}

/// A copy of the mapping `node` with only the `keys` (`keep`), or all but them: the common
/// keys of an entry are read apart from its connector's own.
fn keys(node: &Node, keys: &[&str], keep: bool) -> Node {
    let mut node = node.clone();
    if let Some(m) = node.as_mapping_mut() {
        m.retain(|k, _| keys.contains(&k.as_str()) == keep);
    }
    node
}

fn source_from_node(path: &Path, node: &Node) -> Result<SourceSpec, SpecErrors> {
    let Some(kind) = node.as_mapping().and_then(|m| m.get_scalar("type")) else {
        return Err(SpecError::at(path, node.span(), "the source needs a `type`").into());
    };
    let kind = Spanned::new(*kind.span(), kind.as_str().to_string());
    let Some(connector) = crate::connectors::registry::source(&kind) else {
        return Err(SpecError::at(
            path,
            kind.span(),
            format!(
                "unknown source type {:?} ({})",
                kind.as_str(),
                crate::connectors::registry::kinds(crate::connectors::registry::SOURCES)
            ),
        )
        .into());
    };
    let config = read_config(path, node, &["type"], |n| connector.read(n))?;
    Ok(SourceSpec { kind, config })
}

fn sink_from_node(path: &Path, node: &Node) -> Result<SinkSpec, SpecErrors> {
    if node
        .as_mapping()
        .is_some_and(|m| m.get_node("type").is_none())
    {
        return Err(SpecError::at(path, node.span(), "a sink needs a `type`").into());
    }
    let common: SinkCommon = from_node(path, &keys(node, &["name", "input", "type"], true))?;
    let Some(connector) = crate::connectors::registry::sink(&common.kind) else {
        return Err(SpecError::at(
            path,
            common.kind.span(),
            format!(
                "unknown sink type {:?} ({})",
                common.kind.as_str(),
                crate::connectors::registry::kinds(crate::connectors::registry::SINKS)
            ),
        )
        .into());
    };
    let config = read_config(path, node, &["name", "input", "type"], |n| {
        connector.read(n)
    })?;
    Ok(SinkSpec {
        name: common.name,
        input: common.input,
        kind: common.kind,
        config,
    })
}

/// A connector's typed config from `node` less the `common` keys.
fn read_config<T>(
    path: &Path,
    node: &Node,
    common: &[&str],
    read: impl Fn(&Node) -> Result<T, marked_yaml::FromNodeError>,
) -> Result<T, SpecErrors> {
    let rest = keys(node, common, false);
    read(&rest).map_err(|e| located(path, &rest, e))
}

fn from_node<T: serde::de::DeserializeOwned>(path: &Path, node: &Node) -> Result<T, SpecErrors> {
    marked_yaml::from_node(node).map_err(|e| located(path, node, e))
}

/// A deserialization error at its place (or the node's, when it has none).
fn located(path: &Path, node: &Node, e: marked_yaml::FromNodeError) -> SpecErrors {
    let (line, column) = e
        .start_mark()
        .map(|m| (m.line(), m.column()))
        .or_else(|| node.span().start().map(|m| (m.line(), m.column())))
        .unwrap_or((1, 1));
    let message = match e.path() {
        Some(p) if !p.is_empty() && p != "." => format!("{p}: {}", *e),
        _ => e.to_string(),
    };
    SpecError::at_line(path, line, column, message).into()
}

fn load_error(path: &Path, e: LoadError) -> SpecErrors {
    let text = e.to_string();
    // LoadError's Display carries the position; keep it as the message and point at line 1
    // only when no marker is available.
    let marker = match &e {
        LoadError::TopLevelMustBeMapping(m)
        | LoadError::TopLevelMustBeSequence(m)
        | LoadError::UnexpectedAnchor(m)
        | LoadError::MappingKeyMustBeScalar(m)
        | LoadError::UnexpectedTag(m)
        | LoadError::ScanError(m, _) => Some(*m),
        LoadError::DuplicateKey(inner) => inner.key.span().start().copied(),
    };
    let (line, column) = marker.map(|m| (m.line(), m.column())).unwrap_or((1, 1));
    SpecError::at_line(path, line, column, text).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
name: t
integration: {id: x}
source: {type: file, path: in.hl7, format: hl7}
stages:
  - name: parse
    type: parse
    format: hl7
    columns:
      - {name: mrn, path: PID-3.1}
  - name: checks
    type: validate
    rules:
      - {name: mrn_present, check: mrn IS NOT NULL}
sinks:
  - {name: out, type: stdout}
";

    #[test]
    fn loads_a_minimal_pipeline() {
        let spec = PipelineSpec::parse(Path::new("p/t.yaml"), MINIMAL).unwrap();
        assert_eq!(*spec.name, "t");
        assert_eq!(spec.stages.len(), 2);
        assert_eq!(spec.stages[1].kind(), "validate");
        assert_eq!(*spec.batch.max_rows, 8192);
        assert_eq!(spec.resolve("in.hl7"), Path::new("p/in.hl7"));
        let StageSpec::Validate(v) = &spec.stages[1] else {
            panic!()
        };
        assert_eq!(v.rules[0].check.span().start().unwrap().line(), 13);
    }

    #[test]
    fn unknown_keys_and_types_are_located() {
        let bad = MINIMAL.replace("format: hl7\n    columns", "format: hl7\n    colums");
        let e = PipelineSpec::parse(Path::new("t.yaml"), &bad).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("t.yaml:"), "{text}");
        assert!(text.contains("colums"), "{text}");

        let bad = MINIMAL.replace("type: validate", "type: validat");
        let e = PipelineSpec::parse(Path::new("t.yaml"), &bad).unwrap_err();
        assert_eq!(e.0[0].location.line, 11, "{e}");
        assert!(e.0[0].message.contains("unknown stage type"), "{e}");
    }
}
