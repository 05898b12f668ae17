//! HL7v2 engine benchmarks: split+parse, parse + 10-field reads, and extraction to Arrow, on the
//! third-party corpus and on a generated 100k-message feed; with the `hl7-parser` crate measured
//! side by side on the same messages.
//!
//! Run: `cargo bench --bench hl7` (throughput is printed per group in bytes/s or messages/s).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plexus::formats::hl7::extract::{ColumnSpec, ColumnType, ExtractOptions, Extractor};
use plexus::formats::hl7::synth::synthetic_feed;
use plexus::formats::hl7::{Message, Path, Splitter};

/// The ten columns a typical ADT/lab mapping reads.
const COLUMNS: [(&str, &str, ColumnType); 10] = [
    ("control_id", "MSH-10", ColumnType::Utf8),
    ("event", "MSH-9.2", ColumnType::Utf8),
    ("sent_at", "MSH-7", ColumnType::Timestamp),
    ("mrn", "PID-3.1", ColumnType::Utf8),
    ("family", "PID-5.1", ColumnType::Utf8),
    ("given", "PID-5.2", ColumnType::Utf8),
    ("birth_date", "PID-7", ColumnType::Date32),
    ("sex", "PID-8", ColumnType::Utf8),
    ("city", "PID-11.3", ColumnType::Utf8),
    ("phone", "PID-13.7", ColumnType::Utf8),
];

fn corpus() -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/corpus");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .collect();
    names.sort();
    let mut all = Vec::new();
    for n in names {
        all.extend(std::fs::read(n).expect("corpus file"));
        all.push(b'\n');
    }
    all
}

/// Message slices (as UTF-8 strings, which `hl7-parser` needs) found by our splitter.
fn slices(input: &[u8]) -> Vec<&str> {
    Splitter::new(input)
        .map(|r| std::str::from_utf8(r.expect("valid").message.raw()).expect("utf8"))
        .collect()
}

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("corpus", corpus()),
        ("generated_100k", synthetic_feed(100_000, 42)),
    ]
}

fn split_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("split_parse");
    for (name, input) in inputs() {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::new("plexus", name), &input, |b, input| {
            b.iter(|| {
                let mut segments = 0;
                for m in Splitter::new(black_box(input)) {
                    segments += m.expect("valid").message.segment_count();
                }
                segments
            })
        });
    }
    g.finish();
}

fn parse_and_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_read10");
    let ours: Vec<Path> = COLUMNS
        .iter()
        .map(|(_, p, _)| Path::parse(p).unwrap())
        .collect();
    let theirs: Vec<hl7_parser::query::LocationQuery> = COLUMNS
        .iter()
        .map(|(_, p, _)| hl7_parser::query::LocationQuery::parse(&p.replace('-', ".")).unwrap())
        .collect();
    for (name, input) in inputs() {
        let msgs = slices(&input);
        g.throughput(Throughput::Elements(msgs.len() as u64));
        g.bench_with_input(BenchmarkId::new("plexus", name), &msgs, |b, msgs| {
            b.iter(|| {
                let mut total = 0;
                for (i, s) in msgs.iter().enumerate() {
                    let m = Message::parse_with(s.as_bytes(), 0, i, &Default::default()).unwrap();
                    for p in &ours {
                        total += m.get(p).text().map(|t| t.len()).unwrap_or(0);
                    }
                }
                total
            })
        });
        g.bench_with_input(BenchmarkId::new("hl7-parser", name), &msgs, |b, msgs| {
            b.iter(|| {
                let mut total = 0;
                for s in msgs {
                    let m = hl7_parser::Message::parse_with_lenient_newlines(s, true).unwrap();
                    for q in &theirs {
                        if let Some(r) = m.query(q.clone()) {
                            total += r.display(&m.separators).to_string().len();
                        }
                    }
                }
                total
            })
        });
    }
    g.finish();
}

fn extract_arrow(c: &mut Criterion) {
    let mut g = c.benchmark_group("split_parse_extract10_arrow");
    let columns: Vec<ColumnSpec> = COLUMNS
        .iter()
        .map(|(n, p, t)| ColumnSpec::new(*n, p, *t).unwrap())
        .collect();
    let extractor = Extractor::new(columns, ExtractOptions::default());
    for (name, input) in inputs() {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::new("plexus", name), &input, |b, input| {
            let mut chunk = Vec::with_capacity(8192);
            b.iter(|| {
                let mut rows = 0;
                let mut split = Splitter::new(black_box(input));
                loop {
                    let next = split.next();
                    let done = next.is_none();
                    if let Some(m) = next {
                        chunk.push(m.expect("valid").message);
                    }
                    if chunk.len() == 8192 || (done && !chunk.is_empty()) {
                        rows += extractor.extract(&chunk, "bench").unwrap().batch.num_rows();
                        chunk.clear();
                    }
                    if done {
                        break;
                    }
                }
                rows
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(5));
    targets = split_parse, parse_and_read, extract_arrow
}
criterion_main!(benches);
