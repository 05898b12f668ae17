//! The zero-copy message model.
//!
//! Parsing indexes segments once (one `memchr2` pass over the bytes for CR/LF) and reads the
//! header; fields, repetitions, components and sub-components are sliced out of the original
//! bytes only when a path asks for them. Nothing is copied until a value is decoded, and a value
//! without escapes in valid UTF-8 is never copied at all.

use std::borrow::Cow;
use std::cell::RefCell;

use super::encoding::{Charset, Delimiters};
use super::error::{ErrorKind, Hl7Error, excerpt};
use super::escape::unescape;
use super::path::{Path, Select};

/// Bounds that keep a hostile input from consuming unbounded memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest accepted message, in bytes (an embedded PDF in OBX-5 can be tens of MB).
    pub max_message_bytes: usize,
    /// Most segments per message.
    pub max_segments: usize,
    /// Largest single field, in bytes.
    pub max_field_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_message_bytes: 64 << 20,
            max_segments: 100_000,
            max_field_bytes: 32 << 20,
        }
    }
}

/// Where a segment lives inside the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSpan {
    pub id: [u8; 3],
    pub start: u32,
    pub end: u32,
}

/// One HL7v2 message, borrowing the input it was parsed from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    offset: usize,
    index: usize,
    delimiters: Delimiters,
    charset: Charset,
    segments: Vec<SegmentSpan>,
    field_cache: RefCell<FieldCache>,
}

/// Field separator positions of the segment read last (see `Message::cached_piece`).
#[derive(Debug, Clone)]
struct FieldCache {
    segment: usize,
    separators: Vec<u32>,
}

impl Default for FieldCache {
    fn default() -> Self {
        FieldCache {
            segment: usize::MAX,
            separators: Vec::new(),
        }
    }
}

/// Bytes that may surround segments without being data: UTF-8 BOM pieces are handled apart;
/// VT/FS are MLLP frame bytes left in files captured off the wire.
#[inline]
pub(crate) fn is_padding(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0B | 0x1C)
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Strips padding and a BOM from the start of a line; returns the number of bytes skipped.
#[inline]
pub(crate) fn skip_line_padding(line: &[u8]) -> usize {
    let mut i = 0;
    loop {
        if line[i..].starts_with(BOM) {
            i += 3;
        } else if i < line.len() && is_padding(line[i]) {
            i += 1;
        } else {
            return i;
        }
    }
}

/// Where the line that starts at `pos` ends. Segments end in CR, LF or CRLF; but once a
/// message is known to end its segments in a bare CR (`cr_only`, the standard terminator), an
/// LF is data — text results carry raw line breaks (`OBX|1|TX|N||first<LF>second<CR>`), and
/// python-hl7 and HAPI read them as such. An LF still ends the line where it cannot be data:
/// at the start of a line (CRLF), before a message or batch header, or before only blank bytes.
#[inline]
pub(crate) fn line_end(bytes: &[u8], pos: usize, cr_only: bool) -> usize {
    let rest = &bytes[pos..];
    if !cr_only {
        return memchr::memchr2(b'\r', b'\n', rest).map_or(bytes.len(), |p| pos + p);
    }
    for p in memchr::memchr2_iter(b'\r', b'\n', rest) {
        let after = &rest[p + 1..];
        if rest[p] == b'\r'
            || p == 0
            || starts_header(after)
            || after
                .iter()
                .all(|&b| is_padding(b) || b == b'\r' || b == b'\n')
        {
            return pos + p;
        }
    }
    bytes.len()
}

/// Whether the line that ends at `end` ends in a bare CR: decided on a message's MSH line, it
/// puts the rest of the message in CR-only mode (see [`line_end`]).
#[inline]
pub(crate) fn ends_in_bare_cr(bytes: &[u8], end: usize) -> bool {
    bytes.get(end) == Some(&b'\r') && bytes.get(end + 1) != Some(&b'\n')
}

/// Whether `rest` starts (after padding) with a message or batch header segment.
fn starts_header(rest: &[u8]) -> bool {
    let seg = &rest[skip_line_padding(rest)..];
    seg.len() >= 4
        && !seg[3].is_ascii_alphanumeric()
        && matches!(&seg[..3], b"MSH" | b"FHS" | b"BHS" | b"BTS" | b"FTS")
}

/// Trims MLLP frame bytes and padding-only tails from the end of a line.
#[inline]
pub(crate) fn trim_line_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], 0x0B | 0x1C) {
        end -= 1;
    }
    &line[..end]
}

impl<'a> Message<'a> {
    /// Parses one message (a BOM, leading blank lines and MLLP frame bytes are skipped).
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, Hl7Error> {
        Self::parse_with(bytes, 0, 0, &ParseLimits::default())
    }

    /// Parses one message that starts at absolute `offset` of a larger input and is the
    /// `index`-th message there (both used only for error locations and provenance).
    pub fn parse_with(
        bytes: &'a [u8],
        offset: usize,
        index: usize,
        limits: &ParseLimits,
    ) -> Result<Message<'a>, Hl7Error> {
        let fail = |e: Hl7Error| e.with_message_index(index);
        if bytes.len() > limits.max_message_bytes {
            // Checked before the scan so a huge input is not indexed for nothing.
            return Err(fail(Hl7Error::new(
                ErrorKind::MessageTooLarge {
                    len: bytes.len(),
                    max: limits.max_message_bytes,
                },
                offset,
            )));
        }
        let mut segments = Vec::with_capacity(16);
        let mut pos = 0usize;
        let mut cr_only = false;
        while pos < bytes.len() {
            let line_end = line_end(bytes, pos, cr_only);
            let line = &bytes[pos..line_end];
            let skip = skip_line_padding(line);
            let seg = trim_line_end(&line[skip..]);
            if !seg.iter().all(|&b| is_padding(b)) {
                let start = pos + skip;
                if segments.len() >= limits.max_segments {
                    return Err(fail(Hl7Error::new(
                        ErrorKind::TooManySegments {
                            max: limits.max_segments,
                        },
                        offset + start,
                    )));
                }
                segments.push(SegmentSpan {
                    id: segment_id(seg),
                    start: start as u32,
                    end: (start + seg.len()) as u32,
                });
                if segments.len() == 1 {
                    cr_only = ends_in_bare_cr(bytes, line_end);
                }
            }
            pos = line_end + 1;
        }
        Self::from_segments(bytes, offset, index, segments, limits)
    }

    /// Builds a message from an already computed segment index (the splitter finds segments in
    /// the same pass that finds message boundaries, so the bytes are scanned once).
    pub(crate) fn from_segments(
        bytes: &'a [u8],
        offset: usize,
        index: usize,
        segments: Vec<SegmentSpan>,
        limits: &ParseLimits,
    ) -> Result<Message<'a>, Hl7Error> {
        let fail = |e: Hl7Error| e.with_message_index(index);
        if bytes.len() > limits.max_message_bytes {
            return Err(fail(Hl7Error::new(
                ErrorKind::MessageTooLarge {
                    len: bytes.len(),
                    max: limits.max_message_bytes,
                },
                offset,
            )));
        }
        let Some(first) = segments.first() else {
            return Err(fail(Hl7Error::new(ErrorKind::Empty, offset)));
        };
        let msh = &bytes[first.start as usize..first.end as usize];
        let msh_at = offset + first.start as usize;
        if !msh.starts_with(b"MSH") {
            return Err(fail(
                Hl7Error::new(
                    ErrorKind::NotMsh {
                        found: excerpt(msh),
                    },
                    msh_at,
                )
                .with_segment(&msh[..msh.len().min(3)], 1),
            ));
        }
        // The field is named in the error's location too, so a NACK's ERR-2 points at it.
        let truncated = |missing: &'static str, field: usize, at: usize| {
            fail(
                Hl7Error::new(ErrorKind::TruncatedMsh { missing }, msh_at + at)
                    .with_segment(b"MSH", 1)
                    .with_field(field),
            )
        };
        if msh.len() < 4 {
            return Err(truncated("MSH-1 (field separator)", 1, msh.len()));
        }
        let field_sep = msh[3];
        let enc_end = memchr::memchr(field_sep, &msh[4..]).map_or(msh.len(), |p| 4 + p);
        let delimiters =
            Delimiters::from_msh(field_sep, &msh[4..enc_end], msh_at + 4).map_err(fail)?;

        let mut m = Message {
            bytes,
            offset,
            index,
            delimiters,
            charset: Charset::Utf8,
            segments,
            field_cache: RefCell::default(),
        };
        {
            let msh = m.segment_at(0);
            if msh.field(9).raw().is_empty() {
                return Err(truncated("MSH-9 (message type)", 9, msh.raw().len()));
            }
            let eighteen = msh.field(18).repetition(1);
            if eighteen.is_present() {
                m.charset = Charset::from_msh18(eighteen.raw());
            }
        }
        // Segment ids and field sizes are checked here so that access later cannot fail on
        // structure, only on value conversion.
        for (i, s) in m.segments.iter().enumerate() {
            let seg = &bytes[s.start as usize..s.end as usize];
            let id_ok = seg.len() >= 3
                && seg[..3]
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                && (seg.len() == 3 || seg[3] == field_sep);
            if !id_ok {
                return Err(fail(
                    Hl7Error::new(
                        ErrorKind::InvalidSegmentId {
                            found: excerpt(&seg[..seg.len().min(4)]),
                        },
                        offset + s.start as usize,
                    )
                    .with_segment(&seg[..seg.len().min(3)], i + 1),
                ));
            }
            if seg.len() > limits.max_field_bytes {
                check_field_sizes(seg, field_sep, limits.max_field_bytes).map_err(
                    |(field, at, len)| {
                        fail(
                            Hl7Error::new(
                                ErrorKind::FieldTooLarge {
                                    len,
                                    max: limits.max_field_bytes,
                                },
                                offset + s.start as usize + at,
                            )
                            .with_segment(&seg[..3], i + 1)
                            .with_field(if &seg[..3] == b"MSH" {
                                field + 1
                            } else {
                                field
                            }),
                        )
                    },
                )?;
            }
        }
        Ok(m)
    }

    /// The message's bytes (from `MSH` to the end of its last segment).
    pub fn raw(&self) -> &'a [u8] {
        self.bytes
    }

    /// Absolute byte offset of the message in the input it came from.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// 0-based index of the message in its input.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    pub fn charset(&self) -> Charset {
        self.charset
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// All segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        (0..self.segments.len()).map(move |i| self.segment_at(i))
    }

    /// The `occurrence`-th (1-based) segment with this id.
    pub fn segment(&self, id: &str, occurrence: usize) -> Option<Segment<'a>> {
        let id = id.as_bytes();
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.id == id)
            .nth(occurrence.checked_sub(1)?)
            .map(|(i, _)| self.segment_at(i))
    }

    /// Every segment with this id.
    pub fn segments_named<'s>(&'s self, id: [u8; 3]) -> impl Iterator<Item = Segment<'a>> + 's {
        self.segments
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.id == id)
            .map(move |(i, _)| self.segment_at(i))
    }

    fn segment_at(&self, i: usize) -> Segment<'a> {
        let s = self.segments[i];
        Segment {
            id: s.id,
            raw: &self.bytes[s.start as usize..s.end as usize],
            offset: self.offset + s.start as usize,
            position: i + 1,
            delimiters: self.delimiters,
            charset: self.charset,
            index: None,
        }
    }

    /// The first value a path selects (`Absent` when the segment or field does not exist).
    pub fn get(&self, path: &Path) -> Element<'a> {
        let position = self
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.id == path.segment)
            .nth(path.occurrence.first_index() - 1)
            .map(|(i, _)| i);
        let Some(i) = position else {
            return Element::absent(self.delimiters, self.charset, self.offset);
        };
        self.segment_at(i)
            .field_by(path.field, |raw, sep, k| self.cached_piece(i, raw, sep, k))
            .repetition(path.repetition.first_index())
            .descend(path.component, path.subcomponent)
    }

    /// Finds field `k` of segment `i` through an index of its separators, built on the first
    /// access and kept while the same segment is read: a mapping reads many fields of one
    /// segment (PID), and this turns each read after the first into two array lookups.
    fn cached_piece(&self, i: usize, raw: &[u8], sep: u8, k: usize) -> Option<(usize, usize)> {
        let mut cache = self.field_cache.borrow_mut();
        if cache.segment != i {
            cache.segment = i;
            cache.separators.clear();
            positions_of(raw, sep, &mut cache.separators);
        }
        if k > cache.separators.len() {
            return None;
        }
        let start = if k == 0 {
            0
        } else {
            cache.separators[k - 1] as usize + 1
        };
        let end = cache.separators.get(k).map_or(raw.len(), |&e| e as usize);
        Some((start, end))
    }

    /// Every value a path selects: all occurrences of the segment for `SEG(*)`, all
    /// repetitions for `-n(*)` (and for an unqualified repetition when `expand_repetitions`).
    pub fn get_all(&self, path: &Path, expand_repetitions: bool, out: &mut Vec<Element<'a>>) {
        let mut visit = |seg: Segment<'a>| match path.repetition {
            Select::Index(r) => out.push(seg.select(path, r)),
            Select::Default if !expand_repetitions => out.push(seg.select(path, 1)),
            Select::All | Select::Default => {
                let field = seg.field(path.field);
                for rep in field.repetitions() {
                    out.push(rep.descend(path.component, path.subcomponent));
                }
            }
        };
        match path.occurrence {
            Select::All => self.segments_named(path.segment).for_each(&mut visit),
            sel => {
                if let Some(seg) = self.segment(path.segment_id(), sel.first_index()) {
                    visit(seg)
                }
            }
        }
    }

    /// Shorthand: parse `path` and return the decoded text of its first value (None when
    /// absent or empty).
    pub fn query(&self, path: &str) -> Result<Option<Cow<'a, str>>, Hl7Error> {
        let path = Path::parse(path)?;
        let el = self.get(&path);
        if el.raw().is_empty() {
            return Ok(None);
        }
        el.text().map(Some)
    }

    fn msh(&self) -> Segment<'a> {
        self.segment_at(0)
    }

    /// MSH-9 as written (e.g. `ADT^A01^ADT_A01`), decoded.
    pub fn message_type(&self) -> Cow<'a, str> {
        self.msh().field(9).text_lossy()
    }

    /// MSH-9.1, e.g. `ADT`.
    pub fn message_code(&self) -> Cow<'a, str> {
        self.msh().field(9).component(1).text_lossy()
    }

    /// MSH-9.2, e.g. `A01`.
    pub fn trigger_event(&self) -> Cow<'a, str> {
        self.msh().field(9).component(2).text_lossy()
    }

    /// MSH-10, the message control id (the correlation id of everything derived from it).
    pub fn control_id(&self) -> Cow<'a, str> {
        self.msh().field(10).text_lossy()
    }

    /// MSH-12.1, e.g. `2.5.1`.
    pub fn version(&self) -> Cow<'a, str> {
        self.msh().field(12).component(1).text_lossy()
    }
}

/// Splits a segment by field separator to find any field over `max` bytes: (field, offset, len).
fn check_field_sizes(seg: &[u8], sep: u8, max: usize) -> Result<(), (usize, usize, usize)> {
    let mut start = 0;
    for (n, end) in memchr::memchr_iter(sep, seg)
        .chain(std::iter::once(seg.len()))
        .enumerate()
    {
        if end - start > max {
            return Err((n, start, end - start));
        }
        start = end + 1;
    }
    Ok(())
}

fn segment_id(seg: &[u8]) -> [u8; 3] {
    let mut id = [0u8; 3];
    let n = seg.len().min(3);
    id[..n].copy_from_slice(&seg[..n]);
    id
}

/// How many field separators a [`Segment::indexed`] segment remembers: PV1 and OBR, the
/// widest segments mappers read, have about 50 fields.
const INDEXED_FIELDS: usize = 64;

/// Where a segment's field separators are, so that reading field `n` is two lookups instead
/// of a scan from the segment's start (a mapper reads dozens of fields of one segment).
#[derive(Debug, Clone, Copy)]
struct FieldIndex {
    /// Positions of the first `len` field separators.
    at: [u16; INDEXED_FIELDS],
    len: u8,
    /// Every separator of the segment is in `at`.
    complete: bool,
}

/// One segment of a message.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    id: [u8; 3],
    raw: &'a [u8],
    offset: usize,
    position: usize,
    delimiters: Delimiters,
    charset: Charset,
    index: Option<FieldIndex>,
}

impl<'a> Segment<'a> {
    pub fn id(&self) -> &str {
        std::str::from_utf8(&self.id).unwrap_or("???")
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Absolute byte offset of the segment.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// 1-based position of the segment in its message.
    pub fn position(&self) -> usize {
        self.position
    }

    fn is_msh_like(&self) -> bool {
        // FHS and BHS share MSH's convention: field 1 is the separator itself.
        matches!(&self.id, b"MSH" | b"FHS" | b"BHS")
    }

    /// Number of fields present (as the standard counts them).
    pub fn field_count(&self) -> usize {
        let seps = memchr::memchr_iter(self.delimiters.field, self.raw).count();
        // MSH-1 is the first separator itself, so MSH has one more field than separators.
        if self.is_msh_like() { seps + 1 } else { seps }
    }

    /// The segment with its field separators indexed (one scan now), for a reader of many
    /// of its fields; one that reads a field or two is faster without.
    pub fn indexed(mut self) -> Self {
        if self.index.is_some() || self.raw.len() > usize::from(u16::MAX) {
            return self;
        }
        let mut ix = FieldIndex {
            at: [0; INDEXED_FIELDS],
            len: 0,
            complete: true,
        };
        for p in memchr::memchr_iter(self.delimiters.field, self.raw) {
            if usize::from(ix.len) == INDEXED_FIELDS {
                ix.complete = false;
                break;
            }
            ix.at[usize::from(ix.len)] = p as u16;
            ix.len += 1;
        }
        self.index = Some(ix);
        self
    }

    /// Field `n` (1-based). For MSH, field 1 is the field separator and field 2 the encoding
    /// characters, both returned verbatim.
    pub fn field(&self, n: usize) -> Element<'a> {
        match &self.index {
            Some(ix) => self.field_by(n, |raw, sep, k| ix.piece(raw, sep, k)),
            None => self.field_by(n, nth_piece),
        }
    }

    /// `field`, with the way the `k`-th piece of the segment is found supplied by the caller
    /// (the message passes its cached separator index).
    fn field_by(
        &self,
        n: usize,
        find: impl FnOnce(&'a [u8], u8, usize) -> Option<(usize, usize)>,
    ) -> Element<'a> {
        let mk = |raw: &'a [u8], start: usize, level| Element {
            raw,
            present: true,
            offset: self.offset + start,
            level,
            delimiters: self.delimiters,
            charset: self.charset,
        };
        if n == 0 {
            return Element::absent(self.delimiters, self.charset, self.offset);
        }
        let split_index = if self.is_msh_like() {
            match n {
                1 => return mk(&self.raw[3..4.min(self.raw.len())], 3, Level::Opaque),
                2 => {
                    let end =
                        memchr::memchr(self.delimiters.field, &self.raw[4.min(self.raw.len())..])
                            .map_or(self.raw.len(), |p| 4 + p);
                    return mk(&self.raw[4.min(end)..end], 4, Level::Opaque);
                }
                _ => n - 1,
            }
        } else {
            n
        };
        match find(self.raw, self.delimiters.field, split_index) {
            Some((start, end)) => mk(&self.raw[start..end], start, Level::Field),
            None => Element::absent(self.delimiters, self.charset, self.offset + self.raw.len()),
        }
    }

    fn select(&self, path: &Path, repetition: usize) -> Element<'a> {
        self.field(path.field)
            .repetition(repetition)
            .descend(path.component, path.subcomponent)
    }
}

/// Returns the `[start, end)` of the `n`-th (0-based) piece of `raw` split by `sep`.
///
/// Delimiters in HL7 are dense (a field every few bytes), where calling `memchr` once per
/// delimiter costs more than the search itself. So the start is found by counting delimiters
/// eight bytes at a time (SWAR: one exact zero-byte test and a popcount per word); the end of
/// the piece, which may be far away (an embedded document), is found with `memchr`.
#[inline]
pub(crate) fn nth_piece(raw: &[u8], sep: u8, n: usize) -> Option<(usize, usize)> {
    let start = if n == 0 { 0 } else { after_nth(raw, sep, n)? };
    let end = memchr::memchr(sep, &raw[start..]).map_or(raw.len(), |p| start + p);
    Some((start, end))
}

/// Appends the position of every `sep` in `raw` to `out` (SWAR, as in `after_nth`).
fn positions_of(raw: &[u8], sep: u8, out: &mut Vec<u32>) {
    const LO7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let pattern = u64::from_ne_bytes([sep; 8]);
    let mut i = 0;
    while i + 8 <= raw.len() {
        let word = u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        let x = word ^ pattern;
        let mut hits = !(((x & LO7) + LO7) | x | LO7);
        while hits != 0 {
            out.push((i + hits.trailing_zeros() as usize / 8) as u32);
            hits &= hits - 1;
        }
        i += 8;
    }
    for (j, &b) in raw[i..].iter().enumerate() {
        if b == sep {
            out.push((i + j) as u32);
        }
    }
}

/// Offset just after the `n`-th (1-based) occurrence of `sep`.
#[inline]
fn after_nth(raw: &[u8], sep: u8, n: usize) -> Option<usize> {
    const LO7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let pattern = u64::from_ne_bytes([sep; 8]);
    let mut remaining = n;
    let mut i = 0;
    while i + 8 <= raw.len() {
        let word = u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        let x = word ^ pattern;
        // High bit set exactly in the bytes of `x` that are zero (bytes equal to `sep`).
        let mut hits = !(((x & LO7) + LO7) | x | LO7);
        let count = hits.count_ones() as usize;
        if count >= remaining {
            for _ in 1..remaining {
                hits &= hits - 1;
            }
            return Some(i + (hits.trailing_zeros() as usize) / 8 + 1);
        }
        remaining -= count;
        i += 8;
    }
    for (j, &b) in raw[i..].iter().enumerate() {
        if b == sep {
            remaining -= 1;
            if remaining == 0 {
                return Some(i + j + 1);
            }
        }
    }
    None
}

impl FieldIndex {
    /// `nth_piece` through the index; past its end, a scan from the last known separator.
    #[inline]
    fn piece(&self, raw: &[u8], sep: u8, k: usize) -> Option<(usize, usize)> {
        let len = usize::from(self.len);
        let start = match k {
            0 => 0,
            k if k <= len => usize::from(self.at[k - 1]) + 1,
            _ if self.complete => return None,
            k => {
                let from = usize::from(self.at[len - 1]) + 1;
                let (s, e) = nth_piece(&raw[from..], sep, k - len)?;
                return Some((from + s, from + e));
            }
        };
        let end = match self.at.get(k) {
            Some(&e) if k < len => usize::from(e),
            _ if self.complete => raw.len(),
            _ => memchr::memchr(sep, &raw[start..]).map_or(raw.len(), |p| start + p),
        };
        Some((start, end))
    }
}

/// How deep an element is, which decides what the next split is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Field,
    Repetition,
    Component,
    SubComponent,
    /// MSH-1/MSH-2: never split or unescaped.
    Opaque,
}

/// A field, repetition, component or sub-component: a slice of the message plus the context
/// needed to split and decode it.
///
/// Three states are kept distinct, as HL7 requires: *absent* (not in the message), *empty*
/// (present, zero length) and *null* (`""`, which tells a receiver to delete the value).
#[derive(Debug, Clone, Copy)]
pub struct Element<'a> {
    raw: &'a [u8],
    present: bool,
    offset: usize,
    level: Level,
    delimiters: Delimiters,
    charset: Charset,
}

impl<'a> Element<'a> {
    fn absent(delimiters: Delimiters, charset: Charset, offset: usize) -> Self {
        Element {
            raw: &[],
            present: false,
            offset,
            level: Level::SubComponent,
            delimiters,
            charset,
        }
    }

    /// Present in the message (possibly empty).
    pub fn is_present(&self) -> bool {
        self.present
    }

    /// Present with zero length.
    pub fn is_empty(&self) -> bool {
        self.present && self.raw.is_empty()
    }

    /// The explicit null `""`.
    pub fn is_null(&self) -> bool {
        self.raw == b"\"\""
    }

    /// Undecoded bytes (escape sequences intact).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Absolute byte offset of the element in the input.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Repetition `n` (1-based) of a field. On a deeper element, `n == 1` is the element itself.
    pub fn repetition(&self, n: usize) -> Element<'a> {
        match self.level {
            Level::Field => self.split(self.delimiters.repetition, n, Level::Repetition),
            _ if n == 1 => *self,
            _ => self.gone(),
        }
    }

    /// All repetitions of a field (one for a non-repeating or deeper element; none if absent).
    pub fn repetitions(&self) -> impl Iterator<Item = Element<'a>> + 'a {
        let this = *self;
        let sep = this.delimiters.repetition;
        let split = this.present && this.level == Level::Field;
        let mut start = 0usize;
        let mut done = !this.present;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            if !split {
                done = true;
                return Some(this);
            }
            let end = memchr::memchr(sep, &this.raw[start..]).map_or(this.raw.len(), |p| start + p);
            let el = Element {
                raw: &this.raw[start..end],
                offset: this.offset + start,
                level: Level::Repetition,
                ..this
            };
            if end == this.raw.len() {
                done = true;
            }
            start = end + 1;
            Some(el)
        })
    }

    /// Component `n` (1-based), from the first repetition of a field.
    pub fn component(&self, n: usize) -> Element<'a> {
        match self.level {
            Level::Field => self.repetition(1).component(n),
            Level::Repetition => self.split(self.delimiters.component, n, Level::Component),
            _ if n == 1 => *self,
            _ => self.gone(),
        }
    }

    /// Components 1..=N at once: `components::<N>()[i]` is `component(i + 1)`, split in one
    /// pass (a composite's readers asked for each component in turn, rescanning from the
    /// start every time).
    pub fn components<const N: usize>(&self) -> [Element<'a>; N] {
        match self.level {
            Level::Field => self.repetition(1).components(),
            Level::Repetition => self.pieces(self.delimiters.component, Level::Component),
            _ => self.only_first(),
        }
    }

    /// Sub-components 1..=N at once (as `components`).
    pub fn subcomponents<const N: usize>(&self) -> [Element<'a>; N] {
        match self.level {
            Level::Field | Level::Repetition => self.component(1).subcomponents(),
            Level::Component => match self.delimiters.subcomponent {
                Some(sep) => self.pieces(sep, Level::SubComponent),
                None => self.only_first(),
            },
            _ => self.only_first(),
        }
    }

    /// `[self, absent, …]`: what `component(n)` gives on an element with no deeper parts.
    fn only_first<const N: usize>(&self) -> [Element<'a>; N] {
        let gone = self.gone();
        std::array::from_fn(|i| if i == 0 { *self } else { gone })
    }

    /// The first N pieces between `sep`s, as `split(sep, i + 1, level)` gives each.
    fn pieces<const N: usize>(&self, sep: u8, level: Level) -> [Element<'a>; N] {
        let gone = self.gone();
        let mut out = [gone; N];
        if !self.present {
            return out;
        }
        let mut start = 0;
        for slot in out.iter_mut() {
            let end = memchr::memchr(sep, &self.raw[start..]).map_or(self.raw.len(), |p| start + p);
            *slot = Element {
                raw: &self.raw[start..end],
                offset: self.offset + start,
                level,
                ..*self
            };
            if end == self.raw.len() {
                break;
            }
            start = end + 1;
        }
        out
    }

    /// Sub-component `n` (1-based).
    pub fn subcomponent(&self, n: usize) -> Element<'a> {
        match self.level {
            Level::Field | Level::Repetition => self.component(1).subcomponent(n),
            Level::Component => match self.delimiters.subcomponent {
                Some(sep) => self.split(sep, n, Level::SubComponent),
                None if n == 1 => *self,
                None => self.gone(),
            },
            _ if n == 1 => *self,
            _ => self.gone(),
        }
    }

    /// Component `n` when this is a whole field or repetition; a component or sub-component
    /// path already chose, so it is returned as is. (Used for types like TS whose first
    /// component is the value.)
    pub fn component_if_field(&self, n: usize) -> Element<'a> {
        match self.level {
            Level::Field | Level::Repetition => self.component(n),
            _ => *self,
        }
    }

    fn descend(&self, component: Option<usize>, subcomponent: Option<usize>) -> Element<'a> {
        match (component, subcomponent) {
            (None, _) => *self,
            (Some(c), None) => self.component(c),
            (Some(c), Some(s)) => self.component(c).subcomponent(s),
        }
    }

    fn gone(&self) -> Element<'a> {
        Element::absent(self.delimiters, self.charset, self.offset + self.raw.len())
    }

    fn split(&self, sep: u8, n: usize, level: Level) -> Element<'a> {
        if !self.present || n == 0 {
            return self.gone();
        }
        match nth_piece(self.raw, sep, n - 1) {
            Some((s, e)) => Element {
                raw: &self.raw[s..e],
                offset: self.offset + s,
                level,
                ..*self
            },
            None => self.gone(),
        }
    }

    /// Escape sequences decoded, in the message's character set. A null (`""`) decodes to
    /// the empty string; check `is_null` to tell it apart.
    pub fn text(&self) -> Result<Cow<'a, str>, Hl7Error> {
        if self.is_null() {
            return Ok(Cow::Borrowed(""));
        }
        let bytes = if self.level == Level::Opaque {
            Cow::Borrowed(self.raw)
        } else {
            unescape(self.raw, &self.delimiters)
        };
        decode(bytes, self.charset).map_err(|(charset, at)| {
            Hl7Error::new(
                ErrorKind::InvalidText {
                    charset,
                    detail: format!("invalid byte sequence at position {at} of the value"),
                },
                self.offset,
            )
        })
    }

    /// Like `text`, replacing invalid bytes with U+FFFD (for display and provenance).
    pub fn text_lossy(&self) -> Cow<'a, str> {
        match self.text() {
            Ok(t) => t,
            Err(_) => Cow::Owned(
                String::from_utf8_lossy(&unescape(self.raw, &self.delimiters)).into_owned(),
            ),
        }
    }
}

fn decode(bytes: Cow<'_, [u8]>, charset: Charset) -> Result<Cow<'_, str>, (&'static str, usize)> {
    match charset {
        Charset::Utf8 => match bytes {
            Cow::Borrowed(b) => std::str::from_utf8(b)
                .map(Cow::Borrowed)
                .map_err(|e| ("UTF-8", e.valid_up_to())),
            Cow::Owned(v) => String::from_utf8(v)
                .map(Cow::Owned)
                .map_err(|e| ("UTF-8", e.utf8_error().valid_up_to())),
        },
        Charset::Latin1 => {
            if bytes.is_ascii() {
                // ASCII is the same in both; keep the borrow.
                return Ok(match bytes {
                    Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).unwrap_or_default()),
                    Cow::Owned(v) => Cow::Owned(String::from_utf8(v).unwrap_or_default()),
                });
            }
            Ok(Cow::Owned(bytes.iter().map(|&b| b as char).collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &[u8] = b"MSH|^~\\&|SEND|FAC|RECV|RFAC|20260105143000-0500||ADT^A01^ADT_A01|MSG001|P|2.5.1\r\
EVN|A01|20260105143000\r\
PID|1||123^^^HOSP^MR~456^^^SSA^SS||DOE&VAN&Van Der Doe^JOHN^Q||19800101|M|||1 Main St^^Town^ST^12345||\"\"|\r\
OBX|1|ST|A||first\r\
OBX|2|ST|B||sec\\F\\ond\r\
OBX|3|ST|C||third\r";

    fn q(m: &Message, p: &str) -> Option<String> {
        m.query(p).unwrap().map(|c| c.into_owned())
    }

    #[test]
    fn indexed_segments_read_the_same_fields() {
        let wide = format!(
            "MSH|^~\\&|A|B|||20240101||ADT^A01|1|P|2.5\rZZZ{}\rPID|1||X^^^H^MR||DOE^J\rPV1",
            "|f".repeat(90)
        );
        let m = Message::parse(wide.as_bytes()).unwrap();
        for seg in m.segments() {
            let ix = seg.indexed();
            for n in 0..100 {
                let (a, b) = (seg.field(n), ix.field(n));
                assert_eq!(
                    (a.raw(), a.is_present(), a.offset()),
                    (b.raw(), b.is_present(), b.offset()),
                    "{}-{n}",
                    seg.id()
                );
            }
        }
    }

    /// `components`/`subcomponents` (one pass) give what `component(n)`/`subcomponent(n)` do,
    /// on fields, repetitions, components and absent elements, past the last part too.
    #[test]
    fn components_at_once_read_the_same_parts() {
        let m = Message::parse(ADT).unwrap();
        let same = |a: Element<'_>, b: Element<'_>, at: &str| {
            assert_eq!(
                (a.raw(), a.is_present(), a.offset(), a.level),
                (b.raw(), b.is_present(), b.offset(), b.level),
                "{at}"
            )
        };
        for seg in m.segments() {
            for f in 0..12 {
                let field = seg.field(f);
                let mut elements = vec![field, field.repetition(2)];
                elements.extend((1..=4).map(|c| field.component(c)));
                for (i, el) in elements.into_iter().enumerate() {
                    let cs: [Element<'_>; 6] = el.components();
                    let ss: [Element<'_>; 4] = el.subcomponents();
                    for n in 1..=6 {
                        same(
                            cs[n - 1],
                            el.component(n),
                            &format!("{}-{f} #{i} c{n}", seg.id()),
                        );
                    }
                    for n in 1..=4 {
                        let at = format!("{}-{f} #{i} s{n}", seg.id());
                        same(ss[n - 1], el.subcomponent(n), &at);
                    }
                }
            }
        }
    }

    #[test]
    fn nth_piece_matches_a_naive_split() {
        let samples: [&[u8]; 6] = [
            b"",
            b"|",
            b"a|b||c|",
            b"PID|1||123^^^HOSP^MR~456^^^SSA^SS||DOE^JOHN||19800101|M|||1 Main St",
            b"||||||||||||||||||||",
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx|y",
        ];
        for raw in samples {
            let mut positions = Vec::new();
            positions_of(raw, b'|', &mut positions);
            let naive: Vec<u32> = (0..raw.len())
                .filter(|&i| raw[i] == b'|')
                .map(|i| i as u32)
                .collect();
            assert_eq!(positions, naive);
            let pieces: Vec<&[u8]> = raw.split(|&b| b == b'|').collect();
            for n in 0..pieces.len() + 3 {
                let got = nth_piece(raw, b'|', n).map(|(s, e)| &raw[s..e]);
                assert_eq!(got, pieces.get(n).copied(), "{raw:?} piece {n}");
            }
        }
    }

    #[test]
    fn reads_paths() {
        let m = Message::parse(ADT).unwrap();
        assert_eq!(m.segment_count(), 6);
        assert_eq!(q(&m, "MSH-1").as_deref(), Some("|"));
        assert_eq!(q(&m, "MSH-2").as_deref(), Some("^~\\&"));
        assert_eq!(q(&m, "MSH-3").as_deref(), Some("SEND"));
        assert_eq!(q(&m, "MSH-9.2").as_deref(), Some("A01"));
        assert_eq!(q(&m, "PID-3").as_deref(), Some("123^^^HOSP^MR"));
        assert_eq!(q(&m, "PID-3(2).1").as_deref(), Some("456"));
        assert_eq!(q(&m, "PID-3(2).5").as_deref(), Some("SS"));
        assert_eq!(q(&m, "PID-3(3).1"), None);
        assert_eq!(q(&m, "PID-5.1").as_deref(), Some("DOE&VAN&Van Der Doe"));
        assert_eq!(q(&m, "PID-5.1.1").as_deref(), Some("DOE"));
        assert_eq!(q(&m, "PID-5.1.3").as_deref(), Some("Van Der Doe"));
        assert_eq!(q(&m, "PID-5.2").as_deref(), Some("JOHN"));
        assert_eq!(q(&m, "PID-8.1").as_deref(), Some("M"));
        assert_eq!(q(&m, "PID-8.2"), None);
        assert_eq!(q(&m, "OBX(3)-5").as_deref(), Some("third"));
        assert_eq!(q(&m, "OBX(2)-5").as_deref(), Some("sec|ond"));
        assert_eq!(q(&m, "OBX(4)-5"), None);
        assert_eq!(q(&m, "ZZZ-1"), None);
        assert_eq!(m.message_type(), "ADT^A01^ADT_A01");
        assert_eq!(m.control_id(), "MSG001");
        assert_eq!(m.version(), "2.5.1");
    }

    #[test]
    fn absent_empty_and_null_are_distinct() {
        let m = Message::parse(ADT).unwrap();
        let get = |p: &str| m.get(&Path::parse(p).unwrap());
        let null = get("PID-13");
        assert!(null.is_present() && null.is_null() && !null.is_empty());
        let empty = get("PID-14");
        assert!(empty.is_present() && empty.is_empty() && !empty.is_null());
        let absent = get("PID-15");
        assert!(!absent.is_present() && !absent.is_empty());
        assert_eq!(null.text().unwrap(), "");
    }

    #[test]
    fn all_selectors_collect_values() {
        let m = Message::parse(ADT).unwrap();
        let mut out = Vec::new();
        m.get_all(&Path::parse("OBX(*)-5").unwrap(), false, &mut out);
        let v: Vec<_> = out.iter().map(|e| e.text().unwrap().into_owned()).collect();
        assert_eq!(v, ["first", "sec|ond", "third"]);
        out.clear();
        m.get_all(&Path::parse("PID-3.1").unwrap(), true, &mut out);
        let v: Vec<_> = out.iter().map(|e| e.text().unwrap().into_owned()).collect();
        assert_eq!(v, ["123", "456"]);
    }

    #[test]
    fn element_offsets_point_into_the_input() {
        let m = Message::parse(ADT).unwrap();
        let el = m.get(&Path::parse("PID-3(2).4").unwrap());
        assert_eq!(&ADT[el.offset()..el.offset() + 3], b"SSA");
    }

    #[test]
    fn mixed_terminators_bom_and_padding() {
        let m = Message::parse(
            b"\xEF\xBB\xBF\x0BMSH|^~\\&|A||||||ORU^R01|1|P|2.3\r\nPID|1\nOBX|1\r\r\n  \n\x1C\r",
        )
        .unwrap();
        let ids: Vec<_> = m.segments().map(|s| s.id().to_string()).collect();
        assert_eq!(ids, ["MSH", "PID", "OBX"]);
    }

    #[test]
    fn header_errors_are_located() {
        let e = Message::parse(b"MSH|^~\\&|A|B").unwrap_err();
        assert!(matches!(e.kind, ErrorKind::TruncatedMsh { .. }), "{e}");
        let e = Message::parse(b"PID|1|2").unwrap_err();
        assert!(matches!(e.kind, ErrorKind::NotMsh { .. }), "{e}");
        let e = Message::parse(b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5\rPID|1\rP1d|x\r").unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidSegmentId { .. }), "{e}");
        assert_eq!(e.location.segment_index, Some(3));
        assert_eq!(e.location.byte_offset, 38);
        let e = Message::parse(b"MSH|^~|A||||||ADT^A01|1|P|2.5\r").unwrap();
        assert_eq!(e.delimiters().escape, None);
    }

    #[test]
    fn field_limit_names_the_field() {
        let mut msg = b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5\rOBX|1|ED|X||".to_vec();
        msg.extend(std::iter::repeat_n(b'A', 1000));
        let limits = ParseLimits {
            max_field_bytes: 100,
            ..ParseLimits::default()
        };
        let e = Message::parse_with(&msg, 0, 0, &limits).unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::FieldTooLarge { len: 1000, .. }),
            "{e}"
        );
        assert_eq!(e.location.field, Some(5));
        assert_eq!(e.location.segment_id.as_deref(), Some("OBX"));
    }

    #[test]
    fn latin1_and_invalid_utf8() {
        let m =
            Message::parse(b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||8859/1\rPID|1||||M\xFCller\r")
                .unwrap();
        assert_eq!(m.query("PID-5").unwrap().unwrap(), "Müller");
        let m = Message::parse(b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5\rPID|1||||M\xFCller\r").unwrap();
        let e = m.query("PID-5").unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }
}
