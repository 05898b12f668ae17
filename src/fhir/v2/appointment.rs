//! SCH (+ TQ1, NTE, AIS, AIP, AIL) → Appointment: the IG's `SCH(Appointment)`,
//! `AIS(Appointment)`, `AIP(Appointment)` and `AIL(Appointment)`.

use crate::fhir::json::{Json, json};
use chrono::Duration;

use super::datatypes::{Obj, codeable_concept, instant, text};
use super::{Ctx, MappingError, Resource, concepts, stable_id};
use crate::formats::hl7::{Segment, Ts};

pub(super) fn map(cx: &Ctx<'_, '_>, patient: &Resource) -> Result<Resource, MappingError> {
    let sch = cx
        .segment("SCH")
        .ok_or_else(|| cx.error("no SCH segment: nothing describes the appointment"))?;
    let offset = cx.opts.default_zone;
    let mut a = Obj::resource(14);

    // Identifiers: SCH-1 placer, SCH-2 filler (r3–4). The filler's id names the appointment
    // (the filler owns it); without an assigning authority it is scoped to the sender.
    let (ids, key) = cx.business_ids(
        &sch,
        &[
            (2, "appointment-filler", None),
            (1, "appointment-placer", None),
        ],
    )?;
    for v in ids {
        a.push("identifier", v);
    }
    let key =
        key.ok_or_else(|| cx.error("SCH-1/SCH-2: the appointment has no placer or filler id"))?;

    // SCH-7 reason (r9, or appointment type when coded in HL70277, r10), SCH-8 type (r11).
    if let Some(reason) = cx.cwe(&sch, 7)? {
        let key = if reason.coding_system.as_deref() == Some("HL70277") {
            "appointmentType"
        } else {
            "reasonCode"
        };
        let v = codeable_concept(&reason);
        if key == "reasonCode" {
            a.push(key, v);
        } else {
            a.put(key, v);
        }
    }
    if let Some(kind) = cx.cwe(&sch, 8)? {
        a.put("appointmentType", codeable_concept(&kind));
    }

    // Times: TQ1-7/8 (v2.5+), else SCH-11.4/.5 (the IG's TQ[Appointment]), else AIS-4; the
    // end from a duration when only the start is sent (SCH-9/10, AIS-7/8).
    let ais = cx.segment("AIS");
    let tq1 = cx.segment("TQ1");
    let mut start = None;
    let mut end = None;
    if let Some(tq1) = &tq1 {
        start = Ts::from_element(&tq1.field(7)).map_err(cx.at("TQ1-7"))?;
        end = Ts::from_element(&tq1.field(8)).map_err(cx.at("TQ1-8"))?;
    }
    if start.is_none() {
        // SCH-11 is a TQ: its start and end are components, not fields.
        let f = sch.field(11).repetition(1);
        let ts = |n: usize| -> Result<Option<Ts>, MappingError> {
            let label = format!("SCH-11.{n}");
            match text(&f.component(n)).map_err(cx.at(label.clone()))? {
                Some(t) => Ts::parse(&t)
                    .map(Some)
                    .map_err(|r| cx.error(format!("{label}: not a date/time: {r}"))),
                None => Ok(None),
            }
        };
        start = ts(4)?;
        end = ts(5)?;
    }
    if start.is_none()
        && let Some(ais) = &ais
    {
        start = Ts::from_element(&ais.field(4)).map_err(cx.at("AIS-4"))?;
    }
    let duration = match minutes(cx, &sch, 9, 10)? {
        Some(m) => Some(m),
        None => match &ais {
            Some(ais) => minutes(cx, ais, 7, 8)?,
            None => None,
        },
    };
    if let Some(m) = duration.filter(|m| *m > 0) {
        a.put("minutesDuration", Some(Json::from(m)));
    }
    let start_text = start.map(|t| instant(&t, offset));
    let end_text = match (end, start, duration) {
        (Some(e), _, _) => Some(instant(&e, offset)),
        (None, Some(s), Some(m)) => {
            let shifted = s.datetime() + Duration::minutes(m);
            let off = s.offset_in(offset);
            Some(
                shifted
                    .and_local_timezone(off)
                    .single()
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
                    .unwrap_or_default(),
            )
        }
        _ => None,
    };

    // Status: SCH-25 (r34, FillerStatusCodes), else AIS-10 (AIS r12); the event decides
    // cancellations and no-shows (S15, S26) whatever the status field says.
    let mut status = None;
    for (seg, n) in [(Some(&sch), 25), (ais.as_ref(), 10)] {
        if status.is_none()
            && let Some(seg) = seg
            && let Some(code) =
                text(&seg.field(n).component(1)).map_err(cx.at(super::FieldAt(seg.id(), n)))?
        {
            status = concepts::appointment_status(&code);
        }
    }
    let status = match cx.event.as_str() {
        "S15" => "cancelled",
        "S17" => "entered-in-error",
        "S26" => "noshow",
        _ => status.unwrap_or(if start_text.is_some() {
            "booked"
        } else {
            "proposed"
        }),
    };
    // app-3: only proposed, cancelled and waitlisted appointments may lack start and end.
    if !matches!(status, "proposed" | "cancelled" | "waitlist")
        && (start_text.is_none() || end_text.is_none())
    {
        return Err(cx.error(format!(
            "a {status} appointment needs a start and an end (TQ1-7/8, SCH-11.4/.5, or a start with a duration in SCH-9/10 or AIS-7/8)"
        )));
    }
    a.put("status", Some(Json::from(status)));
    a.put("start", start_text.map(Json::from));
    a.put("end", end_text.map(Json::from));

    // AIS-3 service (AIS r5).
    if let Some(ais) = &ais
        && let Some(service) = cx.cwe(ais, 3)?
    {
        a.push("serviceType", codeable_concept(&service));
    }
    a.put("comment", comment(cx)?);

    participants(cx, &mut a, patient)?;

    let id = stable_id(&["Appointment", &key.0, &key.1]);
    Ok(Resource::new("Appointment", id, Some(key), a))
}

/// A duration in minutes from field `value` with its unit in field `unit` (SCH r12: hours
/// converted; other units are not mapped).
fn minutes(
    cx: &Ctx<'_, '_>,
    seg: &Segment<'_>,
    value: usize,
    unit: usize,
) -> Result<Option<i64>, MappingError> {
    let label = format!("{}-{value}", seg.id());
    let Some(v) = text(&seg.field(value)).map_err(cx.at(label.clone()))? else {
        return Ok(None);
    };
    let unit = text(&seg.field(unit).component(1))
        .map_err(cx.at(label.clone()))?
        .unwrap_or_else(|| "min".into())
        .to_ascii_lowercase();
    let n: f64 = v
        .parse()
        .map_err(|_| cx.error(format!("{label}: duration `{v}` is not a number")))?;
    // SCH r12: a duration in minutes (hours converted); other units are not mapped.
    let per_minute = match unit.as_str() {
        "min" | "minute" | "minutes" => 1.0,
        "h" | "hr" | "hour" | "hours" => 60.0,
        _ => return Ok(None),
    };
    Ok(Some((n * per_minute).round() as i64))
}

/// NTE right after SCH → comment (SIU_S12 r10).
fn comment(cx: &Ctx<'_, '_>) -> Result<Option<Json>, MappingError> {
    let mut notes = Vec::new();
    let mut after_sch = false;
    for seg in cx.segments() {
        match seg.id() {
            "SCH" => after_sch = true,
            "NTE" | "TQ1" if after_sch => {
                if seg.id() == "NTE"
                    && let Some(t) = text(&seg.field(3)).map_err(cx.at("NTE-3"))?
                {
                    notes.push(t);
                }
            }
            _ => after_sch = false,
        }
    }
    Ok((!notes.is_empty()).then(|| Json::from(notes.join("\n"))))
}

/// Participants: the patient (PID(Appointment)), AIP-3 people with their role AIP-4 and
/// status AIP-12 (AIP r5–14), AIL-3 locations (AIL r5) with status AIL-12.
fn participants(cx: &Ctx<'_, '_>, a: &mut Obj, patient: &Resource) -> Result<(), MappingError> {
    a.push(
        "participant",
        json!({"actor": {"reference": patient.reference()}, "status": "accepted"}),
    );
    for aip in cx.segments_named(*b"AIP") {
        for rep in aip.field(3).repetitions() {
            let Some(who) = cx.practitioner(&rep).map_err(cx.at("AIP-3"))? else {
                continue;
            };
            let role = cx.cwe(&aip, 4)?.as_ref().and_then(codeable_concept);
            let st = text(&aip.field(12).component(1)).map_err(cx.at("AIP-12"))?;
            a.push(
                "participant",
                Obj::new()
                    .set("type", role.map(|r| Json::Array(vec![r])))
                    .set("actor", Some(who))
                    .set(
                        "status",
                        Some(Json::from(concepts::participant_status(
                            st.as_deref().unwrap_or("booked"),
                        ))),
                    )
                    .build(),
            );
        }
    }
    for ail in cx.segments_named(*b"AIL") {
        if let Some(place) = cx.location(&ail.field(3)).map_err(cx.at("AIL-3"))? {
            let st = text(&ail.field(12).component(1)).map_err(cx.at("AIL-12"))?;
            a.push(
                "participant",
                json!({
                    "actor": place,
                    "status": concepts::participant_status(st.as_deref().unwrap_or("booked"))
                }),
            );
        }
    }
    Ok(())
}
