//! v2 data types → FHIR data types (the IG's `datatypes/` maps): CX→Identifier,
//! XPN→HumanName, XAD→Address, XTN→ContactPoint, CWE→CodeableConcept/Coding,
//! TS/DTM→date/dateTime/instant, EI→Identifier.
//!
//! FHIR forbids empty values (`""`, `[]`, `{}`): every builder here leaves out what was not
//! sent, and returns `None` when nothing was.

use crate::fhir::json::{Fields, Json, json};
use chrono::{Datelike, Timelike};

use super::concepts;
use crate::formats::hl7::{Cwe, Cx, Element, Hd, Hl7Error, Precision, Ts, Xad, Xpn, Xtn, Zone};

/// A JSON object that skips empty values.
#[derive(Debug, Default, Clone)]
pub struct Obj(pub Fields);

impl Obj {
    pub fn new() -> Self {
        Obj(Fields::new())
    }

    /// A resource's body, with room for `fields` fields and the `resourceType` and `id`
    /// `Resource::new` puts first: no regrowth while it is built, none when it becomes a
    /// resource (a reallocation was ~750 instructions, callgrind).
    pub fn resource(fields: usize) -> Self {
        Obj(Fields::with_capacity(fields + 2))
    }

    /// Sets `key` unless `value` is absent or empty.
    #[inline(always)]
    pub fn set(mut self, key: &'static str, value: impl Into<Option<Json>>) -> Self {
        self.put(key, value);
        self
    }

    // Inlined into each builder: the value is then stored where it is built instead of being
    // moved through a call (the call's stores and loads stalled, perf annotate).
    #[inline(always)]
    pub fn put(&mut self, key: &'static str, value: impl Into<Option<Json>>) {
        if let Some(v) = value.into()
            && !v.is_empty()
        {
            self.0.append(key, v);
        }
    }

    /// Appends to the array at `key`.
    pub fn push(&mut self, key: &'static str, value: impl Into<Option<Json>>) {
        if let Some(v) = value.into()
            && !v.is_empty()
        {
            match self.0.entry(key, || Json::Array(vec![])) {
                Json::Array(a) => a.push(v),
                other => *other = Json::Array(vec![other.take(), v]),
            }
        }
    }

    pub fn build(self) -> Option<Json> {
        (!self.0.is_empty()).then_some(Json::Object(self.0))
    }

    pub fn into_value(self) -> Json {
        Json::Object(self.0)
    }
}

fn s(v: &Option<String>) -> Option<Json> {
    v.as_deref().map(Json::from)
}

/// How identifier systems are chosen.
#[derive(Debug, Clone, Default)]
pub struct Systems {
    /// Assigning-authority namespace (HD-1) → system URI, for authorities sent by local name.
    pub by_namespace: std::sync::Arc<std::collections::HashMap<String, String>>,
    /// The sending facility (MSH-4, else MSH-3), already made safe for a URN (`urn_safe`):
    /// local authority names are scoped to it. Set per message by the converter.
    pub sender: String,
}

impl Systems {
    /// HD[uri] (rows 3–6), always an absolute URI (FHIR requires one; validators reject
    /// `GHH` or `1`): a configured namespace's URI; else a universal id that is a URI by its
    /// type (`urn:oid:` for ISO or an OID-shaped id, `urn:uuid:` for UUID, a URI as is); else
    /// the local name, scoped to the sender: `urn:plexus:v2:<sender>:authority:<name>` — stable
    /// across messages, and two senders' local "MR" authorities never collide.
    pub fn system(&self, hd: &Hd) -> Option<String> {
        if let Some(ns) = &hd.namespace_id
            && let Some(uri) = self.by_namespace.get(ns)
        {
            return Some(uri.clone());
        }
        if let Some(uid) = &hd.universal_id {
            match hd.universal_id_type.as_deref() {
                Some("ISO") => return Some(format!("urn:oid:{uid}")),
                Some("UUID") => return Some(format!("urn:uuid:{uid}")),
                Some("URI") if is_absolute_uri(uid) => return Some(uid.clone()),
                _ if is_oid(uid) => return Some(format!("urn:oid:{uid}")),
                _ if is_absolute_uri(uid) => return Some(uid.clone()),
                _ => {}
            }
        }
        let local = hd.namespace_id.as_ref().or(hd.universal_id.as_ref())?;
        if is_absolute_uri(local) {
            return Some(local.clone());
        }
        Some(format!(
            "urn:plexus:v2:{}:authority:{}",
            self.sender,
            urn_safe(local)
        ))
    }
}

/// `1.2.840.113619` and the like: digits in dot-separated arcs.
fn is_oid(s: &str) -> bool {
    s.contains('.')
        && s.split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
}

/// A URI with a scheme FHIR systems use (`http(s)://…`, `urn:…`).
pub fn is_absolute_uri(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://") || s.starts_with("urn:"))
        && !s.contains(char::is_whitespace)
}

/// Text as a URN segment: letters, digits, `.` and `-` kept, the rest `_`.
pub fn urn_safe(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

/// A `v2-0203` identifier type.
pub fn identifier_type(code: &str) -> Json {
    json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]})
}

/// CX[Identifier]: value (r3), system from CX-4 (r9, HD[uri]) with the authority's name as
/// assigner display (r8), type from CX-5 (r10).
pub fn identifier(cx: &Cx, systems: &Systems) -> Option<Json> {
    let value = cx.id.as_ref()?;
    let mut o = Obj::new()
        .set(
            "type",
            cx.identifier_type_code.as_deref().map(identifier_type),
        )
        .set(
            "system",
            systems.system(&cx.assigning_authority).map(Json::from),
        )
        .set("value", Json::from(value.as_str()));
    o.put(
        "assigner",
        cx.assigning_authority.name().map(|n| json!({"display": n})),
    );
    Some(o.into_value())
}

/// XPN[HumanName]: family (FN-1), given [XPN-2, XPN-3], prefix XPN-5, suffix [XPN-4,
/// XPN-6 degree], use from NameType (r9).
pub fn human_name(x: &Xpn) -> Option<Json> {
    let given: Vec<Json> = [&x.given, &x.middle].into_iter().filter_map(s).collect();
    let suffix: Vec<Json> = [&x.suffix, &x.degree].into_iter().filter_map(s).collect();
    Obj::new()
        .set(
            "use",
            x.name_type_code
                .as_deref()
                .and_then(concepts::name_use)
                .map(Json::from),
        )
        .set("family", s(&x.family))
        .set("given", Json::Array(given))
        .set("prefix", x.prefix.as_ref().map(|p| json!([p])))
        .set("suffix", Json::Array(suffix))
        .build()
}

/// XAD[Address]: lines SAD-1..3 then XAD-2 (r3–4), city, state, postal code, country
/// (r5–8), use or type from XAD-7 (r9–10), district from XAD-9 (r17).
pub fn address(x: &Xad) -> Option<Json> {
    let lines: Vec<Json> = [
        &x.street,
        &x.street_name,
        &x.dwelling_number,
        &x.other_designation,
    ]
    .into_iter()
    .filter_map(s)
    .collect();
    let kind = x.address_type.as_deref();
    Obj::new()
        .set("use", kind.and_then(concepts::address_use).map(Json::from))
        .set(
            "type",
            kind.and_then(concepts::address_type).map(Json::from),
        )
        .set("line", Json::Array(lines))
        .set("city", s(&x.city))
        .set("district", s(&x.county))
        .set("state", s(&x.state))
        .set("postalCode", s(&x.postal_code))
        .set("country", s(&x.country))
        .build()
}

/// XTN[ContactPoint]. Value: XTN-4 for e-mail (r8); else composed `+5 6 7 X8` when area and
/// local number are sent (r15–18); else XTN-12 (r24); else XTN-1 (r3); a lone XTN-7 is used
/// too (no IG row covers it). System from XTN-3 (r5), `email` when only XTN-4 is sent (r6),
/// else `phone` (the IG's data-absent-reason would leave a value without a usable system).
/// Use from XTN-2 (r4), else `default_use` (PID-13 home, PID-14 work).
pub fn contact_point(x: &Xtn, default_use: Option<&str>) -> Option<Json> {
    let (mut system, mut use_) = match x.equipment_type.as_deref() {
        Some(eq) => match concepts::telecom_system(eq) {
            Some((sys, u)) => (Some(sys), u),
            None => (None, None),
        },
        None if x.email.is_some() => (Some("email"), None),
        None => (None, None),
    };
    let value = if system == Some("email") {
        x.email.clone().or_else(|| x.telephone.clone())
    } else if let (Some(area), Some(local)) = (&x.area_code, &x.local_number) {
        let mut v = String::new();
        if let Some(cc) = &x.country_code {
            v.push('+');
            v.push_str(cc.trim_start_matches('+'));
            v.push(' ');
        }
        v.push_str(area);
        v.push(' ');
        v.push_str(local);
        if let Some(ext) = &x.extension {
            v.push_str(" X");
            v.push_str(ext);
        }
        Some(v)
    } else {
        x.unformatted
            .clone()
            .or_else(|| x.telephone.clone())
            .or_else(|| x.local_number.clone())
    }?;
    if system.is_none() {
        system = Some("phone");
    }
    if let Some(u) = x.use_code.as_deref().and_then(concepts::telecom_use) {
        use_ = Some(u);
    }
    if use_.is_none() {
        use_ = default_use;
    }
    Obj::new()
        .set("system", system.map(Json::from))
        .set("value", Json::from(value))
        .set("use", use_.map(Json::from))
        .build()
}

/// One Coding (CWE[Coding]): code, display, system from the coding-system name.
fn coding(
    code: &Option<String>,
    display: &Option<String>,
    system: &Option<String>,
) -> Option<Json> {
    code.as_ref()?;
    Obj::new()
        .set(
            "system",
            system
                .as_deref()
                .and_then(concepts::coding_system)
                .map(Json::from),
        )
        .set("code", s(code))
        .set("display", s(display))
        .build()
}

/// CWE[CodeableConcept]: the primary (r3–5) and alternate (r6–8) codings; `text` when only
/// text was sent.
pub fn codeable_concept(c: &Cwe) -> Option<Json> {
    concept_with(c, coding)
}

/// A CodeableConcept of the CWE's two codings, each made by `coding` (code, display, system).
fn concept_with(
    c: &Cwe,
    coding: impl Fn(&Option<String>, &Option<String>, &Option<String>) -> Option<Json>,
) -> Option<Json> {
    let codings: Vec<Json> = [
        coding(&c.identifier, &c.text, &c.coding_system),
        coding(
            &c.alternate_identifier,
            &c.alternate_text,
            &c.alternate_coding_system,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let text = if codings.is_empty() {
        c.text.clone().or_else(|| c.alternate_text.clone())
    } else {
        None
    };
    Obj::new()
        .set("coding", Json::Array(codings))
        .set("text", text.map(Json::from))
        .build()
}

/// PID-15 → `communication.language` per the IG's PrimaryLanguage map: a BCP-47 code
/// (`urn:ietf:bcp:47`); ISO 639-2 codes that have a two-letter form are converted (`ENG` →
/// `en`), as BCP-47 requires; anything not shaped like a language tag is kept as sent (the
/// sender's CWE-3 system), never claimed as BCP-47.
pub fn language(c: &Cwe) -> Option<Json> {
    concept_with(c, |code, text, system| {
        match code.as_deref().map(str::trim).and_then(bcp47) {
            Some(tag) => Obj::new()
                .set("system", Json::from("urn:ietf:bcp:47"))
                .set("code", Json::from(tag))
                .set("display", s(text))
                .build(),
            None => coding(code, text, system),
        }
    })
}

/// A language code as a BCP-47 tag, when it is one or an ISO 639-2 code with a 2-letter form.
fn bcp47(code: &str) -> Option<String> {
    let mut parts = code.split(['-', '_']);
    let lang = parts.next()?.to_ascii_lowercase();
    if !(2..=3).contains(&lang.len()) || !lang.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    // ISO 639-2 (B and T forms) → ISO 639-1, for the languages US and EU feeds carry.
    const TWO: &[(&str, &str)] = &[
        ("ara", "ar"),
        ("ben", "bn"),
        ("bos", "bs"),
        ("bul", "bg"),
        ("chi", "zh"),
        ("zho", "zh"),
        ("cze", "cs"),
        ("ces", "cs"),
        ("dan", "da"),
        ("dut", "nl"),
        ("nld", "nl"),
        ("eng", "en"),
        ("fin", "fi"),
        ("fre", "fr"),
        ("fra", "fr"),
        ("fry", "fy"),
        ("ger", "de"),
        ("deu", "de"),
        ("gre", "el"),
        ("ell", "el"),
        ("guj", "gu"),
        ("hat", "ht"),
        ("heb", "he"),
        ("hin", "hi"),
        ("hrv", "hr"),
        ("hun", "hu"),
        ("ind", "id"),
        ("ita", "it"),
        ("jpn", "ja"),
        ("khm", "km"),
        ("kor", "ko"),
        ("lao", "lo"),
        ("may", "ms"),
        ("msa", "ms"),
        ("nep", "ne"),
        ("nor", "no"),
        ("pan", "pa"),
        ("per", "fa"),
        ("fas", "fa"),
        ("pol", "pl"),
        ("por", "pt"),
        ("rum", "ro"),
        ("ron", "ro"),
        ("rus", "ru"),
        ("slo", "sk"),
        ("slk", "sk"),
        ("som", "so"),
        ("spa", "es"),
        ("srp", "sr"),
        ("swa", "sw"),
        ("swe", "sv"),
        ("tam", "ta"),
        ("tel", "te"),
        ("tgl", "tl"),
        ("tha", "th"),
        ("tur", "tr"),
        ("ukr", "uk"),
        ("urd", "ur"),
        ("vie", "vi"),
        ("yid", "yi"),
        ("amh", "am"),
        ("alb", "sq"),
        ("sqi", "sq"),
        ("arm", "hy"),
        ("hye", "hy"),
        ("mar", "mr"),
    ];
    let lang = TWO
        .iter()
        .find(|(three, _)| *three == lang)
        .map_or(lang.clone(), |(_, two)| two.to_string());
    let mut tag = lang;
    for p in parts {
        if !(2..=8).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        tag.push('-');
        // Regions upper-case (`en-US`), other subtags as sent in lower case.
        if p.len() == 2 && p.bytes().all(|b| b.is_ascii_alphabetic()) {
            tag.push_str(&p.to_ascii_uppercase());
        } else {
            tag.push_str(&p.to_ascii_lowercase());
        }
    }
    Some(tag)
}

/// A CodeableConcept through a concept map: the mapped coding first (with the sender's
/// display), then the v2 coding as sent (`v2_table` like `0002`), so a reader sees both.
pub fn mapped_concept(
    c: &Cwe,
    map: impl Fn(&str) -> Option<concepts::Target>,
    v2_table: &str,
) -> Option<Json> {
    let code = c.identifier.as_deref()?;
    let mut codings = Vec::new();
    if let Some((system, mapped)) = map(code) {
        codings.push(
            Obj::new()
                .set("system", Json::from(system))
                .set("code", Json::from(mapped))
                .set("display", s(&c.text))
                .into_value(),
        );
    }
    if codings.is_empty() {
        // Not a code of the table: do not claim the table's system for it; the sender's
        // coding system (CWE-3) says what it is, per the IG's CWE[Coding] rows.
        codings.extend(coding(&c.identifier, &c.text, &c.coding_system));
    } else {
        let v2 = format!("http://terminology.hl7.org/CodeSystem/v2-{v2_table}");
        if codings.first().and_then(|c| c["system"].as_str()) != Some(v2.as_str()) {
            codings.push(json!({"system": v2, "code": code}));
        }
    }
    Obj::new()
        .set("coding", Json::Array(codings))
        .set("text", s(&c.text))
        .build()
}

/// EI[Identifier]: value EI-1, system from EI-2/EI-3/EI-4 (HD rules).
/// An EI inside another type (EIP's placer and filler parts) is read from its sub-components.
pub fn entity_identifier(el: &Element<'_>, systems: &Systems) -> Result<Option<Json>, Hl7Error> {
    let part = crate::formats::hl7::datatypes::embedded_reader(el);
    let Some(value) = text(&part(1))? else {
        return Ok(None);
    };
    let hd = Hd {
        namespace_id: text(&part(2))?,
        universal_id: text(&part(3))?,
        universal_id_type: text(&part(4))?,
    };
    Ok(Obj::new()
        .set("system", systems.system(&hd).map(Json::from))
        .set("value", Json::from(value))
        .build())
}

/// PL (person location) as a display: point of care, room, bed, facility, building, floor.
pub fn location_display(el: &Element<'_>) -> Result<Option<String>, Hl7Error> {
    let c: [Element<'_>; 8] = el.components();
    let mut out = String::with_capacity(64);
    for (n, label) in [
        (1, ""),
        (2, "room "),
        (3, "bed "),
        (4, ""),
        (7, "building "),
        (8, "floor "),
    ] {
        if let Some(v) = text(&c[n - 1].subcomponent(1))? {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(label);
            out.push_str(&v);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Decoded text of an element; `None` when absent, empty or null.
pub fn text(el: &Element<'_>) -> Result<Option<String>, Hl7Error> {
    if !el.is_present() || el.raw().is_empty() || el.is_null() {
        return Ok(None);
    }
    let t = el.text()?;
    let t = t.trim_end();
    Ok((!t.is_empty()).then(|| t.to_string()))
}

/// FHIR `date` at the value's precision (a birth year stays a year).
pub fn date(ts: &Ts) -> String {
    let mut out = String::with_capacity(10);
    push_date(&mut out, ts, ts.precision());
    out
}

/// `YYYY[-MM[-DD]]` to `precision` (years of HL7 times have four digits, 0000–9999).
fn push_date(out: &mut String, ts: &Ts, precision: Precision) {
    let d = ts.datetime();
    push_digits(out, d.year().max(0).unsigned_abs(), 4);
    if precision >= Precision::Month {
        out.push('-');
        push_digits(out, d.month(), 2);
    }
    if precision >= Precision::Day {
        out.push('-');
        push_digits(out, d.day(), 2);
    }
}

/// `v` in decimal, zero-padded to `width` (dates and times are on every resource; `format!`
/// with padding showed in the profile).
fn push_digits(out: &mut String, mut v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for _ in buf.len() - i..width {
        out.push('0');
    }
    out.extend(buf[i..].iter().map(|&b| char::from(b)));
}

/// FHIR `dateTime`: a date at day precision or coarser; with a time, seconds and an offset
/// are required by FHIR — the value's own offset, else the configured zone's on that date.
pub fn date_time(ts: &Ts, zone: Zone) -> String {
    if ts.precision() <= Precision::Day {
        return date(ts);
    }
    instant(ts, zone)
}

thread_local! {
    /// Set when a time of the resource being mapped had no offset and the zone was assumed
    /// (read and cleared per resource by the converter, which tags the resource).
    static ASSUMED_ZONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a zone was assumed since the last call (and clears it).
pub(crate) fn take_assumed_zone() -> bool {
    ASSUMED_ZONE.with(|c| c.replace(false))
}

/// FHIR `instant`: always to the second with an offset.
pub fn instant(ts: &Ts, zone: Zone) -> String {
    let d = ts.datetime();
    if ts.offset().is_none() {
        ASSUMED_ZONE.with(|c| c.set(true));
    }
    let offset = ts.offset_in(zone);
    let mut out = String::with_capacity(32);
    push_date(&mut out, ts, Precision::Day);
    out.push('T');
    push_digits(&mut out, d.hour(), 2);
    out.push(':');
    push_digits(&mut out, d.minute(), 2);
    out.push(':');
    push_digits(&mut out, d.second(), 2);
    if let Precision::Fraction(n) = ts.precision() {
        let micros = d.nanosecond() / 1_000;
        out.push('.');
        push_digits(
            &mut out,
            micros / 10u32.pow(6 - u32::from(n)),
            usize::from(n),
        );
    }
    let secs = offset.local_minus_utc();
    out.push(if secs < 0 { '-' } else { '+' });
    let secs = secs.unsigned_abs();
    push_digits(&mut out, secs / 3600, 2);
    out.push(':');
    push_digits(&mut out, secs / 60 % 60, 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    #[test]
    fn dates_keep_precision_and_times_get_an_offset() {
        let utc = Zone::default();
        let t = Ts::parse("1988").unwrap();
        assert_eq!(date_time(&t, utc), "1988");
        let t = Ts::parse("198808181126+0215").unwrap();
        assert_eq!(date(&t), "1988-08-18");
        assert_eq!(date_time(&t, utc), "1988-08-18T11:26:00+02:15");
        let t = Ts::parse("20210817151943.4").unwrap();
        assert_eq!(
            instant(&t, Zone::Fixed(FixedOffset::west_opt(5 * 3600).unwrap())),
            "2021-08-17T15:19:43.4-05:00"
        );
        // Zero padding everywhere: month precision, a fraction with leading zeros, an
        // early year and a negative half-hour offset.
        assert_eq!(date(&Ts::parse("198808").unwrap()), "1988-08");
        let t = Ts::parse("00050102030405.0045-0930").unwrap();
        assert_eq!(date_time(&t, utc), "0005-01-02T03:04:05.0045-09:30");
    }

    #[test]
    fn phones_are_composed_and_email_comes_from_xtn4() {
        let x = Xtn {
            equipment_type: Some("CP".into()),
            country_code: Some("1".into()),
            area_code: Some("555".into()),
            local_number: Some("1234567".into()),
            extension: Some("89".into()),
            ..Default::default()
        };
        assert_eq!(
            contact_point(&x, Some("home")).unwrap(),
            json!({"system": "phone", "value": "+1 555 1234567 X89", "use": "mobile"})
        );
        let x = Xtn {
            use_code: Some("WPN".into()),
            equipment_type: Some("Internet".into()),
            email: Some("a@b.org".into()),
            telephone: Some("89898989".into()),
            ..Default::default()
        };
        assert_eq!(
            contact_point(&x, None).unwrap(),
            json!({"system": "email", "value": "a@b.org", "use": "work"})
        );
        assert_eq!(contact_point(&Xtn::default(), None), None);
    }
}
