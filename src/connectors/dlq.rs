//! The dead-letter output: one NDJSON line per rejected record, holding the original record
//! unchanged with the stage, rule and reason, and its provenance — enough to fix the cause and
//! replay it.
//!
//! The original record is stored as text when it is valid UTF-8 (`record`), otherwise as hex
//! (`record_hex`), so no byte is ever altered.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use serde::Serialize;

use super::{ConnectorError, DeadLetterSink};
use crate::record::{CONTROL_ID, DeadLetters, OFFSET, RAW, RECORD_INDEX, SOURCE};

/// One dead letter as written.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub pipeline: String,
    pub integration: String,
    pub stage: String,
    pub rule: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub record_hex: Option<String>,
    pub source: Option<String>,
    pub offset: Option<i64>,
    pub record_index: Option<i64>,
    pub control_id: Option<String>,
    pub failed_at: String,
}

/// Turns operator dead letters into records.
pub fn records(
    pipeline: &str,
    integration: &str,
    stage: &str,
    dead: &DeadLetters,
) -> Vec<DeadLetterRecord> {
    let rows = &dead.rows;
    let raw = rows
        .column_by_name(RAW)
        .and_then(|c| c.as_binary_opt::<i32>().cloned());
    let source = rows
        .column_by_name(SOURCE)
        .and_then(|c| c.as_string_opt::<i32>().cloned());
    let control = rows
        .column_by_name(CONTROL_ID)
        .and_then(|c| c.as_string_opt::<i32>().cloned());
    let offset = rows
        .column_by_name(OFFSET)
        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned());
    let index = rows
        .column_by_name(RECORD_INDEX)
        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned());
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    (0..rows.num_rows())
        .map(|i| {
            let bytes = raw.as_ref().filter(|r| !r.is_null(i)).map(|r| r.value(i));
            let (record, record_hex) = match bytes.map(std::str::from_utf8) {
                Some(Ok(text)) => (Some(text.to_string()), None),
                Some(Err(_)) => (
                    None,
                    bytes.map(|b| b.iter().map(|x| format!("{x:02x}")).collect()),
                ),
                None => (None, None),
            };
            let string = |a: &Option<arrow::array::StringArray>| {
                a.as_ref()
                    .filter(|a| !a.is_null(i))
                    .map(|a| a.value(i).to_string())
            };
            let int = |a: &Option<arrow::array::Int64Array>| {
                a.as_ref().filter(|a| !a.is_null(i)).map(|a| a.value(i))
            };
            DeadLetterRecord {
                pipeline: pipeline.to_string(),
                integration: integration.to_string(),
                stage: stage.to_string(),
                rule: dead.rule.get(i).cloned().unwrap_or_default(),
                reason: dead.reason.get(i).cloned().unwrap_or_default(),
                record,
                record_hex,
                source: string(&source),
                offset: int(&offset),
                record_index: int(&index),
                control_id: string(&control).or_else(|| bytes.and_then(hl7_control_id)),
                failed_at: now.clone(),
            }
        })
        .collect()
}

/// MSH-10 read straight from the bytes of an HL7 record that failed to parse, so that even
/// those dead letters carry their correlation id.
pub(crate) fn hl7_control_id(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
    if !raw.starts_with(b"MSH") || raw.len() < 4 {
        return None;
    }
    let line = &raw[..memchr::memchr2(b'\r', b'\n', raw).unwrap_or(raw.len())];
    let id = line.split(|&b| b == raw[3]).nth(9)?;
    (!id.is_empty()).then(|| String::from_utf8_lossy(id).into_owned())
}

/// NDJSON dead-letter file.
pub struct DlqFile {
    path: PathBuf,
    pipeline: String,
    integration: String,
    out: Option<BufWriter<File>>,
    /// Written under a temporary name, renamed when complete (batch runs; see `FileSink`).
    staged: bool,
}

impl DlqFile {
    /// The file is created on the first dead letter, so a clean run leaves none behind.
    pub fn new(path: &Path, pipeline: &str, integration: &str) -> Self {
        DlqFile {
            path: path.to_path_buf(),
            pipeline: pipeline.to_string(),
            integration: integration.to_string(),
            out: None,
            staged: false,
        }
    }

    /// Writes under a temporary name and renames it into place at `finish`.
    pub fn staged(mut self) -> Self {
        self.staged = true;
        self
    }

    fn written_path(&self) -> PathBuf {
        if self.staged {
            crate::connectors::file::sink::staging_path(&self.path)
        } else {
            self.path.clone()
        }
    }

    fn io(&self, source: std::io::Error) -> ConnectorError {
        ConnectorError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}

impl DeadLetterSink for DlqFile {
    fn write(&mut self, stage: &str, dead: &DeadLetters) -> Result<(), ConnectorError> {
        if self.out.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
            }
            // A stream's dead letters accumulate across restarts.
            let f = if self.staged {
                File::create(self.written_path())
            } else {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
            }
            .map_err(|e| self.io(e))?;
            self.out = Some(BufWriter::new(f));
        }
        let lines = records(&self.pipeline, &self.integration, stage, dead);
        let out = self.out.as_mut().expect("opened above");
        let mut result = Ok(());
        for r in lines {
            let line = serde_json::to_string(&r).expect("plain struct serializes");
            if let Err(e) = writeln!(out, "{line}") {
                result = Err(e);
                break;
            }
        }
        result.map_err(|e| self.io(e))
    }

    fn barrier(&mut self) -> Result<Option<super::Durable>, ConnectorError> {
        if let Some(out) = self.out.as_mut() {
            // A stream's source commits once its dead letters are on disk.
            let staged = self.staged;
            let r = out.flush().and_then(|()| {
                if staged {
                    Ok(())
                } else {
                    out.get_ref().sync_data()
                }
            });
            r.map_err(|e| self.io(e))?;
        }
        Ok(None)
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        match self.out.as_mut() {
            Some(out) => {
                let r = out.flush();
                r.map_err(|e| self.io(e))?;
                if self.staged {
                    std::fs::rename(self.written_path(), &self.path).map_err(|e| self.io(e))?;
                }
                Ok(())
            }
            None => {
                // A previous run's dead letters must not be mistaken for this run's.
                match std::fs::remove_file(&self.path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(self.io(e)),
                }
            }
        }
    }
}
