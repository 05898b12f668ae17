//! MDM^T01–T11 → DocumentReference: the IG's `TXA(DocumentReference)` and
//! `OBX(DocumentReference)` maps (MDM_T02); the T01-style notifications without content use
//! the same map without the OBSERVATION group, as the IG suggests.

use crate::fhir::json::{Json, json};
use base64::Engine;

use super::datatypes::{Obj, codeable_concept, instant, text};
use super::{Ctx, MappingError, Resource, stable_id, tagged};
use crate::formats::hl7::datatypes::Precision;
use crate::formats::hl7::{Element, Segment, Ts};

pub(super) fn map(
    cx: &Ctx<'_, '_>,
    patient: &Resource,
    encounter: Option<&Resource>,
) -> Result<Resource, MappingError> {
    let txa = cx
        .segment("TXA")
        .ok_or_else(|| cx.error("no TXA segment: nothing describes the document"))?;
    let at = |n: usize| cx.at(super::FieldAt("TXA", n));
    let zone = cx.opts.default_zone;
    let mut d = Obj::resource(14);
    // TXA-12 unique document number (r12) names the document; TXA-16 filler number (r16).
    let (ids, key) = cx.business_ids(&txa, &[(12, "document", None)])?;
    let key = key.ok_or_else(|| cx.error("TXA-12: the document has no unique number"))?;
    d.put("masterIdentifier", ids.into_iter().next());
    if let Some(filler) = text(&txa.field(16).component(1)).map_err(at(16))? {
        d.push(
            "identifier",
            json!({"system": cx.local_system("document-filler"), "value": filler}),
        );
    }
    // TXA-19 availability (r19): AV → current; obsolete → superseded; cancelled →
    // entered-in-error (the IG leaves the required status to the implementer).
    let status = match text(&txa.field(19)).map_err(at(19))?.as_deref() {
        None | Some("AV" | "UN") => "current",
        Some("OB") => "superseded",
        Some("CA") => "entered-in-error",
        Some(other) => {
            return Err(cx.error(format!(
                "TXA-19: availability {other:?} is not a code of table 0273 (AV, CA, OB, UN)"
            )));
        }
    };
    d.put("status", Some(Json::from(status)));
    // TXA-17 completion status (r17, table 0271 → composition-status; no IG map exists).
    if let Some(c) = text(&txa.field(17)).map_err(at(17))? {
        let doc_status = match c.as_str() {
            "AU" | "LA" | "DO" => Some("final"),
            "DI" | "IP" | "IN" | "PA" => Some("preliminary"),
            _ => None,
        };
        d.put("docStatus", doc_status.map(Json::from));
    }
    // TXA-2 document type (r2, table 0270).
    if let Some(t) = cx.cwe(&txa, 2)? {
        let mut t = t;
        if t.coding_system.is_none() {
            t.coding_system = Some("HL70270".into());
        }
        d.put("type", codeable_concept(&t));
    }
    d.put("subject", Some(json!({"reference": patient.reference()})));
    // TXA-6 origination time (r6) when it has a time: `date` is an instant.
    if let Some(t) = Ts::from_element(&txa.field(6)).map_err(at(6))?
        && !matches!(
            t.precision(),
            Precision::Year | Precision::Month | Precision::Day
        )
    {
        d.put("date", Some(Json::from(instant(&t, zone))));
    }
    // TXA-9 originator (r9) → author; TXA-10 assigned authenticator (r10).
    for rep in txa.field(9).repetitions() {
        d.push("author", cx.practitioner(&rep).map_err(at(9))?);
    }
    d.put(
        "authenticator",
        cx.practitioner(&txa.field(10).repetition(1))
            .map_err(at(10))?,
    );
    // TXA-25 document title (r25) → description; TXA-18 confidentiality (r18, table 0272).
    d.put(
        "description",
        text(&txa.field(25)).map_err(at(25))?.map(Json::from),
    );
    if let Some(c) = text(&txa.field(18)).map_err(at(18))? {
        d.push(
            "securityLabel",
            json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0272", "code": c}]}),
        );
    }
    // The order the document answers (TXA-14 placer, TXA-15 filler; the MDM_T02 map relates
    // the ORC's ServiceRequest): named by its numbers, as ORM/OML name their requests.
    let mut related = Vec::new();
    let (orders, _) = cx.business_ids(
        &txa,
        &[
            (14, "order-placer", Some("PLAC")),
            (15, "order-filler", Some("FILL")),
        ],
    )?;
    for id in orders {
        related.push(json!({"type": "ServiceRequest", "identifier": id}));
    }
    // Content: each OBX (OBX[DocumentReference] r5) by OBX-2.
    for obx in cx.segments_named(*b"OBX") {
        content(cx, &obx, &mut d, &mut related)?;
    }
    if d.0.get("content").is_none() {
        // A notification (T01, T03, …) without the document: its presentation (TXA-3).
        let kind = text(&txa.field(3)).map_err(at(3))?;
        let title = format!(
            "{} not sent with this message",
            kind.as_deref().unwrap_or("document")
        );
        d.push("content", json!({"attachment": {"title": title}}));
    }
    let mut context = Obj::new();
    context.put(
        "encounter",
        encounter.map(|e| json!([{"reference": e.reference()}])),
    );
    if !related.is_empty() {
        context.put("related", Some(Json::Array(related)));
    }
    d.put("context", context.build());
    let id = stable_id(&["DocumentReference", &key.0, &key.1]);
    Ok(tagged(
        Resource::new("DocumentReference", id, Some(key), d),
        zone,
    ))
}

/// An ED value as an Attachment: ED-2/3 type and subtype → contentType, ED-5 data as
/// base64 (ED-4 Base64 kept, Hex decoded, anything else taken as text); `None` when empty.
pub(super) fn ed_attachment(
    cx: &Ctx<'_, '_>,
    rep: &Element<'_>,
    label: &str,
) -> Result<Option<Json>, MappingError> {
    let at = cx.at(label);
    let b64 = base64::engine::general_purpose::STANDARD;
    let (kind, sub) = (
        text(&rep.component(2)).map_err(&at)?,
        text(&rep.component(3)).map_err(&at)?,
    );
    let encoding = text(&rep.component(4)).map_err(&at)?;
    let data = text(&rep.component(5)).map_err(&at)?;
    let data = match (encoding.as_deref(), data) {
        (_, None) => None,
        (Some("Base64") | Some("BASE64"), Some(d)) => Some(d),
        (Some("Hex"), Some(d)) => Some(b64.encode(
            hex::decode(&d).map_err(|e| cx.error(format!("{label}: not hexadecimal: {e}")))?,
        )),
        (_, Some(d)) => Some(b64.encode(d)),
    };
    let content_type = match (kind, sub) {
        (Some(k), Some(s)) => Some(format!("{}/{}", k.to_lowercase(), s.to_lowercase())),
        _ => None,
    };
    Ok(Obj::new()
        .set("contentType", content_type.map(Json::from))
        .set("data", data.map(Json::from))
        .build())
}

/// Points `doc`'s related orders at the ServiceRequests of the message: the entry TXA-14/15
/// made for an order's number gains the reference; an order TXA does not name is added.
pub(super) fn relate(doc: &mut Resource, orders: &[Resource]) {
    for sr in orders
        .iter()
        .filter(|r| r.resource_type == "ServiceRequest")
    {
        let reference = Json::from(sr.reference());
        let ids = sr.body["identifier"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let same = |e: &Json| {
            ids.iter().any(|i| {
                i["system"] == e["identifier"]["system"] && i["value"] == e["identifier"]["value"]
            })
        };
        let related = &mut doc.body["context"]["related"];
        if !related.is_array() {
            *related = Json::Array(Vec::new());
        }
        let list = related.as_array_mut().expect("an array");
        let mut named = false;
        for e in list.iter_mut().filter(|e| same(e)) {
            e["reference"] = reference.clone();
            named = true;
        }
        if !named {
            list.push(json!({ "reference": reference }));
        }
    }
}

/// One OBX of the document: ED → an attachment (data as base64), TX/FT/ST → text, RP → a
/// URL, HD (a DICOM study uid) → a related study; any other type is an error, not a loss.
fn content(
    cx: &Ctx<'_, '_>,
    obx: &Segment<'_>,
    d: &mut Obj,
    related: &mut Vec<Json>,
) -> Result<(), MappingError> {
    let kind = text(&obx.field(2))
        .map_err(cx.at("OBX-2"))?
        .unwrap_or_default();
    let label = format!("OBX-5 ({kind})");
    let at = cx.at(label.clone());
    let b64 = base64::engine::general_purpose::STANDARD;
    let reps: Vec<_> = obx.field(5).repetitions().collect();
    match kind.as_str() {
        "ED" => {
            for rep in reps {
                let attachment = ed_attachment(cx, &rep, &label)?
                    .unwrap_or_else(|| json!({"title": "empty attachment"}));
                d.push("content", json!({"attachment": attachment}));
            }
        }
        "TX" | "FT" | "ST" => {
            let mut lines = Vec::new();
            for rep in reps {
                lines.extend(text(&rep).map_err(&at)?);
            }
            if !lines.is_empty() {
                d.push(
                    "content",
                    json!({"attachment": {
                        "contentType": "text/plain; charset=utf-8",
                        "data": b64.encode(lines.join("\n"))}}),
                );
            }
        }
        "RP" => {
            for rep in reps {
                if let Some(url) = text(&rep.component(1)).map_err(&at)? {
                    d.push("content", json!({"attachment": {"url": url}}));
                }
            }
        }
        "HD" => {
            for rep in reps {
                if let Some(uid) = text(&rep.component(1)).map_err(&at)? {
                    let code = cx.cwe(obx, 3)?.and_then(|c| c.text.or(c.identifier));
                    related.push(
                        Obj::new()
                            .set(
                                "identifier",
                                Some(json!({"system": "urn:dicom:uid",
                                    "value": format!("urn:oid:{uid}")})),
                            )
                            .set("display", code.map(Json::from))
                            .into_value(),
                    );
                }
            }
        }
        other => {
            return Err(cx.error(format!(
                "OBX-2 {other:?}: no DocumentReference content for this type (ED, TX, FT, ST, RP, HD)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Options, convert};
    use crate::formats::hl7::Message;
    use base64::Engine;

    #[test]
    fn a_document_maps_txa_and_its_content() {
        let raw = super::super::corpus("MDM-T02-01.hl7");
        let m = Message::parse(&raw).unwrap();
        let (rs, dir) = super::super::split_directory(convert(&m, &Options::default()).unwrap());
        let kinds: Vec<&str> = rs.iter().map(|r| r.resource_type).collect();
        assert_eq!(
            kinds,
            [
                "Patient",
                "Encounter",
                "ServiceRequest",
                "DocumentReference"
            ]
        );
        let d = &rs[3].body;
        assert_eq!(
            d["masterIdentifier"]["value"],
            "1.2.840.317.5947431.51.20080131160038"
        );
        assert_eq!(d["status"], "current");
        assert_eq!(d["docStatus"], "final");
        assert_eq!(d["type"]["coding"][0]["code"], "DI");
        assert_eq!(
            d["type"]["coding"][0]["system"],
            "http://terminology.hl7.org/CodeSystem/v2-0270"
        );
        assert_eq!(d["date"], "2008-01-31T16:00:00+02:15");
        let author = super::super::resolve(&dir, &d["author"][0]);
        assert_eq!(author["identifier"][0]["value"], "IvanDoctorovich");
        // TXA-14/15 name the order (placer 00012345, filler 1-1); OBX-2 HD the DICOM study.
        let related = d["context"]["related"].as_array().unwrap();
        assert_eq!(related[0]["identifier"]["value"], "00012345");
        assert_eq!(related[1]["identifier"]["value"], "1-1");
        assert_eq!(related[1]["type"], "ServiceRequest");
        // Both name the ORC/OBR's ServiceRequest, written before the document; its OBX
        // are the document's content, not the order's results.
        for r in &related[..2] {
            assert_eq!(r["reference"], rs[2].reference());
        }
        assert_eq!(rs[2].body["code"]["coding"][0]["code"], "02585");
        assert!(rs[2].body.get("supportingInfo").is_none(), "{}", rs[2].body);
        assert_eq!(rs.len(), 4);
        assert_eq!(
            d["content"][0]["attachment"]["contentType"],
            "application/pdf"
        );
        assert_eq!(
            related[2]["identifier"]["value"],
            "urn:oid:1.2.840.317.5947431.51"
        );
        assert_eq!(d["context"]["encounter"][0]["reference"], rs[1].reference());
        // Text content travels as base64 of the lines; an unknown OBX-2 is an error.
        let raw = String::from_utf8(raw).unwrap();
        let text = raw.replace(
            "OBX|2|ED|02585^TransthoracicEcho^PCV4||^application^pdf^Base64^",
            "OBX|2|TX|02585^TransthoracicEcho^PCV4||Normal study.~No effusion.",
        );
        let m = Message::parse(text.as_bytes()).unwrap();
        let (rs, _) = super::super::split_directory(convert(&m, &Options::default()).unwrap());
        let a = &rs[3].body["content"][0]["attachment"];
        let data = base64::engine::general_purpose::STANDARD
            .decode(a["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, b"Normal study.\nNo effusion.");
        let bad = raw.replace("OBX|2|ED|", "OBX|2|NM|");
        let m = Message::parse(bad.as_bytes()).unwrap();
        let e = convert(&m, &Options::default()).unwrap_err();
        assert!(e.reason.contains("OBX-2 \"NM\""), "{e}");
    }
}
