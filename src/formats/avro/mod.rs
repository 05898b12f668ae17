//! Avro ↔ Arrow for Kafka topics.
//!
//! Records arrive in the Confluent wire format; the caller strips the 5-byte header and decodes
//! the datum with `apache_avro::from_avro_datum(writer, reader)`. [`AvroBatchBuilder`] appends
//! the decoded [`Value`]s straight into Arrow builders (a column tree built once from the Arrow
//! schema), [`row_to_value`] turns a row back into a `Value` for producing, and
//! [`avro_schema_json`] derives a schema for sinks that have none declared.
//!
//! Type mapping (Avro → Arrow):
//!
//! | Avro                                   | Arrow                                    |
//! |----------------------------------------|------------------------------------------|
//! | `["null", T]`, `[T, "null"]`           | `T`, nullable (other unions: error)      |
//! | boolean, int, long, float, double      | Boolean, Int32, Int64, Float32, Float64  |
//! | bytes, string, enum, uuid, big-decimal | Binary, Utf8, Utf8, Utf8, Utf8           |
//! | fixed(n)                               | FixedSizeBinary(n)                       |
//! | decimal(p, s) (bytes or fixed)         | Decimal128(p, s)                         |
//! | date, time-millis, time-micros         | Date32, Time32(ms), Time64(µs)           |
//! | timestamp-{millis,micros,nanos}        | Timestamp(unit, "UTC")                   |
//! | local-timestamp-{millis,micros,nanos}  | Timestamp(unit, no zone)                 |
//! | duration                               | Interval(MonthDayNano)                   |
//! | array<T>, map<T>, record               | List<T>, Map<Utf8, T>, Struct            |
//!
//! Fields that are not a union are non-nullable.
//!
//! Layout: `schema.rs` (Avro → Arrow schema, and the Avro JSON derived for sinks), `read.rs`
//! (values → columns), `write.rs` (a row → a value, converting to the Avro type), `tests.rs`
//! (the conformance check of the table above).
//!
//! Why not `arrow-avro` (checked against 59.3.2, on the same release train as our `arrow`):
//! it decodes and encodes the Confluent wire format, but does not cover this table, and its
//! writer is unsafe for our sinks. Checked by compiling it against this schema:
//! - read shapes differ: enum → `Dictionary(Int32, Utf8)`, uuid → `FixedSizeBinary(16)`, map
//!   entries named `key`/`value`, timestamps in zone `"+00:00"`; multi-branch unions become
//!   dense `Union`s; big-decimal is not decoded;
//! - its encoder follows the Arrow type, not the Avro one: an `Int64` column holding
//!   5,000,000,000 under an Avro `int` field was encoded without an error (as a long, which an
//!   `int` reader misreads), where [`row_to_value`] refuses it naming the field; it also has no
//!   field defaults, null checks on non-nullable fields, unknown-enum defaults or exact decimal
//!   rescaling;
//! - a record that fails halfway stays half-appended in its column builders (no rollback).
//!
//! Adapting it would take an estimated 450–550 lines of shape fixes, write-side conversion and
//! decoder rebuilds. That is not thin, and it would change what sinks write. apache-avro stays
//! the codec (binary encoding, schema resolution, the registry's schemas); this module only
//! maps its values to and from Arrow.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use apache_avro::schema::{
    DecimalSchema, EnumSchema, InnerDecimalSchema, Name, RecordField, RecordSchema, UnionSchema,
    UuidSchema,
};
use apache_avro::types::Value;
use apache_avro::{Days, Decimal, Duration, Millis, Months, Schema, Uuid};
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    IntervalMonthDayNanoBuilder, ListArray, MapArray, NullBufferBuilder, NullBuilder,
    StringBuilder, StructArray, Time32MillisecondBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder, TimestampMillisecondBuilder, TimestampNanosecondBuilder,
    new_null_array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Date64Type, Decimal32Type, Decimal64Type,
    Decimal128Type, DecimalType, Field, FieldRef, Fields, Float16Type, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, IntervalMonthDayNano, IntervalMonthDayNanoType,
    IntervalUnit, Schema as ArrowSchema, SchemaRef, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::{Value as Json, json};

/// Why a schema or a record could not be converted. Field errors name the field path
/// (`patient.birth_date`, `tags[2]`, `counters["k"]`).
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("expected a top-level Avro record, found {0}")]
    NotARecord(String),
    #[error("field {path}: expected {expected}, found {found}")]
    TypeMismatch {
        path: String,
        expected: String,
        found: String,
    },
    #[error("field {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("row {row} is out of bounds for a batch of {rows} rows")]
    RowOutOfBounds { row: usize, rows: usize },
    #[error("Avro: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error("Arrow: {0}")]
    Arrow(#[from] ArrowError),
}

// ---------------------------------------------------------------------------------------------
// Field paths: a linked list on the stack, rendered only when an error is raised, so the hot
// path never allocates for them.

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Field(&'a str),
    Index(usize),
    Key(&'a str),
    /// Array items / map values in schema (not value) errors.
    Items,
    Values,
}

#[derive(Clone, Copy)]
struct Path<'a> {
    seg: Seg<'a>,
    parent: Option<&'a Path<'a>>,
}

impl<'a> Path<'a> {
    const ROOT: Path<'static> = Path {
        seg: Seg::Root,
        parent: None,
    };

    fn child(&'a self, seg: Seg<'a>) -> Path<'a> {
        Path {
            seg,
            parent: Some(self),
        }
    }

    fn field(&'a self, name: &'a str) -> Path<'a> {
        self.child(Seg::Field(name))
    }

    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(p) = cur {
            segs.push(p.seg);
            cur = p.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
                Seg::Key(k) => {
                    let _ = write!(out, "[{k:?}]");
                }
                Seg::Items => out.push_str("[]"),
                Seg::Values => out.push_str("{}"),
            }
        }
        if out.is_empty() {
            out.push_str("<record>");
        }
        out
    }
}

fn invalid(path: &Path<'_>, message: impl Into<String>) -> AvroError {
    AvroError::Invalid {
        path: path.render(),
        message: message.into(),
    }
}

fn mismatch(path: &Path<'_>, expected: impl Into<String>, found: impl Into<String>) -> AvroError {
    AvroError::TypeMismatch {
        path: path.render(),
        expected: expected.into(),
        found: found.into(),
    }
}

/// The Avro name of a value's kind, for error messages.
fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Long(_) => "long",
        Value::Float(_) => "float",
        Value::Double(_) => "double",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "string",
        Value::Fixed(..) => "fixed",
        Value::Enum(..) => "enum",
        Value::Union(..) => "union",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Record(_) => "record",
        Value::Date(_) => "date",
        Value::Decimal(_) => "decimal",
        Value::BigDecimal(_) => "big-decimal",
        Value::TimeMillis(_) => "time-millis",
        Value::TimeMicros(_) => "time-micros",
        Value::TimestampMillis(_) => "timestamp-millis",
        Value::TimestampMicros(_) => "timestamp-micros",
        Value::TimestampNanos(_) => "timestamp-nanos",
        Value::LocalTimestampMillis(_) => "local-timestamp-millis",
        Value::LocalTimestampMicros(_) => "local-timestamp-micros",
        Value::LocalTimestampNanos(_) => "local-timestamp-nanos",
        Value::Duration(_) => "duration",
        Value::Uuid(_) => "uuid",
    }
}

/// The Avro name of a schema, for error messages.
fn schema_name(s: &Schema) -> String {
    let name = match s {
        Schema::Null => "null",
        Schema::Boolean => "boolean",
        Schema::Int => "int",
        Schema::Long => "long",
        Schema::Float => "float",
        Schema::Double => "double",
        Schema::Bytes => "bytes",
        Schema::String => "string",
        Schema::Array(_) => "array",
        Schema::Map(_) => "map",
        Schema::Union(u) => {
            let names: Vec<String> = u.variants().iter().map(schema_name).collect();
            return format!("union [{}]", names.join(", "));
        }
        Schema::Record(r) => return format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => return format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => return format!("fixed({})", f.size),
        Schema::Decimal(d) => return format!("decimal({},{})", d.precision, d.scale),
        Schema::BigDecimal => "big-decimal",
        Schema::Uuid(_) => "uuid",
        Schema::Date => "date (int)",
        Schema::TimeMillis => "time-millis (int)",
        Schema::TimeMicros => "time-micros (long)",
        Schema::TimestampMillis => "timestamp-millis (long)",
        Schema::TimestampMicros => "timestamp-micros (long)",
        Schema::TimestampNanos => "timestamp-nanos (long)",
        Schema::LocalTimestampMillis => "local-timestamp-millis (long)",
        Schema::LocalTimestampMicros => "local-timestamp-micros (long)",
        Schema::LocalTimestampNanos => "local-timestamp-nanos (long)",
        Schema::Duration(_) => "duration",
        Schema::Ref { name } => return name.fullname(None),
    };
    name.to_owned()
}

/// Unions are transparent to Arrow: only the branch value matters.
fn strip_union(mut v: &Value) -> &Value {
    while let Value::Union(_, inner) = v {
        v = inner;
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Named-type resolution. `Schema::Ref` points at a type defined earlier in the same schema; the
// name table is built lazily because most schemas never reference a type twice.

struct Ctx<'s> {
    root: &'s Schema,
    names: OnceCell<HashMap<Name, &'s Schema>>,
}

impl<'s> Ctx<'s> {
    fn new(root: &'s Schema) -> Self {
        Ctx {
            root,
            names: OnceCell::new(),
        }
    }

    fn names(&self) -> &HashMap<Name, &'s Schema> {
        self.names.get_or_init(|| {
            let mut names = HashMap::new();
            collect_names(self.root, &mut names);
            names
        })
    }

    fn resolve(&self, schema: &'s Schema, path: &Path<'_>) -> Result<&'s Schema, AvroError> {
        match schema {
            Schema::Ref { name } => self.names().get(name).copied().ok_or_else(|| {
                invalid(
                    path,
                    format!("reference to unknown named type {}", name.fullname(None)),
                )
            }),
            other => Ok(other),
        }
    }
}

fn collect_names<'s>(schema: &'s Schema, names: &mut HashMap<Name, &'s Schema>) {
    let mut add = |name: &Name| {
        names.entry(name.clone()).or_insert(schema);
    };
    match schema {
        Schema::Record(r) => {
            add(&r.name);
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => add(&e.name),
        Schema::Fixed(f)
        | Schema::Duration(f)
        | Schema::Uuid(UuidSchema::Fixed(f))
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(f),
            ..
        }) => add(&f.name),
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => {
            for v in u.variants() {
                collect_names(v, names);
            }
        }
        _ => {}
    }
}

mod read;
mod schema;
mod write;

pub use read::AvroBatchBuilder;
pub use schema::{arrow_schema, avro_schema_json};
pub use write::row_to_value;

#[cfg(test)]
mod tests;
