//! The US Core option (`profile: us-core`): PID-10 race and PID-22 ethnic group as the US
//! Core race and ethnicity extensions (the IG leaves both to "local implementation"), and
//! `meta.profile` on a Patient that has what US Core 6.1.0's Patient requires (an
//! identifier with system and value, a name, a gender). A Patient without those is sent
//! without the claim rather than with a false one.

use crate::fhir::json::{Json, json};

use super::datatypes::Obj;
use super::{Ctx, MappingError};
use crate::formats::hl7::Cwe;

pub const PATIENT: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|6.1.0";
const RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
const ETHNICITY: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";
/// CDC Race & Ethnicity code set (CDCREC).
const CDCREC: &str = "urn:oid:2.16.840.1.113883.6.238";
const NULL_FLAVOR: &str = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor";

/// The OMB race categories (the extension's `ombCategory` binding).
const OMB_RACE: [(&str, &str); 5] = [
    ("1002-5", "American Indian or Alaska Native"),
    ("2028-9", "Asian"),
    ("2054-5", "Black or African American"),
    ("2076-8", "Native Hawaiian or Other Pacific Islander"),
    ("2106-3", "White"),
];
const OMB_ETHNICITY: [(&str, &str); 2] = [
    ("2135-2", "Hispanic or Latino"),
    ("2186-5", "Not Hispanic or Latino"),
];

/// Adds the race and ethnicity extensions of `pid` to the Patient `p`.
pub(super) fn demographics(
    cx: &Ctx<'_, '_>,
    pid: &crate::formats::hl7::Segment<'_>,
    p: &mut Obj,
) -> Result<(), MappingError> {
    for (n, url, omb) in [
        (10, RACE, &OMB_RACE[..]),
        (22, ETHNICITY, &OMB_ETHNICITY[..]),
    ] {
        let mut codes = Vec::new();
        for rep in pid.field(n).repetitions() {
            let c = Cwe::from_element(&rep).map_err(cx.at(super::FieldAt("PID", n)))?;
            if c.identifier.is_some() || c.text.is_some() {
                codes.push(c);
            }
        }
        p.push("extension", extension(url, omb, n == 22, &codes));
    }
    Ok(())
}

/// One race or ethnicity extension: each code an `ombCategory` (one of `omb`, or the null
/// flavors UNK/ASKU), a `detailed` CDC code, or neither (text only); `text` is required.
fn extension(url: &str, omb: &[(&str, &str)], ethnicity: bool, codes: &[Cwe]) -> Option<Json> {
    if codes.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    let mut texts = Vec::new();
    for c in codes {
        let code = c.identifier.as_deref().unwrap_or("");
        // Table 0189's letters, still common in ethnicity feeds.
        let code = match (ethnicity, code) {
            (true, "H") => "2135-2",
            (true, "N") => "2186-5",
            (_, "U") => "UNK",
            (_, c) => c,
        };
        let display = omb
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| *d)
            .or(c.text.as_deref());
        // The text is required: what was sent when there is no display.
        if let Some(d) = display.or(Some(code).filter(|c| !c.is_empty())) {
            texts.push(d.to_string());
        }
        let part = if omb.iter().any(|(c, _)| *c == code) {
            Some(("ombCategory", CDCREC))
        } else if matches!(code, "UNK" | "ASKU") {
            Some(("ombCategory", NULL_FLAVOR))
        } else if is_cdc_code(code) {
            Some(("detailed", CDCREC))
        } else {
            // Not a CDC code (a local or retired one): the text carries it.
            None
        };
        if let Some((slice, system)) = part {
            let coding = Obj::new()
                .set("system", Json::from(system))
                .set("code", Json::from(code))
                .set("display", display.map(Json::from))
                .into_value();
            parts.push(json!({"url": slice, "valueCoding": coding}));
        }
    }
    texts.dedup();
    let text = if texts.is_empty() {
        "Unknown".to_string()
    } else {
        texts.join(", ")
    };
    parts.push(json!({"url": "text", "valueString": text}));
    Some(json!({"url": url, "extension": parts}))
}

/// CDC race and ethnicity codes look like `2106-3` (four digits, a check digit).
fn is_cdc_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 6
        && b[4] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_digit())
}

/// `meta.profile` on a Patient body that has what the profile requires.
pub(super) fn claim_patient(body: &mut Json) {
    let identified = body["identifier"].as_array().is_some_and(|ids| {
        ids.iter()
            .any(|i| i.get("system").is_some() && i.get("value").is_some())
    });
    let named = body["name"].as_array().is_some_and(|ns| {
        ns.iter()
            .any(|n| n.get("family").is_some() || n.get("given").is_some())
    });
    if identified && named && body.get("gender").is_some() {
        let meta = body.as_object_mut().map(|o| o.entry("meta", || json!({})));
        if let Some(meta) = meta {
            meta["profile"] = json!([PATIENT]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Options, Profile, convert};
    use crate::formats::hl7::Message;

    fn patient(pid: &str, profile: Profile) -> crate::fhir::json::Json {
        let raw = format!("MSH|^~\\&|APP|GHH|B|C|20260101||ADT^A04|X1|P|2.5\r{pid}\r");
        let opts = Options {
            profile,
            ..Options::default()
        };
        convert(&Message::parse(raw.as_bytes()).unwrap(), &opts).unwrap()[0]
            .body
            .clone()
    }

    #[test]
    fn race_and_ethnicity_become_us_core_extensions() {
        // PID-10 White (OMB) and Filipino (a detailed code), PID-22 the letter H.
        let pid = "PID|1||12345^^^GHH^MR||DOE^JANE||19800102|F||2106-3^White^CDCREC~2036-2^Filipino^CDCREC||||||||||||H^Hispanic^HL70189";
        let p = patient(pid, Profile::UsCore);
        let ext = p["extension"].as_array().unwrap();
        let race = ext.iter().find(|e| e["url"] == super::RACE).unwrap();
        assert_eq!(race["extension"][0]["url"], "ombCategory");
        assert_eq!(race["extension"][0]["valueCoding"]["code"], "2106-3");
        assert_eq!(race["extension"][0]["valueCoding"]["system"], super::CDCREC);
        assert_eq!(race["extension"][1]["url"], "detailed");
        assert_eq!(race["extension"][1]["valueCoding"]["code"], "2036-2");
        assert_eq!(race["extension"][2]["url"], "text");
        assert_eq!(race["extension"][2]["valueString"], "White, Filipino");
        let eth = ext.iter().find(|e| e["url"] == super::ETHNICITY).unwrap();
        assert_eq!(eth["extension"][0]["valueCoding"]["code"], "2135-2");
        assert_eq!(eth["extension"][1]["valueString"], "Hispanic or Latino");
        assert_eq!(p["meta"]["profile"][0], super::PATIENT);
        // Without the option neither is there: the IG leaves race to local implementations.
        let base = patient(pid, Profile::Base);
        assert!(base.get("extension").is_none() && base.get("meta").is_none());
    }

    #[test]
    fn a_patient_missing_what_us_core_requires_is_not_claimed() {
        // No gender (PID-8 empty); a local race code is kept as text only.
        let p = patient(
            "PID|1||12345^^^GHH^MR||DOE^JANE||19800102|||W^Caucasian^L",
            Profile::UsCore,
        );
        assert!(p.get("meta").is_none(), "{p}");
        let race = &p["extension"][0];
        assert_eq!(race["extension"].as_array().unwrap().len(), 1);
        assert_eq!(race["extension"][0]["valueString"], "Caucasian");
    }
}
