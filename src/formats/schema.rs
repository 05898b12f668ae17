//! Declared record schemas (`schemas/*.json`) for JSON and CSV inputs.
//!
//! ```json
//! {"name": "facility_event",
//!  "fields": [{"name": "event_id", "type": "utf8", "nullable": false},
//!             {"name": "occurred_at", "type": "timestamp"}]}
//! ```
//! Types: `utf8`, `int64`, `float64`, `boolean`, `date` (date32), `timestamp` (µs, UTC),
//! `list<utf8>`, and `json`: any JSON value (an object, say) kept as its JSON text, for SQL's
//! `json_get` or to pass through whole (a FHIR resource inside an event). A declared schema is the contract with producers: a record that does not
//! conform is dead-lettered with the decoder's reason, never coerced silently.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    #[allow(dead_code)]
    name: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    fields: Vec<FieldDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDecl {
    name: String,
    #[serde(rename = "type")]
    data_type: String,
    #[serde(default = "yes")]
    nullable: bool,
    #[allow(dead_code)]
    description: Option<String>,
}

fn yes() -> bool {
    true
}

/// Maps a declared type name to Arrow.
pub fn data_type(name: &str) -> Result<DataType, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "utf8" | "string" | "text" => DataType::Utf8,
        "int64" | "int" | "integer" => DataType::Int64,
        "float64" | "float" | "double" => DataType::Float64,
        "boolean" | "bool" => DataType::Boolean,
        "date" | "date32" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "list<utf8>" | "list" => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        other => {
            return Err(format!(
                "unknown type {other:?} (utf8, int64, float64, boolean, date, timestamp, list<utf8>, json)"
            ));
        }
    })
}

/// Marks a text field that holds a JSON value's text (declared type `json`).
pub const JSON_TEXT: &str = "plexus.json";

fn json_field(name: String, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable).with_metadata(
        [(JSON_TEXT.to_string(), "true".to_string())]
            .into_iter()
            .collect(),
    )
}

/// Whether a field is declared `json`.
pub fn is_json_text(f: &Field) -> bool {
    f.metadata().contains_key(JSON_TEXT)
}

/// Reads a schema file.
pub fn load(path: &std::path::Path) -> Result<SchemaRef, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read schema {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("schema {}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<SchemaRef, String> {
    let file: SchemaFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut fields = Vec::with_capacity(file.fields.len());
    for f in file.fields {
        if f.name.starts_with('_') {
            return Err(format!(
                "field {:?}: names starting with '_' are reserved",
                f.name
            ));
        }
        if fields.iter().any(|x: &Field| x.name() == &f.name) {
            return Err(format!("field {:?} is declared twice", f.name));
        }
        if f.data_type.eq_ignore_ascii_case("json") {
            fields.push(json_field(f.name, f.nullable));
            continue;
        }
        let t = data_type(&f.data_type).map_err(|e| format!("field {:?}: {e}", f.name))?;
        fields.push(Field::new(f.name, t, f.nullable));
    }
    if fields.is_empty() {
        return Err("a schema needs at least one field".into());
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let s = parse(r#"{"fields":[{"name":"a","type":"int64","nullable":false},{"name":"t","type":"timestamp"}]}"#)
            .unwrap();
        assert_eq!(s.field(0).data_type(), &DataType::Int64);
        assert!(!s.field(0).is_nullable());
        assert!(
            parse(r#"{"fields":[{"name":"a","type":"int128"}]}"#)
                .unwrap_err()
                .contains("int128")
        );
        assert!(parse(r#"{"fields":[{"name":"_a","type":"utf8"}]}"#).is_err());
        let j = parse(r#"{"fields":[{"name":"data","type":"json"}]}"#).unwrap();
        assert!(is_json_text(j.field(0)) && j.field(0).data_type() == &DataType::Utf8);
        assert!(parse(r#"{"fields":[{"name":"a","type":"utf8","typo":1}]}"#).is_err());
    }
}
