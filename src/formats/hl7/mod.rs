//! The HL7v2 engine: a zero-copy parser and everything built on it.
//!
//! | file            | what it does                                                        |
//! |-----------------|---------------------------------------------------------------------|
//! | `encoding.rs`   | delimiters from MSH-1/MSH-2, character sets from MSH-18              |
//! | `message.rs`    | `Message` / `Segment` / `Element`: the parsed, borrowed view         |
//! | `path.rs`       | `PID-3(2).1`-style paths                                             |
//! | `escape.rs`     | `\F\ \S\ \T\ \R\ \E\ \Xhh\ \.br\` decoding and encoding               |
//! | `batch.rs`      | splitting streams and FHS/BHS batch files into messages              |
//! | `builder.rs`    | writing messages (ACKs, tests)                                        |
//! | `ack.rs`        | AA/AE/AR and CA/CE/CR acknowledgements                                |
//! | `datatypes.rs`  | typed readers for TS/DTM, DT, NM, CX, XPN, XAD, XTN, CWE/CE           |
//! | `extract.rs`    | messages → Arrow `RecordBatch` by column specs                        |
//!
//! ```
//! use plexus::formats::hl7::{Message, Splitter};
//! let input = b"MSH|^~\\&|LAB|H|||20260101||ORU^R01|42|P|2.5\rPID|1||123^^^H^MR||DOE^JANE\r";
//! let m = Message::parse(input).unwrap();
//! assert_eq!(m.query("PID-5.2").unwrap().as_deref(), Some("JANE"));
//! assert_eq!(Splitter::new(input).count(), 1);
//! ```

pub mod ack;
pub mod batch;
pub mod builder;
pub mod datatypes;
pub mod encoding;
pub mod error;
pub mod escape;
pub mod extract;
pub mod message;
pub mod path;
pub mod synth;

pub use ack::{AckCode, AckError, AckOptions, build_ack, build_nack_for_unparsed};
pub use batch::{
    BadMessage, BatchHeader, BatchKind, Diagnostic, SplitItem, SplitMessage, Splitter,
};
pub use builder::MessageBuilder;
pub use datatypes::{
    Cwe, Cx, Hd, Precision, Ts, Xad, Xpn, Xtn, Zone, parse_dt, parse_nm, parse_nm_i64,
};
pub use encoding::{Charset, Delimiters};
pub use error::{ErrorKind, Hl7Error, Location};
pub use message::{Element, Message, ParseLimits, Segment};
pub use path::{Path, Select};
