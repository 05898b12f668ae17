//! Splitting a byte stream into messages: plain concatenated MSH messages and FHS/BHS/BTS/FTS
//! batch files (batches may nest inside files, and inside each other).
//!
//! The splitter finds message boundaries and segment boundaries in the same pass, so
//! split + parse reads every byte once. Headers are kept as batch metadata; trailer counts
//! (BTS-1, FTS-1) are checked and a mismatch is a diagnostic, not a failure. Bytes that belong
//! to no message are returned as a `BadMessage` so the caller can dead-letter them: nothing in
//! the input is skipped silently.

use super::error::{ErrorKind, Hl7Error};
use super::message::{
    Message, ParseLimits, SegmentSpan, ends_in_bare_cr, is_padding, line_end, skip_line_padding,
    trim_line_end,
};

/// Whether a batch header opened a file (FHS) or a batch (BHS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    File,
    Batch,
}

/// An FHS or BHS header and what was found under it.
#[derive(Debug, Clone)]
pub struct BatchHeader<'a> {
    pub kind: BatchKind,
    /// Absolute offset of the header segment.
    pub offset: usize,
    /// The header segment as written.
    pub raw: &'a [u8],
    /// Enclosing header, as an index into `Splitter::batches`.
    pub parent: Option<usize>,
    /// Messages directly inside.
    pub messages: usize,
    /// Batches directly inside.
    pub batches: usize,
    /// The count its trailer declared (BTS-1 / FTS-1), if any.
    pub declared_count: Option<usize>,
    /// Whether a trailer closed it.
    pub closed: bool,
}

/// A non-fatal finding about the stream's structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte offset {})", self.message, self.offset)
    }
}

/// Bytes that could not be parsed as a message, with the reason.
#[derive(Debug, Clone)]
pub struct BadMessage<'a> {
    /// Position in the stream, counting good and bad records alike.
    pub index: usize,
    pub offset: usize,
    pub raw: &'a [u8],
    pub error: Hl7Error,
    pub batch: Option<usize>,
}

/// One record of the stream: a parsed message or bytes that failed.
pub type SplitItem<'a> = Result<SplitMessage<'a>, BadMessage<'a>>;

/// A parsed message and the batch it was found in.
#[derive(Debug, Clone)]
pub struct SplitMessage<'a> {
    pub message: Message<'a>,
    pub batch: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Msh,
    Fhs,
    Bhs,
    Bts,
    Fts,
    Other,
}

fn classify(seg: &[u8]) -> LineKind {
    if seg.len() < 3 || (seg.len() > 3 && seg[3].is_ascii_alphanumeric()) {
        return LineKind::Other;
    }
    match &seg[..3] {
        b"MSH" => LineKind::Msh,
        b"FHS" => LineKind::Fhs,
        b"BHS" => LineKind::Bhs,
        b"BTS" => LineKind::Bts,
        b"FTS" => LineKind::Fts,
        _ => LineKind::Other,
    }
}

struct Pending {
    start: usize,
    end: usize,
    segments: Vec<SegmentSpan>,
    /// Bytes outside any message rather than a message.
    orphan: bool,
    /// Over a limit: keep finding the end, stop recording segments.
    overflow: Option<ErrorKind>,
    /// The message's MSH ends in a bare CR, so LF inside its segments is data.
    cr_only: bool,
}

/// Iterator over the records of an HL7 stream. See the module docs.
pub struct Splitter<'a> {
    input: &'a [u8],
    pos: usize,
    limits: ParseLimits,
    next_index: usize,
    current: Option<Pending>,
    open: Vec<usize>,
    batches: Vec<BatchHeader<'a>>,
    diagnostics: Vec<Diagnostic>,
    finished: bool,
    /// Boundaries only (`next_span`): segments are not recorded, messages not built.
    spans_only: bool,
}

impl<'a> Splitter<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self::with_limits(input, ParseLimits::default())
    }

    pub fn with_limits(input: &'a [u8], limits: ParseLimits) -> Self {
        Splitter {
            input,
            pos: 0,
            limits,
            next_index: 0,
            current: None,
            open: Vec::new(),
            batches: Vec::new(),
            diagnostics: Vec::new(),
            finished: false,
            spans_only: false,
        }
    }

    /// A splitter that only finds where each record starts and ends (`next_span`), for a
    /// reader that hands records to the parse stage: the one place each message is parsed.
    /// Batch headers, trailer checks and diagnostics work as with `new`.
    pub fn boundaries(input: &'a [u8]) -> Self {
        Splitter {
            spans_only: true,
            ..Self::new(input)
        }
    }

    /// The next record's byte span `[start, end)` (a message, or bytes outside any), or
    /// None at the end of the input.
    pub fn next_span(&mut self) -> Option<(usize, usize)> {
        self.next_pending().map(|(p, _, _)| (p.start, p.end))
    }

    /// FHS/BHS headers seen so far.
    pub fn batches(&self) -> &[BatchHeader<'a>] {
        &self.batches
    }

    /// Structural findings so far (count mismatches, missing trailers). Complete once the
    /// iterator returned `None`.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Takes the record being built: (it, its index, its enclosing batch header).
    fn take_current(&mut self) -> Option<(Pending, usize, Option<usize>)> {
        let p = self.current.take()?;
        let index = self.next_index;
        self.next_index += 1;
        let batch = self.open.last().copied();
        if !p.orphan
            && let Some(b) = batch
        {
            self.batches[b].messages += 1;
        }
        Some((p, index, batch))
    }

    fn build(&self, p: Pending, index: usize, batch: Option<usize>) -> SplitItem<'a> {
        let raw = &self.input[p.start..p.end];
        let bad = |error: Hl7Error| BadMessage {
            index,
            offset: p.start,
            raw,
            error: error.with_message_index(index),
            batch,
        };
        if p.orphan {
            return Err(bad(Hl7Error::new(
                ErrorKind::OutsideMessage { len: raw.len() },
                p.start,
            )));
        }
        if let Some(kind) = p.overflow {
            return Err(bad(Hl7Error::new(kind, p.start)));
        }
        Message::from_segments(raw, p.start, index, p.segments, &self.limits)
            .map(|message| SplitMessage { message, batch })
            .map_err(|e| BadMessage {
                index,
                offset: p.start,
                raw,
                error: e,
                batch,
            })
    }

    fn diag(&mut self, offset: usize, message: String) {
        self.diagnostics.push(Diagnostic { offset, message });
    }

    fn open_header(&mut self, kind: BatchKind, offset: usize, raw: &'a [u8]) {
        let parent = self.open.last().copied();
        if let Some(p) = parent {
            self.batches[p].batches += 1;
        }
        self.batches.push(BatchHeader {
            kind,
            offset,
            raw,
            parent,
            messages: 0,
            batches: 0,
            declared_count: None,
            closed: false,
        });
        self.open.push(self.batches.len() - 1);
    }

    fn close_header(&mut self, kind: BatchKind, offset: usize, trailer: &[u8]) {
        let name = if kind == BatchKind::Batch {
            "BTS"
        } else {
            "FTS"
        };
        let Some(pos) = self
            .open
            .iter()
            .rposition(|&b| self.batches[b].kind == kind)
        else {
            self.diag(offset, format!("{name} without a matching header"));
            return;
        };
        // Anything opened inside and never closed is reported, then closed with it.
        for &inner in &self.open[pos + 1..] {
            let h = &self.batches[inner];
            let msg = format!(
                "{} at byte offset {} has no trailer",
                if h.kind == BatchKind::Batch {
                    "BHS"
                } else {
                    "FHS"
                },
                h.offset
            );
            self.diagnostics.push(Diagnostic {
                offset,
                message: msg,
            });
        }
        let b = self.open[pos];
        self.open.truncate(pos);
        let sep = self.batches[b].raw.get(3).copied().unwrap_or(b'|');
        let declared = trailer
            .split(|&c| c == sep)
            .nth(1)
            .and_then(|f| std::str::from_utf8(f).ok())
            .map(str::trim)
            .filter(|f| !f.is_empty());
        let header = &mut self.batches[b];
        header.closed = true;
        let actual = if kind == BatchKind::Batch {
            header.messages
        } else {
            header.batches
        };
        match declared.map(str::parse::<usize>) {
            None => {}
            Some(Ok(n)) => {
                header.declared_count = Some(n);
                if n != actual {
                    let what = if kind == BatchKind::Batch {
                        "messages"
                    } else {
                        "batches"
                    };
                    self.diag(
                        offset,
                        format!("{name}-1 declares {n} {what} but {actual} were found"),
                    );
                }
            }
            Some(Err(_)) => self.diag(offset, format!("{name}-1 is not a count")),
        }
    }
}

impl<'a> Iterator for Splitter<'a> {
    type Item = SplitItem<'a>;

    fn next(&mut self) -> Option<SplitItem<'a>> {
        let (p, index, batch) = self.next_pending()?;
        Some(self.build(p, index, batch))
    }
}

impl Splitter<'_> {
    /// Scans to the end of the next record (see the module docs for the rules).
    fn next_pending(&mut self) -> Option<(Pending, usize, Option<usize>)> {
        let input = self.input;
        while self.pos < input.len() {
            // Inside a CR-terminated message an LF is data: one scan finds the segment's end.
            // A header line ends at its first CR or LF whatever the message before it used.
            let cr_only = self.current.as_ref().is_some_and(|p| p.cr_only);
            let mut line_end = line_end(input, self.pos, cr_only);
            let mut line = &input[self.pos..line_end];
            let mut skip = skip_line_padding(line);
            let mut seg = trim_line_end(&line[skip..]);
            if cr_only && classify(seg) != LineKind::Other {
                line_end = super::message::line_end(input, self.pos, false);
                line = &input[self.pos..line_end];
                skip = skip_line_padding(line);
                seg = trim_line_end(&line[skip..]);
            }
            if seg.iter().all(|&b| is_padding(b)) {
                self.pos = line_end + 1;
                continue;
            }
            let start = self.pos + skip;
            let end = start + seg.len();
            let kind = classify(seg);
            if kind != LineKind::Other {
                // A boundary: hand out what was pending first, and see this line again.
                if self.current.is_some() {
                    return self.take_current();
                }
                match kind {
                    LineKind::Msh => {
                        self.current = Some(Pending {
                            start,
                            end,
                            segments: vec![SegmentSpan {
                                id: *b"MSH",
                                start: 0,
                                end: seg.len() as u32,
                            }],
                            orphan: false,
                            overflow: None,
                            cr_only: ends_in_bare_cr(input, line_end),
                        });
                    }
                    LineKind::Fhs => self.open_header(BatchKind::File, start, seg),
                    LineKind::Bhs => self.open_header(BatchKind::Batch, start, seg),
                    LineKind::Bts => self.close_header(BatchKind::Batch, start, seg),
                    LineKind::Fts => self.close_header(BatchKind::File, start, seg),
                    LineKind::Other => unreachable!(),
                }
            } else {
                let limits = self.limits;
                let p = self.current.get_or_insert_with(|| Pending {
                    start,
                    end,
                    segments: Vec::new(),
                    orphan: true,
                    overflow: None,
                    cr_only: false,
                });
                p.end = end;
                if !p.orphan && p.overflow.is_none() && !self.spans_only {
                    if end - p.start > limits.max_message_bytes {
                        p.overflow = Some(ErrorKind::MessageTooLarge {
                            len: end - p.start,
                            max: limits.max_message_bytes,
                        });
                        p.segments = Vec::new();
                    } else if p.segments.len() >= limits.max_segments {
                        p.overflow = Some(ErrorKind::TooManySegments {
                            max: limits.max_segments,
                        });
                        p.segments = Vec::new();
                    } else {
                        let mut id = [0u8; 3];
                        let n = seg.len().min(3);
                        id[..n].copy_from_slice(&seg[..n]);
                        p.segments.push(SegmentSpan {
                            id,
                            start: (start - p.start) as u32,
                            end: (end - p.start) as u32,
                        });
                    }
                }
            }
            self.pos = line_end + 1;
        }
        if self.current.is_some() {
            return self.take_current();
        }
        if !self.finished {
            self.finished = true;
            for i in std::mem::take(&mut self.open) {
                let h = &self.batches[i];
                let msg = format!(
                    "{} has no trailer before the end of input",
                    if h.kind == BatchKind::Batch {
                        "BHS"
                    } else {
                        "FHS"
                    }
                );
                let offset = h.offset;
                self.diag(offset, msg);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> String {
        format!("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|{id}|P|2.5\rPID|1||{id}\r")
    }

    #[test]
    fn splits_plain_concatenated_messages() {
        let input = format!("{}\n{}\r\n\r\n{}", msg("1"), msg("2"), msg("3"));
        let mut s = Splitter::new(input.as_bytes());
        let items: Vec<_> = s.by_ref().collect();
        assert_eq!(items.len(), 3);
        let ids: Vec<_> = items
            .iter()
            .map(|i| i.as_ref().unwrap().message.control_id().into_owned())
            .collect();
        assert_eq!(ids, ["1", "2", "3"]);
        let second = items[1].as_ref().unwrap();
        assert_eq!(second.message.offset(), msg("1").len() + 1);
        assert_eq!(second.message.segment_count(), 2);
        assert!(s.diagnostics().is_empty());
    }

    /// #15 item 13: in a CR-terminated message a raw LF is data (text results), while LF
    /// still separates the messages of a file and CRLF/LF-terminated messages still split.
    #[test]
    fn lf_inside_a_cr_terminated_message_is_data() {
        let one = "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5\rPID|1||1\r\
                   OBX|1|TX|N||first\nsecond\n\nthird\rOBX|2|TX|N||x\r";
        let two = msg("2");
        let lf = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|3|P|2.5\nPID|1||3\nOBX|1|TX|N||y\n";
        let input = format!("{one}\n{two}\r\n{lf}");
        let items: Vec<_> = Splitter::new(input.as_bytes()).collect();
        assert_eq!(items.len(), 3);
        let m = &items[0].as_ref().unwrap().message;
        assert_eq!(m.segment_count(), 4);
        let obx = m.segments().nth(2).unwrap();
        assert_eq!(obx.field(5).raw(), b"first\nsecond\n\nthird");
        assert_eq!(items[1].as_ref().unwrap().message.segment_count(), 2);
        // LF-terminated: each LF ends a segment.
        assert_eq!(items[2].as_ref().unwrap().message.segment_count(), 3);
        // The single-message parser agrees.
        let alone = Message::parse(one.as_bytes()).unwrap();
        assert_eq!(alone.segment_count(), 4);
        assert_eq!(
            alone.segments().nth(2).unwrap().field(5).raw(),
            b"first\nsecond\n\nthird"
        );
    }

    #[test]
    fn batch_files_keep_headers_and_check_counts() {
        let input = format!(
            "FHS|^~\\&|F1\rBHS|^~\\&|B1\r{}{}BTS|2\rBHS|^~\\&|B2\r{}BTS|3\rFTS|2\r",
            msg("1"),
            msg("2"),
            msg("3")
        );
        let mut s = Splitter::new(input.as_bytes());
        let items: Vec<_> = s.by_ref().collect();
        assert_eq!(items.len(), 3);
        let batches: Vec<_> = items.iter().map(|i| i.as_ref().unwrap().batch).collect();
        assert_eq!(batches, [Some(1), Some(1), Some(2)]);
        let b = s.batches();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].kind, BatchKind::File);
        assert_eq!(b[0].batches, 2);
        assert_eq!(b[1].parent, Some(0));
        assert_eq!(b[1].raw, b"BHS|^~\\&|B1");
        assert_eq!(b[2].declared_count, Some(3));
        assert_eq!(s.diagnostics().len(), 1, "{:?}", s.diagnostics());
        assert!(
            s.diagnostics()[0]
                .message
                .contains("declares 3 messages but 1")
        );
    }

    #[test]
    fn missing_trailer_is_reported() {
        let input = format!("BHS|^~\\&|B1\r{}", msg("1"));
        let mut s = Splitter::new(input.as_bytes());
        assert_eq!(s.by_ref().count(), 1);
        assert!(s.diagnostics()[0].message.contains("no trailer"));
    }

    #[test]
    fn garbage_is_returned_not_skipped() {
        let input = format!("garbage line\r\x00\x01\x02\r{}junk|after\r", msg("1"));
        let items: Vec<_> = Splitter::new(input.as_bytes()).collect();
        assert_eq!(items.len(), 2);
        let bad = items[0].as_ref().unwrap_err();
        assert_eq!(bad.offset, 0);
        assert!(matches!(bad.error.kind, ErrorKind::OutsideMessage { .. }));
        // The trailing junk is a bad segment inside message 1, which fails as a whole.
        let bad = items[1].as_ref().unwrap_err();
        assert!(
            matches!(bad.error.kind, ErrorKind::InvalidSegmentId { .. }),
            "{}",
            bad.error
        );
        assert_eq!(bad.error.location.message_index, Some(1));
    }

    #[test]
    fn limits_bound_segments() {
        let mut input = msg("1");
        for _ in 0..50 {
            input.push_str("OBX|1\r");
        }
        let limits = ParseLimits {
            max_segments: 10,
            ..ParseLimits::default()
        };
        let items: Vec<_> = Splitter::with_limits(input.as_bytes(), limits).collect();
        assert_eq!(items.len(), 1);
        let bad = items[0].as_ref().unwrap_err();
        assert_eq!(bad.raw.len(), input.len() - 1);
        assert!(matches!(
            bad.error.kind,
            ErrorKind::TooManySegments { max: 10 }
        ));
    }

    /// The boundaries-only splitter (what the file source uses) finds the same records,
    /// junk and batch findings as the full one, on the third-party corpus and on batches
    /// with a wrong trailer count and junk between messages.
    #[test]
    fn boundaries_match_the_full_split() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/corpus");
        let mut input = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            input.extend(std::fs::read(e.unwrap().path()).unwrap());
            input.push(b'\n');
        }
        input.extend(
            format!(
                "FHS|^~\\&\rBHS|^~\\&\r{}junk line\r{}BTS|3\rFTS|1\r",
                msg("b1"),
                msg("b2")
            )
            .bytes(),
        );
        let mut full = Splitter::new(&input);
        let want: Vec<(usize, usize)> = full
            .by_ref()
            .map(|item| match item {
                Ok(m) => (
                    m.message.offset(),
                    m.message.offset() + m.message.raw().len(),
                ),
                Err(bad) => (bad.offset, bad.offset + bad.raw.len()),
            })
            .collect();
        let mut spans = Splitter::boundaries(&input);
        let got: Vec<_> = std::iter::from_fn(|| spans.next_span()).collect();
        assert!(want.len() > 8, "{}", want.len());
        assert_eq!(got, want);
        assert_eq!(spans.diagnostics(), full.diagnostics());
        assert!(!spans.diagnostics().is_empty());
        assert_eq!(spans.batches().len(), full.batches().len());
    }
}
