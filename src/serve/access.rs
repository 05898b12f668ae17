//! Access over the API: API keys (created, listed, revoked; a key's secret is shown once)
//! and sealed secrets (write-only: names and key ids are listed, values never leave).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Server;
use super::api::{ApiError, ApiResult, Ctx, Deleted, ErrorBody, audit_entry, ok, rejected};
use super::integration;
use super::keys::{self, Role};
use super::registry::KeyRow;

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyRow>,
}

/// A new key: shown once.
#[derive(Serialize, ToSchema)]
pub struct KeyCreated {
    #[serde(flatten)]
    pub row: KeyRow,
    /// The key itself (`plx_<id>_<secret>`): store it now, it is never shown again.
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: String,
}

/// API keys, without their secrets (admin).
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", security(("bearer" = [])),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_keys(State(server): State<Arc<Server>>, cx: axum::Extension<Ctx>) -> ApiResult {
    cx.need(Role::Admin)?;
    let keys = server.registry.keys().await?;
    ok(StatusCode::OK, KeyList { keys })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyIn {
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    pub role: Role,
    /// May read dead letters' original messages (PHI).
    #[serde(default)]
    pub phi: bool,
    /// A duration up to ten years (`90d`, `12h`, `30m`).
    #[schema(pattern = "^[0-9]{1,6}(ms|s|m|h|d)$")]
    pub expires_in: Option<String>,
}

/// Creates an API key; the answer is the only time it is shown (admin).
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", security(("bearer" = [])),
    request_body = KeyIn,
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_key(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    body: Result<Json<KeyIn>, JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Json(body) = body.map_err(rejected)?;
    let role = body.role;
    if body.name.trim().is_empty() || body.name.chars().count() > 100 {
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
    if expires.is_some_and(|d| d > std::time::Duration::from_secs(3650 * 86_400)) {
        return Err(ApiError::invalid(
            "expiresIn: at most ten years",
            Vec::new(),
        ));
    }
    let (row, key) = keys::create(&server.registry, &body.name, role, body.phi, expires).await?;
    audit_entry(
        &server,
        &cx,
        "key.create",
        &row.id,
        &format!("role {}, phi {}", row.role, row.phi),
    )
    .await;
    ok(StatusCode::CREATED, KeyCreated { row, key })
}

/// Revokes a key: it stops working at once (admin).
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Revoked), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn revoke_key(
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
    ok(StatusCode::OK, Revoked { revoked: id })
}

/// A stored secret, without its value.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretView {
    pub name: String,
    /// The master key that sealed it.
    pub key_id: String,
    pub updated_at: i64,
    pub updated_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretIn {
    /// The secret (write-only: never returned, logged or audited).
    #[schema(min_length = 1, max_length = 65536)]
    pub value: String,
}

fn check_secret_name(name: &str) -> Result<(), ApiError> {
    if integration::is_plain_name(name, false) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "a secret's name is 1-64 letters, digits, '-', '_', '.', starting with a letter or digit",
            Vec::new(),
        ))
    }
}

/// The stored secrets: names and key ids, never values (admin).
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets", security(("bearer" = [])),
    responses((status = 200, body = SecretList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_secrets(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let secrets = server
        .registry
        .secrets()
        .await?
        .into_iter()
        .map(|s| SecretView {
            name: s.name,
            key_id: s.key_id,
            updated_at: s.updated_at,
            updated_by: s.updated_by,
        })
        .collect();
    ok(StatusCode::OK, SecretList { secrets })
}

/// Stores a secret sealed under the master key; pipelines read it as `secret:NAME` (admin).
#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = SecretIn,
    responses((status = 200, body = SecretView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_secret(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(name): Path<String>,
    body: Result<Json<SecretIn>, JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    check_secret_name(&name)?;
    let Json(body) = body.map_err(rejected)?;
    if body.value.is_empty() || body.value.chars().count() > 65_536 {
        return Err(ApiError::invalid(
            "`value` must have 1 to 65536 characters",
            Vec::new(),
        ));
    }
    let Some(keyring) = &server.vault.keyring else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no master key (PLEXUS_MASTER_KEY): secrets cannot be stored",
        ));
    };
    let mut sealed = keyring
        .seal(&name, &body.value)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    sealed.updated_by = cx.caller.actor();
    server.registry.put_secret(&sealed).await?;
    if let Err(e) = server.vault.refresh(&server.registry).await {
        tracing::error!(error = %e, "serve: secret store refresh");
    }
    audit_entry(
        &server,
        &cx,
        "secret.put",
        &name,
        &format!("sealed with key {}", sealed.key_id),
    )
    .await;
    ok(
        StatusCode::OK,
        SecretView {
            name,
            key_id: sealed.key_id,
            updated_at: super::registry::now_ms(),
            updated_by: sealed.updated_by,
        },
    )
}

/// Removes a secret (admin).
#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Deleted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete_secret(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(name): Path<String>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    if !server.registry.delete_secret(&name).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no secret {name}"),
        ));
    }
    if let Err(e) = server.vault.refresh(&server.registry).await {
        tracing::error!(error = %e, "serve: secret store refresh");
    }
    audit_entry(&server, &cx, "secret.delete", &name, "").await;
    ok(StatusCode::OK, Deleted { deleted: name })
}
