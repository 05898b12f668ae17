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
    match format {
        SourceFormat::Hl7 => {
            let mut splitter = Splitter::new(data);
            let spans = splitter
                .by_ref()
                .map(|item| match item {
                    Ok(m) => (
                        m.message.offset(),
                        m.message.offset() + m.message.raw().len(),
                    ),
                    Err(bad) => (bad.offset, bad.offset + bad.raw.len()),
                })
                .collect();
            warnings.extend(
                splitter
                    .diagnostics()
                    .iter()
                    .map(|d| format!("{name}: {d}")),
            );
            spans
        }
        SourceFormat::Ndjson => lines(data)
            .filter(|&(s, e)| !data[s..e].iter().all(u8::is_ascii_whitespace))
            .collect(),
        // One Avro record per input (Kafka messages; `plexus test` inputs).
        SourceFormat::Avro => vec![(0, data.len())],
        SourceFormat::Csv => {
            let mut records = csv_records(data);
            if !records.is_empty() {
                records.remove(0);
            }
            records
        }
    }
}

/// Lines without their terminators (LF or CRLF).
fn lines(data: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= data.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |p| start + p);
        let s = start;
        start = end + 1;
        let e = if end > s && data[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        Some((s, e))
    })
}

/// CSV records: a newline inside double quotes does not end a record.
fn csv_records(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut i = 0;
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
                    out.push((start, end));
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < data.len() && !data[start..].iter().all(u8::is_ascii_whitespace) {
        out.push((start, data.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_framing_respects_quotes() {
        let data = b"a,b\r\n1,\"x\ny\"\n2,z\n\n3,w";
        let recs: Vec<&[u8]> = csv_records(data)
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
