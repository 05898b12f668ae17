//! Schemas: Avro → Arrow (reading), Arrow → Avro JSON (sinks with no declared schema).

use super::*;

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
pub(super) fn map_type(values: DataType, values_nullable: bool) -> DataType {
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
