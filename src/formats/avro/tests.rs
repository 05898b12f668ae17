use super::read::be_to_i128;
use super::schema::map_type;
use super::write::{decimal_bytes, i128_to_be};
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
    let mut with_internal: Vec<Field> = arrow.fields().iter().map(|f| f.as_ref().clone()).collect();
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
                TimestampMicrosecondArray::from(vec![Some(1_000_001), None]).with_timezone_opt(utc),
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
