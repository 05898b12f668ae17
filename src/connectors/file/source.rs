//! File source: reads files (or stdin) and frames them into raw records.
//!
//! Framing per format: HL7 by the batch-aware splitter (plain concatenated messages and
//! FHS/BHS batch files; bytes outside any message become records too, so the parse stage
//! dead-letters them instead of losing them); NDJSON by lines; CSV by records, honouring quoted
//! fields that contain newlines (the first record of each file is the header).

use std::path::PathBuf;

use arrow::record_batch::RecordBatch;

use super::super::{BatchSource, ConnectorError};
use super::mapped::{Input, Released};
use crate::formats::framing::{Framer, SourceFormat};
use crate::record::raw_batch;

self_cell::self_cell!(
    /// A file and the framer reading it (which borrows its bytes).
    struct Framed {
        owner: Input,
        #[covariant]
        dependent: Framer,
    }
);

/// The file being emitted.
struct OpenFile {
    name: String,
    framed: Framed,
    /// Bytes before this were handed out in batches (what progress counts).
    consumed: usize,
    /// Pages given back to the kernel.
    released: Released,
}

impl OpenFile {
    /// Gives the pages before `consumed` back: the process's resident set stays the size of
    /// a batch, not of the file.
    fn release(&mut self) {
        let consumed = self.consumed;
        let OpenFile {
            framed, released, ..
        } = self;
        released.upto(framed.borrow_owner(), consumed);
    }
}

pub struct FileSource {
    paths: Vec<PathBuf>,
    format: SourceFormat,
    max_rows: usize,
    max_bytes: usize,
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

    /// Closes a batch once its records hold this many bytes (default 8 MiB; pipelines plan
    /// 512 KiB).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
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
            max_bytes: 8 << 20,
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
        let io = |source| ConnectorError::Io {
            path: if name == "-" {
                "stdin".into()
            } else {
                name.clone()
            },
            source,
        };
        let input = Input::open(&path).map_err(io)?;
        let format = self.format;
        let framed = Framed::new(input, |input| Framer::new(input.bytes(), format));
        let name = if name == "-" {
            "stdin".to_string()
        } else {
            name
        };
        self.current = Some(OpenFile {
            name,
            framed,
            consumed: 0,
            released: Released::default(),
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
        let take = room.map_or(self.max_rows, |r| r.min(self.max_rows));
        loop {
            if let Some(file) = &mut self.current {
                let mut spans = Vec::with_capacity(take.min(8192));
                let mut bytes = 0;
                let mut ended = false;
                // A batch closes at `max_rows` records or `max_bytes` of them: what is in
                // flight between stages stays bounded whatever the records' size.
                while spans.len() < take && bytes < self.max_bytes {
                    match file.framed.with_dependent_mut(|_, f| f.next_span()) {
                        Some(span) => {
                            bytes += span.1 - span.0;
                            spans.push(span);
                        }
                        None => {
                            ended = true;
                            break;
                        }
                    }
                }
                let len = file.framed.borrow_owner().bytes().len();
                if !spans.is_empty() {
                    let data = file.framed.borrow_owner().bytes();
                    let slice: Vec<(usize, &[u8])> =
                        spans.iter().map(|&(s, e)| (s, &data[s..e])).collect();
                    let batch = raw_batch(&file.name, &slice, self.next_index);
                    self.next_index += slice.len();
                    let end = spans.last().map_or(len, |s| s.1);
                    // At the end of the file the rest (separators, padding) is read too.
                    let end = if ended { len } else { end };
                    self.bytes_done += (end - file.consumed) as u64;
                    file.consumed = end;
                    file.release();
                    return Ok(Some(batch));
                }
                self.bytes_done += (len - file.consumed) as u64;
                self.warnings
                    .extend(file.framed.borrow_dependent().diagnostics(&file.name));
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    fn read_all(source: &mut FileSource) -> Vec<RecordBatch> {
        std::iter::from_fn(|| source.next_batch().unwrap()).collect()
    }

    #[test]
    fn a_mapped_file_is_read_in_batches_bounded_by_bytes_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.hl7");
        // A batch file: the trailers' counts are checked across the whole file.
        let mut feed = b"FHS|^~\\&\rBHS|^~\\&\r".to_vec();
        for i in 0..1000 {
            feed.extend_from_slice(
                format!("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|{i}|P|2.5\rPID|1||{i}\r").as_bytes(),
            );
        }
        feed.extend_from_slice(b"BTS|999\rFTS|1\r");
        std::fs::write(&path, &feed).unwrap();
        let mut source =
            FileSource::new(vec![path.clone()], SourceFormat::Hl7, 300).with_max_bytes(4096);
        let batches = read_all(&mut source);
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 1000);
        assert!(batches.iter().all(|b| b.num_rows() <= 300));
        // 4 KiB of ~50-byte messages: about 80 per batch, not 300.
        assert!(
            batches.iter().all(|b| b.num_rows() < 100),
            "{}",
            batches[0].num_rows()
        );
        let first = batches[0].column(0).as_binary::<i32>().value(0);
        assert!(first.starts_with(b"MSH|") && first.windows(8).any(|w| w == b"PID|1||0"));
        assert_eq!(
            source.progress(),
            (feed.len() as u64, Some(feed.len() as u64))
        );
        let warnings = source.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("BTS-1 declares 999 messages but 1000")),
            "{warnings:?}"
        );

        // NDJSON and CSV through the same path; an empty file is no records.
        let nd = dir.path().join("a.ndjson");
        std::fs::write(&nd, "{\"a\":1}\n\n{\"a\":2}\r\n{\"a\":3}").unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "h1,h2\n1,\"x\ny\"\n2,z\n").unwrap();
        let empty = dir.path().join("empty.ndjson");
        std::fs::write(&empty, "").unwrap();
        let mut s = FileSource::new(vec![nd, empty], SourceFormat::Ndjson, 2);
        let rows: Vec<usize> = read_all(&mut s).iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows, [2, 1]);
        let mut s = FileSource::new(vec![csv], SourceFormat::Csv, 10);
        let b = read_all(&mut s);
        let raw = b[0].column(0).as_binary::<i32>();
        assert_eq!(
            (raw.value(0), raw.value(1)),
            (&b"1,\"x\ny\""[..], &b"2,z"[..])
        );
    }
}
