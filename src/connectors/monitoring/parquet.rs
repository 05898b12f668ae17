//! Window rows as Parquet files, one directory per window, partitioned the Hive way by date
//! and hour of the window start (`health/date=2026-11-26/hour=14/part-….parquet`), so that
//! analysts' engines (DataFusion, DuckDB, Spark) prune by time without reading everything.
//! (The window's name is a column in the files, so it is not a `window=` partition too.)
//!
//! Rows are buffered per partition and written as one new file per partition on `flush`
//! (each barrier, and at the end): files are immutable once written, so a reader never sees
//! half a file — in a directory they are written under a temporary name and renamed; in an
//! object store (`s3://bucket/prefix`) one PUT makes an object appear whole.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use arrow::array::{Array, AsArray, UInt32Array};
use arrow::datatypes::TimestampMillisecondType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::connectors::ConnectorError;
use crate::connectors::monitoring::config::MetricsLocation;

/// Where the files go.
enum Target {
    Dir(PathBuf),
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        url: String,
        handle: tokio::runtime::Handle,
    },
}

/// Opens an object store URL (`s3://bucket/prefix`): the store and the prefix within it.
/// Endpoint, region and credentials come from the standard `AWS_*` variables
/// (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for a local S3-compatible store).
pub fn open_store(url: &url::Url) -> Result<(Arc<dyn ObjectStore>, ObjectPath), ConnectorError> {
    let err = |e: String| ConnectorError::Other(format!("metrics store {url}: {e}"));
    match url.scheme() {
        "s3" => {
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| err(e.to_string()))?;
            let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| err(e.to_string()))?;
            Ok((Arc::new(store), prefix))
        }
        other => Err(err(format!("unsupported scheme {other}://"))),
    }
}

pub struct PartitionedParquet {
    target: Target,
    /// Distinguishes this run's files from earlier runs' (never overwrites).
    run_id: String,
    seq: u64,
    /// Partition directory (relative) → rows waiting.
    buffered: BTreeMap<String, Vec<RecordBatch>>,
    pub files_written: u64,
    pub rows_written: u64,
}

impl PartitionedParquet {
    pub fn new(
        location: &MetricsLocation,
        handle: tokio::runtime::Handle,
    ) -> Result<Self, ConnectorError> {
        let target = match location {
            MetricsLocation::Dir(d) => Target::Dir(d.clone()),
            MetricsLocation::Url(url) => {
                let (store, prefix) = open_store(url)?;
                Target::Store {
                    store,
                    prefix,
                    url: url.to_string(),
                    handle,
                }
            }
        };
        Ok(PartitionedParquet {
            target,
            run_id: format!(
                "{}-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f"),
                std::process::id()
            ),
            seq: 0,
            buffered: BTreeMap::new(),
            files_written: 0,
            rows_written: 0,
        })
    }

    /// This run's id (in file names and on alerts).
    pub fn run_id(&self) -> &str {
        &self.run_id
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
        let arrow_err = |source| ConnectorError::Arrow {
            context: "partitioning window rows".into(),
            source,
        };
        // The run that emitted the rows: `plexus query` keeps each run's processing-time
        // windows apart, and it is there for audits.
        let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
        fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
            "run_id",
            arrow::datatypes::DataType::Utf8,
            false,
        )));
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
        for (part, rows) in parts {
            let rows = arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))
                .map_err(arrow_err)?;
            let mut columns = rows.columns().to_vec();
            columns.push(std::sync::Arc::new(arrow::array::StringArray::from(vec![
                self.run_id.as_str();
                rows.num_rows()
            ])));
            let rows = RecordBatch::try_new(schema.clone(), columns).map_err(arrow_err)?;
            self.buffered.entry(part).or_default().push(rows);
        }
        Ok(())
    }

    /// Writes one file per partition with buffered rows.
    pub fn flush(&mut self) -> Result<(), ConnectorError> {
        for (part, batches) in std::mem::take(&mut self.buffered) {
            self.seq += 1;
            let name = format!("part-{}-{:06}.parquet", self.run_id, self.seq);
            let bytes = encode(&batches, &format!("{part}/{name}"))?;
            match &self.target {
                Target::Dir(root) => {
                    let dir = root.join(&part);
                    let io = |p: &std::path::Path| {
                        let path = p.display().to_string();
                        move |source| ConnectorError::Io { path, source }
                    };
                    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                    let tmp = dir.join(format!(".{name}.tmp"));
                    let path = dir.join(&name);
                    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
                    std::fs::rename(&tmp, &path).map_err(io(&path))?;
                }
                Target::Store {
                    store,
                    prefix,
                    url,
                    handle,
                } => {
                    let mut path = prefix.clone();
                    for segment in part.split('/').chain([name.as_str()]) {
                        path = path.join(segment);
                    }
                    // The store client retries transient failures itself (with backoff);
                    // what still fails stops the run rather than losing metrics silently.
                    let put = store.put(&path, bytes.into());
                    tokio::task::block_in_place(|| handle.block_on(put)).map_err(|e| {
                        ConnectorError::Other(format!("writing {path} to {url}: {e}"))
                    })?;
                }
            }
            self.rows_written += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            self.files_written += 1;
        }
        Ok(())
    }
}

/// One Parquet file's bytes (window rows are small: a file per partition per checkpoint).
fn encode(batches: &[RecordBatch], name: &str) -> Result<Vec<u8>, ConnectorError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let pq = |source| ConnectorError::Parquet {
        context: name.to_string(),
        source,
    };
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).map_err(pq)?;
    for b in batches {
        w.write(b).map_err(pq)?;
    }
    w.close().map_err(pq)?;
    Ok(out)
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
