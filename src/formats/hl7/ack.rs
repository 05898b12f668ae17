//! Acknowledgements: original mode (AA/AE/AR) and enhanced mode commit acks (CA/CE/CR).
//!
//! The ACK answers in the original's own dialect: same encoding characters, version, processing
//! id and character set; sender and receiver swapped; MSA-2 echoes MSH-10. Negative acks carry
//! an ERR segment with the error location and the HL7 table 0357 code, laid out as the
//! original's version defines ERR (ERR-1 ELD before v2.5, ERR-2/3/4 from v2.5 on).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::builder::MessageBuilder;
use super::encoding::Delimiters;
use super::error::Hl7Error;
use super::message::{Message, skip_line_padding};

/// MSA-1 acknowledgement code (HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
    /// Commit accept (enhanced mode).
    CA,
    /// Commit error (enhanced mode).
    CE,
    /// Commit reject (enhanced mode).
    CR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// Whether this code reports a problem (and so gets an ERR segment).
    pub fn is_negative(self) -> bool {
        !matches!(self, AckCode::AA | AckCode::CA)
    }
}

impl FromStr for AckCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "AA" => AckCode::AA,
            "AE" => AckCode::AE,
            "AR" => AckCode::AR,
            "CA" => AckCode::CA,
            "CE" => AckCode::CE,
            "CR" => AckCode::CR,
            _ => {
                return Err(format!(
                    "unknown acknowledgement code {s:?} (AA, AE, AR, CA, CE, CR)"
                ));
            }
        })
    }
}

/// One error reported in an ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// Segment id, e.g. `PID`.
    pub segment: Option<String>,
    /// Which occurrence of that segment (1-based).
    pub sequence: Option<usize>,
    pub field: Option<usize>,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
    /// HL7 table 0357 code, e.g. 207.
    pub code: u16,
    pub code_text: String,
    /// HL7 table 0516: E (error), W (warning), I (information), F (fatal).
    pub severity: char,
    /// Human-readable diagnostics (ERR-8 user message).
    pub message: Option<String>,
}

impl AckError {
    /// An error with no location: HL7 table 0357 code 207, application internal error.
    pub fn internal(message: Option<String>) -> Self {
        AckError {
            segment: None,
            sequence: None,
            field: None,
            repetition: None,
            component: None,
            subcomponent: None,
            code: 207,
            code_text: "Application internal error".into(),
            severity: 'E',
            message,
        }
    }

    /// Describes a parse error; `message`, when given, resolves which occurrence of the segment
    /// the error is in.
    pub fn from_error(error: &Hl7Error, message: Option<&Message<'_>>) -> Self {
        let (code, text) = error.kind.hl7_error_code();
        let loc = &error.location;
        let sequence = match (message, &loc.segment_id, loc.segment_index) {
            (Some(m), Some(id), Some(pos)) => Some(
                m.segments()
                    .take(pos)
                    .filter(|s| s.id() == id.as_str())
                    .count(),
            ),
            (_, _, pos) => pos,
        };
        AckError {
            segment: loc.segment_id.clone(),
            sequence,
            field: loc.field,
            repetition: None,
            component: None,
            subcomponent: None,
            code,
            code_text: text.to_string(),
            severity: 'E',
            message: Some(error.kind.to_string()),
        }
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct AckOptions {
    pub code: AckCode,
    /// MSA-3 text message.
    pub text: Option<String>,
    pub errors: Vec<AckError>,
    /// MSH-10 of the ACK itself.
    pub control_id: String,
    /// MSH-7 of the ACK (HL7 DTM).
    pub timestamp: String,
}

static ACK_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl AckOptions {
    /// A fresh control id and the current UTC time. The id is 20 digits — epoch milliseconds
    /// and a process-wide sequence — because MSH-10 is ST(20) in v2.1–v2.6 and receivers
    /// truncate or reject longer ids; digits only, as some receivers expect numbers.
    pub fn new(code: AckCode) -> Self {
        let now = chrono::Utc::now();
        let n = ACK_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        AckOptions {
            code,
            text: None,
            errors: Vec::new(),
            control_id: format!(
                "{:013}{:07}",
                now.timestamp_millis().rem_euclid(10_i64.pow(13)),
                n % 10_000_000
            ),
            timestamp: now.format("%Y%m%d%H%M%S%.3f+0000").to_string(),
        }
    }

    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    pub fn error(mut self, error: AckError) -> Self {
        self.errors.push(error);
        self
    }
}

/// The parts of an original header an ACK needs, as raw (still escaped) bytes.
struct Header<'a> {
    delimiters: Delimiters,
    fields: [&'a [u8]; 19],
}

impl<'a> Header<'a> {
    fn from_message(m: &Message<'a>) -> Self {
        let msh = m
            .segments()
            .next()
            .expect("a parsed message starts with MSH");
        let mut fields: [&'a [u8]; 19] = [&[]; 19];
        for (n, f) in fields.iter_mut().enumerate().skip(3) {
            *f = msh.field(n).raw();
        }
        Header {
            delimiters: *m.delimiters(),
            fields,
        }
    }

    /// Reads what it can from bytes that failed to parse, so even garbage gets a proper AR:
    /// the original's header fields when its delimiters are valid, else at least its control
    /// id (MSA-2) when that is plain text.
    fn best_effort(raw: &'a [u8]) -> Self {
        let mut fields: [&'a [u8]; 19] = [&[]; 19];
        // Leading blank lines, a BOM and MLLP frame bytes are not the message.
        let mut start = 0;
        loop {
            let skip = skip_line_padding(&raw[start..]);
            start += skip;
            match raw.get(start) {
                Some(b'\r' | b'\n') => start += 1,
                _ if skip > 0 => {}
                _ => break,
            }
        }
        let raw = &raw[start..];
        let line_end = memchr::memchr2(b'\r', b'\n', raw).unwrap_or(raw.len());
        let line = &raw[..line_end];
        let mut delimiters = Delimiters::default();
        if line.starts_with(b"MSH") && line.len() > 4 {
            let sep = line[3];
            let enc_end = memchr::memchr(sep, &line[4..]).map_or(line.len(), |p| 4 + p);
            let valid = Delimiters::from_msh(sep, &line[4..enc_end], 0);
            if let Ok(d) = valid {
                delimiters = d;
            }
            // Piece i of the line is field i + 1 (MSH-1 is the separator itself).
            for (i, f) in line.split(|&b| b == sep).enumerate().skip(2) {
                let Some(slot) = fields.get_mut(i + 1) else {
                    break;
                };
                if valid.is_ok() {
                    *slot = f;
                } else if matches!(i + 1, 10 | 12) && is_plain(f) {
                    // Control id and version, written into an ACK in the default delimiters:
                    // only when their bytes cannot break its structure.
                    *slot = f;
                }
            }
        }
        Header { delimiters, fields }
    }

    fn component(&self, field: usize, n: usize) -> &'a [u8] {
        self.fields[field]
            .split(|&b| b == self.delimiters.component)
            .nth(n - 1)
            .unwrap_or(&[])
    }
}

/// Builds the acknowledgement for a parsed message.
pub fn build_ack(original: &Message<'_>, options: &AckOptions) -> Vec<u8> {
    write_ack(&Header::from_message(original), options)
}

/// Builds a negative acknowledgement for bytes that did not parse (best effort on the header).
pub fn build_nack_for_unparsed(raw: &[u8], error: &Hl7Error, options: &AckOptions) -> Vec<u8> {
    let mut options = options.clone();
    if options.errors.is_empty() {
        options.errors.push(AckError::from_error(error, None));
    }
    write_ack(&Header::best_effort(raw), &options)
}

fn version_at_least(version: &[u8], major: u32, minor: u32, patch: u32) -> bool {
    let parts: Vec<u32> = std::str::from_utf8(version)
        .unwrap_or("")
        .split('.')
        .map(|p| p.trim().parse().unwrap_or(0))
        .collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or(0);
    (get(0), get(1), get(2)) >= (major, minor, patch)
}

/// Printable ASCII without the default delimiters.
fn is_plain(v: &[u8]) -> bool {
    v.len() <= 199
        && v.iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'|' | b'^' | b'~' | b'\\' | b'&'))
}

/// The version a NACK answers in when the original's MSH-12 cannot be read.
pub const DEFAULT_ACK_VERSION: &str = "2.5.1";

fn write_ack(h: &Header<'_>, o: &AckOptions) -> Vec<u8> {
    let d = h.delimiters;
    let version = h.component(12, 1);
    let known_version = !version.is_empty();
    // MSH-12 is required: answer in the original's version, else in the one the ERR layout
    // below follows for an unknown version.
    let msh12: &[u8] = if known_version {
        h.fields[12]
    } else {
        DEFAULT_ACK_VERSION.as_bytes()
    };
    let mut b = MessageBuilder::new(d);
    let msh = b.segment("MSH");
    msh.set_raw(3, h.fields[5])
        .set_raw(4, h.fields[6])
        .set_raw(5, h.fields[3])
        .set_raw(6, h.fields[4])
        .set(7, o.timestamp.clone());
    let trigger = h.component(9, 2);
    let mut msg_type = b"ACK".to_vec();
    // MSH-9.2 exists from v2.3, MSH-9.3 (message structure) from v2.3.1.
    if !trigger.is_empty() && (!known_version || version_at_least(version, 2, 3, 0)) {
        msg_type.push(d.component);
        msg_type.extend_from_slice(trigger);
        if !known_version || version_at_least(version, 2, 3, 1) {
            msg_type.push(d.component);
            msg_type.extend_from_slice(b"ACK");
        }
    }
    msh.set_raw(9, &msg_type)
        .set(10, o.control_id.clone())
        .set_raw(
            11,
            if h.fields[11].is_empty() {
                b"P"
            } else {
                h.fields[11]
            },
        )
        .set_raw(12, msh12);
    if !h.fields[18].is_empty() {
        msh.set_raw(18, h.fields[18]);
    }
    let msa = b.segment("MSA");
    msa.set(1, o.code.as_str()).set_raw(2, h.fields[10]);
    if let Some(text) = &o.text {
        msa.set(3, text.clone());
    }
    // Errors on a negative ACK; warnings (severity W) may accompany an AA too.
    if !o.errors.is_empty() {
        let modern = !known_version || version_at_least(version, 2, 5, 0);
        let num = |v: Option<usize>| v.map(|n| n.to_string()).unwrap_or_default();
        for e in &o.errors {
            let err = b.segment("ERR");
            if modern {
                err.set_tree(
                    2,
                    vec![vec![
                        vec![e.segment.clone().unwrap_or_default()],
                        vec![num(e.sequence)],
                        vec![num(e.field)],
                        vec![num(e.repetition)],
                        vec![num(e.component)],
                        vec![num(e.subcomponent)],
                    ]],
                )
                .set_components(
                    3,
                    &[e.code.to_string(), e.code_text.clone(), "HL70357".into()],
                )
                .set(4, e.severity.to_string());
                if let Some(m) = &e.message {
                    err.set(8, m.clone());
                }
            } else {
                // ERR-1 (ELD): segment id ^ sequence ^ field position ^ code (CE in sub-components).
                err.set_tree(
                    1,
                    vec![vec![
                        vec![e.segment.clone().unwrap_or_default()],
                        vec![num(e.sequence)],
                        vec![num(e.field)],
                        vec![e.code.to_string(), e.code_text.clone(), "HL70357".into()],
                    ]],
                );
            }
        }
    }
    b.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::hl7::{ErrorKind, Path};

    const ORIG: &[u8] = b"MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20260105143000||ADT^A01^ADT_A01|CTRL42|P|2.5.1|||AL|NE||UNICODE UTF-8\rPID|1||123\r";

    fn opts(code: AckCode) -> AckOptions {
        AckOptions {
            code,
            text: None,
            errors: vec![],
            control_id: "ACK1".into(),
            timestamp: "20260105143001".into(),
        }
    }

    #[test]
    fn positive_ack_swaps_parties_and_echoes_control_id() {
        let m = Message::parse(ORIG).unwrap();
        let ack = build_ack(&m, &opts(AckCode::AA));
        assert_eq!(
            std::str::from_utf8(&ack).unwrap(),
            "MSH|^~\\&|RECVAPP|RECVFAC|SENDAPP|SENDFAC|20260105143001||ACK^A01^ACK|ACK1|P|2.5.1||||||UNICODE UTF-8\rMSA|AA|CTRL42\r"
        );
    }

    #[test]
    fn negative_ack_has_err_with_location_and_code() {
        let m = Message::parse(ORIG).unwrap();
        let e = Hl7Error::new(
            ErrorKind::Conversion {
                value: "x".into(),
                target: "date",
                reason: "bad".into(),
            },
            0,
        )
        .with_segment(b"PID", 2)
        .with_field(7);
        let ack = build_ack(
            &m,
            &opts(AckCode::AE)
                .text("bad birth date")
                .error(AckError::from_error(&e, Some(&m))),
        );
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.query("MSA-1").unwrap().as_deref(), Some("AE"));
        assert_eq!(a.query("MSA-3").unwrap().as_deref(), Some("bad birth date"));
        assert_eq!(a.query("ERR-2.1").unwrap().as_deref(), Some("PID"));
        assert_eq!(a.query("ERR-2.2").unwrap().as_deref(), Some("1"));
        assert_eq!(a.query("ERR-2.3").unwrap().as_deref(), Some("7"));
        assert_eq!(a.query("ERR-3.1").unwrap().as_deref(), Some("102"));
        assert_eq!(a.query("ERR-3.3").unwrap().as_deref(), Some("HL70357"));
        assert_eq!(a.query("ERR-4").unwrap().as_deref(), Some("E"));
    }

    #[test]
    fn follows_the_originals_delimiters_and_old_versions() {
        let orig = b"MSH#$*!@#SEND#F#RECV#G#2001##ADT$A04#C1#P#2.3\r";
        let m = Message::parse(orig).unwrap();
        let e = Hl7Error::new(ErrorKind::TruncatedMsh { missing: "x" }, 0).with_segment(b"MSH", 1);
        let ack = build_ack(
            &m,
            &opts(AckCode::AR).error(AckError::from_error(&e, Some(&m))),
        );
        let s = std::str::from_utf8(&ack).unwrap();
        assert!(
            s.starts_with("MSH#$*!@#RECV#G#SEND#F#20260105143001##ACK$A04#ACK1#P#2.3\r"),
            "{s}"
        );
        let a = Message::parse(&ack).unwrap();
        // v2.3: ERR-1 is an ELD with the code in sub-components.
        assert_eq!(
            a.get(&Path::parse("ERR-1.4.1").unwrap()).text().unwrap(),
            "101"
        );
        assert_eq!(a.query("ERR-1.1").unwrap().as_deref(), Some("MSH"));
    }

    #[test]
    fn nack_for_garbage_still_parses() {
        let e = Hl7Error::new(ErrorKind::NotMsh { found: "xx".into() }, 0);
        let ack = build_nack_for_unparsed(b"\x00\x01garbage", &e, &opts(AckCode::AR));
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.query("MSA-1").unwrap().as_deref(), Some("AR"));
        assert_eq!(a.query("ERR-3.1").unwrap().as_deref(), Some("101"));
        assert_eq!(a.message_type(), "ACK");
    }

    #[test]
    fn nack_for_a_long_header_that_failed_later() {
        // Found by the fuzzer: an MSH with more than 18 fields on the best-effort path.
        let raw = b"MSH|^~\\&|A|B|C|D|E||ADT^A01|X1|P|2.5|13|14|15|16|17|18|19|20|21\rP1d|x\r";
        let e = Hl7Error::new(
            ErrorKind::InvalidSegmentId {
                found: "P1d".into(),
            },
            0,
        );
        let ack = build_nack_for_unparsed(raw, &e, &opts(AckCode::AR));
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.query("MSA-2").unwrap().as_deref(), Some("X1"));
        assert_eq!(a.query("MSH-18").unwrap().as_deref(), Some("18"));
    }

    /// #15 item 14: a generated control id fits MSH-10 (ST 20 in v2.1–2.6); a NACK for
    /// unparseable bytes names a version and echoes the control id it could read; a missing
    /// MSH-9 is located at field 9.
    #[test]
    fn nack_fields_are_complete() {
        let a = AckOptions::new(AckCode::AR);
        let b = AckOptions::new(AckCode::AR);
        assert_eq!(a.control_id.len(), 20, "{}", a.control_id);
        assert!(a.control_id.bytes().all(|c| c.is_ascii_digit()));
        assert_ne!(a.control_id, b.control_id);

        // Garbage: no header to read, but MSH-12 still names the version answered in.
        let e = Hl7Error::new(ErrorKind::NotMsh { found: "xx".into() }, 0);
        let ack = build_nack_for_unparsed(b"garbage", &e, &opts(AckCode::AR));
        let m = Message::parse(&ack).unwrap();
        assert_eq!(m.query("MSH-12").unwrap().as_deref(), Some("2.5.1"));

        // Bad encoding characters: the delimiters are unusable, the control id is not.
        let raw = b"\x0b\r\nMSH|^|A|B|C|D|20260101||ADT^A01|CTL77|P|2.3\rPID|1\r";
        let parse = Message::parse(raw).unwrap_err();
        let ack = build_nack_for_unparsed(raw, &parse, &opts(AckCode::AR));
        let m = Message::parse(&ack).unwrap();
        assert_eq!(m.query("MSA-2").unwrap().as_deref(), Some("CTL77"));
        assert_eq!(m.query("MSH-12").unwrap().as_deref(), Some("2.3"));

        // MSH-9 missing: ERR-2 names the field.
        let raw = b"MSH|^~\\&|A|B|C|D|20260101|||CTL78|P|2.5\rPID|1\r";
        let parse = Message::parse(raw).unwrap_err();
        let ack = build_nack_for_unparsed(raw, &parse, &opts(AckCode::AR));
        let m = Message::parse(&ack).unwrap();
        assert_eq!(m.query("MSA-2").unwrap().as_deref(), Some("CTL78"));
        assert_eq!(m.query("MSH-12").unwrap().as_deref(), Some("2.5"));
        assert_eq!(m.query("ERR-2.1").unwrap().as_deref(), Some("MSH"));
        assert_eq!(m.query("ERR-2.3").unwrap().as_deref(), Some("9"));
    }

    #[test]
    fn commit_acks() {
        let m = Message::parse(ORIG).unwrap();
        let a = build_ack(&m, &opts(AckCode::CA));
        assert!(
            Message::parse(&a)
                .unwrap()
                .query("MSA-1")
                .unwrap()
                .as_deref()
                == Some("CA")
        );
        assert!("ce".parse::<AckCode>().unwrap().is_negative());
        assert!("XX".parse::<AckCode>().is_err());
    }
}
