//! HL7v2 → FHIR R4, following the HL7 v2-to-FHIR IG (STU1) mapping tables.
//!
//! Messages: ADT A01/A04/A08/A13 (the IG's ADT_A01 map; each DG1 a Condition), A03 (no IG map: handled like A01,
//! with the discharge setting the encounter finished), A02/A05/A11 and A28/A31 (ADT_A05, the
//! person-only events: no Encounter unless a real visit is sent) → Patient (+ Encounter);
//! A40 (merge) → the surviving Patient and the prior one, linked;
//! SIU S12–S26 (the IG's SIU_S12 map) → Patient (+ Encounter) + Appointment; ORU^R01 (the IG's ORU_R01
//! map) → Patient + a DiagnosticReport per OBR and an Observation per OBX; VXU^V04 (the IG's
//! VXU_V04 map) → Patient + an Immunization per order; ORM^O01/OML^O21 (the IG's ORM_O01 and
//! OML_O21 maps) → Patient (+ Encounter) + a ServiceRequest per order, its Specimens (SPM)
//! and supporting Observations; MDM T01–T11 (the IG's MDM_T02 map) → Patient (+ Encounter) +
//! DocumentReference; RDE^O11 → Patient (+ Encounter) + a MedicationRequest per order;
//! RAS^O17 → Patient (+ Encounter) + a MedicationAdministration per RXA (`medication`).
//! Practitioners, Locations and Organizations the message names are resources of their own
//! (`directory`).
//!
//! Every resource gets a deterministic id (a UUID derived from its business identifier) and
//! names that identifier, so that writers can use conditional updates
//! (`PUT Patient?identifier=system|value`) and a replay changes nothing. The comments cite
//! the IG rows implemented (`PID(Patient) r13` = row 13 of that segment map).

pub mod concepts;
pub mod datatypes;

mod appointment;
mod condition;
mod directory;
mod document;
mod encounter;
mod immunization;
mod medication;
mod observation;
mod patient;
mod service_request;
mod specimen;
mod us_core;

use std::collections::HashMap;

use crate::fhir::json::{Fields, Json, json};
use sha2::{Digest, Sha256};

use crate::formats::hl7::{Cwe, Hl7Error, Message, Segment, Zone};
pub use datatypes::Systems;

/// How messages are mapped (default: UTC, no namespace map).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where times sent without an offset are (FHIR requires an offset on every time).
    pub default_zone: Zone,
    pub systems: Systems,
    /// Which FHIR profile the resources follow beyond base R4.
    pub profile: Profile,
}

/// A profile set the mapping can follow (`profile:` in a `fhir` stage, `--profile`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Profile {
    /// Base R4 and the IG's maps.
    #[default]
    Base,
    /// US Core 6.1.0: race and ethnicity extensions, and `meta.profile` on a Patient that
    /// has what the profile requires (`us_core`).
    UsCore,
}

impl Profile {
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "base" => Some(Profile::Base),
            "us-core" => Some(Profile::UsCore),
            _ => None,
        }
    }
}

/// The tag a resource carries when one of its times was sent without an offset and the
/// integration's zone was assumed (`meta.tag`, display = the zone): a reader can tell an
/// instant the sender stated from one plexus inferred.
pub const ASSUMED_ZONE_TAG: &str = "urn:plexus:tag";

impl Options {
    /// Namespace → system URI overrides, e.g. `GHH=urn:oid:2.16.840.1.113883.3.72`.
    pub fn with_systems(mut self, map: HashMap<String, String>) -> Self {
        self.systems.by_namespace = std::sync::Arc::new(map);
        self
    }
}

/// One FHIR resource mapped from a message. Its body is the mapper's `Json` tree; a writer
/// that reads resources back from rows holds them as `serde_json::Value` (`B`).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource<B = Json> {
    pub resource_type: &'static str,
    /// Deterministic: the same business identifier always gives the same id.
    pub id: String,
    /// The business identifier (system, value) a conditional update matches on.
    pub identifier: Option<(String, String)>,
    /// The resource JSON, with `resourceType` and `id`; references to other resources of the
    /// same message are `Type/id`.
    pub body: B,
    /// Elements the message deletes (fields sent as the explicit null `""`): an update
    /// removes them from the server's resource (`crate::fhir::merge`).
    pub deleted: Vec<String>,
}

/// Every resource type the mappers emit.
pub const RESOURCE_TYPES: &[&str] = &[
    "Appointment",
    "Condition",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Immunization",
    "Location",
    "MedicationAdministration",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "ServiceRequest",
    "Specimen",
];

/// How a transaction Bundle writes a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Write {
    /// A conditional update on the business identifier: the message's content is current.
    #[default]
    Update,
    /// A conditional create (`ifNoneExist` on the identifier): directory resources
    /// (Practitioner, Location, Organization) that many messages name are created by the
    /// first and left to their owner after (`directory`).
    CreateOnce,
}

impl Write {
    /// By resource type: the same for a resource built here and a row read back.
    pub fn of(resource_type: &str) -> Write {
        match resource_type {
            "Practitioner" | "Location" | "Organization" => Write::CreateOnce,
            _ => Write::Update,
        }
    }
}

impl Resource {
    /// A resource of `kind` with `resourceType` and `id` first, then the mapped `fields`.
    pub(crate) fn new(
        kind: &'static str,
        id: String,
        identifier: Option<(String, String)>,
        fields: datatypes::Obj,
    ) -> Self {
        let mut body = fields.0;
        if body.spare() >= 2 {
            // Built with room (`Obj::resource`): the fields move up once, in place.
            body.append("resourceType", Json::from(kind));
            body.append("id", Json::from(id.as_str()));
            body.rotate_right(2);
        } else {
            let n = body.len() + 2;
            let fields = std::mem::replace(&mut body, Fields::with_capacity(n));
            body.append("resourceType", Json::from(kind));
            body.append("id", Json::from(id.as_str()));
            body.extend_unique(fields);
        }
        Resource {
            resource_type: kind,
            id,
            identifier,
            body: Json::Object(body),
            deleted: Vec::new(),
        }
    }
}

impl Resource {
    /// The same resource with its body as a `serde_json::Value`, as a writer reading rows
    /// holds it (`connectors::fhir::sync`).
    pub fn into_value(self) -> Resource<serde_json::Value> {
        Resource {
            resource_type: self.resource_type,
            body: self.body.to_value(),
            id: self.id,
            identifier: self.identifier,
            deleted: self.deleted,
        }
    }
}

impl<B> Resource<B> {
    /// `Type/id`: how resources of the same message refer to this one.
    pub fn reference(&self) -> String {
        let mut r = String::with_capacity(self.resource_type.len() + 1 + self.id.len());
        r.push_str(self.resource_type);
        r.push('/');
        r.push_str(&self.id);
        r
    }

    /// How a writer sends it: directory resources once, the rest as the message says.
    pub fn write(&self) -> Write {
        Write::of(self.resource_type)
    }
}

/// Why a message could not be mapped: the message, and where in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message_type} message {control_id}: {reason}")]
pub struct MappingError {
    pub message_type: String,
    pub control_id: String,
    pub reason: String,
}

/// A field named in an error (`PV1-19`), formatted only when an error is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldAt<'s>(pub &'s str, pub usize);

impl std::fmt::Display for FieldAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A business identifier (system, value) that names a resource.
pub(crate) type Key = (String, String);

/// What the mappers share about the message at hand.
pub(crate) struct Ctx<'m, 'a> {
    pub msg: &'m Message<'a>,
    pub opts: &'m Options,
    /// The trigger event (MSH-9.2, else EVN-1).
    pub event: String,
    /// The options' systems, scoped to this message's sender.
    pub systems: datatypes::Systems,
    /// Practitioners, Locations and Organizations the mappers referenced (`directory`).
    pub shared: std::cell::RefCell<Vec<Resource>>,
}

impl Ctx<'_, '_> {
    pub fn error(&self, reason: impl Into<String>) -> MappingError {
        MappingError {
            message_type: self.msg.message_type().into_owned(),
            control_id: self.msg.control_id().into_owned(),
            reason: reason.into(),
        }
    }

    /// An error of the element at `label` (e.g. `PID-7`).
    /// Where a read failed, formatted only when it did (a label built per read showed in the
    /// profile): `.map_err(cx.at("PID-7"))`, or `cx.at(FieldAt("PID", n))`.
    pub fn at<'s, L: std::fmt::Display + 's>(
        &'s self,
        label: L,
    ) -> impl Fn(Hl7Error) -> MappingError + 's {
        move |e| self.error(format!("{label}: {e}"))
    }

    /// A system for identifiers the sender sent without an assigning authority: scoped to the
    /// sending facility (MSH-4, else MSH-3) so that two senders' visit numbers never collide.
    pub fn local_system(&self, kind: &str) -> String {
        format!("urn:plexus:v2:{}:{kind}", self.systems.sender)
    }

    /// The first repetition of field `n` of `seg` as a CWE; `None` when not sent.
    pub fn cwe(&self, seg: &Segment<'_>, n: usize) -> Result<Option<Cwe>, MappingError> {
        let f = seg.field(n);
        if !f.is_present() || f.raw().is_empty() {
            return Ok(None);
        }
        Cwe::from_element(&f.repetition(1))
            .map(Some)
            .map_err(self.at(FieldAt(seg.id(), n)))
    }

    /// Every repetition of field `n` of `seg` that was sent, as a CWE.
    pub fn cwes(&self, seg: &Segment<'_>, n: usize) -> Result<Vec<Cwe>, MappingError> {
        let mut out = Vec::new();
        for rep in seg.field(n).repetitions() {
            if rep.is_present() && !rep.raw().is_empty() {
                out.push(Cwe::from_element(&rep).map_err(self.at(FieldAt(seg.id(), n)))?);
            }
        }
        Ok(out)
    }

    /// Business identifiers from EI fields of `seg`, in order of precedence: `(field, kind,
    /// v2-0203 type)` each, e.g. `(3, "order-filler", Some("FILL"))`. An id without an
    /// assigning authority is scoped to the sender (`local_system(kind)`). Returns the
    /// identifiers and the key (system, value) of the first one sent, which names the resource.
    pub fn business_ids(
        &self,
        seg: &Segment<'_>,
        fields: &[(usize, &str, Option<&str>)],
    ) -> Result<(Vec<Json>, Option<Key>), MappingError> {
        let mut ids = Vec::new();
        let mut key = None;
        for &(n, kind, code) in fields {
            let el = seg.field(n);
            let Some(mut v) = datatypes::entity_identifier(&el, &self.systems)
                .map_err(self.at(FieldAt(seg.id(), n)))?
            else {
                continue;
            };
            if v.get("system").is_none() {
                v["system"] = Json::from(self.local_system(kind));
            }
            if let Some(code) = code {
                v["type"] = json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]});
            }
            if key.is_none() {
                key = Some((
                    v["system"].as_str().unwrap_or_default().to_string(),
                    v["value"].as_str().unwrap_or_default().to_string(),
                ));
            }
            ids.push(v);
        }
        Ok((ids, key))
    }

    /// The first segment `id`, indexed: mappers read many of its fields.
    pub fn segment(&self, id: &str) -> Option<Segment<'_>> {
        self.msg.segment(id, 1).map(Segment::indexed)
    }

    /// Every segment, indexed.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        self.msg.segments().map(Segment::indexed)
    }

    /// Every segment `id`, indexed.
    pub fn segments_named(&self, id: [u8; 3]) -> impl Iterator<Item = Segment<'_>> + '_ {
        self.msg.segments_named(id).map(Segment::indexed)
    }
}

/// A UUID-shaped id derived from `parts` (SHA-256, version 5 and variant bits set): stable
/// across runs and machines, so a replay addresses the same resource.
pub fn stable_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    // Hex by table into one buffer: ids are made for every resource on the hot path, and
    // a `format!` per byte showed in the profile.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(HEX[usize::from(x >> 4)] as char);
        id.push(HEX[usize::from(x & 0x0f)] as char);
    }
    id
}

/// Maps one message to its resources: the Patient first, then the Practitioners, Locations
/// and Organizations it names, then the rest.
pub fn convert(msg: &Message<'_>, opts: &Options) -> Result<Vec<Resource>, MappingError> {
    let code = msg.message_code().into_owned();
    // MSH-9.2; EVN-1 only when it is missing (EVN-1 is kept for backward compatibility
    // since v2.5, and senders leave it stale: the corpus's A04 and A08 say A01 there).
    let event = match msg.trigger_event().into_owned() {
        e if !e.is_empty() => e,
        _ => msg
            .segment("EVN", 1)
            .and_then(|e| datatypes::text(&e.field(1)).ok().flatten())
            .unwrap_or_default(),
    };
    let msh = msg.segment("MSH", 1);
    let sender = msh
        .as_ref()
        .and_then(|m| datatypes::text(&m.field(4).component(1)).ok().flatten())
        .or_else(|| {
            msh.as_ref()
                .and_then(|m| datatypes::text(&m.field(3).component(1)).ok().flatten())
        })
        .unwrap_or_else(|| "unknown".into());
    let cx = Ctx {
        msg,
        opts,
        event: event.clone(),
        systems: datatypes::Systems {
            by_namespace: opts.systems.by_namespace.clone(),
            // Once per message: every local system names it.
            sender: datatypes::urn_safe(&sender),
        },
        // An ADT names tens of places and people: no regrowth of 144-byte resources.
        shared: std::cell::RefCell::new(Vec::with_capacity(32)),
    };
    let mut out = map_message(&cx, &code, &event)?;
    // A resource two parts of a message name (one specimen for two orders) is sent once.
    // Directory resources need no such check: `known` shares each once, and their types
    // are never the mappers' own.
    if out.len() > 1 {
        let mut seen = std::collections::HashSet::with_capacity(out.len());
        let keep: Vec<bool> = out
            .iter()
            .map(|r| seen.insert((r.resource_type, r.id.as_str())))
            .collect();
        let mut keep = keep.into_iter();
        out.retain(|_| keep.next().unwrap_or(true));
    }
    // Directory resources right after the patient: a writer that sends rows in order
    // creates them before the resources that reference them.
    let shared = cx.shared.take();
    debug_assert!(
        shared
            .iter()
            .all(|s| out.iter().all(|r| r.resource_type != s.resource_type))
    );
    let at = out.len().min(1);
    out.splice(at..at, shared);
    Ok(out)
}

fn map_message(cx: &Ctx<'_, '_>, code: &str, event: &str) -> Result<Vec<Resource>, MappingError> {
    let zone = cx.opts.default_zone;
    datatypes::take_assumed_zone();
    match (code, event) {
        ("ADT", "A01" | "A02" | "A03" | "A04" | "A05" | "A08" | "A11" | "A13" | "A28" | "A31") => {
            // DG1 → Condition (ADT_A01 rows 49–50), listed on the Encounter.
            let patient = tagged(patient::map(cx)?, zone);
            let mut encounter = encounter::map(cx, &patient)?.map(|e| tagged(e, zone));
            let conditions = condition::map(cx, &patient, encounter.as_mut())?;
            let mut out = vec![patient];
            out.extend(conditions);
            out.extend(encounter);
            Ok(out)
        }
        ("ORU", "R01") => {
            let patient = tagged(patient::map(cx)?, zone);
            let mut out = observation::map(cx, &patient)?;
            out.insert(0, patient);
            Ok(out)
        }
        ("ADT", "A40") => {
            let mut patient = tagged(patient::map(cx)?, zone);
            let prior = patient::merged(cx, &mut patient)?;
            let mut out = vec![patient];
            out.extend(prior);
            Ok(out)
        }
        ("MDM", e) if is_mdm_event(e) => with_visit(cx, |p, e| {
            // The order the document answers (MDM_T02's COMMON_ORDER: ORC/OBR), written
            // before the document that references it.
            let sent = cx.segment("ORC").is_some() || cx.segment("OBR").is_some();
            let mut out = if sent {
                service_request::map(cx, p, e, false)?
            } else {
                Vec::new()
            };
            let mut doc = document::map(cx, p, e)?;
            document::relate(&mut doc, &out);
            out.push(doc);
            Ok(out)
        }),
        ("ORM", "O01") | ("OML", "O21") => {
            with_visit(cx, |p, e| service_request::map(cx, p, e, true))
        }
        ("RDE", "O11") | ("RAS", "O17") => with_visit(cx, |p, e| medication::map(cx, p, e)),
        ("VXU", "V04") => {
            let patient = tagged(patient::map(cx)?, zone);
            let mut out = immunization::map(cx, &patient)?;
            out.insert(0, patient);
            Ok(out)
        }
        ("SIU", e) if is_siu_event(e) => {
            // PV1 → Encounter (SIU_S12 4.2), which names the appointment it is for.
            let patient = tagged(patient::map(cx)?, zone);
            let appointment = tagged(appointment::map(cx, &patient)?, zone);
            let mut encounter = encounter::map(cx, &patient)?.map(|e| tagged(e, zone));
            if let Some(e) = &mut encounter {
                e.body["appointment"] =
                    json!([{"reference": appointment.reference()}]);
            }
            // PATIENT.DG1 → Condition (SIU_S12 row 21).
            let conditions = condition::map(cx, &patient, encounter.as_mut())?;
            let mut out = vec![patient];
            out.extend(conditions);
            out.extend(encounter);
            out.push(appointment);
            Ok(out)
        }
        _ => Err(cx.error(format!(
            "no FHIR mapping for {code}^{event} (mapped: ADT A01–A05, A08, A11, A13, A28, A31, A40; ORU R01; ORM O01; OML O21; RDE O11; RAS O17; MDM T01–T11; SIU S12–S26; VXU V04)"
        ))),
    }
}

/// The Patient, the Encounter of its PV1 (if any) and what `rest` maps for them.
fn with_visit(
    cx: &Ctx<'_, '_>,
    rest: impl FnOnce(&Resource, Option<&Resource>) -> Result<Vec<Resource>, MappingError>,
) -> Result<Vec<Resource>, MappingError> {
    let zone = cx.opts.default_zone;
    let patient = tagged(patient::map(cx)?, zone);
    let encounter = encounter::map(cx, &patient)?.map(|e| tagged(e, zone));
    let more = rest(&patient, encounter.as_ref())?;
    let mut out = vec![patient];
    out.extend(encounter);
    out.extend(more);
    Ok(out)
}

/// Tags a resource whose mapping assumed `zone` for a time sent without an offset.
fn tagged(mut r: Resource, zone: Zone) -> Resource {
    if datatypes::take_assumed_zone() {
        // Beside a profile claim, if any.
        r.body["meta"]["tag"] = json!([{
            "system": ASSUMED_ZONE_TAG,
            "code": "assumed-timezone",
            "display": format!("times sent without an offset are in {zone}"),
        }]);
    }
    r
}

fn is_mdm_event(e: &str) -> bool {
    e.strip_prefix('T')
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| (1..=11).contains(&n))
}

fn is_siu_event(e: &str) -> bool {
    e.strip_prefix('S')
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| (12..=26).contains(&n))
}

/// The mappers' unit tests: a message's resources apart from the Practitioners, Locations
/// and Organizations it names (the second list), in order.
#[cfg(test)]
pub(crate) fn split_directory(rs: Vec<Resource>) -> (Vec<Resource>, Vec<Resource>) {
    rs.into_iter().partition(|r| r.write() == Write::Update)
}

/// The mappers' unit tests: the body of the resource a Reference (`{"reference": …}`) names.
#[cfg(test)]
pub(crate) fn resolve<'r>(rs: &'r [Resource], reference: &Json) -> &'r Json {
    let name = reference["reference"]
        .as_str()
        .unwrap_or_else(|| panic!("not a reference: {reference}"));
    rs.iter()
        .find(|r| format!("{}/{}", r.resource_type, r.id) == name)
        .map(|r| &r.body)
        .unwrap_or_else(|| panic!("{name} is not among the resources"))
}

/// A sample message of `tests/data/corpus` (the mappers' unit tests).
#[cfg(test)]
pub(crate) fn corpus(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #15 item 16: a PID-3 without an assigning authority is converted, with a system scoped
    /// to the sender (MSH-4), instead of the message being rejected.
    #[test]
    fn a_patient_id_without_authority_is_scoped_to_the_sender() {
        let raw = b"MSH|^~\\&|APP|GHH|B|C|20260101||ADT^A04|X1|P|2.5\rPID|1||12345^^^^MR||DOE^JANE||19800102|F\r";
        let m = Message::parse(raw).unwrap();
        let rs = convert(&m, &Options::default()).unwrap();
        assert_eq!(
            rs[0].identifier,
            Some(("urn:plexus:v2:GHH:patient".to_string(), "12345".to_string()))
        );
        assert_eq!(
            rs[0].body["identifier"][0]["system"],
            "urn:plexus:v2:GHH:patient"
        );
    }

    /// Resources are written in FHIR's order, `resourceType` then `id` first, on every
    /// corpus message that maps; a Bundle starts with its own `resourceType` and `type`.
    #[test]
    fn resources_are_written_resource_type_and_id_first() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let raw = std::fs::read(entry.unwrap().path()).unwrap();
            let Ok(m) = Message::parse(&raw) else {
                continue;
            };
            let Ok(rs) = convert(&m, &Options::default()) else {
                continue;
            };
            for r in &rs {
                let mut out = Vec::new();
                r.body.write(&mut out);
                let head = format!(r#"{{"resourceType":"{}","id":"{}","#, r.resource_type, r.id);
                assert!(
                    out.starts_with(head.as_bytes()),
                    "{}",
                    String::from_utf8_lossy(&out)
                );
                seen += 1;
            }
            let b = crate::fhir::bundle::bundle(rs, crate::fhir::bundle::BundleType::Batch);
            assert!(
                b.to_vec().starts_with(
                    br#"{"resourceType":"Bundle","type":"batch","entry":[{"fullUrl":"#
                )
            );
        }
        assert!(seen > 100, "{seen} resources");
    }

    #[test]
    fn stable_ids_are_uuid_shaped_and_stable() {
        let a = stable_id(&["Patient", "urn:oid:1.2", "123"]);
        assert_eq!(a, stable_id(&["Patient", "urn:oid:1.2", "123"]));
        assert_ne!(a, stable_id(&["Patient", "urn:oid:1.2", "124"]));
        // Parts are separated: ("ab","c") and ("a","bc") differ.
        assert_ne!(stable_id(&["ab", "c"]), stable_id(&["a", "bc"]));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "5");
    }
}
