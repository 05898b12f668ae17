//! Window aggregation throughput: rows/s into event-time windows with 10,000 distinct keys
//! (integration × facility × message type in real feeds), per-row failure and latency (the
//! DDSketch), tumbling and hopping, with and without a breaker trip predicate evaluated on
//! the running windows.
//!
//! Run: `cargo bench --bench windows`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plexus::metrics::window::WindowConfig;
use plexus::operators::window::{WindowAggregate, WindowExprs, window_row_schema};
use plexus::sql::SqlPlanner;

const KEYS: usize = 10_000;
const BATCH: usize = 8192;
const BATCHES: usize = 32;

/// Batches of outcome-like rows: 10k keys round-robin, 1 row per ms of event time, 2 % failed.
fn batches() -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("integration", DataType::Utf8, false),
        Field::new("at", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("latency_ms", DataType::Float64, false),
    ]));
    let keys: Vec<String> = (0..KEYS).map(|k| format!("integration-{k:05}")).collect();
    (0..BATCHES)
        .map(|b| {
            let rows = b * BATCH..(b + 1) * BATCH;
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.clone().map(|i| &keys[(i * 7919) % KEYS]),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.clone().map(|i| i as i64))),
                    Arc::new(StringArray::from_iter_values(rows.clone().map(|i| {
                        if i % 50 == 0 {
                            "transient"
                        } else {
                            "delivered"
                        }
                    }))),
                    Arc::new(Float64Array::from_iter_values(
                        rows.map(|i| 5.0 + (i % 997) as f64),
                    )),
                ],
            )
            .unwrap()
        })
        .collect()
}

fn aggregate(config: WindowConfig, trip: Option<&str>) -> WindowAggregate {
    let sql = SqlPlanner::new();
    let schema = batches_schema();
    let e = |n: &str, t: &str| sql.expr(n, t, &schema).unwrap();
    let exprs = WindowExprs {
        key: vec![e("integration", "integration")],
        time: Some(e("time", "at")),
        failed: Some(e("failed", "status <> 'delivered'")),
        latency_ms: Some(e("latency_ms", "latency_ms")),
        warnings: None,
    };
    let rows = window_row_schema(&["integration".to_string()]);
    let trip = trip.map(|t| sql.predicate("trip", t, &rows).unwrap());
    WindowAggregate::new("bench", "bench", config, exprs, Vec::new(), trip)
}

fn batches_schema() -> arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("integration", DataType::Utf8, false),
        Field::new("at", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("latency_ms", DataType::Float64, false),
    ]))
}

fn bench(c: &mut Criterion) {
    let input = batches();
    let mut g = c.benchmark_group("windows_10k_keys");
    g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    g.sample_size(10);
    let cases: [(&str, WindowConfig, Option<&str>); 3] = [
        (
            "tumbling_60s",
            WindowConfig::tumbling(Duration::from_secs(60)),
            None,
        ),
        (
            "hopping_60s_every_15s",
            WindowConfig::hopping(Duration::from_secs(60), Duration::from_secs(15)),
            None,
        ),
        (
            "tumbling_60s_with_trip_predicate",
            WindowConfig::tumbling(Duration::from_secs(60)),
            Some("error_rate > 0.5 AND total >= 20"),
        ),
    ];
    for (name, config, trip) in cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
            b.iter(|| {
                let mut w = aggregate(config, trip);
                for batch in input {
                    black_box(w.process(batch, 0).unwrap());
                }
                black_box(w.finish(0).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
