//! SPM → Specimen: the IG's `SPM(Specimen)` map, for results (ORU_R01) and orders (OML_O21).

use crate::fhir::json::{Json, json};

use super::datatypes::{Obj, codeable_concept, date_time, entity_identifier, text};
use super::{Ctx, MappingError, Resource, stable_id, tagged};
use crate::formats::hl7::{Segment, Ts};

/// The Specimen of `spm`, collected from `subject`, for the order keyed `order` (whose
/// number names a specimen sent without an id of its own; `index` is its place there).
pub(super) fn map(
    cx: &Ctx<'_, '_>,
    spm: &Segment<'_>,
    order: &(String, String),
    index: usize,
    subject: &Json,
) -> Result<Resource, MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("SPM", n));
    let zone = cx.opts.default_zone;
    let mut s = Obj::resource(12);
    // SPM-2 specimen id (r2, an EIP): the filler's part names the specimen, else the placer's.
    let id = spm.field(2).repetition(1);
    let mut key = None;
    for (part, kind, code) in [(2, "specimen-filler", "FGN"), (1, "specimen-placer", "PGN")] {
        if let Some(mut v) = entity_identifier(&id.component(part), &cx.systems).map_err(at(2))? {
            if v.get("system").is_none() {
                v["system"] = Json::from(cx.local_system(kind));
            }
            v["type"] = json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]});
            key.get_or_insert_with(|| {
                (
                    v["system"].as_str().unwrap_or_default().to_string(),
                    v["value"].as_str().unwrap_or_default().to_string(),
                )
            });
            s.push("identifier", v);
        }
    }
    // SPM-30 accession id (r30).
    if let Some(v) = entity_identifier(&spm.field(30).repetition(1), &cx.systems).map_err(at(30))? {
        s.put("accessionIdentifier", Some(v));
    }
    // SPM-20 availability (r20, YesNoIndicator → specimen-status).
    let status = match text(&spm.field(20)).map_err(at(20))?.as_deref() {
        Some("Y") => Some("available"),
        Some("N") => Some("unavailable"),
        _ => None,
    };
    s.put("status", status.map(Json::from));
    // SPM-4 specimen type (r4).
    if let Some(t) = cx.cwe(spm, 4)? {
        s.put("type", codeable_concept(&t));
    }
    s.put("subject", Some(subject.clone()));
    // SPM-18 received (r18).
    let received = Ts::from_element(&spm.field(18))
        .map_err(at(18))?
        .map(|t| date_time(&t, zone));
    s.put("receivedTime", received.map(Json::from));
    // Collection: SPM-17 (r17, a period when it has an end), SPM-7 method, SPM-8 site,
    // SPM-12 quantity (CQ: amount^units).
    let mut collection = Obj::new();
    let start = Ts::from_element(&spm.field(17).component(1))
        .map_err(at(17))?
        .map(|t| date_time(&t, zone));
    let end = Ts::from_element(&spm.field(17).component(2))
        .map_err(at(17))?
        .map(|t| date_time(&t, zone));
    match (start, end) {
        (start, Some(end)) => collection.put(
            "collectedPeriod",
            Obj::new()
                .set("start", start.map(Json::from))
                .set("end", Json::from(end))
                .build(),
        ),
        (Some(start), None) => collection.put("collectedDateTime", Some(Json::from(start))),
        (None, None) => {}
    }
    if let Some(m) = cx.cwe(spm, 7)? {
        collection.put("method", codeable_concept(&m));
    }
    if let Some(site) = cx.cwe(spm, 8)? {
        collection.put("bodySite", codeable_concept(&site));
    }
    let quantity = spm.field(12);
    if let Some(amount) = text(&quantity.component(1)).map_err(at(12))? {
        let n = crate::formats::hl7::datatypes::parse_nm(&amount)
            .map_err(|e| cx.error(format!("SPM-12: {e}")))?;
        let unit = text(&quantity.component(2).subcomponent(2))
            .map_err(at(12))?
            .or(text(&quantity.component(2).subcomponent(1)).map_err(at(12))?);
        collection.put(
            "quantity",
            Obj::new()
                .set("value", super::observation::number(n))
                .set("unit", unit.map(Json::from))
                .build(),
        );
    }
    s.put("collection", collection.build());
    // SPM-24 condition (r24, each repetition).
    for rep in spm.field(24).repetitions() {
        let c = crate::formats::hl7::Cwe::from_element(&rep).map_err(at(24))?;
        s.push("condition", codeable_concept(&c));
    }
    // SPM-27 container type (r27).
    if let Some(c) = cx.cwe(spm, 27)? {
        s.push(
            "container",
            Obj::new().set("type", codeable_concept(&c)).build(),
        );
    }
    // SPM-14 description (r14) → note.
    if let Some(d) = text(&spm.field(14)).map_err(at(14))? {
        s.push("note", json!({"text": d}));
    }
    // Without an id of its own, the specimen is numbered within its order.
    let key = match key {
        Some(k) => k,
        None => {
            let k = (order.0.clone(), format!("{}-SPM-{}", order.1, index + 1));
            s.push(
                "identifier",
                json!({"system": k.0.as_str(), "value": k.1.as_str()}),
            );
            k
        }
    };
    let id = stable_id(&["Specimen", &key.0, &key.1]);
    Ok(tagged(Resource::new("Specimen", id, Some(key), s), zone))
}
