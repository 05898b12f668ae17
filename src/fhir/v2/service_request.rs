//! ORM^O01 / OML^O21 → a ServiceRequest per order (ORC + OBR): the IG's `ORC(ServiceRequest)`
//! and `OBR(ServiceRequest)` maps, with the ORM_O01/OML_O21 message maps' TQ1, NTE, DG1, OBX
//! (→ Observation, `supportingInfo`) and SPM (→ Specimen, OML) rows.
//!
//! The placer's number names the request: the placer owns an order, and a new order (NW)
//! often has no filler number yet; later messages about it carry the same placer number.

use crate::fhir::json::{Json, json};

use super::datatypes::{Obj, codeable_concept, date_time, text};
use super::observation::{Under, observation};
use super::{Ctx, MappingError, Resource, specimen, stable_id, tagged};
use crate::formats::hl7::{Segment, Ts};

/// One ORDER group: its segments, read when the group ends.
#[derive(Default)]
struct Order<'m> {
    orc: Option<Segment<'m>>,
    obr: Option<Segment<'m>>,
    tq1: Option<Segment<'m>>,
    notes: Vec<String>,
    reasons: Vec<Json>,
    obx: Vec<Segment<'m>>,
    spm: Vec<Segment<'m>>,
}

/// `results`: whether OBX segments are the orders' observations (ORM/OML) or belong to
/// something else (an MDM's OBX are the document's content).
pub(super) fn map(
    cx: &Ctx<'_, '_>,
    patient: &Resource,
    encounter: Option<&Resource>,
    results: bool,
) -> Result<Vec<Resource>, MappingError> {
    let subject = json!({"reference": patient.reference()});
    let encounter = encounter.map(|e| json!({"reference": e.reference()}));
    let mut out = Vec::new();
    let mut order: Option<Order<'_>> = None;
    for seg in cx.segments() {
        match seg.id() {
            // An ORC opens an order; an OBR opens one too when it follows another OBR (an
            // ORC may carry several requests in older feeds) or comes without an ORC.
            "ORC" => {
                if let Some(o) = order.take() {
                    finish(cx, o, &subject, encounter.as_ref(), &mut out)?;
                }
                order = Some(Order {
                    orc: Some(seg),
                    ..Order::default()
                });
            }
            "OBR" => {
                let o = order.get_or_insert_with(Order::default);
                if o.obr.is_some() {
                    let orc = o.orc;
                    let done = std::mem::take(o);
                    finish(cx, done, &subject, encounter.as_ref(), &mut out)?;
                    o.orc = orc;
                }
                o.obr = Some(seg);
            }
            "TQ1" => {
                if let Some(o) = order.as_mut().filter(|o| o.tq1.is_none()) {
                    o.tq1 = Some(seg);
                }
            }
            "NTE" => {
                // Notes of the order (after the OBR); an OBX's notes stay with the OBX.
                if let Some(o) = order
                    .as_mut()
                    .filter(|o| o.obr.is_some() && o.obx.is_empty())
                    && let Some(t) = text(&seg.field(3)).map_err(cx.at("NTE-3"))?
                {
                    o.notes.push(t);
                }
            }
            "DG1" => {
                if let Some(o) = order.as_mut()
                    && let Some(c) = cx.cwe(&seg, 3)?
                {
                    o.reasons.extend(codeable_concept(&c));
                }
            }
            "OBX" if results => {
                if let Some(o) = order.as_mut() {
                    o.obx.push(seg);
                }
            }
            "SPM" => {
                if let Some(o) = order.as_mut() {
                    o.spm.push(seg);
                }
            }
            _ => {}
        }
    }
    match order {
        Some(o) => finish(cx, o, &subject, encounter.as_ref(), &mut out)?,
        None => return Err(cx.error("no ORC/OBR: the message orders nothing")),
    }
    Ok(out)
}

fn finish(
    cx: &Ctx<'_, '_>,
    o: Order<'_>,
    subject: &Json,
    encounter: Option<&Json>,
    out: &mut Vec<Resource>,
) -> Result<(), MappingError> {
    let zone = cx.opts.default_zone;
    let mut r = Obj::resource(16);
    // Identifiers: OBR-2/3 when sent, else ORC-2/3 (ORC r2–3, OBR r2–3); placer first.
    let mut key = None;
    for (n, kind, code) in [(2, "order-placer", "PLAC"), (3, "order-filler", "FILL")] {
        for seg in [o.obr.as_ref(), o.orc.as_ref()].into_iter().flatten() {
            let (ids, k) = cx.business_ids(seg, &[(n, kind, Some(code))])?;
            if let Some(v) = ids.into_iter().next() {
                r.push("identifier", v);
                key = key.or(k);
                break;
            }
        }
    }
    let key =
        key.ok_or_else(|| cx.error("ORC-2/3, OBR-2/3: the order has no placer or filler number"))?;
    let control = status_intent_priority(cx, &o, &mut r)?;
    // OBR-4 universal service id (r4).
    if let Some(obr) = &o.obr
        && let Some(code) = cx.cwe(obr, 4)?
    {
        r.put("code", codeable_concept(&code));
    }
    r.put("subject", Some(subject.clone()));
    r.put("encounter", encounter.cloned());
    // When: OBR-6 requested (r6), else TQ1-7 start.
    let mut when = None;
    if let Some(obr) = &o.obr {
        when = Ts::from_element(&obr.field(6)).map_err(cx.at("OBR-6"))?;
    }
    if when.is_none()
        && let Some(tq1) = &o.tq1
    {
        when = Ts::from_element(&tq1.field(7)).map_err(cx.at("TQ1-7"))?;
    }
    r.put(
        "occurrenceDateTime",
        when.map(|t| Json::from(date_time(&t, zone))),
    );
    // ORC-9 (r9) is when a new order (NW) was authored.
    if let Some(orc) = &o.orc
        && control.as_deref() == Some("NW")
    {
        let t = Ts::from_element(&orc.field(9)).map_err(cx.at("ORC-9"))?;
        r.put("authoredOn", t.map(|t| Json::from(date_time(&t, zone))));
    }
    // Requester: ORC-12 (r12), else OBR-16 (r16).
    let mut requester = None;
    for (seg, n) in [(o.orc.as_ref(), 12), (o.obr.as_ref(), 16)] {
        if let Some(seg) = seg
            && requester.is_none()
        {
            requester = cx
                .practitioner(&seg.field(n).repetition(1))
                .map_err(cx.at(super::FieldAt(seg.id(), n)))?;
        }
    }
    r.put("requester", requester);
    // ORC-29 order type (r29, OrderType → v3 RoleCode): inpatient or outpatient.
    if let Some(orc) = &o.orc {
        let code = match text(&orc.field(29).component(1))
            .map_err(cx.at("ORC-29"))?
            .as_deref()
        {
            Some("I") => Some("HOSP"),
            Some("O") => Some("OF"),
            _ => None,
        };
        if let Some(code) = code {
            r.push(
                "locationCode",
                json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": code}]}),
            );
        }
    }
    // OBR-31 reason for study (r31) and the order's DG1 diagnoses.
    if let Some(obr) = &o.obr {
        for rep in obr.field(31).repetitions() {
            let c = crate::formats::hl7::Cwe::from_element(&rep).map_err(cx.at("OBR-31"))?;
            r.push("reasonCode", codeable_concept(&c));
        }
    }
    for reason in o.reasons {
        r.push("reasonCode", reason);
    }
    for n in o.notes {
        r.push("note", json!({"text": n}));
    }
    let id = stable_id(&["ServiceRequest", &key.0, &key.1]);
    let mut extra = Vec::new();
    // SPM (OML) → Specimen, the request's `specimen`.
    for (i, spm) in o.spm.iter().enumerate() {
        let sp = specimen::map(cx, spm, &key, i, subject)?;
        r.push("specimen", json!({"reference": sp.reference()}));
        extra.push(sp);
    }
    // OBX → Observation (the request's `supportingInfo`), numbered within the order.
    for (i, obx) in o.obx.iter().enumerate() {
        let under = Under {
            key: &key,
            index: i,
            effective: None,
            siblings: &extra,
        };
        let obs = observation(cx, obx, &under, subject)?;
        r.push("supportingInfo", json!({"reference": obs.reference()}));
        extra.push(obs);
    }
    out.push(tagged(
        Resource::new("ServiceRequest", id, Some(key), r),
        zone,
    ));
    out.extend(extra);
    Ok(())
}

/// ServiceRequest.status, intent and priority; returns the order control code (ORC-1).
fn status_intent_priority(
    cx: &Ctx<'_, '_>,
    o: &Order<'_>,
    r: &mut Obj,
) -> Result<Option<String>, MappingError> {
    // Status: ORC-5 order status (r5, OrderStatus) when sent, else ORC-1 order control (r1,
    // OrderControlCode[ServiceRequest.status]); "unknown" when neither maps.
    let control = match &o.orc {
        Some(orc) => text(&orc.field(1)).map_err(cx.at("ORC-1"))?,
        None => None,
    };
    let order_status = match &o.orc {
        Some(orc) => text(&orc.field(5)).map_err(cx.at("ORC-5"))?,
        None => None,
    };
    let status = match &order_status {
        Some(s) => order_status_code(s),
        None => control.as_deref().and_then(control_status),
    };
    r.put("status", Some(Json::from(status.unwrap_or("unknown"))));
    // Intent (OBR r0/r11): a reflex test (OBR-11 G) is a reflex order.
    let reflex = match &o.obr {
        Some(obr) => text(&obr.field(11)).map_err(cx.at("OBR-11"))?.as_deref() == Some("G"),
        None => false,
    };
    r.put(
        "intent",
        Some(Json::from(if reflex { "reflex-order" } else { "order" })),
    );
    // TQ1-9 priority (S stat, A asap, R routine; request-priority).
    if let Some(tq1) = &o.tq1
        && let Some(p) = text(&tq1.field(9).component(1)).map_err(cx.at("TQ1-9"))?
    {
        r.put("priority", priority(&p).map(Json::from));
    }
    Ok(control)
}

/// TQ1-9 (table 0485) → request-priority: S stat, A asap, R routine.
pub(super) fn priority(code: &str) -> Option<&'static str> {
    Some(match code {
        "S" => "stat",
        "A" => "asap",
        "R" => "routine",
        _ => return None,
    })
}

/// ORC-5 (HL7 table 0038) → request-status (the IG's OrderStatus map).
pub(super) fn order_status_code(code: &str) -> Option<&'static str> {
    Some(match code {
        "CA" | "DC" | "RP" => "revoked",
        "CM" => "completed",
        "ER" => "entered-in-error",
        "HD" => "on-hold",
        "IP" | "SC" => "active",
        _ => return None,
    })
}

/// ORC-1 (HL7 table 0119) → request-status (the IG's OrderControlCode[ServiceRequest.status]
/// map). The IG maps CA (cancel request) to active: the cancellation is only asked for.
pub(super) fn control_status(code: &str) -> Option<&'static str> {
    Some(match code {
        "NW" | "OK" | "CA" | "HD" | "RL" | "RO" | "RQ" | "PR" | "PY" | "AF" => "active",
        "DC" | "OC" | "OD" | "CR" | "DR" | "DF" => "revoked",
        "HR" | "OH" => "on-hold",
        "FU" => "completed",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Options, convert};
    use crate::formats::hl7::Message;

    fn corpus(name: &str) -> String {
        String::from_utf8(super::super::corpus(name)).unwrap()
    }

    #[test]
    fn a_lab_order_maps_orc_obr_tq1_and_its_specimen() {
        let raw = corpus("OML-O21-01.hl7");
        let m = Message::parse(raw.as_bytes()).unwrap();
        let (rs, dir) = super::super::split_directory(convert(&m, &Options::default()).unwrap());
        let kinds: Vec<&str> = rs.iter().map(|r| r.resource_type).collect();
        assert_eq!(
            kinds,
            [
                "Patient",
                "Encounter",
                "ServiceRequest",
                "Specimen",
                "Observation",
                "Observation",
                "Observation",
                "Observation"
            ]
        );
        let sr = &rs[2].body;
        assert_eq!(sr["identifier"][0]["value"], "1101");
        assert_eq!(sr["identifier"][0]["type"]["coding"][0]["code"], "PLAC");
        assert_eq!(sr["identifier"][1]["value"], "1201");
        // ORC-5 SC (in process, scheduled) → active; ORC-1 NW → authoredOn from ORC-9.
        assert_eq!(sr["status"], "active");
        assert_eq!(sr["intent"], "order");
        assert_eq!(sr["priority"], "routine");
        assert_eq!(sr["code"]["coding"][0]["code"], "57698-3");
        assert_eq!(sr["authoredOn"], "2021-10-20T11:26:00+02:15");
        assert_eq!(sr["occurrenceDateTime"], "2021-10-20T12:00:00+02:15");
        let requester = super::super::resolve(&dir, &sr["requester"]);
        assert_eq!(requester["identifier"][0]["value"], "3850");
        assert_eq!(sr["locationCode"][0]["coding"][0]["code"], "OF");
        assert_eq!(sr["reasonCode"][0]["coding"][0]["code"], "E10.9");
        assert_eq!(sr["note"][0]["text"], "Urgent");
        assert_eq!(sr["encounter"]["reference"], rs[1].reference());
        assert_eq!(sr["specimen"][0]["reference"], rs[3].reference());
        // Two OBX say set 1, sub id 1: both kept, the second numbered by its place.
        assert_eq!(sr["supportingInfo"].as_array().unwrap().len(), 4);
        assert_eq!(rs[4].body["identifier"][0]["value"], "1101-1-1");
        assert_eq!(rs[5].body["identifier"][0]["value"], "1101-1-1-2");
        let sp = &rs[3].body;
        assert_eq!(sp["identifier"][0]["value"], "2012999999");
        assert_eq!(sp["identifier"][0]["type"]["coding"][0]["code"], "FGN");
        assert_eq!(
            sp["identifier"][0]["system"],
            "urn:oid:2.16.840.1.114222.4.3.3.5.1.2"
        );
        assert_eq!(sp["identifier"][1]["value"], "2012545");
        assert_eq!(sp["status"], "available");
        assert_eq!(sp["type"]["coding"][0]["code"], "ASERU");
        assert_eq!(
            sp["collection"]["collectedPeriod"]["start"],
            "2011-01-03T14:34:28-08:00"
        );
        assert_eq!(sp["collection"]["quantity"]["value"], 40);
        assert_eq!(sp["collection"]["quantity"]["unit"], "lbs");
        assert_eq!(sp["note"][0]["text"], "This is a specimen resource");
    }

    #[test]
    fn order_control_and_status_codes_set_the_status() {
        let raw = corpus("ORM-O01-01.hl7");
        for (from, to, status) in [
            ("ORC|NW|", "ORC|NW|", "active"),
            ("||SC||", "||CM||", "completed"),
            ("||SC||", "||CA||", "revoked"),
            (
                "ORC|NW|1101^GHHPlacer|1201^GHHFiller||SC|",
                "ORC|DC|1101^GHHPlacer|1201^GHHFiller|||",
                "revoked",
            ),
            (
                "ORC|NW|1101^GHHPlacer|1201^GHHFiller||SC|",
                "ORC|HR|1101^GHHPlacer|1201^GHHFiller|||",
                "on-hold",
            ),
        ] {
            let msg = raw.replacen(from, to, 1);
            assert!(msg.contains(to));
            let m = Message::parse(msg.as_bytes()).unwrap();
            let rs = convert(&m, &Options::default()).unwrap();
            let sr = rs
                .iter()
                .find(|r| r.resource_type == "ServiceRequest")
                .unwrap();
            assert_eq!(sr.body["status"], status, "{to}");
        }
    }
}
