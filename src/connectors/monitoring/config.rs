//! Where the monitoring outputs go (window rows, breaker events, alerts) and where window
//! state is kept: planned from `monitoring:` by `plan::windows`.

use std::path::PathBuf;

use crate::net::secret::SecretRef;

/// Where window state is checkpointed.
#[derive(Debug, Clone, PartialEq)]
pub enum StateStore {
    /// A directory of JSON snapshots (written atomically).
    Dir(PathBuf),
    /// PostgreSQL, URL from the environment variable.
    Postgres { url_env: String },
}

/// Where window rows are written as Parquet.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsLocation {
    /// A local directory.
    Dir(PathBuf),
    /// An object store: `s3://bucket/prefix` (S3 or an S3-compatible store; endpoint and
    /// credentials from the standard `AWS_*` environment variables).
    Url(url::Url),
}

impl MetricsLocation {
    /// Parses `monitoring.metrics.path`: an `s3://` URL, or a path (relative to the pipeline).
    pub fn parse(raw: &str, resolve: impl Fn(&str) -> PathBuf) -> Result<Self, String> {
        if !raw.contains("://") {
            return Ok(MetricsLocation::Dir(resolve(raw)));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
        match url.scheme() {
            "s3" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(MetricsLocation::Url(url)),
            "s3" => Err(format!("`{raw}` names no bucket (s3://BUCKET/prefix)")),
            "file" => url
                .to_file_path()
                .map(MetricsLocation::Dir)
                .map_err(|_| format!("`{raw}` is not a local path")),
            other => Err(format!(
                "metrics go to a directory or an s3:// URL (S3-compatible stores too), not {other}://"
            )),
        }
    }
}

/// The monitoring outputs (by default next to the pipeline file, named after it).
#[derive(Debug, Clone)]
pub struct MonitoringPlan {
    pub metrics: MetricsLocation,
    pub metrics_topic: Option<String>,
    pub events_path: PathBuf,
    pub events_topic: Option<String>,
    pub alerts_path: PathBuf,
    pub alerts_topic: Option<String>,
    pub alerts_webhook: Option<(String, Option<SecretRef>)>,
    pub state: StateStore,
}
