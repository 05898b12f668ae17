//! ORU^R01 → a DiagnosticReport per OBR and an Observation per OBX under it: the IG's
//! `OBR(DiagnosticReport)` and `OBX(Observation)` maps, value[x] chosen by OBX-2.
//!
//! Ids are derived from the order's filler number (OBR-3, else the placer's OBR-2) and the
//! OBX's set and sub ids (OBX-1/OBX-4, else its place under the OBR), so a result feed sent
//! twice addresses the same resources: each Observation is created once.

use crate::fhir::json::{Json, json};

use super::datatypes::{Obj, codeable_concept, date_time, instant, text};
use super::{Ctx, MappingError, Resource, specimen, stable_id, tagged};
use crate::formats::hl7::{Segment, Ts};

const UCUM: &str = "http://unitsofmeasure.org";

/// The report being built and the observations found under it so far.
struct Report {
    key: (String, String),
    body: Obj,
    effective: Option<String>,
    results: Vec<Json>,
    observations: Vec<Resource>,
    specimens: Vec<Resource>,
}

pub(super) fn map(cx: &Ctx<'_, '_>, patient: &Resource) -> Result<Vec<Resource>, MappingError> {
    let subject = json!({"reference": patient.reference()});
    let mut out = Vec::new();
    let mut report: Option<Report> = None;
    // Where an NTE's text goes: the last OBX when one follows the OBR, else the OBR.
    let mut last_obx = false;
    for seg in cx.segments() {
        match seg.id() {
            "OBR" => {
                if let Some(r) = report.take() {
                    finish(cx, r, &mut out);
                }
                report = Some(start(cx, &seg, &subject)?);
                last_obx = false;
            }
            "OBX" => {
                let r = report
                    .as_mut()
                    .ok_or_else(|| cx.error("an OBX before any OBR: no order to report under"))?;
                // An ED (a report as a document, e.g. a PDF) or RP (a pointer to one) is the
                // report's presented form, which R4 has no Observation.value[x] for.
                if presented_form(cx, &seg, &mut r.body)? {
                    last_obx = false;
                    continue;
                }
                let under = Under {
                    key: &r.key,
                    index: r.observations.len(),
                    effective: r.effective.as_deref(),
                    siblings: &r.observations,
                };
                let obs = observation(cx, &seg, &under, &subject)?;
                r.results.push(json!({"reference": obs.reference()}));
                r.observations.push(obs);
                last_obx = true;
            }
            "NTE" => {
                let Some(r) = report.as_mut() else { continue };
                let Some(note) = text(&seg.field(3)).map_err(cx.at("NTE-3"))? else {
                    continue;
                };
                let note = json!({"text": note});
                match r.observations.last_mut().filter(|_| last_obx) {
                    // OBX NTE → Observation.note; OBR NTE → DiagnosticReport conclusion.
                    Some(o) => push_note(&mut o.body, note),
                    None => r.body.push("extension", note_extension(note)),
                }
            }
            "SPM" => {
                last_obx = false;
                if let Some(r) = report.as_mut() {
                    let sp = specimen::map(cx, &seg, &r.key, r.specimens.len(), &subject)?;
                    r.body
                        .push("specimen", json!({"reference": sp.reference()}));
                    r.specimens.push(sp);
                }
            }
            _ => {}
        }
    }
    match report {
        Some(r) => finish(cx, r, &mut out),
        None => return Err(cx.error("no OBR segment: nothing describes the result")),
    }
    Ok(out)
}

/// OBX-5 of type ED or RP → DiagnosticReport.presentedForm; false for any other type.
fn presented_form(
    cx: &Ctx<'_, '_>,
    obx: &Segment<'_>,
    report: &mut Obj,
) -> Result<bool, MappingError> {
    let kind = text(&obx.field(2)).map_err(cx.at("OBX-2"))?;
    if !matches!(kind.as_deref(), Some("ED" | "RP")) {
        return Ok(false);
    }
    let label = format!("OBX-5 ({})", kind.as_deref().unwrap_or_default());
    match kind.as_deref() {
        Some("ED") => {
            for rep in obx.field(5).repetitions() {
                report.push(
                    "presentedForm",
                    super::document::ed_attachment(cx, &rep, &label)?,
                );
            }
        }
        Some("RP") => {
            for rep in obx.field(5).repetitions() {
                let url = text(&rep.component(1)).map_err(cx.at(label.as_str()))?;
                report.push("presentedForm", url.map(|u| json!({"url": u})));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// OBX-5 named in an error, with the set id and value type (formatted only for an error).
#[derive(Clone, Copy)]
struct Obx5<'a> {
    set: &'a str,
    kind: &'a str,
}

impl std::fmt::Display for Obx5<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OBX-5 (set {}, {})", self.set, self.kind)
    }
}

fn push_note(body: &mut Json, note: Json) {
    match body.get_mut("note").and_then(Json::as_array_mut) {
        Some(notes) => notes.push(note),
        None => body["note"] = Json::Array(vec![note]),
    }
}

/// DiagnosticReport has no `note` in R4: an OBR's comments keep the R5 element's meaning
/// through its cross-version extension.
fn note_extension(note: Json) -> Json {
    json!({
        "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note",
        "valueAnnotation": note,
    })
}

fn start(cx: &Ctx<'_, '_>, obr: &Segment<'_>, subject: &Json) -> Result<Report, MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("OBR", n));
    let zone = cx.opts.default_zone;
    let mut r = Obj::resource(14);
    // OBR-3 filler and OBR-2 placer order numbers (r3, r2): the filler's names the report.
    let (ids, key) = cx.business_ids(
        obr,
        &[
            (3, "order-filler", Some("FILL")),
            (2, "order-placer", Some("PLAC")),
        ],
    )?;
    for v in ids {
        r.push("identifier", v);
    }
    let key =
        key.ok_or_else(|| cx.error("OBR-2/OBR-3: the order has no placer or filler number"))?;
    // OBR-25 result status (r30); a report's status is required.
    let status = text(&obr.field(25).component(1))
        .map_err(at(25))?
        .and_then(|c| report_status(&c))
        .unwrap_or("unknown");
    r.put("status", Some(Json::from(status)));
    // OBR-4 universal service id (r4): what was examined; required.
    let code = cx
        .cwe(obr, 4)?
        .and_then(|c| codeable_concept(&c))
        .ok_or_else(|| cx.error("OBR-4: the order names no test"))?;
    r.put("code", Some(code));
    r.put("subject", Some(subject.clone()));
    // OBR-7 observation time (r7) and OBR-22 results reported (r22).
    let effective = Ts::from_element(&obr.field(7))
        .map_err(at(7))?
        .map(|t| date_time(&t, zone));
    r.put("effectiveDateTime", effective.clone().map(Json::from));
    let issued = Ts::from_element(&obr.field(22))
        .map_err(at(22))?
        .map(|t| instant(&t, zone));
    r.put("issued", issued.map(Json::from));
    // OBR-32 principal result interpreter → resultsInterpreter.
    for rep in obr.field(32).repetitions() {
        let who = cx.practitioner_cnn(&rep.component(1)).map_err(at(32))?;
        r.push("resultsInterpreter", who);
    }
    Ok(Report {
        key,
        body: r,
        effective,
        results: Vec::new(),
        observations: Vec::new(),
        specimens: Vec::new(),
    })
}

fn finish(cx: &Ctx<'_, '_>, r: Report, out: &mut Vec<Resource>) {
    let zone = cx.opts.default_zone;
    let mut body = r.body;
    if !r.results.is_empty() {
        body.put("result", Some(Json::Array(r.results)));
    }
    let id = stable_id(&["DiagnosticReport", &r.key.0, &r.key.1]);
    out.push(tagged(
        Resource::new("DiagnosticReport", id, Some(r.key), body),
        zone,
    ));
    // One specimen for the order: every result was measured on it.
    let mut observations = r.observations;
    if let [sp] = r.specimens.as_slice() {
        for o in &mut observations {
            o.body["specimen"] = json!({"reference": sp.reference()});
        }
    }
    out.extend(r.specimens);
    out.extend(observations);
}

/// What an OBX is a result of: the business key its identifier extends (a report's filler
/// number, an immunization's order number), its place there, and the time it defaults to.
pub(super) struct Under<'k> {
    pub key: &'k (String, String),
    pub index: usize,
    pub effective: Option<&'k str>,
    /// The group's resources mapped so far.
    pub siblings: &'k [Resource],
}

pub(super) fn observation(
    cx: &Ctx<'_, '_>,
    obx: &Segment<'_>,
    r: &Under<'_>,
    subject: &Json,
) -> Result<Resource, MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("OBX", n));
    let zone = cx.opts.default_zone;
    let mut o = Obj::resource(16);
    // The set id (OBX-1) and sub id (OBX-4) within the order; without a set id, the place.
    let set = text(&obx.field(1))
        .map_err(at(1))?
        .unwrap_or_else(|| (r.index + 1).to_string());
    let sub = text(&obx.field(4)).map_err(at(4))?.unwrap_or_default();
    let value = match sub.as_str() {
        "" => format!("{}-{set}", r.key.1),
        _ => format!("{}-{set}-{sub}", r.key.1),
    };
    // The order's system: an observation's number is its order's, extended. A set id the
    // sender repeated within the group gets the OBX's place too, so no result replaces another.
    let mut key = (r.key.0.clone(), value);
    if r.siblings
        .iter()
        .any(|o| o.resource_type == "Observation" && o.identifier.as_ref() == Some(&key))
    {
        key.1 = format!("{}-{}", key.1, r.index + 1);
    }
    o.push(
        "identifier",
        json!({"system": key.0.clone(), "value": key.1.clone()}),
    );
    // OBX-11 (r13): required in FHIR; "unknown" when not sent.
    let status = text(&obx.field(11).component(1))
        .map_err(at(11))?
        .and_then(|c| observation_status(&c))
        .unwrap_or("unknown");
    o.put("status", Some(Json::from(status)));
    let code = cx
        .cwe(obx, 3)?
        .and_then(|c| codeable_concept(&c))
        .ok_or_else(|| cx.error(format!("OBX-3 (set {set}): the observation names no code")))?;
    o.put("code", Some(code));
    o.put("subject", Some(subject.clone()));
    // OBX-14 (r16), else the order's observation time.
    let effective = Ts::from_element(&obx.field(14))
        .map_err(at(14))?
        .map(|t| date_time(&t, zone))
        .or_else(|| r.effective.map(str::to_string));
    o.put("effectiveDateTime", effective.map(Json::from));
    let unit = unit(cx, obx, 6)?;
    let kind = text(&obx.field(2)).map_err(at(2))?.unwrap_or_default();
    let reps = obx.field(5).repetitions().count();
    if reps <= 1 {
        let (element, v) = value_of(cx, obx, 1, &kind, unit.as_ref(), &set)?;
        if let (Some(element), Some(v)) = (element, v) {
            o.put(element, Some(v));
        }
    } else {
        // Several values (the IG's OBX[Observation-Component]): a component each, coded as
        // the observation.
        let code = o.0.get("code").cloned();
        for rep in 1..=reps {
            if let (Some(element), Some(v)) = value_of(cx, obx, rep, &kind, unit.as_ref(), &set)? {
                o.push(
                    "component",
                    Obj::new()
                        .set("code", code.clone())
                        .set(element, Some(v))
                        .build(),
                );
            }
        }
    }
    // OBX-7 reference range (r9): `low-high`, else the text as sent.
    if let Some(range) = text(&obx.field(7)).map_err(at(7))? {
        o.push("referenceRange", reference_range(&range, unit.as_ref()));
    }
    // OBX-8 interpretation (r10), each repetition a code of table 0078.
    for rep in obx.field(8).repetitions() {
        if let Some(code) = text(&rep.component(1)).map_err(at(8))? {
            o.push(
                "interpretation",
                json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": code}]}),
            );
        }
    }
    // OBX-17 method (r55).
    o.put(
        "method",
        cx.cwe(obx, 17)?.and_then(|c| codeable_concept(&c)),
    );
    // OBX-16 responsible observer (r52: a Practitioner, without the IG's PractitionerRole
    // wrapper) and OBX-23 performing organization (r63).
    for rep in obx.field(16).repetitions() {
        o.push("performer", cx.practitioner(&rep).map_err(at(16))?);
    }
    let lab = cx.organization(&obx.field(23).repetition(1));
    o.push("performer", lab.map_err(at(23))?);
    let id = stable_id(&["Observation", &key.0, &key.1]);
    Ok(tagged(Resource::new("Observation", id, Some(key), o), zone))
}

/// Units (OBX-6, RXA-7): a Quantity's `unit` (and `system`/`code` when the sender says UCUM).
pub(super) fn unit(
    cx: &Ctx<'_, '_>,
    seg: &Segment<'_>,
    n: usize,
) -> Result<Option<Json>, MappingError> {
    let Some(u) = cx.cwe(seg, n)? else {
        return Ok(None);
    };
    let Some(code) = u.identifier.clone().or_else(|| u.text.clone()) else {
        return Ok(None);
    };
    let mut q = Obj::new().set("unit", Json::from(u.text.clone().unwrap_or(code.clone())));
    if u.coding_system
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("UCUM"))
    {
        q.put("system", Some(Json::from(UCUM)));
        q.put("code", Some(Json::from(code)));
    }
    Ok(q.build())
}

/// value[x] by OBX-2 (the IG's OBX-5 rows): the element's name and value; none when OBX-5
/// is empty, a `dataAbsentReason` for a type R4's Observation cannot hold.
fn value_of(
    cx: &Ctx<'_, '_>,
    obx: &Segment<'_>,
    rep: usize,
    kind: &str,
    unit: Option<&Json>,
    set: &str,
) -> Result<(Option<&'static str>, Option<Json>), MappingError> {
    let field = obx.field(5).repetition(rep);
    let label = Obx5 { set, kind };
    let raw = text(&field).map_err(cx.at(label))?;
    let Some(raw) = raw else {
        return Ok((None, None));
    };
    let bad = |why: String| cx.error(format!("{label}: {why}"));
    let quantity = |n: f64, comparator: Option<&str>| {
        let mut q = unit.cloned().unwrap_or_else(|| json!({}));
        q["value"] = number(n);
        if let Some(c) = comparator {
            q["comparator"] = Json::from(c);
        }
        q
    };
    Ok(match kind {
        "NM" => {
            let n = crate::formats::hl7::datatypes::parse_nm(&raw).map_err(bad)?;
            (Some("valueQuantity"), Some(quantity(n, None)))
        }
        "ST" | "TX" | "FT" => (Some("valueString"), Some(Json::from(raw))),
        "CWE" | "CE" | "CNE" | "CF" => {
            let c = crate::formats::hl7::Cwe::from_element(&field).map_err(cx.at(label))?;
            (Some("valueCodeableConcept"), codeable_concept(&c))
        }
        "DT" | "TS" | "DTM" => {
            let t = Ts::parse(&raw).map_err(bad)?;
            (
                Some("valueDateTime"),
                Some(Json::from(date_time(&t, cx.opts.default_zone))),
            )
        }
        "SN" => {
            let part = |n: usize| text(&field.component(n)).map_err(cx.at(label));
            let num = |s: Option<String>| -> Result<Option<f64>, MappingError> {
                s.map(|s| crate::formats::hl7::datatypes::parse_nm(&s).map_err(bad))
                    .transpose()
            };
            let (comparator, n1, sep, n2) = (part(1)?, num(part(2)?)?, part(3)?, num(part(4)?)?);
            match (sep.as_deref(), n1, n2) {
                (Some("-"), Some(a), Some(b)) => (
                    Some("valueRange"),
                    Some(json!({"low": quantity(a, None), "high": quantity(b, None)})),
                ),
                (Some(":" | "/"), Some(a), Some(b)) => (
                    Some("valueRatio"),
                    Some(json!({"numerator": {"value": number(a)},
                        "denominator": {"value": number(b)}})),
                ),
                (None, Some(a), None) => {
                    let c = comparator
                        .as_deref()
                        .filter(|c| ["<", "<=", ">=", ">"].contains(c));
                    (Some("valueQuantity"), Some(quantity(a, c)))
                }
                _ => return Err(bad(format!("not a structured numeric: {raw:?}"))),
            }
        }
        _ => (
            Some("dataAbsentReason"),
            Some(json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": "unsupported"}],
                "text": format!("OBX-2 {kind} has no Observation.value[x] in R4")})),
        ),
    })
}

/// A JSON number: integral values without a fraction (`72`, not `72.0`).
pub(super) fn number(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        Json::from(n as i64)
    } else {
        Json::from(n)
    }
}

fn reference_range(range: &str, unit: Option<&Json>) -> Json {
    let bound = |s: &str| {
        crate::formats::hl7::datatypes::parse_nm(s.trim())
            .ok()
            .map(|n| {
                let mut q = unit.cloned().unwrap_or_else(|| json!({}));
                q["value"] = number(n);
                q
            })
    };
    // A leading minus is a negative low bound, not the separator.
    if let Some(i) = range
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '-')
        .map(|(i, _)| i)
        && let (Some(low), Some(high)) = (bound(&range[..i]), bound(&range[i + 1..]))
    {
        return json!({"low": low, "high": high});
    }
    json!({"text": range})
}

/// OBR-25 (HL7 table 0123) → DiagnosticReport.status (the IG's ResultStatus map).
fn report_status(code: &str) -> Option<&'static str> {
    Some(match code {
        "O" | "I" | "S" => "registered",
        "A" | "R" => "partial",
        "P" => "preliminary",
        "C" => "corrected",
        "F" => "final",
        "X" => "cancelled",
        _ => return None,
    })
}

/// OBX-11 (HL7 table 0085) → Observation.status (the IG's ObservationResultStatus map).
fn observation_status(code: &str) -> Option<&'static str> {
    Some(match code {
        "C" => "corrected",
        "D" | "W" => "entered-in-error",
        "F" | "U" => "final",
        "I" | "O" => "registered",
        "P" | "R" | "S" => "preliminary",
        "X" => "cancelled",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Options, convert};
    use crate::formats::hl7::Message;

    fn lab() -> Vec<u8> {
        super::super::corpus("LAB-ORU-1.hl7")
    }

    #[test]
    fn each_obr_is_a_report_of_its_own_observations() {
        let raw = lab();
        let m = Message::parse(&raw).unwrap();
        let rs = convert(&m, &Options::default()).unwrap();
        let kinds: Vec<&str> = rs.iter().map(|r| r.resource_type).collect();
        // Both orders were run on the same specimen (SPM-2 "SpecimenID"): one Specimen.
        let expected = [
            "Patient",
            "DiagnosticReport",
            "Specimen",
            "Observation",
            "Observation",
            "Observation",
            "Observation",
            "Observation",
            "DiagnosticReport",
            "Observation",
            "Observation",
            "Observation",
            "Observation",
            "Observation",
        ];
        assert_eq!(kinds, expected);
        let cbc = &rs[1].body;
        assert_eq!(cbc["code"]["coding"][0]["code"], "24317-0");
        assert_eq!(cbc["status"], "final");
        assert_eq!(cbc["subject"]["reference"], rs[0].reference());
        let results = cbc["result"].as_array().unwrap();
        assert_eq!(results.len(), 5);
        assert_eq!(results[1]["reference"], rs[4].reference());
        let specimen = rs[2].reference();
        assert_eq!(cbc["specimen"][0]["reference"], specimen);
        assert_eq!(rs[9].body["specimen"]["reference"], specimen);
        // SPM|1|SpecimenID||BLD|…|20141006053500+0700|20141006082100+0700||Y
        let sp = &rs[2].body;
        assert_eq!(sp["type"]["coding"][0]["code"], "BLD");
        assert_eq!(sp["identifier"][0]["value"], "SpecimenID");
        assert_eq!(sp["identifier"][0]["type"]["coding"][0]["code"], "PGN");
        assert_eq!(
            sp["collection"]["collectedDateTime"],
            "2014-10-06T05:35:00+07:00"
        );
        assert_eq!(sp["receivedTime"], "2014-10-06T08:21:00+07:00");
        assert_eq!(sp["status"], "available");
        // OBX|2|NM|11273-0^ERYTHROCYTES^LN||4.06|tera.l-1||N|||P|||20141006062700+0700
        let rbc = &rs[4].body;
        assert_eq!(rbc["specimen"]["reference"], specimen);
        assert_eq!(rbc["valueQuantity"]["value"], 4.06);
        assert_eq!(rbc["valueQuantity"]["unit"], "tera.l-1");
        assert_eq!(rbc["status"], "preliminary");
        assert_eq!(rbc["interpretation"][0]["coding"][0]["code"], "N");
        assert_eq!(rbc["effectiveDateTime"], "2014-10-06T06:27:00+07:00");
        // A result not yet in (OBX-11 I, no value): registered, without value[x].
        assert_eq!(rs[3].body["status"], "registered");
        assert!(rs[3].body.get("valueQuantity").is_none());
        // Ids follow the order and set ids: the same feed twice names the same resources.
        let again = convert(&m, &Options::default()).unwrap();
        assert_eq!(again[4].id, rs[4].id);
        assert_ne!(
            rs[4].id, rs[10].id,
            "set 2 of another order is another result"
        );
    }

    /// An ED (the report as a PDF) and an RP (a link to an image) are the report's
    /// presented form, not Observations; OBX-16/23 are performers, OBR-32 the interpreter.
    #[test]
    fn documents_in_a_result_are_the_reports_presented_form() {
        let msg = "MSH|^~\\&|LAB|GHH|B|C|20260101120000+0000||ORU^R01|X8|P|2.5.1\r\
PID|1||123^^^GHH^MR||DOE^JANE||19800102|F\r\
OBR|1|P1|F1^LAB|11502-2^Lab report^LN|||20260101110000+0000|||||||||||||||20260101115000+0000||LAB|F|||||||77&Reader&Rita&&&&&&NPI\r\
OBX|1|ED|11502-2^Lab report^LN||^application^pdf^Base64^JVBERi0xLjQ=||||||F\r\
OBX|2|RP|18748-4^Image^LN||https://pacs.example.org/studies/1^PACS^IMAGE^JPEG||||||F\r\
OBX|3|NM|2951-2^Sodium^LN||140|mmol/L^^UCUM|||||F|||||55^Tech^Tom^^^^^^GHH|||||||Main Lab^^LAB01\r";
        let m = Message::parse(msg.as_bytes()).unwrap();
        let rs = convert(&m, &Options::default()).unwrap();
        let report = rs
            .iter()
            .find(|r| r.resource_type == "DiagnosticReport")
            .unwrap();
        let forms = &report.body["presentedForm"];
        assert_eq!(forms[0]["contentType"], "application/pdf");
        assert_eq!(forms[0]["data"], "JVBERi0xLjQ=");
        assert_eq!(forms[1]["url"], "https://pacs.example.org/studies/1");
        assert_eq!(report.body["result"].as_array().unwrap().len(), 1);
        assert_eq!(
            report.body["resultsInterpreter"][0]["display"],
            "Rita Reader"
        );
        let obs: Vec<_> = rs
            .iter()
            .filter(|r| r.resource_type == "Observation")
            .collect();
        assert_eq!(obs.len(), 1);
        let performers = &obs[0].body["performer"];
        let named = |i: usize| {
            let r = performers[i]["reference"].as_str().unwrap();
            rs.iter()
                .find(|x| format!("{}/{}", x.resource_type, x.id) == r)
                .unwrap()
        };
        assert_eq!(named(0).resource_type, "Practitioner");
        assert_eq!(named(0).body["identifier"][0]["value"], "55");
        assert_eq!(named(1).resource_type, "Organization");
        assert_eq!(named(1).body["name"], "Main Lab");
        assert_eq!(named(1).body["identifier"][0]["value"], "LAB01");
    }

    #[test]
    fn value_types_follow_obx_2() {
        let msg = "MSH|^~\\&|LAB|GHH|B|C|20260101120000+0000||ORU^R01|X9|P|2.5.1\r\
PID|1||123^^^GHH^MR||DOE^JANE||19800102|F\r\
OBR|1|P1|F1^LAB|2951-2^Sodium^LN|||20260101110000+0000|||||||||||||||20260101115000+0000||CH|F\r\
OBX|1|NM|2951-2^Sodium^LN||140|mmol/L^millimole per liter^UCUM|135-145|N|||F\r\
OBX|2|SN|1234-5^Titer^LN||^1^:^128||||||F\r\
OBX|3|SN|5678-9^Glucose^LN||<^5|mg/dL||||F\r\
OBX|4|ST|8251-1^Comment^LN||Hemolyzed \\T\\ lipemic||||||F\r\
NTE|1||Redrawn at 11:30\r\
OBX|5|CWE|600-7^Culture^LN||27268008^Salmonella^SCT||||||F\r\
OBX|6|NM|2345-7^Glucose^LN||high||||||F\r";
        let m = Message::parse(msg.as_bytes()).unwrap();
        let err = convert(&m, &Options::default()).unwrap_err();
        assert!(err.reason.contains("OBX-5 (set 6, NM)"), "{err}");
        let ok = msg.replace("OBX|6|NM|2345-7^Glucose^LN||high||||||F\r", "");
        let m = Message::parse(ok.as_bytes()).unwrap();
        let rs = convert(&m, &Options::default()).unwrap();
        let obs = |i: usize| &rs[i + 1].body;
        assert_eq!(rs[1].body["issued"], "2026-01-01T11:50:00+00:00");
        assert_eq!(rs[1].body["status"], "final");
        assert_eq!(
            obs(1)["valueQuantity"],
            serde_json::json!({"unit": "millimole per liter", "system": super::UCUM, "code": "mmol/L", "value": 140})
        );
        assert_eq!(obs(1)["referenceRange"][0]["low"]["value"], 135);
        assert_eq!(obs(2)["valueRatio"]["denominator"]["value"], 128);
        assert_eq!(obs(3)["valueQuantity"]["comparator"], "<");
        assert_eq!(obs(4)["valueString"], "Hemolyzed & lipemic");
        assert_eq!(obs(4)["note"][0]["text"], "Redrawn at 11:30");
        assert_eq!(
            obs(5)["valueCodeableConcept"]["coding"][0]["code"],
            "27268008"
        );
    }
}
