//! HL7v2 → FHIR R4 (`plexus fhir convert`) on the shared third-party corpus: resources checked
//! field by field against the messages and the v2-to-FHIR IG rows, validated by an
//! independent implementation of the FHIR models (`scripts/fhir-validate`, fhir.resources),
//! and written as transaction Bundles to a real FHIR server (sekmet, from
//! `scripts/dev-services`) — twice, to show that a replay changes nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::BIN;

use support::FHIR;

/// ADT-A01-01's visit number authority `AccMng&1.2&HCD`: its universal id is an OID (HD-3
/// says HCD, the id says OID), so the system is `urn:oid:` — an absolute URI, as FHIR wants.
const ACCMNG: &str = "urn:oid:1.2";

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/corpus")
        .join(name)
}

/// `plexus fhir convert` with `args`; (exit code, stdout lines as JSON, stderr).
fn convert(args: &[&str]) -> (i32, Vec<Value>, String) {
    let o = Command::new(BIN)
        .args(["fhir", "convert"])
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        o.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn one(file: &str) -> Vec<Value> {
    let (code, out, err) = convert(&[corpus(file).to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out
}

/// `fhir convert` converts chunks of messages on every core: whatever the number of threads,
/// the output is the same bytes in input order, and a bad message is reported at its place
/// with the rest converted (exit 1). 4,000 messages, over 8 MB: many chunks of 32 per worker,
/// and the pages already converted are given back (every 4 MB) while later ones are read.
#[test]
fn convert_keeps_input_order_on_any_number_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = Vec::new();
    for i in 0..4000 {
        let name = MAPPED[i % MAPPED.len()];
        let msg = std::fs::read_to_string(corpus(name)).unwrap();
        input.extend_from_slice(msg.trim_start_matches('\u{feff}').trim_end().as_bytes());
        input.extend_from_slice(b"\r");
        if i == 301 {
            // No mapping for this message type: reported, the rest go on.
            input.extend_from_slice(
                b"MSH|^~\\&|A|B|C|D|20240101||ZZZ^Z01|BAD301|P|2.5\rPID|1||1^^^H^MR\r",
            );
        }
    }
    assert!(input.len() > 8 << 20, "{} bytes", input.len());
    let file = dir.path().join("mixed.hl7");
    std::fs::write(&file, &input).unwrap();
    let run = |threads: &str, bundle: bool| {
        let mut c = Command::new(BIN);
        c.args([
            "fhir",
            "convert",
            file.to_str().unwrap(),
            "--threads",
            threads,
        ]);
        if bundle {
            c.args(["--bundle", "transaction"]);
        }
        c.output().unwrap()
    };
    for bundle in [false, true] {
        let one = run("1", bundle);
        assert_eq!(
            one.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&one.stderr)
        );
        let err = String::from_utf8_lossy(&one.stderr);
        assert_eq!(err.matches("error:").count(), 1, "{err}");
        assert!(err.contains("message 302 at byte"), "{err}");
        assert!(err.contains("4000 messages converted"), "{err}");
        if bundle {
            assert_eq!(one.stdout.iter().filter(|&&b| b == b'\n').count(), 4000);
        }
        for threads in ["2", "3"] {
            let many = run(threads, bundle);
            assert_eq!(many.status.code(), Some(1));
            assert!(
                many.stdout == one.stdout,
                "--threads {threads}: another output"
            );
            assert_eq!(String::from_utf8_lossy(&many.stderr), err);
        }
    }
}

/// The resources a message names rather than records (conditional creates).
const DIRECTORY: [&str; 3] = ["Practitioner", "Location", "Organization"];

/// The message's own resources: all but the Practitioners, Locations and Organizations.
fn clinical(rs: &[Value]) -> Vec<&Value> {
    rs.iter()
        .filter(|r| !DIRECTORY.contains(&r["resourceType"].as_str().unwrap_or_default()))
        .collect()
}

/// The resource a Reference (`{"reference": "Type/id"}`) names among `rs`.
fn resolve<'a>(rs: &'a [Value], reference: &Value) -> &'a Value {
    let name = reference["reference"]
        .as_str()
        .unwrap_or_else(|| panic!("{reference}"));
    rs.iter()
        .find(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            ) == name
        })
        .unwrap_or_else(|| panic!("{name} is not among the resources"))
}

fn of_type<'a>(rs: &'a [Value], t: &str) -> &'a Value {
    rs.iter()
        .find(|r| r["resourceType"] == t)
        .unwrap_or_else(|| panic!("no {t} in {rs:#?}"))
}

#[test]
fn adt_a01_maps_patient_and_encounter_field_by_field() {
    support::need_fhir();
    let rs = one("ADT-A01-01.hl7");
    // Patient, the DG1's Condition (tested in `fhir::v2::condition`), Encounter.
    assert_eq!(clinical(&rs).len(), 3);
    let p = of_type(&rs, "Patient");
    // PID-3 (r5): CX-4 `test1&2.16.1&HCD`: the universal id is an OID (whatever HD-3
    // says), so the system is `urn:oid:` (an absolute URI, as FHIR requires), CX-5 MR.
    assert_eq!(
        p["identifier"][1],
        json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:2.16.1", "value": "PATID1234", "assigner": {"display": "test1"}
        })
    );
    // PID-19 SSN (r30–34), PID-20 driver's licence (r35).
    let ids = p["identifier"].as_array().unwrap();
    assert!(ids.contains(&json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]},
        "system": "http://hl7.org/fhir/sid/us-ssn", "value": "PSSN123121234"
    })));
    assert!(ids.iter().any(|i| i["value"] == "DLN-123"));
    // PID-5 (r7, XPN): FN-1 family, given XPN-2/3, suffix XPN-4 + degree XPN-6, prefix XPN-5,
    // use from XPN-7 `D` → usual; the alias repetition with `L` → official.
    assert_eq!(
        p["name"][0],
        json!({"use": "usual", "family": "EVERYMAN", "given": ["ADAM", "A"], "prefix": ["Dr."], "suffix": ["III", "MD"]})
    );
    assert_eq!(p["name"][1]["use"], "official");
    assert_eq!(p["name"][1]["family"], "Josh");
    // PID-8 M → male (AdministrativeSex r4); PID-7 with a time → birthDate + birthTime.
    assert_eq!(p["gender"], "male");
    assert_eq!(p["birthDate"], "1988-08-18");
    assert_eq!(
        p["_birthDate"]["extension"][0]["valueDateTime"],
        "1988-08-18T11:26:00+02:15"
    );
    // PID-11 (XAD): SAD parts and XAD-2 as lines, XAD-7 `M` → type postal; PID-12 → district.
    assert_eq!(
        p["address"][0],
        json!({"type": "postal", "line": ["1000", "Hospital Lane", "Ste. 123"], "city": "Ann Arbor",
               "district": "GL", "state": "MI", "postalCode": "99999", "country": "USA"})
    );
    // PID-13: equipment CP → phone, use mobile (the IG's r6 puts `mobile` in use).
    let telecom = p["telecom"].as_array().unwrap();
    assert!(telecom.contains(&json!({"system": "phone", "value": "12121212", "use": "mobile"})));
    // PID-14 TDD → other, default use work (r24); PID-40 Internet → email.
    assert!(telecom.contains(&json!({"system": "other", "value": "1111", "use": "work"})));
    assert!(telecom.contains(&json!({"system": "email", "value": "89898989", "use": "work"})));
    // PID-16 M → v3 MaritalStatus M, the v2 code kept beside it.
    assert_eq!(
        p["maritalStatus"]["coding"][0],
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M", "display": "Married"})
    );
    // PID-15 (r25) per the IG's PrimaryLanguage map: BCP-47 for both codings, the HL70296
    // alternate `eng` → `en`.
    assert_eq!(
        p["communication"][0]["language"]["coding"],
        json!([{"system": "urn:ietf:bcp:47", "code": "ar"},
               {"system": "urn:ietf:bcp:47", "code": "en", "display": "English-us"}])
    );
    // PID-25 birth order 2 (r41) wins over PID-24; PID-29 → deceasedDateTime (r49).
    assert_eq!(p["multipleBirthInteger"], 2);
    assert_eq!(p["deceasedDateTime"], "2008-08-25T11:16:30+01:15");
    // NK1 → contact: NK1-3 EMC → v2-0131 C (Relationship r28), NK1-7 O (ContactRole r9).
    let c = &p["contact"][0];
    assert_eq!(
        c["relationship"][0]["coding"][0],
        json!({"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "C", "display": "test"})
    );
    assert_eq!(c["relationship"][1]["coding"][0]["code"], "O");
    assert_eq!(c["name"]["family"], "Evan");
    assert_eq!(c["gender"], "female");
    assert_eq!(
        c["period"],
        json!({"start": "2021-08-18", "end": "2021-12-18"})
    );
    // PD1-4 → generalPractitioner: a Practitioner (XCN[Practitioner]).
    let gp = resolve(&rs, &p["generalPractitioner"][0]);
    assert_eq!(gp["identifier"][0]["value"], "88");

    let e = of_type(&rs, "Encounter");
    assert_eq!(
        e["subject"]["reference"],
        format!("Patient/{}", p["id"].as_str().unwrap())
    );
    // PV1-2 P → PRENC (EncounterClass r6); A01 → in-progress (no PV1-45).
    assert_eq!(
        e["class"],
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PRENC"})
    );
    assert_eq!(e["status"], "in-progress");
    // PV1-19 (r41–44): the visit number with its authority's OID.
    assert_eq!(e["identifier"][0]["value"], "40007716");
    assert_eq!(e["identifier"][0]["system"], ACCMNG);
    // PV1-44 (r70).
    assert_eq!(e["period"], json!({"start": "2015-02-08T11:34:19+01:10"}));
    // PV1-7/8/9/17 participants (ATND, REF, CON, ADM).
    let codes: Vec<&str> = e["participant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"][0]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["ATND", "REF", "CON", "ADM"]);
    let attender = resolve(&rs, &e["participant"][0]["individual"]);
    assert_eq!(attender["identifier"][0]["value"], "1122334");
    assert_eq!(attender["identifier"][0]["system"], "urn:oid:1.23");
    assert_eq!(attender["name"][0]["family"], "Alaz");
    // PV1-3 (r6–7: planned for a pre-admit), PV1-6 prior (completed), PV1-42 (reserved).
    let loc = e["location"].as_array().unwrap();
    assert_eq!(loc[0]["status"], "planned");
    assert!(
        loc[0]["location"]["display"]
            .as_str()
            .unwrap()
            .contains("bed Bed 03")
    );
    assert_eq!(resolve(&rs, &loc[0]["location"])["name"], "Bed 03");
    assert!(loc.iter().any(|l| l["status"] == "completed"));
    assert!(loc.iter().any(|l| l["status"] == "reserved"));
    // PV2-3 admit reason (SNOMED).
    assert_eq!(
        e["reasonCode"][0]["coding"][0],
        json!({"system": "http://snomed.info/sct", "code": "140004", "display": "Chronic pharyngitis"})
    );
}

#[test]
fn discharge_and_update_events_set_the_encounter_status() {
    // A08 of the corpus sends PV1-45: finished (PV1 r72) whatever the event.
    let a08 = one("ADT-A08-01.hl7");
    let e = of_type(&a08, "Encounter");
    assert_eq!(e["status"], "finished");
    assert_eq!(e["period"]["end"], "2015-02-09T11:34:19+01:10");
    // A04 without PV1-45: registration → planned (Event[EncounterStatus]).
    let a04 = one("ADT-A04-01.hl7");
    assert_eq!(of_type(&a04, "Encounter")["status"], "planned");
    // The same patient and visit in all three: the same deterministic ids.
    let a01 = one("ADT-A01-01.hl7");
    for t in ["Patient", "Encounter"] {
        assert_eq!(of_type(&a01, t)["id"], of_type(&a08, t)["id"], "{t}");
        assert_eq!(of_type(&a01, t)["id"], of_type(&a04, t)["id"], "{t}");
    }
    // v2.3 with a BOM, inpatient: class IMP.
    let old = one("ADT01-23.hl7");
    assert_eq!(of_type(&old, "Encounter")["class"]["code"], "IMP");
    assert_eq!(of_type(&old, "Patient")["name"][0]["family"], "DUCK");
}

#[test]
fn siu_s12_maps_to_an_appointment() {
    let rs = one("SIU-S12-01.hl7");
    let p = of_type(&rs, "Patient");
    let a = of_type(&rs, "Appointment");
    // SCH-25 Booked (FillerStatusCodes r5); TQ1-7/8 → start/end as instants.
    assert_eq!(a["status"], "booked");
    assert_eq!(a["start"], "2021-09-24T09:30:00+02:15");
    assert_eq!(a["end"], "2021-09-24T10:20:00+02:15");
    // SCH-9 is 60 `s` (not minutes: r12 does not map it); AIS-7 is 50 min.
    assert_eq!(a["minutesDuration"], 50);
    // SCH-2 filler id names the appointment, scoped to the sending facility (no authority).
    assert_eq!(
        a["identifier"][0],
        json!({"system": "urn:plexus:v2:GHHSFacility:appointment-filler", "value": "36996"})
    );
    assert_eq!(a["identifier"][1]["value"], "12345");
    // AIS-3 service (SNOMED), the NTE after SCH as the comment.
    assert_eq!(a["serviceType"][0]["coding"][0]["code"], "76164006");
    assert_eq!(a["comment"], "Appointment booked for emergency procedure");
    // Participants: the patient, AIP-3 with AIP-4 as type, AIL-3 location; all accepted.
    let parts = a["participant"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{parts:#?}");
    assert_eq!(
        parts[0]["actor"]["reference"],
        format!("Patient/{}", p["id"].as_str().unwrap())
    );
    assert_eq!(
        resolve(&rs, &parts[1]["actor"])["identifier"][0]["value"],
        "1210"
    );
    assert_eq!(
        parts[1]["type"][0]["coding"][0]["display"],
        "Gastroenterologist"
    );
    assert!(
        parts[2]["actor"]["display"]
            .as_str()
            .unwrap()
            .contains("Room01")
    );
    assert!(parts.iter().all(|p| p["status"] == "accepted"));
    // The PV1 is the appointment's visit (SIU_S12 4.2), planned for S12.
    let e = of_type(&rs, "Encounter");
    assert_eq!(e["status"], "planned");
    assert_eq!(
        e["appointment"][0]["reference"],
        format!("Appointment/{}", a["id"].as_str().unwrap())
    );
}

#[test]
fn unmappable_and_broken_messages_are_reported_with_where_and_the_rest_converted() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(corpus("ADT01-23.hl7")).unwrap();
    let good = good.trim_start_matches('\u{feff}').to_string();
    // A birth date that is no date, and a DFT (financial: no FHIR mapping).
    let bad_dob = good
        .replace("|19241010|M|", "|1924131|M|")
        .replace("599102", "BADDOB");
    let dft = std::fs::read_to_string(corpus("DFT-P03-01.hl7")).unwrap();
    let input = dir.path().join("mixed.hl7");
    // The corpus files do not end in a segment terminator.
    std::fs::write(&input, format!("{good}\n{bad_dob}\n{dft}\n")).unwrap();
    let (code, out, err) = convert(&[input.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        clinical(&out).len(),
        3,
        "the good message's three resources: {out:#?}"
    );
    assert!(
        err.contains("message 1 at byte") && err.contains("BADDOB") && err.contains("PID-7"),
        "{err}"
    );
    assert!(
        err.contains("DFT^P03") && err.contains("no FHIR mapping"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "1 messages converted to {} resources, 2 failed",
            out.len()
        )),
        "{err}"
    );
}

/// The two independent validators (installed by `scripts/dev-services up`): the FHIR 4.0.1
/// models of fhir.resources (Python) and the official R4 JSON Schema run by ajv (Node).
#[derive(Clone, Copy, Debug)]
enum Validator {
    Models,
    JsonSchema,
}

const VALIDATORS: [Validator; 2] = [Validator::Models, Validator::JsonSchema];

fn validate_with(which: Validator, ndjson: &[Value]) -> (bool, String) {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut cmd = match which {
        Validator::Models => {
            let mut c = Command::new(support::venv_python("fhir-validator-venv"));
            c.arg(scripts.join("fhir-validate"));
            c
        }
        Validator::JsonSchema => {
            let mut c = Command::new("node");
            c.arg(scripts.join("fhir-schema-validate"));
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{which:?} validator (scripts/dev-services up installs it): {e}")
        });
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for v in ndjson {
            writeln!(stdin, "{v}").unwrap();
        }
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
    )
}

/// Both validators pass `ndjson`; their (identical) count of resources per type.
fn validate(ndjson: &[Value]) -> Value {
    let mut counts = Vec::new();
    for which in VALIDATORS {
        let (ok, report) = validate_with(which, ndjson);
        assert!(ok, "{which:?}: {report}");
        counts.push(serde_json::from_str::<Value>(report.trim()).unwrap());
    }
    assert_eq!(
        counts[0], counts[1],
        "the validators saw the same resources"
    );
    counts.remove(0)
}

const MAPPED: [&str; 13] = [
    "ADT-A01-01.hl7",
    "ADT-A04-01.hl7",
    "ADT-A08-01.hl7",
    "ADT01-23.hl7",
    "SIU-S12-01.hl7",
    "LAB-ORU-1.hl7",
    "VXU-V04-01.hl7",
    "ORM-O01-01.hl7",
    "OML-O21-01.hl7",
    "ADT-A40-01.hl7",
    "MDM-T02-01.hl7",
    "RDE-O11-01.hl7",
    // plexus's own sample (no third-party RAS was at hand).
    "../messages/RAS-O17.hl7",
];

/// #15 item 17: times without an offset take the integration's IANA zone, per date (CDT in
/// July, CST in November), and the resource says a zone was assumed; times with an offset
/// keep theirs, and a resource without such times is not tagged.
#[test]
fn times_without_an_offset_take_the_zone_of_the_integration() {
    let mut pv1 = vec![""; 46];
    pv1[0] = "PV1";
    pv1[1] = "1";
    pv1[2] = "I";
    pv1[19] = "V77^^^GHH^VN";
    pv1[44] = "20260715083000";
    pv1[45] = "20261116093000";
    let msg = format!(
        "MSH|^~\\&|A|GHH|B|C|20260715083000-0400||ADT^A03|Z1|P|2.5\rPID|1||Z77^^^GHH^MR||DOE^JANE||19800102|F\r{}\r",
        pv1.join("|")
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("z.hl7");
    std::fs::write(&f, msg).unwrap();
    let (code, rs, err) = convert(&[f.to_str().unwrap(), "--default-zone", "America/Chicago"]);
    assert_eq!(code, 0, "{err}");
    let e = of_type(&rs, "Encounter");
    assert_eq!(e["period"]["start"], "2026-07-15T08:30:00-05:00");
    assert_eq!(e["period"]["end"], "2026-11-16T09:30:00-06:00");
    assert_eq!(e["meta"]["tag"][0]["code"], "assumed-timezone");
    assert!(
        e["meta"]["tag"][0]["display"]
            .as_str()
            .unwrap()
            .contains("America/Chicago")
    );
    assert!(of_type(&rs, "Patient").get("meta").is_none(), "{rs:?}");
    // Without a zone: UTC, said as much.
    let (_, rs, _) = convert(&[f.to_str().unwrap()]);
    let e = of_type(&rs, "Encounter");
    assert_eq!(e["period"]["start"], "2026-07-15T08:30:00+00:00");
    assert_eq!(e["meta"]["tag"][0]["code"], "assumed-timezone");
    let (code, _, err) = convert(&[f.to_str().unwrap(), "--default-zone", "Mars/Olympus"]);
    assert_ne!(code, 0);
    assert!(err.contains("IANA zone"), "{err}");
}

/// Every `Identifier` (an object with `system` and `value`) anywhere in `v`.
fn identifiers<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(o) => {
            // ContactPoints have `system` and `value` too: their systems are a code list.
            let contact = matches!(
                o.get("system").and_then(Value::as_str),
                Some("phone" | "fax" | "email" | "pager" | "url" | "sms" | "other")
            );
            if o.contains_key("system") && o.contains_key("value") && !contact {
                out.push(v);
            }
            for x in o.values() {
                identifiers(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| identifiers(x, out)),
        _ => {}
    }
}

/// #15 item 16: every identifier system is an absolute URI, over the whole corpus — local
/// authority names scoped to the sender, OIDs as `urn:oid:`; the same authority of the same
/// sender always gives the same system; PID-15 is BCP-47.
#[test]
fn identifier_systems_are_absolute_uris_and_languages_bcp47() {
    let (mut seen, mut languages) = (0, 0);
    for f in MAPPED {
        let rs = one(f);
        let mut ids = Vec::new();
        for r in &rs {
            identifiers(r, &mut ids);
        }
        for id in ids {
            let system = id["system"].as_str().unwrap_or_default();
            assert!(
                system.starts_with("urn:")
                    || system.starts_with("http://")
                    || system.starts_with("https://"),
                "{f}: {id}"
            );
            seen += 1;
        }
        for r in &rs {
            for c in r["communication"].as_array().into_iter().flatten() {
                // BCP-47 when the code is a language code; never claimed for others (ADT01-23
                // sends `1`).
                let coding = &c["language"]["coding"][0];
                let code = coding["code"].as_str().unwrap();
                if code.chars().all(|c| c.is_ascii_alphabetic()) {
                    assert_eq!(coding["system"], "urn:ietf:bcp:47", "{f}");
                    languages += 1;
                } else {
                    assert!(coding.get("system").is_none(), "{f}: {c}");
                }
            }
        }
    }
    assert!(seen > 20, "{seen} identifiers");
    assert!(languages >= 3, "{languages}");
    let p = of_type(&one("ADT-A01-01.hl7"), "Patient").clone();
    let again = of_type(&one("ADT-A01-01.hl7"), "Patient").clone();
    assert_eq!(p["identifier"], again["identifier"], "stable across runs");
}

/// `--profile us-core`: race and ethnicity extensions and the Patient profile claim, on
/// every mapped message, still valid R4 for both validators.
#[test]
fn the_us_core_option_adds_race_ethnicity_and_the_patient_profile() {
    support::need_fhir();
    let mut all = Vec::new();
    for f in MAPPED {
        let (code, rs, err) = convert(&[corpus(f).to_str().unwrap(), "--profile", "us-core"]);
        assert_eq!(code, 0, "{err}");
        all.extend(rs);
    }
    let patients: Vec<&Value> = all
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .collect();
    let counts = validate(&all);
    assert_eq!(counts["Patient"].as_u64(), Some(patients.len() as u64));
    // ADT-A01-01: PID-10 `2106-3^White^HL70005~2028-9^Asian^HL70005`, PID-22 `N^NOT HISPANIC…`.
    let (_, rs, _) = convert(&[
        corpus("ADT-A01-01.hl7").to_str().unwrap(),
        "--profile",
        "us-core",
    ]);
    let p = of_type(&rs, "Patient");
    assert_eq!(
        p["meta"]["profile"][0],
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|6.1.0"
    );
    let ext = |url: &str| {
        p["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == url)
            .unwrap_or_else(|| panic!("no {url} in {p}"))
            .clone()
    };
    let race = ext("http://hl7.org/fhir/us/core/StructureDefinition/us-core-race");
    let omb: Vec<&str> = race["extension"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["url"] == "ombCategory")
        .map(|e| e["valueCoding"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(omb, ["2106-3", "2028-9"]);
    let eth = ext("http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity");
    assert_eq!(eth["extension"][0]["valueCoding"]["code"], "2186-5");
    // Every claimed Patient has what US Core requires; the rest are not claimed.
    for p in &patients {
        if p["meta"]["profile"].is_array() {
            assert!(p["gender"].is_string() && p["name"].is_array(), "{p}");
        }
    }
    assert!(
        patients
            .iter()
            .filter(|p| p["meta"]["profile"].is_array())
            .count()
            >= 8
    );
}

#[test]
fn every_resource_and_bundle_passes_two_independent_fhir_r4_validators() {
    support::need_fhir();
    let mut all = Vec::new();
    let mut bundles = Vec::new();
    for f in MAPPED {
        all.extend(one(f));
        for kind in ["transaction", "batch"] {
            let (code, b, err) = convert(&[corpus(f).to_str().unwrap(), "--bundle", kind]);
            assert_eq!(code, 0, "{err}");
            bundles.extend(b);
        }
    }
    assert_eq!(
        validate(&all),
        json!({"Appointment": 1, "Condition": 5, "DiagnosticReport": 2, "DocumentReference": 1, "Encounter": 10,
            "Immunization": 1, "Location": 109, "MedicationAdministration": 2,
            "MedicationRequest": 2, "Observation": 16, "Organization": 7, "Patient": 14,
            "Practitioner": 49, "ServiceRequest": 3, "Specimen": 2})
    );
    validate(&bundles);
    // Each validator really rejects what FHIR forbids (so the passes above mean something):
    // a malformed date, and in a Bundle an Observation without its required code.
    let mut broken = all[0].clone();
    broken["birthDate"] = json!("18-08-1988");
    let mut bundle = bundles
        .iter()
        .find(|b| b.to_string().contains(r#""resourceType":"Observation""#))
        .expect("a bundle of results")
        .clone();
    for e in bundle["entry"].as_array_mut().unwrap() {
        if e["resource"]["resourceType"] == "Observation" {
            e["resource"].as_object_mut().unwrap().remove("code");
        }
    }
    for which in VALIDATORS {
        let (ok, report) = validate_with(which, &[broken.clone()]);
        assert!(!ok && report.contains("birthDate"), "{which:?}: {report}");
        let (ok, report) = validate_with(which, &[bundle.clone()]);
        assert!(!ok && report.contains("code"), "{which:?}: {report}");
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn transaction_bundles_are_accepted_by_a_fhir_server_and_a_replay_changes_nothing() {
    support::need_fhir();
    // A patient of our own (fresh identifier), so that repeated test runs start clean.
    let mrn = support::unique("MRN");
    let msg = std::fs::read_to_string(corpus("ADT-A01-01.hl7"))
        .unwrap()
        .replace(
            "PATID1234^5^M11^test1&2.16.1&HCD^MR",
            &format!("{mrn}^5^M11^&2.16.840.1.113883.19.5&ISO^MR"),
        )
        .replace("40007716^^^AccMng", &format!("V{mrn}^^^AccMng"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a01.hl7");
    std::fs::write(&input, msg).unwrap();
    let (code, bundles, err) = convert(&[input.to_str().unwrap(), "--bundle", "transaction"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        bundles[0]["entry"][0]["request"]["url"],
        format!("Patient?identifier=urn:oid:2.16.840.1.113883.19.5|{mrn}")
    );
    let first = post_twice(&bundles[0]);
    assert_eq!(first["type"], "transaction-response", "{first}");
    // One patient with that MRN (not two), and its encounter points at it.
    let found = search_server(&format!(
        "Patient?identifier=urn:oid:2.16.840.1.113883.19.5|{mrn}"
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    let server_id = found[0]["id"].as_str().unwrap().to_string();
    assert_eq!(found[0]["name"][0]["family"], "EVERYMAN");
    let enc = search_server(&format!("Encounter?identifier={ACCMNG}|V{mrn}"));
    assert_eq!(enc.len(), 1, "{enc:?}");
    assert_eq!(
        enc[0]["subject"]["reference"],
        format!("Patient/{server_id}")
    );
    // The second write was an update of the same resource: version 2.
    assert_eq!(found[0]["meta"]["versionId"], "2", "{found:?}");
}

/// POSTs a Bundle to the FHIR server; its answer (a 2xx, or the test fails).
fn post_bundle(b: &Value) -> Value {
    rt().block_on(async {
        let r = reqwest::Client::new()
            .post(FHIR)
            .header("content-type", "application/fhir+json")
            .json(b)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{status}: {body}");
        body
    })
}

/// Posts a transaction twice: every entry is created (201) by the first post and found and
/// updated (200) by the replay. The first response. Directory entries (Practitioner,
/// Location, Organization: conditional creates) may exist from an earlier message or run.
fn post_twice(bundle: &Value) -> Value {
    let first = post_bundle(bundle);
    let entries = bundle["entry"].as_array().unwrap();
    for (status, e) in statuses(&first).iter().zip(entries) {
        let once = e["request"]["method"] == "POST";
        assert!(
            status.starts_with("201") || (once && status.starts_with("200")),
            "{status} for {}: {first}",
            e["request"]
        );
    }
    let second = post_bundle(bundle);
    assert!(
        statuses(&second).iter().all(|s| s.starts_with("200")),
        "{second}"
    );
    first
}

/// The status of each entry of a transaction-response.
fn statuses(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect()
}

/// The resources a FHIR search finds.
fn search_server(q: &str) -> Vec<Value> {
    let found: Value = rt().block_on(async {
        reqwest::get(format!("{FHIR}/{q}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    found["entry"]
        .as_array()
        .map(|es| es.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

/// #19: a lab feed posted twice creates each Observation once — conditional updates on the
/// filler order number (OBR-3) and OBX set/sub id — and the reports point at the server's
/// observations.
#[test]
fn a_lab_result_feed_posted_twice_creates_each_observation_once() {
    support::need_fhir();
    // Order numbers and an MRN of our own, so repeated runs start clean.
    let tag = support::unique("L").replace('-', "");
    let msg = std::fs::read_to_string(corpus("LAB-ORU-1.hl7"))
        .unwrap()
        .replace("|82503246|", &format!("|F1{tag}|"))
        .replace("|890775544|", &format!("|F2{tag}|"))
        .replace("10006579^^^1^MR", &format!("M{tag}^^^1^MR"))
        .replace("|SpecimenID|", &format!("|S{tag}|"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("oru.hl7");
    std::fs::write(&input, msg).unwrap();
    let (code, bundles, err) = convert(&[input.to_str().unwrap(), "--bundle", "transaction"]);
    assert_eq!(code, 0, "{err}");
    let first = post_twice(&bundles[0]);
    assert_eq!(
        statuses(&first).len(),
        14,
        "patient, 2 reports, their one specimen, 10 results"
    );

    let system = "urn:plexus:v2:SomeSystem:order-filler";
    for (order, n) in [(format!("F1{tag}"), 5), (format!("F2{tag}"), 5)] {
        let reports = search_server(&format!("DiagnosticReport?identifier={system}|{order}"));
        assert_eq!(reports.len(), 1, "{reports:?}");
        let results = reports[0]["result"].as_array().unwrap();
        assert_eq!(results.len(), n);
        for set in 1..=n {
            let obs = search_server(&format!("Observation?identifier={system}|{order}-{set}"));
            assert_eq!(obs.len(), 1, "{order}-{set}: {obs:?}");
            assert_eq!(obs[0]["meta"]["versionId"], "2", "updated, not duplicated");
            // The report's reference was rewritten to the server's id of this observation.
            let id = obs[0]["id"].as_str().unwrap();
            assert_eq!(results[set - 1]["reference"], format!("Observation/{id}"));
        }
    }
    // A value as sent: the second order's OBX-1 NEUTROPHILS 72 %.
    let neut = search_server(&format!("Observation?identifier={system}|F2{tag}-1"));
    assert_eq!(neut[0]["valueQuantity"]["value"], json!(72));
    assert_eq!(neut[0]["code"]["coding"][0]["code"], "23761-0");
}

/// #19: ADT^A40 merges a prior record into the survivor — on the FHIR server the survivor
/// `replaces` the prior patient, which is inactive and `replaced-by` the survivor; a replay
/// changes nothing.
#[test]
fn a_merge_links_the_prior_patient_to_the_survivor_on_the_server() {
    support::need_fhir();
    let tag = support::unique("A").replace('-', "");
    let (survivor, prior) = (format!("S{tag}"), format!("P{tag}"));
    let msg = std::fs::read_to_string(corpus("ADT-A40-01.hl7"))
        .unwrap()
        .replace("12345^^^BCBS^MR", &format!("{survivor}^^^BCBS^MR"))
        .replace("56789^^^BCBS^MR", &format!("{prior}^^^BCBS^MR"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a40.hl7");
    std::fs::write(&input, msg).unwrap();
    let (code, bundles, err) = convert(&[input.to_str().unwrap(), "--bundle", "transaction"]);
    assert_eq!(code, 0, "{err}");
    post_twice(&bundles[0]);
    let system = "urn:plexus:v2:Ntierprise_Clinic:authority:BCBS";
    let s = search_server(&format!("Patient?identifier={system}|{survivor}"));
    let p = search_server(&format!("Patient?identifier={system}|{prior}"));
    assert_eq!((s.len(), p.len()), (1, 1), "{s:?} {p:?}");
    let (s, p) = (&s[0], &p[0]);
    assert_eq!(s["active"], true);
    assert_eq!(s["link"][0]["type"], "replaces");
    assert_eq!(
        s["link"][0]["other"]["reference"],
        format!("Patient/{}", p["id"].as_str().unwrap())
    );
    assert_eq!(p["active"], false);
    assert_eq!(p["link"][0]["type"], "replaced-by");
    assert_eq!(
        p["link"][0]["other"]["reference"],
        format!("Patient/{}", s["id"].as_str().unwrap())
    );
    assert_eq!(
        p["identifier"].as_array().unwrap().len(),
        1,
        "only the prior id: {p}"
    );
    assert_eq!(s["meta"]["versionId"], "2");
}

/// #19: Practitioners and Locations are conditional creates (`ifNoneExist`): two messages
/// naming the same doctor make one Practitioner, which the second message does not
/// overwrite, and both visits reference it; a bed named by every run of this test exists
/// once on the server however often the test has run.
#[test]
fn practitioners_and_locations_are_created_once_across_messages() {
    support::need_fhir();
    let tag = support::unique("D").replace('-', "");
    let message = |n: u32, family: &str| {
        let msg = std::fs::read_to_string(corpus("ADT-A01-01.hl7"))
            .unwrap()
            .replace(
                "PATID1234^5^M11^test1&2.16.1&HCD^MR",
                &format!("M{n}{tag}^5^M11^&2.16.840.1.113883.19.5&ISO^MR"),
            )
            .replace("40007716^^^AccMng", &format!("V{n}{tag}^^^AccMng"))
            .replace(
                "1122334^Alaz^Mohammed",
                &format!("D{tag}^{family}^Mohammed"),
            );
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a01.hl7");
        std::fs::write(&input, msg).unwrap();
        let (code, bundles, err) = convert(&[input.to_str().unwrap(), "--bundle", "transaction"]);
        assert_eq!(code, 0, "{err}");
        bundles[0].clone()
    };
    post_twice(&message(1, "Alaz"));
    post_twice(&message(2, "Renamed"));
    let doctors = search_server(&format!("Practitioner?identifier=urn:oid:1.23|D{tag}"));
    assert_eq!(doctors.len(), 1, "{doctors:?}");
    let doctor = &doctors[0];
    assert_eq!(
        doctor["name"][0]["family"], "Alaz",
        "created once, not overwritten"
    );
    assert_eq!(doctor["meta"]["versionId"], "1");
    let doctor = format!("Practitioner/{}", doctor["id"].as_str().unwrap());
    let mut beds = Vec::new();
    for n in [1, 2] {
        let enc = search_server(&format!("Encounter?identifier={ACCMNG}|V{n}{tag}"));
        assert_eq!(enc.len(), 1, "{enc:?}");
        let attender = enc[0]["participant"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"][0]["coding"][0]["code"] == "ATND")
            .unwrap();
        assert_eq!(attender["individual"]["reference"], doctor);
        beds.push(enc[0]["location"][0]["location"]["reference"].clone());
    }
    assert_eq!(beds[0], beds[1], "both visits are in the same bed resource");
    let path = "facility:HOMERTON UNIVER/building:Homerton UH/point-of-care:HUH AE OMU/\
                floor:Floor5/room:OMU B/bed:Bed 03";
    let found = search_server(&format!(
        "Location?identifier=urn:plexus:v2:GHHSFacility:location|{}",
        path.replace(' ', "%20")
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        beds[0],
        format!("Location/{}", found[0]["id"].as_str().unwrap())
    );
    // The bed is part of its room, on the server too.
    let room = found[0]["partOf"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let room: Value = rt().block_on(async {
        reqwest::get(format!("{FHIR}/{room}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(room["name"], "OMU B");
}

fn ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_fhir_stage_maps_a_feed_in_a_pipeline_and_dead_letters_what_it_cannot_map() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut feed = String::new();
    for f in ["ADT-A01-01.hl7", "DFT-P03-01.hl7", "SIU-S12-01.hl7"] {
        // The corpus files do not end in a segment terminator.
        feed.push_str(
            std::fs::read_to_string(corpus(f))
                .unwrap()
                .trim_start_matches('\u{feff}'),
        );
        feed.push('\n');
    }
    std::fs::write(dir.path().join("in.hl7"), feed).unwrap();
    let p = support::pipeline(
        dir.path(),
        "to_fhir",
        r#"
name: to_fhir
integration: {id: ghh-ehr}
source: {type: file, path: in.hl7, format: hl7}
stages:
  - {name: fhir, type: fhir, profile: us-core, systems: {AccMng: "urn:oid:1.2.840.99.1"}}
  - {name: keep, type: map, select: {resource_type: resource_type, url: request_url, resource: resource}}
sinks:
  - {name: resources, type: file, format: ndjson, path: resources.ndjson}
"#,
    );
    let s = support::summary(
        &Command::new(BIN)
            .args([
                "run",
                p.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(
        (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    let rows = ndjson(&out.join("resources.ndjson"));
    let kinds: Vec<&str> = rows
        .iter()
        .map(|r| r["resource_type"].as_str().unwrap())
        .filter(|k| !DIRECTORY.contains(k))
        .collect();
    assert_eq!(
        kinds,
        [
            "Patient",
            "Condition",
            "Encounter",
            "Patient",
            "Condition",
            "Encounter",
            "Appointment"
        ]
    );
    // The systems map applies: the visit number's authority AccMng is an OID now.
    let rows: Vec<&Value> = rows
        .iter()
        .filter(|r| !DIRECTORY.contains(&r["resource_type"].as_str().unwrap()))
        .collect();
    // `profile: us-core` reaches the mapper.
    let patient: Value = serde_json::from_str(rows[0]["resource"].as_str().unwrap()).unwrap();
    assert!(
        patient["extension"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["url"] == "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race")),
        "{patient}"
    );
    let enc: Value = serde_json::from_str(rows[2]["resource"].as_str().unwrap()).unwrap();
    assert_eq!(enc["identifier"][0]["system"], "urn:oid:1.2.840.99.1");
    assert_eq!(
        rows[2]["url"],
        "Encounter?identifier=urn:oid:1.2.840.99.1|40007716"
    );
    let dead = ndjson(&out.join("to_fhir.dlq.ndjson"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["stage"], "fhir");
    assert_eq!(dead[0]["rule"], "fhir:map");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no FHIR mapping for DFT^P03"),
        "{}",
        dead[0]
    );
}

#[test]
fn an_adt_feed_flows_through_a_pipeline_into_the_fhir_server_idempotently() {
    support::need_fhir();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Ten patients of our own (fresh MRNs), each admitted (A01) then updated (A08 with a
    // new family name): the server must end with ten patients carrying the later name.
    let run = support::unique("R").replace(['-', '_'], "");
    let template = std::fs::read_to_string(corpus("ADT01-23.hl7")).unwrap();
    let template = template.trim_start_matches('\u{feff}');
    let mut feed = String::new();
    for i in 0..10 {
        for (event, family) in [("A01", "DUCK"), ("A08", "DRAKE")] {
            let m = template
                .replace("ADT^A01|599102", &format!("ADT^{event}|{run}{i}{event}"))
                .replace("10006579^^^1^MR^1", &format!("{run}{i}^^^GHH^MR^1"))
                .replace("40007716^^^AccMgr^VN", &format!("V{run}{i}^^^AccMgr^VN"))
                .replace("DUCK^DONALD", &format!("{family}^DONALD"));
            feed.push_str(&m);
            feed.push('\n');
        }
    }
    std::fs::write(dir.path().join("adt.hl7"), feed).unwrap();
    let p = support::pipeline(
        dir.path(),
        "adt_to_ehr",
        &format!(
            r#"
name: adt_to_ehr
integration: {{id: ghh-ehr}}
source: {{type: file, path: adt.hl7, format: hl7}}
batch: {{max_rows: 4}}
stages:
  - {{name: fhir, type: fhir, bundle: transaction, systems: {{GHH: "urn:oid:2.16.840.1.113883.19.5"}}}}
sinks:
  - {{name: ehr, type: fhir, url: "{FHIR}", concurrency: 1}}
dlq: {{path: adt_to_ehr.dlq.ndjson}}
windows:
  - {{name: ehr_calls, input: outcomes, key: {{sink: sink}}, size: 1h}}
"#
        ),
    );
    // Concurrency 1 keeps each patient's A01 before its A08 (one Bundle per message).
    for attempt in 1..=2 {
        let s = support::summary(
            &Command::new(BIN)
                .args([
                    "run",
                    p.to_str().unwrap(),
                    "--output",
                    out.to_str().unwrap(),
                    "--json",
                ])
                .output()
                .unwrap(),
        );
        assert_eq!(
            (s["delivered"].as_u64(), s["dead_lettered"].as_u64()),
            (Some(20), Some(0)),
            "run {attempt}: {s}"
        );
    }
    let client = reqwest::Client::new();
    let rt = rt();
    for i in 0..10 {
        let found: Value = rt.block_on(async {
            client
                .get(format!(
                    "{FHIR}/Patient?identifier=urn:oid:2.16.840.1.113883.19.5|{run}{i}"
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        let entries = found["entry"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), 1, "patient {i}: {found}");
        assert_eq!(entries[0]["resource"]["name"][0]["family"], "DRAKE");
    }
    // Every call is on the outcome stream: two runs × 20 Bundles, all delivered.
    let q = Command::new(BIN)
        .args([
            "query",
            "--pipeline",
            p.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .args([
            "--format",
            "json",
            "SELECT sum(total) AS total, sum(success) AS ok FROM ehr_calls",
        ])
        .output()
        .unwrap();
    support::assert_ok(&q);
    let row: Value =
        serde_json::from_str(String::from_utf8_lossy(&q.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        (row["total"].as_i64(), row["ok"].as_i64()),
        (Some(40), Some(40)),
        "{row}"
    );
}

#[test]
fn search_results_read_back_as_rows_that_match_the_hl7_source() {
    support::need_fhir();
    let mrn = support::unique("RB").replace(['-', '_'], "");
    let msg = std::fs::read_to_string(corpus("ADT01-23.hl7"))
        .unwrap()
        .trim_start_matches('\u{feff}')
        .replace(
            "10006579^^^1^MR^1",
            &format!("{mrn}^^^&2.16.840.1.113883.19.5&ISO^MR"),
        )
        .replace("40007716^^^AccMgr^VN", &format!("V{mrn}^^^AccMgr^VN"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a01.hl7");
    std::fs::write(&input, &msg).unwrap();
    let (code, bundles, err) = convert(&[input.to_str().unwrap(), "--bundle", "transaction"]);
    assert_eq!(code, 0, "{err}");
    rt().block_on(async {
        let r = reqwest::Client::new()
            .post(FHIR)
            .header("content-type", "application/fhir+json")
            .json(&bundles[0])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    });
    let search = |kind: &str, q: &str| -> Vec<Value> {
        let o = Command::new(BIN)
            .args([
                "fhir", "search", "--base", FHIR, kind, q, "--format", "json",
            ])
            .output()
            .unwrap();
        support::assert_ok(&o);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // The same facts the HL7 parse stage reads: PID-3.1, PID-5.1/.2/.3, PID-7, PID-8,
    // PID-11, PID-13; PV1-19, PV1-2, PV1-44.
    let p = search(
        "Patient",
        &format!("identifier=urn:oid:2.16.840.1.113883.19.5|{mrn}"),
    );
    assert_eq!(p.len(), 1);
    let p = &p[0];
    assert_eq!(p["mrn"], mrn.as_str());
    assert_eq!(p["mrn_system"], "urn:oid:2.16.840.1.113883.19.5");
    assert_eq!(
        (&p["family"], &p["given"], &p["birth_date"], &p["gender"]),
        (
            &json!("DUCK"),
            &json!("DONALD D"),
            &json!("1924-10-10"),
            &json!("male")
        )
    );
    assert_eq!((&p["city"], &p["state"]), (&json!("FOWL"), &json!("CA")));
    assert_eq!(p["phone"], "8885551212");
    assert_eq!(p["version_id"], "1");
    let e = search(
        "Encounter",
        &format!("identifier={}|V{mrn}", support::VISIT_SYSTEM),
    );
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["visit_number"], format!("V{mrn}"));
    assert_eq!(
        (&e[0]["class"], &e[0]["status"]),
        (&json!("IMP"), &json!("in-progress"))
    );
    assert_eq!(e[0]["period_start"], "2005-01-10T04:55:02+07:00");
    assert_eq!(
        e[0]["patient"],
        format!("Patient/{}", p["id"].as_str().unwrap())
    );
}
