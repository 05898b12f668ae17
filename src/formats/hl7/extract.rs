//! Messages → one Arrow `RecordBatch`, by column specs (name, path, Arrow type).
//!
//! This is what a pipeline's `parse` stage runs. A value that does not convert (a bad date, a
//! non-number) becomes NULL in its column and a `RowError` naming the row, column, segment,
//! field and byte offset: one bad value never fails the batch, and the caller decides whether
//! the row goes on or to the dead-letter output.

use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::datatypes::{Ts, Zone, parse_nm, parse_nm_i64};
use super::error::{ErrorKind, Hl7Error};
use super::message::{Element, Message};
use super::path::Path;

/// Arrow type of an extracted column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Utf8,
    Int64,
    Float64,
    /// From DT or TS/DTM (the date part, as written).
    Date32,
    /// From TS/DTM, converted to UTC (values without an offset are in `default_zone`).
    Timestamp,
    /// Every repetition (and, with `SEG(*)`, every segment occurrence).
    ListUtf8,
}

impl ColumnType {
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Date32 => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::ListUtf8 => {
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
            }
        }
    }
}

impl FromStr for ColumnType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "utf8" | "string" | "text" => ColumnType::Utf8,
            "int64" | "int" | "integer" => ColumnType::Int64,
            "float64" | "float" | "double" | "number" => ColumnType::Float64,
            "date32" | "date" => ColumnType::Date32,
            "timestamp" | "datetime" => ColumnType::Timestamp,
            "list" | "list<utf8>" | "array" => ColumnType::ListUtf8,
            _ => {
                return Err(format!(
                    "unknown column type {s:?} (utf8, int64, float64, date, timestamp, list)"
                ));
            }
        })
    }
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub path: Path,
    pub data_type: ColumnType,
}

impl ColumnSpec {
    pub fn new(
        name: impl Into<String>,
        path: &str,
        data_type: ColumnType,
    ) -> Result<Self, Hl7Error> {
        let path = Path::parse(path)?;
        let spec = ColumnSpec {
            name: name.into(),
            path,
            data_type,
        };
        if spec.path.selects_many() && spec.data_type != ColumnType::ListUtf8 {
            return Err(Hl7Error::new(
                ErrorKind::InvalidPath {
                    path: spec.path.to_string(),
                    reason: format!(
                        "'*' selects several values; column {:?} must have type list",
                        spec.name
                    ),
                },
                0,
            ));
        }
        Ok(spec)
    }

    /// Parses `NAME=PATH[:TYPE]`, e.g. `dob=PID-7:date`. Without a type the path decides, never
    /// the data: a list when it asks for every value (`PID-3(*)`), else text — a path without
    /// a repetition index reads the first repetition.
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("field spec {text:?} must be NAME=PATH[:TYPE]"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("field spec {text:?} has an empty name"));
        }
        let (path, ty) = match rest.split_once(':') {
            Some((p, t)) => (p, t.parse()?),
            None => {
                let many = Path::parse(rest).is_ok_and(|p| p.selects_many());
                let ty = if many {
                    ColumnType::ListUtf8
                } else {
                    ColumnType::Utf8
                };
                (rest, ty)
            }
        };
        ColumnSpec::new(name, path, ty).map_err(|e| e.kind.to_string())
    }
}

/// Names of the provenance columns appended after the declared ones.
pub const PROVENANCE_COLUMNS: [&str; 5] = [
    "_control_id",
    "_message_type",
    "_source",
    "_offset",
    "_message_index",
];

/// Options that apply to every column.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Append `_control_id`, `_message_type`, `_source`, `_offset`, `_message_index`.
    pub provenance: bool,
    /// Offset assumed for TS values written without one (HL7 says: the sender's local time).
    pub default_zone: Zone,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            provenance: true,
            default_zone: Zone::default(),
        }
    }
}

/// A value that did not convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub row: usize,
    pub column: String,
    pub error: Hl7Error,
}

/// The result of extracting one batch.
#[derive(Debug, Clone)]
pub struct Extraction {
    pub batch: RecordBatch,
    pub errors: Vec<RowError>,
}

/// Turns messages into record batches with a fixed schema.
#[derive(Debug, Clone)]
pub struct Extractor {
    columns: Vec<ColumnSpec>,
    options: ExtractOptions,
    schema: SchemaRef,
}

impl Extractor {
    pub fn new(columns: Vec<ColumnSpec>, options: ExtractOptions) -> Self {
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.arrow_type(), true))
            .collect();
        if options.provenance {
            fields.push(Field::new("_control_id", DataType::Utf8, true));
            fields.push(Field::new("_message_type", DataType::Utf8, true));
            fields.push(Field::new("_source", DataType::Utf8, true));
            fields.push(Field::new("_offset", DataType::Int64, false));
            fields.push(Field::new("_message_index", DataType::Int64, false));
        }
        Extractor {
            columns,
            options,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    /// Extracts one batch. `source` fills `_source` (a file name or topic/partition).
    pub fn extract(
        &self,
        messages: &[Message<'_>],
        source: &str,
    ) -> Result<Extraction, ArrowError> {
        let n = messages.len();
        let mut errors = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let mut scratch = Vec::new();
        for col in &self.columns {
            let mut fail = |row: usize, m: &Message<'_>, el: &Element<'_>, e: Hl7Error| {
                errors.push(RowError {
                    row,
                    column: col.name.clone(),
                    error: locate(e, m, &col.path, el),
                });
            };
            let array: ArrayRef = match col.data_type {
                ColumnType::Utf8 => {
                    let mut b = StringBuilder::with_capacity(n, n * 16);
                    for (row, m) in messages.iter().enumerate() {
                        let el = m.get(&col.path);
                        match text_of(&el) {
                            Ok(Some(t)) => b.append_value(t),
                            Ok(None) => b.append_null(),
                            Err(e) => {
                                fail(row, m, &el, e);
                                b.append_null()
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Int64 => {
                    let mut b = Int64Builder::with_capacity(n);
                    for (row, m) in messages.iter().enumerate() {
                        let el = m.get(&col.path);
                        match convert(&el, "int64", parse_nm_i64) {
                            Ok(v) => b.append_option(v),
                            Err(e) => {
                                fail(row, m, &el, e);
                                b.append_null()
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Float64 => {
                    let mut b = Float64Builder::with_capacity(n);
                    for (row, m) in messages.iter().enumerate() {
                        let el = m.get(&col.path);
                        match convert(&el, "float64", parse_nm) {
                            Ok(v) => b.append_option(v),
                            Err(e) => {
                                fail(row, m, &el, e);
                                b.append_null()
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Date32 => {
                    let mut b = Date32Builder::with_capacity(n);
                    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
                    for (row, m) in messages.iter().enumerate() {
                        // The first component: old TS had a precision component after it.
                        let el = m.get(&col.path).component_if_field(1);
                        match convert(&el, "date", |t| {
                            Ts::parse(t).map(|ts| (ts.date() - epoch).num_days() as i32)
                        }) {
                            Ok(v) => b.append_option(v),
                            Err(e) => {
                                fail(row, m, &el, e);
                                b.append_null()
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Timestamp => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
                    let tz = self.options.default_zone;
                    for (row, m) in messages.iter().enumerate() {
                        let el = m.get(&col.path).component_if_field(1);
                        match convert(&el, "timestamp", |t| {
                            Ts::parse(t).map(|ts| ts.to_utc_micros(tz))
                        }) {
                            Ok(v) => b.append_option(v),
                            Err(e) => {
                                fail(row, m, &el, e);
                                b.append_null()
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::ListUtf8 => {
                    let mut b = ListBuilder::new(StringBuilder::new());
                    for (row, m) in messages.iter().enumerate() {
                        scratch.clear();
                        m.get_all(&col.path, true, &mut scratch);
                        for el in &scratch {
                            match text_of(el) {
                                Ok(v) => b.values().append_option(v),
                                Err(e) => {
                                    fail(row, m, el, e);
                                    b.values().append_null()
                                }
                            }
                        }
                        b.append(true);
                    }
                    Arc::new(b.finish())
                }
            };
            arrays.push(array);
        }
        if self.options.provenance {
            let mut ids = StringBuilder::with_capacity(n, n * 12);
            let mut types = StringBuilder::with_capacity(n, n * 12);
            let mut offsets = Int64Builder::with_capacity(n);
            let mut indexes = Int64Builder::with_capacity(n);
            for m in messages {
                ids.append_value(m.control_id());
                types.append_value(m.message_type());
                offsets.append_value(m.offset() as i64);
                indexes.append_value(m.index() as i64);
            }
            arrays.push(Arc::new(ids.finish()));
            arrays.push(Arc::new(types.finish()));
            arrays.push(Arc::new(arrow::array::StringArray::from(vec![source; n])));
            arrays.push(Arc::new(offsets.finish()));
            arrays.push(Arc::new(indexes.finish()));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        Ok(Extraction { batch, errors })
    }
}

/// Text of an element; absent, empty and `""` are all SQL NULL.
fn text_of<'a>(el: &Element<'a>) -> Result<Option<std::borrow::Cow<'a, str>>, Hl7Error> {
    if el.raw().is_empty() || el.is_null() {
        return Ok(None);
    }
    el.text().map(Some)
}

fn convert<T>(
    el: &Element<'_>,
    target: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, Hl7Error> {
    let Some(text) = text_of(el)? else {
        return Ok(None);
    };
    parse(&text).map(Some).map_err(|reason| {
        Hl7Error::new(
            ErrorKind::Conversion {
                // Bounded: the value can be PHI and errors reach logs and DLQ headers.
                value: text.chars().take(32).collect(),
                target,
                reason,
            },
            el.offset(),
        )
    })
}

/// Adds message, segment and field to an error found while reading a column.
fn locate(e: Hl7Error, m: &Message<'_>, path: &Path, el: &Element<'_>) -> Hl7Error {
    // The segment that holds the element's offset gives the exact position.
    let seg = m
        .segments()
        .find(|s| s.offset() <= el.offset() && el.offset() <= s.offset() + s.raw().len());
    let mut e = e.with_message_index(m.index()).with_field(path.field);
    if let Some(s) = seg {
        e = e.with_segment(s.id().as_bytes(), s.position());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Date32Type, Int64Type, TimestampMicrosecondType};

    const MSGS: &[u8] = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|C1|P|2.5\rPID|1||111^^^H^MR~222^^^S^SS||DOE^JOHN||19800102|M|||||||||||42\rOBX|1|NM|x||7.5\rOBX|2|NM|y||8\r\
MSH|^~\\&|A|B|C|D|20260101||ADT^A04|C2|P|2.5\rPID|1||333^^^H^MR||ROE^JANE||1990130|F|||||||||||abc\r";

    fn parse_all(input: &[u8]) -> Vec<Message<'_>> {
        crate::formats::hl7::Splitter::new(input)
            .map(|r| r.unwrap().message)
            .collect()
    }

    #[test]
    fn extracts_typed_columns_with_provenance_and_row_errors() {
        let msgs = parse_all(MSGS);
        let cols = vec![
            ColumnSpec::new("mrn", "PID-3.1", ColumnType::Utf8).unwrap(),
            ColumnSpec::new("ids", "PID-3.1", ColumnType::ListUtf8).unwrap(),
            ColumnSpec::new("dob", "PID-7", ColumnType::Date32).unwrap(),
            ColumnSpec::new("num", "PID-19", ColumnType::Int64).unwrap(),
            ColumnSpec::new("obs", "OBX(*)-5", ColumnType::ListUtf8).unwrap(),
            ColumnSpec::new("obs2", "OBX(2)-5", ColumnType::Float64).unwrap(),
            ColumnSpec::new("sent", "MSH-7", ColumnType::Timestamp).unwrap(),
        ];
        let x = Extractor::new(cols, ExtractOptions::default())
            .extract(&msgs, "file.hl7")
            .unwrap();
        let b = &x.batch;
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.num_columns(), 7 + PROVENANCE_COLUMNS.len());
        let mrn = b.column(0).as_string::<i32>();
        assert_eq!((mrn.value(0), mrn.value(1)), ("111", "333"));
        let ids = b.column(1).as_list::<i32>();
        let first = ids.value(0);
        let first = first.as_string::<i32>();
        assert_eq!(
            (first.len(), first.value(0), first.value(1)),
            (2, "111", "222")
        );
        let dob = b.column(2).as_primitive::<Date32Type>();
        assert_eq!(dob.value(0), 3652 + 1); // 1980-01-02: 10 years incl. 2 leap days, +1
        assert!(dob.is_null(1), "1990130 is not a date");
        let num = b.column(3).as_primitive::<Int64Type>();
        assert_eq!(num.value(0), 42);
        assert!(num.is_null(1));
        let obs = b.column(4).as_list::<i32>();
        assert_eq!(obs.value_length(0), 2);
        assert_eq!(obs.value_length(1), 0);
        let sent = b.column(6).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(sent.value(0), 1_767_225_600_000_000);
        let src = b.column_by_name("_source").unwrap().as_string::<i32>();
        assert_eq!(src.value(1), "file.hl7");
        let ctrl = b.column_by_name("_control_id").unwrap().as_string::<i32>();
        assert_eq!(ctrl.value(1), "C2");

        assert_eq!(x.errors.len(), 2, "{:?}", x.errors);
        let e = &x.errors[0];
        assert_eq!((e.row, e.column.as_str()), (1, "dob"));
        assert_eq!(e.error.location.message_index, Some(1));
        assert_eq!(e.error.location.segment_id.as_deref(), Some("PID"));
        assert_eq!(e.error.location.field, Some(7));
        assert_eq!(&MSGS[e.error.location.byte_offset..][..7], b"1990130");
    }

    /// #15 item 15: the type of a CLI column follows from its path, never from the data (PID-3
    /// repeats in MSGS, and `PID-3.1` still reads the first repetition as text).
    #[test]
    fn cli_specs_types_follow_the_path() {
        let msgs = parse_all(MSGS);
        let cols = vec![
            ColumnSpec::parse_cli("mrn=PID-3.1").unwrap(),
            ColumnSpec::parse_cli("ids=PID-3(*).1").unwrap(),
            ColumnSpec::parse_cli("dob=PID-7:date").unwrap(),
        ];
        assert_eq!(cols[0].data_type, ColumnType::Utf8);
        assert_eq!(cols[1].data_type, ColumnType::ListUtf8);
        assert_eq!(cols[2].data_type, ColumnType::Date32);
        let x = Extractor::new(cols, ExtractOptions::default())
            .extract(&msgs, "t")
            .unwrap();
        let mrn = arrow::array::AsArray::as_string::<i32>(x.batch.column(0));
        assert_eq!((mrn.value(0), mrn.value(1)), ("111", "333"));
        assert!(ColumnSpec::parse_cli("x").is_err());
        assert!(ColumnSpec::parse_cli("x=PID-3:bogus").is_err());
        assert!(ColumnSpec::new("x", "OBX(*)-5", ColumnType::Utf8).is_err());
    }
}
