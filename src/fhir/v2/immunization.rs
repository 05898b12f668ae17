//! VXU^V04 → an Immunization per ORDER group (ORC + RXA + RXR): the IG's `ORC(Immunization)`,
//! `RXA(Immunization)` and `RXR(Immunization)` maps, with the VXU_V04 message map's OBX rows.
//!
//! The OBX under an order carry, per the US CDC immunization IG, the funding source, program
//! eligibility and the vaccine information statement (VIS) given; R4's Immunization has
//! elements for each, so those go there. Any other OBX becomes an Observation `partOf` the
//! Immunization, and the OBX before the first ORC (the patient's observations) Observations
//! of the patient, so nothing sent is dropped.

use crate::fhir::json::{Json, json};

use super::datatypes::{Obj, codeable_concept, date, date_time, text};
use super::observation::{Under, observation};
use super::{Ctx, MappingError, Resource, stable_id, tagged};
use crate::formats::hl7::{Segment, Ts};

/// The order being built.
struct Order {
    key: (String, String),
    body: Obj,
    has_rxa: bool,
    /// The VIS document the next presentation date belongs to (`education` entries).
    education: Vec<Json>,
    observations: Vec<Resource>,
}

pub(super) fn map(cx: &Ctx<'_, '_>, patient: &Resource) -> Result<Vec<Resource>, MappingError> {
    let subject = json!({"reference": patient.reference()});
    let mut out = Vec::new();
    let mut order: Option<Order> = None;
    let mut person_obs = 0;
    // Observations of the patient (before any ORC) are numbered within the message (MSH-10),
    // so a replay updates them and the next message's are new.
    let control = cx.msg.control_id().into_owned();
    let patient_key = match &patient.identifier {
        Some((system, value)) => (system.clone(), format!("{value}-{control}")),
        None => (cx.local_system("message"), control),
    };
    for seg in cx.segments() {
        match seg.id() {
            "ORC" => {
                if let Some(o) = order.take() {
                    finish(cx, o, &mut out)?;
                }
                order = Some(start(cx, &seg, &subject)?);
            }
            "RXA" => {
                let o = order.as_mut().ok_or_else(|| {
                    cx.error("an RXA before any ORC: no order to record it under")
                })?;
                administration(cx, &seg, o)?;
            }
            "RXR" => {
                if let Some(o) = order.as_mut() {
                    route(cx, &seg, o)?;
                }
            }
            "OBX" => match order.as_mut() {
                Some(o) => order_observation(cx, &seg, o, &subject)?,
                None => {
                    let under = Under {
                        key: &patient_key,
                        index: person_obs,
                        effective: None,
                        siblings: &out,
                    };
                    out.push(observation(cx, &seg, &under, &subject)?);
                    person_obs += 1;
                }
            },
            _ => {}
        }
    }
    match order {
        Some(o) => finish(cx, o, &mut out)?,
        None => return Err(cx.error("no ORC/RXA: the message records no vaccination")),
    }
    Ok(out)
}

fn start(cx: &Ctx<'_, '_>, orc: &Segment<'_>, subject: &Json) -> Result<Order, MappingError> {
    let mut body = Obj::resource(16);
    // ORC-3 filler and ORC-2 placer numbers (r3, r2); the filler's names the immunization.
    let (ids, key) = cx.business_ids(
        orc,
        &[
            (3, "order-filler", Some("FILL")),
            (2, "order-placer", Some("PLAC")),
        ],
    )?;
    let key =
        key.ok_or_else(|| cx.error("ORC-2/ORC-3: the order has no placer or filler number"))?;
    for v in ids {
        body.push("identifier", v);
    }
    body.put("patient", Some(subject.clone()));
    // ORC-9 (r9): when the record was made.
    let recorded = Ts::from_element(&orc.field(9))
        .map_err(cx.at("ORC-9"))?
        .map(|t| date_time(&t, cx.opts.default_zone));
    body.put("recorded", recorded.map(Json::from));
    // ORC-12 ordering provider (r12): performer with function OP.
    if let Some(who) = cx
        .practitioner(&orc.field(12).repetition(1))
        .map_err(cx.at("ORC-12"))?
    {
        body.push("performer", performer(who, "OP", "Ordering Provider"));
    }
    Ok(Order {
        key,
        body,
        has_rxa: false,
        education: Vec::new(),
        observations: Vec::new(),
    })
}

fn performer(actor: Json, code: &str, display: &str) -> Json {
    json!({
        "function": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0443",
            "code": code, "display": display}]},
        "actor": actor,
    })
}

/// RXA (the IG's RXA[Immunization] rows).
fn administration(cx: &Ctx<'_, '_>, rxa: &Segment<'_>, o: &mut Order) -> Result<(), MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("RXA", n));
    let zone = cx.opts.default_zone;
    let b = &mut o.body;
    o.has_rxa = true;
    let action = text(&rxa.field(21)).map_err(at(21))?;
    b.put("status", Some(Json::from(completion_status(cx, rxa)?)));
    // RXA-18 substance refusal reason (r18): why it was not done.
    if let Some(reason) = cx.cwe(rxa, 18)? {
        b.put("statusReason", codeable_concept(&reason));
    }
    // RXA-5 administered code (r5): the vaccine, kept as sent (CVX, NDC, …); required.
    let vaccine = cx
        .cwe(rxa, 5)?
        .and_then(|c| codeable_concept(&c))
        .ok_or_else(|| cx.error("RXA-5: the administration names no vaccine"))?;
    b.put("vaccineCode", Some(vaccine));
    // RXA-3 start of administration (r3); required.
    let when = Ts::from_element(&rxa.field(3))
        .map_err(at(3))?
        .ok_or_else(|| cx.error("RXA-3: the administration has no date"))?;
    b.put(
        "occurrenceDateTime",
        Some(Json::from(date_time(&when, zone))),
    );
    // RXA-22 system entry time (r22) when the action code says A(dd); ORC-9 otherwise.
    if action.as_deref() == Some("A")
        && let Some(t) = Ts::from_element(&rxa.field(22)).map_err(at(22))?
    {
        b.put("recorded", Some(Json::from(date_time(&t, zone))));
    }
    // RXA-9 administration notes: NIP001 "00" is a new record (this provider gave it);
    // other codes are historical, reported from elsewhere (US CDC IG).
    if let Some(note) = cx.cwe(rxa, 9)? {
        let new_record = note.identifier.as_deref() == Some("00");
        b.put("primarySource", Some(Json::from(new_record)));
        if !new_record {
            b.put("reportOrigin", codeable_concept(&note));
        }
    }
    // RXA-15 lot number (r15, first repetition), RXA-16 expiration (r16, a date).
    b.put(
        "lotNumber",
        text(&rxa.field(15).repetition(1))
            .map_err(at(15))?
            .map(Json::from),
    );
    b.put(
        "expirationDate",
        Ts::from_element(&rxa.field(16).repetition(1))
            .map_err(at(16))?
            .map(|t| Json::from(date(&t))),
    );
    // RXA-17 manufacturer (r17): CWE[Organization], MVX codes named as sent.
    if let Some(m) = cx.cwe(rxa, 17)? {
        b.put("manufacturer", cx.organization_coded(&m));
    }
    // RXA-6 amount (r6; 999 = unknown per the CDC IG) with RXA-7 units (r7, CWE[Quantity]).
    if let Some(amount) = text(&rxa.field(6)).map_err(at(6))?
        && amount != "999"
    {
        let n = crate::formats::hl7::datatypes::parse_nm(&amount)
            .map_err(|e| cx.error(format!("RXA-6: {e}")))?;
        let mut q = super::observation::unit(cx, rxa, 7)?.unwrap_or_else(|| json!({}));
        q["value"] = super::observation::number(n);
        b.put("doseQuantity", Some(q));
    }
    // RXA-10 administering provider (r10): performer with function AP.
    if let Some(who) = cx
        .practitioner(&rxa.field(10).repetition(1))
        .map_err(at(10))?
    {
        b.push("performer", performer(who, "AP", "Administering Provider"));
    }
    // RXA-27 administered-at location (r27); RXA-11 (v2.5's field) when RXA-27 is empty.
    let place = match cx.location(&rxa.field(27)).map_err(at(27))? {
        Some(p) => Some(p),
        None => cx.location_la2(&rxa.field(11)).map_err(at(11))?,
    };
    b.put("location", place);
    Ok(())
}

/// RXA-21 action code D (r21) → entered-in-error; else RXA-20 completion status (r20,
/// table 0322 → event-status), "completed" when not sent. Shared by Immunization and
/// MedicationAdministration, whose status codes agree on these.
pub(super) fn completion_status(
    cx: &Ctx<'_, '_>,
    rxa: &Segment<'_>,
) -> Result<&'static str, MappingError> {
    let action = text(&rxa.field(21)).map_err(cx.at("RXA-21"))?;
    let completion = text(&rxa.field(20)).map_err(cx.at("RXA-20"))?;
    Ok(match (action.as_deref(), completion.as_deref()) {
        (Some("D"), _) => "entered-in-error",
        (_, Some("RE" | "NA")) => "not-done",
        (_, Some("CP" | "PA") | None) => "completed",
        (_, Some(other)) => {
            return Err(cx.error(format!(
                "RXA-20: completion status {other:?} is not a code of table 0322 (CP, RE, NA, PA)"
            )));
        }
    })
}

/// RXR route (r1, table 0162) and site (r2).
fn route(cx: &Ctx<'_, '_>, rxr: &Segment<'_>, o: &mut Order) -> Result<(), MappingError> {
    if let Some(r) = cx.cwe(rxr, 1)? {
        o.body.put("route", codeable_concept(&r));
    }
    if let Some(s) = cx.cwe(rxr, 2)? {
        o.body.put("site", codeable_concept(&s));
    }
    Ok(())
}

/// An OBX of the order: the CDC IG's funding, eligibility and VIS observations become the
/// Immunization's elements; anything else an Observation `partOf` it.
fn order_observation(
    cx: &Ctx<'_, '_>,
    obx: &Segment<'_>,
    o: &mut Order,
    subject: &Json,
) -> Result<(), MappingError> {
    let code = cx
        .cwe(obx, 3)?
        .and_then(|c| c.identifier)
        .unwrap_or_default();
    let value_cwe = || -> Result<Option<Json>, MappingError> {
        Ok(cx.cwe(obx, 5)?.and_then(|c| codeable_concept(&c)))
    };
    let value_date = || -> Result<Option<String>, MappingError> {
        Ok(Ts::from_element(&obx.field(5).repetition(1))
            .map_err(cx.at("OBX-5"))?
            .map(|t| date_time(&t, cx.opts.default_zone)))
    };
    match code.as_str() {
        // 30963-3 vaccine funding source.
        "30963-3" => o.body.put("fundingSource", value_cwe()?),
        // 64994-7 vaccine funding program eligibility.
        "64994-7" => o.body.push("programEligibility", value_cwe()?),
        // 69764-9 VIS document type (a bar code of the statement); 30956-7 vaccine type.
        "69764-9" | "30956-7" => {
            let doc = cx.cwe(obx, 5)?;
            let doc = doc.and_then(|c| c.identifier.or(c.text));
            o.education.push(
                Obj::new()
                    .set("documentType", doc.map(Json::from))
                    .into_value(),
            );
        }
        // 29768-9 VIS publication date, 29769-7 presentation date: of the last document.
        "29768-9" | "29769-7" => {
            let element = if code == "29768-9" {
                "publicationDate"
            } else {
                "presentationDate"
            };
            if o.education.is_empty() {
                o.education.push(json!({}));
            }
            if let (Some(last), Some(d)) = (o.education.last_mut(), value_date()?) {
                last[element] = Json::from(d);
            }
        }
        _ => {
            let under = Under {
                key: &o.key,
                index: o.observations.len(),
                effective: None,
                siblings: &o.observations,
            };
            let mut obs = observation(cx, obx, &under, subject)?;
            let id = stable_id(&["Immunization", &o.key.0, &o.key.1]);
            obs.body["partOf"] = json!([{"reference": format!("Immunization/{id}")}]);
            o.observations.push(obs);
        }
    }
    Ok(())
}

fn finish(cx: &Ctx<'_, '_>, o: Order, out: &mut Vec<Resource>) -> Result<(), MappingError> {
    if !o.has_rxa {
        return Err(cx.error(format!(
            "ORC {}: an order without an RXA records no vaccination",
            o.key.1
        )));
    }
    let mut body = o.body;
    // Education needs a document type or a reference; a lone date cannot stand.
    let education: Vec<Json> = o
        .education
        .into_iter()
        .filter(|e| e.get("documentType").is_some())
        .collect();
    if !education.is_empty() {
        body.put("education", Some(Json::Array(education)));
    }
    let id = stable_id(&["Immunization", &o.key.0, &o.key.1]);
    out.push(tagged(
        Resource::new("Immunization", id, Some(o.key), body),
        cx.opts.default_zone,
    ));
    out.extend(o.observations);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Options, convert};
    use crate::formats::hl7::Message;

    fn vxu() -> Vec<u8> {
        super::super::corpus("VXU-V04-01.hl7")
    }

    #[test]
    fn a_vaccination_record_maps_rxa_rxr_and_the_cdc_observations() {
        let raw = vxu();
        let m = Message::parse(&raw).unwrap();
        let (rs, dir) = super::super::split_directory(convert(&m, &Options::default()).unwrap());
        let kinds: Vec<&str> = rs.iter().map(|r| r.resource_type).collect();
        // The patient, its heart-rate OBX, the immunization (its four OBX are CDC elements).
        assert_eq!(kinds, ["Patient", "Observation", "Immunization"]);
        let i = &rs[2].body;
        assert_eq!(i["status"], "completed");
        assert_eq!(i["vaccineCode"]["coding"][0]["code"], "49281021588");
        assert_eq!(
            i["vaccineCode"]["coding"][0]["system"],
            "http://hl7.org/fhir/sid/ndc"
        );
        assert_eq!(i["occurrenceDateTime"], "2021-08-18");
        assert_eq!(i["primarySource"], true);
        assert_eq!(i["lotNumber"], "315841");
        assert_eq!(i["expirationDate"], "2021-12-16");
        let maker = super::super::resolve(&dir, &i["manufacturer"]);
        assert_eq!(maker["identifier"][0]["value"], "PMC");
        assert_eq!(
            maker["identifier"][0]["system"],
            "http://terminology.hl7.org/CodeSystem/MVX"
        );
        assert_eq!(maker["name"], "Sanofi Pasteur");
        assert_eq!(i["manufacturer"]["display"], "Sanofi Pasteur");
        assert_eq!(i["doseQuantity"]["value"], 0.5);
        assert_eq!(i["doseQuantity"]["code"], "mL");
        assert_eq!(i["doseQuantity"]["system"], "http://unitsofmeasure.org");
        assert_eq!(i["route"]["coding"][0]["code"], "C28161");
        assert_eq!(i["site"]["coding"][0]["code"], "RD");
        assert_eq!(i["performer"][0]["function"]["coding"][0]["code"], "OP");
        let op = super::super::resolve(&dir, &i["performer"][0]["actor"]);
        assert_eq!(op["identifier"][0]["value"], "654");
        assert_eq!(i["performer"][1]["function"]["coding"][0]["code"], "AP");
        let ap = super::super::resolve(&dir, &i["performer"][1]["actor"]);
        assert_eq!(ap["identifier"][0]["value"], "7824");
        assert_eq!(i["fundingSource"]["coding"][0]["code"], "PHC70");
        assert_eq!(i["programEligibility"][0]["coding"][0]["code"], "V01");
        assert_eq!(
            i["education"][0]["documentType"],
            "253088698300028811170411"
        );
        assert_eq!(i["education"][0]["presentationDate"], "2021-08-18");
        assert_eq!(i["identifier"][0]["value"], "13696");
        assert_eq!(i["patient"]["reference"], rs[0].reference());
        assert!(i["location"]["display"].as_str().unwrap().contains("OMU B"));
    }

    #[test]
    fn completion_and_action_codes_set_the_status() {
        let raw = String::from_utf8(vxu()).unwrap();
        for (from, to, status) in [
            ("|CP|A|", "|RE|A|", "not-done"),
            ("|CP|A|", "|CP|D|", "entered-in-error"),
            ("|CP|A|", "||A|", "completed"),
        ] {
            let msg = raw.replace(from, to);
            let m = Message::parse(msg.as_bytes()).unwrap();
            let rs = convert(&m, &Options::default()).unwrap();
            let i = rs
                .iter()
                .find(|r| r.resource_type == "Immunization")
                .unwrap();
            assert_eq!(i.body["status"], status, "{to}");
        }
        let msg = raw.replace("|CP|A|", "|XX|A|");
        let m = Message::parse(msg.as_bytes()).unwrap();
        let e = convert(&m, &Options::default()).unwrap_err();
        assert!(
            e.reason.contains("RXA-20") && e.reason.contains("XX"),
            "{e}"
        );
    }
}
