//! Errors of the HL7v2 engine. Every error is a value that says *where*: message index in the
//! input, segment (id and position), field, and the absolute byte offset in the input.

use std::fmt;

/// Where in the input something went wrong. Fields are optional because errors are found at
/// different depths: a splitter error knows only the byte offset, a path error knows the field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// 0-based index of the message in the input stream.
    pub message_index: Option<usize>,
    /// Segment id (e.g. `PID`) as found in the input (lossily decoded).
    pub segment_id: Option<String>,
    /// 1-based position of the segment in its message.
    pub segment_index: Option<usize>,
    /// 1-based field number as the standard counts it (MSH-1 is the field separator).
    pub field: Option<usize>,
    /// Absolute byte offset in the input.
    pub byte_offset: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::with_capacity(4);
        if let Some(i) = self.message_index {
            parts.push(format!("message {}", i + 1));
        }
        match (&self.segment_id, self.segment_index) {
            (Some(id), Some(i)) => parts.push(format!("segment {id} (#{i})")),
            (Some(id), None) => parts.push(format!("segment {id}")),
            (None, Some(i)) => parts.push(format!("segment #{i}")),
            (None, None) => {}
        }
        if let Some(field) = self.field {
            match &self.segment_id {
                Some(id) => parts.push(format!("field {id}-{field}")),
                None => parts.push(format!("field {field}")),
            }
        }
        parts.push(format!("byte offset {}", self.byte_offset));
        f.write_str(&parts.join(", "))
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("input is empty")]
    Empty,
    #[error("message does not start with an MSH segment (found {found:?})")]
    NotMsh { found: String },
    #[error("MSH segment is truncated: {missing} is missing")]
    TruncatedMsh { missing: &'static str },
    #[error("invalid encoding characters in MSH-1/MSH-2: {reason}")]
    BadEncodingCharacters { reason: String },
    #[error("invalid segment id {found:?} (expected 3 upper-case letters or digits)")]
    InvalidSegmentId { found: String },
    #[error("data outside any message ({len} bytes before the next MSH/batch segment)")]
    OutsideMessage { len: usize },
    #[error("message is {len} bytes, over the limit of {max}")]
    MessageTooLarge { len: usize, max: usize },
    #[error("message has more than {max} segments")]
    TooManySegments { max: usize },
    #[error("field is {len} bytes, over the limit of {max}")]
    FieldTooLarge { len: usize, max: usize },
    #[error("invalid {charset} text: {detail}")]
    InvalidText {
        charset: &'static str,
        detail: String,
    },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// The value is kept for callers (it is the record's own data), but the message shows only
    /// its shape — its kind of characters and length — because errors reach logs, DLQ headers
    /// and query tables, where patient data must not.
    #[error("cannot convert {} to {target}: {reason}", shape(value))]
    Conversion {
        value: String,
        target: &'static str,
        reason: String,
    },
}

/// A value described without its content: `8 digits`, `12 characters`, `1 letter`.
pub fn shape(value: &str) -> String {
    let n = value.chars().count();
    let kind = if value.chars().all(|c| c.is_ascii_digit()) {
        "digit"
    } else if value.chars().all(char::is_alphabetic) {
        "letter"
    } else {
        "character"
    };
    format!("a value of {n} {kind}{}", if n == 1 { "" } else { "s" })
}

impl ErrorKind {
    /// The HL7 table 0357 (message error condition) code that best describes this error, used
    /// in ERR-3 of a negative acknowledgement.
    pub fn hl7_error_code(&self) -> (u16, &'static str) {
        match self {
            ErrorKind::InvalidSegmentId { .. } | ErrorKind::OutsideMessage { .. } => {
                (100, "Segment sequence error")
            }
            ErrorKind::TruncatedMsh { .. } | ErrorKind::Empty | ErrorKind::NotMsh { .. } => {
                (101, "Required field missing")
            }
            ErrorKind::InvalidText { .. }
            | ErrorKind::Conversion { .. }
            | ErrorKind::BadEncodingCharacters { .. }
            | ErrorKind::FieldTooLarge { .. } => (102, "Data type error"),
            ErrorKind::MessageTooLarge { .. }
            | ErrorKind::TooManySegments { .. }
            | ErrorKind::InvalidPath { .. } => (207, "Application internal error"),
        }
    }
}

/// An error with its location. Boxed: errors are rare, and a small `Result` keeps the parse
/// hot path lean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Error(Box<Hl7ErrorDetail>);

/// What an `Hl7Error` holds (reached through `Deref`: `error.kind`, `error.location`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7ErrorDetail {
    pub kind: ErrorKind,
    pub location: Location,
}

impl std::ops::Deref for Hl7Error {
    type Target = Hl7ErrorDetail;
    fn deref(&self) -> &Hl7ErrorDetail {
        &self.0
    }
}

impl fmt::Display for Hl7Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at {})", self.0.kind, self.0.location)
    }
}

impl std::error::Error for Hl7Error {}

impl Hl7Error {
    pub fn new(kind: ErrorKind, byte_offset: usize) -> Self {
        Hl7Error(Box::new(Hl7ErrorDetail {
            kind,
            location: Location {
                byte_offset,
                ..Location::default()
            },
        }))
    }

    pub fn with_message_index(mut self, index: usize) -> Self {
        self.0.location.message_index = Some(index);
        self
    }

    pub fn with_segment(mut self, id: &[u8], index: usize) -> Self {
        self.0.location.segment_id = Some(String::from_utf8_lossy(id).into_owned());
        self.0.location.segment_index = Some(index);
        self
    }

    pub fn with_field(mut self, field: usize) -> Self {
        self.0.location.field = Some(field);
        self
    }
}

/// A short, printable excerpt of raw bytes for error messages (never the whole input: errors
/// can end up in logs, so they must not carry long runs of possibly-PHI data).
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(8)];
    let mut s: String = cut
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '\u{FFFD}'
            }
        })
        .collect();
    if bytes.len() > cut.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_display_names_everything_known() {
        let e = Hl7Error::new(
            ErrorKind::InvalidSegmentId {
                found: "P1D".into(),
            },
            120,
        )
        .with_message_index(2)
        .with_segment(b"P1D", 4)
        .with_field(3);
        assert_eq!(
            e.to_string(),
            "invalid segment id \"P1D\" (expected 3 upper-case letters or digits) \
             (at message 3, segment P1D (#4), field P1D-3, byte offset 120)"
        );
    }

    #[test]
    fn excerpt_is_short_and_printable() {
        assert_eq!(excerpt(b"\x00\x01AB"), "\u{FFFD}\u{FFFD}AB");
        assert_eq!(excerpt(b"0123456789"), "01234567…");
    }
}
