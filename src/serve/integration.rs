//! Integrations as the API sees them: the seed's `IntegrationConfiguration` fields (facility,
//! system, connection, synchronization, monitoring, `isActive`) plus the pipeline that does
//! the work, checked before anything is stored: a pipeline that does not plan is answered
//! 422 with every problem at its `line:column`.

use std::path::PathBuf;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Server;
use super::api::ApiError;
use super::host::{Origin, Status};
use crate::spec::PipelineSpec;

/// A pipeline problem, located in the pipeline text.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The seed's system types.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SystemType {
    Ehr,
    Pms,
    Lis,
    Pharmacy,
    FacilityMgmt,
    Custom,
}

/// The seed's `IntegrationConfiguration` fields kept with an integration (never
/// credentials).
// Not `deny_unknown_fields`: the view flattens it beside its own fields (the input,
// `IntegrationIn`, is the strict one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeedFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facility_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_type: Option<SystemType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// The connected system's version (not the integration's revision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Endpoint, type, timeout, retry policy, authentication type (no credentials yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub connection: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub synchronization: Option<Value>,
    /// `healthCheckInterval`, `alertThresholds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub monitoring: Option<Value>,
}

/// What a client sends to create or update an integration.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntegrationIn {
    /// Required to create; when given to update, it must be the path's id.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")]
    pub id: Option<String>,
    pub facility_id: Option<String>,
    pub system_type: Option<SystemType>,
    pub system_name: Option<String>,
    pub vendor: Option<String>,
    /// The connected system's version (not the integration's revision).
    pub version: Option<String>,
    /// Endpoint, type, timeout, retry policy, authentication type (no credentials yet).
    #[schema(value_type = Option<Object>)]
    pub connection: Option<serde_json::Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    pub synchronization: Option<serde_json::Map<String, Value>>,
    /// `healthCheckInterval`, `alertThresholds`.
    #[schema(value_type = Option<Object>)]
    pub monitoring: Option<serde_json::Map<String, Value>>,
    /// The pipeline (YAML), as `plexus run` takes it; its `integration.id` must be `id`.
    pub pipeline: String,
    /// Run it (create: default false; update: unchanged when absent).
    pub is_active: Option<bool>,
}

impl IntegrationIn {
    fn fields(&self) -> SeedFields {
        SeedFields {
            facility_id: self.facility_id.clone(),
            system_type: self.system_type,
            system_name: self.system_name.clone(),
            vendor: self.vendor.clone(),
            version: self.version.clone(),
            connection: self.connection.clone().map(Value::Object),
            synchronization: self.synchronization.clone().map(Value::Object),
            monitoring: self.monitoring.clone().map(Value::Object),
        }
    }
}

/// An integration as the API shows it: its stored fields and what runs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationView {
    pub id: String,
    /// `registry` (created over the API) or `directory` (a pipeline file).
    pub origin: String,
    /// active, inactive or error (a failed start, or a failed health check while it runs).
    pub status: String,
    /// Why it is in error (or why an update was refused).
    pub reason: Option<String>,
    pub is_active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The pipeline file (directory integrations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When its downstream systems were last checked (ms since the epoch).
    pub last_health_check: Option<i64>,
    #[serde(flatten)]
    pub fields: SeedFields,
    /// What runs here (none when it never ran on this server).
    pub run: Option<super::host::Snapshot>,
}

/// A name that goes into paths and URLs: 1-64 letters (lower-case only with
/// `lower_only`), digits, `-`, `_`, `.`, starting with a letter or digit.
pub fn is_plain_name(name: &str, lower_only: bool) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_digit()
                || b"-_.".contains(&b)
                || b.is_ascii_lowercase()
                || (!lower_only && b.is_ascii_uppercase())
        })
}

/// Ids name directories and appear in URLs: lower-case letters, digits, `-`, `_`, `.`.
pub fn check_id(id: &str) -> Result<(), ApiError> {
    if is_plain_name(id, true) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "`id` must be 1-64 characters: lower-case letters, digits, '-', '_', '.', starting with a letter or digit",
            Vec::new(),
        ))
    }
}

/// Secrets are refused until they can be stored encrypted: never in plain text.
fn find_secret(v: &Value, at: &str) -> Option<String> {
    const SECRET: [&str; 6] = [
        "credentials",
        "password",
        "secret",
        "clientsecret",
        "apikey",
        "privatekey",
    ];
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            let path = format!("{at}.{k}");
            if SECRET.contains(&k.to_ascii_lowercase().as_str()) {
                Some(path)
            } else {
                find_secret(v, &path)
            }
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_secret(v, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// Where a registry integration's pipeline lives: relative paths in it (spool, outputs, the
/// dead-letter file) resolve in its own directory under the state directory.
pub fn pipeline_path(server: &Server, id: &str) -> PathBuf {
    server
        .options
        .state
        .join("integrations")
        .join(id)
        .join("pipeline.yaml")
}

/// Where integration `id`'s outputs go in testing mode (sinks, dead letters, metrics).
pub fn testing_dir(server: &Server, id: &str) -> PathBuf {
    server
        .options
        .state
        .join("integrations")
        .join(id)
        .join("testing")
}

/// Parses and plans `text` as integration `id`'s pipeline; every problem, located.
pub async fn plan_check(
    path: &std::path::Path,
    id: Option<&str>,
    text: &str,
) -> Result<PipelineSpec, Vec<Located>> {
    let located = |e: &crate::spec::SpecError| Located {
        line: e.location.line,
        column: e.location.column,
        message: e.message.clone(),
    };
    let spec =
        PipelineSpec::parse(path, text).map_err(|e| e.0.iter().map(located).collect::<Vec<_>>())?;
    if let Some(id) = id
        && *spec.integration.id != id
    {
        let span = spec.integration.id.span();
        let (line, column) = span
            .start()
            .map(|m| (m.line(), m.column()))
            .unwrap_or((1, 1));
        return Err(vec![Located {
            line,
            column,
            message: format!(
                "integration.id is {:?}; it must be the integration's id {id:?}",
                *spec.integration.id
            ),
        }]);
    }
    crate::plan::build(&spec)
        .await
        .map_err(|e| e.0.iter().map(located).collect::<Vec<_>>())?;
    Ok(spec)
}

/// Checks a create/update body: the fields to store, the pipeline and whether it should run.
pub async fn checked(
    server: &Server,
    id: &str,
    body: IntegrationIn,
) -> Result<(Value, String, Option<bool>), ApiError> {
    let config = serde_json::to_value(body.fields()).unwrap_or_default();
    if let Some(path) = find_secret(&config, "$") {
        return Err(ApiError::invalid(
            format!(
                "{path}: credentials are not accepted here, where they would be stored in plain text: store them with PUT /api/v1/secrets/{{name}} and refer to them as secret:NAME in the pipeline"
            ),
            Vec::new(),
        ));
    }
    spec_of(&pipeline_path(server, id), Some(id), &body.pipeline).await?;
    Ok((config, body.pipeline, body.is_active))
}

/// `plan_check` as the API answers it: 422 with every problem located.
pub async fn spec_of(
    path: &std::path::Path,
    id: Option<&str>,
    text: &str,
) -> Result<PipelineSpec, ApiError> {
    plan_check(path, id, text).await.map_err(|errors| {
        ApiError::invalid(
            format!("the pipeline has {} problem(s)", errors.len()),
            errors,
        )
    })
}

/// One integration as the API shows it: stored fields and what runs.
pub async fn show(server: &Server, id: &str) -> Result<IntegrationView, ApiError> {
    match server.registry.get(id).await {
        Ok(stored) => {
            let run = server.host.snapshot(id);
            let status = match (&run, stored.active) {
                (Some(s), true) => s.status,
                (Some(s), false) if s.status == Status::Error => Status::Error,
                _ => Status::Inactive,
            };
            Ok(IntegrationView {
                id: stored.id,
                origin: "registry".into(),
                status: status.as_str().into(),
                reason: run.as_ref().and_then(|r| r.reason.clone()),
                is_active: stored.active,
                revision: Some(stored.version),
                pipeline: Some(stored.pipeline),
                file: None,
                created_at: Some(stored.created_at),
                updated_at: Some(stored.updated_at),
                updated_by: Some(stored.updated_by),
                fields: serde_json::from_value(stored.config).unwrap_or_default(),
                last_health_check: run
                    .as_ref()
                    .and_then(|r| r.health.as_ref().map(|h| h.at_ms)),
                run,
            })
        }
        Err(super::registry::RegistryError::NotFound(_)) => match server.host.snapshot(id) {
            Some(run) if matches!(run.origin, Origin::Directory(_)) => Ok(directory_view(id, run)),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("integration {id} not found"),
            )),
        },
        Err(e) => Err(e.into()),
    }
}

fn directory_view(id: &str, run: super::host::Snapshot) -> IntegrationView {
    let file = match &run.origin {
        Origin::Directory(p) => Some(p.display().to_string()),
        Origin::Registry => None,
    };
    IntegrationView {
        id: id.to_string(),
        origin: "directory".into(),
        status: run.status.as_str().into(),
        reason: run.reason.clone(),
        is_active: true,
        revision: None,
        pipeline: None,
        file,
        created_at: None,
        updated_at: None,
        updated_by: None,
        fields: SeedFields::default(),
        last_health_check: run.health.as_ref().map(|h| h.at_ms),
        run: Some(run),
    }
}

/// Every integration: the registry's, then those from the pipelines directory.
pub async fn list(server: &Server) -> Result<Vec<IntegrationView>, ApiError> {
    let mut all = Vec::new();
    for stored in server.registry.list().await? {
        all.push(show(server, &stored.id).await?);
    }
    for (id, run) in server.host.snapshots() {
        if matches!(run.origin, Origin::Directory(_)) {
            all.push(directory_view(&id, run));
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_path_safe_and_secrets_are_found_anywhere() {
        for good in ["adt-feed", "a", "lab.results_2"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "A", "-x", "a/b", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        let v =
            json!({"connection": {"authentication": {"type": "basic", "credentials": {"u": 1}}}});
        assert_eq!(
            find_secret(&v, "$").as_deref(),
            Some("$.connection.authentication.credentials")
        );
        assert_eq!(
            find_secret(&json!({"a": [{"clientSecret": "x"}]}), "$").as_deref(),
            Some("$.a[0].clientSecret")
        );
        assert_eq!(
            find_secret(&json!({"connection": {"endpoint": "https://x"}}), "$"),
            None
        );
    }
}
