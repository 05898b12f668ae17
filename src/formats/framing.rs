//! Record framing: how a byte stream (a file, stdin, a test input) is cut into records.
//! Shared by the file source, `plexus test`'s memory source and the DLQ tools.

use crate::formats::hl7::Splitter;

/// Record framing of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Hl7,
    Ndjson,
    Csv,
    /// Confluent-framed Avro (Kafka messages only).
    Avro,
}

impl SourceFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "hl7" => Ok(SourceFormat::Hl7),
            "ndjson" | "json" => Ok(SourceFormat::Ndjson),
            "csv" => Ok(SourceFormat::Csv),
            "avro" => Ok(SourceFormat::Avro),
            other => Err(format!("unknown format {other:?} (hl7, ndjson, csv, avro)")),
        }
    }
}

/// Record spans `[start, end)` of `data` in the given format.
pub fn frame(
    data: &[u8],
    format: SourceFormat,
    name: &str,
    warnings: &mut Vec<String>,
) -> Vec<(usize, usize)> {
    let mut framer = Framer::new(data, format);
    let spans = std::iter::from_fn(|| framer.next_span()).collect();
    warnings.extend(framer.diagnostics(name));
    spans
}

/// Cuts records out of `data` one at a time, front to back: a source holds only the records
/// of the batch it is building, whatever the size of the input (see `frame` for all at once).
pub enum Framer<'a> {
    Hl7(Box<Splitter<'a>>),
    /// NDJSON: one record per non-blank line.
    Lines {
        data: &'a [u8],
        pos: usize,
    },
    /// CSV: records end at a newline outside double quotes; the first one (the header) is
    /// skipped.
    Csv {
        data: &'a [u8],
        pos: usize,
        header: bool,
    },
    /// The whole input is one record (Avro).
    Whole {
        len: usize,
        done: bool,
    },
}

impl<'a> Framer<'a> {
    pub fn new(data: &'a [u8], format: SourceFormat) -> Self {
        match format {
            // Boundaries only: the parse stage parses each message, once.
            SourceFormat::Hl7 => Framer::Hl7(Box::new(Splitter::boundaries(data))),
            SourceFormat::Ndjson => Framer::Lines { data, pos: 0 },
            SourceFormat::Csv => Framer::Csv {
                data,
                pos: 0,
                header: true,
            },
            // One Avro record per input (Kafka messages; `plexus test` inputs).
            SourceFormat::Avro => Framer::Whole {
                len: data.len(),
                done: false,
            },
        }
    }

    /// The next record's span, or None at the end of the input.
    pub fn next_span(&mut self) -> Option<(usize, usize)> {
        match self {
            Framer::Hl7(splitter) => splitter.next_span(),
            Framer::Lines { data, pos } => loop {
                let (s, e) = next_line(data, pos)?;
                if !data[s..e].iter().all(u8::is_ascii_whitespace) {
                    return Some((s, e));
                }
            },
            Framer::Csv { data, pos, header } => loop {
                let span = next_csv_record(data, pos)?;
                if !std::mem::take(header) {
                    return Some(span);
                }
            },
            Framer::Whole { len, done } => {
                if std::mem::replace(done, true) {
                    None
                } else {
                    Some((0, *len))
                }
            }
        }
    }

    /// Findings about the input's structure (HL7 batch trailer counts), complete once
    /// `next_span` returned None; each prefixed with `name`.
    pub fn diagnostics(&self, name: &str) -> Vec<String> {
        match self {
            Framer::Hl7(splitter) => splitter
                .diagnostics()
                .iter()
                .map(|d| format!("{name}: {d}"))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The line starting at `*pos` without its terminator (LF or CRLF); moves past it.
fn next_line(data: &[u8], pos: &mut usize) -> Option<(usize, usize)> {
    if *pos >= data.len() {
        return None;
    }
    let s = *pos;
    let end = memchr::memchr(b'\n', &data[s..]).map_or(data.len(), |p| s + p);
    *pos = end + 1;
    let e = if end > s && data[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    Some((s, e))
}

/// The CSV record starting at `*pos` (a newline inside double quotes does not end it),
/// skipping empty lines; moves past it.
fn next_csv_record(data: &[u8], pos: &mut usize) -> Option<(usize, usize)> {
    let mut start = *pos;
    let mut quoted = false;
    let mut i = start;
    while i < data.len() {
        match data[i] {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => {
                let end = if i > start && data[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                if end > start {
                    *pos = i + 1;
                    return Some((start, end));
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    *pos = data.len();
    (start < data.len() && !data[start..].iter().all(u8::is_ascii_whitespace))
        .then_some((start, data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_framing_respects_quotes() {
        let data = b"a,b\r\n1,\"x\ny\"\n2,z\n\n3,w";
        let mut pos = 0;
        let recs: Vec<&[u8]> = std::iter::from_fn(|| next_csv_record(data, &mut pos))
            .collect::<Vec<_>>()
            .iter()
            .map(|&(s, e)| &data[s..e])
            .collect();
        assert_eq!(recs, [&b"a,b"[..], b"1,\"x\ny\"", b"2,z", b"3,w"]);
    }

    #[test]
    fn ndjson_lines_skip_blanks() {
        let data = b"{\"a\":1}\r\n\n  \n{\"a\":2}";
        let recs: Vec<&[u8]> = frame(data, SourceFormat::Ndjson, "x", &mut Vec::new())
            .iter()
            .map(|&(s, e)| &data[s..e])
            .collect();
        assert_eq!(recs, [&b"{\"a\":1}"[..], b"{\"a\":2}"]);
    }
}
