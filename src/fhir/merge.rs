//! HL7 v2 update semantics on FHIR resources.
//!
//! A v2 message carries what the sender knows now, not the whole record: an empty field means
//! "no change" and `""` (the explicit null) means "delete". A FHIR PUT replaces the whole
//! resource, so writing a converted message as it is would erase everything the message did
//! not repeat (addresses, phones, next of kin, other identifiers). [`merge`] applies a message
//! to the server's current version instead:
//!
//! - an element the message carries replaces the server's;
//! - an element it does not carry is kept;
//! - an element it nulls (`""`, listed in `deleted`) is removed;
//! - identifiers and contacts are kept: the message's are added, or replace the server's entry
//!   for the same identifier (system and value) or the same contact person (name).

use serde_json::{Map, Value};

/// The server's resource with the message applied (see the module docs). `id` is the
/// server's; `meta` and the narrative `text` are left to the server.
pub fn merge(server: &Value, message: &Value, deleted: &[String]) -> Value {
    let mut out: Map<String, Value> = server.as_object().cloned().unwrap_or_default();
    out.remove("meta");
    out.remove("text");
    if let Some(m) = message.as_object() {
        for (k, v) in m {
            match k.as_str() {
                "resourceType" | "id" | "meta" | "text" => {}
                "identifier" => {
                    let merged = union(out.get(k), v, identifier_key);
                    out.insert(k.clone(), merged);
                }
                "contact" => {
                    let merged = union(out.get(k), v, contact_key);
                    out.insert(k.clone(), merged);
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    for d in deleted {
        out.remove(d);
    }
    Value::Object(out)
}

/// The elements whose values differ between `a` and `b` (server-managed ones aside).
pub fn changed_elements(a: &Value, b: &Value) -> Vec<String> {
    let skip = |k: &str| matches!(k, "id" | "meta" | "text");
    let empty = Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| !skip(k)).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
        .cloned()
        .collect()
}

/// The server's entries, each replaced by the message's entry with the same key, then the
/// message's new entries. Entries without a key are appended (they cannot be matched).
fn union(server: Option<&Value>, message: &Value, key: fn(&Value) -> Option<String>) -> Value {
    let incoming: Vec<Value> = message.as_array().cloned().unwrap_or_default();
    let mut used = vec![false; incoming.len()];
    let mut out = Vec::new();
    for s in server.and_then(Value::as_array).into_iter().flatten() {
        let k = key(s);
        let replacement = k.as_ref().and_then(|k| {
            incoming
                .iter()
                .enumerate()
                .find(|(i, m)| !used[*i] && key(m).as_ref() == Some(k))
                .map(|(i, _)| i)
        });
        match replacement {
            Some(i) => {
                used[i] = true;
                out.push(incoming[i].clone());
            }
            None => out.push(s.clone()),
        }
    }
    for (i, m) in incoming.into_iter().enumerate() {
        if !used[i] && !out.contains(&m) {
            out.push(m);
        }
    }
    Value::Array(out)
}

fn identifier_key(v: &Value) -> Option<String> {
    let value = v["value"].as_str()?;
    Some(format!(
        "{}|{value}",
        v["system"].as_str().unwrap_or_default()
    ))
}

/// A contact person by name (family and given names, case-insensitive).
fn contact_key(v: &Value) -> Option<String> {
    let n = &v["name"];
    let family = n["family"].as_str().unwrap_or_default();
    let given: Vec<&str> = n["given"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let k = format!("{family}|{}", given.join(" ")).to_lowercase();
    (k != "|").then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server() -> Value {
        json!({
            "resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"},
            "identifier": [
                {"system": "urn:oid:1.2", "value": "MRN1"},
                {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123"}
            ],
            "name": [{"family": "DUCK", "given": ["DONALD"]}],
            "address": [{"city": "FOWL"}],
            "telecom": [{"system": "phone", "value": "555"}],
            "contact": [{"name": {"family": "DUCK", "given": ["DAISY"]}, "telecom": [{"value": "1"}]}],
            "gender": "male"
        })
    }

    #[test]
    fn what_the_message_omits_is_kept_and_what_it_carries_replaces() {
        let msg = json!({"resourceType": "Patient", "id": "local",
            "identifier": [{"system": "urn:oid:1.2", "value": "MRN1"}],
            "name": [{"family": "DRAKE", "given": ["DONALD"]}]});
        let m = merge(&server(), &msg, &[]);
        assert_eq!(m["id"], "p1");
        assert!(m.get("meta").is_none());
        assert_eq!(m["name"][0]["family"], "DRAKE");
        assert_eq!(m["address"], server()["address"]);
        assert_eq!(m["telecom"], server()["telecom"]);
        assert_eq!(m["contact"], server()["contact"]);
        // Both identifiers stay: the message repeated one of them.
        assert_eq!(m["identifier"].as_array().unwrap().len(), 2);
        assert_eq!(changed_elements(&m, &server()), ["name"]);
    }

    #[test]
    fn explicit_nulls_delete_and_lists_merge_by_key() {
        let msg = json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:oid:9", "value": "NEW"}],
        "contact": [
            {"name": {"family": "duck", "given": ["daisy"]}, "telecom": [{"value": "2"}]},
            {"name": {"family": "MCDUCK", "given": ["SCROOGE"]}}
        ]});
        let m = merge(&server(), &msg, &["address".into(), "telecom".into()]);
        assert!(m.get("address").is_none() && m.get("telecom").is_none());
        assert_eq!(m["identifier"].as_array().unwrap().len(), 3);
        let contacts = m["contact"].as_array().unwrap();
        assert_eq!(contacts.len(), 2);
        assert_eq!(
            contacts[0]["telecom"][0]["value"], "2",
            "same person, updated"
        );
        assert_eq!(contacts[1]["name"]["family"], "MCDUCK");
        // A message that only repeats the server changes nothing.
        let same = merge(&server(), &server(), &[]);
        assert!(changed_elements(&same, &server()).is_empty());
    }
}
