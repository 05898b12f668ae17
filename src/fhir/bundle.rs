//! Transaction and batch Bundles whose entries are conditional updates on business
//! identifiers (`PUT Patient?identifier=system|value`): the receiving server creates a
//! resource the first time and updates the same one after, so a replayed message changes
//! nothing and never duplicates a patient. Practitioners, Locations and Organizations are
//! conditional creates (`ifNoneExist`) in a transaction: made once, never overwritten.

use std::collections::HashMap;

use serde_json::Value;

use super::json::write_str;
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
/// message on the hot path). It is written straight to bytes (`Bundle::write`): entries,
/// requests and the transaction's `urn:uuid:` references are produced while writing, not
/// built as a tree first (building it was most of the Bundle's cost).
pub fn bundle(resources: Vec<Resource>, kind: BundleType) -> Bundle {
    Bundle { resources, kind }
}

/// A Bundle of one message's resources.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub resources: Vec<Resource>,
    pub kind: BundleType,
}

impl Bundle {
    /// The Bundle as compact JSON appended to `out`, in the order of FHIR's own JSON
    /// (`resourceType` first, then `type`, then the entries: `fullUrl`, `resource`,
    /// `request`).
    pub fn write(&self, out: &mut Vec<u8>) {
        let transaction = self.kind == BundleType::Transaction;
        // Transactions refer to entries by their `urn:uuid:` full URLs: id → type, borrowed,
        // sorted by id for a binary search per reference (a message has tens of entries).
        let mut urns: Vec<(&str, &str)> = match self.kind {
            BundleType::Transaction => self
                .resources
                .iter()
                .map(|r| (r.id.as_str(), r.resource_type))
                .collect(),
            BundleType::Batch => Vec::new(),
        };
        urns.sort_unstable();
        // `Type/id` of an entry → `urn:uuid:id`.
        let to_urn = |reference: &str, out: &mut Vec<u8>| {
            let Some(slash) = reference.bytes().position(|b| b == b'/') else {
                return false;
            };
            let (kind, id) = (&reference[..slash], &reference[slash + 1..]);
            match urns.binary_search_by(|(u, _)| (*u).cmp(id)) {
                Ok(i)
                    if urns[i].1 == kind
                        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    out.extend_from_slice(b"urn:uuid:");
                    out.extend_from_slice(id.as_bytes());
                    true
                }
                _ => false,
            }
        };
        let keep = |_: &str, _: &mut Vec<u8>| false;
        out.extend_from_slice(br#"{"resourceType":"Bundle","type":"#);
        write_str(out, self.kind.as_str());
        out.extend_from_slice(br#","entry":["#);
        for (i, r) in self.resources.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"fullUrl":"#);
            write_str(out, &format!("urn:uuid:{}", r.id));
            out.extend_from_slice(br#","resource":"#);
            // A conditional write must not carry an id the match might contradict.
            if transaction {
                r.body.write_entry(out, r.identifier.is_some(), &to_urn);
            } else {
                r.body.write_entry(out, false, &keep);
            }
            out.extend_from_slice(br#","request":{"method":"#);
            // Directory resources are created once (`Write::CreateOnce`); a batch entry
            // stands alone and is referenced by its deterministic id, so it stays an update.
            match (transaction, r.write(), search_query(r)) {
                (true, Write::CreateOnce, Some(q)) => {
                    out.extend_from_slice(br#""POST","url":"#);
                    write_str(out, r.resource_type);
                    out.extend_from_slice(br#","ifNoneExist":"#);
                    write_str(out, &q);
                }
                _ => {
                    out.extend_from_slice(br#""PUT","url":"#);
                    write_str(out, &request_url(r));
                }
            }
            out.extend_from_slice(b"}}");
        }
        out.extend_from_slice(b"]}");
    }

    /// The Bundle's JSON.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        self.write(&mut out);
        out
    }

    /// The Bundle as a JSON tree (for readers that walk it; writers use `write`).
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.to_vec()).unwrap_or(Value::Null)
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
