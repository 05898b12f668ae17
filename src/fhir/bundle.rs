//! Transaction and batch Bundles whose entries are conditional updates on business
//! identifiers (`PUT Patient?identifier=system|value`): the receiving server creates a
//! resource the first time and updates the same one after, so a replayed message changes
//! nothing and never duplicates a patient. Practitioners, Locations and Organizations are
//! conditional creates (`ifNoneExist`) in a transaction: made once, never overwritten.

use std::collections::HashMap;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use super::json::Json;
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
pub fn request_url<B>(r: &Resource<B>) -> String {
    match search_query(r) {
        Some(q) => format!("{}?{q}", r.resource_type),
        None => format!("{}/{}", r.resource_type, r.id),
    }
}

/// The search that finds a resource by its business identifier (`identifier=system|value`,
/// encoded): what a conditional update or create matches on.
pub fn search_query<B>(r: &Resource<B>) -> Option<String> {
    let (system, value) = r.identifier.as_ref()?;
    let mut q = String::with_capacity(12 + system.len() + value.len() + 8);
    q.push_str("identifier=");
    encode_into(&mut q, system, false);
    q.push('|');
    encode_into(&mut q, value, true);
    Some(q)
}

/// One Bundle of the resources of a message (taken, not copied: a Bundle is built once per
/// message on the hot path). It is written by serializing it: entries, requests and the
/// transaction's `urn:uuid:` references are produced while writing, not built as a tree
/// first (building it was most of the Bundle's cost).
pub fn bundle(resources: Vec<Resource>, kind: BundleType) -> Bundle {
    Bundle { resources, kind }
}

/// A Bundle of one message's resources, written by `Serialize` (`serde_json::to_writer`).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub resources: Vec<Resource>,
    pub kind: BundleType,
}

impl Bundle {
    /// The Bundle as a JSON tree (for readers that walk it; writers serialize it directly).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Serialize for Bundle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Transactions refer to entries by their `urn:uuid:` full URLs: id → type, borrowed.
        // Sorted by id for a binary search per reference (a message has tens of entries).
        let mut urns: Vec<(&str, &str)> = match self.kind {
            BundleType::Transaction => self
                .resources
                .iter()
                .map(|r| (r.id.as_str(), r.resource_type))
                .collect(),
            BundleType::Batch => Vec::new(),
        };
        urns.sort_unstable();
        let entries = Entries {
            resources: &self.resources,
            kind: self.kind,
            urns: &urns,
        };
        // In the order of FHIR's own JSON (`resourceType` first), as the resources are.
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("resourceType", "Bundle")?;
        m.serialize_entry("type", self.kind.as_str())?;
        m.serialize_entry("entry", &entries)?;
        m.end()
    }
}

struct Entries<'b> {
    resources: &'b [Resource],
    kind: BundleType,
    urns: &'b [(&'b str, &'b str)],
}

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.resources.len()))?;
        for r in self.resources {
            seq.serialize_element(&Entry {
                r,
                kind: self.kind,
                urns: self.urns,
            })?;
        }
        seq.end()
    }
}

struct Entry<'b> {
    r: &'b Resource,
    kind: BundleType,
    urns: &'b [(&'b str, &'b str)],
}

impl Serialize for Entry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (r, transaction) = (self.r, self.kind == BundleType::Transaction);
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("fullUrl", &format_args!("urn:uuid:{}", r.id))?;
        // A conditional write must not carry an id the match might contradict.
        let resource = Rewritten {
            v: &r.body,
            urns: transaction.then_some(self.urns),
            skip_id: transaction && r.identifier.is_some(),
        };
        // Directory resources are created once (`Write::CreateOnce`); a batch entry stands
        // alone and is referenced by its deterministic id, so it stays an update.
        m.serialize_entry("resource", &resource)?;
        match (transaction, r.write(), search_query(r)) {
            (true, Write::CreateOnce, Some(q)) => {
                m.serialize_entry("request", &Request::Create(r.resource_type, &q))?
            }
            _ => m.serialize_entry("request", &Request::Update(&request_url(r)))?,
        }
        m.end()
    }
}

enum Request<'b> {
    Create(&'b str, &'b str),
    Update(&'b str),
}

impl Serialize for Request<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Request::Create(kind, query) => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("method", "POST")?;
                m.serialize_entry("url", kind)?;
                m.serialize_entry("ifNoneExist", query)?;
                m.end()
            }
            Request::Update(url) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("method", "PUT")?;
                m.serialize_entry("url", url)?;
                m.end()
            }
        }
    }
}

/// A resource's JSON as a transaction entry holds it: references to the Bundle's entries as
/// their `urn:uuid:`s, and (for conditional writes) no `id`.
struct Rewritten<'b> {
    v: &'b Json,
    urns: Option<&'b [(&'b str, &'b str)]>,
    skip_id: bool,
}

impl Rewritten<'_> {
    fn child<'c>(&'c self, v: &'c Json) -> Rewritten<'c> {
        Rewritten {
            v,
            urns: self.urns,
            skip_id: false,
        }
    }

    /// `Type/id` of an entry → that entry's id.
    fn entry_id<'r>(&self, reference: &'r str) -> Option<&'r str> {
        let slash = reference.bytes().position(|b| b == b'/')?;
        let (kind, id) = (&reference[..slash], &reference[slash + 1..]);
        let urns = self.urns?;
        let i = urns.binary_search_by(|(u, _)| (*u).cmp(id)).ok()?;
        (urns[i].1 == kind).then_some(id)
    }
}

impl Serialize for Rewritten<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.urns.is_none() && !self.skip_id {
            return self.v.serialize(s);
        }
        match self.v {
            Json::Object(o) => {
                let skip = self.skip_id && o.contains_key("id");
                let mut m = s.serialize_map(Some(o.len() - usize::from(skip)))?;
                for (k, v) in o.iter() {
                    if skip && k == "id" {
                        continue;
                    }
                    match (k, v.as_str().and_then(|r| self.entry_id(r))) {
                        ("reference", Some(id)) => {
                            m.serialize_entry(k, &format_args!("urn:uuid:{id}"))?
                        }
                        _ => m.serialize_entry(k, &self.child(v))?,
                    }
                }
                m.end()
            }
            Json::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&self.child(v))?;
                }
                seq.end()
            }
            v => v.serialize(s),
        }
    }
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

/// Percent-encodes `s` onto `out`: all but unreserved characters and `:`/`/` (kept for
/// readable systems). A token's value is FHIR-escaped first (`\`, `|`, `,` and `$` get a
/// backslash), in the same pass.
fn encode_into(out: &mut String, s: &str, token: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let percent = |out: &mut String, b: u8| {
        out.push('%');
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    };
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            if token && matches!(b, b'\\' | b'|' | b',' | b'$') {
                percent(out, b'\\');
            }
            percent(out, b);
        }
    }
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
            body: body.into(),
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
        let b = bundle(vec![p.clone(), e.clone()], BundleType::Transaction).to_value();
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
        let b = bundle(vec![p, e], BundleType::Batch).to_value();
        assert_eq!(
            b["entry"][1]["resource"]["subject"]["reference"],
            "Patient/p1"
        );
        assert_eq!(b["entry"][0]["resource"]["id"], "p1");
    }
}
