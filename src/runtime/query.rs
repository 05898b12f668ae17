//! SQL over what a pipeline's monitoring wrote: the tables `plexus query` and the server's
//! query route see.
//!
//! Tables:
//! - `metrics`: every window's rows (Parquet, `date`/`hour` partitions pruned by filters),
//!   and each window's own table under its name with its key columns;
//! - `breaker_events`, `alerts`: the JSON-lines event files (`at` as a timestamp);
//! - `dead_letters`: a summary of the dead-letter file per stage, rule and reason — counts
//!   and first/last failure, never the records themselves (they hold patient data).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{JsonReadOptions, SessionContext};
use futures::StreamExt;

use crate::connectors::monitoring::config::MetricsLocation;
use crate::connectors::monitoring::parquet::open_store;
use crate::operators::window::window_row_schema;
use crate::plan::Plan;

/// Where a pipeline's monitoring outputs are.
pub struct Locations {
    pub metrics: MetricsLocation,
    pub events: PathBuf,
    pub alerts: PathBuf,
    pub dlq: PathBuf,
}

impl Locations {
    /// Where `plan` writes them; `output` is `plexus run --output`, if given (it moves them).
    pub fn of(plan: &Plan, output: Option<&Path>) -> Result<Locations> {
        let m = plan
            .monitoring
            .clone()
            .context("the pipeline has no windows, breakers or `monitoring:`: nothing to query")?;
        let dlq = plan
            .dlq
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.dlq.ndjson", plan.name)));
        let moved = |p: PathBuf| match output {
            Some(d) => d.join(p.file_name().unwrap_or_default()),
            None => p,
        };
        Ok(Locations {
            metrics: match m.metrics {
                MetricsLocation::Dir(d) => MetricsLocation::Dir(moved(d)),
                url => url,
            },
            events: moved(m.events_path),
            alerts: moved(m.alerts_path),
            dlq: moved(dlq),
        })
    }
}

/// A query's rows, cut at a limit.
pub struct Rows {
    pub batches: Vec<RecordBatch>,
    /// More rows than the limit matched.
    pub truncated: bool,
}

/// Runs outside SQL (read-only: `sql::read_only`) over `ctx`, stopping at `max_rows` rows or
/// after `timeout`, whichever comes first (a timeout is an error).
pub async fn read_only(
    ctx: &SessionContext,
    sql: &str,
    max_rows: usize,
    timeout: Duration,
) -> Result<Rows> {
    let run = async {
        let df = crate::sql::read_only::query(ctx, sql)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // One row more than asked tells whether there were more.
        let df = df
            .limit(0, Some(max_rows + 1))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut batches = Vec::new();
        let mut n = 0;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| anyhow::anyhow!("{e}"))?;
            n += b.num_rows();
            batches.push(b);
        }
        let truncated = n > max_rows;
        if truncated {
            let mut left = max_rows;
            for b in &mut batches {
                let take = b.num_rows().min(left);
                *b = b.slice(0, take);
                left -= take;
            }
            batches.retain(|b| b.num_rows() > 0);
        }
        Ok(Rows { batches, truncated })
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| anyhow::bail!("the query took longer than {timeout:?}"))
}

/// The columns every window row has (the `metrics` table).
fn common_columns() -> Vec<String> {
    window_row_schema(&[])
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect()
}

/// A session with the tables registered.
pub async fn context(loc: &Locations) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    let mut windows = Vec::new();
    match &loc.metrics {
        MetricsLocation::Dir(dir) => {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if e.path().is_dir() && !name.starts_with('_') && !name.starts_with('.') {
                        let url = format!("{}/", e.path().canonicalize()?.display());
                        windows.push((name, url));
                    }
                }
            }
        }
        MetricsLocation::Url(url) => {
            let (store, prefix) = open_store(url)?;
            let listing = store
                .list_with_delimiter(Some(&prefix))
                .await
                .with_context(|| format!("listing {url}"))?;
            for p in listing.common_prefixes {
                let Some(name) = p.filename().map(str::to_string) else {
                    continue;
                };
                if !name.starts_with('_') && !name.starts_with('.') {
                    let bucket = url.host_str().unwrap_or_default();
                    windows.push((name, format!("{}://{bucket}/{p}/", url.scheme())));
                }
            }
            let root = url::Url::parse(&format!(
                "{}://{}",
                url.scheme(),
                url.host_str().unwrap_or_default()
            ))?;
            ctx.register_object_store(&root, store);
        }
    }
    windows.sort();
    let mut union = Vec::new();
    for (w, table_url) in &windows {
        let url = ListingTableUrl::parse(table_url).map_err(|e| anyhow::anyhow!("{e}"))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("date".to_string(), DataType::Utf8),
                ("hour".to_string(), DataType::Utf8),
            ]);
        let schema = options
            .infer_schema(&ctx.state(), &url)
            .await
            .map_err(|e| anyhow::anyhow!("metrics of window {w}: {e}"))?;
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema.clone());
        let table = ListingTable::try_new(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        // The files hold every emission of a window row: the first firing, late updates and
        // re-runs over the same input. An event-time window row is identified by (window,
        // key, window start) — the latest emission wins, so re-running a pipeline over its
        // input does not double its metrics; a processing-time window row also by the run
        // that emitted it (each run's calls are its own).
        let files = format!("_{w}_emissions");
        ctx.register_table(files.as_str(), Arc::new(table))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let columns: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("\"{}\"", f.name().replace('"', "\"\"")))
            .chain(["date".to_string(), "hour".to_string()])
            .collect();
        ctx.sql(&format!(
            "CREATE VIEW \"{w}\" AS SELECT {cols} FROM (SELECT {cols}, row_number() OVER \
             (PARTITION BY \"window\", \"key\", window_start, \
             CASE WHEN event_time THEN '' ELSE coalesce(run_id, '') END \
             ORDER BY emitted_at DESC) AS _emission \
             FROM \"{files}\") WHERE _emission = 1",
            cols = columns.join(", ")
        ))
        .await
        .map_err(|e| anyhow::anyhow!("metrics of window {w}: {e}"))?;
        union.push(format!(
            "SELECT {}, run_id, date, hour FROM \"{w}\"",
            common_columns().join(", ")
        ));
    }
    if union.is_empty() {
        let mut fields: Vec<Field> = window_row_schema(&[])
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("run_id", DataType::Utf8, true));
        fields.push(Field::new("date", DataType::Utf8, true));
        fields.push(Field::new("hour", DataType::Utf8, true));
        empty(&ctx, "metrics", Arc::new(Schema::new(fields)))?;
    } else {
        ctx.sql(&format!(
            "CREATE VIEW metrics AS {}",
            union.join(" UNION ALL ")
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    events(&ctx, "breaker_events", &loc.events, breaker_event_schema()).await?;
    events(&ctx, "alerts", &loc.alerts, alert_schema()).await?;
    dead_letters(&ctx, &loc.dlq).await?;
    Ok(ctx)
}

fn empty(ctx: &SessionContext, name: &str, schema: SchemaRef) -> Result<()> {
    let t = MemTable::try_new(schema, vec![vec![]]).map_err(|e| anyhow::anyhow!("{e}"))?;
    ctx.register_table(name, Arc::new(t))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn breaker_event_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("type", DataType::Utf8, true),
        Field::new("integration", DataType::Utf8, true),
        Field::new("instance", DataType::Utf8, true),
        Field::new("breaker", DataType::Utf8, true),
        Field::new("from", DataType::Utf8, true),
        Field::new("to", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("calls", DataType::Int64, true),
        Field::new("failure_rate", DataType::Float64, true),
        Field::new("slow_call_rate", DataType::Float64, true),
        Field::new("at_ms", DataType::Int64, true),
    ]))
}

fn alert_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("type", DataType::Utf8, true),
        Field::new("alert", DataType::Utf8, true),
        Field::new("severity", DataType::Utf8, true),
        Field::new("integration", DataType::Utf8, true),
        Field::new("window", DataType::Utf8, true),
        Field::new("key", DataType::Utf8, true),
        Field::new("window_start_ms", DataType::Int64, true),
        Field::new("window_end_ms", DataType::Int64, true),
        Field::new("condition", DataType::Utf8, true),
        Field::new("total", DataType::Int64, true),
        Field::new("error_rate", DataType::Float64, true),
        Field::new("latency_avg_ms", DataType::Float64, true),
        Field::new("latency_p95_ms", DataType::Float64, true),
        Field::new("data_quality_rate", DataType::Float64, true),
        Field::new("at_ms", DataType::Int64, true),
        Field::new("run_id", DataType::Utf8, true),
    ]))
}

/// A JSON-lines event file as a table with `at` (and window bounds) as timestamps.
async fn events(ctx: &SessionContext, name: &str, path: &Path, schema: SchemaRef) -> Result<()> {
    let raw = format!("{name}_raw");
    if path.is_file() {
        let opts = JsonReadOptions::default()
            .newline_delimited(true)
            .schema(schema.as_ref())
            .file_extension(path.extension().and_then(|e| e.to_str()).unwrap_or(""));
        ctx.register_json(&raw, path.display().to_string().as_str(), opts)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    } else {
        empty(ctx, &raw, schema.clone())?;
    }
    let mut cols = vec![
        "*".to_string(),
        "to_timestamp_millis(at_ms) AS at".to_string(),
    ];
    if schema.field_with_name("window_start_ms").is_ok() {
        cols.push("to_timestamp_millis(window_start_ms) AS window_start".into());
        cols.push("to_timestamp_millis(window_end_ms) AS window_end".into());
    }
    ctx.sql(&format!(
        "CREATE VIEW {name} AS SELECT {} FROM {raw}",
        cols.join(", ")
    ))
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

async fn dead_letters(ctx: &SessionContext, path: &Path) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("pipeline", DataType::Utf8, true),
        Field::new("integration", DataType::Utf8, true),
        Field::new("stage", DataType::Utf8, true),
        Field::new("rule", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("failed_at", DataType::Utf8, true),
    ]));
    // Only these columns are read: the record itself never enters the query engine. The raw
    // rows are summarised into a table held in memory and then dropped, so the analyst's SQL
    // sees only the summary, never a reason as it was written.
    const RAW_TABLE: &str = "plexus_dead_letters_raw";
    if path.is_file() {
        let opts = JsonReadOptions::default()
            .newline_delimited(true)
            .schema(schema.as_ref())
            .file_extension(path.extension().and_then(|e| e.to_str()).unwrap_or(""));
        ctx.register_json(RAW_TABLE, path.display().to_string().as_str(), opts)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    } else {
        empty(ctx, RAW_TABLE, schema)?;
    }
    let summary = ctx
        .sql(&format!(
            // Reasons are redacted where they are made (values become their shape); quoted
            // text and the per-message location are cut here too, so alike failures group.
            r#"SELECT pipeline, integration, stage, rule, reason, count(*) AS records,
                    min(at) AS first_failed_at, max(at) AS last_failed_at
             FROM (SELECT pipeline, integration, stage, rule, to_timestamp(failed_at) AS at,
                          regexp_replace(regexp_replace(reason, '"[^"]*"', '"…"', 'g'),
                                         ' \(at message [^)]*\)', '', 'g') AS reason
                   FROM {RAW_TABLE})
             GROUP BY pipeline, integration, stage, rule, reason"#
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let schema = Arc::new(summary.schema().as_arrow().clone());
    let rows = summary
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ctx.deregister_table(RAW_TABLE)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let table = MemTable::try_new(schema, vec![rows]).map_err(|e| anyhow::anyhow!("{e}"))?;
    ctx.register_table("dead_letters", Arc::new(table))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
