//! An Arrow row → an Avro value (producing).

use super::*;

/// The shortest big-endian two's complement encoding of `v`.
pub(super) fn i128_to_be(v: i128) -> Vec<u8> {
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
pub(super) fn decimal_bytes(v: i128, precision: usize) -> Vec<u8> {
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
    let wrong = || wrong_type(array, schema, path);
    let range = |v: i128, what: &str| out_of_range(v, what, path);
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
        Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::LocalTimestampMillis
        | Schema::TimestampMicros
        | Schema::LocalTimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampNanos
        | Schema::Duration(_) => temporal_value(array, row, schema, path)?,
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
        Schema::Map(m) => map_value(array, row, &m.types, ctx, path)?,
        Schema::Record(r) => {
            let s = array.as_struct_opt().ok_or_else(wrong)?;
            record_value(r, |name| s.column_by_name(name), row, ctx, path)?
        }
        Schema::Null | Schema::Union(_) | Schema::Ref { .. } => return Err(wrong()),
    };
    Ok(value)
}

/// The Arrow column cannot hold a value of this Avro type.
fn wrong_type(array: &dyn Array, schema: &Schema, path: &Path<'_>) -> AvroError {
    mismatch(
        path,
        schema_name(schema),
        format!("Arrow {}", array.data_type()),
    )
}

fn out_of_range(v: i128, what: &str, path: &Path<'_>) -> AvroError {
    invalid(path, format!("value {v} out of range for Avro {what}"))
}

/// An Avro map from an Arrow `Map<Utf8, T>` row.
fn map_value<'s>(
    array: &dyn Array,
    row: usize,
    types: &'s Schema,
    ctx: &Ctx<'s>,
    path: &Path<'_>,
) -> Result<Value, AvroError> {
    let map = array
        .as_map_opt()
        .ok_or_else(|| mismatch(path, "map", format!("Arrow {}", array.data_type())))?;
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
        let value = array_value(values.as_ref(), j, types, ctx, &path.child(Seg::Key(key)))?;
        out.insert(key.to_owned(), value);
    }
    Ok(Value::Map(out))
}

/// Dates, times, timestamps and durations, converting the Arrow unit to the Avro one.
fn temporal_value(
    array: &dyn Array,
    row: usize,
    schema: &Schema,
    path: &Path<'_>,
) -> Result<Value, AvroError> {
    let wrong = || wrong_type(array, schema, path);
    let range = |v: i128, what: &str| out_of_range(v, what, path);
    Ok(match schema {
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
        Schema::TimestampMillis
        | Schema::LocalTimestampMillis
        | Schema::TimestampMicros
        | Schema::LocalTimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampNanos => {
            let unit = match schema {
                Schema::TimestampMillis | Schema::LocalTimestampMillis => TimeUnit::Millisecond,
                Schema::TimestampMicros | Schema::LocalTimestampMicros => TimeUnit::Microsecond,
                _ => TimeUnit::Nanosecond,
            };
            let v = timestamp_at(array, row, unit).ok_or_else(wrong)?;
            match schema {
                Schema::TimestampMillis => Value::TimestampMillis(v),
                Schema::LocalTimestampMillis => Value::LocalTimestampMillis(v),
                Schema::TimestampMicros => Value::TimestampMicros(v),
                Schema::LocalTimestampMicros => Value::LocalTimestampMicros(v),
                Schema::TimestampNanos => Value::TimestampNanos(v),
                _ => Value::LocalTimestampNanos(v),
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
        _ => return Err(wrong()),
    })
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
