//! Pharmacy: RDE^O11 (encoded order) → a MedicationRequest per ORDER group (ORC with its RXE,
//! else the RXO it encodes; TQ1, RXR, NTE); RAS^O17 (administration) → a
//! MedicationAdministration per RXA (with its RXR) of each order, and the order's
//! MedicationRequest when the message carries its RXE/RXO. The IG's `ORC`, `RXE`, `RXO`,
//! `RXA` and `RXR` maps to MedicationRequest/MedicationAdministration are followed where they
//! exist; R4 has an element for each field mapped here.
//!
//! The placer's number (ORC-2, else the filler's ORC-3) names the request, as for
//! ServiceRequest; an administration is that number with its RXA-2 sub-id counter, so a
//! replayed RAS updates the same administrations and the next dose is a new one.

use crate::fhir::json::{Json, json};

use super::datatypes::{Obj, codeable_concept, date_time, text};
use super::immunization::completion_status;
use super::observation::{number, unit};
use super::service_request::{control_status, order_status_code, priority};
use super::{Ctx, Key, MappingError, Resource, stable_id, tagged};
use crate::formats::hl7::{Segment, Ts};

/// One ORDER group: its segments, read when the group ends.
struct Order<'m> {
    orc: Segment<'m>,
    rxo: Option<Segment<'m>>,
    rxe: Option<Segment<'m>>,
    /// The last TQ1 before any RXA: the RXE's (the pharmacy's) when sent after it.
    tq1: Option<Segment<'m>>,
    rxr: Option<Segment<'m>>,
    notes: Vec<String>,
    /// Each RXA with the RXR that follows it.
    given: Vec<(Segment<'m>, Option<Segment<'m>>)>,
}

/// References every resource of the message shares.
struct Context {
    subject: Json,
    encounter: Option<Json>,
}

pub(super) fn map(
    cx: &Ctx<'_, '_>,
    patient: &Resource,
    encounter: Option<&Resource>,
) -> Result<Vec<Resource>, MappingError> {
    let c = Context {
        subject: json!({"reference": patient.reference()}),
        encounter: encounter.map(|e| json!({"reference": e.reference()})),
    };
    let mut orders: Vec<Order<'_>> = Vec::new();
    for seg in cx.segments() {
        if seg.id() == "ORC" {
            orders.push(Order {
                orc: seg,
                rxo: None,
                rxe: None,
                tq1: None,
                rxr: None,
                notes: Vec::new(),
                given: Vec::new(),
            });
            continue;
        }
        let Some(o) = orders.last_mut() else {
            continue;
        };
        match seg.id() {
            "RXO" => o.rxo = Some(seg),
            "RXE" => o.rxe = Some(seg),
            "TQ1" if o.given.is_empty() => o.tq1 = Some(seg),
            "RXR" => match o.given.last_mut() {
                Some((_, rxr)) => *rxr = rxr.or(Some(seg)),
                None => o.rxr = Some(seg),
            },
            "RXA" => o.given.push((seg, None)),
            "NTE" if o.given.is_empty() => {
                if let Some(t) = text(&seg.field(3)).map_err(cx.at("NTE-3"))? {
                    o.notes.push(t);
                }
            }
            _ => {}
        }
    }
    if orders.is_empty() {
        return Err(cx.error("no ORC: the message orders nothing"));
    }
    let administrations = cx.msg.message_code() == "RAS";
    let mut out = Vec::new();
    for o in &orders {
        let (ids, key) = cx.business_ids(
            &o.orc,
            &[
                (2, "order-placer", Some("PLAC")),
                (3, "order-filler", Some("FILL")),
            ],
        )?;
        let key =
            key.ok_or_else(|| cx.error("ORC-2/ORC-3: the order has no placer or filler number"))?;
        let request = match (o.rxe.is_some() || o.rxo.is_some(), administrations) {
            (true, _) => Some(request(cx, o, ids.clone(), &key, &c)?),
            (false, false) => {
                return Err(cx.error("ORC without RXE or RXO: the order names no medication"));
            }
            (false, true) => None,
        };
        if administrations {
            if o.given.is_empty() {
                return Err(cx.error("an order without RXA: the message administers nothing"));
            }
            for (i, (rxa, rxr)) in o.given.iter().enumerate() {
                let by = match &request {
                    Some(r) => json!({"reference": r.reference()}),
                    None => json!({"type": "MedicationRequest", "identifier": ids[0].clone()}),
                };
                out.push(administration(cx, rxa, rxr.as_ref(), (&key, i), by, &c)?);
            }
        }
        out.extend(request);
    }
    Ok(out)
}

/// ORC + RXE (else RXO) + TQ1 + RXR → MedicationRequest.
fn request(
    cx: &Ctx<'_, '_>,
    o: &Order<'_>,
    ids: Vec<Json>,
    key: &Key,
    c: &Context,
) -> Result<Resource, MappingError> {
    let zone = cx.opts.default_zone;
    let mut r = Obj::resource(14);
    r.put("identifier", Json::Array(ids));
    // Status: ORC-5 order status, else ORC-1 order control (as for ServiceRequest); R4's
    // MedicationRequest says "cancelled" where request-status says "revoked".
    let control = text(&o.orc.field(1)).map_err(cx.at("ORC-1"))?;
    let status = match text(&o.orc.field(5)).map_err(cx.at("ORC-5"))? {
        Some(s) => order_status_code(&s),
        None => control.as_deref().and_then(control_status),
    };
    let status = match status.unwrap_or("unknown") {
        "revoked" => "cancelled",
        s => s,
    };
    r.put("status", Some(Json::from(status)));
    r.put("intent", Some(Json::from("order")));
    // RXE-2 give code, else RXO-1 requested give code: the medication; required.
    let (seg, name) = match (&o.rxe, &o.rxo) {
        (Some(rxe), _) => (rxe, "RXE-2"),
        (None, Some(rxo)) => (rxo, "RXO-1"),
        (None, None) => unreachable!("a request is mapped only with an RXE or RXO"),
    };
    let rxe = o.rxe.is_some();
    let drug = cx
        .cwe(seg, if rxe { 2 } else { 1 })?
        .and_then(|m| codeable_concept(&m))
        .ok_or_else(|| cx.error(format!("{name}: the order names no medication")))?;
    r.put("medicationCodeableConcept", Some(drug));
    r.put("subject", Some(c.subject.clone()));
    r.put("encounter", c.encounter.clone());
    // ORC-9 transaction time → authoredOn.
    let authored = Ts::from_element(&o.orc.field(9)).map_err(cx.at("ORC-9"))?;
    r.put(
        "authoredOn",
        authored.map(|t| Json::from(date_time(&t, zone))),
    );
    // ORC-12 ordering provider, else the order's prescriber (RXE-13, RXO-14).
    let mut requester = cx
        .practitioner(&o.orc.field(12).repetition(1))
        .map_err(cx.at("ORC-12"))?;
    if requester.is_none() {
        let n = if rxe { 13 } else { 14 };
        requester = cx
            .practitioner(&seg.field(n).repetition(1))
            .map_err(cx.at(super::FieldAt(seg.id(), n)))?;
    }
    r.put("requester", requester);
    // RXE-27 give indication / RXO-20 indication → reasonCode.
    for reason in cx.cwes(seg, if rxe { 27 } else { 20 })? {
        r.push("reasonCode", codeable_concept(&reason));
    }
    // TQ1-9 priority.
    if let Some(tq1) = &o.tq1 {
        let p = text(&tq1.field(9).component(1)).map_err(cx.at("TQ1-9"))?;
        r.put("priority", p.as_deref().and_then(priority).map(Json::from));
    }
    for note in &o.notes {
        r.push("note", json!({"text": note}));
    }
    r.put(
        "dosageInstruction",
        dosage_instruction(cx, o, seg)?.map(|d| Json::Array(vec![d])),
    );
    let (amount, units, refills) = if rxe { (10, 11, 12) } else { (11, 12, 13) };
    let dispense = Obj::new()
        .set("quantity", quantity(cx, seg, amount, units)?)
        .set("numberOfRepeatsAllowed", count(cx, seg, refills)?);
    r.put("dispenseRequest", dispense.build());
    // RXE-9 substitution status / RXO-9 allow substitutions: N forbids, G and T allow.
    let allowed = match text(&seg.field(9)).map_err(cx.at(super::FieldAt(seg.id(), 9)))? {
        Some(s) if s == "N" => Some(false),
        Some(s) if s == "G" || s == "T" => Some(true),
        _ => None,
    };
    r.put(
        "substitution",
        allowed.map(|a| json!({"allowedBoolean": a})),
    );
    let id = stable_id(&["MedicationRequest", &key.0, &key.1]);
    Ok(tagged(
        Resource::new("MedicationRequest", id, Some(key.clone()), r),
        zone,
    ))
}

/// The Dosage: dose (RXE-3/4/5, RXO-2/3/4), rate (RXE-23/24), instructions (RXE-7 / RXO-7
/// as additional instructions, TQ1-11 text), timing (TQ1-3 repeat pattern, TQ1-7/8 bounds),
/// route, site and method (RXR-1, -2, -4); TQ1-9 priority goes to the request.
fn dosage_instruction(
    cx: &Ctx<'_, '_>,
    o: &Order<'_>,
    seg: &Segment<'_>,
) -> Result<Option<Json>, MappingError> {
    let zone = cx.opts.default_zone;
    let rxe = seg.id() == "RXE";
    let mut d = Obj::new();
    let (lo, hi, units) = if rxe { (3, 4, 5) } else { (2, 3, 4) };
    let mut dose_and_rate = Obj::new();
    match (amount(cx, seg, lo)?, amount(cx, seg, hi)?) {
        (Some(l), Some(h)) if l != h => {
            let u = unit(cx, seg, units)?;
            dose_and_rate.put(
                "doseRange",
                json!({"low": with_value(u.clone(), l), "high": with_value(u, h)}),
            );
        }
        (Some(v), _) | (None, Some(v)) => {
            dose_and_rate.put("doseQuantity", Some(with_value(unit(cx, seg, units)?, v)));
        }
        (None, None) => {}
    }
    if rxe {
        dose_and_rate.put("rateQuantity", quantity(cx, seg, 23, 24)?);
    }
    d.put(
        "doseAndRate",
        dose_and_rate.build().map(|x| Json::Array(vec![x])),
    );
    for c in cx.cwes(seg, 7)? {
        d.push(
            "additionalInstruction",
            c.text.or(c.identifier).map(|t| json!({"text": t})),
        );
    }
    if let Some(tq1) = &o.tq1 {
        let at = |n: usize| cx.at(super::FieldAt("TQ1", n));
        d.put(
            "text",
            text(&tq1.field(11)).map_err(at(11))?.map(Json::from),
        );
        let pattern = text(&tq1.field(3).repetition(1).component(1).subcomponent(1));
        let pattern = pattern.map_err(at(3))?;
        let start = Ts::from_element(&tq1.field(7)).map_err(at(7))?;
        let end = Ts::from_element(&tq1.field(8)).map_err(at(8))?;
        let bounds = Obj::new()
            .set("start", start.map(|t| Json::from(date_time(&t, zone))))
            .set("end", end.map(|t| Json::from(date_time(&t, zone))))
            .build();
        let timing = Obj::new()
            .set(
                "code",
                pattern.map(|p| {
                    json!({"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0335", "code": p}]})
                }),
            )
            .set("repeat", bounds.map(|b| json!({"boundsPeriod": b})));
        d.put("timing", timing.build());
    }
    if let Some(rxr) = &o.rxr {
        route(cx, rxr, &mut d)?;
    }
    Ok(d.build())
}

/// An RXA (and its RXR) → MedicationAdministration; `(key, i)` is the order's number and the
/// administration's place in the order.
fn administration(
    cx: &Ctx<'_, '_>,
    rxa: &Segment<'_>,
    rxr: Option<&Segment<'_>>,
    (key, i): (&Key, usize),
    request: Json,
    c: &Context,
) -> Result<Resource, MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("RXA", n));
    let zone = cx.opts.default_zone;
    let counter = text(&rxa.field(2))
        .map_err(at(2))?
        .unwrap_or_else(|| (i + 1).to_string());
    let key = (key.0.clone(), format!("{}-{counter}", key.1));
    let mut a = Obj::resource(12);
    a.push(
        "identifier",
        json!({"system": key.0.as_str(), "value": key.1.as_str()}),
    );
    a.put("status", Some(Json::from(completion_status(cx, rxa)?)));
    // RXA-18 refusal reason (statusReason) and RXA-19 indication (reasonCode), repeating.
    for (n, element) in [(18, "statusReason"), (19, "reasonCode")] {
        for c in cx.cwes(rxa, n)? {
            a.push(element, codeable_concept(&c));
        }
    }
    // RXA-5 administered code: the medication; required.
    let drug = cx
        .cwe(rxa, 5)?
        .and_then(|m| codeable_concept(&m))
        .ok_or_else(|| cx.error("RXA-5: the administration names no medication"))?;
    a.put("medicationCodeableConcept", Some(drug));
    a.put("subject", Some(c.subject.clone()));
    a.put("context", c.encounter.clone());
    // RXA-3 start (required) and RXA-4 end of administration.
    let start = Ts::from_element(&rxa.field(3))
        .map_err(at(3))?
        .ok_or_else(|| cx.error("RXA-3: the administration has no start time"))?;
    let end = Ts::from_element(&rxa.field(4)).map_err(at(4))?;
    match end.filter(|e| *e != start) {
        Some(end) => a.put(
            "effectivePeriod",
            json!({"start": date_time(&start, zone), "end": date_time(&end, zone)}),
        ),
        None => a.put(
            "effectiveDateTime",
            Some(Json::from(date_time(&start, zone))),
        ),
    }
    // RXA-10 administering provider.
    for rep in rxa.field(10).repetitions() {
        if let Some(who) = cx.practitioner(&rep).map_err(at(10))? {
            a.push("performer", json!({"actor": who}));
        }
    }
    a.put("request", Some(request));
    // RXA-9 administration notes.
    for c in cx.cwes(rxa, 9)? {
        a.push("note", c.text.or(c.identifier).map(|t| json!({"text": t})));
    }
    // RXA-6/7 amount given (999 is "unknown" in v2), RXR route, site and method.
    let mut dosage = Obj::new();
    if let Some(v) = amount(cx, rxa, 6)?.filter(|v| *v != 999.0) {
        dosage.put("dose", Some(with_value(unit(cx, rxa, 7)?, v)));
    }
    if let Some(rxr) = rxr {
        route(cx, rxr, &mut dosage)?;
    }
    a.put("dosage", dosage.build());
    let id = stable_id(&["MedicationAdministration", &key.0, &key.1]);
    Ok(tagged(
        Resource::new("MedicationAdministration", id, Some(key), a),
        zone,
    ))
}

/// RXR-1 route, RXR-2 site, RXR-4 method.
fn route(cx: &Ctx<'_, '_>, rxr: &Segment<'_>, d: &mut Obj) -> Result<(), MappingError> {
    for (n, element) in [(1, "route"), (2, "site"), (4, "method")] {
        if let Some(c) = cx.cwe(rxr, n)? {
            d.put(element, codeable_concept(&c));
        }
    }
    Ok(())
}

/// A numeric field (NM, read as every NM is); text that is not a number is an error naming
/// the field, not the value.
fn amount(cx: &Ctx<'_, '_>, seg: &Segment<'_>, n: usize) -> Result<Option<f64>, MappingError> {
    let label = format!("{}-{n}", seg.id());
    let Some(t) = text(&seg.field(n).component(1)).map_err(cx.at(&label))? else {
        return Ok(None);
    };
    crate::formats::hl7::datatypes::parse_nm(&t)
        .map(Some)
        .map_err(|e| cx.error(format!("{label}: {e}")))
}

/// A count (refills): a whole number ≥ 0.
fn count(cx: &Ctx<'_, '_>, seg: &Segment<'_>, n: usize) -> Result<Option<Json>, MappingError> {
    match amount(cx, seg, n)? {
        Some(v) if v >= 0.0 && v.fract() == 0.0 => Ok(Some(Json::from(v as u64))),
        Some(v) => Err(cx.error(format!("{}-{n}: {v} is not a count", seg.id()))),
        None => Ok(None),
    }
}

/// Amount field `n` with the units of field `u` as a Quantity.
fn quantity(
    cx: &Ctx<'_, '_>,
    seg: &Segment<'_>,
    n: usize,
    u: usize,
) -> Result<Option<Json>, MappingError> {
    Ok(match amount(cx, seg, n)? {
        Some(v) => Some(with_value(unit(cx, seg, u)?, v)),
        None => None,
    })
}

fn with_value(unit: Option<Json>, v: f64) -> Json {
    let mut q = unit.unwrap_or_else(|| json!({}));
    q["value"] = number(v);
    q
}

#[cfg(test)]
mod tests {
    use super::super::{Options, Resource, convert};
    use crate::formats::hl7::Message;

    fn map(raw: &[u8]) -> Vec<Resource> {
        convert(&Message::parse(raw).unwrap(), &Options::default()).unwrap()
    }

    fn ras() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/messages/RAS-O17.hl7"
        );
        std::fs::read(path).unwrap()
    }

    fn of<'r>(rs: &'r [Resource], kind: &str) -> Vec<&'r Resource> {
        rs.iter().filter(|r| r.resource_type == kind).collect()
    }

    /// FHIR-Converter's RDE^O11: ORC + TQ1 + RXO + RXR + RXC, then the pharmacy's RXE with
    /// its own TQ1 and RXR, which win.
    #[test]
    fn an_encoded_pharmacy_order_is_a_medication_request() {
        let rs = map(&super::super::corpus("RDE-O11-01.hl7"));
        let [mr] = of(&rs, "MedicationRequest")[..] else {
            panic!("one request expected")
        };
        let b = &mr.body;
        assert_eq!(b["identifier"][0]["value"], "1163422591");
        assert_eq!(b["identifier"][0]["type"]["coding"][0]["code"], "PLAC");
        // ORC-1 NW, no ORC-5: active.
        assert_eq!(b["status"], "active");
        assert_eq!(b["intent"], "order");
        assert_eq!(
            b["medicationCodeableConcept"]["coding"][0]["code"],
            "0143963401"
        );
        assert_eq!(b["authoredOn"], "2019-11-04T06:27:26+02:15");
        assert_eq!(b["priority"], "stat");
        let d = &b["dosageInstruction"][0];
        assert_eq!(d["doseAndRate"][0]["doseQuantity"]["value"], 5);
        assert_eq!(
            d["additionalInstruction"][0]["text"],
            "Titrate to BP less than 180"
        );
        assert_eq!(d["timing"]["code"]["coding"][0]["code"], "P");
        assert_eq!(
            d["timing"]["repeat"]["boundsPeriod"]["start"],
            "2019-11-04T10:30:00+02:15"
        );
        assert_eq!(d["text"], "Text instruction latest");
        // The RXR after the RXE (its site), not the RXO's.
        assert_eq!(d["route"]["coding"][0]["code"], "IV");
        assert_eq!(d["site"]["coding"][0]["code"], "HAND");
        let subject = rs[0].reference();
        assert_eq!(b["subject"]["reference"], subject);
        let enc = of(&rs, "Encounter")[0];
        assert_eq!(b["encounter"]["reference"], enc.reference());
    }

    #[test]
    fn an_administration_message_gives_one_administration_per_rxa() {
        let rs = map(&ras());
        let given = of(&rs, "MedicationAdministration");
        assert_eq!(given.len(), 2);
        let [mr] = of(&rs, "MedicationRequest")[..] else {
            panic!("one request expected")
        };
        assert_eq!(mr.body["status"], "completed");
        assert_eq!(mr.body["dispenseRequest"]["quantity"]["value"], 14);
        assert_eq!(mr.body["dispenseRequest"]["numberOfRepeatsAllowed"], 0);
        assert_eq!(mr.body["requester"]["display"], "Nina Nurse");
        let (a, b) = (&given[0].body, &given[1].body);
        assert_eq!(a["identifier"][0]["value"], "RX7001-1");
        assert_eq!(b["identifier"][0]["value"], "RX7001-2");
        assert_eq!(a["status"], "completed");
        assert_eq!(a["effectivePeriod"]["start"], "2026-03-01T09:15:00+01:00");
        assert_eq!(a["effectivePeriod"]["end"], "2026-03-01T09:30:00+01:00");
        assert_eq!(a["dosage"]["dose"]["value"], 1);
        assert_eq!(a["dosage"]["dose"]["code"], "g");
        assert_eq!(a["dosage"]["dose"]["system"], "http://unitsofmeasure.org");
        assert_eq!(a["dosage"]["site"]["coding"][0]["code"], "LA");
        assert_eq!(a["request"]["reference"], mr.reference());
        assert_eq!(a["performer"][0]["actor"]["display"], "Nina Nurse");
        // Refused: not-done with the reason; 999 (unknown amount) is no dose.
        assert_eq!(b["status"], "not-done");
        assert_eq!(b["statusReason"][0]["coding"][0]["code"], "PR");
        assert_eq!(b["effectiveDateTime"], "2026-03-01T21:15:00+01:00");
        assert!(b.get("dosage").is_none());
        // The same message again names the same resources.
        let again = map(&ras());
        let ids = |rs: &[Resource]| rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&rs), ids(&again));
    }

    #[test]
    fn bad_pharmacy_fields_are_errors_naming_the_field() {
        let raw = String::from_utf8(ras()).unwrap();
        for (from, to, field) in [
            ("|14|EA", "|lots|EA", "RXE-10"),
            ("|CP|A", "|XX|A", "RXA-20"),
            (
                "ORC|RE|RX7001^PHARM|FX7001^RXSYS|",
                "ORC|RE||",
                "ORC-2/ORC-3",
            ),
        ] {
            let bad = raw.replacen(from, to, 1);
            assert_ne!(bad, raw, "{from} not in the sample");
            let m = Message::parse(bad.as_bytes()).unwrap();
            let e = convert(&m, &Options::default()).unwrap_err();
            assert!(e.reason.starts_with(field), "{field}: {}", e.reason);
        }
    }
}
