//! Integrations as the API sees them: the seed's `IntegrationConfiguration` fields (facility,
//! system, connection, synchronization, monitoring, `isActive`) plus the pipeline that does
//! the work, checked before anything is stored: a pipeline that does not plan is answered
//! 422 with every problem at its `line:column`.

use std::path::PathBuf;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Server;
use super::api::ApiError;
use super::host::Origin;
use crate::spec::PipelineSpec;

/// A pipeline problem, located in the pipeline text.
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The seed's system types.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemType {
    Ehr,
    Pms,
    Lis,
    Pharmacy,
    FacilityMgmt,
    Custom,
}

/// What a client sends to create or update an integration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntegrationIn {
    pub id: Option<String>,
    pub facility_id: Option<String>,
    pub system_type: Option<SystemType>,
    pub system_name: Option<String>,
    pub vendor: Option<String>,
    /// The connected system's version (not the integration's revision).
    pub version: Option<String>,
    pub connection: Option<Value>,
    pub synchronization: Option<Value>,
    pub monitoring: Option<Value>,
    /// The pipeline (YAML), as `plexus run` takes it.
    pub pipeline: String,
    pub is_active: Option<bool>,
}

/// Ids name directories and appear in URLs: lower-case letters, digits, `-`, `_`, `.`.
pub fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
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

/// Checks a create/update body: the configuration to store (seed fields), the pipeline and
/// whether it should run.
pub async fn checked(
    server: &Server,
    id: &str,
    body: IntegrationIn,
) -> Result<(Value, String, bool), ApiError> {
    let mut config = json!({
        "facilityId": body.facility_id,
        "systemType": body.system_type,
        "systemName": body.system_name,
        "vendor": body.vendor,
        "version": body.version,
        "connection": body.connection,
        "synchronization": body.synchronization,
        "monitoring": body.monitoring,
    });
    if let Some(m) = config.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    if let Some(path) = find_secret(&config, "$") {
        return Err(ApiError::invalid(
            format!(
                "{path}: credentials are not accepted: they would be stored unencrypted (encrypted credentials are not built yet)"
            ),
            Vec::new(),
        ));
    }
    let path = pipeline_path(server, id);
    plan_check(&path, Some(id), &body.pipeline)
        .await
        .map_err(|errors| {
            ApiError::invalid(
                format!("the pipeline has {} problem(s)", errors.len()),
                errors,
            )
        })?;
    Ok((config, body.pipeline, body.is_active.unwrap_or(false)))
}

/// One integration as the API shows it: stored fields and what runs.
pub async fn show(server: &Server, id: &str) -> Result<Value, ApiError> {
    match server.registry.get(id).await {
        Ok(stored) => {
            let mut v = stored.config.clone();
            let run = server.host.snapshot(id);
            let status = match (&run, stored.active) {
                (Some(s), true) => json!(s.status),
                (Some(s), false) if s.status == super::host::Status::Error => json!("error"),
                _ => json!("inactive"),
            };
            v["id"] = json!(stored.id);
            v["revision"] = json!(stored.version);
            v["isActive"] = json!(stored.active);
            v["status"] = status;
            v["reason"] = json!(run.as_ref().and_then(|r| r.reason.clone()));
            v["pipeline"] = json!(stored.pipeline);
            v["createdAt"] = json!(stored.created_at);
            v["updatedAt"] = json!(stored.updated_at);
            v["updatedBy"] = json!(stored.updated_by);
            v["origin"] = json!("registry");
            v["run"] = json!(run);
            Ok(v)
        }
        Err(super::registry::RegistryError::NotFound(_)) => match server.host.snapshot(id) {
            Some(run) if matches!(run.origin, Origin::Directory(_)) => Ok(directory_view(id, &run)),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("integration {id} not found"),
            )),
        },
        Err(e) => Err(e.into()),
    }
}

fn directory_view(id: &str, run: &super::host::Snapshot) -> Value {
    let path = match &run.origin {
        Origin::Directory(p) => p.display().to_string(),
        Origin::Registry => String::new(),
    };
    json!({
        "id": id,
        "origin": "directory",
        "file": path,
        "isActive": true,
        "status": run.status,
        "reason": run.reason,
        "run": run,
    })
}

/// Every integration: the registry's, then those from the pipelines directory.
pub async fn list(server: &Server) -> Result<Vec<Value>, ApiError> {
    let mut all = Vec::new();
    for stored in server.registry.list().await? {
        all.push(show(server, &stored.id).await?);
    }
    for (id, run) in server.host.snapshots() {
        if matches!(run.origin, Origin::Directory(_)) {
            all.push(directory_view(&id, &run));
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

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
