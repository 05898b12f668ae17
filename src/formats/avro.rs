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

// ---------------------------------------------------------------------------------------------
// Avro schema → Arrow schema

/// Arrow schema for an Avro record schema (top level must be a record).
pub fn arrow_schema(schema: &Schema) -> Result<ArrowSchema, AvroError> {
    let ctx = Ctx::new(schema);
    let root = ctx.resolve(schema, &Path::ROOT)?;
    let Schema::Record(record) = root else {
        return Err(AvroError::NotARecord(schema_name(root)));
    };
    let fields = record_fields(record, &ctx, &Path::ROOT, &mut Vec::new())?;
    Ok(ArrowSchema::new(fields))
}

fn record_fields<'s>(
    record: &'s RecordSchema,
    ctx: &Ctx<'s>,
    path: &Path<'_>,
    open: &mut Vec<&'s Name>,
) -> Result<Fields, AvroError> {
    // A record nested in itself (linked lists, trees) has no finite Arrow type.
    if open.contains(&&record.name) {
        return Err(invalid(
            path,
            format!(
                "recursive type {} has no Arrow equivalent",
                record.name.fullname(None)
            ),
        ));
    }
    open.push(&record.name);
    let fields = record
        .fields
        .iter()
        .map(|f| {
            let (dt, nullable) = arrow_type(&f.schema, ctx, &path.field(&f.name), open)?;
            Ok(Field::new(&f.name, dt, nullable))
        })
        .collect::<Result<Vec<_>, AvroError>>()?;
    open.pop();
    Ok(fields.into())
}

fn arrow_type<'s>(
    schema: &'s Schema,
    ctx: &Ctx<'s>,
    path: &Path<'_>,
    open: &mut Vec<&'s Name>,
) -> Result<(DataType, bool), AvroError> {
    let schema = ctx.resolve(schema, path)?;
    let utc = || Some(Arc::<str>::from("UTC"));
    let dt = match schema {
        Schema::Null => return Ok((DataType::Null, true)),
        Schema::Union(u) => return union_type(u, ctx, path, open),
        Schema::Boolean => DataType::Boolean,
        Schema::Int => DataType::Int32,
        Schema::Long => DataType::Int64,
        Schema::Float => DataType::Float32,
        Schema::Double => DataType::Float64,
        Schema::Bytes => DataType::Binary,
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) | Schema::BigDecimal => DataType::Utf8,
        Schema::Fixed(f) => DataType::FixedSizeBinary(
            i32::try_from(f.size).map_err(|_| invalid(path, "fixed size exceeds i32"))?,
        ),
        Schema::Decimal(d) => decimal_type(d).ok_or_else(|| {
            invalid(
                path,
                format!(
                    "decimal({},{}) does not fit Arrow Decimal128 (precision 1..=38, scale <= precision)",
                    d.precision, d.scale
                ),
            )
        })?,
        Schema::Date => DataType::Date32,
        Schema::TimeMillis => DataType::Time32(TimeUnit::Millisecond),
        Schema::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
        Schema::TimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, utc()),
        Schema::TimestampMicros => DataType::Timestamp(TimeUnit::Microsecond, utc()),
        Schema::TimestampNanos => DataType::Timestamp(TimeUnit::Nanosecond, utc()),
        Schema::LocalTimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, None),
        Schema::LocalTimestampMicros => DataType::Timestamp(TimeUnit::Microsecond, None),
        Schema::LocalTimestampNanos => DataType::Timestamp(TimeUnit::Nanosecond, None),
        Schema::Duration(_) => DataType::Interval(IntervalUnit::MonthDayNano),
        Schema::Array(a) => {
            let (item, nullable) = arrow_type(&a.items, ctx, &path.child(Seg::Items), open)?;
            DataType::List(Arc::new(Field::new("item", item, nullable)))
        }
        Schema::Map(m) => {
            let (values, nullable) = arrow_type(&m.types, ctx, &path.child(Seg::Values), open)?;
            map_type(values, nullable)
        }
        Schema::Record(r) => DataType::Struct(record_fields(r, ctx, path, open)?),
        Schema::Ref { name } => {
            return Err(invalid(
                path,
                format!("unresolved reference {}", name.fullname(None)),
            ));
        }
    };
    Ok((dt, false))
}

fn union_type<'s>(
    union: &'s UnionSchema,
    ctx: &Ctx<'s>,
    path: &Path<'_>,
    open: &mut Vec<&'s Name>,
) -> Result<(DataType, bool), AvroError> {
    let variants = union.variants();
    let others: Vec<&Schema> = variants
        .iter()
        .filter(|s| !matches!(s, Schema::Null))
        .collect();
    let has_null = others.len() < variants.len();
    match others.as_slice() {
        [] => Ok((DataType::Null, true)),
        [only] => {
            let (dt, nullable) = arrow_type(only, ctx, path, open)?;
            Ok((dt, nullable || has_null))
        }
        _ => Err(invalid(
            path,
            format!(
                "unsupported {}: only [\"null\", T] unions map to an Arrow type",
                schema_name(&Schema::Union(union.clone()))
            ),
        )),
    }
}

fn decimal_type(d: &DecimalSchema) -> Option<DataType> {
    let precision = u8::try_from(d.precision)
        .ok()
        .filter(|p| (1..=38).contains(p))?;
    let scale = i8::try_from(d.scale)
        .ok()
        .filter(|s| *s as u8 <= precision)?;
    Some(DataType::Decimal128(precision, scale))
}

/// Arrow's standard map layout (as `MapBuilder` produces): `entries` of `keys`/`values`.
fn map_type(values: DataType, values_nullable: bool) -> DataType {
    let entries = Fields::from(vec![
        Field::new("keys", DataType::Utf8, false),
        Field::new("values", values, values_nullable),
    ]);
    DataType::Map(
        Arc::new(Field::new("entries", DataType::Struct(entries), false)),
        false,
    )
}

// ---------------------------------------------------------------------------------------------
// Avro values → Arrow columns

/// Accumulates decoded Avro record values into Arrow columns of `schema` (from
/// [`arrow_schema`]).
pub struct AvroBatchBuilder {
    schema: SchemaRef,
    columns: Vec<Node>,
    len: usize,
}

struct Node {
    nullable: bool,
    col: Col,
}

/// One column appender per Arrow type. Logical Avro types reuse the builder of their Arrow type,
/// so the tree is fixed by the Arrow schema alone.
enum Col {
    Null(NullBuilder),
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Date32(Date32Builder),
    Time32Ms(Time32MillisecondBuilder),
    Time64Us(Time64MicrosecondBuilder),
    TsMs(TimestampMillisecondBuilder),
    TsUs(TimestampMicrosecondBuilder),
    TsNs(TimestampNanosecondBuilder),
    Binary(BinaryBuilder),
    Utf8(StringBuilder),
    Fixed(FixedSizeBinaryBuilder, usize),
    Decimal(Decimal128Builder, u8, i8),
    Duration(IntervalMonthDayNanoBuilder),
    List(Box<ListCol>),
    Map(Box<MapCol>),
    Struct(StructCol),
    /// An Arrow type with no Avro counterpart: only nulls can be appended, so a schema that is
    /// not from `arrow_schema` fails per record with the field named instead of in `new`.
    Unsupported(DataType, usize),
}

struct ListCol {
    field: FieldRef,
    offsets: Offsets,
    nulls: NullBufferBuilder,
    item: Node,
}

struct MapCol {
    entries: FieldRef,
    entry_fields: Fields,
    ordered: bool,
    offsets: Offsets,
    nulls: NullBufferBuilder,
    keys: StringBuilder,
    values: Node,
}

struct StructCol {
    fields: Fields,
    children: Vec<Node>,
    nulls: NullBufferBuilder,
}

/// i32 list offsets; always starts with 0.
struct Offsets(Vec<i32>);

impl Offsets {
    fn new(capacity: usize) -> Self {
        let mut v = Vec::with_capacity(capacity + 1);
        v.push(0);
        Offsets(v)
    }

    fn last(&self) -> i32 {
        self.0[self.0.len() - 1]
    }

    fn end_after(&self, n: usize) -> Option<i32> {
        usize::try_from(self.last())
            .ok()
            .and_then(|last| last.checked_add(n))
            .and_then(|end| i32::try_from(end).ok())
    }

    fn finish(&mut self) -> OffsetBuffer<i32> {
        OffsetBuffer::new(std::mem::replace(&mut self.0, vec![0]).into())
    }
}

impl Node {
    fn new(field: &Field, capacity: usize) -> Node {
        Node {
            nullable: field.is_nullable(),
            col: Col::new(field.data_type(), capacity),
        }
    }
}

impl Col {
    fn new(dt: &DataType, cap: usize) -> Col {
        match dt {
            DataType::Null => Col::Null(NullBuilder::new()),
            DataType::Boolean => Col::Boolean(BooleanBuilder::with_capacity(cap)),
            DataType::Int32 => Col::Int32(Int32Builder::with_capacity(cap)),
            DataType::Int64 => Col::Int64(Int64Builder::with_capacity(cap)),
            DataType::Float32 => Col::Float32(Float32Builder::with_capacity(cap)),
            DataType::Float64 => Col::Float64(Float64Builder::with_capacity(cap)),
            DataType::Date32 => Col::Date32(Date32Builder::with_capacity(cap)),
            DataType::Time32(TimeUnit::Millisecond) => {
                Col::Time32Ms(Time32MillisecondBuilder::with_capacity(cap))
            }
            DataType::Time64(TimeUnit::Microsecond) => {
                Col::Time64Us(Time64MicrosecondBuilder::with_capacity(cap))
            }
            DataType::Timestamp(TimeUnit::Millisecond, tz) => Col::TsMs(
                TimestampMillisecondBuilder::with_capacity(cap).with_timezone_opt(tz.clone()),
            ),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Col::TsUs(
                TimestampMicrosecondBuilder::with_capacity(cap).with_timezone_opt(tz.clone()),
            ),
            DataType::Timestamp(TimeUnit::Nanosecond, tz) => Col::TsNs(
                TimestampNanosecondBuilder::with_capacity(cap).with_timezone_opt(tz.clone()),
            ),
            DataType::Binary => Col::Binary(BinaryBuilder::with_capacity(cap, cap * 16)),
            DataType::Utf8 => Col::Utf8(StringBuilder::with_capacity(cap, cap * 16)),
            DataType::FixedSizeBinary(n) if *n >= 0 => {
                Col::Fixed(FixedSizeBinaryBuilder::with_capacity(cap, *n), *n as usize)
            }
            DataType::Decimal128(p, s) => {
                match Decimal128Builder::with_capacity(cap).with_precision_and_scale(*p, *s) {
                    Ok(b) => Col::Decimal(b, *p, *s),
                    Err(_) => Col::Unsupported(dt.clone(), 0),
                }
            }
            DataType::Interval(IntervalUnit::MonthDayNano) => {
                Col::Duration(IntervalMonthDayNanoBuilder::with_capacity(cap))
            }
            DataType::List(item) => Col::List(Box::new(ListCol {
                field: item.clone(),
                offsets: Offsets::new(cap),
                nulls: NullBufferBuilder::new(cap),
                item: Node::new(item, cap),
            })),
            DataType::Map(entries, ordered) => match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 && kv[0].data_type() == &DataType::Utf8 => {
                    Col::Map(Box::new(MapCol {
                        entries: entries.clone(),
                        entry_fields: kv.clone(),
                        ordered: *ordered,
                        offsets: Offsets::new(cap),
                        nulls: NullBufferBuilder::new(cap),
                        keys: StringBuilder::with_capacity(cap, cap * 8),
                        values: Node::new(&kv[1], cap),
                    }))
                }
                _ => Col::Unsupported(dt.clone(), 0),
            },
            DataType::Struct(fields) => Col::Struct(StructCol {
                fields: fields.clone(),
                children: fields.iter().map(|f| Node::new(f, cap)).collect(),
                nulls: NullBufferBuilder::new(cap),
            }),
            other => Col::Unsupported(other.clone(), 0),
        }
    }

    /// The Avro type this column accepts, for error messages.
    fn expected(&self) -> String {
        let s = match self {
            Col::Null(_) => "null",
            Col::Boolean(_) => "boolean",
            Col::Int32(_) => "int",
            Col::Int64(_) => "long",
            Col::Float32(_) => "float",
            Col::Float64(_) => "double",
            Col::Date32(_) => "date (int)",
            Col::Time32Ms(_) => "time-millis (int)",
            Col::Time64Us(_) => "time-micros (long)",
            Col::TsMs(_) => "timestamp-millis (long)",
            Col::TsUs(_) => "timestamp-micros (long)",
            Col::TsNs(_) => "timestamp-nanos (long)",
            Col::Binary(_) => "bytes",
            Col::Utf8(_) => "string",
            Col::Fixed(_, n) => return format!("fixed({n})"),
            Col::Decimal(_, p, s) => return format!("decimal({p},{s})"),
            Col::Duration(_) => "duration",
            Col::List(_) => "array",
            Col::Map(_) => "map",
            Col::Struct(_) => "record",
            Col::Unsupported(dt, _) => return format!("a value for Arrow type {dt}"),
        };
        s.to_owned()
    }

    /// Appends a null here and, for nested columns, in every child, so lengths stay aligned
    /// (children of a null struct are masked by the struct's validity).
    fn append_null(&mut self) {
        match self {
            Col::Null(b) => b.append_null(),
            Col::Boolean(b) => b.append_null(),
            Col::Int32(b) => b.append_null(),
            Col::Int64(b) => b.append_null(),
            Col::Float32(b) => b.append_null(),
            Col::Float64(b) => b.append_null(),
            Col::Date32(b) => b.append_null(),
            Col::Time32Ms(b) => b.append_null(),
            Col::Time64Us(b) => b.append_null(),
            Col::TsMs(b) => b.append_null(),
            Col::TsUs(b) => b.append_null(),
            Col::TsNs(b) => b.append_null(),
            Col::Binary(b) => b.append_null(),
            Col::Utf8(b) => b.append_null(),
            Col::Fixed(b, _) => b.append_null(),
            Col::Decimal(b, ..) => b.append_null(),
            Col::Duration(b) => b.append_null(),
            Col::List(l) => {
                let last = l.offsets.last();
                l.offsets.0.push(last);
                l.nulls.append_null();
            }
            Col::Map(m) => {
                let last = m.offsets.last();
                m.offsets.0.push(last);
                m.nulls.append_null();
            }
            Col::Struct(s) => {
                s.nulls.append_null();
                for c in &mut s.children {
                    c.col.append_null();
                }
            }
            Col::Unsupported(_, n) => *n += 1,
        }
    }

    /// Builds the array and resets the column.
    fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Col::Null(b) => Arc::new(b.finish()),
            Col::Boolean(b) => Arc::new(b.finish()),
            Col::Int32(b) => Arc::new(b.finish()),
            Col::Int64(b) => Arc::new(b.finish()),
            Col::Float32(b) => Arc::new(b.finish()),
            Col::Float64(b) => Arc::new(b.finish()),
            Col::Date32(b) => Arc::new(b.finish()),
            Col::Time32Ms(b) => Arc::new(b.finish()),
            Col::Time64Us(b) => Arc::new(b.finish()),
            Col::TsMs(b) => Arc::new(b.finish()),
            Col::TsUs(b) => Arc::new(b.finish()),
            Col::TsNs(b) => Arc::new(b.finish()),
            Col::Binary(b) => Arc::new(b.finish()),
            Col::Utf8(b) => Arc::new(b.finish()),
            Col::Fixed(b, _) => Arc::new(b.finish()),
            Col::Decimal(b, ..) => Arc::new(b.finish()),
            Col::Duration(b) => Arc::new(b.finish()),
            Col::List(l) => {
                let values = l.item.col.finish()?;
                Arc::new(ListArray::try_new(
                    l.field.clone(),
                    l.offsets.finish(),
                    values,
                    l.nulls.finish(),
                )?)
            }
            Col::Map(m) => {
                let keys: ArrayRef = Arc::new(m.keys.finish());
                let values = m.values.col.finish()?;
                let entries =
                    StructArray::try_new(m.entry_fields.clone(), vec![keys, values], None)?;
                Arc::new(MapArray::try_new(
                    m.entries.clone(),
                    m.offsets.finish(),
                    entries,
                    m.nulls.finish(),
                    m.ordered,
                )?)
            }
            Col::Struct(s) => {
                let len = s.nulls.len();
                let nulls = s.nulls.finish();
                if s.children.is_empty() {
                    Arc::new(StructArray::new_empty_fields(len, nulls))
                } else {
                    let arrays = s
                        .children
                        .iter_mut()
                        .map(|c| c.col.finish())
                        .collect::<Result<Vec<_>, _>>()?;
                    Arc::new(StructArray::try_new_with_length(
                        s.fields.clone(),
                        arrays,
                        nulls,
                        len,
                    )?)
                }
            }
            Col::Unsupported(dt, n) => new_null_array(dt, std::mem::take(n)),
        })
    }
}

impl AvroBatchBuilder {
    pub fn new(schema: SchemaRef, capacity: usize) -> Self {
        let columns = schema
            .fields()
            .iter()
            .map(|f| Node::new(f, capacity))
            .collect();
        AvroBatchBuilder {
            schema,
            columns,
            len: 0,
        }
    }

    /// Appends one record. On error nothing of the record stays appended (all columns keep
    /// equal length).
    pub fn append(&mut self, value: &Value) -> Result<(), AvroError> {
        let Value::Record(fields) = strip_union(value) else {
            return Err(AvroError::NotARecord(value_kind(strip_union(value)).into()));
        };
        // Arrow builders cannot be truncated, so check the whole record first (same walk,
        // no writes) and only then append; the second pass cannot fail on the value.
        let top = self.schema.fields();
        visit_record::<false>(top, &mut self.columns, fields, &Path::ROOT)?;
        visit_record::<true>(top, &mut self.columns, fields, &Path::ROOT)?;
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the batch and resets.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns = self
            .columns
            .iter_mut()
            .map(|c| c.col.finish())
            .collect::<Result<Vec<_>, _>>()?;
        let rows = std::mem::take(&mut self.len);
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
    }
}

/// Matches record values to columns by name (positional first: decoded records come in schema
/// order). Fields absent from the value are null if the column allows it; extra fields are
/// ignored so that newer writers do not break older readers.
fn visit_record<const WRITE: bool>(
    fields: &Fields,
    children: &mut [Node],
    values: &[(String, Value)],
    path: &Path<'_>,
) -> Result<(), AvroError> {
    for (i, (field, child)) in fields.iter().zip(children.iter_mut()).enumerate() {
        let name = field.name().as_str();
        let found = match values.get(i) {
            Some((n, v)) if n == name => Some(v),
            _ => values.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        };
        let path = path.field(name);
        match found {
            Some(v) => visit::<WRITE>(child, v, &path)?,
            None if child.nullable => {
                if WRITE {
                    child.col.append_null();
                }
            }
            None => return Err(invalid(&path, "missing from the record and not nullable")),
        }
    }
    Ok(())
}

/// With `WRITE = false` only checks that `value` fits the column; with `WRITE = true` also
/// appends. One function for both keeps the check and the append from drifting apart.
fn visit<const WRITE: bool>(
    node: &mut Node,
    value: &Value,
    path: &Path<'_>,
) -> Result<(), AvroError> {
    let value = strip_union(value);
    if matches!(value, Value::Null) {
        if node.nullable || matches!(node.col, Col::Null(_)) {
            if WRITE {
                node.col.append_null();
            }
            return Ok(());
        }
        return Err(mismatch(path, node.col.expected(), "null"));
    }
    macro_rules! put {
        ($b:expr, $v:expr) => {{
            if WRITE {
                $b.append_value($v);
            }
            Ok(())
        }};
    }
    match (&mut node.col, value) {
        (Col::Boolean(b), Value::Boolean(x)) => put!(b, *x),
        (Col::Int32(b), Value::Int(x)) => put!(b, *x),
        (Col::Int64(b), Value::Long(x)) => put!(b, *x),
        (Col::Int64(b), Value::Int(x)) => put!(b, i64::from(*x)),
        (Col::Float32(b), Value::Float(x)) => put!(b, *x),
        (Col::Float32(b), Value::Int(x)) => put!(b, *x as f32),
        (Col::Float32(b), Value::Long(x)) => put!(b, *x as f32),
        (Col::Float64(b), Value::Double(x)) => put!(b, *x),
        (Col::Float64(b), Value::Float(x)) => put!(b, f64::from(*x)),
        (Col::Float64(b), Value::Int(x)) => put!(b, f64::from(*x)),
        (Col::Float64(b), Value::Long(x)) => put!(b, *x as f64),
        (Col::Date32(b), Value::Date(x) | Value::Int(x)) => put!(b, *x),
        (Col::Time32Ms(b), Value::TimeMillis(x) | Value::Int(x)) => put!(b, *x),
        (Col::Time64Us(b), Value::TimeMicros(x) | Value::Long(x)) => put!(b, *x),
        (
            Col::TsMs(b),
            Value::TimestampMillis(x) | Value::LocalTimestampMillis(x) | Value::Long(x),
        ) => put!(b, *x),
        (
            Col::TsUs(b),
            Value::TimestampMicros(x) | Value::LocalTimestampMicros(x) | Value::Long(x),
        ) => put!(b, *x),
        (
            Col::TsNs(b),
            Value::TimestampNanos(x) | Value::LocalTimestampNanos(x) | Value::Long(x),
        ) => put!(b, *x),
        (Col::Binary(b), Value::Bytes(x) | Value::Fixed(_, x)) => put!(b, x),
        (Col::Binary(b), Value::String(s)) => put!(b, s.as_bytes()),
        (Col::Utf8(b), Value::String(s) | Value::Enum(_, s)) => put!(b, s),
        (Col::Utf8(b), Value::Uuid(u)) => {
            let mut buf = Uuid::encode_buffer();
            put!(b, u.hyphenated().encode_lower(&mut buf))
        }
        (Col::Utf8(b), Value::BigDecimal(d)) => put!(b, d.to_string()),
        (Col::Utf8(b), Value::Bytes(x)) => {
            let s = std::str::from_utf8(x).map_err(|_| invalid(path, "bytes are not UTF-8"))?;
            put!(b, s)
        }
        (Col::Fixed(b, n), Value::Fixed(_, x) | Value::Bytes(x)) if x.len() == *n => {
            if WRITE {
                b.append_value(x)?;
            }
            Ok(())
        }
        (Col::Fixed(b, 16), Value::Uuid(u)) => {
            if WRITE {
                b.append_value(u.as_bytes())?;
            }
            Ok(())
        }
        (Col::Decimal(b, p, _), Value::Decimal(d)) => {
            let bytes = Vec::<u8>::try_from(d).map_err(|e| invalid(path, e.to_string()))?;
            let x = decimal_from_be(&bytes, *p, path)?;
            put!(b, x)
        }
        (Col::Decimal(b, p, _), Value::Bytes(x) | Value::Fixed(_, x)) => {
            let x = decimal_from_be(x, *p, path)?;
            put!(b, x)
        }
        (Col::Duration(b), Value::Duration(d)) => {
            let months = i32::try_from(u32::from(d.months()));
            let days = i32::try_from(u32::from(d.days()));
            let (Ok(months), Ok(days)) = (months, days) else {
                return Err(invalid(path, "duration months/days exceed i32"));
            };
            let nanos = i64::from(u32::from(d.millis())) * 1_000_000;
            put!(b, IntervalMonthDayNano::new(months, days, nanos))
        }
        (Col::List(l), Value::Array(items)) => {
            let end = l
                .offsets
                .end_after(items.len())
                .ok_or_else(|| invalid(path, "list has too many items for one batch"))?;
            for (i, item) in items.iter().enumerate() {
                visit::<WRITE>(&mut l.item, item, &path.child(Seg::Index(i)))?;
            }
            if WRITE {
                l.offsets.0.push(end);
                l.nulls.append_non_null();
            }
            Ok(())
        }
        (Col::Map(m), Value::Map(entries)) => {
            let end = m
                .offsets
                .end_after(entries.len())
                .ok_or_else(|| invalid(path, "map has too many entries for one batch"))?;
            for (k, v) in entries {
                visit::<WRITE>(&mut m.values, v, &path.child(Seg::Key(k)))?;
                if WRITE {
                    m.keys.append_value(k);
                }
            }
            if WRITE {
                m.offsets.0.push(end);
                m.nulls.append_non_null();
            }
            Ok(())
        }
        (Col::Struct(s), Value::Record(values)) => {
            visit_record::<WRITE>(&s.fields, &mut s.children, values, path)?;
            if WRITE {
                s.nulls.append_non_null();
            }
            Ok(())
        }
        (Col::Unsupported(dt, _), _) => Err(invalid(
            path,
            format!("Arrow type {dt} has no Avro mapping"),
        )),
        (col, v) => Err(mismatch(path, col.expected(), value_kind(v))),
    }
}

/// Big-endian two's complement (Avro's decimal encoding) to i128, checked against `precision`.
fn decimal_from_be(bytes: &[u8], precision: u8, path: &Path<'_>) -> Result<i128, AvroError> {
    let value =
        be_to_i128(bytes).ok_or_else(|| invalid(path, "decimal value does not fit in 128 bits"))?;
    if !Decimal128Type::is_valid_decimal_precision(value, precision) {
        return Err(invalid(
            path,
            format!("decimal unscaled value {value} exceeds precision {precision}"),
        ));
    }
    Ok(value)
}

fn be_to_i128(bytes: &[u8]) -> Option<i128> {
    let Some(&first) = bytes.first() else {
        return Some(0);
    };
    let negative = first & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let tail = if bytes.len() > 16 {
        // Longer encodings are fine as long as the extra leading bytes are sign extension.
        let (head, tail) = bytes.split_at(bytes.len() - 16);
        if head.iter().any(|&b| b != fill) || (tail[0] & 0x80 != 0) != negative {
            return None;
        }
        tail
    } else {
        bytes
    };
    let mut buf = [fill; 16];
    buf[16 - tail.len()..].copy_from_slice(tail);
    Some(i128::from_be_bytes(buf))
}

/// The shortest big-endian two's complement encoding of `v`.
fn i128_to_be(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// Avro decimal bytes for `v`, sign-extended to the length `precision` needs: apache-avro 0.22
/// refuses, when resolving against a reader schema, decimals encoded in fewer bytes than that
/// (minimal encodings fail), while longer sign-extended encodings are valid for every reader.
fn decimal_bytes(v: i128, precision: usize) -> Vec<u8> {
    // The same bound as apache-avro's `max_prec_for_len`.
    let max_precision = |len: usize| (2f64.powi(8 * len as i32 - 1) - 1.0).log10().floor();
    let mut len = 1;
    while max_precision(len) < precision as f64 {
        len += 1;
    }
    let minimal = i128_to_be(v);
    if minimal.len() >= len {
        return minimal;
    }
    let fill = if v < 0 { 0xff } else { 0x00 };
    let mut out = vec![fill; len - minimal.len()];
    out.extend_from_slice(&minimal);
    out
}

// ---------------------------------------------------------------------------------------------
// Arrow row → Avro value

/// One row of `batch` as an Avro record value conforming to `schema` (for producing). Columns
/// are matched by field name; a field missing from the batch gets the Avro field default or null
/// if the field is a nullable union, else an error.
pub fn row_to_value(batch: &RecordBatch, row: usize, schema: &Schema) -> Result<Value, AvroError> {
    if row >= batch.num_rows() {
        return Err(AvroError::RowOutOfBounds {
            row,
            rows: batch.num_rows(),
        });
    }
    let ctx = Ctx::new(schema);
    let root = ctx.resolve(schema, &Path::ROOT)?;
    let Schema::Record(record) = root else {
        return Err(AvroError::NotARecord(schema_name(root)));
    };
    record_value(
        record,
        |name| batch.column_by_name(name),
        row,
        &ctx,
        &Path::ROOT,
    )
}

fn record_value<'b, 's>(
    record: &'s RecordSchema,
    column: impl Fn(&str) -> Option<&'b ArrayRef>,
    row: usize,
    ctx: &Ctx<'s>,
    path: &Path<'_>,
) -> Result<Value, AvroError> {
    let mut out = Vec::with_capacity(record.fields.len());
    for f in &record.fields {
        let path = path.field(&f.name);
        let value = match column(&f.name) {
            Some(array) => array_value(array.as_ref(), row, &f.schema, ctx, &path)?,
            None => missing_field(f, ctx, &path)?,
        };
        out.push((f.name.clone(), value));
    }
    Ok(Value::Record(out))
}

fn missing_field(f: &RecordField, ctx: &Ctx<'_>, path: &Path<'_>) -> Result<Value, AvroError> {
    if let Some(default) = &f.default {
        return Value::try_from(default.clone())
            .and_then(|v| v.resolve_with_names(&f.schema, ctx.names()))
            .map_err(|e| invalid(path, format!("default does not fit the field type: {e}")));
    }
    if let Schema::Union(u) = &f.schema
        && let Some(i) = u.variants().iter().position(|s| matches!(s, Schema::Null))
    {
        return Ok(Value::Union(i as u32, Box::new(Value::Null)));
    }
    Err(invalid(
        path,
        "not in the batch, and the Avro field has no default and is not nullable",
    ))
}

/// `Array::is_null` looks at the validity buffer only, which a `NullArray` does not have.
fn is_null_at(array: &dyn Array, row: usize) -> bool {
    matches!(array.data_type(), DataType::Null) || array.is_null(row)
}

fn union_value<'s>(
    array: &dyn Array,
    row: usize,
    union: &'s UnionSchema,
    ctx: &Ctx<'s>,
    path: &Path<'_>,
) -> Result<Value, AvroError> {
    let variants = union.variants();
    if is_null_at(array, row) {
        return match variants.iter().position(|s| matches!(s, Schema::Null)) {
            Some(i) => Ok(Value::Union(i as u32, Box::new(Value::Null))),
            None => Err(invalid(
                path,
                format!(
                    "null value, but {} has no null branch",
                    schema_name(&Schema::Union(union.clone()))
                ),
            )),
        };
    }
    // Nullable unions have one candidate; wider unions take the first branch the column
    // converts to, reporting the first branch's error if none does.
    let mut first_err = None;
    for (i, variant) in variants.iter().enumerate() {
        if matches!(variant, Schema::Null) {
            continue;
        }
        match array_value(array, row, variant, ctx, path) {
            Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| invalid(path, "non-null value for a union of only null")))
}

fn array_value<'s>(
    array: &dyn Array,
    row: usize,
    schema: &'s Schema,
    ctx: &Ctx<'s>,
    path: &Path<'_>,
) -> Result<Value, AvroError> {
    let schema = ctx.resolve(schema, path)?;
    if let Schema::Union(u) = schema {
        return union_value(array, row, u, ctx, path);
    }
    if is_null_at(array, row) {
        return match schema {
            Schema::Null => Ok(Value::Null),
            _ => Err(invalid(
                path,
                format!(
                    "null value, but Avro type {} is not nullable",
                    schema_name(schema)
                ),
            )),
        };
    }
    let wrong = || {
        mismatch(
            path,
            schema_name(schema),
            format!("Arrow {}", array.data_type()),
        )
    };
    let range =
        |v: i128, what: &str| invalid(path, format!("value {v} out of range for Avro {what}"));
    let value = match schema {
        Schema::Boolean => Value::Boolean(array.as_boolean_opt().ok_or_else(wrong)?.value(row)),
        Schema::Int => {
            let v = int_at(array, row).ok_or_else(wrong)?;
            Value::Int(i32::try_from(v).map_err(|_| range(v, "int"))?)
        }
        Schema::Long => {
            let v = int_at(array, row).ok_or_else(wrong)?;
            Value::Long(i64::try_from(v).map_err(|_| range(v, "long"))?)
        }
        Schema::Float => Value::Float(float_at(array, row).ok_or_else(wrong)? as f32),
        Schema::Double => Value::Double(float_at(array, row).ok_or_else(wrong)?),
        Schema::Bytes => {
            let b = binary_at(array, row)
                .or_else(|| str_at(array, row).map(str::as_bytes))
                .ok_or_else(wrong)?;
            Value::Bytes(b.to_vec())
        }
        Schema::String => Value::String(str_at(array, row).ok_or_else(wrong)?.to_owned()),
        Schema::Enum(e) => enum_value(str_at(array, row).ok_or_else(wrong)?, e, path)?,
        Schema::Fixed(f) => {
            let b = binary_at(array, row).ok_or_else(wrong)?;
            if b.len() != f.size {
                return Err(invalid(
                    path,
                    format!("{} bytes do not fit fixed({})", b.len(), f.size),
                ));
            }
            Value::Fixed(f.size, b.to_vec())
        }
        Schema::Decimal(d) => {
            let (v, scale) = decimal_at(array, row)
                .or_else(|| int_at(array, row).map(|v| (v, 0)))
                .ok_or_else(wrong)?;
            let v = rescale_decimal(v, scale, d, path)?;
            Value::Decimal(Decimal::from(decimal_bytes(v, d.precision)))
        }
        Schema::BigDecimal => {
            let text = match (str_at(array, row), decimal_at(array, row)) {
                (Some(s), _) => s.to_owned(),
                (None, Some((v, scale))) => format!("{v}e{}", -i32::from(scale)),
                (None, None) => return Err(wrong()),
            };
            Value::BigDecimal(
                text.parse()
                    .map_err(|_| invalid(path, format!("{text:?} is not a decimal number")))?,
            )
        }
        Schema::Uuid(_) => {
            let uuid = match (str_at(array, row), binary_at(array, row)) {
                (Some(s), _) => Uuid::parse_str(s).ok(),
                (None, Some(b)) => Uuid::from_slice(b).ok(),
                (None, None) => return Err(wrong()),
            };
            Value::Uuid(uuid.ok_or_else(|| invalid(path, "value is not a UUID"))?)
        }
        Schema::Date => Value::Date(match array.data_type() {
            DataType::Date32 => prim::<Date32Type>(array, row),
            DataType::Date64 => {
                let days = prim::<Date64Type>(array, row).div_euclid(86_400_000);
                i32::try_from(days).map_err(|_| range(days.into(), "date"))?
            }
            _ => return Err(wrong()),
        }),
        Schema::TimeMillis => {
            let v = time_at(array, row, TimeUnit::Millisecond).ok_or_else(wrong)?;
            Value::TimeMillis(i32::try_from(v).map_err(|_| range(v.into(), "time-millis"))?)
        }
        Schema::TimeMicros => {
            Value::TimeMicros(time_at(array, row, TimeUnit::Microsecond).ok_or_else(wrong)?)
        }
        Schema::TimestampMillis | Schema::LocalTimestampMillis => {
            let v = timestamp_at(array, row, TimeUnit::Millisecond).ok_or_else(wrong)?;
            if matches!(schema, Schema::TimestampMillis) {
                Value::TimestampMillis(v)
            } else {
                Value::LocalTimestampMillis(v)
            }
        }
        Schema::TimestampMicros | Schema::LocalTimestampMicros => {
            let v = timestamp_at(array, row, TimeUnit::Microsecond).ok_or_else(wrong)?;
            if matches!(schema, Schema::TimestampMicros) {
                Value::TimestampMicros(v)
            } else {
                Value::LocalTimestampMicros(v)
            }
        }
        Schema::TimestampNanos | Schema::LocalTimestampNanos => {
            let v = timestamp_at(array, row, TimeUnit::Nanosecond).ok_or_else(wrong)?;
            if matches!(schema, Schema::TimestampNanos) {
                Value::TimestampNanos(v)
            } else {
                Value::LocalTimestampNanos(v)
            }
        }
        Schema::Duration(_) => {
            let DataType::Interval(IntervalUnit::MonthDayNano) = array.data_type() else {
                return Err(wrong());
            };
            let iv = prim::<IntervalMonthDayNanoType>(array, row);
            let parts = (
                u32::try_from(iv.months),
                u32::try_from(iv.days),
                u32::try_from(iv.nanoseconds / 1_000_000),
            );
            let (Ok(months), Ok(days), Ok(millis)) = parts else {
                return Err(invalid(
                    path,
                    "interval does not fit an Avro duration (non-negative u32 months, days, millis)",
                ));
            };
            Value::Duration(Duration::new(
                Months::new(months),
                Days::new(days),
                Millis::new(millis),
            ))
        }
        Schema::Array(a) => {
            let (values, start, end) = list_at(array, row).ok_or_else(wrong)?;
            let items = (start..end)
                .map(|j| {
                    array_value(
                        values.as_ref(),
                        j,
                        &a.items,
                        ctx,
                        &path.child(Seg::Index(j - start)),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Value::Array(items)
        }
        Schema::Map(m) => {
            let map = array.as_map_opt().ok_or_else(wrong)?;
            let offsets = map.value_offsets();
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            let (keys, values) = (map.keys(), map.values());
            let mut out = HashMap::with_capacity(end - start);
            for j in start..end {
                let key = str_at(keys.as_ref(), j).ok_or_else(|| {
                    mismatch(
                        path,
                        "string map keys",
                        format!("Arrow {}", keys.data_type()),
                    )
                })?;
                let value = array_value(
                    values.as_ref(),
                    j,
                    &m.types,
                    ctx,
                    &path.child(Seg::Key(key)),
                )?;
                out.insert(key.to_owned(), value);
            }
            Value::Map(out)
        }
        Schema::Record(r) => {
            let s = array.as_struct_opt().ok_or_else(wrong)?;
            record_value(r, |name| s.column_by_name(name), row, ctx, path)?
        }
        Schema::Null | Schema::Union(_) | Schema::Ref { .. } => return Err(wrong()),
    };
    Ok(value)
}

fn enum_value(symbol: &str, e: &EnumSchema, path: &Path<'_>) -> Result<Value, AvroError> {
    let position = |s: &str| e.symbols.iter().position(|x| x == s);
    if let Some(i) = position(symbol) {
        return Ok(Value::Enum(i as u32, symbol.to_owned()));
    }
    // Like a reader, fall back to the enum's declared default for unknown symbols.
    if let Some(default) = &e.default
        && let Some(i) = position(default)
    {
        return Ok(Value::Enum(i as u32, default.clone()));
    }
    Err(invalid(
        path,
        format!(
            "{symbol:?} is not a symbol of enum {}",
            e.name.fullname(None)
        ),
    ))
}

fn rescale_decimal(
    v: i128,
    from_scale: i8,
    d: &DecimalSchema,
    path: &Path<'_>,
) -> Result<i128, AvroError> {
    let to_scale = i64::try_from(d.scale).unwrap_or(i64::MAX);
    let diff = to_scale - i64::from(from_scale);
    let factor = u32::try_from(diff.unsigned_abs())
        .ok()
        .and_then(|e| 10i128.checked_pow(e));
    let scaled = match factor {
        Some(f) if diff >= 0 => v.checked_mul(f),
        // Dropping digits would change the value: refuse rather than round.
        Some(f) if v % f == 0 => Some(v / f),
        _ => None,
    };
    let exceeds = |v: i128| {
        d.precision <= 38 && !Decimal128Type::is_valid_decimal_precision(v, d.precision as u8)
    };
    match scaled {
        Some(v) if !exceeds(v) => Ok(v),
        _ => Err(invalid(
            path,
            format!(
                "value does not fit decimal({},{}) exactly",
                d.precision, d.scale
            ),
        )),
    }
}

fn prim<T: ArrowPrimitiveType>(array: &dyn Array, row: usize) -> T::Native {
    array.as_primitive::<T>().value(row)
}

fn int_at(a: &dyn Array, row: usize) -> Option<i128> {
    Some(match a.data_type() {
        DataType::Int8 => prim::<Int8Type>(a, row).into(),
        DataType::Int16 => prim::<Int16Type>(a, row).into(),
        DataType::Int32 => prim::<Int32Type>(a, row).into(),
        DataType::Int64 => prim::<Int64Type>(a, row).into(),
        DataType::UInt8 => prim::<UInt8Type>(a, row).into(),
        DataType::UInt16 => prim::<UInt16Type>(a, row).into(),
        DataType::UInt32 => prim::<UInt32Type>(a, row).into(),
        DataType::UInt64 => prim::<UInt64Type>(a, row).into(),
        _ => return None,
    })
}

fn float_at(a: &dyn Array, row: usize) -> Option<f64> {
    match a.data_type() {
        DataType::Float16 => Some(prim::<Float16Type>(a, row).to_f64()),
        DataType::Float32 => Some(prim::<Float32Type>(a, row).into()),
        DataType::Float64 => Some(prim::<Float64Type>(a, row)),
        _ => int_at(a, row).map(|v| v as f64),
    }
}

fn str_at(a: &dyn Array, row: usize) -> Option<&str> {
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(row)),
        DataType::Utf8View => Some(a.as_string_view().value(row)),
        _ => None,
    }
}

fn binary_at(a: &dyn Array, row: usize) -> Option<&[u8]> {
    match a.data_type() {
        DataType::Binary => Some(a.as_binary::<i32>().value(row)),
        DataType::LargeBinary => Some(a.as_binary::<i64>().value(row)),
        DataType::BinaryView => Some(a.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => Some(a.as_fixed_size_binary().value(row)),
        _ => None,
    }
}

fn decimal_at(a: &dyn Array, row: usize) -> Option<(i128, i8)> {
    match a.data_type() {
        DataType::Decimal32(_, s) => Some((prim::<Decimal32Type>(a, row).into(), *s)),
        DataType::Decimal64(_, s) => Some((prim::<Decimal64Type>(a, row).into(), *s)),
        DataType::Decimal128(_, s) => Some((prim::<Decimal128Type>(a, row), *s)),
        _ => None,
    }
}

fn unit_nanos(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// Converts between time units; coarser targets floor (like Arrow's casts do for negatives).
fn convert_unit(v: i64, from: TimeUnit, to: TimeUnit) -> Option<i64> {
    let (f, t) = (unit_nanos(from), unit_nanos(to));
    if f >= t {
        v.checked_mul(f / t)
    } else {
        Some(v.div_euclid(t / f))
    }
}

fn time_at(a: &dyn Array, row: usize, to: TimeUnit) -> Option<i64> {
    let (v, unit) = match a.data_type() {
        DataType::Time32(TimeUnit::Second) => {
            (prim::<Time32SecondType>(a, row).into(), TimeUnit::Second)
        }
        DataType::Time32(TimeUnit::Millisecond) => (
            prim::<Time32MillisecondType>(a, row).into(),
            TimeUnit::Millisecond,
        ),
        DataType::Time64(TimeUnit::Microsecond) => {
            (prim::<Time64MicrosecondType>(a, row), TimeUnit::Microsecond)
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            (prim::<Time64NanosecondType>(a, row), TimeUnit::Nanosecond)
        }
        _ => return None,
    };
    convert_unit(v, unit, to)
}

fn timestamp_at(a: &dyn Array, row: usize, to: TimeUnit) -> Option<i64> {
    let (v, unit) = match a.data_type() {
        DataType::Timestamp(unit, _) => {
            let v = match unit {
                TimeUnit::Second => prim::<TimestampSecondType>(a, row),
                TimeUnit::Millisecond => prim::<TimestampMillisecondType>(a, row),
                TimeUnit::Microsecond => prim::<TimestampMicrosecondType>(a, row),
                TimeUnit::Nanosecond => prim::<TimestampNanosecondType>(a, row),
            };
            (v, *unit)
        }
        DataType::Date32 => (
            i64::from(prim::<Date32Type>(a, row)) * 86_400,
            TimeUnit::Second,
        ),
        DataType::Date64 => (prim::<Date64Type>(a, row), TimeUnit::Millisecond),
        _ => return None,
    };
    convert_unit(v, unit, to)
}

/// The child values and the item range of list row `row`.
fn list_at(a: &dyn Array, row: usize) -> Option<(ArrayRef, usize, usize)> {
    match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let o = l.value_offsets();
            Some((l.values().clone(), o[row] as usize, o[row + 1] as usize))
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let o = l.value_offsets();
            Some((l.values().clone(), o[row] as usize, o[row + 1] as usize))
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let n = *n as usize;
            Some((l.values().clone(), row * n, row * n + n))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Arrow schema → Avro schema JSON

/// An Avro record schema (JSON text) for an Arrow schema, for sinks that have no declared
/// schema: nullable fields become `["null", T]` with default null. Columns whose name starts
/// with '_' are skipped.
pub fn avro_schema_json(
    schema: &ArrowSchema,
    name: &str,
    namespace: Option<&str>,
) -> Result<String, AvroError> {
    let fields = schema
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with('_'))
        .map(|f| field_json(f, name, &Path::ROOT))
        .collect::<Result<Vec<_>, _>>()?;
    let mut record = serde_json::Map::new();
    record.insert("type".into(), json!("record"));
    record.insert("name".into(), json!(name));
    if let Some(ns) = namespace {
        record.insert("namespace".into(), json!(ns));
    }
    record.insert("fields".into(), Json::Array(fields));
    let text = Json::Object(record).to_string();
    // Parse it once so a bad record name or namespace fails here, not in the producer.
    Schema::parse_str(&text)?;
    Ok(text)
}

fn valid_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `scope` is the enclosing named type; nested named types are called `<scope>_<field>` so
/// that names stay unique within the schema.
fn field_json(f: &Field, scope: &str, parent: &Path<'_>) -> Result<Json, AvroError> {
    let path = parent.field(f.name());
    if !valid_avro_name(f.name()) {
        return Err(invalid(
            &path,
            "not a valid Avro name ([A-Za-z_][A-Za-z0-9_]*)",
        ));
    }
    let ty = type_json(f.data_type(), &format!("{scope}_{}", f.name()), &path)?;
    Ok(if f.is_nullable() && ty != json!("null") {
        json!({"name": f.name(), "type": ["null", ty], "default": null})
    } else {
        json!({"name": f.name(), "type": ty})
    })
}

fn nullable_json(ty: Json, nullable: bool) -> Json {
    if nullable && ty != json!("null") {
        json!(["null", ty])
    } else {
        ty
    }
}

fn type_json(dt: &DataType, type_name: &str, path: &Path<'_>) -> Result<Json, AvroError> {
    let logical = |base: &str, logical: &str| json!({"type": base, "logicalType": logical});
    let decimal = |p: u8, s: i8| {
        if s < 0 {
            Err(invalid(
                path,
                format!("negative decimal scale {s} has no Avro equivalent"),
            ))
        } else {
            Ok(json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s}))
        }
    };
    Ok(match dt {
        DataType::Null => json!("null"),
        DataType::Boolean => json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            json!("int")
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => json!("long"),
        DataType::Float16 | DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!("string"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => json!("bytes"),
        DataType::FixedSizeBinary(n) => json!({"type": "fixed", "name": type_name, "size": n}),
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            decimal(*p, *s)?
        }
        DataType::Date32 | DataType::Date64 => logical("int", "date"),
        DataType::Time32(_) => logical("int", "time-millis"),
        DataType::Time64(_) => logical("long", "time-micros"),
        DataType::Timestamp(unit, tz) => {
            let suffix = match unit {
                TimeUnit::Second | TimeUnit::Millisecond => "millis",
                TimeUnit::Microsecond => "micros",
                TimeUnit::Nanosecond => "nanos",
            };
            let prefix = if tz.is_some() { "" } else { "local-" };
            logical("long", &format!("{prefix}timestamp-{suffix}"))
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            json!({"type": "fixed", "name": type_name, "size": 12, "logicalType": "duration"})
        }
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            let items = type_json(
                item.data_type(),
                &format!("{type_name}_item"),
                &path.child(Seg::Items),
            )?;
            json!({"type": "array", "items": nullable_json(items, item.is_nullable())})
        }
        DataType::Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(invalid(path, "map entries are not a struct"));
            };
            if kv.len() != 2
                || !matches!(
                    kv[0].data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
            {
                return Err(invalid(path, "Avro maps need string keys"));
            }
            let values = type_json(
                kv[1].data_type(),
                &format!("{type_name}_value"),
                &path.child(Seg::Values),
            )?;
            json!({"type": "map", "values": nullable_json(values, kv[1].is_nullable())})
        }
        DataType::Struct(fields) => {
            let fields = fields
                .iter()
                .map(|f| field_json(f, type_name, path))
                .collect::<Result<Vec<_>, _>>()?;
            json!({"type": "record", "name": type_name, "fields": fields})
        }
        other => {
            return Err(invalid(
                path,
                format!("Arrow type {other} has no Avro mapping"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use arrow::array::{
        Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, StringArray,
        TimestampMicrosecondArray, TimestampMillisecondArray,
    };
    use std::collections::BTreeMap;

    const FACILITY_EVENT: &str = r#"{
      "type": "record", "name": "FacilityEvent", "namespace": "org.plexus.test",
      "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "facility", "type": "string"},
        {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "patient_count", "type": "int"},
        {"name": "score", "type": ["null", "double"], "default": null},
        {"name": "status", "type": {"type": "enum", "name": "Status",
                                    "symbols": ["ADMITTED", "DISCHARGED", "TRANSFERRED"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "counters", "type": {"type": "map", "values": "long"}},
        {"name": "location", "type": {"type": "record", "name": "Location", "fields": [
            {"name": "ward", "type": "string"},
            {"name": "bed", "type": ["null", "int"], "default": null}]}},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                                    "precision": 9, "scale": 2}},
        {"name": "service_date", "type": {"type": "int", "logicalType": "date"}}
      ]
    }"#;

    /// `to_avro_datum` / `from_avro_datum` without their 0.22 deprecation.
    fn encode(schema: &Schema, value: Value) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    fn decode(writer: &Schema, reader: Option<&Schema>, datum: &[u8]) -> Value {
        GenericDatumReader::builder(writer)
            .maybe_reader_schema(reader)
            .build()
            .unwrap()
            .read_value(&mut &datum[..])
            .unwrap()
    }

    fn facility_schema() -> Schema {
        Schema::parse_str(FACILITY_EVENT).unwrap()
    }

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    /// Row 0 has every optional value set; row 1 has nulls and empty collections.
    fn event(i: usize) -> Value {
        let full = i.is_multiple_of(2);
        let score = if full {
            Value::Union(1, Box::new(Value::Double(0.75)))
        } else {
            Value::Union(0, Box::new(Value::Null))
        };
        let bed = if full {
            Value::Union(1, Box::new(Value::Int(12)))
        } else {
            Value::Union(0, Box::new(Value::Null))
        };
        let tags = if full {
            vec![s("icu"), s("covid")]
        } else {
            vec![]
        };
        let counters: HashMap<String, Value> = if full {
            [
                ("admits".to_string(), Value::Long(3)),
                ("beds".to_string(), Value::Long(40)),
            ]
            .into()
        } else {
            HashMap::new()
        };
        // 12345.67 and -0.05 as big-endian two's complement unscaled values, in the 4 bytes that
        // 9 digits need: apache-avro's reader-schema resolution rejects shorter encodings.
        let amount = if full {
            vec![0x00, 0x12, 0xD6, 0x87]
        } else {
            vec![0xFF, 0xFF, 0xFF, 0xFB]
        };
        Value::Record(vec![
            ("event_id".into(), s(&format!("ev-{i}"))),
            ("facility".into(), s("st-mary")),
            (
                "occurred_at".into(),
                Value::TimestampMillis(1_700_000_000_000 + i as i64),
            ),
            ("patient_count".into(), Value::Int(10 + i as i32)),
            ("score".into(), score),
            ("status".into(), Value::Enum(1, "DISCHARGED".into())),
            ("tags".into(), Value::Array(tags)),
            ("counters".into(), Value::Map(counters)),
            (
                "location".into(),
                Value::Record(vec![("ward".into(), s("4B")), ("bed".into(), bed)]),
            ),
            ("amount".into(), Value::Decimal(Decimal::from(amount))),
            ("service_date".into(), Value::Date(19_700 + i as i32)),
        ])
    }

    fn set_field(record: &mut Value, name: &str, value: Value) {
        let Value::Record(fields) = record else {
            panic!("not a record")
        };
        fields.iter_mut().find(|(n, _)| n == name).unwrap().1 = value;
    }

    /// Map rows as sorted maps: entry order follows `HashMap` iteration, so it is not stable.
    fn long_maps(a: &ArrayRef) -> Vec<BTreeMap<String, i64>> {
        let maps = a.as_map();
        (0..maps.len())
            .map(|i| {
                let entries = maps.value(i);
                let keys = entries.column(0).as_string::<i32>();
                let values = entries.column(1).as_primitive::<Int64Type>();
                (0..entries.len())
                    .map(|j| (keys.value(j).to_owned(), values.value(j)))
                    .collect()
            })
            .collect()
    }

    fn builder_for(schema: &Schema) -> AvroBatchBuilder {
        AvroBatchBuilder::new(Arc::new(arrow_schema(schema).unwrap()), 8)
    }

    fn strings(a: &ArrayRef) -> Vec<Option<String>> {
        a.as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect()
    }

    #[test]
    fn arrow_schema_maps_types() {
        let schema = arrow_schema(&facility_schema()).unwrap();
        let dt = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
        let nullable = |name: &str| schema.field_with_name(name).unwrap().is_nullable();
        assert_eq!(dt("event_id"), DataType::Utf8);
        assert_eq!(
            dt("occurred_at"),
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert_eq!(dt("patient_count"), DataType::Int32);
        assert_eq!(dt("score"), DataType::Float64);
        assert!(nullable("score") && !nullable("patient_count"));
        assert_eq!(dt("status"), DataType::Utf8);
        assert_eq!(
            dt("tags"),
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, false)))
        );
        assert_eq!(dt("counters"), map_type(DataType::Int64, false));
        assert_eq!(
            dt("location"),
            DataType::Struct(Fields::from(vec![
                Field::new("ward", DataType::Utf8, false),
                Field::new("bed", DataType::Int32, true),
            ]))
        );
        assert_eq!(dt("amount"), DataType::Decimal128(9, 2));
        assert_eq!(dt("service_date"), DataType::Date32);
    }

    #[test]
    fn round_trip_into_arrow() {
        let schema = facility_schema();
        let mut b = builder_for(&schema);
        assert!(b.is_empty());
        b.append(&event(0)).unwrap();
        b.append(&event(1)).unwrap();
        assert_eq!(b.len(), 2);
        let batch = b.finish().unwrap();
        assert!(b.is_empty());
        assert_eq!(batch.num_rows(), 2);
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();

        assert_eq!(
            strings(&col("event_id")),
            [Some("ev-0".into()), Some("ev-1".into())]
        );
        assert_eq!(
            strings(&col("facility")),
            [Some("st-mary".into()), Some("st-mary".into())]
        );
        let ts = col("occurred_at");
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[1_700_000_000_000, 1_700_000_000_001]);
        assert_eq!(ts.timezone(), Some("UTC"));
        let count = col("patient_count");
        let count = count.as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(count.values(), &[10, 11]);
        let score = col("score");
        let score = score.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(score.iter().collect::<Vec<_>>(), [Some(0.75), None]);
        assert_eq!(
            strings(&col("status")),
            [Some("DISCHARGED".into()), Some("DISCHARGED".into())]
        );

        let tags = col("tags");
        let tags = tags.as_list::<i32>();
        assert_eq!(
            strings(&tags.value(0)),
            [Some("icu".into()), Some("covid".into())]
        );
        assert_eq!(tags.value(1).len(), 0);

        let counters = long_maps(&col("counters"));
        assert_eq!(
            counters[0],
            BTreeMap::from([("admits".into(), 3), ("beds".into(), 40)])
        );
        assert!(counters[1].is_empty());

        let location = col("location");
        let location = location.as_struct();
        assert_eq!(
            strings(location.column_by_name("ward").unwrap()),
            [Some("4B".into()), Some("4B".into())]
        );
        let bed = location.column_by_name("bed").unwrap();
        assert_eq!(
            bed.as_primitive::<Int32Type>().iter().collect::<Vec<_>>(),
            [Some(12), None]
        );

        let amount = col("amount");
        let amount = amount.as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(amount.values(), &[1_234_567, -5]);
        assert_eq!(amount.value_as_string(0), "12345.67");
        assert_eq!(amount.value_as_string(1), "-0.05");

        let date = col("service_date");
        let date = date.as_any().downcast_ref::<Date32Array>().unwrap();
        assert_eq!(date.values(), &[19_700, 19_701]);

        // The builder is reusable after finish.
        b.append(&event(2)).unwrap();
        assert_eq!(b.finish().unwrap().num_rows(), 1);
    }

    #[test]
    fn schema_evolution_fills_reader_defaults() {
        let writer = facility_schema();
        let mut reader_json: Json = serde_json::from_str(FACILITY_EVENT).unwrap();
        let fields = reader_json["fields"].as_array_mut().unwrap();
        fields.push(json!({"name": "priority", "type": "string", "default": "routine"}));
        fields.push(json!({"name": "note", "type": ["null", "string"], "default": null}));
        let reader = Schema::parse(&reader_json).unwrap();

        let mut b = builder_for(&reader);
        for i in 0..2 {
            let datum = encode(&writer, event(i));
            let value = decode(&writer, Some(&reader), &datum);
            b.append(&value).unwrap();
        }
        let batch = b.finish().unwrap();
        assert_eq!(
            strings(batch.column_by_name("priority").unwrap()),
            [Some("routine".into()), Some("routine".into())]
        );
        assert_eq!(batch.column_by_name("note").unwrap().null_count(), 2);
        assert_eq!(
            strings(batch.column_by_name("event_id").unwrap()),
            [Some("ev-0".into()), Some("ev-1".into())]
        );
        let amount = batch.column_by_name("amount").unwrap();
        assert_eq!(
            amount.as_primitive::<Decimal128Type>().values(),
            &[1_234_567, -5]
        );
    }

    #[test]
    fn bad_value_names_field_and_keeps_builder_consistent() {
        let schema = facility_schema();
        let mut b = builder_for(&schema);
        b.append(&event(0)).unwrap();

        let mut bad = event(1);
        set_field(&mut bad, "service_date", s("2024-01-01"));
        let err = b.append(&bad).unwrap_err().to_string();
        assert_eq!(err, "field service_date: expected date (int), found string");

        let mut bad = event(1);
        set_field(
            &mut bad,
            "location",
            Value::Record(vec![
                ("ward".into(), s("4B")),
                ("bed".into(), Value::Union(1, Box::new(s("twelve")))),
            ]),
        );
        let err = b.append(&bad).unwrap_err().to_string();
        assert_eq!(err, "field location.bed: expected int, found string");

        // Fails in the middle of the record: earlier columns must not keep their values.
        let mut bad = event(1);
        set_field(&mut bad, "tags", Value::Array(vec![s("ok"), Value::Int(7)]));
        let err = b.append(&bad).unwrap_err().to_string();
        assert_eq!(err, "field tags[1]: expected string, found int");

        let mut bad = event(1);
        let Value::Record(fields) = &mut bad else {
            unreachable!()
        };
        fields.retain(|(n, _)| n != "facility");
        let err = b.append(&bad).unwrap_err().to_string();
        assert!(err.contains("field facility: missing"), "{err}");

        assert!(matches!(
            b.append(&s("not a record")),
            Err(AvroError::NotARecord(_))
        ));

        assert_eq!(b.len(), 1);
        b.append(&event(1)).unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        for c in batch.columns() {
            assert_eq!(c.len(), 2);
        }
        assert_eq!(
            strings(batch.column_by_name("event_id").unwrap()),
            [Some("ev-0".into()), Some("ev-1".into())]
        );
        let tags = batch.column_by_name("tags").unwrap().as_list::<i32>();
        assert_eq!(tags.value(1).len(), 0);
    }

    #[test]
    fn multi_type_union_is_rejected_with_field_name() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "id", "type": "string"},
                {"name": "code", "type": ["string", "int"]}]}"#,
        )
        .unwrap();
        let err = arrow_schema(&schema).unwrap_err().to_string();
        assert!(
            err.starts_with("field code: unsupported union [string, int]"),
            "{err}"
        );

        let not_record = Schema::parse_str(r#""string""#).unwrap();
        assert!(matches!(
            arrow_schema(&not_record),
            Err(AvroError::NotARecord(_))
        ));
    }

    #[test]
    fn named_type_references_resolve() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "Transfer", "fields": [
                {"name": "from", "type": {"type": "record", "name": "Loc",
                    "fields": [{"name": "ward", "type": "string"}]}},
                {"name": "to", "type": ["null", "Loc"], "default": null}]}"#,
        )
        .unwrap();
        let arrow = arrow_schema(&schema).unwrap();
        assert_eq!(arrow.field(0).data_type(), arrow.field(1).data_type());
        assert!(arrow.field(1).is_nullable());

        let value = Value::Record(vec![
            ("from".into(), Value::Record(vec![("ward".into(), s("1A"))])),
            (
                "to".into(),
                Value::Union(1, Box::new(Value::Record(vec![("ward".into(), s("2C"))]))),
            ),
        ]);
        let mut b = AvroBatchBuilder::new(Arc::new(arrow), 1);
        b.append(&value).unwrap();
        let batch = b.finish().unwrap();
        let back = row_to_value(&batch, 0, &schema).unwrap();
        assert_eq!(back, value);

        let recursive = Schema::parse_str(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "next", "type": ["null", "Node"], "default": null}]}"#,
        )
        .unwrap();
        let err = arrow_schema(&recursive).unwrap_err().to_string();
        assert!(err.contains("field next: recursive type Node"), "{err}");
    }

    #[test]
    fn row_to_value_round_trips_through_avro_bytes() {
        let schema = facility_schema();
        let mut b = builder_for(&schema);
        for i in 0..2 {
            b.append(&event(i)).unwrap();
        }
        let batch = b.finish().unwrap();

        let mut again = builder_for(&schema);
        for row in 0..batch.num_rows() {
            let value = row_to_value(&batch, row, &schema).unwrap();
            let datum = encode(&schema, value);
            // With a reader schema too: that path resolves decimals and is stricter.
            assert_eq!(decode(&schema, Some(&schema), &datum), event(row));
            let decoded = decode(&schema, None, &datum);
            assert_eq!(decoded, event(row));
            again.append(&decoded).unwrap();
        }
        let again = again.finish().unwrap();
        assert_eq!(again.schema(), batch.schema());
        for (i, field) in batch.schema().fields().iter().enumerate() {
            if field.name() == "counters" {
                assert_eq!(long_maps(again.column(i)), long_maps(batch.column(i)));
            } else {
                assert_eq!(again.column(i), batch.column(i), "{}", field.name());
            }
        }

        assert!(matches!(
            row_to_value(&batch, 2, &schema),
            Err(AvroError::RowOutOfBounds { row: 2, rows: 2 })
        ));
    }

    #[test]
    fn row_to_value_fills_missing_fields() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "Out", "fields": [
                {"name": "id", "type": "long"},
                {"name": "priority", "type": "string", "default": "routine"},
                {"name": "note", "type": ["null", "string"]},
                {"name": "status", "type": {"type": "enum", "name": "S",
                    "symbols": ["A", "B", "UNKNOWN"], "default": "UNKNOWN"}}]}"#,
        )
        .unwrap();
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int32Array::from(vec![7])) as ArrayRef),
            ("status", Arc::new(StringArray::from(vec!["Z"])) as ArrayRef),
        ])
        .unwrap();
        let value = row_to_value(&batch, 0, &schema).unwrap();
        assert_eq!(
            value,
            Value::Record(vec![
                ("id".into(), Value::Long(7)),
                ("priority".into(), s("routine")),
                ("note".into(), Value::Union(0, Box::new(Value::Null))),
                ("status".into(), Value::Enum(2, "UNKNOWN".into())),
            ])
        );
        encode(&schema, value);

        let required = Schema::parse_str(
            r#"{"type": "record", "name": "Out", "fields": [
                {"name": "id", "type": "long"}, {"name": "ward", "type": "string"}]}"#,
        )
        .unwrap();
        let err = row_to_value(&batch, 0, &required).unwrap_err().to_string();
        assert!(err.starts_with("field ward: not in the batch"), "{err}");

        let wrong = Schema::parse_str(
            r#"{"type": "record", "name": "Out", "fields": [{"name": "id", "type": "string"}]}"#,
        )
        .unwrap();
        let err = row_to_value(&batch, 0, &wrong).unwrap_err().to_string();
        assert_eq!(err, "field id: expected string, found Arrow Int32");
    }

    #[test]
    fn avro_schema_json_maps_back_to_the_same_arrow_types() {
        let arrow = arrow_schema(&facility_schema()).unwrap();
        let mut with_internal: Vec<Field> =
            arrow.fields().iter().map(|f| f.as_ref().clone()).collect();
        with_internal.push(Field::new("_offset", DataType::Int64, false));
        let json = avro_schema_json(
            &ArrowSchema::new(with_internal),
            "FacilityEvent",
            Some("org.plexus"),
        )
        .unwrap();
        let parsed = Schema::parse_str(&json).unwrap();
        assert_eq!(arrow_schema(&parsed).unwrap(), arrow);

        // Nullable fields get a null default so that they can be added to a topic later.
        let doc: Json = serde_json::from_str(&json).unwrap();
        let score = &doc["fields"][4];
        assert_eq!(score["type"], json!(["null", "double"]));
        assert_eq!(score["default"], Json::Null);
        assert_eq!(doc["namespace"], json!("org.plexus"));

        let bad = ArrowSchema::new(vec![Field::new("patient-id", DataType::Utf8, false)]);
        let err = avro_schema_json(&bad, "R", None).unwrap_err().to_string();
        assert!(
            err.starts_with("field patient-id: not a valid Avro name"),
            "{err}"
        );
    }

    #[test]
    fn arrow_batch_produces_through_derived_schema() {
        // A sink with no declared schema: derive one, encode every row, decode into Arrow.
        let utc: Option<Arc<str>> = Some("UTC".into());
        let batch = RecordBatch::try_from_iter_with_nullable([
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
                false,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
                true,
            ),
            (
                "seen_at",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_000_001), None])
                        .with_timezone_opt(utc),
                ) as ArrayRef,
                true,
            ),
            (
                "day",
                Arc::new(Date32Array::from(vec![19_000, 19_001])) as ArrayRef,
                false,
            ),
            (
                "_partition",
                Arc::new(Int32Array::from(vec![0, 0])) as ArrayRef,
                false,
            ),
        ])
        .unwrap();
        let json = avro_schema_json(&batch.schema(), "Row", None).unwrap();
        let schema = Schema::parse_str(&json).unwrap();
        let mut b = builder_for(&schema);
        for row in 0..batch.num_rows() {
            let value = row_to_value(&batch, row, &schema).unwrap();
            let datum = encode(&schema, value);
            b.append(&decode(&schema, None, &datum)).unwrap();
        }
        let back = b.finish().unwrap();
        assert_eq!(back, batch.project(&[0, 1, 2, 3]).unwrap());
    }

    #[test]
    fn decimal_bytes_conversion() {
        // Padded to the length the precision needs (4 bytes for 9 digits, 16 for 38).
        assert_eq!(decimal_bytes(1_234_567, 9), [0x00, 0x12, 0xD6, 0x87]);
        assert_eq!(decimal_bytes(-5, 9), [0xFF, 0xFF, 0xFF, 0xFB]);
        assert_eq!(decimal_bytes(-5, 2), [0xFB]);
        assert_eq!(decimal_bytes(i128::MAX, 38).len(), 16);
        assert_eq!(be_to_i128(&decimal_bytes(-5, 50)), Some(-5));

        for v in [
            0i128,
            1,
            -1,
            127,
            128,
            -128,
            -129,
            1_234_567,
            i128::MAX,
            i128::MIN,
        ] {
            assert_eq!(be_to_i128(&i128_to_be(v)), Some(v), "{v}");
        }
        assert_eq!(i128_to_be(128), [0x00, 0x80]);
        assert_eq!(i128_to_be(-129), [0xff, 0x7f]);
        // Over-long sign extension is accepted, real overflow is not.
        let mut long = vec![0xff; 4];
        long.extend((-5i128).to_be_bytes());
        assert_eq!(be_to_i128(&long), Some(-5));
        let mut overflow = vec![0x01];
        overflow.extend(0i128.to_be_bytes());
        assert_eq!(be_to_i128(&overflow), None);
    }
}
