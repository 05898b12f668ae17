//! MLLP, the Minimal Lower Layer Protocol that carries HL7 v2 over TCP (HL7 v2.5.1
//! Implementation Guide, appendix C): each message is sent as `<VT> message <FS><CR>`
//! (0x0B … 0x1C 0x0D).
//!
//! [`Deframer`] turns a byte stream into frames whatever the reads look like: a frame split over
//! many reads, several frames in one read. Bytes outside a frame (keep-alive newlines, a
//! sender's garbage) are counted and reported, never silently dropped; a frame cut short by a
//! new start byte is reported as truncated. A frame over the size limit stops the deframer:
//! the caller answers AR and closes the connection.

/// Start of a frame (VT).
pub const START: u8 = 0x0B;
/// End of a frame's content (FS), followed by [`CR`].
pub const END: u8 = 0x1C;
pub const CR: u8 = 0x0D;

/// Appends `message` framed for MLLP to `out`.
pub fn frame_into(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message);
    out.push(END);
    out.push(CR);
}

/// `message` framed for MLLP.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    frame_into(message, &mut out);
    out
}

/// What the deframer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole message (without the frame bytes).
    Frame(Vec<u8>),
    /// This many bytes arrived outside any frame and were skipped.
    Junk(usize),
    /// A frame of this many bytes was cut short: a start byte came before its end, or the
    /// stream ended.
    Truncated(usize),
    /// The frame in progress grew past the limit (this many bytes so far); nothing more is
    /// read from this stream.
    TooLarge(usize),
}

/// Splits an MLLP byte stream into frames (see the module doc).
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    in_frame: bool,
    /// An end byte was seen; a CR right after it belongs to the frame's trailer.
    after_end: bool,
    junk: usize,
    max: usize,
    stopped: bool,
}

impl Deframer {
    /// `max`: the largest message accepted, in bytes.
    pub fn new(max: usize) -> Self {
        Deframer {
            buf: Vec::new(),
            in_frame: false,
            after_end: false,
            junk: 0,
            max,
            stopped: false,
        }
    }

    /// Feeds the next bytes read; events are appended to `out` in stream order.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Event>) {
        while !data.is_empty() && !self.stopped {
            if self.after_end {
                self.after_end = false;
                if data[0] == CR {
                    data = &data[1..];
                    continue;
                }
            }
            if !self.in_frame {
                match memchr::memchr(START, data) {
                    Some(p) => {
                        self.junk += p;
                        self.flush_junk(out);
                        self.in_frame = true;
                        data = &data[p + 1..];
                    }
                    None => {
                        self.junk += data.len();
                        return;
                    }
                }
                continue;
            }
            match memchr::memchr2(END, START, data) {
                Some(p) => {
                    if self.buf.len() + p > self.max {
                        return self.too_large(self.buf.len() + p, out);
                    }
                    self.buf.extend_from_slice(&data[..p]);
                    if data[p] == END {
                        out.push(Event::Frame(std::mem::take(&mut self.buf)));
                        self.in_frame = false;
                        self.after_end = true;
                    } else {
                        // A new start inside a frame: the sender gave up on the previous one.
                        out.push(Event::Truncated(self.buf.len()));
                        self.buf.clear();
                    }
                    data = &data[p + 1..];
                }
                None => {
                    if self.buf.len() + data.len() > self.max {
                        return self.too_large(self.buf.len() + data.len(), out);
                    }
                    self.buf.extend_from_slice(data);
                    return;
                }
            }
        }
    }

    /// The stream ended: reports what is left (a partial frame, trailing junk).
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if self.stopped {
            return;
        }
        if self.in_frame {
            out.push(Event::Truncated(self.buf.len()));
            self.buf.clear();
            self.in_frame = false;
        }
        self.flush_junk(out);
    }

    /// Bytes of the frame in progress (memory held for this stream).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn flush_junk(&mut self, out: &mut Vec<Event>) {
        if self.junk > 0 {
            out.push(Event::Junk(self.junk));
            self.junk = 0;
        }
    }

    fn too_large(&mut self, size: usize, out: &mut Vec<Event>) {
        self.stopped = true;
        self.buf = Vec::new();
        out.push(Event::TooLarge(size));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], max: usize) -> Vec<Event> {
        let mut d = Deframer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out);
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn frames_split_across_reads_and_many_per_read() {
        let mut stream = frame(b"MSH|one");
        stream.extend(frame(b"MSH|two"));
        stream.extend(frame(b"MSH|three"));
        let want = vec![
            Event::Frame(b"MSH|one".to_vec()),
            Event::Frame(b"MSH|two".to_vec()),
            Event::Frame(b"MSH|three".to_vec()),
        ];
        // Every way of cutting the stream in two, and byte by byte.
        for cut in 0..=stream.len() {
            assert_eq!(
                run(&[&stream[..cut], &stream[cut..]], 1 << 20),
                want,
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes, 1 << 20), want);
    }

    #[test]
    fn bytes_outside_frames_are_counted() {
        let mut stream = b"\r\n".to_vec();
        stream.extend(frame(b"A"));
        stream.extend(b"xyz");
        stream.extend(frame(b"B"));
        stream.extend(b"tail");
        assert_eq!(
            run(&[&stream], 100),
            vec![
                Event::Junk(2),
                Event::Frame(b"A".to_vec()),
                Event::Junk(3),
                Event::Frame(b"B".to_vec()),
                Event::Junk(4),
            ]
        );
    }

    #[test]
    fn an_end_without_cr_still_ends_the_frame() {
        let stream = [&[START][..], b"A", &[END], &[START], b"B", &[END, CR]].concat();
        assert_eq!(
            run(&[&stream], 100),
            vec![Event::Frame(b"A".to_vec()), Event::Frame(b"B".to_vec())]
        );
    }

    #[test]
    fn truncated_frames_are_reported() {
        let stream = [
            &[START][..],
            b"half",
            &[START],
            b"B",
            &[END, CR],
            &[START],
            b"cut",
        ]
        .concat();
        assert_eq!(
            run(&[&stream], 100),
            vec![
                Event::Truncated(4),
                Event::Frame(b"B".to_vec()),
                Event::Truncated(3),
            ]
        );
    }

    #[test]
    fn a_frame_over_the_limit_stops_the_stream() {
        let mut stream = frame(b"12345");
        stream.extend(frame(b"123456"));
        stream.extend(frame(b"1"));
        assert_eq!(
            run(&[&stream[..12], &stream[12..]], 5),
            vec![Event::Frame(b"12345".to_vec()), Event::TooLarge(6)]
        );
        let mut d = Deframer::new(5);
        let mut out = Vec::new();
        d.push(&[START, b'1', b'2', b'3'], &mut out);
        d.push(b"456", &mut out);
        assert_eq!(out, vec![Event::TooLarge(6)]);
        assert_eq!(d.pending(), 0);
    }
}
