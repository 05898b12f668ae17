//! Property tests: build → serialize → parse round-trips under arbitrary delimiters and text,
//! escaping round-trips, and arbitrary bytes never panic.

mod support;

use plexus::formats::hl7::escape::{escape, unescape};
use plexus::formats::hl7::{Delimiters, Message, MessageBuilder, Path, Splitter};
use proptest::prelude::*;

/// Five distinct delimiter characters (field + 4 encoding characters).
fn delimiters() -> impl Strategy<Value = Delimiters> {
    let pool: Vec<u8> = b"|^~\\&#$*!@%+:;/,?".to_vec();
    (Just(pool).prop_shuffle(), any::<bool>()).prop_map(|(p, truncation)| {
        let enc: &[u8] = if truncation { &p[1..6] } else { &p[1..5] };
        Delimiters::from_msh(p[0], enc, 0).unwrap()
    })
}

/// Any text, including delimiters, CR/LF and non-ASCII, except the null marker `""` (which
/// HL7 cannot tell apart from a null).
fn text() -> impl Strategy<Value = String> {
    "(?s).{0,12}".prop_filter("null marker", |s| s != "\"\"")
}

type Tree = Vec<Vec<Vec<String>>>;

fn tree() -> impl Strategy<Value = Tree> {
    prop::collection::vec(
        prop::collection::vec(prop::collection::vec(text(), 1..3), 1..4),
        1..3,
    )
}

fn segment_id() -> impl Strategy<Value = String> {
    "[A-Z][A-Z0-9]{2}".prop_filter("not a header", |s| {
        !matches!(s.as_str(), "MSH" | "FHS" | "BHS" | "BTS" | "FTS")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn build_serialize_parse_round_trips(
        d in delimiters(),
        control in "[A-Za-z0-9]{1,10}",
        segments in prop::collection::vec((segment_id(), prop::collection::vec(tree(), 1..5)), 0..5),
    ) {
        let mut b = MessageBuilder::new(d);
        b.segment("MSH").set_components(9, &["ADT", "A01"]).set(10, control.clone()).set(12, "2.8");
        for (id, fields) in &segments {
            let seg = b.segment(id);
            for (i, f) in fields.iter().enumerate() {
                seg.set_tree(i + 1, f.clone());
            }
        }
        let bytes = b.to_bytes();
        let m = Message::parse(&bytes).unwrap();
        prop_assert_eq!(m.control_id(), control.as_str());
        prop_assert_eq!(m.segment_count(), segments.len() + 1);
        let mut seen = std::collections::HashMap::new();
        for (id, fields) in &segments {
            let occ = *seen.entry(id.clone()).and_modify(|n| *n += 1).or_insert(1);
            for (fi, reps) in fields.iter().enumerate() {
                for (ri, comps) in reps.iter().enumerate() {
                    for (ci, subs) in comps.iter().enumerate() {
                        for (si, value) in subs.iter().enumerate() {
                            let path = format!("{id}({occ})-{}({}).{}.{}", fi + 1, ri + 1, ci + 1, si + 1);
                            let el = m.get(&Path::parse(&path).unwrap());
                            prop_assert_eq!(el.text().unwrap(), value.as_str(), "{}", path);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn escaping_round_trips(d in delimiters(), s in "(?s).{0,40}") {
        let e = escape(s.as_bytes(), &d);
        prop_assert!(!e.iter().any(|&c| d.is_structural(c) || c == b'\r' || c == b'\n'));
        prop_assert_eq!(&*unescape(&e, &d), s.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_bodies_after_a_header_never_panic(
        head in "MSH[|#][\\^~\\\\&$*]{0,6}[|#]?",
        body in prop::collection::vec(prop::sample::select(b"|^~\\&\r\nMSHPIDBTS0123\"X.".to_vec()), 0..400),
    ) {
        let mut bytes = head.into_bytes();
        bytes.extend(body);
        exercise(&bytes);
    }
}

/// Splits, then reads a spread of paths from every message that parsed.
fn exercise(bytes: &[u8]) {
    let paths: Vec<Path> = [
        "MSH-1",
        "MSH-2",
        "MSH-9.2",
        "PID-3(2).1.1",
        "PID(2)-1",
        "BTS-1",
        "OBX(*)-5(*)",
    ]
    .iter()
    .map(|p| Path::parse(p).unwrap())
    .collect();
    let mut out = Vec::new();
    for item in Splitter::new(bytes) {
        match item {
            Ok(m) => {
                let m = m.message;
                let _ = (m.control_id(), m.message_type(), m.version());
                for p in &paths {
                    let _ = m.get(p).text();
                    out.clear();
                    m.get_all(p, true, &mut out);
                    for e in &out {
                        let _ = e.text_lossy();
                    }
                }
            }
            Err(bad) => {
                assert!(bad.offset <= bytes.len());
                assert!(bad.error.location.byte_offset <= bytes.len());
            }
        }
    }
}
