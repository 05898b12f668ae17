//! The JSON Schema of a pipeline file, generated from the typed config (`plexus schema`;
//! kept as `schemas/pipeline.schema.json` for editors). Stages and connectors are
//! `oneOf` their kinds, told apart by `type`; every object rejects unknown keys, as loading
//! does.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::ValidateStage;
use super::{EnrichStage, FhirStage, Header, LookupStage, MapStage, ParseStage, RouteStage};
use crate::connectors::registry::{Connector, SINKS, SOURCES};

/// The schema, as JSON.
pub fn pipeline_schema() -> Value {
    let mut generator = SchemaGenerator::default();
    let stages: Vec<Value> = [
        ("parse", ParseStage::json_schema(&mut generator)),
        ("map", MapStage::json_schema(&mut generator)),
        ("lookup", LookupStage::json_schema(&mut generator)),
        ("validate", ValidateStage::json_schema(&mut generator)),
        ("enrich", EnrichStage::json_schema(&mut generator)),
        ("route", RouteStage::json_schema(&mut generator)),
        ("fhir", FhirStage::json_schema(&mut generator)),
    ]
    .into_iter()
    .map(|(kind, s)| tagged(kind, s, &[]))
    .collect();
    let sources = variants(SOURCES, &mut generator, &[]);
    let name_input = [
        (
            "name",
            json!({"type": "string", "description": "Names the sink in summaries, metrics and tests."}),
        ),
        (
            "input",
            json!({"type": "string", "description": "`stage` or `stage.output` (default: the last stage)."}),
        ),
    ];
    let sinks = variants(SINKS, &mut generator, &name_input);
    let mut root = Header::json_schema(&mut generator).to_value();
    let obj = root.as_object_mut().expect("an object schema");
    obj.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    obj.insert(
        "$id".into(),
        json!("https://plexus.dev/schemas/pipeline.schema.json"),
    );
    obj.insert("title".into(), json!("plexus pipeline"));
    let props = obj
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("properties");
    props.insert(
        "source".into(),
        json!({"description": "Where records come from.", "oneOf": sources}),
    );
    props.insert(
        "stages".into(),
        json!({"description": "The stages, in order.", "type": "array", "items": {"oneOf": stages}}),
    );
    props.insert(
        "sinks".into(),
        json!({"description": "Where rows end up.", "type": "array", "minItems": 1, "items": {"oneOf": sinks}}),
    );
    let required = obj
        .entry("required")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("required");
    for k in ["source", "stages", "sinks"] {
        required.push(json!(k));
    }
    let defs = generator.take_definitions(true);
    if !defs.is_empty() {
        obj.insert("$defs".into(), Value::Object(defs));
    }
    root
}

/// One schema per connector, each with its `type` fixed and the common keys added.
fn variants<C>(
    connectors: &[Connector<C>],
    generator: &mut SchemaGenerator,
    common: &[(&str, Value)],
) -> Vec<Value> {
    connectors
        .iter()
        .map(|c| {
            let mut s = tagged(c.kind, c.schema(generator), common);
            s["description"] = json!(c.about);
            s
        })
        .collect()
}

/// `schema` (an object) with `type: <kind>` required and the `common` keys added.
fn tagged(kind: &str, schema: Schema, common: &[(&str, Value)]) -> Value {
    let mut v = schema.to_value();
    let obj = v.as_object_mut().expect("an object schema");
    obj.remove("title");
    let props = obj
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("properties");
    props.insert("type".into(), json!({"const": kind}));
    for (k, s) in common {
        props.insert((*k).into(), s.clone());
    }
    let required = obj
        .entry("required")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("required");
    if !required.iter().any(|r| r == "type") {
        required.push(json!("type"));
    }
    if !common.is_empty() && !required.iter().any(|r| r == "name") {
        required.push(json!("name"));
    }
    obj.insert("additionalProperties".into(), json!(false));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_in_the_schema() {
        let s = pipeline_schema();
        let kinds = |key: &str, path: &[&str]| -> Vec<String> {
            let mut v = &s["properties"][key];
            for p in path {
                v = &v[*p];
            }
            v["oneOf"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    o["properties"]["type"]["const"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(kinds("source", &[]), ["file", "kafka", "mllp", "http"]);
        assert_eq!(
            kinds("sinks", &["items"]),
            ["file", "stdout", "kafka", "http", "fhir", "mllp"]
        );
        assert_eq!(kinds("stages", &["items"]).len(), 7);
        assert_eq!(s["additionalProperties"], false);
    }
}
