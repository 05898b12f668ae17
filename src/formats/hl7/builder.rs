//! Writing HL7v2 messages. Values are given as text and escaped with the message's own
//! delimiters, so whatever is written reads back the same through `Message`.

use super::encoding::Delimiters;
use super::escape::escape;

/// A field value: repetitions → components → sub-components of unescaped text, or raw bytes
/// copied verbatim (for values taken from another message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Tree(Vec<Vec<Vec<String>>>),
    Raw(Vec<u8>),
}

/// One segment under construction; `fields[0]` is field 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBuilder {
    id: [u8; 3],
    fields: Vec<FieldValue>,
}

impl SegmentBuilder {
    fn slot(&mut self, n: usize) -> &mut FieldValue {
        assert!(n >= 1, "fields are 1-based");
        if self.fields.len() < n {
            self.fields.resize(n, FieldValue::Raw(Vec::new()));
        }
        &mut self.fields[n - 1]
    }

    /// Sets field `n` to one text value (escaped on write).
    pub fn set(&mut self, n: usize, text: impl Into<String>) -> &mut Self {
        *self.slot(n) = FieldValue::Tree(vec![vec![vec![text.into()]]]);
        self
    }

    /// Sets field `n` to components (one repetition).
    pub fn set_components<S: AsRef<str>>(&mut self, n: usize, components: &[S]) -> &mut Self {
        let comps = components
            .iter()
            .map(|c| vec![c.as_ref().to_string()])
            .collect();
        *self.slot(n) = FieldValue::Tree(vec![comps]);
        self
    }

    /// Sets field `n` to a full repetition/component/sub-component tree.
    pub fn set_tree(&mut self, n: usize, tree: Vec<Vec<Vec<String>>>) -> &mut Self {
        *self.slot(n) = FieldValue::Tree(tree);
        self
    }

    /// Sets field `n` to bytes written as they are (already escaped for these delimiters).
    pub fn set_raw(&mut self, n: usize, raw: &[u8]) -> &mut Self {
        *self.slot(n) = FieldValue::Raw(raw.to_vec());
        self
    }
}

/// A message under construction.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    delimiters: Delimiters,
    segments: Vec<SegmentBuilder>,
}

impl MessageBuilder {
    pub fn new(delimiters: Delimiters) -> Self {
        MessageBuilder {
            delimiters,
            segments: Vec::new(),
        }
    }

    /// Appends a segment. For `MSH`, fields 1 and 2 are written from the delimiters; set
    /// fields from 3 on.
    pub fn segment(&mut self, id: &str) -> &mut SegmentBuilder {
        let b = id.as_bytes();
        assert!(b.len() == 3, "segment ids have 3 characters");
        self.segments.push(SegmentBuilder {
            id: [b[0], b[1], b[2]],
            fields: Vec::new(),
        });
        self.segments.last_mut().expect("just pushed")
    }

    /// Serializes with CR segment terminators (the standard's), including after the last.
    pub fn to_bytes(&self) -> Vec<u8> {
        let d = &self.delimiters;
        let mut out = Vec::with_capacity(256);
        for seg in &self.segments {
            out.extend_from_slice(&seg.id);
            let first = if &seg.id == b"MSH" {
                out.push(d.field);
                out.extend_from_slice(&d.encoding_characters());
                3
            } else {
                1
            };
            let last = seg.fields.len();
            for n in first..=last {
                out.push(d.field);
                write_field(&mut out, &seg.fields[n - 1], d);
            }
            out.push(b'\r');
        }
        out
    }
}

fn write_field(out: &mut Vec<u8>, value: &FieldValue, d: &Delimiters) {
    match value {
        FieldValue::Raw(raw) => out.extend_from_slice(raw),
        FieldValue::Tree(reps) => {
            for (r, comps) in reps.iter().enumerate() {
                if r > 0 {
                    out.push(d.repetition);
                }
                for (c, subs) in comps.iter().enumerate() {
                    if c > 0 {
                        out.push(d.component);
                    }
                    for (s, text) in subs.iter().enumerate() {
                        if s > 0 {
                            // Without a sub-component separator only the first can be written.
                            match d.subcomponent {
                                Some(sep) => out.push(sep),
                                None => break,
                            }
                        }
                        out.extend_from_slice(&escape(text.as_bytes(), d));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::hl7::Message;

    #[test]
    fn builds_what_the_parser_reads_back() {
        let mut b = MessageBuilder::new(Delimiters::default());
        b.segment("MSH")
            .set(3, "APP")
            .set_components(9, &["ADT", "A01"])
            .set(10, "id|1")
            .set(12, "2.5");
        b.segment("PID")
            .set_tree(
                3,
                vec![
                    vec![
                        vec!["1".into()],
                        vec![],
                        vec![],
                        vec!["A".into(), "B".into()],
                    ],
                    vec![vec!["2".into()]],
                ],
            )
            .set(5, "O^Brien");
        let bytes = b.to_bytes();
        assert_eq!(
            bytes,
            b"MSH|^~\\&|APP||||||ADT^A01|id\\F\\1||2.5\rPID|||1^^^A&B~2||O\\S\\Brien\r"
        );
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.control_id(), "id|1");
        assert_eq!(m.query("PID-3(1).4.2").unwrap().as_deref(), Some("B"));
        assert_eq!(m.query("PID-5").unwrap().as_deref(), Some("O^Brien"));
    }
}
