//! The v2-to-FHIR IG concept maps that the Patient, Encounter and Appointment mappings use,
//! as code tables. Each cites its CSV (`codesystems/HL7 Concept Map_ <Name>`) and the rows
//! taken; codes the IG leaves without a target return `None` and the caller keeps the v2 code
//! in a v2 coding instead (nothing is silently dropped).

/// A FHIR code and its system.
pub type Target = (&'static str, &'static str);

const GENDER: &str = "http://hl7.org/fhir/administrative-gender";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const V2_0004: &str = "http://terminology.hl7.org/CodeSystem/v2-0004";
const MARITAL: &str = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus";
const NULL_FLAVOR: &str = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor";
const ROLE_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleCode";
const V2_0063: &str = "http://terminology.hl7.org/CodeSystem/v2-0063";
const V2_0131: &str = "http://terminology.hl7.org/CodeSystem/v2-0131";

/// AdministrativeSex (HL70001) → administrative-gender, rows 3–8 (A and N → other).
pub fn gender(code: &str) -> Option<&'static str> {
    Some(match code {
        "F" => "female",
        "M" => "male",
        "O" | "A" | "N" => "other",
        "U" => "unknown",
        _ => return None,
    })
}

/// The system `gender` codes belong to.
pub const GENDER_SYSTEM: &str = GENDER;

/// PatientClass[EncounterClass] (HL70004 → v3-ActCode), rows 3–11.
pub fn encounter_class(code: &str) -> Option<Target> {
    Some(match code {
        "E" => (ACT_CODE, "EMER"),
        "I" => (ACT_CODE, "IMP"),
        "O" => (ACT_CODE, "AMB"),
        "P" => (ACT_CODE, "PRENC"),
        "R" | "B" | "C" | "N" | "U" => (V2_0004, code_static(code)?),
        _ => return None,
    })
}

fn code_static(code: &str) -> Option<&'static str> {
    ["R", "B", "C", "N", "U"].into_iter().find(|c| *c == code)
}

/// PatientClass[EncounterStatus] (HL70004 → encounter-status), rows 3–11.
pub fn encounter_status_from_class(code: &str) -> Option<&'static str> {
    Some(match code {
        "E" | "I" | "O" | "R" | "B" | "C" | "N" => "in-progress",
        "P" => "planned",
        "U" => "unknown",
        _ => return None,
    })
}

/// Encounter status implied by the trigger event (the IG's Event[EncounterStatus] table,
/// HL70003): A03 discharge → finished, A04/A05 registration/pre-admit → planned, A11 cancel
/// admit → cancelled, A01/A02/A13 → in-progress. A08 (update) implies nothing: the table says
/// "unknown", so the patient class decides instead.
pub fn encounter_status_from_event(event: &str) -> Option<&'static str> {
    Some(match event {
        "A01" | "A02" | "A13" => "in-progress",
        "A03" => "finished",
        "A04" | "A05" => "planned",
        "A11" => "cancelled",
        // SIU: a booked, rescheduled or modified appointment's visit is still to come; a
        // cancelled, discontinued, deleted or missed one will not happen.
        "S12" | "S13" | "S14" => "planned",
        "S15" | "S16" | "S17" | "S26" => "cancelled",
        _ => return None,
    })
}

/// MaritalStatus (HL70002 → v3-MaritalStatus / v3-NullFlavor), rows 3–18.
pub fn marital_status(code: &str) -> Option<Target> {
    Some(match code {
        "A" | "E" => (MARITAL, "L"),
        "D" => (MARITAL, "D"),
        "M" => (MARITAL, "M"),
        "S" => (MARITAL, "S"),
        "W" => (MARITAL, "W"),
        "C" => (MARITAL, "C"),
        "G" | "P" | "R" => (MARITAL, "T"),
        "N" => (MARITAL, "A"),
        "I" => (MARITAL, "I"),
        "B" => (MARITAL, "U"),
        "U" => (NULL_FLAVOR, "UNK"),
        "O" => (NULL_FLAVOR, "OTH"),
        "T" => (NULL_FLAVOR, "NAVU"),
        _ => return None,
    })
}

/// DiagnosisType (HL70052 → diagnosis-role): A admitting → AD; W working and F final have
/// no target (kept as sent).
pub fn diagnosis_type(code: &str) -> Option<Target> {
    match code {
        "A" => Some(("http://terminology.hl7.org/CodeSystem/diagnosis-role", "AD")),
        _ => None,
    }
}

/// NameType (HL70200 → name-use), rows 3–23; NOUSE and the rest have no target.
pub fn name_use(code: &str) -> Option<&'static str> {
    Some(match code {
        "BAD" => "old",
        "D" => "usual",
        "L" | "R" => "official",
        "M" => "maiden",
        "MSK" => "anonymous",
        "N" => "nickname",
        "NAV" | "TEMP" => "temp",
        _ => return None,
    })
}

/// AddressType[Use] (HL70190 → address-use), rows 3–13.
pub fn address_use(code: &str) -> Option<&'static str> {
    Some(match code {
        "BA" => "old",
        "BI" => "billing",
        "C" => "temp",
        "B" | "O" => "work",
        "H" => "home",
        _ => return None,
    })
}

/// AddressType[Type] (HL70190 → address-type), rows 3–4.
pub fn address_type(code: &str) -> Option<&'static str> {
    matches!(code, "M" | "SH").then_some("postal")
}

/// TelecommunicationUseCode (HL70201 → contact-point-use), rows 3, 5, 11.
pub fn telecom_use(code: &str) -> Option<&'static str> {
    Some(match code {
        "PRN" => "home",
        "WPN" => "work",
        "PRS" => "mobile",
        _ => return None,
    })
}

/// TelecommunicationEquipmentType (HL70202 → contact-point-system), rows 3–12. Row 6 maps
/// CP (cellular phone) to the *use* `mobile`, which is not a system: it is returned as
/// `("phone", Some("mobile"))` so the use is kept where FHIR has it.
pub fn telecom_system(code: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match code {
        "PH" => ("phone", None),
        "FX" => ("fax", None),
        "BP" => ("pager", None),
        "Internet" | "X.400" => ("email", None),
        "CP" => ("phone", Some("mobile")),
        "MD" | "SAT" | "TDD" | "TTY" => ("other", None),
        _ => return None,
    })
}

/// Relationship (HL70063 → v3-RoleCode, v2-0063, v2-0131), rows 3–34.
pub fn relationship(code: &str) -> Option<Target> {
    let role = |c| (ROLE_CODE, c);
    Some(match code {
        "SEL" => role("ONESELF"),
        "SPO" => role("SPS"),
        "DOM" => role("SIGOTHR"),
        "CHD" => role("CHILD"),
        "GCH" => role("GRNDCHILD"),
        "NCH" => role("NCHILD"),
        "SCH" => role("STPCHLD"),
        "FCH" => role("CHLDFOST"),
        "PAR" => role("PRN"),
        "MTH" => role("MTH"),
        "FTH" => role("FTH"),
        "GRP" => role("GRPRN"),
        "EXF" => role("EXT"),
        "SIB" => role("SIB"),
        "BRO" => role("BRO"),
        "SIS" => role("SIS"),
        "FND" => role("FRND"),
        "DEP" => (V2_0063, "DEP"),
        "WRD" => (V2_0063, "WRD"),
        "CGV" => (V2_0063, "CGV"),
        "GRD" => (V2_0063, "GRD"),
        "OAD" => (V2_0063, "OAD"),
        "EME" => (V2_0063, "EME"),
        "ASC" => (V2_0063, "ASC"),
        "OWN" => (V2_0063, "OWN"),
        "TRA" => (V2_0063, "TRA"),
        "MGR" => (V2_0063, "MGR"),
        "NON" => (V2_0063, "NON"),
        "EMR" => (V2_0131, "E"),
        "EMC" => (V2_0131, "C"),
        "UNK" => (V2_0131, "U"),
        "OTH" => (V2_0131, "O"),
        _ => return None,
    })
}

/// ContactRole (HL70131), rows 3–10: an identity map into v2-0131.
pub fn contact_role(code: &str) -> Option<Target> {
    ["E", "C", "F", "I", "N", "S", "O", "U"]
        .into_iter()
        .find(|c| *c == code)
        .map(|c| (V2_0131, c))
}

/// FillerStatusCodes[Appointment] (HL70278 → appointmentstatus), rows 3–13. Discontinued,
/// Blocked and Overbook have no target in the IG.
pub fn appointment_status(code: &str) -> Option<&'static str> {
    Some(match code.to_ascii_lowercase().as_str() {
        "pending" => "pending",
        "waitlist" => "waitlist",
        "booked" => "booked",
        "started" => "checked-in",
        "complete" => "fulfilled",
        "cancelled" => "cancelled",
        "deleted" => "entered-in-error",
        "noshow" => "noshow",
        _ => return None,
    })
}

/// A participant's status from its filler status (AIP-12/AIL-12, HL70278): the IG gives no
/// map (AIP r14), so: booked, started or complete → accepted; pending or waitlist →
/// tentative; cancelled, deleted or no-show → declined; anything else → needs-action.
pub fn participant_status(code: &str) -> &'static str {
    match code.to_ascii_lowercase().as_str() {
        "booked" | "started" | "complete" | "overbook" => "accepted",
        "pending" | "waitlist" => "tentative",
        "cancelled" | "deleted" | "noshow" | "discontinued" | "blocked" => "declined",
        _ => "needs-action",
    }
}

/// YesNoIndicator (HL70136), rows 3–4.
pub fn yes_no(code: &str) -> Option<bool> {
    match code {
        "Y" => Some(true),
        "N" => Some(false),
        _ => None,
    }
}

/// A v2 coding-system name (CWE-3) as a FHIR system URI, for the names senders use most;
/// `HL7nnnn` tables go to `http://terminology.hl7.org/CodeSystem/v2-nnnn`. Unknown names give
/// `None` (the code is kept without a system rather than under a made-up one).
pub fn coding_system(name: &str) -> Option<String> {
    let known = match name {
        "LN" => "http://loinc.org",
        "SCT" | "SNM" | "SNOMED" | "SNOMEDCT" => "http://snomed.info/sct",
        "I10" | "ICD10" => "http://hl7.org/fhir/sid/icd-10",
        "I10C" | "ICD10CM" => "http://hl7.org/fhir/sid/icd-10-cm",
        "I9" | "I9C" | "ICD9CM" => "http://hl7.org/fhir/sid/icd-9-cm",
        "CPT" | "C4" => "http://www.ama-assn.org/go/cpt",
        "RXNORM" => "http://www.nlm.nih.gov/research/umls/rxnorm",
        "UCUM" => "http://unitsofmeasure.org",
        "ISO3166_1" => "urn:iso:std:iso:3166",
        "ISO639" => "urn:ietf:bcp:47",
        "NDC" => "http://hl7.org/fhir/sid/ndc",
        "CVX" => "http://hl7.org/fhir/sid/cvx",
        "MVX" => "http://terminology.hl7.org/CodeSystem/MVX",
        "NCIT" => "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
        _ => {
            let digits = name
                .strip_prefix("HL7")
                .filter(|d| d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()))?;
            return Some(format!("http://terminology.hl7.org/CodeSystem/v2-{digits}"));
        }
    };
    Some(known.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_follow_the_ig_rows() {
        assert_eq!(gender("A"), Some("other"));
        assert_eq!(gender("X"), None);
        assert_eq!(encounter_class("O"), Some((ACT_CODE, "AMB")));
        assert_eq!(encounter_class("N"), Some((V2_0004, "N")));
        assert_eq!(encounter_status_from_class("P"), Some("planned"));
        assert_eq!(marital_status("G"), Some((MARITAL, "T")));
        assert_eq!(name_use("NOUSE"), None);
        assert_eq!(telecom_system("CP"), Some(("phone", Some("mobile"))));
        assert_eq!(relationship("EMC"), Some((V2_0131, "C")));
        assert_eq!(appointment_status("Started"), Some("checked-in"));
        assert_eq!(appointment_status("Overbook"), None);
        assert_eq!(
            coding_system("HL70296").as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0296")
        );
        assert_eq!(coding_system("HL7nnnn"), None);
    }
}
