//! PID (+ PD1, NK1) → Patient: the IG's `PID(Patient)`, `PD1(Patient)` and `NK1(Patient)`.

use crate::fhir::json::{Json, json};

use super::datatypes::{
    Obj, address, codeable_concept, contact_point, date, date_time, human_name, identifier,
    identifier_type, language, mapped_concept, text,
};
use super::{Ctx, MappingError, Resource, concepts, stable_id};
use crate::formats::hl7::{Cwe, Cx, Segment, Ts, Xad, Xpn, Xtn};

pub(super) fn map(cx: &Ctx<'_, '_>) -> Result<Resource, MappingError> {
    let pid = cx
        .segment("PID")
        .ok_or_else(|| cx.error("no PID segment: nothing identifies the patient"))?;
    let offset = cx.opts.default_zone;
    let mut p = Obj::resource(22);

    let key = identifiers(cx, &pid, &mut p)?;
    let id = stable_id(&["Patient", &key.0, &key.1]);

    // Names: PID-5 (r7), then aliases PID-9 (r14).
    for n in [5, 9] {
        for rep in pid.field(n).repetitions() {
            let x = Xpn::from_element(&rep).map_err(cx.at(super::FieldAt("PID", n)))?;
            p.push("name", human_name(&x));
        }
    }
    // PID-6 mother's maiden name (r8–9): the family name as a string extension.
    if let Some(maiden) =
        text(&pid.field(6).component(1).subcomponent(1)).map_err(cx.at("PID-6"))?
    {
        p.push(
            "extension",
            json!({"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": maiden}),
        );
    }
    // PID-8 (r13, AdministrativeSex). An unmapped code leaves gender out rather than guess.
    if let Some(sex) = text(&pid.field(8).component(1)).map_err(cx.at("PID-8"))? {
        p.put("gender", concepts::gender(&sex).map(Json::from));
    }
    // PID-7 (r10–12): the date at its precision; the time as the birthTime extension.
    if let Some(ts) = Ts::from_element(&pid.field(7)).map_err(cx.at("PID-7"))? {
        p.put("birthDate", Some(Json::from(date(&ts))));
        if ts.precision() > crate::formats::hl7::Precision::Day {
            p.put(
                "_birthDate",
                Some(json!({"extension": [{
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": date_time(&ts, offset)
                }]})),
            );
        }
    }
    // PID-29 / PID-30 (r49–50).
    match Ts::from_element(&pid.field(29)).map_err(cx.at("PID-29"))? {
        Some(ts) => p.put("deceasedDateTime", Some(Json::from(date_time(&ts, offset)))),
        None => {
            if let Some(flag) = text(&pid.field(30)).map_err(cx.at("PID-30"))? {
                p.put("deceasedBoolean", concepts::yes_no(&flag).map(Json::from));
            }
        }
    }
    let addresses = addresses(cx, &pid)?;
    p.put("address", Some(Json::Array(addresses)));
    // Telecom: PID-13 home (r21–22), PID-14 work (r23–24), PID-40 (r66).
    for (n, default_use) in [(13, Some("home")), (14, Some("work")), (40, None)] {
        for rep in pid.field(n).repetitions() {
            let x = Xtn::from_element(&rep).map_err(cx.at(super::FieldAt("PID", n)))?;
            p.push("telecom", contact_point(&x, default_use));
        }
    }
    // PID-15 language (r25), PID-16 marital status (r26), PID-17 religion (r27–28).
    if let Some(lang) = cx.cwe(&pid, 15)?.as_ref().and_then(language) {
        p.push("communication", json!({"language": lang}));
    }
    if let Some(ms) = cx.cwe(&pid, 16)? {
        p.put(
            "maritalStatus",
            mapped_concept(&ms, concepts::marital_status, "0002"),
        );
    }
    if let Some(rel) = cx.cwe(&pid, 17)?.as_ref().and_then(codeable_concept) {
        p.push(
            "extension",
            json!({"url": "http://hl7.org/fhir/StructureDefinition/patient-religion", "valueCodeableConcept": rel}),
        );
    }
    // PID-24 / PID-25 multiple birth (r40–41).
    match text(&pid.field(25)).map_err(cx.at("PID-25"))? {
        Some(order) if order.parse::<i64>().is_ok() => p.put(
            "multipleBirthInteger",
            Some(Json::from(order.parse::<i64>().unwrap_or(0))),
        ),
        _ => {
            if let Some(flag) = text(&pid.field(24)).map_err(cx.at("PID-24"))? {
                p.put(
                    "multipleBirthBoolean",
                    concepts::yes_no(&flag).map(Json::from),
                );
            }
        }
    }

    // PD1-4 primary care provider (PD1(Patient) r6), PD1-3 their organization (r5).
    if let Some(pd1) = cx.segment("PD1") {
        for rep in pd1.field(4).repetitions() {
            let r = cx.practitioner(&rep).map_err(cx.at("PD1-4"))?;
            p.push("generalPractitioner", r);
        }
        for rep in pd1.field(3).repetitions() {
            let r = cx.organization(&rep).map_err(cx.at("PD1-3"))?;
            p.push("generalPractitioner", r);
        }
    }

    // NK1 → contact (NK1(Patient)).
    for nk1 in cx.segments_named(*b"NK1") {
        p.push("contact", contact(cx, &nk1)?);
    }

    if cx.opts.profile == super::Profile::UsCore {
        super::us_core::demographics(cx, &pid, &mut p)?;
    }
    let mut r = Resource::new("Patient", id, Some(key), p);
    if cx.opts.profile == super::Profile::UsCore {
        super::us_core::claim_patient(&mut r.body);
    }
    r.deleted = explicit_nulls(&pid);
    Ok(r)
}

/// ADT^A40 (merge patient — patient identifier list): the IG has no ADT_A39 map, so this
/// follows FHIR's Patient.link semantics. The survivor (PID) `replaces` each record MRG-1
/// names; that record is written as an inactive Patient `replaced-by` the survivor. It keeps
/// the survivor's demographics (the merge says they are one person, and the survivor's are
/// current) so that the conditional update on its identifier leaves no stale copy behind.
pub(super) fn merged(
    cx: &Ctx<'_, '_>,
    survivor: &mut Resource,
) -> Result<Vec<Resource>, MappingError> {
    let mut out = Vec::new();
    for mrg in cx.segments_named(*b"MRG") {
        let mut ids = Vec::new();
        for rep in mrg.field(1).repetitions() {
            let c = Cx::from_element(&rep).map_err(cx.at("MRG-1"))?;
            if let Some(mut v) = identifier(&c, &cx.systems) {
                if v.get("system").is_none() {
                    v["system"] = Json::from(cx.local_system("patient"));
                }
                ids.push((c.identifier_type_code.as_deref() != Some("MR"), v));
            }
        }
        ids.sort_by_key(|(not_mr, _)| *not_mr);
        let Some((_, first)) = ids.first() else {
            return Err(cx.error("MRG-1: the merge names no prior patient identifier"));
        };
        let key = (
            first["system"].as_str().unwrap_or_default().to_string(),
            first["value"].as_str().unwrap_or_default().to_string(),
        );
        if survivor.identifier.as_ref() == Some(&key) {
            return Err(cx.error("MRG-1: the prior identifier is the survivor's own (PID-3)"));
        }
        let id = stable_id(&["Patient", &key.0, &key.1]);
        let mut old = survivor.body.clone();
        old["id"] = Json::from(id.as_str());
        old["identifier"] = Json::Array(ids.into_iter().map(|(_, v)| v).collect());
        old["active"] = Json::from(false);
        old["link"] = json!([{"other": {"reference": survivor.reference()},
            "type": "replaced-by"}]);
        let link = json!({"other": {"reference": format!("Patient/{id}")}, "type": "replaces"});
        match survivor.body.get_mut("link").and_then(Json::as_array_mut) {
            Some(links) => links.push(link),
            None => survivor.body["link"] = Json::Array(vec![link]),
        }
        survivor.body["active"] = Json::from(true);
        out.push(Resource {
            resource_type: "Patient",
            id,
            identifier: Some(key),
            body: old,
            deleted: Vec::new(),
        });
    }
    if out.is_empty() {
        return Err(cx.error("no MRG segment: a merge names the record it merges"));
    }
    Ok(out)
}

/// The Patient's identifiers, and the one a conditional update matches on (system, value).
fn identifiers(
    cx: &Ctx<'_, '_>,
    pid: &Segment<'_>,
    p: &mut Obj,
) -> Result<(String, String), MappingError> {
    let systems = &cx.systems;
    // Identifiers: PID-2, PID-3 (repeats), PID-4 (r4–6), PID-19 SSN (r30–34), PID-20 (r35).
    let mut ids: Vec<(usize, Cx, Json)> = Vec::new();
    for n in [2, 3, 4] {
        for rep in pid.field(n).repetitions() {
            let c = Cx::from_element(&rep).map_err(cx.at(super::FieldAt("PID", n)))?;
            if let Some(mut v) = identifier(&c, systems) {
                // PID-3 sent without an assigning authority: the sender's own patient
                // identifiers, scoped to it (as visit numbers are), not a reason to reject.
                if n == 3 && v.get("system").is_none() {
                    v["system"] = Json::from(cx.local_system("patient"));
                }
                ids.push((n, c, v));
            }
        }
    }
    for (_, _, v) in &ids {
        p.push("identifier", v.clone());
    }
    if let Some(ssn) = text(&pid.field(19)).map_err(cx.at("PID-19"))? {
        // r34's system has a stray trailing dot in the CSV; the registered URI has none.
        p.push(
            "identifier",
            json!({"type": identifier_type("SS"), "system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}),
        );
    }
    if let Some(dl) = text(&pid.field(20).component(1)).map_err(cx.at("PID-20"))? {
        p.push(
            "identifier",
            json!({"type": identifier_type("DL"), "value": dl}),
        );
    }

    // The identifier a conditional update matches on: one with a system, from PID-3 (the
    // patient identifier list) before PID-2/PID-4, an MR before other types.
    ids.iter()
        .filter(|(_, c, v)| v.get("system").is_some() && c.id.is_some())
        .min_by_key(|(n, c, _)| (*n != 3, c.identifier_type_code.as_deref() != Some("MR")))
        .map(|(_, _, v)| {
            (
                v["system"].as_str().unwrap_or_default().to_string(),
                v["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .ok_or_else(|| cx.error("PID-3: no patient identifier to match the patient on"))
}

/// PID-11 (r16) addresses; PID-12 county as the district of a single address (r17, r20).
fn addresses(cx: &Ctx<'_, '_>, pid: &Segment<'_>) -> Result<Vec<Json>, MappingError> {
    let mut addresses = Vec::new();
    for rep in pid.field(11).repetitions() {
        let x = Xad::from_element(&rep).map_err(cx.at("PID-11"))?;
        addresses.extend(address(&x));
    }
    if let Some(county) = text(&pid.field(12).component(1)).map_err(cx.at("PID-12"))? {
        match addresses.as_mut_slice() {
            [] => addresses.push(json!({"district": county})),
            [only] if only.get("district").is_none() => {
                only["district"] = Json::from(county);
            }
            _ => {}
        }
    }
    Ok(addresses)
}

/// The Patient elements a message deletes: PID fields sent as the explicit null `""` (in v2
/// an empty field means "no change", `""` means "delete").
fn explicit_nulls(pid: &Segment<'_>) -> Vec<String> {
    const ELEMENTS: &[(usize, &[&str])] = &[
        (5, &["name"]),
        (7, &["birthDate", "_birthDate"]),
        (8, &["gender"]),
        (11, &["address"]),
        (13, &["telecom"]),
        (14, &["telecom"]),
        (15, &["communication"]),
        (16, &["maritalStatus"]),
        (24, &["multipleBirthBoolean", "multipleBirthInteger"]),
        (25, &["multipleBirthInteger"]),
        (29, &["deceasedDateTime"]),
        (30, &["deceasedBoolean"]),
    ];
    let mut out: Vec<String> = Vec::new();
    for (n, elements) in ELEMENTS {
        if pid.field(*n).is_null() {
            for e in *elements {
                if !out.iter().any(|o| o == e) {
                    out.push((*e).to_string());
                }
            }
        }
    }
    out
}

/// One NK1 as a Patient.contact: name r4, relationship r5 (Relationship) and r10
/// (ContactRole), address r6, telecom r7 and r8–9 (work), period r11–12, gender r18.
fn contact(cx: &Ctx<'_, '_>, nk1: &Segment<'_>) -> Result<Option<Json>, MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("NK1", n));
    let mut c = Obj::new();
    if nk1.field(3).is_present() && !nk1.field(3).raw().is_empty() {
        let rel = Cwe::from_element(&nk1.field(3)).map_err(at(3))?;
        c.push(
            "relationship",
            mapped_concept(&rel, concepts::relationship, "0063"),
        );
    }
    if nk1.field(7).is_present() && !nk1.field(7).raw().is_empty() {
        let role = Cwe::from_element(&nk1.field(7)).map_err(at(7))?;
        c.push(
            "relationship",
            mapped_concept(&role, concepts::contact_role, "0131"),
        );
    }
    if let Some(rep) = nk1.field(2).repetitions().next() {
        c.put("name", human_name(&Xpn::from_element(&rep).map_err(at(2))?));
    }
    for (n, default_use) in [(5, None), (6, Some("work"))] {
        for rep in nk1.field(n).repetitions() {
            let x = Xtn::from_element(&rep).map_err(at(n))?;
            let mut t = contact_point(&x, default_use);
            // r9: NK1-6 is the business number whatever XTN-2 says.
            if n == 6
                && let Some(Json::Object(o)) = t.as_mut()
            {
                o.insert("use", Json::from("work"));
            }
            c.push("telecom", t);
        }
    }
    // Patient.contact.address is 0..1: the first address.
    if let Some(rep) = nk1.field(4).repetitions().next() {
        c.put("address", address(&Xad::from_element(&rep).map_err(at(4))?));
    }
    if let Some(sex) = text(&nk1.field(15).component(1)).map_err(at(15))? {
        c.put("gender", concepts::gender(&sex).map(Json::from));
    }
    let offset = cx.opts.default_zone;
    let start = Ts::from_element(&nk1.field(8)).map_err(at(8))?;
    let end = Ts::from_element(&nk1.field(9)).map_err(at(9))?;
    c.put(
        "period",
        Obj::new()
            .set("start", start.map(|t| Json::from(date_time(&t, offset))))
            .set("end", end.map(|t| Json::from(date_time(&t, offset))))
            .build(),
    );
    if let Some(org) = text(&nk1.field(13).component(1)).map_err(at(13))? {
        c.put("organization", Some(json!({"display": org})));
    }
    // FHIR: a contact must name a person, an organization or both (pat-1).
    let has_who = c.0.contains_key("name")
        || c.0.contains_key("telecom")
        || c.0.contains_key("address")
        || c.0.contains_key("organization");
    Ok(has_who.then(|| c.into_value()))
}
