//! Practitioner (XCN), Location (PL) and Organization (XON, CWE) as resources of their own,
//! per the IG's XCN[Practitioner], PL[Location] and XON[Organization] maps.
//!
//! Many messages name the same doctor, ward or manufacturer, and a registry elsewhere (the
//! EHR's provider directory) usually owns them. So these resources are written with a
//! conditional create (`Write::CreateOnce`: `ifNoneExist` on their identifier in a
//! transaction Bundle): the first message that names one creates it, later ones reference the
//! existing one and never overwrite what its owner curated. A person or place sent without
//! an identifier cannot be matched across messages; it stays a reference with a display.

use crate::fhir::json::{Json, json};

use super::datatypes::{Obj, entity_identifier, human_name, identifier_type, text};
use super::{Ctx, Resource, stable_id};
use crate::formats::hl7::{Cwe, Element, Hd, Hl7Error, Xpn};

const PHYSICAL_TYPE: &str = "http://terminology.hl7.org/CodeSystem/location-physical-type";
const DEGREE: &str = "http://terminology.hl7.org/CodeSystem/v2-0360";

/// PL components from least to most granular (the IG's default sequence, read backwards:
/// bed → room → floor → point of care → building → facility), with the physical type the
/// IG assigns (none for a point of care: the IG leaves it to an extension it has not defined).
const PL_LEVELS: [(usize, &str, Option<&str>); 6] = [
    (4, "facility", Some("si")),
    (7, "building", Some("bu")),
    (1, "point-of-care", None),
    (8, "floor", Some("lvl")),
    (2, "room", Some("ro")),
    (3, "bed", Some("bd")),
];

impl Ctx<'_, '_> {
    /// A directory resource of this message, sent once however often the message names it.
    fn share(&self, r: Resource) -> Json {
        let reference = Json::from(r.reference());
        self.shared.borrow_mut().push(r);
        reference
    }

    /// The reference to the `kind` with business identifier (system, value) when the
    /// message has already shared it: messages name the same doctor and ward many times over
    /// (PV1-7/8/9/17, PV1-3 and PV1-6 share their facility), and the first naming builds it.
    /// Matched on the identifier the id is derived from, so a repeat is not hashed again.
    fn known(&self, kind: &str, system: &str, value: &str) -> Option<Json> {
        let shared = self.shared.borrow();
        shared
            .iter()
            .find(|r| {
                r.resource_type == kind
                    && r.identifier
                        .as_ref()
                        .is_some_and(|(s, v)| s == system && v == value)
            })
            .map(|r| Json::from(r.reference()))
    }

    /// XCN → a Reference to a Practitioner (XCN[Practitioner]): identifier XCN-1 (r1) with
    /// system from XCN-9 (r9) and type XCN-13 (r13); name XCN-2..6, XCN-10 use, XCN-21
    /// professional suffix (r2–6, r10, r21); XCN-7 degree as qualification (r7). Without
    /// XCN-1 the person cannot be matched across messages: a display-only reference.
    pub fn practitioner(&self, el: &Element<'_>) -> Result<Option<Json>, Hl7Error> {
        let c: [Element<'_>; 21] = el.components();
        let person = Person {
            id: text(&c[0])?,
            name: Xpn {
                family: text(&c[1].subcomponent(1))?,
                given: text(&c[2])?,
                middle: text(&c[3])?,
                suffix: text(&c[4])?,
                prefix: text(&c[5])?,
                degree: text(&c[20])?,
                name_type_code: text(&c[9])?,
            },
            degree: text(&c[6])?,
            authority: hd(&c[8], 1)?,
            id_type: text(&c[12])?,
        };
        Ok(self.practitioner_of(person))
    }

    /// CNN (the person of an NDL, e.g. OBR-32, as sub-components of its first component):
    /// like XCN, with the assigning authority flattened into CNN-9..11.
    pub fn practitioner_cnn(&self, el: &Element<'_>) -> Result<Option<Json>, Hl7Error> {
        let part = crate::formats::hl7::datatypes::embedded_reader(el);
        let person = Person {
            id: text(&part(1))?,
            name: Xpn {
                family: text(&part(2))?,
                given: text(&part(3))?,
                middle: text(&part(4))?,
                suffix: text(&part(5))?,
                prefix: text(&part(6))?,
                degree: None,
                name_type_code: None,
            },
            degree: text(&part(7))?,
            authority: Hd {
                namespace_id: text(&part(9))?,
                universal_id: text(&part(10))?,
                universal_id_type: text(&part(11))?,
            },
            id_type: None,
        };
        Ok(self.practitioner_of(person))
    }

    fn practitioner_of(&self, p: Person) -> Option<Json> {
        let display = Some(p.name.display()).filter(|d| !d.is_empty());
        let Some(value) = p.id else {
            return display.map(|d| json!({"display": d}));
        };
        let system = self
            .systems
            .system(&p.authority)
            .unwrap_or_else(|| self.local_system("practitioner"));
        if let Some(reference) = self.known("Practitioner", &system, &value) {
            return Some(named(reference, display));
        }
        let id = stable_id(&["Practitioner", &system, &value]);
        let body = Obj::resource(3)
            .set(
                "identifier",
                Json::Array(vec![
                    Obj::new()
                        .set("type", p.id_type.map(|t| identifier_type(&t)))
                        .set("system", Json::from(system.as_str()))
                        .set("value", Json::from(value.as_str()))
                        .into_value(),
                ]),
            )
            .set("name", human_name(&p.name).map(|n| Json::Array(vec![n])))
            .set(
                "qualification",
                p.degree
                    .map(|d| json!([{"code": {"coding": [{"system": DEGREE, "code": d}]}}])),
            );
        let r = Resource::new("Practitioner", id, Some((system, value)), body);
        Some(named(self.share(r), display))
    }

    /// PL → a Reference to the most granular Location sent (PL[Location]): one Location per
    /// component (r1–r33), each `partOf` the next less granular one, mode `instance`, with
    /// the IG's physical type; PL-9 description and PL-10 identifier on the most granular
    /// (r34–r40). A component's own value ("bed 1") names many beds; its identifier is the
    /// path from the facility down (`facility:GHH/room:101/bed:1`) in the sender's location
    /// system, so each bed is one Location across messages.
    pub fn location(&self, el: &Element<'_>) -> Result<Option<Json>, Hl7Error> {
        self.place(el, true)
    }

    /// LA2 (RXA-11: PL's first eight components, then an address) → a Reference to a
    /// Location, as `location` without PL-9/PL-10.
    pub fn location_la2(&self, el: &Element<'_>) -> Result<Option<Json>, Hl7Error> {
        self.place(el, false)
    }

    fn place(&self, el: &Element<'_>, pl: bool) -> Result<Option<Json>, Hl7Error> {
        let system = self.local_system("location");
        let mut levels = Vec::with_capacity(PL_LEVELS.len());
        let c: [Element<'_>; 8] = el.components();
        for (n, level, physical) in PL_LEVELS {
            if let Some(name) = text(&c[n - 1].subcomponent(1))? {
                levels.push((level, physical, name));
            }
        }
        // `facility:…/building:…/…/bed:…`: sized for the usual path, grown only for a long one.
        let mut path = String::with_capacity(128);
        let mut parent: Option<Json> = None;
        let mut last: Option<Resource> = None;
        let count = levels.len();
        for (i, (level, physical, name)) in levels.into_iter().enumerate() {
            if let Some(done) = last.take() {
                parent = Some(reference_to(self.share(done)));
            }
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(level);
            path.push(':');
            path.push_str(&name);
            // A level already in the message: its reference will do. (For the one referenced,
            // the first naming's PL-9/PL-10 stand: a message sends a resource once.)
            if let Some(reference) = self.known("Location", &system, &path) {
                if i + 1 == count {
                    // (Its levels were shared with it; a level built just now is kept.)
                    if let Some(done) = last.take() {
                        self.share(done);
                    }
                    let display = super::datatypes::location_display(el)?;
                    return Ok(Some(named(reference, display)));
                }
                parent = Some(reference_to(reference));
                continue;
            }
            let id = stable_id(&["Location", &system, &path]);
            let body = Obj::resource(6)
                .set(
                    "identifier",
                    json!([{"system": system.as_str(), "value": path.as_str()}]),
                )
                .set("name", Json::from(name))
                .set("mode", Json::from("instance"))
                .set(
                    "physicalType",
                    physical
                        .map(|code| json!({"coding": [{"system": PHYSICAL_TYPE, "code": code}]})),
                )
                .set("partOf", parent.clone());
            last = Some(Resource::new(
                "Location",
                id,
                Some((system.clone(), path.clone())),
                body,
            ));
        }
        let Some(mut most) = last else {
            return Ok(None);
        };
        if pl && let Json::Object(o) = &mut most.body {
            if let Some(d) = text(&el.component(9))? {
                o.insert("description", Json::from(d));
            }
            if let Some(ei) = entity_identifier(&el.component(10), &self.systems)?
                && let Some(Json::Array(ids)) = o.get_mut("identifier")
            {
                ids.push(ei);
            }
        }
        let display = super::datatypes::location_display(el)?;
        Ok(Some(named(self.share(most), display)))
    }

    /// XON → a Reference to an Organization (XON[Organization]): name XON-1 (r1),
    /// identifier XON-10, else XON-3 (r3, r10), system from XON-6 (r6), type XON-7 (r7).
    /// Without an identifier: a display-only reference.
    pub fn organization(&self, el: &Element<'_>) -> Result<Option<Json>, Hl7Error> {
        let name = text(&el.component(1))?;
        let value = match text(&el.component(10))? {
            Some(v) => Some(v),
            None => text(&el.component(3))?,
        };
        let Some(value) = value else {
            return Ok(name.map(|n| json!({"display": n})));
        };
        let system = self
            .systems
            .system(&hd(&el.component(6), 1)?)
            .unwrap_or_else(|| self.local_system("organization"));
        let identifier = Obj::new()
            .set("type", text(&el.component(7))?.map(|t| identifier_type(&t)))
            .set("system", Json::from(system.as_str()))
            .set("value", Json::from(value.as_str()))
            .into_value();
        Ok(Some(self.organization_of(system, value, identifier, name)))
    }

    /// CWE → a Reference to an Organization (CWE[Organization]: identifier CWE-1 in the
    /// system CWE-3 names, name CWE-2), e.g. a vaccine manufacturer by its MVX code.
    pub fn organization_coded(&self, c: &Cwe) -> Option<Json> {
        let value = c.identifier.clone()?;
        let system = c
            .coding_system
            .as_deref()
            .and_then(super::concepts::coding_system)
            .unwrap_or_else(|| self.local_system("organization"));
        let identifier = json!({"system": system.as_str(), "value": value.as_str()});
        Some(self.organization_of(system, value, identifier, c.text.clone()))
    }

    fn organization_of(
        &self,
        system: String,
        value: String,
        identifier: Json,
        name: Option<String>,
    ) -> Json {
        let reference = match self.known("Organization", &system, &value) {
            Some(reference) => reference,
            None => {
                let id = stable_id(&["Organization", &system, &value]);
                let body = Obj::resource(2)
                    .set("identifier", Json::Array(vec![identifier]))
                    .set("name", name.clone().map(Json::from));
                let r = Resource::new("Organization", id, Some((system, value)), body);
                self.share(r)
            }
        };
        named(reference, name)
    }
}

/// `{"reference": …}`.
fn reference_to(reference: Json) -> Json {
    json!({ "reference": reference })
}

/// A Reference to a shared resource, with the display the message gave it.
fn named(reference: Json, display: Option<String>) -> Json {
    Obj::new()
        .set("reference", reference)
        .set("display", display.map(Json::from))
        .into_value()
}

/// A person as XCN and CNN carry one.
struct Person {
    id: Option<String>,
    name: Xpn,
    degree: Option<String>,
    authority: Hd,
    id_type: Option<String>,
}

/// The HD whose parts are the sub-components of `el`, from sub-component `first`.
fn hd(el: &Element<'_>, first: usize) -> Result<Hd, Hl7Error> {
    Ok(Hd {
        namespace_id: text(&el.subcomponent(first))?,
        universal_id: text(&el.subcomponent(first + 1))?,
        universal_id_type: text(&el.subcomponent(first + 2))?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Options, Resource, Write, convert};
    use crate::fhir::bundle::{BundleType, bundle};
    use crate::formats::hl7::Message;

    fn map(raw: &[u8]) -> Vec<Resource> {
        convert(&Message::parse(raw).unwrap(), &Options::default()).unwrap()
    }

    fn find<'r>(rs: &'r [Resource], reference: &crate::fhir::json::Json) -> &'r Resource {
        let reference = reference.as_str().unwrap();
        rs.iter()
            .find(|r| format!("{}/{}", r.resource_type, r.id) == reference)
            .unwrap_or_else(|| panic!("{reference} is not in the message's resources"))
    }

    /// PV1-3 `HUH AE OMU&9.8&ISO^OMU B^Bed 03^HOMERTON UNIVER^^C^Homerton UH^Floor5`: a
    /// Location per component, bed → room → floor → point of care → building → facility.
    #[test]
    fn a_pl_is_a_hierarchy_of_locations_referenced_at_the_most_granular() {
        let rs = map(&super::super::corpus("ADT-A01-01.hl7"));
        let enc = rs.iter().find(|r| r.resource_type == "Encounter").unwrap();
        let mut at = find(&rs, &enc.body["location"][0]["location"]["reference"]);
        let mut chain = Vec::new();
        loop {
            assert_eq!(at.body["mode"], "instance");
            assert_eq!(at.write(), Write::CreateOnce);
            chain.push((
                at.body["name"].as_str().unwrap().to_string(),
                at.body["physicalType"]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            ));
            match at.body.get("partOf") {
                Some(p) => at = find(&rs, &p["reference"]),
                None => break,
            }
        }
        let names: Vec<(&str, &str)> = chain.iter().map(|(n, t)| (&n[..], &t[..])).collect();
        assert_eq!(
            names,
            [
                ("Bed 03", "bd"),
                ("OMU B", "ro"),
                ("Floor5", "lvl"),
                ("HUH AE OMU", ""),
                ("Homerton UH", "bu"),
                ("HOMERTON UNIVER", "si"),
            ]
        );
        let bed = find(&rs, &enc.body["location"][0]["location"]["reference"]);
        assert_eq!(
            bed.identifier.as_ref().unwrap(),
            &(
                "urn:plexus:v2:GHHSFacility:location".to_string(),
                "facility:HOMERTON UNIVER/building:Homerton UH/point-of-care:HUH AE OMU/\
                 floor:Floor5/room:OMU B/bed:Bed 03"
                    .to_string()
            )
        );
        // The same place in another message is the same resource.
        let again = map(&super::super::corpus("ADT-A01-01.hl7"));
        assert!(again.iter().any(|r| r.id == bed.id));
    }

    /// PD1-4 `88^Hippo^rold^H^V^Dr^MD^^TE` and PD1-3 `LINDAS TEST ORGANIZATION^^SIISCLIENT818`.
    #[test]
    fn xcn_and_xon_become_practitioner_and_organization_resources() {
        let rs = map(&super::super::corpus("ADT-A01-01.hl7"));
        let gp = &rs[0].body["generalPractitioner"];
        let doc = find(&rs, &gp[0]["reference"]);
        assert_eq!(doc.resource_type, "Practitioner");
        assert_eq!(doc.body["identifier"][0]["value"], "88");
        assert_eq!(
            doc.body["identifier"][0]["system"],
            "urn:plexus:v2:GHHSFacility:authority:TE"
        );
        assert_eq!(doc.body["name"][0]["family"], "Hippo");
        assert_eq!(doc.body["name"][0]["given"][0], "rold");
        assert_eq!(doc.body["name"][0]["prefix"][0], "Dr");
        assert_eq!(
            doc.body["qualification"][0]["code"]["coding"][0]["code"],
            "MD"
        );
        assert_eq!(gp[0]["display"], "Dr rold H Hippo V");
        let org = find(&rs, &gp[1]["reference"]);
        assert_eq!(org.resource_type, "Organization");
        assert_eq!(org.body["name"], "LINDAS TEST ORGANIZATION");
        assert_eq!(org.body["identifier"][0]["value"], "SIISCLIENT818");
        // Each resource once, right after the patient.
        let mut seen = std::collections::HashSet::new();
        assert!(
            rs.iter()
                .all(|r| seen.insert((r.resource_type, r.id.clone())))
        );
        assert_eq!(rs[0].resource_type, "Patient");
    }

    /// A person without XCN-1 cannot be matched across messages: a display, no resource.
    #[test]
    fn a_person_without_an_identifier_is_a_display_only_reference() {
        let raw = b"MSH|^~\\&|APP|GHH|B|C|20260101||ADT^A01|X1|P|2.5\rPID|1||12345^^^GHH^MR||DOE^JANE\rPV1|1|I|||||^SMITH^ANN\r";
        let rs = map(raw);
        let enc = rs.iter().find(|r| r.resource_type == "Encounter").unwrap();
        let who = &enc.body["participant"][0]["individual"];
        assert_eq!(who["display"], "ANN SMITH");
        assert!(who.get("reference").is_none());
        assert!(!rs.iter().any(|r| r.resource_type == "Practitioner"));
    }

    /// In a transaction, directory resources are conditional creates and the rest
    /// conditional updates; references go through the entries' `urn:uuid:`s.
    #[test]
    fn transactions_create_directory_resources_once() {
        let rs = map(&super::super::corpus("ADT-A01-01.hl7"));
        let b = bundle(rs, BundleType::Transaction).to_value();
        let entries = b["entry"].as_array().unwrap();
        let doc = entries
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Practitioner")
            .unwrap();
        assert_eq!(doc["request"]["method"], "POST");
        assert_eq!(doc["request"]["url"], "Practitioner");
        assert_eq!(
            doc["request"]["ifNoneExist"],
            "identifier=urn:plexus:v2:GHHSFacility:authority:TE|88"
        );
        assert!(doc["resource"].get("id").is_none());
        let patient = &entries[0];
        assert_eq!(patient["request"]["method"], "PUT");
        assert_eq!(
            patient["resource"]["generalPractitioner"][0]["reference"],
            doc["fullUrl"]
        );
    }
}
