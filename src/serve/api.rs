//! The REST API (`/api/v1/…`), health routes and `/metrics`. Every `/api/v1` route and
//! `/metrics` need `Authorization: Bearer <API key>`; `/health`, `/ready` and
//! `/openapi.json` do not. Each request gets an id (`x-request-id`, kept when the caller sent
//! a sane one), a rate-limit check per key, and an audit entry when it changes something.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Server;
use super::integration::{self, IntegrationIn, Located};
use super::keys::{self, Caller, Role};
use super::registry::RegistryError;

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

type ApiResult = Result<Response, ApiError>;

/// Who called, from where, under which request id: what handlers and the audit log use.
#[derive(Clone)]
pub struct Ctx {
    pub caller: Caller,
    pub peer: String,
    pub request_id: String,
}

impl Ctx {
    fn need(&self, role: Role) -> Result<(), ApiError> {
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
        .route("/api/v1/integrations/{id}/versions", get(versions))
        .route("/api/v1/integrations/{id}/rollback", post(rollback))
        .route("/api/v1/keys", get(list_keys).post(create_key))
        .route("/api/v1/keys/{id}", axum::routing::delete(revoke_key))
        .route("/api/v1/audit", get(audit))
        .route_layer(axum::middleware::from_fn_with_state(
            server.clone(),
            authenticate,
        ));
    axum::Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
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
    let caller = match keys::verify(&server.registry, token).await {
        Ok(Ok(c)) => c,
        Ok(Err(refusal)) => {
            tracing::info!(peer = %peer, reason = refusal.text(), "serve: request refused");
            return unauthorized(refusal.text());
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
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

async fn audit_entry(server: &Server, cx: &Ctx, action: &str, target: &str, detail: &str) {
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

fn ok(status: StatusCode, v: Value) -> ApiResult {
    Ok((status, Json(v)).into_response())
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready when the registry answers and every integration that should run does.
async fn ready(State(server): State<Arc<Server>>) -> Response {
    let registry = server.registry.ping().await.is_ok();
    let mut not_running = Vec::new();
    for (id, snap) in server.host.snapshots() {
        if snap.status == super::host::Status::Error {
            not_running.push(id);
        }
    }
    let ready = registry && not_running.is_empty();
    let body = json!({
        "ready": ready,
        "registry": if registry { "ok" } else { "unavailable" },
        "integrations_in_error": not_running,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(server): State<Arc<Server>>, cx: axum::Extension<Ctx>) -> ApiResult {
    cx.need(Role::Viewer)?;
    let text = server.host.metrics();
    Ok(([("content-type", "text/plain; version=0.0.4")], text).into_response())
}

async fn list_integrations(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let all = integration::list(&server).await?;
    ok(StatusCode::OK, json!({"integrations": all}))
}

async fn get_integration(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    ok(StatusCode::OK, integration::show(&server, &id).await?)
}

async fn create_integration(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    body: Result<Json<IntegrationIn>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Json(body) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let id = body
        .id
        .clone()
        .ok_or_else(|| ApiError::invalid("`id` is required", Vec::new()))?;
    integration::check_id(&id)?;
    let (config, pipeline, active) = integration::checked(&server, &id, body).await?;
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

async fn update_integration(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<IntegrationIn>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Json(body) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if body.id.as_ref().is_some_and(|b| *b != id) {
        return Err(ApiError::invalid(
            "`id` in the body differs from the path",
            Vec::new(),
        ));
    }
    server.registry.get(&id).await?;
    let wants_active = body.is_active;
    let (config, pipeline, _) = integration::checked(&server, &id, body).await?;
    let stored = server
        .registry
        .update(&id, &config, &pipeline, &cx.caller.actor())
        .await?;
    if let Some(active) = wants_active.filter(|a| *a != stored.active) {
        server
            .registry
            .set_active(&id, active, &cx.caller.actor())
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

async fn delete_integration(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    server.registry.delete(&id).await?;
    audit_entry(&server, &cx, "integration.delete", &id, "").await;
    super::reconcile(&server).await;
    ok(StatusCode::OK, json!({"deleted": id}))
}

async fn set_active(server: Arc<Server>, cx: Ctx, id: String, active: bool) -> ApiResult {
    cx.need(Role::Admin)?;
    server
        .registry
        .set_active(&id, active, &cx.caller.actor())
        .await?;
    let action = if active {
        "integration.activate"
    } else {
        "integration.deactivate"
    };
    audit_entry(&server, &cx, action, &id, "").await;
    super::reconcile(&server).await;
    ok(StatusCode::OK, integration::show(&server, &id).await?)
}

async fn activate(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    set_active(server, cx.0, id, true).await
}

async fn deactivate(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    set_active(server, cx.0, id, false).await
}

async fn versions(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    server.registry.get(&id).await?;
    let versions = server.registry.versions(&id).await?;
    let list: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({"revision": v.version, "config": v.config, "pipeline": v.pipeline,
                   "createdAt": v.created_at, "createdBy": v.created_by})
        })
        .collect();
    ok(StatusCode::OK, json!({"id": id, "versions": list}))
}

#[derive(Deserialize)]
struct RollbackIn {
    revision: i64,
}

async fn rollback(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<RollbackIn>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Json(body) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let old = server.registry.version(&id, body.revision).await?;
    let stored = server
        .registry
        .update(&id, &old.config, &old.pipeline, &cx.caller.actor())
        .await?;
    audit_entry(
        &server,
        &cx,
        "integration.rollback",
        &id,
        &format!(
            "revision {} from revision {}",
            stored.version, body.revision
        ),
    )
    .await;
    super::reconcile(&server).await;
    ok(StatusCode::OK, integration::show(&server, &id).await?)
}

async fn list_keys(State(server): State<Arc<Server>>, cx: axum::Extension<Ctx>) -> ApiResult {
    cx.need(Role::Admin)?;
    let keys = server.registry.keys().await?;
    ok(StatusCode::OK, json!({"keys": keys}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyIn {
    name: String,
    role: String,
    #[serde(default)]
    phi: bool,
    /// A duration (`30d`, `12h`).
    expires_in: Option<String>,
}

async fn create_key(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    body: Result<Json<KeyIn>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Json(body) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let role = Role::parse(&body.role).map_err(|e| ApiError::invalid(e, Vec::new()))?;
    if body.name.trim().is_empty() || body.name.len() > 100 {
        return Err(ApiError::invalid(
            "`name` must have 1 to 100 characters",
            Vec::new(),
        ));
    }
    let expires = body
        .expires_in
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("expiresIn: {e}"), Vec::new()))?;
    let (row, key) = keys::create(&server.registry, &body.name, role, body.phi, expires).await?;
    audit_entry(
        &server,
        &cx,
        "key.create",
        &row.id,
        &format!("role {}, phi {}", row.role, row.phi),
    )
    .await;
    let mut v = serde_json::to_value(&row).unwrap_or_default();
    v["key"] = json!(key);
    ok(StatusCode::CREATED, v)
}

async fn revoke_key(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    if !server.registry.revoke_key(&id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no active key {id}"),
        ));
    }
    audit_entry(&server, &cx, "key.revoke", &id, "").await;
    ok(StatusCode::OK, json!({"revoked": id}))
}

#[derive(Deserialize)]
struct AuditQuery {
    action: Option<String>,
    target: Option<String>,
    limit: Option<i64>,
}

async fn audit(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = server
        .registry
        .audit_log(q.action.as_deref(), q.target.as_deref(), limit)
        .await?;
    ok(StatusCode::OK, json!({"entries": entries}))
}
