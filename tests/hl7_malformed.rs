//! Malformed input gives located errors, and never a panic, a hang or unbounded memory.

mod support;

use plexus::formats::hl7::{ErrorKind, Message, ParseLimits, Splitter};

const GOOD: &str = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|OK1|P|2.5\rPID|1||123\r";

#[test]
fn truncated_msh_is_located() {
    let input = format!("{GOOD}MSH|^~\\&|APP|FAC\r{GOOD}");
    let items: Vec<_> = Splitter::new(input.as_bytes()).collect();
    assert_eq!(items.len(), 3, "the good neighbours survive");
    let bad = items[1].as_ref().unwrap_err();
    assert!(
        matches!(bad.error.kind, ErrorKind::TruncatedMsh { .. }),
        "{}",
        bad.error
    );
    assert_eq!(bad.offset, GOOD.len());
    assert_eq!(bad.raw, b"MSH|^~\\&|APP|FAC");
    let text = bad.error.to_string();
    assert!(text.contains("MSH-9"), "{text}");
    assert!(text.contains("message 2"), "{text}");
    assert!(text.contains("segment MSH (#1)"), "{text}");
    for cut in 0..GOOD.find("ADT").unwrap() {
        let e = Message::parse(&GOOD.as_bytes()[..cut]).unwrap_err();
        assert!(
            matches!(
                e.kind,
                ErrorKind::Empty
                    | ErrorKind::NotMsh { .. }
                    | ErrorKind::TruncatedMsh { .. }
                    | ErrorKind::BadEncodingCharacters { .. }
            ),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn wrong_separators_are_located() {
    for (header, why) in [
        ("MSH|^^\\&|A||||||ADT^A01|1|P|2.5", "declared twice"),
        ("MSH ^~\\& A", "field separator"),
        ("MSH|^|A||||||ADT^A01|1|P|2.5", "component and repetition"),
        ("MSH|^~\\&#$%|A||||||ADT^A01|1|P|2.5", "at most 5"),
        ("MSH|^~|A||||||ADT^A01|1|P|2.5\rPID|x", "unused"),
    ] {
        let input = format!("{GOOD}{header}\r");
        let items: Vec<_> = Splitter::new(input.as_bytes()).collect();
        if why == "unused" {
            // Two encoding characters are legal (escape/sub-component undeclared).
            assert!(items.iter().all(|r| r.is_ok()));
            continue;
        }
        let bad = items.last().unwrap().as_ref().unwrap_err();
        let text = bad.error.to_string();
        assert!(text.contains(why), "{header}: {text}");
        assert!(bad.error.location.byte_offset >= GOOD.len(), "{text}");
    }
}

#[test]
fn binary_garbage_is_returned_as_bad_records() {
    let mut input: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    input.extend_from_slice(GOOD.as_bytes());
    input.extend((0..2000u32).map(|i| (i * 7919 % 251) as u8));
    let items: Vec<_> = Splitter::new(&input).collect();
    let good = items.iter().filter(|r| r.is_ok()).count();
    let bad: Vec<_> = items.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(good <= 1);
    assert!(!bad.is_empty());
    // Every byte is accounted for: the records cover the input in order, without overlap.
    let mut last_end = 0;
    for item in &items {
        let (off, len) = match item {
            Ok(m) => (m.message.offset(), m.message.raw().len()),
            Err(b) => (b.offset, b.raw.len()),
        };
        assert!(off >= last_end);
        last_end = off + len;
    }
    for b in bad {
        assert!(b.error.location.byte_offset < input.len());
        assert!(b.error.to_string().contains("byte offset"));
    }
}

#[test]
fn ten_megabyte_field_parses_in_linear_time_and_respects_limits() {
    let mut input =
        b"MSH|^~\\&|A||||||ORU^R01|BIG|P|2.5\rOBX|1|ED|PDF^Report||^AP^PDF^Base64^".to_vec();
    let payload_at = input.len();
    input.extend(std::iter::repeat_n(b'Q', 10 << 20));
    input.extend_from_slice(b"||||||F\rOBX|2|ST|X||after\r");

    let m = Message::parse(&input).unwrap();
    let el = m.get(&"OBX-5.5".parse().unwrap());
    assert_eq!(el.raw().len(), 10 << 20);
    assert_eq!(el.offset(), payload_at);
    assert_eq!(m.query("OBX(2)-5").unwrap().as_deref(), Some("after"));

    let limits = ParseLimits {
        max_field_bytes: 1 << 20,
        ..ParseLimits::default()
    };
    let items: Vec<_> = Splitter::with_limits(&input, limits).collect();
    let bad = items[0].as_ref().unwrap_err();
    assert!(
        matches!(bad.error.kind, ErrorKind::FieldTooLarge { .. }),
        "{}",
        bad.error
    );
    assert_eq!(bad.error.location.segment_id.as_deref(), Some("OBX"));
    assert_eq!(bad.error.location.field, Some(5));
    assert_eq!(bad.error.location.byte_offset, payload_at - 15);

    let limits = ParseLimits {
        max_message_bytes: 1 << 20,
        ..ParseLimits::default()
    };
    let items: Vec<_> = Splitter::with_limits(&input, limits).collect();
    assert!(matches!(
        items[0].as_ref().unwrap_err().error.kind,
        ErrorKind::MessageTooLarge { .. }
    ));
}

#[test]
fn many_tiny_lines_do_not_blow_up() {
    // 2 million line breaks: linear scan, no per-line allocation outside messages.
    let mut input = GOOD.as_bytes().to_vec();
    input.extend(std::iter::repeat_n(b'\n', 2_000_000));
    input.extend_from_slice(GOOD.as_bytes());
    let items: Vec<_> = Splitter::new(&input).collect();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|r| r.is_ok()));
}
