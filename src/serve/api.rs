//! The REST API (`/api/v1/…`), health routes and `/metrics`. Every `/api/v1` route and
//! `/metrics` need `Authorization: Bearer <API key>`; `/health`, `/ready` and
//! `/openapi.json` do not. Each request gets an id (`x-request-id`, kept when the caller sent
//! a sane one), a rate-limit check per key, and an audit entry when it changes something.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::host::Status;
use super::integration::{self, IntegrationIn, IntegrationView, Located};
use super::keys::{self, Caller, Role};
use super::registry::{AuditEntry, Mode, RegistryError};
use super::{Server, access, ops, testing, versions};
use crate::connectors::http::https::Peer;

/// An error answer: a status and a JSON body `{"error": …, "errors": [{line, column,
/// message}]}` (the list for pipeline problems).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    errors: Vec<Located>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>, errors: Vec<Located>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) | RegistryError::NoVersion { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            RegistryError::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            RegistryError::Db { .. } => {
                tracing::error!(error = %e, "serve: registry");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the registry is unavailable",
                )
            }
        }
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

/// Who called, from where, under which request id: what handlers and the audit log use.
#[derive(Clone)]
pub struct Ctx {
    pub caller: Caller,
    pub peer: String,
    pub request_id: String,
}

impl Ctx {
    pub(super) fn need(&self, role: Role) -> Result<(), ApiError> {
        if self.caller.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this needs the {} role", role.as_str()),
            ))
        }
    }
}

pub fn router(server: Arc<Server>) -> axum::Router {
    let api = axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/integrations",
            get(list_integrations).post(create_integration),
        )
        .route(
            "/api/v1/integrations/{id}",
            get(get_integration)
                .put(update_integration)
                .delete(delete_integration),
        )
        .route("/api/v1/integrations/{id}/activate", post(activate))
        .route("/api/v1/integrations/{id}/deactivate", post(deactivate))
        .route(
            "/api/v1/integrations/{id}/versions",
            get(versions::versions),
        )
        .route("/api/v1/integrations/{id}/diff", get(versions::diff))
        .route(
            "/api/v1/integrations/{id}/rollback",
            post(versions::rollback),
        )
        .route("/api/v1/integrations/{id}/test", post(dry_run))
        .route(
            "/api/v1/integrations/{id}/testing",
            get(testing::outputs).delete(testing::clear),
        )
        .route(
            "/api/v1/integrations/{id}/testing/{file}",
            get(testing::read),
        )
        .route(
            "/api/v1/keys",
            get(access::list_keys).post(access::create_key),
        )
        .route(
            "/api/v1/keys/{id}",
            axum::routing::delete(access::revoke_key),
        )
        .route("/api/v1/secrets", get(access::list_secrets))
        .route(
            "/api/v1/secrets/{name}",
            axum::routing::put(access::put_secret).delete(access::delete_secret),
        )
        .route("/api/v1/integrations/{id}/health", get(ops::health))
        .route("/api/v1/integrations/{id}/breakers", get(ops::breakers))
        .route(
            "/api/v1/integrations/{id}/breakers/{sink}/open",
            post(ops::open_breaker),
        )
        .route(
            "/api/v1/integrations/{id}/breakers/{sink}/reset",
            post(ops::reset_breaker),
        )
        .route("/api/v1/integrations/{id}/alerts", get(ops::alerts))
        .route("/api/v1/integrations/{id}/query", post(ops::query))
        .route(
            "/api/v1/integrations/{id}/dead-letters",
            get(ops::dead_letters),
        )
        .route(
            "/api/v1/integrations/{id}/dead-letters/replay",
            post(ops::replay),
        )
        .route(
            "/api/v1/integrations/{id}/dead-letters/{at}",
            get(ops::dead_letter),
        )
        .route("/api/v1/integrations/{id}/conflicts", get(ops::conflicts))
        .route(
            "/api/v1/integrations/{id}/conflicts/{conflict}/resolve",
            post(ops::resolve),
        )
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(
            server.clone(),
            authenticate,
        ));
    axum::Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi))
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(
            server.options.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(server)
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Keeps a caller's `x-request-id` when it is short and plain, else makes one; echoes it.
async fn request_id(mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_string);
    let id = given.unwrap_or_else(|| {
        format!(
            "req-{:x}-{}",
            std::process::id(),
            REQUESTS.fetch_add(1, Ordering::Relaxed)
        )
    });
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

#[derive(Clone)]
struct RequestId(String);

/// Bearer API key → caller; then the caller's rate limit.
async fn authenticate(
    State(server): State<Arc<Server>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let unauthorized = |why: &str| {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        r
    };
    let Some(token) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return unauthorized("an API key is needed: Authorization: Bearer <key>");
    };
    // A JWT (three dot-separated parts) goes to the identity provider's keys; anything else
    // is one of our API keys.
    if let Some(jwt) = &server.jwt
        && token.split('.').count() == 3
        && !token.starts_with("plx_")
    {
        match jwt.verify(token).await {
            Ok(c) => return admit(server.clone(), peer, req, next, c).await,
            Err(why) => {
                tracing::info!(peer = %peer, reason = %why, "serve: request refused");
                return unauthorized(&why);
            }
        }
    }
    let caller = match keys::verify(&server.registry, token).await {
        Ok(Ok(c)) => c,
        Ok(Err(refusal)) => {
            tracing::info!(peer = %peer, reason = refusal.text(), "serve: request refused");
            return unauthorized(refusal.text());
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    admit(server, peer, req, next, caller).await
}

/// An authenticated caller: its rate limit, then the route.
async fn admit(
    server: Arc<Server>,
    peer: SocketAddr,
    mut req: Request,
    next: Next,
    caller: Caller,
) -> Response {
    let limit = server.options.api_burst;
    if let Err(not_until) = server.limiter.check_key(&caller.key_id) {
        use governor::clock::Clock;
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("over this key's rate limit; retry in {secs} s"),
        )
        .into_response();
        let h = r.headers_mut();
        h.insert("retry-after", HeaderValue::from(secs));
        h.insert("ratelimit-limit", HeaderValue::from(limit));
        h.insert("ratelimit-remaining", HeaderValue::from(0));
        h.insert("ratelimit-reset", HeaderValue::from(secs));
        return r;
    }
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    req.extensions_mut().insert(Ctx {
        caller,
        peer: peer.to_string(),
        request_id,
    });
    let mut res = next.run(req).await;
    res.headers_mut()
        .insert("ratelimit-limit", HeaderValue::from(limit));
    res
}

pub(super) async fn audit_entry(
    server: &Server,
    cx: &Ctx,
    action: &str,
    target: &str,
    detail: &str,
) {
    if let Err(e) = server
        .registry
        .audit(
            &cx.caller.actor(),
            action,
            target,
            detail,
            &cx.peer,
            &cx.request_id,
        )
        .await
    {
        tracing::error!(error = %e, "serve: audit log write failed");
    }
}

pub(super) fn ok<T: serde::Serialize>(status: StatusCode, v: T) -> ApiResult {
    Ok((status, Json(v)).into_response())
}

/// The error body every refusal has.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// Pipeline problems, each at its line and column (422 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Located>>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// ok or unavailable.
    pub registry: String,
    pub integrations_in_error: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct IntegrationList {
    pub integrations: Vec<IntegrationView>,
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, body = Health)))]
pub async fn health() -> Response {
    Json(Health {
        status: "ok".into(),
    })
    .into_response()
}

/// Ready when the registry answers and no integration is in error.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(server): State<Arc<Server>>) -> Response {
    let registry = server.registry.ping().await.is_ok();
    let in_error: Vec<String> = server
        .host
        .snapshots()
        .into_iter()
        .filter(|(_, s)| s.status == Status::Error)
        .map(|(id, _)| id)
        .collect();
    let ready = registry && in_error.is_empty();
    let body = Readiness {
        ready,
        registry: if registry { "ok" } else { "unavailable" }.into(),
        integrations_in_error: in_error,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text for every running integration, labelled by integration (viewer).
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = [])),
    responses((status = 200, body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn metrics(State(server): State<Arc<Server>>, cx: axum::Extension<Ctx>) -> ApiResult {
    cx.need(Role::Viewer)?;
    let text = server.host.metrics();
    Ok(([("content-type", "text/plain; version=0.0.4")], text).into_response())
}

/// Every integration, with what runs (viewer).
#[utoipa::path(get, path = "/api/v1/integrations", tag = "integrations", security(("bearer" = [])),
    responses((status = 200, body = IntegrationList), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_integrations(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let integrations = integration::list(&server).await?;
    ok(StatusCode::OK, IntegrationList { integrations })
}

/// One integration (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = IntegrationView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn get_integration(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    ok(StatusCode::OK, integration::show(&server, &id).await?)
}

pub(super) fn bad_body(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
}

/// Stores a new integration (revision 1) after checking its pipeline; runs it when
/// `isActive` (admin).
#[utoipa::path(post, path = "/api/v1/integrations", tag = "integrations", security(("bearer" = [])),
    request_body = IntegrationIn,
    responses((status = 201, body = IntegrationView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn create_integration(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    body: Result<Json<IntegrationIn>, JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Json(body) = body.map_err(rejected)?;
    let id = body
        .id
        .clone()
        .ok_or_else(|| ApiError::invalid("`id` is required", Vec::new()))?;
    integration::check_id(&id)?;
    let (config, pipeline, active) = integration::checked(&server, &id, body).await?;
    let active = active.unwrap_or(false);
    server
        .registry
        .create(&id, &config, &pipeline, active, &cx.caller.actor())
        .await?;
    audit_entry(
        &server,
        &cx,
        "integration.create",
        &id,
        &format!("revision 1, active {active}"),
    )
    .await;
    super::reconcile(&server).await;
    ok(StatusCode::CREATED, integration::show(&server, &id).await?)
}

/// Stores a new revision; a running integration drains and restarts on it (admin).
#[utoipa::path(put, path = "/api/v1/integrations/{id}", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = IntegrationIn,
    responses((status = 200, body = IntegrationView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn update_integration(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<IntegrationIn>, JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Json(body) = body.map_err(rejected)?;
    if body.id.as_ref().is_some_and(|b| *b != id) {
        return Err(ApiError::invalid(
            "`id` in the body differs from the path",
            Vec::new(),
        ));
    }
    server.registry.get(&id).await?;
    let (config, pipeline, wants_active) = integration::checked(&server, &id, body).await?;
    let stored = server
        .registry
        .update(&id, &config, &pipeline, &cx.caller.actor())
        .await?;
    if let Some(active) = wants_active.filter(|a| *a != stored.active) {
        let mode = if active { Mode::Active } else { Mode::Inactive };
        server
            .registry
            .set_mode(&id, mode, &cx.caller.actor())
            .await?;
    }
    audit_entry(
        &server,
        &cx,
        "integration.update",
        &id,
        &format!("revision {}", stored.version),
    )
    .await;
    super::reconcile(&server).await;
    ok(StatusCode::OK, integration::show(&server, &id).await?)
}

/// Stops and removes an integration; its revisions stay in the history (admin).
#[utoipa::path(delete, path = "/api/v1/integrations/{id}", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Deleted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete_integration(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    server.registry.delete(&id).await?;
    audit_entry(&server, &cx, "integration.delete", &id, "").await;
    super::reconcile(&server).await;
    ok(StatusCode::OK, Deleted { deleted: id })
}

async fn set_mode(server: Arc<Server>, cx: Ctx, id: String, mode: Mode) -> ApiResult {
    cx.need(Role::Admin)?;
    server
        .registry
        .set_mode(&id, mode, &cx.caller.actor())
        .await?;
    let action = match mode {
        Mode::Active => "integration.activate",
        Mode::Testing => "integration.activate_testing",
        Mode::Inactive => "integration.deactivate",
    };
    audit_entry(&server, &cx, action, &id, "").await;
    super::reconcile(&server).await;
    ok(StatusCode::OK, integration::show(&server, &id).await?)
}

/// `?mode=` of an activation.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivateParams {
    /// `live` (the default) or `testing`: live input with every output (sinks, dead letters,
    /// metrics, alerts) written to files under the server's state directory instead, and a
    /// Kafka source reading as its own consumer group.
    pub mode: Option<String>,
}

/// Runs the integration, live or in testing mode (admin).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/activate", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path), ActivateParams),
    responses((status = 200, body = IntegrationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn activate(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    params: Result<Query<ActivateParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(params) = params.map_err(bad_body)?;
    let mode = match params.mode.as_deref() {
        None | Some("live") => Mode::Active,
        Some("testing") => Mode::Testing,
        Some(_) => {
            return Err(ApiError::invalid(
                "`mode` is `live` or `testing`",
                Vec::new(),
            ));
        }
    };
    set_mode(server, cx.0, id, mode).await
}

/// Stops the integration, draining what it read (admin).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/deactivate", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = IntegrationView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn deactivate(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    set_mode(server, cx.0, id, Mode::Inactive).await
}

/// A test case: raw input in the source's format, and the rows each sink (or `dlq`) must get.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseIn {
    pub name: String,
    pub input: String,
    /// Sink name (or `dlq`) → expected rows, each a subset of a row's columns.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub expect: indexmap::IndexMap<String, Vec<indexmap::IndexMap<String, serde_json::Value>>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunIn {
    /// Cases to run; none: the pipeline's own `tests:`.
    #[serde(default)]
    pub cases: Vec<CaseIn>,
    /// A draft pipeline to test instead of the stored one (nothing is stored).
    pub pipeline: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DryRunOut {
    pub passed: usize,
    pub failed: usize,
    pub cases: Vec<crate::runtime::testing::CaseResult>,
}

/// Runs test cases through the integration's pipeline (or a draft of it) with memory in
/// place of its source and sinks, as `plexus test` does; nothing is stored or sent
/// (operator).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/test", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = DryRunIn,
    responses((status = 200, body = DryRunOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn dry_run(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<DryRunIn>, JsonRejection>,
) -> ApiResult {
    use crate::runtime::testing::{CaseError, run_case};
    cx.need(Role::Operator)?;
    let Json(body) = body.map_err(rejected)?;
    let stored = server.registry.get(&id).await?;
    let text = body.pipeline.unwrap_or(stored.pipeline);
    let spec =
        integration::spec_of(&integration::pipeline_path(&server, &id), Some(&id), &text).await?;
    let cases: Vec<crate::spec::TestCaseSpec> = if body.cases.is_empty() {
        spec.tests
            .iter()
            .map(|c| crate::spec::TestCaseSpec {
                name: c.name.clone(),
                input: c.input.clone(),
                expect: c.expect.clone(),
            })
            .collect()
    } else {
        body.cases
            .into_iter()
            .map(|c| crate::spec::TestCaseSpec {
                name: crate::config::Spanned::new(marked_yaml::Span::new_blank(), c.name),
                input: c.input,
                expect: c.expect,
            })
            .collect()
    };
    if cases.is_empty() {
        return Err(ApiError::invalid(
            "no test cases: send `cases`, or add `tests:` to the pipeline",
            Vec::new(),
        ));
    }
    let mut results = Vec::with_capacity(cases.len());
    for case in &cases {
        match run_case(&spec, case).await {
            Ok(r) => results.push(r),
            Err(CaseError::Plan(e)) => return Err(ApiError::invalid(e.to_string(), Vec::new())),
            Err(e @ CaseError::Run(_)) => return Err(ApiError::invalid(e.to_string(), Vec::new())),
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    ok(
        StatusCode::OK,
        DryRunOut {
            passed,
            failed: results.len() - passed,
            cases: results,
        },
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action (`integration.update`, `key.create`, …).
    pub action: Option<String>,
    /// Only entries about this integration or key.
    pub target: Option<String>,
    /// At most this many, newest first (1–1000, default 100).
    pub limit: Option<i64>,
}

/// The audit log, newest first: who changed what, when, from where (admin).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn audit(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Query(q) = q.map_err(bad_body)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = server
        .registry
        .audit_log(q.action.as_deref(), q.target.as_deref(), limit)
        .await?;
    ok(StatusCode::OK, AuditList { entries })
}

/// Server-sent events for a dashboard (viewer): `status` (an integration's status changed or
/// it was removed), `breaker` (a sink's breaker changed state), `alert` (alerts raised), and
/// every second `counts` (records in, dead letters and rows per sink of each running
/// integration). Ids, states and counts only: never record content.
#[utoipa::path(get, path = "/api/v1/events", tag = "health", security(("bearer" = [])),
    responses((status = 200, body = String, content_type = "text/event-stream"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn events(State(server): State<Arc<Server>>, cx: axum::Extension<Ctx>) -> ApiResult {
    use axum::response::sse::{Event, KeepAlive, Sse};
    cx.need(Role::Viewer)?;
    let rx = server.events.subscribe();
    let stop = server.stopping.subscribe();
    let stream = futures::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
        loop {
            let got = tokio::select! {
                got = rx.recv() => got,
                _ = stop.wait_for(|s| *s) => return None,
            };
            match got {
                Ok(e) => {
                    let event = Event::default().event(e.kind).data(e.data.to_string());
                    return Some((Ok::<_, std::convert::Infallible>(event), (rx, stop)));
                }
                // Missed some: the next `counts` carries the totals anyway.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// A body that could not be read: too large (413) or not the JSON asked for (400).
pub(super) fn rejected(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, b.body_text())
        }
        other => bad_body(other.body_text()),
    }
}

/// The OpenAPI 3.1 document of the routes above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "plexus serve", description = "Integrations, keys and the audit log of a plexus server."),
    paths(health, ready, metrics, list_integrations, get_integration, create_integration,
        update_integration, delete_integration, activate, deactivate, versions::versions,
        versions::rollback, versions::diff, dry_run,
        access::list_keys, access::create_key, access::revoke_key, access::list_secrets,
        access::put_secret, access::delete_secret, audit, events,
        ops::health, ops::breakers, ops::open_breaker, ops::reset_breaker, ops::alerts, ops::query,
        ops::dead_letters, ops::dead_letter, ops::replay, ops::conflicts, ops::resolve,
        testing::outputs, testing::read, testing::clear),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `plexus keys create`, or a JWT from the identity provider whose JWKS the server was given",
                    ))
                    .build(),
            ),
        );
    }
}

/// `/openapi.json`: the document, built once.
pub async fn openapi() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOC.get_or_init(|| {
        use utoipa::OpenApi;
        ApiDoc::openapi().to_json().unwrap_or_default()
    });
    ([("content-type", "application/json")], text.clone()).into_response()
}
