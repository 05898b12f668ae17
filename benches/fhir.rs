//! HL7v2 → FHIR R4 conversion speed on FHIR-Converter's own sample messages
//! (`tests/data/corpus` is a copy of its `data/SampleData/Hl7v2`): parse + map to resources, and the same
//! serialized as a transaction Bundle (what `plexus fhir convert --bundle` writes).
//!
//! Run: `cargo bench --bench fhir`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use plexus::fhir::bundle::{BundleType, bundle};
use plexus::fhir::v2::{Options, convert};
use plexus::formats::hl7::Message;

// The allocator of what users run (the `plexus` binary, src/main.rs): the mapper allocates
// per element, so glibc's malloc would measure a cost users do not pay.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn corpus(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/corpus")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn bench(c: &mut Criterion) {
    let opts = Options::default();
    let mut g = c.benchmark_group("fhir_convert");
    for name in ["ADT-A01-01.hl7", "SIU-S12-01.hl7", "LAB-ORU-1.hl7"] {
        let raw = corpus(name);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}/resources"), |b| {
            b.iter(|| {
                let m = Message::parse(black_box(&raw)).unwrap();
                black_box(convert(&m, &opts).unwrap())
            })
        });
        // Into a buffer kept across messages, as `plexus fhir convert` writes through its
        // BufWriter: a fresh Vec per message would time its regrowth, which users do not pay.
        let mut out = Vec::with_capacity(64 * 1024);
        g.bench_function(format!("{name}/transaction_bundle_json"), |b| {
            b.iter(|| {
                let m = Message::parse(black_box(&raw)).unwrap();
                let rs = convert(&m, &opts).unwrap();
                out.clear();
                bundle(rs, BundleType::Transaction).write(&mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
