//! Operations on one integration (`/api/v1/integrations/{id}/…`): its circuit breakers
//! (viewed live; forced open or reset by an operator), its alerts, read-only SQL over its
//! window metrics, its dead letters (listed, shown, replayed) and its FHIR sync conflicts
//! (listed, resolved). What these read comes from the integration's pipeline, as `plexus
//! query`, `plexus dlq` and `plexus sync` find it, so the CLI and the API agree.
//!
//! Patient data stays behind the `phi` scope: dead letters list as metadata, a dead letter's
//! original record needs a key with `phi` and every such read is audited; conflicts are
//! named by an opaque id, not by the patient identifier they are keyed on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Server;
use super::api::{ApiError, ApiResult, Ctx, ErrorBody, audit_entry, bad_body, ok, rejected};
use super::host::Origin;
use super::integration;
use super::keys::Role;
use crate::connectors::fhir::sync::{Resolution, Side, SyncOutcome};
use crate::runtime::dlq::{DeadLetter, DlqLocation, ReplayReport, ReplayRequest};
use crate::runtime::sync::{SyncTarget, conflict_id};
use crate::spec::PipelineSpec;

/// The integration's pipeline as it is stored (registry) or on disk (directory), checked.
async fn spec_of(server: &Server, id: &str) -> Result<PipelineSpec, ApiError> {
    match server.registry.get(id).await {
        Ok(stored) => {
            let path = integration::pipeline_path(server, id);
            integration::spec_of(&path, Some(id), &stored.pipeline).await
        }
        Err(super::registry::RegistryError::NotFound(_)) => {
            let Some(Origin::Directory(path)) = server.host.snapshot(id).map(|s| s.origin) else {
                return Err(not_found(id));
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{}: {e}", path.display()),
                )
            })?;
            integration::spec_of(&path, None, &text).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Where `id`'s dead letters are: in testing mode, the file its diverted run writes.
fn dlq_location(server: &Server, id: &str, spec: &PipelineSpec) -> Result<DlqLocation, ApiError> {
    match server.host.testing_dir(id) {
        Some(dir) => Ok(DlqLocation::File {
            path: dir.join(format!("{}.dlq.ndjson", spec.name.as_str())),
            format: Some(spec.source.format().to_string()),
        }),
        None => DlqLocation::of(spec, None).map_err(unavailable),
    }
}

/// `id`'s plan with its outputs where its run writes them (diverted in testing mode).
async fn plan_of(server: &Server, id: &str) -> Result<crate::plan::Plan, ApiError> {
    let spec = spec_of(server, id).await?;
    let mut plan = crate::plan::build(&spec)
        .await
        .map_err(|e| ApiError::invalid(e.to_string(), Vec::new()))?;
    if let Some(dir) = server.host.testing_dir(id) {
        plan.divert_outputs(&dir);
    }
    Ok(plan)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("integration {id} not found"))
}

/// What the pipeline says does not hold (no DLQ topic reachable, no syncing sink, …).
fn unavailable(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, format!("{e:#}"))
}

/// Runs blocking work (Kafka reads, file reads) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the task failed"))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))
}

/// A JSON object body as `T`. serde would also read a struct whose fields are all optional
/// from an array (`[null]`): only an object is the documented body.
fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    if !v.is_object() {
        return Err(bad_body("the body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(bad_body)
}

// ---- health checks ----

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    pub id: String,
    /// active, inactive or error.
    pub status: String,
    /// When the last check ran (ms since the epoch); none before the first.
    pub last_health_check: Option<i64>,
    pub healthy: Option<bool>,
    /// Each step of the last check: connect, authenticate, operation, per sink.
    pub checks: Vec<super::health::CheckResult>,
}

/// The latest health check of the integration's downstream systems (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/health", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = HealthView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn health(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let view = integration::show(&server, &id).await?;
    let report = view.run.as_ref().and_then(|r| r.health.clone());
    ok(
        StatusCode::OK,
        HealthView {
            id: view.id,
            status: view.status,
            last_health_check: report.as_ref().map(|r| r.at_ms),
            healthy: report.as_ref().map(|r| r.healthy),
            checks: report.map(|r| r.checks).unwrap_or_default(),
        },
    )
}

// ---- circuit breakers ----

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionView {
    pub from: String,
    pub to: String,
    pub at_ms: i64,
    pub reason: String,
    pub calls: usize,
    pub failure_rate: f64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// The sink it guards.
    pub sink: String,
    /// CLOSED, OPEN or HALF_OPEN.
    pub state: String,
    /// Held open by an operator until reset.
    pub forced: bool,
    /// Its last 50 state changes, oldest first.
    pub transitions: Vec<TransitionView>,
}

#[derive(Serialize, ToSchema)]
pub struct BreakerList {
    pub breakers: Vec<BreakerView>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BreakerActionIn {
    /// Why (kept in the breaker event and the audit log; no patient data).
    pub reason: Option<String>,
}

fn state_name(s: crate::resilience::breaker::BreakerState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn breaker_view(sink: &str, b: &crate::resilience::breaker::SharedBreaker) -> BreakerView {
    let all = b.transitions();
    let skip = all.len().saturating_sub(50);
    BreakerView {
        sink: sink.to_string(),
        state: state_name(b.state()),
        forced: b.forced(),
        transitions: all[skip..]
            .iter()
            .map(|t| TransitionView {
                from: state_name(t.from),
                to: state_name(t.to),
                at_ms: t.at_ms,
                reason: t.reason.clone(),
                calls: t.calls,
                failure_rate: t.failure_rate,
            })
            .collect(),
    }
}

fn running_breakers(
    server: &Server,
    id: &str,
) -> Result<Vec<(String, crate::resilience::breaker::SharedBreaker)>, ApiError> {
    let t = server.host.telemetry(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("integration {id} is not running here"),
        )
    })?;
    Ok(t.breakers())
}

/// The integration's circuit breakers, live (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/breakers", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = BreakerList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn breakers(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    integration::show(&server, &id).await?;
    let breakers = running_breakers(&server, &id)?
        .iter()
        .map(|(sink, b)| breaker_view(sink, b))
        .collect();
    ok(StatusCode::OK, BreakerList { breakers })
}

async fn breaker_action(
    server: Arc<Server>,
    cx: Ctx,
    id: String,
    sink: String,
    body: axum::body::Bytes,
    open: bool,
) -> ApiResult {
    cx.need(Role::Operator)?;
    // No body at all is fine: there is nothing to say.
    let body: BreakerActionIn = if body.iter().all(u8::is_ascii_whitespace) {
        BreakerActionIn::default()
    } else {
        object(serde_json::from_slice(&body).map_err(bad_body)?)?
    };
    integration::show(&server, &id).await?;
    let all = running_breakers(&server, &id)?;
    let Some((_, b)) = all.iter().find(|(s, _)| *s == sink) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("integration {id} has no breaker on a sink {sink:?}"),
        ));
    };
    let who = cx.caller.actor();
    let why = body.reason.unwrap_or_default();
    let verb = if open { "forced open" } else { "reset" };
    let reason = if why.is_empty() {
        format!("{verb} by {who}")
    } else {
        format!("{verb} by {who}: {why}")
    };
    if open {
        b.force_open(reason.clone());
    } else {
        b.reset(reason.clone());
    }
    let action = if open {
        "breaker.force_open"
    } else {
        "breaker.reset"
    };
    audit_entry(&server, &cx, action, &format!("{id}/{sink}"), &why).await;
    ok(StatusCode::OK, breaker_view(&sink, b))
}

/// Opens a breaker and holds it open until reset: its sink's calls are refused and parked
/// for retry meanwhile (operator).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/breakers/{sink}/open", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path), ("sink" = String, Path)), request_body(content = Option<BreakerActionIn>),
    responses((status = 200, body = BreakerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn open_breaker(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path((id, sink)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    breaker_action(server, cx.0, id, sink, body, true).await
}

/// Closes a breaker with a clean window, whatever its state (operator).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/breakers/{sink}/reset", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path), ("sink" = String, Path)), request_body(content = Option<BreakerActionIn>),
    responses((status = 200, body = BreakerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn reset_breaker(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path((id, sink)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    breaker_action(server, cx.0, id, sink, body, false).await
}

// ---- SQL over the window metrics, and alerts ----

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryIn {
    /// One read-only statement over `metrics`, each window's table, `breaker_events`,
    /// `alerts` and `dead_letters` (a summary without records).
    pub sql: String,
    /// At most this many rows (1–10000, default 1000).
    pub max_rows: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct QueryOut {
    pub columns: Vec<String>,
    /// One object per row.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Value>,
    /// More rows matched than were returned.
    pub truncated: bool,
}

/// How long outside SQL may run.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

async fn run_query(
    server: &Server,
    id: &str,
    sql: &str,
    max_rows: usize,
) -> Result<QueryOut, ApiError> {
    let plan = plan_of(server, id).await?;
    let loc = crate::runtime::query::Locations::of(&plan, None).map_err(unavailable)?;
    drop(plan);
    let ctx = crate::runtime::query::context(&loc)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    let found = crate::runtime::query::read_only(&ctx, sql, max_rows, QUERY_TIMEOUT)
        .await
        .map_err(|e| ApiError::invalid(format!("{e:#}"), Vec::new()))?;
    let columns = match found.batches.first() {
        Some(b) => b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        None => Vec::new(),
    };
    let internal = |e: arrow::error::ArrowError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in &found.batches {
        w.write(b).map_err(internal)?;
    }
    w.finish().map_err(internal)?;
    let bytes = w.into_inner();
    let rows = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    Ok(QueryOut {
        columns,
        rows,
        truncated: found.truncated,
    })
}

/// Read-only SQL over the integration's window metrics, breaker events, alerts and a
/// dead-letter summary; no DDL/DML, no files beyond these; 10 s and a row limit (viewer).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/query", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = QueryIn,
    responses((status = 200, body = QueryOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn query(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<QueryIn>, JsonRejection>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let Json(body) = body.map_err(rejected)?;
    let max = body.max_rows.unwrap_or(1000).clamp(1, 10_000);
    let out = run_query(&server, &id, &body.sql, max).await?;
    ok(StatusCode::OK, out)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// At most this many, newest first (1–1000, default 100).
    pub limit: Option<usize>,
    /// Only this severity (warning or critical).
    pub severity: Option<String>,
}

/// The integration's alerts, newest first (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/alerts", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path), AlertsQuery),
    responses((status = 200, body = QueryOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn alerts(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    q: Result<Query<AlertsQuery>, QueryRejection>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let Query(q) = q.map_err(bad_body)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let severity = match q.severity.as_deref() {
        None => String::new(),
        Some(s @ ("warning" | "critical")) => format!("WHERE severity = '{s}'"),
        Some(other) => {
            return Err(bad_body(format!("severity {other:?}: warning or critical")));
        }
    };
    let sql = format!(
        "SELECT alert, severity, \"window\", \"key\", condition, total, error_rate, \
         latency_p95_ms, data_quality_rate, window_start, window_end, at FROM alerts \
         {severity} ORDER BY at_ms DESC LIMIT {limit}"
    );
    ok(StatusCode::OK, run_query(&server, &id, &sql, limit).await?)
}

// ---- dead letters ----

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only from this stage.
    pub stage: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Skip this many (oldest first).
    pub offset: Option<usize>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<usize>,
}

/// A dead letter's metadata and its address (`PARTITION:OFFSET` on a topic, the line of a
/// file): never the record.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterView {
    pub at: String,
    #[serde(flatten)]
    pub meta: DeadLetter,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Where they are: a topic or a file.
    pub dlq: String,
    /// How many match the filters (all of them, not only this page).
    pub total: usize,
    pub dead_letters: Vec<DeadLetterView>,
}

async fn dead_letters_of(
    server: &Server,
    id: &str,
) -> Result<(Arc<DlqLocation>, Vec<DeadLetter>), ApiError> {
    let spec = spec_of(server, id).await?;
    let loc = Arc::new(dlq_location(server, id, &spec)?);
    let l = loc.clone();
    let all = blocking(move || l.read()).await?;
    Ok((loc, all))
}

/// The integration's dead letters, oldest first: metadata only (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/dead-letters", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path), DeadLetterQuery),
    responses((status = 200, body = DeadLetterList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn dead_letters(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    q: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let Query(q) = q.map_err(bad_body)?;
    let (loc, all) = dead_letters_of(&server, &id).await?;
    let matching: Vec<&DeadLetter> = all
        .iter()
        .filter(|d| q.stage.as_deref().is_none_or(|s| d.stage == s))
        .filter(|d| q.rule.as_deref().is_none_or(|r| d.rule == r))
        .collect();
    let page = matching
        .iter()
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(100).clamp(1, 1000))
        .map(|d| DeadLetterView {
            at: loc.address(d),
            meta: (*d).clone(),
        })
        .collect();
    ok(
        StatusCode::OK,
        DeadLetterList {
            dlq: loc.describe(),
            total: matching.len(),
            dead_letters: page,
        },
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    /// Include the original record (patient data): needs a key with the `phi` scope, and
    /// the read is audited.
    pub original: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterShown {
    #[serde(flatten)]
    pub view: DeadLetterView,
    /// The original record as text (when asked for, and it is UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    /// The original record in hex (when asked for, and it is not UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_hex: Option<String>,
}

/// One dead letter; with `original=true` its record too (viewer; `phi` scope for the
/// record).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/dead-letters/{at}", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path), ("at" = String, Path, description = "PARTITION:OFFSET or LINE"), ShowQuery),
    responses((status = 200, body = DeadLetterShown), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn dead_letter(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path((id, at)): Path<(String, String)>,
    q: Result<Query<ShowQuery>, QueryRejection>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let Query(q) = q.map_err(bad_body)?;
    let original = q.original.unwrap_or(false);
    if original && !cx.caller.phi {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a dead letter's original record is patient data: this needs a key with the phi scope",
        ));
    }
    let (loc, all) = dead_letters_of(&server, &id).await?;
    let d = loc
        .find(&all, &at)
        .map_err(|e| bad_body(format!("{e:#}")))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no dead letter at {at} in {}", loc.describe()),
            )
        })?;
    let mut shown = DeadLetterShown {
        view: DeadLetterView {
            at: loc.address(d),
            meta: d.clone(),
        },
        original: None,
        original_hex: None,
    };
    if original {
        match std::str::from_utf8(&d.record) {
            Ok(t) => shown.original = Some(t.to_string()),
            Err(_) => {
                shown.original_hex = Some(d.record.iter().map(|b| format!("{b:02x}")).collect())
            }
        }
        // A privileged read: who saw which patient record, when, from where.
        audit_entry(
            &server,
            &cx,
            "dead_letter.read_original",
            &format!("{id}@{}", shown.view.at),
            "",
        )
        .await;
    }
    ok(StatusCode::OK, shown)
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayIn {
    /// A SQL condition over stage, rule, error, attempt, source_topic, source_partition,
    /// source_offset, correlation_id, failed_at (and record, with the phi scope).
    pub filter: Option<String>,
    /// A topic DLQ: where to re-inject (default: each record's original topic).
    pub to_topic: Option<String>,
    /// Say what would be replayed, and do nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Replays dead letters (idempotent: each once, recorded in the replay ledger) (operator).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/dead-letters/replay", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = ReplayIn,
    responses((status = 200, body = ReplayReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn replay(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult {
    cx.need(Role::Operator)?;
    let Json(body) = body.map_err(rejected)?;
    let body: ReplayIn = object(body)?;
    let spec = spec_of(&server, &id).await?;
    let loc = dlq_location(&server, &id, &spec)?;
    if let (DlqLocation::File { .. }, Some(_)) = (&loc, &body.to_topic) {
        return Err(bad_body(
            "toTopic: this integration's dead letters are in a file",
        ));
    }
    let req = ReplayRequest {
        filter: body.filter,
        filter_on_record: cx.caller.phi,
        to_topic: body.to_topic,
        to_file: None,
        dry_run: body.dry_run,
    };
    let report = tokio::task::spawn_blocking(move || crate::runtime::dlq::replay(&loc, &req))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the task failed"))?
        .map_err(|e| {
            let text = format!("{e:#}");
            // A filter that does not plan is the caller's mistake; the rest is the DLQ's.
            if text.starts_with("filter:") {
                ApiError::invalid(text, Vec::new())
            } else {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, text)
            }
        })?;
    if !report.dry_run {
        let detail = format!(
            "matched {}, replayed {}, replayed before {}, duplicates {}",
            report.matched, report.replayed, report.replayed_before, report.duplicates
        );
        audit_entry(&server, &cx, "dead_letter.replay", &id, &detail).await;
    }
    ok(StatusCode::OK, report)
}

// ---- FHIR sync conflicts ----

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConflictView {
    /// Names the conflict in these routes (the entity's key is a patient identifier).
    pub id: String,
    pub resource_type: String,
    /// The fields both sides changed differently.
    pub fields: Vec<String>,
    pub detected_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConflictList {
    pub conflicts: Vec<ConflictView>,
}

async fn sync_target(server: &Server, id: &str) -> Result<SyncTarget, ApiError> {
    let plan = plan_of(server, id).await?;
    SyncTarget::of(&plan, None).map_err(unavailable)
}

/// Open conflicts between what the integration sent and what the EHR holds (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/conflicts", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ConflictList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn conflicts(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let t = sync_target(&server, &id).await?;
    let down = |e: anyhow::Error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"));
    let mut out = Vec::new();
    for (kind, key) in t.conflicts().await.map_err(down)? {
        let c = t.conflict(&kind, &key).await.map_err(down)?;
        let c = c.as_ref();
        out.push(ConflictView {
            id: conflict_id(&kind, &key),
            fields: c
                .and_then(|c| c["fields"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect(),
            detected_at: c.and_then(|c| c["detected_at"].as_str().map(str::to_string)),
            resource_type: kind,
        });
    }
    if let Some(e) = &t.events {
        let _ = e.finish();
    }
    ok(StatusCode::OK, ConflictList { conflicts: out })
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StrategyIn {
    /// The message applied to the server's current version.
    UseLocal,
    /// Keep the server's version.
    UseExternal,
    /// Per field, as `take` says (fields not named keep the server's).
    Merge,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveIn {
    pub strategy: StrategyIn,
    /// merge: field → `local` or `external`.
    #[serde(default)]
    pub take: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub id: String,
    /// The server's version now in sync.
    pub version: Option<String>,
    pub resolved_by: String,
}

/// Settles a conflict on the EHR (at the version seen now; a newer change there fails it)
/// and records who did (operator).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/conflicts/{conflict}/resolve", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path), ("conflict" = String, Path)), request_body = ResolveIn,
    responses((status = 200, body = Resolved), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn resolve(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path((id, conflict)): Path<(String, String)>,
    body: Result<Json<ResolveIn>, JsonRejection>,
) -> ApiResult {
    cx.need(Role::Operator)?;
    let Json(body) = body.map_err(rejected)?;
    let how = match body.strategy {
        StrategyIn::UseLocal => Resolution::UseLocal,
        StrategyIn::UseExternal => Resolution::UseExternal,
        StrategyIn::Merge => {
            let mut choices = BTreeMap::new();
            for (field, side) in &body.take {
                let side = match side.as_str() {
                    "local" => Side::Local,
                    "external" => Side::External,
                    other => {
                        return Err(bad_body(format!(
                            "take.{field}: {other:?} is not local or external"
                        )));
                    }
                };
                choices.insert(field.clone(), side);
            }
            if choices.is_empty() {
                return Err(bad_body("merge needs `take`: {field: local|external}"));
            }
            Resolution::Merge(choices)
        }
    };
    let t = sync_target(&server, &id).await?;
    let down = |e: anyhow::Error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"));
    let Some((kind, key)) = t
        .conflicts()
        .await
        .map_err(down)?
        .into_iter()
        .find(|(k, e)| conflict_id(k, e) == conflict)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("integration {id} has no open conflict {conflict}"),
        ));
    };
    let who = cx.caller.actor();
    let outcome = t.resolve(&kind, &key, &how, &who).await.map_err(|e| {
        // A newer change on the server, say: the caller looks again and decides again. The
        // entity's key (a patient identifier) is named by the conflict's id.
        ApiError::new(
            StatusCode::CONFLICT,
            format!("{e:#}").replace(key.as_str(), &conflict),
        )
    })?;
    let version = match outcome {
        SyncOutcome::Contended => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "another worker is syncing this entity: try again",
            ));
        }
        SyncOutcome::Updated { version, .. } | SyncOutcome::AdoptedExternal { version, .. } => {
            version
        }
        _ => None,
    };
    let strategy = match how {
        Resolution::UseLocal => "use_local",
        Resolution::UseExternal => "use_external",
        Resolution::Merge(_) => "merge",
    };
    audit_entry(
        &server,
        &cx,
        "conflict.resolve",
        &format!("{id}/{conflict}"),
        strategy,
    )
    .await;
    ok(
        StatusCode::OK,
        Resolved {
            id: conflict,
            version,
            resolved_by: who,
        },
    )
}
