//! An integration's revisions: the history, a diff between two revisions, and rollback
//! (an earlier revision's configuration and pipeline stored as the next revision).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Server;
use super::api::{ApiResult, Ctx, ErrorBody, audit_entry, bad_body, ok, rejected};
use super::integration::{self, IntegrationView, SeedFields};
use super::keys::Role;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub revision: i64,
    pub config: SeedFields,
    pub pipeline: String,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub id: String,
    pub versions: Vec<VersionView>,
}

/// Every stored revision (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/versions", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = VersionList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn versions(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    server.registry.get(&id).await?;
    let versions = server
        .registry
        .versions(&id)
        .await?
        .into_iter()
        .map(|v| VersionView {
            revision: v.version,
            config: serde_json::from_value(v.config).unwrap_or_default(),
            pipeline: v.pipeline,
            created_at: v.created_at,
            created_by: v.created_by,
        })
        .collect();
    ok(StatusCode::OK, VersionList { id, versions })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackIn {
    /// The revision whose configuration and pipeline become the next revision.
    pub revision: i64,
}

/// Makes an earlier revision's configuration and pipeline the next revision (admin).
#[utoipa::path(post, path = "/api/v1/integrations/{id}/rollback", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = RollbackIn,
    responses((status = 200, body = IntegrationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn rollback(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<RollbackIn>, JsonRejection>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let Json(body) = body.map_err(rejected)?;
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The older revision (default: the one before `to`).
    pub from: Option<i64>,
    /// The newer revision (default: the current one).
    pub to: Option<i64>,
}

/// One configuration field that differs between two revisions.
#[derive(Serialize, ToSchema, PartialEq, Debug)]
pub struct FieldChange {
    pub field: String,
    #[schema(value_type = Option<Object>)]
    pub from: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub to: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct DiffOut {
    pub id: String,
    pub from: i64,
    pub to: i64,
    /// The pipelines as a unified diff (empty when they are the same).
    pub pipeline: String,
    /// The configuration fields that differ.
    pub config: Vec<FieldChange>,
}

/// What changed between two revisions: the pipeline as a unified diff, the configuration
/// field by field (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/diff", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path), DiffQuery),
    responses((status = 200, body = DiffOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn diff(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let Query(q) = q.map_err(bad_body)?;
    let current = server.registry.get(&id).await?;
    let to = q.to.unwrap_or(current.version);
    let from = q.from.unwrap_or((to - 1).max(1));
    let (old, new) = (
        server.registry.version(&id, from).await?,
        server.registry.version(&id, to).await?,
    );
    let pipeline = similar::TextDiff::from_lines(&old.pipeline, &new.pipeline)
        .unified_diff()
        .context_radius(3)
        .header(&format!("revision {from}"), &format!("revision {to}"))
        .to_string();
    let pipeline = if old.pipeline == new.pipeline {
        String::new()
    } else {
        pipeline
    };
    ok(
        StatusCode::OK,
        DiffOut {
            id,
            from,
            to,
            pipeline,
            config: field_changes(&old.config, &new.config),
        },
    )
}

/// The top-level fields of two JSON objects that differ, by name.
fn field_changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<FieldChange> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .map(|n| FieldChange {
            field: n.clone(),
            from: a.get(n).cloned(),
            to: b.get(n).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_changes_are_listed_by_field() {
        let old = json!({"facility": "GHH", "system": {"type": "ehr"}, "gone": 1});
        let new = json!({"facility": "GHH", "system": {"type": "lis"}, "added": true});
        let names: Vec<String> = field_changes(&old, &new)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(names, ["added", "gone", "system"]);
        assert!(field_changes(&old, &old).is_empty());
    }
}
