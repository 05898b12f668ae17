//! Encoding characters (MSH-1/MSH-2) and character sets (MSH-18).
//!
//! HL7 lets every message declare its own delimiters; `|^~\&` is only the customary choice.
//! Everything downstream (splitting, escaping, ACKs) reads them from here, never from constants.

use super::error::{ErrorKind, Hl7Error};

/// The delimiters a message declared in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: u8,
    pub component: u8,
    pub repetition: u8,
    pub escape: Option<u8>,
    pub subcomponent: Option<u8>,
    /// v2.7+ truncation character (5th character of MSH-2).
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: Some(b'\\'),
            subcomponent: Some(b'&'),
            truncation: None,
        }
    }
}

impl Delimiters {
    /// Reads MSH-1 (`field`) and MSH-2 (`encoding`, the raw bytes between the first two field
    /// separators). `offset` is the absolute offset of MSH-2, for error locations.
    pub fn from_msh(field: u8, encoding: &[u8], offset: usize) -> Result<Self, Hl7Error> {
        let bad = |reason: String| {
            Hl7Error::new(ErrorKind::BadEncodingCharacters { reason }, offset)
                .with_segment(b"MSH", 1)
                .with_field(2)
        };
        if !is_valid_delimiter(field) {
            return Err(bad(format!(
                "field separator {:?} must be a printable non-alphanumeric character",
                field as char
            )));
        }
        if encoding.len() < 2 {
            return Err(bad(format!(
                "MSH-2 has {} character(s); component and repetition separators are required",
                encoding.len()
            )));
        }
        if encoding.len() > 5 {
            return Err(bad(format!(
                "MSH-2 has {} characters; at most 5 are defined",
                encoding.len()
            )));
        }
        for (i, &c) in encoding.iter().enumerate() {
            if !is_valid_delimiter(c) {
                return Err(bad(format!(
                    "encoding character {} ({:?}) must be a printable non-alphanumeric character",
                    i + 1,
                    c as char
                )));
            }
            if c == field {
                return Err(bad(format!(
                    "encoding character {} repeats the field separator {:?}",
                    i + 1,
                    field as char
                )));
            }
            if encoding[..i].contains(&c) {
                return Err(bad(format!(
                    "encoding character {:?} is declared twice",
                    c as char
                )));
            }
        }
        Ok(Delimiters {
            field,
            component: encoding[0],
            repetition: encoding[1],
            escape: encoding.get(2).copied(),
            subcomponent: encoding.get(3).copied(),
            truncation: encoding.get(4).copied(),
        })
    }

    /// MSH-2 as it should be written back (e.g. in an ACK).
    pub fn encoding_characters(&self) -> Vec<u8> {
        let mut out = vec![self.component, self.repetition];
        // Positions matter: a later character can only be written if the earlier ones exist.
        for c in [self.escape, self.subcomponent, self.truncation] {
            match c {
                Some(c) => out.push(c),
                None => break,
            }
        }
        out
    }

    /// Whether `b` is one of the structural delimiters (not escape/truncation).
    #[inline]
    pub fn is_structural(&self, b: u8) -> bool {
        b == self.field
            || b == self.component
            || b == self.repetition
            || Some(b) == self.subcomponent
    }
}

fn is_valid_delimiter(c: u8) -> bool {
    c.is_ascii_graphic() && !c.is_ascii_alphanumeric()
}

/// Character set declared in MSH-18. Unknown or absent sets are read as UTF-8 (a superset of
/// ASCII); invalid bytes then give a located error instead of silent mojibake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Charset {
    #[default]
    Utf8,
    /// ISO 8859-1, common in European feeds: every byte maps to one code point.
    Latin1,
}

impl Charset {
    /// Maps an MSH-18 value (HL7 table 0211) to a decoder.
    pub fn from_msh18(value: &[u8]) -> Charset {
        match value {
            b"8859/1" | b"8859/15" => Charset::Latin1,
            _ => Charset::Utf8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Latin1 => "ISO-8859-1",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_customary_and_custom_delimiters() {
        let d = Delimiters::from_msh(b'|', b"^~\\&", 4).unwrap();
        assert_eq!(d, Delimiters::default());
        let d = Delimiters::from_msh(b'#', b"$*!@%", 4).unwrap();
        assert_eq!(
            (
                d.field,
                d.component,
                d.repetition,
                d.escape,
                d.subcomponent,
                d.truncation
            ),
            (b'#', b'$', b'*', Some(b'!'), Some(b'@'), Some(b'%'))
        );
        assert_eq!(d.encoding_characters(), b"$*!@%");
    }

    #[test]
    fn rejects_wrong_separators_with_location() {
        let e = Delimiters::from_msh(b'|', b"^^\\&", 4).unwrap_err();
        assert!(e.to_string().contains("declared twice"), "{e}");
        assert_eq!(e.location.field, Some(2));
        assert_eq!(e.location.byte_offset, 4);
        assert!(Delimiters::from_msh(b'A', b"^~\\&", 4).is_err());
        assert!(Delimiters::from_msh(b'|', b"^", 4).is_err());
        assert!(Delimiters::from_msh(b'|', b"^~\\&#$", 4).is_err());
        assert!(Delimiters::from_msh(b'|', b"^|\\&", 4).is_err());
    }
}
