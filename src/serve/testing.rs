//! Testing mode's outputs over the API. An integration activated with `?mode=testing` runs on
//! live input, its sinks, dead letters, metrics and alerts diverted to files under
//! `--state/integrations/<id>/testing/` (`Plan::divert_outputs`). These routes list those
//! files (no content: viewer), read one (its records are patient data: the `phi` scope, and
//! the read is audited) and clear them between test sessions (admin, not while testing).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Server;
use super::api::{ApiError, ApiResult, Ctx, audit_entry, bad_body, ok};
use super::integration::{self, is_plain_name};
use super::keys::Role;

/// One output file of testing mode.
#[derive(Serialize, ToSchema)]
pub struct TestingOutput {
    /// `<sink>.ndjson`, `<pipeline>.dlq.ndjson`, breaker events, alerts.
    pub file: String,
    pub bytes: u64,
    /// Records (lines) in it.
    pub records: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestingOutputs {
    /// Whether the integration runs in testing mode now.
    pub testing: bool,
    pub outputs: Vec<TestingOutput>,
}

/// The integration's testing-mode output files, without their content (viewer).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/testing", operation_id = "testing_outputs", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = TestingOutputs), (status = 401, body = super::api::ErrorBody),
        (status = 403, body = super::api::ErrorBody), (status = 404, body = super::api::ErrorBody),
        (status = 429, body = super::api::ErrorBody), (status = 503, body = super::api::ErrorBody)))]
pub async fn outputs(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let dir = dir_of(&server, &id).await?;
    let outputs = blocking(move || Ok(list(&dir))).await?;
    ok(
        StatusCode::OK,
        TestingOutputs {
            testing: server.host.testing_dir(&id).is_some(),
            outputs,
        },
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Records to skip (default 0).
    pub offset: Option<usize>,
    /// Records to return (default 100, at most 1,000).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct TestingRecords {
    pub file: String,
    pub total: usize,
    /// Each record as written (NDJSON lines parsed; a line that is not JSON as a string).
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<serde_json::Value>,
    pub truncated: bool,
}

/// Records of one testing-mode output file (viewer with the `phi` scope; audited).
#[utoipa::path(get, path = "/api/v1/integrations/{id}/testing/{file}", operation_id = "testing_read", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path), ("file" = String, Path), ReadQuery),
    responses((status = 200, body = TestingRecords), (status = 400, body = super::api::ErrorBody),
        (status = 401, body = super::api::ErrorBody), (status = 403, body = super::api::ErrorBody),
        (status = 404, body = super::api::ErrorBody), (status = 429, body = super::api::ErrorBody),
        (status = 503, body = super::api::ErrorBody)))]
pub async fn read(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path((id, file)): Path<(String, String)>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> ApiResult {
    cx.need(Role::Viewer)?;
    let Query(q) = q.map_err(bad_body)?;
    let dir = dir_of(&server, &id).await?;
    if !cx.caller.phi {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "testing outputs hold patient data: this needs a key with the phi scope",
        ));
    }
    // Only a file the listing shows: a name is never a path.
    let listed = {
        let dir = dir.clone();
        blocking(move || Ok(list(&dir))).await?
    };
    if !is_plain_name(&file, false) || !listed.iter().any(|o| o.file == file) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("integration {id} has no testing output {file:?}"),
        ));
    }
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(100).min(1000));
    let path = dir.join(&file);
    let (total, records) = blocking(move || page(&path, offset, limit)).await?;
    // A privileged read: who saw which test output, when, from where.
    let detail = format!("{file} records {offset}..{}", offset + records.len());
    audit_entry(&server, &cx, "testing.read_output", &id, &detail).await;
    ok(
        StatusCode::OK,
        TestingRecords {
            file,
            total,
            truncated: offset + records.len() < total,
            records,
        },
    )
}

#[derive(Serialize, ToSchema)]
pub struct TestingCleared {
    pub removed: Vec<String>,
}

/// Removes the testing-mode outputs (admin). Refused (409) while the integration runs in
/// testing mode; its spool (messages accepted but not yet processed) stays.
#[utoipa::path(delete, path = "/api/v1/integrations/{id}/testing", operation_id = "testing_clear", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = TestingCleared), (status = 401, body = super::api::ErrorBody),
        (status = 403, body = super::api::ErrorBody), (status = 404, body = super::api::ErrorBody),
        (status = 409, body = super::api::ErrorBody), (status = 429, body = super::api::ErrorBody),
        (status = 503, body = super::api::ErrorBody)))]
pub async fn clear(
    State(server): State<Arc<Server>>,
    cx: axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> ApiResult {
    cx.need(Role::Admin)?;
    let dir = dir_of(&server, &id).await?;
    if server.host.testing_dir(&id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("integration {id} runs in testing mode: deactivate it first"),
        ));
    }
    let removed = blocking(move || remove(&dir)).await?;
    let detail = format!("{} file(s)", removed.len());
    audit_entry(&server, &cx, "testing.clear", &id, &detail).await;
    ok(StatusCode::OK, TestingCleared { removed })
}

/// Runs file work off the async threads; its failure is a 503 naming the file.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the task failed"))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))
}

/// The testing directory of a stored integration (404 for an unknown one).
async fn dir_of(server: &Server, id: &str) -> Result<PathBuf, ApiError> {
    server.registry.get(id).await?;
    Ok(integration::testing_dir(server, id))
}

/// The regular files directly in `dir` (the spool and metrics directories are not outputs
/// to read one by one), by name.
fn list(dir: &FsPath) -> Vec<TestingOutput> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<TestingOutput> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let file = e.file_name().to_str()?.to_string();
            let bytes = e.metadata().ok()?.len();
            let records = std::fs::read(e.path())
                .map(|b| bytecount_lines(&b))
                .unwrap_or(0);
            Some(TestingOutput {
                file,
                bytes,
                records,
            })
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// Lines, counting a last line without its newline.
fn bytecount_lines(b: &[u8]) -> u64 {
    let newlines = b.iter().filter(|&&c| c == b'\n').count() as u64;
    newlines + u64::from(b.last().is_some_and(|&c| c != b'\n'))
}

fn page(
    path: &FsPath,
    offset: usize,
    limit: usize,
) -> Result<(usize, Vec<serde_json::Value>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let records = lines
        .iter()
        .skip(offset)
        .take(limit)
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| serde_json::Value::from(*l)))
        .collect();
    Ok((lines.len(), records))
}

/// Removes the outputs and the metrics directory; keeps the spool.
fn remove(dir: &FsPath) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(removed);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let done = match (is_dir, name.as_str()) {
            (true, "spool") => continue,
            (true, _) => std::fs::remove_dir_all(e.path()),
            (false, _) => std::fs::remove_file(e.path()),
        };
        done.map_err(|err| format!("{}: {err}", e.path().display()))?;
        removed.push(name);
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_with_or_without_a_final_newline() {
        assert_eq!(bytecount_lines(b""), 0);
        assert_eq!(bytecount_lines(b"{}\n{}\n"), 2);
        assert_eq!(bytecount_lines(b"{}\n{}"), 2);
    }

    #[test]
    fn clearing_keeps_the_spool_and_lists_what_went() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("out.ndjson"), "{\"a\":1}\n").unwrap();
        std::fs::create_dir_all(dir.path().join("metrics/_state")).unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        std::fs::write(dir.path().join("spool/0001"), "MSH|").unwrap();
        let listed = list(dir.path());
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].records, listed[0].bytes), (1, 8));
        assert_eq!(remove(dir.path()).unwrap(), vec!["metrics", "out.ndjson"]);
        assert!(dir.path().join("spool/0001").exists());
        assert!(list(dir.path()).is_empty());
    }
}
