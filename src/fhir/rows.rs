//! FHIR → local rows: the reverse direction, for read and search results. A Patient,
//! Encounter or Appointment becomes one flat row with the columns an HL7 feed's `parse`
//! stage gives for the same facts (MRN, names, birth date, visit number, times, statuses),
//! so that a sync or an analyst can compare both sides column by column, in SQL.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;

/// The columns of each resource type's rows (all UTF-8, null when absent).
pub fn columns(resource_type: &str) -> Option<&'static [&'static str]> {
    Some(match resource_type {
        "Patient" => &[
            "id",
            "version_id",
            "last_updated",
            "mrn_system",
            "mrn",
            "family",
            "given",
            "gender",
            "birth_date",
            "phone",
            "email",
            "address_line",
            "city",
            "state",
            "postal_code",
            "country",
            "marital_status",
            "deceased",
        ],
        "Encounter" => &[
            "id",
            "version_id",
            "last_updated",
            "visit_system",
            "visit_number",
            "status",
            "class",
            "patient",
            "period_start",
            "period_end",
            "location",
            "attending",
        ],
        "Appointment" => &[
            "id",
            "version_id",
            "last_updated",
            "appointment_system",
            "appointment_id",
            "status",
            "start",
            "end",
            "minutes",
            "patient",
            "service",
        ],
        _ => return None,
    })
}

pub fn schema(resource_type: &str) -> Option<SchemaRef> {
    let cols = columns(resource_type)?;
    Some(Arc::new(Schema::new(
        cols.iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The identifier typed `code` (v2-0203), else the first one.
fn identifier<'a>(r: &'a Value, code: &str) -> Option<&'a Value> {
    let ids = r["identifier"].as_array()?;
    ids.iter()
        .find(|i| {
            i["type"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["code"] == code)
        })
        .or_else(|| ids.first())
}

/// The first telecom of `system`.
fn telecom(r: &Value, system: &str) -> Option<String> {
    r["telecom"]
        .as_array()?
        .iter()
        .find(|t| t["system"] == system)
        .and_then(|t| text(&t["value"]))
}

/// The official name, else the first.
fn name(r: &Value) -> Option<&Value> {
    let names = r["name"].as_array()?;
    names
        .iter()
        .find(|n| n["use"] == "official")
        .or_else(|| names.first())
}

/// One row's values, in `columns(resource_type)` order.
pub fn row(r: &Value) -> Option<Vec<Option<String>>> {
    let kind = r["resourceType"].as_str()?;
    let meta = [
        text(&r["id"]),
        text(&r["meta"]["versionId"]),
        text(&r["meta"]["lastUpdated"]),
    ];
    let first_coding = |v: &Value| text(&v["coding"][0]["code"]).or_else(|| text(&v["text"]));
    let rest: Vec<Option<String>> = match kind {
        "Patient" => {
            let id = identifier(r, "MR");
            let n = name(r);
            let address = &r["address"][0];
            vec![
                id.and_then(|i| text(&i["system"])),
                id.and_then(|i| text(&i["value"])),
                n.and_then(|n| text(&n["family"])),
                n.and_then(|n| n["given"].as_array())
                    .map(|g| g.iter().filter_map(text).collect::<Vec<_>>().join(" ")),
                text(&r["gender"]),
                text(&r["birthDate"]),
                telecom(r, "phone"),
                telecom(r, "email"),
                address["line"]
                    .as_array()
                    .map(|l| l.iter().filter_map(text).collect::<Vec<_>>().join(", ")),
                text(&address["city"]),
                text(&address["state"]),
                text(&address["postalCode"]),
                text(&address["country"]),
                first_coding(&r["maritalStatus"]),
                text(&r["deceasedDateTime"]).or_else(|| text(&r["deceasedBoolean"])),
            ]
        }
        "Encounter" => {
            let id = identifier(r, "VN");
            let attending = r["participant"].as_array().and_then(|ps| {
                ps.iter()
                    .find(|p| p["type"][0]["coding"][0]["code"] == "ATND")
            });
            vec![
                id.and_then(|i| text(&i["system"])),
                id.and_then(|i| text(&i["value"])),
                text(&r["status"]),
                text(&r["class"]["code"]),
                text(&r["subject"]["reference"]),
                text(&r["period"]["start"]),
                text(&r["period"]["end"]),
                text(&r["location"][0]["location"]["display"]),
                attending.and_then(|a| {
                    text(&a["individual"]["display"])
                        .or_else(|| text(&a["individual"]["identifier"]["value"]))
                }),
            ]
        }
        "Appointment" => {
            let id = r["identifier"].as_array().and_then(|i| i.first());
            let patient = r["participant"].as_array().and_then(|ps| {
                ps.iter().find_map(|p| {
                    text(&p["actor"]["reference"]).filter(|t| t.starts_with("Patient/"))
                })
            });
            vec![
                id.and_then(|i| text(&i["system"])),
                id.and_then(|i| text(&i["value"])),
                text(&r["status"]),
                text(&r["start"]),
                text(&r["end"]),
                text(&r["minutesDuration"]),
                patient,
                first_coding(&r["serviceType"][0]),
            ]
        }
        _ => return None,
    };
    Some(meta.into_iter().chain(rest).collect())
}

/// Rows of the resources of one type as an Arrow batch (others are skipped).
pub fn batch(resource_type: &str, resources: &[Value]) -> Option<RecordBatch> {
    let schema = schema(resource_type)?;
    let mut builders: Vec<StringBuilder> = (0..schema.fields().len())
        .map(|_| StringBuilder::new())
        .collect();
    for r in resources
        .iter()
        .filter(|r| r["resourceType"] == resource_type)
    {
        for (b, v) in builders.iter_mut().zip(row(r)?) {
            b.append_option(v);
        }
    }
    let arrays: Vec<ArrayRef> = builders
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    RecordBatch::try_new(schema, arrays).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patient_reads_back_as_a_flat_row() {
        let p = json!({
            "resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"},
            "identifier": [
                {"system": "urn:ssn", "value": "111", "type": {"coding": [{"code": "SS"}]}},
                {"system": "urn:oid:1.2", "value": "M1", "type": {"coding": [{"code": "MR"}]}}
            ],
            "name": [{"use": "usual", "family": "X"}, {"use": "official", "family": "DUCK", "given": ["DONALD", "D"]}],
            "gender": "male", "birthDate": "1924-10-10",
            "telecom": [{"system": "email", "value": "d@x"}, {"system": "phone", "value": "555"}],
            "address": [{"line": ["1 Duck St", "Apt 2"], "city": "FOWL", "state": "CA"}]
        });
        let b = batch("Patient", &[p]).unwrap();
        let get = |c: &str| {
            arrow::array::AsArray::as_string::<i32>(b.column_by_name(c).unwrap().as_ref())
                .value(0)
                .to_string()
        };
        assert_eq!(get("mrn"), "M1");
        assert_eq!(get("mrn_system"), "urn:oid:1.2");
        assert_eq!(get("family"), "DUCK");
        assert_eq!(get("given"), "DONALD D");
        assert_eq!(get("phone"), "555");
        assert_eq!(get("address_line"), "1 Duck St, Apt 2");
        assert_eq!(get("version_id"), "3");
        assert!(b.column_by_name("country").unwrap().is_null(0));
    }
}
