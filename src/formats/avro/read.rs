//! Avro values → Arrow columns.

use super::*;

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

pub(super) fn be_to_i128(bytes: &[u8]) -> Option<i128> {
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
