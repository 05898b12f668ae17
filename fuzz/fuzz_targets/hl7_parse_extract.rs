//! Split, parse, read paths, extract to Arrow and build ACKs from arbitrary bytes.
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run hl7_parse_extract`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::formats::hl7::extract::{ColumnSpec, ColumnType, ExtractOptions, Extractor};
use plexus::formats::hl7::{AckCode, AckOptions, Splitter, build_ack, build_nack_for_unparsed};

fuzz_target!(|data: &[u8]| {
    let columns = vec![
        ColumnSpec::new("id", "MSH-10", ColumnType::Utf8).unwrap(),
        ColumnSpec::new("ids", "PID-3(*).1", ColumnType::ListUtf8).unwrap(),
        ColumnSpec::new("dob", "PID-7", ColumnType::Date32).unwrap(),
        ColumnSpec::new("ts", "MSH-7", ColumnType::Timestamp).unwrap(),
        ColumnSpec::new("n", "OBX(2)-5", ColumnType::Float64).unwrap(),
        ColumnSpec::new("i", "PID-1", ColumnType::Int64).unwrap(),
        ColumnSpec::new("sub", "PID-5.1.2", ColumnType::Utf8).unwrap(),
        ColumnSpec::new("obs", "OBX(*)-5(*)", ColumnType::ListUtf8).unwrap(),
    ];
    let extractor = Extractor::new(columns, ExtractOptions::default());
    let mut messages = Vec::new();
    for item in Splitter::new(data) {
        match item {
            Ok(m) => {
                let _ = build_ack(&m.message, &AckOptions::new(AckCode::AA));
                messages.push(m.message);
            }
            Err(bad) => {
                assert!(bad.offset + bad.raw.len() <= data.len());
                let _ = build_nack_for_unparsed(bad.raw, &bad.error, &AckOptions::new(AckCode::AR));
            }
        }
    }
    let x = extractor.extract(&messages, "fuzz").unwrap();
    assert_eq!(x.batch.num_rows(), messages.len());
});
