//! Deterministic synthetic HL7 feeds for benchmarks and load tests.
//!
//! The messages look like a hospital's ADT and lab traffic (ADT^A01/A04/A08 with PID, NK1,
//! PV1; ORU^R01 with OBR and 3-12 OBX), with repetitions, sub-components and the occasional
//! escape sequence, so that parsers are measured on realistic shapes. All names are invented.

use std::fmt::Write;

const FAMILY: &[&str] = &[
    "SMITH",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "O'BRIEN",
    "VAN DER BERG",
    "NGUYEN",
    "MÜLLER",
];
const GIVEN: &[&str] = &[
    "JAMES", "MARY", "ROBERT", "PATRICIA", "JOHN", "JENNIFER", "MICHAEL", "LINDA", "AMÉLIE",
];
const STREETS: &[&str] = &["MAIN ST", "OAK AVE", "PINE RD", "MAPLE DR", "CEDAR LN"];
const CITIES: &[(&str, &str, &str)] = &[
    ("ANN ARBOR", "MI", "48104"),
    ("BOSTON", "MA", "02115"),
    ("DENVER", "CO", "80202"),
    ("AUSTIN", "TX", "78701"),
];
const TESTS: &[(&str, &str, &str)] = &[
    ("718-7", "Hemoglobin", "g/dL"),
    ("4544-3", "Hematocrit", "%"),
    ("6690-2", "Leukocytes", "10*3/uL"),
    ("777-3", "Platelets", "10*3/uL"),
    ("2345-7", "Glucose", "mg/dL"),
    ("2160-0", "Creatinine", "mg/dL"),
];

/// A small xorshift generator: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// `count` messages, CR-terminated segments, concatenated. Same `seed`, same bytes.
pub fn synthetic_feed(count: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.max(1));
    let mut out = String::with_capacity(count * 900);
    for i in 0..count {
        let ts = format!(
            "2026{:02}{:02}{:02}{:02}{:02}",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60)
        );
        let mrn = 100_000 + rng.below(900_000);
        let family = rng.pick(FAMILY).replace('\'', "\\X27\\");
        let given = rng.pick(GIVEN);
        let (city, state, zip) = rng.pick(CITIES);
        let street = format!("{} {}", 1 + rng.below(9999), rng.pick(STREETS));
        let dob = format!(
            "{}{:02}{:02}",
            1930 + rng.below(90),
            1 + rng.below(12),
            1 + rng.below(28)
        );
        let sex = ["M", "F", "U"][rng.below(3)];
        let lab = rng.below(3) == 0;
        let (code, event) = if lab {
            ("ORU", "R01")
        } else {
            ("ADT", *rng.pick(&["A01", "A04", "A08"]))
        };
        let _ = write!(
            out,
            "MSH|^~\\&|{app}|{fac}^2.16.840.1.113883.3.{f}^ISO|PLEXUS|HUB|{ts}-0500||{code}^{event}^{code}_{event}|MSG{i:08}|P|2.5.1|||AL|NE||UNICODE UTF-8\r",
            app = if lab { "LIS" } else { "ADT1" },
            fac = ["GENHOSP", "STMARY", "NORTHCLINIC"][i % 3],
            f = 100 + i % 3,
        );
        if !lab {
            let _ = write!(out, "EVN|{event}|{ts}|||OPER{}^CLERK^ANNE\r", rng.below(50));
        }
        let _ = write!(
            out,
            "PID|1||{mrn}^^^GENHOSP^MR~{ssn:09}^^^USSSA^SS||{family}^{given}^{mid}^^^||{dob}|{sex}||2106-3^White^HL70005|{street}^APT {apt}^{city}^{state}^{zip}^USA^H||^PRN^PH^^1^555^{phone:07}~^NET^Internet^{email}@example.org|^WPN^PH^^1^555^{work:07}|eng^English^HL70296|M^Married^HL70002|||{acct}^^^GENHOSP^AN\r",
            ssn = rng.below(999_999_999),
            mid = ["A", "B", "", "J"][rng.below(4)],
            apt = rng.below(400),
            phone = rng.below(9_999_999),
            email = given.to_lowercase(),
            work = rng.below(9_999_999),
            acct = 5_000_000 + i,
        );
        if lab {
            let _ = write!(
                out,
                "ORC|RE|ORD{i}|FIL{i}||CM\rOBR|1|ORD{i}|FIL{i}|58410-2^CBC panel^LN|||{ts}|||||||||1234^WELBY^MARCUS^^^DR^MD||||||{ts}|||F\r"
            );
            for k in 0..3 + rng.below(10) {
                let (loinc, name, unit) = rng.pick(TESTS);
                let _ = write!(
                    out,
                    "OBX|{n}|NM|{loinc}^{name}^LN||{v}.{d}|{unit}^{unit}^UCUM|{lo}-{hi}|{flag}|||F|||{ts}\r",
                    n = k + 1,
                    v = 1 + rng.below(300),
                    d = rng.below(10),
                    lo = rng.below(10),
                    hi = 10 + rng.below(100),
                    flag = ["N", "H", "L", ""][rng.below(4)],
                );
            }
            if rng.below(4) == 0 {
                let _ = write!(
                    out,
                    "NTE|1|L|Specimen slightly hemolyzed\\.br\\Repeat advised\r"
                );
            }
        } else {
            let _ = write!(
                out,
                "NK1|1|{nk}^{nkg}|SPO^Spouse^HL70063|{street}^^{city}^{state}^{zip}|^PRN^PH^^1^555^{p:07}\rPV1|1|{class}|{unit}^{room}^{bed}^GENHOSP||||{doc}^HOUSE^GREGORY^^^DR^MD|||MED||||7|||{doc}^HOUSE^GREGORY^^^DR^MD|IN||||||||||||||||||||||||||{ts}\r",
                nk = rng.pick(FAMILY).replace('\'', "\\X27\\"),
                nkg = rng.pick(GIVEN),
                p = rng.below(9_999_999),
                class = ["I", "O", "E"][rng.below(3)],
                unit = ["4E", "ICU", "ER", "3W"][rng.below(4)],
                room = 100 + rng.below(300),
                bed = ["A", "B"][rng.below(2)],
                doc = 1000 + rng.below(9000),
            );
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::hl7::Splitter;

    #[test]
    fn is_deterministic_and_parses() {
        let a = synthetic_feed(200, 7);
        assert_eq!(a, synthetic_feed(200, 7));
        let msgs: Vec<_> = Splitter::new(&a).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 200);
        assert_eq!(msgs[5].message.control_id(), "MSG00000005");
        for m in &msgs {
            assert!(m.message.query("PID-3(1).1").unwrap().is_some());
        }
    }
}
