//! DG1 → Condition (the IG's `DG1(Condition)`), and the Encounter's `diagnosis` entries
//! (`DG1(Encounter)`): the ADT_A01 and SIU_S12 message maps make a Condition of each DG1
//! "in context of the patient", and list it on the encounter when there is one. The IG sets
//! no `Condition.encounter`: the link goes one way, so the Conditions go before the
//! Encounter and a writer that sends resources in order (the sync sink) never leaves a
//! reference to one it has not sent yet.

use crate::fhir::json::{Json, json};

use super::datatypes::{Obj, codeable_concept, date_time, entity_identifier, mapped_concept, text};
use super::{Ctx, MappingError, Resource, concepts, stable_id, tagged};
use crate::formats::hl7::{Segment, Ts};

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
const VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
/// R4's canonical URL; the IG's row 19 spells it `http://www.hl7.org/fhir/extension-…`, which
/// validators do not know.
const ASSERTED_DATE: &str = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate";
const DUE_TO: &str = "http://hl7.org/fhir/StructureDefinition/condition-dueTo";

/// A Condition per DG1 of the message, each listed on `encounter` (when sent) with its use
/// (DG1-6) and rank (DG1-15).
pub(super) fn map(
    cx: &Ctx<'_, '_>,
    patient: &Resource,
    mut encounter: Option<&mut Resource>,
) -> Result<Vec<Resource>, MappingError> {
    let mut out = Vec::new();
    for dg1 in cx.segments_named(*b"DG1") {
        let context = encounter.as_deref();
        let (condition, entry) = one(cx, &dg1, patient, context)?;
        if let Some(e) = encounter.as_deref_mut()
            && let Json::Object(body) = &mut e.body
        {
            match body.get_mut("diagnosis") {
                Some(Json::Array(list)) => list.push(entry),
                _ => {
                    body.insert("diagnosis", Json::Array(vec![entry]));
                }
            }
        }
        out.push(condition);
    }
    Ok(out)
}

/// One DG1's Condition and its Encounter.diagnosis entry.
fn one(
    cx: &Ctx<'_, '_>,
    dg1: &Segment<'_>,
    patient: &Resource,
    encounter: Option<&Resource>,
) -> Result<(Resource, Json), MappingError> {
    let at = |n: usize| cx.at(super::FieldAt("DG1", n));
    let zone = cx.opts.default_zone;
    let mut c = Obj::resource(12);
    let code = cx.cwe(dg1, 3)?;
    // DG1-20 (r23), the sender's id for the diagnosis, goes in as sent. The key a writer
    // matches on is scoped to the visit (else the patient), by that id or else the code:
    // senders reuse diagnosis ids across patients (FHIR-Converter's samples all send
    // `DI20`), and a match on the id alone would overwrite another patient's Condition.
    // The scope is a hashed id, so no MRN goes into the key.
    let sent = entity_identifier(&dg1.field(20).repetition(1), &cx.systems).map_err(at(20))?;
    let names = match (&sent, &code) {
        (Some(v), _) => format!(
            "id:{}|{}",
            v.get("system").and_then(Json::as_str).unwrap_or(""),
            v["value"].as_str().unwrap_or("")
        ),
        (None, Some(code)) if code.identifier.is_some() => format!(
            "code:{}|{}",
            code.coding_system.as_deref().unwrap_or(""),
            code.identifier.as_deref().unwrap_or("")
        ),
        _ => {
            return Err(cx.error(
                "DG1-3: a diagnosis without a code (or a DG1-20 identifier) cannot be matched across messages",
            ));
        }
    };
    c.push("identifier", sent);
    let scope = encounter.unwrap_or(patient);
    let key = (
        cx.local_system("diagnosis"),
        format!("{}/{}/{names}", scope.resource_type, scope.id),
    );
    c.push(
        "identifier",
        json!({"system": key.0.as_str(), "value": key.1.as_str()}),
    );
    // DG1-21 (r24): D (delete) is entered-in-error; A and U map to nothing.
    if text(&dg1.field(21)).map_err(at(21))?.as_deref() == Some("D") {
        c.put(
            "verificationStatus",
            Some(json!({"coding": [{"system": VERIFICATION, "code": "entered-in-error"}]})),
        );
    }
    // Not an IG row: a diagnosis sent with a visit is an encounter diagnosis (US Core and
    // most EHRs require a category).
    if encounter.is_some() {
        c.put(
            "category",
            Some(json!([{"coding": [{"system": CATEGORY, "code": "encounter-diagnosis"}]}])),
        );
    }
    // DG1-3 code (r3), DG1-4 description as its text (r4).
    let description = text(&dg1.field(4)).map_err(at(4))?;
    let mut concept = code.as_ref().and_then(codeable_concept);
    if let Some(d) = &description {
        let c = concept.get_or_insert_with(|| json!({}));
        c["text"] = Json::from(d.as_str());
    }
    c.put("code", concept);
    c.put("subject", Some(json!({"reference": patient.reference()})));
    // DG1-5 onset (r5), DG1-19 attestation as recordedDate and the assertedDate extension
    // (r19).
    if let Some(ts) = Ts::from_element(&dg1.field(5)).map_err(at(5))? {
        c.put("onsetDateTime", Some(Json::from(date_time(&ts, zone))));
    }
    if let Some(ts) = Ts::from_element(&dg1.field(19)).map_err(at(19))? {
        let when = date_time(&ts, zone);
        c.push(
            "extension",
            json!({"url": ASSERTED_DATE, "valueDateTime": when.as_str()}),
        );
        c.put("recordedDate", Some(Json::from(when)));
    }
    // DG1-22 parent diagnosis (r22): a reference by its identifier.
    if let Some(parent) =
        entity_identifier(&dg1.field(22).repetition(1), &cx.systems).map_err(at(22))?
    {
        c.push(
            "extension",
            json!({"url": DUE_TO, "valueReference": {"identifier": parent}}),
        );
    }
    // DG1-16 diagnosing clinician (r16): the first; FHIR's asserter does not repeat.
    if let Some(who) = cx
        .practitioner(&dg1.field(16).repetition(1))
        .map_err(at(16))?
    {
        c.put("asserter", Some(who));
    }
    let id = stable_id(&["Condition", &key.0, &key.1]);
    // DG1(Encounter): DG1-6 type as the use (DiagnosisType: A → AD, others kept as sent),
    // DG1-15 priority as the rank.
    let mut entry = Obj::new().set("condition", json!({"reference": format!("Condition/{id}")}));
    if let Some(t) = cx.cwe(dg1, 6)? {
        entry.put("use", mapped_concept(&t, concepts::diagnosis_type, "0052"));
    }
    // Table 0359: 0 is "not included in the ranking", 1 the primary diagnosis.
    if let Some(rank) = text(&dg1.field(15)).map_err(at(15))? {
        let n: u32 = rank
            .parse()
            .map_err(|_| cx.error("DG1-15: the priority is not a whole number"))?;
        if n > 0 {
            entry.put("rank", Some(Json::from(n)));
        }
    }
    let condition = tagged(Resource::new("Condition", id, Some(key), c), zone);
    Ok((condition, entry.into_value()))
}

#[cfg(test)]
mod tests {
    use super::super::{Options, Resource, convert, corpus, resolve};
    use crate::formats::hl7::Message;

    fn map(raw: &[u8]) -> Vec<Resource> {
        convert(&Message::parse(raw).unwrap(), &Options::default()).unwrap()
    }

    /// ADT-A01-01's `DG1|1|I9|422504002^Ischemic stroke(disorder)^SCT|Stroke|
    /// 20040125114025+0420|A|…|1|005454^DIAG^ROBIN^B|||20200501133015+0215|
    /// DI20^Diagnosis^1.3.6.1.4.1.44750.1.2.2^CLIP|A|…`.
    #[test]
    fn a_dg1_is_a_condition_listed_on_the_encounter() {
        let rs = map(&corpus("ADT-A01-01.hl7"));
        let c = rs.iter().find(|r| r.resource_type == "Condition").unwrap();
        let enc = rs.iter().find(|r| r.resource_type == "Encounter").unwrap();
        let b = &c.body;
        // DG1-20 as sent; the key is scoped to the visit.
        assert_eq!(
            b["identifier"][0]["system"],
            "urn:oid:1.3.6.1.4.1.44750.1.2.2"
        );
        assert_eq!(b["identifier"][0]["value"], "DI20");
        let key = c.identifier.clone().unwrap();
        assert_eq!(b["identifier"][1]["value"], key.1.as_str());
        assert_eq!(
            key.1,
            format!(
                "Encounter/{}/id:urn:oid:1.3.6.1.4.1.44750.1.2.2|DI20",
                enc.id
            )
        );
        assert_eq!(b["code"]["coding"][0]["code"], "422504002");
        assert_eq!(b["code"]["coding"][0]["system"], "http://snomed.info/sct");
        assert_eq!(b["code"]["text"], "Stroke");
        assert_eq!(b["onsetDateTime"], "2004-01-25T11:40:25+04:20");
        assert_eq!(b["recordedDate"], "2020-05-01T13:30:15+02:15");
        assert_eq!(b["extension"][0]["valueDateTime"], b["recordedDate"]);
        assert_eq!(b["category"][0]["coding"][0]["code"], "encounter-diagnosis");
        assert_eq!(resolve(&rs, &b["subject"])["resourceType"], "Patient");
        assert!(b.get("encounter").is_none());
        let at = |t: &str| rs.iter().position(|r| r.resource_type == t).unwrap();
        assert!(
            at("Condition") < at("Encounter"),
            "written before what names it"
        );
        let asserter = resolve(&rs, &b["asserter"]);
        assert_eq!(asserter["identifier"][0]["value"], "005454");
        assert_eq!(asserter["name"][0]["family"], "DIAG");
        // DG1-21 A maps to nothing; only D is entered-in-error.
        assert!(b.get("verificationStatus").is_none());
        // DG1(Encounter): the entry names the condition, DG1-6 A → AD, DG1-15 → rank.
        let d = &enc.body["diagnosis"][0];
        assert_eq!(resolve(&rs, &d["condition"])["id"], c.id.as_str());
        assert_eq!(d["use"]["coding"][0]["code"], "AD");
        assert_eq!(d["rank"], 1);
    }

    /// Without DG1-20 the code within the encounter names the Condition: the same
    /// diagnosis re-sent updates it, another one is another Condition; no MRN in the key.
    #[test]
    fn a_diagnosis_without_an_id_is_keyed_by_its_code_and_visit() {
        let msg = |dg1: &str| {
            format!(
                "MSH|^~\\&|APP|GHH|B|C|20260101||ADT^A08|X1|P|2.5\rPID|1||555^^^GHH^MR||DOE^JANE\r\
                 PV1|1|I|||||||||||||||||V1^^^GHH^VN\r{dg1}\r"
            )
        };
        let id_of = |dg1: &str| {
            let rs = map(msg(dg1).as_bytes());
            let c = rs.iter().find(|r| r.resource_type == "Condition").unwrap();
            assert!(!c.identifier.as_ref().unwrap().1.contains("555"));
            c.id.clone()
        };
        let a = id_of("DG1|1||I10^Hypertension^I10||20260101|W|||||||||0");
        assert_eq!(a, id_of("DG1|2||I10^High blood pressure^I10|||F"));
        assert_ne!(a, id_of("DG1|1||E11^Diabetes^I10"));
        // A diagnosis id reused for another patient's visit is another Condition.
        let with_id = "DG1|1||I10^Hypertension^I10|||A||||||||||||||DI20^^1.2.3^ISO";
        let other = msg(with_id)
            .replace("555^^^GHH", "556^^^GHH")
            .replace("V1^", "V2^");
        let theirs = map(other.as_bytes());
        let theirs = theirs
            .iter()
            .find(|r| r.resource_type == "Condition")
            .unwrap();
        assert_ne!(id_of(with_id), theirs.id);
        // W and F have no diagnosis-role: kept as sent; priority 0 is no rank.
        let rs = map(msg("DG1|1||I10^Hypertension^I10||20260101|W|||||||||0||||||D").as_bytes());
        let enc = rs.iter().find(|r| r.resource_type == "Encounter").unwrap();
        assert_eq!(enc.body["diagnosis"][0]["use"]["coding"][0]["code"], "W");
        assert!(enc.body["diagnosis"][0].get("rank").is_none());
        let c = rs.iter().find(|r| r.resource_type == "Condition").unwrap();
        assert_eq!(
            c.body["verificationStatus"]["coding"][0]["code"],
            "entered-in-error"
        );
        // No code and no id: an error naming the field (the message goes to the DLQ).
        let err = convert(
            &Message::parse(msg("DG1|1||^^|just text").as_bytes()).unwrap(),
            &Options::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("DG1-3"), "{err}");
    }
}
