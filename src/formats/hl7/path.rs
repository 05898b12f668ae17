//! Paths into a message: `PID-3`, `PID-5.1`, `PID-3(2).1`, `PID-5.1.1`, `OBX(3)-5`, `MSH-9.2`.
//!
//! Grammar (all indexes 1-based, as the standard counts them):
//! ```text
//! path     = segment [ "(" sel ")" ] ( "-" | "." ) field [ "(" sel ")" ] [ "." comp [ "." sub ] ]
//! segment  = 3 upper-case letters or digits
//! sel      = number | "*"
//! ```
//! `[n]` may be used instead of `(n)`. Without a selector the first segment occurrence and the
//! first repetition are meant; `*` selects all of them (for list columns).

use std::fmt;

use super::error::{ErrorKind, Hl7Error};

/// Which occurrence of a repeating thing a path selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Select {
    /// No selector written: the first one, but a list column may take all.
    Default,
    /// An explicit 1-based index.
    Index(usize),
    /// `*`: every occurrence.
    All,
}

impl Select {
    /// 1-based index for single-value access.
    pub fn first_index(self) -> usize {
        match self {
            Select::Index(i) => i,
            Select::Default | Select::All => 1,
        }
    }
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    pub segment: [u8; 3],
    pub occurrence: Select,
    pub field: usize,
    pub repetition: Select,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, Hl7Error> {
        let err = |reason: &str| {
            Hl7Error::new(
                ErrorKind::InvalidPath {
                    path: text.to_string(),
                    reason: reason.to_string(),
                },
                0,
            )
        };
        let s = text.trim().as_bytes();
        if s.len() < 5 {
            return Err(err("expected SEG-FIELD, e.g. PID-5"));
        }
        let segment: [u8; 3] = [s[0], s[1], s[2]];
        if !segment
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(err("segment id must be 3 upper-case letters or digits"));
        }
        let mut p = Cursor { s, i: 3 };
        let occurrence = p.selector().map_err(|r| err(&r))?;
        match p.next() {
            Some(b'-') | Some(b'.') => {}
            _ => return Err(err("expected '-' after the segment id")),
        }
        let field = p.number().ok_or_else(|| err("expected a field number"))?;
        let repetition = p.selector().map_err(|r| err(&r))?;
        let mut component = None;
        let mut subcomponent = None;
        if p.peek() == Some(b'.') {
            p.i += 1;
            component = Some(
                p.number()
                    .ok_or_else(|| err("expected a component number"))?,
            );
            if p.peek() == Some(b'.') {
                p.i += 1;
                subcomponent = Some(
                    p.number()
                        .ok_or_else(|| err("expected a sub-component number"))?,
                );
            }
        }
        if p.i != s.len() {
            return Err(err(&format!("unexpected text at position {}", p.i + 1)));
        }
        if field == 0 || component == Some(0) || subcomponent == Some(0) {
            return Err(err("indexes are 1-based"));
        }
        if matches!(occurrence, Select::Index(0)) || matches!(repetition, Select::Index(0)) {
            return Err(err("indexes are 1-based"));
        }
        Ok(Path {
            segment,
            occurrence,
            field,
            repetition,
            component,
            subcomponent,
        })
    }

    /// True when the path can yield several values (an explicit `*`, or an unqualified
    /// repetition that a list column may expand).
    pub fn selects_many(&self) -> bool {
        self.occurrence == Select::All || self.repetition == Select::All
    }

    pub fn segment_id(&self) -> &str {
        // Validated as ASCII in `parse`.
        std::str::from_utf8(&self.segment).unwrap_or("???")
    }
}

impl std::str::FromStr for Path {
    type Err = Hl7Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Path::parse(s)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sel = |s: Select| match s {
            Select::Default => String::new(),
            Select::Index(i) => format!("({i})"),
            Select::All => "(*)".to_string(),
        };
        write!(
            f,
            "{}{}-{}{}",
            self.segment_id(),
            sel(self.occurrence),
            self.field,
            sel(self.repetition)
        )?;
        if let Some(c) = self.component {
            write!(f, ".{c}")?;
        }
        if let Some(s) = self.subcomponent {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }
    fn number(&mut self) -> Option<usize> {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        // Digits only, and bounded: a path never needs more than 6 digits.
        if self.i == start || self.i - start > 6 {
            return None;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()
    }
    fn selector(&mut self) -> Result<Select, String> {
        let close = match self.peek() {
            Some(b'(') => b')',
            Some(b'[') => b']',
            _ => return Ok(Select::Default),
        };
        self.i += 1;
        let sel = if self.peek() == Some(b'*') {
            self.i += 1;
            Select::All
        } else {
            Select::Index(
                self.number()
                    .ok_or_else(|| "expected a number or * in the selector".to_string())?,
            )
        };
        if self.next() != Some(close) {
            return Err(format!("expected '{}'", close as char));
        }
        Ok(sel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let p = Path::parse("PID-3(2).1").unwrap();
        assert_eq!(p.segment_id(), "PID");
        assert_eq!(p.field, 3);
        assert_eq!(p.repetition, Select::Index(2));
        assert_eq!(p.component, Some(1));
        let p = Path::parse("OBX(3)-5").unwrap();
        assert_eq!(p.occurrence, Select::Index(3));
        assert_eq!(p.field, 5);
        let p = Path::parse("PID-5.1.1").unwrap();
        assert_eq!((p.component, p.subcomponent), (Some(1), Some(1)));
        let p = Path::parse("OBX[*]-5[*]").unwrap();
        assert!(p.selects_many());
        assert_eq!(Path::parse("PID.5.1").unwrap().to_string(), "PID-5.1");
        assert_eq!(Path::parse("ZP1-2").unwrap().segment_id(), "ZP1");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "PID-3",
            "PID-3(2).1",
            "OBX(3)-5",
            "OBX(*)-5(*).1.2",
            "MSH-9.2",
        ] {
            assert_eq!(Path::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_paths_with_reason() {
        for (s, why) in [
            ("PID", "expected SEG-FIELD"),
            ("pid-3", "upper-case"),
            ("PID-0", "1-based"),
            ("PID-3(0)", "1-based"),
            ("PID-x", "field number"),
            ("PID-3.", "component number"),
            ("PID-3(2", "expected ')'"),
            ("PID-3.1.1.1", "unexpected text"),
            ("PID-99999999", "field number"),
        ] {
            let e = Path::parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
