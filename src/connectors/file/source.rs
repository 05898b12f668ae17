//! File source: reads files (or stdin) and frames them into raw records.
//!
//! Framing per format: HL7 by the batch-aware splitter (plain concatenated messages and
//! FHS/BHS batch files; bytes outside any message become records too, so the parse stage
//! dead-letters them instead of losing them); NDJSON by lines; CSV by records, honouring quoted
//! fields that contain newlines (the first record of each file is the header).

use std::io::Read;
use std::path::PathBuf;

use arrow::record_batch::RecordBatch;

use super::super::{BatchSource, ConnectorError};
use crate::formats::framing::SourceFormat;
use crate::formats::framing::frame;
use crate::record::raw_batch;

/// The file being emitted: its name, bytes, record spans and the next record to emit.
struct OpenFile {
    name: String,
    data: Vec<u8>,
    records: Vec<(usize, usize)>,
    cursor: usize,
}

pub struct FileSource {
    paths: Vec<PathBuf>,
    format: SourceFormat,
    max_rows: usize,
    next_file: usize,
    current: Option<OpenFile>,
    next_index: usize,
    bytes_done: u64,
    bytes_total: Option<u64>,
    warnings: Vec<String>,
    /// Set by a signal: stop reading; what was read is finished and accounted for.
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    interrupted: bool,
    /// `--max-records`: read no more records than this (a sample of a big file).
    limit: Option<usize>,
}

impl FileSource {
    /// Reads at most `limit` records (in file order), then ends as if the input did.
    pub fn with_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit.map(|n| n as usize);
        self
    }

    /// Stops reading when `stop` is set (SIGTERM/Ctrl-C): the run drains and ends.
    pub fn with_stop(mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    pub fn new(paths: Vec<PathBuf>, format: SourceFormat, max_rows: usize) -> Self {
        let bytes_total = paths
            .iter()
            .map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
            .sum::<Option<u64>>();
        FileSource {
            paths,
            format,
            max_rows: max_rows.max(1),
            next_file: 0,
            current: None,
            next_index: 0,
            bytes_done: 0,
            bytes_total,
            warnings: Vec::new(),
            stop: None,
            interrupted: false,
            limit: None,
        }
    }

    fn open_next(&mut self) -> Result<bool, ConnectorError> {
        let Some(path) = self.paths.get(self.next_file).cloned() else {
            return Ok(false);
        };
        self.next_file += 1;
        let name = path.to_string_lossy().into_owned();
        let data = if name == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|source| ConnectorError::Io {
                    path: "stdin".into(),
                    source,
                })?;
            buf
        } else {
            std::fs::read(&path).map_err(|source| ConnectorError::Io {
                path: name.clone(),
                source,
            })?
        };
        let records = frame(&data, self.format, &name, &mut self.warnings);
        let name = if name == "-" {
            "stdin".to_string()
        } else {
            name
        };
        self.current = Some(OpenFile {
            name,
            data,
            records,
            cursor: 0,
        });
        Ok(true)
    }
}

impl BatchSource for FileSource {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            self.interrupted = true;
            return Ok(None);
        }
        let room = self.limit.map(|l| l.saturating_sub(self.next_index));
        if room == Some(0) {
            return Ok(None);
        }
        loop {
            if let Some(OpenFile {
                name,
                data,
                records,
                cursor,
            }) = &mut self.current
            {
                if *cursor < records.len() {
                    let take = room.map_or(self.max_rows, |r| r.min(self.max_rows));
                    let end = (*cursor + take).min(records.len());
                    let slice: Vec<(usize, &[u8])> = records[*cursor..end]
                        .iter()
                        .map(|&(s, e)| (s, &data[s..e]))
                        .collect();
                    let batch = raw_batch(name, &slice, self.next_index);
                    self.next_index += slice.len();
                    let consumed = if end == records.len() {
                        data.len()
                    } else {
                        records[end].0
                    };
                    let before = if *cursor == 0 { 0 } else { records[*cursor].0 };
                    self.bytes_done += (consumed - before) as u64;
                    *cursor = end;
                    return Ok(Some(batch));
                }
                if records.is_empty() {
                    self.bytes_done += data.len() as u64;
                }
                self.current = None;
            }
            if !self.open_next()? {
                return Ok(None);
            }
        }
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.bytes_done, self.bytes_total)
    }

    fn warnings(&self) -> Vec<String> {
        let mut w = self.warnings.clone();
        if self.interrupted {
            let total = self
                .bytes_total
                .map_or(String::new(), |t| format!(" of {t}"));
            w.push(format!(
                "interrupted: input read up to byte {}{total} ({} records); the rest was not read",
                self.bytes_done, self.next_index
            ));
        }
        w
    }
}
