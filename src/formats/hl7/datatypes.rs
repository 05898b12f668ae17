//! Typed readers for the HL7v2 data types that mappings use: TS/DTM, DT, NM, HD, CX, XPN, XAD,
//! XTN and CWE/CE.
//!
//! HL7 dates and times carry a *precision*: `2026` means "some time in 2026", not midnight on
//! 1 January. [`Ts`] keeps the precision next to the value (filled in with the lowest value of
//! each missing part) so a consumer can tell a birth year from a birth instant. The time zone
//! offset is optional in HL7 and most senders omit it: such a value is local time of the sender,
//! so converting it to UTC needs an offset supplied by configuration
//! ([`Ts::to_utc_micros`]), never a guess made here.
//!
//! Scalar parsers return `Result<_, String>`, the reason naming the part and value at fault;
//! `from_element` readers turn it into [`ErrorKind::Conversion`] at the element's offset.
//! Composite readers yield owned `Option<String>` parts: absent, empty and null (`""`) all read
//! as `None`, and trailing spaces are dropped (HL7 ST: trailing blanks are not significant).

use std::fmt;

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};

use super::error::{ErrorKind, Hl7Error};
use super::message::Element;

/// How much of a date/time was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// Fractional seconds with this many digits (1-4).
    Fraction(u8),
}

/// A TS (v2.5 and earlier) or DTM (v2.6+) value: `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ts {
    datetime: NaiveDateTime,
    offset: Option<FixedOffset>,
    precision: Precision,
}

impl Ts {
    /// Parses a TS/DTM value. Leading and trailing whitespace is ignored.
    pub fn parse(input: &str) -> Result<Ts, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("empty value".into());
        }
        // A date/time has no sign, so the first sign starts the offset.
        let (main, zone) = match s.find(['+', '-']) {
            Some(i) => (&s[..i], Some((i, &s[i..]))),
            None => (s, None),
        };
        let (digits, fraction) = match main.find('.') {
            Some(i) => (&main[..i], Some((i + 1, &main[i + 1..]))),
            None => (main, None),
        };
        check_digits(digits, 0)?;
        let precision = match digits.len() {
            4 => Precision::Year,
            6 => Precision::Month,
            8 => Precision::Day,
            10 => Precision::Hour,
            12 => Precision::Minute,
            14 => Precision::Second,
            n if n > 14 => {
                return Err(format!(
                    "date/time has {n} digits; at most 14 (YYYYMMDDHHMMSS) are allowed"
                ));
            }
            n => {
                return Err(format!(
                    "date/time has {n} digits; expected 4, 6, 8, 10, 12 or 14 \
                     (YYYY[MM[DD[HH[MM[SS]]]]])"
                ));
            }
        };
        let date = civil_date(digits)?;
        let hour = part(digits, 8, "hour", 0, 23)?;
        let minute = part(digits, 10, "minute", 0, 59)?;
        let second = part(digits, 12, "second", 0, 59)?;

        let (precision, micros) = match fraction {
            None => (precision, 0),
            Some(_) if precision != Precision::Second => {
                return Err("fractional seconds require seconds (YYYYMMDDHHMMSS.S)".into());
            }
            Some((_, "")) => return Err("no digits after the decimal point".into()),
            Some((at, f)) => {
                check_digits(f, at)?;
                if f.len() > 4 {
                    return Err(format!(
                        "fractional seconds have {} digits; at most 4 are allowed",
                        f.len()
                    ));
                }
                // Scale to microseconds: ".4" is 400000 µs.
                let scaled = number(f) * 10u32.pow(6 - f.len() as u32);
                (Precision::Fraction(f.len() as u8), scaled)
            }
        };

        let offset = match zone {
            None => None,
            Some((at, z)) => Some(parse_offset(z, at)?),
        };
        let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micros)
            .ok_or_else(|| "invalid time of day".to_string())?;
        Ok(Ts {
            datetime: date.and_time(time),
            offset,
            precision,
        })
    }

    /// Reads a TS/DTM element: component 1 (v2.5 and earlier TS had a deprecated precision
    /// component 2, which the value's own length makes redundant). `None` when absent, empty or
    /// null.
    pub fn from_element(element: &Element<'_>) -> Result<Option<Ts>, Hl7Error> {
        let el = element.component(1);
        let Some(text) = value_text(&el)? else {
            return Ok(None);
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        Ts::parse(&text)
            .map(Some)
            .map_err(|reason| conversion(&el, &text, "TS/DTM", reason))
    }

    /// Date and time as written (local to the sender; missing parts are the lowest value).
    pub fn datetime(&self) -> NaiveDateTime {
        self.datetime
    }

    /// The offset sent with the value, if any.
    pub fn offset(&self) -> Option<FixedOffset> {
        self.offset
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The date as written (not converted to UTC: a birth date must not move a day).
    pub fn date(&self) -> NaiveDate {
        self.datetime.date()
    }

    /// Microseconds since the Unix epoch, UTC. The value's own offset wins; `zone` applies to
    /// values sent without one (at the offset in force on that date: DST-aware).
    pub fn to_utc_micros(&self, zone: Zone) -> i64 {
        let offset = self.offset_in(zone);
        self.datetime.and_utc().timestamp_micros() - i64::from(offset.local_minus_utc()) * 1_000_000
    }

    /// The value's own offset, else the one `zone` has at the value's wall-clock time.
    pub fn offset_in(&self, zone: Zone) -> FixedOffset {
        self.offset.unwrap_or_else(|| zone.offset_at(self.datetime))
    }
}

/// Where times sent without an offset are: a fixed offset (`-0500`) or an IANA zone
/// (`America/Chicago`), whose offset depends on the date (daylight saving time). HL7 lets a
/// sender leave the offset out; the integration knows where its sender is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Fixed(FixedOffset),
    Iana(chrono_tz::Tz),
}

impl Default for Zone {
    /// UTC.
    fn default() -> Self {
        Zone::Fixed(FixedOffset::east_opt(0).expect("zero offset"))
    }
}

impl Zone {
    /// `-0500`, `+05:30`, `UTC`/`Z`, or an IANA name (`America/Chicago`).
    pub fn parse(s: &str) -> Result<Zone, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" {
            return Ok(Zone::default());
        }
        if t.starts_with(['+', '-']) {
            // The same rules as an offset inside an HL7 time (`+HHMM`), a colon allowed.
            let compact: String = t.chars().filter(|c| *c != ':').collect();
            return parse_offset(&compact, 0)
                .map(Zone::Fixed)
                .map_err(|e| format!("{t:?} is not an offset like -0500 or +05:30 ({e})"));
        }
        t.parse::<chrono_tz::Tz>().map(Zone::Iana).map_err(|_| {
            format!("{t:?} is neither an offset like -0500 nor an IANA zone like America/Chicago")
        })
    }

    /// The offset in force at local wall-clock time `local`. In the hour a DST change repeats
    /// (autumn) the earlier offset is taken; in the hour it skips (spring), the offset before
    /// the change — what a clock that was not yet moved would have meant.
    pub fn offset_at(&self, local: NaiveDateTime) -> FixedOffset {
        use chrono::{Offset, TimeZone};
        match self {
            Zone::Fixed(o) => *o,
            Zone::Iana(tz) => match tz.offset_from_local_datetime(&local) {
                chrono::LocalResult::Single(o) => o.fix(),
                chrono::LocalResult::Ambiguous(a, _) => a.fix(),
                chrono::LocalResult::None => tz
                    .offset_from_utc_datetime(&(local - chrono::Duration::hours(3)))
                    .fix(),
            },
        }
    }

    /// Whether this is UTC (the default, when nothing is said).
    pub fn is_utc(&self) -> bool {
        *self == Zone::default()
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Fixed(o) => write!(f, "{o}"),
            Zone::Iana(tz) => write!(f, "{}", tz.name()),
        }
    }
}

/// Writes the value back in HL7 form, at its precision and with its offset.
impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use chrono::{Datelike, Timelike};
        let d = &self.datetime;
        let p = self.precision;
        write!(f, "{:04}", d.year())?;
        let parts = [
            (Precision::Month, d.month()),
            (Precision::Day, d.day()),
            (Precision::Hour, d.hour()),
            (Precision::Minute, d.minute()),
            (Precision::Second, d.second()),
        ];
        for (level, v) in parts {
            if p >= level {
                write!(f, "{v:02}")?;
            }
        }
        if let Precision::Fraction(n) = p {
            let micros = d.nanosecond() / 1_000;
            let v = micros / 10u32.pow(6 - u32::from(n));
            write!(f, ".{v:0width$}", width = usize::from(n))?;
        }
        if let Some(o) = self.offset {
            let secs = o.local_minus_utc();
            let sign = if secs < 0 { '-' } else { '+' };
            let secs = secs.unsigned_abs();
            write!(f, "{sign}{:02}{:02}", secs / 3600, secs / 60 % 60)?;
        }
        Ok(())
    }
}

/// Parses a DT value `YYYY[MM[DD]]` (missing parts are the lowest value).
pub fn parse_dt(input: &str) -> Result<(NaiveDate, Precision), String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty value".into());
    }
    check_digits(s, 0)?;
    let precision = match s.len() {
        4 => Precision::Year,
        6 => Precision::Month,
        8 => Precision::Day,
        n => {
            return Err(format!(
                "date has {n} digits; expected 4, 6 or 8 (YYYY[MM[DD]])"
            ));
        }
    };
    Ok((civil_date(s)?, precision))
}

/// Parses an NM value: optional leading `+`/`-`, digits, an optional decimal point; surrounding
/// whitespace is ignored. No exponent, hex, `NaN` or infinity (not in the HL7 NM grammar).
pub fn parse_nm(input: &str) -> Result<f64, String> {
    let nm = Nm::split(input)?;
    let v: f64 = nm.text.parse().map_err(|e| format!("not a number: {e}"))?;
    if !v.is_finite() {
        return Err("number is too large for a 64-bit float".into());
    }
    Ok(v)
}

/// Parses an NM value that must be whole: `42`, `-7` and `42.0` are accepted, `42.5` is not.
pub fn parse_nm_i64(input: &str) -> Result<i64, String> {
    let nm = Nm::split(input)?;
    if nm.fraction.contains(|c| c != '0') {
        // The digits stay out of the message: values can be PHI.
        return Err("not a whole number (it has a fractional part)".into());
    }
    let digits = nm.integer.trim_start_matches('0');
    let out_of_range = || "number is out of range for a 64-bit integer".to_string();
    // 39 digits overflow i128; anything that long is out of range anyway.
    let magnitude: i128 = match digits {
        "" => 0,
        d if d.len() > 20 => return Err(out_of_range()),
        d => d.parse().map_err(|_| out_of_range())?,
    };
    let v = if nm.negative { -magnitude } else { magnitude };
    i64::try_from(v).map_err(|_| out_of_range())
}

/// An NM value checked against the grammar and split into its parts.
struct Nm<'s> {
    text: &'s str,
    negative: bool,
    integer: &'s str,
    fraction: &'s str,
}

impl<'s> Nm<'s> {
    fn split(input: &'s str) -> Result<Nm<'s>, String> {
        let text = input.trim();
        if text.is_empty() {
            return Err("empty value".into());
        }
        let (negative, unsigned, at) = match text.as_bytes()[0] {
            b'-' => (true, &text[1..], 1),
            b'+' => (false, &text[1..], 1),
            _ => (false, text, 0),
        };
        let (integer, fraction) = match unsigned.find('.') {
            Some(i) => (&unsigned[..i], &unsigned[i + 1..]),
            None => (unsigned, ""),
        };
        let nm_reason = |e: String| {
            format!("{e}; NM allows only digits, an optional leading sign and a decimal point")
        };
        check_digits(integer, at).map_err(nm_reason)?;
        check_digits(fraction, at + integer.len() + 1).map_err(nm_reason)?;
        if integer.is_empty() && fraction.is_empty() {
            return Err("no digits".into());
        }
        Ok(Nm {
            text,
            negative,
            integer,
            fraction,
        })
    }
}

/// HD: a namespace (local name), a universal id (e.g. an OID) and the universal id's type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Hd {
    pub namespace_id: Option<String>,
    pub universal_id: Option<String>,
    pub universal_id_type: Option<String>,
}

impl Hd {
    /// Reads components when given a field or repetition (MSH-4) and sub-components when given
    /// a component (CX-4, where HD is embedded).
    pub fn from_element(element: &Element<'_>) -> Result<Self, Hl7Error> {
        Hd::read(embedded_parts(element))
    }

    fn read([namespace, universal, kind]: [Element<'_>; 3]) -> Result<Self, Hl7Error> {
        Ok(Hd {
            namespace_id: opt(namespace)?,
            universal_id: opt(universal)?,
            universal_id_type: opt(kind)?,
        })
    }

    /// The namespace if sent, else the universal id: the usual label for "the authority".
    pub fn name(&self) -> Option<&str> {
        self.namespace_id
            .as_deref()
            .or(self.universal_id.as_deref())
    }

    pub fn is_empty(&self) -> bool {
        self.namespace_id.is_none()
            && self.universal_id.is_none()
            && self.universal_id_type.is_none()
    }
}

/// CX: an identifier with its check digit, assigning authority, type and facility.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cx {
    pub id: Option<String>,
    pub check_digit: Option<String>,
    pub check_digit_scheme: Option<String>,
    pub assigning_authority: Hd,
    /// Table 0203, e.g. `MR`, `SS`.
    pub identifier_type_code: Option<String>,
    pub assigning_facility: Hd,
}

impl Cx {
    /// Reads one repetition (given a field, its first repetition).
    pub fn from_element(element: &Element<'_>) -> Result<Self, Hl7Error> {
        let [id, check, scheme, authority, kind, facility] = element.components();
        Ok(Cx {
            id: opt(id)?,
            check_digit: opt(check)?,
            check_digit_scheme: opt(scheme)?,
            assigning_authority: Hd::read(authority.subcomponents())?,
            identifier_type_code: opt(kind)?,
            assigning_facility: Hd::read(facility.subcomponents())?,
        })
    }
}

/// XPN: a person name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Xpn {
    /// The surname (sub-component 1 of the FN family name; v2.2 sent a plain string).
    pub family: Option<String>,
    pub given: Option<String>,
    /// Second and further given names or their initials.
    pub middle: Option<String>,
    /// e.g. `JR`, `III`.
    pub suffix: Option<String>,
    /// e.g. `DR`.
    pub prefix: Option<String>,
    /// e.g. `MD` (v2.5+ moved degrees to XPN-14, but senders still use XPN-6).
    pub degree: Option<String>,
    /// Table 0200, e.g. `L` (legal), `D` (display).
    pub name_type_code: Option<String>,
}

impl Xpn {
    /// Reads one repetition (given a field, its first repetition).
    pub fn from_element(element: &Element<'_>) -> Result<Self, Hl7Error> {
        let [family, given, middle, suffix, prefix, degree, kind] = element.components();
        Ok(Xpn {
            family: opt(family.subcomponent(1))?,
            given: opt(given)?,
            middle: opt(middle)?,
            suffix: opt(suffix)?,
            prefix: opt(prefix)?,
            degree: opt(degree)?,
            name_type_code: opt(kind)?,
        })
    }

    /// "prefix given middle family suffix", skipping missing parts (e.g. `Dr. ADAM A EVERYMAN
    /// III`). The degree is left out: it is a credential, not part of the name.
    pub fn display(&self) -> String {
        [
            &self.prefix,
            &self.given,
            &self.middle,
            &self.family,
            &self.suffix,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// XAD: an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Xad {
    /// Street or mailing address (SAD sub-component 1; before v2.3 the whole component).
    pub street: Option<String>,
    /// SAD sub-component 2, when the street is sent in parts.
    pub street_name: Option<String>,
    /// SAD sub-component 3.
    pub dwelling_number: Option<String>,
    pub other_designation: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
    /// Table 0190, e.g. `H` (home), `M` (mailing).
    pub address_type: Option<String>,
    pub other_geographic: Option<String>,
    /// The county code (sub-component 1 when v2.7+ sends it as CWE).
    pub county: Option<String>,
}

impl Xad {
    /// Reads one repetition (given a field, its first repetition).
    pub fn from_element(element: &Element<'_>) -> Result<Self, Hl7Error> {
        let c: [Element<'_>; 9] = element.components();
        let [street, street_name, dwelling] = c[0].subcomponents();
        Ok(Xad {
            street: opt(street)?,
            street_name: opt(street_name)?,
            dwelling_number: opt(dwelling)?,
            other_designation: opt(c[1])?,
            city: opt(c[2])?,
            state: opt(c[3])?,
            postal_code: opt(c[4])?,
            country: opt(c[5])?,
            address_type: opt(c[6])?,
            other_geographic: opt(c[7])?,
            county: opt(c[8].subcomponent(1))?,
        })
    }
}

/// XTN: a telephone number or e-mail address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Xtn {
    /// Free-text number (deprecated since v2.3, still the most common form).
    pub telephone: Option<String>,
    /// Table 0201, e.g. `PRN`, `WPN`, `NET`.
    pub use_code: Option<String>,
    /// Table 0202, e.g. `PH`, `CP`, `Internet`.
    pub equipment_type: Option<String>,
    pub email: Option<String>,
    pub country_code: Option<String>,
    pub area_code: Option<String>,
    pub local_number: Option<String>,
    pub extension: Option<String>,
    /// XTN-12, the number as dialled.
    pub unformatted: Option<String>,
}

impl Xtn {
    /// Reads one repetition (given a field, its first repetition).
    pub fn from_element(element: &Element<'_>) -> Result<Self, Hl7Error> {
        let c: [Element<'_>; 12] = element.components();
        Ok(Xtn {
            telephone: opt(c[0])?,
            use_code: opt(c[1])?,
            equipment_type: opt(c[2])?,
            email: opt(c[3])?,
            country_code: opt(c[4])?,
            area_code: opt(c[5])?,
            local_number: opt(c[6])?,
            extension: opt(c[7])?,
            unformatted: opt(c[11])?,
        })
    }

    /// The best phone number available: composed from the structured parts when XTN-7 is
    /// present, as `+<country> (<area>) <local> x<extension>` with missing parts (and their
    /// punctuation) left out, e.g. `+1 (555) 1234567 x89`; else XTN-12; else XTN-1.
    pub fn number(&self) -> Option<String> {
        if let Some(local) = &self.local_number {
            let mut out = String::new();
            if let Some(cc) = &self.country_code {
                out.push('+');
                out.push_str(cc.trim_start_matches('+'));
                out.push(' ');
            }
            if let Some(area) = &self.area_code {
                out.push('(');
                out.push_str(area);
                out.push_str(") ");
            }
            out.push_str(local);
            if let Some(ext) = &self.extension {
                out.push_str(" x");
                out.push_str(ext);
            }
            return Some(out);
        }
        self.unformatted.clone().or_else(|| self.telephone.clone())
    }

    /// An e-mail address rather than a phone: equipment type `Internet` or use code `NET`.
    pub fn is_email(&self) -> bool {
        let is = |v: &Option<String>, code: &str| {
            v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(code))
        };
        is(&self.equipment_type, "Internet") || is(&self.use_code, "NET")
    }
}

/// CWE (v2.6+) and CE (earlier; same first six components): a coded value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cwe {
    pub identifier: Option<String>,
    pub text: Option<String>,
    /// e.g. `LN` (LOINC), `SCT`, `HL70005`.
    pub coding_system: Option<String>,
    pub alternate_identifier: Option<String>,
    pub alternate_text: Option<String>,
    pub alternate_coding_system: Option<String>,
}

impl Cwe {
    /// Reads components when given a field or repetition and sub-components when given a
    /// component (CWE embedded in another composite).
    pub fn from_element(element: &Element<'_>) -> Result<Self, Hl7Error> {
        let [id, text, system, alt_id, alt_text, alt_system] = embedded_parts(element);
        Ok(Cwe {
            identifier: opt_code(id)?,
            text: opt(text)?,
            coding_system: opt_code(system)?,
            alternate_identifier: opt_code(alt_id)?,
            alternate_text: opt(alt_text)?,
            alternate_coding_system: opt_code(alt_system)?,
        })
    }
}

/// For types that are both fields and parts of other types (HD, CWE): a component-level element
/// has no component 2, so its parts are sub-components. A field whose only component holds
/// sub-components is read the same way, which is what such a sender means.
pub fn embedded_reader<'a>(element: &Element<'a>) -> impl Fn(usize) -> Element<'a> + use<'a> {
    let el = *element;
    let embedded = !el.component(2).is_present();
    move |n| {
        if embedded {
            el.subcomponent(n)
        } else {
            el.component(n)
        }
    }
}

/// `embedded_reader`'s parts 1..=N in one pass (N ≥ 2).
pub fn embedded_parts<'a, const N: usize>(element: &Element<'a>) -> [Element<'a>; N] {
    let components = element.components::<N>();
    if components[1].is_present() {
        components
    } else {
        element.subcomponents()
    }
}

/// Decoded text, or `None` when absent, empty or null.
fn value_text<'a>(el: &Element<'a>) -> Result<Option<std::borrow::Cow<'a, str>>, Hl7Error> {
    if !el.is_present() || el.raw().is_empty() || el.is_null() {
        return Ok(None);
    }
    el.text().map(Some)
}

/// An owned part of a composite (trailing spaces dropped; blank reads as `None`).
fn opt(el: Element<'_>) -> Result<Option<String>, Hl7Error> {
    Ok(value_text(&el)?.and_then(|t| {
        let t = t.trim_end_matches(' ');
        (!t.is_empty()).then(|| t.to_owned())
    }))
}

/// A code or coding-system name: as `opt`, but a control character (only reachable through
/// an escape such as `\X0D\`) is an error located at the element — a code with a carriage
/// return in it would match nothing and break whatever line-based system receives it.
fn opt_code(el: Element<'_>) -> Result<Option<String>, Hl7Error> {
    let v = opt(el)?;
    if let Some(t) = &v
        && t.chars().any(char::is_control)
    {
        return Err(conversion(
            &el,
            t,
            "code",
            "a code cannot contain control characters (decoded from an escape sequence)".into(),
        ));
    }
    Ok(v)
}

fn conversion(el: &Element<'_>, text: &str, target: &'static str, reason: String) -> Hl7Error {
    Hl7Error::new(
        ErrorKind::Conversion {
            // Bounded: the value can be PHI and errors reach logs.
            value: text.chars().take(32).collect(),
            target,
            reason,
        },
        el.offset(),
    )
}

/// Fails on the first non-digit; `base` is where `s` starts in the trimmed value, so the
/// reported position points into what the user sees.
fn check_digits(s: &str, base: usize) -> Result<(), String> {
    match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        // Position, not the character: values can be PHI.
        Some((i, _)) => Err(format!(
            "unexpected non-digit character at position {}",
            base + i
        )),
        None => Ok(()),
    }
}

/// The value of ASCII digits (at most 9, so no overflow).
fn number(s: &str) -> u32 {
    s.bytes().fold(0, |n, b| n * 10 + u32::from(b - b'0'))
}

/// The two digits at `at` checked against `min..=max`; `min` when the value stops before them.
fn part(digits: &str, at: usize, name: &str, min: u32, max: u32) -> Result<u32, String> {
    let Some(s) = digits.get(at..at + 2) else {
        return Ok(min);
    };
    let v = number(s);
    if v < min || v > max {
        // Which part and its range, not its digits: a birth date is PHI.
        return Err(format!("{name} is out of range {min:02}-{max:02}"));
    }
    Ok(v)
}

/// The date in `YYYY[MM[DD[...]]]` digits, each part range-checked.
fn civil_date(digits: &str) -> Result<NaiveDate, String> {
    let year = number(&digits[..4]);
    if year == 0 {
        return Err("year 0000 is out of range 0001-9999".into());
    }
    let month = part(digits, 4, "month", 1, 12)?;
    let last = days_in_month(year, month);
    let day = part(digits, 6, "day", 1, 31).and_then(|d| {
        if d > last {
            Err(format!("day is out of range 01-{last} for its month"))
        } else {
            Ok(d)
        }
    })?;
    NaiveDate::from_ymd_opt(year as i32, month, day)
        .ok_or_else(|| "invalid calendar date".to_string())
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `+HHMM` / `-HHMM`; `at` is the sign's position in the trimmed value.
fn parse_offset(z: &str, at: usize) -> Result<FixedOffset, String> {
    let digits = &z[1..];
    check_digits(digits, at + 1)?;
    if digits.len() != 4 {
        return Err(format!(
            "time zone offset has {} digits; expected 4 (+HHMM or -HHMM)",
            digits.len()
        ));
    }
    let hours = number(&digits[..2]);
    let minutes = number(&digits[2..]);
    if hours > 14 {
        return Err("offset hours are out of range 00-14".into());
    }
    if minutes > 59 {
        return Err("offset minutes are out of range 00-59".into());
    }
    let secs = (hours * 3600 + minutes * 60) as i32;
    let secs = if z.starts_with('-') { -secs } else { secs };
    FixedOffset::east_opt(secs).ok_or_else(|| "invalid time zone offset".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::hl7::{Message, Path};
    use chrono::{Datelike, TimeZone, Timelike};
    use proptest::prelude::*;

    /// From a public HL7 v2.8 sample corpus: dense use of composites, repetitions, sub-components
    /// and offsets.
    const ADT: &str = concat!(
        r"MSH|^~\&|ADTApp|GHHSFacility|EHRApp|GHHRFacility|198908181126+0215|SECURITY|ADT^A01^ADT_A01|MSG00001|P|2.8",
        "\n",
        r"PID|1|1234567^4^M11^test^MR^University Hospital^19241011^19241012|PATID1234^5^M11^test1&2.16.1&HCD^MR^GOOD HEALTH HOSPITAL~123456789^^^USSSA^SS|PATID567^^^test2|EVERYMAN&&&&Aniston^ADAM^A^III^Dr.^MD^D^^^19241012^^^^PF^Addsm~Josh&&&&Bing^^stanley^^^^L^^^^^19241010^19241015|SMITH^Angela^L|198808181126+0215|M|elbert^Son|2106-3^White^HL70005~2028-9^Asian^HL70005|1000&Hospital Lane^Ste. 123^Ann Arbor ^MI^99999^USA^M^^&W^^^20000110&20000120^^^^^^^Near Highway|GL|78788788^^CP^5555^^^1111^^^^^2222^20010110^20020110^^^^18~12121212^^CP|7777^^CP~1111^^TDD",
        "\n",
    );

    fn el<'a>(m: &Message<'a>, path: &str) -> Element<'a> {
        m.get(&Path::parse(path).unwrap())
    }

    /// Every repetition of a field (a path selects one repetition; this takes the whole field).
    fn reps<'a>(m: &Message<'a>, seg: &str, field: usize) -> Vec<Element<'a>> {
        m.segment(seg, 1)
            .unwrap()
            .field(field)
            .repetitions()
            .collect()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    fn hd(ns: Option<&str>, uid: Option<&str>, ty: Option<&str>) -> Hd {
        Hd {
            namespace_id: ns.map(String::from),
            universal_id: uid.map(String::from),
            universal_id_type: ty.map(String::from),
        }
    }

    fn utc() -> Zone {
        Zone::default()
    }

    /// #15 item 16: a code decoded from an escape to a control character is rejected, at its
    /// place; text may carry one.
    #[test]
    fn codes_with_control_characters_are_rejected() {
        let raw: &[u8] = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1||1^^^A^MR||X||19800101|\\X0D\\M|||||||E\\X0A\\NG^Eng\\X0A\\lish\r";
        let m = Message::parse(raw).unwrap();
        let e = Cwe::from_element(&el(&m, "PID-15")).unwrap_err();
        assert!(e.to_string().contains("control characters"), "{e}");
        assert!(raw[e.location.byte_offset..].starts_with(b"E\\X0A"));
        let ok = Cwe::from_element(&el(&m, "PID-2")).unwrap();
        assert_eq!(ok.identifier, None);
    }

    /// #15 item 17: an IANA zone gives each date its own offset (CST in winter, CDT in
    /// summer); the DST hours resolve to the offset before the change; offsets parse too.
    #[test]
    fn iana_zones_follow_daylight_saving_time() {
        let chicago = Zone::parse("America/Chicago").unwrap();
        let micros = |t: &str| Ts::parse(t).unwrap().to_utc_micros(chicago);
        let utc_of = |t: &str| Ts::parse(t).unwrap().to_utc_micros(utc());
        assert_eq!(micros("20260115120000"), utc_of("20260115180000"));
        assert_eq!(micros("20260715120000"), utc_of("20260715170000"));
        // An offset sent with the value wins over the zone.
        assert_eq!(micros("20260715120000+0000"), utc_of("20260715120000"));
        // 2026-03-08 02:30 does not exist in Chicago; 2026-11-01 01:30 happens twice.
        assert_eq!(micros("20260308023000"), utc_of("20260308083000"));
        assert_eq!(micros("20261101013000"), utc_of("20261101063000"));
        assert_eq!(
            Zone::parse("-05:00").unwrap(),
            Zone::Fixed(FixedOffset::west_opt(5 * 3600).unwrap())
        );
        assert_eq!(Zone::parse("+0530").unwrap().to_string(), "+05:30");
        assert!(Zone::parse("UTC").unwrap().is_utc());
        assert!(Zone::parse("Mars/Olympus").is_err());
        assert!(Zone::parse("+2500").is_err());
    }

    #[test]
    fn pid_identifiers() {
        let m = Message::parse(ADT.as_bytes()).unwrap();
        let pid2 = Cx::from_element(&el(&m, "PID-2")).unwrap();
        assert_eq!(pid2.id, s("1234567"));
        assert_eq!(pid2.check_digit, s("4"));
        assert_eq!(pid2.check_digit_scheme, s("M11"));
        assert_eq!(pid2.assigning_authority, hd(Some("test"), None, None));
        assert_eq!(pid2.identifier_type_code, s("MR"));
        assert_eq!(pid2.assigning_facility.name(), Some("University Hospital"));

        let first = Cx::from_element(&el(&m, "PID-3(1)")).unwrap();
        assert_eq!(
            first,
            Cx {
                id: s("PATID1234"),
                check_digit: s("5"),
                check_digit_scheme: s("M11"),
                assigning_authority: hd(Some("test1"), Some("2.16.1"), Some("HCD")),
                identifier_type_code: s("MR"),
                assigning_facility: hd(Some("GOOD HEALTH HOSPITAL"), None, None),
            }
        );
        // A bare field reads its first repetition.
        assert_eq!(Cx::from_element(&el(&m, "PID-3")).unwrap(), first);

        let second = Cx::from_element(&el(&m, "PID-3(2)")).unwrap();
        assert_eq!(second.id, s("123456789"));
        assert_eq!(second.check_digit, None);
        assert_eq!(second.assigning_authority, hd(Some("USSSA"), None, None));
        assert_eq!(second.identifier_type_code, s("SS"));
        assert!(second.assigning_facility.is_empty());

        let all: Vec<_> = reps(&m, "PID", 3)
            .iter()
            .map(|r| Cx::from_element(r).unwrap().id.unwrap())
            .collect();
        assert_eq!(all, ["PATID1234", "123456789"]);

        let pid4 = Cx::from_element(&el(&m, "PID-4")).unwrap();
        assert_eq!(pid4.id, s("PATID567"));
        assert_eq!(pid4.assigning_authority.namespace_id, s("test2"));
    }

    #[test]
    fn pid_names() {
        let m = Message::parse(ADT.as_bytes()).unwrap();
        let name = Xpn::from_element(&el(&m, "PID-5(1)")).unwrap();
        assert_eq!(
            name,
            Xpn {
                family: s("EVERYMAN"),
                given: s("ADAM"),
                middle: s("A"),
                suffix: s("III"),
                prefix: s("Dr."),
                degree: s("MD"),
                name_type_code: s("D"),
            }
        );
        assert_eq!(name.display(), "Dr. ADAM A EVERYMAN III");

        let alias = Xpn::from_element(&el(&m, "PID-5(2)")).unwrap();
        assert_eq!(alias.family, s("Josh"));
        assert_eq!(alias.given, None);
        assert_eq!(alias.middle, s("stanley"));
        assert_eq!(alias.name_type_code, s("L"));
        assert_eq!(alias.display(), "stanley Josh");

        let mother = Xpn::from_element(&el(&m, "PID-6")).unwrap();
        assert_eq!(mother.display(), "Angela L SMITH");
    }

    #[test]
    fn pid_timestamps() {
        let m = Message::parse(ADT.as_bytes()).unwrap();
        let dob = Ts::from_element(&el(&m, "PID-7")).unwrap().unwrap();
        assert_eq!(dob.precision(), Precision::Minute);
        assert_eq!(dob.offset(), FixedOffset::east_opt(2 * 3600 + 15 * 60));
        assert_eq!(dob.date(), NaiveDate::from_ymd_opt(1988, 8, 18).unwrap());
        assert_eq!((dob.datetime().hour(), dob.datetime().minute()), (11, 26));
        // 11:26 at +02:15 is 09:11 UTC; the default offset is ignored when one was sent.
        let west = Zone::Fixed(FixedOffset::west_opt(5 * 3600).unwrap());
        assert_eq!(dob.to_utc_micros(west), 587_898_660_000_000);
        assert_eq!(dob.to_string(), "198808181126+0215");

        let sent = Ts::from_element(&el(&m, "MSH-7")).unwrap().unwrap();
        assert_eq!(sent.to_utc_micros(utc()), 619_434_660_000_000);

        // Absent, empty and null are all "no value".
        assert_eq!(Ts::from_element(&el(&m, "PID-29")).unwrap(), None);
        let m = Message::parse(b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5\rPID|1||||||\"\"||\r").unwrap();
        assert_eq!(Ts::from_element(&el(&m, "PID-6")).unwrap(), None);
        assert_eq!(Ts::from_element(&el(&m, "PID-7")).unwrap(), None);
        assert_eq!(Ts::from_element(&el(&m, "PID-8")).unwrap(), None);
    }

    #[test]
    fn pid_coded_address_and_phones() {
        let m = Message::parse(ADT.as_bytes()).unwrap();
        let races: Vec<Cwe> = reps(&m, "PID", 10)
            .iter()
            .map(|r| Cwe::from_element(r).unwrap())
            .collect();
        assert_eq!(races.len(), 2);
        assert_eq!(races[0].identifier, s("2106-3"));
        assert_eq!(races[0].text, s("White"));
        assert_eq!(races[0].coding_system, s("HL70005"));
        assert_eq!(races[1].identifier, s("2028-9"));
        assert_eq!(races[1].text, s("Asian"));
        assert_eq!(races[1].alternate_identifier, None);

        let addr = Xad::from_element(&el(&m, "PID-11")).unwrap();
        // The corpus puts the house number in SAD.1 and the street name in SAD.2.
        assert_eq!(addr.street, s("1000"));
        assert_eq!(addr.street_name, s("Hospital Lane"));
        assert_eq!(addr.dwelling_number, None);
        assert_eq!(addr.other_designation, s("Ste. 123"));
        assert_eq!(addr.city, s("Ann Arbor"), "trailing blank dropped");
        assert_eq!(addr.state, s("MI"));
        assert_eq!(addr.postal_code, s("99999"));
        assert_eq!(addr.country, s("USA"));
        assert_eq!(addr.address_type, s("M"));
        assert_eq!(addr.other_geographic, None);
        // XAD-9 is `&W`: a CWE with no code, only text.
        assert_eq!(addr.county, None);

        let home: Vec<Xtn> = reps(&m, "PID", 13)
            .iter()
            .map(|r| Xtn::from_element(r).unwrap())
            .collect();
        assert_eq!(
            home[0],
            Xtn {
                telephone: s("78788788"),
                use_code: None,
                equipment_type: s("CP"),
                email: s("5555"),
                country_code: None,
                area_code: None,
                local_number: s("1111"),
                extension: None,
                unformatted: s("2222"),
            }
        );
        assert_eq!(home[0].number(), s("1111"));
        assert!(!home[0].is_email());
        assert_eq!(home[1].number(), s("12121212"));

        let work = Xtn::from_element(&el(&m, "PID-14(2)")).unwrap();
        assert_eq!(work.number(), s("1111"));
        assert_eq!(work.equipment_type, s("TDD"));

        let facility = Hd::from_element(&el(&m, "MSH-4")).unwrap();
        assert_eq!(facility, hd(Some("GHHSFacility"), None, None));
    }

    #[test]
    fn composites_decode_escapes_and_nulls() {
        let m = Message::parse(
            b"MSH|^~\\&|A|GHH^2.16.840.1^ISO|||||ADT^A01|1|P|2.5\r\
PID|1||X1^^^\"\"^MR||O\\T\\BRIEN^\"\"^^^^||||||||^PRN^PH^^1^555^1234567^89~^NET^Internet^jane@example.org~^^^^^^^^^^^5551234|\r\
OBX|1|CE|8867-4^Heart rate^LN^HR^^L|||||N^^HL70078\r",
        )
        .unwrap();
        let msh4 = Hd::from_element(&el(&m, "MSH-4")).unwrap();
        assert_eq!(msh4, hd(Some("GHH"), Some("2.16.840.1"), Some("ISO")));
        let cx = Cx::from_element(&el(&m, "PID-3")).unwrap();
        assert!(cx.assigning_authority.is_empty(), "null is None");
        let name = Xpn::from_element(&el(&m, "PID-5")).unwrap();
        assert_eq!(name.family, s("O&BRIEN"));
        assert_eq!(name.given, None);

        let phones: Vec<Xtn> = reps(&m, "PID", 13)
            .iter()
            .map(|r| Xtn::from_element(r).unwrap())
            .collect();
        assert_eq!(phones[0].number(), s("+1 (555) 1234567 x89"));
        assert!(phones[1].is_email());
        assert_eq!(phones[1].email, s("jane@example.org"));
        assert_eq!(phones[1].number(), None);
        assert_eq!(phones[2].number(), s("5551234"));
        let partial = Xtn {
            local_number: s("1234567"),
            area_code: s("555"),
            ..Xtn::default()
        };
        assert_eq!(partial.number(), s("(555) 1234567"));

        let code = Cwe::from_element(&el(&m, "OBX-3")).unwrap();
        assert_eq!(code.identifier, s("8867-4"));
        assert_eq!(code.text, s("Heart rate"));
        assert_eq!(code.coding_system, s("LN"));
        assert_eq!(code.alternate_identifier, s("HR"));
        assert_eq!(code.alternate_text, None);
        assert_eq!(code.alternate_coding_system, s("L"));
        // CWE embedded in a component reads sub-components.
        let m = Message::parse(
            b"MSH|^~\\&|A||||||ADT^A01|1|P|2.7\rPID|1||||||||||^^^^^^^^X&County X&L\r",
        )
        .unwrap();
        let county = Cwe::from_element(&el(&m, "PID-11.9")).unwrap();
        assert_eq!(county.identifier, s("X"));
        assert_eq!(county.text, s("County X"));
        assert_eq!(county.coding_system, s("L"));
    }

    #[test]
    fn ts_examples() {
        let ts = Ts::parse("20260105143000-0500").unwrap();
        assert_eq!(ts.precision(), Precision::Second);
        assert_eq!(ts.offset(), FixedOffset::west_opt(5 * 3600));
        assert_eq!(ts.to_utc_micros(utc()), 1_767_641_400_000_000);

        let ts = Ts::parse("20210817151943.4+0200").unwrap();
        assert_eq!(ts.precision(), Precision::Fraction(1));
        assert_eq!(ts.datetime().nanosecond(), 400_000_000);
        assert_eq!(ts.to_utc_micros(utc()), 1_629_206_383_400_000);
        assert_eq!(ts.to_string(), "20210817151943.4+0200");

        let ts = Ts::parse("2026").unwrap();
        assert_eq!(ts.precision(), Precision::Year);
        assert_eq!(ts.date(), NaiveDate::from_ymd_opt(2026, 1, 1).unwrap());
        assert_eq!(ts.offset(), None);
        // No offset in the value: the default applies.
        let one_hour = FixedOffset::east_opt(3600).unwrap();
        let plus1 = Zone::Fixed(one_hour);
        assert_eq!(
            ts.to_utc_micros(plus1),
            one_hour
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros()
        );

        let ts = Ts::parse("  202601051430.1234 ").unwrap_err();
        assert!(ts.contains("require seconds"), "{ts}");
        let ts = Ts::parse(" 20260105143059.1234 \t").unwrap();
        assert_eq!(ts.precision(), Precision::Fraction(4));
        assert_eq!(ts.datetime().nanosecond(), 123_400_000);
        assert_eq!(Ts::parse("202602").unwrap().precision(), Precision::Month);
        assert_eq!(
            Ts::parse("2026020323").unwrap().precision(),
            Precision::Hour
        );
        assert_eq!(Ts::parse("20240229").unwrap().date().day(), 29);
        assert_eq!(Ts::parse("20000229").unwrap().date().day(), 29);
        assert_eq!(
            Ts::parse("2026-1400").unwrap().offset(),
            FixedOffset::west_opt(14 * 3600)
        );
    }

    #[test]
    fn ts_errors_name_the_part() {
        let cases = [
            ("", "empty value"),
            ("   ", "empty value"),
            ("20261305", "month is out of range 01-12"),
            ("20260005", "month is out of range 01-12"),
            ("20230229", "day is out of range 01-28 for its month"),
            ("19000229", "day is out of range 01-28 for its month"),
            ("20260431", "day is out of range 01-30 for its month"),
            ("20260100", "day is out of range 01-31"),
            ("2026010524", "hour is out of range 00-23"),
            ("202601052360", "minute is out of range 00-59"),
            ("20260105235960", "second is out of range 00-59"),
            ("0000", "year 0000"),
            ("20260105+1500", "offset hours are out of range 00-14"),
            ("20260105-0160", "offset minutes are out of range 00-59"),
            ("20260105+05", "time zone offset has 2 digits"),
            ("20260105143000.12345", "at most 4"),
            ("20260105143000.", "no digits after the decimal point"),
            ("2026010", "date/time has 7 digits"),
            ("202601051430001", "at most 14"),
            ("2026-01-05", "unexpected non-digit character at position 7"),
            (
                "20260105T1430",
                "unexpected non-digit character at position 8",
            ),
            (
                "20260105143000Z",
                "unexpected non-digit character at position 14",
            ),
            ("2026+01+00", "unexpected non-digit character at position 7"),
            ("２０２６", "unexpected non-digit character at position 0"),
        ];
        for (input, reason) in cases {
            let e = Ts::parse(input).unwrap_err();
            assert!(e.contains(reason), "{input:?}: {e:?} lacks {reason:?}");
            // Reasons reach logs and query tables: never the value's digits (a birth date).
            if input.len() >= 8 && input.is_ascii() {
                assert!(
                    !e.contains(&input[..4]),
                    "{input:?}: {e:?} quotes the value"
                );
            }
        }
    }

    #[test]
    fn ts_from_element_errors_are_located() {
        let input = b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5\rPID|1||||||19801301^D\r";
        let m = Message::parse(input).unwrap();
        let field = el(&m, "PID-7");
        let e = Ts::from_element(&field).unwrap_err();
        assert_eq!(e.location.byte_offset, field.offset());
        assert_eq!(&input[e.location.byte_offset..][..8], b"19801301");
        match &e.kind {
            ErrorKind::Conversion {
                value,
                target,
                reason,
            } => {
                assert_eq!(value, "19801301");
                assert_eq!(target.to_string(), "TS/DTM");
                assert!(reason.contains("month is out of range"), "{reason}");
                // The message shows the value's shape, not the value.
                let shown = e.to_string();
                assert!(shown.contains("a value of 8 digits"), "{shown}");
                assert!(!shown.contains("1980"), "{shown}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dt_examples() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(parse_dt("20240229"), Ok((d(2024, 2, 29), Precision::Day)));
        assert_eq!(parse_dt(" 198808 "), Ok((d(1988, 8, 1), Precision::Month)));
        assert_eq!(parse_dt("1988"), Ok((d(1988, 1, 1), Precision::Year)));
        assert!(
            parse_dt("20230229")
                .unwrap_err()
                .contains("day is out of range")
        );
        assert!(parse_dt("2023022910").unwrap_err().contains("10 digits"));
        assert!(
            parse_dt("20230229-0500")
                .unwrap_err()
                .contains("position 8")
        );
        assert!(parse_dt("").unwrap_err().contains("empty"));
    }

    #[test]
    fn nm_examples() {
        assert_eq!(parse_nm("42"), Ok(42.0));
        assert_eq!(parse_nm(" -7.25 "), Ok(-7.25));
        assert_eq!(parse_nm("+.5"), Ok(0.5));
        assert_eq!(parse_nm("5."), Ok(5.0));
        assert_eq!(parse_nm("007"), Ok(7.0));
        for bad in [
            "", " ", "-", ".", "+.", "1e5", "0x1F", "NaN", "inf", "1.2.3", "--1", "1-", "1 2",
            "1,5",
        ] {
            assert!(parse_nm(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_nm("1e5").unwrap_err().contains("position 1"));
        assert!(
            parse_nm(&"9".repeat(400))
                .unwrap_err()
                .contains("too large")
        );

        assert_eq!(parse_nm_i64("42"), Ok(42));
        assert_eq!(parse_nm_i64("-7"), Ok(-7));
        assert_eq!(parse_nm_i64("+42.000"), Ok(42));
        assert_eq!(parse_nm_i64("42."), Ok(42));
        assert_eq!(parse_nm_i64("-0"), Ok(0));
        assert_eq!(parse_nm_i64("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_nm_i64("0009223372036854775807"), Ok(i64::MAX));
        assert!(
            parse_nm_i64("9223372036854775808")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            parse_nm_i64(&"9".repeat(50))
                .unwrap_err()
                .contains("out of range")
        );
        assert_eq!(
            parse_nm_i64("42.50"),
            Err("not a whole number (it has a fractional part)".into())
        );
        assert!(parse_nm_i64("1e3").is_err());
    }

    /// A DTM's parts, drawn so that every combination is valid.
    #[derive(Debug, Clone)]
    struct Parts {
        year: i32,
        month: u32,
        day: u32,
        hour: u32,
        minute: u32,
        second: u32,
        /// Number of date/time digits (4..=14, even).
        len: usize,
        fraction: Option<(u8, u32)>,
        offset: Option<i32>,
    }

    fn parts() -> impl Strategy<Value = Parts> {
        (
            (
                1i32..=9999,
                1u32..=12,
                0u32..31,
                0u32..24,
                0u32..60,
                0u32..60,
            ),
            2usize..=7,
            prop::option::of((1u8..=4, 0u32..10_000)),
            prop::option::of((any::<bool>(), 0i32..=14, 0i32..60)),
        )
            .prop_map(
                |((year, month, day, hour, minute, second), len, fraction, offset)| {
                    let day = day % days_in_month(year as u32, month) + 1;
                    let len = len * 2;
                    Parts {
                        year,
                        month,
                        day,
                        hour,
                        minute,
                        second,
                        len,
                        // Fractions only follow seconds.
                        fraction: fraction
                            .filter(|_| len == 14)
                            .map(|(n, v)| (n, v % 10u32.pow(u32::from(n)))),
                        offset: offset
                            .map(|(neg, h, m)| (if neg { -1 } else { 1 }) * (h * 3600 + m * 60)),
                    }
                },
            )
    }

    fn format(p: &Parts) -> String {
        let full = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            p.year, p.month, p.day, p.hour, p.minute, p.second
        );
        let mut s = full[..p.len].to_string();
        if let Some((n, v)) = p.fraction {
            s += &format!(".{v:0width$}", width = usize::from(n));
        }
        if let Some(o) = p.offset {
            let a = o.unsigned_abs();
            s += &format!(
                "{}{:02}{:02}",
                if o < 0 { '-' } else { '+' },
                a / 3600,
                a / 60 % 60
            );
        }
        s
    }

    proptest! {
        #[test]
        fn valid_dtm_round_trips(p in parts()) {
            let text = format(&p);
            let ts = Ts::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            let keep = |len: usize, v: u32, default: u32| if p.len >= len { v } else { default };
            let dt = ts.datetime();
            prop_assert_eq!(dt.year(), p.year);
            prop_assert_eq!(dt.month(), keep(6, p.month, 1));
            prop_assert_eq!(dt.day(), keep(8, p.day, 1));
            prop_assert_eq!(dt.hour(), keep(10, p.hour, 0));
            prop_assert_eq!(dt.minute(), keep(12, p.minute, 0));
            prop_assert_eq!(dt.second(), keep(14, p.second, 0));
            let (precision, micros) = match p.fraction {
                Some((n, v)) => (Precision::Fraction(n), v * 10u32.pow(6 - u32::from(n))),
                None => {
                    let levels = [Precision::Year, Precision::Month, Precision::Day,
                                  Precision::Hour, Precision::Minute, Precision::Second];
                    (levels[p.len / 2 - 2], 0)
                }
            };
            prop_assert_eq!(ts.precision(), precision);
            prop_assert_eq!(dt.nanosecond(), micros * 1000);
            prop_assert_eq!(ts.offset().map(|o| o.local_minus_utc()), p.offset);
            prop_assert_eq!(ts.to_string(), text);
            // UTC conversion agrees with chrono's own.
            let off = ts.offset_in(utc());
            let expected = off.from_local_datetime(&dt).single().unwrap().timestamp_micros();
            prop_assert_eq!(ts.to_utc_micros(utc()), expected);
        }

        #[test]
        fn valid_dt_round_trips(p in parts()) {
            let text = format!("{:04}{:02}{:02}", p.year, p.month, p.day);
            let n = p.len.min(8);
            let (date, precision) = parse_dt(&text[..n]).unwrap();
            prop_assert_eq!(date.year(), p.year);
            prop_assert_eq!(date.month(), if n >= 6 { p.month } else { 1 });
            prop_assert_eq!(date.day(), if n == 8 { p.day } else { 1 });
            prop_assert_eq!(precision, [Precision::Year, Precision::Month, Precision::Day][n / 2 - 2]);
        }

        #[test]
        fn nm_round_trips(v in any::<i64>(), frac in prop::option::of(0u32..10_000)) {
            prop_assert_eq!(parse_nm_i64(&v.to_string()), Ok(v));
            prop_assert_eq!(parse_nm_i64(&format!("{v}.000")), Ok(v));
            let text = match frac {
                Some(f) => format!("{v}.{f:04}"),
                None => v.to_string(),
            };
            prop_assert_eq!(parse_nm(&text), Ok(text.parse::<f64>().unwrap()));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = Ts::parse(&s);
            let _ = parse_dt(&s);
            let _ = parse_nm(&s);
            let _ = parse_nm_i64(&s);
        }

        #[test]
        fn near_miss_strings_never_panic(s in "[0-9+. eE-]{0,24}") {
            let _ = Ts::parse(&s);
            let _ = parse_dt(&s);
            let _ = parse_nm(&s);
            let _ = parse_nm_i64(&s);
            // Whatever parses also prints back to something that parses to the same value.
            if let Ok(ts) = Ts::parse(&s) {
                prop_assert_eq!(Ts::parse(&ts.to_string()), Ok(ts));
            }
        }
    }
}
