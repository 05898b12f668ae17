//! Transaction and batch Bundles whose entries are conditional updates on business
//! identifiers (`PUT Patient?identifier=system|value`): the receiving server creates a
//! resource the first time and updates the same one after, so a replayed message changes
//! nothing and never duplicates a patient. Practitioners, Locations and Organizations are
//! conditional creates (`ifNoneExist`) in a transaction: made once, never overwritten.

use std::collections::HashMap;

use serde_json::Value;

use super::v2::{Resource, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleType {
    /// All or nothing; entries reference each other by `urn:uuid:` full URLs, which the
    /// server resolves to the ids it assigns.
    Transaction,
    /// Each entry on its own; entries reference each other as `Type/id` with plexus's
    /// deterministic ids (the server must allow update-as-create for a new resource).
    Batch,
}

impl BundleType {
    pub fn as_str(self) -> &'static str {
        match self {
            BundleType::Transaction => "transaction",
            BundleType::Batch => "batch",
        }
    }
}

/// The request URL of a resource's conditional update (or update by id without one).
pub fn request_url(r: &Resource) -> String {
    match search_query(r) {
        Some(q) => format!("{}?{q}", r.resource_type),
        None => format!("{}/{}", r.resource_type, r.id),
    }
}

/// The search that finds a resource by its business identifier (`identifier=system|value`,
/// encoded): what a conditional update or create matches on.
pub fn search_query(r: &Resource) -> Option<String> {
    let (system, value) = r.identifier.as_ref()?;
    Some(format!(
        "identifier={}|{}",
        encode(system),
        encode(&escape_token(value))
    ))
}

/// One Bundle of the resources of a message (taken, not copied: a Bundle is built once per
/// message on the hot path).
pub fn bundle(resources: Vec<Resource>, kind: BundleType) -> Value {
    // Transactions refer to entries by their `urn:uuid:` full URLs: one map, one pass over
    // each resource.
    let urns: HashMap<String, String> = match kind {
        BundleType::Transaction => resources
            .iter()
            .map(|r| {
                (
                    format!("{}/{}", r.resource_type, r.id),
                    format!("urn:uuid:{}", r.id),
                )
            })
            .collect(),
        BundleType::Batch => HashMap::new(),
    };
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            // Directory resources are created once (`Write::CreateOnce`); a batch entry
            // stands alone and is referenced by its deterministic id, so it stays an update.
            let request = match (kind, r.write(), search_query(&r)) {
                (BundleType::Transaction, Write::CreateOnce, Some(q)) => object([
                    ("method", Value::from("POST")),
                    ("url", Value::from(r.resource_type)),
                    ("ifNoneExist", Value::String(q)),
                ]),
                _ => object([
                    ("method", Value::from("PUT")),
                    ("url", Value::String(request_url(&r))),
                ]),
            };
            let full_url = format!("urn:uuid:{}", r.id);
            let mut body = r.body;
            if kind == BundleType::Transaction {
                if let Value::Object(o) = &mut body {
                    // A conditional write must not carry an id the match might contradict.
                    if r.identifier.is_some() {
                        o.remove("id");
                    }
                }
                rewrite_references(&mut body, &urns);
            }
            // Moved in, not through `json!`: that serializes its values, a deep copy of
            // every resource (it was two thirds of the Bundle's cost).
            object([
                ("fullUrl", Value::String(full_url)),
                ("resource", body),
                ("request", request),
            ])
        })
        .collect();
    object([
        ("resourceType", Value::from("Bundle")),
        ("type", Value::from(kind.as_str())),
        ("entry", Value::Array(entries)),
    ])
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// Replaces every `reference` found in `to` (e.g. `Patient/<plexus id>` → the server's id
/// or a `urn:uuid:`), anywhere in the resource.
pub fn rewrite_references(v: &mut Value, to: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if k == "reference" {
                    if let Some(new) = child.as_str().and_then(|r| to.get(r)) {
                        *child = Value::from(new.as_str());
                    }
                } else {
                    rewrite_references(child, to);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_references(c, to)),
        _ => {}
    }
}

/// FHIR search escaping of a token part: `\`, `|`, `,` and `$` are backslash-escaped.
fn escape_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Percent-encodes all but unreserved characters and `:`/`/` (kept for readable systems).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0f)] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(t: &'static str, id: &str, key: Option<(&str, &str)>, body: Value) -> Resource {
        Resource {
            resource_type: t,
            id: id.into(),
            identifier: key.map(|(s, v)| (s.into(), v.into())),
            body,
            deleted: Vec::new(),
        }
    }

    #[test]
    fn transactions_use_conditional_updates_and_urn_references() {
        let p = res(
            "Patient",
            "p1",
            Some(("urn:oid:1.2", "A|1 2")),
            json!({"resourceType": "Patient", "id": "p1"}),
        );
        let e = res(
            "Encounter",
            "e1",
            None,
            json!({"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}}),
        );
        let b = bundle(vec![p.clone(), e.clone()], BundleType::Transaction);
        assert_eq!(
            b["entry"][0]["request"]["url"],
            "Patient?identifier=urn:oid:1.2|A%5C%7C1%202"
        );
        assert!(b["entry"][0]["resource"].get("id").is_none());
        assert_eq!(b["entry"][1]["request"]["url"], "Encounter/e1");
        assert_eq!(b["entry"][1]["resource"]["id"], "e1");
        assert_eq!(
            b["entry"][1]["resource"]["subject"]["reference"],
            "urn:uuid:p1"
        );
        let b = bundle(vec![p, e], BundleType::Batch);
        assert_eq!(
            b["entry"][1]["resource"]["subject"]["reference"],
            "Patient/p1"
        );
        assert_eq!(b["entry"][0]["resource"]["id"], "p1");
    }
}
