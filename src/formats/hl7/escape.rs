//! HL7 escape sequences (v2.x chapter 2.7).
//!
//! Values are stored raw and decoded on access: most fields have no escape character, so the
//! common path returns the input slice untouched (zero-copy).

use std::borrow::Cow;

use super::encoding::Delimiters;

/// Decodes escape sequences in `raw`:
/// `\F\ \S\ \T\ \R\ \E\` (delimiters), `\P\` (truncation, v2.7+), `\Xhh..\` (hex bytes) and
/// `\.br\` (line break, decoded as `\n`). Every other sequence (`\H\`, `\N\`, `\.sp\`, `\Cxxyy\`,
/// `\Mxxyyzz\`, `\Zxx\`, ...) is passed through untouched, as is an unterminated escape.
pub fn unescape<'a>(raw: &'a [u8], d: &Delimiters) -> Cow<'a, [u8]> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(raw);
    };
    let Some(first) = memchr::memchr(esc, raw) else {
        return Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        let b = raw[i];
        if b != esc {
            // Copy the run up to the next escape character in one go.
            let next = memchr::memchr(esc, &raw[i..]).map_or(raw.len(), |p| i + p);
            out.extend_from_slice(&raw[i..next]);
            i = next;
            continue;
        }
        let Some(close) = memchr::memchr(esc, &raw[i + 1..]).map(|p| i + 1 + p) else {
            // Unterminated: keep the rest literally.
            out.extend_from_slice(&raw[i..]);
            break;
        };
        let body = &raw[i + 1..close];
        if !decode_sequence(body, d, esc, &mut out) {
            out.extend_from_slice(&raw[i..=close]);
        }
        i = close + 1;
    }
    Cow::Owned(out)
}

/// Appends the decoding of one escape body to `out`; returns false if the sequence is not one
/// we decode (the caller then keeps it verbatim).
fn decode_sequence(body: &[u8], d: &Delimiters, esc: u8, out: &mut Vec<u8>) -> bool {
    match body {
        b"F" => out.push(d.field),
        b"S" => out.push(d.component),
        b"R" => out.push(d.repetition),
        b"E" => out.push(esc),
        b"T" => match d.subcomponent {
            Some(s) => out.push(s),
            None => return false,
        },
        b"P" => match d.truncation {
            Some(t) => out.push(t),
            None => return false,
        },
        b".br" => out.push(b'\n'),
        [b'X', hex @ ..] if !hex.is_empty() && hex.len() % 2 == 0 => {
            let start = out.len();
            for pair in hex.chunks_exact(2) {
                match (hex_val(pair[0]), hex_val(pair[1])) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => {
                        out.truncate(start);
                        return false;
                    }
                }
            }
        }
        _ => return false,
    }
    true
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Escapes `text` so that it can be placed in a field, component or sub-component: every
/// delimiter becomes its escape sequence; CR and LF become `\X0D\`/`\X0A\` so that a value can
/// never end a segment, and the MLLP frame bytes VT/FS become `\X0B\`/`\X1C\`. `unescape(escape(s)) == s` for every `s`.
pub fn escape<'a>(text: &'a [u8], d: &Delimiters) -> Cow<'a, [u8]> {
    let needs = |b: u8| {
        d.is_structural(b)
            || Some(b) == d.escape
            || Some(b) == d.truncation
            || matches!(b, b'\r' | b'\n' | 0x0B | 0x1C)
    };
    if !text.iter().any(|&b| needs(b)) {
        return Cow::Borrowed(text);
    }
    let Some(esc) = d.escape else {
        // Without an escape character delimiters cannot be represented; drop them rather than
        // corrupt the structure.
        return Cow::Owned(text.iter().copied().filter(|&b| !needs(b)).collect());
    };
    let mut out = Vec::with_capacity(text.len() + 8);
    for &b in text {
        let seq: &[u8] = if b == d.field {
            b"F"
        } else if b == d.component {
            b"S"
        } else if b == d.repetition {
            b"R"
        } else if b == esc {
            b"E"
        } else if Some(b) == d.subcomponent {
            b"T"
        } else if Some(b) == d.truncation {
            b"P"
        } else if b == b'\r' {
            b"X0D"
        } else if b == b'\n' {
            b"X0A"
        } else if b == 0x0B {
            b"X0B"
        } else if b == 0x1C {
            b"X1C"
        } else {
            out.push(b);
            continue;
        };
        out.push(esc);
        out.extend_from_slice(seq);
        out.push(esc);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn un(s: &str) -> String {
        String::from_utf8(unescape(s.as_bytes(), &Delimiters::default()).into_owned()).unwrap()
    }

    #[test]
    fn decodes_standard_sequences() {
        assert_eq!(un(r"A\F\B\S\C\T\D\R\E\E\F"), r"A|B^C&D~E\F");
        assert_eq!(un(r"line1\.br\line2"), "line1\nline2");
        assert_eq!(un(r"\X41424344\"), "ABCD");
        assert_eq!(un(r"caf\XC3A9\"), "café");
    }

    #[test]
    fn passes_unknown_and_malformed_sequences_through() {
        assert_eq!(un(r"\H\bold\N\"), r"\H\bold\N\");
        assert_eq!(un(r"\.sp2\x"), r"\.sp2\x");
        assert_eq!(un(r"\X4\"), r"\X4\");
        assert_eq!(un(r"\XZZ\"), r"\XZZ\");
        assert_eq!(un(r"tail\F"), r"tail\F");
        assert_eq!(un(r"\P\"), r"\P\", "no truncation character declared");
    }

    #[test]
    fn borrows_when_nothing_to_decode() {
        assert!(matches!(
            unescape(b"plain", &Delimiters::default()),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn custom_delimiters_and_truncation() {
        let d = Delimiters::from_msh(b'#', b"$*!@%", 4).unwrap();
        assert_eq!(&*unescape(b"a!F!b!S!c!P!", &d), b"a#b$c%");
        assert_eq!(&*escape(b"a#b$c%!", &d), b"a!F!b!S!c!P!!E!");
    }

    #[test]
    fn escape_round_trips() {
        let d = Delimiters::default();
        let s = b"x|y^z~w\\v&u\r\nend";
        let e = escape(s, &d);
        assert!(!e.iter().any(|&b| b == b'|' || b == b'\r' || b == b'\n'));
        assert_eq!(&*unescape(&e, &d), s);
    }
}
