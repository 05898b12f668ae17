//! `parse`: raw records (from a source) → typed columns.
//!
//! HL7v2 goes through the zero-copy engine (`formats::hl7`) with columns by path; NDJSON and CSV
//! through Arrow's decoders against a declared schema (`schemas/*.json`). A record that does not
//! parse, or a value that does not convert to its declared type, sends that record to the
//! dead-letter output with a located reason; the rest of the batch goes on.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};

use super::{
    CONTROL_ID, DeadLetters, MESSAGE_TYPE, OFFSET, Operator, OperatorError, RAW, RECORD_INDEX,
    SOURCE, StageOutput,
};
use crate::formats::avro::AvroBatchBuilder;
use crate::formats::hl7::extract::{ColumnSpec, ExtractOptions, Extractor};
use crate::formats::hl7::{Message, ParseLimits};
use crate::net::schema_registry::{SchemaRegistry, split_wire};

pub use crate::record::{raw_batch, raw_record_schema};

/// How records are decoded.
pub enum ParseFormat {
    Hl7 {
        extractor: Extractor,
        limits: ParseLimits,
    },
    Ndjson {
        schema: SchemaRef,
    },
    Csv {
        schema: SchemaRef,
    },
    /// Confluent-framed Avro: each record's writer schema (by id, from the registry) is
    /// resolved against the declared reader schema, so producers may evolve compatibly.
    Avro {
        reader: Arc<apache_avro::Schema>,
        schema: SchemaRef,
        registry: Arc<SchemaRegistry>,
    },
}

pub struct Parse {
    format: ParseFormat,
    schema: SchemaRef,
    /// Records are addressed as `source` + record offset (Kafka), not as byte offsets in a
    /// file: HL7 errors then name the record and count bytes from its start.
    per_record: bool,
}

impl Parse {
    pub fn hl7(columns: Vec<ColumnSpec>, default_zone: crate::formats::hl7::Zone) -> Self {
        let extractor = Extractor::new(
            columns,
            ExtractOptions {
                provenance: false,
                default_zone,
            },
        );
        let mut fields: Vec<Field> = extractor
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(CONTROL_ID, DataType::Utf8, true));
        fields.push(Field::new(MESSAGE_TYPE, DataType::Utf8, true));
        Self::build(
            ParseFormat::Hl7 {
                extractor,
                limits: ParseLimits::default(),
            },
            fields,
        )
    }

    pub fn ndjson(schema: SchemaRef) -> Self {
        let fields = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        Self::build(ParseFormat::Ndjson { schema }, fields)
    }

    pub fn csv(schema: SchemaRef) -> Self {
        let fields = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        Self::build(ParseFormat::Csv { schema }, fields)
    }

    /// Avro records decoded with `reader` (whose Arrow form is `schema`, see
    /// `formats::avro::arrow_schema`), writer schemas fetched from `registry`.
    pub fn avro(
        reader: apache_avro::Schema,
        schema: SchemaRef,
        registry: Arc<SchemaRegistry>,
    ) -> Self {
        let fields = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        Self::build(
            ParseFormat::Avro {
                reader: Arc::new(reader),
                schema,
                registry,
            },
            fields,
        )
    }

    fn process_avro(
        &self,
        reader: &apache_avro::Schema,
        schema: &SchemaRef,
        registry: &SchemaRegistry,
        batch: &RecordBatch,
    ) -> Result<(RecordBatch, Failures), OperatorError> {
        let raw = raw_column(batch)?;
        let mut failures = Failures::default();
        let mut builder = AvroBatchBuilder::new(schema.clone(), batch.num_rows());
        let mut rows = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let record = raw.value(i);
            let decoded = split_wire(record).and_then(|(id, mut datum)| {
                let writer = registry.writer(id)?;
                let len = datum.len();
                // Writer → reader schema resolution (0.22 also offers GenericDatumReader).
                #[allow(deprecated)]
                let value = apache_avro::from_avro_datum(&writer, &mut datum, Some(reader))
                    .map_err(|e| format!("schema id {id}: Avro datum ({len} bytes): {e}"))?;
                if !datum.is_empty() {
                    return Err(format!(
                        "schema id {id}: {} trailing bytes after the datum at offset {}",
                        datum.len(),
                        5 + len - datum.len()
                    ));
                }
                builder.append(&value).map_err(|e| e.to_string())
            });
            match decoded {
                Ok(()) => rows.push(i as u32),
                Err(e) => failures.add(i, "parse", super::redact_values(&e)),
            }
        }
        let decoded = builder.finish()?;
        let all = self.assemble(decoded.columns().to_vec(), batch, &UInt32Array::from(rows))?;
        Ok((all, failures))
    }

    fn build(format: ParseFormat, mut fields: Vec<Field>) -> Self {
        for f in raw_record_schema().fields() {
            fields.push(f.as_ref().clone());
        }
        Parse {
            format,
            schema: Arc::new(Schema::new(fields)),
            per_record: false,
        }
    }

    /// For sources whose `_offset` is a record's offset (Kafka), not a byte offset: HL7 errors
    /// say `record at topic/partition offset N` and give byte offsets inside that record.
    pub fn per_record(mut self, yes: bool) -> Self {
        self.per_record = yes;
        self
    }

    /// Appends the input's provenance columns (rows `take`n) to decoded columns.
    fn assemble(
        &self,
        mut columns: Vec<ArrayRef>,
        input: &RecordBatch,
        rows: &UInt32Array,
    ) -> Result<RecordBatch, OperatorError> {
        for name in [RAW, SOURCE, OFFSET, RECORD_INDEX] {
            let col = input
                .column_by_name(name)
                .ok_or_else(|| OperatorError::Other(format!("input lacks {name}")))?;
            columns.push(arrow::compute::take(col.as_ref(), rows, None)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn process_hl7(
        &self,
        extractor: &Extractor,
        limits: &ParseLimits,
        batch: &RecordBatch,
    ) -> Result<(RecordBatch, Failures), OperatorError> {
        let raw = raw_column(batch)?;
        let offsets = int_column(batch, OFFSET)?;
        let indexes = int_column(batch, RECORD_INDEX)?;
        let mut failures = Failures::default();
        let mut messages = Vec::with_capacity(batch.num_rows());
        let mut rows = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            // A Kafka record's offset counts records, not bytes: its errors are located
            // inside the record (see `hl7_reason`).
            let (base, index) = if self.per_record {
                (0, 0)
            } else {
                (offsets.value(i) as usize, indexes.value(i) as usize)
            };
            match Message::parse_with(raw.value(i), base, index, limits) {
                Ok(m) => {
                    messages.push(m);
                    rows.push(i as u32);
                }
                Err(e) => failures.add(i, "parse", hl7_reason(self.per_record, batch, i, &e)),
            }
        }
        let x = extractor.extract(&messages, "")?;
        // A value that does not convert fails its whole record.
        let mut bad = vec![false; messages.len()];
        for e in &x.errors {
            bad[e.row] = true;
            let row = rows[e.row] as usize;
            failures.add(
                row,
                &format!("parse:{}", e.column),
                hl7_reason(self.per_record, batch, row, &e.error),
            );
        }
        let mut ids = StringBuilder::new();
        let mut types = StringBuilder::new();
        for m in &messages {
            ids.append_value(m.control_id());
            types.append_value(m.message_type());
        }
        let mut columns: Vec<ArrayRef> = x.batch.columns().to_vec();
        columns.push(Arc::new(ids.finish()));
        columns.push(Arc::new(types.finish()));
        let all = self.assemble(columns, batch, &UInt32Array::from(rows))?;
        let keep = arrow::array::BooleanArray::from(bad.iter().map(|b| !b).collect::<Vec<_>>());
        Ok((arrow::compute::filter_record_batch(&all, &keep)?, failures))
    }

    fn process_decoder(
        &self,
        batch: &RecordBatch,
        decode: impl Fn(&[&[u8]]) -> Result<RecordBatch, String>,
    ) -> Result<(RecordBatch, Failures), OperatorError> {
        let raw = raw_column(batch)?;
        let records: Vec<&[u8]> = (0..batch.num_rows()).map(|i| raw.value(i)).collect();
        let mut failures = Failures::default();
        // Fast path: the whole batch decodes. Otherwise find the culprits one by one.
        let (decoded, rows) = match decode(&records) {
            Ok(b) if b.num_rows() == records.len() => {
                (b, (0..records.len() as u32).collect::<Vec<_>>())
            }
            _ => {
                let mut parts = Vec::new();
                let mut rows = Vec::new();
                for (i, r) in records.iter().enumerate() {
                    match decode(std::slice::from_ref(r)) {
                        Ok(b) if b.num_rows() == 1 => {
                            parts.push(b);
                            rows.push(i as u32);
                        }
                        Ok(_) => failures.add(i, "parse", "empty record".into()),
                        Err(e) => failures.add(i, "parse", super::redact_values(&e)),
                    }
                }
                let schema = self.decoded_schema();
                (arrow::compute::concat_batches(&schema, &parts)?, rows)
            }
        };
        let all = self.assemble(decoded.columns().to_vec(), batch, &UInt32Array::from(rows))?;
        Ok((all, failures))
    }

    fn decoded_schema(&self) -> SchemaRef {
        match &self.format {
            ParseFormat::Ndjson { schema }
            | ParseFormat::Csv { schema }
            | ParseFormat::Avro { schema, .. } => schema.clone(),
            ParseFormat::Hl7 { extractor, .. } => extractor.schema(),
        }
    }
}

/// An HL7 error as a dead-letter reason. File records: the error's own location (message
/// number in the input, absolute byte offset). Per-record sources (Kafka, parsed with base
/// offset 0): which record (`topic/partition` and offset), then where inside it.
pub(super) fn hl7_reason(
    per_record: bool,
    batch: &RecordBatch,
    row: usize,
    e: &crate::formats::hl7::Hl7Error,
) -> String {
    if !per_record {
        return e.to_string();
    }
    let source = batch
        .column_by_name(SOURCE)
        .and_then(|c| c.as_string_opt::<i32>())
        .filter(|s| s.is_valid(row))
        .map(|s| s.value(row))
        .unwrap_or("-");
    let offset = int_column(batch, OFFSET).map_or(-1, |o| o.value(row));
    let mut location = e.location.clone();
    location.message_index = None;
    format!(
        "record at {source} offset {offset}: {} (at {location})",
        e.kind
    )
}

/// Records that failed, by input row.
#[derive(Default)]
pub(super) struct Failures {
    rows: Vec<u32>,
    rule: Vec<String>,
    reason: Vec<String>,
}

impl Failures {
    pub(super) fn add(&mut self, row: usize, rule: &str, reason: String) {
        // One entry per record: a second failing column adds to the reason.
        if self.rows.last() == Some(&(row as u32)) {
            let last = self.reason.len() - 1;
            self.reason[last].push_str("; ");
            self.reason[last].push_str(&reason);
            return;
        }
        self.rows.push(row as u32);
        self.rule.push(rule.to_string());
        self.reason.push(reason);
    }

    pub(super) fn into_dead(
        mut self,
        input: &RecordBatch,
    ) -> Result<Option<DeadLetters>, OperatorError> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        // Conversion failures are found after parse failures; keep input order.
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by_key(|&i| self.rows[i]);
        let rows = UInt32Array::from(order.iter().map(|&i| self.rows[i]).collect::<Vec<_>>());
        let rule = order
            .iter()
            .map(|&i| std::mem::take(&mut self.rule[i]))
            .collect();
        let reason = order
            .iter()
            .map(|&i| std::mem::take(&mut self.reason[i]))
            .collect();
        Ok(Some(DeadLetters {
            rows: arrow::compute::take_record_batch(input, &rows)?,
            rule,
            reason,
        }))
    }
}

pub(super) fn raw_column(batch: &RecordBatch) -> Result<&arrow::array::BinaryArray, OperatorError> {
    batch
        .column_by_name(RAW)
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or_else(|| OperatorError::Other(format!("parse input needs a binary {RAW} column")))
}

pub(super) fn int_column<'b>(
    batch: &'b RecordBatch,
    name: &str,
) -> Result<&'b arrow::array::PrimitiveArray<Int64Type>, OperatorError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| OperatorError::Other(format!("parse input needs an int64 {name} column")))
}

fn decode_ndjson(schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch, String> {
    let json_text: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| crate::formats::schema::is_json_text(f))
        .map(|f| f.name().as_str())
        .collect();
    if !json_text.is_empty() {
        // Fields declared `json` are decoded as their JSON text: rewrite those values as
        // strings first (only pipelines that declare one pay for this).
        let rewritten = records
            .iter()
            .map(|r| json_values_as_text(r, &json_text))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[u8]> = rewritten.iter().map(Vec::as_slice).collect();
        return decode_json_records(schema, &refs);
    }
    decode_json_records(schema, records)
}

fn json_values_as_text(record: &[u8], fields: &[&str]) -> Result<Vec<u8>, String> {
    let mut value: serde_json::Value = serde_json::from_slice(record).map_err(|e| e.to_string())?;
    let Some(object) = value.as_object_mut() else {
        return Err("expected a JSON object".into());
    };
    for f in fields {
        if let Some(v) = object.get_mut(*f)
            && !v.is_null()
        {
            *v = serde_json::Value::String(v.to_string());
        }
    }
    serde_json::to_vec(&value).map_err(|e| e.to_string())
}

fn decode_json_records(schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch, String> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(records.len().max(1))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    for r in records {
        // One record must be exactly one JSON object: `{}{}` on a line is an error.
        let before = decoder.len();
        decoder.decode(r).map_err(|e| e.to_string())?;
        decoder.decode(b"\n").map_err(|e| e.to_string())?;
        if decoder.len() != before + 1 {
            return Err(format!(
                "expected one JSON object per record, found {}",
                decoder.len() - before
            ));
        }
    }
    Ok(decoder
        .flush()
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

fn decode_csv(schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch, String> {
    let mut decoder = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_batch_size(records.len().max(1))
        .build_decoder();
    for r in records {
        let mut line = r.to_vec();
        line.push(b'\n');
        let mut buf: &[u8] = &line;
        while !buf.is_empty() {
            let n = decoder.decode(buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            buf = &buf[n..];
        }
    }
    Ok(decoder
        .flush()
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

impl Operator for Parse {
    fn outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![(String::new(), self.schema.clone())]
    }

    fn prepare<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
    ) -> Option<futures::future::BoxFuture<'a, Result<(), OperatorError>>> {
        let ParseFormat::Avro { registry, .. } = &self.format else {
            return None;
        };
        let raw = raw_column(batch).ok()?;
        // Records that are not Confluent-framed fail in `process`, with their reason.
        let ids: Vec<u32> = (0..batch.num_rows())
            .filter_map(|i| split_wire(raw.value(i)).ok().map(|(id, _)| id))
            .collect();
        let registry = registry.clone();
        Some(Box::pin(async move {
            registry.prefetch(ids).await.map_err(OperatorError::Other)
        }))
    }

    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        let (out, failures) = match &self.format {
            ParseFormat::Hl7 { extractor, limits } => {
                self.process_hl7(extractor, limits, &batch)?
            }
            ParseFormat::Ndjson { schema } => {
                let schema = schema.clone();
                self.process_decoder(&batch, |r| decode_ndjson(&schema, r))?
            }
            ParseFormat::Csv { schema } => {
                let schema = schema.clone();
                self.process_decoder(&batch, |r| decode_csv(&schema, r))?
            }
            ParseFormat::Avro {
                reader,
                schema,
                registry,
            } => self.process_avro(reader, schema, registry, &batch)?,
        };
        Ok(StageOutput {
            outputs: vec![Some(out)],
            dead: failures.into_dead(&batch)?,
            filtered: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::hl7::extract::ColumnType;

    #[test]
    fn hl7_good_bad_and_unconvertible_records() {
        let good = b"MSH|^~\\&|A||||||ADT^A01|C1|P|2.5\rPID|1||111||DOE||19800102\r";
        let bad_date = b"MSH|^~\\&|A||||||ADT^A01|C2|P|2.5\rPID|1||222||ROE||19801302\r";
        let garbage = b"not hl7 at all";
        let batch = raw_batch("f.hl7", &[(0, good), (100, garbage), (200, bad_date)], 10);
        let mut p = Parse::hl7(
            vec![
                ColumnSpec::new("mrn", "PID-3.1", ColumnType::Utf8).unwrap(),
                ColumnSpec::new("dob", "PID-7", ColumnType::Date32).unwrap(),
            ],
            crate::formats::hl7::Zone::default(),
        );
        let out = p.process(batch).unwrap();
        let rows = out.outputs[0].as_ref().unwrap();
        assert_eq!(rows.num_rows(), 1);
        assert_eq!(
            rows.column_by_name(CONTROL_ID)
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "C1"
        );
        assert_eq!(
            rows.column_by_name(RECORD_INDEX)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            10
        );
        let dead = out.dead.unwrap();
        assert_eq!(dead.rows.num_rows(), 2);
        assert_eq!(dead.rule, ["parse", "parse:dob"]);
        assert!(dead.reason[0].contains("MSH"), "{}", dead.reason[0]);
        assert!(
            dead.reason[1].contains("month is out of range"),
            "{}",
            dead.reason[1]
        );
        assert!(
            dead.reason[1].contains("byte offset 2"),
            "absolute offset: {}",
            dead.reason[1]
        );
        let idx = dead
            .rows
            .column_by_name(RECORD_INDEX)
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!((idx.value(0), idx.value(1)), (11, 12));
    }

    #[test]
    fn ndjson_bad_lines_are_isolated() {
        let schema = crate::formats::schema::parse(
            r#"{"fields":[{"name":"id","type":"utf8","nullable":false},{"name":"n","type":"int64"}]}"#,
        )
        .unwrap();
        let batch = raw_batch(
            "e.ndjson",
            &[
                (0, br#"{"id":"a","n":1}"#),
                (20, br#"{"id":"b","n":"x"}"#),
                (40, b"{not json"),
                (50, br#"{"n":3}"#),
                (60, br#"{"id":"e"}"#),
            ],
            0,
        );
        let mut p = Parse::ndjson(schema);
        let out = p.process(batch).unwrap();
        let rows = out.outputs[0].as_ref().unwrap();
        assert_eq!(rows.num_rows(), 2);
        let ids = rows.column(0).as_string::<i32>();
        assert_eq!((ids.value(0), ids.value(1)), ("a", "e"));
        assert!(rows.column(1).is_null(1));
        let dead = out.dead.unwrap();
        assert_eq!(dead.rows.num_rows(), 3);
    }

    #[test]
    fn csv_records() {
        let schema = crate::formats::schema::parse(
            r#"{"fields":[{"name":"code","type":"utf8"},{"name":"beds","type":"int64"}]}"#,
        )
        .unwrap();
        let batch = raw_batch("f.csv", &[(0, b"GHH,120"), (8, b"\"North, Clinic\",x")], 0);
        let out = Parse::csv(schema).process(batch).unwrap();
        assert_eq!(out.outputs[0].as_ref().unwrap().num_rows(), 1);
        assert_eq!(out.dead.unwrap().rows.num_rows(), 1);
    }
}
