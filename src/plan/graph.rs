//! Spec → graph of operators. Each stage is planned against the schema its upstream produces,
//! so an unknown column, a non-boolean condition or a type mismatch is found here, before any
//! record is read, and reported at the YAML (or SQL file) position it comes from.

use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::SchemaRef;

use crate::config::{PlanCx, Spanned};
use crate::connectors::kafka::config::KafkaSourcePlan;
use crate::connectors::kafka::{KafkaConnection, is_secret_property};
use crate::connectors::registry::{SinkPlan, SourcePlan};
use crate::net::schema_registry::{RegistryConfig, SchemaRegistry};
use crate::net::secret::SecretRef;
use crate::operators::Operator;
use crate::record::raw_record_schema;
use crate::spec::{PipelineSpec, SpecError, SpecErrors, StageSpec};
use crate::sql::SqlPlanner;

pub use crate::formats::framing::SourceFormat;

/// Where a stage or sink reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    Source,
    Stage { stage: usize, port: usize },
}

/// The planned source: its records' framing and its connector's plan.
#[derive(Debug, Clone)]
pub struct PlannedSource {
    pub format: SourceFormat,
    pub connector: SourcePlan,
}

impl PlannedSource {
    /// The files read (empty for a stream).
    pub fn paths(&self) -> &[PathBuf] {
        self.connector.paths()
    }

    pub fn kafka(&self) -> Option<&KafkaSourcePlan> {
        self.connector.kafka()
    }

    /// A bounded input (files): the run ends when it is read.
    pub fn is_bounded(&self) -> bool {
        self.connector.is_bounded()
    }
}

pub struct PlannedStage {
    pub name: String,
    pub kind: &'static str,
    pub input: Upstream,
    pub operator: Box<dyn Operator>,
    pub outputs: Vec<(String, SchemaRef)>,
}

/// A planned sink: where it reads, the rows it gets, and its connector's plan.
#[derive(Debug, Clone)]
pub struct PlannedSink {
    pub name: String,
    pub input: Upstream,
    pub schema: SchemaRef,
    pub connector: SinkPlan,
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
    /// Moves every output file (sinks, dead letters, local metrics with their state, breaker
    /// events, alerts, sync events) into `dir`, keeping the names (`--output DIR`).
    pub fn relocate_outputs(&mut self, dir: &std::path::Path) {
        use super::windows::{MetricsLocation, StateStore};
        let moved = |p: &std::path::Path| dir.join(p.file_name().unwrap_or_default());
        for s in &mut self.sinks {
            s.connector.relocate(dir);
        }
        if let Some(d) = &self.dlq {
            self.dlq = Some(moved(d));
        } else if self.dlq_topic.is_none() {
            // The default dead-letter file goes with the other outputs (where `plexus query
            // --output` looks for it), not into the working directory.
            self.dlq = Some(dir.join(format!("{}.dlq.ndjson", self.name)));
        }
        if let Some(m) = &mut self.monitoring {
            // Local metrics and the state beside them move; object-store metrics stay where
            // the pipeline says (and so does their state).
            if let MetricsLocation::Dir(old) = m.metrics.clone() {
                let new = moved(&old);
                if m.state == StateStore::Dir(old.join("_state")) {
                    m.state = StateStore::Dir(new.join("_state"));
                }
                m.metrics = MetricsLocation::Dir(new);
            }
            m.events_path = moved(&m.events_path);
            m.alerts_path = moved(&m.alerts_path);
        }
    }

    /// Testing mode (`plexus serve`): live input, but nothing leaves the machine. Every sink
    /// becomes an NDJSON file `<sink>.ndjson` in `dir`; dead letters, metrics, breaker events
    /// and alerts go to files there too (no topics, no alert webhook); a Kafka source reads as
    /// its own consumer group `<group>.testing`, so the live group's offsets do not move.
    /// A listener (MLLP, HTTP) keeps its port but spools under `dir`.
    pub fn divert_outputs(&mut self, dir: &std::path::Path) {
        use super::windows::{MetricsLocation, StateStore};
        use crate::connectors::file::{FileSinkPlan, SinkFormat};
        for s in &mut self.sinks {
            s.connector = SinkPlan::File(FileSinkPlan {
                path: Some(dir.join(format!("{}.ndjson", s.name))),
                format: SinkFormat::Ndjson,
                provenance: false,
            });
        }
        self.dlq = None;
        self.dlq_topic = None;
        if let Some(m) = &mut self.monitoring {
            m.metrics = MetricsLocation::Dir(dir.join("metrics"));
            m.state = StateStore::Dir(dir.join("metrics").join("_state"));
            m.metrics_topic = None;
            m.events_topic = None;
            m.alerts_topic = None;
            m.alerts_webhook = None;
        }
        self.relocate_outputs(dir);
        // A listener spools into `dir` and never hands off to a topic: what it accepts while
        // testing is processed as a test, and the live spool keeps only live messages.
        match &mut self.source.connector {
            SourcePlan::Kafka(k) => k.group = format!("{}.testing", k.group),
            SourcePlan::Mllp(m) => {
                m.spool = dir.join("spool");
                m.handoff = None;
            }
            SourcePlan::Http(h) => {
                h.spool = dir.join("spool");
                h.handoff = None;
            }
            SourcePlan::File { .. } => {}
        }
    }

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
    pub(super) registry: Option<std::sync::Arc<SchemaRegistry>>,
}

impl<'s> Ctx<'s> {
    /// The context a connector's config is planned in.
    pub(super) fn connector_cx<'a>(&self, sql: &'a SqlPlanner) -> PlanCx<'a>
    where
        's: 'a,
    {
        let spec: &'s PipelineSpec = self.spec;
        PlanCx {
            base_dir: &spec.base_dir,
            pipeline: &spec.name,
            has_kafka: spec.kafka.is_some(),
            has_registry: spec.schema_registry.is_some(),
            has_dlq_topic: spec.dlq.as_ref().is_some_and(|d| d.topic.is_some()),
            sql,
            errors: Vec::new(),
        }
    }
}

impl Ctx<'_> {
    /// A connector's findings, at their places in the pipeline file.
    pub(super) fn take_errors(&mut self, pcx: PlanCx<'_>) {
        for (span, message) in pcx.errors {
            self.errors
                .push(SpecError::at(&self.spec.file, &span, message));
        }
    }

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
        let Some((line, column, message)) = crate::sql::error_position(&message, sql) else {
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
    let (max_rows, max_bytes, max_delay) = plan_batch(&mut cx);

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
        match super::stages::plan_stage(&mut cx, &sql, stage, &input_schema).await {
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
    let has_breaker = sinks.iter().any(|s| s.connector.has_breaker());
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
    let (dlq, dlq_topic) = plan_dlq(&mut cx, kafka.is_some());
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
        max_rows,
        max_bytes,
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

/// `batch:`: rows and bytes per batch (bounded: a batch is held in memory whole, and a typo
/// such as 10^12 must not be a plan), and how long a stream's batch may wait.
fn plan_batch(cx: &mut Ctx<'_>) -> (usize, usize, Duration) {
    let spec = cx.spec;
    let max_delay = match &spec.batch.max_delay {
        Some(d) => crate::spec::parse_duration(d).unwrap_or_else(|e| {
            cx.err(d, e);
            Duration::from_millis(200)
        }),
        None => Duration::from_millis(200),
    };
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

    let max_rows = (*spec.batch.max_rows).clamp(1, MAX_ROWS) as usize;
    // Files: small batches keep what is in flight between stages (and so peak RSS) the same
    // for a 10 MB and a 2 GB input, at no cost in throughput (measured: README, Performance).
    // Streams: larger batches, fewer commits.
    let default = if spec.source.kind.as_str() == "file" {
        512 << 10
    } else {
        8 << 20
    };
    let max_bytes = spec
        .batch
        .max_bytes
        .as_ref()
        .map_or(default, |b| (**b).clamp(1024, MAX_BYTES) as usize);
    (max_rows, max_bytes, max_delay)
}

/// `dlq:`: a file (default `<name>.dlq.ndjson`, placed by the run) or a topic.
fn plan_dlq(cx: &mut Ctx<'_>, has_kafka: bool) -> (Option<PathBuf>, Option<String>) {
    let spec = cx.spec;
    match &spec.dlq {
        None => (None, None),
        Some(d) => match (&d.path, &d.topic) {
            (Some(p), None) => (Some(spec.resolve(p)), None),
            (None, Some(t)) => {
                if !has_kafka {
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
    }
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
    let format = match s.record_format() {
        Ok(f) => f,
        Err(e) => {
            cx.err(s.format(), e);
            return None;
        }
    };
    let sql = SqlPlanner::new();
    let mut pcx = cx.connector_cx(&sql);
    let connector = s.config.plan(&mut pcx, &s.kind, format);
    cx.take_errors(pcx);
    Some(PlannedSource {
        format,
        connector: connector?,
    })
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
    let mut pcx = cx.connector_cx(sql);
    let connector = s.config.plan(&mut pcx, &s.kind, &s.name, &schema);
    cx.take_errors(pcx);
    Some(PlannedSink {
        name: s.name.to_string(),
        input,
        schema,
        connector: connector?,
    })
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

    #[tokio::test]
    async fn testing_mode_diverts_every_output_into_the_directory() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/adt_kafka.yaml");
        let spec = PipelineSpec::load(&file).unwrap();
        let mut plan = build(&spec).await.unwrap();
        assert!(plan.dlq_topic.is_some() && !plan.sinks.is_empty());
        let dir = std::path::Path::new("/state/integrations/adt/testing");
        plan.divert_outputs(dir);
        for s in &plan.sinks {
            assert_eq!(
                s.connector.output_path(),
                Some(dir.join(format!("{}.ndjson", s.name)).as_path()),
                "{}",
                s.name
            );
        }
        assert_eq!(plan.dlq_topic, None);
        assert_eq!(
            plan.dlq,
            Some(dir.join(format!("{}.dlq.ndjson", plan.name)))
        );
        let group = &plan.source.kafka().unwrap().group;
        assert!(group.ends_with(".testing"), "{group}");
        if let Some(m) = &plan.monitoring {
            assert!(m.metrics_topic.is_none() && m.events_topic.is_none());
            assert!(m.alerts_topic.is_none() && m.alerts_webhook.is_none());
            assert!(m.events_path.starts_with(dir) && m.alerts_path.starts_with(dir));
        }
    }

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
