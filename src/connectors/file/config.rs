//! The file connector's configuration: `source: {type: file, ...}` and the `file` and
//! `stdout` sinks, how they are checked, and what they plan to.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::{PlanCx, Spanned};
use crate::formats::framing::SourceFormat;

/// `source: {type: file, path: in/*.hl7, format: hl7}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A path or glob, relative to the pipeline file; `-` reads stdin.
    pub path: Spanned<String>,
    /// How bytes are framed into records.
    #[schemars(extend("enum" = ["hl7", "ndjson", "json", "csv"]))]
    pub format: Spanned<String>,
}

impl FileSourceConfig {
    /// The files the glob matches now, in order (`-` is stdin).
    pub fn plan(&self, cx: &mut PlanCx<'_>, format: SourceFormat) -> Option<Vec<PathBuf>> {
        if format == SourceFormat::Avro {
            cx.err(
                &self.format,
                "avro records come from Kafka (Confluent wire format)",
            );
            return None;
        }
        if self.path.as_str() == "-" {
            return Some(vec![PathBuf::from("-")]);
        }
        let pattern = cx.resolve(&self.path);
        let paths: Vec<PathBuf> = match glob::glob(&pattern.to_string_lossy()) {
            Ok(paths) => paths
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect(),
            Err(e) => {
                cx.err(&self.path, format!("bad glob pattern: {e}"));
                return None;
            }
        };
        if paths.is_empty() {
            cx.err(
                &self.path,
                format!("no input file matches {}", pattern.display()),
            );
            return None;
        }
        Some(paths)
    }
}

/// Output file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    Ndjson,
    Parquet,
    Arrow,
}

/// `{name: out, type: file, path: out/patients.parquet, format: parquet}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The output file, relative to the pipeline file (directories are created).
    pub path: Spanned<String>,
    /// `ndjson` (default), `parquet` or `arrow` (IPC file).
    #[schemars(extend("enum" = ["ndjson", "json", "parquet", "arrow", "ipc"]))]
    pub format: Option<Spanned<String>>,
    /// Keep the provenance columns (`_raw` is always left out).
    #[serde(default)]
    pub provenance: bool,
}

/// `{name: out, type: stdout}`: NDJSON on standard output.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Only `ndjson` (the default).
    #[schemars(extend("enum" = ["ndjson", "json"]))]
    pub format: Option<Spanned<String>>,
    /// Keep the provenance columns (`_raw` is always left out).
    #[serde(default)]
    pub provenance: bool,
}

/// A planned file or stdout sink.
#[derive(Debug, Clone)]
pub struct FileSinkPlan {
    /// None = stdout.
    pub path: Option<PathBuf>,
    pub format: SinkFormat,
    pub provenance: bool,
}

impl FileSinkConfig {
    pub fn plan(&self, cx: &mut PlanCx<'_>) -> Option<FileSinkPlan> {
        let format = sink_format(cx, &self.format)?;
        let path = cx.resolve(&self.path);
        if let Err(e) = check_output_path(&path) {
            cx.err(&self.path, e);
            return None;
        }
        Some(FileSinkPlan {
            path: Some(path),
            format,
            provenance: self.provenance,
        })
    }
}

impl StdoutSinkConfig {
    pub fn plan(&self, cx: &mut PlanCx<'_>) -> Option<FileSinkPlan> {
        let format = sink_format(cx, &self.format)?;
        if let Some(f) = &self.format
            && format != SinkFormat::Ndjson
        {
            cx.err(f, "stdout is written as ndjson");
            return None;
        }
        Some(FileSinkPlan {
            path: None,
            format,
            provenance: self.provenance,
        })
    }
}

fn sink_format(cx: &mut PlanCx<'_>, f: &Option<Spanned<String>>) -> Option<SinkFormat> {
    match f.as_ref().map(|f| f.as_str()) {
        None | Some("ndjson") | Some("json") => Some(SinkFormat::Ndjson),
        Some("parquet") => Some(SinkFormat::Parquet),
        Some("arrow") | Some("ipc") => Some(SinkFormat::Arrow),
        Some(other) => {
            cx.err(
                f.as_ref().expect("some"),
                format!("unknown sink format {other:?} (ndjson, parquet, arrow)"),
            );
            None
        }
    }
}

/// Whether a file output can be written at `path`: not a directory, not under the kernel's
/// pseudo file systems, and its nearest existing ancestor a directory. (Missing directories
/// are created by the run.)
pub fn check_output_path(path: &Path) -> Result<(), String> {
    if ["/proc", "/sys", "/dev"]
        .iter()
        .any(|root| path.starts_with(root))
    {
        return Err(format!(
            "{} is not a place for an output file (a kernel pseudo file system)",
            path.display()
        ));
    }
    if path.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()));
    }
    let mut ancestor = path.parent();
    while let Some(a) = ancestor {
        if a.as_os_str().is_empty() || a.exists() {
            let a = if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            };
            if !a.is_dir() {
                return Err(format!(
                    "{} cannot be created: {} is a file, not a directory",
                    path.display(),
                    a.display()
                ));
            }
            if a.metadata().is_ok_and(|m| m.permissions().readonly()) {
                return Err(format!(
                    "{} cannot be written: {} is read-only",
                    path.display(),
                    a.display()
                ));
            }
            return Ok(());
        }
        ancestor = a.parent();
    }
    Ok(())
}
