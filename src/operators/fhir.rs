//! `fhir`: raw HL7v2 records → FHIR R4 resources per the v2-to-FHIR IG (`crate::fhir::v2`),
//! one row per resource — or, with `bundle:`, one row per message holding a transaction or
//! batch Bundle of conditional updates. A message that cannot be mapped goes to the
//! dead-letter output with the reason (field and position); the rest of the batch goes on.
//!
//! Columns: `resource_type`, `resource_id` (deterministic), `identifier_system`,
//! `identifier_value` (what a conditional update matches on), `request_url` (the update's
//! URL; empty for a Bundle, which is posted to the base), `resource` (the JSON),
//! `delete_elements` (what the message nulls with `""`), the message's `_control_id` and
//! `_message_type`, and the record's provenance columns.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::parse::{Failures, hl7_reason, int_column, raw_column, raw_record_schema};
use super::{
    CONTROL_ID, MESSAGE_TYPE, OFFSET, Operator, OperatorError, RAW, RECORD_INDEX, SOURCE,
    StageOutput,
};
use crate::fhir::bundle::{BundleType, bundle, request_url};
use crate::fhir::v2::{Options, convert};
use crate::formats::hl7::{Message, ParseLimits};

pub struct ToFhir {
    opts: Options,
    bundle: Option<BundleType>,
    limits: ParseLimits,
    schema: SchemaRef,
    /// Kafka records: errors name the record and count bytes inside it (see `hl7_reason`).
    per_record: bool,
}

/// The schema of the stage's output.
pub fn fhir_row_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("resource_type", DataType::Utf8, false),
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("identifier_system", DataType::Utf8, true),
        Field::new("identifier_value", DataType::Utf8, true),
        Field::new("request_url", DataType::Utf8, false),
        Field::new("resource", DataType::Utf8, false),
        // Elements the message deletes (`""` in v2), comma-separated: a FHIR sink removes
        // them from the server's resource; null when none.
        Field::new("delete_elements", DataType::Utf8, true),
        Field::new(CONTROL_ID, DataType::Utf8, true),
        Field::new(MESSAGE_TYPE, DataType::Utf8, true),
    ];
    fields.extend(
        raw_record_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone()),
    );
    Arc::new(Schema::new(fields))
}

impl ToFhir {
    pub fn new(opts: Options, bundle: Option<BundleType>) -> Self {
        ToFhir {
            opts,
            bundle,
            limits: ParseLimits::default(),
            schema: fhir_row_schema(),
            per_record: false,
        }
    }

    /// See `Parse::per_record`.
    pub fn per_record(mut self, yes: bool) -> Self {
        self.per_record = yes;
        self
    }
}

#[derive(Default)]
struct Columns {
    kind: StringBuilder,
    id: StringBuilder,
    system: StringBuilder,
    value: StringBuilder,
    url: StringBuilder,
    json: StringBuilder,
    deleted: StringBuilder,
    control: StringBuilder,
    message_type: StringBuilder,
    /// Input row of each output row (for the provenance columns).
    rows: Vec<u32>,
}

impl Operator for ToFhir {
    fn outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![(String::new(), self.schema.clone())]
    }

    fn process(&mut self, batch: RecordBatch) -> Result<StageOutput, OperatorError> {
        let raw = raw_column(&batch)?;
        let offsets = int_column(&batch, OFFSET)?;
        let indexes = int_column(&batch, RECORD_INDEX)?;
        let mut failures = Failures::default();
        let mut c = Columns::default();
        for i in 0..batch.num_rows() {
            let (base, index) = if self.per_record {
                (0, 0)
            } else {
                (offsets.value(i) as usize, indexes.value(i) as usize)
            };
            let m = match Message::parse_with(raw.value(i), base, index, &self.limits) {
                Ok(m) => m,
                Err(e) => {
                    failures.add(i, "fhir:parse", hl7_reason(self.per_record, &batch, i, &e));
                    continue;
                }
            };
            let resources = match convert(&m, &self.opts) {
                Ok(r) => r,
                Err(e) => {
                    failures.add(i, "fhir:map", e.to_string());
                    continue;
                }
            };
            let mut row = |kind: &str,
                           id: &str,
                           key: Option<&(String, String)>,
                           url: &str,
                           body: String,
                           deleted: &[String]| {
                c.kind.append_value(kind);
                c.id.append_value(id);
                c.system.append_option(key.map(|k| k.0.as_str()));
                c.value.append_option(key.map(|k| k.1.as_str()));
                c.url.append_value(url);
                c.json.append_value(body);
                c.deleted
                    .append_option((!deleted.is_empty()).then(|| deleted.join(",")));
                c.control.append_value(m.control_id());
                c.message_type.append_value(m.message_type());
                c.rows.push(i as u32);
            };
            match self.bundle {
                Some(kind) => {
                    // The message's first resource (the patient) names the Bundle row.
                    let (id, key) = (resources[0].id.clone(), resources[0].identifier.clone());
                    let b = bundle(resources, kind);
                    row("Bundle", &id, key.as_ref(), "", utf8(b.to_vec())?, &[]);
                }
                None => {
                    for r in &resources {
                        let url = request_url(r);
                        row(
                            r.resource_type,
                            &r.id,
                            r.identifier.as_ref(),
                            &url,
                            utf8({
                                let mut out = Vec::with_capacity(1024);
                                r.body.write(&mut out);
                                out
                            })?,
                            &r.deleted,
                        );
                    }
                }
            }
        }
        let take = UInt32Array::from(std::mem::take(&mut c.rows));
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(c.kind.finish()),
            Arc::new(c.id.finish()),
            Arc::new(c.system.finish()),
            Arc::new(c.value.finish()),
            Arc::new(c.url.finish()),
            Arc::new(c.json.finish()),
            Arc::new(c.deleted.finish()),
            Arc::new(c.control.finish()),
            Arc::new(c.message_type.finish()),
        ];
        for name in [RAW, SOURCE, OFFSET, RECORD_INDEX] {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| OperatorError::Other(format!("fhir input lacks {name}")))?;
            columns.push(arrow::compute::take(col.as_ref(), &take, None)?);
        }
        let out = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok(StageOutput {
            outputs: vec![Some(out)],
            dead: failures.into_dead(&batch)?,
            filtered: 0,
        })
    }
}

/// Written JSON as a string column's value (the writers only write UTF-8).
fn utf8(json: Vec<u8>) -> Result<String, OperatorError> {
    String::from_utf8(json).map_err(|e| OperatorError::Other(e.to_string()))
}
