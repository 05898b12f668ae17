//! SQL stage chain benchmarks: map → validate → route, planned once with DataFusion and run per
//! batch. Measures the per-batch overhead (1-row batches) and rows/s at 8,192-row batches,
//! and the HL7 parse stage in front of it for comparison.
//!
//! Run: `cargo bench --bench pipeline`

use std::hint::black_box;

use arrow::record_batch::RecordBatch;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plexus::formats::hl7::Splitter;
use plexus::formats::hl7::extract::{ColumnSpec, ColumnType};
use plexus::formats::hl7::synth::synthetic_feed;
use plexus::operators::Operator;
use plexus::operators::map::Map;
use plexus::operators::parse::{Parse, raw_batch};
use plexus::operators::route::{Route, RouteMode};
use plexus::operators::validate::{Rule, Severity, Validate};
use plexus::sql::SqlPlanner;

const MAP_SQL: &str = "SELECT mrn, upper(family) AS family_name, initcap(given) AS given_name, \
    birth_date, CASE sex WHEN 'M' THEN 'male' WHEN 'F' THEN 'female' ELSE 'unknown' END AS gender, \
    sex AS sex_code, normalize_phone(phone_area || phone_local) AS phone, event_type FROM input";

fn parse_stage() -> Parse {
    let cols = [
        ("event_type", "MSH-9.2", ColumnType::Utf8),
        ("mrn", "PID-3.1", ColumnType::Utf8),
        ("family", "PID-5.1", ColumnType::Utf8),
        ("given", "PID-5.2", ColumnType::Utf8),
        ("birth_date", "PID-7", ColumnType::Date32),
        ("sex", "PID-8", ColumnType::Utf8),
        ("phone_area", "PID-13.6", ColumnType::Utf8),
        ("phone_local", "PID-13.7", ColumnType::Utf8),
    ];
    Parse::hl7(
        cols.iter()
            .map(|(n, p, t)| ColumnSpec::new(*n, p, *t).unwrap())
            .collect(),
        plexus::formats::hl7::Zone::default(),
    )
}

/// Raw batches of `rows` records from the synthetic feed.
fn raw_batches(feed: &[u8], rows: usize) -> Vec<RecordBatch> {
    let spans: Vec<(usize, &[u8])> = Splitter::new(feed)
        .map(|m| {
            let m = m.unwrap().message;
            (m.offset(), m.raw())
        })
        .collect();
    spans
        .chunks(rows)
        .enumerate()
        .map(|(i, c)| raw_batch("bench", c, i * rows))
        .collect()
}

struct Chain {
    map: Map,
    validate: Validate,
    route: Route,
}

fn chain(rt: &tokio::runtime::Runtime, input: &arrow::datatypes::SchemaRef) -> Chain {
    let sql = SqlPlanner::new();
    let select = rt.block_on(sql.select(MAP_SQL, input)).unwrap();
    let map = Map::new(select, input).unwrap();
    let mapped = map.outputs()[0].1.clone();
    let rules = [
        (
            "mrn_present",
            "mrn IS NOT NULL AND mrn <> ''",
            Severity::Error,
        ),
        (
            "birth_date_not_in_future",
            "birth_date IS NULL OR birth_date <= current_date()",
            Severity::Error,
        ),
        (
            "sex_in_hl7_0001",
            "sex_code IN ('F','M','O','U','A','N')",
            Severity::Error,
        ),
        ("phone_present", "phone IS NOT NULL", Severity::Warning),
    ];
    let rules = rules
        .iter()
        .map(|(n, c, s)| Rule {
            name: n.to_string(),
            message: n.to_string(),
            severity: *s,
            check: sql.predicate(n, c, &mapped).unwrap(),
        })
        .collect();
    let validate = Validate::new(rules, &mapped).unwrap();
    let validated = validate.outputs()[0].1.clone();
    let routes = ["A01", "A04", "A08"]
        .iter()
        .map(|e| {
            sql.predicate(e, &format!("event_type = '{e}'"), &validated)
                .unwrap()
        })
        .collect();
    let route = Route::new(
        routes,
        Some("other".into()),
        RouteMode::FirstMatch,
        &validated,
    );
    Chain {
        map,
        validate,
        route,
    }
}

impl Chain {
    fn run(&mut self, batch: RecordBatch) -> usize {
        let m = self.map.process(batch).unwrap();
        let v = self
            .validate
            .process(m.outputs.into_iter().next().unwrap().unwrap())
            .unwrap();
        let r = self
            .route
            .process(v.outputs.into_iter().next().unwrap().unwrap())
            .unwrap();
        r.outputs.iter().flatten().map(|b| b.num_rows()).sum()
    }
}

fn stage_chain(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let feed = synthetic_feed(40_000, 9);
    let mut parse = parse_stage();
    let parsed_schema = parse.outputs()[0].1.clone();
    let mut g = c.benchmark_group("sql_chain_map_validate_route");
    for rows in [1usize, 8192] {
        let raws = raw_batches(&feed, rows);
        let parsed: Vec<RecordBatch> = raws
            .iter()
            .take(if rows == 1 { 2000 } else { raws.len() })
            .map(|b| parse.process(b.clone()).unwrap().outputs.remove(0).unwrap())
            .collect();
        let total: usize = parsed.iter().map(|b| b.num_rows()).sum();
        g.throughput(Throughput::Elements(total as u64));
        let mut ch = chain(&rt, &parsed_schema);
        g.bench_with_input(
            BenchmarkId::new("rows_per_batch", rows),
            &parsed,
            |b, parsed| {
                b.iter(|| {
                    let mut n = 0;
                    for batch in parsed {
                        n += ch.run(black_box(batch.clone()));
                    }
                    n
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("hl7_parse_stage");
    let raws = raw_batches(&feed, 8192);
    g.throughput(Throughput::Elements(40_000));
    g.bench_function("rows_per_batch/8192", |b| {
        b.iter(|| {
            let mut n = 0;
            for batch in &raws {
                n += parse.process(black_box(batch.clone())).unwrap().outputs[0]
                    .as_ref()
                    .unwrap()
                    .num_rows();
            }
            n
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(4));
    targets = stage_chain
}
criterion_main!(benches);
