//! The record model every part shares: a source's raw records, the provenance columns that
//! travel with every row from the source to the sinks and the dead-letter output, a record's
//! stable identity, and the dead letters an operator or sink returns.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

/// The original record bytes (HL7 message, JSON line, CSV row).
pub const RAW: &str = "_raw";
/// Where the record came from (file path, `stdin`, topic/partition).
pub const SOURCE: &str = "_source";
/// Byte offset of the record in its source.
pub const OFFSET: &str = "_offset";
/// 0-based position of the record in its source: the key of the run's accounting.
pub const RECORD_INDEX: &str = "_record_index";
/// HL7 MSH-10 (or an event id): the correlation id of everything derived from the record.
pub const CONTROL_ID: &str = "_control_id";
/// HL7 MSH-9.
pub const MESSAGE_TYPE: &str = "_message_type";
/// `list<utf8>` of warnings added by validate/lookup stages.
pub const WARNINGS: &str = "_warnings";

/// Whether a column is provenance (carried through every stage).
pub fn is_provenance(name: &str) -> bool {
    name.starts_with('_')
}

/// Rows an operator rejected, with the rule and reason for each.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    /// The rejected input rows (with their provenance columns).
    pub rows: RecordBatch,
    pub rule: Vec<String>,
    pub reason: Vec<String>,
}

/// A record's stable identity, `source/offset#control id`: the dead-letter key (what replay
/// deduplicates on) and the HTTP sink's idempotency key. One Kafka message may hold several
/// HL7 messages (a batch file): their control ids keep the keys apart.
pub fn record_identity(source: Option<&str>, offset: Option<i64>, control: Option<&str>) -> String {
    format!(
        "{}/{}{}{}",
        source.unwrap_or("-"),
        offset.unwrap_or(-1),
        if control.is_some() { "#" } else { "" },
        control.unwrap_or("")
    )
}

/// A batch's provenance columns (`_source`, `_offset`, and the correlation id: HL7 MSH-10,
/// else the event's own `event_id`), each when present: what sinks stamp on what they send.
pub fn provenance_columns(
    batch: &arrow::record_batch::RecordBatch,
) -> (
    Option<&arrow::array::StringArray>,
    Option<&arrow::array::Int64Array>,
    Option<&arrow::array::StringArray>,
) {
    use arrow::array::AsArray;
    let sources = batch
        .column_by_name(SOURCE)
        .and_then(|c| c.as_string_opt::<i32>());
    let offsets = batch
        .column_by_name(OFFSET)
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>());
    let controls = batch
        .column_by_name(CONTROL_ID)
        .or_else(|| batch.column_by_name("event_id"))
        .and_then(|c| c.as_string_opt::<i32>());
    (sources, offsets, controls)
}

/// The schema sources produce: one row per record, before parsing.
pub fn raw_record_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(RAW, DataType::Binary, false),
        Field::new(SOURCE, DataType::Utf8, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new(RECORD_INDEX, DataType::Int64, false),
    ]))
}

/// Builds a raw-record batch (what sources emit), e.g. for tests.
pub fn raw_batch(source: &str, records: &[(usize, &[u8])], first_index: usize) -> RecordBatch {
    let raw = arrow::array::BinaryArray::from_iter_values(records.iter().map(|(_, r)| *r));
    let sources = arrow::array::StringArray::from(vec![source; records.len()]);
    let offsets =
        arrow::array::Int64Array::from_iter_values(records.iter().map(|(o, _)| *o as i64));
    let indexes = arrow::array::Int64Array::from_iter_values(
        (0..records.len()).map(|i| (first_index + i) as i64),
    );
    RecordBatch::try_new(
        raw_record_schema(),
        vec![
            Arc::new(raw),
            Arc::new(sources),
            Arc::new(offsets),
            Arc::new(indexes),
        ],
    )
    .expect("raw schema matches")
}
