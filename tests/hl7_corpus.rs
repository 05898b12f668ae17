//! The third-party corpus (tests/data/corpus, from microsoft/FHIR-Converter; see SOURCES.txt)
//! parses, and every value in it reads back the same as a naive, independent split gives.

mod support;

use plexus::formats::hl7::{Message, Path, Splitter};

fn corpus_files() -> Vec<(String, Vec<u8>)> {
    let dir = support::repo().join("tests/data/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    // SOURCES.txt lists each file with its licence: a file lost, or added without its
    // source, fails here.
    let sources = std::fs::read_to_string(dir.join("SOURCES.txt")).unwrap();
    let listed: Vec<&str> = sources
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.ends_with(".hl7"))
        .collect();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(names, sorted, "corpus files and SOURCES.txt agree");
    assert!(files.len() >= 15, "corpus is complete");
    files
}

fn one_message(bytes: &[u8]) -> Message<'_> {
    let mut items: Vec<_> = Splitter::new(bytes).collect();
    assert_eq!(items.len(), 1);
    items.pop().unwrap().unwrap().message
}

#[test]
fn known_fields_read_back() {
    // (file, MSH-9, MSH-10, MSH-12, segment count, PID-3(1).1, PID-5.1.1, PID-7, OBX count)
    let expected = [
        (
            "ADT-A01-01.hl7",
            "ADT^A01^ADT_A01",
            "MSG00001",
            "2.8",
            24,
            "PATID1234",
            "EVERYMAN",
            "198808181126+0215",
            1,
        ),
        (
            "ADT-A04-01.hl7",
            "ADT^A04^ADT_A04",
            "MSG00001",
            "2.8",
            24,
            "PATID1234",
            "EVERYMAN",
            "198808181126+0215",
            1,
        ),
        (
            "ADT-A08-01.hl7",
            "ADT^A08^ADT_A08",
            "MSG00001",
            "2.8",
            24,
            "PATID1234",
            "EVERYMAN",
            "198808181126+0215",
            1,
        ),
        (
            "ADT01-23.hl7",
            "ADT^A01",
            "599102",
            "2.3",
            12,
            "10006579",
            "DUCK",
            "19241010",
            0,
        ),
        (
            "LRI_2.0-NG_CBC_Typ_Message.hl7",
            "ORU^R01^ORU_R01",
            "NIST-LRI-NG-002.00",
            "2.5.1",
            33,
            "PATID1234",
            "Jones",
            "19610615",
            28,
        ),
        (
            "ORM-O01-01.hl7",
            "ORM^O01^ORM_O01",
            "MSG00018",
            "2.6",
            12,
            "PATID1234",
            "EVERYMAN",
            "198808181126+0215",
            1,
        ),
        (
            "ORU-R01-01.hl7",
            "ORU^R01^ORU_R01",
            "2.16.840.1.114222.4.3.3.5.1.2-20120314235954.325",
            "2.5.1",
            29,
            "14",
            "Finn",
            "19630815",
            5,
        ),
        (
            "SIU-S12-01.hl7",
            "SIU^S12^SIU_S12",
            "MSG00012",
            "2.8",
            18,
            "PATID1234",
            "EVERYMAN",
            "198808181126+0215",
            1,
        ),
        (
            "VXU-V04-01.hl7",
            "VXU^V04^VXU_V04",
            "MSG00001",
            "2.8",
            23,
            "PATID1234",
            "EVERYMAN",
            "198808181126+0215",
            5,
        ),
    ];
    let files = corpus_files();
    for (name, msh9, msh10, version, segs, mrn, family, dob, obx) in expected {
        let bytes = &files.iter().find(|(n, _)| n == name).unwrap().1;
        let m = one_message(bytes);
        let q = |p: &str| m.query(p).unwrap().map(|c| c.into_owned());
        assert_eq!(m.message_type(), msh9, "{name}");
        assert_eq!(m.control_id(), msh10, "{name}");
        assert_eq!(m.version(), version, "{name}");
        assert_eq!(m.segment_count(), segs, "{name}");
        assert_eq!(q("PID-3.1").as_deref(), Some(mrn), "{name}");
        assert_eq!(q("PID-5.1.1").as_deref(), Some(family), "{name}");
        assert_eq!(q("PID-7").as_deref(), Some(dob), "{name}");
        assert_eq!(
            m.segments().filter(|s| s.id() == "OBX").count(),
            obx,
            "{name}"
        );
    }
}

#[test]
fn specific_values_in_the_rich_adt() {
    let files = corpus_files();
    let m = one_message(&files[0].1);
    let q = |p: &str| m.query(p).unwrap().map(|c| c.into_owned());
    assert_eq!(q("MSH-4.2").as_deref(), Some("2.16.840.1.122848.1.30"));
    assert_eq!(q("PID-3(2).1").as_deref(), Some("123456789"));
    assert_eq!(q("PID-3(2).4").as_deref(), Some("USSSA"));
    assert_eq!(q("PID-3(1).4.2").as_deref(), Some("2.16.1"));
    assert_eq!(q("PID-5(2).1.1").as_deref(), Some("Josh"));
    assert_eq!(q("PID-5(1).1.5").as_deref(), Some("Aniston"));
    assert_eq!(q("PID-11.1.2").as_deref(), Some("Hospital Lane"));
    assert_eq!(q("PID-11.3").as_deref(), Some("Ann Arbor "));
    assert_eq!(q("PID-13(2).3").as_deref(), Some("CP"));
    assert_eq!(q("EVN-5.9.2").as_deref(), Some("1.3.6.1.4.1.44750.1.2.2"));
    let lab = one_message(&files.iter().find(|(n, _)| n.starts_with("LRI")).unwrap().1);
    assert_eq!(
        lab.query("OBX(3)-3.2").unwrap().as_deref(),
        Some("Hematocrit [Volume Fraction] of Blood")
    );
}

/// Splits `s` the naive way (what the standard says, nothing clever).
fn pieces(s: &str, sep: char, n: usize) -> Option<&str> {
    s.split(sep).nth(n - 1)
}

#[test]
fn every_value_matches_a_naive_split() {
    let mut checked = 0;
    for (name, bytes) in corpus_files() {
        let m = one_message(&bytes);
        let text = String::from_utf8(bytes.clone()).unwrap();
        let text = text.trim_start_matches('\u{feff}');
        let mut occurrences = std::collections::HashMap::new();
        for line in text.split(['\r', '\n']).filter(|l| !l.trim().is_empty()) {
            let id = &line[..3];
            let occ = occurrences.entry(id.to_string()).or_insert(0);
            *occ += 1;
            let fields: Vec<&str> = line.split('|').collect();
            for (i, field) in fields.iter().enumerate().skip(1) {
                let n = if id == "MSH" { i + 1 } else { i };
                if id == "MSH" && n <= 2 {
                    continue;
                }
                for (r, rep) in field.split('~').enumerate() {
                    for (c, comp) in rep.split('^').enumerate() {
                        for (s, sub) in comp.split('&').enumerate() {
                            let path = format!("{id}({occ})-{n}({}).{}.{}", r + 1, c + 1, s + 1);
                            let el = m.get(&Path::parse(&path).unwrap());
                            assert_eq!(el.raw(), sub.as_bytes(), "{name} {path}");
                            assert!(el.is_present(), "{name} {path}");
                            checked += 1;
                        }
                        assert_eq!(
                            pieces(rep, '^', c + 1).unwrap().as_bytes(),
                            m.get(
                                &Path::parse(&format!("{id}({occ})-{n}({}).{}", r + 1, c + 1))
                                    .unwrap()
                            )
                            .raw()
                        );
                    }
                }
            }
            // One past the last field is absent, not empty.
            let past = if id == "MSH" {
                fields.len() + 1
            } else {
                fields.len()
            };
            let el = m.get(&Path::parse(&format!("{id}({occ})-{past}")).unwrap());
            assert!(!el.is_present(), "{name} {id}({occ})-{past}");
        }
    }
    assert!(checked > 3000, "checked {checked} values");
}

#[test]
fn whole_corpus_concatenated_splits_into_one_message_per_file() {
    let mut all = Vec::new();
    for (_, b) in corpus_files() {
        all.extend(b);
        all.extend(b"\r\n");
    }
    let mut s = Splitter::new(&all);
    let ids: Vec<_> = s
        .by_ref()
        .map(|r| r.unwrap().message.control_id().into_owned())
        .collect();
    assert_eq!(ids.len(), corpus_files().len());
    // ADT01-23 (v2.3, a BOM) comes out whole between its neighbours.
    assert!(ids.iter().any(|i| i == "599102"), "{ids:?}");
    assert!(s.diagnostics().is_empty());
}
