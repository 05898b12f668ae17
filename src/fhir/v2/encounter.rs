//! PV1 (+ PV2) → Encounter: the IG's `PV1(Encounter)` and `PV2(Encounter)`.

use crate::fhir::json::{Json, json};

use super::datatypes::{
    Obj, codeable_concept, date_time, identifier, identifier_type, mapped_concept, text,
};
use super::{Ctx, MappingError, Resource, concepts, stable_id};
use crate::formats::hl7::{Cwe, Cx, Ts};

const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// The Encounter of the message's PV1, or `None` for person-only events (A28/A31 and the
/// like send `PV1|1|N` with no visit: no Encounter is made of that).
pub(super) fn map(cx: &Ctx<'_, '_>, patient: &Resource) -> Result<Option<Resource>, MappingError> {
    let Some(pv1) = cx.segment("PV1") else {
        return Ok(None);
    };
    let at = |n: usize| cx.at(super::FieldAt("PV1", n));
    let class_code = text(&pv1.field(2).component(1)).map_err(at(2))?;
    let visit = Cx::from_element(&pv1.field(19).repetition(1)).map_err(at(19))?;
    let admit = Ts::from_element(&pv1.field(44)).map_err(at(44))?;
    let discharge = Ts::from_element(&pv1.field(45)).map_err(at(45))?;
    let no_visit =
        matches!(class_code.as_deref(), None | Some("N")) && visit.id.is_none() && admit.is_none();
    if no_visit {
        return Ok(None);
    }
    let systems = &cx.systems;
    let offset = cx.opts.default_zone;
    let mut e = Obj::resource(16);

    // Identifier: PV1-19 visit number (r41–44), typed VN; without an assigning authority it is
    // scoped to the sending facility, so that visit numbers of two senders never collide.
    let mut key = None;
    if let Some(mut v) = identifier(&visit, systems) {
        if v.get("system").is_none() {
            v["system"] = Json::from(cx.local_system("visit"));
        }
        if v.get("type").is_none() {
            v["type"] = identifier_type("VN");
        }
        key = Some((
            v["system"].as_str().unwrap_or_default().to_string(),
            v["value"].as_str().unwrap_or_default().to_string(),
        ));
        e.push("identifier", v);
    }
    // PV1-50 alternate visit id (r77).
    let alt = Cx::from_element(&pv1.field(50).repetition(1)).map_err(at(50))?;
    e.push("identifier", identifier(&alt, systems));

    // Status: PV1-45 sent → finished (r72); else the trigger event (Event[EncounterStatus]);
    // else the patient class (r5, PatientClass[EncounterStatus]).
    let status = if discharge.is_some() {
        "finished"
    } else {
        concepts::encounter_status_from_event(&cx.event)
            .or_else(|| {
                class_code
                    .as_deref()
                    .and_then(concepts::encounter_status_from_class)
            })
            .unwrap_or("unknown")
    };
    e.put("status", Some(Json::from(status)));
    // Class (r4): required by FHIR; an unknown or missing code keeps what was sent.
    let class = match class_code.as_deref() {
        Some(c) => match concepts::encounter_class(c) {
            Some((system, code)) => json!({"system": system, "code": code}),
            None => json!({"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": c}),
        },
        None => {
            json!({"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK"})
        }
    };
    e.put("class", Some(class));
    // PV1-4 admission type (r9), PV1-10 hospital service (r25).
    for (n, key) in [(4, "type"), (10, "serviceType")] {
        if let Some(c) = cx.cwe(&pv1, n)? {
            let v = codeable_concept(&c).map(|mut v| {
                // A bare v2 code: its table is the field's (0007, 0069).
                if let Some(Json::Array(codings)) = v.get_mut("coding") {
                    for coding in codings {
                        if coding.get("system").is_none() {
                            let table = if n == 4 { "0007" } else { "0069" };
                            coding["system"] = Json::from(format!(
                                "http://terminology.hl7.org/CodeSystem/v2-{table}"
                            ));
                        }
                    }
                }
                v
            });
            if n == 4 {
                e.push(key, v);
            } else {
                e.put(key, v);
            }
        }
    }
    e.put("subject", Some(json!({"reference": patient.reference()})));
    participants(cx, &pv1, &mut e)?;
    // Period: PV1-44 admit (r70), PV1-45 discharge (r71).
    e.put(
        "period",
        Obj::new()
            .set("start", admit.map(|t| Json::from(date_time(&t, offset))))
            .set("end", discharge.map(|t| Json::from(date_time(&t, offset))))
            .build(),
    );
    visit_details(cx, &mut e)?;
    e.put("hospitalization", hospitalization(cx, &pv1)?);
    // Locations: PV1-3 assigned (r6–8: active, or planned for pre-admits), PV1-6 prior
    // (r11–12: completed), PV1-11 temporary (r26–27: active), PV1-42 pending (r67: reserved).
    // Each a Location per component, the most granular referenced (PL[Location]).
    let planned = class_code.as_deref() == Some("P");
    for (n, status) in [
        (3, if planned { "planned" } else { "active" }),
        (6, "completed"),
        (11, "active"),
        (42, "reserved"),
    ] {
        if let Some(place) = cx.location(&pv1.field(n)).map_err(at(n))? {
            let mut entry = crate::fhir::json::Fields::new();
            entry.insert("location", place);
            entry.insert("status", Json::from(status));
            e.push("location", Json::Object(entry));
        }
    }

    let id = match &key {
        Some((system, value)) => stable_id(&["Encounter", system, value]),
        // No visit number: the patient and the admit time (else this message) identify it.
        None => stable_id(&[
            "Encounter",
            &patient.id,
            &admit
                .map(|t| t.to_string())
                .unwrap_or_else(|| cx.msg.control_id().into_owned()),
        ]),
    };
    Ok(Some(Resource::new("Encounter", id, key, e)))
}

/// PV2-3 admit reason (PV2(Encounter) r7), PV2-25 priority (r34).
fn visit_details(cx: &Ctx<'_, '_>, e: &mut Obj) -> Result<(), MappingError> {
    if let Some(pv2) = cx.segment("PV2") {
        if let Some(c) = cx.cwe(&pv2, 3)? {
            e.push("reasonCode", codeable_concept(&c));
        }
        if let Some(p) = text(&pv2.field(25).component(1)).map_err(cx.at("PV2-25"))? {
            let prio = Cwe {
                identifier: Some(p),
                text: text(&pv2.field(25).component(2)).map_err(cx.at("PV2-25"))?,
                ..Default::default()
            };
            e.put(
                "priority",
                mapped_concept(
                    &prio,
                    |c| {
                        Some((
                            "http://terminology.hl7.org/CodeSystem/v3-ActPriority",
                            match c {
                                "1" => "EM",
                                "2" => "UR",
                                "3" => "EL",
                                _ => return None,
                            },
                        ))
                    },
                    "0217",
                ),
            );
        }
    }
    Ok(())
}

/// Hospitalization: PV1-5 pre-admit number (r10), PV1-14 admit source (r33), PV1-36
/// discharge disposition (r61).
fn hospitalization(
    cx: &Ctx<'_, '_>,
    pv1: &crate::formats::hl7::Segment<'_>,
) -> Result<Option<Json>, MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("PV1", n));
    let mut h = Obj::new();
    let pre = Cx::from_element(&pv1.field(5).repetition(1)).map_err(at(5))?;
    h.put("preAdmissionIdentifier", identifier(&pre, &cx.systems));
    for (n, key, table) in [
        (14, "admitSource", "0023"),
        (36, "dischargeDisposition", "0112"),
    ] {
        if let Some(code) = text(&pv1.field(n).component(1)).map_err(at(n))? {
            h.put(
                key,
                Some(json!({"coding": [{
                    "system": format!("http://terminology.hl7.org/CodeSystem/v2-{table}"),
                    "code": code
                }]})),
            );
        }
    }
    Ok(h.build())
}

/// Participants: PV1-7 attending (r13–16), PV1-8 referring (r17–20), PV1-9 consulting
/// (r21–24), PV1-17 admitting (r36–39).
fn participants(
    cx: &Ctx<'_, '_>,
    pv1: &crate::formats::hl7::Segment<'_>,
    e: &mut Obj,
) -> Result<(), MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("PV1", n));
    for (n, code, display) in [
        (7, "ATND", "attender"),
        (8, "REF", "referrer"),
        (9, "CON", "consultant"),
        (17, "ADM", "admitter"),
    ] {
        for rep in pv1.field(n).repetitions() {
            if let Some(who) = cx.practitioner(&rep).map_err(at(n))? {
                e.push(
                    "participant",
                    json!({
                        "type": [{"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}],
                        "individual": who
                    }),
                );
            }
        }
    }
    Ok(())
}
