//! Window rows as Parquet files, one directory per window, partitioned the Hive way by date
//! and hour of the window start (`health/date=2026-11-26/hour=14/part-….parquet`), so that
//! analysts' engines (DataFusion, DuckDB, Spark) prune by time without reading everything.
//! (The window's name is a column in the files, so it is not a `window=` partition too.)
//!
//! Rows are buffered per partition and written as one new file per partition on `flush`
//! (each barrier, and at the end): files are immutable once written, and are written under a
//! temporary name and renamed, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, UInt32Array};
use arrow::datatypes::TimestampMillisecondType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::connectors::ConnectorError;

pub struct PartitionedParquet {
    dir: PathBuf,
    /// Distinguishes this run's files from earlier runs' (never overwrites).
    run_id: String,
    seq: u64,
    /// Partition directory (relative) → rows waiting.
    buffered: BTreeMap<String, Vec<RecordBatch>>,
    pub files_written: u64,
    pub rows_written: u64,
}

impl PartitionedParquet {
    pub fn new(dir: &Path) -> Self {
        PartitionedParquet {
            dir: dir.to_path_buf(),
            run_id: format!(
                "{}-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f"),
                std::process::id()
            ),
            seq: 0,
            buffered: BTreeMap::new(),
            files_written: 0,
            rows_written: 0,
        }
    }

    /// Buffers window rows (a batch of `window_row_schema`) by partition.
    pub fn write(&mut self, window: &str, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let starts = batch
            .column_by_name("window_start")
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            .ok_or_else(|| ConnectorError::Other("window rows need window_start".into()))?;
        let mut parts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            let t = if starts.is_valid(i) {
                starts.value(i)
            } else {
                0
            };
            let dt = chrono::DateTime::from_timestamp_millis(t).unwrap_or_default();
            let part = format!(
                "{}/date={}/hour={}",
                sanitize(window),
                dt.format("%Y-%m-%d"),
                dt.format("%H")
            );
            parts.entry(part).or_default().push(i as u32);
        }
        for (part, rows) in parts {
            let rows = arrow::compute::take_record_batch(batch, &UInt32Array::from(rows)).map_err(
                |source| ConnectorError::Arrow {
                    context: "partitioning window rows".into(),
                    source,
                },
            )?;
            self.buffered.entry(part).or_default().push(rows);
        }
        Ok(())
    }

    /// Writes one file per partition with buffered rows.
    pub fn flush(&mut self) -> Result<(), ConnectorError> {
        for (part, batches) in std::mem::take(&mut self.buffered) {
            let dir = self.dir.join(&part);
            std::fs::create_dir_all(&dir).map_err(|source| ConnectorError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            self.seq += 1;
            let name = format!("part-{}-{:06}.parquet", self.run_id, self.seq);
            let tmp = dir.join(format!(".{name}.tmp"));
            let path = dir.join(&name);
            let io = |source| ConnectorError::Io {
                path: tmp.display().to_string(),
                source,
            };
            let file = std::fs::File::create(&tmp).map_err(io)?;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let pq = |source| ConnectorError::Parquet {
                context: path.display().to_string(),
                source,
            };
            let mut w = ArrowWriter::try_new(file, batches[0].schema(), Some(props)).map_err(pq)?;
            for b in &batches {
                w.write(b).map_err(pq)?;
                self.rows_written += b.num_rows() as u64;
            }
            w.close().map_err(pq)?;
            std::fs::rename(&tmp, &path).map_err(|source| ConnectorError::Io {
                path: path.display().to_string(),
                source,
            })?;
            self.files_written += 1;
        }
        Ok(())
    }
}

/// A window name as a path segment.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
